"""Peak memory per job (kernel VmHWM) against the size of a night: staging is split, the ingest is not (yet).

    python benchmarks/stage_scaling.py --objects 25000 100000 400000 --chunks-per-night 8 32 72 \
        --rows-per-stage-job 100000

For each size: generate a 2-night export (:mod:`ppdb_lc.generator`), ``bootstrap`` night 1, ``daily`` night 2 with
``sharding.rows_per_stage_job`` set, then read the peak RSS every job logged at its end (``job done: peak RSS …
(kernel VmHWM)``, i.e. ``getrusage`` ``ru_maxrss``; not Snakemake's 30 s sampler) and the CPU seconds of the
Snakemake benchmark files. Prints one line per size and job kind, and the memory each job asked SLURM for
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
NIGHTS = ("2026-11-20", "2026-11-21")


def run(root: Path, objects: int, rows_per_job: int, cores: int, chunks: int, jobs: list[dict]) -> list[dict]:
    ppdb = root / "ppdb"
    generate_ppdb(ppdb, DemoSpec(n_objects=objects, nights=NIGHTS, chunks_per_night=chunks, seed=5))
    night = [c for c in discover(ppdb).complete if c.night == NIGHTS[1]]
    batch = Batch(NIGHTS[1], NIGHTS[1], night)
    rows = {ds: sum(c.rows(ds) for c in night) for ds in apdb.DATASETS}
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update(ppdb_dir=str(ppdb), collection_dir=str(root / "coll"), work_dir=str(root / "work"))
    config["catalog"]["pixel_threshold"] = max(200, objects // 25)
    config["sharding"] = {"rows_per_stage_job": rows_per_job}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(root),
           "--configfile", str(root / "config.yaml"), "--cores", str(cores), "--quiet"]
    subprocess.run([*cmd[:5], "bootstrap", *cmd[5:], "--config", f"until={NIGHTS[0]}"], check=True,
                   capture_output=True)
    start = time.monotonic()
    subprocess.run([*cmd[:5], "daily", *cmd[5:]], check=True, capture_output=True)
    wall = time.monotonic() - start
    for ds in apdb.DATASETS:  # every staging job: its rows (manifest counts) and its peak
        for i, part in enumerate(batch.stage_parts(ds, rows_per_job)):
            log = root / "work" / "logs" / "stage_dataset" / NIGHTS[1] / ds / f"part{i:03d}.log"
            jobs.append({"objects": objects, "dataset": ds, "part": i, "chunks": len(part),
                         "rows": sum(c.rows(ds) for c in part), "peak_mb": float(PEAK.findall(log.read_text())[-1])})
    out = []
    for kind, pattern in (("stage_dataset", f"stage_dataset/{NIGHTS[1]}/*/part*.log"),
                          ("ingest_batch", f"ingest_batch/*/{NIGHTS[1]}.log")):
        logs = sorted((root / "work" / "logs").glob(pattern))
        peaks = [float(PEAK.findall(p.read_text())[-1]) for p in logs]
        bench = sorted((root / "work" / "benchmarks").glob(pattern.replace(".log", ".tsv")))
        cpu = sum(float(pd.read_csv(b, sep="\t")["cpu_time"].iloc[0]) for b in bench)
        out.append({"objects": objects, "night_rows": sum(rows.values()), **rows, "job": kind, "jobs": len(logs),
                    "peak_max_mb": max(peaks), "peak_min_mb": min(peaks), "cpu_s": cpu, "daily_wall_s": wall})
    out[0]["request_mb"] = sizing.STAGE.request_mb(rows_per_job)
    out[1]["request_mb"] = sizing.INGEST.request_mb(sum(rows.values()))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, nargs="+", default=[25_000, 100_000, 400_000])
    parser.add_argument("--rows-per-stage-job", type=int, default=100_000)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--chunks-per-night", type=int, nargs="+", default=[8],
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
        lines += [dict(line, chunks_per_night=per_night)
                  for line in run(root, objects, args.rows_per_stage_job, args.cores, per_night, jobs)]
        shutil.rmtree(root, ignore_errors=True)
    table = pd.DataFrame(lines)
    print(f"rows_per_stage_job = {args.rows_per_stage_job}; night 2 of a 2-night export; peak RSS = kernel VmHWM "
          f"logged by each job; request = ppdb_lc.sizing (SLURM mem_mb)")
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
