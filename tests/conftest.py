"""Shared test settings: one CPU thread per process (these machines have two busy cores; torch's
default of one thread per core makes small networks many times slower), inherited by subprocesses."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------------
# Fault report: tests that inject a fault record what they did and what happened; at the end of a
# run the table is written to $AOT_FAULT_REPORT (docs/faults.md under `make test`).

import datetime  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

_FAULTS: list[dict] = []


@pytest.fixture
def record_fault(request):
    """record_fault(kind, fault, outcome, count=1): kind is one of 'interruption', 'shards',
    'bad input', 'resource'; the row is kept only if the test passes."""
    rows: list[dict] = []

    def record(kind: str, fault: str, outcome: str, count: int = 1) -> None:
        rows.append({"kind": kind, "fault": fault, "outcome": outcome, "count": count, "test": request.node.nodeid})

    yield record
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.passed:
        _FAULTS.extend(rows)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    if rep.when == "call":
        item.rep_call = rep
    return rep


def pytest_sessionfinish(session, exitstatus):
    target = os.environ.get("AOT_FAULT_REPORT")
    if not target or not _FAULTS:
        return
    totals: dict[str, int] = {}
    for row in _FAULTS:
        totals[row["kind"]] = totals.get(row["kind"], 0) + row["count"]
    lines = [
        "# Faults injected by the test suite",
        "",
        f"Written by `pytest` (tests/conftest.py) on {datetime.date.today().isoformat()}; every row is a "
        "passing test that injected the fault and checked the outcome.",
        "",
        "| kind | count |", "|---|---:|",
        *[f"| {k} | {v} |" for k, v in sorted(totals.items())],
        "",
        "| kind | fault | outcome | count | test |", "|---|---|---|---:|---|",
    ]
    import re

    for row in sorted(_FAULTS, key=lambda r: (r["kind"], r["test"])):
        outcome = re.sub(r"/tmp/pytest-of-[^/ ]+/pytest-\d+/[^/ ]+/", "", row["outcome"])
        cells = [row["kind"], row["fault"], outcome, str(row["count"]), f"`{row['test']}`"]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    Path(target).write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------------
# The tiny end-to-end run (tests/configs/tiny.yaml), shared by the local and the Slurm tests.

import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
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


