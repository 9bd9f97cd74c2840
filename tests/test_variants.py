"""The variants of GRPO since 2025 (algorithms/drgrpo.py, dapo.py, gspo.py, rloo.py, reinforcepp.py): their
advantages, losses and DAPO's dynamic sampling against numbers worked out by hand."""
import math
from types import SimpleNamespace

import pytest
import torch

import minireason as M
from algorithms import dapo, drgrpo, grpo, gspo, reinforcepp, rloo
from algorithms.common import aggregate_loss
from test_algorithms import batch

VARIANTS = ("drgrpo", "dapo", "gspo", "rloo", "reinforcepp")
CFG = SimpleNamespace(clip_low=0.2, clip_high=0.2, dual_clip=None, kl_coef=0.0, loss_agg="token-mean",
                      std_normalize=True, max_new_tokens=64, prompts_per_step=2)


def cfg(**changes):
    return SimpleNamespace(**{**vars(CFG), **changes})


def lengths_mask(lengths):
    """(B, max length) mask with 1 on each row's first lengths[i] positions."""
    return (torch.arange(max(lengths)) < torch.tensor(lengths)[:, None]).float()


def rollout(rewards, group_size, lengths=None):
    lengths = lengths or [2] * len(rewards)
    return SimpleNamespace(rewards=torch.tensor(rewards), group_size=group_size, response_mask=lengths_mask(lengths))


def per_row(advantages):
    return advantages[:, 0].tolist()


# --- Dr. GRPO -----------------------------------------------------------------------------------------

def test_drgrpo_advantage_is_the_reward_minus_the_group_mean_without_std():
    # r = 2 · reward - 1 = [1, -1, -1]: mean -1/3, A = [4/3, -2/3, -2/3]. (GRPO divides by the std, √(4/3) ≈ 1.155;
    # 0/1 rewards would give [2/3, -1/3, -1/3].)
    r = rollout([1.0, 0.0, 0.0], group_size=3)
    assert per_row(drgrpo.advantages(r, CFG)) == pytest.approx([4 / 3, -2 / 3, -2 / 3])


def test_the_constant_loss_normaliser_of_drgrpo():
    x, mask = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # (1 + 2 + 4) / (2 rows · L_max 4) = 7/8, whatever the lengths; per micro-batch of one row, 3/8 + 4/8
    assert aggregate_loss(x, mask, "seq-mean-token-sum-norm", 3, 2, max_tokens=4).item() == pytest.approx(0.875)
    halves = [aggregate_loss(x[i:i + 1], mask[i:i + 1], "seq-mean-token-sum-norm", 3, 2, 4).item() for i in range(2)]
    assert halves == pytest.approx([0.375, 0.5])


def test_drgrpo_gives_every_token_the_same_weight_whatever_its_response_length():
    # Two wrong responses (A = -1) of 1 and 3 tokens, on-policy (ρ = 1): ℓ = -ρ A per token, ∂ℓ/∂log π = -A = 1,
    # over B · L_max = 2 · 4 = 8: every token 1/8. (GRPO's per-response mean: 1/2 on the short one's token and
    # 1/6 on the long one's, so the long wrong answer is pushed down less per token; token-mean: 1/4 each.)
    mask = lengths_mask([1, 3])
    logp = torch.full((2, 3), -1.0, requires_grad=True)
    b = batch(logp, old_logprobs=logp.detach(), advantages=-mask, response_mask=mask)
    loss, _ = drgrpo.loss(logp, b, cfg(**drgrpo.DEFAULTS, max_new_tokens=4))
    loss.backward()
    assert loss.item() == pytest.approx(4 / 8)
    assert logp.grad.flatten().tolist() == pytest.approx([0.125, 0.0, 0.0] + [0.125, 0.125, 0.125])


# --- DAPO ---------------------------------------------------------------------------------------------

def test_dapo_overlong_penalty_falls_linearly_over_the_last_fifth():
    # L_max 64, L_cache int(0.2 · 64) = 12: nothing up to 64 - 12 = 52 tokens, then (52 - |o|) / 12, -1 at 64
    assert dapo.overlong_penalty(torch.tensor([40.0, 52.0, 58.0, 64.0]), 64, 12).tolist() == [0.0, 0.0, -0.5, -1.0]
    # a right answer of 58 tokens earns 1 - 0.5; a truncated one (64 tokens, never right) -1 - 1
    r = rollout([1.0, 0.0, 1.0, 0.0], group_size=2, lengths=[58, 64, 40, 40])
    assert dapo.shaped_rewards(r, CFG).tolist() == pytest.approx([0.5, -2.0, 1.0, -1.0])


def test_dapo_advantages_normalise_the_shaped_rewards_in_each_group():
    # shaped r = [1 - 0.5, 1, -1] (the first is 58 tokens long): mean 1/6, deviations [1/3, 5/6, -7/6],
    # unbiased std √((1/9 + 25/36 + 49/36) / 2) = √(13/12) ≈ 1.04083. (Without the penalty: [0.577, 0.577, -1.155].)
    r = rollout([1.0, 1.0, 0.0], group_size=3, lengths=[58, 40, 40])
    std = math.sqrt(13 / 12)
    assert per_row(dapo.advantages(r, CFG)) == pytest.approx([1 / 3 / std, 5 / 6 / std, -7 / 6 / std], abs=1e-5)


def test_dapo_clips_higher_above_than_below():
    # ε_low 0.2, ε_high 0.28 (DAPO's defaults). A good token (A = +1) whose ratio rose to 1.25 keeps its gradient
    # (GRPO's 1.2 would clip it); a bad one (A = -1) whose ratio fell to 0.75 is held at 0.8: loss 0.8, no gradient.
    # token-mean over 2 tokens: (-1.25 + 0.8) / 2; gradient of the first -1.25 / 2
    logp = torch.log(torch.tensor([[1.25, 0.75]])).requires_grad_()
    b = batch(logp, old_logprobs=torch.zeros(1, 2), advantages=torch.tensor([[1.0, -1.0]]))
    settings = cfg(**{k: v for k, v in vars(M.parse_args(["--algo", "dapo"])).items() if k in dapo.DEFAULTS})
    loss, stats = dapo.loss(logp, b, settings)
    loss.backward()
    assert (settings.clip_low, settings.clip_high, settings.kl_coef) == (0.2, 0.28, 0.0)
    assert settings.loss_agg == "token-mean"
    assert loss.item() == pytest.approx((-1.25 + 0.8) / 2)
    assert logp.grad.tolist()[0] == pytest.approx([-1.25 / 2, 0.0])
    assert stats["clip_fraction"] == 0.5


def test_a_partial_reward_makes_an_all_wrong_group_informative_to_dapo():
    r = rollout([0.0, 0.1, 0.0, 0.0, 1.0, 1.0], group_size=2)  # r = [-1, -0.8], [-1, -1], [1, 1]
    assert dapo.informative_groups(r, CFG).tolist() == [True, False, False]


def sampler_of(rounds, group_size=2):
    """draw(n) as the loop gives it to DAPO: each call samples the next round's rewards (n groups of G rows).
    Round k has prompts k and responses k + 1 columns wide, all real tokens of value k. Returns (draw, asked):
    asked lists the n of each call."""
    asked = []

    def draw(n):
        rewards = torch.tensor(rounds[len(asked)])
        asked.append(n)
        k, B = len(asked), len(rewards)
        return M.Rollout(prompt_ids=torch.full((B, k), k), prompt_mask=torch.ones(B, k, dtype=torch.long),
                         response_ids=torch.full((B, k + 1), k), response_mask=torch.ones(B, k + 1),
                         group_size=group_size, rewards=rewards, correct=rewards == 1,
                         stopped=torch.ones(B, dtype=torch.bool), old_logprobs=torch.full((B, k + 1), -1.0 * k))
    return draw, asked


def test_dapo_samples_more_questions_until_enough_groups_can_teach():
    # 2 questions per step, groups of 2. Round 1: [1, 1] all right, [0, 1] informative: one short, so 2 more
    # questions; round 2: [1, 0] and [0, 1] both informative: three in all, the first two are trained on.
    draw, asked = sampler_of([[1.0, 1.0, 0.0, 1.0], [1.0, 0.0, 0.0, 1.0]])
    r = dapo.sample_rollout(draw, CFG)
    assert asked == [2, 2]
    rows, group_size = dapo.keep_rows(r, CFG)
    assert rows.tolist() == [2, 3, 4, 5] and group_size == 2
    # the rounds concatenated: round 1's prompts (width 1) padded on the left and responses (width 2) on the right
    assert r.rewards.tolist() == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    assert r.prompt_ids[0].tolist() == [0, 1] and r.prompt_mask[0].tolist() == [0, 1]
    assert r.response_ids[0].tolist() == [1, 1, 0] and r.response_mask[0].tolist() == [1.0, 1.0, 0.0]
    assert r.old_logprobs[0].tolist() == [-1.0, -1.0, 0.0] and r.old_logprobs[4].tolist() == [-2.0, -2.0, -2.0]
    assert r.prompt_mask[4].tolist() == [1, 1] and r.stopped.tolist() == [True] * 8


def test_dapo_stops_sampling_after_three_extra_rounds():
    # nothing ever informative: the first round and 3 more, then a step with nothing to train on (no update)
    draw, asked = sampler_of([[1.0, 1.0, 0.0, 0.0]] * 5)
    r = dapo.sample_rollout(draw, CFG)
    assert asked == [2, 2, 2, 2] and len(r.rewards) == 16
    assert dapo.keep_rows(r, CFG)[0].tolist() == []


def test_no_refill_when_the_first_round_is_informative_enough():
    draw, asked = sampler_of([[1.0, 0.0, 0.0, 1.0]])
    assert len(dapo.sample_rollout(draw, CFG).rewards) == 4 and asked == [2]


# --- GSPO ---------------------------------------------------------------------------------------------

GSPO_LOG_RATIOS = torch.tensor([[0.1, -0.1, 0.3], [0.1, 0.2, 0.0], [0.5, 0.3, 0.0]])
GSPO_MASK = lengths_mask([3, 2, 2])
GSPO_ADVANTAGES = torch.tensor([1.0, -1.0, 1.0])[:, None] * GSPO_MASK


def gspo_loss(log_ratios, settings):
    old = torch.full((3, 3), -2.0) * GSPO_MASK
    logp = (old + log_ratios * GSPO_MASK).requires_grad_()
    loss, stats = gspo.loss(logp, batch(logp, old_logprobs=old, advantages=GSPO_ADVANTAGES, response_mask=GSPO_MASK),
                            settings)
    loss.backward()
    return loss.item(), logp.grad.flatten().tolist(), stats


def test_gspo_gradient_is_the_sequence_level_formula():
    # s_i = exp(mean log-ratio over the response's tokens):  s_0 = e^0.1 (A +1), s_1 = e^0.15 (A -1),
    # s_2 = e^0.4 ≈ 1.49 > 1 + 0.2 with A = +1: clipped, held at 1.2.
    # L = -(1/3) (e^0.1 - e^0.15 + 1.2);  ∂L/∂log π_it = -(1/3) s_i A_i / |o_i| where unclipped, else 0
    loss, grad, stats = gspo_loss(GSPO_LOG_RATIOS, CFG)
    assert loss == pytest.approx(-(math.exp(0.1) - math.exp(0.15) + 1.2) / 3)
    s0, s1 = math.exp(0.1), math.exp(0.15)
    assert grad == pytest.approx([-s0 / 9] * 3 + [s1 / 6, s1 / 6, 0.0] + [0.0, 0.0, 0.0])
    assert stats["clip_fraction"] == pytest.approx(1 / 3)


def test_gspo_on_policy_is_grpo_with_a_per_response_mean():
    # s_i = 1: ∂L/∂log π_it = -(1/3) A_i / |o_i| = -1/9, +1/6, -1/6, as GRPO's with --loss-agg seq-mean-token-mean
    _, grad, stats = gspo_loss(torch.zeros(3, 3), cfg(**gspo.DEFAULTS))
    assert grad == pytest.approx([-1 / 9] * 3 + [1 / 6, 1 / 6, 0.0] + [-1 / 6, -1 / 6, 0.0])
    assert stats["clip_fraction"] == 0.0
    logp = torch.zeros(3, 3, requires_grad=True)
    grpo.loss(logp, batch(logp, old_logprobs=torch.zeros(3, 3), advantages=GSPO_ADVANTAGES, response_mask=GSPO_MASK),
              cfg(loss_agg="seq-mean-token-mean"))[0].backward()
    assert logp.grad.flatten().tolist() == pytest.approx(grad)
    assert (M.parse_args(["--algo", "gspo"]).clip_low, M.parse_args(["--algo", "gspo"]).clip_high) == (3e-4, 4e-4)


# --- RLOO and REINFORCE++-baseline ------------------------------------------------------------------------

def test_rloo_baseline_leaves_the_sample_itself_out():
    # r = [1, -1, -1]: A_0 = 1 - (-1 - 1)/2 = 2, A_1 = -1 - (1 - 1)/2 = -1, A_2 = -1  (= 3/2 · (r - mean))
    assert per_row(rloo.advantages(rollout([1.0, 0.0, 0.0], group_size=3), CFG)) == pytest.approx([2.0, -1.0, -1.0])


def test_reinforcepp_baseline_normalises_over_the_batch_tokens():
    # groups [right, wrong] of 1 and 3 tokens and [right, wrong but answered (0.1)] of 2 and 2 tokens:
    # r = [1, -1], [1, -0.8]; minus the group mean: [1, -1], [0.9, -0.9]. Over the batch's 8 tokens:
    # mean (1 - 3 + 1.8 - 1.8) / 8 = -0.25, variance (1.25² + 3 · 0.75² + 2 · 1.15² + 2 · 0.65²) / 8 = 0.8425.
    # (GRPO's group std: ±0.71 in both groups; statistics over rows: mean 0, std √0.905.)
    r = rollout([1.0, 0.0, 1.0, 0.1], group_size=2, lengths=[1, 3, 2, 2])
    adv = reinforcepp.advantages(r, CFG)
    std = math.sqrt(0.8425)
    assert per_row(adv) == pytest.approx([1.25 / std, -0.75 / std, 1.15 / std, -0.65 / std], abs=1e-5)
    assert adv[1].tolist() == pytest.approx([-0.75 / std] * 3, abs=1e-5) and adv[0, 1:].tolist() == [0.0, 0.0]


# --- all five: one reward channel, groups ---------------------------------------------------------------

@pytest.mark.parametrize("algo, expected", [
    # r = [1, -0.8, -1, -1] (0.1 for an answer given, wrong): mean -0.45, deviations [1.45, -0.35, -0.55, -0.55]
    (drgrpo, [1.45, -0.35, -0.55, -0.55]),
    (rloo, [4 / 3 * d for d in (1.45, -0.35, -0.55, -0.55)]),                  # G/(G-1) · deviation
    (gspo, [d / math.sqrt(2.83 / 3) for d in (1.45, -0.35, -0.55, -0.55)]),    # unbiased std of the group
    (dapo, [d / math.sqrt(2.83 / 3) for d in (1.45, -0.35, -0.55, -0.55)]),    # short answers: no penalty
    (reinforcepp, [d / math.sqrt(2.83 / 4) for d in (1.45, -0.35, -0.55, -0.55)]),  # std over the batch's tokens
])
def test_a_partial_reward_reaches_each_variant(algo, expected):
    assert per_row(algo.advantages(rollout([1.0, 0.1, 0.0, 0.0], group_size=4), CFG)) == pytest.approx(expected,
                                                                                                         abs=1e-5)


@pytest.mark.parametrize("algo", VARIANTS)
def test_each_variant_refuses_groups_of_one_and_takes_a_partial_reward(algo, capsys):
    with pytest.raises(SystemExit):
        M.parse_args(["--algo", algo, "--group-size", "1"])
    assert f"--group-size 1: --algo {algo} needs groups of 2 or more" in capsys.readouterr().err
    assert M.parse_args(["--algo", algo, "--partial-reward"]).partial_reward
