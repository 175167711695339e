"""The training-side pair pool: pools of (augmented image, paired noise) pairs built in order by a
deterministic background thread, served in minibatches, resumable from a (pool, position) state."""

from __future__ import annotations

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

from ..settings.rules import check_pool_batch
from .assignment import COSTS, SOLVERS, assign_noise, auto_solver, pair_costs


def _num_classes(labels: torch.Tensor) -> int:
    return int(labels.shape[1]) if labels.ndim == 2 else int(labels.max()) + 1


def derive_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (base_seed, rank, pool_index, stream) via SeedSequence."""
    words = np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


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
        check_pool_batch(pool_size, batch_gpu)
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
        if not isinstance(state, dict):
            raise ValueError(f"not a pair-pool state: a {type(state).__name__}, not a dict")
        if state.get("format") != "aot-pair-pool/1":
            raise ValueError(f"not a pair-pool state: format {state.get('format')!r}")
        state = dict(state)
        state.setdefault("batch_gpu", state.get("batch_size"))  # states written before the rename
        for key in ("seed", "rank", "pool_size", "batch_gpu", "aot", "cost", "labels_mode"):
            if state.get(key) != getattr(self, key):
                raise ValueError(f"pair-pool state has {key}={state.get(key)!r}, this run has "
                                 f"{getattr(self, key)!r}")
        k, pos = state.get("pool_index"), state.get("position")
        if any(isinstance(v, bool) or not isinstance(v, int) for v in (k, pos)):
            raise ValueError(f"pair-pool state has a position that is not two whole numbers ({k!r:.40}, {pos!r:.40})")
        if not 0 <= k < 1 << 53 or not 0 <= pos <= self.batches_per_pool:
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
