"""Shared fixtures: small generated PPDB exports, a Snakemake runner, and an independent expectation."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from ppdb_lc import apdb
from ppdb_lc.generator import DemoSpec, generate_ppdb

REPO = Path(__file__).resolve().parents[1]
NIGHTS = ("2026-11-20", "2026-11-21", "2026-11-22", "2026-11-23")
SPEC = DemoSpec(n_objects=800, nights=NIGHTS, chunks_per_night=3, seed=11)


@dataclass
class Workspace:
    root: Path

    @property
    def ppdb(self) -> Path:
        return self.root / "ppdb"

    @property
    def collection(self) -> Path:
        return self.root / "coll"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def published(self) -> Path:
        """The published version directory of the collection."""
        from ppdb_lc.versions import VersionedCollection

        current = VersionedCollection(self.collection).current()
        assert current is not None, f"no collection published at {self.collection}"
        return current

    @property
    def configfile(self) -> Path:
        return self.root / "config.yaml"

    def write_config(self, **overrides) -> None:
        config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
        config.update(ppdb_dir=str(self.ppdb), collection_dir=str(self.collection), work_dir=str(self.work))
        config["catalog"]["pixel_threshold"] = 120
        config["sharding"]["rows_per_stage_job"] = 600  # the larger nights are staged in 2-3 jobs per dataset
        config["sharding"]["rows_per_ingest_job"] = 1000  # and built in 3-4 shard and writer jobs (the first: 1)
        # the weekly is always incremental (plan, compact_pixels shards, commit), although the generated nights touch
        # every pixel; tests/test_weekly.py runs the full weekly and the plan's fall-back to it
        config["weekly"] = {"mode": "incremental", "shards": 2, "full_above": 1.0}
        config.update(overrides)
        self.configfile.write_text(yaml.safe_dump(config))

    def command(self, *args: str) -> tuple[list[str], dict[str, str]]:
        env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
               str(self.root), "--configfile", str(self.configfile), "--cores", "2", "--show-failed-logs", *args]
        return cmd, env

    def start(self, *args: str) -> subprocess.Popen:
        cmd, env = self.command(*args)
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def snakemake(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd, env = self.command(*args)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if check and proc.returncode != 0:
            raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
        return proc


@pytest.fixture(scope="session")
def demo_export(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export") / "ppdb"
    generate_ppdb(root, SPEC)
    return root


@pytest.fixture
def workspace(tmp_path, demo_export) -> Workspace:
    ws = Workspace(tmp_path)
    shutil.copytree(demo_export, ws.ppdb)
    ws.write_config()
    return ws


def chunk_dirs(ppdb: Path) -> list[Path]:
    return sorted({p.parent for p in ppdb.rglob("*manifest.json")}, key=lambda p: int(p.name))


def dayobs(chunk_id: int) -> str:
    return (pd.Timestamp(chunk_id, unit="s") - pd.Timedelta(hours=12)).date().isoformat()


def read_export(ppdb: Path, nights=None) -> dict[str, pd.DataFrame]:
    """Every row of every complete chunk (optionally of some nights only), read with pandas alone."""
    frames: dict[str, list[pd.DataFrame]] = {t: [] for t in apdb.DATASETS}
    for directory in chunk_dirs(ppdb):
        if nights is not None and dayobs(int(directory.name)) not in nights:
            continue
        for table in apdb.DATASETS:
            path = directory / f"{table}.parquet"
            if path.exists():
                frames[table].append(pd.read_parquet(path, dtype_backend="numpy_nullable"))
    return {t: pd.concat(f, ignore_index=True) if f else pd.DataFrame() for t, f in frames.items()}


def read_records(ppdb: Path, nights=None) -> list[dict]:
    """Every update record of every complete chunk, payload fields and order columns, in PPDB order."""
    records = []
    for directory in chunk_dirs(ppdb):
        if nights is not None and dayobs(int(directory.name)) not in nights:
            continue
        for name in ("updates.parquet", "update_records.parquet", "update_records.json"):
            path = directory / name
            if not path.exists():
                continue
            rows = json.loads(path.read_text()) if name.endswith(".json") else pq.read_table(path).to_pylist()
            for row in rows:
                payload = row["json_payload"]
                payload = json.loads(payload) if isinstance(payload, str) else payload
                records.append({**payload, "_chunk": row["apdb_replica_chunk"], "_time": row["update_time_ns"],
                                "_order": row["update_order"]})
    return sorted(records, key=lambda r: (r["_chunk"], r["_time"], r["_order"]))


def expected_catalog(ppdb: Path, nights=None) -> dict:
    """The independent expectation, as the PPDB computes it: every row of every chunk, re-emitted sources reduced
    to the earliest chunk's copy, then every update record applied one by one in order (last write wins; a
    DiaObject record changes the object's latest version as of the record's chunk); latest object versions and
    each object's source/forced-source ids."""
    data = read_export(ppdb, nights)
    versions = data["DiaObject"].copy()
    sources = data["DiaSource"].sort_values("apdb_replica_chunk", kind="stable").drop_duplicates("diaSourceId")
    sources = sources.set_index("diaSourceId")
    forced = data["DiaForcedSource"].sort_values("apdb_replica_chunk", kind="stable")
    forced = forced.drop_duplicates(["diaObjectId", "visit", "detector"]).set_index(
        ["diaObjectId", "visit", "detector"], drop=False)
    applied = 0
    for r in read_records(ppdb, nights):
        kind = r["update_type"]
        if kind.endswith("diasource_to_diaobject") or kind.endswith("to_ssobject") or kind == "withdraw_diasource":
            if r["diaSourceId"] not in sources.index:
                continue
            if kind == "reassign_diasource_to_diaobject":
                sources.loc[r["diaSourceId"], "diaObjectId"] = r["diaObjectId"]
            elif kind == "reassign_diasource_to_ssobject":
                sources.loc[r["diaSourceId"], ["ssObjectId", "ssObjectReassocTimeMjdTai"]] = [
                    r["ssObjectId"], r["ssObjectReassocTimeMjdTai"]]
                sources.loc[r["diaSourceId"], "diaObjectId"] = pd.NA
            else:
                sources.loc[r["diaSourceId"], "timeWithdrawnMjdTai"] = r["timeWithdrawnMjdTai"]
        elif kind == "withdraw_diaforcedsource":
            key = (r["diaObjectId"], r["visit"], r["detector"])
            if key not in forced.index:
                continue
            forced.loc[key, "timeWithdrawnMjdTai"] = r["timeWithdrawnMjdTai"]
        else:
            mine = versions[(versions["diaObjectId"] == r["diaObjectId"])
                            & (versions["apdb_replica_chunk"] <= r["_chunk"])]
            if mine.empty:
                continue
            latest = mine["validityStartMjdTai"].idxmax()
            if kind == "close_diaobject_validity":
                versions.loc[latest, "validityEndMjdTai"] = r["validityEndMjdTai"]
            if r.get("nDiaSources") is not None:
                versions.loc[latest, "nDiaSources"] = r["nDiaSources"]
        applied += 1
    objects = versions.sort_values("validityStartMjdTai").groupby("diaObjectId").tail(1)
    sources = sources.reset_index()
    solar = int(sources["diaObjectId"].isna().sum())
    sources = sources[sources["diaObjectId"].notna()]
    forced = forced.reset_index(drop=True)
    ids = set(objects["diaObjectId"]) | set(sources["diaObjectId"].astype("int64")) | set(forced["diaObjectId"])
    return {
        "objects": objects.set_index("diaObjectId"),
        "sources": sources.assign(diaObjectId=sources["diaObjectId"].astype("int64")),
        "forced": forced,
        "ids": ids,
        "solar": solar,
        "records_applied": applied,
    }


def read_collection(collection: Path) -> pd.DataFrame:
    import lsdb

    return lsdb.open_catalog(collection).compute()


def flat(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """Flatten a nested column, tagging each point with the diaObjectId and position of its row."""
    lengths = frame[column].nest.len()
    points = frame[column].nest.to_flat().reset_index(drop=True)
    points["owner"] = np.repeat(frame["diaObjectId"].to_numpy(), lengths)
    points["row"] = np.repeat(np.arange(len(frame)), lengths)
    return points


def tree_digest(path: Path) -> dict[str, str]:
    """Content hash of every file below ``path`` (following the collection link)."""
    out = {}
    for file in sorted(Path(os.path.realpath(path)).rglob("*")):
        if file.is_file():
            out[str(file.relative_to(os.path.realpath(path)))] = hashlib.sha256(file.read_bytes()).hexdigest()
    return out


def write_chunk(root: Path, chunk_id: int, tables: dict[str, pd.DataFrame], *, manifest: bool = True) -> Path:
    """Write a flat-layout chunk with the export schema (columns not given are null) and a new-format manifest."""
    directory = root / str(chunk_id)
    directory.mkdir(parents=True)
    files = {}
    for table, frame in tables.items():
        schema = apdb.export_schema(table)
        arrays = []
        for field in schema:
            if field.name == apdb.REPLICA_CHUNK_COLUMN:
                arrays.append(pa.array([chunk_id] * len(frame), pa.int64()))
            elif field.name in frame:
                arrays.append(pa.array(frame[field.name].to_numpy(), type=field.type))
            else:
                arrays.append(pa.nulls(len(frame), field.type))
        path = directory / f"{table}.parquet"
        pq.write_table(pa.Table.from_arrays(arrays, schema=schema), path)
        files[path.name] = {"row_count": len(frame), "checksum": hashlib.sha256(path.read_bytes()).hexdigest(),
                            "size_bytes": path.stat().st_size}
    if manifest:
        (directory / "manifest.json").write_text(json.dumps({
            "replica_chunk_id": str(chunk_id), "unique_id": f"test-{chunk_id}", "schema_version": "10.0.0",
            "exported_at": "2026-11-25T00:00:00Z", "last_update_time": str(chunk_id + 590), "files": files,
            "update_count": 0}))
    return directory


def assert_rows_in_their_pixels(catalog_dir: Path) -> int:
    """Every row of every leaf file lies inside the pixel its path names; returns the number of rows checked."""
    from hats.io.paths import get_healpix_from_path

    rows = 0
    for file in Path(os.path.realpath(catalog_dir)).rglob("Npix=*/*.parquet"):
        pixel = get_healpix_from_path(str(file))
        hp29 = pq.read_table(file, columns=["_healpix_29"])["_healpix_29"].to_numpy()
        assert (hp29 >> (2 * (29 - pixel.order)) == pixel.pixel).all(), f"rows outside {pixel} in {file}"
        rows += len(hp29)
    return rows


def assert_margin_rows_border_their_pixels(margin_dir: Path, threshold_arcsec: float) -> int:
    """Every margin row lies in hats' margin (border cells) of the pixel it is filed under, outside that pixel."""
    from hats.io.paths import get_healpix_from_path
    from hats.pixel_math import get_margin
    from hats.pixel_math.healpix_shim import margin2order

    order = int(margin2order(threshold_arcsec / 60.0))
    rows = 0
    for file in Path(os.path.realpath(margin_dir)).rglob("Npix=*/*.parquet"):
        pixel = get_healpix_from_path(str(file))
        hp29 = pq.read_table(file, columns=["_healpix_29"])["_healpix_29"].to_numpy()
        cells = hp29 >> (2 * (29 - order))
        assert np.isin(cells, get_margin(pixel.order, pixel.pixel, order - pixel.order)).all(), file
        rows += len(hp29)
    return rows


def expected_margin_rows(catalog_dir: Path, threshold_arcsec: float) -> int:
    """Independent count of margin rows: rows of all pixels in the border cells of each other pixel."""
    from hats.catalog import PartitionInfo
    from hats.pixel_math import get_margin
    from hats.pixel_math.healpix_shim import margin2order

    order = int(margin2order(threshold_arcsec / 60.0))
    catalog_dir = Path(os.path.realpath(catalog_dir))
    hp29 = np.concatenate([pq.read_table(f, columns=["_healpix_29"])["_healpix_29"].to_numpy()
                           for f in catalog_dir.rglob("Npix=*/*.parquet")])
    cells = hp29 >> (2 * (29 - order))
    total = 0
    for pixel in PartitionInfo.read_from_dir(catalog_dir).get_healpix_pixels():
        total += int(np.isin(cells, get_margin(pixel.order, pixel.pixel, order - pixel.order)).sum())
    return total


def hats_import_margin_and_index(catalog_dir: Path, out: Path, threshold_arcsec: float) -> tuple[Path, Path]:
    """The reference: margin cache and ``diaObjectId`` index built by hats-import (Dask) from ``catalog_dir``."""
    from dask.distributed import Client, LocalCluster
    from hats_import.collection.arguments import CollectionArguments
    from hats_import.pipeline import pipeline_with_client

    args = (
        CollectionArguments(output_path=str(out), output_artifact_name="reference", npix_suffix="/",
                            progress_bar=False, resume=False)
        .catalog(catalog_path=str(Path(os.path.realpath(catalog_dir))))
        .add_margin(margin_threshold=threshold_arcsec, output_artifact_name="margin", is_default=True)
        .add_index(indexing_column="diaObjectId", output_artifact_name="index", include_healpix_29=True)
    )
    with (LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
          Client(cluster) as client):
        pipeline_with_client(args, client)
    return out / "reference" / "margin", out / "reference" / "index"


def read_dataset_rows(catalog_dir: Path) -> pa.Table:
    """Every row of a HATS dataset with the ``Norder``/``Npix`` of its leaf directory (if any), sorted."""
    parts = []
    for path in sorted(Path(os.path.realpath(catalog_dir)).joinpath("dataset").rglob("*.parquet")):
        table = pq.read_table(path)
        table = table.replace_schema_metadata(None)
        pixel = [p for p in path.parts if p.startswith(("Norder=", "Npix="))]
        if "Norder" not in table.column_names and pixel:
            order, npix = (int(p.split("=")[1].removesuffix(".parquet")) for p in pixel[:2])
            table = table.append_column("Norder", pa.array([order] * len(table), pa.uint8()))
            table = table.append_column("Npix", pa.array([npix] * len(table), pa.uint64()))
        parts.append(table)
    rows = pa.concat_tables(parts)
    return rows.sort_by([("Norder", "ascending"), ("Npix", "ascending"), ("diaObjectId", "ascending")])


# Snakemake's benchmark timer thread can race interpreter shutdown after a successful run (seen once in ~20 runs):
# a traceback from snakemake/benchmark.py that says nothing about the workflow.
_BENCHMARK_TIMER_RACE = re.compile(
    r"Exception in thread [^\n]*\nTraceback \(most recent call last\):\n(?:[ \t][^\n]*\n)*?"
    r"RuntimeError: can't create new thread at interpreter shutdown\n?")


def assert_no_exception(stderr: str) -> None:
    """No exception or traceback in a Snakemake run's stderr (Snakemake's own benchmark-timer shutdown race aside)."""
    text = "".join(block for block in _BENCHMARK_TIMER_RACE.split(stderr))
    for match in _BENCHMARK_TIMER_RACE.finditer(stderr):
        assert "snakemake/benchmark.py" in match.group(0), match.group(0)
    assert "Exception" not in text and "Traceback" not in text, stderr
