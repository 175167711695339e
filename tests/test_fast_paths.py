"""The speed settings on a CPU: bf16 autocast, TF32, channels_last and torch.compile in training
(`aot.train`), the fast sampler (`aot.sampling.FastDenoiser`) and the EDM networks' `use_fp16`.

Tolerances are in units of the format's unit roundoff u (bf16: 8 significant bits, u = 2^-8, about
0.4 %, "about 3 significant digits"; fp16: 11 bits, u = 2^-11). Every rounding of an input or a weight
to the short format perturbs it by at most u; products are accumulated in float32, so a network's
output moves by a few u in relative norm (measured here: 3.5 u for bf16 and for fp16 on a network
with random weights, 7.6 u for its gradients, 2.4 u for 6 Heun steps). The bounds below are about
twice those: 8 u for outputs and samples, 16 u for gradients. Each test also checks a lower bound
(differences well above float32 rounding) to prove that the short format was really used.

The networks get random weights (EDM initialises the output layers at or near zero, which would make
every precision give the same denoiser output).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import skip_or_fail

from aot.checkpoints import load_network
from aot.loss import EDMLoss
from aot.networks import build_network
from aot.sampling import FastDenoiser, edm_sampler

U_BF16 = 2.0 ** -8
U_FP16 = 2.0 ** -11
FP32_NOISE = 1e-5  # relative differences below this are float32 rounding (another kernel, another order)

# NCSN++ blocks as in the paper's network (Fourier embedding, residual encoder, FIR resampling,
# attention at 4x4, augment labels), at 8x8 with 16/32 channels.
NET = dict(img_resolution=8, img_channels=3, label_dim=0, model_type="SongUNet", embedding_type="fourier",
           encoder_type="residual", decoder_type="standard", channel_mult_noise=2, resample_filter=[1, 3, 3, 1],
           model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0, augment_dim=9)
ADM = dict(img_resolution=8, img_channels=3, label_dim=0, model_type="DhariwalUNet", model_channels=16,
           channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0, augment_dim=9)


def randomized(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every weight ~ N(0, 1/fan_in), every vector parameter shifted by N(0, 0.1^2)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
            else:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return net


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative difference of a to the reference b, in norm."""
    return float((a.double() - b.double()).norm() / b.double().norm())


def batch(n: int = 16, seed: int = 1):
    """Images, noise, noise levels from 0.05 to 20 and zero augment labels."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(n, 3, 8, 8, generator=g) * 0.5
    noise = torch.randn(n, 3, 8, 8, generator=g)
    sigma = torch.exp(torch.linspace(-3, 3, n)).reshape(-1, 1, 1, 1)
    return y, noise, sigma, torch.zeros(n, 9)


def have_compiler() -> None:
    if not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        skip_or_fail("torch.compile on a CPU needs a C++ compiler (inductor's C++ backend); none is on PATH")


# ------------------------------------------------------------------------------------------------
# bf16 autocast and channels_last on the training path: the EDM loss and its gradients


def loss_and_grads(net, bf16: bool, channels_last: bool = False, model=None):
    y, noise, sigma, aug = batch()
    if channels_last:
        y, noise = (t.contiguous(memory_format=torch.channels_last) for t in (y, noise))
    net.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = EDMLoss()(model or net, y, noise, augment_labels=aug, sigma=sigma)
    loss = loss.float()
    loss.sum().backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in net.parameters()])


@pytest.mark.parametrize("kwargs", [NET, ADM], ids=["ncsnpp", "adm"])
def test_bf16_autocast_loss_and_gradients_are_close_to_fp32(kwargs):
    net = randomized(build_network("EDMPrecond", kwargs)).train()
    loss32, grad32 = loss_and_grads(net, bf16=False)
    loss16, grad16 = loss_and_grads(net, bf16=True)
    assert torch.isfinite(loss16).all() and torch.isfinite(grad16).all()
    # The mean loss (what training minimises); single low-sigma losses are small differences of large
    # terms and are not compared one by one.
    assert abs(float(loss16.mean() - loss32.mean())) / float(loss32.mean()) < 8 * U_BF16
    assert FP32_NOISE < rel(grad16, grad32) < 16 * U_BF16
    # The denoiser's network output itself (F_x, before the exact float32 preconditioning).
    y, noise, sigma, aug = batch()
    c_skip, c_out, c_in, c_noise = net.coefficients(sigma)
    with torch.no_grad():
        f32 = net.model(c_in * (y + noise * sigma), c_noise.flatten(), None, augment_labels=aug)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            f16 = net.model(c_in * (y + noise * sigma), c_noise.flatten(), None, augment_labels=aug)
    assert f16.dtype == torch.bfloat16
    assert U_BF16 / 4 < rel(f16, f32) < 8 * U_BF16


def test_channels_last_training_step_is_fp32_close():
    net = randomized(build_network("EDMPrecond", NET)).train()
    loss32, grad32 = loss_and_grads(net, bf16=False)
    cl = build_network("EDMPrecond", NET).train()
    cl.load_state_dict(net.state_dict())
    cl = cl.to(memory_format=torch.channels_last)
    assert cl.model.enc["8x8_conv"].weight.is_contiguous(memory_format=torch.channels_last)
    loss_cl, grad_cl = loss_and_grads(cl, bf16=False, channels_last=True)
    assert rel(loss_cl, loss32) < FP32_NOISE and rel(grad_cl, grad32) < FP32_NOISE


# ------------------------------------------------------------------------------------------------
# The training loop with each setting: a few optimizer steps against the fp32 run

TRAIN = dict(arch="ddpmpp", cbase=8, cres=[1, 2], num_blocks=1, attn=[4], batch=32, pool_size=64, lr=2e-3,
             lr_rampup=1e-6, ema=0.0005, dropout=0.0, augment=0.12, tick=0.032, dump=100, snap=1000, device="cpu",
             threads=1, resume="never")
STEPS = 4


def train(outdir: Path, data: Path, **settings) -> tuple[list[float], dict]:
    """STEPS optimizer steps (one per tick); the per-step losses and the final EMA weights."""
    from aot.train import training_loop

    try:
        rc = training_loop(outdir=str(outdir), data=str(data), duration=STEPS * TRAIN["batch"] / 1e6,
                           **TRAIN, **settings)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    assert rc == 0
    losses = [json.loads(line)["loss"] for line in (outdir / "stats.jsonl").read_text().splitlines()]
    assert len(losses) == STEPS
    net, meta = load_network(outdir / "network-final.pt")
    assert all(meta["training_options"][k] == v for k, v in settings.items())
    return losses, {k: v.clone() for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def fp32_run(digits, tmp_path_factory):
    return train(tmp_path_factory.mktemp("fp32"), digits)


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def test_training_with_tf32_on_a_cpu_is_the_fp32_run(digits, fp32_run, tmp_path):
    """TF32 is a CUDA switch: on a CPU the run stays bit-identical to EDM's fp32 configuration."""
    losses, weights = train(tmp_path, digits, tf32=True)
    assert losses == fp32_run[0] and max_diff(weights, fp32_run[1]) == 0


def test_training_with_channels_last_is_fp32_close(digits, fp32_run, tmp_path):
    losses, weights = train(tmp_path, digits, channels_last=True)
    assert all(abs(a - b) <= FP32_NOISE * abs(b) for a, b in zip(losses, fp32_run[0]))
    # Adam divides each gradient by its running RMS, so float32 rounding differences in a near-zero
    # gradient move a weight by up to lr; EMA weights therefore agree to a small fraction of lr.
    assert max_diff(weights, fp32_run[1]) < TRAIN["lr"] * STEPS


def test_training_with_bf16_is_close_to_fp32(digits, fp32_run, tmp_path):
    losses, weights = train(tmp_path, digits, bf16=True)
    assert all(math.isfinite(x) for x in losses)
    assert all(abs(a - b) < 8 * U_BF16 * abs(b) for a, b in zip(losses, fp32_run[0]))
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert losses[1:] != fp32_run[0][1:], "bf16 autocast changed nothing: was it applied?"
    assert max_diff(weights, fp32_run[1]) < 2 * TRAIN["lr"] * STEPS  # Adam's step is at most about lr


@pytest.fixture(scope="module")
def inductor_cache(tmp_path_factory):
    """A private inductor cache: compiled from scratch (as in CI), out of reach of other processes
    compiling at the same time; yields the folder, where inductor's generated C++ lands."""
    have_compiler()
    from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

    folder = tmp_path_factory.mktemp("inductor")
    with temporary_cache_dir(str(folder)):
        yield folder


def compiled_kernels(folder: Path) -> int:
    return sum(1 for _ in folder.glob("**/*.cpp"))


@pytest.mark.slow
def test_training_with_compile_and_all_fast_settings(digits, fp32_run, inductor_cache, tmp_path):
    """The fast training configuration (torch.compile with inductor's C++ backend on a CPU, bf16
    autocast, channels_last, TF32) is bf16-close to EDM's fp32 run. Compiling the forward and backward
    passes from scratch takes minutes on a busy 2-core machine."""
    before = compiled_kernels(inductor_cache)
    losses, weights = train(tmp_path, digits, compile=True, bf16=True, channels_last=True, tf32=True)
    assert compiled_kernels(inductor_cache) > before, "no C++ kernel was generated: was the network compiled?"
    assert all(abs(a - b) < 8 * U_BF16 * abs(b) for a, b in zip(losses, fp32_run[0]))
    assert losses[1:] != fp32_run[0][1:]
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert max_diff(weights, fp32_run[1]) < 2 * TRAIN["lr"] * STEPS


# ------------------------------------------------------------------------------------------------
# Sampling: FastDenoiser (bf16 autocast + channels_last, optionally compiled) against fp32


@pytest.fixture(scope="module")
def sampling_net():
    return randomized(build_network("EDMPrecond", NET)).eval().requires_grad_(False)


def heun(net, steps: int = 6) -> torch.Tensor:
    latents = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return edm_sampler(net, latents, num_steps=steps)


def test_fast_sampler_is_bf16_close_to_fp32(sampling_net):
    ref = heun(sampling_net)
    fast = FastDenoiser(sampling_net)
    assert fast.net.model.inner.enc["8x8_conv"].weight.is_contiguous(memory_format=torch.channels_last)
    out = heun(fast)
    assert out.dtype == torch.float64 and torch.isfinite(out).all()
    assert U_BF16 / 4 < rel(out, ref) < 8 * U_BF16
    # The wrapped network is untouched (FastDenoiser works on a copy).
    assert torch.equal(heun(sampling_net), ref)


@pytest.mark.slow
def test_compiled_fast_sampler_matches_the_eager_one(sampling_net, inductor_cache):
    """torch.compile of the fast sampler's network on a CPU: the same images as eager bf16 within bf16
    rounding (inductor fuses and reorders operations; some intermediates stay in float32)."""
    eager = heun(FastDenoiser(sampling_net))
    compiled = FastDenoiser(sampling_net, compile=True)
    assert compiled.compiled
    before = compiled_kernels(inductor_cache)
    out = heun(compiled)
    assert compiled_kernels(inductor_cache) > before, "no C++ kernel was generated: was the network compiled?"
    assert torch.isfinite(out).all()
    assert rel(out, eager) < 8 * U_BF16 and rel(out, heun(sampling_net)) < 8 * U_BF16


# ------------------------------------------------------------------------------------------------
# use_fp16: EDM runs the U-Net in fp16 on CUDA only; on a CPU the flag changes nothing, while the
# U-Net itself runs in fp16 on a CPU too (forward and backward), within fp16 rounding of fp32.


@pytest.mark.parametrize("kwargs", [NET, ADM], ids=["ncsnpp", "adm"])
def test_use_fp16_network(kwargs):
    net = randomized(build_network("EDMPrecond", kwargs)).eval()
    half = build_network("EDMPrecond", dict(kwargs, use_fp16=True)).eval()
    half.load_state_dict(net.state_dict())
    y, noise, sigma, aug = batch()
    x = y + noise * sigma
    with torch.no_grad():
        ref = net(x, sigma, augment_labels=aug)
        assert torch.equal(half(x, sigma, augment_labels=aug), ref)  # CPU: the fp32 path, as in EDM
        c_skip, c_out, c_in, c_noise = half.coefficients(sigma)
        # The fp16 path the preconditioner takes on CUDA, here on the CPU.
        d16 = half._precondition(x, c_skip, c_out, c_in, c_noise, None, torch.float16, dict(augment_labels=aug))
        f32 = net.model(c_in * x, c_noise.flatten(), None, augment_labels=aug)
        f16 = half.model((c_in * x).half(), c_noise.flatten(), None, augment_labels=aug)
    assert d16.dtype == torch.float32 and f16.dtype == torch.float16
    assert U_FP16 / 4 < rel(f16, f32) < 8 * U_FP16
    assert rel(d16, ref) < 8 * U_FP16
    # Backward through the fp16 U-Net (EDM trains its ImageNet model this way).
    half.train()
    out = half.model((c_in * x).half(), c_noise.flatten(), None, augment_labels=aug)
    out.float().square().mean().backward()
    grads = [p.grad for p in half.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
