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


# ------------------------------------------------------------------------------------------------
# Fault report: tests that inject a fault record what they did and what happened. At the end of a
# run the table goes to $AOT_FAULT_REPORT, by default results/faults.md (untracked); `make faults`
# runs only the fault tests (`--fault-tests`) and writes docs/faults.md.

import datetime  # noqa: E402
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


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--fault-tests"):
        return
    keep = [item for item in items if "record_fault" in getattr(item, "fixturenames", ())]
    config.hook.pytest_deselected(items=[item for item in items if item not in keep])
    items[:] = keep


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
        outcome = re.sub(r"/tmp/pytest-of-[^/ ]+/pytest-\d+/[^/ ]+/", "", row["outcome"])
        cells = [row["kind"], row["fault"], outcome, str(row["count"]), f"`{row['test']}`"]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def pytest_sessionfinish(session, exitstatus):
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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("tiny-local")
    start = time.time()
    res = snakemake(workdir)
    (workdir / "wall_time_s").write_text(f"{time.time() - start:.1f}\n")
    assert res.returncode == 0, (res.stdout + res.stderr)[-6000:]
    return workdir


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> Path:
    """scikit-learn's digits at 8x8 as an EDM-format dataset zip (`python -m aot data digits`)."""
    out = tmp_path_factory.mktemp("data") / "digits.zip"
    subprocess.run([sys.executable, "-m", "aot", "data", "digits", "--resolution", "8", "--dest", str(out)],
                   check=True, capture_output=True)
    return out
