"""End-to-end: bootstrap, dailies (catch-up, late chunk, new sky, pending manifest), rerun, weekly, vs pandas."""

from __future__ import annotations

import json
import shutil

import astropy.units as u
import numpy as np
import pandas as pd
import pytest
from hats.catalog import PartitionInfo
from hats.io.validation import is_valid_catalog
from hats.pixel_math.healpix_shim import radec2pix

import lsdb
from conftest import (
    NIGHTS,
    Workspace,
    assert_margin_rows_border_their_pixels,
    assert_no_exception,
    assert_rows_in_their_pixels,
    expected_catalog,
    expected_margin_rows,
    flat,
    hats_import_margin_and_index,
    read_collection,
    read_dataset_rows,
    read_export,
    tree_digest,
    write_chunk,
)

pytestmark = pytest.mark.workflow


def ts(iso: str) -> int:
    return int(pd.Timestamp(iso).timestamp())


LATE_CHUNK = ts("2026-11-22T10:00:00Z")  # dayobs 2026-11-21, arrives after that night was committed
NEW_SKY_CHUNK = ts("2026-11-24T10:00:00Z")  # dayobs 2026-11-23, objects far outside the demo field
PENDING_CHUNK = ts("2026-11-24T10:10:00Z")  # dayobs 2026-11-23, manifest written later
NEW_SKY_IDS = np.arange(30, dtype=np.int64) + 8_000_000_000_000


def new_sky_tables() -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(3)
    ra = 210.0 + rng.uniform(-0.5, 0.5, len(NEW_SKY_IDS))
    dec = -20.0 + rng.uniform(-0.5, 0.5, len(NEW_SKY_IDS))
    mjd = 61368.4
    objects = pd.DataFrame({"diaObjectId": NEW_SKY_IDS, "validityStartMjdTai": mjd + 0.001, "ra": ra, "dec": dec,
                            "nDiaSources": 1, "g_scienceFluxMean": 5000.0, "g_scienceFluxMeanErr": 50.0})
    sources = pd.DataFrame({"diaSourceId": NEW_SKY_IDS + 1, "diaObjectId": NEW_SKY_IDS, "midpointMjdTai": mjd,
                            "ra": ra, "dec": dec, "visit": 99, "detector": 1, "band": "g", "scienceFlux": 5000.0,
                            "scienceFluxErr": 50.0, "x": 10.0, "y": 10.0})
    return {"DiaObject": objects, "DiaSource": sources}


def late_tables(existing: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Forced photometry of five already-known objects: orphans of a late chunk."""
    some = existing.head(5)
    forced = pd.DataFrame({"diaForcedSourceId": np.arange(5, dtype=np.int64) + 9_000_000_000_000,
                           "diaObjectId": some.index.to_numpy(), "visit": 77, "detector": 3,
                           "ra": some["ra"].to_numpy(), "dec": some["dec"].to_numpy(), "midpointMjdTai": 61367.9,
                           "band": "r", "scienceFlux": 800.0, "scienceFluxErr": 40.0, "psfFlux": 1.0,
                           "psfFluxErr": 1.0, "timeProcessedMjdTai": 61368.0})
    return {"DiaForcedSource": forced}


def check_layout(ws: Workspace) -> None:
    """Strict HATS validity, rows inside their pixels, margin rows where hats puts them, and as many."""
    assert is_valid_catalog(str(ws.collection), strict=True)
    rows = assert_rows_in_their_pixels(ws.published / "dia_object_lc")
    margin = assert_margin_rows_border_their_pixels(ws.published / "dia_object_lc_10arcs", 10.0)
    assert margin == expected_margin_rows(ws.published / "dia_object_lc", 10.0)
    assert rows == lsdb.open_catalog(ws.collection).hc_structure.catalog_info.total_rows


def check_against_expectation(ws: Workspace, catalog: pd.DataFrame, *, one_row_per_object: bool,
                              nights=None) -> None:
    exp = expected_catalog(ws.ppdb, nights)
    ids = set(catalog["diaObjectId"])
    assert ids == exp["ids"], f"objects differ: {len(ids ^ exp['ids'])}"
    if one_row_per_object:
        assert catalog["diaObjectId"].is_unique
    # the newest version of each object carries the latest export values
    newest = catalog.dropna(subset=["validityStartMjdTai"]).sort_values("validityStartMjdTai")
    newest = newest.groupby("diaObjectId").tail(1).set_index("diaObjectId")
    objects = exp["objects"]
    assert set(newest.index) == set(objects.index)
    newest = newest.loc[objects.index]
    np.testing.assert_array_equal(newest["validityStartMjdTai"].to_numpy(), objects["validityStartMjdTai"].to_numpy())
    np.testing.assert_array_equal(newest["ra"].to_numpy(), objects["ra"].to_numpy())
    np.testing.assert_array_equal(newest["nDiaSources"].to_numpy(), objects["nDiaSources"].to_numpy())
    # retired duplicates carry validityEndMjdTai (and only they)
    np.testing.assert_array_equal(newest["validityEndMjdTai"].to_numpy(dtype=float, na_value=np.nan),
                                  objects["validityEndMjdTai"].to_numpy(dtype=float, na_value=np.nan))
    flux = objects["g_scienceFluxMean"].to_numpy(dtype=float)
    mag = np.where(flux > 0, (np.where(flux > 0, flux, 1.0) * u.nJy).to(u.ABmag).value, np.nan).astype(np.float32)
    np.testing.assert_allclose(newest["g_scienceMagMean"].to_numpy(dtype=float, na_value=np.nan), mag, rtol=1e-6)
    # every source and forced source exactly once, in the row of its own object, light curves sorted
    for column, rows, id_col in (("diaSource", exp["sources"], "diaSourceId"),
                                 ("diaForcedSource", exp["forced"], "diaForcedSourceId")):
        points = flat(catalog, column)
        assert points[id_col].is_unique, f"duplicated {id_col}"
        assert set(points[id_col]) == set(rows[id_col])
        owner = points.set_index(id_col)["owner"]
        truth = rows.set_index(id_col)["diaObjectId"]
        assert (owner.loc[truth.index].to_numpy() == truth.to_numpy()).all()
        # withdrawn points stay, flagged with the withdrawal time
        withdrawn = points.set_index(id_col)["timeWithdrawnMjdTai"]
        truth_withdrawn = rows.set_index(id_col)["timeWithdrawnMjdTai"].loc[withdrawn.index]
        np.testing.assert_array_equal(withdrawn.to_numpy(dtype=float, na_value=np.nan),
                                      truth_withdrawn.to_numpy(dtype=float, na_value=np.nan))
        times = points["midpointMjdTai"].to_numpy()
        same_row = points["row"].to_numpy()[1:] == points["row"].to_numpy()[:-1]
        assert (np.diff(times)[same_row] >= 0).all(), f"{column} light curves not sorted"
        assert str(points["midpointMjdTai"].dtype).startswith("double")
    sources = flat(catalog, "diaSource").set_index("diaSourceId")
    truth = exp["sources"].set_index("diaSourceId").loc[sources.index]
    f = truth["scienceFlux"].to_numpy(dtype=float)
    mag = np.where(f > 0, (np.where(f > 0, f, 1.0) * u.nJy).to(u.ABmag).value, np.nan).astype(np.float32)
    np.testing.assert_allclose(sources["scienceMag"].to_numpy(dtype=float, na_value=np.nan), mag, rtol=1e-6)
    for column in ("validityStartMjdTai", "firstDiaSourceMjdTai", "ra", "dec"):
        assert str(catalog[column].dtype).startswith("double"), column
    assert str(catalog["raErr"].dtype).startswith("float")


def assert_verifier_passes(collection, out, rows: int) -> None:
    """hats-import's verification pipeline, every check, on a compacted version (one file per pixel).

    Daily versions hold several files per pixel and no ``_metadata``: the verifier needs ``_metadata``, and hats'
    strict validation (the verifier's first check) rejects a ``_metadata`` that lists several files of one pixel
    (hats 0.11.1 ``_is_valid_catalog_strict`` compares one pixel per file with one per partition).
    """
    from hats_import.verification.arguments import VerificationArguments
    from hats_import.verification.run_verification import run

    verifier = run(VerificationArguments(input_catalog_path=collection, output_path=out, truth_total_rows=rows,
                                         verbose=False))
    results = verifier.results_df
    assert verifier.all_tests_passed, results.to_string()
    assert len(results) >= 5


def test_bootstrap_dailies_weekly(workspace: Workspace, tmp_path_factory):
    ws = workspace
    proc = ws.snakemake("bootstrap", "--config", f"until={NIGHTS[0]}")
    assert_no_exception(proc.stderr)
    assert (ws.collection / "collection.properties").is_file() and ws.published.name == "v000001-bootstrap"
    assert_verifier_passes(ws.collection, tmp_path_factory.mktemp("verify"), len(read_collection(ws.collection)))
    check_against_expectation(ws, read_collection(ws.collection), one_row_per_object=True, nights=NIGHTS[:1])
    ws.snakemake("daily", "--config", f"until={NIGHTS[1]}")  # opens with the daytime dedup chunk
    # the commit's strict validation no longer logs hats' expected "_metadata file does not exist." (once per
    # catalog without _metadata); the log still has the job's own lines and hats' other messages
    for log in (*(ws.work / "logs" / "bootstrap_collection").glob("*.log"),
                *(ws.work / "logs" / "ingest_batch").glob(f"*/{NIGHTS[1]}.log")):
        text = log.read_text()
        assert "_metadata file does not exist" not in text, text
        assert "Validating catalog at path" in text and "job done: peak RSS" in text
    check_against_expectation(ws, read_collection(ws.collection), one_row_per_object=False, nights=NIGHTS[:2])
    first_daily = json.loads((ws.published / "ingest" / "batches" / f"{NIGHTS[1]}.json").read_text())["updates"]
    assert first_daily["records_applied"]["close_diaobject_validity"] > 0 and not first_daily["records_pending"]
    assert first_daily["files_rewritten"] > 0 and first_daily["sources_moved_from_committed_rows"] > 0

    # A late chunk for the committed night, a night with a new sky region, and a chunk whose manifest is missing.
    committed = read_collection(ws.collection).dropna(subset=["validityStartMjdTai"]).set_index("diaObjectId")
    write_chunk(ws.ppdb, LATE_CHUNK, late_tables(committed))
    write_chunk(ws.ppdb, NEW_SKY_CHUNK, new_sky_tables())
    pending_rows = {"DiaForcedSource": late_tables(committed)["DiaForcedSource"]
                    .assign(diaForcedSourceId=lambda d: d.diaForcedSourceId + 100, visit=78)}
    pending = write_chunk(ws.ppdb, PENDING_CHUNK, pending_rows, manifest=False)
    def work_state():  # but the cache of per-row check verdicts, which any parse may fill
        return {k: v for k, v in tree_digest(ws.work).items() if not k.startswith("row_checks/")}

    before = tree_digest(ws.collection), work_state()
    dry = ws.snakemake("daily", "-n")
    assert (tree_digest(ws.collection), work_state()) == before  # a dry run touches nothing
    assert "2026-11-21_2" in dry.stdout and "2026-11-22" in dry.stdout and "2026-11-23" in dry.stdout
    assert "no manifest yet" in dry.stdout
    ws.snakemake("daily")  # catches up the late batch and two nights in one run

    # the chunk without manifest is not ingested (the expectation reads only chunks with a manifest)
    catalog = read_collection(ws.collection)
    check_against_expectation(ws, catalog, one_row_per_object=False)
    check_layout(ws)
    assert not set(pending_rows["DiaForcedSource"]["diaForcedSourceId"]) & set(
        flat(catalog, "diaForcedSource")["diaForcedSourceId"])

    # the new-sky night created pixels outside the old coverage; crossmatch and searches see its rows
    cat = lsdb.open_catalog(ws.collection)
    new_rows = catalog[catalog["diaObjectId"].isin(NEW_SKY_IDS)]
    assert len(new_rows) == len(NEW_SKY_IDS)
    matched = cat.crossmatch(cat, radius_arcsec=0.5, n_neighbors=1, suffixes=("_a", "_b")).compute()
    assert set(NEW_SKY_IDS) <= set(matched["diaObjectId_a"])
    found = cat.id_search(values={"diaObjectId": [int(NEW_SKY_IDS[3])]}).compute()
    assert list(found["diaObjectId"]) == [NEW_SKY_IDS[3]]
    cone = cat.cone_search(ra=float(new_rows["ra"].iloc[0]), dec=float(new_rows["dec"].iloc[0]),
                           radius_arcsec=1).compute()
    assert new_rows["diaObjectId"].iloc[0] in set(cone["diaObjectId"])

    # nothing new: a rerun changes no file
    before = tree_digest(ws.collection)
    again = ws.snakemake("daily")
    assert "no new complete chunks" in again.stdout
    assert tree_digest(ws.collection) == before

    # the manifest appears: the next run ingests the chunk
    shutil.rmtree(pending)
    write_chunk(ws.ppdb, PENDING_CHUNK, pending_rows)
    ws.snakemake("daily")
    catalog = read_collection(ws.collection)
    check_against_expectation(ws, catalog, one_row_per_object=False)
    assert set(pending_rows["DiaForcedSource"]["diaForcedSourceId"]) <= set(
        flat(catalog, "diaForcedSource")["diaForcedSourceId"])

    # weekly: one row per object, equal to a full bootstrap from the same chunks
    ws.snakemake("weekly")
    weekly = read_collection(ws.collection)
    check_against_expectation(ws, weekly, one_row_per_object=True)
    assert_verifier_passes(ws.collection, tmp_path_factory.mktemp("verify"), len(weekly))
    summary = json.loads(max((ws.published / "ingest" / "batches").glob("weekly-*.json")).read_text())
    pixels = PartitionInfo.read_from_dir(ws.published / "dia_object_lc").get_healpix_pixels()
    assert sorted(tuple(key) for key in summary["pixels"]) == sorted((p.order, p.pixel) for p in pixels)
    assert summary["rows_folded"] == len(catalog) and summary["objects"] == len(weekly)
    check_layout(ws)
    cat = lsdb.open_catalog(ws.collection)
    assert cat.margin is not None
    moved = _a_moved_object(ws)
    lc = cat.id_search(values={"diaObjectId": [moved]}).compute()
    exp = expected_catalog(ws.ppdb)
    assert len(lc) == 1
    assert lc["diaSource"].nest.len()[0] == int((exp["sources"]["diaObjectId"] == moved).sum())
    # margin cache and index equal what hats-import builds from the compacted catalog
    margin, index = hats_import_margin_and_index(ws.published / "dia_object_lc", tmp_path_factory.mktemp("ref"), 10.0)
    for ours, reference in ((ws.published / "dia_object_lc_10arcs", margin),
                            (ws.published / "dia_object_lc_diaObjectId", index)):
        got, expected = read_dataset_rows(ours), read_dataset_rows(reference)
        assert got.num_rows == expected.num_rows > 0
        assert got.select(expected.column_names).equals(expected), ours.name

    full = Workspace(tmp_path_factory.mktemp("full"))
    shutil.copytree(ws.ppdb, full.ppdb)
    full.write_config()
    full.snakemake("bootstrap")
    rebuilt = read_collection(full.collection)
    key = ["diaObjectId"]
    a = weekly.sort_values(key).reset_index(drop=True)
    b = rebuilt.sort_values(key).reset_index(drop=True)
    assert list(a.columns) == list(b.columns)
    pd.testing.assert_frame_equal(a.drop(columns=["diaSource", "diaForcedSource"]),
                                  b.drop(columns=["diaSource", "diaForcedSource"]))
    for column in ("diaSource", "diaForcedSource"):
        pd.testing.assert_frame_equal(flat(a, column), flat(b, column))

    # a daily after weekly appends under the new partitioning
    ws.snakemake("weekly")  # already compacted: nothing to do
    extra = new_sky_tables()
    extra["DiaObject"] = extra["DiaObject"].assign(validityStartMjdTai=61370.2, nDiaSources=2)
    extra["DiaSource"] = extra["DiaSource"].assign(diaSourceId=lambda d: d.diaSourceId + 500, midpointMjdTai=61370.1)
    write_chunk(ws.ppdb, ts("2026-11-26T01:00:00Z"), extra)
    ws.snakemake("daily")
    after = read_collection(ws.collection)
    check_against_expectation(ws, after, one_row_per_object=False)
    check_layout(ws)
    assert (after["diaObjectId"].isin(NEW_SKY_IDS)).sum() == 2 * len(NEW_SKY_IDS)


def _a_moved_object(ws: Workspace) -> int:
    """An object whose versions lie in different order-6 pixels (the generator makes some)."""
    exp = expected_catalog(ws.ppdb)
    versions = read_export(ws.ppdb)["DiaObject"]
    pix = radec2pix(6, versions["ra"].to_numpy(), versions["dec"].to_numpy())
    moved = versions.assign(pix=pix).groupby("diaObjectId")["pix"].nunique()
    candidates = moved[moved > 1].index
    assert len(candidates), "the generator made no object that crosses a pixel boundary"
    counts = exp["sources"]["diaObjectId"].value_counts()
    return int(max(candidates, key=lambda i: counts.get(i, 0)))
