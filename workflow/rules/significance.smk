# The significance study: a named target, not part of `all` (docs/significance.md).
#
#   snakemake --profile slurm significance
#   snakemake significance --cores all --configfile config/demo.yaml
#
# The replicates are trained by the `train` rule and their sample sets made and measured by the
# `generate` rule (aot.settings registers them as models); one report job turns the FID results
# into the Significance table and figure. With pool_study.replicates > 1, `pool_study` makes the
# same report for the pool-size study's N values.


for _study in ["significance"] + (
    ["pool_study"] if POOL_STUDY["replicates"] > 1 else []
):

    rule:
        name:
            f"{significance_name(_study)}_report"
        input:
            check_replicates(_study),
            networks=significance_networks(_study),
            fids=significance_fids(_study),
        output:
            table=significance_tables(_study),
            figure=figure_files(significance_name(_study)),
        log:
            f"{LOGS}/report/{significance_name(_study)}.log",
        benchmark:
            f"{BENCH}/report/{significance_name(_study)}.tsv"
        localrule: True
        conda:
            CONDA_ENV
        threads: 1
        resources:
            **resources_for("report"),
        params:
            aot=AOT_CLI,
            design=json.dumps(significance_design(_study), sort_keys=True),
            prefix=lambda wildcards, output: os.path.splitext(output.table[0])[0],
            figure=lambda wildcards, output: os.path.splitext(output.figure[0])[0],
        shell:
            "{params.aot} report significance --design {params.design:q} "
            "--out-prefix {params.prefix:q} --figure-prefix {params.figure:q} {input.fids:q} "
            "> {log:q} 2>&1"


localrules:
    significance,


rule significance:
    input:
        rules.significance_report.output,
