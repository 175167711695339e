"""The paper's rules that tie settings together, one function each, for the workflow's config
checks, the command line and the library alike.

- N vs B (Algorithm 1): a pool of N pairs is served in minibatches of B, each pair once, so B
  divides N (and N >= B).
- NFE parity: Heun's sampler evaluates the network 2 x steps - 1 times, so its NFE is odd.
- Global batch vs GPUs x nodes x B: every GPU draws its own pools and takes B pairs per step, so
  the global batch is a multiple of B x (GPUs per node x nodes); the accumulation rounds make up the
  rest. A GPU count that cannot keep both is refused, never answered by changing B.

Each raises a `UserError` (one line); `where`/names say which keys or options the values came from.
Nothing here imports torch or the workflow.
"""

from __future__ import annotations

from ..errors import UserError


class PoolSizeError(UserError, ValueError):
    """N and B that break Algorithm 1 (N a positive multiple of B)."""


class BatchError(UserError, ValueError):
    """A global batch that the job's GPUs cannot split into whole minibatches of B."""


def check_pool_batch(pool_size: int, batch_gpu: int, pool_name: str = "--pool-size",
                     batch_name: str = "the per-GPU batch") -> None:
    """N (`pool_size`) against B (`batch_gpu`): both positive, N >= B, B divides N.
    `pool_name` and `batch_name` name them in the message (options, or config keys)."""
    if pool_size <= 0 or batch_gpu <= 0:
        raise PoolSizeError(f"{pool_name} N={pool_size} and {batch_name} B={batch_gpu} must be positive")
    if pool_size < batch_gpu:
        raise PoolSizeError(f"{pool_name} N={pool_size} is smaller than {batch_name} B={batch_gpu}")
    if pool_size % batch_gpu != 0:
        raise PoolSizeError(f"{pool_name} N={pool_size} is not a multiple of {batch_name} B={batch_gpu}")


def check_heun_nfe(nfe: int, solver: str, where: str) -> None:
    """An NFE that the solver can reach: Heun's is 2 x steps - 1 (odd); Euler's is the steps."""
    if solver == "heun" and nfe % 2 == 0:
        raise UserError(f"{where}: {nfe} is even, but Heun's NFE is 2 x steps - 1 (odd)")


def gpu_counts_for(batch: int, batch_gpu: int, most: int = 64) -> list[int]:
    """Total GPU counts (GPUs per node x nodes, at most `most`) that keep `batch` and B."""
    if batch_gpu <= 0 or batch % batch_gpu:
        return []
    per_b = batch // batch_gpu
    return [g for g in range(1, min(per_b, most) + 1) if per_b % g == 0]


def check_global_batch(batch: int, batch_gpu: int, gpus: int, nodes: int = 1, *, where: str = "",
                       batch_name: str = "batch", batch_gpu_name: str = "batch_gpu",
                       gpus_name: str = "GPU(s)") -> None:
    """The global batch against B x GPUs x nodes (`gpus` per node; 0 GPUs is one CPU process).
    The message names the keys (`where`, `batch_name`, ...) and the total GPU counts that would
    keep both the batch and B."""
    processes = max(1, gpus) * max(1, nodes)
    if batch_gpu > 0 and batch % (batch_gpu * processes) == 0:
        return
    fits = gpu_counts_for(batch, batch_gpu)
    prefix = f"{where}: " if where else ""
    spread = f"{max(1, gpus)} {gpus_name} x {max(1, nodes)} node(s)" if nodes > 1 else f"{processes} {gpus_name}"
    per = batch / processes
    per_text = f"{per:g}" if per != int(per) else str(int(per))
    would = (f"; GPUs x nodes that keep both: {', '.join(map(str, fits))} in all" if fits
             else f"; {batch_name} must be a multiple of {batch_gpu_name}")
    raise BatchError(f"{prefix}{batch_name} {batch} is not a multiple of {batch_gpu_name} {batch_gpu} x {spread} "
                     f"({per_text} per GPU): the recipe's B would change{would}")
