"""Start and end of a workflow run that can publish: lock, plan check, leftovers of killed runs.

Called from the Snakefile's ``onstart`` / ``onsuccess`` / ``onerror`` handlers, which Snakemake runs in its main
process only, after the DAG is built and before the first job (never for ``-n``).

Work-directory layout (``work_dir``)::

    batches/<batch>/staged/<dataset>/     staging output of a pending batch (temporary, reused by a rerun)
    batches/<batch>/build/<version>/      a night's build by the run planned on <version>: changes, shards,
                                          writers (removed when committed; a rerun of that run reuses it)
    runs/<version>/<batch>.committed.json marker of a batch committed by the run planned on <version>
    row_checks/                           cached verdicts of the per-row checks of chunk files (a week)
    weekly/compacted-<version>.json       marker of the weekly built from <version>
    weekly/plan-<version>/, shards-<version>/   the incremental weekly's plan and shard outputs (removed once another
                                          version is planned on)
    logs/, benchmarks/                    per rule and job; kept

Markers are keyed by the published version the run was planned on, so they can never claim work for another
version (after a rollback, say); those of other versions are removed here, as are staging, build and scratch
directories that no pending batch needs.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from ppdb_lc import lock
from ppdb_lc.versions import CollectionStateError, VersionedCollection

log = logging.getLogger(__name__)

#: rules whose jobs write the collection or the work directory's batch state: a run with one of them takes the lock
WRITING_RULES = frozenset({"stage_dataset", "ingest_changes", "ingest_shard", "ingest_pixels", "ingest_write",
                           "ingest_batch",
                           "bootstrap_collection", "compact_collection", "plan_weekly", "compact_pixels"})


ROW_CHECKS_TTL_S = 7 * 86400


class PlanChangedError(CollectionStateError):
    """The published version changed between planning the run and its start."""


def start(collection_dir: Path, work_dir: Path, *, planned_version: str | None, pending: Iterable[str],
          target: str) -> lock.Holder:
    """Take the collection's lock, check the plan is still current and clean leftovers of killed runs."""
    holder = lock.acquire(collection_dir, target)
    try:
        store = VersionedCollection(collection_dir)
        current = store.current()
        now = current.name if current else None
        if now != planned_version:
            raise PlanChangedError(
                f"{collection_dir} changed while this run was being planned (planned on {planned_version or 'no '
                'collection'}, published now: {now or 'nothing'}); nothing was done, run it again"
            )
        store.remove_leftovers()
        clean_work_dir(Path(work_dir), planned_version=planned_version, pending=set(pending))
    except BaseException:
        lock.release(collection_dir, holder)
        raise
    return holder


def finish(collection_dir: Path, holder: lock.Holder | None) -> None:
    if holder is not None:
        lock.release(collection_dir, holder)


def clean_work_dir(work_dir: Path, *, planned_version: str | None, pending: set[str]) -> None:
    """Remove what killed or finished runs left that this run does not reuse."""
    removed = []
    runs = work_dir / "runs"
    for marker_dir in runs.iterdir() if runs.is_dir() else []:
        if marker_dir.name != (planned_version or "new"):
            removed.append(marker_dir)
    batches = work_dir / "batches"
    for batch_dir in batches.iterdir() if batches.is_dir() else []:
        if batch_dir.name not in pending:
            removed.append(batch_dir)  # committed (or no longer planned): its staging is not needed any more
        else:
            builds = batch_dir / "build"  # build/<version the run was planned on>: reused by a rerun of that run
            removed += [p for p in builds.iterdir() if p.name != planned_version] if builds.is_dir() else []
            removed += [batch_dir / "scratch"] if (batch_dir / "scratch").exists() else []
    weekly = work_dir / "weekly"
    if weekly.is_dir():
        marker = f"compacted-{planned_version}.json"
        removed += [p for p in weekly.iterdir()
                    if p.name == "scratch" or (p.name.startswith("compacted-") and p.name != marker)
                    or (p.name.startswith(("plan-", "shards-")) and p.name.split("-", 1)[1] != str(planned_version))]
    checks = work_dir / "row_checks"  # verdicts of per-row checks: a week unused is history
    if checks.is_dir():
        removed += [p for p in checks.iterdir() if time.time() - p.stat().st_mtime > ROW_CHECKS_TTL_S]
    for path in removed:
        log.info("removing leftover %s", path)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
