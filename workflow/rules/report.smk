# Stage 6: the paper's tables and figures from the per-job JSON results, and the run's report
# results/<run>/README.md. Named targets: table1 ... table5, figure1 ... figure11, curvature,
# tables, figures, report. `snakemake table4` builds Table 4 and only what it needs.

TABLE_INPUTS = {
    1: lambda: table12_fids("uncond"),
    2: lambda: table12_fids("cond"),
    3: table3_fids,
    4: table4_fids,
    5: table5_fids,
}
TABLE_FILES = {i: [f"{R}/tables/table{i}.{ext}" for ext in ("csv", "md", "tex")] for i in TABLE_INPUTS}


def table_outputs(i):
    """Table i's files; the CSV goes into `snakemake --report` with its caption."""
    csv, md, tex = TABLE_FILES[i]
    return [report(csv, caption=f"../report/table{i}.rst", category="Tables"), md, tex]


def figure_outputs(name, files):
    png, pdf = files
    return [report(png, caption=f"../report/{name}.rst", category="Figures"), pdf]

DIAG_STEPS = config["diagnostics"].get("steps", [18, 8])


def _diag(part, which):
    steps = DIAG_STEPS[0] if which == "first" else DIAG_STEPS[-1]
    return diagnostics_path(part, steps)


# figure number -> (inputs, extra command-line arguments)
FIGURES = {
    1: (lambda: table5_fids(part_models("uncond")), "--paper-baselines"),
    2: (lambda: [_diag("uncond", "first")], "--kind strip"),
    3: (lambda: [_diag("uncond", "first")], "--kind denoised-grid"),
    4: (table4_fids, ""),
    5: (table5_fids, ""),
    6: (lambda: [_diag("cond", "first")], "--kind strip"),
    7: (lambda: [_diag("uncond", "last")], "--kind strip"),
    8: (lambda: [_diag("cond", "last")], "--kind strip"),
    9: (lambda: [_diag("cond", "first")], "--kind denoised-grid"),
    10: (lambda: [sample_path(config["tables"]["uncond"]["aot"], best_key(config["tables"]["uncond"]["aot"]), 0)], "--kind samples"),
    11: (lambda: [sample_path(config["tables"]["cond"]["aot"], best_key(config["tables"]["cond"]["aot"]), 0)], "--kind samples"),
}
FIGURE_FILES = {i: [f"{R}/figures/figure{i}.png", f"{R}/figures/figure{i}.pdf"] for i in FIGURES}
CURVATURE_FILES = [f"{R}/figures/curvature.png", f"{R}/figures/curvature.pdf"]
CURVATURE_INPUTS = sorted({diagnostics_path(p, s).replace(".npz", ".json") for p in ("uncond", "cond") for s in DIAG_STEPS})


for _i in TABLE_INPUTS:

    rule:
        name:
            f"table{_i}"
        input:
            TABLE_INPUTS[_i](),
        output:
            table_outputs(_i),
        params:
            number=_i,
            prefix=f"{R}/tables/table{_i}",
            rhos=",".join(fmt(r) for r in SAMPLING["table5"]["rho"]),
        log:
            f"{LOGS}/report/table{_i}.log",
        benchmark:
            f"{BENCH}/report/table{_i}.tsv"
        threads: 1
        resources:
            **resources_for("report", 15, 4000),
        conda:
            ENV
        shell:
            "{PY} -m aot.report table --table {params.number} --out-prefix {params.prefix:q} "
            "--rhos {params.rhos} {input:q} > {log:q} 2>&1"


for _i in FIGURES:

    rule:
        name:
            f"figure{_i}"
        input:
            FIGURES[_i][0](),
        output:
            figure_outputs(f"figure{_i}", FIGURE_FILES[_i]),
        params:
            number=_i,
            prefix=f"{R}/figures/figure{_i}",
            extra=FIGURES[_i][1],
            rhos=",".join(fmt(r) for r in SAMPLING["table5"]["rho"]),
        log:
            f"{LOGS}/report/figure{_i}.log",
        benchmark:
            f"{BENCH}/report/figure{_i}.tsv"
        threads: 1
        resources:
            **resources_for("report", 15, 4000),
        conda:
            ENV
        shell:
            "{PY} -m aot.report figure --figure {params.number} {params.extra} --rhos {params.rhos} "
            "--out-prefix {params.prefix:q} {input:q} > {log:q} 2>&1"


rule curvature:
    input:
        CURVATURE_INPUTS,
    output:
        figure_outputs("curvature", CURVATURE_FILES),
    params:
        prefix=f"{R}/figures/curvature",
    log:
        f"{LOGS}/report/curvature.log",
    benchmark:
        f"{BENCH}/report/curvature.tsv"
    threads: 1
    resources:
        **resources_for("report", 15, 4000),
    conda:
        ENV
    shell:
        "{PY} -m aot.report figure --figure curvature --out-prefix {params.prefix:q} {input:q} > {log:q} 2>&1"


localrules:
    run_config,
    tables,
    figures,


rule run_config:
    output:
        f"{R}/config.json",
    log:
        f"{LOGS}/run_config.log",
    params:
        config=json.dumps(config, sort_keys=True),
    run:
        from aot.files import write_text_atomic

        write_text_atomic(output[0], params.config + "\n")


rule report:
    input:
        config=f"{R}/config.json",
        tables=[f for files in TABLE_FILES.values() for f in files],
        figures=[f for files in FIGURE_FILES.values() for f in files] + CURVATURE_FILES,
    output:
        f"{R}/README.md",
    params:
        run_dir=R,
        bench=BENCH,
    log:
        f"{LOGS}/report/readme.log",
    benchmark:
        f"{BENCH}/report/readme.tsv"
    threads: 1
    resources:
        **resources_for("report", 15, 4000),
    conda:
        ENV
    shell:
        "{PY} -m aot.report readme --run-dir {params.run_dir:q} --config {input.config:q} "
        "--benchmarks {params.bench:q} --out {output:q} > {log:q} 2>&1"


rule tables:
    input:
        [f for files in TABLE_FILES.values() for f in files],


rule figures:
    input:
        [f for files in FIGURE_FILES.values() for f in files] + CURVATURE_FILES,
