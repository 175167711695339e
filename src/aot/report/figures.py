"""The paper's figures by number: titles, the kind each is drawn as, and one call that draws it.

`kind` picks what to draw; by default the paper's kind for the figure number (1, 4, 5: curves;
2, 6, 7, 8: strip; 3, 9: denoised-grid; 10, 11: samples; curvature: curvature). Curves read FID
result files or folders of them; strips and denoised grids the diagnostics npz (its JSON given
means the npz beside it); samples one or more sample-set npz files (a panel each); curvature one
or more diagnostics JSONs. Strips and grids label each model with its name and kind (EDM-AOT,
"EDM (published network)", "EDM (retrained here, AOT off, same recipe)") from the diagnostics JSON
beside the npz.

The paper's settings (the workflow's FIGURES in workflow/rules/report.smk; docs/fidelity.md,
section 8): Figure 1 one panel per part, unconditional and conditional; Figure 3 (a) the final
images of the EDM networks (`final_images`: the diagnostics' last states, the same latents as the
other panels) beside the single Euler step's estimate from sigma_max of every network (step 0,
`step=0`); Figure 9 that estimate per class (`by_class`); Figure 6 unconditional at 10 steps,
Figures 2 and 7 unconditional and Figure 8 conditional at 18 steps, all rho 7; Figure 5 marks the
fewest steps among the FIDs tied at the paper's two decimals (`decimals=2`); Figures 10 and 11 the
sample sets of Table 1 or 2's settings, a panel each.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..files import read_json
from .curves import PAPER_DECIMALS, plot_best_fid_vs_nfe, plot_curvature, plot_fid_vs_nfe, plot_fid_vs_rho
from .images import (
    load_diagnostics,
    load_labelled_images,
    plot_denoised_by_class,
    plot_denoised_grid,
    plot_sample_grids,
    plot_trajectory_strip,
    sample_subset,
)
from .render import save_figure
from .results import cond_name, is_published_source, kind_name, load_fid_results

FIGURE_TITLES = {
    "1": "Figure 1: FID vs NFE, unconditional and conditional, EDM and EDM-AOT against quoted baselines",
    "2": "Figure 2: single-step denoised estimates along the sampling path",
    "3": "Figure 3: EDM's final images and the single Euler step's denoised estimate from sigma_max, "
         "EDM vs EDM-AOT",
    "4": "Figure 4: FID vs rho at 18, 14 and 8 steps",
    "5": "Figure 5: best FID over rho vs NFE, the fewest steps reaching the lowest FID (two decimals) marked",
    "6": "Figure 6: single-step denoised estimates along the sampling path",
    "7": "Figure 7: single-step denoised estimates along the sampling path",
    "8": "Figure 8: single-step denoised estimates along the sampling path",
    "9": "Figure 9: the single Euler step's denoised estimate from sigma_max per class, EDM vs EDM-AOT",
    "10": "Figure 10: unconditional samples at different settings",
    "11": "Figure 11: class-conditional samples at different settings",
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


def _diagnostics_json(npz: str | os.PathLike) -> dict | None:
    path = Path(npz).with_suffix(".json")
    return read_json(path, "diagnostics JSON") if path.is_file() else None


def final_label(npz: str | os.PathLike, steps: int) -> str:
    """'final image, 18 steps, rho 7 (NFE 35)' from the sampler in the diagnostics JSON beside the
    npz; 'final image (18 steps)' without it."""
    obj = _diagnostics_json(npz)
    sampler = obj.get("sampler") if isinstance(obj, dict) else None
    if (isinstance(sampler, dict) and isinstance(sampler.get("nfe"), int)
            and isinstance(sampler.get("rho"), (int, float))):
        return f"final image, {steps} steps, rho {sampler['rho']:g} (NFE {sampler['nfe']})"
    return f"final image ({steps} steps)"


def diagnostics_kinds(npz: str | os.PathLike) -> dict[str, str]:
    """Model name -> kind (`kind_name`) from the diagnostics JSON beside the npz; {} without it."""
    path = Path(npz).with_suffix(".json")
    obj = _diagnostics_json(npz)
    if obj is None:
        return {}
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


def _samples_parts(meta: dict) -> list[str]:
    """'name (kind, part)' and 'key, NFE n' of a sample set's meta, where known."""
    model = meta.get("model", {}) if isinstance(meta, dict) else {}
    sampler = meta.get("sampler", {}) if isinstance(meta, dict) else {}
    parts = []
    if model.get("name"):
        kind = kind_name(bool(model.get("aot")), is_published_source(model.get("source")))
        parts.append(f"{model['name']} ({kind}, "
                     f"{cond_name(bool(model.get('cond')))})")
    if sampler.get("key"):
        parts.append(f"{sampler['key']}, NFE {sampler.get('nfe', '?')}")
    return parts


def _samples_title(figure: str, meta: dict) -> str:
    parts = [FIGURE_TITLES[figure], *_samples_parts(meta)]
    return ": ".join(parts[:1]) + (" - " + ", ".join(parts[1:]) if len(parts) > 1 else "")


def _samples_figure(figure: str, paths: Sequence[str], count: int, columns: int, title: str | None) -> Any:
    """One panel per sample set (Figures 10, 11: the settings of Table 1 or 2), titled with its
    model, kind and sampler; one set alone is titled as the figure."""
    sets = []
    for path in paths:  # each set's shown images only (a set is 50,000 images)
        images, labels, meta = load_labelled_images(path)
        sets.append((*sample_subset(images, labels, count, columns), meta))
    if len(sets) == 1:
        images, labels, meta = sets[0]
        return plot_sample_grids([(images, labels, "")], count, columns, title or _samples_title(figure, meta))
    panels = [(images, labels, "\n".join(_samples_parts(meta)) or Path(p).name)
              for (images, labels, meta), p in zip(sets, paths)]
    return plot_sample_grids(panels, count, columns, title or FIGURE_TITLES[figure])


def _edm_models(names: Sequence[str], kinds: dict[str, str]) -> list[int]:
    """The EDM networks among the diagnostics' models (by their kind in the JSON beside the npz);
    without that JSON the first model (the workflow puts EDM first)."""
    if not kinds:
        return [0]
    return [i for i, n in enumerate(names) if n in kinds and kinds[n] != kind_name(True)]


def _curves(figure: str, inputs: Sequence[str], paper_baselines: bool, rhos: Sequence[float] | None,
            decimals: int) -> Any:
    if figure not in CURVE_FIGURES:
        raise UserError(f"--kind curves draws Figures 1, 4 and 5, not --figure {figure}")
    results = load_fid_results(inputs)
    if figure == "1":
        return plot_fid_vs_nfe(results, paper=paper_baselines)
    if figure == "4":
        return plot_fid_vs_rho(results)
    if not 0 <= decimals <= 6:
        raise UserError(f"--decimals must be 0-6, got {decimals}")
    return plot_best_fid_vs_nfe(results, rhos, decimals)


def make_figure(
    figure: str,
    kind: str | None = None,            # what to draw; None: the paper's kind of `figure`
    inputs: Sequence[str] = (),         # FID results (curves), diagnostics npz/JSON, sample-set npz
    diagnostics: str | None = None,     # the diagnostics npz or JSON, instead of `inputs`
    samples: str | None = None,         # the sample-set npz, instead of `inputs`
    paper_baselines: bool = True,       # Figure 1: the paper's curves and the quoted baselines
    rhos: Sequence[float] | None = None,    # Figure 5: rho values to take the best over (None: all)
    decimals: int = PAPER_DECIMALS,     # Figure 5: FIDs equal at these decimals tie for the optimum
    seed_index: int = 0,                # strips: which seed of the npz
    max_columns: int = 10,              # strips: at most this many steps
    step: int | None = None,            # denoised grids: the step (None: 3, or the last; 0: single Euler step)
    max_seeds: int = 64,                # denoised grids: at most this many seeds (per class: a row of 8 at most)
    final_images: bool = False,         # denoised grids: the EDM networks' final images first (Figure 3 a)
    by_class: bool = False,             # denoised grids: a row of panels per class (Figure 9)
    count: int = 100,                   # sample grids: number of images (per sample set)
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
            fig = _curves(figure, inputs, paper_baselines, rhos, decimals)
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
        kinds = diagnostics_kinds(npz)
        names = list(diag["names"])
        diag = _label_models(diag, kinds)
        if kind == "strip":
            if max_columns < 1:
                raise UserError(f"--max-columns must be positive, got {max_columns}")
            return plot_trajectory_strip(diag, seed_index, max_columns, title or _diag_title(figure, diag))
        if max_seeds < 1:
            raise UserError(f"--max-seeds must be positive, got {max_seeds}")
        if by_class and final_images:
            raise UserError("--by-class and --final-images draw different grids; give one")
        if by_class:
            return plot_denoised_by_class(diag, step, min(8, max_seeds), title or _diag_title(figure, diag))
        final = _edm_models(names, kinds) if final_images else ()
        return plot_denoised_grid(diag, step, max_seeds, title or _diag_title(figure, diag), final=final,
                                  final_label=final_label(npz, diag["x0"][0].shape[1]))
    paths = ([samples] if samples else []) + [str(p) for p in inputs]
    if not paths:
        raise UserError(f"--figure {figure} needs at least one sample-set npz (--samples or positional paths)")
    if count < 1 or columns < 1:
        raise UserError("--count and --columns must be positive")
    return _samples_figure(figure, paths, count, columns, title)


def write_figure(out_prefix: str | os.PathLike, figure: str, **settings: Any) -> list[Path]:
    """Figure `figure` as `<prefix>.png` and `<prefix>.pdf`, all or none; `settings` as in
    `make_figure`."""
    return save_figure(make_figure(figure, **settings), out_prefix)
