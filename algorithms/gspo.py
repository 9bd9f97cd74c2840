"""GSPO — Group Sequence Policy Optimization (Zheng et al., arXiv 2507.18071): GRPO's group advantages with one
importance ratio per response, clipped per response, instead of one per token:

    s_i  = (π_θ(o_i | q) / π_old(o_i | q))^(1/|o_i|) = exp( (1/|o_i|) sum_t (log π_θ(o_it) - log π_old(o_it)) )
    L(θ) = -(1/B) sum_i min(s_i A_i, clip(s_i, 1 - ε_low, 1 + ε_high) A_i)   (+ β · k3, aggregated by --loss-agg)
    ∇L   = -(1/B) sum_i s_i A_i · (1/|o_i|) sum_t ∇ log π_θ(o_it)            where s_i is not clipped, else 0

B is the mini-batch's rows. s_i is a geometric mean over the response's tokens, so it moves far less than a
token's ratio, and the paper clips it at ε_low = 3e-4, ε_high = 4e-4 (DEFAULTS). On a rollout's first mini-batch
s_i = 1 and the gradient is GRPO's with --loss-agg seq-mean-token-mean; they differ only on later mini-batches
(--minibatches, --epochs), where a whole response is kept or clipped together. A_i, the reward (r = 2 · reward
- 1) and the KL term are GRPO's (grpo.py).
"""
from algorithms import grpo
from algorithms.common import aggregate_loss, clipped_surrogate, kl_estimate, masked_mean

DEFAULTS = dict(clip_low=3e-4, clip_high=4e-4)
NEEDS_GROUPS = grpo.NEEDS_GROUPS
advantages = grpo.advantages


def loss(logp, batch, cfg):
    """The sequence-level clipped surrogate. logp (B, T) under the current policy -> (loss, stats), normalised by
    the mini-batch's rows (the surrogate, the clip fraction: a share of responses) or tokens (the KL term)."""
    mask = batch.response_mask
    # log s_i = mean_t log π_θ - mean_t log π_old: PPO's surrogate on the responses' mean log-probs (B, 1) is GSPO's
    mean_logp = masked_mean(logp, mask, dim=1)[:, None]
    mean_old_logp = masked_mean(batch.old_logprobs, mask, dim=1)[:, None]
    response_loss, clipped = clipped_surrogate(mean_logp, mean_old_logp, batch.advantages[:, :1],  # A_i: any token's
                                               cfg.clip_low, cfg.clip_high, cfg.dual_clip)
    total = response_loss.sum() / batch.n_rows
    if cfg.kl_coef:
        total = total + aggregate_loss(cfg.kl_coef * kl_estimate(logp, batch.ref_logprobs, "k3"), mask, cfg.loss_agg,
                                       batch.n_tokens, batch.n_rows, cfg.max_new_tokens)
    return total, {"clip_fraction": (clipped.float().sum() / batch.n_rows).item()}
