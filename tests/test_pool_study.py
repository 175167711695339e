"""The pool-size study (Table 6): its DAG (`snakemake -n pool_study`, demo and paper configs; study
models equal to `all`'s are those models, trained once) and the Table 6 builder on synthetic
training folders, FID results and diagnostics, with every number checked by hand."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from aot.errors import UserError
from aot.report.pool_study import build_table6, load_diagnostics, load_training_run, write_pool_study

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------
# The DAG


def dry_run(tmp_path: Path, *targets: str, configfile: Path | None = None) -> str:
    cmd = [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(ROOT / "Snakefile"),
           "--directory", str(tmp_path), *targets]
    if configfile is not None:
        cmd += ["--configfile", str(configfile)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    return res.stdout + res.stderr


def trained(out: str) -> list[str]:
    """The models the dry run trains, one entry per `train` job."""
    return re.findall(r"rule train:\s*\n\s*input: [^\n]*\n\s*output: results/[^/]+/models/([^/]+)/network-final\.pt",
                      out)


def sample_sets(out: str) -> set[tuple[str, str]]:
    """(model, key) of every `generate` job's outputs."""
    return set(re.findall(r"results/[^/\s]+/samples/([^/\s]+)/([^/\s]+)/rep\d+\.npz", out))


def job_count(out: str, rule: str) -> int:
    m = re.search(rf"^{rule}\s+(\d+)\s*$", out, re.M)
    return int(m.group(1)) if m else 0


def heun_keys(nfe: list[int], rhos: list[float]) -> set[str]:
    return {f"heun-n{(k + 1) // 2}-rho{r:g}" for k in nfe for r in rhos}


def test_demo_pool_study_dag(tmp_path):
    demo = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    ps = demo["pool_study"]
    assert ps["pool_sizes"] == [32, 256, 1024] and ps["batch_gpu"] == 32 and ps["parts"] == ["uncond", "cond"]
    out = dry_run(tmp_path, "pool_study", configfile=ROOT / "config" / "demo.yaml")
    # N = 256 with B = 32 is the demo's aot-uncond / aot-cond, the models without AOT its edm-*:
    # trained by the same jobs as for `all`; N = 32 and 1024 are new.
    new = {"pool-uncond-n32", "pool-uncond-n1024", "pool-cond-n32", "pool-cond-n1024"}
    reused = {"aot-uncond", "aot-cond", "edm-uncond", "edm-cond"}
    models = trained(out)
    assert sorted(models) == sorted(new | reused)
    keys = heun_keys(ps["nfe"], demo["sampling"]["table5"]["rho"])
    assert sample_sets(out) == {(m, k) for m in new | reused for k in keys}
    assert job_count(out, "pool_study_diagnostics") == 2 and job_count(out, "table6") == 1
    # one job per set, measured in the job
    assert job_count(out, "fid") == 0 and job_count(out, "generate") == len(keys) * len(new | reused)
    assert job_count(out, "diagnostics") == 0 and job_count(out, "report") == 0


def test_demo_tables_and_pool_study_train_each_model_once(tmp_path):
    """Table 5 needs all four of the demo's models; with the study, each is still trained once."""
    out = dry_run(tmp_path, "table5", "pool_study", configfile=ROOT / "config" / "demo.yaml")
    models = trained(out)
    assert len(models) == len(set(models)) == 8
    assert job_count(out, "train") == 8


def test_all_does_not_run_the_study(tmp_path):
    out = dry_run(tmp_path, configfile=ROOT / "config" / "demo.yaml")
    assert job_count(out, "table6") == 0 and job_count(out, "pool_study_diagnostics") == 0
    assert job_count(out, "train") == 4 and not [m for m in trained(out) if m.startswith("pool-")]


def test_paper_pool_study_dag(tmp_path):
    paper = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    ps = paper["pool_study"]
    assert ps["pool_sizes"] == [32, 128, 512, 2048, 8192] and ps["batch_gpu"] == 32
    assert ps["train"]["duration"] < paper["training"]["duration"]  # shorter: nothing to reuse
    out = dry_run(tmp_path, "pool_study")
    expected = {f"pool-{p}-n{n}" for p in ("uncond", "cond") for n in ps["pool_sizes"]}
    expected |= {"pool-uncond-noaot", "pool-cond-noaot"}
    assert sorted(trained(out)) == sorted(expected)
    keys = heun_keys(ps["nfe"], paper["sampling"]["table5"]["rho"])
    assert sample_sets(out) == {(m, k) for m in expected for k in keys}
    assert job_count(out, "pool_study_diagnostics") == 2 and job_count(out, "table6") == 1


def test_paper_pool_study_reuses_models_at_full_length(tmp_path):
    """With the paper's duration the N = 512 (uncond) and N = 2048 (cond) models are the tables'
    EDM-AOT models and the baselines the EDM ones; class-wise pools below 4 per class are left out."""
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({"pool_study": {"train": {"duration": 200}, "min_per_class": 4}}))
    out = dry_run(tmp_path, "table5", "pool_study", configfile=site)
    models = trained(out)
    assert len(models) == len(set(models))
    new = {f"pool-uncond-n{n}" for n in (32, 128, 2048, 8192)} | {f"pool-cond-n{n}" for n in (128, 512, 8192)}
    assert set(models) == new | {"edm-uncond", "aot-uncond", "edm-cond", "aot-cond"}


def test_bad_pool_size_is_one_config_error(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({"pool_study": {"pool_sizes": [32, 100]}}))
    cmd = [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(ROOT / "Snakefile"),
           "--directory", str(tmp_path), "pool_study", "--configfile", str(site)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert res.returncode != 0
    assert "config error: pool_study (pool-uncond-n100): pool size N=100 is not a multiple of " \
           "pool_study.batch_gpu B=32" in res.stdout + res.stderr


# ------------------------------------------------------------------------------------------------
# The Table 6 builder on synthetic inputs


def write_run(root: Path, name: str, aot: bool, cond: bool, n: int, ticks: list[dict]) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "training_options.json").write_text(json.dumps(
        {"model_name": name, "aot": aot, "cond": cond, "pool_size": n, "batch_gpu": 32, "duration": 0.06}))
    (d / "stats.jsonl").write_text("".join(json.dumps(t) + "\n" for t in ticks))
    return d


def tick(kimg, spk, pools=None, paired=None, random=None, pairing=None, wait=None, stall=None):
    t = {"kimg": kimg, "sec_per_kimg": spk}
    if pools:
        t.update(pools=pools, paired_cost=paired, random_cost=random, pairing_s=pairing, wait_s=wait,
                 stall_share=stall)
    return t


def fid_json(path: Path, model: str, aot: bool, steps: int, rho: float, fid: float, rep: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "kind": "fid", "model": {"name": model, "aot": aot, "cond": False},
        "sampler": {"solver": "heun", "num_steps": steps, "rho": rho, "S_churn": 0},
        "feature_network": {"name": "offline-classifier"}, "fid": fid, "repeat": rep,
        "seeds": [rep * 100, rep * 100 + 99]}))
    return path


@pytest.fixture
def study(tmp_path):
    runs = tmp_path / "models"
    dirs = [
        write_run(runs, "base", False, False, 32, [tick(10, 9.0), tick(20, 2.0), tick(30, 4.0)]),
        write_run(runs, "n32", True, False, 32, [
            tick(10, 9.0, 10, 10.0, 11.0, 0.001, 0.0, 0.0), tick(20, 2.2, 30, 10.4, 11.0, 0.003, 0.001, 0.01),
            tick(30, 2.4, 10, 10.0, 11.0, 0.001, 0.0, 0.0)]),
        write_run(runs, "n1024", True, False, 1024, [
            tick(10, 9.0, 1, 9.0, 11.2, 0.2, 0.1, 0.05), tick(20, 3.0), tick(30, 5.0, 3, 9.4, 11.0, 0.4, 0.5, 0.2)]),
    ]
    fids = tmp_path / "fid"
    files = []
    # NFE 7 = 4 steps, NFE 35 = 18 steps; rho 9 and 81; two repeats (the table takes the minimum).
    measured = {  # (steps, rho) -> FID of repeats 0 and 1
        "base": (False, {(4, 9): (30, 31), (4, 81): (35, 36), (18, 9): (10, 12), (18, 81): (11, 11)}),
        "n32": (True, {(4, 9): (28, 29), (4, 81): (26, 27), (18, 9): (9, 9.5), (18, 81): (9.2, 9.3)}),
        "n1024": (True, {(4, 9): (25, 24), (4, 81): (22, 23), (18, 9): (8.5, 8.7), (18, 81): (8, 8.1)}),
    }
    for model, (aot, vals) in measured.items():
        for (steps, rho), pair in vals.items():
            for rep, v in enumerate(pair):
                files.append(fid_json(fids / model / f"heun-n{steps}-rho{rho}" / f"rep{rep}.json", model, aot,
                                      steps, rho, v, rep))
    files.append(fid_json(fids / "n32" / "heun-n4-rho3" / "rep0.json", "n32", True, 4, 3, 1.0, 0))  # rho not in grid
    diag = tmp_path / "diag.json"
    diag.write_text(json.dumps({"kind": "diagnostics", "models": [
        {"name": "base", "curvature": 0.5, "path_deviation": 0.01},
        {"name": "n32", "curvature": 0.4, "path_deviation": 0.008},
        {"name": "n1024", "curvature": 0.3, "path_deviation": 0.005}]}))
    return dirs, files, diag


def test_training_run_summary(study):
    dirs, _, _ = study
    r = load_training_run(dirs[1])
    assert (r["model"], r["aot"], r["cond"], r["N"], r["B"]) == ("n32", True, False, 32, 32)
    # pool-weighted: (10 * 10 + 30 * 10.4 + 10 * 10) / 50
    assert r["paired_cost"] == pytest.approx((100 + 312 + 100) / 50)
    assert r["random_cost"] == pytest.approx(11.0)
    assert r["pairing_ms"] == pytest.approx((10 * 1 + 30 * 3 + 10 * 1) / 50)
    assert r["wait_ms"] == pytest.approx(30 * 1 / 40)  # the first tick (start-up) left out
    assert r["sec_per_kimg"] == pytest.approx(2.3)  # median of 2.2, 2.4 (first tick left out)
    assert r["stall_share"] == pytest.approx(0.01 * 2.2 / (2.2 + 2.4))
    assert r["kimg"] == 30
    base = load_training_run(dirs[0])
    assert math.isnan(base["paired_cost"]) and base["sec_per_kimg"] == pytest.approx(3.0)


def test_table6_numbers(study):
    dirs, files, diag = study
    runs = [load_training_run(d) for d in reversed(dirs)]  # order of the inputs does not matter
    df, feat = build_table6(runs, files, load_diagnostics([diag]), nfe=[7, 35], rhos=[9, 81])
    assert feat == "offline-classifier"
    assert list(df["model"]) == ["base", "n32", "n1024"]
    assert pd.isna(df.loc[0, "N"]) and list(df["N"][1:]) == [32, 1024]
    n1024 = df.iloc[2]
    assert n1024["paired_cost"] == pytest.approx((9.0 + 3 * 9.4) / 4)
    assert n1024["random_cost"] == pytest.approx((11.2 + 3 * 11.0) / 4)
    assert n1024["cost_ratio"] == pytest.approx(n1024["paired_cost"] / n1024["random_cost"])
    assert n1024["curvature"] == 0.3 and n1024["path_deviation"] == 0.005
    # best over rho in {9, 81} of the per-set minimum: NFE 7 -> rho 81 (22), NFE 35 -> rho 81 (8)
    assert (n1024["fid_nfe7"], n1024["rho_nfe7"], n1024["n_nfe7"]) == (22, 81, 2)
    assert (n1024["fid_nfe35"], n1024["rho_nfe35"]) == (8, 81)
    n32 = df.iloc[1]
    assert (n32["fid_nfe7"], n32["rho_nfe7"]) == (26, 81)  # rho 3 (FID 1.0) is not in the grid
    assert (n32["fid_nfe35"], n32["rho_nfe35"]) == (9, 9)
    base = df.iloc[0]
    assert (base["fid_nfe7"], base["rho_nfe7"], base["fid_nfe35"], base["rho_nfe35"]) == (30, 9, 10, 9)
    assert list(df["sec_per_kimg_noaot"]) == [3.0, 3.0, 3.0]
    assert n1024["sec_per_kimg"] == 4.0 and n1024["aot_time_ratio"] == pytest.approx(4.0 / 3.0)
    assert n32["aot_time_ratio"] == pytest.approx(2.3 / 3.0)


def test_table6_files(study, tmp_path):
    dirs, files, diag = study
    out = tmp_path / "out"
    paths = write_pool_study(out / "table6", dirs, files, [diag], nfe=[7, 35], rhos=[9, 81],
                             figure_prefix=out / "pool_study")
    assert sorted(p.name for p in paths) == ["pool_study.pdf", "pool_study.png", "table6.csv", "table6.md",
                                             "table6.tex"]
    csv = (out / "table6.csv").read_text()
    assert "# table: 6" in csv and "# metric: FD-offline" in csv and "# measurements: 12" in csv
    md = (out / "table6.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| uncond | 1024"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:6] == ["uncond", "1024", "9.30", "11.05", "0.842", "0.3000"]
    assert cells[6:10] == ["22.00", "81", "8.00", "81"]
    assert cells[10:] == ["4.00", "3.00", "500.00"]  # wait: the last tick's 3 pools (first tick left out)
    assert "| uncond | 32 (= B) |" in md and "| uncond | no AOT |" in md
    # the paragraph is made from the same numbers
    assert ("going from N = 32 to N = 1024 changes the mean paired L2 cost from 10.24 to 9.30" in md)
    assert "22.00 at NFE 7 (without AOT 30.00)" in md and "+33 % at the largest N" in md
    assert r"\label{tab:table6}" in (out / "table6.tex").read_text()
    assert (out / "pool_study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table6_bad_input_writes_nothing(study, tmp_path):
    dirs, files, diag = study
    (dirs[2] / "stats.jsonl").write_text('{"kimg": 1}\nnot json\n')
    out = tmp_path / "bad"
    with pytest.raises(UserError, match=r"stats.jsonl, line 2: not JSON"):
        write_pool_study(out / "table6", dirs, files, [diag], nfe=[7], rhos=[9], figure_prefix=out / "fig")
    assert not out.exists() or not any(out.iterdir())
    with pytest.raises(UserError, match="model n32 given twice"):
        write_pool_study(out / "table6", [dirs[1], dirs[1]], files, [diag], nfe=[7], rhos=[9])
