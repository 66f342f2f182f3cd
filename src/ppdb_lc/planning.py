"""What a run has to do, decided when the workflow is parsed (so ``snakemake -n`` shows it).

Committed work is never planned: chunks in the ledger of the published collection are skipped before their
files are opened, so history stays out of the DAG and a changed parameter never replays it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ppdb_lc.apdb import DATASETS
from ppdb_lc.chunks import Discovery, dayobs, discover
from ppdb_lc.ledger import BOOTSTRAP, Batch, plan_batches, read_ledger_index
from ppdb_lc.settings import Settings
from ppdb_lc.versions import VersionedCollection, version_label

log = logging.getLogger(__name__)
ROW_CHECKS = "row_checks"  # under work_dir: verdicts of the per-row checks of chunk files (chunks.check_rows_cached)


@dataclass(frozen=True)
class Plan:
    version: str | None
    batches: list[Batch]
    discovery: Discovery
    problems: list[str] = field(default_factory=list)
    export_error: str | None = None  # the export directory is missing or holds no chunk at all (unmounted?)
    rows_per_stage_job: int = 500_000  # settings.rows_per_stage_job: how batches are split into staging jobs
    rows_per_ingest_job: int = 500_000  # settings.rows_per_ingest_job: how a night's build is sharded

    @property
    def collection_exists(self) -> bool:
        return self.version is not None

    @property
    def bootstrap_batch(self) -> Batch | None:
        chunks = [chunk for batch in self.batches for chunk in batch.chunks]
        return Batch(name=BOOTSTRAP, night=BOOTSTRAP, chunks=chunks) if chunks else None

    @property
    def weekly_needed(self) -> bool:
        """Dailies were committed since the last full build (bootstrap or weekly)."""
        if self.version is None:
            return False
        label = version_label(self.version)
        return not (label == BOOTSTRAP or label.startswith("weekly-"))

    def skipped(self, night: str) -> list[str]:
        """Invalid chunks of ``night`` (left out when ``on_invalid_chunk: skip``), each with its reason."""
        return [f"{path.name}: {reason}" for path, reason in self.discovery.invalid
                if path.name.isdigit() and dayobs(int(path.name)) == night]

    def describe(self) -> str:
        lines = [f"collection version: {self.version or '(none yet)'}"]
        for batch in self.batches:
            rows = ", ".join(f"{ds} {batch.rows(ds)}" for ds in DATASETS)
            jobs = ", ".join(f"{len(batch.stage_parts(ds, self.rows_per_stage_job))} {ds}" for ds in DATASETS)
            lines.append(f"pending night {batch.night} as batch {batch.name}: {len(batch.chunks)} chunks ({rows} rows); "
                         f"staged in {jobs} job(s) of <= {self.rows_per_stage_job} rows; "
                         + (f"built in {n} shard and {n} writer jobs of ~{self.rows_per_ingest_job} rows"
                            if (n := batch.ingest_shards(self.rows_per_ingest_job)) > 1 else "built in one job"))
        if not self.batches:
            lines.append("no new complete chunks")
        for path, reason in self.discovery.incomplete:
            lines.append(f"skipped incomplete chunk {path}: {reason}")
        for path, reason in self.discovery.invalid:
            lines.append(f"INVALID chunk {path}: {reason}")
        for path in self.discovery.unexpected:
            lines.append(f"UNEXPECTED directory {path}: not a chunk (its name is not a chunk id) nor a YYYY/MM/DD "
                         "level; not read")
        if self.export_error:
            # a fact here (`snakemake demo` is about to create the export); the targets that read the export
            # raise it as an error (common.smk check_export)
            lines.append(f"no PPDB export to read: {self.export_error}")
        return "\n".join(lines)


def make_plan(settings: Settings) -> Plan:
    current = VersionedCollection(settings.collection_dir).current()
    ledger = read_ledger_index(current)
    if not Path(settings.ppdb_dir).is_dir():
        empty = Discovery(complete=[], incomplete=[], invalid=[])
        return Plan(version=current.name if current else None, batches=[], discovery=empty,
                    export_error=f"PPDB export directory {settings.ppdb_dir} does not exist")
    found = discover(settings.ppdb_dir, until=settings.until, skip_ids=ledger.chunk_ids,
                     row_cache=Path(settings.work_dir) / ROW_CHECKS)
    return Plan(
        version=current.name if current else None,
        batches=plan_batches(found.complete, ledger),
        discovery=found,
        problems=[f"{path}: {reason}" for path, reason in found.invalid],
        rows_per_stage_job=settings.rows_per_stage_job,
        rows_per_ingest_job=settings.rows_per_ingest_job,
        export_error=None if found.chunk_dirs else (
            f"PPDB export directory {settings.ppdb_dir} holds no chunk directory (empty or not mounted?)"),
    )
