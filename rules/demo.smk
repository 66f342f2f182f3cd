# A synthetic, deterministic PPDB export (both directory layouts and manifest formats) for demos and tests.


rule demo:
    input:
        SETTINGS.ppdb_dir,


rule generate_demo_ppdb:
    output:
        directory(SETTINGS.ppdb_dir),
    params:
        demo=config["demo"],
    log:
        work("logs", "generate_demo_ppdb.log"),
    conda:
        "../envs/ppdb_lc.yaml"
    script:
        "../scripts/generate_demo_ppdb.py"
