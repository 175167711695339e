#!/usr/bin/env python
"""Performance benchmark on this machine's CPU: prints one table of ratios measured in one run and
writes JSON (default bench/results/cpu.json). The GPU half is bench/gpu.py.

    python bench/run.py                 # everything below (about 5 minutes on 2 cores)
    python bench/run.py --only aot_overhead,sampler_overhead
    python bench/run.py --demo          # also time the demo pipeline end to end (about 10 minutes)

Sections (targets from the performance issue):
  assignment        time per pool, our solver vs scipy vs POT (bench/bench_assignment.py --quick)
  aot_overhead      training sec/kimg with AOT over without, same network, same run    target <= 1.01
  sampler_overhead  Heun loop time beyond its network calls                           target <= 5 %
  throughput        training and sampling img/s of the demo and paper networks (fp32, eager)
  workflow          dry run of the paper configuration: seconds and jobs               target <= 10 s
  demo              `snakemake --configfile config/demo.yaml` wall time                target <= 15 min
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

DEMO_NET = dict(img_resolution=8, img_channels=1, label_dim=0, model_type="SongUNet", embedding_type="positional",
                encoder_type="standard", decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1],
                model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[], dropout=0.0)
PAPER_NET = dict(img_resolution=32, img_channels=3, label_dim=0, model_type="SongUNet", embedding_type="fourier",
                 encoder_type="residual", decoder_type="standard", channel_mult_noise=2,
                 resample_filter=[1, 3, 3, 1], model_channels=128, channel_mult=[2, 2, 2], dropout=0.13)


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, check=True, **kw)


# ------------------------------------------------------------------------------------------------


def bench_assignment(quick: bool) -> dict:
    out = Path(tempfile.mkdtemp()) / "assignment.json"
    cmd = [sys.executable, str(ROOT / "bench" / "bench_assignment.py"), "--out", str(out)]
    if quick:
        cmd.append("--quick")
    res = run(cmd)
    print(res.stdout)
    return json.loads(out.read_text())


def bench_aot_overhead(repeats: int = 4) -> dict:
    """Interleaved A/B training runs of the demo network on digits; median sec/kimg per setting."""
    tmp = Path(tempfile.mkdtemp())
    data = tmp / "digits.zip"
    run([sys.executable, "-m", "aot", "data", "digits", "--resolution", "8", "--dest", str(data)])
    per: dict[str, list[float]] = {"aot": [], "edm": []}
    for r in range(repeats):
        for mode in ("aot", "edm"):
            outdir = tmp / f"{mode}{r}"
            run([sys.executable, "-m", "aot", "train", "--outdir", str(outdir), "--data", str(data), "--arch", "ddpmpp",
                 "--cbase", "16", "--cres", "1,2", "--num-blocks", "1", "--attn", "", "--duration", "0.0256",
                 "--batch", "64", "--batch-gpu", "32", "--pool-size", "256", "--augment", "0", "--dropout", "0",
                 "--tick", "1.28", "--dump", "100", "--snap", "100", "--device", "cpu", "--threads", "1",
                 "--aot" if mode == "aot" else "--no-aot"])
            ticks = [json.loads(line) for line in (outdir / "stats.jsonl").read_text().splitlines()]
            per[mode] += [t["sec_per_kimg"] for t in ticks[1:]]  # first tick includes warm-up
            if mode == "aot":
                per.setdefault("pairing_ms", []).extend(t["pairing_s"] * 1e3 for t in ticks[1:])
                per.setdefault("stall_share", []).extend(t["stall_share"] for t in ticks[1:])
    shutil.rmtree(tmp, ignore_errors=True)
    aot, edm = statistics.median(per["aot"]), statistics.median(per["edm"])
    return {"sec_per_kimg_aot": aot, "sec_per_kimg_edm": edm, "ratio": aot / edm,
            "pairing_ms_per_pool": statistics.median(per["pairing_ms"]),
            "stall_share": statistics.median(per["stall_share"]), "N": 256, "B": 32,
            "network": "demo SongUNet (16 ch, 8x8x1)", "target": "<= 1.01"}


class _TimedNet(torch.nn.Module):
    """Wraps a network and adds up the wall time spent inside its forward."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.seconds = 0.0
        self.calls = 0
        for name in ("sigma_min", "sigma_max", "img_resolution", "img_channels", "label_dim"):
            setattr(self, name, getattr(net, name))

    def round_sigma(self, sigma):
        return self.net.round_sigma(sigma)

    def forward(self, *args, **kwargs):
        t = time.perf_counter()
        out = self.net(*args, **kwargs)
        self.seconds += time.perf_counter() - t
        self.calls += 1
        return out


def bench_sampler_overhead() -> dict:
    from aot.networks import build_network
    from aot.sampling import edm_sampler

    torch.set_num_threads(1)
    rows = {}
    for name, kwargs, batch in (("demo", DEMO_NET, 256), ("paper", PAPER_NET, 4)):
        net = build_network("EDMPrecond", kwargs).eval().requires_grad_(False)
        timed = _TimedNet(net)
        latents = torch.randn(batch, kwargs["img_channels"], kwargs["img_resolution"], kwargs["img_resolution"])
        with torch.no_grad():
            edm_sampler(timed, latents, num_steps=4)  # warm-up
            best = None
            for _ in range(3):
                timed.seconds, timed.calls = 0.0, 0
                t = time.perf_counter()
                edm_sampler(timed, latents, num_steps=18)
                total = time.perf_counter() - t
                share = (total - timed.seconds) / total
                best = share if best is None else min(best, share)
        rows[name] = {"overhead_share": best, "nfe": timed.calls, "batch": batch}
    return {**rows, "target": "<= 0.05"}


def bench_throughput() -> dict:
    from aot.loss import EDMLoss
    from aot.networks import build_network

    torch.set_num_threads(2)
    out = {}
    for name, kwargs, batch in (("demo", DEMO_NET, 256), ("paper", PAPER_NET, 8)):
        shape = (batch, kwargs["img_channels"], kwargs["img_resolution"], kwargs["img_resolution"])
        net = build_network("EDMPrecond", kwargs).train()
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)
        loss_fn = EDMLoss()
        y, n = torch.randn(shape), torch.randn(shape)

        def step(net=net, opt=opt, loss_fn=loss_fn, y=y, n=n):
            opt.zero_grad(set_to_none=True)
            loss_fn(net, y, n).mean().backward()
            opt.step()

        step()
        t = time.perf_counter()
        steps = 3
        for _ in range(steps):
            step()
        train_ips = batch * steps / (time.perf_counter() - t)
        net.eval().requires_grad_(False)
        with torch.no_grad():
            net(torch.randn(shape), torch.ones(batch))
            t = time.perf_counter()
            calls = 3
            for _ in range(calls):
                net(torch.randn(shape), torch.ones(batch))
            fwd_s = (time.perf_counter() - t) / calls
        out[name] = {"train_img_per_s": train_ips, "forward_img_per_s": batch / fwd_s,
                     "sample_img_per_s_35nfe": batch / (fwd_s * 35), "batch": batch}
    return out


def bench_workflow() -> dict:
    t = time.perf_counter()
    res = run([sys.executable, "-m", "snakemake", "-n", "--snakefile", str(ROOT / "Snakefile"), "--directory",
               str(ROOT)], cwd=ROOT)
    seconds = time.perf_counter() - t
    m = re.search(r"^total\s+(\d+)$", res.stdout + res.stderr, re.M)
    return {"dry_run_s": seconds, "jobs": int(m.group(1)) if m else None, "target": "<= 10 s"}


def bench_demo() -> dict:
    tmp = Path(tempfile.mkdtemp())
    t = time.perf_counter()
    run([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp),
         "--configfile", str(ROOT / "config" / "demo.yaml"), "--cores", "all"], cwd=ROOT)
    seconds = time.perf_counter() - t
    shutil.rmtree(tmp, ignore_errors=True)
    return {"wall_s": seconds, "target": "<= 900 s"}


SECTIONS = {
    "assignment": None,
    "aot_overhead": bench_aot_overhead,
    "sampler_overhead": bench_sampler_overhead,
    "throughput": bench_throughput,
    "workflow": bench_workflow,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=None, help="comma-separated sections")
    ap.add_argument("--demo", action="store_true", help="also time the demo pipeline")
    ap.add_argument("--full-assignment", action="store_true", help="N up to 4096 (slower)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "cpu.json"))
    args = ap.parse_args()
    only = set(args.only.split(",")) if args.only else set(SECTIONS) | ({"demo"} if args.demo else set())
    results = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
               "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    for name in SECTIONS:
        if name not in only:
            continue
        print(f"== {name}", flush=True)
        t = time.perf_counter()
        if name == "assignment":
            results[name] = bench_assignment(quick=not args.full_assignment)
        else:
            results[name] = SECTIONS[name]()
        print(json.dumps(results[name], indent=1, default=str)[:2000], f"({time.perf_counter() - t:.0f} s)", flush=True)
    if "demo" in only:
        print("== demo", flush=True)
        results["demo"] = bench_demo()
    print("\nsummary (this machine, one run)")
    if "aot_overhead" in results:
        r = results["aot_overhead"]
        print(f"  AOT overhead, demo net on CPU: {r['ratio']:.3f}x (target <= 1.01); pairing "
              f"{r['pairing_ms_per_pool']:.1f} ms/pool, stall {100 * r['stall_share']:.2f}% of step time")
    if "sampler_overhead" in results:
        r = results["sampler_overhead"]
        print(f"  Heun loop overhead beyond the network: demo {100 * r['demo']['overhead_share']:.2f}%, "
              f"paper {100 * r['paper']['overhead_share']:.2f}% (target <= 5%)")
    if "throughput" in results:
        for k, r in results["throughput"].items():
            print(f"  {k} network fp32 eager on CPU: train {r['train_img_per_s']:.1f} img/s, "
                  f"sample (35 NFE) {r['sample_img_per_s_35nfe']:.2f} img/s")
    if "workflow" in results:
        r = results["workflow"]
        print(f"  paper dry run: {r['dry_run_s']:.1f} s for {r['jobs']} jobs (target <= 10 s)")
    if "demo" in results:
        print(f"  demo end to end: {results['demo']['wall_s'] / 60:.1f} min (target <= 15 min)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
