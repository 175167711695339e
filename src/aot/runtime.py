"""Runtime: the provenance every result records, the device and CPU threads a job runs with, progress
bars for the logs Slurm captures, and preemption (signals and the Slurm end time) for every long job."""

from __future__ import annotations

import datetime
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:
    import torch


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


# ------------------------------------------------------------------------------------------------
# Device and threads: `--device` and `--threads` of every command


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`None`, '' or 'auto' -> cuda if available else cpu; an invalid device, or a CUDA device this
    machine does not have, is a UserError."""
    import torch

    if device is None or device == "" or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UserError(f"--device {device!r} is not a valid device") from None
    if dev.type == "cuda":
        if not cuda_available():
            raise UserError(f"--device {device}: {cuda_unavailable_reason()}")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA devices")
    return dev


# The oldest NVIDIA driver (Linux) that runs a CUDA major version, by CUDA's minor-version compatibility.
MIN_DRIVER = {11: 450, 12: 525, 13: 580}
TORCH_WHEELS = "https://download.pytorch.org/whl"


def cuda_available() -> bool:
    """torch.cuda.is_available(), without torch's multi-line warning about the driver (the reason is
    then in `cuda_unavailable_reason`); the warning's text is kept for it."""
    import warnings

    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ok = torch.cuda.is_available()
    for w in caught:
        if "CUDA" in str(w.message):
            _CUDA_WARNINGS.append(" ".join(str(w.message).split()))
    return ok


_CUDA_WARNINGS: list[str] = []


def _driver_cuda_version() -> str | None:
    """The CUDA version the installed NVIDIA driver supports ('12.2'), from libcuda, or None."""
    import ctypes

    try:
        lib = ctypes.CDLL("libcuda.so.1")
        v = ctypes.c_int(0)
        if lib.cuDriverGetVersion(ctypes.byref(v)) != 0 or v.value <= 0:
            return None
    except (OSError, AttributeError):
        return None
    return f"{v.value // 1000}.{v.value % 1000 // 10}"


def _nvidia_smi_driver() -> tuple[str | None, str]:
    """(driver version such as '535.104.05', or None; what nvidia-smi said when it gave none)."""
    import subprocess

    try:
        res = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        return None, "nvidia-smi not found"
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"nvidia-smi failed: {exc}"
    lines = [ln.strip() for ln in res.stdout.splitlines() if ln.strip()]
    if res.returncode == 0 and lines:
        return lines[0], "nvidia-smi"
    said = (res.stdout.strip() or res.stderr.strip() or f"exit {res.returncode}").splitlines()[0]
    return None, f"nvidia-smi: {said[:120]}"


def cuda_unavailable_reason(driver: tuple[str | None, str] | None = None,
                            driver_cuda: str | None = None) -> str:
    """Why torch cannot use CUDA here, in one line: the driver found (nvidia-smi, libcuda), the
    driver this torch build needs (from torch.version.cuda) and how to install a matching wheel.
    `driver` and `driver_cuda` replace what nvidia-smi and libcuda report (tests)."""
    import re

    import torch

    version = str(torch.__version__)
    base = version.split("+")[0]
    built = torch.version.cuda
    install = f"pip install torch=={base} --index-url {TORCH_WHEELS}/cuXYZ"
    if not built:
        return (f"CUDA is not available: torch {version} is built without CUDA; install a CUDA build: "
                f"{install} (cuXYZ: a CUDA version your NVIDIA driver supports, shown by nvidia-smi)")
    major = int(built.split(".")[0])
    need = MIN_DRIVER.get(major)
    needs = (f"an NVIDIA driver >= {need} (CUDA {built})" if need else f"an NVIDIA driver for CUDA {built}")
    found, source = driver or _nvidia_smi_driver()
    driver_cuda = driver_cuda or _driver_cuda_version()
    if driver_cuda is None:
        for text in _CUDA_WARNINGS:  # torch: "... driver on your system is too old (found version 11040)"
            m = re.search(r"found version (\d+)", text)
            if m:
                v = int(m.group(1))
                driver_cuda = f"{v // 1000}.{v % 1000 // 10}"
    head = f"CUDA is not available: torch {version} needs {needs}"
    if found is None and driver_cuda is None:
        return (f"{head}, and no NVIDIA driver was found ({source}); run on a GPU node with that driver, "
                f"or install a torch build for the driver there: {install} (cuXYZ: a CUDA version it supports)")
    have = (f"driver {found} ({source})" + (f", supporting CUDA {driver_cuda}" if driver_cuda else "")
            if found else f"a driver supporting CUDA {driver_cuda}")
    too_old = False
    if found and need:
        m = re.match(r"(\d+)", found)
        too_old = bool(m) and int(m.group(1)) < need
    if driver_cuda and not too_old:
        too_old = int(driver_cuda.split(".")[0]) < major
    if too_old:
        fit = (f"cuXYZ: a CUDA {driver_cuda.split('.')[0]}.x build that PyTorch publishes for torch {base}"
               if driver_cuda else "cuXYZ: a CUDA version your driver supports")
        return (f"{head}, found {have}, which is too old; update the driver or install the torch build for it: "
                f"{install} ({fit})")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    shown = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
    warned = f"; torch says: {_CUDA_WARNINGS[-1][:200]}" if _CUDA_WARNINGS else ""
    return (f"CUDA is not available: found {have}, new enough for torch {version}, but torch sees no usable GPU"
            f"{shown}{warned}; ask the job for a GPU (sbatch --gpus=1), or use --device cpu")


def set_threads(threads: int | None) -> None:
    """`torch.set_num_threads(threads)` when `--threads` was given (None or 0: torch's default)."""
    if threads:
        import torch

        torch.set_num_threads(int(threads))


# ------------------------------------------------------------------------------------------------
# Progress


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


END_TIME_ENV = "SLURM_JOB_END_TIME"


def job_end_time(job_id: str) -> tuple[float | None, str]:
    """The Slurm job's scheduled end (Unix time) and where it came from: `SLURM_JOB_END_TIME` (Unix
    seconds; Slurm sets it in the job's environment in newer versions) when the environment has it,
    otherwise `squeue -h -j <job> -o %e`. (None, why) when neither knows it (or the job has no limit)."""
    import subprocess

    value = os.environ.get(END_TIME_ENV, "").strip()
    if value:
        try:
            end = float(value)
        except ValueError:
            end = 0.0
        if end > 0:
            return end, END_TIME_ENV
    why = f"{END_TIME_ENV} {'is ' + repr(value) if value else 'not set'}"
    try:
        res = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%e"], capture_output=True, text=True,
                             timeout=30)
    except FileNotFoundError:
        return None, f"{why}, squeue not found"
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"{why}, squeue failed ({exc})"
    out = res.stdout.strip()
    try:
        return datetime.datetime.fromisoformat(out).timestamp(), "squeue"
    except ValueError:
        detail = out or res.stderr.strip() or f"exit {res.returncode}"
        return None, f"{why}, squeue says {detail.splitlines()[0][:120]!r}"


def slurm_job_end_time(job_id: str) -> float | None:
    """The job's scheduled end (Unix time), or None when unknown/unlimited (see `job_end_time`)."""
    return job_end_time(job_id)[0]


def _clock(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


class Preemption:
    """SIGTERM/SIGUSR1 (Slurm's `--signal`, preemption) and the Slurm end time, as one flag.

    Used as a context manager around a job's loop: on entry it installs its handlers (main thread
    only), on exit it restores whatever was installed before, so a library call never leaves a
    handler behind in its host process. With `raise_on_signal` a signal raises
    SystemExit(EXIT_PREEMPTED) at once (for jobs whose finished pieces are already on disk);
    otherwise it only sets `requested`, and the loop saves its state at its next boundary.

    On clusters that track jobs by cgroup, Slurm's `--signal` reaches only the job's outer process,
    never this one. So, inside a Slurm job and with `margin` > 0, the job watches its end time
    (`job_end_time`: SLURM_JOB_END_TIME, else squeue): from `deadline` = end - margin on,
    `requested` and `deadline_reached` are true, and `stop_at_deadline` (called by the loop at each
    safe boundary: a finished shard, a saved state) ends the job with EXIT_PREEMPTED. With
    `raise_on_signal`, a piece still running halfway through the margin (end - margin / 2) is given
    up as at a signal, so that the job still exits 75 and requeues before Slurm kills it. `log`
    (default: print) says why the job stops and, with `announce`, when it will, or that its end time
    is unknown.
    """

    SIGNALS = ("SIGTERM", "SIGUSR1")

    def __init__(self, margin: float = 0.0, raise_on_signal: bool = False,
                 log: Callable[[str], None] | None = None, announce: bool = True) -> None:
        self.signum: int | None = None
        self.deadline: float | None = None
        self.end_time: float | None = None
        self.end_source: str | None = None
        self.margin = float(margin or 0.0)
        self.raise_on_signal = raise_on_signal
        self.hard_stop = False  # the hard deadline (end - margin / 2) interrupted the job
        self._log = log or (lambda s: print(s, flush=True))
        self._previous: dict[int, object] = {}
        self._timer = None
        self._active = False
        job = os.environ.get("SLURM_JOB_ID")
        if self.margin > 0 and job:
            end, source = job_end_time(job)
            if end is not None:
                self.end_time, self.end_source = end, source
                self.deadline = end - self.margin
                if announce:
                    self._log(f"Slurm job {job} ends at {_clock(end)} ({source}); stopping at the first safe "
                              f"point after {_clock(self.deadline)} (--slurm-margin {self.margin:g} s)")
            elif announce:
                self._log(f"Slurm job {job}: end time unknown ({source}); only a signal stops this job early")

    @property
    def deadline_reached(self) -> bool:
        return self.deadline is not None and time.time() >= self.deadline

    @property
    def requested(self) -> bool:
        return self.signum is not None or self.deadline_reached

    def deadline_note(self) -> str:
        """Why a job stops at its deadline: the end time, its source and the margin."""
        job = os.environ.get("SLURM_JOB_ID")
        return (f"Slurm job {job} ends at {_clock(self.end_time)} ({self.end_source}), less than "
                f"--slurm-margin {self.margin:g} s from now")

    def stop_at_deadline(self, kept: str) -> None:
        """At a safe boundary: when the deadline is reached, say so (the end time, and `kept`, what
        stays on disk for the rerun) and raise SystemExit(EXIT_PREEMPTED)."""
        if not self.deadline_reached:
            return
        from .errors import EXIT_PREEMPTED

        self._log(f"stopping: {self.deadline_note()}; {kept}; exiting with code {EXIT_PREEMPTED} (rerun to resume)")
        raise SystemExit(EXIT_PREEMPTED)

    def _handler(self, signum, frame) -> None:  # noqa: ARG002
        self.signum = signum
        if self.raise_on_signal:
            from .errors import EXIT_PREEMPTED

            raise SystemExit(EXIT_PREEMPTED)

    def _expire(self) -> None:
        """The hard deadline (timer thread): interrupt the main thread as SIGTERM would."""
        import _thread
        import signal

        if not self._active:
            return
        self.hard_stop = True
        self._log(f"stopping now: {self.deadline_note()} and the running piece did not finish within half of it; "
                  "finished pieces are kept")
        _thread.interrupt_main(signal.SIGTERM)

    def __enter__(self) -> Preemption:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name, None)
                if sig is not None:
                    self._previous[sig] = signal.signal(sig, self._handler)
            self._active = True
            left = None if self.end_time is None else self.end_time - self.margin / 2 - time.time()
            if self.raise_on_signal and left is not None and left > 0:  # past it: the first boundary stops
                self._timer = threading.Timer(left, self._expire)
                self._timer.daemon = True
                self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        import signal

        self._active = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


# ------------------------------------------------------------------------------------------------
# Requeue: a Slurm job that stopped for its time limit or a preemption goes back to the queue


REQUEUE_ENV = "AOT_SLURM_REQUEUE"


def slurm_job_fields(job_id: str) -> dict[str, str]:
    """`scontrol show job` as {field: value} ({} where it cannot answer). The job step plugin passes
    only a few SLURM_* variables to a rule's command (not SLURM_RESTART_COUNT), so the job's own
    record is asked."""
    import subprocess

    try:
        out = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return dict(word.split("=", 1) for word in out.split() if "=" in word)


def slurm_restarts(job_id: str, fields: dict[str, str] | None = None) -> int:
    """How often the job was requeued: SLURM_RESTART_COUNT where it reaches the command, else the
    job's `Restarts` field (0 where neither is known)."""
    given = os.environ.get("SLURM_RESTART_COUNT")
    if given and given.isdigit():
        return int(given)
    value = (fields if fields is not None else slurm_job_fields(job_id)).get("Restarts", "0")
    return int(value) if value.isdigit() else 0


def requeue_slurm_job(log=None) -> bool:
    """After a command exited with 75 (state saved, `aot.errors.EXIT_PREEMPTED`): put this Slurm
    job back into the queue with `scontrol requeue`, so that it runs again under the same job ID and
    resumes; Snakemake's executor sees the job pending again and keeps waiting for it. Nothing else
    is ever resubmitted: a job that failed on bad input (exit 2) or a bug fails for good.

    Only where the workflow asks for it (`AOT_SLURM_REQUEUE=<most requeues>` in the environment),
    inside a Slurm job (`SLURM_JOB_ID`), from the first process (rank 0 under torchrun) and while
    the job is RUNNING (not being cancelled) and has been requeued fewer times than allowed
    (`SLURM_RESTART_COUNT`, or the job's `Restarts`). Returns whether the
    requeue was asked for.
    """
    import subprocess

    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    limit, job = os.environ.get(REQUEUE_ENV), os.environ.get("SLURM_JOB_ID")
    if not limit or not job or os.environ.get("RANK", "0") != "0":
        return False
    fields = slurm_job_fields(job)
    # a job being cancelled (scancel: Snakemake stopping, a user) gets the same SIGTERM as at its
    # time limit, but is no longer RUNNING: it must end, not come back
    state = fields.get("JobState")
    if state and state != "RUNNING":
        log(f"Slurm job {job} is {state}, not running: not requeued (cancelled); rerun the workflow to resume")
        return False
    restarts = slurm_restarts(job, fields)
    if restarts >= int(limit):
        log(f"Slurm job {job} was requeued {restarts} times already ({REQUEUE_ENV}={limit}); not again")
        return False
    try:
        res = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        log(f"could not requeue Slurm job {job}: scontrol is not on PATH (in a container: use an image with Slurm's "
            "client commands, envs/Dockerfile installs slurm-client, and bind-mount the host's /etc/slurm and "
            "munge socket, e.g. apptainer --bind /etc/slurm,/run/munge); rerun the workflow to resume")
        return False
    except (OSError, subprocess.SubprocessError) as exc:
        log(f"could not requeue Slurm job {job}: {exc}")
        return False
    if res.returncode != 0:
        log(f"could not requeue Slurm job {job}: {res.stderr.strip() or res.stdout.strip()}")
        return False
    log(f"requeued Slurm job {job} (restart {restarts + 1} of at most {limit}): it resumes from the saved state")
    return True
