"""Benchmark of update records: a night whose export carries a deduplication run touching ~5 % of the objects,
spread over the whole field, next to the same night without it.

    python benchmarks/update_records.py --objects 20000 --chunks-per-night 6 --out benchmarks/out/updates

Two exports of 3 nights are generated with :mod:`ppdb_lc.generator`, identical in size: ``plain``
(``changes=False``) and ``dedup`` (``changes=True`` with ``twin_fraction=0.05``: 10 % of the objects are in twin
pairs ~0.8 arcsec apart; the pairs detected on the first night, ~5 % of all objects, are merged by the daytime
dedup chunk that opens the second night). Each gets ``bootstrap`` of night 1 and a ``daily`` of night 2, and the
second night is reported: the daily's wall time (one snakemake invocation, from outside), the ingest job's peak
RSS (the kernel's VmHWM, logged by the job), its build/commit seconds, records applied, points moved and pixel
files rewritten (from the night summary).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_benchmark import REPO, snakemake, write_config  # noqa: E402

from ppdb_lc.generator import DemoSpec, generate_ppdb  # noqa: E402
from ppdb_lc.versions import VersionedCollection  # noqa: E402


def night(out: Path, spec: DemoSpec, cores: int, threshold: int) -> dict:
    ppdb, collection, work = out / "ppdb", out / "collection", out / "work"
    generate_ppdb(ppdb, spec)
    config = write_config(out / "config.yaml", ppdb=ppdb, collection=collection, work=work, threshold=threshold)
    snakemake(out, config, "bootstrap", cores, "--config", f"until={spec.nights[0]}", log=out / "logs" / "boot.log")
    seconds = snakemake(out, config, "daily", cores, "--config", f"until={spec.nights[1]}",
                        log=out / "logs" / "daily.log")
    published = VersionedCollection(collection).current()
    summary = json.loads((published / "ingest" / "batches" / f"{spec.nights[1]}.json").read_text())
    job_log = next((work / "logs" / "ingest_batch").glob(f"*/{spec.nights[1]}.log")).read_text()
    peak = float(re.findall(r"peak RSS ([0-9.]+) MB", job_log)[-1])
    updates = summary["updates"]
    return {
        "daily_wall_s": round(seconds, 2),
        "ingest_peak_rss_mb": peak,
        "build_s": summary["build_seconds"],
        "commit_s": summary["commit_seconds"],
        "rows_in": sum(summary["rows_in"].values()),
        "records_applied": sum(updates["records_applied"].values()),
        "records_pending": sum(updates["records_pending"].values()),
        "points_moved": updates["sources_moved_from_committed_rows"],
        "files_scanned": updates["files_scanned_for_targets"],
        "files_rewritten": updates["files_rewritten"],
        "margin_files_rewritten": updates["margin_files_rewritten"],
        "pixel_files_in_catalog": sum(1 for _ in (collection / "dia_object_lc" / "dataset").rglob("*.parquet")),
        "objects_closed": updates["records_applied"].get("close_diaobject_validity", 0),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=20_000)
    parser.add_argument("--chunks-per-night", type=int, default=6)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "updates")
    args = parser.parse_args(argv)
    start = dt.date(2026, 11, 20)
    nights = tuple(str(start + dt.timedelta(days=i)) for i in range(3))
    threshold = max(200, args.objects // 25)
    rows = {}
    for name, changes in (("plain", False), ("dedup", True)):
        spec = DemoSpec(n_objects=args.objects, nights=nights, chunks_per_night=args.chunks_per_night,
                        seed=args.seed, changes=changes, twin_fraction=0.05)
        out = args.out / name
        if out.exists():
            sys.exit(f"{out} exists; remove it or choose another --out")
        out.mkdir(parents=True)
        rows[name] = night(out, spec, args.cores, threshold)
    touched = 2 * rows["dedup"]["objects_closed"] / args.objects
    print(f"{args.objects} objects, night {nights[1]}; dedup touches {touched:.1%} of the objects "
          f"({rows['dedup']['objects_closed']} closed + as many kept)")
    keys = list(rows["plain"])
    print(f"{'':26}" + "".join(f"{name:>12}" for name in rows))
    for key in keys:
        print(f"{key:26}" + "".join(f"{rows[name][key]!s:>12}" for name in rows))
    (args.out / "results.json").write_text(json.dumps({"objects": args.objects, "touched_fraction": touched,
                                                       "nights": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
