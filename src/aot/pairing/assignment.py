"""AOT's assignment: the cost matrix, exact solvers of one square problem (scipy, lapjv and the
warm-started lapjv), and the noise assignment of Algorithms 1 and 2 (class-wise with labels)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

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
