"""Snakemake adapter: one shard of the incremental weekly (fold its pixel groups onto the planned pixels)."""

import sys
from pathlib import Path

# ppdb_lc from this checkout, whatever the job's environment (venv, or a conda env built from envs/ppdb_lc.yaml)
sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from ppdb_lc import jobs  # noqa: E402

if __name__ == "__main__":
    jobs.compact_pixels(snakemake.input.plan, int(snakemake.wildcards.shard), snakemake.params.out_dir,  # noqa: F821
                        snakemake.output[0], snakemake.config, snakemake.threads, snakemake.log[0])  # noqa: F821
