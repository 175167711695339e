"""Seed-deterministic, sharded, resumable image generation (EDM's generate.py) into a sample set.

As in EDM's `generate.py`, every seed has its own random generator: the latents, the class label
(drawn after the latents) and any stochastic-sampler noise of seed s come from seed s alone, so the
image for seed s does not depend on the batch size, the shard size or the number of processes.

`generate_set(network=..., seeds=..., out=...)` makes a sample set (format: `aot.samples`) from a
network file; `run_generation` does the same for a network in memory and any sampler (DG uses it).
Completed shards of `shard_size` seeds are kept; a killed run, rerun with the same settings,
generates only what is missing. Under `torchrun`, ranks share the shards and rank 0 writes the set.
SIGTERM/SIGUSR1 (Slurm's time limit, preemption) end `generate_set` at once with exit code 75
(`aot.errors.EXIT_PREEMPTED`); the handlers are those of the caller again when it returns.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UserError
from .keys import parse_int_list
from .runtime import Preemption, environment_info, progress
from .samples import (
    generation_fingerprint,
    read_shards,
    save_grid,
    scan_shards,
    shard_path,
    shards_dir,
    write_sample_set,
    write_shard,
)
from .sampling import SOLVERS, StackedRandomGenerator, get_sampler, nfe, sampler_key

MAX_SEED = (1 << 32) - 1


# --------------------------------------------------------------------------------------------
# Small helpers


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`None` -> cuda if available else cpu; an unavailable CUDA device is a UserError."""
    if device is None or device == "" or device == "auto":
        device = default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"--device {device!r} is not a valid device") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA devices")
    return dev


def parse_class_labels(value: str | int | None) -> str | int:
    """'random' (one label per seed, EDM's default) or a fixed class index."""
    if value is None:
        return "random"
    if isinstance(value, (int, np.integer)):
        v = int(value)
    else:
        s = str(value).strip().lower()
        if s == "random":
            return "random"
        try:
            v = int(s)
        except ValueError:
            raise UserError(f"--class-labels must be 'random' or a class index, got {value!r}") from None
    if v < 0:
        raise UserError(f"--class-labels must be a non-negative class index, got {v}")
    return v


def check_class_labels(net: torch.nn.Module, class_labels: str | int, what: str = "network") -> None:
    label_dim = int(getattr(net, "label_dim", 0) or 0)
    if isinstance(class_labels, int):
        if label_dim == 0:
            raise UserError(f"--class-labels {class_labels}: the {what} is unconditional (no class labels)")
        if class_labels >= label_dim:
            raise UserError(f"--class-labels {class_labels} is out of range: the {what} has {label_dim} classes "
                            f"(0..{label_dim - 1})")
    elif class_labels != "random":
        raise UserError(f"--class-labels must be 'random' or a class index, got {class_labels!r}")


def check_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise UserError("--seeds names no seeds")
    bad = [s for s in seeds if s < 0 or s > MAX_SEED]
    if bad:
        raise UserError(f"--seeds: seed {bad[0]} is outside 0..{MAX_SEED}")
    if len(set(seeds)) != len(seeds):
        seen: set[int] = set()
        dup = next(s for s in seeds if s in seen or seen.add(s))
        raise UserError(f"--seeds: seed {dup} appears more than once")
    return seeds


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] float NCHW -> uint8 NHWC numpy, exactly as EDM: (x * 127.5 + 128).clip(0, 255)."""
    return (images * 127.5 + 128).clip(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def seed_inputs(net: torch.nn.Module, seeds: Sequence[int], device: torch.device | str,
                class_labels: str | int = "random"):
    """Latents, one-hot labels (or None) and label indices for `seeds`, drawn as EDM's generate.py.

    Returns (latents, onehot_or_None, labels int64 numpy (-1 if unconditional), generator).
    The class label is drawn from each seed's generator after its latents, also when a fixed class
    replaces it, so that the stochastic sampler's noise stream is EDM's in both cases.
    """
    device = torch.device(device)
    n = len(seeds)
    rnd = StackedRandomGenerator(device, seeds)
    latents = rnd.randn([n, net.img_channels, net.img_resolution, net.img_resolution], device=device)
    label_dim = int(getattr(net, "label_dim", 0) or 0)
    if not label_dim:
        return latents, None, np.full(n, -1, dtype=np.int64), rnd
    idx = rnd.randint(label_dim, size=[n], device=device)
    if isinstance(class_labels, int):
        idx = torch.full_like(idx, class_labels)
    onehot = torch.eye(label_dim, device=device)[idx]
    return latents, onehot, idx.cpu().numpy().astype(np.int64), rnd


def _batches(n: int, batch: int) -> list[np.ndarray]:
    """Split range(n) into ceil(n / batch) near-equal consecutive parts (EDM's tensor_split)."""
    return np.array_split(np.arange(n), max(1, math.ceil(n / batch)))


def generate_images(net: torch.nn.Module, seeds: Sequence[int], sampler_fn: Callable | None = None,
                    sampler_kwargs: dict | None = None, batch: int = 256,
                    device: torch.device | str | None = None, class_labels: str | int = "random",
                    progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images for `seeds`: (uint8 [N, H, W, C], int64 labels [N], -1 when unconditional).

    `sampler_fn(net, latents, class_labels, randn_like=..., **sampler_kwargs)` returns float images
    in [-1, 1] (default `aot.sampling.edm_sampler`). Runs under `torch.no_grad()`; a guided sampler
    needing gradients enables them itself. `progress(k)` is called with the number of images done.
    """
    sampler_fn = sampler_fn or get_sampler("heun")
    sampler_kwargs = dict(sampler_kwargs or {})
    device = resolve_device(device)
    seeds = list(seeds)
    h = w = int(net.img_resolution)
    out_images = np.empty([len(seeds), h, w, int(net.img_channels)], dtype=np.uint8)
    out_labels = np.empty([len(seeds)], dtype=np.int64)
    done = 0
    with torch.no_grad():
        for idx in _batches(len(seeds), batch):
            if idx.size == 0:
                continue
            batch_seeds = [seeds[i] for i in idx]
            latents, onehot, labels, rnd = seed_inputs(net, batch_seeds, device, class_labels)
            images = sampler_fn(net, latents, onehot, randn_like=rnd.randn_like, **sampler_kwargs)
            out_images[idx[0]:idx[-1] + 1] = to_uint8(images)
            out_labels[idx[0]:idx[-1] + 1] = labels
            done += idx.size
            if progress is not None:
                progress(done)
    return out_images, out_labels


# --------------------------------------------------------------------------------------------
# Sharded, resumable driver


def _dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def run_generation(net: torch.nn.Module, out: str | os.PathLike, seeds: Sequence[int], *,
                   sampler_fn: Callable | None = None, sampler_kwargs: dict | None = None,
                   batch: int = 256, device: torch.device | str | None = None,
                   class_labels: str | int = "random", shard_size: int = 1000, meta: dict | None = None,
                   fingerprint_extra: Any = None, grid: str | os.PathLike | None = None,
                   after_shard: Callable[[int], None] | None = None,
                   log: Callable[[str], None] | None = None) -> dict | None:
    """Generate `seeds` into `out` (npz) through resumable shards; returns the final meta dict.

    `meta` (model, sampler, ...) is stored in the npz with `seeds`, `num_images`, `time_s` (summed
    over all runs that contributed shards) and `env` added. `fingerprint_extra` names anything else
    that determines the images (e.g. a discriminator path); modules inside `sampler_kwargs` are
    fingerprinted by their weights. `after_shard(k)` is called after shard k is on disk (tests use it
    to simulate a kill). Under torch.distributed, ranks split the pending shards and rank 0 writes
    `out`; other ranks return None.
    """
    log = log or (lambda s: print(s, flush=True))
    sampler_fn = sampler_fn or get_sampler("heun")
    sampler_kwargs = dict(sampler_kwargs or {})
    seeds = check_seeds(seeds)
    if shard_size <= 0 or batch <= 0:
        raise UserError(f"--shard-size and --batch must be positive (got {shard_size}, {batch})")
    check_class_labels(net, class_labels)
    out = Path(out)
    device = resolve_device(device)
    rank, world = _dist_info()

    chunks = [seeds[i:i + shard_size] for i in range(0, len(seeds), shard_size)]
    fingerprint = generation_fingerprint(net, sampler_fn, sampler_kwargs, class_labels, fingerprint_extra)
    sdir = shards_dir(out)
    if rank == 0:
        done = scan_shards(sdir, fingerprint, chunks, log)
        try:
            sdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create shard folder {sdir}: {exc.strerror}") from None
        if done:
            log(f"resuming: {len(done)} of {len(chunks)} shards already in {sdir}")
    _barrier()
    if rank != 0:
        done = {k for k in range(len(chunks)) if shard_path(sdir, k).is_file()}
    pending = [k for k in range(len(chunks)) if k not in done]
    mine = pending[rank::world]

    already = sum(len(chunks[k]) for k in done)
    total = len(seeds) if world == 1 else already + sum(len(chunks[k]) for k in mine)
    desc = f"generating {out.name}" + (f" [rank {rank}]" if world > 1 else "")
    with progress(total, desc, unit="img", initial=already) as bar:
        for k in mine:
            t0 = time.monotonic()
            images, labels = generate_images(net, chunks[k], sampler_fn, sampler_kwargs, batch, device,
                                             class_labels, progress=_bar_callback(bar))
            write_shard(sdir, k, images, labels, chunks[k], fingerprint, time.monotonic() - t0)
            if after_shard is not None:
                after_shard(k)
    _barrier()
    if rank != 0:
        return None

    # Merge (rank 0): every shard must be present and valid.
    images, labels, seeds_arr, time_s = read_shards(out, chunks, fingerprint)
    final_meta = dict(meta or {})
    final_meta.update({"seeds": [int(seeds[0]), int(seeds[-1])], "num_images": int(len(seeds)),
                       "time_s": time_s, "env": environment_info()})
    if grid is not None:
        save_grid(grid, images)
    write_sample_set(out, images, labels, seeds_arr, final_meta)
    log(f"wrote {len(seeds)} images to {out} ({time_s:.1f} s of sampling)")
    return final_meta


def _bar_callback(bar) -> Callable[[int], None]:
    """generate_images' progress(done) as increments of a tqdm bar."""
    last = [0]

    def update(done: int) -> None:
        bar.update(done - last[0])
        last[0] = done

    return update


def model_meta(checkpoint: str | os.PathLike, ckpt_meta: dict, net: torch.nn.Module,
               name: str | None = None) -> dict:
    """The `model` entry of a sample set's meta, from the checkpoint's meta (name may be overridden)."""
    ckpt_meta = ckpt_meta or {}
    label_dim = int(getattr(net, "label_dim", 0) or 0)
    return {
        "name": name or ckpt_meta.get("model") or Path(checkpoint).stem,
        "aot": ckpt_meta.get("aot"),
        "cond": bool(ckpt_meta.get("cond", label_dim > 0)),
        "checkpoint": str(checkpoint),
        "source": ckpt_meta.get("source"),
        "kimg": ckpt_meta.get("kimg"),
    }


def sampler_meta(solver: str, num_steps: int, rho: float, sigma_min: float, sigma_max: float,
                 S_churn: float = 0, S_min: float = 0, S_max: float = float("inf"), S_noise: float = 1,
                 class_labels: str | int = "random", guidance: dict | None = None) -> dict:
    return {
        "key": sampler_key(solver, num_steps, rho, S_churn), "solver": solver, "num_steps": int(num_steps),
        "rho": float(rho), "sigma_min": float(sigma_min), "sigma_max": float(sigma_max),
        "S_churn": float(S_churn), "S_min": float(S_min),
        "S_max": None if not math.isfinite(S_max) else float(S_max), "S_noise": float(S_noise),
        "nfe": nfe(num_steps, solver), "class_labels": class_labels, "guidance": guidance,
    }


# --------------------------------------------------------------------------------------------
# A sample set from a network file


def check_sampler_settings(*, solver: str, num_steps: int, rho: float, sigma_min: float, sigma_max: float,
                           S_churn: float, S_min: float, S_max: float, S_noise: float) -> None:
    """UserErrors, named by their options, for sampler settings EDM's sampler cannot run."""
    if solver not in SOLVERS:
        raise UserError(f"--solver: unknown solver {solver!r} (choose from {', '.join(SOLVERS)})")
    if num_steps < 2:
        raise UserError(f"--steps must be at least 2, got {num_steps}")
    if not rho > 0:
        raise UserError(f"--rho must be positive, got {rho}")
    if not sigma_min > 0:
        raise UserError(f"--sigma-min must be positive, got {sigma_min}")
    if not sigma_max > sigma_min:
        raise UserError(f"--sigma-max ({sigma_max}) must be larger than --sigma-min ({sigma_min})")
    if S_churn < 0 or S_noise < 0 or S_min < 0:
        raise UserError("--S-churn, --S-noise and --S-min must not be negative")
    if S_max < S_min:
        raise UserError(f"--S-max ({S_max}) must not be below --S-min ({S_min})")


def check_output_settings(*, out: str | os.PathLike, grid: str | os.PathLike | None, batch: int, shard_size: int,
                          model_name: str | None) -> None:
    """UserErrors for output settings, before anything is loaded or written."""
    if Path(out).suffix != ".npz":
        raise UserError(f"--out {out} must end in .npz")
    if grid is not None and Path(grid).suffix.lower() != ".png":
        raise UserError(f"--grid {grid} must end in .png")
    if batch <= 0:
        raise UserError(f"--batch must be positive, got {batch}")
    if shard_size <= 0:
        raise UserError(f"--shard-size must be positive, got {shard_size}")
    if model_name is not None and not model_name.strip():
        raise UserError("--model-name must not be empty")
    parent = Path(out).resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise UserError(f"output folder for {out} is not writable")


def _init_distributed(device: str | None) -> str | None:
    """Under torchrun (WORLD_SIZE > 1): join the process group, pick this rank's GPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    use_cuda = torch.cuda.is_available() and (device in (None, "", "auto") or str(device).startswith("cuda"))
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    return device


SAMPLER_SETTINGS = ("num_steps", "sigma_min", "sigma_max", "rho", "S_churn", "S_min", "S_max", "S_noise")


def generation_request(*, seeds: str | Sequence[int], out: str | os.PathLike,
                       solver: str = "heun",            # ODE solver: heun (EDM, NFE 2N - 1) or euler (NFE N)
                       num_steps: int = 18,             # time steps N
                       rho: float = 7.0,                # time-step exponent
                       sigma_min: float = 0.002,        # lowest noise level
                       sigma_max: float = 80.0,         # highest noise level
                       S_churn: float = 0.0,            # stochasticity (0: deterministic)
                       S_min: float = 0.0,              # noise levels at which churn applies: [S_min, S_max]
                       S_max: float = math.inf,
                       S_noise: float = 1.0,            # scale of the added noise
                       batch: int = 256,                # maximum batch size
                       class_labels: str | int = "random",  # 'random' (one per seed, EDM's default) or a class
                       shard_size: int = 1000,          # seeds per resumable shard
                       grid: str | os.PathLike | None = None,  # PNG grid of the first 64 images
                       model_name: str | None = None,   # model name in the meta (default: the checkpoint's)
                       device: str | torch.device | None = "auto",  # cuda, cuda:N, cpu or auto
                       ) -> dict:
    """The checked settings of one sample set, for `generate_set` and guided generation (aot.dg):
    UserErrors for anything EDM's sampler or the output cannot take, before anything is loaded."""
    check_sampler_settings(solver=solver, num_steps=num_steps, rho=rho, sigma_min=sigma_min, sigma_max=sigma_max,
                           S_churn=S_churn, S_min=S_min, S_max=S_max, S_noise=S_noise)
    check_output_settings(out=out, grid=grid, batch=batch, shard_size=shard_size, model_name=model_name)
    return dict(seeds=check_seeds(parse_int_list(seeds, "--seeds")), out=out, solver=solver, num_steps=num_steps,
                rho=rho, sigma_min=sigma_min, sigma_max=sigma_max, S_churn=S_churn, S_min=S_min, S_max=S_max,
                S_noise=S_noise, batch=batch, class_labels=parse_class_labels(class_labels), shard_size=shard_size,
                grid=grid, model_name=model_name, device=device)


def request_sampler_meta(req: dict, guidance: dict | None = None) -> dict:
    """The `sampler` entry of a sample set's meta for a `generation_request`."""
    return sampler_meta(req["solver"], req["num_steps"], req["rho"], req["sigma_min"], req["sigma_max"],
                        req["S_churn"], req["S_min"], req["S_max"], req["S_noise"], req["class_labels"],
                        guidance=guidance)


def generate_set(*, network: str | os.PathLike,
                 fast: bool = False,              # bf16 autocast + channels_last (not bit-identical to fp32)
                 compile: bool = False,           # with fast: torch.compile the network
                 **settings: Any) -> dict | None:
    """Generate the sample set `settings['out']` for `settings['seeds']` from the network file
    `network` (ours, or an EDM pickle); settings as `generation_request`. Returns its meta (None on
    ranks > 0)."""
    req = generation_request(**settings)
    if compile and not fast:
        raise UserError("--compile goes with --fast")
    resolve_device(req["device"])
    out, seeds, class_labels = req["out"], req["seeds"], req["class_labels"]

    from .checkpoints import load_any_network

    net, ckpt_meta = load_any_network(network, device="cpu")
    check_class_labels(net, class_labels, what=f"network {network}")
    with Preemption(raise_on_signal=True):
        try:
            device = resolve_device(_init_distributed(req["device"]))
            net = net.to(device)
            if fast:
                from .sampling import FastDenoiser

                net = FastDenoiser(net, compile=compile)
            sampler_kwargs = {k: req[k] for k in SAMPLER_SETTINGS}
            meta = {
                "model": model_meta(network, ckpt_meta, net, name=req["model_name"]),
                "sampler": request_sampler_meta(req),
                "batch": req["batch"], "shard_size": req["shard_size"], "device": str(device),
                "precision": "bf16-autocast" + ("+compile" if compile else "") if fast else "fp32",
            }
            print(f"generating {len(seeds)} images with {meta['sampler']['key']} (NFE {meta['sampler']['nfe']}) "
                  f"from {network} on {device}", flush=True)
            return run_generation(net, out, seeds, sampler_fn=get_sampler(req["solver"]), sampler_kwargs=sampler_kwargs,
                                  batch=req["batch"], device=device, class_labels=class_labels,
                                  shard_size=req["shard_size"], meta=meta, grid=req["grid"],
                                  fingerprint_extra={"precision": meta["precision"]})
        finally:
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
