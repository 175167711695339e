#!/usr/bin/env python
"""The GPU half of the performance benchmark (one H100/H200, under 8 minutes): prints one table and
writes JSON (default bench/results/gpu.json). Record results in bench/RESULTS.md with card and date.

    python bench/gpu.py [--quick]

Measured in one run, on the paper's network (NCSN++, EDM preconditioning, 32x32x3):
  peak       bf16 matmul FLOP/s of this GPU (8192^3 GEMMs), the denominator of "% of peak"
  flops      forward GFLOP per image (torch.utils.flop_counter)
  train      img/s of one optimizer step: EDM's configuration (fp32, eager, Adam) vs the fast one
             (bf16 autocast, TF32, channels_last, torch.compile, fused Adam)          target >= 1.5x
  sample     img/s of the Heun sampler at 35 NFE: fp32 eager vs bf16 + channels_last +
             torch.compile(mode="max-autotune", CUDA graphs)                          target >= 2x, >= 40 % of peak
  50k        projected minutes for 50,000 images at 35 NFE with the fast sampler     target < 4 min
  aot        training step time with AOT pools (N=512, B=32) over independent noise   target <= 1.01
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from aot.loss import EDMLoss  # noqa: E402
from aot.networks import build_network  # noqa: E402
from aot.pairing import PairPool  # noqa: E402
from aot.sampling import FastDenoiser, edm_sampler  # noqa: E402

PAPER_NET = dict(img_resolution=32, img_channels=3, label_dim=0, model_type="SongUNet", embedding_type="fourier",
                 encoder_type="residual", decoder_type="standard", channel_mult_noise=2,
                 resample_filter=[1, 3, 3, 1], model_channels=128, channel_mult=[2, 2, 2], dropout=0.13,
                 augment_dim=9)


def timed(fn, iters: int) -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / iters


def peak_bf16() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    timed(lambda: a @ b, 3)
    s = timed(lambda: a @ b, 20)
    return 2 * 8192 ** 3 / s


def forward_flops() -> float:
    from torch.utils.flop_counter import FlopCounterMode

    net = build_network("EDMPrecond", PAPER_NET).cuda().eval()
    x = torch.randn(8, 3, 32, 32, device="cuda")
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        net(x, torch.ones(8, device="cuda"))
    return fc.get_total_flops() / 8


def train_throughput(fast: bool, batch: int, iters: int) -> float:
    torch.backends.cuda.matmul.allow_tf32 = fast
    torch.backends.cudnn.allow_tf32 = fast
    net = build_network("EDMPrecond", PAPER_NET).cuda().train()
    if fast:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, fused=fast)
    model = torch.compile(net) if fast else net
    loss_fn = EDMLoss()
    fmt = torch.channels_last if fast else torch.contiguous_format
    y = torch.randn(batch, 3, 32, 32, device="cuda").contiguous(memory_format=fmt)
    n = torch.randn_like(y)
    aug = torch.zeros(batch, 9, device="cuda")

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=fast):
            loss = loss_fn(model, y, n, augment_labels=aug)
        loss.float().sum().backward()
        opt.step()

    for _ in range(3):
        step()
    return batch / timed(step, iters)


def sample_throughput(fast: bool, batch: int) -> float:
    torch.backends.cuda.matmul.allow_tf32 = fast
    torch.backends.cudnn.allow_tf32 = fast
    net = build_network("EDMPrecond", PAPER_NET).cuda().eval().requires_grad_(False)
    model = FastDenoiser(net, compile=True) if fast else net
    latents = torch.randn(batch, 3, 32, 32, device="cuda")
    with torch.no_grad():
        edm_sampler(model, latents, num_steps=18)  # compile / warm-up
        s = timed(lambda: edm_sampler(model, latents, num_steps=18), 2)
    return batch / s


def aot_overhead(batch_gpu: int = 32, pool: int = 512, iters: int = 48) -> dict:
    """Step time with AOT pools vs independent noise, same network, background pool building."""
    net = build_network("EDMPrecond", PAPER_NET).cuda().train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    loss_fn = EDMLoss()
    data = torch.rand(50_000, 3, 32, 32) * 2 - 1

    def draw(k, g):
        idx = torch.randint(0, data.shape[0], (pool,), generator=g)
        return data[idx], None, torch.zeros(pool, 9)

    out = {}
    for mode in ("edm", "aot", "edm", "aot"):
        pp = PairPool(draw, pool_size=pool, batch_gpu=batch_gpu, aot=mode == "aot", seed=0, device="cuda")
        it = pp.batches()

        def step(it=it):
            y, n, _, a = next(it)
            opt.zero_grad(set_to_none=True)
            loss_fn(net, y, n, augment_labels=a).sum().backward()
            opt.step()

        for _ in range(16):
            step()
        out.setdefault(mode, []).append(timed(step, iters))
        pp.close()
    edm, aot = min(out["edm"]), min(out["aot"])
    return {"step_s_edm": edm, "step_s_aot": aot, "ratio": aot / edm}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu.json"))
    args = ap.parse_args()
    assert torch.cuda.is_available(), "bench/gpu.py needs a CUDA GPU"
    res = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    res["peak_bf16_flops"] = peak_bf16()
    res["forward_gflop_per_img"] = forward_flops() / 1e9
    batch = 128 if args.quick else 256
    res["train_img_s"] = {"edm_fp32_eager": train_throughput(False, batch, 10),
                          "fast": train_throughput(True, batch, 10)}
    sbatch = 512 if args.quick else 1024
    res["sample_img_s"] = {"edm_fp32_eager": sample_throughput(False, sbatch),
                           "fast": sample_throughput(True, sbatch)}
    fl = res["forward_gflop_per_img"] * 1e9
    res["sample_pct_peak"] = 100 * res["sample_img_s"]["fast"] * 35 * fl / res["peak_bf16_flops"]
    res["minutes_50k_35nfe"] = 50_000 / res["sample_img_s"]["fast"] / 60
    res["flop_floor_minutes_50k"] = 50_000 * 35 * fl / res["peak_bf16_flops"] / 60
    res["aot"] = aot_overhead()
    t, s = res["train_img_s"], res["sample_img_s"]
    rows = [
        ("device", res["device"], ""),
        ("bf16 peak (measured)", f"{res['peak_bf16_flops'] / 1e12:.0f} TFLOP/s", ""),
        ("forward cost", f"{res['forward_gflop_per_img']:.1f} GFLOP/img", "paper net"),
        ("train img/s EDM fp32 / fast", f"{t['edm_fp32_eager']:.0f} / {t['fast']:.0f}",
         f"{t['fast'] / t['edm_fp32_eager']:.2f}x (target >= 1.5x)"),
        ("sample img/s EDM fp32 / fast", f"{s['edm_fp32_eager']:.0f} / {s['fast']:.0f}",
         f"{s['fast'] / s['edm_fp32_eager']:.2f}x (target >= 2x)"),
        ("sampling % of bf16 peak", f"{res['sample_pct_peak']:.0f} %", "target >= 40 %"),
        ("50k images at 35 NFE", f"{res['minutes_50k_35nfe']:.1f} min",
         f"floor {res['flop_floor_minutes_50k']:.1f} min (target < 4)"),
        ("AOT step time ratio", f"{res['aot']['ratio']:.3f}", "target <= 1.01"),
    ]
    w = max(len(r[0]) for r in rows)
    for name, val, note in rows:
        print(f"{name:<{w}}  {val:<24} {note}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
