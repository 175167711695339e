"""The paper's Tables 1-5 as DataFrames, ours beside the published numbers.

Row identity (labels are built to match the strings of the paper CSV files):
- Every EDM row of the paper is two rows of ours: "EDM (published network)" (a network imported
  from EDM's official pickle, model source `edm-pickle:...`; the paper's EDM numbers are its) and
  "EDM (retrained here, AOT off, same recipe)" (trained by this pipeline); both stand beside the
  paper's EDM value. Without a measured published network its row has status "not run (...)".
- Tables 1 (cond false) and 2 (cond true), unguided sample sets: the EDM rows are aot false with
  the default sampler (heun, 18 steps, rho 7, no churn); every other measured setting gets its own
  row, "EDM-AOT (rho=90, 14 steps)", "EDM (retrained here, AOT off, same recipe; rho=9, 8 steps)",
  with ", euler" / ", churn=X" appended where they apply. The paper value sits beside a row whose
  label matches; a row without one says "no published value". The literature baselines
  (DDPM, SGM, PFGM, LSGM, PFGM++, STF) are rows with status "quoted"; paper rows of ours that were
  not measured have status "not measured". Several model names of one kind get "[model-name]".
- Table 3: "<EDM> w/o DG", "<EDM> + DG" (guidance.aot false) for both EDM baselines, "EDM-AOT w/o
  DG", "EDM-AOT + DG w/o AOT", "EDM-AOT + DG w/ AOT"; columns uncond and cond. Where several
  sample sets fit one cell, the one with the sampler settings of the same model's guided runs
  wins, then the default sampler, then the lowest FID; the CSV records the chosen model and
  sampler key. An EDM model guided by an AOT discriminator gets the extra row "<EDM> + DG w/ AOT".
- Table 4: rows "<kind>, <n> steps, <uncond|cond>", columns "rho=<r>" (paper's and ours); the
  paper's "EDM, ..." rows stand beside both EDM baselines.
- Table 5: rows "<kind>, <uncond|cond>", columns "nfe=<k>"; the value is the best (min) FID
  over the rho values in `rhos` (the workflow passes sampling.table5.rho; None: every rho measured); row
  "best rho" says which won.
Tables 4 and 5 have a `stat` column: rows "ours", "ours mean", "ours std", "n", ("best rho"),
"paper", "diff". Tables 1-3 have one row per entry with our min/mean/std/n, the paper value and
diff = ours - paper. With the offline feature network the difference is left out (empty `diff`,
no "diff" rows): the two metrics are not comparable. For another dataset than CIFAR-10 (`dataset`)
the paper's rows stay, its numbers and the quoted baselines go: "no published value".
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
    NO_PUBLISHED_VALUE,
    OFFLINE_CAVEAT,
    PAPER_DATASET,
    PUBLISHED_EDM,
    RETRAINED_EDM,
    as_aggregate,
    cond_name,
    is_default_sampler,
    is_offline,
    kind_name,
    models_per_kind,
    paper_label,
    paper_table,
    plain_heun,
    single_feature_network,
    unguided,
    with_model,
)

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


def paper_values(number: int, dataset: str | None = PAPER_DATASET) -> pd.DataFrame:
    """The paper's table `number`: its rows and columns always, its numbers only for the paper's
    dataset (CIFAR-10); for another dataset every value is NaN (no published value) and the
    quoted literature baselines are left out."""
    paper = paper_table(number)
    if dataset in (None, PAPER_DATASET):
        return paper
    label_col = "model" if "model" in paper.columns else "setting"
    paper = paper[~paper[label_col].isin(QUOTED_BASELINES)].reset_index(drop=True)
    for col in paper.columns:
        if col != label_col:
            paper[col] = float("nan")
    return paper


def published_status(dataset: str | None) -> str:
    """Status of the "EDM (published network)" row when no sample set of it was measured."""
    if dataset not in (None, PAPER_DATASET):
        return f"not run (EDM publishes CIFAR-10 networks only; dataset {dataset})"
    return "not run (no tables.<part>.edm_published model)"


def row_kind(row: Any) -> str:
    return kind_name(bool(row["aot"]), bool(row.get("published", False)))


def with_settings(kind: str, extras: Sequence[str]) -> str:
    """'EDM-AOT' + settings -> 'EDM-AOT (rho=9, 8 steps)'; 'EDM (published network)' + settings ->
    'EDM (published network; rho=9, 8 steps)'."""
    text = ", ".join(extras)
    return f"{kind[:-1]}; {text})" if kind.endswith(")") else f"{kind} ({text})"


# ------------------------------------------------------------------------------------------------
# Tables 1 and 2


def table12_label(row: Any) -> str:
    if not row["aot"] and is_default_sampler(row):
        return row_kind(row)
    extras = [f"rho={fmt(row['rho'])}", f"{int(row['num_steps'])} steps"]
    if row["solver"] != "heun":
        extras.append(row["solver"])
    if row["S_churn"]:
        extras.append(f"churn={fmt(row['S_churn'])}")
    return with_settings(row_kind(row), extras)


def _table12_entry(label: str, status: str, r: Any, p: Any) -> dict:
    ours = r["fid"] if r is not None else float("nan")
    pf = float(p["fid"]) if p is not None and pd.notna(p["fid"]) else float("nan")
    pn = int(p["nfe"]) if p is not None and pd.notna(p["nfe"]) else None
    return {
        "model": label, "status": status,
        "nfe": int(r["nfe"]) if r is not None else pn,
        "fid": ours,
        "fid_mean": r["fid_mean"] if r is not None else float("nan"),
        "fid_std": r["fid_std"] if r is not None else float("nan"),
        "n": int(r["n"]) if r is not None else 0,
        "fid_paper": pf, "diff": diff(ours, pf),
        "nfe_paper": pn,
        "model_name": r["model"] if r is not None else "",
        "sampler_key": r["sampler_key"] if r is not None else "",
    }


def build_table12(agg: pd.DataFrame, number: int, dataset: str | None = PAPER_DATASET) -> pd.DataFrame:
    """Table 1 (unconditional) or 2 (conditional): one row per model/setting, paper beside ours.
    The paper's "EDM" row is two rows, EDM's published network and EDM retrained here, each
    beside the paper's number (which is the published network's)."""
    cond = number == 2
    paper = paper_values(number, dataset)
    df = unguided(agg)
    df = df[df["cond"] == cond] if len(df) else df
    models = models_per_kind(df) if len(df) else {}
    measured: list[dict] = []
    for _, r in df.iterrows():
        base = table12_label(r)
        measured.append({"base": base,
                         "label": with_model(base, r["model"], models[(row_kind(r), cond)]),
                         "row": r})
    paper_by_label = {str(p["model"]): p for _, p in paper.iterrows()}
    rows = []
    used = set()
    for label, p in paper_by_label.items():
        if label in QUOTED_BASELINES:
            rows.append(_table12_entry(label, "quoted", None, p))
            continue
        for want in (PUBLISHED_EDM, RETRAINED_EDM) if label == "EDM" else (label,):
            hits = [m for m in measured if m["base"] == want]
            if not hits:
                status = published_status(dataset) if want == PUBLISHED_EDM else "not measured"
                rows.append(_table12_entry(want, status, None, p))
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


def table3_label(aot: bool, guidance: str | None, published: bool = False) -> str:
    kind = kind_name(aot, published)
    if guidance is None:
        return f"{kind} w/o DG"
    if not aot:
        return f"{kind} + DG" if guidance == "plain" else f"{kind} + DG w/ AOT"
    return "EDM-AOT + DG w/ AOT" if guidance == "aot" else "EDM-AOT + DG w/o AOT"


# the paper's EDM rows of Table 3 -> ours: EDM's published network and EDM retrained here
TABLE3_EDM_ROWS = {
    "EDM w/o DG": [table3_label(False, None, True), table3_label(False, None, False)],
    "EDM+DG": [table3_label(False, "plain", True), table3_label(False, "plain", False)],
}


# How each of the paper's Table 3 values was measured: (protocol, where it comes from). "min3": the
# minimum over three 50k sets (EDM's protocol, as our `fid`); "single": one 50k set (as our
# `fid_single`, repeat 0 alone). DG measures with its fid_npzs.py on one random 50k set (it reports
# EDM at 2.03 / 1.82 that way, against EDM's 1.97 / 1.79); the EDM-AOT paper samples once.
ONE_SET, MIN_OF_THREE = "single", "min3"
TABLE3_PAPER_PROTOCOL = {
    "EDM w/o DG": (MIN_OF_THREE, "EDM's paper: min of 3 x 50k (EDM's fid.py)"),
    "EDM+DG": (ONE_SET, "DG's paper: one random 50k set (DG's fid_npzs.py)"),
    "EDM-AOT w/o DG": (ONE_SET, "this paper: one 50k set (sampled once)"),
    "EDM-AOT + DG w/o AOT": (ONE_SET, "this paper: one 50k set (sampled once)"),
    "EDM-AOT + DG w/ AOT": (ONE_SET, "this paper: one 50k set (sampled once)"),
}


def discriminator_text(training: Any) -> str:
    """A guided set's discriminator training (`sampler.guidance.training`) as the notes read it."""
    if not isinstance(training, dict) or not training:
        return ""
    if "batch" not in training:
        return f"imported ({training['source']})" if training.get("source") else ""
    pool, epochs = training.get("pool_size"), training.get("epoch")
    return (f"batch {training['batch']}, {epochs} epoch{'' if epochs == 1 else 's'}, lr {fmt(training.get('lr'))}, "
            f"weight decay {fmt(training.get('weight_decay'))}, "
            + (f"AOT pools of N = {pool}" if pool else "independent noise"))


def table3_notes(full: pd.DataFrame, compared: bool = True) -> list[str]:
    """Table 3's own notes: the two FID protocols and (`compared`: a Δ is shown) what Δ compares,
    the two discriminator recipes, and the training of each measured guided row's discriminator
    (from its results)."""
    notes = ["Ours: (ours, min) is the minimum over the repeats of a sample set (disjoint seed ranges, "
             "EDM's protocol); (ours, one set) is its repeat 0 alone (fid.num_images images, 50k at the "
             "paper's scale), the protocol of the paper's one-set values."
             + (" Δ compares like with like: one set against a one-set paper value, the minimum against "
                "a minimum of three (the paper protocol column)." if compared else ""),
             "Discriminators: the EDM+DG rows' trained as DG trains its released heads (dg.baseline.<part>; "
             "the paper config: DG's batch 128); EDM-AOT's, with and without AOT, with the paper's recipe "
             "(dg.<part>; batch = N = 512 unconditional, N = 2048 conditional), so that those two rows "
             "differ only in the pairing."]
    used: dict[str, list[str]] = {}
    for _, row in full.iterrows():
        for c in ("uncond", "cond"):
            text = row.get(f"discriminator_{c}", "")
            if isinstance(text, str) and text:
                used.setdefault(text, []).append(f"{row['model']} ({c})")
    for text, rows in used.items():
        notes.append(f"Discriminator {text}: {'; '.join(rows)}.")
    return notes


def table3_paper_label(label: str) -> str:
    """The paper's Table 3 row one of our labels stands beside (itself when none)."""
    for paper, ours in TABLE3_EDM_ROWS.items():
        if label in ours:
            return paper
    return label


def _row_table3_label(r: Any) -> str:
    return table3_label(bool(r["aot"]), r["guidance"] if isinstance(r["guidance"], str) else None,
                        bool(r.get("published", False)))


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
    kind = cands.iloc[0]["kind"]
    guided = sub[(sub["kind"] == kind) & sub["guidance"].notna()]
    return _pick_table3(cands, guided)


def build_table3(agg: pd.DataFrame, dataset: str | None = PAPER_DATASET) -> pd.DataFrame:
    paper = paper_values(3, dataset)
    labels = [ours for p in paper["model"] for ours in TABLE3_EDM_ROWS.get(p, [p])]
    extra_labels = []
    for _, r in agg.iterrows():
        lab = _row_table3_label(r)
        if lab not in labels and lab not in extra_labels:
            extra_labels.append(lab)
    rows = []
    for label in labels + extra_labels:
        p = paper[paper["model"] == table3_paper_label(label)]
        p = p.iloc[0] if len(p) else None
        quoted = p is not None and any(pd.notna(p[f"fid_{cond_name(c)}"]) for c in (False, True))
        protocol, source = TABLE3_PAPER_PROTOCOL.get(table3_paper_label(label), ("", "")) if quoted else ("", "")
        row: dict[str, Any] = {"model": label,
                               "nfe_paper": int(p["nfe"]) if p is not None and pd.notna(p["nfe"]) else None,
                               "paper_protocol": protocol, "paper_source": source}
        for cond in (False, True):
            c = cond_name(cond)
            r = _table3_cell(agg, label, cond)
            pf = float(p[f"fid_{c}"]) if p is not None and pd.notna(p[f"fid_{c}"]) else float("nan")
            ours = float(r["fid"]) if r is not None else float("nan")
            single = float(r.get("fid_rep0", float("nan"))) if r is not None else float("nan")
            row.update({
                f"fid_{c}": ours,
                f"fid_{c}_single": single,
                f"discriminator_{c}": discriminator_text(r.get("dg_training")) if r is not None else "",
                f"fid_{c}_mean": float(r["fid_mean"]) if r is not None else float("nan"),
                f"fid_{c}_std": float(r["fid_std"]) if r is not None else float("nan"),
                f"n_{c}": int(r["n"]) if r is not None else 0,
                f"fid_{c}_paper": pf, f"diff_{c}": diff(ours, pf), f"diff_{c}_single": diff(single, pf),
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


def table4_label(kind: str, num_steps: int, cond: bool) -> str:
    """`kind`: ours (`kind_name`) or the paper's (EDM, EDM-AOT)."""
    return f"{kind}, {int(num_steps)} steps, {cond_name(cond)}"


def table5_label(kind: str, cond: bool) -> str:
    return f"{kind}, {cond_name(cond)}"


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
    for label in paper_rows:  # our rows of the paper's setting (both EDM baselines, several
        ours = sorted(k for k in cells if paper_label(k) == label)  # models) replace the bare row
        labels += ours or [label]
    labels += sorted(k for k in cells if k not in labels)
    stats = ["ours", "ours mean", "ours std", "n", *extra_stats, "paper", "diff"]
    field = {"ours": "fid", "ours mean": "fid_mean", "ours std": "fid_std", "n": "n",
             "best rho": "rho"}
    rows = []
    for label in labels:
        p = paper_rows.get(paper_label(label))
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


def build_table4(agg: pd.DataFrame, dataset: str | None = PAPER_DATASET) -> pd.DataFrame:
    df = plain_heun(agg)
    cells: dict[str, dict[str, dict]] = {}
    if len(df):
        models = models_per_kind(df)
        for _, r in df.iterrows():
            label = with_model(table4_label(row_kind(r), r["num_steps"], bool(r["cond"])),
                               r["model"], models[(row_kind(r), bool(r["cond"]))])
            cells.setdefault(label, {})[f"rho={fmt(r['rho'])}"] = r.to_dict()
    return _grid_table(paper_values(4, dataset), cells, "rho")


def best_over_rho(agg: pd.DataFrame, rhos: Sequence[float] | None = None) -> pd.DataFrame:
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
    best["label"] = [with_model(table5_label(row_kind(r), bool(r["cond"])), r["model"],
                                models[(row_kind(r), bool(r["cond"]))])
                     for _, r in best.iterrows()]
    return best.sort_values(["label", "nfe"], ignore_index=True)


def build_table5(agg: pd.DataFrame, rhos: Sequence[float] | None = None,
                 dataset: str | None = PAPER_DATASET) -> pd.DataFrame:
    best = best_over_rho(agg, rhos)
    cells: dict[str, dict[str, dict]] = {}
    for _, r in best.iterrows():
        cells.setdefault(r["label"], {})[f"nfe={int(r['nfe'])}"] = r.to_dict()
    return _grid_table(paper_values(5, dataset), cells, "nfe", extra_stats=("best rho",))


# ------------------------------------------------------------------------------------------------
# One table: frames, notes, files


def table_notes(number: int, feature_network: str | None, rhos: Sequence[float] | None,
                dataset: str | None = PAPER_DATASET) -> list[str]:
    """The notes under a table: what is measured, what is quoted, which EDM each EDM row is."""
    notes = []
    published = dataset in (None, PAPER_DATASET)
    if is_offline(feature_network):
        notes.append(f"Ours: {OFFLINE_CAVEAT}.")
    elif feature_network:
        notes.append(f"Ours: FID with feature network {feature_network}, minimum over the repeats "
                     "of each sample set.")
    if number in (1, 2, 3):
        notes.append(f"{PUBLISHED_EDM}: EDM's official VP (DDPM++) network, imported from its "
                     "pickle; the paper's EDM numbers are this network's (batch 512). "
                     f"{RETRAINED_EDM}: EDM trained by this pipeline with the EDM-AOT models' "
                     "settings (batch, GPUs, duration) and independent noise; the paper has no "
                     "number of its own for it, its paper column repeats the published network's.")
    if not published:
        notes.append(f"The paper reports CIFAR-10 only: {NO_PUBLISHED_VALUE} for dataset {dataset}.")
    elif number in (1, 2):
        notes.append("Quoted: the paper column and the literature baselines ("
                     + ", ".join(QUOTED_BASELINES) + ") are quoted from the paper, not measured.")
    else:
        notes.append("Quoted: the paper rows/columns are quoted from the paper; empty cells were "
                     "not measured or are not stated in the paper.")
    if number == 5:
        notes.append("Ours: best over rho in {" + ", ".join(fmt(r) for r in rhos) + "}." if rhos is not None
                     else "Ours: best over every rho measured.")
    if is_offline(feature_network):
        notes.append("No difference column: the two metrics are not comparable.")
    elif published:
        notes.append("Δ = ours - paper.")
    if published and number == 3:
        notes.append("Paper: CIFAR-10, FID-50k; column Paper protocol says how each quoted value was "
                     "measured (one 50k set, or the minimum of three).")
    elif published:
        notes.append("Paper: CIFAR-10, FID-50k as published: the paper samples each setting once (one 50k "
                     "set); the EDM values it quotes from EDM's paper are EDM's minimum of three.")
    notes.append("Where the paper, the authors' code, EDM and DG disagree: docs/fidelity.md.")
    return notes


def _raw_fid_results(results: Any) -> list[tuple[str, dict]]:
    """(file, JSON object) of every FID result among `results` (dicts, files, folders, records of
    `load_fid_results`, whose files are read again for the guidance details); aggregate frames
    carry no seeds and are left out."""
    from ..files import read_json

    if isinstance(results, pd.DataFrame):
        return []
    out = []
    for i, item in enumerate(list(results or [])):
        if isinstance(item, dict) and "file" in item and "sampler_key" in item:  # a parsed record
            if not Path(str(item["file"])).is_file():
                continue
            item = item["file"]
        elif isinstance(item, dict):
            out.append((f"<result {i}>", item))
            continue
        p = Path(item)
        for path in sorted(p.rglob("*.json")) if p.is_dir() else [p]:
            obj = read_json(path, "FID result")
            if isinstance(obj, dict) and obj.get("kind", "fid") == "fid":
                out.append((str(path), obj))
    return out


def check_guided_seeds(results: Any) -> None:
    """Table 3's guided sample sets must not start from the noise of images their discriminator
    was trained on: a guided FID result whose seed range overlaps the discriminator's training
    seeds (`sampler.guidance.train_seeds`, recorded from the discriminator's meta; DG's released
    heads have none) is an error naming both. (Overlapping repeats of one set are refused when the
    repeats are combined, `results.check_repeats`.)"""
    from .results import parse_fid_result

    for path, obj in _raw_fid_results(results):
        sampler = obj.get("sampler")
        guidance = sampler.get("guidance") if isinstance(sampler, dict) else None
        if not isinstance(guidance, dict) or guidance.get("train_seeds") is None:
            continue
        rec = parse_fid_result(obj, path)
        train = guidance["train_seeds"]
        if (not isinstance(train, (list, tuple)) or len(train) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in train) or train[1] < train[0]):
            raise UserError(f"FID result {path}: 'sampler.guidance.train_seeds' must be [first, last], got {train!r}")
        seeds = rec["seeds"]
        if seeds is not None and seeds[0] <= train[1] and train[0] <= seeds[1]:
            raise UserError(
                f"FID result {path}: the guided sample set of model {rec['model']} ({rec['sampler_key']}, "
                f"seeds {seeds[0]}-{seeds[1]}) overlaps the seeds {train[0]}-{train[1]} its discriminator "
                f"{guidance.get('discriminator', '')} was trained on; guided sets need other seeds "
                "(the workflow's guided_seeds())")


def make_table(number: int, results: Any, rhos: Sequence[float] | None = None,
               dataset: str | None = PAPER_DATASET) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(full table for CSV, display table for Markdown/LaTeX, metadata) of table `number`;
    `dataset`: the run's dataset (the paper's numbers are CIFAR-10's)."""
    if number == 3:
        check_guided_seeds(results)
    agg = as_aggregate(results)
    feat = single_feature_network(agg)
    if number in (1, 2):
        full = build_table12(agg, number, dataset)
    elif number == 3:
        full = build_table3(agg, dataset)
    elif number == 4:
        full = build_table4(agg, dataset)
    elif number == 5:
        full = build_table5(agg, rhos, dataset)
    else:
        raise UserError(f"--table must be 1-5, got {number}")
    if is_offline(feat):  # a difference between incomparable metrics would mislead
        for col in [c for c in full.columns if c.startswith("diff")]:
            full[col] = float("nan")
        if "stat" in full.columns:
            full = full[full["stat"] != "diff"].reset_index(drop=True)
    notes = table_notes(number, feat, rhos, dataset)
    if number == 3:  # before the pointer to docs/fidelity.md
        notes[-1:-1] = table3_notes(full, compared=not is_offline(feat) and dataset in (None, PAPER_DATASET))
    meta = {
        "table": number, "title": TABLE_TITLES[number], "feature_network": feat or "",
        "metric": OFFLINE_CAVEAT if is_offline(feat) else ("FID" if feat else ""),
        "sample_sets": int(len(agg)), "measurements": int(agg["n"].sum()) if len(agg) else 0,
        "rhos": (",".join(fmt(r) for r in rhos) if rhos is not None else "all") if number == 5 else "",
        "dataset": dataset or "",
        "notes": notes,
    }
    disp = display_table(number, full, feat)
    if is_offline(feat):
        disp = disp[[c for c in disp.columns if not c.endswith("Δ")]]
    return full, disp, meta


def write_table(number: int, results: Any, out_prefix: str | os.PathLike,
                rhos: Sequence[float] | None = None, dataset: str | None = PAPER_DATASET) -> list[Path]:
    """Table `number` as `<prefix>.csv`, `.md` and `.tex`, all or none."""
    full, disp, meta = make_table(number, results, rhos, dataset)
    return write_outputs(out_prefix, render_table(number, full, disp, meta))
