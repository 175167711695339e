"""Datasets in EDM's format made elsewhere (EDM's dataset_tool.py, or ours): loading 1- and 3-channel
zips and folders with and without labels, `aot data check|import`, the `dataset: {name: edm}` kind of
the workflow and its config checks, and dry runs of the FFHQ, AFHQv2 and ImageNet 64x64 presets."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import warm
import yaml

from aot.data import ImageFolderDataset, check_dataset, class_pool_warning, import_dataset

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


# ------------------------------------------------------------------------------------------------
# EDM-format datasets written the way EDM's dataset_tool.py writes them (PIL, uncompressed PNG)


def make_images(n: int, res: int, channels: int, seed: int = 0) -> np.ndarray:
    shape = (n, res, res) if channels == 1 else (n, res, res, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PIL.Image.fromarray(img, "L" if img.ndim == 2 else "RGB").save(buf, format="png", compress_level=0)
    return buf.getvalue()


def edm_dataset(dest: Path, images: np.ndarray, labels: list[int] | None, labels_file: bool = True) -> Path:
    """An EDM-format dataset: `dest` ending in .zip gives a stored zip, anything else a folder."""
    files = {f"{i // 1000:05d}/img{i:08d}.png": png_bytes(img) for i, img in enumerate(images)}
    if labels_file:
        entries = None if labels is None else [[name, int(c)] for name, c in zip(files, labels)]
        files["dataset.json"] = json.dumps({"labels": entries}).encode()
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.suffix == ".zip":
        with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, data in files.items():
                zf.writestr(name, data)
    else:
        for name, data in files.items():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(data)
    return dest


def aot(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m aot ARGS` in a fresh interpreter (warm.run: forked from one that has imported torch)."""
    return warm.run([sys.executable, "-m", "aot", *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


# ------------------------------------------------------------------------------------------------
# Loading


@pytest.mark.parametrize("kind", ["zip", "folder"])
def test_rgb_labelled_and_gray_unlabelled_load_exactly(tmp_path, kind):
    suffix = ".zip" if kind == "zip" else ""
    rgb = make_images(7, 16, 3, seed=1)
    labels = [3, 0, 2, 2, 1, 0, 3]
    gray = make_images(5, 8, 1, seed=2)
    p_rgb = edm_dataset(tmp_path / f"rgb{suffix}", rgb, labels)
    p_gray = edm_dataset(tmp_path / f"gray{suffix}", gray, None, labels_file=False)

    ds = ImageFolderDataset(p_rgb)
    assert (len(ds), ds.num_channels, ds.resolution, ds.label_dim) == (7, 3, 16, 4)
    for i in range(7):
        image, onehot = ds[i]
        np.testing.assert_array_equal(image, rgb[i].transpose(2, 0, 1))
        np.testing.assert_array_equal(onehot, np.eye(4, dtype=np.float32)[labels[i]])

    ds = ImageFolderDataset(p_gray)
    assert (len(ds), ds.num_channels, ds.resolution, ds.has_labels) == (5, 1, 8, False)
    for i in range(5):
        image, label = ds[i]
        np.testing.assert_array_equal(image, gray[i][np.newaxis])
        assert label.shape == (0,)

    info = check_dataset(p_rgb, resolution=16, channels=3, labels=True, classes=4)
    assert info["class_counts"] == [2, 1, 2, 2] and info["count"] == 7
    info = check_dataset(p_gray, resolution=8, channels=1, labels=False)
    assert (info["labels"], info["label_dim"], info["channels"]) == (False, 0, 1)


def test_no_labels_ignores_a_labels_file(tmp_path):
    path = edm_dataset(tmp_path / "d.zip", make_images(3, 8, 3), [0, 1, 1])
    assert check_dataset(path, labels=False)["labels"] is False
    assert check_dataset(path)["label_dim"] == 2


def test_class_pool_warning_numbers():
    assert class_pool_warning(2048, 10) is None  # the paper's conditional CIFAR-10 pools: 204.8 per class
    assert class_pool_warning(32768, 1000) is None  # the ImageNet preset: 32.8 per class
    warning = class_pool_warning(4096, 1000)
    assert "4.1 images per class" in warning and "N >= 32000" in warning
    assert class_pool_warning(31, 1) is None  # one class: no class-wise pairing


# ------------------------------------------------------------------------------------------------
# `aot data check` and `aot data import`


def test_check_cli_prints_the_summary(tmp_path):
    path = edm_dataset(tmp_path / "d.zip", make_images(6, 8, 3), [0, 1, 2, 0, 1, 2])
    proc = aot("data", "check", str(path), "--resolution", "8", "--channels", "3", "--labels", "--classes", "3",
               "--pool-size", "96", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert (info["count"], info["label_dim"], info["images_per_class"]) == (6, 3, {"min": 2, "max": 2, "mean": 2.0})
    assert "warning" not in proc.stderr  # 96 / 3 classes = 32 images per class and pool
    proc = aot("data", "check", str(path), "--labels", "--pool-size", "64", cwd=tmp_path)
    assert proc.returncode == 0
    assert "warning: pool_size N=64 over 3 classes gives 21.3 images per class" in proc.stderr


@pytest.mark.parametrize("case, expect", [
    ("missing", "does not exist"),
    ("tarball", "is neither a folder nor a .zip archive"),
    ("not-a-zip", "is not a readable zip archive"),
    ("no-images", "contains no image files"),
    ("resolution", "has resolution 8, expected 64"),
    ("channels", "has 3-channel images, expected 1"),
    ("labels", "has no dataset.json, but labels are required"),
    ("null-labels", "dataset.json holds no labels, but labels are required"),
    ("classes", "has 2 classes, expected 1000"),
    ("mixed", "mixes image shapes"),
])
def test_bad_dataset_fails_with_one_line(tmp_path, case, expect):
    args = []
    if case == "missing":
        path = tmp_path / "nope.zip"
    elif case == "tarball":
        path = tmp_path / "d.tar"
        path.write_bytes(b"x" * 100)
    elif case == "not-a-zip":
        path = tmp_path / "d.zip"
        path.write_bytes(b"PK\x03\x04 truncated")
    elif case == "no-images":
        path = tmp_path / "d"
        path.mkdir()
        (path / "readme.txt").write_text("hello")
    else:
        labels = None if case in ("labels", "null-labels") else [0, 1, 1]
        path = edm_dataset(tmp_path / "d.zip", make_images(3, 8, 3), labels, labels_file=case != "labels")
        args = {"resolution": ["--resolution", "64"], "channels": ["--channels", "1"],
                "labels": ["--labels"], "null-labels": ["--labels"], "classes": ["--classes", "1000"]}.get(case, [])
        if case == "mixed":
            with zipfile.ZipFile(path, "a") as zf:
                zf.writestr("00000/img00000003.png", png_bytes(make_images(1, 16, 3)[0]))
    for command in (["check", str(path)], ["import", "--source", str(path), "--dest", str(tmp_path / "out.zip")]):
        line = one_error_line(aot("data", *command, *args, cwd=tmp_path))
        assert expect in line, line
        assert not (tmp_path / "out.zip").exists() and not (tmp_path / "out.zip").is_symlink()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


@pytest.mark.parametrize("kind", ["zip", "folder"])
def test_import_links_by_default(tmp_path, kind):
    images = make_images(4, 8, 1)
    src = edm_dataset(tmp_path / ("src.zip" if kind == "zip" else "src"), images, [1, 0, 1, 1])
    dest = tmp_path / "run" / "data" / "dataset.zip"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"an older dataset")  # replaced, not appended to
    proc = aot("data", "import", "--source", os.path.relpath(src, tmp_path), "--dest", str(dest),
               "--resolution", "8", "--channels", "1", "--labels", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert dest.is_symlink() and os.readlink(dest) == str(src.resolve())  # absolute: valid from any folder
    ds = ImageFolderDataset(dest)
    np.testing.assert_array_equal(np.stack([ds[i][0][0] for i in range(4)]), images)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["dataset.zip"]


@pytest.mark.parametrize("kind", ["zip", "folder"])
def test_import_copy_keeps_every_byte(tmp_path, kind):
    src = edm_dataset(tmp_path / ("src.zip" if kind == "zip" else "src"), make_images(3, 8, 3), None)
    (tmp_path / "src" / "notes.txt").write_text("not part of the dataset") if kind == "folder" else None
    dest = tmp_path / "out" / "dataset.zip"
    info = import_dataset(src, dest, copy=True, resolution=8, labels=False)
    assert info["mode"] == "copy" and not dest.is_symlink()
    if kind == "zip":
        assert dest.read_bytes() == src.read_bytes()
    else:
        with zipfile.ZipFile(dest) as zf:
            assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
            members = {n: zf.read(n) for n in zf.namelist()}
        on_disk = {str(p.relative_to(src)): p.read_bytes() for p in src.rglob("*") if p.is_file()}
        del on_disk["notes.txt"]
        assert members == on_disk


# ------------------------------------------------------------------------------------------------
# The workflow: `dataset: {name: edm}`, its checks, and the presets


def snakemake(*args: str, configfile: Path, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [*SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(cwd), *args,
           "--configfile", str(configfile)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=300)


def job_counts(output: str) -> dict[str, int]:
    counts, in_table = {}, False
    for line in output.splitlines():
        parts = line.split()
        if parts == ["job", "count"]:
            in_table = True
        elif in_table and len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
            if parts[0] == "total":
                break
    return counts


def tiny_edm_config(tmp_path: Path, dataset: dict, **changes) -> Path:
    cfg = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    cfg["dataset"] = dataset
    for key, value in changes.items():
        cfg[key] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def config_errors(proc: subprocess.CompletedProcess) -> list[str]:
    return [ln.strip() for ln in (proc.stdout + proc.stderr).splitlines() if "config error:" in ln]


# The dataset section's checks and the small-class-pool warning are tested in-process in test_settings.py.


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["zip", "folder"])
def test_edm_dataset_is_linked_into_the_run(tmp_path, kind):
    images = make_images(6, 8, 1)
    src = edm_dataset(tmp_path / "data" / ("digits.zip" if kind == "zip" else "digits"), images, [0, 1, 2] * 2)
    dataset = {"name": "edm", "path": os.path.relpath(src, tmp_path), "resolution": 8, "channels": 1,
               "labels": True, "classes": 3}
    cfg = tiny_edm_config(tmp_path, dataset)
    target = "results/demo/data/dataset.zip"
    proc = snakemake("--cores", "1", target, configfile=cfg, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dest = tmp_path / target
    assert dest.is_symlink() and Path(os.readlink(dest)) == src.resolve()
    ds = ImageFolderDataset(dest)
    np.testing.assert_array_equal(np.stack([ds[i][0][0] for i in range(6)]), images)
    again = snakemake("-n", target, configfile=cfg, cwd=tmp_path)
    assert "Nothing to be done" in again.stdout + again.stderr
    # a dataset of another resolution than the config's fails in the job, with one line in its log
    dest.unlink()
    bad = tiny_edm_config(tmp_path, {**dataset, "resolution": 16})
    assert snakemake("--cores", "1", target, configfile=bad, cwd=tmp_path).returncode != 0
    log = (tmp_path / "logs" / "demo" / "prepare_dataset.log").read_text().strip().splitlines()
    assert log == [f"error: dataset {dataset['path']} has resolution 8, expected 16"]
    assert not dest.exists() and not dest.is_symlink()


def paper_style_sample_sets(cfg: dict) -> set[tuple[str, int, float]]:
    """The distinct (model, steps, rho) sample sets of the tables of the parts a config has."""
    s = cfg["sampling"]
    d = (s["default"]["num_steps"], float(s["default"]["rho"]))
    sets = set()
    for pair in cfg["tables"].values():
        best = s["best"].get(pair["aot"], s["default"])
        sets |= {(pair["edm"], *d), (pair["aot"], *d), (pair["aot"], best["num_steps"], float(best["rho"]))}
    for row in s["table4"]["rows"]:
        sets |= {(row["model"], row["num_steps"], float(rho)) for rho in s["table4"]["rho"]}
    for m in s["table5"]["models"]:
        sets |= {(m, (nfe + 1) // 2, float(rho)) for nfe in s["table5"]["nfe"] for rho in s["table5"]["rho"]}
    return sets


@pytest.mark.parametrize("preset, arch, cond", [
    ("ffhq64", "ddpmpp", False), ("afhqv2-64", "ddpmpp", False), ("imagenet64", "adm", True),
])
def test_preset_dry_run(tmp_path, preset, arch, cond):
    cfg_path = ROOT / "config" / f"{preset}.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    d = cfg["dataset"]
    n = 1000 if cond else 4
    edm_dataset(tmp_path / d["path"], make_images(n, 64, 3), list(range(n)) if cond else None)
    proc = snakemake("-n", "-p", "all", configfile=cfg_path, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    counts = job_counts(out)
    reps = cfg["fid"]["repeats"]
    n_sets = len(paper_style_sample_sets(cfg))
    assert counts["prepare_dataset"] == 1 and counts["train"] == 2 and counts["reference_stats"] == 1
    assert counts["generate"] in (n_sets, n_sets * reps)  # one job per set, or per set and repeat
    assert "train_discriminator" not in counts  # DG is off: its classifier is CIFAR-10's
    assert ("table2" in counts, "table1" in counts) == (cond, not cond)
    assert (f"data import --source {d['path']} --dest results/{cfg['run']}/data/dataset.zip --resolution 64 "
            f"--channels 3 --{'' if cond else 'no-'}labels") in out
    train = [ln for ln in out.splitlines() if " -m aot train " in ln]
    assert len(train) == 2 and all(f"--arch {arch} " in ln for ln in train)
    t = cfg["training"]
    for ln in train:
        assert f"--batch {t['batch']} " in ln and f"--lr {t['lr']} " in ln and f"--dropout {t['dropout']} " in ln
        assert (" --cond " in ln) == cond
    assert d["name"] == "edm" and cfg["fid"]["reference"] == "dataset"
    assert f"results/{cfg['run']}/fid/reference-inception.npz" in out  # statistics of the dataset
