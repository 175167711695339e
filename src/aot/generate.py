"""Seed-deterministic, sharded, resumable image generation to an `.npz` sample set.

    python -m aot.generate --network CKPT --seeds 0-49999 --out X.npz [--steps 18 --rho 7
        --solver heun|euler --S-churn 0 --S-min 0 --S-max inf --S-noise 1 --sigma-min 0.002
        --sigma-max 80 --batch 256 --class-labels random|INT --shard-size 1000 --grid grid.png
        --device cuda|cpu|auto --threads N --model-name NAME]

As in EDM's `generate.py`, every seed has its own random generator: the latents, the class label
(drawn after the latents) and any stochastic-sampler noise of seed s come from seed s alone, so the
image for seed s does not depend on the batch size, the shard size or the number of processes.

Output (`X.npz`): `images` uint8 [N, H, W, C], `labels` int64 [N] (-1 when unconditional), `seeds`
int64 [N] and `meta` (a JSON string: model, sampler, seeds, num_images, time_s, env).

Completed shards of `shard_size` seeds are written atomically to `X.npz.shards/`; a killed run,
rerun with the same settings, keeps them and generates only what is missing. Shards made with other
settings (network weights, sampler, class labels) are discarded. `X.npz` appears only when every
seed is in; the shard folder is removed afterwards. Under `torchrun`, ranks share the shards.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .sampling import SOLVERS, StackedRandomGenerator, get_sampler, nfe, sampler_key
from .cli.options import ArgParser, cli_main, number_arg
from .errors import EXIT_PREEMPTED, UserError
from .files import atomic_path
from .keys import parse_int_list
from .runtime import Progress, environment_info

SHARD_RE = re.compile(r"^shard-(\d{6})\.npz$")
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
            raise UserError(f"--class-labels {class_labels} is out of range: the {what} has {label_dim} classes (0..{label_dim - 1})")
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
# Fingerprint of everything that determines the images


def _tensor_digest(h: "hashlib._Hash", module: torch.nn.Module) -> None:
    for name, value in sorted(module.state_dict().items()):
        h.update(name.encode())
        t = value.detach().to("cpu").contiguous().reshape(-1)
        h.update(str(t.dtype).encode() + str(list(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def _plain(value: Any, h: "hashlib._Hash") -> Any:
    if isinstance(value, torch.nn.Module):
        _tensor_digest(h, value)
        return f"<module {type(value).__name__}>"
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v, h) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_plain(v, h) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if callable(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', repr(value))}"
    return repr(value)


def generation_fingerprint(net: torch.nn.Module, sampler_fn: Callable, sampler_kwargs: dict,
                           class_labels: str | int, extra: Any = None) -> str:
    """sha256 over the network weights, the sampler function and settings, and the class labels."""
    h = hashlib.sha256()
    _tensor_digest(h, net)
    desc = {
        "net": type(net).__name__, "img": [int(net.img_channels), int(net.img_resolution)],
        "label_dim": int(getattr(net, "label_dim", 0) or 0),
        "sampler_fn": _plain(sampler_fn, h), "sampler_kwargs": _plain(sampler_kwargs, h),
        "class_labels": class_labels, "extra": _plain(extra, h),
    }
    h.update(json.dumps(desc, sort_keys=True).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Sharded, resumable driver


def shards_dir(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".shards")


def _dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _read_shard(path: Path) -> dict | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in ("images", "labels", "seeds", "fingerprint", "time_s")}
    except Exception:  # a damaged shard is simply redone
        return None


def _scan_shards(sdir: Path, fingerprint: str, chunks: list[list[int]], log: Callable[[str], None]) -> set[int]:
    """Indices of valid finished shards; stale, damaged or foreign files are removed."""
    done: set[int] = set()
    if not sdir.is_dir():
        return done
    stale = 0
    for p in sorted(sdir.iterdir()):
        m = SHARD_RE.match(p.name)
        if p.name.startswith(".") and ".tmp" in p.name:
            with contextlib.suppress(OSError):
                p.unlink()  # left by a killed writer
            continue
        if not m:
            continue
        k = int(m.group(1))
        rec = _read_shard(p)
        ok = (rec is not None and k < len(chunks) and str(rec["fingerprint"]) == fingerprint
              and rec["seeds"].tolist() == chunks[k])
        if ok:
            done.add(k)
        else:
            stale += 1
            with contextlib.suppress(OSError):
                p.unlink()
    if stale:
        log(f"discarded {stale} shard(s) in {sdir} made with other settings or damaged")
    return done


def run_generation(net: torch.nn.Module, out: str | os.PathLike, seeds: Sequence[int], *,
                   sampler_fn: Callable | None = None, sampler_kwargs: dict | None = None,
                   batch: int = 256, device: torch.device | str | None = None,
                   class_labels: str | int = "random", shard_size: int = 1000, meta: dict | None = None,
                   fingerprint_extra: Any = None, grid: str | os.PathLike | None = None,
                   after_shard: Callable[[int], None] | None = None,
                   log: Callable[[str], None] | None = None, progress_interval: float = 10.0) -> dict | None:
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
        done = _scan_shards(sdir, fingerprint, chunks, log)
        try:
            sdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create shard folder {sdir}: {exc.strerror}") from None
        if done:
            log(f"resuming: {len(done)} of {len(chunks)} shards already in {sdir}")
    _barrier()
    if rank != 0:
        done = {k for k in range(len(chunks)) if (sdir / f"shard-{k:06d}.npz").is_file()}
    pending = [k for k in range(len(chunks)) if k not in done]
    mine = pending[rank::world]

    total = sum(len(c) for c in chunks)
    already = sum(len(chunks[k]) for k in done)
    prog = Progress(f"generating {out.name}" + (f" [rank {rank}]" if world > 1 else ""),
                    total if world == 1 else already + sum(len(chunks[k]) for k in mine),
                    interval=progress_interval)
    prog.update(already, force=True)
    count = already
    for k in mine:
        t0 = time.monotonic()
        base = count
        images, labels = generate_images(net, chunks[k], sampler_fn, sampler_kwargs, batch, device,
                                         class_labels, progress=lambda d: prog.update(base + d))
        elapsed = time.monotonic() - t0
        with atomic_path(sdir / f"shard-{k:06d}.npz") as tmp:
            np.savez(tmp, images=images, labels=labels, seeds=np.asarray(chunks[k], dtype=np.int64),
                     fingerprint=np.array(fingerprint), time_s=np.array(elapsed))
        count += len(chunks[k])
        if after_shard is not None:
            after_shard(k)
    _barrier()
    if rank != 0:
        return None

    # Merge (rank 0): every shard must be present and valid.
    parts = []
    for k, chunk in enumerate(chunks):
        rec = _read_shard(sdir / f"shard-{k:06d}.npz")
        if rec is None or str(rec["fingerprint"]) != fingerprint or rec["seeds"].tolist() != chunk:
            raise RuntimeError(f"shard {k} of {out} is missing or damaged after generation")
        parts.append(rec)
    images = np.concatenate([p["images"] for p in parts])
    labels = np.concatenate([p["labels"] for p in parts])
    seeds_arr = np.concatenate([p["seeds"] for p in parts])
    time_s = float(sum(float(p["time_s"]) for p in parts))
    final_meta = dict(meta or {})
    final_meta.update({"seeds": [int(seeds[0]), int(seeds[-1])], "num_images": int(len(seeds)),
                       "time_s": time_s, "env": environment_info()})
    if grid is not None:
        save_grid(grid, images)
    with atomic_path(out) as tmp:
        np.savez(tmp, images=images, labels=labels, seeds=seeds_arr,
                 meta=np.array(json.dumps(final_meta, default=str)))
    shutil.rmtree(sdir, ignore_errors=True)
    log(f"wrote {len(seeds)} images to {out} ({time_s:.1f} s of sampling)")
    return final_meta


def save_grid(path: str | os.PathLike, images: np.ndarray, max_images: int = 64) -> None:
    """A PNG grid (ceil(sqrt(n)) columns) of the first `max_images` uint8 NHWC images."""
    import PIL.Image

    imgs = images[:max_images]
    n, h, w, c = imgs.shape
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    canvas = np.zeros([rows * h, cols * w, c], dtype=np.uint8)
    for i, img in enumerate(imgs):
        r, q = divmod(i, cols)
        canvas[r * h:(r + 1) * h, q * w:(q + 1) * w] = img
    pil = PIL.Image.fromarray(canvas[:, :, 0], "L") if c == 1 else PIL.Image.fromarray(canvas, "RGB")
    with atomic_path(path) as tmp:
        pil.save(tmp, format="png")


def load_samples(path: str | os.PathLike) -> dict:
    """Read a sample set npz: dict(images uint8 NHWC, labels, seeds (None if absent), meta=dict).

    The one reader of sample sets (FID, reports and DG use it); every problem is a UserError
    naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sample set {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "images" not in z.files:
                raise UserError(f"sample set {path} has no 'images' array (keys: {', '.join(z.files)})")
            rec = {k: (z[k] if k in z.files else None) for k in ("images", "labels", "seeds")}
            meta_raw = z["meta"] if "meta" in z.files else None
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"sample set {path} cannot be read ({type(exc).__name__}: {exc})") from None
    images = rec["images"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise UserError(f"sample set {path}: 'images' must be uint8 [N, H, W, C] with C in (1, 3), "
                        f"got {images.dtype} {tuple(images.shape)}")
    meta: dict = {}
    if meta_raw is not None:
        try:
            meta = json.loads(str(meta_raw.item() if meta_raw.ndim == 0 else meta_raw[0]))
        except (json.JSONDecodeError, ValueError, IndexError) as exc:
            raise UserError(f"sample set {path}: 'meta' is not a JSON string: {exc}") from None
    rec["meta"] = meta
    return rec


# --------------------------------------------------------------------------------------------
# Model and sampler description for `meta`


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
# Command line


_Parser = ArgParser


def _float(name: str):
    return number_arg(name, allow_inf=True)


def _int(name: str):
    return number_arg(name, int)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m aot.generate", description="Generate a seed-deterministic sample set (npz).")
    p.add_argument("--network", required=True, help="network checkpoint (.pt of aot, or an EDM .pkl)")
    p.add_argument("--seeds", required=True, help="seeds, e.g. 0-49999 or 0,5,10-19")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--steps", "--num-steps", dest="num_steps", type=_int("--steps"), default=18)
    p.add_argument("--solver", default="heun", help="heun (EDM, NFE 2n-1) or euler (NFE n)")
    p.add_argument("--rho", type=_float("--rho"), default=7.0)
    p.add_argument("--sigma-min", type=_float("--sigma-min"), default=0.002)
    p.add_argument("--sigma-max", type=_float("--sigma-max"), default=80.0)
    p.add_argument("--S-churn", dest="S_churn", type=_float("--S-churn"), default=0.0)
    p.add_argument("--S-min", dest="S_min", type=_float("--S-min"), default=0.0)
    p.add_argument("--S-max", dest="S_max", type=_float("--S-max"), default=float("inf"))
    p.add_argument("--S-noise", dest="S_noise", type=_float("--S-noise"), default=1.0)
    p.add_argument("--batch", type=_int("--batch"), default=256, help="maximum batch size")
    p.add_argument("--class-labels", default="random", help="'random' (per seed) or a fixed class index")
    p.add_argument("--shard-size", type=_int("--shard-size"), default=1000)
    p.add_argument("--grid", default=None, help="optional PNG grid of the first 64 images")
    p.add_argument("--device", default=None, help="cuda, cuda:N, cpu or auto (default: cuda if available)")
    p.add_argument("--threads", type=_int("--threads"), default=None, help="CPU threads for torch (default: torch's)")
    p.add_argument("--model-name", default=None, help="model name recorded in meta (default: the checkpoint's)")
    p.add_argument("--fast", action="store_true",
                   help="bf16 autocast + channels_last (not bit-identical to EDM's fp32 sampling)")
    p.add_argument("--compile", action="store_true", help="with --fast: torch.compile the network")
    return p


def validate_sampler_args(args: argparse.Namespace) -> None:
    if args.solver not in SOLVERS:
        raise UserError(f"--solver: unknown solver {args.solver!r} (choose from {', '.join(SOLVERS)})")
    if args.num_steps < 2:
        raise UserError(f"--steps must be at least 2, got {args.num_steps}")
    if not args.rho > 0:
        raise UserError(f"--rho must be positive, got {args.rho}")
    if not args.sigma_min > 0:
        raise UserError(f"--sigma-min must be positive, got {args.sigma_min}")
    if not args.sigma_max > args.sigma_min:
        raise UserError(f"--sigma-max ({args.sigma_max}) must be larger than --sigma-min ({args.sigma_min})")
    if args.S_churn < 0 or args.S_noise < 0 or args.S_min < 0:
        raise UserError("--S-churn, --S-noise and --S-min must not be negative")
    if args.S_max < args.S_min:
        raise UserError(f"--S-max ({args.S_max}) must not be below --S-min ({args.S_min})")


def validate_output_args(args: argparse.Namespace) -> None:
    if Path(args.out).suffix != ".npz":
        raise UserError(f"--out {args.out} must end in .npz")
    if args.grid is not None and Path(args.grid).suffix.lower() != ".png":
        raise UserError(f"--grid {args.grid} must end in .png")
    if args.batch <= 0:
        raise UserError(f"--batch must be positive, got {args.batch}")
    if args.shard_size <= 0:
        raise UserError(f"--shard-size must be positive, got {args.shard_size}")
    if args.threads is not None and args.threads <= 0:
        raise UserError(f"--threads must be positive, got {args.threads}")
    if args.model_name is not None and not args.model_name.strip():
        raise UserError("--model-name must not be empty")
    parent = Path(args.out).resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise UserError(f"output folder for {args.out} is not writable")


def _init_distributed(device_arg: str | None) -> str | None:
    """Under torchrun (WORLD_SIZE > 1): join the process group, pick this rank's GPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device_arg
    use_cuda = torch.cuda.is_available() and (device_arg is None or str(device_arg).startswith("cuda"))
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device_arg = f"cuda:{local}"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    return device_arg


def _on_signal(signum, frame):  # Slurm time limit / preemption: finished shards are kept
    raise SystemExit(EXIT_PREEMPTED)


@cli_main
def main(argv: list[str] | None = None) -> dict | None:
    args = build_parser().parse_args(argv)
    validate_sampler_args(args)
    validate_output_args(args)
    seeds = check_seeds(parse_int_list(args.seeds, "--seeds"))
    class_labels = parse_class_labels(args.class_labels)
    device = resolve_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    from . import checkpoints

    # our .pt files, or official EDM pickles where aot.checkpoints can import them
    loader = getattr(checkpoints, "load_any_network", None) or checkpoints.load_network
    net, ckpt_meta = loader(args.network, device="cpu")
    check_class_labels(net, class_labels, what=f"network {args.network}")

    for sig in (signal.SIGTERM, getattr(signal, "SIGUSR1", None)):
        if sig is not None:
            with contextlib.suppress(ValueError):
                signal.signal(sig, _on_signal)
    dev_name = _init_distributed(args.device)
    device = resolve_device(dev_name)
    net = net.to(device)
    if args.compile and not args.fast:
        raise UserError("--compile goes with --fast")
    if args.fast:
        from .sampling import FastDenoiser

        net = FastDenoiser(net, compile=args.compile)

    sampler_kwargs = dict(num_steps=args.num_steps, sigma_min=args.sigma_min, sigma_max=args.sigma_max,
                          rho=args.rho, S_churn=args.S_churn, S_min=args.S_min, S_max=args.S_max,
                          S_noise=args.S_noise)
    meta = {
        "model": model_meta(args.network, ckpt_meta, net, name=args.model_name),
        "sampler": sampler_meta(args.solver, args.num_steps, args.rho, args.sigma_min, args.sigma_max,
                                args.S_churn, args.S_min, args.S_max, args.S_noise, class_labels),
        "batch": args.batch, "shard_size": args.shard_size, "device": str(device),
        "precision": "bf16-autocast" + ("+compile" if args.compile else "") if args.fast else "fp32",
    }
    print(f"generating {len(seeds)} images with {meta['sampler']['key']} (NFE {meta['sampler']['nfe']}) "
          f"from {args.network} on {device}", flush=True)
    try:
        return run_generation(net, args.out, seeds, sampler_fn=get_sampler(args.solver),
                              sampler_kwargs=sampler_kwargs, batch=args.batch, device=device,
                              class_labels=class_labels, shard_size=args.shard_size, meta=meta, grid=args.grid,
                              fingerprint_extra={"precision": meta["precision"]})
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
