"""The reward: is the final answer in a response equal to the reference answer?

In RL with verifiable rewards the grader is the policy's only teacher, so it has to be right both ways and
it must never stall training:

* a false negative (a right answer marked wrong, "0.5" vs "\\frac{1}{2}") starves the policy of signal;
* a false positive (a wrong answer marked right) teaches the policy to game the grader;
* a hang or a crash on one strange sample kills the whole run.

The pipeline runs cheapest first:

1. extract_answer    the last \\boxed{...}, else GSM8K's "#### x", else "the answer is x", else a bare short
                     answer (a reference like "3/4"), else the last number in the text.
2. normalize_answer  drop LaTeX that does not change the value: \\left, \\dfrac, spacing, $, %, degrees,
                     units, thousands separators, a leading "x =".
3. _quick_verdict    equal strings, or equal numbers: integers and fractions exactly (two 400-digit numbers
                     that differ in the last digit differ), a written decimal to a relative REL_TOL = 1e-4
                     (a rounded 0.3333 is 1/3, 0.33 is not). This settles most answers in microseconds.
4. _deep_equal       tuples, intervals, sets and matrices element by element, everything else with sympy
                     after our own LaTeX -> sympy translation. sympy is slow and can blow up, so grade() and
                     grade_batch() run this step in worker processes, started on first need, that are
                     killed and replaced when they overrun the time limit (TIMEOUT); a timeout counts as
                     wrong. Killing a process works from any thread, unlike signal.alarm.

Safety: answers are written by the model, so they are never executed. Only a string made of whitelisted
characters and names reaches sympy's parser, which gets no builtins, and numeric powers beyond
10^±MAX_DIGITS (10^{10^{10}}) are refused before sympy tries to compute them exactly.
"""
import atexit
import json
import os
import queue
import re
import select
import signal
import string
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

TIMEOUT = 2.0                   # seconds per answer that needs sympy; a timeout counts as wrong
REL_TOL = Fraction(1, 10**4)    # decimals: 0.3333 counts as 1/3, 0.33 does not (as Qwen2.5-Math's grader)
MAX_CHARS = 1000                # longer answers are compared as plain strings only
MAX_DEPTH = 50                  # deeper brace nesting is not an answer, it is an attack on the recursion
MAX_DIGITS = 10_000             # numeric powers beyond 10^±MAX_DIGITS are refused, not computed
POOL_SIZE = min(4, os.cpu_count() or 1)

# ---------------------------------------------------------------------------------------------------------
# 1. Extraction


def _group_end(text, start):
    """Index of the '}' that closes the '{' at text[start], or None if it never closes."""
    depth, i = 0, start
    while i < len(text):
        if text[i] == "\\":
            i += 2  # \{ and \} are literal braces (a set), not grouping
            continue
        depth += (text[i] == "{") - (text[i] == "}")
        if depth == 0:
            return i
        i += 1
    return None


def _last_box(text):
    """Contents of the last \\boxed{...} or \\fbox{...}; '' if it is empty or unclosed; None if no box."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    rest = text[start:].removeprefix("\\boxed").removeprefix("\\fbox")
    if rest.lstrip().startswith("{"):
        brace = len(rest) - len(rest.lstrip())
        end = _group_end(rest, brace)
        return "" if end is None else rest[brace + 1:end]
    unbraced = re.match(r"\s+([^\s$]+)", rest)  # "\boxed 5"
    return unbraced.group(1) if unbraced else ""


# GSM8K's "#### 18", but not a markdown heading "#### Step 2"
_HASHES = re.compile(r"####\s*([^\s#A-Za-z][^\n]*)")
# "The final answer is $\frac{1}{2}$." -> "$\frac{1}{2}$": up to the end of the line or sentence
_ANSWER_IS = re.compile(r"answer is:?\s*(.+?)\s*(?:\.\s|\.?$)", re.IGNORECASE | re.MULTILINE)
# 12, -3, 1,234, 0.5, .5, 3/4; not the 5 in x5 or the .5 in 3.5
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|(?<![\w.])-?\.\d+")


def _is_bare_answer(text):
    """A short answer on its own ('3/4', '\\frac{1}{2}', '(1, 2)', '\\text{Evelyn}', 'y = 2x'), not a sentence
    and not a chain of steps ('2+1=3, 3+2=5')."""
    if len(text) > 100 or "\n" in text or text.count("=") > 1 or not re.search(r"[A-Za-z0-9]", text):
        return False
    words = re.findall(r"[A-Za-z]{2,}", re.sub(r"\\[A-Za-z]+(\{[A-Za-z ]*\})?", " ", text))
    return not words or words == [text]


def extract_answer(text: str) -> str | None:
    """The final answer in a model response or a reference solution, as a string; None if there is none."""
    box = _last_box(text)
    if box is not None:
        return box.strip() or None
    hashes = _HASHES.findall(text)
    if hashes:
        return hashes[-1].strip()
    said = _ANSWER_IS.findall(text)
    if said:
        return said[-1].strip("*$") or None  # "the answer is $x$", markdown bold "**18**"
    text = text.strip()
    if _is_bare_answer(text):
        return text
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def has_answer(response: str) -> bool:
    """Whether any answer can be extracted (ReFT's partial reward: 1 right, 0.1 wrong answer, 0 none)."""
    return extract_answer(response) is not None


# ---------------------------------------------------------------------------------------------------------
# 2. Normalisation

_REWRITES = [  # (pattern, replacement): LaTeX habits that do not change the value, applied in this order
    (r"\\(?:left|right)(?![A-Za-z])", ""),          # \left( 3, 4 \right)
    (r"\\[dt]frac", r"\\frac"),                      # \dfrac, \tfrac
    (r"\\!\s*", ""),                                 # 10,\!080: the thin space glues a thousands comma
    (r"(?<!\\)\\[,;: ]|\\q?quad|\\displaystyle|~", ""),  # spacing (but not the matrix row break \\)
    (r"\^\s*\{?\\circ\}?|°|\\degree", ""),           # 90^\circ
    (r"\\?%", ""),                                   # 50\%
    (r"\\?\$|\\[()\[\]]", ""),                       # \$18.90, $x$, \(x\), \[x\]
    (r"bmatrix", "pmatrix"),                         # one matrix spelling
    (r"_\{(\w+)\}", r"_\1"),                         # 4210_{5} -> 4210_5
]
_REWRITES = [(re.compile(pattern), replacement) for pattern, replacement in _REWRITES]
_TEXT = re.compile(r"\\(?:text|textbf|textrm|mbox|mathrm)\{([^{}]*)\}(\^\{?\d\}?)?")
_UNIT_WORDS = re.compile(r"(?<=[\d}])\s+[A-Za-z]{2,}(?:\s+[A-Za-z]{2,})*$")  # 18 dollars, 3 square units


def _unwrap_text(match):
    """\\text{(C)} is the answer (C); \\text{ cm}^2 ending an answer right after a value (15\\text{ cm},
    \\frac{1}{2}\\text{ inch}) is a unit and goes; 2\\text{ and }3 keeps its words."""
    before, after = match.string[:match.start()], match.string[match.end():]
    is_unit = (re.search(r"[\d}]\s*$", before) and not after.strip()
               and re.fullmatch(r"[A-Za-z ]*", match.group(1)))
    return "" if is_unit else match.group(1) + (match.group(2) or "")


def normalize_answer(answer: str) -> str:
    """A canonical spelling of an answer, so that equal answers are mostly equal strings."""
    s = answer.strip()
    if len(s) > MAX_CHARS:
        return s
    for pattern, replacement in _REWRITES:
        s = pattern.sub(replacement, s)
    s = _TEXT.sub(_unwrap_text, s).strip()
    s = _UNIT_WORDS.sub("", s)
    # Spaces carry no meaning in math, except between letters: "\cot x" is not "\cotx".
    s = re.sub(r"(?<![A-Za-z]) | (?![A-Za-z])", "", re.sub(r"\s+", " ", s)).rstrip(".")
    s = re.sub(r"^[A-Za-z](?:_\w)?(?:=|\\in(?![A-Za-z]))", "", s)   # x=5, x\in[-2,7]
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):          # 1,234 but not the tuple (1,234)
        s = s.replace(",", "")
    choice = re.fullmatch(r"\(([A-Z])\)", s)                        # (C) -> C
    return choice.group(1) if choice else s


# ---------------------------------------------------------------------------------------------------------
# 3. Quick verdicts: strings and plain numbers, exact, in-process

_DECIMAL = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)")
_SLASH_FRACTION = re.compile(r"([-+]?\d+)/(\d+)")
# \frac{3}{4}, \frac34, -\frac{3}{8}, and mixed numbers 1\frac{4}{5} = 9/5
_LATEX_FRACTION = re.compile(r"(-?)(\d*)\\frac(?:\{(-?\d+)\}|(\d))(?:\{(-?\d+)\}|(\d))")


def _as_number(s):
    """'-3', '0.5', '.35625', '3/4', '\\frac{-3}{4}', '1\\frac{4}{5}' as an exact Fraction; else None."""
    try:
        if _DECIMAL.fullmatch(s):
            return Fraction(s)
        if m := _SLASH_FRACTION.fullmatch(s):
            return Fraction(int(m.group(1)), int(m.group(2)))
        if m := _LATEX_FRACTION.fullmatch(s):
            sign, whole, numerator, denominator = m[1], m[2], m[3] or m[4], m[5] or m[6]
            value = int(whole or 0) + Fraction(int(numerator), int(denominator))
            return -value if sign else value
    except (ZeroDivisionError, ValueError):
        pass
    return None


def _numbers_equal(x, y, decimal):
    """Integers and fractions must match exactly; a written decimal may be rounded (REL_TOL)."""
    return abs(x - y) <= REL_TOL * max(abs(x), abs(y)) if decimal else x == y


def _quick_verdict(a, b):
    """True/False when strings or plain numbers settle it; None when it needs _deep_equal."""
    if not a or not b:  # "\boxed{\$}" normalises to nothing: that is no answer
        return False
    if a == b:
        return True
    if max(len(a), len(b)) > MAX_CHARS:  # too long to be an answer: only an exact copy counts
        return False
    x, y = _as_number(a), _as_number(b)
    if x is not None and y is not None:
        return _numbers_equal(x, y, "." in a + b)
    a_word, b_word = a.isalpha() and a.isascii(), b.isalpha() and b.isascii()
    if a_word and b_word:  # words ("Evelyn", "east", "C") compare without case; "xy" is a word too
        return a.lower() == b.lower()
    if (a_word or x is not None) and (b_word or y is not None):
        return False  # a word against a number
    return None


# ---------------------------------------------------------------------------------------------------------
# 4. Deep equality: structures element by element, then sympy


def _split_top_level(s, separator):
    """Split at separators outside any brackets: '(1,2),3' -> ['(1,2)', '3']."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        if depth == 0 and s.startswith(separator, i):
            parts.append(s[start:i])
            start = i = i + len(separator)
            continue
        depth += (s[i] in "([{") - (s[i] in ")]}")
        i += 1
    return parts + [s[start:]]


def _is_wrapped(s):
    """Whether s[0] is a bracket that closes at s[-1]: '(1,2)' yes, '(1)(2)' no."""
    depth = 0
    for i, c in enumerate(s):
        depth += (c in "([{") - (c in ")]}")
        if depth == 0:
            return i == len(s) - 1
    return False


def _expand_plus_minus(items):
    """'1\\pm\\sqrt{5}' stands for two answers, 1+\\sqrt{5} and 1-\\sqrt{5}."""
    out = []
    for item in items:
        if len(re.findall(r"\\pm(?![a-z])", item)) == 1:
            out += [re.sub(r"\\pm(?![a-z])", sign, item) for sign in "+-"]
        else:
            out.append(item)
    return out


def _structure(s):
    """(kind, items) for a matrix, union, set/list, tuple or interval; None for a single expression.
    Kinds must match to be equal; sets, lists and unions are unordered, the others ordered."""
    if m := re.fullmatch(r"\\begin\{pmatrix\}(.*)\\end\{pmatrix\}", s):
        rows = [row.split("&") for row in m.group(1).split("\\\\")]
        return f"matrix{[len(row) for row in rows]}", [cell for row in rows for cell in row]
    if len(parts := _split_top_level(s, "\\cup")) > 1:
        return "union", parts
    if s.startswith("\\{") and s.endswith("\\}"):
        return "set", _expand_plus_minus(_split_top_level(s[2:-2], ","))
    if s[:1] in "([" and s[-1:] in ")]" and _is_wrapped(s) and len(items := _split_top_level(s[1:-1], ",")) > 1:
        return s[0] + s[-1], items  # (1,2) tuple or open interval, [0,1) half-open interval, ...
    items = _split_top_level(s, ",")
    if len(items) > 1 or re.search(r"\\pm(?![a-z])", s):
        return "set", _expand_plus_minus(items)  # "1, -2": all solutions, in any order
    return None


def _match_unordered(xs, ys):
    """Whether each x pairs off with a different, equal y."""
    unused = list(ys)
    for x in xs:
        match = next((y for y in unused if answers_equal(x, y)), None)
        if match is None:
            return False
        unused.remove(match)
    return not unused


def _deep_equal(a, b):
    """Equality of normalised answers that _quick_verdict could not settle. Slow: may run sympy."""
    structure_a, structure_b = _structure(a), _structure(b)
    if structure_a or structure_b:
        if not (structure_a and structure_b) or structure_a[0] != structure_b[0]:
            return False
        (kind, xs), (_, ys) = structure_a, structure_b
        if kind in ("set", "union"):
            return _match_unordered(xs, ys)
        return len(xs) == len(ys) and all(answers_equal(x, y) for x, y in zip(xs, ys))
    return _sympy_equal(a, b)


def answers_equal(a: str, b: str) -> bool:
    """Whether two extracted answers are equivalent. No time limit: grade() and grade_batch() add one."""
    a, b = normalize_answer(a), normalize_answer(b)
    verdict = _quick_verdict(a, b)
    return verdict if verdict is not None else _deep_equal(a, b)


# The sympy names an answer may use (besides single-letter symbols), and the LaTeX commands that become
# them; any other command (\alpha, \binom, ...) leaves the answer to the string comparison.
_SAFE_NAMES = {"pi", "oo", "I", "E", "sin", "cos", "tan", "cot", "sec", "csc", "log", "exp"}
_COMMANDS = {"pi": "pi", "infty": "oo", "cdot": "*", "times": "*", "div": "/", "ln": "log",
             **{name: name for name in ("sin", "cos", "tan", "cot", "sec", "csc", "log", "exp")}}
_COMMAND = re.compile(r"\\([A-Za-z]+)")
_SAFE_PYTHON = re.compile(r"(?:[0-9A-Za-z+\-*/()\s]|\.(?=\d))*")  # a dot only in a number: no .attribute


def _argument(s, i):
    """A command's argument at s[i]: a {group} or one character. Returns (argument, index after it)."""
    while s[i] == " ":
        i += 1
    if s[i] != "{":
        return s[i], i + 1
    end = _group_end(s, i)
    if end is None:
        raise ValueError("unclosed brace")
    return s[i + 1:end], end + 1


def _latex_to_python(s):
    """Translate answer LaTeX (\\frac, \\sqrt, ^, \\pi, implicit products) into sympy syntax.
    Raises ValueError or LookupError on LaTeX we do not translate. Only safe if the result is whitelisted."""
    out, i = [], 0
    while i < len(s):
        command = _COMMAND.match(s, i)
        if command and command.group(1) == "frac":
            numerator, i = _argument(s, command.end())
            denominator, i = _argument(s, i)
            out.append(f"(({_latex_to_python(numerator)})/({_latex_to_python(denominator)}))")
        elif command and command.group(1) == "sqrt":
            i, degree = command.end(), "2"
            if s.startswith("[", i):  # \sqrt[3]{x}
                degree, i = s[i + 1:s.index("]", i)], s.index("]", i) + 1
            radicand, i = _argument(s, i)
            out.append(f" (({_latex_to_python(radicand)})**(1/({_latex_to_python(degree)}))) ")
        elif command:
            out.append(f" {_COMMANDS[command.group(1)]} ")  # KeyError (a LookupError) if unknown
            i = command.end()
        else:
            # In math mode every letter is its own symbol (xy is x*y); i and e are the constants.
            c = {"{": "(", "}": ")", "^": "**", "i": "I", "e": "E"}.get(s[i], s[i])
            out.append(f" {c} " if c.isalpha() else c)
            i += 1
    return "".join(out)


def _sympy_parse(code, evaluate):
    """sympy's parser on whitelisted code, with implicit products (2 pi, x(x+1)) and sin x."""
    from sympy.parsing.sympy_parser import (implicit_application, implicit_multiplication, parse_expr,
                                            standard_transformations)
    import sympy
    # Only what a whitelisted answer can name: no builtins, nothing else from sympy.
    plumbing = ("Integer", "Float", "Rational", "Symbol", "Add", "Mul", "Pow")  # what the parser itself emits
    allowed = {"__builtins__": {}, **{name: getattr(sympy, name) for name in (*_SAFE_NAMES, *plumbing)}}
    letters = {c: sympy.Symbol(c) for c in string.ascii_letters if c not in "IE"}  # so x(x+1) is a product
    transformations = standard_transformations + (implicit_multiplication, implicit_application)
    return parse_expr(code, local_dict=letters, global_dict=allowed, transformations=transformations,
                      evaluate=evaluate)


def _is_astronomical(expr):
    """Whether a numeric power in expr is beyond 10^±MAX_DIGITS (10^{10^{10}}): sympy would try to compute
    it exactly and never finish. Children come first in postorder, so each power we evaluate approximately
    (evalf: a float with a big exponent, cheap) has only small powers inside."""
    import sympy
    limit = sympy.Float(f"1e{MAX_DIGITS}")
    for node in sympy.postorder_traversal(expr):
        if node.is_Pow and node.is_number:
            size = abs(node.evalf(3))
            if not (size == 0 or 1 / limit < size < limit):
                return True
    return False


def _max_depth(s):
    """How deeply brackets nest in s."""
    depth = deepest = 0
    for c in s:
        depth += (c in "([{") - (c in ")]}")
        deepest = max(deepest, depth)
    return deepest


def _to_sympy(latex):
    """A sympy expression for an answer, or None if it is not (safely) translatable."""
    if len(latex) > MAX_CHARS or _max_depth(latex) > MAX_DEPTH:
        return None
    try:
        code = _latex_to_python(latex)
    except (ValueError, LookupError, RecursionError):
        return None
    names = re.findall(r"[A-Za-z]+", code)
    if not _SAFE_PYTHON.fullmatch(code) or any(len(name) > 1 and name not in _SAFE_NAMES for name in names):
        return None
    unevaluated = _sympy_parse(code, evaluate=False)
    return None if _is_astronomical(unevaluated) else _sympy_parse(code, evaluate=True)


def _sympy_equal(a, b):
    """Symbolic equality: exact unless a decimal was written, then numeric to REL_TOL."""
    import sympy
    try:
        x, y = _to_sympy(a), _to_sympy(b)
        if x is None or y is None:
            return False
        if x == y:
            return True
        if (x.has(sympy.Float) or y.has(sympy.Float)) and x.is_number and y.is_number:
            return bool(abs(sympy.N(x - y)) <= float(REL_TOL) * max(abs(sympy.N(x)), abs(sympy.N(y))))
        return x.equals(y) is True
    except Exception:  # sympy can fail in many ways on odd input; an answer it cannot read is not equal
        return False


# ---------------------------------------------------------------------------------------------------------
# 5. Time limit: sympy runs in worker processes that can be killed from any thread


class _Worker:
    """One sympy process: this file run as a script (see _serve), talked to over pipes, one JSON line each
    way. A fresh interpreter, not multiprocessing: no fork of a parent holding CUDA and threads, and no
    re-import of the trainer's __main__. "-P" keeps algorithms/ off its sys.path."""

    def __init__(self):
        self.process = subprocess.Popen([sys.executable, "-P", os.path.abspath(__file__)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self._read_line(timeout=120) != "ready":
            self.kill()
            raise RuntimeError("grader worker did not start (is sympy installed?)")

    def compare(self, a, b, timeout):
        """The worker's verdict on (a, b), or None if it gave none within timeout seconds."""
        self.process.stdin.write(json.dumps([a, b, timeout]) + "\n")
        self.process.stdin.flush()
        line = self._read_line(timeout)
        return None if line is None else json.loads(line)

    def _read_line(self, timeout):
        # poll, not select: select fails on file descriptors above 1024, common in a big trainer
        poller = select.poll()
        poller.register(self.process.stdout, select.POLLIN)
        return self.process.stdout.readline().strip() if poller.poll(timeout * 1000) else None

    def kill(self):
        self.process.kill()
        self.process.wait()


class _WorkerPool:
    """POOL_SIZE worker slots, each started on first use; a worker that overruns is killed and replaced."""

    def __init__(self, size):
        self._idle = queue.Queue()
        for _ in range(size):
            self._idle.put(None)  # an empty slot
        self._live = set()
        self._lock = threading.Lock()

    def compare(self, a, b, timeout):
        """_deep_equal(a, b) in a worker; False if it takes longer than timeout seconds."""
        worker, verdict = self._idle.get(), None  # waits while every worker is busy
        try:
            worker = worker or self._start()
            verdict = worker.compare(a, b, timeout)
        except (OSError, ValueError):  # the worker died: broken pipe, or no JSON line
            pass
        finally:
            if worker is not None and verdict is None:  # it may be stuck for good: kill it
                self._stop(worker)
                worker = None
            self._idle.put(worker)
        return bool(verdict)

    def _start(self):
        worker = _Worker()
        with self._lock:
            self._live.add(worker)
        return worker

    def _stop(self, worker):
        worker.kill()
        with self._lock:
            self._live.discard(worker)

    def close(self):
        """Kill every worker (at exit; a worker whose parent is gone also exits when its stdin closes)."""
        with self._lock:
            workers, self._live = self._live, set()
        for worker in workers:
            worker.kill()


_POOL = _WorkerPool(POOL_SIZE)
atexit.register(_POOL.close)


def _serve():
    """A worker's main loop: a JSON [a, b, timeout] per stdin line -> a JSON verdict per stdout line."""
    _deep_equal("\\frac{\\sqrt{2}}{2}", "x(x+1)")  # pay for importing sympy before any time limit starts
    print("ready", flush=True)
    for line in sys.stdin:  # ends when the parent closes our stdin or dies
        a, b, timeout = json.loads(line)
        # The parent kills us at `timeout`; if it died mid-task, SIGALRM (default action: exit) still will.
        signal.alarm(int(timeout) + 2)
        try:
            verdict = _deep_equal(a, b)
        except Exception:  # e.g. RecursionError on absurdly nested tuples: not equal, and stay alive
            verdict = False
        signal.alarm(0)
        print(json.dumps(verdict), flush=True)


# ---------------------------------------------------------------------------------------------------------
# 6. Grading


def _grade_in_process(response, reference, stopped):
    """The verdict if it is cheap, else the normalised pair of answers that needs a worker."""
    if not stopped:  # hit the length limit: whatever it says, it did not finish
        return False
    a, b = extract_answer(response), extract_answer(reference)
    if a is None or b is None:
        return False
    a, b = normalize_answer(a), normalize_answer(b)
    verdict = _quick_verdict(a, b)
    return (a, b) if verdict is None else verdict


def grade(response: str, reference: str, stopped: bool = True) -> bool:
    """Whether the response's final answer equals the reference's (a bare answer, a boxed answer, a GSM8K
    solution ending in '#### 42', or a MATH solution). False if the response did not stop by itself."""
    verdict = _grade_in_process(response, reference, stopped)
    return verdict if isinstance(verdict, bool) else _POOL.compare(*verdict, TIMEOUT)


def grade_batch(responses: list[str], references: list[str], stopped: list[bool] | None = None,
                timeout: float = TIMEOUT) -> list[bool]:
    """grade() over a rollout batch: cheap verdicts in-process, the rest in parallel in the worker pool,
    each with its own time limit of `timeout` seconds (a timeout counts as wrong)."""
    stopped = [True] * len(responses) if stopped is None else stopped
    verdicts = [_grade_in_process(*args) for args in zip(responses, references, stopped, strict=True)]
    slow = [i for i, verdict in enumerate(verdicts) if not isinstance(verdict, bool)]
    if slow:
        with ThreadPoolExecutor(POOL_SIZE) as threads:
            slow_verdicts = list(threads.map(lambda i: _POOL.compare(*verdicts[i], timeout), slow))
        for i, verdict in zip(slow, slow_verdicts):
            verdicts[i] = verdict
    return verdicts


if __name__ == "__main__":
    _serve()
