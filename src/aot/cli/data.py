"""`python -m aot data cifar10|download|digits|info|check|import`: EDM-format datasets (aot.data)."""

from __future__ import annotations

import argparse
import json
import sys

from .options import ArgParser, bool_flag, number_arg


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

    def expectations(p) -> None:
        p.add_argument("--resolution", type=positive("--resolution"), default=None,
                       help="expected image size in pixels (default: any)")
        p.add_argument("--channels", type=int, choices=(1, 3), default=None,
                       help="expected channels: 1 or 3 (default: either)")
        p.add_argument("--labels", action=argparse.BooleanOptionalAction, default=None,
                       help="--labels: class labels are required (conditional models); --no-labels: they are "
                       "ignored (default: used when present)")
        p.add_argument("--classes", type=positive("--classes"), default=None,
                       help="expected number of classes (with labels)")
        p.add_argument("--pool-size", type=positive("--pool-size"), default=None,
                       help="AOT pool size N of a conditional model: warn when N / classes is small")

    p = sub.add_parser("check", help="check an EDM-format zip or folder (every image header, the labels) "
                       "against the expected resolution, channels and labels; print its summary as JSON")
    p.add_argument("path")
    expectations(p)
    p.set_defaults(func=check)

    p = sub.add_parser("import", help="check an EDM-format zip or folder and link (or copy) it to --dest")
    p.add_argument("--source", required=True, help="EDM-format .zip or folder (EDM's dataset_tool.py or ours)")
    p.add_argument("--dest", required=True, help="where the run's dataset goes (a link, or with --copy a .zip)")
    bool_flag(p, "copy", False, "write a stored zip at --dest instead of a symbolic link to --source")
    expectations(p)
    p.set_defaults(func=import_)


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


def _expect(args) -> dict:
    return {"resolution": args.resolution, "channels": args.channels, "labels": args.labels,
            "classes": args.classes}


def _report(info: dict, args) -> None:
    from ..data import class_pool_warning

    counts = info.pop("class_counts", None)
    if counts:
        info["images_per_class"] = {"min": min(counts), "max": max(counts), "mean": round(sum(counts) / len(counts), 2)}
    print(json.dumps(info, indent=2), flush=True)
    if args.pool_size and args.labels is not False and info["labels"]:
        warning = class_pool_warning(args.pool_size, info["label_dim"])
        if warning:
            print(f"warning: {warning}", file=sys.stderr, flush=True)


def check(args) -> None:
    from ..data import check_dataset

    _report(check_dataset(args.path, **_expect(args)), args)


def import_(args) -> None:
    from ..data import import_dataset

    info = import_dataset(args.source, args.dest, copy=args.copy, **_expect(args))
    _report(info, args)
    print(f"{'copied' if args.copy else 'linked'} {args.source} to {args.dest} ({info['count']} images)", flush=True)
