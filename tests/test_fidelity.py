"""Fidelity to the paper, EDM and the authors' code: the two EDM baselines in the tables and
figures, "no published value" for other datasets, the paper's figure settings, the authors'
recipe as a config variant, EDM's EMA order, and docs/fidelity.md."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from aot import report
from aot.report.figures import make_figure
from aot.train import ema_beta_for

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED, RETRAINED = report.PUBLISHED_EDM, report.RETRAINED_EDM
VP_UNCOND = "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-uncond-vp.pkl"
DG_PLAIN = {"method": "dg", "aot": False, "discriminator": "d.pt"}


def fid_json(model: str, aot: bool, cond: bool, fid: float, repeat: int = 0, steps: int = 18,
             rho: float = 7.0, source: str = "trained", guidance: dict | None = None,
             features: str = "inception-v3-tf") -> dict:
    return {
        "kind": "fid",
        "model": {"name": model, "aot": aot, "cond": cond, "source": source},
        "sampler": {"key": f"heun-n{steps}-rho{rho:g}", "solver": "heun", "num_steps": steps,
                    "rho": float(rho), "S_churn": 0.0, "nfe": 2 * steps - 1, "guidance": guidance},
        "repeat": repeat, "seeds": [50000 * repeat, 50000 * repeat + 49999],
        "feature_network": {"name": features}, "fid": fid,
    }


def three(model, aot, cond, fids, **kw) -> list[dict]:
    return [fid_json(model, aot, cond, f, repeat=i, **kw) for i, f in enumerate(fids)]


def row(df, col: str, value: str):
    hits = df[df[col] == value]
    assert len(hits) == 1, f"{value!r}: {len(hits)} rows in {list(df[col])}"
    return hits.iloc[0]


def both_baselines() -> list[dict]:
    """EDM's published network (imported pickle), EDM retrained here, EDM-AOT: unconditional."""
    return (three("edm-uncond-vp", False, False, [1.99, 1.97, 1.98], source=f"edm-pickle:{VP_UNCOND}")
            + three("edm-uncond", False, False, [2.10, 2.05, 2.08])
            + three("aot-uncond", True, False, [1.90, 1.89, 1.91], steps=14, rho=90))


# ------------------------------------------------------------------------------ the two EDM rows


def test_table1_shows_published_and_retrained_edm_beside_the_paper():
    full, disp, meta = report.make_table(1, both_baselines())
    pub, ret = row(full, "model", PUBLISHED), row(full, "model", RETRAINED)
    assert pub["status"] == ret["status"] == "measured"
    assert pub["fid"] == pytest.approx(1.97) and pub["model_name"] == "edm-uncond-vp"
    assert ret["fid"] == pytest.approx(2.05) and ret["model_name"] == "edm-uncond"
    assert pub["fid_paper"] == ret["fid_paper"] == pytest.approx(1.97)  # the paper's EDM: published
    assert pub["diff"] == pytest.approx(0.0) and ret["diff"] == pytest.approx(0.08)
    assert "EDM" not in set(full["model"])  # no unlabelled EDM row
    assert list(full["model"]).index(PUBLISHED) + 1 == list(full["model"]).index(RETRAINED)
    notes = " ".join(meta["notes"])
    assert PUBLISHED in notes and RETRAINED in notes and "batch 512" in notes
    assert "docs/fidelity.md" in notes


def test_published_row_without_a_published_model_says_not_run():
    res = three("edm-cond", False, True, [1.85, 1.80, 1.83])
    full, disp, _ = report.make_table(2, res)
    pub = row(full, "model", PUBLISHED)
    assert pub["status"] == "not run (no tables.<part>.edm_published model)" and math.isnan(pub["fid"])
    assert row(disp, "Model", PUBLISHED)["FID (paper)"] == "1.79"  # the paper's number is still shown
    assert row(full, "model", RETRAINED)["fid"] == pytest.approx(1.80)


def test_table3_has_both_edm_rows_with_and_without_dg():
    res = both_baselines() + three("edm-uncond-vp", False, False, [1.78, 1.76, 1.77],
                                   source=f"edm-pickle:{VP_UNCOND}", guidance=DG_PLAIN)
    full, _, _ = report.make_table(3, res)
    assert list(full["model"][:4]) == [f"{PUBLISHED} w/o DG", f"{RETRAINED} w/o DG",
                                      f"{PUBLISHED} + DG", f"{RETRAINED} + DG"]
    assert row(full, "model", f"{PUBLISHED} w/o DG")["fid_uncond"] == pytest.approx(1.97)
    assert row(full, "model", f"{RETRAINED} w/o DG")["fid_uncond"] == pytest.approx(2.05)
    guided = row(full, "model", f"{PUBLISHED} + DG")
    assert guided["fid_uncond"] == pytest.approx(1.76) and guided["fid_uncond_paper"] == pytest.approx(1.77)
    assert math.isnan(row(full, "model", f"{RETRAINED} + DG")["fid_uncond"])
    assert row(full, "model", f"{RETRAINED} + DG")["fid_uncond_paper"] == pytest.approx(1.77)


def test_table4_and_figures_label_both_edm_curves():
    res = []
    for name, source, f0 in (("edm-uncond-vp", f"edm-pickle:{VP_UNCOND}", 1.9), ("edm-uncond", "trained", 2.1),
                             ("aot-uncond", "trained", 1.8)):
        for rho in (9, 81):
            res.append(fid_json(name, name.startswith("aot"), False, f0 + rho / 1000, rho=rho, source=source))
    full, _, _ = report.make_table(4, res)
    ours = full[full["stat"] == "ours"].set_index("setting")
    paper = full[full["stat"] == "paper"].set_index("setting")
    for kind, f0 in ((PUBLISHED, 1.9), (RETRAINED, 2.1)):
        label = f"{kind}, 18 steps, uncond"
        assert ours.loc[label, "rho=9"] == pytest.approx(f0 + 0.009)
        assert paper.loc[label, "rho=9"] == pytest.approx(1.94)  # the paper's "EDM, 18 steps, uncond"
    legends = {t.get_text() for ax in report.plot_fid_vs_nfe(res).axes if ax.get_legend()
               for t in ax.get_legend().get_texts()}
    assert {f"{PUBLISHED}, uncond (ours)", f"{RETRAINED}, uncond (ours)", "EDM-AOT, uncond (ours)",
            "EDM, uncond (paper)"} <= legends


# ------------------------------------------------------------------------------ other datasets


@pytest.mark.parametrize("number", [1, 2, 3, 4, 5])
def test_other_dataset_has_no_published_value(number):
    res = (three("edm-uncond", False, False, [0.5, 0.6], features="offline-classifier")
           + three("aot-uncond", True, False, [0.4, 0.5], rho=9, features="offline-classifier"))
    full, disp, meta = report.make_table(number, res, dataset="digits")
    paper_cols = [c for c in full.columns if "paper" in c or c == "stat"]
    if "stat" in full.columns:
        assert full.loc[full["stat"] == "paper", [c for c in full.columns if "=" in c]].isna().all().all()
        assert f"FID (paper): {report.NO_PUBLISHED_VALUE}" in set(disp[""])
    else:
        assert full[[c for c in paper_cols if c.startswith("fid")]].isna().all().all()
        shown = {v for c in disp.columns if "paper" in c for v in disp[c]}
        assert shown == {report.NO_PUBLISHED_VALUE}
    if number in (1, 2):
        assert not set(report.QUOTED_BASELINES) & set(full["model"])
        pub = row(full, "model", PUBLISHED)
        assert pub["status"] == "not run (EDM publishes CIFAR-10 networks only; dataset digits)"
    assert any("no published value for dataset digits" in n for n in meta["notes"])
    empty, _, _ = report.make_table(number, [], dataset="digits")  # nothing measured: no crash
    assert len(empty) >= 0


def test_table_cli_dataset_option(tmp_path):
    from aot import cli

    cli.main(["report", "table", "--table", "1", "--dataset", "digits", "--out-prefix", str(tmp_path / "t1")])
    df, meta = report.read_table_csv(tmp_path / "t1.csv")
    assert meta["dataset"] == "digits" and df["fid_paper"].isna().all()
    assert report.NO_PUBLISHED_VALUE in (tmp_path / "t1.md").read_text()


# ------------------------------------------------------------------------------ figures


def test_figure5_marks_the_fewest_steps_reaching_the_lowest_fid():
    assert report.minimal_step_optimum([27, 31, 35], [1.88, 1.88, 1.87]) == (35, 1.87)  # 1.87 is lower
    # FIDs the paper would print alike (two decimals) tie: the fewest steps win
    assert report.minimal_step_optimum([27, 31, 35], [1.8849, 1.8790, 1.8751]) == (27, 1.8849)
    fig = report.plot_best_fid_vs_nfe([fid_json("aot-uncond", True, False, f, steps=s, rho=9)
                                       for s, f in ((8, 3.0), (14, 1.9), (18, 1.9), (22, 1.95))])
    legends = {t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()}
    assert "optimum: 14 steps (NFE 27)" in legends  # 14 and 18 steps tie: the fewer
    assert "EDM-AOT, uncond (paper) optimum: 14 steps (NFE 27)" in legends  # the paper's 1.88 at NFE 27
    assert "EDM, uncond (paper) optimum: 22 steps (NFE 43)" in legends  # its lowest, 1.93


def test_trajectory_figures_label_models_by_kind(tmp_path):
    rng = np.random.default_rng(0)
    npz = tmp_path / "uncond-heun-n10-rho7.npz"
    arrays = {"names": np.array(["edm-uncond", "edm-uncond-vp", "aot-uncond"]),
              "t_steps": np.r_[np.geomspace(80, 0.002, 10), 0.0], "labels": -np.ones(2, int)}
    for i in range(3):
        arrays[f"x0_{i}"] = rng.uniform(-1, 1, (2, 10, 1, 4, 4)).astype(np.float32)
    np.savez(npz, **arrays)
    models = [{"name": "edm-uncond", "aot": False, "source": "trained"},
              {"name": "edm-uncond-vp", "aot": False, "source": f"edm-pickle:{VP_UNCOND}"},
              {"name": "aot-uncond", "aot": True, "source": "trained"}]
    npz.with_suffix(".json").write_text(json.dumps({"kind": "diagnostics", "models": models}))
    fig = make_figure("6", inputs=[str(npz)])
    ylabels = [ax.get_ylabel().replace("\n", " ") for ax in fig.axes if ax.get_ylabel()]
    assert ylabels == [f"edm-uncond {RETRAINED}", f"edm-uncond-vp {PUBLISHED}", "aot-uncond EDM-AOT"]
    assert "unconditional, 10 steps" in fig._suptitle.get_text()
    grid = make_figure("3", inputs=[str(npz)], step=0)
    assert "single Euler step" in grid._suptitle.get_text()
    # Figure 3 as the workflow draws it: (a) the EDM networks' final images (the same latents), then
    # every network's single Euler step from sigma_max
    for i in range(3):
        arrays[f"x_{i}"] = rng.uniform(-1, 1, (2, 11, 1, 4, 4)).astype(np.float32)
    np.savez(npz, **arrays)
    titles = [ax.get_title().replace("\n", " ") for ax in make_figure("3", inputs=[str(npz)], step=0,
                                                                        final_images=True).axes]
    assert [t.split(" ", 2)[:2] for t in titles] == [["(a)", "edm-uncond"], ["(b)", "edm-uncond-vp"],
                                                     ["(c)", "edm-uncond"], ["(d)", "edm-uncond-vp"],
                                                     ["(e)", "aot-uncond"]]
    assert all("final image (10 steps)" in t for t in titles[:2])
    assert all("single Euler step from σ=80" in t for t in titles[2:])


# ------------------------------------------------------------------------------ workflow


def dry_run(*args: str, configfile: Path, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-n", "-p", "--snakefile", str(ROOT / "Snakefile"),
           "--directory", str(cwd), *args, "--configfile", str(configfile)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=300)


def test_authors_recipe_and_published_baselines_dry_run(tmp_path):
    """config/authors.yaml: the authors' batch 256, B = 64 (4 GPUs, no --batch-gpu), N = 512 / 2048,
    with EDM's published VP networks as the paper's EDM rows; the paper's figure settings."""
    cfg = yaml.safe_load((ROOT / "config" / "authors.yaml").read_text())
    assert {m["name"]: m.get("train") for m in cfg["models"]}["aot-cond"] == \
        {"batch": 256, "batch_gpu": 64, "pool_size": 2048}
    res = dry_run("table1", "table2", "figure3", "figure5", "figure6", "figure7", "figure8",
                  configfile=ROOT / "config" / "authors.yaml", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    trains = [line for line in out.splitlines() if " -m aot train " in line or "aot train --outdir" in line]
    assert len(trains) == 4
    for line in trains:
        model = line.split("--outdir")[1].split()[0].rstrip("/").rsplit("/", 1)[1]
        assert "--batch 256" in line and "--batch-gpu 64" in line
        assert f"--pool-size {2048 if model.endswith('-cond') else 512}" in line, line
    assert "edm-cifar10-32x32-uncond-vp.pkl" in out and "edm-cifar10-32x32-cond-vp.pkl" in out
    table1 = next(line for line in out.splitlines() if "aot report table --table 1" in line)
    assert "results/authors/fid/edm-uncond-vp/heun-n18-rho7/rep0.json" in table1
    assert "--dataset cifar10" in table1
    figure = {n: next(line for line in out.splitlines() if f"--figure {n} " in line) for n in (3, 5, 6, 7, 8)}
    assert "--step 0 --final-images" in figure[3] and "uncond-heun-n18-rho7.npz" in figure[3]
    assert "--decimals 2" in figure[5]
    assert "fid/edm-uncond-vp/heun-n14-rho27/rep0.json" in figure[5]  # the published network's Table 5 grid
    assert "uncond-heun-n10-rho7.npz" in figure[6]
    assert "uncond-heun-n18-rho7.npz" in figure[7] and "cond-heun-n18-rho7.npz" in figure[8]
    assert "diagnostics/uncond-heun-n18-rho7.npz" in figure[7] and "/cond-heun-n18" in figure[8]


def test_published_model_must_be_an_edm_pickle(tmp_path):
    cfg = yaml.safe_load((ROOT / "config" / "authors.yaml").read_text())
    cfg["tables"]["uncond"]["edm_published"] = "aot-uncond"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = dry_run(configfile=path, cwd=tmp_path)
    assert res.returncode != 0
    lines = [line for line in (res.stdout + res.stderr).splitlines() if "config error" in line]
    assert lines and lines[0].startswith("config error: tables.uncond.edm_published: model 'aot-uncond' "
                                         "must be EDM's published network"), res.stderr[-2000:]
    assert not (tmp_path / "results").exists()


# ------------------------------------------------------------------------------ EMA


def test_ema_beta_closed_form():
    """EDM: half-life min(ema, cur_nimg * ema_rampup) with cur_nimg the images BEFORE the step."""
    assert ema_beta_for(0, 32, 0.0005, 0.5) == 0.0  # first step: the EMA is the network
    assert ema_beta_for(32, 32, 0.0005, 0.5) == pytest.approx(0.25)  # half-life 16 images
    assert ema_beta_for(64, 32, 0.0005, 0.5) == pytest.approx(0.5)  # 32
    assert ema_beta_for(10**6, 32, 0.0005, 0.5) == pytest.approx(0.5 ** (32 / 500))  # capped at ema
    assert ema_beta_for(0, 32, 0.0005, 0) == pytest.approx(0.5 ** (32 / 500))  # no ramp-up


TRAIN_ARGS = ["--arch", "ddpmpp", "--cbase", "8", "--cres", "1", "--num-blocks", "1", "--attn", "",
              "--batch", "32", "--batch-gpu", "16", "--pool-size", "64", "--lr", "1e-2",
              "--lr-rampup", "0.000001", "--ema", "0.0005", "--ema-rampup", "0.5", "--dropout", "0",
              "--augment", "0", "--tick", "1", "--dump", "1000", "--snap", "1000", "--device", "cpu",
              "--deterministic", "--threads", "1"]


def _train_runs(tmp_path: Path, steps: tuple[int, ...]) -> list[dict]:
    """Training runs of 1, 2, ... steps from the same seed, in one Python process (one start-up)."""
    data = tmp_path / "digits.zip"
    argvs = [["data", "digits", "--resolution", "8", "--dest", str(data)]]
    argvs += [["train", "--outdir", str(tmp_path / f"run{k}"), "--data", str(data),
               "--duration", str(k * 32 / 1e6), *TRAIN_ARGS] for k in steps]
    code = "import json, sys\nfrom aot import cli\nfor argv in json.loads(sys.argv[1]):\n    cli.main(argv)\n"
    res = subprocess.run([sys.executable, "-c", code, json.dumps(argvs)], capture_output=True, text=True,
                         timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr[-3000:]
    out = []
    for k in steps:
        state = torch.load(tmp_path / f"run{k}" / "training-state.pt", map_location="cpu", weights_only=False)
        out.append({"net": state["net"], "ema": state["ema"], "cur_nimg": state["cur_nimg"]})
    return out


def test_training_ema_follows_edm_order(tmp_path):
    """Runs of 1, 2 and 3 steps (deterministic, so step k of each run is the same): the EMA after
    step k is lerp(net_k, ema_{k-1}, beta(images before step k)), EDM's order; the order with the
    count after the increment does not fit."""
    runs = _train_runs(tmp_path, (1, 2, 3))
    assert [r["cur_nimg"] for r in runs] == [32, 64, 96]
    params = [k for k, v in runs[0]["net"].items() if v.is_floating_point()]
    for k in params:
        assert torch.equal(runs[0]["ema"][k], runs[0]["net"][k])  # beta 0 at the first step
    moved = False
    for step in (2, 3):
        prev, cur = runs[step - 2], runs[step - 1]
        before = ema_beta_for((step - 1) * 32, 32, 0.0005, 0.5)
        after = ema_beta_for(step * 32, 32, 0.0005, 0.5)
        for k in params:
            want = torch.lerp(cur["net"][k], prev["ema"][k], before)
            assert torch.allclose(cur["ema"][k], want, rtol=0, atol=1e-7), (step, k)
            wrong = torch.lerp(cur["net"][k], prev["ema"][k], after)
            moved |= not torch.allclose(cur["ema"][k], wrong, rtol=0, atol=1e-6)
    assert moved  # the two orders give different weights here: the test can tell them apart


# ------------------------------------------------------------------------------ docs


def test_fidelity_doc_covers_the_disagreements_and_the_report_links_it(tmp_path):
    doc = (ROOT / "docs" / "fidelity.md").read_text()
    for topic in ("NFE 29", "27", "batch 128", "--batch 256", "Table 4", "epochs", "clean-fid",
                  "fid.py", "published network", "config/authors.yaml", "EMA", "fid_npzs.py", "dg.baseline",
                  "fid.reference: edm", "compare-references", "train.seed", "controlled comparison"):
        assert topic in doc, topic
    run = tmp_path / "results" / "demo"
    report.write_table(1, both_baselines(), run / "tables" / "table1")
    text = report.write_readme(run, benchmarks=tmp_path / "none").read_text()
    link = re.search(r"\[docs/fidelity\.md\]\(([^)]+)\)", text)
    assert link and (run / link.group(1)).resolve() == (ROOT / "docs" / "fidelity.md").resolve()
    assert PUBLISHED in text and RETRAINED in text
