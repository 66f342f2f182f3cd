"""Plots and tables of the ingest history, for ``snakemake report_plots`` and ``snakemake --report``.

Inputs are the batch summaries the collection carries (``ingest/batches/<batch>.json``: one per nightly commit,
bootstrap and weekly compaction) and the Snakemake ``benchmark:`` files of the work directory
(``benchmarks/<rule>[/<batch>][/<dataset>][/part<k>].tsv``: one bar per job). Nothing here reads catalog data, except for the sky plot's
fallback (rows per pixel of the current catalog, from parquet footers) when no nightly batch was committed yet.

matplotlib, cdshealpix and pandas are imported where they are used, so that the workflow can import
:func:`batch_summary_files` when it is parsed without paying for them.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ppdb_lc.apdb import DATASETS
from ppdb_lc.versions import VERSION_NAME as _VERSION

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Summary = dict[str, Any]
_DATASETS = DATASETS  # the one definition is apdb.DATASETS (name kept for summary_rows)
_RULE_COLORS = {
    "stage_dataset DiaObject": "#9ecae1",
    "stage_dataset DiaSource": "#4292c6",
    "stage_dataset DiaForcedSource": "#08519c",
    "ingest_changes": "#fdae6b",
    "ingest_shard": "#fd8d3c",
    "ingest_pixels": "#fdd0a2",
    "ingest_write": "#f16913",
    "ingest_batch": "#e6550d",
    "bootstrap_collection": "#31a354",
    "compact_collection": "#756bb1",
    "plan_weekly": "#9e9ac8",
    "compact_pixels": "#54278f",
}
_WEEKLY_RULES = ("compact_collection", "plan_weekly", "compact_pixels")  # their level is the version compacted


def _pyplot() -> Any:
    """``matplotlib.pyplot``, with the non-interactive Agg backend unless pyplot is already in use."""
    import sys

    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# -- batch summaries -----------------------------------------------------------------------------------------
def batch_summary_files(collection_dir: str | Path) -> list[Path]:
    """The batch summaries of the published version (each commit adds one)."""
    from ppdb_lc.versions import VersionedCollection

    current = VersionedCollection(collection_dir).current()
    if current is None:
        raise FileNotFoundError(f"no collection at {collection_dir}: nothing to report (run `snakemake bootstrap`)")
    return sorted((current / "ingest" / "batches").glob("*.json"))


def published_catalog_dir(collection_dir: str | Path, catalog_name: str) -> str:
    """The main catalog of the published version."""
    from ppdb_lc.versions import VersionedCollection

    current = VersionedCollection(collection_dir).current()
    return str(current / catalog_name) if current is not None else ""


def kind(summary: Summary) -> str:
    """``daily``, ``bootstrap`` or ``weekly``."""
    name = str(summary["batch"])
    if name == "bootstrap":
        return "bootstrap"
    return "weekly" if name.startswith("weekly-") else "daily"


def commit_number(summary: Summary) -> int:
    """Number of the collection version a summary's commit published (its base version + 1; bootstrap: 1)."""
    match = _VERSION.match(str(summary.get("base_version", "")))
    return int(match.group(1)) + 1 if match else 1


def load_summaries(paths: Iterable[str | Path]) -> list[Summary]:
    """Batch summaries in commit order."""
    summaries = [json.loads(Path(p).read_text()) for p in paths]
    return sorted(summaries, key=lambda s: (commit_number(s), str(s["batch"])))


def nights_of(summary: Summary) -> list[str]:
    """The nights a commit ingested (daily: its night; bootstrap: all it built from; weekly: none)."""
    if kind(summary) == "weekly":
        return []
    return list(summary.get("nights") or ([summary["night"]] if "night" in summary else [summary["batch"]]))


def label(summary: Summary, after_night: str | None = None) -> str:
    """Short axis label of a commit: the night, ``bootstrap`` or ``weekly after <night>``.

    A weekly is labelled by the night it follows (``after_night``: the last night ingested before it, see
    :func:`labels`; else the night of the version it compacted), not by the date its job ran.
    """
    name = str(summary["batch"])
    if kind(summary) == "weekly":
        if after_night is None:
            match = _VERSION.match(str(summary.get("base_version", "")))
            base = match.group(2) if match else ""
            after_night = base if re.fullmatch(r"\d{4}-\d{2}-\d{2}", base) else None
        return f"weekly after {after_night}" if after_night else "weekly"
    return name


def labels(summaries: Sequence[Summary]) -> list[str]:
    """Axis labels of commits in order, each weekly named after the last night ingested before it."""
    out, last_night = [], None
    for summary in summaries:
        out.append(label(summary, last_night))
        nights = nights_of(summary)
        if nights:
            last_night = max(nights)
    return out


def catalog_rows_added(summary: Summary) -> int:
    """Rows a commit added (daily) or the rows of the catalog it built (bootstrap, weekly: one per object)."""
    return int(summary["catalog_rows_added"] if kind(summary) == "daily" else summary.get("objects", 0))


def catalog_sizes(summaries: Sequence[Summary]) -> list[int]:
    """Catalog rows after each commit: full builds reset to their object count, dailies add their rows."""
    sizes, total = [], 0
    for summary in summaries:
        total = total + catalog_rows_added(summary) if kind(summary) == "daily" else catalog_rows_added(summary)
        sizes.append(total)
    return sizes


def latest_night(summaries: Sequence[Summary]) -> Summary | None:
    nights = [s for s in summaries if kind(s) == "daily"]
    return nights[-1] if nights else None


def repartition_note(summaries: Sequence[Summary]) -> str | None:
    """A note for the latest-night sky map when weekly compactions came after that night, else ``None``.

    The map shows the catalog's partitioning right after the night; a later weekly repartitioned it.
    """
    night = latest_night(summaries)
    if night is None:
        return None
    position = max(i for i, s in enumerate(summaries) if s is night)
    weeklies = [s for s in summaries[position + 1:] if kind(s) == "weekly"]
    if not weeklies:
        return None
    pixels = weeklies[-1].get("pixels")
    current = f" (now {pixels} pixels)" if isinstance(pixels, int) else ""
    return (f"pixels as after that night: a weekly compaction has repartitioned the catalog since{current}")


def _pixels_from_keys(keys: Iterable[str]) -> list[tuple[int, int]]:
    return [(int(o), int(p)) for o, p in (key.split("/") for key in keys)]


# -- sky plot ------------------------------------------------------------------------------------------------
def _vertices(pixels: Sequence[tuple[int, int]], step: int = 4) -> list[tuple[np.ndarray, np.ndarray]]:
    """(lon, lat) in degrees of the outline of each pixel (``step`` points per side)."""
    import cdshealpix

    out = []
    for order, ipix in pixels:
        lon, lat = cdshealpix.nested.vertices(np.array([ipix], dtype=np.uint64), int(order), step=step)
        out.append((np.asarray(lon.to_value("deg"))[0], np.asarray(lat.to_value("deg"))[0]))
    return out


def _view(pixels: Sequence[tuple[int, int]]) -> tuple[float, float, float]:
    """Centre (ra, dec) and radius in degrees of a view holding every vertex of ``pixels``."""
    lon = np.radians(np.concatenate([v[0] for v in _vertices(pixels)]))
    lat = np.radians(np.concatenate([v[1] for v in _vertices(pixels)]))
    xyz = np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=1)
    mean = xyz.mean(axis=0)
    mean /= np.linalg.norm(mean)
    radius = float(np.degrees(np.arccos(np.clip(xyz @ mean, -1, 1))).max())
    ra = float(np.degrees(np.arctan2(mean[1], mean[0])) % 360)
    return ra, float(np.degrees(np.arcsin(mean[2]))), radius


def plot_sky(counts: dict[str, int], out: Path, *, title: str, colorbar_label: str = "rows added",
             all_pixels: Iterable[str] = (), created: Iterable[str] = ()) -> Path:
    """HEALPix map of ``counts`` ({"order/pixel": rows}), zoomed to those pixels, outlines of ``all_pixels``."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord
    from hats.inspection.visualize_catalog import plot_healpix_map
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.patches import Patch, Polygon

    plt = _pyplot()

    if not counts:
        return _empty_plot(out, title, "no rows")
    pixels = _pixels_from_keys(counts)
    values = np.array(list(counts.values()), dtype=float)
    ra, dec, radius = _view(pixels)
    whole_sky = radius > 60
    fig = plt.figure(figsize=(10, 5) if whole_sky else (8, 7))
    span = max(2.3 * radius, 0.05)
    vmax = float(values.max())
    norm = LogNorm(vmin=max(values.min(), 1), vmax=max(vmax, 2)) if vmax / max(values.min(), 1) > 50 \
        else Normalize(vmin=0, vmax=vmax)
    fig, ax = plot_healpix_map(
        values, ipix=np.array([p for _, p in pixels]), depth=np.array([o for o, _ in pixels]),
        projection="MOL" if whole_sky else "TAN", fov=None if whole_sky else (span * u.deg, span * u.deg),
        center=SkyCoord(ra, dec, unit="deg") if not whole_sky else None, cbar=False, fig=fig, norm=norm,
        cmap="viridis", title=title, edgecolor="white", linewidth=0.6,
    )
    transform = ax.get_transform("icrs")
    created = set(created)
    for key, (lon, lat) in zip(sorted(set(all_pixels) | created), _vertices(_pixels_from_keys(
            sorted(set(all_pixels) | created))), strict=True):
        new = key in created
        ax.add_patch(Polygon(np.column_stack([lon, lat]), closed=True, fill=False, transform=transform,
                             edgecolor="red" if new else "0.45", linewidth=1.6 if new else 0.7,
                             linestyle="-" if new else "--", zorder=3))
    if not whole_sky:
        _label_pixels(ax, pixels, values, span)
    fig.colorbar(ax.collections[0], ax=ax, label=colorbar_label, shrink=0.8)
    ax.coords[0].set_axislabel("RA [deg]")
    ax.coords[1].set_axislabel("Dec [deg]")
    ax.coords[0].set_format_unit(u.deg, decimal=True)
    ax.coords[1].set_format_unit(u.deg, decimal=True)
    ax.coords.grid(color="0.7", alpha=0.5, linestyle=":")
    handles = [Patch(facecolor="none", edgecolor="0.45", linestyle="--", label="catalog pixel")]
    if created:
        handles.append(Patch(facecolor="none", edgecolor="red", linewidth=1.6, label="pixel created by this night"))
    ax.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.8)
    return _save(fig, out)


def _label_pixels(ax: Any, pixels: Sequence[tuple[int, int]], values: np.ndarray, span: float) -> None:
    """Write ``order/pixel`` and the value into pixels large enough on the plot (only the value if smaller)."""
    import cdshealpix

    transform = ax.get_transform("icrs")
    for (order, ipix), value in zip(pixels, values, strict=True):
        size = 58.6 / 2**order  # deg, side of a HEALPix pixel
        if size < span / 14:
            continue
        text = f"{order}/{ipix}\n{int(value)}" if size >= span / 6 else f"{int(value)}"
        lon, lat = cdshealpix.nested.healpix_to_lonlat(np.array([ipix], dtype=np.uint64), int(order))
        ax.text(lon.to_value("deg")[0], lat.to_value("deg")[0], text, transform=transform, ha="center",
                va="center", fontsize=7, bbox={"boxstyle": "round,pad=0.15", "fc": "white", "alpha": 0.7, "lw": 0})


def catalog_pixel_rows(catalog_dir: Path) -> dict[str, int]:
    """Rows per pixel of a catalog, from its partition info and the footers of its leaf files."""
    import pyarrow.parquet as pq
    from hats.catalog import PartitionInfo

    from ppdb_lc.catalog import pixel_files

    counts: dict[str, int] = {}
    for pixel, path in pixel_files(catalog_dir, PartitionInfo.read_from_dir(catalog_dir).get_healpix_pixels()):
        key = f"{pixel.order}/{pixel.pixel}"
        counts[key] = counts.get(key, 0) + pq.read_metadata(path).num_rows
    return counts


def plot_latest_night(summaries: Sequence[Summary], out: Path, catalog_dir: Path | None = None) -> Path:
    """Rows added per pixel by the latest committed night (else rows per pixel of the current catalog).

    The pixels are those of the catalog right after that night; if a weekly repartitioned the catalog since,
    the title says so (:func:`repartition_note`).
    """
    night = latest_night(summaries)
    if night is not None:
        added = sum(night["pixels_touched"].values())
        created = [f"{o}/{p}" for o, p in night.get("pixels_created", [])]
        title = (f"Rows added per pixel, night {night['night']} (batch {night['batch']})\n"
                 f"{added} rows into {len(night['pixels_touched'])} pixels, {len(created)} new")
        note = repartition_note(summaries)
        if note:
            title += "\n" + note
        return plot_sky(night["pixels_touched"], out, title=title, colorbar_label="rows added",
                        all_pixels=[f"{o}/{p}" for o, p in night.get("pixels", [])], created=created)
    if catalog_dir is not None and Path(catalog_dir).is_dir():
        counts = catalog_pixel_rows(Path(catalog_dir))
        return plot_sky(counts, out, title=f"Rows per pixel of {Path(catalog_dir).name} (no nightly batch yet)",
                        colorbar_label="rows", all_pixels=counts)
    return _empty_plot(out, "Rows added per pixel", "no nightly batch committed yet")


# -- catalog size --------------------------------------------------------------------------------------------
def plot_catalog_size(summaries: Sequence[Summary], out: Path) -> Path:
    """Catalog rows after every commit (line) and rows each commit added or built (bars)."""
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter

    plt = _pyplot()
    if not summaries:
        return _empty_plot(out, "Catalog size", "no batch summary")
    ticks = labels(summaries)
    sizes = catalog_sizes(summaries)
    added = [catalog_rows_added(s) for s in summaries]
    colors = [{"daily": "#fd8d3c", "bootstrap": "#31a354", "weekly": "#756bb1"}[kind(s)] for s in summaries]
    x = np.arange(len(summaries))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(x) + 3), 4.8))
    ax.bar(x, added, color=colors, alpha=0.55, width=0.6)
    ax.plot(x, sizes, color="black", marker="o", label="catalog rows after commit")
    for i, (xi, size) in enumerate(zip(x, sizes, strict=True)):
        dx, dy, ha, va = value_label_offset(sizes[i - 1] if i else None, size,
                                            sizes[i + 1] if i + 1 < len(sizes) else None)
        ax.annotate(f"{size:,}", (xi, size), textcoords="offset points", xytext=(dx, dy), ha=ha, va=va, fontsize=8,
                    zorder=5, bbox={"boxstyle": "round,pad=0.15", "fc": "white", "alpha": 0.8, "lw": 0})
    ax.set_xticks(x, ticks, rotation=45, ha="right")
    ax.set_xlabel("commit (night, or full build)")
    ax.set_ylabel("rows")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    ax.set_ylim(0, max(sizes) * 1.2 if max(sizes) else 1)
    ax.set_title("Catalog size over nights")
    ax.legend(handles=[
        *ax.get_legend_handles_labels()[0],
        Patch(color="#fd8d3c", alpha=0.55, label="rows added by a night"),
        Patch(color="#31a354", alpha=0.55, label="rows built by bootstrap"),
        Patch(color="#756bb1", alpha=0.55, label="rows after weekly compaction"),
    ], fontsize=8, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out)


def value_label_offset(before: float | None, value: float, after: float | None) -> tuple[int, int, str, str]:
    """Where to put a point's value label, away from the line through its neighbours.

    ``(dx, dy, ha, va)`` in offset points: above a peak or a flat stretch, below a dip, to the upper left where
    the line rises through the point (it comes from the lower left and leaves to the upper right) and to the upper
    right where it falls.
    """
    up_from = before is not None and before < value  # the line arrives from below
    down_from = before is not None and before > value
    up_to = after is not None and after > value  # the line leaves upwards
    down_to = after is not None and after < value
    if (up_from and up_to) or (before is None and up_to):
        return (-6, 6, "right", "bottom")
    if (down_from and down_to) or (before is None and down_to) or (down_from and after is None):
        return (6, 6, "left", "bottom")
    if down_from and up_to:
        return (0, -10, "center", "top")
    return (0, 8, "center", "bottom")


# -- benchmarks ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BenchmarkRecord:
    """One Snakemake benchmark file: a job of ``rule`` for ``batch`` (``job`` tells datasets apart)."""

    rule: str
    job: str
    batch: str
    seconds: float
    max_rss_mb: float
    rss_from_kernel: bool = False  # max_rss_mb is the job's own VmHWM (its log), not Snakemake's 30 s sample


_RUN = re.compile(r"^(v\d{6}-.+|new-\d+)$")
_PEAK_RSS = re.compile(r"job done: peak RSS ([0-9.]+) MB \(kernel VmHWM\)")


def logged_peak_rss_mb(log: Path) -> float | None:
    """The peak RSS a job logged at its end (``jobs.job_log``: the kernel's VmHWM), if it got there."""
    if not log.is_file():
        return None
    found = _PEAK_RSS.findall(log.read_text(errors="replace"))
    return float(found[-1]) if found else None


def read_benchmark(path: Path, root: Path) -> BenchmarkRecord:
    """Parse ``root/<rule>.tsv``, ``root/<rule>/<batch>.tsv`` or ``root/<rule>/<batch>/<dataset>[/part<k>].tsv``.

    A run level (``<rule>/<run>/<batch>.tsv``, ``<rule>/<run>.tsv``: the version the run was planned on, or
    ``new-…`` for a bootstrap) is skipped. Peak memory: the kernel's figure the job logged at its end (its log,
    ``<root>/../logs/`` at the same relative path) where there is one, since Snakemake samples memory only every
    30 s after the first 15 s and misses the peak of most jobs; else the benchmark file's ``max_rss``.
    """
    import pandas as pd

    relative = Path(path).relative_to(root)
    kernel = logged_peak_rss_mb(Path(root).parent / "logs" / relative.with_suffix(".log"))
    parts = relative.with_suffix("").parts
    if parts[0] not in _WEEKLY_RULES:  # their level is the version they compacted
        parts = (parts[0], *(p for p in parts[1:] if not _RUN.match(p)))
    rule = parts[0]
    batch = parts[1] if len(parts) > 1 else rule.split("_")[0]
    if rule in _WEEKLY_RULES:
        batch = f"weekly after {batch}"
    job = f"{rule} {parts[2]}" if len(parts) > 2 and rule not in ("ingest_shard", "ingest_write") else rule
    table = pd.read_csv(path, sep="\t")
    rss = pd.to_numeric(table["max_rss"], errors="coerce")
    sampled = float(rss.max()) if rss.notna().any() else float("nan")
    return BenchmarkRecord(rule=rule, job=job, batch=batch, seconds=float(table["s"].mean()),
                           max_rss_mb=kernel if kernel is not None else sampled, rss_from_kernel=kernel is not None)


def benchmark_files(root: str | Path) -> list[Path]:
    """Every ``*.tsv`` below the benchmark directory (none if it does not exist)."""
    return sorted(Path(root).rglob("*.tsv")) if Path(root).is_dir() else []


def read_benchmarks(paths: Iterable[str | Path], root: str | Path) -> list[BenchmarkRecord]:
    return [read_benchmark(Path(p), Path(root)) for p in sorted(paths)]


def _batch_key(batch: str) -> tuple[str, int]:
    """Chronological order: bootstrap, nights, each weekly right after the version it compacted."""
    if batch == "bootstrap":
        return ("", 0)
    if batch.startswith("weekly after "):
        match = _VERSION.match(batch.removeprefix("weekly after "))
        return (_batch_key(match.group(2))[0] if match else batch, 1)
    return (batch, 0)


def _job_key(job: str) -> int:
    order = list(_RULE_COLORS)
    return order.index(job) if job in order else len(order)


def plot_benchmarks(records: Sequence[BenchmarkRecord], out: Path) -> Path:
    """Grouped bars per batch: wall time and peak memory (max RSS) of every job."""
    plt = _pyplot()
    if not records:
        return _empty_plot(out, "Per-rule runtime and peak memory", "no benchmark files")
    batches = sorted({r.batch for r in records}, key=_batch_key)
    groups = {b: sorted((r for r in records if r.batch == b), key=lambda r: (_job_key(r.job), r.job)) for b in batches}
    width = 0.8 / max(len(g) for g in groups.values())
    fig, axes = plt.subplots(2, 1, figsize=(max(7.0, 1.0 * len(batches) + 3), 7.5), sharex=True)
    seen: set[str] = set()
    for x, batch in enumerate(batches):
        group = groups[batch]
        for j, rec in enumerate(group):
            offset = (j - (len(group) - 1) / 2) * width
            color = _RULE_COLORS.get(rec.job, "0.5")
            for ax, value in zip(axes, (rec.seconds, rec.max_rss_mb), strict=True):
                ax.bar(x + offset, value, width=width * 0.95, color=color,
                       hatch="//" if ax is axes[1] and not rec.rss_from_kernel else None,
                       label=rec.job if rec.job not in seen and ax is axes[0] else None)
            seen.add(rec.job)
    axes[0].set_ylabel("wall time [s]")
    axes[0].set_title("Per-rule runtime and peak memory (Snakemake benchmark files)")
    axes[1].set_ylabel("peak RSS [MB]")
    if any(not r.rss_from_kernel for r in records):
        axes[1].set_title("peak RSS: kernel VmHWM logged by the job; hatched: Snakemake's sampled max_rss", fontsize=9)
    else:
        axes[1].set_title("peak RSS: kernel VmHWM logged by each job", fontsize=9)
    axes[1].set_xlabel("batch")
    names = [re.sub(r"^weekly after v\d+-(.*)$", r"weekly\n(after \1)", b) for b in batches]
    axes[1].set_xticks(range(len(batches)), names, rotation=45 if len(batches) > 6 else 0,
                       ha="right" if len(batches) > 6 else "center", fontsize=8)
    for ax in axes:
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: (_job_key(labels[i]), labels[i]))
    fig.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=8, ncol=4, loc="lower center",
               bbox_to_anchor=(0.5, -0.06 if len(batches) <= 6 else -0.1), frameon=False)
    return _save(fig, out)


# -- table ---------------------------------------------------------------------------------------------------
TABLE_COLUMNS = [
    "version", "batch", "kind", "nights", "chunks", "chunks skipped", *[f"{ds} in" for ds in DATASETS], "orphan rows",
    "solar-system sources skipped", "catalog rows added/built", "catalog rows after", "pixels touched",
    "pixels created", "margin rows added", "build s", "commit s", "total s",
]


def _count(pixels: Any) -> int | None:
    """Number of pixels of a summary field: a list or mapping of pixels (older full builds wrote the count)."""
    if pixels is None or isinstance(pixels, int):
        return pixels
    return len(pixels)


def summary_rows(summaries: Sequence[Summary]) -> list[dict[str, Any]]:
    """One table row per commit, ``None`` where a field does not apply."""
    rows = []
    for summary, size in zip(summaries, catalog_sizes(summaries), strict=True):
        k = kind(summary)
        rows_in = summary.get("rows_in") if isinstance(summary.get("rows_in"), dict) else {}
        nights = summary.get("nights") or ([summary["night"]] if "night" in summary else [])
        build, commit = summary.get("build_seconds"), summary.get("commit_seconds")
        rows.append({
            "version": commit_number(summary),
            "batch": summary["batch"],
            "kind": k,
            "nights": ", ".join(nights) if nights else None,
            "chunks": len(summary["chunks"]) if "chunks" in summary else None,
            "chunks skipped": len(summary["chunks_skipped"]) if "chunks_skipped" in summary else None,
            **{f"{ds} in": rows_in.get(ds) for ds in _DATASETS},
            "orphan rows": summary.get("orphan_rows"),
            "solar-system sources skipped": summary.get("solar_system_sources_skipped"),
            "catalog rows added/built": catalog_rows_added(summary),
            "catalog rows after": size,
            "pixels touched": _count(summary.get("pixels_touched", summary.get("pixels"))),
            "pixels created": _count(summary.get("pixels_created", summary.get("pixels"))),
            "margin rows added": summary.get("margin_rows_added"),
            "build s": build,
            "commit s": commit,
            "total s": round(build + commit, 3) if build is not None and commit is not None else summary.get("seconds"),
        })
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.2f}"
    return html.escape(str(value))


def write_summary_table(summaries: Sequence[Summary], out: Path) -> Path:
    """Standalone HTML table of the night summaries (full builds included), oldest first."""
    rows = summary_rows(summaries)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in TABLE_COLUMNS)
    body = "\n".join(
        f'<tr class="{row["kind"]}">' + "".join(
            f'<td class="{"num" if isinstance(row[c], int | float) else "txt"}">{_cell(row[c])}</td>'
            for c in TABLE_COLUMNS) + "</tr>"
        for row in rows
    )
    style = (
        "body{font-family:sans-serif;font-size:13px} table{border-collapse:collapse}"
        "th,td{border:1px solid #ccc;padding:3px 6px} th{background:#eee;position:sticky;top:0}"
        "td.num{text-align:right;font-variant-numeric:tabular-nums} tr.bootstrap{background:#eaf6ea}"
        "tr.weekly{background:#efedf7}"
    )
    text = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Night summaries</title>"
            f"<style>{style}</style></head><body>\n<h3>Night summaries ({len(rows)} commits)</h3>\n"
            f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table>\n</body></html>\n")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return out


# -- helpers -------------------------------------------------------------------------------------------------
def _save(fig: Figure, out: Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return out


def _empty_plot(out: Path, title: str, message: str) -> Path:
    fig, ax = _pyplot().subplots(figsize=(6, 3))
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=12)
    ax.set_axis_off()
    ax.set_title(title)
    return _save(fig, out)


def make_report(batch_files: Sequence[str | Path], benchmark_files: Sequence[str | Path], benchmark_root: str | Path,
                *, sky: str | Path, size: str | Path, benchmarks: str | Path, table: str | Path,
                catalog_dir: str | Path | None = None) -> None:
    """Write the four report outputs."""
    summaries = load_summaries(batch_files)
    plot_latest_night(summaries, Path(sky), Path(catalog_dir) if catalog_dir else None)
    plot_catalog_size(summaries, Path(size))
    plot_benchmarks(read_benchmarks(benchmark_files, benchmark_root), Path(benchmarks))
    write_summary_table(summaries, Path(table))
