"""`python -m aot <command>`: one parser tree over the library.

Each command is a thin module here with `add_parser(subparsers)`, which declares its options and
sets `func`, a function of the parsed arguments that calls the library. Commands import the library
lazily, so `python -m aot --help` and the fast commands do not pay for torch.

Bad input raises `UserError` anywhere below: it is printed as one line, `error: ...`, on stderr and
the process exits with code 2; real bugs keep their traceback.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from ..errors import EXIT_PREEMPTED
from .options import ArgParser, cli_main

# command -> module under aot.cli
COMMANDS = {
    "data": "data",
    "train": "train",
    "generate": "generate",
    "fid": "fid",
    "diagnostics": "diagnostics",
    "dg": "dg",
    "report": "report",
    "checkpoints": "checkpoints",
    "stats": "stats",
}


def build_parser() -> ArgParser:
    parser = ArgParser(prog="python -m aot", description="EDM-AOT: data, training, sampling, FID, DG, report.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgParser, metavar="COMMAND")
    for module in COMMANDS.values():
        importlib.import_module(f"{__name__}.{module}").add_parser(sub)
    return parser


@cli_main
def main(argv: Sequence[str] | None = None) -> Any:
    args = build_parser().parse_args(argv)
    return run_command(args.func, args)


def run_command(func, args) -> Any:
    """Run a command; when it stops with exit 75 (time limit or preemption, state saved), ask
    Slurm to requeue the job (aot.runtime.requeue_slurm_job), which resumes it."""
    try:
        return func(args)
    except SystemExit as exc:
        if exc.code == EXIT_PREEMPTED:
            from ..runtime import requeue_slurm_job

            requeue_slurm_job()
        raise
