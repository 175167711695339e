"""No finished work is lost: `--kept-dir DIR` of `aot generate` and `aot dg generate` (aot.kept).

Snakemake removes a job's outputs before it runs it: the job-side Snakemake of a requeued Slurm
group (--force) does so for every member, finished or not, and the main Snakemake removes the
outputs of every member of a failed group. With --kept-dir each finished set and its FID result are
hard-linked into DIR; the rerun links the removed outputs back (the same file), keeps them as
made and measured earlier, and makes and measures only the rest. A record of another request (a
retrained network) is not trusted: the set is made and measured again and its record replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_generate import tiny_net
from test_sets import _members, _offline_reference, _untimed, assert_same_set

from aot import kept
from aot import samples as samples_mod
from aot.checkpoints import save_network
from aot.cli import main as aot_main

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")

GEN = ["--steps", "3", "--batch", "3", "--shard-size", "3", "--device", "cpu", "--threads", "1"]
MEASURED = "measure: Frechet distance (offline-classifier features)"  # one line per set measured
ENV = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")} | {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Two tiny one-channel networks (the second one 'retrained'), a discriminator for their images,
    and reference statistics in an (untrained) offline feature space."""
    from test_hostile_dg import _extractor, _head

    from aot.dg import GuidedDiscriminator
    from aot.dg.discriminator import save_discriminator

    d = tmp_path_factory.mktemp("kept-inputs")
    for name, seed in (("gray.pt", 1), ("retrained.pt", 2)):
        save_network(d / name, tiny_net(label_dim=0, channels=1, seed=seed), model="tiny-gray", aot=False,
                     cond=False, kimg=2.0, source="trained")
    save_discriminator(d / "disc.pt", GuidedDiscriminator(_extractor(), _head()), aot=True, cond=False)
    (d / "fid").mkdir()
    _offline_reference(d / "fid", channels=1, seed=1)
    return d


def _job(inputs: Path, n_sets: int, command: str = "generate", network: str = "gray.pt", seeds: int = 6,
         kept_dir: bool = True, gen=GEN) -> tuple[list[str], list[Path], list[Path]]:
    """argv of a sample-set job as the workflow's rules run it (relative outputs in the working
    folder), and its outputs: the sets and their results."""
    outs = [Path("samples") / "m" / f"rep{i}.npz" for i in range(n_sets)]
    jsons = [Path("fid") / "m" / f"rep{i}.json" for i in range(n_sets)]
    head = ["generate"] if command == "generate" else ["dg", "generate", "--discriminator", str(inputs / "disc.pt")]
    argv = [*head, "--network", str(inputs / network), "--seeds", f"0-{seeds * n_sets - 1}", *gen,
            "--out", *map(str, outs), "--fid-ref", str(inputs / "fid" / "ref.npz"), "--fid-out", *map(str, jsons),
            "--fid-batch", "5", *(["--kept-dir", "kept"] if kept_dir else [])]
    return argv, outs, jsons


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    res = subprocess.run([sys.executable, "-m", "aot", *argv], capture_output=True, text=True, cwd=cwd, env=ENV,
                         timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return res


def _inode(path: Path) -> int:
    return os.stat(path).st_ino


def _remove(work: Path, files: list[Path]) -> None:
    """What Snakemake does to a job's outputs before it (re)runs it."""
    for f in files:
        (work / f).unlink()


def _sampled(res: subprocess.CompletedProcess, out: Path) -> bool:
    return f"generating {out.name}" in res.stdout + res.stderr


def _same_results(work: Path, other: Path, outs: list[Path], jsons: list[Path]) -> None:
    """The sets and results in `work` are those in `other` (a run that was never interrupted):
    the same arrays and meta, the same result, FID exactly, apart from when and how long."""
    for out, js in zip(outs, jsons):
        assert_same_set(work / out, other / out)
        a, b = json.loads((work / js).read_text()), json.loads((other / js).read_text())
        assert a["time_s"] > 0 and _unmade(a) == _unmade(b)
        for folder, result in ((work, a), (other, b)):  # each names its own set, by its meta
            meta = samples_mod.sample_set_meta(folder / out)
            digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()
            assert result["identity"]["samples_meta_sha256"] == digest


def _unmade(result: dict) -> dict:
    """A result without what differs between two runs that made the same set: when, how long, and
    the digest of the set's meta (which records when and how long the set was made)."""
    out = _untimed(result)
    out["identity"] = {k: v for k, v in out["identity"].items() if k != "samples_meta_sha256"}
    return out


def test_removed_outputs_come_back_from_their_records(tmp_path, inputs, record_fault):
    """A finished 3-set job whose outputs Snakemake removed (a requeued group reruns every member):
    every set and result is linked back from its record, nothing is sampled or measured again, and
    each file is the first run's; a run without --kept-dir writes the same files (FID exactly)."""
    argv, outs, jsons = _job(inputs, 3)
    work = tmp_path / "work"
    first = _run(argv, work)
    assert first.stdout.count(MEASURED) == 3
    files = [f for pair in zip(outs, jsons) for f in pair]
    before = {f: (work / f).read_bytes() for f in files}
    for f in files:
        rec = work / "kept" / f
        assert _inode(rec) == _inode(work / f) and rec.read_bytes() == before[f]
    assert not any(samples_mod.shards_dir(work / o).exists() for o in outs)
    # today's behaviour (no --kept-dir): the same sets and the same results, FID exactly
    plain = tmp_path / "plain"
    _run(_job(inputs, 3, kept_dir=False)[0], plain)
    _same_results(work, plain, outs, jsons)
    assert not (plain / "kept").exists()

    _remove(work, files)
    t0 = time.monotonic()
    rerun = _run(argv, work)
    took = time.monotonic() - t0
    log = rerun.stdout + rerun.stderr
    for out, js in zip(outs, jsons):
        assert f"restored {out} and {js} from kept (finished in an earlier run of this job)" in log
        assert f"kept {out}: made earlier with these settings" in log
        assert f"measure: kept {js}: measured earlier" in log
        assert not _sampled(rerun, out)
    assert "measure: Frechet distance" not in log and "measure: 6 images" not in log
    for f in files:
        assert _inode(work / f) == _inode(work / "kept" / f)  # the record itself, no copy
        assert (work / f).read_bytes() == before[f]
    record_fault("interruption", "finished members of a requeued Slurm group: outputs removed by the job-side "
                 "Snakemake's --force rerun", f"`--kept-dir`: 3 sets and results linked back from their records "
                 f"(same inode), none sampled or measured again ({took:.1f} s); bytes unchanged")


def test_killed_job_restores_the_finished_set_and_resumes_the_next(tmp_path, inputs, record_fault):
    """Killed (SIGKILL, a node failure) while making the second set, after the first was made and
    measured; the outputs removed: the rerun links the first set and result back, resumes the
    second from its shards, and the files are those of a run that was never interrupted."""
    gen = ["--steps", "12", "--batch", "4", "--shard-size", "4", "--device", "cpu", "--threads", "1"]
    argv, outs, jsons = _job(inputs, 2, seeds=40, gen=gen)
    work = tmp_path / "work"
    work.mkdir()
    shards = samples_mod.shards_dir(work / outs[1])
    proc = subprocess.Popen([sys.executable, "-m", "aot", *argv], cwd=work, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if shards.is_dir() and len(list(shards.glob("shard-*.npz"))) >= 2:
            break
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    done = len(list(shards.glob("shard-*.npz")))
    assert (work / jsons[0]).is_file() and not (work / outs[1]).exists() and 2 <= done < 10, done
    first = {f: _inode(work / "kept" / f) for f in (outs[0], jsons[0])}
    assert all(_inode(work / f) == ino for f, ino in first.items())
    assert not (work / "kept" / outs[1]).exists() and not (work / "kept" / jsons[1]).exists()
    _remove(work, [outs[0], jsons[0]])  # the failed job's outputs

    rerun = _run(argv, work)
    log = rerun.stdout + rerun.stderr
    assert f"restored {outs[0]} and {jsons[0]} from kept" in log and not _sampled(rerun, outs[0])
    assert f"resuming: {done} of 10 shards" in log and _sampled(rerun, outs[1])
    assert f"measure: kept {jsons[0]}" in log and log.count(MEASURED) == 1
    assert all(_inode(work / f) == ino for f, ino in first.items())
    for f in (outs[1], jsons[1]):
        assert _inode(work / f) == _inode(work / "kept" / f)
    assert not shards.exists()
    straight = tmp_path / "straight"
    _run(_job(inputs, 2, seeds=40, gen=gen, kept_dir=False)[0], straight)
    _same_results(work, straight, outs, jsons)
    record_fault("interruption", "`aot generate --kept-dir` killed (SIGKILL) in the second of two sets, outputs "
                 "removed", f"first set and result linked back (same inode, not sampled or measured again), "
                 f"second resumed from {done} of 10 shards; files equal an uninterrupted run's")


@pytest.mark.parametrize("change", ["network", "seeds"])
def test_a_record_of_another_request_is_made_again_and_replaced(tmp_path, inputs, record_fault, change):
    """The records were made with another network (retrained) or other seeds: the restored files are
    not trusted; each set is made and measured again, and its record replaced by the new files."""
    argv, outs, jsons = _job(inputs, 2)
    work = tmp_path / "work"
    _run(argv, work)
    files = [f for pair in zip(outs, jsons) for f in pair]
    old = {f: _inode(work / "kept" / f) for f in files}
    _remove(work, files)
    other = dict(network="retrained.pt") if change == "network" else dict(seeds=5)
    argv2 = _job(inputs, 2, **other)[0]
    rerun = _run(argv2, work)
    log = rerun.stdout + rerun.stderr
    assert all(f"restored {o} and {j} from kept" in log for o, j in zip(outs, jsons))
    assert all(_sampled(rerun, o) for o in outs) and "made earlier" not in log
    assert log.count(MEASURED) == 2 and "measure: kept" not in log
    for f in files:
        assert _inode(work / f) == _inode(work / "kept" / f) != old[f]
    fresh = tmp_path / "fresh"
    _run(_job(inputs, 2, kept_dir=False, **other)[0], fresh)
    _same_results(work, fresh, outs, jsons)
    assert sorted(p.name for p in (work / "kept" / "samples" / "m").iterdir()) == ["rep0.npz", "rep1.npz"]
    record_fault("shards", f"records of finished sets made with other {'weights' if change == 'network' else change}",
                 "not trusted: sets made and measured again, records replaced")


def test_dg_generate_restores_its_sets(tmp_path, inputs, record_fault):
    """`aot dg generate --kept-dir`: as `aot generate`; and the records' results equal a plain run's."""
    argv, outs, jsons = _job(inputs, 2, command="dg")
    work = tmp_path / "work"
    _run(argv, work)
    files = [f for pair in zip(outs, jsons) for f in pair]
    before = {f: (work / f).read_bytes() for f in files}
    _remove(work, files)
    rerun = _run(argv, work)
    log = rerun.stdout + rerun.stderr
    for out, js in zip(outs, jsons):
        assert f"restored {out} and {js} from kept" in log and not _sampled(rerun, out)
    assert "measure: Frechet distance" not in log
    for f in files:
        assert _inode(work / f) == _inode(work / "kept" / f) and (work / f).read_bytes() == before[f]
    plain = tmp_path / "plain"
    _run(_job(inputs, 2, command="dg", kept_dir=False)[0], plain)
    _same_results(work, plain, outs, jsons)
    assert json.loads((work / jsons[0]).read_text())["sampler"]["key"] == "dgaot-heun-n3-rho7"
    record_fault("interruption", "finished `aot dg generate` group member: outputs removed by a --force rerun",
                 "`--kept-dir`: sets and results linked back, not sampled or measured again")


# ------------------------------------------------------------------------------------------------
# In process: what a record is, and what is refused


def test_a_stale_result_is_measured_again(tmp_path, inputs, monkeypatch, capsys):
    """A result beside its set that names another set (the set made again since) or another
    reference is measured again; one that names this set is kept."""
    monkeypatch.chdir(tmp_path)
    argv, outs, jsons = _job(inputs, 1)
    aot_main(argv)
    first = json.loads(jsons[0].read_text())
    capsys.readouterr()
    aot_main(argv)
    assert "measure: kept" in capsys.readouterr().out
    outs[0].unlink()  # the set made again (not restored: its record removed too)
    (Path("kept") / outs[0]).unlink()
    aot_main(argv)
    out = capsys.readouterr().out
    assert "measure: kept" not in out and "measure: Frechet distance" in out
    again = json.loads(jsons[0].read_text())
    assert again["identity"]["samples_meta_sha256"] != first["identity"]["samples_meta_sha256"]
    assert again["identity"]["samples_fingerprint"] == first["identity"]["samples_fingerprint"]
    assert _untimed(again) | {"identity": None} == _untimed(first) | {"identity": None}
    # the result names another reference file (its checksum): measured again
    data = json.loads(jsons[0].read_text())
    data["identity"]["reference_sha256"] = "0" * 64
    jsons[0].write_text(json.dumps(data))
    aot_main(argv)
    assert "measure: Frechet distance" in capsys.readouterr().out
    assert json.loads(jsons[0].read_text())["identity"] == again["identity"]


def test_records_never_lead_out_of_the_folder(tmp_path, inputs, monkeypatch, capsys):
    """A record that is a symbolic link, or lies behind one, is not followed; without measurement
    the sets alone are recorded and restored."""
    monkeypatch.chdir(tmp_path)
    outs = [Path("s") / f"rep{i}.npz" for i in range(2)]
    argv = ["generate", "--network", str(inputs / "gray.pt"), "--seeds", "0-5", *GEN, "--out", *map(str, outs),
            "--kept-dir", "kept"]
    aot_main(argv)
    assert all(_inode(o) == _inode(Path("kept") / o) for o in outs)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.replace(Path("kept") / outs[0], outside / "rep0.npz")
    os.symlink(outside / "rep0.npz", Path("kept") / outs[0])  # a record that leads out of DIR
    for o in outs:
        o.unlink()
    capsys.readouterr()
    aot_main(argv)
    out = capsys.readouterr().out
    assert f"restored {outs[1]} from kept" in out and f"restored {outs[0]}" not in out
    assert f"kept {outs[1]}: made earlier" in out and f"wrote 3 images to {outs[0]}" in out
    assert _inode(outs[0]) != _inode(outside / "rep0.npz")
    assert not (Path("kept") / outs[0]).is_symlink()  # replaced by the new set
    assert _inode(outs[0]) == _inode(Path("kept") / outs[0])
    # a record folder that is a link to a folder outside
    import shutil

    shutil.rmtree(Path("kept") / "s")
    shutil.copytree(Path("s"), outside / "s", copy_function=os.link)
    os.symlink(outside / "s", Path("kept") / "s")
    for o in outs:
        o.unlink()
    aot_main(argv)
    out = capsys.readouterr().out
    assert "restored" not in out
    assert all(_inode(o) != _inode(outside / "s" / o.name) for o in outs)


def test_refused_command_restores_nothing(tmp_path, inputs, monkeypatch, capsys):
    """Outputs are linked back only once the command's settings are checked and its inputs loaded."""
    monkeypatch.chdir(tmp_path)
    argv, outs, jsons = _job(inputs, 2)
    aot_main(argv)
    for f in outs + jsons:
        f.unlink()
    for bad in (["--steps", "1"], ["--network", str(tmp_path / "none.pt")]):
        with pytest.raises(SystemExit) as exc:
            aot_main([*argv, *bad])
        assert exc.value.code == 2 and "restored" not in capsys.readouterr().out
        assert not any(f.exists() for f in outs + jsons)
    aot_main(argv)
    assert capsys.readouterr().out.count("restored ") == 2


def test_record_path_mirrors_the_output(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert kept.record_path("kept", "results/r/samples/m/rep0.npz") == Path("kept/results/r/samples/m/rep0.npz")
    assert kept.record_path("kept", "./a/../b.json") == Path("kept/b.json")
    assert kept.record_path("kept", tmp_path / "x" / "y.npz") == Path("kept/x/y.npz")
    assert kept.record_path("kept", "/elsewhere/y.npz") == Path("kept/_abs/elsewhere/y.npz")
    assert kept.record_path("kept", "../up.npz") == Path("kept/_abs") / str(tmp_path.parent / "up.npz").lstrip("/")


@pytest.mark.parametrize("case", ["holds-output", "is-a-file", "holds-result"])
def test_bad_kept_dir_refused_before_any_work(tmp_path, inputs, monkeypatch, capsys, case):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    kept_dir, outs, fid_out, fragment = {
        "holds-output": ("out", ["out/a.npz"], [], "holds the output out/a.npz"),
        "is-a-file": ("afile", ["a.npz"], [], "is not a folder"),
        "holds-result": ("f", ["a.npz"], ["f/a.json"], "holds the output f/a.json"),
    }[case]
    measure = ["--fid-ref", str(inputs / "fid" / "ref.npz"), "--fid-out", *fid_out] if fid_out else []
    for command in (["generate"], ["dg", "generate", "--discriminator", str(inputs / "disc.pt")]):
        with pytest.raises(SystemExit) as exc:
            aot_main([*command, "--network", str(inputs / "gray.pt"), "--seeds", "0-2", *GEN, "--out", *outs,
                      *measure, "--kept-dir", kept_dir])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and fragment in err[0], err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_no_kept_dir_no_records(tmp_path, inputs, monkeypatch):
    """Without --kept-dir nothing is recorded and the sets are measured after all are made (as before)."""
    monkeypatch.chdir(tmp_path)
    argv, outs, jsons = _job(inputs, 2, kept_dir=False)
    aot_main(argv)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fid", "samples"]
    assert all(os.stat(p).st_nlink == 1 for p in outs + jsons)
    assert _members(outs[0])["images.npy"] != _members(outs[1])["images.npy"]


def test_time_limit_between_sets_keeps_the_first(tmp_path, inputs, monkeypatch, capsys, record_fault):
    """The first set is made and measured; then the Slurm job's end time is less than --slurm-margin
    away: the job exits 75 before measuring the second set, with the first recorded and the
    second's shards kept. The requeued job (outputs removed) restores the first, merges the second
    from its shards without sampling, and measures only the second."""
    from aot import fid
    from aot import generate as gen
    from aot.errors import EXIT_PREEMPTED

    monkeypatch.chdir(tmp_path)
    argv, outs, jsons = _job(inputs, 2)
    argv += ["--slurm-margin", "600"]
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_JOB_END_TIME", str(int(time.time()) + 3600))
    original = fid.measure_set

    def then_late(*args, **kwargs):  # the first set's measurement takes until 60 s before the end
        result = original(*args, **kwargs)
        monkeypatch.setenv("SLURM_JOB_END_TIME", str(int(time.time()) + 60))
        return result

    monkeypatch.setattr(fid, "measure_set", then_late)
    with pytest.raises(SystemExit) as exc:
        aot_main(argv)
    assert exc.value.code == EXIT_PREEMPTED
    assert "less than --slurm-margin 600 s from now" in capsys.readouterr().out
    assert _inode(outs[0]) == _inode(Path("kept") / outs[0]) and _inode(jsons[0]) == _inode(Path("kept") / jsons[0])
    assert outs[1].is_file() and not jsons[1].exists() and not (Path("kept") / outs[1]).exists()
    assert len(list(samples_mod.shards_dir(outs[1]).glob("shard-*.npz"))) == 2
    first = {f: _inode(f) for f in (outs[0], jsons[0])}

    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    for k in ("SLURM_JOB_ID", "SLURM_JOB_END_TIME"):
        monkeypatch.delenv(k, raising=False)
    for f in (outs[0], jsons[0], outs[1]):  # what Snakemake does with the outputs of the requeued job
        f.unlink()
    sampled, measured = [], []
    monkeypatch.setattr(gen, "generate_images", lambda *a, **k: sampled.append(1))
    monkeypatch.setattr(fid, "measure_set", lambda *a, **k: measured.append(a[0]) or original(*a, **k))
    aot_main(argv)
    out = capsys.readouterr().out
    assert sampled == [] and measured == [str(outs[1])]
    assert f"restored {outs[0]} and {jsons[0]} from kept" in out and "resuming: 2 of 2 shards" in out
    assert all(_inode(f) == ino for f, ino in first.items())
    assert all(_inode(f) == _inode(Path("kept") / f) for f in (outs[1], jsons[1]))
    assert not samples_mod.shards_dir(outs[1]).exists()
    record_fault("interruption", "Slurm end time near after the first of two sets (`--kept-dir`), before the "
                 "second's FID", "exit 75, first set recorded, second's shards kept; requeued job restores the "
                 "first, merges the second without sampling, measures only the second")


@pytest.mark.slow
def test_torchrun_restores_on_rank_0(tmp_path, inputs):
    """Two ranks (gloo, CPU): rank 0 records, restores and measures; the rerun samples nothing."""
    argv, outs, jsons = _job(inputs, 2)
    work = tmp_path / "work"
    work.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "aot", *argv]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=work, env=ENV, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    files = [f for pair in zip(outs, jsons) for f in pair]
    before = {f: (work / f).read_bytes() for f in files}
    assert all(_inode(work / f) == _inode(work / "kept" / f) for f in files)
    assert res.stdout.count(MEASURED) == 2
    _remove(work, files)
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=work, env=ENV, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    log = res.stdout + res.stderr
    assert log.count("restored ") == 2 and log.count("measure: kept") == 2 and MEASURED not in log
    assert not any(_sampled(res, o) for o in outs)
    assert all((work / f).read_bytes() == before[f] and _inode(work / f) == _inode(work / "kept" / f) for f in files)
