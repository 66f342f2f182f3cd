"""Incremental weekly compaction: a plan, pixel-group shards that run in parallel, and a commit.

The full weekly (:func:`ppdb_lc.rebuild.weekly`) folds and rewrites every file. Its result is a function of two
things only: the objects' histogram at the skymap order (which fixes the partitioning, hats' ``generate_alignment``
with threshold = objects per pixel) and, per pixel group, the rows of the group. The incremental weekly computes the
same two things without reading the rows of pixels nothing happened to:

1. **plan** (:func:`plan_weekly`, one job). *Touched* pixels: those holding a file other than the last compaction's
   ``compacted.parquet`` (a daily's dated file, a new pixel), those whose ``compacted.parquet`` a daily rewrote for
   update records (``files_rewritten`` of the nightly summaries since the last compaction), and every pixel holding
   a row of an object that has a row in a touched pixel (looked up in the ``diaObjectId`` index: an object whose
   rows lie in several pixels moves, or its points do). Only the key columns of the touched pixels' files are
   read. The histogram of every object's latest position is the stored ``point_map`` (which counts one row per
   object in untouched pixels: the last compaction wrote it from objects, dailies add rows only to touched pixels)
   with the touched pixels' cells replaced by the touched objects' latest positions. Each untouched pixel's stored
   count is checked against its file's row count (footer); a mismatch falls back to the full weekly. The new
   partitioning is hats' alignment of that histogram, exactly as the full weekly computes it.
   Old and new pixels nest, so they form groups (:func:`ppdb_lc.compaction.pixel_groups`). A group that is one
   untouched pixel, unchanged by the alignment, is *carried*: its catalog file is hard-linked. Every other group is
   rewritten; rewritten groups that exchange rows (an object with rows in both) are joined, and the joined groups
   are spread over at most ``weekly.shards`` shards by row count.
2. **shards** (:func:`compact_shard`, parallel jobs): a :class:`~ppdb_lc.compaction.Compaction` of the shard's
   files onto the planned pixels, its index rows, and the margin rows it owes: its own rows in the border of any
   pixel, and the rows of carried pixels in the border of its pixels (from the old margin files of its old pixels).
3. **commit** (:func:`commit_weekly`, one job): links carried catalog files and the shards' files, writes the
   margin of every pixel whose border touches a rewritten pixel (the shards' rows plus, for a carried pixel, the
   rows of its old margin file that come from carried pixels), links the other margin files, filters the old index
   files to the rows of carried pixels (linked when nothing is dropped) and adds the shards' index files; then the
   metadata, and publishes like the full weekly.

The result equals the full weekly's: same pixels, the same rows per pixel, the same margin rows per pixel and the
same index rows (``tests/test_weekly.py``). Only the file layout of the index differs (several files, each sorted
by id, as after a daily).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import cdshealpix.nested as cds
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.parquet as pq
from hats.catalog import PartitionInfo, TableProperties
from hats.io import paths
from hats.io.paths import get_healpix_from_path
from hats.pixel_math import HealpixPixel
from hats.pixel_math.spatial_index import SPATIAL_INDEX_COLUMN

from ppdb_lc import catalog, collection, compaction, faults, lightcurves, margins, partitioning, postprocess, rebuild
from ppdb_lc.ledger import BOOTSTRAP, LEDGER_PATH
from ppdb_lc.settings import Settings
from ppdb_lc.stash import Stash
from ppdb_lc.versions import CollectionStateError, VersionedCollection, version_number

log = logging.getLogger(__name__)
PLAN_FILE = "plan.json"
HISTOGRAM_FILE = "histogram.npy"
SHARD_MARGIN_FILE = "shard.parquet"
SHARD_INDEX_FILE = "index.parquet"
INCREMENTAL, FULL = "incremental", "full"

PixelKey = tuple[int, int]


def _key(pixel: HealpixPixel) -> PixelKey:
    return int(pixel.order), int(pixel.pixel)


def pixel_path(catalog_dir: Path, pixel: HealpixPixel, name: str) -> Path:
    """``Npix=N/<name>`` below ``catalog_dir``, creating nothing (``catalog.pixel_file`` creates the directory)."""
    return Path(paths.pixel_catalog_file(catalog_dir, pixel, npix_suffix="/").path) / name


def _pixel(key: Sequence[int]) -> HealpixPixel:
    return HealpixPixel(int(key[0]), int(key[1]))


@dataclass
class ShardPlan:
    """One ``compact_pixels`` job: the files it folds and the pixels it writes."""

    sources: list[tuple[int, int, str]] = field(default_factory=list)  # (order, pixel, path) of each file read
    pixels: list[PixelKey] = field(default_factory=list)  # destination pixels
    rows: int = 0  # rows of its files (memory request)


@dataclass
class WeeklyPlan:
    """What the incremental weekly does; written as ``plan.json`` (+ ``histogram.npy``) by the plan job."""

    base: str  # the published version the plan was made on (its directory)
    mode: str  # INCREMENTAL, or FULL (fall back: nearly everything changed, or the stored histogram is off)
    reason: str
    order: int
    threshold: int
    objects: int  # objects of the compacted catalog
    pixels: list[PixelKey]  # the new partitioning (all pixels, sky order)
    carried: list[PixelKey]  # pixels whose catalog file is hard-linked
    margin_linked: list[PixelKey]  # carried pixels whose margin file is hard-linked (no rewritten neighbour)
    shards: list[ShardPlan]
    stats: dict

    def write(self, out_dir: Path, histogram: np.ndarray | None) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        if histogram is not None:
            np.save(out_dir / HISTOGRAM_FILE, histogram)
        tmp = out_dir / (PLAN_FILE + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(out_dir / PLAN_FILE)

    @classmethod
    def read(cls, plan_dir: Path) -> WeeklyPlan:
        data = json.loads((Path(plan_dir) / PLAN_FILE).read_text())
        shards = [ShardPlan([tuple(s) for s in d["sources"]], [tuple(p) for p in d["pixels"]], d["rows"])
                  for d in data.pop("shards")]
        for name in ("pixels", "carried", "margin_linked"):
            data[name] = [tuple(p) for p in data[name]]
        return cls(shards=shards, **data)

    @staticmethod
    def histogram(plan_dir: Path) -> np.ndarray:
        return np.load(Path(plan_dir) / HISTOGRAM_FILE)


def shard_count(plan_dir: str | Path) -> int:
    """Number of ``compact_pixels`` jobs of a plan (0 for the full weekly)."""
    return len(WeeklyPlan.read(Path(plan_dir)).shards)


def shard_rows(plan_dir: str | Path, shard: int) -> int:
    return WeeklyPlan.read(Path(plan_dir)).shards[shard].rows


def published_rows(settings: Settings) -> int:
    """Rows of the published catalog (its properties; 0 without a collection): the plan job's memory bound."""
    base = VersionedCollection(settings.collection_dir).current()
    if base is None:
        return 0
    return int(TableProperties.read_from_dir(base / settings.names.catalog).total_rows or 0)


# -- plan -----------------------------------------------------------------------------------------------------
def _is_compaction(summary: dict) -> bool:
    batch = str(summary.get("batch", ""))
    return batch == BOOTSTRAP or batch.startswith("weekly-")


def revised_since_last_compaction(version_dir: Path) -> set[HealpixPixel]:
    """Pixels of catalog files that dailies rewrote in place (update records) since the last bootstrap or weekly.

    A batch summary names its base version; dailies built on a version after the last compaction's base came
    after it (versions are numbered, and a compaction's base is the version it replaced)."""
    summaries = [json.loads(p.read_text()) for p in sorted((version_dir / "ingest" / "batches").glob("*.json"))]

    def base_number(summary: dict) -> int:
        return version_number(summary["base_version"]) if summary.get("base_version") else -1

    last = max((base_number(s) for s in summaries if _is_compaction(s)), default=-1)
    return {get_healpix_from_path(str(path)) for s in summaries if not _is_compaction(s) and base_number(s) > last
            for path in s.get("files_rewritten", [])}


def _index_owner_pixels(index_dir: Path, id_column: str, ids: np.ndarray, pixels: Sequence[HealpixPixel]
                        ) -> set[HealpixPixel]:
    """Pixels (of ``pixels``) holding a row of any of ``ids``, from the ``diaObjectId`` index (its ``_healpix_29``;
    the scan filters batch by batch, so only the matching rows are held)."""
    files = sorted(collection.index_file(index_dir, "x").parent.glob("*.parquet"))
    if not files or not len(ids):
        return set()
    table = pds.dataset([str(f) for f in files], format="parquet").to_table(
        columns=[SPATIAL_INDEX_COLUMN], filter=pc.field(id_column).isin(pa.array(np.unique(ids))))
    slots = partitioning.locate(table[SPATIAL_INDEX_COLUMN].to_numpy(), pixels)
    return {pixels[s] for s in np.unique(slots[slots >= 0])}


def _cells(pixel: HealpixPixel, order: int) -> slice:
    shift = 2 * (order - pixel.order)
    return slice(pixel.pixel << shift, (pixel.pixel + 1) << shift)


class _Components:
    """Union-find over group numbers."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = int(self.parent[i])
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _margin_touches(pixel: HealpixPixel, order: int, rewritten: Sequence[Sequence[HealpixPixel]]) -> bool:
    """Whether a border cell of ``pixel`` (margin order) lies in any pixel of the ``rewritten`` lists."""
    starts = margins.border_cells(pixel, order) << (2 * (29 - order))
    return any(len(pixels) and (partitioning.locate(starts, pixels) >= 0).any() for pixels in rewritten)


def plan_weekly(settings: Settings, out_dir: Path, *, shards: int | None = None,
                full_above: float | None = None) -> WeeklyPlan:
    """Plan the weekly of the published version into ``out_dir`` (``plan.json``, ``histogram.npy``)."""
    started = time.time()
    shards = settings.weekly_shards if shards is None else shards
    full_above = settings.weekly_full_above if full_above is None else full_above
    names = settings.names
    base = VersionedCollection(settings.collection_dir).current()
    if base is None:
        raise CollectionStateError(f"no collection at {settings.collection_dir}: run `snakemake bootstrap` first")
    cat = base / names.catalog
    order = int(TableProperties.read_from_dir(cat).skymap_order)
    threshold = settings.pixel_threshold
    old_pixels = partitioning.sorted_pixels(PartitionInfo.read_from_dir(cat).get_healpix_pixels())
    files: dict[HealpixPixel, list[Path]] = defaultdict(list)
    for pixel, path in catalog.pixel_files(cat, old_pixels):
        files[pixel].append(path)
    schema = lightcurves.catalog_schema(settings.keep_float64)

    touched = {p for p in old_pixels if [f.name for f in files[p]] != [rebuild.COMPACTED_FILE]}
    revised = revised_since_last_compaction(base) & set(old_pixels)
    touched |= revised
    # every pixel holding a row of an object that has a row in a touched pixel (closure: such rows move)
    keys: dict[HealpixPixel, list[pa.Table]] = {}
    frontier = set(touched)
    while frontier:
        for pixel in partitioning.sorted_pixels(list(frontier)):
            keys[pixel] = [compaction.read_source(compaction.Source(f, pixel), schema, compaction.KEY_COLUMNS)
                           for f in files[pixel]]
        ids = np.concatenate([t[lightcurves.OBJECT_ID].to_numpy() for p in frontier for t in keys[p]] or [[]])
        frontier = _index_owner_pixels(base / names.index, names.index_column, ids.astype(np.int64),
                                       old_pixels) - touched
        touched |= frontier
    touched_list = partitioning.sorted_pixels(list(touched))
    key_rows = sum(t.num_rows for tables in keys.values() for t in tables)

    # the objects' histogram: stored counts of untouched pixels + latest positions of the touched objects
    histogram = catalog.read_histogram(cat, order)
    untouched = [p for p in old_pixels if p not in touched]
    untouched_rows = {p: pq.read_metadata(files[p][0]).num_rows for p in untouched}
    mismatched = [p for p in untouched if int(histogram[_cells(p, order)].sum()) != untouched_rows[p]]
    for pixel in touched_list:
        histogram[_cells(pixel, order)] = 0
    all_keys = pa.concat_tables([t for p in touched_list for t in keys[p]]) if keys else \
        schema.empty_table().select(compaction.KEY_COLUMNS)
    ids = all_keys[lightcurves.OBJECT_ID].to_numpy()
    hp29 = all_keys[SPATIAL_INDEX_COLUMN].to_numpy()
    version = pc.fill_null(all_keys[lightcurves.VERSION_COLUMN], -np.inf).to_numpy()
    latest = postprocess.latest_per_object(ids, version, hp29)
    object_ids, object_hp29 = ids[latest], hp29[latest]
    histogram += partitioning.histogram(object_hp29, order)
    objects = int(sum(untouched_rows.values())) + len(latest)
    pixels = partitioning.pixels_for_histogram(histogram, [], order=order, threshold=threshold)

    # groups: carried (one untouched pixel the alignment keeps) or rewritten
    new_group, old_group = compaction.pixel_groups(pixels, old_pixels)
    groups = int(max([*new_group.tolist(), *old_group.tolist()], default=-1)) + 1
    olds: list[list[HealpixPixel]] = [[] for _ in range(groups)]
    news: list[list[HealpixPixel]] = [[] for _ in range(groups)]
    for pixel, group in zip(old_pixels, old_group.tolist(), strict=True):
        olds[group].append(pixel)
    for pixel, group in zip(pixels, new_group.tolist(), strict=True):
        news[group].append(pixel)
    carried_group = [len(o) == 1 and news[g] == o and o[0] not in touched for g, o in enumerate(olds)]
    carried = [news[g][0] for g in range(groups) if carried_group[g]]
    # rewritten groups that exchange rows (an object's rows in one, its latest position in another) are one shard
    components = _Components(groups)
    if len(ids):
        group_of_old = dict(zip(old_pixels, old_group.tolist(), strict=True))
        row_group = np.concatenate([np.full(t.num_rows, group_of_old[p]) for p in touched_list for t in keys[p]])
        object_group = new_group[partitioning.locate(object_hp29, pixels)]
        destination = object_group[np.searchsorted(object_ids, ids)]
        for a, b in np.unique(np.stack([row_group, destination], axis=1), axis=0):
            components.union(int(a), int(b))
    group_rows = np.zeros(groups, dtype=np.int64)
    for pixel, group in zip(old_pixels, old_group.tolist(), strict=True):
        group_rows[group] += untouched_rows[pixel] if pixel in untouched_rows else sum(
            t.num_rows for t in keys[pixel])
    by_component: dict[int, list[int]] = defaultdict(list)
    for g in range(groups):
        if not carried_group[g]:
            by_component[components.find(g)].append(g)
    rows_total = int(group_rows.sum())
    rows_rewritten = int(sum(group_rows[g] for gs in by_component.values() for g in gs))
    shard_plans = [ShardPlan() for _ in range(min(shards, len(by_component)))]
    for members in sorted(by_component.values(), key=lambda gs: -int(group_rows[gs].sum())):
        shard = min(shard_plans, key=lambda s: s.rows)  # largest component first, into the least loaded shard
        for g in members:
            shard.sources += [(*_key(p), str(f)) for p in olds[g] for f in files[p]]
            shard.pixels += [_key(p) for p in news[g]]
            shard.rows += int(group_rows[g])

    morder = margins.margin_order(names.margin_arcsec, pixels) if pixels else 0
    rewritten_old = [p for g, gs in enumerate(olds) if not carried_group[g] for p in gs]
    rewritten_new = [p for g, gs in enumerate(news) if not carried_group[g] for p in gs]
    margin_linked = [p for p in carried if not _margin_touches(p, morder, [rewritten_old, rewritten_new])]

    mode, reason = INCREMENTAL, f"{len(touched)} of {len(old_pixels)} pixels touched"
    if settings.weekly_mode == FULL:
        mode, reason = FULL, "weekly.mode is full"
    elif mismatched:
        mode, reason = FULL, (f"the stored histogram does not count the rows of {len(mismatched)} untouched pixels "
                              f"(e.g. {mismatched[0]}); a full weekly writes it again")
    elif rows_total and rows_rewritten > full_above * rows_total:
        mode, reason = FULL, (f"{rows_rewritten} of {rows_total} rows would be rewritten "
                              f"(> weekly.full_above = {full_above})")
    stats = {
        "pixels_in": len(old_pixels),
        "pixels_touched": len(touched),
        "pixels_revised": len(revised),
        "rows_in": rows_total,
        "key_rows_read": key_rows,
        "rows_rewritten": rows_rewritten,
        "objects_touched": len(latest),
        "groups": groups,
        "groups_carried": int(sum(carried_group)),
        "components": len(by_component),
        "plan_seconds": round(time.time() - started, 3),
    }
    plan = WeeklyPlan(
        base=base.name, mode=mode, reason=reason, order=order, threshold=threshold, objects=objects,
        pixels=[_key(p) for p in pixels], carried=[_key(p) for p in carried],
        margin_linked=[_key(p) for p in margin_linked], shards=shard_plans if mode == INCREMENTAL else [],
        stats=stats,
    )
    plan.write(out_dir, histogram)
    log.info("weekly plan on %s: %s (%s); %d pixels -> %d, %d carried, %d shards, %d of %d rows rewritten",
             base.name, mode, reason, len(old_pixels), len(pixels), len(carried), len(plan.shards), rows_rewritten,
             rows_total)
    return plan


# -- shards ---------------------------------------------------------------------------------------------------
def shard_dir(shards_dir: Path, shard: int) -> Path:
    return Path(shards_dir) / f"{shard:03d}"


def _carried_border_rows(destinations: Sequence[HealpixPixel], shard_old: Sequence[HealpixPixel],
                         pixels: Sequence[HealpixPixel], carried: set[HealpixPixel], morder: int, base_catalog: Path,
                         base_margin: Path, schema: pa.Schema,
                         sink: Callable[[pa.Table, np.ndarray, np.ndarray], None], *,
                         from_margins: bool = True) -> dict[str, int]:
    """Hand ``sink(rows, row, target)`` the rows of carried pixels that lie in the margin of ``destinations``
    (``target``: slot in ``pixels``); returns what was read.

    Taken from the old margin files of the shard's old pixels (``P/compacted.parquet`` holds the border rows of the
    carried files, which have not changed since): a carried row in cell c borders a destination Q when a neighbour
    cell of c lies in Q, and then it lies in the margin of the old pixel holding that neighbour cell. Where such a
    neighbour cell lies outside every old pixel (sky that no pixel covered), the carried pixel is read whole
    (``from_margins=False``: every bordering carried pixel is read whole, as a check of the shortcut).
    """
    slot_of = {p: i for i, p in enumerate(pixels)}
    targets = np.array(sorted(slot_of[p] for p in destinations), dtype=np.int64)
    shift = 2 * (29 - morder)
    old_sorted = partitioning.sorted_pixels(list(set(shard_old)))
    bordering: set[HealpixPixel] = set()
    read_whole: set[HealpixPixel] = set()
    for pixel in destinations:
        cells = margins.border_cells(pixel, morder)
        slots = partitioning.locate(cells << shift, pixels)
        in_carried = np.array([s >= 0 and pixels[s] in carried for s in slots.tolist()], dtype=bool)
        if not in_carried.any():
            continue
        owners = {pixels[s] for s in np.unique(slots[in_carried])}
        bordering |= owners
        if not from_margins:
            read_whole |= owners
            continue
        near = np.asarray(cds.neighbours(cells[in_carried].astype(np.uint64), morder), dtype=np.int64)
        owner_of_row = slots[in_carried]
        for k in range(near.shape[0]):
            inside = near[k][(near[k] >= 0) & ((near[k] >> (2 * (morder - pixel.order))) == pixel.pixel)]
            if not (partitioning.locate(inside << shift, old_sorted) >= 0).all():
                read_whole.add(pixels[owner_of_row[k]])
    stats = {"margin_rows": 0, "neighbour_files": 0, "neighbour_rows": 0}
    carried_sorted = partitioning.sorted_pixels(list(bordering - read_whole))
    if carried_sorted:
        parts = []
        for pixel in old_sorted:
            path = pixel_path(base_margin, pixel, rebuild.COMPACTED_FILE)
            if path.exists():
                rows = compaction.read_source(compaction.Source(path), schema)
                stats["margin_rows"] += rows.num_rows
                mine = partitioning.locate(rows[SPATIAL_INDEX_COLUMN].to_numpy(), carried_sorted) >= 0
                parts.append(rows.filter(pa.array(mine)))
        if parts:
            rows = pa.concat_tables(parts)
            _, first = np.unique(rows[lightcurves.OBJECT_ID].to_numpy(), return_index=True)  # one copy per row
            rows = rows.take(pa.array(np.sort(first)))
            own = np.asarray(
                [slot_of[carried_sorted[s]] for s in partitioning.locate(
                    rows[SPATIAL_INDEX_COLUMN].to_numpy(), carried_sorted).tolist()], dtype=np.int64)
            row, target = margins.margin_targets(rows[SPATIAL_INDEX_COLUMN].to_numpy(), own, pixels, morder)
            keep = np.isin(target, targets)
            sink(rows, row[keep], target[keep])
    for pixel in partitioning.sorted_pixels(list(read_whole)):
        rows = compaction.read_source(
            compaction.Source(pixel_path(base_catalog, pixel, rebuild.COMPACTED_FILE), pixel), schema)
        stats["neighbour_files"] += 1
        stats["neighbour_rows"] += rows.num_rows
        own = np.full(rows.num_rows, slot_of[pixel], dtype=np.int64)
        row, target = margins.margin_targets(rows[SPATIAL_INDEX_COLUMN].to_numpy(), own, pixels, morder)
        keep = np.isin(target, targets)
        sink(rows, row[keep], target[keep])
    return stats


def compact_shard(plan_dir: Path, shard: int, out_dir: Path, settings: Settings, *, threads: int = 2,
                  margins_from_old: bool = True) -> dict:
    """Fold one shard's files onto its planned pixels; write its catalog files, margin rows and index rows."""
    started = time.time()
    plan = WeeklyPlan.read(plan_dir)
    job = plan.shards[shard]
    names = settings.names
    schema = lightcurves.catalog_schema(settings.keep_float64)
    if out_dir.exists():
        shutil.rmtree(out_dir)  # a rerun after a crash starts over
    out_dir.mkdir(parents=True)
    pixels = [_pixel(k) for k in plan.pixels]
    slot_of = {p: i for i, p in enumerate(pixels)}
    destinations = [_pixel(k) for k in job.pixels]
    sources = [compaction.Source(Path(path), HealpixPixel(o, p)) for o, p, path in job.sources]
    folding = compaction.Compaction(sources, out_dir / "scratch" / "moved", schema=schema, order=plan.order,
                                    threshold=plan.threshold, pixels=destinations)
    morder = margins.margin_order(names.margin_arcsec, pixels)
    collector = margins.MarginCollector(pixels, morder, Stash(out_dir / "scratch" / "margin", schema))
    carried = set(_pixel(k) for k in plan.carried)
    base_catalog = Path(settings.collection_dir) / "versions" / plan.base / names.catalog
    rows_read = folding.rows_in
    with catalog.BackgroundWriter(threads) as writer:
        for slot, rows in folding.folded(threads=2 * threads):
            pixel = folding.pixels[slot]
            writer.write(rows, catalog.pixel_file(out_dir / "catalog", pixel, rebuild.COMPACTED_FILE))
            collector.add(slot_of[pixel], rows)
        # rows of carried pixels in the border of this shard's pixels (their margins are written from scratch)
        border = _carried_border_rows(
            destinations, [HealpixPixel(o, p) for o, p, _ in job.sources], pixels, carried, morder, base_catalog,
            Path(settings.collection_dir) / "versions" / plan.base / names.margin, schema, collector.stash.put_rows,
            from_margins=margins_from_old)
        rows_read += border["neighbour_rows"] + border["margin_rows"]
        margin_counts = collector.write(out_dir / "margin", SHARD_MARGIN_FILE, writer)
    index = collection.index_rows(folding.object_ids, folding.object_healpix29, folding.object_slots,
                                  folding.pixels, collection.index_schema(names), names.index_column)
    sorting = pq.SortingColumn.from_ordering(index.schema, [(names.index_column, "ascending")])
    pq.write_table(index, out_dir / SHARD_INDEX_FILE, compression="zstd", sorting_columns=sorting)
    shutil.rmtree(out_dir / "scratch", ignore_errors=True)
    summary = {
        "shard": shard,
        "files_read": len(sources),
        "neighbour_files_read": border["neighbour_files"],
        "old_margin_rows_read": border["margin_rows"],
        "rows_read": rows_read,
        "objects": folding.objects,
        "pixels": len(destinations),
        "rows_moved": folding.moved_rows,
        "margin_rows": int(sum(margin_counts.values())),
        "seconds": round(time.time() - started, 3),
    }
    log.info("shard %d: %s", shard, summary)
    return summary


# -- commit ---------------------------------------------------------------------------------------------------
def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.link(src, dst)


def _filter_index_file(path: Path, out: Path, carried: Sequence[HealpixPixel]) -> tuple[int, str]:
    """Keep the index rows of ``carried`` pixels (streamed by row group); link the file if all are kept."""
    handle = pq.ParquetFile(path)
    keep = [partitioning.locate(handle.read_row_group(i, columns=[SPATIAL_INDEX_COLUMN])[SPATIAL_INDEX_COLUMN]
                                .to_numpy(), carried) >= 0 for i in range(handle.num_row_groups)]
    kept = int(sum(int(k.sum()) for k in keep))
    if kept == 0:
        return 0, "dropped"
    if kept == handle.metadata.num_rows:
        _link(path, out)
        return kept, "linked"
    out.parent.mkdir(parents=True, exist_ok=True)
    sorting = handle.metadata.row_group(0).sorting_columns if handle.num_row_groups else None
    with pq.ParquetWriter(out, handle.schema_arrow, compression="zstd", sorting_columns=sorting) as writer:
        for i, mask in enumerate(keep):
            if mask.any():
                writer.write_table(handle.read_row_group(i).filter(pa.array(mask)))
    return kept, "filtered"


def commit_weekly(plan_dir: Path, shard_dirs: Sequence[Path], scratch: Path, settings: Settings, *,
                  threads: int = 2) -> dict:
    """Assemble and publish the new version from the plan, the shards' outputs and the carried files.

    A plan that fell back to the full weekly runs :func:`ppdb_lc.rebuild.weekly` here."""
    started = time.time()
    plan = WeeklyPlan.read(plan_dir)
    if plan.mode == FULL:
        log.info("full weekly: %s", plan.reason)
        summary = rebuild.weekly(scratch, settings, threads=threads, planned_on=plan.base)
        return summary
    names = settings.names
    target = VersionedCollection(settings.collection_dir)
    base = target.current()
    if base is None or base.name != plan.base:
        raise CollectionStateError(f"the weekly was planned on {plan.base} but {base and base.name} is published "
                                   "now; run the weekly again")
    schema = lightcurves.catalog_schema(settings.keep_float64)
    pixels = [_pixel(k) for k in plan.pixels]
    carried = partitioning.sorted_pixels([_pixel(k) for k in plan.carried])
    carried_set, linked_margin = set(carried), {_pixel(k) for k in plan.margin_linked}
    label = f"weekly-{datetime.now(tz=UTC).strftime('%Y%m%dT%H%M%S')}"
    staging = target.staging(label)

    # catalog: carried files linked, the shards' files linked
    cat = staging / names.catalog
    for pixel in carried:
        _link(pixel_path(base / names.catalog, pixel, rebuild.COMPACTED_FILE),
              pixel_path(cat, pixel, rebuild.COMPACTED_FILE))
    files_written = 0
    for directory in shard_dirs:
        for path in sorted((Path(directory) / "catalog").rglob("*.parquet")):
            _link(path, cat / path.relative_to(Path(directory) / "catalog"))
            files_written += 1
    rebuild.finish_catalog(cat, pixels, WeeklyPlan.histogram(plan_dir), plan.objects, name=names.catalog,
                           order=plan.order, alt_orders=settings.skymap_alt_orders, threshold=plan.threshold)

    # margin: linked where no border cell changed, else the shards' rows + carried rows of the old margin file
    margin_dir = staging / names.margin

    def margin_of(pixel: HealpixPixel) -> str:
        """Write (or link) the margin file of ``pixel``: ``linked``, ``written`` or ``empty``."""
        old = pixel_path(base / names.margin, pixel, rebuild.COMPACTED_FILE)
        new = pixel_path(margin_dir, pixel, rebuild.COMPACTED_FILE)
        if pixel in linked_margin:
            if not old.exists():
                return "empty"
            _link(old, new)
            return "linked"
        parts = [compaction.read_source(compaction.Source(p), schema) for d in shard_dirs
                 if (p := pixel_path(Path(d) / "margin", pixel, SHARD_MARGIN_FILE)).exists()]
        if pixel in carried_set and old.exists():
            rows = compaction.read_source(compaction.Source(old), schema)
            parts.append(rows.filter(pa.array(partitioning.locate(rows[SPATIAL_INDEX_COLUMN].to_numpy(),
                                                                  carried) >= 0)))
        table = pa.concat_tables(parts) if parts else schema.empty_table()
        if not table.num_rows:
            return "empty"
        new.parent.mkdir(parents=True, exist_ok=True)
        catalog.write_leaf(table.sort_by(SPATIAL_INDEX_COLUMN), new)
        return "written"

    with ThreadPoolExecutor(max_workers=max(1, 2 * threads)) as pool:  # one pixel's margin per thread
        outcome = list(pool.map(margin_of, pixels))
    with_rows = [p for p, how in zip(pixels, outcome, strict=True) if how != "empty"]
    margin_linked, margin_written = outcome.count("linked"), outcome.count("written")
    margin_total = collection.finish_margin(margin_dir, with_rows, schema, names)

    # index: old files filtered to the carried pixels' rows, plus one file per shard
    index_files = collection.index_file(staging / names.index, "x").parent
    index_counts: dict[str, int] = defaultdict(int)
    for path in sorted(collection.index_file(base / names.index, "x").parent.glob("*.parquet")):
        _, how = _filter_index_file(path, index_files / path.name, carried)
        index_counts[how] += 1
    for k, directory in enumerate(shard_dirs):
        _link(Path(directory) / SHARD_INDEX_FILE, index_files / f"{label}-{k:03d}.parquet")
        index_counts["written"] += 1
    index_total = collection.update_index_metadata(staging / names.index, names)
    if index_total != plan.objects:
        raise RuntimeError(f"index holds {index_total} rows, expected {plan.objects} objects")
    collection.write_collection_properties(staging, names, settings.collection_dir.name)
    shutil.copytree(base / LEDGER_PATH.parent, staging / LEDGER_PATH.parent)
    faults.point("weekly:written")
    summary = {
        "batch": label,
        "base_version": base.name,
        "mode": INCREMENTAL,
        "pixels": [list(k) for k in plan.pixels],
        "objects": plan.objects,
        "rows_folded": plan.stats["rows_in"],  # every row of the base catalog ends in one of the objects
        "rows_moved": sum(json.loads(m.read_text()).get("rows_moved", 0) for d in shard_dirs
                          if (m := Path(str(d) + ".json")).exists()),
        "files_rewritten": files_written,
        "files_linked": len(carried),
        "margin_files_written": margin_written,
        "margin_files_linked": margin_linked,
        "margin_rows": margin_total,
        "index_files": dict(index_counts),
        "shards": len(shard_dirs),
        **plan.stats,
        "commit_seconds": round(time.time() - started, 3),
    }
    return rebuild.publish_build(target, staging, label, summary, settings, base=base)


def run_in_process(settings: Settings, work_dir: Path, *, threads: int = 2, shards: int | None = None,
                   full_above: float | None = None, margins_from_old: bool = True) -> dict:
    """Plan, every shard and the commit one after the other in this process (tests, benchmarks)."""
    plan_dir = work_dir / "plan"
    plan = plan_weekly(settings, plan_dir, shards=shards, full_above=full_above)
    dirs = [shard_dir(work_dir / "shards", k) for k in range(len(plan.shards))]
    shards = [compact_shard(plan_dir, k, directory, settings, threads=threads, margins_from_old=margins_from_old)
              for k, directory in enumerate(dirs)]
    summary = commit_weekly(plan_dir, dirs, work_dir / "scratch", settings, threads=threads)
    return {**summary, "shard_summaries": shards}
