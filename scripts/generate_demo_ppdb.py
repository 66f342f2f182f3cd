"""Snakemake adapter: write the synthetic demo PPDB export."""

from ppdb_lc import jobs

if __name__ == "__main__":
    jobs.generate_demo(snakemake.output[0], snakemake.params.demo, snakemake.log[0])  # noqa: F821
