"""Post-processing of export tables: conform, latest object version, AB magnitudes, float32 downcast.

All functions take and return ``pyarrow.Table`` so that types (nullable ints, strings) survive untouched.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ppdb_lc import apdb
from ppdb_lc.settings import DEFAULT_KEEP_FLOAT64

log = logging.getLogger(__name__)

_MJD = re.compile(r".*MjdTai$")


def conform(table: pa.Table, dataset: str, *, source: str = "") -> pa.Table:
    """Cast an export table to the full (latest) export schema of ``dataset``.

    Columns missing from older schema versions become nulls; columns unknown to the packaged APDB schema are
    dropped with a warning (they cannot enter the catalog schema without a schema upgrade).
    """
    target = apdb.export_schema(dataset)
    missing_required = [col for col in apdb.REQUIRED_COLUMNS[dataset] if col not in table.column_names]
    if missing_required:
        raise ValueError(f"{source or dataset}: missing required column(s) {', '.join(missing_required)}")
    unknown = [name for name in table.column_names if target.get_field_index(name) < 0]
    if unknown:
        log.warning("%s: dropping column(s) unknown to APDB %s: %s", source or dataset, apdb.LATEST_SCHEMA_VERSION,
                    ", ".join(unknown))
    arrays = []
    for fld in target:
        if fld.name in table.column_names:
            arrays.append(table[fld.name].cast(fld.type))
        else:
            arrays.append(pa.nulls(len(table), type=fld.type))
    return pa.Table.from_arrays(arrays, schema=target)


def latest_per_object(ids: np.ndarray, version: np.ndarray, *tiebreak: np.ndarray) -> np.ndarray:
    """Row index of each object's latest row, objects in ascending id order: *the* definition of "latest version".

    Latest = greatest ``version`` (``validityStartMjdTai``; pass nulls as ``-inf``, so that orphan rows, which have
    none, lose to any real version). Ties are broken by the ``tiebreak`` keys in order (greatest wins; the catalog
    passes ``_healpix_29``) and then by position: the later row wins. Deterministic, and every caller picks the same
    row for the same input.
    """
    ids = np.asarray(ids)
    if len(ids) == 0:
        return np.array([], dtype=np.int64)
    order = np.lexsort((np.arange(len(ids)), *reversed(tiebreak), np.asarray(version, dtype=np.float64), ids))
    sorted_ids = ids[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = sorted_ids[1:] != sorted_ids[:-1]
    return order[last]


def latest_versions(objects: pa.Table) -> pa.Table:
    """One row per ``diaObjectId`` (ascending): its latest version, by :func:`latest_per_object` (ties: later row)."""
    if objects.num_rows == 0:
        return objects
    ids = objects["diaObjectId"].to_numpy(zero_copy_only=False)
    version = pc.fill_null(objects["validityStartMjdTai"].cast(pa.float64()), -np.inf).to_numpy(zero_copy_only=False)
    return objects.take(pa.array(latest_per_object(ids, version)))


def first_copies(table: pa.Table, dataset: str) -> pa.Table:
    """One row per measurement key (:data:`apdb.ROW_KEY`): the copy from the earliest chunk.

    Reprocessing re-emits DiaSources (and forced sources) under the same key in later chunks; the PPDB keeps the
    earliest chunk's copy. Rows keep their order; ``DiaObject`` tables (versions) are returned unchanged.
    """
    key = apdb.ROW_KEY.get(dataset)
    if key is None or table.num_rows == 0:
        return table
    chunk = pc.fill_null(table[apdb.REPLICA_CHUNK_COLUMN], np.iinfo(np.int64).max).to_numpy()
    keys = [table[k].to_numpy(zero_copy_only=False) for k in key]
    order = np.lexsort((np.arange(table.num_rows), chunk, *reversed(keys)))
    first = np.ones(len(order), dtype=bool)
    same = np.ones(len(order) - 1, dtype=bool)
    for k in keys:
        same &= k[order][1:] == k[order][:-1]
    first[1:] = ~same
    if first.all():
        return table
    return table.take(pa.array(np.sort(order[first])))


def _ab_mag(flux: np.ndarray) -> np.ndarray:
    import astropy.units as u  # imported here: the workflow parses this package at every start

    with np.errstate(invalid="ignore", divide="ignore"):
        mag = (np.where(flux > 0, flux, np.nan) * u.nJy).to_value(u.ABmag)
    return mag


def magnitudes(flux: np.ndarray, flux_err: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AB magnitude and its error from an nJy flux: error = half the magnitude span of ``flux ± err``.

    Undefined (NaN) where the flux is not positive; the error is NaN where ``flux - err`` is not positive.
    """
    mag = _ab_mag(flux)
    err = 0.5 * (_ab_mag(flux - flux_err) - _ab_mag(flux + flux_err))
    return mag, err


def magnitude_name(flux_column: str) -> str:
    """``g_scienceFluxMean`` → ``g_scienceMagMean``; ``scienceFlux`` → ``scienceMag``."""
    return flux_column.replace("Flux", "Mag")


def add_magnitudes(table: pa.Table, dataset: str) -> pa.Table:
    """Append float32 ``…Mag``/``…MagErr`` columns for the dataset's nJy science fluxes (null where undefined)."""
    for flux_col in apdb.flux_columns(dataset):
        flux = table[flux_col].to_numpy(zero_copy_only=False).astype(np.float64)
        err = table[flux_col + "Err"].to_numpy(zero_copy_only=False).astype(np.float64)
        mag, mag_err = magnitudes(flux, err)
        name = magnitude_name(flux_col)
        for col_name, values in ((name, mag), (name + "Err", mag_err)):
            values = values.astype(np.float32)
            table = table.append_column(
                pa.field(col_name, pa.float32()), pa.array(values, mask=np.isnan(values), type=pa.float32())
            )
    return table


def keep_float64(name: str, keep: Sequence[str]) -> bool:
    return name in keep or bool(_MJD.match(name))


def downcast(table: pa.Table, keep: Sequence[str] = DEFAULT_KEEP_FLOAT64) -> pa.Table:
    """Cast float64 columns to float32, except ``keep`` and every ``*MjdTai`` column."""
    fields = [
        fld.with_type(pa.float32()) if pa.types.is_float64(fld.type) and not keep_float64(fld.name, keep) else fld
        for fld in table.schema
    ]
    return table.cast(pa.schema(fields))


def postprocess(table: pa.Table, dataset: str, keep: Sequence[str] = DEFAULT_KEEP_FLOAT64) -> pa.Table:
    """Magnitudes + downcast (objects: also reduced to their latest version)."""
    if dataset == "DiaObject":
        table = latest_versions(table)
    return downcast(add_magnitudes(table, dataset), keep)


def processed_schema(dataset: str, keep: Sequence[str] = DEFAULT_KEEP_FLOAT64) -> pa.Schema:
    """Schema of ``postprocess(conform(…))`` output, derived without data."""
    return postprocess(apdb.export_schema(dataset).empty_table(), dataset, keep).schema
