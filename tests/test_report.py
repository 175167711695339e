"""Tables, figures and the run report (aot.report, `python -m aot report`) from hand-written result files."""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import in_ci, skip_or_fail
from PIL import Image

from aot import cli, report
from aot.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SHARED_PAPER = REPO.parent / "shared" / "paper"  # ../shared/paper from the repository root
DG_AOT = {"method": "dg", "aot": True, "discriminator": "d.pt", "dg_weight_1st_order": 2.0,
          "dg_weight_2nd_order": 0.0, "time_min": 0.01, "time_max": 1.0, "boosting": False}
DG_PLAIN = {**DG_AOT, "aot": False}
RETRAINED = report.RETRAINED_EDM  # the label of an EDM baseline trained here (model.source "trained")


def fid_json(model: str, aot: bool, cond: bool, fid: float, repeat: int = 0, steps: int = 18,
             rho: float = 7.0, guidance: dict | None = None, features: str = "inception-v3-tf",
             nfe: int | None = None) -> dict:
    key = f"heun-n{steps}-rho{rho:g}"
    return {
        "kind": "fid",
        "model": {"name": model, "aot": aot, "cond": cond, "checkpoint": "m.pt",
                  "source": "trained", "kimg": 200.0},
        "sampler": {"key": key, "solver": "heun", "num_steps": steps, "rho": float(rho),
                    "sigma_min": 0.002, "sigma_max": 80.0, "S_churn": 0.0,
                    "nfe": 2 * steps - 1 if nfe is None else nfe, "guidance": guidance},
        "repeat": repeat, "seeds": [50000 * repeat, 50000 * repeat + 49999], "num_images": 50000,
        "feature_network": {"name": features,
                            "mode": "offline" if features == "offline-classifier" else "legacy_tensorflow",
                            "path": None},
        "reference": {"name": "cifar10-train", "path": "ref.npz", "num_images": 50000},
        "fid": fid, "time_s": 10.0, "samples": f"rep{repeat}.npz", "env": {},
    }


def write_results(folder: Path, results: list[dict]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, r in enumerate(results):
        p = folder / f"r{i:03d}.json"
        p.write_text(json.dumps(r))
        paths.append(p)
    return paths


def three(model, aot, cond, fids, **kw) -> list[dict]:
    return [fid_json(model, aot, cond, f, repeat=i, **kw) for i, f in enumerate(fids)]


def paper_csv(name: str) -> pd.DataFrame:
    """The paper's numbers from ../shared/paper beside the repository, independent of the package
    copy the report reads. Outside CI, without that folder, the package copy stands in; in CI
    (conftest.in_ci) a missing folder fails the test."""
    if SHARED_PAPER.is_dir():
        return pd.read_csv(SHARED_PAPER / name, comment="#")
    if in_ci():
        pytest.fail(f"no {SHARED_PAPER} beside the repository: paper values cannot be checked", pytrace=False)
    return pd.read_csv(resources.files("aot").joinpath("paper", name), comment="#")


def report_cli(argv: list[str]) -> None:
    """`python -m aot report ...`, in this process."""
    cli.main(["report", *argv])


def row(df: pd.DataFrame, col: str, value: str) -> pd.Series:
    hits = df[df[col] == value]
    assert len(hits) == 1, f"{value!r}: {len(hits)} rows"
    return hits.iloc[0]


# ------------------------------------------------------------------------------ paper numbers


def test_package_paper_copy_equals_shared_folder():
    if not SHARED_PAPER.is_dir():
        skip_or_fail(f"no {SHARED_PAPER} beside the repository")
    for number, name in report.PAPER_FILES.items():
        ours = resources.files("aot").joinpath("paper", name).read_bytes()
        assert ours == (SHARED_PAPER / name).read_bytes(), name
        pd.testing.assert_frame_equal(report.paper_table(number), paper_csv(name))


# ------------------------------------------------------------------------------ aggregation


def test_min_of_three_aggregation():
    agg = report.as_aggregate(three("aot-uncond", True, False, [2.1, 1.9, 2.3]))
    assert len(agg) == 1
    r = agg.iloc[0]
    assert r["fid"] == pytest.approx(1.9)
    assert r["fid_mean"] == pytest.approx(2.1)
    assert r["fid_std"] == pytest.approx(0.2)  # sample standard deviation
    assert r["n"] == 3 and r["repeats"] == [0, 1, 2]
    assert r["sampler_key"] == "heun-n18-rho7"


def test_sample_sets_are_kept_apart():
    res = (three("aot-uncond", True, False, [2.0, 2.1, 2.2])
           + three("aot-uncond", True, False, [1.8, 1.7, 1.9], steps=14, rho=90)
           + three("aot-uncond", True, False, [1.6, 1.5], steps=14, rho=90, guidance=DG_AOT))
    agg = report.as_aggregate(res)
    assert sorted(agg["sampler_key"]) == ["dgaot-heun-n14-rho90", "heun-n14-rho90", "heun-n18-rho7"]
    assert sorted(agg["fid"]) == pytest.approx([1.5, 1.7, 2.0])


def test_guidance_from_sampler_key_and_top_level_nfe():
    obj = fid_json("aot-uncond", True, False, 1.7, steps=14, rho=90)
    obj["sampler"]["key"] = "dgaot-heun-n14-rho90"
    del obj["sampler"]["nfe"]
    obj["nfe"] = 27
    rec = report.parse_fid_result(obj)
    assert rec["guidance"] == "aot" and rec["sampler_key"] == "dgaot-heun-n14-rho90" and rec["nfe"] == 27


def test_duplicate_repeat_is_an_error(tmp_path):
    paths = write_results(tmp_path, [fid_json("edm-uncond", False, False, 2.0, repeat=1)] * 2)
    with pytest.raises(UserError, match="r001.json"):
        report.aggregate(report.load_fid_results(paths))


# ------------------------------------------------------------------------------ tables


def test_table1_cells_and_files(tmp_path):
    res = (three("edm-uncond", False, False, [2.05, 2.00, 2.10])
           + three("aot-uncond", True, False, [1.99, 2.03, 2.01])
           + three("aot-uncond", True, False, [1.93, 1.91, 1.95], steps=14, rho=90)
           + [fid_json("aot-uncond", True, False, 3.3, steps=8, rho=81)]
           + three("aot-cond", True, True, [1.7, 1.8, 1.9]))  # conditional: not in Table 1
    paths = write_results(tmp_path / "fid", res)
    out = report.write_table(1, report.load_fid_results(paths), tmp_path / "t" / "table1")
    assert sorted(p.name for p in out) == ["table1.csv", "table1.md", "table1.tex"]
    df, meta = report.read_table_csv(tmp_path / "t" / "table1.csv")
    assert meta["table"] == "1" and meta["feature_network"] == "inception-v3-tf"
    paper = paper_csv("table1_uncond.csv")
    # every paper row is there, with the paper's value
    for _, p in paper.iterrows():
        labels = [report.PUBLISHED_EDM, RETRAINED] if p["model"] == "EDM" else [p["model"]]
        for label in labels:
            assert row(df, "model", label)["fid_paper"] == pytest.approx(p["fid"])
    assert row(df, "model", report.PUBLISHED_EDM)["status"].startswith("not run")
    edm = row(df, "model", RETRAINED)
    assert edm["status"] == "measured" and edm["n"] == 3
    assert edm["fid"] == pytest.approx(2.00) and edm["fid_mean"] == pytest.approx(2.05)
    assert edm["diff"] == pytest.approx(2.00 - 1.97)
    best = row(df, "model", "EDM-AOT (rho=90, 14 steps)")
    assert best["fid"] == pytest.approx(1.91) and best["nfe"] == 27
    assert best["diff"] == pytest.approx(1.91 - 1.88)
    assert row(df, "model", "EDM-AOT (rho=7, 18 steps)")["fid"] == pytest.approx(1.99)
    extra = row(df, "model", "EDM-AOT (rho=81, 8 steps)")
    assert extra["fid"] == pytest.approx(3.3) and extra["n"] == 1 and math.isnan(extra["fid_paper"])
    for name in report.QUOTED_BASELINES:
        q = row(df, "model", name)
        assert q["status"] == "quoted" and math.isnan(q["fid"])
    md = (tmp_path / "t" / "table1.md").read_text()
    assert "| EDM-AOT (rho=90, 14 steps) | 27 | measured | 1.91 |" in md
    assert "| DDPM | 1000 | quoted |" in md
    tex = (tmp_path / "t" / "table1.tex").read_text()
    assert r"\begin{tabular}" in tex and "EDM-AOT (rho=90, 14 steps) & 27 & measured & 1.91" in tex


def test_table2_uses_conditional_models_and_marks_unmeasured_rows():
    res = three("edm-cond", False, True, [1.85, 1.80, 1.83])
    full, disp, meta = report.make_table(2, res)
    paper = paper_csv("table2_cond.csv")
    expand = {"EDM": [report.PUBLISHED_EDM, RETRAINED]}
    assert list(full["model"]) == [m for p in paper["model"] for m in expand.get(p, [p])]
    assert list(full["fid_paper"]) == pytest.approx([f for p, f in zip(paper["model"], paper["fid"])
                                                     for _ in expand.get(p, [p])])
    assert row(full, "model", RETRAINED)["fid"] == pytest.approx(1.80)
    missing = row(full, "model", "EDM-AOT (rho=72, 15 steps)")
    assert missing["status"] == "not measured" and math.isnan(missing["fid"])
    assert row(full, "model", "PFGM++")["status"] == "quoted"
    assert row(disp, "Model", "EDM-AOT (rho=72, 15 steps)")["FID (ours, min)"] == ""


def test_table3_rows_and_cell_choice():
    res = (three("edm-uncond", False, False, [2.0, 2.1, 2.2])
           + three("edm-uncond", False, False, [1.9, 1.8, 1.85], guidance=DG_PLAIN)
           + three("aot-uncond", True, False, [2.05, 2.0, 2.1])                       # default
           + three("aot-uncond", True, False, [1.95, 1.9, 1.92], steps=14, rho=90)    # DG's
           + three("aot-uncond", True, False, [1.75, 1.7, 1.72], steps=14, rho=90, guidance=DG_PLAIN)
           + three("aot-uncond", True, False, [1.69, 1.67, 1.68], steps=14, rho=90, guidance=DG_AOT)
           + three("aot-cond", True, True, [1.6, 1.58, 1.59], steps=15, rho=72, guidance=DG_AOT))
    full, disp, _ = report.make_table(3, res)
    paper = paper_csv("table3_dg.csv")
    expand = {"EDM w/o DG": [f"{report.PUBLISHED_EDM} w/o DG", f"{RETRAINED} w/o DG"],
              "EDM+DG": [f"{report.PUBLISHED_EDM} + DG", f"{RETRAINED} + DG"]}
    assert list(full["model"]) == [m for p in paper["model"] for m in expand.get(p, [p])]
    for c in ("uncond", "cond"):
        assert list(full[f"fid_{c}_paper"]) == pytest.approx(
            [f for p, f in zip(paper["model"], paper[f"fid_{c}"]) for _ in expand.get(p, [p])])
    get = lambda label, c: row(full, "model", label)[f"fid_{c}"]  # noqa: E731
    assert get(f"{RETRAINED} w/o DG", "uncond") == pytest.approx(2.0)
    assert get(f"{RETRAINED} + DG", "uncond") == pytest.approx(1.8)
    assert math.isnan(get(f"{report.PUBLISHED_EDM} + DG", "uncond"))
    aot_plain = row(full, "model", "EDM-AOT w/o DG")
    assert aot_plain["fid_uncond"] == pytest.approx(1.9)  # the guided runs' sampler, not the default
    assert aot_plain["sampler_uncond"] == "heun-n14-rho90"
    assert get("EDM-AOT + DG w/o AOT", "uncond") == pytest.approx(1.70)
    assert get("EDM-AOT + DG w/ AOT", "uncond") == pytest.approx(1.67)
    assert get("EDM-AOT + DG w/ AOT", "cond") == pytest.approx(1.58)
    assert math.isnan(get(f"{RETRAINED} w/o DG", "cond"))
    assert row(full, "model", "EDM-AOT + DG w/ AOT")["diff_uncond"] == pytest.approx(1.67 - 1.68)
    assert row(disp, "Model", f"{RETRAINED} + DG")["uncond: FID (ours, min)"] == "1.80"
    # beside each quoted value, how it was measured; ours the same way: repeat 0 alone (one 50k set)
    assert row(full, "model", f"{RETRAINED} w/o DG")["paper_protocol"] == "min3"  # EDM's: min of 3
    for label in (f"{RETRAINED} + DG", "EDM-AOT w/o DG", "EDM-AOT + DG w/ AOT"):
        assert row(full, "model", label)["paper_protocol"] == "single", label  # DG's fid_npzs.py, the paper
    assert "fid_npzs.py" in row(disp, "Model", f"{RETRAINED} + DG")["Paper protocol"]
    dg_row = row(full, "model", f"{RETRAINED} + DG")
    assert dg_row["fid_uncond_single"] == pytest.approx(1.9)  # repeat 0, not the minimum 1.8
    assert dg_row["diff_uncond_single"] == pytest.approx(1.9 - 1.77)
    assert row(disp, "Model", f"{RETRAINED} + DG")["uncond: FID (ours, one set)"] == "1.90"
    assert row(disp, "Model", f"{RETRAINED} + DG")["uncond: Δ"] == "+0.13"  # one set vs DG's one set
    assert row(disp, "Model", f"{RETRAINED} w/o DG")["uncond: Δ"] == "+0.03"  # min vs EDM's min of 3
    digits, _, _ = report.make_table(3, res, dataset="digits")  # nothing quoted: no protocol to name
    assert set(digits["paper_protocol"]) == {""} and set(digits["paper_source"]) == {""}


def test_results_against_different_references_never_mix():
    """A table of FIDs against clean-fid's statistics and against EDM's reference is refused, naming
    one file of each (fid.reference: the two are not the same numbers)."""
    edm_ref = [{**r, "reference": {**r["reference"], "name": "edm:cifar10-32x32"}}
               for r in three("aot-uncond", True, False, [1.9, 1.8, 1.85])]
    with pytest.raises(UserError, match=r"FID results mix reference statistics: cifar10-train .*, "
                                        r"edm:cifar10-32x32 "):
        report.make_table(1, three("edm-uncond", False, False, [2.0, 2.1, 2.2]) + edm_ref)
    full, _, _ = report.make_table(1, edm_ref)  # one reference: fine
    assert 1.8 in set(full["fid"].round(6))


def test_table4_cells_and_empty_paper_cells():
    res = (three("edm-uncond", False, False, [1.99, 1.96, 1.98], rho=9)
           + three("aot-uncond", True, False, [3.2, 3.1, 3.3], steps=8, rho=27)
           + three("aot-uncond", True, False, [1.95, 1.96, 1.97], rho=16))
    full, disp, _ = report.make_table(4, res)
    paper = paper_csv("table4_rho.csv").set_index("setting")

    def cell(setting, stat, col):
        return row(full[full["stat"] == stat], "setting", setting)[col]

    edm18 = f"{RETRAINED}, 18 steps, uncond"  # beside the paper's "EDM, 18 steps, uncond"
    assert cell(edm18, "ours", "rho=9") == pytest.approx(1.96)
    assert cell(edm18, "n", "rho=9") == 3
    assert cell(edm18, "paper", "rho=9") == pytest.approx(1.94)
    assert cell(edm18, "diff", "rho=9") == pytest.approx(0.02)
    assert "EDM, 18 steps, uncond" not in set(full["setting"])
    assert cell("EDM-AOT, 8 steps, uncond", "ours", "rho=27") == pytest.approx(3.1)
    assert cell("EDM-AOT, 8 steps, uncond", "paper", "rho=27") == pytest.approx(3.06)
    # the paper's empty cell stays empty; our measured value is still there
    assert math.isnan(cell("EDM-AOT, 18 steps, uncond", "paper", "rho=16"))
    assert cell("EDM-AOT, 18 steps, uncond", "ours", "rho=16") == pytest.approx(1.95)
    assert math.isnan(cell("EDM-AOT, 18 steps, uncond", "diff", "rho=16"))
    for setting, p in paper.iterrows():
        for col, v in p.items():
            got = cell(edm18 if setting == "EDM, 18 steps, uncond" else setting, "paper", col)
            assert (math.isnan(got) and pd.isna(v)) or got == pytest.approx(v)
    # missing measurement: empty cell, the paper value alone
    assert math.isnan(cell("EDM, 8 steps, uncond", "ours", "rho=9"))
    shown = disp[disp["Setting"] == "EDM, 8 steps, uncond"]
    assert list(shown[""]) == ["FID (paper)"]


def test_table5_best_over_rho_set(tmp_path):
    res = []
    for rho, f in ((7, 1.0), (9, 2.5), (27, 2.2), (81, 2.3), (243, 2.6)):  # rho=7 not in the set
        res += three("aot-uncond", True, False, [f, f + 0.1, f + 0.2], steps=14, rho=rho)
    res += three("edm-cond", False, True, [4.0, 4.2, 4.1], steps=8, rho=81)
    full, _, meta = report.make_table(5, res, rhos=(9, 27, 81, 243))  # the paper's set (config.yaml)
    ours = full[full["stat"] == "ours"].set_index("setting")
    best = full[full["stat"] == "best rho"].set_index("setting")
    assert ours.loc["EDM-AOT, uncond", "nfe=27"] == pytest.approx(2.2)
    assert best.loc["EDM-AOT, uncond", "nfe=27"] == 27
    assert ours.loc[f"{RETRAINED}, cond", "nfe=15"] == pytest.approx(4.0)
    paper = full[full["stat"] == "paper"].set_index("setting")
    assert paper.loc["EDM-AOT, uncond", "nfe=27"] == pytest.approx(1.88)
    assert math.isnan(ours.loc["EDM, uncond", "nfe=27"])
    # a different rho set (a CLI option)
    full7, _, meta7 = report.make_table(5, res, rhos=(7, 9))
    assert full7[full7["stat"] == "ours"].set_index("setting").loc["EDM-AOT, uncond", "nfe=27"] \
        == pytest.approx(1.0)
    assert meta7["rhos"] == "7,9"
    paths = write_results(tmp_path / "fid", res)
    report_cli(["table", "--table", "5", "--rhos", "9,27", "--out-prefix",
                str(tmp_path / "t" / "table5"), str(tmp_path / "fid")])
    df, meta = report.read_table_csv(tmp_path / "t" / "table5.csv")
    assert meta["rhos"] == "9,27"
    assert len(paths) == 18


def test_tables_without_measurements_are_made(tmp_path):
    for n in (1, 2, 3, 4, 5):
        report_cli(["table", "--table", str(n), "--out-prefix", str(tmp_path / f"table{n}")])
        df, meta = report.read_table_csv(tmp_path / f"table{n}.csv")
        assert meta["sample_sets"] == "0" and len(df)
    df, _ = report.read_table_csv(tmp_path / "table1.csv")
    assert df["fid"].isna().all()


def test_offline_feature_network_caveat(tmp_path):
    res = three("aot-uncond", True, False, [0.5, 0.6, 0.7], features="offline-classifier")
    report.write_table(1, res, tmp_path / "table1")
    for ext in ("csv", "md", "tex"):
        text = (tmp_path / f"table1.{ext}").read_text()
        assert "offline classifier" in text and "not comparable to the paper column" in text
    assert report.OFFLINE_CAVEAT in (tmp_path / "table1.md").read_text()
    assert "Δ" not in (tmp_path / "table1.md").read_text().split("\n- ")[0]  # no difference column
    df, meta = report.read_table_csv(tmp_path / "table1.csv")
    assert meta["feature_network"] == "offline-classifier" and df["diff"].isna().all()
    assert row(df, "model", "EDM-AOT (rho=7, 18 steps)")["fid"] == pytest.approx(0.5)
    full, _, _ = report.make_table(4, res)
    assert "diff" not in set(full["stat"])


def test_mixed_feature_networks_are_an_error():
    res = [fid_json("a", True, False, 2.0), fid_json("b", False, False, 2.0,
                                                     features="offline-classifier")]
    with pytest.raises(UserError, match="mix feature networks"):
        report.make_table(1, res)


def test_bad_json_names_the_file_and_writes_nothing(tmp_path, capsys):
    good = write_results(tmp_path / "fid", three("edm-uncond", False, False, [2.0, 2.1, 2.2]))
    bad = tmp_path / "fid" / "broken.json"
    bad.write_text('{"kind": "fid", "model": ')
    out = tmp_path / "tables" / "table1"
    with pytest.raises(SystemExit) as exc:
        report_cli(["table", "--table", "1", "--out-prefix", str(out), *map(str, good), str(bad)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "broken.json" in err and len(err.splitlines()) == 1
    assert not list(tmp_path.glob("tables/*"))


@pytest.mark.parametrize("drop", ["fid", "model.aot", "sampler.num_steps", "feature_network.name"])
def test_missing_field_names_file_and_key(tmp_path, drop):
    obj = fid_json("edm-uncond", False, False, 2.0)
    parent, _, leaf = drop.rpartition(".")
    del (obj[parent] if parent else obj)[leaf]
    path = write_results(tmp_path, [obj])[0]
    with pytest.raises(UserError, match=rf"r000\.json.*'{drop}'"):
        report.load_fid_results([path])


def test_outputs_are_all_or_none(tmp_path):
    (tmp_path / "table1.tex").mkdir()  # the last file cannot be written
    with pytest.raises(OSError):
        report.write_table(1, three("edm-uncond", False, False, [2.0, 2.1, 2.2]),
                           tmp_path / "table1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table1.tex"]


def test_folder_arguments_skip_other_json(tmp_path):
    write_results(tmp_path / "fid", three("edm-uncond", False, False, [2.0, 2.1, 2.2]))
    (tmp_path / "fid" / "other.json").write_text('{"kind": "diagnostics"}')
    assert len(report.load_fid_results([tmp_path / "fid"])) == 3


# ------------------------------------------------------------------------------ figures


def synthetic_results() -> list[dict]:
    res = []
    for aot in (False, True):
        for cond in (False, True):
            name = f"{'aot' if aot else 'edm'}-{'cond' if cond else 'uncond'}"
            for steps in (8, 18):
                for rho in (7, 27, 81):
                    f = 2 + 10 / steps + 0.1 * abs(math.log(rho / 30)) - 0.2 * aot
                    res.append(fid_json(name, aot, cond, f, steps=steps, rho=rho))
    return res


def synthetic_diagnostics(channels: int, seeds: int = 4, steps: int = 5, res: int = 8) -> dict:
    rng = np.random.default_rng(0)
    d = {"names": np.array(["edm-uncond", "aot-uncond"]),
         "t_steps": np.r_[np.geomspace(80, 0.002, steps), 0.0], "labels": -np.ones(seeds, int)}
    for i in range(2):
        d[f"x0_{i}"] = rng.uniform(-1, 1, (seeds, steps, channels, res, res)).astype(np.float32)
        d[f"x_{i}"] = rng.uniform(-1, 1, (seeds, steps + 1, channels, res, res)).astype(np.float32)
    return d


def assert_png(paths: list[Path]) -> None:
    png, pdf = paths
    with Image.open(png) as im:
        im.load()
        assert im.size[0] > 0 and im.size[1] > 0
    assert pdf.read_bytes().startswith(b"%PDF")


def png_only(fig, prefix: Path) -> None:
    """Curve figures are slow to lay out; the PNG alone (small) shows that they render."""
    (png,) = report.save_figure(fig, prefix, dpi=40, formats=("png",))
    with Image.open(png) as im:
        im.load()
        assert im.size[0] > 0 and im.size[1] > 0


def test_curve_figures(tmp_path):
    res = synthetic_results()
    assert_png(report.save_figure(report.plot_best_fid_vs_nfe(res), tmp_path / "figure5"))
    fig1 = report.plot_fid_vs_nfe(res)
    assert [ax.get_title() for ax in fig1.axes if ax.get_title()] == ["unconditional", "conditional"]
    for ax in (ax for ax in fig1.axes if ax.get_legend()):  # ours, the paper's curves, the quoted baselines
        part = "cond" if ax.get_title() == "conditional" else "uncond"
        legend = {t.get_text() for t in ax.get_legend().get_texts()}
        assert {f"{RETRAINED}, {part} (ours)", f"EDM-AOT, {part} (ours)", f"EDM, {part} (paper)",
                f"EDM-AOT, {part} (paper)"} <= legend, legend
    png_only(fig1, tmp_path / "figure1")
    png_only(report.plot_fid_vs_rho(res, steps=(18, 8)), tmp_path / "figure4")
    offline = [fid_json("a", True, False, 0.3, steps=8, features="offline-classifier")]
    png_only(report.plot_fid_vs_rho(offline, steps=(8,)), tmp_path / "offline")  # twin axes, no data


@pytest.mark.parametrize("channels", [1, 3])
def test_image_figures(tmp_path, channels):
    diag = synthetic_diagnostics(channels)
    assert_png(report.save_figure(report.plot_trajectory_strip(diag, max_columns=3), tmp_path / "f2"))
    assert_png(report.save_figure(report.plot_denoised_grid(diag, step=1), tmp_path / "f3"))
    fig3 = report.plot_denoised_grid(diag, step=0, final=[0])  # Figure 3: (a) EDM's final images first
    assert [ax.get_title().split("\n")[0] for ax in fig3.axes] == ["(a) edm-uncond", "(b) edm-uncond",
                                                                   "(c) aot-uncond"]
    assert_png(report.save_figure(fig3, tmp_path / "f3a"))
    labelled = {**diag, "labels": np.array([0, 1, 1, 2])}  # Figure 9: a row of panels per class
    fig9 = report.plot_denoised_by_class(labelled, step=0)
    assert [ax.get_ylabel() for ax in fig9.axes if ax.get_ylabel()] == ["class 0", "class 1", "class 2"]
    assert len(fig9.axes) == 3 * 2
    with pytest.raises(UserError, match="class labels"):
        report.plot_denoised_by_class(diag, step=0)  # unconditional: labels -1
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (40, 8, 8, channels), dtype=np.uint8)
    labels = rng.integers(0, 10, 40) if channels == 3 else None
    assert_png(report.save_figure(report.plot_sample_grid(images, labels, count=20, columns=5),
                                  tmp_path / "f10"))
    from aot.report.images import _sample_mosaic, sample_subset

    few = sample_subset(images, labels, 20, 5)  # what a grid shows, kept from a 50k set
    assert len(few[0]) <= 20 + 5 and np.array_equal(_sample_mosaic(*few, 20, 5), _sample_mosaic(images, labels, 20, 5))
    grids = report.plot_sample_grids([(images, labels, "EDM"), (images, labels, "EDM-AOT"),
                                      (images, labels, "EDM-AOT, best")], count=20, columns=5)
    assert [ax.get_title() for ax in grids.axes] == ["EDM", "EDM-AOT", "EDM-AOT, best", ""]  # 2 x 2, one empty


def test_curvature_figure(tmp_path):
    assert_png(report.save_figure(report.plot_curvature(curvature_json(4)), tmp_path / "curvature"))
    with pytest.raises(UserError, match="x0_distance_to_final"):
        report.plot_curvature({"models": [{"name": "a", "curve": {"sigma": [1]}}]})


def curvature_json(steps: int) -> dict:
    return {"kind": "diagnostics", "sampler": {"key": f"heun-n{steps}-rho7", "num_steps": steps},
            "models": [{"name": n, "aot": a, "cond": False, "curvature": 0.1 + a,
                        "curve": {"sigma": [80, 10, 1, 0.1][:steps],
                                  "x0_distance_to_final": [3, 2, 1, 0.5][:steps]}}
                       for n, a in (("edm-uncond", False), ("aot-uncond", True))]}


def test_figure_cli_as_the_workflow_calls_it(tmp_path):
    figs = tmp_path / "figs"
    np.savez(tmp_path / "uncond-heun-n18-rho7.npz", **synthetic_diagnostics(1))
    rhos = ["--rhos", "9,27,81,243"]
    report_cli(["figure", "--figure", "6", "--kind", "strip", *rhos, "--out-prefix",
                str(figs / "figure6"), str(tmp_path / "uncond-heun-n18-rho7.npz")])
    report_cli(["figure", "--figure", "3", "--kind", "denoised-grid", "--step", "0", "--final-images", *rhos,
                "--out-prefix", str(figs / "figure3"), str(tmp_path / "uncond-heun-n18-rho7.npz")])
    np.savez(tmp_path / "cond-heun-n18-rho7.npz", **{**synthetic_diagnostics(1), "labels": np.array([3, 1, 3, 0])})
    report_cli(["figure", "--figure", "9", "--kind", "denoised-grid", "--step", "0", "--by-class", *rhos,
                "--out-prefix", str(figs / "figure9"), str(tmp_path / "cond-heun-n18-rho7.npz")])
    report_cli(["figure", "--figure", "2", "--diagnostics", str(tmp_path / "uncond-heun-n18-rho7.npz"),
                "--step", "0", "--out-prefix", str(figs / "figure2")])
    meta = {"model": {"name": "aot-cond", "aot": True, "cond": True}, "sampler": {"key": "heun-n18-rho7"}}
    np.savez(tmp_path / "rep0.npz", images=np.zeros((12, 8, 8, 1), np.uint8),
             labels=np.arange(12) % 3, seeds=np.arange(12), meta=np.array(json.dumps(meta)))
    report_cli(["figure", "--figure", "11", "--kind", "samples", *rhos, "--out-prefix",
                str(figs / "figure11"), str(tmp_path / "rep0.npz")])
    report_cli(["figure", "--figure", "10", "--kind", "samples", *rhos, "--out-prefix",  # a panel per set
                str(figs / "figure10"), str(tmp_path / "rep0.npz"), str(tmp_path / "rep0.npz")])
    for steps in (4, 2):
        (tmp_path / f"uncond-heun-n{steps}-rho7.json").write_text(json.dumps(curvature_json(steps)))
    report_cli(["figure", "--figure", "curvature", "--out-prefix", str(figs / "curvature"),
                str(tmp_path / "uncond-heun-n4-rho7.json"), str(tmp_path / "uncond-heun-n2-rho7.json")])
    names = sorted(p.name for p in figs.iterdir())
    assert names == [f"{n}.{e}" for n in ("curvature", "figure10", "figure11", "figure2", "figure3", "figure6",
                                          "figure9") for e in ("pdf", "png")]
    with pytest.raises(UserError, match="exactly one"):
        report.make_figure("2", inputs=["a.npz", "b.npz"])


def test_figure_cli_bad_input(tmp_path, capsys):
    (tmp_path / "traj.npz").write_bytes(b"not an npz")
    with pytest.raises(SystemExit):
        report_cli(["figure", "--figure", "2", "--diagnostics", str(tmp_path / "traj.npz"),
                    "--out-prefix", str(tmp_path / "figure2")])
    assert "traj.npz" in capsys.readouterr().err
    with pytest.raises(UserError, match="seed-index"):
        report.plot_trajectory_strip(synthetic_diagnostics(1), seed_index=9)
    assert not list(tmp_path.glob("figure2*"))


def test_minimal_step_optimum():
    """The fewest steps among the FIDs that tie with the lowest once rounded (default: the paper's
    two decimals)."""
    nfe = [7, 11, 15, 19, 23, 27, 31, 35]
    fid = [60, 8, 3.0, 2.3, 2.02, 1.88, 1.88, 1.87]
    assert report.minimal_step_optimum(nfe, fid, decimals=1) == (27, 1.88)  # 1.9, 1.9, 1.9
    assert report.minimal_step_optimum(nfe, fid, decimals=2) == (35, 1.87)
    assert report.minimal_step_optimum(nfe, fid) == (35, 1.87)
    assert report.minimal_step_optimum(nfe, fid, decimals=0) == (19, 2.3)  # 2, 2, 2, 2, 2
    assert report.minimal_step_optimum(nfe, [*fid[:-1], 1.8790]) == (27, 1.88)  # 1.88 three times
    assert report.minimal_step_optimum([], []) is None


# ------------------------------------------------------------------------------ readme


def test_readme(tmp_path):
    run = tmp_path / "results" / "demo"
    res = synthetic_results() + three("aot-uncond", True, False, [1.5, 1.4], steps=14, rho=90,
                                      guidance=DG_AOT)
    paths = write_results(run / "fid", res)
    for n in (1, 2, 3, 4, 5):
        report_cli(["table", "--table", str(n), "--out-prefix", str(run / "tables" / f"table{n}"),
                    *map(str, paths)])
    report_cli(["figure", "--figure", "1", "--paper-baselines", "--rhos", "9,27,81,243",
                "--out-prefix", str(run / "figures" / "figure1"),
                *[str(p) for p, r in zip(paths, res) if not r["model"]["cond"]]])
    for n in ("4", "5"):  # the report only links figures: stand-ins keep the test fast
        for ext in ("png", "pdf"):
            (run / "figures" / f"figure{n}.{ext}").write_bytes((run / "figures" / f"figure1.{ext}").read_bytes())
    report.save_figure(report.plot_trajectory_strip(synthetic_diagnostics(1)), run / "figures" / "figure2")
    bench = tmp_path / "benchmarks" / "demo"
    tsv = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    files = {"train/aot-uncond.tsv": [3600.0, 1800.0], "generate/aot-uncond/heun-n18-rho7-rep0.tsv": [60.0],
             "fid/aot-uncond/heun-n18-rho7-rep0.tsv": [30.0], "train_discriminator/aot-uncond-aot.tsv": [120.0],
             "prepare_dataset.tsv": [10.0]}
    for name, secs in files.items():
        (bench / name).parent.mkdir(parents=True, exist_ok=True)
        (bench / name).write_text(tsv + "".join(f"{s}\t0\t1\t1\t1\t1\t0\t0\t50\t{s / 2}\n" for s in secs))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"run": "demo", "fid": {"repeats": 3, "num_images": 50000}}))
    report_cli(["readme", "--run-dir", str(run), "--config", str(config),
                "--benchmarks", str(bench)])
    text = (run / "README.md").read_text()
    for n in (1, 2, 3, 4, 5):
        assert report.TABLE_TITLES[n] in text
        body = (run / "tables" / f"table{n}.md").read_text().split("\n", 2)[2]
        assert body.split("\n- ")[0].strip() in text  # the Markdown table itself, inline
        assert f"](tables/table{n}.csv)" in text and f"](tables/table{n}.tex)" in text
    for n in ("1", "2", "4", "5"):
        assert f"](figures/figure{n}.png)" in text and f"](figures/figure{n}.pdf)" in text
    assert "| `fid.repeats` | 3 |" in text
    assert "Quoted from the paper" in text and "DDPM" in text
    assert "5620 s" not in text and "1.56 h" in text  # 5620 s of wall time in all
    stage = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert "| 1 | 1:30:00 |" in stage["train"]  # one file, two benchmark repeats
    assert "| 1 | 0:02:00 |" in stage["dg"] and "| 1 | 0:00:10 |" in stage["other"]
    assert "| 5 | 1:33:40 |" in stage["total"]
    assert report.OFFLINE_CAVEAT not in text


def test_readme_offline_caveat_and_missing_table(tmp_path):
    run = tmp_path / "run"
    report.write_table(1, three("a", True, False, [0.4, 0.5, 0.6], features="offline-classifier"),
                       run / "tables" / "table1")
    out = report.write_readme(run, benchmarks=tmp_path / "none")
    text = out.read_text()
    assert report.OFFLINE_CAVEAT in text and "No Snakemake benchmark files" in text
    with pytest.raises(UserError, match="table9"):
        report.write_readme(run, tables=[run / "tables" / "table9.csv"])


def test_benchmark_stages():
    stage = report.benchmark_stage
    assert stage("train/edm-uncond.tsv") == "train"
    assert stage("train_discriminator/aot-cond-aot.tsv") == "dg"
    assert stage("generate_dg/aot-cond/dgaot-heun-n15-rho72-rep0.tsv") == "dg"
    assert stage("generate/aot-cond/heun-n18-rho7-rep0.tsv") == "generate"
    assert stage("fid/aot-cond/dgaot-heun-n15-rho72-rep0.tsv") == "fid"
    assert stage("train_features.tsv") == "fid" and stage("reference_stats.tsv") == "fid"
    assert stage("prepare_dataset.tsv") == "other" and stage("report/table1.tsv") == "other"
    assert stage("diagnostics/uncond-heun-n18-rho7.tsv") == "other"


# ------------------------------------------------------------------------------ in-flight report


def tiny_run_config(**sampling) -> dict:
    """tests/configs/tiny.yaml as the workflow's run_config rule writes it (layered, with the
    schema's defaults), with `sampling` keys replaced."""
    import yaml

    from aot.settings import RunSettings

    cfg = yaml.safe_load((REPO / "tests" / "configs" / "tiny.yaml").read_text())
    cfg["sampling"].update(sampling)
    RunSettings.load(cfg, schema=REPO / "workflow" / "schemas" / "config.schema.yaml",
                     paper=REPO / "config" / "config.yaml")
    return json.loads(json.dumps(cfg, sort_keys=True))


def put_fid(run: Path, config: dict, model: str, key: str, fids: list[float]) -> list[Path]:
    """The FID results of one sample set where the workflow writes them, repeat r = the r-th value."""
    from aot.keys import parse_key

    m = next(m for m in config["models"] if m["name"] == model)
    k = parse_key(key)
    guidance = {"aot": DG_AOT, "plain": DG_PLAIN, None: None}[k["guidance"]]
    paths = []
    for r, f in enumerate(fids):
        obj = fid_json(model, m["aot"], m["cond"], f, repeat=r, steps=k["num_steps"], rho=k["rho"],
                       guidance=guidance, features="offline-classifier")
        p = run / "fid" / model / key / f"rep{r}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(obj))
        paths.append(p)
    return paths


def md_table(text: str, number: int) -> tuple[str, list[dict]]:
    """(the count line, the rows as {column: cell}) of Table `number` of an in-flight report."""
    section = text.split(f"## Table {number}:", 1)[1].split("\n## ", 1)[0]
    count = next(line for line in section.splitlines() if line.startswith("**"))
    lines = [line for line in section.splitlines() if line.startswith("|") and not line.startswith("|:")]
    cells = [[c.strip() for c in line.strip()[1:-1].split("|")] for line in lines]
    return count.strip("*"), [dict(zip(cells[0], c)) for c in cells[1:]]


def md_row(rows: list[dict], **match) -> dict:
    hits = [r for r in rows if all(r[k] == v for k, v in match.items())]
    assert len(hits) == 1, f"{match}: {len(hits)} rows"
    return hits[0]


def test_in_flight_report_pending_so_far_and_complete(tmp_path, capsys):
    from aot.report.in_flight import RunPlan

    run = tmp_path / "results" / "tiny"
    config = tiny_run_config(table5={"rho": [9, 81], "nfe": [7, 15],
                                     "models": ["edm-uncond", "aot-uncond", "edm-cond", "aot-cond"]})
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(config, sort_keys=True) + "\n")
    put_fid(run, config, "edm-uncond", "heun-n8-rho7", [2.5, 2.4])    # Tables 1, 3: both repeats
    put_fid(run, config, "aot-uncond", "heun-n6-rho90", [2.2])        # Tables 1, 3: one of two
    put_fid(run, config, "aot-uncond", "heun-n4-rho9", [5.0, 5.1])    # Table 5: NFE 7, rho 9 of 9, 81
    report_cli(["in-flight", "--run-dir", str(run)])
    out = run / "README-in-flight.md"
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    text = out.read_text()
    assert "In-flight snapshot" in text and "5 of the 56 FID results" in text
    assert "2 of 28 sample sets complete" in text

    count, rows = md_table(text, 1)
    assert count == "1 of 3 sample sets measured; 1 more has some of its 2 repeats."
    ours = "FD-offline (ours, min)"
    edm = md_row(rows, Model=f"{RETRAINED[:-1]}; rho=7, 8 steps)")
    assert (edm["Source"], edm[ours], edm["mean ± std"], edm["n"]) == ("measured", "2.40", "2.45 ± 0.0707", "2")
    default = md_row(rows, Model="EDM-AOT (rho=7, 8 steps)")
    assert default["NFE"] == "15" and {default[c] for c in ("Source", ours, "mean ± std", "n")} == {"pending"}
    assert md_row(rows, Model="EDM-AOT (rho=90, 6 steps)")[ours] == "2.20 (so far)"
    paper_only = md_row(rows, Model="EDM-AOT (rho=90, 14 steps)")  # the paper's row, not this run's
    assert (paper_only["Source"], paper_only[ours]) == ("not measured", "")
    count, rows = md_table(text, 2)
    assert count == "0 of 3 sample sets measured."
    assert [r["Model"] for r in rows if r[ours] == "pending"] == [
        f"{RETRAINED[:-1]}; rho=7, 8 steps)", "EDM-AOT (rho=72, 6 steps)", "EDM-AOT (rho=7, 8 steps)"]
    count, rows = md_table(text, 3)
    assert count == "1 of 10 sample sets measured; 1 more has some of its 2 repeats."
    row3 = md_row(rows, Model=f"{RETRAINED} w/o DG")
    assert (row3["uncond: FD-offline (ours, min)"], row3["cond: FD-offline (ours, min)"]) == ("2.40", "pending")
    assert md_row(rows, Model="EDM-AOT + DG w/ AOT")["uncond: FD-offline (ours, min)"] == "pending"
    assert md_row(rows, Model=f"{report.PUBLISHED_EDM} w/o DG")["uncond: FD-offline (ours, min)"] == ""
    count, rows = md_table(text, 4)
    assert count == "0 of 4 sample sets measured."
    cell = md_row(rows, Setting="EDM-AOT, 8 steps, uncond", **{"": "FD-offline (ours)"})
    assert (cell["rho=9"], cell["rho=81"], cell["rho=3"]) == ("pending", "pending", "")
    count, rows = md_table(text, 5)
    assert count == "1 of 16 sample sets measured."
    best = md_row(rows, Setting="EDM-AOT, uncond", **{"": "FD-offline (ours)"})
    assert (best["nfe=7"], best["nfe=15"]) == ("5.00 (so far)", "pending")  # rho 81 to come
    rho = md_row(rows, Setting="EDM-AOT, uncond", **{"": "best rho"})
    assert (rho["nfe=7"], rho["nfe=15"]) == ("9 (so far)", "pending")

    # every result there: no "pending", and each table is the workflow's table
    plan = RunPlan(config)
    table_sets = plan.table_sets()
    every = sorted({s for sets in table_sets.values() for s in sets})
    for i, (model, key) in enumerate(every):
        put_fid(run, config, model, key, [3.0 + 0.1 * i, 3.05 + 0.1 * i])
    mine = tmp_path / "snapshot.md"
    report_cli(["in-flight", "--run-dir", str(run), "--out", str(mine)])
    text = mine.read_text()
    assert "| pending" not in text and "(so far) |" not in text and "56 of the 56 FID results" in text
    for number, sets in table_sets.items():
        assert md_table(text, number)[0] == f"{len(sets)} of {len(sets)} sample sets measured."
        files = [p for m, k in sets for p in plan.fid_paths(run, m, k)]
        report.write_table(number, report.load_fid_results(files), tmp_path / "t" / f"table{number}",
                           plan.rhos, config["dataset"]["name"])
        final = (tmp_path / "t" / f"table{number}.md").read_text()
        table = next(b for b in final.split("\n\n") if b.startswith("| "))
        assert f"\n\n{table}\n\n" in text.split(f"## Table {number}:", 1)[1]  # the same Markdown table


@pytest.mark.parametrize("case", ["no run folder", "no config", "bad config", "config without sampling",
                                  "bad fid json"])
def test_in_flight_report_bad_input(tmp_path, capsys, case):
    run = tmp_path / "results" / "tiny"
    if case != "no run folder":
        run.mkdir(parents=True)
    config = tiny_run_config()
    if case == "config without sampling":
        del config["sampling"]
    if case in ("bad fid json", "config without sampling"):
        (run / "config.json").write_text(json.dumps(config))
    if case == "bad config":
        (run / "config.json").write_text('{"run": "tiny", ')
    if case == "bad fid json":
        put_fid(run, config, "aot-uncond", "heun-n6-rho90", [2.2])
        (run / "fid" / "aot-uncond" / "heun-n6-rho90" / "rep1.json").write_text('{"kind": "fid", "model": ')
    out = tmp_path / "snapshot" / "README-in-flight.md"
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exc:
        report_cli(["in-flight", "--run-dir", str(run), "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1
    expect = {"no run folder": "does not exist", "no config": "config.json does not exist",
              "bad config": "config.json is not valid JSON", "config without sampling": "'sampling'",
              "bad fid json": "rep1.json is not valid JSON"}[case]
    assert expect in err
    assert sorted(tmp_path.rglob("*")) == before  # nothing written
