"""Nesting sources into objects by ``diaObjectId`` and folding several rows of one object into one.

Nesting is exact: every DiaSource and DiaForcedSource lands in the row of its own ``diaObjectId``, wherever it lies
on the sky (no spatial margin is involved, so nothing is lost near pixel boundaries). Rows are built with
nested-pandas (``join_nested``) and stored as struct-of-lists, the layout lsdb writes.

Orphans: sources whose object got no new DiaObject version in the batch (typically forced photometry of objects
measured earlier) become an *orphan row*: ``diaObjectId``, ``ra``/``dec`` (the forced-photometry position of its
latest forced source, else the mean source position) and the nested light curves; every other object column is
null, in particular ``validityStartMjdTai``. Weekly compaction (:func:`fold`) merges orphan rows into the
object's latest version and fills their columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import nested_pandas as npd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from hats.pixel_math.spatial_index import SPATIAL_INDEX_COLUMN, compute_spatial_index

from ppdb_lc import postprocess

#: nested column name -> (dataset, id column)
NESTED: dict[str, tuple[str, str]] = {
    "diaSource": ("DiaSource", "diaSourceId"),
    "diaForcedSource": ("DiaForcedSource", "diaForcedSourceId"),
}
TIME_COLUMN = "midpointMjdTai"
OBJECT_ID = "diaObjectId"
VERSION_COLUMN = "validityStartMjdTai"


@cache
def catalog_schema(keep: tuple[str, ...] = postprocess.DEFAULT_KEEP_FLOAT64) -> pa.Schema:
    """Schema of every ``dia_object_lc`` file: ``_healpix_29``, object columns, two nested light curves."""
    fields = [pa.field(SPATIAL_INDEX_COLUMN, pa.int64())]
    fields += list(postprocess.processed_schema("DiaObject", keep))
    for name, (dataset, _) in NESTED.items():
        inner = [
            pa.field(f.name, pa.list_(f.type)) for f in postprocess.processed_schema(dataset, keep) if f.name != OBJECT_ID
        ]
        fields.append(pa.field(name, pa.struct(inner)))
    return pa.schema(fields)


@dataclass(frozen=True)
class NestStats:
    objects: int
    orphan_rows: int
    sources: int
    forced_sources: int
    solar_system_sources: int


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    return table.to_pandas(types_mapper=pd.ArrowDtype)


def _orphan_rows(objects: pa.Table, sources: pa.Table, forced: pa.Table) -> pa.Table:
    """One null-filled row per id that has sources or forced sources but no version in ``objects``."""
    known = objects[OBJECT_ID]
    candidates = []
    # Forced photometry is measured at the object position: prefer the latest forced-source position.
    if forced.num_rows:
        f = forced.select([OBJECT_ID, "ra", "dec", TIME_COLUMN]).filter(pc.invert(pc.is_in(forced[OBJECT_ID], known)))
        if f.num_rows:
            df = _to_pandas(f).sort_values([OBJECT_ID, TIME_COLUMN]).drop_duplicates(OBJECT_ID, keep="last")
            candidates.append(df[[OBJECT_ID, "ra", "dec"]])
    if sources.num_rows:
        s = sources.select([OBJECT_ID, "ra", "dec"]).filter(pc.invert(pc.is_in(sources[OBJECT_ID], known)))
        if s.num_rows:
            candidates.append(_to_pandas(s).groupby(OBJECT_ID, as_index=False)[["ra", "dec"]].mean())
    if not candidates:
        return objects.schema.empty_table()
    stub = pd.concat(candidates).drop_duplicates(OBJECT_ID, keep="first").sort_values(OBJECT_ID)
    arrays = []
    for fld in objects.schema:
        if fld.name in stub.columns:
            arrays.append(pa.array(stub[fld.name].to_numpy(dtype=np.float64 if fld.name != OBJECT_ID else np.int64),
                                   type=fld.type))
        else:
            arrays.append(pa.nulls(len(stub), type=fld.type))
    return pa.Table.from_arrays(arrays, schema=objects.schema)


def to_catalog_table(frame: npd.NestedFrame, schema: pa.Schema) -> pa.Table:
    """NestedFrame of object rows -> arrow table in catalog layout, sorted by ``_healpix_29``."""
    table = frame.reset_index(drop=True).to_pyarrow()
    hp29 = compute_spatial_index(table["ra"].to_numpy(), table["dec"].to_numpy())
    if SPATIAL_INDEX_COLUMN in table.column_names:
        table = table.drop_columns([SPATIAL_INDEX_COLUMN])
    table = table.add_column(0, SPATIAL_INDEX_COLUMN, pa.array(hp29, pa.int64()))
    missing = [name for name in schema.names if name not in table.column_names]
    for name in missing:  # a batch without any (forced) source has no nested column
        table = table.append_column(schema.field(name), pa.nulls(len(table), schema.field(name).type))
    table = table.select(schema.names).cast(schema)
    return table.take(pc.sort_indices(table, sort_keys=[(SPATIAL_INDEX_COLUMN, "ascending"), (OBJECT_ID, "ascending")]))


def _nested_flat(table: pa.Table) -> pd.DataFrame:
    flat = table.filter(pc.is_valid(table[OBJECT_ID]))
    flat = flat.take(pc.sort_indices(flat, sort_keys=[(OBJECT_ID, "ascending"), (TIME_COLUMN, "ascending")]))
    return _to_pandas(flat)


def nest_batch(objects: pa.Table, sources: pa.Table, forced: pa.Table, schema: pa.Schema) -> tuple[pa.Table, NestStats]:
    """Catalog rows of one batch: its latest object versions + orphan rows, each with its light curves.

    ``objects`` must hold one version per id (see :func:`postprocess.latest_versions`); sources with a null
    ``diaObjectId`` (solar-system) are left out and counted.
    """
    solar = int(pc.sum(pc.is_null(sources[OBJECT_ID])).as_py() or 0) if sources.num_rows else 0
    assoc = sources.filter(pc.is_valid(sources[OBJECT_ID])) if sources.num_rows else sources
    orphans = _orphan_rows(objects, assoc, forced)
    rows = pa.concat_tables([objects, orphans])
    frame = npd.NestedFrame(_to_pandas(rows))
    for name, table in (("diaSource", assoc), ("diaForcedSource", forced)):
        if table.num_rows:
            frame = frame.join_nested(_nested_flat(table), name, on=OBJECT_ID)
    stats = NestStats(
        objects=objects.num_rows,
        orphan_rows=orphans.num_rows,
        sources=assoc.num_rows,
        forced_sources=forced.num_rows,
        solar_system_sources=solar,
    )
    return to_catalog_table(frame, schema), stats


def flatten(table: pa.Table, name: str) -> tuple[np.ndarray, pa.Table]:
    """``(row, points)``: every point of the nested column ``name`` and the index of the row that holds it."""
    column = table[name].combine_chunks()
    lists = column.flatten()  # children with the struct's nulls applied: a null row has no points
    rows = pc.list_parent_indices(lists[0]).to_numpy()
    points = pa.table({f.name: pc.list_flatten(child) for f, child in zip(column.type, lists, strict=True)})
    return rows, points


def pack(points: pa.Table, rows: np.ndarray, n_rows: int, struct_type: pa.StructType) -> pa.StructArray:
    """The struct-of-lists column of ``n_rows`` rows from flat ``points`` sorted by their owning ``rows``.

    The layout nested-pandas and lsdb read (one list per field, equal lengths per row); rows without points are
    null, as in the nested files written by :func:`nest_batch`.
    """
    counts = np.bincount(rows, minlength=n_rows)
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    children = [pa.ListArray.from_arrays(offsets, points[f.name].combine_chunks(), type=f.type) for f in struct_type]
    return pa.StructArray.from_arrays(children, fields=list(struct_type), mask=pa.array(counts == 0))


def fold(table: pa.Table, schema: pa.Schema, keep: np.ndarray | None = None) -> pa.Table:
    """Fold all rows of each ``diaObjectId`` into one, output sorted by ``(_healpix_29, diaObjectId)``.

    Object columns come from the latest row (:func:`postprocess.latest_per_object`: greatest
    ``validityStartMjdTai``, orphan rows lose to any real version; ties: greatest ``_healpix_29``, then later row).
    Light curves are the union of all rows' points, deduplicated by source id and sorted by ``midpointMjdTai``.
    ``keep`` (boolean per row) folds only those rows, without copying the table first. Vectorized: one sort per
    nested column, no per-object work.
    """
    if not table.schema.equals(schema):
        table = table.cast(schema)
    selected = np.arange(table.num_rows) if keep is None else np.flatnonzero(keep)
    if len(selected) == 0:
        return schema.empty_table()
    ids = table[OBJECT_ID].to_numpy()
    hp29 = table[SPATIAL_INDEX_COLUMN].to_numpy()
    version = pc.fill_null(table[VERSION_COLUMN], -np.inf).to_numpy()
    latest = selected[postprocess.latest_per_object(ids[selected], version[selected], hp29[selected])]
    object_ids = ids[latest]  # ascending
    out = latest[np.lexsort((object_ids, hp29[latest]))]  # output rows in (position, id) order
    out_row_of_object = np.argsort(ids[out], kind="stable")  # k-th smallest id -> its output row
    folded = table.drop_columns(list(NESTED)).take(pa.array(out))
    for name, (_, id_column) in NESTED.items():
        rows, points = flatten(table, name)
        candidates = np.arange(len(rows)) if keep is None else np.flatnonzero(keep[rows])
        rows = out_row_of_object[np.searchsorted(object_ids, ids[rows[candidates]])]
        point_ids = points[id_column].to_numpy()[candidates]
        by_id = np.lexsort((point_ids, rows))
        first = np.ones(len(by_id), dtype=bool)
        first[1:] = point_ids[by_id][1:] != point_ids[by_id][:-1]
        unique = by_id[first]
        times = points[TIME_COLUMN].to_numpy()[candidates]
        unique = unique[np.lexsort((times[unique], rows[unique]))]
        column = pack(points.take(pa.array(candidates[unique])), rows[unique], len(out), schema.field(name).type)
        folded = folded.append_column(schema.field(name), column)
    return folded.select(schema.names)

