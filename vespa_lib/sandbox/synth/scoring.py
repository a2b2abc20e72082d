"""Vectorised element scores for generated answers, using the rules of ``vespa_lib.rules.scores``.

An element score depends only on the sum of its statements (their count is fixed), so we ask
``scores.element_score`` once per possible sum and look the table up with numpy. Read-only.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from vespa_lib.rules import scores
from vespa_lib.rules.fieldmap import question_ids

QIDS: tuple[str, ...] = tuple(question_ids())
QINDEX = {q: i for i, q in enumerate(QIDS)}
SCORE_COLUMNS = ("vision", "effort", "systems", "practice", "attitude", "overall")


def _composition(total: int, n: int, low: int, high: int) -> list[int]:
    """n integers in low..high summing to total (any composition: only the mean matters)."""
    values = [low] * n
    rest = total - low * n
    for i in range(n):
        step = min(high - low, rest)
        values[i] += step
        rest -= step
    return values


@lru_cache(maxsize=1)
def _tables() -> tuple[dict[str, np.ndarray], np.ndarray]:
    elements = {}
    for el, qs in scores.ELEMENT_QUESTIONS.items():
        n = len(qs)
        table = np.zeros(5 * n + 1, dtype=np.int8)
        for s in range(n, 5 * n + 1):
            table[s] = scores.element_score(el, _composition(s, n, 1, 5))
        elements[el] = table
    overall = np.zeros(51, dtype=np.int8)
    for s in range(5, 51):
        overall[s] = scores.overall(*_composition(s, 5, 1, 10))
    return elements, overall


def score_matrix(answers: np.ndarray) -> np.ndarray:
    """(k, 32) clean answers 1..5 → (k, 6) scores V E S P A Overall (int8)."""
    elements, overall = _tables()
    out = np.zeros((answers.shape[0], 6), dtype=np.int8)
    for j, (el, qs) in enumerate(scores.ELEMENT_QUESTIONS.items()):
        cols = [QINDEX[q] for q in qs]
        out[:, j] = elements[el][answers[:, cols].sum(axis=1, dtype=np.int64)]
    out[:, 5] = overall[out[:, :5].sum(axis=1, dtype=np.int64)]
    return out


def random_answers(rng: np.random.Generator, count: int) -> np.ndarray:
    """(count, 32) plausible Likert answers, each respondent with its own leaning."""
    lean = rng.uniform(-1.2, 1.0, size=(count, 1))
    raw = np.rint(3.5 + lean + rng.normal(0.0, 0.85, size=(count, len(QIDS))))
    return np.clip(raw, 1, 5).astype(np.int8)
