"""Reading a snapshot's CSV files with DuckDB under a pinned read specification (docs/DOMAIN.md, “Reading the files”).

``open_snapshot(folder)`` finds the three Knack exports (object_6, object_10, object_29) by the
field map's file globs, resolves each header row against the field map and loads each file into a
DuckDB table (``o6``, ``o10``, ``o29``) whose columns are the map's *logical* names, every one
VARCHAR (parsing dates, emails and scores is ``knack``'s job, never the CSV sniffer's). Each table
also carries ``_record`` (1-based record number) and ``_line`` (the physical line where the record
starts), so counts are of records, never lines (F5), and any finding can point into the file.

Read-only: the input files are opened for reading only and never modified. Malformed input (wrong
encoding, ragged rows, an unterminated quote, an empty file, a missing header, lines no record
explains) raises :class:`SnapshotError` naming the file and the problem; nothing is skipped.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from vespa_lib.errors import SnapshotError
from vespa_lib.ops import progress
from vespa_lib.ops.files import sha256_of
from vespa_lib.rules import fieldmap
from vespa_lib.sources import duckwork

__all__ = ["FILLED", "READ_SPEC", "TABLES", "Snapshot", "find_files", "open_snapshot"]

TABLES = {"object_6": "o6", "object_10": "o10", "object_29": "o29"}
BOM = b"\xef\xbb\xbf"
_CHUNK = 16 * 1024 * 1024
_MAX_LINE = 16 * 1024 * 1024
# DuckDB's default read buffer is 16x max_line_size (256 MiB per buffer): two lines' worth keeps a
# 1.5 GB file's read within the work connections' memory cap (vespa_lib.sources.duckwork)
_BUFFER = 2 * _MAX_LINE
FILLED = "_filled_"  # view column of a rich_text column: whether the cell holds more than white space

# docs/DOMAIN.md, “Reading the files”: every column text, explicit delimiter/quote/escape/header, UTF-8 with or without BOM,
# newlines inside quoted cells. ``auto_detect`` is off, so DuckDB sniffs neither types nor dialect;
# only the line terminator (\n or \r\n) is left to it (pinning '\r\n' makes DuckDB 2.0 read nothing).
READ_SPEC: dict[str, object] = {
    "reader": "duckdb.read_csv",
    "all_varchar": True,
    "columns": "every header cell declared VARCHAR, in file order",
    "auto_detect": False,
    "delim": ",",
    "quote": '"',
    "escape": '"',
    "header": True,
    "strict_mode": True,
    "null_padding": False,
    "ignore_errors": False,
    "encoding": "utf-8",
    "bom": "tolerated: a UTF-8 byte-order mark before the header is skipped with it",
    "new_line": "\\n or \\r\\n (terminator detected by DuckDB; line breaks inside quoted cells are kept)",
    "max_line_size": _MAX_LINE,
    "buffer_size": _BUFFER,
    "empty_cells": "NULL",
}

_READ_SQL = (
    "SELECT * FROM read_csv(?, columns = {cols}, all_varchar = true, auto_detect = false, "
    "delim = ',', quote = '\"', escape = '\"', header = true, strict_mode = true, "
    f"null_padding = false, ignore_errors = false, encoding = 'utf-8', max_line_size = {_MAX_LINE}, "
    f"buffer_size = {_BUFFER})"
)


@dataclass
class _FileInfo:
    path: Path
    headers: list[str]
    bom: bool
    header_newlines: int  # line breaks inside quoted header cells (normally 0)
    physical_lines: int = 0
    records: int = 0
    newlines_in_cells: int = 0
    sha256: str | None = None


@dataclass
class Snapshot:
    """The loaded snapshot: one DuckDB table per object, named by :data:`TABLES`. Read-only."""

    con: duckdb.DuckDBPyConnection
    files: dict[str, Path]
    resolutions: dict[str, fieldmap.Resolution]
    read_spec: dict[str, object] = field(default_factory=lambda: dict(READ_SPEC))
    _info: dict[str, _FileInfo] = field(default_factory=dict, repr=False)

    def table(self, obj: str) -> str:
        return TABLES[obj]

    def records(self, obj: str) -> int:
        """Number of CSV records (not lines, F5)."""
        return self._info[obj].records

    def physical_lines(self, obj: str) -> int:
        """Number of physical lines in the file (a last line without a terminator counts)."""
        return self._info[obj].physical_lines

    def newlines_in_cells(self, obj: str) -> int:
        """Line breaks inside quoted cells: the lines that are not record starts."""
        return self._info[obj].newlines_in_cells

    def bom(self, obj: str) -> bool:
        return self._info[obj].bom

    def headers(self, obj: str) -> list[str]:
        return list(self._info[obj].headers)

    def sha256(self, obj: str) -> str:
        """SHA-256 of the file's bytes (computed once, in chunks)."""
        info = self._info[obj]
        if info.sha256 is None:
            info.sha256 = sha256_of(info.path)
        return info.sha256


def find_files(snapshot_dir: str | Path) -> dict[str, Path]:
    """The one file per object matching the field map's ``file_glob``. Read-only."""
    folder = Path(snapshot_dir)
    if not folder.is_dir():
        raise SnapshotError(f"Snapshot folder {folder} does not exist or is not a folder. "
                            "Pass the folder holding the FullObject_6/10/29 CSV exports.")
    fmap = fieldmap.load()
    found: dict[str, Path] = {}
    for obj in fieldmap.OBJECTS:
        pattern = fmap.file_globs[obj]
        hits = sorted(p for p in folder.glob(pattern) if p.is_file())
        if not hits:
            raise SnapshotError(f"{folder}: no file matches {pattern} ({obj}). "
                                "Copy the export into the folder or fix file_glob in fieldmap.yaml.")
        if len(hits) > 1:
            names = ", ".join(p.name for p in hits)
            raise SnapshotError(f"{folder}: {len(hits)} files match {pattern} ({obj}): {names}. "
                                "A snapshot holds exactly one export per object; move the others away.")
        found[obj] = hits[0]
    return found


def open_snapshot(snapshot_dir: str | Path, con: duckdb.DuckDBPyConnection | None = None) -> Snapshot:
    """Load the three files into ``con`` (a new in-memory DuckDB by default). Read-only on the files."""
    files = find_files(snapshot_dir)
    if con is None:
        con = duckwork.connect()
    snap = Snapshot(con=con, files=files, resolutions={})
    fmap = fieldmap.load()
    for obj, path in progress.bar(files.items(), total=len(files), desc="Reading the snapshot", unit="file"):
        info = _read_header(path)
        snap.resolutions[obj] = _resolve(fmap, obj, info)
        _load(con, obj, info, snap.resolutions[obj], fmap.columns(obj))
        snap._info[obj] = info
    return snap


# ---------------------------------------------------------------------------------------- header

def _read_header(path: Path) -> _FileInfo:
    """The header row (BOM stripped), parsed with the same dialect as the data."""
    with path.open("rb") as fh:
        head = fh.read(1024 * 1024)
    if not head.strip():
        raise SnapshotError(f"{path}: the file is empty (no header row, no records). "
                            "Re-export the object from Knack; an empty export cannot be profiled or imported.")
    bom = head.startswith(BOM)
    try:
        text = head[len(BOM) if bom else 0:].decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # a multi-byte character cut by the 1 MiB read is not an error
            raise _encoding_error(path, f"byte {exc.start}") from None
        text = head[len(BOM) if bom else 0:exc.start].decode("utf-8")
    try:
        headers = next(csv.reader(io.StringIO(text, newline=""), delimiter=",", quotechar='"', strict=True))
    except (csv.Error, StopIteration) as exc:
        raise SnapshotError(f"{path}: the header row cannot be read ({exc}). "
                            "Check the file is a comma-separated Knack export.") from None
    if not any(h.strip() for h in headers):
        raise SnapshotError(f"{path}: the first line is blank, so there is no header row. "
                            "Re-export the object with its header row.")
    return _FileInfo(path, headers, bom, sum(h.count("\n") for h in headers))


def _resolve(fmap: fieldmap.FieldMap, obj: str, info: _FileInfo) -> fieldmap.Resolution:
    try:
        return fmap.require(obj, info.headers, info.path)
    except SnapshotError as exc:
        if any(re.fullmatch(r"[0-9a-fA-F]{24}", h.strip()) or "@" in h for h in info.headers):
            raise SnapshotError(f"{exc} The first line looks like data (a record id or an email), "
                                "so the file seems to have no header row.") from None
        raise


def _encoding_error(path: Path, where: str) -> SnapshotError:
    return SnapshotError(f"{path}: not UTF-8 (invalid byte sequence at {where}); it may be Latin-1 or "
                         "Windows-1252. Re-export as UTF-8 (Knack's default) or convert a copy with "
                         "iconv; the original is never modified.")


# ------------------------------------------------------------------------------------------ load

def _load(con, obj: str, info: _FileInfo, res: fieldmap.Resolution, columns: dict[str, fieldmap.Column]) -> None:
    """Read the whole file set-based into ``_csv_<t>`` (the mapped columns) and ``_lines_<t>``
    (``_record``, ``_line``); the view ``<t>`` shows them under the logical column names.

    Every cell is read and counted for line breaks, but only mapped columns are kept, and of a
    ``rich_text`` column (reflections, goals: free text the workbook never imports) only whether it is
    filled (``_filled_<name>``): those cells are most of a file's bytes (object_10 at 10x: 1.4 of
    1.5 GB), and holding them cost memory and time for nothing."""
    table, raw, lines = TABLES[obj], f"_csv_{TABLES[obj]}", f"_lines_{TABLES[obj]}"
    by_header = {h: n for n, h in res.found.items()}
    names = [_ident(by_header.get(h, f"_u{i}")) for i, h in enumerate(info.headers)]
    if len(set(names)) != len(names):
        raise SnapshotError(f"{info.path}: the header row repeats a column name. "
                            "Re-export the object; each header must be unique.")
    cols = "{" + ", ".join(f"'{n[1:-1]}': 'VARCHAR'" for n in names) + "}"
    # One flat concat per row: a sum of one term per column makes DuckDB's planner slow on 140 columns.
    row = f"concat({', '.join(names)})"
    newlines = f"strlen({row}) - strlen(replace({row}, chr(10), ''))"  # bytes: O(1) per string
    rich = {n for n in res.found if columns[n].kind == "rich_text"}
    kept = ", ".join([_ident(by_header[res.found[n]]) for n in sorted(res.found) if n not in rich] +
                     [f"NOT regexp_full_match({_ident(by_header[res.found[n]])}, '\\s*') AS {_ident(FILLED + n)}"
                      for n in sorted(rich)]) or "NULL AS _none"
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE {raw} AS SELECT {kept}, {newlines} AS _nl "
                    f"FROM ({_READ_SQL.format(cols=cols)})", [str(info.path)])
    except duckdb.Error as exc:
        raise _read_error(info.path, exc) from None
    # F5: a record starts after the header and every earlier record with its in-cell line breaks.
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {lines} AS
        SELECT CAST(rowid + 1 AS BIGINT) AS _record,
               CAST(2 + {info.header_newlines} + rowid
                    + coalesce(sum(_nl) OVER (ORDER BY rowid ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)
                    AS BIGINT) AS _line
        FROM {raw} ORDER BY rowid""")
    # A view, not a copy: POSITIONAL JOIN pairs the two tables row by row in file order.
    select = ", ".join(f"c.{_ident(FILLED + n)}" if n in rich
                       else f"CAST(NULL AS BOOLEAN) AS {_ident(FILLED + n)}" if col.kind == "rich_text"
                       else f"c.{_ident(by_header[res.found[n]])} AS {_ident(n)}" if n in res.found
                       else f"CAST(NULL AS VARCHAR) AS {_ident(n)}" for n, col in columns.items())
    con.execute(f"CREATE OR REPLACE TEMP VIEW {table} AS SELECT l._record, l._line, {select} "
                f"FROM {lines} l POSITIONAL JOIN {raw} c")
    info.records, info.newlines_in_cells = con.execute(f"SELECT count(*), coalesce(sum(_nl), 0) FROM {raw}").fetchall()[0]
    info.physical_lines = _count_lines(info.path)
    _check_lines(info)


def _ident(name: str) -> str:
    """A quoted identifier for a logical or generated column name (names come from the field map)."""
    return '"' + name.replace('"', '""') + '"'


def _count_lines(path: Path) -> int:
    """Physical lines: '\\n' count in 16 MiB chunks, plus a last line without a terminator."""
    count, last = 0, b""
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (1 if last and last != b"\n" else 0)


def _check_lines(info: _FileInfo) -> None:
    """F5: every physical line is a header line, a record start or a line break inside a cell.
    Anything else (blank lines DuckDB skipped, stray breaks) is refused rather than ignored."""
    expected = 1 + info.header_newlines + info.records + info.newlines_in_cells
    if info.physical_lines != expected:
        raise SnapshotError(
            f"{info.path}: {info.physical_lines:,} physical lines but {info.records:,} records, "
            f"{info.newlines_in_cells:,} line breaks inside cells and 1 header line explain {expected:,}; "
            f"{info.physical_lines - expected:+,} lines are unexplained (blank lines?). "
            "Remove blank lines from a copy of the file or re-export it; records are never guessed.")


_PROBLEMS = (
    ("Expected Number of Columns", "ragged rows (a record has the wrong number of columns)"),
    ("unterminated quote", "an unterminated quote (the file may be truncated)"),
    ("Invalid unicode", "not UTF-8 (invalid byte sequence); it may be Latin-1 or Windows-1252"),
    ("quote", "a malformed quoted cell"),
)


def _read_error(path: Path, exc: duckdb.Error) -> SnapshotError:
    """Translate DuckDB's CSV error into the fact (file, line, problem) and the next step."""
    text = str(exc)
    line = re.search(r"CSV Error on Line: (\d+)", text)
    where = f" at line {line.group(1)}" if line else ""
    problem = next((p for key, p in _PROBLEMS if key.lower() in text.lower()), None)
    if problem is None:
        problem = "unreadable CSV: " + text.splitlines()[0]
    return SnapshotError(f"{path}: {problem}{where}. Re-export the object from Knack (UTF-8, with all "
                         "records complete); the file is never repaired or partially read.")
