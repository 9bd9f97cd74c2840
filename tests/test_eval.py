"""Evaluation: pass@k, maj@k, the metrics evaluate() reports and what --eval-only writes."""
import json

import pytest

import minireason as M
from algorithms import grader, tasks


@pytest.mark.parametrize("n, c, k, expected", [
    (4, 0, 1, 0.0), (4, 1, 1, 0.25), (4, 1, 2, 0.5),      # 1 - C(3,2)/C(4,2) = 1 - 3/6
    (4, 2, 2, 1 - 1 / 6), (4, 1, 4, 1.0), (8, 3, 4, 1 - 5 / 70), (4, 4, 1, 1.0),
])
def test_pass_at_k_is_the_unbiased_estimator(n, c, k, expected):
    assert M.pass_at_k(n, c, k) == pytest.approx(expected)


def votes(*answers):
    """Samples with (answer, correct, stopped)."""
    return [dict(answer=a, correct=c, stopped=s) for a, c, s in answers]


def test_majority_vote():
    assert grader.majority_correct(votes(("3", True, True), ("4", False, True), ("3.0", True, True)))   # 3 = 3.0
    assert not grader.majority_correct(votes(("4", False, True), ("3", True, True), ("4", False, True)))
    # a response cut off at the length limit does not vote, and no votes at all is not a correct majority
    assert grader.majority_correct(votes(("4", False, False), ("4", False, False), ("3", True, True)))
    assert not grader.majority_correct(votes((None, False, True), ("4", False, False)))
    assert grader.majority_correct(votes(("3", True, True), ("4", False, True)))  # a tie: the first answer seen


def test_evaluate_reports_consistent_metrics(tiny, monkeypatch):
    model, tokenizer = tiny
    # a reward the untrained model earns now and then, so every metric has something to count
    monkeypatch.setattr(M, "grade_batch", lambda texts, refs, stopped: ["7" in t for t in texts])
    cfg = M.parse_args(["--max-new-tokens", "12", "--eval-batch", "5"])
    problems = tasks.make_arith_problems(12, seed=3)
    metrics, records = M.evaluate(model, tokenizer, problems, cfg, k=4)
    assert [r["question"] for r in records] == [p.question for p in problems]
    assert all(len(r["samples"]) == 4 for r in records)
    samples = [s for r in records for s in r["samples"]]
    assert metrics["avg@4"] == pytest.approx(sum(s["correct"] for s in samples) / 48)
    assert metrics["pass@1"] == pytest.approx(metrics["avg@4"])
    assert metrics["pass@4"] == pytest.approx(sum(any(s["correct"] for s in r["samples"]) for r in records) / 12)
    assert metrics["avg@4"] <= metrics["pass@2"] <= metrics["pass@4"]
    assert 0 < metrics["avg@4"] < 1
    assert metrics["accuracy"] == sum(r["greedy"]["correct"] for r in records) / 12
    assert metrics["truncated"] == sum(not r["greedy"]["stopped"] for r in records) / 12
    assert metrics["response_length"] == sum(r["greedy"]["tokens"] for r in records) / 12


def test_eval_only_writes_metrics_samples_and_a_table(tmp_path, capsys):
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("".join(json.dumps({"question": f"{i}+{i}", "answer": f"#### {2 * i}"}) + "\n" for i in range(6)))
    out = tmp_path / "eval"
    M.main(["--eval-only", "--data", str(data), "--eval-k", "2", "--eval-limit", "4", "--max-new-tokens", "8",
            "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    [metrics] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"eval/accuracy", "eval/avg@2", "eval/pass@1", "eval/pass@2", "eval/maj@2", "eval/response_length",
            "eval/truncated"} <= set(metrics)
    samples = [json.loads(line) for line in (out / "samples" / "step-0.jsonl").read_text().splitlines()]
    assert [s["reference"] for s in samples] == ["0", "2", "4", "6"]
    assert all(len(s["samples"]) == 2 and "response" in s["greedy"] for s in samples)
    printed = capsys.readouterr().out
    assert "tiny on 4 questions" in printed and "maj@2" in printed and "peak memory" in printed
