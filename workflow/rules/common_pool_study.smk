# Input functions of the pool-size study (pool_study.smk): the study's models and sample sets.
#
# For a fixed per-GPU batch B (pool_study.batch_gpu), one EDM-AOT model per pool size N and part,
# and per part one model without AOT. Each takes the settings of the part's EDM-AOT model of
# `tables` with pool_study.train, B and N on top. A study model whose settings equal a trained model
# of `models` is that model (trained once, by the same `train` job); the others are registered by
# aot.settings as pool-<part>-n<N> and pool-<part>-noaot, so that the `train` and `generate` rules make
# them. Class-wise pools (cond) only where N / classes >= pool_study.min_per_class.

POOL_STUDY = config["pool_study"]
# [{part, N, model, new, train, problem}], derived (and registered in MODELS) by aot.settings
POOL_STUDY_ENTRIES = SETTINGS.pool_study_entries


def check_pool_study(wildcards=None):
    """A study model that the run's training resources cannot train is refused when the study is
    asked for (an input function of its rules), not when `all` is."""
    problems = SETTINGS.pool_study_problems()
    if problems:
        raise WorkflowError(problems[0])
    return []


def pool_study_models(part=None):
    """The study's model names (of one part), each once, in table order."""
    return list(
        dict.fromkeys(
            e["model"] for e in POOL_STUDY_ENTRIES if part is None or e["part"] == part
        )
    )


def pool_study_keys():
    """The sample sets of every study model: each NFE of the study at each rho of Table 5."""
    return [
        key_for(steps_for_nfe(nfe_, SOLVER), rho)
        for nfe_ in POOL_STUDY["nfe"]
        for rho in SAMPLING["table5"]["rho"]
    ]


def pool_study_fids():
    return sorted(
        {
            p
            for m in pool_study_models()
            for k in pool_study_keys()
            for p in fid_set(m, k)
        }
    )


def pool_study_networks(part=None):
    return [network_path(m) for m in pool_study_models(part)]


def pool_study_diagnostics_key():
    return key_for(DIAGNOSTICS["steps"][0], DIAGNOSTICS["rho"])


def pool_study_diagnostics(part):
    return f"{RESULTS}/pool_study/diagnostics-{part}-{pool_study_diagnostics_key()}.npz"


def pool_study_diagnostics_json():
    return [
        pool_study_diagnostics(p).replace(".npz", ".json") for p in POOL_STUDY["parts"]
    ]


def pool_study_diagnostics_flags(wildcards):
    """Diagnostics options of a part: one --name per network (the model names), then the sampler."""
    names = " ".join(
        f"--name {shlex.quote(n)}" for n in pool_study_models(wildcards.part)
    )
    return f"{names} {diagnostics_flags(wildcards)}"


def pool_study_report_flags():
    """Options of `aot report pool-study`: the rho grid and the NFE columns."""
    return flags(
        {
            "rhos": [fmt(r) for r in SAMPLING["table5"]["rho"]],
            "nfe": POOL_STUDY["nfe"],
        }
    )


def pool_study_report_inputs():
    """Table 6 and its figure where `snakemake pool_study` has made them: the run report includes
    them (it reads every table and figure of the run) and is remade after them."""
    return [p for p in table_files(6) + figure_files("pool_study") if os.path.exists(p)]
