"""The job shape on a cluster, from dry runs: how many Slurm submissions the paper needs, what each
asks for (wall time from the work, GPUs, nodes, threads) and that overrides reach the command.
The same requests through the real Slurm are in test_slurm.py."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PAPER = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
SCHEMA = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())

sys.path.insert(0, str(ROOT / "bench"))
from job_shape import LOCAL, dry_run, jobs, submissions  # noqa: E402


@pytest.fixture(scope="module")
def paper_slurm() -> str:
    return dry_run("all")


def test_paper_run_is_at_most_250_slurm_jobs(paper_slurm):
    js = jobs(paper_slurm)
    sets = [j for j in js if j["rule"] in ("generate", "generate_dg")]
    # one job per sample set makes all its repeats and measures them: no FID job of its own
    assert not any(j["rule"].startswith("fid") for j in js)
    assert all("--fid-out " in j["shell"] for j in sets)
    per_group = 3  # profiles/slurm: group-components sets=3, guided=3
    plain = sum(j["rule"] == "generate" for j in sets)
    groups = len(set(re.findall(r"\] Group job (\w+)", paper_slurm)))
    # at most three sets a submission, packed within the time limit; the paper's sets fit three to a
    # group, and no set of another target (the pool-size and significance studies') takes a place
    # in `all`'s groups: the fewest submissions
    assert groups == math.ceil(plain / per_group) + math.ceil((len(sets) - plain) / per_group)
    n = len(submissions(paper_slurm))
    assert n <= 250, n
    # every set (EDM's published networks over Tables 4 and 5 too) is in a packed group (setsN,
    # guidedN), none in a group of its own outside the packing (packed_sets in common.smk)
    assert all(re.fullmatch(r"(sets|guided)\d+", j["group_name"] or "") for j in sets), \
        sorted({j["group_name"] for j in sets})
    assert any(j["wildcards"].get("model") == "edm-cond-vp" and j["wildcards"].get("key") == "heun-n4-rho243"
               for j in sets)
    others = [j["rule"] for j in js if j["group"] is None and not LOCAL.fullmatch(j["rule"])]
    assert sorted(set(others)) == ["diagnostics", "prepare_dataset", "reference_stats", "train",
                                   "train_discriminator"], others
    print(f"paper: {len(js)} Snakemake jobs, {n} Slurm submissions ({groups} grouped)")


def walltime(**over) -> dict:
    defaults = {k: v["default"] for k, v in SCHEMA["properties"]["walltime"]["properties"].items()}
    return {**defaults, **PAPER.get("walltime", {}), **over}


def minutes(work_s: float, w: dict, margin_s: float = 0) -> int:
    return max(1, min(w["max_minutes"], math.ceil((w["safety"] * (w["startup_s"] + work_s) + margin_s) / 60)))


def test_wall_times_follow_the_work(paper_slurm):
    """Each job's runtime is safety x (start-up + images x NFE x cost), in minutes; a sample set
    holds all its repeats; training is capped at the cluster's longest job."""
    w = walltime()
    images = PAPER["fid"]["num_images"] * PAPER["fid"]["repeats"]
    seen = set()
    for j in jobs(paper_slurm):
        res = j["resources"]
        if j["rule"] in ("generate", "generate_dg"):
            # the key is not printed with resources: every set's runtime must be the formula's
            # value (sampling, then the FID of its images) for one of the configured step counts
            cost = w["generate_image_nfe_s" if j["rule"] == "generate" else "guidance_image_nfe_s"]
            allowed = {minutes(images * ((2 * n - 1) * cost + w["fid_image_s"]), w, w["signal_s"])
                       for n in range(2, 200)}
            assert int(res["runtime"]) in allowed, res
            seen.add(j["rule"])
        elif j["rule"] == "train":
            assert int(res["runtime"]) == w["max_minutes"]  # 200 Mimg is days: capped, then requeued
            seen.add("train")
    assert seen == {"generate", "generate_dg", "train"}


def test_wall_time_of_one_set_exactly(tmp_path):
    """The 18-step (NFE 35) set of the paper's EDM baseline, printed with its key."""
    out = dry_run("-p", "results/paper/fid/edm-uncond/heun-n18-rho7/rep0.json", "--forceall")
    w = walltime()
    images = PAPER["fid"]["num_images"] * PAPER["fid"]["repeats"]
    gen = [j for j in jobs(out) if j["rule"] == "generate"]
    assert len(gen) == 1
    work = images * (35 * w["generate_image_nfe_s"] + w["fid_image_s"])
    assert int(gen[0]["resources"]["runtime"]) == minutes(work, w, w["signal_s"])
    # the whole set in one job: seeds of all repeats, one output per repeat, each measured
    assert f"--seeds 0-{images - 1}" in gen[0]["shell"]
    outs = re.search(r"--out (.*?) --fid-ref", gen[0]["shell"]).group(1).split()
    assert outs == [f"results/paper/samples/edm-uncond/heun-n18-rho7/rep{r}.npz" for r in range(3)]
    fids = re.search(r"--fid-out (.*?) --fid-features", gen[0]["shell"]).group(1).split()
    assert fids == [f"results/paper/fid/edm-uncond/heun-n18-rho7/rep{r}.json" for r in range(3)]
    assert "--fid-ref results/paper/fid/reference-cifar10-precomputed.npz" in gen[0]["shell"]


def test_site_costs_change_the_request(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text("walltime: {generate_image_nfe_s: 1.0e-4, safety: 1.5, startup_s: 60}\n")
    out = dry_run("results/paper/fid/edm-uncond/heun-n18-rho7/rep0.json", "--forceall",
                  "--configfile", str(site))
    gen = [j for j in jobs(out) if j["rule"] == "generate"][0]
    w = walltime(generate_image_nfe_s=1.0e-4, safety=1.5, startup_s=60)
    work = 150_000 * (35 * 1.0e-4 + w["fid_image_s"])
    assert int(gen["resources"]["runtime"]) == minutes(work, w, w["signal_s"]) == 24


TRAIN_TARGET = "results/paper/models/aot-uncond/network-final.pt"


def train_job(*args: str) -> dict:
    out = dry_run("-p", TRAIN_TARGET, *args)
    return [j for j in jobs(out) if j["rule"] == "train"][0]


def test_training_follows_the_jobs_resources():
    """One source of truth: the launcher, the per-rank threads and the request all follow the
    job's resources, also when --set-resources overrides the config."""
    base = train_job()
    r = PAPER["resources"]["train"]
    assert base["resources"]["gpu"] == str(r["gpus"]) and base["resources"]["nodes"] == "1"
    assert f"--nproc-per-node {r['gpus']} -m aot train" in base["shell"]
    assert f"--threads {r['cpus'] // r['gpus']}" in base["shell"]
    assert "--signal=TERM@300" in base["resources"]["slurm_extra"]

    over = train_job("--set-resources", "train:gpu=2", "train:cpus_per_task=64")
    assert over["resources"]["gpu"] == "2"
    assert "--nproc-per-node 2 -m aot train" in over["shell"] and "--threads 32" in over["shell"]


def test_a_gpu_count_that_changes_the_recipe_is_refused():
    """8 GPUs would split the conditional models' batch 128 into 16 per GPU, below B = 32: refused
    before any job, naming the keys and the GPU counts that keep the recipe (no silent new B)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(ROOT / "Snakefile"), "--directory", tmp,
               "--set-resources", "train:gpu=8", "--", TRAIN_TARGET]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert ("config error: models[edm-cond] with --set-resources train (command line or profile) and "
            "resources.train gpus=8, nodes=1: batch 128 is not a multiple of batch_gpu 32 x 8 GPU(s) (16 per GPU)"
            ) in out, out[-2000:]
    assert "GPUs x nodes that keep both: 1, 2, 4 in all" in out


def test_user_slurm_extra_reaches_sbatch_and_the_job_keeps_its_clock():
    """A --set-resources slurm_extra replaces the rule's (and with it the time-limit signal); the
    job still stops in time: it watches the job's end time itself (--slurm-margin)."""
    job = train_job("--set-resources", "train:slurm_extra='--mail-type=FAIL'")
    assert job["resources"]["slurm_extra"] == "--mail-type=FAIL"
    assert "--slurm-margin 300" in job["shell"]
    job = train_job("--set-resources", "train:slurm_extra='--signal=USR2@600'")
    assert job["resources"]["slurm_extra"] == "--signal=USR2@600"


def test_gres_instead_of_gpus_is_one_request(tmp_path):
    over = train_job("--set-resources", "train:gres='gpu:a100:4'")
    assert over["resources"]["gres"] == "gpu:a100:4" and "gpu" not in over["resources"]
    assert "--nproc-per-node 4" in over["shell"]
    site = tmp_path / "site.yaml"
    site.write_text("resources:\n  train: {gres: true, gpu_model: a100}\n")
    job = train_job("--configfile", str(site))
    assert job["resources"]["gres"] == "gpu:a100:4" and "gpu" not in job["resources"]
    assert "--nproc-per-node 4" in job["shell"]


def test_grouping_without_slots_is_refused(tmp_path):
    cmd = [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(ROOT / "Snakefile"),
           "--group-components", "sets=3", "--", "all"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode != 0
    assert "--group-components sets=K (or guided=K) needs --resources group_slot=1" in res.stdout + res.stderr


def test_demo_job_count():
    """Coarser jobs help local runs too: the demo was 205 jobs with one job per repeat and its FID
    measurement; one job per sample set (all repeats, measured in the job) halves that."""
    out = dry_run("--configfile", str(ROOT / "config" / "demo.yaml"), profile=None)
    total = int(re.search(r"^total\s+(\d+)", out, re.M).group(1))
    js = jobs(out)
    assert sum(j["rule"] == "generate" for j in js) == 36 and sum(j["rule"] == "generate_dg" for j in js) == 6
    assert not any(j["rule"].startswith("fid") for j in js)
    print(f"demo: {total} jobs")
    assert total <= 205 // 2


def test_requeue_only_after_exit_75(monkeypatch, tmp_path):
    """`python -m aot` puts its Slurm job back into the queue when a command stops with exit 75
    (state saved), from rank 0 and while requeues are left; never after exit 2."""
    calls = tmp_path / "calls"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    # the job's own record says RUNNING (scontrol show job); a requeue is recorded
    (bindir / "scontrol").write_text('#!/bin/sh\nif [ "$1" = show ]; then echo "JobId=4242 JobState=RUNNING '
                                     f'Restarts=0"; exit 0; fi\necho "$@" >> {calls}\n')
    (bindir / "scontrol").chmod(0o755)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src"), "SLURM_JOB_ID": "4242",
           "AOT_SLURM_REQUEUE": "2"}
    script = "import sys; from aot.cli import run_command; run_command(lambda a: sys.exit(int(sys.argv[1])), None)"

    def run(code: int, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", script, str(code)], env={**env, **extra},
                              capture_output=True, text=True, timeout=120)

    res = run(75)
    assert res.returncode == 75
    assert calls.read_text().split() == ["requeue", "4242"]
    assert "requeued Slurm job 4242 (restart 1 of at most 2)" in res.stderr
    calls.unlink()
    assert run(2).returncode == 2 and not calls.exists()  # bad input: never requeued
    assert run(75, RANK="1").returncode == 75 and not calls.exists()  # only rank 0 asks
    res = run(75, SLURM_RESTART_COUNT="2")  # requeued twice already: the job fails for good
    assert res.returncode == 75 and not calls.exists() and "not again" in res.stderr
    res = run(75, AOT_SLURM_REQUEUE="")  # outside the workflow's resumable rules: nothing
    assert res.returncode == 75 and not calls.exists()


SITE_A100 = """
site:
  account: diffusion
  partition: gpu-a100
  cpu_partition: cpu
  qos: normal
  constraint: a100
  reservation: paper
  gpu_model: a100
  cpus_per_gpu: 8
  slurm_extra: "--mail-type=FAIL"
resources:
  train_discriminator: {qos: long}
"""


def test_site_settings_reach_every_rule(tmp_path):
    """One site section: every GPU rule gets the partition, account, QOS, constraint, GPU model and
    CPUs per GPU; the job without GPUs its CPU partition; a rule's own value wins."""
    site = tmp_path / "site.yaml"
    site.write_text(SITE_A100)
    js = jobs(dry_run("--configfile", str(site), "--", "all"))
    gpu_rules = {"train", "generate", "generate_dg", "train_discriminator", "reference_stats", "diagnostics"}
    seen = set()
    for j in js:
        r = j["resources"]
        if j["rule"] in gpu_rules:
            seen.add(j["rule"])
            gpus = int(r.get("gpu") or r.get("gres", "0").split(":")[-1])
            assert r["slurm_partition"] == "gpu-a100" and r["slurm_account"] == "diffusion", j
            assert r["constraint"] == "a100" and r["gpu_model"] == "a100", j
            assert r["qos"] == ("long" if j["rule"] == "train_discriminator" else "normal"), j
            assert int(r["cpus_per_task"]) == 8 * gpus, j
            assert "--mail-type=FAIL" in r["slurm_extra"] and "--reservation=paper" in r["slurm_extra"], j
        elif j["rule"] == "prepare_dataset":
            seen.add(j["rule"])
            assert r["slurm_partition"] == "cpu" and "constraint" not in r and "gpu" not in r, j
    assert seen == gpu_rules | {"prepare_dataset"}


@pytest.mark.parametrize("extra, key", [("--constraint=a100", "site.constraint"), ("-p gpu", "site.partition"),
                                        ("--qos=high", "site.qos")])
def test_executor_options_in_slurm_extra_are_refused_before_any_job(tmp_path, extra, key):
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({"site": {"slurm_extra": extra}}))
    cmd = [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(ROOT / "Snakefile"), "--directory",
           str(tmp_path), "--configfile", str(site)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert f"config error: site.slurm_extra: {extra!r} sets the" in out and f"use {key}" in out, out[-2000:]


# ------------------------------------------------------------------------------------------------
# bench/job_shape.py itself: the budget of a site file, and the time limit


def job_shape(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "job_shape.py"), "--repeats", "0", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=600)


def budget_rows(stdout: str) -> dict[str, list[float]]:
    """The per-rule rows of job_shape's table: rule -> [jobs, submissions, work, requested]."""
    rows = {}
    for line in stdout.splitlines():
        m = re.match(r"^  (\w+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)(\s+\(no GPU\))?$", line)
        if m:
            rows[m.group(1)] = [float(m.group(i)) for i in range(2, 6)]
    return rows


def test_job_shape_takes_a_relative_partial_site_file_and_refuses_jobs_past_the_limit(tmp_path):
    """A partial config by a relative path is layered onto config/config.yaml (its rates, not the
    schema's defaults) as the workflow does. A fixed runtime at walltime.max_minutes passes and one a
    minute longer is refused: exit 1 and one line naming the submission and the limit; a site file
    (relative too) whose limit is below the longest job that cannot resume is refused the same way,
    naming that job."""
    (tmp_path / "at.yaml").write_text("resources:\n  diagnostics: {runtime: 2880}\n")
    (tmp_path / "over.yaml").write_text("resources:\n  diagnostics: {runtime: 2881}\n")
    (tmp_path / "short.yaml").write_text("walltime: {max_minutes: 29}\n")

    ok = job_shape(tmp_path, "--configfile", "at.yaml", "--no-site")
    assert ok.returncode == 0 and ok.stderr == "", ok.stderr[-3000:]
    assert "configuration: at.yaml (layered onto config/config.yaml: resources)" in ok.stdout
    rows = budget_rows(ok.stdout)
    assert rows["diagnostics"] == [4, 4, 1, 4 * 2880 / 60]  # the site's fixed runtime, 4 jobs of 48 h
    total = [sum(r[i] for name, r in rows.items() if name != "total") for i in range(4)]
    assert total == pytest.approx(rows["total"], abs=len(rows))  # rows rounded to whole GPU-hours
    # the config's rates where the site file is silent (the schema's defaults are 1.0e-3 and 2.0e-3)
    assert "generate_image_nfe_s 0.0021, guidance_image_nfe_s 0.0032, fid_image_s 0.001," in ok.stdout
    assert re.search(r"^largest submission\s+2880 min \(48\.0 h\) of walltime\.max_minutes 2880 ", ok.stdout, re.M)

    over = job_shape(tmp_path, "--configfile", "over.yaml", "--no-site")
    assert over.returncode == 1, over.stderr[-3000:]
    assert re.fullmatch(r"error: Slurm submission diagnostics \(part=u?n?cond, key=heun-n\d+-rho7\) asks for 2881 "
                        r"min \(48\.0 h\), more than walltime\.max_minutes = 2880 \(48\.0 h\) \(and 3 more\)\n",
                        over.stderr), over.stderr
    assert re.search(r"^largest submission\s+2881 min ", over.stdout, re.M)
    assert "Slurm submissions, sets=1" not in over.stdout  # stopped before the second dry run

    short = job_shape(tmp_path, "--site", "short.yaml")  # the paper's config, this cluster's limit
    assert short.returncode == 1, short.stderr[-3000:]
    assert "cluster settings: short.yaml" in short.stdout
    assert re.fullmatch(r"error: (prepare_dataset|diagnostics \(.*?\)) needs 30 min \(safety 2\.0 x \(start-up 300 s "
                        r"\+ work 600 s\)\), more than walltime\.max_minutes = 29, and cannot resume in a requeued "
                        r"job \(and \d+ more\)\n", short.stderr), short.stderr


def test_the_docs_state_the_budget_job_shape_prints():
    """README.md and docs/slurm.md give the paper's GPU-hours that bench/job_shape.py prints."""
    res = job_shape(ROOT, "--no-site")  # the paper's config, not this checkout's cluster
    assert res.returncode == 0, res.stderr[-3000:]
    rows = budget_rows(res.stdout)
    readme = (ROOT / "README.md").read_text()
    slurm = (ROOT / "docs" / "slurm.md").read_text()
    jobs_, subs, work, req = (int(v) for v in rows.pop("total"))
    assert f"| **total** | {jobs_} | {subs} | **{work}** | **{req}** |" in readme
    assert f"between {work} GPU-hours (the estimated work) and {req}" in readme
    assert f"| GPU-hours, total | {work} of estimated work, {req} requested " in slurm
    assert f"| Slurm submissions | {subs} (" in slurm
    # what EDM's published networks over Tables 4 and 5 cost (tables.published_grids), from one
    # more dry run with the switch flipped
    m = re.search(r"^published grids\s+tables\.published_grids true: (\d+) GPU-h of work, (\d+) requested; "
                  r"false: (\d+) and (\d+) \(EDM's published networks over Tables 4 and 5 cost (\d+) and (\d+); "
                  r"this config: true\)$", res.stdout, re.M)
    assert m, res.stdout
    on_w, on_r, off_w, off_r, cost_w, cost_r = (int(v) for v in m.groups())
    assert (on_w, on_r) == (work, req) and (cost_w, cost_r) == (on_w - off_w, on_r - off_r) and cost_w > 0
    assert f"take {cost_w} of work and {cost_r} requested" in " ".join(readme.split())
    assert f"`published_grids: false` the paper costs {off_w} and {off_r}" in " ".join(readme.split())
    assert (f"| GPU-hours of `tables.published_grids` | true: {on_w} and {on_r}; false: {off_w} and {off_r} "
            f"(EDM's published networks over Tables 4 and 5, 106 sample sets, cost {cost_w} and {cost_r}) |") in slurm
    for rule, (n, s, w, r) in rows.items():
        assert re.search(rf"^\| {rule}\b[^|]*\| {n:.0f} \| {s:.0f}\b[^|]*\| {w:.0f}\b[^|]*\| {r:.0f}\b[^|]*\|$",
                         readme, re.M), rule
    per_model = re.findall(r"^training \S+\s+(\d+) GPU-h of work, .*?\((\d+) GPU-h requested;", res.stdout, re.M)
    assert len(per_model) == 4 and len(set(per_model)) == 1
    work_1, req_1 = per_model[0]
    assert f"{work_1} per model" in readme and f"{req_1} per model" in readme
    assert f"({work_1} per model:" in slurm


def test_the_checkouts_slurm_profile_wins_over_a_users_own(tmp_path):
    """`snakemake --profile slurm all` from the checkout uses the checkout's `slurm` (a link to
    profiles/slurm: Snakemake looks in the working directory first), not a `slurm` profile the user
    already has in ~/.config/snakemake, which stays untouched. Imposed: a user profile that would
    break the run (an unknown option)."""
    xdg = tmp_path / "xdg"
    mine = xdg / "snakemake" / "slurm"
    mine.mkdir(parents=True)
    (mine / "config.yaml").write_text("executor: slurm\nno-such-option-of-snakemake: 1\n")
    before = (mine / "config.yaml").read_bytes()
    env = {**os.environ, "XDG_CONFIG_HOME": str(xdg), "HOME": str(tmp_path)}
    work = tmp_path / "work"
    work.mkdir()
    cmd = [sys.executable, "-m", "snakemake", "-n", "--profile", "slurm", "--directory", str(work), "--", "table1"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert f"Using profile {ROOT / 'slurm'}" in out or "Using profiles slurm" in out or \
        re.search(r"Using profiles? \S*slurm", out), out[:2000]
    assert str(mine) not in out
    assert (mine / "config.yaml").read_bytes() == before
    # away from the checkout, the user's own profile is the one Snakemake finds (and it breaks)
    res = subprocess.run([*cmd[:-2], "-s", str(ROOT / "Snakefile"), "--", "table1"], capture_output=True, text=True,
                         cwd=work, timeout=300, env=env)
    assert res.returncode != 0 and "no-such-option" in res.stdout + res.stderr
