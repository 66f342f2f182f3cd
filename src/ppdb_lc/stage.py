"""Staging one dataset of a batch: read its chunk files (checksums verified), conform, de-duplicate re-emitted
rows, postprocess; one file per night. Update records are staged the same way, normalized and in order."""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ppdb_lc import apdb, postprocess, updates
from ppdb_lc.chunks import Chunk, InvalidChunkError, read_verified

log = logging.getLogger(__name__)
UPDATES = "updates"  #: name of the staged update records, next to the three datasets
RE_EMITTED_KEY = b"ppdb_lc.re_emitted"  #: staged-file metadata: re-emitted copies dropped in the night
SHARDS_KEY = b"ppdb_lc.shards"  #: staged-file metadata: the ingest shards its row groups are split by
SHARD, ROW = "_shard", "_row"  #: columns of a file staged for a sharded night: shard of the row, row in the night


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
        _check_update_count(chunk, records.num_rows)
        tables.append(records)
    return updates.in_order(pa.concat_tables(tables)) if tables else updates.empty_records()


def _stage_updates(chunks: Sequence[Chunk], path: Path) -> dict[str, int]:
    """Write the update records of ``chunks`` to ``path``, normalized, checked and in PPDB order; their count by
    type. Records already in order in their files (as the export writes them) are parsed and written a slice at a
    time (:data:`updates.PARSE_RECORDS`), so memory is a slice's, not the night's; otherwise they are ordered in
    memory (:func:`read_updates`)."""
    ordered = sorted((c for c in chunks if c.updates is not None), key=lambda c: c.chunk_id)

    def order_keys() -> Iterator[pa.Table]:  # one file's bytes at a time (each read again to be parsed)
        for chunk in ordered:
            yield from updates.iter_update_file(chunk.updates, read_verified(chunk, chunk.updates),
                                                updates.ORDER_COLUMNS)

    try:
        in_order = updates.in_order_already(order_keys())
    except (TypeError, ValueError, pa.ArrowException):
        in_order = False  # malformed order columns: parsing in memory reports them, naming the record
    tmp = path.with_suffix(".tmp")
    counts: collections.Counter = collections.Counter()
    with pq.ParquetWriter(tmp, updates.RECORD_SCHEMA, compression="zstd") as writer:
        if in_order:
            for chunk in ordered:
                n = 0
                for records in updates.iter_update_file(chunk.updates, read_verified(chunk, chunk.updates)):
                    writer.write_table(records)
                    counts.update(updates.counts_by_type(records))
                    n += records.num_rows
                _check_update_count(chunk, n)
        else:
            log.info("update records of %s not in order in their files: ordered in memory", path.stem)
            records = read_updates(ordered)
            writer.write_table(records)
            counts.update(updates.counts_by_type(records))
    tmp.rename(path)
    return dict(sorted(counts.items()))


def _check_update_count(chunk: Chunk, records: int) -> None:
    if chunk.update_count is not None and chunk.updates.suffix == ".json" and records != chunk.update_count:
        raise InvalidChunkError(f"{chunk.updates}: {records} records, manifest says {chunk.update_count}")


def staged_file(out_dir: Path, night: str) -> Path:
    return Path(out_dir) / f"{night}.parquet"


def shard_of(object_ids: pa.Array | pa.ChunkedArray, shards: int) -> np.ndarray:
    """Ingest shard of each row, from its ``diaObjectId`` (:func:`apdb.id_buckets`); null: 0."""
    return apdb.id_buckets(object_ids, shards)


def _write(table: pa.Table, out_dir: Path, night: str, shards: int = 1) -> None:
    """Write a night's staged rows; for a sharded night, grouped by shard (one or more row groups each, with
    ``_shard`` and the row's position ``_row``), so each shard job reads only its own rows."""
    tmp = staged_file(out_dir, night).with_suffix(".tmp")
    if shards == 1 or "diaObjectId" not in table.column_names:
        pq.write_table(table, tmp, compression="zstd")
    else:
        shard = shard_of(table["diaObjectId"], shards)
        order = np.argsort(shard, kind="stable")
        table = table.take(pa.array(order)).append_column(SHARD, pa.array(shard[order], pa.int32())).append_column(
            ROW, pa.array(order, pa.int64()))
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), SHARDS_KEY: str(shards).encode()})
        bounds = np.searchsorted(shard[order], np.arange(shards + 1))
        with pq.ParquetWriter(tmp, table.schema, compression="zstd") as writer:
            for k in range(shards):
                if bounds[k + 1] > bounds[k]:
                    writer.write_table(table.slice(int(bounds[k]), int(bounds[k + 1] - bounds[k])))
    tmp.rename(staged_file(out_dir, night))


def read_part(path: Path, columns: Sequence[str] | None = None, shard: int | None = None, shards: int = 1
              ) -> pa.Table:
    """One staged file in the night's row order (without ``_shard``/``_row``), or, with ``shard``, only that
    shard's rows (reading its row groups only) with their ``_row``."""
    handle = pq.ParquetFile(path)
    names = handle.schema_arrow.names
    if SHARD not in names:
        if shard is None:
            return handle.read(columns=columns)
        table = handle.read(columns=columns)
        mine = shard_of(table["diaObjectId"], shards) == shard
        return table.append_column(ROW, pa.array(np.arange(table.num_rows), pa.int64())).filter(pa.array(mine))
    wanted = None if columns is None else [*columns, ROW]
    if shard is None:
        table = handle.read(columns=wanted)
        table = table.take(pc.sort_indices(table[ROW]))
        return table.drop_columns([c for c in (SHARD, ROW) if c in table.column_names])
    written = int((handle.schema_arrow.metadata or {}).get(SHARDS_KEY, b"1"))
    if written != shards:
        raise RuntimeError(f"{path} was staged for {written} ingest shards, this run builds {shards} (was "
                           "sharding.rows_per_ingest_job changed?): remove the work directory's batches/ and rerun")
    column = names.index(SHARD)
    groups = [g for g in range(handle.num_row_groups)
              if handle.metadata.row_group(g).column(column).statistics.min == shard]
    table = handle.read_row_groups(groups, columns=wanted) if groups else handle.schema_arrow.empty_table().select(
        wanted or [n for n in names if n != SHARD])
    return table.drop_columns([SHARD]) if SHARD in table.column_names else table


def stage_dataset(
    chunks: Sequence[Chunk], dataset: str, out_dir: Path, keep: Sequence[str] = postprocess.DEFAULT_KEEP_FLOAT64,
    shards: int = 1,
) -> dict:
    """Write ``out_dir/<night>.parquet`` (postprocessed rows of ``dataset``) for every night of ``chunks``.

    ``dataset`` may also be :data:`UPDATES`: the nights' update records, normalized and ordered. ``shards``: the
    night's ingest shards (:mod:`ppdb_lc.shards`), by which the rows are grouped in the file.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, dict[str, int]] = {}
    for night in sorted({c.night for c in chunks}):
        night_chunks = [c for c in chunks if c.night == night]
        if dataset == UPDATES:
            counts = _stage_updates(night_chunks, staged_file(out_dir, night))
            summary[night] = {"records": sum(counts.values()), "chunks": sum(c.has_updates for c in night_chunks)}
            log.info("update records %s: %d records from %d chunks %s", night, summary[night]["records"],
                     summary[night]["chunks"], counts)
            continue
        raw = read_dataset(night_chunks, dataset)
        unique = postprocess.first_copies(raw, dataset)
        processed = postprocess.postprocess(unique, dataset, keep)
        processed = processed.replace_schema_metadata({RE_EMITTED_KEY: str(raw.num_rows - unique.num_rows)})
        _write(processed, out_dir, night, shards)
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
    tables = [read_part(path, columns=columns) for path in files]
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
