"""Real data: GSM8K and MATH records from JSONL, the held-out split, and the errors bad input gets."""
import json

import pytest

import minireason as M
from algorithms import tasks

GSM8K = {"question": "Ann has 3 bags of 4 apples. She eats 2. How many are left?",
         "answer": "She has 3*4=<<3*4=12>>12 apples.\nThen 12-2=<<12-2=10>>10 are left.\n#### 10"}
MATH_WITH_ANSWER = {"problem": "What is $\\frac{1}{2}+\\frac{1}{4}$?", "solution": "Add: $\\boxed{\\frac{3}{4}}$.",
                    "answer": "\\frac{3}{4}", "level": 1}
MATH_SOLUTION_ONLY = {"problem": "Compute $2^5$.", "solution": "$2^5 = \\boxed{32}$."}


def write(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_gsm8k_record_becomes_a_chain_ending_in_a_boxed_answer(tmp_path):
    [p] = tasks.read_problems(write(tmp_path / "gsm8k.jsonl", [GSM8K]))
    assert p.question == GSM8K["question"]
    assert p.answer == "10"
    # the calculator annotations go, the "#### 10" line becomes a boxed answer the grader reads
    assert p.solution == "She has 3*4=12 apples.\nThen 12-2=10 are left.\nThe answer is \\boxed{10}."
    assert M.extract_answer(p.solution) == "10"


def test_math_records_take_the_answer_field_or_the_solutions_last_box(tmp_path):
    a, b = tasks.read_problems(write(tmp_path / "math.jsonl", [MATH_WITH_ANSWER, "", MATH_SOLUTION_ONLY]))
    assert (a.question, a.answer, a.solution) == (MATH_WITH_ANSWER["problem"], "\\frac{3}{4}", MATH_WITH_ANSWER["solution"])
    assert (b.answer, b.solution) == ("32", MATH_SOLUTION_ONLY["solution"])
    [c] = tasks.read_problems(write(tmp_path / "answers.jsonl", [{"problem": "1+1?", "answer": "2"}]))
    assert c.solution is None  # fine for RL and evaluation; the warm-up refuses it (below)


@pytest.mark.parametrize("lines, message", [
    ([GSM8K, GSM8K, '{"question": "x", "answer": '], "bad.jsonl:3: not valid JSON"),
    ([GSM8K, "[1, 2]"], "bad.jsonl:2: expected a JSON object, got list"),
    ([{"prompt": "hi", "response": "5"}], "bad.jsonl:1: expected GSM8K fields (question, answer) or MATH fields"),
    ([GSM8K, {"question": "What?", "answer": "no final line"}], "bad.jsonl:2: a GSM8K 'answer' must end in '#### "),
    ([{"question": 7, "answer": "#### 7"}], "bad.jsonl:1: field 'question' must be a non-empty string"),
    ([{"problem": "Find x.", "solution": "It is 3."}], "bad.jsonl:1: a MATH record needs 'answer' or a 'solution'"),
    (["", "  "], "bad.jsonl: no records"),
])
def test_bad_records_stop_with_file_line_and_reason(tmp_path, lines, message):
    with pytest.raises(SystemExit) as stop:
        tasks.read_problems(write(tmp_path / "bad.jsonl", lines))
    assert message in str(stop.value)
    assert "\n" not in str(stop.value)


def test_unreadable_file_is_named(tmp_path):
    with pytest.raises(SystemExit, match=r"missing\.jsonl: cannot read it \(No such file or directory\)"):
        tasks.read_problems(tmp_path / "missing.jsonl")
    (tmp_path / "binary.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(SystemExit, match=r"binary\.jsonl: cannot read it"):
        tasks.read_problems(tmp_path / "binary.jsonl")


def test_held_out_split_eval_data_and_eval_limit(tmp_path):
    records = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(20)]
    data = write(tmp_path / "train.jsonl", records)
    train, test = M.load_task(M.parse_args(["--data", str(data), "--n-test", "5"]))
    assert (len(train), len(test)) == (15, 5)
    assert not {p.question for p in train} & {p.question for p in test}
    assert [p.question for p in M.load_task(M.parse_args(["--data", str(data), "--n-test", "5"]))[1]] == \
        [p.question for p in test]  # the split is fixed
    held_out = write(tmp_path / "test.jsonl", records[:3])
    train, test = M.load_task(M.parse_args(["--data", str(data), "--eval-data", str(held_out), "--n-train", "12"]))
    assert (len(train), [p.answer for p in test]) == (12, ["0", "1", "2"])
    _, test = M.load_task(M.parse_args(["--data", str(data), "--eval-only", "--eval-limit", "4"]))
    assert [p.question for p in test] == ["q0", "q1", "q2", "q3"]  # --eval-only: the file itself, in order


def test_a_bad_file_stops_the_run_before_training(tmp_path, capsys):
    bad = write(tmp_path / "bad.jsonl", [GSM8K, "not json"])
    with pytest.raises(SystemExit, match="bad.jsonl:2: not valid JSON"):
        M.main(["--data", str(bad), "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache")])
    assert not (tmp_path / "cache").exists()  # nothing was built or trained


def test_warm_up_needs_solutions(tmp_path):
    data = write(tmp_path / "answers.jsonl", [{"problem": "1+1?", "answer": "2"}] * 3)
    cfg = M.parse_args(["--data", str(data), "--n-test", "1", "--sft-steps", "5", "--cache-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="answers.jsonl: no training question has a solution to warm up on"):
        M.warm_up(cfg, M.load_task(cfg)[0])


def test_a_byte_order_mark_is_read_past(tmp_path):
    # some editors (Notepad, Excel's "UTF-8" export) start a UTF-8 file with a byte-order mark
    path = tmp_path / "bom.jsonl"
    path.write_text(json.dumps(GSM8K) + "\n", encoding="utf-8-sig")
    [p] = tasks.read_problems(path)
    assert (p.question, p.answer) == (GSM8K["question"], "10")


def test_n_chains_keeps_the_first_chains_and_the_held_out_set_stays(tmp_path):
    train, test = M.load_task(M.parse_args(["--n-train", "50", "--n-chains", "20", "--n-test", "10"]))
    assert [p.solution is not None for p in train] == [True] * 20 + [False] * 30
    assert all(p.answer for p in train)  # every question keeps its answer: RL needs nothing else
    more_train, same_test = M.load_task(M.parse_args(["--n-train", "80", "--n-test", "10"]))
    assert [p.question for p in same_test] == [p.question for p in test]  # --n-train does not move the held-out set
    assert not {p.question for p in more_train} & {p.question for p in test}
