"""DAPO — Decoupled Clip and Dynamic sAmpling Policy Optimization (Yu et al., arXiv 2503.14476): GRPO with four
changes, each separable, and β = 0 (no KL term):

1. Clip-higher: clip(ρ_it, 1 - ε_low, 1 + ε_high) with ε_low = 0.2, ε_high = 0.28 (DEFAULTS), so an unlikely
   token that turned out good may gain more before the clip stops it (against entropy collapse).
2. Token-level loss: sum_{i,t} ℓ_it / sum_i |o_i| (--loss-agg token-mean), so a long response's tokens weigh
   as much as a short one's.
3. Soft overlong punishment, added to the reward; L_max = --max-new-tokens, L_cache its last fifth (the paper:
   4,096 of 20,480):
       R_length(|o|) = 0                               if |o| <= L_max - L_cache
                       (L_max - L_cache - |o|) / L_cache   if L_max - L_cache < |o| <= L_max   (-1 if truncated)
       r_i = (2 · reward_i - 1) + R_length(|o_i|),   A_i = (r_i - mean(r_1..r_G)) / (std(r_1..r_G) + eps)
   The ±1 is GRPO's mapping here and the paper's rule reward; a partial reward lands in between.
4. Dynamic sampling: a group whose rewards r_i are all equal has A = 0 and teaches nothing. Such groups are left
   out of the update, and while fewer than --prompts-per-step groups can teach, prompts_per_step more questions
   are sampled, at most MAX_EXTRA_ROUNDS times; the first prompts_per_step informative groups are trained on.
   When the bound is hit the step trains on the informative groups it has (train/trained_rows shows how many
   rows; with none there is no update). (The paper filters on accuracy, 0 < #right < G; with 0/1 answers and no
   overlong penalty in play that is the same.)
"""
import dataclasses

import torch
import torch.nn.functional as F

from algorithms import distributed, grpo
from algorithms.common import clipped_policy_loss, group_view

DEFAULTS = dict(clip_low=0.2, clip_high=0.28, loss_agg="token-mean", kl_coef=0.0)
NEEDS_GROUPS = "it trains only on questions whose samples earned different rewards, never so in a group of one"
MAX_EXTRA_ROUNDS = 3  # so at most 4 x prompts_per_step questions are sampled in one step
OVERLONG_SHARE = 0.2  # L_cache / L_max


def overlong_penalty(lengths, max_len, cache_len):
    """DAPO's soft overlong punishment R_length (B,) for response lengths (B,) in tokens."""
    return torch.clamp((max_len - cache_len - lengths) / cache_len, min=-1.0, max=0.0)


def shaped_rewards(rollout, cfg):
    """r_i = 2 · reward_i - 1 + R_length(|o_i|), (B,)."""
    cache_len = max(1, int(OVERLONG_SHARE * cfg.max_new_tokens))
    lengths = rollout.response_mask.sum(-1)
    return 2 * rollout.rewards - 1 + overlong_penalty(lengths, cfg.max_new_tokens, cache_len)


def informative_groups(rollout, cfg):
    """(B / G,) bool: the groups whose shaped rewards are not all equal."""
    r = group_view(shaped_rewards(rollout, cfg), rollout.group_size)
    return (r != r[:, :1]).any(dim=1)


def concatenate(rollouts):
    """Rollouts sampled in rounds -> one, each (B, ...) field stacked, and (B, width) ones padded with 0 to the
    widest (the masks, not the padding value, say which positions are real)."""
    def cat(name, tensors):
        if tensors[0].dim() == 1:
            return torch.cat(tensors)
        width = max(t.size(1) for t in tensors)
        left = name.startswith("prompt")  # prompts are padded on the left, so that all responses start together
        return torch.cat([F.pad(t, (width - t.size(1), 0) if left else (0, width - t.size(1))) for t in tensors])
    return dataclasses.replace(rollouts[0], **{name: cat(name, [getattr(r, name) for r in rollouts])
                                               for name, value in vars(rollouts[0]).items()
                                               if isinstance(value, torch.Tensor)})


def sample_rollout(draw, cfg):
    """Dynamic sampling. draw(n) samples and grades group_size responses to each of the next n questions: draw
    prompts_per_step, then as many again while fewer than prompts_per_step groups are informative, at most
    MAX_EXTRA_ROUNDS times. Returns every round's rows in one rollout; keep_rows picks those trained on."""
    rollouts = [draw(cfg.prompts_per_step)]
    for _ in range(MAX_EXTRA_ROUNDS):
        # (under torchrun each rank holds a share of the questions: count the informative groups of all ranks)
        if distributed.total(sum(int(informative_groups(r, cfg).sum()) for r in rollouts)) >= cfg.prompts_per_step:
            break
        rollouts.append(draw(cfg.prompts_per_step))
    return concatenate(rollouts)


def keep_rows(rollout, cfg):
    """The rows of the first prompts_per_step informative groups (under torchrun: this rank's share of that many).
    Returns (row indices, group size)."""
    G = rollout.group_size
    quota = len(distributed.share(range(cfg.prompts_per_step)))
    groups = informative_groups(rollout, cfg).nonzero().squeeze(-1)[:quota]
    return (groups[:, None] * G + torch.arange(G, device=groups.device)).flatten(), G


def advantages(rollout, cfg):
    """GRPO's group-normalised A_i of the shaped rewards, on every token of response i. (B, T)"""
    return grpo.group_advantages(shaped_rewards(rollout, cfg), rollout.group_size)[:, None] * rollout.response_mask


loss = clipped_policy_loss
