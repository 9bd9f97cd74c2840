"""Classroom exercises: which functions a student writes, the student copy, grading and the end-to-end check.

    python tests/exercises.py list                                      # the exercises, week by week
    python tests/exercises.py student-copy DIR [--only a,b | --week N]  # teacher: a copy with those bodies blank
    python tests/exercises.py check [NAME ...]                          # student: PASS / FAIL / NOT STARTED each
    python tests/exercises.py end-to-end                                # all done: does the reward rise?

An exercise is one or more existing functions of the project: the reference implementation is the repository
itself. In the student copy each chosen function keeps its signature and docstring (the formula, the shapes, the
paper) and its body becomes `raise NotImplementedError("exercise <name>: see README, Teaching")`; every other
byte is the repository's. The tests of an exercise are those in tests/test_exercises.py marked
`@pytest.mark.exercise("<name>")`: numbers worked out by hand, which any correct implementation passes.
tests/test_exercise_mutants.py checks that they catch plausible wrong implementations; it holds those wrong
implementations, so it stays out of the student copy.
"""
import argparse
import ast
import contextlib
import dataclasses
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
TESTS = "tests/test_exercises.py"
NOT_IN_STUDENT_COPY = ("tests/test_exercise_mutants.py",)  # the mutants are near-answers


@dataclasses.dataclass(frozen=True)
class Exercise:
    name: str
    file: str              # where the functions are, relative to the repository root
    functions: tuple       # the top-level functions whose bodies the student writes
    stars: int             # difficulty: 1 a few lines, 2 some care, 3 a loop or a whole stage
    week: int              # a suggested order: later weeks use what earlier ones built
    read_first: str
    observe: str           # what to look at once it passes
    needs: tuple = ()      # other exercises whose functions these tests run too

    @property
    def difficulty(self):
        return "★" * self.stars


EXERCISES = [
    Exercise("masked_mean", "algorithms/common.py", ("masked_sum", "masked_mean"), 1, 1,
             "common.py's notation block; Rollout in minireason.py (what response_mask is)",
             "padding never counts; an empty mask gives 0, not NaN"),
    Exercise("aggregate_loss", "algorithms/common.py", ("aggregate_loss",), 2, 1,
             "masked_mean; update() in minireason.py (micro-batches of a mini-batch)",
             "token-mean weighs long responses more than seq-mean-token-mean does", needs=("masked_mean",)),
    Exercise("group_advantages", "algorithms/grpo.py", ("group_advantages",), 1, 1,
             "grpo.py's docstring; common.group_view",
             "all-right and all-wrong groups get 0; a lone right answer in a group gets a large advantage"),
    Exercise("reinforce_rej_filter", "algorithms/reinforce_rej.py", ("rejected", "keep_rows"), 1, 1,
             "reinforce_rej.py's docstring; common.group_outcomes, common.per_row",
             "--reject-by zero keeps the rejected tokens in the token-mean's denominator, drop removes them"),
    Exercise("raft_rows", "algorithms/raft.py", ("keep_rows", "advantages"), 1, 1,
             "raft.py's docstring; rl_step's step 4 (what keep_rows returns)",
             "RAFT trains on the right answers only, as if they were reference solutions"),
    Exercise("kl_estimate", "algorithms/common.py", ("kl_estimate",), 1, 1,
             "its docstring (k1, k2, k3; Schulman's note on KL approximators)",
             "k1 can be negative, k3 never is; both are unbiased, k3 has lower variance"),
    Exercise("clipped_surrogate", "algorithms/common.py", ("clipped_surrogate",), 2, 1,
             "its docstring; PPO (arXiv 1707.06347) eq. 7",
             "no gradient through a clipped token; at ratio 1 the gradient is -A ∇log π"),
    Exercise("policy_loss", "algorithms/common.py", ("clipped_policy_loss",), 2, 1,
             "clipped_surrogate, kl_estimate, aggregate_loss; grpo.py's docstring",
             "train/clip_fraction in metrics.jsonl is 0 on the first mini-batch of every rollout",
             needs=("masked_mean", "aggregate_loss", "kl_estimate", "clipped_surrogate")),
    Exercise("pass_at_k", "minireason.py", ("pass_at_k",), 1, 1,
             "Chen et al. arXiv 2107.03374, eq. 1; evaluate()",
             "pass@k from n samples is not the share of k-subsets of what you drew that you happened to see"),
    Exercise("head_logprobs", "minireason.py", ("head_logprobs",), 2, 2,
             "token_logprobs (why it calls yours a chunk at a time), common.entropy_from_logits",
             "the temperature divides the logits (bias included) before the softmax"),
    Exercise("next_tokens", "minireason.py", ("next_tokens",), 2, 2,
             "its docstring; Holtzman et al. arXiv 1904.09751 (top-p)",
             "--top-k 1 is greedy; sampled log-probs equal what the update recomputes (clip fraction 0 at first)"),
    Exercise("sample", "minireason.py", ("sample",), 3, 2,
             "pad, position_ids, prefill, next_tokens; the KV cache (PreallocatedLayer)",
             "rows end at different steps; EOS is inside the response mask, padding never",
             needs=("next_tokens",)),
    Exercise("extract_answer", "algorithms/grader.py", ("extract_answer",), 2, 2,
             "grader.py's docstring (step 1, extraction) and the helpers above extract_answer",
             "the reward is only as good as this: a missed answer is a false 0 for the policy"),
    Exercise("ppo_token_rewards", "algorithms/ppo.py", ("token_rewards",), 2, 3,
             "ppo.py's docstring; kl_estimate", "the outcome reward sits on the last token, the KL on all",
             needs=("kl_estimate",)),
    Exercise("gae", "algorithms/ppo.py", ("gae",), 3, 3,
             "ppo.py's docstring; Schulman et al. arXiv 1506.02438 eq. 16",
             "λ = 1 gives the Monte-Carlo return minus V; λ = 0 the one-step TD error"),
    Exercise("clipped_value_loss", "algorithms/ppo.py", ("clipped_value_loss",), 1, 3,
             "ppo.py's docstring", "train/value_loss and train/explained_variance of --algo ppo"),
    Exercise("dpo_loss", "algorithms/dpo.py", ("loss",), 2, 3,
             "dpo.py's docstring; Rafailov et al. arXiv 2305.18290 eq. 7; dpo.pairs",
             "train/preference_accuracy climbs above 0.5 as the margin grows", needs=("masked_mean",)),
    Exercise("rl_step", "minireason.py", ("rl_step",), 3, 3,
             "README 'One RL iteration'; algorithms/__init__.py; generate, score, update",
             "python tests/exercises.py end-to-end: the training reward rises",
             needs=("masked_mean", "aggregate_loss", "kl_estimate", "clipped_surrogate", "policy_loss",
                    "group_advantages", "raft_rows", "head_logprobs", "next_tokens", "sample")),
]
BY_NAME = {e.name: e for e in EXERCISES}
STUB = 'raise NotImplementedError("exercise {name}: see README, Teaching")'


# ---------------------------------------------------------------------------------------------------------
# The student copy: the chosen functions' bodies replaced by a stub, located with ast, edited as text


def top_level_functions(source):
    return {node.name: node for node in ast.parse(source).body if isinstance(node, ast.FunctionDef)}


def has_docstring(function):
    first = function.body[0]
    return isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)


def blank_bodies(source, exercise):
    """The source with the bodies of exercise.functions replaced by the stub: lines after the docstring to the
    function's last line go (comments in the body with them, which would give the answer away)."""
    functions = top_level_functions(source)
    lines = source.splitlines(keepends=True)
    for node in sorted((functions[name] for name in exercise.functions), key=lambda n: n.lineno, reverse=True):
        docstring = node.body[0]
        indent = " " * docstring.col_offset
        lines[docstring.end_lineno:node.end_lineno] = [indent + STUB.format(name=exercise.name) + "\n"]
    return "".join(lines)


def is_blank(source, exercise):
    """Whether every function of the exercise is still the stub (the student has not started it)."""
    functions = top_level_functions(source)

    def stub(node):
        body = node.body[1:]
        return (len(body) == 1 and isinstance(body[0], ast.Raise) and isinstance(body[0].exc, ast.Call)
                and getattr(body[0].exc.func, "id", None) == "NotImplementedError")
    return all(stub(functions[name]) for name in exercise.functions)


def chosen(only=None, week=None):
    if only:
        unknown = [name for name in only if name not in BY_NAME]
        if unknown:
            raise SystemExit(f"--only: no exercise {', '.join(unknown)} (python tests/exercises.py list)")
        return [BY_NAME[name] for name in only]
    if week is not None:
        picked = [e for e in EXERCISES if e.week == week]
        if not picked:
            raise SystemExit(f"--week {week}: no exercises that week (weeks {sorted({e.week for e in EXERCISES})})")
        return picked
    return EXERCISES


def student_copy(out, exercises):
    """Write the project's git-tracked files to `out`, the exercises' bodies blank and the mutants left out."""
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out}: exists and is not empty; give a new folder")
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, text=True, check=False)
    if listed.returncode != 0:
        raise SystemExit(f"{ROOT}: not a git checkout; the student copy is made from the teacher's repository")
    by_file = {}
    for e in exercises:
        by_file.setdefault(e.file, []).append(e)
    for name in filter(None, listed.stdout.split("\0")):
        if name in NOT_IN_STUDENT_COPY or not (ROOT / name).is_file():
            continue
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
        if name in by_file:
            source = (ROOT / name).read_text()
            for e in by_file[name]:
                source = blank_bodies(source, e)
            target.write_text(source)
    print(f"{out}: student copy with {len(exercises)} exercises blank: {', '.join(e.name for e in exercises)}")
    print(f"students: cd {out} && python tests/exercises.py check")


# ---------------------------------------------------------------------------------------------------------
# Grading: the marked tests of each exercise, run in this process, one line per exercise


class Outcomes:
    """A pytest plugin that runs only the chosen exercises' tests and notes each one's outcome."""

    def __init__(self, names):
        self.names, self.results = set(names), {}

    def pytest_collection_modifyitems(self, config, items):
        keep = [item for item in items if self.exercise_of(item) in self.names]
        config.hook.pytest_deselected(items=[item for item in items if item not in keep])
        items[:] = keep

    @staticmethod
    def exercise_of(item):
        mark = item.get_closest_marker("exercise")
        return mark.args[0] if mark else None

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or report.failed:
            lines = report.longreprtext.splitlines() if report.failed else []
            message = next((line[1:].strip() for line in lines if line.startswith("E ")), lines[-1] if lines else "")
            self.results.setdefault(report.nodeid, (report.passed, message))


def run_tests(names, verbose=False):
    """{exercise: [(test name, passed, last line of the failure)]} for the named exercises."""
    import pytest
    plugin, items = Outcomes(names), {}

    class Collected:
        def pytest_collection_finish(self, session):
            items.update({item.nodeid: Outcomes.exercise_of(item) for item in session.items})
    args = [str(ROOT / TESTS), "-q", "--tb=short", "-p", "no:cacheprovider", "--rootdir", str(ROOT)]
    with contextlib.chdir(ROOT), contextlib.redirect_stdout(sys.stdout if verbose else io.StringIO()):
        pytest.main(args, plugins=[plugin, Collected()])
    by_exercise = {name: [] for name in names}
    for nodeid, exercise in items.items():
        passed, message = plugin.results.get(nodeid, (False, "did not run"))
        by_exercise[exercise].append((nodeid.split("::")[-1], passed, message))
    return by_exercise


def check(names, verbose=False):
    """Print PASS / FAIL / NOT STARTED per exercise; True if all of them pass."""
    exercises = [BY_NAME[name] for name in names]
    results = run_tests(names, verbose)
    if not any(results.values()):
        print(f"{TESTS} could not be collected (a syntax or import error?); see: python -m pytest -q {TESTS}")
        return False
    status = {}
    for e in exercises:
        tests = results[e.name]
        status[e.name] = ("PASS" if tests and all(passed for _, passed, _ in tests) else
                          "NOT STARTED" if is_blank((ROOT / e.file).read_text(), e) else "FAIL")
    width = max(len(e.name) for e in exercises)
    for e in exercises:
        tests = results[e.name]
        passed = sum(p for _, p, _ in tests)
        line = f"{e.name:<{width}}  {e.difficulty:<3}  {status[e.name]:<11}  {passed}/{len(tests)} tests"
        if status[e.name] == "FAIL":
            name, _, message = next(t for t in tests if not t[1])
            line += f"  first failing: {name}: {message}"
            waiting = [n for n in e.needs if n in status and status[n] != "PASS"]
            if waiting:
                line += f"  (its tests also run {', '.join(waiting)}, not passing yet)"
        print(line)
    print(f"{sum(s == 'PASS' for s in status.values())} of {len(exercises)} exercises pass"
          + ("" if verbose else "; details: python tests/exercises.py check NAME -v"))
    return all(s == "PASS" for s in status.values())


# ---------------------------------------------------------------------------------------------------------
# End to end: with every core exercise done, a few GRPO steps must raise the training reward


# From scratch (no warm-up): the untrained tiny model earns this reward now and then, so in a few steps of GRPO the
# whole loop (sampler, log-probs, group advantages, clipped loss, update) has to find it and make it the rule.
# (The arithmetic task needs minutes of warm-up before its reward moves: too long for a laptop check.)
END_TO_END = ["--algo", "grpo", "--sft-steps", "0", "--steps", "15", "--prompts-per-step", "12", "--group-size", "8",
              "--max-new-tokens", "32", "--lr", "1e-3", "--n-test", "16", "--eval-every", "1000", "--no-sft-baseline"]
WINDOW = 4            # steps averaged at each end
MIN_RISE = 0.3        # the last WINDOW steps' mean reward must beat the first WINDOW's by this much


def two_sevens(texts, references, stopped):
    """The end-to-end check's reward, in place of the grader: 1 for a response with at least two 7s in it."""
    return [text.count("7") >= 2 for text in texts]


def end_to_end(seed=0):
    """Train the tiny model from scratch in a temporary folder; the per-step training rewards."""
    import torch
    import transformers

    import minireason
    transformers.utils.logging.disable_progress_bar()  # as minireason's main() does
    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(minireason, "grade_batch", two_sevens):
        cfg = minireason.parse_args(END_TO_END + ["--seed", str(seed), "--cache-dir", f"{tmp}/cache", "--out",
                                                  f"{tmp}/run"])
        torch.set_num_threads(cfg.threads)
        with contextlib.redirect_stdout(io.StringIO()):  # its accuracy table would be of the two-sevens reward
            minireason.train(cfg)
        metrics = [json.loads(line) for line in Path(f"{tmp}/run/metrics.jsonl").read_text().splitlines()]
    return [m["train/reward"] for m in metrics if "train/reward" in m]


def rise(rewards):
    return sum(rewards[-WINDOW:]) / WINDOW - sum(rewards[:WINDOW]) / WINDOW


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the exercises, week by week")
    copy = sub.add_parser("student-copy", help="write a copy of the project with the exercises' bodies blank")
    copy.add_argument("dir", type=Path)
    which = copy.add_mutually_exclusive_group()
    which.add_argument("--only", type=lambda s: [n.strip() for n in s.split(",") if n.strip()],
                       help="comma-separated exercise names")
    which.add_argument("--week", type=int, help="the exercises of one week")
    grade = sub.add_parser("check", help="run the exercises' tests: PASS / FAIL / NOT STARTED each")
    grade.add_argument("names", nargs="*", help="exercise names (default: all)")
    grade.add_argument("-v", "--verbose", action="store_true", help="show pytest's report, tracebacks included")
    e2e = sub.add_parser("end-to-end", help="15 GRPO steps from scratch: does the training reward rise?")
    e2e.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.command == "list":
        for e in sorted(EXERCISES, key=lambda e: e.week):
            print(f"week {e.week}  {e.name:<20} {e.difficulty:<3} {e.file}: {', '.join(e.functions)}\n"
                  f"        read first: {e.read_first}; then observe: {e.observe}")
    elif args.command == "student-copy":
        student_copy(args.dir.resolve(), chosen(args.only, args.week))
    elif args.command == "check":
        unknown = [n for n in args.names if n not in BY_NAME]
        if unknown:
            raise SystemExit(f"check: no exercise {', '.join(unknown)} (python tests/exercises.py list)")
        return 0 if check(args.names or [e.name for e in EXERCISES], args.verbose) else 1
    else:
        start = time.time()
        rewards = end_to_end(args.seed)
        gain = rise(rewards)
        print(f"training reward per step: {' '.join(f'{r:.2f}' for r in rewards)}")
        print(f"last {WINDOW} steps minus first {WINDOW}: {gain:+.3f} (needs > {MIN_RISE}); "
              f"{time.time() - start:.0f} s")
        print("PASS: the reward rises under your code" if gain > MIN_RISE else "FAIL: the reward does not rise")
        return 0 if gain > MIN_RISE else 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
