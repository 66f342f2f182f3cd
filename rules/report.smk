# Reporting. None of these rules writes into the collection or into any file another rule reads.
#
#   status        print, in plain words, what daily/bootstrap would do (the plan, printed at parse time)
#   preview       also where the pending rows would go: existing pixels receiving files and new pixels; printed
#                 and copied to <work_dir>/preview.txt. The rule has no declared output, so it runs every time.
#   report_plots  sky map of the latest night, catalog size over nights, per-rule runtime/memory, night table,
#                 light curves of a few example objects (read with lsdb id_search), under <work_dir>/report/;
#                 then `snakemake --report report.html` collects them.
from ppdb_lc.report import batch_summary_files, published_catalog_dir


rule status:
    input:
        check_export,


rule preview:
    localrule: True
    input:
        check_export,
    log:
        work("preview.txt"),  # the printed preview; a log, not an output, so that the rule always runs
    conda:
        "../envs/ppdb_lc.yaml"
    script:
        "../scripts/preview.py"


rule report_plots:
    localrule: True
    input:
        # Every batch summary of the published collection: each commit adds one, so the plots are made again.
        # The benchmark files are read by the script (params) and not declared: each is a product of the rule
        # that wrote it, so declaring it would pull those rules into the DAG.
        batches=lambda wildcards: batch_summary_files(SETTINGS.collection_dir),
    output:
        sky=report(
            work("report", "latest_night_pixels.png"),
            caption="../report/latest_night_pixels.rst",
            category="Ingest",
            labels={"figure": "rows added per pixel, latest night"},
        ),
        size=report(
            work("report", "catalog_size.png"),
            caption="../report/catalog_size.rst",
            category="Ingest",
            labels={"figure": "catalog size over nights"},
        ),
        benchmarks=report(
            work("report", "rule_benchmarks.png"),
            caption="../report/rule_benchmarks.rst",
            category="Performance",
            labels={"figure": "per-rule runtime and peak memory"},
        ),
        examples=report(
            work("report", "example_lightcurves.png"),
            caption="../report/example_lightcurves.rst",
            category="Ingest",
            labels={"figure": "example light curves"},
        ),
        table=report(
            work("report", "night_summaries.html"),
            caption="../report/night_summaries.rst",
            category="Ingest",
            labels={"table": "night summaries"},
        ),
    params:
        benchmark_root=work("benchmarks"),
        catalog_dir=lambda wildcards: published_catalog_dir(SETTINGS.collection_dir, SETTINGS.names.catalog),
        collection_dir=str(SETTINGS.collection_dir),
    log:
        work("logs", "report_plots.log"),
    conda:
        "../envs/ppdb_lc.yaml"
    script:
        "../scripts/report_plots.py"
