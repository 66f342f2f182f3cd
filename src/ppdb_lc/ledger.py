"""The ingest ledger: which chunks a collection already holds, and the batches still to ingest.

The ledger is ``ingest/ledger.csv`` inside the collection, so it is switched together with the data it
describes. One row per ingested chunk: its id, manifest ``unique_id``, night, the batch that ingested it and its
row counts. A *batch* is the set of new chunks of one night ingested together; its name is the night
(``2026-11-24``) the first time and ``2026-11-24_2``, ``_3`` … for late chunks of a night already committed, so
that its dated files never overwrite committed ones.
"""

from __future__ import annotations

import csv
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ppdb_lc import apdb, updates
from ppdb_lc.chunks import Chunk

LEDGER_PATH = Path("ingest") / "ledger.csv"
#: update records whose target row is not in the collection yet, applied when it arrives
PENDING_PATH = Path("ingest") / "pending_updates.parquet"
#: every update record ingested, one file per batch, with its status at ingestion
UPDATE_LOG = Path("ingest") / "updates"
BOOTSTRAP = "bootstrap"  #: batch and version label of a full build from chunks
FIELDS = ["chunk_id", "unique_id", "night", "batch", *apdb.DATASETS, "updates", "last_update_time"]


@dataclass(frozen=True)
class LedgerEntry:
    chunk_id: int
    unique_id: str
    night: str
    batch: str
    rows: dict[str, int]
    updates: int = 0
    last_update_time: float | None = None  # Unix seconds of the chunk's last store (manifest)


@dataclass(frozen=True)
class Batch:
    """New chunks of one night, ingested together."""

    name: str
    night: str
    chunks: list[Chunk]
    skipped: tuple[str, ...] = ()  # invalid chunks of the night left out (on_invalid_chunk: skip), with the reason

    def rows(self, dataset: str) -> int:
        return sum(chunk.rows(dataset) for chunk in self.chunks)

    def ingest_shards(self, rows_per_job: int) -> int:
        """Shards (and writers) the night's build is split into: ``rows_per_job`` input rows (all tables, manifest
        counts) each; 1: the build runs inside the commit job (:mod:`ppdb_lc.shards`)."""
        return max(1, -(-sum(self.rows(ds) for ds in apdb.DATASETS) // max(1, rows_per_job)))

    def stage_parts(self, dataset: str, rows_per_job: int) -> list[list[Chunk]]:
        """The batch's chunks in staging jobs of at most ``rows_per_job`` rows of ``dataset`` (manifest counts).

        Parts never mix nights and keep chunk order (consecutive chunks), so re-emitted copies and object versions
        are resolved again across parts in chunk order (:func:`ppdb_lc.stage.read_staged`). A chunk is never split:
        one larger than ``rows_per_job`` is a part of its own. Update records (few) are staged in one part.
        """
        ordered = sorted(self.chunks, key=lambda c: (c.night, c.chunk_id))
        if dataset not in apdb.DATASETS:
            return [ordered]
        parts: list[list[Chunk]] = []
        rows = 0
        for chunk in ordered:
            n = chunk.rows(dataset)
            if not parts or parts[-1][-1].night != chunk.night or rows + n > rows_per_job:
                parts.append([])
                rows = 0
            parts[-1].append(chunk)
            rows += n
        return parts


def read_ledger(collection: Path | None) -> list[LedgerEntry]:
    """Entries of the ledger of a collection (empty when there is no collection yet)."""
    if collection is None or not (Path(collection) / LEDGER_PATH).exists():
        return []
    with open(Path(collection) / LEDGER_PATH, newline="") as handle:
        return [
            LedgerEntry(
                chunk_id=int(row["chunk_id"]),
                unique_id=row["unique_id"],
                night=row["night"],
                batch=row["batch"],
                rows={table: int(row[table]) for table in apdb.DATASETS},
                updates=int(row.get("updates") or 0),
                last_update_time=float(row["last_update_time"]) if row.get("last_update_time") else None,
            )
            for row in csv.DictReader(handle)
        ]


def write_ledger(collection: Path, entries: list[LedgerEntry]) -> None:
    """Write the ledger as a new file (never through a hard link shared with an older version)."""
    path = Path(collection) / LEDGER_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        for entry in sorted(entries, key=lambda e: e.chunk_id):
            writer.writerow(
                {
                    "chunk_id": entry.chunk_id,
                    "unique_id": entry.unique_id,
                    "night": entry.night,
                    "batch": entry.batch,
                    **entry.rows,
                    "updates": entry.updates,
                    "last_update_time": "" if entry.last_update_time is None else repr(entry.last_update_time),
                }
            )
    if path.exists():
        path.unlink()
    os.replace(tmp, path)


def entries_for(batch: Batch) -> list[LedgerEntry]:
    return [
        LedgerEntry(
            chunk_id=chunk.chunk_id,
            unique_id=chunk.unique_id,
            night=chunk.night,
            batch=batch.name,
            rows={table: chunk.rows(table) for table in apdb.DATASETS},
            updates=chunk.update_count or 0,
            last_update_time=chunk.last_update_time,
        )
        for chunk in batch.chunks
    ]


def last_store_time(ledger: list[LedgerEntry]) -> float | None:
    """Unix time (TAI seconds) after which no ingested chunk stored anything: the latest ``last_update_time``
    (a chunk without one counts as its id + one hour, longer than the 600 s replica window)."""
    if not ledger:
        return None
    return max(e.last_update_time if e.last_update_time is not None else e.chunk_id + 3600.0 for e in ledger)


def read_pending(collection: Path | None) -> pa.Table:
    """Update records waiting for their target in ``collection`` (none when there is no file)."""
    path = None if collection is None else Path(collection) / PENDING_PATH
    if path is None or not path.exists():
        return updates.empty_records()
    return pq.read_table(path, schema=updates.RECORD_SCHEMA)


def write_records(path: Path, records: pa.Table) -> None:
    """Write a record table as a new file (never through a hard link shared with an older version)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    pq.write_table(records, tmp, compression="zstd")
    path.unlink(missing_ok=True)
    os.replace(tmp, path)


def copy_records(source: Path, path: Path) -> None:
    """Copy a record file as a new file (never through a hard link shared with an older version), whatever its
    size: bytes, not rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    shutil.copyfile(source, tmp)
    path.unlink(missing_ok=True)
    os.replace(tmp, path)


def update_history(collection: Path, source_ids: set[int], forced_keys: set[tuple[int, int, int]]) -> pa.Table:
    """Every logged record targeting these sources or forced sources (read only when a committed copy is
    replaced by an earlier chunk's, which is rare: it reads the whole log)."""
    parts = []
    for path in sorted((Path(collection) / UPDATE_LOG).glob("*.parquet")):
        table = pq.read_table(path, columns=updates.RECORD_SCHEMA.names).cast(updates.RECORD_SCHEMA)
        targets = updates.record_targets(table)
        is_source = (targets["table"] == "DiaSource").to_numpy() & targets["k0"].isin(source_ids).to_numpy()
        keys = list(zip(targets["k0"], targets["k1"], targets["k2"], strict=True))
        is_forced = (targets["table"] == "DiaForcedSource").to_numpy() & np.array(
            [k in forced_keys for k in keys], dtype=bool)
        parts.append(table.filter(pa.array(is_source | is_forced)))
    return pa.concat_tables(parts) if parts else updates.empty_records()


@dataclass(frozen=True)
class LedgerIndex:
    """What planning needs from a ledger: the ingested chunk ids and the batch names already used per night."""

    chunk_ids: frozenset[int]
    batches_by_night: dict[str, frozenset[str]]

    @classmethod
    def of(cls, ledger: list[LedgerEntry] | LedgerIndex) -> LedgerIndex:
        if isinstance(ledger, LedgerIndex):
            return ledger
        by_night: dict[str, set[str]] = {}
        for entry in ledger:
            by_night.setdefault(entry.night, set()).add(entry.batch)
        return cls(frozenset(e.chunk_id for e in ledger), {n: frozenset(b) for n, b in by_night.items()})


def read_ledger_index(collection: Path | None) -> LedgerIndex:
    """:class:`LedgerIndex` of a collection's ledger, read column-wise (the workflow reads it at every parse: a
    ledger of 10^5 chunks takes ~0.5 s through :func:`read_ledger`, ~20x less here)."""
    if collection is None or not (Path(collection) / LEDGER_PATH).exists():
        return LedgerIndex(frozenset(), {})
    import pyarrow.csv as pacsv

    table = pacsv.read_csv(
        Path(collection) / LEDGER_PATH,
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            include_columns=["chunk_id", "night", "batch"],
            column_types={"chunk_id": pa.int64(), "night": pa.string(), "batch": pa.string()},
            strings_can_be_null=False,
        ),
    )
    pairs = table.group_by(["night", "batch"]).aggregate([])
    by_night: dict[str, set[str]] = {}
    for night, batch in zip(pairs["night"].to_pylist(), pairs["batch"].to_pylist(), strict=True):
        by_night.setdefault(night, set()).add(batch)
    return LedgerIndex(frozenset(table["chunk_id"].to_pylist()), {n: frozenset(b) for n, b in by_night.items()})


def plan_batches(new_chunks: list[Chunk], ledger: list[LedgerEntry] | LedgerIndex) -> list[Batch]:
    """Group chunks not in the ledger into batches, one per night, in night order."""
    index = LedgerIndex.of(ledger)
    known = index.chunk_ids
    earlier_batches = index.batches_by_night
    by_night: dict[str, list[Chunk]] = {}
    for chunk in new_chunks:
        if chunk.chunk_id not in known:
            by_night.setdefault(chunk.night, []).append(chunk)
    batches = []
    for night in sorted(by_night):
        count = len(earlier_batches.get(night, ()))
        name = night if count == 0 else f"{night}_{count + 1}"
        batches.append(Batch(name=name, night=night, chunks=sorted(by_night[night], key=lambda c: c.chunk_id)))
    return batches
