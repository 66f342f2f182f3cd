"""Compaction: fold many files of object rows into one row per object, repartitioned, streamed pixel by pixel.

Used by bootstrap (sources: the nested rows of every night, anywhere on the sky) and by weekly compaction
(sources: every file of the current catalog, each lying in its pixel). Memory stays bounded by a pixel:

1. **plan**: read ``diaObjectId``, ``validityStartMjdTai`` and ``_healpix_29`` of every source; each object's
   latest row gives its destination; hats' ``generate_alignment`` partitions the latest positions (threshold =
   objects per pixel).
2. **fold**: old and new pixels nest (HEALPix), so they form *groups*: a maximal pixel of either partitioning with
   everything inside it. Groups are processed in sky order: read the group's files, send the rows of objects
   whose destination lies in another group (they moved across a boundary) to a :class:`~ppdb_lc.stash.Stash`,
   fold the rest with the rows other groups sent here, and hand out each destination pixel's rows. A group that
   still waits for rows from a later group is stashed and folded as soon as that group was read. Sources without
   a pixel (bootstrap) are routed to their groups first.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from hats.pixel_math import HealpixPixel
from hats.pixel_math.spatial_index import SPATIAL_INDEX_COLUMN

from ppdb_lc import lightcurves, partitioning, postprocess
from ppdb_lc.stash import DEFAULT_MEMORY_LIMIT, Stash

log = logging.getLogger(__name__)
KEY_COLUMNS = [lightcurves.OBJECT_ID, lightcurves.VERSION_COLUMN, SPATIAL_INDEX_COLUMN]


@dataclass(frozen=True)
class Source:
    """A file of object rows; ``pixel``: the catalog pixel all its rows lie in (``None``: anywhere)."""

    path: Path
    pixel: HealpixPixel | None = None


def read_source(source: Source, schema: pa.Schema, columns: list[str] | None = None) -> pa.Table:
    if source.path.suffix == ".arrow":
        with pa.memory_map(str(source.path)) as handle:
            table = pa.ipc.open_file(handle).read_all()
        return table.select(columns) if columns else table
    # one thread per file: callers read several files at once, which decodes faster than pyarrow's column threads
    return pq.read_table(source.path, schema=schema, columns=columns, use_threads=False)


def pixel_groups(destination: Sequence[HealpixPixel], sources: Sequence[HealpixPixel]) -> tuple[np.ndarray, np.ndarray]:
    """Group number (in sky order) of each destination and each source pixel (both lists spatially sorted).

    Two HEALPix pixels are either nested or disjoint, so the maximal pixels of the union are the groups.
    """
    ranges = np.concatenate([partitioning.depth29_ranges(destination), partitioning.depth29_ranges(sources)])
    group = np.empty(len(ranges), dtype=np.int64)
    current, end = -1, -1
    for i in np.lexsort((-ranges[:, 1], ranges[:, 0])):  # by start, the larger pixel first
        if ranges[i, 0] >= end:
            current, end = current + 1, ranges[i, 1]
        group[i] = current
    return group[: len(destination)], group[len(destination) :]


class Compaction:
    """The plan (pass 1, at construction) and the streaming fold (:meth:`folded`) of a set of sources."""

    def __init__(self, sources: Sequence[Source], scratch: Path, *, schema: pa.Schema, order: int, threshold: int,
                 memory_limit: int = DEFAULT_MEMORY_LIMIT, pixels: Sequence[HealpixPixel] | None = None):
        """``pixels``: the destination partitioning, when it was decided elsewhere (a shard of the incremental
        weekly, :mod:`ppdb_lc.weekly`); by default the sources' own objects are aligned."""
        self.sources = list(sources)
        self.memory_limit = memory_limit
        self.schema = schema
        self.scratch = scratch
        with ThreadPoolExecutor(max_workers=2) as pool:
            keys = list(pool.map(lambda source: read_source(source, schema, KEY_COLUMNS), self.sources))
        self.rows_in = sum(k.num_rows for k in keys)
        all_keys = pa.concat_tables(keys) if keys else schema.empty_table().select(KEY_COLUMNS)
        ids = all_keys[lightcurves.OBJECT_ID].to_numpy()
        hp29 = all_keys[SPATIAL_INDEX_COLUMN].to_numpy()
        version = pc.fill_null(all_keys[lightcurves.VERSION_COLUMN], -np.inf).to_numpy()
        latest = postprocess.latest_per_object(ids, version, hp29)
        # Each object's latest row (ids ascending) decides its pixel: the folded row is that same row.
        self.object_ids, self.object_healpix29 = ids[latest], hp29[latest]
        self.objects = len(latest)
        self.histogram: np.ndarray | None = None  # the objects' histogram at ``order``: only when aligned here
        if pixels is None:
            self.histogram = partitioning.histogram(self.object_healpix29, order)
            self.pixels = partitioning.new_pixels(self.object_healpix29, [], order=order, threshold=threshold)
        else:
            self.pixels = partitioning.sorted_pixels(pixels)
        self.object_slots = partitioning.locate(self.object_healpix29, self.pixels)
        if (self.object_slots < 0).any():
            raise RuntimeError(f"{int((self.object_slots < 0).sum())} objects lie outside the destination pixels")
        # Groups of old (source) and new (destination) pixels; which groups every source sends rows to.
        source_pixels = partitioning.sorted_pixels({s.pixel for s in self.sources if s.pixel is not None})
        self._pixel_group, source_group = pixel_groups(self.pixels, source_pixels)
        group_of_source_pixel = dict(zip(source_pixels, source_group.tolist(), strict=True))
        self._source_group = [group_of_source_pixel[s.pixel] if s.pixel is not None else -1 for s in self.sources]
        self.groups = int(max([*self._pixel_group.tolist(), *self._source_group], default=-1)) + 1
        self._members: list[list[int]] = [[] for _ in range(self.groups)]
        for k, group in enumerate(self._source_group):
            if group >= 0:
                self._members[group].append(k)
        # A group can be folded once the last group that sends it rows has been read (-1: none, or only
        # unpartitioned sources, which are routed first).
        self._last_sender = np.full(self.groups, -1, dtype=np.int64)
        self.moved_rows = 0
        self.spilled_bytes = 0  # set by folded()
        for group, k in zip(self._source_group, keys, strict=True):
            targets = self._group_of_rows(k[lightcurves.OBJECT_ID].to_numpy())
            if group >= 0:
                receivers = np.unique(targets[targets != group])
                self._last_sender[receivers] = np.maximum(self._last_sender[receivers], group)
                self.moved_rows += int((targets != group).sum())
        log.info("plan: %d sources, %d rows, %d objects -> %d pixels in %d groups; %d rows change group",
                 len(self.sources), self.rows_in, self.objects, len(self.pixels), self.groups, self.moved_rows)

    def _group_of_rows(self, ids: np.ndarray) -> np.ndarray:
        return self._pixel_group[self.object_slots[np.searchsorted(self.object_ids, ids)]]

    def _split(self, table: pa.Table, group: int, stash: Stash) -> np.ndarray:
        """Stash the rows bound for other groups; return the mask of the rows of ``group``."""
        targets = self._group_of_rows(table[lightcurves.OBJECT_ID].to_numpy())
        mine = targets == group
        others = np.flatnonzero(~mine)
        stash.put_rows(table, others, targets[others])
        return mine

    def _fold_group(self, group: int, rows: pa.Table, keep: np.ndarray | None = None
                    ) -> Iterator[tuple[int, pa.Table]]:
        folded = lightcurves.fold(rows, self.schema, keep)
        slots = partitioning.locate(folded[SPATIAL_INDEX_COLUMN].to_numpy(), self.pixels)
        mine = np.flatnonzero(self._pixel_group == group)
        if not np.isin(slots, mine).all():
            raise RuntimeError(f"compaction group {group} folded rows outside its pixels")
        for slot in mine:  # rows are sorted by position and pixels are in sky order: each slot is one slice
            lo, hi = np.searchsorted(slots, [slot, slot + 1])
            yield int(slot), folded.slice(int(lo), int(hi - lo))

    def folded(self, threads: int = 2) -> Iterator[tuple[int, pa.Table]]:
        """``(slot, rows)`` of every destination pixel (``self.pixels[slot]``): its objects, one row each.

        Groups go in sky order; the next group's files are read by ``threads`` background threads while the
        current one is folded. A group still waiting for rows of a later group is held in the stash and folded
        right after that group was read.
        """
        stash = Stash(self.scratch, self.schema, self.memory_limit)
        self.spilled_bytes = 0
        reader = ThreadPoolExecutor(max_workers=max(1, threads))

        def read_group(group: int) -> list[Future]:
            return [reader.submit(read_source, self.sources[k], self.schema) for k in self._members[group]]

        try:
            for k, source in enumerate(self.sources):
                if self._source_group[k] < 0:
                    self._split(read_source(source, self.schema), -1, stash)
            waiting: list[int] = []
            upcoming = read_group(0) if self.groups else []
            for group in range(self.groups):
                tables = [future.result() for future in upcoming]
                upcoming = read_group(group + 1) if group + 1 < self.groups else []
                arrived, arrived_keep = stash.take_masked(group)
                rows = pa.concat_tables([arrived, *tables])
                keep = np.concatenate([arrived_keep, *(self._split(table, group, stash) for table in tables)])
                if self._last_sender[group] > group:
                    stash.put(group, rows, keep)
                    waiting.append(group)
                else:
                    yield from self._fold_group(group, rows, keep)
                for ready in [g for g in waiting if self._last_sender[g] <= group]:
                    waiting.remove(ready)
                    yield from self._fold_group(ready, *stash.take_masked(ready))
            self.spilled_bytes = stash.spilled_bytes
            if stash.spilled_bytes:
                log.info("compaction spilled %.1f MB to %s", stash.spilled_bytes / 1e6, self.scratch)
        finally:
            reader.shutdown(wait=True, cancel_futures=True)
            stash.close()
