"""Iterative DPO — Direct Preference Optimization (Rafailov et al., arXiv 2305.18290) run again every
iteration on fresh samples of the current policy: the other baseline of arXiv 2504.11343 ("A Minimalist
Approach to LLM Reasoning"; iterative/online DPO as in Xiong et al., arXiv 2312.11456).

Each prompt whose group's rewards differ gives one pair: its best response y_w (the highest reward, the first
such) against its worst y_l (the lowest, the first such). With the warm-up as the reference π_ref and
log π(y|x) = Σ_t log π(y_t | x, y_<t):

    L(θ) = - log σ( β · [ (log π_θ(y_w|x) - log π_ref(y_w|x)) - (log π_θ(y_l|x) - log π_ref(y_l|x)) ] )

averaged over pairs. No reward model and no value: the reward only decides which response of the pair is
preferred. Groups whose samples all earn the same reward give no pair.
"""
import torch
import torch.nn.functional as F

from algorithms.common import at_least, masked_sum

NEEDS_REFERENCE = True       # the loss is relative to π_ref, with or without a KL coefficient
DEFAULTS = dict(kl_coef=0.0)
NEEDS_GROUPS = "a preference pair is two samples of one question"


def add_flags(flags):
    flags.add_argument("--dpo-beta", type=at_least(0.0, float), default=0.1,
                       help="β, the strength of the implicit KL to the reference")


def pairs(rewards, group_size):
    """(B,) rewards, groups of G consecutive rows -> (pairs, 2) row indices (best, worst), one per group whose
    rewards differ."""
    r = rewards.view(-1, group_size)
    base = torch.arange(len(r), device=r.device) * group_size
    best_worst = torch.stack([base + r.argmax(1), base + r.argmin(1)], dim=1)
    return best_worst[r.max(1).values > r.min(1).values]


def keep_rows(rollout, cfg):
    """The pairs as consecutive rows, chosen then rejected: (row indices, group size 2)."""
    return pairs(rollout.rewards, rollout.group_size).flatten(), 2


def advantages(rollout, cfg):
    """The preference label on every token: +1 for a chosen response, -1 for a rejected one, 0 for the rest. (B, T)"""
    best_worst = pairs(rollout.rewards, rollout.group_size)
    label = torch.zeros_like(rollout.rewards)
    label[best_worst[:, 0]], label[best_worst[:, 1]] = 1.0, -1.0
    return label[:, None] * rollout.response_mask


def loss(logp, batch, cfg):
    """logp (B, T) of rows ordered chosen, rejected, chosen, ... -> (DPO loss summed over these pairs / the
    mini-batch's pairs, batch.n_rows // 2, so micro-batches add up; stats over the same: preference_accuracy, the
    share of pairs with margin > 0, and margin, the mean β · (log-ratio_w - log-ratio_l))."""
    log_ratio = masked_sum(logp - batch.ref_logprobs, batch.response_mask, dim=1).view(-1, 2)
    margin = cfg.dpo_beta * (log_ratio[:, 0] - log_ratio[:, 1])
    n_pairs = batch.n_rows // 2
    return -F.logsigmoid(margin).sum() / n_pairs, {"preference_accuracy": ((margin > 0).sum() / n_pairs).item(),
                                                   "margin": (margin.detach().sum() / n_pairs).item()}
