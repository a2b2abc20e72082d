"""VESPA scores from questionnaire statements: element scores, overall, ERI (docs/DOMAIN.md, “Scores”).

Pure, read-only functions. Arithmetic is exact (``fractions.Fraction``) so that a mean lying
exactly on a threshold is compared exactly, not through binary floating point. Stored scores are
the truth when present; these recomputations are a consistency check, not a replacement.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fractions import Fraction
from math import floor

from vespa_lib.errors import DecodeError

__all__ = [
    "ELEMENTS",
    "ELEMENT_QUESTIONS",
    "OUTCOME_QUESTIONS",
    "THRESHOLDS",
    "element_score",
    "eri",
    "overall",
    "score_from_mean",
    "scores_from_answers",
]

ELEMENTS = ("vision", "effort", "systems", "practice", "attitude")

# docs/DOMAIN.md, “Scores”: upper bounds of scores 1..9; lower bound inclusive, 10 at or above the last.
THRESHOLDS: dict[str, tuple[float, ...]] = {
    "vision": (2.26, 2.7, 3.02, 3.33, 3.52, 3.84, 4.15, 4.47, 4.79),
    "effort": (2.42, 2.73, 3.04, 3.36, 3.67, 3.86, 4.17, 4.48, 4.8),
    "systems": (2.36, 2.76, 3.16, 3.46, 3.75, 4.05, 4.35, 4.64, 4.94),
    "practice": (1.74, 2.1, 2.46, 2.74, 3.02, 3.3, 3.66, 3.94, 4.3),
    "attitude": (2.31, 2.72, 3.01, 3.3, 3.53, 3.83, 4.06, 4.35, 4.7),
}
# Exact decimal values of the bounds (the float literals above are their spellings).
_BOUNDS = {el: tuple(Fraction(str(b)) for b in bs) for el, bs in THRESHOLDS.items()}

# docs/DOMAIN.md, “Scores” membership; question ids as in fieldmap.yaml.
ELEMENT_QUESTIONS: dict[str, tuple[str, ...]] = {
    "vision": ("q1", "q3", "q14", "q16", "q29_vision_grades"),
    "effort": ("q6", "q9", "q17", "q21"),
    "systems": ("q2", "q4", "q11", "q18", "q22"),
    "practice": ("q7", "q12", "q15", "q19", "q23", "q25"),
    "attitude": ("q5", "q8", "q10", "q13", "q20", "q24", "q26", "q27", "q28"),
}
OUTCOME_QUESTIONS: tuple[str, ...] = ("outcome_q_support", "outcome_q_equipped", "outcome_q_confident")


def _check(values: Sequence[int], low: int, high: int, what: str) -> None:
    if not values:
        raise DecodeError("blank", values, f"No {what} given: at least one value is needed to compute a score.")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            raise DecodeError(
                f"{what}_out_of_range", v,
                f"{what} {v!r} is not an integer in {low}..{high}. Decode values with vespa_lib.rules.knack first.",
            )


def score_from_mean(element: str, mean: Fraction | float | int) -> int:
    """Map an element's statement mean to 1..10 (lower bound inclusive). A float is read as its
    shortest decimal spelling (``2.26`` means 2.26, not the binary value just below it)."""
    if element not in _BOUNDS:
        raise KeyError(f"Unknown element {element!r}; expected one of {', '.join(ELEMENTS)}.")
    m = Fraction(repr(mean)) if isinstance(mean, float) else Fraction(mean)
    return 1 + sum(1 for bound in _BOUNDS[element] if m >= bound)


def element_score(element: str, answers: Sequence[int]) -> int:
    """Element score 1..10 from that element's statement answers (each 1..5)."""
    _check(answers, 1, 5, "answer")
    return score_from_mean(element, Fraction(sum(answers), len(answers)))


def overall(vision: int, effort: int, systems: int, practice: int, attitude: int) -> int:
    """Overall = mean of the five element scores rounded to nearest, halves rounded up.

    Python's round() rounds halves to even; we round half up. With five integer scores the mean's
    fraction is a multiple of 1/5, so an exact half never occurs; the rule is stated for safety.
    """
    values = [vision, effort, systems, practice, attitude]
    _check(values, 0, 10, "score")
    return floor(Fraction(sum(values), 5) + Fraction(1, 2))


def eri(support: int, equipped: int, confident: int) -> float:
    """Student ERI = mean of the three outcome answers (1..5), rounded to 3 decimal places."""
    values = [support, equipped, confident]
    _check(values, 1, 5, "answer")
    # Means of three integers end in .000, .333 or .667: no rounding tie can arise.
    return round(sum(values) / 3, 3)


def scores_from_answers(answers: Mapping[str, int | None]) -> dict[str, int | float | None]:
    """Element scores, overall and (if all three outcome answers exist) ERI from one cycle's answers.

    ``answers`` maps question id → answer. Only values 1..5 count (0 = not answered, docs/DOMAIN.md, “Knack fields”).
    An element is computed only when all its statements are answered (never from a guess);
    otherwise it is None, and so is overall. ``eri`` is present only when all outcomes are answered.
    """
    def valid(q: str) -> int | None:
        v = answers.get(q)
        return v if isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 5 else None

    result: dict[str, int | float | None] = {}
    for element, questions in ELEMENT_QUESTIONS.items():
        values = [valid(q) for q in questions]
        result[element] = None if None in values else element_score(element, values)
    parts = [result[e] for e in ELEMENTS]
    result["overall"] = None if None in parts else overall(*parts)
    outcomes = [valid(q) for q in OUTCOME_QUESTIONS]
    if None not in outcomes:
        result["eri"] = eri(*outcomes)
    return result
