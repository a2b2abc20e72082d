"""The csv_profile runbook's logic (docs/ARCHITECTURE.md, “Runbooks”): what a snapshot holds before anything is imported.

``profile_snapshot(snapshot, db=...)`` returns a :class:`Profile`: one DataFrame per section (files,
columns, establishment coverage, date formats, academic years, problems, duplicates, scores,
re-enrolments, completions per month), the blockers, and the field mapping actually used.

Read-only: it reads the snapshot's DuckDB tables and, when given, the production database (its
``establishments`` and ``students`` tables, for establishment names, the Australian calendar rule
and the email-domain fallback). Work is set-based: each DISTINCT date or email string is decoded
once with ``knack``'s decoders and joined back in DuckDB; no Python loop runs over records.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa

from vespa_lib.rules import fieldmap, knack
from vespa_lib.rules.years import uk_year_sql
from vespa_lib.sources.snapshot import FILLED, Snapshot

__all__ = ["Profile", "profile_snapshot", "snapshot_year_of", "DATE_FORMATS", "METHODS"]

METHODS = ("connection", "object_6", "email_domain", "none")  # docs/ARCHITECTURE.md, establishment chain
DATE_FORMATS = (  # docs/DOMAIN.md, “Knack fields”: UK day-first, with or without time; ISO also occurs (RE2 and re syntax)
    ("DD/MM/YYYY", r"\d{1,2}/\d{1,2}/\d{4}"),
    ("DD/MM/YYYY HH:MM", r"\d{1,2}/\d{1,2}/\d{4} \d{1,2}:\d{2}(:\d{2})?"),
    ("ISO", r"\d{4}-\d{2}-\d{2}([ T].*)?"),
)
_EST_COLS = ["id", "knack_id", "name", "is_australian", "use_standard_year"]
_STU_COLS = ["email", "academic_year", "establishment_id", "knack_id"]


@dataclass
class Profile:
    """Every section as a DataFrame, plus blockers and the field mapping. Read-only data."""

    files: pd.DataFrame
    columns: pd.DataFrame
    establishment: pd.DataFrame
    dates: pd.DataFrame
    years: pd.DataFrame
    problems: pd.DataFrame
    duplicates: pd.DataFrame
    scores: pd.DataFrame
    reenrolled: pd.DataFrame
    completions_by_month: pd.DataFrame
    blockers: list[str] = field(default_factory=list)
    blockers_without_fallback: list[str] = field(default_factory=list)
    mapping: dict = field(default_factory=dict)
    snapshot_year: str = ""

    def field_mapping(self) -> dict:
        """The mapping actually used (for FIELD_MAPPING.json): per object, header per logical column."""
        return self.mapping

    def sections(self) -> dict[str, pd.DataFrame]:
        names = ("files", "columns", "establishment", "dates", "years", "problems", "duplicates",
                 "scores", "reenrolled", "completions_by_month")
        return {n: getattr(self, n) for n in names}


def snapshot_year_of(snap: Snapshot) -> str:
    """The academic year a year-end snapshot closes: ``FullObject_10_2025.csv`` → ``2024/2025``."""
    m = re.search(r"(\d{4})", snap.files["object_10"].stem.split("_", 2)[-1])
    return f"{int(m.group(1)) - 1}/{m.group(1)}" if m else ""


def profile_snapshot(snapshot: Snapshot, *, db=None, snapshot_year: str | None = None) -> Profile:
    """Profile the loaded snapshot. ``db``: a targets.Target or DuckDB connection (read-only use)."""
    con = snapshot.con
    _register_db(con, db)
    _decode_lookups(snapshot)
    _establishment_chain(con)
    year = snapshot_year or snapshot_year_of(snapshot)
    prof = Profile(
        files=_files(snapshot), columns=_columns(snapshot), establishment=_coverage(con, db is not None),
        dates=_dates(snapshot), years=_years(snapshot), problems=_problems(snapshot),
        duplicates=_duplicates(con), scores=_scores(snapshot), reenrolled=_reenrolled(con, year),
        completions_by_month=_by_month(con), mapping=_mapping(snapshot), snapshot_year=year,
    )
    prof.blockers = _blockers(snapshot, prof.establishment)
    prof.blockers_without_fallback = [f"{o}: {c.name}" for o, r in snapshot.resolutions.items()
                                      for c in r.blockers if not c.fallback]
    return prof


# ------------------------------------------------------------------------------ inputs and lookups

def _register_db(con, db) -> None:
    """Copy the two small production tables the profile needs into the snapshot's DuckDB."""
    tables = {"establishments": _EST_COLS, "students": _STU_COLS}
    for table, cols in tables.items():
        data = _read_db(db, table, cols)
        con.register("_incoming", data)
        casts = ", ".join(f"CAST({c} AS {'BOOLEAN' if c.startswith(('is_', 'use_')) else 'VARCHAR'}) AS {c}"
                          for c in cols)
        con.execute(f"CREATE OR REPLACE TEMP TABLE _db_{table} AS SELECT {casts} FROM _incoming")
        con.unregister("_incoming")


def _read_db(db, table: str, cols: list[str]) -> pa.Table:
    if db is None:
        return pa.table({c: pa.array([], pa.bool_() if c.startswith(("is_", "use_")) else pa.string())
                         for c in cols})
    if hasattr(db, "read_table"):  # a vespa_lib.sources.targets.Target
        return db.read_table(table, columns=cols)
    return db.sql(f"SELECT {', '.join(cols)} FROM {table}").to_arrow_table()


def _day(raw: str) -> tuple:
    d = knack.decode_date(raw)
    return (knack.completion_date(d) if d.ok else None, d.reason)


def _decode_lookups(snap: Snapshot) -> None:
    """Decode each DISTINCT date and email string once (knack decoders) into lookup tables."""
    con = snap.con
    date_cols = [(snap.table(o), c) for o in fieldmap.OBJECTS for c, col in fieldmap.load().columns(o).items()
                 if col.kind == "date"]
    _decode_dates(con, " UNION ".join(f"SELECT DISTINCT {c} AS raw FROM {t}" for t, c in date_cols))
    values = " UNION ".join(f"SELECT DISTINCT email AS raw FROM {snap.table(o)}" for o in fieldmap.OBJECTS)
    rows = [(raw, *knack.decode_email(raw)) for (raw,) in
            con.execute(f"SELECT raw FROM ({values}) WHERE raw IS NOT NULL").fetchall()]
    _lookup(con, "_emails", rows, {"raw": pa.string(), "email": pa.string(), "reason": pa.string()})


def _decode_dates(con, values_sql: str) -> None:
    """``_dates(raw, day, reason, fmt)``. Timestamps ``DD/MM/YYYY HH:MM`` are decoded as their
    distinct date parts and distinct time parts (a few thousand instead of one per record); any
    other spelling is decoded whole. Both go through ``knack.decode_date``, so the rules are its."""
    trimmed = "trim(raw, ' ' || chr(9) || chr(10) || chr(13))"  # knack.DATE_TRIM
    fmt = " ".join(f"WHEN regexp_full_match({trimmed}, '{rx}') THEN '{name}'" for name, rx in DATE_FORMATS)
    split = f"regexp_full_match(raw, '{DATE_FORMATS[1][1]}')"
    con.execute(f"""CREATE OR REPLACE TEMP TABLE _date_raw AS
        SELECT raw, CASE WHEN {split} THEN split_part(raw, ' ', 1) END AS dpart,
               CASE WHEN {split} THEN split_part(raw, ' ', 2) END AS tpart, CASE {fmt} ELSE 'other' END AS fmt
        FROM ({values_sql}) WHERE raw IS NOT NULL""")
    schema = {"raw": pa.string(), "day": pa.date32(), "reason": pa.string()}
    for name, q, decode in (
            ("_dec_whole", "SELECT raw FROM _date_raw WHERE dpart IS NULL", _day),
            ("_dec_part", "SELECT DISTINCT dpart FROM _date_raw WHERE dpart IS NOT NULL", _day),
            ("_dec_time", "SELECT DISTINCT tpart FROM _date_raw WHERE tpart IS NOT NULL",
             lambda t: (None, knack.decode_date("01/01/2000 " + t).reason))):
        _lookup(con, name, [(v, *decode(v)) for (v,) in con.execute(q).fetchall()], schema)
    con.execute("""CREATE OR REPLACE TEMP TABLE _dates AS
        SELECT r.raw, CASE WHEN r.dpart IS NULL THEN w.day WHEN t.reason IS NULL THEN p.day END AS day,
               CASE WHEN r.dpart IS NULL THEN w.reason
                    WHEN p.reason IS NULL THEN t.reason          -- a valid date with an impossible time
                    WHEN t.reason IS NOT NULL THEN 'impossible_date' ELSE p.reason END AS reason, r.fmt
        FROM _date_raw r LEFT JOIN _dec_whole w ON r.dpart IS NULL AND w.raw = r.raw
        LEFT JOIN _dec_part p ON p.raw = r.dpart LEFT JOIN _dec_time t ON t.raw = r.tpart""")


def _lookup(con, name: str, rows: list[tuple], schema: dict) -> None:
    cols = list(zip(*rows, strict=True)) if rows else [[] for _ in schema]
    data = pa.table({k: pa.array(list(v), t) for (k, t), v in zip(schema.items(), cols, strict=True)})
    con.register("_incoming", data)
    con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM _incoming")
    con.unregister("_incoming")


def _establishment_chain(con) -> None:
    """Per object_10 record: the first establishment rule that decides it (docs/ARCHITECTURE.md)."""
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _est10 AS
        WITH acct AS (   -- object_6 accounts with an establishment, by decoded email
            SELECT e.email, min(trim(a.establishment)) AS est, count(DISTINCT trim(a.establishment)) AS n
            FROM o6 a JOIN _emails e ON e.raw = a.email
            WHERE e.reason IS NULL AND nullif(trim(a.establishment), '') IS NOT NULL GROUP BY e.email),
        dom AS (         -- DOMAIN: an email domain owned by exactly one establishment among students
            SELECT split_part(lower(trim(email)), '@', 2) AS domain, min(establishment_id) AS est_id,
                   count(DISTINCT establishment_id) AS n
            FROM _db_students WHERE establishment_id IS NOT NULL GROUP BY 1),
        chain AS (
            SELECT t._record, e.email,
                   CASE WHEN nullif(trim(t.establishment), '') IS NOT NULL THEN 'connection'
                        WHEN acct.n = 1 THEN 'object_6'
                        WHEN dom.n = 1 THEN 'email_domain' ELSE 'none' END AS method,
                   coalesce(nullif(trim(t.establishment), ''), acct.est) AS est_text, dom.est_id
            FROM o10 t LEFT JOIN _emails e ON e.raw = t.email AND e.reason IS NULL
            LEFT JOIN acct ON acct.email = e.email
            LEFT JOIN dom ON dom.domain = split_part(e.email, '@', 2) AND dom.n = 1)
        SELECT c._record, c.email, c.method,
               CASE WHEN c.method = 'email_domain' THEN c.est_id
                    WHEN c.method <> 'none' THEN (SELECT min(s.id) FROM _db_establishments s
                         WHERE lower(s.name) = lower(c.est_text) OR lower(s.knack_id) = lower(c.est_text)) END
                 AS establishment_id
        FROM chain c""")


# ---------------------------------------------------------------------------------------- sections

def _files(snap: Snapshot) -> pd.DataFrame:
    rows = []
    for obj, path in snap.files.items():
        res = snap.resolutions[obj]
        rows.append({
            "object": obj, "file": path.name, "records": snap.records(obj),
            "physical_lines": snap.physical_lines(obj), "line_breaks_in_cells": snap.newlines_in_cells(obj),
            "lines_per_record": round(snap.physical_lines(obj) / max(snap.records(obj), 1), 2),
            "encoding": "utf-8", "bom": snap.bom(obj), "columns_found": len(res.found),
            "columns_missing": len(res.missing), "unmapped_headers": len(res.unmapped_headers),
            "blockers": ", ".join(c.name for c in res.blockers),
        })
    return pd.DataFrame(rows)


def _columns(snap: Snapshot) -> pd.DataFrame:
    """Per logical column: the header used (or missing), and its fill rate (non-blank cells)."""
    frames = []
    for obj in fieldmap.OBJECTS:
        cols, res, table = fieldmap.load().columns(obj), snap.resolutions[obj], snap.table(obj)
        # regexp, not trim: trimming copies every multi-line comment cell
        counts = ", ".join(f"count(*) FILTER (WHERE {_q(FILLED + c)})" if col.kind == "rich_text" else
                           f"count(*) FILTER (WHERE NOT regexp_full_match({_q(c)}, '\\s*'))" for c, col in cols.items())
        filled = snap.con.execute(f"SELECT {counts} FROM {table}").fetchall()[0]
        n = snap.records(obj)
        frames.append(pd.DataFrame({
            "object": obj, "column": list(cols), "header": [res.found.get(c) for c in cols],
            "status": ["found" if c in res.found else ("missing (blocker)" if cols[c].blocker else
                       "missing (required)" if cols[c].required else "missing") for c in cols],
            "filled": list(filled), "fill_rate": [round(f / n, 4) if n else 0.0 for f in filled],
        }))
    return pd.concat(frames, ignore_index=True)


def _coverage(con, with_db: bool) -> pd.DataFrame:
    """F4: how each object_10 record gets its establishment; the counts sum to the record count."""
    df = con.execute("""
        SELECT m.method, count(e._record) AS records, count(e.establishment_id) AS in_database
        FROM (SELECT unnest(?) AS method, generate_subscripts(?, 1) AS ord) m
        LEFT JOIN _est10 e ON e.method = m.method GROUP BY m.method, m.ord ORDER BY m.ord""",
                     [list(METHODS), list(METHODS)]).df()
    total = int(df["records"].sum())
    df["share"] = (df["records"] / total).round(4) if total else 0.0
    if not with_db:
        df["in_database"] = pd.NA  # no database given: names cannot be matched
    return df


def _date_columns(snap: Snapshot):
    for obj in fieldmap.OBJECTS:
        for name, col in fieldmap.load().columns(obj).items():
            if col.kind == "date" and name in snap.resolutions[obj].found:
                yield obj, snap.table(obj), name


def _dates(snap: Snapshot) -> pd.DataFrame:
    """Date formats seen per column, with the decoded range of each format."""
    parts = [f"""SELECT '{obj}' AS object, '{name}' AS "column", d.fmt AS format, count(*) AS records,
                        count(d.day) AS parsed, min(d.day) AS min_date, max(d.day) AS max_date
                 FROM {table} t JOIN _dates d ON d.raw = t.{_q(name)} GROUP BY d.fmt"""
             for obj, table, name in _date_columns(snap)]
    return snap.con.execute(" UNION ALL ".join(parts) + " ORDER BY 1, 2, 3").df() if parts else pd.DataFrame()


def _years(snap: Snapshot) -> pd.DataFrame:
    """docs/DOMAIN.md, “Academic years”: the academic year of every dated completion under the UK rule, and under each
    school's own rule (Australian calendar year where the database flags the school)."""
    school = ("CASE WHEN is_australian AND use_standard_year = false "  # F14: NULL means the UK rule
              "THEN CAST(year(day) AS VARCHAR) || '/' || CAST(year(day) AS VARCHAR) "
              f"ELSE {uk_year_sql('day')} END")
    q = f"""
        WITH dated AS (
            SELECT 'object_10' AS object, d.day, s.is_australian, s.use_standard_year
            FROM o10 t JOIN _dates d ON d.raw = t.completion_date AND d.day IS NOT NULL
            JOIN _est10 e ON e._record = t._record
            LEFT JOIN _db_establishments s ON s.id = e.establishment_id
            UNION ALL
            SELECT 'object_29', d.day, NULL, NULL
            FROM o29 t JOIN _dates d ON d.raw = t.completion_date AND d.day IS NOT NULL)
        SELECT object, 'uk' AS rule, {uk_year_sql('day')} AS academic_year, count(*) AS records
        FROM dated GROUP BY ALL
        UNION ALL
        SELECT object, 'school' AS rule, {school}, count(*)
        FROM dated WHERE object = 'object_10' GROUP BY ALL
        ORDER BY 1, 2, 3"""
    return snap.con.execute(q).df()


def _problems(snap: Snapshot) -> pd.DataFrame:
    """Unparseable dates and emails with knack's reason codes. Blank dates are not listed (blank is
    not an error); blank emails are (``no_email`` at import)."""
    parts = [f"""SELECT '{obj}' AS object, '{name}' AS "column", 'date' AS kind, d.reason, count(*) AS records,
                        min(t._line) AS first_line
                 FROM {table} t JOIN _dates d ON d.raw = t.{_q(name)} WHERE d.reason <> 'blank' GROUP BY d.reason"""
             for obj, table, name in _date_columns(snap)]
    parts += [f"""SELECT '{o}', 'email', 'email', coalesce(e.reason, 'blank'), count(*), min(t._line)
                  FROM {snap.table(o)} t LEFT JOIN _emails e ON e.raw = t.email
                  WHERE e.reason IS DISTINCT FROM NULL OR t.email IS NULL GROUP BY ALL"""
              for o in fieldmap.OBJECTS if "email" in snap.resolutions[o].found]
    return snap.con.execute(" UNION ALL ".join(parts) + " ORDER BY 1, 2, 4").df()


def _duplicates(con) -> pd.DataFrame:
    """Duplicate record ids, and duplicate decoded (lower-cased) emails, per object."""
    parts = [f"""SELECT '{o}' AS object, '{key}' AS key, count(*) AS duplicated_values,
                        CAST(coalesce(sum(n), 0) AS BIGINT) AS records_involved
                 FROM (SELECT {expr} AS k, count(*) AS n FROM {t} x {join}
                       WHERE {expr} IS NOT NULL GROUP BY 1 HAVING count(*) > 1)"""
             for o, t in (("object_6", "o6"), ("object_10", "o10"), ("object_29", "o29"))
             for key, expr, join in (("id", "lower(trim(x.id))", ""),
                                     ("email", "e.email", "LEFT JOIN _emails e ON e.raw = x.email AND e.reason IS NULL"))]
    return con.execute(" UNION ALL ".join(parts)).df()


def _scores(snap: Snapshot) -> pd.DataFrame:
    """Per score field: filled, range of valid scores, "7.0"-style texts, and failures by reason."""
    cols = [c for c, col in fieldmap.load().columns("object_10").items() if col.kind == "score"]
    values = " UNION ALL ".join(f"SELECT '{c}' AS field, {_q(c)} AS raw FROM o10 WHERE {_q(c)} IS NOT NULL"
                                for c in cols)
    raw = snap.con.execute(f"SELECT field, raw, count(*) AS n FROM ({values}) GROUP BY ALL").df()
    decoded = [knack.decode_score(v) for v in raw["raw"]]
    raw["value"] = pd.array([d.value for d in decoded], dtype="Int64")
    raw["reason"] = [d.reason or "ok" for d in decoded]
    raw["decimal_text"] = raw["reason"].eq("ok") & ~raw["raw"].str.strip().str.fullmatch(r"[0-9]+")
    ok = raw[raw["reason"] == "ok"]
    out = pd.DataFrame({"field": cols}).set_index("field")
    out["filled"] = raw.groupby("field")["n"].sum()
    out["min"] = ok.groupby("field")["value"].min()
    out["max"] = ok.groupby("field")["value"].max()
    out["decimal_text"] = ok[ok["decimal_text"]].groupby("field")["n"].sum()
    for reason in ("score_not_numeric", "score_not_integer", "score_out_of_range"):
        out[reason] = raw[raw["reason"] == reason].groupby("field")["n"].sum()
    counts = ["filled", "decimal_text", "score_not_numeric", "score_not_integer", "score_out_of_range"]
    out[counts] = out[counts].fillna(0).astype("int64")
    return out.reset_index()


def _reenrolled(con, year: str) -> pd.DataFrame:
    """Students who re-enrolled: same email under two object_10 record ids, or already in the
    database under another academic year than the snapshot's (docs/DOMAIN.md, “Academic years”, year-end semantics)."""
    return con.execute("""
        WITH snap AS (SELECT DISTINCT e.email, t.id FROM _est10 e JOIN o10 t USING (_record)
                      WHERE e.email IS NOT NULL),
             two_ids AS (SELECT email FROM snap GROUP BY email HAVING count(DISTINCT lower(id)) > 1),
             other_year AS (SELECT DISTINCT lower(trim(s.email)) AS email FROM _db_students s
                            WHERE s.academic_year <> ? AND lower(trim(s.email)) IN (SELECT email FROM snap))
        SELECT 'same email, two record ids in object_10' AS finding, count(*) AS students FROM two_ids
        UNION ALL SELECT 'email already in the database under another year', count(*) FROM other_year
        """, [year]).df()


def _by_month(con) -> pd.DataFrame:
    """Completions per month (object_10 completion dates that parse), for the chart."""
    return con.execute("""
        SELECT strftime(d.day, '%Y-%m') AS month, count(*) AS completions
        FROM o10 t JOIN _dates d ON d.raw = t.completion_date AND d.day IS NOT NULL
        GROUP BY 1 ORDER BY 1""").df()


def _blockers(snap: Snapshot, coverage: pd.DataFrame) -> list[str]:
    out = []
    for obj, res in snap.resolutions.items():
        for col in res.blockers:
            text = f"{obj}: column {col.name} ({', '.join(col.headers)}) is missing"
            if obj == "object_10" and col.name == "establishment":
                n = dict(zip(coverage["method"], coverage["records"], strict=True))
                text += (f"; fallback: {col.fallback}; coverage: {n['object_6']:,} via object_6, "
                         f"{n['email_domain']:,} via email domain, {n['none']:,} without establishment "
                         f"(of {sum(n.values()):,} records)")
            out.append(text + ".")
    return out


def _mapping(snap: Snapshot) -> dict:
    objects = {obj: {"file": path.name, **snap.resolutions[obj].to_dict()} for obj, path in snap.files.items()}
    return {"field_map_version": fieldmap.load().version, "read_spec": dict(snap.read_spec), "objects": objects}


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
