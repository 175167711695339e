"""Our measurements and the paper's: FID result files in, one row per sample set out.

A FID result is the JSON file `aot fid measure` writes for one repeat of one sample set (spec
format: `model`, `sampler`, `feature_network`, `fid`, `repeat`, `seeds`, ...). `load_fid_results`
validates each file into a flat record; a problem is a UserError naming the file and the key.

Aggregation. The repeats of one sample set (same model name, same sampler settings: solver,
num_steps, rho, S_churn, guidance without the discriminator path, and the same feature network)
are combined by `aot.metrics.aggregate_repeats` into `fid` = minimum (the reported number, as EDM
and the paper do), `fid_mean`, `fid_std` (sample standard deviation, ddof=1; NaN for a single
repeat) and `n`, with `fid_rep0`, repeat 0's FID alone (one 50k set: the protocol of DG's
numbers). Two files with the same repeat index of one sample set, repeats whose seed ranges
overlap, or results against different reference statistics (`reference.name`) are an error.

The paper's numbers are the CSV files in `aot/paper/` (package data, `#` lines are comments).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from .. import keys
from ..errors import UserError
from ..files import read_json

PAPER_FILES = {1: "table1_uncond.csv", 2: "table2_cond.csv", 3: "table3_dg.csv",
               4: "table4_rho.csv", 5: "table5_nfe.csv"}
OFFLINE_FEATURES = "offline-classifier"
PUBLISHED_EDM = "EDM (published network)"
RETRAINED_EDM = "EDM (retrained here, AOT off, same recipe)"
PAPER_DATASET = "cifar10"
NO_PUBLISHED_VALUE = "no published value"
OFFLINE_CAVEAT = ("Frechet distance in an offline classifier's feature space "
                  "(not FID-Inception; not comparable to the paper column)")


def paper_table(number: int) -> pd.DataFrame:
    """The paper's numbers of table `number` (1-5), read from the package copy."""
    if number not in PAPER_FILES:
        raise UserError(f"no paper table {number}; tables are 1-5")
    text = resources.files("aot").joinpath("paper", PAPER_FILES[number]).read_text()
    return pd.read_csv(io.StringIO(text), comment="#")


# ------------------------------------------------------------------------------------------------
# One FID result file


def _fail(path: Any, msg: str) -> UserError:
    return UserError(f"FID result {path}: {msg}")


def _get(obj: dict, dotted: str, path: Any, default: Any = ...) -> Any:
    cur: Any = obj
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            if default is not ...:
                return default
            raise _fail(path, f"missing key '{dotted}'")
        cur = cur[part]
    return cur


def _number(value: Any, key: str, path: Any, positive: bool = False, nonneg: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(path, f"'{key}' must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or (positive and v <= 0) or (nonneg and v < 0):
        what = "positive " if positive else "non-negative " if nonneg else ""
        raise _fail(path, f"'{key}' must be a {what}finite number, got {value!r}")
    return v


def _flag(value: Any, key: str, path: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(path, f"'{key}' must be true or false, got {value!r}")
    return value


def _guidance(obj: dict, path: Any) -> tuple[str | None, str]:
    """('aot' | 'plain' | None, the guidance settings without the discriminator path, as JSON)."""
    guidance_obj = _get(obj, "sampler.guidance", path, None)
    key_v = _get(obj, "sampler.key", path, "")
    key_dg = re.match(rf"^dg({keys.GUIDANCE_RE})-", key_v) if isinstance(key_v, str) else None
    if guidance_obj is None and key_dg:  # a guided set whose meta lacks the guidance record
        return key_dg.group(1), json.dumps({"aot": key_dg.group(1) == "aot"})
    if guidance_obj is None:
        return None, ""
    if not isinstance(guidance_obj, dict):
        raise _fail(path, f"'sampler.guidance' must be null or an object, got {guidance_obj!r}")
    g_aot = _flag(_get(guidance_obj, "aot", path), "sampler.guidance.aot", path)
    return ("aot" if g_aot else "plain"), json.dumps(
        {k: v for k, v in guidance_obj.items() if k != "discriminator"}, sort_keys=True, default=str)


def _seeds(obj: dict, path: Any) -> tuple[int, int] | None:
    seeds = obj.get("seeds")
    if seeds is None:
        return None
    if (not isinstance(seeds, (list, tuple)) or len(seeds) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in seeds) or seeds[1] < seeds[0]):
        raise _fail(path, f"'seeds' must be [first, last], got {seeds!r}")
    return int(seeds[0]), int(seeds[1])


def parse_fid_result(obj: Any, path: Any = "<dict>") -> dict:
    """Validate one FID result (spec format) and flatten what the tables need into a record."""
    if not isinstance(obj, dict):
        raise _fail(path, "top level must be a JSON object")
    kind = obj.get("kind", "fid")
    if kind != "fid":
        raise _fail(path, f"'kind' is {kind!r}, expected 'fid'")
    name = _get(obj, "model.name", path)
    if not isinstance(name, str) or not name:
        raise _fail(path, f"'model.name' must be a non-empty string, got {name!r}")
    aot = _flag(_get(obj, "model.aot", path), "model.aot", path)
    cond = _flag(_get(obj, "model.cond", path), "model.cond", path)
    steps_v = _get(obj, "sampler.num_steps", path)
    if isinstance(steps_v, bool) or not isinstance(steps_v, int) or steps_v <= 0:
        raise _fail(path, f"'sampler.num_steps' must be a positive integer, got {steps_v!r}")
    rho = _number(_get(obj, "sampler.rho", path), "sampler.rho", path, positive=True)
    solver = _get(obj, "sampler.solver", path, "heun")
    if solver not in keys.SOLVERS:
        raise _fail(path, f"'sampler.solver' must be 'heun' or 'euler', got {solver!r}")
    nfe_v = _get(obj, "sampler.nfe", path, None)
    if nfe_v is None:
        nfe_v = obj.get("nfe")  # aot.fid also writes it at the top level
    nfe = keys.nfe(steps_v, solver) if nfe_v is None else nfe_v
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe <= 0:
        raise _fail(path, f"'sampler.nfe' must be a positive integer, got {nfe_v!r}")
    churn_v = _get(obj, "sampler.S_churn", path, 0.0)
    churn = _number(churn_v if churn_v is not None else 0.0, "sampler.S_churn", path, nonneg=True)
    guidance, guidance_sig = _guidance(obj, path)
    fid = _number(_get(obj, "fid", path), "fid", path)
    feat = _get(obj, "feature_network.name", path)
    if not isinstance(feat, str) or not feat:
        raise _fail(path, f"'feature_network.name' must be a non-empty string, got {feat!r}")
    repeat = obj.get("repeat")
    if repeat is not None and (isinstance(repeat, bool) or not isinstance(repeat, int)):
        raise _fail(path, f"'repeat' must be an integer, got {repeat!r}")
    time_s = obj.get("time_s")
    source = _get(obj, "model.source", path, None)
    guidance_obj = _get(obj, "sampler.guidance", path, None)
    dg_training = guidance_obj.get("training") if isinstance(guidance_obj, dict) else None
    reference = _get(obj, "reference.name", path, None)
    return {
        "seeds": _seeds(obj, path),
        "model": name, "aot": aot, "cond": cond, "published": is_published_source(source),
        "solver": solver, "num_steps": int(steps_v),
        "rho": rho, "nfe": int(nfe), "S_churn": churn, "guidance": guidance,
        "guidance_sig": guidance_sig,
        "sampler_key": keys.sampler_key(solver, steps_v, rho, churn, guidance=guidance),
        "feature_network": feat, "repeat": repeat, "fid": fid,
        "num_images": obj.get("num_images"),
        "reference": reference if isinstance(reference, str) and reference else None,
        "dg_training": dg_training if isinstance(dg_training, dict) else None,
        "time_s": float(time_s) if isinstance(time_s, (int, float)) and not isinstance(time_s, bool) else None,
        "file": str(path),
    }


def load_fid_results(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """Read and validate FID result files into flat records. A folder stands for every `*.json`
    below it whose "kind" is "fid"; a file named explicitly must be a FID result."""
    records = []
    for p in map(Path, paths):
        for path in sorted(p.rglob("*.json")) if p.is_dir() else [p]:
            obj = read_json(path, "FID result")
            if path is not p and (not isinstance(obj, dict) or obj.get("kind") != "fid"):
                continue
            records.append(parse_fid_result(obj, path))
    return records


# ------------------------------------------------------------------------------------------------
# Repeats -> one row per sample set

_GROUP_KEYS = ("model", "aot", "cond", "solver", "num_steps", "rho", "S_churn", "guidance",
               "guidance_sig", "feature_network")
AGG_COLUMNS = ["model", "aot", "cond", "published", "kind", "solver", "num_steps", "rho", "nfe", "S_churn", "guidance",
               "sampler_key", "feature_network", "fid", "fid_mean", "fid_std", "n", "repeats",
               "files", "time_s", "fid_rep0", "reference", "dg_training"]


def check_repeats(members: Sequence[dict]) -> None:
    """The repeats of one sample set have distinct repeat indices and disjoint seed ranges."""
    seen: dict[int, str] = {}
    for m in members:
        if m["repeat"] is None:
            continue
        if m["repeat"] in seen:
            raise UserError(f"FID results {seen[m['repeat']]} and {m['file']} are both repeat "
                            f"{m['repeat']} of model {m['model']} sampler {m['sampler_key']}")
        seen[m["repeat"]] = m["file"]
    ranged = sorted((m for m in members if m["seeds"] is not None), key=lambda m: m["seeds"])
    for a, b in zip(ranged, ranged[1:]):
        if b["seeds"][0] <= a["seeds"][1]:
            raise UserError(f"FID results {a['file']} (seeds {a['seeds'][0]}-{a['seeds'][1]}) and {b['file']} "
                            f"(seeds {b['seeds'][0]}-{b['seeds'][1]}) are repeats of model {a['model']} sampler "
                            f"{a['sampler_key']} with overlapping seed ranges; the repeats must use disjoint seeds")


def check_one_reference(records: Sequence[dict]) -> None:
    """FID against different reference statistics (`reference.name`: clean-fid's, EDM's, the
    dataset's) never mix in one table or figure: a UserError naming one file of each."""
    first: dict[str, str] = {}
    for r in records:
        if r.get("reference") and r["reference"] not in first:
            first[r["reference"]] = r["file"]
    if len(first) > 1:
        raise UserError("FID results mix reference statistics: "
                        + ", ".join(f"{name} ({file})" for name, file in first.items())
                        + "; measure every sample set against one reference (fid.reference)")


def aggregate(records: Sequence[dict]) -> pd.DataFrame:
    """Combine the repeats of each sample set: fid (min), fid_mean, fid_std (ddof=1), n, and
    fid_rep0, the FID of repeat 0 alone (one 50k set, the protocol of DG's numbers)."""
    from ..metrics import aggregate_repeats  # torch comes with it: only where numbers are made

    check_one_reference(records)
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(tuple(r[k] for k in _GROUP_KEYS), []).append(r)
    rows = []
    for members in groups.values():
        check_repeats(members)
        stats = aggregate_repeats(m["fid"] for m in members)
        first = members[0]
        times = [m["time_s"] for m in members if m["time_s"] is not None]
        rows.append({
            **{k: first[k] for k in ("model", "aot", "cond", "solver", "num_steps", "rho", "nfe",
                                     "S_churn", "guidance", "sampler_key", "feature_network")},
            "published": bool(first.get("published", False)),
            "kind": kind_name(first["aot"], bool(first.get("published", False))),
            "fid": stats["min"], "fid_mean": stats["mean"], "fid_std": stats["std"], "n": stats["n"],
            "repeats": sorted(m["repeat"] for m in members if m["repeat"] is not None),
            "files": [m["file"] for m in members],
            "time_s": float(sum(times)) if times else float("nan"),
            "fid_rep0": next((m["fid"] for m in members if m["repeat"] == 0), float("nan")),
            "reference": first.get("reference"),
            "dg_training": first.get("dg_training"),
        })
    df = pd.DataFrame(rows, columns=AGG_COLUMNS)
    if len(df):
        df = df.sort_values(["cond", "aot", "model", "guidance", "num_steps", "rho"],
                            key=lambda s: s.fillna("") if s.dtype == object else s,
                            ignore_index=True)
    return df


def as_aggregate(results: Any) -> pd.DataFrame:
    """Accept an aggregate DataFrame, FID result dicts, paths, or a mix of dicts and paths."""
    if isinstance(results, pd.DataFrame):
        return with_kind(results)
    records = []
    for i, item in enumerate(list(results or [])):
        if isinstance(item, dict) and "file" in item and "sampler_key" in item:
            records.append(item)
        elif isinstance(item, dict):
            records.append(parse_fid_result(item, f"<result {i}>"))
        else:
            records.extend(load_fid_results([item]))
    return aggregate(records)


def single_feature_network(agg: pd.DataFrame) -> str | None:
    """The one feature network of the results (None when there are none); a mix is an error."""
    names = sorted(set(agg["feature_network"])) if len(agg) else []
    if len(names) > 1:
        examples = []
        for name in names:
            files = agg.loc[agg["feature_network"] == name, "files"].iloc[0]
            examples.append(f"{name} ({files[0]})")
        raise UserError("FID results mix feature networks: " + ", ".join(examples)
                        + "; make each table from one kind")
    return names[0] if names else None


def is_offline(feature_network: str | None) -> bool:
    return feature_network == OFFLINE_FEATURES


# ------------------------------------------------------------------------------------------------
# Selections and names of sample sets


def is_published_source(source: Any) -> bool:
    """A network imported from EDM's official pickles (checkpoint meta source `edm-pickle:...`)."""
    return isinstance(source, str) and source.startswith("edm-pickle")


def kind_name(aot: bool, published: bool = False) -> str:
    """What a model is, as every table and figure labels it: EDM-AOT, or one of the two EDM
    baselines: EDM's published network (the paper's EDM rows) or EDM retrained by this pipeline
    with AOT off and otherwise the same recipe as EDM-AOT."""
    if aot:
        return "EDM-AOT"
    return PUBLISHED_EDM if published else RETRAINED_EDM


def paper_kind(aot: bool) -> str:
    """The name the paper's tables give the model: EDM or EDM-AOT."""
    return "EDM-AOT" if aot else "EDM"


def paper_label(label: str) -> str:
    """The paper's row label that one of our labels stands beside: the model suffix ` [name]`
    dropped, either EDM baseline named as the paper names it ("EDM")."""
    base = label.split(" [")[0]
    for kind in (PUBLISHED_EDM, RETRAINED_EDM):
        if base.startswith(kind):
            return "EDM" + base[len(kind):]
    return base


def cond_name(cond: bool) -> str:
    return "cond" if cond else "uncond"


def is_default_sampler(row: Any) -> bool:
    """EDM's sampler for CIFAR-10: Heun, 18 steps, rho 7, no churn."""
    return (row["solver"] == "heun" and int(row["num_steps"]) == 18 and float(row["rho"]) == 7.0
            and not row["S_churn"])


def unguided(agg: pd.DataFrame) -> pd.DataFrame:
    if not len(agg):
        return agg
    return agg[agg["guidance"].isna()]


def plain_heun(agg: pd.DataFrame) -> pd.DataFrame:
    """Unguided, deterministic Heun sample sets: those the rho and NFE studies compare."""
    df = unguided(agg)
    if not len(df):
        return df
    return df[(df["solver"] == "heun") & (df["S_churn"] == 0)]


def models_per_kind(df: pd.DataFrame) -> dict[tuple[str, bool], list[str]]:
    """(kind, cond) -> the model names of that kind (`kind_name`)."""
    out: dict[tuple[str, bool], list[str]] = {}
    for (kind, cond), sub in with_kind(df).groupby(["kind", "cond"]):
        out[(str(kind), bool(cond))] = sorted(set(sub["model"]))
    return out


def with_kind(df: pd.DataFrame) -> pd.DataFrame:
    """The frame with `published` and `kind` columns (an aggregate made before they existed)."""
    if "kind" in df.columns and "published" in df.columns:
        return df
    df = df.copy()
    if "published" not in df.columns:
        df["published"] = False
    df["kind"] = [kind_name(bool(a), bool(p)) for a, p in zip(df["aot"], df["published"])]
    return df


def with_model(label: str, model: str, models: list[str]) -> str:
    """`label [model]` when several models share a kind, else the bare label."""
    return f"{label} [{model}]" if len(models) > 1 else label
