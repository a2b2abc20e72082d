"""Element scores, overall and ERI (docs/DOMAIN.md, “Scores”)."""

from __future__ import annotations

from fractions import Fraction
from math import floor

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vespa_lib.errors import DecodeError
from vespa_lib.rules import fieldmap, scores

# docs/DOMAIN.md, “Scores” worked example: cycle 1, completed 22/09/2025 09:42.
EXAMPLE = {
    "vision": [3, 4, 4, 5, 4],
    "effort": [3, 5, 4, 5],
    "systems": [5, 4, 4, 5, 4],
    "practice": [4, 5, 4, 2, 2, 2],
    "attitude": [3, 4, 3, 3, 4, 2, 3, 5, 3],
}
EXAMPLE_SCORES = {"vision": 7, "effort": 8, "systems": 8, "practice": 6, "attitude": 5}


def _answers_with_sum(total: int, n: int = 100) -> list[int]:
    """n Likert answers (1..5) whose sum is exactly ``total``."""
    extra, answers = total - n, [1] * n
    for i in range(n):
        step = min(4, extra)
        answers[i] += step
        extra -= step
    assert extra == 0 and sum(answers) == total
    return answers


@pytest.mark.parametrize(("element", "answers"), EXAMPLE.items())
def test_worked_example_elements(element, answers):
    assert scores.element_score(element, answers) == EXAMPLE_SCORES[element]


def test_worked_example_overall_and_full_answer_set():
    assert scores.overall(*EXAMPLE_SCORES.values()) == 7
    answers = {q: a for el, qs in scores.ELEMENT_QUESTIONS.items() for q, a in zip(qs, EXAMPLE[el], strict=True)}
    answers.update(zip(scores.OUTCOME_QUESTIONS, (4, 4, 3), strict=True))
    assert scores.scores_from_answers(answers) == {**EXAMPLE_SCORES, "overall": 7, "eri": 3.667}


EDGES = [
    (element, i, bound)
    for element, bounds in scores.THRESHOLDS.items()
    for i, bound in enumerate(bounds)
]


@pytest.mark.parametrize(("element", "index", "bound"), EDGES, ids=[f"{e}-{b}" for e, _, b in EDGES])
def test_every_threshold_edge(element, index, bound):
    """A mean exactly at a bound gets the higher score; just below gets the lower (docs/DOMAIN.md, “Scores”)."""
    higher, lower = index + 2, index + 1
    exact = Fraction(str(bound))
    assert scores.score_from_mean(element, exact) == higher
    assert scores.score_from_mean(element, bound) == higher  # the float spelling of the bound
    assert scores.score_from_mean(element, exact - Fraction(1, 10**9)) == lower
    # The same through real answers: 100 statements summing to bound*100, and one point less.
    total = int(exact * 100)
    assert scores.element_score(element, _answers_with_sum(total)) == higher
    assert scores.element_score(element, _answers_with_sum(total - 1)) == lower


@pytest.mark.parametrize("element", scores.ELEMENTS)
def test_score_extremes(element):
    assert scores.element_score(element, [1, 1, 1]) == 1
    assert scores.element_score(element, [5, 5, 5]) == 10


@pytest.mark.parametrize(("values", "expected"), [
    ((7, 8, 8, 6, 5), 7),  # 6.8
    ((1, 1, 1, 1, 2), 1),  # 1.2
    ((1, 1, 1, 2, 2), 1),  # 1.4 rounds down
    ((1, 1, 2, 2, 2), 2),  # 1.6 rounds up
    ((0, 0, 0, 0, 0), 0),
    ((10, 10, 10, 10, 10), 10),
    ((10, 10, 10, 10, 9), 10),  # 9.8
])
def test_overall(values, expected):
    assert scores.overall(*values) == expected


@given(st.tuples(*[st.integers(0, 10)] * 5))
def test_overall_is_nearest_and_never_a_tie(values):
    mean = Fraction(sum(values), 5)
    assert mean - floor(mean) != Fraction(1, 2)  # why half-up vs banker's never matters with 5 scores
    assert scores.overall(*values) == floor(mean + Fraction(1, 2))
    assert abs(scores.overall(*values) - mean) < Fraction(1, 2)


@pytest.mark.parametrize(("answers", "expected"), [
    ((4, 4, 3), 3.667),  # docs/DOMAIN.md, “Scores”
    ((5, 5, 5), 5.0),
    ((1, 1, 2), 1.333),
    ((1, 2, 2), 1.667),
])
def test_eri(answers, expected):
    assert scores.eri(*answers) == expected


@pytest.mark.parametrize(("call", "reason"), [
    (lambda: scores.eri(0, 4, 4), "answer_out_of_range"),
    (lambda: scores.eri(4, 6, 4), "answer_out_of_range"),
    (lambda: scores.element_score("vision", [3, 0]), "answer_out_of_range"),
    (lambda: scores.element_score("vision", [3, True]), "answer_out_of_range"),
    (lambda: scores.element_score("vision", []), "blank"),
    (lambda: scores.overall(7, 8, 8, 6, 11), "score_out_of_range"),
    (lambda: scores.overall(7, 8, 8, 6, "5"), "score_out_of_range"),
])
def test_invalid_inputs_raise(call, reason):
    with pytest.raises(DecodeError) as err:
        call()
    assert err.value.reason == reason


def test_unknown_element():
    with pytest.raises(KeyError):
        scores.element_score("courage", [3])


@given(st.dictionaries(st.sampled_from([q.question_id for q in fieldmap.load().questions]), st.integers(0, 5)))
def test_scores_from_partial_answers(answers):
    """Only complete elements are scored (0 = not answered); overall needs all five."""
    result = scores.scores_from_answers(answers)
    for element, questions in scores.ELEMENT_QUESTIONS.items():
        complete = all(answers.get(q, 0) >= 1 for q in questions)
        assert (result[element] is not None) is complete
        if complete:
            assert result[element] == scores.element_score(element, [answers[q] for q in questions])
    assert (result["overall"] is None) is any(result[e] is None for e in scores.ELEMENTS)
    assert ("eri" in result) is all(answers.get(q, 0) >= 1 for q in scores.OUTCOME_QUESTIONS)


def test_membership_matches_fieldmap():
    """Every non-outcome question is in exactly one element, the one fieldmap.yaml names."""
    questions = fieldmap.load().questions
    placed = [(q, el) for el, qs in scores.ELEMENT_QUESTIONS.items() for q in qs]
    assert len(placed) == len({q for q, _ in placed})
    assert sorted(placed) == sorted((q.question_id, q.element) for q in questions if q.element != "outcome")
    assert scores.OUTCOME_QUESTIONS == tuple(q.question_id for q in questions if q.element == "outcome")
    assert len(placed) + len(scores.OUTCOME_QUESTIONS) == 32
    assert set(scores.THRESHOLDS) == set(scores.ELEMENT_QUESTIONS) == set(scores.ELEMENTS)
    assert all(len(b) == 9 and list(b) == sorted(b) for b in scores.THRESHOLDS.values())
