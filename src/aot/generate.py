"""Seed-deterministic, sharded, resumable image generation (EDM's generate.py) into a sample set.

As in EDM's `generate.py`, every seed has its own random generator: the latents, the class label
(drawn after the latents) and any stochastic-sampler noise of seed s come from seed s alone, so the
image for seed s does not depend on the batch size, the shard size or the number of processes.

`generate_set(network=..., seeds=..., out=...)` makes a sample set (format: `aot.samples`) from a
network file; `run_generation` does the same for a network in memory and any sampler (DG uses it).
`out` may name several files (the FID repeats rep0.npz, rep1.npz, ...): the seeds are then split
into that many equal, consecutive parts, the network is loaded once, and each file is exactly the
set a separate run with its part of the seeds would write (`run_generation_sets`).
Completed shards of `shard_size` seeds are kept; a killed run, rerun with the same settings,
generates only what is missing, and a finished set made with the same settings (its meta, without
`time_s` and `env`, equal to the rerun's) is kept as it is. Under `torchrun`, ranks share the
shards and rank 0 writes the sets.
SIGTERM/SIGUSR1 (Slurm's time limit, preemption) end `generate_set` at once with exit code 75
(`aot.errors.EXIT_PREEMPTED`); the handlers are those of the caller again when it returns. Inside a
Slurm job with `slurm_margin` > 0 it also stops, with exit code 75, before the first shard it would
start less than `slurm_margin` seconds before the job's end time (`aot.runtime.Preemption`).
"""

from __future__ import annotations

import json
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
from .runtime import Preemption, environment_info, progress, resolve_device
from .samples import (
    generation_fingerprint,
    read_sample_set,
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


def split_seeds(seeds: Sequence[int], parts: int) -> list[list[int]]:
    """`seeds` in `parts` equal, consecutive parts (one per --out file); a UserError if they do not divide."""
    seeds = list(seeds)
    if parts < 1:
        raise UserError("--out names no file")
    if len(seeds) % parts:
        raise UserError(f"--seeds names {len(seeds)} seeds, which do not split into {parts} equal parts "
                        f"for the {parts} --out files")
    n = len(seeds) // parts
    return [seeds[i * n:(i + 1) * n] for i in range(parts)]


def output_list(out: str | os.PathLike | Sequence[str | os.PathLike], option: str = "--out") -> list[Path]:
    """One output path or several as a list of Paths; a UserError if none is given or one repeats."""
    outs = [Path(out)] if isinstance(out, (str, os.PathLike)) else [Path(o) for o in out]
    if not outs:
        raise UserError(f"{option} names no file")
    seen: dict[Path, Path] = {}
    for o in outs:
        key = Path(os.path.abspath(o))
        if key in seen:
            raise UserError(f"{option} names {o} more than once")
        seen[key] = o
    return outs


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


def rank0_print(msg: str) -> None:
    """print, on the first process only (RANK 0 under torchrun)"""
    if os.environ.get("RANK", "0") == "0":
        print(msg, flush=True)


def _dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _broadcast(value: Any) -> Any:
    """Rank 0's `value` on every rank (itself without torch.distributed)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]
    return value


# Meta entries that record when and how long, not what: a finished set is kept when the rest agrees.
TIMING_META = ("time_s", "env")


def _finished_set(out: Path, seeds: Sequence[int], meta: dict) -> dict | None:
    """The sample set already at `out` if it is the one these settings make (its meta without
    TIMING_META equal to `meta`, its seeds `seeds`), else None."""
    if not out.is_file():
        return None
    try:
        rec = read_sample_set(out)
    except UserError:
        return None
    stored = {k: v for k, v in rec["meta"].items() if k not in TIMING_META}
    want = json.loads(json.dumps(meta, default=str))
    if stored != want or rec["seeds"] is None or rec["seeds"].tolist() != list(seeds):
        return None
    if rec["labels"] is None or len(rec["images"]) != len(seeds) or len(rec["labels"]) != len(seeds):
        return None
    return rec


def run_generation(net: torch.nn.Module, out: str | os.PathLike, seeds: Sequence[int], *,
                   after_shard: Callable[[int], None] | None = None, **kwargs: Any) -> dict | None:
    """Generate `seeds` into `out` (npz) through resumable shards; returns the final meta dict.

    `meta` (model, sampler, ...) is stored in the npz with `seeds`, `num_images`, `fingerprint`
    (aot.samples.generation_fingerprint), `time_s` (summed over all runs that contributed shards) and
    `env` added. `fingerprint_extra` names anything else that determines the images (e.g. a
    discriminator path); modules inside `sampler_kwargs` are fingerprinted by their weights.
    `after_shard(k)` is called after shard k is on disk (tests use it to simulate a kill). Under
    torch.distributed, ranks split the pending shards and rank 0 writes `out`; other ranks return
    None. Other keywords as `run_generation_sets`.
    """
    hook = None if after_shard is None else (lambda _out, k: after_shard(k))
    return run_generation_sets(net, [(out, seeds)], after_shard=hook, **kwargs)[0]


def run_generation_sets(net: torch.nn.Module, sets: Sequence[tuple[str | os.PathLike, Sequence[int]]], *,
                        sampler_fn: Callable | None = None, sampler_kwargs: dict | None = None,
                        batch: int = 256, device: torch.device | str | None = None,
                        class_labels: str | int = "random", shard_size: int = 1000, meta: dict | None = None,
                        fingerprint_extra: Any = None, grid: str | os.PathLike | None = None,
                        after_shard: Callable[[Path, int], None] | None = None,
                        log: Callable[[str], None] | None = None, keep_shards: bool = False,
                        preemption: Preemption | None = None, before_sets: Callable[[], None] | None = None,
                        after_set: Callable[[Path], None] | None = None) -> list[dict | None]:
    """`run_generation` for several sample sets `sets` = [(out, seeds), ...], one after the other with
    the same network and sampler: each file is the one `run_generation(net, out, seeds)` writes.
    The grid shows the first set. `after_shard(out, k)` follows shard k of set `out`. With
    `keep_shards` each set's shard folder stays after its file is written (a job that measures the
    sets next removes them once the measurement is written). With `preemption` (entered by the
    caller), no shard starts once its Slurm deadline is reached: the job exits 75 with the finished
    shards kept (`Preemption.stop_at_deadline`). On rank 0, `before_sets()` is called once the
    settings are checked, before the first set is looked at (a job that links finished sets back
    from their records, aot.kept), and `after_set(out)` once set `out` is written or kept, before
    the next set starts (a job that measures and records each set as it is finished). Returns the
    sets' metas (None on ranks > 0)."""
    log = log or (lambda s: print(s, flush=True))
    sampler_fn = sampler_fn or get_sampler("heun")
    sampler_kwargs = dict(sampler_kwargs or {})
    sets = [(Path(out), check_seeds(seeds)) for out, seeds in sets]
    output_list([out for out, _ in sets])
    if shard_size <= 0 or batch <= 0:
        raise UserError(f"--shard-size and --batch must be positive (got {shard_size}, {batch})")
    check_class_labels(net, class_labels)
    device = resolve_device(device)
    fingerprint = generation_fingerprint(net, sampler_fn, sampler_kwargs, class_labels, fingerprint_extra)
    if before_sets is not None and _dist_info()[0] == 0:
        before_sets()  # the other ranks wait for rank 0's look at the first set
    return [_generate_one(net, out, seeds, fingerprint, sampler_fn=sampler_fn, sampler_kwargs=sampler_kwargs,
                          batch=batch, device=device, class_labels=class_labels, shard_size=shard_size, meta=meta,
                          grid=grid if i == 0 else None, after_shard=after_shard, log=log,
                          keep_shards=keep_shards, preemption=preemption, after_set=after_set)
            for i, (out, seeds) in enumerate(sets)]


def _generate_one(net: torch.nn.Module, out: Path, seeds: list[int], fingerprint: str, *, sampler_fn: Callable,
                  sampler_kwargs: dict, batch: int, device: torch.device, class_labels: str | int, shard_size: int,
                  meta: dict | None, grid: str | os.PathLike | None,
                  after_shard: Callable[[Path, int], None] | None, log: Callable[[str], None],
                  keep_shards: bool = False, preemption: Preemption | None = None,
                  after_set: Callable[[Path], None] | None = None) -> dict | None:
    """One sample set of `run_generation_sets` (settings checked there)."""
    rank, world = _dist_info()
    set_meta = dict(meta or {})
    set_meta.update({"seeds": [int(seeds[0]), int(seeds[-1])], "num_images": int(len(seeds)),
                     "fingerprint": fingerprint})
    finished = _finished_set(out, seeds, set_meta) if rank == 0 else None
    if _broadcast(finished is not None):
        if rank != 0:
            return None
        if grid is not None:
            save_grid(grid, finished["images"])
        log(f"kept {out}: made earlier with these settings ({len(seeds)} images; delete it to make it again)")
        if after_set is not None:
            after_set(out)
        return finished["meta"]

    chunks = [seeds[i:i + shard_size] for i in range(0, len(seeds), shard_size)]
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
            if preemption is not None:
                preemption.stop_at_deadline(f"the finished shards of {out.name} are kept in {sdir}")
            t0 = time.monotonic()
            images, labels = generate_images(net, chunks[k], sampler_fn, sampler_kwargs, batch, device,
                                             class_labels, progress=_bar_callback(bar))
            write_shard(sdir, k, images, labels, chunks[k], fingerprint, time.monotonic() - t0)
            if after_shard is not None:
                after_shard(out, k)
    _barrier()
    if rank != 0:
        return None

    # Merge (rank 0): every shard must be present and valid.
    images, labels, seeds_arr, time_s = read_shards(out, chunks, fingerprint)
    final_meta = dict(set_meta, time_s=time_s, env=environment_info())
    if grid is not None:
        save_grid(grid, images)
    write_sample_set(out, images, labels, seeds_arr, final_meta, keep_shards=keep_shards)
    log(f"wrote {len(seeds)} images to {out} ({time_s:.1f} s of sampling)")
    if after_set is not None:
        after_set(out)
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


def generation_request(*, seeds: str | Sequence[int], out: str | os.PathLike | Sequence[str | os.PathLike],
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
                       grid: str | os.PathLike | None = None,  # PNG grid of the first 64 images (first set)
                       model_name: str | None = None,   # model name in the meta (default: the checkpoint's)
                       device: str | torch.device | None = "auto",  # cuda, cuda:N, cpu or auto
                       slurm_margin: float = 0.0,       # in a Slurm job: no shard starts this close to its end
                       ) -> dict:
    """The checked settings of one sample set, or of several (`out` a list: the seeds split into
    equal, consecutive parts), for `generate_set` and guided generation (aot.dg): UserErrors for
    anything EDM's sampler or the output cannot take, before anything is loaded. `sets` pairs each
    output file with its seeds."""
    check_sampler_settings(solver=solver, num_steps=num_steps, rho=rho, sigma_min=sigma_min, sigma_max=sigma_max,
                           S_churn=S_churn, S_min=S_min, S_max=S_max, S_noise=S_noise)
    if not slurm_margin >= 0:
        raise UserError(f"--slurm-margin must not be negative, got {slurm_margin}")
    outs = output_list(out)
    for o in outs:
        check_output_settings(out=o, grid=grid, batch=batch, shard_size=shard_size, model_name=model_name)
    all_seeds = check_seeds(parse_int_list(seeds, "--seeds"))
    sets = list(zip(outs, split_seeds(all_seeds, len(outs))))
    return dict(seeds=all_seeds, out=out, sets=sets, solver=solver, num_steps=num_steps,
                rho=rho, sigma_min=sigma_min, sigma_max=sigma_max, S_churn=S_churn, S_min=S_min, S_max=S_max,
                S_noise=S_noise, batch=batch, class_labels=parse_class_labels(class_labels), shard_size=shard_size,
                grid=grid, model_name=model_name, device=device, slurm_margin=slurm_margin)


def request_result(req: dict, metas: list[dict | None]) -> dict | list[dict | None] | None:
    """What `generate_set` returns: the meta of the one set when `out` was one path, else the list."""
    return metas[0] if isinstance(req["out"], (str, os.PathLike)) else metas


def sets_note(req: dict) -> str:
    """' in K sets of M' for a request of several sets, else ''."""
    sets = req["sets"]
    return f" in {len(sets)} sets of {len(sets[0][1])}" if len(sets) > 1 else ""


def request_sampler_meta(req: dict, guidance: dict | None = None) -> dict:
    """The `sampler` entry of a sample set's meta for a `generation_request`."""
    return sampler_meta(req["solver"], req["num_steps"], req["rho"], req["sigma_min"], req["sigma_max"],
                        req["S_churn"], req["S_min"], req["S_max"], req["S_noise"], req["class_labels"],
                        guidance=guidance)


def generate_set(*, network: str | os.PathLike,
                 fast: bool = False,              # bf16 autocast + channels_last (not bit-identical to fp32)
                 compile: bool = False,           # with fast: torch.compile the network
                 keep_shards: bool = False,       # keep shard folders (the sets are measured next)
                 before_sets: Callable[[], None] | None = None,  # rank 0, before the first set
                 after_set: Callable[[Path], None] | None = None,  # rank 0, once each set is finished
                 **settings: Any) -> dict | None:
    """Generate the sample set `settings['out']` for `settings['seeds']` from the network file
    `network` (ours, or an EDM pickle); settings as `generation_request`. Returns its meta (None on
    ranks > 0). With `out` a list of files, the seeds are split into equal, consecutive parts, one
    set per file, all from the one loaded network; returns the list of metas."""
    req = generation_request(**settings)
    if compile and not fast:
        raise UserError("--compile goes with --fast")
    resolve_device(req["device"])
    seeds, class_labels = req["seeds"], req["class_labels"]

    from .checkpoints import load_any_network

    net, ckpt_meta = load_any_network(network, device="cpu")
    check_class_labels(net, class_labels, what=f"network {network}")
    with Preemption(margin=req["slurm_margin"], raise_on_signal=True, log=rank0_print) as preemption:
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
            print(f"generating {len(seeds)} images{sets_note(req)} with {meta['sampler']['key']} "
                  f"(NFE {meta['sampler']['nfe']}) from {network} on {device}", flush=True)
            metas = run_generation_sets(net, req["sets"], sampler_fn=get_sampler(req["solver"]),
                                        sampler_kwargs=sampler_kwargs, batch=req["batch"], device=device,
                                        class_labels=class_labels, shard_size=req["shard_size"], meta=meta,
                                        grid=req["grid"], fingerprint_extra={"precision": meta["precision"]},
                                        keep_shards=keep_shards, preemption=preemption,
                                        before_sets=before_sets, after_set=after_set)
            return request_result(req, metas)
        finally:
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
