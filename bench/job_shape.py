#!/usr/bin/env python
"""The cost of the paper run on a Slurm cluster, from the workflow itself and from this machine:

    python bench/job_shape.py [--configfile FILE] [--site FILE | --no-site] [--repeats 5] [--replicates K ...]

  1. the configuration as the workflow reads it (aot.settings.RunSettings): a partial --configfile is
     layered onto config/config.yaml, with the cluster's site file (the checkout's config/site.yaml
     when it exists, or --site) in between, so the walltime rates are config.yaml's where neither
     sets them;
  2. dry runs of `snakemake --profile profiles/slurm all` with and without grouping: Snakemake jobs,
     Slurm submissions and, per rule and in total, the GPU-hours of the work the walltime section
     estimates (the formulas of workflow/rules/common.smk) and of the time the submissions request
     (each job's `runtime` resource x GPUs x nodes; training: as many submissions of its runtime as
     safety x its work needs, since it resumes in requeued jobs);
  3. the largest single submission against `walltime.max_minutes`: a submission that asks for more,
     a job that cannot resume but needs more, or a resumable job that needs more submissions than
     its requeues allow ends the run with one line on stderr and exit status 1;
  4. the GPU-hours of `tables.published_grids` (EDM's published networks over Tables 4 and 5): the
     budget's totals with this config's choice and, from one more dry run, with the other one;
  5. the GPU-hours of `snakemake significance` with K training replicates per model (--replicates,
     default the config's significance.replicates): the target alone (replicate 0, `all`'s models
     and sets, included) and what it adds to `all`;
  6. each job's fixed start-up measured here: a Python process that imports torch and aot, loads a
     network of the paper's size (NCSN++, 56 M parameters) from its checkpoint, and builds
     Inception-v3 (the FID network; its weights cannot be downloaded here, so this is the build
     without them, a lower bound); what grouping saves: submissions x start-up; and what measuring
     each sample set in the job that makes it saves: one Python process with its imports per set.
     `--repeats 0` leaves these out.

The start-up figures are this machine's (2 shared cores, no GPU); on a cluster add CUDA
initialisation and the queue wait of each submission, which grouping saves as well. The GPU-hours
follow the config's walltime rates: measure the real ones with `python bench/gpu.py --site-snippet
site-rates.yaml` and pass that file as --configfile or --site (or paste it into config/site.yaml).
"""

from __future__ import annotations

import argparse
import copy
import math
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from aot.keys import nfe, parse_key  # noqa: E402
from aot.settings import ConfigError, RunSettings  # noqa: E402
from aot.settings.jobs import minutes_for  # noqa: E402

SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
PAPER = ROOT / "config" / "config.yaml"

# Rules that never become Slurm jobs: downloads and placing files (login node), and the fast
# report rules (seconds each).
LOCAL = re.compile(r"all|fetch\w*|download_\w+|place_\w+|run_config|tables|figures|curvature|report|"
                   r"table\d+|figure\d+|significance\w*|pool_study")

# What the walltime rates mean on the paper's network (NCSN++, EDM preconditioning, 32x32x3):
# GFLOP per image and network evaluation, forward and forward + backward (torch.utils.flop_counter:
# bench/gpu.py's forward_gflop_per_img, bench/RESULTS.md), against an A100's fp32 peak (19.5
# TFLOP/s without tensor cores: EDM's setting, which the paper config keeps with TF32 off).
PAPER_GFLOP_FORWARD = 42.8
PAPER_GFLOP_TRAIN = 128.3
A100_FP32_TFLOPS = 19.5


def dry_run(*args: str, cwd: Path | None = None, profile: str | None = "slurm", site: Path | None = None) -> str:
    """Output of `snakemake -n` with the given profile (profiles/<profile>) and arguments, in `cwd`,
    by default a fresh folder (outputs of earlier runs in the repository would drop their jobs), with
    `site` as that folder's config/site.yaml (the cluster's settings, which the workflow reads there)."""
    if cwd is None:
        with tempfile.TemporaryDirectory() as tmp:
            if site is not None:
                (Path(tmp) / "config").mkdir()
                (Path(tmp) / "config" / "site.yaml").write_bytes(Path(site).read_bytes())
            return dry_run(*args, cwd=Path(tmp), profile=profile)
    cmd = [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(ROOT / "Snakefile"),
           "--directory", str(cwd)]
    if profile:
        cmd += ["--profile", str(ROOT / "profiles" / profile)]
    res = subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=cwd, timeout=600)
    out = res.stdout + res.stderr
    if res.returncode != 0:
        raise RuntimeError(f"dry run failed:\n{out[-3000:]}")
    return out


def jobs(output: str) -> list[dict]:
    """The jobs of a dry run: rule, group index (None outside a group) and group name, wildcards,
    resources, shell command."""
    out, current, group, name = [], None, None, None
    groups = -1
    for line in output.splitlines():
        m = re.search(r"\] Group job (\w+)", line)
        if m:
            groups += 1
            group, name = groups, m.group(1)
            continue
        m = re.match(r"^(\s*)(?:local)?rule (\w+):$", line)
        if m:
            if not m.group(1):
                group, name = None, None
            current = {"rule": m.group(2), "group": group, "group_name": name, "wildcards": {},
                       "resources": {}, "shell": ""}
            out.append(current)
            continue
        if current is None:
            continue
        m = re.match(r"^\s+(resources|wildcards): (.*)$", line)
        if m:
            current[m.group(1)] = dict(kv.split("=", 1) for kv in re.split(r", (?=\w+=)", m.group(2)))
        elif "Shell command:" in line:
            current["shell"] = line.split("Shell command:", 1)[1].strip()
    return out


def submissions(output: str, local: tuple[str, ...] = ()) -> list[list[dict]]:
    """The Slurm submissions of a dry run: each group job once (its members), every other job that
    is not a local rule (LOCAL, or one of `local`) on its own."""
    subs: dict[object, list[dict]] = {}
    for i, j in enumerate(jobs(output)):
        if j["group"] is not None:
            subs.setdefault(("group", j["group"]), []).append(j)
        elif not (LOCAL.fullmatch(j["rule"]) or j["rule"] in local):
            subs[("job", i)] = [j]
    return list(subs.values())


def local_rules(config: dict) -> tuple[str, ...]:
    """Rules that are local only in some configurations (a dry run with a cluster profile prints
    them as `rule`): the reference statistics are a copy of clean-fid's with `fid.reference:
    precomputed`."""
    return ("reference_stats",) if config["fid"]["reference"] == "precomputed" else ()


def gpus(res: dict) -> int:
    if res.get("gpu"):
        return int(res["gpu"])
    m = re.match(r"gpu(?::[\w.]+)?:(\d+)$", res.get("gres", ""))
    return int(m.group(1)) if m else 0


def gpu_hours(subs: list[list[dict]]) -> float:
    """GPU-hours of one submission each: a submission's wall time (the sum of its members', which run
    one after the other) times its GPUs (the members share them) times its nodes."""
    total = 0.0
    for members in subs:
        minutes = sum(int(j["resources"].get("runtime", 0)) for j in members)
        g = max(gpus(j["resources"]) for j in members)
        nodes = max(int(j["resources"].get("nodes", 1)) for j in members)
        total += minutes / 60 * g * nodes
    return total


# ------------------------------------------------------------------------------------------------
# The configuration and the work of each job, as workflow/rules/common.smk computes them


def load_settings(configfile: str | Path | None, site: str | Path | None = None) -> RunSettings:
    """The run's settings as the workflow reads `--configfile` (none: config/config.yaml; a partial
    file layered onto it; the site file's cluster settings in between, under the given file), checked,
    with the schema's defaults filled in."""
    config = (yaml.safe_load(Path(configfile).read_text()) or {}) if configfile is not None else {}
    return RunSettings.load(config, schema=SCHEMA, paper=PAPER, site=site)


def work_s(job: dict, settings: RunSettings) -> float:
    """Seconds of work of one job on its GPUs, by the walltime section (common.smk: train_work_s,
    sample_set_work_s, discriminator_work_s, other_work_s)."""
    c, w, wc = settings.config, settings.config["walltime"], job["wildcards"]
    rule = job["rule"]
    if rule == "train":
        t = settings.train_settings(wc["model"])
        r = c["resources"]["train"]
        return t["duration"] * 1000 * w["train_kimg_s"] / (max(1, r["gpus"]) * r["nodes"])
    if rule in ("generate", "generate_dg"):
        k = parse_key(wc["key"])
        per_nfe = w["guidance_image_nfe_s" if rule == "generate_dg" else "generate_image_nfe_s"]
        images = c["fid"]["num_images"] * c["fid"]["repeats"]
        return images * (nfe(k["num_steps"], k["solver"]) * per_nfe + w["fid_image_s"])
    if rule == "train_discriminator":
        epochs = settings.dg_recipe(wc["model"], wc["mode"])["epochs"]
        return 2 * c["dg"]["collect_images"] * epochs * w["discriminator_image_epoch_s"]
    return w["other_s"]


def requeues(job: dict) -> int | None:
    """How often a resumable job may requeue itself (AOT_SLURM_REQUEUE in its command); None for a
    job that cannot resume."""
    m = re.search(r"\bAOT_SLURM_REQUEUE=(\d+)", job["shell"])
    return int(m.group(1)) if m else None


def describe(job: dict) -> str:
    wc = ", ".join(f"{k}={v}" for k, v in job["wildcards"].items())
    return f"{job['rule']} ({wc})" if wc else job["rule"]


def submission_name(members: list[dict]) -> str:
    if members[0]["group"] is not None:
        rules = sorted({j["rule"] for j in members})
        return f"group {members[0]['group_name']} ({len(members)} {'/'.join(rules)} job(s))"
    return describe(members[0])


def budget(subs: list[list[dict]], settings: RunSettings) -> dict:
    """GPU-hours of work and requested, per rule; the largest submission; what does not fit.

    Work: each job's walltime estimate x its GPUs x nodes. Requested: each submission's runtime
    (the sum of its members') x GPUs x nodes, times the submissions a resumable job needs when its
    work does not fit one: ceil(safety x work / (runtime - start-up - signal)), the safety factor
    that the request of every other job carries (training: 200 Mimg in 48-h submissions)."""
    c, w = settings.config, settings.config["walltime"]
    safety, startup, signal, limit = w["safety"], w["startup_s"], w["signal_s"], w["max_minutes"]
    rows: dict[str, dict] = defaultdict(lambda: {"jobs": 0, "submissions": 0, "work": 0.0, "requested": 0.0})
    problems, per_job, largest, largest_group = [], [], None, None
    for members in subs:
        minutes = sum(int(j["resources"].get("runtime", 0)) for j in members)
        g = max(gpus(j["resources"]) for j in members)
        nodes = max(int(j["resources"].get("nodes", 1)) for j in members)
        name = submission_name(members)
        if largest is None or minutes > largest[0]:
            largest = (minutes, name)
        if members[0]["group"] is not None and (largest_group is None or minutes > largest_group[0]):
            largest_group = (minutes, name)
        if minutes > limit:
            problems.append(f"Slurm submission {name} asks for {minutes} min ({minutes / 60:.1f} h), more than "
                            f"walltime.max_minutes = {limit} ({limit / 60:.1f} h)")
        count = 1
        for j in members:
            work, at_rate = work_s(j, settings), 1
            runtime = int(j["resources"].get("runtime", 0))
            fixed = c["resources"].get(j["rule"], {}).get("runtime")
            n_requeues = requeues(j)
            margin = signal if n_requeues is not None else 0
            if not fixed:
                expected = minutes_for(work, safety=safety, startup_s=startup, max_minutes=limit, margin_s=margin)
                if expected != runtime:
                    raise RuntimeError(f"bench/job_shape.py: {describe(j)}: its work estimate gives {expected} min, "
                                       f"the workflow asks for {runtime}: workflow/rules/common.smk changed; "
                                       "update work_s()")
            need = minutes_for(work, safety=safety, startup_s=startup, max_minutes=10 ** 9, margin_s=margin)
            if n_requeues is None:
                if not fixed and need > limit:
                    problems.append(f"{describe(j)} needs {need} min (safety {safety} x (start-up {startup:g} s + "
                                    f"work {work:.0f} s)), more than walltime.max_minutes = {limit}, and cannot "
                                    "resume in a requeued job")
            elif len(members) == 1 and need > runtime:
                capacity = runtime * 60 - startup - signal  # work done by one submission
                if capacity <= 0:
                    problems.append(f"{describe(j)} cannot progress: its {runtime} min hold no more than the start-up "
                                    f"({startup:g} s) and the signal margin ({signal} s)")
                else:
                    at_rate = math.ceil(work / capacity)
                    if at_rate > 1 + n_requeues:
                        problems.append(f"{describe(j)} needs {at_rate} runs of {runtime} min (walltime.max_minutes "
                                        f"= {limit}) at the walltime rates, more than the {1 + n_requeues} its "
                                        f"{n_requeues} requeues allow")
                    count = max(count, math.ceil(safety * work / capacity))
            per_job.append({"job": j, "work": work, "runs": at_rate})
            row = rows[j["rule"]]
            row["jobs"] += 1
            row["work"] += work * gpus(j["resources"]) * int(j["resources"].get("nodes", 1)) / 3600
        rows[members[0]["rule"]]["submissions"] += 1
        for j in members:
            rows[j["rule"]]["requested"] += count * int(j["resources"].get("runtime", 0)) / 60 * g * nodes
        for entry in per_job[len(per_job) - len(members):]:
            entry["requested_runs"] = count
    return {"rows": dict(rows), "problems": problems, "largest": largest, "largest_group": largest_group,
            "per_job": per_job}


# ------------------------------------------------------------------------------------------------
# Start-up of one job, on this machine


def timed(code: str, repeats: int) -> float:
    """Median wall seconds of a fresh `python -c code`."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def startup(repeats: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "network.pt"
        subprocess.run([sys.executable, "-c", (
            "import sys, torch; sys.path.insert(0, 'bench'); import gpu; "
            "from aot.networks import build_network; "
            "net = build_network('EDMPrecond', dict(gpu.PAPER_NET)); "
            f"torch.save(net.state_dict(), {str(ckpt)!r})")], check=True, cwd=ROOT)
        base = timed("pass", repeats)
        torch_ = timed("import torch, aot.generate, aot.fid", repeats)
        net = timed("import sys, torch; sys.path.insert(0, 'bench'); import gpu; "
                    "from aot.networks import build_network; "
                    "net = build_network('EDMPrecond', dict(gpu.PAPER_NET)); "
                    f"net.load_state_dict(torch.load({str(ckpt)!r}, weights_only=True))", repeats)
        inception = timed("import torchvision; torchvision.models.inception_v3(weights=None, "
                          "aux_logits=True, init_weights=False)", repeats)
    return {"python": base, "imports": torch_ - base, "network": net - torch_, "inception": inception - base}


# ------------------------------------------------------------------------------------------------


def print_budget(b: dict, settings: RunSettings) -> None:
    w = settings.config["walltime"]
    order = ["train", "generate", "generate_dg", "train_discriminator", "reference_stats", "diagnostics",
             "prepare_dataset"]
    rules = sorted(b["rows"], key=lambda r: (order.index(r) if r in order else len(order), r))
    print("GPU-hours by rule      jobs  submissions     work  requested   (cluster jobs only: local rules left out)")
    total = {"jobs": 0, "submissions": 0, "work": 0.0, "requested": 0.0}
    for r in rules:
        row = b["rows"][r]
        for k in total:
            total[k] += row[k]
        note = "  (no GPU)" if row["work"] == 0 and row["requested"] == 0 else ""
        print(f"  {r:<20}{row['jobs']:>5}{row['submissions']:>13}{row['work']:>9.0f}{row['requested']:>11.0f}{note}")
    print(f"  {'total':<20}{total['jobs']:>5}{total['submissions']:>13}{total['work']:>9.0f}"
          f"{total['requested']:>11.0f}")
    ratio = total["requested"] / total["work"] if total["work"] else float("nan")
    print(f"GPU-hours, total        {total['work']:.0f} of estimated work, {total['requested']:.0f} requested "
          f"(x{ratio:.2f}: safety {w['safety']:g}, start-up {w['startup_s']:g} s per job, whole submissions)")
    for e in b["per_job"]:
        j, work = e["job"], e["work"]
        if j["rule"] == "train":
            r = j["resources"]
            g = gpus(r) * int(r.get("nodes", 1))
            hours = int(r["runtime"]) / 60
            print(f"training {j['wildcards']['model']:<14} {work * g / 3600:.0f} GPU-h of work, {work / 3600:.0f} h on "
                  f"{g} GPUs: {e['runs']} run(s) of {hours:.0f} h at the walltime rates, {e['requested_runs']} with "
                  f"safety {w['safety']:g} ({e['requested_runs'] * hours * g:.0f} GPU-h requested; requeues allow "
                  f"{1 + requeues(j)} runs)")
    minutes, name = b["largest"]
    print(f"largest submission      {minutes} min ({minutes / 60:.1f} h) of walltime.max_minutes {w['max_minutes']} "
          f"({w['max_minutes'] / 60:.1f} h): {name}")
    if b["largest_group"]:
        minutes, name = b["largest_group"]
        print(f"largest group of sets   {minutes} min ({minutes / 60:.1f} h): {name}")
    train_tflops = PAPER_GFLOP_TRAIN / w["train_kimg_s"]  # GFLOP per image x 1000 images / s = TFLOP/s
    sample_tflops = PAPER_GFLOP_FORWARD / w["generate_image_nfe_s"] / 1000
    print(f"walltime rates          train_kimg_s {w['train_kimg_s']:g}, generate_image_nfe_s "
          f"{w['generate_image_nfe_s']:g}, guidance_image_nfe_s {w['guidance_image_nfe_s']:g}, fid_image_s "
          f"{w['fid_image_s']:g}, discriminator_image_epoch_s {w['discriminator_image_epoch_s']:g}")
    print(f"  on the paper network: training {train_tflops:.1f} TFLOP/s, sampling {sample_tflops:.1f} TFLOP/s = "
          f"{100 * train_tflops / A100_FP32_TFLOPS:.0f} % and {100 * sample_tflops / A100_FP32_TFLOPS:.0f} % of an "
          f"A100's fp32 peak ({A100_FP32_TFLOPS:g} TFLOP/s); measure yours: bench/gpu.py --site-snippet FILE")


def totals(b: dict) -> tuple[float, float]:
    """(GPU-hours of work, GPU-hours requested) of a budget, summed over its rules."""
    return (sum(r["work"] for r in b["rows"].values()), sum(r["requested"] for r in b["rows"].values()))


def published_grids_budget(settings: RunSettings, given: list[str], site: Path | None,
                           local: tuple[str, ...]) -> tuple[float, float] | None:
    """(GPU-hours of work, requested) of the run with `tables.published_grids` flipped: a dry run
    with a partial config that flips it layered on top of the given one. None when no part names
    `edm_published` (the switch changes nothing)."""
    if not any(settings.published_model(p) for p in settings.parts):
        return None
    flipped = not settings.published_grids
    with tempfile.TemporaryDirectory() as tmp:
        flip = Path(tmp) / "published-grids.yaml"
        flip.write_text(yaml.safe_dump({"tables": {"published_grids": flipped}}))
        other = dry_run("--configfile", *given[1:], str(flip), "--", "all", site=site)
    config = copy.deepcopy(settings.config)
    config["tables"]["published_grids"] = flipped
    other_settings = RunSettings(config)
    other_settings.check()
    return totals(budget(submissions(other, local), other_settings))


def print_published_grids(settings: RunSettings, this: tuple[float, float],
                          other: tuple[float, float] | None) -> None:
    """One line: the GPU-hours with and without the published networks over Tables 4 and 5."""
    if other is None:
        print("published grids        no effect: no part names tables.<part>.edm_published")
        return
    on, off = (this, other) if settings.published_grids else (other, this)
    print(f"published grids         tables.published_grids true: {on[0]:.0f} GPU-h of work, {on[1]:.0f} requested; "
          f"false: {off[0]:.0f} and {off[1]:.0f} (EDM's published networks over Tables 4 and 5 cost "
          f"{round(on[0]) - round(off[0])} and {round(on[1]) - round(off[1])}; this config: "
          f"{str(settings.published_grids).lower()})")


def significance_budget(settings: RunSettings, given: list[str], site: Path | None, local: tuple[str, ...],
                        k: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """((work, requested) GPU-hours of `snakemake significance` alone, and of `all` and it together)
    with significance.replicates = k: dry runs with a partial config that sets it, layered on top."""
    with tempfile.TemporaryDirectory() as tmp:
        part = Path(tmp) / "replicates.yaml"
        part.write_text(yaml.safe_dump({"significance": {"replicates": k}}))
        alone = dry_run("--configfile", *given[1:], str(part), "--", "significance", site=site)
        both = dry_run("--configfile", *given[1:], str(part), "--", "all", "significance", site=site)
    config = copy.deepcopy(settings.config)
    config["significance"]["replicates"] = k
    other = RunSettings(config)
    other.check()
    return totals(budget(submissions(alone, local), other)), totals(budget(submissions(both, local), other))


def print_significance(k: int, alone: tuple[float, float], both: tuple[float, float], run: tuple[float, float],
                       models: int) -> None:
    """One line per K: the significance target's GPU-hours, and what it adds to `all`."""
    print(f"significance, K = {k}       {alone[0]:.0f} GPU-h of work, {alone[1]:.0f} requested ({models} models x {k} "
          f"replicates, their sets included); beyond `all`: {both[0] - run[0]:.0f} and {both[1] - run[1]:.0f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configfile", default=None,
                    help="the run's config, complete or partial (layered onto config/config.yaml), as Snakemake's "
                         "--configfile; default: none, the paper's config/config.yaml")
    ap.add_argument("--site", default=None,
                    help="the cluster's site file (site, resources, walltime), in place of the checkout's "
                         "config/site.yaml, which is used when it exists (as `snakemake --profile slurm all` "
                         "from the checkout does)")
    ap.add_argument("--no-site", action="store_true", help="no site file, not even the checkout's")
    ap.add_argument("--repeats", type=int, default=5,
                    help="timings per start-up figure (median); 0: no start-up timings")
    ap.add_argument("--replicates", type=int, nargs="+", default=None, metavar="K",
                    help="the significance target's GPU-hours with K training replicates per model (each >= 2; "
                         "default: the config's significance.replicates)")
    args = ap.parse_args(argv)
    if args.replicates and min(args.replicates) < 2:
        print(f"error: --replicates {min(args.replicates)}: the significance study needs at least 2", file=sys.stderr)
        return 2
    # the dry runs run in a folder of their own
    configfile = Path(args.configfile).resolve() if args.configfile else None
    given = ["--configfile", str(configfile)] if configfile else []
    site = None if args.no_site else Path(args.site).resolve() if args.site else ROOT / "config" / "site.yaml"
    if args.site and not args.no_site and not site.is_file():
        print(f"error: --site {args.site}: no such file", file=sys.stderr)
        return 2
    site = site if site is not None and site.is_file() else None
    try:
        settings = load_settings(configfile, site)
    except (ConfigError, OSError, yaml.YAMLError) as exc:
        print(f"error: {args.configfile or 'config/config.yaml'}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    local = local_rules(settings.config)
    try:
        grouped = dry_run(*given, "--", "all", site=site)
    except RuntimeError as exc:
        last = [line for line in str(exc).splitlines() if line.strip()][-1]
        print(f"error: the dry run of {args.configfile or 'config/config.yaml'} failed: {last.strip()}",
              file=sys.stderr)
        return 2
    n_jobs = int(re.search(r"^total\s+(\d+)", grouped, re.M).group(1))
    subs_g = submissions(grouped, local)
    b = budget(subs_g, settings)

    layered = f" (layered onto config/config.yaml: {', '.join(settings.layered_from)})" if settings.layered_from else ""
    print(f"configuration: {args.configfile or 'config/config.yaml (no --configfile)'}{layered}")
    if site is not None:
        print(f"cluster settings: {args.site or 'config/site.yaml'} (site file: under the configuration)")
    print(f"Snakemake jobs          {n_jobs}")
    print_budget(b, settings)
    if b["problems"]:
        more = f" (and {len(b['problems']) - 1} more)" if len(b["problems"]) > 1 else ""
        print(f"error: {b['problems'][0]}{more}", file=sys.stderr)
        return 1
    print_published_grids(settings, totals(b), published_grids_budget(settings, given, site, local))
    sig_models = 2 * len([p for p in settings.config["significance"]["parts"] if p in settings.parts])
    for k in args.replicates or [settings.config["significance"]["replicates"]]:
        print_significance(k, *significance_budget(settings, given, site, local, k), totals(b), sig_models)

    single = dry_run("--group-components", "sets=1", "guided=1", *given, "--", "all", site=site)
    subs_1 = submissions(single, local)
    print(f"Slurm submissions, sets=1 / sets=3      {len(subs_1)} / {len(subs_g)}  "
          f"(x{len(subs_1) / len(subs_g):.2f} fewer; training counted once)")
    if args.repeats <= 0:
        return 0
    s = startup(args.repeats)
    per_job = s["python"] + s["imports"] + s["network"] + s["inception"]  # a set's job loads both
    saved = (len(subs_1) - len(subs_g)) * per_job
    n_sets = sum(j["rule"] in ("generate", "generate_dg") for j in jobs(grouped))
    print("start-up per job on this machine (median of "
          f"{args.repeats}): python {s['python']:.2f} s, torch+aot imports {s['imports']:.2f} s, "
          f"paper network load {s['network']:.2f} s, Inception-v3 build {s['inception']:.2f} s")
    print(f"start-up saved by grouping              {saved / 60:.1f} min "
          f"({len(subs_1) - len(subs_g)} fewer submissions x {per_job:.1f} s, before queue wait and CUDA)")
    own = s["python"] + s["imports"]
    print(f"start-up saved by measuring in the set's job {n_sets * own / 60:.1f} min "
          f"({n_sets} sample sets x {own:.1f} s: no separate FID process)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
