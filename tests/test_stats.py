"""aot.stats and `python -m aot stats`: the significance study's statistics against closed forms,
textbook values and simulations with known truth (coverage, false-positive rate, power)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from aot import stats
from aot.errors import UserError
from aot.metrics import feature_statistics, frechet_distance

pytestmark = pytest.mark.quick

REPO = Path(__file__).resolve().parents[1]


def gaussian_fd(mu_a, var_a, mu_b, var_b) -> float:
    """FD of N(mu_a, diag(var_a)) and N(mu_b, diag(var_b)): |mu_a - mu_b|^2 + sum (sqrt(va) - sqrt(vb))^2."""
    mu_a, var_a, mu_b, var_b = map(np.asarray, (mu_a, var_a, mu_b, var_b))
    return float(np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2))


def binomial_bounds(p: float, trials: int, k: float = 4.0) -> tuple[float, float]:
    """p -/+ k binomial standard deviations of a rate over `trials`."""
    sd = math.sqrt(p * (1 - p) / trials)
    return p - k * sd, p + k * sd


# ------------------------------------------------------------------------------------------------
# The Frechet distance


def test_fd_of_gaussians_closed_form():
    rng = np.random.default_rng(0)
    d = 6
    mu_a, mu_b = rng.normal(size=d), rng.normal(size=d)
    va, vb = rng.uniform(0.5, 3, d), rng.uniform(0.5, 3, d)
    want = gaussian_fd(mu_a, va, mu_b, vb)
    assert float(stats.frechet_from_moments(mu_a - mu_b, np.diag(va), np.diag(vb))) == pytest.approx(want, rel=1e-12)
    # commuting, non-diagonal: one rotation of both; tr sqrt(AB) = sum sqrt(la lb)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a, b = q @ np.diag(va) @ q.T, q @ np.diag(vb) @ q.T
    assert float(stats.frechet_from_moments(mu_a - mu_b, a, b)) == pytest.approx(want, rel=1e-10)
    # singular covariances (the eigen-decomposition route instead of Cholesky)
    a, b = np.diag([1.0, 0.0, 2.0]), np.diag([3.0, 5.0, 0.0])
    want = gaussian_fd(np.zeros(3), [1, 0, 2], np.zeros(3), [3, 5, 0])
    assert float(stats.frechet_from_moments(np.zeros(3), a, b)) == pytest.approx(want, rel=1e-12)
    # a stack of problems at once equals them one by one
    stack = stats.frechet_from_moments(np.stack([mu_a - mu_b, np.zeros(d)]), np.stack([np.eye(d), np.diag(va)]),
                                       np.stack([np.diag(vb), np.diag(vb)]))
    assert stack == pytest.approx([gaussian_fd(mu_a, np.ones(d), mu_b, vb), gaussian_fd(0, va, 0, vb)], rel=1e-12)


@pytest.mark.parametrize("n_a,n_b,d", [(400, 350, 32), (60, 80, 5), (300, 300, 1)])
def test_fd_equals_frechet_distance(n_a, n_b, d):
    """The same number as aot.metrics.frechet_distance of feature_statistics (clean-fid's)."""
    rng = np.random.default_rng(d)
    mix = rng.normal(size=(d, d))
    a = (rng.normal(size=(n_a, d)) @ mix + 0.3).astype(np.float32)
    b = rng.normal(size=(n_b, d)) @ (mix + 0.2 * rng.normal(size=(d, d)))
    got = stats.fd_interval(a, b, bootstrap=5)
    want = frechet_distance(*feature_statistics(a), *feature_statistics(b))
    assert got["fd"] == pytest.approx(want, rel=1e-6)
    assert (got["n_a"], got["n_b"], got["d"], got["bootstrap"], got["seed"]) == (n_a, n_b, d, 5, 0)


def test_fd_large_sample_approaches_population():
    rng = np.random.default_rng(1)
    d, n = 4, 20000
    mu_b, va, vb = np.array([0.5, 0, 0, 0]), np.ones(d), np.array([2.0, 1, 1, 0.5])
    a = rng.normal(size=(n, d)) * np.sqrt(va)
    b = rng.normal(size=(n, d)) * np.sqrt(vb) + mu_b
    want = gaussian_fd(np.zeros(d), va, mu_b, vb)
    got = stats.fd_interval(a, b, bootstrap=200, seed=3)
    assert got["fd"] == pytest.approx(want, abs=0.03)
    assert got["low"] <= want <= got["high"]
    assert got["high"] - got["low"] < 0.1
    assert 0 < got["bias"] < 0.01  # about (tr Sigma_a + tr Sigma_b) / n = 0.00045 plus the trace term's


def test_fd_interval_deterministic_and_paths_agree(monkeypatch):
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(90, 3)), rng.normal(size=(70, 3)) + 0.4
    one = stats.fd_interval(a, b, bootstrap=150, seed=7)
    assert stats.fd_interval(a, b, bootstrap=150, seed=7) == one
    other = stats.fd_interval(a, b, bootstrap=150, seed=8)
    assert other["fd"] == one["fd"] and (other["low"], other["high"]) != (one["low"], one["high"])
    monkeypatch.setattr(stats, "_BATCH_VALUES", 0)  # one replicate at a time, weighted row blocks
    monkeypatch.setattr(stats, "_ROW_BLOCK", 16)
    looped = stats.fd_interval(a, b, bootstrap=150, seed=7)  # float32 products: agree to about 1e-7
    assert looped["fd"] == one["fd"] and looped["fd_resampled_population"] == one["fd_resampled_population"]
    for key in ("low", "high", "bias", "se", "fd_corrected"):
        assert looped[key] == pytest.approx(one[key], rel=1e-5, abs=1e-6), key
    assert one["method"] == stats.FD_METHOD and one["level"] == 0.95


def _coverage(draws: int, d: int, n: int, delta2: float, var_b: float, bootstrap: int, level: float):
    """Over `draws` independent experiments: how often the interval covers the population FD, and
    how often two uncorrected intervals from the same replicates would: the percentile interval
    [q_lo, q_hi] and the basic interval centred on the plug-in (bias not removed)."""
    mu_a = np.zeros(d)
    mu_a[0] = math.sqrt(delta2)
    var_a, var_b = np.ones(d), np.full(d, var_b)
    truth = gaussian_fd(mu_a, var_a, np.zeros(d), var_b)
    covered = percentile = centred = 0
    lows, biases, excess = [], [], []
    for s in range(draws):
        rng = np.random.default_rng(10_000 + s)
        a = rng.normal(size=(n, d)) * np.sqrt(var_a) + mu_a
        b = rng.normal(size=(n, d)) * np.sqrt(var_b)
        r = stats.fd_interval(a, b, bootstrap=bootstrap, seed=s, level=level)
        assert 0 <= r["low"] <= r["high"]
        covered += r["low"] <= truth <= r["high"]
        t = r["fd_resampled_population"]
        q_lo, q_hi = r["fd"] + t - r["high"], r["fd"] + t - r["low"]  # the replicates' quantiles
        mean = t + r["bias"]  # the replicates' mean
        percentile += q_lo <= truth <= q_hi
        centred += r["fd"] - (q_hi - mean) <= truth <= r["fd"] - (q_lo - mean)
        lows.append(r["low"])
        biases.append(r["bias"])
        excess.append(r["fd"] - truth)
    return covered / draws, percentile / draws, centred / draws, np.mean(biases), np.mean(excess)


def test_fd_interval_coverage():
    """d = 8, n = 100 per set (d / n = 0.08, about what 2048 Inception features have at n = 25,600):
    the plug-in is biased by about 0.8 (population FD 1.87, bootstrap SE about 0.4). Over 400
    experiments the interval covers the population FD at about its 95 % (measured: 0.96); the
    binomial bounds (4 sd: 0.906-0.994) exclude the rates of the uncorrected intervals built from the
    same replicates (measured: percentile 0.03, centred on the plug-in 0.75)."""
    draws = 400
    cover, percentile, centred, bias, excess = _coverage(draws, d=8, n=100, delta2=0.5, var_b=2.0,
                                                         bootstrap=500, level=0.95)
    lo, hi = binomial_bounds(0.95, draws)
    assert lo <= cover <= hi, cover
    assert percentile < 0.2, percentile  # centred on plug-in + bias: the bias twice
    assert centred < 0.85, centred  # centred on the plug-in: the bias once
    assert excess > 0.6 and bias == pytest.approx(excess, rel=0.2)  # the bootstrap sees the bias


def test_fd_interval_coverage_other_level():
    draws = 300
    cover, *_ = _coverage(draws, d=4, n=100, delta2=0.5, var_b=2.0, bootstrap=300, level=0.8)
    lo, hi = binomial_bounds(0.8, draws)
    assert lo <= cover <= hi, cover


def test_fd_interval_low_end_clipped_at_zero():
    rng = np.random.default_rng(4)
    lows = [stats.fd_interval(rng.normal(size=(20, 3)), rng.normal(size=(20, 3)), bootstrap=100, seed=s)["low"]
            for s in range(10)]
    assert min(lows) == 0.0 and all(v >= 0 for v in lows)


# ------------------------------------------------------------------------------------------------
# Replicates


def test_replicate_summary_by_hand():
    values = [1.97, 2.01, 1.95, 2.03]
    got = stats.replicate_summary(values, level=0.9)
    mean = sum(values) / 4
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)
    half = sps.t.ppf(0.95, 3) * sd / 2
    assert got["n"] == 4 and got["mean"] == pytest.approx(mean) and got["sd"] == pytest.approx(sd)
    assert got["low"] == pytest.approx(mean - half) and got["high"] == pytest.approx(mean + half)
    assert got["min"] == 1.95 and got["max"] == 2.03 and got["level"] == 0.9
    one = stats.replicate_summary([1.9])
    assert one["n"] == 1 and one["mean"] == one["min"] == 1.9
    assert one["sd"] is None and one["low"] is None and one["high"] is None


def test_paired_difference_matches_scipy():
    edm, aot = [2.01, 1.97, 2.05, 1.99, 2.02], [1.93, 1.95, 1.96, 1.97, 1.90]
    got = stats.paired_difference(edm, aot, level=0.95)
    ref = sps.ttest_rel(aot, edm)
    ci = ref.confidence_interval(0.95)
    assert got["p"] == pytest.approx(ref.pvalue, rel=1e-10) and got["t"] == pytest.approx(ref.statistic)
    assert (got["low"], got["high"]) == pytest.approx((ci.low, ci.high))
    assert got["mean"] == pytest.approx(np.mean(np.subtract(aot, edm))) and got["n"] == 5 and got["df"] == 4
    assert got["significant"] is bool(ref.pvalue < 0.05) and got["test"] == stats.PAIRED_TEST
    one = stats.paired_difference([2.0], [1.9])
    assert one["n"] == 1 and one["p"] is None and one["low"] is None and one["sd"] is None
    flat = stats.paired_difference([2.0, 2.1], [1.9, 2.0])  # equal differences: nothing to test against
    assert flat["p"] is None and flat["low"] == pytest.approx(flat["high"])


@pytest.mark.parametrize("k", [3, 5])
def test_paired_difference_false_positive_rate(k):
    """Both arms from one distribution, with a shared per-replicate component (the training seed's
    effect, 20 times the arms' own noise): p < 0.05 in about 5 % of 4000 experiments."""
    rng = np.random.default_rng(k)
    trials = 4000
    shared = rng.normal(2.0, 1.0, size=(trials, k))
    edm = shared + rng.normal(0, 0.05, size=(trials, k))
    aot = shared + rng.normal(0, 0.05, size=(trials, k))
    rejections = sum(stats.paired_difference(e, a)["p"] < 0.05 for e, a in zip(edm, aot))
    lo, hi = binomial_bounds(0.05, trials)
    assert lo <= rejections / trials <= hi, rejections / trials


def test_replicates_for_power_textbook():
    """Matched pairs, alpha 0.05 two-sided, power 0.8 (G*Power's values): dz 0.5 -> 34, 0.8 -> 15, 1 -> 10."""
    assert stats.replicates_for_power(0.5, 1.0) == 34
    assert stats.replicates_for_power(0.08, 0.1) == 15
    assert stats.replicates_for_power(-1.0, 1.0) == 10
    assert stats.replicates_for_power(1.0, 0.0) is None
    assert stats.replicates_for_power(1.0, None) is None
    assert stats.replicates_for_power(1.0, float("nan")) is None
    assert stats.replicates_for_power(0.0, 1.0) is None
    assert stats.replicates_for_power(0.01, 1.0, max_n=1000) is None  # about 78,500 pairs


def test_replicates_for_power_simulation():
    """At the returned n a simulated paired t-test rejects in >= 80 % of experiments, at n - 1 in fewer."""
    effect, sd = 0.09, 0.045  # power 0.91 at n = 5, 0.75 at n = 4
    n = stats.replicates_for_power(effect, sd)
    assert n == 5
    rng = np.random.default_rng(5)
    trials = 20000
    for m, above in ((n, True), (n - 1, False)):
        diffs = rng.normal(-effect, sd, size=(trials, m))
        t = diffs.mean(1) / (diffs.std(1, ddof=1) / math.sqrt(m))
        rate = float(np.mean(2 * sps.t.sf(np.abs(t), m - 1) < 0.05))
        exact = stats.paired_t_power(m, effect, sd)
        tolerance = 4 * math.sqrt(exact * (1 - exact) / trials)
        assert abs(rate - exact) < tolerance, (m, rate, exact)
        assert (exact >= 0.8) is above, (m, exact)
        assert rate >= 0.8 - tolerance if above else rate < 0.8, (m, rate)


def test_compare_arms():
    edm, aot = [1.97, 1.99, 2.02], [1.88, 1.95, 1.93]
    got = stats.compare_arms(edm, aot, claimed_gain=0.09)
    diff = stats.paired_difference(edm, aot)
    assert got["difference"] == diff and got["edm"] == stats.replicate_summary(edm)
    assert got["aot"] == stats.replicate_summary(aot)
    need = stats.replicates_for_power(0.09, diff["sd"])
    assert got["replicates_needed"] == need
    assert got["power_note"].startswith(f"n={need} replicates for 80 % power at the paper's gain 0.09")
    assert got["text"].startswith("AOT - EDM = -0.0733 [") and "paired t, n=3" in got["text"]
    assert stats.compare_arms(edm, aot)["power_note"] == "no claimed gain: no power figure"
    assert "at least 2 replicates" in stats.compare_arms([2.0], [1.9], claimed_gain=0.09)["power_note"]
    assert stats.compare_arms(edm, aot, 1e-4)["power_note"].startswith("more than 1000 replicates")


# ------------------------------------------------------------------------------------------------
# Input checks: one UserError line each

_X = np.zeros((5, 3))


@pytest.mark.parametrize("call, words", [
    (lambda: stats.fd_interval(_X, np.zeros((5, 4))), "different dimensions"),
    (lambda: stats.fd_interval(_X, np.zeros(5)), "(n, d) array"),
    (lambda: stats.fd_interval(_X, np.zeros((1, 3))), "at least 2 rows"),
    (lambda: stats.fd_interval(_X, np.array([[0, 1, np.nan]] * 3)), "row 0 holds a NaN"),
    (lambda: stats.fd_interval(_X, np.array([["a", "b"]] * 3)), "real numbers"),
    (lambda: stats.fd_interval(_X, np.full((5, 3), 1e200)), "beyond 1e+50 in magnitude"),
    (lambda: stats.fd_interval(_X, _X, bootstrap=0), "bootstrap must be at least 1"),
    (lambda: stats.fd_interval(_X, _X, bootstrap=2.5), "bootstrap must be a whole number"),
    (lambda: stats.fd_interval(_X, _X, seed=-1), "seed must be at least 0"),
    (lambda: stats.fd_interval(_X, _X, level=1.5), "level must lie strictly between 0 and 1"),
    (lambda: stats.replicate_summary([]), "no values"),
    (lambda: stats.replicate_summary([1.0, float("inf")]), "values[1] is inf"),
    (lambda: stats.replicate_summary([[1.0, 2.0]]), "flat sequence"),
    (lambda: stats.paired_difference([1.0, 2.0], [1.0]), "one value per replicate"),
    (lambda: stats.paired_difference([1.0, float("nan")], [1.0, 2.0]), "edm[1] is nan"),
    (lambda: stats.paired_difference([1.0], [1.0], level=0), "level must lie strictly"),
    (lambda: stats.replicates_for_power(float("inf"), 1.0), "effect must be a finite number"),
    (lambda: stats.replicates_for_power(1.0, -1.0), "sd must be a finite number >= 0"),
    (lambda: stats.replicates_for_power(1.0, 1.0, power=1.0), "power must lie strictly"),
    (lambda: stats.replicates_for_power(1.0, 1.0, max_n=1), "max_n must be at least 2"),
    (lambda: stats.compare_arms([1.0], [1.0], claimed_gain=float("nan")), "claimed_gain must be a finite"),
])
def test_input_checks(call, words):
    with pytest.raises(UserError) as exc:
        call()
    assert words in str(exc.value) and "\n" not in str(exc.value)


# ------------------------------------------------------------------------------------------------
# The command line


def aot_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m aot ARGS` in a fresh interpreter (this command imports numpy and scipy only, so a
    cold start is quick; tests/warm.py's warm process would pay torch's import first)."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    return subprocess.run([sys.executable, "-m", "aot", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert proc.stdout == ""
    return lines[0]


def test_cli_fd_interval(tmp_path):
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(120, 4)).astype(np.float32), rng.normal(size=(100, 4)) + 0.5
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    proc = aot_cli("stats", "fd-interval", "--features", "a.npy", "b.npy", "--bootstrap", "50", "--seed", "3",
                   "--level", "0.9", "--out", "fd.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    want = stats.fd_interval(a, b, bootstrap=50, seed=3, level=0.9)
    assert {k: got[k] for k in want} == want
    assert got["features_a"] == "a.npy" and got["features_b"] == "b.npy"
    assert json.loads((tmp_path / "fd.json").read_text()) == got


def test_cli_fd_interval_bad_input(tmp_path):
    rng = np.random.default_rng(7)
    np.save(tmp_path / "a.npy", rng.normal(size=(10, 3)))
    np.save(tmp_path / "d4.npy", rng.normal(size=(10, 4)))
    np.save(tmp_path / "pickle.npy", np.array([[{"x": 1}, 2, 3]] * 3, dtype=object), allow_pickle=True)
    nan = rng.normal(size=(10, 3))
    nan[4, 1] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "int.npy", np.ones((10, 3), np.int64))
    np.save(tmp_path / "flat.npy", np.ones(10))
    np.save(tmp_path / "one.npy", np.ones((1, 3)))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "a.npy").read_bytes()[:150])
    (tmp_path / "text.npy").write_text("not an array\n")
    cases = {
        ("d4.npy",): "3 dimensions but d4.npy have 4",
        ("pickle.npy",): "holds Python objects",
        ("nan.npy",): "row 4 holds a NaN or infinity",
        ("int.npy",): "features must be floating point",
        ("flat.npy",): "(n, d) array",
        ("one.npy",): "at least 2 feature vectors",
        ("cut.npy",): "more than the file holds",
        ("text.npy",): "cannot be read as .npy",
        ("missing.npy",): "does not exist",
        ("a.npy", "--level", "1.5"): "--level must lie strictly between 0 and 1",
        ("a.npy", "--bootstrap", "0"): "--bootstrap must be positive",
        ("a.npy", "--bootstrap", "-3"): "--bootstrap must be positive",
    }
    for (second, *more), words in cases.items():
        proc = aot_cli("stats", "fd-interval", "--features", "a.npy", second, *more, cwd=tmp_path)
        assert words in one_error_line(proc), (second, proc.stderr)


def test_cli_imports_no_torch(tmp_path):
    rng = np.random.default_rng(8)
    np.save(tmp_path / "a.npy", rng.normal(size=(10, 2)))
    code = ("import sys\nfrom aot.cli import main\n"
            "main(['stats', 'fd-interval', '--features', 'a.npy', 'a.npy', '--bootstrap', '3'])\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO / "src")))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["fd"] == 0.0
