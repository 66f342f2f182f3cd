"""Peak memory (kernel VmHWM) of the update-records staging job against the number of records in a chunk.

    python benchmarks/stage_updates.py --records 100000 400000 1600000

For each count N, a one-chunk export (flat layout, a manifest with the file's row count and checksum) whose
``updates.parquet`` holds N records in the export's transport form (``apdb_replica_chunk``, ``update_time_ns``,
``update_order``, ``json_payload``): a deduplication run, ``reassign_diasource_to_diaobject`` with every 20th an
``update_n_dia_sources`` and a ``close_diaobject_validity``. A fresh process discovers the chunk and stages its
records as the ``stage_dataset`` rule does (:func:`ppdb_lc.stage.stage_dataset`, dataset ``updates``: read, verify
the checksum, parse and check every payload, order, write). Prints, per N: peak RSS, CPU and wall seconds, and the
staged file's size.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
CHUNK = 1795218000  # 2026-11-21


def write_export(root: Path, count: int) -> None:
    rng = np.random.default_rng(count)
    payloads = []
    for i in range(count):
        ra, dec = float(rng.uniform(0, 360)), float(rng.uniform(-60, 10))
        if i % 20 == 1:
            body = {"update_type": "update_n_dia_sources", "diaObjectId": 10**15 + i, "nDiaSources": 7}
        elif i % 20 == 2:
            body = {"update_type": "close_diaobject_validity", "diaObjectId": 10**15 + i,
                    "validityEndMjdTai": 61000.5, "nDiaSources": None}
        else:
            body = {"update_type": "reassign_diasource_to_diaobject", "diaSourceId": 10**16 + i,
                    "diaObjectId": 10**15 + i // 3, "midpointMjdTai": 61000.2}
        payloads.append(json.dumps({**body, "ra": ra, "dec": dec}))
    directory = root / str(CHUNK)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "updates.parquet"
    pq.write_table(pa.table({"apdb_replica_chunk": pa.array(np.full(count, CHUNK), pa.int64()),
                             "update_time_ns": pa.array(np.arange(count) // 100, pa.int64()),
                             "update_order": pa.array(np.arange(count) % 100, pa.int64()),
                             "json_payload": pa.array(payloads, pa.string())}), path)
    files = {path.name: {"row_count": count, "checksum": hashlib.sha256(path.read_bytes()).hexdigest(),
                         "size_bytes": path.stat().st_size}}
    (directory / "manifest.json").write_text(json.dumps({
        "replica_chunk_id": str(CHUNK), "unique_id": f"bench-{count}", "schema_version": "10.0.0",
        "exported_at": "2026-11-22T12:00:00Z", "last_update_time": str(CHUNK + 590), "files": files,
        "update_count": count}))


def child(root: Path, out: Path) -> None:
    from ppdb_lc import stage
    from ppdb_lc.chunks import discover

    chunks = discover(root).complete
    start, cpu0 = time.time(), time.process_time()
    summary = stage.stage_dataset(chunks, stage.UPDATES, out)
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024
    staged = sum(p.stat().st_size for p in out.glob("*.parquet"))
    print(json.dumps({"records": sum(s["records"] for s in summary.values()), "peak_mb": round(hwm, 1),
                      "cpu_s": round(time.process_time() - cpu0, 1), "wall_s": round(time.time() - start, 1),
                      "staged_mb": round(staged / 2**20, 1)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, nargs="+", default=[100_000, 400_000, 1_600_000])
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/stage_updates"))
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child / "ppdb", args.child / "staged")
        return
    print(f"{'records':>9} {'peak MB':>8} {'CPU s':>7} {'wall s':>7} {'staged MB':>10}")
    for count in args.records:
        work = args.scratch / str(count)
        if not (work / "ppdb").exists():
            write_export(work / "ppdb", count)
        out = subprocess.run([sys.executable, __file__, "--child", str(work)], capture_output=True, text=True,
                             cwd=REPO)
        if out.returncode:
            print(out.stderr[-3000:])
            raise SystemExit(out.returncode)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['records']:>9} {r['peak_mb']:>8} {r['cpu_s']:>7} {r['wall_s']:>7} {r['staged_mb']:>10}",
              flush=True)


if __name__ == "__main__":
    main()
