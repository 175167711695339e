# EDM-AOT: "Improving Diffusion-Based Generative Models via Approximated Optimal Transport",
# reproduced end to end. See README.md; the config keys are in config/README.md.
#
#   snakemake --profile slurm all                          # the paper, on a Slurm cluster
#   snakemake --profile slurm table4                       # one table, and only what it needs
#   snakemake --cores all --configfile config/demo.yaml    # the same DAG at toy scale, offline, CPU
#
# The configuration is config/config.yaml (the paper) unless --configfile names a complete one
# (config/demo.yaml); a partial file (a site's `resources:`) is layered onto the paper's. common.smk
# does that, checks the result against workflow/schemas/config.schema.yaml (which sets the
# defaults) and then across keys, before any job runs.

from snakemake.utils import min_version

min_version("9.0")


include: "workflow/rules/common.smk"


# --- Container (docs/software.md) ---------------------------------------------------------------
# With `--software-deployment-method apptainer` every job runs in the image that the config's
# `container:` names (built from envs/Dockerfile or envs/aot.def); without that flag the image is
# not used, and without `container:` (the default) jobs stay in the venv or the conda environment.
from snakemake.settings.types import DeploymentMethod

if (
    DeploymentMethod.APPTAINER in workflow.deployment_settings.deployment_method
    and not config.get("container")
):
    fail(
        "container: --software-deployment-method apptainer needs the jobs' image; set "
        "container: docker://... or the path of a .sif file (docs/software.md)"
    )


container: config.get("container")


# --- end of container block ---------------------------------------------------------------------


# `group_slot`: one per job of the group `sets`; the cluster profile gives each Slurm submission
# one (`resources: [group_slot=1]`), so the members of a grouped job run one after the other on
# its GPU and node (profiles/slurm/config.yaml).
resource_scopes:
    group_slot="local",


wildcard_constraints:
    model=MODEL_RE,
    key=KEY_RE,
    rep=r"\d+",
    mode=GUIDANCE_RE,
    part=r"uncond|cond",


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/dg.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/pool_study.smk"
include: "workflow/rules/significance.smk"


localrules:
    all,
    fetch,


rule all:
    default_target: True
    input:
        f"{RESULTS}/README.md",


# Everything that needs the internet: run `snakemake fetch` on a login node first. Files that must
# be placed by hand (DG's classifier and heads, from Google Drive) are listed with where to get
# them, without failing the downloads.
rule fetch:
    input:
        fetch_targets(),
    log:
        f"{LOGS}/fetch.log",
    run:
        warn_missing_placed_files(log[0])
