"""Finding complete PPDB replica chunks and assigning them to observing nights.

A chunk directory is ``ROOT/YYYY/MM/DD/<chunk_id>/`` (exports until mid-2026) or ``ROOT/<chunk_id>/`` (later). The
exporter writes the parquet files first and the manifest last, so a chunk counts as *complete* only once its
manifest exists. A complete chunk whose files disagree with its manifest (missing file, wrong row count, unreadable
parquet, missing required column) is *invalid*: bad input that must stop the run before anything is written.

The night of a chunk is the Rubin ``dayobs`` of its id (the chunk id is the start of its 600 s window in Unix
seconds): the UTC date of ``chunk_id - 12 h``. The ``YYYY/MM/DD`` folder is the processing date and is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ppdb_lc import apdb
from ppdb_lc.updates import UPDATE_FILES

NEW_MANIFEST = "manifest.json"
_DAYOBS_OFFSET = timedelta(hours=12)


class InvalidChunkError(ValueError):
    """A chunk whose manifest exists but whose files contradict it."""


@dataclass(frozen=True)
class Chunk:
    """One complete replica chunk: its id, night, the parquet file of each dataset it has and its update records.

    ``checksums`` maps file names to the SHA-256 the manifest gives (new-format manifests only); readers verify
    each file against it while reading it (:func:`read_verified`).
    """

    chunk_id: int
    night: str
    directory: Path
    manifest: Path
    unique_id: str
    row_counts: dict[str, int]
    files: dict[str, Path] = field(default_factory=dict)
    updates: Path | None = None
    update_count: int | None = None  # from the manifest, when it says (None: count unknown, e.g. JSON)
    checksums: dict[str, str] = field(default_factory=dict)
    last_update_time: float | None = None  # Unix seconds (TAI) of the chunk's last store, from the manifest

    def rows(self, dataset: str) -> int:
        return self.row_counts.get(dataset, 0)

    def update_records(self) -> int:
        """Update records of the chunk, for sizing its staging job: a parquet file's row count (its footer), else
        the manifest's count or, if more, a bound from the file's size (older manifests only flag that a JSON file
        exists)."""
        if self.updates is None:
            return 0
        if self.updates.suffix == ".parquet":
            try:
                return pq.read_metadata(self.updates).num_rows
            except (OSError, pa.ArrowException):
                pass  # an unreadable file is reported by its staging job
        return max(self.update_count or 0, self.updates.stat().st_size // JSON_BYTES_PER_RECORD + 1)

    @property
    def has_updates(self) -> bool:
        return self.updates is not None


JSON_BYTES_PER_RECORD = 100  #: a lower bound of an update record's size in a JSON file (a payload is ~250 bytes)


@dataclass(frozen=True)
class Discovery:
    """What a walk of the PPDB root found."""

    complete: list[Chunk]
    incomplete: list[tuple[Path, str]]
    invalid: list[tuple[Path, str]]
    unexpected: list[Path] = field(default_factory=list)  # directories that are neither a date level nor a chunk
    chunk_dirs: int = 0  # chunk directories seen (ingested ones included): 0 means an empty export


def _date_level(directory: Path, root: Path) -> bool:
    """``YYYY``, ``YYYY/MM`` or ``YYYY/MM/DD`` of the older layout."""
    parts = directory.relative_to(root).parts
    widths = (4, 2, 2)
    return 0 < len(parts) <= 3 and all(p.isdigit() and len(p) == w for p, w in zip(parts, widths, strict=False))


def dayobs(chunk_id: int) -> str:
    """Rubin observing night (``YYYY-MM-DD``) of a chunk: the UTC date 12 h before the start of its window."""
    start = datetime.fromtimestamp(int(chunk_id), tz=UTC)
    return (start - _DAYOBS_OFFSET).date().isoformat()


def _is_manifest(name: str) -> bool:
    return name == NEW_MANIFEST or (name.startswith("chunk_") and name.endswith(".manifest.json"))


def find_chunk_dirs(root: Path, unexpected: list[Path] | None = None, *,
                    skip_ids: Collection[int] | None = None) -> Iterator[tuple[Path, Path | None]]:
    """Yield ``(chunk directory, manifest or None)`` for every chunk directory below ``root`` (both layouts).

    A chunk directory is a directory whose name is an integer and that holds a manifest or a table parquet file.
    Directories that are neither that nor a ``YYYY/MM/DD`` level (``1795504200.partial``, say) are not visited and
    are appended to ``unexpected``. Symbolic links to directories are not followed, and a directory that cannot be
    listed is passed over (as :func:`os.walk` does).

    ``skip_ids`` (the ledger's chunks) bounds the walk: a directory named by one of these ids (>= 9 digits) is
    yielded, with ``None`` for its manifest, *without being listed*, so the walk lists the date folders and the new
    chunks only, not the whole archive (see :func:`discover`).
    """
    for directory, manifest, _ in _walk(str(root), unexpected, skip_ids):
        yield Path(directory), None if manifest is None else Path(directory, manifest)


def _walk(root: str, unexpected: list[Path] | None,
          skip: Collection[int] | None) -> Iterator[tuple[str, str | None, bool]]:
    """:func:`find_chunk_dirs` on strings: ``(directory, manifest name or None, skipped unlisted)``, depth first
    in name order (the order of a top-down :func:`os.walk` with sorted names)."""

    def subdirs(path: str) -> list[tuple[str, bool]] | None:
        """Sorted ``(name, walk into)`` of the sub-directories of ``path`` and its file names, or None if unlistable."""
        dirs: list[tuple[str, bool]] = []
        files: list[str] = []
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    try:
                        is_dir = entry.is_dir()
                    except OSError:
                        is_dir = False
                    if is_dir:
                        dirs.append((entry.name, not entry.is_symlink()))
                    else:
                        files.append(entry.name)
        except OSError:
            return None
        dirs.sort()
        listing[path] = files
        return dirs

    listing: dict[str, list[str]] = {}
    top = subdirs(root)
    if top is None:
        return
    stack = [(os.path.join(root, name), name) for name, walk_into in reversed(top) if walk_into]
    while stack:
        dirpath, name = stack.pop()
        if skip is not None and len(name) >= 9 and name.isdigit() and int(name) in skip:
            yield dirpath, None, True  # an ingested chunk: counted, not listed
            continue
        children = subdirs(dirpath)
        if children is None:
            continue
        filenames = listing.pop(dirpath)
        if not name.isdigit():
            if unexpected is not None:
                unexpected.append(Path(dirpath))
            continue
        manifests = sorted(f for f in filenames if _is_manifest(f))
        has_table = any(f in UPDATE_FILES or f.removesuffix(".parquet") in apdb.DATASETS for f in filenames)
        if manifests:
            yield dirpath, manifests[0], False
        elif has_table or len(name) >= 9:
            # A chunk id is a Unix time (>= 9 digits); a bare year/month/day folder is never one.
            yield dirpath, None, False
        elif not _date_level(Path(dirpath), Path(root)) and unexpected is not None:
            unexpected.append(Path(dirpath))
        # Chunk directories hold no sub-directories worth visiting.
        if not (manifests or has_table):
            stack.extend((os.path.join(dirpath, child), child) for child, walk_into in reversed(children) if walk_into)


def read_manifest(path: Path) -> dict:
    """Parse a manifest (old or new format).

    Returns ``chunk_id``, ``unique_id``, ``row_counts`` (per dataset), ``files`` (new format: name -> row_count,
    size_bytes, checksum of every file written, update records included) and ``update_count`` (old format's
    ``update_count``, or the ``includes_update_records`` flag as 1/0; None when the manifest does not say).
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InvalidChunkError(f"{path}: unreadable manifest ({err})") from err
    if not isinstance(data, dict):
        raise InvalidChunkError(f"{path}: manifest is not a JSON object")
    try:
        chunk_id = int(data["replica_chunk_id"])
    except (KeyError, ValueError, TypeError) as err:
        raise InvalidChunkError(f"{path}: manifest has no integer replica_chunk_id") from err
    files: dict[str, dict] = {}
    update_count = None
    try:
        if "files" in data:  # new format: only the files actually written
            files = {name: dict(info) for name, info in data["files"].items()}
            row_counts = {name.removesuffix(".parquet"): int(info["row_count"]) for name, info in files.items()}
            listed = [name for name in files if name in UPDATE_FILES]
            update_count = int(files[listed[0]]["row_count"]) if listed else 0
        else:
            row_counts = {table: int(info["row_count"]) for table, info in data.get("table_data", {}).items()}
            if data.get("update_count") is not None:
                update_count = int(data["update_count"])
            elif data.get("includes_update_records") is not None:
                update_count = 1 if data["includes_update_records"] else 0
    except (KeyError, ValueError, TypeError, AttributeError) as err:
        raise InvalidChunkError(f"{path}: malformed manifest entry ({err!r})") from err
    return {
        "chunk_id": chunk_id,
        "unique_id": str(data.get("unique_id", "")),
        "row_counts": {table: count for table, count in row_counts.items() if table in apdb.DATASETS},
        "files": files,
        "update_count": update_count,
        "last_update_time": _unix_seconds(data.get("last_update_time")),
    }


def _unix_seconds(value: object) -> float | None:
    """A manifest's ``last_update_time``: Unix seconds as a number or string, or an ISO date-time."""
    if value is None:
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        pass
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _check_size(path: Path, listed: dict | None) -> None:
    size = (listed or {}).get("size_bytes")
    if size is not None and path.stat().st_size != int(size):
        raise InvalidChunkError(f"{path}: {path.stat().st_size} bytes, manifest says {size}")


def _update_file(directory: Path, info: dict) -> Path | None:
    """The chunk's update-record file, checked against what the manifest says about it."""
    present = [directory / name for name in UPDATE_FILES if (directory / name).exists()]
    if len(present) > 1:
        raise InvalidChunkError(f"{directory}: several update-record files ({', '.join(p.name for p in present)})")
    listed = [name for name in info["files"] if name in UPDATE_FILES]
    if listed and not present:
        raise InvalidChunkError(f"{directory / listed[0]}: missing, manifest lists it")
    if not present:
        if info["update_count"]:
            raise InvalidChunkError(f"{directory}: manifest announces {info['update_count']} update record(s) "
                                    f"but none of {', '.join(UPDATE_FILES)} exists")
        return None
    path = present[0]
    if listed and listed[0] != path.name:
        raise InvalidChunkError(f"{path}: manifest lists {listed[0]} instead")
    if info["files"] and not listed:
        raise InvalidChunkError(f"{path}: not listed in the manifest")
    _check_size(path, info["files"].get(path.name))
    if path.suffix == ".parquet" and info["update_count"] is not None:
        try:
            rows = pq.read_metadata(path).num_rows
        except Exception as err:  # pyarrow raises several types for corrupt files
            raise InvalidChunkError(f"{path}: unreadable parquet ({err})") from err
        if rows != info["update_count"]:
            raise InvalidChunkError(f"{path}: {rows} update records, manifest says {info['update_count']}")
    return path


#: ids every row must carry (a DiaSource of a solar-system object has no diaObjectId; a forced source always has)
NOT_NULL_IDS: dict[str, tuple[str, ...]] = {
    "DiaObject": ("diaObjectId",),
    "DiaSource": ("diaSourceId",),
    "DiaForcedSource": ("diaForcedSourceId", "diaObjectId"),
}
#: the column that names a row in error messages
ROW_ID = {"DiaObject": "diaObjectId", "DiaSource": "diaSourceId", "DiaForcedSource": "diaForcedSourceId"}


def lossless_cast(actual: pa.DataType, wanted: pa.DataType) -> bool:
    """Whether values of type ``actual`` convert to ``wanted`` without loss (same kind, no narrowing)."""
    if actual == wanted or pa.types.is_null(actual):
        return True
    if pa.types.is_integer(wanted):
        return pa.types.is_integer(actual) and actual.bit_width <= wanted.bit_width and (
            pa.types.is_signed_integer(actual) or actual.bit_width < wanted.bit_width)
    if pa.types.is_floating(wanted):
        return (pa.types.is_floating(actual) and actual.bit_width <= wanted.bit_width) or (
            pa.types.is_integer(actual) and actual.bit_width < wanted.bit_width)
    if pa.types.is_string(wanted):
        return pa.types.is_string(actual) or pa.types.is_large_string(actual)
    if pa.types.is_timestamp(wanted):
        return pa.types.is_timestamp(actual)
    return False


def check_types(path: Path, table: str, schema: pa.Schema) -> None:
    """Every APDB column of the file has a type that converts to the APDB type without loss."""
    wanted = apdb.export_schema(table)
    for fld in schema:
        if fld.name in wanted.names and not lossless_cast(fld.type, wanted.field(fld.name).type):
            raise InvalidChunkError(f"{path}: column {fld.name} has type {fld.type}, APDB type "
                                    f"{wanted.field(fld.name).type}: not convertible without loss")


def check_rows(path: Path, table: str) -> None:
    """Required ids are not null; ra is in [0, 360) and dec in [-90, 90], both finite. Names the first bad row."""
    row_id = ROW_ID[table]
    columns = sorted({row_id, *NOT_NULL_IDS[table], "ra", "dec"})
    try:
        data = pq.read_table(path, columns=columns)
    except Exception as err:  # pyarrow raises several types for corrupt files
        raise InvalidChunkError(f"{path}: unreadable parquet ({err})") from err
    ids = data[row_id].to_numpy(zero_copy_only=False)
    for name in NOT_NULL_IDS[table]:
        nulls = np.flatnonzero(data[name].is_null().to_numpy(zero_copy_only=False))
        if nulls.size:
            raise InvalidChunkError(f"{path}: {nulls.size} row(s) without {name} (first: row {int(nulls[0])}, "
                                    f"{row_id} {ids[nulls[0]]})")
    ra = data["ra"].to_numpy(zero_copy_only=False).astype(np.float64)
    dec = data["dec"].to_numpy(zero_copy_only=False).astype(np.float64)
    for name, values, ok in (("ra", ra, (ra >= 0.0) & (ra < 360.0)), ("dec", dec, (dec >= -90.0) & (dec <= 90.0))):
        bad = np.flatnonzero(~(np.isfinite(values) & ok))
        if bad.size:
            first = int(bad[0])
            raise InvalidChunkError(
                f"{path}: {bad.size} row(s) with {name} outside {'[0, 360)' if name == 'ra' else '[-90, 90]'} or not "
                f"finite (first: {row_id} {ids[first]}, {name} = {values[first]})"
            )


def check_rows_cached(path: Path, table: str, cache_dir: Path | None) -> None:
    """:func:`check_rows`, remembered per file (path, size, mtime) in ``cache_dir``: every Snakemake job parses the
    workflow again, and a night's rows need not be read again by each (~180 ns per row on the benchmark export)."""
    if cache_dir is None:
        return check_rows(path, table)
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    entry = Path(cache_dir) / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"
    try:
        verdict = json.loads(entry.read_text())
    except (OSError, ValueError):
        verdict = {}
    if verdict.get("key") == key:
        if verdict.get("error"):
            raise InvalidChunkError(verdict["error"])
        return None
    error = None
    try:
        check_rows(path, table)
    except InvalidChunkError as err:
        error = str(err)
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    tmp = entry.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"key": key, "error": error}))
    os.replace(tmp, entry)
    if error:
        raise InvalidChunkError(error)
    return None


def check_chunk(directory: Path, manifest: Path, *, row_cache: Path | None = None) -> Chunk:
    """Build a :class:`Chunk` after checking every file against the manifest; raise InvalidChunkError if not.

    Counts, sizes, columns and types are checked here from the files' metadata, and ids and positions of every row
    from those few columns; checksums are verified by the jobs that read the whole files (:func:`read_verified`),
    so that each file is read in full once.
    """
    info = read_manifest(manifest)
    if str(info["chunk_id"]) != directory.name:
        raise InvalidChunkError(f"{manifest}: replica_chunk_id {info['chunk_id']} != directory {directory.name}")
    unknown = [name for name in info["files"]
               if name.removesuffix(".parquet") not in apdb.DATASETS and name not in UPDATE_FILES]
    if unknown:
        raise InvalidChunkError(f"{manifest}: lists unknown file(s) {', '.join(unknown)}")
    files: dict[str, Path] = {}
    for table in apdb.DATASETS:
        expected = info["row_counts"].get(table, 0)
        path = directory / f"{table}.parquet"
        if not path.exists():
            if expected or path.name in info["files"]:
                raise InvalidChunkError(f"{path}: missing, manifest says {expected} rows")
            continue
        try:
            meta = pq.read_metadata(path)
            names = set(meta.schema.to_arrow_schema().names)
        except Exception as err:  # pyarrow raises several types for corrupt files
            raise InvalidChunkError(f"{path}: unreadable parquet ({err})") from err
        if meta.num_rows != expected:
            raise InvalidChunkError(f"{path}: {meta.num_rows} rows, manifest says {expected}")
        _check_size(path, info["files"].get(path.name))
        missing = [col for col in apdb.REQUIRED_COLUMNS[table] if col not in names]
        if missing:
            raise InvalidChunkError(f"{path}: missing required column(s) {', '.join(missing)}")
        check_types(path, table, meta.schema.to_arrow_schema())
        if expected:
            check_rows_cached(path, table, row_cache)
        if expected:
            files[table] = path
    updates = _update_file(directory, info)
    return Chunk(
        chunk_id=info["chunk_id"],
        night=dayobs(info["chunk_id"]),
        directory=directory,
        manifest=manifest,
        unique_id=info["unique_id"],
        row_counts={table: info["row_counts"].get(table, 0) for table in apdb.DATASETS},
        files=files,
        updates=updates,
        update_count=info["update_count"] if updates is not None else 0,
        checksums={name: str(entry["checksum"]) for name, entry in info["files"].items() if entry.get("checksum")},
        last_update_time=info["last_update_time"],
    )


def read_verified(chunk: Chunk, path: Path) -> bytes:
    """The bytes of one file of ``chunk``, after checking them against the manifest's SHA-256 (if it has one)."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise InvalidChunkError(f"{path}: unreadable ({err})") from err
    expected = chunk.checksums.get(Path(path).name)
    if expected is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected.lower():
            raise InvalidChunkError(f"{path}: SHA-256 {actual} does not match the manifest's checksum {expected}")
    return data


def discover(root: Path, *, until: str | None = None, skip_ids: Iterable[int] = (),
             row_cache: Path | None = None, prune: bool = True) -> Discovery:
    """Walk ``root`` and classify every chunk not in ``skip_ids`` whose night is ``<= until``.

    Chunks already ingested (``skip_ids``) are not opened at all, so discovery cost grows with new chunks only.
    With ``prune`` (the default) their directories are not even listed: the walk lists the ``YYYY/MM/DD`` folders,
    the export root and the new chunk directories, whatever the size of the archive. A new chunk in an old day
    folder is still found (every day folder is listed: its date says nothing about the chunks in it). What the
    bounded walk does not see is the *content* of an ingested chunk's directory, which the full walk
    (``prune=False``) looks at in two cases only: such a directory holding no manifest and no table file anymore
    would be descended into (its sub-directories reported as unexpected or as chunks), and one that cannot be
    listed would not be counted in ``chunk_dirs``. Both would be damage to already ingested input, which
    discovery does not check in either mode (their files are never opened).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"PPDB directory {root} does not exist")
    skip = skip_ids if isinstance(skip_ids, (set, frozenset)) else set(skip_ids)
    complete: list[Chunk] = []
    incomplete: list[tuple[Path, str]] = []
    invalid: list[tuple[Path, str]] = []
    unexpected: list[Path] = []
    seen = 0
    for dirpath, manifest_name, skipped in _walk(str(root), unexpected, skip if prune else None):
        seen += 1
        if skipped:
            continue
        directory = Path(dirpath)
        chunk_id = int(directory.name)
        if chunk_id in skip or (until is not None and dayobs(chunk_id) > until):
            continue
        if manifest_name is None:
            incomplete.append((directory, "no manifest yet"))
            continue
        try:
            complete.append(check_chunk(directory, directory / manifest_name, row_cache=row_cache))
        except InvalidChunkError as err:
            invalid.append((directory, str(err)))
    complete.sort(key=lambda chunk: chunk.chunk_id)
    return Discovery(complete=complete, incomplete=incomplete, invalid=invalid, unexpected=unexpected,
                     chunk_dirs=seen)
