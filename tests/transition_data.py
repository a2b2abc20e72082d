"""A small, complete history for the year_transition tests: 2024/2025 imported and archived (with an
Australian calendar year 2024/2024 and a test account), 2025/2026 synced on three nights.

Built only through the guard (``apply_plan``), which is the path the importer and the sync take, so
the ledger rows are the real ones. Shared by test_transition.py and test_transition_pg.py.
"""

from __future__ import annotations

from datetime import date

import pyarrow as pa
from test_plan import _ANSWER_SCHEMA, _SCORE_SCHEMA, _STUDENT_SCHEMA, EST_A, EST_B, migrate, seed, students

from vespa_lib.rules.scores import OUTCOME_QUESTIONS
from vespa_lib.sync import recompute_statistics
from vespa_lib.write.guard import apply_plan
from vespa_lib.write.plan import Desired, plan_changes

OLD, CUR, NEXT = "2024/2025", "2025/2026", "2026/2027"
CAL_OLD, CAL_CUR = "2024/2024", "2025/2025"
NIGHTS = (date(2026, 3, 13), date(2026, 3, 14), date(2026, 3, 15))
AS_OF = NIGHTS[-1]
SCORES = ("vision", "effort", "systems", "practice", "attitude", "overall")
DATA = ["students", "vespa_scores", "question_responses", "academic_years", "school_statistics",
        "national_statistics"]


def history(rows: list[dict], cycles=(1, 2)) -> dict[str, pa.Table]:
    """Students with varied scores per cycle and answers to q1 plus the three outcome questions."""
    scores, answers = [], []
    for i, r in enumerate(rows):
        for c in cycles:
            value = 1 + (i * 3 + c) % 10
            scores.append({"email": r["email"], "academic_year": r["academic_year"], "cycle": c,
                           **{e: value for e in SCORES}, "completion_date": date(int(r["academic_year"][:4]), 10, c)})
            for j, qid in enumerate(("q1", *OUTCOME_QUESTIONS)):
                answers.append({"email": r["email"], "academic_year": r["academic_year"], "cycle": c,
                                "question_id": qid, "response_value": 1 + (i + j + c) % 5})
    return {"students": pa.Table.from_pylist(rows, schema=_STUDENT_SCHEMA),
            "vespa_scores": pa.Table.from_pylist(scores, schema=_SCORE_SCHEMA),
            "question_responses": pa.Table.from_pylist(answers, schema=_ANSWER_SCHEMA)}


def guarded(con, want: Desired, run_id: str, runbook: str, **kw):
    plan = plan_changes(con, want, archive_years=kw.get("archive_years", ()))
    return apply_plan(con, want, approve=plan.fingerprint, run_id=run_id, runbook=runbook, actor="pytest",
                      recompute=recompute_statistics, **kw)


def old_rows() -> list[dict]:
    test = students(OLD, EST_A, 1, prefix="tester")
    test[0]["email"] = "tester@vespa.academy"  # F15: imported, never counted
    return students(OLD, EST_A, 5) + students(CAL_OLD, EST_B, 3, prefix="au") + test


def cur_want() -> Desired:
    rows = students(CUR, EST_A, 4, prefix="c") + students(CAL_CUR, EST_B, 2, prefix="auc") + students(CUR, EST_A, 1)
    return Desired(history(rows, cycles=(1,)), years=[CUR, CAL_CUR])


def build(con) -> None:
    """Seed, migrate, import 2024/2025 (archived), sync 2025/2026 on each of NIGHTS."""
    seed(con)
    con.execute(f"UPDATE establishments SET is_australian = true, use_standard_year = false WHERE id = '{EST_B}'")
    migrate(con)
    guarded(con, Desired(history(old_rows()), years=[OLD, CAL_OLD]), "import-1", "import",
            archive_years=[OLD, CAL_OLD])
    for i, night in enumerate(NIGHTS):
        guarded(con, cur_want(), f"sync-{i}", "sync_check", parameters={"as_of": night.isoformat()})
