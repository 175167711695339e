"""`python -m aot stats fd-interval`: statistics of the significance study (aot.stats).

    python -m aot stats fd-interval --features A.npy B.npy [--bootstrap 1000] [--seed 0] [--level 0.95]

prints, as JSON on stdout, the Frechet distance between two feature sets ((n, d) float arrays in
.npy files) with a bootstrap confidence interval for the population distance, corrected for the
estimator's finite-sample bias (docs/significance.md); `--out X.json` also writes it to a file.
"""

from __future__ import annotations

import argparse

from .options import ArgParser, number_arg


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("stats", help="statistics of the significance study (FD intervals)",
                                   description="Statistics of the significance study (docs/significance.md).")
    sub = parser.add_subparsers(dest="stats_command", required=True, parser_class=ArgParser, metavar="COMMAND")

    p = sub.add_parser("fd-interval", help="Frechet distance of two feature sets with a bootstrap interval",
                       description="The Frechet distance between two feature sets (.npy files of float (n, d) "
                                   "arrays, the same d) with a bias-corrected bootstrap confidence interval for "
                                   "the population distance, printed as JSON.")
    p.add_argument("--features", required=True, nargs=2, metavar=("A.npy", "B.npy"),
                   help="the two feature sets: float arrays of shape (n, d), n >= 2, finite")
    p.add_argument("--bootstrap", type=number_arg("--bootstrap", int, positive=True), default=1000,
                   help="bootstrap replicates, at least 1 (0 or a negative number is refused; default: 1000)")
    p.add_argument("--seed", type=number_arg("--seed", int, nonneg=True), default=0,
                   help="seed of the resampling (default: 0)")
    p.add_argument("--level", type=_level, default=0.95,
                   help="confidence level, strictly between 0 and 1 (default: 0.95)")
    p.add_argument("--out", default=None, metavar="X.json", help="also write the JSON to this file")
    p.set_defaults(func=fd_interval)


def _level(s: str) -> float:
    v = number_arg("--level")(s)
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"--level must lie strictly between 0 and 1, got {s!r}")
    return v


def fd_interval(args) -> None:
    import json

    from .. import stats

    a = stats.load_features(args.features[0], "features")
    b = stats.load_features(args.features[1], "features")
    if a.shape[1] != b.shape[1]:
        from ..errors import UserError

        raise UserError(f"features {args.features[0]} have {a.shape[1]} dimensions but {args.features[1]} "
                        f"have {b.shape[1]}")
    result = stats.fd_interval(a, b, bootstrap=args.bootstrap, seed=args.seed, level=args.level)
    result = {**result, "features_a": str(args.features[0]), "features_b": str(args.features[1])}
    if args.out is not None:
        from ..files import write_json_atomic

        write_json_atomic(args.out, result)
    print(json.dumps(result, indent=2, allow_nan=False), flush=True)
