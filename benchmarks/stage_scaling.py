"""Peak memory per job (kernel VmHWM) against the size of a night: staging is split, the ingest is not (yet).

    python benchmarks/stage_scaling.py --objects 13600 54000 217000 --chunks-per-night 64 \
        --rows-per-stage-job 250000

(night 2 then has ~0.25 M, 1 M and 4 M DiaSources, with ~1.5x as many forced sources and ~0.95x object rows).

For each size: generate a 2-night export (:mod:`ppdb_lc.generator`), stage both nights with
``sharding.rows_per_stage_job`` set (and, up to ``--ingest-up-to`` rows, ``bootstrap`` night 1 + ``daily`` night 2),
then read the peak RSS every job logged at its end (``job done: peak RSS …
(kernel VmHWM)``, i.e. ``getrusage`` ``ru_maxrss``; not Snakemake's 30 s sampler) and its CPU seconds (also
``getrusage``). Prints one line per size and job kind, and the memory each job asked SLURM for
(:mod:`ppdb_lc.sizing`).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ppdb_lc import apdb, sizing
from ppdb_lc.chunks import discover
from ppdb_lc.generator import DemoSpec, generate_ppdb
from ppdb_lc.ledger import Batch

REPO = Path(__file__).resolve().parents[1]
PEAK = re.compile(r"job done: peak RSS ([0-9.]+) MB")
CPU = re.compile(r"job done: .*, CPU ([0-9.]+) s")
NIGHTS = ("2026-11-20", "2026-11-21")


def _peak(log: Path) -> float:
    return float(PEAK.findall(log.read_text())[-1])


def _cpu(log: Path) -> float:
    """CPU seconds the job logged at its end (getrusage; Snakemake's benchmark sampler misses short jobs)."""
    return float(CPU.findall(log.read_text())[-1])


def run(root: Path, objects: int, rows_per_job: int, cores: int, chunks: int, ingest: bool,
        jobs: list[dict]) -> list[dict]:
    """Stage both nights (``bootstrap --until stage_dataset``: staging jobs only); with ``ingest``, then also
    bootstrap night 1 and ingest night 2 (``daily``), whose job reads the whole night."""
    ppdb = root / "ppdb"
    generate_ppdb(ppdb, DemoSpec(n_objects=objects, nights=NIGHTS, chunks_per_night=chunks, seed=5))
    night = [c for c in discover(ppdb).complete if c.night == NIGHTS[1]]
    rows = {ds: sum(c.rows(ds) for c in night) for ds in apdb.DATASETS}
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update(ppdb_dir=str(ppdb), collection_dir=str(root / "coll"), work_dir=str(root / "work"))
    config["catalog"]["pixel_threshold"] = max(200, objects // 25)
    config["sharding"] = {"rows_per_stage_job": rows_per_job}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(root),
           "--configfile", str(root / "config.yaml"), "--cores", str(cores), "--quiet"]
    start = time.monotonic()
    subprocess.run([*cmd, "--notemp", "--until", "stage_dataset", "--", "bootstrap"], check=True, capture_output=True)
    stage_wall = time.monotonic() - start
    logs = root / "work" / "logs" / "stage_dataset" / "bootstrap"
    batch = Batch("bootstrap", "bootstrap", discover(ppdb).complete)
    night_jobs = []
    for ds in apdb.DATASETS:  # every staging job of night 2: its rows (manifest counts) and its peak
        for i, part in enumerate(batch.stage_parts(ds, rows_per_job)):
            if part[0].night != NIGHTS[1]:
                continue
            log = logs / ds / f"part{i:03d}.log"
            night_jobs.append({"objects": objects, "dataset": ds, "part": i, "chunks": len(part),
                               "rows": sum(c.rows(ds) for c in part), "peak_mb": _peak(log), "cpu_s": _cpu(log)})
    jobs += night_jobs
    peaks = [j["peak_mb"] for j in night_jobs]
    out = [{"objects": objects, "chunks_per_night": chunks, "night_rows": sum(rows.values()), **rows,
            "job": "stage_dataset", "jobs": len(night_jobs), "peak_max_mb": max(peaks), "peak_min_mb": min(peaks),
            "request_mb": sizing.STAGE.request_mb(max(j["rows"] for j in night_jobs)),
            "cpu_s": sum(j["cpu_s"] for j in night_jobs), "wall_s": stage_wall}]
    if ingest:
        shutil.rmtree(root / "work")
        subprocess.run([*cmd, "--config", f"until={NIGHTS[0]}", "--", "bootstrap"], check=True, capture_output=True)
        start = time.monotonic()
        subprocess.run([*cmd, "--", "daily"], check=True, capture_output=True)
        wall = time.monotonic() - start
        log = next((root / "work" / "logs" / "ingest_batch").glob(f"*/{NIGHTS[1]}.log"))
        out.append({**{k: v for k, v in out[0].items() if k not in ("job", "jobs", "peak_min_mb")},
                    "job": "ingest_batch", "jobs": 1, "peak_max_mb": _peak(log), "peak_min_mb": _peak(log),
                    "request_mb": sizing.INGEST.request_mb(sum(rows.values())), "cpu_s": _cpu(log),
                    "wall_s": wall})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, nargs="+", default=[25_000, 100_000, 400_000])
    parser.add_argument("--rows-per-stage-job", type=int, default=100_000)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--ingest-up-to", type=int, default=5_000_000,
                        help="also bootstrap + ingest night 2 when it has at most this many rows")
    parser.add_argument("--chunks-per-night", type=int, nargs="+", default=[64],
                        help="per size (one value: the same for all); a night has ~60 chunks of 600 s whatever its "
                             "size, so more rows per night means larger chunks")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "stage_scaling")
    args = parser.parse_args(argv)
    lines: list[dict] = []
    jobs: list[dict] = []
    chunks = args.chunks_per_night * len(args.objects) if len(args.chunks_per_night) == 1 else args.chunks_per_night
    for objects, per_night in zip(args.objects, chunks, strict=True):
        root = args.out / f"{objects}"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        expected_rows = 3.6 * 0.2875 * objects * per_night  # night 2 of the generator: ~0.29 sources/object/chunk
        lines += run(root, objects, args.rows_per_stage_job, args.cores, per_night,
                     expected_rows <= args.ingest_up_to, jobs)
        shutil.rmtree(root, ignore_errors=True)
    table = pd.DataFrame(lines)
    print(f"rows_per_stage_job = {args.rows_per_stage_job}; night 2 of a 2-night export; peak RSS = kernel VmHWM "
          f"logged by each job; request = ppdb_lc.sizing (SLURM mem_mb) for the largest job; cpu_s = sum over the "
          f"night's jobs (getrusage, logged by each job); {args.cores} cores")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    per_job = pd.DataFrame(jobs)
    print("\nstaging jobs: rows read and peak RSS, per dataset (largest job of each size)")
    largest = per_job.sort_values("rows").groupby(["objects", "dataset"]).tail(1).sort_values(["objects", "dataset"])
    print(largest.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    for ds, group in per_job.groupby("dataset"):
        if group["rows"].nunique() > 1:
            slope, base = np.polyfit(group["rows"] / 1e6, group["peak_mb"], 1)
            print(f"fit {ds}: peak = {base:.0f} MB + {slope:.0f} MB per million rows ({len(group)} jobs); "
                  f"sizing.STAGE: {sizing.STAGE.base_mb:.0f} + {sizing.STAGE.per_million_mb:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
