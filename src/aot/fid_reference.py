"""EDM's FID reference statistics (`fid.reference: edm`) and the comparison of two references.

Every FID of the paper, of EDM and of DG is against EDM's `cifar10-32x32.npz` (EDM_REFERENCE_URL):
a plain npz with `mu` [2048] and `sigma` [2048, 2048], the statistics of the 50,000 CIFAR-10
training images in the features of EDM's Inception network. This pipeline's other references are
clean-fid's CIFAR-10 statistics (`precomputed`) and statistics of the prepared dataset (`dataset`).

    python -m aot fid fetch-assets --only edm-cifar10 --edm-reference-sha256 HEX --cache-dir DIR   # login node
    python -m aot fid reference --edm-reference DIR/edm-cifar10-32x32.npz --edm-sha256 HEX --out ref.npz
    python -m aot fid compare-references --samples X.npz --ref a.npz b.npz [--out cmp.json]

The file is checked by SHA-256 against the digest the config gives (`fid.edm_reference_sha256`;
the project publishes none it has not verified), read without pickle, and its statistics checked as
every reference's are (`aot.fid.check_statistics`; `aot.fid.load_reference` for the converted file).
The converted file names itself `edm:cifar10-32x32`, and each FID result records its reference's
name in its identity, so results against different references never mix (`aot.report.results`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from .errors import UserError
from .files import checksum_value, read_npz, sha256_file, write_json_atomic

EDM_REFERENCE_URL = "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/cifar10-32x32.npz"
EDM_REFERENCE_FILE = "edm-cifar10-32x32.npz"  # its name in the FID asset folder
EDM_REFERENCE_NAME = "edm:cifar10-32x32"
EDM_REFERENCE_KEY = "edm-cifar10"  # its record in the asset folder's assets.json (aot.fid.fetch_assets)
# What EDM's file describes: the CIFAR-10 training set at 32x32 RGB, 2048 Inception features.
EDM_REFERENCE = {"num_images": 50000, "res": 32, "channels": 3, "dims": 2048}
EDM_MODE = "edm-fid.py"  # computed by EDM's fid.py (its Inception pickle, its resizing)
SHA256_HINT = ("the SHA-256 of EDM's cifar10-32x32.npz: `sha256sum` of a copy you trust, set as "
               "fid.edm_reference_sha256 (command line: --edm-reference-sha256 / --edm-sha256)")


def edm_reference_path(cache_dir: str | os.PathLike) -> Path:
    return Path(cache_dir) / EDM_REFERENCE_FILE


def require_sha256(value: str | None, option: str) -> str:
    """The expected SHA-256 (lower-case hex); a UserError when it is not given or malformed."""
    digest = checksum_value("sha256", value)
    if digest is None:
        raise UserError(f"{option} is required for EDM's reference statistics: {SHA256_HINT}")
    return digest


def valid_edm_file(path: Path) -> bool:
    """Whether `path` reads as EDM's statistics (shapes and values; not the checksum)."""
    try:
        _edm_statistics(path)
    except UserError:
        return False
    return True


def _edm_statistics(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """mu and sigma of an EDM-format statistics file, read without pickle and checked."""
    from .fid import check_statistics

    what = f"EDM reference statistics {path}"
    z = read_npz(path, "EDM reference statistics", ("mu", "sigma"))
    mu, sigma = z.get("mu"), z.get("sigma")
    d = EDM_REFERENCE["dims"]
    for key, arr, shape in (("mu", mu, (d,)), ("sigma", sigma, (d, d))):
        if isinstance(arr, np.ndarray) and arr.shape != shape:
            raise UserError(f"{what}: {key!r} is {list(arr.shape)}, not {list(shape)} (EDM's Inception "
                            f"features have {d} dimensions)")
    return check_statistics(mu, sigma, what)


def load_edm_reference(path: str | os.PathLike, sha256: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    """(mu, sigma, SHA-256) of EDM's reference file at `path`, which must have the SHA-256 `sha256`;
    a one-line UserError otherwise (missing file, another file, a pickle, wrong shapes, values that
    are no statistics). Never downloads."""
    want = require_sha256(sha256, "--edm-sha256")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"EDM reference statistics {path} are missing; fetch them on a machine with internet "
                        f"access: python -m aot fid fetch-assets --only {EDM_REFERENCE_KEY} "
                        f"--edm-reference-sha256 {want} --cache-dir {path.parent}")
    got = sha256_file(path)
    if got != want:
        raise UserError(f"EDM reference statistics {path} have SHA-256 {got}, expected {want} "
                        "(fid.edm_reference_sha256): not the file the config names; delete it and fetch again")
    mu, sigma = _edm_statistics(path)
    return mu, sigma, got


def edm_reference_record(sha256: str, url: str = EDM_REFERENCE_URL) -> dict:
    """What the converted reference file (aot.fid.reference) records about EDM's statistics."""
    from . import metrics

    return dict(name=EDM_REFERENCE_NAME, source=url, num_images=EDM_REFERENCE["num_images"],
                resolution=EDM_REFERENCE["res"], channels=EDM_REFERENCE["channels"], feature=metrics.INCEPTION_NAME,
                mode=EDM_MODE, feature_path="", feature_sha256="", edm_sha256=sha256)


def check_dataset_fits(data) -> None:
    """The dataset `data` (when given) has the images EDM's statistics describe (32x32 RGB)."""
    if not data:
        return
    from .data import ImageFolderDataset

    ds = ImageFolderDataset(data, use_labels=False)
    want = (EDM_REFERENCE["res"], EDM_REFERENCE["channels"])
    if (ds.resolution, ds.num_channels) != want:
        raise UserError(f"dataset {data} has {ds.num_channels}x{ds.resolution}x{ds.resolution} images; EDM's "
                        f"reference statistics are for CIFAR-10, {want[1]}x{want[0]}x{want[0]}")


# --------------------------------------------------------------------------------------------
# One sample set against two references


def compare_references(*, samples, refs, out=None, features: str | None = None, cache_dir=None,
                       device: str | None = None, batch: int = 100) -> dict:
    """FID of one sample set against each reference of `refs` (files of `aot fid reference`, in one
    feature space), its features computed once; returns (and writes to `out`, when given) the FIDs,
    their differences to the first and each reference's Frechet distance to the first. How far apart
    two references put the same images: e.g. EDM's statistics and clean-fid's (`fid.reference: edm`
    vs `precomputed`)."""
    from . import fid, metrics
    from .errors import positive_int
    from .runtime import environment_info, resolve_device

    refs = [str(r) for r in refs]
    if len(refs) < 2:
        raise UserError(f"--ref names {len(refs)} reference(s); compare-references needs two or more")
    if len(set(map(os.path.abspath, refs))) != len(refs):
        raise UserError("--ref names one file twice")
    device = resolve_device(device)
    batch = positive_int("--batch", batch)
    opened = [fid.open_measurement(r, features, cache_dir, device) for r in refs]  # all checked first
    space = opened[0][1]
    for r, (_, other) in zip(refs[1:], opened[1:]):
        if (other.name, other.digest) != (space.name, space.digest):
            raise UserError(f"reference {r} is in another feature space ({other.name}) than {refs[0]} "
                            f"({space.name}); compare references of one feature network")
    t0 = time.time()
    images, meta, _ = fid.load_sample_images(samples)
    for r, (stats, _) in zip(refs, opened):
        fid._check_sample_shape(samples, images.shape, r, stats, space)
    mu, sigma = metrics.feature_statistics(space.features(images, batch, "sample features"))
    rows = []
    for r, (stats, _) in zip(refs, opened):
        if mu.shape != stats["mu"].shape:
            raise UserError(f"reference {r} has {stats['mu'].shape[0]}-dimensional features, the feature network "
                            f"gives {mu.shape[0]}")
        value = float(metrics.frechet_distance(mu, sigma, stats["mu"], stats["sigma"]))
        if not np.isfinite(value):
            raise UserError(f"the Frechet distance of sample set {samples} to reference {r} is {value}; "
                            "nothing written")
        rows.append({"path": r, "name": stats.get("name"), "source": stats.get("source"),
                     "sha256": sha256_file(r), "fid": value})
    first = opened[0][0]
    # the two references' own distance, without any sample set: how far apart their statistics are
    between = [float(metrics.frechet_distance(s["mu"], s["sigma"], first["mu"], first["sigma"]))
               for s, _ in opened[1:]]
    result = {"kind": "fid-reference-comparison", "samples": str(samples), "num_images": int(images.shape[0]),
              "model": meta.get("model"), "sampler": meta.get("sampler"),
              "feature_network": dict(space.record(), dims=int(mu.shape[0])), "references": rows,
              "differences": [row["fid"] - rows[0]["fid"] for row in rows[1:]],
              "reference_distances": between, "time_s": time.time() - t0, "env": environment_info()}
    if out is not None:
        write_json_atomic(out, result)
    for row in rows:
        print(f"compare-references: FID {row['fid']:.4f} against {row['name']} ({row['path']})", flush=True)
    for row, d, fd in zip(rows[1:], result["differences"], between):
        print(f"compare-references: {row['path']} - {rows[0]['path']}: {d:+.4f} (Frechet distance between the two "
              f"references: {fd:.4f})", flush=True)
    return result
