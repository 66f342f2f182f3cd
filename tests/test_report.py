"""Preview (pending nights -> pixels), the ppdb-lc CLI, and the report plots/table.

A small export is generated and a collection built with the package functions: bootstrap of the first night with
a low pixel threshold (so that the coverage has holes and later nights create pixels), then one daily commit per
remaining night. The preview taken before each step is checked against an independent computation (positions from
pandas, pixels from hats' ``radec2pix`` at each pixel's order) and against what the commits actually did.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import Workspace, read_export, tree_digest
from hats.catalog import PartitionInfo, TableProperties
from hats.pixel_math.healpix_shim import radec2pix
from matplotlib.image import imread

from ppdb_lc import apdb, nightly, rebuild, report, stage
from ppdb_lc.catalog import pixel_files
from ppdb_lc.cli import apply_overrides, load_settings, main
from ppdb_lc.generator import DemoSpec, generate_ppdb
from ppdb_lc.ledger import Batch
from ppdb_lc.planning import make_plan
from ppdb_lc.preview import format_preview, preview
from ppdb_lc.settings import Settings

NIGHTS = ("2026-11-20", "2026-11-21", "2026-11-22")
# preview/report expectations are per-night pandas rows: the plain simulation (update records: test_workflow*)
SPEC = DemoSpec(n_objects=400, nights=NIGHTS, chunks_per_night=3, seed=7, changes=False)
THRESHOLD = 5  # rows per new pixel: bootstrap pixels at order 4-8, leaving holes later nights fill


@dataclass
class Built:
    ws: Workspace
    bootstrap_preview: dict
    nights_preview: dict
    bootstrap_summary: dict
    commits: list[dict]
    bootstrap_pixels: list[str]
    bootstrap_rows: dict[str, int]

    def settings(self, *overrides: str) -> Settings:
        return load_settings(self.ws.configfile, overrides)


def _stage(batch: Batch, out: Path) -> dict[str, list[Path]]:
    """Staged as the workflow does it: each dataset in parts of <= 300 rows (groups of chunks of one night)."""
    staged = {}
    for ds in (*apdb.DATASETS, stage.UPDATES):
        parts = batch.stage_parts(ds, 300)
        staged[ds] = [out / ds / f"part{i:03d}" for i in range(len(parts))]
        for chunks, path in zip(parts, staged[ds], strict=True):
            stage.stage_dataset(chunks, ds, path)
    return staged


def _keys(pixels) -> list[str]:
    return [f"{p.order}/{p.pixel}" for p in pixels]


def _rows_per_pixel(catalog_dir: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for pixel, path in pixel_files(catalog_dir, PartitionInfo.read_from_dir(catalog_dir).get_healpix_pixels()):
        counts[f"{pixel.order}/{pixel.pixel}"] = counts.get(f"{pixel.order}/{pixel.pixel}", 0) + \
            pq.read_metadata(path).num_rows
    return counts


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    ws = Workspace(tmp_path_factory.mktemp("report"))
    generate_ppdb(ws.ppdb, SPEC)
    ws.write_config(catalog={"name": "dia_object_lc", "pixel_threshold": THRESHOLD, "highest_healpix_order": 8,
                             "margin_threshold_arcsec": 10.0})
    first = load_settings(ws.configfile, [f"until={NIGHTS[0]}"])
    bootstrap_preview = preview(first)
    batch = make_plan(first).bootstrap_batch
    boot = rebuild.bootstrap(batch, _stage(batch, ws.work / "bootstrap"), ws.work / "scratch", first)
    catalog_dir = ws.published / "dia_object_lc"
    bootstrap_pixels = _keys(PartitionInfo.read_from_dir(catalog_dir).get_healpix_pixels())
    bootstrap_rows = _rows_per_pixel(catalog_dir)
    bootstrap_total = int(TableProperties.read_from_dir(catalog_dir).total_rows)
    assert bootstrap_total == sum(bootstrap_rows.values())
    settings = load_settings(ws.configfile)
    nights_preview = preview(settings)
    commits = []
    for batch in make_plan(settings).batches:
        build = ws.work / batch.name / "build"
        commits.append(nightly.ingest_batch(batch, _stage(batch, ws.work / batch.name), build, settings))
        assert not build.exists()
        assert nightly.ingest_batch(batch, {}, build, settings) == {  # a committed night is a no-op
            "batch": batch.name, "already_committed_in": ws.published.name}
    return Built(ws, bootstrap_preview, nights_preview, boot, commits, bootstrap_pixels, bootstrap_rows)


# -- independent expectation ---------------------------------------------------------------------------------
def expected_rows(ppdb: Path, night: str) -> pd.DataFrame:
    """Catalog rows of one night from pandas: latest object versions + orphans (latest forced, else mean source)."""
    data = read_export(ppdb, [night])
    objects = data["DiaObject"].sort_values("validityStartMjdTai").groupby("diaObjectId").tail(1)
    objects = objects[["diaObjectId", "ra", "dec"]].assign(orphan=False)
    known = set(objects["diaObjectId"])
    forced = data["DiaForcedSource"]
    forced = forced[~forced["diaObjectId"].isin(known)].sort_values("midpointMjdTai").groupby("diaObjectId").tail(1)
    sources = data["DiaSource"].dropna(subset=["diaObjectId"])
    sources = sources[~sources["diaObjectId"].isin(known) & ~sources["diaObjectId"].isin(forced["diaObjectId"])]
    sources = sources.groupby("diaObjectId", as_index=False)[["ra", "dec"]].mean()
    orphans = pd.concat([forced[["diaObjectId", "ra", "dec"]], sources]).assign(orphan=True)
    return pd.concat([objects, orphans], ignore_index=True)


def counts_in(pixels: list[str], ra: np.ndarray, dec: np.ndarray) -> tuple[dict[str, int], np.ndarray]:
    """Rows inside each of ``pixels`` by ``radec2pix`` at the pixel's own order, and the mask of rows in none."""
    counts, inside = {}, np.zeros(len(ra), dtype=bool)
    for key in pixels:
        order, pixel = (int(x) for x in key.split("/"))
        hit = np.asarray(radec2pix(order, ra, dec)) == pixel
        assert not (hit & inside).any(), "pixels overlap"
        inside |= hit
        if hit.any():
            counts[key] = int(hit.sum())
    return counts, ~inside


# -- preview -------------------------------------------------------------------------------------------------
def test_bootstrap_preview_matches_built_catalog(built: Built) -> None:
    result = built.bootstrap_preview
    assert result["bootstrap_needed"] and result["version"] is None
    assert [n["night"] for n in result["nights"]] == [NIGHTS[0]]
    boot = result["bootstrap"]
    assert boot["objects"] == sum(built.bootstrap_rows.values()) == built.bootstrap_summary["objects"]
    # Same pixels (at several orders) and the same number of rows in each as the catalog bootstrap wrote.
    assert sorted(boot["pixels_created"]) == sorted(built.bootstrap_pixels)
    assert boot["pixels_created"] == built.bootstrap_rows
    assert len({k.split("/")[0] for k in boot["pixels_created"]}) > 1  # the threshold forced several orders
    assert "bootstrap needed" in format_preview(result)


def test_nights_preview_rows_from_manifests(built: Built) -> None:
    nights = built.nights_preview["nights"]
    assert [n["night"] for n in nights] == list(NIGHTS[1:])
    assert [n["batch"] for n in nights] == list(NIGHTS[1:])
    for night in nights:
        data = read_export(built.ws.ppdb, [night["night"]])
        assert night["rows_in"] == {ds: len(data[ds]) for ds in apdb.DATASETS}
        assert night["chunks"] == SPEC.chunks_per_night
        assert night["rows_in"]["DiaObject"] > 0


def test_nights_preview_pixels_match_radec2pix(built: Built) -> None:
    """Receiving/created pixels and their row counts against pandas positions + radec2pix, night after night."""
    result = built.nights_preview
    existing = list(built.bootstrap_pixels)
    assert result["existing_pixels"] == sorted(existing, key=lambda k: result["existing_pixels"].index(k))
    assert set(result["existing_pixels"]) == set(existing)
    created_total = 0
    for night in result["nights"]:
        rows = expected_rows(built.ws.ppdb, night["night"])
        assert night["catalog_rows"] == len(rows)
        assert night["orphan_rows"] == int(rows["orphan"].sum()) > 0
        ra, dec = rows["ra"].to_numpy(float), rows["dec"].to_numpy(float)
        receiving, outside = counts_in(existing, ra, dec)
        assert night["pixels_receiving"] == receiving
        created, left = counts_in(list(night["pixels_created"]), ra[outside], dec[outside])
        assert created == night["pixels_created"]
        assert not left.any(), "rows outside existing coverage that no created pixel holds"
        assert all(n <= THRESHOLD for n in created.values())
        created_total += len(created)
        existing += list(created)
    assert created_total > 0, "the test data should make daily create pixels"


def test_nights_preview_matches_commits(built: Built) -> None:
    for night, commit in zip(built.nights_preview["nights"], built.commits, strict=True):
        assert commit["batch"] == night["batch"]
        assert {**night["pixels_receiving"], **night["pixels_created"]} == commit["pixels_touched"]
        assert sorted(night["pixels_created"]) == sorted(f"{o}/{p}" for o, p in commit["pixels_created"])
        assert night["catalog_rows"] == commit["catalog_rows_added"]
        assert night["orphan_rows"] == commit["orphan_rows"]
        assert night["rows_in"] == commit["rows_in"]


def test_preview_text(built: Built) -> None:
    text = format_preview(built.nights_preview)
    for night in built.nights_preview["nights"]:
        assert f"night {night['night']} (batch {night['batch']}): {night['chunks']} chunks" in text
        assert f"existing pixels receiving files ({len(night['pixels_receiving'])})" in text
        assert f"new pixels created ({len(night['pixels_created'])})" in text
    assert f"{len(built.bootstrap_pixels)} pixels, skymap order 8" in text


def test_preview_after_daily_and_writes_nothing(built: Built) -> None:
    before = tree_digest(built.ws.collection)
    work_before = sorted(p for p in built.ws.work.rglob("*"))
    result = preview(built.settings())
    assert result["nights"] == [] and not result["bootstrap_needed"]
    assert result["version"] == built.ws.published.name
    assert "nothing pending" in format_preview(result)
    assert tree_digest(built.ws.collection) == before
    assert sorted(p for p in built.ws.work.rglob("*")) == work_before


# -- CLI -----------------------------------------------------------------------------------------------------
def test_apply_overrides() -> None:
    config = {"ppdb_dir": "a", "catalog": {"name": "x", "pixel_threshold": 10}}
    out = apply_overrides(config, ["catalog.pixel_threshold=3", "until=2026-11-21", "work_dir=/w"])
    assert out == {"ppdb_dir": "a", "catalog": {"name": "x", "pixel_threshold": 3}, "until": "2026-11-21",
                   "work_dir": "/w"}
    assert config["catalog"]["pixel_threshold"] == 10  # copied, not modified
    with pytest.raises(ValueError):
        apply_overrides(config, ["no-equals-sign"])


def test_cli_preview_json(built: Built, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "none"
    args = ["preview", "--config", str(built.ws.configfile), "--set", f"collection_dir={missing}",
            "--set", "catalog.pixel_threshold=100000", "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["bootstrap_needed"] and result["pixel_threshold"] == 100000
    assert [n["night"] for n in result["nights"]] == list(NIGHTS)
    # Under a threshold above the object count the whole field is one pixel at the order that still holds it.
    assert len(result["bootstrap"]["pixels_created"]) >= 1
    assert sum(result["bootstrap"]["pixels_created"].values()) == result["bootstrap"]["objects"]
    assert main(args[:-1]) == 0
    assert "bootstrap needed: `snakemake bootstrap` would build" in capsys.readouterr().out


def test_cli_summary(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", str(built.ws.collection)]) == 0
    out = capsys.readouterr().out
    catalog_dir = built.ws.published / "dia_object_lc"
    total = int(TableProperties.read_from_dir(catalog_dir).total_rows)
    pixels = len(PartitionInfo.read_from_dir(catalog_dir).get_healpix_pixels())
    assert f"catalog dia_object_lc: {total} rows in {pixels} pixels" in out
    assert f"ledger: {len(NIGHTS) * SPEC.chunks_per_night} chunks over {len(NIGHTS)} nights" in out
    for night in NIGHTS:
        assert f"  {night}: {SPEC.chunks_per_night} chunks" in out
    match = re.search(r"id_search\(diaObjectId=(\d+)\) found (\d+) row\(s\)", out)
    assert match, out
    ids = np.concatenate([pq.read_table(f, columns=["diaObjectId"])["diaObjectId"].to_numpy()
                          for _, f in pixel_files(catalog_dir, PartitionInfo.read_from_dir(catalog_dir)
                                                  .get_healpix_pixels())])
    assert int(match.group(2)) == int((ids == int(match.group(1))).sum()) >= 1  # one row per night seen
    assert f"-> {built.ws.published.name}" in out
    assert main(["summary", str(built.ws.root / "missing")]) == 1


# -- report --------------------------------------------------------------------------------------------------
BENCH_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def write_benchmarks(root: Path) -> dict[tuple[str, str], tuple[float, float]]:
    """Benchmark files as Snakemake writes them; returns {(job, batch): (seconds, max_rss)}."""
    jobs = {("bootstrap_collection", "bootstrap"): (17.5, 550.0), ("compact_collection", "weekly after v000004-"
            + NIGHTS[-1]): (50.25, 512.5)}
    paths = {("bootstrap_collection", "bootstrap"): root / "bootstrap_collection.tsv",
             ("compact_collection", "weekly after v000004-" + NIGHTS[-1]): root / "compact_collection" /
             f"v000004-{NIGHTS[-1]}.tsv"}
    for i, night in enumerate(NIGHTS[1:]):
        jobs[("ingest_batch", night)] = (10.0 + i, 280.0 + i)
        paths[("ingest_batch", night)] = root / "ingest_batch" / f"{night}.tsv"
        for j, ds in enumerate(apdb.DATASETS):
            jobs[(f"stage_dataset {ds}", night)] = (12.0 + j, 260.0 + j)
            paths[(f"stage_dataset {ds}", night)] = root / "stage_dataset" / night / f"{ds}.tsv"
    for key, path in paths.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        seconds, rss = jobs[key]
        path.write_text(BENCH_HEADER + f"{seconds}\t0:00:{int(seconds):02d}\t{rss}\t1900\t170\t190\t0\t7\t30\t4\n")
    return jobs


def test_read_benchmarks(tmp_path: Path) -> None:
    root = tmp_path / "benchmarks"
    jobs = write_benchmarks(root)
    records = report.read_benchmarks(report.benchmark_files(root), root)
    assert {(r.job, r.batch): (r.seconds, r.max_rss_mb) for r in records} == jobs
    assert {r.rule for r in records} == {"bootstrap_collection", "compact_collection", "ingest_batch", "stage_dataset"}
    assert not any(r.rss_from_kernel for r in records)


def test_read_benchmarks_prefers_the_kernel_peak_the_job_logged(tmp_path: Path) -> None:
    """A staging part's benchmark file and its job log (as the rules name them): the log's VmHWM wins."""
    root = tmp_path / "work" / "benchmarks"
    tsv = root / "stage_dataset" / NIGHTS[1] / "DiaSource" / "part001.tsv"
    log = tmp_path / "work" / "logs" / "stage_dataset" / NIGHTS[1] / "DiaSource" / "part001.log"
    tsv.parent.mkdir(parents=True)
    log.parent.mkdir(parents=True)
    tsv.write_text(BENCH_HEADER + "3.5\t0:00:03\tNA\tNA\tNA\tNA\tNA\tNA\tNA\t3.1\n")  # too short to be sampled
    log.write_text("2026-12-04 01:00:00 INFO ppdb_lc: DiaSource 2026-11-21: 2 chunks\n"
                   "2026-12-04 01:00:03 INFO ppdb_lc.jobs: job done: peak RSS 171.4 MB (kernel VmHWM)\n")
    other = root / "stage_dataset" / NIGHTS[1] / "DiaSource" / "part000.tsv"
    other.write_text(BENCH_HEADER + "3.0\t0:00:03\t150.5\tNA\tNA\tNA\tNA\tNA\tNA\t2.9\n")  # no log: sampled
    records = {r.max_rss_mb: r for r in report.read_benchmarks(report.benchmark_files(root), root)}
    assert set(records) == {171.4, 150.5}
    assert records[171.4].rss_from_kernel and not records[150.5].rss_from_kernel
    assert {(r.rule, r.job, r.batch) for r in records.values()} == {("stage_dataset", "stage_dataset DiaSource",
                                                                     NIGHTS[1])}
    report.plot_benchmarks(list(records.values()), tmp_path / "b.png")
    assert (tmp_path / "b.png").stat().st_size > 10_000


def test_read_benchmarks_of_a_sharded_night(tmp_path: Path) -> None:
    """Shard and writer jobs (<rule>/<run>/<batch>/<index>.tsv) are one job kind each, per night."""
    root = tmp_path / "benchmarks"
    for rule in ("ingest_shard", "ingest_write"):
        for k in range(3):
            path = root / rule / "v000002-2026-11-20" / NIGHTS[1] / f"{k:04d}.tsv"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(BENCH_HEADER + f"{2.0 + k}\t0:00:02\t{300.0 + k}\tNA\tNA\tNA\tNA\tNA\tNA\t1.9\n")
    records = report.read_benchmarks(report.benchmark_files(root), root)
    assert sorted((r.rule, r.job, r.batch, r.max_rss_mb) for r in records) == [
        (rule, rule, NIGHTS[1], 300.0 + k) for rule in ("ingest_shard", "ingest_write") for k in range(3)]


def test_summaries_order_and_sizes(built: Built) -> None:
    files = sorted((built.ws.published / "ingest" / "batches").glob("*.json"))
    summaries = report.load_summaries(files)
    assert [s["batch"] for s in summaries] == ["bootstrap", *NIGHTS[1:]]
    assert [report.commit_number(s) for s in summaries] == [1, 2, 3]
    added = [c["catalog_rows_added"] for c in built.commits]
    boot = built.bootstrap_summary["objects"]
    assert report.catalog_sizes(summaries) == [boot, boot + added[0], boot + added[0] + added[1]]
    total = int(TableProperties.read_from_dir(built.ws.published / "dia_object_lc").total_rows)
    assert report.catalog_sizes(summaries)[-1] == total
    assert report.latest_night(summaries)["batch"] == NIGHTS[-1]


def test_report_outputs(built: Built, tmp_path: Path) -> None:
    bench = tmp_path / "benchmarks"
    write_benchmarks(bench)
    files = sorted((built.ws.published / "ingest" / "batches").glob("*.json"))
    out = {name: tmp_path / "report" / name for name in ("sky.png", "size.png", "bench.png", "nights.html")}
    report.make_report(files, report.benchmark_files(bench), bench, sky=out["sky.png"], size=out["size.png"],
                       benchmarks=out["bench.png"], table=out["nights.html"],
                       catalog_dir=built.ws.published / "dia_object_lc")
    for name in ("sky.png", "size.png", "bench.png"):
        assert out[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert out[name].stat().st_size > 20_000, name
        height, width = imread(out[name]).shape[:2]
        assert height > 300 and width > 500, name
    table = out["nights.html"].read_text()
    assert table.count("<tr class=") == 1 + len(built.commits)
    for commit in built.commits:
        assert f"<td class=\"txt\">{commit['night']}</td>" in table
        assert f"<td class=\"num\">{commit['catalog_rows_added']:,}</td>" in table
        assert f"<td class=\"num\">{commit['rows_in']['DiaForcedSource']:,}</td>" in table
    rows = report.summary_rows(report.load_summaries(files))
    assert [r["pixels created"] for r in rows[1:]] == [len(c["pixels_created"]) for c in built.commits]
    assert rows[0]["kind"] == "bootstrap" and rows[0]["nights"] == NIGHTS[0]


def test_bootstrap_row_counts_its_input(built: Built, tmp_path: Path) -> None:
    """The bootstrap row shows the rows read per dataset (from the export, with pandas) and its pixel count."""
    data = read_export(built.ws.ppdb, [NIGHTS[0]])
    expected = {ds: len(data[ds]) for ds in apdb.DATASETS}
    assert all(n > 0 for n in expected.values())
    summaries = report.load_summaries(sorted((built.ws.published / "ingest" / "batches").glob("*.json")))
    boot = summaries[0]
    assert boot["batch"] == "bootstrap" and boot["rows_in"] == expected
    # "pixels" is the list of [order, pixel] after every commit, full builds and dailies alike
    assert sorted(f"{o}/{p}" for o, p in boot["pixels"]) == sorted(built.bootstrap_pixels)
    for summary in summaries:
        assert isinstance(summary["pixels"], list) and all(len(key) == 2 for key in summary["pixels"])
    row = report.summary_rows(summaries)[0]
    assert {ds: row[f"{ds} in"] for ds in apdb.DATASETS} == expected
    assert row["pixels touched"] == row["pixels created"] == len(built.bootstrap_pixels) > 1
    table = report.write_summary_table(summaries, tmp_path / "nights.html").read_text()
    line = next(line for line in table.splitlines() if line.startswith('<tr class="bootstrap">'))
    cells = dict(zip(report.TABLE_COLUMNS, re.findall(r"<td[^>]*>(.*?)</td>", line), strict=True))
    assert {ds: cells[f"{ds} in"] for ds in apdb.DATASETS} == {ds: f"{n:,}" for ds, n in expected.items()}
    assert cells["pixels touched"] == cells["pixels created"] == str(len(built.bootstrap_pixels))


def test_sky_plot_without_nightly_batch(built: Built, tmp_path: Path) -> None:
    summaries = report.load_summaries([built.ws.published / "ingest" / "batches" / "bootstrap.json"])
    path = report.plot_latest_night(summaries, tmp_path / "sky.png", built.ws.published / "dia_object_lc")
    assert path.stat().st_size > 20_000
    counts = report.catalog_pixel_rows(built.ws.published / "dia_object_lc")
    assert sum(counts.values()) == int(TableProperties.read_from_dir(built.ws.published / "dia_object_lc").total_rows)


# -- the Snakemake rules -------------------------------------------------------------------------------------
@pytest.mark.workflow
def test_preview_and_report_rules(built: Built) -> None:
    before = tree_digest(built.ws.collection)
    proc = built.ws.snakemake("preview")
    expected = format_preview(preview(built.settings()))
    assert expected in proc.stdout
    assert (built.ws.work / "preview.txt").read_text() == expected + "\n"
    rerun = built.ws.snakemake("preview")  # no declared output: runs every time
    assert expected in rerun.stdout and "Nothing to be done" not in rerun.stdout + rerun.stderr
    built.ws.snakemake("report_plots")
    folder = built.ws.work / "report"
    names = ["latest_night_pixels.png", "catalog_size.png", "rule_benchmarks.png", "example_lightcurves.png",
             "night_summaries.html"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)
    assert all((folder / n).stat().st_size > 2_000 for n in names)
    again = built.ws.snakemake("report_plots")
    assert "Nothing to be done" in again.stdout + again.stderr
    assert tree_digest(built.ws.collection) == before


# -- light curves ----------------------------------------------------------------------------------------------
def _catalog_points(catalog_dir: Path) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Object ids of every catalog row, and every nested point with its object id (pyarrow, no lsdb)."""
    import pyarrow.compute as pc

    files = [f for _, f in pixel_files(catalog_dir, PartitionInfo.read_from_dir(catalog_dir).get_healpix_pixels())]
    ids, flat = [], {"diaSource": [], "diaForcedSource": []}
    for path in files:
        table = pq.read_table(path)
        ids.append(table["diaObjectId"].to_numpy())
        for name in flat:
            column = table[name].combine_chunks()
            lists = column.flatten()
            parent = pc.list_parent_indices(lists[0]).to_numpy()
            frame = pd.DataFrame({f.name: pc.list_flatten(child).to_numpy(zero_copy_only=False)
                                  for f, child in zip(column.type, lists, strict=True)})
            flat[name].append(frame.assign(diaObjectId=table["diaObjectId"].to_numpy()[parent]))
    return (pd.DataFrame({"diaObjectId": np.concatenate(ids)}),
            {name: pd.concat(frames, ignore_index=True) for name, frames in flat.items()})


def test_cli_lightcurve(built: Built, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from ppdb_lc.lightcurve_plot import plot_lightcurve

    catalog_dir = built.ws.published / "dia_object_lc"
    rows, flat = _catalog_points(catalog_dir)
    per_id = rows["diaObjectId"].value_counts()
    object_id = int(per_id.index[0])
    assert per_id.iloc[0] > 1  # an object seen on several nights: several rows to combine
    expected: dict[str, dict[str, dict[str, int]]] = {}
    for name, id_column in (("diaSource", "diaSourceId"), ("diaForcedSource", "diaForcedSourceId")):
        pts = flat[name][flat[name]["diaObjectId"] == object_id].drop_duplicates(id_column)
        pts = pts[np.isfinite(pts["psfFlux"].astype(float))]
        expected[name] = {str(band): {"points": len(g), "withdrawn": int(g["timeWithdrawnMjdTai"].notna().sum())}
                          for band, g in pts.groupby("band")}
    assert sum(c["points"] for per in expected.values() for c in per.values()) > 0
    out = tmp_path / "lc.png"
    assert main(["lightcurve", str(built.ws.collection), str(object_id), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert plot_lightcurve(built.ws.collection, object_id, tmp_path / "again.png") == expected
    for band, c in expected["diaSource"].items():
        assert f"{band} {c['points']} ({c['withdrawn']} withdrawn)" in printed
    mags = plot_lightcurve(built.ws.collection, object_id, tmp_path / "mag.png", quantity="scienceMag")
    for name in expected:
        pts = flat[name][flat[name]["diaObjectId"] == object_id].drop_duplicates(NESTED_IDS[name])
        assert sum(c["points"] for c in mags[name].values()) == int(pts["scienceMag"].notna().sum())

    missing = int(rows["diaObjectId"].max()) + 12345
    assert main(["lightcurve", str(built.ws.collection), str(missing), "-o", str(tmp_path / "none.png")]) == 1
    assert f"diaObjectId {missing} is not in the collection" in capsys.readouterr().err
    assert not (tmp_path / "none.png").exists()


NESTED_IDS = {"diaSource": "diaSourceId", "diaForcedSource": "diaForcedSourceId"}


# -- plot labels ---------------------------------------------------------------------------------------------
def test_weekly_labels_name_the_night_they_follow() -> None:
    summaries = [
        {"batch": "bootstrap", "nights": ["2026-11-19", "2026-11-20"]},
        {"batch": "2026-11-21", "night": "2026-11-21", "base_version": "v000001-bootstrap"},
        {"batch": "weekly-20261203T101500", "base_version": "v000002-2026-11-21"},
        {"batch": "weekly-20261204T090000", "base_version": "v000003-weekly-20261203T101500"},
        {"batch": "2026-11-22", "night": "2026-11-22", "base_version": "v000004-weekly-20261204T090000"},
    ]
    assert report.labels(summaries) == ["bootstrap", "2026-11-21", "weekly after 2026-11-21",
                                        "weekly after 2026-11-21", "2026-11-22"]
    assert all("2026-12-0" not in text for text in report.labels(summaries))  # never the job's run date
    # alone: from the version it compacted, when that is a night
    assert report.label(summaries[2]) == "weekly after 2026-11-21"
    assert report.label(summaries[3]) == "weekly"
    weekly_only = [{"batch": "bootstrap", "nights": ["2026-11-20"]}, summaries[2]]
    assert report.labels(weekly_only) == ["bootstrap", "weekly after 2026-11-20"]


def test_value_labels_avoid_the_line() -> None:
    above, below = (0, 8, "center", "bottom"), (0, -10, "center", "top")
    assert report.value_label_offset(None, 5, None) == above
    assert report.value_label_offset(1, 5, 2) == above  # peak
    assert report.value_label_offset(5, 5, 5) == above  # flat
    assert report.value_label_offset(5, 1, 6) == below  # dip
    assert report.value_label_offset(1, 5, 9) == (-6, 6, "right", "bottom")  # rising: upper left is free
    assert report.value_label_offset(None, 5, 9) == (-6, 6, "right", "bottom")
    assert report.value_label_offset(9, 5, 1) == (6, 6, "left", "bottom")  # falling: upper right is free
    assert report.value_label_offset(9, 5, None) == (6, 6, "left", "bottom")


def test_sky_map_says_when_a_weekly_repartitioned_since() -> None:
    night = {"batch": "2026-11-22", "night": "2026-11-22", "base_version": "v000002-2026-11-21"}
    weekly = {"batch": "weekly-20261203T101500", "base_version": "v000003-2026-11-22", "pixels": 17}
    assert report.repartition_note([{"batch": "bootstrap"}, night]) is None
    note = report.repartition_note([{"batch": "bootstrap"}, night, weekly])
    assert note is not None and "weekly compaction has repartitioned" in note and "now 17 pixels" in note
    later = {"batch": "2026-11-23", "night": "2026-11-23", "base_version": "v000004-weekly-20261203T101500"}
    assert report.repartition_note([{"batch": "bootstrap"}, night, weekly, later]) is None


def test_plot_object_combines_rows_and_marks_withdrawn(tmp_path: Path) -> None:
    from ppdb_lc.lightcurve_plot import plot_object

    def src(ids, bands, withdrawn, mag):
        n = len(ids)
        return pd.DataFrame({"diaSourceId": ids, "midpointMjdTai": 61000.0 + np.arange(n), "band": bands,
                             "psfFlux": np.full(n, 100.0), "psfFluxErr": np.full(n, 5.0), "scienceMag": mag,
                             "scienceMagErr": np.full(n, 0.1), "timeWithdrawnMjdTai": withdrawn})

    forced = pd.DataFrame({"diaForcedSourceId": [9], "midpointMjdTai": [61005.0], "band": ["r"], "psfFlux": [1.0],
                           "psfFluxErr": [1.0], "scienceMag": [np.nan], "scienceMagErr": [np.nan],
                           "timeWithdrawnMjdTai": [np.nan]})
    rows = pd.DataFrame({  # two nightly rows of one object; source 2 is in both (a re-emitted copy)
        "diaObjectId": [5, 5],
        "diaSource": [src([1, 2], ["g", "r"], [np.nan, 61010.0], [20.0, 21.0]),
                      src([2, 3, 4], ["r", "g", "g"], [61010.0, np.nan, np.nan], [21.0, np.nan, 22.0])],
        "diaForcedSource": [None, forced],
    })
    counts = plot_object(rows, tmp_path / "lc.png")
    assert counts == {"diaSource": {"g": {"points": 3, "withdrawn": 0}, "r": {"points": 1, "withdrawn": 1}},
                      "diaForcedSource": {"r": {"points": 1, "withdrawn": 0}}}
    assert (tmp_path / "lc.png").stat().st_size > 10_000
    mags = plot_object(rows, tmp_path / "mag.png", quantity="scienceMag")  # null magnitudes are not drawn
    assert mags == {"diaSource": {"g": {"points": 2, "withdrawn": 0}, "r": {"points": 1, "withdrawn": 1}},
                    "diaForcedSource": {}}
