# Settings and cross-key checks of the training set (data.smk): CIFAR-10, scikit-learn's digits, or
# an existing dataset in EDM's format (`dataset: {name: edm, path: ...}`), linked or copied into
# results/<run>/data/dataset.zip.

from aot.data import class_pool_warning

# name -> (channels, classes) of the built-in datasets
BUILTIN_DATASETS = {"cifar10": (3, 10), "digits": (1, 10)}
EDM_ONLY_KEYS = ("path", "labels", "classes")


def dataset_channels():
    d = config["dataset"]
    return d["channels"] if d["name"] == "edm" else BUILTIN_DATASETS[d["name"]][0]


def dataset_classes():
    """Number of classes when known from the config (None: unlabelled, or not stated)."""
    d = config["dataset"]
    if d["name"] == "edm":
        return d.get("classes") if d["labels"] else None
    return BUILTIN_DATASETS[d["name"]][1]


def edm_dataset_path():
    return config["dataset"]["path"]


def edm_dataset_is_folder():
    return os.path.isdir(edm_dataset_path())


def edm_dataset_is_link():
    """The run's dataset is a symbolic link to the configured one (nothing copied)."""
    return config["dataset"]["name"] == "edm" and not config["dataset"]["copy"]


def edm_import_flags():
    d = config["dataset"]
    return flags(
        {
            "resolution": d["resolution"],
            "channels": d["channels"],
            "labels": d["labels"],
            "classes": d.get("classes") if d["labels"] else None,
            "copy": d["copy"],
        }
    )


def check_dataset_config():
    """Cross-key checks of the dataset section against the models, FID and DG (see check_config)."""
    d = config["dataset"]
    name = d["name"]
    if name == "edm":
        for key in ("path", "channels", "labels"):
            if key not in d:
                fail(f"dataset.{key} is required for name: edm")
        path = d["path"]
        if not os.path.exists(path):
            fail(f"dataset.path: {path} does not exist")
        if not (os.path.isdir(path) or path.lower().endswith(".zip")):
            fail(
                f"dataset.path: {path} is neither a folder nor a .zip archive "
                "(EDM's dataset format)"
            )
        if "classes" in d and not d["labels"]:
            fail("dataset.classes is set, but dataset.labels is false")
    else:
        for key in EDM_ONLY_KEYS:
            if key in d:
                fail(f"dataset.{key} is only for name: edm (name is {name})")
        channels = BUILTIN_DATASETS[name][0]
        if d.get("channels", channels) != channels:
            fail(
                f"dataset.channels: {name} has {channels}-channel images, not {d['channels']}"
            )
        if name == "cifar10" and d["resolution"] != 32:
            fail(f"dataset.resolution: CIFAR-10 is 32x32, not {d['resolution']}")
    labelled = name != "edm" or d["labels"]
    classes = dataset_classes()
    for m in config["models"]:
        if m["source"] != "train" or not m["cond"]:
            continue
        if not labelled:
            fail(
                f"models[{m['name']}]: a conditional model needs class labels, "
                "but dataset.labels is false"
            )
        if m["aot"] and classes:
            warning = class_pool_warning(
                train_settings(m["name"])["pool_size"],
                classes,
                f"models[{m['name']}]: ",
            )
            if warning:
                logger.warning(f"config warning: {warning}")
    if DG["enabled"] and DG.get("feature_extractor", "scratch") != "scratch":
        if (name, d["resolution"], dataset_channels()) != ("cifar10", 32, 3):
            fail(
                "dg.feature_extractor: DG's ADM classifier (32x32_classifier.pt) is made for "
                f"CIFAR-10 32x32 RGB, not dataset {name} ({d['resolution']}x{d['resolution']}, "
                f"{dataset_channels()} channel(s)); set dg.feature_extractor: scratch or "
                "dg.enabled: false"
            )
