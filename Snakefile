# How transferable are features in deep neural networks? (Yosinski et al., NIPS 2014)
# Every rule calls the `transferability` CLI; the logic lives in src/transferability/.
from snakemake.utils import min_version

min_version("9.0")


# params.yaml, unless --configfile names another params file (a profile, workflow/params/): common.smk
# resolves it as the CLI does (transferability.params.resolve: a profile states what differs from the
# file it extends), not by Snakemake's merge, since the jobs read the file. (--config is refused in
# common.smk: the jobs read a params file, never Snakemake's config.)
if not (workflow.overwrite_configfiles or workflow.config_settings.config):

    configfile: "params.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/estimators.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        all_outputs(),
    default_target: True
