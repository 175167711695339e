"""The paper's Tables 1-5 as DataFrames, ours beside the published numbers.

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
  over the rho values in `rhos` (default the paper's 9,27,81,243); row "best rho" says which won.
Tables 4 and 5 have a `stat` column: rows "ours", "ours mean", "ours std", "n", ("best rho"),
"paper", "diff". Tables 1-3 have one row per entry with our min/mean/std/n, the paper value and
diff = ours - paper. With the offline feature network the difference is left out (empty `diff`,
no "diff" rows): the two metrics are not comparable.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import UserError
from ..keys import fmt
from .render import display_table, render_table, write_outputs
from .results import (
    OFFLINE_CAVEAT,
    as_aggregate,
    cond_name,
    is_default_sampler,
    is_offline,
    kind_name,
    models_per_kind,
    paper_table,
    plain_heun,
    single_feature_network,
    unguided,
    with_model,
)

DEFAULT_RHOS = (9.0, 27.0, 81.0, 243.0)
TABLE_TITLES = {
    1: "Table 1: unconditional models, ours (min of repeats) vs the paper",
    2: "Table 2: class-conditional models, ours (min of repeats) vs the paper",
    3: "Table 3: discriminator guidance with and without AOT in discriminator training",
    4: "Table 4: FID vs time-step exponent rho at 18, 14 and 8 Heun steps",
    5: "Table 5: best FID over rho vs NFE",
}
QUOTED_BASELINES = ("DDPM", "SGM", "PFGM", "LSGM", "PFGM++", "STF")


def diff(ours: Any, paper: Any) -> float:
    """ours - paper, NaN where either is missing."""
    try:
        o, p = float(ours), float(paper)
    except (TypeError, ValueError):
        return float("nan")
    return o - p if math.isfinite(o) and math.isfinite(p) else float("nan")


def col_value(col: str) -> float:
    """'rho=27' -> 27.0."""
    return float(col.split("=", 1)[1])


# ------------------------------------------------------------------------------------------------
# Tables 1 and 2


def table12_label(row: Any) -> str:
    if not row["aot"] and is_default_sampler(row):
        return "EDM"
    extras = [f"rho={fmt(row['rho'])}", f"{int(row['num_steps'])} steps"]
    if row["solver"] != "heun":
        extras.append(row["solver"])
    if row["S_churn"]:
        extras.append(f"churn={fmt(row['S_churn'])}")
    return f"{kind_name(bool(row['aot']))} ({', '.join(extras)})"


def _table12_entry(label: str, status: str, r: Any, p: Any) -> dict:
    ours = r["fid"] if r is not None else float("nan")
    pf = float(p["fid"]) if p is not None and pd.notna(p["fid"]) else float("nan")
    return {
        "model": label, "status": status,
        "nfe": int(r["nfe"]) if r is not None else (int(p["nfe"]) if p is not None else None),
        "fid": ours,
        "fid_mean": r["fid_mean"] if r is not None else float("nan"),
        "fid_std": r["fid_std"] if r is not None else float("nan"),
        "n": int(r["n"]) if r is not None else 0,
        "fid_paper": pf, "diff": diff(ours, pf),
        "nfe_paper": int(p["nfe"]) if p is not None else None,
        "model_name": r["model"] if r is not None else "",
        "sampler_key": r["sampler_key"] if r is not None else "",
    }


def build_table12(agg: pd.DataFrame, number: int) -> pd.DataFrame:
    """Table 1 (unconditional) or 2 (conditional): one row per model/setting, paper beside ours."""
    cond = number == 2
    paper = paper_table(number)
    df = unguided(agg)
    df = df[df["cond"] == cond] if len(df) else df
    models = models_per_kind(df) if len(df) else {}
    measured: list[dict] = []
    for _, r in df.iterrows():
        base = table12_label(r)
        measured.append({"base": base,
                         "label": with_model(base, r["model"], models[(bool(r["aot"]), cond)]),
                         "row": r})
    paper_by_label = {str(p["model"]): p for _, p in paper.iterrows()}
    rows = []
    used = set()
    for label, p in paper_by_label.items():
        if label in QUOTED_BASELINES:
            rows.append(_table12_entry(label, "quoted", None, p))
            continue
        hits = [m for m in measured if m["base"] == label]
        if not hits:
            rows.append(_table12_entry(label, "not measured", None, p))
        for m in hits:
            rows.append(_table12_entry(m["label"], "measured", m["row"], p))
            used.add(id(m))
    extra = [m for m in measured if id(m) not in used]
    extra.sort(key=lambda m: (bool(m["row"]["aot"]), int(m["row"]["nfe"]), float(m["row"]["rho"]),
                              m["label"]))
    for m in extra:
        rows.append(_table12_entry(m["label"], "measured", m["row"], None))
    out = pd.DataFrame(rows)
    out["nfe"] = out["nfe"].astype("Int64")
    out["nfe_paper"] = out["nfe_paper"].astype("Int64")
    out["n"] = out["n"].astype(int)
    return out


# ------------------------------------------------------------------------------------------------
# Table 3


def table3_label(aot: bool, guidance: str | None) -> str:
    if guidance is None:
        return f"{kind_name(aot)} w/o DG"
    if not aot:
        return "EDM+DG" if guidance == "plain" else "EDM + DG w/ AOT"
    return "EDM-AOT + DG w/ AOT" if guidance == "aot" else "EDM-AOT + DG w/o AOT"


def _row_table3_label(r: Any) -> str:
    return table3_label(bool(r["aot"]), r["guidance"] if isinstance(r["guidance"], str) else None)


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


def _table3_cell(agg: pd.DataFrame, label: str, cond: bool) -> Any:
    """The sample set of one Table 3 cell, None when none fits."""
    if not len(agg):
        return None
    sub = agg[agg["cond"] == cond]
    lab = sub.apply(_row_table3_label, axis=1) if len(sub) else pd.Series(dtype=object)
    cands = sub[lab == label] if len(sub) else sub
    if not len(cands):
        return None
    aot = bool(cands.iloc[0]["aot"])
    guided = sub[(sub["aot"] == aot) & sub["guidance"].notna()]
    return _pick_table3(cands, guided)


def build_table3(agg: pd.DataFrame) -> pd.DataFrame:
    paper = paper_table(3)
    labels = list(paper["model"])
    extra_labels = []
    for _, r in agg.iterrows():
        lab = _row_table3_label(r)
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
            r = _table3_cell(agg, label, cond)
            pf = float(p[f"fid_{c}"]) if p is not None and pd.notna(p[f"fid_{c}"]) else float("nan")
            ours = float(r["fid"]) if r is not None else float("nan")
            row.update({
                f"fid_{c}": ours,
                f"fid_{c}_mean": float(r["fid_mean"]) if r is not None else float("nan"),
                f"fid_{c}_std": float(r["fid_std"]) if r is not None else float("nan"),
                f"n_{c}": int(r["n"]) if r is not None else 0,
                f"fid_{c}_paper": pf, f"diff_{c}": diff(ours, pf),
                f"nfe_{c}": int(r["nfe"]) if r is not None else None,
                f"model_{c}": r["model"] if r is not None else "",
                f"sampler_{c}": r["sampler_key"] if r is not None else "",
            })
        rows.append(row)
    out = pd.DataFrame(rows)
    for col in ("nfe_paper", "nfe_uncond", "nfe_cond"):
        out[col] = out[col].astype("Int64")
    return out


# ------------------------------------------------------------------------------------------------
# Tables 4 and 5


def table4_label(aot: bool, num_steps: int, cond: bool) -> str:
    return f"{kind_name(aot)}, {int(num_steps)} steps, {cond_name(cond)}"


def table5_label(aot: bool, cond: bool) -> str:
    return f"{kind_name(aot)}, {cond_name(cond)}"


def _grid_table(paper: pd.DataFrame, cells: dict[str, dict[str, dict]], prefix: str,
                extra_stats: Sequence[str] = ()) -> pd.DataFrame:
    """Rows per setting x stat, columns `<prefix>=<value>` (paper's and measured, sorted)."""
    paper_cols = [c for c in paper.columns if c.startswith(prefix + "=")]
    values = {col_value(c) for c in paper_cols}
    for per_col in cells.values():
        values.update(col_value(c) for c in per_col)
    cols = [f"{prefix}={fmt(v)}" for v in sorted(values)]
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
                    row[col] = diff(cell["fid"] if cell else float("nan"), pv)
                else:
                    row[col] = float(cell[field[stat]]) if cell else float("nan")
            rows.append(row)
    return pd.DataFrame(rows, columns=["setting", "stat", *cols])


def build_table4(agg: pd.DataFrame) -> pd.DataFrame:
    df = plain_heun(agg)
    cells: dict[str, dict[str, dict]] = {}
    if len(df):
        models = models_per_kind(df)
        for _, r in df.iterrows():
            label = with_model(table4_label(bool(r["aot"]), r["num_steps"], bool(r["cond"])),
                               r["model"], models[(bool(r["aot"]), bool(r["cond"]))])
            cells.setdefault(label, {})[f"rho={fmt(r['rho'])}"] = r.to_dict()
    return _grid_table(paper_table(4), cells, "rho")


def best_over_rho(agg: pd.DataFrame, rhos: Sequence[float] | None = DEFAULT_RHOS) -> pd.DataFrame:
    """Per model and NFE, the sample set with the lowest FID among rho in `rhos` (None: all)."""
    df = plain_heun(agg)
    if not len(df):
        return df.assign(label=pd.Series(dtype=object))
    if rhos is not None:
        allowed = {float(r) for r in rhos}
        df = df[df["rho"].astype(float).isin(allowed)]
    if not len(df):
        return df.assign(label=pd.Series(dtype=object))
    models = models_per_kind(df)
    idx = df.groupby(["model", "nfe"])["fid"].idxmin()
    best = df.loc[idx.values].copy()
    best["label"] = [with_model(table5_label(bool(r["aot"]), bool(r["cond"])), r["model"],
                                models[(bool(r["aot"]), bool(r["cond"]))])
                     for _, r in best.iterrows()]
    return best.sort_values(["label", "nfe"], ignore_index=True)


def build_table5(agg: pd.DataFrame, rhos: Sequence[float] = DEFAULT_RHOS) -> pd.DataFrame:
    best = best_over_rho(agg, rhos)
    cells: dict[str, dict[str, dict]] = {}
    for _, r in best.iterrows():
        cells.setdefault(r["label"], {})[f"nfe={int(r['nfe'])}"] = r.to_dict()
    return _grid_table(paper_table(5), cells, "nfe", extra_stats=("best rho",))


# ------------------------------------------------------------------------------------------------
# One table: frames, notes, files


def table_notes(number: int, feature_network: str | None, rhos: Sequence[float]) -> list[str]:
    """The notes under a table: what is measured, what is quoted."""
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
        notes.append("Ours: best over rho in {" + ", ".join(fmt(r) for r in rhos) + "}.")
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
    feat = single_feature_network(agg)
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
        "rhos": ",".join(fmt(r) for r in rhos) if number == 5 else "",
        "notes": table_notes(number, feat, rhos),
    }
    disp = display_table(number, full, feat)
    if is_offline(feat):
        disp = disp[[c for c in disp.columns if not c.endswith("Δ")]]
    return full, disp, meta


def write_table(number: int, results: Any, out_prefix: str | os.PathLike,
                rhos: Sequence[float] = DEFAULT_RHOS) -> list[Path]:
    """Table `number` as `<prefix>.csv`, `.md` and `.tex`, all or none."""
    full, disp, meta = make_table(number, results, rhos)
    return write_outputs(out_prefix, render_table(number, full, disp, meta))
