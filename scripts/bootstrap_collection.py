"""Snakemake adapter: build a new collection from all staged chunks."""

from ppdb_lc import jobs

if __name__ == "__main__":
    jobs.bootstrap(snakemake.params.manifests, snakemake.params.staged, snakemake.params.scratch,  # noqa: F821
                   snakemake.output[0], snakemake.config, snakemake.threads, snakemake.log[0])  # noqa: F821
