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
    python bench/bench_assignment.py --large --out bench/results/assignment-large.json
                                                      # N 8192/16384, class-wise 10/100/1000 classes
    python bench/bench_assignment.py --pool-wait --out bench/results/pool-wait.json
                                                      # does the builder keep up with a GPU step?

Large pools (`--large`): the float64 cost matrix of N = 16384 takes 2 GiB, and scipy's time grows
about as N^3, so scipy (the reference every result is checked against) runs only up to
`--scipy-max-n` for unconditional pools; above it the row is marked unverified. Class-wise pools
solve one problem per class; scipy checks every class block.

Pool wait (`--pool-wait`): pools of N pairs of 3x32x32 vectors are built by `aot.pairing.PairPool`'s
own `build_pool` (drawing, noise, cost matrix, assignment) in background threads while a consumer
stands in for the GPU training step (`--step-ms` per minibatch of B, sleeping, i.e. not holding the
GIL, as a thread waiting on CUDA). Reported per setting: the consumer's mean wait per pool (after
the first pool) and its share of the consumer's time. `--workers 1` with one pool built ahead is
what training does now (`PairPool(prefetch=1)`); more workers build several pools at once.

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


def run_solver(name: str, C: np.ndarray | list[np.ndarray],
               blocks: list[np.ndarray]) -> tuple[float, float, str | None]:
    """Solve every block (C: the whole matrix, or the list of class blocks' matrices); return
    (seconds, total cost, warning)."""
    total, warn = 0.0, None
    subs = C if isinstance(C, list) else [C if len(blocks) == 1 else C[np.ix_(b, b)] for b in blocks]
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


def bench_case(kind: str, n: int, classes: int, shape, repeats: int, solvers, seed: int,
               scipy_max_n: int = 0) -> dict:
    """Time every solver on one pool; scipy (when it runs) is the optimum the others must match."""
    g = torch.Generator().manual_seed(seed)
    x = make_images(kind, n, shape, g)
    y = torch.randn(x.shape, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g).numpy() if classes else None
    blocks = blocks_of(labels, n)
    solvers = list(solvers)
    if "scipy" in solvers and scipy_max_n and max(len(b) for b in blocks) > scipy_max_n:
        solvers.remove("scipy")
    cost_times = []
    cost_matrix(x[:8], y[:8], "l2")  # warm-up (first-call overheads)
    C = None
    for _ in range(repeats):
        C = None  # free the previous matrix before the next is built
        t0 = time.perf_counter()
        if labels is None:
            C = cost_matrix(x, y, "l2").numpy()
        else:  # class-wise: only the diagonal blocks are needed (a list of the blocks' matrices)
            C = [cost_matrix(x[b], y[b], "l2").numpy() for b in blocks]
        cost_times.append(time.perf_counter() - t0)
    times: dict[str, list[float]] = {s: [] for s in solvers}
    totals: dict[str, float] = {}
    warnings: dict[str, str | None] = {}
    for s in solvers:  # untimed warm-up round: imports, first-call overheads
        run_solver(s, [C[:64, :64]] if len(blocks) == 1 else C[:1], blocks[:1])
    for _ in range(repeats):
        for s in solvers:  # interleaved, so that all solvers see the same machine load
            dt, tot, warn = run_solver(s, C, blocks)
            times[s].append(dt)
            totals[s], warnings[s] = tot, warn
    opt = totals.get("scipy")
    row = {
        "data": kind, "N": n, "classes": classes, "mode": "classwise" if classes else "unconditional",
        "shape": list(shape), "repeats": repeats,
        "auto_solver": sorted({auto_solver(len(b)) for b in blocks}),
        "block_sizes": [int(len(b)) for b in blocks],
        "cost_matrix_s": min(cost_times),
        "verified_against_scipy": opt is not None,
        "solvers": {},
    }
    for s in solvers:
        gap = (totals[s] - opt) / opt if opt is not None else None
        row["solvers"][s] = {
            "time_s": min(times[s]), "median_s": statistics.median(times[s]), "all_s": times[s],
            "total_cost": totals[s], "rel_gap": gap, "optimal": None if gap is None else abs(gap) <= 1e-9,
            "warning": warnings[s],
            "speedup_vs_scipy": min(times["scipy"]) / min(times[s]) if opt is not None else None,
        }
    return row


# ------------------------------------------------------------------------------------------------
# Pool wait: can the background builder keep up with a training step?


def pool_wait(n: int, batch_gpu: int, classes: int, step_ms: float, workers: int, ahead: int,
              pools: int, seed: int, shape=(3, 32, 32)) -> dict:
    """Consumer wait per pool when `workers` threads build pools (PairPool.build_pool) ahead.

    The consumer takes N / B minibatches per pool, each `step_ms` of sleep (a GPU step the
    Python thread only waits for). Pool k is submitted once pool k - ahead - workers + 1 is being
    served, so at most `workers` are built at once and `ahead` finished ones wait. workers=1,
    ahead=1 is PairPool's background builder with prefetch=1 (the training default).
    """
    from concurrent.futures import ThreadPoolExecutor

    from aot.pairing import PairPool

    def draw(pool_index: int, gen: torch.Generator):
        images = make_images("images", n, shape, gen)
        labels = torch.randint(0, classes, (n,), generator=gen) if classes else None
        return images, labels, None

    pool = PairPool(draw, pool_size=n, batch_gpu=batch_gpu, aot=True, cost="l2",
                    labels_mode="classwise" if classes else None, seed=seed, background=False)
    steps = n // batch_gpu
    waits, builds = [], []
    t_start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as ex:
        futures = {k: ex.submit(pool.build_pool, k) for k in range(min(pools, workers + ahead))}
        for k in range(pools):
            t0 = time.perf_counter()
            built = futures.pop(k).result()
            waits.append(time.perf_counter() - t0)
            builds.append(built.stats["build_s"])
            nxt = k + workers + ahead
            if nxt < pools:
                futures[nxt] = ex.submit(pool.build_pool, nxt)
            del built
            for _ in range(steps):
                time.sleep(step_ms / 1e3)
    total = time.perf_counter() - t_start
    steady = waits[1:]  # pool 0 is built while nothing can overlap it
    serve_s = steps * step_ms / 1e3
    mean_wait = statistics.mean(steady) if steady else float("nan")
    return {"N": n, "B": batch_gpu, "classes": classes, "mode": "classwise" if classes else "unconditional",
            "step_ms": step_ms, "workers": workers, "ahead": ahead, "pools": pools,
            "serve_s_per_pool": serve_s, "build_s_mean": statistics.mean(builds),
            "wait_s_per_pool": mean_wait, "wait_s_all": waits,
            "stall_share": mean_wait / (mean_wait + serve_s) if steady else float("nan"),
            "total_s": total}


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


def _ms(v: float | None) -> str:
    return f"{v * 1e3:10.1f}" if v is not None else f"{'-':>10s}"


def print_table(rows, solvers) -> None:
    times = " ".join(f"{s + ' ms':>10s}" for s in solvers)
    ratios = " ".join(f"{'scipy/' + s:>12s}" for s in solvers if s != "scipy")
    head = f"{'data':8s} {'mode':13s} {'N':>5s} {'cls':>4s} {'costmat':>9s} " + times + "   " + ratios
    print(head)
    print("-" * len(head))
    for r in rows:
        sv = r["solvers"]
        cells = " ".join(_ms(sv[s]["time_s"]) if s in sv else _ms(None) for s in solvers)
        ratios = " ".join(f"{sv[s]['speedup_vs_scipy']:11.2f}x" if sv.get(s, {}).get("speedup_vs_scipy")
                          else f"{'-':>12s}" for s in solvers if s != "scipy")
        print(f"{r['data']:8s} {r['mode']:13s} {r['N']:5d} {r['classes']:4d} {r['cost_matrix_s'] * 1e3:9.1f} "
              f"{cells}   {ratios}")
    print()
    for r in rows:
        if not r["verified_against_scipy"]:
            print(f"note: {r['data']} {r['mode']} N={r['N']}: scipy not run (above --scipy-max-n), "
                  "optimality not checked")
        for s, v in r["solvers"].items():
            if v["optimal"] is False:
                print(f"note: {s} on {r['data']} {r['mode']} N={r['N']} stopped short of the optimum: "
                      f"relative gap {v['rel_gap']:.2e}" + (f" ({v['warning']})" if v["warning"] else ""))


def int_list(text: str, name: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{name}: {text!r} is not a comma-separated list of integers") from None
    if not vals or any(v < 1 for v in vals):
        raise UserError(f"{name}: {text!r} must list positive integers")
    return vals


@cli_main
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--quick", action="store_true", help="CI-sized problems, one round")
    ap.add_argument("--large", action="store_true",
                    help="large pools: N 8192 and 16384 unconditional, 16384 class-wise with 10, 100 "
                         "and 1000 classes; smooth images, ours against scipy, one round")
    ap.add_argument("--sizes", default=None, help="unconditional pool sizes (default 512,2048,4096; 0: none)")
    ap.add_argument("--classwise-size", default=None, help="class-wise pool sizes (default 2048; 0: none)")
    ap.add_argument("--classes", default=None, help="class counts of the class-wise pools (default 10)")
    ap.add_argument("--data", default=None, help="image kinds: images,uniform,gaussian")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds per case (3)")
    ap.add_argument("--solvers", default=None, help=f"solvers to time, of {','.join(SOLVER_NAMES)} (default all)")
    ap.add_argument("--scipy-max-n", type=int, default=None,
                    help="largest problem scipy solves (0: no limit; --large: 8192); above it the "
                         "row is unverified")
    ap.add_argument("--no-emd", action="store_true", help="skip POT's ot.emd")
    ap.add_argument("--sweep", action="store_true", help="also time scipy/lapjv/lapjv-warm over sizes")
    ap.add_argument("--sweep-sizes", default=None, help="sizes for --sweep (comma-separated)")
    ap.add_argument("--sweep-only", action="store_true", help="run only the --sweep table")
    ap.add_argument("--pool-wait", action="store_true",
                    help="only the pool-wait study: builder threads against a simulated training step")
    ap.add_argument("--step-ms", default="10,30",
                    help="pool wait: simulated training step per minibatch, ms (comma-separated)")
    ap.add_argument("--batch-gpu", type=int, default=32, help="pool wait: minibatch B")
    ap.add_argument("--workers", default="1,2", help="pool wait: builder threads (comma-separated)")
    ap.add_argument("--pools", type=int, default=4, help="pool wait: pools served per setting")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: the solvers are single-threaded, and one thread "
                         "keeps timings stable on a shared machine; 0 = torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    shape = (3, 32, 32)
    classes = [10]
    scipy_max_n = 0
    solvers = list(SOLVER_NAMES)
    if args.quick:
        sizes, cw, kinds, repeats = [64, 256], [256], ["images"], 3
        sweep_sizes = [16, 64, 256]
    elif args.large:
        sizes, cw, kinds, repeats = [8192, 16384], [16384], ["images"], 1
        classes, scipy_max_n, solvers = [10, 100, 1000], 8192, ["ours", "scipy"]
        sweep_sizes = []
    else:
        sizes, cw, kinds, repeats = [512, 2048, 4096], [2048], ["images", "uniform", "gaussian"], 3
        sweep_sizes = [16, 32, 64, 128, 192, 256, 320, 384, 448, 512, 768, 1024, 1536]
    if args.sizes is not None:
        sizes = [] if args.sizes in ("", "0") else int_list(args.sizes, "--sizes")
    if args.classwise_size is not None:
        cw = [] if args.classwise_size in ("", "0") else int_list(args.classwise_size, "--classwise-size")
    if args.classes:
        classes = int_list(args.classes, "--classes")
    if args.scipy_max_n is not None:
        if args.scipy_max_n < 0:
            raise UserError("--scipy-max-n must be >= 0")
        scipy_max_n = args.scipy_max_n
    kinds = args.data.split(",") if args.data else kinds
    repeats = args.repeats or repeats
    if repeats < 1:
        raise UserError("--repeats must be positive")
    for k in kinds:
        make_images(k, 1, shape, torch.Generator())  # validate before any output
    if args.solvers:
        solvers = [s for s in args.solvers.split(",") if s.strip()]
        unknown = sorted(set(solvers) - set(SOLVER_NAMES))
        if unknown or not solvers:
            raise UserError(f"--solvers: unknown {', '.join(unknown) or '(none given)'}; "
                            f"choose from {', '.join(SOLVER_NAMES)}")
    if args.no_emd and "emd" in solvers:
        solvers.remove("emd")
    if "emd" in solvers:
        try:
            import ot  # noqa: F401
        except ImportError:
            raise UserError("POT is not installed (pip install pot==0.9.7.post1), or pass --no-emd") from None
    if args.sweep_sizes:
        sweep_sizes = int_list(args.sweep_sizes, "--sweep-sizes")
    if args.sweep_only:
        args.sweep, sizes, cw = True, [], []
    step_ms = [float(v) for v in args.step_ms.split(",") if v.strip()] if args.pool_wait else []
    workers = int_list(args.workers, "--workers") if args.pool_wait else []
    if args.pool_wait and (not step_ms or min(step_ms) < 0 or args.pools < 2 or args.batch_gpu < 1):
        raise UserError("--pool-wait needs --step-ms >= 0, --pools >= 2 and --batch-gpu >= 1")
    if args.pool_wait:
        sizes, cw, args.sweep = ([8192] if not args.sizes else sizes), [], False
        for n in sizes:
            if n % args.batch_gpu:
                raise UserError(f"--pool-wait: N={n} is not a multiple of --batch-gpu {args.batch_gpu}")
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"assignment benchmark: torch threads {torch.get_num_threads()}, repeats {repeats}, "
          f"vectors {'x'.join(map(str, shape))}", flush=True)
    rows, wait_rows = [], []
    if args.pool_wait:
        for n in sizes:
            for ncls in [0] + ([c for c in classes] if args.classes else []):
                for ms in step_ms:
                    for w in workers:
                        r = pool_wait(n, args.batch_gpu, ncls, ms, w, 1, args.pools, args.seed)
                        wait_rows.append(r)
                        print(f"  pool wait N={n} {r['mode']}{f' ({ncls})' if ncls else ''} step {ms:g} ms "
                              f"workers {w}: build {r['build_s_mean']:.2f} s/pool, serve "
                              f"{r['serve_s_per_pool']:.2f} s/pool, wait {r['wait_s_per_pool']:.2f} s/pool "
                              f"({100 * r['stall_share']:.1f} % of the consumer's time)", flush=True)
        sizes = []
    for kind in kinds:
        cases = [(n, 0) for n in sizes] + [(n, c) for n in cw for c in classes]
        for n, ncls in cases:
            row = bench_case(kind, n, ncls, shape, repeats, solvers, args.seed, scipy_max_n)
            rows.append(row)
            sv = row["solvers"]
            print(f"  {kind:8s} {row['mode']:13s} N={n:5d}{f' classes {ncls}' if ncls else ''}: cost matrix "
                  f"{row['cost_matrix_s'] * 1e3:.1f} ms, " + ", ".join(
                      f"{s} {v['time_s'] * 1e3:.1f} ms" for s, v in sv.items()), flush=True)
    if rows:
        print()
        print_table(rows, solvers)
    sweep_rows = sweep(sweep_sizes, kinds, shape, repeats, args.seed) if args.sweep else None
    bad = [(r["data"], r["N"], r["classes"], s) for r in rows for s, v in r["solvers"].items()
           if s != "emd" and v["optimal"] is False]
    result = {
        "kind": "bench-assignment", "cost": "l2", "time": "min over rounds, seconds",
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "torch_threads": torch.get_num_threads(), "rows": rows, "sweep": sweep_rows,
        "pool_wait": wait_rows or None, "env": environment_info(),
    }
    if args.out:
        write_json_atomic(args.out, result)
        print(f"wrote {args.out}")
    if bad:
        raise SystemExit(f"non-optimal results from exact solvers: {bad}")


if __name__ == "__main__":
    main()
