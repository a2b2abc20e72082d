"""Where the sync reads Knack's current state: a fresh CSV export or the Knack REST API. Read-only.

``open_source("csv:<dir>", year)`` opens a fresh export in the snapshot format with
:func:`vespa_lib.sources.snapshot.open_snapshot`; ``open_source("knack:APP_ID_VAR,API_KEY_VAR", year)``
reads object_6 whole and object_10/object_29 for the year's window through
:class:`vespa_lib.sources.knack_api.KnackClient` (the window widened by a day each side and then filtered
exactly, F12) and loads them into DuckDB as the same views ``o6``/``o10``/``o29`` with the same
logical columns. Both give a snapshot-like object that :func:`vespa_lib.rules.rows.build_rows` reads, so
the sync decodes exactly as the import does. Credentials are read from the named
environment variables by the client; this module never sees or records their values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import duckdb

from vespa_lib.errors import ParameterError
from vespa_lib.rules import years
from vespa_lib.sources import duckwork, knack_api, snapshot

__all__ = ["KNACK_DATE_FIELDS", "SyncSource", "open_source", "source_window"]

# docs/DOMAIN.md, “Knack fields”: object_10 field_855 and object_29 field_856 are the completion dates.
KNACK_DATE_FIELDS = {"object_10": "field_855", "object_29": "field_856"}


@dataclass
class SyncSource:
    """A source loaded into DuckDB: ``con`` with views o6/o10/o29, ``files`` naming each object."""

    kind: str
    spec: str
    con: duckdb.DuckDBPyConnection
    files: dict[str, Any]
    records: dict[str, int]
    details: dict = field(default_factory=dict)
    snapshot: Any = None  # the csv Snapshot (file hashes), when kind == "csv"

    def table(self, obj: str) -> str:
        return snapshot.TABLES[obj]

    def summary(self) -> dict:
        """What was read: kind, records per object, and the read window or file names."""
        return {"kind": self.kind, "source": self.spec, "records": dict(self.records), **self.details}


def source_window(year: str) -> tuple[date, date]:
    """Dates whose records can belong to UK year ``year`` = ``Y/Y+1`` or to a calendar-year school's
    running year during it, both ends inclusive (F12): 1 January Y to 31 July Y+1. From August to
    December the calendar schools run ``Y/Y``; from January to July ``Y+1/Y+1``, whose days up to any
    ``as_of`` of the UK year lie inside the window too (docs/DOMAIN.md, “Academic years”). Records of the calendar year
    closed on 1 January are read and set aside as ``stale_date``, never dropped unseen."""
    first, last = years.year_bounds(year)
    return date(first.year, 1, 1), last


def open_source(source: str, year: str, *, knack_base_url: str | None = None, knack_transport: Any = None,
                knack_sleep: Any = None) -> SyncSource:
    """Open ``source`` (``csv:<dir>`` or ``knack:APP_ID_VAR,API_KEY_VAR``) for UK year ``year``. Read-only."""
    kind, _, rest = str(source).partition(":")
    if kind == "csv" and rest:
        snap = snapshot.open_snapshot(Path(rest))
        records = {obj: snap.records(obj) for obj in snapshot.TABLES}
        return SyncSource("csv", source, snap.con, dict(snap.files), records,
                          {"files": {o: Path(p).name for o, p in snap.files.items()}}, snap)
    if kind == "knack" and rest.count(",") == 1 and all(p.strip() for p in rest.split(",")):
        app_var, key_var = (p.strip() for p in rest.split(","))
        return _open_knack(source, year, app_var, key_var, knack_base_url, knack_transport, knack_sleep)
    raise ParameterError(f"source {source!r} is not understood: use 'csv:<folder of a fresh export>' or "
                         "'knack:APP_ID_VAR,API_KEY_VAR' (names of environment variables, never the values).")


def _read_dated(client: Any, obj: str, field: str, start: Any, end: Any) -> tuple[list[dict], int]:
    """The year's records (window widened for F12, then filtered exactly) PLUS the records whose date
    is blank. Knack's date filters never match a blank date, yet a blank-date record must reach the
    rule chain to be set aside as ``no_date``; unseen, its student's rows would look deleted."""
    dated = list(client.records_between(obj, field, start, end))
    outside = int(client.last_read.get("outside_window", 0))
    blank = {"match": "and", "rules": [{"field": field, "operator": "is blank"}]}
    return dated + list(client.records(obj, filters=blank)), outside


def _open_knack(spec: str, year: str, app_var: str, key_var: str, base_url: str | None, transport: Any,
                sleep: Any) -> SyncSource:
    kw: dict[str, Any] = {"transport": transport}
    if base_url:
        kw["base_url"] = base_url
    if sleep is not None:
        kw["sleep"] = sleep
    start, end = source_window(year)
    con = duckwork.connect()
    records, outside = {}, {}
    with knack_api.KnackClient(app_var, key_var, **kw) as client:
        reads = {"object_6": lambda: (list(client.records("object_6")), 0)}
        for obj, fld in KNACK_DATE_FIELDS.items():
            reads[obj] = lambda obj=obj, fld=fld: _read_dated(client, obj, fld, start, end)
        for obj, read in reads.items():
            rows, outside[obj] = read()
            table = knack_api.to_arrow(rows, obj)
            records[obj] = table.num_rows
            con.register(f"_knack_{obj}", table)
            con.execute(f"CREATE TEMP TABLE {snapshot.TABLES[obj]} AS SELECT * FROM _knack_{obj}")
            con.unregister(f"_knack_{obj}")
    files = {obj: f"knack:{obj}" for obj in snapshot.TABLES}
    details = {"window": [start.isoformat(), end.isoformat()], "trimmed_outside_window": outside,
               "app_id_var": app_var, "api_key_var": key_var}
    return SyncSource("knack", spec, con, files, records, details)
