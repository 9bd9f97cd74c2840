"""The shared loss pieces and GRPO's advantages, against numbers worked out by hand."""
import math

import pytest
import torch

from algorithms.common import (aggregate_loss, clipped_surrogate, entropy_from_logits, group_outcomes,
                               kl_estimate, masked_mean)
from algorithms.grpo import group_advantages

X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def test_masked_mean_ignores_masked_positions():
    assert masked_mean(X, MASK).item() == pytest.approx(7 / 3)           # (1 + 2 + 4) / 3
    assert masked_mean(X, MASK, dim=1).tolist() == pytest.approx([1.5, 4.0])
    assert masked_mean(X, torch.zeros_like(MASK)).item() == 0.0           # empty mask: 0, not NaN


def test_loss_aggregation_modes():
    assert aggregate_loss(X, MASK, "token-mean", n_tokens=3, n_rows=2).item() == pytest.approx(7 / 3)
    assert aggregate_loss(X, MASK, "seq-mean-token-mean", n_tokens=3, n_rows=2).item() == pytest.approx(2.75)
    # micro-batches normalised by the whole mini-batch add up to the mini-batch loss
    halves = sum(aggregate_loss(X[i:i + 1], MASK[i:i + 1], "token-mean", 3, 2) for i in range(2))
    assert halves.item() == pytest.approx(7 / 3)
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        aggregate_loss(X, MASK, "mean", 3, 2)


def test_clipped_surrogate_both_sides():
    # ratios 1.5, 1.5, 0.5, 0.5 against advantages +1, -1, +1, -1
    ratio = torch.tensor([[1.5, 1.5, 0.5, 0.5]])
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    loss, clipped = clipped_surrogate(torch.log(ratio), torch.zeros_like(ratio), adv)
    # +A, ratio above 1+ε: the clip caps the gain at 1.2; -A, ratio above: unclipped 1.5 is the larger loss;
    # +A, ratio below 1-ε: unclipped -0.5 is larger; -A, ratio below: the clip holds the loss at 0.8
    assert loss.tolist()[0] == pytest.approx([-1.2, 1.5, -0.5, 0.8])
    assert clipped.tolist()[0] == [True, False, False, True]


def test_clipped_surrogate_asymmetric_and_dual_clip():
    ratio = torch.tensor([[1.25, 5.0]])
    loss, _ = clipped_surrogate(torch.log(ratio), torch.zeros(1, 2), torch.tensor([[1.0, -1.0]]),
                                eps_low=0.2, eps_high=0.28, dual_clip=3.0)
    # 1.25 is inside (0.8, 1.28): unclipped; the bad token with ratio 5 is capped at c * |A| = 3
    assert loss.tolist()[0] == pytest.approx([-1.25, 3.0])


def test_clipped_surrogate_gradient_at_ratio_one_is_policy_gradient():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    adv = torch.tensor([[2.0, -3.0]])
    loss, _ = clipped_surrogate(logp, logp.detach(), adv)
    loss.sum().backward()
    assert logp.grad.tolist()[0] == pytest.approx([-2.0, 3.0])  # -A * d logp


def test_a_huge_log_ratio_is_clamped_not_inf():
    # log-ratio 100: exp(100) overflows float32 to inf, and inf * 0 advantages is NaN. Clamped to 20, the loss is
    # finite and the gradient 0 (the clip holds the ratio) for a positive advantage
    logp = torch.tensor([[100.0, 100.0, -100.0]], requires_grad=True)
    loss, clipped = clipped_surrogate(logp, torch.zeros(1, 3), torch.tensor([[1.0, 0.0, -1.0]]))
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logp.grad).all()
    assert loss.tolist()[0] == pytest.approx([-1.2, 0.0, 0.8])
    # a bad token 20 nats likelier than when sampled: its loss is exp(20), not exp(100)
    loss, _ = clipped_surrogate(torch.tensor([[100.0]]), torch.zeros(1, 1), torch.tensor([[-1.0]]))
    assert loss.item() == pytest.approx(math.exp(20), rel=1e-5)


def test_kl_estimators():
    logp, ref = torch.tensor([-1.0]), torch.tensor([-1.5])          # d = 0.5
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(0.5)
    assert kl_estimate(logp, ref, "k2").item() == pytest.approx(0.125)
    assert kl_estimate(logp, ref, "k3").item() == pytest.approx(math.exp(-0.5) - 0.5)
    # clamps: d is held to [-20, 20] and k3 to <= 10
    assert kl_estimate(torch.tensor([30.0]), torch.tensor([0.0]), "k1").item() == 20.0
    assert kl_estimate(torch.tensor([-25.0]), torch.tensor([0.0]), "k3").item() == 10.0
    assert kl_estimate(torch.tensor([-2.0]), torch.tensor([-2.0]), "k3").item() == 0.0


def test_entropy():
    assert entropy_from_logits(torch.zeros(4)).item() == pytest.approx(math.log(4))
    assert entropy_from_logits(torch.tensor([0.0, -1e9])).item() == pytest.approx(0.0, abs=1e-6)


def test_group_advantages_by_hand():
    # one right out of four: mean 0.25, unbiased std 0.5
    assert group_advantages(torch.tensor([1.0, 0, 0, 0]), 4).tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5], abs=1e-5)
    # without std normalisation (the 2504.11343 ablation): r - mean
    assert group_advantages(torch.tensor([1.0, 0, 0, 0]), 4, normalize_std=False).tolist() == \
        pytest.approx([0.75, -0.25, -0.25, -0.25])
    # all right, all wrong: no signal; and a ±1 reward gives the same advantages as 0/1
    assert group_advantages(torch.tensor([1.0, 1, 0, 0, 0, 0]), 2).tolist() == [0.0] * 6
    assert group_advantages(torch.tensor([1.0, -1, -1, -1]), 4).tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5], abs=1e-5)
    # a group of one has nothing to compare with
    assert group_advantages(torch.tensor([1.0, 0.0]), 1).tolist() == [0.0, 0.0]


def test_group_outcomes():
    correct = torch.tensor([True, True, False, True, False, False])
    all_correct, all_wrong = group_outcomes(correct, 2)
    assert all_correct.tolist() == [True, False, False]
    assert all_wrong.tolist() == [False, False, True]
