"""Files: every artefact is written under a temporary name next to its destination and renamed when
complete, so a killed job never leaves a file that looks finished; JSON results in and out; checksums
and the one `download` (checksum, retries, progress) that fetches datasets, EDM pickles and FID assets.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import resource
import stat
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import UserError
from .limits import ARRAY_BYTES, JSON_BYTES, JSON_DEPTH, MEMBER_BYTES, Limit, check_size


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
    """`obj` as JSON at `path`, atomically. NaN and infinities are refused (JSON has neither): a
    UserError naming the file and the key, and nothing is written."""
    try:
        text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default, allow_nan=False)
    except ValueError:
        where = _non_finite_key(json.loads(json.dumps(obj, default=_json_default)))
        raise UserError(f"refusing to write {path}: {where} is not a finite number (JSON has no NaN or "
                        "infinity)") from None
    write_text_atomic(path, text + "\n")


def _non_finite_key(obj: Any, where: str = "the value") -> str:
    """Where in `obj` the first NaN or infinity is ('fid', 'models[0].curvature', ...)."""
    todo = [(obj, "")]
    while todo:
        value, key = todo.pop(0)
        if isinstance(value, float) and not math.isfinite(value):
            return key or where
        if isinstance(value, dict):
            todo += [(v, f"{key}.{k}" if key else str(k)) for k, v in value.items()]
        elif isinstance(value, list):
            todo += [(v, f"{key}[{i}]") for i, v in enumerate(value)]
    return where


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# ------------------------------------------------------------------------------------------------
# Reading JSON, zip members and npz arrays from outside, within aot.limits


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(data: str | bytes, what: str, invalid: str = "is not valid JSON") -> Any:
    """JSON text read from outside (`what` names the file): at most $AOT_MAX_JSON_BYTES bytes, values
    nested at most aot.limits.JSON_DEPTH levels, no NaN or infinity; else a one-line UserError
    (`invalid` says what text that does not parse is)."""
    check_size(len(data), JSON_BYTES, f"{what} is")
    try:
        obj = json.loads(data, parse_constant=_refuse_constant)
    except RecursionError:
        raise UserError(f"{what} nests JSON values more than {JSON_DEPTH} levels deep") from None
    except MemoryError:
        raise UserError(f"{what} holds more values than fit in memory ({len(data)} bytes; lower "
                        f"${JSON_BYTES.env} to refuse such files before parsing)") from None
    except (ValueError, UnicodeDecodeError) as exc:  # json.JSONDecodeError is a ValueError
        raise UserError(f"{what} {invalid}: {one_line_text(str(exc))}") from None
    if json_depth(obj) > JSON_DEPTH:
        raise UserError(f"{what} nests JSON values more than {JSON_DEPTH} levels deep")
    return obj


def json_depth(obj: Any) -> int:
    """How deeply lists and dicts nest in `obj` (a scalar: 0), without recursion."""
    deepest, todo = 0, [(obj, 1)]
    while todo:
        value, depth = todo.pop()
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list):
            deepest = max(deepest, depth)
            if depth <= JSON_DEPTH:
                todo.extend((v, depth + 1) for v in value if isinstance(v, (dict, list)))
    return deepest


def one_line_text(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """A JSON file read from outside, within the limits of `parse_json`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    check_size(path.stat().st_size, JSON_BYTES, f"{what} {path} is")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{what} {path} cannot be read: {exc.strerror}") from None
    return parse_json(data, f"{what} {path}")


def _supported_compression() -> dict[int, str]:
    methods = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}
    if getattr(zipfile, "bz2", None) is not None:
        methods[zipfile.ZIP_BZIP2] = "bzip2"
    if getattr(zipfile, "lzma", None) is not None:
        methods[zipfile.ZIP_LZMA] = "lzma"
    return methods


ZIP_COMPRESSION = _supported_compression()


def zip_member_problem(info: zipfile.ZipInfo, archive_bytes: int | None = None) -> str | None:
    """Why the zip member `info` may not be read (None: it may): only regular files, unencrypted,
    of a compression this reader supports, whose stored bytes lie within the archive."""
    mode = info.external_attr >> 16
    if info.is_dir():
        return "a folder, not a file"
    if stat.S_IFMT(mode) and not stat.S_ISREG(mode):
        return "a symbolic link, not a file" if stat.S_ISLNK(mode) else "not a regular file"
    if info.flag_bits & 0x1:
        return "encrypted"
    if info.compress_type not in ZIP_COMPRESSION:
        return (f"compressed with method {info.compress_type}, which is not supported "
                f"({', '.join(ZIP_COMPRESSION.values())})")
    if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
        return f"stored (not compressed) but declares {info.file_size} bytes in {info.compress_size}"
    if archive_bytes is not None and info.header_offset + info.compress_size > archive_bytes:
        return f"declared to reach byte {info.header_offset + info.compress_size} of a {archive_bytes}-byte archive"
    return None


def read_zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, what: str, limit: Limit = MEMBER_BYTES,
                    archive_bytes: int | None = None) -> bytes:
    """The bytes of member `info` (checked by zip_member_problem), at most `limit` of them: read
    into memory, never extracted to the file system. Errors name `what` (the archive) and the member."""
    name = one_line_text(info.filename)
    problem = zip_member_problem(info, archive_bytes)
    if problem:
        raise UserError(f"{what}: {name} is {problem}")
    check_size(info.file_size, limit, f"{what}: {name} unpacks to")
    cap = limit.value()
    try:
        with zf.open(info) as f:
            data = f.read(cap + 1)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, RuntimeError, NotImplementedError,
            ValueError) as exc:
        raise UserError(f"{what}: {name} cannot be read (truncated or corrupt: {one_line_text(str(exc))})") from None
    if len(data) > cap:
        check_size(len(data), limit, f"{what}: {name} unpacks to more than")
    return data


def npz_headers(path: str | os.PathLike, what: str, keys: Any = None) -> dict:
    """{key: (shape, dtype)} of the arrays of an .npz file (only `keys` when given), from their
    headers alone: each a regular, supported member whose declared array fits in the member and in
    $AOT_MAX_ARRAY_BYTES, of a plain (not object) dtype. Nothing is allocated."""
    return {k: v[:2] for k, v in _npz_members(Path(path), what, keys).items()}


def _npz_members(path: Path, what: str, keys: Any = None, caps: dict | None = None) -> dict:
    import numpy as np

    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    out = {}
    try:
        archive_bytes = path.stat().st_size
        with zipfile.ZipFile(path) as zf:
            infos = {i.filename: i for i in zf.infolist() if i.filename.endswith(".npy")}
            names = [n[:-4] for n in infos]
            for key in names if keys is None else [k for k in keys if k in names]:
                info = infos[key + ".npy"]
                problem = zip_member_problem(info, archive_bytes)
                if problem:
                    raise UserError(f"{what} {path}: {key!r} is {problem}")
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    if version not in readers:  # 3.0 only adds UTF-8 field names, which plain arrays lack
                        raise UserError(f"{what} {path}: {key!r} has .npy format version {version}, "
                                        "not 1.0 or 2.0")
                    shape, _fortran, dtype = readers[version](f)
                    header = f.tell()
                if dtype.hasobject:
                    raise UserError(f"{what} {path}: {key!r} holds Python objects (not read)")
                nbytes = math.prod(shape) * dtype.itemsize
                limit, factor = (caps or {}).get(key, (ARRAY_BYTES, 1))
                check_size(nbytes, limit, f"{what} {path}: {key!r} ({dtype} {list(shape)}) holds",
                           limit.value() * factor)
                if header + nbytes > info.file_size:
                    raise UserError(f"{what} {path}: {key!r} declares {dtype} {list(shape)} ({nbytes} bytes), "
                                    f"more than its member holds ({info.file_size - header})")
                out[key] = (tuple(int(n) for n in shape), dtype, info)
    except UserError:
        raise
    except Exception as exc:  # zipfile/ValueError/OSError: not an npz
        raise UserError(f"{what} {path} cannot be read: {one_line_text(str(exc)) or type(exc).__name__}") from None
    return out


def read_npz(path: str | os.PathLike, what: str, keys: Any = None, caps: dict | None = None) -> dict:
    """The arrays of an .npz file (only `keys` when given; pickles refused), each checked from its
    header before it is read (npz_headers); `caps` {key: (Limit, factor)} caps a key at factor times
    another limit than $AOT_MAX_ARRAY_BYTES (a JSON string: aot.limits.JSON_BYTES). A UserError
    naming `what` and the file when it is not a readable npz."""
    import numpy as np

    path = Path(path)
    members = _npz_members(path, what, keys, caps)
    out = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for key, (_shape, _dtype, info) in members.items():
                with zf.open(info) as f:
                    out[key] = np.lib.format.read_array(f, allow_pickle=False)
    except Exception as exc:
        raise UserError(f"{what} {path} cannot be read: {one_line_text(str(exc)) or type(exc).__name__}") from None
    return out


def read_npz_arrays(path: str | os.PathLike, what: str) -> dict:
    """Every array of an existing .npz file (pickles refused, sizes checked before reading); a
    UserError naming `what` and the file when it is not a readable npz."""
    return read_npz(path, what)


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
