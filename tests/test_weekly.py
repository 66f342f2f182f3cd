"""Incremental weekly (plan, pixel-group shards, commit) equals the full weekly on copies of the same collection.

Compared per pixel: catalog rows (exactly, file by file), margin rows, index rows, the skymap histogram and the
properties; and as lsdb frames with their light curves.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hats.catalog import PartitionInfo, TableProperties
from hats.pixel_math import HealpixPixel

from conftest import NIGHTS, Workspace, flat, read_collection, write_chunk
from ppdb_lc import catalog, collection, partitioning, rebuild, weekly
from ppdb_lc.settings import Settings
from ppdb_lc.versions import VersionedCollection

FAR_FIELD_CHUNK = int(pd.Timestamp("2026-11-25T10:00:00Z").timestamp())  # dayobs 2026-11-24
CRAFTED_CHUNK = int(pd.Timestamp("2026-11-26T10:00:00Z").timestamp())  # dayobs 2026-11-25
SPLIT_IDS_START = 9_000_000_000_000
FAR_IDS_START = 8_500_000_000_000
MJD = 61370.3


FAR_FIELDS = ((210.0, -20.0), (250.0, 40.0))  # the first is touched by the crafted night, the second is not


def far_field_tables(n: int = 400) -> dict[str, pd.DataFrame]:
    """Two fields far from the demo field, each in several pixels that border each other (they have margins)."""
    rng = np.random.default_rng(8)
    ids = FAR_IDS_START + np.arange(2 * n)
    ra = np.concatenate([c[0] + rng.uniform(-0.8, 0.8, n) for c in FAR_FIELDS])
    dec = np.concatenate([c[1] + rng.uniform(-0.8, 0.8, n) for c in FAR_FIELDS])
    mjd = MJD - 1
    objects = pd.DataFrame({"diaObjectId": ids, "validityStartMjdTai": mjd + 0.001, "ra": ra, "dec": dec,
                            "nDiaSources": 1, "g_scienceFluxMean": 5000.0, "g_scienceFluxMeanErr": 50.0})
    sources = pd.DataFrame({"diaSourceId": ids + 1, "diaObjectId": ids, "midpointMjdTai": mjd, "ra": ra, "dec": dec,
                            "visit": 97, "detector": 1, "band": "g", "scienceFlux": 5000.0, "scienceFluxErr": 50.0,
                            "x": 10.0, "y": 10.0})
    return {"DiaObject": objects, "DiaSource": sources}


def settings_for(ws: Workspace, collection_dir: Path, **weekly_config) -> Settings:
    config = yaml.safe_load(ws.configfile.read_text())
    config["collection_dir"] = str(collection_dir)
    config["weekly"] = {**config.get("weekly", {}), **weekly_config}
    return Settings.from_config(config)


def copy_collection(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def pixels_of(version: Path, name: str) -> list[HealpixPixel]:
    return PartitionInfo.read_from_dir(version / name).get_healpix_pixels()


def assert_same_collection(ours: Path, full: Path, settings: Settings) -> None:
    """``ours`` and ``full`` (published version directories) hold the same catalog, margin and index rows."""
    names = settings.names
    pixels = pixels_of(full, names.catalog)
    assert pixels_of(ours, names.catalog) == pixels
    for pixel in pixels:
        a = pq.read_table(weekly.pixel_path(ours / names.catalog, pixel, rebuild.COMPACTED_FILE))
        b = pq.read_table(weekly.pixel_path(full / names.catalog, pixel, rebuild.COMPACTED_FILE))
        assert a.equals(b), f"catalog pixel {pixel} differs"
    order = int(TableProperties.read_from_dir(full / names.catalog).skymap_order)
    np.testing.assert_array_equal(catalog.read_histogram(ours / names.catalog, order),
                                  catalog.read_histogram(full / names.catalog, order))
    for name in (names.catalog, names.margin):
        a, b = TableProperties.read_from_dir(ours / name), TableProperties.read_from_dir(full / name)
        assert (a.total_rows, a.hats_order, a.moc_sky_fraction) == (b.total_rows, b.hats_order, b.moc_sky_fraction)
    margin_pixels = pixels_of(full / "", names.margin)
    assert pixels_of(ours, names.margin) == margin_pixels
    key = [("_healpix_29", "ascending"), ("diaObjectId", "ascending")]
    for pixel in margin_pixels:
        files = [weekly.pixel_path(v / names.margin, pixel, rebuild.COMPACTED_FILE) for v in (ours, full)]
        a, b = (pq.read_table(f).sort_by(key) for f in files)
        assert a.equals(b), f"margin pixel {pixel} differs"
    index = [pa.concat_tables([pq.read_table(f) for f in sorted(
        collection.index_file(v / names.index, "x").parent.glob("*.parquet"))]).sort_by("diaObjectId")
        for v in (ours, full)]
    assert index[0].num_rows == index[1].num_rows > 0
    assert index[0].select(index[1].column_names).equals(index[1]), "index rows differ"


def assert_same_frames(ours: Path, full: Path) -> None:
    a = read_collection(ours).sort_values("diaObjectId").reset_index(drop=True)
    b = read_collection(full).sort_values("diaObjectId").reset_index(drop=True)
    pd.testing.assert_frame_equal(a.drop(columns=["diaSource", "diaForcedSource"]),
                                  b.drop(columns=["diaSource", "diaForcedSource"]))
    for column in ("diaSource", "diaForcedSource"):
        pd.testing.assert_frame_equal(flat(a, column), flat(b, column))


def crafted_tables(version: Path, threshold: int) -> tuple[dict[str, pd.DataFrame], int, HealpixPixel]:
    """One night: an object moved into another pixel, and enough new objects in the fullest pixel to split it."""
    cat = pq.read_table(version / "dia_object_lc" / "dataset", columns=["diaObjectId", "ra", "dec", "_healpix_29"])
    frame = cat.to_pandas()
    pixels = pixels_of(version, "dia_object_lc")
    frame["slot"] = partitioning.locate(frame["_healpix_29"].to_numpy(), pixels)
    # one far-field object gets a new version at (almost) the same place: its pixel is rewritten, and the rows of
    # its carried neighbours in its margin come from the old margin files
    far = frame[(frame["ra"] - FAR_FIELDS[0][0]).abs() < 0.2].iloc[[0]].reset_index()
    frame = frame[frame["ra"] < 200]  # the demo field
    counts = frame["slot"].value_counts()
    fullest = int(counts.index[0])
    assert pixels[fullest].order < 8, "the fullest pixel must be splittable"
    crowd = frame[frame["slot"] == fullest].head(threshold + 5)
    n_new = threshold + 5
    base = crowd.sample(n=n_new, replace=True, random_state=1).reset_index(drop=True)
    new_ids = SPLIT_IDS_START + np.arange(n_new)
    new_ra = base["ra"].to_numpy() + 1e-5
    new_dec = base["dec"].to_numpy()
    others = frame[frame["slot"] != fullest]
    mover, mover_slot = int(others["diaObjectId"].iloc[0]), int(others["slot"].iloc[0])
    destination = others[others["slot"] != mover_slot].iloc[0]  # (a row of floats)
    ids = np.concatenate([new_ids, [mover], far["diaObjectId"]]).astype(np.int64)
    ra = np.concatenate([new_ra, [destination["ra"] + 1e-5], far["ra"] + 1e-6])
    dec = np.concatenate([new_dec, [destination["dec"]], far["dec"]])
    objects = pd.DataFrame({"diaObjectId": ids, "validityStartMjdTai": MJD + 0.001, "ra": ra, "dec": dec,
                            "nDiaSources": 1, "g_scienceFluxMean": 5000.0, "g_scienceFluxMeanErr": 50.0})
    sources = pd.DataFrame({"diaSourceId": 7_000_000_000_000 + np.arange(len(ids)), "diaObjectId": ids,
                            "midpointMjdTai": MJD, "ra": ra, "dec": dec, "visit": 98, "detector": 1, "band": "g",
                            "scienceFlux": 5000.0, "scienceFluxErr": 50.0, "x": 10.0, "y": 10.0})
    return {"DiaObject": objects, "DiaSource": sources}, mover, pixels[fullest]


def test_incremental_weekly_equals_full_weekly(workspace: Workspace, tmp_path_factory):
    ws = workspace
    ws.write_config(weekly={"mode": "incremental", "shards": 3, "full_above": 1.0})
    ws.snakemake("bootstrap", "--config", f"until={NIGHTS[1]}")
    # the stored histogram of a compacted catalog counts objects (one row each)
    bootstrap = ws.published / "dia_object_lc"
    assert catalog.read_histogram(bootstrap, 8).sum() == TableProperties.read_from_dir(bootstrap).total_rows
    ws.snakemake("daily")  # nights 3 and 4: objects everywhere, versions that move, update records

    # 1. after generated nights (nearly every pixel touched): in-process incremental vs full on copies
    root = tmp_path_factory.mktemp("copies")
    full_dir = copy_collection(ws.collection, root / "full")
    incr_dir = copy_collection(ws.collection, root / "incremental")
    after_dailies = VersionedCollection(incr_dir).current() / "dia_object_lc"
    # ... and after dailies it counts rows: the last compaction's objects + every daily row
    assert catalog.read_histogram(after_dailies, 8).sum() == TableProperties.read_from_dir(after_dailies).total_rows
    full_settings = settings_for(ws, full_dir, mode="full")
    incr_settings = settings_for(ws, incr_dir, shards=3, full_above=1.0)
    full = rebuild.weekly(root / "scratch-full", full_settings)
    incremental = weekly.run_in_process(incr_settings, root / "work-incremental", shards=3, full_above=1.0)
    assert incremental["mode"] == "incremental" and full["mode"] == "full"
    assert incremental["objects"] == full["objects"]
    assert incremental["shards"] >= 1 and incremental["rows_rewritten"] > 0
    assert_same_collection(VersionedCollection(incr_dir).current(), VersionedCollection(full_dir).current(),
                           full_settings)
    assert_same_frames(incr_dir, full_dir)
    # the plan falls back to the full weekly when it would rewrite more than weekly.full_above of the rows
    fallback_dir = copy_collection(ws.collection, root / "fallback")
    fallback = weekly.run_in_process(settings_for(ws, fallback_dir), root / "work-fallback", full_above=0.5)
    assert fallback["mode"] == "full" and not (root / "work-fallback" / "shards").exists()
    assert_same_collection(VersionedCollection(fallback_dir).current(), VersionedCollection(full_dir).current(),
                           full_settings)

    # 2. a far field, a full weekly through the workflow, then one crafted night: an object moves into another
    #    pixel, and new objects overfill the fullest pixel, which the repartition splits; the rest is carried over
    write_chunk(ws.ppdb, FAR_FIELD_CHUNK, far_field_tables())
    ws.snakemake("daily")
    ws.write_config(weekly={"mode": "full"})
    out = ws.snakemake("weekly")
    assert "compact_pixels" not in out.stdout + out.stderr
    compacted = ws.published
    assert json.loads(max((compacted / "ingest" / "batches").glob("weekly-*.json")).read_text())["mode"] == "full"
    tables, mover, split = crafted_tables(compacted, 120)
    old_pixels = pixels_of(compacted, "dia_object_lc")
    index = pq.read_table(collection.index_file(compacted / "dia_object_lc_diaObjectId", "x").parent)
    mover_from = int(index.filter(pa.compute.equal(index["diaObjectId"], mover))["Npix"][0].as_py())
    write_chunk(ws.ppdb, CRAFTED_CHUNK, tables)
    ws.snakemake("daily")
    full_dir = copy_collection(ws.collection, root / "full-2")
    copy_collection(ws.collection, root / "before-incremental")
    rebuild.weekly(root / "scratch-full-2", settings_for(ws, full_dir, mode="full"))
    ws.write_config(weekly={"mode": "incremental", "shards": 2, "full_above": 1.0})
    out = ws.snakemake("weekly")
    assert "rule compact_pixels" in out.stdout + out.stderr and "checkpoint plan_weekly" in out.stdout + out.stderr
    ours = ws.published
    summary = json.loads(max((ours / "ingest" / "batches").glob("weekly-*.json")).read_text())
    assert summary["mode"] == "incremental", summary
    assert summary["files_linked"] > 0 and summary["files_rewritten"] > 0, summary
    assert summary["files_linked"] + summary["files_rewritten"] == len(pixels_of(ours, "dia_object_lc"))
    # the far field's margins are linked; in the demo field every carried pixel borders a rewritten one
    assert summary["margin_files_linked"] > 0 and summary["index_files"].get("filtered", 0) >= 1, summary
    assert summary["rows_rewritten"] < summary["rows_in"] / 2, summary
    new_pixels = pixels_of(ours, "dia_object_lc")
    assert split not in new_pixels and any(p.order > split.order and p.pixel >> 2 * (p.order - split.order)
                                           == split.pixel for p in new_pixels), "the fullest pixel was not split"
    moved = pq.read_table(collection.index_file(ours / "dia_object_lc_diaObjectId", "x").parent)
    mover_to = moved.filter(pa.compute.equal(moved["diaObjectId"], mover))
    assert len(mover_to) == 1 and int(mover_to["Npix"][0].as_py()) != mover_from, "the object did not move"
    assert any(p.pixel == mover_from for p in old_pixels)
    assert_same_collection(ours, VersionedCollection(full_dir).current(), full_settings)
    assert_same_frames(ws.collection, full_dir)
    shards = [json.loads(p.read_text()) for p in (ws.work / "weekly").glob("shards-*/*.json")]
    assert sum(s["old_margin_rows_read"] for s in shards) > 0, shards
    # the shortcut (carried rows of a rewritten pixel's margin from the old margin files) equals reading them whole
    whole_dir = copy_collection(root / "before-incremental", root / "whole")
    whole = weekly.run_in_process(settings_for(ws, whole_dir), root / "work-whole", shards=2, full_above=1.0,
                                  margins_from_old=False)
    assert sum(s["neighbour_files_read"] for s in whole["shard_summaries"]) > 0
    assert_same_collection(VersionedCollection(whole_dir).current(), VersionedCollection(full_dir).current(),
                           full_settings)
    # the weekly's jobs log and report memory
    logs = list((ws.work / "logs" / "compact_pixels").rglob("*.log"))
    assert len(logs) == summary["shards"] and all("job done: peak RSS" in p.read_text() for p in logs)


@pytest.mark.parametrize("threshold", [3, 50])
def test_pixels_for_histogram_is_new_pixels(threshold):
    rng = np.random.default_rng(5)
    hp29 = np.sort(rng.integers(0, 12 * 4**29, 400, dtype=np.int64) // 64 * 64)
    hp29 = np.concatenate([hp29, np.full(60, hp29[7])])  # one dense cell (oversize at threshold 3 and 50)
    counts = partitioning.histogram(hp29, 6)
    assert partitioning.pixels_for_histogram(counts, [], order=6, threshold=threshold) == \
        partitioning.new_pixels(hp29, [], order=6, threshold=threshold)


def test_revised_since_last_compaction(tmp_path):
    batches = tmp_path / "ingest" / "batches"
    batches.mkdir(parents=True)
    rewritten = "dataset/Norder=2/Dir=0/Npix=17/compacted.parquet"
    summaries = {
        "bootstrap": {"batch": "bootstrap"},
        "2026-11-21": {"batch": "2026-11-21", "base_version": "v000001-bootstrap",
                       "files_rewritten": ["dataset/Norder=1/Dir=0/Npix=3/compacted.parquet"]},
        "weekly-20261122T000000": {"batch": "weekly-20261122T000000", "base_version": "v000002-2026-11-21"},
        "2026-11-23": {"batch": "2026-11-23", "base_version": "v000003-weekly-20261122T000000",
                       "files_rewritten": [rewritten]},
    }
    for name, summary in summaries.items():
        (batches / f"{name}.json").write_text(json.dumps(summary))
    assert weekly.revised_since_last_compaction(tmp_path) == {HealpixPixel(2, 17)}


def test_index_files_are_filtered_to_carried_pixels(tmp_path):
    from ppdb_lc.settings import CollectionNames

    names = CollectionNames()
    pixels = [HealpixPixel(1, 0), HealpixPixel(1, 1)]
    hp29 = np.array([1, 2, 4**28 + 5, 4**28 + 6], dtype=np.int64)  # two rows in each pixel
    rows = collection.index_rows(np.array([10, 11, 12, 13]), hp29, partitioning.locate(hp29, pixels), pixels,
                                 collection.index_schema(names), names.index_column)
    path = tmp_path / "in.parquet"
    pq.write_table(rows, path, row_group_size=1)
    assert weekly._filter_index_file(path, tmp_path / "all.parquet", pixels) == (4, "linked")
    assert (tmp_path / "all.parquet").stat().st_ino == path.stat().st_ino
    assert weekly._filter_index_file(path, tmp_path / "none.parquet", [HealpixPixel(1, 7)]) == (0, "dropped")
    assert not (tmp_path / "none.parquet").exists()
    assert weekly._filter_index_file(path, tmp_path / "one.parquet", pixels[1:]) == (2, "filtered")
    assert pq.read_table(tmp_path / "one.parquet")["diaObjectId"].to_pylist() == [12, 13]
