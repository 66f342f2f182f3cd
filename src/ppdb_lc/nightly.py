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
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from hats.catalog import PartitionInfo, TableProperties
from hats.io import paths
from hats.io.validation import is_valid_catalog
from hats.pixel_math import HealpixPixel
from hats.pixel_math.spatial_index import SPATIAL_INDEX_COLUMN

from ppdb_lc import apdb, catalog, collection, faults, lightcurves, margins, partitioning, revise, stage, updates
from ppdb_lc.ledger import (
    PENDING_PATH,
    UPDATE_LOG,
    Batch,
    entries_for,
    last_store_time,
    read_ledger,
    read_pending,
    update_history,
    write_ledger,
    write_records,
)
from ppdb_lc.settings import Settings
from ppdb_lc.versions import CollectionStateError, VersionedCollection

log = logging.getLogger(__name__)
CHUNK = apdb.REPLICA_CHUNK_COLUMN
MJD_UNIX_EPOCH = 40587.0  # MJD of 1970-01-01 (TAI-based Unix seconds and MJD TAI share the scale)


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


def _border_rows_from(base_catalog: Path, rewritten_catalog: Path, pixel: HealpixPixel,
                      existing: Sequence[HealpixPixel], order: int, schema: pa.Schema) -> dict[str, pa.Table]:
    """Rows of existing pixels that lie in the margin of a newly created ``pixel``, per file name (a margin file
    ``Q/<name>`` holds border rows of the catalog files ``P/<name>``); files rewritten tonight are read from
    ``rewritten_catalog``."""
    cells = margins.border_cells(pixel, order)
    owners = partitioning.locate(cells << (2 * (29 - order)), existing)
    parts: dict[str, list[pa.Table]] = {}
    for slot in np.unique(owners[owners >= 0]):
        for _, path in catalog.pixel_files(base_catalog, [existing[int(slot)]]):
            fresh = rewritten_catalog / path.relative_to(base_catalog)
            table = pq.read_table(fresh if fresh.exists() else path, schema=schema)
            mask = margins.rows_in_border(table[SPATIAL_INDEX_COLUMN].to_numpy(), pixel, order)
            if mask.any():
                parts.setdefault(path.name, []).append(table.filter(pa.array(mask)))
    return {name: pa.concat_tables(tables) for name, tables in parts.items()}


def _night_changes(base: Path, tables: dict[str, pa.Table], records: pa.Table, out_dir: Path,
                   settings: Settings, schema: pa.Schema, pixels: Sequence[HealpixPixel], morder: int
                   ) -> tuple[dict[str, pa.Table], revise.Revision, dict]:
    """Apply the night's and the pending update records, and resolve re-emitted rows against the collection.

    Returns the night's flat tables to nest (moved points included), the revision of committed files and the
    counts for the night summary; the night's record log and the records still pending go into ``out_dir``.
    """
    names = settings.names
    pending_before = read_pending(base)
    all_records = pa.concat_tables([pending_before, records])  # pending first: status[len(pending):] is the night's
    horizon = last_store_time(read_ledger(base))
    lookups_sources, lookups_forced = pd.DataFrame(), pd.DataFrame()
    if horizon is not None:  # rows observed before the last committed store may have a committed copy
        limit = horizon / 86400.0 + MJD_UNIX_EPOCH
        for dataset in ("DiaSource", "DiaForcedSource"):
            t = tables[dataset]
            old = t.filter(pc.less(t[lightcurves.TIME_COLUMN], limit)) if t.num_rows else t
            frame = old.select([*apdb.ROW_KEY[dataset], CHUNK, "ra", "dec"]).to_pandas()
            if dataset == "DiaSource":
                lookups_sources = frame
            else:
                lookups_forced = frame
    effects = updates.reduce(all_records)
    lookups = revise.Lookups(effects, all_records["ra"].to_numpy(zero_copy_only=False),
                             all_records["dec"].to_numpy(zero_copy_only=False), lookups_sources, lookups_forced)
    revision = revise.Revision()
    if not effects.empty or not lookups_sources.empty or not lookups_forced.empty:
        revision = revise.revise(
            base / names.catalog, pixels, lookups, margin_dir=base / names.margin, margin_order=morder,
            out_catalog=out_dir / "rewrite" / "catalog", out_margin=out_dir / "rewrite" / "margin", schema=schema,
            margin_schema=pq.read_schema(Path(paths.get_common_metadata_pointer(base / names.margin).path)),
        )
    # re-emitted rows: a committed copy from an earlier (or the same) chunk wins over the night's
    sources, forced = tables["DiaSource"], tables["DiaForcedSource"]
    if revision.kept_sources:
        sources = sources.filter(pc.invert(pc.is_in(sources["diaSourceId"],
                                                    pa.array(sorted(revision.kept_sources), pa.int64()))))
    if revision.kept_forced:
        keys = pd.DataFrame({k: forced[k].to_numpy() for k in apdb.ROW_KEY["DiaForcedSource"]})
        gone = keys.merge(pd.DataFrame(sorted(revision.kept_forced), columns=keys.columns).assign(_x=1), how="left")
        forced = forced.filter(pa.array(gone["_x"].isna().to_numpy()))
    # records that changed a replaced committed copy apply again to the night's (earlier) copy
    history = updates.empty_records()
    if revision.replaced_sources or revision.replaced_forced:
        history = update_history(base, revision.replaced_sources, revision.replaced_forced)
    flat = updates.apply_to_flat(tables["DiaObject"], sources, forced,
                                 updates.reduce(pa.concat_tables([all_records, history])) if history.num_rows
                                 else effects)
    moved = [m.select(flat.sources.schema.names).cast(flat.sources.schema) for m in revision.moved_sources]
    status = updates.statuses(
        all_records,
        flat.found_sources | revision.found_sources,
        flat.found_forced | revision.found_forced,
        updates.earliest_versions(flat.found_objects, revision.found_objects),
    )
    still_pending = updates.in_order(all_records.filter(pa.array(status == updates.PENDING)))
    ss = int(pc.sum(pc.is_null(pa.concat_arrays([m["diaObjectId"].combine_chunks() for m in moved])))
             .as_py() or 0) if moved else 0
    counts = {
        "records_received": updates.counts_by_type(records),
        "records_pending_before": pending_before.num_rows,
        "records_applied": updates.counts_by_type(all_records, status == updates.APPLIED),
        "records_superseded": updates.counts_by_type(all_records, status == updates.SUPERSEDED),
        "records_pending": updates.counts_by_type(all_records, status == updates.PENDING),
        "sources_moved_from_committed_rows": sum(m.num_rows for m in moved) - ss,
        "sources_reassigned_to_ssobjects_committed": ss,
        "re_emitted_sources_already_committed": len(revision.kept_sources),
        "re_emitted_forced_sources_already_committed": len(revision.kept_forced),
        "committed_copies_replaced_by_earlier_chunks": len(revision.replaced_sources) + len(revision.replaced_forced),
        "files_scanned_for_targets": revision.files_scanned,
        "files_rewritten": len(revision.files_rewritten),
        "margin_files_rewritten": len(revision.margin_files_rewritten),
        "rows_dropped": revision.rows_dropped,
    }
    log_table = records.append_column("status", pa.array(status[pending_before.num_rows:].tolist(), pa.string()))
    write_records(out_dir / "updates.parquet", log_table)
    write_records(out_dir / "pending_updates.parquet", still_pending)
    night = {"DiaObject": flat.objects, "DiaSource": pa.concat_tables([flat.sources, *moved]),
             "DiaForcedSource": flat.forced}
    return night, revision, counts


def build_batch(batch: Batch, staged: dict[str, list[Path]], out_dir: Path, settings: Settings) -> dict:
    """Build a batch's files against the published collection into ``out_dir``; return its summary.

    ``out_dir`` receives the night's dated files (``catalog``, ``margin``, ``index``), the revised copies of
    committed files that hold targets of update records or re-emitted rows (``rewrite/``), the night's update log
    and the records left pending, the skymap histogram change and ``summary.json``.
    """
    started = time.time()
    names = settings.names
    base = published(settings)
    base_catalog = base / names.catalog
    schema = lightcurves.catalog_schema(settings.keep_float64)
    check_schema(base_catalog, schema)
    props = TableProperties.read_from_dir(base_catalog)
    order = int(props.skymap_order)
    existing = partitioning.sorted_pixels(PartitionInfo.read_from_dir(base_catalog).get_healpix_pixels())
    margin_props = TableProperties.read_from_dir(base / names.margin)
    morder = margins.margin_order(float(margin_props.margin_threshold), existing)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)

    staged_tables = {ds: stage.read_staged(staged[ds], batch.night, ds) for ds in apdb.DATASETS}
    records = stage.read_staged(staged[stage.UPDATES], batch.night, stage.UPDATES)
    tables, revision, changes = _night_changes(base, staged_tables, records, out_dir, settings, schema,
                                               existing, morder)
    rows, stats = lightcurves.nest_batch(tables["DiaObject"], tables["DiaSource"], tables["DiaForcedSource"], schema)
    hp29 = rows[SPATIAL_INDEX_COLUMN].to_numpy()
    pixels, slots, created = partitioning.partition(hp29, existing, order=order, threshold=settings.pixel_threshold)
    morder = margins.margin_order(float(margin_props.margin_threshold), pixels)

    file_name = f"{batch.name}.parquet"
    counts = catalog.write_pixel_slices(rows, slots, pixels, out_dir / "catalog", file_name)

    # Margin rows: the batch's rows near other pixels (file <batch>), plus, for new pixels, existing rows near them
    # (in files named like the catalog files they come from).
    margin_schema = pq.read_schema(Path(paths.get_common_metadata_pointer(base / names.margin).path))
    m_rows, m_slots = margins.margin_targets(hp29, slots, pixels, morder)
    margin_rows = rows.take(m_rows).select(margin_schema.names).cast(margin_schema.remove_metadata())
    margin_counts = catalog.write_pixel_slices(margin_rows, m_slots, pixels, out_dir / "margin", file_name)
    backfill: dict[str, list[tuple[pa.Table, np.ndarray]]] = {}
    for pixel in created:
        for name, table in _border_rows_from(base_catalog, out_dir / "rewrite" / "catalog", pixel, existing,
                                             morder, schema).items():
            backfill.setdefault(name, []).append((table, np.full(table.num_rows, pixels.index(pixel))))
    backfill_rows = 0
    for name, parts in backfill.items():
        table = pa.concat_tables([t for t, _ in parts]).select(margin_schema.names).cast(margin_schema.remove_metadata())
        written = catalog.write_pixel_slices(table, np.concatenate([s for _, s in parts]), pixels,
                                             out_dir / "margin", name)
        for pixel, n in written.items():
            margin_counts[pixel] = margin_counts.get(pixel, 0) + n
        backfill_rows += table.num_rows

    index_schema = pq.read_schema(Path(paths.get_common_metadata_pointer(base / names.index).path))
    (out_dir / "index").mkdir()
    index_rows = collection.index_rows(rows[lightcurves.OBJECT_ID].to_numpy(), hp29, slots, pixels, index_schema,
                                       names.index_column)
    pq.write_table(index_rows, out_dir / "index" / file_name)
    histogram = partitioning.histogram(hp29, order)
    for dropped in revision.dropped_healpix29:
        histogram -= partitioning.histogram(dropped, order)
    np.save(out_dir / "histogram.npy", histogram)

    summary = {
        "batch": batch.name,
        "night": batch.night,
        "base_version": base.name,
        "chunks": [c.chunk_id for c in batch.chunks],
        "chunks_skipped": list(batch.skipped),
        "rows_in": {ds: batch.rows(ds) for ds in apdb.DATASETS},
        "re_emitted_copies_in_night": {ds: int((staged_tables[ds].schema.metadata or {}).get(
            stage.RE_EMITTED_KEY, b"0")) for ds in ("DiaSource", "DiaForcedSource")},
        "objects_latest_versions": stats.objects,
        "orphan_rows": stats.orphan_rows,
        "sources_nested": stats.sources,
        "forced_sources_nested": stats.forced_sources,
        "solar_system_sources_skipped": stats.solar_system_sources,
        "updates": changes,
        "catalog_rows_added": rows.num_rows,
        "catalog_rows_dropped": revision.rows_dropped,
        "margin_rows_added": margin_rows.num_rows + backfill_rows,
        "margin_rows_changed": revision.margin_rows_delta,
        "pixels": [_pixel_key(p) for p in pixels],
        "pixels_touched": {f"{p.order}/{p.pixel}": n for p, n in counts.items()},
        "pixels_created": [_pixel_key(p) for p in created],
        "margin_pixels": {f"{p.order}/{p.pixel}": n for p, n in margin_counts.items()},
        "files_rewritten": revision.files_rewritten,
        "margin_files_rewritten": revision.margin_files_rewritten,
        "build_seconds": round(time.time() - started, 3),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    log.info("built %s: %d rows (%d orphan rows) into %d pixels (%d new), %d margin rows; updates %s", batch.name,
             rows.num_rows, stats.orphan_rows, len(counts), len(created), margin_rows.num_rows, changes)
    return summary


def _link_tree(src: Path, dst: Path, *, replace: bool = False) -> None:
    """Hard-link every file below ``src`` to the same place below ``dst`` (``replace``: over existing links)."""
    if not src.exists():
        return
    for path in sorted(src.rglob("*.parquet")):
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        if replace:
            target.unlink(missing_ok=True)  # a link shared with older versions: never written through
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
            total_rows=int(props.total_rows) + int(summary["catalog_rows_added"]) - int(summary["catalog_rows_dropped"]),
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
        margin, props.copy_and_update(total_rows=int(props.total_rows) + int(summary["margin_rows_added"])
                                      + int(summary["margin_rows_changed"]))
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
    _link_tree(build_dir / "rewrite" / "catalog", staged / names.catalog, replace=True)
    _link_tree(build_dir / "rewrite" / "margin", staged / names.margin, replace=True)
    write_records(staged / UPDATE_LOG / f"{batch.name}.parquet", pq.read_table(build_dir / "updates.parquet"))
    write_records(staged / PENDING_PATH, pq.read_table(build_dir / "pending_updates.parquet"))
    _update_main_catalog(staged / names.catalog, summary, build_dir, settings, schema)
    _update_margin(staged / names.margin, summary)
    collection.update_index_metadata(staged / names.index, names)
    write_ledger(staged, ledger + entries_for(batch))
    summary["commit_seconds"] = round(time.time() - started, 3)
    history = staged / "ingest" / "batches"
    history.mkdir(parents=True, exist_ok=True)
    (history / f"{batch.name}.json").write_text(json.dumps(summary, indent=1))
    faults.point("commit:written")
    if settings.validate_commits and not is_valid_catalog(str(staged), strict=True):
        raise CollectionStateError(f"new version {staged} failed strict HATS validation; nothing was published")
    version = versions.publish(staged, batch.name, base=base, keep=settings.keep_versions)
    summary["version"] = version.name
    log.info("committed %s as %s in %.1f s", batch.name, version.name, time.time() - started)
    return summary


def ingest_batch(batch: Batch, staged: dict[str, list[Path]], build_dir: Path, settings: Settings) -> dict:
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
