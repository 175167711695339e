"""Image figures: trajectory strips, denoised grids and sample grids.

Trajectory strips (Figures 2, 6, 7, 8): rows models, columns steps, the single-step denoised
estimate x0 of one seed along the sampling path (and the final sample). Denoised grids (Figures 3,
9): x0 of many seeds at one early step, one panel per model. Sample grids (Figures 10, 11): images
of a sample set, one row per class for class-conditional sets.

The diagnostics npz of `aot diagnostics` holds `names`, `t_steps`, and per model i `x0_i`
[seeds, steps, C, H, W] (and `x_i`, the path itself); images there are in [-1, 1] and are shown as
EDM saves them. 1-channel images are drawn in gray. Sample sets are read by `aot.samples`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..files import read_npz
from .render import new_figure


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Images in [-1, 1] to uint8 as EDM saves them (x * 127.5 + 128, clipped)."""
    return np.clip(np.asarray(x, dtype=np.float64) * 127.5 + 128, 0, 255).astype(np.uint8)


def _hwc(img: np.ndarray) -> np.ndarray:
    """CHW or HWC (C in 1, 3) uint8 -> HWC."""
    if img.ndim == 2:
        return img[:, :, None]
    if img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        return np.transpose(img, (1, 2, 0))
    if img.shape[0] in (1, 3) and img.shape[-1] in (1, 3) and img.shape[0] != img.shape[-1]:
        return np.transpose(img, (1, 2, 0))
    return img


def tile(images: np.ndarray, columns: int, pad: int = 1, fill: int = 255) -> np.ndarray:
    """uint8 images [N, H, W, C] -> one [rows*(H+pad)-pad, cols*(W+pad)-pad, C] mosaic."""
    images = np.asarray(images)
    n, h, w, c = images.shape
    columns = max(1, min(columns, n))
    rows = max(1, math.ceil(n / columns))
    out = np.full((rows * (h + pad) - pad, columns * (w + pad) - pad, c), fill, dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, columns)
        out[r * (h + pad): r * (h + pad) + h, k * (w + pad): k * (w + pad) + w] = images[i]
    return out


def _imshow(ax: Any, img: np.ndarray) -> None:
    img = _hwc(img)
    if img.shape[-1] == 1:
        ax.imshow(img[:, :, 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(img, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


# ------------------------------------------------------------------------------------------------
# Diagnostics: denoised estimates along the sampling path


def load_diagnostics(path: str | os.PathLike) -> dict:
    """Read the diagnostics npz: {"names", "t_steps", "x0": [per model [S,K,C,H,W]], "x", "labels"}."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"diagnostics {path} does not exist")
    return check_diagnostics(read_npz(path, "diagnostics"), path)  # sizes checked before reading


def check_diagnostics(data: dict, path: Any = "<diagnostics>") -> dict:
    """The arrays of a diagnostics npz, checked and arranged per model."""
    for key in ("names", "t_steps"):
        if key not in data:
            raise UserError(f"diagnostics {path}: missing key '{key}'")
    names = [str(n) for n in np.atleast_1d(data["names"])]
    x0, xs = [], []
    for i, name in enumerate(names):
        if f"x0_{i}" not in data:
            raise UserError(f"diagnostics {path}: missing key 'x0_{i}' (model {name})")
        a = np.asarray(data[f"x0_{i}"], dtype=np.float32)
        if a.ndim != 5 or a.shape[2] not in (1, 3):
            raise UserError(f"diagnostics {path}: 'x0_{i}' must be [seeds, steps, C, H, W] with C 1 "
                            f"or 3, got shape {a.shape}")
        if x0 and a.shape != x0[0].shape:
            raise UserError(f"diagnostics {path}: 'x0_{i}' has shape {a.shape}, 'x0_0' {x0[0].shape}")
        x0.append(a)
        xs.append(np.asarray(data[f"x_{i}"], dtype=np.float32) if f"x_{i}" in data else None)
    if not names:
        raise UserError(f"diagnostics {path}: no models in 'names'")
    t_steps = np.asarray(data["t_steps"], dtype=np.float64)
    return {"names": names, "t_steps": t_steps, "x0": x0, "x": xs,
            "labels": np.asarray(data["labels"]) if "labels" in data else None}


def _as_diagnostics(diag: Any) -> dict:
    if isinstance(diag, (str, os.PathLike)):
        return load_diagnostics(diag)
    if isinstance(diag, dict) and "x0" in diag and isinstance(diag["x0"], list):
        return diag
    return check_diagnostics(dict(diag))


def _pick_columns(k: int, max_columns: int) -> list[int]:
    if k <= max_columns:
        return list(range(k))
    return sorted({int(round(v)) for v in np.linspace(0, k - 1, max_columns)})


def plot_trajectory_strip(diag: Any, seed_index: int = 0, max_columns: int = 10,
                          title: str | None = None, with_final: bool = True) -> Any:
    """Rows = models, columns = steps: the single-step denoised estimate x0 of one seed."""
    d = _as_diagnostics(diag)
    s_count, k = d["x0"][0].shape[:2]
    if not 0 <= seed_index < s_count:
        raise UserError(f"--seed-index {seed_index} out of range: the diagnostics have {s_count} seeds")
    cols = _pick_columns(k, max_columns)
    final = with_final and all(x is not None for x in d["x"])
    ncols = len(cols) + int(final)
    fig, axes = new_figure(len(d["names"]), ncols, size=(1.1, 1.25))
    t = d["t_steps"]
    for i, name in enumerate(d["names"]):
        for j, step in enumerate(cols):
            ax = axes[i][j]
            _imshow(ax, to_uint8(d["x0"][i][seed_index, step]))
            if i == 0:
                sig = f"\nσ={t[step]:.3g}" if step < len(t) else ""
                ax.set_title(f"step {step}{sig}", fontsize=7)
        if final:
            ax = axes[i][-1]
            _imshow(ax, to_uint8(d["x"][i][seed_index, -1]))
            if i == 0:
                ax.set_title("final", fontsize=7)
        axes[i][0].set_ylabel(name, fontsize=6 if "\n" in name else 8)
    fig.suptitle(title or "single-step denoised estimate x0 along the path (same noise)", fontsize=9)
    return fig


def plot_denoised_grid(diag: Any, step: int | None = None, max_seeds: int = 64,
                       title: str | None = None) -> Any:
    """x0 estimates of many seeds at one (early) step, one panel per model, side by side."""
    d = _as_diagnostics(diag)
    s_count, k = d["x0"][0].shape[:2]
    if step is None:
        step = min(3, k - 1)
    if not 0 <= step < k:
        raise UserError(f"--step {step} out of range: the diagnostics have {k} steps")
    n = min(s_count, max_seeds)
    cols = max(1, math.ceil(math.sqrt(n)))
    fig, axes = new_figure(1, len(d["names"]), size=(3.2, 3.4))
    sigma = d["t_steps"][step] if step < len(d["t_steps"]) else float("nan")
    for i, name in enumerate(d["names"]):
        imgs = np.stack([_hwc(to_uint8(x)) for x in d["x0"][i][:n, step]])
        _imshow(axes[0][i], tile(imgs, cols))
        axes[0][i].set_title(name, fontsize=8 if "\n" in name else 9)
    fig.suptitle(title or f"denoised estimate x0 at step {step} (σ={sigma:.3g}), same seeds",
                 fontsize=9)
    return fig


# ------------------------------------------------------------------------------------------------
# Samples


def load_labelled_images(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """(uint8 images [N, H, W, C], labels or None, meta) of a sample-set npz."""
    from ..samples import read_sample_set

    rec = read_sample_set(path)
    return rec["images"], rec["labels"], rec["meta"]


def _rows_per_class(images: np.ndarray, labels: np.ndarray, count: int, columns: int) -> np.ndarray:
    """Up to `columns` images of each class, one row a class (rows padded white), `count` in all."""
    picked = []
    for c in np.unique(labels):
        picked.extend(np.flatnonzero(labels == c)[:columns].tolist())
        if len(picked) >= count:
            break
    rows = []
    for c in np.unique(labels[picked]):
        idx = [i for i in picked if labels[i] == c]
        row = images[idx]
        if len(row) < columns:
            row = np.concatenate([row, np.full((columns - len(row), *images.shape[1:]), 255,
                                               dtype=np.uint8)])
        rows.append(row)
    return np.concatenate(rows)[: max(count, columns)]


def plot_sample_grid(images: np.ndarray, labels: np.ndarray | None = None, count: int = 100,
                     columns: int = 10, title: str | None = None) -> Any:
    """Grid of uint8 [N, H, W, C] images; class-conditional sets get one row per class."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if labels is not None and len(labels) == len(images) and np.all(np.asarray(labels) >= 0):
        sel = _rows_per_class(images, np.asarray(labels), count, columns)
    else:
        sel = images[:count]
    fig, axes = new_figure(1, 1, size=(min(10.0, 0.6 * columns + 1), min(10.0, 0.6 * math.ceil(
        len(sel) / max(columns, 1)) + 1)))
    _imshow(axes[0][0], tile(sel, columns))
    fig.suptitle(title or "samples", fontsize=9)
    return fig
