"""Snakemake adapter: weekly compaction of the published collection."""

from ppdb_lc import jobs

if __name__ == "__main__":
    jobs.weekly(snakemake.params.scratch, snakemake.output[0], snakemake.config, snakemake.threads,  # noqa: F821
                snakemake.log[0])  # noqa: F821
