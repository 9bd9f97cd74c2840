"""RLOO — REINFORCE Leave-One-Out (Ahmadian et al., "Back to Basics: Revisiting REINFORCE Style Optimization for
Learning from Human Feedback in LLMs", arXiv 2402.14740; the estimator is Kool et al. 2019's).

Each sample's baseline is the mean reward of the *other* G - 1 samples of its question:

    A_i = r_i - (1 / (G - 1)) sum_{j != i} r_j  =  G / (G - 1) · (r_i - mean(r_1..r_G))

The baseline does not depend on o_i, so the gradient stays unbiased; there is no std division. The reward is
GRPO's here, r = 2 · reward - 1 (±1; a partial reward lands in between), and so is the loss (the clipped
surrogate + β · k3 in the loss), so that comparing with `--algo grpo --no-std-normalize` changes the baseline
alone. (The paper itself takes one REINFORCE step per rollout, with the KL in the reward.)
"""
from algorithms.common import clipped_policy_loss, group_view

NEEDS_GROUPS = "a sample's baseline is the mean of the other samples of its question, and a group of one has none"


def leave_one_out_advantages(rewards, group_size):
    """(B,) rewards, groups of G consecutive rows -> (B,) r_i minus the mean of the other G - 1 rewards."""
    r = group_view(rewards.float(), group_size)
    others_mean = (r.sum(dim=1, keepdim=True) - r) / (group_size - 1)
    return (r - others_mean).flatten()


def advantages(rollout, cfg):
    """Per-token advantages (B, T): each response's leave-one-out A_i on all of its tokens."""
    signed = 2 * rollout.rewards - 1  # ±1
    return leave_one_out_advantages(signed, rollout.group_size)[:, None] * rollout.response_mask


loss = clipped_policy_loss
