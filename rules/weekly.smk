# Weekly compaction: one row per object, repartitioned, margin + index regenerated, switched atomically.
#
# weekly.mode incremental (default): plan_weekly (checkpoint: which pixel groups changed since the last compaction,
# the new partitioning, the shards) -> compact_pixels x shards (parallel, each one shard of pixel groups) ->
# compact_collection (links the carried files and the shards' files, margins, index, publishes). A plan that would
# rewrite nearly everything falls back to the full weekly inside compact_collection (no shard job).
# weekly.mode full: compact_collection alone folds and rewrites the whole catalog.


checkpoint plan_weekly:
    output:
        plan=directory(work("weekly", "plan-{version}")),
    log:
        work("logs", "plan_weekly", "{version}.log"),
    benchmark:
        work("benchmarks", "plan_weekly", "{version}.tsv")
    threads: 1
    resources:
        mem_mb=plan_weekly_mem_mb,
        runtime=60,
    conda:
        "../envs/ppdb_lc.yaml"
    script:
        "../scripts/plan_weekly.py"


rule compact_pixels:
    wildcard_constraints:
        shard=r"\d{3}",
    input:
        plan=work("weekly", "plan-{version}"),
    output:
        work("weekly", "shards-{version}", "{shard}.json"),
    params:
        out_dir=lambda wc: work("weekly", f"shards-{wc.version}", wc.shard),
    log:
        work("logs", "compact_pixels", "{version}", "{shard}.log"),
    benchmark:
        work("benchmarks", "compact_pixels", "{version}", "{shard}.tsv")
    threads: 2
    resources:
        mem_mb=compact_pixels_mem_mb,
        runtime=120,
    conda:
        "../envs/ppdb_lc.yaml"
    script:
        "../scripts/compact_pixels.py"


rule compact_collection:
    input:
        unpack(weekly_inputs),
    output:
        work("weekly", "compacted-{version}.json"),
    params:
        scratch=work("weekly", "scratch"),
        shard_dirs=lambda wc, input: [p.removesuffix(".json") for p in input.get("shards", [])],
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
