"""Sharded, seed-deterministic generation: determinism, kill/resume, output format, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from aot import generate as gen
from aot import samples
from aot.checkpoints import load_network, save_network
from aot.cli import main as aot_main
from aot.errors import UserError
from aot.networks import EDMPrecond
from aot.sampling import StackedRandomGenerator, edm_sampler, euler_sampler

STEPS = dict(num_steps=4)


def tiny_net(label_dim=0, channels=3, seed=0):
    torch.manual_seed(seed)
    net = EDMPrecond(img_resolution=8, img_channels=channels, label_dim=label_dim, model_type="SongUNet",
                     model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0,
                     embedding_type="fourier", channel_mult_noise=2, encoder_type="residual",
                     resample_filter=[1, 3, 3, 1])
    with torch.no_grad():  # move away from the zero-initialised output layers
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval().requires_grad_(False)



class ElementwiseNet(torch.nn.Module):
    """EDM's network interface with per-pixel arithmetic only: bit-identical whatever the batch."""

    def __init__(self, label_dim=10, channels=3, resolution=8):
        super().__init__()
        self.img_channels, self.img_resolution, self.label_dim = channels, resolution, label_dim
        self.sigma_min, self.sigma_max, self.sigma_data = 0, float("inf"), 0.5
        self.w = torch.nn.Parameter(torch.linspace(0.5, 1.5, channels * resolution * resolution).reshape(
            channels, resolution, resolution), requires_grad=False)

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def forward(self, x, sigma, class_labels=None):
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma).to(torch.float32).reshape(-1, 1, 1, 1)
        out = x * 0.25 / (0.25 + sigma ** 2) + 0.3 * torch.tanh(self.w * x) * sigma / (1 + sigma)
        if class_labels is not None:
            out = out + 0.1 * class_labels.argmax(dim=1).to(torch.float32).reshape(-1, 1, 1, 1) - 0.45
        return out


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    save_network(d / "cond.pt", tiny_net(label_dim=10), model="tiny-cond", aot=True, cond=True, kimg=1.5,
                 source="trained")
    save_network(d / "uncond.pt", tiny_net(label_dim=0, channels=1, seed=1), model="tiny-uncond", aot=False,
                 cond=False, kimg=2.0, source="trained")
    return d


@pytest.fixture(scope="module")
def cond_net(ckpts):
    return load_network(ckpts / "cond.pt")[0]


def _quiet(_msg):
    pass


def test_to_uint8_as_edm():
    x = torch.tensor([-2.0, -1.0, -0.99, -0.0039, 0.0, 0.5, 0.99, 1.0, 1.5], dtype=torch.float64)
    got = gen.to_uint8(x.reshape(1, 1, 1, -1))[0, 0, :, 0]
    want = np.clip(np.floor(x.numpy() * 127.5 + 128), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(got, want)
    assert got[1] == 0 and got[7] == 255 and got[4] == 128


def test_images_equal_edm_pipeline(cond_net):
    """Seed s -> latents, then label, from its own generator; sampler; EDM's uint8 conversion."""
    seeds = [0, 3, 11]
    images, labels = gen.generate_images(cond_net, seeds, edm_sampler, dict(STEPS, S_churn=10), batch=8, device="cpu")
    rnd = StackedRandomGenerator("cpu", seeds)
    latents = rnd.randn([3, 3, 8, 8])
    idx = rnd.randint(10, size=[3])
    x = edm_sampler(cond_net, latents, torch.eye(10)[idx], randn_like=rnd.randn_like, S_churn=10, **STEPS)
    np.testing.assert_array_equal(images, (x * 127.5 + 128).clip(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    np.testing.assert_array_equal(labels, idx.numpy())
    assert images.dtype == np.uint8 and images.shape == (3, 8, 8, 3) and labels.dtype == np.int64


@pytest.mark.parametrize("churn", [0, 20])
def test_determinism_across_batches_and_shards(tmp_path, churn):
    """Per-seed generators: the same seeds give bit-identical images whatever the batch and shard layout."""
    net = ElementwiseNet()
    seeds = list(range(100, 117))
    kw = dict(STEPS, S_churn=churn)
    a = gen.run_generation(net, tmp_path / "a.npz", seeds, sampler_kwargs=kw, batch=17, shard_size=100,
                           device="cpu", log=_quiet)
    b = gen.run_generation(net, tmp_path / "b.npz", seeds, sampler_kwargs=kw, batch=2, shard_size=5,
                           device="cpu", log=_quiet)
    za, zb = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    for k in ("images", "labels", "seeds"):
        np.testing.assert_array_equal(za[k], zb[k])
    np.testing.assert_array_equal(za["seeds"], seeds)
    assert len(set(za["labels"].tolist())) > 3
    # a subset generated alone gives the same images
    sub, sub_labels = gen.generate_images(net, [105, 111, 116], edm_sampler, kw, batch=1, device="cpu")
    np.testing.assert_array_equal(sub, za["images"][[5, 11, 16]])
    np.testing.assert_array_equal(sub_labels, za["labels"][[5, 11, 16]])
    assert a["num_images"] == b["num_images"] == 17


def test_real_network_across_batch_sizes(cond_net):
    """With convolutions the float arithmetic may depend on the batch (as in EDM); uint8 images then
    differ by at most one level in a tiny fraction of values, and labels not at all."""
    seeds = list(range(12))
    a, la = gen.generate_images(cond_net, seeds, edm_sampler, STEPS, batch=12, device="cpu")
    b, lb = gen.generate_images(cond_net, seeds, edm_sampler, STEPS, batch=5, device="cpu")
    np.testing.assert_array_equal(la, lb)
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


class Killed(Exception):
    pass


def test_kill_and_resume(tmp_path, cond_net):
    seeds = list(range(0, 22))
    out = tmp_path / "x.npz"
    ref = tmp_path / "ref.npz"
    gen.run_generation(cond_net, ref, seeds, sampler_kwargs=STEPS, batch=4, shard_size=6, device="cpu", log=_quiet)

    def kill_after_two(k):
        if k == 1:
            raise Killed()

    with pytest.raises(Killed):
        gen.run_generation(cond_net, out, seeds, sampler_kwargs=STEPS, batch=4, shard_size=6, device="cpu",
                           after_shard=kill_after_two, log=_quiet)
    sdir = samples.shards_dir(out)
    assert not out.exists()
    assert sorted(p.name for p in sdir.iterdir()) == ["shard-000000.npz", "shard-000001.npz"]
    (sdir / ".shard-000002.abc.tmp.npz").write_bytes(b"partial")  # what a kill -9 mid-write leaves

    redone, logs = [], []
    meta = gen.run_generation(cond_net, out, seeds, sampler_kwargs=STEPS, batch=4, shard_size=6, device="cpu",
                              after_shard=redone.append, log=logs.append, meta={"model": {"name": "m"}})
    assert redone == [2, 3]  # finished shards are not redone
    assert any("resuming: 2 of 4 shards" in line for line in logs)
    assert not sdir.exists()
    z, zr = np.load(out), np.load(ref)
    np.testing.assert_array_equal(z["images"], zr["images"])
    np.testing.assert_array_equal(z["labels"], zr["labels"])
    assert sorted(z["seeds"].tolist()) == seeds and len(set(z["seeds"].tolist())) == len(seeds)
    stored = json.loads(str(z["meta"]))
    assert stored["model"] == {"name": "m"} and stored["num_images"] == 22 and stored["seeds"] == [0, 21]
    assert stored["time_s"] == pytest.approx(meta["time_s"]) and stored["time_s"] > 0


def test_stale_shards_are_discarded(tmp_path, cond_net):
    seeds = list(range(8))
    out = tmp_path / "x.npz"
    with pytest.raises(Killed):
        gen.run_generation(cond_net, out, seeds, sampler_kwargs=dict(num_steps=3), batch=4, shard_size=4,
                           device="cpu", after_shard=lambda k: (_ for _ in ()).throw(Killed()), log=_quiet)
    assert len(list(samples.shards_dir(out).iterdir())) == 1
    redone, logs = [], []
    gen.run_generation(cond_net, out, seeds, sampler_kwargs=STEPS, batch=4, shard_size=4, device="cpu",
                       after_shard=redone.append, log=logs.append)
    assert redone == [0, 1] and any("discarded 1 shard" in line for line in logs)
    fresh, _ = gen.generate_images(cond_net, seeds, edm_sampler, STEPS, batch=8, device="cpu")
    np.testing.assert_array_equal(np.load(out)["images"], fresh)


def test_fingerprint_tracks_weights_and_settings(cond_net):
    f = samples.generation_fingerprint(cond_net, edm_sampler, STEPS, "random")
    assert f == samples.generation_fingerprint(cond_net, edm_sampler, dict(STEPS), "random")
    assert f != samples.generation_fingerprint(cond_net, euler_sampler, STEPS, "random")
    assert f != samples.generation_fingerprint(cond_net, edm_sampler, dict(num_steps=5), "random")
    assert f != samples.generation_fingerprint(cond_net, edm_sampler, STEPS, 3)
    other = tiny_net(label_dim=10, seed=5)
    assert f != samples.generation_fingerprint(other, edm_sampler, STEPS, "random")


def test_cli_conditional_output_format(tmp_path, ckpts, capsys):
    out = tmp_path / "s" / "rep0.npz"
    grid = tmp_path / "s" / "grid.png"
    aot_main(["generate", "--network", str(ckpts / "cond.pt"), "--seeds", "10-29", "--out", str(out), "--steps", "3",
              "--batch", "7", "--shard-size", "8", "--grid", str(grid), "--device", "cpu"])
    z = np.load(out, allow_pickle=False)
    assert set(z.files) == {"images", "labels", "seeds", "meta"}
    assert z["images"].dtype == np.uint8 and z["images"].shape == (20, 8, 8, 3)
    assert z["labels"].dtype == np.int64 and z["labels"].min() >= 0 and z["labels"].max() <= 9
    assert z["seeds"].dtype == np.int64 and z["seeds"].tolist() == list(range(10, 30))
    meta = json.loads(str(z["meta"]))
    assert meta["model"] == {"name": "tiny-cond", "aot": True, "cond": True, "checkpoint": str(ckpts / "cond.pt"),
                             "source": "trained", "kimg": 1.5}
    s = meta["sampler"]
    assert s["key"] == "heun-n3-rho7" and s["solver"] == "heun" and s["num_steps"] == 3 and s["nfe"] == 5
    assert s["rho"] == 7.0 and s["sigma_min"] == 0.002 and s["sigma_max"] == 80.0 and s["S_churn"] == 0.0
    assert s["guidance"] is None
    assert meta["seeds"] == [10, 29] and meta["num_images"] == 20 and meta["time_s"] > 0
    assert "torch" in meta["env"]
    assert not samples.shards_dir(out).exists()
    import PIL.Image
    with PIL.Image.open(grid) as g:
        assert g.size == (5 * 8, 4 * 8) and g.mode == "RGB"
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []
    captured = capsys.readouterr()
    lines = captured.out + captured.err  # the progress bar writes to stderr
    assert "img/s" in lines and "ETA" in lines
    # same seeds through the library give the same images
    net = load_network(ckpts / "cond.pt")[0]
    imgs, labels = gen.generate_images(net, list(range(10, 30)), edm_sampler, dict(num_steps=3), device="cpu")
    np.testing.assert_array_equal(imgs, z["images"])
    np.testing.assert_array_equal(labels, z["labels"])


def test_cli_fixed_class_unconditional_and_euler(tmp_path, ckpts):
    out = tmp_path / "fixed.npz"
    aot_main(["generate", "--network", str(ckpts / "cond.pt"), "--seeds", "0-5", "--out", str(out), "--steps", "3",
              "--class-labels", "7", "--device", "cpu"])
    z = np.load(out)
    assert z["labels"].tolist() == [7] * 6
    assert json.loads(str(z["meta"]))["sampler"]["class_labels"] == 7

    out = tmp_path / "uncond.npz"
    aot_main(["generate", "--network", str(ckpts / "uncond.pt"), "--seeds", "0,4,9", "--out", str(out), "--steps", "5",
              "--solver", "euler", "--S-churn", "10", "--grid", str(tmp_path / "g.png"), "--device", "auto",
              "--threads", "1", "--model-name", "edm-uncond"])
    z = np.load(out)
    assert z["images"].shape == (3, 8, 8, 1) and z["labels"].tolist() == [-1, -1, -1]
    meta = json.loads(str(z["meta"]))
    assert meta["sampler"]["key"] == "euler-n5-rho7-churn10" and meta["sampler"]["nfe"] == 5
    assert meta["model"]["cond"] is False and meta["model"]["aot"] is False and meta["seeds"] == [0, 9]
    assert meta["model"]["name"] == "edm-uncond" and meta["model"]["kimg"] == 2.0


BAD_INPUTS = [
    (["--solver", "rk4"], "unknown solver 'rk4'"),
    (["--steps", "1"], "--steps must be at least 2"),
    (["--steps", "x"], "--steps must be an integer"),
    (["--seeds", "5-3"], "ends before it starts"),
    (["--seeds", "a-b"], "is not an integer"),
    (["--seeds", "1,2,2"], "seed 2 appears more than once"),
    (["--seeds", "4294967296"], "outside 0..4294967295"),
    (["--rho", "0"], "--rho must be positive"),
    (["--sigma-min", "1", "--sigma-max", "0.5"], "must be larger than --sigma-min"),
    (["--S-churn", "-1"], "must not be negative"),
    (["--batch", "0"], "--batch must be positive"),
    (["--shard-size", "0"], "--shard-size must be positive"),
    (["--class-labels", "cat"], "--class-labels must be 'random' or a class index"),
    (["--class-labels", "10"], "--class-labels 10 is out of range"),
    (["--network", "{d}/missing.pt"], "missing.pt does not exist"),
    (["--network", "{d}/foreign.pt"], "foreign.pt"),  # wording belongs to aot.checkpoints
    (["--network", "{d}/notours.pt"], "notours.pt"),
    (["--network", "{d}/uncond.pt", "--class-labels", "3"], "is unconditional"),
    (["--out", "{t}/x.npy"], "must end in .npz"),
    (["--grid", "{t}/g.jpg"], "must end in .png"),
    (["--bogus"], "unrecognized arguments"),
    (["--threads", "0"], "--threads must be positive"),
    (["--device", "tpu9"], "is not a valid device"),
]


@pytest.mark.parametrize("extra,message", BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_input_one_line_no_output(tmp_path, ckpts, capsys, extra, message):
    (ckpts / "foreign.pt").write_text("not a checkpoint")
    torch.save({"weights": torch.zeros(2)}, ckpts / "notours.pt")
    args = {"--network": str(ckpts / "cond.pt"), "--seeds": "0-3", "--out": str(tmp_path / "o" / "x.npz"),
            "--steps": "3", "--device": "cpu", "--grid": str(tmp_path / "o" / "g.png")}
    extra = [e.format(d=ckpts, t=tmp_path / "o") for e in extra]
    flags = []
    i = 0
    while i < len(extra):
        if i + 1 < len(extra) and not extra[i + 1].startswith("--"):
            args[extra[i]] = extra[i + 1]
            i += 2
        else:
            flags.append(extra[i])
            i += 1
    argv = [x for kv in args.items() for x in kv] + flags
    with pytest.raises(SystemExit) as exc:
        aot_main(["generate", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_requested_without_cuda(tmp_path, ckpts, capsys):
    with pytest.raises(SystemExit):
        aot_main(["generate", "--network", str(ckpts / "cond.pt"), "--seeds", "0", "--out", str(tmp_path / "x.npz"),
                  "--device", "cuda"])
    assert "CUDA is not available" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_read_sample_set_roundtrip(tmp_path, cond_net):
    gen.run_generation(cond_net, tmp_path / "x.npz", [1, 2], sampler_kwargs=STEPS, device="cpu",
                       meta={"sampler": {"key": "k"}}, log=_quiet)
    rec = samples.read_sample_set(tmp_path / "x.npz")
    assert rec["meta"]["sampler"] == {"key": "k"} and rec["seeds"].tolist() == [1, 2]
    with pytest.raises(UserError, match="does not exist"):
        samples.read_sample_set(tmp_path / "none.npz")


def test_generation_in_process_restores_signal_handlers(tmp_path, ckpts):
    """A library call installs its SIGTERM/SIGUSR1 handlers for its own duration only: afterwards the
    host process's handlers are back, and a later SIGTERM reaches them (no SystemExit(75))."""
    seen = []

    def mine(signum, frame):
        seen.append(signum)

    previous = {sig: signal.signal(sig, mine) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        gen.generate_set(network=ckpts / "cond.pt", seeds="0-1", out=tmp_path / "x.npz", num_steps=2, device="cpu")
        assert (tmp_path / "x.npz").exists()
        assert signal.getsignal(signal.SIGTERM) is mine and signal.getsignal(signal.SIGUSR1) is mine
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen == [signal.SIGTERM]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun(tmp_path, ckpts):
    """A real `kill -9` of the command line: the rerun keeps the finished shards, same images."""
    out = tmp_path / "k.npz"
    cmd = [sys.executable, "-m", "aot", "generate", "--network", str(ckpts / "cond.pt"), "--seeds", "0-39",
           "--out", str(out), "--steps", "6", "--batch", "4", "--shard-size", "4", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    import shutil

    sdir = samples.shards_dir(out)
    # kill after 2 finished shards; if generation finishes first, again with an earlier kill
    for need, poll in ((2, 0.02), (2, 0.0), (1, 0.0)):
        shutil.rmtree(sdir, ignore_errors=True)
        out.unlink(missing_ok=True)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if sdir.is_dir() and len(list(sdir.glob("shard-*.npz"))) >= need:
                break
            time.sleep(poll)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.returncode == -signal.SIGKILL and not out.exists():
            break
    else:
        pytest.fail("generation finished before the kill landed, even with the earliest kill")
    kept = sorted(p.name for p in sdir.glob("shard-*.npz"))
    assert need <= len(kept) < 10 and not out.exists()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert f"resuming: {len(kept)} of 10 shards" in res.stdout
    z = np.load(out)
    assert z["seeds"].tolist() == list(range(40))
    # an uninterrupted run (same shard and batch layout, one thread as in the subprocess)
    ref = tmp_path / "ref.npz"
    aot_main(cmd[cmd.index("generate"):cmd.index("--out") + 1] + [str(ref)] + cmd[cmd.index("--out") + 2:])
    zr = np.load(ref)
    np.testing.assert_array_equal(z["images"], zr["images"])
    np.testing.assert_array_equal(z["labels"], zr["labels"])


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, ckpts):
    """Under torchrun (gloo, CPU) the ranks share the shards; the result equals a single process."""
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    args = ["-m", "aot", "generate", "--network", str(ckpts / "cond.pt"), "--seeds", "0-17", "--steps", "3",
            "--batch", "4", "--shard-size", "4", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([*torchrun, "--standalone", "--nproc_per_node=2", *args,
                          "--out", str(tmp_path / "two.npz")],
                         capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    aot_main(args[2:] + ["--out", str(tmp_path / "one.npz")])
    a, b = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    for k in ("images", "labels", "seeds"):
        np.testing.assert_array_equal(a[k], b[k])
    assert not samples.shards_dir(tmp_path / "two.npz").exists()


def test_fast_sampling_is_close_to_fp32_and_kept_apart(tmp_path):
    """--fast (bf16 autocast, channels_last) gives nearly the fp32 images and its own shards."""
    import subprocess
    import sys

    import torch

    from aot.checkpoints import save_network
    from aot.networks import build_network

    torch.manual_seed(0)
    net = build_network("EDMPrecond", dict(img_resolution=8, img_channels=1, label_dim=0, model_type="SongUNet",
                                           embedding_type="positional", encoder_type="standard",
                                           decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1],
                                           model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[]))
    ckpt = tmp_path / "net.pt"
    save_network(ckpt, net, model="m")
    outs = {}
    for mode in ("fp32", "fast"):
        out = tmp_path / f"{mode}.npz"
        cmd = [sys.executable, "-m", "aot", "generate", "--network", str(ckpt), "--seeds", "0-15", "--steps", "6",
               "--out", str(out), "--device", "cpu", "--threads", "1"] + (["--fast"] if mode == "fast" else [])
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        with np.load(out) as z:
            outs[mode] = (z["images"].astype(np.int16), json.loads(str(z["meta"])))
    diff = np.abs(outs["fp32"][0] - outs["fast"][0])
    assert diff.mean() < 4 and diff.max() < 64
    assert outs["fast"][1]["precision"] == "bf16-autocast" and outs["fp32"][1]["precision"] == "fp32"
