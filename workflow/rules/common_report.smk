# Input functions and settings of the tables, figures and report (report.smk).
# The paper's EDM rows are EDM's published networks; the tables show them beside EDM retrained
# here (tables.<part>.edm) when tables.<part>.edm_published names an imported model, and with
# tables.published_grids over Table 4's rows and Table 5's grid too (aot.settings.run: the rows
# and models of those grids, the published networks' included).


published_model = SETTINGS.published_model


def edm_models(part):
    """The part's EDM baselines: the published network (if any) and the one retrained here."""
    return [m for m in (published_model(part), config["tables"][part]["edm"]) if m]


def table12_fids(part):
    aot = config["tables"][part]["aot"]
    sets = [(m, default_key()) for m in edm_models(part)]
    sets += [(aot, default_key()), (aot, best_key(aot))]
    return sorted({p for m, k in sets for p in fid_set(m, k)})


def dg_models(part):
    """(model, sampler key, discriminator mode) of Table 3's guided rows for one part."""
    aot = config["tables"][part]["aot"]
    return [(m, default_key(), "plain") for m in edm_models(part)] + [
        (aot, best_key(aot), "plain"),
        (aot, best_key(aot), "aot"),
    ]


def table3_fids():
    out = set()
    for part in PARTS:
        aot = config["tables"][part]["aot"]
        for edm in edm_models(part):
            out.update(fid_set(edm, default_key()))
        out.update(fid_set(aot, best_key(aot)))
        if DG_CONFIG["enabled"]:
            for model, key, mode in dg_models(part):
                out.update(fid_set(model, guided_key(key, mode)))
    return sorted(out)


def table4_fids(models=None):
    """Table 4's FID results (those of `models` only, when given): every row of
    SETTINGS.table4_rows() at every rho of sampling.table4."""
    t4 = SAMPLING["table4"]
    rows = SETTINGS.table4_rows()
    return sorted(
        {
            p
            for row in rows
            if models is None or row["model"] in models
            for rho in t4["rho"]
            for p in fid_set(row["model"], key_for(row["num_steps"], rho))
        }
    )


def table5_fids(models=None):
    """Table 5's FID results (those of `models` only, when given): every model of
    SETTINGS.table5_models() at every NFE x rho of sampling.table5."""
    t5 = SAMPLING["table5"]
    every = SETTINGS.table5_models()
    models = every if models is None else [m for m in every if m in models]
    return sorted(
        {
            p
            for m in models
            for nfe in t5["nfe"]
            for rho in t5["rho"]
            for p in fid_set(m, key_for(steps_for_nfe(nfe, SOLVER), rho))
        }
    )


def part_models(part):
    return [*edm_models(part), config["tables"][part]["aot"]]


def table_files(i):
    return [f"{RESULTS}/tables/table{i}.{ext}" for ext in ("csv", "md", "tex")]


def table_outputs(i):
    """Table i's files; the CSV goes into `snakemake --report` with its caption."""
    csv, md, tex = table_files(i)
    return [report(csv, caption=f"../report/table{i}.rst", category="Tables"), md, tex]


def figure_files(name):
    return [f"{RESULTS}/figures/{name}.png", f"{RESULTS}/figures/{name}.pdf"]


def figure_outputs(name):
    png, pdf = figure_files(name)
    return [report(png, caption=f"../report/{name}.rst", category="Figures"), pdf]


def out_prefix(wildcards, output):
    """The output path without its extension: what `aot report` writes .csv/.md/.tex or .png/.pdf to."""
    return os.path.splitext(output[0])[0]


def report_flags(settings):
    """Options of `aot report table|figure`: the given ones and Table 5's rho values."""
    return flags({**settings, "rhos": [fmt(r) for r in SAMPLING["table5"]["rho"]]})


def table_flags(number):
    """Options of `aot report table`: the run's dataset too (the paper's numbers are CIFAR-10's)."""
    return report_flags({"table": number, "dataset": config["dataset"]["name"]})


def diagnostics_input(part, which):
    """Trajectory diagnostics of a part at the first (the paper's 18) or the last (the paper's
    Figure 6: 10) configured step count."""
    steps = DIAGNOSTICS["steps"][0] if which == "first" else DIAGNOSTICS["steps"][-1]
    return [diagnostics_path(part, steps)]


def diagnostics_networks(wildcards):
    """The networks of a part's trajectory diagnostics: EDM retrained here, EDM's published
    network (when configured) and EDM-AOT, all from the same latents."""
    part = config["tables"][wildcards.part]
    names = [part["edm"], part.get("edm_published"), part["aot"]]
    return [network_path(m) for m in names if m]


def network_flags(wildcards, input):
    """`--network PATH` for every input network of a diagnostics rule (its `networks` input)."""
    return " ".join(f"--network {shlex.quote(p)}" for p in input.networks)


def samples_input(part):
    """Figures 10, 11: the first sample set of each setting of Table 1 or 2 (the part's EDM
    baselines and EDM-AOT at EDM's sampler, EDM-AOT at its best), one panel each."""
    aot = config["tables"][part]["aot"]
    sets = [(m, default_key()) for m in edm_models(part)]
    sets += [(aot, default_key()), (aot, best_key(aot))]
    return [sample_path(m, k, 0) for m, k in dict.fromkeys(sets)]


def figure1_fids():
    """Figure 1: Table 5's FID results of every part's EDM baselines and EDM-AOT (one panel a
    part: unconditional, conditional)."""
    return sorted({p for part in PARTS for p in table5_fids(part_models(part))})


def curvature_inputs():
    steps = DIAGNOSTICS["steps"]
    paths = {diagnostics_path(p, s) for p in PARTS for s in steps}
    return sorted(p.replace(".npz", ".json") for p in paths)
