"""Snakemake adapter: build one night against the published collection and commit it as a new version."""

from ppdb_lc import jobs

if __name__ == "__main__":
    jobs.ingest_batch(snakemake.wildcards.batch, snakemake.params.night, snakemake.params.manifests,  # noqa: F821
                      snakemake.params.staged, snakemake.params.build, snakemake.output[0],  # noqa: F821
                      snakemake.config, snakemake.log[0], snakemake.params.skipped)  # noqa: F821
