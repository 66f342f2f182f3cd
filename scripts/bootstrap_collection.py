"""Snakemake adapter: build a new collection from all staged chunks."""

import sys
from pathlib import Path

# ppdb_lc from this checkout, whatever the job's environment (venv, or a conda env built from envs/ppdb_lc.yaml)
sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from ppdb_lc import jobs  # noqa: E402

if __name__ == "__main__":
    jobs.bootstrap(snakemake.params.manifests, snakemake.params.staged, snakemake.params.scratch,  # noqa: F821
                   snakemake.output[0], snakemake.config, snakemake.threads, snakemake.log[0])  # noqa: F821
