"""The option vocabulary every command shares: one parser class, one boolean style, one number type,
and the option groups that several commands declare (device and threads, seeds, the sampler).

- Booleans are `--name` / `--no-name` (argparse.BooleanOptionalAction), never `--name true`.
- Numbers are checked by `number_arg`, whose error names the option.
- Usage errors are UserErrors, so they print as one line and exit 2 (`aot.cli.main`).
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from ..errors import UserError
from ..keys import SOLVERS


class ArgParser(argparse.ArgumentParser):
    """argparse whose usage errors are UserErrors: one line and exit 2."""

    def error(self, message: str):
        raise UserError(message)


def number_arg(name: str, kind: type = float, positive: bool = False, nonneg: bool = False,
               allow_inf: bool = False):
    """An argparse `type=` for a number option that names the option in its error."""

    def conv(s: str):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} must be {'an integer' if kind is int else 'a number'}, got {s!r}") from None
        if kind is float and not math.isfinite(v) and not (allow_inf and v == float("inf")):
            raise argparse.ArgumentTypeError(f"{name} must be a finite number, got {s!r}")
        if positive and not v > 0:
            raise argparse.ArgumentTypeError(f"{name} must be positive, got {s!r}")
        if nonneg and v < 0:
            raise argparse.ArgumentTypeError(f"{name} must not be negative, got {s!r}")
        return v

    return conv


def bool_flag(p: argparse.ArgumentParser, name: str, default: bool, help: str) -> None:
    """`--name` / `--no-name`; `name` is the long option without dashes, e.g. 'channels-last'."""
    p.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=default, help=help)


def add_device(p: argparse.ArgumentParser) -> None:
    """--device and --threads: where a job runs and how many CPU threads torch may use."""
    p.add_argument("--device", default="auto", help="cuda, cpu, cuda:N or auto (default: auto)")
    p.add_argument("--threads", type=number_arg("--threads", int, positive=True), default=None,
                   help="CPU threads for torch (default: torch's choice)")


def add_slurm_margin(p: argparse.ArgumentParser, stops: str) -> None:
    """--slurm-margin S (as `aot train`'s): inside a Slurm job, stop at the next safe point (`stops`)
    once the job's end time (SLURM_JOB_END_TIME, else squeue) is less than S seconds away, keep what
    is finished and exit 75, which requeues the job where AOT_SLURM_REQUEUE asks for it. 0 (the
    default): only a signal (Slurm's --signal, preemption) stops the job early."""
    p.add_argument("--slurm-margin", type=number_arg("--slurm-margin", nonneg=True), default=0.0, metavar="S",
                   help=f"inside a Slurm job: {stops} and exit 75 once its end time is less than S seconds "
                        "away (default 0: only on a signal)")


def add_kept_dir(p: argparse.ArgumentParser) -> None:
    """--kept-dir DIR (generation commands): records of finished sets that outlive the removal of
    the job's outputs (aot.kept); absent, nothing is recorded or restored."""
    p.add_argument("--kept-dir", default=None, metavar="DIR",
                   help="hard-link each finished set (and its --fid-out result) into DIR, and link missing "
                        "outputs back from there at the start: a rerun whose outputs were removed (a requeued "
                        "or failed Slurm group) keeps what was finished. DIR must be on the outputs' file "
                        "system and hold none of them")


def add_seeds(p: argparse.ArgumentParser, default: str | None = None, help: str | None = None) -> None:
    """--seeds: a range list such as 0-49999 or 0,5,10-19 (EDM's format)."""
    p.add_argument("--seeds", required=default is None, default=default,
                   help=help or "seeds, e.g. 0-49999 (one image per seed)")


def _solver(s: str) -> str:
    if s not in SOLVERS:
        raise argparse.ArgumentTypeError(f"unknown solver {s!r} (choose from {', '.join(SOLVERS)})")
    return s


def add_sampler(p: argparse.ArgumentParser, solver: bool = True, churn: bool = True) -> None:
    """EDM's sampler settings: --solver, --steps, --rho, --sigma-min, --sigma-max, --S-churn."""
    if solver:
        p.add_argument("--solver", default="heun", type=_solver, metavar="{" + ",".join(SOLVERS) + "}",
                       help="ODE solver (default: heun)")
    p.add_argument("--steps", dest="num_steps", type=number_arg("--steps", int), default=18,
                   help="number of time steps N (default: 18)")
    p.add_argument("--rho", type=number_arg("--rho", positive=True), default=7.0,
                   help="time-step exponent rho (default: 7)")
    p.add_argument("--sigma-min", type=number_arg("--sigma-min", positive=True), default=0.002)
    p.add_argument("--sigma-max", type=number_arg("--sigma-max", positive=True), default=80.0)
    if churn:
        p.add_argument("--S-churn", dest="S_churn", type=number_arg("--S-churn", nonneg=True), default=0.0,
                       help="stochasticity (default: 0, deterministic)")


def add_measurement(p: argparse.ArgumentParser) -> None:
    """--fid-ref, --fid-out, ...: measure the sets a generation command just made, in its process
    (`aot fid measure` of each set, with the network's job loading the feature network once)."""
    g = p.add_argument_group("measurement", "FID of the sets made, one --fid-out per --out, in the same "
                                            "process after generation (what `aot fid measure` writes)")
    g.add_argument("--fid-ref", default=None, metavar="REF.npz", help="reference statistics (aot fid reference)")
    g.add_argument("--fid-out", nargs="+", default=None, metavar="X.json", help="result JSON, one per --out")
    g.add_argument("--fid-features", default=None,
                   help="'inception' or a feature network file (default: the reference's)")
    g.add_argument("--fid-cache-dir", default=None,
                   help="folder of clean-fid assets (default: $AOT_FID_CACHE; required for Inception)")
    g.add_argument("--fid-batch", type=number_arg("--fid-batch", int, positive=True), default=100,
                   help="images per feature batch (default: 100)")


def option_name(key: str) -> str:
    """The option of a settings key: 'batch_gpu' -> '--batch-gpu'."""
    return "--" + key.replace("_", "-")


def to_argv(settings: dict[str, Any]) -> list[str]:
    """Command-line options from a settings dict, mechanically: booleans as --x / --no-x, lists
    joined by commas, None left out. The workflow builds every rule's flags this way."""
    argv: list[str] = []
    for key, value in settings.items():
        if value is None:
            continue
        opt = option_name(key)
        if isinstance(value, bool):
            argv.append(opt if value else "--no-" + opt[2:])
        elif isinstance(value, (list, tuple)):
            argv += [opt, ",".join(str(v) for v in value)]
        else:
            argv += [opt, str(value)]
    return argv


def cli_main(fn):
    """Decorate a `main(argv=None)` so that `UserError` becomes one stderr line and exit code 2
    (`python -m aot` and the benchmark scripts)."""
    import functools
    import sys

    from ..errors import EXIT_USER_ERROR

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_USER_ERROR) from None

    return wrapper
