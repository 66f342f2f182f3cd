# Stage 1 - import: read one dataset of a batch's chunks, verify them against their manifests (counts, sizes,
# SHA-256), keep the earliest chunk's copy of re-emitted rows and the latest object version per night, add AB
# magnitudes, downcast float64; or read, check and order the batch's update records. One job per part: a group of
# consecutive chunks of one night with at most sharding.rows_per_stage_job rows of the dataset, so a job's memory is
# bounded whatever the night's size; the parts of all four datasets run as parallel jobs.


rule stage_dataset:
    input:
        part_manifests,
    output:
        temp(directory(work("batches", "{batch}", "staged", "{dataset}", "part{part}"))),
    params:
        manifests=part_manifests,
        shards=lambda wc: 1 if wc.batch == "bootstrap" else ingest_shards(wc.batch),  # rows grouped by shard
    log:
        work("logs", "stage_dataset", "{batch}", "{dataset}", "part{part}.log"),
    benchmark:
        work("benchmarks", "stage_dataset", "{batch}", "{dataset}", "part{part}.tsv")
    threads: 1
    resources:
        mem_mb=stage_mem_mb,
        runtime=30,
    conda:
        "../envs/ppdb_lc.yaml"
    script:
        "../scripts/stage_dataset.py"
