"""The Snakemake workflow without running jobs: dry runs of the paper DAG, config validation and
layering, the workflow as a module of another one, and config/README.md against the schema."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def dry_run(*args: str, configfile: Path | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`snakemake -n` in `cwd`, by default a fresh folder: outputs of the user's own runs in the
    repository (results/demo after `make demo`) must not change what a dry run plans."""
    if cwd is None:
        with tempfile.TemporaryDirectory() as tmp:
            return dry_run(*args, configfile=configfile, cwd=Path(tmp))
    cmd = [*SNAKEMAKE, "-n", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(cwd), *args]
    if configfile is not None:
        cmd += ["--configfile", str(configfile)]  # last: it takes several values
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=300)


def job_counts(output: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    in_table = False
    for line in output.splitlines():
        if re.match(r"^job\s+count\s*$", line.strip()):
            in_table = True
            continue
        if in_table:
            m = re.match(r"^([A-Za-z_0-9]+)\s+(\d+)$", line.strip())
            if m:
                counts[m.group(1)] = int(m.group(2))
                if m.group(1) == "total":
                    break
    return counts


def paper_sample_sets(cfg: dict) -> set[tuple[str, int, float]]:
    """The distinct (model, steps, rho) sample sets the paper's Tables 1-5 need, computed here
    independently of the workflow's own helpers."""
    s = cfg["sampling"]
    d = (s["default"]["num_steps"], float(s["default"]["rho"]))
    grids = cfg["tables"].get("published_grids", True)
    rows, t5_models = list(s["table4"]["rows"]), list(s["table5"]["models"])
    sets = set()
    for part in ("uncond", "cond"):
        edm, aot = cfg["tables"][part]["edm"], cfg["tables"][part]["aot"]
        best = s["best"][aot]
        sets |= {(edm, *d), (aot, *d), (aot, best["num_steps"], float(best["rho"]))}
        published = cfg["tables"][part].get("edm_published")
        if published:  # EDM's published network, default sampler
            sets.add((published, *d))
        if published and grids:  # and over the retrained EDM's Table 4 rows and Table 5's grid
            rows += [{"model": published, "num_steps": r["num_steps"]} for r in s["table4"]["rows"]
                     if r["model"] == edm]
            t5_models += [published] if edm in s["table5"]["models"] else []
    for row, rho in itertools.product(rows, s["table4"]["rho"]):
        sets.add((row["model"], row["num_steps"], float(rho)))
    for m, nfe, rho in itertools.product(t5_models, s["table5"]["nfe"], s["table5"]["rho"]):
        sets.add((m, (nfe + 1) // 2, float(rho)))
    return sets


@pytest.fixture(scope="module")
def paper_cfg() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


@pytest.fixture(scope="module")
def paper_dry_run() -> subprocess.CompletedProcess:
    return dry_run()


def test_paper_dag_job_counts(paper_cfg, paper_dry_run):
    assert paper_dry_run.returncode == 0, paper_dry_run.stderr[-3000:]
    counts = job_counts(paper_dry_run.stdout + paper_dry_run.stderr)
    reps = paper_cfg["fid"]["repeats"]
    assert reps == 3 and paper_cfg["fid"]["num_images"] == 50_000
    n_sets = len(paper_sample_sets(paper_cfg))
    assert counts["generate"] == n_sets  # one job per sample set writes its `reps` repeats
    # EDM's published networks over Table 4's EDM rows (18 and 8 steps uncond, 18 cond: 30 sets) and
    # Table 5's grid (2 x 44 sets), less the 12 the two share (NFE 35 and 15 at rho 9, 27, 81, 243)
    without = {**paper_cfg, "tables": {**paper_cfg["tables"], "published_grids": False}}
    assert n_sets - len(paper_sample_sets(without)) == 30 + 88 - 12
    # Table 3: EDM+DG (retrained and published), EDM-AOT+DG w/o AOT, EDM-AOT+DG w/ AOT, both parts.
    guided = sum(len([m for m in (t["edm"], t.get("edm_published")) if m]) + 2
                 for t in (paper_cfg["tables"][p] for p in ("uncond", "cond")))
    assert counts["train_discriminator"] == guided == 8
    assert counts["generate_dg"] == guided
    models = paper_cfg["models"]
    assert counts["fetch_edm_pickle"] == sum(m["source"] == "edm-pickle" for m in models) == 2  # EDM's VP networks
    assert "fid" not in counts and "fid_dg" not in counts  # a set's job measures its FID
    assert counts["train"] == sum(m["source"] == "train" for m in models) == 4
    for rule in ("prepare_dataset", "download_cifar10", "fetch_fid_assets", "reference_stats", "report"):
        assert counts[rule] == 1, rule
    for i in range(1, 6):
        assert counts[f"table{i}"] == 1
    for i in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11):
        assert counts[f"figure{i}"] == 1
    # Sample sets shared between tables are generated once: Table 4's 18-step points are Table 5's
    # NFE-35 points.
    shared = {(r["model"], r["num_steps"]) for r in paper_cfg["sampling"]["table4"]["rows"]}
    assert ("aot-uncond", 18) in shared


def test_single_table_builds_only_what_it_needs(paper_cfg):
    res = dry_run("table1")
    assert res.returncode == 0, res.stderr[-3000:]
    counts = job_counts(res.stdout + res.stderr)
    # EDM retrained and published, EDM-AOT (rho 7, 18 steps), EDM-AOT (best): 3 repeats each
    assert counts["generate"] == 4
    assert counts["train"] == 2  # the two unconditional models only
    assert "generate_dg" not in counts and "table4" not in counts and "report" not in counts


def test_tables_share_sample_sets(paper_cfg):
    t4 = job_counts((r := dry_run("table4")).stdout + r.stderr)["generate"]
    t5 = job_counts((r := dry_run("table5")).stdout + r.stderr)["generate"]
    both = job_counts((r := dry_run("table4", "table5")).stdout + r.stderr)["generate"]
    shared_sets = 24  # 6 models (EDM's published networks too) x 4 rhos (9, 27, 81, 243) at 18 steps = NFE 35
    shared_sets += 8  # EDM-AOT's 14-step rows = NFE 27, x 4 rhos
    shared_sets += 12  # the unconditional 8-step rows (published EDM too) = NFE 15, x 4 rhos
    assert both == t4 + t5 - shared_sets


def test_demo_dag(tmp_path):
    res = dry_run(configfile=ROOT / "config" / "demo.yaml")
    assert res.returncode == 0, res.stderr[-3000:]
    counts = job_counts(res.stdout + res.stderr)
    assert counts["train"] == 4 and counts["report"] == 1
    assert "download_cifar10" not in counts and "fetch_fid_assets" not in counts  # offline


# ------------------------------------------------------------------------------------------------
# Config validation: each bad config fails before any job runs, with a message naming the problem.


def _bad_config(tmp_path: Path, mutate) -> Path:
    cfg = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    mutate(cfg)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _set(path: str, value):
    def mutate(cfg):
        *keys, last = path.split(".")
        node = cfg
        for k in keys:
            node = node[int(k)] if k.isdigit() else node[k]
        node[last] = value
    return mutate


# Every config check, with its message, is tested in-process in test_settings.py.


def test_official_edm_pickles_as_baselines(tmp_path):
    """`source: edm-pickle` replaces the baseline's training by a (local) import of the official pickle."""
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    for m in cfg["models"]:
        if m["name"] in ("edm-uncond", "edm-cond"):  # the paper config names no pickle for them
            assert "pickle" not in m
            m["source"] = "edm-pickle"
            m["pickle"] = ("https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-"
                           f"{'cond' if m['cond'] else 'uncond'}-ve.pkl")
    path = tmp_path / "pickles.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = dry_run("-p", "table1", "table2", configfile=path, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    counts = job_counts(res.stdout + res.stderr)
    # the two baselines converted, and EDM's published VP networks of the paper config
    assert counts["fetch_edm_pickle"] == 4 and counts["train"] == 2
    assert "edm-cifar10-32x32-uncond-ve.pkl" in res.stdout + res.stderr


def test_config_errors_are_one_line_per_problem(tmp_path):
    """Schema problems are reported together, one line each naming the key; neither the schema nor
    the config is printed."""
    def mutate(cfg):
        cfg["fid"]["repeats"] = "three"
        cfg["device"] = "tpu"
        cfg["training"]["batchsize"] = 3
    res = dry_run(configfile=_bad_config(tmp_path, mutate), cwd=tmp_path)
    assert res.returncode != 0
    out = res.stdout + res.stderr
    lines = [line for line in out.splitlines() if line.startswith("config error: ")]
    assert len(lines) == 3, out[-3000:]
    assert lines[0] == "config error: device: 'tpu' is not one of ['cuda', 'cpu']"
    assert lines[1] == "config error: fid.repeats: 'three' is not of type 'integer'"
    assert lines[2].startswith("config error: training.batchsize: unknown key (known here: arch, ")
    for dump in ("$defs", "additionalProperties", "On instance", "Failed validating"):
        assert dump not in out
    assert len(out.splitlines()) < 20, out


# ------------------------------------------------------------------------------------------------
# Which configuration: a complete --configfile stands alone, a partial one is layered onto the
# paper's config/config.yaml (config/README.md).


def _resources_of(output: str, rule: str) -> list[str]:
    """The `resources:` lines of the dry run's jobs of one rule."""
    out, in_rule = [], False
    for line in output.splitlines():
        if re.match(r"^(local)?rule \S+:$", line):
            in_rule = line.strip() in (f"rule {rule}:", f"localrule {rule}:")
        elif in_rule and line.startswith("    resources: "):
            out.append(line.strip())
    return out


def test_partial_site_file_layers_onto_the_paper_config(tmp_path, paper_dry_run):
    site = tmp_path / "site.yaml"
    site.write_text("resources:\n  train: {partition: gpu-a100, runtime: 4000}\n")
    res = dry_run(configfile=site, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert "config: resources from the given config, everything else from config/config.yaml" in out
    # the paper's DAG, job for job
    assert job_counts(out) == job_counts(paper_dry_run.stdout + paper_dry_run.stderr)
    assert "results/paper/README.md" in out
    # the site's keys win, the paper's other resources of the rule stay
    train = _resources_of(out, "train")
    assert len(train) == 4
    for line in train:
        assert "slurm_partition=gpu-a100" in line and "runtime=4000" in line, line
        assert "gpu=4" in line and "mem_mb=128000" in line and "cpus_per_task=32" in line, line


def test_complete_config_stands_alone(tmp_path):
    """Nothing of config/config.yaml leaks into a complete config: without a best sampler of its
    own, aot-cond uses the default sampler, not the paper's (15 steps, rho 72)."""
    cfg = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    del cfg["sampling"]["best"]["aot-cond"]
    path = tmp_path / "demo-no-best.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = dry_run("-p", "table2", configfile=path, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert "config/config.yaml" not in out and "results/demo/tables/table2.csv" in out
    assert "rho72" not in out and "n15" not in out
    assert job_counts(out)["generate"] == 2  # EDM and EDM-AOT, default sampler: one job per set


# ------------------------------------------------------------------------------------------------
# The workflow as a Snakemake module of another workflow (what snakedeploy sets up)


def test_workflow_as_a_module(tmp_path):
    tiny = ROOT / "tests" / "configs" / "tiny.yaml"
    outer = tmp_path / "Snakefile"
    outer.write_text(
        "module aot:\n"
        "    snakefile:\n"
        f"        {str(ROOT / 'Snakefile')!r}\n"
        "    config:\n"
        "        config\n"
        "\n"
        "\n"
        "use rule * from aot\n"
    )
    cmd = [*SNAKEMAKE, "-n", "-p", "--snakefile", str(outer), "--directory", str(tmp_path), "--configfile", str(tiny)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    counts = job_counts(res.stdout + res.stderr)
    (tmp_path / "direct").mkdir()
    direct = dry_run(configfile=tiny, cwd=tmp_path / "direct")
    assert direct.returncode == 0, direct.stderr[-3000:]
    assert counts == job_counts(direct.stdout + direct.stderr)
    assert counts["train"] == 4 and counts["report"] == 1
    assert " -m aot train --outdir results/tiny/models/" in res.stdout


# ------------------------------------------------------------------------------------------------
# config/README.md documents every key of the schema: its key table is rendered from the schema.

CONFIG_README = ROOT / "config" / "README.md"
KEYS_BEGIN = "<!-- keys: rendered from workflow/schemas/config.schema.yaml by tests/test_workflow.py -->"
KEYS_END = "<!-- end of keys -->"


def config_key_rows(schema: dict) -> list[str]:
    """One Markdown row per config key: dotted path, values, default, description. A mapping that
    repeats the keys of one rendered before (same `$ref`) is one row pointing there."""
    defs = schema["$defs"]
    first: dict[str, str] = {}  # $defs name -> the path where its keys are listed
    rows: list[str] = []

    def resolve(node: dict) -> tuple[dict, str | None]:
        ref = node.get("$ref", "").split("/")[-1] or None
        if ref is None:
            return node, None
        base = defs[ref]
        props = {k: {**v, **node.get("properties", {}).get(k, {})} for k, v in base.get("properties", {}).items()}
        merged = {**base, **{k: v for k, v in node.items() if k != "$ref"}}
        if props:
            merged["properties"] = props
        return merged, ref

    def kind(node: dict) -> str:
        node, _ = resolve(node)
        if "enum" in node:
            return " or ".join(f"`{v}`" for v in node["enum"])
        if node.get("type") == "array":
            return f"list of {kind(node['items'])}"
        return {"object": "mapping"}.get(node.get("type"), node.get("type", ""))

    def walk(raw: dict, path: str, required: bool) -> None:
        node, ref = resolve(raw)
        default = "required" if required else (f"`{json.dumps(node['default'])}`" if "default" in node else "")
        desc = node.get("description", "")
        repeat = ref in first and node.get("type") == "object"
        if repeat:
            own = {k: v["default"] for k, v in raw.get("properties", {}).items() if "default" in v}
            desc += f"; keys as under `{first[ref]}`"
            if own:
                desc += " (defaults: " + ", ".join(f"{k} `{json.dumps(v)}`" for k, v in own.items()) + ")"
        if path and not path.endswith("[]"):
            rows.append(f"| `{path}` | {kind(node)} | {default} | {desc} |")
        if repeat:
            return
        if ref is not None and node.get("type") == "object":
            first[ref] = path
        items = node.get("items")
        if items is not None and resolve(items)[0].get("type") == "object":
            walk(items, f"{path}[]", False)
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}.<model>", False)
        for name, child in node.get("properties", {}).items():
            walk(child, f"{path}.{name}" if path else name, name in node.get("required", []))

    walk(schema, "", False)
    return ["| key | value | default | description |", "|---|---|---|---|", *rows]


def _readme_keys() -> list[str]:
    text = CONFIG_README.read_text()
    assert KEYS_BEGIN in text and KEYS_END in text, "config/README.md lost its key-table markers"
    return text.split(KEYS_BEGIN, 1)[1].split(KEYS_END, 1)[0].strip().splitlines()


def test_config_readme_lists_every_key():
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    rendered = config_key_rows(schema)
    assert _readme_keys() == rendered, "config/README.md is stale: run `python tests/test_workflow.py`"
    # independently of the renderer: every key name of the schema is in the table
    names: set[str] = set()

    def collect(node):
        if isinstance(node, dict):
            names.update(node.get("properties", {}))
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(schema)
    table = "\n".join(rendered)
    missing = sorted(n for n in names if not re.search(rf"[`.]{re.escape(n)}`", table))
    assert not missing, missing


if __name__ == "__main__":
    # Re-render the key table of config/README.md from the schema.
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    head, rest = CONFIG_README.read_text().split(KEYS_BEGIN, 1)
    tail = rest.split(KEYS_END, 1)[1]
    rows = "\n".join(config_key_rows(schema))
    CONFIG_README.write_text(f"{head}{KEYS_BEGIN}\n{rows}\n{KEYS_END}{tail}")


def test_documented_commands_name_targets_before_configfile():
    """`--configfile` takes several files, so a target written after it is read as one more config
    file and the command fails: every command the docs and configs show names its targets first
    (or ends the file list with `--`)."""
    after = re.compile(r"--configfile(?:\s+[\w./-]+\.ya?ml)+[ \t]+(?!-)([\w.]+)")
    files = [ROOT / "README.md", ROOT / "Snakefile", *sorted((ROOT / "docs").glob("*.md")),
             *sorted(ROOT.glob("profiles/*/*.yaml")),
             *sorted((ROOT / "config").glob("*.yaml")), ROOT / "config" / "README.md",
             *sorted((ROOT / "workflow").rglob("*.smk"))]
    bad = [f"{p.relative_to(ROOT)}: ...{m.group(0)}" for p in files for m in after.finditer(p.read_text())]
    assert not bad, bad
    # --config KEY=VALUE ... takes several values too; and an option's value that starts with a
    # dash must be attached with `=` (`--apptainer-args="--nv"`), or argparse reads it as an option
    config_after = re.compile(r"--config(?:\s+[^\s`]+=[^\s`]+)+[ \t]+(?!-)(\w+)\b(?!=)")
    dash_value = re.compile(r"--[\w-]+(?:-args|_args)\s+[\"']-")
    bad = [f"{p.relative_to(ROOT)}: ...{m.group(0)}" for p in files for rx in (config_after, dash_value)
           for m in rx.finditer(p.read_text())]
    assert not bad, bad
