"""What the next ``daily`` (or ``bootstrap``) would do, computed without writing anything.

For every pending night (:func:`planning.make_plan`): its chunk count, its rows per dataset from the manifests, and
where its catalog rows would go: which pixels of the published catalog receive a file and which new pixels are
created. Placement runs the pipeline's own :func:`partitioning.partition` on the night's row positions, under the
catalog's ``skymap_order`` and ``settings.pixel_threshold``, exactly as :func:`nightly.build_batch` does.

The positions are computed from the ``ra``, ``dec`` and ``diaObjectId`` columns of the pending chunk files only
(no staging, no nesting). Objects are placed at their latest version by the pipeline's own definition,
:func:`postprocess.latest_per_object` (greatest ``validityStartMjdTai``). One detail is approximated:

* an orphan row (an id with sources or forced sources but no object version that night) is placed at its last
  forced-source position in chunk/file order, else at the mean position of its sources (the pipeline orders the
  forced sources by ``midpointMjdTai``).

Nights are previewed in order, each against the pixels the previous one would leave (created pixels included),
since ``daily`` commits them one after the other. Without a collection, the pixels a bootstrap of all pending
nights would create are reported instead (one row per object, partitioned from scratch at
``settings.highest_healpix_order``, as :func:`compaction.compact` does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from hats.catalog import PartitionInfo, TableProperties
from hats.pixel_math import HealpixPixel
from hats.pixel_math.spatial_index import compute_spatial_index

from ppdb_lc import apdb, partitioning
from ppdb_lc.chunks import Chunk
from ppdb_lc.lightcurves import OBJECT_ID, VERSION_COLUMN
from ppdb_lc.postprocess import latest_per_object
from ppdb_lc.planning import make_plan
from ppdb_lc.settings import Settings
from ppdb_lc.versions import VersionedCollection

POSITION_COLUMNS = [OBJECT_ID, "ra", "dec"]


def pixel_key(pixel: HealpixPixel) -> str:
    """``"order/pixel"``, the key the night summaries use."""
    return f"{int(pixel.order)}/{int(pixel.pixel)}"


def read_positions(chunks: Sequence[Chunk], dataset: str) -> pd.DataFrame:
    """``diaObjectId``, ``ra``, ``dec`` of every row of ``dataset`` in ``chunks`` (chunk order), null ids dropped.

    ``DiaObject`` rows also carry ``validityStartMjdTai`` (null as ``-inf``).
    """
    columns = [*POSITION_COLUMNS, VERSION_COLUMN] if dataset == "DiaObject" else POSITION_COLUMNS
    types = {OBJECT_ID: pa.int64(), "ra": pa.float64(), "dec": pa.float64(), VERSION_COLUMN: pa.float64()}
    schema = pa.schema([(name, types[name]) for name in columns])
    tables = []
    for chunk in sorted(chunks, key=lambda c: c.chunk_id):
        path = chunk.files.get(dataset)
        if path is not None:
            table = pq.read_table(path, columns=columns)
            tables.append(table.filter(pc.is_valid(table[OBJECT_ID])).cast(schema))
    if not tables:
        return schema.empty_table().to_pandas()
    frame = pa.concat_tables(tables).to_pandas()
    if VERSION_COLUMN in frame:
        frame[VERSION_COLUMN] = frame[VERSION_COLUMN].fillna(-np.inf)
    return frame


def night_positions(chunks: Sequence[Chunk]) -> pd.DataFrame:
    """One row per catalog row the night would add: ``diaObjectId``, ``ra``, ``dec``, ``orphan`` (bool),
    ``validityStartMjdTai`` (``-inf`` for orphans).

    Objects: the latest version of each id (:func:`postprocess.latest_per_object`). Orphans: ids of
    sources/forced sources without an object version in these chunks, at their last forced-source position, else
    the mean of their source positions.
    """
    objects = read_positions(chunks, "DiaObject")
    objects = objects.iloc[latest_per_object(objects[OBJECT_ID].to_numpy(), objects[VERSION_COLUMN].to_numpy())]
    known = set(objects[OBJECT_ID].to_numpy().tolist())
    forced = read_positions(chunks, "DiaForcedSource")
    forced = forced[~forced[OBJECT_ID].isin(known)].drop_duplicates(OBJECT_ID, keep="last")
    sources = read_positions(chunks, "DiaSource")
    sources = sources[~sources[OBJECT_ID].isin(known) & ~sources[OBJECT_ID].isin(forced[OBJECT_ID])]
    sources = sources.groupby(OBJECT_ID, as_index=False)[["ra", "dec"]].mean()
    orphans = pd.concat([forced, sources], ignore_index=True).assign(**{VERSION_COLUMN: -np.inf})
    rows = pd.concat([objects.assign(orphan=False), orphans.assign(orphan=True)], ignore_index=True)
    return rows.sort_values(OBJECT_ID, kind="stable").reset_index(drop=True)


def healpix29(rows: pd.DataFrame) -> np.ndarray:
    if rows.empty:
        return np.array([], dtype=np.int64)
    return np.asarray(compute_spatial_index(rows["ra"].to_numpy(), rows["dec"].to_numpy()), dtype=np.int64)


def place(hp29: np.ndarray, existing: Sequence[HealpixPixel], *, order: int,
          threshold: int) -> tuple[list[HealpixPixel], dict[str, int], dict[str, int]]:
    """Run the pipeline's partitioning; return all pixels after it, rows per existing pixel, rows per new pixel."""
    if len(hp29) == 0:
        return partitioning.sorted_pixels(existing) if existing else [], {}, {}
    pixels, slots, created = partitioning.partition(hp29, list(existing), order=order, threshold=threshold)
    counts = np.bincount(slots, minlength=len(pixels))
    new = set(created)
    receiving = {pixel_key(p): int(counts[i]) for i, p in enumerate(pixels) if counts[i] and p not in new}
    made = {pixel_key(p): int(counts[i]) for i, p in enumerate(pixels) if p in new}
    return pixels, _sorted(receiving), _sorted(made)


def _sorted(counts: dict[str, int]) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda kv: tuple(int(x) for x in kv[0].split("/"))))


def _bootstrap_rows(per_night: list[pd.DataFrame]) -> pd.DataFrame:
    """One row per object over several nights: its latest row as the bootstrap's fold picks it.

    :func:`postprocess.latest_per_object` over the nights' rows in night order (orphans lose to any object
    version; ties: greatest ``_healpix_29``, then the later night).
    """
    if not per_night:
        return pd.DataFrame(columns=[*POSITION_COLUMNS, "orphan"])
    rows = pd.concat(per_night, ignore_index=True)
    latest = latest_per_object(rows[OBJECT_ID].to_numpy(), rows[VERSION_COLUMN].to_numpy(), healpix29(rows))
    return rows.iloc[latest].drop(columns=[VERSION_COLUMN]).reset_index(drop=True)


def preview(settings: Settings) -> dict[str, Any]:
    """What ``daily`` (or, without a collection, ``bootstrap``) would do now; reads only, writes nothing."""
    plan = make_plan(settings)
    current = VersionedCollection(settings.collection_dir).current()
    result: dict[str, Any] = {
        "collection_dir": str(settings.collection_dir),
        "ppdb_dir": str(settings.ppdb_dir),
        "until": settings.until,
        "version": plan.version,
        "catalog": settings.names.catalog,
        "bootstrap_needed": current is None,
        "pixel_threshold": settings.pixel_threshold,
        "nights": [],
        "bootstrap": None,
        "incomplete": [f"{path}: {reason}" for path, reason in plan.discovery.incomplete],
        "problems": list(plan.problems),
    }
    per_night: list[pd.DataFrame] = []
    if current is not None:
        cat = current / settings.names.catalog
        order = int(TableProperties.read_from_dir(cat).skymap_order)
        pixels: list[HealpixPixel] = PartitionInfo.read_from_dir(cat).get_healpix_pixels()
        result["skymap_order"] = order
        result["existing_pixels"] = [pixel_key(p) for p in partitioning.sorted_pixels(pixels)]
    for batch in plan.batches:
        rows = night_positions(batch.chunks)
        entry: dict[str, Any] = {
            "batch": batch.name,
            "night": batch.night,
            "chunks": len(batch.chunks),
            "rows_in": {ds: batch.rows(ds) for ds in apdb.DATASETS},
            "catalog_rows": len(rows),
            "orphan_rows": int(rows["orphan"].sum()),
            "pixels_receiving": None,
            "pixels_created": None,
        }
        if current is not None:
            pixels, entry["pixels_receiving"], entry["pixels_created"] = place(
                healpix29(rows), pixels, order=order, threshold=settings.pixel_threshold)
        else:
            per_night.append(rows)
        result["nights"].append(entry)
    if current is None and per_night:
        rows = _bootstrap_rows(per_night)
        _, _, created = place(healpix29(rows), [], order=settings.highest_healpix_order,
                              threshold=settings.pixel_threshold)
        result["bootstrap"] = {
            "order": settings.highest_healpix_order,
            "nights": [b.night for b in plan.batches],
            "objects": len(rows),
            "pixels_created": created,
        }
    return result


def _pixel_list(counts: dict[str, int], limit: int = 12) -> str:
    items = [f"{key} ({n})" for key, n in counts.items()]
    more = f", ... {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more if items else "none"


def format_preview(result: dict[str, Any]) -> str:
    """Plain-text rendering of :func:`preview`'s result."""
    lines = [f"collection {result['collection_dir']}: "
             + (f"version {result['version']}" if result["version"] else "does not exist yet")]
    if not result["bootstrap_needed"]:
        lines.append(f"catalog {result['catalog']}: {len(result['existing_pixels'])} pixels, skymap order "
                     f"{result['skymap_order']}, new pixels hold at most {result['pixel_threshold']} rows")
    for night in result["nights"]:
        rows = ", ".join(f"{ds} {n}" for ds, n in night["rows_in"].items())
        lines.append(f"night {night['night']} (batch {night['batch']}): {night['chunks']} chunks; rows {rows}; "
                     f"-> {night['catalog_rows']} catalog rows ({night['orphan_rows']} orphan rows)")
        if night["pixels_receiving"] is not None:
            lines.append(f"  existing pixels receiving files ({len(night['pixels_receiving'])}): "
                         f"{_pixel_list(night['pixels_receiving'])}")
            lines.append(f"  new pixels created ({len(night['pixels_created'])}): "
                         f"{_pixel_list(night['pixels_created'])}")
    if not result["nights"]:
        until = f" up to {result['until']}" if result["until"] else ""
        lines.append(f"nothing pending: no new complete chunk{until}")
    if result["bootstrap_needed"] and result["nights"]:
        boot = result["bootstrap"]
        lines.append(f"bootstrap needed: `snakemake bootstrap` would build {boot['objects']} objects from "
                     f"{len(boot['nights'])} night(s) into {len(boot['pixels_created'])} new pixels "
                     f"(order <= {boot['order']}, at most {result['pixel_threshold']} rows each): "
                     f"{_pixel_list(boot['pixels_created'])}")
    elif result["bootstrap_needed"]:
        lines.append("bootstrap needed, but there is no complete chunk to build it from")
    lines += [f"skipped incomplete chunk {text}" for text in result["incomplete"]]
    lines += [f"INVALID chunk {text}" for text in result["problems"]]
    return "\n".join(lines)
