"""End to end: the CLI's training loop on a small version of the default, offline, on the CPU."""
import json

import pytest

import minireason as M

# A smaller model and question set than the default so the warm-up takes seconds, not minutes.
SMALL = ["--n-train", "48", "--n-test", "48", "--sft-steps", "150", "--sft-lr", "3e-3", "--sft-batch", "48",
         "--prompts-per-step", "12", "--group-size", "8", "--lr", "1e-3", "--eval-every", "100",
         "--no-sft-baseline"]


@pytest.fixture(scope="module")
def small_runs(tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setattr(M, "TINY_MODEL", dict(M.TINY_MODEL, hidden_size=64, intermediate_size=256,
                                                     num_hidden_layers=2))
    root = tmp_path_factory.mktemp("runs")

    def run(name, *args):
        M.train(M.parse_args(SMALL + ["--cache-dir", str(root / "cache"), "--out", str(root / name), *args]))
        return root / name
    return run


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def read_metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_grpo_reward_rises(small_runs):
    run = small_runs("rises", "--steps", "16")
    train = [m for m in read_metrics(run) if "train/reward" in m]
    first, last = sum(m["train/reward"] for m in train[:4]) / 4, sum(m["train/reward"] for m in train[-4:]) / 4
    assert last > first + 0.1, (first, last)
    for key in ("train/accuracy", "train/entropy", "train/kl", "train/response_length", "train/clip_fraction"):
        assert all(key in m for m in train)
    evals = [m for m in read_metrics(run) if "eval/accuracy" in m]
    assert [m["step"] for m in evals] == [0, 16]
    assert (run / "model" / "config.json").exists() and (run / "config.json").exists()


def test_same_seed_same_metrics(small_runs):
    def metrics(name):
        return [{k: v for k, v in m.items() if not k.startswith("time/")} for m in read_metrics(small_runs(name, "--steps", "2"))]
    assert metrics("a") == metrics("b")


def test_warm_up_is_cached_by_its_settings(small_runs):
    cache = small_runs("c", "--steps", "1").parent / "cache"
    assert len(list(cache.glob("warmup-*"))) == 1   # every run above reused one warm-up
    small_runs("d", "--steps", "1", "--sft-steps", "2")
    assert len(list(cache.glob("warmup-*"))) == 2   # other settings, another warm-up
