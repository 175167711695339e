"""FID of sample sets, as EDM's fid.py measures it: assets, reference statistics, measurements and
the repeat aggregate (the Frechet distance and the feature networks are in aot.metrics).

    python -m aot fid fetch-assets --cache-dir DIR             # login node: Inception + CIFAR-10 stats
    python -m aot fid train-features --data DS.zip --out featnet.pt
    python -m aot fid reference --data DS.zip --features inception|featnet.pt --out ref.npz
    python -m aot fid reference --precomputed cifar10 [--data DS.zip] --out ref.npz
    python -m aot fid reference --edm-reference edm-cifar10-32x32.npz --edm-sha256 HEX --out ref.npz
    python -m aot fid measure --samples X.npz --ref ref.npz --repeat 0 --out X.json
    python -m aot fid measure --samples rep0.npz rep1.npz rep2.npz --ref ref.npz \
        --out rep0.json rep1.json rep2.json [--repeat 0 1 2]   # one loading of features and reference
    python -m aot fid aggregate rep0.json rep1.json rep2.json --out agg.json

Each result names what it measured by checksums (`identity`: the generation fingerprint and the
digest of the sample set's meta, the SHA-256 and the name of the reference file, the SHA-256 of the
feature network), so that a job can keep a result that is still the one it would write
(`current_result`) and results against different references never mix (aot.report.results). EDM's
reference statistics (`fid.reference: edm`) and the comparison of two references on one sample set
are in aot.fid_reference.

Inception values are clean-fid `legacy_tensorflow` FIDs. The assets clean-fid would download on first
use live in a cache folder, `--cache-dir` or else `$AOT_FID_CACHE`, which the Inception commands
require: there is no shared default (clean-fid's is the world-writable /tmp, and the weights are
TorchScript, that is code). The weights are checked by SHA-256 before they are loaded: against the
digest `fetch-assets` recorded in the folder's `assets.json`, else against the published digest of
clean-fid's file (INCEPTION_SHA256). Without a cache folder the CIFAR-10 statistics are read from the
clean-fid package's `stats/`. Compute commands never download: a missing asset stops them at once
with the command that fetches it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
from pathlib import Path

import numpy as np

from . import metrics
from .errors import UserError, positive_int
from .files import (
    atomic_path,
    checksum_value,
    download,
    read_json,
    read_npz,
    read_npz_arrays,
    sha256_file,
    write_json_atomic,
)
from .runtime import environment_info, resolve_device
from .samples import sample_set_shape

REF_FORMAT = "aot-fid-ref/1"
INCEPTION_FILE = "inception-2015-12-05.pt"
# What clean-fid 0.1.35 downloads (cleanfid.downloads_helper.inception_url, cleanfid.features).
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
# SHA-256 of that file (95,607,719 bytes), as published with other projects that verify it, e.g.
# crowsonkb/k-diffusion (k_diffusion/evaluation.py).
INCEPTION_SHA256 = "f58cb9b6ec323ed63459aa4fb441fe750cfe39fafad6da5cb504a16f19e958f4"
CLEANFID_STATS_BASE = "https://www.cs.cmu.edu/~clean-fid/stats/"
CACHE_ENV = "AOT_FID_CACHE"

# Precomputed clean-fid reference statistics that `reference --precomputed` accepts.
PRECOMPUTED = {
    "cifar10": {"dataset": "cifar10", "res": 32, "split": "train", "num_images": 50000, "channels": 3},
}
MANIFEST = "assets.json"


def precomputed_file(key: str) -> str:
    p = PRECOMPUTED[key]
    return f"{p['dataset']}_{metrics.INCEPTION_MODE}_{p['split']}_{p['res']}.npz".lower()


def precomputed_url(key: str) -> str:
    # Same string clean-fid's get_reference_statistics builds (its base ends in '/', then '/' again).
    return f"{CLEANFID_STATS_BASE}/{precomputed_file(key)}"


# --------------------------------------------------------------------------------------------
# Asset locations and checks


def cache_folder(cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The FID asset folder: `cache_dir`, else $AOT_FID_CACHE, else None."""
    cache = cache_dir or os.environ.get(CACHE_ENV)
    return Path(cache) if cache else None


def require_cache(cache_dir: str | os.PathLike | None = None) -> Path:
    cache = cache_folder(cache_dir)
    if cache is None:
        raise UserError(f"the Inception weights need a folder of their own: pass --cache-dir DIR (or set "
                        f"{CACHE_ENV}); there is no shared default such as /tmp")
    return cache


def inception_path(cache_dir=None) -> Path:
    return require_cache(cache_dir) / INCEPTION_FILE


def stats_path(key: str, cache_dir=None) -> Path:
    cache = cache_folder(cache_dir)
    if cache is not None:
        return cache / precomputed_file(key)
    import cleanfid

    return Path(os.path.dirname(cleanfid.__file__)) / "stats" / precomputed_file(key)


def _fetch_hint(cache_dir) -> str:
    cache = cache_folder(cache_dir)
    return "python -m aot fid fetch-assets" + (f" --cache-dir {cache}" if cache else "")


def read_manifest(cache: Path | None) -> dict:
    """The asset records (`files`) of the cache folder's assets.json; {} when absent or unreadable."""
    if cache is None or not (cache / MANIFEST).is_file():
        return {}
    try:
        doc = read_json(cache / MANIFEST, "FID asset record")
    except UserError:
        return {}
    files = doc.get("files") if isinstance(doc, dict) else None
    return files if isinstance(files, dict) else {}


def _recorded_sha256(manifest: dict, key: str) -> str | None:
    record = manifest.get(key)
    value = record.get("sha256") if isinstance(record, dict) else None
    try:
        return checksum_value("sha256", value) if isinstance(value, str) else None
    except UserError:
        return None


def expected_inception_sha256(cache: Path) -> tuple[str, str]:
    """(SHA-256 the weights in `cache` must have, where that value comes from)."""
    recorded = _recorded_sha256(read_manifest(cache), "inception")
    if recorded:
        return recorded, f"recorded in {cache / MANIFEST} when fetched"
    return INCEPTION_SHA256, "the published digest of clean-fid's file"


def require_inception(cache_dir=None) -> tuple[Path, str]:
    """(path, SHA-256) of verified Inception weights, or a one-line UserError naming the fetch
    command. Never downloads."""
    path = _require_asset(inception_path(cache_dir), "Inception weights", _valid_inception,
                          "truncated or not a torchscript file", cache_dir)
    want, source = expected_inception_sha256(path.parent)
    got = sha256_file(path)
    if got != want:
        raise UserError(f"Inception weights {path} have SHA-256 {got}, expected {want} ({source}); delete "
                        f"the file and rerun: {_fetch_hint(cache_dir)}")
    return path, want


def require_stats(key: str, cache_dir=None) -> Path:
    return _require_asset(stats_path(key, cache_dir), "clean-fid statistics", _valid_stats,
                          "truncated or lack mu/sigma", cache_dir)


def _require_asset(path: Path, what: str, valid, problem: str, cache_dir) -> Path:
    if not path.is_file():
        raise UserError(f"{what} {path} are missing; fetch them on a machine with internet access: "
                        f"{_fetch_hint(cache_dir)}")
    if not valid(path):
        raise UserError(f"{what} {path} are {problem}; delete the file and rerun: {_fetch_hint(cache_dir)}")
    return path


def _valid_inception(path: Path) -> bool:
    return zipfile.is_zipfile(path)


def _valid_stats(path: Path) -> bool:
    try:
        z = read_npz(path, "clean-fid statistics", ("mu", "sigma"))
        check_statistics(z.get("mu"), z.get("sigma"), "clean-fid statistics")
    except UserError:
        return False
    return True


def fetch_assets(*, cache_dir=None, only=("inception", "cifar10"), inception_url: str = INCEPTION_URL,
                 inception_sha256: str | None = None, stats_url: str | None = None, timeout: float = 60.0,
                 force: bool = False, edm_url: str | None = None, edm_sha256: str | None = None) -> dict:
    """Download the Inception weights, clean-fid's CIFAR-10 statistics and (`edm-cifar10` in
    `only`) EDM's CIFAR-10 reference statistics (on a login node).

    The weights from INCEPTION_URL must have INCEPTION_SHA256; from another URL, `inception_sha256`
    if given, else whatever is fetched first is recorded and checked on every later load. EDM's
    statistics (from `edm_url`, default aot.fid_reference.EDM_REFERENCE_URL) must have
    `edm_sha256`, which is required. A file already present and matching is kept (unless `force`).
    The cache folder's assets.json records path, URL, size and SHA-256 of each file. Returns those
    records.
    """
    from . import fid_reference as edm

    edm_want = edm.require_sha256(edm_sha256, "--edm-reference-sha256") if edm.EDM_REFERENCE_KEY in only else None
    need_cache = "inception" in only or edm.EDM_REFERENCE_KEY in only
    cache = require_cache(cache_dir) if need_cache else cache_folder(cache_dir)
    manifest = read_manifest(cache)
    jobs = []
    if "inception" in only:
        want = checksum_value("sha256", inception_sha256)
        if want is None and inception_url == INCEPTION_URL:
            want = INCEPTION_SHA256
        jobs.append(("inception", "Inception weights", inception_url, inception_path(cache), _valid_inception, want))
    if "cifar10" in only:
        jobs.append(("cifar10", "CIFAR-10 train statistics (legacy_tensorflow, 32x32)",
                     stats_url or precomputed_url("cifar10"), stats_path("cifar10", cache), _valid_stats, None))
    if edm.EDM_REFERENCE_KEY in only:
        jobs.append((edm.EDM_REFERENCE_KEY, "EDM's CIFAR-10 reference statistics (cifar10-32x32.npz)",
                     edm_url or edm.EDM_REFERENCE_URL, edm.edm_reference_path(cache), edm.valid_edm_file, edm_want))
    for key, what, url, dest, valid, want in jobs:
        expected = want or _recorded_sha256(manifest, key)
        digest = sha256_file(dest) if not force and dest.is_file() and valid(dest) else None
        if digest is not None and expected in (None, digest):
            print(f"present: {what} at {dest}", flush=True)
        else:
            print(f"fetching {what} from {url}", flush=True)
            digest = download(url, dest, sha256=want, timeout=timeout)
            if not valid(dest):
                dest.unlink()
                raise UserError(f"downloaded {what} from {url} is not a valid file (removed {dest})")
            print(f"fetched {what} to {dest} ({dest.stat().st_size} bytes)", flush=True)
        manifest[key] = {"path": str(dest), "url": url, "bytes": dest.stat().st_size, "sha256": digest}
        if cache is not None:  # a record for the workflow and for later loads (never in clean-fid's folders)
            write_json_atomic(cache / MANIFEST, {"kind": "fid-assets", "files": manifest,
                                                 "time": environment_info()["time"]})
    return manifest


# --------------------------------------------------------------------------------------------
# Datasets and sample sets


def load_dataset_images(path: str | os.PathLike, max_images: int | None = None
                        ) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 NCHW images and int64 labels (or None) of an EDM-format dataset (zip or folder)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"dataset {path} does not exist")
    from .data import ImageFolderDataset, load_all

    try:
        ds = ImageFolderDataset(str(path), use_labels=True, max_size=max_images)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"dataset {path} cannot be read: {exc}") from None
    images, labels = load_all(ds)
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise UserError(f"dataset {path}: expected uint8 [N, C, H, W] images, got {images.dtype} {images.shape}")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim == 2:  # one-hot
            labels = labels.argmax(1)
        labels = labels.astype(np.int64)
    return images, labels


def load_sample_images(path: str | os.PathLike) -> tuple[np.ndarray, dict, np.ndarray | None]:
    """(uint8 NCHW images, meta dict, seeds or None) from a sample-set npz of the spec."""
    from .samples import read_sample_set

    rec = read_sample_set(path)
    images = rec["images"]
    if images.shape[0] < 2:
        raise UserError(f"sample set {path} holds {images.shape[0]} images; FID needs at least 2")
    return metrics.images_to_nchw(images), rec["meta"], rec["seeds"]


# Reference statistics: the covariance must be symmetric and positive semi-definite (its eigenvalues
# at least -PSD_TOLERANCE times the largest, what rounding leaves of an honest np.cov), or the
# Frechet distance is meaningless (and may be NaN or complex).
PSD_TOLERANCE = 1e-6
REF_TEXT = ("format", "feature", "name", "source", "mode", "feature_path", "feature_sha256", "edm_sha256")
REF_INTS = {"resolution": (1, 1 << 16), "channels": (1, 3), "num_images": (-1, 1 << 53)}


def check_statistics(mu, sigma, what: str) -> tuple[np.ndarray, np.ndarray]:
    """`mu` [D] and `sigma` [D, D] as float64 if they are finite feature statistics: the shapes fit,
    sigma symmetric and positive semi-definite within PSD_TOLERANCE; else a UserError naming the field."""
    for key, arr, ndim in (("mu", mu, 1), ("sigma", sigma, 2)):
        if not isinstance(arr, np.ndarray):
            raise UserError(f"{what} has no {key!r} array")
        if arr.dtype.kind != "f" or arr.ndim != ndim or 0 in arr.shape:
            want = "[D]" if ndim == 1 else "[D, D]"
            raise UserError(f"{what}: {key!r} is {arr.dtype} {list(arr.shape)}, not a float array {want}")
    d = mu.shape[0]
    if sigma.shape != (d, d):
        raise UserError(f"{what}: 'sigma' is {list(sigma.shape)}, not [{d}, {d}] for {d}-dimensional 'mu'")
    mu, sigma = mu.astype(np.float64), sigma.astype(np.float64)
    for key, arr in (("mu", mu), ("sigma", sigma)):
        if not np.isfinite(arr).all():
            raise UserError(f"{what}: {key!r} holds {'NaN' if np.isnan(arr).any() else 'infinite'} values")
    scale = float(np.abs(sigma).max())
    if float(np.abs(sigma - sigma.T).max()) > PSD_TOLERANCE * max(scale, 1e-300):
        raise UserError(f"{what}: 'sigma' is not symmetric, so it is not a covariance")
    eig = np.linalg.eigvalsh(sigma)
    if eig[0] < -PSD_TOLERANCE * max(float(np.abs(eig).max()), 1e-300):
        raise UserError(f"{what}: 'sigma' is not positive semi-definite (eigenvalue {eig[0]:.3g}, largest "
                        f"{eig[-1]:.3g}), so it is not a covariance")
    return mu, sigma


def load_reference(path: str | os.PathLike) -> dict:
    """Reference statistics written by `reference`, every field checked (types, ranges, finite
    statistics, a positive semi-definite covariance); a UserError naming the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"reference statistics {path} do not exist (make them with: python -m aot fid reference)")
    ref = read_npz_arrays(path, "reference statistics")
    missing = [k for k in ("format", "mu", "sigma", "feature", "resolution", "channels") if k not in ref]
    what = f"reference statistics {path}"
    if missing or ref["format"].ndim != 0 or str(ref["format"]) != REF_FORMAT:
        raise UserError(f"{path} is not an aot reference statistics file (missing {', '.join(missing) or 'format'})")
    out: dict = {}
    for key in REF_TEXT:
        if key in ref:
            arr = ref[key]
            if arr.ndim != 0 or arr.dtype.kind != "U":
                raise UserError(f"{what}: {key!r} is {arr.dtype} {list(arr.shape)}, not a text")
            out[key] = str(arr)
    for key, (lo, hi) in REF_INTS.items():
        if key in ref:
            arr = ref[key]
            if arr.ndim != 0 or arr.dtype.kind not in "iu" or not lo <= int(arr) <= hi:
                shown = f"{arr.dtype} {list(arr.shape)}" if arr.ndim or arr.dtype.kind not in "iu" else int(arr)
                raise UserError(f"{what}: {key!r} is {shown}, not a whole number in {lo}..{hi}")
            out[key] = int(arr)
    if out["feature"] not in (metrics.INCEPTION_NAME, metrics.OFFLINE_NAME):
        raise UserError(f"{what}: 'feature' is {out['feature']!r}, not {metrics.INCEPTION_NAME} or "
                        f"{metrics.OFFLINE_NAME}")
    if out["channels"] not in (1, 3):
        raise UserError(f"{what}: 'channels' is {out['channels']}, not 1 or 3")
    out["mu"], out["sigma"] = check_statistics(ref["mu"], ref["sigma"], what)
    out["num_images"] = None if out.get("num_images", -1) < 0 else out["num_images"]
    for key in ("feature_path", "feature_sha256"):
        out[key] = out.get(key) or None
    return out


# --------------------------------------------------------------------------------------------
# Feature spaces


class FeatureSpace:
    """One of the two feature spaces, with what is recorded about it in results."""

    def __init__(self, spec: str, cache_dir=None, device="cpu"):
        self.spec = spec
        self.device = device
        if spec == "inception":
            self.name, self.mode, self.path, self.sha256 = metrics.INCEPTION_NAME, metrics.INCEPTION_MODE, None, None
            self.weights, self.weights_sha256 = require_inception(cache_dir)  # fail before any other work
            self.net = None
        else:
            path = Path(spec)
            self.net, self.meta = metrics.load_feature_net(path, device=device)
            self.name, self.mode = metrics.OFFLINE_NAME, metrics.OFFLINE_MODE
            self.path, self.sha256 = str(path), sha256_file(path)
        self._feature_fn = None  # loaded on first use, then kept for every later set

    @property
    def rgb(self) -> bool:
        return self.net is None

    def check_images(self, resolution: int, channels: int, what: str) -> None:
        if self.net is not None:
            kw = self.net.init_kwargs
            if (kw["in_channels"], kw["resolution"]) != (channels, resolution):
                raise UserError(f"feature network {self.path} expects {kw['in_channels']}x{kw['resolution']}x"
                                f"{kw['resolution']} images, {what} has {channels}x{resolution}x{resolution}")

    def record(self) -> dict:
        return {"name": self.name, "mode": self.mode, "path": self.path}

    @property
    def digest(self) -> str | None:
        """SHA-256 of the feature network's file (the Inception weights, or the offline network)."""
        return self.sha256 or getattr(self, "weights_sha256", None)

    def features(self, images_nchw: np.ndarray, batch: int, what: str) -> np.ndarray:
        if self._feature_fn is None:
            if self.net is None:
                self._feature_fn = metrics.inception_feature_fn(self.weights, self.device, sha256=self.weights_sha256)
            else:
                self._feature_fn = metrics.offline_feature_fn(self.net)
        return metrics.compute_features(images_nchw, self._feature_fn, self.device, batch_size=batch, rgb=self.rgb,
                                        what=what)


# --------------------------------------------------------------------------------------------
# Reference statistics, measurements, aggregates


def train_features(*, data, out, epochs: int = 10, seed: int = 0, feature_dim: int = 128, width: int = 32,
                   max_images: int | None = None, device: str | None = None, batch: int = 64) -> dict:
    """Train the offline feature network on the dataset `data` and write it to `out`; returns its info."""
    out = Path(out)
    device = resolve_device(device)
    epochs = positive_int("--epochs", epochs)
    batch = positive_int("--batch", batch)
    images, labels = load_dataset_images(data, max_images)
    metrics.check_square(images, f"dataset {data}")
    n, c, h, _ = images.shape
    print(f"train-features: {n} images {c}x{h}x{h} from {data}, "
          f"{'labels' if labels is not None else 'no labels: rotation task'}, {epochs} epochs on {device}", flush=True)
    t0 = time.time()
    net, info = metrics.train_feature_net(images, labels, epochs=epochs, seed=seed, device=device,
                                          batch_size=batch, feature_dim=feature_dim, width=width)
    info.update(dataset=str(data), time_s=time.time() - t0, name=metrics.OFFLINE_NAME, env=environment_info())
    metrics.save_feature_net(out, net, **info)
    val = info["val_accuracy"]
    print(f"train-features: wrote {out} (train acc {info['train_accuracy']:.3f}"
          f"{'' if val is None else f', held-out acc {val:.3f}'}, {info['time_s']:.1f} s)", flush=True)
    return info


def reference(*, out, data=None, precomputed: str | None = None, features: str = "inception",
              max_images: int | None = None, cache_dir=None, device: str | None = None, batch: int = 100,
              edm_reference=None, edm_sha256: str | None = None) -> dict:
    """Reference statistics of the dataset `data` in a feature space (`features`: 'inception' or a
    feature network file), or clean-fid's `precomputed` ones, or EDM's (`edm_reference`: the file
    of EDM_REFERENCE_URL, which must have the SHA-256 `edm_sha256`; aot.fid_reference); with
    either of the last two `data` is only checked against them. Written to `out`; returns the
    record stored with mu and sigma."""
    out = Path(out)
    device = resolve_device(device)
    batch = positive_int("--batch", batch)
    t0 = time.time()
    if precomputed and edm_reference:
        raise UserError("--precomputed and --edm-reference are two references: give one")
    if edm_reference:
        from . import fid_reference as edm

        if features != "inception":
            raise UserError("--edm-reference statistics are Inception statistics; use --features inception")
        mu, sigma, digest = edm.load_edm_reference(edm_reference, edm_sha256)
        edm.check_dataset_fits(data)
        fetched = read_manifest(Path(edm_reference).parent).get(edm.EDM_REFERENCE_KEY)
        url = fetched.get("url") if isinstance(fetched, dict) and isinstance(fetched.get("url"), str) else None
        record = edm.edm_reference_record(digest, url or edm.EDM_REFERENCE_URL)
    elif precomputed:
        mu, sigma, record = _precomputed_statistics(precomputed, data, features, cache_dir)
    else:
        if not data:
            raise UserError("reference needs --data DATASET (or --precomputed NAME)")
        space = FeatureSpace(features, cache_dir, device)  # assets checked before loading data
        images, _ = load_dataset_images(data, max_images)
        metrics.check_square(images, f"dataset {data}")
        n, c, res, _ = images.shape
        space.check_images(res, c, f"dataset {data}")
        print(f"reference: {n} images {c}x{res}x{res} from {data}, features {space.name} on {device}", flush=True)
        feats = space.features(images, batch, "reference features")
        mu, sigma = metrics.feature_statistics(feats)
        record = dict(name=Path(data).name, source=str(Path(data)), num_images=n, resolution=res,
                      channels=c, feature=space.name, mode=space.mode, feature_path=space.path or "",
                      feature_sha256=space.sha256 or "")
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, format=np.array(REF_FORMAT), mu=mu, sigma=sigma,
                     **{k: np.array(v) for k, v in record.items()})
    print(f"reference: wrote {out} ({record['feature']}, {mu.shape[0]} dims, "
          f"{record['num_images']} images, {time.time() - t0:.1f} s)", flush=True)
    return record


def _precomputed_statistics(key: str, data, features: str, cache_dir) -> tuple[np.ndarray, np.ndarray, dict]:
    if key not in PRECOMPUTED:
        raise UserError(f"--precomputed {key!r}: known statistics are {', '.join(sorted(PRECOMPUTED))}")
    if features != "inception":
        raise UserError("--precomputed statistics are Inception statistics; use --features inception")
    src = require_stats(key, cache_dir)
    p = PRECOMPUTED[key]
    if data:  # the statistics must be for images like the dataset's
        from .data import ImageFolderDataset

        ds = ImageFolderDataset(data, use_labels=False)
        if (ds.resolution, ds.num_channels) != (p["res"], p["channels"]):
            raise UserError(f"dataset {data} has {ds.num_channels}x{ds.resolution}x{ds.resolution} images; "
                            f"--precomputed {key} is for {p['channels']}x{p['res']}x{p['res']}")
    z = read_npz(src, "clean-fid statistics", ("mu", "sigma"))
    mu, sigma = check_statistics(z.get("mu"), z.get("sigma"), f"clean-fid statistics {src}")
    record = dict(name=f"cleanfid:{src.stem}", source=precomputed_url(key), num_images=p["num_images"],
                  resolution=p["res"], channels=p["channels"], feature=metrics.INCEPTION_NAME,
                  mode=metrics.INCEPTION_MODE, feature_path="", feature_sha256="")
    return mu, sigma, record


def open_measurement(ref, features: str | None = None, cache_dir=None, device: str = "cpu"
                     ) -> tuple[dict, FeatureSpace]:
    """The reference statistics `ref` and the feature space to measure in (the reference's unless
    `features` says which), checked against each other. A missing asset or a mismatch fails here,
    so a job that makes sample sets and then measures them can call it before any work."""
    reference_stats = load_reference(ref)
    is_inception = reference_stats["feature"] == metrics.INCEPTION_NAME
    features = features or ("inception" if is_inception else reference_stats["feature_path"])
    if (features == "inception") != is_inception:
        raise UserError(f"--features {features} does not match reference {ref} ({reference_stats['feature']})")
    space = FeatureSpace(features, cache_dir, device)  # missing assets fail here, before any work
    if space.sha256 and reference_stats["feature_sha256"] and space.sha256 != reference_stats["feature_sha256"]:
        raise UserError(f"feature network {features} is not the one reference {ref} was computed with "
                        f"({reference_stats['feature_path']})")
    return reference_stats, space


def measure(*, samples, ref, out, features: str | None = None, repeat=None, cache_dir=None,
            device: str | None = None, batch: int = 100) -> dict | list[dict]:
    """FID of the sample set `samples` against the reference statistics `ref` (in the reference's
    feature space unless `features` says which); writes and returns the result record.

    `samples` and `out` may be equal-length lists (the repeats of one model and sampler), `repeat`
    then a list as long (default 0, 1, ...): the feature network and the reference are loaded once,
    every set is checked before any is measured, each `out` gets the record a separate call with
    its set writes, and the list of records is returned. No file is written unless all succeed.
    """
    t0 = time.time()
    several = not isinstance(samples, (str, os.PathLike))
    sets = [samples] if not several else list(samples)
    from .generate import output_list

    outs = output_list(out)
    if len(outs) != len(sets):
        raise UserError(f"--samples names {len(sets)} sample set(s) but --out names {len(outs)} file(s); "
                        "give one --out per sample set")
    if repeat is None:
        repeats = list(range(len(sets)))
    else:
        repeats = [repeat] if isinstance(repeat, (int, np.integer)) else list(repeat)
        if len(repeats) != len(sets):
            raise UserError(f"--samples names {len(sets)} sample set(s) but --repeat names {len(repeats)} "
                            "index(es); give one --repeat per sample set")
        bad = [r for r in repeats if int(r) < 0]
        if bad:
            raise UserError(f"--repeat must not be negative, got {bad[0]}")
    device = resolve_device(device)
    batch = positive_int("--batch", batch)
    reference_stats, space = open_measurement(ref, features, cache_dir, device)
    if several:  # every set's images fit the reference before the first is measured
        for path in sets:
            n, h, w, c = sample_set_shape(path)
            _check_sample_shape(path, (n, c, h, w), ref, reference_stats, space)
    results = []
    for path, rep in zip(sets, repeats):
        results.append(_measure_one(path, rep, ref, reference_stats, space, device, batch, t0))
        t0 = time.time()
    for path_out, result in zip(outs, results):
        write_json_atomic(path_out, result)
    for path_out, result in zip(outs, results):
        _print_result(path_out, result, space)
    return results if several else results[0]


def measure_set(samples, out, repeat: int, ref, reference_stats: dict, space: FeatureSpace, device, batch: int
                ) -> dict:
    """One set of `measure`, with the reference and feature space already open (`open_measurement`):
    a job that measures each set as soon as it is made. Writes `out` and returns the record, the
    one `measure` writes for the set."""
    result = _measure_one(samples, repeat, ref, reference_stats, space, device, batch, time.time())
    write_json_atomic(out, result)
    _print_result(out, result, space)
    return result


def _print_result(out, result: dict, space: FeatureSpace) -> None:
    label = "FID" if space.name == metrics.INCEPTION_NAME else "Frechet distance (offline-classifier features)"
    print(f"measure: {label} {result['fid']:.4f} ({result['num_images']} images, {result['time_s']:.1f} s) "
          f"-> {out}", flush=True)


# Entries of a result that are measured or record when and where; the others name what was measured.
MEASURED_ENTRIES = ("fid", "time_s", "env")


def current_result(out, samples, repeat: int, ref, reference_stats: dict, space: FeatureSpace) -> dict | None:
    """The result already at `out` if it is the one measuring sample set `samples` (as repeat
    `repeat`) against `ref` in `space` would write now, apart from MEASURED_ENTRIES: the same set
    (the generation fingerprint and the digest of the meta stored in `samples`, which a set made
    again changes), the same reference file and feature network (SHA-256), the same paths; else
    None. Reads the result, the set's meta and the header of its images, never the images."""
    from .samples import sample_set_meta

    try:
        stored = read_json(out, "FID result")
    except UserError:
        return None
    if not isinstance(stored, dict) or stored.get("kind") != "fid":
        return None
    value = stored.get("fid")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        return None
    meta = sample_set_meta(samples)
    if meta is None or not meta.get("fingerprint") or "seeds" not in meta:
        return None  # only sets of `aot generate` are identified by their meta
    try:
        n = sample_set_shape(samples)[0]
    except UserError:
        return None
    want = _result_record(samples, repeat, ref, reference_stats, space, meta, None, n,
                          int(reference_stats["mu"].shape[0]), env=False)
    want = json.loads(json.dumps(want, default=str))
    named = {k: v for k, v in want.items() if k not in MEASURED_ENTRIES}
    if {k: stored.get(k) for k in named} != named or set(stored) != set(want) | {"env"}:
        return None
    return stored


def _check_sample_shape(samples, shape_nchw: tuple, ref, reference_stats: dict, space: FeatureSpace) -> None:
    n, c, h, w = shape_nchw
    if n < 2:
        raise UserError(f"sample set {samples} holds {n} images; FID needs at least 2")
    res, channels = int(reference_stats["resolution"]), int(reference_stats["channels"])
    if (h, w) != (res, res) or c != channels:
        raise UserError(f"sample set {samples} has {c}x{h}x{w} images but reference {ref} is for "
                        f"{channels}x{res}x{res}")
    space.check_images(h, c, f"sample set {samples}")


def _measure_one(samples, repeat: int, ref, reference_stats: dict, space: FeatureSpace, device: str, batch: int,
                 t0: float) -> dict:
    """The result record of one sample set (`time_s` counted from `t0`)."""
    images, meta, seeds = load_sample_images(samples)
    _check_sample_shape(samples, images.shape, ref, reference_stats, space)
    n = images.shape[0]
    print(f"measure: {n} images from {samples} against {ref} ({space.name}) on {device}", flush=True)
    mu, sigma = metrics.feature_statistics(space.features(images, batch, "sample features"))
    if mu.shape != reference_stats["mu"].shape:
        raise UserError(f"reference {ref} has {reference_stats['mu'].shape[0]}-dimensional features, "
                        f"the feature network gives {mu.shape[0]}")
    print(f"measure: Frechet distance of {mu.shape[0]}-dimensional statistics (matrix square root)", flush=True)
    try:
        fid = metrics.frechet_distance(mu, sigma, reference_stats["mu"], reference_stats["sigma"])
    except ValueError as exc:
        raise UserError(f"the Frechet distance of sample set {samples} to reference {ref} cannot be computed: "
                        f"{exc}") from None
    if not np.isfinite(fid):
        raise UserError(f"the Frechet distance of sample set {samples} to reference {ref} is {fid} (the features "
                        "of the set are not finite); nothing written")
    return _result_record(samples, repeat, ref, reference_stats, space, meta, seeds, n, int(mu.shape[0]),
                          fid=float(fid), time_s=float(time.time() - t0))


def _result_record(samples, repeat: int, ref, reference_stats: dict, space: FeatureSpace, meta: dict,
                   seeds: np.ndarray | None, n: int, dims: int, fid: float | None = None,
                   time_s: float | None = None, env: bool = True) -> dict:
    """The result record of one sample set; `identity` names, by checksums, what was measured."""
    sampler = meta.get("sampler")
    record = {
        "kind": "fid",
        "model": meta.get("model"),
        "sampler": sampler,
        "nfe": sampler.get("nfe") if isinstance(sampler, dict) else None,
        "repeat": int(repeat),
        "seeds": _seed_range(meta, seeds),
        "num_images": int(n),
        "feature_network": dict(space.record(), dims=int(dims)),
        "reference": {"name": str(reference_stats.get("name")), "path": str(ref),
                      "num_images": reference_stats["num_images"], "source": str(reference_stats.get("source"))},
        "fid": fid,
        "time_s": time_s,
        "samples": str(samples),
        "identity": {
            "samples_fingerprint": meta.get("fingerprint"),
            "samples_meta_sha256": hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest(),
            "reference_sha256": _reference_sha256(ref, reference_stats),
            "reference_name": str(reference_stats.get("name")),
            "feature_network_sha256": space.digest,
        },
    }
    if env:
        record["env"] = environment_info()
    return record


def _reference_sha256(ref, reference_stats: dict) -> str:
    """SHA-256 of the reference statistics file, computed once per loaded reference."""
    if "file_sha256" not in reference_stats:
        reference_stats["file_sha256"] = sha256_file(ref)
    return reference_stats["file_sha256"]


def _seed_range(meta: dict, seeds: np.ndarray | None) -> list | None:
    if isinstance(meta.get("seeds"), list):  # a set's meta comes from outside: only a list is a seed range
        return list(meta["seeds"])
    if seeds is not None and len(seeds):
        return [int(np.min(seeds)), int(np.max(seeds))]
    return None


def aggregate(*, results, out) -> dict:
    """min / mean / std (ddof=1; null for one repeat) of repeated measurements of one model and
    sampler (`results`: FID result files of `measure`), written to `out` and returned."""
    results = [str(p) for p in results]
    records = [read_json(p, "FID result") for p in results]
    for p, r in zip(results, records):
        if not isinstance(r, dict) or r.get("kind") != "fid" or "fid" not in r:
            raise UserError(f"{p} is not an FID result of python -m aot fid measure")
        value = r["fid"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            raise UserError(f"FID result {p}: 'fid' is {str(value)[:60]!r}, not a finite number")
        for key in ("model", "sampler", "feature_network"):
            if r.get(key) is not None and not isinstance(r[key], dict):
                raise UserError(f"FID result {p}: {key!r} is a JSON {type(r[key]).__name__}, not an object")
    first = records[0]
    for p, r in zip(results[1:], records[1:]):
        if r.get("feature_network") != first.get("feature_network"):
            raise UserError(f"{p}: feature_network differs from {results[0]}")
        if (r.get("model") or {}).get("name") != (first.get("model") or {}).get("name"):
            raise UserError(f"{p}: model differs from {results[0]}")
        if (r.get("sampler") or {}).get("key") != (first.get("sampler") or {}).get("key"):
            raise UserError(f"{p}: sampler differs from {results[0]}")
    agg = metrics.aggregate_repeats([r["fid"] for r in records])
    summary = {"kind": "fid-aggregate", "model": first.get("model"), "sampler": first.get("sampler"),
               "feature_network": first.get("feature_network"), "reference": first.get("reference"),
               "fids": [r["fid"] for r in records], "repeats": [r.get("repeat") for r in records],
               "results": results, **agg}
    if agg["n"] == 1:
        summary["std"] = None  # NaN is not JSON
    write_json_atomic(out, summary)
    print(f"aggregate: min {agg['min']:.4f}, mean {agg['mean']:.4f} +- {agg['std']:.4f} (n={agg['n']}) "
          f"-> {out}", flush=True)
    return summary
