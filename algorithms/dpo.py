"""Iterative DPO — Direct Preference Optimization (Rafailov et al., arXiv 2305.18290) run again every
iteration on fresh samples of the current policy: the other baseline of arXiv 2504.11343 ("A Minimalist
Approach to LLM Reasoning"; iterative/online DPO as in Xiong et al., arXiv 2312.11456).

Each prompt whose group holds both a correct response y_w and a wrong one y_l gives one pair; with the
warm-up as the reference π_ref and log π(y|x) = Σ_t log π(y_t | x, y_<t):

    L(θ) = - log σ( β · [ (log π_θ(y_w|x) - log π_ref(y_w|x)) - (log π_θ(y_l|x) - log π_ref(y_l|x)) ] )

averaged over pairs. No reward model and no value: the grader's verdict only decides which response of
the pair is preferred. Groups that are all right or all wrong give no pair.
"""
import torch
import torch.nn.functional as F

from algorithms.common import masked_sum
from algorithms.reinforce import signed_rewards

NEEDS_REFERENCE = True       # the loss is relative to π_ref, with or without a KL coefficient
DEFAULTS = dict(kl_coef=0.0)


def keep_rows(rollout, cfg):
    """One (correct, wrong) pair per prompt that has both, as consecutive rows: (row indices, group size 2)."""
    correct = rollout.correct.view(-1, rollout.group_size)
    has_pair = correct.any(1) & ~correct.all(1)
    first_right, first_wrong = correct.int().argmax(1), (~correct).int().argmax(1)
    base = torch.arange(len(correct), device=correct.device) * rollout.group_size
    pairs = torch.stack([base + first_right, base + first_wrong], dim=1)[has_pair]
    return pairs.flatten(), 2


def advantages(rollout, cfg):
    """The preference label on every token: +1 for a correct (chosen) response, -1 for a wrong one. (B, T)"""
    return signed_rewards(rollout)[:, None] * rollout.response_mask


def loss(logp, batch, cfg):
    """logp (B, T) of rows ordered chosen, rejected, chosen, ... -> (mean DPO loss over pairs, stats)."""
    log_ratio = masked_sum(logp - batch.ref_logprobs, batch.response_mask, dim=1).view(-1, 2)
    margin = cfg.dpo_beta * (log_ratio[:, 0] - log_ratio[:, 1])
    return -F.logsigmoid(margin).sum() / (batch.n_rows // 2), {
        "preference_accuracy": (margin > 0).float().mean().item(), "margin": margin.mean().item()}
