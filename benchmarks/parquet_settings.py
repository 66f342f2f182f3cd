"""Parquet write settings of the catalog's leaf files: the plain settings used before vs. hats' defaults.

    python benchmarks/parquet_settings.py --objects 50000 --nights 5 --out benchmarks/out/parquet

Builds a collection (bootstrap night 1, dailies, then weekly) with the workflow, then for the collection after the
dailies and after the weekly, and for each setting, rewrites every leaf file of the main catalog and the margin in a
copy of the published version and measures: write seconds (all files, one thread), bytes on disk, and with lsdb
(median of ``--repeats``, settings alternated): ``open_catalog`` + ``id_search`` of 20 ids, a 0.5 deg
``cone_search`` at the field centre, and a full ``compute()``. Settings:

- ``plain``: zstd (level 1 by Arrow's default), no dictionary, 100k-row groups, no page index (used until
  2026-12-03; the first results file calls it ``ours``);
- ``hats``: ``hats.io.file_io.get_parquet_write_table_kwargs`` (zstd level 15, byte-stream-split floats, delta
  `_healpix_29`, dictionaries elsewhere, statistics, page index), as hats-import writes;
- ``hats-zstd3``: the same with zstd level 3: ``catalog.write_options``, what the pipeline writes now.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import yaml

from ppdb_lc import catalog
from ppdb_lc.generator import DemoSpec, generate_ppdb
from ppdb_lc.versions import VersionedCollection

REPO = Path(__file__).resolve().parents[1]


def settings(schema) -> dict[str, dict]:
    from hats.io.file_io.file_io import get_parquet_write_table_kwargs

    hats = get_parquet_write_table_kwargs(schema)
    plain = {"compression": "zstd", "use_dictionary": False, "row_group_size": 100_000}  # before 2026-12-03
    return {"plain": plain, "hats": hats, "hats-zstd3": catalog.write_options(schema)}


def snakemake(root: Path, *args: str) -> None:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(root),
           "--cores", "2", *args, "--configfile", str(root / "config.yaml")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")


def rewrite(version: Path, dest: Path, options: dict) -> tuple[float, int]:
    """Copy ``version`` to a new collection ``dest`` with every leaf file rewritten; return (write s, leaf bytes)."""
    store = VersionedCollection(dest)
    staged = store.stage_copy("copy", catalog.is_data_file, source=version)
    seconds, size = 0.0, 0
    for path in sorted(staged.rglob("Npix=*/*.parquet")) + sorted(staged.rglob("Npix=*.parquet")):
        table = pq.read_table(path)
        path.unlink()  # a hard link shared with the source
        started = time.perf_counter()
        pq.write_table(table, path, **options)
        seconds += time.perf_counter() - started
        size += path.stat().st_size
    store.publish(staged, "copy", base=None)
    return seconds, size


def queries(collection: Path, ids: list[int], ra: float, dec: float, repeats: int) -> dict[str, float]:
    import lsdb

    out: dict[str, list[float]] = {"id_search": [], "cone_search": [], "compute": []}
    for _ in range(repeats):
        with contextlib.redirect_stdout(io.StringIO()):
            started = time.perf_counter()
            lsdb.open_catalog(collection).id_search(values={"diaObjectId": ids}).compute()
            out["id_search"].append(time.perf_counter() - started)
            started = time.perf_counter()
            lsdb.open_catalog(collection).cone_search(ra=ra, dec=dec, radius_arcsec=1800).compute()
            out["cone_search"].append(time.perf_counter() - started)
            started = time.perf_counter()
            lsdb.open_catalog(collection).compute()
            out["compute"].append(time.perf_counter() - started)
    return {k: statistics.median(v) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=50_000)
    parser.add_argument("--nights", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "parquet")
    args = parser.parse_args()
    root = args.out.resolve()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    nights = [f"2026-11-{20 + i:02d}" for i in range(args.nights)]
    spec = DemoSpec(n_objects=args.objects, nights=tuple(nights), chunks_per_night=4, seed=7)
    generate_ppdb(root / "ppdb", spec)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update(ppdb_dir=str(root / "ppdb"), collection_dir=str(root / "coll"), work_dir=str(root / "work"))
    config["catalog"]["pixel_threshold"] = 20_000
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    snakemake(root, "bootstrap", "--config", f"until={nights[0]}")
    snakemake(root, "daily")
    stages = {"dailies": VersionedCollection(root / "coll").current()}
    snakemake(root, "weekly")
    stages["weekly"] = VersionedCollection(root / "coll").current()

    results = {}
    for stage, version in stages.items():
        sample = pq.read_table(next(version.rglob("Npix=*/*.parquet")))
        rng = np.random.default_rng(1)
        ids = [int(i) for i in rng.choice(sample["diaObjectId"].to_numpy(), 20)]
        ra, dec = float(np.median(sample["ra"].to_numpy())), float(np.median(sample["dec"].to_numpy()))
        for name, options in settings(sample.schema).items():
            dest = root / f"{stage}-{name}"
            seconds, size = rewrite(version, dest, options)
            results[(stage, name)] = {"write_s": seconds, "bytes": size}
        for name in settings(sample.schema):  # queries after all writes, so the page cache is alike
            results[(stage, name)].update(queries(root / f"{stage}-{name}", ids, ra, dec, args.repeats))

    lines = [f"parquet settings, {args.objects} objects x {args.nights} nights, 2 cores, median of {args.repeats}",
             f"{'catalog':8} {'setting':11} {'write s':>8} {'MB':>7} {'id_search s':>11} {'cone 0.5deg s':>13} "
             f"{'compute s':>9}"]
    for (stage, name), r in results.items():
        lines.append(f"{stage:8} {name:11} {r['write_s']:8.2f} {r['bytes'] / 1e6:7.1f} {r['id_search']:11.3f} "
                     f"{r['cone_search']:13.3f} {r['compute']:9.3f}")
    print("\n".join(lines))
    (root / "results.json").write_text(json.dumps({f"{k[0]}/{k[1]}": v for k, v in results.items()}, indent=1))
    os.sync()


if __name__ == "__main__":
    main()
