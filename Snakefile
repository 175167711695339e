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


localrules:
    all,
    fetch,


rule all:
    default_target: True
    input:
        f"{R}/README.md",


# Everything that needs the internet: run `snakemake fetch` on a login node first.
rule fetch:
    input:
        fetch_targets(),
