"""Acquiring datasets: CIFAR-10 (downloaded or a local tarball), scikit-learn's digits, checked
downloads, and a dataset made elsewhere (EDM's dataset_tool.py, or ours) imported by link or copy."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from ..errors import UserError
from ..files import atomic_path, checksum_value, download, verify_checksum
from ..pickles import NUMPY_ARRAY, NUMPY_SCALAR, InertUnpickler, codecs_encode, describe_failure, one_line
from .reader import LABELS_FILE, _file_ext, _image_extensions, check_dataset
from .writer import write_dataset

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_TARBALL_NAME = "cifar-10-python.tar.gz"


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
