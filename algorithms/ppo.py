"""PPO with a value head — the RL stage of ReFT (Luong et al., "ReFT: Reasoning with Reinforced
Fine-Tuning", arXiv 2401.08967, §3.2), and the PPO baseline of arXiv 2504.11343.

The outcome reward R arrives at the last response token; every token pays a KL penalty (k1) to the
reference, which is the warm-up checkpoint:

    r_t = R · 1[t = last] - β · (log π_old(o_t) - log π_ref(o_t))

A value head V (one linear layer on the last hidden state of the policy's own trunk) predicts the return
from each position. Generalised advantage estimation, backwards from the last token (V past the end = 0):

    δ_t = r_t + γ V_{t+1} - V_t,    A_t = δ_t + γλ A_{t+1},    returns R_t = A_t + V_t

then A is whitened over the batch's response tokens. The loss adds PPO's clipped value loss:

    L = agg[ -min(ρ_t A_t, clip(ρ_t, 1 - ε, 1 + ε) A_t) ] + c_v · agg[ ½ max((V - R)², (V_clip - R)²) ]
    V_clip = V_old + clip(V - V_old, -ε_v, ε_v)

ReFT's settings: γ = 1, λ = 0.95, β = 0.01-0.05, ε_v = 0.2, c_v = 5, two PPO epochs per rollout, and
with --partial-reward its reward R = 1 (correct) / 0.1 (an answer, but wrong) / 0 (no answer).
"""
import torch

from algorithms.common import (aggregate_loss, at_least, clipped_surrogate, kl_estimate, masked_mean, masked_sum,
                               whiten)

VALUE_HEAD = True                        # the loop adds a value head and passes its predictions to loss()
DEFAULTS = dict(kl_coef=0.05, epochs=2)  # ReFT's β (in the reward, not the loss) and PPO epochs


def add_flags(flags):
    flags.add_argument("--gamma", type=at_least(0.0, float, maximum=1.0), default=1.0, help="discount γ of GAE")
    flags.add_argument("--lam", type=at_least(0.0, float, maximum=1.0), default=0.95, help="λ of GAE")
    flags.add_argument("--value-clip", type=at_least(0.0, float), default=0.2,
                       help="how far a value may move from its old one")
    flags.add_argument("--value-coef", type=at_least(0.0, float), default=5.0, help="weight of the value loss")


def token_rewards(rollout, cfg):
    """(B, T): r_t = R · 1[t = the response's last token] - β · k1(log π_old, log π_ref)_t on response tokens, 0 on
    padding; R = rollout.rewards, β = cfg.kl_coef (β = 0: no KL term, and ref_logprobs may be None)."""
    mask = rollout.response_mask
    rewards = torch.zeros_like(mask)
    if cfg.kl_coef:
        rewards = -cfg.kl_coef * kl_estimate(rollout.old_logprobs, rollout.ref_logprobs, "k1") * mask
    last = mask.sum(-1).long() - 1
    rewards[torch.arange(len(last)), last] += rollout.rewards
    return rewards


def gae(rewards, values, mask, gamma, lam):
    """Generalised advantage estimation (Schulman et al., arXiv 1506.02438), backwards from each response's end:
    δ_t = r_t + γ V_{t+1} - V_t, A_t = δ_t + γλ A_{t+1}, returns R_t = A_t + V_t, with r, V and A 0 past the end.
    rewards, values, mask (B, T) -> (advantages, returns), each (B, T) and 0 on padding."""
    rewards, values = rewards * mask, values * mask  # past a response's end everything is 0
    advantages, running = torch.zeros_like(rewards), torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.size(1))):
        next_value = values[:, t + 1] if t + 1 < rewards.size(1) else 0.0
        running = rewards[:, t] + gamma * next_value - values[:, t] + gamma * lam * running
        advantages[:, t] = running
    return advantages * mask, (advantages + values) * mask


def advantages(rollout, cfg):
    """Whitened GAE advantages (B, T)."""
    adv, _ = gae(token_rewards(rollout, cfg), rollout.old_values, rollout.response_mask, cfg.gamma, cfg.lam)
    return whiten(adv, rollout.response_mask)


def value_targets(rollout, cfg):
    """The returns R_t = A_t + V_t (GAE's, before whitening) that the value head learns to predict. (B, T)"""
    return gae(token_rewards(rollout, cfg), rollout.old_values, rollout.response_mask, cfg.gamma, cfg.lam)[1]


def explained_variance(values, returns, mask):
    """1 - Var(R - V) / Var(R) over the response tokens: 1 for a perfect value head, 0 for one that predicts the
    mean, negative for worse. Logged for the rollout's values at sampling time."""
    residual_var = masked_mean((returns - values) ** 2, mask) - masked_mean(returns - values, mask) ** 2
    returns_var = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    return (1 - residual_var / returns_var.clamp(min=1e-8)).item()


def clipped_value_loss(values, old_values, returns, clip):
    """½ max((V - R)², (V_clip - R)²) per token: the value may not move more than `clip` from V_old."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    return 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)


def loss(logp, batch, cfg, values):
    """logp, values (B, T) under the current policy and value head -> (scalar loss, stats normalised by the
    mini-batch's tokens, so micro-batches add up)."""
    mask = batch.response_mask
    policy_loss, clipped = clipped_surrogate(logp, batch.old_logprobs, batch.advantages, cfg.clip_low, cfg.clip_high,
                                             cfg.dual_clip)
    value_loss = clipped_value_loss(values, batch.old_values, batch.returns, cfg.value_clip)
    total = aggregate_loss(policy_loss + cfg.value_coef * value_loss, mask, cfg.loss_agg, batch.n_tokens, batch.n_rows,
                           cfg.max_new_tokens)
    return total, {"clip_fraction": (masked_sum(clipped.float(), mask) / batch.n_tokens).item(),
                   "value_loss": (masked_sum(value_loss.detach(), mask) / batch.n_tokens).item()}
