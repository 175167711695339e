"""Discriminator guidance as the paper and DG run it: the paper's recipe per part for EDM-AOT's
discriminators and DG's for the EDM baselines' (EDM+DG), reaching the commands, guided sample sets
on seeds no discriminator trained on (and Table 3 refusing those that are), the published-weights
route (config/published.yaml: no training, DG's released discriminators imported in DG's own file
layout), and one-line errors for files that are not where the config places them."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from aot import dg
from aot.cli import main as aot_main
from aot.dg import ADMEncoder, GuidedDiscriminator
from aot.dg.discriminator import import_discriminator
from aot.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
PAPER = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
PUBLISHED = yaml.safe_load((ROOT / "config" / "published.yaml").read_text())


# ------------------------------------------------------------------------------------------------
# Dry runs and the commands they print


def dry_run(*args: str, config: dict | None, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-n", "-p", "--snakefile", str(ROOT / "Snakefile"),
           "--directory", str(cwd), *args]
    if config is not None:
        path = cwd / "config-under-test.yaml"
        path.write_text(yaml.safe_dump(config))
        cmd += ["--configfile", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=300)


def job_counts(output: str) -> dict[str, int]:
    counts, in_table = {}, False
    for line in output.splitlines():
        if re.match(r"^job\s+count\s*$", line.strip()):
            in_table = True
        elif in_table and (m := re.match(r"^([A-Za-z_0-9]+)\s+(\d+)$", line.strip())):
            counts[m.group(1)] = int(m.group(2))
            if m.group(1) == "total":
                break
    return counts


def commands(output: str, command: str) -> list[list[str]]:
    """The arguments after `python -m aot <command>` of every printed command (redirections cut)."""
    out = []
    for line in output.splitlines():
        if f"-m aot {command} " not in line:
            continue
        args = shlex.split(line.split(f"-m aot {command} ", 1)[1])
        cut = [i for i, a in enumerate(args) if a.startswith(">")]
        out.append(args[: cut[0]] if cut else args)
    return list({tuple(a): a for a in out}.values())  # a job may be printed twice (dry run summary)


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def outputs(args: list[str]) -> list[str]:
    """The values of --out (one file, or several for a job that makes every repeat of a set)."""
    i = args.index("--out") + 1
    j = i
    while j < len(args) and not args[j].startswith("--"):
        j += 1
    return args[i:j]


def seeds_per_file(args: list[str]) -> dict[str, range]:
    """Output file -> its seeds: the --seeds range split equally among the --out files, in order."""
    lo, hi = (int(x) for x in option(args, "--seeds").split("-"))
    files = outputs(args)
    n = (hi - lo + 1) // len(files)
    assert n * len(files) == hi - lo + 1
    return {f: range(lo + k * n, lo + (k + 1) * n) for k, f in enumerate(files)}


def part_of(cfg: dict, model: str) -> str:
    return "cond" if next(m for m in cfg["models"] if m["name"] == model)["cond"] else "uncond"


@pytest.fixture(scope="module")
def paper_table3(tmp_path_factory) -> str:
    res = dry_run("table3", config=PAPER, cwd=tmp_path_factory.mktemp("paper"))
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    return res.stdout + res.stderr


# ------------------------------------------------------------------------------------------------
# 1. One recipe per part


def test_paper_config_holds_the_papers_and_dgs_recipes():
    """The paper's batch = N = 512 (unconditional) and N = 2048 (conditional), DG's released
    recipes (discriminator_60.pt: weight 2, no boosting; discriminator_250.pt: weight 1, boosting),
    and the schema's defaults are the same values."""
    u, c = PAPER["dg"]["uncond"], PAPER["dg"]["cond"]
    assert (u["batch"], u["pool_size"], c["pool_size"]) == (512, 512, 2048)
    assert (u["epochs"], u["dg_weight_1st_order"], u["boosting"]) == (60, 2.0, False)
    assert (c["epochs"], c["dg_weight_1st_order"], c["boosting"]) == (250, 1.0, True)
    # the EDM baselines' discriminators: DG's train.py (batch 128) and its released heads' epochs
    bu, bc = PAPER["dg"]["baseline"]["uncond"], PAPER["dg"]["baseline"]["cond"]
    assert (bu["batch"], bu["epochs"], bc["batch"], bc["epochs"]) == (128, 60, 128, 250)
    assert bu["lr"] == bc["lr"] == 3e-4 and bu["weight_decay"] == bc["weight_decay"] == 1e-7
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    props = schema["properties"]["dg"]["properties"]
    for part in ("uncond", "cond"):
        defaults = {k: v["default"] for k, v in props[part]["properties"].items()}
        assert defaults == PAPER["dg"][part], part
        defaults = {k: v["default"] for k, v in props["baseline"]["properties"][part]["properties"].items()}
        assert defaults == PAPER["dg"]["baseline"][part], part


def test_recipes_reach_the_commands_per_part(paper_table3):
    trains = commands(paper_table3, "dg train")
    assert len(trains) == 8  # (edm, edm published, aot) plain + (aot) aot, per part
    aot_models = {m["name"] for m in PAPER["models"] if m["aot"]}
    by_recipe = {}
    for args in trains:
        model, mode = option(args, "--out").split("/")[-2:]
        part = part_of(PAPER, model)
        baseline = model not in aot_models  # EDM+DG: DG's recipe; EDM-AOT (both modes): the paper's
        assert baseline == (mode == "plain" and not model.startswith("aot"))
        recipe = PAPER["dg"]["baseline"][part] if baseline else PAPER["dg"][part]
        assert option(args, "--batch") == str(recipe["batch"])
        assert option(args, "--epochs") == str(recipe["epochs"])
        assert float(option(args, "--lr")) == recipe["lr"]
        assert float(option(args, "--weight-decay")) == recipe["weight_decay"]
        if mode == "aot":
            assert option(args, "--pool-size") == str(PAPER["dg"][part]["pool_size"])
        else:  # independent noise: no pool
            assert "--pool-size" not in args
        assert ("--aot" in args) == (mode == "aot") and ("--cond" in args) == (part == "cond")
        assert option(args, "--collect-images") == str(PAPER["dg"]["collect_images"])
        by_recipe.setdefault((part, baseline), set()).add(option(args, "--batch"))
    assert {option(a, "--batch") for a in trains} == {"512", "128"}  # the parts really differ
    # unconditional: EDM+DG at DG's batch 128, both EDM-AOT discriminators at the paper's 512
    assert by_recipe == {("uncond", True): {"128"}, ("uncond", False): {"512"},
                         ("cond", True): {"128"}, ("cond", False): {"128"}}
    guided = commands(paper_table3, "dg generate")
    assert guided
    for args in guided:
        recipe = PAPER["dg"][part_of(PAPER, option(args, "--model-name"))]
        for key in ("dg_weight_1st_order", "dg_weight_2nd_order", "time_min", "time_max"):
            assert float(option(args, "--" + key.replace("_", "-"))) == recipe[key], key
        assert ("--boosting" in args) == recipe["boosting"] and ("--no-boosting" in args) != recipe["boosting"]
    assert {option(a, "--dg-weight-1st-order") for a in guided} == {"2.0", "1.0"}


def test_schema_defaults_fill_a_config_without_recipes(tmp_path):
    """A complete config without dg.uncond/dg.cond/dg.baseline gets the paper's and DG's recipes."""
    cfg = yaml.safe_load((ROOT / "tests" / "configs" / "tiny.yaml").read_text())
    for part in ("uncond", "cond", "baseline"):
        del cfg["dg"][part]
    cfg["dg"]["cond"] = {"epochs": 7}  # one key given: the others still come from the defaults
    res = dry_run("table3", config=cfg, cwd=tmp_path)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    trains = commands(res.stdout + res.stderr, "dg train")
    got = {(part_of(cfg, option(a, "--out").split("/")[-2]), option(a, "--out").split("/")[-1]):
           (option(a, "--batch"), option(a, "--epochs"), option(a, "--pool-size") if "--aot" in a else None)
           for a in trains if option(a, "--out").split("/")[-2] in (cfg["tables"]["uncond"]["aot"],
                                                                   cfg["tables"]["cond"]["aot"])}
    assert got == {("uncond", "aot"): ("512", "60", "512"), ("uncond", "plain"): ("512", "60", None),
                   ("cond", "aot"): ("128", "7", "2048"), ("cond", "plain"): ("128", "7", None)}
    baseline = {part_of(cfg, option(a, "--out").split("/")[-2]): (option(a, "--batch"), option(a, "--epochs"))
                for a in trains if option(a, "--out").split("/")[-2] in (cfg["tables"]["uncond"]["edm"],
                                                                        cfg["tables"]["cond"]["edm"])}
    assert baseline == {"uncond": ("128", "60"), "cond": ("128", "250")}  # DG's, not the paper's 512 / 7


# ------------------------------------------------------------------------------------------------
# 2. Seeds of guided sets


def test_guided_sets_never_use_a_discriminators_training_seeds(paper_table3):
    n, reps = PAPER["fid"]["num_images"], PAPER["fid"]["repeats"]
    plain = {f: s for a in commands(paper_table3, "generate") for f, s in seeds_per_file(a).items()}
    guided = {f: s for a in commands(paper_table3, "dg generate") for f, s in seeds_per_file(a).items()}
    # (edm, plain), (edm published, plain), (aot, plain), (aot, aot) per part, every repeat
    assert len(guided) == 8 * reps
    # what the discriminators train on: the first collect_images images of their sample sets
    trained = set()
    for args in commands(paper_table3, "dg train"):
        seeds = plain[option(args, "--samples")]
        trained |= set(seeds[: int(option(args, "--collect-images"))])
    assert trained == set(range(PAPER["dg"]["collect_images"]))
    every_plain = set().union(*plain.values())
    sets: dict[str, list[range]] = {}
    for f, seeds in guided.items():
        assert not trained & set(seeds), f
        assert not every_plain & set(seeds), f  # no guided image shares its noise with a plain one
        sets.setdefault(str(Path(f).parent), []).append(seeds)
    for folder, parts in sets.items():
        assert len(parts) == reps, folder
        union = sorted(s for p in parts for s in p)
        assert union == list(range(reps * n, 2 * reps * n)), folder  # guided_seeds(): disjoint repeats


def _fid(model, aot, seeds, repeat, guidance=None):
    return {"kind": "fid", "model": {"name": model, "aot": aot, "cond": False},
            "sampler": {"key": "heun-n18-rho7", "solver": "heun", "num_steps": 18, "rho": 7.0, "S_churn": 0.0,
                        "nfe": 35, "guidance": guidance},
            "repeat": repeat, "seeds": list(seeds), "num_images": seeds[1] - seeds[0] + 1,
            "feature_network": {"name": "inception-v3-tf"}, "fid": 2.0 + repeat / 10}


GUIDED = {"method": "dg", "aot": False, "discriminator": "dg/edm/plain/discriminator.pt", "dg_weight_1st_order": 2.0,
          "dg_weight_2nd_order": 0.0, "time_min": 0.01, "time_max": 1.0, "boosting": False, "train_seeds": [0, 99]}


def test_table3_accepts_disjoint_guided_seeds(tmp_path):
    from aot.report import write_table

    files = []
    for i, r in enumerate([_fid("edm", False, [0, 99], 0), _fid("edm", False, [100, 199], 1),
                           _fid("edm", False, [200, 299], 0, GUIDED), _fid("edm", False, [300, 399], 1, GUIDED)]):
        files.append(tmp_path / f"r{i}.json")
        files[-1].write_text(json.dumps(r))
    written = write_table(3, files, tmp_path / "table3")
    assert {p.suffix for p in written} == {".csv", ".md", ".tex"}


@pytest.mark.parametrize("case", ["guided set on the training seeds", "repeats of a guided set overlap"])
def test_table3_refuses_overlapping_guided_seeds(tmp_path, case, record_fault, capsys):
    guided = ([_fid("edm", False, [50, 149], 0, GUIDED), _fid("edm", False, [150, 249], 1, GUIDED)]
              if case.startswith("guided set on") else
              [_fid("edm", False, [200, 299], 0, GUIDED), _fid("edm", False, [250, 349], 1, GUIDED)])
    files = []
    for i, r in enumerate([_fid("edm", False, [0, 99], 0), _fid("edm", False, [100, 199], 1), *guided]):
        files.append(tmp_path / f"r{i}.json")
        files[-1].write_text(json.dumps(r))
    with pytest.raises(SystemExit) as exc:
        aot_main(["report", "table", "--table", "3", *map(str, files),
                  "--out-prefix", str(tmp_path / "table3")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("error: ")
    if case.startswith("guided set on"):
        assert "seeds 50-149" in err[0] and "0-99" in err[0] and "r2.json" in err[0]
    else:
        assert "overlapping seed ranges" in err[0]
    assert not list(tmp_path.glob("table3*"))
    record_fault("bad input", f"Table 3: {case}", "one `error:` line naming the file and both seed ranges, "
                 "exit 2, no table written")


def test_discriminator_records_its_training_seeds(tmp_path):
    from aot.data import write_dataset

    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, size=(40, 8, 8), dtype=np.uint8)
    write_dataset(tmp_path / "real.zip", iter(real), labels=None, total=40)
    np.savez(tmp_path / "fake.npz", images=rng.integers(0, 256, size=(40, 8, 8, 1), dtype=np.uint8),
             labels=np.full(40, -1), seeds=np.arange(1000, 1040),
             meta=np.array(json.dumps({"model": {"name": "m"}})))
    aot_main(["dg", "train", "--data", str(tmp_path / "real.zip"), "--samples", str(tmp_path / "fake.npz"),
              "--out", str(tmp_path / "d"), "--collect-images", "32", "--scratch-width", "32", "--width", "32",
              "--depth", "1", "--batch", "16", "--epochs", "1", "--device", "cpu"])
    _, meta = dg.load_discriminator(tmp_path / "d" / "discriminator.pt")
    assert meta["train_seeds"] == [1000, 1031]  # the first 32 images of the set
    assert json.loads((tmp_path / "d" / "result.json").read_text())["train_seeds"] == [1000, 1031]


# ------------------------------------------------------------------------------------------------
# 3. Published weights


@pytest.fixture(scope="module")
def published_all(tmp_path_factory) -> str:
    cwd = tmp_path_factory.mktemp("published")
    res = dry_run("all", config=PUBLISHED, cwd=cwd)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    return res.stdout + res.stderr


def test_published_config_trains_no_network(published_all):
    counts = job_counts(published_all)
    assert "train" not in counts and counts["fetch_edm_pickle"] == 6
    assert counts["generate"] > 0 and "fid" not in counts and counts["report"] == 1
    imports = commands(published_all, "checkpoints import-edm")
    sources = {a[1].split("/")[-2]: a[0] for a in imports}  # results/<run>/models/<model>/network-final.pt
    for m in PUBLISHED["models"]:
        assert sources[m["name"]] == m["pickle"]
    for c in ("uncond", "cond"):
        for v in ("vp", "ve"):
            assert f"https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-{c}-{v}.pkl" in sources.values()
    # DG's released heads are imported for the EDM baselines; only the unpublished EDM-AOT
    # discriminators are trained
    imported = {tuple(option(a, "--out").split("/")[-3:-1]): a for a in commands(published_all, "dg import")}
    assert set(imported) == {("edm-uncond-vp", "plain"), ("edm-cond-vp", "plain")}
    assert imported[("edm-uncond-vp", "plain")][0] == "downloads/dg/cifar_uncond/discriminator_60.pt"
    assert "--no-cond" in imported[("edm-uncond-vp", "plain")] and "--cond" in imported[("edm-cond-vp", "plain")]
    trained = {tuple(option(a, "--out").split("/")[-2:]) for a in commands(published_all, "dg train")}
    assert trained == {(m, mode) for m in ("aot-uncond", "aot-cond") for mode in ("plain", "aot")}


def test_given_discriminators_replace_every_training(tmp_path):
    cfg = copy.deepcopy(PUBLISHED)
    for model in ("aot-uncond", "aot-cond"):
        cfg["dg"]["discriminators"][model] = {mode: f"placed/{model}-{mode}.pt" for mode in ("plain", "aot")}
    res = dry_run("table3", config=cfg, cwd=tmp_path)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    out = res.stdout + res.stderr
    counts = job_counts(out)
    assert "train" not in counts and "train_discriminator" not in counts and counts["import_discriminator"] == 6
    aot_imports = [a for a in commands(out, "dg import") if a[0] == "placed/aot-cond-aot.pt"]
    assert len(aot_imports) == 1 and "--aot" in aot_imports[0] and "--cond" in aot_imports[0]


def test_missing_placed_discriminator_stops_with_where_to_get_it(tmp_path, record_fault):
    path = tmp_path / "config-under-test.yaml"
    path.write_text(yaml.safe_dump(PUBLISHED))
    target = PUBLISHED["dg"]["discriminators"]["edm-uncond-vp"]["plain"]
    res = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--snakefile", str(ROOT / "Snakefile"),
                          "--directory", str(tmp_path), target, "--configfile", str(path)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert res.returncode != 0
    lines = [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("error: discriminator")]
    assert len(set(lines)) == 1, res.stderr[-3000:]
    assert "https://drive.google.com/drive/folders/1Mf3F1yGfWT8bO0_iOBX-PWG3O-OLROE2" in lines[0] and target in lines[0]
    assert not (tmp_path / target).exists()
    record_fault("bad input", "published.yaml: DG's discriminator not placed",
                 "the job stops with one line naming DG's folder and the path")


def test_missing_published_pickle_names_where_to_get_it(tmp_path, capsys, record_fault):
    pkl = tmp_path / "downloads" / "edm-aot" / "edm-aot-cifar10-32x32-cond.pkl"
    with pytest.raises(SystemExit) as exc:
        aot_main(["checkpoints", "import-edm", str(pkl), str(tmp_path / "net.pt")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1
    assert "https://drive.google.com/file/d/1KOSnBal7Mf1wVLwOiKgOachxcwfsDmum" in err[0] and str(pkl) in err[0]
    assert not (tmp_path / "net.pt").exists()
    record_fault("bad input", "EDM-AOT pickle not placed", "one `error:` line naming the authors' Drive file")


# ------------------------------------------------------------------------------------------------
# DG's released files, in DG's layout


def _seeded_state(shapes, seed, scale=0.05):
    """A state dict with exactly these (key, shape) pairs, in this order, filled with N(0, scale^2)."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) * scale for k, shape in shapes}


def _dg_evaluate(classifier_state, head_state, classifier_kwargs, head_kwargs, x, t, y):
    """DG's classifier_lib.get_discriminator: classifier features, then the head's sigmoid, each
    module built in DG's configuration and loaded strictly from the file's state dict."""
    cls, head = ADMEncoder(**classifier_kwargs).eval(), ADMEncoder(**head_kwargs).eval()
    cls.load_state_dict(classifier_state)
    head.load_state_dict(head_state)
    with torch.no_grad():
        return head(cls(x, timesteps=t, feature=True), t, sigmoid=True, condition=y).view(-1)


def test_import_dg_layout_files(tmp_path, capsys, record_fault):
    """DG's bare state dicts (torch.save(model.state_dict()), DG's configuration; the classifier
    narrowed to 8x8 images and width 64 to stay small) become a discriminator that gives DG's outputs."""
    ck = dict(dg.dg_classifier_kwargs(8, 3), width=64)
    hk = dg.dg_discriminator_kwargs(64, condition=True)
    with torch.device("meta"):
        cls_shapes = [(k, v.shape) for k, v in ADMEncoder(**ck).state_dict().items()]
        head_shapes = [(k, v.shape) for k, v in ADMEncoder(**hk).state_dict().items()]
    cls_state, head_state = _seeded_state(cls_shapes, 1), _seeded_state(head_shapes, 2)
    torch.save(cls_state, tmp_path / "8x8_classifier.pt")
    torch.save(head_state, tmp_path / "discriminator_250.pt")
    out = tmp_path / "dg" / "discriminator.pt"
    base = ["dg", "import", str(tmp_path / "discriminator_250.pt"), "--out", str(out),
            "--feature-extractor", str(tmp_path / "8x8_classifier.pt"), "--resolution", "8"]
    aot_main(base + ["--no-aot", "--cond"])
    disc, meta = dg.load_discriminator(out)
    assert meta["aot"] is False and meta["cond"] is True and meta["train_seeds"] is None
    assert meta["source"] == f"dg:{tmp_path / 'discriminator_250.pt'}"
    assert meta["sha256"] == hashlib.sha256((tmp_path / "discriminator_250.pt").read_bytes()).hexdigest()
    x, t, y = torch.randn(4, 3, 8, 8), torch.tensor([0.05, 0.3, 0.6, 0.9]), torch.tensor([1, 7, 999, 0])
    with torch.no_grad():
        ours = disc(x, t, y)
    torch.testing.assert_close(ours, _dg_evaluate(cls_state, head_state, ck, hk, x, t, y), rtol=0, atol=0)
    capsys.readouterr()

    # the model's conditioning must match the head's; the classifier is required
    for args, expect in ((["--no-cond"], "is class-conditional, the model is unconditional"),
                         (None, "pass its ADM classifier")):
        bad = tmp_path / "bad.pt"
        argv = (base + args) if args else ["dg", "import", str(tmp_path / "discriminator_250.pt"), "--out", str(bad),
                                           "--cond"]
        if args:
            argv[argv.index("--out") + 1] = str(bad)
        with pytest.raises(SystemExit) as exc:
            aot_main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and len(err) == 1 and expect in err[0], err
        assert not bad.exists()
    record_fault("bad input", "DG head for a model of the other kind / without its classifier",
                 "one `error:` line, exit 2, nothing written")


def test_import_own_discriminator_is_a_checked_copy(tmp_path, capsys):
    torch.manual_seed(0)
    ext = ADMEncoder(8, 1, 32, 1, (32, 16, 8), 1, num_head_channels=32)
    head = ADMEncoder(8, 32, 32, 1, (32, 16, 8), 1, num_head_channels=32)
    dg.save_discriminator(tmp_path / "mine.pt", GuidedDiscriminator(ext, head), aot=True, cond=False,
                          train_seeds=[0, 9])
    aot_main(["dg", "import", str(tmp_path / "mine.pt"), "--out", str(tmp_path / "out.pt"), "--aot", "--no-cond"])
    assert (tmp_path / "out.pt").read_bytes() == (tmp_path / "mine.pt").read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit):
        aot_main(["dg", "import", str(tmp_path / "mine.pt"), "--out", str(tmp_path / "o2.pt"), "--no-aot"])
    assert "trained with AOT noise but is given as the plain" in capsys.readouterr().err
    assert not (tmp_path / "o2.pt").exists()
    with pytest.raises(UserError, match="1Mf3F1yGfWT8bO0_iOBX-PWG3O-OLROE2"):
        import_discriminator(tmp_path / "absent" / "discriminator_60.pt", tmp_path / "o3.pt")


@pytest.mark.slow
def test_import_dg_released_layout_full_size(tmp_path):
    """Files with exactly the keys and shapes of DG's 32x32_classifier.pt and discriminator_250.pt
    (recorded from DG's own code in dg_golden.pt; 48M + 3.4M parameters) import, and each tensor of the
    files lands in the module at the same key."""
    shapes = torch.load(DATA / "dg_golden.pt", weights_only=True)["state_dict_shapes"]
    cls_state = _seeded_state([(k, s) for k, s in shapes["classifier32"]], 3, 0.02)
    head_state = _seeded_state([(k, s) for k, s in shapes["discriminator_cond"]], 4, 0.02)
    torch.save(cls_state, tmp_path / "32x32_classifier.pt")
    torch.save(head_state, tmp_path / "discriminator_250.pt")
    meta = import_discriminator(tmp_path / "discriminator_250.pt", tmp_path / "d.pt",
                                   feature_extractor=tmp_path / "32x32_classifier.pt", image_size=32, cond=True)
    assert meta["feature_extractor_path"] == str((tmp_path / "32x32_classifier.pt").resolve())
    disc, _ = dg.load_discriminator(tmp_path / "d.pt")
    for module, state in ((disc.feature_extractor, cls_state), (disc.head, head_state)):
        loaded = module.state_dict()
        assert list(loaded) == list(state)
        assert all(torch.equal(loaded[k], v) for k, v in state.items())
    with torch.no_grad():
        p = disc(torch.randn(2, 3, 32, 32), torch.tensor([0.1, 0.8]), torch.tensor([3, 9]))
    assert p.shape == (2,) and bool(((p > 0) & (p < 1)).all())


# ------------------------------------------------------------------------------------------------
# Config checks per part


# The dg section's checks, with their messages, are tested in-process in test_settings.py.
