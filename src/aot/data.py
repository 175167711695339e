"""Datasets in EDM's format, and their preparation.

The format is the one NVlabs/edm's `dataset_tool.py` writes: a zip archive (stored, not deflated) or
a folder of PNG images named `00000/img00000000.png`, `00000/img00000001.png`, ... plus a
`dataset.json` at the root holding `{"labels": [["00000/img00000000.png", 6], ...]}` (or
`{"labels": null}`). EDM's own `cifar10-32x32.zip` loads unchanged, and archives written here load
in EDM.

Command line (aot.cli.data):

    python -m aot data cifar10 --source URL_OR_TARBALL [--md5 HEX | --sha256 HEX] --dest out.zip
    python -m aot data download --url URL [--md5 HEX | --sha256 HEX] --dest FILE
    python -m aot data digits --resolution 8 --dest out.zip
    python -m aot data info PATH
    python -m aot data check PATH [--resolution R] [--channels C] [--labels | --no-labels] [--classes K]
    python -m aot data import --source PATH --dest DEST [--copy] [same checks as `check`]
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import struct
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from .errors import UserError
from .files import atomic_path, checksum_value, download, verify_checksum
from .pickles import NUMPY_ARRAY, NUMPY_SCALAR, InertUnpickler, codecs_encode, describe_failure, one_line
from .runtime import progress as progress_bar

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_TARBALL_NAME = "cifar-10-python.tar.gz"
LABELS_FILE = "dataset.json"

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> channels as numpy sees them (palette: indices)


# --------------------------------------------------------------------------------------------
# Reading


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


def open_dataset(path: str | os.PathLike, **kwargs: Any) -> ImageFolderDataset:
    """`ImageFolderDataset(path, **kwargs)` (every failure is a one-line UserError)."""
    return ImageFolderDataset(path, **kwargs)


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
# Writing


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


# --------------------------------------------------------------------------------------------
# CIFAR-10


# CIFAR-10's batches are Python 2 pickles of {"batch_label", "labels", "data", "filenames"}, read with
# aot.pickles.InertUnpickler: numpy arrays and scalars of numeric dtypes, text and plain containers.
_CIFAR_ALLOWED = {**NUMPY_ARRAY, **NUMPY_SCALAR, ("_codecs", "encode"): codecs_encode}
_CIFAR_BATCH_BYTES = 256 << 20  # an official batch is 31 MB
_CIFAR_SHAPE = (3, 32, 32)


def _read_cifar_batch(raw: bytes, what: str) -> tuple[np.ndarray, np.ndarray]:
    """One `data_batch_N`: uint8 data [N, 3072] and N integer labels in 0..9, checked before use."""
    try:
        obj = InertUnpickler(io.BytesIO(raw), _CIFAR_ALLOWED, encoding="latin1").load_tree()
    except UserError as exc:
        raise type(exc)(one_line(f"{what} is not a plain CIFAR-10 batch: {exc}")) from None
    except Exception as exc:  # a damaged pickle raises many types
        raise UserError(f"{what} is truncated or corrupt ({describe_failure(exc)})") from None
    if type(obj) is not dict:
        raise UserError(f"{what} is not a CIFAR-10 batch (a {type(obj).__name__}, not a dict)")
    batch = {(k.decode("latin1") if type(k) is bytes else k): v for k, v in obj.items()}
    for key in ("data", "labels"):
        if key not in batch:
            raise UserError(f"{what} has no {key!r} entry")
    data, labels = batch["data"], batch["labels"]
    n_values = int(np.prod(_CIFAR_SHAPE))
    if type(data) is not np.ndarray or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != n_values:
        found = f"{data.dtype} {list(data.shape)}" if type(data) is np.ndarray else type(data).__name__
        raise UserError(f"{what} holds data {found}, expected a uint8 array [N, {n_values}]")
    if type(labels) is np.ndarray and labels.ndim == 1 and labels.dtype.kind in "iu":
        labels = labels.tolist()
    if type(labels) is not list or not all(type(x) is int for x in labels):
        raise UserError(f"{what}: labels are not a list of integers")
    if len(labels) != data.shape[0]:
        raise UserError(f"{what} holds {data.shape[0]} images but {len(labels)} labels")
    if not all(0 <= x < 10 for x in labels):
        raise UserError(f"{what} has labels outside 0..9")
    return data.reshape(-1, *_CIFAR_SHAPE), np.array(labels, dtype=np.int64)


def _member_kind(member: tarfile.TarInfo) -> str:
    return ("a symbolic link" if member.issym() else "a hard link" if member.islnk()
            else "a folder" if member.isdir() else "not a regular file")


def read_cifar10_tarball(path: str | os.PathLike, max_images: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The 50,000 training images (uint8 NHWC) and labels (int64) of `cifar-10-python.tar.gz`.

    Reads `cifar-10-batches-py/data_batch_1` .. `_5` in order, as EDM's dataset_tool does: regular
    file members only, each checked (uint8 data [N, 3072], N labels in 0..9) before it is used.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"CIFAR-10 archive {path} does not exist")
    images, labels = [], []
    try:
        with tarfile.open(path, "r:gz") as tar:
            for batch in range(1, 6):
                name = f"cifar-10-batches-py/data_batch_{batch}"
                try:
                    member = tar.getmember(name)
                except KeyError:
                    raise UserError(f"CIFAR-10 archive {path} has no member {name}") from None
                if not member.isreg():
                    raise UserError(f"CIFAR-10 archive {path}: {name} is {_member_kind(member)}, not a file")
                if member.size > _CIFAR_BATCH_BYTES:
                    raise UserError(f"CIFAR-10 archive {path}: {name} is {member.size} bytes, more than a "
                                    f"CIFAR-10 batch ({_CIFAR_BATCH_BYTES} at most)")
                f = tar.extractfile(member)
                if f is None:
                    raise UserError(f"CIFAR-10 archive {path}: {name} is not a file")
                with f:
                    arr, lab = _read_cifar_batch(f.read(), f"{path}:{name}")
                images.append(arr)
                labels.append(lab)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise UserError(f"CIFAR-10 archive {path} is truncated or corrupt ({type(exc).__name__}: {exc})") from None
    images_np = np.concatenate(images).transpose(0, 2, 3, 1)  # NCHW -> NHWC
    labels_np = np.concatenate(labels)
    if max_images is not None:
        images_np, labels_np = images_np[:max_images], labels_np[:max_images]
    return np.ascontiguousarray(images_np), labels_np


def _is_url(s: str) -> bool:
    return s.startswith(("http://", "https://", "ftp://"))


def resolve_checksums(name: str, md5: str | None, sha256: str | None) -> tuple[str | None, str | None]:
    """Which checksums to verify for a file called `name`.

    Empty or missing values mean "not given": a file called `cifar-10-python.tar.gz` (or any
    download by `prepare_cifar10`) is then checked against the official md5. The word `none`
    switches checking off.
    """
    if (md5 or "").strip().lower() == "none" or (sha256 or "").strip().lower() == "none":
        return None, None
    md5, sha256 = checksum_value("md5", md5), checksum_value("sha256", sha256)
    if md5 is None and sha256 is None and name == CIFAR10_TARBALL_NAME:
        md5 = CIFAR10_MD5
    return md5, sha256


def prepare_cifar10(source: str | None, dest: str | os.PathLike, md5: str | None = None,
                    sha256: str | None = None, max_images: int | None = None,
                    download_to: str | os.PathLike | None = None) -> int:
    """CIFAR-10 training set -> EDM dataset at `dest` (zip or folder). Returns the image count.

    `source` is a URL (downloaded, checked against `md5`/`sha256`, by default the official md5;
    None: the official URL) or a local tarball (checked when a checksum is given, or against the
    official md5 when it is named `cifar-10-python.tar.gz` and no checksum is given; `md5="none"`
    skips the check). `download_to` keeps the downloaded tarball there.
    """
    _check_dest(dest)
    source = CIFAR10_URL if source is None else str(source)
    if _is_url(source):
        md5, sha256 = resolve_checksums(CIFAR10_TARBALL_NAME, md5, sha256)
        keep = download_to is not None
        target = Path(download_to) if keep else Path(dest).parent / f".{Path(dest).name}.download.tar.gz"
        try:
            download(source, target, md5=md5, sha256=sha256)
            images, labels = read_cifar10_tarball(target, max_images)
        finally:
            if not keep:
                with contextlib.suppress(OSError):
                    target.unlink()
    else:
        if not Path(source).is_file():
            raise UserError(f"CIFAR-10 archive {source} does not exist")
        md5, sha256 = resolve_checksums(Path(source).name, md5, sha256)
        verify_checksum(source, md5, sha256)
        images, labels = read_cifar10_tarball(source, max_images)
    return write_dataset(dest, images, labels, total=len(images), what="writing CIFAR-10")


def fetch_file(url: str | None, dest: str | os.PathLike, *, md5: str | None = None,
               sha256: str | None = None) -> Path:
    """Download `url` (None: the official CIFAR-10 tarball) to `dest`, checked against `md5`/`sha256`
    (for a file called `cifar-10-python.tar.gz` and no checksum given: the official md5; `none` skips
    the check)."""
    url = CIFAR10_URL if url is None else url
    if not _is_url(url):
        raise UserError(f"--url {url!r} is not an http(s) or ftp URL")
    md5, sha256 = resolve_checksums(os.path.basename(url.split("?")[0]), md5, sha256)
    download(url, dest, md5=md5, sha256=sha256)
    return Path(dest)


# --------------------------------------------------------------------------------------------
# scikit-learn digits


def digits_images(resolution: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (1797 images, values 0..16) as uint8 [N, R, R] and int64 labels.

    Values map to 0..255 (round(v * 255 / 16)); other resolutions are resized with Lanczos
    filtering as EDM's dataset_tool resizes.
    """
    from sklearn.datasets import load_digits

    resolution = int(resolution)
    if resolution < 2 or resolution & (resolution - 1):
        raise UserError(f"--resolution must be a power of two >= 2, got {resolution}")
    d = load_digits()
    images = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    if resolution != images.shape[1]:
        images = np.stack([
            np.asarray(PIL.Image.fromarray(img, "L").resize((resolution, resolution), PIL.Image.Resampling.LANCZOS))
            for img in images
        ])
    return images, np.asarray(d.target, dtype=np.int64)


def prepare_digits(dest: str | os.PathLike, resolution: int = 8, max_images: int | None = None) -> int:
    _check_dest(dest)
    images, labels = digits_images(resolution)
    if max_images is not None:
        images, labels = images[:max_images], labels[:max_images]
    return write_dataset(dest, images, labels, total=len(images), what="writing digits")


def _check_dest(dest: str | os.PathLike) -> None:
    dest = Path(dest)
    if str(dest) == "":
        raise UserError("--dest must not be empty")
    if dest.suffix.lower() != ".zip" and dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UserError(f"--dest folder {dest} exists and is not empty")


# --------------------------------------------------------------------------------------------
# A dataset made elsewhere (EDM's dataset_tool.py, or ours)

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


def import_dataset(source: str | os.PathLike, dest: str | os.PathLike, *, copy: bool = False,
                   **expect: Any) -> dict:
    """Check `source` (check_dataset) and make it the run's dataset at `dest`.

    By default `dest` becomes a symbolic link to the absolute path of `source` (a zip or a folder):
    nothing is copied, so a multi-terabyte dataset is used in place. `copy=True` writes a stored zip
    archive instead: a byte copy of a zip source, or the image files and dataset.json of a folder
    source, packed unchanged. `dest` is replaced atomically; the summary is returned.
    """
    dest = Path(dest)
    if str(dest) in ("", "."):
        raise UserError("--dest must not be empty")
    info = check_dataset(source, **expect)
    source = Path(os.path.abspath(source))
    if source == Path(os.path.abspath(dest)):
        raise UserError(f"--source and --dest are the same path ({source})")
    if not copy:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".{dest.name}.{os.getpid()}.tmp-link"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(source, tmp, target_is_directory=source.is_dir())
        try:
            os.replace(tmp, dest)
        except OSError as exc:
            tmp.unlink()
            raise UserError(f"cannot place the link {dest}: {exc.strerror}") from None
    elif source.is_dir():
        exts = _image_extensions()
        names = sorted(os.path.relpath(os.path.join(root, f), source).replace("\\", "/")
                       for root, _dirs, files in os.walk(source) for f in files)
        names = [f for f in names if f == LABELS_FILE or _file_ext(f) in exts]
        with atomic_path(dest, suffix=".zip") as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
            for name in names:
                zf.write(source / name, name)
    else:
        with atomic_path(dest, suffix=".zip") as tmp, open(source, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, 16 << 20)
    return {**info, "dest": str(dest), "mode": "copy" if copy else "link"}


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
