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

With ``--slurm`` every Snakemake invocation goes through ``profiles/slurm`` (run it on the cluster's submit host; for
the local one-node cluster, ``tools/slurm-local.sh up`` first, as ``tests/test_slurm.py`` does), and a second table
gives per size and invocation: SLURM jobs per rule, how many ran at once (from the start/end times squeue reports,
polled during the run, and from each job's log: created when its script starts, last line at its end), the largest
peak RSS against the ``--mem`` its job asked for, CPU seconds and wall time.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime
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
SLURM_PROFILE = REPO / "profiles" / "slurm"
SQUEUE_FIELDS = ("id", "state", "cpus", "mem", "comment", "start", "end")
SQUEUE_POLL_S = 15  # finished jobs leave squeue MinJobAge (600 s on the local cluster) after they end
LOG_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3}) ", re.M)


def _peak(log: Path) -> float:
    return float(PEAK.findall(log.read_text())[-1])


def _cpu(log: Path) -> float:
    """CPU seconds the job logged at its end (getrusage; Snakemake's benchmark sampler misses short jobs)."""
    return float(CPU.findall(log.read_text())[-1])


def _slurm_env() -> dict[str, str]:
    """As tests/test_slurm.py: the venv's python/snakemake first on PATH (the jobs run ``python -m snakemake`` with
    --export=ALL, PYTHONPATH included), no SLURM_* variables from an enclosing allocation."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _squeue() -> dict[str, dict[str, str]]:
    """Every job slurmctld still knows, finished ones included, by job id."""
    out = subprocess.run(["squeue", "--states=all", "-h", "-o", "|".join(f"%{c}" for c in "iTCmkSe")],
                         capture_output=True, text=True, check=True, env=_slurm_env()).stdout
    jobs = (dict(zip(SQUEUE_FIELDS, line.split("|"), strict=True)) for line in out.splitlines() if line.strip())
    return {job["id"]: job for job in jobs}


def _span(job: dict[str, str]) -> tuple[float, float] | None:
    """A finished job's start and end (squeue, 1 s resolution), as POSIX seconds; None if it has none."""
    try:
        return datetime.fromisoformat(job["start"]).timestamp(), datetime.fromisoformat(job["end"]).timestamp()
    except ValueError:
        return None


def _max_overlap(spans: list[tuple[float, float]]) -> int:
    """Most intervals [start, end) open at one time (an end and a start at the same time do not overlap)."""
    events = sorted([(end, -1) for _, end in spans] + [(start, 1) for start, _ in spans])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def _log_key(logs: Path, log: Path) -> str:
    """The SLURM comment of the job that wrote ``log`` (the plugin's ``rule_<rule>_wildcards_<values joined by
    _>``): the log paths are work/logs/<rule>/<wildcard values>, with ``part`` before stage_dataset's part number."""
    rule, *values = log.relative_to(logs).with_suffix("").parts
    values[-1] = values[-1].removeprefix("part") if rule == "stage_dataset" else values[-1]
    return _canonical(f"rule_{rule}_wildcards_{'_'.join(values)}" if values else f"rule_{rule}")


def _canonical(comment: str) -> str:
    """A job's SLURM comment with its wildcard values sorted: the log path and the comment may list them in another
    order (ingest_shard: run/batch/shard in the log path, batch/run/shard in the comment)."""
    rule, sep, values = comment.partition("_wildcards_")
    return f"{rule}{sep}{'_'.join(sorted(values.split('_')))}" if sep else comment


class Workflow:
    """Snakemake on one size's work directory: locally, or (``slurm``) through profiles/slurm, recording the SLURM
    jobs of every invocation (squeue, polled while it runs) and summarising them (:meth:`summary`)."""

    def __init__(self, root: Path, cores: int, slurm: bool, output: Path):
        self.root, self.slurm, self.output = root, slurm, output
        self.cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
                    str(root), "--configfile", str(root / "config.yaml"), "--cores", str(cores)]
        self.cmd += ["--profile", str(SLURM_PROFILE)] if slurm else ["--quiet"]
        self.steps: list[dict] = []
        output.unlink(missing_ok=True)

    def __call__(self, step: str, *args: str) -> float:
        """Run one invocation; its wall time in seconds."""
        if not self.slurm:
            start = time.monotonic()
            subprocess.run([*self.cmd, *args], check=True, capture_output=True)
            return time.monotonic() - start
        known = set(_squeue())
        seen: dict[str, dict[str, str]] = {}
        done = threading.Event()

        def poll() -> None:
            while not done.wait(SQUEUE_POLL_S):
                seen.update(_squeue())

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.monotonic()
        proc = subprocess.run([*self.cmd, *args], capture_output=True, text=True, env=_slurm_env())
        wall = time.monotonic() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        done.set()
        poller.join()
        seen.update(_squeue())
        with self.output.open("a") as out:
            out.write(f"===== {step}: {' '.join(args)} (rc {proc.returncode}, {wall:.1f} s)\n")
            out.write(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise RuntimeError(f"snakemake {step} failed (rc {proc.returncode}), output in {self.output}:\n"
                               f"{(proc.stdout + proc.stderr)[-4000:]}")
        jobs = [job for i, job in seen.items() if i not in known and job["comment"].startswith("rule_")]
        self.steps.append({"step": step, "wall_s": wall, "jobs": jobs, "output": proc.stdout + proc.stderr,
                           "submit_cpu_s": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
                           "logs": self._logs()})
        return wall

    def _logs(self) -> dict[str, dict]:
        """Peak RSS, CPU and first/last timestamp of every job log in the work directory, by SLURM comment."""
        logs = self.root / "work" / "logs"
        found = {}
        paths = sorted(logs.rglob("*.log"))
        # the job opens its log when its script starts (ppdb_lc.jobs.job_log) and logs `job done` at its end; most
        # jobs log nothing in between, so the span is the file's birth time (statx, GNU stat) to the last line
        born = subprocess.run(["stat", "-c", "%.9W", *map(str, paths)], capture_output=True, text=True,
                              check=True).stdout.split() if paths else []
        for log, birth in zip(paths, born, strict=True):
            text = log.read_text(errors="replace")
            times = LOG_TIME.findall(text)
            if not PEAK.search(text) or not times:
                continue
            end = datetime.strptime(times[-1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            found[_log_key(logs, log)] = {"peak_mb": _peak(log), "cpu_s": _cpu(log), "span": (float(birth), end)}
        return found

    def summary(self, objects: int, night_rows: int) -> list[dict]:
        """Per invocation and rule: SLURM jobs, concurrency, largest peak RSS vs --mem, CPU, wall time."""
        out = []
        for step in self.steps:
            jobs, logs = step["jobs"], step["logs"]
            submitted = len(re.findall(r"submitted with SLURM jobid \d+", step["output"]))
            states = collections.Counter(job["state"] for job in jobs)
            spans = [span for span in map(_span, jobs) if span is not None]
            if not spans:
                out.append({"objects": objects, "step": step["step"], "slurm_jobs": len(jobs),
                            "wall_s": step["wall_s"]})
                continue
            logged = [logs[_canonical(j["comment"])]["span"] for j in jobs if _canonical(j["comment"]) in logs]
            first, last = min(s for s, _ in spans), max(e for _, e in spans)
            common = {"objects": objects, "night_rows": night_rows, "step": step["step"],
                      "slurm_jobs": len(jobs), "submitted": submitted,
                      "states": ",".join(f"{k}:{v}" for k, v in states.items()),
                      "max_conc": _max_overlap(spans), "max_conc_logs": _max_overlap(logged),
                      "mean_conc": sum(e - s for s, e in spans) / max(last - first, 1),
                      "wall_s": step["wall_s"], "submit_cpu_s": step["submit_cpu_s"]}
            by_rule = collections.defaultdict(list)
            for job in jobs:
                by_rule[re.match(r"rule_(\w+?)(_wildcards_.*)?$", job["comment"])[1]].append(job)
            for rule, rule_jobs in sorted(by_rule.items()):
                mapped = [(logs[_canonical(j["comment"])], int(j["mem"].removesuffix("M")), j["comment"])
                          for j in rule_jobs if _canonical(j["comment"]) in logs]
                top = max(mapped, key=lambda m: m[0]["peak_mb"]) if mapped else ({"peak_mb": float("nan")}, 0, "")
                worst = max(mapped, key=lambda m: m[0]["peak_mb"] / m[1]) if mapped else ({"peak_mb": 0}, 1, "")
                rule_spans = [span for span in map(_span, rule_jobs) if span is not None]
                out.append({**common, "rule": rule, "jobs": len(rule_jobs), "with_log": len(mapped),
                            "rule_max_conc": _max_overlap(rule_spans),
                            "peak_max_mb": top[0]["peak_mb"], "its_mem_mb": top[1],
                            "mem_max_mb": max(int(j["mem"].removesuffix("M")) for j in rule_jobs),
                            "peak_over_mem_max": worst[0]["peak_mb"] / worst[1],
                            "worst_job": worst[2].partition("_wildcards_")[2], "worst_peak_mb": worst[0]["peak_mb"],
                            "worst_mem_mb": worst[1],
                            "cpu_s": sum(m[0]["cpu_s"] for m in mapped),
                            "job_s": sum(e - s for s, e in rule_spans)})
        return out


def run(root: Path, objects: int, rows_per_job: int, cores: int, chunks: int, ingest: bool,
        jobs: list[dict], slurm: list[dict] | None = None) -> list[dict]:
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
    workflow = Workflow(root, cores, slurm is not None, root.parent / f"{objects}_snakemake.log")
    stage_wall = workflow("stage 2 nights", "--notemp", "--until", "stage_dataset", "--", "bootstrap")
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
        workflow("bootstrap night 1", "--config", f"until={NIGHTS[0]}", "--", "bootstrap")
        wall = workflow("daily night 2", "--", "daily")
        log = next((root / "work" / "logs" / "ingest_batch").glob(f"*/{NIGHTS[1]}.log"))
        out.append({**{k: v for k, v in out[0].items() if k not in ("job", "jobs", "peak_min_mb")},
                    "job": "ingest_batch", "jobs": 1, "peak_max_mb": _peak(log), "peak_min_mb": _peak(log),
                    "request_mb": sizing.INGEST.request_mb(sum(rows.values())), "cpu_s": _cpu(log),
                    "wall_s": wall})
    if slurm is not None:
        slurm += workflow.summary(objects, sum(rows.values()))
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
    parser.add_argument("--slurm", action="store_true",
                        help=f"run every Snakemake invocation through {SLURM_PROFILE.relative_to(REPO)} (sbatch, "
                             "squeue on PATH) and print what the SLURM jobs did")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "stage_scaling")
    args = parser.parse_args(argv)
    lines: list[dict] = []
    jobs: list[dict] = []
    slurm: list[dict] | None = [] if args.slurm else None
    chunks = args.chunks_per_night * len(args.objects) if len(args.chunks_per_night) == 1 else args.chunks_per_night
    for objects, per_night in zip(args.objects, chunks, strict=True):
        root = args.out / f"{objects}"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        expected_rows = 3.6 * 0.2875 * objects * per_night  # night 2 of the generator: ~0.29 sources/object/chunk
        lines += run(root, objects, args.rows_per_stage_job, args.cores, per_night,
                     expected_rows <= args.ingest_up_to, jobs, slurm)
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
    if slurm is not None:
        print(f"\nSLURM jobs per invocation and rule ({SLURM_PROFILE.relative_to(REPO)}): jobs = SLURM jobs seen in "
              "squeue (submitted = 'submitted with SLURM jobid' lines); max_conc = most jobs running at once, from "
              "squeue start/end (1 s resolution), max_conc_logs = the same from each job's log, created when its "
              "script starts, to its last line (without Snakemake's start-up in the job), mean_conc = SLURM "
              "job-seconds / span from first start to last end; peak_max_mb = largest kernel VmHWM logged by a job, "
              "its_mem_mb = that job's --mem (squeue), peak_over_mem_max = largest peak/--mem of a job (worst_job: "
              "its wildcards, peak and --mem); cpu_s = CPU logged by the jobs' scripts (getrusage), job_s = SLURM "
              "elapsed summed over the jobs, submit_cpu_s = CPU of "
              "the Snakemake process on the submit host; wall_s = the invocation")
        table = pd.DataFrame(slurm)
        print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}" if v < 10 else f"{v:.1f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
