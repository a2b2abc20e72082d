"""Archive protection inside PostgreSQL (SPEC.md §7 "Archive protection"). SQL text only.

Row triggers on every data table refuse INSERT/UPDATE/DELETE of a row whose OLD or NEW academic
year is archived (``academic_years.is_archived``, or the row's own ``is_archived`` marker) unless the
session's transaction-local ``vespa.run_id`` names a ledger row that is ``applying``, was inserted by
this very transaction (its ``xmin`` is the current transaction id, so a committed or made-up ledger
row cannot be borrowed) and holds an ``archive_grants`` row for that year. On ``academic_years``
itself, changing or deleting an archived row, or inserting one already archived, needs the same
grant. Statement-level TRUNCATE triggers refuse truncating a protected table while any year is
archived (TRUNCATE fires no row triggers). A delete-all such as F9's ``DELETE FROM
national_statistics`` is refused by the row triggers as soon as it reaches an archived row, which
aborts the whole statement.

Limit: a session that may write ``vespa_ops`` could forge an ``applying`` ledger row and grant in
its own transaction; the protection is against the old sync scripts and mistakes, not against a
database administrator. Production should grant the dashboard's roles no rights on ``vespa_ops``.

Installed by migration 4 (``vespa_lib.migrations``), PostgreSQL only: DuckDB has no triggers, so
there the library guard is the protection.
"""

from __future__ import annotations

__all__ = ["DROP_SQL", "FUNCTION_NAMES", "INSTALL_SQL", "PROTECTED_TABLES", "TRIGGER_NAMES"]

PROTECTED_TABLES = ("students", "vespa_scores", "question_responses", "school_statistics",
                    "national_statistics", "academic_years")

_GRANTED = """EXISTS (
        SELECT 1 FROM vespa_ops.ledger l JOIN vespa_ops.archive_grants g ON g.run_id = l.run_id
        WHERE l.run_id = nullif(current_setting('vespa.run_id', true), '') AND l.status = 'applying'
          AND l.xmin = pg_current_xact_id()::xid AND g.academic_year = {year})"""

_ROW_FUNCTION = f"""
CREATE OR REPLACE FUNCTION vespa_ops.vespa_archive_row_guard() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    y text;
    years text[] := ARRAY[]::text[];
BEGIN
    -- SPEC.md §7: an archived year changes only through a guarded run allowed to write it
    IF TG_OP IN ('UPDATE', 'DELETE') AND (OLD.is_archived OR EXISTS (
            SELECT 1 FROM public.academic_years a WHERE a.academic_year = OLD.academic_year AND a.is_archived)) THEN
        years := array_append(years, OLD.academic_year);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND (NEW.is_archived OR EXISTS (
            SELECT 1 FROM public.academic_years a WHERE a.academic_year = NEW.academic_year AND a.is_archived)) THEN
        years := array_append(years, NEW.academic_year);
    END IF;
    FOREACH y IN ARRAY years LOOP
        IF NOT {_GRANTED.format(year="y")} THEN
            RAISE EXCEPTION USING
                ERRCODE = 'insufficient_privilege',
                MESSAGE = format('VESPA archive protection: %s on %s for archived year %s refused. '
                    'Archived years change only through a guarded run (vespa-ops). '
                    'Run the import or year_transition runbook with approval, or write the current year only.',
                    TG_OP, TG_TABLE_NAME, y);
        END IF;
    END LOOP;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
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

FUNCTION_NAMES = ("vespa_archive_row_guard", "vespa_archive_truncate_guard")
TRIGGER_NAMES = tuple(f"vespa_archive_{kind}_{t}" for t in PROTECTED_TABLES for kind in ("row", "truncate"))


def _triggers() -> str:
    parts = []
    for table in PROTECTED_TABLES:
        parts.append(f"DROP TRIGGER IF EXISTS vespa_archive_row_{table} ON public.{table};\n"
                     f"CREATE TRIGGER vespa_archive_row_{table} BEFORE INSERT OR UPDATE OR DELETE ON public.{table} "
                     "FOR EACH ROW EXECUTE FUNCTION vespa_ops.vespa_archive_row_guard();\n"
                     f"DROP TRIGGER IF EXISTS vespa_archive_truncate_{table} ON public.{table};\n"
                     f"CREATE TRIGGER vespa_archive_truncate_{table} BEFORE TRUNCATE ON public.{table} "
                     "FOR EACH STATEMENT EXECUTE FUNCTION vespa_ops.vespa_archive_truncate_guard();\n")
    return "".join(parts)


INSTALL_SQL = _ROW_FUNCTION + _TRUNCATE_FUNCTION + _triggers()

DROP_SQL = "".join(f"DROP TRIGGER IF EXISTS {n} ON public.{n.split('_', 3)[3]};\n" for n in TRIGGER_NAMES) + \
    "".join(f"DROP FUNCTION IF EXISTS vespa_ops.{f}();\n" for f in FUNCTION_NAMES)
