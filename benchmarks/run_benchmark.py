"""Benchmark of the workflow on a generated PPDB export: nightly cost vs. collection size, weekly vs. full rebuild.

    python benchmarks/run_benchmark.py --objects 50000 --nights 10 --chunks-per-night 6 --cores 2 --out benchmarks/out

Steps (each one ``snakemake`` invocation, timed wall-clock from outside):

1. generate ``--nights`` nights with :mod:`ppdb_lc.generator` (``DemoSpec``);
2. ``bootstrap`` on night 1, then ``daily`` night after night (``until=<night>``), then ``weekly``;
3. a full rebuild: ``bootstrap`` from every chunk into a second collection (its own work directory).

Per-rule wall time and peak memory come from the Snakemake benchmark files of the work directories. lsdb queries
(``id_search`` of a few ids, ``cone_search`` of 0.5 deg at the field centre) are timed on the collection before and
after ``weekly``. ``--profile`` runs the last night's ``daily`` under ``py-spy record --subprocesses`` (if installed).
Results: a table on stdout, ``results.json`` and ``table.txt`` in ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from ppdb_lc import apdb, report
from ppdb_lc.generator import DemoSpec, generate_ppdb
from ppdb_lc.ledger import read_ledger
from ppdb_lc.versions import VersionedCollection

REPO = Path(__file__).resolve().parents[1]
RULES = ("stage", "ingest_batch", "full_build")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=50_000, help="distinct DiaObjects over the run")
    parser.add_argument("--nights", type=int, default=10)
    parser.add_argument("--chunks-per-night", type=int, default=6)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    parser.add_argument("--start", default="2026-11-20", help="first night (dayobs)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--pixel-threshold", type=int, default=None,
                        help="catalog.pixel_threshold (default: objects / 25, at least 200)")
    parser.add_argument("--query-repeats", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3,
                        help="weekly and full rebuild are timed this many times (on copies), median reported")
    parser.add_argument("--profile", action="store_true", help="run the last night's daily under py-spy record")
    return parser.parse_args(argv)


# -- running the workflow ------------------------------------------------------------------------------------
def write_config(path: Path, *, ppdb: Path, collection: Path, work: Path, threshold: int) -> Path:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update(ppdb_dir=str(ppdb), collection_dir=str(collection), work_dir=str(work), until="all")
    config["catalog"]["pixel_threshold"] = threshold
    path.write_text(yaml.safe_dump(config))
    return path


def snakemake(out: Path, configfile: Path, target: str, cores: int, *extra: str, log: Path,
              prefix: list[str] | None = None) -> float:
    """Run one snakemake invocation in ``out``; return its wall time in seconds (exit on failure)."""
    cmd = [*(prefix or []), sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--configfile", str(configfile), "--cores", str(cores), target, *extra]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log, "w") as handle:
        proc = subprocess.run(cmd, cwd=out, stdout=handle, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {log}:\n{log.read_text()[-3000:]}")
    return seconds


def copy_published(collection: Path, dest: Path) -> Path:
    """A hard-linked copy of the published version as a new collection ``dest`` (to time ``weekly`` again)."""
    current = VersionedCollection(collection).current()
    store = VersionedCollection(dest)
    staged = store.stage_copy("copy", lambda path: path.suffix == ".parquet", source=current)
    store.publish(staged, "copy", base=None)
    return dest


# -- queries -------------------------------------------------------------------------------------------------
def example_ids(collection: Path, count: int = 3) -> list[int]:
    """A few object ids spread over the catalog (first id of some pixels)."""
    import pyarrow.parquet as pq
    from hats.catalog import PartitionInfo

    from ppdb_lc.catalog import pixel_files

    cat = VersionedCollection(collection).current() / "dia_object_lc"
    pixels = PartitionInfo.read_from_dir(cat).get_healpix_pixels()
    step = max(1, len(pixels) // count)
    ids = []
    for pixel in pixels[::step][:count]:
        _, first = pixel_files(cat, [pixel])[0]
        ids.append(int(pq.read_table(first, columns=["diaObjectId"])["diaObjectId"][0].as_py()))
    return ids


def time_queries(collection: Path, ids: list[int], spec: DemoSpec, repeats: int) -> dict[str, Any]:
    """Median wall time of an id_search (``ids``) and of a 0.5 deg cone search, each from open_catalog to rows."""
    import contextlib
    import io

    import lsdb

    def id_search() -> int:
        with contextlib.redirect_stdout(io.StringIO()):
            found = lsdb.open_catalog(collection).id_search(values={"diaObjectId": ids})
        return len(found.compute(progress_bar=False))

    def cone_search() -> int:
        cat = lsdb.open_catalog(collection).cone_search(spec.ra_center, spec.dec_center, radius_arcsec=1800.0)
        return len(cat.compute(progress_bar=False))

    result: dict[str, Any] = {}
    for name, query in (("id_search", id_search), ("cone_search", cone_search)):
        query()  # warm-up: imports, file system cache
        times, rows = [], 0
        for _ in range(repeats):
            started = time.perf_counter()
            rows = query()
            times.append(time.perf_counter() - started)
        result[name] = {"seconds": statistics.median(times), "rows": rows}
    return result


# -- collecting --------------------------------------------------------------------------------------------
def rule_figures(records: list[report.BenchmarkRecord], batch: str) -> dict[str, dict[str, float]]:
    """Per-rule seconds and max RSS (MB) of one batch; the three staging jobs (parallel) as their maximum."""
    out: dict[str, dict[str, float]] = {}
    for rec in records:
        if rec.batch != batch:
            continue
        rule = {"stage_dataset": "stage", "bootstrap_collection": "full_build",
                "compact_collection": "full_build"}.get(rec.rule, rec.rule)
        prev = out.get(rule, {"s": 0.0, "mb": 0.0})
        out[rule] = {"s": max(prev["s"], rec.seconds), "mb": max(prev["mb"], rec.max_rss_mb)}
    return out


def night_rows(collection: Path) -> dict[str, int]:
    """Input rows (all three datasets, from the manifests via the ledger) per night."""
    rows: dict[str, int] = {}
    for entry in read_ledger(VersionedCollection(collection).current()):
        rows[entry.night] = rows.get(entry.night, 0) + sum(entry.rows[ds] for ds in apdb.DATASETS)
    return rows


def format_table(steps: list[dict[str, Any]]) -> str:
    head = f"{'step':<27}{'wall s':>8}{'input rows':>12}{'rows/s':>9}"
    for rule in RULES:
        head += f"{rule + ' s':>16}{'MB':>7}"
    lines = [head, "-" * len(head)]
    for step in steps:
        line = f"{step['step']:<27}{step['wall_s']:>8.1f}{step['input_rows']:>12,}" \
               f"{step['input_rows'] / step['wall_s']:>9,.0f}"
        for rule in RULES:
            fig = step["rules"].get(rule)
            line += f"{fig['s']:>16.1f}{fig['mb']:>7.0f}" if fig else f"{'-':>16}{'-':>7}"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    start = dt.date.fromisoformat(args.start)
    nights = tuple((start + dt.timedelta(days=i)).isoformat() for i in range(args.nights))
    spec = DemoSpec(n_objects=args.objects, nights=nights, chunks_per_night=args.chunks_per_night, seed=args.seed)
    threshold = args.pixel_threshold or max(200, args.objects // 25)

    started = time.perf_counter()
    generate_ppdb(out / "ppdb", spec)
    print(f"generated {args.objects} objects, {args.nights} nights x {args.chunks_per_night} chunks in "
          f"{time.perf_counter() - started:.1f} s; pixel_threshold {threshold}", flush=True)

    coll, full = out / "coll", out / "coll_full"
    cfg = write_config(out / "config.yaml", ppdb=out / "ppdb", collection=coll, work=out / "work",
                       threshold=threshold)
    cfg_full = write_config(out / "config_full.yaml", ppdb=out / "ppdb", collection=full, work=out / "work_full",
                            threshold=threshold)
    logs = out / "logs"
    walls: dict[str, float] = {}
    walls["bootstrap"] = snakemake(out, cfg, "bootstrap", args.cores, "--config", f"until={nights[0]}",
                                   log=logs / "bootstrap.log")
    print(f"bootstrap {nights[0]}: {walls['bootstrap']:.1f} s", flush=True)
    profile_svg = None
    for i, night in enumerate(nights[1:], start=1):
        prefix = None
        if args.profile and i == len(nights) - 1:
            if shutil.which("py-spy"):
                profile_svg = out / f"profile_daily_{night}.svg"
                prefix = ["py-spy", "record", "--subprocesses", "--rate", "50", "-o", str(profile_svg), "--"]
            else:
                print("--profile: py-spy not found on PATH (pip install py-spy); running without it")
        walls[night] = snakemake(out, cfg, "daily", args.cores, "--config", f"until={night}",
                                 log=logs / f"daily_{night}.log", prefix=prefix)
        print(f"daily {night}: {walls[night]:.1f} s", flush=True)

    ids = example_ids(coll)
    queries_before = time_queries(coll, ids, spec, args.query_repeats)
    copies = [copy_published(coll, out / f"coll_weekly_{i}") for i in range(1, args.repeats)]
    repeated: dict[str, list[float]] = {"weekly": [], "full_rebuild": []}
    repeated["weekly"].append(snakemake(out, cfg, "weekly", args.cores, log=logs / "weekly.log"))
    print(f"weekly: {repeated['weekly'][-1]:.1f} s", flush=True)
    queries_after = time_queries(coll, ids, spec, args.query_repeats)
    repeated["full_rebuild"].append(snakemake(out, cfg_full, "bootstrap", args.cores, log=logs / "full_rebuild.log"))
    print(f"full rebuild: {repeated['full_rebuild'][-1]:.1f} s", flush=True)
    for i, copy in enumerate(copies, start=1):  # interleaved, so that machine noise hits both alike
        cfg_i = write_config(out / f"config_weekly_{i}.yaml", ppdb=out / "ppdb", collection=copy,
                             work=out / f"work_weekly_{i}", threshold=threshold)
        repeated["weekly"].append(snakemake(out, cfg_i, "weekly", args.cores, log=logs / f"weekly_{i}.log"))
        cfg_i = write_config(out / f"config_full_{i}.yaml", ppdb=out / "ppdb", collection=out / f"coll_full_{i}",
                             work=out / f"work_full_{i}", threshold=threshold)
        repeated["full_rebuild"].append(snakemake(out, cfg_i, "bootstrap", args.cores,
                                                  log=logs / f"full_rebuild_{i}.log"))
        print(f"repeat {i}: weekly {repeated['weekly'][-1]:.1f} s, full rebuild {repeated['full_rebuild'][-1]:.1f} s",
              flush=True)
    walls["weekly"] = statistics.median(repeated["weekly"])
    walls["full_rebuild"] = statistics.median(repeated["full_rebuild"])

    # Figures per step.
    records = report.read_benchmarks(report.benchmark_files(out / "work" / "benchmarks"), out / "work" / "benchmarks")
    full_records = report.read_benchmarks(report.benchmark_files(out / "work_full" / "benchmarks"),
                                          out / "work_full" / "benchmarks")
    rows = night_rows(coll)
    summaries = report.load_summaries(sorted((coll / "ingest" / "batches").glob("*.json")))
    weekly_summary = next(s for s in summaries if report.kind(s) == "weekly")
    weekly_batch = next(r.batch for r in records if r.rule == "compact_collection")
    steps = [{"step": f"bootstrap {nights[0]}", "wall_s": walls["bootstrap"], "input_rows": rows[nights[0]],
              "rules": rule_figures(records, "bootstrap")}]
    profiled = nights[-1] if profile_svg is not None else None
    steps += [{"step": f"daily {night}" + (" (py-spy)" if night == profiled else ""), "wall_s": walls[night],
               "input_rows": rows[night], "rules": rule_figures(records, night)} for night in nights[1:]]
    steps.append({"step": "weekly", "wall_s": walls["weekly"], "input_rows": int(weekly_summary["rows_folded"]),
                  "rules": rule_figures(records, weekly_batch)})
    steps.append({"step": "full rebuild", "wall_s": walls["full_rebuild"], "input_rows": sum(rows.values()),
                  "rules": rule_figures(full_records, "bootstrap")})
    table = format_table(steps)

    dailies = [s for s in steps if s["step"].startswith("daily")]
    ratios: dict[str, float] = {}
    if len(dailies) >= 2:
        first, last = dailies[0], dailies[-1]
        ratios["daily wall, last/first night"] = last["wall_s"] / first["wall_s"]
        ratios["daily wall per input row, last/first night"] = (last["wall_s"] / last["input_rows"]) / (
            first["wall_s"] / first["input_rows"])
        ingest_first, ingest_last = first["rules"].get("ingest_batch"), last["rules"].get("ingest_batch")
        if ingest_first and ingest_last:
            ratios["ingest_batch s, last/first night"] = ingest_last["s"] / ingest_first["s"]
    ratios[f"weekly/full rebuild wall (medians of {args.repeats})"] = walls["weekly"] / walls["full_rebuild"]
    for name in ("id_search", "cone_search"):
        ratios[f"{name} after/before weekly"] = queries_after[name]["seconds"] / queries_before[name]["seconds"]

    lines = [table, "", "wall s of each repeat: " + "; ".join(
        f"{name} {', '.join(f'{v:.1f}' for v in values)}" for name, values in repeated.items()), "", "ratios:"]
    lines += [f"  {name:<46}{value:8.2f}" for name, value in ratios.items()]
    lines += ["", f"queries (median of {args.query_repeats}, open_catalog -> rows):"]
    for name in ("id_search", "cone_search"):
        lines.append(f"  {name:<12} before weekly {queries_before[name]['seconds']:.3f} s "
                     f"({queries_before[name]['rows']} rows), after {queries_after[name]['seconds']:.3f} s "
                     f"({queries_after[name]['rows']} rows)")
    lines.append(f"  id_search ids: {ids}; cone: ({spec.ra_center}, {spec.dec_center}) r=0.5 deg")
    lines.append(f"  catalog pixels before weekly {len(summaries[-2]['pixels']) if 'pixels' in summaries[-2] else '?'}"
                 f", after {len(weekly_summary['pixels'])}; rows before {weekly_summary['rows_folded']}, after "
                 f"{weekly_summary['objects']}")
    full_summary = json.loads((full / "ingest" / "batches" / "bootstrap.json").read_text())
    lines += ["", "inside the job (s; plan = keys + partitioning, fold = read/fold/write + margin rows, "
              "metadata = margin/index/properties):"]
    for name, summary in (("weekly", weekly_summary), ("full rebuild", full_summary)):
        parts = ", ".join(f"{k} {v:.1f}" for k, v in summary.get("step_seconds", {}).items())
        lines.append(f"  {name:<13} {summary['seconds']:.1f} s in the library ({parts}); "
                     f"{summary.get('rows_moved', '?')} rows changed pixel group, {summary.get('margin_rows', '?')} "
                     "margin rows")
    if profile_svg is not None:
        lines.append(f"profile of the last daily (its wall time includes py-spy's overhead): {profile_svg}")
    text = "\n".join(lines)
    print("\n" + text)
    (out / "table.txt").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({
        "args": {k: str(v) for k, v in vars(args).items()}, "pixel_threshold": threshold, "steps": steps,
        "ratios": ratios, "repeats": repeated, "queries_before_weekly": queries_before, "queries_after_weekly": queries_after,
        "profile": str(profile_svg) if profile_svg else None,
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
