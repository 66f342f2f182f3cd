"""Trust under concurrency, faults and long-lived readers (issue: lock, compare-and-swap, snapshot reads, checks).

Each test reproduces one defect found by using the workflow as an operator would: a weekly that overlaps a daily,
readers that opened the collection before a weekly, a one-byte corruption, bad positions, two dailies at once, a
crash between the data writes and the switch, a missing export directory; plus the crash matrix and rollback.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import NIGHTS, Workspace, expected_catalog, read_collection, tree_digest

pytestmark = pytest.mark.workflow


@pytest.fixture
def bootstrapped(workspace: Workspace) -> Workspace:
    workspace.snakemake("bootstrap", "--config", f"until={NIGHTS[0]}")
    return workspace


def content_digest(collection: Path) -> str:
    """Hash of the collection's rows sorted by id, nested light curves included (independent of files/pixels)."""
    frame = read_collection(collection)
    keys = ["diaObjectId", "validityStartMjdTai"]
    frame = frame.sort_values(keys).reset_index(drop=True)
    digest = hashlib.sha256()
    base = frame.drop(columns=["diaSource", "diaForcedSource"])
    digest.update(pd.util.hash_pandas_object(base.astype(str), index=False).to_numpy().tobytes())
    for column, key in (("diaSource", ["diaSourceId"]), ("diaForcedSource", ["visit", "detector"])):
        points = frame[column].nest.to_flat().reset_index(drop=True)
        points["owner"] = np.repeat(frame["diaObjectId"].to_numpy(), frame[column].nest.len())
        points = points.sort_values(["owner", *key, "midpointMjdTai"]).reset_index(drop=True)
        digest.update(pd.util.hash_pandas_object(points.astype(str), index=False).to_numpy().tobytes())
    return digest.hexdigest()


def ledger_chunks(ws: Workspace) -> list[int]:
    return [int(line.split(",")[0]) for line in (ws.published / "ingest/ledger.csv").read_text().splitlines()[1:]]


def chunk_of(ws: Workspace, night: str, table: str) -> Path:
    """A chunk directory of ``night`` that has ``table`` with rows, new-format manifest preferred."""
    from ppdb_lc.chunks import dayobs

    candidates = [m.parent for m in ws.ppdb.rglob("*manifest.json")
                  if dayobs(int(m.parent.name)) == night and (m.parent / f"{table}.parquet").exists()]
    candidates.sort(key=lambda d: (not (d / "manifest.json").exists(), int(d.name)))
    return candidates[0]


def rewrite_column(directory: Path, table: str, column: str, change) -> None:
    """Rewrite one column of a chunk's table with ``change(numpy values)`` and update its manifest (size, checksum)."""
    path = directory / f"{table}.parquet"
    data = pq.read_table(path)
    values = change(data[column].to_numpy(zero_copy_only=False).copy())
    data = data.set_column(data.schema.get_field_index(column), column, pa.array(values))
    pq.write_table(data, path)
    manifest = next(directory.glob("*manifest.json"))
    info = json.loads(manifest.read_text())
    if "files" in info:
        info["files"][path.name].update(size_bytes=path.stat().st_size,
                                        checksum=hashlib.sha256(path.read_bytes()).hexdigest())
    manifest.write_text(json.dumps(info))


# -- pause points (ppdb_lc.faults) ----------------------------------------------------------------------------
class Paused:
    """A Snakemake run started in its own process group that pauses at one named point of the library."""

    def __init__(self, ws: Workspace, point: str, *args: str):
        self.dir = ws.root / f"pause-{point.replace(':', '_')}-{time.time_ns()}"
        self.dir.mkdir()
        self.point = point
        cmd, env = ws.command(*args)
        env.update(PPDB_LC_PAUSE_AT=point, PPDB_LC_PAUSE_DIR=str(self.dir))
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                     start_new_session=True)

    def wait_reached(self, timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if (self.dir / self.point).exists():
                return
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                raise AssertionError(f"run ended (rc {self.proc.returncode}) before {self.point}:\n{out[-2000:]}"
                                     f"\n{err[-4000:]}")
            time.sleep(0.05)
        raise AssertionError(f"{self.point} not reached in {timeout} s")

    def kill_group(self) -> None:
        """SIGKILL the run's whole process group: Snakemake and its jobs, as a node failure would."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.communicate(timeout=60)

    def resume(self, timeout: float = 300) -> subprocess.CompletedProcess:
        (self.dir / f"{self.point}.continue").write_text("")
        out, err = self.proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, out, err)


# -- 1: overlapping weekly and daily ----------------------------------------------------------------------------
def test_weekly_overlapping_a_daily_never_rolls_the_night_back(bootstrapped: Workspace):
    ws = bootstrapped
    ws.snakemake("daily", "--config", f"until={NIGHTS[1]}")
    weekly = Paused(ws, "weekly:written", "weekly", "--config", f"until={NIGHTS[1]}")
    weekly.wait_reached()  # the weekly has built its version from the published one and holds the lock
    refused = ws.snakemake("daily", "--config", f"until={NIGHTS[2]}", check=False)
    assert refused.returncode != 0
    assert f"locked by pid {weekly.proc.pid}" in refused.stderr and "target 'weekly'" in refused.stderr
    # An operator clears the lock by force (or it was lost): the daily publishes night 3 meanwhile ...
    from ppdb_lc.cli import main

    assert main(["unlock", str(ws.collection), "--force"]) == 0
    ws.snakemake("daily", "--config", f"until={NIGHTS[2]}")
    night3 = ws.published
    # ... and the weekly, built on the version before, is discarded instead of being published over it.
    result = weekly.resume()
    assert result.returncode != 0 and "was discarded, not published" in result.stdout + result.stderr
    assert ws.published == night3
    assert set(read_collection(ws.collection)["diaObjectId"]) == expected_catalog(ws.ppdb, NIGHTS[:3])["ids"]
    ws.snakemake("daily", "--config", f"until={NIGHTS[2]}")  # not refused: the markers are per version
    ws.snakemake("weekly", "--config", f"until={NIGHTS[2]}")
    catalog = read_collection(ws.collection)
    assert catalog["diaObjectId"].is_unique and set(catalog["diaObjectId"]) == expected_catalog(ws.ppdb, NIGHTS[:3])["ids"]


# -- 2: readers keep the version they opened ------------------------------------------------------------------
def test_reader_opened_before_weekly_computes_after_it(bootstrapped: Workspace):
    import lsdb

    ws = bootstrapped
    ws.snakemake("daily", "--config", f"until={NIGHTS[1]}")
    before = read_collection(ws.collection)
    some_id = int(before["diaObjectId"].iloc[len(before) // 2])
    ra, dec = float(before["ra"].iloc[0]), float(before["dec"].iloc[0])
    opened = lsdb.open_catalog(ws.collection)
    cone_before = len(opened.cone_search(ra=ra, dec=dec, radius_arcsec=600).compute())
    opened = lsdb.open_catalog(ws.collection)
    ws.snakemake("weekly", "--config", f"until={NIGHTS[1]}")  # repartitions: every file path changes
    assert "weekly" in ws.published.name
    rows = opened.compute()
    assert len(rows) == len(before)
    assert len(opened.id_search(values={"diaObjectId": some_id}).compute()) == (before["diaObjectId"] == some_id).sum()
    assert len(opened.cone_search(ra=ra, dec=dec, radius_arcsec=600).compute()) == cone_before
    # a new reader sees the weekly: one row per object; the top-level collection is valid HATS (hats, strict)
    assert read_collection(ws.collection)["diaObjectId"].is_unique
    from hats.io.validation import is_valid_collection

    assert is_valid_collection(ws.collection, strict=True)


# -- 3, 4: corruption and bad rows -------------------------------------------------------------------------------
def test_one_byte_corruption_is_refused(bootstrapped: Workspace):
    ws = bootstrapped
    directory = chunk_of(ws, NIGHTS[2], "DiaSource")
    assert "checksum" in json.loads((directory / "manifest.json").read_text())["files"]["DiaSource.parquet"]
    path = directory / "DiaSource.parquet"
    meta = pq.ParquetFile(path).metadata
    column = meta.schema.to_arrow_schema().get_field_index("trailFlux")
    offset = meta.row_group(0).column(column).data_page_offset + 40
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    before = tree_digest(ws.collection)
    proc = ws.snakemake("daily", "--config", f"until={NIGHTS[2]}", check=False)
    assert proc.returncode != 0
    assert f"{path}: SHA-256" in proc.stdout + proc.stderr and "does not match the manifest's checksum" in proc.stderr
    assert tree_digest(ws.collection) == before


@pytest.mark.parametrize("table,column,value,message", [
    ("DiaObject", "ra", float("nan"), "ra outside [0, 360) or not finite"),
    ("DiaSource", "dec", 95.0, "dec outside [-90, 90] or not finite"),
])
def test_bad_position_stops_the_run_before_any_job(bootstrapped: Workspace, table, column, value, message):
    ws = bootstrapped
    directory = chunk_of(ws, NIGHTS[1], table)
    id_column = {"DiaObject": "diaObjectId", "DiaSource": "diaSourceId"}[table]
    bad_id = int(pq.read_table(directory / f"{table}.parquet", columns=[id_column])[id_column][3].as_py())

    def spoil(values):
        values[3] = value
        return values

    rewrite_column(directory, table, column, spoil)
    before = tree_digest(ws.collection)
    proc = ws.snakemake("daily", "--config", f"until={NIGHTS[1]}", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "bad input in the PPDB export" in out
    assert f"{directory / (table + '.parquet')}: 1 row(s) with {message} (first: {id_column} {bad_id}, {column} = " \
           f"{value})" in out
    assert "rule stage_dataset" not in out and tree_digest(ws.collection) == before
    # on_invalid_chunk: skip leaves the whole chunk out and reports it in the night's summary
    ws.snakemake("daily", "--config", f"until={NIGHTS[1]}", "on_invalid_chunk=skip")
    assert int(directory.name) not in ledger_chunks(ws)
    summary = json.loads((ws.published / "ingest" / "batches" / f"{NIGHTS[1]}.json").read_text())
    assert [s.split(":")[0] for s in summary["chunks_skipped"]] == [directory.name]


def test_column_of_wrong_type_is_refused(bootstrapped: Workspace):
    ws = bootstrapped
    directory = chunk_of(ws, NIGHTS[1], "DiaObject")
    rewrite_column(directory, "DiaObject", "ra", lambda values: values.astype(str))
    proc = ws.snakemake("daily", "--config", f"until={NIGHTS[1]}", check=False)
    assert proc.returncode != 0
    assert "column ra has type string, APDB type double: not convertible without loss" in proc.stderr


# -- 5: missing export, unexpected names, leftovers ---------------------------------------------------------------
def test_missing_or_empty_export_is_an_error_for_every_target(bootstrapped: Workspace):
    ws = bootstrapped
    shutil.move(ws.ppdb, ws.root / "unmounted")
    for args in (["daily"], ["status"], ["preview"], ["daily", "--config", "on_invalid_chunk=skip"]):
        proc = ws.snakemake(*args, check=False)
        assert proc.returncode != 0 and f"PPDB export directory {ws.ppdb} does not exist" in proc.stderr, args
    ws.ppdb.mkdir()
    proc = ws.snakemake("status", check=False)
    assert proc.returncode != 0 and "holds no chunk directory (empty or not mounted?)" in proc.stderr


def test_unexpected_directory_names_are_reported(bootstrapped: Workspace):
    ws = bootstrapped
    directory = chunk_of(ws, NIGHTS[1], "DiaSource")
    partial = directory.parent / f"{directory.name}.partial"
    shutil.copytree(directory, partial)
    proc = ws.snakemake("status")
    assert f"UNEXPECTED directory {partial}: not a chunk" in proc.stdout


# -- 5: one writer at a time ------------------------------------------------------------------------------------
def test_two_concurrent_dailies_from_different_directories(bootstrapped: Workspace):
    ws = bootstrapped
    other = Workspace(ws.root / "other")
    other.root.mkdir()
    other.write_config(ppdb_dir=str(ws.ppdb), collection_dir=str(ws.collection), work_dir=str(other.root / "work"))
    procs = [w.start("daily", "--config", f"until={NIGHTS[2]}") for w in (ws, other)]
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    codes = [rc for _, _, rc in results]
    assert 0 in codes, results
    for out, err, rc in results:
        if rc:
            assert "is locked by pid" in err or "changed while this run was being planned" in err, err[-3000:]
    chunks = ledger_chunks(ws)
    assert len(chunks) == len(set(chunks))
    assert set(read_collection(ws.collection)["diaObjectId"]) == expected_catalog(ws.ppdb, NIGHTS[:3])["ids"]
    ws.snakemake("daily", "--config", f"until={NIGHTS[2]}")  # whatever happened, a rerun completes the nights
    assert {e for e in ledger_chunks(ws)} == {int(m.parent.name) for m in ws.ppdb.rglob("*manifest.json")
                                              if _night(m) <= NIGHTS[2]}


def _night(manifest: Path) -> str:
    from ppdb_lc.chunks import dayobs

    return dayobs(int(manifest.parent.name))


# -- 6: crash matrix ---------------------------------------------------------------------------------------------
CRASH_POINTS = [
    ("daily", "stage_dataset"),
    ("daily", "ingest_batch"),
    ("daily", "ingest_shard"),
    ("daily", "shard:written"),
    ("daily", "ingest_pixels"),
    ("daily", "ingest_write"),
    ("daily", "commit:written"),
    ("daily", "publish:renamed"),
    ("daily", "publish:switched"),
    ("weekly", "plan_weekly"),
    ("weekly", "compact_pixels"),
    ("weekly", "compact_collection"),
    ("weekly", "weekly:written"),
    ("weekly", "publish:renamed"),
]


SHARD_POINTS = {"ingest_shard", "shard:written", "ingest_pixels", "ingest_write"}


@pytest.fixture(scope="module")
def crash_reference(tmp_path_factory, demo_export) -> tuple[Path, str, str]:
    """A collection bootstrapped on night 1, and the content digests after an uninterrupted daily and weekly."""
    ws = Workspace(tmp_path_factory.mktemp("crash-reference"))
    shutil.copytree(demo_export, ws.ppdb)
    ws.write_config()
    ws.snakemake("bootstrap", "--config", f"until={NIGHTS[0]}")
    seed = tmp_path_factory.mktemp("crash-seed")
    shutil.copytree(ws.root, seed, dirs_exist_ok=True)
    ws.snakemake("daily", "--config", f"until={NIGHTS[2]}")
    daily = content_digest(ws.collection)
    ws.snakemake("weekly")
    return seed, daily, content_digest(ws.collection)


@pytest.mark.parametrize("target,point", CRASH_POINTS)
def test_crash_anywhere_then_rerun_gives_the_uninterrupted_result(crash_reference, tmp_path, target, point):
    seed, daily_digest, weekly_digest = crash_reference
    ws = Workspace(tmp_path / "ws")
    shutil.copytree(seed, ws.root, symlinks=True)
    ws.write_config()
    if target == "weekly":
        ws.snakemake("daily", "--config", f"until={NIGHTS[2]}")
    published = ws.published
    run = Paused(ws, point, target, "--config", f"until={NIGHTS[2]}")
    run.wait_reached()
    run.kill_group()
    # a reader sees a complete version: the one before, or (killed after the switch) the new one; the shard jobs
    # start in night 3, the first one built in shards, after night 2 was published (shard:written is also reached
    # inside night 2's one-job build)
    if point in SHARD_POINTS:
        assert ws.published == published or ws.published.name.endswith(NIGHTS[1])
    else:
        assert ws.published == published or point == "publish:switched"
    # the documented recovery (README, "After a crash"): release Snakemake's own lock of the working directory and
    # run the same command again; the dead run's collection lock is stale and taken over
    assert (ws.root / "coll.lock").exists()  # held by the dead run
    ws.snakemake("--unlock")
    rerun = ws.snakemake(target, "--rerun-incomplete", "--config", f"until={NIGHTS[2]}")
    assert "taking over the stale lock of pid" in rerun.stderr
    assert content_digest(ws.collection) == (daily_digest if target == "daily" else weekly_digest)
    versions = ws.collection / "versions"
    assert not list(versions.glob(".staging-*")) and not any((ws.work / "batches").glob("*/build"))
    assert not (ws.root / "coll.lock").exists()


# -- 7: readers during updates ----------------------------------------------------------------------------------
READER = r"""
import json, sys, time, lsdb
collection, some_id, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
import os
seen = []
while not os.path.exists(stop) or not seen:
    try:
        cat = lsdb.open_catalog(collection)
        n = len(cat.compute())
        found = len(cat.id_search(values={"diaObjectId": some_id}).compute())
        seen.append([n, found])
    except Exception as err:
        seen.append(["error", repr(err)])
print("SEEN " + json.dumps(seen))
"""


def test_readers_during_daily_and_weekly_see_only_whole_versions(bootstrapped: Workspace):
    ws = bootstrapped
    ws.snakemake("daily", "--config", f"until={NIGHTS[1]}")
    frame = read_collection(ws.collection)
    some_id = int(frame["diaObjectId"].iloc[0])
    states = [(len(frame), int((frame["diaObjectId"] == some_id).sum()))]
    stop = ws.root / "stop-readers"
    readers = [subprocess.Popen([sys.executable, "-c", READER, str(ws.collection), str(some_id), str(stop)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for args in (["daily", "--config", f"until={NIGHTS[2]}"], ["weekly"]):
            ws.snakemake(*args)
            frame = read_collection(ws.collection)
            states.append((len(frame), int((frame["diaObjectId"] == some_id).sum())))
    finally:
        stop.write_text("")
    observed = set()
    for reader in readers:
        out, err = reader.communicate(timeout=300)
        assert reader.returncode == 0, err[-3000:]
        seen = json.loads(next(line for line in out.splitlines() if line.startswith("SEEN "))[5:])
        assert all(s[0] != "error" for s in seen), [s for s in seen if s[0] == "error"][:3]
        assert {tuple(s) for s in seen} <= set(states), (seen, states)
        observed |= {tuple(s) for s in seen}
    assert len(observed) >= 2, observed  # the readers did read across a publish


# -- rollback -----------------------------------------------------------------------------------------------------
def test_rollback_then_daily_reingests_what_was_rolled_back(bootstrapped: Workspace):
    ws = bootstrapped
    ws.snakemake("daily", "--config", f"until={NIGHTS[1]}")
    after_night2 = content_digest(ws.collection)
    ledger_before = ledger_chunks(ws)
    from ppdb_lc.cli import main

    assert main(["rollback", str(ws.collection)]) == 0
    assert ws.published.name == "v000003-rollback-to-v000001"
    assert len(ledger_chunks(ws)) < len(ledger_before)
    assert set(read_collection(ws.collection)["diaObjectId"]) == expected_catalog(ws.ppdb, NIGHTS[:1])["ids"]
    status = ws.snakemake("status", "--config", f"until={NIGHTS[1]}")
    assert f"pending night {NIGHTS[1]}" in status.stdout
    ws.snakemake("daily", "--config", f"until={NIGHTS[1]}")
    assert content_digest(ws.collection) == after_night2 and sorted(ledger_chunks(ws)) == sorted(ledger_before)
