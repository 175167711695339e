"""`python -m aot diagnostics`: denoised estimates along the sampling path and path curvature of
one or more networks from the same latents (aot.diagnostics).

    python -m aot diagnostics --network edm.pt --network aot.pt --seeds 0-7 --steps 18 --rho 7 --out traj.npz
"""

from __future__ import annotations

import argparse

from .options import add_device, add_sampler, add_seeds, number_arg


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("diagnostics", help="trajectory diagnostics: denoised estimates and curvature",
                              description="Run the sampler for every network from the same latents, keep every "
                                          "state and denoised estimate, and measure how straight the paths are.")
    p.add_argument("--network", action="append", required=True,
                   help="network checkpoint (.pt) or EDM pickle (.pkl); repeat for each model")
    p.add_argument("--name", action="append", default=None,
                   help="model name per --network (default: the checkpoint's meta 'model', else its file name)")
    add_seeds(p, default="0-7", help="seeds, e.g. 0-7 or 1,5,9 (default: 0-7)")
    add_sampler(p)
    p.add_argument("--class-labels", default="random", help="'random' (as aot generate) or a class index")
    p.add_argument("--batch", type=number_arg("--batch", int), default=64)
    add_device(p)
    p.add_argument("--out", required=True, help="output .npz (the JSON is written beside it)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict:
    from ..diagnostics import run_diagnostics
    from ..runtime import set_threads

    set_threads(args.threads)
    return run_diagnostics(network=args.network, out=args.out, name=args.name, seeds=args.seeds,
                           solver=args.solver, num_steps=args.num_steps, rho=args.rho, sigma_min=args.sigma_min,
                           sigma_max=args.sigma_max, S_churn=args.S_churn, class_labels=args.class_labels,
                           batch=args.batch, device=args.device)
