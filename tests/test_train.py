"""Training: EDM's recipe with AOT pools, resume after kills, 2-process DDP, early validation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from aot.checkpoints import load_network
from aot.loss import EDMLoss

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "digits.zip"
    subprocess.run([sys.executable, "-m", "aot.data", "digits", "--resolution", "8", "--dest", str(out)],
                   check=True, capture_output=True)
    return out


def train_cmd(outdir: Path, data: Path, *extra: str, kimg: float = 0.512) -> list[str]:
    return [sys.executable, "-m", "aot.train", "--outdir", str(outdir), "--data", str(data),
            "--arch", "ddpmpp", "--cbase", "8", "--cres", "1,2", "--num-blocks", "1", "--attn", "",
            "--duration", str(kimg / 1000), "--batch", "32", "--batch-gpu", "16", "--pool-size", "64",
            "--lr", "2e-3", "--lr-rampup", "0.0002", "--ema", "0.0005", "--dropout", "0.1", "--augment", "0.12",
            "--tick", "0.064", "--dump", "1", "--snap", "1000", "--device", "cpu", "--deterministic", "true",
            "--threads", "1", *extra]


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, **kw)


def final_weights(outdir: Path) -> dict[str, torch.Tensor]:
    net, meta = load_network(outdir / "network-final.pt")
    return {k: v.clone() for k, v in net.state_dict().items()}


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


@pytest.fixture(scope="module")
def straight_run(digits, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight")
    res = run(train_cmd(out, digits, "--aot", "true"))
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_edm_loss_matches_closed_form():
    """With D = 0 the loss is weight(sigma) * y^2; weight matches EDM's lambda(sigma)."""
    loss_fn = EDMLoss()
    y = torch.full([2, 1, 2, 2], 0.5)
    n = torch.randn_like(y)
    sigma = torch.tensor([0.5, 2.0]).view(2, 1, 1, 1)
    zero_net = lambda x, s, labels=None, augment_labels=None: torch.zeros_like(x)  # noqa: E731
    loss = loss_fn(zero_net, y, n, sigma=sigma)
    expected = ((sigma ** 2 + 0.25) / (sigma * 0.5) ** 2) * 0.25
    assert torch.allclose(loss, expected.expand_as(loss))
    # The identity denoiser D(x) = x has loss weight * sigma^2 * n^2.
    ident = lambda x, s, labels=None, augment_labels=None: x  # noqa: E731
    assert torch.allclose(loss_fn(ident, y, n, sigma=sigma), loss_fn.weight(sigma) * (sigma * n) ** 2)


def test_training_writes_outputs_and_logs_pairing(straight_run):
    files = {p.name for p in straight_run.iterdir()}
    assert {"network-final.pt", "training-state.pt", "stats.jsonl", "training_options.json"} <= files
    stats = [json.loads(line) for line in (straight_run / "stats.jsonl").read_text().splitlines()]
    assert stats[-1]["kimg"] == pytest.approx(0.512)
    # AOT's effect is visible in the log: paired cost below the cost of the unpaired pairs.
    assert all(s["paired_cost"] < s["random_cost"] for s in stats)
    net, meta = load_network(straight_run / "network-final.pt")
    assert meta["aot"] is True and meta["cond"] is False and meta["kimg"] == pytest.approx(0.512)


def test_sigterm_then_resume_gives_identical_weights(digits, straight_run, tmp_path, record_fault):
    """Interrupt with SIGTERM twice at different points; the resumed runs end bit-identical."""
    out = tmp_path / "killed"
    cmd = train_cmd(out, digits, "--aot", "true")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for delay_ticks in (1, 3):
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        # wait until the run has made progress past `delay_ticks` ticks, then signal it
        deadline = time.time() + 300
        stats = out / "stats.jsonl"
        while time.time() < deadline and proc.poll() is None:
            if stats.exists() and len(stats.read_text().splitlines()) >= delay_ticks:
                break
            time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode in (0, 75), output[-3000:]
        if proc.returncode == 75:
            assert "state saved" in output
    res = run(cmd)
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same_weights(final_weights(out), final_weights(straight_run))
    record_fault("interruption", "training stopped by SIGTERM (Slurm time limit / scancel) at two points",
                 "state saved, exit 75; resumed twice; final EMA weights bit-identical to an uninterrupted run",
                 count=2)


def test_kill9_then_resume_gives_identical_weights(digits, straight_run, tmp_path, record_fault):
    out = tmp_path / "kill9"
    cmd = train_cmd(out, digits, "--aot", "true")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (out / "training-state.pt").exists():
        time.sleep(0.02)
    time.sleep(0.3)
    proc.kill()
    proc.wait()
    res = run(cmd)
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same_weights(final_weights(out), final_weights(straight_run))
    record_fault("interruption", "training killed with SIGKILL (node failure) after its first state dump",
                 "resumed from the last state; final EMA weights bit-identical to an uninterrupted run")


def test_aot_off_is_a_different_run(digits, straight_run, tmp_path):
    res = run(train_cmd(tmp_path, digits, "--aot", "false", kimg=0.128))
    assert res.returncode == 0, res.stderr[-3000:]
    stats = [json.loads(line) for line in (tmp_path / "stats.jsonl").read_text().splitlines()]
    # Independent noise: the served pairs are the random pairs.
    assert all(s["paired_cost"] == pytest.approx(s["random_cost"]) for s in stats)


def test_two_process_gloo_training(digits, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           *train_cmd(tmp_path, digits, "--aot", "true", "--cond", "true", kimg=0.128)[1:]]
    res = run(cmd)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    opts = json.loads((tmp_path / "training_options.json").read_text())
    assert opts["world_size"] == 2 and opts["accumulation_rounds"] == 1
    net, meta = load_network(tmp_path / "network-final.pt")
    assert meta["cond"] is True and net.label_dim == 10


@pytest.mark.parametrize("args,message", [
    (["--pool-size", "40"], "--pool-size N=40 is not a multiple of the per-GPU batch B=16"),
    (["--pool-size", "8"], "--pool-size N=8 is smaller than the per-GPU batch B=16"),
    (["--batch", "24"], "not a multiple of --batch-gpu 16"),
    (["--augment", "1.5"], "--augment must be a probability"),
    (["--cres", "1,2,2,2,2"], "cannot be halved"),
])
def test_bad_options_fail_before_training(digits, tmp_path, args, message):
    res = run(train_cmd(tmp_path / "out", digits, *args))
    assert res.returncode == 2
    assert message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "network-final.pt").exists()
    assert not (tmp_path / "out" / "training-state.pt").exists()


def test_conditional_needs_labels(tmp_path):
    from PIL import Image

    folder = tmp_path / "nolabels"
    folder.mkdir()
    for i in range(4):
        Image.new("L", (8, 8), color=i * 40).save(folder / f"img{i}.png")
    res = run(train_cmd(tmp_path / "out", folder, "--cond", "true"))
    assert res.returncode == 2 and "labels" in res.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_resume_with_another_dataset_is_refused(digits, straight_run, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(straight_run, out)
    other = tmp_path / "digits16.zip"
    subprocess.run([sys.executable, "-m", "aot.data", "digits", "--resolution", "16", "--dest", str(other)],
                   check=True, capture_output=True)
    res = run(train_cmd(out, other, kimg=1.024))
    assert res.returncode == 2 and "another network or dataset" in res.stderr


def test_saves_and_exits_before_the_slurm_time_limit(digits, tmp_path, record_fault):
    """Where Slurm's signal cannot reach training (cgroup clusters), the job's end time from
    `squeue` makes it save its state and exit 75 `--slurm-margin` seconds before the limit."""
    import datetime

    fake = tmp_path / "bin"
    fake.mkdir()
    end = (datetime.datetime.now() + datetime.timedelta(seconds=100)).strftime("%Y-%m-%dT%H:%M:%S")
    (fake / "squeue").write_text(f"#!/bin/sh\necho {end}\n")
    (fake / "squeue").chmod(0o755)
    env = dict(os.environ, OMP_NUM_THREADS="1", SLURM_JOB_ID="123", PATH=f"{fake}:{os.environ['PATH']}")
    out = tmp_path / "run"
    res = subprocess.run(train_cmd(out, digits, "--slurm-margin", "300"), capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 75, res.stderr[-2000:]
    assert "Slurm time limit near" in res.stdout
    assert (out / "training-state.pt").exists() and not (out / "network-final.pt").exists()
    record_fault("interruption", "Slurm time limit where the signal cannot reach training (cgroup clusters)",
                 "state saved 300 s before the job's end time from squeue, exit 75")
