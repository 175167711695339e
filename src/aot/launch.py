"""The command that starts `aot` on one process, on one node's GPUs, or on several Slurm nodes.

`train_command(...)` returns the shell prefix that runs `-m aot`; the caller appends the command
and its options (` train --outdir ...`):

    one process          <python> -m aot
    one node, k procs    <python> -m torch.distributed.run --standalone --nproc-per-node k -m aot
    N nodes, k procs     srun --nodes N --ntasks N --ntasks-per-node 1 ... <python> -m
                         torch.distributed.run --nnodes N --nproc-per-node k --rdzv-backend c10d
                         --rdzv-endpoint "$(hostname)":<port> --rdzv-id "$SLURM_JOB_ID" -m aot

Several nodes need a Slurm allocation of N nodes (`sbatch --nodes N --ntasks N`, one task per
node): the prefix runs in the job's shell on the allocation's first node, `srun` starts one
torchrun on each node, and the torchruns meet at a c10d rendezvous hosted on that first node
(`hostname` is expanded there, before `srun`), keyed by the job id so that a resubmitted job starts
a fresh one. Each torchrun starts k ranks; rank i of a node uses the node's GPU i (LOCAL_RANK), so
with k GPUs per node every rank has its own. `srun` gets the node counts explicitly because the
Snakemake Slurm job step hands the rule's shell only the job id of the allocation, not its sizes.

Pure string building: nothing here imports torch or touches Slurm.
"""

from __future__ import annotations


def _count(name: str, value: int, least: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, not {value!r}")
    return value


def train_command(python: str, nodes: int, procs_per_node: int, rdzv_port: int = 29500,
                  cpus_per_node: int | None = None) -> str:
    """The shell prefix that runs `-m aot` on `nodes` x `procs_per_node` processes.

    `python` is the interpreter as a shell word (already quoted where needed). For several nodes,
    `cpus_per_node` (the CPUs Slurm gave each node's task, `--cpus-per-task` of the job) is passed
    on to `srun`, whose step would otherwise get one CPU per node; `rdzv_port` is the rendezvous
    port on the first node.
    """
    nodes = _count("nodes", nodes)
    procs = _count("procs_per_node", procs_per_node)
    port = _count("rdzv_port", rdzv_port)
    if port > 65535:
        raise ValueError(f"rdzv_port must be a TCP port (1-65535), not {port}")
    if nodes == 1 and procs == 1:
        return f"{python} -m aot"
    if nodes == 1:
        return f"{python} -m torch.distributed.run --standalone --nproc-per-node {procs} -m aot"
    srun = ["srun", "--nodes", str(nodes), "--ntasks", str(nodes), "--ntasks-per-node", "1"]
    if cpus_per_node is not None:
        srun += ["--cpus-per-task", str(_count("cpus_per_node", cpus_per_node))]
    # --kill-on-bad-exit: a node whose ranks fail ends the others at once instead of leaving them
    # blocked in a collective; --mem=0: each node's task gets all of the job's memory there.
    srun += ["--mem=0", "--kill-on-bad-exit=1"]
    # the job id keys the rendezvous; outside a Slurm job the shell stops here with this message
    job_id = f'"${{SLURM_JOB_ID:?training on {nodes} nodes runs inside a Slurm job of {nodes} nodes}}"'
    torchrun = [python, "-m", "torch.distributed.run", "--nnodes", str(nodes), "--nproc-per-node", str(procs),
                "--rdzv-backend", "c10d", "--rdzv-endpoint", f'"$(hostname)":{port}', "--rdzv-id", job_id,
                "-m", "aot"]
    return " ".join(srun + torchrun)


def threads_per_rank(cpus: int, procs_per_node: int) -> int:
    """CPU threads for each of a node's `procs_per_node` ranks when the node has `cpus` CPUs (at least 1)."""
    cpus = _count("cpus", cpus)
    procs = _count("procs_per_node", procs_per_node)
    return max(1, cpus // procs)
