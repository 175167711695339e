# The run's configuration (layered onto the paper's when partial, checked against the schema, which
# sets the defaults, then checked across keys), and the globals, paths and input functions that the
# stages share. Jobs are keyed by their parameters (model x sampler x repeat), so a sample set that
# several tables need is generated and measured once. Sample-set keys come from aot.keys, which
# the library uses too.

import copy
import json
import math
import os
import re
import shlex
import sys

import jsonschema
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

from aot.cli.options import to_argv
from aot.fid_reference import EDM_REFERENCE_FILE, EDM_REFERENCE_KEY
from aot.settings import ConfigError, RunSettings
from aot.settings.jobs import minutes_for as job_minutes, pack_groups
from aot.keys import (
    GUIDANCE_RE,
    KEY_RE,
    MODEL_RE,
    SAMPLER_RE,
    fmt,
    nfe,
    parse_key,
    sampler_key,
    seed_range,
    steps_for_nfe,
)

# Relative to this file (workflow.source_path), so that they are found also when this workflow is
# a module of another one.
SCHEMA = "../schemas/config.schema.yaml"
PAPER_CONFIG = "../../config/config.yaml"
# The cluster's settings (site, resources, walltime), read when it exists in the working directory
# (the checkout, for `snakemake --profile slurm all`): copy config/site.example.yaml there.
SITE_FILE = "config/site.yaml"


# ------------------------------------------------------------------------------------------------
# Configuration: aot.settings decides every setting (layering, schema, checks across keys, derived
# values); this is its one call. A partial config is layered onto config/config.yaml.


def overrides_of(rule):
    """`--set-resources <rule>:...` (command line or profile) as plain values."""
    given = workflow.resource_settings.overwrite_resources.get(rule, {})
    return {k: plain_value(v) for k, v in dict(given).items()}


def plain_value(resource):
    """A resource's value; an expression (a Python string literal) as written."""
    try:
        return resource.value
    except AttributeError:
        return resource
    except ValueError:
        return resource.raw


def load_settings():
    try:
        settings = RunSettings.load(
            config,
            schema=workflow.source_path(SCHEMA),
            paper=workflow.source_path(PAPER_CONFIG),
            site=SITE_FILE,
            validate=not workflow.modifier.skip_validation,
        )
        # the same check of batch vs GPUs x nodes x B for a command line's or profile's resources
        if overrides_of("train"):
            settings.check_training_batch(
                settings.train_resources(overrides_of("train")),
                route="--set-resources train (command line or profile) and resources.train",
            )
    except ConfigError as exc:
        raise WorkflowError(str(exc)) from None
    if settings.layered_from:
        logger.info(
            f"config: {', '.join(settings.layered_from)} from the given config, "
            "everything else from config/config.yaml"
        )
    if settings.site_file:
        logger.info(f"config: cluster settings from {settings.site_file}")
    for line in settings.warnings:
        logger.warning(line)
    return settings


def fail(msg):
    raise WorkflowError(f"config error: {msg}")


SETTINGS = load_settings()


# ------------------------------------------------------------------------------------------------
# Globals


# Where Snakemake deploys the jobs' software (conda: envs/aot.yaml; apptainer: the config's
# `container:` image), that environment holds the pinned third-party stack and the jobs import the
# aot package from this checkout's src/ through PYTHONPATH. Snakemake builds a conda environment
# from a copy of its file in .snakemake/conda/, where a relative `pip: -e ../` names the wrong
# folder; taking the package from the workflow's own source runs exactly the code the rules were
# written for (as the venv route does), needs no rebuild when the code changes, and lets one
# environment or image serve every checkout (docs/software.md).
SRC = os.path.join(os.path.abspath(workflow.basedir), "src")


def python():
    """The interpreter of the commands: under `--software-deployment-method conda` or `apptainer`,
    the deployed environment's `python` with PYTHONPATH set to this checkout's src/ (`env` keeps
    the prefix valid behind srun); otherwise the one running Snakemake (so an unactivated venv
    works too).
    """
    try:
        from snakemake.settings.types import DeploymentMethod

        methods = workflow.deployment_settings.deployment_method
        if DeploymentMethod.CONDA in methods or DeploymentMethod.APPTAINER in methods:
            return f"env PYTHONPATH={shlex.quote(SRC)} python"
    except (ImportError, AttributeError):
        pass
    return shlex.quote(sys.executable)


AOT_CLI = (
    f"{python()} -m aot"  # the shell command of the library's CLI: each job runs one
)
RUN_NAME = config["run"]
RESULTS = f"results/{RUN_NAME}"  # the run's outputs and report
LOGS = f"logs/{RUN_NAME}"
BENCH = f"benchmarks/{RUN_NAME}"  # Snakemake's per-job timings
# Finished sample sets (npz + FID json) hard-linked where Snakemake's removal of a rerun group's
# outputs does not reach: a requeued or failed group restores them in seconds (aot.kept). Never
# an output of any rule.
KEPT = f"{RESULTS}/kept"
DOWNLOADS = config["downloads"]
FID_CACHE = f"{DOWNLOADS}/clean-fid"
# EDM's reference statistics (fid.reference: edm), fetched into the FID asset folder
EDM_REFERENCE = f"{FID_CACHE}/{EDM_REFERENCE_FILE}"
DATASET = f"{RESULTS}/data/dataset.zip"
DEVICE = config["device"]
CONDA_ENV = "../../envs/aot.yaml"  # the jobs' conda environment (--software-deployment-method conda)
# every model of the run, the pool-size study's included (aot.settings.run)
MODELS = SETTINGS.models
PARTS = SETTINGS.parts  # the tables' parts
TRAINED = SETTINGS.trained
IMPORTED = SETTINGS.imported
SAMPLING = config["sampling"]
SOLVER = SAMPLING["solver"]
FID_CONFIG = config["fid"]
DG_CONFIG = config["dg"]
DIAGNOSTICS = config["diagnostics"]


def flags(settings):
    """Command-line options from a settings dict (aot.cli.options.to_argv), quoted for the shell."""
    return shlex.join(to_argv(settings))


# ------------------------------------------------------------------------------------------------
# Resources: config["resources"][rule] (defaults from the schema) and the wall time from the work
#
# One source of truth: a job's GPUs, nodes and CPUs are its resources, and the commands read them
# from the job (`resources.gpu`, `resources.nodes`, `resources.cpus_per_task`), so a site profile's
# or a command line's `--set-resources` reaches the sbatch line and the command alike.

WALLTIME = config["walltime"]
REQUEUE_ENV = "AOT_SLURM_REQUEUE"  # aot.runtime.requeue_slurm_job


SITE = config["site"]
# site keys that every job takes unless resources.<rule> sets its own (the second tuple: GPU jobs only)
SITE_KEYS = ("account", "qos")
SITE_GPU_KEYS = ("constraint", "gpu_model", "gres", "cpus_per_gpu")


def rule_resources(name):
    """resources.<name> with the site's settings filled in where the config sets none there: account and
    QOS for every job; partition (cpu_partition for jobs without GPUs), constraint, GPU model,
    gres and CPUs per GPU for GPU jobs."""
    r = dict(config["resources"][name])
    gpus = r["gpus"]
    for key in SITE_KEYS + (SITE_GPU_KEYS if gpus else ()):
        if r.get(key) is None and SITE.get(key) is not None:
            r[key] = SITE[key]
    if not r.get("partition"):
        cpu = SITE.get("cpu_partition") if not gpus else None
        r["partition"] = cpu or SITE.get("partition")
    if gpus and r.get("cpus_per_gpu"):
        r["cpus"] = gpus * r["cpus_per_gpu"]
    extra = [SITE.get("slurm_extra"), r.get("slurm_extra")]
    if SITE.get("reservation"):
        extra.append(f"--reservation={SITE['reservation']}")
    r["slurm_extra"] = " ".join(e for e in extra if e) or None
    return r


def check_slurm_extra():
    """Options that the executor sets itself are refused in slurm_extra (by the plugin, at the
    first submission): refused here, before any job, naming the key to use instead."""
    try:
        from snakemake_executor_plugin_slurm.validation import (
            get_forbidden_slurm_options,
        )
    except ImportError:  # no Slurm executor installed: nothing submits
        return
    key_for_option = {
        "partition": "partition",
        "account": "account",
        "node constraints": "constraint",
        "quality of service": "qos",
        "generic resources (GRES)": "gres",
        "GPU allocation": "gpu_model",
        "CPUs per GPU": "cpus_per_gpu",
    }
    places = [("site.slurm_extra", SITE.get("slurm_extra"))] + [
        (f"resources.{name}.slurm_extra", r.get("slurm_extra"))
        for name, r in config["resources"].items()
    ]
    for key, extra in places:
        for pattern, option in get_forbidden_slurm_options().items():
            if extra and re.search(pattern, extra):
                instead = key_for_option.get(option)
                fail(
                    f"{key}: {extra!r} sets the {option}, which the Slurm executor sets itself"
                    + (
                        f"; use site.{instead} (or resources.<rule>.{instead})"
                        if instead
                        else ""
                    )
                )


check_slurm_extra()


def threads_for(name):
    return rule_resources(name)["cpus"]


def minutes_for(work_s, margin_s=0):
    """Requested wall time in minutes for `work_s` seconds of work (aot.settings.jobs), at most
    the cluster's longest job (`walltime.max_minutes`)."""
    return job_minutes(
        work_s,
        safety=WALLTIME["safety"],
        startup_s=WALLTIME["startup_s"],
        max_minutes=WALLTIME["max_minutes"],
        margin_s=margin_s,
    )


def other_work_s(wildcards):
    return WALLTIME["other_s"]


def runtime_for(name, work, resumable):
    """The `runtime` resource of a rule: `resources.<rule>.runtime` when the config fixes it,
    otherwise minutes_for(the job's work); resumable jobs save and stop walltime.signal_s before
    their limit, and that time comes on top."""
    fixed = config["resources"][name].get("runtime")
    if fixed:
        return fixed
    margin = WALLTIME["signal_s"] if resumable else 0
    return lambda wildcards: minutes_for(work(wildcards), margin)


def gpu_resources(r):
    """`gpu` (sbatch --gpus=[model:]N) or, with `gres: true`, `gres` (--gres=gpu[:model]:N) for
    clusters without --gpus; never both, which would double the request."""
    if not r["gpus"]:
        return {}
    if r.get("gres"):
        model = f"{r['gpu_model']}:" if r.get("gpu_model") else ""
        return {"gres": f"gpu:{model}{r['gpus']}"}
    out = {"gpu": r["gpus"]}
    if r.get("gpu_model"):
        out["gpu_model"] = r["gpu_model"]
    return out


def resources_for(name, work=other_work_s, resumable=False, grouped=False):
    """The resources of a rule's jobs from `resources.<name>` of the config. The rule states its
    job's properties: `work` (seconds on one GPU, from its wildcards) sets the wall time;
    `resumable` jobs save, exit 75 and requeue before their limit; `grouped` jobs are sample sets
    that share a Slurm submission with others (`group: set_group(...)`) and run in turn.
    """
    r = rule_resources(name)
    res = dict(mem_mb=r["mem_mb"], cpus_per_task=r["cpus"], nodes=r["nodes"])
    res["runtime"] = runtime_for(name, work, resumable)
    res.update(gpu_resources(r))
    if r["nodes"] > 1:
        # one task per node; `mpi` makes the Slurm job step run the rule's shell in the batch step
        # (not inside `srun -n1`), so the launcher's srun reaches every node (aot.launch)
        res.update(mpi="srun", tasks=r["nodes"], tasks_per_gpu=0)
        # --gpus=k would be k GPUs for the whole job; --gres=gpu:k is per node
        if r["gpus"]:
            res.pop("gpu", None)
            res.pop("gpu_model", None)
            model = f"{r['gpu_model']}:" if r.get("gpu_model") else ""
            res["gres"] = f"gpu:{model}{r['gpus']}"
    # a --set-resources that asks for GPUs the other way (gres for gpu, or the reverse) replaces
    # the rule's own request, so that one request reaches sbatch
    given = overrides_of(name)
    if "gres" in given:
        res.pop("gpu", None)
        res.pop("gpu_model", None)
    if "gpu" in given:
        res.pop("gres", None)
    if grouped:
        # the members of a grouped Slurm job run one after the other
        res["group_slot"] = 1
    if r.get("partition"):
        res["slurm_partition"] = r["partition"]
    if r.get("account"):
        res["slurm_account"] = r["account"]
    for key in ("qos", "constraint"):
        if r.get(key):
            res[key] = r[key]
    extra = slurm_extra_for(r.get("slurm_extra"), resumable)
    if extra:
        res["slurm_extra"] = extra
    return res


def slurm_extra_for(extra, resumable):
    """Extra sbatch options: the config's, plus, for jobs that save and resume, Slurm's warning
    signal before the time limit (`--signal=TERM@<margin>`, unless the options name one). A
    `--set-resources <rule>:slurm_extra=...` replaces these; the jobs still stop in time, since
    each watches the job's end time itself (aot.runtime.Preemption)."""
    options = shlex.split(extra or "")
    if resumable and not any(o.startswith("--signal") for o in options):
        options.append(f"--signal=TERM@{WALLTIME['signal_s']}")
    return shlex.join(options) if options else None


def gpus_of(resources):
    """GPUs per node of a job from its resources: `gpu`, or the count in `gres` (gpu[:model]:N)."""
    if resources.get("gpu"):
        return int(resources["gpu"])
    gres = str(resources.get("gres") or "")
    if gres.startswith("gpu"):
        last = gres.split(":")[-1]
        return int(last) if last.isdigit() else 1
    return 0


def requeue_env(name):
    """`AOT_SLURM_REQUEUE=<n>`: how often a Slurm job of this rule that stopped with exit 75
    (time limit, preemption; state saved) may put itself back into the queue (aot.runtime).
    """
    n = train_requeues() if name == "train" else WALLTIME["requeues"]
    return f"{REQUEUE_ENV}={n}"


def log_segments(pattern):
    """The `params` function of the resumable job whose log is `pattern`: shell words that keep
    every segment of the job's log. Snakemake removes a job's log before each run, and a requeued
    Slurm job is one more run: so the log is made a hard link to logs/<run>/segments/<the log's
    path>, a file Snakemake does not know, which keeps growing; each segment starts with a line
    naming its Slurm job, restart and host."""
    return lambda wildcards: segment_words(pattern.format(**dict(wildcards.items())))


def segment_words(path):
    keep = os.path.join(LOGS, "segments", os.path.relpath(path, LOGS))
    q = shlex.quote
    header = (
        "== segment $(date -u +%Y-%m-%dT%H:%M:%SZ): Slurm job ${SLURM_JOB_ID:-none}, "
        "restart ${SLURM_RESTART_COUNT:-$({ scontrol show job -o ${SLURM_JOB_ID:-none} 2>/dev/null "
        "|| echo Restarts=0; } | grep -o 'Restarts=[0-9]*' | cut -d= -f2)}, host $(hostname)"
    )
    return (
        f"mkdir -p {q(os.path.dirname(keep))} && touch {q(keep)} && ln -f {q(keep)} {q(path)} && "
        f'echo "{header}" >> {q(path)} &&'
    )


def procs_per_node(resources):
    """Processes per node of a job that runs one process per GPU (training, generation)."""
    return max(1, gpus_of(resources))


def launcher(wildcards, resources):
    """`python -m aot`, under torchrun with one process per GPU of the job (aot.launch), on every
    node of the job."""
    from aot.launch import train_command

    nodes = int(resources.get("nodes") or 1)
    return train_command(
        python(),
        nodes=nodes,
        procs_per_node=procs_per_node(resources),
        cpus_per_node=int(resources.get("cpus_per_task") or 1) if nodes > 1 else None,
    )


def rank_threads(wildcards, resources):
    """`--threads` of one process: the job's CPUs (per node) shared by its processes per node."""
    from aot.launch import threads_per_rank

    cpus = int(resources.get("cpus_per_task") or 1)
    return f"--threads {threads_per_rank(cpus, procs_per_node(resources))}"


def sets_per_job(kind):
    """How many sample sets of a kind ("sets", "guided") share a Slurm submission: the cluster
    profile's `group-components` (profiles/slurm: sets=3, guided=3); 1 without it. Known when the
    DAG is built, not yet while the workflow is read."""
    return workflow.group_settings.group_components.get(kind, 1)


def check_grouping():
    """Grouped sets run their members one after the other only with `--resources group_slot=1`
    (profiles/slurm); without it Snakemake would run them side by side and add up their GPUs and
    nodes into one request, on a GPU they would all share."""
    grouped = any(sets_per_job(kind) > 1 for kind in ("sets", "guided"))
    slots = workflow.global_resources.get("group_slot")
    if grouped and getattr(slots, "value", slots) != 1:
        fail(
            "--group-components sets=K (or guided=K) needs --resources group_slot=1 (as in profiles/slurm), "
            "so that the members of a grouped job take its GPU in turn"
        )


# ------------------------------------------------------------------------------------------------
# Sample sets


def key_for(num_steps, rho):
    """The key of a sample set made with the run's solver and S_churn."""
    return sampler_key(SOLVER, num_steps, rho, SAMPLING["S_churn"])


def default_key():
    return key_for(SAMPLING["default"]["num_steps"], SAMPLING["default"]["rho"])


def best_key(model):
    """The model's best sampler (Tables 1-3); the default sampler when none is configured."""
    s = SAMPLING["best"].get(model, SAMPLING["default"])
    return key_for(s["num_steps"], s["rho"])


def sample_path(model, key, rep):
    return f"{RESULTS}/samples/{model}/{key}/rep{rep}.npz"


def fid_path(model, key, rep):
    return f"{RESULTS}/fid/{model}/{key}/rep{rep}.json"


def fid_set(model, key):
    return [fid_path(model, key, r) for r in range(FID_CONFIG["repeats"])]


REPEATS = list(range(FID_CONFIG["repeats"]))


def set_seeds(offset=0):
    """The seeds of all repeats of a sample set, from `offset`: one job makes the whole set and
    `aot generate` splits them into the repeats (repeat r: seeds r x n to (r + 1) x n - 1 when offset is 0, n = fid.num_images).
    """
    return seed_range(0, FID_CONFIG["num_images"] * len(REPEATS), offset)


def set_files(pattern):
    """The files of all repeats of a set: `pattern` with {rep} filled in, other wildcards kept."""
    return [pattern.replace("{rep}", str(r)) for r in REPEATS]


def set_images():
    return FID_CONFIG["num_images"] * len(REPEATS)


def key_nfe(key):
    k = parse_key(key)
    return nfe(k["num_steps"], k["solver"])


def sampler_settings(key):
    """The sampler options of a key's sample set: solver, steps, rho, S_churn, sigmas."""
    k = parse_key(key)
    return {
        "solver": k["solver"],
        "steps": k["num_steps"],
        "rho": fmt(k["rho"]),
        "S_churn": fmt(k["S_churn"]),
        "sigma_min": SAMPLING["sigma_min"],
        "sigma_max": SAMPLING["sigma_max"],
    }


# ------------------------------------------------------------------------------------------------
# Data, networks and FID assets


def cifar_source_is_url():
    return str(config["dataset"].get("source", "")).startswith(("http://", "https://"))


def cifar_tarball():
    """The CIFAR-10 tarball: downloaded by a local job, or the configured local file."""
    if cifar_source_is_url():
        return f"{DOWNLOADS}/cifar-10-python.tar.gz"
    return config["dataset"]["source"]


def network_path(model):
    return f"{RESULTS}/models/{model}/network-final.pt"


def names_regex(names):
    """A wildcard constraint matching exactly these names (nothing when there are none)."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


train_settings = SETTINGS.train_settings


def train_flags(wildcards):
    """The options of `aot train` from the model's settings: each key is an option of the same name
    (arch_overrides' keys too); `fast` turns on bf16, TF32, channels_last and torch.compile.
    """
    m = MODELS[wildcards.model]
    t = train_settings(wildcards.model)
    settings = {"model_name": m["name"], "cond": m["cond"], "aot": m["aot"]}
    settings.update(
        {
            k: v
            for k, v in t.items()
            if k not in ("fast", "extra_args", "arch_overrides")
        }
    )
    settings["device"] = DEVICE
    settings["slurm_margin"] = WALLTIME[
        "signal_s"
    ]  # save this long before the job's end
    settings.update(t["arch_overrides"])
    for option in ("bf16", "tf32", "channels_last", "compile"):
        settings[option] = t["fast"]
    # extra_args: checked against `aot train`'s own parser when the config is loaded, then quoted
    extra = shlex.join(SETTINGS.train_extra_args(wildcards.model))
    return " ".join(filter(None, [flags(settings), extra]))


def edm_pickle_flags(wildcards):
    m = MODELS[wildcards.model]
    return flags(
        {"sha256": m.get("sha256"), "model_name": wildcards.model, "aot": m["aot"]}
    )


def generate_flags(wildcards):
    return flags(
        {
            "model_name": wildcards.model,
            "seeds": set_seeds(),
            **sampler_settings(wildcards.key),
            "batch": config["generate"]["batch"],
            "shard_size": config["generate"]["shard_size"],
            "device": DEVICE,
            "fast": config["generate"]["fast"],
            "compile": config["generate"]["fast"],
            "slurm_margin": WALLTIME["signal_s"],  # stop this long before the job's end
            "kept_dir": KEPT,
        }
    )


def fid_feature_inputs():
    """Files a measurement needs: clean-fid assets (fetched on the login node) or the offline net."""
    if FID_CONFIG["features"] == "offline":
        return {"features": f"{RESULTS}/fid/feature-net.pt"}
    return {"assets": f"{FID_CACHE}/assets.json"}


def fid_settings(input):
    """Feature network, clean-fid cache and batch of every FID measurement."""
    return {
        "features": (
            input.features if FID_CONFIG["features"] == "offline" else "inception"
        ),
        "cache_dir": FID_CACHE,
        "batch": FID_CONFIG["batch"],
    }


def measure_flags(wildcards, input):
    """The measurement options (--fid-...) of a job that makes a sample set and then measures it."""
    return flags({f"fid_{k}": v for k, v in fid_settings(input).items()})


def fid_flags(wildcards, input):
    """Feature network, clean-fid cache, batch and device of the FID commands."""
    return flags({**fid_settings(input), "device": DEVICE})


def reference_path():
    if FID_CONFIG["reference"] == "precomputed":
        return f"{RESULTS}/fid/reference-cifar10-precomputed.npz"
    if FID_CONFIG["reference"] == "edm":
        return f"{RESULTS}/fid/reference-cifar10-edm.npz"
    return f"{RESULTS}/fid/reference-{FID_CONFIG['features']}.npz"


def uses_edm_reference():
    return FID_CONFIG["reference"] == "edm"


def reference_inputs():
    """The reference statistics job's files: the feature network's assets, and EDM's statistics."""
    return {
        **fid_feature_inputs(),
        **({"edm_reference": EDM_REFERENCE} if uses_edm_reference() else {}),
    }


def reference_flags(wildcards, input):
    edm = uses_edm_reference()
    return " ".join(
        [
            fid_flags(wildcards, input),
            flags(
                {
                    "precomputed": (
                        "cifar10" if FID_CONFIG["reference"] == "precomputed" else None
                    ),
                    "edm_reference": input.edm_reference if edm else None,
                    "edm_sha256": FID_CONFIG["edm_reference_sha256"] if edm else None,
                }
            ),
        ]
    )


def fid_asset_outputs():
    """What `aot fid fetch-assets` fetches on the login node: the Inception weights, clean-fid's
    statistics (in assets.json) and EDM's statistics (fid.reference: edm)."""
    return {
        "manifest": f"{FID_CACHE}/assets.json",
        **({"edm_reference": EDM_REFERENCE} if uses_edm_reference() else {}),
    }


def fetch_asset_flags():
    """Options of `aot fid fetch-assets`: EDM's statistics too with fid.reference: edm."""
    if not uses_edm_reference():
        return ""
    settings = {
        "edm_reference_url": FID_CONFIG["edm_reference_url"],
        "edm_reference_sha256": FID_CONFIG["edm_reference_sha256"],
    }
    return f"--only inception cifar10 {EDM_REFERENCE_KEY} {flags(settings)}"


def diagnostics_path(part, num_steps):
    return f"{RESULTS}/diagnostics/{part}-{key_for(num_steps, DIAGNOSTICS['rho'])}.npz"


def diagnostics_flags(wildcards):
    return flags(
        {
            "seeds": DIAGNOSTICS["grid_seeds"],
            **sampler_settings(wildcards.key),
            "device": DEVICE,
        }
    )


def fetch_targets():
    """Everything that needs the internet: run `snakemake fetch` on a login node first."""
    out = []
    if config["dataset"]["name"] == "cifar10" and cifar_source_is_url():
        out.append(f"{DOWNLOADS}/cifar-10-python.tar.gz")
    if FID_CONFIG["features"] == "inception":
        out += list(fid_asset_outputs().values())
    out += [network_path(m) for m in IMPORTED]
    return out


# ------------------------------------------------------------------------------------------------
# The work of a job, in seconds on one GPU (walltime section): what its requested runtime follows


part_of = SETTINGS.part_of


def train_work_s(wildcards):
    return model_train_work_s(wildcards.model)


def model_train_work_s(model):
    t = train_settings(model)
    r = config["resources"]["train"]
    gpus = max(1, r["gpus"]) * r["nodes"]
    return t["duration"] * 1000 * WALLTIME["train_kimg_s"] / gpus


def sample_set_work_s(key, guided=False):
    """A sample set's job makes the set (with DG's guidance when `guided`), then measures its FID."""
    per_nfe = WALLTIME["guidance_image_nfe_s" if guided else "generate_image_nfe_s"]
    return set_images() * (key_nfe(key) * per_nfe + WALLTIME["fid_image_s"])


def generate_work_s(wildcards):
    return sample_set_work_s(wildcards.key)


def generate_dg_work_s(wildcards):
    return sample_set_work_s(wildcards.key, guided=True)


def discriminator_work_s(wildcards):
    return (
        2
        * DG_CONFIG["collect_images"]
        * SETTINGS.dg_recipe(wildcards.model, wildcards.mode)["epochs"]
        * WALLTIME["discriminator_image_epoch_s"]
    )


def train_requeues():
    """Training longer than one job (walltime.max_minutes) resumes in requeued jobs."""
    longest = max([model_train_work_s(m) for m in TRAINED] or [0])
    # a training job runs until shortly before its limit, then saves and is requeued
    per_job = (
        WALLTIME["max_minutes"] * 60 - WALLTIME["startup_s"] - WALLTIME["signal_s"]
    )
    return max(WALLTIME["requeues"], math.ceil(longest / max(per_job, 1)) + 1)


# ------------------------------------------------------------------------------------------------
# Sample sets share Slurm submissions: the profile's group-components (sets=K, guided=K) sets per
# submission, packed so that their summed wall time fits walltime.max_minutes, the same groups in
# every run (aot.settings.jobs). Snakemake would fill each submission with any K sets, in an order
# that changes from run to run and with no regard to the limit.


def fid_sets(paths):
    """(model, key) of each sample set behind FID result paths {RESULTS}/fid/<model>/<key>/rep<r>.json."""
    out = set()
    for p in paths:
        model, key = os.path.relpath(p, f"{RESULTS}/fid").split(os.sep)[:2]
        out.add((model, key))
    return out


_PACKED = {}


def packed_sets(kind):
    """{"<model>/<key>": group id} of every set of a kind that the run's tables, figures and
    studies can ask for. The sets of `all` are packed first and alone, then the pool-size
    study's and the significance study's that `all` does not have, each in groups of their own:
    a target's groups are never filled with sets of another target, whose jobs it does not run.
    """
    if kind not in _PACKED:
        guided = kind == "guided"
        # a fixed runtime of the rule is what each member asks for; else it follows the work
        fixed = config["resources"]["generate_dg" if guided else "generate"].get(
            "runtime"
        )
        targets = [
            [p for paths in TABLES.values() for p in paths],
            pool_study_fids(),
            significance_fids("significance") + significance_fids("pool_study"),
        ]
        groups, seen = [], set()
        for every in targets:
            minutes = {}
            for model, key in fid_sets(every):
                name = f"{model}/{key}"
                if key.startswith("dg") == guided and name not in seen:
                    plain = key.split("-", 1)[1] if guided else key
                    work = sample_set_work_s(plain, guided)
                    minutes[name] = fixed or minutes_for(work, WALLTIME["signal_s"])
            groups += pack_groups(minutes, WALLTIME["max_minutes"], sets_per_job(kind))
            seen |= set(minutes)
        _PACKED[kind] = {
            n: f"{kind}{i}" for i, names in enumerate(groups) for n in names
        }
    return _PACKED[kind]


def set_group(kind):
    """The `group` of the sample-set jobs (kind "sets": plain sets; "guided": DG's): the packed
    group's id, which Snakemake's group-components then fills (its parent group is `kind`); a set
    outside the packed ones gets a group of its own."""

    def group(wildcards):
        if sets_per_job(kind) <= 1:
            return kind
        check_grouping()
        guidance = f"dg{wildcards.mode}-" if kind == "guided" else ""
        name = f"{wildcards.model}/{guidance}{wildcards.key}"
        gid = packed_sets(kind).get(
            name, f"{kind}-{wildcards.model}-{guidance}{wildcards.key}"
        )
        # group-components counts a group id under its declared group (Snakemake's lookup for
        # groups with wildcards): register `kind` as the parent of this id
        workflow.parent_groupids[gid] = kind
        return gid

    return group


include: "common_dg.smk"
include: "common_report.smk"
include: "common_pool_study.smk"
include: "common_significance.smk"
