"""Peak memory per job (kernel VmHWM) of a whole daily (staging, changes, shards, writers, commit) against the size
of the night, with the default sharding (``sharding.rows_per_stage_job`` 1e6, ``rows_per_ingest_job`` 5e5).

    python benchmarks/ingest_scaling.py --objects 13600 54000 217000

For each size: a small collection (a 2000-object night on the same field, bootstrapped) and a 2-night export of
``--objects`` objects (:mod:`ppdb_lc.generator`; night 2 has ~0.29 DiaSources per object and chunk, 1.5x as many
forced sources, ~0.95x object rows, re-emitted rows and update records); ``daily`` ingests both nights. For night 2,
every job's peak RSS and CPU seconds are read from its log (``job done: peak RSS … (kernel VmHWM), CPU … s``), and
the memory it asked SLURM for (the rules' ``mem_mb``, :mod:`ppdb_lc.sizing`). Prints one line per size and rule:
jobs, largest and smallest peak, request, CPU summed over the jobs, and the daily's wall time.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from ppdb_lc import apdb
from ppdb_lc.chunks import discover
from ppdb_lc.generator import DemoSpec, generate_ppdb

REPO = Path(__file__).resolve().parents[1]
PEAK = re.compile(r"job done: peak RSS ([0-9.]+) MB")
CPU = re.compile(r"job done: .*, CPU ([0-9.]+) s")
MEM = re.compile(r"mem_mb=(\d+)")
SMALL_NIGHT = "2026-11-19"
NIGHTS = ("2026-11-20", "2026-11-21")
RULES = ("stage_dataset", "ingest_changes", "ingest_shard", "ingest_pixels", "ingest_write", "ingest_batch")


def _merge(source: Path, target: Path) -> None:
    """Move the chunk directories of one generated export into another (their days differ)."""
    for path in sorted(p for p in source.rglob("*") if p.is_dir() and p.name.isdigit() and len(p.name) > 8):
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), destination)


def _requests(stdout: str) -> dict[str, list[int]]:
    """mem_mb of every job of the dry run, per rule (Snakemake prints each job's resources)."""
    out: dict[str, list[int]] = {}
    rule = None
    for line in stdout.splitlines():
        if line.startswith("rule "):
            rule = line.split()[1].rstrip(":")
        elif rule and "resources:" in line and (found := MEM.search(line)):
            out.setdefault(rule, []).append(int(found.group(1)))
    return out


def run(root: Path, objects: int, chunks: int, cores: int, pixel_threshold: int = 100) -> list[dict]:
    ppdb = root / "ppdb"
    generate_ppdb(ppdb, DemoSpec(n_objects=2000, nights=(SMALL_NIGHT,), chunks_per_night=4, seed=3))
    generate_ppdb(root / "big", DemoSpec(n_objects=objects, nights=NIGHTS, chunks_per_night=chunks, seed=5))
    _merge(root / "big", ppdb)
    night = [c for c in discover(ppdb).complete if c.night == NIGHTS[1]]
    rows = {ds: sum(c.rows(ds) for c in night) for ds in apdb.DATASETS}
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update(ppdb_dir=str(ppdb), collection_dir=str(root / "coll"), work_dir=str(root / "work"))
    # 100: the small night makes ~20 pixels, which the big nights fill; 2160: one pixel (the whole field), so one
    # pixel's daily file of night 1 holds that whole night (what the changes job revises in parts)
    config["catalog"]["pixel_threshold"] = pixel_threshold
    config["sharding"] = {}  # the defaults (config/schema.yaml)
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(root),
           "--configfile", str(root / "config.yaml"), "--cores", str(cores)]
    subprocess.run([*cmd, "--quiet", "--config", f"until={SMALL_NIGHT}", "--", "bootstrap"], check=True,
                   capture_output=True)
    dry = subprocess.run([*cmd, "-n", "--", "daily"], check=True, capture_output=True, text=True)
    requests = _requests(dry.stdout)
    start = time.monotonic()
    subprocess.run([*cmd, "--quiet", "--", "daily"], check=True, capture_output=True)
    wall = time.monotonic() - start
    logs = root / "work" / "logs"
    out = []
    for rule in RULES:
        found = [p for p in (logs / rule).rglob("*.log") if NIGHTS[1] in str(p.relative_to(logs / rule))]
        if not found:
            continue
        peaks = [float(PEAK.findall(p.read_text())[-1]) for p in found]
        cpu = [float(CPU.findall(p.read_text())[-1]) for p in found]
        out.append({"objects": objects, "night_rows": sum(rows.values()), "sources": rows["DiaSource"],
                    "rule": rule, "jobs": len(found), "peak_max_mb": max(peaks), "peak_min_mb": min(peaks),
                    "request_max_mb": max(requests.get(rule, [0])), "cpu_s": sum(cpu), "daily_wall_s": wall})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, nargs="+", default=[13_600, 54_000, 217_000])
    parser.add_argument("--chunks-per-night", type=int, default=64)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "ingest_scaling")
    parser.add_argument("--keep", action="store_true", help="keep each size's export, collection and logs")
    parser.add_argument("--pixel-threshold", type=int, default=100,
                        help="catalog.pixel_threshold of the bootstrap (2160: one pixel for the whole field)")
    args = parser.parse_args(argv)
    lines: list[dict] = []
    for objects in args.objects:
        root = args.out / f"{objects}"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        lines += run(root, objects, args.chunks_per_night, args.cores, args.pixel_threshold)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        print(pd.DataFrame(lines).tail(len(RULES)).to_string(index=False, float_format=lambda v: f"{v:.1f}"),
              flush=True)
    table = pd.DataFrame(lines)
    print(f"\nnight 2 ({NIGHTS[1]}) of a 2-night export, ingested by `daily` with the default sharding; peak RSS = "
          f"kernel VmHWM logged by each job; request = the job's SLURM mem_mb; cpu_s = sum over the night's jobs of "
          f"that rule (getrusage); {args.cores} cores")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    largest = table.groupby("objects")["peak_max_mb"].max()
    print("\nlargest job per size (MB):", ", ".join(f"{o}: {p:.0f}" for o, p in largest.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
