"""docs/fidelity.md, section 8, against the workflow: what each figure is drawn from (parts, sample
sets or diagnostics, step counts and rho, options), read from the doc's table and checked against
the dry runs of the shipped configs; and the published networks over the grids of Tables 4 and 5
(`tables.published_grids`, aot.settings.RunSettings)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from aot.keys import sampler_key
from aot.settings import RunSettings

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "fidelity.md"
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
PAPER = ROOT / "config" / "config.yaml"
CONFIGS = ("config.yaml", "demo.yaml", "published.yaml", "authors.yaml")
ROLES = ("edm", "edm_published", "aot")


# ------------------------------------------------------------------------------------------------
# The doc's table


def doc_figures() -> dict[str, dict]:
    """figure -> {parts, source, options, paper} from the table of section 8."""
    text = DOC.read_text()
    section = text.split("## 8. Figures", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or not cells[0].isdigit():
            continue
        figure, parts, source, options, paper = cells
        rows[figure] = {"parts": [p.strip() for p in parts.split(",")], "source": source.strip("`"),
                        "options": shlex.split(options.strip("`")), "paper": paper}
    return rows


def test_the_doc_table_names_every_figure_once():
    rows = doc_figures()
    assert sorted(rows, key=int) == [str(i) for i in range(1, 12)]
    for figure, row in rows.items():
        assert set(row["parts"]) <= {"uncond", "cond"} and row["parts"], (figure, row)
        assert re.fullmatch(r"table[45]|table5\((\w+, )*\w+\)|diagnostics\(steps\[(0|-1)\]\)|"
                            r"samples\((\w+@(default|best), )*\w+@(default|best)\)", row["source"]), row


# ------------------------------------------------------------------------------------------------
# The configs and their dry runs


def settings_of(name: str) -> RunSettings:
    """The config as the workflow reads it (a partial one layered onto config/config.yaml)."""
    config = yaml.safe_load((ROOT / "config" / name).read_text())
    return RunSettings.load(config, schema=SCHEMA, paper=PAPER)


@pytest.fixture(scope="module")
def dry_runs() -> dict[str, str]:
    """`snakemake -n -p figures` of every shipped config, run side by side, each in a fresh folder."""
    with tempfile.TemporaryDirectory() as tmp:
        procs = {}
        for name in CONFIGS:
            cwd = Path(tmp) / name
            cwd.mkdir()
            cmd = [sys.executable, "-m", "snakemake", "-n", "-p", "--snakefile", str(ROOT / "Snakefile"),
                   "--directory", str(cwd), "figures", "--configfile", str(ROOT / "config" / name)]
            procs[name] = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                           text=True)
        out = {name: p.communicate(timeout=300)[0] for name, p in procs.items()}
        for name, p in procs.items():
            assert p.returncode == 0, f"{name}:\n{out[name][-3000:]}"
    return out


def figure_commands(output: str) -> dict[str, dict]:
    """figure -> {options (without --rhos and --out-prefix), inputs} of each `aot report figure`."""
    commands = {}
    for line in output.splitlines():
        if " report figure --figure " not in line:
            continue
        words = shlex.split(line.split(" report figure ", 1)[1].split(" > ", 1)[0])
        figure, words = words[1], words[2:]
        options, inputs, i = [], [], 0
        while i < len(words):
            if words[i] in ("--rhos", "--out-prefix"):
                i += 2
            elif words[i].startswith("--"):
                takes_value = i + 1 < len(words) and not words[i + 1].startswith("--") and \
                    words[i] in ("--kind", "--step", "--decimals")
                options += words[i:i + 1 + takes_value]
                i += 1 + takes_value
            else:
                inputs.append(words[i])
                i += 1
        if figure.isdigit():  # the paper's figures (not the curvature plot)
            commands[figure] = {"options": options, "inputs": inputs}
    return commands


def key(settings: RunSettings, num_steps: int, rho: float) -> str:
    s = settings.config["sampling"]
    return sampler_key(s["solver"], num_steps, rho, s["S_churn"])


def grid_models(settings: RunSettings) -> tuple[list[tuple[str, int]], list[str]]:
    """(Table 4's rows as (model, steps), Table 5's models) as docs/fidelity.md words them: the
    config's, and with tables.published_grids each part's published network at the step counts of
    its retrained EDM's rows, and in Table 5 where that EDM is."""
    c = settings.config
    rows = [(r["model"], r["num_steps"]) for r in c["sampling"]["table4"]["rows"]]
    models = list(c["sampling"]["table5"]["models"])
    if c["tables"].get("published_grids", True):
        for part in settings.parts:
            published, edm = c["tables"][part].get("edm_published"), c["tables"][part]["edm"]
            if published:
                rows += [(published, n) for m, n in list(rows) if m == edm and (published, n) not in rows]
                models += [published] if edm in models and published not in models else []
    return rows, models


def nfe_steps(nfe: int, solver: str) -> int:
    return (nfe + 1) // 2 if solver == "heun" else nfe


def expected_sets(settings: RunSettings, source: str, parts: list[str]) -> set[tuple[str, str]]:
    """(model, key) of the FID results a `table4`, `table5` or `table5(roles)` source names."""
    c = settings.config
    rows, models = grid_models(settings)
    if source == "table4":
        return {(m, key(settings, n, rho)) for m, n in rows for rho in c["sampling"]["table4"]["rho"]}
    t5 = c["sampling"]["table5"]
    if source != "table5":
        roles = re.fullmatch(r"table5\((.*)\)", source).group(1).split(", ")
        wanted = {c["tables"][p].get(r) for p in parts if p in settings.parts for r in roles}
        models = [m for m in models if m in wanted]
    return {(m, key(settings, nfe_steps(nfe, settings.solver), rho))
            for m in models for nfe in t5["nfe"] for rho in t5["rho"]}


def expected_samples(settings: RunSettings, source: str, part: str) -> list[str]:
    c = settings.config
    run = c["run"]
    paths = []
    for item in re.fullmatch(r"samples\((.*)\)", source).group(1).split(", "):
        role, sampler = item.split("@")
        model = c["tables"][part].get(role)
        if not model:
            continue
        s = c["sampling"]["best"].get(model, c["sampling"]["default"]) if sampler == "best" \
            else c["sampling"]["default"]
        path = f"results/{run}/samples/{model}/{key(settings, s['num_steps'], s['rho'])}/rep0.npz"
        paths += [path] if path not in paths else []
    return paths


def fid_sets(settings: RunSettings, inputs: list[str]) -> set[tuple[str, str]]:
    """(model, key) of FID result paths; every set with all its repeats."""
    run, repeats = settings.config["run"], settings.config["fid"]["repeats"]
    found: dict[tuple[str, str], set[int]] = {}
    for p in inputs:
        m = re.fullmatch(rf"results/{re.escape(run)}/fid/([^/]+)/([^/]+)/rep(\d+)\.json", p)
        assert m, p
        found.setdefault((m.group(1), m.group(2)), set()).add(int(m.group(3)))
    assert all(r == set(range(repeats)) for r in found.values()), found
    return set(found)


def part_of(settings: RunSettings, model: str) -> str:
    return "cond" if settings.models[model]["cond"] else "uncond"


def steps_rho(settings: RunSettings, inputs: list[str]) -> set[tuple[int, float]]:
    """(steps, rho) of every input (FID results, sample sets, diagnostics)."""
    out = set()
    for p in inputs:
        m = re.search(r"-n(\d+)-rho([\d.]+)", p)
        out.add((int(m.group(1)), float(m.group(2))))
    return out


@pytest.mark.parametrize("name", CONFIGS)
def test_the_doc_states_what_each_figure_is_drawn_from(dry_runs, name):
    """Every row of docs/fidelity.md's figure table against the config's dry run: the figure is
    drawn (for the config's parts), from exactly the inputs the row names, for exactly its parts,
    with exactly its options; for config/config.yaml also the step counts and rho values it
    states."""
    settings = settings_of(name)
    c = settings.config
    commands = figure_commands(dry_runs[name])
    rows = doc_figures()
    drawn = {f for f, row in rows.items() if set(row["parts"]) & set(settings.parts)}
    assert set(commands) == drawn, (name, sorted(commands))
    for figure in sorted(drawn, key=int):
        row, cmd = rows[figure], commands[figure]
        where = f"{name}: Figure {figure}"
        assert cmd["options"] == row["options"], (where, cmd["options"])
        source, parts = row["source"], [p for p in row["parts"] if p in settings.parts]
        if source.startswith("table"):
            got = fid_sets(settings, cmd["inputs"])
            assert got == expected_sets(settings, source, parts), where
            assert {part_of(settings, m) for m, _ in got} == set(parts), where
        elif source.startswith("diagnostics"):
            steps = c["diagnostics"]["steps"][0 if "[0]" in source else -1]
            (part,) = parts
            want = f"results/{c['run']}/diagnostics/{part}-{key(settings, steps, c['diagnostics']['rho'])}.npz"
            assert cmd["inputs"] == [want], (where, cmd["inputs"])
        else:
            (part,) = parts
            assert cmd["inputs"] == expected_samples(settings, source, part), (where, cmd["inputs"])
            assert {part_of(settings, p.split("/")[3]) for p in cmd["inputs"]} == {part}, where
        if name == "config.yaml":
            check_paper_cell(row["paper"], steps_rho(settings, cmd["inputs"]), settings.solver, where)


def check_paper_cell(cell: str, have: set[tuple[int, float]], solver: str, where: str) -> None:
    """The step counts and rho values a row states for the paper's config: "18 steps, rho 7" pairs
    are among the inputs', "18, 14 and 8 steps at rho 3-421" are their steps and rho range, "rho 9,
    27, 81, 243 at NFE 7-47" their rho values and NFE range."""
    for n, rho in re.findall(r"(\d+) steps, rho (\d+)", cell):
        assert (int(n), float(rho)) in have, (where, cell)
    steps = sorted({n for n, _ in have})
    rhos = sorted({r for _, r in have})
    m = re.search(r"([\d, and]+) steps at rho (\d+)-(\d+)", cell)
    if m:
        assert sorted(int(v) for v in re.findall(r"\d+", m.group(1))) == steps, (where, cell)
        assert (float(m.group(2)), float(m.group(3))) == (rhos[0], rhos[-1]), (where, cell)
    m = re.search(r"rho ([\d, ]+) at NFE (\d+)-(\d+)", cell)
    if m:
        assert [float(v) for v in m.group(1).split(", ")] == rhos, (where, cell)
        nfes = [2 * n - 1 if solver == "heun" else n for n in steps]
        assert (int(m.group(2)), int(m.group(3))) == (nfes[0], nfes[-1]), (where, cell)
    m = re.search(r"NFE (\d+)\)", cell)
    if m:
        assert any(2 * n - 1 == int(m.group(1)) for n in steps), (where, cell)


# ------------------------------------------------------------------------------------------------
# The published networks over Tables 4 and 5


def test_published_grids_follow_the_retrained_edm():
    """With tables.published_grids (the default) each part's published network joins Table 4 at
    the step counts of its retrained EDM's rows and Table 5 where that EDM is; off, or without
    edm_published, nothing is added; rows and models listed already are not repeated."""
    paper = settings_of("config.yaml")
    assert paper.published_grids
    assert paper.published_table4_rows() == [{"model": "edm-uncond-vp", "num_steps": 18},
                                             {"model": "edm-uncond-vp", "num_steps": 8},
                                             {"model": "edm-cond-vp", "num_steps": 18}]
    assert paper.published_table5_models() == ["edm-uncond-vp", "edm-cond-vp"]
    assert paper.table4_rows()[-3:] == paper.published_table4_rows()
    assert paper.table5_models() == ["edm-uncond", "aot-uncond", "edm-cond", "aot-cond", "edm-uncond-vp",
                                     "edm-cond-vp"]
    assert grid_models(paper) == ([(r["model"], r["num_steps"]) for r in paper.table4_rows()],
                                  paper.table5_models())
    off = RunSettings.load({"tables": {"published_grids": False}}, schema=SCHEMA, paper=PAPER)
    assert off.published_table4_rows() == [] and off.published_table5_models() == []
    assert off.table4_rows() == off.config["sampling"]["table4"]["rows"]
    for name in ("demo.yaml", "published.yaml"):  # no edm_published: no effect
        s = settings_of(name)
        assert s.published_table4_rows() == [] and s.published_table5_models() == []
    listed = RunSettings.load({"sampling": {"table4": {"rows": [{"model": "edm-uncond", "num_steps": 8},
                                                                 {"model": "edm-uncond-vp", "num_steps": 8}]},
                                            "table5": {"models": ["aot-cond", "edm-cond-vp", "edm-cond"]}}},
                              schema=SCHEMA, paper=PAPER)
    assert listed.published_table4_rows() == []
    assert listed.table5_models() == ["aot-cond", "edm-cond-vp", "edm-cond"]  # uncond's EDM is not in it


@pytest.mark.parametrize("name", ["config.yaml", "demo.yaml"])
def test_the_in_flight_plan_has_the_grids_the_workflow_draws(dry_runs, name):
    """`aot report in-flight` expects the sample sets of Tables 4 and 5 that the workflow makes
    (Figures 4 and 5 are drawn from exactly those), the published networks' included."""
    from aot.report.in_flight import RunPlan

    settings = settings_of(name)
    plan = RunPlan(settings.config).table_sets()
    commands = figure_commands(dry_runs[name])
    for table in (4, 5):
        assert set(plan[table]) == fid_sets(settings, commands[str(table)]["inputs"]), (name, table)
    assert any(m == "edm-uncond-vp" for m, _ in plan[4]) == (name == "config.yaml")


def test_published_grids_is_a_boolean_and_tables_need_a_part():
    from aot.settings import ConfigError

    with pytest.raises(ConfigError, match=r"tables\.published_grids: 'yes' is not of type 'boolean'"):
        RunSettings.load({"tables": {"published_grids": "yes"}}, schema=SCHEMA, paper=PAPER)
    config = yaml.safe_load(PAPER.read_text())
    config["tables"] = {"published_grids": True}
    with pytest.raises(ConfigError, match=r"tables: name the models of at least one part"):
        RunSettings.load(config, schema=SCHEMA, paper=PAPER)
