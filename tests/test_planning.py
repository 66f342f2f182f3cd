"""Planning cost bounded by the ledger: the bounded walk of the export gives the same plan as the full walk."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import write_chunk

from ppdb_lc import apdb, chunks, planning
from ppdb_lc.generator import DemoSpec, generate_ppdb
from ppdb_lc.ledger import (
    LedgerEntry,
    LedgerIndex,
    plan_batches,
    read_ledger,
    read_ledger_index,
    write_ledger,
)
from ppdb_lc.settings import Settings
from ppdb_lc.updates import UPDATE_FILES

NIGHTS = ("2026-11-20", "2026-11-21", "2026-11-22")


def _objects():
    import pandas as pd

    return pd.DataFrame({"diaObjectId": [1, 2], "validityStartMjdTai": [6e4, 6e4], "ra": [1.0, 2.0], "dec": [0.0, 0.0]})


def legacy_find_chunk_dirs(root: Path, unexpected: list[Path]):
    """The walk as it was before the bounded one (os.walk, sorted): the reference the new walk must reproduce."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        name = os.path.basename(dirpath)
        if Path(dirpath) == root:
            continue
        if not name.isdigit():
            unexpected.append(Path(dirpath))
            dirnames.clear()
            continue
        manifests = sorted(f for f in filenames if f == "manifest.json"
                           or (f.startswith("chunk_") and f.endswith(".manifest.json")))
        has_table = any(f in UPDATE_FILES or f.removesuffix(".parquet") in apdb.DATASETS for f in filenames)
        if manifests:
            yield Path(dirpath), Path(dirpath) / manifests[0]
        elif has_table or len(name) >= 9:
            yield Path(dirpath), None
        else:
            parts = Path(dirpath).relative_to(root).parts
            if not (0 < len(parts) <= 3 and all(p.isdigit() and len(p) == w for p, w in zip(parts, (4, 2, 2),
                                                                                            strict=False))):
                unexpected.append(Path(dirpath))
        if manifests or has_table:
            dirnames.clear()


@pytest.fixture
def archive(tmp_path):
    """A small export in both layouts with a collection whose ledger holds night 1 and most of night 2, plus the
    cases a bounded walk could get wrong: a late chunk in an old (fully ingested) day folder, unexpected
    directories at every level, incomplete chunks in both layouts, an invalid chunk, a symbolic link to a chunk."""
    ppdb = tmp_path / "ppdb"
    written = generate_ppdb(ppdb, DemoSpec(n_objects=150, nights=NIGHTS, chunks_per_night=3, flat_layout_from=1,
                                           seed=3))
    by_night = {night: [c for c in written if c.night == night] for night in NIGHTS}
    ingested = by_night[NIGHTS[0]] + by_night[NIGHTS[1]][:-1]
    old_day = next(d for d in sorted(ppdb.glob("*/*/*")) if d.is_dir())
    assert all(int(d.name) in {c.chunk_id for c in ingested} for d in old_day.iterdir())  # fully ingested folder
    late = by_night[NIGHTS[1]][0].chunk_id + 1
    write_chunk(old_day, late, {"DiaObject": _objects()})  # a late chunk of night 2 exported into night 1's folder
    write_chunk(old_day, late + 1, {"DiaObject": _objects()}, manifest=False)  # incomplete, dated layout
    write_chunk(ppdb, by_night[NIGHTS[2]][-1].chunk_id + 2, {"DiaObject": _objects()}, manifest=False)  # flat
    bad = write_chunk(ppdb, by_night[NIGHTS[2]][-1].chunk_id + 3, {"DiaObject": _objects()})
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["files"]["DiaObject.parquet"]["row_count"] = 5
    (bad / "manifest.json").write_text(json.dumps(manifest))
    (ppdb / f"{late + 4}.partial").mkdir()
    (old_day / "tmp").mkdir()
    (ppdb / "12345" / "notes").mkdir(parents=True)
    (ppdb / str(late + 5)).symlink_to(bad, target_is_directory=True)

    collection = tmp_path / "coll"
    version = collection / "versions" / "v000003-2026-11-21"
    version.mkdir(parents=True)
    (collection / "collection.properties").write_text(f"collection_version={version.name}\n")
    write_ledger(version, [LedgerEntry(c.chunk_id, f"u{c.chunk_id}", c.night, c.night,
                                       {t: c.rows.get(t, 0) for t in apdb.DATASETS}) for c in ingested])
    settings = Settings(ppdb_dir=ppdb, collection_dir=collection, work_dir=tmp_path / "work")
    return settings, {c.chunk_id for c in ingested}, late


def test_new_walk_reproduces_the_os_walk_one(archive):
    settings, _, _ = archive
    expected_unexpected: list[Path] = []
    expected = list(legacy_find_chunk_dirs(settings.ppdb_dir, expected_unexpected))
    unexpected: list[Path] = []
    assert list(chunks.find_chunk_dirs(settings.ppdb_dir, unexpected)) == expected
    assert unexpected == expected_unexpected and len(unexpected) == 4  # .partial, tmp, 12345, 12345/notes


@pytest.mark.parametrize("until", [None, NIGHTS[1]])
def test_bounded_discovery_equals_full_walk(archive, until):
    settings, ingested, late = archive
    full = chunks.discover(settings.ppdb_dir, until=until, skip_ids=ingested, prune=False)
    bounded = chunks.discover(settings.ppdb_dir, until=until, skip_ids=ingested)
    assert bounded == full
    assert late in {c.chunk_id for c in bounded.complete}
    assert len(bounded.incomplete) == (1 if until else 2) and len(bounded.unexpected) == 4
    assert len(bounded.invalid) == (0 if until else 1)


def test_bounded_plan_equals_full_plan_and_lists_no_ingested_chunk(archive, monkeypatch):
    settings, ingested, late = archive
    listed: list[str] = []
    real_scandir = os.scandir

    def scandir(path="."):
        listed.append(os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    bounded = planning.make_plan(settings)
    monkeypatch.setattr(os, "scandir", real_scandir)
    assert listed and not [p for p in listed if os.path.basename(p).isdigit() and int(os.path.basename(p)) in ingested]

    full_discover = chunks.discover
    monkeypatch.setattr(planning, "discover", lambda *a, **kw: full_discover(*a, **kw, prune=False))
    full = planning.make_plan(settings)
    assert bounded == full
    assert [b.name for b in bounded.batches] == [f"{NIGHTS[1]}_2", NIGHTS[2]]
    assert late in {c.chunk_id for c in bounded.batches[0].chunks}
    # the ingested ones, the rest of night 2, night 3, the late one, two incomplete, the invalid one
    assert bounded.discovery.chunk_dirs == full.discovery.chunk_dirs == len(ingested) + 1 + 3 + 1 + 2 + 1


def test_bounded_walk_does_not_look_inside_ingested_chunks(archive):
    """The documented difference: an ingested chunk's directory is not listed, so damage inside it (here every
    file removed and a sub-directory left) is seen by the full walk only."""
    settings, ingested, _ = archive
    victim = next(d for d in settings.ppdb_dir.iterdir() if d.name.isdigit() and int(d.name) in ingested)
    for path in victim.iterdir():
        path.unlink()
    (victim / "leftover").mkdir()
    full = chunks.discover(settings.ppdb_dir, skip_ids=ingested, prune=False)
    bounded = chunks.discover(settings.ppdb_dir, skip_ids=ingested)
    assert victim / "leftover" in full.unexpected and victim / "leftover" not in bounded.unexpected
    assert bounded.complete == full.complete and bounded.chunk_dirs == full.chunk_dirs


def test_ledger_index_matches_the_ledger(tmp_path):
    rows = {t: 1 for t in apdb.DATASETS}
    write_ledger(tmp_path, [
        LedgerEntry(1795218000, "u,0", "2026-11-20", "2026-11-20", rows),  # a comma: a quoted CSV field
        LedgerEntry(1795218600, "u1", "2026-11-20", "2026-11-20", rows),
        LedgerEntry(1795219200, "u2", "2026-11-20", "2026-11-20_2", rows, updates=3, last_update_time=1.5e9),
        LedgerEntry(1795304400, "u3", "2026-11-21", "2026-11-21", rows),
    ])
    index = read_ledger_index(tmp_path)
    assert index == LedgerIndex.of(read_ledger(tmp_path))
    assert index.batches_by_night["2026-11-20"] == {"2026-11-20", "2026-11-20_2"}
    assert read_ledger_index(tmp_path / "none") == LedgerIndex.of([]) == LedgerIndex(frozenset(), {})
    write_ledger(tmp_path / "empty", [])
    assert read_ledger_index(tmp_path / "empty") == LedgerIndex(frozenset(), {})
    assert plan_batches([], index) == []
