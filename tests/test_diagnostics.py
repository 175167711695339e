"""Trajectory diagnostics: curvature numbers against closed forms, and the command line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from aot import diagnostics
from aot.cli import main as aot_main
from aot.diagnostics import trajectory_metrics
from aot.sampling import StackedRandomGenerator, denoised_trajectory, edm_time_steps


class GaussianDenoiser(torch.nn.Module):
    """Exact denoiser of data ~ N(mu, diag(s^2)); s = 0 is a single point (D(x, sigma) = mu).

    The probability-flow ODE dx/dt = (x - D(x, t)) / t then has the closed-form solution
    x(t) = mu + sqrt(s^2 + t^2) / sqrt(s^2 + T^2) * (x(T) - mu), per coordinate.
    """

    def __init__(self, mu, s, resolution=2, channels=1):
        super().__init__()
        shape = (1, channels, resolution, resolution)
        self.register_buffer("mu", torch.as_tensor(mu, dtype=torch.float64).expand(shape).clone())
        self.register_buffer("s2", torch.as_tensor(s, dtype=torch.float64).expand(shape).clone() ** 2)
        self.img_resolution, self.img_channels, self.label_dim = resolution, channels, 0
        self.sigma_min, self.sigma_max, self.sigma_data = 0.0, float("inf"), 0.5

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def forward(self, x, sigma, class_labels=None, force_fp32=False):
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        return self.mu + self.s2 / (self.s2 + sigma ** 2) * (x.to(torch.float64) - self.mu)


def exact_path(net, x_T, t_steps):
    """Closed-form states x(t_k) and denoised estimates D(x(t_k), t_k) for k = 0..K."""
    mu, s2, T = net.mu, net.s2, t_steps[0]
    xs = [mu + torch.sqrt(s2 + t ** 2) / torch.sqrt(s2 + T ** 2) * (x_T - mu) for t in t_steps]
    x = torch.stack(xs, dim=1)
    x0 = torch.stack([net(x[:, k], t_steps[k]) for k in range(len(t_steps) - 1)], dim=1)
    return x, x0


def latents(n, shape, seed=0):
    return StackedRandomGenerator("cpu", range(seed, seed + n)).randn([n, *shape]).to(torch.float64)


def test_polyline_closed_form():
    x = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]]])  # right angle, dim 2
    x0 = torch.tensor([[[0.0, 0.0], [1.0, 1.0]]])
    m = trajectory_metrics(x, x0, [2.0, 1.0, 0.0])
    assert m["curve"]["sigma"] == [2.0, 1.0]
    np.testing.assert_allclose(m["curve"]["x0_distance_to_final"], [1.0, 0.0])  # sqrt(2) / sqrt(2)
    assert m["curvature"] == pytest.approx(0.5)
    assert m["path_deviation"] == pytest.approx(1 - math.sqrt(2) / 2)
    # (1, 0) lies 1/sqrt(2) from the chord y = x; divided by sqrt(dim) = sqrt(2).
    np.testing.assert_allclose(m["path"]["x_distance_to_chord"], [0.0, 0.5, 0.0], atol=1e-12)
    assert m["path"]["sigma"] == [2.0, 1.0, 0.0]
    with pytest.raises(ValueError):
        trajectory_metrics(x, x0[:, :1], [2.0, 1.0, 0.0])


def test_single_point_data_gives_straight_path_and_zero_curvature():
    net = GaussianDenoiser(mu=0.3, s=0.0, resolution=4, channels=3)
    z = latents(5, (3, 4, 4))
    traj = denoised_trajectory(net, z, num_steps=18, rho=7)
    t = traj["t_steps"]
    # Heun (and Euler) are exact here: x_k = c + t_k / T (x_T - c), and every x0 estimate is c.
    expected = net.mu + (t / t[0]).reshape(1, -1, 1, 1, 1) * (traj["x"][:, :1] - net.mu)
    torch.testing.assert_close(traj["x"], expected, rtol=1e-12, atol=1e-12)
    m = trajectory_metrics(traj["x"], traj["x0"], t)
    assert m["curvature"] == pytest.approx(0.0, abs=1e-12)
    assert m["path_deviation"] == pytest.approx(0.0, abs=1e-12)
    assert max(m["path"]["x_distance_to_chord"]) < 1e-9 and m["chord_distance"] < 1e-9
    assert len(m["curve"]["sigma"]) == 18 and len(m["curvature_per_seed"]) == 5


def test_isotropic_gaussian_straight_but_x0_moves():
    s = 0.5
    net = GaussianDenoiser(mu=-0.2, s=s, resolution=4, channels=1)
    z = latents(4, (1, 4, 4), seed=10)
    traj = denoised_trajectory(net, z, num_steps=100, rho=7)  # Heun error well below the tolerance
    t = traj["t_steps"].numpy()
    m = trajectory_metrics(traj["x"], traj["x0"], traj["t_steps"])
    # The path is a ray towards mu: straight, although the denoised estimate keeps changing.
    assert m["path_deviation"] == pytest.approx(0.0, abs=1e-12)
    # Closed form of the exact flow: x0(t_k) - x(0) = (s^2 / sqrt((s^2+t^2)(s^2+T^2)) - s / sqrt(s^2+T^2)) (x_T - mu).
    T = t[0]
    radius = np.linalg.norm((traj["x"][:, 0] - net.mu).reshape(4, -1).numpy(), axis=1) / 4.0  # / sqrt(16)
    coef = np.abs(s ** 2 / np.sqrt((s ** 2 + t[:-1] ** 2) * (s ** 2 + T ** 2)) - s / np.sqrt(s ** 2 + T ** 2))
    expected_curve = coef * radius.mean()
    np.testing.assert_allclose(m["curve"]["x0_distance_to_final"], expected_curve, rtol=5e-3, atol=1e-4)
    assert m["curvature"] == pytest.approx(expected_curve.mean(), rel=5e-3)
    assert m["curvature"] > 0.1


def test_anisotropic_gaussian_is_curved_as_the_exact_flow():
    s = torch.tensor([[0.01, 0.1], [1.0, 5.0]])  # per-pixel data scale: paths bend
    net = GaussianDenoiser(mu=0.0, s=s, resolution=2, channels=1)
    z = latents(6, (1, 2, 2), seed=3)
    t_steps = edm_time_steps(64, 0.002, 80, 7)
    traj = denoised_trajectory(net, z, num_steps=64, rho=7)
    torch.testing.assert_close(traj["t_steps"], t_steps)
    x_exact, x0_exact = exact_path(net, traj["x"][:, 0], t_steps)
    torch.testing.assert_close(traj["x"], x_exact, rtol=1e-2, atol=1e-2)
    m = trajectory_metrics(traj["x"], traj["x0"], t_steps)
    e = trajectory_metrics(x_exact, x0_exact, t_steps)
    assert e["path_deviation"] > 1e-3 and max(e["path"]["x_distance_to_chord"]) > 1e-2
    assert m["path_deviation"] == pytest.approx(e["path_deviation"], rel=2e-2)
    assert m["curvature"] == pytest.approx(e["curvature"], rel=2e-2)
    np.testing.assert_allclose(m["path"]["x_distance_to_chord"], e["path"]["x_distance_to_chord"], rtol=5e-2, atol=1e-3)


def test_run_trajectories_uses_generate_latents():
    net = GaussianDenoiser(mu=0.0, s=0.5, resolution=2, channels=1)
    tr = diagnostics.run_trajectories(net, [4, 7, 9], dict(num_steps=5, rho=7), "cpu", batch=2)
    assert tr["x"].shape == (3, 6, 1, 2, 2) and tr["x0"].shape == (3, 5, 1, 2, 2)
    z = StackedRandomGenerator("cpu", [4, 7, 9]).randn([3, 1, 2, 2]).to(torch.float64) * 80
    np.testing.assert_allclose(tr["x"][:, 0], z.numpy(), rtol=1e-12)
    assert (tr["labels"] == -1).all()


# --------------------------------------------------------------------------------------------
# Command line


def _tiny_net(path, label_dim=0, resolution=8, seed=0, **meta):
    from aot.checkpoints import save_network
    from aot.networks import EDMPrecond

    torch.manual_seed(seed)
    net = EDMPrecond(img_resolution=resolution, img_channels=1, label_dim=label_dim, model_type="SongUNet",
                     model_channels=8, channel_mult=[1], channel_mult_emb=2, num_blocks=1, attn_resolutions=[],
                     dropout=0.0)
    with torch.no_grad():  # make the (zero-initialised) output layer do something
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_network(path, net, **meta)
    return path


def test_command_line(tmp_path, capsys):
    a = _tiny_net(tmp_path / "a.pt", model="edm-uncond", aot=False, cond=False, kimg=1.0, source="trained")
    b = _tiny_net(tmp_path / "b.pt", label_dim=3, seed=1, model="aot-cond", aot=True, cond=True, kimg=1.0,
                  source="trained")
    out = tmp_path / "diag" / "traj.npz"
    aot_main(["diagnostics", "--network", str(a), "--network", str(b), "--seeds", "0-2", "--steps", "4",
              "--rho", "7", "--out", str(out), "--device", "cpu"])
    assert "curvature" in capsys.readouterr().out
    with np.load(out) as z:
        arrays = {k: z[k] for k in z.files}
    info = json.loads(out.with_suffix(".json").read_text())
    assert arrays["x0_0"].shape == (3, 4, 1, 8, 8) and arrays["x0_0"].dtype == np.float32
    assert arrays["x_1"].shape == (3, 5, 1, 8, 8) and arrays["t_steps"].shape == (5,)
    assert list(arrays["names"]) == ["edm-uncond", "aot-cond"]
    np.testing.assert_array_equal(arrays["x_0"][:, 0], arrays["x_1"][:, 0])  # same latents
    assert arrays["seeds"].tolist() == [0, 1, 2]
    assert ((arrays["labels"] >= 0) & (arrays["labels"] < 3)).all()

    from aot.checkpoints import load_network
    from aot.generate import seed_inputs

    net_b, _ = load_network(b)
    _, onehot, labels, _ = seed_inputs(net_b, [0, 1, 2], "cpu")
    assert arrays["labels"].tolist() == labels.tolist()

    assert info["seeds"] == [0, 1, 2] and info["sampler"]["key"] == "heun-n4-rho7" and info["sampler"]["nfe"] == 7
    m0, m1 = info["models"]
    assert (m0["name"], m0["aot"], m0["cond"]) == ("edm-uncond", False, False)
    assert (m1["name"], m1["aot"], m1["cond"]) == ("aot-cond", True, True)
    for m, i in ((m0, 0), (m1, 1)):
        assert len(m["curve"]["sigma"]) == len(m["curve"]["x0_distance_to_final"]) == 4
        ref = trajectory_metrics(arrays[f"x_{i}"], arrays[f"x0_{i}"], arrays["t_steps"])
        assert m["curvature"] == pytest.approx(ref["curvature"], rel=1e-5)
        assert m["path_deviation"] == pytest.approx(ref["path_deviation"], rel=1e-3, abs=1e-9)


def test_command_line_rejects_bad_input(tmp_path, capsys):
    a = _tiny_net(tmp_path / "a.pt", model="a")
    c = _tiny_net(tmp_path / "c.pt", resolution=4, model="c")
    out = tmp_path / "traj.npz"
    for argv, needle in (
        (["--network", str(a), "--network", str(c)], "no shared latents"),
        (["--network", str(a), "--name", "x", "--name", "y"], "--name given 2 times"),
        (["--network", str(a), "--network", str(a)], "names repeat"),
        (["--network", str(a), "--class-labels", "2"], "no network is class-conditional"),
        (["--network", str(tmp_path / "missing.pt")], "does not exist"),
        (["--network", str(a), "--seeds", "5-1"], "ends before it starts"),
    ):
        with pytest.raises(SystemExit) as exc:
            aot_main(["diagnostics", *argv, "--out", str(out), "--steps", "3", "--device", "cpu"])
        assert exc.value.code == 2
        assert needle in capsys.readouterr().err
    assert not out.exists() and not out.with_suffix(".json").exists()
