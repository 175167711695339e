"""Network architectures and preconditioners, compatible with NVlabs/edm.

The classes below take the same constructor keyword arguments as EDM's `training/networks.py`,
produce identical `state_dict()` keys and shapes, consume the random number generator in the same
order during initialisation and compute the same forward pass. A network trained by EDM can
therefore be loaded here (see `aot.checkpoints.load_edm_pickle`) and vice versa.

Architectures: `SongUNet` (DDPM++ / NCSN++) and `DhariwalUNet` (ADM).
Preconditioners: `VPPrecond`, `VEPrecond`, `EDMPrecond`. Every preconditioner keeps its
constructor arguments in `.init_kwargs` (plain Python values), and `build_network(class_name,
init_kwargs)` constructs it again without any pickled code.

This module depends only on `torch` and `numpy` and is self-contained on purpose.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch.nn.functional import silu

__all__ = [
    "Linear", "Conv2d", "GroupNorm", "UNetBlock", "PositionalEmbedding", "FourierEmbedding",
    "SongUNet", "DhariwalUNet", "VPPrecond", "VEPrecond", "EDMPrecond",
    "PRECONDITIONERS", "ARCHITECTURES", "build_network", "plain_value",
]

# ----------------------------------------------------------------------------------------------
# Weight initialisation (the same draws, in the same order, as EDM).


def weight_init(shape, mode, fan_in, fan_out):
    if mode == "xavier_uniform":
        return np.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == "xavier_normal":
        return np.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == "kaiming_uniform":
        return np.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == "kaiming_normal":
        return np.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f"unknown weight init mode {mode!r}")


# ----------------------------------------------------------------------------------------------
# Layers.


class Linear(torch.nn.Module):
    """Fully connected layer with EDM's initialisation options."""

    def __init__(self, in_features, out_features, bias=True, init_mode="kaiming_normal",
                 init_weight=1, init_bias=0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = torch.nn.Parameter(weight_init([out_features, in_features], **fans) * init_weight)
        self.bias = torch.nn.Parameter(weight_init([out_features], **fans) * init_bias) if bias else None

    def forward(self, x):
        out = x @ self.weight.to(x.dtype).t()
        if self.bias is not None:
            out = out.add_(self.bias.to(x.dtype))
        return out


class Conv2d(torch.nn.Module):
    """2-D convolution with optional FIR up/downsampling by 2 (kernel 0 = resampling only)."""

    def __init__(self, in_channels, out_channels, kernel, bias=True, up=False, down=False,
                 resample_filter=[1, 1], fused_resample=False, init_mode="kaiming_normal",
                 init_weight=1, init_bias=0):
        if up and down:
            raise ValueError("Conv2d cannot both upsample and downsample")
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        fans = dict(mode=init_mode, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel)
        self.weight = (torch.nn.Parameter(weight_init([out_channels, in_channels, kernel, kernel], **fans) * init_weight)
                       if kernel else None)
        self.bias = torch.nn.Parameter(weight_init([out_channels], **fans) * init_bias) if kernel and bias else None
        taps = torch.as_tensor(resample_filter, dtype=torch.float32)
        fir = torch.outer(taps, taps)[None, None] / taps.sum().square()
        self.register_buffer("resample_filter", fir if (up or down) else None)

    def forward(self, x):
        conv2d = torch.nn.functional.conv2d
        w = None if self.weight is None else self.weight.to(x.dtype)
        b = None if self.bias is None else self.bias.to(x.dtype)
        f = None if self.resample_filter is None else self.resample_filter.to(x.dtype)
        w_pad = 0 if w is None else w.shape[-1] // 2
        f_pad = 0 if f is None else (f.shape[-1] - 1) // 2

        if self.fused_resample and self.up and w is not None:
            x = torch.nn.functional.conv_transpose2d(x, f.mul(4).tile([self.in_channels, 1, 1, 1]),
                                                     groups=self.in_channels, stride=2, padding=max(f_pad - w_pad, 0))
            x = conv2d(x, w, padding=max(w_pad - f_pad, 0))
        elif self.fused_resample and self.down and w is not None:
            x = conv2d(x, w, padding=w_pad + f_pad)
            x = conv2d(x, f.tile([self.out_channels, 1, 1, 1]), groups=self.out_channels, stride=2)
        else:
            if self.up:
                x = torch.nn.functional.conv_transpose2d(x, f.mul(4).tile([self.in_channels, 1, 1, 1]),
                                                         groups=self.in_channels, stride=2, padding=f_pad)
            if self.down:
                x = conv2d(x, f.tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2, padding=f_pad)
            if w is not None:
                x = conv2d(x, w, padding=w_pad)
        if b is not None:
            x = x.add_(b.reshape(1, -1, 1, 1))
        return x


class GroupNorm(torch.nn.Module):
    """Group normalisation whose group count shrinks for narrow layers (>= 4 channels per group)."""

    def __init__(self, num_channels, num_groups=32, min_channels_per_group=4, eps=1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(num_channels))
        self.bias = torch.nn.Parameter(torch.zeros(num_channels))

    def forward(self, x):
        return torch.nn.functional.group_norm(x, num_groups=self.num_groups, weight=self.weight.to(x.dtype),
                                              bias=self.bias.to(x.dtype), eps=self.eps)


def attention_weights(q, k):
    """softmax over keys of q^T k / sqrt(C), evaluated in float32, returned in q's dtype."""
    scaled_k = k / np.sqrt(k.shape[1])
    logits = torch.einsum("ncq,nck->nqk", q.to(torch.float32), scaled_k.to(torch.float32))
    return logits.softmax(dim=2).to(q.dtype)


class UNetBlock(torch.nn.Module):
    """Residual block with optional up/downsampling and self-attention (DDPM++, NCSN++ and ADM)."""

    def __init__(self, in_channels, out_channels, emb_channels, up=False, down=False, attention=False,
                 num_heads=None, channels_per_head=64, dropout=0, skip_scale=1, eps=1e-5,
                 resample_filter=[1, 1], resample_proj=False, adaptive_scale=True,
                 init=dict(), init_zero=dict(init_weight=0), init_attn=None):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.emb_channels = emb_channels
        if not attention:
            self.num_heads = 0
        else:
            self.num_heads = num_heads if num_heads is not None else out_channels // channels_per_head
        self.dropout = dropout
        self.skip_scale = skip_scale
        self.adaptive_scale = adaptive_scale

        self.norm0 = GroupNorm(num_channels=in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels=in_channels, out_channels=out_channels, kernel=3, up=up, down=down,
                            resample_filter=resample_filter, **init)
        self.affine = Linear(in_features=emb_channels, out_features=out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(num_channels=out_channels, eps=eps)
        self.conv1 = Conv2d(in_channels=out_channels, out_channels=out_channels, kernel=3, **init_zero)

        self.skip = None
        if out_channels != in_channels or up or down:
            skip_kernel = 1 if (resample_proj or out_channels != in_channels) else 0
            self.skip = Conv2d(in_channels=in_channels, out_channels=out_channels, kernel=skip_kernel, up=up, down=down,
                               resample_filter=resample_filter, **init)

        if self.num_heads:
            self.norm2 = GroupNorm(num_channels=out_channels, eps=eps)
            self.qkv = Conv2d(in_channels=out_channels, out_channels=out_channels * 3, kernel=1,
                              **(init if init_attn is None else init_attn))
            self.proj = Conv2d(in_channels=out_channels, out_channels=out_channels, kernel=1, **init_zero)

    def forward(self, x, emb):
        residual = x
        x = self.conv0(silu(self.norm0(x)))

        params = self.affine(emb)[:, :, None, None].to(x.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(chunks=2, dim=1)
            x = silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        else:
            x = silu(self.norm1(x.add_(params)))

        x = self.conv1(torch.nn.functional.dropout(x, p=self.dropout, training=self.training))
        x = x.add_(residual if self.skip is None else self.skip(residual))
        x = x * self.skip_scale

        if self.num_heads:
            n, c = x.shape[0], x.shape[1]
            qkv = self.qkv(self.norm2(x)).reshape(n * self.num_heads, c // self.num_heads, 3, -1)
            q, k, v = qkv.unbind(2)
            w = attention_weights(q, k)
            attended = torch.einsum("nqk,nck->ncq", w, v)
            x = self.proj(attended.reshape(*x.shape)).add_(x)
            x = x * self.skip_scale
        return x


class PositionalEmbedding(torch.nn.Module):
    """Sinusoidal timestep embedding (DDPM++, ADM): [cos, sin] of x times geometric frequencies."""

    def __init__(self, num_channels, max_positions=10000, endpoint=False):
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint

    def forward(self, x):
        half = self.num_channels // 2
        exponents = torch.arange(start=0, end=half, dtype=torch.float32, device=x.device)
        exponents = exponents / (half - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** exponents
        x = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(torch.nn.Module):
    """Random Fourier feature timestep embedding (NCSN++)."""

    def __init__(self, num_channels, scale=16):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x):
        x = torch.outer(x, (2 * np.pi * self.freqs).to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


# ----------------------------------------------------------------------------------------------
# Architectures.


class SongUNet(torch.nn.Module):
    """DDPM++ / NCSN++ U-Net of Song et al. (score-based SDEs), as configured in EDM.

    DDPM++: embedding_type='positional', channel_mult_noise=1, encoder_type='standard',
    decoder_type='standard', resample_filter=[1,1].
    NCSN++: embedding_type='fourier', channel_mult_noise=2, encoder_type='residual',
    decoder_type='standard', resample_filter=[1,3,3,1].
    """

    def __init__(self,
                 img_resolution,                  # Image resolution at input/output.
                 in_channels,                     # Number of colour channels at input.
                 out_channels,                    # Number of colour channels at output.
                 label_dim=0,                     # Number of class labels, 0 = unconditional.
                 augment_dim=0,                   # Augmentation label dimensionality, 0 = none.
                 model_channels=128,              # Base multiplier for the number of channels.
                 channel_mult=[1, 2, 2, 2],       # Per-resolution channel multipliers.
                 channel_mult_emb=4,              # Embedding width multiplier.
                 num_blocks=4,                    # Residual blocks per resolution.
                 attn_resolutions=[16],           # Resolutions with self-attention.
                 dropout=0.10,                    # Dropout probability of intermediate activations.
                 label_dropout=0,                 # Class label dropout (classifier-free guidance).
                 embedding_type="positional",     # 'positional' (DDPM++) or 'fourier' (NCSN++).
                 channel_mult_noise=1,            # Timestep embedding width: 1 (DDPM++), 2 (NCSN++).
                 encoder_type="standard",         # 'standard', 'skip' or 'residual' (NCSN++).
                 decoder_type="standard",         # 'standard' or 'skip'.
                 resample_filter=[1, 1],          # [1,1] (DDPM++) or [1,3,3,1] (NCSN++).
                 ):
        if embedding_type not in ("fourier", "positional"):
            raise ValueError(f"embedding_type must be 'fourier' or 'positional', got {embedding_type!r}")
        if encoder_type not in ("standard", "skip", "residual"):
            raise ValueError(f"encoder_type must be 'standard', 'skip' or 'residual', got {encoder_type!r}")
        if decoder_type not in ("standard", "skip"):
            raise ValueError(f"decoder_type must be 'standard' or 'skip', got {decoder_type!r}")
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = dict(init_mode="xavier_uniform")
        init_zero = dict(init_mode="xavier_uniform", init_weight=1e-5)
        init_attn = dict(init_mode="xavier_uniform", init_weight=np.sqrt(0.2))
        block_kwargs = dict(emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=np.sqrt(0.5),
                            eps=1e-6, resample_filter=resample_filter, resample_proj=True, adaptive_scale=False,
                            init=init, init_zero=init_zero, init_attn=init_attn)

        # Mapping network.
        if embedding_type == "positional":
            self.map_noise = PositionalEmbedding(num_channels=noise_channels, endpoint=True)
        else:
            self.map_noise = FourierEmbedding(num_channels=noise_channels)
        self.map_label = Linear(in_features=label_dim, out_features=noise_channels, **init) if label_dim else None
        self.map_augment = (Linear(in_features=augment_dim, out_features=noise_channels, bias=False, **init)
                            if augment_dim else None)
        self.map_layer0 = Linear(in_features=noise_channels, out_features=emb_channels, **init)
        self.map_layer1 = Linear(in_features=emb_channels, out_features=emb_channels, **init)

        # Encoder.
        self.enc = torch.nn.ModuleDict()
        cout = in_channels
        caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels
                self.enc[f"{res}x{res}_conv"] = Conv2d(in_channels=cin, out_channels=cout, kernel=3, **init)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(in_channels=cout, out_channels=cout, down=True, **block_kwargs)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(in_channels=caux, out_channels=caux, kernel=0, down=True,
                                                               resample_filter=resample_filter)
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(in_channels=caux, out_channels=cout, kernel=1, **init)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(in_channels=caux, out_channels=cout, kernel=3,
                                                                   down=True, resample_filter=resample_filter,
                                                                   fused_resample=True, **init)
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(in_channels=cin, out_channels=cout,
                                                                attention=(res in attn_resolutions), **block_kwargs)
        skips = [block.out_channels for name, block in self.enc.items() if "aux" not in name]

        # Decoder.
        self.dec = torch.nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(in_channels=cout, out_channels=cout, attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(in_channels=cout, out_channels=cout, **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(in_channels=cout, out_channels=cout, up=True, **block_kwargs)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(
                    in_channels=cin, out_channels=cout, attention=(idx == num_blocks and res in attn_resolutions),
                    **block_kwargs)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(in_channels=out_channels, out_channels=out_channels,
                                                             kernel=0, up=True, resample_filter=resample_filter)
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(num_channels=cout, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(in_channels=cout, out_channels=out_channels, kernel=3,
                                                           **init_zero)

        # Dispatch tables, so that forward() does not parse module names at every call.
        self._enc_kinds = [_song_block_kind(name) for name in self.enc.keys()]
        self._dec_kinds = [_song_block_kind(name) for name in self.dec.keys()]

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        # Mapping.
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(*emb.shape)  # [cos, sin] -> [sin, cos]
        if self.map_label is not None:
            labels = class_labels
            if self.training and self.label_dropout:
                keep = torch.rand([x.shape[0], 1], device=x.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels * np.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = silu(self.map_layer0(emb))
        emb = silu(self.map_layer1(emb))

        # Encoder.
        skips = []
        aux = x
        for kind, block in zip(self._enc_kinds, self.enc.values()):
            if kind == "aux_down":
                aux = block(aux)
            elif kind == "aux_skip":
                x = skips[-1] = x + block(aux)
            elif kind == "aux_residual":
                x = skips[-1] = aux = (x + block(aux)) / np.sqrt(2)
            else:
                x = block(x, emb) if kind == "block" else block(x)
                skips.append(x)

        # Decoder.
        aux = None
        tmp = None
        for kind, block in zip(self._dec_kinds, self.dec.values()):
            if kind == "aux_up":
                aux = block(aux)
            elif kind == "aux_norm":
                tmp = block(x)
            elif kind == "aux_conv":
                tmp = block(silu(tmp))
                aux = tmp if aux is None else tmp + aux
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return aux


def _song_block_kind(name: str) -> str:
    for kind in ("aux_down", "aux_skip", "aux_residual", "aux_up", "aux_norm", "aux_conv"):
        if kind in name:
            return kind
    return "conv" if name.endswith("_conv") else "block"


class DhariwalUNet(torch.nn.Module):
    """ADM U-Net of Dhariwal & Nichol, as reimplemented in EDM."""

    def __init__(self,
                 img_resolution,                  # Image resolution at input/output.
                 in_channels,                     # Number of colour channels at input.
                 out_channels,                    # Number of colour channels at output.
                 label_dim=0,                     # Number of class labels, 0 = unconditional.
                 augment_dim=0,                   # Augmentation label dimensionality, 0 = none.
                 model_channels=192,              # Base multiplier for the number of channels.
                 channel_mult=[1, 2, 3, 4],       # Per-resolution channel multipliers.
                 channel_mult_emb=4,              # Embedding width multiplier.
                 num_blocks=3,                    # Residual blocks per resolution.
                 attn_resolutions=[32, 16, 8],    # Resolutions with self-attention.
                 dropout=0.10,                    # Dropout probability of intermediate activations.
                 label_dropout=0,                 # Class label dropout (classifier-free guidance).
                 ):
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        init = dict(init_mode="kaiming_uniform", init_weight=np.sqrt(1 / 3), init_bias=np.sqrt(1 / 3))
        init_zero = dict(init_mode="kaiming_uniform", init_weight=0, init_bias=0)
        block_kwargs = dict(emb_channels=emb_channels, channels_per_head=64, dropout=dropout, init=init,
                            init_zero=init_zero)

        # Mapping network.
        self.map_noise = PositionalEmbedding(num_channels=model_channels)
        self.map_augment = (Linear(in_features=augment_dim, out_features=model_channels, bias=False, **init_zero)
                            if augment_dim else None)
        self.map_layer0 = Linear(in_features=model_channels, out_features=emb_channels, **init)
        self.map_layer1 = Linear(in_features=emb_channels, out_features=emb_channels, **init)
        self.map_label = (Linear(in_features=label_dim, out_features=emb_channels, bias=False,
                                 init_mode="kaiming_normal", init_weight=np.sqrt(label_dim)) if label_dim else None)

        # Encoder.
        self.enc = torch.nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_conv"] = Conv2d(in_channels=cin, out_channels=cout, kernel=3, **init)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(in_channels=cout, out_channels=cout, down=True, **block_kwargs)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(in_channels=cin, out_channels=cout,
                                                                attention=(res in attn_resolutions), **block_kwargs)
        skips = [block.out_channels for block in self.enc.values()]

        # Decoder.
        self.dec = torch.nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(in_channels=cout, out_channels=cout, attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(in_channels=cout, out_channels=cout, **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(in_channels=cout, out_channels=cout, up=True, **block_kwargs)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(in_channels=cin, out_channels=cout,
                                                                attention=(res in attn_resolutions), **block_kwargs)
        self.out_norm = GroupNorm(num_channels=cout)
        self.out_conv = Conv2d(in_channels=cout, out_channels=out_channels, kernel=3, **init_zero)

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        # Mapping.
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = silu(self.map_layer0(emb))
        emb = self.map_layer1(emb)
        if self.map_label is not None:
            labels = class_labels
            if self.training and self.label_dropout:
                keep = torch.rand([x.shape[0], 1], device=x.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels)
        emb = silu(emb)

        # Encoder.
        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)

        # Decoder.
        for block in self.dec.values():
            if x.shape[1] != block.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return self.out_conv(silu(self.out_norm(x)))


ARCHITECTURES = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}

# ----------------------------------------------------------------------------------------------
# Preconditioners.


def plain_value(value):
    """Convert constructor arguments to plain Python values (safe for JSON and weights_only)."""
    if isinstance(value, dict):
        return {str(k): plain_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    if isinstance(value, (bool, str, type(None))):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, (int, float)):
        return value
    raise TypeError(f"constructor argument of type {type(value).__name__} cannot be recorded")


class _Precond(torch.nn.Module):
    """Shared plumbing of the preconditioners: argument record, label handling, model call."""

    def _record(self, kwargs: dict) -> None:
        self.init_kwargs = plain_value(kwargs)

    def _make_model(self, model_type, img_resolution, img_channels, label_dim, model_kwargs, out_channels=None):
        if model_type not in ARCHITECTURES:
            raise ValueError(f"unknown model_type {model_type!r} (expected one of {sorted(ARCHITECTURES)})")
        return ARCHITECTURES[model_type](img_resolution=img_resolution, in_channels=img_channels,
                                         out_channels=img_channels if out_channels is None else out_channels,
                                         label_dim=label_dim, **model_kwargs)

    def _inputs(self, x, sigma, class_labels, force_fp32):
        x = x.to(torch.float32)
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros([1, self.label_dim], device=x.device)
        else:
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        use_half = self.use_fp16 and not force_fp32 and x.device.type == "cuda"
        return x, sigma, class_labels, (torch.float16 if use_half else torch.float32)

    def _precondition(self, x, c_skip, c_out, c_in, c_noise, class_labels, dtype, model_kwargs):
        F_x = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=class_labels, **model_kwargs)
        autocast = torch.is_autocast_enabled(x.device.type)  # under autocast (bf16 training) F_x is the autocast dtype
        if F_x.dtype != dtype and not (autocast and F_x.dtype == torch.get_autocast_dtype(x.device.type)):
            raise RuntimeError(f"model returned {F_x.dtype}, expected {dtype}")
        return c_skip * x + c_out * F_x.to(torch.float32)

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def coefficients(self, sigma):
        """(c_skip, c_out, c_in, c_noise) for a float32 tensor of noise levels."""
        raise NotImplementedError


class VPPrecond(_Precond):
    """Variance preserving (VP) preconditioning of Song et al., as in EDM Table 1."""

    def __init__(self,
                 img_resolution,               # Image resolution.
                 img_channels,                 # Number of colour channels.
                 label_dim=0,                  # Number of class labels, 0 = unconditional.
                 use_fp16=False,               # Run the model in FP16 on CUDA?
                 beta_d=19.9,                  # Extent of the noise level schedule.
                 beta_min=0.1,                 # Initial slope of the noise level schedule.
                 M=1000,                       # Number of DDPM timesteps.
                 epsilon_t=1e-5,               # Smallest t used in training.
                 model_type="SongUNet",        # Class name of the underlying model.
                 **model_kwargs):              # Keyword arguments of the underlying model.
        super().__init__()
        self._record(dict(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim,
                          use_fp16=use_fp16, beta_d=beta_d, beta_min=beta_min, M=M, epsilon_t=epsilon_t,
                          model_type=model_type, **model_kwargs))
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.beta_d = beta_d
        self.beta_min = beta_min
        self.M = M
        self.epsilon_t = epsilon_t
        with torch.device("cpu"):  # plain numbers, also when built under torch.device('meta')
            self.sigma_min = float(self.sigma(epsilon_t))
            self.sigma_max = float(self.sigma(1))
        self.model = self._make_model(model_type, img_resolution, img_channels, label_dim, model_kwargs)

    def coefficients(self, sigma):
        c_skip = 1
        c_out = -sigma
        c_in = 1 / (sigma ** 2 + 1).sqrt()
        c_noise = (self.M - 1) * self.sigma_inv(sigma)
        return c_skip, c_out, c_in, c_noise

    def forward(self, x, sigma, class_labels=None, force_fp32=False, **model_kwargs):
        x, sigma, class_labels, dtype = self._inputs(x, sigma, class_labels, force_fp32)
        return self._precondition(x, *self.coefficients(sigma), class_labels, dtype, model_kwargs)

    def sigma(self, t):
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * (t ** 2) + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma):
        sigma = torch.as_tensor(sigma)
        return ((self.beta_min ** 2 + 2 * self.beta_d * (1 + sigma ** 2).log()).sqrt() - self.beta_min) / self.beta_d


class VEPrecond(_Precond):
    """Variance exploding (VE) preconditioning of Song et al., as in EDM Table 1."""

    def __init__(self,
                 img_resolution,               # Image resolution.
                 img_channels,                 # Number of colour channels.
                 label_dim=0,                  # Number of class labels, 0 = unconditional.
                 use_fp16=False,               # Run the model in FP16 on CUDA?
                 sigma_min=0.02,               # Smallest supported noise level.
                 sigma_max=100,                # Largest supported noise level.
                 model_type="SongUNet",        # Class name of the underlying model.
                 **model_kwargs):              # Keyword arguments of the underlying model.
        super().__init__()
        self._record(dict(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim,
                          use_fp16=use_fp16, sigma_min=sigma_min, sigma_max=sigma_max, model_type=model_type,
                          **model_kwargs))
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.model = self._make_model(model_type, img_resolution, img_channels, label_dim, model_kwargs)

    def coefficients(self, sigma):
        return 1, sigma, 1, (0.5 * sigma).log()

    def forward(self, x, sigma, class_labels=None, force_fp32=False, **model_kwargs):
        x, sigma, class_labels, dtype = self._inputs(x, sigma, class_labels, force_fp32)
        return self._precondition(x, *self.coefficients(sigma), class_labels, dtype, model_kwargs)


class EDMPrecond(_Precond):
    """EDM preconditioning (Karras et al. 2022, Table 1)."""

    def __init__(self,
                 img_resolution,               # Image resolution.
                 img_channels,                 # Number of colour channels.
                 label_dim=0,                  # Number of class labels, 0 = unconditional.
                 use_fp16=False,               # Run the model in FP16 on CUDA?
                 sigma_min=0,                  # Smallest supported noise level.
                 sigma_max=float("inf"),       # Largest supported noise level.
                 sigma_data=0.5,               # Expected standard deviation of the data.
                 model_type="DhariwalUNet",    # Class name of the underlying model.
                 **model_kwargs):              # Keyword arguments of the underlying model.
        super().__init__()
        self._record(dict(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim,
                          use_fp16=use_fp16, sigma_min=sigma_min, sigma_max=sigma_max, sigma_data=sigma_data,
                          model_type=model_type, **model_kwargs))
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.sigma_data = sigma_data
        self.model = self._make_model(model_type, img_resolution, img_channels, label_dim, model_kwargs)

    def coefficients(self, sigma):
        sd2 = self.sigma_data ** 2
        c_skip = sd2 / (sigma ** 2 + sd2)
        c_out = sigma * self.sigma_data / (sigma ** 2 + sd2).sqrt()
        c_in = 1 / (sd2 + sigma ** 2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise

    def forward(self, x, sigma, class_labels=None, force_fp32=False, **model_kwargs):
        x, sigma, class_labels, dtype = self._inputs(x, sigma, class_labels, force_fp32)
        return self._precondition(x, *self.coefficients(sigma), class_labels, dtype, model_kwargs)


PRECONDITIONERS = {"VPPrecond": VPPrecond, "VEPrecond": VEPrecond, "EDMPrecond": EDMPrecond}


def build_network(class_name: str, init_kwargs: dict) -> torch.nn.Module:
    """Construct a preconditioner (or bare architecture) from its class name and arguments."""
    classes = {**PRECONDITIONERS, **ARCHITECTURES}
    if class_name not in classes:
        raise ValueError(f"unknown network class {class_name!r} (expected one of {sorted(classes)})")
    return classes[class_name](**copy.deepcopy(dict(init_kwargs)))
