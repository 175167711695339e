"""FID of sample sets: assets, reference statistics, measurements, and the repeat aggregate.

    python -m aot.fid fetch-assets [--cache-dir DIR]            # login node: Inception + CIFAR-10 stats
    python -m aot.fid train-features --data DS.zip --out featnet.pt
    python -m aot.fid reference --data DS.zip --features inception|featnet.pt --out ref.npz
    python -m aot.fid reference --precomputed cifar10 [--data DS.zip] --out ref.npz
    python -m aot.fid measure --samples X.npz --ref ref.npz --repeat 0 --out X.json
    python -m aot.fid aggregate rep0.json rep1.json rep2.json --out agg.json

Inception values are clean-fid `legacy_tensorflow` FIDs. The assets clean-fid would download on first
use live in a cache folder: `--cache-dir`, else `$AOT_FID_CACHE`, else clean-fid's own locations
(/tmp for the weights, the installed package's `stats/` for statistics). Compute commands never
download: a missing asset stops them at once with the command that fetches it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

from . import metrics
from .cli.options import cli_main
from .errors import UserError, positive_int
from .files import atomic_path, read_json, write_json_atomic
from .runtime import Progress, environment_info

REF_FORMAT = "aot-fid-ref/1"
INCEPTION_FILE = "inception-2015-12-05.pt"
# What clean-fid 0.1.35 downloads (cleanfid.downloads_helper.inception_url, cleanfid.features).
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
CLEANFID_STATS_BASE = "https://www.cs.cmu.edu/~clean-fid/stats/"

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
# Asset locations


def asset_dirs(cache_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """(folder of the Inception weights, folder of clean-fid statistics)."""
    cache = cache_dir or os.environ.get("AOT_FID_CACHE")
    if cache:
        return Path(cache), Path(cache)
    import cleanfid

    inception_dir = Path("./" if platform.system() == "Windows" else "/tmp")
    return inception_dir, Path(os.path.dirname(cleanfid.__file__)) / "stats"


def inception_path(cache_dir=None) -> Path:
    return asset_dirs(cache_dir)[0] / INCEPTION_FILE


def stats_path(key: str, cache_dir=None) -> Path:
    return asset_dirs(cache_dir)[1] / precomputed_file(key)


def _fetch_hint(cache_dir) -> str:
    cache = cache_dir or os.environ.get("AOT_FID_CACHE")
    return "python -m aot.fid fetch-assets" + (f" --cache-dir {cache}" if cache else "")


def require_inception(cache_dir=None) -> Path:
    """Path of the Inception weights, or a one-line UserError naming the fetch command. Never downloads."""
    path = inception_path(cache_dir)
    if not path.is_file():
        raise UserError(f"Inception weights {path} are missing; fetch them on a machine with internet "
                        f"access: {_fetch_hint(cache_dir)}")
    if not _valid_inception(path):
        raise UserError(f"Inception weights {path} are truncated or not a torchscript file; delete it and "
                        f"rerun: {_fetch_hint(cache_dir)}")
    return path


def require_stats(key: str, cache_dir=None) -> Path:
    path = stats_path(key, cache_dir)
    if not path.is_file():
        raise UserError(f"clean-fid statistics {path} are missing; fetch them on a machine with internet "
                        f"access: {_fetch_hint(cache_dir)}")
    if not _valid_stats(path):
        raise UserError(f"clean-fid statistics {path} are truncated or lack mu/sigma; delete the file and "
                        f"rerun: {_fetch_hint(cache_dir)}")
    return path


def _valid_inception(path: Path) -> bool:
    return zipfile.is_zipfile(path)


def _valid_stats(path: Path) -> bool:
    try:
        with np.load(path, allow_pickle=False) as z:
            mu, sigma = z["mu"], z["sigma"]
    except Exception:
        return False
    return mu.ndim == 1 and sigma.shape == (mu.shape[0], mu.shape[0])


def download(url: str, dest: Path, timeout: float = 60.0, stream=None) -> int:
    """Download `url` to `dest` atomically with progress lines; returns the number of bytes."""
    with atomic_path(dest) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as f:
                total = int(resp.headers.get("Content-Length") or 0)
                progress = Progress(f"download {dest.name}", total or 1, unit="B", interval=10.0, stream=stream)
                done = 0
                while True:
                    chunk = resp.read(1 << 20)
                    if not chunk:
                        break
                    f.write(chunk)
                    done += len(chunk)
                    if total:
                        progress.update(done)
                if total and done != total:
                    raise UserError(f"download of {url} stopped after {done} of {total} bytes")
        except urllib.error.HTTPError as exc:
            raise UserError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise UserError(f"cannot download {url}: {reason}") from None
    return dest.stat().st_size


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


def load_samples(path: str | os.PathLike) -> tuple[np.ndarray, dict, np.ndarray | None]:
    """(uint8 NCHW images, meta dict, seeds or None) from a sample-set npz of the spec."""
    from .generate import load_samples as read_sample_set

    rec = read_sample_set(path)
    images = rec["images"]
    if images.shape[0] < 2:
        raise UserError(f"sample set {path} holds {images.shape[0]} images; FID needs at least 2")
    return metrics.images_to_nchw(images), rec["meta"], rec["seeds"]


def load_reference(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"reference statistics {path} do not exist (make them with: python -m aot.fid reference)")
    try:
        with np.load(path, allow_pickle=False) as z:
            ref = {k: z[k] for k in z.files}
    except Exception as exc:
        raise UserError(f"reference statistics {path} cannot be read: {exc}") from None
    missing = [k for k in ("format", "mu", "sigma", "feature", "resolution", "channels") if k not in ref]
    if missing or str(ref["format"]) != REF_FORMAT:
        raise UserError(f"{path} is not an aot reference statistics file (missing {', '.join(missing) or 'format'})")
    out = {k: (v.item() if v.ndim == 0 else v) for k, v in ref.items()}
    out["num_images"] = None if int(out.get("num_images", -1)) < 0 else int(out["num_images"])
    for key in ("feature_path", "feature_sha256"):
        out[key] = str(out.get(key, "")) or None
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
            self.weights = require_inception(cache_dir)  # fail before any other work
            self.net = None
        else:
            path = Path(spec)
            self.net, self.meta = metrics.load_feature_net(path, device=device)
            self.name, self.mode = metrics.OFFLINE_NAME, metrics.OFFLINE_MODE
            self.path, self.sha256 = str(path), metrics.file_sha256(path)

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

    def features(self, images_nchw: np.ndarray, batch: int, what: str) -> np.ndarray:
        if self.net is None:
            fn = metrics.inception_feature_fn(self.weights.parent, self.device)
        else:
            fn = metrics.offline_feature_fn(self.net)
        return metrics.compute_features(images_nchw, fn, self.device, batch_size=batch, rgb=self.rgb, what=what)


def _device(value: str | None) -> str:
    import torch

    if value is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(value)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {value!r} is not a torch device") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {value}: CUDA is not available on this machine")
    return value


# --------------------------------------------------------------------------------------------
# Commands


def cmd_fetch_assets(args) -> None:
    cache = args.cache_dir
    jobs = []
    if "inception" in args.only:
        jobs.append(("inception", "Inception weights", args.inception_url, inception_path(cache), _valid_inception))
    if "cifar10" in args.only:
        jobs.append(("cifar10", "CIFAR-10 train statistics (legacy_tensorflow, 32x32)", args.stats_url or
                     precomputed_url("cifar10"), stats_path("cifar10", cache), _valid_stats))
    files = {}
    for key, what, url, dest, valid in jobs:
        if dest.is_file() and valid(dest) and not args.force:
            print(f"present: {what} at {dest}", flush=True)
        else:
            print(f"fetching {what} from {url}", flush=True)
            size = download(url, dest, timeout=args.timeout)
            if not valid(dest):
                dest.unlink()
                raise UserError(f"downloaded {what} from {url} is not a valid file (removed {dest})")
            print(f"fetched {what} to {dest} ({size} bytes)", flush=True)
        files[key] = {"path": str(dest), "url": url, "bytes": dest.stat().st_size,
                      "sha256": metrics.file_sha256(dest)}
    cache = cache or os.environ.get("AOT_FID_CACHE")
    if cache:  # a record of what is there, for the workflow (not written into clean-fid's own folders)
        write_json_atomic(Path(cache) / MANIFEST, {"kind": "fid-assets", "files": files,
                                                   "time": environment_info()["time"]})


def cmd_train_features(args) -> None:
    out = Path(args.out)
    device = _device(args.device)
    epochs = positive_int("--epochs", args.epochs)
    images, labels = load_dataset_images(args.data, args.max_images)
    metrics.check_square(images, f"dataset {args.data}")
    n, c, h, _ = images.shape
    print(f"train-features: {n} images {c}x{h}x{h} from {args.data}, "
          f"{'labels' if labels is not None else 'no labels: rotation task'}, {epochs} epochs on {device}", flush=True)
    t0 = time.time()
    net, info = metrics.train_feature_net(images, labels, epochs=epochs, seed=args.seed, device=device,
                                          batch_size=args.batch, feature_dim=args.feature_dim, width=args.width)
    info.update(dataset=str(args.data), time_s=time.time() - t0, name=metrics.OFFLINE_NAME, env=environment_info())
    metrics.save_feature_net(out, net, **info)
    val = info["val_accuracy"]
    print(f"train-features: wrote {out} (train acc {info['train_accuracy']:.3f}"
          f"{'' if val is None else f', held-out acc {val:.3f}'}, {info['time_s']:.1f} s)", flush=True)


def cmd_reference(args) -> None:
    out = Path(args.out)
    device = _device(args.device)
    t0 = time.time()
    if args.precomputed:
        if args.features != "inception":
            raise UserError("--precomputed statistics are Inception statistics; use --features inception")
        src = require_stats(args.precomputed, args.cache_dir)
        p = PRECOMPUTED[args.precomputed]
        if args.data:  # the statistics must be for images like the dataset's
            from .data import ImageFolderDataset

            ds = ImageFolderDataset(args.data, use_labels=False)
            if (ds.resolution, ds.num_channels) != (p["res"], p["channels"]):
                raise UserError(f"dataset {args.data} has {ds.num_channels}x{ds.resolution}x{ds.resolution} images; "
                                f"--precomputed {args.precomputed} is for {p['channels']}x{p['res']}x{p['res']}")
        with np.load(src, allow_pickle=False) as z:
            mu, sigma = z["mu"].astype(np.float64), z["sigma"].astype(np.float64)
        record = dict(name=f"cleanfid:{src.stem}", source=precomputed_url(args.precomputed),
                      num_images=p["num_images"], resolution=p["res"], channels=p["channels"],
                      feature=metrics.INCEPTION_NAME, mode=metrics.INCEPTION_MODE, feature_path="", feature_sha256="")
    else:
        if not args.data:
            raise UserError("reference needs --data DATASET (or --precomputed NAME)")
        space = FeatureSpace(args.features, args.cache_dir, device)  # assets checked before loading data
        images, _ = load_dataset_images(args.data, args.max_images)
        metrics.check_square(images, f"dataset {args.data}")
        n, c, res, _ = images.shape
        space.check_images(res, c, f"dataset {args.data}")
        print(f"reference: {n} images {c}x{res}x{res} from {args.data}, features {space.name} on {device}", flush=True)
        feats = space.features(images, args.batch, "reference features")
        mu, sigma = metrics.feature_statistics(feats)
        record = dict(name=Path(args.data).name, source=str(Path(args.data)), num_images=n, resolution=res,
                      channels=c, feature=space.name, mode=space.mode, feature_path=space.path or "",
                      feature_sha256=space.sha256 or "")
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, format=np.array(REF_FORMAT), mu=mu, sigma=sigma,
                     **{k: np.array(v) for k, v in record.items()})
    print(f"reference: wrote {out} ({record['feature']}, {mu.shape[0]} dims, "
          f"{record['num_images']} images, {time.time() - t0:.1f} s)", flush=True)


def cmd_measure(args) -> None:
    t0 = time.time()
    out = Path(args.out)
    device = _device(args.device)
    ref = load_reference(args.ref)
    ref_features = "inception" if ref["feature"] == metrics.INCEPTION_NAME else ref["feature_path"]
    features = args.features or ref_features
    if (features == "inception") != (ref["feature"] == metrics.INCEPTION_NAME):
        raise UserError(f"--features {features} does not match reference {args.ref} ({ref['feature']})")
    space = FeatureSpace(features, args.cache_dir, device)  # missing assets fail here, before any work
    if space.sha256 and ref["feature_sha256"] and space.sha256 != ref["feature_sha256"]:
        raise UserError(f"feature network {features} is not the one reference {args.ref} was computed with "
                        f"({ref['feature_path']})")
    images, meta, seeds = load_samples(args.samples)
    n, c, h, w = images.shape
    if (h, w) != (int(ref["resolution"]),) * 2 or c != int(ref["channels"]):
        raise UserError(f"sample set {args.samples} has {c}x{h}x{w} images but reference {args.ref} is for "
                        f"{ref['channels']}x{ref['resolution']}x{ref['resolution']}")
    space.check_images(h, c, f"sample set {args.samples}")
    print(f"measure: {n} images from {args.samples} against {args.ref} ({space.name}) on {device}", flush=True)
    feats = space.features(images, args.batch, "sample features")
    mu, sigma = metrics.feature_statistics(feats)
    if mu.shape != ref["mu"].shape:
        raise UserError(f"reference {args.ref} has {ref['mu'].shape[0]}-dimensional features, "
                        f"the feature network gives {mu.shape[0]}")
    print(f"measure: Frechet distance of {mu.shape[0]}-dimensional statistics (matrix square root)", flush=True)
    fid = metrics.frechet_distance(mu, sigma, ref["mu"], ref["sigma"])
    elapsed = time.time() - t0
    feature_record = dict(space.record(), dims=int(mu.shape[0]))
    if "seeds" in meta:
        seed_range = list(meta["seeds"])
    elif seeds is not None and len(seeds):
        seed_range = [int(np.min(seeds)), int(np.max(seeds))]
    else:
        seed_range = None
    sampler = meta.get("sampler")
    result = {
        "kind": "fid",
        "model": meta.get("model"),
        "sampler": sampler,
        "nfe": sampler.get("nfe") if isinstance(sampler, dict) else None,
        "repeat": int(args.repeat),
        "seeds": seed_range,
        "num_images": int(n),
        "feature_network": feature_record,
        "reference": {"name": str(ref.get("name")), "path": str(args.ref), "num_images": ref["num_images"],
                      "source": str(ref.get("source"))},
        "fid": float(fid),
        "time_s": float(elapsed),
        "samples": str(args.samples),
        "env": environment_info(),
    }
    write_json_atomic(out, result)
    label = "FID" if space.name == metrics.INCEPTION_NAME else "Frechet distance (offline-classifier features)"
    print(f"measure: {label} {fid:.4f} ({n} images, {elapsed:.1f} s) -> {out}", flush=True)


def cmd_aggregate(args) -> None:
    results = [read_json(p, "FID result") for p in args.results]
    for p, r in zip(args.results, results):
        if not isinstance(r, dict) or r.get("kind") != "fid" or "fid" not in r:
            raise UserError(f"{p} is not an FID result of python -m aot.fid measure")
    first = results[0]
    for p, r in zip(args.results[1:], results[1:]):
        for key in ("feature_network",):
            if r.get(key) != first.get(key):
                raise UserError(f"{p}: {key} differs from {args.results[0]}")
        if (r.get("model") or {}).get("name") != (first.get("model") or {}).get("name"):
            raise UserError(f"{p}: model differs from {args.results[0]}")
        if (r.get("sampler") or {}).get("key") != (first.get("sampler") or {}).get("key"):
            raise UserError(f"{p}: sampler differs from {args.results[0]}")
    agg = metrics.aggregate_repeats([r["fid"] for r in results])
    summary = {"kind": "fid-aggregate", "model": first.get("model"), "sampler": first.get("sampler"),
               "feature_network": first.get("feature_network"), "reference": first.get("reference"),
               "fids": [r["fid"] for r in results], "repeats": [r.get("repeat") for r in results],
               "results": [str(p) for p in args.results], **agg}
    write_json_atomic(args.out, summary)
    print(f"aggregate: min {agg['min']:.4f}, mean {agg['mean']:.4f} +- {agg['std']:.4f} (n={agg['n']}) "
          f"-> {args.out}", flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m aot.fid", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("--cache-dir", default=None,
                        help="folder of clean-fid assets (default: $AOT_FID_CACHE, else clean-fid's own locations)")
        sp.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
        sp.add_argument("--batch", type=int, default=100, help="images per feature batch")
        sp.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")

    sp = sub.add_parser("fetch-assets", help="download the Inception weights and CIFAR-10 statistics (login node)")
    sp.add_argument("--cache-dir", "--dest", dest="cache_dir", default=None,
                    help="destination folder (default: $AOT_FID_CACHE, else clean-fid's own locations)")
    sp.add_argument("--only", nargs="+", choices=["inception", "cifar10"], default=["inception", "cifar10"],
                    help="which assets (default: both)")
    sp.add_argument("--inception-url", default=INCEPTION_URL)
    sp.add_argument("--stats-url", default=None, help="URL of the CIFAR-10 statistics (default: clean-fid's)")
    sp.add_argument("--timeout", type=float, default=60.0, help="seconds without data before giving up")
    sp.add_argument("--force", action="store_true", help="download even if a valid file is present")
    sp.set_defaults(fn=cmd_fetch_assets)

    sp = sub.add_parser("train-features", help="train the offline feature network on a dataset")
    sp.add_argument("--data", required=True)
    sp.add_argument("--out", required=True)
    sp.add_argument("--epochs", type=int, default=10)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--feature-dim", type=int, default=128)
    sp.add_argument("--width", type=int, default=32)
    sp.add_argument("--max-images", type=int, default=None)
    sp.add_argument("--device", default=None)
    sp.add_argument("--batch", type=int, default=64)
    sp.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    sp.set_defaults(fn=cmd_train_features)

    sp = sub.add_parser("reference", help="reference statistics of a dataset, or clean-fid's precomputed ones")
    sp.add_argument("--data", help="EDM-format dataset (zip or folder); with --precomputed only checked")
    sp.add_argument("--precomputed", choices=sorted(PRECOMPUTED),
                    help="use clean-fid's precomputed statistics (legacy_tensorflow, train split) instead")
    sp.add_argument("--features", default="inception", help="'inception' or a feature network file")
    sp.add_argument("--out", required=True)
    sp.add_argument("--max-images", type=int, default=None)
    common(sp)
    sp.set_defaults(fn=cmd_reference)

    sp = sub.add_parser("measure", help="FID of one sample set against reference statistics")
    sp.add_argument("--samples", required=True)
    sp.add_argument("--ref", required=True)
    sp.add_argument("--features", default=None, help="'inception' or a feature network file (default: the reference's)")
    sp.add_argument("--repeat", type=int, default=0, help="index of this measurement in the repeat protocol")
    sp.add_argument("--out", required=True)
    common(sp)
    sp.set_defaults(fn=cmd_measure)

    sp = sub.add_parser("aggregate", help="min / mean / std of repeated measurements")
    sp.add_argument("results", nargs="+")
    sp.add_argument("--out", required=True)
    sp.set_defaults(fn=cmd_aggregate)
    return p


@cli_main
def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if getattr(args, "batch", None) is not None:
        positive_int("--batch", args.batch)
    if getattr(args, "threads", None) is not None:
        set_threads(args.threads)
    args.fn(args)


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(positive_int("--threads", threads))


if __name__ == "__main__":
    main()
