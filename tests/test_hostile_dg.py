"""Hostile Discriminator Guidance files: feature extractors, discriminators and training states.

Each crafted file is small, written here from an honest twin, and read in a fresh process through
the command line (`python -m aot dg train --feature-extractor F`, `python -m aot dg generate
--discriminator D`, `python -m aot dg train --resume` on a crafted training state). Each must end with
exit code 2 and exactly one line `error: ...` on stderr, and leave no output behind; a crash (a
signal, returncode < 0) fails the test. The processes run under a data-size limit (RLIMIT_DATA), so
that a file asking for a huge network is refused before anything is allocated, not by running out
of memory; the honest twins load and run under the same limit.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import warm

from aot.dg import ADMEncoder, GuidedDiscriminator
from aot.dg.discriminator import ENCODER_FORMAT, save_discriminator, save_encoder

ROOT = Path(__file__).resolve().parents[1]
DATA_LIMIT = 3 << 30  # bytes of data a command may map: ample for the tiny runs, far below a huge network
HUGE = 1 << 14  # a width whose time embedding alone is 4 GiB of float32
PROGRESS = "loading data: "
N = 16  # images of the tiny data set (1x8x8)
TRAIN = ["--scratch-width", "32", "--width", "32", "--depth", "1", "--batch", "16", "--device", "cpu",
         "--threads", "1", "--snapshot-epochs", "0"]


def _run(args: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    """`python -m aot ARGS` in a fresh interpreter (warm.run: forked from one that has imported torch)
    that may map at most DATA_LIMIT bytes of data."""
    env = {k: v for k, v in os.environ.items() if k != "AOT_MAX_TENSOR_BYTES"}
    t0 = time.monotonic()
    res = warm.run([sys.executable, "-m", "aot", *args], capture_output=True, text=True, timeout=300,
                   cwd=ROOT, env={**env, "OMP_NUM_THREADS": "1"},
                   rlimits={resource.RLIMIT_DATA: (DATA_LIMIT, DATA_LIMIT)})
    return res, time.monotonic() - t0


def _one_line_refusal(res: subprocess.CompletedProcess, fragment: str) -> str:
    """Exit 2 (a signal such as SIGSEGV gives a negative code) and exactly one `error:` line, the
    last one on stderr; before it only the progress lines of reading the data set (resume reads the
    training state after the images)."""
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, f"returncode {res.returncode}\n{res.stderr[-3000:]}"
    assert lines and lines[-1].startswith("error: "), res.stderr[-3000:]
    assert all(line.startswith(PROGRESS) for line in lines[:-1]), res.stderr[-3000:]
    assert fragment in lines[-1], lines[-1]
    return lines[-1]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _seeded(model: ADMEncoder, seed: int) -> ADMEncoder:
    g = torch.Generator().manual_seed(seed)
    model.load_state_dict({k: torch.randn(v.shape, generator=g) * 0.1 for k, v in model.state_dict().items()})
    return model.eval()


def _extractor() -> ADMEncoder:
    return _seeded(ADMEncoder(8, 1, 32, 1, (32, 16, 8), 1, num_head_channels=32), 1)


def _head() -> ADMEncoder:
    return _seeded(ADMEncoder(8, 32, 32, 1, (32, 16, 8), 1, num_head_channels=32), 2)


@pytest.fixture(scope="module")
def honest(tmp_path_factory) -> dict[str, Path]:
    """Tiny inputs and honest DG files: data set, sample set, network, encoder, discriminators, and
    the training state of one epoch (made by the command itself)."""
    from aot.checkpoints import save_network
    from aot.data import write_dataset
    from aot.networks import EDMPrecond

    root = tmp_path_factory.mktemp("dg-honest")
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, size=(N, 8, 8), dtype=np.uint8)
    write_dataset(root / "data.zip", iter(real), total=N)
    np.savez(root / "fake.npz", images=rng.integers(0, 256, size=(N, 8, 8, 1), dtype=np.uint8),
             labels=np.full(N, -1), seeds=np.arange(N), meta=np.array(json.dumps({"model": {"name": "noise"}})))
    torch.manual_seed(0)
    net = EDMPrecond(img_resolution=8, img_channels=1, label_dim=0, model_type="SongUNet", model_channels=16,
                     channel_mult=[1], num_blocks=1, attn_resolutions=[], dropout=0.0)
    save_network(root / "net.pt", net, model="toy", aot=False, cond=False, kimg=0.0, source="trained")
    ext, head = _extractor(), _head()
    save_encoder(root / "encoder.pt", ext)
    save_discriminator(root / "disc.pt", GuidedDiscriminator(ext, head), aot=True, cond=False)
    save_discriminator(root / "disc-by-path.pt", GuidedDiscriminator(ext, head),
                       extractor_path=str(root / "encoder.pt"), aot=False, cond=False)
    res, _ = _run(["dg", "train", *_inputs(root), "--out", str(root / "run"), "--epochs", "1", *TRAIN])
    assert res.returncode == 0, res.stderr[-3000:]
    return {name: root / name for name in ("data.zip", "fake.npz", "net.pt", "encoder.pt", "disc.pt",
                                           "disc-by-path.pt")} | {"state": root / "run" / "training-state.pt"}


def _inputs(root: Path) -> list[str]:
    return ["--data", str(root / "data.zip"), "--samples", str(root / "fake.npz")]


def _truncated(path: Path) -> bytes:
    data = path.read_bytes()
    return data[: len(data) // 2]


# ------------------------------------------------------------------------------------------------
# Feature extractors (`dg train --feature-extractor F`)


def _encoder_record() -> dict:
    ext = _extractor()
    return {"format": ENCODER_FORMAT, "init_kwargs": dict(ext.init_kwargs),
            "state_dict": {k: v.clone() for k, v in ext.state_dict().items()}, "meta": {}}


def _extractor_cases() -> dict:
    rec = _encoder_record()
    state, kwargs = rec["state_dict"], rec["init_kwargs"]
    first = next(iter(state))
    return {
        "no-state-dict": ({k: v for k, v in rec.items() if k != "state_dict"}, "has no 'state_dict' entry"),
        "non-tensor-in-state-dict": ({**rec, "state_dict": {**state, first: "weights"}},
                                     f"{first} in the state dict is not a tensor"),
        "init-kwargs-huge-width": ({**rec, "init_kwargs": {**kwargs, "width": HUGE}}, "weights do not match"),
        "init-kwargs-huge-depth": ({**rec, "init_kwargs": {**kwargs, "depth": 10 ** 9}}, "residual blocks"),
        "init-kwargs-depth-a-string": ({**rec, "init_kwargs": {**kwargs, "depth": "1000000000"}},
                                       "depth '1000000000', not a whole number"),
        "bare-1d-input-weight": ({**state, "input_blocks.0.0.weight": torch.zeros(3)},
                                 "not a convolution's 4 dimensions"),
    }


def _refused_by_train(tmp_path: Path, honest: dict, extractor: Path, fragment: str) -> tuple[str, float]:
    out = tmp_path / "out"
    res, seconds = _run(["dg", "train", *_inputs(honest["data.zip"].parent), "--out", str(out),
                         "--feature-extractor", str(extractor), "--epochs", "1", *TRAIN])
    line = _one_line_refusal(res, fragment)
    assert not out.exists()
    return line, seconds


@pytest.mark.parametrize("case", sorted(_extractor_cases()))
def test_hostile_feature_extractor(tmp_path, honest, record_fault, case):
    payload, fragment = _extractor_cases()[case]
    src = tmp_path / f"{case}.pt"
    torch.save(payload, src)
    line, seconds = _refused_by_train(tmp_path, honest, src, fragment)
    if "huge" in case:  # refused from the arguments, not after trying to build the network
        assert seconds < 60, seconds
    record_fault("hostile file", f"DG feature extractor: {case}", line)


def test_truncated_feature_extractor(tmp_path, honest, record_fault):
    src = tmp_path / "truncated.pt"
    src.write_bytes(_truncated(honest["encoder.pt"]))
    line, _ = _refused_by_train(tmp_path, honest, src, "cannot be read (truncated or not a torch file)")
    record_fault("hostile file", "DG feature extractor: truncated", line)


def test_honest_feature_extractor_trains(tmp_path, honest):
    out = tmp_path / "out"
    res, _ = _run(["dg", "train", *_inputs(honest["data.zip"].parent), "--out", str(out), "--feature-extractor",
                   str(honest["encoder.pt"]), "--epochs", "1", *TRAIN])
    assert res.returncode == 0, res.stderr[-3000:]
    assert (out / "discriminator.pt").is_file()


# ------------------------------------------------------------------------------------------------
# Discriminators (`dg generate --discriminator D`)


def _disc_cases(honest: dict) -> dict:
    rec = torch.load(honest["disc.pt"], weights_only=True)
    by_path = torch.load(honest["disc-by-path.pt"], weights_only=True)
    head = rec["head"]
    return {
        "no-head": ({k: v for k, v in rec.items() if k != "head"}, "has no 'head' entry"),
        "head-without-init-kwargs": ({**rec, "head": {"state_dict": head["state_dict"]}},
                                     "head has no 'init_kwargs' entry"),
        "head-huge-width": ({**rec, "head": {**head, "init_kwargs": {**head["init_kwargs"], "width": HUGE}}},
                            "weights do not match"),
        "feature-extractor-kwargs-a-list": ({**by_path, "feature_extractor_kwargs": [8, 1]},
                                            "feature_extractor_kwargs holds a list"),
        "feature-extractor-path-a-number": ({**by_path, "feature_extractor_path": 7},
                                            "feature_extractor_path is a int"),
        "meta-holds-a-tensor": ({**rec, "meta": {"aot": torch.ones(3)}}, "meta holds a value other than plain data"),
        "bare-head-1d-label-embedding": ({**head["state_dict"], "label_emb.weight": torch.zeros(4)},
                                         "label_emb.weight has shape [4]"),
    }


DISC_CASES = ["bare-head-1d-label-embedding", "feature-extractor-kwargs-a-list", "feature-extractor-path-a-number",
              "head-huge-width", "head-without-init-kwargs", "meta-holds-a-tensor", "no-head"]


def _generate(honest: dict, disc: Path, out: Path, *extra: str) -> tuple[subprocess.CompletedProcess, float]:
    return _run(["dg", "generate", "--network", str(honest["net.pt"]), "--discriminator", str(disc),
                 "--seeds", "0-1", "--steps", "2", "--batch", "2", "--device", "cpu", "--threads", "1",
                 "--out", str(out), *extra])


def _refused_by_generate(tmp_path: Path, honest: dict, disc: Path, fragment: str, *extra: str) -> tuple[str, float]:
    before = sorted(tmp_path.iterdir())
    res, seconds = _generate(honest, disc, tmp_path / "out" / "g.npz", *extra)
    line = _one_line_refusal(res, fragment)
    assert sorted(tmp_path.iterdir()) == before
    return line, seconds


def test_disc_cases_are_listed(honest):
    assert sorted(_disc_cases(honest)) == DISC_CASES


@pytest.mark.parametrize("case", DISC_CASES)
def test_hostile_discriminator(tmp_path, honest, record_fault, case):
    payload, fragment = _disc_cases(honest)[case]
    src = tmp_path / f"{case}.pt"
    torch.save(payload, src)
    extra = ["--feature-extractor", str(honest["encoder.pt"])] if case.startswith("bare") else []
    line, seconds = _refused_by_generate(tmp_path, honest, src, fragment, *extra)
    if "huge" in case:
        assert seconds < 60, seconds
    record_fault("hostile file", f"DG discriminator: {case}", line)


def test_truncated_discriminator(tmp_path, honest, record_fault):
    src = tmp_path / "truncated.pt"
    src.write_bytes(_truncated(honest["disc.pt"]))
    line, _ = _refused_by_generate(tmp_path, honest, src, "cannot be read (truncated or not a torch file)")
    record_fault("hostile file", "DG discriminator: truncated", line)


@pytest.mark.parametrize("name", ["disc.pt", "disc-by-path.pt"])
def test_honest_discriminator_generates(tmp_path, honest, name):
    res, _ = _generate(honest, honest[name], tmp_path / "g.npz")
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "g.npz").is_file()


# ------------------------------------------------------------------------------------------------
# Training states (`dg train --resume` on a crafted OUT/training-state.pt)


def _state_cases(honest: dict) -> dict:
    st = torch.load(honest["state"], weights_only=True)
    opt = st["optimizer"]
    moments = {i: {**s, "exp_avg": torch.zeros(3)} for i, s in opt["state"].items()}
    return {
        "no-optimizer": ({k: v for k, v in st.items() if k != "optimizer"}, "has no 'optimizer' entry"),
        "options-a-list": ({**st, "options": [1]}, "options holds a list"),
        "stats-hold-a-tensor": ({**st, "stats": [{"loss": torch.ones(2)}]}, "stats hold a value other than plain"),
        "optimizer-moments-wrong-shape": ({**st, "optimizer": {**opt, "state": moments}}, "does not fit this run"),
    }


STATE_CASES = ["no-optimizer", "optimizer-moments-wrong-shape", "options-a-list", "stats-hold-a-tensor"]


def _resume(honest: dict, out: Path) -> subprocess.CompletedProcess:
    res, _ = _run(["dg", "train", *_inputs(honest["data.zip"].parent), "--out", str(out), "--epochs", "2",
                   "--resume", *TRAIN])
    return res


def test_state_cases_are_listed(honest):
    assert sorted(_state_cases(honest)) == STATE_CASES


@pytest.mark.parametrize("case", STATE_CASES)
def test_hostile_training_state(tmp_path, honest, record_fault, case):
    payload, fragment = _state_cases(honest)[case]
    out = tmp_path / "out"
    out.mkdir()
    torch.save(payload, out / "training-state.pt")
    before = _files(out)
    line = _one_line_refusal(_resume(honest, out), fragment)
    assert _files(out) == before
    record_fault("hostile file", f"DG training state: {case}", line)


def test_truncated_training_state(tmp_path, honest, record_fault):
    out = tmp_path / "out"
    out.mkdir()
    (out / "training-state.pt").write_bytes(_truncated(honest["state"]))
    before = _files(out)
    line = _one_line_refusal(_resume(honest, out), "cannot be read (truncated or not a torch file)")
    assert _files(out) == before
    record_fault("hostile file", "DG training state: truncated", line)


def test_honest_training_state_resumes(tmp_path, honest):
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(honest["state"], out / "training-state.pt")
    res = _resume(honest, out)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming discriminator training from epoch 1" in res.stdout
    assert len((out / "stats.jsonl").read_text().splitlines()) == 2 and (out / "discriminator.pt").is_file()
