"""The memory plan (not an algorithm): before the first step, what a run will hold, estimated from the model's config
and the flags alone, against what the device has; and what the run then measured.

A run holds, in bytes (params: the model's parameter count; trained: those the optimizer updates, all of them or,
with --lora, the adapters' only):

    weights            4 · params                    fp32, as minireason loads every model
    sampler copy       2 · params                    --dtype bf16: the policy's bf16 copy that samples
    reference model    4 · params                    when a KL term or DPO needs it, unless --lora or elsewhere
    optimizer state    8 · trained                   AdamW's two fp32 moments
    gradients          4 · trained                   during the update
    activations        per micro-batch, see activation_bytes
    log-prob chunks    2 LM-head chunks of logits, see logprob_chunk_bytes
    KV cache           rows · (prompt + max new tokens) · layers · 2 · kv_heads · head_dim · 2 or 4
    next-token logits  5 fp32 (rows, vocab) tensors while sampling

Sampling and the update never run at the same time. On CUDA, PyTorch's caching allocator gives the memory the
sampler freed to the update, so the peak is the weights and the optimizer state plus the larger of the two phases.
On the CPU, glibc's allocator keeps what the sampler freed in the process (the update's tensors are of other sizes
and seldom reuse it; measured: ~100 MiB of the tiny model's rollout stay resident), so the two phases add up.
The plan counts tensors, not the allocator's fragmentation: on the CPU the update's resident growth measured 8 %
above its tensors with the tiny model's defaults, but 50-75 % above with --grad-checkpointing, --lora or bf16
(within 25 % of them with MALLOC_MMAP_THRESHOLD_=65536, which hands large blocks back to the system at once).
Not planned: the SFT warm-up and the --sft-baseline, which train on --sft-batch reference chains.

Under torchrun each of the N processes samples and evaluates its share of the questions. With --fsdp each also keeps
only 1/N of the weights, the reference model and AdamW's state (algorithms/distributed.py), but gathers weights whole
to compute with them:

    weights, reference     4 · params / N
    optimizer state        8 · trained / N
    gradients              4 · trained, whole-sized while FSDP accumulates them over a step's micro-batches (it
                           reduce-scatters on the last); 4 · trained / N when a step has one micro-batch
    gathered, update       4 · (root + 2 layers): the embeddings, the LM head and the final norm stay whole through
                           each micro-batch's forward and backward, the decoder layers one or two at a time
    gathered, sampling     4 · params: the policy whole while sampling, scoring and evaluating (the reference while
                           it scores)
    activations            each row runs its own prompt (prompts = rows in activation_bytes)

The figures behind activation_bytes were counted with torch.autograd.graph.saved_tensors_hooks on LLaMA-shaped
models (tiny, SmolLM2-135M) in transformers 5; what a model of another architecture saves can differ.
"""
import argparse
import dataclasses
import importlib
import math
import re
import resource

import torch

from algorithms import distributed

GiB = 2 ** 30
LORA_FOR_REFUSAL = 16  # the rank the refusal line proposes


@dataclasses.dataclass(frozen=True)
class Shape:
    """What the estimate needs of a decoder-only transformer's config."""
    hidden: int        # H, the residual stream's width
    layers: int
    heads: int         # attention heads of the queries
    kv_heads: int      # heads of the keys and values (fewer with grouped-query attention)
    head_dim: int
    intermediate: int  # I, the MLP's inner width
    vocab: int         # V
    tied: bool         # the LM head is the embedding matrix

    @classmethod
    def from_config(cls, config):
        """From a Hugging Face config (LLaMA, Qwen2, Mistral, SmolLM2 and the like)."""
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
                   getattr(config, "num_key_value_heads", None) or config.num_attention_heads, head_dim,
                   config.intermediate_size, config.vocab_size, bool(getattr(config, "tie_word_embeddings", False)))


def parameter_count(s):
    """V·H embedding (twice if untied) + per layer: attention H·(2·heads + 2·kv_heads)·head_dim, MLP 3·H·I, two
    norms 2·H; + the final norm H. (Qwen2's q/k/v biases, under 0.1 % of the parameters, are left out.)"""
    attention = s.hidden * (2 * s.heads + 2 * s.kv_heads) * s.head_dim
    per_layer = attention + 3 * s.hidden * s.intermediate + 2 * s.hidden
    return s.vocab * s.hidden * (1 if s.tied else 2) + s.layers * per_layer + s.hidden


def lora_parameter_count(s, rank):
    """R·(in + out) per adapted projection (algorithms/lora.py): per layer q, k, v, o, gate, up and down."""
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    widths = [(s.hidden, q), (s.hidden, kv), (s.hidden, kv), (q, s.hidden)] + [(s.hidden, s.intermediate)] * 2 + \
        [(s.intermediate, s.hidden)]
    return s.layers * rank * sum(i + o for i, o in widths)


def weights_bytes(params):
    """4 · params: minireason keeps fp32 weights (--dtype bf16 autocasts from them)."""
    return 4 * params


def sampler_copy_bytes(params, dtype):
    """2 · params with --dtype bf16 (the bf16 copy that samples), else 0: the policy samples itself."""
    return 2 * params if dtype == "bf16" else 0


def reference_bytes(params):
    """4 · params: the frozen reference model, a second fp32 copy of the weights."""
    return 4 * params


def optimizer_bytes(trained):
    """8 · trained: AdamW's first and second moments, fp32, for each trained parameter."""
    return 8 * trained


def gradient_bytes(trained):
    """4 · trained: one fp32 gradient per trained parameter, accumulated over the micro-batches."""
    return 4 * trained


def kv_cache_bytes(s, rows, positions, element_bytes):
    """rows · positions · layers · 2 (keys and values) · kv_heads · head_dim · element_bytes: the sampler's cache,
    allocated once for prompt + max new tokens (PreallocatedLayer)."""
    return rows * positions * s.layers * 2 * s.kv_heads * s.head_dim * element_bytes


def sampling_logits_bytes(s, rows):
    """5 · rows · V · 4: next_tokens' fp32 (rows, V) logits, log-probs, probabilities, their product, the CDF."""
    return 5 * rows * s.vocab * 4


def activation_bytes_per_token_layer(s, dtype):
    """What one decoder layer saves for the backward pass per token, keys and values aside, in bytes (counted, see
    the module docstring):
    fp32   4 · (6·H + 2·Hq + 4·I): the residual in and mid-layer, each RMSNorm's x·rsqrt and output, the rotated
           queries and the attention output (Hq = heads·head_dim each), the MLP's gate, up, silu(gate) and product;
    bf16   26·H + 4·Hq + 8·I: the residual stream and the norms stay fp32 (16·H), each of the five projections
           saves its own bf16 cast of its input (10·H), the rest is bf16."""
    q = s.heads * s.head_dim
    if dtype == "bf16":
        return 26 * s.hidden + 4 * q + 8 * s.intermediate
    return 4 * (6 * s.hidden + 2 * q + 4 * s.intermediate)


def activation_bytes(s, prompts, rows, prompt_len, response_len, dtype, checkpointing):
    """Activations of one micro-batch of `rows` responses to `prompts` distinct prompts, in bytes.

    Without --grad-checkpointing each distinct prompt runs once and the responses run on top (response_hidden):
        layers · (tokens · a + kv) + tokens · a,          tokens = prompts · P + rows · T
        kv = e · 2 · (prompts · P · KV + rows · (P + T) · Hq)
    with a = activation_bytes_per_token_layer, P and T the prompt's and the response's length, e bytes per element,
    KV = kv_heads·head_dim. kv: each prompt's keys and values, and those each response row attends to, its prompt's
    and its own, repeated to every query head (as HF's attention does whenever there is a mask). The last term is
    one layer's gradients in the backward pass. bf16 adds 2 · params: with autocast's cache off, each forward
    saves its own bf16 copy of every weight.
    With it, each layer keeps only its fp32 input and one layer at a time is recomputed, with its gradients:
        rows · (P + T) · (layers · 4·H + 2 · a + 2 · e · Hq)"""
    a, e, q = activation_bytes_per_token_layer(s, dtype), 2 if dtype == "bf16" else 4, s.heads * s.head_dim
    positions = rows * (prompt_len + response_len)
    if checkpointing:
        return positions * (s.layers * 4 * s.hidden + 2 * a + 2 * e * q)
    tokens = prompts * prompt_len + rows * response_len
    kv = e * 2 * (prompts * prompt_len * s.kv_heads * s.head_dim + positions * q)
    weight_copies = 2 * parameter_count(s) if dtype == "bf16" else 0
    return s.layers * (tokens * a + kv) + tokens * a + weight_copies


def gathered_in_update_bytes(s):
    """4 · (root + 2 layers) under --fsdp: the root unit (embeddings, LM head if untied, final norm: V·H·(1 or 2) + H)
    is whole through each micro-batch's forward and backward, the decoder layers one at a time, the next one
    being gathered meanwhile."""
    root = s.vocab * s.hidden * (1 if s.tied else 2) + s.hidden
    layer = (parameter_count(s) - root) // s.layers
    return 4 * (root + min(2, s.layers) * layer)


def logprob_chunk_bytes(s, rows, response_len, logits_per_chunk):
    """2 · chunk_rows · T · V · 4: token_logprobs sends max(1, logits_per_chunk // (T·V)) rows at a time through
    the LM head; the logits and their fp32 log-softmax exist at once, which the backward turns into the gradient in
    place (LogSoftmaxAt)."""
    chunk_rows = min(rows, max(1, logits_per_chunk // (response_len * s.vocab)))
    return 2 * chunk_rows * response_len * s.vocab * 4


@dataclasses.dataclass
class Plan:
    terms: dict         # term -> bytes, in the order printed
    total: int          # the planned peak, bytes
    device: str         # the torch device type, "cpu" or "cuda"
    available: int = None  # bytes free on it (None: unknown), as check() found them
    baseline: int = 0      # CPU: the resident memory the measurement starts from


def plan(s, cfg, prompt_len, n_eval, logits_per_chunk, processes=1):
    """The plan of one process of a run with flags `cfg` on a model of shape `s`: prompt_len is the longest prompt in
    tokens, n_eval the number of held-out questions, processes how many torchrun started."""
    algo = importlib.import_module(f"algorithms.{cfg.algo}")
    device = torch.device(cfg.device).type
    params = parameter_count(s)
    trained = lora_parameter_count(s, cfg.lora) if cfg.lora else params
    needs_reference = cfg.kl_coef > 0 or getattr(algo, "NEEDS_REFERENCE", False)
    elsewhere = torch.device(cfg.reference_device or cfg.device) != torch.device(cfg.device)
    reference_here = needs_reference and not cfg.lora and not elsewhere
    reference = "none: no KL term" if not needs_reference else "--lora: the policy, adapters off" if cfg.lora else \
        f"on {cfg.reference_device}" if elsewhere else "fp32"
    # the update: micro-batches of whole groups (continued SFT: groups of one reference chain each)
    G = 1 if getattr(algo, "REFERENCE_RESPONSES", False) else cfg.group_size
    groups = cfg.prompts_per_step * cfg.group_size // G
    micro_groups = min(max(1, cfg.micro_batch // G), math.ceil(groups / cfg.minibatches))
    micro_rows = micro_groups * G
    # under torchrun each process samples and evaluates its share of the questions
    prompts_here, questions_here = math.ceil(cfg.prompts_per_step / processes), math.ceil(n_eval / processes)
    sampled_rows = 0 if getattr(algo, "REFERENCE_RESPONSES", False) else prompts_here * cfg.group_size
    eval_rows = min(cfg.eval_batch, questions_here) * max(1, cfg.eval_k)  # greedy, then eval_k samples per question
    rows = max(sampled_rows, eval_rows)
    T = cfg.max_new_tokens
    # --fsdp: 1/N of the weights, the reference and AdamW's state here; gradients whole while accumulated
    N, shard = (processes, f", 1/{processes} here") if cfg.fsdp else (1, "")
    accumulating = math.ceil(groups / cfg.minibatches) > micro_groups
    held = {
        f"weights ({params / 1e6:,.0f}M parameters, fp32{shard})": weights_bytes(params) // N,
        "sampler's bf16 copy": sampler_copy_bytes(params, "fp32" if cfg.fsdp else cfg.dtype),
        f"reference model ({reference}{shard})": reference_bytes(params) // N if reference_here else 0,
        f"optimizer state (AdamW, {trained / 1e6:,.1f}M trained{shard})": optimizer_bytes(trained) // N}
    update = {  # sampling and the update never run at the same time
        "gradients" + (", whole while accumulated" if cfg.fsdp and accumulating else shard):
            gradient_bytes(trained) // (1 if accumulating else N),
        f"activations ({micro_rows} rows x {prompt_len} + {T} tokens"
        + (", checkpointed)" if cfg.grad_checkpointing else ")"):  # --fsdp: each row runs its own prompt
            activation_bytes(s, micro_rows if cfg.fsdp else micro_groups, micro_rows, prompt_len, T, cfg.dtype,
                             cfg.grad_checkpointing),
        "log-prob chunks": logprob_chunk_bytes(s, micro_rows, T, logits_per_chunk)}
    sampling = {
        f"sampler's KV cache ({rows} rows x {prompt_len} + {T} tokens)":
            kv_cache_bytes(s, rows, prompt_len + T, 2 if cfg.dtype == "bf16" else 4),
        "sampler's next-token logits": sampling_logits_bytes(s, rows)}
    if cfg.fsdp:
        update["weights gathered in the update (root + 2 layers)"] = gathered_in_update_bytes(s)
        sampling["weights gathered whole to sample and score"] = weights_bytes(params)
    phases = [sum(terms.values()) for terms in (held, update, sampling)]
    total = phases[0] + (phases[1] + phases[2] if device == "cpu" else max(phases[1:]))
    return Plan(held | update | sampling, total, device)


def available_bytes(device):
    """Free memory on `device` in bytes: CUDA's free memory, the CPU's MemAvailable (/proc/meminfo); None if unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            return int(re.search(r"MemAvailable:\s+(\d+) kB", meminfo.read()).group(1)) * 1024
    except (OSError, AttributeError):
        return None


def resident_bytes():
    """This process's resident memory now (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/status") as status:
            return int(re.search(r"VmRSS:\s+(\d+) kB", status.read()).group(1)) * 1024
    except (OSError, AttributeError):
        return 0


def fitting_flags(s, cfg, prompt_len, n_eval, logits_per_chunk, available, processes=1):
    """(flags with values, the planned bytes with them) that make the plan fit `available` bytes, or None if even
    all of them do not. They are tried in order of what they cost the run: the reference off the GPU, recomputed
    activations, smaller micro-batches, LoRA, shorter responses, smaller groups; then those that a later one made
    unnecessary (the reference's device, once LoRA does without one) are dropped."""
    algo = importlib.import_module(f"algorithms.{cfg.algo}")
    smallest_group = 2 if hasattr(algo, "NEEDS_GROUPS") else 1
    steps = [("reference_device", "cpu")] if torch.device(cfg.device).type == "cuda" else []
    steps += [("grad_checkpointing", True)]
    steps += [("micro_batch", m) for m in halvings(cfg.micro_batch, cfg.group_size)]
    steps += [("lora", LORA_FOR_REFUSAL)] if not cfg.lora else []
    steps += [("max_new_tokens", n) for n in halvings(cfg.max_new_tokens, 256)]
    steps += [("group_size", g) for g in halvings(cfg.group_size, smallest_group)]
    def planned(changes):
        return plan(s, argparse.Namespace(**{**vars(cfg), **changes}), prompt_len, n_eval, logits_per_chunk,
                    processes).total
    changes, total = {}, planned({})
    for flag, value in steps:
        trial = planned({**changes, flag: value})
        if trial < total:  # kept only where it helps (LoRA of a high rank on a small model would not)
            changes[flag], total = value, trial
        if total <= available:
            for dropped in list(changes):
                fewer = {k: v for k, v in changes.items() if k != dropped}
                changes = fewer if planned(fewer) <= available else changes
            return changes, planned(changes)
    return None


def halvings(value, floor):
    """value/2, value/4, ... down to floor (not below it)."""
    halves = []
    while value // 2 >= floor:
        value //= 2
        halves.append(value)
    return halves


def size(n_bytes):
    return f"{n_bytes / GiB:.2f} GiB" if n_bytes >= GiB else f"{n_bytes / 2 ** 20:.0f} MiB"


def flag_text(changes):
    return " ".join(f"--{flag.replace('_', '-')}" + ("" if value is True else f" {value}")
                    for flag, value in changes.items())


def check(config, cfg, prompt_len, n_eval, logits_per_chunk, available=None):
    """Print the plan of a run on a model with HF config `config`; stop with one line naming the flags that would
    make it fit when it does not. Returns the Plan, whose baseline the measurement starts from."""
    s = Shape.from_config(config)
    run_plan = plan(s, cfg, prompt_len, n_eval, logits_per_chunk, distributed.world_size())
    run_plan.available = available_bytes(cfg.device) if available is None else available
    phases = "the phases added up (CPU)" if run_plan.device == "cpu" else "held + the larger of update and sampling"
    free = "unknown" if run_plan.available is None else \
        f"{size(run_plan.available)} " + ("free" if run_plan.device == "cuda" else "available")
    print(f"memory plan, {cfg.model} on {cfg.device} (algorithms/memory.py: estimated from the config and the flags)"
          + "".join(f"\n  {name:<60} {size(value):>9}" for name, value in run_plan.terms.items())
          + f"\n  {'peak: ' + phases:<60} {size(run_plan.total):>9} of {free}", flush=True)
    if run_plan.available is not None and run_plan.total > run_plan.available:
        fix = fitting_flags(s, cfg, prompt_len, n_eval, logits_per_chunk, run_plan.available,
                            distributed.world_size())
        advice = f"it fits with {flag_text(fix[0])} (~{size(fix[1])})" if fix else \
            "no setting of --micro-batch, --grad-checkpointing, --lora, --max-new-tokens or --group-size makes it " \
            "fit: use a smaller model or a larger device"
        raise SystemExit(f"--device {cfg.device}: the run needs ~{size(run_plan.total)}, {free}; {advice}")
    if run_plan.device == "cpu":  # the measurement starts once the model's code is imported too
        importlib.import_module("transformers").MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
        run_plan.baseline = resident_bytes()
    return run_plan


def measured(run_plan=None):
    """The measured peak as text, next to the plan if given. CPU: the resident-memory high-water mark (ru_maxrss)
    above the plan's baseline, the process's resident memory once the libraries and the model's code were imported
    and before any of the run's tensors existed. CUDA: torch.cuda.max_memory_allocated."""
    if torch.cuda.is_available() and (run_plan is None or run_plan.device == "cuda"):
        text = f"{torch.cuda.max_memory_allocated() / GiB:.2f} GiB GPU"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        baseline = run_plan.baseline if run_plan else 0
        text = f"{(peak - baseline) / GiB:.2f} GiB RSS" + (f" above {baseline / GiB:.2f} GiB at the start"
                                                           if baseline else "")
    return text + (f" (planned {run_plan.total / GiB:.2f} GiB)" if run_plan else "")
