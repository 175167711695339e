"""Table 6 and its figure: the pool-size study (beyond the paper).

For a fixed per-GPU batch B, EDM-AOT models trained with pools of N = B (pairing within each
minibatch only) up to large N, and one model without AOT per part. Per model, from its training
folder (`training_options.json`, `stats.jsonl` of `aot train`), its FID results and the trajectory
diagnostics of its part:

- paired_cost, random_cost: the mean cost (L2 by default) of the served image/noise pairs and of
  the same pairs in drawn order (independent noise), averaged over every pool of the run (the
  tick records of stats.jsonl, weighted by their pool counts); cost_ratio = paired / random.
- curvature: `aot diagnostics`' curvature (mean distance of the denoised estimate to the final
  sample, per dimension) at the diagnostics sampler.
- fid_nfe<k>, rho_nfe<k>: the best (min over `rhos`) FID at NFE k, each the minimum over the
  repeats of its sample set, and the rho that gave it.
- sec_per_kimg: the median of the tick records' seconds per kimg, the first tick (start-up)
  left out when there are more; sec_per_kimg_noaot: that of the part's model without AOT;
  aot_time_ratio = sec_per_kimg / sec_per_kimg_noaot. pairing_ms, wait_ms: the mean time per
  pool of the cost matrix and solver, and of the training thread's wait for the pool;
  stall_share: that wait's share of the training time.

Files: `<prefix>.csv` (every number, `# key: value` header lines as the other tables), `.md` (the
table, notes and one paragraph made from the numbers), `.tex`; the figure (`plot_pool_study`)
draws each quantity against N on a log axis.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import UserError
from ..files import parse_json, read_json
from ..keys import fmt
from .render import fmt_value, new_figure, save_figure, to_latex, to_markdown, write_outputs
from .results import OFFLINE_CAVEAT, as_aggregate, cond_name, is_offline, plain_heun, single_feature_network

TITLE = "Table 6: pool size N of AOT at a fixed per-GPU batch B (beyond the paper)"
FIGURE_TITLE = "Pool-size study: pairing cost, curvature, FID and training time against N"
COLUMNS = ["part", "model", "aot", "N", "B", "duration_mimg", "kimg", "paired_cost", "random_cost",
           "cost_ratio", "curvature", "path_deviation", "sec_per_kimg", "sec_per_kimg_noaot",
           "aot_time_ratio", "pairing_ms", "wait_ms", "stall_share"]


# ------------------------------------------------------------------------------------------------
# Inputs


def load_training_run(folder: str | os.PathLike) -> dict:
    """The settings and per-pool statistics of one `aot train` folder."""
    folder = Path(folder)
    options = read_json(folder / "training_options.json", "training options")
    stats_path = folder / "stats.jsonl"
    if not stats_path.is_file():
        raise UserError(f"training statistics {stats_path} do not exist (train the model first)")
    ticks = []
    for i, line in enumerate(stats_path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        rec = parse_json(line, f"training statistics {stats_path}, line {i}:", invalid="not JSON")
        if not isinstance(rec, dict):
            raise UserError(f"training statistics {stats_path}, line {i}: not a JSON object")
        ticks.append(rec)
    for key in ("model_name", "aot", "cond", "pool_size", "batch_gpu", "duration"):
        if key not in options:
            raise UserError(f"training options {folder / 'training_options.json'}: missing key '{key}'")
    return {"model": str(options["model_name"]), "aot": bool(options["aot"]), "cond": bool(options["cond"]),
            "N": int(options["pool_size"]), "B": int(options["batch_gpu"]),
            "duration_mimg": float(options["duration"]), **summarize_ticks(ticks)}


def _num(rec: dict, key: str) -> float | None:
    v = rec.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def summarize_ticks(ticks: Sequence[dict]) -> dict:
    """Pool-weighted means of the pairing statistics and the median seconds per kimg. The first
    tick (start-up: its first pool is built before training can overlap it) is left out of the
    seconds per kimg, the wait and the stall share when later ticks have them."""
    out: dict[str, Any] = {"kimg": max((_num(t, "kimg") or 0.0 for t in ticks), default=float("nan"))}
    later = list(ticks[1:])
    weighted = {"paired_cost": "paired_cost", "random_cost": "random_cost", "pairing_ms": "pairing_s",
                "wait_ms": "wait_s"}
    for name, key in weighted.items():
        use = later if name == "wait_ms" and any(_num(t, "pools") for t in later) else ticks
        num = den = 0.0
        for t in use:
            v, w = _num(t, key), _num(t, "pools")
            if v is not None and w:
                num, den = num + v * w, den + w
        scale = 1e3 if name.endswith("_ms") else 1.0
        out[name] = num / den * scale if den else float("nan")
    use = later if any(_num(t, "sec_per_kimg") is not None for t in later) else list(ticks)
    secs = [s for t in use if (s := _num(t, "sec_per_kimg")) is not None]
    out["sec_per_kimg"] = statistics.median(secs) if secs else float("nan")
    total = sum(_num(t, "sec_per_kimg") or 0.0 for t in use)
    waits = sum((_num(t, "stall_share") or 0.0) * (_num(t, "sec_per_kimg") or 0.0) for t in use)
    out["stall_share"] = waits / total if total else float("nan")
    return out


def load_diagnostics(paths: Sequence[str | os.PathLike]) -> dict[str, dict]:
    """Model name -> its curvature numbers, from `aot diagnostics` JSON files."""
    out: dict[str, dict] = {}
    for p in paths:
        obj = read_json(p, "diagnostics")
        models = obj.get("models") if isinstance(obj, dict) else None
        if not isinstance(models, list):
            raise UserError(f"diagnostics {p}: missing list 'models'")
        for m in models:
            if not isinstance(m, dict) or "name" not in m or "curvature" not in m:
                raise UserError(f"diagnostics {p}: every model needs 'name' and 'curvature'")
            out[str(m["name"])] = {"curvature": float(m["curvature"]),
                                   "path_deviation": float(m.get("path_deviation", float("nan")))}
    return out


# ------------------------------------------------------------------------------------------------
# The table


def best_fid(agg: pd.DataFrame, model: str, nfe: int, rhos: Sequence[float]) -> tuple[float, float, int]:
    """(best FID over `rhos` at this NFE, its rho, its repeats) of one model; NaNs when unmeasured."""
    df = agg[(agg["model"] == model) & (agg["nfe"] == nfe)] if len(agg) else agg
    if len(df):
        if rhos is not None:
            df = df[df["rho"].map(lambda r: any(math.isclose(r, x) for x in rhos))]
    if not len(df):
        return float("nan"), float("nan"), 0
    row = df.loc[df["fid"].idxmin()]
    return float(row["fid"]), float(row["rho"]), int(row["n"])


def build_table6(runs: Sequence[dict], fid_results: Any, diagnostics: dict[str, dict],
                 nfe: Sequence[int], rhos: Sequence[float]) -> tuple[pd.DataFrame, str | None]:
    """One row per study model (parts in order uncond, cond; the model without AOT first, then N
    ascending) and the feature network of the FID results."""
    agg = plain_heun(as_aggregate(fid_results))
    feat = single_feature_network(agg)
    rows = []
    for r in runs:
        part = cond_name(r["cond"])
        d = diagnostics.get(r["model"], {})
        row = {"part": part, "model": r["model"], "aot": r["aot"], "N": r["N"] if r["aot"] else None,
               "B": r["B"], "duration_mimg": r["duration_mimg"], "kimg": r["kimg"],
               "paired_cost": r["paired_cost"], "random_cost": r["random_cost"],
               "cost_ratio": r["paired_cost"] / r["random_cost"] if r["random_cost"] else float("nan"),
               "curvature": d.get("curvature", float("nan")),
               "path_deviation": d.get("path_deviation", float("nan")),
               "sec_per_kimg": r["sec_per_kimg"], "pairing_ms": r["pairing_ms"], "wait_ms": r["wait_ms"],
               "stall_share": r["stall_share"]}
        for k in nfe:
            row[f"fid_nfe{k}"], row[f"rho_nfe{k}"], row[f"n_nfe{k}"] = best_fid(agg, r["model"], k, rhos)
        rows.append(row)
    cols = COLUMNS + [f"{s}_nfe{k}" for k in nfe for s in ("fid", "rho", "n")]
    df = pd.DataFrame(rows, columns=cols)
    if not len(df):
        return df, feat
    for part in set(df["part"]):
        base = df[(df["part"] == part) & ~df["aot"].astype(bool)]["sec_per_kimg"]
        ref = float(base.iloc[0]) if len(base) else float("nan")
        sel = df["part"] == part
        df.loc[sel, "sec_per_kimg_noaot"] = ref
        df.loc[sel, "aot_time_ratio"] = df.loc[sel, "sec_per_kimg"] / ref if ref else float("nan")
    order = {"uncond": 0, "cond": 1}
    df["_o"] = df["part"].map(order)
    df["_n"] = df["N"].fillna(-1)
    df = df.sort_values(["_o", "_n"], ignore_index=True).drop(columns=["_o", "_n"])
    return df, feat


def fmt_digits(v: Any, digits: int) -> str:
    """A cell with a fixed number of decimals (empty for NaN): curvature and cost ratios differ
    in the third or fourth decimal."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return ""
    return f"{f:.{digits}f}" if math.isfinite(f) else ""


def n_label(row: Any) -> str:
    if not row["aot"] or pd.isna(row["N"]):
        return "no AOT"
    n = int(row["N"])
    return f"{n} (= B)" if n == int(row["B"]) else str(n)


def display_table6(df: pd.DataFrame, nfe: Sequence[int], feature_network: str | None) -> pd.DataFrame:
    metric = "FD" if is_offline(feature_network) else "FID"
    aot = list(df["aot"].astype(bool))
    out: dict[str, list] = {
        "Part": list(df["part"]), "N": [n_label(r) for _, r in df.iterrows()],
        "L2 paired": [fmt_value(v) if a else "" for v, a in zip(df["paired_cost"], aot)],
        "L2 random": list(df["random_cost"].map(fmt_value)),
        "paired/random": [fmt_digits(v, 3) if a else "" for v, a in zip(df["cost_ratio"], aot)],
        "curvature": [fmt_digits(v, 4) for v in df["curvature"]],
    }
    for k in nfe:
        out[f"{metric} NFE {k}"] = list(df[f"fid_nfe{k}"].map(fmt_value))
        out[f"ρ NFE {k}"] = ["" if pd.isna(v) else fmt(v) for v in df[f"rho_nfe{k}"]]
    out["s/kimg"] = list(df["sec_per_kimg"].map(fmt_value))
    out["s/kimg no AOT"] = list(df["sec_per_kimg_noaot"].map(fmt_value))
    out["wait ms/pool"] = [fmt_value(v) if a else "" for v, a in zip(df["wait_ms"], aot)]
    return pd.DataFrame(out)


# ------------------------------------------------------------------------------------------------
# The paragraph


def _pct(a: float, b: float) -> str:
    return f"{100 * (a / b - 1):+.0f} %" if b and math.isfinite(a) and math.isfinite(b) else "n/a"


def summary_paragraph(df: pd.DataFrame, nfe: Sequence[int], feature_network: str | None) -> str:
    """One paragraph per run, made from the table's numbers only."""
    metric = "FD (offline features)" if is_offline(feature_network) else "FID"
    parts = []
    for part in dict.fromkeys(df["part"]):
        sub = df[df["part"] == part]
        aot = sub[sub["aot"].astype(bool)].sort_values("N")
        base = sub[~sub["aot"].astype(bool)]
        if len(aot) < 1:
            continue
        lo, hi = aot.iloc[0], aot.iloc[-1]
        name = "unconditional" if part == "uncond" else "class-conditional (class-wise pools)"
        s = (f"For the {name} models, going from N = {int(lo['N'])} to N = {int(hi['N'])} changes the mean "
             f"paired L2 cost from {fmt_value(lo['paired_cost'])} to {fmt_value(hi['paired_cost'])} "
             f"({fmt_digits(lo['cost_ratio'], 3)} to {fmt_digits(hi['cost_ratio'], 3)} of random pairing, "
             f"{fmt_value(hi['random_cost'])}) and the trajectory curvature from "
             f"{fmt_digits(lo['curvature'], 4)} to {fmt_digits(hi['curvature'], 4)}")
        if len(base):
            s += f" (without AOT: {fmt_digits(base.iloc[0]['curvature'], 4)})"
        fids = []
        for k in nfe:
            a, b = lo[f"fid_nfe{k}"], hi[f"fid_nfe{k}"]
            if math.isfinite(a) or math.isfinite(b):
                t = f"{fmt_value(a)} to {fmt_value(b)} at NFE {k}"
                if len(base) and math.isfinite(base.iloc[0][f"fid_nfe{k}"]):
                    t += f" (without AOT {fmt_value(base.iloc[0][f'fid_nfe{k}'])})"
                fids.append(t)
        if fids:
            s += f"; the best {metric} over rho goes from " + ", ".join(fids)
        s += (f". Training took {fmt_value(hi['sec_per_kimg'])} s/kimg at N = {int(hi['N'])} against "
              f"{fmt_value(lo['sec_per_kimg'])} at N = {int(lo['N'])}")
        if len(base):
            s += (f" and {fmt_value(base.iloc[0]['sec_per_kimg'])} without AOT "
                  f"({_pct(hi['sec_per_kimg'], base.iloc[0]['sec_per_kimg'])} at the largest N)")
        s += (f"; building a pool of {int(hi['N'])} took {fmt_value(hi['pairing_ms'])} ms of pairing, "
              f"and the training thread waited {fmt_value(hi['wait_ms'])} ms per pool for it.")
        parts.append(s)
    if not parts:
        return "No EDM-AOT model of the study was measured in this run."
    return " ".join(parts)


# ------------------------------------------------------------------------------------------------
# Files


def render_table6(df: pd.DataFrame, nfe: Sequence[int], rhos: Sequence[float],
                  feature_network: str | None) -> dict[str, str]:
    disp = display_table6(df, nfe, feature_network)
    durations = sorted({fmt(v) for v in df["duration_mimg"].dropna()}) if len(df) else []
    B = sorted({int(v) for v in df["B"].dropna()}) if len(df) else []
    notes = [f"Per-GPU batch B = {', '.join(map(str, B)) or 'n/a'}; training {', '.join(durations) or 'n/a'} "
             "Mimg per model (the paper trains 200 Mimg).",
             "L2 paired / random: mean distance of the served image-noise pairs and of the same pairs "
             "in drawn order (independent noise), over every pool of the training run.",
             (f"Best over rho in {{{', '.join(fmt(r) for r in rhos)}}}" if rhos is not None else "Best over every rho")
             + " at each NFE (ρ: the rho that won); "
             "each value is the minimum over the repeats of its sample set.",
             "Curvature: mean distance of the denoised estimate to the final sample (aot diagnostics).",
             "s/kimg: median over the training ticks (the first left out); s/kimg no AOT: the part's "
             "model without AOT; wait: the training thread's wait for a pool (background building)."]
    if is_offline(feature_network):
        notes.insert(0, f"Ours = {OFFLINE_CAVEAT}.")
    paragraph = summary_paragraph(df, nfe, feature_network)
    meta = {"table": 6, "title": TITLE, "feature_network": feature_network or "",
            "metric": "FD-offline" if is_offline(feature_network) else "FID",
            "sample_sets": int(sum((df[f"n_nfe{k}"] > 0).sum() for k in nfe)) if len(df) else 0,
            "measurements": int(sum(df[f"n_nfe{k}"].sum() for k in nfe)) if len(df) else 0,
            "rhos": ",".join(fmt(r) for r in rhos) if rhos is not None else "all", "nfe": ",".join(map(str, nfe))}
    head = [f"# {k}: {v}" for k, v in meta.items() if v not in ("", None)]
    csv = "\n".join(head) + "\n" + df.to_csv(index=False, float_format="%.6g")
    md = [f"**{TITLE}**", "", to_markdown(disp).rstrip("\n"), ""]
    md += [f"- {n}" for n in notes]
    md += ["", paragraph]
    tex = to_latex(disp, TITLE, "tab:table6", notes + [paragraph])
    return {"csv": csv, "md": "\n".join(md) + "\n", "tex": tex}


def plot_pool_study(df: pd.DataFrame, nfe: Sequence[int], feature_network: str | None) -> Any:
    """Each quantity against N (log axis), one line per part; the models without AOT as dashed
    horizontal lines."""
    panels = [("cost_ratio", "L2 paired / random"), ("curvature", "curvature")]
    panels += [(f"fid_nfe{k}", f"{'FD' if is_offline(feature_network) else 'FID'} at NFE {k} (best rho)")
               for k in nfe]
    panels += [("sec_per_kimg", "seconds per kimg"), ("wait_ms", "wait for a pool, ms")]
    from matplotlib.ticker import NullLocator

    ncols = 3
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = new_figure(nrows, ncols, size=(4.0, 3.0))
    colors = {"uncond": "tab:orange", "cond": "tab:green"}
    for i, (col, label) in enumerate(panels):
        ax = axes[i // ncols][i % ncols]
        for part in dict.fromkeys(df["part"]):
            sub = df[df["part"] == part]
            aot = sub[sub["aot"].astype(bool)].sort_values("N")
            ax.plot(aot["N"].astype(float), aot[col].astype(float), "o-", color=colors.get(part), label=part)
            base = sub[~sub["aot"].astype(bool)]
            if len(base) and col not in ("cost_ratio", "wait_ms") and math.isfinite(float(base.iloc[0][col])):
                ax.axhline(float(base.iloc[0][col]), ls="--", color=colors.get(part), lw=1,
                           label=f"{part}, no AOT")
        ns = sorted({float(n) for n in df["N"].dropna()})
        if not df[col].astype(float).map(math.isfinite).any():
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="0.5")
        ax.set_xscale("log", base=2)
        if ns:
            ax.set_xlim(ns[0] / 1.5, ns[-1] * 1.5)
            ax.set_xticks(ns, [f"{n:g}" for n in ns])
            ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("pool size N (log axis)")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    for i in range(len(panels), nrows * ncols):
        axes[i // ncols][i % ncols].set_axis_off()
    title = FIGURE_TITLE + (f"\n(ours: {OFFLINE_CAVEAT})" if is_offline(feature_network) else "")
    fig.suptitle(title, fontsize=9)
    return fig


def write_pool_study(out_prefix: str | os.PathLike, train_dirs: Sequence[str | os.PathLike],
                     fid_paths: Sequence[str | os.PathLike], diagnostics: Sequence[str | os.PathLike],
                     nfe: Sequence[int], rhos: Sequence[float],
                     figure_prefix: str | os.PathLike | None = None) -> list[Path]:
    """Table 6 (CSV, Markdown, LaTeX) and, with `figure_prefix`, its figure (PNG, PDF). Every
    input is read and checked before anything is written."""
    if not train_dirs:
        raise UserError("the pool-size study needs at least one --train-dir")
    runs = [load_training_run(d) for d in train_dirs]
    names = [r["model"] for r in runs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"--train-dir: model {', '.join(dup)} given twice")
    df, feat = build_table6(runs, list(fid_paths), load_diagnostics(diagnostics), nfe, rhos)
    texts = render_table6(df, nfe, rhos, feat)
    fig = plot_pool_study(df, nfe, feat) if figure_prefix else None
    paths = write_outputs(out_prefix, texts)
    if fig is not None:
        paths += save_figure(fig, figure_prefix)
    return paths
