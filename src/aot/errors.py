"""Bad input and the exit codes every command shares.

`UserError` is bad input (config, dataset, checkpoint, command-line value): the command layer prints
it as one line on stderr and exits with EXIT_USER_ERROR, while real bugs keep their traceback.
"""

from __future__ import annotations

from typing import Any

EXIT_USER_ERROR = 2
# The job saved its state after SIGTERM/SIGUSR1 or near the Slurm end time; rerun it to resume.
EXIT_PREEMPTED = 75  # EX_TEMPFAIL


class UserError(Exception):
    """Bad input (config, dataset, checkpoint, command-line value). Printed as one line, exit 2."""


def positive_int(name: str, value: Any) -> int:
    """`value` as a positive int, or a UserError naming `name`."""
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be an integer, got {value!r}") from None
    if v <= 0:
        raise UserError(f"{name} must be positive, got {v}")
    return v
