"""The DuckDB connections the workbook opens for its own work: a snapshot's tables, the rows the rule
chains build, the planner's hashes (docs/ARCHITECTURE.md, “Quality bars”: 10× the realistic scale within 2 GB of memory).

DuckDB's default memory limit is 80% of the machine's RAM, so on a large input it holds everything in
memory (10× object_10 + the answers unpivot: 5.5 GB). ``connect`` caps it (``VESPA_DUCKDB_MEMORY``,
default ``512MB``) and gives it a private spill folder under the system temp folder, which DuckDB
creates only when it spills and removes when the connection closes (never ``.tmp`` in the notebook's
working folder, DuckDB's default for an in-memory database). Databases a user names (targets,
rehearsal copies) are opened with their owner's settings, not through here.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import duckdb

from vespa_lib.errors import ParameterError

__all__ = ["DEFAULT_MEMORY", "MEMORY_ENV", "connect", "memory_limit"]

MEMORY_ENV = "VESPA_DUCKDB_MEMORY"
DEFAULT_MEMORY = "512MB"  # per connection: a snapshot and the planner may each hold one


def memory_limit() -> str:
    """The cap for work connections: ``$VESPA_DUCKDB_MEMORY`` (DuckDB syntax: ``1GB``, ``512MB``) or 512MB."""
    value = os.environ.get(MEMORY_ENV, "").strip() or DEFAULT_MEMORY
    digits = value.upper().rstrip("IB").rstrip("KMGT").strip()
    if not digits.replace(".", "", 1).isdigit():
        raise ParameterError(f"{MEMORY_ENV}={value!r} is not a memory size such as 1GB or 512MB.")
    return value


def connect() -> duckdb.DuckDBPyConnection:
    """A new in-memory DuckDB for the workbook's own work, memory capped, spilling to a private folder."""
    con = duckdb.connect(config={"memory_limit": memory_limit(),
                                 "temp_directory": str(Path(tempfile.gettempdir()) / f"vespa-duckdb-{uuid.uuid4().hex}"),
                                 "allocator_background_threads": True})
    try:  # no progress bars in logs and evidence
        con.execute("SET enable_progress_bar = false").fetchall()
    except duckdb.Error:  # inside Jupyter without ipywidgets DuckDB refuses the setting (and shows none)
        pass
    return con
