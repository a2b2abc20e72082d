"""profile: the csv_profile logic on generated data (checked against the generator's truth file and
independent Python reads of the CSV) and on hand-made fixtures for the year rules and date decoding."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from vespa_lib import profile
from vespa_lib.rules import knack
from vespa_lib.sandbox import synth
from vespa_lib.sources import snapshot

SCORE_HEADERS = [f"field_{n}" for n in (*range(147, 153), *range(155, 173))]


def _generate(tmp_path_factory, name: str, **kw) -> Path:
    out = tmp_path_factory.mktemp(name)
    synth.generate(out, seed=2025, **kw)
    return out


def _profile(out: Path) -> tuple[snapshot.Snapshot, profile.Profile, pd.DataFrame]:
    snap = snapshot.open_snapshot(out / "snapshot")
    with duckdb.connect(str(out / "production.duckdb"), read_only=True) as db:
        prof = profile.profile_snapshot(snap, db=db)
    return snap, prof, pd.read_csv(out / "truth.csv", dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = _generate(tmp_path_factory, "gen", students=300)
    return (out, *_profile(out))


@pytest.fixture(scope="module")
def generated_133(tmp_path_factory):
    out = _generate(tmp_path_factory, "gen133", students=150, include_field_133=True)
    return (out, *_profile(out))


def _csv_rows(path: Path) -> list[dict]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


def test_record_and_line_numbers_match_truth(generated):
    out, snap, prof, truth = generated
    for obj, table in (("object_10", "o10"), ("object_29", "o29")):
        got = snap.con.execute(f"SELECT id, _record, _line FROM {table}").df()
        want = truth[truth["object"] == obj][["record_id", "record_number", "start_line"]].astype(
            {"record_number": int, "start_line": int})
        merged = want.merge(got, left_on="record_id", right_on="id", how="outer", indicator=True)
        assert (merged["_merge"] == "both").all()
        assert (merged["record_number"] == merged["_record"]).all()
        assert (merged["start_line"] == merged["_line"]).all()


def test_object_10_records_are_not_lines(generated):
    out, snap, prof, truth = generated
    path = out / "snapshot" / "FullObject_10_2025.csv"
    row = prof.files.set_index("object").loc["object_10"]
    assert row["records"] == (truth["object"] == "object_10").sum() == len(_csv_rows(path))
    assert row["physical_lines"] == path.read_bytes().count(b"\n")
    assert row["physical_lines"] > 10 * row["records"]  # F5: multi-line comment cells
    assert row["physical_lines"] == 1 + row["records"] + row["line_breaks_in_cells"]


def test_missing_field_133_is_a_blocker_with_coverage_from_truth(generated):
    out, snap, prof, truth = generated
    assert len(prof.blockers) == 1 and "field_133" in prof.blockers[0]
    assert prof.blockers_without_fallback == []
    cov = prof.establishment.set_index("method")
    assert int(cov["records"].sum()) == snap.records("object_10")
    assert cov.loc["connection", "records"] == 0
    rules = truth[truth["object"] == "object_10"]["establishment_rule"].value_counts()
    for method in ("object_6", "email_domain"):
        assert cov.loc[method, "in_database"] == rules.get(method, 0) > 0
    assert cov.loc["none", "records"] > 0
    assert f"{cov.loc['object_6', 'records']:,} via object_6" in prof.blockers[0]
    mapping = json.loads(json.dumps(prof.field_mapping(), default=str))
    assert mapping["objects"]["object_10"]["blockers"][0]["column"] == "establishment"
    assert mapping["read_spec"]["all_varchar"] is True


def test_with_field_133_there_is_no_blocker(generated_133):
    out, snap, prof, truth = generated_133
    assert prof.blockers == []
    cov = prof.establishment.set_index("method")
    rules = truth[truth["object"] == "object_10"]
    # The truth's chain stops at a missing or invalid email before the establishment; the profile
    # still counts those records' connections.
    no_email = rules["reason"].isin(["no_email", "invalid_email"]).sum()
    assert cov.loc["connection", "in_database"] == (rules["establishment_rule"] == "connection").sum() + no_email
    unknown = (rules["reason"] == "unknown_establishment").sum()
    assert cov.loc["connection", "records"] - cov.loc["connection", "in_database"] == unknown


def test_date_formats_and_reasons_match_truth(generated):
    out, snap, prof, truth = generated
    rows = _csv_rows(out / "snapshot" / "FullObject_10_2025.csv")
    dates = prof.dates[(prof.dates["object"] == "object_10") & (prof.dates["column"] == "completion_date")]
    assert set(dates["format"]) == {"DD/MM/YYYY", "DD/MM/YYYY HH:MM", "ISO", "other"}
    assert dates["records"].sum() == sum(1 for r in rows if r["field_855_date"].strip())
    problems = prof.problems.set_index(["object", "column", "reason"])["records"]
    o10 = truth[truth["object"] == "object_10"]
    bad_dates = problems.loc[("object_10", "completion_date")].sum()
    assert bad_dates == (o10["reason"] == "bad_date").sum() == int((dates["records"] - dates["parsed"]).sum())
    assert problems.loc[("object_10", "email", "invalid_email")] == (o10["reason"] == "invalid_email").sum()
    assert problems.loc[("object_10", "email", "blank")] == (o10["reason"] == "no_email").sum()


def test_duplicates_match_truth(generated):
    out, snap, prof, truth = generated
    dup = prof.duplicates.set_index(["object", "key"])
    collapsed = (truth["reason"] == "duplicate_record").sum()
    assert collapsed > 0
    assert dup.loc[("object_10", "email"), "duplicated_values"] == collapsed
    assert dup.loc[("object_10", "email"), "records_involved"] == 2 * collapsed
    assert (dup.xs("id", level="key")["duplicated_values"] == 0).all()


def test_scores_and_reenrolled_against_independent_reads(generated):
    out, snap, prof, truth = generated
    rows = _csv_rows(out / "snapshot" / "FullObject_10_2025.csv")
    decimal = sum(1 for r in rows for h in SCORE_HEADERS if re.fullmatch(r"\d+\.0+", r[h].strip()))
    assert decimal > 0 and prof.scores["decimal_text"].sum() == decimal
    assert prof.scores["min"].min() >= 0 and prof.scores["max"].max() <= 10
    emails = {knack.decode_email(r["field_197_email"]).value for r in rows} - {None}
    with duckdb.connect(str(out / "production.duckdb"), read_only=True) as db:
        other = {e.strip().lower() for (e,) in db.execute(
            "SELECT email FROM students WHERE academic_year <> ?", ["2024/2025"]).fetchall()}
    found = prof.reenrolled.set_index("finding")["students"]
    assert found.loc["email already in the database under another year"] == len(emails & other) > 0
    assert found.loc["same email, two record ids in object_10"] == (truth["reason"] == "duplicate_record").sum()


# ------------------------------------------------------------------------------ hand-made fixtures

def _fixture(tmp_path: Path, o10_rows: list[list[str]]) -> Path:
    folder = tmp_path / "snap"
    folder.mkdir()
    files = {
        "FullObject_6_2025.csv": [["id", "field_91_email", "field_179"]],
        "FullObject_10_2025.csv": [["id", "field_197_email", "field_133", "field_855_date"], *o10_rows],
        "FullObject_29_2025.csv": [["id", "field_792"]],
    }
    for name, rows in files.items():
        with (folder / name).open("w", encoding="utf-8", newline="") as fh:
            csv.writer(fh, lineterminator="\n").writerows(rows)
    return folder


def _school_db(tmp_path: Path) -> duckdb.DuckDBPyConnection:
    db = duckdb.connect(str(tmp_path / "p.duckdb"))
    db.execute("CREATE TABLE establishments (id VARCHAR, knack_id VARCHAR, name VARCHAR, "
               "is_australian BOOLEAN, use_standard_year BOOLEAN)")
    db.execute("INSERT INTO establishments VALUES ('u1', 'k1', 'Perth College', true, false), "
               "('u2', 'k2', 'Leeds High', false, NULL), ('u3', 'k3', 'Sydney Grammar', true, NULL)")
    db.execute("CREATE TABLE students (email VARCHAR, academic_year VARCHAR, establishment_id VARCHAR, "
               "knack_id VARCHAR)")
    return db


@pytest.mark.parametrize(("school", "date", "uk", "school_rule"), [
    ("Perth College", "15/03/2025", "2024/2025", "2025/2025"),  # docs/DOMAIN.md, “Known data points” 5
    ("Sydney Grammar", "15/10/2025", "2025/2026", "2025/2026"),  # docs/DOMAIN.md, “Known data points” 6: NULL = UK rule
    ("Leeds High", "31/07/2025", "2024/2025", "2024/2025"),  # docs/DOMAIN.md, “Known data points” 2
    ("Leeds High", "01/08/2025", "2025/2026", "2025/2026"),
    ("Unknown School", "15/09/2024", "2024/2025", "2024/2025"),  # not in the database: UK rule
])
def test_year_rules_per_school(tmp_path, school, date, uk, school_rule):
    snap = snapshot.open_snapshot(_fixture(tmp_path, [["a" * 24, "a@x.org", school, date]]))
    prof = profile.profile_snapshot(snap, db=_school_db(tmp_path))
    got = prof.years[prof.years["object"] == "object_10"].set_index("rule")["academic_year"]
    assert (got["uk"], got["school"]) == (uk, school_rule)


DATES = ["29/09/2025 04:50", "31/02/2025 10:00", "01/01/1990 10:00", "01/01/1990 25:00", "12/31/2024",
         "45678", "2025-03-01T10:00:00Z", " 01/08/2025 ", "01/08/2025 23:59:59", "1/8/2025 9:05",
         "01/01/2025 24:00", "31/07/2025 12:60", "2024-07-31T23:30:00Z", "yesterday"]


def test_distinct_date_decoding_equals_knack(tmp_path):
    rows = [[f"{i:024x}", f"s{i}@x.org", "", d] for i, d in enumerate(DATES)]
    snap = snapshot.open_snapshot(_fixture(tmp_path, rows))
    profile.profile_snapshot(snap)
    got = {raw: (day, reason) for raw, day, reason in
           snap.con.execute("SELECT raw, day, reason FROM _dates").fetchall()}
    for raw in DATES:
        d = knack.decode_date(raw)
        assert got[raw] == ((knack.completion_date(d) if d.ok else None), d.reason), raw


def test_profile_without_database_reports_no_match(tmp_path):
    snap = snapshot.open_snapshot(_fixture(tmp_path, [["a" * 24, "a@x.org", "", ""]]))
    prof = profile.profile_snapshot(snap)
    cov = prof.establishment.set_index("method")
    assert cov.loc["none", "records"] == 1 and cov["in_database"].isna().all()
    assert prof.snapshot_year == "2024/2025"


@pytest.mark.notebook
@pytest.mark.slow
def test_csv_profile_runbook_passes_on_generated_data(generated, tmp_path):
    from vespa_lib.ops import cli

    out = generated[0]
    notebooks = Path(__file__).resolve().parents[1] / "notebooks"
    code = cli.main(["--notebooks", str(notebooks), "--outputs", str(tmp_path), "run", "csv_profile",
                     "-p", f"snapshot_dir={out / 'snapshot'}", "-p", f"target=duckdb:{out / 'production.duckdb'}"])
    assert code == 0
    (mapping,) = tmp_path.glob("*/*csv_profile*/FIELD_MAPPING.json")
    assert json.loads(mapping.read_text())["objects"]["object_10"]["missing"]
    manifest = json.loads((mapping.parent / "manifest.json").read_text())
    assert manifest["status"] == "passed" and "field_133" in manifest["blockers"][0]
