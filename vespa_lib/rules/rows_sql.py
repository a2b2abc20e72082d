"""The SQL behind :mod:`vespa_lib.rules.rows`: one statement per step of the rule chains.

Every statement runs on the snapshot's DuckDB connection and creates a TEMP table prefixed
``_rows_``; nothing here reads or writes a target. Values (the import year, the scope) are bound as
named parameters; identifiers (tables, columns) come from the field map, never from data.
Rule sources: docs/ARCHITECTURE.md "Year rule chain", "Establishment rule chain",
"Quarantine reason codes"; docs/DOMAIN.md, “Knack fields”
"""

from __future__ import annotations

from vespa_lib.rules import fieldmap
from vespa_lib.rules.years import uk_year_sql

CYCLES = fieldmap.CYCLES
ELEMENTS = fieldmap.ELEMENTS
Q29 = "q29_vision_grades"


def score_columns() -> list[tuple[str, int, str]]:
    """(logical column, cycle, element); cycle 0 = the current-cycle fields (field_147..152)."""
    cols = [(f"c{c}_{e}", c, e) for c in CYCLES for e in ELEMENTS]
    return cols + [(f"current_{e}", 0, e) for e in ELEMENTS]


def answer_columns() -> list[tuple[str, str, int]]:
    """(logical column, question id, cycle) of the 32 questions x 3 per-cycle fields of object_29."""
    return [(f"{q.question_id}_c{c}", q.question_id, c) for q in fieldmap.load().questions for c in CYCLES]


# The columns each step reads, copied once from the snapshot's views (not the rich-text comments).
SOURCE_COLUMNS = {
    "object_6": ("_record", "email", "establishment", "establishment_id"),
    "object_10": ("_record", "_line", "id", "email", "first_name", "last_name", "full_name", "establishment",
                  "establishment_id", "gender", "year_group", "group", "course", "faculty", "current_cycle",
                  "completion_date", "updated", *(c for c, _, _ in score_columns())),
    "object_29": ("_record", "_line", "id", "email", "updated", "student_record", "student_record_id",
                  *(c for c, _, _ in answer_columns())),
}
SOURCE_TABLES = {"object_6": "_rows_src_o6", "object_10": "_rows_src_o10", "object_29": "_rows_src_o29"}


def copy_source(obj: str, view: str) -> str:
    """Materialise the columns of ``obj`` the import reads from the snapshot view ``view``."""
    cols = ", ".join(_q(c) for c in SOURCE_COLUMNS[obj])
    return f"CREATE OR REPLACE TEMP TABLE {SOURCE_TABLES[obj]} AS SELECT {cols} FROM {_q(view)}"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _clean(col: str) -> str:
    """Trimmed text or NULL (blank attributes are stored as NULL)."""
    return f"nullif(trim({col}), '')"


# ------------------------------------------------------------------------- establishments

# A connection cell resolves when all its pieces name exactly one establishment, by knack id or by
# name (CSV holds display identifiers, docs/DOMAIN.md, “Knack fields”); anything else is 'unknown'.
EST_CONN = """
CREATE OR REPLACE TEMP TABLE _rows_est_conn AS
SELECT c.raw,
       CASE WHEN count(DISTINCT e.id) = 1 AND count(*) FILTER (e.id IS NULL) = 0 THEN min(e.id) END
           AS establishment_id,
       CASE WHEN count(DISTINCT e.id) = 1 AND count(*) FILTER (e.id IS NULL) = 0
            THEN 'resolved' ELSE 'unknown' END AS status,
       count(DISTINCT e.id) AS matches
FROM _rows_conn c
LEFT JOIN _rows_ref_est e
       ON e.knack_id = coalesce(c.oid, c.identifier) OR lower(trim(e.name)) = lower(c.identifier)
GROUP BY c.raw
"""

# ARCHITECTURE "Establishment rule chain" 2: the object_6 account(s) of the same email. Accounts
# that name a school must agree on one known establishment, else the record's school is unknown.
O6_EST = """
CREATE OR REPLACE TEMP TABLE _rows_o6_est AS
SELECT e.email,
       CASE WHEN count(DISTINCT ec.establishment_id) = 1 AND bool_and(ec.status = 'resolved')
            THEN min(ec.establishment_id) END AS establishment_id,
       CASE WHEN count(DISTINCT ec.establishment_id) = 1 AND bool_and(ec.status = 'resolved')
            THEN 'resolved' ELSE 'unknown' END AS status,
       min(ec.raw) AS raw_conn, count(DISTINCT ec.establishment_id) AS matches
FROM _rows_src_o6 t
JOIN _rows_email e ON e.raw = coalesce(t.email, '')
JOIN _rows_est_conn ec ON ec.raw = coalesce(nullif(trim(t.establishment_id), ''), t.establishment, '')
WHERE e.reason IS NULL
GROUP BY e.email
"""

# ... 3: the email's domain maps to exactly one establishment among existing students.
DOMAIN_EST = """
CREATE OR REPLACE TEMP TABLE _rows_domain_est AS
SELECT split_part(email, '@', 2) AS domain, min(establishment_id) AS establishment_id
FROM _rows_ref_students
WHERE establishment_id IS NOT NULL AND email LIKE '%_@_%'
GROUP BY 1
HAVING count(DISTINCT establishment_id) = 1
"""


# --------------------------------------------------------------------------------- scores

def scores_long() -> str:
    """Every score cell of object_10 with its decoded value (UNPIVOT; blanks dropped)."""
    cols = score_columns()
    names = ", ".join(_q(c) for c, _, _ in cols)
    mapping = ", ".join(f"('{c}', {cyc}, '{e}')" for c, cyc, e in cols)
    return f"""
CREATE OR REPLACE TEMP TABLE _rows_score_long AS
SELECT u._record, m.cycle, m.element, u.col, u.raw, s.value, s.reason
FROM (UNPIVOT (SELECT _record, {names} FROM _rows_src_o10) ON {names} INTO NAME col VALUE raw) u
JOIN (VALUES {mapping}) m(col, cycle, element) ON m.col = u.col
JOIN _rows_score s ON s.raw = u.raw
WHERE s.reason IS DISTINCT FROM 'blank'
"""


def cycles() -> str:
    """One row per (record, cycle) with the six decoded scores, the count of good and bad cells."""
    picks = ", ".join(f"max(value) FILTER (element = '{e}') AS {e}" for e in ELEMENTS)
    return f"""
CREATE OR REPLACE TEMP TABLE _rows_cycles AS
SELECT _record, cycle, {picks},
       count(*) FILTER (reason IS NULL) AS n_ok,
       count(*) FILTER (reason IS NOT NULL) AS n_bad,
       min(CASE WHEN reason IS NOT NULL THEN col || ' ' || '"' || raw || '"' || ': ' || reason END) AS bad_detail
FROM _rows_score_long GROUP BY _record, cycle
"""


def cycle_flags() -> str:
    """Per taken cycle 1..3: whether it is an F10 copy (ARCHITECTURE: a cycle other than field_146
    whose six scores equal the current-cycle fields and the current cycle's own per-cycle scores)."""
    same = " AND ".join(f"c.{e} IS NOT DISTINCT FROM cur.{e} AND c.{e} IS NOT DISTINCT FROM k.{e}"
                        for e in ELEMENTS)
    return f"""
CREATE OR REPLACE TEMP TABLE _rows_cycle_flags AS
WITH cc AS (
    SELECT _record, CASE WHEN try_cast(trim(current_cycle) AS DOUBLE) IN (1, 2, 3)
                         THEN CAST(try_cast(trim(current_cycle) AS DOUBLE) AS INTEGER) END AS cc
    FROM _rows_src_o10)
SELECT c.*, cc.cc,
       (cc.cc IS NOT NULL AND c.cycle <> cc.cc AND k.n_ok > 0 AND cur.n_ok > 0 AND {same}) AS f10_copy
FROM _rows_cycles c
JOIN cc USING (_record)
LEFT JOIN _rows_cycles cur ON cur._record = c._record AND cur.cycle = 0
LEFT JOIN _rows_cycles k ON k._record = c._record AND k.cycle = cc.cc
WHERE c.cycle > 0 AND c.n_ok > 0
"""


SCORE_SUMMARY = """
CREATE OR REPLACE TEMP TABLE _rows_score_summary AS
SELECT r._record,
       count(f.cycle) FILTER (NOT f.f10_copy) AS taken,
       count(f.cycle) FILTER (f.f10_copy) AS f10_copies,
       max(f.cycle) FILTER (NOT f.f10_copy) AS max_cycle,
       bool_or(f.cycle = f.cc AND NOT f.f10_copy) AS current_taken,
       any_value(f.cc) AS cc,
       (SELECT sum(n_bad) FROM _rows_cycles b WHERE b._record = r._record) AS n_bad,
       (SELECT min(bad_detail) FROM _rows_cycles b WHERE b._record = r._record) AS bad_detail
FROM _rows_src_o10 r LEFT JOIN _rows_cycle_flags f ON f._record = r._record
GROUP BY r._record
"""


# ------------------------------------------------------------------------------ decisions

def record_base() -> str:
    """Each object_10 record with its decoded email, date, establishment candidates and scores."""
    conn = "coalesce(nullif(trim(t.establishment_id), ''), t.establishment, '')"
    return f"""
CREATE OR REPLACE TEMP TABLE _rows_base AS
SELECT t._record, t._line, t.id AS record_id, t.email AS raw_email, e.email, e.reason AS email_reason,
       t.completion_date AS raw_date, d.day AS completion_day, d.reason AS date_reason, u.ts AS updated_ts,
       CASE WHEN ec.status IS NOT NULL THEN {conn} ELSE o6.raw_conn END AS raw_conn,
       CASE WHEN ec.status IS NOT NULL THEN ec.matches ELSE o6.matches END AS conn_matches,
       CASE WHEN ec.status = 'resolved' THEN ec.establishment_id
            WHEN ec.status IS NULL AND o6.status = 'resolved' THEN o6.establishment_id
            WHEN ec.status IS NULL AND o6.status IS NULL THEN dm.establishment_id
       END AS establishment_id,
       CASE WHEN ec.status = 'resolved' THEN 'connection'
            WHEN ec.status = 'unknown' THEN 'unknown_connection'
            WHEN o6.status = 'resolved' THEN 'object_6'
            WHEN o6.status = 'unknown' THEN 'unknown_object_6'
            WHEN dm.establishment_id IS NOT NULL THEN 'email_domain'
       END AS establishment_rule,
       coalesce(s.taken, 0) AS taken, coalesce(s.f10_copies, 0) AS f10_copies, coalesce(s.n_bad, 0) AS n_bad,
       s.bad_detail, CASE WHEN s.current_taken THEN s.cc ELSE s.max_cycle END AS latest_cycle
FROM _rows_src_o10 t
JOIN _rows_email e ON e.raw = coalesce(t.email, '')
JOIN _rows_date d ON d.raw = coalesce(t.completion_date, '')
JOIN _rows_date u ON u.raw = coalesce(t.updated, '')
LEFT JOIN _rows_est_conn ec ON ec.raw = {conn}
LEFT JOIN _rows_o6_est o6 ON o6.email = e.email
LEFT JOIN _rows_domain_est dm ON dm.domain = split_part(e.email, '@', 2)
LEFT JOIN _rows_score_summary s ON s._record = t._record
"""


def _label_sql(day: str, calendar: str, back: int = 0) -> str:
    """The label of ``day`` under the school's rule, ``back`` years earlier (docs/DOMAIN.md, “Academic years”)."""
    first = f"(CASE WHEN {calendar} THEN year({day}) ELSE CAST(split_part({uk_year_sql(day)}, '/', 1) AS INTEGER) END - {back})"
    return (f"CAST({first} AS VARCHAR) || '/' || CAST({first} + CASE WHEN {calendar} THEN 0 ELSE 1 END AS VARCHAR)")


def record_year() -> str:
    """The year rule chain: the cohort rule (docs/DOMAIN.md, "Cohort rule across 1 August"), then
    completion_date under the school's rule, else the snapshot's year ($year for UK schools,
    $calendar_year for calendar-year schools); unparseable -> no year.

    A dated record whose cycle 1 equals the student's cycle-1 row of the year before its date's year
    (same email, in the target) continues that cohort (``cohort_continued``: its late cycle belongs to
    the cycle-1 year); a record with a cycle 1 that differs from that row is a reset record and starts
    a cohort in the year of its own date (``cohort_started``)."""
    calendar = "coalesce(x.is_australian = true AND x.use_standard_year = false, false)"
    same = " AND ".join(f"r.{e} = c.{e}" for e in ELEMENTS)
    return f"""
CREATE OR REPLACE TEMP TABLE _rows_year AS
WITH dated AS (
    SELECT b.*, x.knack_id AS establishment_knack_id, {calendar} AS calendar,
           CASE WHEN b.date_reason IS NULL THEN {_label_sql('b.completion_day', calendar)} END AS date_year,
           CASE WHEN b.date_reason IS NULL THEN {_label_sql('b.completion_day', calendar, 1)} END AS prev_year
    FROM _rows_base b LEFT JOIN _rows_ref_est x ON x.id = b.establishment_id),
cohort AS (
    SELECT d._record, bool_or({same}) AS c1_same, count(c._record) > 0 AS has_c1
    FROM dated d
    JOIN _rows_ref_cycles r ON r.email = d.email AND r.academic_year = d.prev_year AND r.cycle = 1
    LEFT JOIN _rows_cycle_flags c ON c._record = d._record AND c.cycle = 1 AND NOT c.f10_copy
    GROUP BY d._record)
SELECT d.*,
       CASE WHEN d.date_reason = 'blank' THEN 'snapshot_year'
            WHEN d.date_reason IS NULL AND k.c1_same THEN 'cohort_continued'
            WHEN d.date_reason IS NULL AND k.has_c1 THEN 'cohort_started'
            WHEN d.date_reason IS NULL THEN 'completion_date' END AS year_rule,
       CASE WHEN d.date_reason = 'blank' THEN CASE WHEN d.calendar THEN $calendar_year ELSE $year END
            WHEN d.date_reason IS NULL AND k.c1_same THEN d.prev_year
            WHEN d.date_reason IS NULL THEN d.date_year
       END AS academic_year
FROM dated d LEFT JOIN cohort k ON k._record = d._record
"""


# Precedence of the reasons (first that applies wins), in the chains' order: email, establishment,
# scope, year, scores (the synth truth file decides in the same order). Each school is compared with its
# own year: UK-rule schools with $first (the UK year's first year), calendar-year schools with
# $calendar_first (the import: Y/Y counted in Y/Y+1; the sync: the calendar year of as_of).
# A late cycle (cohort_continued into an earlier year) is set aside when that year is archived, kept when
# it is one of $cohort_years (open years the caller writes); $late_only keeps nothing else ('not_late_cycle',
# counted, not quarantined: the guarded import that adds the late cycles of an archived year).
RECORD_OUTCOME = """
CREATE OR REPLACE TEMP TABLE _rows_outcome AS
SELECT y.*,
  CASE WHEN $late_only AND (year_rule IS DISTINCT FROM 'cohort_continued'
                            OR CAST(split_part(academic_year, '/', 1) AS INTEGER) <> $first) THEN 'not_late_cycle'
       WHEN email_reason = 'blank' THEN 'no_email'
       WHEN email_reason IS NOT NULL THEN 'invalid_email'
       WHEN establishment_rule LIKE 'unknown_%' THEN 'unknown_establishment'
       WHEN establishment_id IS NULL THEN 'no_establishment'
       WHEN $scoped AND NOT list_contains($scope, establishment_knack_id) THEN 'out_of_scope'
       WHEN date_reason IS NOT NULL AND date_reason <> 'blank' THEN 'bad_date'
       WHEN year_rule = 'cohort_continued'
            AND CAST(split_part(academic_year, '/', 1) AS INTEGER) < CASE WHEN calendar THEN $calendar_first ELSE $first END
            AND list_contains($archived, academic_year) THEN 'late_cycle_of_archived_year'
       WHEN CAST(split_part(academic_year, '/', 1) AS INTEGER) < CASE WHEN calendar THEN $calendar_first ELSE $first END
            AND NOT (year_rule = 'cohort_continued' AND list_contains($cohort_years, academic_year)) THEN 'stale_date'
       WHEN CAST(split_part(academic_year, '/', 1) AS INTEGER)
            > CASE WHEN calendar THEN $calendar_first ELSE $first END THEN 'outside_import_year'
       WHEN n_bad > 0 THEN 'bad_score'
       WHEN taken = 0 THEN 'no_scores'
  END AS reason
FROM _rows_year y
"""

# ARCHITECTURE: keep the record with most cycles taken, then latest completion date, then latest
# `updated`, then highest id; the others collapse into it (duplicate_record).
RANKED = """
CREATE OR REPLACE TEMP TABLE _rows_ranked AS
SELECT o.*,
       row_number() OVER w AS rank,
       first_value(record_id) OVER w AS kept_id
FROM _rows_outcome o
WHERE reason IS NULL
WINDOW w AS (PARTITION BY email, academic_year ORDER BY taken DESC, completion_day DESC NULLS LAST,
                                         updated_ts DESC NULLS LAST, record_id DESC, _record DESC)
"""


def students() -> str:
    """One row per kept student of the import year, attributes from its object_10 record."""
    name = (f"coalesce({_clean('t.full_name')}, "
            f"nullif(trim(concat_ws(' ', {_clean('t.first_name')}, {_clean('t.last_name')})), ''))")
    return f"""
CREATE OR REPLACE TEMP TABLE _rows_students AS
SELECT r.email, r.academic_year, r.record_id AS knack_id, {name} AS name,
       r.establishment_knack_id, r.establishment_id,
       {_clean('t.year_group')} AS year_group, {_clean('t.course')} AS course,
       {_clean('t.faculty')} AS faculty, {_clean('t."group"')} AS "group", {_clean('t.gender')} AS gender,
       r._line AS _source_line, r.year_rule AS _year_rule, r.establishment_rule AS _establishment_rule,
       r.email LIKE '%@vespa.academy' AS is_test_account,
       r._record, r.latest_cycle, r.completion_day
FROM _rows_ranked r JOIN _rows_src_o10 t ON t._record = r._record
WHERE r.rank = 1
ORDER BY r.email
"""


SCORES = f"""
CREATE OR REPLACE TEMP TABLE _rows_scores AS
SELECT s.email, s.academic_year, f.cycle, {", ".join(f"f.{e}" for e in ELEMENTS)},
       CASE WHEN f.cycle = s.latest_cycle THEN s.completion_day
            WHEN s._year_rule = 'cohort_continued' THEN (
                SELECT max(r.completion_date) FROM _rows_ref_cycles r WHERE r.email = s.email
                AND r.academic_year = s.academic_year AND r.cycle = f.cycle
                AND {" AND ".join(f"r.{e} = f.{e}" for e in ELEMENTS)}) END AS completion_date
FROM _rows_students s JOIN _rows_cycle_flags f ON f._record = s._record
WHERE NOT f.f10_copy
ORDER BY s.email, f.cycle
"""


# ------------------------------------------------------------------------------- answers

O29_BASE = """
CREATE OR REPLACE TEMP TABLE _rows_o29 AS
SELECT t._record, t._line, t.id AS record_id, t.email AS raw_email, e.email AS own_email,
       lk.oid, lk.email AS ident_email, u.ts AS updated_ts
FROM _rows_src_o29 t
JOIN _rows_email e ON e.raw = coalesce(t.email, '')
JOIN _rows_date u ON u.raw = coalesce(t.updated, '')
LEFT JOIN _rows_link lk ON lk.raw = coalesce(nullif(trim(t.student_record_id), ''), t.student_record, '')
"""

# Link by the record's own email first, then by field_792 (a record id, or an identifier that is
# the student's email: docs/DOMAIN.md, “Knack fields”). Unlinked records are classified for the quarantine.
O29_LINK = """
CREATE OR REPLACE TEMP TABLE _rows_o29_link AS
WITH ids AS (SELECT lower(record_id) AS oid, min(email) AS email FROM _rows_outcome GROUP BY 1),
     known AS (SELECT email, bool_and(reason IN ('out_of_scope', 'not_late_cycle')) AS out_of_scope
               FROM _rows_outcome WHERE email IS NOT NULL GROUP BY email),
     linked AS (
        SELECT a.*, i.oid IS NOT NULL AS oid_known, i.email AS oid_email,
               CASE WHEN s1.email IS NOT NULL THEN a.own_email WHEN s2.email IS NOT NULL THEN i.email
                    WHEN s3.email IS NOT NULL THEN a.ident_email END AS student_email
        FROM _rows_o29 a
        LEFT JOIN ids i ON i.oid = a.oid
        LEFT JOIN _rows_students s1 ON s1.email = a.own_email
        LEFT JOIN _rows_students s2 ON s2.email = i.email
        LEFT JOIN _rows_students s3 ON s3.email = a.ident_email)
SELECT l.*,
       CASE WHEN l.student_email IS NOT NULL THEN 'linked'
            WHEN coalesce(k1.out_of_scope, k2.out_of_scope, k3.out_of_scope, false) THEN 'out_of_scope'
            WHEN l.oid_known OR k1.email IS NOT NULL OR k3.email IS NOT NULL THEN 'student_set_aside'
            ELSE 'unlinked_answers' END AS status,
       row_number() OVER (PARTITION BY l.student_email ORDER BY l.updated_ts DESC NULLS LAST,
                          l.record_id DESC, l._record DESC) AS rank,
       first_value(l.record_id) OVER (PARTITION BY l.student_email ORDER BY l.updated_ts DESC NULLS LAST,
                          l.record_id DESC, l._record DESC) AS kept_id
FROM linked l
LEFT JOIN known k1 ON k1.email = l.own_email
LEFT JOIN known k2 ON k2.email = l.oid_email
LEFT JOIN known k3 ON k3.email = l.ident_email
"""


def answers_long() -> str:
    """Every answer cell of the kept, linked object_29 records, decoded (UNPIVOT; blanks dropped).
    ``$convert`` switches the q29 percentage conversion on (docs/DOMAIN.md, “Knack fields”)."""
    cols = answer_columns()
    names = ", ".join(_q(c) for c, _, _ in cols)
    mapping = ", ".join(f"('{c}', '{q}', {cyc}, {str(q == Q29).lower()})" for c, q, cyc in cols)
    return f"""
CREATE OR REPLACE TEMP TABLE _rows_answer_long AS
SELECT l.student_email AS email, l._record, m.question_id, m.cycle, a.value, a.reason
FROM (UNPIVOT (SELECT _record, {names} FROM _rows_src_o29
               WHERE _record IN (SELECT _record FROM _rows_o29_link WHERE status = 'linked' AND rank = 1))
      ON {names} INTO NAME col VALUE raw) u
JOIN (VALUES {mapping}) m(col, question_id, cycle, pct) ON m.col = u.col
JOIN _rows_answer a ON a.raw = u.raw AND a.pct = (m.pct AND $convert)
JOIN _rows_o29_link l ON l._record = u._record
WHERE a.reason IS DISTINCT FROM 'blank'
"""


# A cycle counts as answered when it holds at least one valid answer; F8: the answers take the
# student's year, never a year of their own.
ANSWER_CYCLES = """
CREATE OR REPLACE TEMP TABLE _rows_answer_cycles AS
SELECT a._record, a.email, a.cycle, count(*) AS answers, s.email IS NOT NULL AS has_scores
FROM _rows_answer_long a
LEFT JOIN _rows_scores s ON s.email = a.email AND s.cycle = a.cycle
WHERE a.value IS NOT NULL
GROUP BY a._record, a.email, a.cycle, s.email
"""

RESPONSES = """
CREATE OR REPLACE TEMP TABLE _rows_responses AS
SELECT a.email, st.academic_year, a.cycle, a.question_id, a.value AS response_value
FROM _rows_answer_long a
JOIN _rows_answer_cycles c ON c._record = a._record AND c.cycle = a.cycle AND c.has_scores
JOIN _rows_students st ON st.email = a.email
WHERE a.value IS NOT NULL
"""  # unordered: sorting a million rows costs more than the rest of the step; consumers key on the row


# ----------------------------------------------------------------------------- quarantine

_O10_DETAIL = """CASE reason
    WHEN 'no_email' THEN 'the student email (field_197) is blank'
    WHEN 'invalid_email' THEN 'the student email does not decode: ' || email_reason
    WHEN 'bad_date' THEN 'completion date ' || '"' || raw_date || '"' || ': ' || date_reason
    WHEN 'unknown_establishment' THEN replace(establishment_rule, 'unknown_', '') || ' '
         || '"' || raw_conn || '"' || ' matches ' || conn_matches || ' establishment(s) in the database'
    WHEN 'no_establishment' THEN 'no connection, no object_6 account with an establishment, '
         || 'no unambiguous email domain'
    WHEN 'bad_score' THEN bad_detail
    WHEN 'no_scores' THEN 'no cycle taken (' || f10_copies || ' F10 copies)'
    WHEN 'late_cycle_of_archived_year' THEN 'cycle ' || latest_cycle || ' completed '
         || CAST(completion_day AS VARCHAR) || ' continues the ' || academic_year || ' cohort (its cycle 1 '
         || 'equals that year''s row), an archived year: not written into another year. Add it with a '
         || 'guarded import of ' || academic_year || ' from this export with late_cycles_only '
         || '(docs/DOMAIN.md, "Cohort rule across 1 August")'
    ELSE year_rule || ' gives ' || academic_year
         || coalesce(' (completion date ' || CAST(completion_day AS VARCHAR) || ')', '') END"""

QUARANTINE = f"""
CREATE OR REPLACE TEMP TABLE _rows_quarantine AS
SELECT 'object_10' AS object, record_id, $file10 AS source_file, _line AS line_number, reason,
       {_O10_DETAIL} AS detail, raw_email AS email
FROM _rows_outcome WHERE reason IS NOT NULL AND reason NOT IN ('out_of_scope', 'not_late_cycle')
UNION ALL
SELECT 'object_10', record_id, $file10, _line, 'duplicate_record', 'collapsed into ' || kept_id, raw_email
FROM _rows_ranked WHERE rank > 1
UNION ALL
SELECT 'object_29', record_id, $file29, _line, status,
       CASE status WHEN 'unlinked_answers' THEN 'no imported student has this email or record connection'
                   ELSE 'the student''s object_10 record was set aside' END, raw_email
FROM _rows_o29_link WHERE status IN ('unlinked_answers', 'student_set_aside')
UNION ALL
SELECT 'object_29', record_id, $file29, _line, 'duplicate_record', 'collapsed into ' || kept_id, raw_email
FROM _rows_o29_link WHERE status = 'linked' AND rank > 1
UNION ALL
SELECT 'object_29', l.record_id, $file29, l._line, 'answers_without_scores',
       'cycle ' || c.cycle || ': ' || c.answers || ' answers, no scores for that cycle', l.raw_email
FROM _rows_answer_cycles c JOIN _rows_o29_link l ON l._record = c._record
WHERE NOT c.has_scores
ORDER BY 1, 4, 5
"""
