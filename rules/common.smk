# Config validation and the run's plan (what is pending), computed once when the workflow is parsed; the
# collection lock and the cleaning of leftovers at the start of a run (ppdb_lc.runs).
import functools
import logging
import os
import sys
import time

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from ppdb_lc.apdb import DATASETS
from ppdb_lc import runs, sizing
from ppdb_lc.planning import make_plan
from ppdb_lc.settings import Settings
from ppdb_lc.stage import UPDATES

STAGED = [*DATASETS, UPDATES]  # staged per batch: the three tables and the update records


if config.get("until") is not None and not isinstance(config["until"], str):
    config["until"] = str(config["until"])  # --config until=2026-11-24 arrives as a date
validate(config, "../config/schema.yaml")
SETTINGS = Settings.from_config(config)
WORK = str(SETTINGS.work_dir)
PLAN = make_plan(SETTINGS)
BATCHES = {batch.name: batch for batch in PLAN.batches}
BOOTSTRAP = PLAN.bootstrap_batch
# Markers of committed work live under work/runs/<RUN>/: the version this run was planned on (a bootstrap: a
# fresh name), so a marker never stands for work on another version. Jobs get RUN back as the `run` wildcard.
RUN = PLAN.version or f"new-{time.time_ns()}"
print(PLAN.describe())  # what this run would do, also shown by `snakemake -n`


wildcard_constraints:
    batch=r"bootstrap|\d{4}-\d{2}-\d{2}(_\d+)?",
    run=r"v\d{6}-[^/]+|new-\d+",
    part=r"\d+",
    shard=r"\d{4}",
    writer=r"\d{4}",
    dataset="|".join(STAGED),


def work(*parts):
    return os.path.join(WORK, *parts)


def batch_of(name):
    return BOOTSTRAP if name == "bootstrap" else BATCHES[name]


@functools.cache  # asked once per job by several input, param and resource functions
def stage_parts(batch, dataset):
    """The batch's chunks in staging jobs (groups of consecutive chunks of one night, sharding.rows_per_stage_job)."""
    found = batch_of(batch)
    return found.stage_parts(dataset, SETTINGS.rows_per_stage_job) if found is not None else []


def manifests(wildcards):
    """The chunk manifests of a batch: the inputs of its ingest or bootstrap job."""
    return [str(chunk.manifest) for chunk in batch_of(wildcards.batch).chunks]


def part_chunks(wildcards):
    return stage_parts(wildcards.batch, wildcards.dataset)[int(wildcards.part)]


def part_manifests(wildcards):
    """The chunk manifests of one staging job: its inputs."""
    return [str(chunk.manifest) for chunk in part_chunks(wildcards)]


# Memory requests (SLURM mem_mb) per job, from the rows it reads (ppdb_lc.sizing: measured peak RSS per row).
def stage_mem_mb(wildcards):
    if wildcards.dataset == UPDATES:  # one job per night: its records, parsed
        return sizing.STAGE_UPDATES.request_mb(sum(chunk.update_records() for chunk in part_chunks(wildcards)))
    return sizing.STAGE.request_mb(sum(chunk.rows(wildcards.dataset) for chunk in part_chunks(wildcards)))


def night_rows(batch):
    return sum(batch_of(batch).rows(ds) for ds in DATASETS)


def ingest_mem_mb(wildcards):
    """The commit job; it also builds a night of one shard."""
    if ingest_shards(wildcards.batch) > 1:
        return sizing.COMMIT.request_mb(night_rows(wildcards.batch))
    return sizing.INGEST.request_mb(night_rows(wildcards.batch))


def changes_mem_mb(wildcards):
    """The changes job: the night's update records (their count, sizing.CHANGES)."""
    return sizing.CHANGES.request_mb(sum(chunk.update_records() for chunk in batch_of(wildcards.batch).chunks))


def pixels_mem_mb(wildcards):
    """The pixels job: the shards' histograms and summaries, like the commit (sizing.COMMIT)."""
    return sizing.COMMIT.request_mb(night_rows(wildcards.batch))


def shard_mem_mb(wildcards):
    """A shard or writer job: its share of the night's rows."""
    return sizing.SHARD.request_mb(night_rows(wildcards.batch) / ingest_shards(wildcards.batch))


def bootstrap_mem_mb(wildcards):
    return sizing.BOOTSTRAP.request_mb(sum(BOOTSTRAP.rows(ds) for ds in DATASETS) if BOOTSTRAP else 0)


def staged(batch):
    """Staged parts of a batch, per dataset (the update records: one part)."""
    return {ds: [work("batches", batch, "staged", ds, f"part{i:03d}") for i in range(len(stage_parts(batch, ds)))]
            for ds in STAGED}


@functools.cache
def ingest_shards(batch):
    """Shard (and writer) jobs of a night's build, from its manifest row counts (1: built inside the commit job)."""
    return batch_of(batch).ingest_shards(SETTINGS.rows_per_ingest_job)


def build_dir(batch, run):
    """A night's build, per run (the version the run was planned on): a rerun of the same run reuses its finished
    shard and writer jobs; a run planned on another version never sees them (ppdb_lc.runs cleans them)."""
    return work("batches", batch, "build", run)


def shard_summaries(batch, run):
    return [work("batches", batch, "build", run, "shards", f"{k:04d}", "summary.json")
            for k in range(ingest_shards(batch))]


def ingest_input(wildcards):
    """The commit job's inputs: the staged parts and the previous night's commit; for a sharded night, the
    outputs of its writer jobs (which depend on those)."""
    if ingest_shards(wildcards.batch) == 1:
        return {**staged(wildcards.batch), "previous": previous_commit(wildcards)}
    build = work("batches", wildcards.batch, "build", wildcards.run)
    return {"writers": [os.path.join(build, "writers", f"{j:04d}", "summary.json")
                        for j in range(ingest_shards(wildcards.batch))],
            "changes": os.path.join(build, "changes", "summary.json"),
            "pixels": os.path.join(build, "pixels", "plan.json"),
            "shards": shard_summaries(wildcards.batch, wildcards.run)}


def committed(batch, run=RUN):
    return work("runs", run, f"{batch}.committed.json")


def previous_commit(wildcards):
    """Nights are committed in order: a night is built on the collection its predecessor published."""
    names = list(BATCHES)
    i = names.index(wildcards.batch)
    return [committed(names[i - 1], wildcards.run)] if i > 0 else []


def check_export(wildcards=None):
    """A missing or empty export directory (unmounted, say) is an error for every target that reads it."""
    if PLAN.export_error:
        raise WorkflowError(PLAN.export_error)
    return []


def check_plan():
    """Stop before any job runs when the input is bad or the collection is in the wrong state."""
    check_export()
    if PLAN.problems and SETTINGS.on_invalid_chunk == "error":
        raise WorkflowError(
            "bad input in the PPDB export (set on_invalid_chunk=skip to leave these chunks out):\n  "
            + "\n  ".join(PLAN.problems)
        )


# Inputs of the target rules: refusals are raised here, on the target itself.
def daily_input(wildcards):
    if PLAN.collection_exists or not BATCHES:
        check_plan()
    if not PLAN.collection_exists and BATCHES:
        raise WorkflowError(f"no collection at {SETTINGS.collection_dir}: run `snakemake bootstrap` first")
    return [committed(name) for name in BATCHES]


def bootstrap_target(wildcards):
    """Checked on the target rule itself, so a refusal is never mistaken for 'nothing to be done'."""
    if PLAN.collection_exists:
        raise WorkflowError(
            f"{SETTINGS.collection_dir} already exists: bootstrap only builds a new collection "
            "(use `snakemake daily` to add nights, or remove the collection first)"
        )
    check_plan()
    if BOOTSTRAP is None:
        raise WorkflowError(f"no complete chunk found in {SETTINGS.ppdb_dir} (until={SETTINGS.until or 'all'})")
    return committed("bootstrap")


def weekly_input(wildcards):
    if not PLAN.collection_exists:
        raise WorkflowError(f"no collection at {SETTINGS.collection_dir}: run `snakemake bootstrap` first")
    return [work("weekly", f"compacted-{PLAN.version}.json")] if PLAN.weekly_needed else []


# -- run start and end (main process only; never for -n) ---------------------------------------------------------
RUN_LOCK = None


def start_run():
    """Take the collection lock if this run writes, check the plan still holds, clean leftovers of killed runs."""
    global RUN_LOCK
    if not logging.getLogger("ppdb_lc").handlers:  # the library's warnings (stale lock, leftovers) on stderr
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("ppdb_lc: %(message)s"))
        logging.getLogger("ppdb_lc").addHandler(handler)
        logging.getLogger("ppdb_lc").setLevel(logging.INFO)
    rules_ = {job.rule.name for job in workflow.dag.needrun_jobs()}
    if not rules_ & runs.WRITING_RULES:
        return
    target = " ".join(sorted({job.rule.name for job in workflow.dag.targetjobs})) or "snakemake"
    pending = [*BATCHES, *(["bootstrap"] if BOOTSTRAP is not None and not PLAN.collection_exists else [])]
    try:
        RUN_LOCK = runs.start(SETTINGS.collection_dir, SETTINGS.work_dir, planned_version=PLAN.version,
                              pending=pending, target=target)
    except (runs.lock.CollectionLockedError, runs.CollectionStateError) as err:
        raise WorkflowError(str(err)) from None


def finish_run():
    runs.finish(SETTINGS.collection_dir, RUN_LOCK)


# -- the incremental weekly (rules/weekly.smk): plan, shards, commit ------------------------------------------------
from ppdb_lc import weekly as weekly_plan


def weekly_inputs(wildcards):
    """The plan and its shards' markers (the shard count is known once the checkpoint ran)."""
    if SETTINGS.weekly_mode == "full":
        return {}
    plan = checkpoints.plan_weekly.get(version=wildcards.version).output.plan
    shards = weekly_plan.shard_count(plan)
    return {"plan": plan,
            "shards": [work("weekly", f"shards-{wildcards.version}", f"{k:03d}.json") for k in range(shards)]}


def compact_pixels_mem_mb(wildcards, input):
    return sizing.COMPACT_PIXELS.request_mb(weekly_plan.shard_rows(input.plan, int(wildcards.shard)))


def plan_weekly_mem_mb(wildcards):
    return sizing.PLAN_WEEKLY.request_mb(weekly_plan.published_rows(SETTINGS))
