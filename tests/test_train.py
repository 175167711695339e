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
import warm

from aot.checkpoints import load_network
from aot.loss import EDMLoss

ROOT = Path(__file__).resolve().parents[1]


def train_cmd(outdir: Path, data: Path, *extra: str, kimg: float = 0.512) -> list[str]:
    return [sys.executable, "-m", "aot", "train", "--outdir", str(outdir), "--data", str(data),
            "--arch", "ddpmpp", "--cbase", "8", "--cres", "1,2", "--num-blocks", "1", "--attn", "",
            "--duration", str(kimg / 1000), "--batch", "32", "--batch-gpu", "16", "--pool-size", "64",
            "--lr", "2e-3", "--lr-rampup", "0.0002", "--ema", "0.0005", "--dropout", "0.1", "--augment", "0.12",
            "--tick", "0.064", "--dump", "1", "--snap", "1000", "--device", "cpu", "--deterministic",
            "--threads", "1", *extra]


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """`cmd` ([sys.executable, ...]) in a fresh interpreter (warm.run: forked from one that has imported torch)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return warm.run(cmd, capture_output=True, text=True, env=env, timeout=600, **kw)


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
    res = run(train_cmd(out, digits, "--aot"))
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


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _sigterm_after(cmd: list[str], stats: Path, new_ticks: int) -> tuple[int, str]:
    """Run `cmd`; once `new_ticks` more ticks are in `stats` (the loop and its handler are running),
    send SIGTERM. Returns the exit code and the output."""
    before = _lines(stats)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and _lines(stats) < before + new_ticks:
        time.sleep(0.05)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=300)
    return proc.returncode, output


def test_sigterm_then_resume_gives_identical_weights(digits, straight_run, tmp_path, record_fault):
    """Interrupt with SIGTERM twice at different points; the resumed runs end bit-identical.

    Both signals must land mid-run (exit 75 with the state saved); if a run finishes first, the
    whole sequence starts again with earlier signals."""
    import shutil

    out = tmp_path / "killed"
    cmd = train_cmd(out, digits, "--aot")
    stats = out / "stats.jsonl"
    for schedule in ((1, 2), (1, 1)):  # ticks of each attempt before its signal
        shutil.rmtree(out, ignore_errors=True)
        codes = []
        for new_ticks in schedule:
            code, output = _sigterm_after(cmd, stats, new_ticks)
            assert code in (0, 75), output[-3000:]
            codes.append(code)
            if code == 0:  # finished before the signal landed
                break
            assert "state saved" in output
            assert (out / "training-state.pt").exists() and not (out / "network-final.pt").exists()
        if codes == [75, 75]:
            break
    else:
        pytest.fail(f"training finished before the SIGTERM landed, even with the earliest signals (exits {codes})")
    res = run(cmd)
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same_weights(final_weights(out), final_weights(straight_run))
    record_fault("interruption", "training stopped by SIGTERM (Slurm time limit / scancel) at two points",
                 "state saved, exit 75; resumed twice; final EMA weights bit-identical to an uninterrupted run",
                 count=2)


def test_kill9_then_resume_gives_identical_weights(digits, straight_run, tmp_path, record_fault):
    """SIGKILL after the first state dump, mid-run (no network-final.pt yet); if the run finishes
    before the kill, again with an earlier kill."""
    import shutil

    out = tmp_path / "kill9"
    cmd = train_cmd(out, digits, "--aot")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for delay in (0.3, 0.0):  # seconds after the first state dump
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and not (out / "training-state.pt").exists():
            time.sleep(0.02)
        assert (out / "training-state.pt").exists(), "no state dump before the kill"
        time.sleep(delay)
        proc.kill()
        proc.wait()
        final_after_kill = (out / "network-final.pt").exists()
        if proc.returncode == -signal.SIGKILL and not final_after_kill:
            break
    else:
        pytest.fail("training finished before the SIGKILL landed, even right after the first state dump")
    assert not final_after_kill and (out / "training-state.pt").exists()
    res = run(cmd)
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same_weights(final_weights(out), final_weights(straight_run))
    record_fault("interruption", "training killed with SIGKILL (node failure) after its first state dump",
                 "killed mid-run (no network-final.pt); resumed from the last state; final EMA weights "
                 "bit-identical to an uninterrupted run")


def test_aot_off_is_a_different_run(digits, straight_run, tmp_path):
    res = run(train_cmd(tmp_path, digits, "--no-aot", kimg=0.128))
    assert res.returncode == 0, res.stderr[-3000:]
    stats = [json.loads(line) for line in (tmp_path / "stats.jsonl").read_text().splitlines()]
    # Independent noise: the served pairs are the random pairs.
    assert all(s["paired_cost"] == pytest.approx(s["random_cost"]) for s in stats)


@pytest.fixture
def restored_torch_globals():
    """Building a run in this process seeds torch and numpy and sets torch's backend flags: put
    them back afterwards for the other tests of the process."""
    import numpy as np

    rng, np_rng = torch.get_rng_state(), np.random.get_state()
    flags = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
             torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    yield
    torch.set_rng_state(rng)
    np.random.set_state(np_rng)
    torch.use_deterministic_algorithms(flags[0])
    (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32,
     torch.backends.cuda.matmul.allow_tf32) = flags[1:]


def _seeded_draws(digits: Path, outdir: Path, seed: int, augment: float) -> dict[str, torch.Tensor]:
    """What a run's seed decides, drawn from a freshly built run (aot.train.Training, one CPU
    process): the initial weights, the first minibatch of the first AOT pool (images in the data
    order, with their augmentations, and their paired noise), the first sigma draw and the next
    draw of torch's global generator (dropout)."""
    import inspect
    import types

    from aot import train as tr

    defaults = {k: p.default for k, p in inspect.signature(tr.training_loop).parameters.items()}
    opts = types.SimpleNamespace(**{
        **defaults, "outdir": str(outdir), "data": str(digits), "arch": "ddpmpp", "cbase": 8, "cres": [1, 2],
        "num_blocks": 1, "attn": [], "duration": 0.001, "batch": 32, "batch_gpu": 16, "pool_size": 64,
        "augment": augment, "device": "cpu", "seed": seed, "aot": True})
    tr.validate(opts, 1)
    run = tr.Training(opts, tr.Dist("cpu"))
    try:
        images, noise, _, augment_labels = next(run.pool.batches())
        draws = {"weights": torch.cat([p.detach().flatten() for p in run.net.parameters()]),
                 "images": images.clone(), "noise": noise.clone(),
                 "sigma": run.loss_fn.sample_sigma(16, run.device, generator=run.sigma_gen).flatten(),
                 "global (dropout)": torch.rand(8)}
        if augment_labels is not None:
            draws["augmentations"] = augment_labels.clone()
        return draws
    finally:
        run.pool.close()


def test_the_seed_reaches_every_random_draw_of_training(digits, tmp_path, restored_torch_globals):
    """Two runs that differ only in their seed differ in every draw the seed decides (weights, data
    order, augmentations, AOT pool noise, sigmas, dropout); the same seed gives bit-identical
    draws. The paper config's EDM and EDM-AOT of a part share their seed (models[].train.seed):
    they start from the same weights and see the same images, augmentations, noise and sigmas."""
    a = _seeded_draws(digits, tmp_path / "a", 0, augment=0.5)
    b = _seeded_draws(digits, tmp_path / "b", 0, augment=0.5)
    c = _seeded_draws(digits, tmp_path / "c", 1, augment=0.5)
    assert a.keys() == b.keys() == c.keys() and "augmentations" in a
    for k in a:
        assert torch.equal(a[k], b[k]), f"same seed, different {k}"
        assert not torch.equal(a[k], c[k]), f"another seed, same {k}"
    # without augmentation the images differ by the data order alone
    plain0, plain1 = (_seeded_draws(digits, tmp_path / f"p{s}", s, augment=0.0)["images"] for s in (0, 1))
    assert not torch.equal(plain0, plain1)
    # the paper's pairs: one seed per part, written out in the config
    import yaml

    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    seeds = {m["name"]: m["train"]["seed"] for m in cfg["models"] if m.get("source", "train") == "train"}
    for part in ("uncond", "cond"):
        assert seeds[cfg["tables"][part]["edm"]] == seeds[cfg["tables"][part]["aot"]]


def test_two_process_gloo_training(digits, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           *train_cmd(tmp_path, digits, "--aot", "--cond", kimg=0.128)[1:]]
    res = run(cmd)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    opts = json.loads((tmp_path / "training_options.json").read_text())
    assert opts["world_size"] == 2 and opts["accumulation_rounds"] == 1
    net, meta = load_network(tmp_path / "network-final.pt")
    assert meta["cond"] is True and net.label_dim == 10
    # The numbers: a second identical 2-process run ends bit-identical (weights and per-tick losses;
    # gloo's all-reduce over two ranks is exact), and the losses are finite.
    again = tmp_path / "again"
    at = cmd.index("--outdir") + 1
    res = run([*cmd[:at], str(again), *cmd[at + 1:]])
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    assert_same_weights(final_weights(tmp_path), final_weights(again))
    losses = [[json.loads(line)["loss"] for line in (d / "stats.jsonl").read_text().splitlines()]
              for d in (tmp_path, again)]
    assert losses[0] == losses[1] and len(losses[0]) >= 2
    assert all(0 < loss < 100 for loss in losses[0]), losses[0]


def _torchrun(cmd: list[str], nproc: int = 2) -> list[str]:
    """`cmd` (a `python -m aot train ...` command) under torchrun with `nproc` CPU processes."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *cmd[1:]]


def test_two_process_state_resumed_by_one_process_is_refused(digits, tmp_path):
    """Each process saved its own data stream and pools; one process cannot continue both: one line, exit 2."""
    out = tmp_path / "two"
    res = run(_torchrun(train_cmd(out, digits, "--aot", kimg=0.064)))
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    state = (out / "training-state.pt").read_bytes()
    res = run(train_cmd(out, digits, "--aot", kimg=0.128))
    assert res.returncode == 2, res.stderr[-3000:]
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "was saved by 2 processes and this run has 1; resume with --nproc-per-node 2" in res.stderr
    assert (out / "training-state.pt").read_bytes() == state


def test_one_process_state_resumed_by_two_processes_is_refused(digits, straight_run, tmp_path):
    """The other way round: the ranks stop with the same line (no IndexError), the state is kept. (The
    first rank to exit makes torchrun stop the other, which may not have printed its line yet.)"""
    import shutil

    out = tmp_path / "one"
    shutil.copytree(straight_run, out)
    state = (out / "training-state.pt").read_bytes()
    res = run(_torchrun(train_cmd(out, digits, "--aot", kimg=1.024)))
    assert res.returncode != 0
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert 1 <= len(errors) <= 2 and len(set(errors)) == 1, res.stderr[-4000:]
    assert "was saved by 1 process and this run has 2; resume with one process" in errors[0]
    assert "IndexError" not in res.stderr
    assert (out / "training-state.pt").read_bytes() == state


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
    res = run(train_cmd(tmp_path / "out", folder, "--cond"))
    assert res.returncode == 2 and "labels" in res.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_resume_with_another_dataset_is_refused(digits, straight_run, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(straight_run, out)
    other = tmp_path / "digits16.zip"
    subprocess.run([sys.executable, "-m", "aot", "data", "digits", "--resolution", "16", "--dest", str(other)],
                   check=True, capture_output=True)
    res = run(train_cmd(out, other, kimg=1.024))
    assert res.returncode == 2 and "another network or dataset" in res.stderr


@pytest.mark.parametrize("part", ["net", "optimizer", "rng"])
def test_resume_from_a_state_that_does_not_fit_is_refused(digits, straight_run, tmp_path, part, record_fault):
    """A training state whose keys are right but whose contents do not fit the run (a weight of another
    shape, an optimizer of another network, a broken random state): one line, exit 2, state kept."""
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(straight_run, out)
    state = torch.load(out / "training-state.pt", weights_only=False)
    if part == "net":
        first = next(iter(state["net"]))
        state["net"][first] = torch.zeros(1)
    elif part == "optimizer":
        state["optimizer"]["param_groups"][0]["params"] = [0]
    else:
        state["ranks"][0]["rng"]["torch_cpu"] = torch.zeros(3, dtype=torch.uint8)
    torch.save(state, out / "training-state.pt")
    before = (out / "training-state.pt").read_bytes()
    final = (out / "network-final.pt").read_bytes()  # of the finished 0.512 kimg run
    res = run(train_cmd(out, digits, "--aot", kimg=1.024))
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert res.returncode == 2 and len(errors) == 1, res.stderr[-3000:]
    assert "does not fit this run" in errors[0] and "Traceback" not in res.stderr
    assert (out / "training-state.pt").read_bytes() == before
    assert (out / "network-final.pt").read_bytes() == final
    record_fault("bad input", f"training state whose {part} does not fit the run", f"exit 2: `{errors[0][:100]}`")


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


def test_more_processes_than_the_batch_allows_are_refused_not_a_smaller_b():
    """Batch 128 with B = 32 over 8 processes would be 16 per GPU: training refuses (EDM would
    quietly take B = 16, another AOT recipe), naming what would keep it."""
    import inspect
    import types

    from aot.settings import BatchError
    from aot.train import training_loop, validate

    defaults = {k: p.default for k, p in inspect.signature(training_loop).parameters.items()
                if p.default is not inspect.Parameter.empty}
    opts = types.SimpleNamespace(**{**defaults, "batch": 128, "batch_gpu": 32, "pool_size": 2048})
    with pytest.raises(BatchError, match=r"--batch 128 is not a multiple of --batch-gpu 32 x 8 process\(es\) "
                                         r"\(16 per GPU\): the recipe's B would change; GPUs x nodes that keep both: "
                                         r"1, 2, 4 in all"):
        validate(opts, world_size=8)
    validate(opts, world_size=4)
    assert opts.batch_gpu == 32
