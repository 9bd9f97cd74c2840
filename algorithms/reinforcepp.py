"""REINFORCE++-baseline (Hu et al., "REINFORCE++: ...", arXiv 2501.03262, its variant for several samples per
question; verl's `reinforce_plus_plus_baseline`, OpenRLHF's `reinforce_baseline`).

The group mean is subtracted, as GRPO does, but the scale comes from the whole batch, not from each group:

    A'_i = r_i - mean(r_1..r_G)                                  per question (the baseline)
    A_it = (A'_i - mean_batch A') / std_batch A'                 over every response token of the batch

so a question whose samples nearly agree is not blown up by its own small std. Like verl and OpenRLHF the
batch statistics are over tokens (a long response counts once per token). The reward is GRPO's here,
r = 2 · reward - 1 (±1; a partial reward lands in between), and so is the KL: β · k3 in the loss (the paper puts
k2 in the loss for this variant), so that comparing with `--algo grpo` changes the normalisation alone.

This is not plain REINFORCE++ (verl's `reinforce_plus_plus`: one sample per question, no group baseline, a k1
KL penalty in the reward, A = whiten(R - β · sum_t k1_t)); the paper proposes -baseline for several samples
per question, as on reasoning tasks.
"""
from algorithms import grpo
from algorithms.common import clipped_policy_loss, whiten

NEEDS_GROUPS = grpo.NEEDS_GROUPS


def advantages(rollout, cfg):
    """A'_i = r_i - mean of its group on every token of response i, whitened over the batch's tokens. (B, T)"""
    signed = 2 * rollout.rewards - 1  # ±1
    centred = grpo.group_advantages(signed, rollout.group_size, normalize_std=False)
    return whiten(centred[:, None] * rollout.response_mask, rollout.response_mask)


loss = clipped_policy_loss
