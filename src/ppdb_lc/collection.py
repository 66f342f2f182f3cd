"""The collection around the main catalog: margin cache, ``diaObjectId`` index and ``collection.properties``.

Layouts are hats-import's (the tests rebuild both with hats-import and compare): the margin cache is a HATS
catalog of type ``margin`` with the main catalog's schema and pixels; the index is a parquet dataset
``dataset/index/*.parquet`` of ``_healpix_29, Norder, Npix, diaObjectId`` sorted by id. The rows come from the
pipeline itself (compaction's plan and the pixels it hands out once, nightly builds add theirs), so no extra pass
over the catalog and no Dask cluster is needed; metadata, properties and partition info are written by hats.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from hats.catalog import PartitionInfo, TableProperties
from hats.catalog.dataset.collection_properties import CollectionProperties
from hats.io.parquet_metadata import write_parquet_metadata
from hats.pixel_math import HealpixPixel
from hats.pixel_math.spatial_index import SPATIAL_INDEX_COLUMN

from ppdb_lc import catalog
from ppdb_lc.settings import CollectionNames

INDEX_DIR = ("dataset", "index")


def index_schema(names: CollectionNames) -> pa.Schema:
    """The index table schema hats-import writes (``diaObjectId`` as the pandas index)."""
    frame = pd.DataFrame(
        {
            SPATIAL_INDEX_COLUMN: np.empty(0, np.int64),
            "Norder": np.empty(0, np.uint8),
            "Npix": np.empty(0, np.uint64),
            names.index_column: np.empty(0, np.int64),
        }
    ).set_index(names.index_column)
    return pa.Schema.from_pandas(frame, preserve_index=True)


def index_rows(ids: np.ndarray, healpix29: np.ndarray, slots: np.ndarray, pixels: Sequence[HealpixPixel],
               schema: pa.Schema, id_column: str) -> pa.Table:
    """Index rows of catalog rows (``slots`` index ``pixels``), sorted by id."""
    order = np.argsort(ids, kind="stable")
    slots = np.asarray(slots)[order]
    columns = {
        SPATIAL_INDEX_COLUMN: np.asarray(healpix29)[order],
        "Norder": np.array([p.order for p in pixels], dtype=np.uint8)[slots] if len(pixels) else [],
        "Npix": np.array([p.pixel for p in pixels], dtype=np.uint64)[slots] if len(pixels) else [],
        id_column: np.asarray(ids)[order],
    }
    return pa.table({f.name: pa.array(columns[f.name], type=f.type) for f in schema}, schema=schema)


def index_file(index_dir: Path, file_name: str) -> Path:
    return Path(index_dir).joinpath(*INDEX_DIR, file_name)


def write_index(index_dir: Path, rows: pa.Table, names: CollectionNames, file_name: str) -> None:
    """A fresh index catalog holding ``rows`` (from :func:`index_rows`)."""
    path = index_file(index_dir, file_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    sorting = pq.SortingColumn.from_ordering(rows.schema, [(names.index_column, "ascending")])
    pq.write_table(rows, path, compression="zstd", sorting_columns=sorting)
    update_index_metadata(index_dir, names)


def update_index_metadata(index_dir: Path, names: CollectionNames) -> int:
    """``_metadata``/``_common_metadata`` and properties of the index from its files; returns its row count."""
    for name in ("_metadata", "_common_metadata"):
        (Path(index_dir) / "dataset" / name).unlink(missing_ok=True)
    total = int(write_parquet_metadata(index_dir, order_by_healpix=False))
    properties = TableProperties(
        catalog_name=names.index,
        catalog_type="index",
        total_rows=total,
        primary_catalog=names.catalog,
        indexing_column=names.index_column,
        **{
            **TableProperties.new_provenance_dict(None, builder=catalog.BUILDER),
            "hats_estsize": catalog.dir_size_kib(index_dir),
        },
    )
    catalog.write_properties(index_dir, properties)
    return total


def margin_properties(names: CollectionNames, *, total_rows: int, partition: PartitionInfo,
                      estsize_kib: int) -> TableProperties:
    """Properties of the margin cache, as hats-import writes them (primary catalog given relative)."""
    return TableProperties(
        catalog_name=names.margin,
        catalog_type="margin",
        total_rows=total_rows,
        primary_catalog=names.catalog,
        margin_threshold=names.margin_arcsec,
        **catalog.spatial_properties(partition, estsize_kib),
    )


def finish_margin(margin_dir: Path, pixels: Sequence[HealpixPixel], schema: pa.Schema, names: CollectionNames) -> int:
    """Metadata of a freshly written margin cache (one file per pixel); returns its row count."""
    margin_dir = Path(margin_dir)
    (margin_dir / "dataset").mkdir(parents=True, exist_ok=True)
    if pixels:
        total = int(write_parquet_metadata(margin_dir, create_metadata=True))
    else:  # no row near any other pixel: an empty margin cache
        total = 0
        catalog.write_common_metadata(margin_dir, schema)
    info = catalog.write_partition_info(margin_dir, pixels)
    catalog.write_properties(
        margin_dir,
        margin_properties(names, total_rows=total, partition=info, estsize_kib=catalog.dir_size_kib(margin_dir)),
    )
    return total


def write_collection_properties(collection_dir: Path, names: CollectionNames, collection_name: str) -> None:
    properties = CollectionProperties(
        name=collection_name,
        hats_primary_table_url=names.catalog,
        all_margins=[names.margin],
        default_margin=names.margin,
        all_indexes={names.index_column: names.index},
        **{k: v for k, v in TableProperties.new_provenance_dict(None, builder=catalog.BUILDER).items()
           if k != "hats_estsize"},
    )
    (Path(collection_dir) / "collection.properties").unlink(missing_ok=True)
    properties.to_properties_file(collection_dir)

