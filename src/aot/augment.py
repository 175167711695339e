"""EDM's non-leaking augmentation pipeline (Karras et al. 2022, Appendix F.2).

`AugmentPipe(images) -> (augmented images, augment_labels)` applies random geometric and colour
transformations, each with probability `p * multiplier`, and returns a label vector per image that
describes what was applied. The network is conditioned on these labels during training (and given
zeros at sampling time), so the augmentations do not leak into generated images.

The draws from torch's global random number generator are made in the same order as NVlabs/edm's
`training/augment.py`, so the same seed gives the same images and labels.

Default settings are the EDM CIFAR-10 recipe (`--augment=0.12` in EDM's train.py): x-flip, y-flip,
isotropic scaling, fractional rotation, anisotropic scaling and fractional translation, giving a
9-dim label laid out as

    [xflip, yflip, scale, cos(rot) - 1, sin(rot), aniso * cos(r), aniso * sin(r), tx, ty]

(EDM's class defaults are p=1 with every augmentation off; pass those explicitly if needed.)
"""

from __future__ import annotations

import numpy as np
import torch

# Low-pass filter of the 'sym6' wavelet, used for 2x up/downsampling around the geometric warp.
SYM6 = [0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
        0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
        -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148]

LABEL_NAMES_DEFAULT = ["xflip", "yflip", "scale", "rotate_cos_m1", "rotate_sin", "aniso_cos", "aniso_sin",
                       "translate_x", "translate_y"]


def _matrix(rows, device=None):
    """Stack a matrix whose entries are Python numbers or [N] tensors into [N, R, C] (or [R, C])."""
    entries = [e for row in rows for e in row]
    tensors = [e for e in entries if isinstance(e, torch.Tensor)]
    if not tensors:
        return torch.as_tensor(np.asarray(rows), dtype=torch.float32, device=device)
    ref = tensors[0]
    entries = [e if isinstance(e, torch.Tensor) else torch.full(ref.shape, float(e), device=ref.device) for e in entries]
    return torch.stack(entries, dim=-1).reshape(ref.shape + (len(rows), -1))


def translate2d(tx, ty, **kw):
    return _matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]], **kw)


def translate3d(tx, ty, tz, **kw):
    return _matrix([[1, 0, 0, tx], [0, 1, 0, ty], [0, 0, 1, tz], [0, 0, 0, 1]], **kw)


def scale2d(sx, sy, **kw):
    return _matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], **kw)


def scale3d(sx, sy, sz, **kw):
    return _matrix([[sx, 0, 0, 0], [0, sy, 0, 0], [0, 0, sz, 0], [0, 0, 0, 1]], **kw)


def rotate2d(theta, **kw):
    return _matrix([[torch.cos(theta), torch.sin(-theta), 0], [torch.sin(theta), torch.cos(theta), 0], [0, 0, 1]], **kw)


def rotate3d(v, theta, **kw):
    vx, vy, vz = v[..., 0], v[..., 1], v[..., 2]
    s, c = torch.sin(theta), torch.cos(theta)
    cc = 1 - c
    return _matrix([
        [vx * vx * cc + c, vx * vy * cc - vz * s, vx * vz * cc + vy * s, 0],
        [vy * vx * cc + vz * s, vy * vy * cc + c, vy * vz * cc - vx * s, 0],
        [vz * vx * cc - vy * s, vz * vy * cc + vx * s, vz * vz * cc + c, 0],
        [0, 0, 0, 1]], **kw)


def translate2d_inv(tx, ty, **kw):
    return translate2d(-tx, -ty, **kw)


def scale2d_inv(sx, sy, **kw):
    return scale2d(1 / sx, 1 / sy, **kw)


def rotate2d_inv(theta, **kw):
    return rotate2d(-theta, **kw)


class _Draws:
    """Random draws on the images' device, from `generator` (any device) or torch's global RNG."""

    def __init__(self, device, generator=None):
        self.device = device
        self.generator = generator
        self.source = device if generator is None else generator.device

    def rand(self, shape):
        return torch.rand(shape, device=self.source, generator=self.generator).to(self.device)

    def randn(self, shape):
        return torch.randn(shape, device=self.source, generator=self.generator).to(self.device)

    def randint(self, high, shape):
        return torch.randint(high, shape, device=self.source, generator=self.generator).to(self.device)

    def gate(self, values, prob, shape):
        """Keep `values` where a uniform draw is below `prob`, zero elsewhere."""
        return torch.where(self.rand(shape) < prob, values, torch.zeros_like(values))


class AugmentPipe:
    """Augmentation pipeline with EDM's parameters; `pipe(images) -> (images, labels [N, D])`.

    Images are float NCHW (any range; EDM uses [-1, 1]); colour transforms need 1 or 3 channels.
    """

    def __init__(self, p=0.12,
                 xflip=1e8, yflip=1, rotate_int=0, translate_int=0, translate_int_max=0.125,
                 scale=1, rotate_frac=1, aniso=1, translate_frac=1, scale_std=0.2, rotate_frac_max=1,
                 aniso_std=0.2, aniso_rotate_prob=0.5, translate_frac_std=0.125,
                 brightness=0, contrast=0, lumaflip=0, hue=0, saturation=0, brightness_std=0.2,
                 contrast_std=0.5, hue_max=1, saturation_std=1):
        self.init_kwargs = dict(
            p=p, xflip=xflip, yflip=yflip, rotate_int=rotate_int, translate_int=translate_int,
            translate_int_max=translate_int_max, scale=scale, rotate_frac=rotate_frac, aniso=aniso,
            translate_frac=translate_frac, scale_std=scale_std, rotate_frac_max=rotate_frac_max, aniso_std=aniso_std,
            aniso_rotate_prob=aniso_rotate_prob, translate_frac_std=translate_frac_std, brightness=brightness,
            contrast=contrast, lumaflip=lumaflip, hue=hue, saturation=saturation, brightness_std=brightness_std,
            contrast_std=contrast_std, hue_max=hue_max, saturation_std=saturation_std)
        self.init_kwargs = {k: float(v) for k, v in self.init_kwargs.items()}
        for key, value in self.init_kwargs.items():
            setattr(self, key, value)

    @property
    def label_dim(self) -> int:
        """Length of the augment label vector for these settings (9 for the default recipe)."""
        return (int(self.xflip > 0) + int(self.yflip > 0) + 2 * int(self.rotate_int > 0)
                + 2 * int(self.translate_int > 0) + int(self.scale > 0) + 2 * int(self.rotate_frac > 0)
                + 2 * int(self.aniso > 0) + 2 * int(self.translate_frac > 0) + int(self.brightness > 0)
                + int(self.contrast > 0) + int(self.lumaflip > 0) + 2 * int(self.hue > 0) + int(self.saturation > 0))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v:g}" for k, v in self.init_kwargs.items())
        return f"AugmentPipe({args})"

    def __call__(self, images, generator: torch.Generator | None = None):  # EDM port
        """Augment float NCHW `images`; random draws come from `generator` if given (else torch's RNG)."""
        N, C, H, W = images.shape
        device = images.device
        rng = _Draws(device, generator)
        labels = [torch.zeros([N, 0], device=device)]
        p = self.p

        # Pixel blitting.
        if self.xflip > 0:
            w = rng.gate(rng.randint(2, [N, 1, 1, 1]), self.xflip * p, [N, 1, 1, 1])
            images = torch.where(w == 1, images.flip(3), images)
            labels.append(w)
        if self.yflip > 0:
            w = rng.gate(rng.randint(2, [N, 1, 1, 1]), self.yflip * p, [N, 1, 1, 1])
            images = torch.where(w == 1, images.flip(2), images)
            labels.append(w)
        if self.rotate_int > 0:
            w = rng.gate(rng.randint(4, [N, 1, 1, 1]), self.rotate_int * p, [N, 1, 1, 1])
            images = torch.where((w == 1) | (w == 2), images.flip(3), images)
            images = torch.where((w == 2) | (w == 3), images.flip(2), images)
            images = torch.where((w == 1) | (w == 3), images.transpose(2, 3), images)
            labels += [(w == 1) | (w == 2), (w == 2) | (w == 3)]
        if self.translate_int > 0:
            w = rng.gate(rng.rand([2, N, 1, 1, 1]) * 2 - 1, self.translate_int * p, [1, N, 1, 1, 1])
            tx = w[0].mul(W * self.translate_int_max).round().to(torch.int64)
            ty = w[1].mul(H * self.translate_int_max).round().to(torch.int64)
            b, c, y, x = torch.meshgrid(*(torch.arange(n, device=device) for n in images.shape), indexing="ij")
            x = W - 1 - (W - 1 - (x - tx) % (W * 2 - 2)).abs()  # reflect at the borders
            y = H - 1 - (H - 1 - (y + ty) % (H * 2 - 2)).abs()
            images = images.flatten()[(((b * C) + c) * H + y) * W + x]
            labels += [tx.div(W * self.translate_int_max), ty.div(H * self.translate_int_max)]

        # Parameters of the geometric transformation (inverse, in pixel coordinates).
        eye3 = torch.eye(3, device=device)
        G_inv = eye3
        if self.scale > 0:
            w = rng.gate(rng.randn([N]), self.scale * p, [N])
            s = w.mul(self.scale_std).exp2()
            G_inv = G_inv @ scale2d_inv(s, s)
            labels.append(w)
        if self.rotate_frac > 0:
            w = (rng.rand([N]) * 2 - 1) * (np.pi * self.rotate_frac_max)
            w = rng.gate(w, self.rotate_frac * p, [N])
            G_inv = G_inv @ rotate2d_inv(-w)
            labels += [w.cos() - 1, w.sin()]
        if self.aniso > 0:
            w = rng.randn([N])
            r = (rng.rand([N]) * 2 - 1) * np.pi
            w = rng.gate(w, self.aniso * p, [N])
            r = rng.gate(r, self.aniso_rotate_prob, [N])
            s = w.mul(self.aniso_std).exp2()
            G_inv = G_inv @ rotate2d_inv(r) @ scale2d_inv(s, 1 / s) @ rotate2d_inv(-r)
            labels += [w * r.cos(), w * r.sin()]
        if self.translate_frac > 0:
            w = rng.gate(rng.randn([2, N]), self.translate_frac * p, [1, N])
            G_inv = G_inv @ translate2d_inv(w[0].mul(W * self.translate_frac_std), w[1].mul(H * self.translate_frac_std))
            labels += [w[0], w[1]]

        if G_inv is not eye3:
            images = self._warp(images, G_inv)

        # Colour transformation (4x4 homogeneous matrix acting on RGB).
        eye4 = torch.eye(4, device=device)
        M = eye4
        luma = torch.as_tensor(np.asarray([1, 1, 1, 0]) / np.sqrt(3), dtype=torch.float32, device=device)
        luma_outer = torch.outer(luma, luma)
        if self.brightness > 0:
            w = rng.gate(rng.randn([N]), self.brightness * p, [N])
            b = w * self.brightness_std
            M = translate3d(b, b, b) @ M
            labels.append(w)
        if self.contrast > 0:
            w = rng.gate(rng.randn([N]), self.contrast * p, [N])
            c = w.mul(self.contrast_std).exp2()
            M = scale3d(c, c, c) @ M
            labels.append(w)
        if self.lumaflip > 0:
            w = rng.gate(rng.randint(2, [N, 1, 1]), self.lumaflip * p, [N, 1, 1])
            M = (eye4 - 2 * luma_outer * w) @ M
            labels.append(w)
        if self.hue > 0:
            w = (rng.rand([N]) * 2 - 1) * (np.pi * self.hue_max)
            w = rng.gate(w, self.hue * p, [N])
            M = rotate3d(luma, w) @ M
            labels += [w.cos() - 1, w.sin()]
        if self.saturation > 0:
            w = rng.gate(rng.randn([N, 1, 1]), self.saturation * p, [N, 1, 1])
            M = (luma_outer + (eye4 - luma_outer) * w.mul(self.saturation_std).exp2()) @ M
            labels.append(w)

        if M is not eye4:
            flat = images.reshape([N, C, H * W])
            if C == 3:
                flat = M[:, :3, :3] @ flat + M[:, :3, 3:]
            elif C == 1:
                M = M[:, :3, :].mean(dim=1, keepdim=True)
                flat = flat * M[:, :, :3].sum(dim=2, keepdim=True) + M[:, :, 3:]
            else:
                raise ValueError(f"colour augmentation needs 1 or 3 channels, got {C}")
            images = flat.reshape([N, C, H, W])

        labels = torch.cat([t.to(torch.float32).reshape(N, -1) for t in labels], dim=1)
        return images, labels

    @staticmethod
    def _warp(images, G_inv):
        """Apply the per-image affine map G_inv with 2x supersampling and reflect padding."""
        N, C, H, W = images.shape
        device = images.device
        cx, cy = (W - 1) / 2, (H - 1) / 2
        corners = _matrix([[-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1]], device=device)  # [idx, xyz]
        corners = G_inv @ corners.t()  # [N, xyz, idx]
        Hz = np.asarray(SYM6, dtype=np.float32)
        Hz_pad = len(Hz) // 4
        margin = corners[:, :2, :].permute(1, 0, 2).flatten(1)  # [xy, N * idx]
        margin = torch.cat([-margin, margin]).max(dim=1).values  # [x0, y0, x1, y1]
        margin = margin + torch.as_tensor([Hz_pad * 2 - cx, Hz_pad * 2 - cy] * 2, dtype=torch.float32, device=device)
        margin = margin.max(torch.zeros(4, device=device))
        margin = margin.min(torch.as_tensor([W - 1, H - 1] * 2, dtype=torch.float32, device=device))
        mx0, my0, mx1, my1 = margin.ceil().to(torch.int32)

        # Pad with reflection and move the origin accordingly.
        images = torch.nn.functional.pad(input=images, pad=[mx0, mx1, my0, my1], mode="reflect")
        G_inv = translate2d((mx0 - mx1) / 2, (my0 - my1) / 2) @ G_inv

        # Upsample by 2 with the wavelet filter.
        weight = torch.as_tensor(Hz[None, None, ::-1].copy(), dtype=images.dtype, device=device).tile([images.shape[1], 1, 1])
        pad = (len(Hz) + 1) // 2
        images = torch.stack([images, torch.zeros_like(images)], dim=4).reshape(N, C, images.shape[2], -1)[:, :, :, :-1]
        images = torch.nn.functional.conv2d(images, weight.unsqueeze(2), groups=images.shape[1], padding=[0, pad])
        images = torch.stack([images, torch.zeros_like(images)], dim=3).reshape(N, C, -1, images.shape[3])[:, :, :-1, :]
        images = torch.nn.functional.conv2d(images, weight.unsqueeze(3), groups=images.shape[1], padding=[pad, 0])
        G_inv = scale2d(2, 2, device=device) @ G_inv @ scale2d_inv(2, 2, device=device)
        G_inv = translate2d(-0.5, -0.5, device=device) @ G_inv @ translate2d_inv(-0.5, -0.5, device=device)

        # Resample.
        shape = [N, C, (H + Hz_pad * 2) * 2, (W + Hz_pad * 2) * 2]
        G_inv = (scale2d(2 / images.shape[3], 2 / images.shape[2], device=device) @ G_inv
                 @ scale2d_inv(2 / shape[3], 2 / shape[2], device=device))
        grid = torch.nn.functional.affine_grid(theta=G_inv[:, :2, :], size=shape, align_corners=False)
        images = torch.nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

        # Downsample by 2 and crop.
        weight = torch.as_tensor(Hz[None, None, :], dtype=images.dtype, device=device).tile([images.shape[1], 1, 1])
        pad = (len(Hz) - 1) // 2
        images = torch.nn.functional.conv2d(images, weight.unsqueeze(2), groups=images.shape[1], stride=[1, 2],
                                            padding=[0, pad])[:, :, :, Hz_pad:-Hz_pad]
        images = torch.nn.functional.conv2d(images, weight.unsqueeze(3), groups=images.shape[1], stride=[2, 1],
                                            padding=[pad, 0])[:, :, Hz_pad:-Hz_pad, :]
        return images


def edm_augment_pipe(p: float = 0.12) -> AugmentPipe:
    """The pipeline of EDM's train.py for `--augment=p` (the paper's CIFAR-10 setting is p = 0.12)."""
    return AugmentPipe(p=p, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)

