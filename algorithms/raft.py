"""RAFT — Reward-rAnked Fine-Tuning, i.e. rejection-sampling fine-tuning (Dong et al., arXiv 2304.06767),
the simplest baseline of arXiv 2504.11343 ("A Minimalist Approach to LLM Reasoning", §2).

Sample G responses per prompt, keep the ones that earn the full reward (r_i = 1, a right answer), and fine-tune on
them as if they were reference solutions. The advantage is A_i = 1 on a kept response (max(r_i, 0) with the
paper's ±1 rewards), and the loss is plain negative log-likelihood over the kept responses' tokens — no importance
ratio, no clipping, no KL:

    L(θ) = - agg_{i: r_i = 1, t} log π_θ(o_it | q, o_i,<t)

Wrong samples are not pushed down; they are simply not trained on (keep_rows drops them). Because nothing
anchors the update to the sampling policy, several optimizer steps on one rollout drift off-policy unchecked;
RAFT++ (raftpp.py) adds the ratio and the clip for exactly that.
"""
from algorithms.common import aggregate_loss

NO_PARTIAL_REWARD = "RAFT keeps the responses with the full reward and drops the rest, whatever they earned"


def keep_rows(rollout, cfg):
    """Train on the responses with the full reward (exactly 1) only. Returns (row indices (K,), group size of what is
    kept: 1, the kept rows no longer form groups)."""
    return (rollout.rewards == 1).nonzero().squeeze(-1), 1


def advantages(rollout, cfg):
    """A_i = 1 on every token of a response with the full reward, 0 elsewhere. (B, T)"""
    return (rollout.rewards == 1).float()[:, None] * rollout.response_mask


def loss(logp, batch, cfg):
    """-A · log π over the kept tokens, aggregated like the other algorithms. (scalar, stats)"""
    return aggregate_loss(-batch.advantages * logp, batch.response_mask, cfg.loss_agg, batch.n_tokens,
                          batch.n_rows, cfg.max_new_tokens), {}
