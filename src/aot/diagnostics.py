"""Trajectory diagnostics: denoised estimates along the sampling path, and how straight the path is.

    python -m aot diagnostics --network edm.pt --network aot.pt --seeds 0-7 --steps 18 --rho 7 --out traj.npz

For every network, from the same latents (and class labels) of the same seeds, the sampler is run
with every state x_k and every single-step denoised estimate x0_k = D(x_k, t_k) kept (the paper's
Figures 2, 3, 6-9). Two numbers per model make "AOT straightens trajectories" measurable:

* curvature: the mean over steps k (and seeds) of ||x0_k - x_final|| / sqrt(dim), also kept as a
  curve over sigma = t_k. A trajectory whose denoised estimate never changes is a straight line
  travelled at the rate of the noise level, and scores 0.
* path deviation: 1 - ||x_K - x_0|| / sum_k ||x_{k+1} - x_k|| (0 for a straight path, whatever its
  speed); with the distance of every x_k from the chord x_0 -> x_K, divided by sqrt(dim), as a curve
  over sigma and as its mean (`chord_distance`). The radial shrinking from sigma_max dominates the
  path length, so path deviations are small numbers; compare models with each other.

Outputs `traj.npz` (arrays, layout below) and `traj.json` beside it (numbers). npz keys, for model i:
`x0_<i>` float32 [S, K, C, H, W], `x_<i>` float32 [S, K+1, C, H, W], `t_steps_<i>` float64 [K+1];
shared: `t_steps` (model 0's), `names`, `labels` int64 [S] (-1 unconditional), `seeds` int64 [S].
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UserError, positive_int
from .files import atomic_path, write_json_atomic
from .keys import parse_int_list
from .runtime import environment_info


def _np(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().to("cpu", torch.float64).numpy()
    return np.asarray(a, dtype=np.float64)


def trajectory_metrics(x: Any, x0: Any, t_steps: Any) -> dict:
    """Curvature numbers of a batch of trajectories.

    x: states [S, K+1, ...], x0: single-step denoised estimates [S, K, ...], t_steps: [K+1].
    Returns plain Python numbers and lists:
      curvature (scalar, mean over seeds and steps), curvature_per_seed [S],
      curve = {sigma: t_0..t_{K-1}, x0_distance_to_final: [K] (mean over seeds)},
      path_deviation (scalar, mean over seeds), path_deviation_per_seed [S],
      chord_distance (scalar, mean over seeds and states of the distance to the chord / sqrt(dim)),
      path = {sigma: t_0..t_K, x_distance_to_chord: [K+1] (mean over seeds)}.
    """
    x, x0, t = _np(x), _np(x0), _np(t_steps)
    if x.ndim < 2 or x0.shape[:2] != (x.shape[0], x.shape[1] - 1) or t.shape != (x.shape[1],):
        raise ValueError(f"shapes do not fit: x {x.shape}, x0 {x0.shape}, t_steps {t.shape}")
    s, k1 = x.shape[:2]
    x = x.reshape(s, k1, -1)
    x0 = x0.reshape(s, k1 - 1, -1)
    dim = x.shape[-1]
    scale = math.sqrt(dim)

    final = x[:, -1]
    dist = np.linalg.norm(x0 - final[:, None], axis=-1) / scale  # [S, K]
    curv_seed = dist.mean(axis=1)

    seg = np.linalg.norm(np.diff(x, axis=1), axis=-1)  # [S, K]
    length = seg.sum(axis=1)
    chord_vec = x[:, -1] - x[:, 0]
    chord = np.linalg.norm(chord_vec, axis=-1)
    dev_seed = np.where(length > 0, 1.0 - chord / np.where(length > 0, length, 1.0), 0.0)

    rel = x - x[:, :1]  # [S, K+1, D]
    unit = chord_vec / np.where(chord > 0, chord, 1.0)[:, None]
    along = np.einsum("skd,sd->sk", rel, unit)
    perp = rel - along[..., None] * unit[:, None]
    chord_dist = np.linalg.norm(perp, axis=-1) / scale  # [S, K+1]

    return {
        "curvature": float(curv_seed.mean()),
        "curvature_per_seed": curv_seed.tolist(),
        "curve": {"sigma": t[:-1].tolist(), "x0_distance_to_final": dist.mean(axis=0).tolist()},
        "path_deviation": float(dev_seed.mean()),
        "path_deviation_per_seed": dev_seed.tolist(),
        "chord_distance": float(chord_dist.mean()),
        "path": {"sigma": t.tolist(), "x_distance_to_chord": chord_dist.mean(axis=0).tolist()},
    }


def run_trajectories(net: torch.nn.Module, seeds: Sequence[int], sampler_kwargs: dict, device: str,
                     class_labels: str | int = "random", batch: int = 64) -> dict:
    """Trajectories of `net` for `seeds` (latents and labels exactly as `aot.generate` draws them).

    Returns numpy arrays: x [S, K+1, C, H, W], x0 [S, K, C, H, W] (float64), t_steps [K+1],
    labels int64 [S].
    """
    from .generate import seed_inputs
    from .sampling import denoised_trajectory

    xs, x0s, labels, t_steps = [], [], [], None
    with torch.no_grad():
        for start in range(0, len(seeds), batch):
            chunk = list(seeds[start:start + batch])
            latents, onehot, lab, rnd = seed_inputs(net, chunk, device, class_labels)
            traj = denoised_trajectory(net, latents, onehot, randn_like=rnd.randn_like, **sampler_kwargs)
            xs.append(_np(traj["x"]))
            x0s.append(_np(traj["x0"]))
            labels.append(np.asarray(lab, dtype=np.int64))
            t_steps = _np(traj["t_steps"])
    return {"x": np.concatenate(xs), "x0": np.concatenate(x0s), "t_steps": t_steps,
            "labels": np.concatenate(labels)}


def _load_networks(networks: Sequence[str | os.PathLike], names: Sequence[str] | None, device) -> list:
    """[(name, path, net, meta)] for every network; names from `names`, the meta 'model' or the file."""
    from .checkpoints import load_any_network

    if names is not None and len(names) != len(networks):
        raise UserError(f"--name given {len(names)} times for {len(networks)} --network options")
    nets = []
    for i, path in enumerate(networks):
        net, meta = load_any_network(path, device=device)
        name = (names[i] if names else None) or meta.get("model") or Path(path).stem
        nets.append((name, path, net, meta))
    return nets


def _check_networks(nets: list, class_labels: str | int) -> None:
    """The networks must share latents (image shape) and classes, and have distinct names."""
    path0, net0 = nets[0][1], nets[0][2]
    shape0 = (int(net0.img_channels), int(net0.img_resolution))
    label_dims = {int(getattr(n, "label_dim", 0) or 0) for _, _, n, _ in nets} - {0}
    for _, path, net, _ in nets:
        if (int(net.img_channels), int(net.img_resolution)) != shape0:
            raise UserError(f"network {path} makes {net.img_channels}x{net.img_resolution}x{net.img_resolution} "
                            f"images, {path0} {shape0[0]}x{shape0[1]}x{shape0[1]}: no shared latents")
    if len(label_dims) > 1:
        raise UserError(f"conditional networks disagree on the number of classes: {sorted(label_dims)}")
    if isinstance(class_labels, int):
        if not label_dims:
            raise UserError("--class-labels given but no network is class-conditional")
        if not 0 <= class_labels < next(iter(label_dims)):
            raise UserError(f"--class-labels {class_labels} is outside 0..{next(iter(label_dims)) - 1}")
    names = [n for n, *_ in nets]
    if len(set(names)) != len(names):
        raise UserError(f"model names repeat ({', '.join(names)}); give distinct --name options")


def run_diagnostics(*, network: Sequence[str | os.PathLike], out: str | os.PathLike,
                    name: Sequence[str] | None = None,  # model name per network (default: meta 'model', file name)
                    seeds: str | Sequence[int] = "0-7",  # the same latents (and labels) for every network
                    solver: str = "heun",                # EDM's sampler settings
                    num_steps: int = 18,
                    rho: float = 7.0,
                    sigma_min: float = 0.002,
                    sigma_max: float = 80.0,
                    S_churn: float = 0.0,
                    class_labels: str | int = "random",  # 'random' (as aot.generate) or a class index
                    batch: int = 64,                     # seeds per sampler call
                    device: str | None = "auto",         # cuda, cuda:N, cpu or auto
                    ) -> dict:
    """Trajectories and their curvature numbers for every network; writes `out` (npz) and the JSON
    beside it, returns the JSON's content."""
    from .generate import check_seeds, parse_class_labels
    from .runtime import resolve_device
    from .sampling import edm_time_steps, nfe, sampler_key

    out = Path(out)
    if out.suffix != ".npz":
        raise UserError(f"--out {out} must end in .npz (the JSON goes beside it)")
    seeds = check_seeds(parse_int_list(seeds, "--seeds"))
    steps = positive_int("--steps", num_steps)
    batch = positive_int("--batch", batch)
    try:
        edm_time_steps(steps, sigma_min, sigma_max, rho)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if S_churn < 0:
        raise UserError(f"--S-churn must be >= 0, got {S_churn}")
    class_labels = parse_class_labels(class_labels)
    device = str(resolve_device(device))
    nets = _load_networks(network, name, device)
    _check_networks(nets, class_labels)

    sampler_kwargs = dict(num_steps=steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, S_churn=S_churn,
                          solver=solver)
    sampler = {"key": sampler_key(solver, steps, rho, S_churn), "solver": solver, "num_steps": steps,
               "rho": float(rho), "sigma_min": float(sigma_min), "sigma_max": float(sigma_max),
               "S_churn": float(S_churn), "nfe": nfe(steps, solver), "class_labels": class_labels}
    t0 = time.time()
    arrays: dict[str, np.ndarray] = {}
    labels = np.full(len(seeds), -1, dtype=np.int64)
    models = []
    for i, (name_i, path, net, meta) in enumerate(nets):
        print(f"diagnostics: {name_i} ({path}): {len(seeds)} seeds, {sampler['key']} on {device}", flush=True)
        tr = run_trajectories(net, seeds, sampler_kwargs, device, class_labels, batch)
        arrays[f"x0_{i}"] = tr["x0"].astype(np.float32)
        arrays[f"x_{i}"] = tr["x"].astype(np.float32)
        arrays[f"t_steps_{i}"] = tr["t_steps"]
        if (tr["labels"] >= 0).any():
            labels = tr["labels"]
        m = trajectory_metrics(tr["x"], tr["x0"], tr["t_steps"])
        models.append({"name": name_i, "aot": meta.get("aot"),
                       "cond": bool(int(getattr(net, "label_dim", 0) or 0)),
                       "checkpoint": str(path), "source": meta.get("source"), "kimg": meta.get("kimg"), **m})
        print(f"diagnostics: {name_i}: curvature {m['curvature']:.5f}, path deviation {m['path_deviation']:.3e}",
              flush=True)
    arrays["t_steps"] = arrays["t_steps_0"]
    arrays["names"] = np.array([n for n, *_ in nets])
    arrays["labels"] = labels
    arrays["seeds"] = np.asarray(seeds, dtype=np.int64)
    result = {"kind": "diagnostics", "models": models, "sampler": sampler, "seeds": seeds,
              "labels": labels.tolist(), "npz": str(out), "time_s": time.time() - t0, "env": environment_info()}
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    out_json = out.with_suffix(".json")
    write_json_atomic(out_json, result)
    print(f"diagnostics: wrote {out} and {out_json} ({result['time_s']:.1f} s)", flush=True)
    return result
