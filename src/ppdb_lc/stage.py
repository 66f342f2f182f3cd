"""Staging one dataset of a batch: read its chunk files (checksums verified), conform, de-duplicate re-emitted
rows, postprocess; one file per night. Update records are staged the same way, normalized and in order."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ppdb_lc import apdb, postprocess, updates
from ppdb_lc.chunks import Chunk, InvalidChunkError, read_verified

log = logging.getLogger(__name__)
UPDATES = "updates"  #: name of the staged update records, next to the three datasets
RE_EMITTED_KEY = b"ppdb_lc.re_emitted"  #: staged-file metadata: re-emitted copies dropped in the night


def read_dataset(chunks: Sequence[Chunk], dataset: str) -> pa.Table:
    """All rows of ``dataset`` in ``chunks``, conformed to the latest export schema; checksums and counts checked."""
    tables = []
    for chunk in chunks:
        path = chunk.files.get(dataset)
        if path is None:
            continue
        data = read_verified(chunk, path)
        try:
            table = pq.read_table(pa.BufferReader(data))
        except Exception as err:  # corrupt or truncated parquet
            raise InvalidChunkError(f"{path}: unreadable parquet ({err})") from err
        del data
        if table.num_rows != chunk.rows(dataset):
            raise InvalidChunkError(f"{path}: {table.num_rows} rows, manifest says {chunk.rows(dataset)}")
        tables.append(postprocess.conform(table, dataset, source=str(path)))
    if not tables:
        return apdb.export_schema(dataset).empty_table()
    return pa.concat_tables(tables)


def read_updates(chunks: Sequence[Chunk]) -> pa.Table:
    """Every update record of ``chunks``, normalized (:data:`updates.RECORD_SCHEMA`), checked, in PPDB order."""
    tables = []
    for chunk in chunks:
        if chunk.updates is None:
            continue
        records = updates.read_update_file(chunk.updates, read_verified(chunk, chunk.updates))
        if chunk.update_count is not None and chunk.updates.suffix == ".json" and records.num_rows != chunk.update_count:
            raise InvalidChunkError(f"{chunk.updates}: {records.num_rows} records, manifest says {chunk.update_count}")
        tables.append(records)
    return updates.in_order(pa.concat_tables(tables)) if tables else updates.empty_records()


def staged_file(out_dir: Path, night: str) -> Path:
    return Path(out_dir) / f"{night}.parquet"


def _write(table: pa.Table, out_dir: Path, night: str) -> None:
    tmp = staged_file(out_dir, night).with_suffix(".tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.rename(staged_file(out_dir, night))


def stage_dataset(
    chunks: Sequence[Chunk], dataset: str, out_dir: Path, keep: Sequence[str] = postprocess.DEFAULT_KEEP_FLOAT64
) -> dict:
    """Write ``out_dir/<night>.parquet`` (postprocessed rows of ``dataset``) for every night of ``chunks``.

    ``dataset`` may also be :data:`UPDATES`: the nights' update records, normalized and ordered.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, dict[str, int]] = {}
    for night in sorted({c.night for c in chunks}):
        night_chunks = [c for c in chunks if c.night == night]
        if dataset == UPDATES:
            records = read_updates(night_chunks)
            _write(records, out_dir, night)
            summary[night] = {"records": records.num_rows, "chunks": sum(c.has_updates for c in night_chunks)}
            log.info("update records %s: %d records from %d chunks %s", night, records.num_rows,
                     summary[night]["chunks"], updates.counts_by_type(records))
            continue
        raw = read_dataset(night_chunks, dataset)
        unique = postprocess.first_copies(raw, dataset)
        processed = postprocess.postprocess(unique, dataset, keep)
        processed = processed.replace_schema_metadata({RE_EMITTED_KEY: str(raw.num_rows - unique.num_rows)})
        _write(processed, out_dir, night)
        summary[night] = {"rows_in": raw.num_rows, "re_emitted": raw.num_rows - unique.num_rows,
                          "rows_out": processed.num_rows, "chunks": len(night_chunks)}
        log.info("%s %s: %d chunks, %d rows in, %d re-emitted copies dropped, %d rows staged", dataset, night,
                 len(night_chunks), raw.num_rows, summary[night]["re_emitted"], processed.num_rows)
    return summary


def read_staged(parts: Sequence[Path], night: str, dataset: str, columns: Sequence[str] | None = None) -> pa.Table:
    """The staged rows of ``dataset`` for ``night``, from the staging parts (consecutive chunk groups, in order).

    Re-emitted copies and object versions are resolved again across parts, by the same definitions as within
    one (:func:`postprocess.first_copies`, :func:`postprocess.latest_versions`), so the result does not depend on
    how the night was split. The metadata's re-emitted count covers the copies dropped within and across parts.
    ``columns`` (row key and chunk columns included by the caller) reads a subset.
    """
    files = [staged_file(part, night) for part in parts if staged_file(part, night).exists()]
    if not files:
        raise FileNotFoundError(f"no staged {dataset} rows for night {night} in {[str(p) for p in parts]}")
    tables = [pq.read_table(path, columns=columns) for path in files]
    if len(tables) == 1:
        return tables[0]
    if dataset == UPDATES:
        return updates.in_order(pa.concat_tables(tables))
    re_emitted = sum(int((t.schema.metadata or {}).get(RE_EMITTED_KEY, b"0")) for t in tables)
    table = pa.concat_tables([t.replace_schema_metadata(None) for t in tables])
    if dataset == "DiaObject":
        table = postprocess.latest_versions(table)
    else:
        unique = postprocess.first_copies(table, dataset)
        re_emitted += table.num_rows - unique.num_rows
        table = unique
    return table.replace_schema_metadata({RE_EMITTED_KEY: str(re_emitted)})
