# Stage 2 - ingest one night (one job, so the libraries are imported once):
#   build: light curves nested into their objects by diaObjectId (orphans included), rows placed under the
#          published partitioning (new pixels only outside coverage), margin and index rows;
#   commit: a new collection version (hard links + the night's files + updated metadata and ledger), validated,
#          then published by one atomic switch of the top-level collection.properties.


rule ingest_batch:
    wildcard_constraints:
        batch=r"\d{4}-\d{2}-\d{2}(_\d+)?",  # nights only: bootstrap's marker is made by bootstrap_collection
    input:
        unpack(lambda wc: staged(wc.batch)),
        previous=previous_commit,
    output:
        temp(work("runs", "{run}", "{batch}.committed.json")),
    params:
        night=lambda wc: batch_of(wc.batch).night,
        manifests=manifests,
        skipped=lambda wc: PLAN.skipped(batch_of(wc.batch).night),
        staged=lambda wc: staged(wc.batch),
        build=lambda wc: work("batches", wc.batch, "build"),
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
