"""Run Snakemake through the repository's Slurm profile and read back which jobs Slurm ran.

Used by tests/test_slurm.py and by the end-to-end Slurm tests. Needs a reachable Slurm
controller (`.ci/slurm-up.sh` starts a one-node one); `require_slurm()` skips the calling
test when there is none, except where `AOT_REQUIRE_SLURM=1` (CI, `.ci/run`), where a missing
Slurm is a failure.

    from slurm_helpers import require_slurm, run_snakemake_on_slurm, assert_all_jobs_on_slurm

    require_slurm()
    proc = run_snakemake_on_slurm(tmp_path, REPO / "Snakefile", REPO / "tests/configs/tiny.yaml", ["all"])
    assert proc.returncode == 0, proc.stdout
    jobs = assert_all_jobs_on_slurm(tmp_path, local_rules={"all"})
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLUSTER_PROFILE = REPO / "profiles" / "slurm"
CI_OVERLAY = REPO / "profiles" / "slurm-ci"

# Lines the Slurm executor plugin (2.8) writes to Snakemake's main log.
_SUBMITTED = re.compile(r"^Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (.*)\)\.\s*$")
# a group job (Snakemake's --group-components) is submitted under a UUID, after its members
_SUBMITTED_GROUP = re.compile(r"^Job ([0-9a-f-]{36}) has been submitted with SLURM jobid (\d+) \(log: (.*)\)\.\s*$")
_GROUP_HEADER = re.compile(r"^\[.*\] Group job (\S+) ")
_SUBMITTED_ARRAY = re.compile(
    r"^Submitted array job with Snakemake IDs ([\d,]+) and SLURM job ID (\d+)\. "
    r"The individual task IDs are (\d+)-(\d+)\.")
# Job headers in the same log: "rule NAME:" / "localrule NAME:" followed by "    jobid: N".
_RULE_HEADER = re.compile(r"^(?:\s*\[.*\]\s*)?\s*(local)?rule (\S+):\s*$")
_JOBID = re.compile(r"^\s+jobid: (\d+)\s*$")
# With show-failed-logs the main log quotes a failed job's own log between two rules of "=";
# the job headers inside that quote belong to the job's inner Snakemake, not to this run.
_QUOTE_START = re.compile(r"^Logfile .*:\s*$")
_QUOTE_RULE = "=" * 80


def _own_lines(log: Path) -> Iterator[str]:
    """Lines of a Snakemake main log without the quoted logs of failed jobs."""
    state = "own"  # own -> (Logfile ...:) -> expect -> (====) -> quote -> (====) -> own
    for line in log.read_text(errors="replace").splitlines():
        if state == "quote":
            if line.rstrip() == _QUOTE_RULE:
                state = "own"
            continue
        if state == "expect":
            if line.rstrip() == _QUOTE_RULE:
                state = "quote"
                continue
            state = "own"
        if _QUOTE_START.match(line):
            state = "expect"
            continue
        yield line


_AVAILABLE: dict[tuple[str, str], tuple[bool, str]] = {}


def slurm_available(timeout: float = 15.0) -> tuple[bool, str]:
    """(True, "") when `sinfo` answers and shows a usable node; else (False, why not).

    A missing controller makes `sinfo` retry for ~10 s, so the answer is remembered per
    (PATH, SLURM_CONF)."""
    key = (os.environ.get("PATH", ""), os.environ.get("SLURM_CONF", ""))
    if key not in _AVAILABLE:
        _AVAILABLE[key] = _probe_slurm(timeout)
    return _AVAILABLE[key]


def remember_slurm_available(answer: tuple[bool, str]) -> None:
    """Take `answer` as slurm_available()'s under the current PATH and SLURM_CONF."""
    _AVAILABLE[(os.environ.get("PATH", ""), os.environ.get("SLURM_CONF", ""))] = answer


def _probe_slurm(timeout: float) -> tuple[bool, str]:
    sinfo = shutil.which("sinfo")
    if sinfo is None:
        return False, "no Slurm: `sinfo` not on PATH (start one with .ci/slurm-up.sh)"
    try:
        proc = subprocess.run([sinfo, "-h", "-o", "%T"], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"no Slurm: `sinfo` did not answer within {timeout:.0f} s"
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        return False, f"no Slurm controller reachable: `sinfo` failed: {msg[-1] if msg else proc.returncode}"
    states = {s.strip().rstrip("*~#!%$@^-") for s in proc.stdout.split()}
    if not states & {"idle", "mixed", "allocated", "completing"}:
        return False, f"no usable Slurm node (sinfo node states: {sorted(states) or 'none'})"
    return True, ""


def slurm_config(key: str) -> str | None:
    """One value of `scontrol show config` (e.g. "ProctrackType", "MinJobAge"), or None."""
    try:
        proc = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in proc.stdout.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == key:
            return value.strip()
    return None


def step_signals_reach_rule_commands() -> bool:
    """Whether `scancel --signal` / `sbatch --signal` (without B:) reach a rule's command.

    Snakemake's Slurm jobs run `srun <snakemake> ...` and the rule's shell below it. With
    proctrack/cgroup (most production clusters) Slurm signals only the step's task, i.e. that
    inner Snakemake; with proctrack/linuxproc or pgid every process of the step gets it.
    """
    return (slurm_config("ProctrackType") or "") != "proctrack/cgroup"


def slurm_required() -> bool:
    """True where the Slurm tests must run instead of being skipped: AOT_REQUIRE_SLURM=1
    (.ci/run sets it; CI=true alone, as every CI service sets, does not demand a Slurm)."""
    return os.environ.get("AOT_REQUIRE_SLURM", "") == "1"


def require_slurm() -> None:
    """Skip the calling test when no Slurm is reachable; fail instead in CI."""
    import pytest

    ok, why = slurm_available()
    if ok:
        return
    if slurm_required():
        pytest.fail(f"{why} (AOT_REQUIRE_SLURM=1: Slurm tests must not be skipped)",
                    pytrace=False)
    pytest.skip(why)


def snakemake_command(snakefile: str | os.PathLike | None = None,
                      configfile: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
                      targets: Iterable[str] = (), extra_args: Iterable[str] = (),
                      workdir: str | os.PathLike | None = None, ci_overlay: bool = True) -> list[str]:
    """The Snakemake command line used by `run_snakemake_on_slurm` (for logging or reuse)."""
    cmd = [sys.executable, "-m", "snakemake", "--profile", str(CLUSTER_PROFILE)]
    if ci_overlay:
        # CI runs without the workflow profile (see profiles/slurm-ci/config.yaml).
        cmd += ["--profile", str(CI_OVERLAY), "--workflow-profile", "none"]
    if workdir is not None:
        cmd += ["--directory", str(workdir)]
    if snakefile is not None:
        cmd += ["--snakefile", str(snakefile)]
    if configfile is not None:
        files = [configfile] if isinstance(configfile, (str, os.PathLike)) else list(configfile)
        cmd += ["--configfile", *map(str, files)]
    cmd += list(extra_args)
    targets = list(targets)
    if targets:
        cmd += ["--", *targets]
    return cmd


def job_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for Snakemake and its Slurm jobs (sbatch --export=ALL passes it on):
    this interpreter's bin directory first on PATH, as with an activated venv, so that `python`
    in rule commands is the test's Python; no SLURM_*/SBATCH_*/SRUN_* variables of a
    surrounding job."""
    run_env = dict(os.environ if env is None else env)
    bindir = str(Path(sys.executable).parent)
    run_env["PATH"] = os.pathsep.join(p for p in (bindir, run_env.get("PATH", "")) if p)
    for key in list(run_env):
        if key.startswith(("SLURM_", "SBATCH_", "SRUN_")):
            del run_env[key]
    return run_env


def recording_sbatch(bindir: str | os.PathLike, calls: str | os.PathLike,
                     env: dict[str, str] | None = None) -> dict[str, str]:
    """An environment whose `sbatch` appends its arguments (one line per call) to `calls` and then
    runs the real sbatch: the submissions of a run, exactly as the executor plugin made them."""
    real = shutil.which("sbatch")
    if real is None:
        raise RuntimeError("no sbatch on PATH")
    bindir = Path(bindir)
    bindir.mkdir(parents=True, exist_ok=True)
    wrapper = bindir / "sbatch"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {shlex.quote(str(calls))}\n'
                       f'exec {shlex.quote(real)} "$@"\n')
    wrapper.chmod(0o755)
    run_env = dict(os.environ if env is None else env)
    run_env["PATH"] = os.pathsep.join([str(bindir), run_env.get("PATH", "")])
    return run_env


def run_snakemake_on_slurm(workdir: str | os.PathLike, snakefile: str | os.PathLike | None = None,
                           configfile: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
                           targets: Iterable[str] = (), extra_args: Iterable[str] = (),
                           timeout: float = 1800, ci_overlay: bool = True,
                           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run Snakemake in `workdir` with profiles/slurm (+ the CI overlay): every job is an sbatch job.

    Returns the CompletedProcess with stdout and stderr merged into `.stdout` (text); the
    same text is appended to `workdir/snakemake-slurm.out`. Does not raise on failure.
    `extra_args` go before the targets (e.g. ["--forceall"], ["--retries", "3"]).
    The environment is `job_environment(env)` plus src/ on PYTHONPATH; sbatch passes it on.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = snakemake_command(snakefile, configfile, targets, extra_args, workdir, ci_overlay)
    run_env = job_environment(env)
    src = str(REPO / "src")
    run_env["PYTHONPATH"] = os.pathsep.join(p for p in (src, run_env.get("PYTHONPATH", "")) if p)
    try:
        proc = subprocess.run(cmd, cwd=workdir, env=run_env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        proc = subprocess.CompletedProcess(cmd, 124, out + f"\n[timed out after {timeout:.0f} s]\n")
    with open(workdir / "snakemake-slurm.out", "a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n" + proc.stdout + f"\n[exit {proc.returncode}]\n")
    return proc


@dataclass(frozen=True)
class SlurmJob:
    """One Snakemake job as the main log records it."""
    log: Path                # the Snakemake main log it came from (one per invocation)
    snakemake_jobid: int
    rule: str
    local: bool              # a localrule: ran inside Snakemake, never submitted
    slurm_jobid: str | None  # "1234", or "1234_5" for an array task; None if not submitted


def main_logs(workdir: str | os.PathLike) -> list[Path]:
    """Snakemake's main logs in `workdir`, oldest first."""
    return sorted((Path(workdir) / ".snakemake" / "log").glob("*.snakemake.log"))


def jobs_from_log(log: str | os.PathLike) -> list[SlurmJob]:
    """Every job started in one Snakemake invocation, with its Slurm job id (None if local).
    The members of a group job get the group's Slurm id; groups are matched to their submissions
    in the order the log prints them."""
    log = Path(log)
    rules: dict[int, tuple[str, bool]] = {}
    slurm: dict[int, str] = {}
    order: list[int] = []
    pending: tuple[str, bool] | None = None
    groups: list[list[int]] = []  # members of the group jobs printed and not yet submitted
    in_group = False
    for line in _own_lines(log):
        if _GROUP_HEADER.match(line):
            groups.append([])
            in_group = True
            continue
        m = _RULE_HEADER.match(line)
        if m:
            if not line.startswith(" "):
                in_group = False
            pending = (m.group(2), m.group(1) is not None)
            continue
        m = _JOBID.match(line)
        if m and pending is not None:
            jid = int(m.group(1))
            if jid not in rules:
                order.append(jid)
            rules[jid] = pending
            if in_group and groups:
                groups[-1].append(jid)
            pending = None
            continue
        m = _SUBMITTED.match(line)
        if m:
            slurm[int(m.group(1))] = m.group(2)
            continue
        m = _SUBMITTED_GROUP.match(line)
        if m and groups:
            for jid in groups.pop(0):
                slurm[jid] = m.group(2)
            continue
        m = _SUBMITTED_ARRAY.match(line)
        if m:
            ids = [int(x) for x in m.group(1).split(",")]
            first = int(m.group(3))
            for k, jid in enumerate(ids):
                slurm[jid] = f"{m.group(2)}_{first + k}"
    return [SlurmJob(log, jid, rules[jid][0], rules[jid][1], slurm.get(jid)) for jid in order]


def slurm_jobs_from_logs(workdir: str | os.PathLike) -> list[SlurmJob]:
    """All jobs of all Snakemake invocations in `workdir` (retries appear once per attempt
    only in the Slurm ids: a job re-submitted keeps its Snakemake id; see `slurm_job_ids_from_logs`)."""
    return [job for log in main_logs(workdir) for job in jobs_from_log(log)]


def slurm_job_ids_from_logs(workdir: str | os.PathLike) -> dict[str, str]:
    """{slurm job id: rule} for every sbatch submission recorded in `workdir`'s Snakemake logs
    (every attempt of a retried job has its own id)."""
    ids: dict[str, str] = {}
    for log in main_logs(workdir):
        rules = {job.snakemake_jobid: job.rule for job in jobs_from_log(log)}
        for job in jobs_from_log(log):
            if job.slurm_jobid is not None and "_" not in job.slurm_jobid:
                ids.setdefault(job.slurm_jobid, job.rule)
        for line in _own_lines(log):
            m = _SUBMITTED.match(line)
            if m:
                ids[m.group(2)] = rules.get(int(m.group(1)), "?")
                continue
            m = _SUBMITTED_ARRAY.match(line)
            if m:
                first = int(m.group(3))
                for k, jid in enumerate(int(x) for x in m.group(1).split(",")):
                    ids[f"{m.group(2)}_{first + k}"] = rules.get(jid, "?")
    return ids


def slurm_log_files(workdir: str | os.PathLike) -> dict[str, Path]:
    """{slurm job id: log file} from .snakemake/slurm_logs (kept by the profile's
    slurm-keep-successful-logs)."""
    root = Path(workdir) / ".snakemake" / "slurm_logs"
    return {p.stem: p for p in root.rglob("*.log")} if root.is_dir() else {}


def slurm_job_states(job_ids: Iterable[str]) -> dict[str, str]:
    """{job id: state} from `squeue --states=all` (finished jobs stay for MinJobAge seconds)."""
    job_ids = [str(j) for j in job_ids]
    if not job_ids:
        return {}
    proc = subprocess.run(["squeue", "--states=all", "-h", "-o", "%i|%T", "-j", ",".join(job_ids)],
                          capture_output=True, text=True, timeout=60)
    states = {}
    for line in proc.stdout.splitlines():
        if "|" in line:
            jid, state = line.split("|", 1)
            states[jid.strip()] = state.strip()
    return states


def assert_all_jobs_on_slurm(workdir: str | os.PathLike, local_rules: Iterable[str] = ("all",),
                             check_states: bool = True) -> list[SlurmJob]:
    """Assert that every job in `workdir`'s Snakemake logs, except those of `local_rules`, was
    submitted with sbatch, that Slurm knows each id (when `check_states`) and that the last
    attempt of each job completed. Returns the jobs."""
    local_rules = set(local_rules)
    jobs = slurm_jobs_from_logs(workdir)
    assert jobs, f"no Snakemake jobs found in the logs under {Path(workdir) / '.snakemake' / 'log'}"
    not_submitted = [f"{j.rule} (jobid {j.snakemake_jobid}, {j.log.name})" for j in jobs
                     if j.slurm_jobid is None and j.rule not in local_rules]
    assert not not_submitted, f"jobs that did not go through sbatch: {not_submitted}"
    wrongly_submitted = [j.rule for j in jobs if j.slurm_jobid is not None and j.rule in local_rules]
    assert not wrongly_submitted, f"local rules submitted to Slurm: {wrongly_submitted}"
    if check_states:
        ids = slurm_job_ids_from_logs(workdir)
        states = slurm_job_states(ids)
        unknown = sorted(set(ids) - set(states), key=lambda s: [int(x) for x in s.split("_")])
        assert not unknown, (f"Slurm does not know job ids {unknown} "
                             "(MinJobAge too low, or they did not come from this cluster)")
        for job in jobs:
            if job.slurm_jobid is not None:
                assert states[job.slurm_jobid] == "COMPLETED", (
                    f"last attempt of {job.rule} (Slurm job {job.slurm_jobid}) is "
                    f"{states[job.slurm_jobid]}, not COMPLETED")
    return jobs


# ---------------------------------------------------------------------------------------------
# Partitions, jobs and the sbatch lines of a run (tests/test_cluster.py)


def _minutes(value: str) -> int | None:
    """Slurm's time format ([D-]HH:MM:SS, MM:SS, MM) in whole minutes; None for UNLIMITED/INFINITE."""
    value = value.strip()
    if not value or value.upper() in ("UNLIMITED", "INFINITE", "NONE"):
        return None
    days, _, rest = value.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if len(parts) == 3:
        h, m, s = parts
    elif len(parts) == 2:
        h, (m, s) = 0, parts
    else:
        h, m, s = 0, parts[0], 0
    return (int(days or 0) * 24 + h) * 60 + m + (1 if s else 0)


def scontrol_show(kind: str, name: str) -> dict[str, str]:
    """`scontrol show -o <kind> <name>` as {key: value} (one record); {} when Slurm does not know it."""
    proc = subprocess.run(["scontrol", "show", "-o", kind, str(name)], capture_output=True, text=True,
                          timeout=30)
    if proc.returncode != 0 or not proc.stdout.strip():
        return {}
    fields: dict[str, str] = {}
    # values may hold spaces only in a few fields we do not read; split on key= boundaries
    for m in re.finditer(r"(\S+?)=(.*?)(?=\s+\S+?=|\s*$)", proc.stdout.strip().splitlines()[0]):
        fields[m.group(1)] = m.group(2)
    return fields


def partition_max_minutes(partition: str) -> int | None:
    """The MaxTime of a partition in minutes (`scontrol show partition`); None when the partition
    does not exist or has no limit."""
    fields = scontrol_show("partition", partition)
    return _minutes(fields["MaxTime"]) if "MaxTime" in fields else None


def job_record(job_id: str) -> dict[str, str]:
    """`scontrol show job` of one job: JobState, Restarts, TimeLimit, StartTime, EndTime, ..."""
    return scontrol_show("job", job_id)


def refusing_sbatch(bindir: str | os.PathLike, calls: str | os.PathLike,
                    env: dict[str, str] | None = None) -> dict[str, str]:
    """An environment whose `sbatch` appends its arguments (one line per call) to `calls` and
    refuses the submission (exit 1): the sbatch lines the executor plugin makes, with nothing run
    (for requests a cluster could not place: GPUs, features, accounts it does not have)."""
    bindir = Path(bindir)
    bindir.mkdir(parents=True, exist_ok=True)
    wrapper = bindir / "sbatch"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {shlex.quote(str(calls))}\n'
                       'echo "sbatch: error: refused by the test (lines recorded only)" >&2\nexit 1\n')
    wrapper.chmod(0o755)
    run_env = dict(os.environ if env is None else env)
    run_env["PATH"] = os.pathsep.join([str(bindir), run_env.get("PATH", "")])
    return run_env


@dataclass(frozen=True)
class Submission:
    """One recorded sbatch call of the executor plugin."""
    line: str
    comment: str          # rule_<rule>[_wildcards_...] or rule_<group>_<rule>
    partition: str | None
    minutes: int | None   # -t
    members: tuple[str, ...]  # --target-jobs of the job-side Snakemake: 'rule:wildcards' each


def parse_sbatch(line: str) -> Submission:
    """The parts of a recorded sbatch line that the tests read (the plugin's own format:
    `--comment rule_..`, `-p P`, `-t MINUTES`, `--wrap=... --target-jobs 'rule:w=..' ...`)."""
    comment = re.search(r"--comment '?([^' ]+)", line)
    partition = re.search(r" -p '?([^' ]+)", line)
    minutes = re.search(r" -t (\d+) ", line)
    members: tuple[str, ...] = ()
    m = re.search(r"--target-jobs (.*?) --", line)
    if m:
        members = tuple(re.findall(r"'([^']+)'", m.group(1)))
    return Submission(line, comment.group(1) if comment else "", partition.group(1) if partition else None,
                      int(minutes.group(1)) if minutes else None, members)


def sbatch_calls(calls: str | os.PathLike) -> list[Submission]:
    """Every recorded sbatch call in `calls` (see recording_sbatch, refusing_sbatch), in order."""
    path = Path(calls)
    return [parse_sbatch(line) for line in path.read_text().splitlines()] if path.exists() else []


# A segment of a resumable job's log (logs/<run>/segments/...): each run of the rule's command
# starts with this line (workflow/rules/common.smk, segment_words).
SEGMENT_HEADER = re.compile(r"^== segment (\S+): Slurm job (\S+), restart (\d+), host (\S+)$")


@dataclass(frozen=True)
class Segment:
    time: str
    job: str
    restart: int
    host: str
    text: str  # the lines after the header, up to the next one


def log_segments(path: str | os.PathLike) -> list[Segment]:
    """The segments of a kept log, oldest first ([] when the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    out: list[Segment] = []
    head: re.Match | None = None
    body: list[str] = []
    for line in path.read_text(errors="replace").splitlines():
        m = SEGMENT_HEADER.match(line)
        if m:
            if head is not None:
                out.append(Segment(head.group(1), head.group(2), int(head.group(3)), head.group(4),
                                   "\n".join(body)))
            head, body = m, []
        elif head is not None:
            body.append(line)
    if head is not None:
        out.append(Segment(head.group(1), head.group(2), int(head.group(3)), head.group(4), "\n".join(body)))
    return out


@dataclass
class DryRunJob:
    """One job of a dry run's output (`snakemake -n`)."""
    rule: str
    group: str | None
    wildcards: dict[str, str]
    inputs: list[str]
    outputs: list[str]


def dry_run_jobs(text: str) -> list[DryRunJob]:
    """The jobs a dry run prints, with their group id (`Group job <id>`), wildcards, inputs, outputs."""
    out: list[DryRunJob] = []
    group: str | None = None
    current: DryRunJob | None = None
    for line in text.splitlines():
        m = re.search(r"\] Group job (\S+) ", line)
        if m:
            group, current = m.group(1), None
            continue
        m = re.match(r"^(\s*)(?:local)?rule (\S+):\s*$", line)
        if m:
            if not m.group(1):
                group = None
            current = DryRunJob(m.group(2), group, {}, [], [])
            out.append(current)
            continue
        if current is None:
            continue
        m = re.match(r"^\s+(input|output|wildcards): (.*)$", line)
        if not m:
            continue
        if m.group(1) == "wildcards":
            current.wildcards = dict(kv.split("=", 1) for kv in re.split(r", (?=\w+=)", m.group(2)))
        else:
            getattr(current, m.group(1) + "s").extend(p.strip() for p in m.group(2).split(", "))
    return out
