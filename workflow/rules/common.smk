# Helpers shared by the rule files: config checks the JSON schema cannot express, sample-set keys,
# paths and per-rule resources. Jobs are keyed by their parameters (model x sampler x repeat), so a
# sample set that several tables need is generated and measured once.

import json
import math
import re
import shlex
import sys

from snakemake.exceptions import WorkflowError

def _python():
    """The interpreter of the commands: the conda environment's `python` when Snakemake deploys
    envs/aot.yaml, otherwise the one running Snakemake (so an unactivated venv works too)."""
    try:
        from snakemake.settings.types import DeploymentMethod

        if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
            return "python"
    except (ImportError, AttributeError):
        pass
    return shlex.quote(sys.executable)


PY = _python()
RUN = config["run"]
R = f"results/{RUN}"
LOGS = f"logs/{RUN}"
BENCH = f"benchmarks/{RUN}"
DOWNLOADS = config.get("downloads", "downloads")
DEVICE = config["device"]
ENV = "../../envs/aot.yaml"
MODELS = {m["name"]: m for m in config["models"]}
SAMPLING = config["sampling"]
SOLVER = SAMPLING.get("solver", "heun")
FID = config["fid"]
DG = config["dg"]


def fail(msg):
    raise WorkflowError(f"config error: {msg}")


def check_config():
    """Cross-field checks; each names the offending key and value. Runs before any job."""
    names = [m["name"] for m in config["models"]]
    for name in names:
        if names.count(name) > 1:
            fail(f"models: the name {name!r} is used twice")
    defaults = config["training"]
    for m in config["models"]:
        src = m.get("source", "train")
        if src == "edm-pickle" and not m.get("pickle"):
            fail(f"models[{m['name']}]: source edm-pickle needs `pickle` (URL or path of the EDM .pkl)")
        t = {**defaults, **m.get("train", {})}
        if src == "train":
            if t["pool_size"] % t["batch_gpu"] != 0:
                fail(f"models[{m['name']}]: pool_size N={t['pool_size']} is not a multiple of batch_gpu B={t['batch_gpu']}")
            if t["pool_size"] < t["batch_gpu"]:
                fail(f"models[{m['name']}]: pool_size N={t['pool_size']} is smaller than batch_gpu B={t['batch_gpu']}")
            gpus = max(1, resource("train", "gpus", 0))
            if t["batch"] % (t["batch_gpu"] * gpus) != 0:
                fail(f"models[{m['name']}]: batch {t['batch']} is not a multiple of batch_gpu {t['batch_gpu']} x {gpus} GPU(s)")
    for part in ("uncond", "cond"):
        for role in ("edm", "aot"):
            name = config["tables"][part][role]
            if name not in MODELS:
                fail(f"tables.{part}.{role}: unknown model {name!r} (models: {', '.join(names)})")
            m = MODELS[name]
            if m["cond"] != (part == "cond") or m["aot"] != (role == "aot"):
                fail(f"tables.{part}.{role}: model {name!r} has cond={m['cond']}, aot={m['aot']}")
    for name in SAMPLING["best"]:
        if name not in MODELS:
            fail(f"sampling.best: unknown model {name!r}")
    for i, row in enumerate(SAMPLING["table4"]["rows"]):
        if row["model"] not in MODELS:
            fail(f"sampling.table4.rows[{i}].model: unknown model {row['model']!r}")
    for name in SAMPLING["table5"]["models"]:
        if name not in MODELS:
            fail(f"sampling.table5.models: unknown model {name!r}")
    for nfe in SAMPLING["table5"]["nfe"]:
        if SOLVER == "heun" and nfe % 2 == 0:
            fail(f"sampling.table5.nfe: {nfe} is even, but Heun's NFE is 2 x steps - 1 (odd)")
    if config["dataset"]["name"] == "cifar10" and not config["dataset"].get("source"):
        fail("dataset.source: CIFAR-10 needs the URL or path of cifar-10-python.tar.gz")
    if FID["reference"] == "precomputed" and FID["features"] != "inception":
        fail("fid.reference: precomputed statistics exist for Inception features only; use reference: dataset")
    if FID["reference"] == "precomputed" and config["dataset"]["name"] != "cifar10":
        fail("fid.reference: precomputed statistics exist for CIFAR-10 only; use reference: dataset")
    if DG["enabled"]:
        for key in ("feature_extractor", "collect_images", "batch", "epochs", "pool_size"):
            if key not in DG:
                fail(f"dg.{key} is required when dg.enabled is true")
        if DG["collect_images"] > FID["num_images"]:
            fail(f"dg.collect_images {DG['collect_images']} exceeds fid.num_images {FID['num_images']}: "
                 "the discriminator is trained on the model's first sample set, never on a regenerated one")
        if DG.get("time_min", 0.01) >= DG.get("time_max", 1.0):
            fail(f"dg.time_min {DG.get('time_min')} must be below dg.time_max {DG.get('time_max')}")


# ------------------------------------------------------------------------------------------------
# Resources and threads from config["resources"][rule], with defaults


def resource(rule, key, default=None):
    return config.get("resources", {}).get(rule, {}).get(key, default)


def threads_for(rule):
    return int(resource(rule, "cpus", 1))


def resources_for(rule, default_runtime=60, default_mem=4000):
    res = dict(
        mem_mb=int(resource(rule, "mem_mb", default_mem)),
        runtime=int(resource(rule, "runtime", default_runtime)),
        cpus_per_task=threads_for(rule),
    )
    gpus = int(resource(rule, "gpus", 0))
    if gpus:
        res["gpu"] = gpus
    part = resource(rule, "partition")
    if part:
        res["slurm_partition"] = part
    return res


# ------------------------------------------------------------------------------------------------
# Sample sets


def fmt(x):
    """Numbers in keys: 7 -> '7', 0.5 -> '0.5'."""
    return f"{float(x):g}"


def sampler_key(num_steps, rho, solver=None):
    key = f"{solver or SOLVER}-n{int(num_steps)}-rho{fmt(rho)}"
    if float(SAMPLING.get("S_churn", 0)) > 0:
        key += f"-churn{fmt(SAMPLING['S_churn'])}"
    return key


def steps_for_nfe(nfe):
    return (nfe + 1) // 2 if SOLVER == "heun" else nfe


def default_key():
    return sampler_key(SAMPLING["default"]["num_steps"], SAMPLING["default"]["rho"])


def best_key(model):
    """The model's best sampler (Tables 1-3); the default sampler when none is configured."""
    s = SAMPLING["best"].get(model, SAMPLING["default"])
    return sampler_key(s["num_steps"], s["rho"])


def sample_path(model, key, rep):
    return f"{R}/samples/{model}/{key}/rep{rep}.npz"


def fid_path(model, key, rep):
    return f"{R}/fid/{model}/{key}/rep{rep}.json"


def fid_set(model, key):
    return [fid_path(model, key, r) for r in range(FID["repeats"])]


def seeds_for(rep):
    n = FID["num_images"]
    return f"{int(rep) * n}-{(int(rep) + 1) * n - 1}"


def table12_fids(part):
    edm, aot = config["tables"][part]["edm"], config["tables"][part]["aot"]
    sets = [(edm, default_key()), (aot, default_key()), (aot, best_key(aot))]
    return sorted({p for m, k in sets for p in fid_set(m, k)})


def dg_models(part):
    """(model, sampler key, discriminator mode) of Table 3's guided rows for one part."""
    edm, aot = config["tables"][part]["edm"], config["tables"][part]["aot"]
    return [(edm, default_key(), "plain"), (aot, best_key(aot), "plain"), (aot, best_key(aot), "aot")]


def table3_fids():
    out = set()
    for part in ("uncond", "cond"):
        edm, aot = config["tables"][part]["edm"], config["tables"][part]["aot"]
        out.update(fid_set(edm, default_key()))
        out.update(fid_set(aot, best_key(aot)))
        if DG["enabled"]:
            for model, key, mode in dg_models(part):
                out.update(fid_set(model, f"dg{mode}-{key}"))
    return sorted(out)


def table4_fids():
    t4 = SAMPLING["table4"]
    return sorted({p for row in t4["rows"] for rho in t4["rho"]
                   for p in fid_set(row["model"], sampler_key(row["num_steps"], rho))})


def table5_fids(models=None):
    t5 = SAMPLING["table5"]
    models = t5["models"] if models is None else [m for m in t5["models"] if m in models]
    return sorted({p for m in models for nfe in t5["nfe"] for rho in t5["rho"]
                   for p in fid_set(m, sampler_key(steps_for_nfe(nfe), rho))})


def part_models(part):
    return [config["tables"][part]["edm"], config["tables"][part]["aot"]]


# ------------------------------------------------------------------------------------------------
# Networks and FID assets


def network_path(model):
    return f"{R}/models/{model}/network-final.pt"


def train_settings(model):
    return {**config["training"], **MODELS[model].get("train", {})}


def fid_feature_inputs():
    """Files the FID jobs need: clean-fid assets (fetched on the login node) or the offline net."""
    if FID["features"] == "offline":
        return {"features": f"{R}/fid/feature-net.pt"}
    return {"assets": f"{DOWNLOADS}/clean-fid/assets.json"}


def features_arg(inputs):
    return inputs.features if FID["features"] == "offline" else "inception"


def reference_path():
    if FID["reference"] == "precomputed":
        return f"{R}/fid/reference-cifar10-precomputed.npz"
    return f"{R}/fid/reference-{FID['features']}.npz"


def diagnostics_path(part, num_steps):
    return f"{R}/diagnostics/{part}-{sampler_key(num_steps, config['diagnostics'].get('rho', 7))}.npz"


def q(s):
    return shlex.quote(str(s))


check_config()
