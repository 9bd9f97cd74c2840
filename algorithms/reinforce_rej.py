"""Reinforce-Rej — Reinforce that rejects the prompts whose samples are all right or all wrong, from
arXiv 2504.11343 ("A Minimalist Approach to LLM Reasoning", §3).

    A_it = r_i (±1)   if the group of prompt q has both right and wrong samples,
    rejected          otherwise,
    L(θ) = agg_{i,t} [ -min(ρ_it A_it, clip(ρ_it, 1 - ε_low, 1 + ε_high) A_it) + β · k3(π_θ || π_ref)_it ]

Two readings of "reject" (`--reject-by`):
  zero  the rejected groups' advantages are set to 0 but their tokens stay in the batch, so they still count
        in a token-mean's denominator (and in the KL term). This is what the authors' released code does,
        and so what reproduces the paper's numbers: the default.
  drop  the rejected groups leave the batch before the update, as the paper's text describes ("filter out
        prompts"); each remaining token then weighs more in the mean.
Which groups are rejected (`--reject-groups`) gives the paper's ablations of where GRPO's gain comes from:
  all-same     all-correct and all-wrong groups (Reinforce-Rej itself)
  all-wrong    only groups with no correct sample ("Reinforce + remove all-wrong")
  all-correct  only groups with no wrong sample ("Reinforce + remove all-correct")
The third ablation, GRPO without std normalisation, is `--algo grpo --no-std-normalize`.
"""
import torch

from algorithms.common import clipped_policy_loss, group_outcomes, per_row
from algorithms.reinforce import signed_rewards


def rejected(rollout, cfg):
    """(B,) bool: rows whose group is rejected under cfg.reject_groups."""
    all_correct, all_wrong = group_outcomes(rollout.correct, rollout.group_size)
    groups = {"all-same": all_correct | all_wrong, "all-wrong": all_wrong, "all-correct": all_correct}
    return per_row(groups[cfg.reject_groups], rollout.group_size)


def keep_rows(rollout, cfg):
    """All rows (reject by zeroing), or those of the groups that are not rejected (reject by dropping)."""
    keep = ~rejected(rollout, cfg) if cfg.reject_by == "drop" else torch.ones_like(rollout.correct)
    return keep.nonzero().squeeze(-1), rollout.group_size


def advantages(rollout, cfg):
    """A_it = r_i, or 0 where the group is rejected. (B, T)"""
    adv = torch.where(rejected(rollout, cfg), 0.0, signed_rewards(rollout))
    return adv[:, None] * rollout.response_mask


loss = clipped_policy_loss
