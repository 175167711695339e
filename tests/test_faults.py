"""Faults a cluster throws at the pipeline: killed jobs, full or read-only disks, and bad input.
Every case checks that the fault happened and the measured outcome; the rows go to the fault report
(results/faults.md; `make faults` writes docs/faults.md)."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import resource
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import warm
from conftest import skip_or_fail

from aot.checkpoints import save_network
from aot.networks import build_network

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

TINY_NET = dict(img_resolution=8, img_channels=1, label_dim=0, model_type="SongUNet", embedding_type="positional",
                encoder_type="standard", decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1],
                model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[], dropout=0.0)


def aot(*args: str, timeout: int = 300, preexec_fn=None) -> subprocess.CompletedProcess:
    """`python -m aot ARGS` in a fresh interpreter (one thread; warm.run: forked from one that has
    imported torch, or a plain subprocess with a `preexec_fn`, which runs in the child before it starts)."""
    return warm.run([PY, "-m", "aot", *args], capture_output=True, text=True, timeout=timeout,
                    env=dict(os.environ, OMP_NUM_THREADS="1"), preexec_fn=preexec_fn)


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("assets")
    a = {"dir": d}
    a["data"] = d / "digits.zip"
    warm.run([PY, "-m", "aot", "data", "digits", "--resolution", "8", "--dest", str(a["data"])], check=True)
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
    r = aot("generate", "--network", str(a["net"]), "--seeds", "0-39", "--out", str(a["samples"]), "--steps", "4",
            "--device", "cpu", "--threads", "1")
    assert r.returncode == 0, r.stderr
    a["features"] = d / "features.pt"
    r = aot("fid", "train-features", "--data", str(a["data"]), "--out", str(a["features"]), "--epochs", "1",
            "--device", "cpu", "--threads", "1")
    assert r.returncode == 0, r.stderr
    a["ref"] = d / "ref.npz"
    r = aot("fid", "reference", "--data", str(a["data"]), "--features", str(a["features"]), "--out", str(a["ref"]),
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
    r = aot("fid", "measure", "--samples", str(a["samples"]), "--ref", str(a["ref"]), "--features",
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
    ("missing CIFAR-10 archive", ["data", "cifar10", "--source", "{dir}/nope.tar.gz", "--dest", "{out}/d.zip"],
     "nope.tar.gz does not exist", "{out}/d.zip"),
    ("truncated CIFAR-10 archive", ["data", "cifar10", "--source", "{truncated_tar}", "--md5", "none", "--dest",
                                    "{out}/d.zip"], "truncated.tar.gz is truncated or corrupt", "{out}/d.zip"),
    ("not an archive", ["data", "cifar10", "--source", "{not_tar}", "--md5", "none", "--dest", "{out}/d.zip"],
     "not-a-tarball.tar.gz is truncated or corrupt", "{out}/d.zip"),
    ("wrong checksum", ["data", "cifar10", "--source", "{tar}", "--md5", "0" * 32, "--dest", "{out}/d.zip"],
     "wrong md5 checksum", "{out}/d.zip"),
    ("impossible digits resolution", ["data", "digits", "--resolution", "0", "--dest", "{out}/d.zip"],
     "--resolution must be positive", "{out}/d.zip"),
    ("missing dataset for training", ["train", "--outdir", "{out}/t", "--data", "{dir}/none.zip"],
     "none.zip does not exist", "{out}/t"),
    ("N not a multiple of B", ["train", "--outdir", "{out}/t", "--data", "{data}", "--batch", "32",
                               "--batch-gpu", "16", "--pool-size", "40"],
     "--pool-size N=40 is not a multiple of the per-GPU batch B=16", "{out}/t"),
    ("truncated checkpoint", ["generate", "--network", "{truncated_net}", "--seeds", "0-3", "--out", "{out}/s.npz"],
     "truncated.pt is neither an aot network file nor an EDM pickle", "{out}/s.npz"),
    ("non-finite checkpoint", ["generate", "--network", "{nan_net}", "--seeds", "0-3", "--out", "{out}/s.npz"],
     "nan.pt has non-finite values", "{out}/s.npz"),
    ("foreign checkpoint", ["generate", "--network", "{foreign_net}", "--seeds", "0-3", "--out", "{out}/s.npz"],
     "foreign.pt is not an aot network file", "{out}/s.npz"),
    ("unknown sampler", ["generate", "--network", "{net}", "--seeds", "0-3", "--solver", "dpm", "--out",
                         "{out}/s.npz"], "unknown solver 'dpm'", "{out}/s.npz"),
    ("fewer than 2 steps", ["generate", "--network", "{net}", "--seeds", "0-3", "--steps", "1", "--out",
                            "{out}/s.npz"], "--steps must be at least 2, got 1", "{out}/s.npz"),
    ("reversed seed range", ["generate", "--network", "{net}", "--seeds", "9-2", "--out", "{out}/s.npz"],
     "range '9-2' ends before it starts", "{out}/s.npz"),
    ("class label out of range", ["generate", "--network", "{cond_net}", "--seeds", "0-3", "--class-labels", "12",
                                  "--out", "{out}/s.npz"], "--class-labels 12 is out of range", "{out}/s.npz"),
    ("missing clean-fid assets on a compute node", ["fid", "reference", "--data", "{data}", "--features",
                                                    "inception", "--cache-dir", "{out}/empty-cache", "--out",
                                                    "{out}/ref.npz"], "fetch-assets", "{out}/ref.npz"),
    ("channel mismatch samples vs reference", ["fid", "measure", "--samples", "{rgb_samples}", "--ref", "{ref}",
                                               "--features", "{features}", "--repeat", "0", "--out", "{out}/f.json"],
     "rgb_samples.npz has 3x8x8 images but reference", "{out}/f.json"),
    ("image size mismatch samples vs reference", ["fid", "measure", "--samples", "{big_samples}", "--ref", "{ref}",
                                                  "--features", "{features}", "--repeat", "0", "--out",
                                                  "{out}/f.json"], "big_samples.npz has 1x16x16 images but reference",
     "{out}/f.json"),
    ("missing DG classifier checkpoint", ["dg", "train", "--data", "{data}", "--samples", "{samples}", "--out",
                                          "{out}/dg", "--feature-extractor", "{dir}/32x32_classifier.pt"],
     "drive.google.com", "{out}/dg/discriminator.pt"),
    ("repeats with overlapping seeds", ["report", "table", "--table", "1", "--out-prefix", "{out}/table1",
                                        "{fid0}", "{fid_overlap}"], "overlapping seed", "{out}/table1.csv"),
    ("corrupt result JSON", ["report", "table", "--table", "1", "--out-prefix", "{out}/table1", "{bad_json}"],
     "bad.json is not valid JSON", "{out}/table1.csv"),
    ("pickle that runs code", ["checkpoints", "import-edm", "{evil_pkl}", "{out}/edm.pt"], "global posix.system",
     "{out}/edm.pt"),
    ("read-only output folder", ["generate", "--network", "{net}", "--seeds", "0-3", "--out", "{ro}/s.npz"],
     "s.npz is not writable", "{ro}/s.npz"),
]


def test_fault_report_counts_hostile_files_and_lands_in_an_untracked_file():
    from conftest import DEFAULT_FAULT_REPORT, fault_report

    row = {"kind": "hostile file", "fault": "forged dtype", "outcome": "exit 2: `error: ...`", "count": 1}
    faults = [{**row, "test": f"tests/test_hostile.py::test_x[{i}]"} for i in range(3)]
    faults.append({"kind": "bad input", "fault": "f", "outcome": "o | p", "count": 2, "test": "tests/t.py::t"})
    text = fault_report(faults, [], "2026-01-01")
    assert "Hostile files: 3 tried, 3 refused with one line and exit 2, 0 crashed or failed." in text
    assert "| bad input | 2 |" in text and "| hostile file | 3 |" in text and "o \\| p" in text
    crashed = fault_report(faults, [{"test": "tests/test_hostile.py::test_x[9]", "kind": "hostile file"}], "d")
    assert "1 crashed or failed" in crashed and "`tests/test_hostile.py::test_x[9]`" in crashed
    # `make test` writes the report where git does not track it; docs/faults.md only by `make faults`
    rel = DEFAULT_FAULT_REPORT.relative_to(ROOT)
    res = subprocess.run(["git", "check-ignore", "-q", str(rel)], cwd=ROOT)
    if res.returncode == 128:
        pytest.skip("not a git checkout")
    assert res.returncode == 0, f"{rel} is not ignored by git"
    recipes: dict[str, str] = {}
    target = None
    for line in (ROOT / "Makefile").read_text().splitlines():
        if line.startswith("\t") and target:
            recipes[target] += line + "\n"
        elif ":" in line and not line.startswith(("\t", "#", ".")) and "=" not in line.split(":")[0]:
            target = line.split(":")[0].strip()
            recipes[target] = ""
    assert "docs/faults.md" not in recipes["test"]
    assert "AOT_FAULT_REPORT=docs/faults.md" in recipes["faults"] and "--fault-tests" in recipes["faults"]


# ------------------------------------------------------------------------------------------------
# Injecting read-only folders and full disks. Each way is checked before use (root ignores
# permission bits, an unprivileged container cannot mount); where none works the test is skipped,
# and fails in CI (conftest.skip_or_fail).


def _run(cmd: list[str]) -> str | None:
    """Run a setup command; None when it worked, else why not."""
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except OSError as exc:
        return f"{cmd[0]}: {exc.strerror}"
    if res.returncode == 0:
        return None
    why = (res.stderr or res.stdout).strip() or f"exit {res.returncode}"
    return why if why.startswith(f"{cmd[0]}:") else f"{cmd[0]}: {why}"


def _read_only(folder: Path) -> bool:
    """True if this process can neither write to `folder` (access W_OK) nor create a file in it."""
    if os.access(folder, os.W_OK):
        return False
    probe = folder / ".write-probe"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_EXCL)
    except OSError:
        return True
    os.close(fd)
    probe.unlink()
    return False


@contextlib.contextmanager
def read_only_folder(path: Path):
    """Yield (folder, how): a folder this process cannot write to, made read-only in the first way
    that works here: a read-only tmpfs mount, `chattr +i`, `chmod 555` (not as root), or a folder of
    a read-only system mount (/proc/sys in containers)."""
    path.mkdir(parents=True, exist_ok=True)
    tried = []
    for setup, undo, label in (
        (["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], ["umount", "-l", str(path)],
         "read-only tmpfs mount"),
        (["chattr", "+i", str(path)], ["chattr", "-i", str(path)], "immutable folder (chattr +i)"),
    ):
        why = _run(setup)
        if why is not None:
            tried.append(why)
            continue
        try:
            if _read_only(path):
                yield path, label
                return
            tried.append(f"{label}: still writable")
        finally:
            _run(undo)
    path.chmod(0o555)
    try:
        if _read_only(path):
            yield path, "folder without write permission (chmod 555)"
            return
        tried.append("chmod 555: still writable (root)")
    finally:
        path.chmod(0o755)
    for system in (Path("/proc/sys/kernel"), Path("/sys/kernel")):
        if system.is_dir() and _read_only(system) and not (system / "s.npz").exists():
            yield system, f"read-only system folder {system}"
            return
    skip_or_fail("cannot make a read-only folder here: " + "; ".join(tried))


FILE_SIZE_LIMIT = 100_000  # bytes: smaller than any network or state file of the full-disk test


def _limit_file_size() -> None:
    """preexec_fn: writes past FILE_SIZE_LIMIT bytes fail with EFBIG (as on a full disk)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the error, not the signal that would kill


@contextlib.contextmanager
def full_disk(path: Path, how: str):
    """Yield (folder, preexec_fn, what, message): a folder where training cannot save its state.

    "tmpfs": a 600 kB tmpfs, full after the first files (ENOSPC); where no tmpfs can be mounted it
    falls back to the file-size limit. "file size limit": RLIMIT_FSIZE in the child (EFBIG), which
    needs no privilege."""
    path.mkdir(parents=True, exist_ok=True)
    if how == "tmpfs":
        why = _run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(path)])
        if why is None:
            try:
                yield path, None, "disk full (600 kB tmpfs)", "no space left on device while writing"
            finally:
                _run(["umount", "-l", str(path)])
            return
        how = f"no tmpfs: {why}"
    else:
        how = "RLIMIT_FSIZE"
    yield (path, _limit_file_size, f"file size limit ({FILE_SIZE_LIMIT // 1000} kB, {how})",
           f"file size limit reached (ulimit -f: {FILE_SIZE_LIMIT} bytes) while writing")


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_rejected_cleanly(assets, tmp_path, record_fault, case):
    desc, argv, fragment, must_not_exist = case
    fill = {k: str(v) for k, v in assets.items()}
    fill["out"] = str(tmp_path)
    ro_ctx = read_only_folder(assets["ro"]) if "{ro}" in must_not_exist else contextlib.nullcontext((None, ""))
    with ro_ctx as (folder, how):
        if folder is not None:
            fill["ro"] = str(folder)
        res = aot(*[a.format(**fill) for a in argv])
        assert res.returncode != 0, f"{desc}: exit 0\n{res.stdout}"
        lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
        assert lines and lines[-1].startswith("error: "), f"{desc}: no one-line error\n{res.stderr[-2000:]}"
        assert len(lines) == 1, f"{desc}: more than one line on stderr\n{res.stderr[-2000:]}"
        assert fragment.lower() in lines[0].lower(), f"{desc}: {lines[0]!r} lacks {fragment!r}"
        assert not Path(must_not_exist.format(**fill)).exists(), f"{desc}: left output behind"
    if desc == "pickle that runs code":
        assert not assets["marker"].exists()
    record_fault("bad input", desc + (f" ({how})" if how else ""),
                 f"exit {res.returncode}: `{lines[0][:150]}`; no output left")


def test_generation_killed_midway_resumes_with_every_seed_once(assets, tmp_path, record_fault):
    out = tmp_path / "killed.npz"
    ref = tmp_path / "straight.npz"
    args = ["--network", str(assets["net"]), "--seeds", "0-299", "--steps", "8", "--batch", "10",
            "--shard-size", "20", "--device", "cpu", "--threads", "1"]
    assert aot("generate", *args, "--out", str(ref)).returncode == 0
    shards = Path(str(out) + ".shards")
    proc = subprocess.Popen([PY, "-m", "aot", "generate", *args, "--out", str(out)], stdout=subprocess.DEVNULL,
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
    res = aot("generate", *args, "--out", str(out))
    assert res.returncode == 0, res.stderr
    with np.load(out) as a, np.load(ref) as b:
        assert sorted(a["seeds"].tolist()) == list(range(300))
        assert np.array_equal(a["images"], b["images"])
    record_fault("interruption", "`aot generate` killed (SIGKILL) after 3+ of 15 shards",
                 f"rerun kept {kept} finished shards, every seed exactly once, images equal to an uninterrupted run")
    record_fault("shards", "finished generation shards reused after a kill", "reused, not recomputed", count=kept)


@pytest.mark.parametrize("what", ["fid", "table"])
def test_killed_measurement_leaves_no_partial_file(assets, tmp_path, record_fault, what):
    out = tmp_path / ("fid.json" if what == "fid" else "table1.csv")
    if what == "fid":
        argv = ["fid", "measure", "--samples", str(assets["samples"]), "--ref", str(assets["ref"]), "--features",
                str(assets["features"]), "--repeat", "0", "--out", str(out), "--device", "cpu", "--threads", "1"]
    else:
        argv = ["report", "table", "--table", "1", "--out-prefix", str(tmp_path / "table1"), str(assets["fid0"])]
    full = aot(*argv)
    assert full.returncode == 0, full.stderr
    reference = out.read_bytes()
    out.unlink()
    rng = random.Random(0)
    kills = 0
    # four kills at random times; where the command is quicker than that, earlier ones until one lands
    delays = [rng.uniform(0.5, 3.0) for _ in range(4)] + [0.4 / 2 ** k for k in range(6)]
    for attempt, delay in enumerate(delays):
        if attempt >= 4 and kills:
            break
        proc = subprocess.Popen([PY, "-m", "aot", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=dict(os.environ, OMP_NUM_THREADS="1"))
        time.sleep(delay)
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.wait()
        if out.exists():  # finished before the kill: then it must be the complete file
            assert out.read_bytes() == reference if what == "table" else json.loads(out.read_text())["fid"] == \
                json.loads(reference)["fid"]
            out.unlink()
        assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name], "temporary file left behind"
    assert kills >= 1, "every run finished before its kill"
    assert aot(*argv).returncode == 0
    if what == "table":
        assert out.read_bytes() == reference
    else:
        assert json.loads(out.read_text())["fid"] == json.loads(reference)["fid"]
    record_fault("interruption", f"`aot {'fid measure' if what == 'fid' else 'report table'}` killed at random times",
                 "no partial file or temporary left; the rerun writes the same result", count=kills)


@pytest.mark.parametrize("how", ["tmpfs", "file size limit"])
def test_full_disk_during_training_leaves_no_corrupt_state(assets, tmp_path, record_fault, how):
    with full_disk(tmp_path / "small", how) as (small, preexec_fn, what, message):
        outdir = small / "run"
        res = aot("train", "--outdir", str(outdir), "--data", str(assets["data"]), "--arch", "ddpmpp",
                  "--cbase", "16", "--cres", "1,2", "--num-blocks", "1", "--attn", "", "--duration", "0.000128",
                  "--batch", "32", "--batch-gpu", "16", "--pool-size", "32", "--tick", "0.032", "--dump", "1",
                  "--device", "cpu", "--threads", "1", preexec_fn=preexec_fn)
        assert res.returncode != 0
        lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
        if preexec_fn is None:  # a real full disk
            assert lines[-1].startswith("error: ") and "no space left" in lines[-1], res.stderr[-2000:]
        # the fault happened: the one line names it and the file being written
        assert len(lines) == 1 and lines[0].startswith(f"error: {message} {outdir}/"), res.stderr[-2000:]
        assert res.returncode == 2
        assert not (outdir / "training-state.pt").exists()
        assert not (outdir / "network-final.pt").exists()
        assert not [p for p in outdir.iterdir() if ".tmp" in p.name]
    line = lines[-1].replace(f"{small}/", "")
    record_fault("resource", f"{what} while training saves its state",
                 f"exit {res.returncode}: `{line[:120]}`; no checkpoint or temporary left as the latest")
