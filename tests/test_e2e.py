"""The real DAG end to end at the smallest scale (tests/configs/tiny.yaml): every table, figure and
the report; a second run does nothing; Snakemake killed mid-run finishes with --rerun-incomplete
without redoing finished jobs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import RUN, TINY, expected_artefacts, snakemake

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_every_table_figure_and_the_report(tiny_run):
    missing = [str(p) for p in expected_artefacts(tiny_run) if not p.is_file() or p.stat().st_size == 0]
    assert not missing, missing
    report = (tiny_run / "results" / RUN / "README.md").read_text()
    for i in range(1, 6):
        assert f"Table {i}" in report
    for i in range(1, 12):
        assert f"figures/figure{i}.png" in report
    # The demo-scale measurements are labelled as what they are.
    assert "offline" in report.lower()


def test_fid_results_have_the_protocol_fields(tiny_run):
    files = sorted((tiny_run / "results" / RUN / "fid").rglob("rep*.json"))
    assert files
    for f in files:
        rec = json.loads(f.read_text())
        for key in ("model", "sampler", "repeat", "seeds", "num_images", "feature_network", "reference", "fid"):
            assert key in rec, (f, key)
        assert rec["num_images"] == 100
        assert rec["feature_network"]["name"] == "offline-classifier"
    reps = {json.loads(f.read_text())["seeds"][0] for f in files if "/heun-n8-rho7/" in str(f)}
    assert reps == {0, 100}  # disjoint seed ranges per repeat


def test_second_run_does_nothing(tiny_run):
    res = snakemake(tiny_run, "-n")
    assert res.returncode == 0
    assert "Nothing to be done" in res.stdout + res.stderr


def test_killed_snakemake_resumes_without_redoing_finished_jobs(tiny_run, tmp_path, record_fault):
    """Kill Snakemake (and its jobs) mid-run; `--rerun-incomplete` finishes, finished jobs stay."""
    import shutil

    workdir = tmp_path / "w"
    workdir.mkdir()
    # Start from the finished run minus the guided sample sets (DG), their FID results and
    # everything after them: several sample-set jobs to run, each making a set and measuring it.
    shutil.copytree(tiny_run / "results", workdir / "results")
    r = workdir / "results" / RUN
    guided = [d for d in (*(r / "samples").glob("*/dg*"), *(r / "fid").glob("*/dg*")) if d.is_dir()]
    assert len(guided) >= 4, guided
    for d in guided:
        shutil.rmtree(d)
    shutil.rmtree(r / "tables")
    (r / "README.md").unlink()
    before = {p: p.stat().st_mtime_ns for p in (r / "samples").rglob("*.npz")}
    before.update({p: p.stat().st_mtime_ns for p in (r / "dg").rglob("discriminator.pt")})
    assert before
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(TINY), "--cores", "1"]
    log = tmp_path / "snakemake.out"  # a file, not a pipe that nobody reads while it runs
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        done = list((r / "fid").glob("*/dg*/rep*.json"))
        if len(done) >= 1:
            break
        time.sleep(0.2)
    else:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        pytest.fail(f"no guided FID result within 300 s or Snakemake exited ({proc.returncode}) before the kill:\n"
                    f"{log.read_text()[-3000:]}")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # the kill landed mid-run: the report was not written yet
    assert proc.returncode == -signal.SIGKILL and not (r / "README.md").exists()
    # what a user does after a crash: release Snakemake's lock, then rerun with --rerun-incomplete
    assert snakemake(workdir, "--unlock").returncode == 0
    res = snakemake(workdir, "--rerun-incomplete")
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    out = res.stdout + res.stderr
    assert re.search(r"rule generate_dg:", out)
    assert not re.search(r"rule (train|generate|train_discriminator):", out), "finished jobs were redone"
    after = {p: p.stat().st_mtime_ns for p in before}
    assert after == before
    assert (r / "README.md").is_file()
    record_fault("interruption", "Snakemake and its jobs killed (SIGKILL) mid-run",
                 "`--unlock`, then `--rerun-incomplete` finished the run; no training, plain sample set or "
                 "discriminator redone")


def test_snakemake_html_report_with_captions(tiny_run):
    out = tiny_run / "results" / RUN / "report.html"
    res = snakemake(tiny_run, "--report", str(out))
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert out.is_file() and out.stat().st_size > 10_000
