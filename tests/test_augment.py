"""aot.augment: EDM's augmentation pipeline (label layout, identities, determinism, golden outputs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from aot.augment import AugmentPipe, edm_augment_pipe

GOLDEN = Path(__file__).parent / "data" / "edm_augment_golden.pt"


def _images(n=8, c=3, res=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, res, res, generator=g) * 2 - 1


def test_defaults_are_the_edm_cifar_recipe():
    pipe = AugmentPipe()
    assert pipe.p == 0.12
    flips = (pipe.xflip, pipe.yflip, pipe.scale, pipe.rotate_frac, pipe.aniso, pipe.translate_frac)
    assert flips == (1e8, 1, 1, 1, 1, 1)
    assert (pipe.rotate_int, pipe.translate_int, pipe.brightness, pipe.hue) == (0, 0, 0, 0)
    assert pipe.label_dim == 9
    assert edm_augment_pipe(0.12).init_kwargs == pipe.init_kwargs
    assert all(isinstance(v, float) for v in pipe.init_kwargs.values())


def test_identity_and_zero_labels_when_p_is_zero():
    x = _images()
    torch.manual_seed(0)
    y, labels = AugmentPipe(p=0)(x)
    assert y.shape == x.shape and labels.shape == (8, 9)
    assert torch.equal(labels, torch.zeros(8, 9))
    assert torch.allclose(y, x, atol=1e-5)  # the (identity) warp is exact up to float32 rounding


def test_output_shape_and_label_dtype():
    x = _images(n=5, c=3, res=12)
    y, labels = AugmentPipe(p=1)(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert labels.shape == (5, 9) and labels.dtype == torch.float32


def test_xflip_only_label_layout():
    """xflip=1e8 makes the flip decision a fair coin; label column 0 says whether it happened."""
    x = _images(n=64)
    torch.manual_seed(3)
    y, labels = AugmentPipe(p=0.12, xflip=1e8, yflip=0, scale=0, rotate_frac=0, aniso=0, translate_frac=0)(x)
    assert labels.shape == (64, 1)
    flipped = labels[:, 0] == 1
    assert set(labels[:, 0].tolist()) <= {0.0, 1.0}
    assert 10 < int(flipped.sum()) < 54
    assert torch.equal(y[flipped], x[flipped].flip(3))
    assert torch.equal(y[~flipped], x[~flipped])


def test_yflip_and_rotation_label_columns():
    x = _images(n=32)
    pipe = AugmentPipe(p=1, xflip=0, yflip=1, scale=0, rotate_frac=1, aniso=0, translate_frac=0)
    torch.manual_seed(1)
    _, labels = pipe(x)
    assert labels.shape == (32, 3)
    yflip, cos_m1, sin = labels[:, 0], labels[:, 1], labels[:, 2]
    assert set(yflip.tolist()) <= {0.0, 1.0}
    # Columns 1-2 are (cos(theta) - 1, sin(theta)) of one angle.
    assert torch.allclose((cos_m1 + 1) ** 2 + sin ** 2, torch.ones(32), atol=1e-5)
    assert (cos_m1 <= 1e-7).all()


def test_recipe_label_layout_and_sign_of_translation():
    x = _images(n=16)
    torch.manual_seed(4)
    _, labels = AugmentPipe(p=1)(x)
    xflip, yflip, scale, rc, rs, ac, as_, tx, ty = labels.T
    assert set(xflip.tolist()) <= {0.0, 1.0} and set(yflip.tolist()) <= {0.0, 1.0}
    assert torch.allclose((rc + 1) ** 2 + rs ** 2, torch.ones(16), atol=1e-5)
    # With p=1 the continuous draws are (almost surely) nonzero.
    assert (scale != 0).all() and (tx != 0).all() and (ty != 0).all()
    # A pure integer-free translation: shift right by a whole pixel moves content right.
    img = torch.zeros(1, 1, 16, 16)
    img[0, 0, 8, 8] = 1
    pipe = AugmentPipe(p=1, xflip=0, yflip=0, scale=0, rotate_frac=0, aniso=0, translate_frac=1,
                       translate_frac_std=1 / 16)
    torch.manual_seed(0)
    out, lab = pipe(img)
    tx_pixels = lab[0, 0].item()  # std 1/16 of 16 px = 1 px per unit
    com_x = (out[0, 0].sum(0) * torch.arange(16.0)).sum() / out[0, 0].sum()
    assert com_x.item() == pytest.approx(8 + tx_pixels, abs=0.05)


def test_deterministic_under_seed():
    x = _images()
    torch.manual_seed(123)
    a = AugmentPipe(p=0.5)(x)
    torch.manual_seed(123)
    b = AugmentPipe(p=0.5)(x)
    torch.manual_seed(124)
    c = AugmentPipe(p=0.5)(x)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_matches_edm_golden():
    golden = torch.load(GOLDEN, map_location="cpu", weights_only=True)
    assert len(golden) >= 4
    for name, ref in golden.items():
        torch.manual_seed(ref["seed"])
        y, labels = AugmentPipe(**ref["kwargs"])(ref["x"])
        assert torch.allclose(labels, ref["labels"], atol=1e-6), name
        assert torch.allclose(y, ref["y"], atol=1e-5), name


def test_colour_needs_rgb_or_grey():
    with pytest.raises(ValueError, match="1 or 3 channels"):
        AugmentPipe(p=1, brightness=1)(torch.zeros(2, 2, 8, 8))


def test_generator_argument_gives_same_draws_as_global_rng():
    x = _images()
    torch.manual_seed(9)
    a = AugmentPipe(p=0.6)(x)
    g = torch.Generator().manual_seed(9)
    state = torch.get_rng_state()
    b = AugmentPipe(p=0.6)(x, generator=g)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
