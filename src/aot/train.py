"""Train EDM and EDM-AOT models: `python -m aot.train` (one process) or under `torchrun`.

EDM's recipe (NVlabs/edm `training/training_loop.py`): EDM loss, Adam with a linear learning-rate
ramp-up, EMA with a ramped half-life, gradient accumulation up to the total batch, non-finite
gradients zeroed, augmentation with 9-dimensional augment labels. AOT (the paper's Algorithm 1/2)
changes only where the noise comes from: every rank draws pools of N augmented images and N noise
vectors, pairs them by an optimal assignment (class-wise for conditional models) and serves the
pairs in minibatches of `--batch-gpu`, each pair once. `--aot false` serves independent noise through
the same code path, which is plain EDM.

Output folder:
    training_options.json       every option, the dataset and the network's constructor arguments
    stats.jsonl                 one JSON line per tick (kimg, img/s, sec/kimg, loss, pairing costs, ETA)
    network-snapshot-XXXXXX.pt  EMA network every --snap ticks (kimg in the name)
    training-state.pt           full state (network, EMA, optimizer, RNGs, pool position) every --dump ticks
    network-final.pt            EMA network at the end; written last, so its presence means "done"

Signals: SIGTERM or SIGUSR1 (Slurm's time limit with `--signal`, preemption) make the run save
`training-state.pt` at the next step boundary and exit with code 75 (`aot.errors.EXIT_PREEMPTED`);
rerunning the same command resumes from it (`--resume auto`, the default).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoints import save_network
from .cli.options import cli_main, parse_bool
from .errors import EXIT_PREEMPTED, UserError
from .files import atomic_path, write_json_atomic
from .runtime import environment_info, format_seconds

ARCHS = {
    # EDM's train.py presets for CIFAR-10 (--arch ddpmpp / ncsnpp / adm).
    "ddpmpp": dict(model_type="SongUNet", embedding_type="positional", encoder_type="standard",
                   decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1],
                   model_channels=128, channel_mult=[2, 2, 2]),
    "ncsnpp": dict(model_type="SongUNet", embedding_type="fourier", encoder_type="residual",
                   decoder_type="standard", channel_mult_noise=2, resample_filter=[1, 3, 3, 1],
                   model_channels=128, channel_mult=[2, 2, 2]),
    "adm": dict(model_type="DhariwalUNet", model_channels=192, channel_mult=[1, 2, 3, 4]),
}
PRECONDS = {"edm": "EDMPrecond", "vp": "VPPrecond", "ve": "VEPrecond"}


# ------------------------------------------------------------------------------------------------
# Options


def _int_list(s: str) -> list[int]:
    try:
        return [int(x) for x in str(s).split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of integers, got {s!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m aot.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--outdir", required=True, help="output folder (created; resumed if it holds a state)")
    p.add_argument("--data", required=True, help="dataset in EDM's format (zip or folder)")
    p.add_argument("--model-name", default=None, help="name recorded in the network files (default: outdir name)")
    p.add_argument("--cond", type=parse_bool, default=False, help="class-conditional model")
    p.add_argument("--arch", choices=sorted(ARCHS), default="ncsnpp", help="network architecture")
    p.add_argument("--precond", choices=sorted(PRECONDS), default="edm", help="preconditioning")
    # AOT
    p.add_argument("--aot", type=parse_bool, default=True, help="pair noise with images by optimal assignment")
    p.add_argument("--pool-size", type=int, default=512, help="N: image/noise pairs per assignment pool")
    p.add_argument("--cost", choices=["l2", "sqeuclidean"], default="l2", help="assignment cost")
    p.add_argument("--solver", default="auto", help="assignment solver (auto, lapjv, scipy)")
    # Hyper-parameters (EDM's names and defaults)
    p.add_argument("--duration", type=float, default=200.0, help="training duration in Mimg")
    p.add_argument("--batch", type=int, default=512, help="total batch size")
    p.add_argument("--batch-gpu", type=int, default=None, help="batch per GPU and step (B); default: batch / GPUs")
    p.add_argument("--cbase", type=int, default=None, help="channel multiplier (model_channels)")
    p.add_argument("--cres", type=_int_list, default=None, help="channels per resolution (channel_mult)")
    p.add_argument("--num-blocks", type=int, default=None, help="residual blocks per resolution")
    p.add_argument("--attn", type=_int_list, default=None, help="attention resolutions")
    p.add_argument("--lr", type=float, default=10e-4, help="learning rate")
    p.add_argument("--lr-rampup", type=float, default=10.0, help="learning-rate ramp-up in Mimg")
    p.add_argument("--ema", type=float, default=0.5, help="EMA half-life in Mimg")
    p.add_argument("--ema-rampup", type=float, default=0.05, help="EMA ramp-up ratio (0 = none)")
    p.add_argument("--dropout", type=float, default=0.13, help="dropout probability")
    p.add_argument("--augment", type=float, default=0.12, help="augmentation probability (0 = off)")
    p.add_argument("--xflip", type=parse_bool, default=False, help="dataset x-flips")
    p.add_argument("--P-mean", dest="P_mean", type=float, default=-1.2, help="EDM loss: mean of log sigma")
    p.add_argument("--P-std", dest="P_std", type=float, default=1.2, help="EDM loss: std of log sigma")
    p.add_argument("--sigma-data", type=float, default=0.5, help="EDM loss and preconditioning: sigma_data")
    # Schedule of outputs
    p.add_argument("--tick", type=float, default=50.0, help="kimg between progress lines")
    p.add_argument("--snap", type=int, default=50, help="ticks between EMA network snapshots")
    p.add_argument("--dump", type=int, default=10, help="ticks between training-state dumps")
    p.add_argument("--slurm-margin", type=float, default=300.0,
                   help="inside a Slurm job: save the state and exit 75 this many seconds before its time limit")
    p.add_argument("--resume", choices=["auto", "never", "require"], default="auto",
                   help="auto: continue from outdir/training-state.pt if present")
    # Runtime
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--deterministic", type=parse_bool, default=False,
                   help="deterministic algorithms (bit-identical resume on CPU)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    # Speed settings (off = EDM's faithful configuration)
    p.add_argument("--bf16", type=parse_bool, default=False, help="bf16 autocast for the network")
    p.add_argument("--tf32", type=parse_bool, default=False, help="allow TF32 matmuls and convolutions")
    p.add_argument("--channels-last", type=parse_bool, default=False, help="channels_last memory format")
    p.add_argument("--compile", type=parse_bool, default=False, help="torch.compile the network")
    return p


def validate(opts: argparse.Namespace, world_size: int) -> None:
    """Impossible options fail here, before anything is built or written."""
    if opts.duration <= 0:
        raise UserError(f"--duration must be positive, got {opts.duration}")
    if opts.batch <= 0:
        raise UserError(f"--batch must be positive, got {opts.batch}")
    if opts.batch % world_size != 0:
        raise UserError(f"--batch {opts.batch} is not divisible by the number of GPUs/processes {world_size}")
    per_rank = opts.batch // world_size
    if opts.batch_gpu is None:
        opts.batch_gpu = per_rank
    if opts.batch_gpu <= 0:
        raise UserError(f"--batch-gpu must be positive, got {opts.batch_gpu}")
    if opts.batch_gpu > per_rank:
        opts.batch_gpu = per_rank
    if per_rank % opts.batch_gpu != 0:
        raise UserError(f"--batch {opts.batch} over {world_size} process(es) is {per_rank} per process, "
                        f"not a multiple of --batch-gpu {opts.batch_gpu}")
    if opts.pool_size < opts.batch_gpu:
        raise UserError(f"--pool-size N={opts.pool_size} is smaller than the per-GPU batch B={opts.batch_gpu}")
    if opts.pool_size % opts.batch_gpu != 0:
        raise UserError(f"--pool-size N={opts.pool_size} is not a multiple of the per-GPU batch B={opts.batch_gpu}")
    for name in ("lr", "ema", "tick"):
        if getattr(opts, name) <= 0:
            raise UserError(f"--{name} must be positive, got {getattr(opts, name)}")
    if not 0 <= opts.augment <= 1:
        raise UserError(f"--augment must be a probability in [0, 1], got {opts.augment}")
    if not 0 <= opts.dropout < 1:
        raise UserError(f"--dropout must be in [0, 1), got {opts.dropout}")
    if opts.snap <= 0 or opts.dump <= 0:
        raise UserError("--snap and --dump must be positive numbers of ticks")


def network_kwargs(opts: argparse.Namespace, resolution: int, channels: int, label_dim: int) -> dict:
    kwargs: dict[str, Any] = dict(ARCHS[opts.arch])
    if opts.cbase is not None:
        kwargs["model_channels"] = opts.cbase
    if opts.cres is not None:
        kwargs["channel_mult"] = list(opts.cres)
    if opts.num_blocks is not None:
        kwargs["num_blocks"] = opts.num_blocks
    if opts.attn is not None:
        kwargs["attn_resolutions"] = list(opts.attn)
    levels = len(kwargs["channel_mult"])
    if resolution % (2 ** (levels - 1)) != 0:
        raise UserError(f"dataset resolution {resolution} cannot be halved {levels - 1} times "
                        f"(channel_mult has {levels} levels)")
    kwargs["dropout"] = opts.dropout
    if opts.augment > 0:
        kwargs["augment_dim"] = 9
    if opts.precond == "edm":
        kwargs["sigma_data"] = opts.sigma_data
    kwargs.update(img_resolution=resolution, img_channels=channels, label_dim=label_dim)
    return kwargs


# ------------------------------------------------------------------------------------------------
# Distributed helpers


class Dist:
    def __init__(self, device_arg: str | None) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        want_cuda = torch.cuda.is_available() if device_arg is None else device_arg.startswith("cuda")
        if want_cuda and not torch.cuda.is_available():
            raise UserError("--device cuda was requested but no CUDA device is visible")
        if want_cuda:
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device("cpu")
        self.enabled = self.world_size > 1
        if self.enabled:
            torch.distributed.init_process_group(backend="nccl" if want_cuda else "gloo")

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self.rank == 0:
            print(*args, **kwargs, flush=True)

    def all_reduce_mean(self, value: float) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return float(t.item()) / self.world_size

    def any_flag(self, flag: bool) -> bool:
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.all_reduce(t)
        return bool(t.item() > 0)

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def slurm_job_end_time(job_id: str) -> float | None:
    """The job's scheduled end (Unix time) from `squeue -o %e`, or None when unknown/unlimited."""
    import datetime
    import subprocess

    try:
        out = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%e"], capture_output=True, text=True,
                             timeout=30).stdout.strip()
        return datetime.datetime.fromisoformat(out).timestamp()
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


class StopFlag:
    """Set by SIGTERM/SIGUSR1; the loop saves its state at the next step boundary.

    On clusters that track jobs by cgroup, Slurm's `--signal` reaches only the job's outer process,
    never this one. So, inside a Slurm job, the flag also trips `margin` seconds before the job's
    end time (read once from `squeue`), and the run saves its state while it still can.
    """

    def __init__(self, margin: float = 0.0) -> None:
        self.signum: int | None = None
        self.deadline: float | None = None
        if margin > 0 and os.environ.get("SLURM_JOB_ID"):
            end = slurm_job_end_time(os.environ["SLURM_JOB_ID"])
            if end is not None:
                self.deadline = end - margin

    def stop_requested(self) -> bool:
        return self.signum is not None or (self.deadline is not None and time.time() >= self.deadline)

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handler)

    def _handler(self, signum, frame) -> None:  # noqa: ARG002
        self.signum = signum


# ------------------------------------------------------------------------------------------------
# Data: a per-rank, deterministic, resumable stream of dataset indices (EDM's InfiniteSampler idea:
# a fresh shuffle per epoch; rank r takes every world_size-th index)


class IndexStream:
    def __init__(self, num_items: int, rank: int, world_size: int, seed: int) -> None:
        self.num_items, self.rank, self.world_size, self.seed = num_items, rank, world_size, seed

    def take(self, start: int, count: int) -> np.ndarray:
        """Indices at positions [start, start + count) of this rank's infinite stream."""
        positions = (np.arange(start, start + count, dtype=np.int64) * self.world_size) + self.rank
        epochs = positions // self.num_items
        offsets = positions % self.num_items
        out = np.empty(count, dtype=np.int64)
        for epoch in np.unique(epochs):
            order = np.random.default_rng([self.seed, int(epoch)]).permutation(self.num_items)
            mask = epochs == epoch
            out[mask] = order[offsets[mask]]
        return out


def make_draw_fn(images_u8: torch.Tensor, labels_onehot: torch.Tensor | None, stream: IndexStream,
                 pool_size: int, augment_pipe, device: torch.device):
    """draw_fn(pool_index, generator) -> (images in [-1, 1], onehot labels or None, augment labels or None)."""

    def draw(pool_index: int, generator: torch.Generator):
        # Runs in the pool builder thread: all randomness from `generator` (a CPU generator).
        idx = torch.from_numpy(stream.take(pool_index * pool_size, pool_size))
        x = images_u8[idx].to(torch.float32) / 127.5 - 1
        labels = labels_onehot[idx] if labels_onehot is not None else None
        augment_labels = None
        if augment_pipe is not None:
            x, augment_labels = augment_pipe(x, generator=generator)
        return x, labels, augment_labels

    return draw


# ------------------------------------------------------------------------------------------------
# State


def _rng_state() -> dict:
    state = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch_cpu"])
    if torch.cuda.is_available() and "torch_cuda" in state:
        torch.cuda.set_rng_state_all(state["torch_cuda"])


def load_training_state(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"training state {path} cannot be read (truncated or foreign file): {first}") from None
    if not isinstance(state, dict) or state.get("format") != "aot-training-state/1":
        raise UserError(f"training state {path} is not an aot training state")
    return state


# ------------------------------------------------------------------------------------------------
# The loop


def training_loop(opts: argparse.Namespace, dist: Dist) -> int:
    from .augment import AugmentPipe
    from .data import ImageFolderDataset, load_all
    from .loss import EDMLoss
    from .networks import build_network
    from .pairing import PairPool

    outdir = Path(opts.outdir)
    device = dist.device
    model_name = opts.model_name or outdir.name

    # Dataset, checked against the model before anything is written.
    dataset = ImageFolderDataset(opts.data, use_labels=opts.cond, xflip=opts.xflip)
    if opts.cond and not dataset.has_labels:
        raise UserError(f"--cond true needs class labels, but dataset {opts.data} has no labels (dataset.json)")
    images_np, labels_np = load_all(dataset)
    images_u8 = torch.from_numpy(images_np)
    labels_onehot = None
    if opts.cond:
        labels_onehot = torch.nn.functional.one_hot(torch.from_numpy(labels_np).long(), dataset.label_dim).float()
    net_kwargs = network_kwargs(opts, dataset.resolution, dataset.num_channels, dataset.label_dim if opts.cond else 0)
    class_name = PRECONDS[opts.precond]

    state_path = outdir / "training-state.pt"
    resume_state = None
    if opts.resume != "never" and state_path.exists():
        resume_state = load_training_state(state_path)
        if resume_state["class_name"] != class_name or resume_state["init_kwargs"] != json.loads(json.dumps(net_kwargs)):
            raise UserError(f"training state {state_path} was made for another network or dataset "
                            f"({resume_state['class_name']} {resume_state['init_kwargs'].get('img_resolution')}px "
                            f"{resume_state['init_kwargs'].get('img_channels')}ch); use a new --outdir")
    elif opts.resume == "require":
        raise UserError(f"--resume require, but {state_path} does not exist")

    # Seeds: every rank its own stream (EDM seeds numpy with seed * world + rank).
    rank_seed = opts.seed * dist.world_size + dist.rank
    torch.manual_seed(rank_seed)
    np.random.seed(rank_seed % (1 << 31))
    if opts.deterministic:
        torch.use_deterministic_algorithms(True)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = opts.tf32
    torch.backends.cuda.matmul.allow_tf32 = opts.tf32

    net = build_network(class_name, net_kwargs).train().requires_grad_(True).to(device)
    if opts.channels_last:
        net = net.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    loss_fn = EDMLoss(P_mean=opts.P_mean, P_std=opts.P_std, sigma_data=opts.sigma_data)
    adam_kwargs: dict[str, Any] = dict(lr=opts.lr, betas=(0.9, 0.999), eps=1e-8)
    if device.type == "cuda":
        adam_kwargs["fused"] = True
    optimizer = torch.optim.Adam(net.parameters(), **adam_kwargs)
    augment_pipe = None
    if opts.augment > 0:
        augment_pipe = AugmentPipe(p=opts.augment, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1,
                                   translate_frac=1)
    stream = IndexStream(len(dataset), dist.rank, dist.world_size, seed=opts.seed)
    draw_fn = make_draw_fn(images_u8, labels_onehot, stream, opts.pool_size, augment_pipe, device)
    pool = PairPool(draw_fn, pool_size=opts.pool_size, batch_size=opts.batch_gpu, aot=opts.aot, cost=opts.cost,
                    labels_mode="classwise" if opts.cond else None, seed=opts.seed, rank=dist.rank,
                    device=device, solver=opts.solver)
    sigma_gen = torch.Generator(device=device).manual_seed(rank_seed + 1_000_003)

    cur_nimg = 0
    cur_tick = 0
    if resume_state is not None:
        net.load_state_dict(resume_state["net"])
        ema.load_state_dict(resume_state["ema"])
        optimizer.load_state_dict(resume_state["optimizer"])
        cur_nimg = int(resume_state["cur_nimg"])
        cur_tick = int(resume_state["cur_tick"])
        rank_state = resume_state["ranks"][dist.rank] if dist.world_size > 1 else resume_state["ranks"][0]
        pool.load_state_dict(rank_state["pool"])
        sigma_gen.set_state(rank_state["sigma_gen"])
        _set_rng_state(rank_state["rng"])
        dist.print(f"Resuming from {state_path} at {cur_nimg / 1000:.3f} kimg")

    ddp = net
    if dist.enabled:
        ddp = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
    model_fn = torch.compile(ddp) if opts.compile else ddp

    total_nimg = int(round(opts.duration * 1e6))
    per_rank = opts.batch // dist.world_size
    rounds = per_rank // opts.batch_gpu
    tick_nimg = int(round(opts.tick * 1000))
    options = {k: v for k, v in vars(opts).items()}
    options.update(world_size=dist.world_size, accumulation_rounds=rounds, model_name=model_name,
                   network_class=class_name, network_kwargs=net_kwargs, dataset=dict(
                       path=str(opts.data), name=dataset.name, size=len(dataset), resolution=dataset.resolution,
                       channels=dataset.num_channels, label_dim=dataset.label_dim))
    meta = {"model": model_name, "aot": bool(opts.aot), "cond": bool(opts.cond), "source": "trained",
            "training_options": options}

    if dist.rank == 0:
        outdir.mkdir(parents=True, exist_ok=True)
        if resume_state is None:
            write_json_atomic(outdir / "training_options.json", options)
        num_params = sum(p.numel() for p in net.parameters())
        dist.print(f"Network {class_name} ({opts.arch}), {num_params / 1e6:.2f} M parameters; "
                   f"batch {opts.batch} = {dist.world_size} x {rounds} x {opts.batch_gpu}; "
                   f"AOT {'on' if opts.aot else 'off'} (N={opts.pool_size}, cost {opts.cost}"
                   f"{', class-wise' if opts.cond else ''}); {opts.duration} Mimg on {device}")

    stop = StopFlag(margin=opts.slurm_margin)
    stop.install()
    if stop.deadline is not None:
        dist.print(f"Slurm job ends at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(stop.deadline + opts.slurm_margin))}; "
                   f"the state is saved {opts.slurm_margin:.0f} s before")

    def save_state() -> None:
        ranks = [None] * dist.world_size
        mine = {"pool": pool.state_dict(), "sigma_gen": sigma_gen.get_state(), "rng": _rng_state()}
        if dist.enabled:
            torch.distributed.all_gather_object(ranks, mine)
        else:
            ranks = [mine]
        if dist.rank == 0:
            payload = {"format": "aot-training-state/1", "class_name": class_name,
                       "init_kwargs": json.loads(json.dumps(net_kwargs)), "net": net.state_dict(),
                       "ema": ema.state_dict(), "optimizer": optimizer.state_dict(), "cur_nimg": cur_nimg,
                       "cur_tick": cur_tick, "ranks": ranks}
            with atomic_path(state_path) as tmp:
                torch.save(payload, tmp)
        dist.barrier()

    def save_snapshot(final: bool = False) -> None:
        if dist.rank != 0:
            return
        kimg = cur_nimg / 1000
        name = "network-final.pt" if final else f"network-snapshot-{int(kimg):06d}.pt"
        save_network(outdir / name, ema, **meta, kimg=kimg)

    stats_path = outdir / "stats.jsonl"
    start_time = time.time()
    tick_start_time = time.time()
    tick_start_nimg = cur_nimg
    start_nimg = cur_nimg
    tick_losses: list[float] = []
    batches = pool.batches()
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=opts.bf16)
    exit_code = 0
    try:
        while True:
            if cur_nimg >= total_nimg:
                break
            # One optimizer step: `rounds` minibatches of B pairs from the pool, accumulated.
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for round_idx in range(rounds):
                images, noise, labels, augment_labels = next(batches)
                if opts.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                    noise = noise.contiguous(memory_format=torch.channels_last)
                sigma = loss_fn.sample_sigma(images.shape[0], device, generator=sigma_gen)
                sync = (round_idx == rounds - 1) or not dist.enabled
                ctx = ddp.no_sync() if (dist.enabled and not sync) else _nullcontext()
                with ctx:
                    with autocast:
                        loss = loss_fn(model_fn, images, noise, labels, augment_labels=augment_labels, sigma=sigma)
                    loss = loss.float()
                    loss.sum().mul(1.0 / per_rank).backward()
                step_loss += float(loss.detach().mean()) / rounds
            if not math.isfinite(step_loss):
                raise UserError(f"training diverged: non-finite loss at kimg {cur_nimg / 1000:.3f} "
                                f"(lower --lr, check the dataset)")
            tick_losses.append(step_loss)
            for g in optimizer.param_groups:
                g["lr"] = opts.lr * min(cur_nimg / max(opts.lr_rampup * 1e6, 1e-8), 1)
            for param in net.parameters():
                if param.grad is not None:
                    torch.nan_to_num(param.grad, nan=0, posinf=1e5, neginf=-1e5, out=param.grad)
            optimizer.step()

            # EMA with EDM's ramped half-life.
            cur_nimg += opts.batch
            ema_halflife_nimg = opts.ema * 1e6
            if opts.ema_rampup:
                ema_halflife_nimg = min(ema_halflife_nimg, cur_nimg * opts.ema_rampup)
            ema_beta = 0.5 ** (opts.batch / max(ema_halflife_nimg, 1e-8))
            with torch.no_grad():
                for p_ema, p_net in zip(ema.parameters(), net.parameters()):
                    p_ema.copy_(p_net.detach().lerp(p_ema, ema_beta))
                for b_ema, b_net in zip(ema.buffers(), net.buffers()):
                    b_ema.copy_(b_net)

            done = cur_nimg >= total_nimg
            stop_now = dist.any_flag(stop.stop_requested())
            if not done and not stop_now and cur_nimg < tick_start_nimg + tick_nimg:
                continue

            # Tick: progress line, stats, snapshots, state.
            cur_tick += 1
            now = time.time()
            tick_time = now - tick_start_time
            rate = (cur_nimg - tick_start_nimg) / max(tick_time, 1e-9)
            remaining = (total_nimg - cur_nimg) / max((cur_nimg - start_nimg) / max(now - start_time, 1e-9), 1e-9)
            pstats = summarize_pools(pool.pop_stats())
            if pstats:
                pstats["stall_share"] = pstats["wait_s"] * pstats["pools"] / max(tick_time, 1e-9)
            record = {
                "tick": cur_tick, "kimg": cur_nimg / 1000, "img_per_s": rate,
                "sec_per_kimg": tick_time / max((cur_nimg - tick_start_nimg) / 1000, 1e-9),
                "loss": dist.all_reduce_mean(float(np.mean(tick_losses)) if tick_losses else float("nan")),
                "lr": optimizer.param_groups[0]["lr"], "time_s": now - start_time, "eta_s": remaining,
                **pstats,
            }
            if dist.rank == 0:
                line = (f"tick {cur_tick:<5d} kimg {record['kimg']:<9.3f} loss {record['loss']:<8.4f} "
                        f"{rate:7.1f} img/s  sec/kimg {record['sec_per_kimg']:<7.2f} "
                        f"ETA {format_seconds(remaining)}")
                if pstats:
                    line += (f"  pools {pstats['pools']} pairing {pstats['pairing_s'] * 1000:.0f} ms/pool "
                             f"(stall {pstats['wait_s'] * 1000:.0f} ms/pool, {100 * pstats['stall_share']:.1f}% "
                             f"of step time) cost paired {pstats['paired_cost']:.3f} vs random "
                             f"{pstats['random_cost']:.3f}")
                print(line, flush=True)
                with open(stats_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            tick_losses = []
            tick_start_time = now
            tick_start_nimg = cur_nimg
            if done:
                break
            if stop_now:
                save_state()
                why = f"signal {stop.signum}" if stop.signum else "Slurm time limit near (or a signal on another rank)"
                dist.print(f"Stopping ({why}): state saved at "
                           f"{cur_nimg / 1000:.3f} kimg in {state_path}; exiting with code {EXIT_PREEMPTED} "
                           f"(rerun to resume)")
                exit_code = EXIT_PREEMPTED
                break
            if cur_tick % opts.snap == 0:
                save_snapshot()
            if cur_tick % opts.dump == 0:
                save_state()
    finally:
        pool.close()

    if exit_code == 0:
        save_state()
        save_snapshot(final=True)
        dist.print(f"Training done: {cur_nimg / 1000:.3f} kimg in {format_seconds(time.time() - start_time)}; "
                   f"{outdir / 'network-final.pt'}")
    return exit_code


def summarize_pools(pool_stats: list[dict], tick_time: float | None = None) -> dict:
    """Mean per-pool pairing statistics of one tick (see aot.pairing.PairPool)."""
    if not pool_stats:
        return {}
    mean = lambda key: float(np.mean([s.get(key, float("nan")) for s in pool_stats]))  # noqa: E731
    return {"pools": len(pool_stats), "paired_cost": mean("mean_cost_paired"),
            "random_cost": mean("mean_cost_random"), "pairing_s": mean("pairing_s"),
            "build_s": mean("build_s"), "wait_s": mean("wait_s")}


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


@cli_main
def main(argv: list[str] | None = None) -> None:
    opts = build_parser().parse_args(argv)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    validate(opts, world_size)
    if not Path(opts.data).exists():
        raise UserError(f"dataset {opts.data} does not exist (run the prepare_dataset step first)")
    if opts.threads:
        torch.set_num_threads(opts.threads)
    dist = Dist(opts.device)
    try:
        code = training_loop(opts, dist)
    finally:
        dist.close()
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
