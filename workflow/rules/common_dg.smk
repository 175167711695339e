# Input functions and settings of discriminator guidance (dg.smk). Each discriminator's recipe
# comes from SETTINGS.dg_recipe(model, mode): the part's (dg.uncond, dg.cond: the paper's, for
# EDM-AOT's discriminators with and without AOT) or, for an EDM baseline's (a model without AOT,
# mode plain), DG's training recipe (dg.baseline.<part>) with the part's guided sampler. A
# discriminator is trained here unless dg.discriminators gives its file (DG's released heads,
# placed by hand), which is then imported instead.


DG_CLASSIFIER_FOLDER = (
    "https://drive.google.com/drive/folders/1gb68C13-QOt8yA6ZnnS6G5pVIlPO7j_y"
)
# Where DG's README publishes its discriminator heads (by file name).
DG_DISCRIMINATOR_FOLDERS = {
    "discriminator_60.pt": (
        "cifar_uncond",
        "https://drive.google.com/drive/folders/1Mf3F1yGfWT8bO0_iOBX-PWG3O-OLROE2",
    ),
    "discriminator_250.pt": (
        "cifar_cond",
        "https://drive.google.com/drive/folders/1P1u7cz7kY1BJDPVrPNiFcksy_HCHY_bI",
    ),
}


def guided_key(key, mode):
    """The key of the sample set made like `key` with DG's discriminator of the given mode."""
    return sampler_key(**{**parse_key(key), "guidance": mode})


dg_recipe = SETTINGS.dg_recipe
dg_classifier = SETTINGS.dg_classifier


def dg_base_key(model):
    """The sample set a model's discriminator trains on: the Table 3 sampler's first repeat."""
    part = part_of(model)
    return best_key(model) if model == config["tables"][part]["aot"] else default_key()


def guided_seeds():
    """The seeds of all repeats of a guided sample set, 'a-b': the fid.repeats x fid.num_images
    seeds right after those of the plain sample sets (seeds 0 to repeats x num_images - 1). A
    discriminator trains on the first dg.collect_images images of repeat 0 of a plain set, so no
    guided image starts from the noise of an image its discriminator has seen. Repeat r of a guided
    set is the r-th of fid.repeats equal parts."""
    n = FID_CONFIG["num_images"] * FID_CONFIG["repeats"]
    return seed_range(0, n, offset=n)


def given_discriminator(model, mode):
    """The discriminator file that dg.discriminators gives for (model, mode), or None."""
    return DG_CONFIG["discriminators"].get(model, {}).get(mode)


def given_discriminators():
    """{(model, mode): path} of every discriminator file given in the config."""
    return {
        (model, mode): path
        for model, modes in DG_CONFIG["discriminators"].items()
        for mode, path in modes.items()
    }


def discriminator_pairs_regex(pairs, given):
    """A constraint for the {model} wildcard of dg/{model}/{mode}/discriminator.pt that matches
    only where (model, mode) is (given=True) or is not (given=False) one of `pairs`: the model name
    followed by a lookahead on the mode that comes after it in the path."""
    alternatives = "|".join(
        re.escape(f"{model}/{mode}/") for model, mode in sorted(pairs)
    )
    if not pairs:
        return "(?!)" if given else MODEL_RE
    return f"(?{'=' if given else '!'}(?:{alternatives})){MODEL_RE}"


def dg_feature_inputs():
    return {"feature_extractor": dg_classifier()} if dg_classifier() else {}


def dg_placed_files():
    """Files of DG placed by hand (the ADM classifier, given discriminators): {path: message}."""
    out = {}
    if dg_classifier():
        out[dg_classifier()] = (
            f"error: DG feature extractor {dg_classifier()} is missing: download "
            "32x32_classifier.pt from the ADM_classifier folder of DG's checkpoints "
            f"({DG_CLASSIFIER_FOLDER}) and place it at {dg_classifier()}, "
            "or set dg.feature_extractor: scratch"
        )
    if DG_CONFIG["enabled"]:
        for (model, mode), path in given_discriminators().items():
            name = os.path.basename(path)
            if name in DG_DISCRIMINATOR_FOLDERS:
                folder, url = DG_DISCRIMINATOR_FOLDERS[name]
                where = f"download {name} from DG's {folder} checkpoints ({url})"
            else:
                where = (
                    "place the discriminator file of `aot dg train` or DG's train.py"
                )
            out[path] = (
                f"error: discriminator {path} of model {model} ({mode}) is missing: {where} "
                f"and place it at {path}, or remove dg.discriminators.{model}.{mode} to train one"
            )
    return out


def warn_missing_placed_files(log):
    """The files to place by hand that are missing, with where to get them: a warning each (and in
    `log`), without failing `snakemake fetch`."""
    lines = [
        message.replace("error: ", "to place by hand: ", 1)
        for path, message in dg_placed_files().items()
        if not os.path.exists(path)
    ]
    for line in lines:
        logger.warning(line)
    with open(log, "w") as fh:
        fh.write("".join(f"{line}\n" for line in lines))


def dg_import_inputs(wildcards):
    return {
        "discriminator": given_discriminator(wildcards.model, wildcards.mode),
        **dg_feature_inputs(),
    }


def dg_import_flags(wildcards):
    return flags(
        {
            "feature_extractor": dg_classifier(),
            "resolution": config["dataset"]["resolution"],
            "aot": wildcards.mode == "aot",
            "cond": MODELS[wildcards.model]["cond"],
        }
    )


def dg_train_flags(wildcards):
    recipe = dg_recipe(wildcards.model, wildcards.mode)
    return flags(
        {
            "cond": MODELS[wildcards.model]["cond"],
            "aot": wildcards.mode == "aot",
            # a pool only with AOT (flags() leaves out None)
            "pool_size": recipe["pool_size"] if wildcards.mode == "aot" else None,
            "feature_extractor": DG_CONFIG["feature_extractor"],
            "collect_images": DG_CONFIG["collect_images"],
            "batch": recipe["batch"],
            "epochs": recipe["epochs"],
            "lr": recipe["lr"],
            "weight_decay": recipe["weight_decay"],
            "device": DEVICE,
            # a requeued job continues from its saved state, stopping this long before its end
            "resume": True,
            "slurm_margin": WALLTIME["signal_s"],
        }
    )


def dg_sampler_settings(model, mode):
    """The guidance options of `aot dg generate` from the model's part."""
    recipe = dg_recipe(model, mode)
    return {
        k: recipe[k]
        for k in (
            "dg_weight_1st_order",
            "dg_weight_2nd_order",
            "time_min",
            "time_max",
            "boosting",
        )
    }


def dg_generate_flags(wildcards):
    """Options of `aot dg generate`: the seeds of all repeats of the guided set, the sampler, and
    the guidance of the model's part."""
    return flags(
        {
            "model_name": wildcards.model,
            "seeds": guided_seeds(),
            **sampler_settings(wildcards.key),
            **dg_sampler_settings(wildcards.model, wildcards.mode),
            "batch": config["generate"]["batch"],
            "shard_size": config["generate"]["shard_size"],
            "device": DEVICE,
            "slurm_margin": WALLTIME["signal_s"],
            "kept_dir": KEPT,
        }
    )
