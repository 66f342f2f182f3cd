"""Versioned collection (pointer switch, hard links, compare-and-swap, rollback, pruning) and the collection lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hats.catalog.dataset.collection_properties import CollectionProperties

from ppdb_lc import lock
from ppdb_lc.versions import CollectionStateError, StaleBaseError, VersionedCollection


def is_data(path):
    return path.suffix == ".parquet"


def stage(coll: VersionedCollection, label: str, content: str):
    """A staged version: one data file and one metadata file, plus its collection.properties."""
    path = coll.staging(label)
    (path / "cat" / "d").mkdir(parents=True)
    (path / "cat" / "d" / f"{label}.parquet").write_text(content)
    (path / "meta.csv").write_text(content)
    CollectionProperties(name="c", hats_primary_table_url="cat", all_margins=["cat_10arcs"],
                         default_margin="cat_10arcs", all_indexes={"id": "cat_id"}).to_properties_file(path)
    return path


def test_publish_switches_pointer_and_shares_data_by_hard_link(tmp_path):
    coll = VersionedCollection(tmp_path / "coll")
    assert coll.current() is None and not coll.exists()
    v1 = coll.publish(stage(coll, "a", "v1"), "a", base=None)
    assert coll.current() == v1 and v1.name == "v000001-a"
    pointer = CollectionProperties.read_from_dir(tmp_path / "coll")
    assert pointer.hats_primary_table_url == "versions/v000001-a/cat"
    assert pointer.default_margin == "versions/v000001-a/cat_10arcs"
    assert pointer.all_indexes == {"id": "versions/v000001-a/cat_id"}
    assert pointer.extra_dict()["collection_version"] == "v000001-a"
    second = coll.stage_copy("b", is_data)
    assert (second / "cat" / "d" / "a.parquet").stat().st_ino == (v1 / "cat" / "d" / "a.parquet").stat().st_ino
    (second / "meta.csv").write_text("v2")  # a copy: the published version is unchanged
    v2 = coll.publish(second, "b", base=v1)
    assert coll.current() == v2 and (v1 / "meta.csv").read_text() == "v1"
    assert CollectionProperties.read_from_dir(tmp_path / "coll").hats_primary_table_url == "versions/v000002-b/cat"


def test_pruning_keeps_the_previous_version(tmp_path):
    coll = VersionedCollection(tmp_path / "coll")
    base = None
    for label in "abcd":
        base = coll.publish(stage(coll, label, label), label, base=base, keep=1)  # keep=1 is raised to 2
    assert [v.name for v in coll.versions()] == ["v000003-c", "v000004-d"]


def test_publish_is_compare_and_swap(tmp_path):
    coll = VersionedCollection(tmp_path / "coll")
    v1 = coll.publish(stage(coll, "a", "1"), "a", base=None)
    weekly = stage(coll, "weekly", "w")  # built on v1 ...
    v2 = coll.publish(coll.stage_copy("night", is_data), "night", base=v1)  # ... while a daily published v2
    with pytest.raises(StaleBaseError, match="built on v000001-a but v000002-night is published"):
        coll.publish(weekly, "weekly", base=v1)
    assert coll.current() == v2 and not weekly.exists()
    assert [v.name for v in coll.versions()] == ["v000001-a", "v000002-night"]


def test_crash_between_rename_and_switch(tmp_path):
    """A version renamed into place but never switched to is removed; the real previous version is kept."""
    coll = VersionedCollection(tmp_path / "coll")
    v1 = coll.publish(stage(coll, "a", "1"), "a", base=None)
    v2 = coll.publish(coll.stage_copy("b", is_data), "b", base=v1)
    os.rename(coll.stage_copy("c", is_data), coll.versions_dir / "v000003-c")  # the crash: renamed, not switched
    assert coll.current() == v2
    v3 = coll.publish(coll.stage_copy("d", is_data), "d", base=v2)
    assert v3.name == "v000003-d" and coll.current() == v3
    assert [v.name for v in coll.versions()] == ["v000002-b", "v000003-d"]  # v2, the previous one, is kept


def test_rollback_publishes_the_previous_version_as_a_new_one(tmp_path):
    coll = VersionedCollection(tmp_path / "coll")
    v1 = coll.publish(stage(coll, "a", "1"), "a", base=None)
    staged = coll.stage_copy("b", is_data)
    (staged / "meta.csv").write_text("2")
    v2 = coll.publish(staged, "b", base=v1)
    v3 = coll.rollback(is_data)
    assert v3.name == "v000003-rollback-to-v000001" and coll.current() == v3
    assert (v3 / "meta.csv").read_text() == "1" and (v2 / "meta.csv").read_text() == "2"  # v2's readers keep it
    assert (v3 / "cat" / "d" / "a.parquet").stat().st_ino == (v2 / "cat" / "d" / "a.parquet").stat().st_ino


def test_rollback_needs_a_previous_version(tmp_path):
    coll = VersionedCollection(tmp_path / "coll")
    coll.publish(stage(coll, "a", "1"), "a", base=None)
    with pytest.raises(CollectionStateError, match="no previous version"):
        coll.rollback(is_data)


def test_leftover_staging_is_discarded(tmp_path):
    coll = VersionedCollection(tmp_path / "coll")
    crashed = coll.staging("x")
    crashed.mkdir()
    (crashed / "half-written").write_text("")
    assert not coll.staging("x").exists()


def test_refuses_a_directory_that_is_not_a_versioned_collection(tmp_path):
    (tmp_path / "coll").mkdir()
    assert VersionedCollection(tmp_path / "coll").current() is None  # empty: a new collection may go there
    (tmp_path / "coll" / "hats.properties").write_text("")
    with pytest.raises(CollectionStateError, match="not a versioned collection"):
        VersionedCollection(tmp_path / "coll").current()
    (tmp_path / "old").symlink_to(tmp_path / "coll")
    with pytest.raises(CollectionStateError, match="symbolic link"):
        VersionedCollection(tmp_path / "old").current()


# -- lock ----------------------------------------------------------------------------------------------------
def test_lock_refuses_a_second_writer_and_names_the_holder(tmp_path):
    coll = tmp_path / "coll"
    # the holder: another live process on this host
    child = subprocess.Popen([sys.executable, "-c", "import sys,time; from ppdb_lc import lock; "
                              "lock.acquire(sys.argv[1], 'daily'); print('ok', flush=True); time.sleep(60)", str(coll)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ok"
        with pytest.raises(lock.CollectionLockedError, match=rf"locked by pid {child.pid} on .*target 'daily'"):
            lock.acquire(coll, "weekly")
        with pytest.raises(lock.CollectionLockedError, match="still running"):
            lock.clear(coll)
    finally:
        child.kill()
        child.wait()
    # the holder is gone: its lock is stale and taken over
    holder = lock.acquire(coll, "weekly")
    assert holder.pid == os.getpid() and lock.read_holder(coll).target == "weekly"
    assert lock.release(coll, holder) and lock.read_holder(coll) is None


def test_lock_held_from_another_host_needs_unlock(tmp_path, capsys):
    coll = tmp_path / "coll"
    holder = lock.this_process("daily")
    lock.lock_path(coll).write_text(json.dumps({**holder.__dict__, "host": "node17", "pid": 4242}))
    with pytest.raises(lock.CollectionLockedError, match="pid 4242 on node17 .*ppdb-lc unlock"):
        lock.acquire(coll, "daily")
    from ppdb_lc.cli import main

    assert main(["unlock", str(coll)]) == 0
    assert "cleared the lock of pid 4242 on node17" in capsys.readouterr().out
    assert lock.read_holder(coll) is None
    lock.release(coll, lock.acquire(coll, "daily"))
