"""`python -m aot dg train|import|generate`: Discriminator Guidance (aot.dg).

    python -m aot dg train --data DS.zip --samples GEN.npz --out DIR [--aot --pool-size N] [--cond]
        [--feature-extractor 32x32_classifier.pt|scratch] [--collect-images N] [--batch 128] [--epochs 50]
        [--lr 3e-4] [--weight-decay 1e-7] [--seed 0] [--resume] [--device] [--threads] [--slurm-margin S]
      -> DIR/discriminator.pt, DIR/result.json, DIR/stats.jsonl, DIR/training-state.pt,
         DIR/discriminator-snapshot-XXXXXX.pt
    python -m aot dg import discriminator_60.pt --out DIR/discriminator.pt
        [--feature-extractor 32x32_classifier.pt --resolution 32] [--aot] [--cond]
      -> a given discriminator (DG's released head, or a file of `dg train`) in our format, checked
    python -m aot dg generate --network NET.pt --discriminator DIR/discriminator.pt --seeds 0-49999
        --out X.npz [--steps 18 --rho 7 --dg-weight-1st-order 2 --dg-weight-2nd-order 0 --time-min 0.01
        --time-max 1 --boosting --batch --shard-size --class-labels --model-name --device --threads
        --slurm-margin S]
      -> a sample set npz as `aot generate` writes it, key `dg{aot|plain}-heun-n18-rho7`.
    python -m aot dg generate ... --seeds 0-149999 --out rep0.npz rep1.npz rep2.npz
      -> as `aot generate` with several --out files: the seeds split into equal, consecutive parts,
         network and discriminator loaded once, each file as a separate run with its part writes it.
    python -m aot dg generate ... --out rep0.npz rep1.npz --fid-ref REF.npz --fid-out rep0.json rep1.json
      -> then each set measured in the same process, as `aot fid measure` writes it.
    python -m aot dg generate ... --kept-dir DIR
      -> as `aot generate --kept-dir`: finished sets and results recorded in DIR, restored from there.
"""

from __future__ import annotations

import argparse

from ..runtime import set_threads
from .fid import check_generated_measurement, finished_sets, measure_generated
from .options import (
    ArgParser,
    add_device,
    add_kept_dir,
    add_measurement,
    add_sampler,
    add_seeds,
    add_slurm_margin,
    bool_flag,
    number_arg,
)


def _num(name: str, kind: type = float, positive: bool = False, nonneg: bool = False):
    return number_arg(name, kind, positive=positive, nonneg=nonneg, allow_inf=name == "--S-max")


def cmd_train(args: argparse.Namespace) -> dict:
    from ..dg.training import train

    set_threads(args.threads)
    return train(data=args.data, samples=args.samples, out=args.out, aot=args.aot, pool_size=args.pool_size,
                 cost=args.cost, cond=args.cond, feature_extractor=args.feature_extractor,
                 scratch_width=args.scratch_width, scratch_depth=args.scratch_depth, width=args.width,
                 depth=args.depth, batch=args.batch, epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
                 collect_images=args.collect_images, seed=args.seed, snapshot_epochs=args.snapshot_epochs,
                 resume=args.resume, device=args.device, slurm_margin=args.slurm_margin)


def cmd_import(args: argparse.Namespace) -> dict:
    import json

    from ..dg.discriminator import import_discriminator

    meta = import_discriminator(args.discriminator, args.out, feature_extractor=args.feature_extractor,
                                image_size=args.resolution, aot=args.aot, cond=args.cond)
    print(json.dumps(meta, default=str), flush=True)
    return meta


def _add_import(sub) -> None:
    i = sub.add_parser("import", help="use a given discriminator (DG's released head) instead of training one",
                       description="Check a given discriminator file, DG's released head (read in DG's layout with "
                                   "its ADM classifier) or a file of `aot dg train`, and write it in our format.")
    i.add_argument("discriminator", metavar="DISCRIMINATOR.pt", help="DG's discriminator_60.pt / _250.pt, or ours")
    i.add_argument("--out", required=True, help="output discriminator.pt")
    i.add_argument("--feature-extractor", default=None, help="DG's ADM classifier (32x32_classifier.pt) for DG's heads")
    i.add_argument("--resolution", type=_num("--resolution", int, positive=True), default=None,
                   help="image size of the model (reads DG's bare classifier in its configuration)")
    bool_flag(i, "aot", False, "the head was trained with AOT noise (DG's own heads: no)")
    bool_flag(i, "cond", False, "the model is class-conditional (the head must be too)")
    i.set_defaults(func=cmd_import)


def cmd_generate(args: argparse.Namespace) -> dict | list[dict | None] | None:
    from ..dg.sampler import generate

    set_threads(args.threads)
    measured = check_generated_measurement(args)
    kept = finished_sets(args, measured)
    out = args.out[0] if len(args.out) == 1 else args.out
    result = generate(network=args.network, discriminator=args.discriminator, seeds=args.seeds, out=out,
                    feature_extractor=args.feature_extractor, solver=args.solver, num_steps=args.num_steps,
                    rho=args.rho, sigma_min=args.sigma_min, sigma_max=args.sigma_max, S_churn=args.S_churn,
                    S_min=args.S_min, S_max=args.S_max, S_noise=args.S_noise,
                    dg_weight_1st_order=args.dg_weight_1st_order, dg_weight_2nd_order=args.dg_weight_2nd_order,
                    time_min=args.time_min, time_max=args.time_max, boosting=args.boosting, batch=args.batch,
                    class_labels=args.class_labels, shard_size=args.shard_size, grid=args.grid,
                    model_name=args.model_name, device=args.device, keep_shards=measured,
                    slurm_margin=args.slurm_margin, before_sets=kept.restore if kept else None,
                    after_set=kept.after_set if kept else None)
    if measured and kept is None:  # with --kept-dir each set was measured once it was finished
        measure_generated(args)
    return result


def _add_train(sub) -> None:
    t = sub.add_parser("train", help="train a real-vs-generated discriminator (DG's recipe, optional AOT noise)")
    t.add_argument("--data", required=True, help="real images: dataset zip/folder in EDM's format")
    t.add_argument("--samples", required=True, help="generated images: sample set npz of `aot generate`")
    t.add_argument("--out", required=True, help="output folder (discriminator.pt, result.json, stats.jsonl, state)")
    bool_flag(t, "aot", False, "assign perturbation noise per pool of --pool-size images with aot.pairing")
    t.add_argument("--pool-size", type=_num("--pool-size", int, positive=True), default=None,
                   help="AOT pool size N, a multiple of --batch (required with --aot)")
    t.add_argument("--cost", default="l2", choices=["l2", "sqeuclidean"], help="AOT pairing cost")
    t.add_argument("--feature-extractor", default="scratch",
                   help="DG's ADM classifier checkpoint (e.g. 32x32_classifier.pt; frozen) or 'scratch' "
                        "(small ADM encoder trained jointly)")
    t.add_argument("--scratch-width", type=_num("--scratch-width", int, positive=True), default=64,
                   help="width of the scratch encoder (a multiple of 32)")
    t.add_argument("--scratch-depth", type=_num("--scratch-depth", int, positive=True), default=1)
    t.add_argument("--width", type=_num("--width", int, positive=True), default=128, help="head width (DG: 128)")
    t.add_argument("--depth", type=_num("--depth", int, positive=True), default=2, help="head depth (DG: 2)")
    t.add_argument("--batch", type=_num("--batch", int, positive=True), default=128)
    t.add_argument("--epochs", type=_num("--epochs", int, positive=True), default=50)
    t.add_argument("--lr", type=_num("--lr", positive=True), default=3e-4)
    t.add_argument("--weight-decay", type=_num("--weight-decay", nonneg=True), default=1e-7)
    t.add_argument("--collect-images", dest="collect_images", type=_num("--collect-images", int, positive=True),
                   default=None, help="use at most this many real and this many generated images (DG: 50000)")
    bool_flag(t, "cond", False, "class-conditional discriminator (labels of the dataset and the sample set)")
    t.add_argument("--seed", type=_num("--seed", int, nonneg=True), default=0)
    t.add_argument("--snapshot-epochs", type=_num("--snapshot-epochs", int, nonneg=True), default=10,
                   help="write discriminator-snapshot-XXXXXX.pt every this many epochs (0: none)")
    bool_flag(t, "resume", False, "continue from OUT/training-state.pt if present")
    add_device(t)
    add_slurm_margin(t, "save the training state after the running pool of batches")
    t.set_defaults(func=cmd_train)


def _add_generate(sub) -> None:
    g = sub.add_parser("generate", help="sample with Discriminator Guidance (EDM-G++) into a sample set npz",
                       description="Sample with Discriminator Guidance (EDM-G++) into a sample set npz, or several: "
                                   "with K --out files the seeds split into K equal, consecutive parts, one set "
                                   "per file, each the one a separate run with its part writes.")
    g.add_argument("--network", required=True, help="network checkpoint (.pt of aot, or an EDM .pkl)")
    g.add_argument("--discriminator", required=True, help="discriminator.pt of `aot dg train`, or DG's head")
    g.add_argument("--feature-extractor", default=None,
                   help="ADM classifier for DG's bare heads (overrides the path stored in our files)")
    add_seeds(g)
    g.add_argument("--out", required=True, nargs="+", metavar="X.npz",
                   help="output .npz, or several (the seeds split equally among them, in order)")
    add_sampler(g)
    g.add_argument("--S-min", dest="S_min", type=_num("--S-min"), default=0.0)
    g.add_argument("--S-max", dest="S_max", type=_num("--S-max"), default=float("inf"))
    g.add_argument("--S-noise", dest="S_noise", type=_num("--S-noise"), default=1.0)
    g.add_argument("--dg-weight-1st-order", type=_num("--dg-weight-1st-order", nonneg=True), default=2.0)
    g.add_argument("--dg-weight-2nd-order", type=_num("--dg-weight-2nd-order", nonneg=True), default=0.0)
    g.add_argument("--time-min", type=_num("--time-min", nonneg=True), default=0.01)
    g.add_argument("--time-max", type=_num("--time-max", nonneg=True), default=1.0)
    bool_flag(g, "boosting", False, "DG's boosting of low log-ratio samples")
    g.add_argument("--model-name", default=None, help="model name recorded in the sample set's meta")
    g.add_argument("--batch", type=_num("--batch", int), default=256)
    g.add_argument("--class-labels", default="random", help="'random' (per seed) or a fixed class index")
    g.add_argument("--shard-size", type=_num("--shard-size", int), default=1000)
    g.add_argument("--grid", default=None, help="optional PNG grid of the first 64 images (of the first set)")
    add_device(g)
    add_slurm_margin(g, "start no further shard (nor the measurement)")
    add_measurement(g)
    add_kept_dir(g)
    g.set_defaults(func=cmd_generate)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("dg", help="Discriminator Guidance: train a discriminator, sample with it",
                              description="Discriminator Guidance: train a discriminator, sample with it.")
    sub = p.add_subparsers(dest="dg_command", required=True, parser_class=ArgParser, metavar="COMMAND")
    _add_train(sub)
    _add_import(sub)
    _add_generate(sub)
