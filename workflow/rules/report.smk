# Stage 6: the paper's tables and figures from the per-job JSON results, and the run's report
# results/<run>/README.md. Named targets: table1 ... table5, figure1 ... figure11, curvature,
# tables, figures, report. `snakemake table4` builds Table 4 and only what it needs. They take
# seconds each, so on a cluster they run where Snakemake runs (localrule), never as Slurm jobs.

# table number -> the FID results it is made from
TABLES = {
    **({1: table12_fids("uncond")} if "uncond" in PARTS else {}),
    **({2: table12_fids("cond")} if "cond" in PARTS else {}),
    3: table3_fids(),
    4: table4_fids(),
    5: table5_fids(),
}

# figure number -> (inputs, options of `aot report figure`), as the paper's captions say
# (docs/fidelity.md, section 8, states each, and tests/test_fidelity_figures.py checks it): Figure 1
# one panel a part; Figure 3 EDM's final images (panel a) beside the single Euler step's estimate
# from sigma_max (step 0); Figure 9 the same step, per class; Figure 6 unconditional at the last
# diagnostics step count (10), Figures 2, 7 unconditional and 8 conditional at the first (18);
# Figure 5 marks the fewest steps among the FIDs tied at the paper's two decimals; Figures 10, 11
# the settings of Tables 1 and 2 (a part left out of `tables` has none of its figures).
FIGURES = {
    1: (figure1_fids(), {"paper_baselines": True}),
    4: (table4_fids(), {}),
    5: (table5_fids(), {"decimals": 2}),
}
if "uncond" in PARTS:
    FIGURES.update(
        {
            2: (diagnostics_input("uncond", "first"), {"kind": "strip"}),
            3: (
                diagnostics_input("uncond", "first"),
                {"kind": "denoised-grid", "step": 0, "final_images": True},
            ),
            6: (diagnostics_input("uncond", "last"), {"kind": "strip"}),
            7: (diagnostics_input("uncond", "first"), {"kind": "strip"}),
            10: (samples_input("uncond"), {"kind": "samples"}),
        }
    )
if "cond" in PARTS:
    FIGURES.update(
        {
            8: (diagnostics_input("cond", "first"), {"kind": "strip"}),
            9: (
                diagnostics_input("cond", "first"),
                {"kind": "denoised-grid", "step": 0, "by_class": True},
            ),
            11: (samples_input("cond"), {"kind": "samples"}),
        }
    )
FIGURES = dict(sorted(FIGURES.items()))

ALL_TABLES = [f for i in TABLES for f in table_files(i)]
ALL_FIGURES = [f for i in FIGURES for f in figure_files(f"figure{i}")]
ALL_FIGURES += figure_files("curvature")

for _i in TABLES:

    rule:
        name:
            f"table{_i}"
        input:
            TABLES[_i],
        output:
            table_outputs(_i),
        log:
            f"{LOGS}/report/table{_i}.log",
        benchmark:
            f"{BENCH}/report/table{_i}.tsv"
        localrule: True
        conda:
            CONDA_ENV
        threads: 1
        resources:
            **resources_for("report"),
        params:
            aot=AOT_CLI,
            args=table_flags(_i),
            prefix=out_prefix,
        shell:
            "{params.aot} report table {params.args} --out-prefix {params.prefix:q} "
            "{input:q} > {log:q} 2>&1"


for _i in FIGURES:

    rule:
        name:
            f"figure{_i}"
        input:
            FIGURES[_i][0],
        output:
            figure_outputs(f"figure{_i}"),
        log:
            f"{LOGS}/report/figure{_i}.log",
        benchmark:
            f"{BENCH}/report/figure{_i}.tsv"
        localrule: True
        conda:
            CONDA_ENV
        threads: 1
        resources:
            **resources_for("report"),
        params:
            aot=AOT_CLI,
            args=report_flags({"figure": _i, **FIGURES[_i][1]}),
            prefix=out_prefix,
        shell:
            "{params.aot} report figure {params.args} --out-prefix {params.prefix:q} "
            "{input:q} > {log:q} 2>&1"


rule curvature:
    input:
        curvature_inputs(),
    output:
        figure_outputs("curvature"),
    log:
        f"{LOGS}/report/curvature.log",
    benchmark:
        f"{BENCH}/report/curvature.tsv"
    localrule: True
    conda:
        CONDA_ENV
    threads: 1
    resources:
        **resources_for("report"),
    params:
        aot=AOT_CLI,
        prefix=out_prefix,
    shell:
        "{params.aot} report figure --figure curvature --out-prefix {params.prefix:q} "
        "{input:q} > {log:q} 2>&1"


localrules:
    run_config,
    tables,
    figures,


rule run_config:
    output:
        f"{RESULTS}/config.json",
    log:
        f"{LOGS}/run_config.log",
    params:
        config=json.dumps(config, sort_keys=True),
    run:
        from aot.files import write_text_atomic

        write_text_atomic(output[0], f"{params.config}\n")


rule report:
    input:
        config=f"{RESULTS}/config.json",
        tables=ALL_TABLES,
        figures=ALL_FIGURES,
        pool_study=pool_study_report_inputs(),
        significance=significance_report_inputs(),
    output:
        f"{RESULTS}/README.md",
    log:
        f"{LOGS}/report/readme.log",
    benchmark:
        f"{BENCH}/report/readme.tsv"
    localrule: True
    conda:
        CONDA_ENV
    threads: 1
    resources:
        **resources_for("report"),
    params:
        aot=AOT_CLI,
        run_dir=lambda wildcards, output: os.path.dirname(output[0]),
        bench=BENCH,
    shell:
        "{params.aot} report readme --run-dir {params.run_dir:q} --config {input.config:q} "
        "--benchmarks {params.bench:q} --out {output:q} > {log:q} 2>&1"


rule tables:
    input:
        ALL_TABLES,


rule figures:
    input:
        ALL_FIGURES,
