"""What a run has to do, decided when the workflow is parsed (so ``snakemake -n`` shows it).

Committed work is never planned: chunks in the ledger of the published collection are skipped before their
files are opened, so history stays out of the DAG and a changed parameter never replays it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ppdb_lc.chunks import Discovery, discover
from ppdb_lc.ledger import BOOTSTRAP, Batch, plan_batches, read_ledger
from ppdb_lc.settings import Settings
from ppdb_lc.versions import VersionedCollection, version_label

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    version: str | None
    batches: list[Batch]
    discovery: Discovery
    problems: list[str] = field(default_factory=list)

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

    def describe(self) -> str:
        lines = [f"collection version: {self.version or '(none yet)'}"]
        for batch in self.batches:
            rows = ", ".join(f"{ds} {batch.rows(ds)}" for ds in ("DiaObject", "DiaSource", "DiaForcedSource"))
            lines.append(f"pending night {batch.night} as batch {batch.name}: {len(batch.chunks)} chunks ({rows} rows)")
        if not self.batches:
            lines.append("no new complete chunks")
        for path, reason in self.discovery.incomplete:
            lines.append(f"skipped incomplete chunk {path}: {reason}")
        for path, reason in self.discovery.invalid:
            lines.append(f"INVALID chunk {path}: {reason}")
        return "\n".join(lines)


def make_plan(settings: Settings) -> Plan:
    current = VersionedCollection(settings.collection_dir).current()
    ledger = read_ledger(current)
    if not Path(settings.ppdb_dir).is_dir():
        empty = Discovery(complete=[], incomplete=[], invalid=[])
        return Plan(version=current.name if current else None, batches=[], discovery=empty,
                    problems=[f"PPDB directory {settings.ppdb_dir} does not exist"])
    found = discover(settings.ppdb_dir, until=settings.until, skip_ids=[e.chunk_id for e in ledger])
    return Plan(
        version=current.name if current else None,
        batches=plan_batches(found.complete, ledger),
        discovery=found,
        problems=[f"{path}: {reason}" for path, reason in found.invalid],
    )
