"""Runtime: progress lines for the logs Slurm captures, and the provenance every result records."""

from __future__ import annotations

import datetime
import os
import platform
import sys
import time


class Progress:
    """Periodic progress lines with rate and ETA, for logs that Slurm captures.

    `update(done)` prints at most every `interval` seconds (and always at the end):
    `<what>: 1200/50000 (2.4%) 34.1 img/s, elapsed 0:00:35, ETA 0:23:50`.
    """

    def __init__(self, what: str, total: int, unit: str = "img", interval: float = 10.0,
                 stream=None) -> None:
        self.what, self.total, self.unit, self.interval = what, int(total), unit, interval
        self.stream = stream if stream is not None else sys.stdout
        self.start = time.monotonic()
        self.last = -1e9
        self.start_done: int | None = None

    def update(self, done: int, extra: str = "", force: bool = False) -> None:
        now = time.monotonic()
        if self.start_done is None:
            self.start_done = done
        if not force and done < self.total and now - self.last < self.interval:
            return
        self.last = now
        elapsed = now - self.start
        rate = (done - self.start_done) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        pct = 100.0 * done / self.total if self.total else 100.0
        line = (f"{self.what}: {done}/{self.total} ({pct:.1f}%) {rate:.1f} {self.unit}/s, "
                f"elapsed {format_seconds(elapsed)}, ETA {format_seconds(eta)}")
        if extra:
            line += f", {extra}"
        print(line, file=self.stream, flush=True)


def format_seconds(s: float) -> str:
    if s != s or s == float("inf"):
        return "?"
    s = int(round(s))
    return f"{s // 3600}:{(s // 60) % 60:02d}:{s % 60:02d}"


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


def progress(total: int, desc: str, unit: str = "img", initial: int = 0):
    """A tqdm bar for job logs: in a file (Slurm's, or `> log`) a line at most every 10 s.

    Use as a context manager and call `bar.update(n)`; `initial` counts work a resumed job had done.
    """
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    return tqdm(total=int(total), desc=desc, unit=unit, initial=int(initial),
                file=sys.stderr if tty else _LogLines(sys.stderr), mininterval=0.5 if tty else 10.0,
                maxinterval=60.0, dynamic_ncols=tty, ascii=not tty, smoothing=0.1)


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

    def __enter__(self) -> "Preemption":
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
