"""Curve figures: FID against NFE and rho (Figures 1, 4, 5) and trajectory curvature.

Figure 1: FID vs NFE, one panel per part (unconditional, conditional) of the results: our curves
(best FID over every measured rho at each NFE), the paper's curves from Table 5 and the quoted
baselines of Tables 1-2 as points. Figure 4: FID vs rho at 18, 14 and 8 steps (log x). Figure 5:
best FID over `rhos` vs NFE with the minimal-step optimum marked: the fewest steps among the FIDs
that tie with the curve's lowest once rounded to `decimals` (the paper's two). Our curves are
labelled by `kind_name`: EDM-AOT, "EDM (published network)" (EDM's official pickle) and "EDM
(retrained here, AOT off, same recipe)"; the paper's as EDM, EDM-AOT.
Curvature: distance of the denoised estimate to the final sample over sigma, from the diagnostics
JSON of `aot diagnostics`, one panel per file.

With the offline feature network the paper's values go on their own axis (the metrics differ) and
the figure carries `OFFLINE_CAVEAT`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import UserError
from ..files import read_json
from ..keys import fmt
from .render import new_figure
from .results import (
    OFFLINE_CAVEAT,
    PUBLISHED_EDM,
    RETRAINED_EDM,
    as_aggregate,
    cond_name,
    is_offline,
    is_published_source,
    kind_name,
    paper_kind,
    paper_table,
    plain_heun,
    single_feature_network,
)
from .tables import QUOTED_BASELINES, best_over_rho, col_value, table4_label, table5_label

PAPER_DECIMALS = 2  # the paper prints FIDs to two decimals
COLORS = {"EDM": "tab:blue", RETRAINED_EDM: "tab:blue", PUBLISHED_EDM: "tab:green", "EDM-AOT": "tab:orange"}
OUR_KINDS = (PUBLISHED_EDM, RETRAINED_EDM, "EDM-AOT")


def _paper_axis(ax: Any, comparable: bool) -> Any:
    """The axis the paper's values go on: the same one, or a twin when the metrics differ."""
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


def _legend(ax: Any, pax: Any, fontsize: float) -> None:
    """One legend for our curves and the paper's (which may sit on a twin axis)."""
    handles, labels = ax.get_legend_handles_labels()
    if pax is not ax:
        h2, l2 = pax.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if handles:
        ax.legend(handles, labels, fontsize=fontsize)


def _caveat(fig: Any, feat: str | None) -> None:
    if is_offline(feat):
        import textwrap

        width = max(40, int(fig.get_figwidth() * 14))
        fig.suptitle(textwrap.fill(OFFLINE_CAVEAT, width), fontsize=8)


def minimal_step_optimum(nfes: Sequence[float], fids: Sequence[float],
                         decimals: int = PAPER_DECIMALS) -> tuple[float, float] | None:
    """(NFE, FID) of the fewest steps whose FID, rounded to `decimals` (the paper's two), equals
    the curve's lowest rounded FID: FIDs that the paper would print alike are a tie, and the
    tie goes to the fewest steps. None for a curve without a finite FID."""
    pts = sorted((float(n), float(f)) for n, f in zip(nfes, fids) if np.isfinite(f))
    if not pts:
        return None
    best = min(round(f, decimals) for _, f in pts)
    return next((n, f) for n, f in pts if round(f, decimals) == best)


def _paper_rows(number: int) -> pd.DataFrame:
    return paper_table(number).set_index("setting")


def _quoted_baselines(pax: Any, cond: bool) -> None:
    """The literature baselines of Table 1 or 2 as labelled points."""
    pt = paper_table(2 if cond else 1)
    seen: dict[float, int] = {}
    for _, r in pt[pt["model"].isin(QUOTED_BASELINES)].iterrows():
        k = seen[r["nfe"]] = seen.get(r["nfe"], -1) + 1  # stack labels at one NFE
        pax.plot([r["nfe"]], [r["fid"]], "s", color="0.35", ms=5)
        pax.annotate(r["model"], (r["nfe"], r["fid"]), textcoords="offset points",
                     xytext=(4, 3 + 9 * k), fontsize=7, color="0.3")


def _our_nfe_curves(ax: Any, best: pd.DataFrame, label: str, color: str, decimals: int | None = None) -> None:
    """Our curves of one kind (the rows of `best_over_rho` whose label starts with `label`), the
    minimal-step optimum (at `decimals`) starred when `decimals` is given."""
    sub = best[best["label"].str.startswith(label)] if len(best) else best
    for lab, s in (sub.groupby("label") if len(sub) else []):
        s = s.sort_values("nfe")
        ax.plot(s["nfe"], s["fid"], "o-", color=color, label=f"{lab} (ours)")
        opt = minimal_step_optimum(s["nfe"], s["fid"], decimals) if decimals is not None else None
        if opt:
            ax.plot([opt[0]], [opt[1]], "*", color=color, ms=16, mec="k", label=f"optimum: {optimum_text(opt[0])}")


def optimum_text(nfe: float) -> str:
    """'14 steps (NFE 27)': Heun's steps from its NFE (2 x steps - 1)."""
    return f"{(int(nfe) + 1) // 2} steps (NFE {nfe:g})"


def plot_fid_vs_nfe(results: Any, paper: bool = True) -> Any:
    """Figure 1: our best FID at each NFE (any rho) per model, paper curves and quoted baselines.

    One panel per part (unconditional, conditional) present in the results, both when there are
    none; each with our EDM baselines (EDM's published network, EDM retrained here) and EDM-AOT,
    the paper's EDM and EDM-AOT curves (Table 5) and the baselines Table 1 or 2 quotes.
    """
    agg = as_aggregate(results)
    feat = single_feature_network(agg)
    best = best_over_rho(agg, None)
    paper5 = _paper_rows(5)
    conds = sorted({bool(c) for c in best["cond"]}) if len(best) else [False, True]
    fig, axes = new_figure(1, len(conds))
    for ax, cond in zip(axes[0], conds):
        pax = _paper_axis(ax, not is_offline(feat))
        for kind in OUR_KINDS:
            _our_nfe_curves(ax, best, table5_label(kind, cond), COLORS[kind])
        for aot in (False, True):
            kind = paper_kind(aot)
            label = table5_label(kind, cond)
            if paper and label in paper5.index:
                row = paper5.loc[label]
                xs = [col_value(c) for c in row.index]
                pax.plot(xs, row.values.astype(float), "x--", color=COLORS[kind], alpha=0.6,
                         label=f"{label} (paper)")
        if paper:
            _quoted_baselines(pax, cond)
        _log_axis(ax, "x")
        for a in {ax, pax}:
            _log_axis(a, "y")
        ax.set_xlabel("NFE")
        ax.set_ylabel(_ylabel(feat))
        ax.set_title(f"{cond_name(cond)}itional" if cond else "unconditional")
        _legend(ax, pax, 7)
    _caveat(fig, feat)
    return fig


def plot_fid_vs_rho(results: Any, steps: Sequence[int] = (18, 14, 8)) -> Any:
    """Figure 4: FID vs rho (log x) at each number of steps, ours solid, paper dashed."""
    agg = as_aggregate(results)
    feat = single_feature_network(agg)
    df = plain_heun(agg)
    steps = list(steps) + sorted({int(s) for s in (df["num_steps"] if len(df) else [])} - set(steps))
    paper4 = _paper_rows(4)
    fig, axes = new_figure(2, len(steps), size=(4.2, 3.3))
    for i, cond in enumerate((False, True)):
        for j, n in enumerate(steps):
            ax = axes[i][j]
            pax = _paper_axis(ax, not is_offline(feat))
            for kind in OUR_KINDS:
                sub = df[(df["kind"] == kind) & (df["cond"] == cond) & (df["num_steps"] == n)] \
                    if len(df) else df
                for model, s in (sub.groupby("model") if len(sub) else []):
                    s = s.sort_values("rho")
                    ax.plot(s["rho"], s["fid"], "o-", color=COLORS[kind], label=f"{kind} [{model}]")
            for aot in (False, True):
                kind = paper_kind(aot)
                label = table4_label(kind, n, cond)
                if label in paper4.index:
                    row = paper4.loc[label].astype(float)
                    xs = np.array([col_value(c) for c in row.index])
                    ok = np.isfinite(row.values)
                    pax.plot(xs[ok], row.values[ok], "x--", color=COLORS[kind], alpha=0.6,
                             label=f"{kind} (paper)")
            _log_axis(ax, "x")
            for a in {ax, pax}:
                _log_axis(a, "y")
            if not pax.lines and not ax.lines:
                ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="0.5")
            ax.set_xlabel("rho")
            ax.set_ylabel(_ylabel(feat))
            ax.set_title(f"{n} steps (NFE {2 * n - 1}), {cond_name(cond)}", fontsize=9)
            _legend(ax, pax, 6)
    _caveat(fig, feat)
    return fig


def plot_best_fid_vs_nfe(results: Any, rhos: Sequence[float] | None = None,
                         decimals: int = PAPER_DECIMALS) -> Any:
    """Figure 5: best FID over `rhos` vs NFE, the minimal-step optimum (`minimal_step_optimum` at
    `decimals`) marked with a star, ours and the paper's."""
    agg = as_aggregate(results)
    feat = single_feature_network(agg)
    best = best_over_rho(agg, rhos)
    paper5 = _paper_rows(5)
    fig, axes = new_figure(1, 2)
    for ax, cond in zip(axes[0], (False, True)):
        pax = _paper_axis(ax, not is_offline(feat))
        for kind in OUR_KINDS:
            _our_nfe_curves(ax, best, table5_label(kind, cond), COLORS[kind], decimals)
        for aot in (False, True):
            kind = paper_kind(aot)
            label = table5_label(kind, cond)
            if label in paper5.index:
                row = paper5.loc[label].astype(float)
                xs = np.array([col_value(c) for c in row.index])
                pax.plot(xs, row.values, "x--", color=COLORS[kind], alpha=0.6,
                         label=f"{label} (paper)")
                opt = minimal_step_optimum(xs, row.values, decimals)
                if opt:
                    pax.plot([opt[0]], [opt[1]], "*", color="none", mec=COLORS[kind], ms=14,
                             label=f"{label} (paper) optimum: {optimum_text(opt[0])}")
        for a in {ax, pax}:
            _log_axis(a, "y")
        ax.set_xlabel("NFE")
        ax.set_ylabel(f"best {_ylabel(feat)} over rho")
        ax.set_title(("conditional" if cond else "unconditional")
                     + (f", rho in {{{', '.join(fmt(r) for r in rhos)}}}" if rhos is not None else ", every rho"),
                     fontsize=9)
        _legend(ax, pax, 7)
    _caveat(fig, feat)
    return fig


# ------------------------------------------------------------------------------------------------
# Trajectory curvature


def check_curvature(obj: Any, path: Any = "<diagnostics JSON>") -> dict:
    """A diagnostics JSON with, per model, `name` and `curve` {sigma, x0_distance_to_final}."""
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


def load_diagnostics_json(path: str | os.PathLike) -> dict:
    """The diagnostics JSON (the npz's name with .json given: the JSON beside it)."""
    path = Path(path)
    if path.suffix != ".json":
        path = path.with_suffix(".json")
    return check_curvature(read_json(path, "diagnostics JSON"), path)


def _curvature_panel(item: Any) -> tuple[dict, str]:
    """(diagnostics JSON, panel title) of one path or dict."""
    if isinstance(item, (str, os.PathLike)):
        obj = load_diagnostics_json(item)
        default = Path(item).stem
    else:
        obj = check_curvature(item)
        default = ""
    sampler = obj.get("sampler") if isinstance(obj.get("sampler"), dict) else {}
    title = sampler.get("key") or default
    if sampler.get("num_steps") and not sampler.get("key"):
        title = f"{sampler['num_steps']} steps, rho {fmt(sampler.get('rho', 7))}"
    if default and title != default:
        title = f"{default}: {title}" if title not in default else default
    return obj, title


def plot_curvature(diag_json: Any) -> Any:
    """Distance of the denoised estimate to the final sample over sigma (log x), per model.

    `diag_json`: one diagnostics JSON (path or dict) or a list of them; one panel per input.
    """
    items = list(diag_json) if isinstance(diag_json, (list, tuple)) else [diag_json]
    if not items:
        raise UserError("the curvature figure needs at least one diagnostics JSON")
    panels = [_curvature_panel(item) for item in items]
    ncols = min(len(panels), 2)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = new_figure(nrows, ncols, size=(5.5, 3.8))
    for k, (obj, title) in enumerate(panels):
        ax = axes[k // ncols][k % ncols]
        for m in obj["models"]:
            sig = np.asarray(m["curve"]["sigma"], dtype=float)
            dist = np.asarray(m["curve"]["x0_distance_to_final"], dtype=float)
            ok = sig > 0
            kind = kind_name(bool(m.get("aot")), is_published_source(m.get("source")))
            c = m.get("curvature")
            lab = f"{m['name']}: {kind}" + (f", curvature {c:.3g}" if isinstance(c, (int, float)) else "")
            ax.plot(sig[ok], dist[ok], "o-", ms=3,
                    color=COLORS.get(kind) if len(obj["models"]) <= 3 else None, label=lab)
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("sigma (sampling runs from left to right)")
        ax.set_ylabel("distance of x0 estimate to final sample")
        ax.legend(fontsize=7)
        ax.set_title(title or "trajectory curvature", fontsize=9)
    for k in range(len(panels), nrows * ncols):
        axes[k // ncols][k % ncols].set_axis_off()
    fig.suptitle("trajectory curvature: lower = straighter sampling path", fontsize=9)
    return fig
