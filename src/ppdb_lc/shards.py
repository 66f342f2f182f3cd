"""The nightly build split into jobs of bounded memory: changes, object shards, pixels, pixel writers.

A night's rows are too many for one job at Rubin scale, so the build (:mod:`ppdb_lc.nightly`) runs in four
steps, each a set of independent jobs whose memory is set by ``sharding.rows_per_ingest_job``:

1. **changes** (one job): the update records (the night's and the pending ones, read from a file in batches) and
   the re-emitted rows whose targets are already committed, resolved against the published collection by a
   copy-on-write revision, a sky region at a time (:func:`ppdb_lc.revise.revise`); the DiaSource copies re-emitted
   under another ``diaObjectId`` in another staging part (the only re-emitted copies two shards could both hold);
   the night's rows that update records reassign to another object (they change shard); each shard's share of the
   records. Reads key columns of the night, full rows of the targets only.
2. **shards** (``N`` jobs): shard ``k`` takes the rows whose object hashes to ``k`` (:func:`stage.shard_of`; a source by
   its object after the records are applied, so a reassigned point goes to its new object's shard), resolves
   re-emitted copies and object versions, applies the records and nests the light curves
   (:func:`ppdb_lc.lightcurves.nest_batch`). Every row of an object is in its shard, so nesting, orphan
   positions and latest versions are exactly those of the whole night. Output: the shard's catalog rows sorted by
   ``_healpix_29``, their histogram and that of its rows outside the published coverage, what the records found.
3. **pixels** (one light job, :func:`plan_pixels`): the night's pixels from the shards' histograms (new pixels from
   the summed histograms of uncovered rows, with hats' alignment, exactly as one job would), split into ``N``
   groups of consecutive pixels with equal row counts.
4. **writers** (``N`` jobs): each writes its group: one dated file per pixel, the margin files of its pixels (border
   rows read from every shard by ``_healpix_29`` range), the margin backfill of the pixels it creates, and its
   index rows.

The light commit (:func:`ppdb_lc.nightly.commit_batch`) then gathers the summaries (:func:`assemble`). One shard
and one writer in one process is the unsharded build, so there is one code path: the sharded result equals it
row for row, file for file (the index is written as one file per writer).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cdshealpix.nested as cds
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from hats.catalog import PartitionInfo, TableProperties
from hats.io import paths
from hats.pixel_math import HealpixPixel
from hats.pixel_math.spatial_index import SPATIAL_INDEX_COLUMN, spatial_index_to_healpix

from ppdb_lc import apdb, catalog, collection, faults, lightcurves, margins, partitioning, postprocess, revise, stage, updates
from ppdb_lc.ledger import PENDING_PATH, Batch, last_store_time, read_ledger, update_history, write_records
from ppdb_lc.settings import Settings
from ppdb_lc.versions import CollectionStateError, VersionedCollection

log = logging.getLogger(__name__)
CHUNK = apdb.REPLICA_CHUNK_COLUMN
MJD_UNIX_EPOCH = 40587.0  # MJD of 1970-01-01 (TAI-based Unix seconds and MJD TAI share the scale)
PART, ROW = "_part", stage.ROW  # where a row came from: staging part and row in it (the night's row order)
ROWS_FILE = "rows.parquet"
MIN_ROW_GROUP = 50  # rows per row group of a shard's rows, at least: writers read only the row groups they need


def window_points(settings: Settings) -> int:
    """Points (nested light-curve entries) a job of the build holds at once when it streams rows: a writer's
    window, a part of a committed file being revised. A tenth of a job's rows, so streamed rows are a small share
    of its memory."""
    return max(1, settings.rows_per_ingest_job // 10)


class StaleBuildError(RuntimeError):
    """The build was made against a collection version that is no longer published."""


def published(settings: Settings) -> Path:
    base = VersionedCollection(settings.collection_dir).current()
    if base is None:
        raise CollectionStateError(
            f"no collection at {settings.collection_dir}: build it first with `snakemake bootstrap`"
        )
    return base


def _check_base(base: Path, expected: str, what: str) -> None:
    if base.name != expected:
        raise StaleBuildError(f"{what} was planned on {expected} but {base.name} is published now; "
                              "run the workflow again to rebuild the night")


def _fresh(directory: Path) -> Path:
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    return directory


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def _staged_files(parts: Sequence[Path], night: str) -> list[tuple[int, Path]]:
    return [(i, stage.staged_file(p, night)) for i, p in enumerate(parts) if stage.staged_file(p, night).exists()]


def _re_emitted(path: Path) -> int:
    return int((pq.read_schema(path).metadata or {}).get(stage.RE_EMITTED_KEY, b"0"))


def _forced_keys(table: pa.Table) -> pd.DataFrame:
    return pd.DataFrame({k: table[k].to_numpy() for k in apdb.ROW_KEY["DiaForcedSource"]})


def _without_keys(table: pa.Table, keys: pd.DataFrame) -> pa.Table:
    """``table`` without the forced sources whose key is in ``keys``."""
    if keys.empty or table.num_rows == 0:
        return table
    merged = _forced_keys(table).merge(keys.drop_duplicates().assign(_x=1), how="left")
    return table.filter(pa.array(merged["_x"].isna().to_numpy()))


FOUND_FILE = "found.parquet"  #: the record targets a job found (:data:`updates.FOUND_SCHEMA`), for the commit


def _write_found(directory: Path, found: pa.Table) -> int:
    pq.write_table(found, directory / FOUND_FILE)
    return found.num_rows


# -- 1. changes ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """Where the jobs of one night's build write (below the batch's build directory)."""

    build: Path

    @property
    def changes(self) -> Path:
        return self.build / "changes"

    def shard(self, k: int) -> Path:
        return self.build / "shards" / f"{k:04d}"

    def shard_records(self, k: int) -> Path:
        """The update records shard ``k`` applies (:func:`_records_per_shard`)."""
        return self.changes / "records" / f"{k:04d}.parquet"

    def shard_moved(self, k: int) -> Path:
        """The points moved out of committed rows to objects of shard ``k`` (flat DiaSource rows)."""
        return self.changes / "moved" / f"{k:04d}.arrow"

    @property
    def pixels(self) -> Path:
        """The night's partitioning (:func:`plan_pixels`), read by every writer and by the commit."""
        return self.build / "pixels" / "plan.json"

    def writer(self, j: int) -> Path:
        return self.build / "writers" / f"{j:04d}"


def _cross_part_losers(parts: Sequence[Path], night: str, scratch: Path, bucket_ids: int) -> pd.DataFrame:
    """DiaSource copies that lose to a copy in another staging part (``_part``, ``diaSourceId``).

    Within a part staging kept the earliest chunk's copy; across parts the same rule
    (:func:`postprocess.first_copies`: earliest chunk, then the earlier part) is applied here to the ids alone, so
    shards never see two copies of one source even when they were emitted under different objects. The night's ids
    are split by hash into buckets of about ``bucket_ids`` (files below ``scratch``), and each bucket is searched for
    repeated ids on its own: memory is one part's ids and one bucket's, not the night's.
    """
    files = _staged_files(parts, night)
    empty = pd.DataFrame({PART: np.empty(0, np.int64), "diaSourceId": np.empty(0, np.int64)})
    if len(files) < 2:
        return empty
    total = sum(pq.ParquetFile(path).metadata.num_rows for _, path in files)
    buckets = max(1, -(-total // max(1, bucket_ids)))
    scratch.mkdir(parents=True, exist_ok=True)
    for i, path in files:
        table = stage.read_part(path, columns=["diaSourceId", CHUNK])
        ids = table["diaSourceId"].to_numpy()
        chunk = pc.fill_null(table[CHUNK], np.iinfo(np.int64).max).to_numpy()
        bucket = stage.shard_of(table["diaSourceId"], buckets)
        order = np.argsort(bucket, kind="stable")
        bounds = np.searchsorted(bucket[order], np.arange(buckets + 1))
        for k in range(buckets):
            rows = order[bounds[k]:bounds[k + 1]]
            np.save(scratch / f"{k:05d}-{i:05d}.npy", np.stack([ids[rows], chunk[rows]]))
    frames = []
    for k in range(buckets):
        pairs = [(i, np.load(scratch / f"{k:05d}-{i:05d}.npy")) for i, _ in files]
        values, counts = np.unique(np.concatenate([p[0] for _, p in pairs]), return_counts=True)
        repeated = values[counts > 1]
        for i, pair in pairs if len(repeated) else ():
            hit = np.isin(pair[0], repeated)
            if hit.any():
                frames.append(pd.DataFrame({PART: i, "diaSourceId": pair[0][hit], CHUNK: pair[1][hit]}))
    shutil.rmtree(scratch)
    if not frames:
        return empty
    copies = pd.concat(frames, ignore_index=True)
    first = copies.sort_values(["diaSourceId", CHUNK, PART], kind="stable").drop_duplicates("diaSourceId")
    losers = copies.drop(index=first.index)[[PART, "diaSourceId"]]
    return losers.sort_values([PART, "diaSourceId"], kind="stable").reset_index(drop=True)


def _old_rows(parts: Sequence[Path], night: str, dataset: str, limit: float, losers: pd.DataFrame) -> pd.DataFrame:
    """Key, chunk and position of the night's rows observed before ``limit`` (MJD), re-emitted copies resolved.

    Copies of one measurement share its time, so filtering by time before resolving copies selects the same rows.
    """
    columns = [*apdb.ROW_KEY[dataset], CHUNK, "ra", "dec"]
    tables = []
    for i, path in _staged_files(parts, night):
        t = stage.read_part(path, columns=[*columns, lightcurves.TIME_COLUMN])
        t = t.filter(pc.less(t[lightcurves.TIME_COLUMN], limit)).select(columns)
        if dataset == "DiaSource" and not losers.empty:
            gone = losers.loc[losers[PART] == i, "diaSourceId"].to_numpy()
            t = t.filter(pc.invert(pc.is_in(t["diaSourceId"], pa.array(gone, pa.int64()))))
        tables.append(t)
    if not tables:
        return pd.DataFrame()
    table = postprocess.first_copies(pa.concat_tables(tables), dataset)
    return table.to_pandas()


class RowReader:
    """Rows of a parquet file by position, reading only the row groups that hold them (the footer parsed once)."""

    def __init__(self, path: Path) -> None:
        self.handle = pq.ParquetFile(path)
        sizes = [self.handle.metadata.row_group(g).num_rows for g in range(self.handle.num_row_groups)]
        self.starts = np.cumsum([0, *sizes])

    def column_in(self, name: str, ranges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Values of integer column ``name`` and their row positions, from the row groups whose statistics meet
        ``ranges`` (sorted, disjoint ``[low, high)`` rows): only those groups are read."""
        column = self.handle.schema_arrow.get_field_index(name)
        groups = []
        for g in range(self.handle.num_row_groups):
            stats = self.handle.metadata.row_group(g).column(column).statistics
            if stats is None or not stats.has_min_max:
                groups.append(g)
                continue
            i = int(np.searchsorted(ranges[:, 1], stats.min, side="right"))  # first range ending after min
            if i < len(ranges) and ranges[i, 0] <= stats.max:
                groups.append(g)
        if not groups:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        values = self.handle.read_row_groups(groups, columns=[name])[name].to_numpy()
        rows = np.concatenate([np.arange(self.starts[g], self.starts[g + 1]) for g in groups])
        return values, rows

    def by_group(self, wanted: np.ndarray) -> Iterator[pa.Table]:
        """The rows at positions ``wanted`` (ascending), one row group at a time."""
        group_of = np.searchsorted(self.starts, wanted, side="right") - 1
        for group in np.unique(group_of):
            table = self.handle.read_row_group(int(group))
            yield table.take(pa.array(wanted[group_of == group] - self.starts[group]))

    def read(self, wanted: np.ndarray) -> pa.Table:
        """The rows at positions ``wanted`` (ascending)."""
        groups = np.unique(np.searchsorted(self.starts, wanted, side="right") - 1)
        table = self.handle.read_row_groups(groups.tolist())
        offset = np.concatenate([np.arange(self.starts[g], self.starts[g + 1]) for g in groups])
        return table.filter(pa.array(np.isin(offset, wanted)))


RECORDS_FILE = "all_records.parquet"  #: the changes job's copy of the night's update records, pending ones first


def _copy_records(sources: Sequence[Path], target: Path, batch: int) -> list[int]:
    """Copy the records of ``sources`` (those that exist) into one file, ``batch`` at a time; the count of each."""
    counts = []
    with pq.ParquetWriter(target, updates.RECORD_SCHEMA, compression="zstd") as writer:
        for source in sources:
            counts.append(0)
            if not source.exists():
                continue
            for records in updates.record_batches(source, batch):
                writer.write_table(records)
                counts[-1] += records.num_rows
    return counts


def _source_targets(batches: Iterable[pa.Table]) -> np.ndarray:
    """The diaSourceIds that DiaSource records target (sorted, unique)."""
    ids = [np.empty(0, np.int64)]
    for records in batches:
        targets = updates.record_targets(records)
        ids.append(np.unique(targets.loc[targets["table"] == "DiaSource", "k0"].to_numpy(np.int64)))
    return np.unique(np.concatenate(ids))


def _reassigned_rows(parts: Sequence[Path], night: str, source_ids: np.ndarray) -> pa.Table | None:
    """The night's DiaSource rows targeted by source records (``source_ids``: they may change object, so shard),
    with their ``_part`` and ``_row``; only the row groups holding them are read."""
    wanted = pa.array(source_ids, pa.int64())
    if not len(wanted):
        return None
    found = []
    for i, path in _staged_files(parts, night):
        ids = pq.read_table(path, columns=["diaSourceId"])["diaSourceId"]
        rows = np.flatnonzero(pc.is_in(ids, wanted).to_numpy(zero_copy_only=False))
        if not len(rows):
            continue
        table = RowReader(path).read(rows)
        if ROW not in table.column_names:  # a file staged for one shard is in the night's row order
            table = table.append_column(ROW, pa.array(rows, pa.int64()))
        table = table.drop_columns([c for c in (stage.SHARD,) if c in table.column_names])
        found.append(table.append_column(PART, pa.array(np.full(table.num_rows, i), pa.int64())))
    return pa.concat_tables(found) if found else None


def _reassigned_shards(batches: Iterable[pa.Table], reassigned: pa.Table | None, shards: int) -> pd.DataFrame:
    """Where the records of the night's targeted DiaSource rows go (``k0`` = diaSourceId, ``_shard``): the shards
    of the row's object before and after the records (their net effect: the records of these rows only)."""
    where = pd.DataFrame({"k0": np.empty(0, np.int64), "_shard": np.empty(0, np.int64)})
    if reassigned is None or not reassigned.num_rows:
        return where
    rows = pd.DataFrame({"diaSourceId": reassigned["diaSourceId"].to_numpy(),
                         "before": stage.shard_of(reassigned["diaObjectId"], shards)})
    ids = pa.array(np.unique(rows["diaSourceId"].to_numpy()), pa.int64())
    theirs = [updates.empty_records()]
    for records in batches:
        is_source = pa.array((updates.record_targets(records)["table"] == "DiaSource").to_numpy())
        theirs.append(records.filter(pc.and_(is_source, pc.is_in(records["diaSourceId"], ids))))
    effects = updates.reduce(pa.concat_tables(theirs))
    owner = rows[["diaSourceId"]].merge(effects.sources[["diaSourceId", "diaObjectId", "diaObjectId__set"]],
                                        on="diaSourceId", how="left")
    moves = owner["diaObjectId__set"].fillna(False).astype(bool).to_numpy()
    new_owner = pa.array([updates._py(o) for o in owner["diaObjectId"].to_numpy(dtype=object)[moves]], pa.int64())
    rows["after"] = rows["before"].to_numpy()
    rows.loc[moves, "after"] = stage.shard_of(new_owner, shards)
    return pd.concat([rows[["diaSourceId", "before"]].set_axis(["k0", "_shard"], axis=1),
                      rows[["diaSourceId", "after"]].set_axis(["k0", "_shard"], axis=1)]).drop_duplicates()


def _records_per_shard(records: pa.Table, where: pd.DataFrame, shards: int) -> list[np.ndarray]:
    """Positions (in order) of the records each shard needs, so that the records it reduces give, for every row it
    holds, the same net effect as all of them (last write wins per target: every record of a target goes along):
    object and forced-source records go to the shard of their ``diaObjectId``; a DiaSource record to the shards of
    the night's copies of its target before and after the records (``where``, :func:`_reassigned_shards`: it may
    move the point to another object's shard). A record whose target is not among the night's rows is the changes
    job's alone (:func:`revise`)."""
    targets = updates.record_targets(records)
    is_source = (targets["table"] == "DiaSource").to_numpy()
    shard = stage.shard_of(pa.array(targets["k0"].to_numpy()), shards)  # k0: diaObjectId unless a source record
    pairs = [pd.DataFrame({"_record": np.flatnonzero(~is_source), "_shard": shard[~is_source]})]
    if not where.empty and is_source.any():
        source_records = pd.DataFrame({"k0": targets["k0"].to_numpy()[is_source], "_record": np.flatnonzero(is_source)})
        pairs.append(source_records.merge(where, on="k0")[["_record", "_shard"]])
    both = pd.concat(pairs, ignore_index=True).drop_duplicates()
    grouped = both.sort_values(["_shard", "_record"]).groupby("_shard")["_record"]
    found = {int(k): v.to_numpy(np.int64) for k, v in grouped}
    return [found.get(k, np.empty(0, np.int64)) for k in range(shards)]


def _read_spill(path: Path) -> pa.Table:
    """A scratch file between jobs or passes of one job, in Arrow's IPC file format: written in many small pieces,
    which parquet would describe in a footer of ~0.2 MB per piece that its writer holds until closed."""
    with pa.ipc.open_file(str(path)) as reader:
        return reader.read_all()


def _split_moved(path: Path, shards: int, layout: Layout, schema: pa.Schema) -> None:
    """Write the moved points of ``path`` (if any) into one file per shard of their new object, a batch at a time;
    every shard gets a file."""
    source = pa.ipc.open_file(str(path)) if path.exists() else None
    schema = source.schema if source is not None else revise.moved_schema(schema)
    layout.shard_moved(0).parent.mkdir(parents=True, exist_ok=True)
    writers = [pa.ipc.new_file(str(layout.shard_moved(k)), schema) for k in range(shards)]
    try:
        for b in range(source.num_record_batches if source is not None else 0):
            table = pa.Table.from_batches([source.get_batch(b)])
            shard = stage.shard_of(table[lightcurves.OBJECT_ID], shards)
            for k in np.unique(shard):
                writers[int(k)].write_table(table.filter(pa.array(shard == k)))
    finally:
        for writer in writers:
            writer.close()


def build_changes(batch: Batch, staged: dict[str, list[Path]], layout: Layout, settings: Settings, shards: int
                  ) -> dict:
    """Step 1: resolve the night's update records and re-emitted rows against the collection; see module doc."""
    names = settings.names
    base = published(settings)
    out = _fresh(layout.changes)
    schema = lightcurves.catalog_schema(settings.keep_float64)
    base_catalog = base / names.catalog
    existing = partitioning.sorted_pixels(PartitionInfo.read_from_dir(base_catalog).get_healpix_pixels())
    margin_props = TableProperties.read_from_dir(base / names.margin)
    morder = margins.margin_order(float(margin_props.margin_threshold), existing)

    # the records, pending first (status[pending_before:] is the night's), copied a window at a time into one file
    # that every later step reads in batches: the night's records are never held at once
    window = window_points(settings)
    all_records = out / RECORDS_FILE
    night_files = [path for _, path in _staged_files(staged[stage.UPDATES], batch.night)]
    counts = _copy_records([base / PENDING_PATH, *night_files], all_records, window)
    pending_before, n_records = counts[0], sum(counts)
    losers = _cross_part_losers(staged["DiaSource"], batch.night, out / "source_ids",
                                settings.rows_per_ingest_job)
    horizon = last_store_time(read_ledger(base))
    old = {"DiaSource": pd.DataFrame(), "DiaForcedSource": pd.DataFrame()}
    if horizon is not None:  # rows observed before the last committed store may have a committed copy
        limit = horizon / 86400.0 + MJD_UNIX_EPOCH
        for dataset in old:
            old[dataset] = _old_rows(staged[dataset], batch.night, dataset, limit, losers)
    lookups = revise.Lookups(all_records, old["DiaSource"], old["DiaForcedSource"])
    revision = revise.Revision()
    if n_records or not old["DiaSource"].empty or not old["DiaForcedSource"].empty:
        revision = revise.revise(
            base_catalog, existing, lookups, margin_dir=base / names.margin, margin_order=morder,
            out_catalog=out / "rewrite" / "catalog", out_margin=out / "rewrite" / "margin",
            out_moved=out / "moved_sources.arrow", schema=schema,
            margin_schema=pq.read_schema(Path(paths.get_common_metadata_pointer(base / names.margin).path)),
            points_per_part=window,
        )
    # records that changed a replaced committed copy apply again to the night's (earlier) copy
    history = updates.empty_records()
    if revision.replaced_sources or revision.replaced_forced:
        history = update_history(base, revision.replaced_sources, revision.replaced_forced)

    def applied() -> Iterator[pa.Table]:
        yield from updates.record_batches(all_records, window)
        if history.num_rows:
            yield history

    pq.write_table(pa.Table.from_pandas(losers, preserve_index=False), out / "cross_part_losers.parquet")
    pq.write_table(pa.table({"diaSourceId": pa.array(sorted(revision.kept_sources), pa.int64())}),
                   out / "kept_sources.parquet")
    kept_forced = pd.DataFrame(sorted(revision.kept_forced), columns=list(apdb.ROW_KEY["DiaForcedSource"]),
                               dtype=np.int64)
    pq.write_table(pa.Table.from_pandas(kept_forced, preserve_index=False), out / "kept_forced.parquet")
    reassigned = _reassigned_rows(staged["DiaSource"], batch.night, _source_targets(applied()))
    if reassigned is not None:
        pq.write_table(reassigned, out / "reassigned_sources.parquet")
    # what each shard needs of the records and of the moved points: its share, not the night's
    where = _reassigned_shards(applied(), reassigned, shards)
    layout.shard_records(0).parent.mkdir(parents=True, exist_ok=True)
    writers = [pq.ParquetWriter(layout.shard_records(k), updates.RECORD_SCHEMA, compression="zstd")
               for k in range(shards)]
    try:
        for records in applied():
            for k, rows in enumerate(_records_per_shard(records, where, shards)):
                if len(rows):
                    writers[k].write_table(records.take(pa.array(rows, pa.int64())))
    finally:
        for writer in writers:
            writer.close()
    _split_moved(out / "moved_sources.arrow", shards, layout, schema)
    dropped = (np.concatenate(revision.dropped_healpix29) if revision.dropped_healpix29
               else np.empty(0, np.int64))
    np.save(out / "dropped_healpix29.npy", dropped)
    summary = {
        "base_version": base.name,
        "shards": shards,
        "pending_before": pending_before,
        "re_emitted_in_parts": {ds: sum(_re_emitted(p) for _, p in _staged_files(staged[ds], batch.night))
                                for ds in ("DiaSource", "DiaForcedSource")},
        "cross_part_source_copies": len(losers),
        "targets_found": _write_found(out, revision.found()),
        "moved": revision.moved,
        "moved_to_ssobjects": revision.moved_to_ssobjects,
        "kept_sources": len(revision.kept_sources),
        "kept_forced": len(revision.kept_forced),
        "replaced": len(revision.replaced_sources) + len(revision.replaced_forced),
        "files_scanned": revision.files_scanned,
        "files_rewritten": revision.files_rewritten,
        "margin_files_rewritten": revision.margin_files_rewritten,
        "rows_dropped": revision.rows_dropped,
        "margin_rows_delta": revision.margin_rows_delta,
    }
    _write_json(out / "summary.json", summary)
    log.info("changes of %s: %d records (%d pending before), %d files rewritten, %d re-emitted copies across "
             "staging parts, %d reassigned night rows", batch.name, n_records, pending_before,
             len(revision.files_rewritten), len(losers), 0 if reassigned is None else reassigned.num_rows)
    return summary


# -- 2. shards ----------------------------------------------------------------------------------------------------
def _shard_rows(parts: Sequence[Path], night: str, dataset: str, shard: int, shards: int, losers: pd.DataFrame,
                extra: pa.Table | None) -> tuple[pa.Table, int]:
    """The night's staged rows of ``dataset`` whose object is in ``shard``, in the night's row order, re-emitted
    copies and object versions resolved as :func:`stage.read_staged` does; and the copies it dropped here.

    ``extra``: rows from other shards that may move here (reassigned sources, with ``_part``/``_row``).
    """
    files = _staged_files(parts, night)
    if not files:
        raise FileNotFoundError(f"no staged {dataset} rows for night {night} in {[str(p) for p in parts]}")
    tables = []
    for i, path in files:
        t = stage.read_part(path, shard=shard, shards=shards)
        tables.append(t.append_column(PART, pa.array(np.full(t.num_rows, i), pa.int64())).replace_schema_metadata(None))
    if extra is not None and extra.num_rows:
        others = stage.shard_of(extra["diaObjectId"], shards) != shard  # those of this shard are already here
        tables.append(extra.filter(pa.array(others)).select(tables[0].schema.names).cast(tables[0].schema))
    table = pa.concat_tables(tables)
    if dataset == "DiaSource" and not losers.empty:
        keys = pd.DataFrame({PART: table[PART].to_numpy(), "diaSourceId": table["diaSourceId"].to_numpy()})
        gone = keys.merge(losers.assign(_x=1), how="left")["_x"].notna().to_numpy()
        table = table.filter(pa.array(~gone))
    table = table.take(pc.sort_indices(table, sort_keys=[(PART, "ascending"), (ROW, "ascending")]))
    table = table.drop_columns([PART, ROW])
    dropped = 0
    if len(files) > 1:  # as read_staged: versions and copies across parts
        if dataset == "DiaObject":
            table = postprocess.latest_versions(table)
        else:
            unique = postprocess.first_copies(table, dataset)
            dropped = table.num_rows - unique.num_rows
            table = unique
    return table, dropped


def build_shard(batch: Batch, staged: dict[str, list[Path]], layout: Layout, settings: Settings, shard: int,
                shards: int) -> dict:
    """Step 2: nest the light curves of the objects of ``shard``; see module doc."""
    names = settings.names
    changes = json.loads((layout.changes / "summary.json").read_text())
    base = published(settings)
    _check_base(base, changes["base_version"], f"night {batch.name}")
    out = _fresh(layout.shard(shard))
    schema = lightcurves.catalog_schema(settings.keep_float64)
    base_catalog = base / names.catalog
    order = int(TableProperties.read_from_dir(base_catalog).skymap_order)
    existing = partitioning.sorted_pixels(PartitionInfo.read_from_dir(base_catalog).get_healpix_pixels())
    effects = updates.reduce(pq.read_table(layout.shard_records(shard)))
    losers = pq.read_table(layout.changes / "cross_part_losers.parquet").to_pandas()
    reassigned_path = layout.changes / "reassigned_sources.parquet"
    reassigned = pq.read_table(reassigned_path) if reassigned_path.exists() else None

    objects, _ = _shard_rows(staged["DiaObject"], batch.night, "DiaObject", shard, shards, losers, None)
    sources, dropped_s = _shard_rows(staged["DiaSource"], batch.night, "DiaSource", shard, shards, losers,
                                     reassigned)
    forced, dropped_f = _shard_rows(staged["DiaForcedSource"], batch.night, "DiaForcedSource", shard, shards,
                                    losers, None)
    # re-emitted rows: a committed copy from an earlier (or the same) chunk wins over the night's
    kept_sources = pq.read_table(layout.changes / "kept_sources.parquet")["diaSourceId"]
    if len(kept_sources):
        sources = sources.filter(pc.invert(pc.is_in(sources["diaSourceId"], kept_sources)))
    forced = _without_keys(forced, pq.read_table(layout.changes / "kept_forced.parquet").to_pandas())
    flat = updates.apply_to_flat(objects, sources, forced, effects)
    night_sources = flat.sources.filter(pa.array(stage.shard_of(flat.sources["diaObjectId"], shards) == shard))
    parts = [night_sources]
    moved = _read_spill(layout.shard_moved(shard))
    if moved.num_rows:
        parts.append(moved.select(night_sources.schema.names).cast(night_sources.schema))
    rows, stats = lightcurves.nest_batch(flat.objects, pa.concat_tables(parts), flat.forced, schema)
    # row groups of a writer's share of the shard (rows / shards: each writer reads ~2, one at a time), at most a
    # window: a file's footer then holds max(shards, ~10) row groups, whatever the night's size (a parsed footer
    # takes ~0.2 MB per row group of the 218 columns)
    points_per_row = max(1.0, (stats.sources + stats.forced_sources) / max(1, rows.num_rows))
    window_rows = max(100, int(window_points(settings) / points_per_row))
    row_group = max(MIN_ROW_GROUP, min(window_rows, -(-rows.num_rows // shards)))
    pq.write_table(rows, out / ROWS_FILE, row_group_size=row_group, compression="zstd")
    hp29 = rows[SPATIAL_INDEX_COLUMN].to_numpy()
    cells = spatial_index_to_healpix(hp29, target_order=order)
    np.save(out / "histogram.npy", _sparse_histogram(cells))
    np.save(out / "uncovered_histogram.npy", _sparse_histogram(cells[partitioning.locate(hp29, existing) < 0]))
    faults.point("shard:written")  # rows written, summary not yet: a job killed here is redone by the rerun
    summary = {
        "shard": shard,
        "base_version": base.name,
        "rows": rows.num_rows,
        "objects": stats.objects,
        "orphan_rows": stats.orphan_rows,
        "sources": stats.sources,
        "forced_sources": stats.forced_sources,
        "solar_system_sources": stats.solar_system_sources,
        "re_emitted_across_parts": {"DiaSource": dropped_s, "DiaForcedSource": dropped_f},
        "targets_found": _write_found(out, flat.found()),
    }
    _write_json(out / "summary.json", summary)
    log.info("shard %d/%d of %s: %d objects, %d orphan rows, %d sources, %d forced sources -> %d rows", shard + 1,
             shards, batch.name, stats.objects, stats.orphan_rows, stats.sources, stats.forced_sources, rows.num_rows)
    return summary


# -- 3. writers ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NightPixels:
    """The night's partitioning, identical in every writer: computed from the shards' small outputs."""

    pixels: list[HealpixPixel]  # existing + created, spatially sorted
    created: list[HealpixPixel]
    rows_per_pixel: np.ndarray
    margin_order: int

    def groups(self, writers: int) -> np.ndarray:
        """Writer of each pixel: consecutive pixels, about the same number of the night's rows per writer."""
        total = int(self.rows_per_pixel.sum())
        if writers == 1 or total == 0:
            return np.zeros(len(self.pixels), dtype=np.int64)
        before = np.concatenate([[0], np.cumsum(self.rows_per_pixel)[:-1]])
        return np.minimum(before * writers // total, writers - 1).astype(np.int64)


    def to_json(self) -> dict:
        return {"pixels": [_pixel_key(p) for p in self.pixels], "created": [_pixel_key(p) for p in self.created],
                "rows_per_pixel": self.rows_per_pixel.tolist(), "margin_order": self.margin_order}

    @staticmethod
    def from_json(data: dict) -> NightPixels:
        return NightPixels([HealpixPixel(o, p) for o, p in data["pixels"]],
                           [HealpixPixel(o, p) for o, p in data["created"]],
                           np.asarray(data["rows_per_pixel"], dtype=np.int64), int(data["margin_order"]))


def plan_pixels(batch: Batch, layout: Layout, settings: Settings) -> dict:
    """Step 2½ (one light job between the shards and the writers): the night's pixels from the shards' histograms
    (:func:`night_pixels`) and the points per catalog row, written once for every writer and the commit, so no job
    reads the outputs of all the others but this one (S writers reading S shards' outputs each were S² reads, and as
    many dependencies in the workflow's graph)."""
    changes = json.loads((layout.changes / "summary.json").read_text())
    base = published(settings)
    _check_base(base, changes["base_version"], f"night {batch.name}")
    shards = int(changes["shards"])
    nested = [json.loads((layout.shard(k) / "summary.json").read_text()) for k in range(shards)]
    night = night_pixels(layout, shards, settings, base)
    plan = {**night.to_json(),
            "points_per_row": max(1.0, sum(s["sources"] + s["forced_sources"] for s in nested) / max(1, sum(
                s["rows"] for s in nested)))}
    layout.pixels.parent.mkdir(parents=True, exist_ok=True)
    _write_json(layout.pixels, plan)
    log.info("pixels of %s: %d (%d created) for %d rows", batch.name, len(night.pixels), len(night.created),
             int(night.rows_per_pixel.sum()))
    return plan


def _sparse_histogram(cells: np.ndarray) -> np.ndarray:
    """``[cells, counts]`` of the rows' cells (int64, 2 x n)."""
    values, counts = np.unique(cells, return_counts=True)
    return np.stack([values.astype(np.int64), counts.astype(np.int64)])


def night_pixels(layout: Layout, shards: int, settings: Settings, base: Path) -> NightPixels:
    names = settings.names
    base_catalog = base / names.catalog
    order = int(TableProperties.read_from_dir(base_catalog).skymap_order)
    existing = partitioning.sorted_pixels(PartitionInfo.read_from_dir(base_catalog).get_healpix_pixels())
    uncovered = np.zeros(12 * 4**order, dtype=np.int64)  # the night's rows outside the coverage, per cell
    for k in range(shards):
        cells, counts = np.load(layout.shard(k) / "uncovered_histogram.npy")
        np.add.at(uncovered, cells, counts)
    created = (partitioning.pixels_for_histogram(uncovered, existing, order=order, threshold=settings.pixel_threshold)
               if uncovered.any() else [])
    pixels = partitioning.sorted_pixels([*existing, *created])
    rows_per_pixel = np.zeros(len(pixels), dtype=np.int64)
    for k in range(shards):
        cells, counts = np.load(layout.shard(k) / "histogram.npy")
        slots = partitioning.locate(cells << (2 * (29 - order)), pixels)
        if (slots < 0).any():
            raise RuntimeError(f"{int(counts[slots < 0].sum())} rows fall outside every pixel after alignment")
        np.add.at(rows_per_pixel, slots, counts)
    threshold = float(TableProperties.read_from_dir(base / names.margin).margin_threshold)
    return NightPixels(pixels, created, rows_per_pixel, margins.margin_order(threshold, pixels))


def _near(cells: np.ndarray, order: int) -> np.ndarray:
    """``cells`` and all their neighbours at ``order`` (sorted, unique)."""
    if not len(cells):
        return cells
    ring = np.asarray(cds.neighbours(cells.astype(np.uint64), order), dtype=np.int64).ravel()
    return np.unique(np.concatenate([cells, ring[ring >= 0]]))


def _merged_ranges(ranges: np.ndarray) -> np.ndarray:
    """``[low, high)`` ranges (n x 2) sorted and merged where they touch or overlap."""
    if not len(ranges):
        return ranges.reshape(0, 2)
    ranges = ranges[np.argsort(ranges[:, 0], kind="stable")]
    ends = np.maximum.accumulate(ranges[:, 1])
    starts = np.flatnonzero(np.r_[True, ranges[1:, 0] > ends[:-1]])
    return np.stack([ranges[starts, 0], np.r_[ends[starts[1:] - 1], ends[-1]]], axis=1)


def _windows(positions: np.ndarray, size: int) -> list[tuple[int, int]]:
    """``[low, high)`` ranges of ``_healpix_29`` holding about ``size`` of ``positions`` each, never splitting equal
    values (rows are ordered by position, then id, within a window)."""
    if not len(positions):
        return []
    ordered = np.sort(positions)
    cuts = np.unique(ordered[np.arange(size, len(ordered), size)])
    bounds = np.concatenate([[ordered[0]], cuts, [ordered[-1] + 1]])
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def build_writer(batch: Batch, layout: Layout, settings: Settings, writer: int, writers: int) -> dict:
    """Step 3: write the night's files of one group of pixels; see module doc. Rows are read and written a window
    of positions at a time: catalog rows holding about :func:`window_points` points (at least 100
    rows), whatever one pixel holds."""
    names = settings.names
    changes = json.loads((layout.changes / "summary.json").read_text())
    base = published(settings)
    _check_base(base, changes["base_version"], f"night {batch.name}")
    shards = int(changes["shards"])
    out = _fresh(layout.writer(writer))
    schema = lightcurves.catalog_schema(settings.keep_float64)
    base_catalog = base / names.catalog
    existing = partitioning.sorted_pixels(PartitionInfo.read_from_dir(base_catalog).get_healpix_pixels())
    plan = json.loads(layout.pixels.read_text())
    night = NightPixels.from_json(plan)
    pixels, morder = night.pixels, night.margin_order
    mine = np.flatnonzero(night.groups(writers) == writer)
    points_per_row = float(plan["points_per_row"])
    window_rows = max(100, int(window_points(settings) / points_per_row))
    shift = 2 * (29 - morder)
    border = _near(np.unique(np.concatenate(
        [margins.border_cells(pixels[int(s)], morder) for s in mine] or [np.empty(0, np.int64)])), morder)

    # the rows of my pixels and the rows that may lie in their margins, from every shard, in (position, id) order,
    # a window of positions at a time: a pixel's file is appended to window by window, so memory does not depend on
    # how many of the night's rows one pixel holds. One shard file is open at a time (a parsed footer is large):
    # 1. the positions of my rows in every shard (row groups whose statistics meet my ranges only);
    wanted: list[np.ndarray] = []
    positions: list[np.ndarray] = []
    ranges = _merged_ranges(np.concatenate([partitioning.depth29_ranges([pixels[int(s)] for s in mine]),
                                            np.stack([border << shift, (border + 1) << shift], axis=1)]))
    for k in range(shards):
        hp29, at = RowReader(layout.shard(k) / ROWS_FILE).column_in(SPATIAL_INDEX_COLUMN, ranges)
        hit = np.isin(partitioning.locate(hp29, pixels), mine) | np.isin(hp29 >> shift, border)
        wanted.append(at[hit])
        positions.append(hp29[hit])
    # 2. windows of positions; each shard's rows sorted into one spill file per window, a row group at a time;
    windows = _windows(np.concatenate(positions), window_rows)
    lows = np.array([low for low, _ in windows], dtype=np.int64)
    spill = out / "windows"
    spill.mkdir()
    spill_writers: dict[int, pa.ipc.RecordBatchFileWriter] = {}
    try:
        for k in range(shards):
            if not len(wanted[k]):
                continue
            reader = RowReader(layout.shard(k) / ROWS_FILE)
            for rows in reader.by_group(wanted[k]):
                window = np.searchsorted(lows, rows[SPATIAL_INDEX_COLUMN].to_numpy(), side="right") - 1
                for w in np.unique(window):
                    if int(w) not in spill_writers:
                        spill_writers[int(w)] = pa.ipc.new_file(str(spill / f"{int(w):06d}.arrow"), rows.schema)
                    spill_writers[int(w)].write_table(rows.filter(pa.array(window == w)))
    finally:
        for writer_of_window in spill_writers.values():
            writer_of_window.close()
    file_name = f"{batch.name}.parquet"
    margin_schema = pq.read_schema(Path(paths.get_common_metadata_pointer(base / names.margin).path))
    counts: dict[HealpixPixel, int] = {}
    margin_parts: list[tuple[pa.Table, np.ndarray]] = []
    index_parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    rows_read = 0
    # 3. a window at a time: its rows sorted, appended to my pixels' files, margin and index rows
    with catalog.PixelFileWriter(out / "catalog", file_name, schema) as files:
        for w in range(len(windows)):
            path = spill / f"{w:06d}.arrow"
            if not path.exists():
                continue
            rows = _read_spill(path)
            path.unlink()
            rows = rows.take(pc.sort_indices(rows, sort_keys=[(SPATIAL_INDEX_COLUMN, "ascending"),
                                                              (lightcurves.OBJECT_ID, "ascending")]))
            rows_read += rows.num_rows
            hp29 = rows[SPATIAL_INDEX_COLUMN].to_numpy()
            slots = partitioning.locate(hp29, pixels)
            own = np.flatnonzero(np.isin(slots, mine))  # contiguous: my pixels are consecutive in sky order
            if len(own):
                start, stop = int(own[0]), int(own[-1]) + 1
                for slot, table in catalog.sorted_slices(rows.slice(start, stop - start), slots[start:stop]):
                    files.append(pixels[slot], table)
                    counts[pixels[slot]] = counts.get(pixels[slot], 0) + table.num_rows
                index_parts.append((rows[lightcurves.OBJECT_ID].to_numpy()[start:stop], hp29[start:stop],
                                    slots[start:stop]))
            m_rows, m_slots = margins.margin_targets(hp29, slots, pixels, morder)
            keep = np.isin(m_slots, mine)
            if keep.any():
                margin_parts.append((rows.take(pa.array(m_rows[keep])).select(margin_schema.names)
                                     .cast(margin_schema.remove_metadata()), m_slots[keep]))
    shutil.rmtree(spill)
    margin_rows = (pa.concat_tables([t for t, _ in margin_parts]) if margin_parts
                   else margin_schema.remove_metadata().empty_table())
    margin_slots = np.concatenate([m for _, m in margin_parts]) if margin_parts else np.empty(0, np.int64)
    margin_counts = catalog.write_pixel_slices(margin_rows, margin_slots, pixels, out / "margin", file_name)
    backfill_rows = 0  # existing rows near the pixels created tonight, in files named like their catalog files
    backfill: dict[str, list[tuple[pa.Table, np.ndarray]]] = {}
    for pixel in night.created:
        if pixels.index(pixel) not in set(mine.tolist()):
            continue
        for name, table in _border_rows_from(base_catalog, layout.changes / "rewrite" / "catalog", pixel, existing,
                                             morder, schema, window_points(settings)).items():
            backfill.setdefault(name, []).append((table, np.full(table.num_rows, pixels.index(pixel))))
    for name, parts in backfill.items():
        table = pa.concat_tables([t for t, _ in parts]).select(margin_schema.names).cast(margin_schema.remove_metadata())
        written = catalog.write_pixel_slices(table, np.concatenate([s for _, s in parts]), pixels, out / "margin", name)
        for pixel, n in written.items():
            margin_counts[pixel] = margin_counts.get(pixel, 0) + n
        backfill_rows += table.num_rows

    index_schema = pq.read_schema(Path(paths.get_common_metadata_pointer(base / names.index).path))
    (out / "index").mkdir()
    index_name = file_name if writers == 1 else f"{batch.name}_{writer:04d}.parquet"
    ids, hp29, slots = (np.concatenate([p[i] for p in index_parts]) if index_parts else np.empty(0, np.int64)
                        for i in range(3))
    pq.write_table(collection.index_rows(ids, hp29, slots, pixels, index_schema, names.index_column),
                   out / "index" / index_name)
    summary = {
        "writer": writer,
        "base_version": base.name,
        "rows": len(ids),
        "pixels_touched": {f"{p.order}/{p.pixel}": n for p, n in counts.items()},
        "margin_pixels": {f"{p.order}/{p.pixel}": n for p, n in margin_counts.items()},
        "margin_rows": margin_rows.num_rows + backfill_rows,
        "rows_read": rows_read,
    }
    _write_json(out / "summary.json", summary)
    log.info("writer %d/%d of %s: %d rows into %d pixels, %d margin rows (%d rows read from %d shards)",
             writer + 1, writers, batch.name, len(ids), len(counts), summary["margin_rows"], rows_read, shards)
    return summary


def _border_rows_from(base_catalog: Path, rewritten_catalog: Path, pixel: HealpixPixel,
                      existing: Sequence[HealpixPixel], order: int, schema: pa.Schema, points: int
                      ) -> dict[str, pa.Table]:
    """Rows of existing pixels that lie in the margin of a newly created ``pixel``, per file name (a margin file
    ``Q/<name>`` holds border rows of the catalog files ``P/<name>``); files rewritten tonight are read from
    ``rewritten_catalog``. Files are read in parts of ``points`` points (they may hold a pixel's years)."""
    cells = margins.border_cells(pixel, order)
    owners = partitioning.locate(cells << (2 * (29 - order)), existing)
    parts: dict[str, list[pa.Table]] = {}
    for slot in np.unique(owners[owners >= 0]):
        for _, path in catalog.pixel_files(base_catalog, [existing[int(slot)]]):
            fresh = rewritten_catalog / path.relative_to(base_catalog)
            for table in catalog.read_parts(fresh if fresh.exists() else path, points, schema=schema):
                mask = margins.rows_in_border(table[SPATIAL_INDEX_COLUMN].to_numpy(), pixel, order)
                if mask.any():
                    parts.setdefault(path.name, []).append(table.filter(pa.array(mask)))
    return {name: pa.concat_tables(tables) for name, tables in parts.items()}


# -- the summary the commit needs ---------------------------------------------------------------------------------
def _pixel_key(pixel: HealpixPixel) -> list[int]:
    return [int(pixel.order), int(pixel.pixel)]


def _record_statuses(records_file: Path, found: updates.FoundTargets, pending_before: int, build: Path,
                     batch: int) -> dict[str, dict[str, int]]:
    """Statuses of the records (pending ones first, then the night's), a batch at a time: the night's update log
    (its records with their status) and the records still pending, written into ``build``; counts by type."""
    tally: dict[str, collections.Counter] = {k: collections.Counter() for k in
                                             ("received", updates.APPLIED, updates.SUPERSEDED, updates.PENDING)}
    log_schema = updates.RECORD_SCHEMA.append(pa.field("status", pa.string()))
    log_tmp, still_pending, position = build / "updates.parquet.tmp", [updates.empty_records()], 0
    with pq.ParquetWriter(log_tmp, log_schema, compression="zstd") as log_writer:
        for records in updates.record_batches(records_file, batch):
            status = updates.statuses(records, found)
            first_of_night = max(0, pending_before - position)  # this batch's first row that is the night's
            position += records.num_rows
            for name in (updates.APPLIED, updates.SUPERSEDED, updates.PENDING):
                tally[name].update(updates.counts_by_type(records, status == name))
            tally["received"].update(updates.counts_by_type(records.slice(first_of_night)))
            if first_of_night < records.num_rows:
                log_writer.write_table(records.slice(first_of_night).append_column(
                    "status", pa.array(status[first_of_night:].tolist(), pa.string())))
            still_pending.append(records.filter(pa.array(status == updates.PENDING)))
    os.replace(log_tmp, build / "updates.parquet")
    write_records(build / "pending_updates.parquet", updates.in_order(pa.concat_tables(still_pending)))
    return {name: dict(sorted(counter.items())) for name, counter in tally.items()}


def assemble(batch: Batch, layout: Layout, settings: Settings, writers: int, started: float) -> dict:
    """Gather the jobs' outputs into the build's ``summary.json``, ``histogram.npy``, night update log and pending
    records (what :func:`ppdb_lc.nightly.commit_batch` reads); return the summary."""
    changes = json.loads((layout.changes / "summary.json").read_text())
    shards = int(changes["shards"])
    base = published(settings)
    _check_base(base, changes["base_version"], f"night {batch.name}")
    shard_sums = [json.loads((layout.shard(k) / "summary.json").read_text()) for k in range(shards)]
    writer_sums = [json.loads((layout.writer(j) / "summary.json").read_text()) for j in range(writers)]
    night = NightPixels.from_json(json.loads(layout.pixels.read_text()))

    jobs = (layout.changes, *(layout.shard(k) for k in range(shards)))
    found = updates.FoundTargets.of(pa.concat_tables([pq.read_table(job / FOUND_FILE) for job in jobs]))
    pending_before = int(changes["pending_before"])
    tally = _record_statuses(layout.changes / RECORDS_FILE, found, pending_before, layout.build,
                             window_points(settings))
    counts = {
        "records_received": tally["received"],
        "records_pending_before": pending_before,
        "records_applied": tally[updates.APPLIED],
        "records_superseded": tally[updates.SUPERSEDED],
        "records_pending": tally[updates.PENDING],
        "sources_moved_from_committed_rows": changes["moved"],
        "sources_reassigned_to_ssobjects_committed": changes["moved_to_ssobjects"],
        "re_emitted_sources_already_committed": changes["kept_sources"],
        "re_emitted_forced_sources_already_committed": changes["kept_forced"],
        "committed_copies_replaced_by_earlier_chunks": changes["replaced"],
        "files_scanned_for_targets": changes["files_scanned"],
        "files_rewritten": len(changes["files_rewritten"]),
        "margin_files_rewritten": len(changes["margin_files_rewritten"]),
        "rows_dropped": changes["rows_dropped"],
    }
    order = int(TableProperties.read_from_dir(base / settings.names.catalog).skymap_order)
    histogram = np.zeros(12 * 4**order, dtype=np.int64)
    for k in range(shards):
        cells, n = np.load(layout.shard(k) / "histogram.npy")
        np.add.at(histogram, cells, n)
    dropped = np.load(layout.changes / "dropped_healpix29.npy")
    if len(dropped):
        histogram -= partitioning.histogram(dropped, order)
    np.save(layout.build / "histogram.npy", histogram)

    def total(key: str) -> int:
        return sum(int(s[key]) for s in shard_sums)

    touched: dict[str, int] = {}
    margin_pixels: dict[str, int] = {}
    for w in writer_sums:
        touched.update(w["pixels_touched"])
        margin_pixels.update(w["margin_pixels"])
    pixel_order = {f"{p.order}/{p.pixel}": i for i, p in enumerate(night.pixels)}
    summary = {
        "batch": batch.name,
        "night": batch.night,
        "base_version": base.name,
        "chunks": [c.chunk_id for c in batch.chunks],
        "chunks_skipped": list(batch.skipped),
        "rows_in": {ds: batch.rows(ds) for ds in apdb.DATASETS},
        "re_emitted_copies_in_night": {
            ds: changes["re_emitted_in_parts"][ds] + sum(s["re_emitted_across_parts"][ds] for s in shard_sums)
            + (changes["cross_part_source_copies"] if ds == "DiaSource" else 0)
            for ds in ("DiaSource", "DiaForcedSource")},
        "objects_latest_versions": total("objects"),
        "orphan_rows": total("orphan_rows"),
        "sources_nested": total("sources"),
        "forced_sources_nested": total("forced_sources"),
        "solar_system_sources_skipped": total("solar_system_sources"),
        "updates": counts,
        "catalog_rows_added": total("rows"),
        "catalog_rows_dropped": changes["rows_dropped"],
        "margin_rows_added": sum(int(w["margin_rows"]) for w in writer_sums),
        "margin_rows_changed": changes["margin_rows_delta"],
        "pixels": [_pixel_key(p) for p in night.pixels],
        "pixels_touched": dict(sorted(touched.items(), key=lambda kv: pixel_order[kv[0]])),
        "pixels_created": [_pixel_key(p) for p in night.created],
        "margin_pixels": dict(sorted(margin_pixels.items(), key=lambda kv: pixel_order[kv[0]])),
        "files_rewritten": changes["files_rewritten"],
        "margin_files_rewritten": changes["margin_files_rewritten"],
        "shards": shards,
        "writers": writers,
        "build_seconds": round(time.time() - started, 3),
    }
    _write_json(layout.build / "summary.json", summary)
    log.info("built %s: %d rows (%d orphan rows) into %d pixels (%d new), %d margin rows in %d shard(s) and %d "
             "writer(s); updates %s", batch.name, summary["catalog_rows_added"], summary["orphan_rows"], len(touched),
             len(night.created), summary["margin_rows_added"], shards, writers, counts)
    return summary
