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


rule daily:
    input:
        daily_input,
