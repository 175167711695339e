# Input functions and settings of the tables, figures and report (report.smk).


def table12_fids(part):
    edm, aot = config["tables"][part]["edm"], config["tables"][part]["aot"]
    sets = [(edm, default_key()), (aot, default_key()), (aot, best_key(aot))]
    return sorted({p for m, k in sets for p in fid_set(m, k)})


def dg_models(part):
    """(model, sampler key, discriminator mode) of Table 3's guided rows for one part."""
    edm, aot = config["tables"][part]["edm"], config["tables"][part]["aot"]
    return [
        (edm, default_key(), "plain"),
        (aot, best_key(aot), "plain"),
        (aot, best_key(aot), "aot"),
    ]


def table3_fids():
    out = set()
    for part in ("uncond", "cond"):
        edm, aot = config["tables"][part]["edm"], config["tables"][part]["aot"]
        out.update(fid_set(edm, default_key()))
        out.update(fid_set(aot, best_key(aot)))
        if DG["enabled"]:
            for model, key, mode in dg_models(part):
                out.update(fid_set(model, guided_key(key, mode)))
    return sorted(out)


def table4_fids():
    t4 = SAMPLING["table4"]
    return sorted(
        {
            p
            for row in t4["rows"]
            for rho in t4["rho"]
            for p in fid_set(row["model"], key_for(row["num_steps"], rho))
        }
    )


def table5_fids(models=None):
    t5 = SAMPLING["table5"]
    models = (
        t5["models"] if models is None else [m for m in t5["models"] if m in models]
    )
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
    return [config["tables"][part]["edm"], config["tables"][part]["aot"]]


def table_files(i):
    return [f"{R}/tables/table{i}.{ext}" for ext in ("csv", "md", "tex")]


def table_outputs(i):
    """Table i's files; the CSV goes into `snakemake --report` with its caption."""
    csv, md, tex = table_files(i)
    return [report(csv, caption=f"../report/table{i}.rst", category="Tables"), md, tex]


def figure_files(name):
    return [f"{R}/figures/{name}.png", f"{R}/figures/{name}.pdf"]


def figure_outputs(name):
    png, pdf = figure_files(name)
    return [report(png, caption=f"../report/{name}.rst", category="Figures"), pdf]


def out_prefix(wildcards, output):
    """The output path without its extension: what `aot report` writes .csv/.md/.tex or .png/.pdf to."""
    return os.path.splitext(output[0])[0]


def report_flags(settings):
    """Options of `aot report table|figure`: the given ones and Table 5's rho values."""
    return flags({**settings, "rhos": [fmt(r) for r in SAMPLING["table5"]["rho"]]})


def diagnostics_input(part, which):
    """Trajectory diagnostics of a part at the first or the last configured step count."""
    steps = DIAGNOSTICS["steps"][0] if which == "first" else DIAGNOSTICS["steps"][-1]
    return [diagnostics_path(part, steps)]


def samples_input(part):
    """The first sample set of the part's EDM-AOT model at its best sampler (Figures 10, 11)."""
    aot = config["tables"][part]["aot"]
    return [sample_path(aot, best_key(aot), 0)]


def curvature_inputs():
    steps = DIAGNOSTICS["steps"]
    paths = {diagnostics_path(p, s) for p in ("uncond", "cond") for s in steps}
    return sorted(p.replace(".npz", ".json") for p in paths)
