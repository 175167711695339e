"""Datasets in EDM's format, and their preparation: `reader` (ImageFolderDataset, load_all, checks),
`writer` (write_dataset) and `sources` (CIFAR-10, digits, downloads, import).

The format is the one NVlabs/edm's `dataset_tool.py` writes: a zip archive (stored, not deflated) or
a folder of PNG images named `00000/img00000000.png`, `00000/img00000001.png`, ... plus a
`dataset.json` at the root holding `{"labels": [["00000/img00000000.png", 6], ...]}` (or
`{"labels": null}`). EDM's own `cifar10-32x32.zip` loads unchanged, and archives written here load
in EDM.

Command line (aot.cli.data):

    python -m aot data cifar10 --source URL_OR_TARBALL [--md5 HEX | --sha256 HEX] --dest out.zip
    python -m aot data download --url URL [--md5 HEX | --sha256 HEX] --dest FILE
    python -m aot data digits --resolution 8 --dest out.zip
    python -m aot data info PATH
    python -m aot data check PATH [--resolution R] [--channels C] [--labels | --no-labels] [--classes K]
    python -m aot data import --source PATH --dest DEST [--copy] [same checks as `check`]
"""

from .reader import (
    LABELS_FILE,
    MIN_IMAGES_PER_CLASS,
    ImageFolderDataset,
    check_dataset,
    class_pool_warning,
    dataset_info,
    load_all,
)
from .sources import (
    CIFAR10_MD5,
    CIFAR10_TARBALL_NAME,
    CIFAR10_URL,
    digits_images,
    fetch_file,
    import_dataset,
    prepare_cifar10,
    prepare_digits,
    read_cifar10_tarball,
    resolve_checksums,
)
from .writer import archive_fname, write_dataset

__all__ = [
    "CIFAR10_MD5", "CIFAR10_TARBALL_NAME", "CIFAR10_URL", "LABELS_FILE", "MIN_IMAGES_PER_CLASS", "ImageFolderDataset",
    "archive_fname", "check_dataset", "class_pool_warning", "dataset_info", "digits_images", "fetch_file",
    "import_dataset", "load_all", "prepare_cifar10", "prepare_digits", "read_cifar10_tarball", "resolve_checksums",
    "write_dataset",
]
