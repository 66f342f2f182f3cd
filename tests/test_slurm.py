"""The workflow through profiles/slurm on a real single-node SLURM cluster (tools/slurm-local.sh).

Needs root and apt on Debian (the fixture installs slurmctld/slurmd/slurm-client/munge if missing; the tests are
skipped only when that is impossible). Takes 3-4.5 minutes on 2 cores: every SLURM job pays two Snakemake start-ups.
Deselect with ``pytest -m "not slurm"``. SLURM_BASE (default /tmp/ppdb-lc-slurm) holds the cluster's state and logs.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
SLURM_LOCAL = REPO / "tools" / "slurm-local.sh"
SLURM_BASE = Path(os.environ.get("SLURM_BASE", "/tmp/ppdb-lc-slurm"))
UNAVAILABLE = 3  # exit code of slurm-local.sh when the packages cannot be installed
FIRST_NIGHT = "2026-11-20"
DEMO = {"objects": 600, "nights": 2, "start": FIRST_NIGHT, "chunks_per_night": 2, "seed": 7}
ROWS_PER_STAGE_JOB = 120  # small: each night's tables are staged in several SLURM jobs that run concurrently
ROWS_PER_INGEST_JOB = 500  # and the second night is built in several shard and writer jobs
RUN_TIMEOUT = 900  # seconds per Snakemake run; a run that hangs on status polling must not hang the suite


def _env() -> dict[str, str]:
    """The venv's python/snakemake first on PATH (the plugin's jobs run `python -m snakemake` with --export=ALL);
    no SLURM_* variables from an enclosing allocation."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _slurm_local(command: str) -> subprocess.CompletedProcess:
    env = dict(_env(), SLURM_BASE=str(SLURM_BASE))  # read by tools/slurm-local.sh only
    return subprocess.run(["bash", str(SLURM_LOCAL), command], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def slurm_cluster(request: pytest.FixtureRequest) -> Path:
    """A fresh local SLURM cluster for this module (partition `debug`); torn down afterwards."""
    request.addfinalizer(lambda: _slurm_local("down"))
    proc = _slurm_local("up")
    if proc.returncode == UNAVAILABLE:
        pytest.skip(f"SLURM cannot be installed here (tools/slurm-local.sh up): {proc.stderr.strip()[-1000:]}")
    assert proc.returncode == 0, f"tools/slurm-local.sh up failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}"
    return SLURM_BASE


class Run:
    """One work directory: its config file, PPDB export, collection and Snakemake invocations."""

    def __init__(self, root: Path, profile: str, ppdb: Path):
        self.root = root
        self.profile = REPO / "profiles" / profile
        self.collection = root / "coll"
        self.outputs: list[str] = []
        root.mkdir(parents=True, exist_ok=True)
        self.configfile = root / "run.yaml"
        self.configfile.write_text(yaml.safe_dump({
            "ppdb_dir": str(ppdb), "collection_dir": str(self.collection), "work_dir": str(root / "work"),
            "demo": DEMO, "sharding": {"rows_per_stage_job": ROWS_PER_STAGE_JOB,
                                                      "rows_per_ingest_job": ROWS_PER_INGEST_JOB},
        }))

    def snakemake(self, target: str, *extra: str, profile: bool = True) -> str:
        cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
               "--configfile", str(REPO / "config" / "config.yaml"), str(self.configfile), "--cores", "2"]
        if profile:
            cmd += ["--profile", str(self.profile)]
        cmd += [target, *extra]
        start = time.monotonic()
        proc = subprocess.run(cmd, cwd=self.root, capture_output=True, text=True, env=_env(), timeout=RUN_TIMEOUT)
        output = proc.stdout + proc.stderr
        print(f"[{time.monotonic() - start:5.1f} s] {' '.join(cmd[3:])}")
        if proc.returncode != 0:
            raise AssertionError(f"snakemake {target} failed (rc {proc.returncode}) in {self.root}:\n"
                                 f"{output[-6000:]}{self._slurm_logs()}")
        self.outputs.append(output)
        return output

    def _slurm_logs(self) -> str:
        logs = sorted((self.root / ".snakemake" / "slurm_logs").rglob("*.log"))
        return "".join(f"\n--- {p}:\n{p.read_text(errors='replace')[-3000:]}" for p in logs)

    def job_counts(self, kind: str) -> collections.Counter:
        """Jobs per rule in this run's Snakemake output: kind 'rule' (submitted) or 'localrule' (run here)."""
        pattern = re.compile(rf"^{kind} (\w+):$", re.M)
        return collections.Counter(m for out in self.outputs for m in pattern.findall(out))


def _sequence(run: Run) -> None:
    """bootstrap from the first night, then daily for the remaining one."""
    run.snakemake("bootstrap", "--config", f"until={FIRST_NIGHT}")
    run.snakemake("daily")


def _expected_jobs(ppdb: Path) -> tuple[collections.Counter, dict[str, set[str]]]:
    """Jobs per rule of bootstrap(FIRST_NIGHT) + daily, and the memory each rule's jobs ask for (--mem), computed
    from the export's manifests with the staging split and the memory model (ppdb_lc.ledger, ppdb_lc.sizing)."""
    from ppdb_lc import sizing
    from ppdb_lc.apdb import DATASETS
    from ppdb_lc.chunks import discover
    from ppdb_lc.ledger import Batch
    from ppdb_lc.stage import UPDATES

    chunks = discover(ppdb).complete
    first = Batch("bootstrap", "bootstrap", [c for c in chunks if c.night <= FIRST_NIGHT])
    later = [Batch(n, n, [c for c in chunks if c.night == n]) for n in sorted({c.night for c in chunks} - {FIRST_NIGHT})]
    counts, mem = collections.Counter(bootstrap_collection=1, ingest_batch=len(later)), collections.defaultdict(set)
    for batch in (first, *later):
        for ds in (*DATASETS, UPDATES):
            for part in batch.stage_parts(ds, ROWS_PER_STAGE_JOB):
                counts["stage_dataset"] += 1
                if ds == UPDATES:  # sized by the night's records (manifest count, or the file size bound)
                    mem["stage_dataset"].add(f"{sizing.STAGE_UPDATES.request_mb(sum(c.update_records() for c in part))}M")
                else:
                    mem["stage_dataset"].add(f"{sizing.STAGE.request_mb(sum(c.rows(ds) for c in part))}M")
    mem["bootstrap_collection"] = {f"{sizing.BOOTSTRAP.request_mb(sum(first.rows(ds) for ds in DATASETS))}M"}
    for batch in later:  # as rules/common.smk: a sharded night's build jobs, and its commit
        rows, shards = sum(batch.rows(ds) for ds in DATASETS), batch.ingest_shards(ROWS_PER_INGEST_JOB)
        if shards == 1:
            mem["ingest_batch"].add(f"{sizing.INGEST.request_mb(rows)}M")
            continue
        counts.update(ingest_changes=1, ingest_shard=shards, ingest_pixels=1, ingest_write=shards)
        mem["ingest_batch"].add(f"{sizing.COMMIT.request_mb(rows)}M")
        mem["ingest_pixels"].add(f"{sizing.COMMIT.request_mb(rows)}M")
        mem["ingest_changes"].add(f"{sizing.CHANGES.request_mb(sum(c.update_records() for c in batch.chunks))}M")
        for rule in ("ingest_shard", "ingest_write"):
            mem[rule].add(f"{sizing.SHARD.request_mb(rows / shards)}M")
    return counts, mem


def _squeue_jobs() -> list[dict[str, str]]:
    """All jobs slurmctld still knows (MinJobAge=600 keeps finished ones): id, state, cpus, memory, comment."""
    out = subprocess.run(["squeue", "--states=all", "-h", "-o", "%i|%T|%C|%m|%k"], capture_output=True, text=True,
                         check=True, env=_env()).stdout
    keys = ("id", "state", "cpus", "mem", "comment")
    return [dict(zip(keys, line.split("|"), strict=True)) for line in out.splitlines() if line.strip()]


def _summary(collection: Path) -> pd.DataFrame:
    """One row per collection row: ids, positions and light-curve lengths, in a canonical order."""
    import lsdb

    frame = lsdb.open_catalog(collection).compute()
    summary = pd.DataFrame({
        "diaObjectId": frame["diaObjectId"].to_numpy(dtype="int64"),
        "ra": frame["ra"].to_numpy(dtype="float64"),
        "dec": frame["dec"].to_numpy(dtype="float64"),
        "n_source": np.asarray(frame["diaSource"].nest.len(), dtype="int64"),
        "n_forced": np.asarray(frame["diaForcedSource"].nest.len(), dtype="int64"),
    })
    # an object can have one row per committed night until the weekly compaction: sort on every column
    return summary.sort_values(list(summary.columns), kind="stable").reset_index(drop=True)


def test_slurm_profile_matches_local_run(slurm_cluster: Path, tmp_path: Path) -> None:
    # the demo export, generated once (locally) and copied into both work directories
    demo = Run(tmp_path / "demo", "local", tmp_path / "demo" / "ppdb")
    demo.snakemake("demo", profile=False)
    slurm = Run(tmp_path / "slurm", "slurm", tmp_path / "slurm" / "ppdb")
    local = Run(tmp_path / "local", "local", tmp_path / "local" / "ppdb")
    for run in (slurm, local):
        shutil.copytree(demo.root / "ppdb", run.root / "ppdb")

    jobs_before = {job["id"] for job in _squeue_jobs()}
    # the local reference runs alongside: it uses the CPU the SLURM run leaves idle between status checks
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        reference = pool.submit(_sequence, local)
        _sequence(slurm)
        reference.result()

    # every job of a rule with a script went through sbatch, none ran on the submit host
    submitted = slurm.job_counts("rule")
    expected, expected_mem = _expected_jobs(slurm.root / "ppdb")
    assert expected["stage_dataset"] > 8, expected  # more than one staging job per table and batch
    assert expected["ingest_shard"] >= 2, expected  # the second night is built by several shard jobs
    assert submitted == expected, slurm.outputs
    assert set(slurm.job_counts("localrule")) == {"bootstrap", "daily"}
    assert local.job_counts("localrule") == expected + collections.Counter(bootstrap=1, daily=1)
    assert all(len(re.findall(r"submitted with SLURM jobid \d+", out)) > 0 for out in slurm.outputs)

    jobs = [job for job in _squeue_jobs() if job["id"] not in jobs_before and job["comment"].startswith("rule_")]
    per_rule = collections.Counter(re.match(r"rule_(\w+?)(_wildcards_.*)?$", job["comment"])[1] for job in jobs)
    assert all(per_rule[rule] >= n for rule, n in submitted.items()), (per_rule, submitted)
    assert sum(per_rule.values()) >= sum(submitted.values())
    assert {job["state"] for job in jobs} == {"COMPLETED"}, jobs
    # the profile's per-rule resources reached sbatch (threads -> CPUs, mem_mb -> --mem)
    # (mem_mb: the profile's constant, or the job's own request computed from its input rows)
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    for job in jobs:
        rule, cpus, mem = re.match(r"rule_(\w+?)(_wildcards_.*)?$", job["comment"])[1], job["cpus"], job["mem"]
        assert int(cpus) == profile["set-threads"][rule], (rule, cpus)
        if "mem_mb" in profile["set-resources"][rule]:
            assert mem == f"{profile['set-resources'][rule]['mem_mb']}M", (rule, mem)
        else:
            assert mem in expected_mem[rule], (rule, mem, expected_mem[rule])

    log = (slurm_cluster / "log" / "slurmctld.log").read_text(errors="replace")
    assert log.count("_slurm_rpc_submit_batch_job") >= sum(submitted.values())

    # the same collection as the local run
    got, want = _summary(slurm.collection), _summary(local.collection)
    assert len(got) > 0
    from ppdb_lc.versions import VersionedCollection

    ours, theirs = VersionedCollection(slurm.collection).current(), VersionedCollection(local.collection).current()
    assert ours != theirs and ours.name == theirs.name
    assert got["diaObjectId"].tolist() == want["diaObjectId"].tolist()
    np.testing.assert_array_equal(got["ra"].to_numpy(), want["ra"].to_numpy())
    np.testing.assert_array_equal(got["dec"].to_numpy(), want["dec"].to_numpy())
    np.testing.assert_array_equal(got["n_source"].to_numpy(), want["n_source"].to_numpy())
    np.testing.assert_array_equal(got["n_forced"].to_numpy(), want["n_forced"].to_numpy())
