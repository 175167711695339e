"""Train EDM and EDM-AOT models: `training_loop(**kwargs)` as in EDM (`python -m aot train`, or under torchrun).

EDM's recipe (NVlabs/edm `training/training_loop.py`): EDM loss, Adam with a linear learning-rate
ramp-up, EMA with a ramped half-life, gradient accumulation up to the total batch, non-finite
gradients zeroed, augmentation with 9-dimensional augment labels. AOT (the paper's Algorithm 1/2)
changes only where the noise comes from: every rank draws pools of N = `pool_size` augmented images
and N noise vectors, pairs them by an optimal assignment (class-wise for conditional models) and
serves the pairs in minibatches of B = `batch_gpu`, each pair once. `aot=False` serves independent
noise through the same code path, which is plain EDM.

Output folder:
    training_options.json       every setting, the dataset and the network's constructor arguments
    stats.jsonl                 one JSON line per tick (kimg, img/s, sec/kimg, loss, pairing costs, ETA)
    network-snapshot-XXXXXX.pt  EMA network every `snap` ticks (kimg in the name)
    training-state.pt           full state (network, EMA, optimizer, RNGs, pool position) every `dump` ticks
    network-final.pt            EMA network at the end; written last, so its presence means "done"

Signals: SIGTERM or SIGUSR1 (Slurm's time limit with `--signal`, preemption), or the Slurm job's end
coming within `slurm_margin` seconds, make the run save `training-state.pt` at the next step
boundary and return 75 (`aot.errors.EXIT_PREEMPTED`); rerunning the same command resumes from it
(`resume="auto"`, the default) with the same number of processes.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoints import checked_dict, checked_kwargs, checked_state_dict, load_torch_file, save_network
from .errors import EXIT_PREEMPTED, UserError
from .files import save_torch_atomic, write_json_atomic
from .limits import STATE_SIZE_FACTOR, whole_number
from .pickles import byte_limit
from .runtime import Preemption, cuda_available, cuda_unavailable_reason, set_threads

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
RESUME = ("auto", "never", "require")
STATE_FORMAT = "aot-training-state/1"


# ------------------------------------------------------------------------------------------------
# The entry point


def training_loop(
    *,
    outdir: str,                    # output folder (created; resumed if it holds a training state)
    data: str,                      # dataset in EDM's format (zip or folder)
    model_name: str | None = None,  # name recorded in the network files (default: the outdir's name)
    cond: bool = False,             # class-conditional model
    arch: str = "ncsnpp",           # network architecture: ddpmpp, ncsnpp or adm (EDM's presets)
    precond: str = "edm",           # preconditioning: edm, vp or ve
    # AOT
    aot: bool = True,               # pair noise with images by optimal assignment (False: EDM's independent noise)
    pool_size: int = 512,           # N: image/noise pairs per assignment pool
    cost: str = "l2",               # assignment cost: l2 or sqeuclidean
    solver: str = "auto",           # assignment solver: auto, lapjv, lapjv-warm or scipy
    # Hyper-parameters (EDM's names and defaults)
    duration: float = 200.0,        # training duration in Mimg
    batch: int = 512,               # total batch size
    batch_gpu: int | None = None,   # B: batch per process and step (default: batch / processes)
    cbase: int | None = None,       # channel multiplier (model_channels; default: the arch's)
    cres: list[int] | None = None,  # channels per resolution (channel_mult; default: the arch's)
    num_blocks: int | None = None,  # residual blocks per resolution (default: the arch's)
    attn: list[int] | None = None,  # attention resolutions (default: the arch's)
    lr: float = 10e-4,              # learning rate
    lr_rampup: float = 10.0,        # learning-rate ramp-up in Mimg
    ema: float = 0.5,               # EMA half-life in Mimg
    ema_rampup: float = 0.05,       # EMA ramp-up ratio (0: none)
    dropout: float = 0.13,          # dropout probability
    augment: float = 0.12,          # augmentation probability (0: off)
    xflip: bool = False,            # dataset x-flips
    P_mean: float = -1.2,           # EDM loss: mean of log sigma
    P_std: float = 1.2,             # EDM loss: std of log sigma
    sigma_data: float = 0.5,        # EDM loss and preconditioning: sigma_data
    # Schedule of outputs
    tick: float = 50.0,             # kimg between progress lines
    snap: int = 50,                 # ticks between EMA network snapshots
    dump: int = 10,                 # ticks between training-state dumps
    slurm_margin: float = 300.0,    # inside a Slurm job: save the state and stop this many seconds before its end
    resume: str = "auto",           # auto: continue from outdir/training-state.pt if present; never; require
    # Runtime
    seed: int = 0,                  # random seed
    device: str | None = "auto",    # cuda, cpu or auto (cuda when available)
    deterministic: bool = False,    # deterministic algorithms (bit-identical resume on CPU)
    threads: int | None = None,     # CPU threads for torch (default: torch's choice)
    # Speed settings (off: EDM's faithful configuration)
    bf16: bool = False,             # bf16 autocast for the network
    tf32: bool = False,             # allow TF32 matmuls and convolutions
    channels_last: bool = False,    # channels_last memory format
    compile: bool = False,          # torch.compile the network
) -> int:
    """Train (or resume) a model in `outdir`; returns 0 when done, EXIT_PREEMPTED when stopped early.

    Under torchrun every process calls this; WORLD_SIZE, RANK and LOCAL_RANK come from the
    environment. Impossible settings raise UserError before anything is built or written."""
    opts = types.SimpleNamespace(**locals())
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    validate(opts, world_size)
    if not Path(opts.data).exists():
        raise UserError(f"dataset {opts.data} does not exist (run the prepare_dataset step first)")
    set_threads(opts.threads)
    dist = Dist(opts.device)
    try:
        return Training(opts, dist).run()
    finally:
        dist.close()


def validate(opts: types.SimpleNamespace, world_size: int) -> None:
    """Impossible settings fail here, before anything is built or written; fills in batch_gpu."""
    from .settings.rules import check_global_batch, check_pool_batch

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
    # B is the recipe (AOT serves pools in minibatches of B): a process count that cannot keep it is
    # refused, never answered with another B
    check_global_batch(opts.batch, opts.batch_gpu, world_size, batch_name="--batch", batch_gpu_name="--batch-gpu",
                       gpus_name="process(es)")
    check_pool_batch(opts.pool_size, opts.batch_gpu)
    for name in ("lr", "ema", "tick"):
        if getattr(opts, name) <= 0:
            raise UserError(f"--{name} must be positive, got {getattr(opts, name)}")
    if not 0 <= opts.augment <= 1:
        raise UserError(f"--augment must be a probability in [0, 1], got {opts.augment}")
    if not 0 <= opts.dropout < 1:
        raise UserError(f"--dropout must be in [0, 1), got {opts.dropout}")
    if opts.snap <= 0 or opts.dump <= 0:
        raise UserError("--snap and --dump must be positive numbers of ticks")
    for name, value, allowed in (("arch", opts.arch, ARCHS), ("precond", opts.precond, PRECONDS),
                                 ("resume", opts.resume, RESUME)):
        if value not in allowed:
            raise UserError(f"--{name} {value!r} is not one of {', '.join(sorted(allowed))}")


def network_kwargs(opts: types.SimpleNamespace, resolution: int, channels: int, label_dim: int) -> dict:
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
    def __init__(self, device: str | None) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        auto = device in (None, "", "auto")
        want_cuda = cuda_available() if auto else str(device).startswith("cuda")
        if want_cuda and not cuda_available():
            raise UserError(f"--device {device}: {cuda_unavailable_reason()}")
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


# A training state holds the network, its EMA, Adam's two moments and every process's pair pool: it
# may unpack to STATE_SIZE_FACTOR times the size limit of one network's tensors ($AOT_MAX_TENSOR_BYTES).


def load_training_state(path: Path) -> dict:
    """training-state.pt, read with torch's weights-only loader (optimizer and random states are
    tensors and plain values) and checked for the entries a resume reads."""
    state = load_torch_file(path, "training state", max_bytes=STATE_SIZE_FACTOR * byte_limit())
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise UserError(f"training state {path} is not an aot training state")
    what = f"training state {path}"
    checked_dict(state, what, ("class_name", "init_kwargs", "net", "ema", "optimizer", "cur_nimg", "cur_tick",
                               "ranks"))
    checked_kwargs(state["init_kwargs"], f"{what}: init_kwargs")
    for key in ("net", "ema"):
        checked_state_dict(state[key], f"{what}: {key}")
    checked_dict(state["optimizer"], f"{what}: optimizer", ("state", "param_groups"))
    checked_dict(state["optimizer"]["state"], f"{what}: optimizer state")
    if type(state["optimizer"]["param_groups"]) is not list:
        raise UserError(f"{what}: optimizer param_groups is a {type(state['optimizer']['param_groups']).__name__}, "
                        "not a list")
    for key in ("cur_nimg", "cur_tick"):  # counters: whole numbers a float64 holds exactly
        whole_number(state[key], f"{what}: {key}")
    if type(state["ranks"]) is not list:
        raise UserError(f"{what}: ranks is a {type(state['ranks']).__name__}, not a list of process states")
    whole_number(state.get("world_size", len(state["ranks"])), f"{what}: world_size", 1, 1 << 20)
    for i, rank in enumerate(state["ranks"]):
        where = f"{what}: ranks[{i}]"
        checked_dict(rank, where, ("pool", "sigma_gen", "rng"))
        pool = checked_dict(rank["pool"], f"{where}.pool", ("format", "pool_index", "position"))
        for key in ("pool_index", "position"):
            whole_number(pool[key], f"{where}.pool.{key}")
        rng = checked_dict(rank["rng"], f"{where}.rng", ("torch_cpu",))
        for key, value in (("sigma_gen", rank["sigma_gen"]), ("rng.torch_cpu", rng["torch_cpu"])):
            if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8 or value.ndim != 1:
                raise UserError(f"{where}.{key} is not a random generator's state (a uint8 tensor)")
    return state


def check_world_size(path: Path, state: dict, world_size: int) -> None:
    """Every process resumes its own data stream, pool and random streams, so a training state can
    only be resumed by as many processes as saved it."""
    saved = int(state.get("world_size", len(state.get("ranks") or [])))
    if saved == world_size:
        return
    how = (f"resume with --nproc-per-node {saved} (torchrun)" if saved > 1
           else "resume with one process (without torchrun)")
    raise UserError(f"training state {path} was saved by {saved} process{'es' if saved != 1 else ''} and this run "
                    f"has {world_size}; {how}, or start a new --outdir")




# ------------------------------------------------------------------------------------------------
# The loop


class Training:
    """One training run of one process: set-up, resume, steps, ticks, state and snapshots.

    Everything is built in EDM's order (dataset, seeds, network, EMA, optimizer, augmentation, pair
    pool), so that runs with the same settings, interrupted and resumed or not, are bit-identical.
    """

    def __init__(self, opts: types.SimpleNamespace, dist: Dist) -> None:
        self.opts, self.dist, self.device = opts, dist, dist.device
        self.outdir = Path(opts.outdir)
        self.state_path = self.outdir / "training-state.pt"
        self.model_name = opts.model_name or self.outdir.name
        dataset, images_u8, labels_onehot = self._load_dataset()
        label_dim = dataset.label_dim if opts.cond else 0
        self.net_kwargs = network_kwargs(opts, dataset.resolution, dataset.num_channels, label_dim)
        self.class_name = PRECONDS[opts.precond]
        resume_state = self._read_state()
        self._build(len(dataset), images_u8, labels_onehot)
        self.cur_nimg = 0
        self.cur_tick = 0
        if resume_state is not None:
            self._resume(resume_state)
        self._wrap()
        self.total_nimg = int(round(opts.duration * 1e6))
        self.per_rank = opts.batch // dist.world_size
        self.rounds = self.per_rank // opts.batch_gpu
        self.tick_nimg = int(round(opts.tick * 1000))
        self.options = self._options(dataset)
        self.meta = {"model": self.model_name, "aot": bool(opts.aot), "cond": bool(opts.cond), "source": "trained",
                     "training_options": self.options}
        if dist.rank == 0:
            self.outdir.mkdir(parents=True, exist_ok=True)
            if resume_state is None:
                write_json_atomic(self.outdir / "training_options.json", self.options)
            self._announce()

    # ---- set-up ----

    def _load_dataset(self):
        """The dataset, checked against the model before anything is written, all in memory."""
        from .data import ImageFolderDataset, load_all
        from .data.reader import check_dataset_bytes

        opts = self.opts
        dataset = ImageFolderDataset(opts.data, use_labels=opts.cond, xflip=opts.xflip)
        if opts.cond and not dataset.has_labels:
            raise UserError(f"--cond needs class labels, but dataset {opts.data} has no labels (dataset.json)")
        n, (c, h, w) = len(dataset), dataset.image_shape
        onehot = n * dataset.label_dim * 4 if opts.cond else 0  # float32 one-hot labels
        check_dataset_bytes(dataset, n * c * h * w + onehot, f" and {dataset.label_dim} classes" if opts.cond else "")
        images_np, labels_np = load_all(dataset)
        labels_onehot = None
        if opts.cond:
            labels_onehot = torch.nn.functional.one_hot(torch.from_numpy(labels_np).long(), dataset.label_dim).float()
        return dataset, torch.from_numpy(images_np), labels_onehot

    def _read_state(self) -> dict | None:
        """The training state to resume from (checked against this run), or None."""
        opts, path = self.opts, self.state_path
        if opts.resume == "never" or not path.exists():
            if opts.resume == "require":
                raise UserError(f"--resume require, but {path} does not exist")
            return None
        state = load_training_state(path)
        if state["class_name"] != self.class_name or state["init_kwargs"] != json.loads(json.dumps(self.net_kwargs)):
            raise UserError(f"training state {path} was made for another network or dataset "
                            f"({state['class_name']} {state['init_kwargs'].get('img_resolution')}px "
                            f"{state['init_kwargs'].get('img_channels')}ch); use a new --outdir")
        check_world_size(path, state, self.dist.world_size)
        return state

    def _build(self, num_images: int, images_u8: torch.Tensor, labels_onehot: torch.Tensor | None) -> None:
        """Seeds, network, EMA, loss, optimizer, augmentation and the pair pool, in EDM's order."""
        from .augment import edm_augment_pipe
        from .loss import EDMLoss
        from .networks import build_network
        from .pairing import PairPool

        opts, dist, device = self.opts, self.dist, self.device
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

        self.net = build_network(self.class_name, self.net_kwargs).train().requires_grad_(True).to(device)
        if opts.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.ema = copy.deepcopy(self.net).eval().requires_grad_(False)
        self.loss_fn = EDMLoss(P_mean=opts.P_mean, P_std=opts.P_std, sigma_data=opts.sigma_data)
        adam_kwargs: dict[str, Any] = dict(lr=opts.lr, betas=(0.9, 0.999), eps=1e-8)
        if device.type == "cuda":
            adam_kwargs["fused"] = True
        self.optimizer = torch.optim.Adam(self.net.parameters(), **adam_kwargs)
        augment_pipe = None
        if opts.augment > 0:
            augment_pipe = edm_augment_pipe(p=opts.augment)
        stream = IndexStream(num_images, dist.rank, dist.world_size, seed=opts.seed)
        draw_fn = make_draw_fn(images_u8, labels_onehot, stream, opts.pool_size, augment_pipe, device)
        self.pool = PairPool(draw_fn, pool_size=opts.pool_size, batch_gpu=opts.batch_gpu, aot=opts.aot,
                             cost=opts.cost, labels_mode="classwise" if opts.cond else None, seed=opts.seed,
                             rank=dist.rank, device=device, solver=opts.solver)
        self.sigma_gen = torch.Generator(device=device).manual_seed(rank_seed + 1_000_003)

    def _wrap(self) -> None:
        """DDP around the (possibly resumed) network, then torch.compile if asked."""
        self.ddp = self.net
        if self.dist.enabled:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.net, device_ids=[self.device] if self.device.type == "cuda" else None)
        self.model_fn = torch.compile(self.ddp) if self.opts.compile else self.ddp

    def _resume(self, state: dict) -> None:
        """Network, EMA, optimizer, counters, this rank's pool position and random streams."""
        try:
            self.net.load_state_dict(state["net"])
            self.ema.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.cur_nimg = int(state["cur_nimg"])
            self.cur_tick = int(state["cur_tick"])
            rank_state = state["ranks"][self.dist.rank]
            self.pool.load_state_dict(rank_state["pool"])
            self.sigma_gen.set_state(rank_state["sigma_gen"])
            _set_rng_state(rank_state["rng"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError, OverflowError) as exc:
            why = " ".join(str(exc).split())[:300]
            raise UserError(f"training state {self.state_path} does not fit this run ({why}); "
                            f"use the same settings or a new --outdir") from None
        self.dist.print(f"Resuming from {self.state_path} at {self.cur_nimg / 1000:.3f} kimg")

    def _options(self, dataset) -> dict:
        """What training_options.json (and every network file's meta) records."""
        opts, dist = self.opts, self.dist
        options = dict(vars(opts))
        options.update(world_size=dist.world_size, accumulation_rounds=self.rounds, model_name=self.model_name,
                       network_class=self.class_name, network_kwargs=self.net_kwargs, dataset=dict(
                           path=str(opts.data), name=dataset.name, size=len(dataset), resolution=dataset.resolution,
                           channels=dataset.num_channels, label_dim=dataset.label_dim))
        return options

    def _announce(self) -> None:
        opts = self.opts
        num_params = sum(p.numel() for p in self.net.parameters())
        self.dist.print(f"Network {self.class_name} ({opts.arch}), {num_params / 1e6:.2f} M parameters; "
                        f"batch {opts.batch} = {self.dist.world_size} x {self.rounds} x {opts.batch_gpu}; "
                        f"AOT {'on' if opts.aot else 'off'} (N={opts.pool_size}, cost {opts.cost}"
                        f"{', class-wise' if opts.cond else ''}); {opts.duration} Mimg on {self.device}")


    # ---- the loop ----

    def run(self) -> int:
        """Train until `duration`, or until a stop is requested; 0 when done, EXIT_PREEMPTED when stopped."""
        opts, dist = self.opts, self.dist
        stop = Preemption(margin=opts.slurm_margin, log=dist.print)  # logs the job's end time
        self.start_time = self.tick_start_time = time.time()
        self.start_nimg = self.tick_start_nimg = self.cur_nimg
        self.tick_losses: list[float] = []
        batches = self.pool.batches()
        autocast = torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=opts.bf16)
        try:
            with stop:
                while self.cur_nimg < self.total_nimg:
                    self.step(batches, autocast)
                    done = self.cur_nimg >= self.total_nimg
                    stop_now = dist.any_flag(stop.requested)
                    if not done and not stop_now and self.cur_nimg < self.tick_start_nimg + self.tick_nimg:
                        continue
                    self.end_tick()
                    if done:
                        break
                    if stop_now:
                        self.save_state()
                        why = (f"signal {stop.signum}" if stop.signum
                               else "Slurm time limit near (or a signal on another rank)")
                        dist.print(f"Stopping ({why}): state saved at {self.cur_nimg / 1000:.3f} kimg in "
                                   f"{self.state_path}; exiting with code {EXIT_PREEMPTED} (rerun to resume)")
                        return EXIT_PREEMPTED
                    if self.cur_tick % opts.snap == 0:
                        self.save_snapshot()
                    if self.cur_tick % opts.dump == 0:
                        self.save_state()
        finally:
            self.pool.close()
        self.save_state()
        self.save_snapshot(final=True)
        dist.print(f"Training done: {self.cur_nimg / 1000:.3f} kimg in {_hms(time.time() - self.start_time)}; "
                   f"{self.outdir / 'network-final.pt'}")
        return 0

    def step(self, batches, autocast) -> None:
        """One optimizer step: `rounds` minibatches of B pairs from the pool, accumulated; then the EMA."""
        opts, dist, device = self.opts, self.dist, self.device
        self.optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for round_idx in range(self.rounds):
            images, noise, labels, augment_labels = next(batches)
            if opts.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
                noise = noise.contiguous(memory_format=torch.channels_last)
            sigma = self.loss_fn.sample_sigma(images.shape[0], device, generator=self.sigma_gen)
            sync = (round_idx == self.rounds - 1) or not dist.enabled
            with self.ddp.no_sync() if (dist.enabled and not sync) else contextlib.nullcontext():
                with autocast:
                    loss = self.loss_fn(self.model_fn, images, noise, labels, augment_labels=augment_labels,
                                        sigma=sigma)
                loss = loss.float()
                loss.sum().mul(1.0 / self.per_rank).backward()
            step_loss += float(loss.detach().mean()) / self.rounds
        if not math.isfinite(step_loss):
            raise UserError(f"training diverged: non-finite loss at kimg {self.cur_nimg / 1000:.3f} "
                            f"(lower --lr, check the dataset)")
        self.tick_losses.append(step_loss)
        for g in self.optimizer.param_groups:
            g["lr"] = opts.lr * min(self.cur_nimg / max(opts.lr_rampup * 1e6, 1e-8), 1)
        for param in self.net.parameters():
            if param.grad is not None:
                torch.nan_to_num(param.grad, nan=0, posinf=1e5, neginf=-1e5, out=param.grad)
        self.optimizer.step()

        # EMA with EDM's ramped half-life, from the image count before this step (as EDM's
        # training_loop.py: the first step copies the weights), then the count moves on.
        ema_beta = ema_beta_for(self.cur_nimg, opts.batch, opts.ema, opts.ema_rampup)
        with torch.no_grad():
            for p_ema, p_net in zip(self.ema.parameters(), self.net.parameters()):
                p_ema.copy_(p_net.detach().lerp(p_ema, ema_beta))
            for b_ema, b_net in zip(self.ema.buffers(), self.net.buffers()):
                b_ema.copy_(b_net)
        self.cur_nimg += opts.batch

    def end_tick(self) -> None:
        """Progress line and stats.jsonl record of the tick that just ended."""
        self.cur_tick += 1
        now = time.time()
        tick_time = now - self.tick_start_time
        tick_done = self.cur_nimg - self.tick_start_nimg
        rate = tick_done / max(tick_time, 1e-9)
        overall = (self.cur_nimg - self.start_nimg) / max(now - self.start_time, 1e-9)
        remaining = (self.total_nimg - self.cur_nimg) / max(overall, 1e-9)
        pstats = summarize_pools(self.pool.pop_stats())
        if pstats:
            pstats["stall_share"] = pstats["wait_s"] * pstats["pools"] / max(tick_time, 1e-9)
        losses = self.tick_losses
        record = {
            "tick": self.cur_tick, "kimg": self.cur_nimg / 1000, "img_per_s": rate,
            "sec_per_kimg": tick_time / max(tick_done / 1000, 1e-9),
            "loss": self.dist.all_reduce_mean(float(np.mean(losses)) if losses else float("nan")),
            "lr": self.optimizer.param_groups[0]["lr"], "time_s": now - self.start_time, "eta_s": remaining,
            **pstats,
        }
        if self.dist.rank == 0:
            line = (f"tick {self.cur_tick:<5d} kimg {record['kimg']:<9.3f} loss {record['loss']:<8.4f} "
                    f"{rate:7.1f} img/s  sec/kimg {record['sec_per_kimg']:<7.2f} ETA {_hms(remaining)}")
            if pstats:
                line += (f"  pools {pstats['pools']} pairing {pstats['pairing_s'] * 1000:.0f} ms/pool "
                         f"(stall {pstats['wait_s'] * 1000:.0f} ms/pool, {100 * pstats['stall_share']:.1f}% "
                         f"of step time) cost paired {pstats['paired_cost']:.3f} vs random "
                         f"{pstats['random_cost']:.3f}")
            print(line, flush=True)
            with open(self.outdir / "stats.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        self.tick_losses = []
        self.tick_start_time = now
        self.tick_start_nimg = self.cur_nimg

    # ---- outputs ----

    def save_state(self) -> None:
        """training-state.pt: everything a rerun needs to continue bit-identically (all ranks take part)."""
        dist = self.dist
        ranks: list = [None] * dist.world_size
        mine = {"pool": self.pool.state_dict(), "sigma_gen": self.sigma_gen.get_state(), "rng": _rng_state()}
        if dist.enabled:
            torch.distributed.all_gather_object(ranks, mine)
        else:
            ranks = [mine]
        if dist.rank == 0:
            payload = {"format": STATE_FORMAT, "class_name": self.class_name,
                       "init_kwargs": json.loads(json.dumps(self.net_kwargs)), "net": self.net.state_dict(),
                       "ema": self.ema.state_dict(), "optimizer": self.optimizer.state_dict(),
                       "cur_nimg": self.cur_nimg, "cur_tick": self.cur_tick, "world_size": dist.world_size,
                       "ranks": ranks}
            save_torch_atomic(payload, self.state_path)
        dist.barrier()

    def save_snapshot(self, final: bool = False) -> None:
        """The EMA network as network-snapshot-<kimg>.pt, or network-final.pt (rank 0)."""
        if self.dist.rank != 0:
            return
        kimg = self.cur_nimg / 1000
        name = "network-final.pt" if final else f"network-snapshot-{int(kimg):06d}.pt"
        save_network(self.outdir / name, self.ema, **self.meta, kimg=kimg)


def ema_beta_for(cur_nimg: float, batch: int, ema: float, ema_rampup: float | None) -> float:
    """EDM's EMA decay of one optimizer step: half-life `ema` Mimg, ramped to at most
    `cur_nimg * ema_rampup` images where `cur_nimg` counts the images before this step (0 at the
    first step, whose EMA is then the network itself); `ema_rampup` 0 or None: no ramp-up."""
    halflife_nimg = ema * 1e6
    if ema_rampup:
        halflife_nimg = min(halflife_nimg, cur_nimg * ema_rampup)
    return 0.5 ** (batch / max(halflife_nimg, 1e-8))


def summarize_pools(pool_stats: list[dict], tick_time: float | None = None) -> dict:
    """Mean per-pool pairing statistics of one tick (see aot.pairing.PairPool)."""
    if not pool_stats:
        return {}
    mean = lambda key: float(np.mean([s.get(key, float("nan")) for s in pool_stats]))  # noqa: E731
    return {"pools": len(pool_stats), "paired_cost": mean("mean_cost_paired"),
            "random_cost": mean("mean_cost_random"), "pairing_s": mean("pairing_s"),
            "build_s": mean("build_s"), "wait_s": mean("wait_s")}


def _hms(seconds: float) -> str:
    from tqdm import tqdm

    return tqdm.format_interval(seconds)
