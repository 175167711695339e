"""`python -m aot report table|figure|pool-study|significance|readme|in-flight`: the paper's tables
and figures, the studies beyond it, and the run report (aot.report). One artefact per call, so that
the workflow's rules stay fine grained; every call writes all of its files or none.

    python -m aot report table --table {1,2,3,4,5} --out-prefix results/RUN/tables/table4 \\
        [--rhos 9,27,81,243] [--dataset cifar10] FID.json ...  # -> table4.csv, .md, .tex
    python -m aot report figure --figure {1,4,5} --out-prefix results/RUN/figures/figure5 \\
        [--rhos 9,27,81,243] [--decimals 2] [--no-paper-baselines] FID.json ...
                                                      # -> figure5.png, figure5.pdf
    python -m aot report figure --figure {2,6,7,8} --out-prefix P traj.npz \\
        [--seed-index 0] [--max-columns 10]           # trajectory strip: rows models, columns steps
    python -m aot report figure --figure {3,9} --out-prefix P traj.npz \\
        [--step 3] [--max-seeds 64] [--final-images | --by-class]
                                                      # denoised grid at one early step (0: from sigma_max)
    python -m aot report figure --figure {10,11} --out-prefix P X.npz [Y.npz ...] \\
        [--count 100] [--columns 10]                  # sample grids, a panel per sample set
    python -m aot report figure --figure curvature --out-prefix P traj.json [traj2.json ...]
    python -m aot report pool-study --out-prefix results/RUN/tables/table6 \\
        [--figure-prefix results/RUN/figures/pool_study] [--nfe 7,15,35] [--rhos 9,27,81,243] \\
        --train-dir results/RUN/models/M ... [--diagnostics traj.json ...] FID.json ...
    python -m aot report significance --design DESIGN.json --out-prefix results/RUN/tables/significance \\
        [--figure-prefix results/RUN/figures/significance] FID.json ...   # training replicates, paired
    python -m aot report readme --run-dir results/RUN --config results/RUN/config.json \\
        [--tables results/RUN/tables/table1.csv ...] [--figures results/RUN/figures/figure1.png ...] \\
        [--benchmarks benchmarks/RUN] [--out results/RUN/README.md]
    python -m aot report in-flight --run-dir results/RUN [--out results/RUN/README-in-flight.md]
                                  # Tables 1-5 so far, while the run runs: "pending" where missing

FID arguments may be folders: every `*.json` below them whose "kind" is "fid" is read. The input of
a figure is positional or named (`--diagnostics traj.npz`, `--samples X.npz`). `--rhos` is accepted
by every figure (Figure 5 uses it).
"""

from __future__ import annotations

import argparse
import math

from .options import ArgParser, bool_flag, number_arg

FIGURES = [str(i) for i in range(1, 12)] + ["curvature"]
FIGURE_KINDS = ("curves", "strip", "denoised-grid", "samples", "curvature")


def rho_list(s: str) -> tuple[float, ...]:
    """--rhos: comma-separated positive numbers."""
    try:
        vals = tuple(float(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a comma-separated list of numbers") from None
    if not vals or any(not math.isfinite(v) or v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"{s!r} must name positive numbers")
    return vals


def _wrote(paths) -> None:
    for p in paths:
        print(f"wrote {p}")


def cmd_table(args: argparse.Namespace) -> None:
    from ..report import load_fid_results, write_table

    _wrote(write_table(args.table, load_fid_results(args.results), args.out_prefix, args.rhos, args.dataset))


def cmd_figure(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from ..report import write_figure

    _wrote(write_figure(args.out_prefix, args.figure, kind=args.kind, inputs=args.inputs,
                        diagnostics=args.diagnostics, samples=args.samples,
                        paper_baselines=args.paper_baselines, rhos=args.rhos, decimals=args.decimals,
                        seed_index=args.seed_index, max_columns=args.max_columns, step=args.step,
                        max_seeds=args.max_seeds, final_images=args.final_images, by_class=args.by_class,
                        count=args.count, columns=args.columns, title=args.title))


def nfe_list(s: str) -> tuple[int, ...]:
    """--nfe: comma-separated positive integers."""
    try:
        vals = tuple(int(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a comma-separated list of integers") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"{s!r} must name positive integers")
    return vals


def cmd_pool_study(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from ..report.pool_study import write_pool_study

    _wrote(write_pool_study(args.out_prefix, args.train_dir, args.results, args.diagnostics, args.nfe,
                            args.rhos, figure_prefix=args.figure_prefix))


def cmd_significance(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from ..report.significance import write_significance

    _wrote(write_significance(args.out_prefix, args.design, args.results, figure_prefix=args.figure_prefix))


def cmd_readme(args: argparse.Namespace) -> None:
    from ..report import write_readme

    _wrote([write_readme(args.run_dir, out=args.out, config=args.config, tables=args.tables,
                         figures=args.figures, benchmarks=args.benchmarks)])


def cmd_in_flight(args: argparse.Namespace) -> None:
    from ..report.in_flight import write_in_flight

    _wrote([write_in_flight(args.run_dir, out=args.out)])


def _add_table(sub) -> None:
    t = sub.add_parser("table", help="one table as CSV, Markdown and LaTeX")
    t.add_argument("--table", type=number_arg("--table", int), required=True, choices=[1, 2, 3, 4, 5])
    t.add_argument("--out-prefix", required=True, help="writes PREFIX.csv, PREFIX.md, PREFIX.tex")
    t.add_argument("--rhos", type=rho_list, default=None,
                   help="rho values Table 5 takes the best over (the workflow passes sampling.table5.rho; "
                        "default: every rho measured)")
    t.add_argument("--dataset", default="cifar10",
                   help="the run's dataset; the paper's numbers are CIFAR-10's (another dataset: "
                        "'no published value')")
    t.add_argument("results", nargs="*", help="FID result JSON files or folders of them")
    t.set_defaults(func=cmd_table)


def _add_figure(sub) -> None:
    f = sub.add_parser("figure", help="one figure as PNG and PDF")
    f.add_argument("--figure", required=True, choices=FIGURES)
    f.add_argument("--kind", choices=FIGURE_KINDS, default=None,
                   help="what to draw (default: the paper's kind of that figure number)")
    f.add_argument("--out-prefix", required=True, help="writes PREFIX.png and PREFIX.pdf")
    bool_flag(f, "paper-baselines", True, "Figure 1: draw the paper's curves and quoted baselines (default on)")
    f.add_argument("--rhos", type=rho_list, default=None,
                   help="Figure 5: rho values to take the best over (default: every rho measured)")
    f.add_argument("--decimals", type=number_arg("--decimals", int), default=2,
                   help="Figure 5: the star marks the fewest steps among the FIDs equal to the lowest "
                        "at this many decimals (default 2, as the paper prints them)")
    f.add_argument("--diagnostics", help="diagnostics npz (strips, grids) or its JSON (curvature)")
    f.add_argument("--seed-index", type=number_arg("--seed-index", int), default=0,
                   help="strips: which seed of the npz")
    f.add_argument("--max-columns", type=number_arg("--max-columns", int), default=10,
                   help="strips: at most this many steps")
    f.add_argument("--step", type=number_arg("--step", int), default=None,
                   help="denoised grids: step index, 0 = the single Euler step's estimate from "
                        "sigma_max (default 3)")
    f.add_argument("--max-seeds", type=number_arg("--max-seeds", int), default=64,
                   help="denoised grids: at most this many seeds (per class: a row of at most 8)")
    bool_flag(f, "final-images", False, "denoised grids: first the final images of the EDM networks, from "
              "the same latents (Figure 3, panel a)")
    bool_flag(f, "by-class", False, "denoised grids: a row of panels per class (Figure 9; conditional diagnostics)")
    f.add_argument("--samples", help="sample-set npz (Figures 10, 11); more as positional paths, a panel each")
    f.add_argument("--count", type=number_arg("--count", int), default=100,
                   help="sample grids: number of images per sample set")
    f.add_argument("--columns", type=number_arg("--columns", int), default=10, help="sample grids: images per row")
    f.add_argument("--title", default=None)
    f.add_argument("inputs", nargs="*",
                   help="curves: FID result JSON files or folders; strip/denoised-grid: the "
                        "diagnostics npz; samples: sample-set npz files; curvature: diagnostics JSONs")
    f.set_defaults(func=cmd_figure)


def _add_pool_study(sub) -> None:
    s = sub.add_parser("pool-study", help="Table 6 (the pool-size study) and its figure")
    s.add_argument("--out-prefix", required=True, help="writes PREFIX.csv, PREFIX.md, PREFIX.tex")
    s.add_argument("--figure-prefix", default=None, help="also writes FIGURE_PREFIX.png and .pdf")
    s.add_argument("--train-dir", action="append", required=True,
                   help="a study model's training folder (training_options.json, stats.jsonl); repeat")
    s.add_argument("--diagnostics", action="append", default=[],
                   help="diagnostics JSON with the study's models (curvature); repeat")
    s.add_argument("--nfe", type=nfe_list, default="7,15,35", help="the NFE columns")
    s.add_argument("--rhos", type=rho_list, default=None,
                   help="rho values each NFE takes the best over (default: every rho measured)")
    s.add_argument("results", nargs="*", help="FID result JSON files or folders of them")
    s.set_defaults(func=cmd_pool_study)


def _add_significance(sub) -> None:
    s = sub.add_parser("significance", help="the Significance table and figure (training replicates)",
                       description="EDM-AOT minus EDM over independently seeded training runs, paired by "
                                   "replicate: per setting the mean and interval of each arm, the paired "
                                   "difference with its interval and p-value, and the replicates needed for "
                                   "power (aot.report.significance; docs/significance.md).")
    s.add_argument("--design", required=True,
                   help="the comparisons as JSON (text or a file): parts, arms by replicate, settings")
    s.add_argument("--out-prefix", required=True, help="writes PREFIX.csv, PREFIX.md, PREFIX.tex")
    s.add_argument("--figure-prefix", default=None, help="also writes FIGURE_PREFIX.png and .pdf")
    s.add_argument("results", nargs="*", help="FID result JSON files or folders of them")
    s.set_defaults(func=cmd_significance)


def _add_readme(sub) -> None:
    r = sub.add_parser("readme", help="the run report README.md")
    r.add_argument("--run-dir", required=True)
    r.add_argument("--out", default=None, help="default RUN_DIR/README.md")
    r.add_argument("--config", default=None, help="the config the run used (JSON or YAML)")
    r.add_argument("--tables", nargs="*", default=None,
                   help="table files or prefixes (default RUN_DIR/tables/*.csv)")
    r.add_argument("--figures", nargs="*", default=None,
                   help="figure PNG files or prefixes (default RUN_DIR/figures/*.png)")
    r.add_argument("--benchmarks", default=None, help="folder of Snakemake benchmark TSV files")
    r.set_defaults(func=cmd_readme)


def _add_in_flight(sub) -> None:
    r = sub.add_parser("in-flight", help="Tables 1-5 from the FID results so far, while the run runs",
                       description="Tables 1-5 of a run that is still running, from RUN_DIR/config.json "
                                   "and the FID results under RUN_DIR/fid that exist: \"pending\" in the "
                                   "cells still missing, per table how many sample sets are measured. "
                                   "Needs no Snakemake (whose lock blocks a second one) and no figures.")
    r.add_argument("--run-dir", required=True, help="the run's results folder, results/RUN")
    r.add_argument("--out", default=None, help="default RUN_DIR/README-in-flight.md")
    r.set_defaults(func=cmd_in_flight)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("report", help="the paper's tables and figures, and the run report",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="report_command", required=True, parser_class=ArgParser, metavar="WHAT")
    _add_table(sub)
    _add_figure(sub)
    _add_pool_study(sub)
    _add_significance(sub)
    _add_readme(sub)
    _add_in_flight(sub)
