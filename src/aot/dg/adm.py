"""DG's ADM encoder: guided-diffusion's `EncoderUNetModel` ("half U-Net") with DG's forward.

`ADMEncoder` is both DG's feature extractor (ADM's pre-trained noisy classifier, e.g.
`32x32_classifier.pt`) and its discriminator head (the same architecture on the 8x8 features). It
is built as DG's `create_classifier` builds it (channel multipliers by image size, scale-shift
normalisation, residual down-sampling, attention pooling with 64 channels per head, optional class
embedding), so its `state_dict()` has DG's keys and shapes and DG's released files load unchanged.
Time inputs are VP times in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn


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
