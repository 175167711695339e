"""The conda environment for cluster runs pins exactly what pyproject.toml pins."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pins(requirements) -> dict[str, str]:
    out = {}
    for req in requirements:
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)$", req.strip())
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def test_conda_env_agrees_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"]
    assert all("==" in d for d in deps), "every runtime dependency is pinned exactly"
    env = yaml.safe_load((ROOT / "envs" / "aot.yaml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert _pins(pip_section) == _pins(deps)
    assert any(line.strip().startswith("-e") for line in pip_section), "the aot package itself is installed"
    py = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert py.startswith("python=3.11")


def test_every_rule_runs_in_the_conda_env():
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        text = smk.read_text()
        shells = len(re.findall(r"^\s+shell:", text, re.M))
        condas = len(re.findall(r"^\s+conda:", text, re.M))
        # every one, also the rule that only prints instructions (DG's classifier is placed by hand)
        assert condas == shells, smk.name
