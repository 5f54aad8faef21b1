# Shared by every rule: the validated params, the networks they ask for, input functions.
from snakemake.utils import validate

from transferability import params as tparams
from transferability import runs

# The params file every job reads: params.yaml, or the last --configfile given.
PARAMS_FILE = (workflow.overwrite_configfiles or ["params.yaml"])[-1]
validate(config, schema=str(tparams.SCHEMA_PATH))
P = tparams.load(PARAMS_FILE)
if config != P:
    raise ValueError(
        f"snakemake --config overrides are not passed to the jobs, which read {PARAMS_FILE}: "
        "edit that file, or give another whole file with --configfile"
    )

STORE = str(runs.prepared_path(P))
USES_GPU = P["compute"]["device"] != "cpu"
THREADS = P["compute"]["threads"]
BASE_OUTPUTS = [f"{runs.BASE_DIR}/{name}" for name in runs.RUN_FILES]
TRANSFER_OUTPUTS = [f"{runs.TRANSFER_DIR}/{name}" for name in runs.RUN_FILES]
FEATURE_OUTPUTS = [f"{runs.FEATURES_DIR}/{name}" for name in runs.FEATURE_FILES]
REPORT_OUTPUTS = [f"{runs.REPORT_DIR}/{name}" for name in runs.REPORT_FILES]
ESTIMATE_OUTPUTS = [f"{runs.ESTIMATES_DIR}/{name}" for name in runs.ESTIMATE_FILES]
ESTIMATORS_JSON = f"{runs.REPORT_DIR}/estimators.json"
# The report's files shown by `snakemake --report`: category and caption (workflow/report/<stem>.rst).
REPORT_ITEMS = {
    "figure2.png": "Figures", "dissimilar.png": "Figures", "random_filters.png": "Figures",
    "probes.png": "Figures", "curves.png": "Figures", "findings.md": "Tables", "variants.md": "Tables",
    "decomposition.md": "Tables", "fne.md": "Tables", "runs.csv": "Tables", "metrics.json": "Metrics",
    "estimators.png": "Figures", "estimators.md": "Tables",
}

wildcard_constraints:
    split=runs.WILDCARDS["split"],
    seed=runs.WILDCARDS["seed"],
    n=runs.WILDCARDS["n"],
    network=runs.WILDCARDS["network"],
    target=runs.WILDCARDS["target"],


def params_digest(*sections):
    """A rule's `params:` value, so Snakemake re-runs a job whose params sections changed."""
    return tparams.digest({s: P.get(s) for s in sections})


def all_metrics():
    return [str(net.file("metrics.json")) for net in runs.networks(P)]


def all_embeddings():
    return [str(job.embed_file) for job in runs.feature_jobs(P)]


def trained_model(wildcards):
    """The features rule's input: our network's model.pt, or a torchvision model's weights file."""
    job = runs.FeatureJob(wildcards.split, int(wildcards.seed), wildcards.network, wildcards.target)
    if job.torchvision_arch:
        return P["features"]["torchvision_weights"][job.torchvision_arch]
    return str(job.trained.file("model.pt"))


def all_outputs():
    return REPORT_OUTPUTS


def reported(names):
    """Files under reports/, those in REPORT_ITEMS marked for `snakemake --report` with a caption."""
    out = []
    for name in names:
        path, stem, category = f"{runs.REPORT_DIR}/{name}", name.rsplit(".", 1)[0], REPORT_ITEMS.get(name)
        out.append(report(path, caption=f"../report/{stem}.rst", category=category) if category else path)
    return out


def report_outputs():
    return reported(runs.REPORT_FILES)


def estimator_outputs():
    return reported(runs.ESTIMATOR_FILES)


def estimator_dumps(wildcards):
    """The estimate rule's input: the feature dumps one replicate's estimators read."""
    jobs = runs.estimator_dumps(P, wildcards.split, int(wildcards.seed))
    return [str(job.dir / name) for job in jobs for name in runs.FEATURE_FILES]


def all_estimates():
    exp = P["experiment"]
    return [str(runs.estimates_dir(split, seed) / name) for split in exp["splits"] for seed in exp["seeds"]
            for name in runs.ESTIMATE_FILES]


def source_model(wildcards):
    """A transfer network's input: the model.pt of the base it copies layers from (none for RnB)."""
    net = runs.Network(wildcards.split, int(wildcards.seed), wildcards.variant, int(wildcards.n))
    base = net.source_base
    return [str(base.file("model.pt"))] if base else []
