"""Snakemake adapter: weekly compaction of the published collection (full, or the commit of the incremental one)."""

import sys
from pathlib import Path

# ppdb_lc from this checkout, whatever the job's environment (venv, or a conda env built from envs/ppdb_lc.yaml)
sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from ppdb_lc import jobs  # noqa: E402

if __name__ == "__main__":
    jobs.weekly(snakemake.params.scratch, snakemake.output[0], snakemake.config, snakemake.threads,  # noqa: F821
                snakemake.log[0], plan=snakemake.input.get("plan"), shard_dirs=snakemake.params.shard_dirs)  # noqa: F821
