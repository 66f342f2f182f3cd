"""Per-invocation cost of planning (workflow parse) and commit-time work that touches every catalog file.

    python benchmarks/parse_cost.py --chunks 10000 100000 --files 10000 100000 --tmp /tmp/parse-cost

Part 1, planning: a synthetic PPDB export of N chunk directories (first half ``YYYY/MM/DD/<id>/``, second half flat
``ROOT/<id>/``; each holds an empty ``manifest.json`` and three empty table files, about 55 chunks per night) and
a collection whose ledger lists every chunk but the last few. The new chunks have real (zero-row) manifests, and
one of them sits in an old day folder (a late export). Discovery never opens a ledger-listed chunk's files, so
empty files are enough. Timed: :func:`ppdb_lc.planning.make_plan` and its parts (reading the ledger, the walk of
the export, the discovery of new chunks), with the number of directories listed (``os.scandir`` calls: on a
network file system each one is a metadata round trip, the figure that matters there), for the full walk
(``prune=False``, what every parse did before) and the bounded one. ``--snakemake`` also times
``snakemake -n status`` (parse and DAG, whole process) on each export.

Part 2, commit: a synthetic main catalog with F tiny parquet files (4 per pixel, order-6 pixels): time
``VersionedCollection.stage_copy`` (hard links), strict HATS validation (``is_valid_catalog(strict=True)``, what
``validate_commits: true`` runs on every commit, here on the main catalog only: margin and index are smaller) and
removing a version (what pruning old versions costs).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NIGHT_START = 1_800_000_000  # a chunk id (Unix seconds); nights are 86400 s apart
PER_NIGHT = 55
NEW = 5  # chunks not in the ledger (one of them in an old day folder)


# -- part 1: planning -----------------------------------------------------------------------------------------
def chunk_ids(n: int) -> list[int]:
    return [NIGHT_START - (n // PER_NIGHT + 1) * 86400 + (i // PER_NIGHT) * 86400 + (i % PER_NIGHT) * 600
            for i in range(n)]


def build_export(root: Path, n: int) -> list[int]:
    """N chunk directories; returns their ids. Reused when ``root/.done`` says it was built with the same N."""
    from datetime import UTC, datetime

    ids = chunk_ids(n)
    done = root / ".done"
    if done.exists() and done.read_text() == str(n):
        return ids
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for i, cid in enumerate(ids):
        if i == n - 1:  # a late chunk, exported into an old day folder
            day = datetime.fromtimestamp(ids[0], tz=UTC)
            directory = root / day.strftime("%Y/%m/%d") / str(cid)
        elif i < n // 2:
            day = datetime.fromtimestamp(cid + 3600, tz=UTC)  # folder: the processing date
            directory = root / day.strftime("%Y/%m/%d") / str(cid)
        else:
            directory = root / str(cid)
        directory.mkdir(parents=True)
        if i >= n - NEW:
            (directory / "manifest.json").write_text(json.dumps(
                {"replica_chunk_id": cid, "unique_id": f"u{cid}", "files": {}}))
            continue
        for name in ("DiaObject.parquet", "DiaSource.parquet", "DiaForcedSource.parquet", "manifest.json"):
            (directory / name).touch()
    done.write_text(str(n))
    return ids


def build_collection(root: Path, ids: list[int]) -> Path:
    from ppdb_lc.chunks import dayobs
    from ppdb_lc.ledger import LedgerEntry, write_ledger

    version = root / "versions" / "v000001-bench"
    version.mkdir(parents=True, exist_ok=True)
    (root / "collection.properties").write_text("collection_version=v000001-bench\n")
    write_ledger(version, [LedgerEntry(chunk_id=cid, unique_id=f"u{cid}", night=dayobs(cid), batch=dayobs(cid),
                                       rows={"DiaObject": 1, "DiaSource": 1, "DiaForcedSource": 1})
                           for cid in ids[:-NEW]])
    return root


@contextmanager
def count_listings():
    counter = {"scandir": 0}
    real = os.scandir

    def counting(path="."):
        counter["scandir"] += 1
        return real(path)

    os.scandir = counting
    try:
        yield counter
    finally:
        os.scandir = real


def timed(fn, repeat: int = 3):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def plan_figures(n: int, tmp: Path, snakemake: bool) -> list[str]:
    from ppdb_lc import chunks, planning
    from ppdb_lc.ledger import plan_batches, read_ledger, read_ledger_index
    from ppdb_lc.settings import Settings
    from ppdb_lc.versions import VersionedCollection

    base = tmp / f"export-{n}"
    started = time.perf_counter()
    ids = build_export(base / "ppdb", n)
    build_collection(base / "coll", ids)
    built = time.perf_counter() - started
    settings = Settings(ppdb_dir=base / "ppdb", collection_dir=base / "coll", work_dir=base / "work")
    lines = [f"export of {n} chunk directories ({n // 2} dated, {n - n // 2} flat; {NEW} new), built/reused in "
             f"{built:.1f} s"]
    current = VersionedCollection(settings.collection_dir).current()
    t_ledger, ledger = timed(lambda: read_ledger(current))
    t_index, index = timed(lambda: read_ledger_index(current))
    skip = index.chunk_ids
    lines.append(f"  ledger of {len(ledger)} rows: read_ledger {t_ledger * 1e3:.1f} ms, read_ledger_index "
                 f"{t_index * 1e3:.1f} ms")
    for prune in (False, True):
        with count_listings() as listed:
            list(chunks.find_chunk_dirs(settings.ppdb_dir, [], skip_ids=skip if prune else None))
        t_walk, _ = timed(lambda: list(chunks.find_chunk_dirs(settings.ppdb_dir, [], skip_ids=skip if prune else None)))
        t_disc, found = timed(lambda: chunks.discover(settings.ppdb_dir, skip_ids=skip, prune=prune))
        assert len(found.complete) == NEW and found.chunk_dirs == n, (len(found.complete), found.chunk_dirs)
        label = "bounded" if prune else "full   "
        lines.append(f"  {label} walk: {listed['scandir']:7d} directories listed, walk {t_walk * 1e3:7.1f} ms, "
                     f"discover {t_disc * 1e3:7.1f} ms")
    def make_plan_before():  # make_plan as it was: every LedgerEntry read, the whole export listed
        ledger = read_ledger(VersionedCollection(settings.collection_dir).current())
        found = chunks.discover(settings.ppdb_dir, skip_ids=[e.chunk_id for e in ledger], prune=False,
                                row_cache=settings.work_dir / planning.ROW_CHECKS)
        return plan_batches(found.complete, ledger)

    t_before, _ = timed(make_plan_before)
    lines.append(f"  make_plan before (full walk, read_ledger)      {t_before * 1e3:9.1f} ms "
                 f"({t_before / n * 1e9:.0f} ns per chunk directory)")
    t_plan, plan = timed(lambda: planning.make_plan(settings))
    assert sum(len(b.chunks) for b in plan.batches) == NEW
    lines.append(f"  make_plan now (bounded walk, ledger index)     {t_plan * 1e3:9.1f} ms "
                 f"({t_plan / n * 1e9:.0f} ns per chunk directory)")
    profile = cProfile.Profile()
    profile.enable()
    planning.make_plan(settings)
    profile.disable()
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(12)
    lines.append("  cProfile of make_plan (top 12 by cumulative time):")
    lines.extend("    " + line for line in out.getvalue().splitlines()
                 if line.strip() and ("(" in line or "ncalls" in line))
    if snakemake:
        lines.append(snakemake_figures(base, settings))
    return lines


def snakemake_figures(base: Path, settings) -> str:
    import yaml

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update(ppdb_dir=str(settings.ppdb_dir), collection_dir=str(settings.collection_dir),
                  work_dir=str(settings.work_dir))
    configfile = base / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(base),
           "--configfile", str(configfile), "--cores", "1", "-n", "status"]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        best = min(best, time.perf_counter() - start)
        if proc.returncode:
            return f"  snakemake -n status failed: {proc.stderr[-500:]}"
    return f"  snakemake -n status (parse + DAG, process wall time)  {best:.2f} s"


# -- part 2: commit ---------------------------------------------------------------------------------------------
def build_catalog(version: Path, files: int) -> int:
    """A main catalog of ``files`` tiny parquet files, 4 per order-6 pixel; returns the pixel count."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from hats.catalog import TableProperties
    from hats.pixel_math import HealpixPixel

    from ppdb_lc import catalog

    done = version / ".done"
    pixels = [HealpixPixel(6, p) for p in range(files // 4)]
    if done.exists() and done.read_text() == str(files):
        return len(pixels)
    shutil.rmtree(version, ignore_errors=True)
    cat = version / "dia_object_lc"
    sink = io.BytesIO()
    pq.write_table(pa.table({"diaObjectId": [1], "ra": [1.0], "dec": [1.0]}), sink)
    payload = sink.getvalue()
    for pixel in pixels:
        directory = catalog.pixel_file(cat, pixel, "x").parent
        directory.mkdir(parents=True, exist_ok=True)
        for night in range(4):
            (directory / f"2026-11-2{night}.parquet").write_bytes(payload)
    info = catalog.write_partition_info(cat, pixels)
    pq.write_metadata(pa.schema([("diaObjectId", pa.int64()), ("ra", pa.float64()), ("dec", pa.float64())]),
                      cat / "dataset" / "_common_metadata")
    TableProperties(catalog_name="dia_object_lc", catalog_type="object", total_rows=files,
                    **catalog.spatial_properties(info, 1)).to_properties_file(cat)
    (version.parent.parent / "collection.properties").write_text(f"collection_version={version.name}\n")
    done.write_text(str(files))
    return len(pixels)


def commit_figures(files: int, tmp: Path) -> list[str]:
    import logging

    from hats.io.validation import is_valid_catalog

    from ppdb_lc import catalog
    from ppdb_lc.versions import VersionedCollection

    logging.getLogger().setLevel(logging.ERROR)
    root = tmp / f"catalog-{files}"
    version = root / "versions" / "v000001-bench"
    started = time.perf_counter()
    pixels = build_catalog(version, files)
    lines = [f"catalog of {files} parquet files ({pixels} pixels), built/reused in {time.perf_counter() - started:.1f} s"]
    store = VersionedCollection(root)
    figures = {}
    for attempt in range(2):
        start = time.perf_counter()
        staged = store.stage_copy(f"bench{attempt}", catalog.is_data_file)
        figures.setdefault("stage_copy (hard links)", []).append(time.perf_counter() - start)
        start = time.perf_counter()
        ok = is_valid_catalog(str(staged / "dia_object_lc"), strict=True)
        figures.setdefault("strict validation (is_valid_catalog)", []).append(time.perf_counter() - start)
        assert ok
        start = time.perf_counter()
        shutil.rmtree(staged)
        figures.setdefault("remove a version (prune)", []).append(time.perf_counter() - start)
    for name, values in figures.items():
        best = min(values)
        lines.append(f"  {name:40s} {best:8.2f} s  = {best / files * 1e6:7.1f} ms per 1000 files")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--files", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--tmp", type=Path, default=Path("/tmp/parse-cost"))
    parser.add_argument("--snakemake", action="store_true", help="also time `snakemake -n status` per export")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic trees for the next run")
    args = parser.parse_args(argv)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, trees under {args.tmp} "
          f"(page cache warm: figures are lower bounds for a network file system)")
    for n in args.chunks:
        print("\n".join(plan_figures(n, args.tmp, args.snakemake)), flush=True)
    for files in args.files:
        print("\n".join(commit_figures(files, args.tmp)), flush=True)
    if not args.keep:
        shutil.rmtree(args.tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
