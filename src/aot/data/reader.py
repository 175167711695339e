"""Reading datasets in EDM's format: `ImageFolderDataset`, `load_all`, and the checks and summary of
`python -m aot data info|check`."""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from ..errors import UserError
from ..runtime import progress as progress_bar

LABELS_FILE = "dataset.json"

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> channels as numpy sees them (palette: indices)


def _file_ext(name: str) -> str:
    return os.path.splitext(name)[1].lower()


def _image_extensions() -> set[str]:
    PIL.Image.init()
    return set(PIL.Image.EXTENSION)


def _decode_image(data: bytes, fname: str, where: str) -> np.ndarray:
    """PNG/JPEG/... bytes -> uint8 CHW array (as EDM's loader: HW -> HW1 -> CHW)."""
    try:
        with PIL.Image.open(io.BytesIO(data)) as img:
            image = np.array(img)
    except (OSError, ValueError, SyntaxError, zlib.error) as exc:
        raise UserError(f"dataset {where}: image {fname} cannot be decoded ({exc})") from None
    if image.dtype != np.uint8:
        raise UserError(f"dataset {where}: image {fname} is not 8-bit (dtype {image.dtype})")
    if image.ndim == 2:
        image = image[:, :, np.newaxis]
    return image.transpose(2, 0, 1)


def _header_attrs(head: bytes, opener, fname: str, where: str) -> tuple[int, int, int]:
    """(channels, height, width) from a PNG header, or from PIL's lazy open for other formats."""
    if head[:8] == _PNG_SIGNATURE and len(head) >= 26 and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        bit_depth, colour = head[24], head[25]
        if bit_depth != 8 and colour != 3:
            raise UserError(f"dataset {where}: image {fname} is not 8-bit (PNG bit depth {bit_depth})")
        if colour not in _PNG_CHANNELS:
            raise UserError(f"dataset {where}: image {fname} has an invalid PNG colour type {colour}")
        return _PNG_CHANNELS[colour], height, width
    try:
        with opener() as f, PIL.Image.open(f) as img:
            width, height = img.size
            channels = len(img.getbands())
    except (OSError, ValueError, SyntaxError) as exc:
        raise UserError(f"dataset {where}: image {fname} cannot be read ({exc})") from None
    return channels, height, width


class ImageFolderDataset:
    """Images and labels from a zip archive or folder in EDM's format (like EDM's class of that name).

    `ds[i]` returns `(uint8 CHW array, float32 label)` where the label is one-hot for integer labels
    (EDM's convention) and has length 0 when labels are off or absent. `max_size` keeps a random but
    fixed subset (EDM's `random_seed` shuffle, then sorted); `xflip` doubles the dataset with
    mirrored copies. On opening, every image header is checked: a dataset with mixed resolutions or
    channel counts, non-square images, or (with `require_labels`) no labels fails with a UserError
    naming the file.
    """

    def __init__(self, path: str | os.PathLike, use_labels: bool = True, max_size: int | None = None,
                 xflip: bool = False, resolution: int | None = None, random_seed: int = 0,
                 cache: bool = False, require_labels: bool = False, check: bool = True,
                 use_pyspng: bool = True) -> None:  # use_pyspng: accepted for EDM's dataset_kwargs, unused
        self._path = str(path)
        self._zipfile: zipfile.ZipFile | None = None
        p = Path(self._path)
        if p.is_dir():
            self._type = "dir"
            self._all_fnames = {
                os.path.relpath(os.path.join(root, fname), start=self._path).replace("\\", "/")
                for root, _dirs, files in os.walk(self._path) for fname in files
            }
        elif p.is_file():
            if _file_ext(self._path) != ".zip":
                raise UserError(f"dataset {self._path} is neither a folder nor a .zip archive")
            self._type = "zip"
            try:
                self._all_fnames = set(self._get_zipfile().namelist())
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise UserError(
                    f"dataset {self._path} is not a readable zip archive (truncated or corrupt: {exc})") from None
        else:
            raise UserError(f"dataset {self._path} does not exist")

        exts = _image_extensions()
        self._image_fnames = sorted(f for f in self._all_fnames if _file_ext(f) in exts)
        if not self._image_fnames:
            raise UserError(f"dataset {self._path} contains no image files")
        self._name = os.path.splitext(os.path.basename(self._path.rstrip("/")))[0]

        first = self._load_raw_image(0)
        c, h, w = first.shape
        if h != w:
            raise UserError(f"dataset {self._path}: image {self._image_fnames[0]} is not square ({w}x{h})")
        if resolution is not None and h != resolution:
            raise UserError(f"dataset {self._path} has resolution {h}, expected {resolution}")
        self._raw_shape = [len(self._image_fnames), c, h, w]
        if check:
            self._check_headers()

        self._use_labels = bool(use_labels)
        self._cache = cache
        self._cached_images: dict[int, np.ndarray] = {}
        self._raw_labels: np.ndarray | None = None
        self._label_shape: list[int] | None = None

        self._raw_idx = np.arange(self._raw_shape[0], dtype=np.int64)
        if max_size is not None and self._raw_idx.size > max_size:
            np.random.RandomState(random_seed % (1 << 31)).shuffle(self._raw_idx)
            self._raw_idx = np.sort(self._raw_idx[:max_size])
        self._xflip = np.zeros(self._raw_idx.size, dtype=np.uint8)
        if xflip:
            self._raw_idx = np.tile(self._raw_idx, 2)
            self._xflip = np.concatenate([self._xflip, np.ones_like(self._xflip)])

        if require_labels:
            if not self._use_labels:
                raise UserError("require_labels needs use_labels=True")
            if LABELS_FILE not in self._all_fnames:
                raise UserError(f"dataset {self._path} has no {LABELS_FILE}, but labels are required")
            if not self.has_labels:
                raise UserError(f"dataset {self._path}: {LABELS_FILE} holds no labels, but labels are required")
        elif self._use_labels:
            self._get_raw_labels()  # fail early on a malformed label file

    # -- files --------------------------------------------------------------------------------

    def _get_zipfile(self) -> zipfile.ZipFile:
        if self._zipfile is None:
            self._zipfile = zipfile.ZipFile(self._path)
        return self._zipfile

    def _open_file(self, fname: str):
        if self._type == "dir":
            return open(os.path.join(self._path, fname), "rb")
        return self._get_zipfile().open(fname, "r")

    def _read_bytes(self, fname: str) -> bytes:
        try:
            with self._open_file(fname) as f:
                return f.read()
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
            raise UserError(f"dataset {self._path}: {fname} cannot be read (truncated or corrupt: {exc})") from None

    def _check_headers(self) -> None:
        """Every image has the first image's channels and resolution (headers only, no decoding)."""
        c, h, w = self._raw_shape[1:]
        for fname in self._image_fnames:
            try:
                with self._open_file(fname) as f:
                    head = f.read(33)
            except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
                raise UserError(f"dataset {self._path}: {fname} cannot be read (truncated or corrupt: {exc})") from None
            attrs = _header_attrs(head, lambda fn=fname: self._open_file(fn), fname, self._path)
            if attrs != (c, h, w):
                ac, ah, aw = attrs
                if ah != aw:
                    raise UserError(f"dataset {self._path}: image {fname} is not square ({aw}x{ah})")
                raise UserError(
                    f"dataset {self._path} mixes image shapes: {fname} is {ac}x{ah}x{aw} (CxHxW) "
                    f"but {self._image_fnames[0]} is {c}x{h}x{w}")

    def close(self) -> None:
        try:
            if self._zipfile is not None:
                self._zipfile.close()
        finally:
            self._zipfile = None

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _zipfile=None, _raw_labels=None)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def _load_raw_image(self, raw_idx: int) -> np.ndarray:
        fname = self._image_fnames[raw_idx]
        return _decode_image(self._read_bytes(fname), fname, self._path)

    def _load_raw_labels(self) -> np.ndarray | None:
        if LABELS_FILE not in self._all_fnames:
            return None
        try:
            labels = json.loads(self._read_bytes(LABELS_FILE))["labels"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
            raise UserError(f"dataset {self._path}: {LABELS_FILE} is malformed ({type(exc).__name__}: {exc})") from None
        if labels is None:
            return None
        try:
            labels = dict(labels)
        except (TypeError, ValueError):
            raise UserError(
                f"dataset {self._path}: {LABELS_FILE} 'labels' is not a list of [file, label] pairs") from None
        missing = [f for f in self._image_fnames if f not in labels]
        if missing:
            raise UserError(f"dataset {self._path}: {LABELS_FILE} has no label for {missing[0]} "
                            f"({len(missing)} images unlabelled)")
        try:
            arr = np.array([labels[f] for f in self._image_fnames])
            arr = arr.astype({1: np.int64, 2: np.float32}[arr.ndim])
        except (KeyError, ValueError, TypeError):
            raise UserError(
                f"dataset {self._path}: {LABELS_FILE} labels are neither class indices nor vectors") from None
        if arr.dtype == np.int64 and arr.size and arr.min() < 0:
            raise UserError(f"dataset {self._path}: {LABELS_FILE} has a negative class label ({arr.min()})")
        return arr

    def _get_raw_labels(self) -> np.ndarray:
        if self._raw_labels is None:
            raw = self._load_raw_labels() if self._use_labels else None
            if raw is None:
                raw = np.zeros([self._raw_shape[0], 0], dtype=np.float32)
            self._raw_labels = raw
        return self._raw_labels

    # -- dataset protocol ---------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self._raw_idx.size)

    def __getitem__(self, idx: int) -> tuple[np.ndarray, np.ndarray]:
        raw_idx = int(self._raw_idx[idx])
        image = self._cached_images.get(raw_idx)
        if image is None:
            image = self._load_raw_image(raw_idx)
            if list(image.shape) != self.image_shape:
                raise UserError(f"dataset {self._path}: image {self._image_fnames[raw_idx]} has shape "
                                f"{list(image.shape)}, expected {self.image_shape}")
            if self._cache:
                self._cached_images[raw_idx] = image
        if self._xflip[idx]:
            image = image[:, :, ::-1]
        return image.copy(), self.get_label(idx)

    def get_label(self, idx: int) -> np.ndarray:
        label = self._get_raw_labels()[self._raw_idx[idx]]
        if label.dtype == np.int64:
            onehot = np.zeros(self.label_shape, dtype=np.float32)
            onehot[label] = 1
            label = onehot
        return label.copy()

    def get_details(self, idx: int) -> dict:
        raw_idx = int(self._raw_idx[idx])
        return {"raw_idx": raw_idx, "xflip": bool(self._xflip[idx]),
                "raw_label": self._get_raw_labels()[raw_idx].copy()}

    @property
    def name(self) -> str:
        return self._name

    @property
    def path(self) -> str:
        return self._path

    @property
    def image_fnames(self) -> list[str]:
        return list(self._image_fnames)

    @property
    def image_shape(self) -> list[int]:
        return list(self._raw_shape[1:])

    @property
    def num_channels(self) -> int:
        return self.image_shape[0]

    @property
    def resolution(self) -> int:
        return self.image_shape[1]

    @property
    def label_shape(self) -> list[int]:
        if self._label_shape is None:
            raw = self._get_raw_labels()
            if raw.dtype == np.int64:
                self._label_shape = [int(np.max(raw)) + 1]
            else:
                self._label_shape = list(raw.shape[1:])
        return list(self._label_shape)

    @property
    def label_dim(self) -> int:
        return self.label_shape[0]

    @property
    def has_labels(self) -> bool:
        return any(x != 0 for x in self.label_shape)

    @property
    def has_onehot_labels(self) -> bool:
        return self._get_raw_labels().dtype == np.int64


def load_all(ds: ImageFolderDataset, progress: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """All images of `ds` in its index order: (uint8 [N, C, H, W], int64 class labels [N] or None).

    Respects `max_size` and `xflip`. Labels are class indices (the argmax of vector labels); None
    when the dataset has no labels or was opened with `use_labels=False`.
    """
    n = len(ds)
    c, h, w = ds.image_shape
    images = np.empty([n, c, h, w], dtype=np.uint8)
    prog = progress_bar(n, f"loading {ds.name}") if progress else None
    decoded: dict[int, np.ndarray] = {}
    for i in range(n):
        raw_idx = int(ds._raw_idx[i])
        img = decoded.get(raw_idx)
        if img is None:
            img = ds._cached_images.get(raw_idx)
        if img is None:
            img = ds._load_raw_image(raw_idx)
            if list(img.shape) != [c, h, w]:
                raise UserError(f"dataset {ds.path}: image {ds._image_fnames[raw_idx]} has shape "
                                f"{list(img.shape)}, expected {[c, h, w]}")
            if ds._xflip.any():
                decoded[raw_idx] = img
        images[i] = img[:, :, ::-1] if ds._xflip[i] else img
        if prog is not None:
            prog.update(1)
    if prog is not None:
        prog.close()
    labels = None
    if ds.has_labels:
        raw = ds._get_raw_labels()[ds._raw_idx]
        labels = raw.astype(np.int64) if raw.dtype == np.int64 else np.argmax(raw, axis=1).astype(np.int64)
    return images, labels


# --------------------------------------------------------------------------------------------
# Checks against what a run expects

# A class-wise assignment (Algorithm 2) pairs the images of each class with noise among themselves:
# with N pairs per pool and K classes a class has N / K images in a pool on average. Below this
# many, the class-wise problems are smaller than one of the paper's per-GPU minibatches (B = 32;
# the paper's conditional CIFAR-10 setting has 2048 / 10 = 205), and the pairing comes close to
# EDM's independent noise.
MIN_IMAGES_PER_CLASS = 32


def check_dataset(path: str | os.PathLike, *, resolution: int | None = None, channels: int | None = None,
                  labels: bool | None = None, classes: int | None = None) -> dict:
    """Open an EDM-format zip or folder, check every image header and the labels against what the
    run expects, and return `dataset_info`'s summary. `labels=True`: class labels are required
    (a conditional model); `False`: they are ignored; None: either. Failures are one-line UserErrors."""
    where = f"dataset {path}"
    if not Path(path).exists():
        raise UserError(f"{where} does not exist")
    ds = ImageFolderDataset(path, use_labels=labels is not False, require_labels=bool(labels),
                            resolution=resolution)
    try:
        if channels is not None and ds.num_channels != channels:
            raise UserError(f"{where} has {ds.num_channels}-channel images, expected {channels}")
        if ds.num_channels not in (1, 3):
            raise UserError(f"{where} has {ds.num_channels}-channel images; EDM's format holds 1 (grayscale) "
                            "or 3 (RGB)")
        info = _summary(ds, path)
    finally:
        ds.close()
    if labels and not info["integer_labels"]:
        raise UserError(f"{where}: {LABELS_FILE} holds label vectors, but a conditional model needs class indices")
    if classes is not None and labels is not False and info["labels"] and info["label_dim"] != classes:
        raise UserError(f"{where} has {info['label_dim']} classes, expected {classes}")
    return info


def class_pool_warning(pool_size: int, classes: int, what: str = "") -> str | None:
    """A warning when class-wise pools of `pool_size` pairs hold fewer than MIN_IMAGES_PER_CLASS
    images of a class on average, else None."""
    if classes <= 1 or pool_size / classes >= MIN_IMAGES_PER_CLASS:
        return None
    return (f"{what}pool_size N={pool_size} over {classes} classes gives {pool_size / classes:.1f} images per "
            f"class and pool on average (class-wise pairing, Algorithm 2); below {MIN_IMAGES_PER_CLASS} the "
            f"pairing is close to EDM's independent noise: N >= {MIN_IMAGES_PER_CLASS * classes} is advised")


# --------------------------------------------------------------------------------------------
# Information


def _summary(ds: ImageFolderDataset, path: str | os.PathLike) -> dict:
    info: dict[str, Any] = {
        "path": str(path), "name": ds.name, "resolution": ds.resolution, "channels": ds.num_channels,
        "count": len(ds), "labels": ds.has_labels, "label_dim": ds.label_dim if ds.has_labels else 0,
        "integer_labels": bool(ds.has_labels and ds.has_onehot_labels),
    }
    if info["integer_labels"]:
        counts = np.bincount(ds._get_raw_labels(), minlength=ds.label_dim)
        info["class_counts"] = [int(c) for c in counts]
    return info


def dataset_info(path: str | os.PathLike) -> dict:
    ds = ImageFolderDataset(path, use_labels=True)
    try:
        return _summary(ds, path)
    finally:
        ds.close()
