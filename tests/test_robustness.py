"""What a user can do wrong, or what can happen to a run, as real processes: bad flags, bad data files, run folders
that cannot be written or hold a run already, damaged checkpoints, Ctrl-C, concurrent runs and kill -9. Each ends in
one line naming the flag, file or line (a non-zero status, no traceback), or carries on correctly."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# a default run made small: the default model and algorithm, few questions, a short warm-up, short answers
SMALL = ["--n-train", "32", "--n-test", "8", "--sft-steps", "20", "--sft-batch", "8", "--prompts-per-step", "4",
         "--group-size", "4", "--max-new-tokens", "16", "--eval-every", "100", "--no-sft-baseline"]
GSM8K = {"question": "Ann has 3 bags of 4 apples. How many apples?", "answer": "3*4=12\n#### 12"}


def command(*args):
    return [sys.executable, str(ROOT / "minireason.py"), *map(str, args)]


def environment(cache):
    return dict(os.environ, MINIREASON_CACHE=str(cache), HF_HUB_OFFLINE="1")


def minireason(*args, cache, timeout=300):
    return subprocess.run(command(*args), capture_output=True, text=True, env=environment(cache), timeout=timeout)


def one_line_error(result, status, message):
    """The process ended with `status` and its last line of stderr starts with `message`, with no traceback."""
    assert result.returncode == status, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert message in last, last


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


@pytest.mark.parametrize("records, message", [
    ([GSM8K] * 5, "data.jsonl: 5 records, and --n-test 500 of them are held out, leaving none to train on"),
    ([GSM8K, "[" * 100_000], "data.jsonl:2: not valid JSON for a record (nested too deeply)"),
    ([GSM8K, GSM8K, {"question": "x" * 10_000_000, "answer": "#### 1"}],
     "data.jsonl:3: longer than the 100,000 characters a line may have"),
    ([{"question": "x" * 30_000, "answer": "#### 1"}], "data.jsonl:1: field 'question' has 30,000 characters"),
    ([GSM8K, {"question": "What?", "answer": "y" * 30_000 + "#### 1"}], "data.jsonl:2: field 'answer' has 30,006"),
])
def test_a_bad_data_file_is_one_line_with_its_line_number(tmp_path, records, message):
    data = write_jsonl(tmp_path / "data.jsonl", records)
    result = minireason("--data", data, "--out", tmp_path / "run", cache=tmp_path / "cache", timeout=60)
    one_line_error(result, 1, message)
    assert not (tmp_path / "cache").exists()  # refused before any model was built
