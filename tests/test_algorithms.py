"""Each algorithm's advantage rule, filtering and loss against numbers worked out by hand, and a short
end-to-end run of every algorithm through the CLI's loop."""
import json
import math
from types import SimpleNamespace

import pytest
import torch

import minireason as M
from algorithms import dpo, grpo, ppo, raft, raftpp, reinforce, reinforce_rej

CFG = SimpleNamespace(clip_low=0.2, clip_high=0.2, kl_coef=0.0, loss_agg="token-mean", std_normalize=True,
                      reject_groups="all-same", reject_by="zero", gamma=1.0, lam=0.95, value_clip=0.2,
                      value_coef=5.0, dpo_beta=0.1)


def cfg(**changes):
    return SimpleNamespace(**{**vars(CFG), **changes})


def rollout(correct, group_size, T=2):
    correct = torch.tensor(correct)
    return SimpleNamespace(correct=correct, rewards=correct.float(), group_size=group_size,
                           response_mask=torch.ones(len(correct), T))


def per_row(advantages):
    return advantages[:, 0].tolist()


# --- advantages and filtering -------------------------------------------------------------------------

def test_raft_keeps_only_correct_samples_with_advantage_one():
    r = rollout([True, False, True, False], group_size=2)
    assert per_row(raft.advantages(r, CFG)) == [1.0, 0.0, 1.0, 0.0]
    rows, group_size = raft.keep_rows(r, CFG)
    assert rows.tolist() == [0, 2] and group_size == 1


def test_reinforce_advantage_is_the_signed_reward():
    r = rollout([True, False, False], group_size=1)
    assert per_row(reinforce.advantages(r, CFG)) == [1.0, -1.0, -1.0]


@pytest.mark.parametrize("which, expected", [
    ("all-same", [0, 0, 0, 0, 1, -1]),      # Reinforce-Rej: only the mixed group speaks
    ("all-wrong", [1, 1, 0, 0, 1, -1]),     # ablation: remove all-wrong groups only
    ("all-correct", [0, 0, -1, -1, 1, -1]),  # ablation: remove all-correct groups only
])
def test_reinforce_rej_rejects_groups(which, expected):
    r = rollout([True, True, False, False, True, False], group_size=2)
    assert per_row(reinforce_rej.advantages(r, cfg(reject_groups=which))) == expected


def test_reinforce_rej_two_readings_of_reject():
    r = rollout([True, True, False, False, True, False], group_size=2)
    rows, group_size = reinforce_rej.keep_rows(r, cfg(reject_by="zero"))
    assert rows.tolist() == [0, 1, 2, 3, 4, 5] and group_size == 2      # kept, with advantage 0
    rows, group_size = reinforce_rej.keep_rows(r, cfg(reject_by="drop"))
    assert rows.tolist() == [4, 5] and group_size == 2                  # gone from the batch


def test_groups_of_one_carry_no_group_signal():
    r = rollout([True, False], group_size=1)
    assert per_row(reinforce_rej.advantages(r, CFG)) == [0.0, 0.0]    # a group of one is all-same
    assert per_row(grpo.advantages(r, CFG)) == [0.0, 0.0]
    assert per_row(reinforce.advantages(r, CFG)) == [1.0, -1.0]         # Reinforce needs no group


def test_dpo_pairs_one_right_and_one_wrong_per_group():
    r = rollout([True, False, False, True, True, True, False, True, False], group_size=3)
    rows, group_size = dpo.keep_rows(r, CFG)
    assert rows.tolist() == [0, 1, 7, 6] and group_size == 2   # the all-correct middle group gives no pair


# --- losses -------------------------------------------------------------------------------------------

def batch(logp, **fields):
    mask = fields.pop("response_mask", torch.ones_like(logp))
    return SimpleNamespace(response_mask=mask, n_tokens=mask.sum(), n_rows=len(logp), **fields)


def test_raft_loss_is_nll_on_kept_tokens():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -9.0]])
    b = batch(logp, advantages=torch.tensor([[1.0, 1.0], [1.0, 0.0]]),
              response_mask=torch.tensor([[1.0, 1.0], [1.0, 0.0]]))
    loss, _ = raft.loss(logp, b, CFG)
    assert loss.item() == pytest.approx((1 + 2 + 0.5) / 3)


def test_raftpp_clips_a_token_whose_probability_already_rose():
    old = torch.tensor([[0.0, 0.0]])
    logp = torch.log(torch.tensor([[1.5, 1.1]])).requires_grad_()  # ratios 1.5 and 1.1, advantage 1
    b = batch(logp, old_logprobs=old, advantages=torch.ones(1, 2))
    loss, stats = raftpp.loss(logp, b, CFG)
    loss.backward()
    assert loss.item() == pytest.approx(-(1.2 + 1.1) / 2)          # the first is held at 1 + ε
    assert logp.grad.tolist()[0] == pytest.approx([0.0, -1.1 / 2])  # no gradient through the clipped one
    assert stats["clip_fraction"] == 0.5


def test_gae_on_three_tokens():
    rewards, values = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.6, 0.7]])
    adv, returns = ppo.gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=0.95)
    # δ = (0.1, 0.1, 0.3); A_2 = 0.3, A_1 = 0.1 + 0.95 * 0.3, A_0 = 0.1 + 0.95 * A_1
    assert adv.tolist()[0] == pytest.approx([0.46575, 0.385, 0.3])
    assert returns.tolist()[0] == pytest.approx([0.96575, 0.985, 1.0])
    # a shorter response: nothing leaks from the padding, V past the end is 0
    adv, _ = ppo.gae(torch.tensor([[0.0, 1.0, 0.0]]), values, torch.tensor([[1.0, 1.0, 0.0]]), 1.0, 0.95)
    assert adv.tolist()[0] == pytest.approx([0.1 + 0.95 * 0.4, 0.4, 0.0])


def test_ppo_token_rewards_put_the_outcome_last_and_kl_everywhere():
    r = SimpleNamespace(rewards=torch.tensor([1.0, 0.1]), response_mask=torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]),
                        old_logprobs=torch.tensor([[-1.0, -1.0, -1.0], [-2.0, 0.0, 0.0]]),
                        ref_logprobs=torch.tensor([[-1.5, -1.0, -0.5], [-1.0, 0.0, 0.0]]))
    rewards = ppo.token_rewards(r, cfg(kl_coef=0.1))
    assert rewards.flatten().tolist() == pytest.approx([-0.05, 0.0, 1.05, 0.1 + 0.1, 0.0, 0.0])


def test_clipped_value_loss():
    old, returns = torch.tensor([0.5, 0.5]), torch.tensor([2.0, 0.4])
    loss = ppo.clipped_value_loss(torch.tensor([1.0, 0.6]), old, returns, clip=0.2)
    # first: V_clip = 0.7 is further from R = 2 than V = 1: ½ (0.7 - 2)² = 0.845; second: inside the clip
    assert loss.tolist() == pytest.approx([0.845, 0.02])


def test_whiten():
    x = ppo.whiten(torch.tensor([[1.0, 2.0, 3.0, 100.0]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    assert x.tolist()[0] == pytest.approx([-math.sqrt(1.5), 0.0, math.sqrt(1.5), 0.0], abs=1e-4)


def test_dpo_loss_by_hand():
    # chosen: log π - log π_ref = -2 - (-3) = 1; rejected: -4 - (-3) = -1; margin β (1 - (-1)) = 0.2
    logp = torch.tensor([[-1.0, -1.0], [-3.0, -1.0]])
    ref = torch.tensor([[-1.5, -1.5], [-2.0, -1.0]])
    loss, stats = dpo.loss(logp, batch(logp, ref_logprobs=ref), CFG)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.2)))
    assert stats["preference_accuracy"] == 1.0


# --- every algorithm end to end -----------------------------------------------------------------------

SMALL_MODEL = dict(M.TINY_MODEL, hidden_size=64, intermediate_size=256, num_hidden_layers=2)


@pytest.mark.parametrize("algo", M.ALGORITHMS)
def test_each_algorithm_runs_and_logs_finite_values(algo, tmp_path_factory, monkeypatch):
    monkeypatch.setattr(M, "TINY_MODEL", SMALL_MODEL)
    # A reward the untrained model earns about a third of the time, so every group rule has work to do.
    monkeypatch.setattr(M, "grade_batch", lambda texts, references, stopped: ["7" in t for t in texts])
    cache = tmp_path_factory.getbasetemp() / "algo-cache"
    out = tmp_path_factory.mktemp(algo)
    M.train(M.parse_args(["--algo", algo, "--steps", "2", "--sft-steps", "0", "--n-train", "24", "--n-test", "8",
                          "--prompts-per-step", "6", "--group-size", "4", "--max-new-tokens", "16",
                          "--no-sft-baseline", "--cache-dir", str(cache), "--out", str(out)]))
    train = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "train/reward" in line]
    assert len(train) == 2
    for m in train:
        assert m["train/trained_rows"] > 0
        assert all(math.isfinite(v) for v in m.values()), m
    uses_reference = M.parse_args(["--algo", algo]).kl_coef > 0 or algo == "dpo"
    assert ("train/kl" in train[0]) == uses_reference
    if algo == "ppo":
        assert {"train/value_loss", "train/explained_variance"} <= set(train[0])
        assert (out / "model" / "value_head.pt").exists()
