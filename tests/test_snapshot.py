"""snapshot: pinned DuckDB reading of the three exports, records vs lines (F5), malformed input."""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

import duckdb
import pytest

from vespa_lib.errors import SnapshotError
from vespa_lib.sources import snapshot

O6_HEAD = ["id", "field_91_email", "field_90_full", "field_179"]
O10_HEAD = ["id", "field_197_email", "field_187_full", "field_855_date", "field_155", "field_2302", "extra"]
O29_HEAD = ["id", "field_792", "field_1953"]


def _csv(rows: list[list[str]], newline: str = "\n") -> str:
    buf = io.StringIO(newline="")
    csv.writer(buf, lineterminator=newline, quoting=csv.QUOTE_MINIMAL).writerows(rows)
    return buf.getvalue()


def _write(folder: Path, o10_rows: list[list[str]] | None = None, *, o10_bytes: bytes | None = None,
           o6_rows=None, o29_rows=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    o6 = o6_rows if o6_rows is not None else [O6_HEAD, ["a" * 24, "x@s.ac.uk", "X Y", "School A"]]
    o29 = o29_rows if o29_rows is not None else [O29_HEAD, ["b" * 24, "c" * 24, "4"]]
    (folder / "FullObject_6_2025.csv").write_text(_csv(o6), encoding="utf-8", newline="")
    (folder / "FullObject_29_2025.csv").write_text(_csv(o29), encoding="utf-8", newline="")
    if o10_bytes is None:
        o10_bytes = _csv(o10_rows if o10_rows is not None else [O10_HEAD]).encode("utf-8")
    (folder / "FullObject_10_2025.csv").write_bytes(o10_bytes)
    return folder


MULTI = [
    O10_HEAD,
    ["1" * 24, "a@s.ac.uk", "A", "01/10/2024", "7", "line one\nline two\nline three", "u"],
    ["2" * 24, "b@s.ac.uk", "B", "", "7.0", "", ""],
    ["3" * 24, "c@s.ac.uk", "C, junior", "2025-03-01", "", "x\n\ny", "z\nz"],
    ["4" * 24, "d@s.ac.uk", "D", "", "", "plain", ""],
]


def _expected_lines(text: str) -> list[int]:
    """Line where each record starts, counted independently with Python's csv.reader."""
    reader = csv.reader(io.StringIO(text, newline=""))
    next(reader)
    starts, line = [], reader.line_num + 1
    for _ in reader:
        starts.append(line)
        line = reader.line_num + 1
    return starts


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("bom", [False, True])
def test_records_and_lines_match_python_csv(tmp_path, newline, bom):
    text = _csv(MULTI, newline)
    raw = (snapshot.BOM if bom else b"") + text.encode("utf-8")
    snap = snapshot.open_snapshot(_write(tmp_path, o10_bytes=raw))
    got = snap.con.sql("SELECT _record, _line FROM o10 ORDER BY _record").fetchall()
    assert [r for r, _ in got] == [1, 2, 3, 4]
    assert [n for _, n in got] == _expected_lines(text) == [2, 5, 6, 10]
    assert snap.records("object_10") == 4
    assert snap.physical_lines("object_10") == text.count("\n") == 10
    assert snap.newlines_in_cells("object_10") == 5
    assert snap.bom("object_10") is bom
    assert snap.sha256("object_10") == hashlib.sha256(raw).hexdigest()


def test_logical_columns_values_and_missing_columns_as_null(tmp_path):
    snap = snapshot.open_snapshot(_write(tmp_path, MULTI))
    cols = [r[0] for r in snap.con.sql("DESCRIBE o10").fetchall()]
    assert cols[:2] == ["_record", "_line"]
    assert {"id", "email", "full_name", "completion_date", "c1_vision", "_filled_c1_reflection"} <= set(cols)
    assert "extra" not in cols and "field_197_email" not in cols
    types = {r[0]: r[1] for r in snap.con.sql("DESCRIBE o10").fetchall()}
    assert types["c1_vision"] == "VARCHAR" and types["establishment"] == "VARCHAR"
    row = snap.con.execute("SELECT email, full_name, c1_vision, _filled_c1_reflection, establishment "
                       "FROM o10 WHERE _record = 3").fetchall()[0]
    # Values are text exactly as exported: no sniffer turned "7.0" or dates into numbers.
    assert row == ("c@s.ac.uk", "C, junior", None, True, None)
    assert snap.con.execute("SELECT c1_vision FROM o10 WHERE _record = 2").fetchall()[0] == ("7.0",)
    res = snap.resolutions["object_10"]
    assert "establishment" in res.missing and [c.name for c in res.blockers] == ["establishment"]
    assert res.unmapped_headers == ["extra"]
    assert snap.table("object_10") == "o10" and snap.read_spec["all_varchar"] is True


def test_rich_text_is_counted_but_not_held(tmp_path):
    """Reflections and goals (kind rich_text) are never imported: their line breaks still place every
    record (F5), whether a cell is filled is kept for the profile, and the text itself is not held."""
    rows = [list(r) for r in MULTI] + [["5" * 24, "e@s.ac.uk", "E", "", "", " \n\t ", ""]]
    snap = snapshot.open_snapshot(_write(tmp_path, rows))
    assert "c1_reflection" not in [r[0] for r in snap.con.sql("DESCRIBE o10").fetchall()]
    held = snap.con.sql("SELECT * FROM _csv_o10").fetchall()
    assert not any(isinstance(v, str) and ("line two" in v or "x\n\ny" in v) for r in held for v in r)
    got = snap.con.sql("SELECT _record, _line, _filled_c1_reflection FROM o10 ORDER BY _record").fetchall()
    assert got == [(1, 2, True), (2, 5, None), (3, 6, True), (4, 10, True), (5, 11, False)]
    assert snap.newlines_in_cells("object_10") == 6


def test_input_files_are_not_modified(tmp_path):
    folder = _write(tmp_path, MULTI)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}
    snapshot.open_snapshot(folder)
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()} == before


def test_uses_given_connection_and_header_only_file(tmp_path):
    con = duckdb.connect()
    snap = snapshot.open_snapshot(_write(tmp_path, [O10_HEAD]), con=con)
    assert snap.con is con
    assert con.execute("SELECT count(*) FROM o10").fetchall()[0] == (0,)
    assert snap.records("object_10") == 0 and snap.physical_lines("object_10") == 1


def test_human_label_headers_resolve(tmp_path):
    rows = [["Record ID", "Student Email", "Completion Date"], ["1" * 24, "a@s.ac.uk", "01/10/2024 09:00"]]
    snap = snapshot.open_snapshot(_write(tmp_path, rows))
    assert snap.con.execute("SELECT id, email, completion_date FROM o10").fetchall()[0] == (
        "1" * 24, "a@s.ac.uk", "01/10/2024 09:00")
    assert snap.resolutions["object_10"].found["email"] == "Student Email"


BAD = [
    ("empty_file", b"", "empty"),
    ("blank_first_line", b"\n\n", "empty"),
    ("latin1", "id,field_197_email,field_2302\n1,a@s.ac.uk,caf\xe9\n".encode("latin-1"), "not UTF-8"),
    ("latin1_header", "id,field_197_email,Pr\xe9nom\n".encode("latin-1"), "not UTF-8"),
    ("ragged_short", b"id,field_197_email,field_2302\n1,a@s.ac.uk\n", "ragged rows"),
    ("ragged_long", b"id,field_197_email,field_2302\n1,a@s.ac.uk,x,y\n", "ragged rows"),
    ("unterminated_quote", b'id,field_197_email,field_2302\n1,a@s.ac.uk,"cut off\nhalf a comm', "unterminated quote"),
    ("missing_header", b"aaaaaaaaaaaaaaaaaaaaaaaa,a@s.ac.uk,7\n", "no header row"),
    ("missing_required", b"id,field_2302\n1,x\n", "required column(s) missing: email"),
    ("blank_line_inside", b"id,field_197_email\n1,a@s.ac.uk\n\n2,b@s.ac.uk\n", "unexplained"),
    ("repeated_header", b"id,field_197_email,id\n1,a@s.ac.uk,2\n", "repeats a column name"),
]


@pytest.mark.parametrize(("case", "data", "message"), BAD, ids=[b[0] for b in BAD])
def test_malformed_input_is_a_clear_error(tmp_path, case, data, message):
    folder = _write(tmp_path, o10_bytes=data)
    with pytest.raises(SnapshotError) as err:
        snapshot.open_snapshot(folder)
    assert message in str(err.value)
    assert "FullObject_10_2025.csv" in str(err.value)


@pytest.mark.parametrize(("files", "message"), [
    (["FullObject_6_2025.csv", "FullObject_29_2025.csv"], "no file matches FullObject_10_*.csv"),
    (["FullObject_6_2025.csv", "FullObject_10_2025.csv", "FullObject_10_2024.csv", "FullObject_29_2025.csv"],
     "2 files match FullObject_10_*.csv"),
])
def test_find_files_needs_exactly_one_file_per_object(tmp_path, files, message):
    for name in files:
        (tmp_path / name).write_text("id\n", encoding="utf-8")
    with pytest.raises(SnapshotError, match=message.replace("*", r"\*")):
        snapshot.find_files(tmp_path)


def test_find_files_missing_folder(tmp_path):
    with pytest.raises(SnapshotError, match="does not exist"):
        snapshot.find_files(tmp_path / "nope")
    files = snapshot.find_files(_write(tmp_path / "s", MULTI))
    assert {k: p.name for k, p in files.items()} == {
        "object_6": "FullObject_6_2025.csv", "object_10": "FullObject_10_2025.csv",
        "object_29": "FullObject_29_2025.csv"}
