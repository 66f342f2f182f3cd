"""Full builds of the collection: bootstrap (from chunks) and weekly compaction (from the published catalog)."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
from hats.catalog import PartitionInfo, TableProperties
from hats.io.parquet_metadata import write_parquet_metadata
from hats.io.validation import is_valid_catalog
from hats.pixel_math import HealpixPixel

from ppdb_lc import apdb, catalog, collection, compaction, faults, lightcurves, margins, postprocess, stage, updates
from ppdb_lc.ledger import BOOTSTRAP, LEDGER_PATH, PENDING_PATH, UPDATE_LOG, Batch, entries_for, write_ledger, write_records
from ppdb_lc.settings import Settings
from ppdb_lc.stash import Stash
from ppdb_lc.versions import CollectionStateError, VersionedCollection

log = logging.getLogger(__name__)
COMPACTED_FILE = "compacted.parquet"


@dataclass(frozen=True)
class BuildResult:
    """What a full build wrote; its fields go into the batch summary (``ingest/batches/<label>.json``)."""

    pixels: list[list[int]]  # [order, pixel] of every catalog pixel, as in the nightly summaries
    objects: int
    rows_folded: int  # light-curve rows folded into ``objects`` (per-dataset input counts: the summary's rows_in)
    rows_moved: int
    margin_rows: int
    step_seconds: dict[str, float]


def _build_collection(staging: Path, sources: list[compaction.Source], scratch: Path, settings: Settings, *,
                      order: int, threads: int) -> BuildResult:
    """Write the whole collection (catalog, margin, index, properties) into ``staging`` from ``sources``.

    ``threads`` (the job's cores) size the writer pool; files are read by twice as many threads (measured: 2
    readers 6.2 s, 3-4 readers 4.6-4.9 s for the 20k-object weekly on 2 cores; decoding waits on memory).
    """
    names = settings.names
    schema = lightcurves.catalog_schema(settings.keep_float64)
    clock = {"start": time.time()}
    plan = compaction.Compaction(sources, scratch / "moved", schema=schema, order=order,
                                 threshold=settings.pixel_threshold)
    clock["plan"] = time.time()
    cat = staging / names.catalog
    margin = margins.MarginCollector(plan.pixels, margins.margin_order(names.margin_arcsec, plan.pixels),
                                     Stash(scratch / "margin", schema))
    with catalog.BackgroundWriter(threads) as writer:
        for done, (slot, rows) in enumerate(plan.folded(threads=2 * threads), start=1):
            writer.write(rows, catalog.pixel_file(cat, plan.pixels[slot], COMPACTED_FILE))
            margin.add(slot, rows)
            if done % 25 == 0 or done == len(plan.pixels):
                log.info("folded %d/%d pixels", done, len(plan.pixels))
        clock["fold"] = time.time()
        margin_counts = margin.write(staging / names.margin, COMPACTED_FILE, writer)
    compaction_total = finish_catalog(cat, plan.pixels, plan.histogram, plan.objects, name=names.catalog, order=order,
                                      alt_orders=settings.skymap_alt_orders, threshold=settings.pixel_threshold)
    margin_total = collection.finish_margin(staging / names.margin, list(margin_counts), schema, names)
    index = collection.index_rows(plan.object_ids, plan.object_healpix29, plan.object_slots, plan.pixels,
                                  collection.index_schema(names), names.index_column)
    collection.write_index(staging / names.index, index, names, COMPACTED_FILE)
    collection.write_collection_properties(staging, names, settings.collection_dir.name)
    clock["metadata"] = time.time()
    log.info("collection written: %d objects in %d pixels, %d margin rows", compaction_total, len(plan.pixels),
             margin_total)
    steps = list(clock)
    return BuildResult(
        pixels=[[int(p.order), int(p.pixel)] for p in plan.pixels],
        objects=plan.objects,
        rows_folded=plan.rows_in,
        rows_moved=plan.moved_rows,
        margin_rows=margin_total,
        step_seconds={b: round(clock[b] - clock[a], 3) for a, b in zip(steps, steps[1:], strict=False)},
    )


def finish_catalog(catalog_dir: Path, pixels: Sequence[HealpixPixel], histogram: np.ndarray | None, objects: int, *,
                   name: str, order: int, alt_orders: Sequence[int], threshold: int) -> int:
    """Metadata of a freshly compacted catalog (one file per pixel, so ``_metadata`` is valid and written):
    ``objects`` rows in ``pixels``, ``histogram`` their count at ``order``."""
    if histogram is None:
        raise ValueError("a compacted catalog needs the histogram of its objects")
    total = int(write_parquet_metadata(catalog_dir, create_metadata=True))
    if total != objects:
        raise RuntimeError(f"catalog holds {total} rows, expected {objects} objects")
    info = catalog.write_partition_info(catalog_dir, pixels)
    catalog.write_skymaps(catalog_dir, histogram, alt_orders)
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
    return total


def publish_build(collection_: VersionedCollection, staging: Path, label: str, summary: dict, settings: Settings, *,
             base: Path | None) -> dict:
    collection_.check_base(staging, label, base)  # before the costly validation: another run may have published
    history = staging / "ingest" / "batches"
    history.mkdir(parents=True, exist_ok=True)
    (history / f"{label}.json").write_text(json.dumps(summary, indent=1))
    if not is_valid_catalog(str(staging), strict=True):
        raise CollectionStateError(f"{staging} failed strict HATS validation; nothing was published")
    summary["version"] = collection_.publish(staging, label, base=base, keep=settings.keep_versions).name
    return summary


def bootstrap(batch: Batch, staged: dict[str, list[Path]], scratch: Path, settings: Settings, *, threads: int = 2) -> dict:
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
    nights = sorted({c.night for c in batch.chunks})
    records = pa.concat_tables([stage.read_staged(staged[stage.UPDATES], night, stage.UPDATES) for night in nights])
    effects = updates.reduce(records)
    first = {ds: _first_copies_across_nights(staged[ds], nights, ds) for ds in ("DiaSource", "DiaForcedSource")}
    found = [updates.FOUND_SCHEMA.empty_table()]
    sources, totals = [], {"orphan_rows": 0, "solar_system_sources_skipped": 0}
    for night in nights:
        tables = {ds: stage.read_staged(staged[ds], night, ds) for ds in apdb.DATASETS}
        for ds, keep in first.items():
            tables[ds] = tables[ds].filter(pa.array(keep[night]))
        flat = updates.apply_to_flat(tables["DiaObject"], tables["DiaSource"], tables["DiaForcedSource"], effects)
        found.append(flat.found())
        rows, stats = lightcurves.nest_batch(flat.objects, flat.sources, flat.forced, schema)
        path = rows_dir / f"{night}.arrow"
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            writer.write_table(rows)
        sources.append(compaction.Source(path))
        totals["orphan_rows"] += stats.orphan_rows
        totals["solar_system_sources_skipped"] += stats.solar_system_sources
        log.info("nested night %s: %d rows (%d orphan rows)", night, rows.num_rows, stats.orphan_rows)
    staging = target.staging(BOOTSTRAP)
    result = _build_collection(staging, sources, scratch, settings, order=settings.highest_healpix_order,
                               threads=threads)
    write_ledger(staging, entries_for(batch))
    status = updates.statuses(records, pa.concat_tables(found))
    write_records(staging / UPDATE_LOG / f"{BOOTSTRAP}.parquet",
                  records.append_column("status", pa.array(status.tolist(), pa.string())))
    write_records(staging / PENDING_PATH, updates.in_order(records.filter(pa.array(status == updates.PENDING))))
    totals["updates"] = {
        "records_received": updates.counts_by_type(records),
        "records_applied": updates.counts_by_type(records, status == updates.APPLIED),
        "records_superseded": updates.counts_by_type(records, status == updates.SUPERSEDED),
        "records_pending": updates.counts_by_type(records, status == updates.PENDING),
    }
    shutil.rmtree(rows_dir, ignore_errors=True)
    summary = {
        "batch": BOOTSTRAP,
        "nights": sorted({c.night for c in batch.chunks}),
        "chunks": [c.chunk_id for c in batch.chunks],
        "rows_in": {ds: batch.rows(ds) for ds in apdb.DATASETS},
        **totals,
        **asdict(result),
        "seconds": round(time.time() - started, 3),
    }
    return publish_build(target, staging, BOOTSTRAP, summary, settings, base=None)


def _first_copies_across_nights(parts: Sequence[Path], nights: Sequence[str], dataset: str) -> dict[str, np.ndarray]:
    """Per night, which staged rows are the earliest chunk's copy of their key over all ``nights`` (each night's
    file is already de-duplicated within the night)."""
    key = [*apdb.ROW_KEY[dataset], apdb.REPLICA_CHUNK_COLUMN]
    tables = [stage.read_staged(parts, night, dataset, columns=key) for night in nights]
    sizes = [t.num_rows for t in tables]
    table = pa.concat_tables(tables) if tables else pa.table({})
    keep = np.zeros(table.num_rows, dtype=bool)
    if table.num_rows:
        table = table.append_column("_row", pa.array(np.arange(table.num_rows)))
        keep[postprocess.first_copies(table, dataset)["_row"].to_numpy()] = True
    bounds = np.cumsum([0, *sizes])
    return {night: keep[bounds[i]:bounds[i + 1]] for i, night in enumerate(nights)}


def weekly(scratch: Path, settings: Settings, *, threads: int = 2, planned_on: str | None = None) -> dict:
    """Fold the dailies into one row per object, repartition and regenerate the whole collection.

    ``planned_on``: the version the run planned on (the incremental plan's fallback); another one published is an
    error."""
    started = time.time()
    target = VersionedCollection(settings.collection_dir)
    base = target.current()
    if base is None:
        raise CollectionStateError(f"no collection at {settings.collection_dir}: run `snakemake bootstrap` first")
    if planned_on is not None and base.name != planned_on:
        raise CollectionStateError(f"the weekly was planned on {planned_on} but {base.name} is published now; "
                                   "run the weekly again")
    base_catalog = base / settings.names.catalog
    pixels = PartitionInfo.read_from_dir(base_catalog).get_healpix_pixels()
    sources = [compaction.Source(path, pixel) for pixel, path in catalog.pixel_files(base_catalog, pixels)]
    order = int(TableProperties.read_from_dir(base_catalog).skymap_order)
    label = f"weekly-{datetime.now(tz=UTC).strftime('%Y%m%dT%H%M%S')}"
    staging = target.staging(label)
    result = _build_collection(staging, sources, scratch, settings, order=order, threads=threads)
    shutil.copytree(base / LEDGER_PATH.parent, staging / LEDGER_PATH.parent)
    faults.point("weekly:written")
    summary = {
        "batch": label,
        "base_version": base.name,
        "mode": "full",
        "files_in": len(sources),
        "pixels_in": len(pixels),
        **asdict(result),
        "seconds": round(time.time() - started, 3),
    }
    return publish_build(target, staging, label, summary, settings, base=base)
