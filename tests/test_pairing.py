"""AOT pairing: exact assignment (brute force, scipy), class-wise constraint, pair pools."""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from aot.pairing import (
    SOLVERS,
    PairPool,
    PoolBuildError,
    assign_noise,
    auto_solver,
    cost_matrix,
    solve_assignment,
)

EXACT_SOLVERS = [s for s in SOLVERS]


def total(C: np.ndarray, perm: np.ndarray) -> float:
    return float(C[np.arange(len(perm)), perm].sum())


def brute_force_min(C: np.ndarray) -> float:
    n = C.shape[0]
    return min(total(C, np.array(p)) for p in itertools.permutations(range(n)))


def is_perm(p, n) -> bool:
    p = np.asarray(p)
    return p.shape == (n,) and np.array_equal(np.sort(p), np.arange(n))


# --------------------------------------------------------------------------------------------
# cost matrix


@pytest.mark.parametrize("cost", ["l2", "sqeuclidean"])
def test_cost_matrix_matches_direct_differences(cost):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(7, 3, 4, 4, generator=g) * 2 - 1
    y = torch.randn(5, 3, 4, 4, generator=g)
    C = cost_matrix(x, y, cost)
    assert C.dtype == torch.float64 and C.shape == (7, 5)
    d = (x.double().reshape(7, 1, -1) - y.double().reshape(1, 5, -1)).square().sum(-1)
    ref = d.sqrt() if cost == "l2" else d
    torch.testing.assert_close(C, ref, rtol=1e-12, atol=1e-12)


def test_cost_matrix_identical_vectors_zero_and_bad_input():
    x = torch.randn(4, 10)
    C = cost_matrix(x, x, "l2")
    assert torch.all(C.diagonal() >= 0) and float(C.diagonal().max()) < 1e-6
    with pytest.raises(ValueError):
        cost_matrix(x, torch.randn(4, 11))
    with pytest.raises(ValueError):
        cost_matrix(x, x, "l1")


# --------------------------------------------------------------------------------------------
# exact assignment


@pytest.mark.parametrize("solver", EXACT_SOLVERS)
@pytest.mark.parametrize("cost", ["l2", "sqeuclidean"])
def test_optimal_against_all_permutations(solver, cost):
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        n = 3 + seed % 6  # 3..8
        x = torch.rand(n, 3, 2, 2, generator=g) * 2 - 1
        y = torch.randn(n, 3, 2, 2, generator=g)
        perm = assign_noise(x, y, cost=cost, solver=solver)
        assert perm.dtype == torch.int64 and is_perm(perm, n)
        C = cost_matrix(x, y, cost).numpy()
        assert total(C, perm.numpy()) == pytest.approx(brute_force_min(C), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("solver", ["lapjv", "lapjv-warm", "auto"])
def test_matches_scipy_on_cifar_sized_vectors(solver):
    # 3x32x32 vectors; 700 >= AUTO_WARM_MIN_N so "auto" exercises the warm-started solver too.
    for seed, n in [(0, 200), (1, 700)]:
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(n, 3, 32, 32, generator=g) * 2 - 1
        y = torch.randn(n, 3, 32, 32, generator=g)
        C = cost_matrix(x, y, "l2").numpy()
        r, c = linear_sum_assignment(C)
        perm = solve_assignment(C, solver)
        assert is_perm(perm, n)
        assert total(C, perm) == pytest.approx(float(C[r, c].sum()), rel=1e-9)


def tie_heavy_matrices():
    rng = np.random.default_rng(0)
    yield np.full((6, 6), 3.0)                                  # everything ties
    yield rng.integers(0, 3, size=(40, 40)).astype(float)       # few distinct values
    yield rng.integers(0, 2, size=(200, 200)).astype(float)
    base = rng.random((5, 90))
    yield np.repeat(base, 18, axis=0)                           # duplicated rows
    a = rng.random((120, 120))
    yield np.repeat(np.repeat(a[:20, :20], 6, axis=0), 6, axis=1)  # duplicated rows and columns
    yield rng.random((64, 64)) * 1e9 + 1e12                     # beyond lap's LARGE: rescaled
    yield -rng.random((64, 64)) * 50                            # negative costs
    yield np.round(rng.random((700, 700)) * 10) / 10            # ties, warm-started size


@pytest.mark.parametrize("solver", EXACT_SOLVERS)
def test_ties_and_scales_match_scipy(solver):
    for C in tie_heavy_matrices():
        r, c = linear_sum_assignment(C)
        perm = solve_assignment(C, solver)
        assert is_perm(perm, C.shape[0])
        ref = float(C[r, c].sum())
        assert total(C, perm) == pytest.approx(ref, rel=1e-9, abs=1e-9)


def test_trivial_sizes_and_bad_matrices():
    for solver in EXACT_SOLVERS:
        assert solve_assignment(np.zeros((0, 0)), solver).shape == (0,)
        assert solve_assignment(np.array([[5.0]]), solver).tolist() == [0]
        assert solve_assignment(np.array([[1.0, 0.0], [0.0, 1.0]]), solver).tolist() == [1, 0]
    with pytest.raises(ValueError):
        solve_assignment(np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(ValueError):
        solve_assignment(np.zeros((2, 3)))
    with pytest.raises(ValueError):
        solve_assignment(np.zeros((2, 2)), "hungarian")
    assert auto_solver(8) == "scipy" and auto_solver(256) == "lapjv" and auto_solver(2048) == "lapjv-warm"
    x = torch.randn(1, 3, 4, 4)
    assert assign_noise(x, torch.randn(1, 3, 4, 4)).tolist() == [0]
    assert assign_noise(x[:0], x[:0]).shape == (0,)


# --------------------------------------------------------------------------------------------
# class-wise assignment (Algorithm 2)


def make_classwise(n=60, num_classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    y = torch.randn(n, 3, 4, 4, generator=g)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    return x, y, labels


@pytest.mark.parametrize("cost", ["l2", "sqeuclidean"])
def test_classwise_constraint_and_per_class_optimality(cost):
    x, y, labels = make_classwise()
    perm = assign_noise(x, y, labels, cost=cost)
    assert is_perm(perm, len(x))
    assert torch.equal(labels[perm], labels)  # noise stays inside its own class's index set
    C = cost_matrix(x, y, cost).numpy()
    for c in labels.unique():
        idx = torch.nonzero(labels == c).flatten().numpy()
        sub = C[np.ix_(idx, idx)]
        r, cc = linear_sum_assignment(sub)
        got = float(C[idx, perm.numpy()[idx]].sum())
        assert got == pytest.approx(float(sub[r, cc].sum()), rel=1e-12)
    # and no better than the unconstrained optimum
    assert total(C, perm.numpy()) >= total(C, assign_noise(x, y, cost=cost).numpy()) - 1e-9


def test_classwise_onehot_equals_int_labels_and_edge_classes():
    x, y, labels = make_classwise(n=40, num_classes=4, seed=3)
    labels[7] = 4  # class 4 has a single member; class 5 (one-hot column) has none
    onehot = torch.nn.functional.one_hot(labels, num_classes=6).float()
    p_int = assign_noise(x, y, labels)
    p_hot = assign_noise(x, y, onehot)
    assert torch.equal(p_int, p_hot)
    assert int(p_int[7]) == 7
    assert torch.equal(assign_noise(x, y, labels.numpy()), p_int)
    with pytest.raises(ValueError):
        assign_noise(x, y, labels[:-1])
    with pytest.raises(ValueError):
        assign_noise(x, y, torch.zeros(40, 2, 2))


def test_noise_multiset_unchanged():
    x, y, labels = make_classwise(n=50, seed=5)
    for lab in (None, labels):
        perm = assign_noise(x, y, lab)
        paired = y[perm]
        def key(t):
            return sorted(map(tuple, t.reshape(len(t), -1).tolist()))

        assert key(paired) == key(y)


# --------------------------------------------------------------------------------------------
# pair pools


DATA = torch.Generator().manual_seed(123)
DATASET = torch.rand(200, 3, 4, 4, generator=DATA) * 2 - 1
DATASET_LABELS = torch.randint(0, 3, (200,), generator=DATA)


def make_draw_fn(pool_size, delay=0.0, fail_at=None, labels=True, calls=None):
    def draw_fn(pool_index, generator):
        if calls is not None:
            calls.append(pool_index)
        if fail_at is not None and pool_index == fail_at:
            raise RuntimeError(f"disk on fire at pool {pool_index}")
        if delay:
            time.sleep(delay * float(torch.rand(1, generator=torch.Generator().manual_seed(pool_index))))
        idx = torch.randint(0, len(DATASET), (pool_size,), generator=generator)
        flip = torch.rand(pool_size, generator=generator) < 0.5
        images = torch.where(flip[:, None, None, None], DATASET[idx].flip(3), DATASET[idx])
        lab = torch.nn.functional.one_hot(DATASET_LABELS[idx], 3).float() if labels else None
        aug = torch.zeros(pool_size, 9)
        aug[:, 0] = flip.float()
        return images, lab, aug
    return draw_fn


def take(pool, n_batches):
    out = []
    for _, batch in zip(range(n_batches), pool.batches()):
        out.append(tuple(None if t is None else t.clone() for t in batch))
    return out


def same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for s, t in zip(x, y):
            assert (s is None and t is None) or torch.equal(s, t)


@pytest.mark.parametrize("labels_mode", [None, "classwise"])
def test_pool_serves_each_optimal_pair_once(labels_mode):
    N, B = 24, 4
    with PairPool(make_draw_fn(N), N, B, aot=True, labels_mode=labels_mode, seed=7) as pool:
        batches = take(pool, 2 * N // B)
        stats = pool.pop_stats()
    for k in range(2):
        imgs = torch.cat([b[0] for b in batches[k * 6:(k + 1) * 6]])
        noise = torch.cat([b[1] for b in batches[k * 6:(k + 1) * 6]])
        labels = torch.cat([b[2] for b in batches[k * 6:(k + 1) * 6]])
        # rebuild the pool's raw draw and noise from its generators
        g_draw, g_noise = pool.generators(k)
        raw_images, raw_labels, _ = make_draw_fn(N)(k, g_draw)
        raw_noise = torch.randn(raw_images.shape, generator=g_noise)
        assert torch.equal(imgs, raw_images) and torch.equal(labels, raw_labels)
        perm = assign_noise(raw_images, raw_noise, raw_labels if labels_mode else None)
        assert torch.equal(noise, raw_noise[perm])  # every pair exactly once, optimally paired
        C = cost_matrix(raw_images, raw_noise).numpy()
        assert stats[k]["pool_index"] == k
        assert stats[k]["mean_cost_paired"] == pytest.approx(total(C, perm.numpy()) / N, rel=1e-6)
        assert stats[k]["mean_cost_random"] == pytest.approx(float(np.trace(C)) / N, rel=1e-6)
        assert stats[k]["mean_cost_paired"] <= stats[k]["mean_cost_random"]
        for key in ("pairing_s", "build_s", "wait_s", "draw_s", "noise_s"):
            assert stats[k][key] >= 0


def test_pool_without_aot_keeps_independent_noise():
    N, B = 16, 8
    with PairPool(make_draw_fn(N), N, B, aot=False, seed=1) as pool:
        batches = take(pool, 4)
    for k in range(2):
        g_draw, g_noise = pool.generators(k)
        raw_images, _, _ = make_draw_fn(N)(k, g_draw)
        raw_noise = torch.randn(raw_images.shape, generator=g_noise)
        assert torch.equal(torch.cat([b[1] for b in batches[2 * k:2 * k + 2]]), raw_noise)


def test_background_builder_is_deterministic():
    N, B = 20, 5
    runs = []
    for background, prefetch, delay in [(False, 1, 0.0), (True, 1, 0.02), (True, 2, 0.0)]:
        with PairPool(make_draw_fn(N, delay=delay), N, B, labels_mode="classwise", seed=3,
                      background=background, prefetch=prefetch) as pool:
            runs.append(take(pool, 13))
    same_batches(runs[0], runs[1])
    same_batches(runs[0], runs[2])
    with PairPool(make_draw_fn(N), N, B, seed=4) as pool:
        other = take(pool, 1)
    assert not torch.equal(other[0][1], runs[0][0][1])  # another seed, other noise


@pytest.mark.parametrize("stop_at", [0, 3, 4, 9])
def test_resume_mid_pool_gives_identical_batches(stop_at):
    N, B = 16, 4  # 4 batches per pool
    with PairPool(make_draw_fn(N), N, B, seed=11, rank=2) as pool:
        straight = take(pool, 12)
    with PairPool(make_draw_fn(N), N, B, seed=11, rank=2) as pool:
        first = take(pool, stop_at)
        state = pool.state_dict()
    assert state["pool_index"] * 4 + state["position"] == stop_at
    with PairPool(make_draw_fn(N), N, B, seed=11, rank=2) as resumed:
        resumed.load_state_dict(state)
        rest = take(resumed, 12 - stop_at)
    same_batches(first + rest, straight)


def test_state_mismatch_and_reload_on_live_pool():
    N, B = 8, 4
    pool = PairPool(make_draw_fn(N), N, B, seed=1)
    state = pool.state_dict()
    with pytest.raises(ValueError):
        PairPool(make_draw_fn(N), N, B, seed=2).load_state_dict(state)
    with pytest.raises(ValueError):
        PairPool(make_draw_fn(16), 16, B, seed=1).load_state_dict(state)
    a = take(pool, 3)
    pool.load_state_dict(state)  # rewind a running pool: the builder restarts at pool 0
    b = take(pool, 3)
    same_batches(a, b)
    pool.close()
    with pytest.raises(RuntimeError):
        next(pool.batches())


def test_builder_exception_reaches_the_consumer_in_order():
    N, B = 8, 4
    pool = PairPool(make_draw_fn(N, fail_at=2), N, B, seed=0)
    got = []
    with pytest.raises(PoolBuildError, match="disk on fire") as info:
        for batch in pool.batches():
            got.append(batch)
    assert len(got) == 4  # pools 0 and 1 served completely before the failure surfaces
    assert isinstance(info.value.__cause__, RuntimeError)
    pool.close()
    with pytest.raises(PoolBuildError, match="needs labels"):
        with PairPool(make_draw_fn(N, labels=False), N, B, labels_mode="classwise") as p2:
            next(p2.batches())
    with pytest.raises(ValueError):
        PairPool(make_draw_fn(N), 10, 4)


def test_close_stops_builder_thread():
    N, B = 8, 4
    calls = []
    before = {t.ident for t in threading.enumerate()}
    pool = PairPool(make_draw_fn(N, calls=calls), N, B, seed=0, prefetch=2)
    take(pool, 1)
    time.sleep(0.2)
    assert max(calls) <= 3  # bounded look-ahead: current pool + prefetch queue + one in hand
    pool.close()
    pool.close()
    time.sleep(0.05)
    assert not [t for t in threading.enumerate() if t.ident not in before and t.is_alive()
                and t.name == "aot-pair-pool"]


def test_dropped_pool_ends_its_builder():
    import gc

    N, B = 8, 4
    pool = PairPool(make_draw_fn(N), N, B, seed=0)
    take(pool, 1)
    thread = pool._thread
    assert thread is not None and thread.is_alive()
    del pool
    gc.collect()
    thread.join(timeout=2.0)
    assert not thread.is_alive()


def test_warm_start_refinement_keeps_the_optimum():
    from aot.pairing.assignment import _solve_lapjv, _warm_reduced

    g = torch.Generator().manual_seed(9)
    z = torch.randn(300, 3, 2, 2, generator=g)
    x = torch.nn.functional.interpolate(z, size=16, mode="bilinear").tanh()  # image-like
    C = cost_matrix(x, torch.randn(x.shape, generator=g), "l2").numpy()
    r, c = linear_sum_assignment(C)
    for k, rounds in [(1, 0), (1, 3), (8, 1)]:  # k=1: poor candidates, so refinement rounds run
        R = _warm_reduced(C, k=k, refine_rounds=rounds)
        perm = _solve_lapjv(R, inplace=True)
        assert is_perm(perm, 300)
        assert total(C, perm) == pytest.approx(float(C[r, c].sum()), rel=1e-12)
