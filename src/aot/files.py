"""Files: every artefact is written under a temporary name next to its destination and renamed when
complete, so a killed job never leaves a file that looks finished; JSON results in and out; checksums
and the one `download` (checksum, retries, progress) that fetches datasets, EDM pickles and FID assets.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import UserError


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def save_torch_atomic(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save(obj)` to `path` atomically (atomic_path). Written through a file object, so the
    folder name inside torch's zip archive is torch's fixed one, not the random temporary file name:
    equal objects give byte-equal files."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)


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
            raise UserError(f"{_no_space(exc)} while writing {path}") from None
        raise


def _file_size_limit() -> int | None:
    """The process's file-size limit (`ulimit -f`) in bytes, or None when unlimited."""
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def _no_space(exc: BaseException) -> str:
    limit = _file_size_limit()
    if limit is None or (isinstance(exc, OSError) and exc.errno != errno.EFBIG):
        return "no space left on device"
    return f"file size limit reached (ulimit -f: {limit} bytes)"


def _disk_full(exc: BaseException, folder: Path) -> bool:
    """Did this write fail for lack of space, a quota or the file-size limit? (torch's zip writer
    reports these as a RuntimeError.)"""
    if isinstance(exc, OSError):
        return exc.errno in (errno.EFBIG, errno.ENOSPC, errno.EDQUOT)
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc)
    if "No space left" in text or "file write failed" in text:
        return True
    if "unexpected pos" in text and _file_size_limit() is not None:
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


def read_npz_arrays(path: str | os.PathLike, what: str) -> dict:
    """Every array of an existing .npz file (pickles refused); a UserError naming `what` and the
    file when it is not a readable npz."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:  # zipfile/ValueError/OSError: not an npz
        raise UserError(f"{what} {path} cannot be read: {exc}") from None


# ------------------------------------------------------------------------------------------------
# Checksums and downloads

_HEX_DIGITS = {"md5": 32, "sha256": 64}
_CHUNK = 1 << 20
# HTTP statuses worth another attempt (the server is busy or restarting); other 4xx are final.
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
RETRY_BACKOFF_S = 0.5  # wait before attempt k+1: RETRY_BACKOFF_S * 2**(k-1) seconds
PROGRESS_MIN_BYTES = 1 << 20  # smaller downloads print no progress bar


def file_digest(path: str | os.PathLike, algo: str = "sha256") -> str:
    """Hex digest of a file (md5 only as a checksum, never for security)."""
    h = _new_hash(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _new_hash(algo: str):
    return hashlib.new(algo, usedforsecurity=False) if algo == "md5" else hashlib.new(algo)


def sha256_file(path: str | os.PathLike) -> str:
    return file_digest(path, "sha256")


def checksum_value(algo: str, value: str | None) -> str | None:
    """A checksum as lower-case hex, None when not given; a UserError when it is malformed."""
    value = (value or "").strip()
    if not value:
        return None
    n = _HEX_DIGITS[algo]
    if len(value) != n or any(c not in "0123456789abcdefABCDEF" for c in value):
        raise UserError(f"--{algo} {value!r} is not a {n}-digit hexadecimal checksum")
    return value.lower()


def checksum_mismatch(what: str, algo: str, got: str, want: str) -> UserError:
    return UserError(f"{what}: wrong {algo} checksum {got}, expected {want} "
                     "(corrupt or incomplete download, or another file)")


def verify_checksum(path: str | os.PathLike, md5: str | None = None, sha256: str | None = None,
                    what: str | None = None) -> None:
    """Raise a UserError naming `what` (default: the path) unless the file has these checksums."""
    for algo, want in (("md5", md5), ("sha256", sha256)):
        want = checksum_value(algo, want)
        if want:
            got = file_digest(path, algo)
            if got != want:
                raise checksum_mismatch(str(what or path), algo, got, want)


class _Transient(Exception):
    """A failed attempt that another attempt may fix (connection, timeout, 5xx, short body)."""


def download(url: str, dest: str | os.PathLike, *, sha256: str | None = None, md5: str | None = None,
             retries: int = 3, timeout: float = 60.0) -> str:
    """Fetch `url` to `dest`; returns the file's SHA-256.

    The body goes to a temporary file next to `dest`, renamed onto it only when complete and
    matching the given checksums: on any failure `dest` is left as it was. Network errors, timeouts
    (`timeout` seconds without data), HTTP 408/429/5xx and truncated bodies are retried up to
    `retries` times, waiting 0.5 s, 1 s, 2 s, ...; other HTTP errors and a checksum mismatch are
    final. Downloads of 1 MiB or more show a progress bar (`aot.runtime.progress`).
    """
    dest = Path(dest)
    want = {algo: checksum_value(algo, value) for algo, value in (("sha256", sha256), ("md5", md5))}
    want = {algo: value for algo, value in want.items() if value}
    attempts = 1 + max(0, int(retries))
    for attempt in range(1, attempts + 1):
        try:
            return _download_once(url, dest, want, timeout)
        except _Transient as exc:
            if attempt == attempts:
                raise UserError(f"cannot download {url} ({attempts} attempts): {exc}") from None
            delay = RETRY_BACKOFF_S * 2 ** (attempt - 1)
            print(f"download of {url} failed ({exc}); attempt {attempt + 1} of {attempts} in {delay:g} s",
                  file=sys.stderr, flush=True)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _download_once(url: str, dest: Path, want: dict[str, str], timeout: float) -> str:
    import http.client
    import urllib.error
    import urllib.request

    hashes = {algo: _new_hash(algo) for algo in {"sha256", *want}}
    with atomic_path(dest) as tmp:
        try:
            response = urllib.request.urlopen(url, timeout=timeout)
        except urllib.error.HTTPError as exc:
            if exc.code in _RETRY_STATUS:
                raise _Transient(f"HTTP {exc.code} {exc.reason}") from None
            raise UserError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            raise _Transient(str(exc.reason)) from None
        except (OSError, http.client.HTTPException) as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from None
        with response, open(tmp, "wb") as f:
            total = int(response.headers.get("Content-Length") or 0)
            done = _copy_body(response, f, hashes, total, f"download {dest.name}")
        if total and done != total:
            raise _Transient(f"the connection closed after {done} of {total} bytes")
        for algo, expected in want.items():
            got = hashes[algo].hexdigest()
            if got != expected:
                raise checksum_mismatch(f"download of {url} to {dest}", algo, got, expected)
    return hashes["sha256"].hexdigest()


def _copy_body(response, f, hashes: dict, total: int, desc: str) -> int:
    import http.client

    from .runtime import progress

    bar = progress(total, desc, unit="B") if total >= PROGRESS_MIN_BYTES else None
    if bar is not None:
        bar.unit_scale, bar.unit_divisor = True, 1024  # KiB, MiB, ... instead of raw bytes
    done = 0
    try:
        while True:
            try:
                chunk = response.read(_CHUNK)
            except (OSError, http.client.HTTPException) as exc:
                raise _Transient(f"the connection failed after {done} bytes ({type(exc).__name__}: {exc})") from None
            if not chunk:
                return done
            f.write(chunk)
            for h in hashes.values():
                h.update(chunk)
            done += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
