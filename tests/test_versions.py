"""Versioned collection: atomic switch, hard links, refusal of foreign directories."""

from __future__ import annotations

import os

import pytest

from ppdb_lc.versions import CollectionStateError, VersionedCollection


def is_data(path):
    return path.suffix == ".parquet"


def test_publish_switches_link_and_shares_data_by_hard_link(tmp_path):
    coll = VersionedCollection(tmp_path / "coll")
    assert coll.current() is None
    first = coll.staging("a")
    (first / "d").mkdir(parents=True)
    (first / "d" / "x.parquet").write_text("data")
    (first / "meta.csv").write_text("v1")
    v1 = coll.publish(first, "a")
    assert coll.current() == v1 and os.path.islink(tmp_path / "coll")
    second = coll.stage_copy("b", is_data)
    assert (second / "d" / "x.parquet").stat().st_ino == (v1 / "d" / "x.parquet").stat().st_ino
    (second / "meta.csv").write_text("v2")  # a copy: the published version is unchanged
    assert (v1 / "meta.csv").read_text() == "v1"
    v2 = coll.publish(second, "b", keep=1)
    assert coll.current() == v2 and not v1.exists()
    assert (tmp_path / "coll" / "meta.csv").read_text() == "v2"


def test_leftover_staging_is_discarded(tmp_path):
    coll = VersionedCollection(tmp_path / "coll")
    crashed = coll.staging("x")
    crashed.mkdir()
    (crashed / "half-written").write_text("")
    assert not coll.staging("x").exists()


def test_refuses_a_plain_directory(tmp_path):
    (tmp_path / "coll").mkdir()
    with pytest.raises(CollectionStateError, match="not a versioned collection"):
        VersionedCollection(tmp_path / "coll").current()
