"""Tests of the demo PPDB export generator (ppdb_lc.generator)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hats.pixel_math.healpix_shim import radec2pix

from ppdb_lc import apdb
from ppdb_lc.generator import ChunkInfo, DemoSpec, generate_ppdb, main

SPEC = DemoSpec(
    n_objects=300,
    nights=("2026-11-20", "2026-11-21", "2026-11-22"),
    flat_layout_from=2,
    schema_10_from=2,
    changes=False,  # the plain simulation; the change log is tested on CHANGES below
)
CHANGES = DemoSpec(n_objects=400, nights=("2026-11-20", "2026-11-21", "2026-11-22", "2026-11-23"),
                   chunks_per_night=3, seed=11)
STORE_DELAY_DAYS = 60 / 86400


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[ChunkInfo]]:
    root = tmp_path_factory.mktemp("ppdb")
    return root, generate_ppdb(root, SPEC)


def _manifest_path(chunk_dir: Path) -> Path:
    (path,) = [p for p in chunk_dir.iterdir() if p.name.endswith("manifest.json")]
    return path


def _manifest(info: ChunkInfo) -> dict:
    return json.loads(_manifest_path(info.path).read_text())


def _manifest_rows(manifest: dict) -> dict[str, int]:
    if "files" in manifest:
        return {ds: manifest["files"].get(f"{ds}.parquet", {}).get("row_count", 0) for ds in apdb.DATASETS}
    return {ds: manifest["table_data"][ds]["row_count"] for ds in apdb.DATASETS}


def _load(infos: list[ChunkInfo], dataset: str) -> pd.DataFrame:
    """All rows of a dataset (int64 as nullable Int64: ids must not go through float) plus the chunk's night."""
    frames = []
    for info in infos:
        path = info.path / f"{dataset}.parquet"
        if path.exists():
            frame = pq.read_table(path).to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
            frames.append(frame.assign(night=info.night))
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def tables(export: tuple[Path, list[ChunkInfo]]) -> dict[str, pd.DataFrame]:
    _, infos = export
    return {dataset: _load(infos, dataset) for dataset in apdb.DATASETS}


def test_deterministic(export: tuple[Path, list[ChunkInfo]], tmp_path: Path) -> None:
    root, infos = export
    again = generate_ppdb(tmp_path, SPEC)
    assert [(i.chunk_id, i.rows, i.path.relative_to(tmp_path)) for i in again] == [
        (i.chunk_id, i.rows, i.path.relative_to(root)) for i in infos
    ]
    first = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    second = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert first == second
    assert all((root / rel).read_bytes() == (tmp_path / rel).read_bytes() for rel in first)


def test_other_seed_differs(tmp_path: Path, tables: dict[str, pd.DataFrame]) -> None:
    infos = generate_ppdb(tmp_path, DemoSpec(n_objects=300, nights=SPEC.nights, seed=7))
    assert not _load(infos, "DiaSource")["ra"].equals(tables["DiaSource"]["ra"])


def test_chunk_ids_and_dayobs(export: tuple[Path, list[ChunkInfo]]) -> None:
    _, infos = export
    ids = [info.chunk_id for info in infos]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert len(infos) == len(SPEC.nights) * SPEC.chunks_per_night
    for info in infos:
        assert info.chunk_id % 600 == 0
        dayobs = dt.datetime.fromtimestamp(info.chunk_id - 12 * 3600, dt.UTC).date()
        assert str(dayobs) == info.night
        manifest = _manifest(info)
        assert manifest["replica_chunk_id"] == str(info.chunk_id)
        assert info.chunk_id < float(manifest["last_update_time"]) < info.chunk_id + 600


def test_layouts_and_manifest_names(export: tuple[Path, list[ChunkInfo]]) -> None:
    root, infos = export
    for info in infos:
        night_index = SPEC.nights.index(info.night)
        parts = info.path.relative_to(root).parts
        if night_index < SPEC.flat_layout_from:
            assert len(parts) == 4 and parts[3] == str(info.chunk_id)
            expected = f"chunk_{info.chunk_id}.manifest.json" if night_index == 0 else "manifest.json"
            assert _manifest_path(info.path).name == expected
            assert "table_data" in _manifest(info) and "files" not in _manifest(info)
        else:
            assert parts == (str(info.chunk_id),)
            assert _manifest_path(info.path).name == "manifest.json"
            assert set(_manifest(info)) == {
                "schema_version", "replica_chunk_id", "unique_id", "exported_at",
                "last_update_time", "compression_format", "files",
            }  # fmt: skip
    assert {len(info.path.relative_to(root).parts) for info in infos} == {1, 4}
    assert not list(root.rglob("*.tmp"))


def test_dated_folder_is_processing_date_not_dayobs(export: tuple[Path, list[ChunkInfo]]) -> None:
    root, infos = export
    dated = [info for info in infos if len(info.path.relative_to(root).parts) == 4]
    crossing = 0
    for info in dated:
        folder = dt.date(*map(int, info.path.relative_to(root).parts[:3]))
        last_update = dt.datetime.fromtimestamp(float(_manifest(info)["last_update_time"]), dt.UTC)
        assert folder == last_update.date()
        crossing += str(folder) != info.night
    assert crossing > 0
    assert any(str(dt.date(*map(int, i.path.relative_to(root).parts[:3]))) == i.night for i in dated)


def test_manifest_header(export: tuple[Path, list[ChunkInfo]]) -> None:
    _, infos = export
    manifests = [_manifest(info) for info in infos]
    assert len({m["unique_id"] for m in manifests}) == len(manifests)
    for info, manifest in zip(infos, manifests, strict=True):
        assert manifest["compression_format"] == "snappy"
        expected_version = "10.0.0" if SPEC.nights.index(info.night) >= SPEC.schema_10_from else "9.1.1"
        assert manifest["schema_version"] == expected_version
        exported = dt.datetime.fromisoformat(manifest["exported_at"])
        assert exported.timestamp() == pytest.approx(float(manifest["last_update_time"]) + 3600)


def test_row_counts_match(export: tuple[Path, list[ChunkInfo]]) -> None:
    _, infos = export
    for info in infos:
        manifest_rows = _manifest_rows(_manifest(info))
        assert manifest_rows == info.rows
        for dataset in apdb.DATASETS:
            path = info.path / f"{dataset}.parquet"
            assert path.exists() == (info.rows[dataset] > 0)
            if path.exists():
                assert pq.read_metadata(path).num_rows == info.rows[dataset]


def test_new_format_checksums(export: tuple[Path, list[ChunkInfo]]) -> None:
    _, infos = export
    checked = 0
    for info in infos:
        manifest = _manifest(info)
        if "files" not in manifest:
            continue
        parquet_names = sorted(p.name for p in info.path.glob("*.parquet"))
        assert sorted(manifest["files"]) == parquet_names
        for name, entry in manifest["files"].items():
            data = (info.path / name).read_bytes()
            assert entry["size_bytes"] == len(data)
            assert entry["checksum"] == hashlib.sha256(data).hexdigest()
            assert entry["row_count"] >= 1
            checked += 1
    assert checked > 0


def test_schemas(export: tuple[Path, list[ChunkInfo]]) -> None:
    root, infos = export
    versions = set()
    for info in infos:
        version = _manifest(info)["schema_version"]
        for dataset in apdb.DATASETS:
            path = info.path / f"{dataset}.parquet"
            if not path.exists():
                continue
            versions.add(version)
            table = pq.read_table(path)
            assert table.schema.remove_metadata().equals(apdb.export_schema(dataset, version))
            for col in apdb.columns(dataset, version):
                if not col["nullable"]:
                    assert table[col["name"]].null_count == 0, (path, col["name"])
            assert set(table[apdb.REPLICA_CHUNK_COLUMN].to_pylist()) == {info.chunk_id}
            metadata = pq.read_metadata(path)
            assert metadata.row_group(0).column(0).compression == "SNAPPY"
    assert versions == {"9.1.1", "10.0.0"}
    assert "exposureTime" not in pq.read_schema(next(root.glob("2026/*/*/*/DiaSource.parquet"))).names


def test_empty_chunk(export: tuple[Path, list[ChunkInfo]]) -> None:
    _, infos = export
    empty = [info for info in infos if not any(info.rows.values())]
    assert empty
    for info in empty:
        assert [p.name for p in info.path.iterdir()] == [_manifest_path(info.path).name]
        assert set(_manifest_rows(_manifest(info)).values()) == {0}


def test_chunk_without_forced_sources(export: tuple[Path, list[ChunkInfo]]) -> None:
    _, infos = export
    chunks = [i for i in infos if i.rows["DiaObject"] and i.rows["DiaSource"] and not i.rows["DiaForcedSource"]]
    assert chunks
    assert all(not (info.path / "DiaForcedSource.parquet").exists() for info in chunks)


def test_solar_system_sources(tables: dict[str, pd.DataFrame]) -> None:
    sources = tables["DiaSource"]
    null_object = sources["diaObjectId"].isna()
    assert 0.02 < null_object.mean() < 0.10
    assert sources.loc[null_object, "ssObjectId"].notna().all()
    assert sources.loc[~null_object, "ssObjectId"].isna().all()
    assert tables["DiaForcedSource"]["diaObjectId"].notna().all()


def test_ids_unique(tables: dict[str, pd.DataFrame]) -> None:
    assert tables["DiaSource"]["diaSourceId"].is_unique
    assert tables["DiaForcedSource"]["diaForcedSourceId"].is_unique
    assert not tables["DiaObject"].duplicated(["diaObjectId", "validityStartMjdTai"]).any()


def test_every_source_has_object_version_in_chunk(tables: dict[str, pd.DataFrame]) -> None:
    sources = tables["DiaSource"].dropna(subset=["diaObjectId"])
    versions = tables["DiaObject"][["diaObjectId", "apdb_replica_chunk"]].drop_duplicates()
    merged = sources.merge(versions, on=["diaObjectId", "apdb_replica_chunk"], how="left", indicator=True)
    assert (merged["_merge"] == "both").all()


def test_triggered_version_after_source_midpoint(tables: dict[str, pd.DataFrame]) -> None:
    sources = tables["DiaSource"].dropna(subset=["diaObjectId"])
    versions = tables["DiaObject"][["diaObjectId", "apdb_replica_chunk", "validityStartMjdTai"]]
    merged = sources.merge(versions, on=["diaObjectId", "apdb_replica_chunk"])
    lag = merged["validityStartMjdTai"] - merged["midpointMjdTai"]
    triggered = merged[np.isclose(lag, STORE_DELAY_DAYS, rtol=0, atol=1e-7)]
    assert triggered["diaSourceId"].nunique() == len(sources)
    assert (triggered["validityStartMjdTai"] > triggered["midpointMjdTai"]).all()
    # one store time for all objects updated by one visit
    assert (sources.groupby("visit")["timeProcessedMjdTai"].nunique() == 1).all()


def test_several_versions_in_one_chunk(tables: dict[str, pd.DataFrame]) -> None:
    counts = tables["DiaObject"].groupby(["apdb_replica_chunk", "diaObjectId"]).size()
    assert counts.max() >= 2


def test_object_versions_follow_sources(tables: dict[str, pd.DataFrame]) -> None:
    """Latest version: nDiaSources = its sources, ra/dec = their mean, diaObjectId = first diaSourceId."""
    sources = tables["DiaSource"].dropna(subset=["diaObjectId"])
    per_object = sources.groupby("diaObjectId").agg(
        n=("diaSourceId", "size"), first=("diaSourceId", "min"), ra=("ra", "mean"), dec=("dec", "mean"),
        first_mjd=("midpointMjdTai", "min"),
    )  # fmt: skip
    objects = tables["DiaObject"]
    latest = objects.loc[objects.groupby("diaObjectId")["validityStartMjdTai"].idxmax()].set_index("diaObjectId")
    joined = latest.join(per_object, how="inner", suffixes=("_object", "_sources"))
    assert len(joined) == len(per_object) == len(latest)
    assert (joined["nDiaSources"] == joined["n"]).all()
    assert (joined.index == joined["first"]).all()
    np.testing.assert_allclose(joined["ra_object"], joined["ra_sources"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(joined["dec_object"], joined["dec_sources"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(joined["firstDiaSourceMjdTai"], joined["first_mjd"], rtol=0, atol=1e-9)
    ndata = sum(joined[f"{band}_psfFluxNdata"] for band in "ugrizy")
    assert (ndata == joined["nDiaSources"]).all()
    assert objects["validityEndMjdTai"].isna().all()


def test_band_means_null_without_detections(tables: dict[str, pd.DataFrame]) -> None:
    objects = tables["DiaObject"]
    for band in "ugrizy":
        none = objects[f"{band}_psfFluxNdata"] == 0
        assert objects.loc[none, f"{band}_scienceFluxMean"].isna().all()
        assert objects.loc[~none, f"{band}_scienceFluxMean"].notna().all()


def test_forced_sources_at_object_positions(tables: dict[str, pd.DataFrame]) -> None:
    forced = tables["DiaForcedSource"]
    versions = tables["DiaObject"][["diaObjectId", "ra", "dec"]].drop_duplicates()
    merged = forced.merge(versions, on=["diaObjectId", "ra", "dec"], how="left", indicator=True)
    assert (merged["_merge"] == "both").all()


def test_forced_source_orphans(tables: dict[str, pd.DataFrame]) -> None:
    forced, objects = tables["DiaForcedSource"], tables["DiaObject"]
    for night in SPEC.nights[1:]:
        updated = set(objects.loc[objects["night"] == night, "diaObjectId"])
        tonight = forced.loc[forced["night"] == night, "diaObjectId"]
        orphans = ~tonight.isin(updated)
        assert orphans.sum() >= 10 and orphans.mean() > 0.05, night


def test_negative_science_flux(tables: dict[str, pd.DataFrame]) -> None:
    assert (tables["DiaSource"]["scienceFlux"] < 0).sum() > 0
    assert (tables["DiaForcedSource"]["scienceFlux"] < 0).sum() > 0
    assert (tables["DiaSource"]["psfFlux"] < 0).sum() > 0


def test_object_crosses_order6_pixel(tables: dict[str, pd.DataFrame]) -> None:
    objects = tables["DiaObject"]
    pixels = objects.assign(pixel=radec2pix(6, objects["ra"].to_numpy(), objects["dec"].to_numpy()))
    assert (pixels.groupby("diaObjectId")["pixel"].nunique() > 1).sum() >= 1
    all_pixels = radec2pix(6, tables["DiaSource"]["ra"].to_numpy(), tables["DiaSource"]["dec"].to_numpy())
    assert len(set(all_pixels)) > 4


def test_new_objects_every_night(tables: dict[str, pd.DataFrame]) -> None:
    first_night = tables["DiaObject"].groupby("diaObjectId")["night"].min()
    assert set(first_night) == set(SPEC.nights)
    assert first_night.nunique() == len(SPEC.nights)


def test_visits_and_times(export: tuple[Path, list[ChunkInfo]], tables: dict[str, pd.DataFrame]) -> None:
    _, infos = export
    sources = tables["DiaSource"]
    assert sources["detector"].between(0, 188).all()
    assert sources["band"].isin(list("ugrizy")).all()
    assert (sources.groupby("visit")["band"].nunique() == 1).all()
    chunk_start_mjd = sources["apdb_replica_chunk"].astype("float64") / 86400 + 40587
    store_offset = (sources["timeProcessedMjdTai"] - chunk_start_mjd) * 86400
    assert store_offset.between(0, 600).all()
    visit_order = sources.groupby("visit")["apdb_replica_chunk"].first()
    assert visit_order.is_monotonic_increasing
    assert all(str(visit)[:8] == night.replace("-", "") for visit, night in zip(sources["visit"], sources["night"]))


def test_spec_validation() -> None:
    with pytest.raises(ValueError):
        DemoSpec(nights=("2026-11-21", "2026-11-20"))
    with pytest.raises(ValueError):
        DemoSpec(chunks_per_night=100)
    with pytest.raises(ValueError):
        DemoSpec(nights=("2026-11-20",), chunks_per_night=1)


def test_cli_writes_and_summarises(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "export"
    argv = ["--out", str(out), "--objects", "80", "--nights", "2", "--start", "2026-12-01", "--chunks-per-night", "3"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["2026-12-01", "2026-12-02"]
    assert len(list(out.rglob("*manifest.json"))) == 7  # 3 a night and the daytime chunk of update records


def test_cli_refuses_non_empty_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "existing.txt").write_text("x")
    assert main(["--out", str(tmp_path), "--objects", "10"]) == 2
    assert "not an empty directory" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["existing.txt"]


@pytest.fixture(scope="module")
def changes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[ChunkInfo]]:
    root = tmp_path_factory.mktemp("changes")
    return root, generate_ppdb(root, CHANGES)


def _records(infos: list[ChunkInfo]) -> pd.DataFrame:
    rows = []
    for info in infos:
        path = info.path / "updates.parquet"
        if path.exists():
            for row in pq.read_table(path).to_pylist():
                rows.append({**json.loads(row.pop("json_payload")), **row, "dir": info.path})
    return pd.DataFrame(rows, dtype=object)  # ids stay exact Python ints (float64 cannot hold them)


def test_change_log_has_every_record_type_and_a_daytime_update_chunk(changes):
    root, infos = changes
    records = _records(infos)
    assert set(records["update_type"]) == {
        "reassign_diasource_to_diaobject", "reassign_diasource_to_ssobject", "withdraw_diasource",
        "withdraw_diaforcedsource", "close_diaobject_validity", "update_n_dia_sources"}
    only_updates = [i for i in infos if sorted(p.name for p in i.path.iterdir())[-1] == "updates.parquet"
                    and not any((i.path / f"{d}.parquet").exists() for d in apdb.DATASETS)]
    assert len(only_updates) == 1 and only_updates[0].night == CHANGES.nights[1]
    # a dedup run inside a night chunk too: closes in two chunks
    closes = records[records["update_type"] == "close_diaobject_validity"]
    assert closes["dir"].nunique() == 2 and closes["nDiaSources"].isna().all()
    for info in infos:  # the manifest announces the records (old format: update_count; new: a checksummed entry)
        manifest = _manifest(info)
        path = info.path / "updates.parquet"
        if "files" in manifest and path.exists():
            entry = manifest["files"]["updates.parquet"]
            assert entry["checksum"] == hashlib.sha256(path.read_bytes()).hexdigest()
            assert entry["row_count"] == pq.read_metadata(path).num_rows
        elif "files" not in manifest:
            assert manifest.get("update_count", 0) == (pq.read_metadata(path).num_rows if path.exists() else 0)


def test_dedup_twins_are_close_and_reassigned_to_the_older_object(changes):
    _, infos = changes
    records = _records(infos)
    objects = _load(infos, "DiaObject")
    reassign = records[records["update_type"] == "reassign_diasource_to_diaobject"]
    closes = records[records["update_type"] == "close_diaobject_validity"]
    sources = _load(infos, "DiaSource").drop_duplicates("diaSourceId").set_index("diaSourceId")
    for row in reassign[reassign["dir"].isin(set(closes["dir"]))].itertuples():
        old = int(sources.loc[row.diaSourceId, "diaObjectId"])
        if old in set(closes["diaObjectId"]):
            assert row.diaObjectId < old  # the older object (smaller id) is kept
    latest = objects.sort_values("validityStartMjdTai").groupby("diaObjectId").tail(1).set_index("diaObjectId")
    pairs = reassign.merge(sources[["diaObjectId"]].rename(columns={"diaObjectId": "old"}), left_on="diaSourceId",
                           right_index=True)
    pairs = pairs[pairs["old"].isin(closes["diaObjectId"]) & pairs["dir"].isin(set(closes["dir"]))]
    sep = np.hypot((latest.loc[pairs["old"], "ra"].to_numpy() - latest.loc[pairs["diaObjectId"], "ra"].to_numpy())
                   * np.cos(np.radians(2.0)), latest.loc[pairs["old"], "dec"].to_numpy()
                   - latest.loc[pairs["diaObjectId"], "dec"].to_numpy()) * 3600
    assert len(pairs) and (sep < 1.5).all()
    # some twins lie in different order-6 pixels
    pix = radec2pix(6, latest["ra"].to_numpy(), latest["dec"].to_numpy())
    pixel = dict(zip(latest.index, pix, strict=True))
    assert any(pixel[a] != pixel[b] for a, b in zip(pairs["old"], pairs["diaObjectId"], strict=True))
    # a retired object gets no new version after its close record's chunk
    for row in closes.itertuples():
        later = objects[(objects["diaObjectId"] == row.diaObjectId) & (objects["apdb_replica_chunk"]
                                                                     > row.apdb_replica_chunk)]
        assert later.empty


def test_re_emitted_sources_and_last_write_wins_cases(changes):
    _, infos = changes
    sources = _load(infos, "DiaSource")
    copies = sources[sources["diaSourceId"].duplicated(keep=False)]
    assert copies["diaSourceId"].nunique() >= 4
    first = copies.sort_values("apdb_replica_chunk").groupby("diaSourceId").head(1).set_index("diaSourceId")
    later = copies.sort_values("apdb_replica_chunk").groupby("diaSourceId").tail(1).set_index("diaSourceId")
    assert (later["apdb_replica_chunk"].to_numpy() > first.loc[later.index, "apdb_replica_chunk"].to_numpy()).all()
    assert (later["diaObjectId"].to_numpy() != first.loc[later.index, "diaObjectId"].to_numpy()).any()  # other object
    assert (later["night"].to_numpy() != first.loc[later.index, "night"].to_numpy()).any()  # across nights
    records = _records(infos)
    twice = records[records["update_type"] == "reassign_diasource_to_diaobject"].groupby("diaSourceId")
    assert any(len(g) == 2 and g["update_time_ns"].is_monotonic_increasing for _, g in twice)
    n = records[records["update_type"] == "update_n_dia_sources"]
    pairs = n.groupby(["dir", "diaObjectId"]).filter(lambda g: len(g) == 2)
    assert len(pairs) and not pairs.groupby(["dir", "diaObjectId"])["update_time_ns"].apply(
        lambda t: t.is_monotonic_increasing).any()  # the older record is stored last
