"""End to end: the CLI's training loop, offline on the CPU, on a smaller model than the default."""
import copy
import json
import math
import os
import signal

import pytest
import torch
import transformers

import minireason as M

SMALL_MODEL = dict(M.TINY_MODEL, hidden_size=64, intermediate_size=256, num_hidden_layers=2)
SMALL_RUN = ["--n-train", "48", "--n-test", "32", "--sft-steps", "30", "--sft-batch", "16",
             "--prompts-per-step", "12", "--group-size", "8", "--max-new-tokens", "32", "--eval-every", "100"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """run(name, *flags) trains with the small settings and returns the run folder."""
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(M, "TINY_MODEL", SMALL_MODEL)

        def train(name, *flags):
            M.train(M.parse_args(SMALL_RUN + ["--cache-dir", str(root / "cache"), "--out", str(root / name), *flags]))
            return root / name
        yield train


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_grpo_raises_a_verifiable_reward(run, monkeypatch):
    # A reward the untrained model earns now and then (two 7s in its answer): the whole loop (sampler,
    # log-probs, group advantages, clipped update) has to find it and make it the rule.
    monkeypatch.setattr(M, "grade_batch", lambda texts, references, stopped: [t.count("7") >= 2 for t in texts])
    rewards = [m["train/reward"] for m in read_metrics(run("bandit", "--sft-steps", "0", "--lr", "1e-3",
                                                           "--steps", "15", "--no-sft-baseline"))
               if "train/reward" in m]
    assert sum(rewards[:3]) / 3 < 0.2 and sum(rewards[-3:]) / 3 > 0.5, rewards


def test_default_task_run_logs_what_the_paper_looks_at(run):
    run_dir = run("arith", "--steps", "2")
    metrics = read_metrics(run_dir)
    train = [m for m in metrics if "train/reward" in m]
    assert [m["step"] for m in train] == [1, 2]
    for key in ("train/reward", "train/accuracy", "train/entropy", "train/kl", "train/response_length",
                "train/clip_fraction", "train/groups_all_correct", "train/groups_all_wrong"):
        assert all(math.isfinite(m[key]) for m in train), key
    assert [m["step"] for m in metrics if "eval/accuracy" in m] == [0, 2]
    assert "baseline/sft_accuracy" in metrics[-1]
    assert json.loads((run_dir / "config.json").read_text())["algo"] == "grpo"
    model, _ = M.load_model(str(run_dir / "model"), run_dir, "cpu")  # an ordinary HF checkpoint
    assert model.config.hidden_size == SMALL_MODEL["hidden_size"]


def test_same_seed_same_metrics(run):
    def metrics(name):
        return [{k: v for k, v in m.items() if not k.startswith("time/")}
                for m in read_metrics(run(name, "--steps", "2", "--no-sft-baseline"))]
    assert metrics("a") == metrics("b")


def test_warm_up_is_cached_by_its_settings(run):
    cache = run("c", "--steps", "1", "--no-sft-baseline").parent / "cache"
    before = set(cache.glob("warmup-*"))
    run("d", "--steps", "1", "--no-sft-baseline")
    assert set(cache.glob("warmup-*")) == before                   # same settings: reused
    run("e", "--steps", "1", "--no-sft-baseline", "--sft-steps", "31")
    assert len(set(cache.glob("warmup-*")) - before) == 1          # other settings: another warm-up


def without_times(metrics):
    return [{k: v for k, v in m.items() if not k.startswith("time/")} for m in metrics]


def test_ctrl_c_saves_and_resume_continues_exactly(run, monkeypatch):
    flags = ["--steps", "4", "--eval-every", "2", "--no-sft-baseline"]
    uninterrupted_dir = run("whole", *flags)
    uninterrupted = read_metrics(uninterrupted_dir)

    generate, calls = M.generate, []

    def ctrl_c_in_step_3(model, tokenizer, problems, cfg, group_size=1, temperature=None):
        if group_size > 1:  # a training rollout, not an evaluation
            calls.append(1)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGINT)  # as if the user pressed Ctrl-C while step 3 samples
        return generate(model, tokenizer, problems, cfg, group_size, temperature)
    monkeypatch.setattr(M, "generate", ctrl_c_in_step_3)
    with pytest.raises(SystemExit) as stop:
        run("cut", *flags)
    assert stop.value.code == 130  # what a shell reports for a process stopped by Ctrl-C
    monkeypatch.setattr(M, "generate", generate)
    cut = uninterrupted_dir.parent / "cut"
    assert (cut / "latest").read_text() == "checkpoint-3"  # step 3 was finished, then saved
    assert [m["step"] for m in read_metrics(cut)] == [0, 1, 2, 3]
    assert not (cut / "model").exists()
    checkpoint = transformers.AutoModelForCausalLM.from_pretrained(cut / "checkpoint-3")  # loads as it is
    assert checkpoint.config.hidden_size == SMALL_MODEL["hidden_size"]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(M, "TINY_MODEL", SMALL_MODEL)
        M.train(M.parse_args(["--resume", str(cut)]))
    assert without_times(read_metrics(cut)) == without_times(uninterrupted)


def test_a_crash_while_saving_leaves_the_latest_checkpoint_whole(run, monkeypatch):
    run_dir = run("saves", "--steps", "2", "--save-every", "1", "--no-sft-baseline")
    assert (run_dir / "latest").read_text() == "checkpoint-2" and not (run_dir / "checkpoint-1").exists()

    def crash(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(M.torch, "save", crash)  # dies half-way through writing the next checkpoint
    with pytest.raises(OSError):
        run("saves", "--resume", str(run_dir), "--steps", "3")
    monkeypatch.undo()
    assert (run_dir / "latest").read_text() == "checkpoint-2"
    assert transformers.AutoModelForCausalLM.from_pretrained(run_dir / "checkpoint-2") is not None


def test_old_logprobs_from_sampling_are_the_updates_own(run):
    # ratios are 1 on the first optimizer step, so nothing is clipped, though the sampler's log-probs came from the
    # KV-cache decode and the update's from a prompt pass and a response pass (a wrong temperature or a shifted
    # position in either would clip nearly every token)
    grpo = read_metrics(run("grpo-no-rescore", "--steps", "2", "--minibatches", "1", "--no-sft-baseline"))
    assert all(m["train/clip_fraction"] == 0 for m in grpo if "train/reward" in m) and grpo[-1]["train/entropy"] > 0


def test_bf16_forwards_see_every_update(tiny):
    # a whole run is one autocast context: a forward after optimizer.step() must use the updated weights
    model, tokenizer = copy.deepcopy(tiny[0]), tiny[1]
    ids = torch.tensor([tokenizer.encode("Q: 1+2\nA: ")])
    with M.precision(M.parse_args(["--dtype", "bf16", "--device", "cpu"])):
        model(ids).logits.sum().backward()  # a training step's forward, with gradients on
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(0.5)  # what the optimizer does: change the weights in place
        seen = model(ids).logits
        expected = copy.deepcopy(model)(ids).logits  # the same weights, in tensors autocast has not seen
    torch.testing.assert_close(seen, expected)


def test_bf16_samples_from_a_bf16_copy_and_keeps_fp32_weights(run, monkeypatch, tmp_path):
    copies = []
    generate = M.generate

    def spy(model, *args, **kwargs):
        copies.append(next(model.parameters()).dtype)
        return generate(model, *args, **kwargs)
    monkeypatch.setattr(M, "generate", spy)
    monkeypatch.setattr(M, "TINY_MODEL", SMALL_MODEL)
    cache = run("bf16-warm-up", "--steps", "0", "--no-sft-baseline").parent / "cache"
    M.main(SMALL_RUN + ["--cache-dir", str(cache), "--out", str(tmp_path / "bf16"), "--steps", "2", "--dtype", "bf16",
                        "--no-sft-baseline"])
    assert set(copies[-3:]) == {torch.bfloat16}  # the rollouts and the last evaluation
    train = [m for m in read_metrics(tmp_path / "bf16") if "train/reward" in m]
    assert len(train) == 2 and all(math.isfinite(m["train/entropy"]) and math.isfinite(m["train/grad_norm"]) for m in train)
    saved = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "bf16" / "model")
    assert saved.dtype == torch.float32  # what the optimizer updated


def test_n_chains_warm_up_and_continued_sft_see_only_the_chains(run):
    # 48 training questions, 6 with a reference chain: the warm-up is the one trained on those 6 alone (the same
    # cached folder as a run with only those 6 questions), continued SFT draws only chains (an answer-only
    # question has no chain to train on, and would stop the run), and RL trains on all 48
    cache = run("chains-6", "--n-chains", "6", "--algo", "sft", "--steps", "2").parent / "cache"
    before = set(cache.glob("warmup-*"))
    run("only-6", "--n-train", "6", "--steps", "1", "--no-sft-baseline")
    assert set(cache.glob("warmup-*")) == before


def test_rl_asks_every_training_question_with_or_without_a_chain(run, monkeypatch):
    asked, generate = [], M.generate

    def recording(model, tokenizer, problems, cfg, group_size=1, temperature=None):
        if group_size > 1:  # sampling for RL, not the greedy evaluation
            asked.extend(p.question for p in problems)
        return generate(model, tokenizer, problems, cfg, group_size, temperature)
    monkeypatch.setattr(M, "generate", recording)
    run("chains-6-grpo", "--n-chains", "6", "--steps", "1", "--no-sft-baseline", "--prompts-per-step", "48")
    train, _ = M.load_task(M.parse_args(SMALL_RUN + ["--n-chains", "6"]))
    assert sorted(asked) == sorted(p.question for p in train)
