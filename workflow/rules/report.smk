rule report:
    input:
        all_metrics(),
        all_embeddings(),
        ESTIMATORS_JSON,
    output:
        report_outputs(),
        directory(runs.REPORT_CURVES),
    log:
        "data/logs/report.log",
    params:
        file=PARAMS_FILE,
        digest=params_digest("experiment", "features", "report"),
    resources:
        runtime=10,
    conda:
        "../envs/transferability.yaml"
    shell:
        "transferability --params {params.file} report > {log} 2>&1"
