# Stage 2 - nest and place: light curves nested into their objects by diaObjectId (orphans included), rows
# placed under the published partitioning (new pixels only outside coverage), margin and index rows.


rule build_batch:
    input:
        unpack(lambda wc: staged(wc.batch)),
        previous=previous_commit,
    output:
        temp(directory(work("batches", "{batch}", "build"))),
    params:
        night=lambda wc: batch_of(wc.batch).night,
        manifests=manifests,
        staged=lambda wc: staged(wc.batch),
    log:
        work("logs", "build_batch", "{batch}.log"),
    benchmark:
        work("benchmarks", "build_batch", "{batch}.tsv")
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/ppdb_lc.yaml"
    script:
        "../scripts/build_batch.py"
