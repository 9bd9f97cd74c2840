"""GRPO — Group Relative Policy Optimization (Shao et al., DeepSeekMath, arXiv 2402.03300), in the form
arXiv 2504.11343 ("A Minimalist Approach to LLM Reasoning") trains and compares against.

For each prompt q the policy samples a group of G responses o_1..o_G with rewards r_1..r_G, taken as ±1 (a right
answer +1, anything else -1: r = 2 · reward - 1, as 2504.11343 trains; a partial reward lands in between). Every
token of o_i gets the same group-normalised advantage

    A_i = (r_i - mean(r_1..r_G)) / (std(r_1..r_G) + eps)

and the policy minimises the clipped surrogate plus a KL penalty to the reference model:

    L(θ) = agg_{i,t} [ -min(ρ_it A_i, clip(ρ_it, 1 - ε_low, 1 + ε_high) A_i) + β · k3(π_θ || π_ref)_it ]
    ρ_it = π_θ(o_it | q, o_i,<t) / π_old(o_it | q, o_i,<t)

A group whose samples are all right or all wrong has A_i = 0: it teaches nothing but the KL term.
The 2504.11343 ablation "GRPO without std normalisation" is `--no-std-normalize`: A_i = r_i - mean, with r = ±1
(twice the advantage that 0/1 rewards would give, and the same scale as Reinforce's r_i).
"""
import argparse

from algorithms.common import clipped_policy_loss, group_view

EPS = 1e-6  # verl's epsilon; TRL uses 1e-4
NEEDS_GROUPS = "a sample's advantage is its reward minus its group's mean: always 0 in a group of one"


def add_flags(flags):
    flags.add_argument("--std-normalize", action=argparse.BooleanOptionalAction, default=True,
                       help="divide advantages by the group's std (--no-std-normalize: the 2504.11343 ablation)")


def group_advantages(rewards, group_size, normalize_std=True):
    """(B,) rewards, groups of G consecutive rows -> (B,) advantages A_i = (r_i - mean_group) / (std_group + EPS),
    std the unbiased one (n - 1, torch.std's default); r_i - mean_group if not normalize_std. A group of one: 0."""
    r = group_view(rewards.float(), group_size)
    adv = r - r.mean(dim=1, keepdim=True)
    if normalize_std and group_size > 1:
        adv = adv / (r.std(dim=1, keepdim=True) + EPS)
    return adv.flatten()


def advantages(rollout, cfg):
    """Per-token advantages (B, T): each response's A_i on all of its tokens."""
    signed = 2 * rollout.rewards - 1  # ±1
    return group_advantages(signed, rollout.group_size, cfg.std_normalize)[:, None] * rollout.response_mask


loss = clipped_policy_loss
