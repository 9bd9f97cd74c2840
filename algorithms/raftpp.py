"""RAFT++ — RAFT with importance sampling and clipping, introduced in arXiv 2504.11343
("A Minimalist Approach to LLM Reasoning", §2.2).

RAFT's data (the responses with the full reward only, A_i = 1 on them) with PPO's clipped surrogate:

    L(θ) = agg_{i: r_i = 1, t} [ -min(ρ_it A_i, clip(ρ_it, 1 - ε_low, 1 + ε_high) A_i) ] (+ β · k3 to π_ref)
    ρ_it = π_θ(o_it | ...) / π_old(o_it | ...)

On the first mini-batch of a rollout ρ = 1 and this is RAFT's gradient; on later mini-batches the policy
has moved, and the clip stops a token whose probability has already risen by more than ε from being pushed
further. The paper finds this makes RAFT learn faster early on than GRPO, and collapse entropy faster.
"""
from algorithms import raft
from algorithms.common import clipped_policy_loss

NO_PARTIAL_REWARD = raft.NO_PARTIAL_REWARD
keep_rows = raft.keep_rows        # the same data as RAFT: the responses with the full reward
advantages = raft.advantages      # A = 1 on them
loss = clipped_policy_loss        # ...with the ratio and the clip
