"""Snakemake adapter: plots and table of the ingest history (see ppdb_lc.report)."""

from ppdb_lc import lightcurve_plot, report
from ppdb_lc.jobs import job_log

if __name__ == "__main__":
    with job_log(snakemake.log[0]):  # noqa: F821
        report.make_report(
            snakemake.input.batches, report.benchmark_files(snakemake.params.benchmark_root),  # noqa: F821
            snakemake.params.benchmark_root,  # noqa: F821
            sky=snakemake.output.sky, size=snakemake.output.size,  # noqa: F821
            benchmarks=snakemake.output.benchmarks, table=snakemake.output.table,  # noqa: F821
            catalog_dir=snakemake.params.catalog_dir,  # noqa: F821
        )
        lightcurve_plot.plot_examples(
            snakemake.params.collection_dir,  # noqa: F821
            lightcurve_plot.example_object_ids(snakemake.params.catalog_dir),  # noqa: F821
            snakemake.output.examples,  # noqa: F821
        )
