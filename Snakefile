# Incrementally maintained HATS light-curve collection from the Rubin PPDB parquet export.
#
#   demo       generate a synthetic PPDB export into ppdb_dir
#   bootstrap  build the collection from every complete chunk up to `until` (refuses if it exists)
#   daily      add every new complete night: stage -> ingest (build + commit), one night after the other
#   weekly     fold the dailies into one row per object, repartition, rebuild margin + index
#   status     print, in plain words, what daily/bootstrap would do (writes nothing)
#   preview    the pending nights with the existing pixels they would touch and the pixels they would create
#   report_plots  sky map of the latest night, catalog size over nights, per-rule time/memory, night table
#                 (`snakemake report_plots --report report.html`)
#
# Stages, one rule file each: stage.smk (read + check + postprocess chunks per dataset, parallel jobs),
# ingest.smk (nest light curves, place rows in pixels, margin and index rows, publish a new collection version),
# bootstrap.smk / weekly.smk (full builds), demo.smk, report.smk.

from snakemake.utils import min_version

min_version("9.15")


configfile: "config/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/stage.smk"
include: "rules/ingest.smk"
include: "rules/bootstrap.smk"
include: "rules/weekly.smk"
include: "rules/report.smk"


onstart:
    start_run()


onsuccess:
    finish_run()


onerror:
    finish_run()


rule all:
    default_target: True
    input:
        rules.daily.input,
