"""Reinforce-Rej — Reinforce that rejects the prompts whose samples are all right or all wrong, from
arXiv 2504.11343 ("A Minimalist Approach to LLM Reasoning", §3).

    A_it = r_i (±1, r = 2 · reward - 1)   if the group of prompt q has both right and wrong samples,
    rejected                              otherwise,
    L(θ) = agg_{i,t} [ -min(ρ_it A_it, clip(ρ_it, 1 - ε_low, 1 + ε_high) A_it) + β · k3(π_θ || π_ref)_it ]

A sample is right when it earns the full reward 1 (a partial reward is a wrong answer, with its own r_i).
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

NEEDS_GROUPS = "it compares the samples of a question, and a group of one is always all right or all wrong"


def add_flags(flags):
    flags.add_argument("--reject-groups", default="all-same", choices=("all-same", "all-wrong", "all-correct"),
                       help="which groups to reject (all-same is Reinforce-Rej; the others are its ablations)")
    flags.add_argument("--reject-by", default="zero", choices=("zero", "drop"),
                       help="zero the rejected groups' advantages (the authors' code) or drop them from the batch")


def rejected(rollout, cfg):
    """(B,) bool: rows whose group is rejected under cfg.reject_groups (all-same: all right or all wrong; all-wrong;
    all-correct), a sample being right when its reward is exactly 1. Groups are G consecutive rows."""
    all_correct, all_wrong = group_outcomes(rollout.rewards == 1, rollout.group_size)
    groups = {"all-same": all_correct | all_wrong, "all-wrong": all_wrong, "all-correct": all_correct}
    return per_row(groups[cfg.reject_groups], rollout.group_size)


def keep_rows(rollout, cfg):
    """All rows (cfg.reject_by zero), or those of the groups that are not rejected (drop): (row indices (K,), G)."""
    keep = ~rejected(rollout, cfg) if cfg.reject_by == "drop" else torch.ones_like(rollout.rewards, dtype=torch.bool)
    return keep.nonzero().squeeze(-1), rollout.group_size


def advantages(rollout, cfg):
    """A_it = r_i = 2 · reward_i - 1, or 0 where the group is rejected. (B, T)"""
    adv = torch.where(rejected(rollout, cfg), 0.0, 2 * rollout.rewards - 1)
    return adv[:, None] * rollout.response_mask


loss = clipped_policy_loss
