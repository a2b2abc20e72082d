"""Audit sections read from the system catalogs: keys and indexes present (F2) and Row Level
Security state (docs/ARCHITECTURE.md, “Quality bars”). Read-only operations. REST targets expose no catalogs, so there both
sections say "not visible over REST" and their checks are reported as not run, never as passed.
"""

from __future__ import annotations

import pandas as pd

from vespa_lib.audit.base import Finding, Section, as_source
from vespa_lib.write import schema

NOT_VISIBLE = "not visible over REST"

__all__ = ["YEAR_KEYED_TABLES", "keys_and_indexes", "rls_state"]

# docs/DOMAIN.md, “Production schema” / F2: one row per student per year, so every key on these tables must include the year.
YEAR_KEYED_TABLES = ("students", "vespa_scores", "question_responses")
_COLUMNS = ["table", "kind", "name", "columns", "definition", "flag"]


def keys_and_indexes(t) -> Section:
    """Constraints and indexes present per production table, flagging single-year keys (a unique key
    on students / vespa_scores / question_responses without academic_year, e.g. the F2 key
    ``unique(email)``) and the expected keys of docs/DOMAIN.md, “Production schema” that are missing. Read-only."""
    src = as_source(t)
    if src.kind == "supabase":
        frame = pd.DataFrame([{"table": tb, "kind": NOT_VISIBLE} for tb in src.tables], columns=_COLUMNS)
        return Section(f"Keys and indexes ({NOT_VISIBLE})", frame,
                       [Finding.unavailable("single_year_keys", NOT_VISIBLE),
                        Finding.unavailable("expected_keys_missing", NOT_VISIBLE)])
    con = src.target.con  # the DuckDB / psycopg connection: schema's catalog readers take it
    found = [c for c in schema.constraints(con) if c["schema"] == "public" and c["table"] in src.tables]
    found += [{**i, "kind": "index"} for i in schema.indexes(con)
              if i["schema"] == "public" and i["table"] in src.tables and not i["unique"]]
    rows = [{"table": c["table"], "kind": c["kind"], "name": c["name"], "columns": ", ".join(c["columns"]),
             "definition": c["definition"], "flag": _flag(c)} for c in found]
    missing = _missing_keys(found, src.tables)
    rows += [{"table": tb, "kind": "missing", "name": "", "columns": ", ".join(cols),
              "definition": "", "flag": "expected key missing"} for tb, cols in missing]
    frame = pd.DataFrame(rows, columns=_COLUMNS).sort_values(["table", "kind", "name"], ignore_index=True)
    single = frame[frame["flag"].str.startswith("single-year")]
    findings = [
        Finding("single_year_keys", len(single),
                f"{len(single)} unique keys omit academic_year: "
                + ("; ".join(f"{a}({b})" for a, b in zip(single["table"], single["columns"], strict=True)) or "none"),
                {"keys": [f"{a}({b})" for a, b in zip(single["table"], single["columns"], strict=True)]}),
        Finding("expected_keys_missing", len(missing), f"{len(missing)} keys of docs/DOMAIN.md, “Production schema” are missing",
                {"keys": [f"{tb}({', '.join(cols)})" for tb, cols in missing]}),
    ]
    return Section("Constraints and indexes (F2)", frame, findings)


def _is_key(c: dict) -> bool:
    return c["kind"] in ("primary_key", "unique")


def _flag(c: dict) -> str:
    if not _is_key(c) or c["table"] not in YEAR_KEYED_TABLES or list(c["columns"]) == ["id"]:
        return ""
    # Expression keys (unique(lower(email))) have no plain columns: read the definition too.
    if "academic_year" in c["columns"] or "academic_year" in (c["definition"] or ""):
        return ""
    return "single-year key (F2)"


def _missing_keys(found: list[dict], present: list[str]) -> list[tuple[str, tuple[str, ...]]]:
    have = {(c["table"], frozenset(c["columns"])) for c in found if _is_key(c)}
    missing = []
    for table in schema.PRODUCTION_TABLES:
        if table.name not in present:
            continue
        for cols in (table.primary_key, *table.uniques.values()):
            if cols and (table.name, frozenset(cols)) not in have:
                missing.append((table.name, tuple(cols)))
    return missing


_PG_RLS = """
SELECT c.relname AS "table", c.relrowsecurity AS rls_enabled, c.relforcerowsecurity AS rls_forced,
       (SELECT COUNT(*) FROM pg_policies p WHERE p.schemaname = n.nspname AND p.tablename = c.relname) AS policies
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND c.relname = ANY(%s)
ORDER BY c.relname
"""


def rls_state(t) -> Section:
    """Row Level Security per production table: enabled, forced, number of policies (PostgreSQL).
    DuckDB has no RLS ("not applicable"); REST cannot see it ("not visible"): on both the check is
    not run. Read-only."""
    src = as_source(t)
    if src.kind != "postgres":
        state = "not applicable (DuckDB has no Row Level Security)" if src.kind == "duckdb" else NOT_VISIBLE
        return Section("Row Level Security", pd.DataFrame({"table": src.tables, "rls": state}),
                       [Finding.unavailable("rls_disabled", state)])
    frame = src.query(_PG_RLS, [list(src.tables)])
    frame["policies"] = frame["policies"].astype("int64")
    off = frame[~frame["rls_enabled"].astype(bool)]
    finding = Finding("rls_disabled", len(off),
                      f"{len(off)} production tables have Row Level Security disabled",
                      {"tables": list(off["table"])})
    return Section("Row Level Security (PostgreSQL)", frame, [finding])
