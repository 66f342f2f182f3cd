# Full build of a new collection from every complete chunk up to `until`.


rule bootstrap_collection:  # the `run` wildcard: a fresh name per bootstrap run (common.smk RUN)
    input:
        **staged("bootstrap"),
    output:
        temp(work("runs", "{run}", "bootstrap.committed.json")),
    params:
        manifests=lambda wc: [str(chunk.manifest) for chunk in BOOTSTRAP.chunks],
        staged=staged("bootstrap"),
        scratch=work("batches", "bootstrap", "scratch"),
    log:
        work("logs", "bootstrap_collection", "{run}.log"),
    benchmark:
        work("benchmarks", "bootstrap_collection", "{run}.tsv")
    threads: 2
    resources:
        mem_mb=bootstrap_mem_mb,
        runtime=120,
    conda:
        "../envs/ppdb_lc.yaml"
    script:
        "../scripts/bootstrap_collection.py"


rule bootstrap:
    input:
        bootstrap_target,
