"""Runtime: the provenance every result records, progress bars for the logs Slurm captures, and
preemption (signals and the Slurm end time) for every long job."""

from __future__ import annotations

import datetime
import os
import platform
import sys
import time


def environment_info() -> dict:
    """Versions and host, recorded in every result JSON."""
    info = {
        "python": platform.python_version(),
        "host": platform.node(),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }
    try:
        import torch

        info["torch"] = str(torch.__version__)
        info["cuda"] = str(torch.version.cuda) if torch.version.cuda else None
        info["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception:  # pragma: no cover - torch is a dependency
        pass
    try:
        from importlib.metadata import version

        info["aot"] = version("aot")
    except Exception:
        info["aot"] = None
    return info


class _LogLines:
    """A stream for tqdm in log files: each refresh becomes its own line instead of a carriage return."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, s: str) -> None:
        s = s.replace("\r", "").strip()
        if s:
            self.stream.write(s + "\n")

    def flush(self) -> None:
        self.stream.flush()


# One line per refresh in a log: `generating rep0.npz: 1200/50000 (2.4%) 34.1img/s, elapsed 00:35, ETA 23:50`
LOG_FORMAT = "{desc}: {n_fmt}/{total_fmt} ({percentage:.1f}%) {rate_fmt}, elapsed {elapsed}, ETA {remaining}{postfix}"


def progress(total: int, desc: str, unit: str = "img", initial: int = 0):
    """A tqdm bar for job logs: in a file (Slurm's, or `> log`) a line at most every 10 s.

    Use as a context manager and call `bar.update(n)`; `initial` counts work a resumed job had done.
    """
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    return tqdm(total=int(total), desc=desc, unit=unit, initial=int(initial),
                file=sys.stderr if tty else _LogLines(sys.stderr), mininterval=0.5 if tty else 10.0,
                maxinterval=60.0, dynamic_ncols=tty, ascii=not tty, smoothing=0.1,
                bar_format=None if tty else LOG_FORMAT)


# ------------------------------------------------------------------------------------------------
# Preemption: Slurm's time limit and preemption, for every long job


def slurm_job_end_time(job_id: str) -> float | None:
    """The job's scheduled end (Unix time) from `squeue -o %e`, or None when unknown/unlimited."""
    import subprocess

    try:
        out = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%e"], capture_output=True, text=True,
                             timeout=30).stdout.strip()
        return datetime.datetime.fromisoformat(out).timestamp()
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


class Preemption:
    """SIGTERM/SIGUSR1 (Slurm's `--signal`, preemption) and the Slurm end time, as one flag.

    Used as a context manager around a job's loop: on entry it installs its handlers (main thread
    only), on exit it restores whatever was installed before, so a library call never leaves a
    handler behind in its host process. With `raise_on_signal` a signal raises
    SystemExit(EXIT_PREEMPTED) at once (for jobs whose finished pieces are already on disk);
    otherwise it only sets `requested`, and the loop saves its state at its next boundary.

    On clusters that track jobs by cgroup, Slurm's `--signal` reaches only the job's outer process,
    never this one. So, inside a Slurm job and with `margin` > 0, `requested` also turns true
    `margin` seconds before the job's end time (read once from `squeue`).
    """

    SIGNALS = ("SIGTERM", "SIGUSR1")

    def __init__(self, margin: float = 0.0, raise_on_signal: bool = False) -> None:
        self.signum: int | None = None
        self.deadline: float | None = None
        self.raise_on_signal = raise_on_signal
        self._previous: dict[int, object] = {}
        if margin > 0 and os.environ.get("SLURM_JOB_ID"):
            end = slurm_job_end_time(os.environ["SLURM_JOB_ID"])
            if end is not None:
                self.deadline = end - margin

    @property
    def requested(self) -> bool:
        return self.signum is not None or (self.deadline is not None and time.time() >= self.deadline)

    def _handler(self, signum, frame) -> None:  # noqa: ARG002
        self.signum = signum
        if self.raise_on_signal:
            from .errors import EXIT_PREEMPTED

            raise SystemExit(EXIT_PREEMPTED)

    def __enter__(self) -> Preemption:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name, None)
                if sig is not None:
                    self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


# ------------------------------------------------------------------------------------------------
# Requeue: a Slurm job that stopped for its time limit or a preemption goes back to the queue


REQUEUE_ENV = "AOT_SLURM_REQUEUE"


def requeue_slurm_job(log=None) -> bool:
    """After a command exited with 75 (state saved, `aot.errors.EXIT_PREEMPTED`): put this Slurm
    job back into the queue with `scontrol requeue`, so that it runs again under the same job ID and
    resumes; Snakemake's executor sees the job pending again and keeps waiting for it. Nothing else
    is ever resubmitted: a job that failed on bad input (exit 2) or a bug fails for good.

    Only where the workflow asks for it (`AOT_SLURM_REQUEUE=<most requeues>` in the environment),
    inside a Slurm job (`SLURM_JOB_ID`), from the first process (rank 0 under torchrun) and while
    the job has been requeued fewer times than allowed (`SLURM_RESTART_COUNT`). Returns whether the
    requeue was asked for.
    """
    import subprocess

    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    limit, job = os.environ.get(REQUEUE_ENV), os.environ.get("SLURM_JOB_ID")
    if not limit or not job or os.environ.get("RANK", "0") != "0":
        return False
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    if restarts >= int(limit):
        log(f"Slurm job {job} was requeued {restarts} times already ({REQUEUE_ENV}={limit}); not again")
        return False
    try:
        res = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        log(f"could not requeue Slurm job {job}: {exc}")
        return False
    if res.returncode != 0:
        log(f"could not requeue Slurm job {job}: {res.stderr.strip() or res.stdout.strip()}")
        return False
    log(f"requeued Slurm job {job} (restart {restarts + 1} of at most {limit}): it resumes from the saved state")
    return True
