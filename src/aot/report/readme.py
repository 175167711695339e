"""The run report `results/<run>/README.md`: every table inline, every figure linked, what was
measured and what is quoted, the compute time and the settings of the run.

Compute time: the sum of the `s` (wall seconds) and `cpu_time` columns of every benchmark TSV file
below `benchmarks` (every row: benchmark repeats count), split by stage from the first component of
the file's path relative to that folder (the rule's name in our workflow): "dg..." or a word
"dg"/"discriminator..." (generate_dg, train_discriminator) -> dg; "fid...", "reference...",
"train_features" (the offline feature network) -> fid; other "train..." -> train;
"generate..."/"sample..." -> generate; anything else (data preparation, downloads, diagnostics,
report) -> other. The FID of a guided sample set counts as fid.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import UserError
from ..files import atomic_path, read_json
from .figures import CURVE_FIGURES, FIGURE_TITLES
from .pool_study import FIGURE_TITLE as POOL_STUDY_TITLE
from .render import md_cell, read_table_csv, strip_known_suffix
from .results import OFFLINE_CAVEAT, OFFLINE_FEATURES, PUBLISHED_EDM, RETRAINED_EDM
from .significance import FIGURE_TITLE as SIGNIFICANCE_TITLE
from .significance import POOL_FIGURE_TITLE as SIGNIFICANCE_POOL_TITLE
from .tables import QUOTED_BASELINES

STAGES = ("train", "generate", "fid", "dg", "other")
FIDELITY_DOC = "docs/fidelity.md"


# ------------------------------------------------------------------------------------------------
# Compute time


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


# ------------------------------------------------------------------------------------------------
# Inputs


def load_config(path: str | os.PathLike) -> dict:
    """The run's config, JSON or YAML."""
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


def _figure_title(path: Path) -> str:
    """The figure's title: the paper's figures by number, the studies' (Table 6, significance) by name."""
    fid = _figure_id(path)
    named = {"pool_study": POOL_STUDY_TITLE, "significance": SIGNIFICANCE_TITLE,
             "significance_pool_study": SIGNIFICANCE_POOL_TITLE}
    return named.get(fid) or FIGURE_TITLES.get(fid, path.stem)


def _figure_id(path: Path) -> str:
    m = re.search(r"figure(\d+)", path.stem)
    if m:
        return m.group(1)
    return "curvature" if "curvature" in path.stem else path.stem


def _rel(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path.resolve(), base.resolve())).as_posix()


# ------------------------------------------------------------------------------------------------
# Sections


def _tables_section(loaded: list, base: Path) -> list[str]:
    lines = ["## Tables", ""]
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
    return lines


def _figures_section(figures: Sequence[Path], base: Path, offline: bool) -> list[str]:
    lines = ["## Figures", ""]
    if not figures:
        lines += ["No figures were made in this run.", ""]
    for f in figures:
        fid = _figure_id(f)
        title = _figure_title(f)
        lines += [f'<a id="{f.stem}"></a>', f"### {title}", "",
                  f"![{title}]({_rel(f, base)})", ""]
        links = [f"[PNG]({_rel(f, base)})"]
        pdf = f.with_suffix(".pdf")
        if pdf.is_file():
            links.append(f"[PDF]({_rel(pdf, base)})")
        lines += ["Files: " + " · ".join(links), ""]
        if offline and fid in CURVE_FIGURES:
            lines += [f"_Ours: {OFFLINE_CAVEAT}; paper values on the right-hand axis._", ""]
    return lines


def _provenance_section(loaded: list, feats: list[str], offline: bool) -> list[str]:
    lines = ['<a id="measured-vs-quoted"></a>', "## Measured vs quoted", ""]
    n_sets = sum(int(m.get("sample_sets", 0) or 0) for _, _, m in loaded)
    n_meas = sum(int(m.get("measurements", 0) or 0) for _, _, m in loaded)
    metric = OFFLINE_CAVEAT if offline else (
        "FID with the feature network " + ", ".join(feats) if feats else "FID")
    lines += [f"- **Measured in this run:** every \"ours\" value, a {metric}; each is the minimum "
              "over the repeats of one sample set (mean, standard deviation and the number of "
              "repeats are in the tables and CSV files). Summed over the tables: "
              f"{n_sets} sample-set entries from {n_meas} measurements (a sample set used by "
              "several tables counts once per table).",
              "- **Quoted from the paper:** every \"paper\" column (CIFAR-10, FID-50k as published: the "
              "paper's own values one 50k set each, its EDM values EDM's minimum of three, its EDM+DG "
              "values DG's one 50k set; Table 3 names the protocol beside each and adds ours on one "
              "set, repeat 0), and the literature baselines " + ", ".join(QUOTED_BASELINES)
              + " in Tables 1-2 (status \"quoted\"); this pipeline does not train them.",
              f"- **Two EDM baselines:** \"{PUBLISHED_EDM}\" is EDM's official network imported "
              "from its pickle (the paper's EDM numbers are this network's, trained at batch 512); "
              f"\"{RETRAINED_EDM}\" is trained by this pipeline with the EDM-AOT models' settings "
              "and independent noise. Both stand beside the paper's EDM number.",
              "- Empty cells: not measured in this run, or not stated in the paper; \"no published "
              "value\": the paper has no number for this row or dataset.",
              "- Figures 2, 3, 6-9 and the curvature plot are measured only (the paper shows "
              "pictures, not numbers); Figures 10-11 show samples of this run.", ""]
    missing = []
    for t, df, meta in loaded:
        if "status" in df.columns:
            status = df["status"].astype(str)
            nm = [f"{m} ({st})" if st != "not measured" else m for m, st in zip(df["model"], status)
                  if st == "not measured" or st.startswith("not run")]
            if nm:
                missing.append(f"Table {meta.get('table', t.stem)}: " + ", ".join(nm))
    if missing:
        lines += ["Paper rows of EDM/EDM-AOT without a measurement in this run: "
                  + "; ".join(missing) + ".", ""]
    return lines


def fidelity_doc() -> Path | None:
    """docs/fidelity.md of the source tree this package runs from, None when not there."""
    path = Path(__file__).resolve().parents[3] / FIDELITY_DOC
    return path if path.is_file() else None


def _fidelity_section(base: Path) -> list[str]:
    doc = fidelity_doc()
    link = f"[{FIDELITY_DOC}]({_rel(doc, base)})" if doc else f"`{FIDELITY_DOC}` of the aot repository"
    return ['<a id="fidelity"></a>', "## Fidelity: where the sources disagree", "",
            "Every place where the paper, the authors' code, EDM and DG disagree or are silent "
            "(Table 3's NFE, the conditional batch, Table 4's unreadable cells, the discriminators' "
            "recipes, the FID reference statistics and protocol, the training seeds, the EDM baselines), "
            f"and what this run chose: {link}.",
            ""]


def _compute_section(ct: pd.DataFrame, benchmarks: str | os.PathLike | None) -> list[str]:
    total = ct[ct["stage"] == "total"].iloc[0]
    lines = ['<a id="compute-time"></a>', "## Compute time", ""]
    if int(total["jobs"]) == 0:
        return lines + [f"No Snakemake benchmark files found under `{benchmarks}`." if benchmarks
                        else "No benchmark folder given.", ""]
    lines += [f"Total: **{total['wall_s'] / 3600:.2f} h** wall-clock job time "
              f"({_hms(total['wall_s'])}, sum of the `s` column of {int(total['jobs'])} "
              f"benchmark file{'s' if int(total['jobs']) != 1 else ''} under `{benchmarks}`), "
              f"{total['cpu_s'] / 3600:.2f} h CPU time "
              "(`cpu_time`). Jobs that ran in parallel are counted in full; a job's wall "
              "time is the time it held its GPU/CPU allocation.", ""]
    lines += ["| stage | jobs | wall time (h:m:s) | wall hours | CPU hours |",
              "|:---|---:|---:|---:|---:|"]
    for _, r in ct.iterrows():
        lines.append(f"| {r['stage']} | {int(r['jobs'])} | {_hms(r['wall_s'])} | "
                     f"{r['wall_s'] / 3600:.3f} | {r['cpu_s'] / 3600:.3f} |")
    return lines + [""]


def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(obj, dict):
        out = []
        for k, v in obj.items():
            out.extend(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return [(prefix, json.dumps(obj) if not isinstance(obj, str) else obj)]


def _settings_section(config: dict | None, config_path: str | None) -> list[str]:
    lines = ['<a id="settings"></a>', "## Settings", ""]
    if config is None:
        return lines + ["No config given.", ""]
    src = f" (`{config_path}`)" if config_path else ""
    lines += [f"The configuration this run used{src}:", "",
              "| key | value |", "|:---|:---|"]
    for k, v in _flatten(config):
        lines.append(f"| `{md_cell(k)}` | {md_cell(v)} |")
    lines += ["", "<details><summary>config as JSON</summary>", "", "```json",
              json.dumps(config, indent=2, default=str), "```", "", "</details>", ""]
    return lines


# ------------------------------------------------------------------------------------------------
# The report


def build_readme(run_dir: str | os.PathLike, out: str | os.PathLike, config: dict | None,
                 tables: Sequence[Path], figures: Sequence[Path],
                 benchmarks: str | os.PathLike | None, config_path: str | None = None) -> str:
    """The text of the report; links are relative to the folder of `out`."""
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
    lines += ["## Contents", ""]
    lines += [f"- [{m.get('title', t.stem)}](#{t.stem})" for t, _, m in loaded]
    lines += [f"- [{_figure_title(f)}](#{f.stem})" for f in figures]
    lines += ["- [Measured vs quoted](#measured-vs-quoted)", "- [Compute time](#compute-time)",
              "- [Fidelity: where the sources disagree](#fidelity)", "- [Settings](#settings)", ""]
    lines += _tables_section(loaded, base)
    lines += _figures_section(figures, base, offline)
    lines += _provenance_section(loaded, feats, offline)
    lines += _fidelity_section(base)
    lines += _compute_section(ct, benchmarks)
    lines += _settings_section(config, config_path)
    return "\n".join(lines)


def write_readme(run_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                 config: str | os.PathLike | None = None,
                 tables: Sequence[str | os.PathLike] | None = None,
                 figures: Sequence[str | os.PathLike] | None = None,
                 benchmarks: str | os.PathLike | None = None) -> Path:
    """Write the report (default RUN_DIR/README.md) from the tables (default RUN_DIR/tables/*.csv)
    and figures (default RUN_DIR/figures/*.png) of a run."""
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
