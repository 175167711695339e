"""Discriminator training: DG's recipe (its train.py), with optional AOT noise assignment.

The discriminator learns to tell real images (label 1) from a model's samples (label 0) after both
are perturbed by DG's VP-SDE, x_t = mean(t) x + std(t) z, at VP times importance-sampled as DG does,
with binary cross-entropy. The feature extractor is DG's frozen ADM classifier or a small ADM
encoder trained jointly with the head. With AOT the noise z of each pool of N images (real and
generated together) is assigned to the images by `aot.pairing.assign_noise` (class-wise for
conditional discriminators): the drawn noise is only permuted, never replaced.

`train` is the job (files in, discriminator out; resumable and preemptible), `load_training_data`
reads its inputs, `train_discriminator` is the loop on arrays.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn

from ..checkpoints import checked_dict, checked_state_dict
from ..errors import EXIT_PREEMPTED, UserError
from ..files import save_torch_atomic, write_json_atomic, write_text_atomic
from ..pickles import describe_failure, is_int, one_line
from ..runtime import Preemption, environment_info
from ..settings.rules import check_pool_batch
from .adm import ADMEncoder
from .discriminator import (
    GuidedDiscriminator,
    load_feature_extractor,
    read_torch_file,
    sample_vp_time,
    save_discriminator,
    vp_marginal,
)

TRAIN_STATE_FORMAT = "aot-dg-train-state/1"
# Settings that must not change when a training run resumes.
RESUME_KEYS = ("aot", "pool_size", "cost", "cond", "batch", "seed", "width", "depth", "scratch", "num_real",
               "num_fake")


def to_model_range(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW -> float32 in [-1, 1] (DG: ToTensor then 2x - 1)."""
    return images_u8.to(torch.float32) / 255.0 * 2.0 - 1.0


def pool_noise(images: torch.Tensor, noise: torch.Tensor, labels: torch.Tensor | None, aot: bool,
               cost: str = "l2") -> tuple[torch.Tensor, dict]:
    """Noise for a pool of images: `noise` itself, or with AOT permuted by `aot.pairing.assign_noise`
    (class-wise when `labels` are given). Returns (noise for images[i], stats)."""
    stats: dict = {}
    if not aot:
        return noise, stats
    from ..pairing import assign_noise

    flat_x, flat_z = images.reshape(images.shape[0], -1), noise.reshape(noise.shape[0], -1)
    t0 = time.monotonic()
    perm = assign_noise(flat_x, flat_z, labels=labels, cost=cost)
    stats["pair_time_s"] = time.monotonic() - t0
    paired = noise[perm]
    stats["paired_l2"] = float((flat_x - paired.reshape(flat_x.shape)).norm(dim=1).mean())
    stats["unpaired_l2"] = float((flat_x - flat_z).norm(dim=1).mean())
    return paired, stats


def inputs_fingerprint(images: torch.Tensor, targets: torch.Tensor, cls: torch.Tensor | None) -> str:
    """sha256 of the training images, their real/generated targets and class labels: a training
    state resumes only on the images it was trained on."""
    import hashlib

    h = hashlib.sha256()
    for part in (images, targets, cls):
        if part is not None:
            arr = np.ascontiguousarray(part.numpy())
            h.update(f"{arr.dtype.str}{arr.shape}".encode())
            h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def seed_span(seeds: np.ndarray | None) -> list[int] | None:
    """[lowest, highest] seed of the generated training images (the first images of a sample set,
    one range): guided sample sets must not reuse these seeds. None when the set has no seeds."""
    if seeds is None or not len(seeds):
        return None
    return [int(seeds.min()), int(seeds.max())]


def aot_pool_size(pool_size: int | None, batch: int) -> int:
    """The AOT pool size N of a discriminator: required, and a positive multiple of the batch
    (aot.settings.rules.check_pool_batch, the one check of N against B)."""
    if pool_size is None:
        raise UserError(f"--pool-size is required with --aot (the AOT pool size N, a multiple of --batch {batch})")
    try:
        pool = int(pool_size)
    except (TypeError, ValueError):
        raise UserError(f"--pool-size must be an integer, got {pool_size!r}") from None
    check_pool_batch(pool, batch, "--pool-size", "--batch")
    return pool


# ------------------------------------------------------------------------------------------------
# Training data


class TrainingData(NamedTuple):
    """What discriminator training reads: images uint8 NCHW, class labels int64 (None unless `cond`),
    the frozen feature extractor with its path (None for a scratch encoder), and the seeds of the
    generated images (what guided sampling must not reuse)."""

    real: np.ndarray
    real_labels: np.ndarray | None
    fake: np.ndarray
    fake_labels: np.ndarray | None
    extractor: ADMEncoder | None
    extractor_path: str | None
    fake_seeds: np.ndarray | None = None  # the seeds of the generated images (None: not recorded)


def _frozen_extractor(feature_extractor: str, resolution: int, channels: int) -> tuple[ADMEncoder | None, str | None]:
    if feature_extractor == "scratch":
        return None, None
    extractor = load_feature_extractor(feature_extractor, resolution, channels)
    if extractor.feature_resolution != 8:
        raise UserError(f"feature extractor {feature_extractor} gives {extractor.feature_resolution}x"
                        f"{extractor.feature_resolution} features; DG's head expects 8x8")
    return extractor, str(Path(feature_extractor).resolve())


def load_training_data(*, data: str | os.PathLike, samples: str | os.PathLike, cond: bool = False,
                       collect_images: int | None = None, feature_extractor: str = "scratch") -> TrainingData:
    """The inputs of discriminator training, each checked before the real images are read.

    data: the real images, a dataset in EDM's format; samples: a sample set npz of the model;
    cond: keep class labels (both must have them); collect_images: keep at most this many real and this
    many generated images (DG: 50000); feature_extractor: DG's ADM classifier checkpoint for the
    data's image size, or 'scratch'. Mismatches and missing files are UserErrors naming the file.
    """
    from ..data import ImageFolderDataset, load_all
    from ..samples import read_sample_set

    ds = ImageFolderDataset(data, use_labels=bool(cond), require_labels=bool(cond))
    rec = read_sample_set(samples)
    fake = rec["images"]
    if fake.ndim != 4:
        raise UserError(f"sample set {samples}: images have shape {list(fake.shape)}, expected [N, H, W, C]")
    fake = np.ascontiguousarray(fake.transpose(0, 3, 1, 2))
    if list(fake.shape[1:]) != [ds.num_channels, ds.resolution, ds.resolution]:
        raise UserError(f"sample set {samples} has images {list(fake.shape[1:])} (CHW), dataset {data} "
                        f"has {[ds.num_channels, ds.resolution, ds.resolution]}")
    fake_labels = (np.full(fake.shape[0], -1, np.int64) if rec["labels"] is None  # a set without labels
                   else rec["labels"].astype(np.int64))
    fake_seeds = rec["seeds"]
    if fake_seeds is not None and (fake_seeds.ndim != 1 or fake_seeds.shape[0] != fake.shape[0]
                                   or not np.issubdtype(fake_seeds.dtype, np.integer)):
        raise UserError(f"sample set {samples}: 'seeds' must be one integer per image, got {fake_seeds.dtype} "
                        f"{list(fake_seeds.shape)} for {fake.shape[0]} images")
    if cond and (fake_labels < 0).any():
        raise UserError(f"--cond: sample set {samples} has no class labels (labels -1: unconditional model)")
    if cond and ds.label_dim > 1000:
        raise UserError(f"--cond: dataset {data} has {ds.label_dim} classes; DG's head embeds at most 1000")
    extractor, extractor_path = _frozen_extractor(feature_extractor, ds.resolution, ds.num_channels)
    real, real_labels = load_all(ds, progress=True)
    if collect_images is not None:
        real, fake, fake_labels = real[:collect_images], fake[:collect_images], fake_labels[:collect_images]
        real_labels = real_labels[:collect_images] if real_labels is not None else None
        fake_seeds = fake_seeds[:collect_images] if fake_seeds is not None else None
    return TrainingData(real, real_labels if cond else None, fake, fake_labels if cond else None, extractor,
                        extractor_path, fake_seeds)


# ------------------------------------------------------------------------------------------------
# The training loop on arrays


def _print_line(msg: str) -> None:
    print(msg, flush=True)


def build_discriminator(extractor: ADMEncoder | None, image_shape: tuple[int, int, int], *, scratch_width: int,
                        scratch_depth: int, width: int, depth: int, cond: bool, seed: int,
                        device: torch.device) -> tuple[GuidedDiscriminator, list[nn.Parameter]]:
    """A discriminator to train and its trainable parameters: the head on `extractor` (frozen), or,
    when `extractor` is None, a scratch ADM encoder of `scratch_width`/`scratch_depth` trained with it.
    The initial weights come from torch's global generator seeded with `seed`."""
    c, h, _ = image_shape
    torch.manual_seed(seed)
    scratch = extractor is None
    if scratch:
        extractor = ADMEncoder(h, c, scratch_width, scratch_depth, (32, 16, 8), 1,
                               num_head_channels=min(64, scratch_width))
    head = ADMEncoder(extractor.feature_resolution, extractor.feature_channels, width, depth, (32, 16, 8), 1,
                      condition=cond, num_head_channels=min(64, width))
    disc = GuidedDiscriminator(extractor, head).to(device)
    if scratch:
        disc.train()
        return disc, list(disc.parameters())
    extractor.eval().requires_grad_(False)
    head.train()
    return disc, list(head.parameters())


@dataclass
class _Trainer:
    """One discriminator's training state and its epoch: pools of noise, then batches of BCE steps."""

    disc: GuidedDiscriminator
    optimizer: torch.optim.Optimizer
    gen: torch.Generator
    images: torch.Tensor  # uint8 NCHW, real then generated
    targets: torch.Tensor  # 1 real, 0 generated
    cls: torch.Tensor | None  # class indices for conditional heads
    batch: int
    pool: int
    aot: bool
    cost: str
    scratch: bool
    device: torch.device
    bce: nn.Module = field(default_factory=nn.BCELoss)

    def step(self, xt: torch.Tensor, t: torch.Tensor, y: torch.Tensor, c_lab: torch.Tensor | None,
             epoch: int) -> tuple[float, float]:
        """One optimiser step on a perturbed batch; returns (BCE, accuracy)."""
        extractor, head = self.disc.feature_extractor, self.disc.head
        self.optimizer.zero_grad(set_to_none=True)
        if self.scratch:
            feats = extractor(xt, timesteps=t, feature=True)
        else:
            with torch.no_grad():
                feats = extractor(xt, timesteps=t, feature=True)
        pred = head(feats, t, sigmoid=True, condition=c_lab).view(-1)
        loss = self.bce(pred, y)
        if not torch.isfinite(loss):
            raise UserError(f"non-finite discriminator loss in epoch {epoch + 1}")
        loss.backward()
        self.optimizer.step()
        return float(loss.detach()), float(((pred > 0.5).float() == y).float().mean())

    def epoch(self, epoch: int, stop: Callable[[], bool] | None,
              partial: dict | None = None) -> tuple[dict | None, dict | None]:
        """Train one epoch, or its rest from `partial`: (its stats record, None), or (None, the
        partial epoch to save) when `stop()` turned true after a pool of batches (one batch without
        AOT) that was not the epoch's last. The partial epoch and the generator's state then are
        exactly what the rest of the epoch needs: resuming from them gives the same weights."""
        t0 = time.monotonic()
        total, batch = self.images.shape[0], self.batch
        nb = total // batch
        per_pool = self.pool // batch
        if partial is None:
            order = torch.randperm(total, generator=self.gen)
            order = order[: nb * batch]
            start, losses, accs, pair_stats, spent = 0, [], [], [], 0.0
        else:
            order, start, spent = partial["order"], partial["next"], partial["time_s"]
            losses, accs, pair_stats = list(partial["losses"]), list(partial["accs"]), list(partial["pair_stats"])
        for p0 in range(start, nb, per_pool):
            idx = order[p0 * batch: min(p0 + per_pool, nb) * batch]
            x0 = to_model_range(self.images[idx])
            z = torch.randn(x0.shape, generator=self.gen)
            z, ps = pool_noise(x0, z, self.cls[idx] if (self.cls is not None) else None, self.aot, self.cost)
            if ps:
                pair_stats.append(ps)
            for b0 in range(0, idx.shape[0], batch):
                sl = slice(b0, b0 + batch)
                t = sample_vp_time(batch, self.gen)
                mean, std = vp_marginal(t)
                xt = mean[:, None, None, None] * x0[sl] + std[:, None, None, None] * z[sl]
                xt, t, y = xt.to(self.device), t.to(self.device), self.targets[idx[sl]].to(self.device)
                c_lab = self.cls[idx[sl]].to(self.device) if self.cls is not None else None
                loss, acc = self.step(xt, t, y, c_lab, epoch)
                losses.append(loss)
                accs.append(acc)
            if stop is not None and p0 + per_pool < nb and stop():
                return None, {"epoch": epoch, "order": order, "next": p0 + per_pool, "losses": losses, "accs": accs,
                              "pair_stats": pair_stats, "time_s": spent + time.monotonic() - t0}
        rec = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "accuracy": float(np.mean(accs)),
               "num_images": nb * batch, "time_s": spent + time.monotonic() - t0}
        if pair_stats:
            rec["paired_l2"] = float(np.mean([s["paired_l2"] for s in pair_stats]))
            rec["unpaired_l2"] = float(np.mean([s["unpaired_l2"] for s in pair_stats]))
            rec["pair_time_s"] = float(np.sum([s["pair_time_s"] for s in pair_stats]))
        return rec, None

    def state(self, epoch: int, options: dict, stats: list[dict], partial: dict | None = None) -> dict:
        """The training state after `epoch` epochs and, with `partial`, part of the next (what
        `resume` restores)."""
        extractor, head = self.disc.feature_extractor, self.disc.head
        return {"format": TRAIN_STATE_FORMAT, "epoch": epoch, "options": options, "partial": partial,
                "head": {k: v.detach().cpu() for k, v in head.state_dict().items()},
                "extractor": ({k: v.detach().cpu() for k, v in extractor.state_dict().items()}
                              if self.scratch else None),
                "optimizer": self.optimizer.state_dict(), "generator": self.gen.get_state(), "stats": stats}

    def restore(self, state_path: Path, options: dict) -> tuple[list[dict], int, dict | None]:
        """Load a training state written with the same settings; returns (stats, epochs done, the
        partial epoch or None). Every part is checked first: a damaged or foreign state is a
        one-line UserError."""
        st = read_torch_file(state_path, "training state")
        what = f"training state {state_path}"
        if not isinstance(st, dict) or st.get("format") != TRAIN_STATE_FORMAT:
            raise UserError(f"{state_path} is not a discriminator training state")
        keys = ("options", "head", "optimizer", "generator", "stats", "epoch")
        keys += ("extractor",) if self.scratch else ()
        checked_dict(st, what, keys)
        saved = checked_dict(st["options"], f"{what}: options")
        for key in RESUME_KEYS:
            if saved.get(key) != options.get(key):
                raise UserError(one_line(f"cannot resume from {state_path}: {key} was {saved.get(key)!r}, "
                                         f"now {options.get(key)!r}"))
        if "inputs_sha256" in saved and saved["inputs_sha256"] != options.get("inputs_sha256"):
            raise UserError(f"cannot resume from {state_path}: it was trained on other images (the data or the "
                            "sample set changed); delete it to start again")
        stats, epoch = _checked_progress(st["stats"], st["epoch"], what)
        partial = self._checked_partial(st.get("partial"), epoch, what)
        parts = [(self.disc.head, checked_state_dict(st["head"], f"{what}: head"))]
        if self.scratch:
            parts.append((self.disc.feature_extractor, checked_state_dict(st["extractor"], f"{what}: extractor")))
        try:
            for module, state in parts:
                module.load_state_dict(state)
            self.optimizer.load_state_dict(checked_dict(st["optimizer"], f"{what}: optimizer"))
            _check_optimizer_shapes(self.optimizer)
            self.gen.set_state(st["generator"])
        except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as exc:
            raise UserError(one_line(f"{what} does not fit this run: {describe_failure(exc)}")) from None
        return stats, epoch, partial

    def _checked_partial(self, partial: object, epoch: int, what: str) -> dict | None:
        """A state's partial epoch (None: it ended with a whole epoch), checked against this run."""
        if partial is None:
            return None
        what = f"{what}: partial epoch"
        checked_dict(partial, what, ("epoch", "order", "next", "losses", "accs", "pair_stats", "time_s"))
        total, batch = self.images.shape[0], self.batch
        nb, per_pool = total // batch, self.pool // batch
        order, nxt = partial["order"], partial["next"]
        if not is_int(partial["epoch"]) or partial["epoch"] != epoch:
            raise UserError(one_line(f"{what} is epoch {partial['epoch']!r:.40}, not the one after the {epoch} "
                                     "finished"))
        if (not isinstance(order, torch.Tensor) or order.dtype != torch.int64 or order.shape != (nb * batch,)
                or (order.numel() and (int(order.min()) < 0 or int(order.max()) >= total))
                or torch.unique(order).numel() != order.numel()):
            raise UserError(f"{what}: order is not {nb * batch} distinct image indices below {total}")
        if not is_int(nxt) or not 0 < nxt < nb or nxt % per_pool:
            raise UserError(one_line(f"{what}: next batch {nxt!r:.40} is not a pool boundary inside the "
                                     f"{nb} batches of an epoch"))
        pools = nxt // per_pool if self.aot else 0
        try:
            plain = json.loads(json.dumps({k: partial[k] for k in ("losses", "accs", "pair_stats", "time_s")}))
        except (TypeError, ValueError, RecursionError) as exc:
            raise UserError(one_line(f"{what} holds a value other than plain data ({describe_failure(exc)})")) from None
        lists = all(type(plain[k]) is list for k in ("losses", "accs", "pair_stats"))
        if (not lists or not all(type(v) is float for k in ("losses", "accs") for v in plain[k])
                or len(plain["losses"]) != nxt or len(plain["accs"]) != nxt or len(plain["pair_stats"]) != pools
                or not all(type(s) is dict and all(type(s.get(k)) is float
                                                   for k in ("paired_l2", "unpaired_l2", "pair_time_s"))
                           for s in plain["pair_stats"])
                or type(plain["time_s"]) not in (int, float) or plain["time_s"] < 0):
            raise UserError(f"{what}: losses, accuracies, pairing stats or time do not fit its {nxt} batches")
        return {**plain, "epoch": epoch, "order": order, "next": nxt}


def _checked_progress(stats: object, epoch: object, what: str) -> tuple[list[dict], int]:
    """A training state's epoch count and per-epoch stats (plain JSON records, one per epoch)."""
    if not is_int(epoch) or epoch < 0:
        raise UserError(one_line(f"{what}: epoch is {epoch!r:.60}, not a whole number of epochs"))
    try:
        plain = json.loads(json.dumps(stats))
    except (TypeError, ValueError, RecursionError) as exc:
        raise UserError(one_line(f"{what}: stats hold a value other than plain data "
                                 f"({describe_failure(exc)})")) from None
    if type(plain) is not list or len(plain) != epoch or not all(type(s) is dict for s in plain):
        raise UserError(f"{what}: stats are not one record per finished epoch ({epoch})")
    return plain, epoch


def _check_optimizer_shapes(optimizer: torch.optim.Optimizer) -> None:
    """Adam's moments restored from a file must have their parameters' shapes (torch does not check)."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for name, value in optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor) and value.ndim and value.shape != param.shape:
                    raise ValueError(f"optimizer state {name} has shape {list(value.shape)}, "
                                     f"its parameter {list(param.shape)}")


def _epoch_line(rec: dict, epochs: int) -> str:
    line = (f"epoch {rec['epoch']}/{epochs}: BCE {rec['loss']:.4f}, accuracy {rec['accuracy']:.4f}, "
            f"{rec['num_images'] / max(rec['time_s'], 1e-9):.1f} img/s")
    if "paired_l2" in rec:
        line += (f", AOT pair L2 {rec['paired_l2']:.3f} vs random {rec['unpaired_l2']:.3f} "
                 f"({rec['pair_time_s']:.2f} s assigning)")
    return line


def _write_stats(path: Path, stats: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(s) + "\n" for s in stats))


def _start_run(trainer: _Trainer, out_dir: Path, opts: dict, resume: bool,
               log: Callable[[str], None]) -> tuple[list[dict], int, dict | None]:
    """Restore the training state when resuming; write the stats so far and the options. Returns
    (stats, epochs done, the partial epoch to finish or None)."""
    state_path = out_dir / "training-state.pt"
    stats: list[dict] = []
    start_epoch, partial = 0, None
    if resume and state_path.is_file():
        stats, start_epoch, partial = trainer.restore(state_path, opts)
        within = (f", batch {partial['next'] + 1} of epoch {start_epoch + 1}" if partial else "")
        log(f"resuming discriminator training from epoch {start_epoch}{within} ({state_path})")
    elif resume:
        log(f"no training state in {out_dir}; starting from scratch")
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_stats(out_dir / "stats.jsonl", stats)
    write_json_atomic(out_dir / "training_options.json", opts)
    return stats, start_epoch, partial


def _finish_run(disc: GuidedDiscriminator, stored_extractor: str | None, out_dir: Path, opts: dict,
                stats: list[dict], epochs: int, time_s: float, log: Callable[[str], None]) -> dict:
    """Write the trained discriminator and result.json; returns the result."""
    final = out_dir / "discriminator.pt"
    save_discriminator(final, disc, stored_extractor, kind="dg-discriminator", aot=opts["aot"], cond=opts["cond"],
                       epoch=len(stats), pool_size=opts["pool_size"], cost=opts["cost"], scratch=opts["scratch"],
                       batch=opts["batch"], lr=opts["lr"], weight_decay=opts["weight_decay"],
                       train_seeds=opts.get("train_seeds"))
    result = {"kind": "dg-train", **opts, "epochs": epochs, "discriminator": str(final),
              "feature_extractor": {"kind": "scratch" if opts["scratch"] else "adm-classifier",
                                    "path": stored_extractor, "init_kwargs": dict(disc.feature_extractor.init_kwargs)},
              "head": dict(disc.head.init_kwargs),
              "final": stats[-1] if stats else None, "stats": stats,
              "time_s": time_s, "env": environment_info()}
    write_json_atomic(out_dir / "result.json", result)
    log(f"wrote {final} and {out_dir / 'result.json'}")
    return result


def train_discriminator(real: np.ndarray, real_labels: np.ndarray | None, fake: np.ndarray,
                        fake_labels: np.ndarray | None, out_dir: str | os.PathLike, *,
                        extractor: ADMEncoder | None = None, extractor_path: str | None = None,
                        scratch_width: int = 64, scratch_depth: int = 1, width: int = 128, depth: int = 2,
                        cond: bool = False, aot: bool = False, pool_size: int | None = None, cost: str = "l2",
                        batch: int = 128, epochs: int = 50, lr: float = 3e-4, weight_decay: float = 1e-7,
                        seed: int = 0, device: str | torch.device = "cpu", resume: bool = False,
                        snapshot_epochs: int = 10, options: dict | None = None,
                        log: Callable[[str], None] | None = None, stop: Callable[[], bool] | None = None) -> dict:
    """Train a real-vs-generated discriminator on VP-perturbed images; returns the result dict.

    `real`/`fake` are uint8 NCHW arrays (label 1 / 0), `*_labels` int class indices for conditional
    heads. `extractor` is a frozen feature extractor (DG's ADM classifier, stored by `extractor_path`);
    None trains a small ADM encoder (`scratch_width`, `scratch_depth`) jointly with the head (`width`,
    `depth`). Each epoch shuffles all images and serves full batches of `batch`; noise is drawn per
    pool of `pool_size` images (AOT's N: required with `aot`, a multiple of `batch`; one batch without
    AOT) and, with `aot`, assigned to the images by `aot.pairing.assign_noise` under `cost`. Adam with
    `lr` and `weight_decay`; `seed` fixes weights, order, noise and times. Writes `out_dir/{training-
    state.pt, stats.jsonl, training_options.json, discriminator.pt, discriminator-snapshot-XXXXXX.pt
    (every `snapshot_epochs`), result.json}`; `resume` continues from the state. `options` are
    recorded with the settings. `stop()` is asked after every pool of batches (every batch without
    AOT) and every epoch: True saves the state there (with the partial epoch) and returns
    {"stopped": True, "epoch": epochs finished}; `resume` then continues exactly where it stopped.
    """
    log = log or _print_line
    out_dir = Path(out_dir)
    device = torch.device(device)
    t_start = time.monotonic()
    n_real, n_fake = real.shape[0], fake.shape[0]
    images = torch.from_numpy(np.concatenate([real, fake]))
    targets = torch.cat([torch.ones(n_real), torch.zeros(n_fake)])
    cls = torch.from_numpy(np.concatenate([real_labels, fake_labels]).astype(np.int64)) if cond else None
    total = images.shape[0]
    if batch > total:
        raise UserError(f"--batch {batch} is larger than the {total} training images")
    pool = aot_pool_size(pool_size, batch) if aot else batch
    _, c, h, w = images.shape

    scratch = extractor is None
    disc, params = build_discriminator(extractor, (c, h, w), scratch_width=scratch_width,
                                       scratch_depth=scratch_depth, width=width, depth=depth, cond=cond, seed=seed,
                                       device=device)
    trainer = _Trainer(disc, torch.optim.Adam(params, lr=lr, weight_decay=weight_decay),
                       torch.Generator().manual_seed(seed), images, targets, cls, batch, pool, aot, cost, scratch,
                       device)
    opts = dict(options or {})
    opts.update(dict(aot=aot, pool_size=pool if aot else None, cost=cost, cond=cond, batch=batch, lr=lr,
                     weight_decay=weight_decay, seed=seed, width=width, depth=depth, scratch=scratch,
                     scratch_width=scratch_width if scratch else None, scratch_depth=scratch_depth if scratch else None,
                     num_real=n_real, num_fake=n_fake, inputs_sha256=inputs_fingerprint(images, targets, cls)))
    state_path, stats_path = out_dir / "training-state.pt", out_dir / "stats.jsonl"
    stats, start_epoch, partial = _start_run(trainer, out_dir, opts, resume, log)
    log(f"discriminator training: {n_real} real + {n_fake} generated images {c}x{h}x{w}, "
        f"{'AOT pools of ' + str(pool) if aot else 'independent noise'}, "
        f"{'scratch encoder' if scratch else 'frozen ADM classifier'}, head width {width} depth {depth}, "
        f"{'conditional' if cond else 'unconditional'}, {epochs} epochs of {total // batch} batches on {device}")
    stored_extractor = None if scratch else extractor_path

    for epoch in range(start_epoch, epochs):
        rec, partial = trainer.epoch(epoch, stop, partial)
        if rec is None:
            save_torch_atomic(trainer.state(epoch, opts, stats, partial), state_path)
            log(f"stopped in epoch {epoch + 1} after {partial['next']} of {total // batch} batches; state saved "
                f"in {state_path}")
            return {"stopped": True, "epoch": epoch}
        stats.append(rec)
        log(_epoch_line(rec, epochs))
        if snapshot_epochs and (epoch + 1) % snapshot_epochs == 0 and epoch + 1 < epochs:
            save_discriminator(out_dir / f"discriminator-snapshot-{epoch + 1:06d}.pt", disc, stored_extractor,
                               kind="dg-discriminator", aot=aot, cond=cond, epoch=epoch + 1, scratch=scratch)
        save_torch_atomic(trainer.state(epoch + 1, opts, stats), state_path)
        _write_stats(stats_path, stats)
        if stop is not None and epoch + 1 < epochs and stop():
            log(f"stopped after epoch {epoch + 1}; state saved in {state_path}")
            return {"stopped": True, "epoch": epoch + 1}

    return _finish_run(disc, stored_extractor, out_dir, opts, stats, epochs, time.monotonic() - t_start, log)


# ------------------------------------------------------------------------------------------------
# The job: files in, discriminator out


def train(*, data: str | os.PathLike, samples: str | os.PathLike, out: str | os.PathLike,
          aot: bool = False,                # assign the noise of each pool with aot.pairing
          pool_size: int | None = None,     # AOT pool size N, a multiple of batch (required with aot)
          cost: str = "l2",                 # AOT pairing cost: l2 or sqeuclidean
          cond: bool = False,               # class-conditional discriminator
          feature_extractor: str = "scratch",  # DG's ADM classifier checkpoint (frozen) or 'scratch'
          scratch_width: int = 64,          # width of a scratch encoder (a multiple of 32)
          scratch_depth: int = 1,           # residual blocks per level of a scratch encoder
          width: int = 128,                 # head width (DG: 128)
          depth: int = 2,                   # head depth (DG: 2)
          batch: int = 128,                 # batch size
          epochs: int = 50,                 # passes over all images
          lr: float = 3e-4,                 # Adam learning rate
          weight_decay: float = 1e-7,       # Adam weight decay
          collect_images: int | None = None,      # at most this many real and generated images (DG: 50000)
          seed: int = 0,                    # weights, order, noise and times
          snapshot_epochs: int = 10,        # discriminator-snapshot-XXXXXX.pt every this many epochs (0: none)
          resume: bool = False,             # continue from out/training-state.pt if present
          device: str | torch.device | None = None,  # cuda, cuda:N, cpu or auto/None
          slurm_margin: float = 0.0,        # in a Slurm job: save and stop this many seconds before its end
          ) -> dict:
    """Train a discriminator on the real images `data` (a dataset in EDM's format) against the model's
    sample set `samples` into the folder `out`; returns the result (also out/result.json).

    SIGTERM or SIGUSR1, or inside a Slurm job its end time coming within `slurm_margin` seconds,
    ends training after the current pool of batches (a batch without AOT) with the state saved and
    EXIT_PREEMPTED; rerun with `resume` to continue exactly there (the same weights as a run that
    was never stopped).
    """
    from ..runtime import resolve_device

    pool = aot_pool_size(pool_size, batch) if aot else None
    if not slurm_margin >= 0:
        raise UserError(f"--slurm-margin must not be negative, got {slurm_margin}")
    device = resolve_device(device)
    inputs = load_training_data(data=data, samples=samples, cond=cond, collect_images=collect_images,
                                feature_extractor=feature_extractor)
    options = {"data": str(data), "samples": str(samples), "feature_extractor": feature_extractor,
               "collect_images": collect_images, "train_seeds": seed_span(inputs.fake_seeds)}
    with Preemption(margin=slurm_margin) as preemption:
        result = train_discriminator(
            inputs.real, inputs.real_labels, inputs.fake, inputs.fake_labels, out, extractor=inputs.extractor,
            extractor_path=inputs.extractor_path, scratch_width=scratch_width, scratch_depth=scratch_depth,
            width=width, depth=depth, cond=cond, aot=aot, pool_size=pool, cost=cost, batch=batch, epochs=epochs,
            lr=lr, weight_decay=weight_decay, seed=seed, device=device, resume=resume,
            snapshot_epochs=snapshot_epochs, options=options, stop=lambda: preemption.requested)
    if result.get("stopped"):
        why = f"signal {preemption.signum}" if preemption.signum is not None else preemption.deadline_note()
        print(f"stopping: {why}; exiting with code {EXIT_PREEMPTED} (rerun with --resume to continue)", flush=True)
        raise SystemExit(EXIT_PREEMPTED)
    return result
