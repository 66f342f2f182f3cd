# Stage 2 - ingest one night: build its files against the published collection, then commit them.
#   build (ppdb_lc.shards): changes (update records + re-emitted rows against the collection, one job), shards
#          (light curves nested per group of objects, N jobs), pixels (the night's partitioning from the shards'
#          histograms, one light job), writers (one dated file per touched pixel, margin and index rows, per group
#          of pixels, N jobs); N = ceil(night's rows / sharding.rows_per_ingest_job), shown by `-n`. A night with
#          N = 1 is built inside the commit job (one process, the libraries imported once).
#   commit: a new collection version (hard links + the night's files + updated metadata and ledger), validated,
#          then published by one atomic switch of the top-level collection.properties.


rule ingest_changes:
    input:
        unpack(lambda wc: staged(wc.batch)),
        previous=previous_commit,
    output:
        temp(work("batches", "{batch}", "build", "{run}", "changes", "summary.json")),
    params:
        night=lambda wc: batch_of(wc.batch).night,
        staged=lambda wc: staged(wc.batch),
        build=lambda wc: build_dir(wc.batch, wc.run),
        shards=lambda wc: ingest_shards(wc.batch),
    log:
        work("logs", "ingest_changes", "{run}", "{batch}.log"),
    benchmark:
        work("benchmarks", "ingest_changes", "{run}", "{batch}.tsv")
    threads: 1
    resources:
        mem_mb=changes_mem_mb,
        runtime=30,
    conda:
        "../envs/ppdb_lc.yaml"
    script:
        "../scripts/ingest_step.py"


rule ingest_shard:
    input:
        unpack(lambda wc: staged(wc.batch)),
        changes=work("batches", "{batch}", "build", "{run}", "changes", "summary.json"),
    output:
        temp(work("batches", "{batch}", "build", "{run}", "shards", "{shard}", "summary.json")),
    params:
        night=lambda wc: batch_of(wc.batch).night,
        staged=lambda wc: staged(wc.batch),
        build=lambda wc: build_dir(wc.batch, wc.run),
        shards=lambda wc: ingest_shards(wc.batch),
    log:
        work("logs", "ingest_shard", "{run}", "{batch}", "{shard}.log"),
    benchmark:
        work("benchmarks", "ingest_shard", "{run}", "{batch}", "{shard}.tsv")
    threads: 1
    resources:
        mem_mb=shard_mem_mb,
        runtime=30,
    conda:
        "../envs/ppdb_lc.yaml"
    script:
        "../scripts/ingest_step.py"


rule ingest_pixels:
    input:
        shards=lambda wc: shard_summaries(wc.batch, wc.run),
    output:
        temp(work("batches", "{batch}", "build", "{run}", "pixels", "plan.json")),
    params:
        night=lambda wc: batch_of(wc.batch).night,
        staged={},
        build=lambda wc: build_dir(wc.batch, wc.run),
        shards=lambda wc: ingest_shards(wc.batch),
    log:
        work("logs", "ingest_pixels", "{run}", "{batch}.log"),
    benchmark:
        work("benchmarks", "ingest_pixels", "{run}", "{batch}.tsv")
    threads: 1
    resources:
        mem_mb=pixels_mem_mb,
        runtime=10,
    conda:
        "../envs/ppdb_lc.yaml"
    script:
        "../scripts/ingest_step.py"


rule ingest_write:
    input:
        pixels=work("batches", "{batch}", "build", "{run}", "pixels", "plan.json"),
    output:
        temp(work("batches", "{batch}", "build", "{run}", "writers", "{writer}", "summary.json")),
    params:
        night=lambda wc: batch_of(wc.batch).night,
        staged={},
        build=lambda wc: build_dir(wc.batch, wc.run),
        shards=lambda wc: ingest_shards(wc.batch),
    log:
        work("logs", "ingest_write", "{run}", "{batch}", "{writer}.log"),
    benchmark:
        work("benchmarks", "ingest_write", "{run}", "{batch}", "{writer}.tsv")
    threads: 1
    resources:
        mem_mb=shard_mem_mb,
        runtime=30,
    conda:
        "../envs/ppdb_lc.yaml"
    script:
        "../scripts/ingest_step.py"


rule ingest_batch:
    wildcard_constraints:
        batch=r"\d{4}-\d{2}-\d{2}(_\d+)?",  # nights only: bootstrap's marker is made by bootstrap_collection
    input:
        unpack(ingest_input),
    output:
        temp(work("runs", "{run}", "{batch}.committed.json")),
    params:
        night=lambda wc: batch_of(wc.batch).night,
        manifests=manifests,
        skipped=lambda wc: PLAN.skipped(batch_of(wc.batch).night),
        staged=lambda wc: staged(wc.batch),
        build=lambda wc: build_dir(wc.batch, wc.run),
        shards=lambda wc: ingest_shards(wc.batch),
    log:
        work("logs", "ingest_batch", "{run}", "{batch}.log"),
    benchmark:
        work("benchmarks", "ingest_batch", "{run}", "{batch}.tsv")
    threads: 1
    resources:
        mem_mb=ingest_mem_mb,
        runtime=30,
    conda:
        "../envs/ppdb_lc.yaml"
    script:
        "../scripts/ingest_batch.py"


rule daily:
    input:
        daily_input,
