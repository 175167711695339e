"""The Slurm profile: its settings, and real runs through sbatch on a reachable Slurm.

Tests marked `slurm` need a Slurm controller (`.ci/slurm-up.sh` starts a one-node cluster);
without one they are skipped with the reason, except where AOT_REQUIRE_SLURM=1 (CI, `.ci/run`),
where they fail. The other tests check the profile files and the log parsing anywhere.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import slurm_helpers as sh
import yaml
from conftest import skip_or_fail
from slurm_helpers import REPO


def _workflow_rules(workdir: Path) -> set[str]:
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--list-rules", "--workflow-profile", "none",
                           "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir)],
                          cwd=workdir, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return set(proc.stdout.split())


def _load(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), path
    return data


def _unquote(value: str) -> str:
    """Profile strings for set-resources are Python expressions: "'--x'" -> "--x"."""
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


# ---------------------------------------------------------------------------------------------
# Profile files (no Slurm needed)


def test_cluster_profile_settings():
    prof = _load(REPO / "profiles" / "slurm" / "config.yaml")
    assert prof["executor"] == "slurm"
    assert isinstance(prof["jobs"], int) and prof["jobs"] >= 1
    # no Snakemake retries: a job that stopped with exit 75 requeues itself in Slurm, and a
    # failed one (exit 2: bad input) is never resubmitted
    assert not prof.get("retries")
    assert prof["rerun-incomplete"] is True and prof["keep-going"] is True
    assert prof["latency-wait"] >= 30
    # job states from squeue: works where accounting (sacct) is off
    assert prof["slurm-status-command"] == "squeue"
    # requeueable jobs: Slurm requeues after node failures and preemptions, and so do the jobs
    assert prof.get("slurm-requeue") is True and not prof.get("slurm-no-requeue")
    # sample sets go three to a Slurm job, one member at a time
    assert prof["group-components"] == ["sets=3", "guided=3"] and prof["resources"] == ["group_slot=1"]
    resources = dict(item.split("=", 1) for item in prof["default-resources"])
    assert int(resources["mem_mb"]) > 0 and "runtime" not in resources  # runtimes: from the work
    # account and partition are the site file's (config/site.yaml), never a made-up value here
    assert "slurm_account" not in resources and "slurm_partition" not in resources
    text = (REPO / "profiles" / "slurm" / "config.yaml").read_text()
    assert "config/site.yaml" in text and "slurm-qos:" not in text.replace("# QOS", "")
    example = yaml.safe_load((REPO / "config" / "site.example.yaml").read_text())
    assert {"account", "partition", "constraint", "gpu_model", "cpus_per_gpu"} <= set(example["site"])


# sbatch options the Slurm plugin sets itself and refuses in slurm_extra (checked here without
# importing the plugin, whose import asks slurmctld for its configuration).
PLUGIN_MANAGED_OPTIONS = re.compile(
    r"(^|\s)(--(job-name|output|error|parsable|export|comment|workdir|chdir|account|partition|mem|"
    r"mem-per-cpu|ntasks|ntasks-per-gpu|cpus-per-task|cpus-per-gpu|time|constraint|qos|nodes|"
    r"clusters|gres|gpus)\b|-[JoeDApntCN](\s|$))")


def test_workflow_profile_resources(tmp_path):
    prof = _load(REPO / "profiles" / "default" / "config.yaml")
    # default-resources here would silently drop account/partition of the user's profile, and
    # set-resources would override what the config decides
    assert "default-resources" not in prof and "set-resources" not in prof
    assert prof["retries"] == 0
    # the time-limit signal comes with the resumable rules' own resources (tests/test_job_shape.py)
    rules = _workflow_rules(tmp_path)
    assert {"train", "generate", "generate_dg", "train_discriminator"} <= rules
    # sbatch options in the configs' slurm_extra are only those the plugin does not manage
    for path in sorted((REPO / "config").glob("*.yaml")):
        for rule, res in ((_load(path) or {}).get("resources") or {}).items():
            extra = str((res or {}).get("slurm_extra", ""))
            assert not PLUGIN_MANAGED_OPTIONS.search(extra), f"{path.name}: {rule}: {extra!r}"


def test_ci_overlay():
    prof = _load(REPO / "profiles" / "slurm-ci" / "config.yaml")
    resources = dict(item.split("=", 1) for item in prof["default-resources"])
    assert _unquote(resources["slurm_partition"]) == "debug"
    assert not {"gpu", "gpus", "gres"} & set(resources)
    assert prof["slurm-status-command"] == "squeue"
    cmd = sh.snakemake_command(targets=["all"], workdir="/w")
    assert cmd[cmd.index("--workflow-profile") + 1] == "none"
    assert cmd[-2:] == ["--", "all"]


def test_ci_scripts_parse():
    for name in ("slurm-up.sh", "slurm-down.sh"):
        script = REPO / ".ci" / name
        assert os.access(script, os.X_OK), f"{script} is not executable"
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


def test_log_parsing(tmp_path):
    logdir = tmp_path / ".snakemake" / "log"
    logdir.mkdir(parents=True)
    (logdir / "2026-01-01T000000.000000.snakemake.log").write_text(textwrap.dedent("""\
        Building DAG of jobs...
        [Thu Jan  1 00:00:00 2026]
        rule make:
            output: out/1.txt
            jobid: 2
            wildcards: i=1
        Job 2 has been submitted with SLURM jobid 41 (log: /w/.snakemake/slurm_logs/rule_make/i_1/41.log).
        [Thu Jan  1 00:00:01 2026]
        Error in rule make:
            jobid: 2
            external_jobid: 41
        Logfile /w/.snakemake/slurm_logs/rule_make/i_1/41.log:
        ================================================================================
        [Thu Jan  1 00:00:00 2026]
        localrule make:
            jobid: 0
        ================================================================================
        Trying to restart job 2.
        [Thu Jan  1 00:00:02 2026]
        rule make:
            output: out/1.txt
            jobid: 2
        Job 2 has been submitted with SLURM jobid 42 (log: /w/.snakemake/slurm_logs/rule_make/i_1/42.log).
        rule pair:
            jobid: 3
        rule pair:
            jobid: 4
        Submitted array job with Snakemake IDs 3,4 and SLURM job ID 50. The individual task IDs are 1-2.
        [Thu Jan  1 00:00:03 2026]
        localrule all:
            input: out/1.txt
            jobid: 0
        """))
    jobs = sh.slurm_jobs_from_logs(tmp_path)
    assert [(j.rule, j.snakemake_jobid, j.local, j.slurm_jobid) for j in jobs] == [
        ("make", 2, False, "42"), ("pair", 3, False, "50_1"), ("pair", 4, False, "50_2"),
        ("all", 0, True, None)]
    assert sh.slurm_job_ids_from_logs(tmp_path) == {
        "41": "make", "42": "make", "50_1": "pair", "50_2": "pair"}


def test_missing_slurm_skips_outside_ci_and_fails_in_ci(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sinfo here
    ok, why = sh.slurm_available()
    assert not ok and "sinfo" in why
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("AOT_REQUIRE_SLURM", raising=False)
    with pytest.raises(pytest.skip.Exception, match="sinfo"):
        sh.require_slurm()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.skip.Exception):  # CI=true alone does not demand Slurm
        sh.require_slurm()
    monkeypatch.setenv("AOT_REQUIRE_SLURM", "1")
    with pytest.raises(pytest.fail.Exception, match="must not be skipped"):
        sh.require_slurm()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.fail.Exception, match="must not be skipped"):
        sh.require_slurm()


def test_fault_tests_fail_instead_of_skipping_in_ci(monkeypatch):
    from conftest import in_ci

    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("AOT_REQUIRE_SLURM", raising=False)
    assert not in_ci()
    with pytest.raises(pytest.skip.Exception, match="no fault here"):
        skip_or_fail("no fault here")
    for name, value in (("CI", "true"), ("AOT_REQUIRE_SLURM", "1")):
        monkeypatch.setenv(name, value)
        assert in_ci()
        with pytest.raises(pytest.fail.Exception, match="no fault here .*must run, not be skipped"):
            skip_or_fail("no fault here")
        monkeypatch.delenv(name)


# ---------------------------------------------------------------------------------------------
# Real runs through sbatch


@pytest.fixture
def slurm():
    sh.require_slurm()


SNAKEFILE = """\
localrules: all

rule all:
    input: "merged.txt"

rule make:
    output: "parts/{i}.txt"
    shell: "echo make {wildcards.i} $SLURM_JOB_ID > {output}"

rule merge:
    input: expand("parts/{i}.txt", i=[1, 2])
    output: "merged.txt"
    threads: 2
    shell: "cat {input} > {output}; echo merge $SLURM_JOB_ID $SLURM_CPUS_PER_TASK >> {output}"
"""


@pytest.mark.slurm
@pytest.mark.slow
def test_every_job_goes_through_sbatch(slurm, tmp_path):
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    proc = sh.run_snakemake_on_slurm(tmp_path, tmp_path / "Snakefile", targets=["all"], timeout=600)
    assert proc.returncode == 0, proc.stdout[-5000:]

    jobs = sh.assert_all_jobs_on_slurm(tmp_path, local_rules={"all"})
    assert sorted(j.rule for j in jobs) == ["all", "make", "make", "merge"]
    ids = sh.slurm_job_ids_from_logs(tmp_path)
    assert sorted(ids.values()) == ["make", "make", "merge"]

    # the job ids seen inside the jobs are those Snakemake reported
    make1, make2, merge = [line.split() for line in (tmp_path / "merged.txt").read_text().splitlines()]
    assert make1[:2] == ["make", "1"] and make2[:2] == ["make", "2"] and merge[0] == "merge"
    assert {make1[2], make2[2], merge[1]} == set(ids)
    assert ids[merge[1]] == "merge"
    assert merge[2] == "2"  # threads: 2 -> --cpus-per-task=2
    logs = sh.slurm_log_files(tmp_path)
    assert set(ids) <= set(logs), "kept Slurm logs"

    # nothing changed: nothing to do, nothing submitted
    again = sh.run_snakemake_on_slurm(tmp_path, tmp_path / "Snakefile", targets=["all"], timeout=300)
    assert again.returncode == 0, again.stdout[-5000:]
    assert "Nothing to be done" in again.stdout
    assert sh.slurm_job_ids_from_logs(tmp_path) == ids


TRAINER = """\
import os, signal, sys, time
from aot.cli import run_command  # what `python -m aot` runs: exit 75 asks Slurm to requeue the job
out, events, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
def log(msg):
    with open(events, "a") as f:
        f.write(f"{os.environ.get('SLURM_JOB_ID')} {msg}\\n")
def train(args):
    stop = []
    for s in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(s, lambda signum, frame: stop.append(signum))
    state = out + ".state"
    step = int(open(state).read()) if os.path.exists(state) else 0
    log(f"start {step}")
    while step < total:
        time.sleep(0.5)
        step += 1
        if stop:
            with open(state + ".tmp", "w") as f:
                f.write(str(step))
            os.replace(state + ".tmp", state)
            log(f"saved {step} after {signal.Signals(stop[0]).name}")
            sys.exit(75)
    with open(out, "w") as f:
        f.write(f"steps {step}\\n")
    log(f"done {step}")
run_command(train, None)
"""

TRAIN_SNAKEFILE = """\
localrules: all

rule all:
    input: "trained.txt"

rule train:
    output: "trained.txt"
    shell: "AOT_SLURM_REQUEUE=2 exec python trainer.py {output} events.log 30"
"""


@pytest.mark.slurm
@pytest.mark.slow
def test_signalled_training_saves_and_requeues_itself(slurm, tmp_path, record_fault):
    """What `--signal=TERM@300` does before the time limit: SIGTERM to the job's steps.

    The job saves and exits 75 and puts itself back into the Slurm queue (`scontrol requeue`,
    aot.runtime.requeue_slurm_job); the same job ID runs again, resumes and completes. One sbatch,
    no Snakemake retry.
    """
    if not sh.step_signals_reach_rule_commands():
        skip_or_fail("ProctrackType=proctrack/cgroup: Slurm signals only the Snakemake inside the "
                     "job, not the rule's command (docs/slurm.md, section 5)")
    (tmp_path / "trainer.py").write_text(TRAINER)
    (tmp_path / "Snakefile").write_text(TRAIN_SNAKEFILE)
    events = tmp_path / "events.log"
    cmd = sh.snakemake_command(tmp_path / "Snakefile", targets=["all"], workdir=tmp_path)
    env = sh.job_environment()
    env["PYTHONPATH"] = str(REPO / "src")
    with open(tmp_path / "snakemake.out", "w") as out:
        run = subprocess.Popen(cmd, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.time() + 180
            while not (events.exists() and "start 0" in events.read_text()):
                assert run.poll() is None, (tmp_path / "snakemake.out").read_text()[-3000:]
                assert time.time() < deadline, "training job did not start"
                time.sleep(0.5)
            first = events.read_text().split()[0]
            time.sleep(2)
            subprocess.run(["scancel", "--signal=TERM", first], check=True)
            rc = run.wait(timeout=420)
        finally:
            if run.poll() is None:
                run.kill()
    output = (tmp_path / "snakemake.out").read_text()
    assert rc == 0, output[-5000:]

    lines = [line.split(maxsplit=1) for line in events.read_text().splitlines()]
    assert lines[0] == [first, "start 0"]
    assert lines[1][0] == first and lines[1][1].startswith("saved ") and lines[1][1].endswith("SIGTERM")
    saved = int(lines[1][1].split()[1])
    assert 0 < saved < 30
    assert lines[2] == [first, f"start {saved}"]  # the same Slurm job, requeued
    assert lines[3] == [first, "done 30"]
    assert (tmp_path / "trained.txt").read_text() == "steps 30\n"

    ids = sh.slurm_job_ids_from_logs(tmp_path)
    assert ids == {first: "train"}  # submitted once
    assert sh.slurm_job_states(ids) == {first: "COMPLETED"}
    assert "Trying to restart" not in output
    sh.assert_all_jobs_on_slurm(tmp_path, local_rules={"all"})
    record_fault("interruption", "Slurm job signalled (`scancel --signal=TERM`, as `--signal=TERM@300` does)",
                 f"saved at step {saved} of 30, exit 75; the job requeued itself (`scontrol requeue`) and "
                 "resumed under the same job ID")


BAD_INPUT_SNAKEFILE = """\
localrules: all

rule all:
    input: "out.txt"

rule bad:
    output: "out.txt"
    shell: "AOT_SLURM_REQUEUE=2 python -m aot generate --network missing.pt --seeds 0-9 --out {output}"
"""


@pytest.mark.slurm
@pytest.mark.slow
def test_bad_input_is_not_resubmitted(slurm, tmp_path, record_fault):
    """A job that fails on bad input (exit 2) fails once: one sbatch, no requeue, no retry."""
    (tmp_path / "Snakefile").write_text(BAD_INPUT_SNAKEFILE)
    proc = sh.run_snakemake_on_slurm(tmp_path, tmp_path / "Snakefile", targets=["all"], timeout=600)
    assert proc.returncode != 0
    ids = sh.slurm_job_ids_from_logs(tmp_path)
    assert list(ids.values()) == ["bad"], ids
    assert sh.slurm_job_states(ids) == {next(iter(ids)): "FAILED"}
    assert "Trying to restart" not in proc.stdout
    log = sh.slurm_log_files(tmp_path)[next(iter(ids))].read_text()
    assert "error: " in log and "missing.pt" in log and "requeue" not in log
    assert not (tmp_path / "out.txt").exists()
    record_fault("bad input", "a rule's command fails with exit 2 inside a Slurm job",
                 "submitted once; not requeued, not retried; no output")


@pytest.mark.slurm
@pytest.mark.slow
def test_tiny_pipeline_on_slurm_matches_the_local_run(slurm, tiny_run, tmp_path):
    """The real DAG (tests/configs/tiny.yaml) through `--profile profiles/slurm` + the CI overlay:
    every job but the local rules is a Slurm job, sample sets go three to a submission (their
    sbatch asks for the sum of the members' wall times), and the measurements equal the local
    run's."""
    from conftest import RUN, TINY, expected_artefacts

    calls = tmp_path / "sbatch-calls.txt"
    env = sh.recording_sbatch(tmp_path / "bin", calls)
    proc = sh.run_snakemake_on_slurm(tmp_path, REPO / "Snakefile", TINY, ["all"], timeout=2700, env=env)
    assert proc.returncode == 0, proc.stdout[-6000:]
    local = {"all", "run_config", "tables", "figures", "curvature", "report",
             *(f"table{i}" for i in range(1, 7)), *(f"figure{i}" for i in range(1, 12))}
    jobs = sh.assert_all_jobs_on_slurm(tmp_path, local_rules=local)
    submitted = [j for j in jobs if j.slurm_jobid]
    ids = {j.slurm_jobid for j in submitted}
    sbatch = calls.read_text().splitlines()
    assert len(sbatch) == len(ids)  # one sbatch per Slurm job: nothing resubmitted
    plain = sum(j.rule == "generate" for j in submitted)
    guided = sum(j.rule == "generate_dg" for j in submitted)
    grouped = {j.slurm_jobid for j in submitted if j.rule in ("generate", "generate_dg")}
    # three sets (each made and measured) per submission, guided sets apart
    assert len(grouped) == -(-plain // 3) + -(-guided // 3)
    assert all("--nodes=1" in line and re.search(r" -t \d+ ", line) for line in sbatch)
    # training's comment is rule_train or rule_train_wildcards_... (not rule_train_features...)
    train = [line for line in sbatch if re.search(r"--comment '?rule_train(_wildcards_|[' ])", line)]
    assert train and all("--signal=TERM@" in line for line in train)
    print(f"tiny on Slurm: {len(jobs)} Snakemake jobs, {len(sbatch)} sbatch submissions")
    missing = [str(p) for p in expected_artefacts(tmp_path) if not p.is_file()]
    assert not missing, missing
    local = sorted((tiny_run / "results" / RUN / "fid").rglob("rep*.json"))
    assert local
    for f in local:
        other = tmp_path / f.relative_to(tiny_run)
        a, b = json.loads(f.read_text()), json.loads(other.read_text())
        assert a["fid"] == pytest.approx(b["fid"], rel=1e-6, abs=1e-9), f.relative_to(tiny_run)
        assert a["seeds"] == b["seeds"] and a["sampler"] == b["sampler"]
    assert (tmp_path / "results" / RUN / "tables" / "table4.md").read_text() == \
        (tiny_run / "results" / RUN / "tables" / "table4.md").read_text()



def _first_sbatch(tmp_path: Path, *set_resources: str, site: str | None = None) -> str:
    """The sbatch line the executor plugin makes for the tiny config's training job, captured by a
    stand-in sbatch that records the call and refuses it (nothing runs)."""
    from conftest import TINY

    calls = tmp_path / "calls.txt"
    bindir = tmp_path / "bin"
    bindir.mkdir(parents=True)
    # the training's input is there, so that its job is the one submitted
    data = tmp_path / "w" / "results" / "tiny" / "data" / "dataset.zip"
    subprocess.run([sys.executable, "-m", "aot", "data", "digits", "--resolution", "8", "--dest", str(data)],
                   check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    (bindir / "sbatch").write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {calls}\necho refused >&2\nexit 1\n')
    (bindir / "sbatch").chmod(0o755)
    env = sh.job_environment()
    env["PATH"] = f"{bindir}:{env['PATH']}"
    configs = [TINY] + ([tmp_path / "site.yaml"] if site else [])
    if site:
        configs[-1].write_text(site)
    extra = ["--set-resources", *set_resources] if set_resources else []
    target = "results/tiny/models/edm-uncond/network-final.pt"
    sh.run_snakemake_on_slurm(tmp_path / "w", REPO / "Snakefile", configs, [target], timeout=300,
                              extra_args=extra, env=env)
    lines = calls.read_text().splitlines() if calls.exists() else []
    train = [line for line in lines if "rule_train" in line]
    assert train, lines
    return train[0]


@pytest.mark.slurm
def test_sbatch_lines_follow_the_overrides(slurm, tmp_path):
    """What reaches sbatch for training: one node, the time-limit signal (replaced when the user
    gives sbatch options of their own: the job then stops in time by its clock, --slurm-margin,
    test_job_shape.py), and one GPU request whichever form the user picks."""
    line = _first_sbatch(tmp_path / "a")
    assert "--nodes=1" in line and re.search(r"--signal=TERM@\d+", line) and "--gpus" not in line

    line = _first_sbatch(tmp_path / "b", "train:gpu=2", "train:cpus_per_task=4",
                         "train:slurm_extra='--mail-type=FAIL'")
    assert "--gpus=2" in line and "--gres" not in line and "--cpus-per-task=4" in line
    assert "--mail-type=FAIL" in line and "--signal" not in line and "--nodes=1" in line

    line = _first_sbatch(tmp_path / "c", "train:gres='gpu:a100:2'")
    assert "--gres=gpu:a100:2" in line and "--gpus" not in line

    line = _first_sbatch(tmp_path / "d", site="resources:\n  train: {gpus: 2, gres: true, gpu_model: a100}\n")
    assert "--gres=gpu:a100:2" in line and "--gpus" not in line
