"""Image figures: trajectory strips, denoised grids and sample grids.

Trajectory strips (Figures 2, 6, 7, 8): rows models, columns steps, the single-step denoised
estimate x0 of one seed along the sampling path (and the final sample). Denoised grids (Figure 3):
x0 of many seeds at one step (the workflow: step 0, the single Euler step from sigma_max), one panel
per model, optionally after panels of the final images of some models from the same latents (the
paper's panel a). Per-class grids (Figure 9): the same estimate, a row of panels per class. Sample
grids (Figures 10, 11): images of one or more sample sets, a panel each, one row per class for
class-conditional sets.

The diagnostics npz of `aot diagnostics` holds `names`, `t_steps`, and per model i `x0_i`
[seeds, steps, C, H, W] (and `x_i`, the path itself); images there are in [-1, 1] and are shown as
EDM saves them. 1-channel images are drawn in gray. Sample sets are read by `aot.samples`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
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


def _suptitle(fig: Any, text: str) -> None:
    """The figure's title, wrapped to its width (a title of three panels may be longer than they)."""
    import textwrap

    width = max(40, int(fig.get_figwidth() * 14))
    fig.suptitle("\n".join(textwrap.fill(line, width) for line in text.splitlines()), fontsize=9)


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
    _suptitle(fig, title or "single-step denoised estimate x0 along the path (same noise)")
    return fig


def _grid_step(d: dict, step: int | None) -> int:
    k = d["x0"][0].shape[1]
    if step is None:
        step = min(3, k - 1)
    if not 0 <= step < k:
        raise UserError(f"--step {step} out of range: the diagnostics have {k} steps")
    return step


def _step_text(d: dict, step: int) -> str:
    """'single Euler step from σ=80' for step 0, 'step 3 (σ=...)' otherwise."""
    sigma = d["t_steps"][step] if step < len(d["t_steps"]) else float("nan")
    return f"single Euler step from σ={sigma:.3g}" if step == 0 else f"step {step} (σ={sigma:.3g})"


def _final_images(d: dict, i: int, seeds: Any) -> np.ndarray:
    """The final images (the last state of the path) of model i for the seeds `seeds`."""
    if d["x"][i] is None:
        raise UserError(f"the diagnostics hold no path of model {d['names'][i].splitlines()[0]} (key 'x_{i}'), "
                        "so no final images")
    return d["x"][i][seeds, -1]


def plot_denoised_grid(diag: Any, step: int | None = None, max_seeds: int = 64,
                       title: str | None = None, final: Sequence[int] = (), final_label: str | None = None) -> Any:
    """x0 estimates of many seeds at one (early) step, one panel per model, side by side. `final`:
    models (indices) whose final images, the last state of the same paths (same latents), come
    first, each a panel of its own; then the panels are lettered (a), (b), ... (the paper's
    Figure 3: (a) EDM's final images, then the single Euler step of each model); `final_label`
    says how they were sampled (default: 'final image (<K> steps)')."""
    d = _as_diagnostics(diag)
    s_count = d["x0"][0].shape[0]
    step = _grid_step(d, step)
    for i in final:
        if not 0 <= i < len(d["names"]):
            raise UserError(f"no model {i} in the diagnostics ({len(d['names'])} models)")
    n = min(s_count, max_seeds)
    cols = max(1, math.ceil(math.sqrt(n)))
    k = d["x0"][0].shape[1]
    final_label = final_label or f"final image ({k} steps)"
    panels = [(f"{d['names'][i]}\n{final_label}", _final_images(d, i, slice(0, n))) for i in final]
    panels += [(f"{name}\n{_step_text(d, step)}" if final else name, d["x0"][i][:n, step])
               for i, name in enumerate(d["names"])]
    fig, axes = new_figure(1, len(panels), size=(3.2, 3.6 if final else 3.4))
    for j, (label, x) in enumerate(panels):
        imgs = np.stack([_hwc(to_uint8(v)) for v in x])
        _imshow(axes[0][j], tile(imgs, cols))
        if final:
            label = f"({chr(ord('a') + j)}) {label}"
        axes[0][j].set_title(label, fontsize=8 if "\n" in label else 9)
    _suptitle(fig, title or f"denoised estimate x0: {_step_text(d, step)}, same seeds")
    return fig


def plot_denoised_by_class(diag: Any, step: int | None = None, per_class: int = 8,
                           title: str | None = None) -> Any:
    """x0 estimates at one step per class: a row of panels per class (its first `per_class`
    seeds; the seeds' labels are drawn at random, as for sample sets), a column per model, all
    from the same latents and labels (the paper's Figure 9)."""
    d = _as_diagnostics(diag)
    step = _grid_step(d, step)
    labels = d.get("labels")
    if labels is None or not np.size(labels) or np.any(np.asarray(labels) < 0):
        raise UserError("a per-class grid needs the class labels of a class-conditional diagnostics npz "
                        "(key 'labels', no -1)")
    if per_class < 1:
        raise UserError(f"per_class must be positive, got {per_class}")
    labels = np.asarray(labels)
    classes = [int(c) for c in np.unique(labels)]
    per_class = min(per_class, max(int(np.sum(labels == c)) for c in classes))
    fig, axes = new_figure(len(classes), len(d["names"]), size=(0.45 * per_class + 0.6, 0.75))
    for r, c in enumerate(classes):
        seeds = np.flatnonzero(labels == c)[:per_class]
        for i, name in enumerate(d["names"]):
            imgs = np.stack([_hwc(to_uint8(v)) for v in d["x0"][i][seeds, step]])
            if len(imgs) < per_class:  # a class with fewer seeds: padded white
                imgs = np.concatenate([imgs, np.full((per_class - len(imgs), *imgs.shape[1:]), 255, np.uint8)])
            ax = axes[r][i]
            _imshow(ax, tile(imgs, per_class))
            if r == 0:
                ax.set_title(name, fontsize=8 if "\n" in name else 9)
            if i == 0:
                ax.set_ylabel(f"class {c}", fontsize=7)
    _suptitle(fig, title or f"denoised estimate x0 per class: {_step_text(d, step)}, same seeds")
    return fig


# ------------------------------------------------------------------------------------------------
# Samples


def load_labelled_images(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """(uint8 images [N, H, W, C], labels or None, meta) of a sample-set npz."""
    from ..samples import read_sample_set

    rec = read_sample_set(path)
    return rec["images"], rec["labels"], rec["meta"]


def _picked_per_class(labels: np.ndarray, count: int, columns: int) -> list[int]:
    """Indices of up to `columns` images of each class, class by class, until `count` are picked."""
    picked: list[int] = []
    for c in np.unique(labels):
        picked.extend(np.flatnonzero(labels == c)[:columns].tolist())
        if len(picked) >= count:
            break
    return picked


def sample_subset(images: np.ndarray, labels: np.ndarray | None, count: int,
                  columns: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The images (and labels) a sample grid of `count` images shows, and no more: a sample set
    holds 50,000 images, a grid a hundred (Figures 10 and 11 keep only these of each set)."""
    if labels is not None and len(labels) == len(images) and np.all(np.asarray(labels) >= 0):
        idx = sorted(_picked_per_class(np.asarray(labels), count, columns))
        return np.asarray(images)[idx], np.asarray(labels)[idx]
    return np.asarray(images)[:count].copy(), None if labels is None else np.asarray(labels)[:count].copy()


def _rows_per_class(images: np.ndarray, labels: np.ndarray, count: int, columns: int) -> np.ndarray:
    """Up to `columns` images of each class, one row a class (rows padded white), `count` in all."""
    picked = _picked_per_class(labels, count, columns)
    rows = []
    for c in np.unique(labels[picked]):
        idx = [i for i in picked if labels[i] == c]
        row = images[idx]
        if len(row) < columns:
            row = np.concatenate([row, np.full((columns - len(row), *images.shape[1:]), 255,
                                               dtype=np.uint8)])
        rows.append(row)
    return np.concatenate(rows)[: max(count, columns)]


def _sample_mosaic(images: np.ndarray, labels: np.ndarray | None, count: int, columns: int) -> np.ndarray:
    """The images a sample grid shows: the first `count`, or rows per class for labelled sets."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if labels is not None and len(labels) == len(images) and np.all(np.asarray(labels) >= 0):
        return _rows_per_class(images, np.asarray(labels), count, columns)
    return images[:count]


def plot_sample_grid(images: np.ndarray, labels: np.ndarray | None = None, count: int = 100,
                     columns: int = 10, title: str | None = None) -> Any:
    """Grid of uint8 [N, H, W, C] images; class-conditional sets get one row per class."""
    return plot_sample_grids([(images, labels, "")], count, columns, title)


def plot_sample_grids(sets: Sequence[tuple[np.ndarray, np.ndarray | None, str]], count: int = 100,
                      columns: int = 10, title: str | None = None) -> Any:
    """One sample grid (`plot_sample_grid`) per (images, labels, panel title), at most two panels a
    row (Figures 10, 11: the sample sets of Table 1 or 2's settings)."""
    if not sets:
        raise UserError("a sample grid needs at least one sample set")
    mosaics = [(_sample_mosaic(images, labels, count, columns), label) for images, labels, label in sets]
    rows_of_images = max(math.ceil(len(sel) / max(columns, 1)) for sel, _ in mosaics)
    ncols = min(2, len(mosaics))
    nrows = math.ceil(len(mosaics) / ncols)
    fig, axes = new_figure(nrows, ncols, size=(min(10.0, 0.6 * columns + 1),
                                               min(10.0, 0.6 * rows_of_images + 1) + (0.4 if len(mosaics) > 1 else 0)))
    for j, (sel, label) in enumerate(mosaics):
        ax = axes[j // ncols][j % ncols]
        _imshow(ax, tile(sel, columns))
        if label:
            ax.set_title(label, fontsize=8)
    for j in range(len(mosaics), nrows * ncols):
        axes[j // ncols][j % ncols].set_axis_off()
    _suptitle(fig, title or "samples")
    return fig
