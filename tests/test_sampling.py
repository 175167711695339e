"""EDM samplers: time steps, NFE, equality with EDM's own sampler, convergence on a Gaussian."""

from pathlib import Path

import numpy as np
import pytest
import torch

from aot.sampling import (
    StackedRandomGenerator,
    denoised_trajectory,
    edm_sampler,
    edm_time_steps,
    euler_sampler,
    get_sampler,
    nfe,
    sampler_key,
)

DATA = Path(__file__).parent / "data"


class ToyDenoiser(torch.nn.Module):
    """A smooth, slightly nonlinear denoiser with EDM's network interface (float32 output).

    tests/data/edm_sampler_golden.npz holds what NVlabs/edm's `edm_sampler` (with its
    `StackedRandomGenerator`) returned for this exact function.
    """

    def __init__(self, label_dim=0, sigma_min=0.0, sigma_max=float("inf"), s=0.5):
        super().__init__()
        self.label_dim, self.sigma_min, self.sigma_max, self.s = label_dim, sigma_min, sigma_max, s
        self.calls = 0

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def forward(self, x, sigma, class_labels=None):
        self.calls += 1
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma).to(torch.float32).reshape(-1, 1, 1, 1)
        s2 = self.s ** 2
        out = x * (s2 / (s2 + sigma ** 2)) + 0.1 * torch.tanh(x) * sigma / (1 + sigma)
        if class_labels is not None and self.label_dim:
            k = class_labels.to(torch.float32) @ torch.arange(self.label_dim, dtype=torch.float32)
            out = out + 0.05 * k.reshape(-1, 1, 1, 1)
        return out


class GaussianDenoiser(torch.nn.Module):
    """Ideal denoiser for data ~ N(0, s^2 I), in float64: D(x, sigma) = x s^2 / (s^2 + sigma^2)."""

    sigma_min, sigma_max, label_dim = 0.0, float("inf"), 0

    def __init__(self, s=0.5):
        super().__init__()
        self.s = s

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def forward(self, x, sigma, class_labels=None):
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1, 1, 1)
        return x * (self.s ** 2 / (self.s ** 2 + sigma ** 2))


def exact_path(x_T, sigma, sigma_max, s):
    """Probability-flow ODE solution for Gaussian data:
    x(sigma) = x(sigma_max) sqrt((s^2+sigma^2)/(s^2+sigma_max^2))."""
    return x_T * np.sqrt((s ** 2 + sigma ** 2) / (s ** 2 + sigma_max ** 2))


# -- time steps and NFE ---------------------------------------------------------------------


@pytest.mark.parametrize("n,smin,smax,rho",
                         [(18, 0.002, 80, 7), (2, 0.002, 80, 7), (40, 0.01, 10, 3), (7, 0.5, 1.5, 1)])
def test_time_steps_closed_form(n, smin, smax, rho):
    t = edm_time_steps(n, smin, smax, rho)
    assert t.dtype == torch.float64 and t.shape == (n + 1,)
    assert t[-1] == 0
    assert t[0].item() == pytest.approx(smax, rel=1e-12)
    assert t[-2].item() == pytest.approx(smin, rel=1e-12)
    i = np.arange(n)
    expected = (smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    np.testing.assert_allclose(t[:-1].numpy(), expected, rtol=1e-13)
    assert (t[:-1].diff() < 0).all()
    if rho == 1:  # linear spacing
        np.testing.assert_allclose(t[:-1].numpy(), np.linspace(smax, smin, n), rtol=1e-12)


def test_time_steps_clip_to_network_range_and_round():
    class Net(ToyDenoiser):
        def round_sigma(self, sigma):
            return torch.as_tensor(sigma).round(decimals=2)

    net = Net(sigma_min=0.02, sigma_max=50)
    t = edm_time_steps(10, 0.002, 80, 7, net=net)
    assert t[0] == 50 and t[-2] == 0.02 and t[-1] == 0
    np.testing.assert_array_equal(t[:-1].numpy(), np.round(t[:-1].numpy(), 2))


def test_nfe_matches_network_calls():
    net = ToyDenoiser()
    latents = torch.randn(2, 1, 2, 2)
    for n in (2, 5, 18):
        assert nfe(n) == 2 * n - 1 and nfe(n, "euler") == n
        net.calls = 0
        edm_sampler(net, latents, num_steps=n)
        assert net.calls == nfe(n, "heun")
        net.calls = 0
        euler_sampler(net, latents, num_steps=n)
        assert net.calls == nfe(n, "euler")
    with pytest.raises(ValueError):
        nfe(18, "dpm")


def test_bad_settings():
    net = ToyDenoiser()
    latents = torch.randn(1, 1, 2, 2)
    with pytest.raises(ValueError, match="num_steps"):
        edm_sampler(net, latents, num_steps=1)
    with pytest.raises(ValueError, match="sigma_max"):
        edm_sampler(net, latents, sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="rho"):
        edm_time_steps(18, rho=0)
    with pytest.raises(ValueError, match="unknown solver"):
        get_sampler("rk4")


def test_sampler_key():
    assert sampler_key("heun", 18, 7) == "heun-n18-rho7"
    assert sampler_key("euler", 35, 7.0, 0) == "euler-n35-rho7"
    assert sampler_key("heun", 18, 3.5, 40) == "heun-n18-rho3.5-churn40"


# -- equality with EDM's sampler (golden fixture) --------------------------------------------

GOLDEN_CASES = {
    "det": (dict(), dict(num_steps=18)),
    "det_n5": (dict(), dict(num_steps=5, rho=3, sigma_min=0.01, sigma_max=20)),
    "churn": (dict(), dict(num_steps=12, S_churn=40, S_min=0.05, S_max=50, S_noise=1.003)),
    "clip_cond": (dict(label_dim=4, sigma_min=0.02, sigma_max=50), dict(num_steps=10, S_churn=5)),
}


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_matches_edm_sampler_golden(case):
    golden = np.load(DATA / "edm_sampler_golden.npz")
    seeds = golden["seeds"].tolist()
    net_kw, kw = GOLDEN_CASES[case]
    net = ToyDenoiser(**net_kw)
    rnd = StackedRandomGenerator("cpu", seeds)
    latents = rnd.randn([len(seeds), 2, 4, 4], device="cpu")
    np.testing.assert_array_equal(latents.numpy(), golden[f"{case}_latents"])  # same per-seed streams
    labels = None
    if net.label_dim:
        labels = torch.eye(net.label_dim)[rnd.randint(net.label_dim, size=[len(seeds)], device="cpu")]
        np.testing.assert_array_equal(labels.numpy(), golden[f"{case}_labels"])
    out = edm_sampler(net, latents, labels, randn_like=rnd.randn_like, **kw)
    assert out.dtype == torch.float64
    # The golden images were made on another machine. NVlabs/edm's own edm_sampler and
    # StackedRandomGenerator, run beside ours on one machine, agree with ours bit for bit; across
    # machines the network's float32 arithmetic (float32 as in EDM's networks) may round an element
    # differently, and the final image is essentially the network's last float32 output. Measured:
    # 0-2 of 128 values differ, each by one float32 ulp (at most 1.5e-8, relative 1.05e-7). So the
    # images must agree to two float32 ulps (relative 2**-22), and all but a few values bit for bit.
    np.testing.assert_allclose(out.numpy(), golden[f"{case}_images"], rtol=2.0 ** -22, atol=0)
    assert (out.numpy() != golden[f"{case}_images"]).sum() <= 4


def test_trajectory_final_state_is_sampler_output():
    net = ToyDenoiser(label_dim=3)
    seeds = [3, 4, 5]
    labels = torch.eye(3)[[0, 2, 1]]
    for solver, fn in (("heun", edm_sampler), ("euler", euler_sampler)):
        for churn in (0, 30):
            rnd = StackedRandomGenerator("cpu", seeds)
            latents = rnd.randn([3, 1, 4, 4])
            ref = fn(net, latents, labels, randn_like=rnd.randn_like, num_steps=9, S_churn=churn)
            rnd = StackedRandomGenerator("cpu", seeds)
            latents = rnd.randn([3, 1, 4, 4])
            tr = denoised_trajectory(net, latents, labels, randn_like=rnd.randn_like, num_steps=9,
                                     S_churn=churn, solver=solver)
            assert tr["x"].shape == (3, 10, 1, 4, 4) and tr["x0"].shape == (3, 9, 1, 4, 4)
            assert tr["t_steps"].shape == (10,) and tr["t_hat"].shape == (9,)
            torch.testing.assert_close(tr["x"][:, -1], ref, rtol=0, atol=0)
            torch.testing.assert_close(tr["x"][:, 0], latents.double() * 80, rtol=0, atol=0)
            if churn == 0:
                torch.testing.assert_close(tr["t_hat"], tr["t_steps"][:-1], rtol=0, atol=0)
                # x0 at step i is D(x_i, t_i)
                for i in (0, 4, 8):
                    d = net(tr["x"][:, i], tr["t_steps"][i], labels).double()
                    torch.testing.assert_close(tr["x0"][:, i], d, rtol=0, atol=0)
            else:
                assert (tr["t_hat"] >= tr["t_steps"][:-1]).all() and (tr["t_hat"] > tr["t_steps"][:-1]).any()


def test_zero_churn_skips_noise_without_changing_result():
    net = ToyDenoiser()
    latents = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    calls = []

    def counting_randn_like(x):
        calls.append(1)
        return torch.randn_like(x)

    a = edm_sampler(net, latents, randn_like=counting_randn_like, num_steps=6)
    assert not calls
    # S_churn > 0 but outside [S_min, S_max] everywhere: noise is drawn (EDM consumes the stream) times 0.
    b = edm_sampler(net, latents, randn_like=counting_randn_like, num_steps=6, S_churn=10, S_min=1e6)
    assert len(calls) == 6
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# -- convergence to the exact ODE solution for Gaussian data ---------------------------------


def _max_error(solver, n, s=0.5, smax=80.0, smin=0.002):
    net = GaussianDenoiser(s)
    latents = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    tr = denoised_trajectory(net, latents, num_steps=n, sigma_min=smin, sigma_max=smax, rho=7, solver=solver)
    t = tr["t_steps"][:-1].numpy()
    x_T = tr["x"][:, 0].numpy()
    exact = np.stack([exact_path(x_T, ti, smax, s) for ti in t], axis=1)
    return np.abs(tr["x"][:, :-1].numpy() - exact).max() / np.abs(exact[:, -1]).max()


def test_heun_second_order_convergence():
    errs = [_max_error("heun", n) for n in (32, 64, 128, 256)]
    ratios = [errs[i] / errs[i + 1] for i in range(3)]
    assert errs[-1] < 3e-4
    for r in ratios[1:]:
        assert 3.3 < r < 4.7, (errs, ratios)  # halving h divides the error by ~4


def test_euler_first_order_convergence():
    errs = [_max_error("euler", n) for n in (32, 64, 128, 256)]
    ratios = [errs[i] / errs[i + 1] for i in range(3)]
    for r in ratios[1:]:
        assert 1.7 < r < 2.3, (errs, ratios)  # halving h halves the error


def test_final_sample_of_gaussian_ode():
    s, smax = 0.5, 80.0
    net = GaussianDenoiser(s)
    latents = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out = edm_sampler(net, latents, num_steps=512, sigma_max=smax)
    expected = exact_path(latents.numpy() * smax, 0.0, smax, s)
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-4)


def test_denoised_estimate_matches_closed_form():
    s = 0.5
    net = GaussianDenoiser(s)
    latents = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    tr = denoised_trajectory(net, latents, num_steps=6)
    t = tr["t_steps"][:-1].reshape(1, -1, 1, 1, 1)
    torch.testing.assert_close(tr["x0"], tr["x"][:, :-1] * s ** 2 / (s ** 2 + t ** 2), rtol=1e-14, atol=0)


# -- stacked generator ------------------------------------------------------------------------


def test_stacked_generator_is_per_seed():
    a = StackedRandomGenerator("cpu", [5, 6, 7]).randn([3, 2, 4, 4])
    b = StackedRandomGenerator("cpu", [6]).randn([1, 2, 4, 4])
    torch.testing.assert_close(a[1:2], b, rtol=0, atol=0)
    torch.testing.assert_close(a[0], torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(5)), rtol=0, atol=0)
    # seeds wrap modulo 2**32, as EDM's
    torch.testing.assert_close(StackedRandomGenerator("cpu", [2 ** 32 + 5]).randn([1, 3]),
                               StackedRandomGenerator("cpu", [5]).randn([1, 3]), rtol=0, atol=0)
    r = StackedRandomGenerator("cpu", [1, 2]).randint(10, size=[2])
    assert r.shape == (2,) and r.dtype == torch.int64
    x = torch.zeros(2, 3, dtype=torch.float64)
    y = StackedRandomGenerator("cpu", [1, 2]).randn_like(x)
    assert y.dtype == torch.float64 and y.shape == x.shape
