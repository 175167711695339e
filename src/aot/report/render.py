"""Writing the artefacts: tables as CSV, Markdown and LaTeX, figures as PNG and PDF.

Every call writes all of its files or none (temporary names renamed at the end). The CSV files
start with `# key: value` comment lines (title, feature network, counts) that the run report reads
back (`read_table_csv`). The Markdown/LaTeX versions of Tables 4 and 5 keep the rows "ours",
("best rho"), "paper" and "diff" of the CSV. With the offline feature network every table says so
(`OFFLINE_CAVEAT`) and shows no Δ column.

Figures are pure `matplotlib.figure.Figure` objects, no pyplot state (`new_figure`);
`save_figure(fig, out_prefix)` writes them without time stamps, so reruns give the same bytes.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import UserError
from ..files import atomic_path
from ..keys import fmt
from .results import NO_PUBLISHED_VALUE, OFFLINE_CAVEAT, is_offline

_KNOWN_SUFFIXES = (".csv", ".md", ".tex", ".png", ".pdf")


def strip_known_suffix(p: str | os.PathLike) -> str:
    """An output prefix from a prefix or one of its files: 'x/table1.csv' -> 'x/table1'."""
    s = str(p)
    for suf in _KNOWN_SUFFIXES:
        if s.endswith(suf):
            return s[: -len(suf)]
    return s


# ------------------------------------------------------------------------------------------------
# Cells


def fmt_value(v: Any, signed: bool = False) -> str:
    """A table cell: two decimals, three significant digits below 0.1, empty for NaN."""
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


def paper_cell(v: Any) -> str:
    """A cell of a paper column: the value, or "no published value"."""
    return fmt_value(v) or NO_PUBLISHED_VALUE


def _metric_name(feature_network: str | None) -> str:
    return "FD-offline" if is_offline(feature_network) else "FID"


def _display_grid(full: pd.DataFrame, m: str) -> pd.DataFrame:
    """Tables 4 and 5 for reading: ours (min), best rho, paper, diff; settings we did not measure
    keep only their paper row."""
    keep = full[full["stat"].isin(["ours", "best rho", "paper", "diff"])].copy()
    value_cols = [c for c in keep.columns if c not in ("setting", "stat")]
    no_paper = {s for s, st, *vals in keep[["setting", "stat", *value_cols]].itertuples(index=False)
                if st == "paper" and not any(pd.notna(v) for v in vals)}
    names = {"ours": f"{m} (ours)", "best rho": "best rho", "paper": "FID (paper)", "diff": "Δ"}
    disp = pd.DataFrame({"Setting": keep["setting"],
                         "": [f"FID (paper): {NO_PUBLISHED_VALUE}" if st == "paper" and s in no_paper
                              else names[st] for s, st in zip(keep["setting"], keep["stat"])]})
    for col in value_cols:
        vals = []
        for stat, v in zip(keep["stat"], keep[col]):
            if stat == "best rho":
                vals.append("" if pd.isna(v) else fmt(v))
            else:
                vals.append(fmt_value(v, signed=stat == "diff"))
        disp[col] = vals
    has_ours = {s for s, st, *vals in keep[["setting", "stat", *value_cols]].itertuples(index=False)
                if st == "ours" and any(pd.notna(v) for v in vals)}
    mask = [(s in has_ours) or (st == "paper" and s not in no_paper)
            for s, st in zip(keep["setting"], keep["stat"])]
    return disp[mask].reset_index(drop=True)


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
            "FID (paper)": [fmt_value(v) if st == "quoted" else paper_cell(v)
                            for v, st in zip(full["fid_paper"], full["status"])],
            "Δ": full["diff"].map(lambda v: fmt_value(v, signed=True)),
        })
    if number == 3:
        protocol = full["paper_protocol"] if "paper_protocol" in full else pd.Series([""] * len(full))
        source = full["paper_source"] if "paper_source" in full else pd.Series([""] * len(full))
        out = {"Model": full["model"],
               "NFE (paper)": [_fmt_int(v) or NO_PUBLISHED_VALUE for v in full["nfe_paper"]],
               "Paper protocol": [s if isinstance(s, str) else "" for s in source]}
        for c in [c for c in ("uncond", "cond") if f"fid_{c}" in full]:
            single = full[f"fid_{c}_single"] if f"fid_{c}_single" in full else pd.Series([float("nan")] * len(full))
            out[f"{c}: {m} (ours, min)"] = full[f"fid_{c}"].map(fmt_value)
            out[f"{c}: {m} (ours, one set)"] = single.map(fmt_value)
            out[f"{c}: n"] = [str(n) if n else "" for n in full[f"n_{c}"]]
            out[f"{c}: FID (paper)"] = full[f"fid_{c}_paper"].map(paper_cell)
            # like for like: the one-set difference beside a one-set paper value
            like = [d1 if p == "single" else d for p, d, d1 in
                    zip(protocol, full[f"diff_{c}"], full.get(f"diff_{c}_single", full[f"diff_{c}"]))]
            out[f"{c}: Δ"] = [fmt_value(v, signed=True) for v in like]
        return pd.DataFrame(out)
    return _display_grid(full, m)


# ------------------------------------------------------------------------------------------------
# Markdown and LaTeX


def md_cell(s: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(s).replace("|", "\\|").replace("\n", " ")


def to_markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    numeric = [all(re.fullmatch(r"[+\-]?[0-9.]*(e[+\-]?\d+)?( ± [0-9.e+\-]+)?", str(v) or "")
                   for v in df[c]) and c not in ("Model", "Setting") for c in cols]
    lines = ["| " + " | ".join(md_cell(c) for c in cols) + " |",
             "|" + "|".join("---:" if num else ":---" for num in numeric) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(md_cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}"}


def latex_escape(s: Any) -> str:
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(s))
    return out.replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace("ρ", r"$\rho$")


def to_latex(df: pd.DataFrame, caption: str, label: str, notes: Sequence[str] = ()) -> str:
    """A booktabs table with the notes below it."""
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


# ------------------------------------------------------------------------------------------------
# Table files


def render_table(number: int, full: pd.DataFrame, disp: pd.DataFrame, meta: dict) -> dict[str, str]:
    """Text of the CSV, Markdown and LaTeX files."""
    head = [f"# {k}: {meta[k]}" for k in ("table", "title", "dataset", "feature_network", "metric",
                                          "sample_sets", "measurements", "rhos")
            if meta.get(k) not in ("", None)]
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


# ------------------------------------------------------------------------------------------------
# Figure files


def new_figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (5.0, 3.6), **kw: Any):
    """(Figure, axes [nrows][ncols]) with `size` inches per panel, constrained layout."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def save_figure(fig: Any, out_prefix: str | os.PathLike, dpi: int = 150,
                formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Write `<prefix>.png` and `<prefix>.pdf` (or the given formats), all or none."""
    prefix = strip_known_suffix(out_prefix)
    paths = [Path(f"{prefix}.{ext}") for ext in formats]
    with contextlib.ExitStack() as stack:
        for path in paths:
            tmp = stack.enter_context(atomic_path(path))
            ext = path.suffix[1:]
            meta = {"Software": None} if ext == "png" else {"CreationDate": None}
            fig.savefig(tmp, format=ext, dpi=dpi, metadata=meta)
    return paths
