"""The sample-set file format: what `aot generate` writes and FID, DG and the report read.

A sample set `X.npz` holds `images` uint8 [N, H, W, C], `labels` int64 [N] (-1 when unconditional),
`seeds` int64 [N] (image i was made from seed seeds[i], as in EDM's generate.py) and `meta`, a JSON
string (model, sampler, seeds, num_images, fingerprint, time_s, env; `fingerprint` as below).
`read_sample_set` is its one reader; `sample_set_shape` reads only the shape of its images and
`sample_set_meta` only its meta.

While a set is being made, finished pieces live in `X.npz.shards/shard-000000.npz`, ... (images,
labels, seeds, the generation fingerprint and the sampling time of that shard). A shard counts only
if its fingerprint, a sha256 over everything that determines the images (network weights, sampler
function and settings, class labels), matches the run's; others are discarded. `X.npz` is written
from the shards once every seed is in, and the shard folder is removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UserError
from .files import atomic_path, npz_headers, parse_json, read_npz
from .limits import JSON_BYTES

SHARD_RE = re.compile(r"^shard-(\d{6})\.npz$")
SHARD_KEYS = ("images", "labels", "seeds", "fingerprint", "time_s")


# ------------------------------------------------------------------------------------------------
# Fingerprint of everything that determines the images


def _tensor_digest(h: hashlib._Hash, module: torch.nn.Module) -> None:
    for name, value in sorted(module.state_dict().items()):
        h.update(name.encode())
        t = value.detach().to("cpu").contiguous().reshape(-1)
        h.update(str(t.dtype).encode() + str(list(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def _plain(value: Any, h: hashlib._Hash) -> Any:
    if isinstance(value, torch.nn.Module):
        _tensor_digest(h, value)
        return f"<module {type(value).__name__}>"
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v, h) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_plain(v, h) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if callable(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', repr(value))}"
    return repr(value)


def generation_fingerprint(net: torch.nn.Module, sampler_fn: Callable, sampler_kwargs: dict,
                           class_labels: str | int, extra: Any = None) -> str:
    """sha256 over the network weights, the sampler function and settings, and the class labels.

    Modules inside `sampler_kwargs` (a discriminator) count by their weights; `extra` names anything
    else that determines the images (a precision setting, a discriminator path)."""
    h = hashlib.sha256()
    _tensor_digest(h, net)
    desc = {
        "net": type(net).__name__, "img": [int(net.img_channels), int(net.img_resolution)],
        "label_dim": int(getattr(net, "label_dim", 0) or 0),
        "sampler_fn": _plain(sampler_fn, h), "sampler_kwargs": _plain(sampler_kwargs, h),
        "class_labels": class_labels, "extra": _plain(extra, h),
    }
    h.update(json.dumps(desc, sort_keys=True).encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------
# Shards


def shards_dir(out: str | os.PathLike) -> Path:
    """The shard folder of sample set `out`: `X.npz` -> `X.npz.shards`."""
    out = Path(out)
    return out.with_name(out.name + ".shards")


def shard_path(sdir: Path, k: int) -> Path:
    return sdir / f"shard-{k:06d}.npz"


def read_shard(path: Path) -> dict | None:
    """A shard's arrays, or None when it is missing or damaged (a damaged shard is simply redone);
    sizes are checked from the arrays' headers before anything is read (aot.files.read_npz)."""
    try:
        rec = read_npz(path, "shard", SHARD_KEYS)
    except Exception:
        return None
    return rec if set(rec) == set(SHARD_KEYS) else None


def shard_is_valid(rec: dict | None, fingerprint: str, seeds: Sequence[int]) -> bool:
    return rec is not None and str(rec["fingerprint"]) == fingerprint and rec["seeds"].tolist() == list(seeds)


def scan_shards(sdir: Path, fingerprint: str, chunks: list[list[int]], log: Callable[[str], None]) -> set[int]:
    """Indices of the valid finished shards in `sdir`; stale, damaged or half-written files are removed."""
    done: set[int] = set()
    if not sdir.is_dir():
        return done
    stale = 0
    for p in sorted(sdir.iterdir()):
        m = SHARD_RE.match(p.name)
        if p.name.startswith(".") and ".tmp" in p.name:
            with contextlib.suppress(OSError):
                p.unlink()  # left by a killed writer
            continue
        if not m:
            continue
        k = int(m.group(1))
        if k < len(chunks) and shard_is_valid(read_shard(p), fingerprint, chunks[k]):
            done.add(k)
        else:
            stale += 1
            with contextlib.suppress(OSError):
                p.unlink()
    if stale:
        log(f"discarded {stale} shard(s) in {sdir} made with other settings or damaged")
    return done


def write_shard(sdir: Path, k: int, images: np.ndarray, labels: np.ndarray, seeds: Sequence[int],
                fingerprint: str, time_s: float) -> None:
    with atomic_path(shard_path(sdir, k)) as tmp:
        np.savez(tmp, images=images, labels=labels, seeds=np.asarray(seeds, dtype=np.int64),
                 fingerprint=np.array(fingerprint), time_s=np.array(time_s))


def read_shards(out: str | os.PathLike, chunks: list[list[int]], fingerprint: str):
    """The complete shards of sample set `out`, joined in seed order: (images, labels, seeds, time_s),
    time_s being the sampling time summed over the shards."""
    sdir = shards_dir(out)
    parts = []
    for k, chunk in enumerate(chunks):
        rec = read_shard(shard_path(sdir, k))
        if not shard_is_valid(rec, fingerprint, chunk):
            raise RuntimeError(f"shard {k} of {out} is missing or damaged after generation")
        parts.append(rec)
    return (np.concatenate([p["images"] for p in parts]), np.concatenate([p["labels"] for p in parts]),
            np.concatenate([p["seeds"] for p in parts]), float(sum(float(p["time_s"]) for p in parts)))


def write_sample_set(out: str | os.PathLike, images: np.ndarray, labels: np.ndarray, seeds: np.ndarray,
                     meta: dict, keep_shards: bool = False) -> None:
    """Write sample set `out` atomically and remove its shard folder (unless `keep_shards`: a job
    that measures the set next keeps them until the measurement is written, see remove_shards)."""
    with atomic_path(out) as tmp:
        np.savez(tmp, images=images, labels=labels, seeds=seeds, meta=np.array(json.dumps(meta, default=str)))
    if not keep_shards:
        remove_shards(out)


def remove_shards(out: str | os.PathLike) -> None:
    """Remove the shard folder of sample set `out` (absent: nothing to do)."""
    shutil.rmtree(shards_dir(out), ignore_errors=True)


def save_grid(path: str | os.PathLike, images: np.ndarray, max_images: int = 64) -> None:
    """A PNG grid (ceil(sqrt(n)) columns) of the first `max_images` uint8 NHWC images."""
    import PIL.Image

    imgs = images[:max_images]
    n, h, w, c = imgs.shape
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    canvas = np.zeros([rows * h, cols * w, c], dtype=np.uint8)
    for i, img in enumerate(imgs):
        r, q = divmod(i, cols)
        canvas[r * h:(r + 1) * h, q * w:(q + 1) * w] = img
    pil = PIL.Image.fromarray(canvas[:, :, 0], "L") if c == 1 else PIL.Image.fromarray(canvas, "RGB")
    with atomic_path(path) as tmp:
        pil.save(tmp, format="png")


# ------------------------------------------------------------------------------------------------
# The reader


# The entries of a sample set and the largest `meta` string (a JSON text of $AOT_MAX_JSON_BYTES bytes
# in numpy's 4-byte characters).
SAMPLE_SET_KEYS = ("images", "labels", "seeds", "meta")
_META_CAP = {"meta": (JSON_BYTES, 4)}


def read_sample_set(path: str | os.PathLike) -> dict:
    """Read a sample set npz: dict(images uint8 NHWC, labels, seeds (None if absent), meta=dict).

    The one reader of sample sets (FID, reports and DG use it); every problem is a UserError
    naming the file and the entry. Every array's shape and dtype are checked from its header before
    it is read (aot.files.npz_headers: within $AOT_MAX_ARRAY_BYTES); `labels` and `seeds` hold one
    integer per image; `meta` is a JSON object within the limits of aot.files.parse_json."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sample set {path} does not exist")
    headers = npz_headers(path, "sample set", SAMPLE_SET_KEYS)
    if "images" not in headers:
        raise UserError(f"sample set {path} has no 'images' array (keys: {', '.join(_npz_keys(path))})")
    shape, dtype = headers["images"]
    _check_images(path, dtype, shape)
    for key in ("labels", "seeds"):
        if key in headers:
            kshape, kdtype = headers[key]
            if kdtype.kind not in "iu" or kshape != (shape[0],):
                raise UserError(f"sample set {path}: {key!r} must be one integer per image ({shape[0]}), got "
                                f"{kdtype} {list(kshape)}")
    if "meta" in headers:
        mshape, mdtype = headers["meta"]
        if mdtype.kind not in "US" or mshape not in ((), (1,)):
            raise UserError(f"sample set {path}: 'meta' must be one JSON string, got {mdtype} {list(mshape)}")
    arrays = read_npz(path, "sample set", SAMPLE_SET_KEYS, caps=_META_CAP)
    rec = {k: arrays.get(k) for k in ("images", "labels", "seeds")}
    rec["meta"] = _parse_meta(arrays["meta"], path) if "meta" in arrays else {}
    return rec


def _npz_keys(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as zf:
            return [n[:-4] if n.endswith(".npy") else n for n in zf.namelist()]
    except Exception:
        return []


def _parse_meta(raw: np.ndarray, path: Path) -> dict:
    """A sample set's `meta` entry: one JSON object (aot.files.parse_json's limits)."""
    text = raw.item() if raw.ndim == 0 else raw[0]
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    meta = parse_json(str(text), f"sample set {path}: 'meta'", invalid="is not a JSON string")
    if not isinstance(meta, dict):
        raise UserError(f"sample set {path}: 'meta' is a JSON {type(meta).__name__}, not an object")
    return meta


def _check_images(path: Path, dtype: np.dtype, shape: tuple) -> None:
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] not in (1, 3) or 0 in shape[1:3]:
        raise UserError(f"sample set {path}: 'images' must be uint8 [N, H, W, C] with C in (1, 3), "
                        f"got {dtype} {tuple(shape)}")


def sample_set_meta(path: str | os.PathLike) -> dict | None:
    """The meta dict of a sample set, reading nothing but its `meta` entry (a job that keeps a
    finished measurement checks it in moments); None when the file has no readable meta."""
    try:
        arrays = read_npz(path, "sample set", ("meta",), caps=_META_CAP)
        return _parse_meta(arrays["meta"], Path(path)) if "meta" in arrays else None
    except UserError:
        return None


def sample_set_shape(path: str | os.PathLike) -> tuple[int, int, int, int]:
    """The shape [N, H, W, C] of a sample set's images from the array's header alone (nothing else is
    read), with the errors of `read_sample_set`: a job over several sets checks them all before it works."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sample set {path} does not exist")
    headers = npz_headers(path, "sample set", ("images",))
    if "images" not in headers:
        raise UserError(f"sample set {path} has no 'images' array (keys: {', '.join(_npz_keys(path))})")
    shape, dtype = headers["images"]
    _check_images(path, dtype, shape)
    return tuple(int(v) for v in shape)
