"""Australian calendar-year schools keep their own running year, through ``vespa-ops run``.

On 15/03/2026 a calendar-year school (``is_australian`` true, ``use_standard_year`` false) is in
``2026/2026`` (its year started in late January) while UK-rule schools are in ``2025/2026``: the
sync writes each school's running year. On 1 January 2027 ``2026/2026`` is closed and protected by
the same plan → approve → apply rollover as the 1 August one, for calendar-year schools only
(docs/YEARLY_PROCEDURE.md, "Australian calendar-year schools (1 January)").

Demo-like data: the generated snapshot imported (``import`` apply, ``approve=auto``), then the
generated fresh export of 2026-03-15 synced (``sync_check`` apply, ``approve=auto``).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from datetime import date
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from test_plan import _STUDENT_SCHEMA

from vespa_lib.ops import cli
from vespa_lib.sandbox import synth
from vespa_lib.sandbox.synth.fresh import generate_fresh_export
from vespa_lib.write.guard import table_checksums
from vespa_lib.write.plan import Desired, plan_changes

pytestmark = [pytest.mark.notebook, pytest.mark.slow]
REPO = Path(__file__).resolve().parent.parent
AS_OF = date(2026, 3, 15)
UK, CAL, CAL_NEXT = "2025/2026", "2026/2026", "2026/2027"
O10 = "FullObject_10_2026-03-15.csv"
DATA = ["students", "vespa_scores", "question_responses", "academic_years", "school_statistics", "national_statistics"]


def vespa_ops(outputs: Path, runbook: str, params_file: str, **params) -> tuple[int, dict]:
    """``vespa-ops run <runbook> -f params/demo/<file> -p k=v ...``: exit code and the run's manifest."""
    argv = ["--notebooks", str(REPO / "notebooks"), "--outputs", str(outputs), "run", runbook,
            "-f", str(REPO / "params" / "demo" / params_file)]
    argv += [f"-p{k}={json.dumps(v)}" for k, v in params.items()]
    seen = set(outputs.rglob("manifest.json"))
    code = cli.main(argv)
    (path,) = set(outputs.rglob("manifest.json")) - seen
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest["_folder"] = str(path.parent)
    return code, manifest


def checks(manifest: dict) -> dict[str, bool]:
    return {c["name"]: c["passed"] for c in manifest["checks"]}


def calendar_school(con) -> tuple[str, str]:
    return con.execute("SELECT knack_id, CAST(id AS VARCHAR) FROM establishments WHERE is_australian "
                       "AND use_standard_year = false ORDER BY knack_id LIMIT 1").fetchone()


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Path:
    """Snapshot, damaged database with 2024/2025 imported and archived, fresh export of 2026-03-15."""
    out = tmp_path_factory.mktemp("calendar")
    synth.generate(out, students=300, seed=2025)
    generate_fresh_export(out, as_of=AS_OF)
    return out


@pytest.fixture(scope="module")
def planted(imported, tmp_path_factory) -> tuple[Path, dict]:
    """The fresh export with one calendar-year school's one-cycle record completed on 02/03/2026."""
    con = duckdb.connect(str(imported / "production.duckdb"), read_only=True)
    knack_id, _ = calendar_school(con)
    con.close()
    export = tmp_path_factory.mktemp("planted") / "fresh_export"
    shutil.copytree(imported / "fresh_export", export)
    text = (export / O10).read_text(encoding="utf-8-sig")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = list(reader)
    with (imported / "fresh_truth.csv").open(encoding="utf-8") as fh:
        truth = [r for r in csv.DictReader(fh) if r["object"] == "object_10" and r["expected"] == "sync"
                 and r["establishment_knack_id"] == knack_id and r["expected_score_rows"] == "1"]
    rec = truth[0]
    row = next(r for r in rows if r["id"] == rec["record_id"])
    row["field_855_date"] = "02/03/2026 10:15"  # cycle 1, completed during the school's 2026 year
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, reader.fieldnames, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    (export / O10).write_text(buf.getvalue(), encoding="utf-8-sig")
    return export, rec


@pytest.fixture(scope="module")
def synced(imported, planted, tmp_path_factory) -> tuple[Path, dict]:
    """The database after the import and one applied sync_check on 2026-03-15 (module copy)."""
    folder = tmp_path_factory.mktemp("synced")
    db = folder / "p.duckdb"
    shutil.copyfile(imported / "production.duckdb", db)
    code, manifest = vespa_ops(folder / "out", "import", "import.yaml", snapshot_dir=str(imported / "snapshot"),
                               target=f"duckdb:{db}", backup_dir=str(folder / "bk"), mode="apply", approve="auto",
                               sample_students=20)
    assert code == 0, manifest.get("error") or manifest["checks"]
    code, manifest = vespa_ops(folder / "out", "sync_check", "sync_check.yaml", source=f"csv:{planted[0]}",
                               target=f"duckdb:{db}", as_of=AS_OF.isoformat(), mode="apply", approve="auto")
    return db, {"code": code, "manifest": manifest}


def test_sync_check_writes_the_calendar_schools_2026_cycle_1_as_2026_2026(synced, planted):
    db, run = synced
    _, rec = planted
    assert run["code"] == 0, {c["name"]: c["detail"] for c in run["manifest"]["checks"] if not c["passed"]}
    con = duckdb.connect(str(db), read_only=True)
    try:
        _, est = calendar_school(con)
        row = con.execute("SELECT s.academic_year, v.cycle, v.academic_year, v.completion_date FROM students s "
                          "JOIN vespa_scores v ON v.student_id = s.id WHERE s.email = ? AND s.academic_year = ?",
                          [rec["email"], CAL]).fetchall()
        assert row == [(CAL, 1, CAL, date(2026, 3, 2))]
        # UK-rule schools stay in 2025/2026; the calendar school's synced students are in 2026/2026 (its
        # 2025/2026 rows left are those of records set aside, kept as they are: never deleted while in Knack)
        labels = dict(con.execute("SELECT CASE WHEN establishment_id = CAST(? AS UUID) THEN 'calendar' ELSE 'uk' END, "
                                  "list(DISTINCT academic_year ORDER BY academic_year) FROM students "
                                  "WHERE academic_year NOT IN ('2024/2025', '2024/2024') GROUP BY 1", [est]).fetchall())
        assert labels["uk"] == [UK] and CAL in labels["calendar"] and "2025/2025" not in labels["calendar"]
        # counted nationally in its benchmark year 2026/2027 (DOMAIN: Y/Y counts in Y/Y+1)
        assert con.execute("SELECT count(*) FROM national_statistics WHERE academic_year = ?", [CAL_NEXT]).fetchone()[0]
    finally:
        con.close()
    proof = next(c for c in run["manifest"]["checks"] if c["name"] == "running_year_per_establishment")
    assert proof["passed"] and proof["figures"]["calendar_running_year"] == CAL
    unsyncable = Path(run["manifest"]["_folder"])
    set_aside = "".join(p.read_text(encoding="utf-8") for p in unsyncable.rglob("unsyncable*.csv"))
    assert rec["record_id"] not in set_aside


def test_1_january_closes_the_calendar_year_for_calendar_schools_only(synced, planted, tmp_path):
    src, _ = synced
    db = tmp_path / "jan.duckdb"
    shutil.copyfile(src, db)
    common = {"target": f"duckdb:{db}", "mode": "rollover", "as_of": "2027-01-01", "rehearsal_copy": False}
    con = duckdb.connect(str(db), read_only=True)
    before = table_checksums(con, DATA)
    con.close()
    code, plan = vespa_ops(tmp_path / "out", "year_transition", "year_transition.yaml", **common)
    assert code == 0 and len(plan["plan_fingerprint"]) == 64  # without approval: a plan, nothing written
    con = duckdb.connect(str(db), read_only=True)
    assert table_checksums(con, DATA) == before
    con.close()
    code, applied = vespa_ops(tmp_path / "out", "year_transition", "year_transition.yaml", **common,
                              approve=plan["plan_fingerprint"])
    ran = checks(applied)
    assert ran["rollover_applied"] and ran["rollover_verified_empty"] and ran["closed_year_frozen"], ran
    assert code == 0, {c["name"]: c["detail"] for c in applied["checks"] if not c["passed"]}
    assert applied["rollover"]["rollover"]["close"] == CAL
    con = duckdb.connect(str(db), read_only=True)
    try:
        marked = dict(con.execute("SELECT academic_year, bool_and(is_archived) FROM students GROUP BY 1").fetchall())
        assert marked[CAL] is True and marked[UK] is False  # the UK year keeps running
        years_table = {r[0]: r[1:] for r in con.execute("SELECT academic_year, is_current, is_archived "
                                                        "FROM academic_years").fetchall()}
        assert years_table[CAL] == (False, True) and years_table[UK] == (True, False)
        assert "2027/2027" not in years_table and "2026/2027" not in years_table
    finally:
        con.close()

    # the closed calendar year is protected: the guard refuses a write to it
    con = duckdb.connect(str(db))
    try:
        frozen = table_checksums(con, DATA)
        row = con.execute("SELECT email FROM students WHERE academic_year = ? ORDER BY email LIMIT 1", [CAL]).fetchone()
        want = Desired({"students": pa.Table.from_pylist([{"email": row[0], "academic_year": CAL, "knack_id": "k",
                                                           "name": "Overwritten"}], schema=_STUDENT_SCHEMA)},
                       years=[CAL])
        plan_ = plan_changes(con, want)
        assert plan_.refused_reasons["students"].get("archived_year") == 1
        assert table_checksums(con, DATA) == frozen
    finally:
        con.close()
    # and re-running the March sync, whose calendar year is now closed, is refused: nothing written
    code, late = vespa_ops(tmp_path / "out", "sync_check", "sync_check.yaml",
                           source=f"csv:{planted[0]}", target=f"duckdb:{db}", as_of=AS_OF.isoformat(),
                           mode="apply", approve="auto")
    assert code == 1 and not checks(late)["no_archived_year_rows"]
    con = duckdb.connect(str(db), read_only=True)
    assert table_checksums(con, DATA) == frozen
    con.close()
