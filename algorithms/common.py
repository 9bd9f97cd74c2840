"""What every algorithm shares: masked means, loss aggregation, the clipped surrogate, KL estimators,
entropy, group statistics and whitening. Each is one small function; the algorithm files only call them.

Notation:
    logp          log-prob of a sampled token under the policy being trained        (B, T)
    old_logp      the same under the policy that sampled it (fixed for a rollout)  (B, T)
    ref_logp      the same under the frozen reference model (the warm-up)          (B, T)
    mask          1.0 on response tokens (EOS included), 0.0 on padding             (B, T)
B rows = prompts x samples per prompt; one prompt's samples form a *group* of G consecutive rows.
"""
import argparse
import math

import torch

from algorithms import distributed


def masked_sum(x, mask, dim=None):
    """Sum of x over the positions where mask is 1."""
    return (x * mask).sum() if dim is None else (x * mask).sum(dim)


def masked_mean(x, mask, dim=None):
    """Mean of x over the positions where mask is 1 (0 where the mask is empty, never NaN)."""
    return masked_sum(x, mask, dim) / mask.sum(dim).clamp(min=1)


LOSS_AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def aggregate_loss(token_loss, mask, mode, n_tokens, n_rows, max_tokens=None):
    """Reduce a per-token loss (B, T) to a scalar.

    token-mean               sum_{i,t} L * mask / (tokens in the mini-batch)   (verl's default, 2504.11343, DAPO)
    seq-mean-token-mean      mean_i ( sum_t L * mask / |o_i| )                 (the GRPO paper's form)
    seq-mean-token-sum-norm  sum_{i,t} L * mask / (rows * max_tokens)          (Dr. GRPO, arXiv 2503.20783: a
                             constant normaliser, so no response's tokens weigh more for being in a short one)

    A mini-batch may be split into micro-batches whose gradients are accumulated, so the normaliser is the
    whole mini-batch's token count (n_tokens) or row count (n_rows), not this micro-batch's: the micro-batch
    losses then add up to exactly the mini-batch loss. max_tokens is the response length limit L_max.
    """
    if mode == "token-mean":
        return masked_sum(token_loss, mask) / n_tokens
    if mode == "seq-mean-token-mean":
        return masked_mean(token_loss, mask, dim=1).sum() / n_rows
    if mode == "seq-mean-token-sum-norm":
        return masked_sum(token_loss, mask) / (n_rows * max_tokens)
    raise ValueError(f"unknown loss aggregation {mode!r}")


MAX_LOG_RATIO = 20.0  # verl and OpenRLHF clamp log-ratios to ±20: exp(100) would be inf, and inf * 0 NaN


def clipped_surrogate(logp, old_logp, advantages, eps_low=0.2, eps_high=0.2, dual_clip=None):
    """PPO's clipped surrogate, per token (to be minimised).

        ratio = exp(clamp(logp - old_logp, ±MAX_LOG_RATIO))
        L     = -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A)
        dual clip (A < 0 only):  L = min(L, -c * A)     (bounds the loss of a very unlikely bad token)

    With old_logp == logp (first update on a fresh rollout) the ratio is 1 and the gradient is -A * grad logp.
    Returns (loss (B, T), clipped (B, T) bool: where the clip, not the ratio, set the value).
    """
    ratio = torch.exp(torch.clamp(logp - old_logp, -MAX_LOG_RATIO, MAX_LOG_RATIO))
    unclipped = -ratio * advantages
    clipped = -torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * advantages
    loss = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        loss = torch.where(advantages < 0, torch.minimum(loss, -dual_clip * advantages), loss)
    return loss, clipped > unclipped


def kl_estimate(logp, ref_logp, kind):
    """Per-token estimate of KL(policy || reference) from a sample of the policy, with d = logp - ref_logp.

    k1 = d                    unbiased, high variance, can be negative (PPO puts it in the reward)
    k2 = d^2 / 2              biased, low variance
    k3 = exp(-d) - 1 + d      unbiased, >= 0, low variance (GRPO puts it in the loss)
    d is clamped to +-20 and k3 to <= 10, as public implementations do, so one wild token cannot blow up.
    """
    d = torch.clamp(logp - ref_logp, -20, 20)
    if kind == "k1":
        return d
    if kind == "k2":
        return 0.5 * d * d
    if kind == "k3":
        return torch.clamp(torch.exp(-d) - 1 + d, max=10)
    raise ValueError(f"unknown KL estimator {kind!r}")


def entropy_from_logits(logits):
    """Entropy of the softmax over the last dimension: (..., V) -> (...)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def group_view(rewards, group_size):
    """(B,) rewards of consecutive groups -> (B / G, G)."""
    return rewards.view(-1, group_size)


def group_outcomes(correct, group_size):
    """Per group: are all samples right / all wrong? correct (B,) bool -> (all_correct, all_wrong), each (B / G,)."""
    correct = group_view(correct, group_size)
    return correct.all(dim=1), ~correct.any(dim=1)


def per_row(group_values, group_size):
    """(B / G,) per-group values -> (B,) by repeating each for its G rows."""
    return group_values.repeat_interleave(group_size)


def whiten(x, mask, eps=1e-8):
    """Shift and scale x (B, T) to mean 0, variance 1 over the masked positions (PPO's advantages, REINFORCE++'s);
    under torchrun over every rank's rows: the whole batch's statistics, as one process would whiten it."""
    mean = distributed.masked_mean(x, mask)
    var = distributed.masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def clipped_policy_loss(logp, batch, cfg):
    """The loss GRPO, Reinforce, Reinforce-Rej and RAFT++ share; they differ only in batch.advantages.

        L = agg_{i,t} [ clipped_surrogate(ρ_it, A_it) + β · k3(π_θ || π_ref)_it ]

    logp (B, T) under the current policy; batch carries old_logprobs, ref_logprobs (when β > 0),
    advantages and response_mask (B, T), and the mini-batch normalisers n_tokens, n_rows (cfg: clip_low, clip_high,
    dual_clip, kl_coef, loss_agg; no KL term when kl_coef is 0). Returns (loss, {"clip_fraction": tokens where the
    clip set the value / batch.n_tokens}): like the loss, normalised by the whole mini-batch, so that a mini-batch's
    micro-batches add up to its value.
    """
    token_loss, clipped = clipped_surrogate(logp, batch.old_logprobs, batch.advantages, cfg.clip_low, cfg.clip_high,
                                            cfg.dual_clip)
    if cfg.kl_coef:
        token_loss = token_loss + cfg.kl_coef * kl_estimate(logp, batch.ref_logprobs, "k3")
    mask = batch.response_mask
    return aggregate_loss(token_loss, mask, cfg.loss_agg, batch.n_tokens, batch.n_rows, cfg.max_new_tokens), {
        "clip_fraction": (masked_sum(clipped.float(), mask) / batch.n_tokens).item()}


def finite_number(text, kind):
    """A command-line value as a finite number of `kind` (int or float), or the error argparse reports for its flag."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def at_least(minimum, kind=int, maximum=None):
    """A command-line type: a finite number >= minimum (and <= maximum); argparse names the flag in the error."""
    def parse(text):
        value = finite_number(text, kind)
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"at least {minimum}" + (f" and at most {maximum}" if maximum is not None else "")
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value
    return parse


def above(minimum, maximum):
    """A command-line type: a finite float > minimum and <= maximum (a share, say, where 0 would leave nothing)."""
    def parse(text):
        value = finite_number(text, float)
        if not minimum < value <= maximum:
            raise argparse.ArgumentTypeError(f"must be above {minimum} and at most {maximum}, got {text}")
        return value
    return parse

