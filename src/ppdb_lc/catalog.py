"""Reading and writing the HATS catalogs of the collection with hats' path, metadata and skymap functions.

Layout (``npix_suffix="/"``, leaf pixel directories) so that every night adds its own file to a pixel::

    dia_object_lc/dataset/Norder=K/Dir=D/Npix=N/<batch>.parquet

Every data file is written with one fixed schema (:func:`lightcurves.catalog_schema`, ``_healpix_29`` first), so
``_common_metadata`` can be written from that schema directly and never depends on which file sorts first.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import hats
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hats.catalog import PartitionInfo, TableProperties
from hats.io import file_io, paths
from hats.io.skymap import read_skymap, write_skymap
from hats.pixel_math import HealpixPixel
from hats.pixel_math.spatial_index import SPATIAL_INDEX_COLUMN, SPATIAL_INDEX_ORDER

from ppdb_lc import __version__

BUILDER = f"ppdb-lc v{__version__}"
#: zstd level of the leaf files: hats' writer settings otherwise (see :func:`write_options`)
COMPRESSION_LEVEL = 3


@functools.lru_cache(maxsize=16)
def write_options(schema: pa.Schema) -> dict:
    """Parquet settings of leaf files: hats' (as hats-import writes: byte-stream-split floats, delta-encoded
    ``_healpix_29``, dictionaries elsewhere, statistics, page index, 100k-row groups) with zstd level 3 instead of 15.

    Measured on 30k objects x 5 nights (benchmarks/results/2026-12-03_parquet-settings_30k-objects.txt): level 15
    writes 7-9x slower for files 6 % smaller than level 3; lsdb id_search, cone_search and compute() times were
    equal within noise across the settings.
    """
    from hats.io.file_io.file_io import get_parquet_write_table_kwargs

    return get_parquet_write_table_kwargs(schema, write_table_kwargs={"compression_level": COMPRESSION_LEVEL})


def write_leaf(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path, **write_options(table.schema))


class PixelFileWriter:
    """``Npix=N/<file_name>`` of pixels visited in order, appended to in parts (row groups); one file open at a time.

    The same file as :func:`write_leaf` of the concatenated parts (settings, schema), without holding them all.
    """

    def __init__(self, catalog_dir: Path, file_name: str, schema: pa.Schema) -> None:
        self.catalog_dir, self.file_name, self.schema = catalog_dir, file_name, schema
        self.options = dict(write_options(schema))
        self.row_group_size = self.options.pop("row_group_size", None)
        self.pixel: HealpixPixel | None = None
        self.writer: pq.ParquetWriter | None = None
        self.done: set[HealpixPixel] = set()

    def append(self, pixel: HealpixPixel, table: pa.Table) -> None:
        if pixel != self.pixel:
            self.close()
            if pixel in self.done:
                raise RuntimeError(f"pixel {pixel} written again after another one")
            path = pixel_file(self.catalog_dir, pixel, self.file_name)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.pixel, self.writer = pixel, pq.ParquetWriter(path, self.schema, **self.options)
        self.writer.write_table(table.cast(self.schema), row_group_size=self.row_group_size)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.done.add(self.pixel)
        self.pixel, self.writer = None, None

    def __enter__(self) -> PixelFileWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def points_per_row(metadata: pq.FileMetaData) -> float:
    """Mean nested points (light-curve entries of every nested column) per row of a catalog file, from its footer.
    An empty light curve counts as one entry (its level in the file): an upper bound, so parts err small."""
    if metadata.num_rows == 0:
        return 0.0
    first_leaf: dict[str, int] = {}
    group = metadata.row_group(0) if metadata.num_row_groups else None
    for i in range(group.num_columns if group is not None else 0):
        top = group.column(i).path_in_schema.split(".")[0]
        if "." in group.column(i).path_in_schema and top not in first_leaf:
            first_leaf[top] = i
    values = sum(metadata.row_group(g).column(i).num_values for g in range(metadata.num_row_groups)
                 for i in first_leaf.values())
    return values / metadata.num_rows


def read_parts(path: Path, points: int, *, columns: Sequence[str] | None = None, schema: pa.Schema | None = None
               ) -> Iterator[pa.Table]:
    """The rows of a catalog file in consecutive parts of about ``points`` nested points each (at least one row),
    cast to ``schema`` if given: a file is never held whole, however many nights or years of points it holds."""
    handle = pq.ParquetFile(path)
    rows = max(1, int(points / max(1.0, points_per_row(handle.metadata))))
    for batch in handle.iter_batches(batch_size=rows, columns=list(columns) if columns is not None else None):
        table = pa.Table.from_batches([batch])
        yield table.cast(schema) if schema is not None else table


def is_data_file(path: Path) -> bool:
    """Files never modified in place (leaf parquet files, index parts, update logs): safe to share by hard link.

    A version that changes one writes a new file in its place (see :mod:`ppdb_lc.revise`)."""
    parts = path.parts
    return path.suffix == ".parquet" and any(p.startswith("Norder=") or p in ("index", "updates") for p in parts)


def pixel_file(catalog_dir: Path, pixel: HealpixPixel, name: str) -> Path:
    upath = paths.new_pixel_catalog_file(catalog_dir, pixel, npix_suffix="/", npix_parquet_name=name)
    return Path(upath.path)


def write_pixel_slices(
    table: pa.Table, slots: np.ndarray, pixels: Sequence[HealpixPixel], catalog_dir: Path, file_name: str
) -> dict[HealpixPixel, int]:
    """Write the rows of each pixel (``slots`` index ``pixels``) as ``Npix=N/<file_name>``; return row counts."""
    counts: dict[HealpixPixel, int] = {}
    if table.num_rows == 0:
        return counts
    order = np.argsort(slots, kind="stable")
    for slot, part in sorted_slices(table.take(order), slots[order]):
        write_leaf(part, pixel_file(catalog_dir, pixels[slot], file_name))
        counts[pixels[slot]] = part.num_rows
    return counts


def sorted_slices(table: pa.Table, slots: np.ndarray) -> list[tuple[int, pa.Table]]:
    """``(slot, rows)`` of each run of equal ``slots`` (sorted): zero-copy slices of ``table``."""
    bounds = np.flatnonzero(np.diff(slots)) + 1
    return [(int(slots[a]), table.slice(int(a), int(b - a)))
            for a, b in zip(np.r_[0, bounds], np.r_[bounds, len(slots)], strict=True)]


class BackgroundWriter:
    """Parquet writes (encoding, compression) in worker threads, overlapping the caller's next computation.

    At most ``2 * threads`` tables wait, so memory stays bounded; :meth:`finish` waits for all and raises the
    first write error. Use as a context manager.
    """

    def __init__(self, threads: int = 2) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads))
        self._pending: deque[Future] = deque()
        self._limit = 2 * max(1, threads)

    def write(self, table: pa.Table, path: Path) -> None:
        while len(self._pending) >= self._limit:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(write_leaf, table, path))

    def finish(self) -> None:
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()


def pixel_files(catalog_dir: Path, pixels: Iterable[HealpixPixel]) -> list[tuple[HealpixPixel, Path]]:
    out = []
    for pixel in pixels:
        directory = Path(paths.pixel_catalog_file(catalog_dir, pixel, npix_suffix="/").path)
        out.extend((pixel, f) for f in sorted(directory.glob("*.parquet")))
    return out


def write_common_metadata(catalog_dir: Path, schema: pa.Schema) -> None:
    """``dataset/_common_metadata`` from the fixed schema; drop ``_metadata`` (invalid with multi-file pixels)."""
    common = Path(paths.get_common_metadata_pointer(catalog_dir).path)
    common.parent.mkdir(parents=True, exist_ok=True)
    _unlink(common)
    pq.write_metadata(schema, common)
    _unlink(Path(paths.get_parquet_metadata_pointer(catalog_dir).path))


def write_partition_info(catalog_dir: Path, pixels: Sequence[HealpixPixel]) -> PartitionInfo:
    info = PartitionInfo.from_healpix(list(pixels))
    pointer = paths.get_partition_info_pointer(catalog_dir)
    _unlink(Path(pointer.path))
    info.write_to_file(pointer)
    return info


def write_skymaps(catalog_dir: Path, histogram: np.ndarray, alt_orders: Sequence[int]) -> None:
    """``point_map.fits`` (the MOC source) and ``skymap*.fits`` from a histogram at the skymap order."""
    for old in list(Path(catalog_dir).glob("skymap*.fits")) + [Path(catalog_dir) / "point_map.fits"]:
        _unlink(old)
    file_io.write_fits_image(histogram, paths.get_point_map_file_pointer(catalog_dir))
    write_skymap(histogram, catalog_dir, orders=[o for o in alt_orders if o < hats.pixel_math.healpix_shim.npix2order(len(histogram))])


def read_histogram(catalog_dir: Path, order: int) -> np.ndarray:
    catalog = hats.read_hats(catalog_dir)
    return np.asarray(read_skymap(catalog, order), dtype=np.int64)


def write_properties(catalog_dir: Path, properties: TableProperties) -> None:
    for name in ("hats.properties", "properties"):
        _unlink(Path(catalog_dir) / name)
    properties.to_properties_file(catalog_dir)


def spatial_properties(partition: PartitionInfo, estsize_kib: int) -> dict:
    """Properties every spatially partitioned catalog of the collection shares (main catalog and margin)."""
    return {
        "ra_column": "ra",
        "dec_column": "dec",
        "healpix_column": SPATIAL_INDEX_COLUMN,
        "healpix_order": SPATIAL_INDEX_ORDER,
        "npix_suffix": "/",
        "moc_sky_fraction": float(partition.calculate_fractional_coverage()) if len(partition) else 0.0,
        **TableProperties.new_provenance_dict(None, builder=BUILDER),
        "hats_estsize": estsize_kib,
        "hats_order": partition.get_highest_order() if len(partition) else 0,
    }


def object_properties(
    name: str,
    *,
    total_rows: int,
    partition: PartitionInfo,
    skymap_order: int,
    skymap_alt_orders: Sequence[int],
    threshold: int,
    estsize_kib: int,
) -> TableProperties:
    """Properties of the main object catalog."""
    return TableProperties(
        catalog_name=name,
        catalog_type="object",
        total_rows=total_rows,
        skymap_order=skymap_order,
        skymap_alt_orders=[o for o in skymap_alt_orders if o < skymap_order] or None,
        hats_max_rows=threshold,
        hats_cols_sort="diaObjectId",
        **spatial_properties(partition, estsize_kib),
    )


def dir_size_kib(*dirs: Path) -> int:
    """Size of every file below ``dirs``, in KiB (rounded down once)."""
    return sum(f.stat().st_size for path in dirs for f in Path(path).rglob("*") if f.is_file()) // 1024


def _unlink(path: Path) -> None:
    """Remove a file before rewriting it: it may be a hard link shared with a published version."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass

