"""`python -m aot train`: train an EDM or EDM-AOT model (aot.train.training_loop).

    python -m aot train --outdir DIR --data DS.zip [--cond] [--aot] [--pool-size 512] [--batch 512]
        [--batch-gpu B] [--duration 200] ... [--device auto] [--threads N]
    python -m torch.distributed.run --standalone --nproc-per-node G -m aot train ...   (G processes)

Options left out take the defaults of `aot.train.training_loop`, where every setting is described.
Exit code 75 (aot.errors.EXIT_PREEMPTED): the run saved its state before a time limit or after
SIGTERM/SIGUSR1; rerun the same command to resume.
"""

from __future__ import annotations

import argparse
import sys

from .options import add_device, bool_flag, number_arg

SUPPRESS = argparse.SUPPRESS


def _int_list(s: str) -> list[int]:
    """'2,2,2' -> [2, 2, 2]; '' -> [] (no attention layers)."""
    try:
        return [int(x) for x in str(s).split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of integers, got {s!r}") from None


def _opt(p: argparse.ArgumentParser, name: str, kind: type | None = None, help: str | None = None, **kw) -> None:
    """An option without a default of its own: left out, it is not passed to training_loop."""
    if kind in (int, float):
        kw["type"] = number_arg(name, kind)
    elif kind is not None:
        kw["type"] = kind
    p.add_argument(name, default=SUPPRESS, help=help, **kw)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("train", help="train an EDM or EDM-AOT model (resumes from its training state)",
                              description="Train an EDM or EDM-AOT model. Options left out take the defaults of "
                                          "aot.train.training_loop.")
    _opt(p, "--outdir", required=True, help="output folder (created; resumed if it holds a state)")
    _opt(p, "--data", required=True, help="dataset in EDM's format (zip or folder)")
    _opt(p, "--model-name", help="name recorded in the network files (default: outdir name)")
    bool_flag(p, "cond", SUPPRESS, "class-conditional model")
    _opt(p, "--arch", choices=["adm", "ddpmpp", "ncsnpp"], help="network architecture (default: ncsnpp)")
    _opt(p, "--precond", choices=["edm", "ve", "vp"], help="preconditioning (default: edm)")
    # AOT
    bool_flag(p, "aot", SUPPRESS, "pair noise with images by optimal assignment (default: on)")
    _opt(p, "--pool-size", int, "N: image/noise pairs per assignment pool (default: 512)")
    _opt(p, "--cost", choices=["l2", "sqeuclidean"], help="assignment cost (default: l2)")
    _opt(p, "--solver", help="assignment solver: auto, lapjv, lapjv-warm, scipy (default: auto)")
    # Hyper-parameters (EDM's names)
    _opt(p, "--duration", float, "training duration in Mimg")
    _opt(p, "--batch", int, "total batch size")
    _opt(p, "--batch-gpu", int, "B: batch per process and step (default: batch / processes)")
    _opt(p, "--cbase", int, "channel multiplier (model_channels)")
    _opt(p, "--cres", _int_list, "channels per resolution (channel_mult), e.g. 2,2,2")
    _opt(p, "--num-blocks", int, "residual blocks per resolution")
    _opt(p, "--attn", _int_list, "attention resolutions, e.g. 16 ('' for none)")
    _opt(p, "--lr", float, "learning rate")
    _opt(p, "--lr-rampup", float, "learning-rate ramp-up in Mimg")
    _opt(p, "--ema", float, "EMA half-life in Mimg")
    _opt(p, "--ema-rampup", float, "EMA ramp-up ratio (0 = none)")
    _opt(p, "--dropout", float, "dropout probability")
    _opt(p, "--augment", float, "augmentation probability (0 = off)")
    bool_flag(p, "xflip", SUPPRESS, "dataset x-flips")
    _opt(p, "--P-mean", float, "EDM loss: mean of log sigma", dest="P_mean")
    _opt(p, "--P-std", float, "EDM loss: std of log sigma", dest="P_std")
    _opt(p, "--sigma-data", float, "EDM loss and preconditioning: sigma_data")
    # Schedule of outputs
    _opt(p, "--tick", float, "kimg between progress lines")
    _opt(p, "--snap", int, "ticks between EMA network snapshots")
    _opt(p, "--dump", int, "ticks between training-state dumps")
    _opt(p, "--slurm-margin", float, "inside a Slurm job: save the state and exit 75 this many seconds "
                                     "before its time limit")
    _opt(p, "--resume", choices=["auto", "never", "require"],
         help="auto: continue from outdir/training-state.pt if present (default)")
    # Runtime
    _opt(p, "--seed", int, "random seed")
    add_device(p)
    bool_flag(p, "deterministic", SUPPRESS, "deterministic algorithms (bit-identical resume on CPU)")
    # Speed settings (off = EDM's faithful configuration)
    bool_flag(p, "bf16", SUPPRESS, "bf16 autocast for the network")
    bool_flag(p, "tf32", SUPPRESS, "allow TF32 matmuls and convolutions")
    bool_flag(p, "channels-last", SUPPRESS, "channels_last memory format")
    bool_flag(p, "compile", SUPPRESS, "torch.compile the network")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..train import training_loop

    settings = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    code = training_loop(**settings)
    if code:
        sys.exit(code)
