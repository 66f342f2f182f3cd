"""One object's light curve, read from a published collection with lsdb ``id_search``, drawn per band.

What is drawn: the difference-image PSF flux ``psfFlux`` ± ``psfFluxErr`` (nJy) by default, the one measurement
both ``diaSource`` and ``diaForcedSource`` carry for every point (it may be negative, so no point is lost).
``quantity="scienceFlux"`` draws the direct-image flux instead and ``quantity="scienceMag"`` its AB magnitude
(``scienceMag`` ± ``scienceMagErr``, null where the science flux is not positive: such points are not drawn).
x is ``midpointMjdTai``; one colour per ``band``; detections (``diaSource``) are filled circles, forced photometry
(``diaForcedSource``) open squares; withdrawn points (``timeWithdrawnMjdTai`` not null) are crosses in the band's
colour.

An object not compacted yet has several rows (one per night it was seen); their points are combined and
deduplicated by source id (``diaSourceId`` / ``diaForcedSourceId``), as weekly compaction does.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ppdb_lc.lightcurves import NESTED, OBJECT_ID, TIME_COLUMN

QUANTITIES: dict[str, tuple[str, str, str]] = {  # name -> (value column, error column, axis label)
    "psfFlux": ("psfFlux", "psfFluxErr", "difference-image PSF flux psfFlux [nJy]"),
    "scienceFlux": ("scienceFlux", "scienceFluxErr", "science flux scienceFlux [nJy]"),
    "scienceMag": ("scienceMag", "scienceMagErr", "AB magnitude scienceMag"),
}
WITHDRAWN_COLUMN = "timeWithdrawnMjdTai"
_BAND_COLORS = {"u": "#56b4e9", "g": "#008060", "r": "#ff4000", "i": "#850000", "z": "#6600cc", "y": "#000000"}


class ObjectNotFoundError(LookupError):
    """The collection has no row for the requested ``diaObjectId``."""


def object_rows(collection: str | Path, object_id: int) -> pd.DataFrame:
    """Every catalog row of ``object_id`` (several if dailies were not compacted yet), via lsdb ``id_search``."""
    import lsdb

    with contextlib.redirect_stdout(io.StringIO()):  # lsdb prints "Searching for ..."
        found = lsdb.open_catalog(str(collection)).id_search(values={OBJECT_ID: int(object_id)})
        rows = found.compute(progress_bar=False)
    if len(rows) == 0:
        raise ObjectNotFoundError(f"diaObjectId {object_id} is not in the collection {collection}")
    return rows


def points(rows: pd.DataFrame, nested: str) -> pd.DataFrame:
    """The points of nested column ``nested`` over all ``rows``, one per source id, sorted by time."""
    id_column = NESTED[nested][1]
    frames = [row[nested] for _, row in rows.iterrows() if isinstance(row[nested], pd.DataFrame) and len(row[nested])]
    if not frames:
        return pd.DataFrame(columns=[id_column, TIME_COLUMN, "band"])
    flat = pd.concat(frames, ignore_index=True)
    return flat.drop_duplicates(id_column).sort_values([TIME_COLUMN, id_column], kind="stable").reset_index(drop=True)


def plot_object(rows: pd.DataFrame, out: str | Path, *, quantity: str = "psfFlux", title: str | None = None,
                ax: Any = None) -> dict[str, dict[str, dict[str, int]]]:
    """Draw one object's light curves; return the drawn points ``{nested: {band: {"points", "withdrawn"}}}``.

    ``points`` counts every drawn point of the band (withdrawn ones included), ``withdrawn`` those drawn as
    withdrawn. Points whose value is null (e.g. ``scienceMag`` of a non-positive flux) are not drawn or counted.
    With ``ax`` the curves go into that axes and nothing is saved.
    """
    from ppdb_lc.report import _pyplot, _save

    value_col, err_col, ylabel = QUANTITIES[quantity]
    plt = _pyplot()
    own = ax is None
    fig, ax = plt.subplots(figsize=(9, 4.8)) if own else (ax.figure, ax)
    counts: dict[str, dict[str, dict[str, int]]] = {}
    withdrawn_drawn = False
    times: list[np.ndarray] = []
    for nested, marker, kind in (("diaSource", "o", "source"), ("diaForcedSource", "s", "forced")):
        flat = points(rows, nested)
        counts[nested] = {}
        if flat.empty:
            continue
        value = pd.to_numeric(flat[value_col], errors="coerce").astype(float).to_numpy()
        err = pd.to_numeric(flat[err_col], errors="coerce").astype(float).to_numpy()
        time = pd.to_numeric(flat[TIME_COLUMN], errors="coerce").astype(float).to_numpy()
        withdrawn = flat[WITHDRAWN_COLUMN].notna().to_numpy() if WITHDRAWN_COLUMN in flat else np.zeros(len(flat), bool)
        drawn = np.isfinite(value) & np.isfinite(time)
        times.append(time[drawn])
        bands = flat["band"].astype(str).to_numpy()
        for band in sorted(set(bands[drawn])):
            sel = drawn & (bands == band)
            live, gone = sel & ~withdrawn, sel & withdrawn
            color = _BAND_COLORS.get(band, "0.4")
            if live.any():
                ax.errorbar(time[live], value[live], yerr=np.where(np.isfinite(err[live]), err[live], 0),
                            fmt=marker, color=color, mfc=color if kind == "source" else "white", mec=color,
                            ms=5, capsize=2, lw=0.8, label=f"{band} {kind}")
            if gone.any():
                ax.errorbar(time[gone], value[gone], yerr=np.where(np.isfinite(err[gone]), err[gone], 0), fmt="x",
                            color=color, alpha=0.6, ms=8, mew=2, capsize=2, lw=0.8, ls="none", zorder=4)
                withdrawn_drawn = True
            counts[nested][band] = {"points": int(sel.sum()), "withdrawn": int(gone.sum())}
    if quantity == "scienceMag":
        ax.invert_yaxis()
    object_id = int(rows[OBJECT_ID].iloc[0])
    total = sum(c["points"] for per in counts.values() for c in per.values())
    ax.set_title(title or f"diaObjectId {object_id}: {total} point(s) from {len(rows)} catalog row(s)")
    ax.set_xlabel(f"{TIME_COLUMN} [MJD, TAI]")
    ax.ticklabel_format(axis="x", useOffset=False, style="plain")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if total:
        span = np.concatenate(times)
        if span.max() - span.min() < 1:  # a single night: a readable time axis instead of matplotlib's +-5%
            ax.set_xlim(span.min() - 0.5, span.max() + 0.5)
        handles = ax.get_legend_handles_labels()[0]
        if withdrawn_drawn:
            from matplotlib.lines import Line2D

            handles.append(Line2D([], [], marker="x", ls="none", color="0.4", ms=8, mew=2,
                                  label="withdrawn (band colour)"))
        ax.legend(handles=handles, fontsize=7, ncol=2, loc="best")
    else:
        ax.text(0.5, 0.5, "no points", ha="center", va="center", transform=ax.transAxes)
    if own:
        _save(fig, Path(out))
    return counts


def plot_lightcurve(collection: str | Path, object_id: int, out: str | Path, *,
                    quantity: str = "psfFlux") -> dict[str, dict[str, dict[str, int]]]:
    """Read ``object_id`` from ``collection`` (lsdb ``id_search``) and draw it into ``out``; see :func:`plot_object`."""
    return plot_object(object_rows(collection, object_id), out, quantity=quantity)


def example_object_ids(catalog_dir: str | Path, n: int = 4) -> list[int]:
    """Up to ``n`` ids with the most points (sources + forced sources) in the catalog's first pixel files."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from hats.catalog import PartitionInfo

    from ppdb_lc.catalog import pixel_files

    best: dict[int, int] = {}
    for _, path in pixel_files(Path(catalog_dir), PartitionInfo.read_from_dir(catalog_dir).get_healpix_pixels())[:8]:
        table = pq.read_table(path, columns=[OBJECT_ID, *NESTED])
        sizes = np.zeros(table.num_rows, dtype=np.int64)
        for name in NESTED:
            column = table[name].combine_chunks()
            sizes += pc.fill_null(pc.list_value_length(column.field(0)), 0).to_numpy(zero_copy_only=False)
        for oid, size in zip(table[OBJECT_ID].to_numpy(), sizes, strict=True):
            best[int(oid)] = best.get(int(oid), 0) + int(size)
    return [oid for oid, _ in sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def plot_examples(collection: str | Path, object_ids: Sequence[int], out: str | Path,
                  quantity: str = "psfFlux") -> dict[int, dict[str, dict[str, dict[str, int]]]]:
    """A grid of light curves of ``object_ids`` (one panel each) in one PNG."""
    from ppdb_lc.report import _empty_plot, _pyplot, _save

    if not object_ids:
        _empty_plot(Path(out), "Example light curves", "no object in the collection")
        return {}
    plt = _pyplot()
    ncols = 2 if len(object_ids) > 1 else 1
    nrows = (len(object_ids) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(7.5 * ncols, 4.2 * nrows), squeeze=False)
    result = {}
    for ax, oid in zip(axes.flat, object_ids, strict=False):
        result[int(oid)] = plot_object(object_rows(collection, oid), out, quantity=quantity, ax=ax)
    for ax in list(axes.flat)[len(object_ids):]:
        ax.set_axis_off()
    fig.tight_layout()
    _save(fig, Path(out))
    return result
