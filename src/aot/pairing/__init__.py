"""Approximated optimal transport (AOT) noise pairing: cost matrix, exact assignment (`assignment`),
pair pools (`pool`).

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
`check_pool_batch(pool_size, batch_gpu)` (aot.settings.rules, the one check of N against B)
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

from ..settings.rules import PoolSizeError, check_pool_batch
from .assignment import (
    AUTO_LAPJV_MIN_N,
    AUTO_WARM_MIN_N,
    COSTS,
    SOLVERS,
    WARM_K,
    assign_noise,
    auto_solver,
    class_indices,
    cost_matrix,
    pair_costs,
    solve_assignment,
)
from .pool import PairPool, PoolBuildError, derive_seed

__all__ = ["COSTS", "SOLVERS", "cost_matrix", "solve_assignment", "assign_noise", "class_indices", "derive_seed",
           "PairPool", "PoolBuildError", "PoolSizeError", "check_pool_batch", "AUTO_LAPJV_MIN_N", "AUTO_WARM_MIN_N",
           "WARM_K", "auto_solver", "pair_costs"]
