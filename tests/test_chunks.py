"""Discovery of complete chunks in both layouts, dayobs, ledger batches."""

from __future__ import annotations

import json

import pytest

from conftest import write_chunk
from ppdb_lc import chunks
from ppdb_lc.generator import DemoSpec, generate_ppdb
from ppdb_lc.ledger import LedgerEntry, plan_batches, read_ledger, write_ledger


def test_dayobs_is_utc_minus_12h():
    assert chunks.dayobs(1614600000) == "2021-03-01"  # 2021-03-01T12:00Z starts dayobs 2021-03-01
    assert chunks.dayobs(1614600000 - 600) == "2021-02-28"
    assert chunks.dayobs(int(1795220400)) == "2026-11-20"  # 2026-11-21T00:20Z belongs to the evening before


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("ppdb")
    written = generate_ppdb(root, DemoSpec(n_objects=200, nights=("2026-11-20", "2026-11-21", "2026-11-22"),
                                           chunks_per_night=3, flat_layout_from=1, seed=5))
    return root, written


def test_both_layouts_found_with_nights_from_chunk_ids(export):
    root, written = export
    found = chunks.discover(root)
    assert [c.chunk_id for c in found.complete] == [c.chunk_id for c in written]
    assert [c.night for c in found.complete] == [c.night for c in written]
    dated = [c for c in found.complete if c.directory.parent.parent.parent.parent == root]
    flat = [c for c in found.complete if c.directory.parent == root]
    assert dated and flat and len(dated) + len(flat) == len(written)
    # a dated folder names the processing date: at least one differs from the chunk's night
    assert any(c.directory.parts[-4:-1] != tuple(c.night.split("-")) for c in dated)
    for info, chunk in zip(written, found.complete, strict=True):
        assert chunk.row_counts == {t: info.rows.get(t, 0) for t in chunk.row_counts}


def test_empty_chunk_and_missing_forced_file(export):
    root, _ = export
    found = chunks.discover(root)
    empty = [c for c in found.complete if not c.files]
    assert empty and all(sum(c.row_counts.values()) == 0 for c in empty)
    no_forced = [c for c in found.complete if "DiaObject" in c.files and "DiaForcedSource" not in c.files]
    assert no_forced and all(c.rows("DiaForcedSource") == 0 for c in no_forced)


def test_until_and_skip(export):
    root, written = export
    found = chunks.discover(root, until="2026-11-20", skip_ids=[written[0].chunk_id])
    assert [c.chunk_id for c in found.complete] == [c.chunk_id for c in written if c.night == "2026-11-20"][1:]


def test_incomplete_chunk_is_skipped(tmp_path):
    write_chunk(tmp_path, 1795220400, {"DiaObject": _objects()}, manifest=False)
    found = chunks.discover(tmp_path)
    assert found.complete == [] and found.invalid == []
    assert [p.name for p, _ in found.incomplete] == ["1795220400"]


def _objects():
    import pandas as pd

    return pd.DataFrame({"diaObjectId": [1, 2], "validityStartMjdTai": [6e4, 6e4], "ra": [1.0, 2.0], "dec": [0.0, 0.0]})


@pytest.mark.parametrize("damage", ["row_count", "unreadable", "missing_column", "missing_file"])
def test_invalid_chunks_are_reported(tmp_path, damage):
    import pyarrow.parquet as pq

    directory = write_chunk(tmp_path, 1795220400, {"DiaObject": _objects()})
    manifest = directory / "manifest.json"
    data = json.loads(manifest.read_text())
    if damage == "row_count":
        data["files"]["DiaObject.parquet"]["row_count"] = 3
        manifest.write_text(json.dumps(data))
        expected = "2 rows, manifest says 3"
    elif damage == "unreadable":
        (directory / "DiaObject.parquet").write_bytes(b"not parquet")
        del data["files"]["DiaObject.parquet"]["size_bytes"]
        manifest.write_text(json.dumps(data))
        expected = "unreadable parquet"
    elif damage == "missing_column":
        table = pq.read_table(directory / "DiaObject.parquet").drop_columns(["ra"])
        pq.write_table(table, directory / "DiaObject.parquet")
        del data["files"]["DiaObject.parquet"]["size_bytes"]
        manifest.write_text(json.dumps(data))
        expected = "missing required column(s) ra"
    else:
        (directory / "DiaObject.parquet").unlink()
        expected = "missing, manifest says 2 rows"
    found = chunks.discover(tmp_path)
    assert found.complete == []
    assert len(found.invalid) == 1 and expected in found.invalid[0][1]


def test_old_manifest_format(export):
    root, _ = export
    old = next(root.rglob("chunk_*.manifest.json"))
    info = chunks.read_manifest(old)
    assert set(info["row_counts"]) <= {"DiaObject", "DiaSource", "DiaForcedSource"}
    assert str(info["chunk_id"]) == old.parent.name


def test_ledger_round_trip_and_batches(tmp_path, export):
    root, _ = export
    found = chunks.discover(root).complete
    first_night = [c for c in found if c.night == "2026-11-20"]
    ledger = [LedgerEntry(c.chunk_id, c.unique_id, c.night, c.night, c.row_counts) for c in first_night[:-1]]
    write_ledger(tmp_path, ledger)
    assert read_ledger(tmp_path) == ledger
    batches = plan_batches(found, read_ledger(tmp_path))
    assert [b.name for b in batches] == ["2026-11-20_2", "2026-11-21", "2026-11-22"]
    assert [c.chunk_id for c in batches[0].chunks] == [first_night[-1].chunk_id]


def test_row_checks_name_the_row_and_are_cached_per_file_version(tmp_path):
    import pandas as pd

    objects = pd.DataFrame({"diaObjectId": [11, 12, 13], "validityStartMjdTai": [61000.0] * 3,
                            "ra": [10.0, 360.0, 20.0], "dec": [-5.0, 0.0, 90.0]})
    directory = write_chunk(tmp_path / "ppdb", 1795218000, {"DiaObject": objects})
    manifest = directory / "manifest.json"
    cache = tmp_path / "cache"
    message = "1 row(s) with ra outside [0, 360) or not finite (first: diaObjectId 12, ra = 360.0)"
    with pytest.raises(chunks.InvalidChunkError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[")):
        chunks.check_chunk(directory, manifest, row_cache=cache)
    assert len(list(cache.iterdir())) == 1
    calls = []
    real = chunks.check_rows
    chunks.check_rows = lambda *args: calls.append(args)
    try:
        with pytest.raises(chunks.InvalidChunkError, match="diaObjectId 12"):  # the cached verdict
            chunks.check_chunk(directory, manifest, row_cache=cache)
        assert calls == []
    finally:
        chunks.check_rows = real
    # the export rewrites the file: checked again (a new verdict)
    import shutil

    shutil.rmtree(directory)
    write_chunk(tmp_path / "ppdb", 1795218000, {"DiaObject": objects.assign(ra=[10.0, 359.9, 20.0])})
    assert chunks.check_chunk(directory, manifest, row_cache=cache).rows("DiaObject") == 3
