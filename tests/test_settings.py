"""aot.settings in-process: the paper's rules against brute force, every config check with the
message it gives (before: one `snakemake -n` per case), the packing of sample sets into Slurm
submissions, and the shipped configs. The workflow calls the same code once (common.smk); the dry
runs in test_workflow.py prove that a config error reaches the user as one line there."""

from __future__ import annotations

import copy
import itertools
import re
from pathlib import Path

import pytest
import yaml

from aot.settings import (
    BatchError,
    ConfigError,
    PoolSizeError,
    RunSettings,
    check_global_batch,
    check_heun_nfe,
    check_pool_batch,
    gpu_counts_for,
)
from aot.settings.jobs import minutes_for, pack_groups

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
PAPER_PATH = ROOT / "config" / "config.yaml"
DEMO = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
PAPER = yaml.safe_load(PAPER_PATH.read_text())


def load(cfg: dict) -> RunSettings:
    return RunSettings.load(copy.deepcopy(cfg), schema=SCHEMA, paper=PAPER_PATH)


def _set(path: str, value):
    def mutate(cfg):
        *keys, last = path.split(".")
        node = cfg
        for k in keys:
            node = node[int(k)] if k.isdigit() else node.setdefault(k, {})
        node[last] = value
    return mutate


# ------------------------------------------------------------------------------------------------
# The paper's rules, one function each


@pytest.mark.parametrize("n, b", list(itertools.product(range(0, 70, 7), range(0, 40, 4))))
def test_pool_batch_rule_is_n_a_positive_multiple_of_b(n, b):
    ok = n > 0 and b > 0 and n >= b and n % b == 0
    if ok:
        check_pool_batch(n, b)
    else:
        with pytest.raises(PoolSizeError):
            check_pool_batch(n, b)


def test_pool_batch_messages_name_the_keys():
    with pytest.raises(PoolSizeError, match=r"^--pool-size N=8 is smaller than the per-GPU batch B=16$"):
        check_pool_batch(8, 16)
    with pytest.raises(PoolSizeError, match=r"^dg\.cond\.pool_size N=2000 is not a multiple of dg\.cond\.batch B=128$"):
        check_pool_batch(2000, 128, "dg.cond.pool_size", "dg.cond.batch")


@pytest.mark.parametrize("nfe", range(1, 40))
def test_heun_nfe_is_odd_euler_any(nfe):
    check_heun_nfe(nfe, "euler", "x")
    if nfe % 2:
        check_heun_nfe(nfe, "heun", "x")
    else:
        with pytest.raises(Exception, match=rf"x: {nfe} is even, but Heun's NFE is 2 x steps - 1"):
            check_heun_nfe(nfe, "heun", "x")


@pytest.mark.parametrize("batch, b", [(128, 32), (256, 32), (512, 64), (96, 32), (100, 32)])
def test_global_batch_rule_against_brute_force(batch, b):
    fits = gpu_counts_for(batch, b)
    for gpus, nodes in itertools.product(range(0, 9), range(1, 4)):
        total = max(1, gpus) * nodes
        # brute force: every GPU takes whole minibatches of B, the same number on each
        possible = any(total * b * k == batch for k in range(1, batch + 1))
        assert (total in fits) == possible
        if possible:
            check_global_batch(batch, b, gpus, nodes)
        else:
            with pytest.raises(BatchError, match=rf"batch {batch} is not a multiple of batch_gpu {b} x"):
                check_global_batch(batch, b, gpus, nodes)


def test_global_batch_message_names_what_would_work():
    with pytest.raises(BatchError) as err:
        check_global_batch(128, 32, 4, 2, where="models[aot-cond]")
    assert str(err.value) == ("models[aot-cond]: batch 128 is not a multiple of batch_gpu 32 x 4 GPU(s) x 2 node(s) "
                              "(16 per GPU): the recipe's B would change; GPUs x nodes that keep both: 1, 2, 4 in all")


# ------------------------------------------------------------------------------------------------
# Config checks (in-process; the messages are what `snakemake` prints, one `config error:` line)


BAD_CONFIGS = {
    "unknown top-level key": (lambda c: c.update(learning_rate=1), r"config error: learning_rate: unknown key"),
    "unknown training key": (_set("training.batchsize", 3), r"config error: training\.batchsize: unknown key"),
    "missing training key": (lambda c: c["training"].pop("lr"), r"config error: training\.lr: missing \(required\)"),
    "unknown rule in resources": (_set("resources.trian", {"gpus": 1}), r"config error: resources\.trian: unknown key"),
    "wrong type": (_set("fid.repeats", "three"), r"config error: fid\.repeats: 'three' is not of type 'integer'"),
    "steps below 2": (_set("sampling.default.num_steps", 1),
                      r"config error: sampling\.default\.num_steps: 1 is less than the minimum of 2"),
    "N not a multiple of B": (_set("training.pool_size", 100), r"pool_size N=100 is not a multiple of batch_gpu B=32"),
    "N smaller than B": (_set("training.pool_size", 16), r"pool_size N=16 is smaller than batch_gpu B=32"),
    "model name used twice": (lambda c: c["models"].append(dict(c["models"][0])), r"'edm-uncond' is used twice"),
    "unknown model in a table": (_set("tables.uncond.aot", "nope"), r"tables.uncond.aot: unknown model 'nope'"),
    "table model with wrong flags": (_set("tables.cond.edm", "edm-uncond"),
                                     r"tables.cond.edm: model 'edm-uncond' has cond=False"),
    "even NFE for Heun": (_set("sampling.table5.nfe", [8]), r"nfe: 8 is even"),
    "bad device": (_set("device", "tpu"), r"config error: device: 'tpu' is not one of \['cuda', 'cpu'\]"),
    "negative rho": (_set("sampling.default.rho", -1),
                     r"config error: sampling\.default\.rho: -1 is less than or equal to the minimum of 0"),
    "DG collects more than a sample set": (_set("dg.collect_images", 10**6), r"collect_images 1000000 exceeds"),
    "precomputed reference with offline features": (_set("fid.reference", "precomputed"), r"fid.reference"),
    "batch over GPUs changes B": (_set("resources.train", {"gpus": 4}),
                                  r"batch 64 is not a multiple of batch_gpu 32 x 4 GPU\(s\)"),
    "even NFE in the pool-size study": (_set("pool_study.nfe", [6]), r"pool_study\.nfe: 6 is even"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_fails_with_one_line(case, record_fault):
    mutate, pattern = BAD_CONFIGS[case]
    cfg = copy.deepcopy(DEMO)
    mutate(cfg)
    with pytest.raises(ConfigError) as err:
        load(cfg)
    assert re.search(pattern, str(err.value)), str(err.value)
    assert all(line.startswith("config error: ") for line in str(err.value).splitlines())
    record_fault("bad input", f"config: {case}", f"refused before any job; message matches `{pattern}`")


def test_schema_errors_come_together_one_line_each():
    cfg = copy.deepcopy(DEMO)
    cfg["fid"]["repeats"] = "three"
    cfg["device"] = "tpu"
    cfg["training"]["batchsize"] = 3
    with pytest.raises(ConfigError) as err:
        load(cfg)
    lines = err.value.lines
    assert lines[0] == "config error: device: 'tpu' is not one of ['cuda', 'cpu']"
    assert lines[1] == "config error: fid.repeats: 'three' is not of type 'integer'"
    assert lines[2].startswith("config error: training.batchsize: unknown key (known here: arch, ")
    assert len(lines) == 3


def _with(path: str, value):
    def mutate(cfg):
        node = cfg
        *parents, last = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return mutate


BAD_DG = {
    "AOT pool not a multiple of the part's batch": (
        _with("dg.cond.pool_size", 2000), r"dg\.cond\.pool_size N=2000 is not a multiple of dg\.cond\.batch B=128"),
    "empty guidance window in one part": (_with("dg.uncond.time_min", 1.0),
                                          r"dg\.uncond\.time_min 1\.0 must be below dg\.uncond\.time_max 1\.0"),
    "discriminator for an unknown model": (_with("dg.discriminators", {"nope": {"plain": "x.pt"}}),
                                           r"dg\.discriminators: unknown model 'nope'"),
    "discriminator for an unknown mode": (_with("dg.discriminators", {"edm-uncond": {"straight": "x.pt"}}),
                                          r"dg\.discriminators\.edm-uncond\.straight: unknown key"),
    "one recipe for both parts (old shape)": (_with("dg.batch", 128), r"config error: dg\.batch: unknown key"),
    "a pool in DG's baseline recipe (it trains without AOT)": (
        _with("dg.baseline", {"uncond": {"pool_size": 128}}),
        r"config error: dg\.baseline\.uncond\.pool_size: unknown key"),
    "DG's head without DG's classifier": (
        lambda c: (_with("dg.feature_extractor", "scratch")(c),
                   _with("dg.discriminators", {"edm-uncond": {"plain": "d/discriminator_60.pt"}})(c)),
        r"dg\.discriminators\.edm-uncond\.plain: DG's head d/discriminator_60\.pt needs DG's ADM classifier"),
}


@pytest.mark.parametrize("case", sorted(BAD_DG))
def test_bad_dg_config_fails_with_one_line(case, record_fault):
    mutate, pattern = BAD_DG[case]
    cfg = copy.deepcopy(PAPER)
    mutate(cfg)
    with pytest.raises(ConfigError, match=pattern):
        load(cfg)
    record_fault("bad input", f"config: {case}", f"refused before any job; message matches `{pattern}`")


def test_dg_recipe_per_discriminator():
    """EDM+DG (a model without AOT, plain) trains with DG's recipe dg.baseline.<part>; both
    discriminators of EDM-AOT with the paper's dg.<part> (they differ only in the pairing); the
    guided sampler is the part's for all."""
    run = load(PAPER)
    want = {("edm-uncond", "plain"): ("dg.baseline.uncond", 128, 60, None),
            ("edm-uncond-vp", "plain"): ("dg.baseline.uncond", 128, 60, None),
            ("aot-uncond", "plain"): ("dg.uncond", 512, 60, 512),
            ("aot-uncond", "aot"): ("dg.uncond", 512, 60, 512),
            ("edm-cond", "plain"): ("dg.baseline.cond", 128, 250, None),
            ("aot-cond", "plain"): ("dg.cond", 128, 250, 2048),
            ("aot-cond", "aot"): ("dg.cond", 128, 250, 2048)}
    for (model, mode), expect in want.items():
        r = run.dg_recipe(model, mode)
        assert (r["recipe"], r["batch"], r["epochs"], r["pool_size"]) == expect, (model, mode)
        part = run.part_of(model)
        for key in ("dg_weight_1st_order", "dg_weight_2nd_order", "time_min", "time_max", "boosting"):
            assert r[key] == PAPER["dg"][part][key], (model, mode, key)
    # the baseline trains without a pool: its batch need not divide the paper's N
    cfg = copy.deepcopy(PAPER)
    cfg["dg"]["baseline"]["uncond"]["batch"] = 100
    assert load(cfg).dg_recipe("edm-uncond", "plain")["batch"] == 100


@pytest.mark.parametrize("dataset, changes, expect", [
    ({"name": "edm", "path": "nope.zip", "resolution": 8, "channels": 1, "labels": True}, {},
     "config error: dataset.path: nope.zip does not exist"),
    ({"name": "edm", "path": "d.tar", "resolution": 8, "channels": 1, "labels": True}, {},
     "config error: dataset.path: d.tar is neither a folder nor a .zip archive (EDM's dataset format)"),
    ({"name": "edm", "resolution": 8, "channels": 1, "labels": True}, {},
     "config error: dataset.path is required for name: edm"),
    ({"name": "edm", "path": "d.zip", "resolution": 8, "channels": 1, "labels": False}, {},
     "config error: models[edm-cond]: a conditional model needs class labels, but dataset.labels is false"),
    ({"name": "edm", "path": "d.zip", "resolution": 8, "channels": 1, "labels": True},
     {"dg": {"enabled": True, "feature_extractor": "downloads/dg/32x32_classifier.pt", "collect_images": 500}},
     "config error: dg.feature_extractor: DG's ADM classifier (32x32_classifier.pt) is made for CIFAR-10 "
     "32x32 RGB, not dataset edm (8x8, 1 channel(s)); set dg.feature_extractor: scratch or dg.enabled: false"),
    ({"name": "digits", "resolution": 8, "path": "d.zip"}, {},
     "config error: dataset.path is only for name: edm (name is digits)"),
    ({"name": "digits", "resolution": 8, "channels": 3}, {},
     "config error: dataset.channels: digits has 1-channel images, not 3"),
])
def test_config_checks_of_the_dataset(tmp_path, monkeypatch, dataset, changes, expect):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.zip").write_bytes(b"")
    (tmp_path / "d.tar").write_bytes(b"x")
    cfg = copy.deepcopy(DEMO)
    cfg["dataset"] = dataset
    cfg.update(changes)
    with pytest.raises(ConfigError) as err:
        load(cfg)
    assert err.value.lines == [expect]


def test_small_class_pools_warn(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.zip").write_bytes(b"")
    cfg = copy.deepcopy(DEMO)
    cfg["dataset"] = {"name": "edm", "path": "d.zip", "resolution": 8, "channels": 1, "labels": True, "classes": 100}
    run = load(cfg)
    # demo.yaml: aot-cond trains with pool_size 256 -> 2.56 images per class and pool
    assert len(run.warnings) == 1 and "models[aot-cond]: pool_size N=256 over 100 classes gives 2.6" in run.warnings[0]


# ------------------------------------------------------------------------------------------------
# Derived values


def test_partial_config_is_layered_onto_the_paper():
    run = load({"run": "site", "resources": {"train": {"partition": "gpu-a100"}}})
    assert run.layered_from == ["resources", "run"]
    assert run.config["resources"]["train"]["partition"] == "gpu-a100"
    assert run.config["resources"]["train"]["gpus"] == PAPER["resources"]["train"]["gpus"]
    assert run.config["training"] == {**PAPER["training"]} | {k: v for k, v in run.config["training"].items()
                                                              if k not in PAPER["training"]}


def test_two_nodes_that_keep_the_recipe_pass_and_the_others_name_what_works():
    # two nodes x two GPUs: 4 GPUs in all, batch 128 / B 32 (conditional) and 256 / 32 still hold
    load({"resources": {"train": {"nodes": 2, "gpus": 2}}})
    with pytest.raises(ConfigError, match=r"models\[edm-cond\] with resources.train gpus=4, nodes=2: batch 128 is not "
                                          r"a multiple of batch_gpu 32 x 4 GPU\(s\) x 2 node\(s\)"):
        load({"resources": {"train": {"nodes": 2, "gpus": 4}}})


def test_overrides_of_the_training_job_count_like_the_config():
    run = load({})
    run.check_training_batch(run.train_resources({"gpu": 2}))
    run.check_training_batch(run.train_resources({"gres": "gpu:a100:4"}))
    with pytest.raises(ConfigError, match=r"gpus=8, nodes=1: batch 128 is not a multiple of batch_gpu 32 x 8 GPU"):
        run.check_training_batch(run.train_resources({"gpu": 8}))
    with pytest.raises(ConfigError, match=r"gpus=4, nodes=2"):
        run.check_training_batch(run.train_resources({"nodes": 2}))


def test_pool_study_models_are_derived_and_their_problems_wait_for_the_study():
    run = load(DEMO)
    names = [e["model"] for e in run.pool_study_entries]
    assert all(n in run.models and n in run.trained for n in names)
    assert run.pool_study_problems() == []
    bad = copy.deepcopy(DEMO)
    bad["pool_study"]["pool_sizes"] = [32, 100]
    run = load(bad)  # `all` does not contain the study: no error yet
    assert run.pool_study_problems()[0] == (
        "config error: pool_study (pool-uncond-n100): pool size N=100 is not a multiple of pool_study.batch_gpu B=32")


@pytest.mark.parametrize("name", ["config", "demo", "published", "authors"])
def test_shipped_configs_load(name):
    run = load(yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text()))
    assert run.trained or run.imported


# ------------------------------------------------------------------------------------------------
# Sample sets packed into Slurm submissions


def test_minutes_follow_the_work_and_stop_at_the_limit():
    assert minutes_for(600, safety=2, startup_s=300, max_minutes=100) == 30
    assert minutes_for(600, safety=2, startup_s=300, max_minutes=100, margin_s=300) == 35
    assert minutes_for(10**6, safety=2, startup_s=300, max_minutes=100) == 100


@pytest.mark.parametrize("seed", range(20))
def test_packed_groups_fit_the_limit_and_never_change(seed):
    import random

    rng = random.Random(seed)
    minutes = {f"m{i}/k{rng.randrange(99)}-{i}": rng.randrange(1, 700) for i in range(rng.randrange(1, 60))}
    limit, most = 720, 3
    groups = pack_groups(minutes, limit, most)
    assert sorted(n for g in groups for n in g) == sorted(minutes)
    assert all(len(g) <= most and sum(minutes[n] for n in g) <= limit for g in groups)
    shuffled = dict(rng.sample(sorted(minutes.items()), len(minutes)))
    assert pack_groups(shuffled, limit, most) == groups
    # no two groups could be merged
    for a, b in itertools.combinations(groups, 2):
        assert len(a) + len(b) > most or sum(minutes[n] for n in a + b) > limit


def test_a_member_longer_than_the_limit_goes_alone():
    assert pack_groups({"a": 900, "b": 10, "c": 10}, 720, 3) == [["a"], ["b", "c"]]


# ------------------------------------------------------------------------------------------------
# The site file (config/site.yaml): the cluster's settings under the command line's config


def test_site_file_is_layered_under_the_given_config(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({"site": {"account": "lab", "partition": "gpu"},
                                    "walltime": {"max_minutes": 720}, "resources": {"train": {"gpus": 2}}}))
    paper = RunSettings.load({}, schema=SCHEMA, paper=PAPER_PATH, site=site)
    assert paper.site_file == str(site) and paper.layered_from == []
    assert paper.config["site"]["account"] == "lab" and paper.config["walltime"]["max_minutes"] == 720
    assert paper.config["resources"]["train"]["gpus"] == 2 and paper.config["models"] == PAPER["models"]
    # the command line's config wins over the site file
    given = RunSettings.load({"walltime": {"max_minutes": 60}}, schema=SCHEMA, paper=PAPER_PATH, site=site)
    assert given.config["walltime"]["max_minutes"] == 60 and given.config["site"]["partition"] == "gpu"
    # a complete config (the demo) keeps its own resources and takes the site's cluster keys
    demo = RunSettings.load(copy.deepcopy(DEMO), schema=SCHEMA, paper=PAPER_PATH, site=site)
    assert demo.config["run"] == "demo" and demo.config["site"]["account"] == "lab"
    assert demo.config["resources"]["train"]["gpus"] == DEMO["resources"]["train"].get("gpus", 0)
    assert RunSettings.load({}, schema=SCHEMA, paper=PAPER_PATH, site=tmp_path / "absent.yaml").site_file is None


def test_site_file_sets_only_cluster_keys(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({"site": {"account": "lab"}, "fid": {"repeats": 1}}))
    with pytest.raises(ConfigError, match=r"site\.yaml: fid: a site file sets only site, resources, walltime"):
        RunSettings.load({}, schema=SCHEMA, paper=PAPER_PATH, site=site)


def test_example_site_file_loads():
    run = RunSettings.load({}, schema=SCHEMA, paper=PAPER_PATH, site=ROOT / "config" / "site.example.yaml")
    assert run.config["site"]["gpu_model"] == "a100"
