"""The tasks: the built-in arithmetic problems (the default) and GSM8K / MATH records read from JSONL files.

Each becomes a Problem: the question the model is asked, a reference chain of thought (what the SFT warm-up and
the sft baseline train on) and the final answer the grader compares with.
"""
import json
import random
import re
from dataclasses import dataclass, replace
from fractions import Fraction

from algorithms.grader import extract_answer

# ----------------------------------------------------------------------------------------------------
# The default task: arithmetic expressions solved one operation at a time


@dataclass
class Problem:
    question: str  # what the model is asked, e.g. "7-3*4"
    solution: str  # reference chain of thought, ending in \boxed{answer}; None where the data has none
    answer: str    # the final answer alone, e.g. "-5" or "7/2"


def _fmt(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def _solve(numbers, ops):
    """Evaluate numbers[0] ops[0] numbers[1] ... with * and / before + and -, left to right, one
    operation per step. Returns (steps like "3*4=12", value)."""
    values, ops, steps = [Fraction(n) for n in numbers], list(ops), []
    for level in ("*/", "+-"):
        i = 0
        while i < len(ops):
            if ops[i] not in level:
                i += 1
                continue
            a, b, op = values[i], values[i + 1], ops[i]
            if op == "/" and b == 0:
                return None, None
            value = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}[op]
            steps.append(f"{_fmt(a)}{op}{_fmt(b)}={_fmt(value)}")
            values[i:i + 2], ops[i:i + 1] = [value], []
    return steps, values[0]


def make_arith_problems(n, seed, min_ops=2, max_ops=3, max_number=9):
    """n distinct problems like "7-3*4+2" with 2-3 operations on 1..9; answers may be negative, or a
    fraction when the last step divides. Intermediate values stay small integers so every step is a fact
    a small model can learn."""
    rng, seen, problems = random.Random(seed), set(), []
    while len(problems) < n:
        k = rng.randint(min_ops, max_ops)
        numbers = [rng.randint(1, max_number) for _ in range(k + 1)]
        ops = [rng.choice("+-*/") for _ in range(k)]
        question = "".join(f"{a}{op}" for a, op in zip(numbers, ops)) + str(numbers[-1])
        steps, value = _solve(numbers, ops)
        if question in seen or steps is None or any("/" in s.split("=")[1] for s in steps[:-1]) \
                or any(abs(int(Fraction(s.split("=")[1]))) > 99 for s in steps):
            continue
        seen.add(question)
        problems.append(Problem(question, ", ".join(steps) + f". \\boxed{{{_fmt(value)}}}", _fmt(value)))
    return problems


# ----------------------------------------------------------------------------------------------------
# Real data: GSM8K and MATH records from JSONL files

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."  # 2504.11343's prompt
# Bounds on a data file, checked before anything is loaded, so that a damaged or hostile file is refused with its line
# number instead of filling the memory. The longest records of GSM8K and MATH are under 5,000 characters.
MAX_LINE_CHARS = 100_000   # one JSONL line: one record
MAX_FIELD_CHARS = 20_000   # a question, a reference solution or an answer


def problem_from_record(record, where):
    """A GSM8K record (question; answer = worked solution ending in "#### n") or a MATH record (problem; answer,
    or a solution whose last \\boxed{} is the answer), told apart by their fields."""
    def field(key, required=True):
        value = record.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value.strip():
            raise SystemExit(f"{where}: field '{key}' must be a non-empty string")
        if len(value) > MAX_FIELD_CHARS:
            raise SystemExit(f"{where}: field '{key}' has {len(value):,} characters, more than the "
                             f"{MAX_FIELD_CHARS:,} allowed (tasks.MAX_FIELD_CHARS)")
        return value
    if "question" in record:
        chain, hashes, answer = field("answer").rpartition("####")
        if not hashes or not answer.strip():
            raise SystemExit(f"{where}: a GSM8K 'answer' must end in '#### <final answer>'")
        chain = re.sub(r"<<[^>]*>>", "", chain).strip()  # <<48/2=24>> are calculator calls, not reasoning
        return Problem(field("question"), f"{chain}\nThe answer is \\boxed{{{answer.strip()}}}.", answer.strip())
    if "problem" in record:
        solution = field("solution", required=False)
        boxed = solution and ("\\boxed" in solution or "\\fbox" in solution)
        answer = field("answer", required=False) or (extract_answer(solution) if boxed else None)
        if not answer:
            raise SystemExit(f"{where}: a MATH record needs 'answer' or a 'solution' with a \\boxed{{}} answer")
        return Problem(field("problem"), solution, answer)
    raise SystemExit(f"{where}: expected GSM8K fields (question, answer) or MATH fields (problem, answer/solution); "
                     f"found {sorted(record)}")


def read_lines(path):
    """The lines of a UTF-8 text file (a byte-order mark, as some editors write, is skipped). A line is read at most
    MAX_LINE_CHARS + 1 characters at a time, so that a longer one is refused without reading it whole."""
    lines = []
    try:
        with open(path, encoding="utf-8-sig") as file:
            while line := file.readline(MAX_LINE_CHARS + 1):
                lines.append(line.rstrip("\n"))
                if len(lines[-1]) > MAX_LINE_CHARS:
                    raise SystemExit(f"{path}:{len(lines)}: longer than the {MAX_LINE_CHARS:,} characters a line "
                                     "may have (tasks.MAX_LINE_CHARS)")
    except (OSError, UnicodeDecodeError) as e:
        raise SystemExit(f"{path}: cannot read it ({e.strerror if isinstance(e, OSError) else e})")
    return lines


def read_problems(path):
    """Every record of a JSONL file as a Problem. Bad input stops the run with the file, line and reason."""
    problems = []
    for number, line in enumerate(read_lines(path), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise SystemExit(f"{path}:{number}: not valid JSON ({e.msg}, column {e.colno})")
        except RecursionError:  # json parses nested arrays and objects by recursion
            raise SystemExit(f"{path}:{number}: not valid JSON for a record (nested too deeply)")
        if not isinstance(record, dict):
            raise SystemExit(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        problems.append(problem_from_record(record, f"{path}:{number}"))
    if not problems:
        raise SystemExit(f"{path}: no records")
    return problems


def load_task(cfg):
    """(train, held-out) problems. `arith` is the built-in task, split by its own fixed seed so every run and
    every --seed sees the same questions; a JSONL file is split the same way (n_test held out) unless
    --eval-data gives the held-out set. --eval-only evaluates on the whole of --eval-data or else --data."""
    if cfg.data == "arith":
        n_train = 1000 if cfg.n_train is None else cfg.n_train
        problems = make_arith_problems(cfg.n_test + n_train, seed=1234)
        test, train = problems[:cfg.n_test], problems[cfg.n_test:]  # the held-out set does not depend on --n-train
    else:
        problems = read_problems(cfg.data)
        if cfg.eval_only or cfg.eval_data:
            train, test = problems, problems
        elif len(problems) <= cfg.n_test:
            raise SystemExit(f"{cfg.data}: {len(problems)} records, and --n-test {cfg.n_test} of them are held out, "
                             "leaving none to train on: pass a smaller --n-test, or --eval-data")
        else:
            random.Random(1234).shuffle(problems)
            train, test = problems[cfg.n_test:], problems[:cfg.n_test]
        train = train[:cfg.n_train]
    if cfg.n_chains is not None:  # RLVR's usual data: a few worked solutions, many questions with their answer only
        train = train[:cfg.n_chains] + [replace(p, solution=None) for p in train[cfg.n_chains:]]
    if cfg.eval_data:
        test = read_problems(cfg.eval_data)
    return train, test[:cfg.eval_limit]


def with_chains(problems):
    """The problems that come with a reference chain: all that SFT (the warm-up, the baseline) can train on."""
    return [p for p in problems if p.solution is not None]
