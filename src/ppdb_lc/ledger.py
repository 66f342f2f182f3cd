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
from dataclasses import dataclass
from pathlib import Path

from ppdb_lc import apdb
from ppdb_lc.chunks import Chunk

LEDGER_PATH = Path("ingest") / "ledger.csv"
BOOTSTRAP = "bootstrap"  #: batch and version label of a full build from chunks
FIELDS = ["chunk_id", "unique_id", "night", "batch", *apdb.DATASETS]


@dataclass(frozen=True)
class LedgerEntry:
    chunk_id: int
    unique_id: str
    night: str
    batch: str
    rows: dict[str, int]


@dataclass(frozen=True)
class Batch:
    """New chunks of one night, ingested together."""

    name: str
    night: str
    chunks: list[Chunk]

    def rows(self, dataset: str) -> int:
        return sum(chunk.rows(dataset) for chunk in self.chunks)


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
        )
        for chunk in batch.chunks
    ]


def plan_batches(new_chunks: list[Chunk], ledger: list[LedgerEntry]) -> list[Batch]:
    """Group chunks not in the ledger into batches, one per night, in night order."""
    known = {entry.chunk_id for entry in ledger}
    earlier_batches: dict[str, set[str]] = {}
    for entry in ledger:
        earlier_batches.setdefault(entry.night, set()).add(entry.batch)
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
