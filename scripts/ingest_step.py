"""Snakemake adapter: one job of a sharded night's build (rule ingest_changes, ingest_shard, ingest_pixels or ingest_write)."""

import sys
from pathlib import Path

# ppdb_lc from this checkout, whatever the job's environment (venv, or a conda env built from envs/ppdb_lc.yaml)
sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from ppdb_lc import jobs  # noqa: E402

STEPS = {"ingest_changes": ("changes", None), "ingest_shard": ("shard", "shard"), "ingest_pixels": ("pixels", None),
         "ingest_write": ("write", "writer")}

if __name__ == "__main__":
    step, wildcard = STEPS[snakemake.rule]  # noqa: F821
    index = int(snakemake.wildcards[wildcard]) if wildcard else 0  # noqa: F821
    jobs.ingest_step(step, snakemake.wildcards.batch, snakemake.params.night, snakemake.params.staged,  # noqa: F821
                     snakemake.params.build, index, snakemake.params.shards, snakemake.config,  # noqa: F821
                     snakemake.log[0])  # noqa: F821
