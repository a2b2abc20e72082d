"""The rehearsal's starting point: the synthetic world and a production-shaped PostgreSQL as it was
on the night of the archive import.

``generate_world(folder)`` writes the damaged history and the 2025/2026 Knack export
(:mod:`vespa_lib.sandbox.synth`). ``build_database(server_dsn, world)`` builds the production-shaped database
(:mod:`vespa_lib.sandbox.prodshape`, legacy ``unique(email)`` key) and removes the current year's rows
(2025/2026, its misspelling 2025-26 and calendar 2025/2025) with their statistics: on 20 August the
old system had not yet synced the year the rehearsal lets Knack fill night by night. Returns the
owner's DSN (what the runbooks log in with) and the superuser's DSN of the database.
"""

from __future__ import annotations

import contextlib
from datetime import date
from pathlib import Path

__all__ = ["CURRENT_LABELS", "DBNAME", "add_establishment", "build_database", "generate_world", "schools",
           "server_context"]

DBNAME = "vespa_rehearsal"
CURRENT_LABELS = ("2025/2026", "2025-26", "2025/2025")


def generate_world(folder: Path, students: int = 300, seed: int = 2025) -> Path:
    """The synthetic snapshot, damaged production and the fresh export (unless already there)."""
    from vespa_lib.sandbox import synth  # noqa: PLC0415

    folder = Path(folder)
    if not (folder / "fresh_truth.csv").is_file():
        synth.generate(folder, students=students, seed=seed)
        synth.generate_fresh_export(folder, seed=seed, as_of=date(2026, 3, 15))
    return folder


def build_database(server_dsn: str, world: Path, dbname: str = DBNAME, prune: bool = True) -> tuple[str, str]:
    """(owner DSN, superuser DSN) of the production-shaped database; ``prune``: as on the import night."""
    import psycopg  # noqa: PLC0415

    from vespa_lib.sandbox import prodshape  # noqa: PLC0415
    from vespa_lib.sandbox.localpg import dsn_with_dbname  # noqa: PLC0415

    owner = prodshape.build(server_dsn, dbname, Path(world) / "production.duckdb", legacy_email_key=True)
    admin = dsn_with_dbname(server_dsn, dbname)
    if not prune:
        return owner, admin
    labels = list(CURRENT_LABELS)
    mine = "academic_year = ANY(%s) OR student_id IN (SELECT id FROM students WHERE academic_year = ANY(%s))"
    with psycopg.connect(admin, autocommit=False) as con:
        for table in ("question_responses", "vespa_scores"):
            con.execute(f"DELETE FROM {table} WHERE {mine}", [labels, labels])
        for table in ("school_statistics", "national_statistics"):
            con.execute(f"DELETE FROM {table} WHERE academic_year = ANY(%s)", [labels])
        con.execute("DELETE FROM students WHERE academic_year = ANY(%s) AND id NOT IN "
                    "(SELECT student_id FROM vespa_scores UNION SELECT student_id FROM question_responses)", [labels])
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


@contextlib.contextmanager
def server_context(dsn: str | None):
    """The given server DSN, or a throw-away local PostgreSQL for the duration (its DSN)."""
    if dsn:
        yield dsn
        return
    from vespa_lib.sandbox.localpg import LocalPostgres  # noqa: PLC0415

    with LocalPostgres() as pg:
        yield pg.dsn()
