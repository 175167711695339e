"""Frechet distance, repeat aggregation, the offline feature network, and the `python -m aot fid` commands."""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from aot import fid, metrics
from aot.cli import build_parser
from aot.cli import main as aot_main
from aot.errors import UserError
from aot.files import sha256_file

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")


def _random_cov(rng, d, n=None):
    a = rng.standard_normal((d, n or 3 * d))
    return a @ a.T / a.shape[1]


# --------------------------------------------------------------------------------------------
# Frechet distance: closed forms


def test_identical_gaussians_give_zero():
    rng = np.random.default_rng(0)
    mu, sigma = rng.standard_normal(6), _random_cov(rng, 6)
    assert metrics.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)


def test_shifted_means_give_squared_shift():
    rng = np.random.default_rng(1)
    mu, sigma, shift = rng.standard_normal(5), _random_cov(rng, 5), rng.standard_normal(5)
    got = metrics.frechet_distance(mu + shift, sigma, mu, sigma)
    assert got == pytest.approx(float(shift @ shift), rel=1e-9, abs=1e-9)


def test_diagonal_covariances_closed_form():
    rng = np.random.default_rng(2)
    a, b = rng.uniform(0.1, 3.0, 7), rng.uniform(0.1, 3.0, 7)
    mu1, mu2 = rng.standard_normal(7), rng.standard_normal(7)
    expected = float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    got = metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-10)


def test_scalar_gaussians_and_symmetry():
    # 1-d: (m1 - m2)^2 + (s1 - s2)^2
    assert metrics.frechet_distance(1.0, 4.0, -2.0, 9.0) == pytest.approx(9.0 + 1.0)
    rng = np.random.default_rng(3)
    m1, m2, s1, s2 = rng.standard_normal(4), rng.standard_normal(4), _random_cov(rng, 4), _random_cov(rng, 4)
    assert metrics.frechet_distance(m1, s1, m2, s2) == pytest.approx(metrics.frechet_distance(m2, s2, m1, s1), rel=1e-8)


def test_matches_clean_fid_and_handles_singular():
    from cleanfid.fid import frechet_distance as cf

    rng = np.random.default_rng(4)
    m1, m2 = rng.standard_normal(10), rng.standard_normal(10)
    s1, s2 = _random_cov(rng, 10), _random_cov(rng, 10, n=4)  # s2 has rank 4
    with pytest.warns(DeprecationWarning):
        ref = cf(m1, s1, m2, s2)
    assert metrics.frechet_distance(m1, s1, m2, s2) == pytest.approx(float(ref), rel=1e-8)
    with pytest.raises(ValueError):
        metrics.frechet_distance(m1, s1, m2[:3], s2[:3, :3])


def test_feature_statistics_match_numpy():
    feats = np.random.default_rng(5).standard_normal((50, 4)).astype(np.float32)
    mu, sigma = metrics.feature_statistics(feats)
    np.testing.assert_allclose(mu, feats.astype(np.float64).mean(0), rtol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(feats.astype(np.float64), rowvar=False), rtol=1e-6)
    assert mu.dtype == sigma.dtype == np.float64


def test_aggregate_repeats():
    agg = metrics.aggregate_repeats([3.0, 2.0, 4.0])
    assert agg == {"min": 2.0, "mean": 3.0, "std": pytest.approx(1.0), "n": 3}
    one = metrics.aggregate_repeats([2.5])  # one repeat: no spread (NaN, as the report's tables)
    assert np.isnan(one.pop("std")) and one == {"min": 2.5, "mean": 2.5, "n": 1}
    with pytest.raises(ValueError):
        metrics.aggregate_repeats([])


# --------------------------------------------------------------------------------------------
# Offline feature network on a small digits dataset


def _samples_npz(path, images_nhwc, meta=None, seeds=None):
    arrays = {"images": images_nhwc}
    if seeds is not None:
        arrays["seeds"] = np.asarray(seeds, np.int64)
        arrays["labels"] = np.full(len(seeds), -1, np.int64)
    if meta is not None:
        arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
    return path


META = {"model": {"name": "edm-uncond", "aot": False, "cond": False, "checkpoint": "m.pt", "source": "trained",
                  "kimg": 1.0},
        "sampler": {"key": "heun-n18-rho7", "solver": "heun", "num_steps": 18, "rho": 7.0, "sigma_min": 0.002,
                    "sigma_max": 80.0, "S_churn": 0.0, "nfe": 35, "guidance": None},
        "seeds": [0, 599], "num_images": 600, "time_s": 1.0, "env": {}}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from aot.data import digits_images, write_dataset

    root = tmp_path_factory.mktemp("digits")
    images, labels = digits_images(8)
    images, labels = images[:600], labels[:600]
    write_dataset(root / "digits.zip", images, labels)
    threads = torch.get_num_threads()
    try:  # one thread: a tiny network gains nothing from more, and loses much on a busy machine
        aot_main(["fid", "train-features", "--data", str(root / "digits.zip"), "--out", str(root / "featnet.pt"),
                  "--epochs", "10", "--batch", "32", "--feature-dim", "16", "--width", "8", "--device", "cpu",
                  "--threads", "1"])
        aot_main(["fid", "reference", "--data", str(root / "digits.zip"), "--features", str(root / "featnet.pt"),
                  "--out", str(root / "ref.npz"), "--device", "cpu", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    return root, images, labels


def test_feature_net_file_is_weights_only_and_learns(digits):
    root, _, _ = digits
    payload = torch.load(root / "featnet.pt", weights_only=True)
    assert payload["format"] == metrics.FEATNET_FORMAT
    assert payload["init_kwargs"] == {"in_channels": 1, "resolution": 8, "num_classes": 10, "feature_dim": 16,
                                      "width": 8}
    assert payload["meta"]["name"] == "offline-classifier"
    assert payload["meta"]["val_accuracy"] > 0.6  # 10 classes: chance is 0.1
    net, _ = metrics.load_feature_net(root / "featnet.pt")
    assert net.features(torch.zeros(2, 1, 8, 8)).shape == (2, 16)


def test_reference_file(digits):
    root, images, _ = digits
    ref = fid.load_reference(root / "ref.npz")
    assert ref["feature"] == "offline-classifier" and ref["num_images"] == 600
    assert (ref["resolution"], ref["channels"]) == (8, 1) and ref["mu"].shape == (16,)
    net, _ = metrics.load_feature_net(root / "featnet.pt")
    with torch.no_grad():
        feats = net.features(torch.from_numpy(images[:, None]).float()).numpy()
    np.testing.assert_allclose(ref["mu"], feats.mean(0), rtol=1e-4, atol=1e-5)


def test_measure_same_images_zero_and_noise_large(digits, tmp_path, capsys):
    root, images, _ = digits
    same = _samples_npz(tmp_path / "same.npz", images[..., None], META, seeds=range(600))
    aot_main(["fid", "measure", "--samples", str(same), "--ref", str(root / "ref.npz"), "--repeat", "2",
              "--out", str(tmp_path / "same.json"), "--device", "cpu"])
    res = json.loads((tmp_path / "same.json").read_text())
    assert abs(res["fid"]) < 1e-6
    for key in ("kind", "model", "sampler", "repeat", "seeds", "num_images", "feature_network", "reference",
                "fid", "time_s", "samples", "env"):
        assert key in res
    assert res["kind"] == "fid" and res["repeat"] == 2 and res["num_images"] == 600
    assert res["model"] == META["model"] and res["sampler"] == META["sampler"] and res["nfe"] == 35
    assert res["seeds"] == [0, 599]
    assert res["feature_network"]["name"] == "offline-classifier"
    assert res["feature_network"]["mode"] == "offline"
    assert res["feature_network"]["path"] == str(root / "featnet.pt")
    assert res["reference"] == {"name": "digits.zip", "path": str(root / "ref.npz"), "num_images": 600,
                                "source": str(root / "digits.zip")}
    assert "offline-classifier" in capsys.readouterr().out

    half = _samples_npz(tmp_path / "half.npz", images[::2, :, :, None])
    noise = _samples_npz(tmp_path / "noise.npz",
                         np.random.default_rng(0).integers(0, 256, (600, 8, 8, 1), dtype=np.uint8))
    vals = {}
    for name, path in (("half", half), ("noise", noise)):
        aot_main(["fid", "measure", "--samples", str(path), "--ref", str(root / "ref.npz"),
                  "--out", str(tmp_path / f"{name}.json"), "--device", "cpu"])
        vals[name] = json.loads((tmp_path / f"{name}.json").read_text())["fid"]
    assert 0 < vals["half"] < vals["noise"] / 20

    aot_main(["fid", "aggregate", str(tmp_path / "same.json"), str(tmp_path / "same.json"),
              "--out", str(tmp_path / "a.json")])
    agg = json.loads((tmp_path / "a.json").read_text())
    assert agg["n"] == 2 and agg["min"] == res["fid"] and agg["std"] == 0.0


def test_measure_rejects_mismatched_samples(digits, tmp_path, capsys):
    root, images, _ = digits
    rgb = _samples_npz(tmp_path / "rgb.npz", np.repeat(images[..., None], 3, axis=-1))
    out = tmp_path / "x.json"
    with pytest.raises(SystemExit) as exc:
        aot_main(["fid", "measure", "--samples", str(rgb), "--ref", str(root / "ref.npz"), "--out", str(out)])
    assert exc.value.code == 2 and not out.exists()
    assert "3x8x8" in capsys.readouterr().err
    big = _samples_npz(tmp_path / "big.npz", np.zeros((4, 16, 16, 1), np.uint8))
    with pytest.raises(SystemExit):
        aot_main(["fid", "measure", "--samples", str(big), "--ref", str(root / "ref.npz"), "--out", str(out)])
    with pytest.raises(SystemExit):  # an Inception measurement against offline statistics
        aot_main(["fid", "measure", "--samples", str(rgb), "--ref", str(root / "ref.npz"), "--features", "inception",
                  "--out", str(out)])
    net, meta = metrics.load_feature_net(root / "featnet.pt")
    with torch.no_grad():
        net.head.bias.add_(1.0)
    metrics.save_feature_net(tmp_path / "other.pt", net, **meta)
    gray = _samples_npz(tmp_path / "gray.npz", images[..., None])
    with pytest.raises(SystemExit):  # not the feature network the reference was computed with
        aot_main(["fid", "measure", "--samples", str(gray), "--ref", str(root / "ref.npz"), "--features",
                  str(tmp_path / "other.pt"), "--out", str(out)])
    assert "is not the one reference" in capsys.readouterr().err
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# Assets: never downloaded by compute commands; fetched by fetch-assets


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a compute command tried to download")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_missing_inception_fails_at_once(tmp_path, capsys, no_network, monkeypatch):
    monkeypatch.delenv("AOT_FID_CACHE", raising=False)
    samples = _samples_npz(tmp_path / "s.npz", np.zeros((4, 8, 8, 3), np.uint8))
    out = tmp_path / "ref.npz"
    with pytest.raises(SystemExit) as exc:
        aot_main(["fid", "reference", "--data", str(samples), "--features", "inception", "--cache-dir",
                  str(tmp_path / "cache"), "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "inception-2015-12-05.pt" in err[0]
    assert f"python -m aot fid fetch-assets --cache-dir {tmp_path / 'cache'}" in err[0]
    assert not out.exists()
    with pytest.raises(SystemExit):
        aot_main(["fid", "reference", "--precomputed", "cifar10", "--cache-dir", str(tmp_path / "cache"),
                  "--out", str(out)])
    assert "cifar10_legacy_tensorflow_train_32.npz" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_missing_assets_command_line(tmp_path):
    """The real entry point: exit 2, one line on stderr, no output file, quickly."""
    samples = _samples_npz(tmp_path / "s.npz", np.zeros((4, 32, 32, 3), np.uint8))
    np.savez(tmp_path / "ref.npz", format=np.array(fid.REF_FORMAT), mu=np.zeros(3), sigma=np.eye(3),
             feature=np.array("inception-v3-tf"), resolution=np.array(32), channels=np.array(3),
             num_images=np.array(10))
    env = dict(os.environ, AOT_FID_CACHE=str(tmp_path / "empty"), PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run([sys.executable, "-m", "aot", "fid", "measure", "--samples", str(samples), "--ref",
                           str(tmp_path / "ref.npz"), "--out", str(tmp_path / "x.json")],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Inception weights")
    assert "fetch-assets" in lines[0] and str(tmp_path / "empty") in lines[0]
    assert not (tmp_path / "x.json").exists()


class _FakeInception(torch.nn.Module):
    """Stands in for the torchscript TF-Inception: 2048 features, the first 4 informative."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Identity()

    def forward(self, x, return_features: bool = False):
        m = x.mean(dim=(2, 3))  # [N, 3]
        f = torch.cat([m, x.std(dim=(1, 2, 3)).unsqueeze(1)], dim=1)
        return torch.cat([f, torch.zeros(x.shape[0], 2044, dtype=f.dtype)], dim=1)


def _serve(folder: Path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def served(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    torch.jit.script(_FakeInception()).save(str(site / "inception-2015-12-05.pt"))
    mu = np.zeros(2048)
    mu[:4] = [100.0, 110.0, 120.0, 50.0]
    sigma = np.zeros((2048, 2048))
    sigma[:4, :4] = np.diag([4.0, 9.0, 16.0, 1.0])
    np.savez(site / "cifar10_legacy_tensorflow_train_32.npz", mu=mu, sigma=sigma)
    (site / "broken.pt").write_bytes(b"not a zip file")
    server, base = _serve(site)
    yield site, base
    server.shutdown()


def test_fetch_assets_from_local_server(served, tmp_path, capsys):
    site, base = served
    cache = tmp_path / "cache"
    args = ["fetch-assets", "--dest", str(cache), "--inception-url", f"{base}/inception-2015-12-05.pt",
            "--stats-url", f"{base}/cifar10_legacy_tensorflow_train_32.npz"]
    aot_main(["fid", *args])
    for name in ("inception-2015-12-05.pt", "cifar10_legacy_tensorflow_train_32.npz"):
        assert (cache / name).read_bytes() == (site / name).read_bytes()
    assert sorted(p.name for p in cache.iterdir()) == ["assets.json", "cifar10_legacy_tensorflow_train_32.npz",
                                                        "inception-2015-12-05.pt"]  # no temporaries left
    manifest = json.loads((cache / "assets.json").read_text())
    assert manifest["files"]["inception"]["url"] == f"{base}/inception-2015-12-05.pt"
    assert manifest["files"]["cifar10"]["bytes"] == (site / "cifar10_legacy_tensorflow_train_32.npz").stat().st_size
    aot_main(["fid", *args])
    assert capsys.readouterr().out.count("present:") == 2

    with pytest.raises(SystemExit) as exc:  # 404
        aot_main(["fid", "fetch-assets", "--dest", str(tmp_path / "c2"), "--only", "inception",
                  "--inception-url", f"{base}/missing.pt"])
    assert exc.value.code == 2 and "HTTP 404" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # served but not a torchscript archive
        aot_main(["fid", "fetch-assets", "--dest", str(tmp_path / "c2"), "--only", "inception",
                  "--inception-url", f"{base}/broken.pt"])
    assert "not a valid file" in capsys.readouterr().err
    assert not list((tmp_path / "c2").iterdir())


def test_inception_needs_a_cache_folder(tmp_path, capsys, no_network, monkeypatch):
    """No shared default (clean-fid's is the world-writable /tmp): the commands say what to pass."""
    monkeypatch.delenv("AOT_FID_CACHE", raising=False)
    samples = _samples_npz(tmp_path / "s.npz", np.zeros((4, 8, 8, 3), np.uint8))
    for argv in (["fetch-assets"], ["fetch-assets", "--only", "inception"],
                 ["reference", "--data", str(samples), "--out", str(tmp_path / "ref.npz")]):
        with pytest.raises(SystemExit) as exc:
            aot_main(["fid", *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and len(err) == 1 and "--cache-dir" in err[0] and "AOT_FID_CACHE" in err[0]
    assert list(tmp_path.iterdir()) == [samples]


def test_inception_weights_verified_before_loading(served, tmp_path, monkeypatch):
    site, base = served
    cache = tmp_path / "cache"
    aot_main(["fid", "fetch-assets", "--dest", str(cache), "--only", "inception",
              "--inception-url", f"{base}/inception-2015-12-05.pt"])
    recorded = json.loads((cache / "assets.json").read_text())["files"]["inception"]["sha256"]
    assert recorded == sha256_file(site / "inception-2015-12-05.pt") != fid.INCEPTION_SHA256
    assert fid.require_inception(cache) == (cache / "inception-2015-12-05.pt", recorded)

    other = _FakeInception()
    other.layers = torch.nn.ReLU()  # another valid TorchScript file in the weights' place
    torch.jit.script(other).save(str(cache / "inception-2015-12-05.pt"))
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("unverified weights loaded"))
    with pytest.raises(UserError, match=f"expected {recorded} \\(recorded in .*assets.json"):
        fid.require_inception(cache)
    with pytest.raises(UserError, match="refusing to load"):
        metrics.inception_feature_fn(cache / "inception-2015-12-05.pt", "cpu", sha256=recorded)
    (cache / "assets.json").unlink()  # no record: the published digest of clean-fid's file applies
    with pytest.raises(UserError, match=f"expected {fid.INCEPTION_SHA256} \\(the published digest"):
        fid.require_inception(cache)
    with pytest.raises(UserError, match="wrong sha256 checksum"):  # an explicit digest is checked on fetch
        fid.fetch_assets(cache_dir=tmp_path / "c3", only=["inception"], inception_sha256="ab" * 32,
                         inception_url=f"{base}/inception-2015-12-05.pt")
    assert not list((tmp_path / "c3").iterdir())


def test_default_urls_are_clean_fids():
    from cleanfid.downloads_helper import inception_url

    assert fid.INCEPTION_URL == inception_url
    assert fid.precomputed_url("cifar10").endswith("/cifar10_legacy_tensorflow_train_32.npz")
    assert fid.precomputed_url("cifar10").startswith("https://www.cs.cmu.edu/~clean-fid/stats/")
    parser = build_parser()
    assert parser.parse_args(["fid", "fetch-assets"]).inception_url == inception_url


def test_inception_path_with_fetched_assets(served, tmp_path, monkeypatch):
    """reference --precomputed + measure through clean-fid's InceptionV3W wrapper (fake weights)."""
    site, base = served
    cache = tmp_path / "cache"
    aot_main(["fid", "fetch-assets", "--dest", str(cache), "--inception-url", f"{base}/inception-2015-12-05.pt",
              "--stats-url", f"{base}/cifar10_legacy_tensorflow_train_32.npz"])
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("download attempted"))
    monkeypatch.setenv("AOT_FID_CACHE", str(cache))
    # The 2048-d sqrtm is slow; the fake features live in the first 4 dims, so compare there (exact).
    full = metrics.frechet_distance
    monkeypatch.setattr(metrics, "frechet_distance",
                        lambda m1, s1, m2, s2: full(m1[:4], s1[:4, :4], m2[:4], s2[:4, :4]))

    from aot.data import write_dataset

    images = np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    write_dataset(tmp_path / "rgb.zip", images, None)
    aot_main(["fid", "reference", "--precomputed", "cifar10", "--data", str(tmp_path / "rgb.zip"),
              "--out", str(tmp_path / "ref.npz")])
    ref = fid.load_reference(tmp_path / "ref.npz")
    assert ref["feature"] == "inception-v3-tf" and ref["mode"] == "legacy_tensorflow"
    assert ref["num_images"] == 50000 and (ref["resolution"], ref["channels"]) == (32, 3)

    samples = _samples_npz(tmp_path / "s.npz", images, META)
    aot_main(["fid", "measure", "--samples", str(samples), "--ref", str(tmp_path / "ref.npz"),
              "--features", "inception", "--out", str(tmp_path / "s.json"), "--device", "cpu", "--batch", "16",
              "--threads", "1"])
    res = json.loads((tmp_path / "s.json").read_text())
    assert res["feature_network"] == {"name": "inception-v3-tf", "mode": "legacy_tensorflow", "path": None,
                                      "dims": 2048}
    assert res["reference"]["name"] == "cleanfid:cifar10_legacy_tensorflow_train_32"
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    feats = _FakeInception()(x).numpy()[:, :4].astype(np.float64)
    expected = full(feats.mean(0), np.cov(feats, rowvar=False), ref["mu"][:4], ref["sigma"][:4, :4])
    assert res["fid"] == pytest.approx(expected, rel=1e-5)

    # Grayscale data: repeated to three channels for Inception; reference from a dataset.
    gray = images[..., 0]
    write_dataset(tmp_path / "gray.zip", gray, None)
    with pytest.raises(SystemExit):  # CIFAR-10 statistics for a 1x32x32 dataset
        aot_main(["fid", "reference", "--precomputed", "cifar10", "--data", str(tmp_path / "gray.zip"),
                  "--out", str(tmp_path / "bad.npz")])
    assert not (tmp_path / "bad.npz").exists()
    aot_main(["fid", "reference", "--data", str(tmp_path / "gray.zip"), "--out", str(tmp_path / "gref.npz"),
              "--device", "cpu"])
    gref = fid.load_reference(tmp_path / "gref.npz")
    assert gref["channels"] == 1
    g = torch.from_numpy(gray).float()[:, None].repeat(1, 3, 1, 1)
    np.testing.assert_allclose(gref["mu"][:4], _FakeInception()(g).numpy()[:, :4].mean(0), rtol=1e-5)


@pytest.mark.parametrize("channels", [3, 1])
def test_inception_inputs_match_clean_fid_folder_loader(tmp_path, channels):
    """Arrays fed by aot.metrics equal what clean-fid's own folder pipeline feeds (legacy_tensorflow)."""
    from cleanfid.fid import get_folder_features
    from PIL import Image

    images = np.random.default_rng(channels).integers(0, 256, (7, 32, 32, channels), dtype=np.uint8)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img[..., 0] if channels == 1 else img).save(folder / f"img{i:03d}.png")
    model = torch.jit.script(_FakeInception())
    seen = []

    def fn(x):
        seen.append(x.clone())
        return model(x)

    ref = get_folder_features(str(folder), fn, num_workers=0, batch_size=4, device=torch.device("cpu"),
                              mode="legacy_tensorflow", verbose=False)
    ours = metrics.compute_features(metrics.images_to_nchw(images), fn, "cpu", batch_size=4, rgb=True)
    n = len(seen) // 2
    torch.testing.assert_close(torch.cat(seen[n:]), torch.cat(seen[:n]), rtol=0, atol=0)
    np.testing.assert_array_equal(ours, ref)
