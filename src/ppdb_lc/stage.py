"""Staging one dataset of a batch: read its chunk files, check them, conform and postprocess, one file per night."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ppdb_lc import apdb, postprocess
from ppdb_lc.chunks import Chunk, InvalidChunkError

log = logging.getLogger(__name__)


def read_dataset(chunks: Sequence[Chunk], dataset: str) -> pa.Table:
    """All rows of ``dataset`` in ``chunks``, conformed to the latest export schema; counts checked."""
    tables = []
    for chunk in chunks:
        path = chunk.files.get(dataset)
        if path is None:
            continue
        try:
            table = pq.read_table(path)
        except Exception as err:  # corrupt or truncated parquet
            raise InvalidChunkError(f"{path}: unreadable parquet ({err})") from err
        if table.num_rows != chunk.rows(dataset):
            raise InvalidChunkError(f"{path}: {table.num_rows} rows, manifest says {chunk.rows(dataset)}")
        tables.append(postprocess.conform(table, dataset, source=str(path)))
    if not tables:
        return apdb.export_schema(dataset).empty_table()
    return pa.concat_tables(tables)


def staged_file(out_dir: Path, night: str) -> Path:
    return Path(out_dir) / f"{night}.parquet"


def stage_dataset(
    chunks: Sequence[Chunk], dataset: str, out_dir: Path, keep: Sequence[str] = postprocess.DEFAULT_KEEP_FLOAT64
) -> dict:
    """Write ``out_dir/<night>.parquet`` (postprocessed rows of ``dataset``) for every night of ``chunks``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, dict[str, int]] = {}
    for night in sorted({c.night for c in chunks}):
        night_chunks = [c for c in chunks if c.night == night]
        raw = read_dataset(night_chunks, dataset)
        processed = postprocess.postprocess(raw, dataset, keep)
        tmp = staged_file(out_dir, night).with_suffix(".tmp")
        pq.write_table(processed, tmp, compression="zstd")
        tmp.rename(staged_file(out_dir, night))
        summary[night] = {"rows_in": raw.num_rows, "rows_out": processed.num_rows, "chunks": len(night_chunks)}
        log.info("%s %s: %d chunks, %d rows in, %d rows staged", dataset, night, len(night_chunks), raw.num_rows,
                 processed.num_rows)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def read_staged(out_dir: Path, night: str) -> pa.Table:
    return pq.read_table(staged_file(out_dir, night))
