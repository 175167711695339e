"""`python -m aot data cifar10|download|digits|info`: prepare and inspect EDM-format datasets (aot.data)."""

from __future__ import annotations

import json

from .options import ArgParser, number_arg


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("data", help="prepare and inspect EDM-format datasets",
                                   description="Prepare and inspect EDM-format datasets.")
    sub = parser.add_subparsers(dest="data_command", required=True, parser_class=ArgParser, metavar="COMMAND")

    def positive(name: str):
        return number_arg(name, int, positive=True)

    p = sub.add_parser("cifar10", help="CIFAR-10 training set from cifar-10-python.tar.gz")
    p.add_argument("--source", default=None, help="URL or local tarball (default: the official CIFAR-10 tarball)")
    p.add_argument("--md5", default=None, help="expected md5 of the tarball (default for the official file: "
                   "the official md5; 'none' skips the check)")
    p.add_argument("--sha256", default=None, help="expected sha256 of the tarball")
    p.add_argument("--download-to", default=None, help="keep the downloaded tarball at this path")
    p.add_argument("--max-images", type=positive("--max-images"), default=None)
    p.add_argument("--dest", required=True, help="output .zip (or folder)")
    p.set_defaults(func=cifar10)

    p = sub.add_parser("download", help="download a file (atomically, with retries) and check its checksum")
    p.add_argument("--url", default=None, help="URL (default: the official CIFAR-10 tarball)")
    p.add_argument("--md5", default=None, help="expected md5 (default for cifar-10-python.tar.gz: the official one)")
    p.add_argument("--sha256", default=None, help="expected sha256")
    p.add_argument("--dest", required=True, help="where to store the file")
    p.set_defaults(func=download)

    p = sub.add_parser("digits", help="scikit-learn's bundled 8x8 digits (1797 images, 1 channel, labels)")
    p.add_argument("--resolution", type=positive("--resolution"), default=8)
    p.add_argument("--max-images", type=positive("--max-images"), default=None)
    p.add_argument("--dest", required=True, help="output .zip (or folder)")
    p.set_defaults(func=digits)

    p = sub.add_parser("info", help="print resolution, channels, count and labels of a dataset as JSON")
    p.add_argument("path")
    p.set_defaults(func=info)


def cifar10(args) -> None:
    from ..data import prepare_cifar10

    n = prepare_cifar10(args.source, args.dest, md5=args.md5, sha256=args.sha256, max_images=args.max_images,
                        download_to=args.download_to)
    print(f"wrote {n} images to {args.dest}", flush=True)


def download(args) -> None:
    from ..data import fetch_file

    fetch_file(args.url, args.dest, md5=args.md5, sha256=args.sha256)
    print(f"downloaded {args.url} to {args.dest}", flush=True)


def digits(args) -> None:
    from ..data import prepare_digits

    n = prepare_digits(args.dest, resolution=args.resolution, max_images=args.max_images)
    print(f"wrote {n} images to {args.dest}", flush=True)


def info(args) -> None:
    from ..data import dataset_info

    print(json.dumps(dataset_info(args.path), indent=2))
