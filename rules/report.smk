# Reporting. None of these rules writes into the collection or into any file another rule reads.
#
#   status        print, in plain words, what daily/bootstrap would do (the plan, see onstart in the Snakefile)
#   preview       also where the pending rows would go: existing pixels receiving files and new pixels; printed
#                 and copied to <work_dir>/preview.txt. The rule has no declared output, so it runs every time.
#   report_plots  sky map of the latest night, catalog size over nights, per-rule runtime/memory, night table,
#                 under <work_dir>/report/; then `snakemake --report report.html` collects them.
import glob


rule status:
    input:
        [],


rule preview:
    localrule: True
    params:
        text=work("preview.txt"),
    conda:
        "../envs/ppdb_lc.yaml"
    script:
        "../scripts/preview.py"


def report_batches(wildcards):
    """Every batch summary of the published collection: a new commit adds one, so the plots are made again.

    The benchmark files are read by the script (from params) rather than declared as inputs: each is a product of
    the rule that wrote it, so declaring it would drag those rules into the DAG.
    """
    if not PLAN.collection_exists:
        raise WorkflowError(f"no collection at {SETTINGS.collection_dir}: nothing to report (run bootstrap first)")
    return sorted(glob.glob(os.path.join(str(SETTINGS.collection_dir), "ingest", "batches", "*.json")))


rule report_plots:
    localrule: True
    input:
        batches=report_batches,
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
        table=report(
            work("report", "night_summaries.html"),
            caption="../report/night_summaries.rst",
            category="Ingest",
            labels={"table": "night summaries"},
        ),
    params:
        benchmark_root=work("benchmarks"),
        catalog_dir=os.path.join(str(SETTINGS.collection_dir), SETTINGS.names.catalog),
    log:
        work("logs", "report_plots.log"),
    conda:
        "../envs/ppdb_lc.yaml"
    script:
        "../scripts/report_plots.py"
