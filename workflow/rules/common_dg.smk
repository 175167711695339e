# Input functions and settings of discriminator guidance (dg.smk).


DG_CLASSIFIER_FOLDER = (
    "https://drive.google.com/drive/folders/1gb68C13-QOt8yA6ZnnS6G5pVIlPO7j_y"
)


def guided_key(key, mode):
    """The key of the sample set made like `key` with DG's discriminator of the given mode."""
    return sampler_key(**{**parse_key(key), "guidance": mode})


def dg_base_key(model):
    """The sample set a model's discriminator trains on: the Table 3 sampler's first repeat."""
    part = "cond" if MODELS[model]["cond"] else "uncond"
    return best_key(model) if model == config["tables"][part]["aot"] else default_key()


def dg_classifier():
    """DG's ADM classifier file, or None when the feature extractor is trained from scratch."""
    if DG["enabled"] and DG["feature_extractor"] != "scratch":
        return DG["feature_extractor"]
    return None


def dg_feature_inputs():
    return {"feature_extractor": dg_classifier()} if dg_classifier() else {}


def dg_train_flags(wildcards):
    cond = MODELS[wildcards.model]["cond"]
    return flags(
        {
            "cond": cond,
            "aot": wildcards.mode == "aot",
            "pool_size": DG["pool_size"]["cond" if cond else "uncond"],
            "feature_extractor": DG["feature_extractor"],
            "num_images": DG["collect_images"],
            "batch": DG["batch"],
            "epochs": DG["epochs"],
            "lr": DG["lr"],
            "weight_decay": DG["weight_decay"],
            "device": DEVICE,
        }
    )


def dg_generate_flags(wildcards):
    return flags(
        {
            "model_name": wildcards.model,
            "seeds": seeds_for(wildcards.rep),
            **sampler_settings(wildcards.key),
            **{
                k: DG[k]
                for k in (
                    "dg_weight_1st_order",
                    "dg_weight_2nd_order",
                    "time_min",
                    "time_max",
                    "boosting",
                )
            },
            "batch": config["generate"]["batch"],
            "shard_size": config["generate"]["shard_size"],
            "device": DEVICE,
        }
    )


def check_dg_config():
    """Cross-field checks of the dg section (see check_config)."""
    if DG["enabled"]:
        for key in (
            "feature_extractor",
            "collect_images",
            "batch",
            "epochs",
            "pool_size",
        ):
            if key not in DG:
                fail(f"dg.{key} is required when dg.enabled is true")
        if DG["collect_images"] > FID["num_images"]:
            fail(
                f"dg.collect_images {DG['collect_images']} exceeds fid.num_images "
                f"{FID['num_images']}: the discriminator is trained on the model's first "
                "sample set, never on a regenerated one"
            )
        if DG["time_min"] >= DG["time_max"]:
            fail(
                f"dg.time_min {DG['time_min']} must be below dg.time_max {DG['time_max']}"
            )
