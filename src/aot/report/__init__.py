"""Tables, figures and the run report of the EDM-AOT reproduction, next to the paper's numbers.

Everything here is made from the artefacts of the other stages: the FID result JSON files of
`aot fid measure` (one per sample set and repeat), the diagnostics npz/JSON of `aot diagnostics`,
the sample-set npz files of `aot generate`, Snakemake's benchmark TSV files and the run's config.
One concern a module:

    results   FID result files -> one row per sample set (min, mean, std, n of the repeats); the
              paper's numbers (`aot/paper/*.csv`)
    tables    Tables 1-5 as DataFrames, ours beside the paper's; the paper's EDM rows become two,
              "EDM (published network)" (EDM's official pickle) and "EDM (retrained here, AOT
              off, same recipe)"; another dataset than CIFAR-10: "no published value"
    render    CSV, Markdown and LaTeX text; writing tables and figures, all files or none
    curves    Figures 1, 4, 5 (FID vs NFE and rho) and the trajectory curvature
    images    trajectory strips, denoised grids, sample grids (Figures 2, 3, 6-11)
    figures   the figures by number: titles, kinds, `make_figure`
    readme    the run's README.md: tables inline, figures linked, compute time, settings
    in_flight Tables 1-5 of a run still running (README-in-flight.md): the results so far,
              "pending" where a sample set has none yet; the final tables and report unchanged

A table or figure with no measurement at all is still made (paper values only): missing
measurements are empty cells, never errors. Bad input fails with one line naming the file before
anything is written. When the results use the offline feature network ("offline-classifier"),
every table, figure and the report carry `OFFLINE_CAVEAT` and leave out the difference to the paper.
The command line is `python -m aot report table|figure|readme|in-flight` (aot/cli/report.py).
"""

from .curves import minimal_step_optimum, plot_best_fid_vs_nfe, plot_curvature, plot_fid_vs_nfe, plot_fid_vs_rho
from .figures import make_figure, write_figure
from .images import (
    plot_denoised_by_class,
    plot_denoised_grid,
    plot_sample_grid,
    plot_sample_grids,
    plot_trajectory_strip,
)
from .in_flight import write_in_flight
from .readme import benchmark_stage, write_readme
from .render import read_table_csv, save_figure
from .results import (
    NO_PUBLISHED_VALUE,
    OFFLINE_CAVEAT,
    PAPER_FILES,
    PUBLISHED_EDM,
    RETRAINED_EDM,
    aggregate,
    as_aggregate,
    load_fid_results,
    paper_table,
    parse_fid_result,
)
from .tables import QUOTED_BASELINES, TABLE_TITLES, make_table, write_table

__all__ = [
    "NO_PUBLISHED_VALUE", "OFFLINE_CAVEAT", "PAPER_FILES", "PUBLISHED_EDM", "RETRAINED_EDM",
    "QUOTED_BASELINES", "TABLE_TITLES", "aggregate", "as_aggregate",
    "benchmark_stage", "load_fid_results", "make_figure", "make_table", "minimal_step_optimum", "paper_table",
    "parse_fid_result", "plot_best_fid_vs_nfe", "plot_curvature", "plot_denoised_by_class", "plot_denoised_grid",
    "plot_fid_vs_nfe", "plot_fid_vs_rho", "plot_sample_grid", "plot_sample_grids", "plot_trajectory_strip",
    "read_table_csv", "save_figure", "write_figure",
    "write_in_flight", "write_readme", "write_table",
]
