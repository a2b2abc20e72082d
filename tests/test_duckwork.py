"""The workbook's own DuckDB connections are memory-capped and spill to a private temp folder (docs/ARCHITECTURE.md, “Quality bars”)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from vespa_lib.errors import ParameterError
from vespa_lib.sources import duckwork, snapshot


def _setting(con, name: str) -> str:
    return con.execute(f"SELECT current_setting('{name}')").fetchall()[0][0]


def test_memory_cap_defaults_to_512mb_and_follows_the_environment(monkeypatch):
    monkeypatch.delenv(duckwork.MEMORY_ENV, raising=False)
    assert duckwork.memory_limit() == "512MB"
    assert _setting(duckwork.connect(), "memory_limit") == "488.2 MiB"  # 512 MB, as DuckDB reports it
    monkeypatch.setenv(duckwork.MEMORY_ENV, "2GB")
    con = duckwork.connect()
    assert _setting(con, "memory_limit") == "1.8 GiB"
    con.close()
    for bad in ("lots", "1 banana", "-1GB"):
        monkeypatch.setenv(duckwork.MEMORY_ENV, bad)
        with pytest.raises(ParameterError, match=duckwork.MEMORY_ENV):
            duckwork.memory_limit()


def test_work_beyond_the_cap_spills_to_a_private_folder_removed_on_close(monkeypatch, tmp_path):
    monkeypatch.setenv(duckwork.MEMORY_ENV, "64MB")
    monkeypatch.chdir(tmp_path)  # DuckDB's own default would be ./.tmp here
    con = duckwork.connect()
    folder = Path(_setting(con, "temp_directory"))
    assert folder.parent == Path(tempfile.gettempdir()) and folder.name.startswith("vespa-duckdb-")
    con.execute("CREATE TEMP TABLE t AS SELECT range AS i, md5(CAST(range AS VARCHAR)) AS s FROM range(3000000)")
    assert con.execute("SELECT count(*), count(DISTINCT s) FROM t").fetchall() == [(3_000_000, 3_000_000)]
    spilled = con.execute("SELECT sum(temporary_storage_bytes) FROM duckdb_memory()").fetchall()[0][0]
    assert spilled > 0 and folder.is_dir()  # more than the cap was held: some of it is on disk, not in RAM
    con.close()
    assert not folder.exists() and not (tmp_path / ".tmp").exists()


def test_a_snapshot_is_read_on_a_capped_connection(monkeypatch, tmp_path):
    monkeypatch.setenv(duckwork.MEMORY_ENV, "256MB")
    for obj, head in (("6", "id,field_91_email"), ("10", "id,field_197_email"), ("29", "id")):
        (tmp_path / f"FullObject_{obj}_2025.csv").write_text(f"{head}\n{'a' * 24}{',x@s.ac.uk' if ',' in head else ''}\n")
    snap = snapshot.open_snapshot(tmp_path)
    assert _setting(snap.con, "memory_limit") == _setting(duckwork.connect(), "memory_limit")
    assert snap.records("object_10") == 1
