"""Archive protection inside PostgreSQL (docs/ARCHITECTURE.md, “Guarded writes” "Archive protection"). SQL text only.

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
before), ``vespa_lib.write.migrations``, as ``V1_INSTALL_SQL`` (kept verbatim: its text is those migrations'
checksum). Migration 6 replaces the functions by ``INSTALL_SQL``, which differs in four ways:

* the functions are ``SECURITY DEFINER``, owned by the role that runs the migration (the workbook's),
  with a fixed ``search_path``: a writer with rights on the public tables and none on ``vespa_ops``
  (Supabase's ``service_role``, ``authenticated``) writes the current year; before, every write of
  such a role failed with "permission denied for schema vespa_ops". PUBLIC keeps no right on
  ``vespa_ops`` or on the functions;
* years are compared normalised (``vespa_canonical_year``, the SQL twin of ``years.canonical``):
  ``2024-25`` written into an archived 2024/2025 is refused like ``2024/2025``; a label that is no
  year at all is refused outside a guarded run (an undo may restore a row exactly as it was);
* plain writers wait for a guarded run: a BEFORE STATEMENT trigger on each protected table takes the
  shared advisory lock ``WRITERS_LOCK_KEY``, which the guard holds exclusively for its whole
  transaction (``guard._lock``). A statement that started during an apply runs after its commit, and
  the protection then judges it against the years the apply archived; without the wait, a plain
  update of an unchanged row of the year being archived committed inside the apply and was archived
  with it. The wait comes before the statement touches any row, so it cannot deadlock with the guard;
* TRUNCATE takes the same lock before it checks.

PostgreSQL only: DuckDB has no triggers, so there the library guard is the protection.
"""

from __future__ import annotations

__all__ = ["DROP_SQL", "FUNCTION_NAMES", "INSTALL_SQL", "LEGACY_FUNCTION_NAMES", "LOCK_TRIGGER_NAMES",
           "PROTECTED_TABLES", "TRIGGER_NAMES", "V1_INSTALL_SQL", "V2_FUNCTION_NAMES", "WRITERS_LOCK_KEY"]

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
    -- docs/ARCHITECTURE.md, “Guarded writes”: an archived year changes only through a guarded run allowed to write it.
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
# Migrations 4 and 5 install this text; it is their checksum, so it stays as it was.
V1_INSTALL_SQL = _STATEMENT_FUNCTION + _TRUNCATE_FUNCTION + _triggers() + _DROP_LEGACY


# --- version 2 (migration 6) ---------------------------------------------------------------------

WRITERS_LOCK_KEY = 0x56455350_57  # "VESPW": shared by plain writers' statements, exclusive for a guarded run
_HEADER = "LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp"

# years.canonical in SQL (docs/ARCHITECTURE.md "Academic years"): 2024/2025, 2024-2025, 2024/25, 2024-25,
# spaces around the parts tolerated; NULL for anything that is no academic year.
_CANONICAL_FUNCTION = r"""
CREATE OR REPLACE FUNCTION vespa_ops.vespa_canonical_year(label text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT CASE
        WHEN m IS NULL THEN NULL
        WHEN length(m[2]) = 2 THEN CASE WHEN (m[1]::int + 1) % 100 = m[2]::int THEN m[1] || '/' || (m[1]::int + 1) END
        WHEN m[2]::int IN (m[1]::int, m[1]::int + 1) THEN m[1] || '/' || m[2]
    END
    FROM (SELECT regexp_match(label, '^\s*([0-9]{4})\s*[-/]\s*([0-9]{4}|[0-9]{2})\s*$') AS m) s
$fn$;
"""

# This transaction is a guarded run: its ledger row is ``applying`` and was inserted by this very
# transaction (a committed or made-up run id cannot be borrowed).
_GUARDED_RUN = """EXISTS (SELECT 1 FROM vespa_ops.ledger l
        WHERE l.run_id = nullif(current_setting('vespa.run_id', true), '') AND l.status = 'applying'
          AND l.xmin = pg_current_xact_id()::xid)"""
_GRANTED_V2 = """EXISTS (
        SELECT 1 FROM vespa_ops.ledger l JOIN vespa_ops.archive_grants g ON g.run_id = l.run_id
        WHERE l.run_id = nullif(current_setting('vespa.run_id', true), '') AND l.status = 'applying'
          AND l.xmin = pg_current_xact_id()::xid AND vespa_ops.vespa_canonical_year(g.academic_year) = {year})"""
_ARCHIVED_YEARS = ("SELECT vespa_ops.vespa_canonical_year(a.academic_year) FROM public.academic_years a "
                   "WHERE a.is_archived")

# Per distinct label of ``rows`` (one pass over the transition table): its year, normalised, when the
# rows carry the archive marker or the year is archived, and no grant of this run covers it.
_UNGRANTED_V2 = f"""SELECT coalesce(c.y, w.label), w.label FROM (
            SELECT r.academic_year AS label, bool_or(r.is_archived) AS marked FROM {{rows}} r GROUP BY 1) w
        CROSS JOIN LATERAL (SELECT vespa_ops.vespa_canonical_year(w.label) AS y) c
        WHERE (w.marked OR c.y IN ({_ARCHIVED_YEARS})) AND NOT {_GRANTED_V2.format(year="coalesce(c.y, w.label)")}
        ORDER BY 1 LIMIT 1"""
_NO_YEAR = """SELECT coalesce(n.label, '(null)') FROM (SELECT DISTINCT r.academic_year AS label FROM vespa_new_rows r) n
            WHERE vespa_ops.vespa_canonical_year(n.label) IS NULL LIMIT 1"""

_STATEMENT_FUNCTION_V2 = f"""
CREATE OR REPLACE FUNCTION vespa_ops.vespa_archive_statement_guard() RETURNS trigger
{_HEADER} AS $fn$
DECLARE
    y text;
    label text;
BEGIN
    -- An archived year changes only through a guarded run allowed to write it (docs/ARCHITECTURE.md
    -- "Archive protection"), whatever the spelling of its label. Transition tables exist per event:
    -- INSERT has only new rows, DELETE only old, UPDATE both.
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        {_UNGRANTED_V2.format(rows="vespa_old_rows")} INTO y, label;
    END IF;
    IF y IS NULL AND TG_OP IN ('INSERT', 'UPDATE') THEN
        {_UNGRANTED_V2.format(rows="vespa_new_rows")} INTO y, label;
    END IF;
    IF y IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = format('VESPA archive protection: %s on %s for archived year %s (label %L) refused. '
                'Archived years change only through a guarded run (vespa-ops). '
                'Run the import or year_transition runbook with approval, or write the current year only.',
                TG_OP, TG_TABLE_NAME, y, label);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NOT {_GUARDED_RUN} THEN
        {_NO_YEAR} INTO label;
        IF FOUND THEN
            RAISE EXCEPTION USING
                ERRCODE = 'insufficient_privilege',
                MESSAGE = format('VESPA archive protection: %s on %s refused: academic year label %L is not an '
                    'academic year. Write the year as YYYY/YYYY (e.g. 2025/2026).', TG_OP, TG_TABLE_NAME, label);
        END IF;
    END IF;
    RETURN NULL;
END
$fn$;
"""

_TRUNCATE_FUNCTION_V2 = f"""
CREATE OR REPLACE FUNCTION vespa_ops.vespa_archive_truncate_guard() RETURNS trigger
{_HEADER} AS $fn$
DECLARE
    y text;
BEGIN
    PERFORM pg_advisory_xact_lock_shared({WRITERS_LOCK_KEY});  -- wait for a guarded run, then judge
    -- TRUNCATE fires no row trigger: refuse it while any archived year lacks a grant for this run
    FOR y IN {_ARCHIVED_YEARS} LOOP
        IF NOT {_GRANTED_V2.format(year="y")} THEN
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

_LOCK_FUNCTION = f"""
CREATE OR REPLACE FUNCTION vespa_ops.vespa_writer_lock() RETURNS trigger
{_HEADER} AS $fn$
BEGIN
    -- Wait while a guarded run is inside its transaction (it holds this lock exclusively), before
    -- this statement touches any row; held to the end of the writer's transaction.
    PERFORM pg_advisory_xact_lock_shared({WRITERS_LOCK_KEY});
    RETURN NULL;
END
$fn$;
"""

V2_FUNCTION_NAMES = (*FUNCTION_NAMES, "vespa_writer_lock", "vespa_canonical_year")
LOCK_TRIGGER_NAMES = tuple(f"vespa_writer_lock_{t}" for t in PROTECTED_TABLES)


def _lock_triggers() -> str:
    return "".join(f"DROP TRIGGER IF EXISTS vespa_writer_lock_{t} ON public.{t};\n"
                   f"CREATE TRIGGER vespa_writer_lock_{t} BEFORE INSERT OR UPDATE OR DELETE ON public.{t} "
                   "FOR EACH STATEMENT EXECUTE FUNCTION vespa_ops.vespa_writer_lock();\n" for t in PROTECTED_TABLES)


# What callers must not have: any right on vespa_ops (its ledger and grants are what a forged run
# would need) or on the functions (trigger functions run as their owner whoever fires them).
_REVOKE = "".join(f"REVOKE ALL ON FUNCTION vespa_ops.{f}() FROM PUBLIC;\n" for f in V2_FUNCTION_NAMES
                  if f != "vespa_canonical_year") + (
    "REVOKE ALL ON FUNCTION vespa_ops.vespa_canonical_year(text) FROM PUBLIC;\n"
    "REVOKE ALL ON SCHEMA vespa_ops FROM PUBLIC;\n"
    "REVOKE ALL ON ALL TABLES IN SCHEMA vespa_ops FROM PUBLIC;\n"
    "REVOKE ALL ON ALL SEQUENCES IN SCHEMA vespa_ops FROM PUBLIC;\n")

# The statement and TRUNCATE triggers keep their names and functions' names; only the bodies change.
INSTALL_SQL = (_CANONICAL_FUNCTION + _STATEMENT_FUNCTION_V2 + _TRUNCATE_FUNCTION_V2 + _LOCK_FUNCTION
               + _triggers() + _lock_triggers() + _DROP_LEGACY + _REVOKE)

DROP_SQL = "".join(f"DROP TRIGGER IF EXISTS {n} ON public.{n.split('_', 3)[3]};\n"
                   for n in (*TRIGGER_NAMES, *LOCK_TRIGGER_NAMES)) + \
    "".join(f"DROP FUNCTION IF EXISTS vespa_ops.{f}();\n"
            for f in (*V2_FUNCTION_NAMES, *LEGACY_FUNCTION_NAMES) if f != "vespa_canonical_year") + \
    "DROP FUNCTION IF EXISTS vespa_ops.vespa_canonical_year(text);\n"
