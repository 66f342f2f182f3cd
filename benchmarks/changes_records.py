"""Peak memory (kernel VmHWM) of the changes job against the number of update records, rows and catalog fixed.

    python benchmarks/changes_records.py --root /tmp/ib/217000 --version v000002-2026-11-20 --night 2026-11-21 \
        --records 0 100000 400000 1600000

``--root`` is a workspace left by ``benchmarks/ingest_scaling.py`` (``config.yaml``, the collection's
``versions/<version>``, the night's staged files in ``work/batches/<night>/staged``). For each count N, a fresh
process runs the changes job of the night (:func:`ppdb_lc.shards.build_changes`, as the ``ingest_changes`` rule does)
with the night's own update records replaced by N synthetic records: a deduplication run, like the real export's
(``shared/docs/update_records.md``), over committed DiaSources spread over the whole catalog (taken in file order, every
k-th): ``reassign_diasource_to_diaobject`` to an object of the same file, and every 20th an ``update_n_dia_sources``
and a ``close_diaobject_validity`` of the source's object. Each record carries the target's position. Prints, per N:
the job's peak RSS, CPU seconds, wall seconds, files rewritten and points moved; then, in another process, the
commit's part that reads the records (statuses, the night's update log, the records left pending) on that output.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]


def _committed_sources(catalog: Path, count: int) -> tuple[pa.Table, pa.Table]:
    """``count`` committed DiaSources spread over every file (id, position, object, another object of its file)."""
    files = sorted(p for p in catalog.glob("dataset/Norder=*/Dir=*/Npix=*/*.parquet"))
    parts = []
    for path in files:
        t = pq.read_table(path, columns=["diaObjectId", "diaSource"])
        nested = t["diaSource"].combine_chunks()  # a struct of lists (one list per field, as nested-pandas stores)
        ids = nested.field("diaSourceId")
        rows = pc.list_parent_indices(ids).to_numpy()
        owners = t["diaObjectId"].to_numpy()
        other = np.roll(owners, 1)[rows]  # the previous row's object: another object of the same pixel file
        parts.append(pa.table({"diaSourceId": pc.list_flatten(ids), "ra": pc.list_flatten(nested.field("ra")),
                               "dec": pc.list_flatten(nested.field("dec")), "owner": owners[rows], "to": other}))
    sources = pa.concat_tables(parts)
    if count > sources.num_rows:
        raise SystemExit(f"the catalog holds {sources.num_rows} DiaSources, fewer than --records {count}")
    step = max(1, sources.num_rows // max(1, count))
    return sources.take(pa.array(np.arange(0, step * count, step)[:count])), sources


def synthetic_records(catalog: Path, count: int, chunk: int) -> pa.Table:
    from ppdb_lc import updates

    picked, _ = _committed_sources(catalog, count) if count else (None, None)
    if not count:
        return updates.empty_records()
    n = picked.num_rows
    every = np.arange(n) % 20 == 0
    kinds = np.array(["reassign_diasource_to_diaobject"] * n, dtype=object)
    table = {name: pa.nulls(n, updates.RECORD_SCHEMA.field(name).type) for name in updates.RECORD_SCHEMA.names}
    table["apdb_replica_chunk"] = pa.array(np.full(n, chunk), pa.int64())
    table["update_time_ns"] = pa.array(np.arange(n), pa.int64())
    table["update_order"] = pa.array(np.zeros(n), pa.int64())
    table["update_type"] = pa.array(kinds.tolist(), pa.string())
    table["diaSourceId"] = picked["diaSourceId"]
    table["diaObjectId"] = picked["to"]
    table["ra"], table["dec"] = picked["ra"], picked["dec"]
    table["midpointMjdTai"] = pa.array(np.full(n, 61000.0))
    main = pa.table(table, schema=updates.RECORD_SCHEMA)
    # object records for every 20th source's object
    k = int(every.sum())
    objects = {name: pa.nulls(2 * k, updates.RECORD_SCHEMA.field(name).type) for name in updates.RECORD_SCHEMA.names}
    objects["apdb_replica_chunk"] = pa.array(np.full(2 * k, chunk), pa.int64())
    objects["update_time_ns"] = pa.array(np.full(2 * k, n), pa.int64())
    objects["update_order"] = pa.array(np.arange(2 * k), pa.int64())
    objects["update_type"] = pa.array(["update_n_dia_sources"] * k + ["close_diaobject_validity"] * k, pa.string())
    owner = picked["owner"].to_numpy()[every]
    objects["diaObjectId"] = pa.array(np.concatenate([owner, owner]), pa.int64())
    objects["nDiaSources"] = pa.array(np.concatenate([np.full(k, 7), np.full(k, None)]), pa.int32())
    objects["validityEndMjdTai"] = pa.array(np.concatenate([np.full(k, np.nan), np.full(k, 61000.5)]))
    ra, dec = picked["ra"].to_numpy()[every], picked["dec"].to_numpy()[every]
    objects["ra"], objects["dec"] = pa.array(np.concatenate([ra, ra])), pa.array(np.concatenate([dec, dec]))
    extra = pa.table(objects, schema=updates.RECORD_SCHEMA)
    extra = extra.set_column(extra.schema.get_field_index("validityEndMjdTai"), "validityEndMjdTai",
                             pc.if_else(pc.is_nan(extra["validityEndMjdTai"]), None, extra["validityEndMjdTai"]))
    return pa.concat_tables([main, extra])


def child(root: Path, version: str, night: str, records_file: Path, shards: int, out: Path) -> None:
    """One changes job: the night's staged files, the records of ``records_file`` instead of the night's."""
    import yaml

    from ppdb_lc import shards as shard_jobs
    from ppdb_lc import stage
    from ppdb_lc.ledger import Batch
    from ppdb_lc.settings import Settings

    settings = Settings.from_config(yaml.safe_load((root / "config.yaml").read_text()))
    base = root / "coll" / "versions" / version
    shard_jobs.published = lambda s: base
    staged = {d.name: sorted(d.iterdir()) for d in sorted((root / "work" / "batches" / night / "staged").iterdir())}
    staged[stage.UPDATES] = [records_file.parent]  # a staging part holding the synthetic records as the night's
    records = pq.ParquetFile(records_file).metadata
    start, cpu0 = time.time(), time.process_time()
    summary = shard_jobs.build_changes(Batch(name=night, night=night, chunks=[]), staged, shard_jobs.Layout(out),
                                       settings, shards)
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024
    print(json.dumps({"records": records.num_rows, "peak_mb": round(hwm, 1),
                      "cpu_s": round(time.process_time() - cpu0, 1), "wall_s": round(time.time() - start, 1),
                      "files_rewritten": len(summary["files_rewritten"]), "moved": summary["moved"],
                      "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))


def statuses_child(out: Path, window: int) -> None:
    """The commit's part that reads the records (:func:`ppdb_lc.shards._record_statuses`), on a changes job's output."""
    from ppdb_lc import shards as shard_jobs
    from ppdb_lc import updates

    layout = shard_jobs.Layout(out)
    summary = json.loads((layout.changes / "summary.json").read_text())
    start, cpu0 = time.time(), time.process_time()
    found = updates.FoundTargets.of(pq.read_table(layout.changes / shard_jobs.FOUND_FILE))
    tally = shard_jobs._record_statuses(layout.changes / shard_jobs.RECORDS_FILE, found, summary["pending_before"],
                                        out, window)
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024
    print(json.dumps({"peak_mb": round(hwm, 1), "cpu_s": round(time.process_time() - cpu0, 1),
                      "wall_s": round(time.time() - start, 1),
                      "applied": sum(tally[updates.APPLIED].values())}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--night", required=True)
    parser.add_argument("--records", type=int, nargs="+", default=[0, 100_000, 400_000, 1_600_000])
    parser.add_argument("--shards", type=int, default=35, help="ingest shards of the night (as the plan's)")
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/changes_records"))
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--statuses-child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.statuses_child is not None:
        statuses_child(args.statuses_child, 50_000)
        return
    if args.child is not None:
        child(args.root, args.version, args.night, args.child, args.shards, args.scratch / args.child.parent.name)
        return
    import yaml

    from ppdb_lc.settings import Settings

    names = Settings.from_config(yaml.safe_load((args.root / "config.yaml").read_text())).names
    catalog = args.root / "coll" / "versions" / args.version / names.catalog
    args.scratch.mkdir(parents=True, exist_ok=True)
    print(f"changes job of night {args.night} on {args.root} ({args.version}), {args.shards} shards")
    print(f"{'records':>9} {'peak MB':>8} {'CPU s':>7} {'wall s':>7} {'files':>6} {'moved':>8}   "
          f"commit's statuses: {'peak MB':>8} {'CPU s':>7} {'applied':>8}")
    for count in args.records:
        records_file = args.scratch / f"records-{count}" / f"{args.night}.parquet"  # the job only reads them
        records_file.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(synthetic_records(catalog, count, chunk=2**40), records_file)  # chunk after every row
        out = subprocess.run([sys.executable, __file__, "--root", str(args.root), "--version", args.version,
                              "--night", args.night, "--shards", str(args.shards), "--scratch", str(args.scratch),
                              "--child", str(records_file)], capture_output=True, text=True, cwd=REPO)
        if out.returncode:
            print(out.stderr[-3000:])
            raise SystemExit(out.returncode)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        status = subprocess.run([sys.executable, __file__, "--root", str(args.root), "--version", args.version,
                                 "--night", args.night, "--statuses-child", str(args.scratch / records_file.parent.name)],
                                capture_output=True, text=True, cwd=REPO)
        if status.returncode:
            print(status.stderr[-3000:])
            raise SystemExit(status.returncode)
        c = json.loads(status.stdout.strip().splitlines()[-1])
        print(f"{r['records']:>9} {r['peak_mb']:>8} {r['cpu_s']:>7} {r['wall_s']:>7} {r['files_rewritten']:>6} "
              f"{r['moved']:>8}   {'':>18} {c['peak_mb']:>8} {c['cpu_s']:>7} {c['applied']:>8}", flush=True)


if __name__ == "__main__":
    main()
