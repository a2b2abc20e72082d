"""A second import plan of a year already imported (what follows a run killed after its commit)."""

from __future__ import annotations

import shutil

from vespa_lib import importer
from vespa_lib.sandbox import synth

YEAR = "2024/2025"


def test_import_plan_of_an_already_imported_year_is_empty(tmp_path):
    """The F8 repair search compares the live rows with the snapshot's keys; with answers held
    dictionary-encoded on both sides that join raised ArrowNotImplementedError ("Unifying differing
    dictionaries") as soon as the target held the year: no re-plan was possible after an import."""
    synth.generate(tmp_path / "g", students=100)
    db = tmp_path / "p.duckdb"
    shutil.copyfile(tmp_path / "g" / "production.duckdb", db)
    target = importer.open_import(f"duckdb:{db}")
    try:
        snap, _ = importer.preflight(tmp_path / "g" / "snapshot", target)
        rows = importer.import_rows(snap, YEAR, target, convert_q29_percentage=True, establishment_scope=[])
        desired = importer.desired_for(rows, target.con, YEAR)
        outcome = importer.apply_import(target.con, desired, rows, approve="auto", run_id="a1", target_kind="duckdb",
                                        archive=importer.archive_labels(desired, True),
                                        repairs=importer.repairs_for(rows, target.con, YEAR))
        assert outcome.status == "applied", outcome.reason
        again = importer.repairs_for(rows, target.con, YEAR)
        assert importer.plan_import(target.con, desired, [], again).is_empty
    finally:
        target.close()
