"""Full builds of the collection: bootstrap (from chunks) and weekly compaction (from the published catalog)."""

from __future__ import annotations

import json
import logging
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
from hats.catalog import PartitionInfo, TableProperties
from hats.io.validation import is_valid_catalog

from ppdb_lc import apdb, catalog, collection, compaction, lightcurves, stage
from ppdb_lc.ledger import BOOTSTRAP, LEDGER_PATH, Batch, entries_for, write_ledger
from ppdb_lc.settings import Settings
from ppdb_lc.versions import CollectionStateError, VersionedCollection

log = logging.getLogger(__name__)
COMPACTED_FILE = "compacted.parquet"


def _build_collection(staging: Path, inputs: list[Path], scratch: Path, settings: Settings, *, order: int,
                      threads: int, mem_mb: int | None) -> compaction.CompactionResult:
    names = settings.names
    schema = lightcurves.catalog_schema(settings.keep_float64)
    cat = staging / names.catalog
    result = compaction.compact(inputs, cat, scratch, schema=schema, order=order,
                                threshold=settings.pixel_threshold, file_name=COMPACTED_FILE)
    compaction.finish_catalog(cat, result, name=names.catalog, order=order, alt_orders=settings.skymap_alt_orders,
                              threshold=settings.pixel_threshold)
    collection.build_margin_and_index(staging, names, collection_name=settings.collection_dir.name, threads=threads,
                                      mem_mb=mem_mb, scheduler_address=settings.dask_scheduler_address)
    return result


def _publish(collection_: VersionedCollection, staging: Path, label: str, summary: dict, settings: Settings) -> dict:
    history = staging / "ingest" / "batches"
    history.mkdir(parents=True, exist_ok=True)
    (history / f"{label}.json").write_text(json.dumps(summary, indent=1))
    if not is_valid_catalog(str(staging), strict=True):
        raise CollectionStateError(f"{staging} failed strict HATS validation; nothing was published")
    summary["version"] = collection_.publish(staging, label, keep=settings.keep_versions).name
    return summary


def bootstrap(batch: Batch, staged: dict[str, Path], scratch: Path, settings: Settings, *, threads: int = 1,
              mem_mb: int | None = None) -> dict:
    """Build the collection from every chunk of ``batch`` (several nights) when none exists yet."""
    started = time.time()
    target = VersionedCollection(settings.collection_dir)
    if target.exists():
        raise CollectionStateError(
            f"{settings.collection_dir} already exists; bootstrap only builds a new collection "
            "(use `snakemake daily` to add nights, or remove it first)"
        )
    schema = lightcurves.catalog_schema(settings.keep_float64)
    rows_dir = scratch / "rows"
    rows_dir.mkdir(parents=True, exist_ok=True)
    inputs, totals = [], {"orphan_rows": 0, "solar_system_sources_skipped": 0}
    for night in sorted({c.night for c in batch.chunks}):
        tables = {ds: stage.read_staged(staged[ds], night) for ds in apdb.DATASETS}
        rows, stats = lightcurves.nest_batch(tables["DiaObject"], tables["DiaSource"], tables["DiaForcedSource"],
                                             schema)
        pq.write_table(rows, rows_dir / f"{night}.parquet")
        inputs.append(rows_dir / f"{night}.parquet")
        totals["orphan_rows"] += stats.orphan_rows
        totals["solar_system_sources_skipped"] += stats.solar_system_sources
    staging = target.staging(BOOTSTRAP)
    result = _build_collection(staging, inputs, scratch / "shards", settings, order=settings.highest_healpix_order,
                               threads=threads, mem_mb=mem_mb)
    write_ledger(staging, entries_for(batch))
    shutil.rmtree(rows_dir, ignore_errors=True)
    summary = {
        "batch": BOOTSTRAP,
        "nights": sorted({c.night for c in batch.chunks}),
        "chunks": [c.chunk_id for c in batch.chunks],
        "rows_in": {ds: batch.rows(ds) for ds in apdb.DATASETS},
        **totals,
        "objects": result.objects,
        "pixels": len(result.pixels),
        "seconds": round(time.time() - started, 3),
    }
    return _publish(target, staging, BOOTSTRAP, summary, settings)


def weekly(scratch: Path, settings: Settings, *, threads: int = 1, mem_mb: int | None = None) -> dict:
    """Fold the dailies into one row per object, repartition and regenerate the whole collection."""
    started = time.time()
    target = VersionedCollection(settings.collection_dir)
    base = target.current()
    if base is None:
        raise CollectionStateError(f"no collection at {settings.collection_dir}: run `snakemake bootstrap` first")
    names = settings.names
    base_catalog = base / names.catalog
    pixels = PartitionInfo.read_from_dir(base_catalog).get_healpix_pixels()
    inputs = [path for _, path in catalog.pixel_files(base_catalog, pixels)]
    order = int(TableProperties.read_from_dir(base_catalog).skymap_order)
    label = f"weekly-{datetime.now(tz=UTC).strftime('%Y%m%dT%H%M%S')}"
    staging = target.staging(label)
    result = _build_collection(staging, inputs, scratch / "shards", settings, order=order, threads=threads,
                               mem_mb=mem_mb)
    shutil.copytree(base / LEDGER_PATH.parent, staging / LEDGER_PATH.parent)
    summary = {
        "batch": label,
        "base_version": base.name,
        "files_in": len(inputs),
        "pixels_in": len(pixels),
        "rows_in": result.rows_in,
        "objects": result.objects,
        "pixels": len(result.pixels),
        "seconds": round(time.time() - started, 3),
    }
    return _publish(target, staging, label, summary, settings)
