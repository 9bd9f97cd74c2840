"""Each algorithm's advantage rule, filtering and loss against numbers worked out by hand, and a short
end-to-end run of every algorithm through the CLI's loop."""
import json
import math
from types import SimpleNamespace

import pytest
import torch

import minireason as M
from algorithms import dpo, grpo, ppo, raft, raftpp, reinforce, reinforce_rej
from algorithms.common import clipped_surrogate

CFG = SimpleNamespace(clip_low=0.2, clip_high=0.2, dual_clip=None, kl_coef=0.0, loss_agg="token-mean", std_normalize=True,
                      reject_groups="all-same", reject_by="zero", gamma=1.0, lam=0.95, value_clip=0.2,
                      value_coef=5.0, dpo_beta=0.1, max_new_tokens=64)


def cfg(**changes):
    return SimpleNamespace(**{**vars(CFG), **changes})


def rollout(correct, group_size, T=2, rewards=None):
    """Responses right or wrong; `rewards` overrides their reward (a partial reward for some wrong ones)."""
    correct = torch.tensor(correct)
    rewards = correct.float() if rewards is None else torch.tensor(rewards)
    return SimpleNamespace(correct=correct, rewards=rewards, group_size=group_size,
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


# --- one reward channel: every algorithm learns from rollout.rewards --------------------------------------

PARTIAL = dict(correct=[True, False, False, False], rewards=[1.0, 0.1, 0.0, 0.0])  # ReFT: 0.1 for an answer given


def test_grpo_takes_rewards_as_plus_minus_one():
    # r = [+1, -1, -1, -1]: mean -0.5, so without std A = [1.5, -0.5, -0.5, -0.5], Reinforce's scale (0/1 rewards
    # would give half of it); with std (unbiased, 1) the same numbers
    r = rollout([True, False, False, False], group_size=4)
    assert per_row(grpo.advantages(r, cfg(std_normalize=False))) == pytest.approx([1.5, -0.5, -0.5, -0.5])
    assert per_row(grpo.advantages(r, CFG)) == pytest.approx([1.5, -0.5, -0.5, -0.5], abs=1e-5)


def test_a_partial_reward_changes_every_algorithm_that_accepts_it():
    binary, partial = rollout(PARTIAL["correct"], 4), rollout(group_size=4, **PARTIAL)
    # GRPO without std: r = [1, -0.8, -1, -1], mean -0.45
    assert per_row(grpo.advantages(partial, cfg(std_normalize=False))) == pytest.approx([1.45, -0.35, -0.55, -0.55])
    assert per_row(reinforce.advantages(partial, CFG)) == pytest.approx([1.0, -0.8, -1.0, -1.0])
    assert per_row(reinforce_rej.advantages(partial, CFG)) == pytest.approx([1.0, -0.8, -1.0, -1.0])
    assert per_row(reinforce.advantages(binary, CFG)) == [1.0, -1.0, -1.0, -1.0]
    # PPO: the outcome reward lands on the last token
    mask = torch.ones(4, 2)
    with_values = dict(response_mask=mask, old_logprobs=torch.zeros(4, 2), ref_logprobs=torch.zeros(4, 2))
    ppo_rewards = ppo.token_rewards(SimpleNamespace(rewards=partial.rewards, **with_values), CFG)
    assert ppo_rewards[:, -1].tolist() == pytest.approx([1.0, 0.1, 0.0, 0.0])
    # DPO: a group with one right answer and no other answer pairs the right one with the worst, not the partial one;
    # a group with no right answer but one given answer now gives a pair (it had none)
    wrong_but_answered = rollout([False] * 4, group_size=4, rewards=[0.0, 0.1, 0.0, 0.0])
    assert dpo.keep_rows(rollout([False] * 4, 4), CFG)[0].tolist() == []
    assert dpo.keep_rows(wrong_but_answered, CFG)[0].tolist() == [1, 0]
    assert per_row(dpo.advantages(wrong_but_answered, CFG)) == [-1.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize("algo", ["raft", "raftpp", "sft"])
def test_a_partial_reward_is_refused_where_it_means_nothing(algo, capsys):
    with pytest.raises(SystemExit):
        M.parse_args(["--algo", algo, "--partial-reward"])
    assert f"--partial-reward means nothing to --algo {algo}" in capsys.readouterr().err


def test_temperature_zero_is_refused_for_training_and_kept_for_evaluation(capsys):
    with pytest.raises(SystemExit):
        M.parse_args(["--temperature", "0"])
    assert "--temperature 0: training samples" in capsys.readouterr().err
    assert M.parse_args(["--temperature", "0", "--eval-only"]).temperature == 0


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


def test_dual_clip_flag_reaches_the_shared_loss():
    # a bad token (A = -1) whose probability rose 5x: the plain clip leaves the loss at 5, the dual clip caps it at 3
    logp, old = torch.log(torch.tensor([[5.0]])), torch.zeros(1, 1)
    b = batch(logp, old_logprobs=old, advantages=-torch.ones(1, 1))
    assert grpo.loss(logp, b, CFG)[0].item() == pytest.approx(5.0)
    assert grpo.loss(logp, b, cfg(dual_clip=3.0))[0].item() == pytest.approx(3.0)
    assert M.parse_args(["--dual-clip", "3"]).dual_clip == 3.0


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


# --- the update ---------------------------------------------------------------------------------------

def test_update_stats_are_the_mini_batchs_whatever_the_micro_batches(tiny):
    """A mini-batch's clip fraction is over its tokens: micro-batches of one group must report what one pass over
    the whole mini-batch does (averaging the micro-batches' fractions per group would not, rows being of
    different lengths), and accumulate the same gradient."""
    model, tokenizer = tiny
    torch.manual_seed(0)
    prompts = [M.encode_prompt(tokenizer, q, "") for q in ("1+2", "7-3*4", "9*9") for _ in range(2)]
    prompt_ids, prompt_mask = M.pad(prompts, tokenizer.pad_token_id, left=True)
    response_ids, response_mask = M.pad([torch.randint(3, 20, (n,)).tolist() for n in (1, 9, 3, 12, 2, 7)],
                                        tokenizer.pad_token_id)
    response_mask = response_mask.float()
    rollout = M.Rollout(prompt_ids, prompt_mask, response_ids, response_mask, group_size=2, rewards=torch.ones(6))
    logprobs = M.score(model, rollout, 1.0, micro_batch=6)[0]
    old = (logprobs + 0.3 * torch.randn_like(logprobs)) * response_mask  # ratios off 1: some tokens clip
    advantages = torch.randn(6, 1).sign() * response_mask
    rollout = M.Rollout(**{**vars(rollout), "old_logprobs": old, "advantages": advantages})
    _, clipped = clipped_surrogate(logprobs, old, advantages)
    expected = (clipped.float() * response_mask).sum() / response_mask.sum()

    def update(micro_batch):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # the gradient, not a step
        settings = cfg(micro_batch=micro_batch, epochs=1, minibatches=1, temperature=1.0, grad_clip=1e9)
        return M.update(model, optimizer, rollout, grpo, settings)
    whole, by_group = update(6), update(2)
    assert whole["clip_fraction"] == pytest.approx(expected.item()) and 0 < expected < 1
    assert by_group["clip_fraction"] == pytest.approx(expected.item())
    assert by_group["grad_norm"] == pytest.approx(whole["grad_norm"], rel=1e-4)
