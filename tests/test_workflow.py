"""The Snakemake workflow without running jobs: dry runs of the paper DAG and config validation."""

from __future__ import annotations

import copy
import itertools
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def dry_run(*args: str, configfile: Path | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    cmd = [*SNAKEMAKE, "-n", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(cwd), *args]
    if configfile is not None:
        cmd += ["--configfile", str(configfile)]  # last: it takes several values
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=300)


def job_counts(output: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    in_table = False
    for line in output.splitlines():
        if re.match(r"^job\s+count\s*$", line.strip()):
            in_table = True
            continue
        if in_table:
            m = re.match(r"^([A-Za-z_0-9]+)\s+(\d+)$", line.strip())
            if m:
                counts[m.group(1)] = int(m.group(2))
                if m.group(1) == "total":
                    break
    return counts


def paper_sample_sets(cfg: dict) -> set[tuple[str, int, float]]:
    """The distinct (model, steps, rho) sample sets the paper's Tables 1-5 need, computed here
    independently of the workflow's own helpers."""
    s = cfg["sampling"]
    d = (s["default"]["num_steps"], float(s["default"]["rho"]))
    sets = set()
    for part in ("uncond", "cond"):
        edm, aot = cfg["tables"][part]["edm"], cfg["tables"][part]["aot"]
        best = s["best"][aot]
        sets |= {(edm, *d), (aot, *d), (aot, best["num_steps"], float(best["rho"]))}
    for row, rho in itertools.product(s["table4"]["rows"], s["table4"]["rho"]):
        sets.add((row["model"], row["num_steps"], float(rho)))
    for m, nfe, rho in itertools.product(s["table5"]["models"], s["table5"]["nfe"], s["table5"]["rho"]):
        sets.add((m, (nfe + 1) // 2, float(rho)))
    return sets


@pytest.fixture(scope="module")
def paper_cfg() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


@pytest.fixture(scope="module")
def paper_dry_run() -> subprocess.CompletedProcess:
    return dry_run()


def test_paper_dag_job_counts(paper_cfg, paper_dry_run):
    assert paper_dry_run.returncode == 0, paper_dry_run.stderr[-3000:]
    counts = job_counts(paper_dry_run.stdout + paper_dry_run.stderr)
    reps = paper_cfg["fid"]["repeats"]
    assert reps == 3 and paper_cfg["fid"]["num_images"] == 50_000
    n_sets = len(paper_sample_sets(paper_cfg))
    assert counts["generate"] == n_sets * reps
    # Table 3: EDM+DG, EDM-AOT+DG w/o AOT, EDM-AOT+DG w/ AOT, for both parts.
    assert counts["train_discriminator"] == 6
    assert counts["generate_dg"] == 6 * reps
    assert counts["fid"] == counts["generate"] + counts["generate_dg"]
    assert counts["train"] == 4
    for rule in ("prepare_dataset", "download_cifar10", "fetch_fid_assets", "reference_stats", "report"):
        assert counts[rule] == 1, rule
    for i in range(1, 6):
        assert counts[f"table{i}"] == 1
    for i in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11):
        assert counts[f"figure{i}"] == 1
    # Sample sets shared between tables are generated once: Table 4's 18-step points are Table 5's
    # NFE-35 points.
    shared = {(r["model"], r["num_steps"]) for r in paper_cfg["sampling"]["table4"]["rows"]}
    assert ("aot-uncond", 18) in shared


def test_single_table_builds_only_what_it_needs(paper_cfg):
    res = dry_run("table1")
    assert res.returncode == 0, res.stderr[-3000:]
    counts = job_counts(res.stdout + res.stderr)
    assert counts["generate"] == 3 * 3  # EDM, EDM-AOT (rho 7, 18 steps), EDM-AOT (best): 3 repeats each
    assert counts["train"] == 2  # the two unconditional models only
    assert "generate_dg" not in counts and "table4" not in counts and "report" not in counts


def test_tables_share_sample_sets(paper_cfg):
    t4 = job_counts((r := dry_run("table4")).stdout + r.stderr)["generate"]
    t5 = job_counts((r := dry_run("table5")).stdout + r.stderr)["generate"]
    both = job_counts((r := dry_run("table4", "table5")).stdout + r.stderr)["generate"]
    shared_sets = 16  # 4 models x 4 rhos (9, 27, 81, 243) at 18 steps = NFE 35
    shared_sets += 8  # EDM-AOT's 14-step rows = NFE 27, x 4 rhos
    shared_sets += 8  # the unconditional 8-step rows = NFE 15, x 4 rhos
    assert both == t4 + t5 - shared_sets * 3


def test_demo_dag(tmp_path):
    res = dry_run(configfile=ROOT / "config" / "demo.yaml")
    assert res.returncode == 0, res.stderr[-3000:]
    counts = job_counts(res.stdout + res.stderr)
    assert counts["train"] == 4 and counts["report"] == 1
    assert "download_cifar10" not in counts and "fetch_fid_assets" not in counts  # offline


# ------------------------------------------------------------------------------------------------
# Config validation: each bad config fails before any job runs, with a message naming the problem.


def _bad_config(tmp_path: Path, mutate) -> Path:
    cfg = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    mutate(cfg)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _set(path: str, value):
    def mutate(cfg):
        *keys, last = path.split(".")
        node = cfg
        for k in keys:
            node = node[int(k)] if k.isdigit() else node[k]
        node[last] = value
    return mutate


BAD_CONFIGS = {
    "unknown top-level key": (lambda c: c.update(learning_rate=1), r"learning_rate"),
    "unknown training key": (_set("training.batchsize", 3), r"batchsize"),
    "wrong type": (_set("fid.repeats", "three"), r"repeats|three"),
    "steps below 2": (_set("sampling.default.num_steps", 1), r"num_steps|minimum"),
    "N not a multiple of B": (_set("training.pool_size", 100), r"pool_size N=100 is not a multiple of batch_gpu B=32"),
    "N smaller than B": (_set("training.pool_size", 16), r"pool_size N=16|smaller"),
    "model name used twice": (lambda c: c["models"].append(dict(c["models"][0])), r"'edm-uncond' is used twice"),
    "unknown model in a table": (_set("tables.uncond.aot", "nope"), r"tables.uncond.aot: unknown model 'nope'"),
    "table model with wrong flags": (_set("tables.cond.edm", "edm-uncond"), r"tables.cond.edm: model 'edm-uncond' has cond=False"),
    "even NFE for Heun": (_set("sampling.table5.nfe", [8]), r"nfe: 8 is even"),
    "bad device": (_set("device", "tpu"), r"tpu|device"),
    "negative rho": (_set("sampling.default.rho", -1), r"rho|minimum|-1"),
    "DG collects more than a sample set": (_set("dg.collect_images", 10**6), r"collect_images 1000000 exceeds"),
    "precomputed reference with offline features": (_set("fid.reference", "precomputed"), r"fid.reference"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_fails_early(tmp_path, case, record_fault):
    mutate, pattern = BAD_CONFIGS[case]
    res = dry_run(configfile=_bad_config(tmp_path, mutate), cwd=tmp_path)
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert re.search(pattern, out), out[-2000:]
    assert not (tmp_path / "results").exists()
    record_fault("bad input", f"config: {case}", f"Snakemake exits {res.returncode} before any job; "
                 f"message matches `{pattern}`")


def test_official_edm_pickles_as_baselines(tmp_path):
    """`source: edm-pickle` replaces the baseline's training by a (local) import of the official pickle."""
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    for m in cfg["models"]:
        if m["name"] in ("edm-uncond", "edm-cond"):
            m["source"] = "edm-pickle"
    path = tmp_path / "pickles.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = dry_run("-p", "table1", "table2", configfile=path, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    counts = job_counts(res.stdout + res.stderr)
    assert counts["fetch_edm_pickle"] == 2 and counts["train"] == 2
    assert "edm-cifar10-32x32-uncond-ve.pkl" in res.stdout + res.stderr
