"""Training on several Slurm nodes: the launcher's command lines, and real runs on the two-node
partition that `.ci/slurm-up.sh` starts (nodes n1 and n2, partition `multi`, one slurmd each).

The Slurm tests train the small test network with gloo on the CPU, 2 ranks in all, and compare the
final weights bit for bit with the same world size run by torchrun without Slurm: gloo's sum of two
ranks' gradients is the same whichever rank adds (a + b == b + a exactly), and every rank's seed,
data stream and pools depend only on its rank and the world size.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import slurm_helpers as sh
import torch
from conftest import skip_or_fail
from slurm_helpers import REPO

from aot.checkpoints import load_network
from aot.launch import threads_per_rank, train_command
from aot.train import load_training_state

PY = shlex.quote(sys.executable)
MULTI_PARTITION = os.environ.get("SLURM_CI_MULTI_PARTITION", "multi")
STATE_ROOT = Path(os.environ.get("SLURM_CI_STATE", "/var/spool/slurm-ci"))
KIMG = 1.536  # 48 steps of 32 images, 24 ticks: long enough to be stopped in the middle
TICKS = 24
DONE = {"COMPLETED", "FAILED", "CANCELLED", "NODE_FAIL", "TIMEOUT", "OUT_OF_MEMORY", "PREEMPTED",
        "BOOT_FAIL", "DEADLINE"}


def train_args(outdir: Path, data: Path) -> list[str]:
    """`aot train` options of the small network (tests/test_train.py's), a state every tick."""
    return ["train", "--outdir", str(outdir), "--data", str(data),
            "--arch", "ddpmpp", "--cbase", "8", "--cres", "1,2", "--num-blocks", "1", "--attn", "",
            "--duration", str(KIMG / 1000), "--batch", "32", "--batch-gpu", "16", "--pool-size", "64",
            "--lr", "2e-3", "--lr-rampup", "0.0002", "--ema", "0.0005", "--dropout", "0.1", "--augment", "0.12",
            "--tick", "0.064", "--dump", "1", "--snap", "1000", "--device", "cpu", "--deterministic",
            "--threads", "1", "--aot"]


def job_env() -> dict[str, str]:
    env = sh.job_environment()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH", "")) if p)
    env["OMP_NUM_THREADS"] = "1"
    return env


def final_weights(outdir: Path) -> dict[str, torch.Tensor]:
    net, _ = load_network(outdir / "network-final.pt")
    return {k: v.clone() for k, v in net.state_dict().items()}


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


def ticks(outdir: Path) -> list[int]:
    import json

    return [json.loads(line)["tick"] for line in (outdir / "stats.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------
# The launcher (no Slurm needed)


def test_train_command_shapes():
    assert train_command("py", 1, 1) == "py -m aot"
    assert train_command("py", 1, 4) == "py -m torch.distributed.run --standalone --nproc-per-node 4 -m aot"
    cmd = train_command("py", 3, 4, rdzv_port=29611, cpus_per_node=32)
    assert cmd == (
        "srun --nodes 3 --ntasks 3 --ntasks-per-node 1 --cpus-per-task 32 --mem=0 --kill-on-bad-exit=1 "
        "py -m torch.distributed.run --nnodes 3 --nproc-per-node 4 --rdzv-backend c10d "
        '--rdzv-endpoint "$(hostname)":29611 '
        '--rdzv-id "${SLURM_JOB_ID:?training on 3 nodes runs inside a Slurm job of 3 nodes}" -m aot')
    assert "--cpus-per-task" not in train_command("py", 2, 1)
    for bad in (dict(nodes=0), dict(procs_per_node=0), dict(nodes=True), dict(rdzv_port=70000),
                dict(cpus_per_node=0)):
        with pytest.raises(ValueError):
            train_command(**{"python": "py", "nodes": 2, "procs_per_node": 1, **bad})


def test_threads_per_rank():
    assert [threads_per_rank(c, 4) for c in (1, 4, 7, 8, 32)] == [1, 1, 1, 2, 8]
    assert threads_per_rank(6, 1) == 6
    with pytest.raises(ValueError):
        threads_per_rank(0, 1)


def test_multi_node_command_expands_in_the_job_shell(tmp_path):
    """What the job's shell hands srun: the first node's name and the job id, expanded once there;
    the rule's options after `-m aot`; outside a Slurm job it stops before srun with one message."""
    (tmp_path / "srun").write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done > "$ARGS_OUT"\n')
    (tmp_path / "srun").chmod(0o755)
    line = train_command("py", 2, 4, rdzv_port=29555) + " train --outdir 'a b'"
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "ARGS_OUT": str(tmp_path / "args"), "SLURM_JOB_ID": "4711"}
    subprocess.run(["bash", "-c", line], env=env, check=True)
    host = subprocess.run(["hostname"], capture_output=True, text=True, check=True).stdout.strip()
    args = (tmp_path / "args").read_text().splitlines()
    assert args[:3] == ["--nodes", "2", "--ntasks"]
    assert args[args.index("--rdzv-endpoint") + 1] == f"{host}:29555"
    assert args[args.index("--rdzv-id") + 1] == "4711"
    assert args[-5:] == ["-m", "aot", "train", "--outdir", "a b"]

    (tmp_path / "args").unlink()
    del env["SLURM_JOB_ID"]
    res = subprocess.run(["bash", "-c", line], env=env, capture_output=True, text=True)
    assert res.returncode != 0 and not (tmp_path / "args").exists()
    assert "training on 2 nodes runs inside a Slurm job of 2 nodes" in res.stderr


# ---------------------------------------------------------------------------------------------
# Real runs on the two-node partition


@pytest.fixture(scope="module")
def two_nodes():
    sh.require_slurm()
    try:
        proc = subprocess.run(["sinfo", "-h", "-p", MULTI_PARTITION, "-N", "-o", "%N %T"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        skip_or_fail(f"sinfo failed: {exc}")
    nodes = dict(line.split() for line in proc.stdout.splitlines() if line.strip())
    usable = [n for n, s in nodes.items() if s.rstrip("*~#!%$@^-") in ("idle", "mixed", "allocated", "completing")]
    if len(usable) < 2:
        skip_or_fail(f"no Slurm partition {MULTI_PARTITION!r} with two usable nodes (sinfo: {nodes or 'none'}); "
                     ".ci/slurm-up.sh starts one")
    return sorted(usable)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "digits.zip"
    subprocess.run([sys.executable, "-m", "aot", "data", "digits", "--resolution", "8", "--dest", str(out)],
                   check=True, capture_output=True, env=job_env())
    return out


@pytest.fixture(scope="module")
def reference(digits, tmp_path_factory) -> Path:
    """The same training with the same world size (2 processes) by torchrun, without Slurm."""
    out = tmp_path_factory.mktemp("reference")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "aot",
           *train_args(out, digits)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=job_env(), timeout=900)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    return out


def submit(tmp_path: Path, name: str, nodes: int, procs: int, outdir: Path, data: Path) -> str:
    """sbatch a job of `nodes` nodes (one task each, as the Slurm executor submits `nodes`/`mpi`
    jobs) whose shell runs the launcher's command; returns the job id."""
    script = tmp_path / f"{name}.sh"
    line = train_command(PY, nodes, procs, cpus_per_node=1) + " " + shlex.join(train_args(outdir, data))
    script.write_text(f"#!/bin/bash\nset -eu\n{line}\n")
    proc = subprocess.run(
        ["sbatch", "--parsable", "-p", MULTI_PARTITION, f"--nodes={nodes}", f"--ntasks={nodes}",
         "--cpus-per-task=1", "--mem", "1000", "-t", "15", "--no-requeue", "-J", name,
         "-o", str(tmp_path / f"{name}-%j.out"), "-D", str(tmp_path), str(script)],
        capture_output=True, text=True, env=job_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def job_state(job: str) -> str:
    return sh.slurm_job_states([job]).get(job, "")


def wait_for(job: str, timeout: float = 600) -> str:
    deadline = time.time() + timeout
    while (state := job_state(job)) not in DONE:
        if time.time() > deadline:
            subprocess.run(["scancel", job])
            pytest.fail(f"Slurm job {job} still {state or 'unknown'} after {timeout:.0f} s")
        time.sleep(1)
    return state


def job_output(tmp_path: Path, name: str, job: str) -> str:
    return (tmp_path / f"{name}-{job}.out").read_text(errors="replace")


def wait_for_ticks(outdir: Path, job: str, count: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not ((outdir / "stats.jsonl").exists() and len(ticks(outdir)) >= count):
        state = job_state(job)
        assert state in ("PENDING", "RUNNING", "CONFIGURING", ""), f"job {job} is {state} before tick {count}"
        assert time.time() < deadline, f"job {job} reached no tick {count} in {timeout:.0f} s"
        time.sleep(0.2)


@pytest.mark.slurm
@pytest.mark.slow
def test_two_nodes_match_one_node_and_no_slurm(two_nodes, digits, reference, tmp_path):
    """2 nodes x 1 process (sbatch -N 2, srun + torchrun + c10d) and 1 node x 2 processes under
    Slurm end with the weights of the 2-process run without Slurm, bit for bit."""
    runs = {}
    for name, nodes, procs in (("n2p1", 2, 1), ("n1p2", 1, 2)):
        out = tmp_path / name
        runs[name] = (submit(tmp_path, name, nodes, procs, out, digits), out)
    for name, (job, out) in runs.items():
        assert wait_for(job) == "COMPLETED", job_output(tmp_path, name, job)[-4000:]
        assert_same_weights(final_weights(reference), final_weights(out))
        assert ticks(out) == list(range(1, TICKS + 1))
    # the two-node job really ran one rank on each node
    job, out = runs["n2p1"]
    nodelist = subprocess.run(["squeue", "--states=all", "-h", "-j", job, "-o", "%N"],
                              capture_output=True, text=True).stdout.strip()
    assert nodelist in ("n[1-2]", "n1,n2"), nodelist


@pytest.mark.slurm
@pytest.mark.slow
def test_sigterm_to_the_two_node_job_saves_and_the_resubmitted_job_resumes(two_nodes, digits, reference, tmp_path,
                                                                          record_fault):
    out = tmp_path / "out"
    first = submit(tmp_path, "first", 2, 1, out, digits)
    wait_for_ticks(out, first, 2)
    subprocess.run(["scancel", "--signal=TERM", first], check=True)
    assert wait_for(first) == "FAILED", job_output(tmp_path, "first", first)[-4000:]
    log = job_output(tmp_path, "first", first)
    assert "Stopping (signal 15): state saved at" in log, log[-4000:]
    state = load_training_state(out / "training-state.pt")
    saved_tick = state["cur_tick"]
    assert 2 <= saved_tick < TICKS and state["world_size"] == 2
    assert not (out / "network-final.pt").exists()

    second = submit(tmp_path, "second", 2, 1, out, digits)
    assert wait_for(second) == "COMPLETED", job_output(tmp_path, "second", second)[-4000:]
    # a stop between two tick boundaries ends that tick early, so the resumed run may log one more
    logged = ticks(out)
    assert logged == list(range(1, len(logged) + 1)) and len(logged) in (TICKS, TICKS + 1), logged
    assert_same_weights(final_weights(reference), final_weights(out))
    record_fault("interruption", "two-node Slurm job signalled (`scancel --signal=TERM`)",
                 f"both nodes saved at tick {saved_tick} of {TICKS}; the resubmitted job resumed; same weights")


def node_processes(job: str, node: str) -> tuple[list[int], list[int]]:
    """(the job's task processes on `node`, their slurmstepd), found by the environment Slurm gives tasks."""
    tasks = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = set((proc / "environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        if f"SLURM_JOB_ID={job}".encode() in env and f"SLURMD_NODENAME={node}".encode() in env:
            tasks.append(int(proc.name))
    stepds = set()
    for pid in tasks:
        try:
            ppid = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if (Path("/proc") / str(ppid) / "cmdline").read_bytes().startswith(b"slurmstepd"):
                stepds.add(ppid)
        except (OSError, IndexError, ValueError):
            continue
    return tasks, sorted(stepds)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a killed child of a process that has not reaped it yet is a zombie: dead
    return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def restart_node(node: str) -> None:
    """Start the node's slurmd again (as .ci/slurm-up.sh does) and put the node back in service."""
    pidfile = STATE_ROOT / f"slurmd-{node}.pid"
    try:
        running = pidfile.exists() and alive(int(pidfile.read_text()))
    except (OSError, ValueError):
        running = False
    if not running:
        subprocess.run(["/usr/sbin/slurmd", "-f", "/etc/slurm/slurm.conf", "-N", node], check=True, timeout=60)
    deadline = time.time() + 90
    while True:
        state = subprocess.run(["sinfo", "-h", "-n", node, "-o", "%T"], capture_output=True,
                               text=True).stdout.strip().rstrip("*~#!%$@^-")
        if state in ("idle", "mixed", "allocated"):
            return
        if state.startswith(("down", "drain", "fail")):
            subprocess.run(["scontrol", "update", f"NodeName={node}", "State=RESUME"], capture_output=True)
        assert time.time() < deadline, f"node {node} did not come back ({state})"
        time.sleep(1)


@pytest.mark.slurm
@pytest.mark.slow
def test_a_node_dies_the_job_fails_and_the_retry_resumes(two_nodes, digits, reference, tmp_path, record_fault):
    """Node n2 dies mid-run: its slurmd, slurmstepd and ranks are killed (SIGKILL), and the controller
    marks it DOWN (what slurmctld does after SlurmdTimeout; done here at once). The job ends with
    NODE_FAIL, the state file on disk is a complete one, and the resubmitted job resumes from it."""
    node = two_nodes[-1]
    pidfile = STATE_ROOT / f"slurmd-{node}.pid"
    if not pidfile.exists():
        skip_or_fail(f"no {pidfile}: node {node}'s slurmd was not started by .ci/slurm-up.sh")
    out = tmp_path / "out"
    first = submit(tmp_path, "first", 2, 1, out, digits)
    try:
        wait_for_ticks(out, first, 3)
        tasks, stepds = node_processes(first, node)
        assert tasks and stepds, f"no processes of job {first} on {node}"
        slurmd = int(pidfile.read_text())
        victims = [slurmd, *stepds, *tasks]
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        deadline = time.time() + 30
        while any(alive(p) for p in victims):
            assert time.time() < deadline, "killed processes still alive"
            time.sleep(0.2)
        subprocess.run(["scontrol", "update", f"NodeName={node}", "State=DOWN", "Reason=test: node killed"],
                       check=True)
        final = wait_for(first, timeout=300)
    finally:
        restart_node(node)
    assert final == "NODE_FAIL", job_output(tmp_path, "first", first)[-4000:]
    assert not (out / "network-final.pt").exists()
    state = load_training_state(out / "training-state.pt")  # complete: atomic writes
    saved_tick = state["cur_tick"]
    assert 3 <= saved_tick < TICKS and state["world_size"] == 2

    second = submit(tmp_path, "second", 2, 1, out, digits)
    assert wait_for(second) == "COMPLETED", job_output(tmp_path, "second", second)[-4000:]
    after = ticks(out)
    resumed = len(after) - (TICKS - saved_tick)
    assert after[resumed:] == list(range(saved_tick + 1, TICKS + 1)), after
    assert_same_weights(final_weights(reference), final_weights(out))
    record_fault("interruption", f"node {node} of a two-node Slurm job killed (slurmd, slurmstepd, ranks)",
                 f"job NODE_FAIL, state of tick {saved_tick} intact; the resubmitted job resumed; same weights")


# ---------------------------------------------------------------------------------------------
# Through Snakemake's Slurm executor


SNAKEFILE = """\
localrules: all

rule all:
    input: "model/network-final.pt"

rule train:
    input: data={data!r}
    output: network="model/network-final.pt"
    resources: nodes=2, mpi="srun", tasks=2, cpus_per_task=1, mem_mb=1000, runtime=15,
               slurm_partition={partition!r}
    params: aot={prefix!r}, args={args!r}
    shell: "{{params.aot}} train --outdir model --data {{input.data:q}} {{params.args}} > train.log 2>&1"
"""


@pytest.mark.slurm
@pytest.mark.slow
def test_two_node_training_through_the_snakemake_executor(two_nodes, digits, reference, tmp_path):
    """A rule with resources nodes=2, mpi, tasks=2: the plugin submits --nodes=2 --ntasks=2 and runs
    the rule's shell in the batch step (no srun around it), so the launcher's srun gets both nodes."""
    args = shlex.join(train_args(Path("x"), Path("x"))[5:])  # the options after --outdir/--data
    prefix = train_command(PY, 2, 1, cpus_per_node=1)
    (tmp_path / "Snakefile").write_text(textwrap.dedent(SNAKEFILE.format(
        data=str(digits), partition=MULTI_PARTITION, prefix=prefix, args=args)))
    proc = sh.run_snakemake_on_slurm(tmp_path, tmp_path / "Snakefile", targets=["all"],
                                     extra_args=["--verbose"], timeout=900)
    assert proc.returncode == 0, proc.stdout[-5000:]
    jobs = sh.assert_all_jobs_on_slurm(tmp_path, local_rules={"all"})
    assert [j.rule for j in jobs if j.slurm_jobid] == ["train"]
    submit_line = next(line for line in proc.stdout.splitlines() if line.startswith("sbatch call:"))
    for option in ("--nodes=2", "--ntasks=2", "--cpus-per-task=1", f"-p {MULTI_PARTITION}"):
        assert option in submit_line, submit_line
    assert_same_weights(final_weights(reference), final_weights(tmp_path / "model"))
