"""What a plan binds in the live database: the token of every live row its classification read and
the rows it would mark archived (docs/ARCHITECTURE.md "Fingerprint"). Read-only.
"""

from __future__ import annotations

from typing import Any

from vespa_lib.write.planspec import SPECS
from vespa_lib.write.schema import dialect_of
from vespa_lib.write.sql import digest_expr, in_list, row_text_expr, scalar

__all__ = ["live_binding", "state_digest", "state_token"]


def _token_slices(years: list[str]) -> list[tuple[str, str, list]]:
    """(table, WHERE, params) of every live slice a plan reads: the planned tables' rows of ``years``
    and academic_years, but ALL students: scores and answers are matched through their student's
    email, whatever that student's year (an F8 row's student may belong to another year)."""
    where = f" WHERE t.academic_year IN {in_list(years)}"
    return [(name, "" if name == "students" else where, [] if name == "students" else list(years))
            for name in [s.name for s in SPECS] + ["academic_years"]]


def state_digest(con: Any, years: list[str]) -> dict[str, str]:
    """Content digest of the live slices a plan of ``years`` reads (``_token_slices``). Read-only."""
    return {name: scalar(con, f"SELECT {digest_expr(dialect_of(con), [row_text_expr(con, name, 't')])} "
                              f"FROM {name} t{where}", params) or ""
            for name, where, params in _token_slices(years)}


def state_token(con: Any, years: list[str]) -> dict[str, str]:
    """What the fingerprint binds the plan to: every live row the classification reads. Read-only.

    PostgreSQL: the row count and a sum of 64-bit hashes of the rows' ``xmin`` (the transaction that
    wrote each row version), not of their content. A row inserted or updated since planning is a
    version written by a transaction the plan did not see (its ``xmin`` is new to the multiset); a
    delete lowers the count unless rows are also written, which bring new ``xmin``s. Unlike ``ctid``,
    ``xmin`` survives VACUUM (FULL) and freezing, which change no row. One integer hash per row costs a
    third of hashing (ctid, xmin) text twice (0.21 against 0.63 s per million rows). DuckDB has no row
    versions: ``state_digest``."""
    if dialect_of(con) == "duckdb":
        return state_digest(con, years)
    sums = "concat(count(*), ':', coalesce(sum(hashint8extended(t.xmin::text::bigint, 0)), 0))"
    return {name: scalar(con, f"SELECT {sums} FROM {name} t{where}", params) or ""
            for name, where, params in _token_slices(years)}


def live_binding(con: Any, counts: dict, scope: dict, staged: set[str]) -> tuple[dict, dict]:
    """(extra, state): the rows to mark archived and the token of every live row the plan read."""
    years = sorted(set(scope["years"]) | {y for c in counts.values() for y in c} | set(scope["archive_years"]))
    return {"mark": _mark_counts(con, scope["archive_years"], staged)}, state_token(con, years)


def _mark_counts(con: Any, archive_years: list[str], planned: set[str]) -> dict[str, int]:
    """Live rows of the years being archived that are not yet marked (docs/ARCHITECTURE.md, “Guarded writes” archive markers).

    Rows the plan deletes are not counted; inserted rows arrive already marked."""
    if not archive_years:
        return {}
    out = {}
    for spec in SPECS:
        condition, params = _unmarked(spec.name, archive_years, planned)
        out[spec.name] = scalar(con, f"SELECT count(*) FROM {spec.name} t WHERE {condition}", params)
    return out


def _unmarked(table: str, archive_years: list[str], planned: set[str]) -> tuple[str, list]:
    """(condition on ``t``, params): unmarked rows of ``archive_years`` the plan does not delete."""
    skip = (f" AND t.id NOT IN (SELECT lid FROM vespa_plan_{table} WHERE op = 'delete' AND refused IS NULL)"
            if table in planned else "")
    return f"t.academic_year IN {in_list(archive_years)} AND NOT t.is_archived{skip}", list(archive_years)
