# Trained networks as feature extractors: per-layer dumps, then the Full-Network Embedding.


rule features:
    input:
        STORE_MANIFEST,
        runs.SPLIT,
        trained_model,
    output:
        FEATURE_OUTPUTS,
    log:
        "data/logs/features/{split}/seed{seed}/{network}/{target}.log",
    benchmark:
        "data/benchmarks/features/{split}/seed{seed}/{network}/{target}.tsv"
    params:
        file=PARAMS_FILE,
        digest=params_digest("dataset", "model", "train", "evaluate", "features"),
    threads: THREADS
    resources:
        gpu=int(USES_GPU),  # the dump runs on compute.device, as training does
        mem_mb=features_mem_mb,
        runtime=60,
    conda:
        "../envs/transferability.yaml"
    shell:
        "transferability --params {params.file} --threads {threads} features --split {wildcards.split} --seed {wildcards.seed} --network {wildcards.network} --target {wildcards.target} > {log} 2>&1"


rule embed:
    input:
        FEATURE_OUTPUTS,
    output:
        runs.EMBED,
    log:
        "data/logs/embed/{split}/seed{seed}/{network}/{target}.log",
    benchmark:
        "data/benchmarks/embed/{split}/seed{seed}/{network}/{target}.tsv"
    params:
        file=PARAMS_FILE,
        digest=params_digest("embed"),
    threads: THREADS
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/transferability.yaml"
    shell:
        "transferability --params {params.file} --threads {threads} embed --split {wildcards.split} --seed {wildcards.seed} --network {wildcards.network} --target {wildcards.target} > {log} 2>&1"
