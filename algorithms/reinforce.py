"""Reinforce — the vanilla policy gradient with the reward as the advantage, as arXiv 2504.11343
("A Minimalist Approach to LLM Reasoning", §2) trains it.

Every token of response o_i gets its reward r_i ∈ {+1, -1} itself (r = 2 · reward - 1: +1 for a right answer,
-1 otherwise; a partial reward lands in between): no baseline, no normalisation. (The authors confirmed they
trained with ±1; with 0/1 a wrong answer would never be pushed down.) It shares the clipped surrogate so that
several mini-batch steps per rollout stay sound:

    L(θ) = agg_{i,t} [ -min(ρ_it r_i, clip(ρ_it, 1 - ε_low, 1 + ε_high) r_i) + β · k3(π_θ || π_ref)_it ]
"""
from algorithms.common import clipped_policy_loss


def advantages(rollout, cfg):
    """A_it = r_i = 2 · reward_i - 1 on every token of response i. (B, T)"""
    return (2 * rollout.rewards - 1)[:, None] * rollout.response_mask


loss = clipped_policy_loss
