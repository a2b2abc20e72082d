"""Archive protection inside PostgreSQL (SPEC.md §7 "Archive protection"). SQL text only.

Statement-level AFTER triggers with transition tables (one per event: INSERT sees only the new
rows, DELETE only the old, UPDATE both) on every data table refuse a statement that touched a row
whose OLD or NEW academic year is archived (``academic_years.is_archived``, or the row's own
``is_archived`` marker) unless the session's transaction-local ``vespa.run_id`` names a ledger row
that is ``applying``, was inserted by this very transaction (its ``xmin`` is the current transaction
id, so a committed or made-up ledger row cannot be borrowed) and holds an ``archive_grants`` row for
that year. The archived years a statement touched are found once per statement with one set-based
query, so a million-row guarded insert pays for one scan of its transition table, not one plpgsql
call per row (the row triggers of migration 4's first version cost ~60 µs a row). The refusal
raises, which aborts the whole statement: nothing of it stays written. On ``academic_years`` itself,
changing or deleting an archived row, or inserting one already archived, needs the same grant.
Statement-level TRUNCATE triggers refuse truncating a protected table while any year is archived
(TRUNCATE fires no row or transition-table triggers). A delete-all such as F9's ``DELETE FROM
national_statistics`` is refused as soon as its old rows include an archived year.

Limit: a session that may write ``vespa_ops`` could forge an ``applying`` ledger row and grant in
its own transaction; the protection is against the old sync scripts and mistakes, not against a
database administrator. Production should grant the dashboard's roles no rights on ``vespa_ops``.

Installed by migration 4 (fresh databases) or 5 (replacing the row triggers of a database migrated
before), ``vespa_lib.migrations``; PostgreSQL only: DuckDB has no triggers, so there the library
guard is the protection.
"""

from __future__ import annotations

__all__ = ["DROP_SQL", "FUNCTION_NAMES", "INSTALL_SQL", "LEGACY_FUNCTION_NAMES", "PROTECTED_TABLES",
           "TRIGGER_NAMES"]

PROTECTED_TABLES = ("students", "vespa_scores", "question_responses", "school_statistics",
                    "national_statistics", "academic_years")

_GRANTED = """EXISTS (
        SELECT 1 FROM vespa_ops.ledger l JOIN vespa_ops.archive_grants g ON g.run_id = l.run_id
        WHERE l.run_id = nullif(current_setting('vespa.run_id', true), '') AND l.status = 'applying'
          AND l.xmin = pg_current_xact_id()::xid AND g.academic_year = {year})"""

# Years of ``rows`` that are archived (by the row's marker or academic_years) and not granted to
# this transaction's run; the first one (sorted) is reported.
_UNGRANTED = f"""SELECT r.academic_year FROM {{rows}} r
        WHERE r.is_archived OR r.academic_year IN (SELECT a.academic_year FROM public.academic_years a WHERE a.is_archived)
        GROUP BY r.academic_year HAVING NOT {_GRANTED.format(year="r.academic_year")}
        ORDER BY 1 LIMIT 1"""

_STATEMENT_FUNCTION = f"""
CREATE OR REPLACE FUNCTION vespa_ops.vespa_archive_statement_guard() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    y text;
BEGIN
    -- SPEC.md §7: an archived year changes only through a guarded run allowed to write it.
    -- Transition tables exist per event: INSERT has only new rows, DELETE only old, UPDATE both.
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        {_UNGRANTED.format(rows="vespa_old_rows")} INTO y;
    END IF;
    IF y IS NULL AND TG_OP IN ('INSERT', 'UPDATE') THEN
        {_UNGRANTED.format(rows="vespa_new_rows")} INTO y;
    END IF;
    IF y IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = format('VESPA archive protection: %s on %s for archived year %s refused. '
                'Archived years change only through a guarded run (vespa-ops). '
                'Run the import or year_transition runbook with approval, or write the current year only.',
                TG_OP, TG_TABLE_NAME, y);
    END IF;
    RETURN NULL;
END
$fn$;
"""

_TRUNCATE_FUNCTION = f"""
CREATE OR REPLACE FUNCTION vespa_ops.vespa_archive_truncate_guard() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    y text;
BEGIN
    -- TRUNCATE fires no row trigger: refuse it while any archived year lacks a grant for this run
    FOR y IN SELECT a.academic_year FROM public.academic_years a WHERE a.is_archived LOOP
        IF NOT {_GRANTED.format(year="y")} THEN
            RAISE EXCEPTION USING
                ERRCODE = 'insufficient_privilege',
                MESSAGE = format('VESPA archive protection: TRUNCATE on %s refused: archived year %s would be '
                    'deleted. Archived years change only through a guarded run (vespa-ops).', TG_TABLE_NAME, y);
        END IF;
    END LOOP;
    RETURN NULL;
END
$fn$;
"""

FUNCTION_NAMES = ("vespa_archive_statement_guard", "vespa_archive_truncate_guard")
LEGACY_FUNCTION_NAMES = ("vespa_archive_row_guard",)  # migration 4's first version: FOR EACH ROW

# ``row`` is the UPDATE trigger: it keeps the name the row trigger had, which other tools disable/probe.
_EVENTS = (("row", "UPDATE", "REFERENCING OLD TABLE AS vespa_old_rows NEW TABLE AS vespa_new_rows"),
           ("insert", "INSERT", "REFERENCING NEW TABLE AS vespa_new_rows"),
           ("delete", "DELETE", "REFERENCING OLD TABLE AS vespa_old_rows"))
TRIGGER_NAMES = tuple(f"vespa_archive_{kind}_{t}" for t in PROTECTED_TABLES
                      for kind in (*(e[0] for e in _EVENTS), "truncate"))


def _triggers() -> str:
    parts = []
    for table in PROTECTED_TABLES:
        for kind, event, referencing in _EVENTS:
            parts.append(f"DROP TRIGGER IF EXISTS vespa_archive_{kind}_{table} ON public.{table};\n"
                         f"CREATE TRIGGER vespa_archive_{kind}_{table} AFTER {event} ON public.{table} {referencing} "
                         "FOR EACH STATEMENT EXECUTE FUNCTION vespa_ops.vespa_archive_statement_guard();\n")
        parts.append(f"DROP TRIGGER IF EXISTS vespa_archive_truncate_{table} ON public.{table};\n"
                     f"CREATE TRIGGER vespa_archive_truncate_{table} BEFORE TRUNCATE ON public.{table} "
                     "FOR EACH STATEMENT EXECUTE FUNCTION vespa_ops.vespa_archive_truncate_guard();\n")
    return "".join(parts)


_DROP_LEGACY = "".join(f"DROP FUNCTION IF EXISTS vespa_ops.{f}();\n" for f in LEGACY_FUNCTION_NAMES)

# Replaces the legacy row triggers too: each kept name is dropped and re-created, then the old function goes.
INSTALL_SQL = _STATEMENT_FUNCTION + _TRUNCATE_FUNCTION + _triggers() + _DROP_LEGACY

DROP_SQL = "".join(f"DROP TRIGGER IF EXISTS {n} ON public.{n.split('_', 3)[3]};\n" for n in TRIGGER_NAMES) + \
    "".join(f"DROP FUNCTION IF EXISTS vespa_ops.{f}();\n" for f in (*FUNCTION_NAMES, *LEGACY_FUNCTION_NAMES))
