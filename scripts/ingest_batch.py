"""Snakemake adapter: build one night against the published collection and commit it as a new version."""

import sys
from pathlib import Path

# ppdb_lc from this checkout, whatever the job's environment (venv, or a conda env built from envs/ppdb_lc.yaml)
sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from ppdb_lc import jobs  # noqa: E402

if __name__ == "__main__":
    jobs.ingest_batch(snakemake.wildcards.batch, snakemake.params.night, snakemake.params.manifests,  # noqa: F821
                      snakemake.params.staged, snakemake.params.build, snakemake.output[0],  # noqa: F821
                      snakemake.config, snakemake.log[0], snakemake.params.skipped,  # noqa: F821
                      snakemake.params.shards)  # noqa: F821
