"""Shared plumbing: clean command-line errors, atomic files, progress lines, result JSON.

Every command-line entry point of `aot` is wrapped by `cli_main`, so that bad input gives one line
on stderr naming the problem and exit code 2, while real bugs keep their traceback. Every artefact
is written under a temporary name in the destination folder and renamed when complete, so a killed
job never leaves a file that looks finished.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

EXIT_USER_ERROR = 2
# Training saved its state after SIGTERM/SIGUSR1 (Slurm time limit or preemption); rerun to resume.
EXIT_PREEMPTED = 75  # EX_TEMPFAIL


class UserError(Exception):
    """Bad input (config, dataset, checkpoint, command-line value). Printed as one line, exit 2."""


def cli_main(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a `main(argv=None)` so that `UserError` becomes one stderr line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_USER_ERROR) from None

    return wrapper


# --------------------------------------------------------------------------------------------
# Atomic files


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` when the block succeeds.

    On any exception the temporary file is removed and `path` is left as it was. The temporary
    name keeps the final suffix (so numpy/torch do not append their own) and starts with a dot
    and ends in `.tmp<suffix>`, which no rule declares as an output.
    """
    path = Path(path)
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output folder {parent}: {exc.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise UserError(f"output folder {parent} is not writable")
    suffix = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{suffix}", dir=parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; finished files get the usual mode
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _fsync_file(tmp_path)
        os.replace(tmp_path, path)
    except BaseException as exc:
        full = _disk_full(exc, parent)
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        if full:
            raise UserError(f"no space left on device while writing {path}") from None
        raise


def _disk_full(exc: BaseException, folder: Path) -> bool:
    """Did this write fail for lack of space? (torch's zip writer reports it as a RuntimeError.)"""
    if isinstance(exc, OSError):
        return exc.errno in (28, 122)  # ENOSPC, EDQUOT
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc)
    if "No space left" in text or "file write failed" in text:
        return True
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < (1 << 20) and "unexpected pos" in text


def _fsync_file(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{what} {path} is not valid JSON: {exc}") from None


# --------------------------------------------------------------------------------------------
# Parsing command-line values


_RANGE_RE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")


def parse_int_list(s: str | list | range, what: str = "seeds") -> list[int]:
    """Parse '0-49999', '1,2,5-10' or a list into a list of ints (EDM's `parse_int_list`)."""
    if isinstance(s, (list, tuple, range)):
        return [int(x) for x in s]
    out: list[int] = []
    for part in str(s).split(","):
        part = part.strip()
        if not part:
            continue
        m = _RANGE_RE.match(part)
        try:
            if m:
                lo, hi = int(m.group(1)), int(m.group(2))
                if hi < lo:
                    raise UserError(f"{what}: range {part!r} ends before it starts")
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise UserError(f"{what}: {part!r} is not an integer or a range like 0-49999") from None
    if not out:
        raise UserError(f"{what}: {s!r} names no values")
    return out


class ArgParser(argparse.ArgumentParser):
    """argparse whose usage errors are UserErrors: one line and exit 2 under `cli_main`."""

    def error(self, message: str):
        raise UserError(message)


def number_arg(name: str, kind: type = float, positive: bool = False, nonneg: bool = False,
               allow_inf: bool = False):
    """An argparse `type=` for a number option that names the option in its error."""
    import math

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


def parse_bool(s: Any) -> bool:
    """'true'/'false' (also 1/0, yes/no, on/off) for boolean command-line options."""
    v = str(s).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def positive_int(name: str, value: Any) -> int:
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be an integer, got {value!r}") from None
    if v <= 0:
        raise UserError(f"{name} must be positive, got {v}")
    return v


# --------------------------------------------------------------------------------------------
# Progress and provenance


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


def require_file(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} {path} does not exist")
    return path
