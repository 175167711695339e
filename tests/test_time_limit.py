"""Every long job watches the clock: inside a Slurm job, generation (`aot generate`, `aot dg generate`)
and discriminator training (`aot dg train`) stop at their next safe point once the job's end time
(SLURM_JOB_END_TIME, else squeue) is less than `--slurm-margin` seconds away, keep what is finished,
exit 75 and requeue themselves; the rerun finishes with the results of a run that never stopped.
No signal is sent in these tests: on clusters that track processes by cgroup none would arrive.
Also: a GPU job whose torch cannot use CUDA fails at once with one line that says why."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_dg import _digits_vs_noise, _digits_vs_noise_files
from test_generate import tiny_net
from test_sets import _offline_reference

from aot import generate as gen
from aot import runtime
from aot import samples as samples_mod
from aot.checkpoints import save_network
from aot.cli import main as aot_main
from aot.dg import training as dg_training
from aot.errors import EXIT_PREEMPTED, UserError

ROOT = Path(__file__).resolve().parents[1]
JOB = "4242"
SLURM_VARS = ("SLURM_JOB_ID", "SLURM_JOB_END_TIME", "SLURM_RESTART_COUNT", runtime.REQUEUE_ENV)


def _clean_env() -> dict:
    """This process's environment without any Slurm job of its own (pytest may run inside one)."""
    return {k: v for k, v in os.environ.items() if k not in SLURM_VARS} | {"OMP_NUM_THREADS": "1"}


@pytest.fixture
def no_slurm(monkeypatch):
    for k in SLURM_VARS:
        monkeypatch.delenv(k, raising=False)


@pytest.fixture
def fake_scontrol(tmp_path):
    """A folder with an `scontrol` that records its arguments (the requeue) and succeeds."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "scontrol.calls"
    (bin_dir / "scontrol").write_text(
        '#!/bin/sh\n'
        'if [ "$1" = show ]; then echo "JobId=$4 JobState=${FAKE_JOB_STATE:-RUNNING} Restarts=${FAKE_RESTARTS:-0}"; '
        'exit 0; fi\n'
        f'echo "$@" >> {record}\n')
    (bin_dir / "scontrol").chmod(0o755)
    return bin_dir, record


def _until_deadline(make_cmd, work: int, env: dict, progress, clean,
                    margin: int = 2) -> tuple[subprocess.CompletedProcess, int, int]:
    """Run `make_cmd(work)` in a Slurm job (SLURM_JOB_ID, SLURM_JOB_END_TIME `lead + margin` seconds
    ahead) with `--slurm-margin margin`, so that it stops about `lead` seconds after it is started.
    The process's own start-up takes some of that: a run that stopped before it had finished
    anything is repeated with a longer lead, and one that finished everything (a fast machine) with
    twice the work. Returns the run that stopped with work done, its end time and the work."""
    lead = 6
    for _ in range(5):
        clean()
        end = int(time.time()) + lead + margin
        res = subprocess.run([*make_cmd(work), "--slurm-margin", str(margin)], capture_output=True, text=True,
                             timeout=300, cwd=ROOT, env=dict(env, SLURM_JOB_ID=JOB, SLURM_JOB_END_TIME=str(end)))
        assert res.returncode in (0, EXIT_PREEMPTED), res.stdout[-2000:] + res.stderr[-3000:]
        if res.returncode == 0:
            work *= 2
        elif progress() > 0:
            return res, end, work
        else:
            lead += 4
    pytest.fail(f"no run stopped at its deadline with work done (last: {lead} s ahead, work {work})")


def _stopped_for_the_deadline(res: subprocess.CompletedProcess, end: int) -> None:
    """The log names the injected end time and says the job stopped for it (not for a signal)."""
    clock = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(end))
    out = res.stdout
    assert f"Slurm job {JOB} ends at {clock} (SLURM_JOB_END_TIME)" in out, out[-3000:]
    assert f"stopping: Slurm job {JOB} ends at {clock} (SLURM_JOB_END_TIME), less than --slurm-margin 2 s" in out
    assert f"exiting with code {EXIT_PREEMPTED}" in out
    assert "signal" not in out.lower().replace("only a signal", "")
    assert "Traceback" not in res.stderr, res.stderr[-3000:]


# ------------------------------------------------------------------------------------------------
# The end time and the clock


def test_end_time_from_the_environment_else_squeue(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_END_TIME", "1900000000")
    assert runtime.job_end_time(JOB) == (1900000000.0, "SLURM_JOB_END_TIME")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "squeue").write_text("#!/bin/sh\necho 2030-01-02T03:04:05\n")
    (fake / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    monkeypatch.delenv("SLURM_JOB_END_TIME")
    end, source = runtime.job_end_time(JOB)
    assert source == "squeue" and time.localtime(end)[:6] == (2030, 1, 2, 3, 4, 5)
    (fake / "squeue").write_text("#!/bin/sh\necho 'slurm_load_jobs error: Invalid job id specified' >&2\nexit 1\n")
    end, source = runtime.job_end_time(JOB)
    assert end is None and "Invalid job id" in source
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert runtime.job_end_time(JOB) == (None, "SLURM_JOB_END_TIME not set, squeue not found")


def test_margin_zero_or_outside_slurm_never_reads_the_clock(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_END_TIME", str(int(time.time())))
    monkeypatch.setenv("SLURM_JOB_ID", JOB)
    assert runtime.Preemption().deadline is None
    monkeypatch.delenv("SLURM_JOB_ID")
    assert runtime.Preemption(margin=300).deadline is None


def test_a_piece_running_at_half_the_margin_is_given_up(monkeypatch):
    """With raise_on_signal, the end time minus half the margin interrupts the running piece as a
    signal would (exit 75), so that the job still requeues itself before Slurm kills it."""
    logged = []
    monkeypatch.setenv("SLURM_JOB_ID", JOB)
    monkeypatch.setenv("SLURM_JOB_END_TIME", str(int(time.time()) + 4))
    before = signal.getsignal(signal.SIGTERM)
    t0 = time.monotonic()
    with pytest.raises(SystemExit) as exc:
        with runtime.Preemption(margin=4, raise_on_signal=True, log=logged.append) as stop:
            while time.monotonic() - t0 < 10:  # a piece that would run past the end
                time.sleep(0.01)
    assert exc.value.code == EXIT_PREEMPTED and stop.hard_stop and time.monotonic() - t0 < 5
    assert any("did not finish within half of it" in s for s in logged), logged
    assert signal.getsignal(signal.SIGTERM) is before


def test_requeue_without_scontrol_says_what_is_missing(tmp_path, monkeypatch):
    logged = []
    monkeypatch.setenv("SLURM_JOB_ID", JOB)
    monkeypatch.setenv(runtime.REQUEUE_ENV, "2")
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert runtime.requeue_slurm_job(log=logged.append) is False
    assert len(logged) == 1 and "\n" not in logged[0]
    assert "scontrol is not on PATH" in logged[0] and "slurm-client" in logged[0] and "--bind" in logged[0]


# ------------------------------------------------------------------------------------------------
# Generation: stops before a shard, keeps the finished ones, requeues; the rerun is bit-identical


GEN_ARGS = ["--steps", "12", "--batch", "4", "--shard-size", "4", "--device", "cpu",
            "--threads", "1"]


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    d = tmp_path_factory.mktemp("net")
    save_network(d / "cond.pt", tiny_net(label_dim=10), model="tiny-cond", aot=True, cond=True, kimg=1.5,
                 source="trained")
    save_network(d / "gray.pt", tiny_net(label_dim=0, channels=1, seed=1), model="tiny-gray", aot=False,
                 cond=False, kimg=2.0, source="trained")
    return d


def test_generate_stops_at_the_slurm_end_time_and_the_rerun_finishes_bit_identical(tmp_path, network, no_slurm,
                                                                                 fake_scontrol, record_fault):
    bin_dir, calls = fake_scontrol
    out = tmp_path / "rep0.npz"
    sdir = samples_mod.shards_dir(out)
    env = _clean_env() | {"PATH": f"{bin_dir}:{os.environ['PATH']}", runtime.REQUEUE_ENV: "2"}

    def args(n):  # n seeds, 4 to a shard
        return ["--seeds", f"0-{n - 1}", *GEN_ARGS, "--out", str(out)]

    def clean():
        import shutil

        shutil.rmtree(sdir, ignore_errors=True)
        calls.unlink(missing_ok=True)

    res, end, n = _until_deadline(lambda n: [sys.executable, "-m", "aot", "generate", "--network",
                                             str(network / "cond.pt"), *args(n)],
                                  120, env, lambda: len(list(sdir.glob("shard-*.npz"))), clean)
    cmd = [sys.executable, "-m", "aot", "generate", "--network", str(network / "cond.pt"), *args(n)]
    _stopped_for_the_deadline(res, end)
    kept = len(list(sdir.glob("shard-*.npz")))
    assert 0 < kept < n // 4 and not out.exists()
    assert f"the finished shards of {out.name} are kept in {sdir}" in res.stdout
    # the job put itself back into the queue
    assert calls.read_text().split() == ["requeue", JOB]
    assert f"requeued Slurm job {JOB} (restart 1 of at most 2)" in res.stderr

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=_clean_env())
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming: {kept} of {n // 4} shards" in rerun.stdout
    ref = tmp_path / "ref.npz"
    aot_main(["generate", "--network", str(network / "cond.pt"), *args(n)[:-1], str(ref)])
    a, b = np.load(out), np.load(ref)
    for key in ("images", "labels", "seeds"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not sdir.exists()
    record_fault("interruption", "Slurm end time (SLURM_JOB_END_TIME) near during generation, no signal",
                 f"stopped before a shard, {kept} of {n // 4} shards kept, exit 75, requeued; rerun bit-identical")


@pytest.mark.parametrize("command", ["generate", "dg"])
def test_no_measurement_starts_without_time_left(tmp_path, network, monkeypatch, no_slurm, capsys, command,
                                                 record_fault):
    """The sets are made in time, then the end time is less than --slurm-margin away: the FID
    measurement does not start, the job exits 75 with the sets' shards kept, and the rerun (after
    Snakemake removed the failed job's outputs) merges them without sampling and measures."""
    ref = tmp_path / "fid"
    ref.mkdir()
    _offline_reference(ref, channels=1, seed=1)
    outs = [tmp_path / f"rep{i}.npz" for i in range(2)]
    jsons = [tmp_path / f"rep{i}.json" for i in range(2)]
    head = ["generate"]
    if command == "dg":
        from test_hostile_dg import _extractor, _head

        from aot.dg import GuidedDiscriminator
        from aot.dg.discriminator import save_discriminator

        save_discriminator(tmp_path / "disc.pt", GuidedDiscriminator(_extractor(), _head()), aot=True, cond=False)
        head = ["dg", "generate", "--discriminator", str(tmp_path / "disc.pt")]
    argv = [*head, "--network", str(network / "gray.pt"), "--seeds", "0-11", "--steps", "3", "--batch", "3",
            "--shard-size", "3", "--device", "cpu", "--out", *map(str, outs), "--fid-ref", str(ref / "ref.npz"),
            "--fid-out", *map(str, jsons), "--slurm-margin", "600"]
    monkeypatch.setenv("SLURM_JOB_ID", JOB)
    monkeypatch.setenv("SLURM_JOB_END_TIME", str(int(time.time()) + 3600))
    original = gen.run_generation_sets

    def then_late(*args, **kwargs):  # the sets take until 60 s before the job's end
        metas = original(*args, **kwargs)
        monkeypatch.setenv("SLURM_JOB_END_TIME", str(int(time.time()) + 60))
        return metas

    monkeypatch.setattr(gen, "run_generation_sets", then_late)
    with pytest.raises(SystemExit) as exc:
        aot_main(argv)
    assert exc.value.code == EXIT_PREEMPTED
    out = capsys.readouterr().out
    assert "less than --slurm-margin 600 s from now; the sets' shards are kept" in out
    assert all(p.is_file() for p in outs) and not any(p.exists() for p in jsons)
    assert all(len(list(samples_mod.shards_dir(p).glob("shard-*.npz"))) == 2 for p in outs)

    monkeypatch.undo()
    for k in SLURM_VARS:
        monkeypatch.delenv(k, raising=False)
    for p in outs:  # what Snakemake does with the outputs of a failed job
        p.unlink()
    sampled = []
    monkeypatch.setattr(gen, "generate_images", lambda *a, **k: sampled.append(1))
    aot_main(argv)
    assert sampled == [] and all(p.is_file() for p in outs + jsons)
    assert not any(samples_mod.shards_dir(p).exists() for p in outs)
    assert [json.loads(p.read_text())["repeat"] for p in jsons] == [0, 1]
    record_fault("interruption", f"Slurm end time near after `{' '.join(head[:2])}` made its sets, before the FID",
                 "measurement not started, exit 75, shards kept; rerun merges them and measures")


# ------------------------------------------------------------------------------------------------
# Discriminator training: saves the state mid-epoch, requeues; the resumed run is bit-identical


DG_ARGS = ["--scratch-width", "32", "--width", "32", "--depth", "1", "--batch", "16", "--aot", "--pool-size", "32",
           "--cond", "--seed", "3", "--device", "cpu", "--threads", "1", "--snapshot-epochs", "0"]


def _same_discriminator(a: Path, b: Path) -> None:
    da, db = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    for part in ("head", "feature_extractor"):
        assert da[part]["state_dict"].keys() == db[part]["state_dict"].keys()
        for k, v in da[part]["state_dict"].items():
            assert torch.equal(v, db[part]["state_dict"][k]), (part, k)


def _untimed_stats(folder: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if not k.endswith("time_s")}
            for line in (folder / "stats.jsonl").read_text().splitlines()]


def test_dg_train_stops_at_the_slurm_end_time_and_resumes_bit_identical(tmp_path, no_slurm, fake_scontrol,
                                                                        record_fault):
    bin_dir, calls = fake_scontrol
    data, fake = _digits_vs_noise_files(tmp_path, 64)
    out = tmp_path / "run"
    env = _clean_env() | {"PATH": f"{bin_dir}:{os.environ['PATH']}", runtime.REQUEUE_ENV: "2"}

    def common(epochs):
        return ["dg", "train", "--data", str(data), "--samples", str(fake), *DG_ARGS, "--epochs", str(epochs)]

    def clean():
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        calls.unlink(missing_ok=True)

    res, end, epochs = _until_deadline(lambda e: [sys.executable, "-m", "aot", *common(e), "--out", str(out),
                                                  "--resume"],
                                       10, env, lambda: (out / "training-state.pt").is_file(), clean)
    cmd = [sys.executable, "-m", "aot", *common(epochs), "--out", str(out), "--resume"]
    _stopped_for_the_deadline(res, end)
    assert "state saved in" in res.stdout
    assert not (out / "discriminator.pt").exists() and not (out / "result.json").exists()
    assert calls.read_text().split() == ["requeue", JOB]
    state = torch.load(out / "training-state.pt", weights_only=True)
    assert state["epoch"] < epochs

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=_clean_env())
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming discriminator training from epoch {state['epoch']}" in rerun.stdout
    aot_main([*common(epochs), "--out", str(tmp_path / "straight")])
    _same_discriminator(out / "discriminator.pt", tmp_path / "straight" / "discriminator.pt")
    assert _untimed_stats(out) == _untimed_stats(tmp_path / "straight")
    record_fault("interruption", "Slurm end time (SLURM_JOB_END_TIME) near during discriminator training, no signal",
                 "state saved after a pool of batches, exit 75, requeued; --resume gives the same weights")


def test_dg_train_stopped_at_a_deadline_in_process_resumes_bit_identical(tmp_path, monkeypatch, no_slurm, capsys):
    """The unit version: the same command in this process, its deadline (to the millisecond here)
    a quarter of the time the uninterrupted run took ahead."""
    data, fake = _digits_vs_noise_files(tmp_path, 64)
    common = ["dg", "train", "--data", str(data), "--samples", str(fake), *DG_ARGS, "--epochs", "5"]
    t0 = time.time()
    aot_main([*common, "--out", str(tmp_path / "straight")])
    monkeypatch.setenv("SLURM_JOB_ID", JOB)
    monkeypatch.setenv("SLURM_JOB_END_TIME", f"{time.time() + 1000 + (time.time() - t0) / 4:.3f}")
    with pytest.raises(SystemExit) as exc:
        aot_main([*common, "--out", str(tmp_path / "run"), "--resume", "--slurm-margin", "1000"])
    assert exc.value.code == EXIT_PREEMPTED
    assert "less than --slurm-margin 1000 s from now" in capsys.readouterr().out
    assert not (tmp_path / "run" / "discriminator.pt").exists()
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.delenv("SLURM_JOB_END_TIME")
    aot_main([*common, "--out", str(tmp_path / "run"), "--resume"])
    _same_discriminator(tmp_path / "run" / "discriminator.pt", tmp_path / "straight" / "discriminator.pt")


@pytest.mark.parametrize("stop_at", [2, 4, 7])  # mid-epoch 1, end of epoch 1, mid-epoch 2 (calls of stop())
def test_discriminator_stopped_at_a_pool_resumes_bit_identical(tmp_path, stop_at):
    real, real_labels, fake, fake_labels = _digits_vs_noise(64)
    kw = dict(cond=True, aot=True, pool_size=32, epochs=3, snapshot_epochs=0, log=lambda s: None, seed=5,
              scratch_width=32, scratch_depth=1, width=32, depth=1, batch=16, lr=1e-3, device="cpu")
    straight = dg_training.train_discriminator(real, real_labels, fake, fake_labels, tmp_path / "a", **kw)
    calls = []

    def stop():  # asked after each pool but an epoch's last (3 per epoch), and after each epoch
        calls.append(1)
        return len(calls) == stop_at

    res = dg_training.train_discriminator(real, real_labels, fake, fake_labels, tmp_path / "b", stop=stop, **kw)
    assert res == {"stopped": True, "epoch": 1 if stop_at >= 4 else 0}
    state = torch.load(tmp_path / "b" / "training-state.pt", weights_only=True)
    assert (state["partial"] is None) == (stop_at == 4)
    resumed = dg_training.train_discriminator(real, real_labels, fake, fake_labels, tmp_path / "b", resume=True,
                                              **kw)
    _same_discriminator(tmp_path / "a" / "discriminator.pt", tmp_path / "b" / "discriminator.pt")
    untimed = [[{k: v for k, v in s.items() if not k.endswith("time_s")} for s in r["stats"]]
               for r in (straight, resumed)]
    assert untimed[0] == untimed[1]


def _partial_state(tmp_path) -> tuple[Path, dict, tuple]:
    real, real_labels, fake, fake_labels = _digits_vs_noise(64)
    kw = dict(cond=True, aot=True, pool_size=32, epochs=2, snapshot_epochs=0, log=lambda s: None, seed=5,
              scratch_width=32, scratch_depth=1, width=32, depth=1, batch=16, lr=1e-3, device="cpu")
    calls = []
    dg_training.train_discriminator(real, real_labels, fake, fake_labels, tmp_path, stop=lambda: calls.append(1)
                                    or len(calls) == 5, **kw)
    return tmp_path / "training-state.pt", kw, (real, real_labels, fake, fake_labels)


def test_damaged_partial_epoch_is_refused_in_one_line(tmp_path):
    path, kw, arrays = _partial_state(tmp_path)
    honest = torch.load(path, weights_only=True)
    assert honest["partial"]["next"] == 2  # 4 pools of 2 batches: stopped after the first of epoch 2
    part = honest["partial"]
    cases = {
        "order repeats an image": dict(part, order=torch.zeros_like(part["order"])),
        "order too short": dict(part, order=part["order"][:-1]),
        "next not at a pool boundary": dict(part, next=1),
        "next past the epoch": dict(part, next=8),
        "losses of other batches": dict(part, losses=part["losses"][:1]),
        "pairing stats missing": dict(part, pair_stats=[]),
        "another epoch": dict(part, epoch=0),
        "epoch a tensor": dict(part, epoch=torch.ones(3)),
        "losses a number": dict(part, losses=3),
        "order of floats": dict(part, order=part["order"].double()),
        "not a dict": [1, 2],
    }
    for name, bad in cases.items():
        torch.save(dict(honest, partial=bad), path)
        with pytest.raises(UserError) as exc:
            dg_training.train_discriminator(*arrays, tmp_path, resume=True, **kw)
        assert "partial epoch" in str(exc.value) and "\n" not in str(exc.value), name
    torch.save(honest, path)
    real, real_labels, fake, fake_labels = arrays
    with pytest.raises(UserError, match="trained on other images"):
        dg_training.train_discriminator(real, real_labels, fake[::-1].copy(), fake_labels, tmp_path, resume=True,
                                        **kw)
    dg_training.train_discriminator(*arrays, tmp_path, resume=True, **kw)
    assert (tmp_path / "discriminator.pt").is_file()


# ------------------------------------------------------------------------------------------------
# CUDA that torch cannot use: one line, at once


def _cuda_build() -> tuple[int, int]:
    major = int(torch.version.cuda.split(".")[0]) if torch.version.cuda else 0
    return major, runtime.MIN_DRIVER.get(major, 0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine where torch has no CUDA")
@pytest.mark.parametrize("command", [["generate", "--network", "NET", "--seeds", "0", "--out", "x.npz"],
                                     ["train", "--outdir", "run", "--duration", "0.001", "--data", "DATA"],
                                     ["dg", "train", "--samples", "s.npz", "--out", "d", "--data", "DATA"],
                                     ["fid", "reference", "--out", "r.npz", "--data", "DATA"]],
                         ids=["generate", "train", "dg-train", "fid-reference"])
def test_cuda_requested_without_usable_cuda_fails_at_once_in_one_line(tmp_path, network, command):
    data, _ = _digits_vs_noise_files(tmp_path, 8)
    before = sorted(tmp_path.rglob("*"))
    argv = [{"NET": str(network / "cond.pt"), "DATA": str(data)}.get(a, a) for a in command]
    res = subprocess.run([sys.executable, "-m", "aot", *argv, "--device", "cuda"], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path, env=_clean_env())
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr[-3000:]
    line = lines[0]
    assert line.startswith("error: --device cuda: CUDA is not available: ") and str(torch.__version__) in line
    base = str(torch.__version__).split("+")[0]
    assert f"pip install torch=={base} --index-url https://download.pytorch.org/whl/cuXYZ" in line
    major, need = _cuda_build()
    if need:
        assert f"needs an NVIDIA driver >= {need} (CUDA {torch.version.cuda})" in line
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


@pytest.mark.skipif(not torch.version.cuda or _cuda_build()[1] == 0, reason="a torch build for a known CUDA major")
def test_the_reason_names_an_old_driver_and_the_wheel_to_install():
    major, need = _cuda_build()
    line = runtime.cuda_unavailable_reason(driver=(f"{need - 40}.104.05", "nvidia-smi"), driver_cuda=f"{major - 1}.2")
    assert "\n" not in line
    assert f"found driver {need - 40}.104.05 (nvidia-smi), supporting CUDA {major - 1}.2, which is too old" in line
    assert f"needs an NVIDIA driver >= {need} (CUDA {torch.version.cuda})" in line
    assert f"--index-url https://download.pytorch.org/whl/cuXYZ (cuXYZ: a CUDA {major - 1}.x build" in line
    # torch's own warning gives the driver's CUDA version where libcuda and nvidia-smi say nothing
    runtime._CUDA_WARNINGS.append(f"CUDA initialization: The NVIDIA driver on your system is too old (found "
                                  f"version {(major - 1) * 1000 + 40})")
    try:
        line = runtime.cuda_unavailable_reason(driver=(None, "nvidia-smi not found"))
    finally:
        runtime._CUDA_WARNINGS.pop()
    assert f"supporting CUDA {major - 1}.4, which is too old" in line


@pytest.mark.skipif(not torch.version.cuda or _cuda_build()[1] == 0, reason="a torch build for a known CUDA major")
def test_the_reason_with_a_new_enough_driver_is_a_missing_gpu(monkeypatch):
    major, need = _cuda_build()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    line = runtime.cuda_unavailable_reason(driver=(f"{need + 5}.10", "nvidia-smi"), driver_cuda=f"{major}.1")
    assert "but torch sees no usable GPU (CUDA_VISIBLE_DEVICES='')" in line and "--device cpu" in line


def test_the_reason_for_a_cpu_build(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    line = runtime.cuda_unavailable_reason()
    assert "is built without CUDA" in line and "--index-url https://download.pytorch.org/whl/cuXYZ" in line


@pytest.mark.parametrize("state, restarts, requeued", [("RUNNING", "0", True), ("RUNNING", "2", False),
                                                        ("COMPLETING", "0", False), ("CANCELLED", "0", False)])
def test_requeue_asks_the_jobs_own_record(tmp_path, monkeypatch, fake_scontrol, state, restarts, requeued):
    """The job step plugin passes no SLURM_RESTART_COUNT to a rule's command: the cap on requeues
    reads the job's Restarts from scontrol; and a job being cancelled (scancel sends the same
    SIGTERM as a time limit) is not put back into the queue."""
    bin_dir, calls = fake_scontrol
    logged = []
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", JOB)
    monkeypatch.setenv(runtime.REQUEUE_ENV, "2")
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("FAKE_JOB_STATE", state)
    monkeypatch.setenv("FAKE_RESTARTS", restarts)
    assert runtime.requeue_slurm_job(log=logged.append) is requeued
    assert (calls.read_text().split() if calls.exists() else []) == (["requeue", JOB] if requeued else [])
    assert len(logged) == 1
    if state != "RUNNING":
        assert f"is {state}, not running" in logged[0]
    elif not requeued:
        assert "requeued 2 times already" in logged[0]
