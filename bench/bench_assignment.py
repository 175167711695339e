"""Assignment benchmark: time per pool of the AOT pairing, our solver against scipy and POT.

For each case (pool size N, unconditional or class-wise with 10 classes, 3x32x32 vectors) it
draws N images and N noise vectors from N(0, I), builds the float64 cost matrix once, and times,
on the same matrix and interleaved over --repeats rounds:

  ours   aot.pairing.solve_assignment(C, "auto")   (what training uses)
  lapjv  plain lap.lapjv on the dense matrix       (for reference)
  scipy  scipy.optimize.linear_sum_assignment      (the paper's Hungarian)
  emd    ot.emd with uniform weights               (POT; TorchCFM's minibatch-OT solver)

Class-wise cases solve one problem per class (the class blocks of the cost matrix). Every result
is checked against scipy's optimal total cost; emd's relative gap is reported when it stops short
(it has an iteration limit). Times are the minimum over the rounds (the machine may be shared);
ratios are scipy time / solver time from the same run. The cost-matrix time (ours, float64 matmul
on the CPU) is reported separately, since it is the same for every solver.

    python bench/bench_assignment.py --out bench/results/assignment.json
    python bench/bench_assignment.py --quick          # CI-sized
    python bench/bench_assignment.py --sweep          # also the size sweep behind "auto"

Images: "images" are smooth random images in [-1, 1] (bilinear 4x4 -> 32x32 fields through
tanh, closer to natural images than i.i.d. pixels), "uniform" i.i.d. U(-1, 1) pixels,
"gaussian" i.i.d. N(0, 1) pixels (the hardest case for the warm start and the easiest for scipy).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from aot.cli.options import cli_main
from aot.errors import UserError
from aot.files import write_json_atomic
from aot.pairing import auto_solver, cost_matrix, solve_assignment
from aot.runtime import environment_info

SOLVER_NAMES = ("ours", "lapjv", "scipy", "emd")


def make_images(kind: str, n: int, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    if kind == "images":
        c, h, w = shape
        z = torch.randn(n, c, max(1, h // 8), max(1, w // 8), generator=g)
        return torch.nn.functional.interpolate(z, size=(h, w), mode="bilinear",
                                               align_corners=False).tanh()
    if kind == "uniform":
        return torch.rand(n, *shape, generator=g) * 2 - 1
    if kind == "gaussian":
        return torch.randn(n, *shape, generator=g)
    raise UserError(f"--data: unknown image kind {kind!r} (images, uniform, gaussian)")


def solve_emd(C: np.ndarray) -> tuple[np.ndarray, float, str | None]:
    import ot

    n = C.shape[0]
    a = np.full(n, 1.0 / n)
    G, log = ot.emd(a, a, C, log=True)
    total = float((G * C).sum() * n)
    return G.argmax(axis=1), total, log.get("warning")


def blocks_of(labels: np.ndarray | None, n: int) -> list[np.ndarray]:
    if labels is None:
        return [np.arange(n)]
    return [np.nonzero(labels == c)[0] for c in np.unique(labels)]


def run_solver(name: str, C: np.ndarray, blocks: list[np.ndarray]) -> tuple[float, float, str | None]:
    """Solve every block; return (seconds, total cost, warning)."""
    total, warn = 0.0, None
    subs = [C if len(blocks) == 1 else C[np.ix_(b, b)] for b in blocks]
    t0 = time.perf_counter()
    for sub in subs:
        if name == "ours":
            p = solve_assignment(sub, "auto")
        elif name == "lapjv":
            p = solve_assignment(sub, "lapjv")
        elif name == "scipy":
            p = solve_assignment(sub, "scipy")
        elif name == "emd":
            p, t, w = solve_emd(sub)
            total += t
            warn = warn or w
            continue
        total += float(sub[np.arange(len(p)), p].sum())
    return time.perf_counter() - t0, total, warn


def bench_case(kind: str, n: int, classes: int, shape, repeats: int, solvers, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    x = make_images(kind, n, shape, g)
    y = torch.randn(x.shape, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g).numpy() if classes else None
    blocks = blocks_of(labels, n)
    cost_times = []
    cost_matrix(x[:8], y[:8], "l2")  # warm-up (first-call overheads)
    for _ in range(repeats):
        t0 = time.perf_counter()
        if labels is None:
            C = cost_matrix(x, y, "l2").numpy()
        else:  # class-wise: only the diagonal blocks are needed
            [cost_matrix(x[b], y[b], "l2").numpy() for b in blocks]
        cost_times.append(time.perf_counter() - t0)
    if labels is not None:
        C = cost_matrix(x, y, "l2").numpy()
    times: dict[str, list[float]] = {s: [] for s in solvers}
    totals: dict[str, float] = {}
    warnings: dict[str, str | None] = {}
    for s in solvers:  # untimed warm-up round: imports, first-call overheads
        run_solver(s, C[:64, :64] if len(blocks) == 1 else C, blocks if len(blocks) > 1 else [np.arange(min(64, n))])
    for _ in range(repeats):
        for s in solvers:  # interleaved, so that all solvers see the same machine load
            dt, tot, warn = run_solver(s, C, blocks)
            times[s].append(dt)
            totals[s], warnings[s] = tot, warn
    opt = totals["scipy"]
    row = {
        "data": kind, "N": n, "classes": classes, "mode": "classwise" if classes else "unconditional",
        "shape": list(shape), "repeats": repeats,
        "auto_solver": sorted({auto_solver(len(b)) for b in blocks}),
        "block_sizes": [int(len(b)) for b in blocks],
        "cost_matrix_s": min(cost_times),
        "solvers": {},
    }
    for s in solvers:
        gap = (totals[s] - opt) / opt
        row["solvers"][s] = {
            "time_s": min(times[s]), "median_s": statistics.median(times[s]), "all_s": times[s],
            "total_cost": totals[s], "rel_gap": gap, "optimal": abs(gap) <= 1e-9,
            "warning": warnings[s],
            "speedup_vs_scipy": min(times["scipy"]) / min(times[s]),
        }
    return row


def sweep(sizes, kinds, shape, repeats, seed) -> list[dict]:
    rows = []
    for kind in kinds:
        for n in sizes:
            g = torch.Generator().manual_seed(seed + n)
            x = make_images(kind, n, shape, g)
            C = cost_matrix(x, torch.randn(x.shape, generator=g), "l2").numpy()
            names = ("scipy", "lapjv", "lapjv-warm")
            res = {name: float("inf") for name in names}
            for name in names:
                solve_assignment(C, name)  # warm-up
            reps = max(repeats, 5) if n >= 256 else max(repeats, 20)
            for _ in range(reps):  # interleaved rounds
                for name in names:
                    t0 = time.perf_counter()
                    solve_assignment(C, name)
                    res[name] = min(res[name], time.perf_counter() - t0)
            rows.append({"data": kind, "N": n, "auto": auto_solver(n), **{f"{k}_s": v for k, v in res.items()}})
            print(f"  sweep {kind:8s} N={n:5d}  scipy {res['scipy']*1e3:9.2f} ms  lapjv "
                  f"{res['lapjv']*1e3:9.2f} ms  lapjv-warm {res['lapjv-warm']*1e3:9.2f} ms  "
                  f"auto={auto_solver(n)}", flush=True)
    return rows


def print_table(rows, solvers) -> None:
    times = " ".join(f"{s + ' ms':>10s}" for s in solvers)
    ratios = " ".join(f"{'scipy/' + s:>12s}" for s in solvers if s != "scipy")
    head = f"{'data':8s} {'mode':13s} {'N':>5s} {'costmat':>9s} " + times + "   " + ratios
    print(head)
    print("-" * len(head))
    for r in rows:
        sv = r["solvers"]
        cells = " ".join(f"{sv[s]['time_s'] * 1e3:10.1f}" for s in solvers)
        ratios = " ".join(f"{sv[s]['speedup_vs_scipy']:11.2f}x" for s in solvers if s != "scipy")
        print(f"{r['data']:8s} {r['mode']:13s} {r['N']:5d} {r['cost_matrix_s'] * 1e3:9.1f} {cells}   {ratios}")
    print()
    for r in rows:
        for s in solvers:
            v = r["solvers"][s]
            if not v["optimal"]:
                print(f"note: {s} on {r['data']} {r['mode']} N={r['N']} stopped short of the optimum: "
                      f"relative gap {v['rel_gap']:.2e}" + (f" ({v['warning']})" if v["warning"] else ""))


@cli_main
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--quick", action="store_true", help="CI-sized problems, one round")
    ap.add_argument("--sizes", default=None, help="unconditional pool sizes (default 512,2048,4096)")
    ap.add_argument("--classwise-size", type=int, default=None, help="class-wise pool size (2048)")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--data", default=None, help="image kinds: images,uniform,gaussian")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds per case (3)")
    ap.add_argument("--no-emd", action="store_true", help="skip POT's ot.emd")
    ap.add_argument("--sweep", action="store_true", help="also time scipy/lapjv/lapjv-warm over sizes")
    ap.add_argument("--sweep-sizes", default=None, help="sizes for --sweep (comma-separated)")
    ap.add_argument("--sweep-only", action="store_true", help="run only the --sweep table")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: the solvers are single-threaded, and one thread "
                         "keeps timings stable on a shared machine; 0 = torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    shape = (3, 32, 32)
    if args.quick:
        sizes, cw, kinds, repeats = [64, 256], 256, ["images"], 3
        sweep_sizes = [16, 64, 256]
    else:
        sizes, cw, kinds, repeats = [512, 2048, 4096], 2048, ["images", "uniform", "gaussian"], 3
        sweep_sizes = [16, 32, 64, 128, 192, 256, 320, 384, 448, 512, 768, 1024, 1536]
    if args.sizes:
        try:
            sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
        except ValueError:
            raise UserError(f"--sizes: {args.sizes!r} is not a comma-separated list of integers") from None
    cw = args.classwise_size if args.classwise_size is not None else cw
    kinds = args.data.split(",") if args.data else kinds
    repeats = args.repeats or repeats
    if any(n < 1 for n in sizes) or cw < 0 or repeats < 1 or args.classes < 1:
        raise UserError("sizes, --repeats and --classes must be positive")
    for k in kinds:
        make_images(k, 1, shape, torch.Generator())  # validate before any output
    solvers = list(SOLVER_NAMES)
    if args.no_emd:
        solvers.remove("emd")
    else:
        try:
            import ot  # noqa: F401
        except ImportError:
            raise UserError("POT is not installed (pip install pot==0.9.7.post1), or pass --no-emd") from None
    if args.sweep_sizes:
        try:
            sweep_sizes = [int(v) for v in args.sweep_sizes.split(",") if v.strip()]
        except ValueError:
            raise UserError(f"--sweep-sizes: {args.sweep_sizes!r} is not a list of integers") from None
    if args.sweep_only:
        args.sweep, sizes, cw = True, [], 0
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"assignment benchmark: torch threads {torch.get_num_threads()}, repeats {repeats}, "
          f"vectors {'x'.join(map(str, shape))}", flush=True)
    rows = []
    for kind in kinds:
        cases = [(n, 0) for n in sizes] + ([(cw, args.classes)] if cw else [])
        for n, classes in cases:
            row = bench_case(kind, n, classes, shape, repeats, solvers, args.seed)
            rows.append(row)
            sv = row["solvers"]
            print(f"  {kind:8s} {row['mode']:13s} N={n:5d}: " + ", ".join(
                f"{s} {sv[s]['time_s'] * 1e3:.1f} ms" for s in solvers), flush=True)
    if rows:
        print()
        print_table(rows, solvers)
    sweep_rows = sweep(sweep_sizes, kinds, shape, repeats, args.seed) if args.sweep else None
    bad = [(r["data"], r["N"], s) for r in rows for s in solvers
           if s != "emd" and not r["solvers"][s]["optimal"]]
    result = {
        "kind": "bench-assignment", "cost": "l2", "time": "min over rounds, seconds",
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "torch_threads": torch.get_num_threads(), "rows": rows, "sweep": sweep_rows,
        "env": environment_info(),
    }
    if args.out:
        write_json_atomic(args.out, result)
        print(f"wrote {args.out}")
    if bad:
        raise SystemExit(f"non-optimal results from exact solvers: {bad}")


if __name__ == "__main__":
    main()
