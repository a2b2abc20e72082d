"""The rehearsal's starting point: the synthetic world and a production-shaped PostgreSQL as it was
on the night of the archive import.

``generate_world(folder)`` writes the damaged history and the 2025/2026 Knack export
(:mod:`vespa_lib.synth`). ``build_database(server_dsn, world)`` builds the production-shaped database
(:mod:`vespa_lib.prodshape`, legacy ``unique(email)`` key) and removes the current year's rows
(2025/2026, its misspelling 2025-26 and calendar 2025/2025) with their statistics: on 20 August the
old system had not yet synced the year the rehearsal lets Knack fill night by night. Returns the
owner's DSN (what the runbooks log in with) and the superuser's DSN of the database.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

__all__ = ["CURRENT_LABELS", "DBNAME", "build_database", "generate_world", "schools"]

DBNAME = "vespa_rehearsal"
CURRENT_LABELS = ("2025/2026", "2025-26", "2025/2025")
PRUNE_ORDER = ("question_responses", "vespa_scores", "school_statistics", "national_statistics", "students")


def generate_world(folder: Path, students: int = 300, seed: int = 2025) -> Path:
    """The synthetic snapshot, damaged production and the fresh export (unless already there)."""
    from vespa_lib import synth  # noqa: PLC0415

    folder = Path(folder)
    if not (folder / "fresh_truth.csv").is_file():
        synth.generate(folder, students=students, seed=seed)
        synth.generate_fresh_export(folder, seed=seed, as_of=date(2026, 3, 15))
    return folder


def build_database(server_dsn: str, world: Path, dbname: str = DBNAME) -> tuple[str, str]:
    """(owner DSN, superuser DSN) of the production-shaped database on the import night."""
    import psycopg  # noqa: PLC0415

    from vespa_lib import prodshape  # noqa: PLC0415
    from vespa_lib.localpg import dsn_with_dbname  # noqa: PLC0415

    owner = prodshape.build(server_dsn, dbname, Path(world) / "production.duckdb", legacy_email_key=True)
    admin = dsn_with_dbname(server_dsn, dbname)
    with psycopg.connect(admin, autocommit=False) as con:
        for table in PRUNE_ORDER:
            con.execute(f"DELETE FROM {table} WHERE academic_year = ANY(%s)", [list(CURRENT_LABELS)])
        con.execute("DELETE FROM students s WHERE NOT EXISTS (SELECT 1 FROM vespa_scores v WHERE v.student_id = s.id) "
                    "AND academic_year = ANY(%s)", [list(CURRENT_LABELS)])
    return owner, admin


def schools(dsn: str) -> dict[str, dict]:
    """name -> {knack_id, calendar (my own rule: Australian and explicitly not the standard year)}."""
    import psycopg  # noqa: PLC0415

    with psycopg.connect(dsn, autocommit=True) as con:
        rows = con.execute("SELECT name, knack_id, is_australian, use_standard_year FROM establishments").fetchall()
    return {n: {"knack_id": k, "calendar": aus is True and std is False} for n, k, aus, std in rows}


def add_establishment(dsn: str, name: str, knack_id: str) -> None:
    """The customer set-up of a school joining mid-year: its establishments row (UK year)."""
    import psycopg  # noqa: PLC0415

    with psycopg.connect(dsn, autocommit=True) as con:
        con.execute("INSERT INTO establishments (knack_id, name, is_australian, use_standard_year, status) "
                    "VALUES (%s, %s, false, true, 'active') ON CONFLICT (knack_id) DO NOTHING", [knack_id, name])
