"""Finding complete PPDB replica chunks and assigning them to observing nights.

A chunk directory is ``ROOT/YYYY/MM/DD/<chunk_id>/`` (exports until mid-2026) or ``ROOT/<chunk_id>/`` (later). The
exporter writes the parquet files first and the manifest last, so a chunk counts as *complete* only once its
manifest exists. A complete chunk whose files disagree with its manifest (missing file, wrong row count, unreadable
parquet, missing required column) is *invalid*: bad input that must stop the run before anything is written.

The night of a chunk is the Rubin ``dayobs`` of its id (the chunk id is the start of its 600 s window in Unix
seconds): the UTC date of ``chunk_id - 12 h``. The ``YYYY/MM/DD`` folder is the processing date and is ignored.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq

from ppdb_lc import apdb

NEW_MANIFEST = "manifest.json"
_DAYOBS_OFFSET = timedelta(hours=12)


class InvalidChunkError(ValueError):
    """A chunk whose manifest exists but whose files contradict it."""


@dataclass(frozen=True)
class Chunk:
    """One complete replica chunk: its id, night and the parquet file of each dataset it has."""

    chunk_id: int
    night: str
    directory: Path
    manifest: Path
    unique_id: str
    schema_version: str
    row_counts: dict[str, int]
    files: dict[str, Path] = field(default_factory=dict)

    def rows(self, dataset: str) -> int:
        return self.row_counts.get(dataset, 0)


@dataclass(frozen=True)
class Discovery:
    """What a walk of the PPDB root found."""

    complete: list[Chunk]
    incomplete: list[tuple[Path, str]]
    invalid: list[tuple[Path, str]]

    def nights(self) -> list[str]:
        return sorted({chunk.night for chunk in self.complete})


def dayobs(chunk_id: int) -> str:
    """Rubin observing night (``YYYY-MM-DD``) of a chunk: the UTC date 12 h before the start of its window."""
    start = datetime.fromtimestamp(int(chunk_id), tz=UTC)
    return (start - _DAYOBS_OFFSET).date().isoformat()


def _is_manifest(name: str) -> bool:
    return name == NEW_MANIFEST or (name.startswith("chunk_") and name.endswith(".manifest.json"))


def find_chunk_dirs(root: Path) -> Iterator[tuple[Path, Path | None]]:
    """Yield ``(chunk directory, manifest or None)`` for every chunk directory below ``root`` (both layouts).

    A chunk directory is a directory whose name is an integer and that holds a manifest or a table parquet file.
    """
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        name = os.path.basename(dirpath)
        if not name.isdigit():
            continue
        manifests = sorted(f for f in filenames if _is_manifest(f))
        has_table = any(f == f"{table}.parquet" for table in apdb.DATASETS for f in filenames)
        if manifests:
            yield Path(dirpath), Path(dirpath) / manifests[0]
        elif has_table or len(name) >= 9:
            # A chunk id is a Unix time (>= 9 digits); a bare year/month/day folder is never one.
            yield Path(dirpath), None
        # Chunk directories hold no sub-directories worth visiting.
        if manifests or has_table:
            dirnames.clear()


def read_manifest(path: Path) -> dict:
    """Parse a manifest (old or new format) into ``chunk_id``, ``unique_id``, ``schema_version``, ``row_counts``."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InvalidChunkError(f"{path}: unreadable manifest ({err})") from err
    try:
        chunk_id = int(data["replica_chunk_id"])
    except (KeyError, ValueError) as err:
        raise InvalidChunkError(f"{path}: manifest has no integer replica_chunk_id") from err
    if "files" in data:  # new format: only the files actually written
        row_counts = {
            name.removesuffix(".parquet"): int(info["row_count"]) for name, info in data["files"].items()
        }
        sizes = {name.removesuffix(".parquet"): info.get("size_bytes") for name, info in data["files"].items()}
    else:
        row_counts = {table: int(info["row_count"]) for table, info in data.get("table_data", {}).items()}
        sizes = {}
    return {
        "chunk_id": chunk_id,
        "unique_id": str(data.get("unique_id", "")),
        "schema_version": str(data.get("schema_version", apdb.LATEST_SCHEMA_VERSION)),
        "row_counts": {table: count for table, count in row_counts.items() if table in apdb.DATASETS},
        "sizes": sizes,
    }


def check_chunk(directory: Path, manifest: Path) -> Chunk:
    """Build a :class:`Chunk` after checking every file against the manifest; raise InvalidChunkError if not."""
    info = read_manifest(manifest)
    if str(info["chunk_id"]) != directory.name:
        raise InvalidChunkError(f"{manifest}: replica_chunk_id {info['chunk_id']} != directory {directory.name}")
    files: dict[str, Path] = {}
    for table in apdb.DATASETS:
        expected = info["row_counts"].get(table, 0)
        path = directory / f"{table}.parquet"
        if not path.exists():
            if expected:
                raise InvalidChunkError(f"{path}: missing, manifest says {expected} rows")
            continue
        try:
            meta = pq.read_metadata(path)
            names = set(meta.schema.to_arrow_schema().names)
        except Exception as err:  # pyarrow raises several types for corrupt files
            raise InvalidChunkError(f"{path}: unreadable parquet ({err})") from err
        if meta.num_rows != expected:
            raise InvalidChunkError(f"{path}: {meta.num_rows} rows, manifest says {expected}")
        size = info["sizes"].get(table)
        if size is not None and path.stat().st_size != int(size):
            raise InvalidChunkError(f"{path}: {path.stat().st_size} bytes, manifest says {size}")
        missing = [col for col in apdb.REQUIRED_COLUMNS[table] if col not in names]
        if missing:
            raise InvalidChunkError(f"{path}: missing required column(s) {', '.join(missing)}")
        if expected:
            files[table] = path
    return Chunk(
        chunk_id=info["chunk_id"],
        night=dayobs(info["chunk_id"]),
        directory=directory,
        manifest=manifest,
        unique_id=info["unique_id"],
        schema_version=info["schema_version"],
        row_counts={table: info["row_counts"].get(table, 0) for table in apdb.DATASETS},
        files=files,
    )


def discover(root: Path, *, until: str | None = None, skip_ids: Iterable[int] = ()) -> Discovery:
    """Walk ``root`` and classify every chunk not in ``skip_ids`` whose night is ``<= until``.

    Chunks already ingested (``skip_ids``) are not opened at all, so discovery cost grows with new chunks only.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"PPDB directory {root} does not exist")
    skip = set(skip_ids)
    complete: list[Chunk] = []
    incomplete: list[tuple[Path, str]] = []
    invalid: list[tuple[Path, str]] = []
    for directory, manifest in find_chunk_dirs(root):
        chunk_id = int(directory.name)
        if chunk_id in skip or (until is not None and dayobs(chunk_id) > until):
            continue
        if manifest is None:
            incomplete.append((directory, "no manifest yet"))
            continue
        try:
            complete.append(check_chunk(directory, manifest))
        except InvalidChunkError as err:
            invalid.append((directory, str(err)))
    complete.sort(key=lambda chunk: chunk.chunk_id)
    return Discovery(complete=complete, incomplete=incomplete, invalid=invalid)
