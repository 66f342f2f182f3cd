"""Compaction: groups of old/new pixels, objects moving between groups, spilling, margin and index rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hats.pixel_math import HealpixPixel

from ppdb_lc import catalog, collection, compaction, lightcurves, margins, partitioning, postprocess
from ppdb_lc.settings import CollectionNames
from ppdb_lc.stash import Stash

SCHEMA = lightcurves.catalog_schema()


def night(object_ids, ra, dec, version, source_ids) -> pa.Table:
    """Nested rows of one night: one version per object and one source each (at the object's position)."""
    n = len(object_ids)
    objects = postprocess.postprocess(postprocess.conform(pa.table({
        "diaObjectId": pa.array(object_ids, pa.int64()), "validityStartMjdTai": [float(version)] * n,
        "ra": pa.array(ra, pa.float64()), "dec": pa.array(dec, pa.float64())}), "DiaObject"), "DiaObject")
    sources = postprocess.postprocess(postprocess.conform(pa.table({
        "diaSourceId": pa.array(source_ids, pa.int64()), "diaObjectId": pa.array(object_ids, pa.int64()),
        "midpointMjdTai": [float(version)] * n, "ra": pa.array(ra, pa.float64()),
        "dec": pa.array(dec, pa.float64())}), "DiaSource"), "DiaSource")
    forced = postprocess.postprocess(postprocess.conform(pa.table({
        "diaForcedSourceId": pa.array([], pa.int64()), "diaObjectId": pa.array([], pa.int64()),
        "midpointMjdTai": pa.array([], pa.float64()), "ra": pa.array([], pa.float64()),
        "dec": pa.array([], pa.float64())}), "DiaForcedSource"), "DiaForcedSource")
    rows, _ = lightcurves.nest_batch(objects, sources, forced, SCHEMA)
    return rows


def two_fields_with_movers():
    """Two fields far apart, 200 objects each; object 0 moves from field B to A, object 399 from A to B."""
    rng = np.random.default_rng(3)
    ids = np.arange(400)
    ra = np.where(ids < 200, 10.0, 100.0) + rng.uniform(0, 0.5, 400)
    dec = np.where(ids < 200, 0.0, 30.0) + rng.uniform(0, 0.5, 400)
    ra1, dec1 = ra.copy(), dec.copy()
    ra1[[0, 399]], dec1[[0, 399]] = [100.2, 10.2], [30.2, 0.2]  # night 1: 0 lies in field B, 399 in field A
    first = night(ids, ra1, dec1, 1, ids + 1000)
    second = night(ids, ra, dec, 2, ids + 2000)  # night 2: every object at its final position
    return first, second


def catalog_files(tmp_path: Path, nights: list[pa.Table], pixels: list[HealpixPixel]) -> list[compaction.Source]:
    """Write each night's rows per pixel, as dailies do."""
    sources = []
    for n, rows in enumerate(nights):
        slots = partitioning.locate(rows["_healpix_29"].to_numpy(), pixels)
        for slot in np.unique(slots):
            path = tmp_path / f"{n}-{slot}.parquet"
            pq.write_table(rows.filter(pa.array(slots == slot)), path)
            sources.append(compaction.Source(path, pixels[slot]))
    return sources


def folded_by_pixel(plan: compaction.Compaction) -> dict[int, pa.Table]:
    out = {}
    for slot, rows in plan.folded():
        assert slot not in out
        out[slot] = rows
    return out


def test_pixel_groups_nest_old_and_new_pixels():
    destination = [HealpixPixel(2, 4), HealpixPixel(2, 5), HealpixPixel(1, 7)]
    sources = [HealpixPixel(1, 1), HealpixPixel(2, 28), HealpixPixel(2, 40)]
    dest_group, source_group = compaction.pixel_groups(destination, sources)
    assert dest_group.tolist() == [0, 0, 1] and source_group.tolist() == [0, 1, 2]


def test_weekly_compaction_moves_objects_across_groups_and_equals_a_global_fold(tmp_path):
    first, second = two_fields_with_movers()
    old_pixels = partitioning.sorted_pixels({HealpixPixel(3, int(h >> (2 * 26)))
                                             for h in np.concatenate([first["_healpix_29"], second["_healpix_29"]])})
    assert len(old_pixels) == 2
    sources = catalog_files(tmp_path, [first, second], old_pixels)
    plan = compaction.Compaction(sources, tmp_path / "scratch", schema=SCHEMA, order=8, threshold=60, memory_limit=0)
    assert plan.rows_in == 800 and plan.objects == 400 and len(plan.pixels) >= 8
    assert plan.moved_rows == 2  # the night-1 rows of objects 0 and 399
    out = folded_by_pixel(plan)
    assert plan.spilled_bytes > 0 and not (tmp_path / "scratch").exists()
    assert sorted(out) == list(range(len(plan.pixels)))
    for slot, rows in out.items():
        assert (partitioning.locate(rows["_healpix_29"].to_numpy(), plan.pixels) == slot).all()
    got = pa.concat_tables(out.values()).sort_by("diaObjectId")
    expected = lightcurves.fold(pa.concat_tables([first, second]), SCHEMA).sort_by("diaObjectId")
    assert got.equals(expected)
    movers = {r["diaObjectId"]: r for r in got.take([0, 399]).to_pylist()}
    assert movers[0]["ra"] < 11 and movers[0]["diaSource"]["diaSourceId"] == [1000, 2000]
    assert movers[399]["ra"] > 99 and movers[399]["diaSource"]["diaSourceId"] == [1399, 2399]


def test_bootstrap_compaction_routes_unpartitioned_sources(tmp_path):
    first, second = two_fields_with_movers()
    paths = []
    for n, rows in enumerate([first, second]):
        paths.append(tmp_path / f"{n}.parquet")
        pq.write_table(rows, paths[-1])
    plan = compaction.Compaction([compaction.Source(p) for p in paths], tmp_path / "scratch", schema=SCHEMA,
                                 order=8, threshold=60)
    got = pa.concat_tables(folded_by_pixel(plan).values()).sort_by("diaObjectId")
    assert plan.spilled_bytes == 0
    assert got.equals(lightcurves.fold(pa.concat_tables([first, second]), SCHEMA).sort_by("diaObjectId"))


def test_stash_keeps_order_and_spills(tmp_path):
    t = pa.table({"x": pa.array([1, 2, 3], pa.int64())})
    stash = Stash(tmp_path / "s", t.schema, memory_limit=0)
    stash.put(5, t.slice(0, 1))
    stash.put(5, t.slice(1, 2))
    stash.put(7, t.slice(0, 1))
    assert stash.keys() == {5, 7} and len(list((tmp_path / "s").glob("*.arrow"))) == 3
    assert stash.take(5)["x"].to_pylist() == [1, 2, 3]
    assert stash.keys() == {7} and stash.take(9).num_rows == 0
    held = Stash(tmp_path / "h", t.schema)  # in memory: masked rows are not copied, and filtered on take
    held.put(1, t, np.array([True, False, True]))
    table, keep = held.take_masked(1)
    assert table.num_rows == 3 and keep.tolist() == [True, False, True]
    held.put(1, t, np.array([True, False, True]))
    assert held.take(1)["x"].to_pylist() == [1, 3]
    held.put_rows(t, np.array([2, 0, 1]), np.array([4, 3, 4]))  # row i under key i, one take for all keys
    assert held.take(3)["x"].to_pylist() == [1] and held.take(4)["x"].to_pylist() == [2, 3]
    stash.close()
    assert not (tmp_path / "s").exists()


def test_margin_collector_and_index_rows(tmp_path):
    first, _ = two_fields_with_movers()
    hp29 = first["_healpix_29"].to_numpy()
    pixels = partitioning.new_pixels(hp29, [], order=8, threshold=60)
    slots = partitioning.locate(hp29, pixels)
    order = margins.margin_order(10.0, pixels)
    collector = margins.MarginCollector(pixels, order, Stash(tmp_path / "m", SCHEMA))
    for slot in range(len(pixels)):
        collector.add(slot, first.filter(pa.array(slots == slot)))
    counts = collector.write(tmp_path / "margin", "compacted.parquet")
    rows, targets = margins.margin_targets(hp29, slots, pixels, order)
    assert sum(counts.values()) == len(rows) > 0
    for slot in np.unique(targets):
        written = pq.read_table(tmp_path / "margin" / "dataset" / f"Norder={pixels[slot].order}" /
                                f"Dir={pixels[slot].pixel // 10000 * 10000}" / f"Npix={pixels[slot].pixel}" /
                                "compacted.parquet")
        assert sorted(written["diaObjectId"].to_pylist()) == sorted(first["diaObjectId"].to_numpy()[rows[targets == slot]])
    names = CollectionNames()
    index = collection.index_rows(first["diaObjectId"].to_numpy()[::-1], hp29[::-1], slots[::-1], pixels,
                                  collection.index_schema(names), names.index_column)
    assert index.column_names == ["_healpix_29", "Norder", "Npix", "diaObjectId"]
    assert index["diaObjectId"].to_pylist() == sorted(first["diaObjectId"].to_pylist())
    np.testing.assert_array_equal(index["Npix"].to_numpy(), np.array([p.pixel for p in pixels])[
        partitioning.locate(index["_healpix_29"].to_numpy(), pixels)])


def test_catalog_files_are_read_in_parts_of_bounded_points(tmp_path):
    """``catalog.read_parts``: consecutive parts of about the asked number of points (at least one row each), that
    concatenate to the file; key columns come as one struct per nested table."""
    first, second = two_fields_with_movers()
    rows = lightcurves.fold(pa.concat_tables([first, second]), SCHEMA)  # 400 rows of 2 points each
    path = tmp_path / "file.parquet"
    catalog.write_leaf(rows, path)
    # 2 sources and an empty forced list, which counts as one entry (its level in the file): parts err small
    assert catalog.points_per_row(pq.ParquetFile(path).metadata) == 3.0
    for points, rows_per_part in ((30, 10), (1, 1), (10**6, 400)):
        parts = list(catalog.read_parts(path, points, schema=SCHEMA))
        assert {p.num_rows for p in parts[:-1]} <= {rows_per_part} and 0 < parts[-1].num_rows <= rows_per_part
        assert len(parts) == -(-400 // rows_per_part)
        assert pa.concat_tables(parts).equals(rows.cast(SCHEMA))
    keys = next(catalog.read_parts(path, 30, columns=["diaObjectId", "diaSource.diaSourceId"]))
    assert keys.column_names == ["diaObjectId", "diaSource"]
    want = rows["diaSource"].combine_chunks().field("diaSourceId").to_pylist()[:10]
    assert keys["diaSource"].combine_chunks().field("diaSourceId").to_pylist() == want and len(want[0]) == 2
