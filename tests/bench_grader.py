"""Benchmark the grader on real references (not a pytest test; run from the repo root):

    python tests/bench_grader.py --data-dir data     # data/math500/test.jsonl, data/gsm8k/test.jsonl (README)

* MATH-500: each full `solution` must grade equal to its `answer` field; so must a few rewrites of the
  answer that mean the same (\\dfrac, a/b, a decimal, no \\left/\\right, spaces, "x = ...").
* GSM8K: each solution must grade equal to its own "#### n" number, also when said as "The answer is n."
* Negative controls: each answer against the NEXT problem's (different) answer must be False.
* Hostile inputs: every one gets a verdict (never an exception) within the time limit plus slack.
* Timing of every grade() call: median, p99, max and the slowest case. If math_verify is installed, it
  grades the same MATH-500 pairs and we print where the two disagree.
* Hand-checked cases (tests/grader_cases.py: real-style responses in every shape of issue 18, and negative
  controls): our grader and Math-Verify side by side, agreement with the hand verdicts per kind and in all,
  the false positives of each, and the time per case. Math-Verify is not a dependency: `pip install
  math-verify` for this comparison; without it only our column is printed.

The last line printed is one JSON object with the figures.
"""
import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere
sys.path.insert(0, str(Path(__file__).resolve().parent))
from algorithms.grader import TIMEOUT, grade, normalize_answer  # noqa: E402
from grader_cases import CASES  # noqa: E402

HOSTILE = [
    "__import__('os').system('echo hi')", "().__class__.__bases__[0].__subclasses__()", "lambda: 1",
    "open('/etc/passwd')", 'exec("import os")', "9**9**9**9", "10^{10^{10}}", "2^{2^{2^{2^{2}}}}",
    "{" * 5000 + "1" + "}" * 5000, "9" * 400, "(x+y+z)^{10000}", "\\sqrt{" * 100 + "2" + "}" * 100,
    "(" * 500 + "1" + ")" * 500, "\\frac{1}{0}", "0^{-1}", "\\boxed{" * 300, "1" * 5000,
    "(" * 160 + "1" + ",1)" * 160,
    "the answer is 1" + " " * 40000 + "x", "\\(" * 20000,  # a quadratic regex would take many seconds on these
]
SLACK = 5.0  # seconds on top of TIMEOUT: starting a fresh worker after one was killed
TIMINGS = []  # (seconds, response, reference) of every grade() call


def timed_grade(response, reference):
    start = time.perf_counter()
    verdict = grade(response, reference)
    TIMINGS.append((time.perf_counter() - start, response, reference))
    return verdict


def load_jsonl(path):
    if not path.exists():
        sys.exit(f"missing {path}: pass --data-dir, the folder that holds math500/ and gsm8k/")
    return [json.loads(line) for line in path.open()]


def report(name, failures, total):
    """Print and return the agreement, with every disagreement."""
    agreement = (total - len(failures)) / max(total, 1)
    print(f"{name}: {total - len(failures)}/{total} agree ({100 * agreement:.1f}%)")
    for failure in failures:
        print("   ", failure)
    return agreement


def rewrites(answer):
    """Spellings of a MATH answer that mean the same, the way a model might write them."""
    simple_fraction = r"\\frac\{(-?\d+)\}\{(\d+)\}"
    out = {answer.replace("\\frac", "\\dfrac"), answer.replace("\\left", "").replace("\\right", ""),
           re.sub(r"([,+=-])", r" \1 ", answer)}
    if not re.search(r"\d\s*\\frac", answer):  # 1\frac{4}{5} is a mixed number: 14/5 is not a rewrite
        out.add(re.sub(simple_fraction, r"\1/\2", answer))
    if m := re.fullmatch(simple_fraction, answer):  # a terminating decimal for 1/4, 3/8, 17/50, ...
        numerator, denominator = int(m[1]), int(m[2])
        while denominator % 2 == 0 or denominator % 5 == 0:
            denominator //= 2 if denominator % 2 == 0 else 5
        if denominator == 1:
            out.add(str(numerator / int(m[2])))
    if "," not in answer and "=" not in answer:
        out.add("x = " + answer)
    return sorted(out - {answer})


def check_math500(math500):
    """Agreements of solutions and of rewrites with the answers, and the (response, answer) pairs graded."""
    failures = [(row["answer"], row["solution"][-80:]) for row in math500
                if not timed_grade(row["solution"], row["answer"])]
    solution_agreement = report("MATH-500 solution vs answer", failures, len(math500))
    pairs = [(f"So the answer is $\\boxed{{{variant}}}$.", row["answer"])
             for row in math500 for variant in rewrites(row["answer"])]
    failures = [pair for pair in pairs if not timed_grade(*pair)]
    rewrite_agreement = report("MATH-500 equivalent rewrites vs answer", failures, len(pairs))
    return solution_agreement, rewrite_agreement, [(row["solution"], row["answer"]) for row in math500] + pairs


def check_gsm8k(gsm8k):
    failures = []
    for row in gsm8k:
        number = row["answer"].split("####")[-1].strip()
        if not (timed_grade(row["answer"], number) and timed_grade(f"The answer is {number}.", row["answer"])):
            failures.append(number)
    return report("GSM8K solution vs its #### number", failures, len(gsm8k))


def negative_controls(answer_lists):
    """Each answer against the next problem's answer, when the two differ: (false positives, controls)."""
    false_positives, controls = [], 0
    for answers in answer_lists:
        for this, following in zip(answers, answers[1:]):
            if normalize_answer(this) != normalize_answer(following):
                controls += 1
                if timed_grade(f"\\boxed{{{this}}}", following):
                    false_positives.append((this, following))
    print(f"negative controls (answer vs next problem's answer): {len(false_positives)}/{controls} graded equal")
    for pair in false_positives:
        print("   ", pair)
    return false_positives, controls


def check_hostile():
    """Whether every hostile input got a bool, without an exception, within TIMEOUT + SLACK."""
    all_ok = True
    for text in HOSTILE:
        for response, reference in [(text, text), (f"\\boxed{{{text}}}", text), (f"\\boxed{{{text}}}", "1")]:
            start = time.perf_counter()
            try:
                verdict = timed_grade(response, reference)
                ok = isinstance(verdict, bool) and time.perf_counter() - start < TIMEOUT + SLACK
            except Exception as error:  # the grader must never raise
                verdict, ok = repr(error), False
            if not ok:
                print(f"    hostile FAILED: {response[:50]!r} vs {reference[:20]!r}: {verdict}")
            all_ok &= ok
    print(f"hostile inputs: {'all answered in time' if all_ok else 'FAILURES above'} ({3 * len(HOSTILE)} cases)")
    return all_ok


def math_verify_grader():
    """Math-Verify called plainly, as its README shows: verify(parse("$reference$"), parse(response)) (its
    LaTeX parser needs the dollars); None if it is not installed."""
    try:
        from math_verify import parse, verify
    except ImportError:
        return None
    return lambda response, reference: bool(verify(parse(f"${reference}$"), parse(response)))


def compare_with_math_verify(pairs):
    math_verify = math_verify_grader()
    if math_verify is None:
        print("math_verify not installed: skipping the comparison on MATH-500")
        return
    disagreements = []
    for response, answer in pairs:
        ours, theirs = grade(response, answer), math_verify(response, answer)
        if ours != theirs:
            disagreements.append((answer, response[-60:], f"ours={ours}", f"math_verify={theirs}"))
    print(f"math_verify disagrees on {len(disagreements)}/{len(pairs)} MATH-500 pairs:")
    for disagreement in disagreements:
        print("   ", disagreement)


def side_by_side(cases):
    """Our grader and Math-Verify on the hand-checked cases: agreement per kind and in all, false positives,
    time per case, and every case we get wrong. Returns each grader's agreement and false positives."""
    graders = {"ours": grade}
    if theirs := math_verify_grader():
        graders["math_verify"] = theirs
    else:
        print("math_verify not installed (pip install math-verify): only our grader on the hand-checked cases")
    verdicts, seconds = {}, {}
    for name, grader in graders.items():
        verdicts[name], seconds[name] = [], []
        for case in cases:
            start = time.perf_counter()
            verdicts[name].append(grader(case.response, case.reference))
            seconds[name].append(time.perf_counter() - start)
    kinds = list(dict.fromkeys(case.kind for case in cases))
    print(f"\nhand-checked cases ({len(cases)}, {sum(not case.verdict for case in cases)} with verdict False): "
          "agreement with the hand verdicts")
    print(f"    {'kind':14s} {'cases':>5s}" + "".join(f" {name:>12s}" for name in graders))
    for kind in kinds + ["all"]:
        chosen = [i for i, case in enumerate(cases) if kind in ("all", case.kind)]
        agree = {name: sum(verdicts[name][i] == cases[i].verdict for i in chosen) for name in graders}
        print(f"    {kind:14s} {len(chosen):5d}" + "".join(f" {agree[name]:5d} {100 * agree[name] / len(chosen):5.1f}%"
                                                    for name in graders))
    figures = {}
    for name in graders:
        wrong = [(case, verdict) for case, verdict in zip(cases, verdicts[name]) if verdict != case.verdict]
        false_positives = sum(verdict for _, verdict in wrong)
        agreement = 1 - len(wrong) / len(cases)
        print(f"{name}: agreement {100 * agreement:.1f}%, false positives {false_positives}/{len(cases)}, "
              f"false negatives {len(wrong) - false_positives}; per case median "
              f"{1e3 * statistics.median(seconds[name]):.3f} ms, mean {1e3 * statistics.mean(seconds[name]):.2f} ms, "
              f"max {1e3 * max(seconds[name]):.0f} ms")
        for case, verdict in wrong:
            if verdict or name == "ours":  # the other grader's false negatives are in the table's counts
                print(f"    {'FALSE POSITIVE' if verdict else 'false negative'} [{case.kind}] "
                      f"{case.reference!r} <- {case.response[-70:]!r}")
        figures[name] = {"agreement": round(agreement, 4), "false_positives": false_positives}
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True,
                        help="the folder that holds math500/test.jsonl and gsm8k/test.jsonl (see the README)")
    args = parser.parse_args()
    math500 = load_jsonl(args.data_dir / "math500" / "test.jsonl")
    gsm8k = load_jsonl(args.data_dir / "gsm8k" / "test.jsonl")

    start = time.perf_counter()
    grade("\\boxed{\\sqrt{2}}", "2")  # starts a worker, so that its start-up is not in the timings
    print(f"worker start-up: {time.perf_counter() - start:.2f} s")

    math500_agreement, rewrite_agreement, math500_pairs = check_math500(math500)
    gsm8k_agreement = check_gsm8k(gsm8k)
    false_positives, controls = negative_controls([[row["answer"] for row in math500],
                                                   [row["answer"].split("####")[-1] for row in gsm8k]])
    hostile_ok = check_hostile()
    compare_with_math_verify(math500_pairs)
    cases = side_by_side(CASES)

    seconds = sorted(t for t, _, _ in TIMINGS)
    slowest = max(TIMINGS)
    figures = {"math500_agreement": round(math500_agreement, 4), "math500_rewrites": round(rewrite_agreement, 4),
               "gsm8k_agreement": round(gsm8k_agreement, 4), "false_positives": len(false_positives),
               "negative_controls": controls, "hostile_ok": hostile_ok, "grade_calls": len(seconds),
               "timeouts": sum(t >= TIMEOUT for t in seconds),
               "median_ms": round(1e3 * statistics.median(seconds), 3),
               "p99_ms": round(1e3 * seconds[int(0.99 * len(seconds))], 1), "max_ms": round(1e3 * slowest[0]),
               "cases": cases}
    print(f"per answer: median {figures['median_ms']} ms, p99 {figures['p99_ms']} ms, max {figures['max_ms']} ms "
          f"over {len(seconds)} grade() calls, {figures['timeouts']} of them timed out")
    print(f"slowest: {slowest[1][:60]!r} vs {slowest[2][:60]!r}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
