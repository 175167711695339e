# Input functions of the significance study (significance.smk): is the AOT gain real?
#
# K independently seeded training runs per model of `tables` (significance.replicates; aot.settings
# registers replicate r of a model as <model>-rep<r>, seed + r, and replicate 0 is the model
# itself), each measured at the study's settings with the run's FID protocol (the same sample
# seeds for every replicate). The report pairs EDM and EDM-AOT by replicate (docs/significance.md).
# With pool_study.replicates > 1 the pool-size study's models are replicated the same way and every
# N is compared with the model without AOT.

SIGNIFICANCE = config["significance"]


def check_replicates(study):
    """A model that cannot be replicated (an imported network) is refused when the study is asked
    for (an input function of its rules), not when `all` is."""

    def check(wildcards=None):
        problems = SETTINGS.replicate_problems(study)
        if study == "pool_study":
            problems = SETTINGS.pool_study_problems() + problems
        if problems:
            raise WorkflowError(problems[0])
        return []

    return check


def significance_parts():
    return [p for p in SIGNIFICANCE["parts"] if p in PARTS]


def nfe_setting(nfe_):
    """An NFE point of Table 5: the sets at every rho of sampling.table5.rho (the best counts)."""
    keys = [
        key_for(steps_for_nfe(nfe_, SOLVER), rho) for rho in SAMPLING["table5"]["rho"]
    ]
    return {
        "name": f"NFE {nfe_}, best rho",
        "kind": "nfe",
        "nfe": nfe_,
        "edm": keys,
        "aot": keys,
    }


def significance_settings(part):
    """The settings measured for a part: the samplers of Tables 1-2 (both models at EDM's sampler;
    EDM at its sampler against EDM-AOT at its best) and the NFE points, each the best over rho.
    """
    aot = config["tables"][part]["aot"]
    out = []
    if SIGNIFICANCE["samplers"]:
        d = default_key()
        out.append(
            {
                "name": f"both at the EDM sampler (NFE {key_nfe(d)})",
                "kind": "default",
                "nfe": key_nfe(d),
                "edm": [d],
                "aot": [d],
            }
        )
        b = best_key(aot)
        if b != d:
            out.append(
                {
                    "name": f"EDM at NFE {key_nfe(d)} vs EDM-AOT at its best (NFE {key_nfe(b)})",
                    "kind": "tables",
                    "nfe": key_nfe(b),
                    "edm": [d],
                    "aot": [b],
                }
            )
    nfes = SIGNIFICANCE["nfe"]
    for n in SAMPLING["table5"]["nfe"] if nfes is None else nfes:
        out.append(nfe_setting(n))
    return out


def pool_study_nfe_settings():
    return [nfe_setting(n) for n in POOL_STUDY["nfe"]]


def significance_design(study):
    """The comparisons of a study: per part, the EDM and EDM-AOT arms (model names by replicate)
    and the settings; for the pool-size study, per part and N, the model without AOT against
    the N model. What `aot report significance` reads (as JSON)."""
    comparisons = []
    if study == "significance":
        for part in significance_parts():
            comparisons.append(
                {
                    "part": part,
                    "label": "EDM-AOT vs EDM",
                    "edm": SETTINGS.replicates(study, part, "edm"),
                    "aot": SETTINGS.replicates(study, part, "aot"),
                    "settings": significance_settings(part),
                }
            )
    else:
        for part in dict.fromkeys(e["part"] for e in POOL_STUDY_ENTRIES):
            for e in POOL_STUDY_ENTRIES:
                if e["part"] != part or e["N"] is None:
                    continue
                comparisons.append(
                    {
                        "part": part,
                        "label": f"N = {e['N']} vs without AOT",
                        "edm": SETTINGS.replicates(study, part, "edm"),
                        "aot": SETTINGS.replicates(study, part, f"n{e['N']}"),
                        "settings": pool_study_nfe_settings(),
                    }
                )
    return {
        "study": study,
        "level": SIGNIFICANCE["level"],
        "power": SIGNIFICANCE["power"],
        "dataset": config["dataset"]["name"],
        "comparisons": comparisons,
    }


def significance_fids(study):
    """Every FID result the study's report reads: each replicate of each arm at its settings' sets."""
    out = set()
    for c in significance_design(study)["comparisons"]:
        for arm in ("edm", "aot"):
            for model in c[arm]:
                for s in c["settings"]:
                    for key in s[arm]:
                        out.update(fid_set(model, key))
    return sorted(out)


def significance_networks(study):
    return sorted(
        {
            network_path(m)
            for c in significance_design(study)["comparisons"]
            for arm in ("edm", "aot")
            for m in c[arm]
        }
    )


def significance_name(study):
    """The files of a study's report: tables/<name>.* and figures/<name>.*."""
    return "significance" if study == "significance" else "significance_pool_study"


def significance_tables(study):
    name = significance_name(study)
    return [f"{RESULTS}/tables/{name}.{ext}" for ext in ("csv", "md", "tex")]


def significance_report_inputs():
    """The significance tables and figures where `snakemake significance` (or the replicated
    pool-size study) has made them: the run report includes them and is remade after them.
    """
    studies = ("significance", "pool_study")
    files = [
        f
        for s in studies
        for f in significance_tables(s) + figure_files(significance_name(s))
    ]
    return [p for p in files if os.path.exists(p)]
