#!/usr/bin/env python
"""The cost of the paper run on a Slurm cluster, from the workflow itself and from this machine:

    python bench/job_shape.py [--configfile config/config.yaml] [--repeats 5]

  1. dry runs of `snakemake --profile profiles/slurm all` with and without grouping: Snakemake jobs,
     Slurm submissions, GPU-hours requested (each submission's runtime x GPUs) and the work the
     walltime section estimates (without start-up and safety factor);
  2. each job's fixed start-up measured here: a Python process that imports torch and aot, loads a
     network of the paper's size (NCSN++, 56 M parameters) from its checkpoint, and builds
     Inception-v3 (the FID network; its weights cannot be downloaded here, so this is the build
     without them, a lower bound);
  3. what grouping saves: submissions x start-up; and what measuring each sample set in the job
     that makes it saves: one Python process with its imports per set.

The start-up figures are this machine's (2 shared cores, no GPU); on a cluster add CUDA
initialisation and the queue wait of each submission, which grouping saves as well.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

# Rules that never become Slurm jobs: downloads and placing files (login node), and the fast
# report rules (seconds each).
LOCAL = re.compile(r"all|fetch\w*|download_\w+|place_\w+|run_config|tables|figures|curvature|report|"
                   r"table\d+|figure\d+")


def dry_run(*args: str, cwd: Path | None = None, profile: str | None = "slurm") -> str:
    """Output of `snakemake -n` with the given profile (profiles/<profile>) and arguments, in `cwd`,
    by default a fresh folder (outputs of earlier runs in the repository would drop their jobs)."""
    if cwd is None:
        with tempfile.TemporaryDirectory() as tmp:
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
    """The jobs of a dry run: rule, group index (None outside a group), resources, shell command."""
    out, current, group = [], None, None
    groups = -1
    for line in output.splitlines():
        if re.search(r"\] Group job \w+", line):
            groups += 1
            group = groups
            continue
        m = re.match(r"^(\s*)(?:local)?rule (\w+):$", line)
        if m:
            if not m.group(1):
                group = None
            current = {"rule": m.group(2), "group": group, "resources": {}, "shell": ""}
            out.append(current)
            continue
        if current is None:
            continue
        m = re.match(r"^\s+resources: (.*)$", line)
        if m:
            current["resources"] = dict(kv.split("=", 1) for kv in re.split(r", (?=\w+=)", m.group(1)))
        elif "Shell command:" in line:
            current["shell"] = line.split("Shell command:", 1)[1].strip()
    return out


def submissions(output: str) -> list[list[dict]]:
    """The Slurm submissions of a dry run: each group job once (its members), every other job that
    is not a local rule on its own."""
    subs: dict[object, list[dict]] = {}
    for i, j in enumerate(jobs(output)):
        if j["group"] is not None:
            subs.setdefault(("group", j["group"]), []).append(j)
        elif not LOCAL.fullmatch(j["rule"]):
            subs[("job", i)] = [j]
    return list(subs.values())


def gpus(res: dict) -> int:
    if res.get("gpu"):
        return int(res["gpu"])
    m = re.match(r"gpu(?::[\w.]+)?:(\d+)$", res.get("gres", ""))
    return int(m.group(1)) if m else 0


def gpu_hours(subs: list[list[dict]]) -> float:
    """Requested GPU-hours: a submission's wall time (the sum of its members', which run one after
    the other) times its GPUs (the members share them) times its nodes."""
    total = 0.0
    for members in subs:
        minutes = sum(int(j["resources"].get("runtime", 0)) for j in members)
        g = max(gpus(j["resources"]) for j in members)
        nodes = max(int(j["resources"].get("nodes", 1)) for j in members)
        total += minutes / 60 * g * nodes
    return total


def work_gpu_hours(subs: list[list[dict]], walltime: dict) -> float:
    """The work behind the requests: each runtime undone (minutes = safety x (start-up + work))."""
    total = 0.0
    for members in subs:
        for j in members:
            minutes = int(j["resources"].get("runtime", 0))
            work_s = max(0.0, minutes * 60 / walltime["safety"] - walltime["startup_s"])
            total += work_s / 3600 * gpus(j["resources"]) * int(j["resources"].get("nodes", 1))
    return total


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


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configfile", default=str(ROOT / "config" / "config.yaml"))
    ap.add_argument("--repeats", type=int, default=5, help="timings per start-up figure (median)")
    args = ap.parse_args(argv)
    cfg = yaml.safe_load(Path(args.configfile).read_text())
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    walltime = {k: v["default"] for k, v in schema["properties"]["walltime"]["properties"].items()}
    walltime.update(cfg.get("walltime") or {})

    grouped = dry_run("--configfile", args.configfile, "--", "all")
    single = dry_run("--group-components", "sets=1", "--configfile", args.configfile, "--", "all")
    n_jobs = int(re.search(r"^total\s+(\d+)", grouped, re.M).group(1))
    subs_g, subs_1 = submissions(grouped), submissions(single)
    s = startup(args.repeats)
    per_job = s["python"] + s["imports"] + s["network"] + s["inception"]  # a set's job loads both
    saved = (len(subs_1) - len(subs_g)) * per_job
    n_sets = sum(j["rule"] in ("generate", "generate_dg") for j in jobs(grouped))

    print(f"configuration: {args.configfile}")
    print(f"Snakemake jobs                          {n_jobs}")
    print(f"Slurm submissions, sets=1 / sets=3      {len(subs_1)} / {len(subs_g)}  "
          f"(x{len(subs_1) / len(subs_g):.2f} fewer)")
    rest = [m for m in subs_g if m[0]["rule"] != "train"]
    req_g, work = gpu_hours(rest), work_gpu_hours(rest, walltime)
    print(f"GPU-hours requested, all but training   {req_g:.0f}")
    print(f"GPU-hours of their estimated work       {work:.0f}  (requested / work = {req_g / work:.2f}; "
          f"safety {walltime['safety']}, start-up {walltime['startup_s']:.0f} s per job)")
    longest = max(sum(int(j['resources'].get('runtime', 0)) for j in m) for m in rest)
    print(f"longest of those submissions            {longest} min ({longest / 60:.1f} h)")
    r = cfg["resources"]["train"]
    models = [m for m in cfg["models"] if m.get("source") == "train"]
    for m in models:
        t = {**cfg["training"], **m.get("train", {})}
        gpu_s = t["duration"] * 1000 * walltime["train_kimg_s"]
        wall_h = gpu_s / 3600 / (r["gpus"] * r.get("nodes", 1))
        per_job_h = (walltime["max_minutes"] * 60 - walltime["startup_s"] - walltime["signal_s"]) / 3600
        print(f"training {m['name']:<14}                {gpu_s / 3600:.0f} GPU-h of work, {wall_h:.0f} h on "
              f"{r['gpus'] * r.get('nodes', 1)} GPUs: {math.ceil(wall_h / per_job_h)} jobs of "
              f"{walltime['max_minutes'] / 60:.0f} h (requeued)")
    print("start-up per job on this machine (median of "
          f"{args.repeats}): python {s['python']:.2f} s, torch+aot imports {s['imports']:.2f} s, "
          f"paper network load {s['network']:.2f} s, Inception-v3 build {s['inception']:.2f} s")
    print(f"start-up saved by grouping              {saved / 60:.1f} min "
          f"({len(subs_1) - len(subs_g)} fewer submissions x {per_job:.1f} s, before queue wait and CUDA)")
    own = s["python"] + s["imports"]
    print(f"start-up saved by measuring in the set's job {n_sets * own / 60:.1f} min "
          f"({n_sets} sample sets x {own:.1f} s: no separate FID process)")


if __name__ == "__main__":
    main()
