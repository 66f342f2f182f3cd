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


def test_records_parsed_in_slices(monkeypatch):
    """Records are parsed a slice at a time: the same table as at once, and an error names the record's position in
    the file, not in its slice."""
    records = eight_records()
    whole = updates.parse_records(records, "fixture")
    monkeypatch.setattr(updates, "PARSE_RECORDS", 3)
    assert updates.parse_records(records, "fixture").equals(whole)
    bad = pa.concat_tables([records, transport([(T0, 9, "{not json")])])
    with pytest.raises(updates.BadUpdateError, match=r"fixture record 8 \(update_time_ns=\d+, update_order=9\)"):
        updates.parse_records(bad, "fixture")


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
    status = updates.statuses(records, flat.found())
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
    found = {pixels[int(s)] for s in revise.candidate_slots(ra, dec, pixels, order=13)[1]}
    assert own in found
    # a position right on the pixel's corner is also in its neighbours' margins
    assert len(found) >= 1


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
    # the records come a batch at a time (the shards' targets from all of them): the same shares for any batch size
    for size in (1, 3, 8):
        batches = [records.slice(start, size) for start in range(0, records.num_rows, size)]
        where = shards._reassigned_shards(batches, night, n)
        got: dict[int, list[int]] = {k: [] for k in range(n)}
        for start, part in zip(range(0, records.num_rows, size), batches, strict=True):
            for k, rows in enumerate(shards._records_per_shard(part, where, n)):
                got[k] += (rows + start).tolist()
        assert [sorted(got[k]) for k in range(n)] == [sorted(want[k]) for k in range(n)], size
        assert all(got[k] == sorted(got[k]) for k in range(n))  # in the records' order
    none = shards._reassigned_shards([records], None, 1)
    assert shards._records_per_shard(records, none, 1)[0].tolist() == [
        i for i, (key, _) in enumerate(targets) if key not in (100001, 100002, 100003)]


def _many_records(n: int, seed: int = 7) -> pa.Table:
    """``n`` records of every type on few targets (each hit ~4 times), in shuffled order and over three chunks."""
    rng = np.random.default_rng(seed)
    kinds = ["reassign_diasource_to_diaobject", "withdraw_diasource", "reassign_diasource_to_ssobject",
             "withdraw_diaforcedsource", "close_diaobject_validity", "update_n_dia_sources"]
    rows = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        target = int(rng.integers(0, n // 4 + 1))
        fields = {"reassign_diasource_to_diaobject": dict(diaSourceId=target, diaObjectId=int(rng.integers(1, 50))),
                  "withdraw_diasource": dict(diaSourceId=target, timeWithdrawnMjdTai=MJD + i),
                  "reassign_diasource_to_ssobject": dict(diaSourceId=target, ssObjectId=i,
                                                         ssObjectReassocTimeMjdTai=MJD),
                  "withdraw_diaforcedsource": dict(diaObjectId=target % 7, visit=target, detector=i % 3,
                                                   timeWithdrawnMjdTai=MJD + i),
                  "close_diaobject_validity": dict(diaObjectId=target, validityEndMjdTai=MJD + i,
                                                   nDiaSources=None if i % 2 else i),
                  "update_n_dia_sources": dict(diaObjectId=target, nDiaSources=i)}[kind]
        rows.append((int(rng.integers(0, 3)), T0 + int(rng.integers(0, 1000)), i % 5, payload(kind, **fields)))
    chunks = [1614600000 + r[0] for r in rows]
    raw = transport([r[1:] for r in rows])
    raw = raw.set_column(0, "apdb_replica_chunk", pa.array(chunks, pa.int64()))
    return updates.parse_records(raw, "generated")


def _canonical(frame, key):
    return frame.sort_values(key).reset_index(drop=True).astype(str)


def test_records_reduced_in_buckets_of_targets_give_the_whole_effect():
    """The night's records are reduced a bucket of targets at a time (bounded memory): the effect equals the
    reduction of all records at once, for every type and bucket size."""
    records = _many_records(400)
    whole = updates.reduce(records, bucket_records=records.num_rows)
    assert len(whole.sources) > 60 and len(whole.forced) > 30 and len(whole.objects) > 30
    for size in (9, 37, 250):
        parts = updates.reduce(records, bucket_records=size)
        for name, key in (("sources", ["diaSourceId"]), ("forced", ["diaObjectId", "visit", "detector"]),
                          ("objects", ["diaObjectId"])):
            expected, got = getattr(whole, name), getattr(parts, name)
            assert list(got.columns) == list(expected.columns)
            assert _canonical(got, key).equals(_canonical(expected, key)), (size, name)


def test_statuses_from_found_tables_of_several_jobs():
    """Statuses from the targets found by several jobs: a point found anywhere applies its records; an object
    record is superseded when the object's smallest version chunk (over all jobs) is later than the record."""
    records = _many_records(120)
    targets = updates.record_targets(records)
    chunk = records["apdb_replica_chunk"].to_numpy()
    found_sources = set(targets.loc[targets["table"] == "DiaSource", "k0"].to_numpy()[::2].tolist())
    forced = targets.loc[targets["table"] == "DiaForcedSource", ["k0", "k1", "k2"]].to_numpy()
    found_forced = {tuple(k) for k in forced[::3].tolist()}
    object_ids = np.unique(targets.loc[targets["table"] == "DiaObject", "k0"].to_numpy())
    job_a = {int(o): 1614600001 for o in object_ids[::2]}
    job_b = {int(o): 1614600002 if i % 2 else 1614600000 for i, o in enumerate(object_ids[::3])}
    found = pa.concat_tables([updates.found_table(found_sources, set(), job_a),
                              updates.found_table(set(), found_forced, job_b)])
    status = updates.statuses(records, found)
    expected = []
    for i, (table, k0, k1, k2) in enumerate(targets.itertuples(index=False)):  # independent: the rule, per record
        if table == "DiaSource":
            expected.append("applied" if k0 in found_sources else "pending")
        elif table == "DiaForcedSource":
            expected.append("applied" if (k0, k1, k2) in found_forced else "pending")
        else:
            versions = [j[k0] for j in (job_a, job_b) if k0 in j]
            expected.append("pending" if not versions else "superseded" if min(versions) > chunk[i] else "applied")
    assert status.tolist() == expected
    assert {"applied", "pending", "superseded"} <= set(expected)


def test_update_records_staged_a_slice_at_a_time_in_ppdb_order(tmp_path, monkeypatch):
    """Staging streams records that are in order in their files (slices of ``PARSE_RECORDS``) and orders them in
    memory otherwise: either way the staged file is every record of the night's chunks, normalized, in PPDB order."""
    from ppdb_lc import stage
    from ppdb_lc.chunks import Chunk

    def chunk(chunk_id: int, rows: list[tuple[int, int, str]]) -> Chunk:
        directory = tmp_path / str(chunk_id)
        directory.mkdir()
        pq.write_table(transport(rows, chunk=chunk_id), directory / "updates.parquet")
        return Chunk(chunk_id=chunk_id, night="2026-11-21", directory=directory, manifest=directory / "m.json",
                     unique_id=str(chunk_id), row_counts={}, updates=directory / "updates.parquet")

    records = [(T0 + i, i % 3, payload("update_n_dia_sources", diaObjectId=i, nDiaSources=i)) for i in range(10)]
    in_order = [chunk(1614600100, records[5:]), chunk(1614600000, records[:5])]  # files in order, listed out of it
    shuffled = [chunk(1614600200, records[::-1])]
    monkeypatch.setattr(updates, "PARSE_RECORDS", 3)
    for chunks, streamed in ((in_order, True), (in_order + shuffled, False)):
        expected = updates.in_order(pa.concat_tables([updates.read_update_file(c.updates) for c in chunks]))
        keys = [t for c in sorted(chunks, key=lambda c: c.chunk_id)
                for t in updates.iter_update_file(c.updates, c.updates.read_bytes(), updates.ORDER_COLUMNS)]
        assert updates.in_order_already(keys) is streamed
        out = tmp_path / f"staged-{streamed}"
        summary = stage.stage_dataset(chunks, stage.UPDATES, out)
        staged = pq.read_table(stage.staged_file(out, "2026-11-21"))
        assert staged.equals(expected) and summary["2026-11-21"]["records"] == expected.num_rows
    assert staged.num_rows == 20 and staged["apdb_replica_chunk"].to_pylist()[-10:] == [1614600200] * 10
