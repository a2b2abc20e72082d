"""A plan kept in its connection, reused by the guard (docs/ARCHITECTURE.md "Guarded writes").

The runbooks plan, show the plan, then apply in the same session. Planning twice (once to show,
once under the guard's lock) cost a third of a realistic import. A plan made with ``keep=True``
leaves its plan tables in the session (temp tables: invisible to others, gone at disconnect) with a
marker row; the guard reuses them only when, under its lock, the marker is still this plan's and
the fingerprint recomputed from the live state equals the approved one. Otherwise it re-plans.
"""

from __future__ import annotations

from typing import Any

from vespa_lib.write.classify import desired_facts, session_settings
from vespa_lib.write.migrations import pending
from vespa_lib.write.planspec import SPECS, Desired, Plan, fingerprint, scope_of
from vespa_lib.write.planstate import live_binding
from vespa_lib.write.schema import dialect_of
from vespa_lib.write.sql import run, scalar

__all__ = ["SESSION_TABLE", "reuse_kept"]

SESSION_TABLE = "vespa_plan_session"


def reuse_kept(con: Any, planned: Plan | None, desired: Desired, *, approve: str, archived_write_years: tuple | list
               = (), archive_years: tuple | list = ()) -> Plan | None:
    """``planned`` when its kept plan tables are still valid in this transaction (see above), else None.
    Call under the guard's lock, inside its write transaction. Read-only."""
    if planned is None or planned.session is None or planned.fingerprint != approve or planned.migrations \
            or dialect_of(con) != "postgres" or scalar(con, "SELECT to_regclass(?)", [f"pg_temp.{SESSION_TABLE}"]) \
            is None or scalar(con, f"SELECT key FROM {SESSION_TABLE}") != planned.session or pending(con):
        return None
    scope = scope_of(desired, archive_years, archived_write_years)
    changes = {s.name: desired_facts(desired, s)["digest"] for s in SPECS if s.name in desired.tables}
    extra, state = live_binding(con, planned.counts_by_table, scope, set(planned.staged))
    if fingerprint(changes, planned.counts_by_table, planned.changed_columns, planned.refused_reasons, state, scope,
                   extra) != planned.fingerprint:
        return None
    session_settings(con)
    run(con, f"DROP TABLE {SESSION_TABLE}")  # applied once: a second apply re-plans
    return planned
