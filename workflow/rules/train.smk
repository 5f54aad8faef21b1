# Training jobs ask for gpu=1 when the device is a GPU; each then claims a free card itself
# with a per-card flock (src/transferability/training/devices.py).


rule train_base:
    input:
        STORE_MANIFEST,
        runs.SPLIT,
        pretrained_weights,
    output:
        BASE_OUTPUTS,
    log:
        "data/logs/runs/{split}/seed{seed}/{variant}.log",
    benchmark:
        "data/benchmarks/{split}/seed{seed}/{variant}.tsv"
    params:
        file=PARAMS_FILE,
        digest=params_digest("dataset", "model", "train", "evaluate", "compute"),
    threads: THREADS
    resources:
        gpu=int(USES_GPU),
        mem_mb=train_mem_mb,
        runtime=24 * 60,
    wildcard_constraints:
        variant=runs.WILDCARDS["variant_base"],
    conda:
        "../envs/transferability.yaml"
    shell:
        "transferability --params {params.file} --threads {threads} train --split {wildcards.split} --seed {wildcards.seed} --variant {wildcards.variant} > {log} 2>&1"


rule train_transfer:
    input:
        STORE_MANIFEST,
        runs.SPLIT,
        source_model,
    output:
        TRANSFER_OUTPUTS,
    log:
        "data/logs/runs/{split}/seed{seed}/{variant}/n{n}.log",
    benchmark:
        "data/benchmarks/{split}/seed{seed}/{variant}/n{n}.tsv"
    params:
        file=PARAMS_FILE,
        digest=params_digest("dataset", "model", "train", "evaluate", "compute"),
    threads: THREADS
    resources:
        gpu=int(USES_GPU),
        mem_mb=train_mem_mb,
        runtime=24 * 60,
    wildcard_constraints:
        variant=runs.WILDCARDS["variant_transfer"],
    conda:
        "../envs/transferability.yaml"
    shell:
        "transferability --params {params.file} --threads {threads} train --split {wildcards.split} --seed {wildcards.seed} --variant {wildcards.variant} --n {wildcards.n} > {log} 2>&1"
