"""SFT — supervised fine-tuning on reference chains of thought: ReFT's warm-up stage
(Luong et al., "ReFT: Reasoning with Reinforced Fine-Tuning", arXiv 2401.08967, §3.1).

Each training example is a question x with an annotated chain of thought e that ends in the answer. The
model maximises the likelihood of e given x, i.e. minimises the negative log-likelihood of its tokens:

    L_SFT(θ) = - E_(x, e) [ Σ_t log π_θ(e_t | x, e_<t) ]      (averaged over response tokens)

ReFT runs this for a few epochs so the model knows the answer format and is often right, then starts RL
from it (the "warm-up"); continuing this loss instead of doing RL is the baseline ReFT compares with.
The prompt is conditioned on, never trained on: the mask covers the chain of thought and its EOS only.

As `--algo sft` it is that baseline inside the RL loop, with the same budget per step as the RL algorithms:
where they sample prompts x group_size responses, it takes as many reference chains (of as many questions)
and samples nothing.
"""
from algorithms.common import aggregate_loss

REFERENCE_RESPONSES = True  # the loop hands it reference chains instead of samples
NO_PARTIAL_REWARD = "continued SFT trains on reference chains and is never graded"


def advantages(rollout, cfg):
    """Every reference token has weight 1 (reported like the RL algorithms' advantages). (B, T)"""
    return rollout.response_mask


def loss(logp, batch, cfg):
    """logp (B, T) of the reference chain's tokens -> (scalar token-mean NLL, stats)."""
    return aggregate_loss(-logp, batch.response_mask, "token-mean", batch.n_tokens, batch.n_rows), {}
