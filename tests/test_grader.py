"""Tests for algorithms/grader.py, one group per rule: answers that must be equal, answers that must not."""
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from algorithms.grader import (_grade_in_process, answers_equal, extract_answer, grade, grade_batch, has_answer,
                               normalize_answer)
from grader_cases import CASES

NO_HANG = 10.0  # seconds: generous, only to prove that nothing hangs; the time limit itself is 2 s
BIG = "1234567890" * 40  # a 400-digit integer
SLOW = "\\boxed{(x+y+z)^{10000}}"  # sympy needs minutes to compare this with x


# --- extraction -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, answer", [
    ("so $\\boxed{3}$, no wait: $\\boxed{4}$.", "4"),                # the last box
    ("$\\boxed{\\frac{1}{\\sqrt{2}}}$", "\\frac{1}{\\sqrt{2}}"),       # nested braces
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),                           # escaped braces are not grouping
    ("\\fbox{7} is it", "7"),
    ("$\\boxed 5$", "5"),
    ("She makes 9 * 2 = $18 a day.\n#### 18", "18"),                # GSM8K
    ("so 80,000+50,000\n#### 1,600\n", "1,600"),
    ("#### Step 1\n2 + 3 = 5\n#### 5\n#### Check\nYes.", "5"),         # markdown headings are not answers
    ("So the final answer is $\\frac{1}{2}$. Done.", "\\frac{1}{2}"),
    ("The answer is 3.5", "3.5"),
    ("the answer is 2. Actually THE ANSWER IS 3.", "3"),             # the last one said
    ("3/4", "3/4"), ("-12", "-12"), ("\\frac{1}{2}", "\\frac{1}{2}"), ("(1, 2)", "(1, 2)"),  # bare references
    ("\\text{Evelyn}", "\\text{Evelyn}"), ("east", "east"), ("5.4 \\text{ cents}", "5.4 \\text{ cents}"),
    ("I got 12 apples and then 1,234 pears", "1,234"),               # the last number in free text
    ("it fell to -5 degrees", "-5"),
    ("that is 0.75 or 3/4 of it", "3/4"),
    ("so 5-3 is left", "3"),
    ("2*1=2, 2+1=3, 3+2=5", "5"),                                     # steps, not a bare answer
])
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer
    assert has_answer(text)


@pytest.mark.parametrize("text", ["\\boxed{}", "$\\boxed{ }$", "\\boxed{5", "I have no idea.", "", "#### \n"])
def test_no_answer(text):
    assert extract_answer(text) is None
    assert not has_answer(text)


# --- normalisation ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, normal", [
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
    ("\\dfrac{1}{2}", "\\frac{1}{2}"), ("\\tfrac12", "\\frac12"),
    ("10,\\!080", "10080"), ("11,\\! 111,\\! 100", "11111100"), ("\\$32,\\!348", "32348"), ("1,234.5", "1234.5"),
    ("(1,234)", "(1,234)"),                                        # a tuple keeps its comma
    ("90^\\circ", "90"), ("90^{\\circ}", "90"), ("50\\%", "50"), ("$x^2$", "x^2"), ("\\(x^2\\)", "x^2"),
    ("15\\mbox{ cm}^2", "15"), ("5.4 \\text{ cents}", "5.4"), ("\\frac{270}7\\text{ degrees}", "\\frac{270}7"),
    ("18 dollars", "18"),
    ("\\text{(C)}", "C"), ("(B)", "B"), ("\\text{Evelyn}", "Evelyn"),
    ("x = 5", "5"), ("y=-2x", "y=-2x"), ("x \\in [-2,7]", "[-2,7]"), ("x=\\text{Evelyn}", "Evelyn"),
    ("5x - 7y + 11z + 4 = 0", "5x-7y+11z+4=0"),                    # an equation keeps its left side
    ("\\cot x", "\\cot x"), ("4210_{5}", "4210_5"), ("3.5.", "3.5"), ("1 \\, 000", "1000"),
])
def test_normalize_answer(raw, normal):
    assert normalize_answer(raw) == normal


# --- numbers: integers, fractions and decimals exact; a decimal reference to the precision it states -------

@pytest.mark.parametrize("a, b, equal", [
    ("-3/4", "\\frac{-3}{4}", True), ("0.5", "1/2", True), ("\\frac34", "0.75", True), (".35625", "0.35625", True),
    ("-\\frac{3}{8}", "-0.375", True), ("1\\frac{4}{5}", "9/5", True), ("137 \\frac{1}{2}", "275/2", True),
    ("1,234", "1234", True), ("\\$18.90", "18.9", True), ("18.00", "18", True),
    ("1000000001", "1000000000", False),                                   # integers: never a tolerance
    ("2/3", "3/2", False), ("1\\frac{4}{5}", "4/5", False), ("-5", "5", False),
])
def test_numbers(a, b, equal):
    assert answers_equal(a, b) == equal
    assert answers_equal(b, a) == equal


@pytest.mark.parametrize("response, reference, equal", [
    ("17", "17.001", False), ("17.001", "17", False),       # neither is a rounding of the other
    ("17.0004", "17", False),                               # an exact reference takes no tolerance at all
    ("0.3333", "1/3", False), ("3.14159", "\\pi", False),     # nor does a rounded answer to an exact one
    ("1/3", "0.33", True), ("0.333", "0.33", True),         # but a reference 0.33 states two decimals
    ("0.34", "0.33", False), ("2.4", "2.45", False),
    ("\\pi", "3.14", True), ("\\frac{\\sqrt{2}}{2}", "0.707", True), ("e", "2.718", True), ("e", "2.719", False),
    ("\\sqrt{2}", "1.41", True), ("\\sqrt{2}", "1.42", False),
])
def test_decimal_reference_states_its_precision(response, reference, equal):
    assert grade(f"\\boxed{{{response}}}", reference) == equal


@pytest.mark.parametrize("response, reference, equal", [
    ("10\\%", "10", True), ("10\\%", "0.1", True), ("0.1", "10\\%", True), ("12.5%", "\\frac18", True),
    ("\\frac13", "33.3\\%", True),                  # 0.333, the precision the reference states
    ("10", "0.1", False), ("1\\%", "0.1", False), ("0.1", "1\\%", False),
])
def test_a_percentage_is_its_number_and_its_hundredths(response, reference, equal):
    assert grade(f"\\boxed{{{response}}}", reference) == equal


def test_400_digit_integers_compare_exactly():
    assert answers_equal(BIG, BIG)
    assert not answers_equal(BIG, BIG[:-1] + "1")  # differs in the last digit
    assert not answers_equal(BIG, "9" + BIG[1:])   # differs in the first digit
    assert grade(f"\\boxed{{{BIG}}}", f"#### {BIG}")


# --- sympy: symbolic equality after our own LaTeX translation ---------------------------------------------

@pytest.mark.parametrize("a, b", [
    ("\\frac{\\sqrt{3}}{2}", "\\sqrt{3}/2"), ("\\sqrt{8}", "2\\sqrt{2}"), ("1.5\\times10^{3}", "1500"),
    ("2\\pi", "\\pi\\cdot 2"), ("3\\pi", "\\frac{6\\pi}{2}"), ("\\sqrt[3]{27}", "3"), ("2^{10}", "1024"),
    ("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt2}{2}"), ("x(x+1)", "x^2+x"), ("\\frac{11+9a}{20}", "\\frac{9a+11}{20}"),
    ("-2+7i", "7i-2"), ("\\cot x", "\\frac{\\cos x}{\\sin x}"), ("e^{i\\pi}", "-1"),
    ("(a+5)(b+2)", "ab+2a+5b+10"),
])
def test_symbolic_equal(a, b):
    assert answers_equal(a, b)


@pytest.mark.parametrize("a, b", [
    ("\\sqrt{2}", "2"), ("\\sqrt{2}", "\\sqrt{3}"), ("x+1", "x-1"), ("2\\pi", "\\pi"), ("3.14", "\\pi"),
    ("3\\sqrt{13}", "\\sqrt{39}"), ("\\frac{1}{\\sqrt{2}}", "\\sqrt{2}"), ("xy", "yx"),  # letters alone are a word
])
def test_symbolic_not_equal(a, b):
    assert not answers_equal(a, b)


# --- structures: tuples and intervals ordered, sets and lists in any order, matrices cell by cell ----------

@pytest.mark.parametrize("a, b, equal", [
    ("(1,2)", "\\left(1, 2\\right)", True), ("(1,2)", "(2,1)", False), ("(\\frac12, 3)", "(0.5,3)", True),
    ("[0,1)", "[0, 1)", True), ("[0,1)", "[0,1]", False), ("(0,1)", "[0,1]", False), ("(1,2)", "1,2", False),
    ("\\{1,2\\}", "\\{2, 1\\}", True), ("\\{1,2\\}", "\\{1,2,3\\}", False),
    ("1, -2", "-2,1", True), ("1,2", "1", False),
    ("\\{1\\pm\\sqrt{5},-2\\}", "-2, 1+\\sqrt5, 1-\\sqrt 5", True),
    ("3 \\pm 2\\sqrt{2}", "3+2\\sqrt{2}, 3-2\\sqrt{2}", True), ("3 \\pm 2\\sqrt{2}", "3+2\\sqrt{2}", False),
    ("(-\\infty, 2) \\cup (3, \\infty)", "(3,\\infty)\\cup(-\\infty,2)", True),
    ("(-\\infty, 2) \\cup (3, \\infty)", "(-\\infty, 2] \\cup (3, \\infty)", False),
    ("\\begin{pmatrix} 1/5 \\\\ -18/5 \\end{pmatrix}", "\\begin{bmatrix}\\frac15\\\\-\\frac{18}{5}\\end{bmatrix}", True),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix} 1 & 2 \\end{pmatrix}", False),
])
def test_structures(a, b, equal):
    assert answers_equal(a, b) == equal


@pytest.mark.parametrize("a, b, equal", [
    ("\\text{(C)}", "C", True), ("\\textbf{(A)}", "A", True), ("(B)", "C", False),
    ("\\text{Evelyn}", "Evelyn", True), ("\\text{Evelyn}", "Navin", False), ("\\text{east}", "East", True),
    ("\\text{east}", "5", False),
])
def test_choices_and_words(a, b, equal):
    assert answers_equal(a, b) == equal


# --- the kinds of answers of issue 18: each by its mathematics --------------------------------------------

@pytest.mark.parametrize("response, reference, right", [
    ("$\\boxed{1}\\boxed{2}$", "1, 2", True), ("$\\boxed{2}$ and $\\boxed{1}$", "1, 2", True),
    ("\\boxed{1 \\text{ and } 2}", "1,2", True), ("\\boxed{6 and 8}", "8, 6", True),
    ("\\boxed{x = -3 \\text{ or } x = 2}", "2, -3", True),
    ("\\boxed{15\\frac{39}{40}} or \\boxed{\\frac{639}{40}}", "\\frac{639}{40}", True),  # one value, twice
    ("$\\boxed{1}\\boxed{2}$", "1", False), ("\\boxed{1 and 3}", "1, 2", False), ("\\boxed{1}", "1, 2", False),
    ("\\boxed{2}, no wait: \\boxed{1}", "1, 2", False),  # a change of mind is not a second answer
])
def test_multiple_answers_are_an_unordered_collection(response, reference, right):
    assert grade(response, reference) == right


@pytest.mark.parametrize("response, reference, right", [
    ("\\boxed{x \\geq 5}", "5 \\le x", True), ("\\boxed{x >= 5}", "x \\ge 5", True),
    ("\\boxed{-x > -1}", "x < 1", True), ("\\boxed{2x - 6 < 0}", "x < 3", True), ("\\boxed{x \\neq 3}", "x != 3", True),
    ("\\boxed{x + y \\leq 1}", "1 - x - y \\geq 0", True),                        # two variables: canonical form
    ("\\boxed{x \\ge 5}", "[5, \\infty)", True), ("\\boxed{-2 < x \\le 2}", "(-2, 2]", True),  # solution sets
    ("\\boxed{x^2 < 4}", "-2 < x < 2", True), ("\\boxed{x \\neq 1}", "(-\\infty, 1) \\cup (1, \\infty)", True),
    ("\\boxed{x < -2 \\text{ or } x > 3}", "(-\\infty, -2) \\cup (3, \\infty)", True),
    ("\\boxed{x > 5}", "x \\geq 5", False), ("\\boxed{x < 1}", "x > 1", False), ("\\boxed{-x > 1}", "x > -1", False),
    ("\\boxed{y \\ge 5}", "x \\ge 5", False), ("\\boxed{-2 < x < 2}", "[-2, 2]", False),
    ("\\boxed{x \\ge 5}", "5", False),
    ("\\boxed{x + y < 1}", "x + y \\le 1", False),
    ("\\boxed{|x - 1| \\le 2}", "[-1, 3]", True), ("\\boxed{\\lvert x \\rvert > 2}", "[-2, 2]", False),
    ("\\boxed{\\{x \\mid x \\neq 2\\}}", "x \\ne 2", True), ("\\boxed{\\{x : x > 2\\}}", "x \\ge 2", False),
])
def test_inequalities_by_canonical_form_or_solution_set(response, reference, right):
    assert grade(response, reference) == right


@pytest.mark.parametrize("response, reference, right", [
    ("\\boxed{y = -\\frac{1}{2}x + \\frac34}", "2x + 4y - 3 = 0", True),       # rearranged and scaled
    ("\\boxed{10x - 14y + 22z + 8 = 0}", "5x - 7y + 11z + 4 = 0", True), ("\\boxed{-y = -2x - 3}", "y = 2x + 3", True),
    ("\\boxed{y = 2x + 3}", "2x + 3", True), ("\\boxed{f(x) = 2x + 3}", "2x + 3", True),  # a named value
    ("\\boxed{3 + 2x = y}", "2x + 3", True), ("\\boxed{5 = x}", "x = 5", True),
    ("\\boxed{y = 2x - 3}", "y = 2x + 3", False), ("\\boxed{x^2 = 4}", "x = 2", False),
    ("\\boxed{0 = 0}", "y = 2x + 3", False), ("\\boxed{2x + 4y = 0}", "2x + 4y - 3 = 0", False),
    ("\\boxed{x - 5 = 0}", "x = 5", True), ("\\boxed{2x = 10}", "5", True),    # the root of a linear equation
    ("\\boxed{x - 5 = 0}", "4", False), ("\\boxed{x^2 = 25}", "5", False),   # x^2 = 25 has two roots
])
def test_equations_equal_up_to_a_nonzero_factor(response, reference, right):
    assert grade(response, reference) == right


PMATRIX = "\\begin{pmatrix} 1 & \\frac{1}{2} \\\\ 0 & \\sqrt{2} \\end{pmatrix}"


@pytest.mark.parametrize("response, reference, right", [
    ("\\boxed{\\begin{bmatrix} 1 & 0.5 \\\\ 0 & \\sqrt2 \\end{bmatrix}}", PMATRIX, True),
    ("\\boxed{\\left[\\begin{array}{cc} 1 & 1/2 \\\\ 0 & \\frac{2}{\\sqrt{2}} \\\\ \\end{array}\\right]}",
     PMATRIX, True),
    ("\\boxed{\\begin{pmatrix} x + 1 \\\\ 2x \\end{pmatrix}}", "\\begin{pmatrix} 1 + x \\\\ x + x \\end{pmatrix}",
     True),
    ("\\boxed{\\begin{pmatrix} 1 & 0 \\\\ \\frac{1}{2} & \\sqrt{2} \\end{pmatrix}}", PMATRIX, False),  # transposed
    ("\\boxed{\\begin{pmatrix} 1 & \\frac{1}{2} & 0 & \\sqrt{2} \\end{pmatrix}}", PMATRIX, False),     # reshaped
    ("\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", "(1, 2)", True),                # a vector
    ("\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", "(2, 1)", False),
    ("\\boxed{(1, \\frac{1}{2}, 0, \\sqrt{2})}", PMATRIX, False),                          # not a vector
])
def test_matrices_entry_by_entry(response, reference, right):
    assert grade(response, reference) == right


@pytest.mark.parametrize("response, reference, right", [
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "(3, \\pi/2)", True), ("\\boxed{(p, q) = (3, 2)}", "(3, 2)", True),
    ("\\boxed{\\{2, 1\\}}", "1, 2", True), ("\\boxed{{1, 2}}", "\\{2, 1\\}", True),
    ("\\boxed{\\left(-\\infty, 2\\right]}", "(-\\infty, 2]", True),
    ("\\boxed{(0,9)\\cup(9,36)}", "(9, 36) \\cup (0, 9)", True), ("\\boxed{\\mathbb{R}}", "(-\\infty, \\infty)", True),
    ("\\boxed{y = 2, x = 3}", "(3, 2)", True), ("\\boxed{\\varnothing}", "\\emptyset", True),
    ("\\boxed{(3, 2)}", "(2, 3)", False), ("\\boxed{(p, q) = (2, 3)}", "(3, 2)", False),
    ("\\boxed{x = 2, y = 3}", "(3, 2)", False), ("\\boxed{x = 3, x = 2}", "(3, 2)", False),
    ("\\boxed{(-\\infty, 2)}", "(-\\infty, 2]", False), ("\\boxed{\\{1, 2\\}}", "(1, 2)", False),
])
def test_sets_intervals_and_tuples(response, reference, right):
    assert grade(response, reference) == right


@pytest.mark.parametrize("response, reference, right", [
    ("\\boxed{125\\textnormal{ miles}}", "125", True), ("\\boxed{3\\,\\text{m/s}}", "3", True),
    ("\\boxed{12 \\mathrm{cm}^2}", "12", True), ("\\boxed{7\\pi\\text{ units}}", "7\\pi", True),
    ("\\boxed{\\text{odd}}", "odd", True),
    ("\\boxed{\\textbf{Odd}}", "odd", True),
    ("\\boxed{\\text{(C) } 4\\sqrt{2}}", "\\text{(C)}", True),                 # a choice with its content
    ("\\boxed{126\\textnormal{ miles}}", "125", False), ("\\boxed{\\text{even}}", "odd", False),
    ("\\boxed{(C) 4\\sqrt{2}}", "\\text{(D)}", False), ("\\boxed{(C), (D)}", "\\text{(C)}", False),
    ("\\boxed{3\\text{ million dollars}}", "3000000", True), ("\\boxed{125 \\text{ thousand}}", "125", False),
    ("\\boxed{7 thousandths}", "7", False),                                 # words that scale are no unit
])
def test_units_and_text(response, reference, right):
    assert grade(response, reference) == right


@pytest.mark.parametrize("response, answer", [
    ("So she pays 4 times, and the final answer is $14{,}916$.", "14{,}916"),
    ("Solving numerically we get $x \\approx 11$", "x \\approx 11"),
    ("The answer is 14.<|im_end|>\n<|im_start|>user\nWhat is 3 + 4?", "14"),
    ("The answer is 14.\nUser: and what is 3 + 4?", "14"),
    ("The answer is 14.\n\nQuestion: Tom has 3 apples. How many? The answer is 3.", "14"),  # few-shot continued
    ("Adding them, $3 \\times 4 = 12$.", "12"), ("So $x = 2 + 3 = 5$.", "5"),
    ("The line is $y = 2x + 3$.", "y = 2x + 3"), ("The roots are $x = \\pm 2$", "x = \\pm 2"),
    ("Answer: 36 marbles", "36 marbles"),
    ("We get $x = 5$ so she has 7 apples left", "7"),   # the last value stated, in math or not
    ("**12**", "12"),                                    # a bare answer in markdown bold
    ("So $x = -4$ or $x = 1$.", "x = -4, x = 1"),         # spans listed together, like boxes
    ("So $x = 3$. Then $y = 4$.", "y = 4"),
    ("I forgot the 4 in the basket, so the answer is $20 + 4 = 24$.", "24"),  # the result of a calculation
])
def test_answers_without_a_box(response, answer):
    assert extract_answer(response) == answer


@pytest.mark.parametrize("response, answer", [
    ("\\boxed{41}, no wait, \\boxed{42}", "42"),
    ("So $\\boxed{41}$. Hmm, I made a mistake: the answer is 42.", "42"),
    ("The answer is 41. No wait, the answer is $\\boxed{42}$.", "42"),
    ("Hence $\\boxed{44}$. Check: $17 \\cdot 44 = 748$, so our answer is correct.", "44"),  # no new value said
    ("Hence $\\boxed{44}$. We check our answer: $17 \\cdot 44 = 748$.", "44"),             # a check, not an answer
])
def test_a_response_that_changes_its_mind_is_graded_on_its_final_answer(response, answer):
    assert extract_answer(response) == answer
    assert grade(response, answer)


@pytest.mark.parametrize("response, reference, right", [
    ("\\boxed{\u22125}", "-5", True), ("\\boxed{3 \u00d7 4}", "12", True), ("\\boxed{12 \u00f7 4}", "3", True),
    ("\\boxed{x \u2265 5}", "x \\ge 5", True), ("\\boxed{x \u2264 5}", "x \\le 5", True),
    ("\\boxed{x \u2260 2}", "x \\neq 2", True),
    ("\\boxed{5\u00a0000}", "5000", True), ("\\boxed{2\u03c0}", "2\\pi", True),
    ("\\boxed{\u00bd}", "0.5", True), ("\\boxed{\u221a8}", "2\\sqrt{2}", True),
    ("\\boxed{3\u20442}", "1.5", True), ("\\boxed{x\u00b2 - 1}", "(x - 1)(x + 1)", True),
    ("\\boxed{\u20131}", "-1", True), ("\\boxed{3\u20135}", "-2", False),  # an en dash as a minus, not in a range
    ("\\boxed{\u22125}", "5", False), ("\\boxed{x \u2265 5}", "x \\le 5", False),
])
def test_unicode_math_is_read_as_latex(response, reference, right):
    assert grade(response, reference) == right


@pytest.mark.parametrize("response, reference, right", [
    ("\\boxed{\\cfrac{1}{2}}", "0.5", True), ("\\boxed{\\tfrac{3}{4}}", "\\frac34", True),
    ("\\boxed{10{,}080}", "10080", True), ("\\boxed{10,\\!080}", "10080", True),
    ("$$\\boxed{7}$$", "7", True), ("\\boxed{3!}", "6", True), ("\\boxed{5!}", "100", False),
    ("\\boxed{120}", "\\binom{10}{3}", True), ("\\boxed{\\binom{10}{7}}", "\\binom{10}{3}", True),
    ("\\boxed{\\binom{10}{4}}", "120", False),
    ("\\boxed{\\log_2 8}", "3", True), ("\\boxed{\\log_{3} 8}", "2", False),
    ("\\boxed{1 - \\cos^2 x}", "\\sin^2 x", True),
    ("\\boxed{\\arctan 1}", "\\frac{\\pi}{4}", True), ("\\boxed{2\\theta}", "\\theta + \\theta", True),
    ("\\boxed{\\frac{1}{6}}", "0.1\\overline{6}", True), ("\\boxed{0.17}", "0.1\\overline{6}", False),
    ("\\boxed{\\cfrac{1}{3}}", "0.5", False),
])
def test_latex_spellings(response, reference, right):
    assert grade(response, reference) == right


def test_no_false_positive_among_the_hand_checked_cases():
    # tests/grader_cases.py: every case whose hand verdict is False (near misses, gaming, a wrong answer in
    # each shape of issue 18) must be graded False; the benchmark reports the agreement on all of them.
    negatives = [case for case in CASES if not case.verdict]
    verdicts = grade_batch([case.response for case in negatives], [case.reference for case in negatives])
    assert [case for case, verdict in zip(negatives, verdicts) if verdict] == []


# --- grading ---------------------------------------------------------------------------------------------

GSM8K_SOLUTION = "She sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs.\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 18"
MATH_SOLUTION = "We have $r = 3$ and $\\theta = \\frac{\\pi}{2}$, so $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.$"


@pytest.mark.parametrize("response, reference, right", [
    ("She makes $\\boxed{18}$ dollars.", GSM8K_SOLUTION, True),
    ("She makes $\\boxed{18.00}$ dollars.", GSM8K_SOLUTION, True),
    ("She makes $\\boxed{19}$ dollars.", GSM8K_SOLUTION, False),
    ("The answer is $(3, \\pi/2)$.", MATH_SOLUTION, True),
    ("So $\\boxed{(3, \\pi)}$.", MATH_SOLUTION, False),
    ("\\boxed{\\dfrac{1}{2}}", "0.5", True),
    ("Thus $\\boxed{\\frac{\\sqrt{3}}{2}}$", "\\boxed{\\frac{\\sqrt3}{2}}", True),   # needs a worker
    ("Thus $\\boxed{\\sqrt{2}}$", "\\boxed{2}", False),                          # needs a worker
    ("I don't know.", "5", False), ("\\boxed{}", "5", False), ("\\boxed{5}", "", False),
])
def test_grade(response, reference, right):
    assert grade(response, reference) == right


def test_unstopped_response_earns_nothing():
    assert grade("\\boxed{18}", "18", stopped=True)
    assert not grade("\\boxed{18}", "18", stopped=False)


def test_cheap_answers_are_graded_in_process():
    # A bool now, not a pair of answers to send to a worker: "14" vs "14" must not wait for sympy.
    for response, reference in [("\\boxed{14}", "14"), ("\\boxed{-3/4}", "\\frac{-3}{4}"), ("\\boxed{0.5}", "1/2"),
                                ("\\boxed{15}", "14"), ("#### 1,234", "1234")]:
        assert isinstance(_grade_in_process(response, reference, True), bool)
    assert _grade_in_process("\\boxed{\\sqrt{8}}", "2\\sqrt{2}", True) == ("\\sqrt{8}", "2\\sqrt{2}")


def test_grade_batch_keeps_order_and_stopped():
    responses = ["\\boxed{14}", "\\boxed{\\sqrt{8}}", "\\boxed{\\sqrt{8}}", "\\boxed{2}", "\\boxed{(1,2)}", "\\boxed{14}"]
    references = ["14", "2\\sqrt{2}", "3", "\\sqrt{4}", "(2,1)", "14"]
    stopped = [True, True, True, True, True, False]
    assert grade_batch(responses, references, stopped) == [True, True, False, True, False, False]
    assert grade_batch(responses[:2], references[:2]) == [True, True]
    assert grade_batch([], []) == []


# --- safety: hostile text is never executed and always gets a verdict in time ------------------------------

HOSTILE = [
    "__import__('os').system('echo hi')", "().__class__.__bases__[0].__subclasses__()", "lambda: 1",
    "open('/etc/passwd')", 'exec("import os")', "9**9**9**9", "10^{10^{10}}", "2^{2^{2^{2^{2}}}}",
    "{" * 5000 + "1" + "}" * 5000, BIG, "\\sqrt{" * 100 + "2" + "}" * 100, "(" * 500 + "1" + ")" * 500,
    "\\frac{1}{0}", "0^{-1}", "(10^{9999})^{9999}", "\\boxed{" * 300, "1" * 5000,
    "(" * 160 + "1" + ",1)" * 160,  # tuples nested 160 deep
    "the answer is 1" + " " * 40000 + "x", "\\(" * 20000,  # a quadratic regex would take many seconds on these
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_input_gets_a_verdict(text):
    start = time.perf_counter()
    verdicts = grade_batch([text, f"\\boxed{{{text}}}", f"\\boxed{{{text}}}"], [text, text, "1"])
    assert all(isinstance(verdict, bool) for verdict in verdicts)
    assert not verdicts[2]
    assert time.perf_counter() - start < NO_HANG


@pytest.mark.parametrize("text", ["10^{10^{10}}", "2^{2^{2^{2^{2}}}}", "9**9**9**9", BIG])
def test_huge_numbers_equal_themselves_and_nothing_else(text):
    assert grade(f"\\boxed{{{text}}}", text)
    assert not grade(f"\\boxed{{{text}}}", text + "+1")


def test_hostile_text_is_never_executed(tmp_path):
    target = tmp_path / "pwned"
    payloads = [f"__import__('pathlib').Path(r'{target}').touch()", f"open(r'{target}','w')",
                f"exec(\"open(r'{target}','w')\")", f"lambda: open(r'{target}','w')"]
    for payload in payloads:
        for reference in [payload, "x", "1"]:
            answers_equal(payload, reference)  # in-process, down to the sympy step
            grade(f"\\boxed{{{payload}}}", reference)
    assert not target.exists()


# --- time limit ------------------------------------------------------------------------------------------

def test_time_limit_turns_a_hang_into_false():
    start = time.perf_counter()
    assert grade_batch([SLOW, "\\boxed{\\sqrt{8}}"], ["x", "2\\sqrt{2}"], timeout=0.5) == [False, True]
    # an inequality and an equation whose comparison expands (x+y+z)^{10000}: the same limit holds
    assert grade_batch(["\\boxed{(x+y+z)^{10000} > 1}", "\\boxed{(x+y+z)^{10000} = 1}"],
                       ["x + y + z > 1", "x + y + z = 1"], timeout=0.5) == [False, False]
    assert grade(SLOW, "x") is False
    assert time.perf_counter() - start < 2 * NO_HANG
    assert grade("\\boxed{\\sqrt{8}}", "2\\sqrt{2}")  # the killed workers were replaced


def test_grading_works_from_another_thread():
    results = {}

    def work():
        results["symbolic"] = grade("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\sqrt{3}/2")
        results["slow"] = grade_batch([SLOW], ["x"], timeout=0.5)

    start = time.perf_counter()
    thread = threading.Thread(target=work)
    thread.start()
    thread.join(NO_HANG)
    assert not thread.is_alive()
    assert results == {"symbolic": True, "slow": [False]}
    assert time.perf_counter() - start < NO_HANG


def test_exit_is_prompt_and_kills_busy_workers():
    # A child interpreter starts grading SLOW on a daemon thread, then exits while the worker computes.
    child = (
        "import json, threading, time\n"
        "from algorithms.grader import _POOL, grade\n"
        f"threading.Thread(target=grade, args=({SLOW!r}, 'x'), daemon=True).start()\n"
        "while not _POOL._live:\n"
        "    time.sleep(0.05)\n"
        "time.sleep(0.3)\n"
        "print(json.dumps([worker.process.pid for worker in _POOL._live]))\n"
    )
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", child], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=NO_HANG, check=True)
    assert time.perf_counter() - start < NO_HANG
    pids = json.loads(done.stdout)
    assert pids
    for pid in pids:
        with pytest.raises(ProcessLookupError):  # killed and reaped at exit, not left running as an orphan
            os.kill(pid, 0)
