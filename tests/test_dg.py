"""Discriminator Guidance: ADM encoder layout and outputs against DG's own code (golden numbers made
by running alsdudrla10/DG outside the repository), the EDM-G++ sampler step for step, discriminator
files, AOT noise assignment in discriminator training, the training and generation commands."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from aot import dg
from aot.cli import main as aot_main
from aot.dg import ADMEncoder, GuidedDiscriminator, dg_sampler
from aot.dg import training as dg_training
from aot.errors import UserError
from aot.sampling import edm_sampler

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def golden():
    return torch.load(DATA / "dg_golden.pt", weights_only=True)


def seeded(model, seed, scale):
    """Deterministic weights: N(0, scale^2) drawn in state_dict order (as the golden script did)."""
    g = torch.Generator().manual_seed(seed)
    model.load_state_dict({k: torch.randn(v.shape, generator=g) * scale for k, v in model.state_dict().items()})
    return model.eval()


class ToyNet(torch.nn.Module):
    """Closed-form denoiser with EDM's preconditioner interface (float32 output, per-sample sigma)."""

    sigma_min, sigma_max, img_resolution, img_channels, label_dim = 0.002, 80.0, 8, 3, 0

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def forward(self, x, sigma, class_labels=None):
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma).to(torch.float32).reshape(-1, 1, 1, 1)
        c = 0.25 / (sigma ** 2 + 0.25)
        return x * c + (1 - c) * 0.5 * torch.tanh(2 * x)


def golden_disc(golden, bias):
    s = golden["sampler"]
    ext = seeded(ADMEncoder(8, 3, 64, 1, (32, 16, 8), 1), s["ext"]["seed"], s["ext"]["scale"])
    head = seeded(ADMEncoder(8, 64, 64, 1, (32, 16, 8), 1), s["head"]["seed"], s["head"]["scale"])
    with torch.no_grad():
        head.out[2].c_proj.weight.mul_(s["head"]["c_proj_weight_mul"])
        head.out[2].c_proj.bias.copy_(s["base_bias"] + bias)
    return GuidedDiscriminator(ext, head).eval().requires_grad_(False)


def randn_from(seed):
    g = torch.Generator().manual_seed(seed)
    return lambda x: torch.randn(x.shape, generator=g, dtype=x.dtype)


# ------------------------------------------------------------------------------------------------
# ADM encoder


@pytest.mark.parametrize("name,ctor", [
    ("classifier32", lambda: ADMEncoder(32, 3, 128, 4, (32, 16, 8), 1000)),
    ("discriminator", lambda: ADMEncoder(8, 512, 128, 2, (32, 16, 8), 1)),
    ("discriminator_cond", lambda: ADMEncoder(8, 512, 128, 2, (32, 16, 8), 1, condition=True)),
])
def test_state_dict_layout_is_dgs(golden, name, ctor):
    with torch.device("meta"):
        model = ctor()
    ours = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert ours == golden["state_dict_shapes"][name]
    # constructor arguments rebuild the same layout
    with torch.device("meta"):
        again = ADMEncoder(**json.loads(json.dumps(model.init_kwargs)))
    assert [[k, list(v.shape)] for k, v in again.state_dict().items()] == ours


def test_adm_outputs_match_dg(golden):
    g = golden["adm"]
    model = seeded(ADMEncoder(**g["kwargs"]), g["seed"], g["scale"])
    with torch.no_grad():
        feat = model(g["x"], g["t"], feature=True, condition=g["condition"])
        logits = model(g["x"], g["t"], condition=g["condition"])
        sig = model(g["x"], g["t"], sigmoid=True, condition=g["condition"])
        # class indices give the same result as one-hot rows
        sig_idx = model(g["x"], g["t"], sigmoid=True, condition=g["condition"].argmax(1))
    # The golden features came from DG's code on another CPU: its float32 convolutions accumulate in
    # another order, which moves features of magnitude up to 6 by up to 3e-5 (5e-6 of their range);
    # the logits and sigmoid below stay within 1e-5.
    torch.testing.assert_close(feat, g["feature"], rtol=1e-5, atol=5e-5)
    torch.testing.assert_close(logits, g["logits"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sig, g["sigmoid"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sig_idx, sig)
    x = g["x"].clone().requires_grad_(True)
    grad = torch.autograd.grad(model(x, g["t"], sigmoid=True, condition=g["condition"])[:, 3].sum(), x)[0]
    torch.testing.assert_close(grad, g["grad"], rtol=1e-4, atol=1e-7)


def test_vp_time_and_marginals(golden):
    v = golden["vp_time"]
    t = dg.sample_vp_time(5, torch.Generator().manual_seed(v["u_seed"]))
    torch.testing.assert_close(t, v["t"])
    mean, std = dg.vp_marginal(t)
    torch.testing.assert_close(mean, v["mean_std"][0])
    torch.testing.assert_close(std, v["mean_std"][1])
    torch.testing.assert_close(dg.vp_time_from_sigma(torch.tensor([0.01, 0.5, 3.0, 80.0])), v["tau"])
    # closed form: the VP state at tau(sigma) is mean * (x + sigma n), i.e. std / mean == sigma
    sigma = torch.tensor([0.002, 0.1, 1.0, 10.0, 80.0], dtype=torch.float64)
    m, s = dg.vp_marginal(dg.vp_time_from_sigma(sigma))
    torch.testing.assert_close(s / m, sigma)
    assert 0 < t.min() and t.max() <= 1


# ------------------------------------------------------------------------------------------------
# Discriminator and sampler


def test_discriminator_output_is_probability(golden):
    disc = golden_disc(golden, 0.0)
    x = torch.cat([torch.randn(4, 3, 8, 8), 1e3 * torch.randn(2, 3, 8, 8), torch.zeros(1, 3, 8, 8)])
    for t in (torch.rand(7), 0.5, torch.tensor(1e-5)):
        p = disc(x, t)
        assert p.shape == (7,) and torch.isfinite(p).all()
        assert ((p >= 0) & (p <= 1)).all()
    lr = disc.log_ratio(x, 0.5)
    p = torch.clip(disc(x, 0.5), 1e-5, 1 - 1e-5)
    torch.testing.assert_close(lr, torch.log(p / (1 - p)))


def test_sampler_matches_dg_step_for_step(golden):
    s = golden["sampler"]
    for case in s["cases"]:
        disc = golden_disc(golden, case["bias"])
        out = dg_sampler(ToyNet(), s["latents"], None, disc, num_steps=case["num_steps"],
                         dg_weight_1st_order=case["w1"], time_min=case["time_min"], time_max=case["time_max"],
                         boosting=bool(case["boosting"]), S_churn=case["churn"],
                         randn_like=randn_from(case["randn_seed"]))
        assert out.dtype == torch.float64
        # DG rounds t_hat to float32 by type promotion; otherwise identical arithmetic
        torch.testing.assert_close(out, case["out"], rtol=0, atol=3e-5)
    # the golden cases exercise what they claim: boosting and the time window change the result
    by = {(c["bias"], c["boosting"], c["churn"], c["time_min"]): c["out"] for c in s["cases"]}
    b0 = s["cases"][0]["bias"]
    assert (by[(b0, 1, 0.0, 0.01)] - by[(b0, 0, 0.0, 0.01)]).abs().max() > 1e-2
    assert (by[(b0, 0, 0.0, 0.3)] - by[(b0, 0, 0.0, 0.01)]).abs().max() > 1e-2


@pytest.mark.parametrize("S_churn", [0.0, 5.0])
def test_zero_weight_is_edm_sampler(golden, S_churn):
    net = ToyNet()
    lat = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(11))
    ref = edm_sampler(net, lat, None, randn_like=randn_from(1), num_steps=7, S_churn=S_churn)
    for disc in (None, golden_disc(golden, 0.0)):
        out = dg_sampler(net, lat, None, disc, num_steps=7, dg_weight_1st_order=0.0, dg_weight_2nd_order=0.0,
                         randn_like=randn_from(1), S_churn=S_churn)
        assert torch.equal(out, ref)
    with pytest.raises(ValueError):
        dg_sampler(net, lat, None, None, num_steps=7, dg_weight_1st_order=1.0)


def test_second_order_weight_runs_and_differs(golden):
    disc = golden_disc(golden, 0.0)
    lat = golden["sampler"]["latents"]
    kw = dict(num_steps=6, randn_like=randn_from(2), dg_weight_1st_order=1.0)
    a = dg_sampler(ToyNet(), lat, None, disc, dg_weight_2nd_order=0.0, **kw)
    b = dg_sampler(ToyNet(), lat, None, disc, dg_weight_2nd_order=1.0, **kw)
    c = dg_sampler(ToyNet(), lat, None, disc, **dict(kw, dg_weight_1st_order=0.0), dg_weight_2nd_order=1.0)
    assert torch.isfinite(b).all() and torch.isfinite(c).all()
    assert (a - b).abs().max() > 1e-3
    assert (c - edm_sampler(ToyNet(), lat, None, num_steps=6)).abs().max() > 1e-3


def test_guidance_only_inside_time_window(golden):
    disc = golden_disc(golden, 0.0)
    taus = []

    class Spy(torch.nn.Module):
        def forward(self, x, t, class_labels=None):
            taus.append(float(t.min()))
            taus.append(float(t.max()))
            return disc(x, t, class_labels)

    lat = golden["sampler"]["latents"]
    kw = dict(num_steps=10, dg_weight_1st_order=2.0, dg_weight_2nd_order=1.0)
    dg_sampler(ToyNet(), lat, None, Spy(), time_min=0.2, time_max=0.7, **kw)
    assert taus and all(0.2 <= t <= 0.7 for t in taus)
    # a window that holds no step: exactly the unguided sampler
    taus.clear()
    out = dg_sampler(ToyNet(), lat, None, Spy(), time_min=0.9999, time_max=1.0, **kw)
    assert not taus
    assert torch.equal(out, edm_sampler(ToyNet(), lat, None, num_steps=10))


# ------------------------------------------------------------------------------------------------
# Files


def test_discriminator_files_round_trip(tmp_path):
    torch.manual_seed(0)
    ext = seeded(ADMEncoder(8, 1, 32, 1, (32, 16, 8), 1, num_head_channels=32), 3, 0.1)
    head = seeded(ADMEncoder(8, 32, 32, 1, (32, 16, 8), 1, condition=True, num_head_channels=32), 4, 0.1)
    disc = GuidedDiscriminator(ext, head).eval()
    x, t, y = torch.randn(5, 1, 8, 8), torch.rand(5), torch.tensor([0, 3, 9, 2, 2])
    ref = disc(x, t, y)

    # trained extractor stored inline
    dg.save_discriminator(tmp_path / "d.pt", disc, aot=True, cond=True)
    payload = torch.load(tmp_path / "d.pt", weights_only=True)
    assert list(payload["head"]["state_dict"]) == list(head.state_dict())
    back, meta = dg.load_discriminator(tmp_path / "d.pt")
    assert meta["aot"] is True and back.condition
    assert torch.equal(back(x, t, y), ref)

    # frozen extractor referenced by path (our encoder file), and DG-style bare state dicts
    dg.save_encoder(tmp_path / "enc.pt", ext)
    dg.save_discriminator(tmp_path / "d2.pt", disc, extractor_path=str(tmp_path / "enc.pt"), aot=False)
    back2, meta2 = dg.load_discriminator(tmp_path / "d2.pt")
    assert torch.equal(back2(x, t, y), ref) and meta2["aot"] is False
    torch.save(head.state_dict(), tmp_path / "discriminator_250.pt")
    torch.save(ext.state_dict(), tmp_path / "classifier.pt")
    with pytest.raises(UserError, match="feature-extractor"):
        dg.load_discriminator(tmp_path / "discriminator_250.pt")
    # a bare classifier is read in DG's configuration for its resolution (width from the weights)
    bare_ext = seeded(ADMEncoder(**dict(dg.dg_classifier_kwargs(8, 1), width=64)), 5, 0.1)
    bare_head = seeded(ADMEncoder(**dg.dg_discriminator_kwargs(64, condition=True)), 6, 0.1)
    torch.save(bare_ext.state_dict(), tmp_path / "8x8_classifier.pt")
    torch.save(bare_head.state_dict(), tmp_path / "discriminator_250.pt")
    back3, meta3 = dg.load_discriminator(tmp_path / "discriminator_250.pt", tmp_path / "8x8_classifier.pt", 8, 1)
    assert back3.condition and meta3["source"].startswith("dg:")
    torch.testing.assert_close(back3(x, t, y), GuidedDiscriminator(bare_ext, bare_head)(x, t, y), rtol=0, atol=0)

    # damaged files are one-line errors
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot be read"):
        dg.load_discriminator(tmp_path / "bad.pt")


def test_missing_classifier_checkpoint_names_dg_links(tmp_path, capsys):
    with pytest.raises(UserError) as exc:
        dg.load_feature_extractor(tmp_path / "32x32_classifier.pt", 32, 3)
    assert dg.DG_CLASSIFIER_URL in str(exc.value) and "\n" not in str(exc.value)
    data, samples = _digits_vs_noise_files(tmp_path, 16)
    out = tmp_path / "out"
    capsys.readouterr()  # the dataset writer's progress lines
    with pytest.raises(SystemExit) as ex:
        aot_main(["dg", "train", "--data", str(data), "--samples", str(samples), "--out", str(out),
                  "--feature-extractor", str(tmp_path / "missing.pt"), "--device", "cpu"])
    assert ex.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and dg.DG_CLASSIFIER_URL in err[0]
    assert not out.exists()


# ------------------------------------------------------------------------------------------------
# Training


def _digits_vs_noise(n, seed=0):
    from sklearn.datasets import load_digits

    d = load_digits()
    real = np.clip(d.images[:n] * 16, 0, 255).astype(np.uint8)[:, None]  # [n, 1, 8, 8]
    rng = np.random.default_rng(seed)
    fake = rng.integers(0, 256, size=(n, 1, 8, 8), dtype=np.uint8)
    return real, d.target[:n].astype(np.int64), fake, rng.integers(0, 10, size=n).astype(np.int64)


def _digits_vs_noise_files(tmp_path, n):
    from aot.data import write_dataset

    real, real_labels, fake, fake_labels = _digits_vs_noise(n)
    data = tmp_path / "digits.zip"
    write_dataset(data, (img[0] for img in real), labels=real_labels.tolist(), total=n)
    samples = tmp_path / "fake.npz"
    np.savez(samples, images=fake.transpose(0, 2, 3, 1), labels=fake_labels, seeds=np.arange(n),
             meta=np.array(json.dumps({"model": {"name": "noise"}})))
    return data, samples


SMALL = dict(scratch_width=32, scratch_depth=1, width=32, depth=1, batch=32, lr=1e-3, device="cpu")


def test_training_beats_chance_and_aot_only_permutes_noise(tmp_path, monkeypatch):
    real, real_labels, fake, fake_labels = _digits_vs_noise(192)
    seen = []
    orig = dg.pool_noise

    def spy(images, noise, labels, aot, cost="l2"):
        out, stats = orig(images, noise, labels, aot, cost)
        seen.append((noise.clone(), out.clone(), None if labels is None else labels.clone(), stats))
        return out, stats

    monkeypatch.setattr(dg_training, "pool_noise", spy)
    res = dg.train_discriminator(real, real_labels, fake, fake_labels, tmp_path / "run", cond=True, aot=True,
                                 pool_size=128, epochs=2, snapshot_epochs=1, log=lambda s: None, **SMALL)
    assert res["final"]["accuracy"] > 0.75, res["stats"]
    assert res["stats"][-1]["paired_l2"] < res["stats"][-1]["unpaired_l2"]
    assert seen and all(s[3] for s in seen)
    for drawn, used, labels, _ in seen:
        # the noise multiset is unchanged and each image gets noise drawn at an index of its class
        assert torch.equal(torch.sort(drawn.flatten(1), dim=0)[0], torch.sort(used.flatten(1), dim=0)[0])
        match = (used.flatten(1)[:, None, :] == drawn.flatten(1)[None, :, :]).all(-1)
        src = match.float().argmax(1)
        assert match.any(1).all() and torch.equal(labels[src], labels)
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"discriminator.pt", "result.json", "stats.jsonl", "training-state.pt",
            "discriminator-snapshot-000001.pt"} <= files
    lines = (tmp_path / "run" / "stats.jsonl").read_text().splitlines()
    assert [json.loads(s)["epoch"] for s in lines] == [1, 2]
    disc, meta = dg.load_discriminator(tmp_path / "run" / "discriminator.pt")
    assert meta["aot"] and meta["cond"]
    with torch.no_grad():
        x = dg.to_model_range(torch.from_numpy(np.concatenate([real[:32], fake[:32]])))
        labels = torch.from_numpy(np.concatenate([real_labels[:32], fake_labels[:32]]))
        p = disc(x * 0.99, torch.full((64,), 0.01), labels)
    assert ((p >= 0) & (p <= 1)).all()


def test_plain_training_draws_independent_noise():
    z = torch.randn(6, 1, 8, 8)
    out, stats = dg.pool_noise(torch.randn(6, 1, 8, 8), z, None, aot=False)
    assert out is z and stats == {}


def test_cli_train_resume_and_generate(tmp_path):
    from aot.checkpoints import save_network
    from aot.networks import EDMPrecond
    from aot.samples import read_sample_set

    data, samples = _digits_vs_noise_files(tmp_path, 48)
    common = ["dg", "train", "--data", str(data), "--samples", str(samples), "--scratch-width", "32", "--width",
              "32", "--depth", "1", "--batch", "32", "--device", "cpu", "--seed", "3", "--pool-size", "32"]
    aot_main(common + ["--aot", "--out", str(tmp_path / "straight"), "--epochs", "2"])
    # the workflow's spelling: --aot/--no-cond, --collect-images, --threads
    wf = ["--aot", "--no-cond", "--collect-images", "48", "--threads", "1"]
    aot_main(common + wf + ["--out", str(tmp_path / "resumed"), "--epochs", "1"])
    aot_main(common + wf + ["--out", str(tmp_path / "resumed"), "--epochs", "2", "--resume"])
    a = torch.load(tmp_path / "straight" / "discriminator.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "discriminator.pt", weights_only=True)
    for part in ("head", "feature_extractor"):
        for k, v in a[part]["state_dict"].items():
            assert torch.equal(v, b[part]["state_dict"][k]), (part, k)
    result = json.loads((tmp_path / "resumed" / "result.json").read_text())
    assert result["aot"] is True and len(result["stats"]) == 2

    torch.manual_seed(0)
    net = EDMPrecond(img_resolution=8, img_channels=1, label_dim=0, model_type="SongUNet", model_channels=16,
                     channel_mult=[1], num_blocks=1, attn_resolutions=[], dropout=0.0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_network(tmp_path / "net.pt", net, model="toy", aot=True, cond=False, kimg=0.0, source="trained")
    gen = ["dg", "generate", "--network", str(tmp_path / "net.pt"), "--discriminator",
           str(tmp_path / "straight" / "discriminator.pt"), "--seeds", "0-3", "--steps", "3", "--batch", "2",
           "--device", "cpu"]
    aot_main(gen + ["--out", str(tmp_path / "g.npz"), "--boosting", "--dg-weight-2nd-order", "0.5",
                    "--model-name", "toy-aot", "--solver", "heun", "--threads", "1"])
    rec = read_sample_set(tmp_path / "g.npz")
    assert rec["images"].shape == (4, 8, 8, 1) and rec["images"].dtype == np.uint8
    smp = rec["meta"]["sampler"]
    assert smp["key"] == "dgaot-heun-n3-rho7" and smp["nfe"] == 5
    assert smp["guidance"] == {"method": "dg", "aot": True,
                               "discriminator": str(tmp_path / "straight" / "discriminator.pt"),
                               "dg_weight_1st_order": 2.0, "dg_weight_2nd_order": 0.5, "time_min": 0.01,
                               "time_max": 1.0, "boosting": True, "train_seeds": [0, 47],
                               # the discriminator's training, for Table 3's notes
                               "training": {"batch": 32, "epoch": 2, "lr": 0.0003, "weight_decay": 1e-07,
                                            "pool_size": 32}}
    assert rec["meta"]["model"]["name"] == "toy-aot" and rec["meta"]["model"]["aot"] is True
    # zero weights: the same images as `aot generate`
    aot_main(gen + ["--out", str(tmp_path / "w0.npz"), "--dg-weight-1st-order", "0", "--no-boosting"])
    with pytest.raises(SystemExit) as ex:
        aot_main(gen + ["--out", str(tmp_path / "e.npz"), "--solver", "euler"])
    assert ex.value.code == 2 and not (tmp_path / "e.npz").exists()
    aot_main(["generate", "--network", str(tmp_path / "net.pt"), "--seeds", "0-3", "--steps", "3", "--device",
              "cpu", "--out", str(tmp_path / "plain.npz")])
    assert np.array_equal(read_sample_set(tmp_path / "w0.npz")["images"],
                          read_sample_set(tmp_path / "plain.npz")["images"])


def test_stop_keeps_last_epoch_state_and_resume_matches(tmp_path):
    real, real_labels, fake, fake_labels = _digits_vs_noise(48)
    kw = dict(cond=False, aot=False, epochs=2, snapshot_epochs=0, log=lambda s: None, seed=5, **SMALL)
    dg.train_discriminator(real, None, fake, None, tmp_path / "a", **kw)
    calls = []

    def stop():  # a SIGTERM arriving in the second epoch
        calls.append(1)
        return len(calls) == 4

    res = dg.train_discriminator(real, None, fake, None, tmp_path / "b", stop=stop, **kw)
    assert res == {"stopped": True, "epoch": 1}
    assert not (tmp_path / "b" / "discriminator.pt").exists()
    assert torch.load(tmp_path / "b" / "training-state.pt", weights_only=True)["epoch"] == 1
    dg.train_discriminator(real, None, fake, None, tmp_path / "b", resume=True, **kw)
    a = torch.load(tmp_path / "a" / "discriminator.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "discriminator.pt", weights_only=True)
    for k, v in a["head"]["state_dict"].items():
        assert torch.equal(v, b["head"]["state_dict"][k]), k
    with pytest.raises(UserError, match="cannot resume"):
        dg.train_discriminator(real, None, fake, None, tmp_path / "b", resume=True, **dict(kw, seed=6))


def test_conditional_guidance_uses_class_labels():
    ext = seeded(ADMEncoder(8, 3, 64, 1, (32, 16, 8), 1), 1, 0.15)
    head = seeded(ADMEncoder(8, 64, 64, 1, (32, 16, 8), 1, condition=True), 7, 0.15)
    disc = GuidedDiscriminator(ext, head).eval().requires_grad_(False)
    lat = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    idx = torch.tensor([0, 1, 2, 3])
    kw = dict(num_steps=5, dg_weight_1st_order=2.0)
    a = dg_sampler(ToyNet(), lat, torch.eye(10)[idx], disc, **kw)
    b = dg_sampler(ToyNet(), lat, idx, disc, **kw)
    c = dg_sampler(ToyNet(), lat, torch.eye(10)[idx + 4], disc, **kw)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-4
    with pytest.raises(ValueError, match="class labels"):
        dg_sampler(ToyNet(), lat, None, disc, **kw)
