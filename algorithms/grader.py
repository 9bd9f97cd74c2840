"""The reward: is the final answer in a response equal to the reference answer?

In RL with verifiable rewards the grader is the policy's only teacher, so it has to be right both ways and
it must never stall training:

* a false negative (a right answer marked wrong, "0.5" vs "\\frac{1}{2}") starves the policy of signal;
* a false positive (a wrong answer marked right) teaches the policy to game the grader;
* a hang or a crash on one strange sample kills the whole run.

What counts as equal (the response's answer first, the reference's second):

* numbers: integers and fractions exactly (0.5 = 1/2 = \\frac12; two 400-digit numbers that differ in the
  last digit differ). A decimal is exact too, except that a DECIMAL REFERENCE only states its own precision:
  a response equals it if it rounds to it (1/3 equals a reference 0.33; 17 never equals a reference 17.001,
  and 0.3333 never equals a reference 1/3 or 3.14 a reference \\pi). A percentage is both its number and its
  hundredths (10\\% is 10 and 0.1).
* expressions: equal by sympy after our own LaTeX translation (\\sqrt{8} = 2\\sqrt{2}, x(x+1) = x^2+x).
* equations: equal when one is a nonzero multiple of the other after moving everything to one side
  (y = -\\frac12x + \\frac34 equals 2x + 4y - 3 = 0); "y = 2x" also equals a bare 2x, and an equation linear
  in its one unknown equals its root (x - 5 = 0 and 5; not x^2 = 25 and 5).
* inequalities: equal when their canonical forms are positive multiples (x \\geq 5, 5 \\le x, -x <= -5), or
  when their solution sets on the real line are the same, also against intervals (-2 < x < 2 is (-2, 2),
  x \\neq 1 is (-\\infty, 1) \\cup (1, \\infty)).
* structures: tuples and intervals in order, with their open/closed ends; sets, unions and several answers
  (1, 2 or \\boxed{1}\\boxed{2} or "1 and 2" or x = 1 or x = 2) as sets (each element of one equals one of
  the other); matrices (pmatrix, bmatrix, array) entry by entry, with the same shape; a one-row or one-column
  matrix is the tuple of its entries, and x = 3, y = -1 is the point (3, -1).
* words: \\text{odd} and odd, case-insensitively; units after a value are dropped (125\\textnormal{ miles}).

What is not equal: anything sympy cannot read safely or within the time limit, a tuple and a set, an ordered
tuple in another order, a word and a number, an inequality in another variable (y > 0 and x > 0), several
answers against one of them, a response that hit the length limit.

The pipeline runs cheapest first:

1. extract_answer    the last \\boxed{...} (with the boxes just before it: \\boxed{1}, \\boxed{2}), or a later
                     "the (final) answer is x"; else GSM8K's "#### x"; else "the answer is x"; else a bare
                     short answer (a reference like "3/4"); else the last math span or number, whichever is
                     last. A chat template's next turn (or a few-shot prompt's next "Question:") is cut
                     off first.
2. normalize_answer  drop LaTeX that does not change the value: \\left, \\dfrac, spacing, $, %, degrees,
                     units, thousands separators, a leading "x =" before a value; one spelling for relations
                     (\\ge, >=, ≥ -> >=) and for several answers ("1 and 2" -> 1,2); Unicode minus and the like.
3. _quick_verdict    equal strings, or equal numbers or percentages (above). This settles most answers in
                     microseconds.
4. _deep_equal       relations, equations and structures, then everything else with sympy. sympy is slow and
                     can blow up, so grade() and grade_batch() run this step in worker processes, started on
                     first need, that are killed and replaced when they overrun the time limit (TIMEOUT); a
                     timeout counts as wrong. Killing a process works from any thread, unlike signal.alarm.

Safety: answers are written by the model, so they are never executed. Only a string made of whitelisted
characters and names reaches sympy's parser, which gets no builtins; numeric powers beyond 10^±MAX_DIGITS
(10^{10^{10}}) and factorials beyond MAX_FACTORIAL are refused before sympy tries to compute them exactly.
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
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from fractions import Fraction

TIMEOUT = 2.0                   # seconds per answer that needs sympy; a timeout counts as wrong
MAX_CHARS = 1000                # longer answers are compared as plain strings only
MAX_DEPTH = 50                  # deeper brace nesting is not an answer, it is an attack on the recursion
MAX_DIGITS = 10_000             # numeric powers beyond 10^±MAX_DIGITS are refused, not computed
MAX_FACTORIAL = 1000            # so are factorials of bigger numbers (1000! has 2568 digits)
POOL_SIZE = min(4, os.cpu_count() or 1)

# Unicode that models and datasets write for ASCII or LaTeX: \boxed{−5} is -5
_UNICODE = str.maketrans({"\u2212": "-", "\u00d7": "\\times ", "\u00f7": "\\div ", "\u2264": "\\le ",
                          "\u2265": "\\ge ", "\u2260": "\\ne ", "\u00b7": "\\cdot ", "\u22c5": "\\cdot ",
                          "\u03c0": "\\pi ", "\u221e": "\\infty ", "\u221a": "\\sqrt ", "\u00bd": "\\frac{1}{2}",
                          "\u00bc": "\\frac{1}{4}", "\u00be": "\\frac{3}{4}", "\u2044": "/",
                          "\u00b2": "^2", "\u00b3": "^3",
                          "\u00a0": " ", "\u2009": " ", "\u202f": " "})  # no-break and thin spaces

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


def _box_at(text, start):
    """(contents, end) of the \\boxed{...} or \\fbox{...} at text[start]; contents '' if empty or unclosed."""
    command = "\\boxed" if text.startswith("\\boxed", start) else "\\fbox"
    after = start + len(command)
    rest = text[after:]
    if rest.lstrip().startswith("{"):
        brace = after + len(rest) - len(rest.lstrip())
        end = _group_end(text, brace)
        return ("", len(text)) if end is None else (text[brace + 1:end], end + 1)
    unbraced = re.match(r"\s+([^\s$]+)", rest)  # "\boxed 5"
    return (unbraced.group(1), after + unbraced.end()) if unbraced else ("", after)


# What may stand between boxes that together are one answer: \boxed{1}, \boxed{2} or $\boxed{1}$ and $\boxed{2}$
_BETWEEN_BOXES = re.compile(r"(?:[\s$,;]|\\[\[\](),;]|\\\\|\\q?quad|\\text\{\s*(?:and|or)?\s*\}|and|or)*")


def _final_boxes(text):
    """(contents, start) of the last box together with the boxes right before it; None if there is no box.
    A box after other words is a new answer ("\\boxed{3}, no wait: \\boxed{4}" is 4)."""
    answers, start, gap_end = [], len(text), len(text)
    while (box := max(text.rfind("\\boxed", 0, start), text.rfind("\\fbox", 0, start))) >= 0:
        contents, end = _box_at(text, box)
        if answers and not (end <= gap_end and _BETWEEN_BOXES.fullmatch(text[end:gap_end])):
            break
        answers.insert(0, contents.strip())
        start = gap_end = box
    if not answers:
        return None
    if "" in answers:  # an empty or unclosed box: no answer
        return "", start
    return ", ".join(dict.fromkeys(answers)), start  # the same answer boxed twice is one answer


# GSM8K's "#### 18", but not a markdown heading "#### Step 2"
_HASHES = re.compile(r"####\s*([^\s#A-Za-z][^\n]*)")
# "The final answer is $\frac{1}{2}$." or "Answer: 18"; _said_answer takes what follows, up to the end of the
# sentence (a lazy regex up to ". " would backtrack quadratically on a long line of spaces)
_ANSWER_IS = re.compile(r"answer(\s+is|\s*:)\**:?[ \t]*", re.IGNORECASE)
# 12, -3, 1,234, 0.5, .5, 3/4; not the 5 in x5 or the .5 in 3.5
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|(?<![\w.])-?\.\d+")
# $x$, $$x$$, \(x\), \[x\], but not an escaped dollar \$18. A span never holds its own opening delimiter, so
# each character is scanned once (no quadratic search on "\(\(\(...").
_MATH_SPAN = re.compile(r"(?<!\\)\$\$([^$]+?)\$\$|(?<!\\)\$([^$]+?)(?<!\\)\$|\\\(((?:(?!\\\().)+?)\\\)"
                        r"|\\\[((?:(?!\\\[).)+?)\\\]", re.DOTALL)
# A chat template's next turn, or a few-shot prompt's next question: what follows is not the response
_NEXT_TURN = re.compile(r"<\|(?:im_end|im_start|endoftext|eot_id|end|user)\|>|</s>|\n\s*(?:Human|User|Question):")


def _is_bare_answer(text):
    """A short answer on its own ('3/4', '\\frac{1}{2}', '(1, 2)', '\\text{Evelyn}', 'y = 2x'), not a sentence
    and not a chain of steps ('2+1=3, 3+2=5')."""
    if len(text) > 100 or "\n" in text or text.count("=") > 1 or not re.search(r"[A-Za-z0-9]", text):
        return False
    words = re.findall(r"[A-Za-z]{2,}", re.sub(r"\\[A-Za-z]+(\{[A-Za-z ]*\})?", " ", text))
    return not words or words == [text]


def _said_answer(text, said):
    """What 'the answer is ...' (the match `said` in text) says: up to the end of its sentence, without
    markdown bold or dollars, and the result of a calculation ('$20 + 4 = 24$' says 24)."""
    line = text[said.end():].partition("\n")[0]
    return _result_of(re.split(r"\.(?:\s|$)", line, maxsplit=1)[0].strip().strip("*$ "))


def _result_of(math):
    """The result a math span states: '3 \\times 4 = 12' and 'x = 2 + 3 = 5' state 5 and 12; an equation
    with a variable on its left ('y = 2x + 3', 'x = 5') is stated whole."""
    sides = math.split("=")
    arithmetic = not re.search(r"[A-Za-z]", re.sub(r"\\[A-Za-z]+", "", sides[0]))
    return sides[-1].strip() if len(sides) > 2 or (len(sides) == 2 and arithmetic) else math.strip()


def _final_spans(text, spans):
    """The result the last math span states, with the spans right before it that it lists with ('$x = -4$ or
    $x = 1$', '$2$, $3$ and $5$'); like boxes, a span after other words is a new answer."""
    results = []
    for span, following in zip(reversed(spans), [None, *reversed(spans)]):
        between = text[span.end():following.start()] if following else ""
        if not re.fullmatch(r"[\s,;]*(?:and|or)?[\s,;]*", between):
            break
        results.insert(0, _result_of(next(group for group in span.groups() if group is not None)))
    return ", ".join(dict.fromkeys(results))


def extract_answer(text: str) -> str | None:
    """The final answer in a model response or a reference solution, as a string; None if there is none.

    Unicode is mapped to ASCII/LaTeX (_UNICODE) and the text cut at a next turn (_NEXT_TURN). Then the first rule
    that applies: the last box with the boxes listed just before it (_final_boxes), unless a later "the answer is"
    (not "answer:") says a value with a digit, \\ or $ in it; GSM8K's last "#### x" (_HASHES); the last "the
    answer is x" / "answer: x" (_ANSWER_IS, _said_answer); the whole text, markdown ** stripped, if it is a bare
    short answer (_is_bare_answer); the last math span (_final_spans) or number (_NUMBER), whichever ends last.
    An empty box or an empty said answer gives None."""
    text = _NEXT_TURN.split(text.translate(_UNICODE), 1)[0]
    said = list(_ANSWER_IS.finditer(text))
    last_said = _said_answer(text, said[-1]) if said else None  # "the answer is $x$", markdown bold "**18**"
    boxes = _final_boxes(text)
    # A box is the answer, unless a value is said after it: "\boxed{41} ... no, the answer is 42", but not
    # "\boxed{44}, so our answer is correct" or "\boxed{44}. We check our answer: 17 \cdot 44 = 748".
    corrected = (boxes is not None and said and said[-1].start() > boxes[1]
                 and said[-1][1].strip().lower() == "is" and re.search(r"[\d\\$]", last_said))
    if boxes is not None and not corrected:
        return boxes[0] or None
    hashes = _HASHES.findall(text)
    if hashes:
        return hashes[-1].strip()
    if said:
        return last_said or None
    text = text.strip().strip("*").strip()  # a bare answer in markdown bold: **12**
    if _is_bare_answer(text):
        return text
    spans = list(_MATH_SPAN.finditer(text))
    numbers = list(_NUMBER.finditer(text))
    if spans and (not numbers or spans[-1].end() >= numbers[-1].end()):
        return _final_spans(text, spans) or None
    return numbers[-1].group() if numbers else None


def has_answer(response: str) -> bool:
    """Whether any answer can be extracted (ReFT's partial reward: 1 right, 0.1 wrong answer, 0 none)."""
    return extract_answer(response) is not None


# ---------------------------------------------------------------------------------------------------------
# 2. Normalisation

_REWRITES = [  # (pattern, replacement): LaTeX habits that do not change the value, applied in this order
    (r"\\(?:left|right|big|Big|bigg|Bigg)(?![A-Za-z])", ""),  # \left( 3, 4 \right)
    (r"\\[dtc]frac", r"\\frac"),                     # \dfrac, \tfrac, \cfrac
    (r"(?<=\d)\{,\}(?=\d)", ""),                     # 14{,}916
    (r"\\!\s*", ""),                                 # 10,\!080: the thin space glues a thousands comma
    (r"(?<!\\)\\[,;: ]|\\q?quad|\\displaystyle|~", " "),  # spacing (but not the matrix row break \\)
    (r"\^\s*\{?\\circ\}?|°|\\degree", ""),           # 90^\circ
    (r"\\?%", ""),                                   # 50\%
    (r"\\?\$|\\[()\[\]]", ""),                       # \$18.90, $x$, $$x$$, \(x\), \[x\]
    (r"\\mathbb\{R\}", r"(-\\infty,\\infty)"),       # all real numbers
    (r"\\varnothing|\\\{\s*\\\}", r"\\emptyset"),    # the empty set
    (r"\\[lr]?vert(?![A-Za-z])", "|"),               # \lvert x \rvert is |x|
    (r"(?<![\w)}])\u2013(?=\s*\d)", "-"),            # an en dash before a number is a minus (3–5 is a range)
    (r"^\s*\\\{\s*([A-Za-z])\s*(?:\\mid|\||:)(.*)\\\}\s*$", r"\2"),  # {x | x \neq 2} is the condition x \neq 2
    # one spelling per relation: x \geq 5, x \ge 5, x >= 5, x ≥ 5 are x>=5; x \approx 11 is x = 11
    (r"\\(?:leq?|leqslant)(?![A-Za-z])|=<", "<="), (r"\\(?:geq?|geqslant)(?![A-Za-z])|=>", ">="),
    (r"\\neq?(?![A-Za-z])", "!="), (r"\\lt(?![A-Za-z])", "<"), (r"\\gt(?![A-Za-z])", ">"),
    (r"\\approx(?![A-Za-z])", "="),
    (r"[bB]matrix", "pmatrix"),                      # one matrix spelling, also for an array in brackets
    (r"^\s*[(\[]?\s*\\begin\{(?:array\}\{[^{}]*|matrix)\}(.*)\\end\{(?:array|matrix)\}\s*[)\]]?\s*$",
     r"\\begin{pmatrix}\1\\end{pmatrix}"),
    (r"_\{(\w+)\}", r"_\1"),                         # 4210_{5} -> 4210_5
]
_REWRITES = [(re.compile(pattern, re.DOTALL), replacement) for pattern, replacement in _REWRITES]
_TEXT = re.compile(r"\\(?:text|textbf|textrm|textnormal|textit|mbox|mathrm|mathbf|mathit)\{([^{}]*)\}(\^\{?\d\}?)?")
_UNIT_WORDS = re.compile(r"(?<=[\d}])\s+[A-Za-z]{2,}(?:\s+[A-Za-z]{2,})*$")  # 18 dollars, 3 square units
# 125 thousand, 3\text{ million dollars}: a word that scales the value is no unit
_SCALE_WORD = re.compile(r"(?<=[\d}])\s*(hundred|thousand|million|billion)(?![A-Za-z])", re.IGNORECASE)
_SCALES = {"hundred": "2", "thousand": "3", "million": "6", "billion": "9"}
_SCALE_STEM = re.compile("|".join(_SCALES), re.IGNORECASE)  # nor are hundreds, thousandths: they stay words
_JOINING_WORD = re.compile(r"\s*\\text\{\s*(and|or)\s*\}\s*|\s+(and|or)\s+")  # 6 \text{ and } 8, x=1 or x=2
_RELATION = re.compile(r"<=|>=|!=|<|>")
_NAMED = re.compile(r"^[A-Za-z](?:_\w)?(?:\([a-z]\))?=(?![=<>])")  # "x=", "a_1=", "f(x)=" naming a value


def _unwrap_text(match):
    """\\text{(C)} is the answer (C); \\text{ cm}^2 ending an answer right after a value (15\\text{ cm},
    \\frac{1}{2}\\text{ inch}, 3\\text{ m/s}, 7\\pi\\text{ units}) is a unit and goes; other words stay."""
    before, after = match.string[:match.start()], match.string[match.end():]
    is_unit = (re.search(r"[\w}]\s*$", before) and not after.strip()
               and re.fullmatch(r"[A-Za-z /]*", match.group(1)) and not _SCALE_STEM.search(match.group(1)))
    return "" if is_unit else match.group(1) + (match.group(2) or "")


def _join(match):
    """Several answers joined by words are a list (1 and 2 -> 1,2); relations so joined are a union (or) or
    an intersection (and) of solution sets."""
    word = match.group(1) or match.group(2)
    if _RELATION.search(match.string):
        return "\\cup " if word == "or" else "\\cap "
    return ","


def normalize_answer(answer: str) -> str:
    """A canonical spelling of an answer, so that equal answers are mostly equal strings."""
    s = answer.translate(_UNICODE).strip()
    if len(s) > MAX_CHARS:
        return s
    for pattern, replacement in _REWRITES:
        s = pattern.sub(replacement, s)
    s = _JOINING_WORD.sub(_join, s)
    s = _TEXT.sub(_unwrap_text, s).strip()
    s = _SCALE_WORD.sub(lambda word: f"\\times10^{{{_SCALES[word[1].lower()]}}}", s)
    s = _UNIT_WORDS.sub(lambda unit: unit[0] if _SCALE_STEM.search(unit[0]) else "", s)
    # Spaces carry no meaning in math, except between letters: "\cot x" is not "\cotx".
    s = re.sub(r"(?<![A-Za-z]) | (?![A-Za-z])", "", re.sub(r"\s+", " ", s)).rstrip(".")
    if s.startswith("{") and _is_wrapped(s):  # {1,2}: braces that only group, as a model writes a set
        s = s[1:-1]
    s = re.sub(r"^\((?:[A-Za-z](?:_\w)?,)+[A-Za-z](?:_\w)?\)=", "", s)  # (p,q)=(3,2)
    s = re.sub(r"^[A-Za-z](?:_\w)?\\in(?![A-Za-z])", "", s)              # x\in[-2,7]
    if (named := _NAMED.match(s)) and not _has_variable(s[named.end():]):
        s = s[named.end():]  # x=5, x=\frac{\pi}{2}, x=\text{Evelyn}; but y=2x+3 stays an equation
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):          # 1,234 but not the tuple (1,234)
        s = s.replace(",", "")
    choice = re.fullmatch(r"\(([A-Z])\)|\(([A-E])\)[^,(].*", s)     # (C) and (C)4\sqrt{2}, its content -> C
    return choice.group(1) or choice.group(2) if choice else s


def _has_variable(s):
    """Whether s uses a one-letter variable ('2x+3', 'e^2'), not only commands (\\pi) and words (Evelyn)."""
    return bool(re.search(r"(?<![A-Za-z\\])[A-Za-z](?![A-Za-z])", re.sub(r"\\[A-Za-z]+", " ", s)))


# ---------------------------------------------------------------------------------------------------------
# 3. Quick verdicts: strings, plain numbers and percentages, in-process

_DECIMAL = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)")
_SLASH_FRACTION = re.compile(r"([-+]?\d+)/(\d+)")
# \frac{3}{4}, \frac34, -\frac{3}{8}, and mixed numbers 1\frac{4}{5} = 9/5
_LATEX_FRACTION = re.compile(r"(-?)(\d*)\\frac(?:\{(-?\d+)\}|(\d))(?:\{(-?\d+)\}|(\d))")
_DECIMAL_PLACES = re.compile(r"\d*\.(\d+)")
_REPEATING_DECIMAL = re.compile(r"(-?)(\d*)\.(\d*)\\overline\{(\d+)\}")  # 0.1\overline{6} = 1/6


def _as_number(s):
    """'-3', '0.5', '.35625', '3/4', '\\frac{-3}{4}', '1\\frac{4}{5}', '0.\\overline{3}' as an exact Fraction;
    else None."""
    try:
        if _DECIMAL.fullmatch(s):
            return Fraction(s)
        if m := _SLASH_FRACTION.fullmatch(s):
            return Fraction(int(m.group(1)), int(m.group(2)))
        if m := _REPEATING_DECIMAL.fullmatch(s):
            sign, whole, once, repeated = m[1], m[2], m[3], m[4]
            value = int(whole or 0) + Fraction(int(once + repeated) - int(once or 0),
                                               10 ** len(once) * (10 ** len(repeated) - 1))
            return -value if sign else value
        if m := _LATEX_FRACTION.fullmatch(s):
            sign, whole, numerator, denominator = m[1], m[2], m[3] or m[4], m[5] or m[6]
            value = int(whole or 0) + Fraction(int(numerator), int(denominator))
            return -value if sign else value
    except (ZeroDivisionError, ValueError):
        pass
    return None


def _stated_precision(reference):
    """Half a unit in the last decimal place the reference writes (0.005 for 17.25), None if it writes no
    decimal or a repeating one (0.1\\overline{6}): then it is exact."""
    places = [len(digits) for digits in _DECIMAL_PLACES.findall(reference)]
    return Fraction(1, 2 * 10 ** max(places)) if places and "\\overline" not in reference else None


def _numbers_equal(response, reference, precision):
    """Exactly equal, or within the reference's stated precision if it is a decimal."""
    return response == reference if precision is None else abs(response - reference) <= precision


def _quick_verdict(a, b):
    """True/False when strings or plain numbers settle it; None when it needs _deep_equal. b is the reference."""
    if not a or not b:  # "\boxed{\$}" normalises to nothing: that is no answer
        return False
    if a == b:
        return True
    if max(len(a), len(b)) > MAX_CHARS:  # too long to be an answer: only an exact copy counts
        return False
    x, y = _as_number(a), _as_number(b)
    if x is not None and y is not None:
        return _numbers_equal(x, y, _stated_precision(b))
    a_word, b_word = a.isalpha() and a.isascii(), b.isalpha() and b.isascii()
    if a_word and b_word:  # words ("Evelyn", "east", "C") compare without case; "xy" is a word too
        return a.lower() == b.lower()
    if (a_word and len(a) > 1 or x is not None) and (b_word and len(b) > 1 or y is not None):
        return False  # a word against a number (but e may be 2.718 and x may be 5: sympy decides)
    return None

_PERCENT = re.compile(r"\s*(-?\d+(?:\.\d+)?)\s*\\?%\s*")


def _as_hundredths(answer):
    """A percentage as the number it is: '10\\%' -> '10/100' (exact), '12.5%' -> '0.125' (a decimal, with the
    precision it states); None for anything else."""
    percent = _PERCENT.fullmatch(answer)
    if percent is None:
        return None
    number = percent[1]
    return str(Decimal(number).scaleb(-2)) if "." in number else f"{number}/100"


def _cheap_verdict(a, b):
    """(verdict or None, a normalised, b normalised) for extracted answers a (response) and b (reference).
    A percentage equals both its number (the answer to "what percent?") and its hundredths: 10\\% is 10
    and 0.1."""
    a_normal, b_normal = normalize_answer(a), normalize_answer(b)
    verdict = _quick_verdict(a_normal, b_normal)
    a_hundredths, b_hundredths = _as_hundredths(a), _as_hundredths(b)
    if verdict is False and (a_hundredths or b_hundredths):
        verdict = _quick_verdict(a_hundredths or a_normal, b_hundredths or b_normal)
    return verdict, a_normal, b_normal


# ---------------------------------------------------------------------------------------------------------
# 4. Structured comparison: relations, equations, tuples, sets, matrices; each part of them compared again.
#    Runs in a worker (section 6), as it may reach sympy (section 5).


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


def _interval(s):
    """(left, right, left_open, right_open) for an interval '(a,b]'; None if s is not two bracketed items."""
    if s[:1] in "([" and s[-1:] in ")]" and _is_wrapped(s) and len(items := _split_top_level(s[1:-1], ",")) == 2:
        return items[0], items[1], s[0] == "(", s[-1] == ")"
    return None


def _structure(s):
    """(kind, items) for a matrix, union, set/list, tuple or interval; None for a single expression.
    Kinds must match to be equal; sets, lists and unions are unordered, the others ordered."""
    if m := re.fullmatch(r"\\begin\{pmatrix\}(.*)\\end\{pmatrix\}", s, re.DOTALL):
        rows = [row.split("&") for row in m.group(1).split("\\\\") if row.strip()]  # a last \\ ends no row
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


def _as_vector(structure):
    """A matrix of one row or one column as the tuple of its entries; anything else unchanged."""
    kind, items = structure
    if not kind.startswith("matrix"):
        return structure
    row_widths = json.loads(kind.removeprefix("matrix"))
    return ("()", items) if len(row_widths) == 1 or set(row_widths) == {1} else structure


def _as_point(structure):
    """Values named by distinct letters (y=-1, x=3) as the tuple of the values in the letters' order (3, -1);
    anything else unchanged."""
    kind, items = structure
    named = [re.fullmatch(r"([A-Za-z])=(.+)", item) for item in items]
    if kind != "set" or not all(named) or len({match[1] for match in named}) < len(named):
        return structure
    return "()", [match[2] for match in sorted(named, key=lambda match: match[1])]


def _comparable_structures(a, b):
    """The structures of a and b (see _structure), one read as the other's kind where it can be: a single
    answer as a set of one (5 and {5}), a one-row or one-column matrix as a tuple, named values as a point."""
    structure_a, structure_b = _structure(a), _structure(b)
    if (structure_a is None) != (structure_b is None) and (structure_a or structure_b)[0] == "set":
        return structure_a or ("set", [a]), structure_b or ("set", [b])
    if structure_a and structure_b:
        kinds = {structure_a[0][:6], structure_b[0][:6]}  # "matrix[2, 2]" is a matrix
        if kinds == {"matrix", "()"}:
            return _as_vector(structure_a), _as_vector(structure_b)
        if kinds == {"set", "()"}:
            return _as_point(structure_a), _as_point(structure_b)
    return structure_a, structure_b


def _same_elements(xs, ys):
    """Whether xs and ys hold the same elements, as sets: each x equals some y and each y some x (so
    "15\\frac{39}{40}, \\frac{639}{40}", one value written twice, is that value)."""
    return (all(any(answers_equal(x, y) for y in ys) for x in xs)
            and all(any(answers_equal(x, y) for x in xs) for y in ys))


def _is_equation(s):
    """One '=' outside brackets: 'y=2x+3', '2x+4y-3=0' (several answers 'x=1,x=2' are a list)."""
    return len(_split_top_level(s, "=")) == 2


def _named_value(s):
    """The value a one-letter name is given on either side ('y=2x+3', 'f(x)=2x+3', '2x+3=y'); else s."""
    if named := _NAMED.match(s):
        return s[named.end():]
    named_after = re.fullmatch(r"(.+)=[A-Za-z](?:_\w)?", s)
    return named_after[1] if named_after else s


def _deep_equal(a, b):
    """Equality of normalised answers that _quick_verdict could not settle; b is the reference. Slow: may
    run sympy, so grade() runs it in a worker with a time limit."""
    if _RELATION.search(a) or _RELATION.search(b):
        return _relations_equal(a, b)
    if _is_equation(a) or _is_equation(b):
        if _is_equation(a) and _is_equation(b):
            return _equations_equal(a, b)
        a, b = _named_value(a), _named_value(b)  # "y=2x" against a bare "2x"
        if _is_equation(a):
            return _linear_root_equal(a, b)  # "x-5=0" against 5
        if _is_equation(b):
            return _linear_root_equal(b, a)
        return answers_equal(a, b)
    structure_a, structure_b = _comparable_structures(a, b)
    if structure_a or structure_b:
        if not (structure_a and structure_b) or structure_a[0] != structure_b[0]:
            return False
        (kind, xs), (_, ys) = structure_a, structure_b
        if kind in ("set", "union"):
            return _same_elements(xs, ys)
        return len(xs) == len(ys) and all(answers_equal(x, y) for x, y in zip(xs, ys))
    return _sympy_equal(a, b)


def answers_equal(a: str, b: str) -> bool:
    """Whether answer a (a response's) equals answer b (the reference's: its decimals state the precision).
    No time limit: grade() and grade_batch() add one."""
    verdict, a, b = _cheap_verdict(a, b)
    return verdict if verdict is not None else _deep_equal(a, b)


# ---------------------------------------------------------------------------------------------------------
# 5. sympy: expressions, equations and inequalities, translated by us from LaTeX, whitelisted, in a worker


# The sympy names an answer may use (besides single-letter symbols and Greek letters), and the LaTeX commands
# that become them; any other command (\mathbb, \operatorname, ...) leaves the answer to the string comparison.
_FUNCTIONS = ("sin", "cos", "tan", "cot", "sec", "csc", "asin", "acos", "atan", "log", "exp")
_SAFE_NAMES = {"pi", "oo", "I", "E", "factorial", "Abs", *_FUNCTIONS}
_GREEK = {"alpha", "beta", "gamma", "delta", "epsilon", "theta", "phi", "rho", "sigma", "tau", "omega", "mu"}
_COMMANDS = {"pi": "pi", "infty": "oo", "cdot": "*", "times": "*", "div": "/", "ln": "log",
             "arcsin": "asin", "arccos": "acos", "arctan": "atan", **{name: name for name in (*_FUNCTIONS, *_GREEK)}}
_COMMAND = re.compile(r"\\([A-Za-z]+)")
_SAFE_PYTHON = re.compile(r"[0-9A-Za-z+\-*/()\s]*")  # no dot: no .attribute (decimals become fractions)


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
    """Translate answer LaTeX (\\frac, \\sqrt, ^, |x|, \\pi, \\log_2, n!, \\binom, decimals, implicit products) into
    sympy syntax. Raises ValueError or LookupError on LaTeX we do not translate. Only safe if the result is
    whitelisted."""
    s = re.sub(r"(\d*)\.(\d+)", lambda m: f"({int(m[1] + m[2])}/{10 ** len(m[2])})", s)  # 1.25 = 125/100, exact
    s = re.sub(r"(\d+)!", r"\\factorial{\1}", s)  # 3! (the factorial of a number only)
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
        elif command and command.group(1) in ("binom", "dbinom", "tbinom"):
            n, i = _argument(s, command.end())  # n! / (k! (n-k)!): no comma reaches the parser
            k, i = _argument(s, i)
            n, k = _latex_to_python(n), _latex_to_python(k)
            out.append(f" (factorial({n})/(factorial({k})*factorial(({n})-({k})))) ")
        elif command and command.group(1) == "log" and s.startswith("_", command.end()):  # \log_2 8
            base, i = _argument(s, command.end() + 1)
            out.append(f" (1/log({_latex_to_python(base)})) * log ")
        elif command and command.group(1) == "factorial":
            number, i = _argument(s, command.end())
            out.append(f" factorial({number}) ")
        elif command:
            out.append(f" {_COMMANDS[command.group(1)]} ")  # KeyError (a LookupError) if unknown
            i = command.end()
        elif s[i] == "|":  # |x - 1|, not nested
            end = s.index("|", i + 1)  # ValueError if it never closes
            out.append(f" Abs({_latex_to_python(s[i + 1:end])}) ")
            i = end + 1
        else:
            # In math mode every letter is its own symbol (xy is x*y); i and e are the constants.
            c = {"{": "(", "}": ")", "^": "**", "i": "I", "e": "E"}.get(s[i], s[i])
            out.append(f" {c} " if c.isalpha() else c)
            i += 1
    return "".join(out)


def _sympy_parse(code, evaluate):
    """sympy's parser on whitelisted code, with implicit products (2 pi, x(x+1)), sin x and sin^2 x."""
    from sympy.parsing.sympy_parser import (function_exponentiation, implicit_application, implicit_multiplication,
                                            parse_expr, standard_transformations)
    import sympy
    # Only what a whitelisted answer can name: no builtins, nothing else from sympy.
    plumbing = ("Integer", "Float", "Rational", "Symbol", "Add", "Mul", "Pow")  # what the parser itself emits
    allowed = {"__builtins__": {}, **{name: getattr(sympy, name) for name in (*_SAFE_NAMES, *plumbing)}}
    letters = {c: sympy.Symbol(c, real=True) for c in (*string.ascii_letters, *_GREEK) if c not in "IE"}  # x(x+1)
    transformations = standard_transformations + (implicit_multiplication, implicit_application,
                                                  function_exponentiation)  # sin^2 x
    return parse_expr(code, local_dict=letters, global_dict=allowed, transformations=transformations,
                      evaluate=evaluate)


def _is_astronomical(expr):
    """Whether a numeric power in expr is beyond 10^±MAX_DIGITS (10^{10^{10}}), or a factorial beyond
    MAX_FACTORIAL: sympy would try to compute it exactly and never finish. Children come first in postorder,
    so each power we evaluate approximately (evalf: a float with a big exponent, cheap) has only small
    powers inside."""
    import sympy
    limit = sympy.Float(f"1e{MAX_DIGITS}")
    for node in sympy.postorder_traversal(expr):
        if isinstance(node, sympy.factorial) and node.args[0].is_number and not node.args[0] <= MAX_FACTORIAL:
            return True
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
    if not _SAFE_PYTHON.fullmatch(code) or any(len(name) > 1 and name not in _SAFE_NAMES | _GREEK
                                               for name in names):
        return None
    unevaluated = _sympy_parse(code, evaluate=False)
    return None if _is_astronomical(unevaluated) else _sympy_parse(code, evaluate=True)


def _sympy_equal(a, b):
    """Symbolic equality: exact, or to the precision that a decimal reference b states."""
    import sympy
    try:
        x, y = _to_sympy(a), _to_sympy(b)
        if x is None or y is None:
            return False
        if x == y:
            return True
        precision = _stated_precision(b)
        if precision is not None and x.is_number and y.is_number:
            return bool(abs(sympy.N(x - y, 30)) <= sympy.Rational(precision.numerator, precision.denominator))
        return x.equals(y) is True
    except Exception:  # sympy can fail in many ways on odd input; an answer it cannot read is not equal
        return False


def _difference(lhs, rhs):
    """lhs - rhs as a sympy expression, or None if either side is not translatable."""
    x, y = _to_sympy(lhs), _to_sympy(rhs)
    return None if x is None or y is None else x - y


def _constant_ratio(p, q):
    """p/q if it is a (finite, nonzero) number, else None: p = c q, the same relation scaled by c."""
    import sympy
    if q == 0:
        return None
    ratio = sympy.cancel(sympy.together(p / q))
    if ratio.free_symbols:
        ratio = sympy.simplify(ratio)
    return ratio if ratio.is_number and ratio.is_finite and ratio.is_nonzero else None


def _equations_equal(a, b):
    """Two equations are equal when one is a nonzero multiple of the other with everything moved to one
    side: y = -\\frac12x + \\frac34 and 2x + 4y - 3 = 0."""
    try:
        p, q = _difference(*_split_top_level(a, "=")), _difference(*_split_top_level(b, "="))
        return p is not None and q is not None and _constant_ratio(p, q) is not None
    except Exception:  # as in _sympy_equal
        return False


def _linear_root_equal(equation, value):
    """Whether an equation linear in its one unknown (2x - 10 = 0) has the number value as its root."""
    import sympy
    try:
        difference, number = _difference(*_split_top_level(equation, "=")), _to_sympy(value)
        if difference is None or number is None or number.free_symbols or len(difference.free_symbols) != 1:
            return False
        unknown = next(iter(difference.free_symbols))
        return sympy.degree(difference, unknown) == 1 and sympy.simplify(difference.subs(unknown, number)) == 0
    except Exception:  # as in _sympy_equal (sympy.degree refuses what is not a polynomial)
        return False


# relations as (operator, side to subtract from): a > b is b - a < 0, so only <, <= and != remain
_CANONICAL = {"<": ("<", 1), "<=": ("<=", 1), ">": ("<", -1), ">=": ("<=", -1), "!=": ("!=", 1)}


def _relation_chain(s):
    """['-2', '<', 'x', '<=', '3'] for '-2<x<=3', alternating expressions and operators; None if s has no
    relation."""
    pieces = re.split(r"(<=|>=|!=|<|>)", s)
    return pieces if len(pieces) > 1 and all(piece.strip() for piece in pieces[::2]) else None


def _canonical_relation(chain):
    """(operator, expression) with the relation as 'expression operator 0' for a single relation."""
    lhs, operator, rhs = chain
    operator, sign = _CANONICAL[operator]
    difference = _difference(lhs, rhs)
    return None if difference is None else (operator, sign * difference)


_SYMPY_RELATIONS = {"<": "Lt", "<=": "Le", ">": "Gt", ">=": "Ge", "!=": "Ne"}


def _real_set(s):
    """(the set of real numbers s describes, its variable or None) for an interval '(a,b]', a relation or a
    chain of them in one variable '-2<x<=3', and unions (\\cup, ',', 'or') and intersections (\\cap, 'and') of
    them. Raises ValueError on anything else."""
    import sympy
    variables = set()

    def readable(latex):
        expression = _to_sympy(latex)
        if expression is None:
            raise ValueError(f"not translatable: {latex}")
        return expression

    def solutions(part):
        if interval := _interval(part):
            left, right, left_open, right_open = interval
            return sympy.Interval(readable(left), readable(right), left_open, right_open)
        chain = _relation_chain(part)
        if chain is None:
            raise ValueError(f"neither an interval nor a relation: {part}")
        sides = [readable(side) for side in chain[::2]]
        variables.update(*(side.free_symbols for side in sides))
        if len(variables) != 1:
            raise ValueError("not one variable")
        variable = next(iter(variables))
        links = [getattr(sympy, _SYMPY_RELATIONS[operator])(left, right)
                 for left, operator, right in zip(sides, chain[1::2], sides[1:])]
        return sympy.Intersection(*(sympy.solveset(link, variable, sympy.S.Reals) for link in links))

    alternatives = _split_top_level(s, "\\cup")
    if len(alternatives) == 1 and "\\cap" not in s:
        alternatives = _split_top_level(s, ",")  # x<-1,x>3: several answers, so either
    real_set = sympy.Union(*(sympy.Intersection(*(solutions(part.strip())
                                                  for part in _split_top_level(alternative, "\\cap")))
                             for alternative in alternatives))
    return real_set, next(iter(variables), None)


def _relations_equal(a, b):
    """Inequalities: equal if one canonical form is a positive multiple of the other (-x > -1 and x < 1, in
    any number of variables), or if they describe the same set of reals (x^3 > 8 and x > 2, 5 <= x and
    [5, \\infty)) in the same variable."""
    import sympy
    try:
        chain_a, chain_b = _relation_chain(a), _relation_chain(b)
        if chain_a and chain_b and len(chain_a) == len(chain_b) == 3:
            (operator_a, p), (operator_b, q) = _canonical_relation(chain_a), _canonical_relation(chain_b)
            ratio = _constant_ratio(p, q) if operator_a == operator_b else None
            if ratio is not None and (operator_a == "!=" or ratio.is_positive):
                return True
        (set_a, variable_a), (set_b, variable_b) = _real_set(a), _real_set(b)
        if variable_a and variable_b and variable_a != variable_b:
            return False
        return set_a == set_b or set_a.symmetric_difference(set_b) == sympy.S.EmptySet
    except Exception:  # as in _sympy_equal; also _real_set's ValueError on what is no set of reals
        return False


# ---------------------------------------------------------------------------------------------------------
# 6. Time limit: sympy runs in worker processes that can be killed from any thread


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
    # Pay for importing sympy (and its solvers, imported on first use) before any time limit starts.
    _deep_equal("\\frac{\\sqrt{2}}{2}", "x(x+1)")
    _deep_equal("x^2>=1", "(-\\infty,-1]\\cup[1,\\infty)")
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
# 7. Grading


def _grade_in_process(response, reference, stopped):
    """The verdict if it is cheap, else the normalised pair of answers that needs a worker."""
    if not stopped:  # hit the length limit: whatever it says, it did not finish
        return False
    a, b = extract_answer(response), extract_answer(reference)
    if a is None or b is None:
        return False
    verdict, a, b = _cheap_verdict(a, b)
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


def majority_correct(samples):
    """maj@k: whether the answer given most often (after normalisation) is right."""
    # only responses that stopped by themselves vote, as only they can earn reward; ties go to the first seen
    voters = [(normalize_answer(s["answer"]), s["correct"]) for s in samples if s["answer"] and s["stopped"]]
    if not voters:
        return False
    winner = Counter(answer for answer, _ in voters).most_common(1)[0][0]
    return next(correct for answer, correct in voters if answer == winner)


if __name__ == "__main__":
    _serve()
