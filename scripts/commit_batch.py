"""Snakemake adapter: publish one built batch as a new collection version."""

from ppdb_lc import jobs

if __name__ == "__main__":
    jobs.commit_batch(snakemake.wildcards.batch, snakemake.params.night, snakemake.params.manifests,  # noqa: F821
                      snakemake.input.build, snakemake.output[0], snakemake.config, snakemake.log[0])  # noqa: F821
