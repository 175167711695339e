"""The significance study: training replicates (aot.settings: names, seeds, pairing, refusals), its
DAG (`snakemake -n significance` on the paper and demo configs, `all` unchanged), and the report
(aot.report.significance) on synthetic FID results, every number checked against scipy by hand."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as sps

from aot.errors import UserError
from aot.report.significance import parse_design, significance_rows, write_significance
from aot.settings import ConfigError, RunSettings

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
PAPER_PATH = ROOT / "config" / "config.yaml"
PAPER = yaml.safe_load(PAPER_PATH.read_text())
DEMO = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())


def load(cfg: dict) -> RunSettings:
    return RunSettings.load(copy.deepcopy(cfg), schema=SCHEMA, paper=PAPER_PATH)


# ------------------------------------------------------------------------------------------------
# Replicates in the settings


def test_replicates_are_the_model_and_reseeded_copies_paired_by_seed():
    run = load(PAPER)
    k = PAPER["significance"]["replicates"]
    for part in ("uncond", "cond"):
        edm, aot = PAPER["tables"][part]["edm"], PAPER["tables"][part]["aot"]
        reps = {arm: run.replicates("significance", part, arm) for arm in ("edm", "aot")}
        assert reps["edm"] == [edm] + [f"{edm}-rep{r}" for r in range(1, k)]
        assert reps["aot"] == [aot] + [f"{aot}-rep{r}" for r in range(1, k)]
        for r, (e, a) in enumerate(zip(reps["edm"], reps["aot"])):
            te, ta = run.train_settings(e), run.train_settings(a)
            # replicate r: the model's recipe with seed + r, the same seed for both arms
            assert te["seed"] == ta["seed"] == PAPER["training"]["seed"] + r
            assert {**te, "seed": 0} == {**run.train_settings(edm), "seed": 0}
            assert {**ta, "seed": 0} == {**run.train_settings(aot), "seed": 0}
            assert run.models[e]["aot"] is False and run.models[a]["aot"] is True
            assert run.models[e]["cond"] == run.models[a]["cond"] == (part == "cond")
    assert run.replicate_problems("significance") == [] and run.warnings == []
    # nothing is replicated for the pool-size study unless asked
    assert not [e for e in run.replicate_entries if e["study"] == "pool_study"]


def test_arms_with_different_seeds_warn_that_they_are_unpaired():
    cfg = copy.deepcopy(PAPER)
    cfg["models"][1]["train"]["seed"] = 7  # aot-uncond
    run = load(cfg)
    assert any("edm-uncond and aot-uncond have different training seeds" in w for w in run.warnings)
    assert run.train_settings("aot-uncond-rep2")["seed"] == 9


def test_an_imported_model_is_refused_only_when_the_study_is_asked_for():
    cfg = copy.deepcopy(PAPER)
    cfg["tables"]["uncond"]["edm"] = "edm-uncond-vp"
    cfg["tables"]["uncond"].pop("edm_published")
    run = load(cfg)  # `all` still plans
    (problem,) = run.replicate_problems("significance")
    assert "edm-uncond-vp" in problem and "imported" in problem and "\n" not in problem
    assert "edm-uncond-vp-rep1" not in run.models  # nothing of it is registered


def test_a_model_named_like_a_replicate_with_other_settings_is_refused():
    cfg = copy.deepcopy(PAPER)
    cfg["models"].append({"name": "aot-cond-rep1", "cond": True, "aot": True, "source": "train",
                          "train": {"batch": 128, "batch_gpu": 32, "pool_size": 2048, "seed": 5}})
    with pytest.raises(ConfigError, match="'aot-cond-rep1' is the name of replicate 1 of 'aot-cond'"):
        load(cfg)


@pytest.mark.parametrize("change, match", [
    ({"replicates": 1}, "replicates"),
    ({"nfe": [8]}, "significance.nfe"),
    ({"level": 1.0}, "level"),
    ({"parts": ["both"]}, "parts"),
])
def test_bad_significance_settings_fail(change, match):
    cfg = copy.deepcopy(PAPER)
    cfg["significance"].update(change)
    with pytest.raises(ConfigError, match=match):
        load(cfg)


def test_pool_study_replicates_pair_every_n_with_the_model_without_aot():
    cfg = copy.deepcopy(DEMO)
    cfg["pool_study"]["replicates"] = 2
    run = load(cfg)
    entries = [e for e in run.replicate_entries if e["study"] == "pool_study"]
    arms = {(e["part"], e["arm"]) for e in entries}
    assert ("uncond", "edm") in arms and ("uncond", "n32") in arms and ("cond", "n1024") in arms
    for e in entries:
        assert run.train_settings(e["model"])["seed"] == DEMO["training"]["seed"] + e["replicate"]
    # the demo's N = 256 study model is aot-uncond: its replicate is the significance study's too
    assert run.replicates("pool_study", "uncond", "n256")[1] == "aot-uncond-rep1"


# ------------------------------------------------------------------------------------------------
# The DAG


def dry_run(*args: str, configfile: Path | None = None) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "snakemake", "-n", "-p", "--snakefile", str(ROOT / "Snakefile"),
               "--directory", tmp, *args]
        if configfile is not None:
            cmd += ["--configfile", str(configfile)]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, timeout=300)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    return res.stdout + res.stderr


def trained(out: str) -> list[str]:
    return re.findall(r"output: results/[^/]+/models/([^/]+)/network-final\.pt", out)


def sample_sets(out: str) -> set[tuple[str, str]]:
    return set(re.findall(r"results/[^/\s]+/samples/([^/\s]+)/([^/\s]+)/rep\d+\.npz", out))


def expected_sets(cfg: dict) -> set[tuple[str, str]]:
    """(model, key) of every set the study measures, computed here from the config alone."""
    s, sig = cfg["sampling"], cfg["significance"]
    d = f"heun-n{s['default']['num_steps']}-rho{s['default']['rho']:g}"
    nfe = s["table5"]["nfe"] if sig["nfe"] is None else sig["nfe"]
    grid = {f"heun-n{(n + 1) // 2}-rho{r:g}" for n in nfe for r in s["table5"]["rho"]}
    out = set()
    for part in sig["parts"]:
        edm, aot = cfg["tables"][part]["edm"], cfg["tables"][part]["aot"]
        b = s["best"][aot]
        for r in range(sig["replicates"]):
            suffix = f"-rep{r}" if r else ""
            out |= {(edm + suffix, k) for k in grid | {d}}
            out |= {(aot + suffix, k) for k in grid | {d, f"heun-n{b['num_steps']}-rho{b['rho']:g}"}}
    return out


@pytest.mark.parametrize("name", ["config.yaml", "demo.yaml"])
def test_significance_dag_trains_k_replicates_and_measures_the_settings(name):
    cfg = PAPER if name == "config.yaml" else DEMO
    out = dry_run("significance", configfile=ROOT / "config" / name)
    k = cfg["significance"]["replicates"]
    models = [cfg["tables"][p][a] for p in cfg["significance"]["parts"] for a in ("edm", "aot")]
    assert sorted(trained(out)) == sorted(m + (f"-rep{r}" if r else "") for m in models for r in range(k))
    assert sample_sets(out) == expected_sets(cfg)
    assert re.search(r"^significance_report\s+1$", out, re.M)
    # the report gets the design: both arms of each part, replicate by replicate
    line = next(s for s in out.splitlines() if " report significance " in s)
    design = json.loads(shlex.split(line)[shlex.split(line).index("--design") + 1])
    assert [c["part"] for c in design["comparisons"]] == cfg["significance"]["parts"]
    assert design["comparisons"][0]["aot"][1] == f"{cfg['tables']['uncond']['aot']}-rep1"


def test_all_is_unchanged_by_the_study():
    out = dry_run("all", configfile=ROOT / "config" / "demo.yaml")
    assert not [m for m in trained(out) if "-rep" in m]
    assert "significance" not in out


def test_replicated_pool_study_adds_its_significance_table(tmp_path):
    cfg = copy.deepcopy(DEMO)
    cfg["pool_study"]["replicates"] = 2
    path = tmp_path / "demo-k2.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = dry_run("pool_study", configfile=path)
    assert re.search(r"^significance_pool_study_report\s+1$", out, re.M)
    assert "pool-uncond-n32-rep1" in trained(out) and "edm-cond-rep1" in trained(out)


# ------------------------------------------------------------------------------------------------
# The report


def fid_json(model: str, aot: bool, cond: bool, fid: float, repeat: int, steps: int, rho: float,
             features: str = "inception-v3-tf") -> dict:
    return {
        "kind": "fid", "model": {"name": model, "aot": aot, "cond": cond, "source": "trained"},
        "sampler": {"key": f"heun-n{steps}-rho{rho:g}", "solver": "heun", "num_steps": steps, "rho": float(rho),
                    "S_churn": 0.0, "nfe": 2 * steps - 1, "guidance": None},
        "repeat": repeat, "seeds": [100 * repeat, 100 * repeat + 99], "num_images": 100,
        "feature_network": {"name": features}, "fid": fid,
    }


D, BEST = "heun-n18-rho7", "heun-n14-rho90"
NFE7 = ["heun-n4-rho9", "heun-n4-rho81"]


def design(k: int) -> dict:
    return {"study": "significance", "level": 0.95, "power": 0.8, "dataset": "cifar10", "comparisons": [{
        "part": "uncond", "label": "EDM-AOT vs EDM",
        "edm": ["e"] + [f"e-rep{r}" for r in range(1, k)], "aot": ["a"] + [f"a-rep{r}" for r in range(1, k)],
        "settings": [
            {"name": "EDM's sampler", "kind": "default", "nfe": 35, "edm": [D], "aot": [D]},
            {"name": "EDM vs EDM-AOT best", "kind": "tables", "nfe": 27, "edm": [D], "aot": [BEST]},
            {"name": "NFE 7", "kind": "nfe", "nfe": 7, "edm": NFE7, "aot": NFE7},
        ]}]}


def synthetic(k: int, seed: int = 0, features: str = "inception-v3-tf") -> tuple[list[dict], dict]:
    """FID results of k replicates x 3 repeats, and the per-replicate values the table must use
    ((arm, setting) -> list): the mean over repeats, the best over rho for the NFE point."""
    rng = np.random.default_rng(seed)
    out, values = [], {}
    for arm, aot in (("e", False), ("a", True)):
        for r in range(k):
            model = arm if r == 0 else f"{arm}-rep{r}"
            for key in [D, BEST, *NFE7]:
                steps, rho = int(key.split("-n")[1].split("-")[0]), float(key.split("rho")[1])
                fids = (2.0 + (0.0 if not aot else -0.1) + rng.normal(0, 0.05) + 0.01 * steps / 18
                        + rng.normal(0, 0.02, size=3))
                for rep, f in enumerate(fids):
                    out.append(fid_json(model, aot, False, float(f), rep, steps, rho, features))
                values[(arm, r, key)] = (float(np.mean(fids)), float(np.min(fids)))
    return out, values


def test_table_numbers_against_scipy():
    k = 4
    results, values = synthetic(k)
    full, meta = significance_rows(design(k), results)
    assert list(full["setting"]) == ["EDM's sampler", "EDM vs EDM-AOT best", "NFE 7"]
    for (_, row), (ek, ak) in zip(full.iterrows(), [([D], [D]), ([D], [BEST]), (NFE7, NFE7)]):
        edm = [min(values[("e", r, key)][0] for key in ek) for r in range(k)]
        aot = [min(values[("a", r, key)][0] for key in ak) for r in range(k)]
        t = sps.t.ppf(0.975, k - 1)
        assert row["edm_mean"] == pytest.approx(np.mean(edm))
        half = t * np.std(edm, ddof=1) / math.sqrt(k)
        assert (row["edm_low"], row["edm_high"]) == pytest.approx((np.mean(edm) - half, np.mean(edm) + half))
        diff = np.array(aot) - np.array(edm)
        half = t * np.std(diff, ddof=1) / math.sqrt(k)
        assert row["diff_mean"] == pytest.approx(diff.mean())
        assert (row["diff_low"], row["diff_high"]) == pytest.approx((diff.mean() - half, diff.mean() + half))
        assert row["p"] == pytest.approx(sps.ttest_rel(aot, edm).pvalue)
        # the paper's protocol on replicate 0: min over repeats (best over rho)
        assert row["edm_paper_protocol"] == pytest.approx(min(values[("e", 0, key)][1] for key in ek))
        assert row["replicates"] == k
    # the paper's values beside them: Table 1 (EDM 1.97; EDM-AOT 1.95 at 18 steps, 1.88 at its best)
    # and Table 5 at NFE 7 (68.98, 58.55)
    assert list(full["paper_edm"]) == [1.97, 1.97, 68.98]
    assert list(full["paper_aot"]) == [1.95, 1.88, 58.55]
    assert full["paper_gain"].iloc[1] == pytest.approx(-0.09)
    assert meta["metric"] == "FID" and meta["sample_sets"] == 2 * k * 4


def test_files_a_reader_opens(tmp_path):
    results, _ = synthetic(3)
    paths = write_significance(tmp_path / "tables" / "significance", design(3), results,
                               figure_prefix=tmp_path / "figures" / "significance")
    assert sorted(p.name for p in paths) == ["significance.csv", "significance.md", "significance.pdf",
                                             "significance.png", "significance.tex"]
    md = (tmp_path / "tables" / "significance.md").read_text()
    assert md.startswith("**Significance") and "Difference [95 % CI]" in md and "paired t-test" in md
    assert "1.97 / 1.88" in md  # the paper beside ours
    csv = pd.read_csv(tmp_path / "tables" / "significance.csv", comment="#")
    assert len(csv) == 3 and csv["replicates"].eq(3).all()


def test_offline_features_leave_the_paper_out():
    results, _ = synthetic(3, features="offline-classifier")
    full, meta = significance_rows({**design(3), "dataset": "digits"}, results)
    assert full["paper_edm"].isna().all() and meta["metric"] == "FD-offline"
    assert full["replicates_for_paper_gain"].isna().all()


def test_missing_sets_and_bad_designs_fail_with_one_line():
    results, _ = synthetic(3)
    with pytest.raises(UserError, match="no FID results of model a-rep2 at sampler heun-n14-rho90"):
        significance_rows(design(3), [r for r in results if not (r["model"]["name"] == "a-rep2"
                                                                  and r["sampler"]["num_steps"] == 14)])
    bad = design(3)
    bad["comparisons"][0]["aot"] = bad["comparisons"][0]["aot"][:2]
    with pytest.raises(UserError, match="3 EDM replicates but 2 EDM-AOT replicates"):
        parse_design(bad)
    with pytest.raises(UserError, match="significance design: not valid JSON"):
        parse_design("{nope")


def test_cli_refuses_a_bad_design(tmp_path):
    res = subprocess.run([sys.executable, "-m", "aot", "report", "significance", "--design", "{nope",
                          "--out-prefix", str(tmp_path / "s")], capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and res.stderr.startswith("error: significance")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------
# End to end, on a copy of the tiny run (tests/configs/tiny.yaml)


@pytest.mark.slow
def test_significance_end_to_end_on_the_tiny_run(tiny_run, tmp_path):
    """`snakemake significance` after `all`: replicate 0 is `all`'s model (not trained again, its
    sets not made again), replicate 1 trains with seed + 1; the table's values are the FID results'
    means; `snakemake all` then puts the study into the run report."""
    from conftest import RUN, TINY

    work = tmp_path / "work"
    shutil.copytree(tiny_run, work, symlinks=True)
    extra = tmp_path / "significance.yaml"
    extra.write_text(yaml.safe_dump({"significance": {"replicates": 2, "parts": ["uncond"], "nfe": [7]}}))
    run_dir = work / "results" / RUN
    kept = {p: p.stat().st_mtime_ns for p in [*run_dir.glob("models/*-uncond/network-final.pt"),
                                                 *run_dir.glob("fid/*-uncond/*/rep0.json")]}
    assert kept
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(work),
           "--cores", "2"]
    config = ["--configfile", str(TINY), str(extra)]  # last: it takes several values
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([*cmd, "significance", *config], capture_output=True, text=True, timeout=1200, env=env)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # nothing of `all` was made again
    trained_now = re.findall(r"rule train:\s*\n(?:\s+\w+: [^\n]*\n)*?\s+output: results/[^/]+/models/([^/]+)/"
                             r"network-final\.pt", res.stdout + res.stderr)
    assert sorted(set(trained_now)) == ["aot-uncond-rep1", "edm-uncond-rep1"]
    for arm in ("edm", "aot"):
        options = json.loads((run_dir / "models" / f"{arm}-uncond-rep1" / "training_options.json").read_text())
        base = json.loads((run_dir / "models" / f"{arm}-uncond" / "training_options.json").read_text())
        assert options["seed"] == base["seed"] + 1
        assert {k: v for k, v in options.items() if k not in ("seed", "model_name", "outdir")} == \
            {k: v for k, v in base.items() if k not in ("seed", "model_name", "outdir")}
    table = pd.read_csv(run_dir / "tables" / "significance.csv", comment="#")
    assert list(table["kind"]) == ["default", "tables", "nfe"] and table["replicates"].eq(2).all()
    # the EDM value of replicate 1 at the default sampler: the mean of its set's repeats
    rep1 = sorted(run_dir.glob("fid/edm-uncond-rep1/heun-n8-rho7/rep*.json"))
    fids = [json.loads(p.read_text())["fid"] for p in rep1]
    assert len(fids) == 2
    assert float(table["edm_values"].iloc[0].split()[1]) == pytest.approx(np.mean(fids), rel=1e-5)
    assert (run_dir / "figures" / "significance.png").stat().st_size > 0
    res = subprocess.run([*cmd, "all", *config], capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    readme = (run_dir / "README.md").read_text()
    assert "Significance: EDM-AOT minus EDM" in readme and "significance.png" in readme
