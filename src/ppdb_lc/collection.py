"""The collection around the main catalog: margin cache and ``diaObjectId`` index built by hats-import.

Full builds (bootstrap, weekly) call hats-import's ``CollectionArguments`` on the already written main catalog;
the Dask cluster is sized from the job's threads and memory, or an existing scheduler is used.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from hats.catalog import TableProperties
from hats.catalog.dataset.collection_properties import CollectionProperties

from ppdb_lc.settings import CollectionNames

log = logging.getLogger(__name__)


@contextlib.contextmanager
def dask_client(threads: int, mem_mb: int | None, scheduler_address: str | None = None) -> Iterator:
    """A Dask client: the given scheduler, or a local cluster sized from the job's threads and memory."""
    from dask.distributed import Client, LocalCluster

    if scheduler_address:
        with Client(scheduler_address) as client:
            yield client
        return
    workers = max(1, int(threads))
    memory = f"{int(mem_mb * 0.85 / workers)}MiB" if mem_mb else "auto"
    with (
        LocalCluster(n_workers=workers, threads_per_worker=1, processes=False, memory_limit=memory,
                     dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        yield client


def build_margin_and_index(
    collection_dir: Path, names: CollectionNames, *, collection_name: str, threads: int = 1, mem_mb: int | None = None,
    scheduler_address: str | None = None,
) -> None:
    """Add the margin cache (default margin) and the ``diaObjectId`` index next to the main catalog."""
    from hats_import.collection.arguments import CollectionArguments
    from hats_import.pipeline import pipeline_with_client

    collection_dir = Path(collection_dir)
    args = (
        CollectionArguments(
            output_path=str(collection_dir.parent),
            output_artifact_name=collection_dir.name,
            npix_suffix="/",
            progress_bar=True,
            simple_progress_bar=True,
            resume=True,
        )
        .catalog(catalog_path=str(collection_dir / names.catalog))
        .add_margin(margin_threshold=names.margin_arcsec, output_artifact_name=names.margin, is_default=True)
        .add_index(indexing_column=names.index_column, output_artifact_name=names.index, include_healpix_29=True)
    )
    with dask_client(threads, mem_mb, scheduler_address) as client:
        pipeline_with_client(args, client)
    # hats-import records the primary catalog as an absolute path of this (staging) directory; make it relative
    # so the collection stays valid once it is moved into place.
    for sub in (names.margin, names.index):
        props = TableProperties.read_from_dir(collection_dir / sub)
        updated = props.copy_and_update(primary_catalog=names.catalog)
        for fname in ("hats.properties", "properties"):
            (collection_dir / sub / fname).unlink(missing_ok=True)
        updated.to_properties_file(collection_dir / sub)
    props = CollectionProperties.read_from_dir(collection_dir)
    (collection_dir / "collection.properties").unlink()
    props.model_copy(update={"name": collection_name}).to_properties_file(collection_dir)
