"""Operational behaviour: bad input, config errors, refusals, resume after interruption, crashed weekly, lint."""

from __future__ import annotations

import json
import os
import subprocess
import time

import psutil
import pytest

from conftest import NIGHTS, Workspace, expected_catalog, read_collection, tree_digest

pytestmark = pytest.mark.workflow


@pytest.fixture
def bootstrapped(workspace: Workspace) -> Workspace:
    workspace.snakemake("bootstrap", "--config", f"until={NIGHTS[0]}")
    return workspace


def pending_chunk(ws: Workspace, night: str):
    manifests = sorted(ws.ppdb.rglob("*manifest.json"), key=lambda p: int(p.parent.name))
    from ppdb_lc.chunks import dayobs

    return next(m for m in manifests if dayobs(int(m.parent.name)) == night and (m.parent / "DiaSource.parquet").exists())


def test_bad_input_fails_before_any_job_and_changes_nothing(bootstrapped: Workspace):
    ws = bootstrapped
    manifest = pending_chunk(ws, NIGHTS[1])
    data = json.loads(manifest.read_text())
    if "files" in data:
        data["files"]["DiaSource.parquet"]["row_count"] += 1
    else:
        data["table_data"]["DiaSource"]["row_count"] += 1
    manifest.write_text(json.dumps(data))
    before = tree_digest(ws.collection)
    proc = ws.snakemake("daily", check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "bad input in the PPDB export" in out and str(manifest.parent) in out and "manifest says" in out
    assert tree_digest(ws.collection) == before
    assert not (ws.work / "batches" / NIGHTS[1]).exists()
    # the operator may choose to leave the chunk out: the rest is ingested
    ws.snakemake("daily", "--config", "on_invalid_chunk=skip", f"until={NIGHTS[1]}")
    assert int(manifest.parent.name) not in {int(r.split(",")[0]) for r in
                                             (ws.collection / "ingest/ledger.csv").read_text().splitlines()[1:]}


def test_config_typo_and_bad_value_fail_at_start(workspace: Workspace):
    proc = workspace.snakemake("daily", "--config", "pixel_treshold=5", check=False)
    assert proc.returncode != 0 and "pixel_treshold" in proc.stdout + proc.stderr
    proc = workspace.snakemake("daily", "--config", "until=yesterday", check=False)
    assert proc.returncode != 0 and "yesterday" in proc.stdout + proc.stderr


def test_bootstrap_refuses_existing_collection_and_daily_needs_one(workspace: Workspace):
    proc = workspace.snakemake("daily", check=False)
    assert proc.returncode != 0 and "run `snakemake bootstrap` first" in proc.stdout + proc.stderr
    workspace.snakemake("bootstrap", "--config", f"until={NIGHTS[0]}")
    proc = workspace.snakemake("bootstrap", check=False)
    assert proc.returncode != 0 and "already exists" in proc.stdout + proc.stderr


def test_interrupted_after_imports_resumes_to_the_same_catalog(bootstrapped: Workspace, tmp_path_factory):
    ws = bootstrapped
    ws.snakemake("daily", "--until", "stage_dataset", "--config", f"until={NIGHTS[2]}")
    staged = sorted(p.name for p in (ws.work / "batches").glob("*/staged/*"))
    assert staged == sorted(["DiaForcedSource", "DiaObject", "DiaSource"] * 2)
    assert os.readlink(ws.collection).endswith("-bootstrap")  # nothing committed yet
    resumed = ws.snakemake("daily", "--config", f"until={NIGHTS[2]}")
    log = resumed.stdout + resumed.stderr
    assert "rule stage_dataset" not in log and "rule ingest_batch" in log
    reference = Workspace(tmp_path_factory.mktemp("reference"))
    import shutil

    shutil.copytree(ws.ppdb, reference.ppdb)
    reference.write_config()
    reference.snakemake("bootstrap", "--config", f"until={NIGHTS[0]}")
    reference.snakemake("daily", "--config", f"until={NIGHTS[2]}")
    a = read_collection(ws.collection).sort_values(["diaObjectId", "validityStartMjdTai"]).reset_index(drop=True)
    b = read_collection(reference.collection).sort_values(["diaObjectId", "validityStartMjdTai"]).reset_index(drop=True)
    assert len(a) == len(b) and (a["diaObjectId"].to_numpy() == b["diaObjectId"].to_numpy()).all()
    assert (a["diaSource"].nest.len() == b["diaSource"].nest.len()).all()


def kill_job_once_it_writes(ws: Workspace, proc: subprocess.Popen, script: str) -> None:
    """SIGKILL the job running ``script`` (as the OOM killer or a node failure would) once it has written pixels."""
    staging = ws.collection.parent / f"{ws.collection.name}.versions"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if any(staging.glob(".staging-weekly-*/dia_object_lc/dataset/Norder=*/Dir=*/Npix=*/*.parquet")):
            jobs = [p for p in psutil.Process(proc.pid).children(recursive=True) if script in " ".join(p.cmdline())]
            if jobs:
                for job in jobs:
                    job.kill()
                return
        time.sleep(0.005)
    raise AssertionError(f"the {script} job never started writing (snakemake exit code {proc.poll()})")


def test_crashed_weekly_leaves_previous_collection_usable(bootstrapped: Workspace):
    ws = bootstrapped
    ws.snakemake("daily", "--config", f"until={NIGHTS[1]}")
    published = os.readlink(ws.collection)
    before = tree_digest(ws.collection)
    proc = ws.start("weekly")
    kill_job_once_it_writes(ws, proc, "compact_collection")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, out + err
    assert os.readlink(ws.collection) == published and tree_digest(ws.collection) == before
    assert len(read_collection(ws.collection)) > 0
    ws.snakemake("weekly")
    assert "weekly" in os.readlink(ws.collection)
    catalog = read_collection(ws.collection)
    assert catalog["diaObjectId"].is_unique
    assert set(catalog["diaObjectId"]) == expected_catalog(ws.ppdb, NIGHTS[:2])["ids"]


def test_lint_is_clean(workspace: Workspace):
    proc = workspace.snakemake("--lint", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations" in proc.stdout + proc.stderr
