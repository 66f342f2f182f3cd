"""Snakemake adapter: build one batch against the published collection."""

from ppdb_lc import jobs

if __name__ == "__main__":
    jobs.build_batch(snakemake.wildcards.batch, snakemake.params.night, snakemake.params.manifests,  # noqa: F821
                     snakemake.params.staged, snakemake.output[0], snakemake.config, snakemake.log[0])  # noqa: F821
