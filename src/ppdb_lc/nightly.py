"""The daily increment: build one batch's files under the collection's partitioning, then commit it atomically.

The nightly job (:func:`ingest_batch`) runs both steps in one process (one import of the libraries).
``build_batch`` reads the published collection only (partitioning, neighbouring pixels for new margins) and writes
everything the batch adds into a build directory in ``work_dir``: one dated file per touched pixel, the
margin rows it contributes, its index rows and its skymap histogram. ``commit_batch`` turns the published version
plus that build directory into a new version (hard links, see :mod:`ppdb_lc.versions`), brings partition info,
properties, point map, skymaps, ``_common_metadata``, margin and index metadata and the ledger up to date,
validates it and switches the collection link. Both are idempotent: a batch whose chunks are in the ledger is a
no-op, and a build made against an older version is discarded and must be rebuilt.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hats.catalog import PartitionInfo, TableProperties
from hats.io import paths
from hats.io.validation import is_valid_catalog
from hats.pixel_math import HealpixPixel
from hats.pixel_math.spatial_index import SPATIAL_INDEX_COLUMN

from ppdb_lc import apdb, catalog, collection, lightcurves, margins, partitioning, stage
from ppdb_lc.ledger import Batch, entries_for, read_ledger, write_ledger
from ppdb_lc.settings import Settings
from ppdb_lc.versions import CollectionStateError, VersionedCollection

log = logging.getLogger(__name__)


class StaleBuildError(RuntimeError):
    """The build was made against a collection version that is no longer published."""


def _pixel_key(pixel: HealpixPixel) -> list[int]:
    return [int(pixel.order), int(pixel.pixel)]


def published(settings: Settings) -> Path:
    base = VersionedCollection(settings.collection_dir).current()
    if base is None:
        raise CollectionStateError(
            f"no collection at {settings.collection_dir}: build it first with `snakemake bootstrap`"
        )
    return base


def check_schema(catalog_dir: Path, schema: pa.Schema) -> None:
    on_disk = pq.read_schema(Path(paths.get_common_metadata_pointer(catalog_dir).path))
    if not on_disk.remove_metadata().equals(schema.remove_metadata()):
        raise CollectionStateError(
            f"the schema of {catalog_dir} differs from the one this pipeline writes; rebuild it with "
            "`snakemake weekly` (or bootstrap) before ingesting more nights"
        )


def _border_rows_from(base_catalog: Path, pixel: HealpixPixel, existing: Sequence[HealpixPixel], order: int,
                      schema: pa.Schema) -> pa.Table:
    """Rows of existing pixels that lie in the margin of a newly created ``pixel``."""
    cells = margins.border_cells(pixel, order)
    owners = partitioning.locate(cells << (2 * (29 - order)), existing)
    parts = []
    for slot in np.unique(owners[owners >= 0]):
        table = catalog.read_pixel(base_catalog, existing[int(slot)], schema)
        mask = margins.rows_in_border(table[SPATIAL_INDEX_COLUMN].to_numpy(), pixel, order)
        if mask.any():
            parts.append(table.filter(pa.array(mask)))
    return pa.concat_tables(parts) if parts else schema.empty_table()


def build_batch(batch: Batch, staged: dict[str, Path], out_dir: Path, settings: Settings) -> dict:
    """Build a batch's files against the published collection into ``out_dir``; return its summary."""
    started = time.time()
    names = settings.names
    base = published(settings)
    base_catalog = base / names.catalog
    schema = lightcurves.catalog_schema(settings.keep_float64)
    check_schema(base_catalog, schema)
    props = TableProperties.read_from_dir(base_catalog)
    order = int(props.skymap_order)

    tables = {ds: stage.read_staged(staged[ds], batch.night) for ds in apdb.DATASETS}
    rows, stats = lightcurves.nest_batch(tables["DiaObject"], tables["DiaSource"], tables["DiaForcedSource"], schema)
    hp29 = rows[SPATIAL_INDEX_COLUMN].to_numpy()
    existing = PartitionInfo.read_from_dir(base_catalog).get_healpix_pixels()
    pixels, slots, created = partitioning.partition(hp29, existing, order=order, threshold=settings.pixel_threshold)

    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    file_name = f"{batch.name}.parquet"
    counts = catalog.write_pixel_slices(rows, slots, pixels, out_dir / "catalog", file_name)

    # Margin rows: the batch's rows near other pixels, plus, for new pixels, existing rows near them.
    margin_props = TableProperties.read_from_dir(base / names.margin)
    morder = margins.margin_order(float(margin_props.margin_threshold), pixels)
    m_rows, m_slots = margins.margin_targets(hp29, slots, pixels, morder)
    margin_tables = [rows.take(m_rows)]
    margin_slots = [m_slots]
    sorted_existing = partitioning.sorted_pixels(existing)
    for pixel in created:
        backfill = _border_rows_from(base_catalog, pixel, sorted_existing, morder, schema)
        margin_tables.append(backfill)
        margin_slots.append(np.full(backfill.num_rows, pixels.index(pixel)))
    margin_schema = pq.read_schema(Path(paths.get_common_metadata_pointer(base / names.margin).path))
    margin_rows = pa.concat_tables([t.cast(schema) for t in margin_tables]).select(margin_schema.names)
    margin_counts = catalog.write_pixel_slices(
        margin_rows.cast(margin_schema.remove_metadata()), np.concatenate(margin_slots), pixels,
        out_dir / "margin", file_name,
    )

    index_schema = pq.read_schema(Path(paths.get_common_metadata_pointer(base / names.index).path))
    (out_dir / "index").mkdir()
    index_rows = collection.index_rows(rows[lightcurves.OBJECT_ID].to_numpy(), hp29, slots, pixels, index_schema,
                                       names.index_column)
    pq.write_table(index_rows, out_dir / "index" / file_name)
    np.save(out_dir / "histogram.npy", partitioning.histogram(hp29, order))

    summary = {
        "batch": batch.name,
        "night": batch.night,
        "base_version": base.name,
        "chunks": [c.chunk_id for c in batch.chunks],
        "rows_in": {ds: batch.rows(ds) for ds in apdb.DATASETS},
        "objects_latest_versions": stats.objects,
        "orphan_rows": stats.orphan_rows,
        "sources_nested": stats.sources,
        "forced_sources_nested": stats.forced_sources,
        "solar_system_sources_skipped": stats.solar_system_sources,
        "catalog_rows_added": rows.num_rows,
        "margin_rows_added": margin_rows.num_rows,
        "pixels": [_pixel_key(p) for p in pixels],
        "pixels_touched": {f"{p.order}/{p.pixel}": n for p, n in counts.items()},
        "pixels_created": [_pixel_key(p) for p in created],
        "margin_pixels": {f"{p.order}/{p.pixel}": n for p, n in margin_counts.items()},
        "build_seconds": round(time.time() - started, 3),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    log.info("built %s: %d rows (%d orphan rows) into %d pixels (%d new), %d margin rows", batch.name, rows.num_rows,
             stats.orphan_rows, len(counts), len(created), margin_rows.num_rows)
    return summary


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link every file below ``src`` to the same place below ``dst``."""
    for path in sorted(src.rglob("*.parquet")):
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(path, target)


def _pixels(keys: Sequence[Sequence[int]]) -> list[HealpixPixel]:
    return [HealpixPixel(int(o), int(p)) for o, p in keys]


def _update_main_catalog(cat: Path, summary: dict, build_dir: Path, settings: Settings, schema: pa.Schema) -> None:
    props = TableProperties.read_from_dir(cat)
    pixels = _pixels(summary["pixels"])
    info = catalog.write_partition_info(cat, pixels)
    histogram = catalog.read_histogram(cat, int(props.skymap_order)) + np.load(build_dir / "histogram.npy")
    catalog.write_skymaps(cat, histogram, props.skymap_alt_orders or settings.skymap_alt_orders)
    catalog.write_common_metadata(cat, schema)
    added_kib = catalog.dir_size_kib(build_dir / "catalog")
    fresh = TableProperties.new_provenance_dict(None, builder=catalog.BUILDER)
    catalog.write_properties(
        cat,
        props.copy_and_update(
            total_rows=int(props.total_rows) + int(summary["catalog_rows_added"]),
            moc_sky_fraction=float(info.calculate_fractional_coverage()),
            hats_order=info.get_highest_order(),
            hats_estsize=int(props.hats_estsize or 0) + added_kib,
            hats_creation_date=fresh["hats_creation_date"],
        ),
    )


def _update_margin(margin: Path, summary: dict) -> None:
    props = TableProperties.read_from_dir(margin)
    added = _pixels([key.split("/") for key in summary["margin_pixels"]])
    pixels = sorted(set(PartitionInfo.read_from_dir(margin).get_healpix_pixels()) | set(added))
    catalog.write_partition_info(margin, pixels)
    (Path(paths.get_parquet_metadata_pointer(margin).path)).unlink(missing_ok=True)
    catalog.write_properties(
        margin, props.copy_and_update(total_rows=int(props.total_rows) + int(summary["margin_rows_added"]))
    )


def _in_ledger(batch: Batch, version: Path) -> bool:
    return {c.chunk_id for c in batch.chunks} <= {e.chunk_id for e in read_ledger(version)}


def commit_batch(batch: Batch, build_dir: Path, settings: Settings) -> dict:
    """Publish a built batch as a new collection version (no-op if its chunks are already in the ledger)."""
    started = time.time()
    names = settings.names
    versions = VersionedCollection(settings.collection_dir)
    base = published(settings)
    ledger = read_ledger(base)
    summary = json.loads((build_dir / "summary.json").read_text())
    if _in_ledger(batch, base):
        log.info("batch %s is already committed in %s; nothing to do", batch.name, base.name)
        return summary
    if summary["base_version"] != base.name:
        shutil.rmtree(build_dir)
        raise StaleBuildError(
            f"batch {batch.name} was built against {summary['base_version']} but {base.name} is published now; "
            "its build was removed, run the workflow again to rebuild it"
        )
    schema = lightcurves.catalog_schema(settings.keep_float64)
    staged = versions.stage_copy(batch.name, catalog.is_data_file)
    _link_tree(build_dir / "catalog", staged / names.catalog)
    _link_tree(build_dir / "margin", staged / names.margin)
    _link_tree(build_dir / "index", staged / names.index / "dataset" / "index")
    _update_main_catalog(staged / names.catalog, summary, build_dir, settings, schema)
    _update_margin(staged / names.margin, summary)
    collection.update_index_metadata(staged / names.index, names)
    write_ledger(staged, ledger + entries_for(batch))
    summary["commit_seconds"] = round(time.time() - started, 3)
    history = staged / "ingest" / "batches"
    history.mkdir(parents=True, exist_ok=True)
    (history / f"{batch.name}.json").write_text(json.dumps(summary, indent=1))
    if settings.validate_commits and not is_valid_catalog(str(staged), strict=True):
        raise CollectionStateError(f"new version {staged} failed strict HATS validation; nothing was published")
    version = versions.publish(staged, batch.name, keep=settings.keep_versions)
    summary["version"] = version.name
    log.info("committed %s as %s in %.1f s", batch.name, version.name, time.time() - started)
    return summary


def ingest_batch(batch: Batch, staged: dict[str, Path], build_dir: Path, settings: Settings) -> dict:
    """The nightly job: :func:`build_batch` into ``build_dir``, then :func:`commit_batch`, in one process.

    A batch whose chunks are already in the ledger is a no-op; ``build_dir`` is removed once committed.
    """
    base = published(settings)
    if _in_ledger(batch, base):
        log.info("batch %s is already committed in %s; nothing to do", batch.name, base.name)
        return {"batch": batch.name, "already_committed_in": base.name}
    build_batch(batch, staged, build_dir, settings)
    summary = commit_batch(batch, build_dir, settings)
    shutil.rmtree(build_dir, ignore_errors=True)
    return summary
