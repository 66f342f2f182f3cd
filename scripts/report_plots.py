"""Snakemake adapter: plots and table of the ingest history (see ppdb_lc.report)."""

import sys
from pathlib import Path

# ppdb_lc from this checkout, whatever the job's environment (venv, or a conda env built from envs/ppdb_lc.yaml)
sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from ppdb_lc import lightcurve_plot, report  # noqa: E402
from ppdb_lc.jobs import job_log  # noqa: E402

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
