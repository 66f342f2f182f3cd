"""Writing a fresh, compacted catalog: one row per object, repartitioned by a row threshold, streamed per pixel.

Used by bootstrap (input: the nested rows of every night) and by weekly compaction (input: every file of the
current catalog). Three passes keep memory bounded by one pixel:

1. read only ``diaObjectId``, ``validityStartMjdTai`` and ``_healpix_29`` of every input file; pick each object's
   latest row; partition the latest positions with hats' ``generate_alignment`` (threshold = rows per pixel);
2. read each input file once and append its rows to shard files of their object's *destination* pixel (rows of
   objects that did not move stay together; only moved objects cross pixels);
3. per destination pixel, fold its shards (:func:`lightcurves.fold`) and write the pixel's single file.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from hats.io.parquet_metadata import write_parquet_metadata
from hats.pixel_math import HealpixPixel
from hats.pixel_math.spatial_index import SPATIAL_INDEX_COLUMN

from ppdb_lc import catalog, lightcurves, partitioning

log = logging.getLogger(__name__)
_KEY_COLUMNS = [lightcurves.OBJECT_ID, lightcurves.VERSION_COLUMN, SPATIAL_INDEX_COLUMN]


@dataclass(frozen=True)
class CompactionResult:
    pixels: list[HealpixPixel]
    rows_in: int
    objects: int
    histogram: np.ndarray


def latest_rows(keys: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, healpix29)`` of each object's latest row (ties broken by position, deterministically)."""
    ids = keys[lightcurves.OBJECT_ID].to_numpy()
    version = pc.fill_null(keys[lightcurves.VERSION_COLUMN], -np.inf).to_numpy()
    hp29 = keys[SPATIAL_INDEX_COLUMN].to_numpy()
    order = np.lexsort((hp29, version, ids))
    ids_sorted = ids[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = ids_sorted[1:] != ids_sorted[:-1]
    return ids_sorted[last], hp29[order[last]]


def compact(
    inputs: Sequence[Path],
    catalog_dir: Path,
    scratch: Path,
    *,
    schema: pa.Schema,
    order: int,
    threshold: int,
    file_name: str,
) -> CompactionResult:
    """Fold ``inputs`` into a new catalog's data files under ``catalog_dir`` (metadata: :func:`finish_catalog`)."""
    inputs = list(inputs)
    # Pass 1: destination pixel of every object.
    keys = pa.concat_tables([pq.read_table(f, columns=_KEY_COLUMNS, schema=schema) for f in inputs]) if inputs \
        else schema.empty_table().select(_KEY_COLUMNS)
    ids, hp29 = latest_rows(keys)
    pixels = partitioning.new_pixels(hp29, [], order=order, threshold=threshold)
    id_slot = partitioning.locate(hp29, pixels)
    log.info("pass 1: %d rows, %d objects -> %d pixels", keys.num_rows, len(ids), len(pixels))
    # Pass 2: route rows to shards of their destination pixel.
    if scratch.exists():
        shutil.rmtree(scratch)
    for k, path in enumerate(inputs):
        table = pq.read_table(path, schema=schema)
        slots = id_slot[np.searchsorted(ids, table[lightcurves.OBJECT_ID].to_numpy())]
        for slot in np.unique(slots):
            shard_dir = scratch / str(int(slot))
            shard_dir.mkdir(parents=True, exist_ok=True)
            pq.write_table(table.filter(pa.array(slots == slot)), shard_dir / f"{k:06d}.parquet")
    # Pass 3: fold each pixel and write it.
    for slot, pixel in enumerate(pixels):
        shard_dir = scratch / str(slot)
        shards = sorted(shard_dir.glob("*.parquet"))
        folded = lightcurves.fold_many([pq.read_table(s, schema=schema) for s in shards], schema)
        where = partitioning.locate(folded[SPATIAL_INDEX_COLUMN].to_numpy(), pixels)
        if (where != slot).any():
            raise RuntimeError(f"compaction placed {int((where != slot).sum())} rows outside pixel {pixel}")
        pq.write_table(folded, catalog.pixel_file(catalog_dir, pixel, file_name), **catalog.WRITE_OPTIONS)
        shutil.rmtree(shard_dir)
        log.info("pixel %s: %d shards -> %d objects", pixel, len(shards), folded.num_rows)
    shutil.rmtree(scratch, ignore_errors=True)
    return CompactionResult(
        pixels=pixels, rows_in=keys.num_rows, objects=len(ids), histogram=partitioning.histogram(hp29, order)
    )


def finish_catalog(
    catalog_dir: Path, result: CompactionResult, *, name: str, order: int, alt_orders: Sequence[int], threshold: int
) -> None:
    """Metadata of a freshly compacted catalog (one file per pixel, so ``_metadata`` is valid and written)."""
    total = write_parquet_metadata(catalog_dir, create_metadata=True)
    if total != result.objects:
        raise RuntimeError(f"catalog holds {total} rows, expected {result.objects} objects")
    info = catalog.write_partition_info(catalog_dir, result.pixels)
    catalog.write_skymaps(catalog_dir, result.histogram, alt_orders)
    catalog.write_properties(
        catalog_dir,
        catalog.object_properties(
            name,
            total_rows=total,
            partition=info,
            skymap_order=order,
            skymap_alt_orders=alt_orders,
            threshold=threshold,
            estsize_kib=catalog.dir_size_kib(catalog_dir),
        ),
    )
