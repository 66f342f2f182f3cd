# Stage 1 - import: read one dataset of a batch's chunks, verify them against their manifests (counts, sizes,
# SHA-256), keep the earliest chunk's copy of re-emitted rows and the latest object version per night, add AB
# magnitudes, downcast float64; or read, check and order the batch's update records. The four run as parallel jobs.


rule stage_dataset:
    input:
        manifests,
    output:
        temp(directory(work("batches", "{batch}", "staged", "{dataset}"))),
    params:
        manifests=manifests,
    log:
        work("logs", "stage_dataset", "{batch}", "{dataset}.log"),
    benchmark:
        work("benchmarks", "stage_dataset", "{batch}", "{dataset}.tsv")
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/ppdb_lc.yaml"
    script:
        "../scripts/stage_dataset.py"
