"""Shared test settings: one CPU thread per process (these machines have two busy cores; torch's
default of one thread per core makes small networks many times slower), inherited by subprocesses."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------------
# Skips: outside CI a test that cannot set up its fault (no mount, no Slurm, no shared paper
# numbers) is skipped with the reason; in CI (AOT_REQUIRE_SLURM=1 or CI=true) it fails instead.

import pytest  # noqa: E402


def in_ci() -> bool:
    """True in CI: `.ci/run` sets AOT_REQUIRE_SLURM=1; CI services set CI=true."""
    return os.environ.get("AOT_REQUIRE_SLURM", "") == "1" or os.environ.get("CI", "").lower() == "true"


def skip_or_fail(reason: str) -> None:
    """Skip the calling test with `reason`; in CI fail with it, so that nothing is silently untested."""
    if in_ci():
        pytest.fail(f"{reason} (in CI this test must run, not be skipped)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session", autouse=True)
def scontrol_fails_fast_without_a_controller(tmp_path_factory):
    """Where Slurm's commands are installed but no controller answers, `scontrol` retries for about
    9 s before it fails, and every Snakemake start asks it once (the Slurm executor plugin, on
    import, for MinJobAge). Then an `scontrol` that fails at once goes first on PATH for this run's
    processes: the same failure, without the wait. (The Slurm tests are skipped then, or fail in CI.)"""
    import shutil

    import slurm_helpers

    if shutil.which("scontrol") is None:
        yield
        return
    available = slurm_helpers.slurm_available()
    if available[0]:
        yield
        return
    stub = tmp_path_factory.mktemp("no-slurm-controller")
    (stub / "scontrol").write_text(f"#!/bin/sh\necho 'scontrol: error: {available[1]}' >&2\nexit 1\n")
    (stub / "scontrol").chmod(0o755)
    old = os.environ["PATH"]
    os.environ["PATH"] = f"{stub}{os.pathsep}{old}"
    slurm_helpers.remember_slurm_available(available)  # the same answer under the new PATH
    try:
        yield
    finally:
        os.environ["PATH"] = old


# ------------------------------------------------------------------------------------------------
# Fault report: tests that inject a fault record what they did and what happened. At the end of a
# run the table goes to $AOT_FAULT_REPORT, by default results/faults.md (untracked); `make faults`
# runs only the fault tests (`--fault-tests`) and writes docs/faults.md.

import datetime  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FAULT_REPORT = ROOT / "results" / "faults.md"
HOSTILE = "hostile file"

_FAULTS: list[dict] = []
_FAILED: list[dict] = []  # tests that recorded faults, or live in a fault module, and did not pass


def pytest_addoption(parser):
    parser.addoption("--fault-tests", action="store_true",
                     help="run only the tests that inject a fault (those using the record_fault fixture)")


# The quick tier (`make quick`: -m quick, under 3 minutes on two busy cores): the library's maths
# (closed forms, brute force and golden outputs) and the config checks; their slow tests excepted.
QUICK = ("test_augment.py", "test_checkpoints.py", "test_data.py", "test_dg.py", "test_diagnostics.py",
         "test_metrics.py", "test_networks.py", "test_pairing.py", "test_sampling.py", "test_settings.py",
         "test_workflow.py")


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in QUICK and not item.get_closest_marker("slow") and not item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.quick)
    if config.getoption("--fault-tests"):
        keep = [item for item in items if "record_fault" in getattr(item, "fixturenames", ())]
        config.hook.pytest_deselected(items=[item for item in items if item not in keep])
        items[:] = keep
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items[:] = order_for_workers(items)


# ------------------------------------------------------------------------------------------------
# Parallel runs (pytest-xdist; `make test`: -n 2 --dist loadfile --no-loadscope-reorder). Each test
# file runs on one worker, so that a module-scoped fixture is built once; the files go out in the
# order below, the longest first, so that no worker is left with a long file at the end. State
# shared between files is guarded here: the session fixtures that are expensive to build
# (`tiny_run`, `digits`) are built once per run by whichever worker asks first and shared
# (`shared_folder`), and the Slurm tests take the one cluster in turns (`slurm_in_turn`).
# (--dist loadgroup would keep the Slurm tests on one worker, but pytest-xdist 3.8 cannot group
# under pytest 9.2: pytest-dev/pytest-xdist#1386.)

# minutes of work, roughly, on a busy 2-core machine; files not named here come after these
FIRST = ("test_e2e.py", "test_slurm.py", "test_gpu_bench.py", "test_fast_paths.py", "test_train.py",
         "test_multinode.py", "test_faults.py", "test_hostile_dg.py", "test_hostile.py", "test_workflow.py",
         "test_generate.py")


def order_for_workers(items: list) -> list:
    """`items` by file in the order of FIRST (then in collection order); within a file in collection
    order, except that the Slurm tests that need `tiny_run` go last, when it has long been built."""
    rank = {name: i for i, name in enumerate(FIRST)}

    def key(pair):
        index, item = pair
        late = bool(item.get_closest_marker("slurm")) and "tiny_run" in getattr(item, "fixturenames", ())
        return rank.get(item.path.name, len(FIRST)), str(item.path), late, index

    return [item for _, item in sorted(enumerate(items), key=key)]


def shared_root(tmp_path_factory) -> Path:
    """The base temporary folder of this run: one per worker under pytest-xdist, and their parent
    is the run's; without xdist the run's."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(autouse=True)
def slurm_in_turn(request, tmp_path_factory):
    """A `slurm` test holds the cluster while it runs: one Slurm test at a time across the workers (a
    test fills the partition, signals its jobs, stops a node)."""
    if not request.node.get_closest_marker("slurm") or not os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    import fcntl

    if "tiny_run" in request.fixturenames:  # wait for it (another worker may build it) before the cluster
        request.getfixturevalue("tiny_run")
    with open(shared_root(tmp_path_factory) / "slurm-cluster.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


@pytest.fixture
def record_fault(request):
    """record_fault(kind, fault, outcome, count=1): kind is one of 'interruption', 'shards',
    'bad input', 'resource', 'hostile file'; the row is kept only if the test passes."""
    rows: list[dict] = []

    def record(kind: str, fault: str, outcome: str, count: int = 1) -> None:
        rows.append({"kind": kind, "fault": fault, "outcome": outcome, "count": count, "test": request.node.nodeid})

    yield record
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.passed:
        _FAULTS.extend(rows)
    elif rep is not None and rep.failed:
        hostile = request.node.nodeid.startswith("tests/test_hostile.py") or any(r["kind"] == HOSTILE for r in rows)
        _FAILED.append({"test": request.node.nodeid, "kind": HOSTILE if hostile else "other"})


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    if rep.when == "call":
        item.rep_call = rep
    return rep


def fault_report(faults: list[dict], failed: list[dict], date: str) -> str:
    """The fault report (Markdown): totals per kind, the hostile-file summary, one row per fault."""
    totals: dict[str, int] = {}
    for row in faults:
        totals[row["kind"]] = totals.get(row["kind"], 0) + row["count"]
    hostile = totals.get(HOSTILE, 0)
    crashed = sum(1 for f in failed if f["kind"] == HOSTILE)
    lines = [
        "# Faults injected by the test suite",
        "",
        f"Written by `pytest` (tests/conftest.py) on {date}; every row is a passing test that injected the "
        "fault and checked the outcome. Regenerate with `make faults`.",
        "",
        f"Hostile files: {hostile} tried, {hostile} refused with one line and exit 2, "
        f"{crashed} crashed or failed.",
        "",
        "| kind | count |", "|---|---:|",
        *[f"| {k} | {v} |" for k, v in sorted(totals.items())],
    ]
    if failed:
        lines += ["", f"Failed fault tests ({len(failed)}): " + ", ".join(f"`{f['test']}`" for f in failed)]
    lines += ["", "| kind | fault | outcome | count | test |", "|---|---|---|---:|---|"]
    for row in sorted(faults, key=lambda r: (r["kind"], r["test"])):
        outcome = re.sub(r"/tmp/pytest-of-[^/ ]+/pytest-\d+/(?:popen-gw\d+/)?[^/ ]+/", "", row["outcome"])
        cells = [row["kind"], row["fault"], outcome, str(row["count"]), f"`{row['test']}`"]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines) + "\n"


class _WorkerFaults:
    """Under pytest-xdist: the rows each worker recorded, collected where the report is written."""

    @pytest.hookimpl
    def pytest_testnodedown(self, node, error):
        data = getattr(node, "workeroutput", {}).get("aot_faults")
        if data:
            rows = json.loads(data)
            _FAULTS.extend(rows["faults"])
            _FAILED.extend(rows["failed"])


def pytest_configure(config):
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_WorkerFaults(), "aot-worker-faults")


def pytest_sessionfinish(session, exitstatus):
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controller writes the report
        workeroutput["aot_faults"] = json.dumps({"faults": _FAULTS, "failed": _FAILED})
        return
    if not _FAULTS and not _FAILED:
        return
    target = Path(os.environ.get("AOT_FAULT_REPORT") or DEFAULT_FAULT_REPORT)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(fault_report(_FAULTS, _FAILED, datetime.date.today().isoformat()))


# ------------------------------------------------------------------------------------------------
# The tiny end-to-end run (tests/configs/tiny.yaml), shared by the local and the Slurm tests.

import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import warm  # noqa: E402

TINY = ROOT / "tests" / "configs" / "tiny.yaml"
RUN = "tiny"


def snakemake(workdir: Path, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(TINY), "--cores", "2", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def expected_artefacts(workdir: Path) -> list[Path]:
    r = workdir / "results" / RUN
    out = [r / "README.md"]
    out += [r / "tables" / f"table{i}.{ext}" for i in range(1, 6) for ext in ("csv", "md", "tex")]
    out += [r / "figures" / f"figure{i}.{ext}" for i in range(1, 12) for ext in ("png", "pdf")]
    out += [r / "figures" / f"curvature.{ext}" for ext in ("png", "pdf")]
    return out


def shared_folder(tmp_path_factory, name: str, build) -> Path:
    """The folder `name`, made by `build(folder)` once per test run and shared by every pytest-xdist
    worker: the first to ask builds it (under a file lock), the others wait for it. A failed build
    fails, with its message, every test that asks for the folder, without trying again."""
    import fcntl

    root = shared_root(tmp_path_factory)
    folder, failed = root / f"shared-{name}", root / f"shared-{name}.failed"
    with open(root / f"shared-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if failed.exists():
            pytest.fail(failed.read_text(), pytrace=False)
        if not (root / f"shared-{name}.done").exists():
            folder.mkdir()
            try:
                build(folder)
            except BaseException as exc:
                failed.write_text(f"building the shared folder {name} failed: {exc}")
                raise
            (root / f"shared-{name}.done").write_text("")
    return folder


def _build_tiny_run(workdir: Path) -> None:
    start = time.time()
    res = snakemake(workdir)
    (workdir / "wall_time_s").write_text(f"{time.time() - start:.1f}\n")
    assert res.returncode == 0, (res.stdout + res.stderr)[-6000:]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    return shared_folder(tmp_path_factory, "tiny-local", _build_tiny_run)


def _build_digits(folder: Path) -> None:
    warm.run([sys.executable, "-m", "aot", "data", "digits", "--resolution", "8", "--dest", str(folder / "digits.zip")],
             check=True, capture_output=True)


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> Path:
    """scikit-learn's digits at 8x8 as an EDM-format dataset zip (`python -m aot data digits`)."""
    return shared_folder(tmp_path_factory, "data", _build_digits) / "digits.zip"
