"""Memory a job asks SLURM for (``mem_mb``), from the rows it reads: a linear model of measured peak RSS.

Each model is ``base + per_million * rows / 1e6`` (MB), fitted on the kernel's peak-RSS figure (VmHWM, which every
job logs at its end: ``job done: peak RSS …``) of jobs on generated exports of several sizes; see
``benchmarks/results/`` and ``docs/scaling.md``. A SLURM job also runs Snakemake's own processes (batch step and
job step, ~250 MB together), and the request keeps headroom on top, rounded up to 100 MB. The rules compute their
request per job from the manifest row counts at plan time, so ``snakemake -n`` and the SLURM submission agree
and no request is a constant that a larger night would outgrow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SNAKEMAKE_MB = 250  #: Snakemake's batch and job-step processes inside a SLURM job
HEADROOM = 1.25  #: request = (model + Snakemake) x headroom


@dataclass(frozen=True)
class MemoryModel:
    """Peak RSS of one job in MB: ``base_mb + per_million_mb`` per million input rows."""

    base_mb: float
    per_million_mb: float

    def peak_mb(self, rows: int) -> float:
        return self.base_mb + self.per_million_mb * rows / 1e6

    def request_mb(self, rows: int) -> int:
        """The ``mem_mb`` to ask for a job that reads ``rows`` input rows."""
        return int(math.ceil((self.peak_mb(rows) + SNAKEMAKE_MB) * HEADROOM / 100.0) * 100)


#: Staging one group of chunks of one dataset (read, verify, conform, de-duplicate, postprocess). Fit over 128 jobs
#: of nights of 1.1, 4.3 and 17 M rows (benchmarks/results/2026-12-04_stage-scaling_0.25-1-4M-sources.txt): DiaSource
#: 150 MB + 710 MB, DiaObject 172 + 620, DiaForcedSource 161 + 333 per million rows.
STAGE = MemoryModel(base_mb=180, per_million_mb=720)
#: Staging a night's update records (one job), per million records. Parsed whole it took 146 MB with none and 550 MB
#: with 325,596 (~1.25 KB a record); parsed and written a slice at a time (fourth session): 242 / 284 / 358 MB with
#: 0.1 / 0.4 / 1.6 M records in one chunk (benchmarks/stage_updates.py), what grows is one file's bytes at a time.
STAGE_UPDATES = MemoryModel(base_mb=250, per_million_mb=100)
#: Ingesting one night (build + commit in one job, the whole night): 1029 MB at 1.07 M rows, 3084 MB at 4.28 M
#: (same benchmark): ~350 MB + 640 MB per million input rows of the three tables.
INGEST = MemoryModel(base_mb=350, per_million_mb=700)
#: Bootstrap (all nights folded and partitioned at once): 346 MB + 1.08 GB per million input rows (2026-11
#: measurement, getrusage: an upper bound, see jobs.peak_rss_mb).
BOOTSTRAP = MemoryModel(base_mb=350, per_million_mb=1080)
#: Sharded ingest, fitted on benchmarks/results/2026-12-04_ingest-scaling_0.25-1-4M-sources.txt (nights of 1.07,
#: 4.28 and 17.1 M rows, default sharding). Shards and writers, per million rows of their share of the night: shards
#: 518 / 661 / 906 MB at 0.36 / 0.48 / 0.49 M rows, writers 477 / 628 / 709 MB; since they stream (third session,
#: 2026-12-04_ingest-scaling-streaming_0.25-1-4M-sources.txt): shards 533 / 692 / 744, writers 436 / 497 / 687 MB.
SHARD = MemoryModel(base_mb=450, per_million_mb=700)
#: The changes job, per million update records of the night. It streams committed files a window of points at a
#: time, revises the sky a region at a time and reads the records from a file in batches (fourth session): 415 / 699
#: / 730 / 873 MB with 0 / 0.11 / 0.44 / 1.76 M records on the 17.1 M-row night (benchmarks/changes_records.py;
#: before: 790 / 914 / 2170 MB at 0.11 / 0.44 / 1.76 M). What grows is a key per record (routing) and the targets
#: found. Records still pending from earlier nights add to the count (not known at plan time).
CHANGES = MemoryModel(base_mb=700, per_million_mb=120)
#: The commit of a sharded night, per million rows of the night: 319 / 356 / 517 MB (summaries, skymap histogram).
COMMIT = MemoryModel(base_mb=320, per_million_mb=12)
#: One shard of the incremental weekly (``compact_pixels``): a compaction of its files, like bootstrap's fold, so the
#: bootstrap's per-row figure until measured on large shards (benchmarks/weekly_incremental.py).
COMPACT_PIXELS = MemoryModel(base_mb=350, per_million_mb=1080)
#: The incremental weekly's plan: key columns of the touched pixels only (at most the whole catalog, ~24 bytes per
#: row plus Arrow's buffers) and the skymap histogram; sized from the published catalog's rows (an upper bound).
PLAN_WEEKLY = MemoryModel(base_mb=350, per_million_mb=150)
