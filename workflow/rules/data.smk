rule prepare:
    output:
        update(STORE_MANIFEST),
    log:
        "data/logs/prepare.log",
    params:
        file=PARAMS_FILE,
        digest=params_digest("dataset"),
        source=source_fingerprint,
    threads: THREADS
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/transferability.yaml"
    shell:
        "transferability --params {params.file} --threads {threads} prepare > {log} 2>&1"


rule split:
    input:
        STORE_MANIFEST,
    output:
        runs.SPLIT,
    log:
        "data/logs/split/{split}.log",
    params:
        file=PARAMS_FILE,
        digest=lambda wildcards: provenance.digest(P["splits"][wildcards.split]),
    resources:
        runtime=5,
    conda:
        "../envs/transferability.yaml"
    shell:
        "transferability --params {params.file} split --split {wildcards.split} > {log} 2>&1"
