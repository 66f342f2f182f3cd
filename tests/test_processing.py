"""Postprocessing, nesting by id, folding, partitioning and margins."""

from __future__ import annotations

from pathlib import Path

import astropy.units as u
import numpy as np
import pyarrow as pa
import pytest
from hats.pixel_math import HealpixPixel, get_margin
from hats.pixel_math.spatial_index import compute_spatial_index

from ppdb_lc import apdb, lightcurves, margins, partitioning, postprocess


def conformed(dataset: str, **columns) -> pa.Table:
    n = len(next(iter(columns.values())))
    arrays = {k: pa.array(v) for k, v in columns.items()}
    return postprocess.conform(pa.table(arrays) if n else pa.table(arrays), dataset)


def test_conform_fills_missing_and_drops_unknown_columns():
    t = conformed("DiaSource", diaSourceId=[1], diaObjectId=[5], midpointMjdTai=[6e4], ra=[1.0], dec=[2.0],
                  brandNewColumn=[3])
    assert t.schema == apdb.export_schema("DiaSource")
    assert t["exposureTime"].null_count == 1 and "brandNewColumn" not in t.column_names
    with pytest.raises(ValueError, match="missing required column"):
        postprocess.conform(pa.table({"diaSourceId": [1]}), "DiaSource")


def test_latest_version_per_object():
    t = conformed("DiaObject", diaObjectId=[7, 7, 8, 7], validityStartMjdTai=[3.0, 5.0, 1.0, 4.0],
                  ra=[1.0, 2.0, 3.0, 4.0], dec=[0.0] * 4)
    latest = postprocess.latest_versions(t)
    assert latest["diaObjectId"].to_pylist() == [7, 8]
    assert latest["ra"].to_pylist() == [2.0, 3.0]


def test_magnitudes_match_astropy_and_types():
    flux = np.array([3631e9, 1000.0, -5.0, 0.0], dtype=np.float32)
    t = conformed("DiaSource", diaSourceId=[1, 2, 3, 4], diaObjectId=[1, 1, 1, 1], midpointMjdTai=[6e4] * 4,
                  ra=[1.0] * 4, dec=[0.0] * 4, scienceFlux=flux, scienceFluxErr=np.float32([10, 10, 1, 1]))
    out = postprocess.postprocess(t, "DiaSource")
    mag = out["scienceMag"].to_numpy(zero_copy_only=False)
    assert mag[0] == pytest.approx(0.0, abs=1e-4)
    assert mag[1] == pytest.approx((1000 * u.nJy).to(u.ABmag).value, rel=1e-6)
    assert out["scienceMag"].null_count == 2  # negative and zero flux have no magnitude
    err = out["scienceMagErr"].to_numpy(zero_copy_only=False)[1]
    half_span = ((990 * u.nJy).to(u.ABmag).value - (1010 * u.nJy).to(u.ABmag).value) / 2
    assert err == pytest.approx(half_span, rel=1e-5)
    types = {f.name: f.type for f in out.schema}
    assert types["midpointMjdTai"] == pa.float64() and types["timeProcessedMjdTai"] == pa.float64()
    assert types["ra"] == pa.float64() and types["trailRa"] == pa.float64()
    assert types["scienceMag"] == pa.float32() and types["x"] == pa.float32()  # x is float in the APDB


def test_downcast_keeps_positions_and_mjd():
    t = pa.table({"ra": [1.0], "fooMjdTai": [2.0], "other": [3.0]})
    out = postprocess.downcast(t)
    assert [f.type for f in out.schema] == [pa.float64(), pa.float64(), pa.float32()]


def batch_tables():
    objects = postprocess.postprocess(conformed(
        "DiaObject", diaObjectId=[10, 20], validityStartMjdTai=[5.0, 5.0], ra=[10.0, 10.001], dec=[0.0, 0.0]),
        "DiaObject")
    sources = postprocess.postprocess(conformed(
        "DiaSource", diaSourceId=[1, 2, 3, 4], diaObjectId=[10, 10, None, 30], midpointMjdTai=[4.0, 3.0, 4.0, 4.0],
        ra=[10.0, 10.0, 50.0, 20.0], dec=[0.0] * 4), "DiaSource")
    forced = postprocess.postprocess(conformed(
        "DiaForcedSource", diaForcedSourceId=[100, 101, 102], diaObjectId=[20, 40, 40],
        midpointMjdTai=[4.0, 2.0, 3.0], ra=[10.001, 30.0, 30.5], dec=[0.0] * 3), "DiaForcedSource")
    return objects, sources, forced


def test_nest_batch_exact_by_id_with_orphans():
    schema = lightcurves.catalog_schema()
    rows, stats = lightcurves.nest_batch(*batch_tables(), schema)
    assert rows.schema == schema
    by_id = {r["diaObjectId"]: r for r in rows.to_pylist()}
    assert sorted(by_id) == [10, 20, 30, 40]
    assert by_id[10]["diaSource"]["diaSourceId"] == [2, 1]  # sorted by midpointMjdTai
    assert by_id[20]["diaForcedSource"]["diaForcedSourceId"] == [100]
    # orphan rows: null object columns, position from the latest forced source (else mean source position)
    assert by_id[40]["validityStartMjdTai"] is None and by_id[40]["ra"] == 30.5
    assert by_id[30]["ra"] == 20.0 and by_id[30]["diaSource"]["diaSourceId"] == [4]
    assert (stats.objects, stats.orphan_rows, stats.sources, stats.forced_sources, stats.solar_system_sources) == (
        2, 2, 3, 3, 1)
    hp29 = rows["_healpix_29"].to_numpy()
    assert (np.diff(hp29) >= 0).all()
    np.testing.assert_array_equal(hp29, compute_spatial_index(rows["ra"].to_numpy(), rows["dec"].to_numpy()))


def test_fold_merges_versions_orphans_and_light_curves():
    schema = lightcurves.catalog_schema()
    night1, _ = lightcurves.nest_batch(*batch_tables(), schema)
    objects, sources, forced = batch_tables()
    newer = objects.set_column(1, "validityStartMjdTai", pa.array([9.0, 9.0])).set_column(
        objects.schema.get_field_index("ra"), "ra", pa.array([10.5, 10.001]))
    night2, _ = lightcurves.nest_batch(newer.filter(pa.array([True, False])),
                                       sources.slice(0, 1).set_column(0, "diaSourceId", pa.array([9], pa.int64())),
                                       forced.slice(1, 1), schema)
    folded = lightcurves.fold(pa.concat_tables([night1, night2.cast(schema)]), schema)
    by_id = {r["diaObjectId"]: r for r in folded.to_pylist()}
    assert sorted(by_id) == [10, 20, 30, 40]
    assert by_id[10]["ra"] == 10.5 and by_id[10]["validityStartMjdTai"] == 9.0
    assert sorted(by_id[10]["diaSource"]["diaSourceId"]) == [1, 2, 9]
    assert by_id[10]["diaSource"]["midpointMjdTai"] == sorted(by_id[10]["diaSource"]["midpointMjdTai"])
    assert by_id[40]["diaForcedSource"]["diaForcedSourceId"] == [101, 102]  # deduplicated by id
    assert folded.num_rows == 4
    # folding a subset of rows by mask equals folding the filtered table
    both = pa.concat_tables([night1, night2.cast(schema)])
    for keep in (np.arange(both.num_rows) % 2 == 0, np.arange(both.num_rows) < 5):
        assert lightcurves.fold(both, schema, keep).equals(lightcurves.fold(both.filter(pa.array(keep)), schema))
    assert lightcurves.fold(both, schema, np.zeros(both.num_rows, dtype=bool)).num_rows == 0


def test_partition_keeps_existing_pixels_and_adds_new_outside():
    rng = np.random.default_rng(0)
    hp_in = compute_spatial_index(rng.uniform(10, 11, 500), rng.uniform(0, 1, 500))
    existing = partitioning.new_pixels(hp_in, [], order=8, threshold=100)
    assert existing == partitioning.sorted_pixels(existing)
    hp_out = compute_spatial_index(rng.uniform(200, 201, 50), rng.uniform(-30, -29, 50))
    pixels, slots, created = partitioning.partition(np.concatenate([hp_in[:100], hp_out]), existing, order=8,
                                                    threshold=100)
    assert created and set(existing) <= set(pixels)
    for i, hp in enumerate(np.concatenate([hp_in[:100], hp_out])):
        p = pixels[slots[i]]
        assert hp >> (2 * (29 - p.order)) == p.pixel
    assert {pixels[s] for s in slots[:100]} <= set(existing)


def test_margin_targets_equal_hats_get_margin():
    rng = np.random.default_rng(1)
    hp29 = compute_spatial_index(rng.uniform(10, 14, 4000), rng.uniform(-2, 2, 4000))
    pixels = partitioning.new_pixels(hp29, [], order=7, threshold=300)
    slots = partitioning.locate(hp29, pixels)
    order = margins.margin_order(10.0, pixels)
    rows, targets = margins.margin_targets(hp29, slots, pixels, order)
    got = set(zip(rows.tolist(), targets.tolist(), strict=True))
    cells = hp29 >> (2 * (29 - order))
    expected = set()
    for slot, pixel in enumerate(pixels):
        border = get_margin(pixel.order, pixel.pixel, order - pixel.order)
        expected |= {(int(r), slot) for r in np.flatnonzero(np.isin(cells, border))}
    assert got == expected and len(got) > 0
    with pytest.raises(ValueError, match="margin order"):
        margins.margin_order(3600.0, [HealpixPixel(8, 0)])


def test_latest_per_object_tie_break():
    ids = np.array([7, 7, 8, 7, 8, 9, 9])
    version = np.array([3.0, 5.0, 1.0, 5.0, -np.inf, -np.inf, -np.inf])  # 7: tie at 5; 9: two orphan rows
    assert postprocess.latest_per_object(ids, version).tolist() == [3, 2, 6]  # ties: the later row
    hp29 = np.array([0, 9, 0, 1, 0, 4, 2])
    assert postprocess.latest_per_object(ids, version, hp29).tolist() == [1, 2, 5]  # ties: greatest hp29 first
    t = conformed("DiaObject", diaObjectId=[7, 7, 8], validityStartMjdTai=[5.0, 5.0, None], ra=[1.0, 2.0, 3.0],
                  dec=[0.0] * 3)
    assert postprocess.latest_versions(t)["ra"].to_pylist() == [2.0, 3.0]


#: config/config.yaml values that deliberately differ from the schema default (demo scale)
DEMO_SETTINGS = {("catalog", "pixel_threshold"): 250, ("sharding", "rows_per_stage_job"): 1500,
                 ("sharding", "rows_per_ingest_job"): 3000}


def test_settings_defaults_match_schema():
    import yaml

    from ppdb_lc.settings import Settings

    root = Path(__file__).resolve().parents[1]
    schema = yaml.safe_load((root / "config" / "schema.yaml").read_text())
    props, cat = schema["properties"], schema["properties"]["catalog"]["properties"]
    defaults = Settings.from_config({"ppdb_dir": "p", "collection_dir": "c", "work_dir": "w"})
    assert defaults == Settings(Path("p"), Path("c"), Path("w"))  # from_config falls back on the field defaults
    assert props["until"]["default"] == "all" and defaults.until is None
    assert defaults.names.catalog == cat["name"]["default"]
    assert defaults.names.margin_arcsec == cat["margin_threshold_arcsec"]["default"]
    assert defaults.pixel_threshold == cat["pixel_threshold"]["default"]
    assert defaults.highest_healpix_order == cat["highest_healpix_order"]["default"]
    assert list(defaults.skymap_alt_orders) == cat["skymap_alt_orders"]["default"]
    assert list(defaults.keep_float64) == cat["keep_float64"]["default"]
    assert defaults.keep_versions == props["keep_versions"]["default"]
    assert defaults.validate_commits == props["validate_commits"]["default"]
    assert defaults.on_invalid_chunk == props["on_invalid_chunk"]["default"]
    assert defaults.rows_per_stage_job == props["sharding"]["properties"]["rows_per_stage_job"]["default"]
    assert defaults.rows_per_ingest_job == props["sharding"]["properties"]["rows_per_ingest_job"]["default"]
    weekly = props["weekly"]["properties"]
    assert defaults.weekly_mode == weekly["mode"]["default"]
    assert defaults.weekly_shards == weekly["shards"]["default"]
    assert defaults.weekly_full_above == weekly["full_above"]["default"]
    # every schema property with a default is checked above or is the demo section (jobs.py reads it validated)
    checked = {"until", "keep_versions", "validate_commits", "on_invalid_chunk", "catalog", "demo", "sharding",
               "weekly"}
    assert {k for k, v in props.items() if "default" in v} <= checked
    # config/config.yaml: schema defaults, except the listed demo settings
    config = yaml.safe_load((root / "config" / "config.yaml").read_text())
    for section in ("catalog", "demo", "sharding", "weekly"):
        for key, value in config[section].items():
            expected = DEMO_SETTINGS.get((section, key), props[section]["properties"][key]["default"])
            assert value == expected, (section, key)
    for key in ("until", "keep_versions", "validate_commits", "on_invalid_chunk"):
        assert config[key] == props[key]["default"], key
