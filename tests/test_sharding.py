"""A night staged in several jobs (groups of chunks) gives the same rows as one staging job, and the same collection.

The split is made from manifest row counts (``Batch.stage_parts``); re-emitted copies and object versions that
fall into different parts are resolved again when the parts are read (``stage.read_staged``).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import NIGHTS, Workspace, write_chunk
from ppdb_lc import apdb, sizing, stage
from ppdb_lc.chunks import discover
from ppdb_lc.ledger import Batch

STAGED = (*apdb.DATASETS, stage.UPDATES)


def _batch(ppdb: Path, nights=NIGHTS) -> Batch:
    chunks = [c for c in discover(ppdb).complete if c.night in nights]
    return Batch("bootstrap", "bootstrap", chunks)


def test_stage_parts_are_bounded_consecutive_chunks_of_one_night(demo_export: Path) -> None:
    batch = _batch(demo_export)
    for ds in apdb.DATASETS:
        parts = batch.stage_parts(ds, 300)
        # every chunk exactly once, in chunk order
        assert [c.chunk_id for part in parts for c in part] == sorted(c.chunk_id for c in batch.chunks)
        for part in parts:
            assert len({c.night for c in part}) == 1, "a part never mixes nights"
            rows = sum(c.rows(ds) for c in part)
            assert rows <= 300 or len(part) == 1, (ds, rows)  # only a single chunk may exceed the bound
        # greedy: two neighbouring parts of one night could not have been one
        for a, b in zip(parts, parts[1:], strict=False):
            if a[0].night == b[0].night:
                assert sum(c.rows(ds) for c in [*a, *b]) > 300
        assert len(parts) > len({c.night for c in batch.chunks}), f"{ds}: the bound must split some nights"
    # an oversized chunk is a part of its own; a huge bound gives one part per night; update records: one part
    assert all(len(part) == 1 for part in batch.stage_parts("DiaForcedSource", 1))
    assert len(batch.stage_parts("DiaSource", 10**9)) == len(NIGHTS)
    assert len(batch.stage_parts(stage.UPDATES, 1)) == 1


def test_staged_parts_read_as_one_staging_job(demo_export: Path, tmp_path: Path) -> None:
    batch = _batch(demo_export)
    split_copies = 0
    for ds in STAGED:
        whole = tmp_path / "whole" / ds
        stage.stage_dataset(batch.chunks, ds, whole)
        parts = batch.stage_parts(ds, 250)
        dirs = [tmp_path / "parts" / ds / f"part{i:03d}" for i in range(len(parts))]
        for chunks, directory in zip(parts, dirs, strict=True):
            stage.stage_dataset(chunks, ds, directory)
        for night in NIGHTS:
            want = stage.read_staged([whole], night, ds)
            got = stage.read_staged(dirs, night, ds)
            assert got.equals(want), (ds, night)  # same rows, same order, same types
            if ds in ("DiaSource", "DiaForcedSource"):
                count = int(want.schema.metadata[stage.RE_EMITTED_KEY])
                assert int(got.schema.metadata[stage.RE_EMITTED_KEY]) == count, (ds, night)
                within = sum(int(pq.read_schema(stage.staged_file(d, night)).metadata[stage.RE_EMITTED_KEY])
                             for d in dirs if stage.staged_file(d, night).exists())
                split_copies += count - within  # copies whose first copy lies in an earlier part
    assert split_copies > 0, "the generated export re-emits rows of a night's first chunk in its second chunk"


def test_files_staged_for_shards_read_as_unsharded_and_split_exactly(demo_export: Path, tmp_path: Path) -> None:
    """A file staged for a sharded night groups its rows by shard (row groups): read whole, it is the unsharded
    file; each shard reads only its own rows, and together they are every row once, with their position."""
    batch = _batch(demo_export)
    for ds in apdb.DATASETS:
        plain, grouped = tmp_path / "plain" / ds, tmp_path / "grouped" / ds
        stage.stage_dataset(batch.chunks, ds, plain)
        stage.stage_dataset(batch.chunks, ds, grouped, shards=3)
        for night in NIGHTS:
            want = stage.read_staged([plain], night, ds)
            path = stage.staged_file(grouped, night)
            assert pq.ParquetFile(path).num_row_groups == 3
            assert stage.read_part(path).equals(want), (ds, night)
            assert stage.read_staged([grouped], night, ds, columns=["diaObjectId"]).equals(
                want.select(["diaObjectId"]))
            shard = stage.shard_of(want["diaObjectId"], 3)
            assert set(np.unique(shard)) == {0, 1, 2}
            for k in range(3):
                rows = stage.read_part(path, shard=k, shards=3)
                expected = np.flatnonzero(shard == k)
                assert rows[stage.ROW].to_numpy().tolist() == expected.tolist()
                assert rows.drop_columns([stage.ROW]).equals(want.take(pa.array(expected))), (ds, night, k)
            with pytest.raises(RuntimeError, match="staged for 3 ingest shards, this run builds 2"):
                stage.read_part(path, shard=0, shards=2)


def test_memory_requests_grow_with_the_rows_of_a_job() -> None:
    # the request covers the model's peak + Snakemake's processes, with headroom, in 100 MB steps
    assert sizing.STAGE.request_mb(0) == 600
    assert sizing.STAGE.request_mb(1_000_000) == 1500  # (180 + 720 + 250) x 1.25 = 1437.5
    assert sizing.INGEST.request_mb(3_600_000) == 3900  # (350 + 2520 + 250) x 1.25 = 3900
    assert sizing.STAGE.request_mb(500_000) < sizing.STAGE.request_mb(1_000_000)
    # a night's update records, staged a slice at a time: 1.6 M records peaked at 358 MB -> (250 + 160 + 250) x 1.25
    assert sizing.STAGE_UPDATES.request_mb(0) == 700 and sizing.STAGE_UPDATES.request_mb(1_600_000) == 900


def test_update_staging_is_sized_by_the_records(demo_export: Path, tmp_path: Path) -> None:
    """The records of a chunk for its staging job's memory: a parquet file's row count; for JSON, the manifest's
    count or the file size's bound (an old manifest only flags that records exist)."""
    chunks = [c for c in discover(demo_export).complete if c.updates is not None]
    assert chunks and any(c.updates.suffix == ".parquet" for c in chunks)
    for chunk in chunks:
        if chunk.updates.suffix == ".parquet":
            assert chunk.update_records() == pq.read_metadata(chunk.updates).num_rows > 0
        else:
            assert chunk.update_records() >= (chunk.update_count or 0)
    json_file = tmp_path / "updates.json"
    json_file.write_text("[" + ",".join(['{"update_type": "withdraw_diasource", "diaSourceId": 1}'] * 40) + "]")
    flagged = dataclasses.replace(chunks[0], updates=json_file, update_count=1)  # old manifest: a flag, no count
    assert flagged.update_records() == json_file.stat().st_size // 100 + 1 > 1


EDGE_CHUNK = int(pd.Timestamp("2026-11-24T10:00:00Z").timestamp())  # dayobs 2026-11-23 (the last night)
EDGE_IDS = np.arange(60, dtype=np.int64) + 8_000_000_000_000


def edge_tables(ppdb: Path) -> dict[str, pd.DataFrame]:
    """Objects just outside the field (and a few far away), each with one source: the last night creates pixels."""
    objects = pa.concat_tables(pq.read_table(p, columns=["ra", "dec"]) for p in ppdb.rglob("DiaObject.parquet"))
    ra, dec = objects["ra"].to_numpy(), objects["dec"].to_numpy()
    rng = np.random.default_rng(5)
    n = len(EDGE_IDS)
    edge_ra = np.where(np.arange(n) < n - 5, ra.max() + rng.uniform(0.0, 0.4, n), 210.0 + rng.uniform(0, 0.1, n))
    edge_dec = np.where(np.arange(n) < n - 5, rng.uniform(dec.min(), dec.max(), n), -20.0 + rng.uniform(0, 0.1, n))
    mjd = 61368.4
    return {
        "DiaObject": pd.DataFrame({"diaObjectId": EDGE_IDS, "validityStartMjdTai": mjd + 0.001, "ra": edge_ra,
                                   "dec": edge_dec, "nDiaSources": 1, "g_scienceFluxMean": 5000.0}),
        "DiaSource": pd.DataFrame({"diaSourceId": EDGE_IDS + 1, "diaObjectId": EDGE_IDS, "midpointMjdTai": mjd,
                                   "ra": edge_ra, "dec": edge_dec, "visit": 99, "detector": 1, "band": "g",
                                   "scienceFlux": 5000.0, "scienceFluxErr": 50.0, "x": 10.0, "y": 10.0}),
    }


@pytest.mark.parametrize("rows_per_job", [200])
def test_sharded_daily_equals_unsharded_daily(workspace: Workspace, tmp_path_factory, rows_per_job: int) -> None:
    """The same bootstrap + dailies with small staging parts and many ingest shards and writers, and with one
    part per night and one ingest job: the same files (the index: the same rows, one file per writer)."""
    ws = workspace
    write_chunk(ws.ppdb, EDGE_CHUNK, edge_tables(ws.ppdb))  # the last night creates pixels
    unsharded = Workspace(tmp_path_factory.mktemp("unsharded"))
    shutil.copytree(ws.ppdb, unsharded.ppdb)
    ws.write_config(sharding={"rows_per_stage_job": rows_per_job, "rows_per_ingest_job": rows_per_job})
    unsharded.write_config(sharding={"rows_per_stage_job": 10**9, "rows_per_ingest_job": 10**9})
    for run in (ws, unsharded):
        run.snakemake("bootstrap", "--config", f"until={NIGHTS[1]}")
        out = run.snakemake("daily")
    stage_jobs = len(list((ws.work / "logs" / "stage_dataset").rglob("part*.log")))
    single = len(list((unsharded.work / "logs" / "stage_dataset").rglob("part*.log")))
    # one part per night and table: bootstrap (2 nights x 3 tables + its update records) + 2 nights x 4
    assert single == 2 * 3 + 1 + 2 * 4 and stage_jobs > 2 * single, (stage_jobs, single)
    shard_logs = sorted((ws.work / "logs" / "ingest_shard").rglob("*.log"))
    writer_logs = sorted((ws.work / "logs" / "ingest_write").rglob("*.log"))
    nights = {log.parent.name for log in shard_logs}
    assert nights == set(NIGHTS[2:]) and len(shard_logs) == len(writer_logs) >= 2 * 4, shard_logs
    assert not (unsharded.work / "logs" / "ingest_shard").exists()
    assert "rule ingest_batch" in out.stdout + out.stderr
    ours, theirs = ws.published, unsharded.published
    assert ours.name == theirs.name

    def data_files(version: Path) -> list[Path]:
        return sorted(p.relative_to(version) for p in version.rglob("*.parquet")
                      if "ingest" not in p.parts and "index" not in p.parts[1:])

    files = data_files(ours)
    assert files == data_files(theirs)
    assert len(files) >= 15  # catalog and margin files of the bootstrap and both nights
    for path in files:
        assert pq.read_table(ours / path).equals(pq.read_table(theirs / path)), path
    # writers append a pixel's file window by window (shards.window_points: rows_per_ingest_job / 10 points, here 20)
    assert any(pq.ParquetFile(ours / p).num_row_groups > 1 for p in files if p.name == f"{NIGHTS[-1]}.parquet")
    # the changes job revises committed files a part at a time (the same window of points): a compacted file that
    # update records revised is written in several row groups here, in one in the unsharded run
    revised = [p for p in files if p.parts[0] == "dia_object_lc" and p.name == "compacted.parquet"
               and pq.ParquetFile(ours / p).num_row_groups > 1]
    assert revised and all(pq.ParquetFile(theirs / p).num_row_groups == 1 for p in revised), revised
    # ... and the sky a region at a time (a window of targets each): here several regions a night, there one
    regions = [[int(n) for log in (run.work / "logs").rglob("*.log")
                for n in re.findall(r"revise: (\d+) regions", log.read_text())] for run in (ws, unsharded)]
    assert max(regions[0]) > 1 and set(regions[1]) == {1}, regions
    index = {}
    for version in (ours, theirs):
        files = sorted((version / "dia_object_lc_diaObjectId" / "dataset").rglob("*.parquet"))
        rows = pa.concat_tables(pq.read_table(p) for p in files if not p.name.startswith("_"))
        index[version] = rows.sort_by([(c, "ascending") for c in rows.column_names])
    assert index[ours].num_rows > 0 and index[ours].equals(index[theirs])
    for log in ("ledger.csv", "pending_updates.parquet"):
        a, b = ours / "ingest" / log, theirs / "ingest" / log
        if log.endswith(".csv"):
            assert a.read_text() == b.read_text()
        else:
            assert pq.read_table(a).equals(pq.read_table(b))
    exercised = collections.Counter()
    for night in NIGHTS[2:]:  # the night update logs (statuses of every record) and the summaries' counts
        assert pq.read_table(ours / "ingest" / "updates" / f"{night}.parquet").equals(
            pq.read_table(theirs / "ingest" / "updates" / f"{night}.parquet"))
        a, b = (json.loads((v / "ingest" / "batches" / f"{night}.json").read_text()) for v in (ours, theirs))
        volatile = {"build_seconds", "commit_seconds", "version", "shards", "writers"}
        assert {k: v for k, v in a.items() if k not in volatile} == {k: v for k, v in b.items() if k not in volatile}
        assert a["shards"] >= 4 and b["shards"] == 1
        exercised.update({"reassigned": a["updates"]["records_applied"].get("reassign_diasource_to_diaobject", 0),
                          "withdrawn": a["updates"]["records_applied"].get("withdraw_diasource", 0),
                          "re-emitted": a["re_emitted_copies_in_night"]["DiaSource"],
                          "orphans": a["orphan_rows"], "moved": a["updates"]["sources_moved_from_committed_rows"],
                          "created": len(a["pixels_created"])})
    print(exercised)
    assert all(exercised[k] > 0 for k in ("reassigned", "withdrawn", "re-emitted", "orphans", "moved", "created")), (
        exercised)


def test_row_groups_read_by_position_ranges(tmp_path: Path) -> None:
    """Writers read the position column only from the shard row groups whose statistics meet their ranges."""
    from ppdb_lc import shards

    assert shards._merged_ranges(np.array([[5, 7], [0, 2], [2, 3], [6, 9], [20, 21]])).tolist() == [
        [0, 3], [5, 9], [20, 21]]
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"_healpix_29": np.arange(0, 1000, 10, dtype=np.int64)}), path, row_group_size=10)
    reader = shards.RowReader(path)  # 10 groups of 10 rows: [0, 90], [100, 190], ...
    values, rows = reader.column_in("_healpix_29", np.array([[95, 101], [455, 456], [990, 2000]]))
    assert rows.tolist() == [*range(10, 20), *range(40, 50), *range(90, 100)]  # groups 1, 4 and 9 only
    assert values.tolist() == (rows * 10).tolist()
    assert reader.column_in("_healpix_29", np.empty((0, 2), np.int64))[0].size == 0


def test_cross_part_copies_found_per_hash_bucket(demo_export: Path, tmp_path: Path) -> None:
    """DiaSource copies re-emitted in another staging part: found bucket by bucket (ids split by hash) exactly as
    with all the night's ids at once, and they are the copies that reading the parts together drops."""
    from ppdb_lc import shards

    batch = _batch(demo_export)
    parts = batch.stage_parts("DiaSource", 250)
    dirs = [tmp_path / "parts" / f"part{i:03d}" for i in range(len(parts))]
    for chunks, directory in zip(parts, dirs, strict=True):
        stage.stage_dataset(chunks, "DiaSource", directory)
    found = 0
    for night in NIGHTS:
        whole = shards._cross_part_losers(dirs, night, tmp_path / "one", 10**9)
        for bucket_ids in (1, 7, 100):
            got = shards._cross_part_losers(dirs, night, tmp_path / f"b{bucket_ids}", bucket_ids)
            assert got.equals(whole), (night, bucket_ids)
            assert not (tmp_path / f"b{bucket_ids}").exists()  # scratch removed
        each = sum(stage.read_part(stage.staged_file(d, night)).num_rows for d in dirs
                   if stage.staged_file(d, night).exists())
        assert each - len(whole) == stage.read_staged(dirs, night, "DiaSource").num_rows, night
        found += len(whole)
    assert found > 0
