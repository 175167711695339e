# Input functions of the pool-size study (pool_study.smk): the study's models and sample sets.
#
# For a fixed per-GPU batch B (pool_study.batch_gpu), one EDM-AOT model per pool size N and part,
# and per part one model without AOT. Each takes the settings of the part's EDM-AOT model of
# `tables` with pool_study.train, B and N on top. A study model whose settings equal a trained model
# of `models` is that model (trained once, by the same `train` job); the others are registered here
# as pool-<part>-n<N> and pool-<part>-noaot, so that the `train` and `generate` rules make
# them. Class-wise pools (cond) only where N / classes >= pool_study.min_per_class.

POOL_STUDY = config["pool_study"]
POOL_B = POOL_STUDY["batch_gpu"]
DATASET_CLASSES = {
    "cifar10": 10,
    "digits": 10,
}  # the built-in datasets (common_data.smk)
# Settings that do not change a model without AOT (its noise is never paired).
NO_AOT_IGNORED = ("pool_size", "cost")


def _comparable(settings, aot):
    return {k: v for k, v in settings.items() if aot or k not in NO_AOT_IGNORED}


def _study_settings(part, n):
    """Training settings of the study model of `part` with pool size n (None: without AOT)."""
    base = train_settings(config["tables"][part]["aot"])
    t = copy.deepcopy({**base, **POOL_STUDY["train"], "batch_gpu": POOL_B})
    t["pool_size"] = n if n is not None else t["pool_size"]
    if n is None and (t["pool_size"] % POOL_B or t["pool_size"] < POOL_B):
        t["pool_size"] = POOL_B
    return t


def _existing_model(cond, aot, settings):
    """The trained model of `models` with these settings (the tables' models first), or None."""
    preferred = [config["tables"][p][r] for p in PARTS for r in ("aot", "edm")]
    names = preferred + [m["name"] for m in config["models"]]
    for name in dict.fromkeys(names):
        m = MODELS[name]
        if m["source"] != "train" or m["cond"] != cond or m["aot"] != aot:
            continue
        if _comparable(train_settings(name), aot) == _comparable(settings, aot):
            return name
    return None


def _check_study_settings(name, t):
    where = f"pool_study ({name})"
    gpus = max(1, config["resources"]["train"]["gpus"]) * config["resources"][
        "train"
    ].get("nodes", 1)
    if t["pool_size"] % POOL_B or t["pool_size"] < POOL_B:
        fail(
            f"{where}: pool size N={t['pool_size']} is not a positive multiple of "
            f"pool_study.batch_gpu B={POOL_B}"
        )
    if t["batch"] % (POOL_B * gpus):
        fail(
            f"{where}: batch {t['batch']} is not a multiple of pool_study.batch_gpu {POOL_B} "
            f"x {gpus} GPU(s)"
        )


def _study_classes():
    """Classes of the training set (an EDM-format set: `dataset.classes`; None when not stated,
    and then no conditional N is left out)."""
    d = config["dataset"]
    if d["name"] == "edm":
        return d.get("classes") if d.get("labels") else None
    return DATASET_CLASSES.get(d["name"])


def pool_study_entries():
    """[{part, N (None: without AOT), model, new}] in table order, registering new models."""
    entries = []
    classes = _study_classes() or 0
    # the parts the run's tables have (a dataset without labels has no conditional part)
    for part in [p for p in POOL_STUDY["parts"] if p in PARTS]:
        cond = part == "cond"
        sizes = [None] + sorted(POOL_STUDY["pool_sizes"])
        for n in sizes:
            if cond and n is not None and n < POOL_STUDY["min_per_class"] * classes:
                continue
            aot = n is not None
            t = _study_settings(part, n)
            name = _existing_model(cond, aot, t)
            new = name is None
            if new:
                name = f"pool-{part}-n{n}" if aot else f"pool-{part}-noaot"
                if name in MODELS:
                    fail(
                        f"models: {name!r} is the name of a pool_study model, but its settings "
                        "differ from the study's; rename it"
                    )
                _check_study_settings(name, t)
            entries.append(
                {"part": part, "N": n, "model": name, "new": new, "train": t}
            )
    return entries


def register_pool_study(entries):
    """Make the new study models known to the `train` rule (MODELS, TRAINED)."""
    for e in entries:
        if e["new"] and e["model"] not in MODELS:
            MODELS[e["model"]] = {
                "name": e["model"],
                "cond": e["part"] == "cond",
                "aot": e["N"] is not None,
                "source": "train",
                "train": e["train"],
            }
            TRAINED.append(e["model"])


def check_pool_study():
    for nfe_ in POOL_STUDY["nfe"]:
        if SOLVER == "heun" and nfe_ % 2 == 0:
            fail(
                f"pool_study.nfe: {nfe_} is even, but Heun's NFE is 2 x steps - 1 (odd)"
            )


check_pool_study()
POOL_STUDY_ENTRIES = pool_study_entries()
register_pool_study(POOL_STUDY_ENTRIES)


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
    return f"{R}/pool_study/diagnostics-{part}-{pool_study_diagnostics_key()}.npz"


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
