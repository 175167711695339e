"""The in-flight report: Tables 1-5 from whatever FID results a run has so far, while it runs.

`snakemake ... report` cannot run beside `snakemake ... all` (Snakemake locks the folder) and its
`report` rule needs every table. This reads the run folder instead and writes one Markdown file
(default RUN_DIR/README-in-flight.md), which no rule declares, so the running workflow never sees it:

- the run's config as the workflow wrote it (`RUN_DIR/config.json`, rule `run_config`), from which
  the sample sets of each table follow as in workflow/rules/common_report.smk (Tables 1 and 2 only
  for the parts in `tables`, Table 3's guided sets only with `dg.enabled`, Tables 4 and 5 from
  `sampling.table4` and `sampling.table5`; the tables' options `rhos` and `dataset` as the table
  rules pass them);
- of each expected sample set, the FID results `RUN_DIR/fid/<model>/<key>/rep<r>.json`, r below
  `fid.repeats`, that exist; nothing else (figures, diagnostics, models) is needed.

The tables are those of `make_table`, each given the results of its own sample sets, as the
workflow's table rules are. A cell that waits for a sample set no result of which exists yet reads
"pending"; a value that more results could still change (a sample set with some of its repeats, a
best over rho with some rho values to come, a Table 3 choice by the lowest FID) is shown with
"(so far)". Both are found by building each table three times with stand-ins for what is missing
(`_stand_ins`): a cell that differs between two builds whose stand-ins never win depends on a
missing set (pending); one that differs only where stand-ins always win would change with the
missing results (so far). The final tables and report are not touched.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .. import keys
from ..errors import UserError
from ..files import read_json, write_text_atomic
from .render import to_markdown
from .results import OFFLINE_CAVEAT, OFFLINE_FEATURES, is_offline, parse_fid_result
from .tables import make_table

IN_FLIGHT_FILE = "README-in-flight.md"
PENDING = "pending"
SO_FAR = "(so far)"
# FID of the stand-ins: far above (builds A, B) or below (build C) any real value
_FAR = 1.0e6


# ------------------------------------------------------------------------------------------------
# What the run will measure: the sample sets of each table, from the run's config


class RunPlan:
    """The sample sets (model, key) of Tables 1-5 and the tables' options, derived from the run's
    config as workflow/rules/common_report.smk derives the tables' inputs."""

    def __init__(self, config: dict) -> None:
        from ..settings.run import RunSettings

        self.config = config
        self.settings = RunSettings(config)
        sampling = config["sampling"]
        self.sampling = sampling
        self.solver = sampling["solver"]
        self.repeats = int(config["fid"]["repeats"])
        self.dataset = config["dataset"]["name"]
        self.rhos = tuple(float(r) for r in sampling["table5"]["rho"])
        self.models = {m["name"]: m for m in config["models"]}

    # --- keys, as common.smk's key_for, default_key, best_key and common_dg.smk's guided_key ---

    def key_for(self, num_steps: int, rho: float) -> str:
        return keys.sampler_key(self.solver, num_steps, rho, self.sampling["S_churn"])

    def default_key(self) -> str:
        d = self.sampling["default"]
        return self.key_for(d["num_steps"], d["rho"])

    def best_key(self, model: str) -> str:
        s = self.sampling["best"].get(model, self.sampling["default"])
        return self.key_for(s["num_steps"], s["rho"])

    @staticmethod
    def guided_key(key: str, mode: str) -> str:
        return keys.sampler_key(**{**keys.parse_key(key), "guidance": mode})

    # --- the tables' sample sets ------------------------------------------------------------------

    def edm_models(self, part: str) -> list[str]:
        tables = self.config["tables"][part]
        return [m for m in (self.settings.published_model(part), tables["edm"]) if m]

    def table12_sets(self, part: str) -> set[tuple[str, str]]:
        aot = self.config["tables"][part]["aot"]
        sets = {(m, self.default_key()) for m in self.edm_models(part)}
        return sets | {(aot, self.default_key()), (aot, self.best_key(aot))}

    def table3_sets(self) -> set[tuple[str, str]]:
        out = set()
        for part in self.settings.parts:
            aot = self.config["tables"][part]["aot"]
            out.update((m, self.default_key()) for m in self.edm_models(part))
            out.add((aot, self.best_key(aot)))
            if self.config["dg"]["enabled"]:
                guided = [(m, self.default_key(), "plain") for m in self.edm_models(part)]
                guided += [(aot, self.best_key(aot), "plain"), (aot, self.best_key(aot), "aot")]
                out.update((m, self.guided_key(k, mode)) for m, k, mode in guided)
        return out

    def table4_sets(self) -> set[tuple[str, str]]:
        """Every row of Table 4 (the published networks' with tables.published_grids) x rho."""
        t4 = self.sampling["table4"]
        return {(row["model"], self.key_for(row["num_steps"], rho))
                for row in self.settings.table4_rows() for rho in t4["rho"]}

    def table5_sets(self) -> set[tuple[str, str]]:
        """Every model of Table 5 (the published networks' with tables.published_grids) x NFE x rho."""
        t5 = self.sampling["table5"]
        return {(m, self.key_for(keys.steps_for_nfe(nfe, self.solver), rho))
                for m in self.settings.table5_models() for nfe in t5["nfe"] for rho in t5["rho"]}

    def table_sets(self) -> dict[int, list[tuple[str, str]]]:
        """Table number -> its sample sets, for the tables the workflow makes (report.smk's TABLES)."""
        out: dict[int, set[tuple[str, str]]] = {}
        if "uncond" in self.settings.parts:
            out[1] = self.table12_sets("uncond")
        if "cond" in self.settings.parts:
            out[2] = self.table12_sets("cond")
        out[3], out[4], out[5] = self.table3_sets(), self.table4_sets(), self.table5_sets()
        return {n: sorted(s) for n, s in out.items()}

    def fid_paths(self, run_dir: Path, model: str, key: str) -> list[Path]:
        """The FID result files of a sample set, one per repeat (common.smk's fid_set)."""
        return [run_dir / "fid" / model / key / f"rep{r}.json" for r in range(self.repeats)]


def load_plan(config_path: Path) -> RunPlan:
    """The plan of the run whose config the workflow wrote to `config_path`."""
    config = read_json(config_path, "run config")
    try:
        if not isinstance(config, dict):
            raise TypeError("the top level is not an object")
        plan = RunPlan(config)
        models = {m for sets in plan.table_sets().values() for m, _ in sets}
        for m in sorted(models):
            if not {"aot", "cond"} <= set(plan.models[m]):
                raise ValueError(f"model {m!r} lacks aot or cond")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        what = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
        raise UserError(f"run config {config_path} is not a config the workflow wrote ({what})") from None
    if plan.repeats < 1:
        raise UserError(f"run config {config_path}: fid.repeats must be positive, got {plan.repeats}")
    return plan


# ------------------------------------------------------------------------------------------------
# Stand-ins for the missing results


def _stand_in(plan: RunPlan, model: str, key: str, fid: float, feature_network: str) -> dict:
    """A record (as `parse_fid_result` makes) of a sample set that has no result yet."""
    m = plan.models[model]
    k = keys.parse_key(key)
    guidance = k["guidance"]
    return {
        "seeds": None, "model": model, "aot": bool(m["aot"]), "cond": bool(m["cond"]),
        "published": m.get("source") == "edm-pickle", "solver": k["solver"],
        "num_steps": k["num_steps"], "rho": k["rho"], "nfe": keys.nfe(k["num_steps"], k["solver"]),
        "S_churn": k["S_churn"], "guidance": guidance,
        "guidance_sig": f'{{"aot": {str(guidance == "aot").lower()}}}' if guidance else "",
        "sampler_key": key, "feature_network": feature_network, "repeat": None, "fid": float(fid),
        "num_images": None, "time_s": None, "file": f"<pending {model}/{key}>",
    }


def _stand_ins(plan: RunPlan, sets: Sequence[tuple[str, str]], found: dict[tuple[str, str], list[dict]],
               feature_network: str) -> dict[str, list[dict]]:
    """The three builds' records: A and B have the real results and, for every set without any,
    stand-ins that lose to every real value (one in A, two in B, in opposite orders); C has the
    real results and, for every missing result (a whole set or a repeat), a stand-in that wins."""
    builds: dict[str, list[dict]] = {"A": [], "B": [], "C": []}
    for i, (model, key) in enumerate(sets):
        real = found.get((model, key), [])
        for b in builds.values():
            b.extend(real)
        if not real:
            builds["A"].append(_stand_in(plan, model, key, _FAR + i, feature_network))
            builds["B"].append(_stand_in(plan, model, key, 2 * _FAR - i, feature_network))
            builds["B"].append(_stand_in(plan, model, key, 2 * _FAR - i + 0.5, feature_network))
            builds["C"].append(_stand_in(plan, model, key, -_FAR - i, feature_network))
        for _ in range(plan.repeats - len(real) if real else 0):
            builds["C"].append({**real[0], "fid": -_FAR - i, "repeat": None, "seeds": None, "time_s": None,
                                "file": f"<pending {model}/{key}>"})
    return builds


def _mark(a: pd.DataFrame, b: pd.DataFrame, c: pd.DataFrame) -> pd.DataFrame:
    """Build A's display table with "pending" where A and B differ and "(so far)" after the value
    where only A and C differ."""
    if a.shape != b.shape or a.shape != c.shape or list(a.columns) != list(b.columns):
        raise AssertionError("the in-flight builds of a table differ in shape")  # a bug, not bad input
    out = a.copy()
    for col in a.columns:
        vals = []
        for x, y, z in zip(a[col], b[col], c[col]):
            if x != y:
                vals.append(PENDING)
            elif x != z and str(x) != "":
                vals.append(f"{x} {SO_FAR}")
            else:
                vals.append(x)
        out[col] = vals
    return out


def _pending_rows(number: int, disp: pd.DataFrame) -> pd.DataFrame:
    """Cells that name a setting of a pending measurement rather than measure it: Tables 1-2's
    "Source" ("measured" for the stand-in) and Tables 4-5's "best rho"."""
    disp = disp.copy()
    if number in (1, 2):
        ours = next(c for c in disp.columns if "(ours" in c)
        disp.loc[disp[ours] == PENDING, "Source"] = PENDING
    elif number in (4, 5):
        is_ours = disp[""].astype(str).str.endswith("(ours)")
        value_cols = [c for c in disp.columns if c not in ("Setting", "")]
        for setting in disp.loc[is_ours, "Setting"]:
            ours = disp[is_ours & (disp["Setting"] == setting)].iloc[0]
            rows = (disp["Setting"] == setting) & ~disp[""].astype(str).str.startswith("FID (paper)")
            for col in value_cols:
                if ours[col] == PENDING:
                    disp.loc[rows, col] = PENDING
    return disp


# ------------------------------------------------------------------------------------------------
# The report


def _read_found(plan: RunPlan, run_dir: Path, sets: Sequence[tuple[str, str]],
                cache: dict[Path, dict]) -> dict[tuple[str, str], list[dict]]:
    """The FID results of each set that exist (read once into `cache`); a file that a rerun of its
    job removes while it is read counts as missing."""
    found: dict[tuple[str, str], list[dict]] = {}
    for model, key in sets:
        for path in plan.fid_paths(run_dir, model, key):
            if path not in cache and path.is_file():
                try:
                    obj = read_json(path, "FID result")
                except UserError:
                    if path.is_file():
                        raise
                    continue
                cache[path] = parse_fid_result(obj, path)
            if path in cache:
                found.setdefault((model, key), []).append(cache[path])
    return found


def _feature_network(plan: RunPlan, records: Sequence[dict]) -> str:
    """The feature network of the stand-ins: the results' (the first), or the config's."""
    from ..metrics import INCEPTION_NAME

    names = sorted({r["feature_network"] for r in records})
    if names:
        return names[0]
    return OFFLINE_FEATURES if plan.config["fid"].get("features") == "offline" else INCEPTION_NAME


def in_flight_tables(run_dir: Path, plan: RunPlan, cache: dict[Path, dict]) -> list[dict]:
    """[{number, disp (the marked display table), meta, sets, complete, partial}] of Tables 1-5;
    `cache` gets the records of the FID result files read."""
    table_sets = plan.table_sets()
    found = {n: _read_found(plan, run_dir, sets, cache) for n, sets in table_sets.items()}
    feature = _feature_network(plan, list(cache.values()))
    out = []
    for number, sets in table_sets.items():
        builds = _stand_ins(plan, sets, found[number], feature)
        made = {name: make_table(number, records, plan.rhos, plan.dataset) for name, records in builds.items()}
        disp = _pending_rows(number, _mark(made["A"][1], made["B"][1], made["C"][1]))
        counts = [len(found[number].get(s, [])) for s in sets]
        out.append({"number": number, "disp": disp, "meta": made["A"][2], "sets": len(sets),
                    "complete": sum(n == plan.repeats for n in counts),
                    "partial": sum(0 < n < plan.repeats for n in counts)})
    return out


def _count_line(t: dict, repeats: int) -> str:
    line = f"{t['complete']} of {t['sets']} sample sets measured"
    if t["partial"]:
        line += (f"; {t['partial']} more {'has' if t['partial'] == 1 else 'have'} some of "
                 f"{'its' if t['partial'] == 1 else 'their'} {repeats} repeats")
    return line + "."


def build_in_flight(run_dir: str | os.PathLike, now: datetime.datetime | None = None) -> str:
    """The text of the in-flight report of the run in `run_dir`."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} does not exist")
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise UserError(f"run config {config_path} does not exist (the workflow writes it first, rule run_config)")
    plan = load_plan(config_path)
    cache: dict[Path, dict] = {}
    tables = in_flight_tables(run_dir, plan, cache)
    every = sorted({s for sets in plan.table_sets().values() for s in sets})
    n_paths = len(every) * plan.repeats
    complete = sum(all(p in cache for p in plan.fid_paths(run_dir, m, k)) for m, k in every)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    stamp = now.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    offline = any(is_offline(t["meta"]["feature_network"]) for t in tables)
    lines = [f"# EDM-AOT reproduction: run `{run_dir.resolve().name}`, in flight", "",
             f"> **In-flight snapshot, {stamp}.** {len(cache)} of the {n_paths} FID results that "
             f"Tables 1-5 are made from were found ({complete} of {len(every)} sample sets complete, "
             f"{plan.repeats} repeat{'s' if plan.repeats != 1 else ''} each) under `{run_dir / 'fid'}`. "
             "The run's report, `README.md`, with every figure, comes when the run is done.", ""]
    cells = [str(v) for t in tables for col in t["disp"].columns for v in t["disp"][col]]
    legend = []
    if PENDING in cells:
        legend.append(f"\"{PENDING}\": no result of the sample set behind the cell yet.")
    if any(v.endswith(SO_FAR) for v in cells):
        legend.append(f"\"{SO_FAR}\": the value of the results so far, which the missing ones may still "
                      "change (a sample set with some of its repeats, a best over rho with some rho values "
                      "to come, a choice by the lowest FID).")
    if legend:
        lines += [" ".join(legend), ""]
    if offline:
        lines += [f"> **Caveat:** ours = {OFFLINE_CAVEAT}.", ""]
    for t in tables:
        meta = t["meta"]
        lines += [f"## {meta['title']}", "", f"**{_count_line(t, plan.repeats)}**", ""]
        lines += [to_markdown(t["disp"]).rstrip("\n"), ""]
        lines += [f"- {n}" for n in meta["notes"]] + [""]
    return "\n".join(lines)


def write_in_flight(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the in-flight report (default RUN_DIR/README-in-flight.md), whole or not at all."""
    text = build_in_flight(run_dir)
    out = Path(out) if out else Path(run_dir) / IN_FLIGHT_FILE
    write_text_atomic(out, text)
    return out
