"""bench/gpu.py without a GPU: its smoke mode runs every code path of the GPU benchmark (peak FLOP/s,
FLOP count, fp32 and fast training and sampling, torch.compile, AOT pools) on a tiny network on the
CPU, and its numbers are checked here; its FLOP counter is checked against closed forms and against
an independent count of the smoke network."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
from math import prod
from pathlib import Path

import pytest
import torch
import yaml
from conftest import skip_or_fail

ROOT = Path(__file__).resolve().parents[1]
GPU_PY = ROOT / "bench" / "gpu.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", GPU_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def snapshot() -> dict[str, str]:
    """Hashes of bench/RESULTS.md and of every file under bench/results/."""
    files = [ROOT / "bench" / "RESULTS.md", *sorted((ROOT / "bench" / "results").glob("**/*"))]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.is_file()}


def run_bench(*args: str, timeout: int = 600, **env_extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", **env_extra)
    return subprocess.run([sys.executable, str(GPU_PY), *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


# ------------------------------------------------------------------------------------------------
# An independent FLOP count: every convolution, transposed convolution, einsum and Linear layer of
# aot.networks counted from its shapes (2 FLOP per multiply-add), with torch's functions wrapped.


def independent_forward_flops(net_kwargs: dict, batch: int = 2) -> float:
    import aot.networks as networks
    from aot.networks import build_network

    F = torch.nn.functional
    orig = dict(conv2d=F.conv2d, conv_transpose2d=F.conv_transpose2d, einsum=torch.einsum,
                linear=networks.Linear.forward)
    total = [0]

    def conv2d(x, w, *a, **k):  # w: [C_out, C_in / groups, kh, kw], counted per output pixel
        y = orig["conv2d"](x, w, *a, **k)
        total[0] += 2 * y.shape[0] * prod(w.shape) * y.shape[2] * y.shape[3]
        return y

    def conv_transpose2d(x, w, *a, **k):  # w: [C_in, C_out / groups, kh, kw], counted per input pixel
        y = orig["conv_transpose2d"](x, w, *a, **k)
        total[0] += 2 * x.shape[0] * prod(w.shape) * x.shape[2] * x.shape[3]
        return y

    def einsum(equation, a, b):  # one product over every index of both operands
        sizes: dict[str, int] = {}
        for term, t in zip(equation.split("->")[0].split(","), (a, b)):
            sizes.update(zip(term, t.shape))
        total[0] += 2 * prod(sizes.values())
        return orig["einsum"](equation, a, b)

    def linear(self, x):
        total[0] += 2 * x.shape[0] * self.in_features * self.out_features
        return orig["linear"](self, x)

    net = build_network("EDMPrecond", net_kwargs).eval()
    F.conv2d, F.conv_transpose2d, torch.einsum, networks.Linear.forward = conv2d, conv_transpose2d, einsum, linear
    try:
        with torch.no_grad():
            res, ch = net_kwargs["img_resolution"], net_kwargs["img_channels"]
            net(torch.randn(batch, ch, res, res), torch.ones(batch))
    finally:
        F.conv2d, F.conv_transpose2d, torch.einsum = orig["conv2d"], orig["conv_transpose2d"], orig["einsum"]
        networks.Linear.forward = orig["linear"]
    return total[0] / batch


def test_flop_counter_matches_closed_forms():
    from aot.networks import Conv2d, Linear

    gpu = load_bench()
    n, c_in, c_out, h = 2, 3, 5, 8
    x = torch.randn(n, c_in, h, h)
    # 3x3 convolution, padding 1: 2 * C_in * C_out * 9 per output pixel.
    assert gpu.count_flops(Conv2d(c_in, c_out, 3), x) == 2 * n * c_out * c_in * 9 * h * h
    # FIR downsampling (4x4 taps, one channel at a time, stride 2) then a 1x1 convolution.
    down = Conv2d(c_in, c_out, 1, down=True, resample_filter=[1, 3, 3, 1])
    assert gpu.count_flops(down, x) == 2 * n * c_in * 16 * (h // 2) ** 2 + 2 * n * c_out * c_in * (h // 2) ** 2
    assert gpu.count_flops(Linear(7, 11), torch.randn(n, 7)) == 2 * n * 7 * 11
    # forward_flops is per image: the smoke network against the independent count.
    assert gpu.forward_flops(gpu.SMOKE_NET, torch.device("cpu"), batch=2) == independent_forward_flops(gpu.SMOKE_NET)


def check_smoke_result(res: dict, stdout: str, compile: bool, snippet_file: Path | None = None) -> None:
    gpu = load_bench()
    assert res["smoke"] is True and res["mode"] == "smoke" and res["compile"] is compile
    assert res["network"] == json.loads(json.dumps(gpu.SMOKE_NET))
    # The FLOP count: the independent count of the same network.
    assert res["forward_gflop_per_img"] * 1e9 == pytest.approx(independent_forward_flops(gpu.SMOKE_NET), rel=1e-12)
    # Measured rates: finite and positive; a CPU's bf16 matmul rate is between 1 MFLOP/s and 100 TFLOP/s.
    rates = [res["peak_bf16_flops"], *res["train_img_s"].values(), *res["sample_img_s"].values(),
             res["aot"]["step_s_edm"], res["aot"]["step_s_aot"], res["guidance"]["img_s"],
             res["discriminator_img_s"], res["fid_img_s"]]
    assert all(math.isfinite(v) and v > 0 for v in rates)
    assert 1e6 < res["peak_bf16_flops"] < 1e14
    # Ratios and projections are the closed forms of the measured numbers.
    t, s, r = res["train_img_s"], res["sample_img_s"], res["ratios"]
    assert r["train_fast_over_edm"] == pytest.approx(t["fast"] / t["edm_fp32_eager"])
    assert r["sample_fast_over_edm"] == pytest.approx(s["fast"] / s["edm_fp32_eager"])
    assert r["aot_step_time"] == pytest.approx(res["aot"]["step_s_aot"] / res["aot"]["step_s_edm"])
    assert all(math.isfinite(v) and v > 0 for v in r.values())
    assert res["sample_nfe"] == 2 * gpu.SIZES["smoke"]["sample_steps"] - 1
    flop = res["forward_gflop_per_img"] * 1e9
    evals = s["fast"] * res["sample_nfe"]
    assert res["sample_pct_peak"] == pytest.approx(100 * evals * flop / res["peak_bf16_flops"])
    assert res["minutes_50k_35nfe"] == pytest.approx(50_000 * 35 / evals / 60)
    assert res["flop_floor_minutes_50k"] == pytest.approx(50_000 * 35 * flop / res["peak_bf16_flops"] / 60)
    # Training losses finite and of EDM's order at initialisation (weight(sigma) * |D - y|^2 ~ 1);
    # sampling from the same latents: the untrained network's images agree within bf16 rounding.
    assert all(0.05 < v < 20 for v in res["train_loss"].values())
    rms = res["sample_rms"]
    assert math.isfinite(rms["fast"]) and abs(rms["fast"] - rms["edm_fp32_eager"]) < 2 ** -8 * rms["edm_fp32_eager"]
    # AOT pools were built and paired: the optimal pairing costs less than the pairing it started from.
    aot = res["aot"]
    assert aot["pools"] >= 1 and 0 < aot["cost_paired"] < aot["cost_random"]
    # The config's walltime rates: the closed forms of the measured numbers, in the config's units.
    z = gpu.SIZES["smoke"]
    assert res["aot"]["batch"] == z["aot_batch"] and res["guidance"]["nfe"] == 2 * z["dg_steps"] - 1
    assert res["site_walltime"] == pytest.approx({
        "train_kimg_s": 1000 * max(aot["step_s_edm"], aot["step_s_aot"]) / z["aot_batch"],
        "generate_image_nfe_s": 1 / (s["edm_fp32_eager"] * res["sample_nfe"]),
        "guidance_image_nfe_s": 1 / (res["guidance"]["img_s"] * res["guidance"]["nfe"]),
        "fid_image_s": 1 / res["fid_img_s"],
        "discriminator_image_epoch_s": 1 / res["discriminator_img_s"]}, rel=1e-12)
    # The printed table: the smoke banner and the same numbers; then the site snippet.
    table_text, snippet = stdout.split("\n\n", 1)
    check_site_snippet(snippet, res)
    if snippet_file is not None:
        assert snippet_file.read_text() == snippet
    lines = table_text.splitlines()
    assert lines[0].startswith("SMOKE RUN (") and "not results" in lines[0]
    printed = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in lines[1:])
    assert printed["forward cost"].startswith(f"{res['forward_gflop_per_img']:.6g} GFLOP/img")
    assert printed["AOT step time ratio"].startswith(f"{r['aot_step_time']:.3f}")
    sample_row = next(v for k, v in printed.items() if k.startswith(f"sample img/s at {res['sample_nfe']} NFE"))
    assert f"{r['sample_fast_over_edm']:.2f}x" in sample_row
    assert f"{r['train_fast_over_edm']:.2f}x" in printed["train img/s EDM fp32 / fast"]
    assert printed["FID features img/s"].startswith(f"{res['fid_img_s']:.4g}")


def check_site_snippet(snippet: str, res: dict) -> None:
    """The snippet: marked as a smoke run, valid YAML with the config's walltime keys, positive numbers
    within rounding of the measured rates, and taken by the workflow's config loader as a partial
    config layered onto config/config.yaml."""
    from aot.settings import RunSettings

    gpu = load_bench()
    assert snippet.startswith("# SMOKE RUN (") and "not rates for a site file" in snippet.splitlines()[0]
    doc = yaml.safe_load(snippet)
    assert list(doc) == ["walltime"] and tuple(doc["walltime"]) == gpu.WALLTIME_KEYS
    for key, value in doc["walltime"].items():
        assert type(value) is float and value > 0 and math.isfinite(value), (key, value)
        assert value == pytest.approx(res["site_walltime"][key], rel=5e-3), key  # 3 significant digits
    settings = RunSettings.load(doc, schema=ROOT / "workflow" / "schemas" / "config.schema.yaml",
                                paper=ROOT / "config" / "config.yaml")
    assert settings.layered_from == ["walltime"]
    paper = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    assert settings.config["walltime"] == {**settings.config["walltime"], **paper["walltime"],
                                           **doc["walltime"]}
    assert settings.config["models"] == paper["models"]


def test_smoke_run_on_cpu(tmp_path):
    """Every code path except torch.compile (the next test), in a few seconds."""
    before = snapshot()
    out, snippet = tmp_path / "smoke.json", tmp_path / "rates" / "site.yaml"
    res = run_bench("--smoke", "--device", "cpu", "--no-compile", "--threads", "1", "--out", str(out),
                    "--site-snippet", str(snippet))
    assert res.returncode == 0, res.stderr[-3000:]
    check_smoke_result(json.loads(out.read_text()), res.stdout, compile=False, snippet_file=snippet)
    assert snapshot() == before


@pytest.mark.slow
def test_smoke_run_on_cpu_with_compile(tmp_path):
    """The fast settings as the GPU run uses them, torch.compile included (inductor's C++ backend on a
    CPU); compiling training and sampling from scratch takes minutes on a busy 2-core machine."""
    if not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        skip_or_fail("torch.compile on a CPU needs a C++ compiler (inductor's C++ backend); none is on PATH")
    before = snapshot()
    out = tmp_path / "smoke.json"
    cache = tmp_path / "inductor"  # compiled from scratch, as in CI, apart from other compiling processes
    res = run_bench("--smoke", "--device", "cpu", "--threads", "1", "--out", str(out), timeout=1500,
                    TORCHINDUCTOR_CACHE_DIR=str(cache))
    assert res.returncode == 0, res.stderr[-3000:]
    check_smoke_result(json.loads(out.read_text()), res.stdout, compile=True)
    assert any(cache.glob("**/*.cpp")), "no C++ kernel was generated: was anything compiled?"
    assert snapshot() == before


@pytest.mark.parametrize("args, message", [
    (["--device", "cpu"], "the full benchmark needs a GPU; on a CPU run --smoke"),
    (["--smoke", "--device", "cpu", "--out", str(ROOT / "bench" / "results" / "gpu.json")],
     "smoke numbers are not results"),
    (["--smoke", "--device", "cpu", "--site-snippet", str(ROOT / "bench" / "results" / "site.yaml")],
     "smoke numbers are not results"),
    (["--smoke", "--device", "tpu"], "is not cuda or cpu"),
])
def test_refusals(args, message, capsys):
    before = snapshot()
    assert load_bench().main(args) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and message in captured.err and captured.err.count("\n") == 1
    assert captured.out == ""
    assert snapshot() == before


def test_without_cuda_the_gpu_run_is_refused(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert load_bench().main([]) == 2
    captured = capsys.readouterr()
    assert captured.err == ("error: bench/gpu.py needs a CUDA GPU (the CPU check of its code paths: "
                            "--smoke --device cpu)\n")
    assert captured.out == ""
