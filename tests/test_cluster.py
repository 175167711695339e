"""What a cluster imposes on the workflow, imposed for real on the CI Slurm (`.ci/slurm-up.sh`): real
sbatch, real time limits, real requeues, no mocks. Each test says what it imposed and how it proves
that it landed.

Most tests read one shared run (the `cluster_run` fixture, about four minutes): the tiny config
(tests/configs/tiny.yaml) through the cluster profile and the CI overlay, in partition `short`
(MaxTime 10 minutes, `.ci/slurm-up.sh`), with `walltime.max_minutes` set to that limit and wall times
of 5 minutes per sample set, so that three sets (15 minutes) would not fit one submission but two
do. Its inputs (dataset, networks, FID feature network and reference) are copied from the local
tiny run (`tiny_run`, conftest.py), so the run makes only sample sets and a discriminator, and
every result can be compared with the local run's. Three groups of two sets and one discriminator
run at once, and while they run the fixture

  * requeues group A (`scontrol requeue`, as a preemption does) while its second member samples,
  * moves the end time of group B (`scontrol update EndTime=`) to less than `walltime.signal_s`
    away when its second member starts, and that of the discriminator job when it starts,
  * truncates the network file of group C's second member once its first member has finished (a
    bad input: that member fails with exit 2); the network is put back and the run is repeated.

No job of the run gets a Slurm signal: `--set-resources` replaces the rules' `slurm_extra` (which
would add `--signal=TERM@<signal_s>`) with `--mail-type=NONE`.

"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import slurm_helpers as sh
import yaml
from conftest import RUN, TINY, shared_root, skip_or_fail
from slurm_helpers import REPO

SHORT = os.environ.get("SLURM_CI_SHORT_PARTITION", "short")
MARGIN_S = 60  # walltime.signal_s of the shared run: commands stop this long before their job's end
NO_SIGNAL = "'--mail-type=NONE'"  # the rules' slurm_extra in the shared run: no --signal at all
TIMING_META = ("time_s", "env")  # aot.generate.TIMING_META: when and where a set was made, not what
RESULTS = Path("results") / RUN
TINY_CONFIG = yaml.safe_load(TINY.read_text())
REPEATS = range(TINY_CONFIG["fid"]["repeats"])


# ------------------------------------------------------------------------------------------------
# Paths of the tiny run


def set_files(model: str, key: str) -> list[Path]:
    """A sample set's outputs (relative to the run's folder): every repeat's npz, then every json."""
    return ([RESULTS / "samples" / model / key / f"rep{r}.npz" for r in REPEATS]
            + [RESULTS / "fid" / model / key / f"rep{r}.json" for r in REPEATS])


def set_log(model: str, key: str) -> Path:
    """The kept log of a set's job: every segment (Snakemake removes logs/<run>/generate/...)."""
    return Path("logs") / RUN / "segments" / "generate" / model / f"{key}.log"


def disc_log(model: str, mode: str) -> Path:
    return Path("logs") / RUN / "segments" / "train_discriminator" / f"{model}-{mode}.log"


def disc_dir(model: str, mode: str) -> Path:
    return RESULTS / "dg" / model / mode


def network(model: str) -> Path:
    return RESULTS / "models" / model / "network-final.pt"


def record(path: Path) -> Path:
    """Where `--kept-dir results/<run>/kept` keeps a finished file (aot.kept.record_path)."""
    return RESULTS / "kept" / path


def shard_files(npz: Path) -> list[Path]:
    """The finished shards of a set being made (`X.npz.shards/shard-000000.npz`, ...)."""
    sdir = npz.with_name(npz.name + ".shards")
    return sorted(p for p in sdir.glob("shard-*.npz") if re.fullmatch(r"shard-\d{6}\.npz", p.name))


def sampled(text: str) -> list[str]:
    """Lines of a set's log that show sampling or measuring: progress of a repeat, a written set,
    resumed shards, a measured FID (not the announcement of the set, restoring or keeping)."""
    return [line for line in text.splitlines()
            if re.match(r"generating rep\d+\.npz: |wrote \d+ images |resuming: |measure: Frechet distance \(", line)]


# ------------------------------------------------------------------------------------------------
# Comparing results with the local (uninterrupted) run


def assert_same_set(a: Path, b: Path) -> None:
    """Two sample sets are the same set: images, labels and seeds byte for byte, and the meta except
    when and where it was made (time_s, env)."""
    with np.load(a, allow_pickle=False) as za, np.load(b, allow_pickle=False) as zb:
        assert sorted(za.files) == sorted(zb.files), (a, b)
        for name in ("images", "labels", "seeds"):
            x, y = za[name], zb[name]
            assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), (a, name)
        ma, mb = (json.loads(str(z["meta"].item() if z["meta"].ndim == 0 else z["meta"][0])) for z in (za, zb))
    assert {k: v for k, v in ma.items() if k not in TIMING_META} == \
        {k: v for k, v in mb.items() if k not in TIMING_META}, a


def assert_same_result(a: Path, b: Path) -> None:
    """Two FID results are the same measurement: every field, the FID to the last bit, except when and
    where it was measured (time_s, env) and the hash of the set's meta (which holds its time)."""
    def untimed(p: Path) -> dict:
        d = json.loads(p.read_text())
        for k in TIMING_META:
            d.pop(k, None)
        d.get("identity", {}).pop("samples_meta_sha256", None)
        return d

    ra, rb = untimed(a), untimed(b)
    assert ra["fid"] == rb["fid"], (a, ra["fid"], rb["fid"])
    assert ra == rb, a


def assert_same_discriminator(a: Path, b: Path) -> None:
    import torch

    da, db = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    for part in ("head", "feature_extractor"):
        assert da[part]["state_dict"].keys() == db[part]["state_dict"].keys()
        for k, v in da[part]["state_dict"].items():
            assert torch.equal(v, db[part]["state_dict"][k]), (a, part, k)


def untimed_stats(folder: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if not k.endswith("time_s")}
            for line in (folder / "stats.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------------
# Slurm actions of the tests


def scontrol(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=60)


def slurm_clock(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))


def log_clock(t: float) -> str:
    """How aot.runtime prints an end time."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def cancel_run(calls: Path) -> None:
    """Cancel whatever is left of a run's jobs (by the run's job name). A running aot command
    answers scancel's SIGTERM with exit 75 and a requeue, so pending jobs are cancelled twice."""
    names = {m.group(1) for line in (calls.read_text().splitlines() if calls.exists() else [])
             for m in [re.search(r"--job-name (\S+)", line)] if m}
    for _ in range(3):
        for name in names:
            subprocess.run(["scancel", "--name", name], capture_output=True, timeout=60)
        time.sleep(2)


@contextlib.contextmanager
def cluster_in_turn(tmp_path_factory):
    """Hold the cluster as conftest's `slurm_in_turn` does for a Slurm test (same lock file), for a
    module fixture: pytest sets it up before that function fixture takes the lock, and it must not
    share the cluster with a Slurm test of another worker."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    with open(shared_root(tmp_path_factory) / "slurm-cluster.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


# ------------------------------------------------------------------------------------------------
# The shared run


@dataclass
class Group:
    """A packed group of two sample sets (one Slurm submission) and what happened to it."""
    gid: str
    members: list[tuple[str, str]]  # (model, key)
    first: tuple[str, str] | None = None  # the member that finished first
    inodes: dict[str, int] = field(default_factory=dict)  # of the first member's outputs, when finished
    job: str | None = None
    state: str = "first"
    note: dict = field(default_factory=dict)

    @property
    def second(self) -> tuple[str, str]:
        return next(m for m in self.members if m != self.first)

    def targets(self) -> list[str]:
        return [str(set_files(*m)[-1]) for m in self.members]


@dataclass
class Discriminator:
    model: str
    mode: str
    base: tuple[str, str]  # the sample set it trains on (copied from the local run)
    job: str | None = None
    state: str = "start"
    note: dict = field(default_factory=dict)

    def target(self) -> str:
        return str(disc_dir(self.model, self.mode) / "discriminator.pt")


@dataclass
class ClusterRun:
    work: Path
    local: Path  # the local tiny run (tiny_run)
    limit: int  # the partition's MaxTime, = walltime.max_minutes
    set_minutes: int
    limited: dict[str, list[tuple[str, str]]]  # packed groups of the run's sets
    naive: dict[str, list[tuple[str, str]]]  # the same sets packed under a limit that fits three
    naive_group: str  # a naive group of three sets that the run had to split
    a: Group  # requeued while its second member samples
    b: Group  # end time near when its second member starts
    c: Group  # second member fails on a truncated network
    d: Discriminator  # end time near when it starts
    calls: Path
    first: subprocess.CompletedProcess | None = None
    second: subprocess.CompletedProcess | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    jobs: dict[str, dict[str, str]] = field(default_factory=dict)  # scontrol show job, after the run
    c_after_failure: dict = field(default_factory=dict)

    def path(self, p: Path | str) -> Path:
        return self.work / p

    def targets(self) -> list[str]:
        return [*self.a.targets(), *self.b.targets(), *self.c.targets(), self.d.target()]


def overlay(limit_minutes: int, set_minutes: int) -> dict:
    """The run's cluster settings: partition `short`, its limit, and costs that make every sample
    set and discriminator ask for `set_minutes` (safety 1: start-up + margin = set_minutes - 30 s)."""
    return {
        "site": {"partition": SHORT},
        "walltime": {"max_minutes": limit_minutes, "safety": 1.0, "signal_s": MARGIN_S,
                     "startup_s": 60 * set_minutes - MARGIN_S - 30, "generate_image_nfe_s": 1e-6,
                     "guidance_image_nfe_s": 1e-6, "fid_image_s": 1e-6, "discriminator_image_epoch_s": 1e-6,
                     "other_s": 60},
    }


def snakemake_args() -> list[str]:
    return ["--set-resources", f"generate:slurm_extra={NO_SIGNAL}",
            f"train_discriminator:slurm_extra={NO_SIGNAL}"]


def start_snakemake(work: Path, configs: list[Path], targets: list[str], env: dict, out: Path,
                    extra: list[str] = ()) -> tuple[subprocess.Popen, object]:
    cmd = sh.snakemake_command(REPO / "Snakefile", configs, targets, [*snakemake_args(), *extra], work)
    run_env = sh.job_environment(env)
    run_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), run_env.get("PYTHONPATH", "")) if p)
    fh = open(out, "a")
    fh.write("$ " + " ".join(cmd) + "\n")
    fh.flush()
    return subprocess.Popen(cmd, cwd=work, env=run_env, stdout=fh, stderr=subprocess.STDOUT), fh


def dry_run_groups(folder: Path, configs: list[Path]) -> tuple[dict, list[sh.DryRunJob]]:
    """{group id: [(model, key), ...]} of the plain sample sets of `all`, and every job, by a dry run."""
    folder.mkdir(parents=True, exist_ok=True)
    cmd = sh.snakemake_command(REPO / "Snakefile", configs, ["all"], ["-n", *snakemake_args()], folder)
    proc = subprocess.run(cmd, cwd=folder, env=sh.job_environment(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    jobs = sh.dry_run_jobs(proc.stdout + proc.stderr)
    groups: dict[str, list[tuple[str, str]]] = {}
    for j in jobs:
        if j.rule == "generate" and j.group:
            groups.setdefault(j.group, []).append((j.wildcards["model"], j.wildcards["key"]))
    return {g: sorted(m) for g, m in groups.items()}, jobs


def choose(limited: dict, naive: dict, jobs: list[sh.DryRunJob]) -> tuple[str, Group, Group, Group, Discriminator]:
    """Groups A and B: the two submissions into which the limit splits a naive group of three sets;
    C: another group of two sets of other models (its network is damaged); D: a discriminator whose
    sample set is in none of them."""
    where = {m: g for g, ms in limited.items() for m in ms}
    pairs = {g for g, ms in limited.items() if len(ms) == 2}
    splits = {gid: sorted({where[m] for m in members}) for gid, members in naive.items() if len(members) == 3}
    naive_gid = next((g for g, split in sorted(splits.items()) if len(split) == 2 and set(split) <= pairs), None)
    assert naive_gid, f"no group of three sets that the limit splits into two pairs: {naive} -> {limited}"
    split = splits[naive_gid]
    a, b = (Group(g, limited[g]) for g in split)
    used = {m for m, _ in a.members + b.members}
    c_gid = next((g for g in sorted(pairs - set(split)) if not {m for m, _ in limited[g]} & used), None)
    assert c_gid, f"no pair of sets of other models than {used}: {limited}"
    c = Group(c_gid, limited[c_gid])
    for j in sorted((j for j in jobs if j.rule == "train_discriminator"), key=lambda j: j.outputs[0]):
        sample = next(p for p in j.inputs if "/samples/" in p)
        base = tuple(Path(sample).parts[-3:-1])
        if where.get(base) not in (a.gid, b.gid, c.gid):
            model, mode = Path(j.outputs[0]).parts[-3:-1]
            return naive_gid, a, b, c, Discriminator(model, mode, base)
    raise AssertionError("no discriminator whose sample set is outside the chosen groups")


def copy_inputs(local: Path, work: Path, d: Discriminator) -> None:
    """The run's inputs from the local run, with their times (so that Snakemake finds them current):
    dataset, networks, FID feature network and reference, and the discriminator's sample set."""
    files = [RESULTS / "data" / "dataset.zip", RESULTS / "fid" / "feature-net.pt",
             *(p.relative_to(local) for p in (local / RESULTS / "fid").glob("reference-*.npz")),
             *(p.relative_to(local) for p in (local / RESULTS / "models").glob("*/network-final.pt")),
             *set_files(*d.base)]
    for f in files:
        (work / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(local / f, work / f)


class Interference:
    """What the fixture does to the running jobs; `step()` is called every few hundredths of a second."""

    def __init__(self, run: ClusterRun) -> None:
        self.run = run
        self.saved_network: tuple[Path, Path] | None = None
        self.next_look: dict[str, float] = {}

    def p(self, rel) -> Path:
        return self.run.path(rel)

    def finished(self, member: tuple[str, str]) -> bool:
        return all(self.p(f).exists() for f in set_files(*member))

    def job_of(self, log: Path) -> str | None:
        segs = sh.log_segments(self.p(log))
        return segs[-1].job if segs else None

    def first_done(self, g: Group) -> bool:
        for m in g.members:
            if self.finished(m):
                g.first = m
                g.inodes = {str(f): os.stat(self.p(f)).st_ino for f in set_files(*m)}
                return True
        return False

    def step(self) -> None:
        self.step_requeue(self.run.a)
        self.step_end_time_group(self.run.b)
        self.step_bad_input(self.run.c)
        self.step_end_time_discriminator(self.run.d)

    # A: `scontrol requeue` while the second member has finished shards of a repeat not yet written
    def step_requeue(self, g: Group) -> None:
        if g.state == "first":
            if self.first_done(g):
                g.state = "shard"
            return
        if g.state != "shard":
            return
        second = g.second
        g.job = g.job or self.job_of(set_log(*second))
        if g.job is None:
            return
        npzs = set_files(*second)[:len(REPEATS)]
        for npz in npzs:
            if shard_files(self.p(npz)) and not self.p(npz).exists():
                scontrol("suspend", g.job)  # hold it still while the shards are looked at
                shards = shard_files(self.p(npz))
                if shards and not self.p(npz).exists():
                    scontrol("resume", g.job)
                    res = scontrol("requeue", g.job)
                    g.note.update(repeat=str(npz), shards=len(shards), requeue_rc=res.returncode,
                                  requeue_err=res.stderr.strip(), at=time.time())
                    g.state = "requeued"
                else:
                    scontrol("resume", g.job)
                return
        if self.finished(second):
            g.state = "missed"

    def move_end(self, job: str, note: dict) -> None:
        """Move the job's end time to MARGIN_S - 10 s from now: the command that starts now finds less
        than its --slurm-margin left. The job's limit is put back once it is requeued."""
        rec = sh.job_record(job)
        end = int(time.time()) + MARGIN_S - 10
        res = scontrol("update", f"JobId={job}", f"EndTime={slurm_clock(end)}")
        note.update(end=end, limit=rec.get("TimeLimit"), update_rc=res.returncode, update_err=res.stderr.strip(),
                    squeue_end=subprocess.run(["squeue", "-h", "-j", job, "-o", "%e"], capture_output=True,
                                              text=True, timeout=30).stdout.strip())

    def put_limit_back(self, job: str, note: dict) -> bool:
        if time.monotonic() < self.next_look.get(job, 0.0):
            return False
        self.next_look[job] = time.monotonic() + 0.5  # scontrol at most twice a second
        rec = sh.job_record(job)
        if int(rec.get("Restarts", "0") or 0) < 1:
            return False
        res = scontrol("update", f"JobId={job}", f"TimeLimit={note['limit']}")
        if res.returncode == 0:
            note.update(limit_back_state=rec.get("JobState"))
            return True
        return False

    # B: the end time near as the second member starts
    def step_end_time_group(self, g: Group) -> None:
        if g.state == "first":
            if self.first_done(g):
                g.state = "start"
            return
        self.move_end_once_started(g, set_log(*g.second))

    # C: the second member's network damaged once the first member has finished
    def step_bad_input(self, g: Group) -> None:
        if g.state == "first" and self.first_done(g):
            net = self.p(network(g.second[0]))
            saved = self.p(f"saved-{g.second[0]}-network-final.pt")
            os.replace(net, saved)  # the original (inode and time kept) until the run ends
            tmp = net.with_name(".truncated.tmp")
            tmp.write_bytes(saved.read_bytes()[:4096])
            os.replace(tmp, net)
            self.saved_network = (saved, net)
            g.note.update(network=str(network(g.second[0])), at=time.time())
            g.state = "damaged"

    def restore_network(self) -> None:
        if self.saved_network is not None:
            saved, net = self.saved_network
            os.replace(saved, net)
            self.saved_network = None

    # D: the end time near as the discriminator starts
    def step_end_time_discriminator(self, d: Discriminator) -> None:
        self.move_end_once_started(d, disc_log(d.model, d.mode))

    def move_end_once_started(self, item: Group | Discriminator, log: str) -> None:
        """start -> moved: once the job's log has its first segment, its end time is moved near;
        moved -> done: once the job has been requeued (Restarts >= 1), its time limit is put back."""
        if item.state == "start":
            segs = sh.log_segments(self.p(log))
            if segs:
                item.job = segs[-1].job
                self.move_end(item.job, item.note)
                item.state = "moved"
            return
        if item.state == "moved" and self.put_limit_back(item.job, item.note):
            item.state = "done"


@pytest.fixture(scope="module")
def cluster_run(tiny_run, tmp_path_factory) -> ClusterRun:
    sh.require_slurm()
    limit = sh.partition_max_minutes(SHORT)
    if limit is None:
        skip_or_fail(f"no partition {SHORT!r} with a MaxTime on this Slurm (`.ci/slurm-up.sh` makes it)")
    if limit < 4:
        skip_or_fail(f"partition {SHORT} has MaxTime {limit} min; these tests need at least 4")
    base = tmp_path_factory.mktemp("cluster")
    set_minutes = limit // 2  # two sets fit, three do not
    assert 3 * set_minutes > limit >= 2 * set_minutes
    configs = {}
    for name, limit_minutes in (("limited", limit), ("naive", 3 * set_minutes)):
        configs[name] = base / f"{name}.yaml"
        configs[name].write_text(yaml.safe_dump(overlay(limit_minutes, set_minutes)))
    t0 = time.monotonic()
    with ThreadPoolExecutor(2) as pool:  # two dry runs side by side
        dry = {name: pool.submit(dry_run_groups, base / f"dry-{name}", [TINY, cfg]) for name, cfg in configs.items()}
        (limited, jobs), (naive, _) = dry["limited"].result(), dry["naive"].result()
    naive_gid, a, b, c, d = choose(limited, naive, jobs)
    work = base / "run"
    work.mkdir()
    copy_inputs(tiny_run, work, d)
    run = ClusterRun(work, tiny_run, limit, set_minutes, limited, naive, naive_gid, a, b, c, d,
                     calls=base / "sbatch-calls.txt")
    run.seconds["setup"] = time.monotonic() - t0
    env = sh.recording_sbatch(base / "bin", run.calls)
    out = base / "snakemake.out"
    watch = Interference(run)
    with cluster_in_turn(tmp_path_factory):
        run_on_the_cluster(run, work, [TINY, configs["limited"]], env, out, watch)
    print(f"cluster run: setup {run.seconds['setup']:.0f} s, first run {run.seconds['first']:.0f} s, "
          f"second run {run.seconds['second']:.0f} s; groups A={a.gid} {a.members}, B={b.gid} {b.members}, "
          f"C={c.gid} {c.members}, discriminator {d.model}/{d.mode}; A {a.state} {a.note}, B {b.state} {b.note}, "
          f"C {c.state} {c.note}, D {d.state} {d.note}")
    return run


def run_on_the_cluster(run: ClusterRun, work: Path, configs: list[Path], env: dict, out: Path,
                       watch: Interference) -> None:
    """The two runs of the shared run, with the interference during the first (see the module's
    docstring); the Slurm jobs' final records in run.jobs."""
    c = run.c
    try:
        t0 = time.monotonic()
        proc, fh = start_snakemake(work, configs, run.targets(), env, out)
        with fh:
            while proc.poll() is None:
                watch.step()
                if time.monotonic() - t0 > 1200:
                    proc.kill()
                    break
                time.sleep(0.03)
            proc.wait()
        run.first = subprocess.CompletedProcess(proc.args, proc.returncode, out.read_text())
        run.seconds["first"] = time.monotonic() - t0
        # group C failed: its first member's files are gone from results/ (Snakemake removes the
        # outputs of every member of a failed group); what is there now, before the network is back
        run.c_after_failure = {str(f): (work / f).exists() for m in c.members for f in set_files(*m)}
        run.c_after_failure.update({f"record:{f}": os.stat(work / record(f)).st_ino
                                    for f in (set_files(*c.first) if c.first else []) if (work / record(f)).exists()})
        watch.restore_network()
        t0 = time.monotonic()
        proc, fh = start_snakemake(work, configs, run.targets(), env, out)
        with fh:
            try:
                proc.wait(timeout=900)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        run.second = subprocess.CompletedProcess(proc.args, proc.returncode, out.read_text())
        run.seconds["second"] = time.monotonic() - t0
    finally:
        watch.restore_network()
        if run.second is None or run.second.returncode != 0:
            cancel_run(run.calls)
    run.jobs = {j: sh.job_record(j) for j in sh.slurm_job_ids_from_logs(work)}


def submissions_of(run: ClusterRun, g: Group) -> list[sh.Submission]:
    want = {f"generate:model={m},key={k}" for m, k in g.members}
    return [s for s in sh.sbatch_calls(run.calls) if set(s.members) == want]


def submission_of_discriminator(run: ClusterRun) -> list[sh.Submission]:
    d = run.d
    return [s for s in sh.sbatch_calls(run.calls)
            if s.members == (f"train_discriminator:model={d.model},mode={d.mode}",)]


def completed(run: ClusterRun, job: str) -> None:
    rec = run.jobs.get(job) or sh.job_record(job)
    assert rec.get("JobState") == "COMPLETED", (job, rec.get("JobState"), rec.get("Reason"))


# ------------------------------------------------------------------------------------------------
# 1. A partition whose time limit is shorter than a naive group


@pytest.mark.slurm
@pytest.mark.slow
def test_groups_fit_a_partition_shorter_than_three_sets(cluster_run):
    """Imposed: partition `short` with MaxTime 10 min (`.ci/slurm-up.sh`; read back from `scontrol
    show partition`), `walltime.max_minutes` = that limit and costs of 5 minutes per sample set, so
    three sets (15 min, the profile's `sets=3`) would exceed it. Proved: the run went through that
    partition and completed; every recorded sbatch line asks for `-p short` and at most the limit;
    each group asks for the sum of its members' minutes; a group of three sets that a limit of 15
    minutes gives (dry run) was split into two submissions of two sets here."""
    run = cluster_run
    assert sh.partition_max_minutes(SHORT) == run.limit, "the partition's MaxTime is what the run was given"
    assert run.second is not None and run.second.returncode == 0, run.second.stdout[-6000:] if run.second else ""
    missing = [t for t in run.targets() if not run.path(t).exists()]
    assert not missing, missing

    subs = sh.sbatch_calls(run.calls)
    assert subs, "no sbatch call recorded"
    for s in subs:
        assert s.partition == SHORT and s.minutes is not None and s.minutes <= run.limit, s.line[:400]
        if s.comment.startswith("rule_sets"):
            assert 1 <= len(s.members) < 3 and s.minutes == len(s.members) * run.set_minutes, s.line[:400]
    assert any(len(s.members) == 2 for s in subs), "the limit still lets two sets share a submission"
    # the naive packing would have put three of the run's sets into one submission of 15 minutes
    three = run.naive[run.naive_group]
    assert len(three) == 3 and 3 * run.set_minutes > run.limit
    holders = {s.line for s in subs for m, k in three if f"generate:model={m},key={k}" in s.members}
    assert len(holders) == 2, (three, [sh.parse_sbatch(h).members for h in holders])
    # every Slurm job of the second run completed; of the first, all but group C's (its bad input)
    ids = sh.slurm_job_ids_from_logs(run.work)
    failed = {j for j in ids if run.jobs[j].get("JobState") != "COMPLETED"}
    c_subs = submissions_of(run, run.c)
    assert len(failed) == 1 and len(c_subs) == 2, (failed, {j: run.jobs[j].get("JobState") for j in ids})
    print(f"partition {SHORT}: MaxTime {run.limit} min; submissions: "
          + ", ".join(f"{s.comment} -t {s.minutes} ({len(s.members)})" for s in subs))


@pytest.mark.slurm
def test_fixed_set_runtimes_are_packed_within_the_limit(tmp_path):
    """Imposed: the same partition limit as `walltime.max_minutes`, and `resources.generate.runtime`
    fixed at half of it (what `bench/job_shape.py` calls a fixed runtime), while the work alone would
    let three sets share a submission. Proved (sbatch lines as the plugin writes them, recorded by an
    sbatch that refuses them: nothing runs): no submission asks for more than the limit."""
    sh.require_slurm()
    limit = sh.partition_max_minutes(SHORT)
    if limit is None or limit < 4:
        skip_or_fail(f"no partition {SHORT!r} with a MaxTime of at least 4 minutes")
    fixed = limit // 2
    cfg = overlay(limit, 1)
    cfg["walltime"]["startup_s"] = 1  # by the work, 2 minutes a set: three fit the limit
    cfg["resources"] = {"generate": {"gpus": 0, "cpus": 1, "mem_mb": 2000, "runtime": fixed}}
    (tmp_path / "fixed.yaml").write_text(yaml.safe_dump(cfg))
    work = tmp_path / "w"
    placeholders(work)
    calls = tmp_path / "calls.txt"
    env = sh.refusing_sbatch(tmp_path / "bin", calls)
    sh.run_snakemake_on_slurm(work, REPO / "Snakefile", [TINY, tmp_path / "fixed.yaml"], ["all"], timeout=300,
                              env=env)
    subs = [s for s in sh.sbatch_calls(calls) if s.comment.startswith("rule_sets")]
    assert subs and all(s.minutes == fixed * len(s.members) for s in subs), [s.line[:300] for s in subs]
    too_long = [(s.comment, s.minutes, len(s.members)) for s in subs if s.minutes > limit]
    assert not too_long, f"submissions past the partition's {limit} min: {too_long}"


# ------------------------------------------------------------------------------------------------
# 2. A group requeued while its second member runs


@pytest.mark.slurm
@pytest.mark.slow
def test_group_requeued_during_its_second_member(cluster_run, record_fault):
    """Imposed: `scontrol requeue <job>` of group A's submission (as a preemption with requeue does)
    while its second member is sampling: the job is suspended the moment a finished shard of an
    unwritten repeat appears, checked, resumed and requeued. Proved: the job was requeued once and
    reran under the same id (Slurm's Restarts, the segment headers); the first member was not made
    again: its files are the same inodes as before the requeue (hard links of its records in
    results/<run>/kept), its segment after the requeue says "restored" and has no sampling or
    measuring line; the second member resumed from its shards; every file equals the local run's."""
    run = cluster_run
    a = run.a
    assert a.state == "requeued", (a.state, a.note)
    assert a.note["requeue_rc"] == 0, a.note
    job = a.job
    rec = run.jobs[job]
    assert rec["Restarts"] == "1", rec
    completed(run, job)
    assert len(submissions_of(run, a)) == 1, "submitted once; Slurm requeued it, nothing resubmitted it"

    first, second = a.first, a.second
    for f, ino in a.inodes.items():
        st = os.stat(run.path(f))
        assert st.st_ino == ino, f"{f} was made again (inode {ino} -> {st.st_ino})"
        assert os.stat(run.path(record(Path(f)))).st_ino == ino, f"record of {f}"
    segs = sh.log_segments(run.path(set_log(*first)))
    assert [s.job for s in segs] == [job, job], segs
    assert sampled(segs[0].text), segs[0].text
    assert "restored " in segs[1].text and not sampled(segs[1].text), segs[1].text

    segs = sh.log_segments(run.path(set_log(*second)))
    assert [s.job for s in segs] == [job, job], [(s.job, s.restart) for s in segs]
    repeat = Path(a.note["repeat"]).name
    assert f"wrote {TINY_CONFIG['fid']['num_images']} images to {a.note['repeat']}" not in segs[0].text
    m = re.search(r"^resuming: (\d+) of (\d+) shards already in (\S+)$", segs[1].text, re.M)
    assert m and int(m.group(1)) >= a.note["shards"] and m.group(3).endswith(repeat + ".shards"), segs[1].text

    for member in a.members:
        for f in set_files(*member):
            (assert_same_set if f.suffix == ".npz" else assert_same_result)(run.path(f), run.local / f)
    record_fault("interruption", "`scontrol requeue` of a group of two sample sets while its second member samples",
                 f"requeued once (job {job}, restart 1); first member restored from its records (same inodes, no "
                 f"sampling), second resumed from {a.note['shards']} shard(s); results equal the local run's")


# ------------------------------------------------------------------------------------------------
# 3. A group whose member fails on bad input


@pytest.mark.slurm
@pytest.mark.slow
def test_bad_input_in_a_group_keeps_the_finished_members(cluster_run, record_fault):
    """Imposed: once group C's first member has finished, the network file of its second member is
    replaced by its first 4 KiB (a truncated checkpoint); after the run it is put back (same inode
    and time) and the run repeated. Proved: the second member failed once with exit 2 and one
    `error:` line, nothing requeued it; Snakemake removed the outputs of every member of the failed
    group, but their records stayed; the repeated run restored the first member (same inodes as
    written before the failure, "restored", no sampling or measuring) and made the second; every
    file equals the local run's."""
    run = cluster_run
    c = run.c
    assert c.state == "damaged", (c.state, c.note)
    assert run.first.returncode != 0, "the first run fails on the damaged network"
    first, second = c.first, c.second
    subs = submissions_of(run, c)
    assert len(subs) == 2, [s.line[:200] for s in subs]
    states = [run.jobs[j] for j in sh.slurm_job_ids_from_logs(run.work) if j in run.jobs]
    failed = [r for r in states if r.get("JobState") == "FAILED"]
    assert len(failed) == 1 and failed[0]["Restarts"] == "0", failed  # failed once, not requeued

    segs = sh.log_segments(run.path(set_log(*second)))
    assert len(segs) == 2 and segs[0].job == failed[0]["JobId"], [(s.job, s.restart) for s in segs]
    errors = [line for line in segs[0].text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and c.note["network"] in errors[0], segs[0].text
    assert "requeue" not in segs[0].text and "Traceback" not in segs[0].text, segs[0].text
    group_log = sh.slurm_log_files(run.work)[failed[0]["JobId"]].read_text()
    assert "exit status 2" in group_log, group_log[-3000:]

    # after the failure: the first member's outputs were removed, its records kept
    removed = [f for f in set_files(*first) if not run.c_after_failure[str(f)]]
    assert removed == set_files(*first), run.c_after_failure
    assert "Removing output files of failed job" in run.first.stdout
    for f in set_files(*first):
        assert run.c_after_failure.get(f"record:{f}") == c.inodes[str(f)], (f, run.c_after_failure)

    # the repeated run: restored, not made again
    for f, ino in c.inodes.items():
        assert os.stat(run.path(f)).st_ino == ino, f"{f} was made again"
    segs1 = sh.log_segments(run.path(set_log(*first)))
    assert [s.job for s in segs1][:1] == [failed[0]["JobId"]] and len(segs1) == 2, [(s.job, s.restart) for s in segs1]
    assert sampled(segs1[0].text) and "restored " in segs1[1].text and not sampled(segs1[1].text), segs1[-1].text
    completed(run, segs1[1].job)
    assert segs[1].job == segs1[1].job and "wrote " in segs[1].text, segs[1].text
    for member in c.members:
        for f in set_files(*member):
            (assert_same_set if f.suffix == ".npz" else assert_same_result)(run.path(f), run.local / f)
    record_fault("bad input", "a truncated network file for the second member of a group of two sample sets",
                 "that member failed once (exit 2, one error line), not requeued; the finished member's files "
                 "were restored from their records by the rerun (same inodes, no sampling); results equal the "
                 "local run's")


# ------------------------------------------------------------------------------------------------
# 4. Jobs that only see their end time


def _stopped_for_the_end_time(text: str, job: str, end: int) -> None:
    clock = log_clock(end)
    m = re.search(rf"^Slurm job {job} ends at {re.escape(clock)} \((SLURM_JOB_END_TIME|squeue)\)", text, re.M)
    assert m, text[-3000:]
    assert re.search(rf"^stopping: Slurm job {job} ends at {re.escape(clock)} \({m.group(1)}\), less than "
                     rf"--slurm-margin {MARGIN_S} s from now", text, re.M), text[-3000:]
    assert "exiting with code 75" in text, text[-3000:]
    assert f"requeued Slurm job {job} (restart 1 of" in text, text[-3000:]
    assert "signal" not in text.lower().replace("only a signal", ""), text[-3000:]


@pytest.mark.slurm
@pytest.mark.slow
def test_jobs_stop_for_their_end_time_without_a_signal(cluster_run, record_fault):
    """Imposed: no job of the run is given `--signal` (`--set-resources <rule>:slurm_extra` with a
    harmless `--mail-type=NONE`); the end time of group B's submission (as its second member starts)
    and of the discriminator's job (as it starts) is moved by `scontrol update EndTime=` to 50 s
    away, inside their `--slurm-margin` of 60 s; the limit is put back once the job is requeued.
    Proved: squeue reported the new end time; the commands read it (the log names it and its
    source), stopped for it at a safe point (the discriminator after its first pool of batches,
    with its state saved), exited 75 and requeued their job, which reran under the same id
    (Restarts 1) and completed; the sample sets and the discriminator equal the local run's."""
    run = cluster_run
    b, d = run.b, run.d
    for sub in [*submissions_of(run, b), *submission_of_discriminator(run)]:
        assert "--signal" not in sub.line and "--mail-type=NONE" in sub.line, sub.line[:500]
    assert len(submissions_of(run, b)) == 1 and len(submission_of_discriminator(run)) == 1

    for what, note, job, log in (("group B", b.note, b.job, set_log(*b.second)),
                                 ("discriminator", d.note, d.job, disc_log(d.model, d.mode))):
        assert note.get("update_rc") == 0, (what, note)
        assert note["squeue_end"] == slurm_clock(note["end"]), (what, note)  # the end time landed
        assert run.jobs[job]["Restarts"] == "1", (what, run.jobs[job])
        completed(run, job)
        segs = sh.log_segments(run.path(log))
        assert [s.job for s in segs] == [job, job], (what, [(s.job, s.restart) for s in segs])
        _stopped_for_the_end_time(segs[0].text, job, note["end"])
        assert "stopping: " not in segs[1].text and "exiting with code" not in segs[1].text, segs[1].text

    # group B: the first member kept its files; the second stopped before its first shard
    for f, ino in b.inodes.items():
        assert os.stat(run.path(f)).st_ino == ino, f
    segs = sh.log_segments(run.path(set_log(*b.second)))
    assert "the finished shards of" in segs[0].text and "wrote " not in segs[0].text, segs[0].text
    for member in b.members:
        for f in set_files(*member):
            (assert_same_set if f.suffix == ".npz" else assert_same_result)(run.path(f), run.local / f)

    # the discriminator: saved mid-epoch, resumed, the same weights as the local run's
    segs = sh.log_segments(run.path(disc_log(d.model, d.mode)))
    m = re.search(r"^stopped in epoch (\d+) after (\d+) of (\d+) batches; state saved", segs[0].text, re.M)
    assert m and int(m.group(2)) < int(m.group(3)), segs[0].text
    assert f"resuming discriminator training from epoch {int(m.group(1)) - 1}" in segs[1].text, segs[1].text
    mine, local = run.path(disc_dir(d.model, d.mode)), run.local / disc_dir(d.model, d.mode)
    assert_same_discriminator(mine / "discriminator.pt", local / "discriminator.pt")
    assert untimed_stats(mine) == untimed_stats(local)
    record_fault("interruption", "Slurm end time moved within --slurm-margin of a group's second sample set and of "
                 "a discriminator job, no --signal",
                 "both stopped at a safe point (discriminator state saved mid-epoch), exit 75, requeued themselves "
                 "(restart 1, same job id); results equal the local run's")


@pytest.mark.slurm
@pytest.mark.slow
def test_segment_headers_count_the_restarts(cluster_run):
    """Imposed: the requeues of the shared run (group A, group B, the discriminator). Proved: the
    header of each job's second log segment says restart 1, as Slurm's Restarts does."""
    run = cluster_run
    logs = {run.a.job: set_log(*run.a.second), run.b.job: set_log(*run.b.second),
            run.d.job: disc_log(run.d.model, run.d.mode)}
    for job, log in logs.items():
        assert run.jobs[job]["Restarts"] == "1"
        segs = sh.log_segments(run.path(log))
        assert [(s.job, s.restart) for s in segs] == [(job, 0), (job, 1)], (log, [(s.job, s.restart) for s in segs])


@pytest.mark.slurm
@pytest.mark.slow
def test_scancel_ends_a_job_that_watches_its_clock(tiny_run, tmp_path):
    """Imposed: a plain `scancel <job>` (a user's, or the executor plugin's when Snakemake is
    stopped) of a Slurm job that runs `aot generate` as the rules do (under srun, with
    AOT_SLURM_REQUEUE), while it samples. Proved: the job ends CANCELLED, not requeued."""
    sh.require_slurm()
    out, log = tmp_path / "x.npz", tmp_path / "job.log"
    wrap = (f"srun {sys.executable} -m aot generate --network {tiny_run / network('edm-uncond')} --seeds 0-99999 "
            f"--shard-size 100 --batch 100 --steps 8 --device cpu --threads 1 --out {out}")
    env = sh.job_environment()
    env.update(PYTHONPATH=str(REPO / "src"), AOT_SLURM_REQUEUE="3")
    proc = subprocess.run(["sbatch", "--parsable", "-t", "5", "-o", str(log), "--open-mode=append", "--wrap", wrap],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip().split(";")[0]
    try:
        deadline = time.monotonic() + 180
        while not shard_files(out):
            assert time.monotonic() < deadline, log.read_text() if log.exists() else "no log"
            time.sleep(0.2)
        subprocess.run(["scancel", job], check=True, timeout=60)
        deadline = time.monotonic() + 60
        while True:
            rec = sh.job_record(job)
            if rec.get("JobState") in ("CANCELLED", "FAILED", "COMPLETED") or int(rec.get("Restarts", "0") or 0):
                break
            assert time.monotonic() < deadline, rec
            time.sleep(0.5)
        assert (rec.get("JobState"), rec.get("Restarts")) == ("CANCELLED", "0"), (rec.get("JobState"),
                                                                                  rec.get("Restarts"), log.read_text())
    finally:
        for _ in range(30):  # whatever it does now, end it: SIGKILL leaves the command no requeue
            state = sh.job_record(job).get("JobState")
            if state in ("CANCELLED", "FAILED", "COMPLETED", "TIMEOUT", None):
                break
            if state == "RUNNING":
                subprocess.run(["scancel", "--signal=KILL", "--full", job], capture_output=True, timeout=60)
            else:
                subprocess.run(["scancel", job], capture_output=True, timeout=60)
            time.sleep(1)


# ------------------------------------------------------------------------------------------------
# 5. GPUs x nodes refused by every route; the site's settings on every GPU rule's sbatch line


def tiny_variant(path: Path, **resources: dict | None) -> Path:
    """tests/configs/tiny.yaml with some rules' resources replaced (None: left to the site file)."""
    cfg = yaml.safe_load(TINY.read_text())
    for rule, res in resources.items():
        if res is None:
            cfg["resources"].pop(rule, None)
        else:
            cfg["resources"][rule] = res
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def placeholders(work: Path, skip: tuple[Path, ...] = ()) -> None:
    """Empty stand-ins for the tiny run's inputs, oldest first (Snakemake reads only their times):
    enough for every GPU rule to have a job ready when nothing runs."""
    files = [RESULTS / "data" / "dataset.zip", RESULTS / "fid" / "feature-net.pt",
             RESULTS / "fid" / "reference-offline.npz",
             *(network(m["name"]) for m in TINY_CONFIG["models"]),
             *set_files("edm-uncond", "heun-n8-rho7"), *set_files("aot-uncond", "heun-n6-rho90"),
             RESULTS / "dg" / "aot-uncond" / "aot" / "discriminator.pt"]
    t = time.time() - 3600
    for i, f in enumerate(files):
        if f in skip:
            continue
        (work / f).parent.mkdir(parents=True, exist_ok=True)
        (work / f).write_bytes(b"")
        os.utime(work / f, (t + i, t + i))


ROUTES = ("config", "site file", "--set-resources", "profile")


@pytest.mark.slurm
def test_a_gpu_count_that_breaks_the_batch_is_refused_by_every_route(tmp_path):
    """Imposed: 8 GPUs for training (tiny: batch 64, batch_gpu 32, so 1 or 2 GPUs x nodes keep both)
    through each route: the run's config (`resources.train`), a site file (config/site.yaml in the
    working folder, with a run config that leaves `resources.train` to it), `--set-resources
    train:gpu=8`, and a profile with `set-resources`. Proved, each: Snakemake exits non-zero before
    any sbatch (an sbatch that records every call recorded none), with exactly one `config error:`
    line that names the model, resources.train and the GPUs, and the GPUs x nodes that keep both."""
    sh.require_slurm()
    procs = {}
    for i, route in enumerate(ROUTES):
        work = tmp_path / f"r{i}"
        (work / "config").mkdir(parents=True)
        calls = tmp_path / f"calls{i}.txt"
        env = sh.job_environment(sh.recording_sbatch(tmp_path / f"bin{i}", calls))
        env["PYTHONPATH"] = str(REPO / "src")
        config, extra, profiles = TINY, [], []
        if route == "config":
            config = tiny_variant(tmp_path / "gpu8.yaml", train={"gpus": 8, "cpus": 1, "mem_mb": 2000})
        elif route == "site file":
            config = tiny_variant(tmp_path / "no-train.yaml", train=None)
            (work / "config" / "site.yaml").write_text("resources:\n  train: {gpus: 8}\n")
        elif route == "--set-resources":
            extra = ["--set-resources", "train:gpu=8"]
        else:
            (tmp_path / "profile").mkdir()
            (tmp_path / "profile" / "config.yaml").write_text('set-resources:\n  - "train:gpu=8"\n')
            profiles = ["--profile", str(tmp_path / "profile")]
        cmd = sh.snakemake_command(REPO / "Snakefile", config, ["all"], [*profiles, *extra], work)
        procs[route] = (subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         text=True), calls)
    for route, (proc, calls) in procs.items():
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode != 0, (route, out[-3000:])
        assert not calls.exists() or not calls.read_text().strip(), (route, calls.read_text())
        errors = [line for line in out.splitlines() if line.startswith("config error:")]
        assert len(errors) == 1, (route, out[-3000:])
        line = errors[0]
        # the line names the route: the config's resources.train, or a --set-resources (command line, profile)
        named = (r"--set-resources train \(command line or profile\) and resources\.train"
                 if route in ("--set-resources", "profile") else r"resources\.train")
        assert re.search(rf"models\[[\w-]+\] with {named} gpus=8, nodes=1: batch 64 is not a multiple of "
                         r"batch_gpu 32", line), (route, line)
        assert line.endswith("GPUs x nodes that keep both: 1, 2 in all"), (route, line)


SITE = """\
site:
  account: acct_ci
  partition: gpu_ci
  cpu_partition: cpu_ci
  qos: qos_ci
  constraint: feat_ci
  gpu_model: a100
  gres: {gres}
  cpus_per_gpu: 3
  reservation: resv_ci
  slurm_extra: "--mail-type=FAIL"
"""

GPU_RULES = {"train": 2, "train_features": 1, "reference_stats": 1, "diagnostics": 1, "train_discriminator": 1,
             "generate": 1, "generate_dg": 1}


@pytest.mark.slurm
def test_site_settings_reach_the_sbatch_line_of_every_gpu_rule(tmp_path):
    """Imposed: a site file (config/site.yaml) with account, partition, QOS, constraint, GPU model,
    CPUs per GPU, a reservation and extra sbatch options, over a run config that gives every GPU
    rule GPUs (training 2, the others 1). The CI node has neither GPUs nor those accounts, so the
    plugin's sbatch calls are recorded by an sbatch that refuses them (nothing runs); three runs
    (one with `gres: true`) make a job of every GPU rule ready at once, from empty stand-ins of
    their inputs. Proved, on each GPU rule's recorded line: -A, -p, --qos, -C, --gpus=a100:N (or
    --gres=gpu:a100:N, never both), --cpus-per-task = 3 x N, the extra options and the
    reservation; the job's Slurm signal is still there."""
    sh.require_slurm()
    cfg = tiny_variant(tmp_path / "gpu.yaml", **{
        rule: {**TINY_CONFIG["resources"][rule], "gpus": n} for rule, n in GPU_RULES.items()})
    r = RESULTS
    runs = {  # targets whose jobs are ready at once, given the stand-ins each run leaves out
        "a": ([r / "fid" / "feature-net.pt", network("edm-cond"), r / "diagnostics" / "uncond-heun-n8-rho7.npz"],
              (r / "fid" / "feature-net.pt", r / "fid" / "reference-offline.npz", network("edm-cond")), False),
        "b": ([r / "fid" / "reference-offline.npz"], (r / "fid" / "reference-offline.npz",), True),
        "c": ([set_files("edm-uncond", "heun-n8-rho9")[-1], r / "dg" / "edm-uncond" / "plain" / "discriminator.pt",
               r / "fid" / "aot-uncond" / "dgaot-heun-n6-rho90" / "rep1.json"], (), False),
    }
    procs = {}
    for name, (targets, skip, gres) in runs.items():
        work = tmp_path / name
        placeholders(work, skip)
        (work / "config").mkdir(parents=True, exist_ok=True)
        (work / "config" / "site.yaml").write_text(SITE.format(gres=str(gres).lower()))
        calls = tmp_path / f"calls-{name}.txt"
        env = sh.job_environment(sh.refusing_sbatch(tmp_path / f"bin-{name}", calls))
        env["PYTHONPATH"] = str(REPO / "src")
        cmd = sh.snakemake_command(REPO / "Snakefile", cfg, list(map(str, targets)), [], work)
        procs[name] = (subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True), calls, gres)
    seen = {}
    for name, (proc, calls, gres) in procs.items():
        out, _ = proc.communicate(timeout=600)
        for sub in sh.sbatch_calls(calls):
            rule = next((g for g in sorted(GPU_RULES, key=len, reverse=True)
                         if sub.members and sub.members[0].split(":")[0] == g), None)
            assert rule, (name, sub.line[:300], out[-2000:])
            seen[rule] = (sub, gres)
    assert set(seen) == set(GPU_RULES), (sorted(seen), [p[1].read_text() for p in procs.values() if p[1].exists()])
    for rule, (sub, gres) in seen.items():
        n, line = GPU_RULES[rule], sub.line
        words = line.split(" --wrap=")[0]
        assert " -A acct_ci " in words or " --account acct_ci " in words or "--account=acct_ci" in words, (rule, words)
        assert sub.partition == "gpu_ci", (rule, words)
        assert re.search(r"--qos[ =]'?qos_ci", words) and re.search(r"(-C|--constraint)[ =]'?feat_ci", words), \
            (rule, words)
        if gres:
            assert f"--gres=gpu:a100:{n}" in words and "--gpus" not in words, (rule, words)
        else:
            assert f"--gpus=a100:{n}" in words and "--gres" not in words, (rule, words)
        assert f"--cpus-per-task={3 * n}" in words, (rule, words)
        assert "--mail-type=FAIL" in words and "--reservation=resv_ci" in words, (rule, words)
        assert "--signal=TERM@" in words or rule not in ("train", "generate", "generate_dg", "train_discriminator"), \
            (rule, words)
