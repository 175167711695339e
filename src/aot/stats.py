"""Statistics of the significance study: is EDM-AOT's FID gain larger than a second training run's?

The paper, like EDM and DG, measures one trained network per method (once; EDM's protocol, which
the pipeline's tables follow, takes the minimum of three measurements). The study trains K
independently seeded replicates per model instead; replicate r of EDM and of EDM-AOT share the
training seed, and every replicate is sampled with the same sampling seeds (a paired design). Per
sampler setting each replicate gives one FID per arm. This module turns those numbers into
statistics (docs/significance.md explains them for a reader who knows FID):

* :func:`fd_interval`: the Frechet distance between two feature sets with a bootstrap confidence
  interval for the population distance, corrected for the estimator's finite-sample bias;
* :func:`replicate_summary`: mean, sd and t-interval of one arm's replicate FIDs;
* :func:`paired_difference`: the paired t-test of the differences aot - edm;
* :func:`replicates_for_power`: how many replicate pairs a paired t-test needs to detect a gain;
* :func:`compare_arms`: all of the above for one row of the report.

numpy and scipy only (no torch). Bad input is a one-line :class:`aot.errors.UserError`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError
from .limits import ARRAY_BYTES, check_size

FD_METHOD = "basic bootstrap interval (bias-corrected), feature rows resampled with replacement"
PAIRED_TEST = "paired t-test (two-sided) on the replicate differences aot - edm"

# Index draws per bootstrap chunk: the random stream depends on the seed, n_a, n_b and the number of
# replicates only, not on which of the two computing paths below runs.
_DRAW_CHUNK = 64
# The batched path (all replicates of a chunk in a few matrix products) while a set's outer
# products x x^T hold at most this many values; above it, one replicate at a time.
_BATCH_VALUES = 1 << 22
# Rows per block of the weighted second moment of the one-replicate path (bounds its memory).
_ROW_BLOCK = 8192
# Feature values beyond this magnitude are refused: products of their covariances would overflow.
_MAX_MAGNITUDE = 1e50


# --------------------------------------------------------------------------------------------
# Input checks


def _level(level: Any, name: str = "level") -> float:
    try:
        v = float(level)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number between 0 and 1, got {level!r}") from None
    if isinstance(level, bool) or not 0.0 < v < 1.0:
        raise UserError(f"{name} must lie strictly between 0 and 1, got {level!r}")
    return v


def _whole(value: Any, name: str, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise UserError(f"{name} must be a whole number, got {value!r}")
    if value < lo:
        raise UserError(f"{name} must be at least {lo}, got {value}")
    return int(value)


def _values(values: Any, name: str) -> np.ndarray:
    """A 1-D float64 array of finite numbers, at least one."""
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a sequence of numbers") from None
    if arr.dtype.kind not in "fiu" or arr.ndim != 1:
        raise UserError(f"{name} must be a flat sequence of real numbers, got {arr.dtype} of shape {arr.shape}")
    if arr.size == 0:
        raise UserError(f"{name} holds no values")
    arr = arr.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise UserError(f"{name}[{int(bad[0])}] is {arr[bad[0]]}, not a finite number")
    return arr


def _features(x: Any, name: str) -> np.ndarray:
    """Features as an (n, d) array of finite real numbers with n >= 2 (not copied)."""
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be an (n, d) array of numbers") from None
    if arr.dtype.kind not in "fiu":
        raise UserError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise UserError(f"{name} must be an (n, d) array, got shape {arr.shape}")
    if arr.shape[0] < 2 or arr.shape[1] < 1:
        raise UserError(f"{name} needs at least 2 rows (feature vectors) of at least 1 value, got shape {arr.shape}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        row = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
        raise UserError(f"{name} row {row} holds a NaN or infinity")
    if arr.size and float(np.abs(arr).max()) > _MAX_MAGNITUDE:
        raise UserError(f"{name} holds values beyond {_MAX_MAGNITUDE:g} in magnitude (their covariance products "
                        "would overflow)")
    return arr


def load_features(path: str | os.PathLike, what: str = "features") -> np.ndarray:
    """A float (n, d) array from an .npy file read from outside: checked from its header before it is
    read (no pickles, a float dtype, two dimensions, n >= 2, at most $AOT_MAX_ARRAY_BYTES bytes, a
    file long enough to hold it), then for NaN and infinity. A one-line UserError naming the file."""
    from .files import one_line_text

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version not in readers:
                raise UserError(f"{what} {path} has .npy format version {version}, not 1.0 or 2.0")
            shape, fortran, dtype = readers[version](f)
            offset = f.tell()
            if dtype.hasobject:
                raise UserError(f"{what} {path} holds Python objects (not read)")
            if dtype.kind != "f":
                raise UserError(f"{what} {path} holds {dtype} values; features must be floating point")
            if len(shape) != 2:
                raise UserError(f"{what} {path} has shape {list(shape)}; features must be an (n, d) array")
            if shape[0] < 2 or shape[1] < 1:
                raise UserError(f"{what} {path} has shape {list(shape)}; at least 2 feature vectors are needed")
            nbytes = math.prod(shape) * dtype.itemsize
            check_size(nbytes, ARRAY_BYTES, f"{what} {path} ({dtype} {list(shape)}) holds")
            size = os.fstat(f.fileno()).st_size
            if offset + nbytes > size:
                raise UserError(f"{what} {path} declares {dtype} {list(shape)} ({nbytes} bytes), more than "
                                f"the file holds ({size - offset})")
            f.seek(0)
            arr = np.lib.format.read_array(f, allow_pickle=False)
    except UserError:
        raise
    except Exception as exc:  # ValueError, OSError, EOFError: not an .npy file
        raise UserError(f"{what} {path} cannot be read as .npy: "
                        f"{one_line_text(str(exc)) or type(exc).__name__}") from None
    if not np.isfinite(arr).all():
        row = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
        raise UserError(f"{what} {path}: row {row} holds a NaN or infinity")
    return arr


# --------------------------------------------------------------------------------------------
# The Frechet distance


def _trace_sqrt_product(cov_a: np.ndarray, cov_b: np.ndarray) -> np.ndarray:
    """tr sqrt(cov_a cov_b) of positive semi-definite matrices (stacks broadcast over leading axes).

    The eigenvalues of cov_a cov_b are those of F^T cov_b F for any factor cov_a = F F^T: a
    Cholesky factor where cov_a is positive definite, else V diag(sqrt(w)) from its symmetric
    eigen-decomposition. One symmetric eigenvalue problem instead of a general matrix square root.
    """
    try:
        factor = np.linalg.cholesky(cov_a)
    except np.linalg.LinAlgError:
        w, v = np.linalg.eigh(cov_a)
        factor = v * np.sqrt(np.clip(w, 0.0, None))[..., None, :]
    m = np.swapaxes(factor, -1, -2) @ cov_b @ factor
    m = 0.5 * (m + np.swapaxes(m, -1, -2))
    return np.sqrt(np.clip(np.linalg.eigvalsh(m), 0.0, None)).sum(axis=-1)


def frechet_from_moments(mean_diff: np.ndarray, cov_a: np.ndarray, cov_b: np.ndarray) -> np.ndarray:
    """|mean_diff|^2 + tr(cov_a + cov_b - 2 sqrt(cov_a cov_b)), over leading batch axes.

    The same distance as :func:`aot.metrics.frechet_distance` of (mu_a, cov_a, mu_b, cov_b) with
    mean_diff = mu_a - mu_b, computed through one symmetric eigenvalue problem.
    """
    mean_term = np.einsum("...i,...i->...", mean_diff, mean_diff)
    traces = np.trace(cov_a, axis1=-2, axis2=-1) + np.trace(cov_b, axis1=-2, axis2=-1)
    return mean_term + traces - 2.0 * _trace_sqrt_product(cov_a, cov_b)


class _Set:
    """One feature set: its mean and unbiased covariance (float64), and what the bootstrap needs of
    its rows. The batched path (small n d^2) keeps the centred rows and their outer products x x^T
    in float64 and gets a chunk of replicates' moments from two matrix products. The one-replicate
    path (large n d^2, such as 50,000 Inception features) keeps the centred rows in float32 and
    sums each replicate's weighted moments in float32 blocks of _ROW_BLOCK rows, accumulated in
    float64: half the time of float64 products, and an error in a replicate's distance (about 2e-7
    at d = 512, n = 20,000) far below the replicates' spread."""

    def __init__(self, features: np.ndarray, batched: bool):
        self.n, self.d = features.shape
        self.mean = np.mean(features, axis=0, dtype=np.float64)
        centred = np.asarray(features, dtype=np.float64) - self.mean
        self.cov = centred.T @ centred / (self.n - 1)
        self.centred = self.outer = self.rows32 = None
        if batched:
            self.centred = centred
            self.outer = np.einsum("ni,nj->nij", centred, centred).reshape(self.n, self.d * self.d)
        else:
            self.rows32 = centred.astype(np.float32)

    def counts(self, rng: np.random.Generator, chunk: int) -> np.ndarray:
        """How often each row is drawn, (chunk, n), for `chunk` resamples of n rows with replacement."""
        idx = rng.integers(0, self.n, size=(chunk, self.n))
        idx += (np.arange(chunk) * self.n)[:, None]
        return np.bincount(idx.ravel(), minlength=chunk * self.n).reshape(chunk, self.n).astype(np.float64)

    def moments(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Means (offset from the full sample's) and unbiased covariances of resamples: `counts` of
        shape (chunk, n) gives a stack of them (batched path), of shape (n,) one."""
        n, d = self.n, self.d
        if self.outer is not None:
            shift = counts @ self.centred / n
            second = (counts @ self.outer).reshape(*counts.shape[:-1], d, d)
        else:
            rows = np.flatnonzero(counts)
            weights = counts[rows].astype(np.float32)
            roots = np.sqrt(weights)
            shift, second = np.zeros(d), np.zeros((d, d))
            for start in range(0, rows.size, _ROW_BLOCK):
                block = slice(start, start + _ROW_BLOCK)
                x = self.rows32[rows[block]]
                shift += weights[block] @ x
                y = x * roots[block, None]
                second += y.T @ y
            shift /= n
        cov = (second - n * shift[..., :, None] * shift[..., None, :]) / (n - 1)
        return shift, cov


def fd_interval(features_a: Any, features_b: Any, *, bootstrap: int = 1000, seed: int = 0,
                level: float = 0.95) -> dict:
    """The Frechet distance between two feature sets, with a bootstrap confidence interval.

    `features_a`, `features_b`: (n_a, d) and (n_b, d) arrays of finite real numbers, n >= 2 each.
    `fd` is the plug-in distance of clean-fid (means and unbiased covariances, the value
    :func:`aot.metrics.frechet_distance` gives on `feature_statistics` of the two sets).

    The interval [`low`, `high`] is for the *population* distance: the Frechet distance between the
    Gaussians with the means and covariances of the two feature distributions the sets were drawn
    from, which the plug-in estimates with an upward bias at finite n (the mean term gains about
    tr(Sigma_a)/n_a + tr(Sigma_b)/n_b, and tr sqrt(S_a S_b) is biased low, so -2 times it adds more).
    It is the basic (pivotal) bootstrap interval: each of `bootstrap` replicates resamples the rows
    of each set independently with replacement (multinomial counts, weighted moments); in the
    bootstrap world the sets are the populations, whose distance `fd_resampled_population` uses the
    covariances with divisor n. The spread of the replicates around that value estimates the
    spread of the plug-in around the population distance, bias included, so the interval is
    [fd - (q_hi - t), fd - (q_lo - t)] with q the replicates' quantiles and t that value: the
    bootstrap's estimate of the bias, `bias` = mean(replicates) - t, is subtracted from both ends.
    A plain percentile interval [q_lo, q_hi] would instead add the bias twice. Both ends are clipped
    at 0 (a distance is not negative); `fd_corrected` = max(fd - bias, 0) is the bias-corrected
    point estimate and `se` the replicates' standard deviation.

    Deterministic for a given `seed` (and inputs). Cost per replicate: two weighted covariances
    (about n d^2 each; in float32 blocks accumulated in float64 for large n d^2, see _Set) and a
    d x d symmetric eigenvalue problem; `fd` and `fd_resampled_population` are float64 throughout.
    """
    bootstrap = _whole(bootstrap, "bootstrap", 1)
    seed = _whole(seed, "seed", 0)
    level = _level(level)
    a = _features(features_a, "features_a")
    b = _features(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise UserError(f"the feature sets have different dimensions: {a.shape[1]} (features_a) and "
                        f"{b.shape[1]} (features_b)")
    d = a.shape[1]
    batched = max(a.shape[0], b.shape[0]) * d * d <= _BATCH_VALUES
    sa, sb = _Set(a, batched), _Set(b, batched)
    diff = sa.mean - sb.mean
    fd = float(frechet_from_moments(diff, sa.cov, sb.cov))
    scale_a, scale_b = (sa.n - 1) / sa.n, (sb.n - 1) / sb.n
    fd_pop = float(frechet_from_moments(diff, sa.cov * scale_a, sb.cov * scale_b))

    rng = np.random.default_rng(seed)
    reps = np.empty(bootstrap)
    for start in range(0, bootstrap, _DRAW_CHUNK):
        chunk = min(_DRAW_CHUNK, bootstrap - start)
        counts_a, counts_b = sa.counts(rng, chunk), sb.counts(rng, chunk)
        if batched:
            pairs = [(counts_a, counts_b, slice(start, start + chunk))]
        else:  # one replicate at a time: a stack of d x d matrices per chunk would not fit at d = 2048
            pairs = [(ca, cb, start + r) for r, (ca, cb) in enumerate(zip(counts_a, counts_b))]
        for ca, cb, where in pairs:
            shift_a, cov_a = sa.moments(ca)
            shift_b, cov_b = sb.moments(cb)
            reps[where] = frechet_from_moments(diff + shift_a - shift_b, cov_a, cov_b)

    alpha = 1.0 - level
    q_lo, q_hi = np.quantile(reps, [alpha / 2, 1.0 - alpha / 2])
    bias = float(reps.mean() - fd_pop)
    return {
        "fd": fd,
        "low": max(0.0, float(fd - (q_hi - fd_pop))),
        "high": max(0.0, float(fd - (q_lo - fd_pop))),
        "level": level,
        "fd_corrected": max(0.0, fd - bias),
        "bias": bias,
        "se": float(reps.std(ddof=1)) if bootstrap > 1 else None,
        "fd_resampled_population": fd_pop,
        "method": FD_METHOD,
        "bootstrap": bootstrap,
        "seed": seed,
        "n_a": sa.n,
        "n_b": sb.n,
        "d": d,
    }


# --------------------------------------------------------------------------------------------
# Replicates


def replicate_summary(values: Sequence[float], level: float = 0.95) -> dict:
    """One arm's replicate FIDs: `n`, `mean`, `sd` (ddof=1), `se`, `min`, `max`, and the t-interval
    of the mean, `low` and `high` (mean -/+ t_{(1+level)/2, n-1} sd / sqrt(n)), at `level`.
    `sd`, `se`, `low` and `high` are None for a single replicate."""
    from scipy import stats

    level = _level(level)
    x = _values(values, "values")
    n = int(x.size)
    out = {"n": n, "mean": float(x.mean()), "sd": None, "se": None, "low": None, "high": None,
           "min": float(x.min()), "max": float(x.max()), "level": level}
    if n >= 2:
        sd = float(x.std(ddof=1))
        se = sd / math.sqrt(n)
        half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * se
        out.update(sd=sd, se=se, low=out["mean"] - half, high=out["mean"] + half)
    return out


def paired_difference(edm: Sequence[float], aot: Sequence[float], level: float = 0.95) -> dict:
    """The paired t-test of aot - edm, one difference per replicate (the two lists in replicate order).

    A paired test, because replicate r of both arms shares its training and sampling seeds: what
    the seeds do to both FIDs alike cancels in the difference. A t-test, because with a handful of
    replicates it is the test that still has resolution (a sign-flip permutation test of K pairs
    cannot give a two-sided p below 2 / 2^K: 0.25 at K = 3); it assumes the differences are
    independent draws from a normal distribution (with K this small, not something the data can
    check) and tests whether their mean is 0.

    Returns `n`, `differences`, `mean` (negative: AOT's FID is lower), `sd`, `se`, `low`/`high` (the
    t-interval of the mean difference at `level`), `t`, `df`, `p` (two-sided), `significant` (p <
    1 - level), `level` and `test`. With one replicate `sd` and all that needs it are None; when all
    differences are equal there is no spread to test against: `p`, `t` and `significant` are None and
    the interval is the single value.
    """
    from scipy import stats

    level = _level(level)
    e = _values(edm, "edm")
    a = _values(aot, "aot")
    if e.size != a.size:
        raise UserError(f"edm and aot must hold one value per replicate each, got {e.size} and {a.size}")
    diff = a - e
    n = int(diff.size)
    mean = float(diff.mean())
    out = {"n": n, "differences": [float(v) for v in diff], "mean": mean, "sd": None, "se": None,
           "low": None, "high": None, "t": None, "df": None, "p": None, "significant": None,
           "level": level, "test": PAIRED_TEST}
    if n < 2:
        return out
    sd = float(diff.std(ddof=1))
    se = sd / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * se
    out.update(sd=sd, se=se, low=mean - half, high=mean + half, df=n - 1)
    if se > 0:
        t = mean / se
        p = float(2.0 * stats.t.sf(abs(t), n - 1))
        out.update(t=float(t), p=p, significant=p < 1.0 - level)
    return out


def paired_t_power(n: int, effect: float, sd: float, level: float = 0.95) -> float:
    """Power of the two-sided paired t-test of n pairs at `level` when the differences are normal
    with mean `effect` and standard deviation `sd`: P(|T| > t_crit) for T noncentral t with n - 1
    degrees of freedom and noncentrality effect / sd * sqrt(n)."""
    n = _whole(n, "n", 2)
    return float(_power(np.array([n]), float(effect), float(sd), _level(level))[0])


def _power(ns: np.ndarray, effect: float, sd: float, level: float) -> np.ndarray:
    from scipy import stats

    df = ns - 1
    crit = stats.t.ppf(0.5 + level / 2, df)
    nc = abs(effect) / sd * np.sqrt(ns)
    return stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc)


def replicates_for_power(effect: float, sd: float | None, level: float = 0.95, power: float = 0.8,
                         max_n: int = 1000) -> int | None:
    """The number of replicate pairs n (>= 2) a two-sided paired t-test at `level` needs to reject
    with probability at least `power` when the mean difference is `effect` and the differences'
    standard deviation is `sd`: exact, from the noncentral t distribution (:func:`paired_t_power`).
    None when `sd` is None, NaN or 0 (no spread known), when `effect` is 0, or when more than
    `max_n` pairs would be needed."""
    level = _level(level)
    power = _level(power, "power")
    max_n = _whole(max_n, "max_n", 2)
    try:
        effect = float(effect)
    except (TypeError, ValueError):
        raise UserError(f"effect must be a number, got {effect!r}") from None
    if not math.isfinite(effect):
        raise UserError(f"effect must be a finite number, got {effect!r}")
    if sd is None:
        return None
    try:
        sd = float(sd)
    except (TypeError, ValueError):
        raise UserError(f"sd must be a number, got {sd!r}") from None
    if math.isnan(sd) or sd == 0 or effect == 0:
        return None
    if sd < 0 or not math.isfinite(sd):
        raise UserError(f"sd must be a finite number >= 0, got {sd!r}")
    ns = np.arange(2, max_n + 1)
    reached = np.flatnonzero(_power(ns, effect, sd, level) >= power)
    return int(ns[reached[0]]) if reached.size else None


def compare_arms(edm_values: Sequence[float], aot_values: Sequence[float], claimed_gain: float | None = None,
                 level: float = 0.95, power: float = 0.8, max_n: int = 1000) -> dict:
    """Everything a "Significance" row of the report needs, for one sampler setting.

    `edm_values`, `aot_values`: one FID per replicate (the mean of its repeated measurements), in
    replicate order. `claimed_gain`: the FID gain the paper reports (EDM minus EDM-AOT, e.g. 0.09),
    or None. Returns `edm` and `aot` (:func:`replicate_summary`), `difference`
    (:func:`paired_difference`), `claimed_gain`, `power`, `replicates_needed`
    (:func:`replicates_for_power` of the claimed gain with the observed sd of the differences),
    `power_note` (one line on that) and `text` (one line on the difference).
    """
    level = _level(level)
    power = _level(power, "power")
    if claimed_gain is not None:
        try:
            claimed_gain = float(claimed_gain)
        except (TypeError, ValueError):
            raise UserError(f"claimed_gain must be a number, got {claimed_gain!r}") from None
        if not math.isfinite(claimed_gain):
            raise UserError(f"claimed_gain must be a finite number, got {claimed_gain!r}")
    diff = paired_difference(edm_values, aot_values, level)
    out = {"edm": replicate_summary(edm_values, level), "aot": replicate_summary(aot_values, level),
           "difference": diff, "claimed_gain": claimed_gain, "power": power, "replicates_needed": None,
           "level": level}
    pct = f"{power * 100:g} %"
    if claimed_gain is None:
        note = "no claimed gain: no power figure"
    elif diff["sd"] is None:
        note = f"replicates for {pct} power need the sd of the differences: at least 2 replicates"
    elif diff["sd"] == 0:
        note = "the differences have no spread: no power figure"
    elif claimed_gain == 0:
        note = "a gain of 0 cannot be detected: no power figure"
    else:
        need = replicates_for_power(claimed_gain, diff["sd"], level, power, max_n)
        out["replicates_needed"] = need
        basis = f"(sd of the differences {diff['sd']:.3g}, from {diff['n']} replicates)"
        if need is None:
            note = f"more than {max_n} replicates for {pct} power at the paper's gain {claimed_gain:g} {basis}"
        else:
            note = f"n={need} replicates for {pct} power at the paper's gain {claimed_gain:g} {basis}"
    out["power_note"] = note
    out["text"] = _difference_text(diff)
    return out


def _difference_text(diff: dict) -> str:
    """'AOT - EDM = -0.05 [-0.12, 0.02] (95 % CI, paired t, n=3, p=0.14)'."""
    head = f"AOT - EDM = {diff['mean']:.3g}"
    pct = f"{diff['level'] * 100:g} %"
    if diff["low"] is None:
        return f"{head} (n={diff['n']}: no interval or test with one replicate)"
    if diff["p"] is None:
        return f"{head} [{diff['low']:.3g}, {diff['high']:.3g}] ({pct} CI, n={diff['n']}, no spread: no test)"
    return (f"{head} [{diff['low']:.3g}, {diff['high']:.3g}] ({pct} CI, paired t, n={diff['n']}, "
            f"p={diff['p']:.2g})")
