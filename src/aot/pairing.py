"""Approximated optimal transport (AOT) noise pairing: cost matrix, exact assignment, pair pools.

Algorithm 1 of the paper draws N augmented training images and N noise vectors from N(0, I), solves
the linear assignment problem that minimises the summed cost between images and noise (Euclidean
distance by default), and serves the N pairs in minibatches of B, each pair exactly once. Algorithm
2 (class-conditional) solves one assignment per class, so that each image is paired with a noise
vector drawn at an index of its own class. The noise is only permuted, never replaced, so its
marginal stays N(0, I).

Public API
----------
`cost_matrix(x, y, cost="l2")`
    [N, M] float64 matrix of distances between the flattened rows of x and y.
`assign_noise(images, noise, labels=None, cost="l2", solver="auto") -> LongTensor perm`
    `images[i]` is paired with `noise[perm[i]]`; the summed cost is minimal over all permutations
    (over all class-preserving permutations when `labels` is given).
`solve_assignment(C, solver="auto") -> np.ndarray perm`
    Exact linear assignment of a square cost matrix (row i -> column perm[i]).
`PairPool(draw_fn, pool_size, batch_gpu, ...)`
    The training-side pair pool with a deterministic background builder; see its docstring.
`check_pool_size(pool_size, batch_gpu)`
    N and B must make whole minibatches: the one check, used by PairPool and training.

Solvers (all exact; they differ in speed only, measured by `bench/bench_assignment.py`):
    "scipy"      scipy.optimize.linear_sum_assignment (shortest augmenting path).
    "lapjv"      lap.lapjv (Jonker-Volgenant) on the dense float64 matrix.
    "lapjv-warm" lap.lapjv on the dense matrix reduced by near-optimal dual prices, which come from
                 an exact solve of a sparse candidate graph (row/column nearest neighbours in
                 reduced cost plus the identity matching). Subtracting u_i + v_j from C changes
                 every assignment's total by the same constant, so the optimum is the same; the
                 warm start only makes the dense Jonker-Volgenant pass fast.
    "auto"       by size: "scipy" below `AUTO_LAPJV_MIN_N` rows, "lapjv" below `AUTO_WARM_MIN_N`,
                 "lapjv-warm" from there on (thresholds measured, see bench/README.md).
"""

from __future__ import annotations

import math
import queue
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .errors import UserError

__all__ = ["COSTS", "SOLVERS", "cost_matrix", "solve_assignment", "assign_noise", "class_indices", "derive_seed",
           "PairPool", "PoolBuildError", "PoolSizeError", "check_pool_size"]

COSTS = ("l2", "sqeuclidean")
SOLVERS = ("auto", "lapjv", "lapjv-warm", "scipy")

# "auto" uses scipy below AUTO_LAPJV_MIN_N rows (lower call overhead), lapjv up to
# AUTO_WARM_MIN_N, and the warm-started lapjv from there on (measured; see bench/README.md).
AUTO_LAPJV_MIN_N = 48
AUTO_WARM_MIN_N = 448
# Candidate edges per row and per column for the warm start's sparse problem.
WARM_K = 8
# lap's Jonker-Volgenant code initialises prices with a fixed LARGE = 1e6, so every cost it sees
# must stay well below that; matrices are shifted to start at 0 and scaled by a power of two
# (exact in binary floating point) when their range exceeds this.
_LAP_MAX_RANGE = 2.0**16


# --------------------------------------------------------------------------------------------
# Cost matrix


def _flat64(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).to(torch.float64)


def cost_matrix(x: torch.Tensor, y: torch.Tensor, cost: str = "l2") -> torch.Tensor:
    """Pairwise cost between the rows of `x` [N, ...] and `y` [M, ...] (each sample flattened).

    cost "l2" is the Euclidean distance ||x_i - y_j|| (the paper's choice), "sqeuclidean" its
    square. Computed in float64 on the device `x` lives on, as ||x||^2 + ||y||^2 - 2 x.y with a
    matrix product (clamped at 0 against rounding); float64 keeps the relative error near 1e-15,
    so the assignment found is optimal for the true costs up to ties at that level.
    Returns a float64 tensor [N, M] on x's device.
    """
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {COSTS}, got {cost!r}")
    if x.shape[1:] != y.shape[1:]:
        raise ValueError(f"cost_matrix: sample shapes differ: {tuple(x.shape[1:])} vs {tuple(y.shape[1:])}")
    xf = _flat64(x)
    yf = _flat64(y.to(x.device))
    d2 = torch.addmm((xf * xf).sum(1)[:, None] + (yf * yf).sum(1)[None, :], xf, yf.T,
                     beta=1.0, alpha=-2.0)
    d2.clamp_(min=0.0)
    if cost == "l2":
        d2.sqrt_()
    return d2


def pair_costs(x: torch.Tensor, y: torch.Tensor, cost: str = "l2") -> torch.Tensor:
    """Cost of the given pairs (x[i], y[i]) as a float64 vector (direct difference, no expansion)."""
    d2 = (_flat64(x) - _flat64(y.to(x.device))).square().sum(1)
    return d2.sqrt() if cost == "l2" else d2


# --------------------------------------------------------------------------------------------
# Exact assignment of one square cost matrix


def _check_perm(perm: np.ndarray, n: int, solver: str) -> np.ndarray:
    perm = np.asarray(perm, dtype=np.int64)
    if perm.shape != (n,) or (n and (perm.min() < 0 or np.bincount(perm, minlength=n).max() != 1)):
        raise RuntimeError(f"assignment solver {solver!r} returned an invalid permutation")
    return perm


def _lap_ready(C: np.ndarray, inplace: bool = False) -> np.ndarray:
    """Shift and, if needed, scale by 2^-k (exact in binary) so that lap's LARGE stays out of reach."""
    lo, hi = float(C.min()), float(C.max())
    if max(abs(lo), abs(hi)) <= _LAP_MAX_RANGE:
        return C  # lap only reads the matrix
    R = C if inplace else C.copy()
    R -= lo
    if hi - lo > _LAP_MAX_RANGE:
        R *= 2.0 ** -math.ceil(math.log2((hi - lo) / _LAP_MAX_RANGE))
    return R


def _solve_lapjv(C: np.ndarray, inplace: bool = False) -> np.ndarray:
    import lap

    R = np.ascontiguousarray(_lap_ready(C, inplace=inplace))
    _, x, _ = lap.lapjv(R, extend_cost=False, return_cost=True)
    return x


def _solve_scipy(C: np.ndarray) -> np.ndarray:
    from scipy.optimize import linear_sum_assignment

    _, cols = linear_sum_assignment(C)
    return cols


def _row_topk(A: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k smallest entries of each row of A (unordered)."""
    return torch.topk(torch.from_numpy(A), k, dim=1, largest=False, sorted=False).indices.numpy()


def _candidate_edges(C: np.ndarray, k: int):
    """Classic reduction prices and a sparse candidate edge list (may hold duplicates).

    v0_j = min_i C_ij, u0_i = min_j (C_ij - v0_j); candidates are, for every row, the k smallest
    C_ij - v0_j, for every column the k smallest C_ij - u0_i (selected in float32: selection need
    not be exact), and the identity matching, so that a perfect matching always exists.
    """
    n = C.shape[0]
    k = min(k, n)
    ar = np.arange(n)
    v0 = C.min(axis=0)
    A = np.subtract(C, v0[None, :], dtype=np.float32)
    u0 = A.min(axis=1).astype(np.float64)
    rk = _row_topk(A, k)                                   # [n, k] columns of each row
    A = np.subtract(C, u0[:, None], dtype=np.float32)
    A = torch.from_numpy(A).T.contiguous().numpy()        # A[j, i] = C_ij - u0_i (blocked copy)
    ck = _row_topk(A, k)                                   # [n, k] rows of each column
    del A
    rows = np.concatenate([np.repeat(ar, k), ck.ravel(), ar])
    cols = np.concatenate([rk.ravel(), np.repeat(ar, k), ar])
    return rows, cols, u0, v0


def _sparse_prices(C: np.ndarray, rows: np.ndarray, cols: np.ndarray, u0: np.ndarray,
                   v0: np.ndarray, max_sweeps: int = 1000):
    """Optimal dual prices (U, V) of the assignment problem restricted to the candidate edges.

    Exact solve of the sparse problem (scipy's LAPJVsp) on the reduced costs, then prices by
    Bellman-Ford on its residual graph: v_j <- min(v_j, min over edges (i, j) of w_ij - u_i) with
    u_i = w_i,sigma(i) - v_sigma(i), until nothing moves. Then C_ij - U_i - V_j >= 0 on every
    candidate edge and = 0 on the sparse optimum.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import min_weight_full_bipartite_matching

    n = C.shape[0]
    ar = np.arange(n)
    key = np.unique(rows * n + cols)
    rows, cols = key // n, key % n                          # CSR order
    w = C[rows, cols] - u0[rows] - v0[cols]
    shift = w.min()  # every weight >= 0, so w + 1 >= 1 (scipy ignores explicit zeros)
    w -= shift
    u0 = u0 + shift
    indptr = np.searchsorted(rows, np.arange(n + 1))
    S = csr_matrix((w + 1.0, cols, indptr), shape=(n, n))
    _, sigma = min_weight_full_bipartite_matching(S)
    order = np.argsort(cols, kind="stable")                 # edges grouped by column
    er, ec, ew = rows[order], cols[order], w[order]
    starts = np.searchsorted(ec, ar)
    w_sig = C[ar, sigma] - u0 - v0[sigma]
    tol = 1e-12 * max(1.0, float(w.max(initial=0.0)))
    v = np.zeros(n)
    for _ in range(max_sweeps):
        u = w_sig - v[sigma]
        new_v = np.minimum(v, np.minimum.reduceat(ew - u[er], starts))
        moved = bool((new_v < v - tol).any())
        v = new_v
        if not moved:
            break
    u = w_sig - v[sigma]
    return u0 + u, v0 + v


def _warm_reduced(C: np.ndarray, k: int = WARM_K, refine_rounds: int = 1) -> np.ndarray:
    """C - U - V for near-optimal dual prices (U, V): the warm start of "lapjv-warm".

    Prices come from the exact optimum of a sparse candidate problem (`_candidate_edges`,
    `_sparse_prices`). Entries that are still negative are violated dual constraints; while
    there are many (more than n/2), they are added to the candidates and the prices recomputed.
    Subtracting U_i + V_j shifts every assignment's total by the same constant, so the optimal
    assignment of the result is that of C; the prices only make the dense solver fast.
    """
    n = C.shape[0]
    rows, cols, u0, v0 = _candidate_edges(C, k)
    U, V = _sparse_prices(C, rows, cols, u0, v0)
    R = np.subtract(C, U[:, None])
    R -= V[None, :]
    tol = 1e-9 * max(1.0, float(np.abs(v0).max()))
    for _ in range(refine_rounds):
        bad_rows, bad_cols = np.nonzero(R < -tol)
        if len(bad_rows) <= n // 2:
            break
        rows = np.concatenate([rows, bad_rows])
        cols = np.concatenate([cols, bad_cols])
        U, V = _sparse_prices(C, rows, cols, u0, v0)
        np.subtract(C, U[:, None], out=R)
        R -= V[None, :]
    return R


def _solve_lapjv_warm(C: np.ndarray) -> np.ndarray:
    if C.shape[0] < 3:
        return _solve_lapjv(C)
    return _solve_lapjv(_warm_reduced(C), inplace=True)


def auto_solver(n: int) -> str:
    """The solver "auto" uses for an n x n problem."""
    if n >= AUTO_WARM_MIN_N:
        return "lapjv-warm"
    return "lapjv" if n >= AUTO_LAPJV_MIN_N else "scipy"


def solve_assignment(C: np.ndarray | torch.Tensor, solver: str = "auto") -> np.ndarray:
    """Exact minimum-cost perfect matching of a square cost matrix: row i -> column perm[i].

    `C` is converted to a float64 numpy array. NaN or infinite costs raise ValueError.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if isinstance(C, torch.Tensor):
        C = C.detach().to("cpu", torch.float64).numpy()
    C = np.asarray(C, dtype=np.float64)
    if C.ndim != 2 or C.shape[0] != C.shape[1]:
        raise ValueError(f"solve_assignment needs a square matrix, got shape {C.shape}")
    n = C.shape[0]
    if n <= 1:
        return np.zeros(n, dtype=np.int64)
    if not np.isfinite(C).all():
        raise ValueError("cost matrix has NaN or infinite entries")
    if solver == "auto":
        solver = auto_solver(n)
    fn = {"lapjv": _solve_lapjv, "lapjv-warm": _solve_lapjv_warm, "scipy": _solve_scipy}[solver]
    return _check_perm(fn(C), n, solver)


# --------------------------------------------------------------------------------------------
# Noise assignment (Algorithms 1 and 2)


def class_indices(labels: Any, n: int) -> torch.Tensor:
    """Class index per sample from int labels [n] or one-hot/soft labels [n, L] (argmax)."""
    lab = torch.as_tensor(labels)
    if lab.ndim == 2:
        if lab.shape[0] != n:
            raise ValueError(f"labels have {lab.shape[0]} rows for {n} samples")
        if lab.shape[1] == 0:
            raise ValueError("labels have zero columns (unconditional dataset); pass labels=None")
        return lab.argmax(dim=1).to("cpu", torch.int64)
    if lab.ndim == 1:
        if lab.shape[0] != n:
            raise ValueError(f"labels have {lab.shape[0]} entries for {n} samples")
        if lab.is_floating_point():
            if not torch.equal(lab, lab.round()):
                raise ValueError("1-D labels must be integer class indices")
        lab = lab.to("cpu", torch.int64)
        if n and int(lab.min()) < 0:
            raise ValueError("class indices must be >= 0")
        return lab
    raise ValueError(f"labels must be [N] class indices or [N, L] one-hot, got shape {tuple(lab.shape)}")


def assign_noise(images: torch.Tensor, noise: torch.Tensor, labels: Any = None, cost: str = "l2",
                 solver: str = "auto") -> torch.Tensor:
    """Optimal pairing of images with noise vectors: returns perm (LongTensor [N], on CPU).

    `images[i]` is paired with `noise[perm[i]]`, and sum_i cost(images[i], noise[perm[i]]) is
    minimal over all permutations. With `labels` (int class indices [N] or one-hot [N, L]) the
    assignment is class-wise (Algorithm 2): perm[i] lies in the index set of i's class and every
    class's sub-problem is solved optimally; noise at other classes' indices is never touched.
    perm is always a permutation of 0..N-1, so the multiset of noise vectors is unchanged.
    """
    n = images.shape[0]
    if noise.shape != images.shape:
        raise ValueError(f"images {tuple(images.shape)} and noise {tuple(noise.shape)} differ in shape")
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {COSTS}, got {cost!r}")
    perm = torch.arange(n, dtype=torch.int64)
    if labels is None:
        groups = [torch.arange(n, dtype=torch.int64)]
    else:
        cls = class_indices(labels, n)
        order = torch.argsort(cls, stable=True)
        counts = torch.bincount(cls[order]).tolist() if n else []
        groups = [g for g in torch.split(order, counts) if g.numel() > 0]
    for idx in groups:
        m = idx.numel()
        if m <= 1:
            continue
        dev_idx = idx.to(images.device)
        C = cost_matrix(images[dev_idx], noise[dev_idx.to(noise.device)], cost)
        sub = solve_assignment(C.cpu().numpy(), solver)
        perm[idx] = idx[torch.from_numpy(sub)]
    return perm


# --------------------------------------------------------------------------------------------
# Pair pools with a deterministic background builder


def _num_classes(labels: torch.Tensor) -> int:
    return int(labels.shape[1]) if labels.ndim == 2 else int(labels.max()) + 1


def derive_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (base_seed, rank, pool_index, stream) via SeedSequence."""
    words = np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


class PoolSizeError(UserError, ValueError):
    """A pool size N and minibatch size B that cannot serve every pair exactly once: bad input for the
    command line (one line, exit 2) and a bad argument for library callers."""


def check_pool_size(pool_size: int, batch_gpu: int, pool_name: str = "--pool-size",
                    batch_name: str = "the per-GPU batch") -> None:
    """The one check of N (`pool_size`) against B (`batch_gpu`): both positive, N >= B, B divides N.
    `pool_name` and `batch_name` name them in the message (options, or config keys)."""
    if pool_size <= 0 or batch_gpu <= 0:
        raise PoolSizeError(f"{pool_name} N={pool_size} and {batch_name} B={batch_gpu} must be positive")
    if pool_size < batch_gpu:
        raise PoolSizeError(f"{pool_name} N={pool_size} is smaller than {batch_name} B={batch_gpu}")
    if pool_size % batch_gpu != 0:
        raise PoolSizeError(f"{pool_name} N={pool_size} is not a multiple of {batch_name} B={batch_gpu}")


class PoolBuildError(RuntimeError):
    """Raised in the training thread when building a pool failed in the background builder."""


@dataclass
class _Pool:
    index: int
    images: torch.Tensor
    noise: torch.Tensor  # already permuted: noise[i] pairs with images[i]
    labels: torch.Tensor | None
    augment_labels: torch.Tensor | None
    stats: dict = field(default_factory=dict)


@dataclass
class _Failure:
    index: int
    exc: BaseException
    tb: str


class PairPool:
    """Pools of (augmented image, paired noise) pairs served in minibatches (Algorithms 1 and 2).

    Usage in the training loop::

        pool = PairPool(draw_fn, pool_size=N, batch_gpu=B, aot=True, cost="l2",
                        labels_mode="classwise" or None, seed=seed, rank=rank, device=device)
        pool.load_state_dict(state["pool"])          # optional, when resuming
        for images, noise, labels, augment_labels in pool.batches():
            ...                                      # one minibatch of B pairs
            stats = pool.pop_stats()                 # per-pool statistics, for the tick log
        state["pool"] = pool.state_dict()
        pool.close()                                 # or use `with PairPool(...) as pool:`

    `draw_fn(pool_index, generator) -> (images, labels, augment_labels)` is supplied by training:
    it draws `pool_size` images (float, [-1, 1], NCHW, in random order), augments them, and returns
    labels (one-hot [N, L] or int [N]) and augment labels ([N, 9]), either of which may be None. It
    must take all its randomness from `generator` (a CPU torch.Generator seeded from
    (seed, rank, pool_index)), never from the global RNG: it runs in the builder thread, and
    resuming rebuilds a pool by calling it again with the same arguments. It must not share
    mutable state with the training thread (open zip handles, a module-global RNG).

    For pool k, the noise is drawn from N(0, I) with its own generator seeded from
    (seed, rank, k), on the CPU (so a pool is the same on every device), then moved to `device`.
    With `aot=True` the noise is permuted by `assign_noise` (class-wise when
    `labels_mode="classwise"`); with `aot=False` it stays in drawn order (independent noise,
    plain EDM) through the same code path. Each pool serves pool_size // batch_gpu minibatches in
    order, each pair exactly once, then the next pool follows.

    Background building: a daemon thread builds pools k+1, k+2, ... in order while pool k is
    served, at most `prefetch` pools ahead, so the assignment overlaps training. The sequence of
    pools depends only on (seed, rank, draw_fn), never on thread timing. An exception in the
    builder is re-raised in the training thread as `PoolBuildError` (with the original as its
    cause and the builder's traceback in the message) when that pool is due. `close()` stops the
    thread; `background=False` builds each pool synchronously in the calling thread instead.

    Checkpointing: `state_dict()` is {"pool_index", "position", ...} where position counts the
    minibatches of pool `pool_index` already handed out; `load_state_dict()` restarts the builder
    at that pool and skips `position` batches, so the following batches are identical to an
    uninterrupted run. No RNG state needs saving since every pool's randomness is derived from
    (seed, rank, pool_index).

    Statistics (one dict per pool, in order, via `pop_stats()`; the pool being served is
    `current_stats`): pool_index, mean_cost_paired (mean cost of the served pairs),
    mean_cost_random (mean cost of the pairs in drawn order, i.e. independent noise), draw_s,
    noise_s, pairing_s (cost matrix + solver), build_s, wait_s (time the training thread waited
    for this pool: the stall that background building is there to avoid), pool_size and solver
    (what "auto" chose; for class-wise pools, at the mean class size; None without AOT).
    Memory: up to prefetch + 2 pools exist at once (served, queued, being built).
    """

    def __init__(self, draw_fn: Callable[[int, torch.Generator], Sequence[Any]], pool_size: int,
                 batch_gpu: int, *, aot: bool = True, cost: str = "l2",
                 labels_mode: str | None = None, seed: int = 0, rank: int = 0,
                 device: torch.device | str = "cpu", solver: str = "auto", prefetch: int = 1,
                 background: bool = True, compute_stats: bool = True) -> None:
        pool_size, batch_gpu = int(pool_size), int(batch_gpu)
        check_pool_size(pool_size, batch_gpu)
        if cost not in COSTS:
            raise ValueError(f"cost must be one of {COSTS}, got {cost!r}")
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        if labels_mode not in (None, "classwise"):
            raise ValueError(f"labels_mode must be None or 'classwise', got {labels_mode!r}")
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        self.draw_fn = draw_fn
        self.pool_size, self.batch_gpu = pool_size, batch_gpu
        self.batches_per_pool = pool_size // batch_gpu
        self.aot, self.cost, self.labels_mode = bool(aot), cost, labels_mode
        self.seed, self.rank = int(seed), int(rank)
        self.device = torch.device(device)
        self.solver, self.prefetch, self.background = solver, int(prefetch), bool(background)
        self.compute_stats = bool(compute_stats)
        # Position: pool `_pool_index`, `_position` batches of it handed out.
        self._pool_index = 0
        self._position = 0
        self._current: _Pool | None = None
        self._stats: list[dict] = []
        self.current_stats: dict | None = None
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._closed = False
        self._epoch = 0  # bumped by load_state_dict so that an older batches() iterator stops
        if self.aot:  # import the solvers here, not in the first pool's timing
            import lap  # noqa: F401
            import scipy.optimize  # noqa: F401
            import scipy.sparse.csgraph  # noqa: F401

    # ---- building one pool (pure function of pool_index) ----

    def generators(self, pool_index: int) -> tuple[torch.Generator, torch.Generator]:
        """The (draw, noise) CPU generators of pool `pool_index`."""
        g_draw = torch.Generator().manual_seed(derive_seed(self.seed, self.rank, pool_index, 0))
        g_noise = torch.Generator().manual_seed(derive_seed(self.seed, self.rank, pool_index, 1))
        return g_draw, g_noise

    def build_pool(self, pool_index: int) -> _Pool:
        """Build pool `pool_index` (deterministic; called by the builder thread)."""
        t0 = time.perf_counter()
        g_draw, g_noise = self.generators(pool_index)
        out = self.draw_fn(pool_index, g_draw)
        if not isinstance(out, (tuple, list)) or len(out) != 3:
            raise TypeError("draw_fn must return (images, labels, augment_labels)")
        images, labels, augment_labels = out
        images = torch.as_tensor(images)
        if images.shape[0] != self.pool_size:
            raise ValueError(f"draw_fn returned {images.shape[0]} images for a pool of {self.pool_size}")
        if not images.is_floating_point():
            raise TypeError(f"draw_fn must return float images, got {images.dtype}")
        images = images.to(self.device)
        if labels is not None:
            labels = torch.as_tensor(labels).to(self.device)
            if labels.ndim == 2 and labels.shape[1] == 0:
                labels = None
        if augment_labels is not None:
            augment_labels = torch.as_tensor(augment_labels).to(self.device)
        t1 = time.perf_counter()
        noise = torch.randn(images.shape, generator=g_noise, dtype=torch.float32).to(
            device=self.device, dtype=images.dtype)
        t2 = time.perf_counter()
        stats: dict[str, Any] = {"pool_index": pool_index, "pool_size": self.pool_size}
        if self.aot:
            if self.labels_mode == "classwise" and labels is None:
                raise ValueError("labels_mode='classwise' needs labels from draw_fn, got None")
            perm = assign_noise(images, noise, labels if self.labels_mode == "classwise" else None,
                                cost=self.cost, solver=self.solver)
            paired = noise[perm.to(self.device)]
            stats["solver"] = self.solver if self.solver != "auto" else auto_solver(
                self.pool_size if self.labels_mode is None else max(1, self.pool_size // max(1, _num_classes(labels))))
        else:
            paired = noise
            stats["solver"] = None
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        t3 = time.perf_counter()
        if self.compute_stats:
            stats["mean_cost_paired"] = float(pair_costs(images, paired, self.cost).mean())
            stats["mean_cost_random"] = (float(pair_costs(images, noise, self.cost).mean())
                                         if self.aot else stats["mean_cost_paired"])
        stats.update(draw_s=t1 - t0, noise_s=t2 - t1, pairing_s=t3 - t2 if self.aot else 0.0,
                     build_s=time.perf_counter() - t0)
        return _Pool(pool_index, images, paired, labels, augment_labels, stats)

    # ---- background builder ----

    @staticmethod
    def _worker(ref: weakref.ref[PairPool], start_index: int, q: queue.Queue,
                stop: threading.Event) -> None:
        # Holds the pool only weakly between builds, so that a pool dropped without close()
        # is collected and its builder ends.
        pool = ref()
        if pool is None:
            return
        stream = torch.cuda.Stream(pool.device) if pool.device.type == "cuda" else None
        del pool
        k = start_index
        while not stop.is_set():
            pool = ref()
            if pool is None:
                return
            try:
                if stream is not None:
                    with torch.cuda.stream(stream):
                        item: Any = pool.build_pool(k)
                else:
                    item = pool.build_pool(k)
            except BaseException as exc:  # handed to the consumer, which re-raises it
                item = _Failure(k, exc, traceback.format_exc())
            del pool
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    if ref() is None:
                        return
            if isinstance(item, _Failure):
                return
            k += 1

    def _start(self) -> None:
        self._stop_thread()
        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=self.prefetch)
        self._thread = threading.Thread(target=PairPool._worker, name="aot-pair-pool",
                                        args=(weakref.ref(self), self._pool_index, self._queue,
                                              self._stop),
                                        daemon=True)
        self._thread.start()

    def _stop_thread(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        q = self._queue
        while self._thread.is_alive():
            try:  # unblock a pending put
                while True:
                    q.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=0.05)
        self._thread = None
        self._queue = None

    def _next_pool(self, pool_index: int) -> _Pool:
        t0 = time.perf_counter()
        if not self.background:
            try:
                pool = self.build_pool(pool_index)
            except Exception as exc:
                raise PoolBuildError(f"building pair pool {pool_index} failed: {exc!r}") from exc
            pool.stats["wait_s"] = time.perf_counter() - t0
            return pool
        if self._thread is None:
            self._start()
        while True:
            try:
                item = self._queue.get(timeout=0.5)
                break
            except queue.Empty:
                if not self._thread.is_alive():
                    raise PoolBuildError("the pair-pool builder thread stopped unexpectedly") from None
        if isinstance(item, _Failure):
            self._thread = None
            raise PoolBuildError(f"building pair pool {item.index} failed in the background "
                                 f"builder: {item.exc!r}\n{item.tb}") from item.exc
        assert item.index == pool_index, (item.index, pool_index)
        if self.device.type == "cuda":  # built on the builder's stream, now used on ours
            consumer = torch.cuda.current_stream(self.device)
            for t in (item.images, item.noise, item.labels, item.augment_labels):
                if t is not None and t.is_cuda:
                    t.record_stream(consumer)
        item.stats["wait_s"] = time.perf_counter() - t0
        return item

    # ---- consumer API ----

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None,
                                         torch.Tensor | None]]:
        """Yield (images, noise, labels, augment_labels) minibatches of batch_gpu, endlessly.

        noise[b] is the noise paired with images[b]; labels / augment_labels are None when
        draw_fn gave None. Tensors are views into the pool (do not modify them in place).
        """
        if self._closed:
            raise RuntimeError("PairPool is closed")
        B = self.batch_gpu
        epoch = self._epoch
        while epoch == self._epoch:
            if self._current is None or self._current.index != self._pool_index:
                self._current = self._next_pool(self._pool_index)
                self.current_stats = dict(self._current.stats)
                self._stats.append(self.current_stats)
            pool = self._current
            while self._position < self.batches_per_pool:
                if epoch != self._epoch:
                    return
                s = slice(self._position * B, (self._position + 1) * B)
                self._position += 1
                yield (pool.images[s], pool.noise[s],
                       None if pool.labels is None else pool.labels[s],
                       None if pool.augment_labels is None else pool.augment_labels[s])
            self._pool_index += 1
            self._position = 0
            self._current = None

    def pop_stats(self) -> list[dict]:
        """Statistics of the pools started since the last call (oldest first)."""
        out, self._stats = self._stats, []
        return out

    def state_dict(self) -> dict:
        """Resumable position: pool index and batches already handed out from it, plus config."""
        k, pos = self._pool_index, self._position
        if pos >= self.batches_per_pool:
            k, pos = k + 1, 0
        return {"format": "aot-pair-pool/1", "pool_index": k, "position": pos,
                "seed": self.seed, "rank": self.rank, "pool_size": self.pool_size,
                "batch_gpu": self.batch_gpu, "aot": self.aot, "cost": self.cost,
                "labels_mode": self.labels_mode}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where `state` (from state_dict) left off. Config must match."""
        if state.get("format") != "aot-pair-pool/1":
            raise ValueError(f"not a pair-pool state: format {state.get('format')!r}")
        state = dict(state)
        state.setdefault("batch_gpu", state.get("batch_size"))  # states written before the rename
        for key in ("seed", "rank", "pool_size", "batch_gpu", "aot", "cost", "labels_mode"):
            if state.get(key) != getattr(self, key):
                raise ValueError(f"pair-pool state has {key}={state.get(key)!r}, this run has "
                                 f"{getattr(self, key)!r}")
        k, pos = int(state["pool_index"]), int(state["position"])
        if k < 0 or not 0 <= pos <= self.batches_per_pool:
            raise ValueError(f"pair-pool state has invalid position ({k}, {pos})")
        self._stop_thread()
        self._pool_index, self._position = k, pos
        self._current = None
        self._epoch += 1

    def close(self) -> None:
        """Stop the builder thread and drop the pools. Safe to call more than once."""
        self._stop_thread()
        self._current = None
        self._closed = True

    def __enter__(self) -> PairPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; close() is the documented way
        try:
            self._stop.set()
        except Exception:
            pass
