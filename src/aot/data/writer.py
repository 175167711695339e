"""Writing datasets in EDM's format: a stored zip archive or a folder of PNG images plus `dataset.json`,
as EDM's `dataset_tool.py` writes them."""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import PIL.Image

from ..errors import UserError
from ..files import atomic_path
from ..runtime import progress as progress_bar
from .reader import LABELS_FILE


def _encode_png(img: np.ndarray) -> bytes:
    """HWC or HW uint8 -> uncompressed PNG bytes, as EDM's dataset_tool writes them."""
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    mode = "L" if img.ndim == 2 else {3: "RGB"}.get(img.shape[2])
    if mode is None:
        raise UserError(f"images must have 1 or 3 channels, got {img.shape[2]}")
    buf = io.BytesIO()
    PIL.Image.fromarray(img, mode).save(buf, format="png", compress_level=0, optimize=False)
    return buf.getvalue()


def archive_fname(idx: int) -> str:
    s = f"{idx:08d}"
    return f"{s[:5]}/img{s}.png"


def write_dataset(dest: str | os.PathLike, images: Iterable[np.ndarray], labels: Iterable[int] | None = None,
                  total: int | None = None, what: str = "writing dataset") -> int:
    """Write uint8 HWC (or HW) images, and optional integer labels, in EDM's layout.

    `dest` ending in `.zip` gives a stored zip archive; anything else a folder (which must not exist
    or be empty). Written under a temporary name and renamed at the end. All images must share one
    square shape. Returns the number of images written.
    """
    dest = Path(dest)
    is_zip = dest.suffix.lower() == ".zip"
    if not is_zip and dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UserError(f"--dest folder {dest} exists and is not empty")
    label_iter: Iterator | None = iter(labels) if labels is not None else None
    prog = progress_bar(total, what) if total else None

    def produce(save) -> int:
        attrs = None
        entries = []
        count = 0
        for idx, img in enumerate(images):
            img = np.asarray(img)
            if img.dtype != np.uint8:
                raise UserError(f"image {idx} has dtype {img.dtype}, expected uint8")
            channels = img.shape[2] if img.ndim == 3 else 1
            cur = (img.shape[0], img.shape[1], channels)
            name = archive_fname(idx)
            if attrs is None:
                attrs = cur
                if cur[0] != cur[1]:
                    raise UserError(f"images must be square, got {cur[1]}x{cur[0]} for {name}")
                if channels not in (1, 3):
                    raise UserError(f"images must be RGB or grayscale, got {channels} channels")
            elif cur != attrs:
                raise UserError(f"image {name} is {cur[1]}x{cur[0]}x{cur[2]} (WxHxC) but the dataset is "
                                f"{attrs[1]}x{attrs[0]}x{attrs[2]}: mixed resolutions or channels")
            save(name, _encode_png(img))
            if label_iter is not None:
                try:
                    entries.append([name, int(next(label_iter))])
                except StopIteration:
                    raise UserError(f"fewer labels than images (no label for {name})") from None
            count += 1
            if prog is not None:
                prog.update(1)
        if count == 0:
            raise UserError("no images to write")
        meta = {"labels": entries if label_iter is not None else None}
        save(LABELS_FILE, json.dumps(meta).encode("utf8"))
        return count

    try:
        if is_zip:
            with atomic_path(dest) as tmp:
                with zipfile.ZipFile(tmp, mode="w", compression=zipfile.ZIP_STORED) as zf:
                    return produce(lambda name, data: zf.writestr(name, data))
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmpdir = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
        try:
            def save(name: str, data: bytes) -> None:
                out = tmpdir / name
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(data)
            count = produce(save)
            if dest.exists():
                dest.rmdir()
            os.replace(tmpdir, dest)
        except BaseException:
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise
        return count
    finally:
        if prog is not None:
            prog.close()
