"""Discriminator Guidance (Kim et al., ICML 2023) for EDM and EDM-AOT models.

Three parts, each matching the public DG code (alsdudrla10/DG) in behaviour and file layout:

* `ADMEncoder`: guided-diffusion's encoder ("half U-Net") classifier as DG builds it with
  `create_classifier` (channel multipliers by image size, scale-shift normalisation, residual
  down-sampling, attention pooling with 64 channels per head, optional class embedding). Its
  `state_dict()` has the same keys and shapes as DG's, so DG's `32x32_classifier.pt` and
  `discriminator_60.pt` / `discriminator_250.pt` load unchanged. Time inputs are VP times in [0, 1].
* `GuidedDiscriminator`: a frozen (or jointly trained) feature extractor plus a small ADM head on
  its 8x8 features; `disc(x, t, class_labels)` is the probability that the noisy `x` is real.
* `dg_sampler`: EDM's Heun sampler with DG's correction (EDM-G++): the gradient of the log density
  ratio, evaluated at the VP time that matches the EDM noise level, added to the ODE direction,
  only inside [time_min, time_max], with DG's optional "boosting". With zero weights it is EDM's
  sampler exactly.

Command line (boolean options take an optional true/false value):

    python -m aot.dg train --data DS.zip --samples GEN.npz --out DIR [--aot [BOOL]] [--pool-size N]
        [--cond [BOOL]] [--feature-extractor 32x32_classifier.pt|scratch] [--num-images N] [--batch 128]
        [--epochs 50] [--lr 3e-4] [--weight-decay 1e-7] [--seed 0] [--resume] [--device] [--threads]
      -> DIR/discriminator.pt, DIR/result.json, DIR/stats.jsonl, DIR/training-state.pt,
         DIR/discriminator-snapshot-XXXXXX.pt
    python -m aot.dg generate --network NET.pt --discriminator DIR/discriminator.pt --seeds 0-49999
        --out X.npz [--steps 18 --rho 7 --dg-weight-1st-order 2 --dg-weight-2nd-order 0 --time-min 0.01
        --time-max 1 --boosting [BOOL] --batch --shard-size --class-labels --model-name --device --threads]
      -> a sample set npz as `aot.generate` writes it (sharded, resumable), sampler key
         `dg{aot|plain}-heun-n18-rho7` and `sampler.guidance` filled in its meta.

Training with `--aot` assigns the perturbation noise of each pool of N images (real and generated)
with `aot.pairing.assign_noise` (class-wise for conditional discriminators); the noise is only
permuted, never replaced.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from .cli.options import ArgParser, cli_main, number_arg, parse_bool
from .errors import UserError
from .files import atomic_path, write_json_atomic, write_text_atomic
from .runtime import environment_info

# VP-SDE of DG's classifier_lib (linear beta schedule, Song et al. 2021).
BETA_MIN = 0.1
BETA_MAX = 20.0
COSINE_S = 0.008
# DG's importance sampling of diffusion time during discriminator training starts here.
VP_T_MIN = 1e-5
# Probability clipping before the log-ratio, as DG does.
PROB_EPS = 1e-5
# DG's boosting constants (generate.py): churn for low log-ratio samples every `period` steps,
# and doubled guidance for them every `period_weight` steps.
BOOST_S_CHURN = 4.0
BOOST_S_NOISE = 1.0
BOOST_PERIOD = 5
BOOST_PERIOD_WEIGHT = 2

DG_REPO = "https://github.com/alsdudrla10/DG"
DG_CLASSIFIER_URL = "https://drive.google.com/drive/folders/1gb68C13-QOt8yA6ZnnS6G5pVIlPO7j_y"
DG_DISCRIMINATOR_URLS = {
    "cifar_uncond/discriminator_60.pt": "https://drive.google.com/drive/folders/1Mf3F1yGfWT8bO0_iOBX-PWG3O-OLROE2",
    "cifar_cond/discriminator_250.pt": "https://drive.google.com/drive/folders/1P1u7cz7kY1BJDPVrPNiFcksy_HCHY_bI",
}

DISCRIMINATOR_FORMAT = "aot-dg-discriminator/1"
ENCODER_FORMAT = "aot-adm-encoder/1"
TRAIN_STATE_FORMAT = "aot-dg-train-state/1"


# ------------------------------------------------------------------------------------------------
# ADM encoder (guided-diffusion's EncoderUNetModel with DG's forward)


def adm_channel_mult(image_size: int) -> tuple:
    """Channel multipliers that guided-diffusion/DG's `create_classifier` picks for a resolution."""
    table = {
        512: (0.5, 1, 1, 2, 2, 4, 4),
        256: (1, 1, 2, 2, 4, 4),
        128: (1, 1, 2, 3, 4),
        64: (1, 2, 3, 4),
        32: (1, 2, 4),
        16: (1, 2),
        8: (1,),
    }
    if image_size not in table:
        raise ValueError(f"ADMEncoder: unsupported image size {image_size} (one of {sorted(table)})")
    return table[image_size]


class GroupNorm32(nn.GroupNorm):
    """Group normalisation computed in float32 (guided-diffusion's `normalization`: 32 groups)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def _norm(channels: int) -> GroupNorm32:
    return GroupNorm32(32, channels)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.detach().zero_()
    return module


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos | sin] of (possibly fractional) timesteps, float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = timesteps[:, None].float() * freqs.to(timesteps.device)[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class _EmbedSequential(nn.Sequential):
    """Sequential container that hands the embedding to the residual blocks."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, _ResBlock) else layer(x)
        return x


class _ResBlock(nn.Module):
    """Residual block with FiLM (scale-shift) or additive embedding; optional 2x average-pool down."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int | None = None,
                 use_scale_shift_norm: bool = True, down: bool = False) -> None:
        super().__init__()
        self.out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            _norm(channels), nn.SiLU(), nn.Conv2d(channels, self.out_channels, 3, padding=1))
        self.updown = down
        if down:
            self.h_upd = nn.AvgPool2d(kernel_size=2, stride=2)
            self.x_upd = nn.AvgPool2d(kernel_size=2, stride=2)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            nn.Linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels))
        self.out_layers = nn.Sequential(
            _norm(self.out_channels), nn.SiLU(), nn.Dropout(p=dropout),
            _zero(nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1)))
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.h_upd(h)
            x = self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = torch.chunk(emb_out, 2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


def _qkv_attention_legacy(qkv: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Heads split before q/k/v (guided-diffusion's legacy order, used by its AttentionBlock)."""
    bs, width, length = qkv.shape
    ch = width // (3 * n_heads)
    q, k, v = qkv.reshape(bs * n_heads, ch * 3, length).split(ch, dim=1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    w = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    w = torch.softmax(w.float(), dim=-1).type(w.dtype)
    return torch.einsum("bts,bcs->bct", w, v).reshape(bs, -1, length)


def _qkv_attention(qkv: torch.Tensor, n_heads: int) -> torch.Tensor:
    """q/k/v split before heads (guided-diffusion's QKVAttention, used by attention pooling)."""
    bs, width, length = qkv.shape
    ch = width // (3 * n_heads)
    q, k, v = qkv.chunk(3, dim=1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    w = torch.einsum("bct,bcs->bts", (q * scale).reshape(bs * n_heads, ch, length),
                     (k * scale).reshape(bs * n_heads, ch, length))
    w = torch.softmax(w.float(), dim=-1).type(w.dtype)
    return torch.einsum("bts,bcs->bct", w, v.reshape(bs * n_heads, ch, length)).reshape(bs, -1, length)


class _AttentionBlock(nn.Module):
    def __init__(self, channels: int, num_head_channels: int) -> None:
        super().__init__()
        if channels % num_head_channels:
            raise ValueError(f"ADMEncoder: {channels} attention channels are not a multiple of "
                             f"num_head_channels={num_head_channels}")
        self.num_heads = channels // num_head_channels
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = _zero(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = _qkv_attention_legacy(self.qkv(self.norm(x)), self.num_heads)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


class _AttentionPool2d(nn.Module):
    """CLIP-style attention pooling: the mean token attends over all positions."""

    def __init__(self, spatial: int, channels: int, num_head_channels: int, out_channels: int) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(channels, spatial ** 2 + 1) / channels ** 0.5)
        self.qkv_proj = nn.Conv1d(channels, 3 * channels, 1)
        self.c_proj = nn.Conv1d(channels, out_channels, 1)
        self.num_heads = channels // num_head_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        x = x.reshape(b, c, -1)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1)
        x = x + self.positional_embedding[None].to(x.dtype)
        x = _qkv_attention(self.qkv_proj(x), self.num_heads)
        return self.c_proj(x)[:, :, 0]


class ADMEncoder(nn.Module):
    """guided-diffusion's encoder classifier as DG's `create_classifier` builds it.

    Args (DG's names in brackets): image_size, in_channels, width [classifier_width], depth
    [classifier_depth], attention_resolutions (resolutions, e.g. (32, 16, 8); attention is used
    where the down-sampling factor equals image_size // res), out_channels, condition (add a
    `num_class`-way label embedding to the time embedding; DG keeps ImageNet's 1000 rows).
    Fixed as DG uses them: scale-shift norm, residual down-sampling, attention pooling with 64
    channels per head, float32.

    `forward(x, timesteps, feature=False, sigmoid=False, condition=None)`: `timesteps` are VP times
    in [0, 1] (scaled by 999 inside, as DG does); `feature=True` returns the features before the
    output head; `sigmoid=True` applies a sigmoid to the logits; `condition` is class indices or
    one-hot rows (argmax taken).
    """

    def __init__(self, image_size: int, in_channels: int, width: int = 128, depth: int = 2,
                 attention_resolutions: Sequence[int] = (32, 16, 8), out_channels: int = 1000,
                 condition: bool = False, num_class: int = 1000, dropout: float = 0.0,
                 channel_mult: Sequence[float] | None = None, num_head_channels: int = 64,
                 use_scale_shift_norm: bool = True) -> None:
        super().__init__()
        attention_resolutions = [int(r) for r in attention_resolutions]
        self.init_kwargs = dict(
            image_size=int(image_size), in_channels=int(in_channels), width=int(width), depth=int(depth),
            attention_resolutions=attention_resolutions, out_channels=int(out_channels),
            condition=bool(condition), num_class=int(num_class), dropout=float(dropout),
            channel_mult=None if channel_mult is None else [float(m) for m in channel_mult],
            num_head_channels=int(num_head_channels), use_scale_shift_norm=bool(use_scale_shift_norm))
        mult = tuple(channel_mult) if channel_mult is not None else adm_channel_mult(int(image_size))
        attention_ds = {int(image_size) // r for r in attention_resolutions}
        self.image_size, self.in_channels, self.model_channels = int(image_size), int(in_channels), int(width)
        self.out_channels, self.condition = int(out_channels), bool(condition)
        emb_dim = width * 4
        self.time_embed = nn.Sequential(nn.Linear(width, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if self.condition:
            self.label_emb = nn.Embedding(num_class, emb_dim)
        ch = int(mult[0] * width)
        self.input_blocks = nn.ModuleList([_EmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        ds = 1
        for level, m in enumerate(mult):
            for _ in range(depth):
                layers: list[nn.Module] = [_ResBlock(ch, emb_dim, dropout, int(m * width), use_scale_shift_norm)]
                ch = int(m * width)
                if ds in attention_ds:
                    layers.append(_AttentionBlock(ch, num_head_channels))
                self.input_blocks.append(_EmbedSequential(*layers))
            if level != len(mult) - 1:
                self.input_blocks.append(_EmbedSequential(
                    _ResBlock(ch, emb_dim, dropout, ch, use_scale_shift_norm, down=True)))
                ds *= 2
        self.middle_block = _EmbedSequential(
            _ResBlock(ch, emb_dim, dropout, None, use_scale_shift_norm),
            _AttentionBlock(ch, num_head_channels),
            _ResBlock(ch, emb_dim, dropout, None, use_scale_shift_norm))
        self.feature_channels = ch
        self.feature_resolution = int(image_size) // ds
        self.out = nn.Sequential(_norm(ch), nn.SiLU(),
                                 _AttentionPool2d(self.feature_resolution, ch, num_head_channels, out_channels))

    def embed(self, timesteps: torch.Tensor, batch: int, condition: torch.Tensor | None) -> torch.Tensor:
        timesteps = torch.as_tensor(timesteps, device=self.time_embed[0].weight.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(batch)
        emb = self.time_embed(timestep_embedding(timesteps * 999.0, self.model_channels))
        if self.condition:
            if condition is None:
                raise ValueError("ADMEncoder(condition=True) needs class labels (condition=...)")
            idx = condition if condition.ndim == 1 else torch.argmax(condition, 1)
            emb = emb + self.label_emb(idx.long())
        return emb

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, feature: bool = False, sigmoid: bool = False,
                condition: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.embed(timesteps, x.shape[0], condition)
        h = x.type(torch.float32)
        for block in self.input_blocks:
            h = block(h, emb)
        h = self.middle_block(h, emb).type(x.dtype)
        if feature:
            return h
        out = self.out(h)
        return torch.sigmoid(out) if sigmoid else out


def dg_classifier_kwargs(image_size: int, in_channels: int = 3) -> dict:
    """DG's ADM classifier (feature extractor) configuration for a resolution (classifier_lib)."""
    return dict(image_size=image_size, in_channels=in_channels, width=128,
                depth=4 if image_size in (32, 64) else 2, attention_resolutions=[32, 16, 8], out_channels=1000)


def dg_discriminator_kwargs(in_channels: int = 512, condition: bool = False, width: int = 128,
                            depth: int = 2, image_size: int = 8) -> dict:
    """DG's discriminator head configuration (classifier_lib.load_discriminator)."""
    return dict(image_size=image_size, in_channels=in_channels, width=width, depth=depth,
                attention_resolutions=[32, 16, 8], out_channels=1, condition=bool(condition))


# ------------------------------------------------------------------------------------------------
# VP-SDE bookkeeping (DG's classifier_lib.vpsde)


def vp_time_from_sigma(sigma: torch.Tensor) -> torch.Tensor:
    """VP time tau with the same signal-to-noise ratio as EDM noise level sigma (sigma^2 = e^{int beta} - 1)."""
    tau = -BETA_MIN + torch.sqrt(BETA_MIN ** 2 + 2.0 * (BETA_MAX - BETA_MIN) * torch.log(1.0 + sigma ** 2))
    return tau / (BETA_MAX - BETA_MIN)


def vp_marginal(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean coefficient and std of the VP-SDE perturbation kernel at time t."""
    log_mean = -0.25 * t ** 2 * (BETA_MAX - BETA_MIN) - 0.5 * t * BETA_MIN
    return torch.exp(log_mean), torch.sqrt(1.0 - torch.exp(2.0 * log_mean))


def vp_cosine_time(t_lin: torch.Tensor) -> torch.Tensor:
    """Cosine-schedule time with the same mean coefficient (DG uses it for ADM's 64x64 classifier)."""
    f_0 = np.cos(COSINE_S / (1.0 + COSINE_S) * np.pi / 2.0) ** 2
    sqrt_alpha = torch.exp(-0.25 * t_lin ** 2 * (BETA_MAX - BETA_MIN) - 0.5 * t_lin * BETA_MIN)
    return (1.0 + COSINE_S) * 2.0 / np.pi * torch.arccos(np.sqrt(f_0) * sqrt_alpha) - COSINE_S


def _integral_beta(t: torch.Tensor) -> torch.Tensor:
    return 0.5 * t ** 2 * (BETA_MAX - BETA_MIN) + t * BETA_MIN


def _antiderivative(t: torch.Tensor | float) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=torch.float32)
    return torch.log(1.0 - torch.exp(-_integral_beta(t))) + _integral_beta(t)


def sample_vp_time(batch: int, generator: torch.Generator | None = None, t_min: float = VP_T_MIN,
                   importance_sampling: bool = True) -> torch.Tensor:
    """Diffusion times for discriminator training (float32, CPU), importance-sampled as DG does.

    The density on [t_min, 1] is proportional to beta(t) / (1 - exp(-int_0^t beta)) (the likelihood
    weighting of Song et al. 2021), sampled by inverting its closed-form CDF.
    """
    u = torch.rand(batch, generator=generator)
    if not importance_sampling:
        return u * (1.0 - t_min) + t_min
    z = _antiderivative(1.0) - _antiderivative(t_min)
    inner = torch.log(1.0 + torch.exp(z * u + _antiderivative(t_min)))
    return (-BETA_MIN + torch.sqrt(BETA_MIN ** 2 + 2 * (BETA_MAX - BETA_MIN) * inner)) / (BETA_MAX - BETA_MIN)


# ------------------------------------------------------------------------------------------------
# Discriminator = frozen (or jointly trained) feature extractor + ADM head


class GuidedDiscriminator(nn.Module):
    """`disc(x, t, class_labels=None)` -> probability [N] that the VP-perturbed `x` at VP time `t` is real.

    The feature extractor's features (before its pooling head) feed the discriminator head with the
    same time; class labels go to the head only (as in DG's classifier_lib).
    """

    def __init__(self, feature_extractor: ADMEncoder, head: ADMEncoder) -> None:
        super().__init__()
        self.feature_extractor = feature_extractor
        self.head = head

    @property
    def condition(self) -> bool:
        return bool(self.head.condition)

    def _times(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device)
        return t.expand(x.shape[0]) if t.ndim == 0 else t

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, class_labels: torch.Tensor | None = None,
                logits: bool = False) -> torch.Tensor:
        t = self._times(x, t)
        features = self.feature_extractor(x, timesteps=t, feature=True)
        out = self.head(features, t, sigmoid=not logits, condition=class_labels)
        return out.view(-1)

    def log_ratio(self, x: torch.Tensor, t: torch.Tensor | float,
                  class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """log(D / (1 - D)) of the clipped probability D (DG's `get_log_ratio`)."""
        p = torch.clip(self(x, t, class_labels), PROB_EPS, 1.0 - PROB_EPS)
        return torch.log(p / (1.0 - p))


def grad_log_ratio(discriminator: Callable, x: torch.Tensor, sigma: torch.Tensor | float,
                   class_labels: torch.Tensor | None = None, time_min: float = 0.01, time_max: float = 1.0,
                   cosine_time: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """DG's correction term at EDM state (x, sigma): (guidance [like x], log_ratio [N]).

    sigma is mapped to VP time tau, the discriminator sees mean_vp(tau) * x at time tau, and the
    gradient of the log density ratio with respect to its input is scaled by -sigma^2 * mean_vp(tau);
    the sampler adds `weight * guidance / sigma` to its ODE direction. Outside [time_min, time_max]
    (judged by the smallest tau in the batch, as DG does) the guidance is zero and the log ratio is
    reported as 1e7. The discriminator runs in float32 with per-sample float32 times, as in DG.
    """
    n = x.shape[0]
    sigma32 = torch.ones(n, device=x.device) * torch.as_tensor(sigma, device=x.device).float()
    tau = vp_time_from_sigma(sigma32)
    mean, _ = vp_marginal(tau)
    if tau.min() > time_max or tau.min() < time_min:
        return torch.zeros_like(x), torch.full((n,), 1e7, device=x.device)
    inp = (mean[:, None, None, None] * x).float().detach().requires_grad_(True)
    if cosine_time:
        tau = vp_cosine_time(tau)
    with torch.enable_grad():
        if isinstance(discriminator, GuidedDiscriminator):
            log_ratio = discriminator.log_ratio(inp, tau, class_labels)
        else:
            p = torch.clip(discriminator(inp, tau, class_labels), PROB_EPS, 1.0 - PROB_EPS)
            log_ratio = torch.log(p / (1.0 - p))
        grad = torch.autograd.grad(log_ratio.sum(), inp)[0]
    guidance = grad * -((sigma32 ** 2) * mean)[:, None, None, None]
    return guidance, log_ratio.detach()


# ------------------------------------------------------------------------------------------------
# EDM-G++ sampler


def dg_sampler(net: nn.Module, latents: torch.Tensor, class_labels: torch.Tensor | None = None,
               discriminator: Callable | None = None, num_steps: int = 18, rho: float = 7,
               dg_weight_1st_order: float = 2.0, dg_weight_2nd_order: float = 0.0, time_min: float = 0.01,
               time_max: float = 1.0, boosting: bool = False, randn_like: Callable = torch.randn_like,
               sigma_min: float = 0.002, sigma_max: float = 80, S_churn: float = 0, S_min: float = 0,
               S_max: float = float("inf"), S_noise: float = 1, cosine_time: bool | None = None) -> torch.Tensor:
    """EDM's Heun sampler with Discriminator Guidance, step for step as DG's `generate.py`.

    With both weights zero (and no boosting) this is `aot.sampling.edm_sampler` exactly (same time
    steps, same calls to `randn_like`, float64 state). The guidance of the first (Euler) evaluation
    is weighted by `dg_weight_1st_order`, that of the second (Heun correction) evaluation by
    `dg_weight_2nd_order` (DG's own code fails when the latter is non-zero; here it works).
    Boosting (DG): every 5th step, samples whose last log ratio was negative get S_churn = 4; every
    2nd step their guidance is doubled. Returns float64 images in [-1, 1] (unclipped).
    """
    from .sampling import edm_time_steps

    w1, w2 = float(dg_weight_1st_order), float(dg_weight_2nd_order)
    if (w1 != 0 or w2 != 0) and discriminator is None:
        raise ValueError("dg_sampler: a non-zero guidance weight needs a discriminator")
    if cosine_time is None:
        cosine_time = getattr(net, "img_resolution", None) == 64
    n = latents.shape[0]
    device = latents.device
    t_steps = edm_time_steps(num_steps, sigma_min, sigma_max, rho, net=net).to(device)
    gamma_max = np.sqrt(2) - 1
    log_ratio = torch.full((n,), float("inf"), device=device)

    def guidance(x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return grad_log_ratio(discriminator, x, sigma, class_labels, time_min, time_max, cosine_time)

    # DG draws churn noise on every step; it only matters (and is only drawn here) when some step
    # can add noise, i.e. with S_churn > 0 or boosting.
    draw_noise = bool(S_churn) or bool(boosting)
    x_next = latents.to(torch.float64) * t_steps[0]
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        churn = torch.full((n,), float(S_churn), dtype=torch.float64, device=device)
        noise = torch.full((n,), float(S_noise), dtype=torch.float64, device=device)
        if boosting and i % BOOST_PERIOD == 0:
            low = log_ratio < 0
            churn[low] = BOOST_S_CHURN
            noise[low] = BOOST_S_NOISE
        in_range = S_min <= t_cur <= S_max
        if bool((churn == churn[0]).all()) and bool((noise == noise[0]).all()):
            # One noise level for the whole batch: EDM's own arithmetic.
            c, s_noise = float(churn[0]), float(noise[0])
            gamma = min(c / num_steps, gamma_max) if in_range else 0
            t_hat = net.round_sigma(t_cur + gamma * t_cur)
            if draw_noise:
                x_hat = x_cur + (t_hat ** 2 - t_cur ** 2).sqrt() * s_noise * randn_like(x_cur)
            else:  # the added noise would be exactly zero (aot.sampling skips the draw too)
                x_hat = x_cur
            t_hat_b = t_hat
        else:
            gamma_vec = torch.clamp(churn / num_steps, max=gamma_max) if in_range else torch.zeros_like(churn)
            t_hat = net.round_sigma(t_cur + gamma_vec * t_cur).to(torch.float64)
            t_hat_b = t_hat[:, None, None, None]
            x_hat = x_cur + ((t_hat ** 2 - t_cur ** 2).sqrt() * noise)[:, None, None, None] * randn_like(x_cur)

        # Euler step, with DG's first-order correction.
        denoised = net(x_hat, t_hat, class_labels).to(torch.float64)
        d_cur = (x_hat - denoised) / t_hat_b
        if w1 != 0:
            g, log_ratio = guidance(x_hat, t_hat)
            if boosting and i % BOOST_PERIOD_WEIGHT == 0:
                g[log_ratio < 0] *= 2.0
            sigma32 = (torch.ones(n, device=device) * t_hat.float())[:, None, None, None]
            d_cur = d_cur + w1 * (g / sigma32)
        x_next = x_hat + (t_next - t_hat_b) * d_cur

        # Second-order correction, with DG's second-order correction.
        if i < num_steps - 1:
            denoised = net(x_next, t_next, class_labels).to(torch.float64)
            d_prime = (x_next - denoised) / t_next
            if w2 != 0:
                g, _ = guidance(x_next, t_next)
                d_prime = d_prime + w2 * (g / t_next.float())
            x_next = x_hat + (t_next - t_hat_b) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next


# ------------------------------------------------------------------------------------------------
# Files: feature extractors (ours or DG's ADM classifier), discriminators (ours or DG's heads)


def _encoder_record(model: ADMEncoder) -> dict:
    return {"init_kwargs": dict(model.init_kwargs),
            "state_dict": {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}}


def _build_encoder(init_kwargs: dict, state_dict: dict, what: str) -> ADMEncoder:
    try:
        model = ADMEncoder(**init_kwargs)
        model.load_state_dict(state_dict, strict=True)
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{what} does not match its architecture: {first}") from None
    for key, value in state_dict.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise UserError(f"{what} has non-finite values in {key}")
    return model


def _torch_load(path: Path, what: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt archives raise many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{what} {path} cannot be read (truncated or not a torch file): {first}") from None


def _is_bare_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())


def save_encoder(path: str | os.PathLike, model: ADMEncoder, **meta: Any) -> None:
    """An ADM encoder as a weights_only-safe file (constructor args + state dict), atomically."""
    with atomic_path(path) as tmp:
        torch.save({"format": ENCODER_FORMAT, **_encoder_record(model), "meta": meta}, tmp)


def load_feature_extractor(path: str | os.PathLike, image_size: int | None = None,
                           in_channels: int | None = None) -> ADMEncoder:
    """ADM classifier used as feature extractor: DG's `32x32_classifier.pt` (a bare state dict in
    DG's configuration for `image_size`) or an encoder file written by `save_encoder`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"ADM classifier checkpoint {path} does not exist; DG publishes 32x32_classifier.pt "
                        f"at {DG_CLASSIFIER_URL} (see {DG_REPO}, 'Prepare a pre-trained classifier')")
    obj = _torch_load(path, "ADM classifier checkpoint")
    what = f"ADM classifier checkpoint {path}"
    if isinstance(obj, dict) and obj.get("format") == ENCODER_FORMAT:
        model = _build_encoder(obj["init_kwargs"], obj["state_dict"], what)
    elif _is_bare_state_dict(obj):
        if image_size is None:
            raise UserError(f"{what} is a bare state dict; its image size must be given")
        w = obj.get("input_blocks.0.0.weight")
        if w is None:
            raise UserError(f"{what} is not an ADM classifier (no input_blocks.0.0.weight)")
        kwargs = dg_classifier_kwargs(int(image_size), int(w.shape[1]))
        kwargs["width"] = int(w.shape[0])
        model = _build_encoder(kwargs, obj, what)
    else:
        raise UserError(f"{what} is neither DG's ADM classifier state dict nor an aot encoder file")
    if image_size is not None and model.image_size != image_size:
        raise UserError(f"{what} is for {model.image_size}x{model.image_size} images, the data are {image_size}x{image_size}")
    if in_channels is not None and model.in_channels != in_channels:
        raise UserError(f"{what} expects {model.in_channels} channels, the data have {in_channels}")
    return model


def save_discriminator(path: str | os.PathLike, disc: GuidedDiscriminator, extractor_path: str | None = None,
                       **meta: Any) -> None:
    """Write a discriminator: the head's plain state dict and constructor args (`head`), and the
    feature extractor either inline (`feature_extractor`, when it was trained) or by path
    (`feature_extractor_path`, DG's frozen ADM classifier). Loadable with weights_only=True; the
    head's state dict has DG's keys (`torch.save(payload["head"]["state_dict"])` is a DG checkpoint)."""
    payload: dict[str, Any] = {"format": DISCRIMINATOR_FORMAT, "head": _encoder_record(disc.head), "meta": meta}
    if extractor_path is None:
        payload["feature_extractor"] = _encoder_record(disc.feature_extractor)
    else:
        payload["feature_extractor_path"] = str(extractor_path)
        payload["feature_extractor_kwargs"] = dict(disc.feature_extractor.init_kwargs)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_discriminator(path: str | os.PathLike, feature_extractor: str | os.PathLike | None = None,
                       image_size: int | None = None, in_channels: int | None = None,
                       device: str | torch.device = "cpu") -> tuple[GuidedDiscriminator, dict]:
    """Rebuild a discriminator (eval mode, no parameter gradients); returns (disc, meta).

    Accepts our files (`save_discriminator`) and DG's released heads (`discriminator_60.pt`, bare
    state dicts; a `label_emb` makes them conditional), which need `feature_extractor` (DG's ADM
    classifier). `feature_extractor` also overrides the path stored in our files.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"discriminator {path} does not exist (DG's released heads: "
                        + ", ".join(f"{k} at {v}" for k, v in DG_DISCRIMINATOR_URLS.items()) + ")")
    obj = _torch_load(path, "discriminator")
    what = f"discriminator {path}"
    meta: dict = {}
    if isinstance(obj, dict) and obj.get("format") == DISCRIMINATOR_FORMAT:
        head = _build_encoder(obj["head"]["init_kwargs"], obj["head"]["state_dict"], what)
        meta = dict(obj.get("meta") or {})
        if "feature_extractor" in obj and feature_extractor is None:
            ext = _build_encoder(obj["feature_extractor"]["init_kwargs"], obj["feature_extractor"]["state_dict"],
                                 f"{what} (feature extractor)")
        else:
            ext_path = feature_extractor or obj.get("feature_extractor_path")
            if ext_path is None:
                raise UserError(f"{what} names no feature extractor; pass --feature-extractor")
            kw = obj.get("feature_extractor_kwargs") or {}
            ext = load_feature_extractor(ext_path, image_size or kw.get("image_size"), in_channels or kw.get("in_channels"))
            meta["feature_extractor_path"] = str(ext_path)
    elif _is_bare_state_dict(obj):
        if "input_blocks.0.0.weight" not in obj:
            raise UserError(f"{what} is not an ADM discriminator head (no input_blocks.0.0.weight)")
        if feature_extractor is None:
            raise UserError(f"{what} is a bare DG discriminator head; pass its ADM classifier with --feature-extractor "
                            f"(DG publishes 32x32_classifier.pt at {DG_CLASSIFIER_URL})")
        w = obj["input_blocks.0.0.weight"]
        depth = len({k.split(".")[1] for k in obj if k.startswith("input_blocks.")}) - 1
        kw = dg_discriminator_kwargs(int(w.shape[1]), "label_emb.weight" in obj, width=int(w.shape[0]), depth=depth)
        if "label_emb.weight" in obj:
            kw["num_class"] = int(obj["label_emb.weight"].shape[0])
        head = _build_encoder(kw, obj, what)
        ext = load_feature_extractor(feature_extractor, image_size, in_channels)
        meta = {"source": f"dg:{path}", "feature_extractor_path": str(feature_extractor), "cond": bool(head.condition)}
    else:
        raise UserError(f"{what} is neither an aot discriminator file nor a DG discriminator state dict")
    if ext.feature_channels != head.in_channels:
        raise UserError(f"{what}: the head expects {head.in_channels} feature channels, the feature extractor "
                        f"gives {ext.feature_channels}")
    disc = GuidedDiscriminator(ext, head).to(device).eval().requires_grad_(False)
    return disc, meta


# ------------------------------------------------------------------------------------------------
# Discriminator training (DG's train.py recipe, with optional AOT noise assignment)


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
    from .pairing import assign_noise

    flat_x, flat_z = images.reshape(images.shape[0], -1), noise.reshape(noise.shape[0], -1)
    t0 = time.monotonic()
    perm = assign_noise(flat_x, flat_z, labels=labels, cost=cost)
    stats["pair_time_s"] = time.monotonic() - t0
    paired = noise[perm]
    stats["paired_l2"] = float((flat_x - paired.reshape(flat_x.shape)).norm(dim=1).mean())
    stats["unpaired_l2"] = float((flat_x - flat_z).norm(dim=1).mean())
    return paired, stats


class _Log:
    def __init__(self, stream=None) -> None:
        self.stream = stream

    def __call__(self, msg: str) -> None:
        print(msg, flush=True, file=self.stream)


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
    heads. `extractor` is a frozen feature extractor (DG's ADM classifier); None trains a small
    ADM encoder (`scratch_width`, `scratch_depth`) jointly with the head. Each epoch shuffles all
    images and serves full batches; noise is drawn per pool of `pool_size` images (one batch without
    AOT) and, with `aot`, assigned to the images by `aot.pairing.assign_noise`. Per image, the VP time
    is importance-sampled as DG does, x_t = mean(t) x + std(t) z. Writes `out_dir/{training-state.pt,
    stats.jsonl, discriminator.pt, discriminator-snapshot-XXXXXX.pt, result.json}`.
    `stop()` returning True ends training after the current batch without saving (state stays at the
    last finished epoch; rerun with resume).
    """
    log = log or _Log()
    out_dir = Path(out_dir)
    device = torch.device(device)
    t_start = time.monotonic()
    n_real, n_fake = real.shape[0], fake.shape[0]
    images = torch.from_numpy(np.concatenate([real, fake]))
    targets = torch.cat([torch.ones(n_real), torch.zeros(n_fake)])
    cls = None
    if cond:
        cls = torch.from_numpy(np.concatenate([real_labels, fake_labels]).astype(np.int64))
    total = images.shape[0]
    if batch > total:
        raise UserError(f"--batch {batch} is larger than the {total} training images")
    pool = int(pool_size or batch) if aot else batch
    if aot and (pool < batch or pool % batch):
        raise UserError(f"--pool-size {pool} must be a multiple of --batch {batch} (and at least as large)")
    _, c, h, w = images.shape

    scratch = extractor is None
    if scratch:
        torch.manual_seed(seed)  # initial weights of the jointly trained encoder and the head
        extractor = ADMEncoder(h, c, scratch_width, scratch_depth, (32, 16, 8), 1,
                               num_head_channels=min(64, scratch_width))
    else:
        torch.manual_seed(seed)
    head = ADMEncoder(extractor.feature_resolution, extractor.feature_channels, width, depth, (32, 16, 8), 1,
                      condition=cond, num_head_channels=min(64, width))
    disc = GuidedDiscriminator(extractor, head).to(device)
    if scratch:
        disc.train()
        params = list(disc.parameters())
    else:
        extractor.eval().requires_grad_(False)
        head.train()
        params = list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    bce = nn.BCELoss()
    gen = torch.Generator().manual_seed(seed)

    opts = dict(options or {})
    opts.update(dict(aot=aot, pool_size=pool if aot else None, cost=cost, cond=cond, batch=batch, lr=lr,
                     weight_decay=weight_decay, seed=seed, width=width, depth=depth, scratch=scratch,
                     scratch_width=scratch_width if scratch else None, scratch_depth=scratch_depth if scratch else None,
                     num_real=n_real, num_fake=n_fake))
    state_path = out_dir / "training-state.pt"
    stats_path = out_dir / "stats.jsonl"
    stats: list[dict] = []
    start_epoch = 0
    if resume and state_path.is_file():
        st = _torch_load(state_path, "training state")
        if not isinstance(st, dict) or st.get("format") != TRAIN_STATE_FORMAT:
            raise UserError(f"{state_path} is not a discriminator training state")
        for key in ("aot", "pool_size", "cost", "cond", "batch", "seed", "width", "depth", "scratch",
                    "num_real", "num_fake"):
            if st["options"].get(key) != opts.get(key):
                raise UserError(f"cannot resume from {state_path}: {key} was {st['options'].get(key)!r}, "
                                f"now {opts.get(key)!r}")
        head.load_state_dict(st["head"])
        if scratch:
            extractor.load_state_dict(st["extractor"])
        optimizer.load_state_dict(st["optimizer"])
        gen.set_state(st["generator"])
        stats = list(st["stats"])
        start_epoch = int(st["epoch"])
        log(f"resuming discriminator training from epoch {start_epoch} ({state_path})")
    elif resume:
        log(f"no training state in {out_dir}; starting from scratch")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(stats_path, "".join(json.dumps(s) + "\n" for s in stats))
    write_json_atomic(out_dir / "training_options.json", opts)
    log(f"discriminator training: {n_real} real + {n_fake} generated images {c}x{h}x{w}, "
        f"{'AOT pools of ' + str(pool) if aot else 'independent noise'}, "
        f"{'scratch encoder' if scratch else 'frozen ADM classifier'}, head width {width} depth {depth}, "
        f"{'conditional' if cond else 'unconditional'}, {epochs} epochs of {total // batch} batches on {device}")

    def save_final(epoch: int) -> Path:
        meta = dict(kind="dg-discriminator", aot=aot, cond=cond, epoch=epoch, pool_size=pool if aot else None,
                    cost=cost, scratch=scratch)
        final = out_dir / "discriminator.pt"
        save_discriminator(final, disc, None if scratch else extractor_path, **meta)
        return final

    for epoch in range(start_epoch, epochs):
        t0 = time.monotonic()
        order = torch.randperm(total, generator=gen)
        nb = total // batch
        order = order[: nb * batch]
        losses, accs, pair_stats = [], [], []
        per_pool = pool // batch
        for p0 in range(0, nb, per_pool):
            idx = order[p0 * batch: min(p0 + per_pool, nb) * batch]
            x0 = to_model_range(images[idx])
            z = torch.randn(x0.shape, generator=gen)
            z, ps = pool_noise(x0, z, cls[idx] if (cls is not None) else None, aot, cost)
            if ps:
                pair_stats.append(ps)
            for b0 in range(0, idx.shape[0], batch):
                sl = slice(b0, b0 + batch)
                t = sample_vp_time(batch, gen)
                mean, std = vp_marginal(t)
                xt = mean[:, None, None, None] * x0[sl] + std[:, None, None, None] * z[sl]
                xt, t, y = xt.to(device), t.to(device), targets[idx[sl]].to(device)
                c_lab = cls[idx[sl]].to(device) if cls is not None else None
                optimizer.zero_grad(set_to_none=True)
                if scratch:
                    feats = extractor(xt, timesteps=t, feature=True)
                else:
                    with torch.no_grad():
                        feats = extractor(xt, timesteps=t, feature=True)
                pred = head(feats, t, sigmoid=True, condition=c_lab).view(-1)
                loss = bce(pred, y)
                if not torch.isfinite(loss):
                    raise UserError(f"non-finite discriminator loss in epoch {epoch + 1}")
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
                accs.append(float(((pred > 0.5).float() == y).float().mean()))
                if stop is not None and stop():
                    log(f"stopping in epoch {epoch + 1}; state of epoch {epoch} kept in {state_path}")
                    return {"stopped": True, "epoch": epoch}
        rec = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "accuracy": float(np.mean(accs)),
               "num_images": nb * batch, "time_s": time.monotonic() - t0}
        if pair_stats:
            rec["paired_l2"] = float(np.mean([s["paired_l2"] for s in pair_stats]))
            rec["unpaired_l2"] = float(np.mean([s["unpaired_l2"] for s in pair_stats]))
            rec["pair_time_s"] = float(np.sum([s["pair_time_s"] for s in pair_stats]))
        stats.append(rec)
        line = (f"epoch {epoch + 1}/{epochs}: BCE {rec['loss']:.4f}, accuracy {rec['accuracy']:.4f}, "
                f"{rec['num_images'] / max(rec['time_s'], 1e-9):.1f} img/s")
        if pair_stats:
            line += (f", AOT pair L2 {rec['paired_l2']:.3f} vs random {rec['unpaired_l2']:.3f} "
                     f"({rec['pair_time_s']:.2f} s assigning)")
        log(line)
        if snapshot_epochs and (epoch + 1) % snapshot_epochs == 0 and epoch + 1 < epochs:
            save_discriminator(out_dir / f"discriminator-snapshot-{epoch + 1:06d}.pt", disc,
                               None if scratch else extractor_path, kind="dg-discriminator", aot=aot, cond=cond,
                               epoch=epoch + 1, scratch=scratch)
        state = {"format": TRAIN_STATE_FORMAT, "epoch": epoch + 1, "options": opts,
                 "head": {k: v.detach().cpu() for k, v in head.state_dict().items()},
                 "extractor": {k: v.detach().cpu() for k, v in extractor.state_dict().items()} if scratch else None,
                 "optimizer": optimizer.state_dict(), "generator": gen.get_state(), "stats": stats}
        with atomic_path(state_path) as tmp:
            torch.save(state, tmp)
        write_text_atomic(stats_path, "".join(json.dumps(s) + "\n" for s in stats))

    final = save_final(len(stats))
    result = {"kind": "dg-train", **opts, "epochs": epochs, "discriminator": str(final),
              "feature_extractor": {"kind": "scratch" if scratch else "adm-classifier",
                                    "path": None if scratch else extractor_path,
                                    "init_kwargs": dict(extractor.init_kwargs)},
              "head": dict(head.init_kwargs),
              "final": stats[-1] if stats else None, "stats": stats,
              "time_s": time.monotonic() - t_start, "env": environment_info()}
    write_json_atomic(out_dir / "result.json", result)
    log(f"wrote {final} and {out_dir / 'result.json'}")
    return result


# ------------------------------------------------------------------------------------------------
# Command line


_Parser = ArgParser


def _num(name: str, kind: type = float, positive: bool = False, nonneg: bool = False):
    return number_arg(name, kind, positive=positive, nonneg=nonneg, allow_inf=name == "--S-max")


def _bool(name: str):
    def conv(s: str) -> bool:
        try:
            return parse_bool(s)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"{name} takes true or false, got {s!r}") from None
    return conv


def _flag(p: argparse.ArgumentParser, name: str, help: str) -> None:
    """`--name` alone, or `--name true|false` (as the workflow passes it)."""
    p.add_argument(name, nargs="?", const=True, default=False, type=_bool(name), metavar="BOOL", help=help)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m aot.dg", description="Discriminator Guidance: train a discriminator, sample with it.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a real-vs-generated discriminator (DG's recipe, optional AOT noise)")
    t.add_argument("--data", required=True, help="real images: dataset zip/folder in EDM's format")
    t.add_argument("--samples", required=True, help="generated images: sample set npz of aot.generate")
    t.add_argument("--out", required=True, help="output folder (discriminator.pt, result.json, stats.jsonl, state)")
    _flag(t, "--aot", "assign perturbation noise per pool with aot.pairing")
    t.add_argument("--pool-size", type=_num("--pool-size", int, positive=True), default=None,
                   help="AOT pool size N (default 512 unconditional, 2048 conditional)")
    t.add_argument("--cost", default="l2", choices=["l2", "sqeuclidean"], help="AOT pairing cost")
    t.add_argument("--feature-extractor", default="scratch",
                   help="DG's ADM classifier checkpoint (e.g. 32x32_classifier.pt; frozen) or 'scratch' "
                        "(small ADM encoder trained jointly)")
    t.add_argument("--scratch-width", type=_num("--scratch-width", int, positive=True), default=64,
                   help="width of the scratch encoder (a multiple of 32)")
    t.add_argument("--scratch-depth", type=_num("--scratch-depth", int, positive=True), default=1)
    t.add_argument("--width", type=_num("--width", int, positive=True), default=128, help="head width (DG: 128)")
    t.add_argument("--depth", type=_num("--depth", int, positive=True), default=2, help="head depth (DG: 2)")
    t.add_argument("--batch", type=_num("--batch", int, positive=True), default=128)
    t.add_argument("--epochs", type=_num("--epochs", int, positive=True), default=50)
    t.add_argument("--lr", type=_num("--lr", positive=True), default=3e-4)
    t.add_argument("--weight-decay", type=_num("--weight-decay", nonneg=True), default=1e-7)
    t.add_argument("--num-data", "--num-images", dest="num_data", type=_num("--num-data", int, positive=True),
                   default=None,
                   help="use at most this many real and this many generated images (DG: 50000)")
    _flag(t, "--cond", "class-conditional discriminator (labels of the dataset and the sample set)")
    t.add_argument("--seed", type=_num("--seed", int, nonneg=True), default=0)
    t.add_argument("--snapshot-epochs", type=_num("--snapshot-epochs", int, nonneg=True), default=10,
                   help="write discriminator-snapshot-XXXXXX.pt every this many epochs (0: none)")
    t.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/training-state.pt if present")
    t.add_argument("--threads", type=_num("--threads", int, positive=True), default=None,
                   help="CPU threads for torch (default: torch's choice)")

    g = sub.add_parser("generate", help="sample with Discriminator Guidance (EDM-G++) into a sample set npz")
    g.add_argument("--network", required=True, help="network checkpoint (.pt of aot, or an EDM .pkl)")
    g.add_argument("--discriminator", required=True, help="discriminator.pt of `aot.dg train`, or DG's head")
    g.add_argument("--feature-extractor", default=None,
                   help="ADM classifier for DG's bare heads (overrides the path stored in our files)")
    g.add_argument("--seeds", required=True, help="seeds, e.g. 0-49999")
    g.add_argument("--out", required=True, help="output .npz")
    g.add_argument("--steps", "--num-steps", dest="num_steps", type=_num("--steps", int), default=18)
    g.add_argument("--rho", type=_num("--rho"), default=7.0)
    g.add_argument("--sigma-min", type=_num("--sigma-min"), default=0.002)
    g.add_argument("--sigma-max", type=_num("--sigma-max"), default=80.0)
    g.add_argument("--S-churn", dest="S_churn", type=_num("--S-churn"), default=0.0)
    g.add_argument("--S-min", dest="S_min", type=_num("--S-min"), default=0.0)
    g.add_argument("--S-max", dest="S_max", type=_num("--S-max"), default=float("inf"))
    g.add_argument("--S-noise", dest="S_noise", type=_num("--S-noise"), default=1.0)
    g.add_argument("--dg-weight-1st-order", type=_num("--dg-weight-1st-order", nonneg=True), default=2.0)
    g.add_argument("--dg-weight-2nd-order", type=_num("--dg-weight-2nd-order", nonneg=True), default=0.0)
    g.add_argument("--time-min", type=_num("--time-min", nonneg=True), default=0.01)
    g.add_argument("--time-max", type=_num("--time-max", nonneg=True), default=1.0)
    _flag(g, "--boosting", "DG's boosting of low log-ratio samples")
    g.add_argument("--solver", default="heun", help="heun only (DG's EDM-G++ sampler is EDM's Heun sampler)")
    g.add_argument("--model-name", default=None, help="model name recorded in the sample set's meta")
    g.add_argument("--threads", type=_num("--threads", int, positive=True), default=None,
                   help="CPU threads for torch (default: torch's choice)")
    g.add_argument("--batch", type=_num("--batch", int), default=256)
    g.add_argument("--class-labels", default="random", help="'random' (per seed) or a fixed class index")
    g.add_argument("--shard-size", type=_num("--shard-size", int), default=1000)
    g.add_argument("--grid", default=None, help="optional PNG grid of the first 64 images")
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    return p


def _load_training_data(args: argparse.Namespace):
    from .data import ImageFolderDataset, load_all
    from .generate import load_samples

    ds = ImageFolderDataset(args.data, use_labels=bool(args.cond), require_labels=bool(args.cond))
    samples = load_samples(args.samples)
    fake = samples["images"]
    if fake.ndim != 4:
        raise UserError(f"sample set {args.samples}: images have shape {list(fake.shape)}, expected [N, H, W, C]")
    fake = np.ascontiguousarray(fake.transpose(0, 3, 1, 2))
    if list(fake.shape[1:]) != [ds.num_channels, ds.resolution, ds.resolution]:
        raise UserError(f"sample set {args.samples} has images {list(fake.shape[1:])} (CHW), dataset {args.data} "
                        f"has {[ds.num_channels, ds.resolution, ds.resolution]}")
    fake_labels = samples["labels"].astype(np.int64)
    if args.cond and (fake_labels < 0).any():
        raise UserError(f"--cond: sample set {args.samples} has no class labels (labels -1: unconditional model)")
    if args.cond and ds.label_dim > 1000:
        raise UserError(f"--cond: dataset {args.data} has {ds.label_dim} classes; DG's head embeds at most 1000")
    real, real_labels = load_all(ds, progress=True)
    if args.num_data is not None:
        real, fake, fake_labels = real[: args.num_data], fake[: args.num_data], fake_labels[: args.num_data]
        real_labels = real_labels[: args.num_data] if real_labels is not None else None
    return real, (real_labels if args.cond else None), fake, (fake_labels if args.cond else None), ds


def _install_stop_handler() -> Callable[[], bool]:
    import signal

    flag = {"stop": False}

    def handler(signum, frame):
        flag["stop"] = True

    for sig in (signal.SIGTERM, getattr(signal, "SIGUSR1", None)):
        if sig is not None:
            try:
                signal.signal(sig, handler)
            except ValueError:  # not in the main thread
                pass
    return lambda: flag["stop"]


def cmd_train(args: argparse.Namespace) -> dict:
    from .generate import resolve_device
    from .errors import EXIT_PREEMPTED

    if args.aot:
        pool = args.pool_size or (2048 if args.cond else 512)
        if pool < args.batch or pool % args.batch:
            raise UserError(f"--pool-size {pool} must be a multiple of --batch {args.batch} (and at least as large)")
    else:
        pool = None
    device = resolve_device(args.device)
    real, real_labels, fake, fake_labels, ds = _load_training_data(args)
    extractor, extractor_path = None, None
    if args.feature_extractor != "scratch":
        extractor = load_feature_extractor(args.feature_extractor, ds.resolution, ds.num_channels)
        extractor_path = str(Path(args.feature_extractor).resolve())
        if extractor.feature_resolution != 8:
            raise UserError(f"feature extractor {args.feature_extractor} gives {extractor.feature_resolution}x"
                            f"{extractor.feature_resolution} features; DG's head expects 8x8")
    if real.shape[0] + fake.shape[0] < args.batch:
        raise UserError(f"--batch {args.batch} is larger than the {real.shape[0] + fake.shape[0]} training images")
    options = {"data": str(args.data), "samples": str(args.samples), "feature_extractor": args.feature_extractor,
               "num_data": args.num_data}
    stop = _install_stop_handler()
    result = train_discriminator(
        real, real_labels, fake, fake_labels, args.out, extractor=extractor, extractor_path=extractor_path,
        scratch_width=args.scratch_width, scratch_depth=args.scratch_depth, width=args.width, depth=args.depth,
        cond=args.cond, aot=args.aot, pool_size=pool, cost=args.cost, batch=args.batch, epochs=args.epochs,
        lr=args.lr, weight_decay=args.weight_decay, seed=args.seed, device=device, resume=args.resume,
        snapshot_epochs=args.snapshot_epochs, options=options, stop=stop)
    if result.get("stopped"):
        raise SystemExit(EXIT_PREEMPTED)
    return result


def dg_sampler_key(aot: bool, num_steps: int, rho: float, S_churn: float = 0) -> str:
    """Workflow name of a guided sampler: `dgaot-heun-n18-rho7` / `dgplain-heun-n18-rho7`."""
    from .sampling import sampler_key

    return f"dg{'aot' if aot else 'plain'}-" + sampler_key("heun", num_steps, rho, S_churn)


def cmd_generate(args: argparse.Namespace) -> dict | None:
    import contextlib
    import signal

    from .checkpoints import load_any_network
    from .generate import (check_class_labels, check_seeds, model_meta, parse_class_labels, resolve_device,
                           run_generation, sampler_meta)
    from .errors import EXIT_PREEMPTED
    from .keys import parse_int_list

    if args.solver != "heun":
        raise UserError(f"--solver {args.solver}: Discriminator Guidance runs EDM's Heun sampler only (heun)")
    if Path(args.out).suffix != ".npz":
        raise UserError(f"--out {args.out} must end in .npz")
    if args.grid is not None and Path(args.grid).suffix.lower() != ".png":
        raise UserError(f"--grid {args.grid} must end in .png")
    if args.num_steps < 2:
        raise UserError(f"--steps must be at least 2, got {args.num_steps}")
    if not args.rho > 0 or not args.sigma_min > 0 or not args.sigma_max > args.sigma_min:
        raise UserError("--rho and --sigma-min must be positive and --sigma-max larger than --sigma-min")
    if args.S_churn < 0 or args.S_noise < 0 or args.S_min < 0 or args.S_max < args.S_min:
        raise UserError("--S-churn, --S-noise, --S-min must not be negative and --S-max not below --S-min")
    if not args.time_min <= args.time_max:
        raise UserError(f"--time-min ({args.time_min}) must not exceed --time-max ({args.time_max})")
    if args.batch <= 0 or args.shard_size <= 0:
        raise UserError("--batch and --shard-size must be positive")
    seeds = check_seeds(parse_int_list(args.seeds, "--seeds"))
    class_labels = parse_class_labels(args.class_labels)
    device = resolve_device(args.device)

    net, ckpt_meta = load_any_network(args.network, device="cpu")
    check_class_labels(net, class_labels, what=f"network {args.network}")
    disc, disc_meta = load_discriminator(args.discriminator, args.feature_extractor, int(net.img_resolution),
                                         int(net.img_channels))
    if disc.condition and not int(getattr(net, "label_dim", 0) or 0):
        raise UserError(f"discriminator {args.discriminator} is class-conditional but network {args.network} is not")
    if disc.feature_extractor.image_size != int(net.img_resolution) or disc.feature_extractor.in_channels != int(net.img_channels):
        raise UserError(f"discriminator {args.discriminator} is for {disc.feature_extractor.in_channels}x"
                        f"{disc.feature_extractor.image_size}x{disc.feature_extractor.image_size} images, network "
                        f"{args.network} makes {net.img_channels}x{net.img_resolution}x{net.img_resolution}")
    for sig in (signal.SIGTERM, getattr(signal, "SIGUSR1", None)):
        if sig is not None:
            with contextlib.suppress(ValueError):
                signal.signal(sig, lambda s, f: (_ for _ in ()).throw(SystemExit(EXIT_PREEMPTED)))
    net, disc = net.to(device), disc.to(device)

    aot = bool(disc_meta.get("aot", False))
    guidance = {"method": "dg", "aot": aot, "discriminator": str(args.discriminator),
                "dg_weight_1st_order": float(args.dg_weight_1st_order),
                "dg_weight_2nd_order": float(args.dg_weight_2nd_order),
                "time_min": float(args.time_min), "time_max": float(args.time_max), "boosting": bool(args.boosting)}
    smeta = sampler_meta("heun", args.num_steps, args.rho, args.sigma_min, args.sigma_max, args.S_churn, args.S_min,
                         args.S_max, args.S_noise, class_labels, guidance=guidance)
    smeta["key"] = dg_sampler_key(aot, args.num_steps, args.rho, args.S_churn)
    mmeta = model_meta(args.network, ckpt_meta, net)
    if args.model_name:
        mmeta["name"] = args.model_name
    meta = {"model": mmeta, "sampler": smeta, "batch": args.batch,
            "shard_size": args.shard_size, "device": str(device),
            "discriminator": {"path": str(args.discriminator), **{k: v for k, v in disc_meta.items() if k != "stats"}}}
    sampler_kwargs = dict(discriminator=disc, num_steps=args.num_steps, sigma_min=args.sigma_min,
                          sigma_max=args.sigma_max, rho=args.rho, S_churn=args.S_churn, S_min=args.S_min,
                          S_max=args.S_max, S_noise=args.S_noise, dg_weight_1st_order=args.dg_weight_1st_order,
                          dg_weight_2nd_order=args.dg_weight_2nd_order, time_min=args.time_min,
                          time_max=args.time_max, boosting=bool(args.boosting))
    print(f"generating {len(seeds)} images with {smeta['key']} (NFE {smeta['nfe']}, DG weights "
          f"{args.dg_weight_1st_order}/{args.dg_weight_2nd_order}) from {args.network} on {device}", flush=True)
    return run_generation(net, args.out, seeds, sampler_fn=dg_sampler, sampler_kwargs=sampler_kwargs,
                          batch=args.batch, device=device, class_labels=class_labels, shard_size=args.shard_size,
                          meta=meta, fingerprint_extra={"discriminator": str(args.discriminator)}, grid=args.grid)


@cli_main
def main(argv: list[str] | None = None) -> Any:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.command == "train":
        return cmd_train(args)
    return cmd_generate(args)


if __name__ == "__main__":
    main()
