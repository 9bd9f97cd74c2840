"""minireason: reinforcement learning from verifiable rewards, small enough to read in one sitting.

    python minireason.py --algo grpo          # warm up a tiny model with SFT, then train it with GRPO

Read top to bottom: the task (arithmetic problems with reference chains of thought), the tiny model, the
hand-written sampler, log-probs, the rollout, the update, SFT warm-up, evaluation, the RL loop, the CLI.
Each algorithm lives in algorithms/<name>.py (its formula, then its advantages and loss); what they
share is in algorithms/common.py; the reward is algorithms/grader.py.

The recipe is ReFT's (arXiv 2401.08967): SFT on reference chains of thought first (the warm-up, cached so
that every algorithm and seed starts from the same checkpoint), then RL on the same questions, and finally
the comparison ReFT makes: what continued SFT reaches on held-out questions in the same wall time.
"""
import argparse
import dataclasses
import hashlib
import importlib
import json
import os
import random
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import torch
import transformers
from tqdm import tqdm

from algorithms.common import group_outcomes, kl_estimate, masked_mean, entropy_from_logits
from algorithms.grader import grade, grade_batch, has_answer  # noqa: F401  (grade is part of this module's API)

ALGORITHMS = ("grpo", "raft", "raftpp", "reinforce", "reinforce_rej", "ppo", "dpo")

# ----------------------------------------------------------------------------------------------------
# The default task: arithmetic expressions solved one operation at a time


@dataclass
class Problem:
    question: str  # what the model is asked, e.g. "7-3*4"
    solution: str  # reference chain of thought, ending in \boxed{answer}
    answer: str    # the final answer alone, e.g. "-5" or "7/2"


def _fmt(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def _solve(numbers, ops):
    """Evaluate numbers[0] ops[0] numbers[1] ... with * and / before + and -, left to right, one
    operation per step. Returns (steps like "3*4=12", value)."""
    values, ops, steps = [Fraction(n) for n in numbers], list(ops), []
    for level in ("*/", "+-"):
        i = 0
        while i < len(ops):
            if ops[i] not in level:
                i += 1
                continue
            a, b, op = values[i], values[i + 1], ops[i]
            if op == "/" and b == 0:
                return None, None
            value = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}[op]
            steps.append(f"{_fmt(a)}{op}{_fmt(b)}={_fmt(value)}")
            values[i:i + 2], ops[i:i + 1] = [value], []
    return steps, values[0]


def make_arith_problems(n, seed, min_ops=2, max_ops=3, max_number=9):
    """n distinct problems like "7-3*4+2" with 2-3 operations on 1..9; answers may be negative, or a
    fraction when the last step divides. Intermediate values stay small integers so every step is a fact
    a small model can learn."""
    rng, seen, problems = random.Random(seed), set(), []
    while len(problems) < n:
        k = rng.randint(min_ops, max_ops)
        numbers = [rng.randint(1, max_number) for _ in range(k + 1)]
        ops = [rng.choice("+-*/") for _ in range(k)]
        question = "".join(f"{a}{op}" for a, op in zip(numbers, ops)) + str(numbers[-1])
        steps, value = _solve(numbers, ops)
        if question in seen or steps is None or any("/" in s.split("=")[1] for s in steps[:-1]) \
                or any(abs(int(Fraction(s.split("=")[1]))) > 99 for s in steps):
            continue
        seen.add(question)
        problems.append(Problem(question, ", ".join(steps) + f". \\boxed{{{_fmt(value)}}}", _fmt(value)))
    return problems


def load_task(data, n_train, n_test):
    """The (train, held-out test) problems. `arith` is the built-in task; its split depends only on its
    own fixed seed, so every run and every --seed sees the same questions."""
    if data != "arith":
        raise SystemExit(f"--data {data}: only the built-in task 'arith' is available")
    problems = make_arith_problems(n_train + n_test, seed=1234)
    return problems[:n_train], problems[n_train:]


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


def load_model(name, cache_dir, device):
    """`tiny` (built once into the cache), or any HF causal LM id or local checkpoint folder."""
    if name == "tiny":
        path = cache_dir / f"tiny-{settings_hash(TINY_MODEL)}"
        if not path.exists():
            build_tiny_model(path)
        name = str(path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(name)
    model = transformers.AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32).to(device)
    # Dropout off everywhere: sampling, scoring and updates must see the same function (ReFT does this too).
    model.eval()
    return model, tokenizer


def format_prompt(question):
    return f"Q: {question}\nA: "


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
    """(A, V) logits -> (A,) sampled tokens; temperature 0 is greedy."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens ranked above it already cover top_p (the first token always stays)
        drop = probs.cumsum(-1) - probs > top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1).squeeze(-1)


@torch.inference_mode()
def sample(model, prompts, max_new_tokens, eos_id, pad_id, temperature=1.0, top_k=0, top_p=1.0):
    """Sample a response for each of B prompts (lists of token ids).

    Returns prompt_ids (B, P) and prompt_mask (B, P), left-padded; response_ids (B, T), right-padded with
    pad_id; response_mask (B, T) float, 1 on every generated token up to and including EOS (built from
    positions, never from pad_id, which may equal eos_id); stopped (B,) bool, True where EOS was produced.

    A row that has produced EOS leaves the batch and the KV cache, so finished rows cost nothing. Each row
    draws its tokens from its own distribution, so removing rows changes which random numbers a row gets,
    not the distribution it samples from.
    """
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = left_pad(prompts, pad_id)
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    cache = transformers.DynamicCache(config=model.config)
    logits = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=position_ids(prompt_mask),
                   past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
    B = len(prompts)
    tokens = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
    lengths = torch.zeros(B, dtype=torch.long, device=device)
    stopped = torch.zeros(B, dtype=torch.bool, device=device)
    rows = torch.arange(B, device=device)        # which original rows are still generating
    attention_mask = prompt_mask                 # (A, P + t) for those rows
    next_position = prompt_mask.sum(-1)          # (A,)
    for t in range(max_new_tokens):
        token = next_tokens(logits, temperature, top_k, top_p)
        tokens[rows, t] = token
        lengths[rows] += 1
        finished = token == eos_id
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
    return prompt_ids, prompt_mask, tokens[:, :T], response_mask, stopped


# ----------------------------------------------------------------------------------------------------
# Log-probs of response tokens under a model


def response_logprobs(model, batch, temperature, with_entropy=False):
    """log π(response_t | prompt, response_<t) at the sampling temperature, for every response position.

    batch: anything with prompt_ids, prompt_mask (B, P) and response_ids, response_mask (B, T).
    Returns logprobs (B, T) (0 on padding), the policy's entropy per position (B, T) if asked (else None),
    and the last hidden states (B, T, H) at the positions that predict each response token (the value
    head reads them). Logits are computed for response positions only: the prompt is never scored.
    """
    P = batch.prompt_ids.size(1)
    input_ids = torch.cat([batch.prompt_ids, batch.response_ids], dim=1)
    attention_mask = torch.cat([batch.prompt_mask, batch.response_mask.long()], dim=1)
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                              position_ids=position_ids(attention_mask)).last_hidden_state
    # the hidden state at position j predicts token j + 1: positions P-1 .. P+T-2 predict the response
    hidden = hidden[:, P - 1:-1]
    logits = model.get_output_embeddings()(hidden).float() / temperature
    logprobs = logits.gather(-1, batch.response_ids[..., None]).squeeze(-1) - logits.logsumexp(-1)
    logprobs = logprobs * batch.response_mask
    with torch.no_grad():
        entropy = entropy_from_logits(logits) if with_entropy else None
    return logprobs, entropy, hidden


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
    return torch.optim.AdamW([p for m in modules for p in m.parameters()], lr=lr, weight_decay=0.01)


# ----------------------------------------------------------------------------------------------------
# SFT: the warm-up (ReFT stage 1) and the continued-SFT baseline


def reference_batch(tokenizer, problems):
    """The reference chains of thought as a Rollout of group size 1 (they play the role of the samples)."""
    prompts = [tokenizer.encode(format_prompt(p.question)) for p in problems]
    responses = [tokenizer.encode(p.solution) + [tokenizer.eos_token_id] for p in problems]
    prompt_ids, prompt_mask = left_pad(prompts, tokenizer.pad_token_id)
    response_ids, response_mask = right_pad(responses, tokenizer.pad_token_id)
    return Rollout(prompt_ids, prompt_mask, response_ids, response_mask, group_size=1)


def supervised_finetune(model, tokenizer, problems, cfg, steps=None, seconds=None, desc="sft"):
    """Minimise the NLL of the reference chains (algorithms/sft.py) for `steps` optimizer steps or for
    `seconds` of wall time, going over `problems` in shuffled epochs. Returns the steps taken."""
    sft = importlib.import_module("algorithms.sft")
    data = reference_batch(tokenizer, problems).to(cfg.device)
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
    later run of any algorithm or seed on the same model and task starts from the very same checkpoint."""
    settings = dict(model=cfg.model, tiny=TINY_MODEL if cfg.model == "tiny" else None, data=cfg.data,
                    n_train=cfg.n_train, steps=cfg.sft_steps, lr=cfg.sft_lr, batch=cfg.sft_batch, seed=0)
    path = cfg.cache_dir / f"warmup-{settings_hash(settings)}"
    if not path.exists():
        torch.manual_seed(0)
        model, tokenizer = load_model(cfg.model, cfg.cache_dir, cfg.device)
        supervised_finetune(model, tokenizer, train_problems, cfg, steps=cfg.sft_steps, desc="warm-up (SFT)")
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, path)  # atomic: a crash never leaves a half-written warm-up behind
    return path


# ----------------------------------------------------------------------------------------------------
# Rollouts, rewards and evaluation


def decode_responses(tokenizer, response_ids, response_mask):
    lengths = response_mask.sum(-1).long().tolist()
    return [tokenizer.decode(ids[:n], skip_special_tokens=True) for ids, n in zip(response_ids.tolist(), lengths)]


def generate(model, tokenizer, problems, cfg, group_size=1, temperature=None):
    """Sample `group_size` responses per problem and grade them: a Rollout with rewards, plus the texts.
    Only an answer from a response that stopped by itself (EOS) can earn reward."""
    temperature = cfg.temperature if temperature is None else temperature
    prompts = [tokenizer.encode(format_prompt(p.question)) for p in problems for _ in range(group_size)]
    prompt_ids, prompt_mask, response_ids, response_mask, stopped = sample(
        model, prompts, cfg.max_new_tokens, tokenizer.eos_token_id, tokenizer.pad_token_id,
        temperature, cfg.top_k, cfg.top_p)
    texts = decode_responses(tokenizer, response_ids, response_mask)
    references = [p.answer for p in problems for _ in range(group_size)]
    correct = torch.tensor(grade_batch(texts, references, stopped.tolist()), device=response_ids.device)
    rewards = correct.float()
    if cfg.partial_reward:  # ReFT: 0.1 for a wrong answer that was at least given, 0 for none
        answered = torch.tensor([has_answer(t) for t in texts], device=response_ids.device) & stopped
        rewards = torch.where(~correct & answered, 0.1, rewards)
    rollout = Rollout(prompt_ids, prompt_mask, response_ids, response_mask, group_size,
                      rewards=rewards, correct=correct)
    return rollout, texts


def evaluate(model, tokenizer, problems, cfg):
    """Held-out greedy accuracy: the fraction of questions whose greedy response grades correct."""
    correct = 0
    for i in range(0, len(problems), cfg.eval_batch):
        rollout, _ = generate(model, tokenizer, problems[i:i + cfg.eval_batch], cfg, temperature=0)
        correct += int(rollout.correct.sum())
    return correct / len(problems)


# ----------------------------------------------------------------------------------------------------
# The RL loop


def train(cfg):
    transformers.utils.logging.disable_progress_bar()  # one bar per phase is ours; no loading bars
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({k: str(v) if isinstance(v, Path) else v
                                                 for k, v in vars(cfg).items()}, indent=2))
    train_problems, test_problems = load_task(cfg.data, cfg.n_train, cfg.n_test)
    warm_start = warm_up(cfg, train_problems)

    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    algo = importlib.import_module(f"algorithms.{cfg.algo}")
    model, tokenizer = load_model(str(warm_start), cfg.cache_dir, cfg.device)
    needs_reference = cfg.kl_coef > 0 or getattr(algo, "NEEDS_REFERENCE", False)
    reference = load_model(str(warm_start), cfg.cache_dir, cfg.device)[0] if needs_reference else None
    value_head = None
    if getattr(algo, "VALUE_HEAD", False):  # a linear layer on the policy's own last hidden state
        value_head = torch.nn.Linear(model.config.hidden_size, 1).to(cfg.device)
        torch.nn.init.zeros_(value_head.weight)
        torch.nn.init.zeros_(value_head.bias)
    optimizer = make_optimizer([model] + ([value_head] if value_head else []), cfg.lr)
    metrics_file = open(out / "metrics.jsonl", "w")

    def log(metrics):
        metrics_file.write(json.dumps(metrics) + "\n")
        metrics_file.flush()

    accuracy = {0: evaluate(model, tokenizer, test_problems, cfg)}
    log({"step": 0, "eval/accuracy": accuracy[0]})
    order, rl_seconds = [], 0.0
    bar = tqdm(range(1, cfg.steps + 1), desc=cfg.algo, unit="step", dynamic_ncols=True)
    for step in bar:
        start = time.time()
        if len(order) < cfg.prompts_per_step:
            order += random.sample(range(len(train_problems)), len(train_problems))
        problems, order = [train_problems[i] for i in order[:cfg.prompts_per_step]], order[cfg.prompts_per_step:]

        rollout, _ = generate(model, tokenizer, problems, cfg, group_size=cfg.group_size)
        rollout.old_logprobs, entropy, rollout.old_values = score(model, rollout, cfg.temperature,
                                                                  cfg.micro_batch, value_head)
        if reference is not None:
            rollout.ref_logprobs = score(reference, rollout, cfg.temperature, cfg.micro_batch, with_entropy=False)[0]
        rollout.advantages = algo.advantages(rollout, cfg)
        batch = rollout
        if hasattr(algo, "keep_rows"):  # RAFT trains on the correct samples, DPO on pairs, ...
            rows, group_size = algo.keep_rows(rollout, cfg)
            batch = dataclasses.replace(rollout.select(rows), group_size=group_size) if len(rows) else None
        stats = update(model, optimizer, batch, algo, cfg, value_head) if batch is not None else {}
        rl_seconds += time.time() - start

        mask = rollout.response_mask
        all_correct, all_wrong = group_outcomes(rollout.correct, rollout.group_size)
        metrics = {"step": step, "train/reward": rollout.rewards.mean().item(),
                   "train/accuracy": rollout.correct.float().mean().item(),
                   "train/entropy": masked_mean(entropy, mask).item(),
                   "train/response_length": mask.sum(-1).mean().item(),
                   "train/groups_all_correct": all_correct.float().mean().item(),
                   "train/groups_all_wrong": all_wrong.float().mean().item(),
                   "train/zero_advantage_tokens": masked_mean((rollout.advantages == 0).float(), mask).item(),
                   "train/trained_rows": 0 if batch is None else len(batch.rewards),
                   **{f"train/{k}": v for k, v in stats.items()}, "time/rl_seconds": rl_seconds}
        if reference is not None:
            metrics["train/kl"] = masked_mean(kl_estimate(rollout.old_logprobs, rollout.ref_logprobs, "k3"), mask).item()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            accuracy[step] = metrics["eval/accuracy"] = evaluate(model, tokenizer, test_problems, cfg)
        log(metrics)
        bar.set_postfix(reward=f"{metrics['train/reward']:.2f}", acc=f"{accuracy[max(accuracy)]:.3f}")

    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    if value_head is not None:
        torch.save(value_head.state_dict(), out / "model" / "value_head.pt")
    summary = {"warm-up (SFT), step 0": accuracy[0], f"+ {cfg.algo} {cfg.steps} steps ({rl_seconds:.0f} s)": accuracy[cfg.steps]}
    if cfg.sft_baseline:
        # ReFT's comparison: the same warm-up, trained on for the same wall time with SFT instead of RL
        torch.manual_seed(cfg.seed)
        baseline, _ = load_model(str(warm_start), cfg.cache_dir, cfg.device)
        sft_steps = supervised_finetune(baseline, tokenizer, train_problems, cfg, seconds=rl_seconds,
                                        desc="continued SFT, same wall time")
        summary[f"+ continued SFT {sft_steps} steps ({rl_seconds:.0f} s)"] = baseline_accuracy = \
            evaluate(baseline, tokenizer, test_problems, cfg)
        log({"step": cfg.steps, "baseline/sft_accuracy": baseline_accuracy, "baseline/sft_steps": sft_steps})
    metrics_file.close()
    print(f"\nheld-out greedy accuracy ({len(test_problems)} questions)")
    for name, acc in summary.items():
        print(f"  {name:<40} {100 * acc:5.1f} %")
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


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--algo", default="grpo", choices=ALGORITHMS, help="the RL algorithm (algorithms/<name>.py)")
    a("--model", default="tiny", help="'tiny' (a 0.8M-parameter char-level LLaMA built here), an HF id or a folder")
    a("--data", default="arith", help="the task: 'arith', the built-in arithmetic problems")
    a("--n-train", type=at_least(1), default=1000, help="training questions (a fixed set, as in ReFT)")
    a("--n-test", type=at_least(1), default=500, help="held-out questions for evaluation")
    a("--steps", type=at_least(0), default=25, help="RL iterations (one rollout and its updates each)")
    a("--seed", type=int, default=0, help="seed for the RL phase (the warm-up always uses seed 0)")
    a("--out", default="runs/{algo}-seed{seed}", help="run folder")
    a("--cache-dir", default=os.environ.get("MINIREASON_CACHE", "~/.cache/minireason"),
      help="where the tiny model and warm-up checkpoints are cached (env MINIREASON_CACHE)")
    a("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    # rollouts
    a("--prompts-per-step", type=at_least(1), default=32, help="questions sampled per RL iteration")
    a("--group-size", type=at_least(1), default=8, help="samples per question (a GRPO group)")
    a("--max-new-tokens", type=at_least(1), default=64, help="response length limit; longer responses earn no reward")
    a("--temperature", type=at_least(0.0, float), default=1.0, help="sampling temperature (log-probs use it too)")
    a("--top-k", type=at_least(0), default=0, help="sample from the k likeliest tokens only (0: all)")
    a("--top-p", type=at_least(0.0, float), default=1.0, help="nucleus sampling: the smallest set with this much probability")
    # the update
    a("--lr", type=at_least(0.0, float), default=1e-4, help="AdamW learning rate for RL")
    a("--epochs", type=at_least(1), default=1, help="passes over each rollout")
    a("--minibatches", type=at_least(1), default=2, help="optimizer steps per pass over a rollout")
    a("--micro-batch", type=at_least(1), default=256, help="rows per forward/backward (gradient accumulation)")
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
    a("--sft-steps", type=at_least(0), default=400, help="warm-up SFT steps (ReFT stage 1)")
    a("--sft-lr", type=at_least(0.0, float), default=1e-3, help="warm-up SFT learning rate")
    a("--sft-batch", type=at_least(1), default=64, help="warm-up SFT batch size")
    a("--eval-every", type=at_least(1), default=10, help="held-out evaluation every this many RL steps")
    a("--eval-batch", type=at_least(1), default=500, help="questions per evaluation batch")
    a("--sft-baseline", action=argparse.BooleanOptionalAction, default=True,
      help="after RL, continue SFT from the warm-up for the same wall time and report its accuracy (ReFT's baseline)")
    # An algorithm may change a default where its paper differs (ppo: β = 0.05 in the reward, 2 epochs);
    # a flag the user gives still wins.
    first = argparse.ArgumentParser(add_help=False)  # --algo alone, so --help shows the algorithm's defaults
    first.add_argument("--algo", default="grpo", choices=ALGORITHMS)
    algo = importlib.import_module(f"algorithms.{first.parse_known_args(argv)[0].algo}")
    p.set_defaults(**getattr(algo, "DEFAULTS", {}))
    cfg = p.parse_args(argv)
    cfg.cache_dir = Path(cfg.cache_dir).expanduser()
    cfg.out = cfg.out.format(algo=cfg.algo, seed=cfg.seed)
    return cfg


if __name__ == "__main__":
    train(parse_args())
