"""Faults a cluster throws at the pipeline: killed jobs, full or read-only disks, and bad input.
Every case checks the measured outcome; the rows go to the fault report (docs/faults.md)."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from aot.checkpoints import save_network
from aot.networks import build_network

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

TINY_NET = dict(img_resolution=8, img_channels=1, label_dim=0, model_type="SongUNet", embedding_type="positional",
                encoder_type="standard", decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1],
                model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[], dropout=0.0)


def aot(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("assets")
    a = {"dir": d}
    a["data"] = d / "digits.zip"
    subprocess.run([PY, "-m", "aot.data", "digits", "--resolution", "8", "--dest", str(a["data"])], check=True)
    torch.manual_seed(0)
    for name, label_dim in (("net", 0), ("cond_net", 10)):
        net = build_network("EDMPrecond", {**TINY_NET, "label_dim": label_dim})
        a[name] = d / f"{name}.pt"
        save_network(a[name], net, model=name, aot=False, cond=label_dim > 0, kimg=0.0, source="test")
    # a CIFAR-format tarball with two images per batch
    rng = np.random.default_rng(0)
    tar = d / "cifar-10-python.tar.gz"
    with tarfile.open(tar, "w:gz") as tf:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            payload = pickle.dumps({b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8),
                                    b"labels": [1, 2]})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            import io

            tf.addfile(info, io.BytesIO(payload))
    a["tar"] = tar
    a["truncated_tar"] = d / "truncated.tar.gz"
    a["truncated_tar"].write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    a["not_tar"] = d / "not-a-tarball.tar.gz"
    a["not_tar"].write_text("this is not an archive\n")
    # checkpoints that must be refused
    a["truncated_net"] = d / "truncated.pt"
    a["truncated_net"].write_bytes(a["net"].read_bytes()[:2000])
    a["foreign_net"] = d / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, a["foreign_net"])
    a["nan_net"] = d / "nan.pt"
    net = build_network("EDMPrecond", TINY_NET)
    with torch.no_grad():
        next(net.parameters()).fill_(float("nan"))
    save_network(a["nan_net"], net, model="nan")
    # samples, offline features and the reference
    a["samples"] = d / "samples.npz"
    r = aot("aot.generate", "--network", str(a["net"]), "--seeds", "0-39", "--out", str(a["samples"]), "--steps", "4",
            "--device", "cpu", "--threads", "1")
    assert r.returncode == 0, r.stderr
    a["features"] = d / "features.pt"
    r = aot("aot.fid", "train-features", "--data", str(a["data"]), "--out", str(a["features"]), "--epochs", "1",
            "--device", "cpu", "--threads", "1")
    assert r.returncode == 0, r.stderr
    a["ref"] = d / "ref.npz"
    r = aot("aot.fid", "reference", "--data", str(a["data"]), "--features", str(a["features"]), "--out", str(a["ref"]),
            "--device", "cpu", "--threads", "1")
    assert r.returncode == 0, r.stderr
    # samples of the wrong shape for that reference
    for key, shape in (("rgb_samples", (40, 8, 8, 3)), ("big_samples", (40, 16, 16, 1))):
        with np.load(a["samples"]) as z:
            fields = dict(z)
        fields["images"] = np.zeros(shape, dtype=np.uint8)
        a[key] = d / f"{key}.npz"
        np.savez(a[key], **fields)
    # FID results whose repeats overlap in seeds
    good = d / "fid0.json"
    r = aot("aot.fid", "measure", "--samples", str(a["samples"]), "--ref", str(a["ref"]), "--features",
            str(a["features"]), "--repeat", "0", "--out", str(good), "--device", "cpu", "--threads", "1")
    assert r.returncode == 0, r.stderr
    a["fid0"] = good
    rec = json.loads(good.read_text())
    rec.update(repeat=1, seeds=[20, 59])
    a["fid_overlap"] = d / "fid1.json"
    a["fid_overlap"].write_text(json.dumps(rec))
    a["bad_json"] = d / "bad.json"
    a["bad_json"].write_text("{ not json")
    # an EDM-style pickle that would run a shell command when loaded by pickle.load
    a["evil_pkl"] = d / "evil.pkl"
    marker = d / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    a["evil_pkl"].write_bytes(pickle.dumps({"ema": Evil()}))
    a["marker"] = marker
    a["ro"] = d / "readonly"
    a["ro"].mkdir()
    return a


# (description, argv with {placeholders}, expected message fragment, output that must not appear)
BAD_INPUTS = [
    ("missing CIFAR-10 archive", ["aot.data", "cifar10", "--source", "{dir}/nope.tar.gz", "--dest", "{out}/d.zip"],
     "does not exist", "{out}/d.zip"),
    ("truncated CIFAR-10 archive", ["aot.data", "cifar10", "--source", "{truncated_tar}", "--md5", "none", "--dest",
                                    "{out}/d.zip"], "truncated", "{out}/d.zip"),
    ("not an archive", ["aot.data", "cifar10", "--source", "{not_tar}", "--md5", "none", "--dest", "{out}/d.zip"],
     "", "{out}/d.zip"),
    ("wrong checksum", ["aot.data", "cifar10", "--source", "{tar}", "--md5", "0" * 32, "--dest", "{out}/d.zip"],
     "md5", "{out}/d.zip"),
    ("impossible digits resolution", ["aot.data", "digits", "--resolution", "0", "--dest", "{out}/d.zip"],
     "resolution", "{out}/d.zip"),
    ("missing dataset for training", ["aot.train", "--outdir", "{out}/t", "--data", "{dir}/none.zip"],
     "does not exist", "{out}/t"),
    ("N not a multiple of B", ["aot.train", "--outdir", "{out}/t", "--data", "{data}", "--batch", "32",
                               "--batch-gpu", "16", "--pool-size", "40"], "not a multiple", "{out}/t"),
    ("truncated checkpoint", ["aot.generate", "--network", "{truncated_net}", "--seeds", "0-3", "--out", "{out}/s.npz"],
     "truncated.pt", "{out}/s.npz"),
    ("non-finite checkpoint", ["aot.generate", "--network", "{nan_net}", "--seeds", "0-3", "--out", "{out}/s.npz"],
     "non-finite", "{out}/s.npz"),
    ("foreign checkpoint", ["aot.generate", "--network", "{foreign_net}", "--seeds", "0-3", "--out", "{out}/s.npz"],
     "foreign.pt", "{out}/s.npz"),
    ("unknown sampler", ["aot.generate", "--network", "{net}", "--seeds", "0-3", "--solver", "dpm", "--out",
                         "{out}/s.npz"], "dpm", "{out}/s.npz"),
    ("fewer than 2 steps", ["aot.generate", "--network", "{net}", "--seeds", "0-3", "--steps", "1", "--out",
                            "{out}/s.npz"], "steps", "{out}/s.npz"),
    ("reversed seed range", ["aot.generate", "--network", "{net}", "--seeds", "9-2", "--out", "{out}/s.npz"],
     "9-2", "{out}/s.npz"),
    ("class label out of range", ["aot.generate", "--network", "{cond_net}", "--seeds", "0-3", "--class-labels", "12",
                                  "--out", "{out}/s.npz"], "12", "{out}/s.npz"),
    ("missing clean-fid assets on a compute node", ["aot.fid", "reference", "--data", "{data}", "--features",
                                                    "inception", "--cache-dir", "{out}/empty-cache", "--out",
                                                    "{out}/ref.npz"], "fetch-assets", "{out}/ref.npz"),
    ("channel mismatch samples vs reference", ["aot.fid", "measure", "--samples", "{rgb_samples}", "--ref", "{ref}",
                                               "--features", "{features}", "--repeat", "0", "--out", "{out}/f.json"],
     "3x8x8", "{out}/f.json"),
    ("image size mismatch samples vs reference", ["aot.fid", "measure", "--samples", "{big_samples}", "--ref", "{ref}",
                                                  "--features", "{features}", "--repeat", "0", "--out",
                                                  "{out}/f.json"], "16", "{out}/f.json"),
    ("missing DG classifier checkpoint", ["aot.dg", "train", "--data", "{data}", "--samples", "{samples}", "--out",
                                          "{out}/dg", "--feature-extractor", "{dir}/32x32_classifier.pt"],
     "drive.google.com", "{out}/dg/discriminator.pt"),
    ("repeats with overlapping seeds", ["aot.report", "table", "--table", "1", "--out-prefix", "{out}/table1",
                                        "{fid0}", "{fid_overlap}"], "overlapping seed", "{out}/table1.csv"),
    ("corrupt result JSON", ["aot.report", "table", "--table", "1", "--out-prefix", "{out}/table1", "{bad_json}"],
     "bad.json", "{out}/table1.csv"),
    ("pickle that runs code", ["aot.checkpoints", "import-edm", "{evil_pkl}", "{out}/edm.pt"], "system",
     "{out}/edm.pt"),
    ("read-only output folder", ["aot.generate", "--network", "{net}", "--seeds", "0-3", "--out", "{ro}/s.npz"],
     "", "{ro}/s.npz"),
]


@contextlib.contextmanager
def mounted_tmpfs(path: Path, options: str):
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {res.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_rejected_cleanly(assets, tmp_path, record_fault, case):
    desc, argv, fragment, must_not_exist = case
    fill = {k: str(v) for k, v in assets.items()}
    fill["out"] = str(tmp_path)
    ro_ctx = mounted_tmpfs(assets["ro"], "ro,size=1m") if "{ro}" in must_not_exist else contextlib.nullcontext()
    with ro_ctx:
        res = aot(*[a.format(**fill) for a in argv])
        assert res.returncode != 0, f"{desc}: exit 0\n{res.stdout}"
        lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
        assert lines and lines[-1].startswith("error: "), f"{desc}: no one-line error\n{res.stderr[-2000:]}"
        assert len(lines) == 1, f"{desc}: more than one line on stderr\n{res.stderr[-2000:]}"
        assert fragment.lower() in lines[0].lower(), f"{desc}: {lines[0]!r} lacks {fragment!r}"
        assert not Path(must_not_exist.format(**fill)).exists(), f"{desc}: left output behind"
    if desc == "pickle that runs code":
        assert not assets["marker"].exists()
    record_fault("bad input", desc, f"exit {res.returncode}: `{lines[0][:150]}`; no output left")


def test_generation_killed_midway_resumes_with_every_seed_once(assets, tmp_path, record_fault):
    out = tmp_path / "killed.npz"
    ref = tmp_path / "straight.npz"
    args = ["--network", str(assets["net"]), "--seeds", "0-299", "--steps", "8", "--batch", "10",
            "--shard-size", "20", "--device", "cpu", "--threads", "1"]
    assert aot("aot.generate", *args, "--out", str(ref)).returncode == 0
    shards = Path(str(out) + ".shards")
    proc = subprocess.Popen([PY, "-m", "aot.generate", *args, "--out", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if shards.exists() and len(list(shards.glob("*.npz"))) >= 3:
            break
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    kept = len(list(shards.glob("*.npz"))) if shards.exists() else 0
    assert not out.exists() and kept >= 3
    res = aot("aot.generate", *args, "--out", str(out))
    assert res.returncode == 0, res.stderr
    with np.load(out) as a, np.load(ref) as b:
        assert sorted(a["seeds"].tolist()) == list(range(300))
        assert np.array_equal(a["images"], b["images"])
    record_fault("interruption", "`aot.generate` killed (SIGKILL) after 3+ of 15 shards",
                 f"rerun kept {kept} finished shards, every seed exactly once, images equal to an uninterrupted run")
    record_fault("shards", "finished generation shards reused after a kill", "reused, not recomputed", count=kept)


@pytest.mark.parametrize("what", ["fid", "table"])
def test_killed_measurement_leaves_no_partial_file(assets, tmp_path, record_fault, what):
    out = tmp_path / ("fid.json" if what == "fid" else "table1.csv")
    if what == "fid":
        argv = ["aot.fid", "measure", "--samples", str(assets["samples"]), "--ref", str(assets["ref"]), "--features",
                str(assets["features"]), "--repeat", "0", "--out", str(out), "--device", "cpu", "--threads", "1"]
    else:
        argv = ["aot.report", "table", "--table", "1", "--out-prefix", str(tmp_path / "table1"), str(assets["fid0"])]
    full = aot(*argv)
    assert full.returncode == 0, full.stderr
    reference = out.read_bytes()
    out.unlink()
    rng = random.Random(0)
    kills = 0
    for _ in range(4):
        proc = subprocess.Popen([PY, "-m", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=dict(os.environ, OMP_NUM_THREADS="1"))
        time.sleep(rng.uniform(0.5, 3.0))
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.wait()
        if out.exists():  # finished before the kill: then it must be the complete file
            assert out.read_bytes() == reference if what == "table" else json.loads(out.read_text())["fid"] == \
                json.loads(reference)["fid"]
            out.unlink()
        assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name], "temporary file left behind"
    assert aot(*argv).returncode == 0
    if what == "table":
        assert out.read_bytes() == reference
    else:
        assert json.loads(out.read_text())["fid"] == json.loads(reference)["fid"]
    record_fault("interruption", f"`aot.{'fid measure' if what == 'fid' else 'report table'}` killed at random times",
                 "no partial file or temporary left; the rerun writes the same result", count=max(kills, 1))


def test_full_disk_during_training_leaves_no_corrupt_state(assets, tmp_path, record_fault):
    with mounted_tmpfs(tmp_path / "small", "size=600k") as small:
        outdir = small / "run"
        res = aot("aot.train", "--outdir", str(outdir), "--data", str(assets["data"]), "--arch", "ddpmpp",
                  "--cbase", "16", "--cres", "1,2", "--num-blocks", "1", "--attn", "", "--duration", "0.000128",
                  "--batch", "32", "--batch-gpu", "16", "--pool-size", "32", "--tick", "0.032", "--dump", "1",
                  "--device", "cpu", "--threads", "1")
        assert res.returncode != 0
        lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
        assert lines[-1].startswith("error: ") and "no space left" in lines[-1], res.stderr[-2000:]
        assert not (outdir / "training-state.pt").exists()
        assert not (outdir / "network-final.pt").exists()
        assert not [p for p in outdir.iterdir() if ".tmp" in p.name]
    record_fault("resource", "disk full (600 kB tmpfs) while training saves its state",
                 f"exit {res.returncode}: `{lines[-1][:120]}`; no checkpoint or temporary left as the latest")
