"""Reading datasets in EDM's format: `ImageFolderDataset`, `load_all`, and the checks and summary of
`python -m aot data info|check`."""

from __future__ import annotations

import contextlib
import io
import os
import stat
import struct
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from ..errors import UserError
from ..files import one_line_text, parse_json, read_zip_member, zip_member_problem
from ..limits import CLASSES, DATASET_BYTES, IMAGE_PIXELS, MEMBER_BYTES, check_size
from ..runtime import progress as progress_bar

LABELS_FILE = "dataset.json"

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> channels as numpy sees them (palette: indices)


def _file_ext(name: str) -> str:
    return os.path.splitext(name)[1].lower()


def _image_extensions() -> set[str]:
    PIL.Image.init()
    return set(PIL.Image.EXTENSION)


# The image formats decoded (PIL's names): plain raster formats. Others that PIL lists (EPS, PDF,
# ...) may run external programs or parse far more than pixels; their files are refused.
DECODED_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")


def _check_pixels(width: int, height: int, fname: str, where: str) -> None:
    """An image's declared dimensions within $AOT_MAX_IMAGE_PIXELS, before it is decoded."""
    check_size(int(width) * int(height), IMAGE_PIXELS,
               f"dataset {where}: image {fname} declares {width}x{height} =")


@contextlib.contextmanager
def _pil_guard():
    """PIL's decompression-bomb check at our limit, its warning an error (nothing on stderr)."""
    saved = PIL.Image.MAX_IMAGE_PIXELS
    PIL.Image.MAX_IMAGE_PIXELS = IMAGE_PIXELS.value()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            yield
    finally:
        PIL.Image.MAX_IMAGE_PIXELS = saved


def _decode_image(data: bytes, fname: str, where: str) -> np.ndarray:
    """PNG/JPEG/... bytes -> uint8 CHW array (as EDM's loader: HW -> HW1 -> CHW). The dimensions are
    checked before the pixels are decoded; anything the decoder raises is a one-line UserError."""
    try:
        with _pil_guard(), PIL.Image.open(io.BytesIO(data), formats=DECODED_FORMATS) as img:
            _check_pixels(*img.size, fname, where)
            image = np.array(img)
    except UserError:
        raise
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning) as exc:
        raise UserError(f"dataset {where}: image {fname} is too large to decode ({one_line_text(str(exc))}; "
                        f"raise ${IMAGE_PIXELS.env} if it is trusted)") from None
    except PIL.UnidentifiedImageError:
        raise UserError(f"dataset {where}: image {fname} cannot be decoded (not a {', '.join(DECODED_FORMATS)} "
                        "image, or damaged)") from None
    except Exception as exc:  # a damaged or crafted image makes decoders raise many types
        raise UserError(f"dataset {where}: image {fname} cannot be decoded "
                        f"({one_line_text(str(exc)) or type(exc).__name__})") from None
    if image.dtype != np.uint8:
        raise UserError(f"dataset {where}: image {fname} is not 8-bit (dtype {image.dtype})")
    if image.ndim == 2:
        image = image[:, :, np.newaxis]
    if image.ndim != 3:
        raise UserError(f"dataset {where}: image {fname} has shape {list(image.shape)}, not height x width x channels")
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
        _check_pixels(width, height, fname, where)
        return _PNG_CHANNELS[colour], height, width
    try:
        with _pil_guard(), opener() as f, PIL.Image.open(f, formats=DECODED_FORMATS) as img:
            width, height = img.size
            channels = len(img.getbands())
    except UserError:
        raise
    except PIL.UnidentifiedImageError:
        raise UserError(f"dataset {where}: image {fname} cannot be read (not a {', '.join(DECODED_FORMATS)} "
                        "image, or damaged)") from None
    except Exception as exc:  # as in _decode_image
        raise UserError(f"dataset {where}: image {fname} cannot be read "
                        f"({one_line_text(str(exc)) or type(exc).__name__})") from None
    _check_pixels(width, height, fname, where)
    return channels, height, width


def _list_folder(root: str) -> tuple[set[str], dict[str, str]]:
    """(file names, {name: why it may not be read}) under folder `root`, relative, '/'-separated.
    Links are never followed (a linked folder is not entered; a linked file is not read), and only
    regular files may be read."""
    names: set[str] = set()
    unreadable: dict[str, str] = {}
    todo = [""]
    while todo:
        rel = todo.pop()
        with os.scandir(os.path.join(root, rel) if rel else root) as entries:
            for entry in entries:
                name = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_dir(follow_symlinks=False):
                    todo.append(name)
                    continue
                names.add(name)
                if entry.is_symlink():
                    unreadable[name] = "a symbolic link (links are not followed)"
                elif not entry.is_file(follow_symlinks=False):
                    unreadable[name] = "not a regular file (a FIFO, socket or device)"
    return names, unreadable


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
        self._infos: dict[str, zipfile.ZipInfo] = {}
        self._unreadable: dict[str, str] = {}
        p = Path(self._path)
        if p.is_dir():
            self._type = "dir"
            try:
                self._all_fnames, self._unreadable = _list_folder(self._path)
            except OSError as exc:
                raise UserError(f"dataset {self._path} cannot be listed: {exc.strerror}") from None
        elif p.is_file():
            if _file_ext(self._path) != ".zip":
                raise UserError(f"dataset {self._path} is neither a folder nor a .zip archive")
            self._type = "zip"
            try:
                self._archive_bytes = p.stat().st_size
                self._infos = {info.filename: info for info in self._get_zipfile().infolist()}
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
                raise UserError(f"dataset {self._path} is not a readable zip archive (truncated or corrupt: "
                                f"{one_line_text(str(exc))})") from None
            self._all_fnames = set(self._infos)
        elif p.exists():
            raise UserError(f"dataset {self._path} is neither a folder nor a regular file (a FIFO, socket or device)")
        else:
            raise UserError(f"dataset {self._path} does not exist")

        exts = _image_extensions()
        self._image_fnames = sorted(f for f in self._all_fnames if _file_ext(f) in exts)
        if not self._image_fnames:
            raise UserError(f"dataset {self._path} contains no image files")
        for fname in [*self._image_fnames, *([LABELS_FILE] if LABELS_FILE in self._all_fnames else [])]:
            self._check_member(fname)  # every file that will be read: a regular file within the limits
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

    def _check_member(self, fname: str) -> None:
        """A file of the dataset may be read: a regular file (no link, FIFO or device; in a zip
        archive, unencrypted and of a supported compression) of at most $AOT_MAX_MEMBER_BYTES."""
        name = one_line_text(fname)
        if self._type == "dir":
            if fname in self._unreadable:
                raise UserError(f"dataset {self._path}: {name} is {self._unreadable[fname]}")
            return
        info = self._infos[fname]
        problem = zip_member_problem(info, self._archive_bytes)
        if problem:
            raise UserError(f"dataset {self._path}: {name} is {problem}")
        check_size(info.file_size, MEMBER_BYTES, f"dataset {self._path}: {name} unpacks to")

    def _open_file(self, fname: str):
        if self._type == "dir":
            return self._open_regular(fname)
        return self._get_zipfile().open(self._infos[fname], "r")

    def _open_regular(self, fname: str):
        """A folder's file, opened without following a link or waiting on a FIFO, if it is a regular
        file of at most $AOT_MAX_MEMBER_BYTES (it may have changed since the folder was listed)."""
        name = one_line_text(fname)
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(os.path.join(self._path, fname), flags)
        except OSError as exc:
            if os.path.islink(os.path.join(self._path, fname)):
                raise UserError(f"dataset {self._path}: {name} is a symbolic link (links are not followed)") from None
            raise UserError(f"dataset {self._path}: {name} cannot be opened: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise UserError(f"dataset {self._path}: {name} is not a regular file (a FIFO, socket or device)")
            check_size(st.st_size, MEMBER_BYTES, f"dataset {self._path}: {name} holds")
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    def _read_bytes(self, fname: str) -> bytes:
        if self._type == "zip":
            return read_zip_member(self._get_zipfile(), self._infos[fname], f"dataset {self._path}",
                                   archive_bytes=self._archive_bytes)
        cap = MEMBER_BYTES.value()
        try:
            with self._open_file(fname) as f:
                data = f.read(cap + 1)
        except OSError as exc:
            raise UserError(f"dataset {self._path}: {fname} cannot be read ({exc.strerror or exc})") from None
        if len(data) > cap:  # the file grew since it was opened
            check_size(len(data), MEMBER_BYTES, f"dataset {self._path}: {one_line_text(fname)} holds more than")
        return data

    def _check_headers(self) -> None:
        """Every image has the first image's channels and resolution (headers only, no decoding)."""
        c, h, w = self._raw_shape[1:]
        for fname in self._image_fnames:
            try:
                with self._open_file(fname) as f:
                    head = f.read(33)
            except (zipfile.BadZipFile, OSError, EOFError, zlib.error, RuntimeError, NotImplementedError) as exc:
                raise UserError(f"dataset {self._path}: {one_line_text(fname)} cannot be read (truncated or "
                                f"corrupt: {one_line_text(str(exc))})") from None
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
        """dataset.json's labels, checked before any array is made: one per image, either class
        indices 0 .. $AOT_MAX_CLASSES - 1 (int64) or vectors of one length of finite numbers (float32)."""
        if LABELS_FILE not in self._all_fnames:
            return None
        where = f"dataset {self._path}: {LABELS_FILE}"
        doc = parse_json(self._read_bytes(LABELS_FILE), where, invalid="is malformed (not valid JSON)")
        if not isinstance(doc, dict) or "labels" not in doc:
            raise UserError(f"{where} is malformed (not an object with a 'labels' entry)")
        labels = doc["labels"]
        if labels is None:
            return None
        pairs = labels.items() if isinstance(labels, dict) else labels
        if not isinstance(labels, (dict, list)) or not all(
                isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], str) for p in pairs):
            raise UserError(f"{where} 'labels' is not a list of [file, label] pairs")
        mapping = dict(pairs)
        missing = [f for f in self._image_fnames if f not in mapping]
        if missing:
            raise UserError(f"{where} has no label for {one_line_text(missing[0])} ({len(missing)} images unlabelled)")
        values = [mapping[f] for f in self._image_fnames]
        max_classes = CLASSES.value()
        if all(type(v) is int or (type(v) is float and v.is_integer()) for v in values):
            values = [int(v) for v in values]  # EDM casts whole-number floats to class indices too
            for fname, v in zip(self._image_fnames, values):
                if v < 0:
                    raise UserError(f"{where} has a negative class label ({v}) for {one_line_text(fname)}")
                if v >= max_classes:
                    shown = v if v.bit_length() <= 128 else f"a {v.bit_length()}-bit integer"
                    raise UserError(f"{where}: the label of {one_line_text(fname)} is {shown}, outside the class "
                                    f"range 0..{max_classes - 1} ({CLASSES.hint()})")
            return np.array(values, dtype=np.int64)
        if all(isinstance(v, list) for v in values):
            dim = len(values[0])
            for fname, v in zip(self._image_fnames, values):
                if len(v) != dim or not all(type(x) is float or (type(x) is int and x.bit_length() <= 128) for x in v):
                    raise UserError(f"{where}: the label of {one_line_text(fname)} is not a vector of {dim} numbers "
                                    "like the first image's")
            if not 0 < dim <= max_classes:
                raise UserError(f"{where}: label vectors have {dim} entries, not 1..{max_classes} ({CLASSES.hint()})")
            arr = np.array(values, dtype=np.float64)
            wrong = ~(np.abs(arr) <= np.finfo(np.float32).max).all(axis=1)  # NaN, infinite or beyond float32
            if wrong.any():
                bad = int(np.argmax(wrong))
                raise UserError(f"{where}: the label of {one_line_text(self._image_fnames[bad])} holds a value that is "
                                "not a finite float32 number")
            return arr.astype(np.float32)
        raise UserError(f"{where} labels are neither class indices nor vectors")

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
    check_dataset_bytes(ds, n * c * h * w)
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


def check_dataset_bytes(ds: ImageFolderDataset, nbytes: int, labels: str = "") -> None:
    """What loading `ds` into memory takes (`nbytes`: its images, x-flips counted, and `labels`'
    arrays) within $AOT_MAX_DATASET_BYTES, checked before anything is allocated."""
    check_size(nbytes, DATASET_BYTES, f"dataset {ds.path}: {len(ds)} images of {'x'.join(map(str, ds.image_shape))}"
               f"{labels} take")


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
