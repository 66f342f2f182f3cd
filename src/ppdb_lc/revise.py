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
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from hats.pixel_math import HealpixPixel
from hats.pixel_math.spatial_index import SPATIAL_INDEX_COLUMN, compute_spatial_index
from hats.pixel_tree.pixel_tree import PixelTree

from ppdb_lc import apdb, catalog, lightcurves, margins, partitioning, updates
from ppdb_lc.updates import Effects

log = logging.getLogger(__name__)
CHUNK = apdb.REPLICA_CHUNK_COLUMN
_KEYS = ["diaObjectId", CHUNK, "diaSource.diaSourceId", "diaSource." + CHUNK, "diaForcedSource.visit",
         "diaForcedSource.detector", "diaForcedSource." + CHUNK]


@dataclass(frozen=True)
class Lookups:
    """What to look for in the collection, each with an approximate position (``ra``, ``dec`` arrays)."""

    effects: Effects
    record_ra: np.ndarray
    record_dec: np.ndarray
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
    #: record targets found in the collection (objects: smallest version chunk seen)
    found_sources: set[int] = field(default_factory=set)
    found_forced: set[tuple[int, int, int]] = field(default_factory=set)
    found_objects: dict[int, int] = field(default_factory=dict)
    #: points taken out of their rows, as flat DiaSource rows with their new diaObjectId (null: SSObject)
    moved_sources: list[pa.Table] = field(default_factory=list)
    files_rewritten: list[str] = field(default_factory=list)
    margin_files_rewritten: list[str] = field(default_factory=list)
    rows_dropped: int = 0
    dropped_healpix29: list[np.ndarray] = field(default_factory=list)
    margin_rows_delta: int = 0
    files_scanned: int = 0


def candidate_pixels(ra: np.ndarray, dec: np.ndarray, pixels: Sequence[HealpixPixel], order: int
                     ) -> set[HealpixPixel]:
    """Pixels that may hold a row within the margin of each position: its own and those whose margin has it."""
    if len(ra) == 0 or not pixels:
        return set()
    hp29 = compute_spatial_index(np.asarray(ra, dtype=np.float64), np.asarray(dec, dtype=np.float64))
    own = partitioning.locate(hp29, pixels)
    _, neighbours = margins.margin_targets(hp29, own, pixels, order)
    slots = np.unique(np.concatenate([own[own >= 0], neighbours]))
    return {pixels[int(s)] for s in slots}


def _read_keys(path: Path) -> dict[str, np.ndarray]:
    """Key columns of one catalog file: object rows, and the (row, value) pairs of the nested keys."""
    table = pq.read_table(path, columns=_KEYS)
    out = {"diaObjectId": table.column(0).to_numpy(),
           "chunk": pc.fill_null(table.column(1), -1).to_numpy()}
    for i, name in ((2, "source_id"), (3, "source_chunk"), (4, "forced_visit"), (5, "forced_detector"),
                    (6, "forced_chunk")):
        lists = table.column(i).combine_chunks()
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
    """What a rewritten ``P/<name>`` changes in its neighbours' ``Q/<name>``: P's rows out of every Q whose
    border its old rows reached, its new border rows in (a margin's share of the rows, not the file)."""

    ranges: list[np.ndarray] = field(default_factory=list)
    rows: list[pa.Table] = field(default_factory=list)


def revise(base_catalog: Path, pixels: Sequence[HealpixPixel], lookups: Lookups, *, margin_dir: Path,
           margin_order: int, out_catalog: Path, out_margin: Path, schema: pa.Schema, margin_schema: pa.Schema
           ) -> Revision:
    """Find ``lookups`` in the committed files of ``base_catalog`` and write revised copies of the files that hold
    targets (and of their margin files) below ``out_catalog`` / ``out_margin``, at the same relative paths."""
    result = Revision()
    eff = lookups.effects
    ra = np.concatenate([lookups.record_ra, *(f["ra"].to_numpy(np.float64) for f in (lookups.sources, lookups.forced)
                                              if not f.empty)])
    dec = np.concatenate([lookups.record_dec, *(f["dec"].to_numpy(np.float64) for f in (lookups.sources,
                                                                                        lookups.forced) if not f.empty)])
    wanted_pixels = partitioning.sorted_pixels(candidate_pixels(ra, dec, pixels, margin_order))
    if not wanted_pixels:
        return result
    want_sources = pd.DataFrame({"id": np.concatenate([eff.source_ids(), lookups.sources.get(
        "diaSourceId", pd.Series(dtype=np.int64)).to_numpy(np.int64)])})
    want_forced = pd.concat([eff.forced[["diaObjectId", "visit", "detector"]],
                             lookups.forced[["diaObjectId", "visit", "detector"]] if not lookups.forced.empty else None])
    want_objects = pd.DataFrame({"diaObjectId": eff.object_ids()})
    night_source_chunk = dict(zip(lookups.sources.get("diaSourceId", []), lookups.sources.get(CHUNK, []), strict=True))
    night_forced_chunk = {} if lookups.forced.empty else {
        (int(o), int(v), int(d)): int(c) for o, v, d, c in lookups.forced[["diaObjectId", "visit", "detector", CHUNK]]
        .itertuples(index=False)}
    reemitted_sources = set(night_source_chunk)
    reemitted_forced = set(night_forced_chunk)
    effect_sources = set(eff.source_ids().tolist())

    effect_forced = set(map(tuple, eff.forced[["diaObjectId", "visit", "detector"]].to_numpy(np.int64).tolist()))
    #: files holding a target -> their pixel and the committed source copies to remove (replaced by the night's)
    plans: dict[Path, tuple[HealpixPixel, set[int]]] = {}
    for pixel, path in catalog.pixel_files(base_catalog, wanted_pixels):
        result.files_scanned += 1
        keys = _read_keys(path)
        touches, remove = False, set()
        for pos in _pairs_in([keys["source_id"]], want_sources, ["id"]):
            sid = int(keys["source_id"][pos])
            if sid in reemitted_sources and int(keys["source_chunk"][pos]) > int(night_source_chunk[sid]):
                result.replaced_sources.add(sid)  # the night brings an earlier chunk's copy: it replaces this one
                remove.add(sid)
                touches = True
                continue
            if sid in reemitted_sources:
                result.kept_sources.add(sid)
            if sid in effect_sources:
                result.found_sources.add(sid)
                touches = True
        owners = keys["diaObjectId"][keys["forced_row"]]
        for pos in _pairs_in([owners, keys["forced_visit"], keys["forced_detector"]], want_forced,
                             ["diaObjectId", "visit", "detector"]):
            key = (int(owners[pos]), int(keys["forced_visit"][pos]), int(keys["forced_detector"][pos]))
            if key in reemitted_forced and int(keys["forced_chunk"][pos]) > night_forced_chunk[key]:
                result.replaced_forced.add(key)
                touches = True
                continue
            if key in reemitted_forced:
                result.kept_forced.add(key)
            if key in effect_forced:
                result.found_forced.add(key)
                touches = True
        for pos in _pairs_in([keys["diaObjectId"]], want_objects, ["diaObjectId"]):
            touches = True
            chunk = int(keys["chunk"][pos])
            if chunk >= 0:
                oid = int(keys["diaObjectId"][pos])
                result.found_objects[oid] = min(chunk, result.found_objects.get(oid, chunk))
        if touches:
            plans[path] = (pixel, remove)
    log.info("revise: %d candidate pixels, %d files scanned, %d files hold targets", len(wanted_pixels),
             result.files_scanned, len(plans))

    # one file at a time (memory: one file plus the margin rows of the rewritten files)
    changes: dict[str, dict[int, _MarginChange]] = defaultdict(lambda: defaultdict(_MarginChange))
    for path, (pixel, remove) in plans.items():
        old = pq.read_table(path, schema=schema)
        new, moved, dropped = rewrite_rows(old, eff, remove, result.replaced_forced, schema)
        if moved.num_rows:
            result.moved_sources.append(moved)
        result.rows_dropped += int(dropped.sum())
        result.dropped_healpix29.append(old[SPATIAL_INDEX_COLUMN].to_numpy()[dropped])
        relative = path.relative_to(base_catalog)
        target = out_catalog / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        catalog.write_leaf(new, target)
        result.files_rewritten.append(str(relative))
        slot = pixels.index(pixel)
        hp_old = old[SPATIAL_INDEX_COLUMN].to_numpy()
        _, reached = margins.margin_targets(hp_old, np.full(len(hp_old), slot), pixels, margin_order)
        for q in np.unique(reached):
            changes[path.name][int(q)].ranges.append(_ranges(pixel))
        hp_new = new[SPATIAL_INDEX_COLUMN].to_numpy()
        rows, reached = margins.margin_targets(hp_new, np.full(len(hp_new), slot), pixels, margin_order)
        for q in np.unique(reached):
            changes[path.name][int(q)].rows.append(new.take(pa.array(rows[reached == q])))
    _revise_margins(changes, pixels, margin_dir, out_margin, margin_schema, result)
    return result


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
    moved = _flat_source_schema(schema).empty_table()
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


def _flat_source_schema(schema: pa.Schema) -> pa.Schema:
    """Flat DiaSource rows as staged (the nested fields plus ``diaObjectId``)."""
    inner = schema.field("diaSource").type
    return pa.schema([pa.field(lightcurves.OBJECT_ID, pa.int64()), *[pa.field(f.name, f.type.value_type)
                                                                     for f in inner]])


def _ranges(pixel: HealpixPixel) -> np.ndarray:
    return np.asarray(PixelTree.from_healpix([pixel]).to_depth29_ranges(), dtype=np.int64)[0]


def _revise_margins(changes: dict[str, dict[int, _MarginChange]], pixels: Sequence[HealpixPixel], margin_dir: Path,
                    out_margin: Path, margin_schema: pa.Schema, result: Revision) -> None:
    """Rewrite ``Q/<name>`` for every neighbour Q of a rewritten ``P/<name>`` (see module doc)."""
    for name, by_pixel in changes.items():
        for q, change in sorted(by_pixel.items()):
            path = catalog.pixel_file(margin_dir, pixels[q], name)
            parts = []
            old_rows = 0
            if path.exists():
                current = pq.read_table(path, schema=margin_schema)
                old_rows = current.num_rows
                hp = current[SPATIAL_INDEX_COLUMN].to_numpy()
                outside = np.ones(len(hp), dtype=bool)
                for lo, hi in change.ranges:
                    outside &= (hp < lo) | (hp >= hi)
                parts.append(current.filter(pa.array(outside)))
            parts += [t.select(margin_schema.names).cast(margin_schema) for t in change.rows]
            table = pa.concat_tables(parts) if parts else margin_schema.empty_table()
            table = table.sort_by(SPATIAL_INDEX_COLUMN)
            relative = path.relative_to(margin_dir)
            target = out_margin / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            catalog.write_leaf(table, target)
            result.margin_files_rewritten.append(str(relative))
            result.margin_rows_delta += table.num_rows - old_rows
