"""Operational behaviour: bad input, config errors, refusals, resume after interruption, crashed weekly, lint."""

from __future__ import annotations

import json
import subprocess
import time

import psutil
import pytest

from conftest import NIGHTS, Workspace, assert_no_exception, expected_catalog, read_collection, tree_digest

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
                                             (ws.published / "ingest/ledger.csv").read_text().splitlines()[1:]}


def test_config_typo_and_bad_value_fail_at_start(workspace: Workspace):
    proc = workspace.snakemake("daily", "--config", "pixel_treshold=5", check=False)
    assert proc.returncode != 0 and "pixel_treshold" in proc.stdout + proc.stderr
    proc = workspace.snakemake("daily", "--config", "until=yesterday", check=False)
    assert proc.returncode != 0 and "yesterday" in proc.stdout + proc.stderr
    # the schema only checks the shape: an impossible date is refused when the settings are read, before any job
    proc = workspace.snakemake("daily", "-n", "--config", "until=2026-13-45", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "until='2026-13-45' is not a valid date" in out, out
    assert not workspace.work.exists() and not workspace.collection.exists()


def test_bootstrap_refuses_existing_collection_and_daily_needs_one(workspace: Workspace):
    proc = workspace.snakemake("daily", check=False)
    assert proc.returncode != 0 and "run `snakemake bootstrap` first" in proc.stdout + proc.stderr
    proc = workspace.snakemake("bootstrap", "--config", f"until={NIGHTS[0]}")
    # no input function of another rule fails on the bootstrap batch name (ingest_batch is for nights only)
    assert_no_exception(proc.stderr)
    proc = workspace.snakemake("bootstrap", check=False)
    assert proc.returncode != 0 and "already exists" in proc.stdout + proc.stderr


def test_interrupted_after_imports_resumes_to_the_same_catalog(bootstrapped: Workspace, tmp_path_factory):
    ws = bootstrapped
    ws.snakemake("daily", "--until", "stage_dataset", "--config", f"until={NIGHTS[2]}")
    staged = sorted(p.name for p in (ws.work / "batches").glob("*/staged/*"))
    assert staged == sorted(["DiaForcedSource", "DiaObject", "DiaSource", "updates"] * 2)
    assert ws.published.name.endswith("-bootstrap")  # nothing committed yet
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
    staging = ws.collection / "versions"
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
    published = ws.published
    before = tree_digest(published), (ws.collection / "collection.properties").read_text()
    proc = ws.start("weekly")
    kill_job_once_it_writes(ws, proc, "compact_collection")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, out + err
    assert ws.published == published
    assert (tree_digest(published), (ws.collection / "collection.properties").read_text()) == before
    assert len(read_collection(ws.collection)) > 0
    ws.snakemake("weekly")
    assert "weekly" in ws.published.name
    catalog = read_collection(ws.collection)
    assert catalog["diaObjectId"].is_unique
    assert set(catalog["diaObjectId"]) == expected_catalog(ws.ppdb, NIGHTS[:2])["ids"]


def test_lint_is_clean(workspace: Workspace):
    proc = workspace.snakemake("--lint", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations" in proc.stdout + proc.stderr


def _update_chunk(ws: Workspace, chunk_id: int, payloads: list, *, checksum_of=None) -> None:
    """A flat-layout chunk that holds only update records, with a new-format manifest."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    directory = ws.ppdb / str(chunk_id)
    directory.mkdir(parents=True)
    path = directory / "updates.parquet"
    pq.write_table(pa.table({
        "apdb_replica_chunk": pa.array([chunk_id] * len(payloads), pa.int64()),
        "update_time_ns": pa.array([(chunk_id + 10) * 10**9] * len(payloads), pa.int64()),
        "update_order": pa.array(range(len(payloads)), pa.int64()),
        "json_payload": pa.array([p if isinstance(p, str) else json.dumps(p) for p in payloads], pa.string()),
    }), path)
    data = path.read_bytes()
    (directory / "manifest.json").write_text(json.dumps({
        "replica_chunk_id": str(chunk_id), "unique_id": f"u-{chunk_id}", "schema_version": "10.0.0",
        "exported_at": "2026-11-22T00:00:00Z", "last_update_time": str(chunk_id + 20),
        "files": {"updates.parquet": {"row_count": len(payloads), "size_bytes": len(data),
                                      "checksum": checksum_of or hashlib.sha256(data).hexdigest()}}}))


def test_bad_update_records_change_nothing_and_name_the_record(bootstrapped: Workspace):
    """Malformed JSON, an unknown type, a missing key field, a checksum mismatch: the daily fails with the chunk,
    record and reason, and the collection stays byte-identical."""
    import shutil

    ws = bootstrapped
    chunk_id = 1795278000  # 2026-11-21T16:20Z: a daytime chunk of dayobs 2026-11-21
    good = {"update_type": "withdraw_diasource", "diaSourceId": 1, "timeWithdrawnMjdTai": 61366.0, "ra": 150.0,
            "dec": 2.0, "midpointMjdTai": 61365.0}
    cases = [
        (["{broken"], None, "not valid JSON"),
        ([{**good, "update_type": "delete_everything"}], None, "unknown update_type 'delete_everything'"),
        ([{k: v for k, v in good.items() if k != "diaSourceId"}], None, "lacks required field(s) diaSourceId"),
        ([good], "0" * 64, "does not match the manifest's checksum"),
    ]
    before = tree_digest(ws.collection)
    for payloads, checksum, message in cases:
        _update_chunk(ws, chunk_id, payloads, checksum_of=checksum)
        proc = ws.snakemake("daily", "--config", f"until={NIGHTS[1]}", check=False)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, message
        assert message in out and str(chunk_id) in out, out[-3000:]
        assert tree_digest(ws.collection) == before
        shutil.rmtree(ws.ppdb / str(chunk_id))
        shutil.rmtree(ws.work / "batches", ignore_errors=True)


def test_record_whose_target_arrives_a_night_later_is_applied_then(bootstrapped: Workspace):
    """A withdrawal and a close record for rows that are not in the collection yet stay pending (counted in the
    summary), and are applied by the daily that ingests their targets."""
    import pandas as pd

    from conftest import flat, write_chunk

    ws = bootstrapped
    sid, oid = 8_100_000_000_000, 8_000_000_000_000
    withdraw = {"update_type": "withdraw_diasource", "diaSourceId": sid, "timeWithdrawnMjdTai": 61370.0,
                "ra": 150.1, "dec": 2.1, "midpointMjdTai": 61367.0}
    close = {"update_type": "close_diaobject_validity", "diaObjectId": oid, "validityEndMjdTai": 61370.0,
             "nDiaSources": None, "ra": 150.1, "dec": 2.1}
    _update_chunk(ws, 1795278000, [withdraw, close])  # 2026-11-21T16:20Z, daytime chunk of dayobs 2026-11-21
    ws.snakemake("daily", "--config", f"until={NIGHTS[1]}")
    summary = json.loads((ws.published / "ingest" / "batches" / f"{NIGHTS[1]}.json").read_text())
    assert summary["updates"]["records_pending"] == {"close_diaobject_validity": 1, "withdraw_diasource": 1}
    # the target rows arrive later: a backfilled chunk of 2026-11-20 (2026-11-21T10:30Z, before the records)
    write_chunk(ws.ppdb, 1795257000, {
        "DiaObject": pd.DataFrame({"diaObjectId": [oid], "validityStartMjdTai": [61367.001], "ra": [150.1],
                                   "dec": [2.1], "nDiaSources": [1]}),
        "DiaSource": pd.DataFrame({"diaSourceId": [sid], "diaObjectId": [oid], "midpointMjdTai": [61367.0],
                                   "ra": [150.1], "dec": [2.1], "visit": [5], "detector": [1]}),
    })
    ws.snakemake("daily", "--config", f"until={NIGHTS[2]}")
    summary = json.loads((ws.published / "ingest" / "batches" / f"{NIGHTS[0]}_2.json").read_text())
    assert summary["updates"]["records_pending_before"] == 2
    assert summary["updates"]["records_pending"] == {}
    catalog = read_collection(ws.collection)
    row = catalog[catalog["diaObjectId"] == oid]
    assert len(row) == 1 and float(row["validityEndMjdTai"].iloc[0]) == 61370.0
    points = flat(row, "diaSource")
    assert points["diaSourceId"].tolist() == [sid] and points["timeWithdrawnMjdTai"].tolist() == [61370.0]
