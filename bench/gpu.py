#!/usr/bin/env python
"""The GPU half of the performance benchmark (one H100/H200, under 8 minutes): prints one table and
writes JSON (default bench/results/gpu.json). Record results in bench/RESULTS.md with card and date.

    python bench/gpu.py [--quick]
    python bench/gpu.py --smoke --device cpu [--no-compile] [--out smoke.json]   # check of the code paths

Measured in one run, on the paper's network (NCSN++, EDM preconditioning, 32x32x3):
  peak       bf16 matmul FLOP/s of this GPU (8192^3 GEMMs), the denominator of "% of peak"
  flops      forward GFLOP per image (torch.utils.flop_counter)
  train      img/s of one optimizer step: EDM's configuration (fp32, eager, Adam) vs the fast one
             (bf16 autocast, TF32, channels_last, torch.compile, fused Adam)          target >= 1.5x
  sample     img/s of the Heun sampler at 35 NFE: fp32 eager vs bf16 + channels_last +
             torch.compile(mode="max-autotune", CUDA graphs)                          target >= 2x, >= 40 % of peak
  50k        projected minutes for 50,000 images at 35 NFE with the fast sampler     target < 4 min
  aot        training step time with AOT pools (N=512, B=32) over independent noise   target <= 1.01
  dg         img/s of the Heun sampler with Discriminator Guidance (DG's ADM classifier and head,
             random weights: the same cost), img/s of one discriminator training step
  fid        img/s of Inception-v3 features at 299x299 (torchvision's network, random weights, the
             architecture of clean-fid's; resized on the GPU as clean-fid does)

It also prints the config's `walltime:` rates from these numbers, a YAML snippet for a site file
(`--site-snippet FILE` writes it too): GPU-seconds per 1000 training images (an fp32 Adam step of
the paper's per-GPU batch B = 32), per image and network evaluation of the sampler, with and without
guidance, per image of FID features and per image and epoch of discriminator training, all in EDM's
configuration (fp32, eager: the paper config's `fast: false`). `python bench/job_shape.py
--configfile FILE` then prints the paper's GPU-hours at these rates.

--smoke runs every one of these code paths (the same functions, fast settings and torch.compile
included) on a tiny network of the same kind (NCSN++ blocks, attention, 9 augment labels) at 8x8,
with a few steps each, in about a minute on a CPU (seconds with --no-compile; the test suite runs it).
Its numbers only show that the paths work; it prints them under a SMOKE banner, writes JSON (and the
snippet, marked as a smoke run) only where --out (--site-snippet) says, never into bench/results/,
and never touches bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import yaml  # noqa: E402

from aot.dg import ADMEncoder, dg_classifier_kwargs, dg_sampler  # noqa: E402
from aot.dg.discriminator import sample_vp_time  # noqa: E402
from aot.dg.training import build_discriminator  # noqa: E402
from aot.loss import EDMLoss  # noqa: E402
from aot.networks import build_network  # noqa: E402
from aot.pairing import PairPool  # noqa: E402
from aot.sampling import FastDenoiser, edm_sampler  # noqa: E402

PAPER_NET = dict(img_resolution=32, img_channels=3, label_dim=0, model_type="SongUNet", embedding_type="fourier",
                 encoder_type="residual", decoder_type="standard", channel_mult_noise=2,
                 resample_filter=[1, 3, 3, 1], model_channels=128, channel_mult=[2, 2, 2], dropout=0.13,
                 augment_dim=9)
# The paper's network shrunk: same block kinds (Fourier embedding, residual encoder, FIR resampling,
# attention at the lowest resolution, dropout, augment labels), 8x8 images, two levels of 16/32 channels.
SMOKE_NET = dict(PAPER_NET, img_resolution=8, model_channels=16, channel_mult=[1, 2], num_blocks=1,
                 attn_resolutions=[4])
# DG's feature extractor (its ADM classifier at 32x32) and head (width 128, depth 2); for the smoke
# run an ADM encoder of one level at 8x8 and a narrow head.
PAPER_DG = dict(extractor=dg_classifier_kwargs(32), width=128, depth=2)
SMOKE_DG = dict(extractor=dict(image_size=8, in_channels=3, width=32, depth=1, attention_resolutions=[8],
                               out_channels=1, num_head_channels=32), width=32, depth=1)

# Sizes of each part: the real run (full and --quick) and the smoke run.
SIZES = {
    "full": dict(net=PAPER_NET, peak_n=8192, peak_iters=20, flop_batch=8, train_batch=256, train_iters=10,
                 sample_batch=1024, sample_steps=18, sample_iters=2, aot_pool=512, aot_batch=32, aot_iters=48,
                 aot_warmup=16, aot_images=50_000, dg=PAPER_DG, dg_batch=256, dg_steps=18, disc_batch=512,
                 disc_iters=10, fid_batch=500, fid_res=299, fid_iters=5),
    "quick": dict(net=PAPER_NET, peak_n=8192, peak_iters=20, flop_batch=8, train_batch=128, train_iters=10,
                  sample_batch=512, sample_steps=18, sample_iters=2, aot_pool=512, aot_batch=32, aot_iters=48,
                  aot_warmup=16, aot_images=50_000, dg=PAPER_DG, dg_batch=128, dg_steps=18, disc_batch=512,
                  disc_iters=5, fid_batch=500, fid_res=299, fid_iters=3),
    "smoke": dict(net=SMOKE_NET, peak_n=256, peak_iters=3, flop_batch=2, train_batch=8, train_iters=2,
                  sample_batch=4, sample_steps=3, sample_iters=1, aot_pool=32, aot_batch=8, aot_iters=4,
                  aot_warmup=2, aot_images=256, dg=SMOKE_DG, dg_batch=2, dg_steps=3, disc_batch=4, disc_iters=2,
                  fid_batch=2, fid_res=75, fid_iters=1),
}
# The config's walltime rates that this benchmark measures (config/README.md, walltime section).
WALLTIME_KEYS = ("train_kimg_s", "generate_image_nfe_s", "guidance_image_nfe_s", "fid_image_s",
                 "discriminator_image_epoch_s")
PROJECTED_NFE = 35  # EDM's CIFAR-10 sampler: 18 Heun steps


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, iters: int, device: torch.device) -> float:
    """Seconds per call of fn, averaged over `iters` calls."""
    sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - t) / iters


def peak_bf16(device: torch.device, n: int = 8192, iters: int = 20) -> float:
    """Measured bf16 matmul FLOP/s of n x n x n products (2 n^3 FLOP each)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    timed(lambda: a @ b, min(3, iters), device)
    s = timed(lambda: a @ b, iters, device)
    return 2 * n ** 3 / s


def count_flops(fn, *args, **kwargs) -> int:
    """FLOPs of one call fn(*args, **kwargs), as torch.utils.flop_counter counts them (matrix products
    and convolutions: 2 per multiply-add; elementwise operations are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        fn(*args, **kwargs)
    return fc.get_total_flops()


def forward_flops(net_kwargs: dict, device: torch.device, batch: int = 8) -> float:
    """Forward FLOPs per image of the EDM-preconditioned network."""
    net = build_network("EDMPrecond", net_kwargs).to(device).eval()
    res, ch = net_kwargs["img_resolution"], net_kwargs["img_channels"]
    x = torch.randn(batch, ch, res, res, device=device)
    return count_flops(net, x, torch.ones(batch, device=device)) / batch


def set_tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def train_throughput(fast: bool, net_kwargs: dict, device: torch.device, batch: int, iters: int,
                     compile: bool = True) -> dict:
    """img/s of one optimizer step (EDM loss, Adam), and the last step's mean loss."""
    set_tf32(fast)
    torch.manual_seed(0)  # the same initial network (and dropout stream) for both settings
    net = build_network("EDMPrecond", net_kwargs).to(device).train()
    if fast:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, fused=fast)
    model = torch.compile(net) if (fast and compile) else net
    loss_fn = EDMLoss()
    fmt = torch.channels_last if fast else torch.contiguous_format
    res, ch = net_kwargs["img_resolution"], net_kwargs["img_channels"]
    gen = torch.Generator(device).manual_seed(0)
    y = torch.randn(batch, ch, res, res, device=device, generator=gen).contiguous(memory_format=fmt)
    n = torch.randn(y.shape, device=device, generator=gen).contiguous(memory_format=fmt)
    aug = torch.zeros(batch, net_kwargs.get("augment_dim", 0), device=device) if net_kwargs.get("augment_dim") else None
    last = {}

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast):
            loss = loss_fn(model, y, n, augment_labels=aug)
        loss = loss.float()
        loss.sum().backward()
        opt.step()
        last["loss"] = loss.detach().mean()

    for _ in range(3):
        step()
    img_s = batch / timed(step, iters, device)
    set_tf32(False)
    return {"img_s": img_s, "loss": float(last["loss"])}


def sample_throughput(fast: bool, net_kwargs: dict, device: torch.device, batch: int, num_steps: int, iters: int,
                      compile: bool = True) -> dict:
    """img/s of the Heun sampler (2 num_steps - 1 network evaluations per image), and the images' RMS."""
    set_tf32(fast)
    torch.manual_seed(0)  # the same network for both settings
    net = build_network("EDMPrecond", net_kwargs).to(device).eval().requires_grad_(False)
    model = FastDenoiser(net, compile=compile) if fast else net
    res, ch = net_kwargs["img_resolution"], net_kwargs["img_channels"]
    latents = torch.randn(batch, ch, res, res, device=device, generator=torch.Generator(device).manual_seed(1))
    with torch.no_grad():
        images = edm_sampler(model, latents, num_steps=num_steps)  # compile / warm-up
        s = timed(lambda: edm_sampler(model, latents, num_steps=num_steps), iters, device)
    set_tf32(False)
    return {"img_s": batch / s, "rms": float(images.float().square().mean().sqrt())}


def aot_overhead(net_kwargs: dict, device: torch.device, batch_gpu: int = 32, pool: int = 512, iters: int = 48,
                 warmup: int = 16, num_images: int = 50_000) -> dict:
    """Step time with AOT pools vs independent noise, same network, background pool building."""
    net = build_network("EDMPrecond", net_kwargs).to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    loss_fn = EDMLoss()
    res, ch = net_kwargs["img_resolution"], net_kwargs["img_channels"]
    data = torch.rand(num_images, ch, res, res, generator=torch.Generator().manual_seed(2)) * 2 - 1
    aug_dim = net_kwargs.get("augment_dim", 0)

    def draw(k, g):
        idx = torch.randint(0, data.shape[0], (pool,), generator=g)
        return data[idx], None, torch.zeros(pool, aug_dim) if aug_dim else None

    out: dict[str, list[float]] = {}
    paired, random = [], []
    for mode in ("edm", "aot", "edm", "aot"):
        pp = PairPool(draw, pool_size=pool, batch_gpu=batch_gpu, aot=mode == "aot", seed=0, device=device)
        it = pp.batches()

        def step(it=it):
            y, n, _, a = next(it)
            opt.zero_grad(set_to_none=True)
            loss_fn(net, y, n, augment_labels=a).sum().backward()
            opt.step()

        for _ in range(warmup):
            step()
        out.setdefault(mode, []).append(timed(step, iters, device))
        if mode == "aot":
            for s in pp.pop_stats():
                paired.append(s["mean_cost_paired"])
                random.append(s["mean_cost_random"])
        pp.close()
    edm, aot = min(out["edm"]), min(out["aot"])
    return {"step_s_edm": edm, "step_s_aot": aot, "ratio": aot / edm, "pools": len(paired),
            "cost_paired": sum(paired) / max(len(paired), 1), "cost_random": sum(random) / max(len(random), 1)}


def discriminator(dg: dict, net_kwargs: dict, device: torch.device):
    """DG's discriminator (a frozen ADM classifier and a trainable head) with random weights, and the
    head's parameters."""
    extractor = ADMEncoder(**dg["extractor"])
    res, ch = net_kwargs["img_resolution"], net_kwargs["img_channels"]
    return build_discriminator(extractor, (ch, res, res), scratch_width=64, scratch_depth=1, width=dg["width"],
                               depth=dg["depth"], cond=False, seed=0, device=device)


def guidance_throughput(net_kwargs: dict, dg: dict, device: torch.device, batch: int, num_steps: int) -> dict:
    """img/s of DG's sampler (EDM's Heun sampler plus the discriminator's gradient at each Euler step,
    DG's unconditional settings: weight 2, times 0.01-1), fp32 eager as the workflow runs it."""
    set_tf32(False)
    torch.manual_seed(0)
    net = build_network("EDMPrecond", net_kwargs).to(device).eval().requires_grad_(False)
    disc, _ = discriminator(dg, net_kwargs, device)
    disc.eval().requires_grad_(False)
    res, ch = net_kwargs["img_resolution"], net_kwargs["img_channels"]
    latents = torch.randn(batch, ch, res, res, device=device, generator=torch.Generator(device).manual_seed(1))

    def run(steps):
        return dg_sampler(net, latents, discriminator=disc, num_steps=steps, dg_weight_1st_order=2.0,
                          dg_weight_2nd_order=0.0, time_min=0.01, time_max=1.0, boosting=False)

    with torch.no_grad():
        run(2)  # warm-up
        s = timed(lambda: run(num_steps), 1, device)
    return {"img_s": batch / s, "nfe": 2 * num_steps - 1}


def discriminator_throughput(net_kwargs: dict, dg: dict, device: torch.device, batch: int, iters: int) -> float:
    """img/s of one discriminator training step as aot.dg.training does it: the frozen extractor's
    features, the head's BCE loss, backward, Adam (DG's lr and weight decay)."""
    set_tf32(False)
    disc, params = discriminator(dg, net_kwargs, device)
    opt = torch.optim.Adam(params, lr=3e-4, weight_decay=1e-7)
    bce = torch.nn.BCELoss()
    res, ch = net_kwargs["img_resolution"], net_kwargs["img_channels"]
    gen = torch.Generator().manual_seed(3)
    xt = torch.randn(batch, ch, res, res, generator=gen).to(device)
    t = sample_vp_time(batch, gen).to(device)
    y = (torch.rand(batch, generator=gen) < 0.5).float().to(device)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            feats = disc.feature_extractor(xt, timesteps=t, feature=True)
        pred = disc.head(feats, t, sigmoid=True).view(-1)
        bce(pred, y).backward()
        opt.step()

    step()
    return batch / timed(step, iters, device)


def fid_throughput(net_kwargs: dict, device: torch.device, batch: int, size: int, iters: int) -> float:
    """img/s of FID features: uint8 images to the GPU, resized to `size` (bilinear, as clean-fid's
    legacy_tensorflow network does inside), through Inception-v3's 2048 features (torchvision's
    network with random weights: clean-fid's weights cannot be downloaded here; same architecture)."""
    import torchvision

    set_tf32(False)
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
    net.fc = torch.nn.Identity()
    net = net.to(device).eval().requires_grad_(False)
    res, ch = net_kwargs["img_resolution"], net_kwargs["img_channels"]
    images = torch.randint(0, 256, (batch, ch, res, res), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(4))

    def features():
        x = images.to(device).float()
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return net((x - 128) / 128)

    with torch.no_grad():
        features()
        return batch / timed(features, iters, device)


def site_rates(res: dict) -> dict:
    """The config's walltime rates (GPU-seconds) from the measured numbers: EDM's configuration
    (fp32, eager), which the paper config runs (`training.fast`, `generate.fast`: false)."""
    aot = res["aot"]
    return {
        # an Adam step of B images (the paper's batch_gpu); the slower of independent noise and AOT pools
        "train_kimg_s": 1000 * max(aot["step_s_edm"], aot["step_s_aot"]) / aot["batch"],
        "generate_image_nfe_s": 1 / (res["sample_img_s"]["edm_fp32_eager"] * res["sample_nfe"]),
        "guidance_image_nfe_s": 1 / (res["guidance"]["img_s"] * res["guidance"]["nfe"]),
        "fid_image_s": 1 / res["fid_img_s"],
        "discriminator_image_epoch_s": 1 / res["discriminator_img_s"],
    }


def yaml_number(v: float) -> str:
    """`v` to 3 significant digits as a YAML float (PyYAML reads 1e-05 as a string, 1.0e-05 as a float)."""
    return yaml.safe_dump([float(f"{v:.3g}")], default_flow_style=True).strip()[1:-1]


def site_snippet(res: dict) -> str:
    """The walltime rates as a YAML snippet for a site file, with what each one was measured on."""
    z = SIZES[res["mode"]]
    notes = {
        "train_kimg_s": f"GPU-s per 1000 training images: fp32 Adam step of B = {res['aot']['batch']}",
        "generate_image_nfe_s": f"GPU-s per image and network evaluation: Heun, batch {z['sample_batch']}, fp32",
        "guidance_image_nfe_s": f"the same with DG's guidance (ADM classifier + head), batch {z['dg_batch']}",
        "fid_image_s": f"GPU-s per image: Inception-v3 at {z['fid_res']}x{z['fid_res']}, batch {z['fid_batch']}",
        "discriminator_image_epoch_s": f"GPU-s per image and epoch: DG's discriminator, batch {z['disc_batch']}",
    }
    if res["smoke"]:
        head = [f"# SMOKE RUN ({res['device']}, tiny networks): checks the code paths; not rates for a site file"]
    else:
        head = [f"# walltime rates measured by bench/gpu.py on {res['device']}, {res['time']}, torch {res['torch']}",
                "# (EDM's configuration, fp32 eager: the paper config's training.fast and generate.fast false).",
                "# Paste into a site file (snakemake --profile slurm all --configfile site.yaml); safety,",
                "# startup_s and max_minutes stay the config's. bench/job_shape.py --configfile site.yaml: GPU-hours."]
    rates = res["site_walltime"]
    width = max(len(k) + len(yaml_number(rates[k])) for k in WALLTIME_KEYS) + 4
    lines = ["walltime:"]
    for k in WALLTIME_KEYS:
        entry = f"  {k}: {yaml_number(rates[k])}"
        lines.append(f"{entry:<{width}} # {notes[k]}")
    return "\n".join(head + lines) + "\n"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s)"


def run_all(mode: str, device: torch.device, compile: bool = True) -> dict:
    """Every measurement of one run; `mode` is a key of SIZES."""
    z = SIZES[mode]
    net = z["net"]
    res = {"mode": mode, "smoke": mode == "smoke", "device": device_name(device), "torch": torch.__version__,
           "compile": compile, "time": time.strftime("%Y-%m-%d %H:%M:%S"), "network": net,
           "params": sum(p.numel() for p in build_network("EDMPrecond", net).parameters())}
    res["peak_bf16_flops"] = peak_bf16(device, z["peak_n"], z["peak_iters"])
    res["forward_gflop_per_img"] = forward_flops(net, device, z["flop_batch"]) / 1e9
    train = {k: train_throughput(fast, net, device, z["train_batch"], z["train_iters"], compile)
             for k, fast in (("edm_fp32_eager", False), ("fast", True))}
    res["train_img_s"] = {k: v["img_s"] for k, v in train.items()}
    res["train_loss"] = {k: v["loss"] for k, v in train.items()}
    sample = {k: sample_throughput(fast, net, device, z["sample_batch"], z["sample_steps"], z["sample_iters"], compile)
              for k, fast in (("edm_fp32_eager", False), ("fast", True))}
    res["sample_nfe"] = nfe = 2 * z["sample_steps"] - 1
    res["sample_img_s"] = {k: v["img_s"] for k, v in sample.items()}
    res["sample_rms"] = {k: v["rms"] for k, v in sample.items()}
    fl = res["forward_gflop_per_img"] * 1e9
    evals_s = res["sample_img_s"]["fast"] * nfe  # network evaluations per second, fast sampler
    res["sample_pct_peak"] = 100 * evals_s * fl / res["peak_bf16_flops"]
    res["minutes_50k_35nfe"] = 50_000 * PROJECTED_NFE / evals_s / 60
    res["flop_floor_minutes_50k"] = 50_000 * PROJECTED_NFE * fl / res["peak_bf16_flops"] / 60
    res["aot"] = aot_overhead(net, device, z["aot_batch"], z["aot_pool"], z["aot_iters"], z["aot_warmup"],
                              z["aot_images"])
    res["aot"]["batch"] = z["aot_batch"]
    res["guidance"] = guidance_throughput(net, z["dg"], device, z["dg_batch"], z["dg_steps"])
    res["discriminator_img_s"] = discriminator_throughput(net, z["dg"], device, z["disc_batch"], z["disc_iters"])
    res["fid_img_s"] = fid_throughput(net, device, z["fid_batch"], z["fid_res"], z["fid_iters"])
    res["ratios"] = {"train_fast_over_edm": res["train_img_s"]["fast"] / res["train_img_s"]["edm_fp32_eager"],
                     "sample_fast_over_edm": res["sample_img_s"]["fast"] / res["sample_img_s"]["edm_fp32_eager"],
                     "aot_step_time": res["aot"]["ratio"]}
    res["site_walltime"] = site_rates(res)
    return res


def table(res: dict) -> list[str]:
    t, s, r = res["train_img_s"], res["sample_img_s"], res["ratios"]
    net = "paper net" if not res["smoke"] else "smoke net"
    rows = [
        ("device", res["device"], ""),
        ("bf16 peak (measured)", f"{res['peak_bf16_flops'] / 1e12:.4g} TFLOP/s", ""),
        ("forward cost", f"{res['forward_gflop_per_img']:.6g} GFLOP/img", net),
        ("train img/s EDM fp32 / fast", f"{t['edm_fp32_eager']:.4g} / {t['fast']:.4g}",
         f"{r['train_fast_over_edm']:.2f}x (target >= 1.5x)"),
        (f"sample img/s at {res['sample_nfe']} NFE EDM fp32 / fast", f"{s['edm_fp32_eager']:.4g} / {s['fast']:.4g}",
         f"{r['sample_fast_over_edm']:.2f}x (target >= 2x)"),
        ("sampling % of bf16 peak", f"{res['sample_pct_peak']:.3g} %", "target >= 40 %"),
        ("50k images at 35 NFE", f"{res['minutes_50k_35nfe']:.4g} min",
         f"floor {res['flop_floor_minutes_50k']:.3g} min (target < 4)"),
        ("AOT step time ratio", f"{r['aot_step_time']:.3f}", "target <= 1.01"),
        (f"DG sample img/s at {res['guidance']['nfe']} NFE", f"{res['guidance']['img_s']:.4g}", "fp32"),
        ("DG discriminator train img/s", f"{res['discriminator_img_s']:.4g}", "fp32"),
        ("FID features img/s", f"{res['fid_img_s']:.4g}", "Inception-v3, fp32"),
    ]
    w = max(len(row[0]) for row in rows)
    lines = [f"{name:<{w}}  {val:<24} {note}".rstrip() for name, val, note in rows]
    if res["smoke"]:
        banner = (f"SMOKE RUN ({res['device']}, tiny network, compile {'on' if res['compile'] else 'off'}): "
                  "checks the code paths; not results")
        lines = [banner, *lines]
    return lines


def finite_tree(value) -> bool:
    if isinstance(value, dict):
        return all(finite_tree(v) for v in value.values())
    if isinstance(value, float):
        return math.isfinite(value)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller batches (GPU run)")
    ap.add_argument("--smoke", action="store_true", help="tiny network, a few steps: checks every code path")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --smoke)")
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="fast settings without torch.compile")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    ap.add_argument("--out", default=None, help="JSON output (default bench/results/gpu.json; none with --smoke)")
    ap.add_argument("--site-snippet", default=None, metavar="FILE",
                    help="also write the walltime rates as a YAML snippet for a site file (printed either way)")
    args = ap.parse_args(argv)
    if not re.fullmatch(r"cpu|cuda(:\d+)?", args.device):
        print(f"error: --device {args.device!r} is not cuda or cpu", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    results_dir = (ROOT / "bench" / "results").resolve()
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: bench/gpu.py needs a CUDA GPU (the CPU check of its code paths: --smoke --device cpu)",
              file=sys.stderr)
        return 2
    if device.type == "cpu" and not args.smoke:
        print("error: the full benchmark needs a GPU; on a CPU run --smoke", file=sys.stderr)
        return 2
    out = args.out
    if out is None and not args.smoke:
        out = str(results_dir / "gpu.json")
    for option, path in (("--out", out), ("--site-snippet", args.site_snippet)):
        if args.smoke and path is not None and Path(path).resolve().parent == results_dir:
            print(f"error: {option} {path}: smoke numbers are not results; write them outside bench/results/",
                  file=sys.stderr)
            return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    res = run_all(mode, device, compile=args.compile)
    for line in table(res):
        print(line)
    if not finite_tree(res):
        print("error: a measurement is not finite", file=sys.stderr)
        return 1
    snippet = site_snippet(res)
    print()
    print(snippet, end="")
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(res, indent=2) + "\n")
    if args.site_snippet is not None:
        Path(args.site_snippet).parent.mkdir(parents=True, exist_ok=True)
        Path(args.site_snippet).write_text(snippet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
