# Shared by every rule: the validated params, the networks they ask for, input functions.
import copy
import sys
from pathlib import Path

from transferability import params as tparams
from transferability import provenance
from transferability import runs
from transferability.data import sources
from transferability.estimators import plan
from transferability.errors import UserError


def params_file():
    """The one params file every job reads: params.yaml, or the profile --configfile names
    (relative to the project when inside it, so shell commands and logs read as typed)."""
    if workflow.config_settings.config:
        raise UserError("snakemake --config is refused: the jobs read a params file, not Snakemake's config; "
                        "edit params.yaml, or give a profile (workflow/params/) with --configfile")
    given = workflow.overwrite_configfiles
    if len(given) > 1:
        raise UserError(f"--configfile got {len(given)} files; give one whole params file (the jobs read one)")
    if not given:
        return "params.yaml"
    path = Path(given[0]).absolute()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


try:  # the package's one line (Snakemake would add its traceback to a raise), before any job
    PARAMS_FILE = params_file()
    P = tparams.load(PARAMS_FILE)  # resolved and validated against params.schema.yaml, as the CLI does
except UserError as exc:
    sys.exit(f"error: {exc}")
# Snakemake's config is the file as given (a profile states only what differs): the resolved params instead,
# for what reads config (the --report page, workflow/report/workflow.rst)
config.clear()
config.update(copy.deepcopy(P))

STORE = str(runs.prepared_path(P))
# The store's manifest stands for the store in the DAG: prepare writes it last, in the same atomic swap of
# the folder, and as an `update` output Snakemake keeps the previous store in place while prepare runs.
STORE_MANIFEST = f"{STORE}/manifest.json"
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
    "figure2.png": "Figures", "figure2-replicates.png": "Figures", "dissimilar.png": "Figures",
    "random_filters.png": "Figures",
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


def pretrained_weights(wildcards):
    """A base that is a weights file on disk (model.pretrained): the file, so a new one re-imports it."""
    weights = (P["model"].get("pretrained") or {}).get(wildcards.variant[-1])
    return [weights] if weights else []


def source_fingerprint(wildcards):
    """prepare's `params:` value: the dataset's files by path, size and mtime, so a changed source
    re-runs prepare and all that follows (sources.fingerprint: stats only, no reads)."""
    return sources.fingerprint(P["dataset"])


def params_digest(*sections):
    """A rule's `params:` value, so Snakemake re-runs a job whose params sections changed."""
    return provenance.digest({s: P.get(s) for s in sections})


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
    jobs = plan.estimator_dumps(P, wildcards.split, int(wildcards.seed))
    return [str(job.dir / name) for job in jobs for name in runs.FEATURE_FILES]


def all_estimates():
    exp = P["experiment"]
    return [str(plan.estimates_dir(split, seed) / name) for split in exp["splits"] for seed in exp["seeds"]
            for name in runs.ESTIMATE_FILES]


def train_mem_mb(wildcards):
    """A training job's memory request (MiB): what it holds at its peak, from params, the store and the split."""
    from transferability import memory  # imports torch: only once Snakemake plans a job
    n = int(wildcards.n) if hasattr(wildcards, "n") else None
    return memory.train_mb(P, runs.Network(wildcards.split, int(wildcards.seed), wildcards.variant, n))


def features_mem_mb(wildcards):
    """A features job's memory request (MiB): the network, a batch and a shard of its dump."""
    from transferability import memory
    return memory.features_mb(P, runs.FeatureJob(wildcards.split, int(wildcards.seed), wildcards.network,
                                                 wildcards.target))


def source_model(wildcards):
    """A transfer network's input: the model.pt of the base it copies layers from (none for RnB)."""
    net = runs.Network(wildcards.split, int(wildcards.seed), wildcards.variant, int(wildcards.n))
    base = net.source_base
    return [str(base.file("model.pt"))] if base else []
