"""Frechet distances between feature statistics, and the feature networks that produce them.

Two feature spaces, one formula:

* ``inception-v3-tf``: clean-fid's TF-Inception (``legacy_tensorflow`` mode, the numbers EDM and the
  paper report). Images go to the TorchScript network clean-fid downloads, called as clean-fid's
  ``InceptionV3W(resize_inside=True)`` calls it, at their native resolution as float [0, 255] NCHW
  tensors, exactly as clean-fid's folder loader feeds them; the network resizes to 299x299 inside.
  Grayscale images are repeated to three channels (as PIL's ``convert("RGB")``). The weights file
  is checked by SHA-256 before it is loaded (:func:`inception_feature_fn`).
* ``offline-classifier``: the penultimate layer of a small CNN classifier trained on the prepared
  dataset (:func:`train_feature_net`), for machines without the Inception weights. Its distances
  are *not* FID-Inception values and are labelled as such everywhere.

Features are extracted batch by batch with ``cleanfid.fid.get_batch_features``; statistics are the
mean and the unbiased covariance (``np.cov(rowvar=False)``) as in clean-fid.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import UserError
from .files import save_torch_atomic
from .runtime import progress

INCEPTION_NAME = "inception-v3-tf"
INCEPTION_MODE = "legacy_tensorflow"
OFFLINE_NAME = "offline-classifier"
OFFLINE_MODE = "offline"
FEATNET_FORMAT = "aot-featnet/1"

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------------------------
# Frechet distance and the repeat protocol


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

    d^2 = |mu1 - mu2|^2 + Tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)), with the matrix square root
    from scipy. As in clean-fid: a non-finite square root is retried with `eps` added to both
    diagonals, and a complex result is accepted only if its diagonal is real to within 1e-3.
    """
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors differ in length: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0], mu1.shape[0]):
        raise ValueError(f"covariances do not match the means: {sigma1.shape}, {sigma2.shape}, {mu1.shape}")

    diff = mu1 - mu2
    with warnings.catch_warnings():  # clean-fid passes disp=False: no singular/ill-conditioned warning
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1.dot(sigma2))
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"matrix square root has an imaginary component {np.max(np.abs(covmean.imag)):g}")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of [N, D] features (float64), as clean-fid computes them."""
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need at least two [N, D] feature vectors, got shape {features.shape}")
    return np.mean(features, axis=0, dtype=np.float64), np.cov(features, rowvar=False).astype(np.float64)


def aggregate_repeats(fids: Iterable[float]) -> dict:
    """The three-measurement protocol: minimum (the reported number), mean and spread.

    `std` is the sample standard deviation (ddof=1, as pandas), NaN for a single measurement. The
    report's tables and `python -m aot fid aggregate` both use this function.
    """
    values = [float(v) for v in fids]
    if not values:
        raise ValueError("no FID values to aggregate")
    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std(ddof=1)) if arr.size > 1 else float("nan")
    return {"min": float(arr.min()), "mean": float(arr.mean()), "std": std, "n": int(arr.size)}


# --------------------------------------------------------------------------------------------
# Images -> features


def images_to_nchw(images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, C] (our sample npz layout) -> uint8 [N, C, H, W]."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be [N, H, W, C], got shape {images.shape}")
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))


def _to_float255(batch_u8: np.ndarray, rgb: bool) -> torch.Tensor:
    """uint8 NCHW -> float32 in [0, 255] the way clean-fid's loader makes it (ToTensor() * 255)."""
    x = torch.from_numpy(np.ascontiguousarray(batch_u8))
    if rgb and x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    return x.to(torch.float32).div(255) * 255


def compute_features(images_nchw: np.ndarray, feature_fn: FeatureFn, device: str | torch.device,
                     batch_size: int = 100, rgb: bool = False, what: str = "features") -> np.ndarray:
    """Features of uint8 NCHW images, batch by batch through ``cleanfid.fid.get_batch_features``.

    `rgb=True` repeats single-channel images to three channels (for Inception).
    """
    from cleanfid.fid import get_batch_features

    n = int(images_nchw.shape[0])
    feats = []
    with progress(n, what) as bar:
        for start in range(0, n, batch_size):
            batch = _to_float255(images_nchw[start:start + batch_size], rgb=rgb)
            feats.append(np.asarray(get_batch_features(batch, feature_fn, device)))
            bar.update(len(batch))
    return np.concatenate(feats, axis=0)


def inception_feature_fn(weights: str | os.PathLike, device: str | torch.device,
                         sha256: str | None = None) -> FeatureFn:
    """clean-fid's ``legacy_tensorflow`` extractor from the TorchScript file `weights`, never downloading.

    The file is read once; with `sha256` its digest must match before those same bytes reach
    ``torch.jit.load`` (TorchScript is code: nothing unverified is loaded, and the file cannot be
    swapped between check and load). Called as ``cleanfid.features.build_feature_extractor(
    "legacy_tensorflow")`` calls it (``InceptionV3W(resize_inside=True)``: 2048 features, resized
    inside), minus DataParallel and the download.
    """
    weights = Path(weights)
    data = weights.read_bytes()
    if sha256 is not None:
        got = hashlib.sha256(data).hexdigest()
        if got != sha256.lower():
            raise UserError(f"Inception weights {weights} have SHA-256 {got}, expected {sha256.lower()}; "
                            "refusing to load them")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load deprecation notice
        model = torch.jit.load(io.BytesIO(data), map_location="cpu").eval().to(device)

    def fn(x: torch.Tensor) -> torch.Tensor:
        return model(x, return_features=True).view((x.shape[0], 2048))

    return fn


# --------------------------------------------------------------------------------------------
# The offline feature network


class FeatureNet(nn.Module):
    """Small CNN classifier; its penultimate layer (`feature_dim` values) is the feature space.

    Input: float images in [0, 255], [N, in_channels, R, R]. Blocks of two 3x3 convolutions and a
    2x average pool until the map is at most 4x4, then a linear layer to the features, ReLU and a
    linear classifier head. `features(x)` returns the pre-activation penultimate layer.
    """

    def __init__(self, in_channels: int, resolution: int, num_classes: int, feature_dim: int = 128,
                 width: int = 32):
        super().__init__()
        self.init_kwargs = dict(in_channels=int(in_channels), resolution=int(resolution),
                                num_classes=int(num_classes), feature_dim=int(feature_dim), width=int(width))
        layers: list[nn.Module] = []
        ch, res, level = in_channels, resolution, 0
        while True:
            out = width * 2 ** min(level, 2)
            layers += [nn.Conv2d(ch, out, 3, padding=1), nn.ReLU(),
                       nn.Conv2d(out, out, 3, padding=1), nn.ReLU()]
            ch = out
            if res <= 4:
                break
            layers.append(nn.AvgPool2d(2))
            res, level = res // 2, level + 1
            if res <= 4:
                break
        layers.append(nn.AdaptiveAvgPool2d(4))
        self.trunk = nn.Sequential(*layers)
        self.fc = nn.Linear(ch * 16, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32) / 127.5 - 1.0
        return self.fc(self.trunk(x).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.features(x)))


def _rotation_batch(x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    k = torch.randint(0, 4, (x.shape[0],), generator=gen)
    out = torch.stack([torch.rot90(img, int(r), dims=(1, 2)) for img, r in zip(x, k)])
    return out, k


def train_feature_net(images_nchw: np.ndarray, labels: np.ndarray | None, epochs: int = 10,
                      seed: int = 0, device: str | torch.device = "cpu", batch_size: int = 64,
                      lr: float = 2e-3, feature_dim: int = 128, width: int = 32,
                      val_fraction: float = 0.1) -> tuple[FeatureNet, dict]:
    """Train :class:`FeatureNet` on uint8 NCHW images.

    With labels it classifies them; without labels it predicts which of four rotations was applied.
    A `val_fraction` of the images (fixed by `seed`) is held out to report accuracy.
    Returns (net in eval mode on CPU, info dict with accuracies and settings).
    """
    n, c, h, w = images_nchw.shape
    if h != w:
        raise UserError(f"feature network needs square images, got {h}x{w}")
    task = "labels" if labels is not None else "rotation"
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64)
        num_classes = int(labels.max()) + 1
        if num_classes < 2:
            raise UserError("feature network needs at least two classes in the dataset labels")
    else:
        num_classes = 4
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = FeatureNet(c, h, num_classes, feature_dim=feature_dim, width=width).to(device)
    perm = torch.randperm(n, generator=gen)
    n_val = int(round(n * val_fraction)) if n >= 20 else 0
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    x_all = torch.from_numpy(np.ascontiguousarray(images_nchw)).to(torch.float32)
    y_all = torch.from_numpy(labels) if labels is not None else torch.zeros(n, dtype=torch.int64)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps_per_epoch = max(1, math.ceil(len(train_idx) / batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    bar = progress(epochs, "train-features", unit="epoch")
    for _epoch in range(epochs):
        net.train()
        order = train_idx[torch.randperm(len(train_idx), generator=gen)]
        total, correct, loss_sum = 0, 0, 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            x, y = x_all[idx], y_all[idx]
            if task == "rotation":
                x, y = _rotation_batch(x, gen)
            x, y = x.to(device), y.to(device)
            logits = net(x)
            loss = nn.functional.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += len(idx)
            correct += int((logits.argmax(1) == y).sum())
            loss_sum += float(loss.detach()) * len(idx)
        bar.set_postfix_str(f"loss {loss_sum / total:.4f}, train acc {correct / total:.3f}", refresh=False)
        bar.update(1)
    bar.close()
    net.eval()
    info = {"task": task, "num_classes": num_classes, "epochs": epochs, "seed": seed,
            "num_images": int(n), "num_val": int(n_val), "train_accuracy": correct / max(total, 1),
            "val_accuracy": None}
    if n_val:
        with torch.no_grad():
            x, y = x_all[val_idx], y_all[val_idx]
            if task == "rotation":
                x, y = _rotation_batch(x, torch.Generator().manual_seed(seed + 1))
            pred = torch.cat([net(x[i:i + 512].to(device)).argmax(1).cpu() for i in range(0, len(x), 512)])
            info["val_accuracy"] = float((pred == y).float().mean())
    return net.cpu().requires_grad_(False), info


def save_feature_net(path: str | os.PathLike, net: FeatureNet, **meta) -> None:
    """Write the network with its constructor arguments (readable with weights_only=True)."""
    payload = {"format": FEATNET_FORMAT, "class_name": "FeatureNet", "init_kwargs": dict(net.init_kwargs),
               "state_dict": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
               "meta": json.loads(json.dumps(meta, default=str))}  # plain types only (weights_only)
    save_torch_atomic(payload, path)


def load_feature_net(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[FeatureNet, dict]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"feature network {path} does not exist (make it with: python -m aot fid train-features)")
    from .checkpoints import build_with_weights, checked_dict, checked_kwargs, checked_state_dict, load_torch_file

    payload = load_torch_file(path, "feature network")
    if not isinstance(payload, dict) or payload.get("format") != FEATNET_FORMAT:
        raise UserError(f"{path} is not an aot feature network (format {FEATNET_FORMAT!r} expected)")
    what = f"feature network {path}"
    checked_dict(payload, what, ("init_kwargs", "state_dict"))
    kwargs = checked_kwargs(payload["init_kwargs"], f"{what}: init_kwargs")
    state = checked_state_dict(payload["state_dict"], what)
    net = build_with_weights("FeatureNet", kwargs, state, what, build=lambda kw: FeatureNet(**kw))
    meta = payload.get("meta")
    meta = {} if meta is None else dict(checked_dict(meta, f"{what}: meta"))
    return net.eval().requires_grad_(False).to(device), meta


def offline_feature_fn(net: FeatureNet) -> FeatureFn:
    def fn(x: torch.Tensor) -> torch.Tensor:
        return net.features(x)

    return fn


def check_square(images_nchw: np.ndarray, what: str) -> Sequence[int]:
    if images_nchw.shape[2] != images_nchw.shape[3]:
        raise UserError(f"{what}: images must be square, got {images_nchw.shape[2]}x{images_nchw.shape[3]}")
    return images_nchw.shape[1:]
