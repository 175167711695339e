"""The paper's figures by number: titles, the kind each is drawn as, and one call that draws it.

`kind` picks what to draw; by default the paper's kind for the figure number (1, 4, 5: curves;
2, 6, 7, 8: strip; 3, 9: denoised-grid; 10, 11: samples; curvature: curvature). Curves read FID
result files or folders of them; strips and denoised grids the diagnostics npz (its JSON given
means the npz beside it); samples one sample-set npz; curvature one or more diagnostics JSONs.
Strips and grids label each model with its name and kind (EDM-AOT, "EDM (published network)",
"EDM (retrained here, AOT off, same recipe)") from the diagnostics JSON beside the npz.

The paper's settings (the workflow's FIGURES in workflow/rules/report.smk): Figure 3 is the single
Euler step's estimate from sigma_max (step 0 of the diagnostics, `step=0`); Figure 6 unconditional
at 10 steps, Figures 2 and 7 unconditional and Figure 8 conditional at 18 steps, all rho 7;
Figure 5 marks the fewest steps that reach the lowest FID (tolerance 0).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..files import read_json
from .curves import DEFAULT_TOLERANCE, plot_best_fid_vs_nfe, plot_curvature, plot_fid_vs_nfe, plot_fid_vs_rho
from .images import load_diagnostics, load_labelled_images, plot_denoised_grid, plot_sample_grid, plot_trajectory_strip
from .render import save_figure
from .results import cond_name, is_published_source, kind_name, load_fid_results

FIGURE_TITLES = {
    "1": "Figure 1: FID vs NFE, EDM and EDM-AOT against quoted baselines",
    "2": "Figure 2: single-step denoised estimates along the sampling path",
    "3": "Figure 3: the single Euler step's denoised estimate from sigma_max, EDM vs EDM-AOT",
    "4": "Figure 4: FID vs rho at 18, 14 and 8 steps",
    "5": "Figure 5: best FID over rho vs NFE, the fewest steps reaching the lowest FID marked",
    "6": "Figure 6: single-step denoised estimates along the sampling path",
    "7": "Figure 7: single-step denoised estimates along the sampling path",
    "8": "Figure 8: single-step denoised estimates along the sampling path",
    "9": "Figure 9: denoised estimates at an early step, EDM vs EDM-AOT",
    "10": "Figure 10: samples",
    "11": "Figure 11: samples",
    "curvature": "Trajectory curvature: distance of the denoised estimate to the final sample over sigma",
}
FIGURE_KINDS = ("curves", "strip", "denoised-grid", "samples", "curvature")
CURVE_FIGURES = ("1", "4", "5")
STRIP_FIGURES = ("2", "6", "7", "8")
GRID_FIGURES = ("3", "9")
SAMPLE_FIGURES = ("10", "11")


def default_kind(figure: str) -> str:
    if figure in CURVE_FIGURES:
        return "curves"
    if figure in STRIP_FIGURES:
        return "strip"
    if figure in GRID_FIGURES:
        return "denoised-grid"
    if figure in SAMPLE_FIGURES:
        return "samples"
    return "curvature"


def _one_input(figure: str, option: str, given: str | None, inputs: Sequence[str], what: str) -> str:
    paths = ([given] if given else []) + list(inputs)
    if len(paths) != 1:
        raise UserError(f"--figure {figure} needs exactly one {what} (--{option} or a "
                        f"positional path), got {len(paths)}")
    return str(paths[0])


def _diag_title(figure: str, diag: dict) -> str:
    base = FIGURE_TITLES.get(figure, "trajectory diagnostics")
    steps = diag["x0"][0].shape[1]
    labels = diag.get("labels")
    part = "conditional" if labels is not None and np.size(labels) and np.all(labels >= 0) else "unconditional"
    names = [n.split("\n")[0] for n in diag["names"]]
    return f"{base} ({' vs '.join(names)}; {part}, {steps} steps, same noise)"


def diagnostics_kinds(npz: str | os.PathLike) -> dict[str, str]:
    """Model name -> kind (`kind_name`) from the diagnostics JSON beside the npz; {} without it."""
    path = Path(npz).with_suffix(".json")
    if not path.is_file():
        return {}
    obj = read_json(path, "diagnostics JSON")
    models = obj.get("models") if isinstance(obj, dict) else None
    if not isinstance(models, list):
        raise UserError(f"diagnostics JSON {path}: missing key 'models' (a list)")
    return {str(m["name"]): kind_name(bool(m.get("aot")), is_published_source(m.get("source")))
            for m in models if isinstance(m, dict) and "name" in m}


def _label_models(diag: dict, kinds: dict[str, str]) -> dict:
    """The model names of a diagnostics dict with their kinds below them."""
    import textwrap

    names = [f"{n}\n{textwrap.fill(kinds[n], 22)}" if n in kinds else n for n in diag["names"]]
    return {**diag, "names": names}


def _samples_title(figure: str, meta: dict) -> str:
    model = meta.get("model", {}) if isinstance(meta, dict) else {}
    sampler = meta.get("sampler", {}) if isinstance(meta, dict) else {}
    parts = [FIGURE_TITLES[figure]]
    if model.get("name"):
        kind = kind_name(bool(model.get("aot")), is_published_source(model.get("source")))
        parts.append(f"{model['name']} ({kind}, "
                     f"{cond_name(bool(model.get('cond')))})")
    if sampler.get("key"):
        parts.append(f"{sampler['key']}, NFE {sampler.get('nfe', '?')}")
    return ": ".join(parts[:1]) + (" - " + ", ".join(parts[1:]) if len(parts) > 1 else "")


def _curves(figure: str, inputs: Sequence[str], paper_baselines: bool, rhos: Sequence[float] | None,
            tolerance: float) -> Any:
    if figure not in CURVE_FIGURES:
        raise UserError(f"--kind curves draws Figures 1, 4 and 5, not --figure {figure}")
    results = load_fid_results(inputs)
    if figure == "1":
        return plot_fid_vs_nfe(results, paper=paper_baselines)
    if figure == "4":
        return plot_fid_vs_rho(results)
    if not tolerance >= 0:
        raise UserError(f"--tolerance must be >= 0, got {tolerance}")
    return plot_best_fid_vs_nfe(results, rhos, tolerance)


def make_figure(
    figure: str,
    kind: str | None = None,            # what to draw; None: the paper's kind of `figure`
    inputs: Sequence[str] = (),         # FID results (curves), diagnostics npz/JSON, sample-set npz
    diagnostics: str | None = None,     # the diagnostics npz or JSON, instead of `inputs`
    samples: str | None = None,         # the sample-set npz, instead of `inputs`
    paper_baselines: bool = True,       # Figure 1: the paper's curves and the quoted baselines
    rhos: Sequence[float] | None = None,    # Figure 5: rho values to take the best over (None: all)
    tolerance: float = DEFAULT_TOLERANCE,   # Figure 5: relative FID tolerance of the optimum
    seed_index: int = 0,                # strips: which seed of the npz
    max_columns: int = 10,              # strips: at most this many steps
    step: int | None = None,            # denoised grids: the step (None: 3, or the last)
    max_seeds: int = 64,                # denoised grids: at most this many seeds
    count: int = 100,                   # sample grids: number of images
    columns: int = 10,                  # sample grids: images per row
    title: str | None = None,           # replaces the figure's own title
) -> Any:
    """Figure `figure` ('1'-'11' or 'curvature') as a matplotlib Figure."""
    figure = str(figure)
    if figure not in FIGURE_TITLES:
        raise UserError(f"--figure must be 1-11 or curvature, got {figure!r}")
    kind = kind or default_kind(figure)
    if kind not in FIGURE_KINDS:
        raise UserError(f"--kind must be one of {', '.join(FIGURE_KINDS)}, got {kind!r}")
    if kind in ("curves", "curvature"):
        if kind == "curves":
            fig = _curves(figure, inputs, paper_baselines, rhos, tolerance)
        else:
            paths = ([diagnostics] if diagnostics else []) + list(inputs)
            if not paths:
                raise UserError(f"--figure {figure} needs diagnostics JSON files")
            fig = plot_curvature(paths)
        if title:
            fig.suptitle(title, fontsize=9)
        return fig
    if kind in ("strip", "denoised-grid"):
        path = _one_input(figure, "diagnostics", diagnostics, inputs, "diagnostics npz")
        npz = Path(path).with_suffix(".npz") if path.endswith(".json") else Path(path)
        diag = load_diagnostics(npz)
        diag = _label_models(diag, diagnostics_kinds(npz))
        if kind == "strip":
            if max_columns < 1:
                raise UserError(f"--max-columns must be positive, got {max_columns}")
            return plot_trajectory_strip(diag, seed_index, max_columns, title or _diag_title(figure, diag))
        if max_seeds < 1:
            raise UserError(f"--max-seeds must be positive, got {max_seeds}")
        return plot_denoised_grid(diag, step, max_seeds, title or _diag_title(figure, diag))
    path = _one_input(figure, "samples", samples, inputs, "sample-set npz")
    if count < 1 or columns < 1:
        raise UserError("--count and --columns must be positive")
    images, labels, meta = load_labelled_images(path)
    return plot_sample_grid(images, labels, count, columns, title or _samples_title(figure, meta))


def write_figure(out_prefix: str | os.PathLike, figure: str, **settings: Any) -> list[Path]:
    """Figure `figure` as `<prefix>.png` and `<prefix>.pdf`, all or none; `settings` as in
    `make_figure`."""
    return save_figure(make_figure(figure, **settings), out_prefix)
