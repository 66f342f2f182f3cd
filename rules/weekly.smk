# Weekly compaction: one row per object, repartitioned, margin + index regenerated, switched atomically.


rule compact_collection:
    output:
        work("weekly", "compacted-{version}.json"),
    params:
        scratch=work("weekly", "scratch"),
    log:
        work("logs", "compact_collection", "{version}.log"),
    benchmark:
        work("benchmarks", "compact_collection", "{version}.tsv")
    threads: 2
    resources:
        mem_mb=4000,
        runtime=240,
    conda:
        "../envs/ppdb_lc.yaml"
    script:
        "../scripts/compact_collection.py"


rule weekly:
    input:
        weekly_input,
