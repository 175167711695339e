"""The Significance table and figure: is the AOT gain larger than a second training run would give?

Input: a design (JSON, written by the workflow from `significance:` of the config) and the FID
results of its sample sets. The design lists comparisons, each a part, an "edm" arm and an "aot"
arm (model names in replicate order: replicate r of both arms trained with the same seed), and the
settings to compare them at (per arm, the sampler keys of the sets; a setting of several keys,
Table 5's NFE points, takes the best over them):

    {"study": "significance", "level": 0.95, "power": 0.8, "dataset": "cifar10",
     "comparisons": [{"part": "uncond", "label": "EDM-AOT vs EDM",
                      "edm": ["edm-uncond", "edm-uncond-rep1", ...], "aot": [...],
                      "settings": [{"name": ..., "kind": "default" | "tables" | "nfe", "nfe": 35,
                                    "edm": [key, ...], "aot": [key, ...]}, ...]}]}

Per replicate and arm, a setting's value is the best (lowest) over its keys of the mean FID over
the set's repeats (the mean, not the minimum: the minimum is biased low and noisier). Across
replicates: the mean with its t-interval per arm, the paired difference EDM-AOT minus EDM with
its interval and the paired t-test's p-value (aot.stats), and the replicates a paired test needs
for the stated power at the paper's gain (CIFAR-10 with FID-Inception only) and at the measured
one. Beside them, the paper's protocol on replicate 0: the minimum over repeats (best over rho).

Files: `<prefix>.csv` (every number, `# key: value` header lines as the other tables), `.md`
(the table and its notes), `.tex`; the figure draws every difference with its interval.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import UserError
from .render import fmt_value, new_figure, save_figure, to_latex, to_markdown, write_outputs
from .results import OFFLINE_CAVEAT, as_aggregate, is_offline, paper_table, single_feature_network

TITLE = "Significance: EDM-AOT minus EDM over independently seeded training runs (beyond the paper)"
POOL_TITLE = "Significance of the pool-size study: each N minus the model without AOT, over training runs"
FIGURE_TITLE = "Significance: paired differences EDM-AOT minus EDM with their intervals"
POOL_FIGURE_TITLE = "Significance of the pool-size study: paired differences with their intervals"
KINDS = ("default", "tables", "nfe")
COLUMNS = ["part", "comparison", "setting", "kind", "nfe", "replicates", "edm_mean", "edm_low", "edm_high",
           "aot_mean", "aot_low", "aot_high", "diff_mean", "diff_low", "diff_high", "diff_sd", "p",
           "edm_paper_protocol", "aot_paper_protocol", "paper_edm", "paper_aot", "paper_gain",
           "replicates_for_paper_gain", "replicates_for_measured_gain", "edm_values", "aot_values"]


# ------------------------------------------------------------------------------------------------
# The design


def _design_fail(msg: str) -> UserError:
    return UserError(f"significance design: {msg}")


def _names(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise _design_fail(f"{where} must be a non-empty list of names, got {value!r}")
    return list(value)


def parse_design(design: Any) -> dict:
    """The design as a dict (from JSON text, a path to a JSON file, or a dict), checked."""
    if isinstance(design, (str, os.PathLike)):
        text = str(design)
        if not text.lstrip().startswith("{"):
            path = Path(text)
            if not path.is_file():
                raise _design_fail(f"{path} is neither JSON nor an existing file")
            text = path.read_text()
        try:
            design = json.loads(text)
        except json.JSONDecodeError as exc:
            raise _design_fail(f"not valid JSON ({exc})") from None
    if not isinstance(design, dict):
        raise _design_fail("the top level must be an object")
    for key, lo, hi in (("level", 0, 1), ("power", 0, 1)):
        v = design.get(key, 0.95 if key == "level" else 0.8)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo < v < hi:
            raise _design_fail(f"'{key}' must be a number between {lo} and {hi} (exclusive), got {v!r}")
        design[key] = float(v)
    comparisons = design.get("comparisons")
    if not isinstance(comparisons, list) or not comparisons:
        raise _design_fail("'comparisons' must be a non-empty list")
    for i, c in enumerate(comparisons):
        where = f"comparisons[{i}]"
        if not isinstance(c, dict):
            raise _design_fail(f"{where} must be an object")
        if c.get("part") not in ("uncond", "cond"):
            raise _design_fail(f"{where}.part must be uncond or cond, got {c.get('part')!r}")
        edm, aot = _names(c.get("edm"), f"{where}.edm"), _names(c.get("aot"), f"{where}.aot")
        if len(edm) != len(aot):
            raise _design_fail(f"{where}: {len(edm)} EDM replicates but {len(aot)} EDM-AOT replicates; "
                               "the arms are paired by replicate")
        settings = c.get("settings")
        if not isinstance(settings, list) or not settings:
            raise _design_fail(f"{where}.settings must be a non-empty list")
        for j, s in enumerate(settings):
            w = f"{where}.settings[{j}]"
            if not isinstance(s, dict) or not isinstance(s.get("name"), str):
                raise _design_fail(f"{w} must be an object with a 'name'")
            if s.get("kind") not in KINDS:
                raise _design_fail(f"{w}.kind must be one of {', '.join(KINDS)}, got {s.get('kind')!r}")
            _names(s.get("edm"), f"{w}.edm")
            _names(s.get("aot"), f"{w}.aot")
        c.setdefault("label", "EDM-AOT vs EDM")
    return design


# ------------------------------------------------------------------------------------------------
# Values per replicate


def _set_index(agg: pd.DataFrame) -> dict[tuple[str, str], dict]:
    """(model, sampler key) -> {mean, min, n} of the unguided sets."""
    out = {}
    for row in agg.itertuples(index=False):
        if row.guidance is None or (isinstance(row.guidance, float) and math.isnan(row.guidance)):
            out[(row.model, row.sampler_key)] = {"mean": float(row.fid_mean), "min": float(row.fid),
                                                 "n": int(row.n)}
    return out


def arm_values(sets: dict, models: Sequence[str], keys: Sequence[str], stat: str = "mean") -> list[float]:
    """Per replicate (model), the best over `keys` of the set's `stat` (mean or min over repeats)."""
    out = []
    for model in models:
        missing = [k for k in keys if (model, k) not in sets]
        if missing:
            raise UserError(f"significance: no FID results of model {model} at sampler {missing[0]} "
                            "(measure its sample set first)")
        out.append(min(sets[(model, k)][stat] for k in keys))
    return out


# ------------------------------------------------------------------------------------------------
# The paper's values of a setting (CIFAR-10, FID-Inception)

_BEST_ROW = re.compile(r"rho=(?P<rho>[\d.]+), (?P<steps>\d+) steps")


def _key_sampler(key: str) -> tuple[int, float]:
    from ..keys import parse_key

    k = parse_key(key)
    return int(k["num_steps"]), float(k["rho"])


def paper_values(part: str, setting: dict) -> tuple[float | None, float | None]:
    """(EDM, EDM-AOT) of the paper at a setting: Tables 1-2 for the samplers, Table 5 for an NFE
    point; None where the paper has no value for it."""
    if setting["kind"] == "nfe":
        t5 = paper_table(5).set_index("setting")
        col = f"nfe={setting.get('nfe')}"
        if col not in t5.columns:
            return None, None
        return float(t5.loc[f"EDM, {part}", col]), float(t5.loc[f"EDM-AOT, {part}", col])
    t = paper_table(1 if part == "uncond" else 2)
    edm_row = t[t["model"] == "EDM"]
    edm = None
    if len(edm_row) and len(setting["edm"]) == 1 and _key_sampler(setting["edm"][0]) == (18, 7.0):
        edm = float(edm_row["fid"].iloc[0])  # EDM's row: its sampler, 18 steps, rho 7
    aot = None
    want = _key_sampler(setting["aot"][0]) if len(setting["aot"]) == 1 else None
    for label, fid in zip(t["model"], t["fid"]):
        m = _BEST_ROW.search(str(label))
        if str(label).startswith("EDM-AOT") and m and want == (int(m["steps"]), float(m["rho"])):
            aot = float(fid)
    return edm, aot


# ------------------------------------------------------------------------------------------------
# The table


def significance_rows(design: dict, results: Any) -> tuple[pd.DataFrame, dict]:
    """One row per comparison and setting (COLUMNS), and the table's metadata."""
    from ..stats import paired_difference, replicate_summary, replicates_for_power

    design = parse_design(design)
    agg = as_aggregate(results)
    feat = single_feature_network(agg) if len(agg) else None
    sets = _set_index(agg)
    level, power = design["level"], design["power"]
    comparable = design.get("dataset", "cifar10") == "cifar10" and not is_offline(feat) and \
        design.get("study", "significance") == "significance"
    rows = []
    for c in design["comparisons"]:
        for s in c["settings"]:
            edm = arm_values(sets, c["edm"], s["edm"])
            aot = arm_values(sets, c["aot"], s["aot"])
            e, a = replicate_summary(edm, level=level), replicate_summary(aot, level=level)
            d = paired_difference(edm, aot, level=level)
            paper_edm, paper_aot = paper_values(c["part"], s) if comparable else (None, None)
            gain = paper_aot - paper_edm if paper_edm is not None and paper_aot is not None else None
            sd = d.get("sd")
            rows.append({
                "part": c["part"], "comparison": c["label"], "setting": s["name"], "kind": s["kind"],
                "nfe": s.get("nfe"), "replicates": len(edm),
                "edm_mean": e["mean"], "edm_low": e["low"], "edm_high": e["high"],
                "aot_mean": a["mean"], "aot_low": a["low"], "aot_high": a["high"],
                "diff_mean": d["mean"], "diff_low": d["low"], "diff_high": d["high"], "diff_sd": sd, "p": d["p"],
                "edm_paper_protocol": arm_values(sets, c["edm"][:1], s["edm"], "min")[0],
                "aot_paper_protocol": arm_values(sets, c["aot"][:1], s["aot"], "min")[0],
                "paper_edm": paper_edm, "paper_aot": paper_aot, "paper_gain": gain,
                "replicates_for_paper_gain": _needed(replicates_for_power, gain, sd, level, power),
                "replicates_for_measured_gain": _needed(replicates_for_power, d["mean"], sd, level, power),
                "edm_values": " ".join(f"{v:.6g}" for v in edm),
                "aot_values": " ".join(f"{v:.6g}" for v in aot),
            })
    study = design.get("study", "significance")
    meta = {"title": TITLE if study == "significance" else POOL_TITLE, "study": study,
            "dataset": design.get("dataset", ""), "feature_network": feat or "",
            "metric": "FD-offline" if is_offline(feat) else "FID", "level": level, "power": power,
            "sample_sets": len(sets), "measurements": int(agg["n"].sum()) if len(agg) else 0}
    return pd.DataFrame(rows, columns=COLUMNS), meta


def _needed(fn, effect, sd, level, power) -> int | None:
    if effect is None or sd is None or not math.isfinite(effect) or effect == 0:
        return None
    return fn(abs(effect), sd, level=level, power=power)


def _signed(v: Any) -> str:
    return f"{float(v):+.3f}"


def _cell(mean: Any, low: Any, high: Any, fmt=fmt_value) -> str:
    """'mean [low, high]' (the interval left out where there is none), empty without a mean."""
    if mean is None or pd.isna(mean):
        return ""
    cell = fmt(mean)
    if low is not None and not pd.isna(low):
        cell += f" [{fmt(low)}, {fmt(high)}]"
    return cell


def _p_cell(p: Any) -> str:
    if p is None or pd.isna(p):
        return ""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def power_note(row: Any, power: float) -> str:
    """Replicates a paired test needs for `power` at the paper's gain and at the measured one."""
    parts = []
    pct = f"{power * 100:g} %"
    for key, what in (("replicates_for_paper_gain", "the paper's gain"),
                      ("replicates_for_measured_gain", "the measured gain")):
        n = row[key]
        if n is not None and not pd.isna(n):
            parts.append(f"{int(n)} for {pct} power at {what}")
        elif what == "the measured gain" and row["replicates"] >= 2:
            parts.append(f"over 1000 for {pct} power at {what}" if row["diff_mean"] else "no measured gain")
    return "; ".join(parts)


def _cells(full: pd.DataFrame, arm: str, fmt=fmt_value) -> list[str]:
    return [_cell(*r, fmt=fmt) for r in full[[f"{arm}_mean", f"{arm}_low", f"{arm}_high"]].itertuples(index=False)]


def display_table(full: pd.DataFrame, meta: dict) -> pd.DataFrame:
    m, level = meta["metric"], float(meta["level"])
    ci = f"{level * 100:g} % CI"
    return pd.DataFrame({
        "Part": full["part"], "Comparison": full["comparison"], "Setting": full["setting"],
        "K": full["replicates"],
        f"EDM {m} mean [{ci}]": _cells(full, "edm"),
        f"EDM-AOT {m} mean [{ci}]": _cells(full, "aot"),
        f"Difference [{ci}]": _cells(full, "diff", fmt=_signed),
        "p": full["p"].map(_p_cell),
        "Min of repeats, replicate 0 (EDM / EDM-AOT)": [
            f"{fmt_value(a)} / {fmt_value(b)}" for a, b in zip(full["edm_paper_protocol"], full["aot_paper_protocol"])],
        "Paper (EDM / EDM-AOT)": [f"{fmt_value(a)} / {fmt_value(b)}" if a is not None and not pd.isna(a) else "—"
                                  for a, b in zip(full["paper_edm"], full["paper_aot"])],
        "Replicates for power": [power_note(r, float(meta["power"])) for _, r in full.iterrows()],
    })


def table_notes(full: pd.DataFrame, meta: dict) -> list[str]:
    level = float(meta["level"])
    k = sorted({int(v) for v in full["replicates"]}) if len(full) else []
    notes = [
        f"Replicates (K = {', '.join(map(str, k))}): independently seeded training runs of each model; replicate r "
        "of both arms trains with the same seed (seed + r), and every replicate is sampled with the same seeds, so "
        "the arms are paired by replicate (docs/significance.md).",
        "Each replicate's value at a setting is the mean over the repeats of its sample set (the best over rho for "
        "an NFE point, as Table 5); mean and interval are across replicates (Student's t, "
        f"{level * 100:g} %).",
        "Difference: EDM-AOT minus EDM per replicate (negative = EDM-AOT better); interval and two-sided p from a "
        "paired t-test on the K differences (it assumes they are roughly normal; with K = 2 or 3 intervals are wide).",
        "\"Min of repeats, replicate 0\" is the paper's protocol (the minimum over the repeats of one trained "
        "network), biased low and blind to the training seed.",
    ]
    if meta.get("metric") == "FD-offline":
        notes.append(f"Ours: {OFFLINE_CAVEAT}; the paper's gains are not comparable, so the power note uses the "
                     "measured gain only.")
    else:
        notes.append("Paper: the paper's FID of EDM and EDM-AOT at the setting (Tables 1, 2, 5; one trained network "
                     "each); replicates for power at the paper's gain use the measured spread of the differences.")
    significant = full[(full["p"].notna()) & (full["p"] < 1 - level)] if len(full) else full
    notes.append(f"At this run: {len(significant)} of {len(full)} settings have p < {1 - level:.2g}.")
    return notes


def write_significance(out_prefix: str | os.PathLike, design: Any, results: Sequence[Any],
                       figure_prefix: str | os.PathLike | None = None) -> list[Path]:
    """Write the table (csv, md, tex) and, with `figure_prefix`, the figure (png, pdf)."""
    full, meta = significance_rows(design, results)
    disp = display_table(full, meta)
    notes = table_notes(full, meta)
    import io

    head = [f"# {k}: {meta[k]}" for k in ("title", "study", "dataset", "feature_network", "metric", "level",
                                          "power", "sample_sets", "measurements") if meta.get(k) not in ("", None)]
    buf = io.StringIO()
    full.to_csv(buf, index=False, float_format="%.6g")
    md = "\n".join([f"**{meta['title']}**", "", to_markdown(disp), ""] + [f"- {n}" for n in notes]) + "\n"
    label = "tab:significance" if meta["study"] == "significance" else "tab:significance-pool"
    texts = {"csv": "\n".join(head) + "\n" + buf.getvalue(), "md": md,
             "tex": to_latex(disp, meta["title"], label, notes)}
    paths = write_outputs(out_prefix, texts)
    if figure_prefix is not None:
        paths += save_figure(plot_significance(full, meta), figure_prefix)
    return paths


# ------------------------------------------------------------------------------------------------
# The figure


def plot_significance(full: pd.DataFrame, meta: dict) -> Any:
    """Per comparison and setting, the paired difference EDM-AOT minus EDM with its interval (a
    forest plot, one panel per part), zero dashed and the paper's gain as a cross where known."""
    parts = list(dict.fromkeys(full["part"])) or ["uncond"]
    height = max(2.5, 0.45 * max((full["part"] == p).sum() for p in parts) + 1.2)
    fig, axes = new_figure(len(parts), 1, size=(7.5, height))
    level = float(meta["level"])
    for ax, part in zip(axes[:, 0], parts):
        rows = full[full["part"] == part].reset_index(drop=True)
        ys = list(range(len(rows)))[::-1]
        for y, (_, r) in zip(ys, rows.iterrows()):
            if pd.notna(r["diff_low"]):
                err = [[r["diff_mean"] - r["diff_low"]], [r["diff_high"] - r["diff_mean"]]]
                ax.errorbar(r["diff_mean"], y, xerr=err, fmt="o", color="C0", capsize=3)
            else:
                ax.plot(r["diff_mean"], y, "o", color="C0")
            if r["paper_gain"] is not None and pd.notna(r["paper_gain"]):
                ax.plot(r["paper_gain"], y, "x", color="C3", label="paper" if y == ys[0] else None)
        ax.axvline(0, color="0.5", linestyle="--", linewidth=1)
        labels = [f"{r['setting']}" + (f" ({r['comparison']})" if meta["study"] != "significance" else "")
                  for _, r in rows.iterrows()]
        ax.set_yticks(ys, labels, fontsize=7)
        ax.set_xlabel(f"{meta['metric']}: EDM-AOT minus EDM, mean and {level * 100:g} % CI", fontsize=8)
        ax.set_title(f"{part}: K = {', '.join(str(int(k)) for k in sorted(set(rows['replicates'])))} replicates",
                     fontsize=9)
        if rows["paper_gain"].notna().any():
            ax.legend(fontsize=7, loc="best")
    fig.suptitle(FIGURE_TITLE if meta["study"] == "significance" else POOL_FIGURE_TITLE, fontsize=10)
    return fig
