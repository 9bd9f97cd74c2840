"""Reinforce — the vanilla policy gradient with the reward as the advantage, as arXiv 2504.11343
("A Minimalist Approach to LLM Reasoning", §2) trains it.

Every token of response o_i gets the reward r_i ∈ {+1, -1} itself: no baseline, no normalisation.
(The authors confirmed they trained with ±1; with 0/1 a wrong answer would never be pushed down.)
It shares the clipped surrogate so that several mini-batch steps per rollout stay sound:

    L(θ) = agg_{i,t} [ -min(ρ_it r_i, clip(ρ_it, 1 - ε_low, 1 + ε_high) r_i) + β · k3(π_θ || π_ref)_it ]
"""
from algorithms.common import clipped_policy_loss


def signed_rewards(rollout):
    """r_i = +1 for a correct response, -1 otherwise. (B,)"""
    return 2 * rollout.correct.float() - 1


def advantages(rollout, cfg):
    """A_it = r_i on every token of response i. (B, T)"""
    return signed_rewards(rollout)[:, None] * rollout.response_mask


loss = clipped_policy_loss
