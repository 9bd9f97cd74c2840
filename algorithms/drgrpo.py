"""Dr. GRPO — "GRPO Done Right" (Liu et al., "Understanding R1-Zero-Like Training: A Critical Perspective",
arXiv 2503.20783): GRPO without the two normalisations that bias it.

    A_i  = r_i - mean(r_1..r_G)                  no division by the group's std: GRPO's up-weights questions
                                                 whose samples nearly all agree (too easy or too hard)
    L(θ) = sum_{i,t} ℓ_it / (B · L_max)          a constant normaliser, L_max = --max-new-tokens (B: the
                                                 mini-batch's rows), instead of GRPO's 1/|o_i|, which lets a
                                                 long wrong answer lose less per token than a short one
    ℓ_it = -min(ρ_it A_i, clip(ρ_it, 1 - ε_low, 1 + ε_high) A_i),   β = 0 (no KL term)

The reward is GRPO's here, r = 2 · reward - 1 (±1; a partial reward lands in between), so A_i is exactly
`--algo grpo --no-std-normalize`'s; what this file adds is the loss normaliser and β = 0 (DEFAULTS).
"""
from algorithms import grpo
from algorithms.common import clipped_policy_loss

DEFAULTS = dict(loss_agg="seq-mean-token-sum-norm", kl_coef=0.0)
NEEDS_GROUPS = grpo.NEEDS_GROUPS


def advantages(rollout, cfg):
    """A_i = r_i - mean of its group, r = 2 · reward - 1, on every token of response i. (B, T)"""
    signed = 2 * rollout.rewards - 1  # ±1
    return grpo.group_advantages(signed, rollout.group_size, normalize_std=False)[:, None] * rollout.response_mask


loss = clipped_policy_loss
