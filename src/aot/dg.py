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

Command line:

    python -m aot.dg train --data DS.zip --samples GEN.npz --out DIR [--aot] [--cond] ...
    python -m aot.dg generate --network NET.pt --discriminator DIR/discriminator.pt --seeds 0-49999 --out X.npz

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
import torch.nn.functional as F

from .utils import (
    UserError,
    atomic_path,
    cli_main,
    environment_info,
    write_json_atomic,
    write_text_atomic,
)

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

    The density is proportional to sigma_vp(t)^2 / mean_vp(t)^2-weighted likelihood weighting of
    Song et al. (beta(t) / (1 - e^{-int beta})), inverted in closed form.
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
            x_hat = x_cur + (t_hat ** 2 - t_cur ** 2).sqrt() * s_noise * randn_like(x_cur)
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
