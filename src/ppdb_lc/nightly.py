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

from ppdb_lc import catalog, collection, faults, lightcurves, shards
from ppdb_lc.ledger import PENDING_PATH, UPDATE_LOG, Batch, copy_records, entries_for, read_ledger, write_ledger
from ppdb_lc.settings import Settings
from ppdb_lc.versions import CollectionStateError, VersionedCollection

log = logging.getLogger(__name__)
StaleBuildError = shards.StaleBuildError
published = shards.published


def check_schema(catalog_dir: Path, schema: pa.Schema) -> None:
    on_disk = pq.read_schema(Path(paths.get_common_metadata_pointer(catalog_dir).path))
    if not on_disk.remove_metadata().equals(schema.remove_metadata()):
        raise CollectionStateError(
            f"the schema of {catalog_dir} differs from the one this pipeline writes; rebuild it with "
            "`snakemake weekly` (or bootstrap) before ingesting more nights"
        )


def build_batch(batch: Batch, staged: dict[str, list[Path]], out_dir: Path, settings: Settings) -> dict:
    """Build a batch's files against the published collection into ``out_dir`` in this process; return its summary.

    The same steps as the sharded build (:mod:`ppdb_lc.shards`) with one shard and one writer: changes (update
    records and re-emitted rows against the collection, revised copies of committed files in ``changes/rewrite``),
    nesting, then the dated file of every touched pixel, margin and index rows (``writers/0000``); the night's
    update log, the records left pending, the skymap histogram change and ``summary.json`` at the top.
    """
    started = time.time()
    base = published(settings)
    check_schema(base / settings.names.catalog, lightcurves.catalog_schema(settings.keep_float64))
    layout = shards.Layout(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    shards.build_changes(batch, staged, layout, settings, 1)
    shards.build_shard(batch, staged, layout, settings, 0, 1)
    shards.plan_pixels(batch, layout, settings)
    shards.build_writer(batch, layout, settings, 0, 1)
    return shards.assemble(batch, layout, settings, 1, started)


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
    added_kib = catalog.dir_size_kib(*(build_dir / "writers").glob("*/catalog"))
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
    layout = shards.Layout(build_dir)
    for writer in range(int(summary.get("writers", 1))):
        _link_tree(layout.writer(writer) / "catalog", staged / names.catalog)
        _link_tree(layout.writer(writer) / "margin", staged / names.margin)
        _link_tree(layout.writer(writer) / "index", staged / names.index / "dataset" / "index")
    _link_tree(layout.changes / "rewrite" / "catalog", staged / names.catalog, replace=True)
    _link_tree(layout.changes / "rewrite" / "margin", staged / names.margin, replace=True)
    copy_records(build_dir / "updates.parquet", staged / UPDATE_LOG / f"{batch.name}.parquet")
    copy_records(build_dir / "pending_updates.parquet", staged / PENDING_PATH)
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


def ingest_batch(batch: Batch, staged: dict[str, list[Path]], build_dir: Path, settings: Settings,
                 shard_count: int = 1) -> dict:
    """The nightly job: :func:`build_batch` into ``build_dir`` (with ``shard_count`` > 1: gather what the shard and
    writer jobs built there, :func:`ppdb_lc.shards.assemble`), then :func:`commit_batch`.

    A batch whose chunks are already in the ledger is a no-op; ``build_dir`` is removed once committed.
    """
    base = published(settings)
    if _in_ledger(batch, base):
        log.info("batch %s is already committed in %s; nothing to do", batch.name, base.name)
        return {"batch": batch.name, "already_committed_in": base.name}
    if shard_count == 1:
        build_batch(batch, staged, build_dir, settings)
    else:
        shards.assemble(batch, shards.Layout(build_dir), settings, shard_count, time.time())
    summary = commit_batch(batch, build_dir, settings)
    shutil.rmtree(build_dir, ignore_errors=True)
    if build_dir.parent.name == "build" and not any(build_dir.parent.iterdir()):
        build_dir.parent.rmdir()  # batches/<batch>/build/<run>: nothing of the night's build is left
    return summary
