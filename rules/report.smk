# `snakemake status` only prints the plan (see onstart in the Snakefile) and writes nothing.


rule status:
    input:
        [],
