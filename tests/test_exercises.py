"""The classroom exercises' tests (tests/exercises.py lists the exercises): each pins what a function's docstring
promises with numbers worked out by hand, so that any correct implementation passes and common mistakes fail.

    python tests/exercises.py check [NAME]     # one line per exercise
    python -m pytest -q tests/test_exercises.py
"""
import copy
import math
from types import SimpleNamespace

import pytest
import torch

import minireason as M
from algorithms import common, dpo, grader, grpo, ppo, raft, reinforce_rej
from algorithms.tasks import make_arith_problems
from test_sampler import frequent_token, hf_greedy


def log(x):
    return math.log(x)


def assert_values(tensor, expected, tolerance=1e-6):
    """tensor equals the nested list `expected` to within `tolerance`."""
    torch.testing.assert_close(tensor, torch.tensor(expected, dtype=tensor.dtype), atol=tolerance, rtol=0)


# --- week 1: losses and advantages -------------------------------------------------------------------------

X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


@pytest.mark.exercise("masked_mean")
def test_masked_sum_and_mean_count_only_the_masked_positions():
    assert common.masked_sum(X, MASK).item() == 7.0                            # 1 + 2 + 4
    assert common.masked_sum(X, MASK, dim=1).tolist() == [3.0, 4.0]            # 1 + 2, 4
    assert common.masked_mean(X, MASK).item() == pytest.approx(7 / 3)          # 3 positions, not 6
    assert common.masked_mean(X, MASK, dim=1).tolist() == [1.5, 4.0]
    # per column: (1 + 4) / 2, 2 / 1, and the third column has no position at all
    assert common.masked_mean(X, MASK, dim=0).tolist() == [2.5, 2.0, 0.0]


@pytest.mark.exercise("masked_mean")
def test_masked_mean_of_an_empty_mask_is_zero_not_nan():
    assert common.masked_mean(X, torch.zeros_like(MASK)).item() == 0.0
    assert common.masked_mean(X, torch.zeros_like(MASK), dim=1).tolist() == [0.0, 0.0]


LOSS = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 0.0, 0.0, 7.0]])  # 9 and 7 sit on padding
LOSS_MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])


@pytest.mark.exercise("aggregate_loss")
def test_token_mean_divides_by_the_mini_batchs_tokens():
    # (1 + 2 + 3 + 4) / 4 tokens; as one micro-batch of a mini-batch of 8 tokens: 10 / 8
    assert common.aggregate_loss(LOSS, LOSS_MASK, "token-mean", n_tokens=4, n_rows=2).item() == 2.5
    assert common.aggregate_loss(LOSS, LOSS_MASK, "token-mean", n_tokens=8, n_rows=4).item() == 1.25


@pytest.mark.exercise("aggregate_loss")
def test_seq_mean_token_mean_averages_each_response_then_divides_by_the_mini_batchs_rows():
    # row means (1 + 2 + 3) / 3 = 2 and 4 / 1 = 4; (2 + 4) / 2 rows = 3, or / 4 rows of the mini-batch = 1.5
    assert common.aggregate_loss(LOSS, LOSS_MASK, "seq-mean-token-mean", n_tokens=4, n_rows=2).item() == 3.0
    assert common.aggregate_loss(LOSS, LOSS_MASK, "seq-mean-token-mean", n_tokens=8, n_rows=4).item() == 1.5


@pytest.mark.exercise("aggregate_loss")
def test_aggregate_loss_refuses_an_unknown_mode():
    with pytest.raises(ValueError):
        common.aggregate_loss(LOSS, LOSS_MASK, "mean", n_tokens=4, n_rows=2)


@pytest.mark.exercise("group_advantages")
def test_group_advantages_normalise_within_each_group_of_consecutive_rows():
    rewards = torch.tensor([1.0, 0, 0, 0, 1, 1, 0, 0])
    # group 1: mean 0.25, unbiased std sqrt((0.75² + 3 · 0.25²) / 3) = 0.5: 0.75 / 0.5 = 1.5, -0.25 / 0.5 = -0.5
    # group 2: mean 0.5, unbiased std sqrt(4 · 0.25 / 3) = 0.57735: ±0.5 / 0.57735 = ±0.86603
    expected = [1.5, -0.5, -0.5, -0.5, 0.86603, 0.86603, -0.86603, -0.86603]
    assert group_advantages(rewards, 4) == pytest.approx(expected, abs=1e-4)


def group_advantages(rewards, group_size, normalize_std=True):
    return grpo.group_advantages(rewards, group_size, normalize_std).tolist()


@pytest.mark.exercise("group_advantages")
def test_group_advantages_without_std_and_of_groups_that_teach_nothing():
    assert group_advantages(torch.tensor([1.0, 0, 0, 0]), 4, normalize_std=False) == [0.75, -0.25, -0.25, -0.25]
    # all right or all wrong: r - mean = 0, and 0 / (0 + eps) is 0, not NaN
    assert group_advantages(torch.tensor([1.0, 1, 0, 0]), 2) == [0.0, 0.0, 0.0, 0.0]
    assert group_advantages(torch.tensor([1.0, 0.0]), 1) == [0.0, 0.0]  # a group of one: nothing to compare


def rows(rewards, group_size, T=3):
    return SimpleNamespace(rewards=torch.tensor(rewards), group_size=group_size,
                           response_mask=torch.ones(len(rewards), T))


# four groups of two: all right, all wrong, mixed, and a partial reward 0.1 beside a 0 (no right answer: all wrong)
FOUR_GROUPS = [1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.1, 0.0]


@pytest.mark.exercise("reinforce_rej_filter")
def test_rejected_groups():
    def rejected(which):
        return reinforce_rej.rejected(rows(FOUR_GROUPS, 2), SimpleNamespace(reject_groups=which)).tolist()
    assert rejected("all-same") == [True, True, True, True, False, False, True, True]
    assert rejected("all-wrong") == [False, False, True, True, False, False, True, True]
    assert rejected("all-correct") == [True, True, False, False, False, False, False, False]


@pytest.mark.exercise("reinforce_rej_filter")
def test_keep_rows_zero_keeps_everything_drop_keeps_the_mixed_groups():
    def keep(by):
        kept, group_size = reinforce_rej.keep_rows(rows(FOUR_GROUPS, 2), SimpleNamespace(reject_groups="all-same",
                                                                                          reject_by=by))
        return kept.tolist(), group_size
    assert keep("zero") == ([0, 1, 2, 3, 4, 5, 6, 7], 2)
    assert keep("drop") == ([4, 5], 2)  # the kept rows still form groups of two


@pytest.mark.exercise("raft_rows")
def test_raft_keeps_the_full_reward_rows_as_single_rows():
    kept, group_size = raft.keep_rows(rows([1.0, 0.0, 0.1, 1.0], 2), None)  # 0.1: a partial reward is not kept
    assert kept.tolist() == [0, 3] and group_size == 1


@pytest.mark.exercise("raft_rows")
def test_raft_advantage_is_one_on_the_kept_responses_tokens():
    r = rows([1.0, 0.0, 0.1, 1.0], 2)
    r.response_mask = torch.tensor([[1.0, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]])
    assert raft.advantages(r, None).tolist() == [[1, 1, 0], [0, 0, 0], [0, 0, 0], [1, 1, 1]]


@pytest.mark.exercise("kl_estimate")
def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([-1.5, -2.0, -1.0])  # d = logp - ref = 0.5, 0, -2
    assert common.kl_estimate(logp, ref, "k1").tolist() == [0.5, 0.0, -2.0]
    assert common.kl_estimate(logp, ref, "k2").tolist() == [0.125, 0.0, 2.0]              # d² / 2
    # exp(-d) - 1 + d: e^-0.5 - 0.5 = 0.106531, 0, e^2 - 3 = 4.389056
    assert common.kl_estimate(logp, ref, "k3").tolist() == pytest.approx([0.106531, 0.0, 4.389056], abs=1e-5)
    with pytest.raises(ValueError):
        common.kl_estimate(logp, ref, "k4")


@pytest.mark.exercise("kl_estimate")
def test_kl_estimators_clamp_wild_tokens():
    # d = 30 is held at 20; d = -25 at -20, where k3 = e^20 - 21 is held at 10
    assert common.kl_estimate(torch.tensor([30.0]), torch.tensor([0.0]), "k1").item() == 20.0
    assert common.kl_estimate(torch.tensor([-25.0]), torch.tensor([0.0]), "k3").item() == 10.0


def surrogate(ratios, advantages, **kwargs):
    ratios = torch.tensor([ratios])
    loss, clipped = common.clipped_surrogate(torch.log(ratios), torch.zeros_like(ratios), torch.tensor([advantages]),
                                             **kwargs)
    return loss[0].tolist(), clipped[0].tolist()


@pytest.mark.exercise("clipped_surrogate")
def test_clipped_surrogate_on_both_sides_of_the_clip():
    loss, clipped = surrogate([1.5, 1.5, 0.5, 0.5, 1.1], [1.0, -1.0, 1.0, -1.0, 2.0])
    # A > 0, ratio 1.5: -min(1.5, 1.2) = -1.2, the clip set it; A < 0, ratio 1.5: -min(-1.5, -1.2) = 1.5, the ratio
    # did; A > 0, ratio 0.5: -min(0.5, 0.8) = -0.5, the ratio; A < 0, ratio 0.5: -min(-0.5, -0.8) = 0.8, the clip;
    # ratio 1.1 inside the clip: -1.1 · 2 = -2.2
    assert loss == pytest.approx([-1.2, 1.5, -0.5, 0.8, -2.2])
    assert clipped == [True, False, False, True, False]


@pytest.mark.exercise("clipped_surrogate")
def test_clipped_surrogate_asymmetric_clip_and_dual_clip():
    # ε_low 0.2, ε_high 0.28: ratio 1.25 is inside (0.8, 1.28); ratio 0.75 is clipped to 0.8 for a bad token
    loss, clipped = surrogate([1.25, 0.75], [1.0, -1.0], eps_low=0.2, eps_high=0.28)
    assert loss == pytest.approx([-1.25, 0.8]) and clipped == [False, True]
    # dual clip c = 3: a bad token (A = -2) whose ratio rose to 5 loses min(5 · 2, 3 · 2) = 6; a good one is not
    # touched: -min(5, 1.28) = -1.28
    loss, _ = surrogate([5.0, 5.0], [-2.0, 1.0], eps_low=0.2, eps_high=0.28, dual_clip=3.0)
    assert loss == pytest.approx([6.0, -1.28])


@pytest.mark.exercise("clipped_surrogate")
def test_clipped_surrogate_gradient_at_ratio_one_and_a_huge_ratio():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, _ = common.clipped_surrogate(logp, logp.detach(), torch.tensor([[2.0, -3.0]]))
    loss.sum().backward()
    assert logp.grad.tolist()[0] == pytest.approx([-2.0, 3.0])  # ratio 1: d/dlogp of -ratio · A is -A
    # log-ratio 100 is clamped to 20: a bad token's loss is e^20, finite (e^100 would overflow float32 to inf)
    loss, _ = common.clipped_surrogate(torch.tensor([[100.0]]), torch.zeros(1, 1), torch.tensor([[-1.0]]))
    assert loss.item() == pytest.approx(math.exp(20), rel=1e-5)


POLICY_CFG = SimpleNamespace(clip_low=0.2, clip_high=0.2, dual_clip=None, kl_coef=0.1, loss_agg="token-mean",
                            max_new_tokens=64)


def policy_batch(n_tokens, n_rows, with_reference=True):
    """Two responses, the second one token long: ratios 1.5, 1 | 1, and 7 on the padding, where A = 1 and the clip
    would set the value (which must not count)."""
    logp = torch.log(torch.tensor([[1.5, 1.0], [1.0, 7.0]]))
    d = torch.tensor([[0.0, 0.0], [0.5, 3.0]])  # logp - ref_logp
    return logp, SimpleNamespace(old_logprobs=torch.zeros(2, 2), advantages=torch.tensor([[1.0, 1.0], [-1.0, 1.0]]),
                                 ref_logprobs=logp - d if with_reference else None, n_tokens=n_tokens, n_rows=n_rows,
                                 response_mask=torch.tensor([[1.0, 1.0], [1.0, 0.0]]))


@pytest.mark.exercise("policy_loss")
def test_policy_loss_token_mean_with_kl_and_clip_fraction():
    # surrogates -1.2 (clipped), -1.0 | +1.0; k3 at d = 0.5: e^-0.5 - 0.5 = 0.106531, times β = 0.1
    loss, stats = common.clipped_policy_loss(*policy_batch(n_tokens=3, n_rows=2), POLICY_CFG)
    assert loss.item() == pytest.approx((-1.2 - 1.0 + 1.0 + 0.0106531) / 3, abs=1e-6)
    assert stats["clip_fraction"] == pytest.approx(1 / 3)
    # one micro-batch of a mini-batch of 6 tokens: both are normalised by the mini-batch's tokens
    loss, stats = common.clipped_policy_loss(*policy_batch(n_tokens=6, n_rows=4), POLICY_CFG)
    assert loss.item() == pytest.approx((-1.2 + 0.0106531) / 6, abs=1e-6)
    assert stats["clip_fraction"] == pytest.approx(1 / 6)


@pytest.mark.exercise("policy_loss")
def test_policy_loss_seq_mean_and_no_reference_without_kl():
    seq_mean = SimpleNamespace(**{**vars(POLICY_CFG), "loss_agg": "seq-mean-token-mean"})
    # row means (-1.2 - 1) / 2 = -1.1 and 1.0106531 / 1; their sum / 2 rows
    loss, _ = common.clipped_policy_loss(*policy_batch(n_tokens=3, n_rows=2), seq_mean)
    assert loss.item() == pytest.approx((-1.1 + 1.0106531) / 2, abs=1e-6)
    no_kl = SimpleNamespace(**{**vars(POLICY_CFG), "kl_coef": 0.0})  # no reference model: ref_logprobs is None
    loss, _ = common.clipped_policy_loss(*policy_batch(n_tokens=3, n_rows=2, with_reference=False), no_kl)
    assert loss.item() == pytest.approx(-1.2 / 3)


@pytest.mark.exercise("pass_at_k")
def test_pass_at_k_unbiased_estimator():
    # n = 5 samples, c = 2 right: 1 - C(3, k) / C(5, k)
    assert M.pass_at_k(5, 2, 1) == pytest.approx(0.4)         # 1 - 3/5: c / n
    assert M.pass_at_k(5, 2, 2) == pytest.approx(0.7)         # 1 - 3/10 (not 1 - 0.6², sampling with replacement)
    assert M.pass_at_k(5, 2, 3) == pytest.approx(0.9)         # 1 - 1/10
    assert M.pass_at_k(5, 2, 4) == 1.0                        # only 3 wrong: any 4 contain a right one
    assert M.pass_at_k(5, 0, 3) == 0.0 and M.pass_at_k(5, 5, 1) == 1.0


# --- week 2: the model side: log-probs, sampling, the grader -------------------------------------------------

def lm_head(bias=(0.0, 0.0, 0.0)):
    """A head (H = 2 -> V = 3) whose logits are (h_0, h_1, 0) + bias."""
    head = torch.nn.Linear(2, 3)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
        head.bias.copy_(torch.tensor(bias))
    return head


H = torch.tensor([math.log(4), math.log(2)])  # logits (ln 4, ln 2, 0): π ∝ (4, 2, 1)


@pytest.mark.exercise("head_logprobs")
def test_head_logprobs_at_temperature_one_and_a_half():
    hidden = H.expand(2, 3, 2).clone()  # (N = 2, T = 3, H = 2)
    tokens = torch.tensor([[0, 1, 2], [2, 2, 0]])
    logprobs, entropy = M.head_logprobs(hidden, lm_head(), tokens, 1.0)
    assert entropy is None and logprobs.shape == (2, 3)
    assert_values(logprobs, [[log(4 / 7), log(2 / 7), log(1 / 7)], [log(1 / 7), log(1 / 7), log(4 / 7)]])
    # T = 0.5 doubles the logits: π ∝ (16, 4, 1)
    logprobs, _ = M.head_logprobs(hidden, lm_head(), tokens, 0.5)
    assert logprobs[0].tolist() == pytest.approx([log(16 / 21), log(4 / 21), log(1 / 21)], abs=1e-6)


@pytest.mark.exercise("head_logprobs")
def test_head_logprobs_divide_the_bias_too_and_give_the_tempered_entropy():
    # bias (0, 0, ln 2) at T = 0.5: logits (2 ln 4, 2 ln 2, 2 ln 2), π ∝ (16, 4, 4) = (2/3, 1/6, 1/6)
    # (a bias left undivided would give (16, 4, 2) / 22)
    logprobs, entropy = M.head_logprobs(H[None], lm_head((0.0, 0.0, math.log(2))), torch.tensor([2]), 0.5,
                                        with_entropy=True)
    assert logprobs.item() == pytest.approx(log(1 / 6), abs=1e-6)
    assert entropy.item() == pytest.approx(-(2 / 3 * log(2 / 3) + 2 * (1 / 6) * log(1 / 6)), abs=1e-6)


@pytest.mark.exercise("head_logprobs")
def test_head_logprobs_gradient_reaches_the_hidden_states():
    hidden = H[None].clone().requires_grad_()
    logprobs, _ = M.head_logprobs(hidden, lm_head(), torch.tensor([0]), 1.0)
    logprobs.sum().backward()
    # d log π(0) / dh = W_0 - Σ_j π_j W_j = (1, 0) - (4/7, 2/7)
    assert hidden.grad[0].tolist() == pytest.approx([3 / 7, -2 / 7], abs=1e-6)


def tempered(probs, temperature):
    """Logits whose distribution at `temperature` is `probs`: log p · T."""
    return torch.log(torch.tensor(probs)) * temperature


def frequencies(tokens, V):
    return (torch.bincount(tokens, minlength=V).float() / len(tokens)).tolist()


@pytest.mark.exercise("next_tokens")
def test_greedy_takes_the_argmax_and_reports_the_untempered_logprob():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    tokens, logprobs, entropy = M.next_tokens(logits, 0)
    assert tokens.tolist() == [1, 0]
    z = 1 + math.e ** 2 + math.e  # row 0: π = (1, e², e) / z
    assert logprobs.tolist()[0] == pytest.approx(2 - log(z), abs=1e-6)
    p = [1 / z, math.e ** 2 / z, math.e / z]
    assert entropy.tolist()[0] == pytest.approx(-sum(q * log(q) for q in p), abs=1e-6)


@pytest.mark.exercise("next_tokens")
def test_draws_follow_the_tempered_distribution():
    torch.manual_seed(0)
    n = 20000  # each frequency within 0.02 of its probability: about 5 standard deviations (sqrt(0.25 / n) = 0.0035)
    tokens, logprobs, _ = M.next_tokens(tempered([0.5, 0.3, 0.2], 0.5).expand(n, 3), 0.5)
    # at T = 0.5 the logits log p / 2 give back p; untempered they would give (0.42, 0.32, 0.26)
    assert frequencies(tokens, 3) == pytest.approx([0.5, 0.3, 0.2], abs=0.02)
    assert logprobs[:3].tolist() == pytest.approx([log([0.5, 0.3, 0.2][t]) for t in tokens[:3].tolist()], abs=1e-5)


@pytest.mark.exercise("next_tokens")
def test_top_k_and_top_p_and_impossible_tokens():
    torch.manual_seed(0)
    n = 20000
    probs = [0.1, 0.4, 0.2, 0.3]
    # top-k 2: tokens 1 and 3 only, in proportion 4 : 3
    assert frequencies(M.next_tokens(tempered(probs, 1.0).expand(n, 4), 1.0, top_k=2)[0], 4) == \
        pytest.approx([0.0, 4 / 7, 0.0, 3 / 7], abs=0.02)
    # top-p 0.75: likeliest first 0.4, 0.3 (0.7 so far, short of 0.75), 0.2 (reaches it): tokens 1, 3, 2 as 4 : 3 : 2
    assert frequencies(M.next_tokens(tempered(probs, 1.0).expand(n, 4), 1.0, top_p=0.75)[0], 4) == \
        pytest.approx([0.0, 4 / 9, 2 / 9, 3 / 9], abs=0.02)
    # a token of probability 0 is never drawn
    logits = torch.tensor([[0.0, float("-inf"), 1.0, float("-inf")]]).expand(n, 4)
    assert set(M.next_tokens(logits, 1.0)[0].tolist()) == {0, 2}


@pytest.mark.exercise("next_tokens")
def test_top_p_counts_what_top_k_left_and_logprobs_are_before_both_cuts():
    # π = (0.45, 0.35, 0.2) at T = 0.5. top-k 2 leaves (0.5625, 0.4375): token 0 alone holds 0.55 of that. (Of the
    # full distribution it would hold 0.45 < 0.55 and token 1 would stay.)
    tokens, logprobs, entropy = M.next_tokens(tempered([0.45, 0.35, 0.2], 0.5).expand(500, 3), 0.5, top_k=2,
                                              top_p=0.55)
    assert tokens.eq(0).all()
    assert logprobs.tolist() == pytest.approx([log(0.45)] * 500, abs=1e-5)  # not log 1, after the cuts
    assert entropy[0].item() == pytest.approx(-sum(p * log(p) for p in (0.45, 0.35, 0.2)), abs=1e-5)


@pytest.mark.exercise("sample")
def test_greedy_sample_equals_generate_and_masks_up_to_eos(tiny):
    model, tokenizer = tiny
    prompts = [M.encode_prompt(tokenizer, q, "") for q in ("1+2", "7-3*4+2", "9*9", "5/3-1*2", "8")]
    ids, mask = M.pad(prompts, tokenizer.pad_token_id, left=True)
    eos = frequent_token(hf_greedy(model, prompts, tokenizer.pad_token_id, None, 20))
    expected = hf_greedy(model, prompts, tokenizer.pad_token_id, eos, 20)  # Hugging Face's decoding, the reference
    prompt_ids, prompt_mask, response_ids, response_mask, stopped, _, _ = M.sample(
        model, prompts, 20, eos, tokenizer.pad_token_id, temperature=0)
    assert torch.equal(prompt_ids, ids) and torch.equal(prompt_mask, mask)  # left-padded prompts
    for row in range(len(prompts)):
        reference = expected[row].tolist()
        n = reference.index(eos) + 1 if eos in reference else 20   # the response, EOS included
        assert response_mask[row].tolist() == [1.0] * n + [0.0] * (response_mask.size(1) - n)
        assert response_ids[row, :n].tolist() == reference[:n]
        assert bool(stopped[row]) == (eos in reference)
    assert stopped.any() and not stopped.all()


@pytest.mark.exercise("sample")
def test_sampled_logprobs_are_the_models_at_the_temperature_and_zero_on_padding(tiny):
    model, tokenizer = tiny
    torch.manual_seed(0)
    prompts = [M.encode_prompt(tokenizer, q, "") for q in ("1+2", "7-3*4+2", "9*9") for _ in range(8)]
    eos = frequent_token(hf_greedy(model, prompts, tokenizer.pad_token_id, None, 12))
    prompt_ids, prompt_mask, ids, mask, stopped, logprobs, entropy = M.sample(
        model, prompts, 12, eos, pad_id=eos, temperature=0.7)  # pad == EOS: the mask must still hold the EOS
    lengths = mask.sum(-1).long()
    for row in range(len(prompts)):
        n = int(lengths[row])
        assert bool(stopped[row]) == (ids[row, n - 1].item() == eos) and (ids[row, :n - 1] != eos).all()
        assert stopped[row] or n == 12
    assert stopped.any()  # 24 rows of 12 tokens: some draw the EOS, whatever the random numbers
    # one plain forward over prompt + response gives each response token's log-prob at T = 0.7
    full_ids, full_mask = torch.cat([prompt_ids, ids], 1), torch.cat([prompt_mask, mask.long()], 1)
    with torch.no_grad():
        logits = model(input_ids=full_ids, attention_mask=full_mask,
                       position_ids=M.position_ids(full_mask)).logits[:, prompt_ids.size(1) - 1:-1] / 0.7
    expected = logits.log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1) * mask
    torch.testing.assert_close(logprobs, expected, atol=1e-4, rtol=1e-4)
    p = logits.softmax(-1)
    torch.testing.assert_close(entropy, -(p * p.log()).sum(-1) * mask, atol=1e-4, rtol=1e-4)


@pytest.mark.exercise("extract_answer")
def test_extract_answer_boxes():
    assert grader.extract_answer("so x = 1/2. \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"   # nested braces
    assert grader.extract_answer("3*4=12, 7-12=-5, -5+2=-3. \\boxed{-3}") == "-3"           # the arith task
    assert grader.extract_answer("\\boxed{1}, \\boxed{2}") == "1, 2"                        # listed together
    assert grader.extract_answer("\\boxed{3}. No wait, that is wrong: \\boxed{4}") == "4"   # words between: new
    assert grader.extract_answer("\\boxed{}") is None


@pytest.mark.exercise("extract_answer")
def test_extract_answer_precedence():
    # a box beats GSM8K's "####", which beats "the answer is"
    assert grader.extract_answer("#### 12\nHmm. \\boxed{13}") == "13"
    assert grader.extract_answer("The answer is 20.\n#### 18") == "18"
    # ... unless "the answer is" comes after the box and says a value
    assert grader.extract_answer("\\boxed{41}. Hmm, no: the answer is 42.") == "42"
    assert grader.extract_answer("\\boxed{44}, so our answer is correct.") == "44"
    assert grader.extract_answer("Answer: 7") == "7"
    assert grader.extract_answer("3/4") == "3/4"                                      # a bare answer
    assert grader.extract_answer("2+3=5, then 5*2=10 apples") == "10"                 # the last number
    assert grader.extract_answer("I do not know.") is None


@pytest.mark.exercise("extract_answer")
def test_extract_answer_cuts_the_next_turn_and_reads_unicode():
    assert grader.extract_answer("\\boxed{5}<|im_end|>\nuser: and \\boxed{6}?") == "5"
    assert grader.extract_answer("\\boxed{\u22125}") == "-5"   # a Unicode minus


# --- week 3: PPO, DPO and the RL step -----------------------------------------------------------------------

@pytest.mark.exercise("ppo_token_rewards")
def test_ppo_token_rewards_outcome_on_each_last_token_and_kl_everywhere():
    rollout = SimpleNamespace(rewards=torch.tensor([1.0, 0.5]),
                              response_mask=torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]),
                              old_logprobs=torch.tensor([[-1.0, -1.0, -1.0], [-2.0, -1.0, -3.0]]),
                              ref_logprobs=torch.tensor([[-1.5, -1.0, -0.5], [-1.0, -1.0, -1.0]]))
    # k1 = old - ref = (0.5, 0, -0.5 | -1, 0, [-2 on padding]); -β k1 with β = 0.1 = (-0.05, 0, 0.05 | 0.1, 0, 0);
    # the outcome 1 on row 0's third token, 0.5 on row 1's second (its last)
    rewards = ppo.token_rewards(rollout, SimpleNamespace(kl_coef=0.1))
    assert_values(rewards, [[-0.05, 0.0, 1.05], [0.1, 0.5, 0.0]])
    rollout.ref_logprobs = None  # β = 0: no reference model
    assert ppo.token_rewards(rollout, SimpleNamespace(kl_coef=0.0)).tolist() == [[0, 0, 1], [0, 0.5, 0]]


@pytest.mark.exercise("gae")
def test_gae_backwards_with_gamma_and_lambda():
    rewards = torch.tensor([[0.0, 0.5, 1.0], [0.0, 1.0, 9.0]])   # row 1 is two tokens long: 9 and 5 are padding
    values = torch.tensor([[0.2, 0.4, 0.8], [0.2, 0.4, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    advantages, returns = ppo.gae(rewards, values, mask, gamma=0.9, lam=0.5)
    # row 0: δ = (0 + 0.9·0.4 - 0.2, 0.5 + 0.9·0.8 - 0.4, 1 + 0 - 0.8) = (0.16, 0.82, 0.2)
    #        A_2 = 0.2, A_1 = 0.82 + 0.45·0.2 = 0.91, A_0 = 0.16 + 0.45·0.91 = 0.5695
    # row 1: V past the end is 0: δ_1 = 1 - 0.4 = 0.6, δ_0 = 0.16; A = (0.16 + 0.45·0.6, 0.6, 0) = (0.43, 0.6, 0)
    assert_values(advantages, [[0.5695, 0.91, 0.2], [0.43, 0.6, 0.0]])
    assert_values(returns, [[0.7695, 1.31, 1.0], [0.63, 1.0, 0.0]])   # A + V


@pytest.mark.exercise("gae")
def test_gae_lambda_one_is_monte_carlo_and_lambda_zero_is_td():
    rewards, values, mask = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.3, 0.5, 0.9]]), torch.ones(1, 3)
    # λ = 1, γ = 1: A_t = (sum of rewards from t) - V_t = (0.7, 0.5, 0.1)
    assert ppo.gae(rewards, values, mask, 1.0, 1.0)[0].tolist()[0] == pytest.approx([0.7, 0.5, 0.1], abs=1e-6)
    # λ = 0: A_t = δ_t = (0.5 - 0.3, 0.9 - 0.5, 1 - 0.9)
    assert ppo.gae(rewards, values, mask, 1.0, 0.0)[0].tolist()[0] == pytest.approx([0.2, 0.4, 0.1], abs=1e-6)


@pytest.mark.exercise("clipped_value_loss")
def test_clipped_value_loss_by_hand():
    values, returns = torch.tensor([1.0, 0.6, 0.2, 0.1]), torch.tensor([2.0, 0.4, 0.0, 1.0])
    old = torch.tensor([0.5, 0.5, 0.5, 0.5])
    loss = ppo.clipped_value_loss(values, old, returns, clip=0.2)
    # 1: V_clip = 0.7, ½ max((1 - 2)², (0.7 - 2)²) = ½ · 1.69; 2: inside the clip, ½ · 0.2²;
    # 3: V_clip = 0.3, ½ max(0.2², 0.3²); 4: V_clip = 0.3, ½ max(0.9², 0.7²) (here the unclipped error is larger)
    assert loss.tolist() == pytest.approx([0.845, 0.02, 0.045, 0.405], abs=1e-6)


def dpo_batch(n_rows):
    """Rows chosen, rejected, chosen, rejected; the third is one token long (-5 and 0 sit on padding)."""
    logp = torch.tensor([[-1.0, -1.0], [-3.0, -1.0], [-2.0, -5.0], [-1.0, -1.0]])
    ref = torch.tensor([[-1.5, -1.5], [-2.0, -1.0], [-1.0, 0.0], [-1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    return logp, SimpleNamespace(ref_logprobs=ref, response_mask=mask, n_rows=n_rows)


@pytest.mark.exercise("dpo_loss")
def test_dpo_loss_by_hand():
    # log-ratios (log π - log π_ref summed over tokens): pair 1: chosen 1, rejected -1, margin 0.1 · 2 = 0.2;
    # pair 2: chosen -1 (its padding left out), rejected 0, margin -0.1. -log σ(m) = log(1 + e^-m).
    softplus = [math.log(1 + math.exp(-0.2)), math.log(1 + math.exp(0.1))]  # 0.598139, 0.744397
    loss, stats = dpo.loss(*dpo_batch(n_rows=4), SimpleNamespace(dpo_beta=0.1))
    assert loss.item() == pytest.approx(sum(softplus) / 2, abs=1e-6)
    assert stats["preference_accuracy"] == 0.5 and stats["margin"] == pytest.approx(0.05, abs=1e-6)
    # the same two pairs as one micro-batch of a mini-batch of 4 pairs: everything over 4
    loss, stats = dpo.loss(*dpo_batch(n_rows=8), SimpleNamespace(dpo_beta=0.1))
    assert loss.item() == pytest.approx(sum(softplus) / 4, abs=1e-6)
    assert stats["preference_accuracy"] == 0.25 and stats["margin"] == pytest.approx(0.025, abs=1e-6)


def rl_config(algo, **changes):
    cfg = M.parse_args(["--algo", algo, "--prompts-per-step", "4", "--group-size", "4", "--max-new-tokens", "8",
                        "--lr", "1e-2", "--device", "cpu", "--dtype", "fp32"])
    return SimpleNamespace(**{**vars(cfg), **changes})


def questions(problems):
    """rl_step's next_problems(n): the next n of these questions."""
    return lambda n: problems[:n]


def even_length_wins(texts, references, stopped):
    """A reward the untrained model earns about half of the time, so groups are mixed."""
    return [len(t) % 2 == 0 for t in texts]


def parameters(model):
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.exercise("rl_step")
def test_rl_step_grpo_samples_scores_updates_and_refreshes_the_sampler(tiny, monkeypatch):
    monkeypatch.setattr(M, "grade_batch", even_length_wins)
    torch.manual_seed(0)
    model, tokenizer = copy.deepcopy(tiny[0]), tiny[1]
    sampler, reference = copy.deepcopy(model), copy.deepcopy(model)
    with torch.no_grad():
        for p in reference.parameters():  # a reference unlike the policy, so its log-probs tell which model gave them
            p.add_(0.05 * torch.randn_like(p))
    before = copy.deepcopy(model)
    cfg = rl_config("grpo", kl_coef=0.1)
    optimizer = M.make_optimizer([model], cfg.lr)
    rollout, batch, stats = M.rl_step(model, sampler, reference, None, optimizer, tokenizer,
                                      questions(make_arith_problems(4, seed=0)), grpo, cfg)
    texts = M.decode_responses(tokenizer, rollout.response_ids, rollout.response_mask)
    assert rollout.rewards.tolist() == [float(len(t) % 2 == 0) for t in texts]
    assert len(texts) == 16 and len(batch.rewards) == 16  # GRPO trains on every row
    # old log-probs: the policy's before its update; reference log-probs: the reference's
    torch.testing.assert_close(rollout.old_logprobs, M.score(before, rollout, 1.0, 16)[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(rollout.ref_logprobs, M.score(reference, rollout, 1.0, 16)[0], atol=1e-4, rtol=1e-4)
    # GRPO's advantages of the ±1 rewards, on every response token
    signed = (2 * rollout.rewards - 1).view(4, 4)
    expected = ((signed - signed.mean(1, keepdim=True)) / (signed.std(1, keepdim=True) + grpo.EPS)).flatten()
    torch.testing.assert_close(rollout.advantages, expected[:, None] * rollout.response_mask)
    # the update moved the policy, and the sampler got the new weights
    assert "clip_fraction" in stats
    assert any(not torch.equal(a, b) for a, b in zip(parameters(model), parameters(before)))
    assert all(torch.equal(a, b) for a, b in zip(parameters(sampler), parameters(model)))


@pytest.mark.exercise("rl_step")
def test_rl_step_trains_raft_on_the_rows_it_keeps(tiny, monkeypatch):
    monkeypatch.setattr(M, "grade_batch", even_length_wins)
    torch.manual_seed(1)
    model, tokenizer = copy.deepcopy(tiny[0]), tiny[1]
    cfg = rl_config("raft", kl_coef=0.0)
    rollout, batch, _ = M.rl_step(model, model, None, None, M.make_optimizer([model], cfg.lr), tokenizer,
                                  questions(make_arith_problems(4, seed=1)), raft, cfg)
    right = int(rollout.rewards.sum())
    assert 0 < right < 16
    assert len(batch.rewards) == right and batch.rewards.eq(1).all() and batch.group_size == 1
    assert rollout.ref_logprobs is None


@pytest.mark.exercise("rl_step")
def test_rl_step_with_nothing_to_train_on_leaves_the_model(tiny, monkeypatch):
    monkeypatch.setattr(M, "grade_batch", lambda texts, references, stopped: [False] * len(texts))
    model, tokenizer = copy.deepcopy(tiny[0]), tiny[1]
    before = parameters(model)
    cfg = rl_config("raft", kl_coef=0.0)
    rollout, batch, stats = M.rl_step(model, model, None, None, M.make_optimizer([model], cfg.lr), tokenizer,
                                      questions(make_arith_problems(4, seed=2)), raft, cfg)
    assert batch is None and stats == {} and len(rollout.rewards) == 16
    assert all(torch.equal(a, b) for a, b in zip(parameters(model), before))
