"""What a guarded write plans over: the production tables' keys (``TableSpec``, ``SPECS``), the desired
rows (``Desired``), the resulting ``Plan``, and the fingerprint that binds a plan
(docs/ARCHITECTURE.md "Guarded writes", "Fingerprint"). Pure: no database access.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa

from vespa_lib.errors import ValidationFailed

__all__ = ["OPS", "SPECS", "SPEC_BY_NAME", "Desired", "Plan", "TableSpec", "fingerprint", "scope_of", "sha"]

OPS = ("insert", "update", "unchanged", "delete", "refused")


@dataclass(frozen=True)
class TableSpec:
    """How one production table is keyed and compared (docs/ARCHITECTURE.md "Guarded writes")."""

    name: str
    keys: tuple[str, ...]
    compared: tuple[str, ...]
    types: dict[str, str]
    via_student: bool


_STUDENT_TYPES = {"email": "TEXT", "academic_year": "TEXT", "knack_id": "TEXT", "name": "TEXT",
                  "establishment_id": "UUID", "year_group": "TEXT", "course": "TEXT", "faculty": "TEXT",
                  "group": "TEXT", "gender": "TEXT"}
_SCORES = ("vision", "effort", "systems", "practice", "attitude", "overall")
SPECS: tuple[TableSpec, ...] = (
    TableSpec("students", ("email", "academic_year"),
              ("knack_id", "name", "establishment_id", "year_group", "course", "faculty", "group", "gender"),
              _STUDENT_TYPES, False),
    TableSpec("vespa_scores", ("email", "academic_year", "cycle"), (*_SCORES, "completion_date"),
              {"email": "TEXT", "academic_year": "TEXT", "cycle": "INTEGER", "completion_date": "DATE",
               **dict.fromkeys(_SCORES, "INTEGER")}, True),
    TableSpec("question_responses", ("email", "academic_year", "cycle", "question_id"), ("response_value",),
              {"email": "TEXT", "academic_year": "TEXT", "cycle": "INTEGER", "question_id": "TEXT",
               "response_value": "INTEGER"}, True),
)
SPEC_BY_NAME = {s.name: s for s in SPECS}


@dataclass
class Desired:
    """Desired rows per table plus the run's scope (years, establishments, whether to delete)."""

    tables: dict[str, pa.Table]
    years: list[str]
    establishment_ids: list[str] | None = None
    allow_delete: bool = False
    # per-table facts of the (immutable) Arrow tables, computed once: the guard re-plans the same rows
    _facts: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        unknown = set(self.tables) - set(SPEC_BY_NAME)
        if unknown:
            raise ValidationFailed(["desired_tables"], f"Desired rows for unknown tables {sorted(unknown)}: "
                                   f"the guard writes only {', '.join(SPEC_BY_NAME)}.")
        if not self.years:
            raise ValidationFailed(["scope_years"], "The run's scope names no academic year: pass years=[...].")


@dataclass
class Plan:
    """The changes per table × year, refused rows, pending migrations and the fingerprint."""

    counts_by_table: dict[str, dict[str, dict[str, int]]]
    changed_columns: dict[str, list[str]]
    samples: dict[str, list[dict]]
    refused_reasons: dict[str, dict[str, int]]
    migrations: list[dict]
    fingerprint: str
    scope: dict
    kind: str = "data"
    extra: dict = field(default_factory=dict)
    staged: dict[str, list[str]] = field(default_factory=dict)  # staged columns per table (for the merge)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase; not part of the fingerprint
    session: str | None = None  # key of the plan tables kept in the planning connection (``plan_changes(keep=)``)

    def counts(self) -> dict[str, dict[str, dict[str, int]]]:
        """{table: {year: {insert, update, unchanged, delete, refused}}}."""
        return self.counts_by_table

    @property
    def blocked(self) -> str | None:
        """Why data changes were not planned (pending migrations), or None."""
        if not self.migrations:
            return None
        names = ", ".join(f"{m['version']} {m['name']}" for m in self.migrations)
        return f"apply migrations first: {names} are pending; data changes are planned after they are applied."

    @property
    def is_empty(self) -> bool:
        """True when applying would write nothing (no change, no migration, nothing to mark)."""
        changing = ("insert", "update", "delete")
        return not self.migrations and not any(
            c.get(op, 0) for years in self.counts_by_table.values() for c in years.values() for op in changing
        ) and not any(self.extra.get("mark", {}).values())

    def summary_frame(self) -> pd.DataFrame:
        """One row per table × year with the five counts."""
        rows = [{"table": t, "academic_year": y, **{op: c.get(op, 0) for op in OPS}}
                for t, years in self.counts_by_table.items() for y, c in sorted(years.items())]
        return pd.DataFrame(rows, columns=["table", "academic_year", *OPS])

    def to_json(self) -> str:
        """The whole plan as canonical JSON (samples carry masked emails only)."""
        return json.dumps({"kind": self.kind, "fingerprint": self.fingerprint, "scope": self.scope,
                           "counts": self.counts_by_table, "changed_columns": self.changed_columns,
                           "samples": self.samples, "refused_reasons": self.refused_reasons,
                           "migrations": self.migrations, "blocked": self.blocked, "extra": self.extra},
                          sort_keys=True, default=str, indent=1)


def sha(obj: Any) -> str:
    """SHA-256 of canonical JSON (the fingerprint function)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def scope_of(desired: Desired, archive_years: tuple | list, archived_write_years: tuple | list) -> dict:
    """The run's scope as the plan records and the fingerprint binds it."""
    return {"years": sorted(desired.years), "establishment_ids": desired.establishment_ids,
            "allow_delete": desired.allow_delete, "archive_years": sorted(archive_years),
            "archived_write_years": sorted(archived_write_years)}


def fingerprint(changes: dict, counts: dict, changed: dict, reasons: dict, state: dict, scope: dict,
                extra: dict) -> str:
    """The classification is a function of the desired rows, the live state the token covers and the
    scope, so binding those (plus the outcome) binds the plan (docs/ARCHITECTURE.md "Fingerprint")."""
    return sha({"desired": changes, "counts": counts, "changed": changed, "refused": reasons, "state": state,
                "scope": scope, "extra": extra})
