"""Snakemake adapter: stage one dataset of a batch."""

from ppdb_lc import jobs

if __name__ == "__main__":
    jobs.stage_dataset(snakemake.params.manifests, snakemake.wildcards.dataset, snakemake.output[0],  # noqa: F821
                       snakemake.config, snakemake.log[0])  # noqa: F821
