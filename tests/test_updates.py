"""Update records: parsing and checking, PPDB order and last-write-wins, application to flat tables and to
committed rows, re-emitted copies."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ppdb_lc import apdb, lightcurves, postprocess, revise, updates

T0 = 1640995200000000000  # 2022-01-01 in ns
MJD = 59580.0


def payload(kind: str, **fields) -> str:
    base = {"ra": 45.0, "dec": -30.0}
    if kind != "close_diaobject_validity" and kind != "update_n_dia_sources":
        base["midpointMjdTai"] = 60000.0
    return json.dumps({"update_type": kind, **base, **fields})


def transport(rows: list[tuple[int, int, str]], chunk: int = 1614600000) -> pa.Table:
    return pa.table({
        "apdb_replica_chunk": pa.array([chunk] * len(rows), pa.int64()),
        "update_time_ns": pa.array([r[0] for r in rows], pa.int64()),
        "update_order": pa.array([r[1] for r in rows], pa.int64()),
        "json_payload": pa.array([r[2] for r in rows], pa.string()),
    })


def eight_records() -> pa.Table:
    """The eight records of dax_ppdb's update-records fixture (same targets, values and order)."""
    return transport([
        (T0, 0, payload("reassign_diasource_to_diaobject", diaSourceId=100001, diaObjectId=300001)),
        (T0, 1, payload("reassign_diasource_to_ssobject", diaSourceId=100002, ssObjectId=2001,
                        ssObjectReassocTimeMjdTai=MJD)),
        (T0, 2, payload("withdraw_diasource", diaSourceId=100003, timeWithdrawnMjdTai=MJD)),
        (T0, 3, payload("withdraw_diaforcedsource", diaObjectId=200001, visit=12345, detector=42,
                        timeWithdrawnMjdTai=MJD)),
        (T0, 4, payload("close_diaobject_validity", diaObjectId=200001, validityEndMjdTai=MJD, nDiaSources=5)),
        (T0, 5, payload("update_n_dia_sources", diaObjectId=200002, nDiaSources=10)),
        (T0 + 1_000_000_000, 0, payload("reassign_diasource_to_diaobject", diaSourceId=100001, diaObjectId=400001)),
        (T0 - 1_000_000_000, 5, payload("update_n_dia_sources", diaObjectId=200002, nDiaSources=8)),
    ])


def test_eight_record_fixture_last_write_wins():
    records = updates.parse_records(eight_records(), "fixture")
    assert records.num_rows == 8
    effects = updates.reduce(records)
    src = effects.sources.set_index("diaSourceId")
    assert src.loc[100001, "diaObjectId"] == 400001  # the reassignment 1 s later wins
    assert src.loc[100002, "ssObjectId"] == 2001 and src.loc[100002, "diaObjectId__set"]
    assert updates._py(src.loc[100002, "diaObjectId"]) is None  # leaves the DiaObject light curves
    assert src.loc[100003, "timeWithdrawnMjdTai"] == MJD and not src.loc[100003, "diaObjectId__set"]
    obj = effects.objects.set_index("diaObjectId")
    assert obj.loc[200002, "nDiaSources"] == 10  # the older record (stored last) loses
    assert obj.loc[200001, "validityEndMjdTai"] == MJD and obj.loc[200001, "nDiaSources"] == 5
    assert effects.forced[["diaObjectId", "visit", "detector"]].values.tolist() == [[200001, 12345, 42]]


def test_close_without_n_dia_sources_keeps_the_count():
    records = updates.parse_records(transport([
        (T0, 0, payload("update_n_dia_sources", diaObjectId=7, nDiaSources=3)),
        (T0 + 1, 0, payload("close_diaobject_validity", diaObjectId=7, validityEndMjdTai=MJD, nDiaSources=None)),
    ]), "x")
    obj = updates.reduce(records).objects.set_index("diaObjectId")
    assert obj.loc[7, "nDiaSources"] == 3 and obj.loc[7, "validityEndMjdTai"] == MJD


@pytest.mark.parametrize("bad, message", [
    ("{not json", "not valid JSON"),
    (json.dumps({"update_type": "delete_diaobject", "diaObjectId": 1, "ra": 1.0, "dec": 1.0}), "unknown update_type"),
    (json.dumps({"update_type": "withdraw_diasource", "ra": 1.0, "dec": 1.0, "midpointMjdTai": 1.0,
                 "timeWithdrawnMjdTai": 1.0}), "lacks required field(s) diaSourceId"),
    (json.dumps({"update_type": "withdraw_diasource", "diaSourceId": "12", "ra": 1.0, "dec": 1.0,
                 "midpointMjdTai": 1.0, "timeWithdrawnMjdTai": 1.0}), "must be an integer"),
    (json.dumps([1, 2]), "not a JSON object"),
])
def test_bad_records_name_chunk_record_and_reason(bad, message):
    with pytest.raises(updates.BadUpdateError) as err:
        updates.parse_records(transport([(T0, 0, payload("update_n_dia_sources", diaObjectId=1, nDiaSources=1)),
                                         (T0, 1, bad)]), "/x/1614600000/updates.parquet")
    text = str(err.value)
    assert message in text and "/x/1614600000/updates.parquet record 1" in text and "update_order=1" in text


def test_all_three_file_names(tmp_path):
    table = eight_records()
    pq.write_table(table, tmp_path / "updates.parquet")
    pq.write_table(table, tmp_path / "update_records.parquet")
    (tmp_path / "update_records.json").write_text(json.dumps(table.to_pylist()))
    read = [updates.read_update_file(tmp_path / name) for name in updates.UPDATE_FILES]
    assert read[0].equals(read[1]) and read[0].equals(read[2])


def _sources() -> pa.Table:
    schema = apdb.export_schema("DiaSource")
    n = 4
    values = {"diaSourceId": [1, 2, 3, 2], "diaObjectId": [10, 10, 11, 12], "apdb_replica_chunk": [5, 5, 6, 7],
              "midpointMjdTai": [1.0, 2.0, 3.0, 2.0], "ra": [1.0] * n, "dec": [1.0] * n}
    return pa.Table.from_arrays([pa.array(values.get(f.name, [None] * n), f.type) for f in schema], schema=schema)


def test_first_copies_keep_the_earliest_chunk():
    sources = _sources()
    reordered = sources.take(pa.array([3, 2, 1, 0]))  # the later copy comes first in the file
    kept = postprocess.first_copies(reordered, "DiaSource")
    assert sorted(kept["diaSourceId"].to_pylist()) == [1, 2, 3]
    two = kept.filter(pa.compute.equal(kept["diaSourceId"], 2))
    assert two["apdb_replica_chunk"].to_pylist() == [5] and two["diaObjectId"].to_pylist() == [10]


def test_apply_to_flat_and_object_versions():
    records = updates.parse_records(transport([
        (T0, 0, payload("reassign_diasource_to_diaobject", diaSourceId=1, diaObjectId=11)),
        (T0, 1, payload("withdraw_diasource", diaSourceId=3, timeWithdrawnMjdTai=MJD)),
        (T0, 2, payload("close_diaobject_validity", diaObjectId=10, validityEndMjdTai=MJD, nDiaSources=None)),
        (T0, 3, payload("update_n_dia_sources", diaObjectId=11, nDiaSources=9)),
    ], chunk=6), "x")
    schema = apdb.export_schema("DiaObject")
    objects = pa.Table.from_arrays(
        [pa.array({"diaObjectId": [10, 11], "apdb_replica_chunk": [5, 7], "validityStartMjdTai": [1.0, 2.0],
                   "nDiaSources": [2, 1], "ra": [1.0, 1.0], "dec": [1.0, 1.0]}.get(f.name, [None, None]), f.type)
         for f in schema], schema=schema)
    sources = postprocess.first_copies(_sources(), "DiaSource")
    flat = updates.apply_to_flat(objects, sources, apdb.export_schema("DiaForcedSource").empty_table(),
                                 updates.reduce(records))
    owner = dict(zip(flat.sources["diaSourceId"].to_pylist(), flat.sources["diaObjectId"].to_pylist(), strict=True))
    assert owner == {1: 11, 2: 10, 3: 11}
    withdrawn = dict(zip(flat.sources["diaSourceId"].to_pylist(), flat.sources["timeWithdrawnMjdTai"].to_pylist(),
                         strict=True))
    assert withdrawn == {1: None, 2: None, 3: MJD}
    assert flat.objects["validityEndMjdTai"].to_pylist() == [MJD, None]
    # object 11's only version comes from chunk 7, after the record's chunk 6: it supersedes the record
    assert flat.objects["nDiaSources"].to_pylist() == [2, 1]
    status = updates.statuses(records, flat.found_sources, flat.found_forced, flat.found_objects)
    assert status.tolist() == ["applied", "applied", "applied", "superseded"]


def test_rewrite_rows_moves_withdraws_and_drops_empty_orphan_rows():
    """Committed rows: a point reassigned away leaves its row (and comes back flat), a withdrawn point stays
    flagged, an orphan row left without points is dropped."""
    schema = lightcurves.catalog_schema()
    objects = postprocess.processed_schema("DiaObject").empty_table()
    sources = postprocess.postprocess(postprocess.conform(_sources().slice(0, 3), "DiaSource"), "DiaSource")
    rows, _ = lightcurves.nest_batch(objects, sources, postprocess.processed_schema("DiaForcedSource").empty_table(),
                                     schema)
    assert rows["diaObjectId"].to_pylist() == [10, 11]  # two orphan rows
    records = updates.parse_records(transport([
        (T0, 0, payload("reassign_diasource_to_diaobject", diaSourceId=3, diaObjectId=10)),
        (T0, 1, payload("withdraw_diasource", diaSourceId=2, timeWithdrawnMjdTai=MJD)),
    ], chunk=9), "x")
    new, moved, dropped = revise.rewrite_rows(rows, updates.reduce(records), set(), set(), schema)
    assert dropped.tolist() == [False, True]  # object 11 lost its only point
    assert new["diaObjectId"].to_pylist() == [10]
    points = new["diaSource"].to_pylist()[0]
    assert points["diaSourceId"] == [1, 2] and points["timeWithdrawnMjdTai"] == [None, MJD]
    assert moved["diaSourceId"].to_pylist() == [3] and moved["diaObjectId"].to_pylist() == [10]


def test_candidate_pixels_include_neighbours_whose_margin_holds_the_position():
    from hats.pixel_math import HealpixPixel
    from hats.pixel_math.healpix_shim import radec2pix

    pixels = [HealpixPixel(6, p) for p in range(49152)]
    ra, dec = np.array([150.0]), np.array([2.0])
    own = HealpixPixel(6, int(radec2pix(6, ra, dec)[0]))
    found = revise.candidate_pixels(ra, dec, pixels, order=13)
    assert own in found
    # a position right on the pixel's corner is also in its neighbours' margins
    assert len(revise.candidate_pixels(ra, dec, pixels, order=13)) >= 1


def test_each_shard_gets_every_record_of_the_rows_it_holds():
    """``shards._records_per_shard``: object and forced-source records go to their object's shard; a source record
    to the shards of its night row before and after the records (every record of that target: last write wins);
    a record of a source that is not in the night goes nowhere (the changes job revises committed rows)."""
    from ppdb_lc import shards, stage

    records = updates.parse_records(eight_records(), "fixture")
    # the night's copies of the targeted sources, with the object they were staged under
    night = pa.table({"diaSourceId": pa.array([100001, 100002], pa.int64()),
                      "diaObjectId": pa.array([200001, 200002], pa.int64())})
    n = 4

    def of(object_id):
        return int(stage.shard_of(pa.array([object_id], pa.int64()), n)[0])

    assert len({of(200001), of(400001), of(200002), 0}) > 1  # the ids spread over shards
    targets = [(updates.record_targets(records)["k0"][i], records["update_type"][i].as_py()) for i in range(8)]
    want: dict[int, set[int]] = {k: set() for k in range(n)}
    for i, (key, kind) in enumerate(targets):
        if key == 100001:  # to 300001, then to 400001
            shard_set = {of(200001), of(400001)}
        elif key == 100002:  # to an SSObject: no object, shard 0
            shard_set = {of(200002), 0}
        elif key == 100003:  # not in the night
            shard_set = set()
        else:
            shard_set = {of(key)}
        for k in shard_set:
            want[k].add(i)
    got = shards._records_per_shard(records, updates.reduce(records), night, n)
    assert [sorted(g.tolist()) for g in got] == [sorted(want[k]) for k in range(n)]
    assert all(np.all(np.diff(g) > 0) for g in got)  # in the records' order
    assert shards._records_per_shard(records, updates.reduce(records), None, 1)[0].tolist() == [
        i for i, (key, _) in enumerate(targets) if key not in (100001, 100002, 100003)]
