# Settings and cross-key checks of the training set (data.smk): CIFAR-10, scikit-learn's digits, or
# an existing dataset in EDM's format (`dataset: {name: edm, path: ...}`), linked or copied into
# results/<run>/data/dataset.zip.

dataset_channels = SETTINGS.dataset_channels
dataset_classes = SETTINGS.dataset_classes


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
