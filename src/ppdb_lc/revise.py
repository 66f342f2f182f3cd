"""Copy-on-write revision of committed pixel files: update records and re-emitted rows whose targets are already
in the collection.

Committed files are immutable and shared by hard links between versions; a night that changes rows in them
writes new copies of *those files only* into its build directory, and the commit puts them into the new version
in place of the links (:mod:`ppdb_lc.nightly`). The cost is the night's targets and the files that hold them,
never the catalog:

1. **locate**: every target has an approximate position (a record's ``ra``/``dec``, a re-emitted row's own). A
   catalog row lies at its object's position, and the points of an object lie within the association radius of it
   (~1 arcsec), far below the margin threshold. So the row holding a target lies in the pixel of that position or
   in a pixel whose margin contains it (:func:`margins.margin_targets`, hats' border rule). Only the key columns of
   those pixels' files are read.
2. **rewrite** the files that hold a target: set fields in place (withdrawals, object fields), take out points
   that leave their object (reassigned to another DiaObject or to an SSObject, or an older copy replaced by an
   earlier chunk's) and hand them back as flat rows, so the night nests them under their new object; drop rows
   left with neither a version nor a point.
3. **margins**: margin file ``Npix=Q/<name>`` holds the border rows (for Q) of the catalog files ``Npix=P/<name>``
   (same name, every other P), so a rewritten ``P/<name>`` rewrites exactly the ``Q/<name>`` of its neighbours: rows
   from P's range out, its new border rows in.
"""

from __future__ import annotations

import logging
import shutil
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from hats.pixel_math import HealpixPixel
from hats.pixel_math.spatial_index import SPATIAL_INDEX_COLUMN, compute_spatial_index

from ppdb_lc import apdb, catalog, lightcurves, margins, partitioning, updates
from ppdb_lc.updates import Effects

log = logging.getLogger(__name__)
CHUNK = apdb.REPLICA_CHUNK_COLUMN
_KEYS = ["diaObjectId", CHUNK, "diaSource.diaSourceId", "diaSource." + CHUNK, "diaForcedSource.visit",
         "diaForcedSource.detector", "diaForcedSource." + CHUNK]


@dataclass(frozen=True)
class Lookups:
    """What to look for in the collection, each with an approximate position (``ra``, ``dec``)."""

    #: a file of update records (:data:`updates.RECORD_SCHEMA`, any order: :func:`updates.reduce` orders them), read
    #: a batch at a time
    records: Path
    #: re-emission candidates of the night: key columns, chunk, ra, dec (DiaSource / DiaForcedSource)
    sources: pd.DataFrame = field(default_factory=pd.DataFrame)
    forced: pd.DataFrame = field(default_factory=pd.DataFrame)


@dataclass
class Revision:
    """Outcome of :func:`revise`."""

    #: committed copies older than the night's (drop the night's copy) and newer ones (the night's replaces them)
    kept_sources: set[int] = field(default_factory=set)
    kept_forced: set[tuple[int, int, int]] = field(default_factory=set)
    replaced_sources: set[int] = field(default_factory=set)
    replaced_forced: set[tuple[int, int, int]] = field(default_factory=set)
    #: record targets found in the collection, as arrays per part searched (8 bytes a target, not a Python object):
    #: source ids, (diaObjectId, visit, detector) rows, objects and the version chunk of each row found
    found_sources: list[np.ndarray] = field(default_factory=list)
    found_forced: list[np.ndarray] = field(default_factory=list)
    found_objects: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    #: points taken out of their rows (written as flat DiaSource rows with their new diaObjectId, null for an
    #: SSObject, to ``revise``'s ``out_moved``): to another DiaObject, to an SSObject
    moved: int = 0
    moved_to_ssobjects: int = 0
    files_rewritten: list[str] = field(default_factory=list)
    margin_files_rewritten: list[str] = field(default_factory=list)
    rows_dropped: int = 0
    dropped_healpix29: list[np.ndarray] = field(default_factory=list)
    margin_rows_delta: int = 0
    files_scanned: int = 0

    def found(self) -> pa.Table:
        empty = np.empty(0, np.int64)
        return updates.found_arrays(np.concatenate([empty, *self.found_sources]),
                                    np.concatenate([empty.reshape(0, 3), *self.found_forced]),
                                    np.concatenate([empty, *(ids for ids, _ in self.found_objects)]),
                                    np.concatenate([empty, *(chunks for _, chunks in self.found_objects)]))


def candidate_slots(ra: np.ndarray, dec: np.ndarray, pixels: Sequence[HealpixPixel], order: int,
                    batch: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """``(position, slot)`` pairs: ``pixels[slot]`` may hold a row within the margin of the position (its own pixel,
    and the pixels whose margin holds it). Computed ``batch`` positions at a time (a position's neighbours take
    ~0.5 KB while they are found)."""
    positions, slots = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for start in range(0, len(ra) if pixels else 0, batch):
        hp29 = compute_spatial_index(np.asarray(ra[start:start + batch], dtype=np.float64),
                                     np.asarray(dec[start:start + batch], dtype=np.float64))
        own = partitioning.locate(hp29, pixels)
        rows, neighbours = margins.margin_targets(hp29, own, pixels, order)
        inside = np.flatnonzero(own >= 0)
        positions += [inside + start, rows + start]
        slots += [own[inside], neighbours]
    return np.concatenate(positions), np.concatenate(slots)


_TABLE_CODES = {"DiaSource": 0, "DiaForcedSource": 1, "DiaObject": 2}


def _target_ids(code: np.ndarray, first: np.ndarray, forced_rest: np.ndarray) -> np.ndarray:
    """A number per distinct target (table code and key) of each position: ``first`` is the key's first part,
    ``forced_rest`` the (visit, detector) of the forced-source positions, in order. Sorting ids, not frames."""
    target = np.empty(len(code), np.int64)
    offset = 0
    for table, number in _TABLE_CODES.items():
        at = np.flatnonzero(code == number)
        if not len(at):
            continue
        if table == "DiaForcedSource":
            keys = np.column_stack([first[at], forced_rest])
            _, inverse = np.unique(keys, axis=0, return_inverse=True)
        else:
            _, inverse = np.unique(first[at], return_inverse=True)
        inverse = inverse.reshape(-1)
        target[at] = inverse + offset
        offset += int(inverse.max()) + 1
    return target


@dataclass(frozen=True)
class _Routing:
    """Which targets each sky region looks for. A target (a record's, or a re-emitted row's key) goes to every
    region holding one of its candidate pixels (from every position it comes with), with all its records: in each
    region its net effect is the whole's, and its row (in one of those pixels) is revised by the region holding
    that pixel. A region is a run of consecutive pixels with at most ``limit`` (target, pixel) pairs (a single
    pixel may hold more), so a region's records and effects are bounded, not the night's. The records are read from
    their file a batch at a time, and split into one file per region (:meth:`split`)."""

    target: np.ndarray  # per position (records, then re-emitted sources, then forced sources): its target
    pairs: np.ndarray  # unique (target, slot) rows, sorted by slot
    n_records: int
    n_sources: int

    @staticmethod
    def of(lookups: Lookups, pixels: Sequence[HealpixPixel], order: int, batch: int) -> _Routing:
        codes, first, forced_rest, ra, dec = [], [], [], [], []  # per position: table code, first key part
        for records in updates.record_batches(lookups.records, batch):
            targets = updates.record_targets(records)
            code = targets["table"].map(_TABLE_CODES).to_numpy(np.int8)
            codes.append(code)
            first.append(targets["k0"].to_numpy(np.int64))
            forced_rest.append(targets[["k1", "k2"]].to_numpy(np.int64)[code == _TABLE_CODES["DiaForcedSource"]])
            ra.append(records["ra"].to_numpy(zero_copy_only=False))
            dec.append(records["dec"].to_numpy(zero_copy_only=False))
        n_records = sum(len(c) for c in codes)
        for table, frame, key in (("DiaSource", lookups.sources, ["diaSourceId"]),
                                  ("DiaForcedSource", lookups.forced, ["diaObjectId", "visit", "detector"])):
            if frame.empty:
                continue
            codes.append(np.full(len(frame), _TABLE_CODES[table], np.int8))
            first.append(frame[key[0]].to_numpy(np.int64))
            if len(key) == 3:
                forced_rest.append(frame[key[1:]].to_numpy(np.int64))
            ra.append(frame["ra"].to_numpy(np.float64))
            dec.append(frame["dec"].to_numpy(np.float64))
        target = _target_ids(np.concatenate([np.empty(0, np.int8), *codes]),
                             np.concatenate([np.empty(0, np.int64), *first]),
                             np.concatenate([np.empty((0, 2), np.int64), *forced_rest]))
        del codes, first, forced_rest
        position, slot = candidate_slots(np.concatenate([np.empty(0), *ra]), np.concatenate([np.empty(0), *dec]),
                                         pixels, order)
        targets_n = int(target.max()) + 1 if len(target) else 1
        code = np.unique(slot * targets_n + target[position])  # one int64 per pair: by slot, then target
        pairs = np.stack([code % targets_n, code // targets_n], axis=1)
        return _Routing(target, pairs, n_records, len(lookups.sources))

    def regions(self, limit: int) -> list[tuple[int, int]]:
        """``[low, high)`` slot ranges, in order."""
        if not len(self.pairs):
            return []
        slots, counts = np.unique(self.pairs[:, 1], return_counts=True)
        out, start, total = [], int(slots[0]), 0
        for slot, count in zip(slots.tolist(), counts.tolist(), strict=True):
            if total and total + count > limit:
                out.append((start, slot))
                start, total = slot, 0
            total += count
        out.append((start, int(slots[-1]) + 1))
        return out

    def split(self, records: Path, regions: list[tuple[int, int]], batch: int, scratch: Path) -> list[Path]:
        """Write the records of each region's targets to a file of its own (Arrow IPC), reading ``records`` a batch
        at a time: a record goes to every region of its target."""
        starts = np.array([low for low, _ in regions], dtype=np.int64)
        region_of = np.searchsorted(starts, self.pairs[:, 1], side="right") - 1
        by_target = np.unique(np.stack([self.pairs[:, 0], region_of], axis=1), axis=0)  # (target, region), sorted
        scratch.mkdir(parents=True, exist_ok=True)
        files = [scratch / f"region-{r:05d}.arrow" for r in range(len(regions))]
        writers = [pa.ipc.new_file(str(f), updates.RECORD_SCHEMA) for f in files]
        try:
            offset = 0
            for table in updates.record_batches(records, batch):
                target = self.target[offset:offset + table.num_rows]
                offset += table.num_rows
                low = np.searchsorted(by_target[:, 0], target, side="left")
                count = np.searchsorted(by_target[:, 0], target, side="right") - low
                rows = np.repeat(np.arange(len(target)), count)
                at = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count) + np.repeat(low, count)
                region = by_target[at, 1]
                for r in np.unique(region):
                    writers[int(r)].write_table(table.take(pa.array(rows[region == r])))
        finally:
            for writer in writers:
                writer.close()
        return files

    def region(self, lookups: Lookups, low: int, high: int) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
        """The re-emitted rows of the targets of slots ``[low, high)`` (sources, forced sources), and those slots."""
        inside = (self.pairs[:, 1] >= low) & (self.pairs[:, 1] < high)
        r, s = self.n_records, self.n_sources
        mine = np.isin(self.target[r:], self.pairs[inside, 0])
        return (lookups.sources[mine[:s]] if s else lookups.sources,
                lookups.forced[mine[s:]] if not lookups.forced.empty else lookups.forced,
                np.unique(self.pairs[inside, 1]))


def _keys_of(table: pa.Table) -> dict[str, np.ndarray]:
    """Key columns of catalog rows (``_KEYS``, as :func:`catalog.read_parts` returns them: one struct column per
    nested table): object rows, and the (row, value) pairs of the nested keys."""
    def column(path: str) -> pa.Array:
        top, _, inner = path.partition(".")
        array = table.column(top).combine_chunks()
        return array.field(inner) if inner else array

    out = {"diaObjectId": column(_KEYS[0]).to_numpy(),
           "chunk": pc.fill_null(column(_KEYS[1]), -1).to_numpy()}
    for path, name in zip(_KEYS[2:], ("source_id", "source_chunk", "forced_visit", "forced_detector",
                                      "forced_chunk"), strict=True):
        lists = column(path)
        values = pc.list_flatten(lists)
        out[name] = pc.fill_null(values, -1).to_numpy(zero_copy_only=False).astype(np.int64)
        out[name.split("_")[0] + "_row"] = pc.list_parent_indices(lists).to_numpy()
    return out


def _pairs_in(frame_keys: list[np.ndarray], wanted: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """Positions of ``frame_keys`` rows present in ``wanted[columns]``."""
    if wanted.empty or len(frame_keys[0]) == 0:
        return np.empty(0, np.int64)
    left = pd.DataFrame({c: k for c, k in zip(columns, frame_keys, strict=True)})
    left["_pos"] = np.arange(len(left))
    return left.merge(wanted[columns].drop_duplicates(), on=columns)["_pos"].to_numpy(np.int64)


@dataclass
class _MarginChange:
    """What rewritten files ``P/<name>`` change in a neighbour's ``Q/<name>``: per P (its depth-29 range), P's rows
    out, its new border rows in (spilled to scratch files, one per part of P, in order)."""

    pixels: dict[tuple[int, int], list[Path]] = field(default_factory=dict)


_NOT_RE_EMITTED = -1  #: ``night_chunk`` of a wanted point that is a record's target only


@dataclass(frozen=True)
class _Wanted:
    """The targets of :func:`revise` as key tables (no per-target Python objects: there are as many as the night's
    rows observed before the last commit): points with the night's chunk if re-emitted (else ``-1``) and whether a
    record targets them, and the objects of object records."""

    sources: pd.DataFrame  # diaSourceId, night_chunk, effect
    forced: pd.DataFrame  # diaObjectId, visit, detector, night_chunk, effect
    objects: np.ndarray

    @staticmethod
    def of(eff: Effects, night_sources: pd.DataFrame, night_forced: pd.DataFrame) -> _Wanted:

        def table(effect_keys: pd.DataFrame, night: pd.DataFrame, key: list[str]) -> pd.DataFrame:
            parts = [effect_keys[key].astype(np.int64).assign(night_chunk=_NOT_RE_EMITTED, effect=True)]
            if not night.empty:
                parts.append(night[key].astype(np.int64).assign(night_chunk=night[CHUNK].to_numpy(np.int64),
                                                                 effect=False))
            both = pd.concat(parts, ignore_index=True)
            return both.groupby(key, sort=False).agg(night_chunk=("night_chunk", "max"),
                                                     effect=("effect", "any")).reset_index()

        sources = table(pd.DataFrame({"diaSourceId": eff.source_ids()}), night_sources, ["diaSourceId"])
        forced = table(eff.forced, night_forced, ["diaObjectId", "visit", "detector"])
        return _Wanted(sources, forced, np.asarray(eff.object_ids(), dtype=np.int64))

    def find(self, keys: dict[str, np.ndarray], result: Revision) -> tuple[bool, set[int]]:
        """Record in ``result`` the targets among ``keys`` (:func:`_keys_of` of some committed rows); return
        whether any row holds a target, and the committed source copies that the night's earlier copy replaces."""
        touches, remove = False, set()
        point_tables = (
            ("diaSourceId", self.sources, {"diaSourceId": keys["source_id"], "chunk": keys["source_chunk"]}),
            ("forced", self.forced, {"diaObjectId": keys["diaObjectId"][keys["forced_row"]],
                                     "visit": keys["forced_visit"], "detector": keys["forced_detector"],
                                     "chunk": keys["forced_chunk"]}))
        for kind, wanted, columns in point_tables:
            if wanted.empty or not len(columns["chunk"]):
                continue
            hit = pd.DataFrame(columns).merge(wanted, on=[c for c in columns if c != "chunk"])
            if hit.empty:
                continue
            night_chunk = hit["night_chunk"].to_numpy()
            re_emitted = night_chunk != _NOT_RE_EMITTED
            replaced = re_emitted & (hit["chunk"].to_numpy() > night_chunk)  # the night brings an earlier copy
            found = hit["effect"].to_numpy(bool) & ~replaced
            touches |= bool(replaced.any() or found.any())
            if kind == "diaSourceId":
                ids = hit["diaSourceId"].to_numpy(np.int64)
                remove.update(ids[replaced].tolist())
                result.replaced_sources.update(ids[replaced].tolist())
                result.kept_sources.update(ids[re_emitted & ~replaced].tolist())
                result.found_sources.append(ids[found])
            else:
                triples = hit[["diaObjectId", "visit", "detector"]].to_numpy(np.int64)
                result.replaced_forced.update(map(tuple, triples[replaced].tolist()))
                result.kept_forced.update(map(tuple, triples[re_emitted & ~replaced].tolist()))
                result.found_forced.append(triples[found])
        rows = np.flatnonzero(np.isin(keys["diaObjectId"], self.objects)) if len(self.objects) else []
        if len(rows):
            touches = True
            chunks = keys["chunk"][rows]
            versions = chunks >= 0  # rows without a version (orphans) do not count as the object found
            result.found_objects.append((keys["diaObjectId"][rows][versions].astype(np.int64),
                                         chunks[versions].astype(np.int64)))
        return touches, remove


def revise(base_catalog: Path, pixels: Sequence[HealpixPixel], lookups: Lookups, *, margin_dir: Path,
           margin_order: int, out_catalog: Path, out_margin: Path, out_moved: Path, schema: pa.Schema,
           margin_schema: pa.Schema, points_per_part: int = 50_000) -> Revision:
    """Find ``lookups`` in the committed files of ``base_catalog`` and write revised copies of the files that hold
    targets (and of their margin files) below ``out_catalog`` / ``out_margin``, at the same relative paths, and
    the points that leave their rows to ``out_moved`` (written only if there are some).

    The sky is revised a region at a time (:class:`_Routing`, at most ``points_per_part`` targets per region): a
    region's records are reduced to their effect and its files searched and rewritten, so memory is a region's
    targets, not the night's. Files are read and rewritten in parts of about ``points_per_part`` nested points
    (:func:`catalog.read_parts`): every step is row by row, so memory is a part's, not a file's (a compacted file
    holds years of points). The new border rows of rewritten files wait in scratch files next to ``out_margin``
    until their margin files are rewritten, and moved points are written as they are found."""
    result = Revision()
    routing = _Routing.of(lookups, pixels, margin_order, points_per_part)
    regions = routing.regions(points_per_part)
    changes: dict[str, dict[int, _MarginChange]] = defaultdict(lambda: defaultdict(_MarginChange))
    scratch = out_margin.parent / "border_rows"
    region_records = routing.split(lookups.records, regions, points_per_part, out_margin.parent / "regions")
    moved = _MovedPoints(out_moved, result)
    try:
        for (low, high), records in zip(regions, region_records, strict=True):
            sources, forced, slots = routing.region(lookups, low, high)
            with pa.ipc.open_file(str(records)) as reader:
                effects = updates.reduce(reader.read_all())
            records.unlink()
            plans = _files_with_targets(base_catalog, [pixels[int(s)] for s in slots],
                                        _Wanted.of(effects, sources, forced), result, points_per_part)
            for path, (pixel, remove) in plans.items():
                _rewrite_file(path, pixel, remove, effects, base_catalog, pixels, margin_order, out_catalog, schema,
                              points_per_part, changes, scratch, moved, result)
    finally:
        moved.close()
    log.info("revise: %d regions (%d targets in %d candidate pixels), %d files scanned, %d files rewritten",
             len(regions), len(np.unique(routing.pairs[:, 0])), len(np.unique(routing.pairs[:, 1])),
             result.files_scanned, len(result.files_rewritten))
    _revise_margins(changes, pixels, margin_dir, out_margin, margin_schema, result, points_per_part)
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.rmtree(out_margin.parent / "regions", ignore_errors=True)
    return result


def _files_with_targets(base_catalog: Path, candidates: list[HealpixPixel], wanted: _Wanted, result: Revision,
                        points_per_part: int) -> dict[Path, tuple[HealpixPixel, set[int]]]:
    """The files of ``candidates`` holding a target (their key columns read in parts), with their pixel and the
    committed source copies to remove (replaced by the night's)."""
    plans: dict[Path, tuple[HealpixPixel, set[int]]] = {}
    for pixel, path in catalog.pixel_files(base_catalog, partitioning.sorted_pixels(candidates)):
        result.files_scanned += 1
        touches, remove = False, set()
        for part in catalog.read_parts(path, points_per_part, columns=_KEYS):
            found, replaced = wanted.find(_keys_of(part), result)
            touches |= found
            remove |= replaced
        if touches:
            plans[path] = (pixel, remove)
    return plans


class _MovedPoints:
    """Points moved out of committed rows, written to an Arrow IPC scratch file as they are found."""

    def __init__(self, path: Path, result: Revision) -> None:
        self.path, self.result = path, result
        self.writer: pa.ipc.RecordBatchFileWriter | None = None

    def write(self, moved: pa.Table) -> None:
        if not moved.num_rows:
            return
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pa.ipc.new_file(str(self.path), moved.schema)
        self.writer.write_table(moved)
        to_ss = int(moved[lightcurves.OBJECT_ID].null_count)
        self.result.moved_to_ssobjects += to_ss
        self.result.moved += moved.num_rows - to_ss

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _rewrite_file(path: Path, pixel: HealpixPixel, remove: set[int], effects: Effects, base_catalog: Path,
                  pixels: Sequence[HealpixPixel], margin_order: int, out_catalog: Path, schema: pa.Schema,
                  points_per_part: int, changes: dict[str, dict[int, _MarginChange]], scratch: Path,
                  moved: _MovedPoints, result: Revision) -> None:
    """Rewrite one committed file a part at a time; spill its new border rows for the margin files they reach."""
    slot = pixels.index(pixel)
    reached_old: set[int] = set()
    with catalog.PixelFileWriter(out_catalog, path.name, schema) as writer:
        for old in catalog.read_parts(path, points_per_part, schema=schema):
            new, moved_points, dropped = rewrite_rows(old, effects, remove, result.replaced_forced, schema)
            moved.write(moved_points)
            result.rows_dropped += int(dropped.sum())
            hp_old = old[SPATIAL_INDEX_COLUMN].to_numpy()
            result.dropped_healpix29.append(hp_old[dropped])
            writer.append(pixel, new)
            _, reached = margins.margin_targets(hp_old, np.full(len(hp_old), slot), pixels, margin_order)
            reached_old.update(np.unique(reached).tolist())
            hp_new = new[SPATIAL_INDEX_COLUMN].to_numpy()
            rows, reached = margins.margin_targets(hp_new, np.full(len(hp_new), slot), pixels, margin_order)
            for q in np.unique(reached):
                spills = changes[path.name][int(q)].pixels.setdefault(_ranges(pixel), [])
                spill = scratch / f"{path.stem}-{int(q)}-{slot}-{len(spills)}.parquet"
                spill.parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(new.take(pa.array(rows[reached == q])), spill)
                spills.append(spill)
        if writer.pixel is None:  # a file without rows
            writer.append(pixel, schema.empty_table())
    for q in sorted(reached_old):
        changes[path.name][int(q)].pixels.setdefault(_ranges(pixel), [])
    result.files_rewritten.append(str(path.relative_to(base_catalog)))


def rewrite_rows(table: pa.Table, effects: Effects, remove_sources: set[int],
                 remove_forced: set[tuple[int, int, int]], schema: pa.Schema
                 ) -> tuple[pa.Table, pa.Table, np.ndarray]:
    """One file's rows after ``effects``: ``(rows, moved points as flat DiaSource rows, mask of dropped rows)``.

    Points whose effective ``diaObjectId`` changes leave the row (moved); ``remove_*`` points are dropped (an
    earlier chunk's copy replaces them). Rows left with neither a version nor a point are dropped.
    """
    owners = table[lightcurves.OBJECT_ID].to_numpy()
    # object fields
    rows, eff_rows = updates._key_positions([owners], [effects.object_ids()]) if not effects.objects.empty else (
        np.empty(0, np.int64), np.empty(0, np.int64))
    if len(rows):
        table = updates.apply_to_objects(table, rows, effects.objects, eff_rows, updates.version_chunks(table))
    moved = moved_schema(schema).empty_table()
    counts = {}
    for name, (dataset, _) in lightcurves.NESTED.items():
        point_rows, points = lightcurves.flatten(table, name)
        keep = np.ones(points.num_rows, dtype=bool)
        point_owner = owners[point_rows]
        if dataset == "DiaSource":
            ids = points["diaSourceId"].to_numpy()
            if remove_sources:
                keep &= ~np.isin(ids, np.fromiter(remove_sources, np.int64))
            hit, eff = updates.source_hits(ids, effects)
            hit, eff = hit[keep[hit]], eff[keep[hit]]  # a replaced copy is gone, whatever its records say
            points = updates.apply_fields(points, hit, effects.sources, eff, updates.TABLE_FIELDS["DiaSource"])
            new_owner_set = effects.sources["diaObjectId__set"].to_numpy(bool)[eff]
            new_owner = effects.sources["diaObjectId"].to_numpy(dtype=object)[eff]
            leaving = new_owner_set & np.array([updates._py(o) is None or int(o) != int(point_owner[h])
                                                for o, h in zip(new_owner, hit, strict=True)], dtype=bool)
            out_rows = hit[leaving]
            if len(out_rows):
                flat = points.take(pa.array(out_rows))
                flat = flat.append_column(lightcurves.OBJECT_ID, pa.array(
                    [updates._py(o) for o in new_owner[leaving]], type=pa.int64()))
                moved = pa.concat_tables([moved, flat.select(moved.schema.names).cast(moved.schema)])
                keep[out_rows] = False
        else:
            if remove_forced:
                keys = pd.DataFrame({"diaObjectId": point_owner, "visit": points["visit"].to_numpy(),
                                     "detector": points["detector"].to_numpy()})
                gone = pd.DataFrame(list(remove_forced), columns=["diaObjectId", "visit", "detector"])
                drop = _pairs_in([keys[c].to_numpy() for c in gone.columns], gone, list(gone.columns))
                keep[drop] = False
            hit, eff = updates.forced_hits(point_owner, points["visit"].to_numpy(), points["detector"].to_numpy(),
                                           effects)
            hit, eff = hit[keep[hit]], eff[keep[hit]]
            points = updates.apply_fields(points, hit, effects.forced, eff, updates.TABLE_FIELDS["DiaForcedSource"])
        kept = np.flatnonzero(keep)
        counts[name] = np.bincount(point_rows[kept], minlength=table.num_rows)
        column = lightcurves.pack(points.take(pa.array(kept)), point_rows[kept], table.num_rows,
                                  schema.field(name).type)
        table = table.set_column(table.column_names.index(name), schema.field(name), column)
    empty = (sum(counts.values()) == 0) & table[lightcurves.VERSION_COLUMN].is_null().to_numpy(zero_copy_only=False)
    if empty.any():
        table = table.filter(pa.array(~empty))
    return table, moved, empty


def moved_schema(schema: pa.Schema) -> pa.Schema:
    """Points moved out of committed rows: flat DiaSource rows as staged (the nested fields plus ``diaObjectId``)."""
    inner = schema.field("diaSource").type
    return pa.schema([pa.field(lightcurves.OBJECT_ID, pa.int64()), *[pa.field(f.name, f.type.value_type)
                                                                     for f in inner]])


def _ranges(pixel: HealpixPixel) -> tuple[int, int]:
    low, high = partitioning.depth29_ranges([pixel])[0]
    return int(low), int(high)


def _revise_margins(changes: dict[str, dict[int, _MarginChange]], pixels: Sequence[HealpixPixel], margin_dir: Path,
                    out_margin: Path, margin_schema: pa.Schema, result: Revision, points_per_part: int) -> None:
    """Rewrite ``Q/<name>`` for every neighbour Q of a rewritten ``P/<name>`` (see module doc).

    A margin file is sorted by ``_healpix_29`` and each P's rows lie in P's range, so the new file is a merge: the
    current file read a part at a time, without the rewritten Ps' rows, and each P's new border rows (already in
    order) written where P's range starts. A current file out of order (none written by this package) is rewritten
    in memory and sorted instead."""
    for name, by_pixel in changes.items():
        for q, change in sorted(by_pixel.items()):
            path = catalog.pixel_file(margin_dir, pixels[q], name)
            rewritten = sorted(change.pixels.items())
            with catalog.PixelFileWriter(out_margin, name, margin_schema) as out:
                if path.exists() and not _sorted_positions(path):
                    log.warning("%s is not sorted by %s: rewritten in memory", path, SPATIAL_INDEX_COLUMN)
                    old_rows, new_rows = _margin_in_memory(path, rewritten, margin_schema, out, pixels[q])
                else:
                    old_rows, new_rows = _margin_merged(path if path.exists() else None, rewritten, margin_schema,
                                                        out, pixels[q], points_per_part)
                if out.pixel is None:
                    out.append(pixels[q], margin_schema.empty_table())
            result.margin_files_rewritten.append(str(path.relative_to(margin_dir)))
            result.margin_rows_delta += new_rows - old_rows


def _sorted_positions(path: Path) -> bool:
    hp = pq.read_table(path, columns=[SPATIAL_INDEX_COLUMN])[SPATIAL_INDEX_COLUMN].to_numpy()
    return bool(np.all(hp[1:] >= hp[:-1]))


def _border_rows(spills: list[Path], schema: pa.Schema) -> Iterator[pa.Table]:
    for spill in spills:
        yield pq.read_table(spill).select(schema.names).cast(schema)


def _margin_merged(path: Path | None, rewritten: list[tuple[tuple[int, int], list[Path]]], schema: pa.Schema,
                   out: catalog.PixelFileWriter, pixel: HealpixPixel, points_per_part: int) -> tuple[int, int]:
    """Merge (see :func:`_revise_margins`); returns the rows of the current and of the new file."""
    starts = np.array([low for (low, _), _ in rewritten], dtype=np.int64)
    ends = np.array([high for (_, high), _ in rewritten], dtype=np.int64)
    old_rows = new_rows = 0
    pending = 0  # rewritten Ps whose new rows are not written yet (their ranges start after the rows written)

    def write(table: pa.Table) -> None:
        nonlocal new_rows
        if table.num_rows:
            out.append(pixel, table)
            new_rows += table.num_rows

    for part in catalog.read_parts(path, points_per_part, schema=schema) if path is not None else ():
        old_rows += part.num_rows
        hp = part[SPATIAL_INDEX_COLUMN].to_numpy()
        at = np.searchsorted(starts, hp, side="right") - 1
        outside = (at < 0) | (hp >= ends[np.maximum(at, 0)]) if len(starts) else np.ones(len(hp), dtype=bool)
        kept, hp = part.filter(pa.array(outside)), hp[outside]
        while pending < len(rewritten) and len(hp) and starts[pending] <= hp[-1]:
            cut = int(np.searchsorted(hp, starts[pending]))
            write(kept.slice(0, cut))
            kept, hp = kept.slice(cut), hp[cut:]
            for rows in _border_rows(rewritten[pending][1], schema):
                write(rows)
            pending += 1
        write(kept)
    for _, spills in rewritten[pending:]:
        for rows in _border_rows(spills, schema):
            write(rows)
    return old_rows, new_rows


def _margin_in_memory(path: Path, rewritten: list[tuple[tuple[int, int], list[Path]]], schema: pa.Schema,
                      out: catalog.PixelFileWriter, pixel: HealpixPixel) -> tuple[int, int]:
    current = pq.read_table(path, schema=schema)
    hp = current[SPATIAL_INDEX_COLUMN].to_numpy()
    outside = np.ones(len(hp), dtype=bool)
    for (low, high), _ in rewritten:
        outside &= (hp < low) | (hp >= high)
    parts = [current.filter(pa.array(outside)), *(t for _, spills in rewritten for t in _border_rows(spills, schema))]
    table = pa.concat_tables(parts).sort_by(SPATIAL_INDEX_COLUMN)
    out.append(pixel, table)
    return current.num_rows, table.num_rows
