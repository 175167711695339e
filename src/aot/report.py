"""Tables, figures and the run report of the EDM-AOT reproduction, next to the paper's numbers.

Everything here is made from the artefacts of the other stages: the FID result JSON files of
`aot.fid measure` (one per sample set and repeat), the diagnostics npz/JSON of `aot.diagnostics`,
the sample-set npz files of `aot.generate`, Snakemake's benchmark TSV files and the run's config.
The paper's numbers are the CSV files in `aot/paper/` (package data, `#` lines are comments).

Command line (one artefact per call, so that Snakemake rules stay fine grained; every call writes
all of its files or none, and bad input fails with one line naming the file before anything is
written)::

    python -m aot.report table --table {1,2,3,4,5} --out-prefix results/RUN/tables/table4 \
        [--rhos 9,27,81,243] FID.json ...            # -> table4.csv, table4.md, table4.tex
    python -m aot.report figure --figure {1,4,5} --out-prefix results/RUN/figures/figure5 \
        [--rhos 9,27,81,243] [--tolerance 0.02] [--no-paper-baselines] FID.json ...
                                                      # -> figure5.png, figure5.pdf
    python -m aot.report figure --figure {2,6,7,8} --out-prefix P traj.npz \
        [--seed-index 0] [--max-columns 10]           # trajectory strip: rows models, columns steps
    python -m aot.report figure --figure {3,9} --out-prefix P traj.npz \
        [--step 3] [--max-seeds 64]                   # denoised grid at one early step
    python -m aot.report figure --figure {10,11} --out-prefix P X.npz \
        [--count 100] [--columns 10]                  # sample grid
    python -m aot.report figure --figure curvature --out-prefix P traj.json [traj2.json ...]

The input of a figure is positional (or named: `--diagnostics traj.npz`, `--samples X.npz`; a
diagnostics JSON given where the npz is needed means the npz beside it, and the other way round).
`--kind {curves,strip,denoised-grid,samples,curvature}` picks what to draw; by default the paper's
kind for the figure number (1, 4, 5: curves; 2, 6, 7, 8: strip; 3, 9: denoised-grid; 10, 11:
samples). `--rhos` is accepted by every figure (used by Figure 5). The curvature figure draws one
panel per diagnostics JSON.
    python -m aot.report readme --run-dir results/RUN --config results/RUN/config.json \
        [--tables results/RUN/tables/table1.csv ...] [--figures results/RUN/figures/figure1.png ...] \
        [--benchmarks benchmarks/RUN] [--out results/RUN/README.md]

Positional FID arguments may also be folders: every `*.json` below them whose "kind" is "fid" is
read (explicitly named files must be FID results). A table or figure with no measurement at all is
still made (paper values only): missing measurements are empty cells, never errors.

Aggregation. The repeats of one sample set (same model name, same sampler settings: solver,
num_steps, rho, S_churn, guidance without the discriminator path, and the same feature network)
are combined into `fid` = minimum (the reported number, as EDM and the paper do), `fid_mean`,
`fid_std` (sample standard deviation, ddof=1; empty for a single repeat) and `n`. Two files with
the same repeat index of one sample set are an error. One table mixing feature networks is an error.

Row identity (labels are built to match the strings of the paper CSV files):
- Tables 1 (cond false) and 2 (cond true), unguided sample sets: "EDM" is aot false with the default
  sampler (heun, 18 steps, rho 7, no churn); every other measured setting gets its own row,
  "EDM-AOT (rho=90, 14 steps)", "EDM (rho=9, 8 steps)", with ", euler" / ", churn=X" appended
  where they apply. The paper value sits beside a row whose label matches. The literature baselines
  (DDPM, SGM, PFGM, LSGM, PFGM++, STF) are rows with status "quoted"; paper rows of ours that were
  not measured have status "not measured". Several model names of one kind get "[model-name]".
- Table 3: "EDM w/o DG", "EDM+DG" (guidance.aot false), "EDM-AOT w/o DG", "EDM-AOT + DG w/o AOT",
  "EDM-AOT + DG w/ AOT"; columns uncond and cond. Where several sample sets fit one cell, the one
  with the sampler settings of the same model's guided runs wins, then the default sampler, then
  the lowest FID; the CSV records the chosen model and sampler key. An EDM model guided by an AOT
  discriminator gets the extra row "EDM + DG w/ AOT".
- Table 4: rows "<EDM|EDM-AOT>, <n> steps, <uncond|cond>", columns "rho=<r>" (paper's and ours).
- Table 5: rows "<EDM|EDM-AOT>, <uncond|cond>", columns "nfe=<k>"; the value is the best (min) FID
  over the rho values in `--rhos` (default the paper's 9,27,81,243); row "best rho" says which won.
Tables 4 and 5 have a `stat` column: CSV rows "ours", "ours mean", "ours std", "n", ("best rho"),
"paper", "diff"; the Markdown/LaTeX versions keep "ours", ("best rho"), "paper", "diff".
Tables 1-3 have one row per entry with our min/mean/std/n, the paper value and diff = ours - paper.
The CSV files start with `# key: value` comment lines (title, feature network, counts) that the
readme reads back. When the results use feature_network.name == "offline-classifier", every table,
figure and the report carry `OFFLINE_CAVEAT`, the difference to the paper is left out (empty `diff`
in the CSV, no "diff" rows, no Δ column), and figures plot paper values on their own axis.

Figures (PNG and PDF, pure `matplotlib.figure.Figure`, no pyplot state; each `plot_*` returns a
Figure, `save_figure(fig, out_prefix)` writes both files atomically):
Figure 1 FID vs NFE (our EDM/EDM-AOT curves: best FID over every measured rho at each NFE; the
paper's curves from Table 5 and the quoted baselines of Tables 1-2 as points); Figure 4 FID vs rho
at 18, 14 and 8 steps (log x); Figure 5 best FID over `--rhos` vs NFE with the minimal-step optimum
(the smallest NFE whose FID is within `--tolerance` (relative) of the curve's best) marked;
trajectory strips (2, 6, 7, 8), denoised grids (3, 9), sample grids (10, 11), curvature curves.
Images in [-1, 1] (diagnostics) are shown as EDM saves them; 1-channel images are drawn in gray.

Compute time in the readme: the sum of the `s` (wall seconds) and `cpu_time` columns of every
benchmark TSV file below `--benchmarks` (every row: benchmark repeats count), split by stage from
the first component of the file's path relative to that folder (the rule's name in our workflow):
"dg..." or a word "dg"/"discriminator..." (generate_dg, train_discriminator) -> dg;
"fid...", "reference...", "train_features" (the offline feature network) -> fid; other "train..."
-> train; "generate..."/"sample..." -> generate; anything else (data preparation, downloads,
diagnostics, report) -> other. The FID of a guided sample set counts as fid.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from .cli.options import cli_main
from .errors import UserError
from .files import atomic_path, read_json

DEFAULT_RHOS = (9.0, 27.0, 81.0, 243.0)
DEFAULT_TOLERANCE = 0.02
OFFLINE_FEATURES = "offline-classifier"
OFFLINE_CAVEAT = ("Frechet distance in an offline classifier's feature space "
                  "(not FID-Inception; not comparable to the paper column)")
TABLE_TITLES = {
    1: "Table 1: unconditional models, ours (min of repeats) vs the paper",
    2: "Table 2: class-conditional models, ours (min of repeats) vs the paper",
    3: "Table 3: discriminator guidance with and without AOT in discriminator training",
    4: "Table 4: FID vs time-step exponent rho at 18, 14 and 8 Heun steps",
    5: "Table 5: best FID over rho vs NFE",
}
PAPER_FILES = {1: "table1_uncond.csv", 2: "table2_cond.csv", 3: "table3_dg.csv",
               4: "table4_rho.csv", 5: "table5_nfe.csv"}
FIGURE_TITLES = {
    "1": "Figure 1: FID vs NFE, EDM and EDM-AOT against quoted baselines",
    "2": "Figure 2: single-step denoised estimates along the sampling path",
    "3": "Figure 3: denoised estimates at an early step, EDM vs EDM-AOT",
    "4": "Figure 4: FID vs rho at 18, 14 and 8 steps",
    "5": "Figure 5: best FID over rho vs NFE, minimal-step optimum marked",
    "6": "Figure 6: single-step denoised estimates along the sampling path",
    "7": "Figure 7: single-step denoised estimates along the sampling path",
    "8": "Figure 8: single-step denoised estimates along the sampling path",
    "9": "Figure 9: denoised estimates at an early step, EDM vs EDM-AOT",
    "10": "Figure 10: samples",
    "11": "Figure 11: samples",
    "curvature": "Trajectory curvature: distance of the denoised estimate to the final sample over sigma",
}
FIGURE_KINDS = ("curves", "strip", "denoised-grid", "samples", "curvature")
STRIP_FIGURES = ("2", "6", "7", "8")
GRID_FIGURES = ("3", "9")
SAMPLE_FIGURES = ("10", "11")
CURVE_FIGURES = ("1", "4", "5")
QUOTED_BASELINES = ("DDPM", "SGM", "PFGM", "LSGM", "PFGM++", "STF")
_COLORS = {"EDM": "tab:blue", "EDM-AOT": "tab:orange"}


# ============================================================================================
# Paper numbers


def paper_table(number: int) -> pd.DataFrame:
    """The paper's numbers of table `number` (1-5), read from the package copy."""
    if number not in PAPER_FILES:
        raise UserError(f"no paper table {number}; tables are 1-5")
    text = resources.files("aot").joinpath("paper", PAPER_FILES[number]).read_text()
    return pd.read_csv(io.StringIO(text), comment="#")


# ============================================================================================
# Loading and aggregating FID results


def _fail(path: Any, msg: str) -> UserError:
    return UserError(f"FID result {path}: {msg}")


def _get(obj: dict, dotted: str, path: Any, default: Any = ...) -> Any:
    cur: Any = obj
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            if default is not ...:
                return default
            raise _fail(path, f"missing key '{dotted}'")
        cur = cur[part]
    return cur


def _number(value: Any, key: str, path: Any, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(path, f"'{key}' must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or (positive and v <= 0):
        raise _fail(path, f"'{key}' must be a {'positive ' if positive else ''}finite number, got {value!r}")
    return v


def _flag(value: Any, key: str, path: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(path, f"'{key}' must be true or false, got {value!r}")
    return value


def format_rho(rho: float) -> str:
    return f"{float(rho):g}"


def sampler_key(solver: str, num_steps: int, rho: float, S_churn: float = 0.0,
                guidance: str | None = None) -> str:
    """Workflow sampler key: `heun-n18-rho7`, `-churnX` when S_churn > 0, `dg{aot|plain}-` prefix."""
    key = f"{solver}-n{int(num_steps)}-rho{format_rho(rho)}"
    if S_churn:
        key += f"-churn{format_rho(S_churn)}"
    if guidance:
        key = f"dg{guidance}-{key}"
    return key


def parse_fid_result(obj: Any, path: Any = "<dict>") -> dict:
    """Validate one FID result (spec format) and flatten what the tables need into a record."""
    if not isinstance(obj, dict):
        raise _fail(path, "top level must be a JSON object")
    kind = obj.get("kind", "fid")
    if kind != "fid":
        raise _fail(path, f"'kind' is {kind!r}, expected 'fid'")
    name = _get(obj, "model.name", path)
    if not isinstance(name, str) or not name:
        raise _fail(path, f"'model.name' must be a non-empty string, got {name!r}")
    aot = _flag(_get(obj, "model.aot", path), "model.aot", path)
    cond = _flag(_get(obj, "model.cond", path), "model.cond", path)
    steps_v = _get(obj, "sampler.num_steps", path)
    if isinstance(steps_v, bool) or not isinstance(steps_v, int) or steps_v <= 0:
        raise _fail(path, f"'sampler.num_steps' must be a positive integer, got {steps_v!r}")
    rho = _number(_get(obj, "sampler.rho", path), "sampler.rho", path, positive=True)
    solver = _get(obj, "sampler.solver", path, "heun")
    if solver not in ("heun", "euler"):
        raise _fail(path, f"'sampler.solver' must be 'heun' or 'euler', got {solver!r}")
    nfe_v = _get(obj, "sampler.nfe", path, None)
    if nfe_v is None:
        nfe_v = obj.get("nfe")  # aot.fid also writes it at the top level
    nfe = (2 * steps_v - 1 if solver == "heun" else steps_v) if nfe_v is None else nfe_v
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe <= 0:
        raise _fail(path, f"'sampler.nfe' must be a positive integer, got {nfe_v!r}")
    churn_v = _get(obj, "sampler.S_churn", path, 0.0)
    churn = _number(churn_v if churn_v is not None else 0.0, "sampler.S_churn", path)
    guidance_obj = _get(obj, "sampler.guidance", path, None)
    key_v = _get(obj, "sampler.key", path, "")
    key_dg = re.match(r"^dg(aot|plain)-", key_v) if isinstance(key_v, str) else None
    if guidance_obj is None and key_dg:  # a guided set whose meta lacks the guidance record
        guidance, guidance_sig = key_dg.group(1), json.dumps({"aot": key_dg.group(1) == "aot"})
    elif guidance_obj is None:
        guidance, guidance_sig = None, ""
    elif isinstance(guidance_obj, dict):
        g_aot = _flag(_get(guidance_obj, "aot", path), "sampler.guidance.aot", path)
        guidance = "aot" if g_aot else "plain"
        guidance_sig = json.dumps({k: v for k, v in guidance_obj.items() if k != "discriminator"},
                                  sort_keys=True, default=str)
    else:
        raise _fail(path, f"'sampler.guidance' must be null or an object, got {guidance_obj!r}")
    fid = _number(_get(obj, "fid", path), "fid", path)
    feat = _get(obj, "feature_network.name", path)
    if not isinstance(feat, str) or not feat:
        raise _fail(path, f"'feature_network.name' must be a non-empty string, got {feat!r}")
    repeat = obj.get("repeat")
    if repeat is not None and (isinstance(repeat, bool) or not isinstance(repeat, int)):
        raise _fail(path, f"'repeat' must be an integer, got {repeat!r}")
    time_s = obj.get("time_s")
    seeds = obj.get("seeds")
    if seeds is not None:
        if (not isinstance(seeds, (list, tuple)) or len(seeds) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in seeds) or seeds[1] < seeds[0]):
            raise _fail(path, f"'seeds' must be [first, last], got {seeds!r}")
        seeds = (int(seeds[0]), int(seeds[1]))
    return {
        "seeds": seeds,
        "model": name, "aot": aot, "cond": cond, "solver": solver, "num_steps": int(steps_v),
        "rho": rho, "nfe": int(nfe), "S_churn": churn, "guidance": guidance,
        "guidance_sig": guidance_sig,
        "sampler_key": sampler_key(solver, steps_v, rho, churn, guidance),
        "feature_network": feat, "repeat": repeat, "fid": fid,
        "num_images": obj.get("num_images"),
        "time_s": float(time_s) if isinstance(time_s, (int, float)) and not isinstance(time_s, bool) else None,
        "file": str(path),
    }


def expand_result_paths(paths: Iterable[str | os.PathLike]) -> list[tuple[Path, bool]]:
    """Files as given, folders expanded to their `*.json` files (flag False: skip non-FID JSON)."""
    out: list[tuple[Path, bool]] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out.extend((q, False) for q in sorted(p.rglob("*.json")))
        else:
            out.append((p, True))
    return out


def load_fid_results(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """Read and validate FID result files (or folders of them) into flat records."""
    records = []
    for path, explicit in expand_result_paths(paths):
        obj = read_json(path, "FID result")
        if not explicit and (not isinstance(obj, dict) or obj.get("kind") != "fid"):
            continue
        records.append(parse_fid_result(obj, path))
    return records


_GROUP_KEYS = ("model", "aot", "cond", "solver", "num_steps", "rho", "S_churn", "guidance",
               "guidance_sig", "feature_network")
AGG_COLUMNS = ["model", "aot", "cond", "solver", "num_steps", "rho", "nfe", "S_churn", "guidance",
               "sampler_key", "feature_network", "fid", "fid_mean", "fid_std", "n", "repeats",
               "files", "time_s"]


def aggregate(records: Sequence[dict]) -> pd.DataFrame:
    """Combine the repeats of each sample set: fid (min), fid_mean, fid_std (ddof=1), n."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(tuple(r[k] for k in _GROUP_KEYS), []).append(r)
    rows = []
    for members in groups.values():
        seen: dict[int, str] = {}
        for m in members:
            if m["repeat"] is None:
                continue
            if m["repeat"] in seen:
                raise UserError(f"FID results {seen[m['repeat']]} and {m['file']} are both repeat "
                                f"{m['repeat']} of model {m['model']} sampler {m['sampler_key']}")
            seen[m["repeat"]] = m["file"]
        ranged = sorted((m for m in members if m["seeds"] is not None), key=lambda m: m["seeds"])
        for a, b in zip(ranged, ranged[1:]):
            if b["seeds"][0] <= a["seeds"][1]:
                raise UserError(f"FID results {a['file']} (seeds {a['seeds'][0]}-{a['seeds'][1]}) and {b['file']} "
                                f"(seeds {b['seeds'][0]}-{b['seeds'][1]}) are repeats of model {a['model']} sampler "
                                f"{a['sampler_key']} with overlapping seed ranges; the repeats must use disjoint seeds")
        fids = np.array([m["fid"] for m in members], dtype=float)
        first = members[0]
        times = [m["time_s"] for m in members if m["time_s"] is not None]
        rows.append({
            **{k: first[k] for k in ("model", "aot", "cond", "solver", "num_steps", "rho", "nfe",
                                     "S_churn", "guidance", "sampler_key", "feature_network")},
            "fid": float(fids.min()), "fid_mean": float(fids.mean()),
            "fid_std": float(fids.std(ddof=1)) if len(fids) > 1 else float("nan"),
            "n": len(fids),
            "repeats": sorted(m["repeat"] for m in members if m["repeat"] is not None),
            "files": [m["file"] for m in members],
            "time_s": float(sum(times)) if times else float("nan"),
        })
    df = pd.DataFrame(rows, columns=AGG_COLUMNS)
    if len(df):
        df = df.sort_values(["cond", "aot", "model", "guidance", "num_steps", "rho"],
                            key=lambda s: s.fillna("") if s.dtype == object else s,
                            ignore_index=True)
    return df


def as_aggregate(results: Any) -> pd.DataFrame:
    """Accept an aggregate DataFrame, FID result dicts, paths, or a mix of dicts and paths."""
    if isinstance(results, pd.DataFrame):
        return results
    records = []
    items = list(results or [])
    for i, item in enumerate(items):
        if isinstance(item, dict) and "file" in item and "sampler_key" in item:
            records.append(item)
        elif isinstance(item, dict):
            records.append(parse_fid_result(item, f"<result {i}>"))
        else:
            records.extend(load_fid_results([item]))
    return aggregate(records)


def feature_networks(agg: pd.DataFrame) -> list[str]:
    return sorted(set(agg["feature_network"])) if len(agg) else []


def _single_feature_network(agg: pd.DataFrame) -> str | None:
    names = feature_networks(agg)
    if len(names) > 1:
        examples = []
        for name in names:
            files = agg.loc[agg["feature_network"] == name, "files"].iloc[0]
            examples.append(f"{name} ({files[0]})")
        raise UserError("FID results mix feature networks: " + ", ".join(examples)
                        + "; make each table from one kind")
    return names[0] if names else None


def is_offline(feature_network: str | None) -> bool:
    return feature_network == OFFLINE_FEATURES


def kind_name(aot: bool) -> str:
    return "EDM-AOT" if aot else "EDM"


def cond_name(cond: bool) -> str:
    return "cond" if cond else "uncond"


def is_default_sampler(row: Any) -> bool:
    return (row["solver"] == "heun" and int(row["num_steps"]) == 18 and float(row["rho"]) == 7.0
            and not row["S_churn"])


def _unguided(agg: pd.DataFrame) -> pd.DataFrame:
    if not len(agg):
        return agg
    return agg[agg["guidance"].isna()]


def _plain_heun(agg: pd.DataFrame) -> pd.DataFrame:
    df = _unguided(agg)
    if not len(df):
        return df
    return df[(df["solver"] == "heun") & (df["S_churn"] == 0)]


def _models_per_kind(df: pd.DataFrame) -> dict[tuple[bool, bool], list[str]]:
    out: dict[tuple[bool, bool], list[str]] = {}
    for (aot, cond), sub in df.groupby(["aot", "cond"]):
        out[(bool(aot), bool(cond))] = sorted(set(sub["model"]))
    return out


def _with_model(label: str, model: str, models: list[str]) -> str:
    return f"{label} [{model}]" if len(models) > 1 else label


# ============================================================================================
# Tables


def table12_label(row: Any) -> str:
    if not row["aot"] and is_default_sampler(row):
        return "EDM"
    extras = [f"rho={format_rho(row['rho'])}", f"{int(row['num_steps'])} steps"]
    if row["solver"] != "heun":
        extras.append(row["solver"])
    if row["S_churn"]:
        extras.append(f"churn={format_rho(row['S_churn'])}")
    return f"{kind_name(bool(row['aot']))} ({', '.join(extras)})"


def _diff(ours: Any, paper: Any) -> float:
    try:
        o, p = float(ours), float(paper)
    except (TypeError, ValueError):
        return float("nan")
    return o - p if math.isfinite(o) and math.isfinite(p) else float("nan")


def build_table12(agg: pd.DataFrame, number: int) -> pd.DataFrame:
    """Table 1 (unconditional) or 2 (conditional): one row per model/setting, paper beside ours."""
    cond = number == 2
    paper = paper_table(number)
    df = _unguided(agg)
    df = df[df["cond"] == cond] if len(df) else df
    models = _models_per_kind(df) if len(df) else {}
    measured: list[dict] = []
    for _, r in df.iterrows():
        base = table12_label(r)
        measured.append({"base": base,
                         "label": _with_model(base, r["model"], models[(bool(r["aot"]), cond)]),
                         "row": r})
    paper_by_label = {str(p["model"]): p for _, p in paper.iterrows()}
    rows = []
    used = set()

    def entry(label: str, status: str, r: Any, p: Any) -> dict:
        ours = r["fid"] if r is not None else float("nan")
        pf = float(p["fid"]) if p is not None and pd.notna(p["fid"]) else float("nan")
        return {
            "model": label, "status": status,
            "nfe": int(r["nfe"]) if r is not None else (int(p["nfe"]) if p is not None else None),
            "fid": ours,
            "fid_mean": r["fid_mean"] if r is not None else float("nan"),
            "fid_std": r["fid_std"] if r is not None else float("nan"),
            "n": int(r["n"]) if r is not None else 0,
            "fid_paper": pf, "diff": _diff(ours, pf),
            "nfe_paper": int(p["nfe"]) if p is not None else None,
            "model_name": r["model"] if r is not None else "",
            "sampler_key": r["sampler_key"] if r is not None else "",
        }

    for label, p in paper_by_label.items():
        if label in QUOTED_BASELINES:
            rows.append(entry(label, "quoted", None, p))
            continue
        hits = [m for m in measured if m["base"] == label]
        if not hits:
            rows.append(entry(label, "not measured", None, p))
        for m in hits:
            rows.append(entry(m["label"], "measured", m["row"], p))
            used.add(id(m))
    extra = [m for m in measured if id(m) not in used]
    extra.sort(key=lambda m: (bool(m["row"]["aot"]), int(m["row"]["nfe"]), float(m["row"]["rho"]),
                              m["label"]))
    for m in extra:
        rows.append(entry(m["label"], "measured", m["row"], None))
    out = pd.DataFrame(rows)
    out["nfe"] = out["nfe"].astype("Int64")
    out["nfe_paper"] = out["nfe_paper"].astype("Int64")
    out["n"] = out["n"].astype(int)
    return out


TABLE3_ROWS = ("EDM w/o DG", "EDM+DG", "EDM-AOT w/o DG", "EDM-AOT + DG w/o AOT",
               "EDM-AOT + DG w/ AOT")


def table3_label(aot: bool, guidance: str | None) -> str:
    if guidance is None:
        return f"{kind_name(aot)} w/o DG"
    if not aot:
        return "EDM+DG" if guidance == "plain" else "EDM + DG w/ AOT"
    return "EDM-AOT + DG w/ AOT" if guidance == "aot" else "EDM-AOT + DG w/o AOT"


def _pick_table3(cands: pd.DataFrame, guided: pd.DataFrame) -> Any:
    """One sample set for a Table 3 cell: guided runs' sampler settings, default sampler, min FID."""
    if len(cands) == 1:
        return cands.iloc[0]
    settings = {(r["solver"], int(r["num_steps"]), float(r["rho"]), float(r["S_churn"]))
                for _, r in guided.iterrows()}
    match = cands[[(r["solver"], int(r["num_steps"]), float(r["rho"]), float(r["S_churn"])) in settings
                   for _, r in cands.iterrows()]]
    if len(match):
        cands = match
    else:
        default = cands[[is_default_sampler(r) for _, r in cands.iterrows()]]
        if len(default):
            cands = default
    return cands.sort_values(["fid", "model", "sampler_key"]).iloc[0]


def build_table3(agg: pd.DataFrame) -> pd.DataFrame:
    paper = paper_table(3)
    labels = list(paper["model"])
    extra_labels = []
    if len(agg):
        for _, r in agg.iterrows():
            lab = table3_label(bool(r["aot"]), r["guidance"] if isinstance(r["guidance"], str) else None)
            if lab not in labels and lab not in extra_labels:
                extra_labels.append(lab)
    rows = []
    for label in labels + extra_labels:
        p = paper[paper["model"] == label]
        p = p.iloc[0] if len(p) else None
        row: dict[str, Any] = {"model": label,
                               "nfe_paper": int(p["nfe"]) if p is not None else None}
        for cond in (False, True):
            c = cond_name(cond)
            r = None
            if len(agg):
                sub = agg[agg["cond"] == cond]
                lab = sub.apply(lambda x: table3_label(bool(x["aot"]), x["guidance"] if isinstance(
                    x["guidance"], str) else None), axis=1) if len(sub) else pd.Series(dtype=object)
                cands = sub[lab == label] if len(sub) else sub
                if len(cands):
                    aot = bool(cands.iloc[0]["aot"])
                    guided = sub[(sub["aot"] == aot) & sub["guidance"].notna()]
                    r = _pick_table3(cands, guided)
            pf = float(p[f"fid_{c}"]) if p is not None and pd.notna(p[f"fid_{c}"]) else float("nan")
            ours = float(r["fid"]) if r is not None else float("nan")
            row.update({
                f"fid_{c}": ours,
                f"fid_{c}_mean": float(r["fid_mean"]) if r is not None else float("nan"),
                f"fid_{c}_std": float(r["fid_std"]) if r is not None else float("nan"),
                f"n_{c}": int(r["n"]) if r is not None else 0,
                f"fid_{c}_paper": pf, f"diff_{c}": _diff(ours, pf),
                f"nfe_{c}": int(r["nfe"]) if r is not None else None,
                f"model_{c}": r["model"] if r is not None else "",
                f"sampler_{c}": r["sampler_key"] if r is not None else "",
            })
        rows.append(row)
    out = pd.DataFrame(rows)
    for col in ("nfe_paper", "nfe_uncond", "nfe_cond"):
        out[col] = out[col].astype("Int64")
    return out


def table4_label(aot: bool, num_steps: int, cond: bool) -> str:
    return f"{kind_name(aot)}, {int(num_steps)} steps, {cond_name(cond)}"


def table5_label(aot: bool, cond: bool) -> str:
    return f"{kind_name(aot)}, {cond_name(cond)}"


def _col_value(col: str) -> float:
    return float(col.split("=", 1)[1])


def _grid_table(paper: pd.DataFrame, cells: dict[str, dict[str, dict]], prefix: str,
                extra_stats: Sequence[str] = ()) -> pd.DataFrame:
    """Rows per setting x stat, columns `<prefix>=<value>` (paper's and measured, sorted)."""
    paper_cols = [c for c in paper.columns if c.startswith(prefix + "=")]
    values = {_col_value(c) for c in paper_cols}
    for per_col in cells.values():
        values.update(_col_value(c) for c in per_col)
    cols = [f"{prefix}={format_rho(v)}" for v in sorted(values)]
    paper_rows = {str(r["setting"]): r for _, r in paper.iterrows()}
    labels: list[str] = []
    for label in paper_rows:  # measured rows of several models of one kind replace the bare row
        split = sorted(k for k in cells if k.startswith(label + " ["))
        labels += split if split and label not in cells else [label]
    labels += sorted(k for k in cells if k not in labels)
    stats = ["ours", "ours mean", "ours std", "n", *extra_stats, "paper", "diff"]
    field = {"ours": "fid", "ours mean": "fid_mean", "ours std": "fid_std", "n": "n",
             "best rho": "rho"}
    rows = []
    for label in labels:
        base = label.split(" [")[0]
        p = paper_rows.get(label, paper_rows.get(base))
        ours_cells = cells.get(label, {})
        for stat in stats:
            row: dict[str, Any] = {"setting": label, "stat": stat}
            for col in cols:
                pv = float(p[col]) if p is not None and col in p.index and pd.notna(p[col]) else float("nan")
                cell = ours_cells.get(col)
                if stat == "paper":
                    row[col] = pv
                elif stat == "diff":
                    row[col] = _diff(cell["fid"] if cell else float("nan"), pv)
                else:
                    row[col] = float(cell[field[stat]]) if cell else float("nan")
            rows.append(row)
    return pd.DataFrame(rows, columns=["setting", "stat", *cols])


def build_table4(agg: pd.DataFrame) -> pd.DataFrame:
    df = _plain_heun(agg)
    cells: dict[str, dict[str, dict]] = {}
    if len(df):
        models = _models_per_kind(df)
        for _, r in df.iterrows():
            label = _with_model(table4_label(bool(r["aot"]), r["num_steps"], bool(r["cond"])),
                                r["model"], models[(bool(r["aot"]), bool(r["cond"]))])
            cells.setdefault(label, {})[f"rho={format_rho(r['rho'])}"] = r.to_dict()
    return _grid_table(paper_table(4), cells, "rho")


def best_over_rho(agg: pd.DataFrame, rhos: Sequence[float] | None = DEFAULT_RHOS) -> pd.DataFrame:
    """Per model and NFE, the sample set with the lowest FID among rho in `rhos` (None: all)."""
    df = _plain_heun(agg)
    if not len(df):
        return df.assign(label=pd.Series(dtype=object))
    if rhos is not None:
        allowed = {float(r) for r in rhos}
        df = df[df["rho"].astype(float).isin(allowed)]
    if not len(df):
        return df.assign(label=pd.Series(dtype=object))
    models = _models_per_kind(df)
    idx = df.groupby(["model", "nfe"])["fid"].idxmin()
    best = df.loc[idx.values].copy()
    best["label"] = [_with_model(table5_label(bool(r["aot"]), bool(r["cond"])), r["model"],
                                 models[(bool(r["aot"]), bool(r["cond"]))])
                     for _, r in best.iterrows()]
    return best.sort_values(["label", "nfe"], ignore_index=True)


def build_table5(agg: pd.DataFrame, rhos: Sequence[float] = DEFAULT_RHOS) -> pd.DataFrame:
    best = best_over_rho(agg, rhos)
    cells: dict[str, dict[str, dict]] = {}
    for _, r in best.iterrows():
        cells.setdefault(r["label"], {})[f"nfe={int(r['nfe'])}"] = r.to_dict()
    return _grid_table(paper_table(5), cells, "nfe", extra_stats=("best rho",))


# ---------------------------------------------------------------- rendering


def fmt_value(v: Any, signed: bool = False) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
    if not math.isfinite(f):
        return ""
    s = f"{f:+.2f}" if signed else f"{f:.2f}"
    if abs(f) < 0.1 and f != 0:
        s = f"{f:+.3g}" if signed else f"{f:.3g}"
    return s


def _fmt_int(v: Any) -> str:
    return "" if v is None or pd.isna(v) else str(int(v))


def _metric_name(feature_network: str | None) -> str:
    return "FD-offline" if is_offline(feature_network) else "FID"


def display_table(number: int, full: pd.DataFrame, feature_network: str | None) -> pd.DataFrame:
    """The human-readable version of a table (strings): what Markdown and LaTeX show."""
    m = _metric_name(feature_network)
    if number in (1, 2):
        return pd.DataFrame({
            "Model": full["model"], "NFE": full["nfe"].map(_fmt_int), "Source": full["status"],
            f"{m} (ours, min)": full["fid"].map(fmt_value),
            "mean ± std": [f"{fmt_value(a)} ± {fmt_value(b)}" if pd.notna(b) else fmt_value(a)
                           for a, b in zip(full["fid_mean"], full["fid_std"])],
            "n": [str(n) if n else "" for n in full["n"]],
            "FID (paper)": full["fid_paper"].map(fmt_value),
            "Δ": full["diff"].map(lambda v: fmt_value(v, signed=True)),
        })
    if number == 3:
        out = {"Model": full["model"], "NFE (paper)": full["nfe_paper"].map(_fmt_int)}
        for c in ("uncond", "cond"):
            out[f"{c}: {m} (ours)"] = full[f"fid_{c}"].map(fmt_value)
            out[f"{c}: n"] = [str(n) if n else "" for n in full[f"n_{c}"]]
            out[f"{c}: FID (paper)"] = full[f"fid_{c}_paper"].map(fmt_value)
            out[f"{c}: Δ"] = full[f"diff_{c}"].map(lambda v: fmt_value(v, signed=True))
        return pd.DataFrame(out)
    keep = full[full["stat"].isin(["ours", "best rho", "paper", "diff"])].copy()
    value_cols = [c for c in keep.columns if c not in ("setting", "stat")]
    disp = pd.DataFrame({"Setting": keep["setting"],
                         "": keep["stat"].map({"ours": f"{m} (ours)", "best rho": "best rho",
                                               "paper": "FID (paper)", "diff": "Δ"})})
    for col in value_cols:
        vals = []
        for stat, v in zip(keep["stat"], keep[col]):
            if stat == "best rho":
                vals.append("" if pd.isna(v) else format_rho(v))
            else:
                vals.append(fmt_value(v, signed=stat == "diff"))
        disp[col] = vals
    # Settings without any of our numbers keep only their paper row (and no empty diff rows).
    has_ours = {s for s, st, *vals in keep[["setting", "stat", *value_cols]].itertuples(index=False)
                if st == "ours" and any(pd.notna(v) for v in vals)}
    mask = [(s in has_ours) or st == "paper" for s, st in zip(keep["setting"], keep["stat"])]
    return disp[mask].reset_index(drop=True)


def _md_cell(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def to_markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    numeric = [all(re.fullmatch(r"[+\-]?[0-9.]*(e[+\-]?\d+)?( ± [0-9.e+\-]+)?", str(v) or "")
                   for v in df[c]) and c not in ("Model", "Setting") for c in cols]
    lines = ["| " + " | ".join(_md_cell(c) for c in cols) + " |",
             "|" + "|".join("---:" if num else ":---" for num in numeric) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_md_cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}"}


def latex_escape(s: Any) -> str:
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(s))
    return out.replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace("ρ", r"$\rho$")


def to_latex(df: pd.DataFrame, caption: str, label: str, notes: Sequence[str] = ()) -> str:
    cols = list(df.columns)
    align = "".join("l" if c in ("Model", "Setting", "Source", "") else "r" for c in cols)
    lines = [r"% requires \usepackage{booktabs}", r"\begin{table}[t]", r"\centering",
             rf"\caption{{{latex_escape(caption)}}}", rf"\label{{{label}}}",
             rf"\begin{{tabular}}{{{align}}}", r"\toprule",
             " & ".join(latex_escape(c) for c in cols) + r" \\", r"\midrule"]
    for row in df.itertuples(index=False):
        lines.append(" & ".join(latex_escape(v) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    for note in notes:
        lines.append(rf"\par\smallskip{{\footnotesize {latex_escape(note)}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def table_notes(number: int, agg: pd.DataFrame, feature_network: str | None,
                rhos: Sequence[float]) -> list[str]:
    notes = []
    if is_offline(feature_network):
        notes.append(f"Ours: {OFFLINE_CAVEAT}.")
    elif feature_network:
        notes.append(f"Ours: FID with feature network {feature_network}, minimum over the repeats "
                     "of each sample set.")
    if number in (1, 2):
        notes.append("Quoted: the paper column and the literature baselines ("
                     + ", ".join(QUOTED_BASELINES) + ") are quoted from the paper, not measured.")
    else:
        notes.append("Quoted: the paper rows/columns are quoted from the paper; empty cells were "
                     "not measured or are not stated in the paper.")
    if number == 5:
        notes.append("Ours: best over rho in {" + ", ".join(format_rho(r) for r in rhos) + "}.")
    if is_offline(feature_network):
        notes.append("No difference column: the two metrics are not comparable.")
    else:
        notes.append("Δ = ours - paper.")
    notes.append("Paper: CIFAR-10, FID-50k, minimum of three measurements.")
    return notes


def make_table(number: int, results: Any, rhos: Sequence[float] = DEFAULT_RHOS
               ) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(full table for CSV, display table for Markdown/LaTeX, metadata) of table `number`."""
    agg = as_aggregate(results)
    feat = _single_feature_network(agg)
    if number in (1, 2):
        full = build_table12(agg, number)
    elif number == 3:
        full = build_table3(agg)
    elif number == 4:
        full = build_table4(agg)
    elif number == 5:
        full = build_table5(agg, rhos)
    else:
        raise UserError(f"--table must be 1-5, got {number}")
    if is_offline(feat):  # a difference between incomparable metrics would mislead
        for col in [c for c in full.columns if c.startswith("diff")]:
            full[col] = float("nan")
        if "stat" in full.columns:
            full = full[full["stat"] != "diff"].reset_index(drop=True)
    meta = {
        "table": number, "title": TABLE_TITLES[number], "feature_network": feat or "",
        "metric": OFFLINE_CAVEAT if is_offline(feat) else ("FID" if feat else ""),
        "sample_sets": int(len(agg)), "measurements": int(agg["n"].sum()) if len(agg) else 0,
        "rhos": ",".join(format_rho(r) for r in rhos) if number == 5 else "",
        "notes": table_notes(number, agg, feat, rhos),
    }
    disp = display_table(number, full, feat)
    if is_offline(feat):
        disp = disp[[c for c in disp.columns if not c.endswith("Δ")]]
    return full, disp, meta


def render_table(number: int, full: pd.DataFrame, disp: pd.DataFrame, meta: dict) -> dict[str, str]:
    """Text of the CSV, Markdown and LaTeX files."""
    head = [f"# {k}: {meta[k]}" for k in ("table", "title", "feature_network", "metric", "sample_sets",
                                          "measurements", "rhos") if meta.get(k) not in ("", None)]
    buf = io.StringIO()
    full.to_csv(buf, index=False, float_format="%.6g")
    csv = "\n".join(head) + "\n" + buf.getvalue()
    md = [f"**{meta['title']}**", ""]
    if is_offline(meta["feature_network"]):
        md += [f"> **Note:** ours = {OFFLINE_CAVEAT}.", ""]
    md += [to_markdown(disp).rstrip("\n"), ""]
    md += [f"- {n}" for n in meta["notes"]]
    tex = to_latex(disp, meta["title"], f"tab:table{number}", meta["notes"])
    return {"csv": csv, "md": "\n".join(md) + "\n", "tex": tex}


def write_outputs(out_prefix: str | os.PathLike, texts: dict[str, str]) -> list[Path]:
    """Write `<prefix>.<ext>` for each text, all or none (temporary names renamed at the end)."""
    prefix = strip_known_suffix(out_prefix)
    paths = [Path(f"{prefix}.{ext}") for ext in texts]
    with contextlib.ExitStack() as stack:
        for path, text in zip(paths, texts.values()):
            tmp = stack.enter_context(atomic_path(path))
            tmp.write_text(text)
    return paths


_KNOWN_SUFFIXES = (".csv", ".md", ".tex", ".png", ".pdf")


def strip_known_suffix(p: str | os.PathLike) -> str:
    s = str(p)
    for suf in _KNOWN_SUFFIXES:
        if s.endswith(suf):
            return s[: -len(suf)]
    return s


def write_table(number: int, results: Any, out_prefix: str | os.PathLike,
                rhos: Sequence[float] = DEFAULT_RHOS) -> list[Path]:
    full, disp, meta = make_table(number, results, rhos)
    return write_outputs(out_prefix, render_table(number, full, disp, meta))


def read_table_csv(path: str | os.PathLike) -> tuple[pd.DataFrame, dict]:
    """A table CSV written by `write_table`, and its `# key: value` header."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"table {path} does not exist")
    meta: dict[str, str] = {}
    text = path.read_text()
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        k, _, v = line[1:].partition(":")
        meta[k.strip()] = v.strip()
    try:
        df = pd.read_csv(io.StringIO(text), comment="#")
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise UserError(f"table {path} is not a readable CSV: {exc}") from None
    return df, meta


# ============================================================================================
# Figures


def _figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (5.0, 3.6), **kw: Any):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def save_figure(fig: Any, out_prefix: str | os.PathLike, dpi: int = 150,
                formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Write `<prefix>.png` and `<prefix>.pdf` (or the given formats), all or none."""
    prefix = strip_known_suffix(out_prefix)
    paths = [Path(f"{prefix}.{fmt}") for fmt in formats]
    with contextlib.ExitStack() as stack:
        for path in paths:
            tmp = stack.enter_context(atomic_path(path))
            fmt = path.suffix[1:]
            meta = {"Software": None} if fmt == "png" else {"CreationDate": None}
            fig.savefig(tmp, format=fmt, dpi=dpi, metadata=meta)
    return paths


def _paper_axis(ax: Any, comparable: bool) -> Any:
    if comparable:
        return ax
    twin = ax.twinx()
    twin.set_ylabel("paper FID (quoted, CIFAR-10)", color="0.4")
    twin.tick_params(axis="y", colors="0.4")
    return twin


def _ylabel(feat: str | None) -> str:
    return "FD, offline features" if is_offline(feat) else "FID"


def _log_axis(ax: Any, axis: str = "y") -> None:
    """Log scale with plain-number tick labels; some minor ticks labelled on short ranges."""
    from matplotlib.ticker import FuncFormatter

    getattr(ax, f"set_{axis}scale")("log")
    a = ax.yaxis if axis == "y" else ax.xaxis

    def minor(v: float, _pos: Any) -> str:
        lo, hi = sorted(a.get_view_interval())
        if v <= 0 or lo <= 0 or hi / lo > 100:
            return ""
        mantissa = round(v / 10 ** math.floor(math.log10(v) + 1e-9), 6)
        keep = (2.0, 3.0, 5.0) if hi / lo <= 10 else (2.0, 5.0)
        return f"{v:g}" if hi / lo <= 3 or mantissa in keep else ""

    a.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    a.set_minor_formatter(FuncFormatter(minor))


def _no_data(ax: Any) -> None:
    if not ax.lines:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="0.5")


def _caveat(fig: Any, feat: str | None) -> None:
    if is_offline(feat):
        import textwrap

        width = max(40, int(fig.get_figwidth() * 14))
        fig.suptitle(textwrap.fill(OFFLINE_CAVEAT, width), fontsize=8)


def minimal_step_optimum(nfes: Sequence[float], fids: Sequence[float],
                         tolerance: float = DEFAULT_TOLERANCE) -> tuple[float, float] | None:
    """The smallest NFE whose FID is within `tolerance` (relative) of the curve's best FID."""
    pts = sorted((float(n), float(f)) for n, f in zip(nfes, fids) if np.isfinite(f))
    if not pts:
        return None
    best = min(f for _, f in pts)
    limit = best + tolerance * abs(best)
    for n, f in pts:
        if f <= limit:
            return n, f
    return None  # pragma: no cover - the best point always qualifies


def _paper_rows(number: int) -> pd.DataFrame:
    return paper_table(number).set_index("setting")


def plot_fid_vs_nfe(results: Any, paper: bool = True) -> Any:
    """Figure 1: our best FID at each NFE (any rho) per model, paper curves and quoted baselines.

    One panel per condition (unconditional, conditional) present in the results; the paper's
    Figure 1 (unconditional) when there are none.
    """
    agg = as_aggregate(results)
    feat = _single_feature_network(agg)
    best = best_over_rho(agg, None)
    paper5 = _paper_rows(5)
    conds = sorted({bool(c) for c in best["cond"]}) if len(best) else [False]
    fig, axes = _figure(1, len(conds))
    for ax, cond in zip(axes[0], conds):
        pax = _paper_axis(ax, not is_offline(feat))
        for aot in (False, True):
            kind = kind_name(aot)
            label = table5_label(aot, cond)
            sub = best[best["label"].str.startswith(label)] if len(best) else best
            for lab, s in (sub.groupby("label") if len(sub) else []):
                ax.plot(s["nfe"], s["fid"], "o-", color=_COLORS[kind], label=f"{lab} (ours)")
            if paper and label in paper5.index:
                row = paper5.loc[label]
                xs = [_col_value(c) for c in row.index]
                pax.plot(xs, row.values.astype(float), "x--", color=_COLORS[kind], alpha=0.6,
                         label=f"{label} (paper)")
        pt = paper_table(2 if cond else 1)
        seen: dict[float, int] = {}
        for _, r in pt[pt["model"].isin(QUOTED_BASELINES) & paper].iterrows():
            k = seen[r["nfe"]] = seen.get(r["nfe"], -1) + 1  # stack labels at one NFE
            pax.plot([r["nfe"]], [r["fid"]], "s", color="0.35", ms=5)
            pax.annotate(r["model"], (r["nfe"], r["fid"]), textcoords="offset points",
                         xytext=(4, 3 + 9 * k), fontsize=7, color="0.3")
        _log_axis(ax, "x")
        for a in {ax, pax}:
            _log_axis(a, "y")
        ax.set_xlabel("NFE")
        ax.set_ylabel(_ylabel(feat))
        ax.set_title(f"{cond_name(cond)}itional" if cond else "unconditional")
        handles, labels = ax.get_legend_handles_labels()
        if pax is not ax:
            h2, l2 = pax.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
        if handles:
            ax.legend(handles, labels, fontsize=7)
    _caveat(fig, feat)
    return fig


def plot_fid_vs_rho(results: Any, steps: Sequence[int] = (18, 14, 8)) -> Any:
    """Figure 4: FID vs rho (log x) at each number of steps, ours solid, paper dashed."""
    agg = as_aggregate(results)
    feat = _single_feature_network(agg)
    df = _plain_heun(agg)
    steps = list(steps) + sorted({int(s) for s in (df["num_steps"] if len(df) else [])} - set(steps))
    paper4 = _paper_rows(4)
    fig, axes = _figure(2, len(steps), size=(4.2, 3.3))
    for i, cond in enumerate((False, True)):
        for j, n in enumerate(steps):
            ax = axes[i][j]
            pax = _paper_axis(ax, not is_offline(feat))
            for aot in (False, True):
                kind = kind_name(aot)
                sub = df[(df["aot"] == aot) & (df["cond"] == cond) & (df["num_steps"] == n)] \
                    if len(df) else df
                for model, s in (sub.groupby("model") if len(sub) else []):
                    s = s.sort_values("rho")
                    ax.plot(s["rho"], s["fid"], "o-", color=_COLORS[kind], label=f"{kind} [{model}]")
                label = table4_label(aot, n, cond)
                if label in paper4.index:
                    row = paper4.loc[label].astype(float)
                    xs = np.array([_col_value(c) for c in row.index])
                    ok = np.isfinite(row.values)
                    pax.plot(xs[ok], row.values[ok], "x--", color=_COLORS[kind], alpha=0.6,
                             label=f"{kind} (paper)")
            _log_axis(ax, "x")
            for a in {ax, pax}:
                _log_axis(a, "y")
            if not pax.lines:
                _no_data(ax)
            ax.set_xlabel("rho")
            ax.set_ylabel(_ylabel(feat))
            ax.set_title(f"{n} steps (NFE {2 * n - 1}), {cond_name(cond)}", fontsize=9)
            handles, labels = ax.get_legend_handles_labels()
            if pax is not ax:
                h2, l2 = pax.get_legend_handles_labels()
                handles, labels = handles + h2, labels + l2
            if handles:
                ax.legend(handles, labels, fontsize=6)
    _caveat(fig, feat)
    return fig


def plot_best_fid_vs_nfe(results: Any, rhos: Sequence[float] = DEFAULT_RHOS,
                         tolerance: float = DEFAULT_TOLERANCE) -> Any:
    """Figure 5: best FID over `rhos` vs NFE, minimal-step optimum marked with a star."""
    agg = as_aggregate(results)
    feat = _single_feature_network(agg)
    best = best_over_rho(agg, rhos)
    paper5 = _paper_rows(5)
    fig, axes = _figure(1, 2)
    for ax, cond in zip(axes[0], (False, True)):
        pax = _paper_axis(ax, not is_offline(feat))
        for aot in (False, True):
            kind = kind_name(aot)
            label = table5_label(aot, cond)
            sub = best[best["label"].str.startswith(label)] if len(best) else best
            for lab, s in (sub.groupby("label") if len(sub) else []):
                s = s.sort_values("nfe")
                ax.plot(s["nfe"], s["fid"], "o-", color=_COLORS[kind], label=f"{lab} (ours)")
                opt = minimal_step_optimum(s["nfe"], s["fid"], tolerance)
                if opt:
                    ax.plot([opt[0]], [opt[1]], "*", color=_COLORS[kind], ms=16, mec="k",
                            label=f"optimum NFE {opt[0]:g}")
            if label in paper5.index:
                row = paper5.loc[label].astype(float)
                xs = np.array([_col_value(c) for c in row.index])
                pax.plot(xs, row.values, "x--", color=_COLORS[kind], alpha=0.6,
                         label=f"{label} (paper)")
                opt = minimal_step_optimum(xs, row.values, tolerance)
                if opt:
                    pax.plot([opt[0]], [opt[1]], "*", color="none", mec=_COLORS[kind], ms=14)
        for a in {ax, pax}:
            _log_axis(a, "y")
        ax.set_xlabel("NFE")
        ax.set_ylabel(f"best {_ylabel(feat)} over rho")
        ax.set_title(("conditional" if cond else "unconditional")
                     + f", rho in {{{', '.join(format_rho(r) for r in rhos)}}}", fontsize=9)
        handles, labels = ax.get_legend_handles_labels()
        if pax is not ax:
            h2, l2 = pax.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
        if handles:
            ax.legend(handles, labels, fontsize=7)
    _caveat(fig, feat)
    return fig


# ---------------------------------------------------------------- images


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Images in [-1, 1] to uint8 as EDM saves them (x * 127.5 + 128, clipped)."""
    return np.clip(np.asarray(x, dtype=np.float64) * 127.5 + 128, 0, 255).astype(np.uint8)


def _hwc(img: np.ndarray) -> np.ndarray:
    """CHW or HWC (C in 1, 3) uint8 -> HWC."""
    if img.ndim == 2:
        return img[:, :, None]
    if img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        return np.transpose(img, (1, 2, 0))
    if img.shape[0] in (1, 3) and img.shape[-1] in (1, 3) and img.shape[0] != img.shape[-1]:
        return np.transpose(img, (1, 2, 0))
    return img


def tile(images: np.ndarray, columns: int, pad: int = 1, fill: int = 255) -> np.ndarray:
    """uint8 images [N, H, W, C] -> one [rows*(H+pad)-pad, cols*(W+pad)-pad, C] mosaic."""
    images = np.asarray(images)
    n, h, w, c = images.shape
    columns = max(1, min(columns, n))
    rows = max(1, math.ceil(n / columns))
    out = np.full((rows * (h + pad) - pad, columns * (w + pad) - pad, c), fill, dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, columns)
        out[r * (h + pad): r * (h + pad) + h, k * (w + pad): k * (w + pad) + w] = images[i]
    return out


def _imshow(ax: Any, img: np.ndarray) -> None:
    img = _hwc(img)
    if img.shape[-1] == 1:
        ax.imshow(img[:, :, 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(img, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def load_diagnostics(path: str | os.PathLike) -> dict:
    """Read the diagnostics npz: {"names", "t_steps", "x0": [per model [S,K,C,H,W]], "x", "labels"}."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"diagnostics {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as exc:  # zipfile/ValueError/OSError: not an npz
        raise UserError(f"diagnostics {path} is not a readable npz file: {exc}") from None
    return check_diagnostics(data, path)


def check_diagnostics(data: dict, path: Any = "<diagnostics>") -> dict:
    for key in ("names", "t_steps"):
        if key not in data:
            raise UserError(f"diagnostics {path}: missing key '{key}'")
    names = [str(n) for n in np.atleast_1d(data["names"])]
    x0, xs = [], []
    for i, name in enumerate(names):
        if f"x0_{i}" not in data:
            raise UserError(f"diagnostics {path}: missing key 'x0_{i}' (model {name})")
        a = np.asarray(data[f"x0_{i}"], dtype=np.float32)
        if a.ndim != 5 or a.shape[2] not in (1, 3):
            raise UserError(f"diagnostics {path}: 'x0_{i}' must be [seeds, steps, C, H, W] with C 1 "
                            f"or 3, got shape {a.shape}")
        if x0 and a.shape != x0[0].shape:
            raise UserError(f"diagnostics {path}: 'x0_{i}' has shape {a.shape}, 'x0_0' {x0[0].shape}")
        x0.append(a)
        xs.append(np.asarray(data[f"x_{i}"], dtype=np.float32) if f"x_{i}" in data else None)
    if not names:
        raise UserError(f"diagnostics {path}: no models in 'names'")
    t_steps = np.asarray(data["t_steps"], dtype=np.float64)
    return {"names": names, "t_steps": t_steps, "x0": x0, "x": xs,
            "labels": np.asarray(data["labels"]) if "labels" in data else None}


def _as_diagnostics(diag: Any) -> dict:
    if isinstance(diag, (str, os.PathLike)):
        return load_diagnostics(diag)
    if isinstance(diag, dict) and "x0" in diag and isinstance(diag["x0"], list):
        return diag
    return check_diagnostics(dict(diag))


def _pick_columns(k: int, max_columns: int) -> list[int]:
    if k <= max_columns:
        return list(range(k))
    return sorted({int(round(v)) for v in np.linspace(0, k - 1, max_columns)})


def plot_trajectory_strip(diag: Any, seed_index: int = 0, max_columns: int = 10,
                          title: str | None = None, with_final: bool = True) -> Any:
    """Rows = models, columns = steps: the single-step denoised estimate x0 of one seed."""
    d = _as_diagnostics(diag)
    s_count, k = d["x0"][0].shape[:2]
    if not 0 <= seed_index < s_count:
        raise UserError(f"--seed-index {seed_index} out of range: the diagnostics have {s_count} seeds")
    cols = _pick_columns(k, max_columns)
    final = with_final and all(x is not None for x in d["x"])
    ncols = len(cols) + int(final)
    fig, axes = _figure(len(d["names"]), ncols, size=(1.1, 1.25))
    t = d["t_steps"]
    for i, name in enumerate(d["names"]):
        for j, step in enumerate(cols):
            ax = axes[i][j]
            _imshow(ax, to_uint8(d["x0"][i][seed_index, step]))
            if i == 0:
                sig = f"\nσ={t[step]:.3g}" if step < len(t) else ""
                ax.set_title(f"step {step}{sig}", fontsize=7)
        if final:
            ax = axes[i][-1]
            _imshow(ax, to_uint8(d["x"][i][seed_index, -1]))
            if i == 0:
                ax.set_title("final", fontsize=7)
        axes[i][0].set_ylabel(name, fontsize=8)
    fig.suptitle(title or "single-step denoised estimate x0 along the path (same noise)", fontsize=9)
    return fig


def plot_denoised_grid(diag: Any, step: int | None = None, max_seeds: int = 64,
                       title: str | None = None) -> Any:
    """x0 estimates of many seeds at one (early) step, one panel per model, side by side."""
    d = _as_diagnostics(diag)
    s_count, k = d["x0"][0].shape[:2]
    if step is None:
        step = min(3, k - 1)
    if not 0 <= step < k:
        raise UserError(f"--step {step} out of range: the diagnostics have {k} steps")
    n = min(s_count, max_seeds)
    cols = max(1, math.ceil(math.sqrt(n)))
    fig, axes = _figure(1, len(d["names"]), size=(3.2, 3.4))
    sigma = d["t_steps"][step] if step < len(d["t_steps"]) else float("nan")
    for i, name in enumerate(d["names"]):
        imgs = np.stack([_hwc(to_uint8(x)) for x in d["x0"][i][:n, step]])
        _imshow(axes[0][i], tile(imgs, cols))
        axes[0][i].set_title(name, fontsize=9)
    fig.suptitle(title or f"denoised estimate x0 at step {step} (σ={sigma:.3g}), same seeds",
                 fontsize=9)
    return fig


def load_samples(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None, dict]:
    from .generate import load_samples as read_sample_set

    rec = read_sample_set(path)
    return rec["images"], rec["labels"], rec["meta"]


def plot_sample_grid(images: np.ndarray, labels: np.ndarray | None = None, count: int = 100,
                     columns: int = 10, title: str | None = None) -> Any:
    """Grid of uint8 [N, H, W, C] images; class-conditional sets get one row per class."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if labels is not None and len(labels) == len(images) and np.all(np.asarray(labels) >= 0):
        labels = np.asarray(labels)
        picked = []
        for c in np.unique(labels):
            picked.extend(np.flatnonzero(labels == c)[:columns].tolist())
            if len(picked) >= count:
                break
        rows = []
        for c in np.unique(labels[picked]):
            idx = [i for i in picked if labels[i] == c]
            row = images[idx]
            if len(row) < columns:
                row = np.concatenate([row, np.full((columns - len(row), *images.shape[1:]), 255,
                                                   dtype=np.uint8)])
            rows.append(row)
        sel = np.concatenate(rows)[: max(count, columns)]
    else:
        sel = images[:count]
    fig, axes = _figure(1, 1, size=(min(10.0, 0.6 * columns + 1), min(10.0, 0.6 * math.ceil(
        len(sel) / max(columns, 1)) + 1)))
    _imshow(axes[0][0], tile(sel, columns))
    fig.suptitle(title or "samples", fontsize=9)
    return fig


def load_diagnostics_json(path: str | os.PathLike) -> dict:
    path = Path(path)
    if path.suffix != ".json":
        path = path.with_suffix(".json")
    obj = read_json(path, "diagnostics JSON")
    return check_curvature(obj, path)


def check_curvature(obj: Any, path: Any = "<diagnostics JSON>") -> dict:
    if not isinstance(obj, dict) or not isinstance(obj.get("models"), list) or not obj["models"]:
        raise UserError(f"diagnostics JSON {path}: missing key 'models' (a non-empty list)")
    for i, m in enumerate(obj["models"]):
        try:
            sig = np.asarray(m["curve"]["sigma"], dtype=float)
            dist = np.asarray(m["curve"]["x0_distance_to_final"], dtype=float)
            m["name"]
        except (KeyError, TypeError, ValueError):
            raise UserError(f"diagnostics JSON {path}: models[{i}] needs 'name' and 'curve' with "
                            "'sigma' and 'x0_distance_to_final'") from None
        if sig.shape != dist.shape:
            raise UserError(f"diagnostics JSON {path}: models[{i}] curve lengths differ")
    return obj


def plot_curvature(diag_json: Any) -> Any:
    """Distance of the denoised estimate to the final sample over sigma (log x), per model.

    `diag_json`: one diagnostics JSON (path or dict) or a list of them; one panel per input.
    """
    items = list(diag_json) if isinstance(diag_json, (list, tuple)) else [diag_json]
    if not items:
        raise UserError("the curvature figure needs at least one diagnostics JSON")
    panels = []
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            obj = load_diagnostics_json(item)
            default = Path(item).stem
        else:
            obj = check_curvature(item)
            default = ""
        sampler = obj.get("sampler") if isinstance(obj.get("sampler"), dict) else {}
        title = sampler.get("key") or default
        if sampler.get("num_steps") and not sampler.get("key"):
            title = f"{sampler['num_steps']} steps, rho {format_rho(sampler.get('rho', 7))}"
        if default and title != default:
            title = f"{default}: {title}" if title not in default else default
        panels.append((obj, title))
    ncols = min(len(panels), 2)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = _figure(nrows, ncols, size=(5.5, 3.8))
    for k, (obj, title) in enumerate(panels):
        ax = axes[k // ncols][k % ncols]
        for m in obj["models"]:
            sig = np.asarray(m["curve"]["sigma"], dtype=float)
            dist = np.asarray(m["curve"]["x0_distance_to_final"], dtype=float)
            ok = sig > 0
            kind = kind_name(bool(m.get("aot")))
            c = m.get("curvature")
            lab = str(m["name"]) + (f" (curvature {c:.3g})" if isinstance(c, (int, float)) else "")
            ax.plot(sig[ok], dist[ok], "o-", ms=3,
                    color=_COLORS.get(kind) if len(obj["models"]) <= 2 else None, label=lab)
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("sigma (sampling runs from left to right)")
        ax.set_ylabel("distance of x0 estimate to final sample")
        ax.legend(fontsize=8)
        ax.set_title(title or "trajectory curvature", fontsize=9)
    for k in range(len(panels), nrows * ncols):
        axes[k // ncols][k % ncols].set_axis_off()
    fig.suptitle("trajectory curvature: lower = straighter sampling path", fontsize=9)
    return fig


# ============================================================================================
# Compute time and the run report


def benchmark_stage(relpath: str | os.PathLike) -> str:
    """Stage of a benchmark file from the first component of its path below the benchmarks folder."""
    parts = Path(relpath).with_suffix("").parts
    first = parts[0].lower() if parts else ""
    words = [w for w in re.split(r"[_\-.]+", first) if w]
    if "dg" in words or first.startswith("dg") or any(w.startswith("discriminator") for w in words):
        return "dg"
    if first in ("train_features", "reference_stats") or first.startswith(("fid", "reference")):
        return "fid"
    if first.startswith("train"):
        return "train"
    if first.startswith(("generate", "sample")):
        return "generate"
    return "other"


STAGES = ("train", "generate", "fid", "dg", "other")


def compute_time(benchmarks: str | os.PathLike | None) -> pd.DataFrame:
    """Wall and CPU seconds per stage from Snakemake benchmark TSV files below `benchmarks`."""
    rows = {s: {"stage": s, "jobs": 0, "wall_s": 0.0, "cpu_s": 0.0} for s in STAGES}
    root = Path(benchmarks) if benchmarks else None
    files = sorted(root.rglob("*.tsv")) if root is not None and root.is_dir() else []
    for f in files:
        try:
            df = pd.read_csv(f, sep="\t")
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise UserError(f"benchmark file {f} is not a readable TSV: {exc}") from None
        if "s" not in df.columns:
            raise UserError(f"benchmark file {f}: missing column 's'")
        stage = benchmark_stage(f.relative_to(root))
        rows[stage]["jobs"] += 1
        rows[stage]["wall_s"] += float(pd.to_numeric(df["s"], errors="coerce").fillna(0).sum())
        if "cpu_time" in df.columns:
            rows[stage]["cpu_s"] += float(pd.to_numeric(df["cpu_time"], errors="coerce").fillna(0).sum())
    out = pd.DataFrame(list(rows.values()))
    total = {"stage": "total", "jobs": int(out["jobs"].sum()), "wall_s": float(out["wall_s"].sum()),
             "cpu_s": float(out["cpu_s"].sum())}
    return pd.concat([out, pd.DataFrame([total])], ignore_index=True)


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{(s // 60) % 60:02d}:{s % 60:02d}"


def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(obj, dict):
        out = []
        for k, v in obj.items():
            out.extend(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return [(prefix, json.dumps(obj) if not isinstance(obj, str) else obj)]


def load_config(path: str | os.PathLike) -> dict:
    path = Path(path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise UserError(f"config {path} does not exist")
        import yaml

        try:
            obj = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise UserError(f"config {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    else:
        obj = read_json(path, "config")
    if not isinstance(obj, dict):
        raise UserError(f"config {path} must be a mapping at the top level")
    return obj


def _artefact_key(path: Path, word: str) -> tuple:
    m = re.search(rf"{word}(\d+)", path.stem)
    return (0, int(m.group(1)), path.stem) if m else (1, 0, path.stem)


def _resolve_tables(paths: Sequence[str | os.PathLike]) -> list[Path]:
    out = []
    for p in paths:
        prefix = strip_known_suffix(p)
        csv = Path(prefix + ".csv")
        for ext in ("csv", "md"):
            if not Path(f"{prefix}.{ext}").is_file():
                raise UserError(f"table {prefix}.{ext} does not exist")
        out.append(csv)
    return sorted(dict.fromkeys(out), key=lambda p: _artefact_key(p, "table"))


def _resolve_figures(paths: Sequence[str | os.PathLike]) -> list[Path]:
    out = []
    for p in paths:
        png = Path(strip_known_suffix(p) + ".png")
        if not png.is_file():
            raise UserError(f"figure {png} does not exist")
        out.append(png)
    return sorted(dict.fromkeys(out), key=lambda p: _artefact_key(p, "figure"))


def _figure_id(path: Path) -> str:
    m = re.search(r"figure(\d+)", path.stem)
    if m:
        return m.group(1)
    return "curvature" if "curvature" in path.stem else path.stem


def _rel(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path.resolve(), base.resolve())).as_posix()


def build_readme(run_dir: str | os.PathLike, out: str | os.PathLike, config: dict | None,
                 tables: Sequence[Path], figures: Sequence[Path],
                 benchmarks: str | os.PathLike | None, config_path: str | None = None) -> str:
    run_dir, out = Path(run_dir), Path(out)
    base = out.parent
    run = run_dir.resolve().name
    loaded = [(t, *read_table_csv(t)) for t in tables]
    feats = sorted({m.get("feature_network", "") for _, _, m in loaded} - {""})
    offline = OFFLINE_FEATURES in feats
    lines = [f"# EDM-AOT reproduction: run `{run}`", ""]
    lines += ["Tables and figures of \"Improving Diffusion-Based Generative Models via Approximated "
              "Optimal Transport\" (Kim et al.) as measured by this run, each beside the published "
              "number.", ""]
    if offline:
        lines += [f"> **Caveat:** the numbers of this run are a {OFFLINE_CAVEAT}. The paper "
                  "column is FID (Inception, CIFAR-10) and is shown for orientation only.", ""]
    ct = compute_time(benchmarks)
    total = ct[ct["stage"] == "total"].iloc[0]
    lines += ["## Contents", ""]
    lines += [f"- [{m.get('title', t.stem)}](#{t.stem})" for t, _, m in loaded]
    lines += [f"- [{FIGURE_TITLES.get(_figure_id(f), f.stem)}](#{f.stem})" for f in figures]
    lines += ["- [Measured vs quoted](#measured-vs-quoted)", "- [Compute time](#compute-time)",
              "- [Settings](#settings)", ""]
    lines += ["## Tables", ""]
    if not loaded:
        lines += ["No tables were made in this run.", ""]
    for t, _, meta in loaded:
        md = Path(strip_known_suffix(t) + ".md").read_text().rstrip("\n")
        if md.startswith("**"):  # the table's own title line; the heading above replaces it
            md = md.split("\n", 1)[1].lstrip("\n") if "\n" in md else ""
        lines += [f'<a id="{t.stem}"></a>', f"### {meta.get('title', t.stem)}", ""]
        lines += [md, ""]
        links = [f"[CSV]({_rel(t, base)})", f"[Markdown]({_rel(Path(strip_known_suffix(t) + '.md'), base)})"]
        tex = Path(strip_known_suffix(t) + ".tex")
        if tex.is_file():
            links.append(f"[LaTeX]({_rel(tex, base)})")
        lines += ["Files: " + " · ".join(links), ""]
    lines += ["## Figures", ""]
    if not figures:
        lines += ["No figures were made in this run.", ""]
    for f in figures:
        fid = _figure_id(f)
        title = FIGURE_TITLES.get(fid, f.stem)
        lines += [f'<a id="{f.stem}"></a>', f"### {title}", "",
                  f"![{title}]({_rel(f, base)})", ""]
        links = [f"[PNG]({_rel(f, base)})"]
        pdf = f.with_suffix(".pdf")
        if pdf.is_file():
            links.append(f"[PDF]({_rel(pdf, base)})")
        lines += ["Files: " + " · ".join(links), ""]
        if offline and fid in CURVE_FIGURES:
            lines += [f"_Ours: {OFFLINE_CAVEAT}; paper values on the right-hand axis._", ""]
    lines += ['<a id="measured-vs-quoted"></a>', "## Measured vs quoted", ""]
    n_sets = sum(int(m.get("sample_sets", 0) or 0) for _, _, m in loaded)
    n_meas = sum(int(m.get("measurements", 0) or 0) for _, _, m in loaded)
    metric = OFFLINE_CAVEAT if offline else (
        "FID with the feature network " + ", ".join(feats) if feats else "FID")
    lines += [f"- **Measured in this run:** every \"ours\" value, a {metric}; each is the minimum "
              "over the repeats of one sample set (mean, standard deviation and the number of "
              "repeats are in the tables and CSV files). Summed over the tables: "
              f"{n_sets} sample-set entries from {n_meas} measurements (a sample set used by "
              "several tables counts once per table).",
              "- **Quoted from the paper:** every \"paper\" column (CIFAR-10, FID-50k, minimum of "
              "three), and the literature baselines " + ", ".join(QUOTED_BASELINES)
              + " in Tables 1-2 (status \"quoted\"); this pipeline does not train them.",
              "- Empty cells: not measured in this run, or not stated in the paper.",
              "- Figures 2, 3, 6-9 and the curvature plot are measured only (the paper shows "
              "pictures, not numbers); Figures 10-11 show samples of this run.", ""]
    missing = []
    for t, df, meta in loaded:
        if "status" in df.columns:
            nm = df.loc[df["status"] == "not measured", "model"].tolist()
            if nm:
                missing.append(f"Table {meta.get('table', t.stem)}: " + ", ".join(nm))
    if missing:
        lines += ["Paper rows of EDM/EDM-AOT without a measurement in this run: "
                  + "; ".join(missing) + ".", ""]
    lines += ['<a id="compute-time"></a>', "## Compute time", ""]
    if int(total["jobs"]) == 0:
        lines += [f"No Snakemake benchmark files found under `{benchmarks}`." if benchmarks
                  else "No benchmark folder given.", ""]
    else:
        lines += [f"Total: **{total['wall_s'] / 3600:.2f} h** wall-clock job time "
                  f"({_hms(total['wall_s'])}, sum of the `s` column of {int(total['jobs'])} "
                  f"benchmark file{'s' if int(total['jobs']) != 1 else ''} under `{benchmarks}`), {total['cpu_s'] / 3600:.2f} h CPU time "
                  "(`cpu_time`). Jobs that ran in parallel are counted in full; a job's wall "
                  "time is the time it held its GPU/CPU allocation.", ""]
        lines += ["| stage | jobs | wall time (h:m:s) | wall hours | CPU hours |",
                  "|:---|---:|---:|---:|---:|"]
        for _, r in ct.iterrows():
            lines.append(f"| {r['stage']} | {int(r['jobs'])} | {_hms(r['wall_s'])} | "
                         f"{r['wall_s'] / 3600:.3f} | {r['cpu_s'] / 3600:.3f} |")
        lines.append("")
    lines += ['<a id="settings"></a>', "## Settings", ""]
    if config is None:
        lines += ["No config given.", ""]
    else:
        src = f" (`{config_path}`)" if config_path else ""
        lines += [f"The configuration this run used{src}:", "",
                  "| key | value |", "|:---|:---|"]
        for k, v in _flatten(config):
            lines.append(f"| `{_md_cell(k)}` | {_md_cell(v)} |")
        lines += ["", "<details><summary>config as JSON</summary>", "", "```json",
                  json.dumps(config, indent=2, default=str), "```", "", "</details>", ""]
    return "\n".join(lines)


def write_readme(run_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                 config: str | os.PathLike | None = None,
                 tables: Sequence[str | os.PathLike] | None = None,
                 figures: Sequence[str | os.PathLike] | None = None,
                 benchmarks: str | os.PathLike | None = None) -> Path:
    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "README.md"
    if tables is None:
        tables = sorted((run_dir / "tables").glob("*.csv"))
    if figures is None:
        figures = sorted((run_dir / "figures").glob("*.png"))
    cfg = load_config(config) if config else None
    text = build_readme(run_dir, out, cfg, _resolve_tables(tables), _resolve_figures(figures),
                        benchmarks, str(config) if config else None)
    with atomic_path(out) as tmp:
        tmp.write_text(text)
    return out


# ============================================================================================
# Command line


def parse_rhos(s: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise UserError(f"--rhos: {s!r} is not a comma-separated list of numbers") from None
    if not vals or any(not math.isfinite(v) or v <= 0 for v in vals):
        raise UserError(f"--rhos: {s!r} must name positive numbers")
    return vals


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m aot.report", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("table", help="one table as CSV, Markdown and LaTeX")
    t.add_argument("--table", type=int, required=True, choices=[1, 2, 3, 4, 5])
    t.add_argument("--out-prefix", required=True, help="writes PREFIX.csv, PREFIX.md, PREFIX.tex")
    t.add_argument("--rhos", default="9,27,81,243", help="rho values Table 5 takes the best over")
    t.add_argument("results", nargs="*", help="FID result JSON files or folders of them")
    f = sub.add_parser("figure", help="one figure as PNG and PDF")
    f.add_argument("--figure", required=True,
                   choices=[*CURVE_FIGURES, *STRIP_FIGURES, *GRID_FIGURES, *SAMPLE_FIGURES, "curvature"])
    f.add_argument("--kind", choices=FIGURE_KINDS, default=None,
                   help="what to draw (default: the paper's kind of that figure number)")
    f.add_argument("--out-prefix", required=True, help="writes PREFIX.png and PREFIX.pdf")
    f.add_argument("--paper-baselines", action=argparse.BooleanOptionalAction, default=True,
                   help="Figure 1: draw the paper's curves and quoted baselines (default on)")
    f.add_argument("--rhos", default="9,27,81,243", help="Figure 5: rho values to take the best over")
    f.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help="Figure 5: relative FID tolerance of the minimal-step optimum")
    f.add_argument("--diagnostics", help="diagnostics npz (strips, grids) or its JSON (curvature)")
    f.add_argument("--seed-index", type=int, default=0, help="strips: which seed of the npz")
    f.add_argument("--max-columns", type=int, default=10, help="strips: at most this many steps")
    f.add_argument("--step", type=int, default=None, help="denoised grids: step index (default 3)")
    f.add_argument("--max-seeds", type=int, default=64, help="denoised grids: at most this many seeds")
    f.add_argument("--samples", help="sample-set npz (Figures 10, 11)")
    f.add_argument("--count", type=int, default=100, help="sample grids: number of images")
    f.add_argument("--columns", type=int, default=10, help="sample grids: images per row")
    f.add_argument("--title", default=None)
    f.add_argument("inputs", nargs="*",
                   help="curves: FID result JSON files or folders; strip/denoised-grid: the "
                        "diagnostics npz; samples: the sample-set npz; curvature: diagnostics JSONs")
    r = sub.add_parser("readme", help="the run report README.md")
    r.add_argument("--run-dir", required=True)
    r.add_argument("--out", default=None, help="default RUN_DIR/README.md")
    r.add_argument("--config", default=None, help="the config the run used (JSON or YAML)")
    r.add_argument("--tables", nargs="*", default=None,
                   help="table files or prefixes (default RUN_DIR/tables/*.csv)")
    r.add_argument("--figures", nargs="*", default=None,
                   help="figure PNG files or prefixes (default RUN_DIR/figures/*.png)")
    r.add_argument("--benchmarks", default=None, help="folder of Snakemake benchmark TSV files")
    return p


def default_kind(fig_id: str) -> str:
    if fig_id in CURVE_FIGURES:
        return "curves"
    if fig_id in STRIP_FIGURES:
        return "strip"
    if fig_id in GRID_FIGURES:
        return "denoised-grid"
    if fig_id in SAMPLE_FIGURES:
        return "samples"
    return "curvature"


def _one_input(args: argparse.Namespace, option: str, what: str) -> str:
    given = getattr(args, option.replace("-", "_"))
    paths = ([given] if given else []) + list(args.inputs)
    if len(paths) != 1:
        raise UserError(f"--figure {args.figure} needs exactly one {what} (--{option} or a "
                        f"positional path), got {len(paths)}")
    return str(paths[0])


def make_figure(args: argparse.Namespace) -> Any:
    fig_id = args.figure
    kind = args.kind or default_kind(fig_id)
    title = args.title
    if kind == "curves":
        if fig_id not in CURVE_FIGURES:
            raise UserError(f"--kind curves draws Figures 1, 4 and 5, not --figure {fig_id}")
        results = load_fid_results(args.inputs)
        if fig_id == "1":
            fig = plot_fid_vs_nfe(results, paper=args.paper_baselines)
        elif fig_id == "4":
            fig = plot_fid_vs_rho(results)
        else:
            if not args.tolerance >= 0:
                raise UserError(f"--tolerance must be >= 0, got {args.tolerance}")
            fig = plot_best_fid_vs_nfe(results, parse_rhos(args.rhos), args.tolerance)
        if title:
            fig.suptitle(title, fontsize=9)
        return fig
    if kind == "curvature":
        paths = ([args.diagnostics] if args.diagnostics else []) + list(args.inputs)
        if not paths:
            raise UserError(f"--figure {fig_id} needs diagnostics JSON files")
        fig = plot_curvature(paths)
        if title:
            fig.suptitle(title, fontsize=9)
        return fig
    if kind in ("strip", "denoised-grid"):
        path = _one_input(args, "diagnostics", "diagnostics npz")
        diag = load_diagnostics(Path(path).with_suffix(".npz") if path.endswith(".json") else path)
        if kind == "strip":
            if args.max_columns < 1:
                raise UserError(f"--max-columns must be positive, got {args.max_columns}")
            return plot_trajectory_strip(diag, args.seed_index, args.max_columns,
                                         title or _diag_title(fig_id, diag))
        if args.max_seeds < 1:
            raise UserError(f"--max-seeds must be positive, got {args.max_seeds}")
        return plot_denoised_grid(diag, args.step, args.max_seeds, title or _diag_title(fig_id, diag))
    path = _one_input(args, "samples", "sample-set npz")
    if args.count < 1 or args.columns < 1:
        raise UserError("--count and --columns must be positive")
    images, labels, meta = load_samples(path)
    return plot_sample_grid(images, labels, args.count, args.columns,
                            title or _samples_title(fig_id, meta))


def _diag_title(fig_id: str, diag: dict) -> str:
    base = FIGURE_TITLES.get(fig_id, "trajectory diagnostics")
    steps = diag["x0"][0].shape[1]
    return f"{base} ({' vs '.join(diag['names'])}, {steps} steps, same noise)"


def _samples_title(fig_id: str, meta: dict) -> str:
    model = meta.get("model", {}) if isinstance(meta, dict) else {}
    sampler = meta.get("sampler", {}) if isinstance(meta, dict) else {}
    parts = [FIGURE_TITLES[fig_id]]
    if model.get("name"):
        parts.append(f"{model['name']} ({kind_name(bool(model.get('aot')))}, "
                     f"{cond_name(bool(model.get('cond')))})")
    if sampler.get("key"):
        parts.append(f"{sampler['key']}, NFE {sampler.get('nfe', '?')}")
    return ": ".join(parts[:1]) + (" - " + ", ".join(parts[1:]) if len(parts) > 1 else "")


@cli_main
def main(argv: Sequence[str] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    args = _parser().parse_args(argv)
    if args.command == "table":
        rhos = parse_rhos(args.rhos)
        paths = write_table(args.table, load_fid_results(args.results), args.out_prefix, rhos)
    elif args.command == "figure":
        paths = save_figure(make_figure(args), args.out_prefix)
    else:
        paths = [write_readme(args.run_dir, args.out, args.config, args.tables, args.figures,
                              args.benchmarks)]
    for p in paths:
        print(f"wrote {p}")


if __name__ == "__main__":
    main()
