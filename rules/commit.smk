# Stage 3 - commit: a new collection version (hard links + the batch's files + updated metadata and ledger),
# validated, then published by one atomic link switch.


rule commit_batch:
    input:
        build=work("batches", "{batch}", "build"),
    output:
        temp(committed("{batch}")),
    params:
        night=lambda wc: batch_of(wc.batch).night,
        manifests=manifests,
    log:
        work("logs", "commit_batch", "{batch}.log"),
    benchmark:
        work("benchmarks", "commit_batch", "{batch}.tsv")
    threads: 1
    resources:
        mem_mb=1000,
        runtime=15,
    conda:
        "../envs/ppdb_lc.yaml"
    script:
        "../scripts/commit_batch.py"


def daily_input(wildcards):
    if PLAN.collection_exists or not BATCHES:
        check_plan("daily")
    if not PLAN.collection_exists and BATCHES:
        raise WorkflowError(f"no collection at {SETTINGS.collection_dir}: run `snakemake bootstrap` first")
    return [committed(name) for name in BATCHES]


rule daily:
    input:
        daily_input,
