"""Entry points of the workflow's jobs: each Snakemake script calls exactly one of these.

They take plain values (paths, names, the config dict), set up the job's log file and call the library.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ppdb_lc import faults
from ppdb_lc.chunks import Chunk, check_chunk
from ppdb_lc.ledger import BOOTSTRAP, Batch
from ppdb_lc.settings import Settings


def use_jemalloc() -> None:
    """Arrow's jemalloc pool instead of the default mimalloc: on the nested tables of compaction mimalloc spent
    ~2 s more in page faults (weekly fold 3.0-3.3 s vs 4.0-4.8 s on the 20k-object benchmark) and peaked higher."""
    import pyarrow as pa

    if "jemalloc" in pa.supported_memory_backends():
        pa.set_memory_pool(pa.jemalloc_memory_pool())


class ExpectedHatsWarnings(logging.Filter):
    """Drop hats' ``_metadata file does not exist.`` warning, which every commit's strict validation logs once per
    catalog without a ``_metadata`` file: the margin (none when it is empty) and, after a nightly commit, the main
    catalog (several files per pixel). Every other record passes, hats' other warnings included."""

    MESSAGE = "_metadata file does not exist."

    def filter(self, record: logging.LogRecord) -> bool:
        from_hats_validation = record.pathname.replace(os.sep, "/").endswith("hats/io/validation.py")
        return not (from_hats_validation and record.levelno == logging.WARNING and record.getMessage() == self.MESSAGE)


@contextlib.contextmanager
def job_log(path: str | Path | None) -> Iterator[None]:
    """Set up a job process: Arrow memory pool, logging and stderr (progress bars) into its Snakemake log file.

    A job that succeeded ends its process right here, without interpreter finalization: Arrow's C++ thread pools
    can abort the process while Python shuts down (``terminate called without an active exception``, SIGABRT;
    apache/arrow#34314), which Snakemake reports as a failed job although every output was written. Seen here in 1
    of ~100 short staging jobs. The job's outputs are closed files by then; only the streams need flushing.
    """
    use_jemalloc()
    if path is None:
        yield
        _end_process()
    with open(path, "w", buffering=1) as handle:
        old = sys.stderr
        sys.stderr = handle
        stream = logging.StreamHandler(handle)
        stream.addFilter(ExpectedHatsWarnings())
        logging.basicConfig(level=logging.INFO, handlers=[stream], force=True,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        try:
            yield
        except Exception as err:
            try:
                logging.getLogger("ppdb_lc").exception("job failed")
            finally:  # also where Snakemake shows it: the log may be unwritable (full disk)
                print(f"job failed: {type(err).__name__}: {err} (log: {path})", file=old, flush=True)
            raise
        finally:
            sys.stderr = old
        logging.getLogger("ppdb_lc").info("job done: peak RSS %.1f MB (kernel VmHWM), CPU %.2f s", peak_rss_mb(),
                                          cpu_seconds())
    _end_process()


def peak_rss_mb() -> float:
    """The job's peak resident set size so far, in MB: the kernel's ``VmHWM`` of this process image.

    Not ``getrusage``'s ``ru_maxrss``: Linux carries it over ``exec`` from the process that was forked, so in a job
    that Snakemake started it reports at least Snakemake's own size at the fork (measured: 424 MB for a staging job
    whose VmHWM was 190 MB, with a 17 M-row export planned). ``getrusage`` is the fallback where there is no
    ``/proc`` (not Linux).
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """User + system CPU time of the process so far (its threads included), from getrusage."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _end_process() -> None:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def chunks_from_manifests(manifests: Sequence[str | Path], config: dict[str, Any]) -> list[Chunk]:
    """Re-read (and re-check) the chunks a job was planned with: their manifests are the job's inputs (per-row
    checks come from the run's cache, see :func:`ppdb_lc.chunks.check_rows_cached`)."""
    from ppdb_lc.planning import ROW_CHECKS

    cache = Path(Settings.from_config(config).work_dir) / ROW_CHECKS
    return [check_chunk(Path(m).parent, Path(m), row_cache=cache) for m in manifests]


def _batch(name: str, night: str, manifests: Sequence[str], config: dict[str, Any], skipped: Sequence[str] = ()
           ) -> Batch:
    return Batch(name=name, night=night, chunks=chunks_from_manifests(manifests, config), skipped=tuple(skipped))


def _write_json(path: str | Path, data: dict) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def stage_dataset(manifests: Sequence[str], dataset: str, out_dir: str, config: dict[str, Any], log: str,
                  shards: int = 1) -> None:
    from ppdb_lc import stage

    with job_log(log):
        faults.point("stage_dataset")
        chunks = chunks_from_manifests(manifests, config)
        stage.stage_dataset(chunks, dataset, Path(out_dir), Settings.from_config(config).keep_float64, shards)


def ingest_batch(name: str, night: str, manifests: Sequence[str], staged: dict[str, list[str]], build_dir: str,
                 marker: str, config: dict[str, Any], log: str, skipped: Sequence[str] = (), shards: int = 1) -> None:
    """The night's commit; with one shard, its whole build too (see :mod:`ppdb_lc.shards`)."""
    from ppdb_lc import nightly

    with job_log(log):
        faults.point("ingest_batch")
        batch = _batch(name, night, manifests, config, skipped)
        summary = nightly.ingest_batch(batch, {k: [Path(p) for p in v] for k, v in staged.items()}, Path(build_dir),
                                       Settings.from_config(config), shard_count=shards)
        _write_json(marker, summary)


def ingest_step(step: str, name: str, night: str, staged: dict[str, list[str]], build_dir: str, index: int,
                shards: int, config: dict[str, Any], log: str) -> None:
    """One job of a sharded night's build (rule ``ingest_<step>``): ``changes``, ``shard`` ``index``, ``pixels`` or
    ``write`` (writer ``index``) of ``shards``."""
    from ppdb_lc import shards as sharded

    with job_log(log):
        faults.point(f"ingest_{step}")
        batch = Batch(name=name, night=night, chunks=[])
        layout = sharded.Layout(Path(build_dir))
        settings = Settings.from_config(config)
        paths = {k: [Path(p) for p in v] for k, v in staged.items()}
        if step == "changes":
            sharded.build_changes(batch, paths, layout, settings, shards)
        elif step == "shard":
            sharded.build_shard(batch, paths, layout, settings, index, shards)
        elif step == "pixels":
            sharded.plan_pixels(batch, layout, settings)
        elif step == "write":
            sharded.build_writer(batch, layout, settings, index, shards)
        else:
            raise ValueError(f"unknown ingest step {step!r}")


def bootstrap(manifests: Sequence[str], staged: dict[str, list[str]], scratch: str, marker: str, config: dict[str, Any],
              threads: int, log: str) -> None:
    from ppdb_lc import rebuild

    with job_log(log):
        faults.point("bootstrap_collection")
        batch = _batch(BOOTSTRAP, BOOTSTRAP, manifests, config)
        summary = rebuild.bootstrap(batch, {k: [Path(p) for p in v] for k, v in staged.items()}, Path(scratch),
                                    Settings.from_config(config), threads=threads)
        _write_json(marker, summary)


def weekly(scratch: str, marker: str, config: dict[str, Any], threads: int, log: str, plan: str | None = None,
           shard_dirs: Sequence[str] = ()) -> None:
    """The full weekly, or (``plan`` given) the commit of the incremental one from its shards' outputs."""
    from ppdb_lc import rebuild
    from ppdb_lc import weekly as incremental

    with job_log(log):
        faults.point("compact_collection")
        settings = Settings.from_config(config)
        if plan is None:
            summary = rebuild.weekly(Path(scratch), settings, threads=threads)
        else:
            summary = incremental.commit_weekly(Path(plan), [Path(d) for d in shard_dirs], Path(scratch), settings,
                                                threads=threads)
        _write_json(marker, summary)


def plan_weekly(plan_dir: str, config: dict[str, Any], log: str) -> None:
    from ppdb_lc import weekly as incremental

    with job_log(log):
        faults.point("plan_weekly")
        incremental.plan_weekly(Settings.from_config(config), Path(plan_dir))


def compact_pixels(plan_dir: str, shard: int, out_dir: str, marker: str, config: dict[str, Any], threads: int,
                   log: str) -> None:
    from ppdb_lc import weekly as incremental

    with job_log(log):
        faults.point("compact_pixels")
        summary = incremental.compact_shard(Path(plan_dir), shard, Path(out_dir), Settings.from_config(config),
                                            threads=threads)
        summary["peak_rss_mb"] = round(peak_rss_mb(), 1)
        _write_json(marker, summary)


def generate_demo(out_dir: str, demo: dict[str, Any], log: str) -> None:
    from datetime import date, timedelta

    from ppdb_lc.generator import DemoSpec, generate_ppdb

    with job_log(log):
        start = date.fromisoformat(demo["start"])
        nights = tuple((start + timedelta(days=i)).isoformat() for i in range(int(demo["nights"])))
        spec = DemoSpec(n_objects=int(demo["objects"]), nights=nights, chunks_per_night=int(demo["chunks_per_night"]),
                        seed=int(demo["seed"]))
        written = generate_ppdb(Path(out_dir), spec)
        logging.getLogger(__name__).info("wrote %d chunks into %s", len(written), out_dir)
