"""EDM's FID reference statistics (fid.reference: edm) offline, with a stand-in file the tests write:
checked by SHA-256 before use, read without pickle, shapes and values checked, fetched only by
fetch-assets (a file:// URL here), recorded in each FID result's identity; the comparison of two
references on one sample set; the config keys and the workflow's fetch and reference jobs."""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from aot import fid
from aot.cli import main as aot_main
from aot.fid_reference import EDM_REFERENCE_FILE, EDM_REFERENCE_KEY, EDM_REFERENCE_NAME
from aot.settings import ConfigError, RunSettings

ROOT = Path(__file__).resolve().parents[1]
PAPER = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> tuple[Path, str]:
    """A file shaped like EDM's cifar10-32x32.npz: float64 mu [2048] and a covariance sigma
    [2048, 2048] (not EDM's numbers), and its SHA-256."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2048, 32)) * 0.1
    path = tmp_path_factory.mktemp("edm") / "cifar10-32x32.npz"
    np.savez(path, mu=rng.standard_normal(2048), sigma=a @ a.T + 0.01 * np.eye(2048))
    return path, sha256(path)


def one_error(capsys, argv: list[str]) -> str:
    """Run `python -m aot ARGV` in-process: exit 2 and exactly one `error:` line (after a download's
    progress lines, if any), returned."""
    with pytest.raises(SystemExit) as exc:
        aot_main(argv)
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("download ")]
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_edm_reference_is_checked_then_converted(standin, tmp_path, capsys):
    path, digest = standin
    out = tmp_path / "ref.npz"
    convert = ["fid", "reference", "--edm-reference", str(path), "--out", str(out), "--device", "cpu"]
    aot_main([*convert, "--edm-sha256", digest])
    ref = fid.load_reference(out)  # checked as every reference is
    assert ref["name"] == EDM_REFERENCE_NAME and ref["feature"] == "inception-v3-tf"
    assert (ref["resolution"], ref["channels"], ref["num_images"]) == (32, 3, 50000)
    assert np.array_equal(ref["mu"], np.load(path)["mu"]) and ref["mu"].shape == (2048,)
    assert ref["edm_sha256"] == digest
    out.unlink()

    # another file than the config names: one line with both digests, nothing written
    err = one_error(capsys, [*convert, "--edm-sha256", "0" * 64])
    assert f"have SHA-256 {digest}, expected {'0' * 64}" in err and "fid.edm_reference_sha256" in err
    assert "fid.edm_reference_sha256" in one_error(capsys, convert)  # no digest: required
    assert "two references" in one_error(capsys, [*convert, "--edm-sha256", digest, "--precomputed", "cifar10"])
    # a pickled npz (object arrays) is refused, not unpickled
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, mu=np.array([{"x": 1}] * 2048, dtype=object), sigma=np.eye(2048))
    err = one_error(capsys, [*convert[:2], "--edm-reference", str(pickled), "--out", str(out),
                             "--edm-sha256", sha256(pickled)])
    assert str(pickled) in err and "pickle" in err.lower()
    # shapes that are not EDM's 2048 Inception features
    small = tmp_path / "small.npz"
    np.savez(small, mu=np.zeros(16), sigma=np.eye(16))
    err = one_error(capsys, [*convert[:2], "--edm-reference", str(small), "--out", str(out),
                             "--edm-sha256", sha256(small)])
    assert "'mu' is [16], not [2048]" in err
    # a missing file names the fetch command
    err = one_error(capsys, [*convert[:2], "--edm-reference", str(tmp_path / "none.npz"), "--out", str(out),
                             "--edm-sha256", digest])
    assert f"--only {EDM_REFERENCE_KEY}" in err and "fetch-assets" in err
    assert not out.exists()


def test_fetch_checks_the_digest_and_records_the_file(standin, tmp_path, capsys):
    path, digest = standin
    cache = tmp_path / "cache"
    fetch = ["fid", "fetch-assets", "--cache-dir", str(cache), "--only", EDM_REFERENCE_KEY,
             "--edm-reference-url", path.as_uri()]
    assert "--edm-reference-sha256 is required" in one_error(capsys, fetch)
    err = one_error(capsys, [*fetch, "--edm-reference-sha256", "f" * 64])
    assert "checksum" in err and not (cache / EDM_REFERENCE_FILE).exists()
    aot_main([*fetch, "--edm-reference-sha256", digest])
    assert sha256(cache / EDM_REFERENCE_FILE) == digest
    record = json.loads((cache / "assets.json").read_text())["files"][EDM_REFERENCE_KEY]
    assert record["sha256"] == digest and record["url"] == path.as_uri()
    capsys.readouterr()
    aot_main([*fetch, "--edm-reference-sha256", digest])  # present and matching: kept
    assert "present: EDM's CIFAR-10 reference statistics" in capsys.readouterr().out
    # the converted file names where it came from
    aot_main(["fid", "reference", "--edm-reference", str(cache / EDM_REFERENCE_FILE), "--edm-sha256", digest,
              "--out", str(tmp_path / "ref.npz"), "--device", "cpu"])
    assert fid.load_reference(tmp_path / "ref.npz")["source"] == path.as_uri()


def _samples(path: Path, images_nhwc: np.ndarray) -> Path:
    n = len(images_nhwc)
    meta = {"model": {"name": "stand-in", "aot": False, "cond": False}, "fingerprint": "x", "seeds": [0, n - 1],
            "sampler": {"key": "heun-n18-rho7", "solver": "heun", "num_steps": 18, "rho": 7.0, "nfe": 35}}
    np.savez(path, images=images_nhwc, seeds=np.arange(n), labels=np.full(n, -1), meta=np.array(json.dumps(meta)))
    return path


def test_two_references_on_one_sample_set(tmp_path, capsys):
    """compare-references on a stand-in (digits, a small offline feature network): the FID of one
    set against two references, features computed once; the FID results name their reference."""
    from aot.data import digits_images, write_dataset

    images, labels = digits_images(8)
    write_dataset(tmp_path / "all.zip", images[:400], labels[:400])
    aot_main(["fid", "train-features", "--data", str(tmp_path / "all.zip"), "--out", str(tmp_path / "f.pt"),
              "--epochs", "1", "--batch", "64", "--feature-dim", "8", "--width", "8", "--device", "cpu",
              "--threads", "1"])
    for name, n in (("a", 400), ("b", 100)):  # the whole set, and a quarter of it: two references
        aot_main(["fid", "reference", "--data", str(tmp_path / "all.zip"), "--features", str(tmp_path / "f.pt"),
                  "--max-images", str(n), "--out", str(tmp_path / f"{name}.npz"), "--device", "cpu"])
    samples = _samples(tmp_path / "s.npz", images[400:600, :, :, None])
    capsys.readouterr()
    aot_main(["fid", "compare-references", "--samples", str(samples), "--ref", str(tmp_path / "a.npz"),
              str(tmp_path / "b.npz"), "--out", str(tmp_path / "cmp.json"), "--device", "cpu"])
    printed = capsys.readouterr().out
    doc = json.loads((tmp_path / "cmp.json").read_text())
    assert doc["kind"] == "fid-reference-comparison" and doc["num_images"] == 200
    a, b = doc["references"]
    assert doc["differences"] == [pytest.approx(b["fid"] - a["fid"])] and a["fid"] != b["fid"]
    assert f"{b['fid'] - a['fid']:+.4f}" in printed
    assert len(doc["reference_distances"]) == 1 and doc["reference_distances"][0] > 0
    # each FID result names its reference: results against different ones never mix in a table
    for name in ("a", "b"):
        aot_main(["fid", "measure", "--samples", str(samples), "--ref", str(tmp_path / f"{name}.npz"),
                  "--out", str(tmp_path / f"{name}.json"), "--device", "cpu"])
    names = {json.loads((tmp_path / f"{n}.json").read_text())["identity"]["reference_name"] for n in "ab"}
    assert names == {"all.zip"}  # one dataset, two references: the digests tell them apart
    capsys.readouterr()
    err = one_error(capsys, ["fid", "compare-references", "--samples", str(samples), "--ref",
                             str(tmp_path / "a.npz"), "--out", str(tmp_path / "one.json")])
    assert "needs two or more" in err and not (tmp_path / "one.json").exists()


def _load(cfg: dict) -> RunSettings:
    return RunSettings.load(copy.deepcopy(cfg), schema=ROOT / "workflow" / "schemas" / "config.schema.yaml",
                            paper=ROOT / "config" / "config.yaml")


def test_config_keys():
    from aot.cli import fid as cli_fid  # its copies, kept so that `--help` needs no numpy
    from aot.fid_reference import EDM_REFERENCE_URL

    assert (cli_fid.EDM_URL, cli_fid.EDM_KEY) == (EDM_REFERENCE_URL, EDM_REFERENCE_KEY)
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert schema["properties"]["fid"]["properties"]["edm_reference_url"]["default"] == EDM_REFERENCE_URL
    cfg = copy.deepcopy(PAPER)
    cfg["fid"]["reference"] = "edm"
    with pytest.raises(ConfigError, match=r"^config error: fid\.edm_reference_sha256 is required with "
                                          r"fid\.reference: edm"):
        _load(cfg)
    cfg["fid"]["edm_reference_sha256"] = "A" * 64
    with pytest.raises(ConfigError, match=r"fid\.edm_reference_sha256: 'A{64}' does not match"):
        _load(cfg)
    cfg["fid"]["edm_reference_sha256"] = "a" * 64
    run = _load(cfg)
    assert run.config["fid"]["edm_reference_url"] == "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/cifar10-32x32.npz"
    cfg["fid"]["features"] = "offline"
    with pytest.raises(ConfigError, match=r"EDM's statistics \(edm\) are Inception statistics of CIFAR-10"):
        _load(cfg)


def test_workflow_fetches_and_converts_edm_reference(tmp_path):
    (tmp_path / "edm.yaml").write_text(yaml.safe_dump({"fid": {"reference": "edm",
                                                               "edm_reference_sha256": "a" * 64}}))
    res = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--snakefile", str(ROOT / "Snakefile"),
                          "fetch", "results/paper/fid/reference-cifar10-edm.npz", "--configfile", "edm.yaml"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    fetch = next(line for line in out.splitlines() if "-m aot fid fetch-assets" in line)
    assert f"--only inception cifar10 {EDM_REFERENCE_KEY}" in fetch and f"--edm-reference-sha256 {'a' * 64}" in fetch
    ref = next(line for line in out.splitlines() if "-m aot fid reference" in line)
    assert f"--edm-reference downloads/clean-fid/{EDM_REFERENCE_FILE} --edm-sha256 {'a' * 64}" in ref
