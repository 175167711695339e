"""`python -m aot checkpoints import-edm|export-edm|info`: NVlabs/edm snapshot pickles in and out (aot.checkpoints)."""

from __future__ import annotations

import json

from .options import ArgParser, bool_flag


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("checkpoints", help="import and export NVlabs/edm snapshot pickles",
                                   description="Our network files and NVlabs/edm snapshot pickles.")
    sub = parser.add_subparsers(dest="checkpoints_command", required=True, parser_class=ArgParser,
                                metavar="COMMAND")

    p = sub.add_parser("import-edm", help="convert an NVlabs/edm snapshot pickle (URL or path) to our network file")
    p.add_argument("source", metavar="URL_OR_PATH")
    p.add_argument("out", metavar="OUT.pt")
    p.add_argument("--sha256", default=None, help="expected SHA-256 of the pickle")
    p.add_argument("--model-name", default=None, help="model name recorded in the meta (default: file stem)")
    bool_flag(p, "aot", False, "the network was trained with AOT (an EDM-AOT pickle); recorded in the meta")
    p.set_defaults(func=import_edm)

    p = sub.add_parser("export-edm", help="write our network file as an NVlabs/edm snapshot pickle")
    p.add_argument("network", metavar="NETWORK.pt")
    p.add_argument("out", metavar="OUT.pkl")
    p.set_defaults(func=export_edm)

    p = sub.add_parser("info", help="print a network file's or EDM pickle's class, size and meta as JSON")
    p.add_argument("path")
    p.set_defaults(func=info)


def import_edm(args) -> None:
    from ..checkpoints import import_edm

    meta = import_edm(args.source, args.out, sha256=args.sha256, model_name=args.model_name, aot=args.aot)
    print(json.dumps({"out": str(args.out), **meta}))


def export_edm(args) -> None:
    from ..checkpoints import export_edm

    print(json.dumps(export_edm(args.network, args.out)))


def info(args) -> None:
    from ..checkpoints import network_info

    print(json.dumps(network_info(args.path), indent=2, default=str))
