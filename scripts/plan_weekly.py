"""Snakemake adapter: plan the incremental weekly (pixel groups to rewrite, shards) of the published collection."""

import sys
from pathlib import Path

# ppdb_lc from this checkout, whatever the job's environment (venv, or a conda env built from envs/ppdb_lc.yaml)
sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from ppdb_lc import jobs  # noqa: E402

if __name__ == "__main__":
    jobs.plan_weekly(snakemake.output.plan, snakemake.config, snakemake.log[0])  # noqa: F821
