"""`python -m aot generate`: seed-deterministic sample sets (npz) from a network (aot.generate).

    python -m aot generate --network CKPT --seeds 0-49999 --out X.npz [--solver heun|euler --steps 18
        --rho 7 --sigma-min 0.002 --sigma-max 80 --S-churn 0 --S-min 0 --S-max inf --S-noise 1
        --batch 256 --class-labels random|INT --shard-size 1000 --grid grid.png --model-name NAME
        --device auto --threads N --fast --compile --slurm-margin 0]
    python -m aot generate --network CKPT --seeds 0-149999 --out rep0.npz rep1.npz rep2.npz [...]

Several --out files split the seeds into equal, consecutive parts (0-49999, 50000-99999, ...), one
set per file, with the network loaded once; each file is the one a separate run with its part of
the seeds writes. A finished file made with the same settings is kept; --grid shows the first set.
With --fid-ref REF --fid-out X.json ... the job then measures each set (as `aot fid measure`).
Inside a Slurm job, --slurm-margin S stops the job before the next shard, or before the measurement,
once the job's end time is less than S seconds away: exit 75, finished shards and sets kept.
With --kept-dir DIR each set is measured as soon as it is made, and each finished set and result is
hard-linked into DIR; a rerun whose outputs were removed links them back instead of making them
again (aot.kept).
"""

from __future__ import annotations

import argparse

from .fid import check_generated_measurement, finished_sets, measure_generated
from .options import (
    add_device,
    add_kept_dir,
    add_measurement,
    add_sampler,
    add_seeds,
    add_slurm_margin,
    bool_flag,
    number_arg,
)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate seed-deterministic sample sets (npz)",
                              description="Generate a seed-deterministic sample set (npz), or several: with "
                                          "K --out files the seeds split into K equal, consecutive parts, one "
                                          "set per file, each the one a separate run with its part writes. "
                                          "Finished shards survive a kill and are kept by the rerun, and so "
                                          "are finished files made with the same settings.")
    p.add_argument("--network", required=True, help="network checkpoint (.pt of aot, or an EDM .pkl)")
    add_seeds(p)
    p.add_argument("--out", required=True, nargs="+", metavar="X.npz",
                   help="output .npz, or several (the seeds split equally among them, in order)")
    add_sampler(p)
    p.add_argument("--num-steps", dest="num_steps", type=number_arg("--steps", int), default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)  # the older spelling of --steps
    p.add_argument("--S-min", dest="S_min", type=number_arg("--S-min"), default=0.0)
    p.add_argument("--S-max", dest="S_max", type=number_arg("--S-max", allow_inf=True), default=float("inf"))
    p.add_argument("--S-noise", dest="S_noise", type=number_arg("--S-noise"), default=1.0)
    p.add_argument("--batch", type=number_arg("--batch", int), default=256, help="maximum batch size")
    p.add_argument("--class-labels", default="random", help="'random' (per seed) or a fixed class index")
    p.add_argument("--shard-size", type=number_arg("--shard-size", int), default=1000)
    p.add_argument("--grid", default=None, help="optional PNG grid of the first 64 images (of the first set)")
    p.add_argument("--model-name", default=None, help="model name recorded in meta (default: the checkpoint's)")
    add_device(p)
    add_slurm_margin(p, "start no further shard (nor the measurement)")
    bool_flag(p, "fast", False, "bf16 autocast + channels_last (not bit-identical to EDM's fp32 sampling)")
    bool_flag(p, "compile", False, "with --fast: torch.compile the network")
    add_measurement(p)
    add_kept_dir(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict | list[dict | None] | None:
    from ..generate import generate_set
    from ..runtime import set_threads

    set_threads(args.threads)
    measured = check_generated_measurement(args)
    kept = finished_sets(args, measured)
    out = args.out[0] if len(args.out) == 1 else args.out
    result = generate_set(network=args.network, seeds=args.seeds, out=out, solver=args.solver,
                        num_steps=args.num_steps, rho=args.rho, sigma_min=args.sigma_min, sigma_max=args.sigma_max,
                        S_churn=args.S_churn, S_min=args.S_min, S_max=args.S_max, S_noise=args.S_noise,
                        batch=args.batch, class_labels=args.class_labels, shard_size=args.shard_size,
                        grid=args.grid, model_name=args.model_name, device=args.device, fast=args.fast,
                        compile=args.compile, keep_shards=measured, slurm_margin=args.slurm_margin,
                        before_sets=kept.restore if kept else None,
                        after_set=kept.after_set if kept else None)
    if measured and kept is None:  # with --kept-dir each set was measured once it was finished
        measure_generated(args)
    return result
