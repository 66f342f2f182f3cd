"""Weekly cost, incremental vs full: "weekly after 1 night" and "after 7 nights" on a catalog of N nights.

    python benchmarks/weekly_incremental.py --objects 20000 --nights 10 --out benchmarks/out-weekly

1. generate ``--nights`` nights (:mod:`ppdb_lc.generator`, one field) and ``bootstrap`` them: a compacted catalog;
2. for k in (1, 7): k extra nights, each revisiting a patch of ``--patch-deg`` radius around another pixel's
   first object (new versions of the objects there, moved by ~0.4″, and one new source each) - a night of Rubin
   covers part of the sky, not all of it - ingested by ``daily``;
3. on copies of that collection: the full weekly (``rebuild.weekly``) and the incremental one (plan, shards and
   commit in one process, ``weekly.run_in_process``), each in a fresh Python process that reports its wall time and
   peak RSS (``VmHWM`` of ``/proc/self/status``).

Printed per case: key rows read (the full weekly's plan reads the key columns of every row; the incremental plan
those of the touched pixels), rows read whole (full: every row; incremental: the shards' files and the carried
neighbour files they take margin rows from), catalog files rewritten and linked, seconds (one process, shards run one
after the other: SLURM would run them in parallel), peak RSS; ``results.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from ppdb_lc import apdb
from ppdb_lc.generator import DemoSpec, generate_ppdb
from ppdb_lc.versions import VersionedCollection

REPO = Path(__file__).resolve().parents[1]

MEASURE = r"""
import json, sys, time
from pathlib import Path
from ppdb_lc import jobs, rebuild, weekly
from ppdb_lc.settings import Settings
import yaml
jobs.use_jemalloc()
mode, configfile, work = sys.argv[1], sys.argv[2], Path(sys.argv[3])
settings = Settings.from_config(yaml.safe_load(Path(configfile).read_text()))
started = time.perf_counter()
if mode == "full":
    summary = rebuild.weekly(work / "scratch", settings)
else:
    summary = weekly.run_in_process(settings, work, full_above=1.0)
summary["wall_seconds"] = time.perf_counter() - started
summary["peak_rss_mb"] = jobs.peak_rss_mb()
print("RESULT " + json.dumps(summary))
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=20_000)
    parser.add_argument("--nights", type=int, default=10)
    parser.add_argument("--chunks-per-night", type=int, default=4)
    parser.add_argument("--patch-deg", type=float, default=0.25, help="radius of the patch a night revisits")
    parser.add_argument("--pixel-threshold", type=int, default=None, help="default: objects / 40, at least 200")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out-weekly")
    return parser.parse_args(argv)


def write_chunk(root: Path, chunk_id: int, tables: dict[str, pd.DataFrame]) -> None:
    """A flat-layout chunk with the export schema (columns not given are null) and a new-format manifest."""
    directory = root / str(chunk_id)
    directory.mkdir(parents=True)
    files = {}
    for table, frame in tables.items():
        schema = apdb.export_schema(table)
        arrays = [pa.array([chunk_id] * len(frame), pa.int64()) if f.name == apdb.REPLICA_CHUNK_COLUMN
                  else pa.array(frame[f.name].to_numpy(), type=f.type) if f.name in frame
                  else pa.nulls(len(frame), f.type) for f in schema]
        path = directory / f"{table}.parquet"
        pq.write_table(pa.Table.from_arrays(arrays, schema=schema), path)
        files[path.name] = {"row_count": len(frame), "checksum": hashlib.sha256(path.read_bytes()).hexdigest(),
                            "size_bytes": path.stat().st_size}
    (directory / "manifest.json").write_text(json.dumps({
        "replica_chunk_id": str(chunk_id), "unique_id": f"bench-{chunk_id}", "schema_version": "10.0.0",
        "exported_at": "2027-01-01T00:00:00Z", "last_update_time": str(chunk_id + 590), "files": files,
        "update_count": 0}))


def patch_night(catalog: pd.DataFrame, center: int, radius: float, night_index: int) -> dict[str, pd.DataFrame]:
    """New versions (and one source each) of the objects within ``radius`` deg of object ``center``'s position."""
    ra0, dec0 = catalog.loc[center, ["ra", "dec"]]
    near = catalog[(np.hypot((catalog["ra"] - ra0) * np.cos(np.radians(dec0)), catalog["dec"] - dec0) < radius)]
    ids = near.index.to_numpy(np.int64)
    mjd = 61500.3 + night_index
    ra, dec = near["ra"].to_numpy() + 1e-4, near["dec"].to_numpy()
    objects = pd.DataFrame({"diaObjectId": ids, "validityStartMjdTai": mjd + 0.001, "ra": ra, "dec": dec,
                            "nDiaSources": 1, "g_scienceFluxMean": 5000.0, "g_scienceFluxMeanErr": 50.0})
    sources = pd.DataFrame({"diaSourceId": 9_100_000_000_000 + night_index * 10**7 + np.arange(len(ids)),
                            "diaObjectId": ids, "midpointMjdTai": mjd, "ra": ra, "dec": dec, "visit": 900 + night_index,
                            "detector": 1, "band": "g", "scienceFlux": 5000.0, "scienceFluxErr": 50.0, "x": 10.0,
                            "y": 10.0})
    return {"DiaObject": objects, "DiaSource": sources}


def run(cmd: list[str], cwd: Path, log: Path) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed; see {log}:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return proc.stdout


def snakemake(out: Path, configfile: Path, target: str, cores: int, log: Path) -> None:
    run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--configfile", str(configfile),
         "--cores", str(cores), target], out, log)


def measure(mode: str, out: Path, collection: Path, base_config: dict, name: str) -> dict:
    copy = out / f"coll-{name}-{mode}"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(collection, copy, symlinks=True)
    config = {**base_config, "collection_dir": str(copy), "work_dir": str(out / f"work-{name}-{mode}")}
    configfile = out / f"config-{name}-{mode}.yaml"
    configfile.write_text(yaml.safe_dump(config))
    work = out / f"weekly-{name}-{mode}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    stdout = run([sys.executable, "-c", MEASURE, mode, str(configfile), str(work)], out, out / f"{name}-{mode}.log")
    summary = json.loads(next(line for line in stdout.splitlines() if line.startswith("RESULT "))[7:])
    pixels = len(summary["pixels"])
    if mode == "full":
        key_rows, rows_read = summary["rows_folded"], summary["rows_folded"]
        rewritten, linked = pixels, 0
    else:  # the plan reads key columns; shards read whole rows (their files + carried neighbours for margins)
        key_rows = summary["key_rows_read"]
        rows_read = sum(s["rows_read"] for s in summary["shard_summaries"])
        rewritten, linked = summary["files_rewritten"], summary["files_linked"]
    shutil.rmtree(copy, ignore_errors=True)
    return {"case": name, "mode": mode, "rows_in": summary.get("rows_in", summary.get("rows_folded")),
            "key_rows_read": key_rows, "rows_read": rows_read, "files_rewritten": rewritten, "files_linked": linked,
            "seconds": round(summary["wall_seconds"], 2), "peak_rss_mb": round(summary["peak_rss_mb"], 1),
            "shards": summary.get("shards", 1)}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    start = pd.Timestamp("2026-11-20")
    nights = tuple((start + pd.Timedelta(days=i)).date().isoformat() for i in range(args.nights))
    ppdb = out / "ppdb"
    spec = DemoSpec(n_objects=args.objects, nights=nights, chunks_per_night=args.chunks_per_night, seed=7)
    generate_ppdb(ppdb, spec)
    threshold = args.pixel_threshold or max(200, args.objects // 40)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update(ppdb_dir=str(ppdb), collection_dir=str(out / "coll"), work_dir=str(out / "work"), until="all")
    config["catalog"]["pixel_threshold"] = threshold
    configfile = out / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    started = time.perf_counter()
    snakemake(out, configfile, "bootstrap", args.cores, out / "bootstrap.log")
    print(f"bootstrap of {args.nights} nights: {time.perf_counter() - started:.1f} s")
    compacted = VersionedCollection(out / "coll").current() / "dia_object_lc"
    table = pq.read_table(compacted / "dataset", columns=["diaObjectId", "ra", "dec", "_healpix_29"])
    catalog = table.to_pandas().set_index("diaObjectId")
    # patch centres: the first object of every few pixels, spread over the field
    from hats.catalog import PartitionInfo

    from ppdb_lc import partitioning

    pixels = PartitionInfo.read_from_dir(compacted).get_healpix_pixels()
    slots = partitioning.locate(catalog["_healpix_29"].to_numpy(), pixels)
    firsts = pd.Series(catalog.index.to_numpy()).groupby(slots).first()
    centers = firsts.iloc[np.linspace(0, len(firsts) - 1, 7).astype(int)].to_list()
    results = []
    snapshot = out / "coll-compacted"
    shutil.copytree(out / "coll", snapshot, symlinks=True)
    for extra in (1, 7):
        shutil.rmtree(out / "coll")
        shutil.copytree(snapshot, out / "coll", symlinks=True)
        written = []
        for k in range(extra):
            night = (start + pd.Timedelta(days=args.nights + k)).date().isoformat()
            chunk_id = int(pd.Timestamp(f"{night}T22:00:00Z").timestamp()) + 12 * 3600 + 100 * extra
            write_chunk(ppdb, chunk_id, patch_night(catalog, centers[k], args.patch_deg, k))
            written.append(ppdb / str(chunk_id))
        snakemake(out, configfile, "daily", args.cores, out / f"daily-{extra}.log")
        name = f"after {extra} night{'s' if extra > 1 else ''}"
        for mode in ("full", "incremental"):
            results.append(measure(mode, out, out / "coll", config, name))
            print(json.dumps(results[-1]))
        for chunk in written:  # the next case starts again from the compacted catalog
            shutil.rmtree(chunk)
    header = (f"{'case':<16}{'mode':<13}{'rows in':>9}{'key rows read':>15}{'rows read':>11}{'rewritten':>11}"
              f"{'linked':>8}{'s':>8}{'peak MB':>9}")
    print(f"\nweekly on a catalog of {args.nights} nights, {args.objects} objects, threshold {threshold}, "
          f"patch radius {args.patch_deg} deg")
    print(header)
    for r in results:
        print(f"{r['case']:<16}{r['mode']:<13}{r['rows_in']:>9}{r['key_rows_read']:>15}{r['rows_read']:>11}"
              f"{r['files_rewritten']:>11}{r['files_linked']:>8}{r['seconds']:>8.2f}{r['peak_rss_mb']:>9.0f}")
    (out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
