"""One file per algorithm. The RL step in minireason.py asks each module for two things:

    advantages(rollout, cfg) -> (B, T)        what each response token learns from, built from rollout.rewards
    loss(logp, batch, cfg) -> (loss, stats)   what an update minimises (PPO's also takes its value predictions)

and, where an algorithm needs something particular of the loop, it declares it:

    add_flags(group)                                its own command-line knobs (PPO's γ, λ; DPO's β; ...)
    sample_rollout(draw, cfg) -> rollout            how many questions to sample: draw(n) samples and grades
                                                    group_size responses to each of the next n training questions
                                                    (default: draw(prompts_per_step); DAPO draws more until
                                                    enough groups can teach something)
    keep_rows(rollout, cfg) -> (rows, group_size)   train on a subset (RAFT: the right samples; DPO: pairs)
    VALUE_HEAD = True                               a value head on the policy's own trunk (PPO), with
                                                    value_targets(rollout, cfg) -> (B, T) returns for it
    NEEDS_REFERENCE = True                          reference log-probs even with no KL coefficient (DPO)
    REFERENCE_RESPONSES = True                      train on reference chains, sample nothing (SFT)
    NO_PARTIAL_REWARD = "why"                       --partial-reward would change nothing here, so it is refused
    NEEDS_GROUPS = "why"                            --group-size 1 would leave nothing to learn, so it is refused
    DEFAULTS = {...}                                command-line defaults where its paper differs (PPO, DAPO, ...)

The variants of GRPO since 2025 are drgrpo.py, dapo.py, gspo.py, rloo.py and reinforcepp.py, each a small
change to grpo.py. What the algorithms share is in common.py. Three modules here are not algorithms: tasks.py
(the problems), grader.py (the reward's verdict) and compare.py (`--compare`: every algorithm side by side, and
the papers' findings).
"""
