# EDM-AOT: "Improving Diffusion-Based Generative Models via Approximated Optimal Transport",
# reproduced end to end. See README.md; the target design is in the rule files' headers.
#
#   snakemake --profile slurm all                          # the paper, on a Slurm cluster
#   snakemake --profile slurm table4                       # one table, and only what it needs
#   snakemake --cores all --configfile config/demo.yaml    # the same DAG at toy scale, offline, CPU

import os

from snakemake.utils import min_version, validate

min_version("9.0")


# The paper's configuration, unless a --configfile replaces it (never merged: a demo or custom config
# must stand on its own, and the schema below checks that it does).
if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "config", "config.yaml")


validate(config, os.path.join(workflow.basedir, "workflow", "schemas", "config.schema.yaml"), set_default=True)


wildcard_constraints:
    model=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    solver=r"heun|euler",
    steps=r"\d+",
    rho=r"\d+(\.\d+)?",
    rep=r"\d+",
    mode=r"aot|plain",
    part=r"uncond|cond",


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/dg.smk"
include: "workflow/rules/report.smk"



localrules:
    all,


rule all:
    input:
        f"{R}/README.md",
    default_target: True


def fetch_targets():
    """Everything that needs the internet: run `snakemake fetch` on a login node first."""
    out = []
    if config["dataset"]["name"] == "cifar10" and str(config["dataset"].get("source", "")).startswith("http"):
        out.append(f"{DOWNLOADS}/cifar-10-python.tar.gz")
    if FID["features"] == "inception":
        out.append(f"{DOWNLOADS}/clean-fid/assets.json")
    out += [network_path(m) for m in IMPORTED]
    return out


localrules:
    fetch,


rule fetch:
    input:
        fetch_targets(),
