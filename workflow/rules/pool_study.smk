# The pool-size study (Table 6): a named target, not part of `all`.
#
#   snakemake --profile slurm pool_study
#   snakemake pool_study --cores all --configfile config/demo.yaml
#
# The study's models are trained by the `train` rule and their sample sets made and measured by the
# `generate` rule (aot.settings registers them); the curvature of every study
# model of a part comes from one diagnostics job (the same latents for all), and Table 6 with its
# figure from one report job.


rule pool_study_diagnostics:
    input:
        networks=lambda wildcards: pool_study_networks(wildcards.part),
    output:
        npz=f"{RESULTS}/pool_study/diagnostics-{{part}}-{{key}}.npz",
        json=f"{RESULTS}/pool_study/diagnostics-{{part}}-{{key}}.json",
    log:
        f"{LOGS}/pool_study/diagnostics-{{part}}-{{key}}.log",
    benchmark:
        f"{BENCH}/pool_study/diagnostics-{{part}}-{{key}}.tsv"
    wildcard_constraints:
        key=SAMPLER_RE,
    conda:
        CONDA_ENV
    threads: threads_for("diagnostics")
    resources:
        **resources_for("diagnostics"),
    params:
        aot=AOT_CLI,
        networks=network_flags,
        args=pool_study_diagnostics_flags,
    shell:
        "{params.aot} diagnostics {params.networks} {params.args} "
        "--threads {resources.cpus_per_task} --out {output.npz:q} > {log:q} 2>&1"


rule table6:
    input:
        check_pool_study,
        networks=pool_study_networks(),
        fids=pool_study_fids(),
        diagnostics=pool_study_diagnostics_json(),
    output:
        table=table_files(6),
        figure=figure_files("pool_study"),
    log:
        f"{LOGS}/report/table6.log",
    benchmark:
        f"{BENCH}/report/table6.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        **resources_for("report"),
    params:
        aot=AOT_CLI,
        args=pool_study_report_flags(),
        prefix=lambda wildcards, output: os.path.splitext(output.table[0])[0],
        figure=lambda wildcards, output: os.path.splitext(output.figure[0])[0],
        runs=lambda wildcards, input: " ".join(
            f"--train-dir {shlex.quote(os.path.dirname(p))}" for p in input.networks
        ),
        diagnostics=lambda wildcards, input: " ".join(
            f"--diagnostics {shlex.quote(p)}" for p in input.diagnostics
        ),
    shell:
        "{params.aot} report pool-study {params.args} {params.runs} {params.diagnostics} "
        "--out-prefix {params.prefix:q} --figure-prefix {params.figure:q} {input.fids:q} "
        "> {log:q} 2>&1"


localrules:
    pool_study,


rule pool_study:
    input:
        rules.table6.output,
        # with replicates: the study's N values against the model without AOT (significance.smk)
        significance_tables("pool_study")
        + figure_files(significance_name("pool_study"))
        if POOL_STUDY["replicates"] > 1
        else [],
