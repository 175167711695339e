"""The jobs' software outside the venv (docs/software.md): the conda environment envs/aot.yaml and
the container recipes built from it pin what pyproject.toml pins, hold what `python -m aot`
imports and nothing that only Snakemake needs, install from the copy that Snakemake makes of the
file, and the workflow runs the aot package of its own checkout in them (PYTHONPATH)."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
ENV_FILE = ROOT / "envs" / "aot.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"

# pyproject's runtime pins that Snakemake needs where it runs itself (login node, the Slurm
# plugin's job step), never inside a job (jsonschema is the package's too: aot.settings)
WORKFLOW_ONLY = {
    "snakemake",
    "snakemake-executor-plugin-slurm",
    "snakemake-executor-plugin-slurm-jobstep",
}
# in the env without the package importing them: clean-fid's own dependencies, pinned so that a
# resolver cannot pair torch with a torchvision built for another torch
FOR_DEPENDENCIES = {"torchvision", "requests"}
IMAGE = "docker://registry.example.org/aot-jobs:0.1.0"


def _name(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def _pins(requirements) -> dict[str, str]:
    out = {}
    for req in requirements:
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)$", req.strip())
        if m:
            out[_name(m.group(1))] = m.group(2)
    return out


def _env() -> dict:
    return yaml.safe_load(ENV_FILE.read_text())


def _pip_section(env: dict) -> list[str]:
    return next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)


def _pyproject_pins() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert all("==" in d for d in deps), "every runtime dependency is pinned exactly"
    return _pins(deps)


# ------------------------------------------------------------------------------------------------
# What the environment holds


def test_conda_env_pins_the_job_stack_as_pyproject_does():
    pins = _pyproject_pins()
    env = _env()
    pip = _pip_section(env)
    assert len(_pins(pip)) == len(pip), f"every pip entry is name==version: {pip}"
    assert _pins(pip) == {k: v for k, v in pins.items() if k not in WORKFLOW_ONLY}
    assert WORKFLOW_ONLY <= set(pins), "the names above are pyproject's"
    assert ["python=3.11", "pip"] == [d for d in env["dependencies"] if isinstance(d, str)]
    assert env["channels"] == ["conda-forge", "nodefaults"]


def _imported_modules() -> set[str]:
    """Top-level names of every module that src/aot imports, the package itself and the standard
    library left out."""
    names = set()
    for path in (ROOT / "src" / "aot").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"aot"}


def test_conda_env_holds_exactly_what_the_package_imports():
    dists = packages_distributions()
    imported = _imported_modules()
    assert {"torch", "numpy", "cleanfid", "sklearn", "PIL", "yaml"} <= imported  # the scan works
    unknown = sorted(m for m in imported if m not in dists)
    assert not unknown, f"src/aot imports modules that no installed distribution provides: {unknown}"
    needed = {_name(d) for m in imported for d in dists[m]}
    env = set(_pins(_pip_section(_env())))
    assert needed - env == set(), "src/aot imports these; add them to pyproject.toml and envs/aot.yaml"
    assert env - needed == FOR_DEPENDENCIES, "in envs/aot.yaml but imported by no job"
    assert not needed & WORKFLOW_ONLY, "the package must not need Snakemake's own dependencies"


def test_every_rule_runs_in_the_conda_env():
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        text = smk.read_text()
        shells = len(re.findall(r"^\s+shell:", text, re.M))
        condas = len(re.findall(r"^\s+conda:", text, re.M))
        # every one, also the rule that only prints instructions (DG's classifier is placed by hand)
        assert condas == shells, smk.name


# ------------------------------------------------------------------------------------------------
# Building it the way Snakemake and conda do


def _conda_pip_step(env_file: Path, pip_args: list[str]) -> subprocess.CompletedProcess:
    """What `conda env create --file F` does with F's `pip:` list: write it to a requirements file
    next to F and run the new environment's pip in F's folder (conda's pip installer; micromamba
    does the same). Here the pip of the running interpreter, dry: nothing is installed."""
    pip = _pip_section(yaml.safe_load(env_file.read_text()))
    req = env_file.parent / "condaenv.test.requirements.txt"
    req.write_text("".join(f"{line}\n" for line in pip))
    cmd = [sys.executable, "-m", "pip", "install", "-U", "-r", str(req), "--exists-action=b",
           "--dry-run", "--ignore-installed", "--disable-pip-version-check", *pip_args]
    return subprocess.run(cmd, cwd=env_file.parent, capture_output=True, text=True, timeout=600)


def _copy_as_snakemake_does(tmp_path: Path, text: str) -> Path:
    """Snakemake creates the environment from a copy of the file, .snakemake/conda/<hash>.yaml of
    the working directory (or of --conda-prefix), not from envs/aot.yaml."""
    copy = tmp_path / "workdir" / ".snakemake" / "conda" / "5f0e4c0b9d1a7e2c.yaml"
    copy.parent.mkdir(parents=True)
    copy.write_text(text)
    return copy


def test_a_relative_pip_path_breaks_in_the_copy(tmp_path, record_fault):
    # the fault: the entry `-e ../` that envs/aot.yaml once had to install the package itself
    text = ENV_FILE.read_text().replace("      - pyyaml==", "      - -e ../\n      - pyyaml==")
    res = _conda_pip_step(_copy_as_snakemake_does(tmp_path, text), ["--no-deps"])
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "does not appear to be a Python project" in out, out[-2000:]
    assert f"file://{tmp_path / 'workdir' / '.snakemake'}" in out, "`../` named .snakemake/, not the checkout"
    record_fault("conda env", "relative `pip: -e ../` in a copied env file", "pip fails, names .snakemake/")


def test_the_pip_section_resolves_from_the_copy(tmp_path):
    copy = _copy_as_snakemake_does(tmp_path, ENV_FILE.read_text())
    res = _conda_pip_step(copy, ["--no-deps"])
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    would = re.search(r"^Would install (.*)$", res.stdout, re.M)
    assert would, res.stdout[-2000:]
    got = {_name(d.rsplit("-", 1)[0]): d.rsplit("-", 1)[1] for d in would.group(1).split()}
    assert got == _pins(_pip_section(_env()))


@pytest.mark.slow
def test_the_pip_section_resolves_with_its_dependencies(tmp_path):
    """The whole stack, with every transitive dependency, resolves from the copy (torch,
    torchvision and clean-fid agree); about 20 s."""
    copy = _copy_as_snakemake_does(tmp_path, ENV_FILE.read_text())
    start = time.time()
    res = _conda_pip_step(copy, ["--report", str(tmp_path / "report.json")])
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    resolved = {_name(i["metadata"]["name"]): i["metadata"]["version"] for i in report["install"]}
    for name, version in _pins(_pip_section(_env())).items():
        assert resolved[name] == version, name
    assert "aot" not in resolved and "snakemake" not in resolved
    print(f"full resolve from the copy: {time.time() - start:.1f} s, {len(resolved)} distributions")


# ------------------------------------------------------------------------------------------------
# The package comes from the checkout


def _env_without_the_package() -> tuple[list[str], str]:
    """A stand-in for the deployed environment: this interpreter and its installed distributions,
    but not the aot package (-S: no .pth files, so not its editable install either)."""
    return [sys.executable, "-S"], sysconfig.get_paths()["purelib"]


def test_jobs_import_the_package_from_the_checkout_given_by_pythonpath(tmp_path):
    python, site_packages = _env_without_the_package()
    checkout = tmp_path / "elsewhere"
    shutil.copytree(ROOT / "src", checkout / "src")
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    base = dict(os.environ, PYTHONPATH=site_packages)
    missing = subprocess.run([*python, "-m", "aot", "--help"], cwd=workdir, env=base, capture_output=True, text=True)
    assert missing.returncode != 0 and "No module named aot" in missing.stderr, "the stand-in holds no aot"
    env = dict(base, PYTHONPATH=f"{checkout / 'src'}{os.pathsep}{site_packages}")
    res = subprocess.run([*python, "-c", "import aot.cli; print(aot.cli.__file__)"], cwd=workdir, env=env,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert Path(res.stdout.strip()) == checkout / "src" / "aot" / "cli" / "__init__.py"
    res = subprocess.run([*python, "-m", "aot", "--help"], cwd=workdir, env=env, capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.startswith("usage: python -m aot"), res.stderr[-2000:]


# ------------------------------------------------------------------------------------------------
# The workflow under --software-deployment-method conda / apptainer (stand-in commands: neither
# conda nor apptainer is needed for a dry run beyond answering for its version)

FAKE_APPTAINER = """#!/bin/sh
echo "apptainer version 1.3.6"
"""
FAKE_CONDA = """#!/bin/sh
case "$1" in
  info) echo '{"conda_prefix": "%(prefix)s", "platform": "linux-64"}' ;;
  --version) echo "conda 24.11.3" ;;
  config) echo '{"get": {"channel_priority": "strict"}, "success": true}' ;;
  *) echo "stand-in conda: $*" >&2; exit 3 ;;
esac
"""


def _tools(tmp_path: Path) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in {"apptainer": FAKE_APPTAINER, "conda": FAKE_CONDA % {"prefix": tmp_path / "conda"}}.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def _dry_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    workdir = tmp_path / "workdir"
    workdir.mkdir(exist_ok=True)
    cmd = [*SNAKEMAKE, "-n", "-p", "--directory", str(workdir), "--configfile", str(TINY), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_tools(tmp_path))


def _aot_commands(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("Shell command:") and " -m aot" in line]


@pytest.mark.parametrize("method", ["conda", "apptainer"])
def test_deployed_jobs_run_the_checkouts_package(tmp_path, method):
    res = _dry_run(tmp_path, "--software-deployment-method", method, "--config", f"container={IMAGE}")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    commands = _aot_commands(out)
    assert len(commands) > 20, out[-3000:]
    prefix = f"env PYTHONPATH={ROOT / 'src'} python -m aot "
    wrong = [c for c in commands if prefix not in c]
    assert not wrong, f"not run as `{prefix}...`: {wrong[:3]}"
    assert sys.executable not in out.split("Building DAG of jobs")[1], "the venv's python must not be used"
    if method == "apptainer":
        assert f"Singularity image {IMAGE} will be pulled." in out
    else:
        assert re.search(r"^Conda environment \S*envs/aot\.yaml will be created\.$", out, re.M), out[-3000:]
        assert "Singularity image" not in out


def test_the_venv_route_is_unchanged(tmp_path):
    res = _dry_run(tmp_path, "--config", f"container={IMAGE}")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    commands = _aot_commands(out)
    assert commands and all(f"{sys.executable} -m aot " in c for c in commands), commands[:3]
    assert "PYTHONPATH" not in out and "Singularity image" not in out and "Conda environment" not in out


def test_apptainer_without_an_image_is_refused(tmp_path):
    res = _dry_run(tmp_path, "--software-deployment-method", "apptainer")
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "config error: container: --software-deployment-method apptainer needs the jobs' image" in out, out[-2000:]
    assert "Traceback" not in out


# ------------------------------------------------------------------------------------------------
# Container recipes


def _dockerfile() -> str:
    return (ROOT / "envs" / "Dockerfile").read_text()


def _definition() -> str:
    return (ROOT / "envs" / "aot.def").read_text()


def test_container_recipes_install_the_conda_env_file_and_nothing_else():
    docker = _dockerfile()
    definition = _definition()
    base = re.search(r"^FROM (\S+)$", docker, re.M).group(1)
    assert re.search(r"^From: (\S+)$", definition, re.M).group(1) == base
    assert re.fullmatch(r"mambaorg/micromamba:\d+\.\d+\.\d+", base), "a fixed base tag, not latest"
    assert definition.startswith("Bootstrap: docker\n")
    # both install envs/aot.yaml itself into the image's base environment ...
    assert re.search(r"^COPY .*\baot\.yaml /tmp/aot\.yaml$", docker, re.M)
    assert "micromamba install --yes --name base --file /tmp/aot.yaml" in docker
    assert re.search(r"^\s+envs/aot\.yaml /opt/aot/aot\.yaml$", definition, re.M)
    assert "--prefix /opt/conda --file /opt/aot/aot.yaml" in definition
    # ... put it on PATH for `apptainer exec` (no entrypoint there) ...
    assert re.search(r"^ENV PATH=/opt/conda/bin:\$PATH$", docker, re.M)
    assert re.search(r"^\s+export PATH=/opt/conda/bin:\$PATH$", definition, re.M)
    # ... and install nothing else: no other pip install, no copy of the checkout
    for text in (docker, definition):
        assert "pip install" not in text
        assert not re.search(r"^(COPY|ADD) \.", text, re.M)


def test_container_recipes_check_every_import_of_the_package():
    for text in (_dockerfile(), _definition()):
        check = re.search(r'python -c "import ([^"]+)"', text).group(1)
        assert {m.strip() for m in check.split(",")} == _imported_modules() | {"torchvision", "requests"}


def test_container_recipes_install_slurms_client_commands():
    """A job in the image requeues itself with `scontrol` and may read its end time with `squeue`:
    both recipes install Debian's slurm-client (before the environment) and check both commands;
    the Docker image then runs as micromamba's user again."""
    docker, definition = _dockerfile(), _definition()
    install = r"apt-get install --yes --no-install-recommends slurm-client"
    for text, env_step in ((docker, "micromamba install --yes --name base"), (definition, "micromamba install --yes")):
        assert re.search(install, text), text
        assert text.index("slurm-client") < text.index(env_step)
        assert "rm -rf /var/lib/apt/lists/*" in text
        assert "scontrol --version" in text and "squeue --version" in text
    users = re.findall(r"^USER (\S+)$", docker, re.M)
    assert users == ["root", "$MAMBA_USER"]
    assert docker.index("USER root") < docker.index(install) < docker.index("USER $MAMBA_USER")
