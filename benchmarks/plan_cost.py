"""CPU of planning (``snakemake -n daily``) against the number of jobs the plan holds.

    python benchmarks/plan_cost.py --rows-per-job 3000 300 100 50

The demo export (``config/config.yaml``'s ``demo`` section: 4 nights) is generated and bootstrapped on its first
night in a scratch directory. Then, for each ``--rows-per-job`` R (``sharding.rows_per_stage_job`` and
``rows_per_ingest_job`` both R, so the 3 remaining nights make more staging, shard and writer jobs as R falls),
``snakemake -n daily`` plans the run; the jobs it lists and the planning process's CPU and wall seconds are
printed. The submit host pays this at every invocation (``-n``, ``status``, the run itself), and Snakemake's
scheduler walks the same graph while the run goes on, so it must grow with the jobs, no faster.
"""

from __future__ import annotations

import argparse
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def snakemake(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), *args],
                          cwd=root, capture_output=True, text=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows-per-job", type=int, nargs="+", default=[3000, 300, 100, 50])
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/plan_cost"))
    args = parser.parse_args()
    root = args.scratch
    shutil.rmtree(root, ignore_errors=True)
    (root / "config").mkdir(parents=True)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update(ppdb_dir=str(root / "ppdb"), collection_dir=str(root / "coll"), work_dir=str(root / "work"))
    first = config["demo"]["start"]

    def write(rows: int) -> None:
        config["sharding"] = {"rows_per_stage_job": rows, "rows_per_ingest_job": rows}
        (root / "config" / "config.yaml").write_text(yaml.safe_dump(config))

    write(3000)
    for step in (["--cores", "2", "demo"], ["--cores", "2", "--config", f"until={first}", "--", "bootstrap"]):
        out = snakemake(root, *step)
        if out.returncode:
            raise SystemExit(out.stderr[-3000:])
    print(f"{'rows/job':>9} {'jobs':>6} {'CPU s':>7} {'wall s':>7}")
    for rows in args.rows_per_job:
        write(rows)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.time()
        out = snakemake(root, "-n", "daily")
        wall = time.time() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if out.returncode:
            raise SystemExit(out.stderr[-3000:])
        jobs = int(re.findall(r"^total\s+(\d+)", out.stdout, re.M)[-1])
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        print(f"{rows:>9} {jobs:>6} {cpu:>7.1f} {wall:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
