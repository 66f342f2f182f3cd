# Stage 1 - import: read one dataset of a batch's chunks, check them against their manifests, keep the latest
# object version per night, add AB magnitudes, downcast float64. The three datasets run as parallel jobs.


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
