# Transferability estimators: scored per replicate on the feature dumps, then held against the fan-out.


rule estimate:
    input:
        estimator_dumps,
    output:
        ESTIMATE_OUTPUTS,
    log:
        "data/logs/estimate/{split}/seed{seed}.log",
    benchmark:
        "data/benchmarks/estimate/{split}/seed{seed}.tsv"
    params:
        file=PARAMS_FILE,
        digest=provenance.digest([P["estimators"], P.get("embed"), P["experiment"]["variants"], P["experiment"]["layers"]]),
    threads: THREADS
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/transferability.yaml"
    shell:
        "transferability --params {params.file} --threads {threads} estimate --split {wildcards.split} --seed {wildcards.seed} > {log} 2>&1"


rule estimators:
    input:
        all_estimates(),
        all_metrics(),
    output:
        estimator_outputs(),
    log:
        "data/logs/estimators.log",
    params:
        file=PARAMS_FILE,
        digest=params_digest("experiment", "estimators"),
    resources:
        runtime=10,
    conda:
        "../envs/transferability.yaml"
    shell:
        "transferability --params {params.file} estimators > {log} 2>&1"
