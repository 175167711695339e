"""Several sample sets per job: `generate`, `dg generate` and `fid measure` with several --out files.

One job writes all FID repeats of a model and sampler (`--seeds 0-149999 --out rep0.npz rep1.npz
rep2.npz`) and one job measures them all, loading the network, discriminator, feature network and
reference once. Each file must be the one a separate single-set run writes: the same array bytes,
the same meta and JSON apart from the entries that record when and how long (`time_s`, `env.time`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from test_generate import tiny_net  # the small networks of the generation tests
from test_hostile_dg import _extractor, _head  # the small DG encoders of the hostile-file tests

from aot import checkpoints, fid, metrics
from aot import generate as gen
from aot import samples as samples_mod
from aot.checkpoints import load_network, save_network
from aot.cli import main as aot_main
from aot.dg import GuidedDiscriminator
from aot.dg import sampler as dg_sampler_mod
from aot.dg.discriminator import save_discriminator

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")

GEN = ["--steps", "3", "--batch", "3", "--shard-size", "3", "--device", "cpu"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("sets")
    save_network(d / "cond.pt", tiny_net(label_dim=10), model="tiny-cond", aot=True, cond=True, kimg=1.5,
                 source="trained")
    save_network(d / "gray.pt", tiny_net(label_dim=0, channels=1, seed=1), model="tiny-gray", aot=False,
                 cond=False, kimg=2.0, source="trained")
    save_discriminator(d / "disc.pt", GuidedDiscriminator(_extractor(), _head()), aot=True, cond=False)
    return d


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {name: z.read(name) for name in z.namelist()}


def _meta(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return json.loads(str(z["meta"]))


def _untimed(record: dict) -> dict:
    """A meta or FID result without what records when and how long: time_s, env.time."""
    out = {k: v for k, v in record.items() if k != "time_s"}
    out["env"] = {k: v for k, v in record["env"].items() if k != "time"}
    return out


def assert_same_set(a: Path, b: Path) -> None:
    """Sample sets `a` and `b` hold byte-identical arrays and equal meta apart from time_s, env.time."""
    ma, mb = _members(a), _members(b)
    assert sorted(ma) == sorted(mb) == ["images.npy", "labels.npy", "meta.npy", "seeds.npy"]
    for name in ("images.npy", "labels.npy", "seeds.npy"):
        assert ma[name] == mb[name], f"{a.name} vs {b.name}: {name} differs"
    meta_a, meta_b = _meta(a), _meta(b)
    assert meta_a["time_s"] > 0 and meta_b["time_s"] > 0
    assert _untimed(meta_a) == _untimed(meta_b)


def _count_calls(monkeypatch, owner, name: str) -> list:
    calls = []
    original = getattr(owner, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


def _refused(capsys, argv: list[str], fragment: str) -> str:
    with pytest.raises(SystemExit) as exc:
        aot_main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err
    return err[0]


# ------------------------------------------------------------------------------------------------
# generate


def test_generate_sets_equal_separate_runs(tmp_path, files, monkeypatch, capsys):
    """Seeds 10-21 into three files: each equals a separate run over its four seeds; one network load."""
    loads = _count_calls(monkeypatch, checkpoints, "load_any_network")
    many = [tmp_path / "many" / f"rep{i}.npz" for i in range(3)]
    aot_main(["generate", "--network", str(files / "cond.pt"), "--seeds", "10-21", "--out", *map(str, many),
              "--grid", str(tmp_path / "many" / "grid.png"), *GEN])
    assert len(loads) == 1
    assert "generating 12 images in 3 sets of 4" in capsys.readouterr().out
    for i, first in enumerate((10, 14, 18)):
        one = tmp_path / "one" / f"rep{i}.npz"
        grid = ["--grid", str(tmp_path / "one" / "grid.png")] if i == 0 else []
        aot_main(["generate", "--network", str(files / "cond.pt"), "--seeds", f"{first}-{first + 3}", "--out",
                  str(one), *grid, *GEN])
        assert_same_set(many[i], one)
        with np.load(many[i]) as z:
            assert z["seeds"].tolist() == list(range(first, first + 4))
        meta = _meta(many[i])
        assert meta["seeds"] == [first, first + 3] and meta["num_images"] == 4
    assert len(loads) == 4
    assert (tmp_path / "many" / "grid.png").read_bytes() == (tmp_path / "one" / "grid.png").read_bytes()
    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == ["grid.png", "rep0.npz", "rep1.npz", "rep2.npz"]
    # the sets together are the images of one run over all seeds
    net = load_network(files / "cond.pt")[0]
    images, labels = gen.generate_images(net, list(range(10, 22)), sampler_kwargs=dict(num_steps=3), batch=3,
                                         device="cpu")
    np.testing.assert_array_equal(np.concatenate([np.load(p)["images"] for p in many]), images)
    np.testing.assert_array_equal(np.concatenate([np.load(p)["labels"] for p in many]), labels)


def test_generate_rerun_keeps_finished_sets(tmp_path, files, capsys):
    """A rerun of a finished job rewrites nothing; a set made with other settings is made again."""
    outs = [tmp_path / f"rep{i}.npz" for i in range(2)]
    argv = ["generate", "--network", str(files / "gray.pt"), "--seeds", "0-5", "--out", *map(str, outs), *GEN]
    aot_main(argv)
    before = [p.read_bytes() for p in outs]
    capsys.readouterr()
    aot_main(argv)
    assert [p.read_bytes() for p in outs] == before
    out = capsys.readouterr().out
    assert all(f"kept {p}" in out for p in outs)
    # rep1 made with 2 steps instead of 3: not kept, made again with 3
    aot_main(["generate", "--network", str(files / "gray.pt"), "--seeds", "3-5", "--out", str(outs[1]),
              *GEN, "--steps", "2"])
    assert _meta(outs[1])["sampler"]["num_steps"] == 2
    aot_main(argv)
    assert outs[0].read_bytes() == before[0]
    assert _members(outs[1])["images.npy"] == _members_of(before[1])["images.npy"]
    assert _meta(outs[1])["sampler"]["num_steps"] == 3


def _members_of(data: bytes) -> dict[str, bytes]:
    import io

    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {name: z.read(name) for name in z.namelist()}


class Killed(Exception):
    pass


def test_generate_sets_killed_midway_resume(tmp_path, files):
    """Killed after the second set's first shard: the rerun keeps the first set, resumes the second
    from its finished shard and makes the third; the files equal an uninterrupted run's."""
    net = load_network(files / "cond.pt")[0]
    kw = dict(sampler_kwargs=dict(num_steps=3), batch=2, shard_size=2, device="cpu", log=lambda s: None,
              meta={"model": {"name": "m"}})
    seeds = list(range(12))
    ref = [(tmp_path / "ref" / f"rep{i}.npz", seeds[4 * i:4 * i + 4]) for i in range(3)]
    gen.run_generation_sets(net, ref, **kw)
    sets = [(tmp_path / "run" / f"rep{i}.npz", seeds[4 * i:4 * i + 4]) for i in range(3)]

    def kill(out, k):
        if out == sets[1][0] and k == 0:
            raise Killed()

    with pytest.raises(Killed):
        gen.run_generation_sets(net, sets, after_shard=kill, **kw)
    assert sets[0][0].is_file() and not sets[1][0].exists() and not sets[2][0].exists()
    assert [p.name for p in samples_mod.shards_dir(sets[1][0]).iterdir()] == ["shard-000000.npz"]
    first = sets[0][0].read_bytes()
    made, logs = [], []
    metas = gen.run_generation_sets(net, sets, after_shard=lambda out, k: made.append((out.name, k)),
                                    **dict(kw, log=logs.append))
    assert made == [("rep1.npz", 1), ("rep2.npz", 0), ("rep2.npz", 1)]  # nothing of rep0, rep1's shard 0 reused
    assert any(f"kept {sets[0][0]}" in line for line in logs)
    assert any("resuming: 1 of 2 shards" in line for line in logs)
    assert sets[0][0].read_bytes() == first
    assert [m["seeds"] for m in metas] == [[0, 3], [4, 7], [8, 11]]
    for (a, _), (b, _) in zip(sets, ref):
        assert_same_set(a, b)
        assert not samples_mod.shards_dir(a).exists()


@pytest.mark.parametrize("outs,fragment", [
    (["a.npz", "b.npz", "c.npz"], "10 seeds, which do not split into 3 equal parts"),
    (["a.npz", "b.npz", "a.npz"], "names a.npz more than once"),
    (["a.npz", "./b.npz", "b.npz"], "more than once"),
    (["a.npz", "b.npy"], "must end in .npz"),
])
def test_generate_bad_sets_refused(tmp_path, files, capsys, monkeypatch, outs, fragment):
    (tmp_path / "o").mkdir()
    monkeypatch.chdir(tmp_path / "o")
    for command in (["generate"], ["dg", "generate", "--discriminator", str(files / "disc.pt")]):
        _refused(capsys, [*command, "--network", str(files / "gray.pt"), "--seeds", "0-9", "--out", *outs,
                          "--grid", "g.png", *GEN], fragment)
        assert list((tmp_path / "o").iterdir()) == []


@pytest.mark.slow
def test_generate_sets_under_torchrun(tmp_path, files, offline):
    """Two ranks (gloo, CPU) share each set's shards; the files equal a single process's; with
    --fid-out, rank 0 measures the sets as `aot fid measure` does."""
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    args = ["-m", "aot", "generate", "--network", str(files / "cond.pt"), "--seeds", "0-11", "--steps", "3",
            "--batch", "2", "--shard-size", "2", "--device", "cpu"]
    two = [tmp_path / "two" / f"rep{i}.npz" for i in range(2)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([*torchrun, "--standalone", "--nproc_per_node=2", *args, "--out", *map(str, two)],
                         capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    one = [tmp_path / "one" / f"rep{i}.npz" for i in range(2)]
    aot_main(args[2:] + ["--out", *map(str, one)])
    for a, b in zip(two, one):
        for name in ("images.npy", "labels.npy", "seeds.npy"):
            assert _members(a)[name] == _members(b)[name]
        assert not samples_mod.shards_dir(a).exists()
    # rerun under torchrun: both sets kept by every rank
    before = [p.read_bytes() for p in two]
    res = subprocess.run([*torchrun, "--standalone", "--nproc_per_node=2", *args, "--out", *map(str, two)],
                         capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert [p.read_bytes() for p in two] == before and res.stdout.count("kept ") == 2
    # made and measured under torchrun: one result per set, from rank 0
    three = [tmp_path / "measured" / f"rep{i}.npz" for i in range(2)]
    jsons = [p.with_suffix(".json") for p in three]
    res = subprocess.run([*torchrun, "--standalone", "--nproc_per_node=2", *args, "--out", *map(str, three),
                          "--fid-ref", str(offline[0] / "ref.npz"), "--fid-out", *map(str, jsons)],
                         capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("measure: Frechet distance (offline-classifier features)") == 2
    separate = [tmp_path / "measured" / f"sep{i}.json" for i in range(2)]
    aot_main(["fid", "measure", "--samples", *map(str, three), "--ref", str(offline[0] / "ref.npz"), "--out",
              *map(str, separate), "--device", "cpu"])
    for a, b, js, sep in zip(three, one, jsons, separate):
        assert _members(a)["images.npy"] == _members(b)["images.npy"]
        assert _untimed(_json(js)) == _untimed(_json(sep))
        assert not samples_mod.shards_dir(a).exists()


# ------------------------------------------------------------------------------------------------
# dg generate


def test_dg_generate_sets_equal_separate_runs(tmp_path, files, monkeypatch):
    loads = _count_calls(monkeypatch, checkpoints, "load_any_network")
    disc_loads = _count_calls(monkeypatch, dg_sampler_mod, "load_discriminator")
    common = ["dg", "generate", "--network", str(files / "gray.pt"), "--discriminator", str(files / "disc.pt"),
              "--dg-weight-1st-order", "1.5", "--time-min", "0", *GEN]
    many = [tmp_path / "many" / f"rep{i}.npz" for i in range(2)]
    aot_main([*common, "--seeds", "0-5", "--out", *map(str, many)])
    assert len(loads) == len(disc_loads) == 1
    for i, first in enumerate((0, 3)):
        one = tmp_path / "one" / f"rep{i}.npz"
        aot_main([*common, "--seeds", f"{first}-{first + 2}", "--out", str(one)])
        assert_same_set(many[i], one)
        assert _meta(one)["sampler"]["key"] == "dgaot-heun-n3-rho7"
    assert len(loads) == len(disc_loads) == 3
    # the guidance acts: without it the images differ
    aot_main(["generate", "--network", str(files / "gray.pt"), "--seeds", "0-2", "--out",
              str(tmp_path / "plain.npz"), *GEN])
    assert _members(tmp_path / "plain.npz")["images.npy"] != _members(many[0])["images.npy"]


# ------------------------------------------------------------------------------------------------
# fid measure


def _sample_set(path: Path, images: np.ndarray, first_seed: int) -> Path:
    n = len(images)
    meta = {"model": {"name": "m"}, "sampler": {"key": "heun-n3-rho7", "nfe": 5}, "seeds": [first_seed,
            first_seed + n - 1], "num_images": n, "time_s": 1.0, "env": {}}
    np.savez(path, images=images, labels=np.full(n, -1, np.int64),
             seeds=np.arange(first_seed, first_seed + n, dtype=np.int64), meta=np.array(json.dumps(meta)))
    return path


def _offline_reference(d: Path, channels: int, seed: int) -> np.random.Generator:
    """An (untrained) offline feature network d/featnet.pt and the reference statistics d/ref.npz
    of a small 8x8 data set d/data.zip in its space; returns the generator that drew the data."""
    from aot.data import write_dataset

    torch.manual_seed(seed)
    metrics.save_feature_net(d / "featnet.pt", metrics.FeatureNet(channels, 8, 10, feature_dim=6, width=8).eval(),
                             name="offline-classifier")
    rng = np.random.default_rng(seed)
    write_dataset(d / "data.zip", rng.integers(0, 256, (40, 8, 8, channels), dtype=np.uint8), total=40)
    aot_main(["fid", "reference", "--data", str(d / "data.zip"), "--features", str(d / "featnet.pt"),
              "--out", str(d / "ref.npz"), "--device", "cpu"])
    return rng


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """An (untrained) offline feature network, reference statistics of a small RGB data set in its
    space, and three sample sets of different images."""
    d = tmp_path_factory.mktemp("fid-sets")
    rng = _offline_reference(d, channels=3, seed=0)
    sets = [_sample_set(d / f"rep{i}.npz", rng.integers(0, 256 - 60 * i, (30, 8, 8, 3), dtype=np.uint8), 30 * i)
            for i in range(3)]
    return d, sets


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_measure_sets_equal_separate_runs(tmp_path, offline, monkeypatch):
    d, sets = offline
    nets = _count_calls(monkeypatch, metrics, "load_feature_net")
    refs = _count_calls(monkeypatch, fid, "load_reference")
    outs = [tmp_path / "many" / f"rep{i}.json" for i in range(3)]
    aot_main(["fid", "measure", "--samples", *map(str, sets), "--ref", str(d / "ref.npz"), "--out", *map(str, outs),
              "--device", "cpu"])
    assert len(nets) == len(refs) == 1
    for i, (samples, out) in enumerate(zip(sets, outs)):
        one = tmp_path / "one" / f"rep{i}.json"
        aot_main(["fid", "measure", "--samples", str(samples), "--ref", str(d / "ref.npz"), "--repeat", str(i),
                  "--out", str(one), "--device", "cpu"])
        a, b = _json(out), _json(one)
        assert a["repeat"] == i and a["seeds"] == [30 * i, 30 * i + 29] and a["samples"] == str(samples)
        assert a["time_s"] > 0 and b["time_s"] > 0
        assert _untimed(a) == _untimed(b)  # the FID exactly, as every other entry
    fids = [_json(p)["fid"] for p in outs]
    assert len(set(fids)) == 3 and fids[0] < fids[2]
    assert len(nets) == len(refs) == 4
    # explicit repeat indices
    aot_main(["fid", "measure", "--samples", *map(str, sets[:2]), "--ref", str(d / "ref.npz"), "--repeat", "5", "7",
              "--out", str(tmp_path / "r5.json"), str(tmp_path / "r7.json"), "--device", "cpu"])
    assert [_json(tmp_path / f"r{r}.json")["repeat"] for r in (5, 7)] == [5, 7]
    assert _untimed(_json(tmp_path / "r7.json")) == _untimed(dict(_json(outs[1]), repeat=7))


def test_measure_sets_inception_loaded_once(tmp_path, monkeypatch):
    """Inception (a stand-in TorchScript file, checked by its recorded digest): one load for three sets."""
    from test_metrics import _FakeInception

    cache = tmp_path / "cache"
    cache.mkdir()
    torch.jit.script(_FakeInception()).save(str(cache / fid.INCEPTION_FILE))
    digest = fid.sha256_file(cache / fid.INCEPTION_FILE)
    (cache / fid.MANIFEST).write_text(json.dumps({"files": {"inception": {"sha256": digest}}}))
    mu, sigma = np.zeros(2048), np.zeros((2048, 2048))
    mu[:4], sigma[:4, :4] = [100.0, 110.0, 120.0, 50.0], np.diag([4.0, 9.0, 16.0, 1.0])
    np.savez(tmp_path / "ref.npz", format=np.array(fid.REF_FORMAT), mu=mu, sigma=sigma,
             feature=np.array(metrics.INCEPTION_NAME), resolution=np.array(8), channels=np.array(3),
             num_images=np.array(50000), name=np.array("fake"), source=np.array("fake"))
    full = metrics.frechet_distance  # the stand-in's features live in the first 4 dimensions
    monkeypatch.setattr(metrics, "frechet_distance", lambda m1, s1, m2, s2: full(m1[:4], s1[:4, :4], m2[:4],
                                                                                  s2[:4, :4]))
    loads = _count_calls(monkeypatch, metrics, "inception_feature_fn")
    rng = np.random.default_rng(1)
    sets = [_sample_set(tmp_path / f"rep{i}.npz", rng.integers(0, 200 + 20 * i, (12, 8, 8, 3), dtype=np.uint8),
                        12 * i) for i in range(3)]
    outs = [tmp_path / f"rep{i}.json" for i in range(3)]
    common = ["--ref", str(tmp_path / "ref.npz"), "--cache-dir", str(cache), "--device", "cpu", "--batch", "5"]
    aot_main(["fid", "measure", "--samples", *map(str, sets), "--out", *map(str, outs), *common])
    assert len(loads) == 1
    for i in range(3):
        aot_main(["fid", "measure", "--samples", str(sets[i]), "--out", str(tmp_path / "one.json"),
                  "--repeat", str(i), *common])
        assert _untimed(_json(outs[i])) == _untimed(_json(tmp_path / "one.json"))
    assert len(loads) == 4
    assert len({_json(p)["fid"] for p in outs}) == 3


def test_measure_bad_sets_refused_nothing_written(tmp_path, offline, capsys):
    d, sets = offline
    o = tmp_path / "o"
    o.mkdir()
    ref = ["--ref", str(d / "ref.npz"), "--device", "cpu"]
    samples = ["--samples", *map(str, sets)]
    cases = [
        ([*samples, "--out", str(o / "a.json"), str(o / "b.json")],
         "--samples names 3 sample set(s) but --out names 2 file(s)"),
        (["--samples", str(sets[0]), "--out", str(o / "a.json"), str(o / "b.json")], "but --out names 2"),
        ([*samples, "--out", *(str(o / f"{x}.json") for x in "abc"), "--repeat", "0", "1"],
         "--repeat names 2 index(es)"),
        ([*samples, "--out", str(o / "a.json"), str(o / "b.json"), str(o / "a.json")], "more than once"),
        ([*samples, "--out", *(str(o / f"{x}.json") for x in "abc"), "--repeat", "0", "-1", "2"],
         "--repeat must not be negative"),
    ]
    # a set that does not fit the reference, last in the list: refused before any set is measured
    small = _sample_set(tmp_path / "small.npz", np.zeros((4, 4, 4, 3), np.uint8), 0)
    cases.append((["--samples", str(sets[0]), str(small), "--out", str(o / "a.json"), str(o / "b.json")],
                  "has 3x4x4 images but reference"))
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not really")
    cases.append((["--samples", str(sets[0]), str(tmp_path / "broken.npz"), "--out", str(o / "a.json"),
                   str(o / "b.json")], "broken.npz cannot be read"))
    cases.append((["--samples", str(sets[0]), str(tmp_path / "none.npz"), "--out", str(o / "a.json"),
                   str(o / "b.json")], "none.npz does not exist"))
    for argv, fragment in cases:
        _refused(capsys, ["fid", "measure", *argv, *ref], fragment)
        assert list(o.iterdir()) == []


def test_sample_set_shape_reads_the_header(tmp_path):
    images = np.zeros((5, 8, 8, 3), np.uint8)
    path = _sample_set(tmp_path / "s.npz", images, 0)
    assert samples_mod.sample_set_shape(path) == (5, 8, 8, 3)
    np.savez(tmp_path / "f.npz", images=np.zeros((5, 8, 8, 3), np.float32))
    with pytest.raises(Exception, match="must be uint8"):
        samples_mod.sample_set_shape(tmp_path / "f.npz")
    np.savez(tmp_path / "n.npz", pictures=images)
    with pytest.raises(Exception, match=r"has no 'images' array \(keys: pictures\)"):
        samples_mod.sample_set_shape(tmp_path / "n.npz")


# ------------------------------------------------------------------------------------------------
# generate, then measure in the same job (the workflow's sample-set jobs)


@pytest.fixture(scope="module")
def gray_offline(tmp_path_factory):
    """Reference statistics of a small one-channel data set in an (untrained) offline feature space."""
    d = tmp_path_factory.mktemp("fid-gray")
    _offline_reference(d, channels=1, seed=1)
    return d


@pytest.mark.parametrize("command", ["generate", "dg"])
def test_generate_then_measure_equals_separate_jobs(tmp_path, files, gray_offline, command):
    """`--fid-ref REF --fid-out ...`: each JSON equals the one `aot fid measure` of its set writes;
    the sets equal those of a run without measurement; no shard folder is left."""
    d = gray_offline
    head = ["generate"] if command == "generate" else ["dg", "generate", "--discriminator", str(files / "disc.pt")]
    argv = [*head, "--network", str(files / "gray.pt"), "--seeds", "0-11", *GEN]
    outs = [tmp_path / "job" / f"rep{i}.npz" for i in range(2)]
    jsons = [tmp_path / "job" / f"rep{i}.json" for i in range(2)]
    aot_main([*argv, "--out", *map(str, outs), "--fid-ref", str(d / "ref.npz"), "--fid-out", *map(str, jsons),
              "--fid-batch", "5"])
    plain = [tmp_path / "plain" / f"rep{i}.npz" for i in range(2)]
    aot_main([*argv, "--out", *map(str, plain)])
    separate = [tmp_path / "plain" / f"rep{i}.json" for i in range(2)]
    aot_main(["fid", "measure", "--samples", *map(str, outs), "--ref", str(d / "ref.npz"), "--out",
              *map(str, separate), "--batch", "5", "--device", "cpu"])
    for i, (out, js, sep, p) in enumerate(zip(outs, jsons, separate, plain)):
        assert_same_set(out, p)
        a, b = _json(js), _json(sep)
        assert a["repeat"] == i and a["samples"] == str(out) and a["seeds"] == [6 * i, 6 * i + 5]
        assert _untimed(a) == _untimed(b)  # the FID exactly
        assert not samples_mod.shards_dir(out).exists()
    assert sorted(p.name for p in (tmp_path / "job").iterdir()) == ["rep0.json", "rep0.npz", "rep1.json",
                                                                    "rep1.npz"]


def test_failed_measurement_keeps_the_shards(tmp_path, files, gray_offline, monkeypatch, capsys):
    """The measurement fails after the sets are written: the shards stay, so once the workflow has
    removed the failed job's outputs its rerun merges them without sampling again."""
    d = gray_offline
    outs = [tmp_path / f"rep{i}.npz" for i in range(2)]
    jsons = [tmp_path / f"rep{i}.json" for i in range(2)]
    argv = ["generate", "--network", str(files / "gray.pt"), "--seeds", "0-11", *GEN, "--out", *map(str, outs),
            "--fid-ref", str(d / "ref.npz"), "--fid-out", *map(str, jsons)]

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (injected)")

    monkeypatch.setattr(fid, "_measure_one", broken)
    with pytest.raises(RuntimeError, match="injected"):
        aot_main(argv)
    assert all(p.is_file() for p in outs) and not any(p.exists() for p in jsons)
    assert all(len(list(samples_mod.shards_dir(p).glob("shard-*.npz"))) == 2 for p in outs)
    monkeypatch.undo()
    for p in outs:  # what Snakemake does with the outputs of a failed job
        p.unlink()
    sampled = _count_calls(monkeypatch, gen, "generate_images")
    capsys.readouterr()
    aot_main(argv)
    assert sampled == []  # merged from the kept shards
    assert capsys.readouterr().out.count("resuming: 2 of 2 shards") == 2
    assert all(p.is_file() for p in outs + jsons)
    assert not any(samples_mod.shards_dir(p).exists() for p in outs)


def test_generate_bad_measurement_refused_before_any_work(tmp_path, files, gray_offline, offline, capsys,
                                                          monkeypatch):
    d = gray_offline
    o = tmp_path / "o"
    o.mkdir()
    monkeypatch.chdir(o)
    base = ["generate", "--network", str(files / "gray.pt"), "--seeds", "0-5", *GEN, "--out", "a.npz", "b.npz"]
    cases = [
        (["--fid-out", "a.json", "b.json"], "--fid-ref and --fid-out go together"),
        (["--fid-ref", str(d / "ref.npz")], "--fid-ref and --fid-out go together"),
        (["--fid-ref", str(d / "ref.npz"), "--fid-out", "a.json"], "--out names 2 sample set(s) but --fid-out "
                                                                   "names 1"),
        (["--fid-ref", str(d / "ref.npz"), "--fid-out", "a.json", "b.npz"], "the measurement would replace"),
        (["--fid-ref", str(tmp_path / "none.npz"), "--fid-out", "a.json", "b.json"], "none.npz"),
        (["--fid-ref", str(d / "ref.npz"), "--fid-out", "a.json", "b.json", "--fid-features",
          str(offline[0] / "featnet.pt")], "is not the one reference"),
        (["--fid-ref", str(d / "ref.npz"), "--fid-out", "a.json", "b.json", "--fid-batch", "0"],
         "--fid-batch must be positive"),
    ]
    for extra, fragment in cases:
        _refused(capsys, [*base, *extra], fragment)
        assert list(o.iterdir()) == []


def test_measurement_stopped_by_the_time_limit_exits_75(tmp_path, files, gray_offline, monkeypatch):
    """Slurm's warning signal during the measurement: exit 75 (the job requeues itself), no result
    written, the shards kept for the requeued job."""
    import signal

    from aot.errors import EXIT_PREEMPTED

    d = gray_offline
    outs = [tmp_path / f"rep{i}.npz" for i in range(2)]
    jsons = [tmp_path / f"rep{i}.json" for i in range(2)]
    measured = []
    original = fid._measure_one

    def signalled(*args, **kwargs):
        measured.append(args[0])
        if len(measured) == 2:  # during the second set's measurement
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(fid, "_measure_one", signalled)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exc:
        aot_main(["generate", "--network", str(files / "gray.pt"), "--seeds", "0-11", *GEN, "--out",
                  *map(str, outs), "--fid-ref", str(d / "ref.npz"), "--fid-out", *map(str, jsons)])
    assert exc.value.code == EXIT_PREEMPTED and len(measured) == 2
    assert signal.getsignal(signal.SIGTERM) == before  # the handler was put back
    assert not any(p.exists() for p in jsons)
    assert all(len(list(samples_mod.shards_dir(p).glob("shard-*.npz"))) == 2 for p in outs)
