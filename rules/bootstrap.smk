# Full build of a new collection from every complete chunk up to `until`.


def bootstrap_input(wildcards):
    if PLAN.collection_exists:
        raise WorkflowError(
            f"{SETTINGS.collection_dir} already exists: bootstrap only builds a new collection "
            "(use `snakemake daily` to add nights, or remove the collection first)"
        )
    check_plan("bootstrap")
    if BOOTSTRAP is None:
        raise WorkflowError(f"no complete chunk found in {SETTINGS.ppdb_dir} (until={SETTINGS.until or 'all'})")
    return staged("bootstrap")


rule bootstrap_collection:
    input:
        unpack(bootstrap_input),
    output:
        temp(committed("bootstrap")),
    params:
        manifests=lambda wc: [str(chunk.manifest) for chunk in BOOTSTRAP.chunks],
        staged=staged("bootstrap"),
        scratch=work("batches", "bootstrap", "scratch"),
    log:
        work("logs", "bootstrap_collection.log"),
    benchmark:
        work("benchmarks", "bootstrap_collection.tsv")
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        "../envs/ppdb_lc.yaml"
    script:
        "../scripts/bootstrap_collection.py"


rule bootstrap:
    input:
        committed("bootstrap"),
