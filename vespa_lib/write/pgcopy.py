"""Bulk rows in and out of PostgreSQL over ``COPY`` as Arrow (docs/ARCHITECTURE.md "Guarded writes").

``copy_in`` writes Arrow rows (a table or a stream) as CSV into a table; ``copy_out``,
``copy_out_batches`` and ``copy_out_reader`` read a query's rows as Arrow text columns, whole or
streamed in batches so a large read is never all in memory.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv

from vespa_lib.ops import progress
from vespa_lib.write.sql import q

__all__ = ["COPY_BATCH_BYTES", "copy_in", "copy_out", "copy_out_batches", "copy_out_reader"]


def copy_in(con: Any, name: str, cols: list[str], table: pa.Table | pa.RecordBatchReader, on_chunk: Any = None) -> None:
    """COPY Arrow rows as CSV (docs/ARCHITECTURE.md, “Targets”: bulk work over COPY); nulls unquoted, strings quoted.
    ``table`` may be a stream (``RecordBatchReader``): rows are then never all in memory at once."""
    collist = ", ".join(q(c) for c in cols)
    batches = table if isinstance(table, pa.RecordBatchReader) else table.to_batches(max_chunksize=50_000)
    total = None if isinstance(table, pa.RecordBatchReader) else len(batches)
    with con.cursor().copy(f"COPY {name} ({collist}) FROM STDIN WITH (FORMAT csv)") as copy:
        for i, batch in enumerate(progress.bar(batches, total=total, desc=f"COPY {name}", unit="batch")):
            buf = io.BytesIO()
            pacsv.write_csv(batch, buf, pacsv.WriteOptions(include_header=False))
            copy.write(buf.getvalue())
            if on_chunk is not None:
                on_chunk(i)


def copy_out(con: Any, select: str, params: list, names: list[str]) -> pa.Table:
    """Rows of a PostgreSQL query as Arrow text columns over ``COPY ... TO STDOUT`` (csv; NULL
    unquoted, empty text quoted, so they stay apart). Read-only."""
    return pa.Table.from_batches(list(copy_out_batches(con, select, params, names)), schema=_text_schema(names))


COPY_BATCH_BYTES = 32 << 20  # CSV bytes parsed into one Arrow batch when streaming a COPY out


def _text_schema(names: list[str]) -> pa.Schema:
    return pa.schema([(c, pa.string()) for c in names])


def copy_out_batches(con: Any, select: str, params: list, names: list[str],
                     batch_bytes: int = COPY_BATCH_BYTES) -> Iterator[pa.RecordBatch]:
    """``copy_out`` as a stream of Arrow batches of about ``batch_bytes`` of CSV each, so a large read
    (10x: 11 M answers) is never all in memory (docs/ARCHITECTURE.md, “Quality bars”). Read-only. PostgreSQL sends one row per
    COPY message, so a batch always ends at a row boundary. A reader that stops early leaves the rest
    drained, and the connection usable."""
    read = pacsv.ReadOptions(column_names=names)
    convert = pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=True,
                                   quoted_strings_can_be_null=False)

    def parse(data: bytearray) -> Iterator[pa.RecordBatch]:
        yield from pacsv.read_csv(io.BytesIO(bytes(data)), read_options=read, convert_options=convert).to_batches()

    with con.cursor().copy(f"COPY ({select.replace('?', '%s')}) TO STDOUT WITH (FORMAT csv)", params or None) as copy:
        rows = iter(copy)
        try:
            buf = bytearray()
            for chunk in rows:
                buf += chunk
                if len(buf) >= batch_bytes:
                    yield from parse(buf)
                    buf = bytearray()
            if buf:
                yield from parse(buf)
        finally:
            for _ in rows:  # the consumer stopped early (or failed): finish the COPY
                pass


def copy_out_reader(con: Any, select: str, params: list, names: list[str]) -> pa.RecordBatchReader:
    """``copy_out_batches`` as an Arrow stream (DuckDB scans it once without holding it). Read-only."""
    return pa.RecordBatchReader.from_batches(_text_schema(names), copy_out_batches(con, select, params, names))
