"""A run's settings: the checked configuration and every value derived from it (per-model training
settings, DG recipes, dataset facts, the pool-size study's models, GPUs x nodes), with every check
across keys. Pure: nothing here knows Snakemake; the workflow builds one `RunSettings` at the top
of common.smk and reads from it."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

from .rules import check_global_batch, check_heun_nfe, check_pool_batch
from .schema import ConfigError, check_schema, layer_partial, load_yaml, read_site_file, set_defaults

# name -> (channels, classes) of the built-in datasets
BUILTIN_DATASETS = {"cifar10": (3, 10), "digits": (1, 10)}
EDM_ONLY_KEYS = ("path", "labels", "classes")
PARTS = ("uncond", "cond")
# Settings that do not change a model without AOT (its noise is never paired).
NO_AOT_IGNORED = ("pool_size", "cost")
# DG's released heads (file name -> the DG checkpoint folder that has them): they need DG's classifier.
DG_RELEASED_HEADS = ("discriminator_60.pt", "discriminator_250.pt")


def _fail(msg: str):
    raise ConfigError(msg)


def _raise_as_config(fn, *args, **kwargs) -> None:
    """Run one of the paper's rules (aot.settings.rules) and report its error as a config error."""
    from ..errors import UserError

    try:
        fn(*args, **kwargs)
    except UserError as exc:
        raise ConfigError(str(exc)) from None


def train_processes(resources: dict) -> tuple[int, int]:
    """(GPUs per node, nodes) of a training job's resources: 0 GPUs is one CPU process."""
    return int(resources.get("gpus") or 0), int(resources.get("nodes") or 1)


class RunSettings:
    """The settings of one run. `config` is validated and has the schema's defaults; `warnings` are
    lines to show (not errors)."""

    def __init__(self, config: dict) -> None:
        self.config = config
        self.warnings: list[str] = []
        self.models: dict[str, dict] = {m["name"]: m for m in config["models"]}
        self.parts = [p for p in PARTS if p in config["tables"]]  # the tables' parts
        self.pool_study_entries: list[dict] = []
        self.replicate_entries: list[dict] = []
        self.layered_from: list[str] = []
        self.site_file: str | None = None

    # --- building --------------------------------------------------------------------------------

    @classmethod
    def load(cls, config: dict, *, schema: str | Path, paper: str | Path, site: str | Path | None = None,
             validate: bool = True) -> RunSettings:
        """Layer a partial config onto the paper's (in place), with the site file's cluster settings
        (`site`, when it exists) under the given config; check the result against the schema, fill in
        the defaults, derive and check everything else. Raises ConfigError."""
        schema_doc = load_yaml(schema)
        site_doc = read_site_file(site)
        given = layer_partial(config, schema_doc, paper, site_doc)
        if validate:
            check_schema(config, schema_doc)
        set_defaults(config, schema_doc)
        run = cls(config)
        run.layered_from = given
        run.site_file = str(site) if site_doc else None
        run.check()
        return run

    def check(self) -> None:
        """Every check across keys, in the order a reader meets the sections; the first problem
        raises ConfigError. The pool-size study's models are derived (and registered) here."""
        self.check_models()
        self.check_sampling()
        self.check_fid()
        self.pool_study_entries = self.derive_pool_study()
        for e in self.pool_study_entries:
            if e["new"] and e["model"] not in self.models:
                self.models[e["model"]] = {"name": e["model"], "cond": e["part"] == "cond",
                                           "aot": e["N"] is not None, "source": "train", "train": e["train"]}
        self.replicate_entries = self.derive_replicates()
        for e in self.replicate_entries:
            if e["new"] and e["model"] not in self.models:
                base = self.models[e["base"]]
                self.models[e["model"]] = {"name": e["model"], "cond": base["cond"], "aot": base["aot"],
                                           "source": "train", "train": e["train"]}
        self.check_dataset()
        self.check_dg()
        self.check_published()

    # --- models and training ---------------------------------------------------------------------

    @property
    def trained(self) -> list[str]:
        return [n for n, m in self.models.items() if m["source"] == "train"]

    @property
    def imported(self) -> list[str]:
        return [n for n, m in self.models.items() if m["source"] == "edm-pickle"]

    def train_settings(self, model: str) -> dict:
        return {**self.config["training"], **self.models[model].get("train", {})}

    def part_of(self, model: str) -> str:
        return "cond" if self.models[model]["cond"] else "uncond"

    def train_resources(self, overrides: dict | None = None) -> dict:
        """The training job's resources: the config's, with a command line's or profile's
        `--set-resources train:...` on top (`gpu` or the count of `gres`, and `nodes`)."""
        r = dict(self.config["resources"]["train"])
        o = overrides or {}
        if o.get("gpu") is not None:
            r["gpus"] = int(o["gpu"])
        elif o.get("gres"):
            last = str(o["gres"]).split(":")[-1]
            r["gpus"] = int(last) if last.isdigit() else 1
        if o.get("nodes") is not None:
            r["nodes"] = int(o["nodes"])
        return r

    def check_training_batch(self, resources: dict, names: list[str] | None = None, where: str | None = None,
                             route: str = "resources.train") -> None:
        """Global batch vs GPUs x nodes x B for every trained model (or `names`), with `resources`
        (train_resources()) given by `route`; the message names the keys and the GPU counts that
        would work."""
        gpus, nodes = train_processes(resources)
        for name in names if names is not None else self.trained:
            t = self.train_settings(name)
            _raise_as_config(check_global_batch, t["batch"], t["batch_gpu"], gpus, nodes,
                             where=where or f"models[{name}] with {route} gpus={gpus}, nodes={nodes}",
                             gpus_name="GPU(s)")

    def train_extra_args(self, model: str) -> list[str]:
        """The model's `extra_args` (training.extra_args, or its own train.extra_args) as the list of
        arguments of `python -m aot train` they are, checked against that command's own parser;
        a ConfigError otherwise (see extra_train_args)."""
        where = ("training.extra_args" if "extra_args" not in self.models[model].get("train", {})
                 else f"models[{model}].train.extra_args")
        return extra_train_args(self.train_settings(model).get("extra_args"), where,
                                set_by_config=set(self.train_settings(model)) | set(
                                    self.train_settings(model).get("arch_overrides") or {}))

    def check_models(self) -> None:
        config = self.config
        names = [m["name"] for m in config["models"]]
        for name in names:
            if names.count(name) > 1:
                _fail(f"models: the name {name!r} is used twice")
        for m in config["models"]:
            if m["source"] == "edm-pickle" and not m.get("pickle"):
                _fail(f"models[{m['name']}]: source edm-pickle needs `pickle` (URL or path of the EDM .pkl)")
            if m["source"] == "train":
                t = self.train_settings(m["name"])
                _raise_as_config(check_pool_batch, t["pool_size"], t["batch_gpu"],
                                 f"models[{m['name']}]: pool_size", "batch_gpu")
        self.check_training_batch(self.train_resources())
        for name in self.trained:
            self.train_extra_args(name)
        if not self.parts:
            _fail("tables: name the models of at least one part (uncond, cond)")
        for part in self.parts:
            for role in ("edm", "aot"):
                name = config["tables"][part][role]
                if name not in self.models:
                    _fail(f"tables.{part}.{role}: unknown model {name!r} (models: {', '.join(names)})")
                m = self.models[name]
                if m["cond"] != (part == "cond") or m["aot"] != (role == "aot"):
                    _fail(f"tables.{part}.{role}: model {name!r} has cond={m['cond']}, aot={m['aot']}")

    # --- sampling and FID ------------------------------------------------------------------------

    @property
    def solver(self) -> str:
        return self.config["sampling"]["solver"]

    def check_sampling(self) -> None:
        sampling = self.config["sampling"]
        for name in sampling["best"]:
            if name not in self.models:
                _fail(f"sampling.best: unknown model {name!r}")
        for i, row in enumerate(sampling["table4"]["rows"]):
            if row["model"] not in self.models:
                _fail(f"sampling.table4.rows[{i}].model: unknown model {row['model']!r}")
        for name in sampling["table5"]["models"]:
            if name not in self.models:
                _fail(f"sampling.table5.models: unknown model {name!r}")
        for nfe in sampling["table5"]["nfe"]:
            _raise_as_config(check_heun_nfe, nfe, self.solver, "sampling.table5.nfe")
        for nfe in self.config["pool_study"]["nfe"]:
            _raise_as_config(check_heun_nfe, nfe, self.solver, "pool_study.nfe")
        for nfe in self.config["significance"]["nfe"] or []:
            _raise_as_config(check_heun_nfe, nfe, self.solver, "significance.nfe")

    def check_fid(self) -> None:
        config, fid = self.config, self.config["fid"]
        if config["dataset"]["name"] == "cifar10" and not config["dataset"].get("source"):
            _fail("dataset.source: CIFAR-10 needs the URL or path of cifar-10-python.tar.gz")
        if fid["reference"] == "precomputed" and fid["features"] != "inception":
            _fail("fid.reference: precomputed statistics exist for Inception features only; use reference: dataset")
        if fid["reference"] == "precomputed" and config["dataset"]["name"] != "cifar10":
            _fail("fid.reference: precomputed statistics exist for CIFAR-10 only; use reference: dataset")
        if fid["reference"] == "edm":
            if fid["features"] != "inception" or config["dataset"]["name"] != "cifar10":
                _fail("fid.reference: EDM's statistics (edm) are Inception statistics of CIFAR-10; use features: "
                      "inception with dataset cifar10, or reference: dataset")
            if not fid.get("edm_reference_sha256"):
                _fail("fid.edm_reference_sha256 is required with fid.reference: edm: the SHA-256 of EDM's "
                      "cifar10-32x32.npz (`sha256sum` of a copy you trust)")

    # --- the dataset -----------------------------------------------------------------------------

    def dataset_channels(self) -> int:
        d = self.config["dataset"]
        return d["channels"] if d["name"] == "edm" else BUILTIN_DATASETS[d["name"]][0]

    def dataset_classes(self) -> int | None:
        """Number of classes when known from the config (None: unlabelled, or not stated)."""
        d = self.config["dataset"]
        if d["name"] == "edm":
            return d.get("classes") if d.get("labels") else None
        return BUILTIN_DATASETS[d["name"]][1]

    def check_dataset(self) -> None:
        """The dataset section against the models, FID and DG."""
        from ..data import class_pool_warning

        d = self.config["dataset"]
        name = d["name"]
        if name == "edm":
            for key in ("path", "channels", "labels"):
                if key not in d:
                    _fail(f"dataset.{key} is required for name: edm")
            path = d["path"]
            if not os.path.exists(path):
                _fail(f"dataset.path: {path} does not exist")
            if not (os.path.isdir(path) or path.lower().endswith(".zip")):
                _fail(f"dataset.path: {path} is neither a folder nor a .zip archive (EDM's dataset format)")
            if "classes" in d and not d["labels"]:
                _fail("dataset.classes is set, but dataset.labels is false")
        else:
            for key in EDM_ONLY_KEYS:
                if key in d:
                    _fail(f"dataset.{key} is only for name: edm (name is {name})")
            channels = BUILTIN_DATASETS[name][0]
            if d.get("channels", channels) != channels:
                _fail(f"dataset.channels: {name} has {channels}-channel images, not {d['channels']}")
            if name == "cifar10" and d["resolution"] != 32:
                _fail(f"dataset.resolution: CIFAR-10 is 32x32, not {d['resolution']}")
        labelled = name != "edm" or d["labels"]
        classes = self.dataset_classes()
        for m in self.config["models"]:
            if m["source"] != "train" or not m["cond"]:
                continue
            if not labelled:
                _fail(f"models[{m['name']}]: a conditional model needs class labels, but dataset.labels is false")
            if m["aot"] and classes:
                warning = class_pool_warning(self.train_settings(m["name"])["pool_size"], classes,
                                             f"models[{m['name']}]: ")
                if warning:
                    self.warnings.append(f"config warning: {warning}")
        dg = self.config["dg"]
        if dg["enabled"] and dg.get("feature_extractor", "scratch") != "scratch":
            if (name, d["resolution"], self.dataset_channels()) != ("cifar10", 32, 3):
                _fail("dg.feature_extractor: DG's ADM classifier (32x32_classifier.pt) is made for CIFAR-10 32x32 "
                      f"RGB, not dataset {name} ({d['resolution']}x{d['resolution']}, {self.dataset_channels()} "
                      "channel(s)); set dg.feature_extractor: scratch or dg.enabled: false")

    # --- Discriminator Guidance ------------------------------------------------------------------

    def dg_is_baseline(self, model: str, mode: str) -> bool:
        """Whether the discriminator of (model, mode) is an EDM baseline's: a model without AOT,
        trained with independent noise (mode plain), the "EDM+DG" rows of Table 3."""
        return not self.models[model]["aot"] and mode == "plain"

    def dg_recipe(self, model: str, mode: str) -> dict:
        """The DG settings of one discriminator (mode plain or aot) and its guided sampler: the
        part's recipe dg.<part> (the paper's, for every discriminator of an EDM-AOT model, with and
        without AOT, so that the two differ only in the pairing), or for an EDM baseline's
        (dg_is_baseline) DG's training recipe dg.baseline.<part> with the part's guided sampler and
        no pool. `recipe` names the keys it came from."""
        dg, part = self.config["dg"], self.part_of(model)
        if self.dg_is_baseline(model, mode):
            return {**dg[part], **dg["baseline"][part], "pool_size": None, "recipe": f"dg.baseline.{part}"}
        return {**dg[part], "recipe": f"dg.{part}"}

    def dg_classifier(self) -> str | None:
        """DG's ADM classifier file, or None when the feature extractor is trained from scratch."""
        dg = self.config["dg"]
        if dg["enabled"] and dg["feature_extractor"] != "scratch":
            return dg["feature_extractor"]
        return None

    def check_dg(self) -> None:
        dg, fid = self.config["dg"], self.config["fid"]
        if not dg["enabled"]:
            return
        for key in ("feature_extractor", "collect_images"):
            if key not in dg:
                _fail(f"dg.{key} is required when dg.enabled is true")
        if dg["collect_images"] > fid["num_images"]:
            _fail(f"dg.collect_images {dg['collect_images']} exceeds fid.num_images {fid['num_images']}: the "
                  "discriminator is trained on the model's first sample set, never on a regenerated one")
        parts = {self.part_of(m) for m in self.models}
        for part in PARTS:
            recipe = dg[part]
            if recipe["time_min"] >= recipe["time_max"]:
                _fail(f"dg.{part}.time_min {recipe['time_min']} must be below dg.{part}.time_max {recipe['time_max']}")
            if part in parts:
                _raise_as_config(check_pool_batch, recipe["pool_size"], recipe["batch"],
                                 f"dg.{part}.pool_size", f"dg.{part}.batch")
        for model, modes in dg["discriminators"].items():
            if model not in self.models:
                _fail(f"dg.discriminators: unknown model {model!r} (models: {', '.join(self.models)})")
            for mode, path in modes.items():
                if not path:
                    _fail(f"dg.discriminators.{model}.{mode}: empty path")
                if os.path.basename(path) in DG_RELEASED_HEADS and not self.dg_classifier():
                    _fail(f"dg.discriminators.{model}.{mode}: DG's head {path} needs DG's ADM classifier: set "
                          "dg.feature_extractor to 32x32_classifier.pt, not scratch")

    # --- the tables' published baselines ---------------------------------------------------------

    def published_model(self, part: str) -> str | None:
        """The part's EDM published network (a model with source edm-pickle), or None."""
        return self.config["tables"][part].get("edm_published")

    @property
    def published_grids(self) -> bool:
        """tables.published_grids: the published networks over the grids of Tables 4 and 5 too."""
        return bool(self.config["tables"].get("published_grids", True))

    def published_table4_rows(self) -> list[dict]:
        """The published networks' extra rows of Table 4 (tables.published_grids): for each part
        with `edm_published`, one row of it at each step count of the part's retrained EDM's rows
        (in their order), with every rho of sampling.table4; rows that sampling.table4.rows has
        already are not repeated."""
        if not self.published_grids:
            return []
        rows = self.config["sampling"]["table4"]["rows"]
        have = {(r["model"], r["num_steps"]) for r in rows}
        out = []
        for part in self.parts:
            published, edm = self.published_model(part), self.config["tables"][part]["edm"]
            for r in rows:
                if published and r["model"] == edm and (published, r["num_steps"]) not in have:
                    have.add((published, r["num_steps"]))
                    out.append({"model": published, "num_steps": r["num_steps"]})
        return out

    def table4_rows(self) -> list[dict]:
        """Table 4's rows ({model, num_steps}, each sampled at every rho of sampling.table4):
        sampling.table4.rows and the published networks' (published_table4_rows)."""
        return [*self.config["sampling"]["table4"]["rows"], *self.published_table4_rows()]

    def published_table5_models(self) -> list[str]:
        """The published networks of Table 5's grid (tables.published_grids): each part's
        `edm_published` whose retrained EDM (tables.<part>.edm) is among sampling.table5.models
        and which is not there already, sampled at every NFE x rho of sampling.table5."""
        if not self.published_grids:
            return []
        models = self.config["sampling"]["table5"]["models"]
        out = []
        for part in self.parts:
            published = self.published_model(part)
            if published and self.config["tables"][part]["edm"] in models and published not in models + out:
                out.append(published)
        return out

    def table5_models(self) -> list[str]:
        """Table 5's models: sampling.table5.models and the published networks'
        (published_table5_models)."""
        return [*self.config["sampling"]["table5"]["models"], *self.published_table5_models()]

    def check_published(self) -> None:
        """tables.<part>.edm_published names an imported EDM network of the part."""
        for part in self.parts:
            name = self.published_model(part)
            if name is None:
                continue
            if name not in self.models:
                _fail(f"tables.{part}.edm_published: unknown model {name!r} (models: {', '.join(self.models)})")
            m = self.models[name]
            if m["source"] != "edm-pickle" or m["aot"] or m["cond"] != (part == "cond"):
                _fail(f"tables.{part}.edm_published: model {name!r} must be EDM's published network (source "
                      f"edm-pickle, aot false, cond {str(part == 'cond').lower()}); it has source {m['source']}, "
                      f"aot={m['aot']}, cond={m['cond']}")
            if name == self.config["tables"][part]["edm"]:
                _fail(f"tables.{part}.edm_published: {name!r} is also tables.{part}.edm, the EDM retrained here; "
                      "name two different models")

    # --- the pool-size study (Table 6) -----------------------------------------------------------

    def _study_settings(self, part: str, n: int | None) -> dict:
        """Training settings of the study model of `part` with pool size n (None: without AOT)."""
        study = self.config["pool_study"]
        b = study["batch_gpu"]
        base = self.train_settings(self.config["tables"][part]["aot"])
        t = copy.deepcopy({**base, **study["train"], "batch_gpu": b})
        t["pool_size"] = n if n is not None else t["pool_size"]
        if n is None and (t["pool_size"] % b or t["pool_size"] < b):
            t["pool_size"] = b
        return t

    def _existing_model(self, cond: bool, aot: bool, settings: dict) -> str | None:
        """The trained model of `models` with these settings (the tables' models first), or None."""
        def comparable(s):
            return {k: v for k, v in s.items() if aot or k not in NO_AOT_IGNORED}

        preferred = [self.config["tables"][p][r] for p in self.parts for r in ("aot", "edm")]
        names = preferred + [m["name"] for m in self.config["models"]]
        for name in dict.fromkeys(names):
            m = self.models[name]
            if m["source"] != "train" or m["cond"] != cond or m["aot"] != aot:
                continue
            if comparable(self.train_settings(name)) == comparable(settings):
                return name
        return None

    def derive_pool_study(self) -> list[dict]:
        """[{part, N (None: without AOT), model, new, train, problem}] in table order. A study model
        that cannot be trained with the run's training resources carries the reason in `problem`
        (refused when the study is asked for, `pool_study_problems()`)."""
        study = self.config["pool_study"]
        entries = []
        classes = self.dataset_classes() or 0
        for part in [p for p in study["parts"] if p in self.parts]:
            cond = part == "cond"
            for n in [None] + sorted(study["pool_sizes"]):
                if cond and n is not None and n < study["min_per_class"] * classes:
                    continue
                aot = n is not None
                t = self._study_settings(part, n)
                name = self._existing_model(cond, aot, t)
                new = name is None
                problem = None
                if new:
                    name = f"pool-{part}-n{n}" if aot else f"pool-{part}-noaot"
                    if name in self.models:
                        _fail(f"models: {name!r} is the name of a pool_study model, but its settings differ from "
                              "the study's; rename it")
                    problem = self._study_problem(name, t)
                entries.append({"part": part, "N": n, "model": name, "new": new, "train": t, "problem": problem})
        return entries

    def _study_problem(self, name: str, t: dict) -> str | None:
        from ..errors import UserError

        where = f"pool_study ({name})"
        b = self.config["pool_study"]["batch_gpu"]
        try:
            check_pool_batch(t["pool_size"], b, f"{where}: pool size", "pool_study.batch_gpu")
            gpus, nodes = train_processes(self.train_resources())
            check_global_batch(t["batch"], b, gpus, nodes, where=where, batch_gpu_name="pool_study.batch_gpu")
        except UserError as exc:
            return f"config error: {exc}"
        return None

    def pool_study_problems(self) -> list[str]:
        return [e["problem"] for e in self.pool_study_entries if e["problem"]]

    # --- training replicates (the significance study) ------------------------------------------

    def replicate_name(self, base: str, r: int) -> str:
        """Replicate r of a model: the model itself for r = 0, else `<model>-rep<r>`."""
        return base if r == 0 else f"{base}-rep{r}"

    def derive_replicates(self) -> list[dict]:
        """[{study, part, arm, base, replicate, model, new, train, problem}]: the training runs of the
        significance study (`significance`: the EDM / EDM-AOT pair of each part of `tables`) and of
        the pool-size study when `pool_study.replicates` > 1 (every study model). Replicate r of a
        model trains with its settings and seed + r (r = 0 is the model itself), so EDM and EDM-AOT
        of one replicate share a seed when their models do: a paired design. A model that cannot be
        replicated (an imported network) carries the reason in `problem`, refused when the study is
        asked for."""
        sig = self.config["significance"]
        wanted: list[tuple[str, str, str, str, int]] = []  # (study, part, arm, base, K)
        for part in [p for p in sig["parts"] if p in self.parts]:
            for arm in ("edm", "aot"):
                wanted.append(("significance", part, arm, self.config["tables"][part][arm], sig["replicates"]))
        k_pool = self.config["pool_study"]["replicates"]
        if k_pool > 1:
            for e in self.pool_study_entries:
                arm = "edm" if e["N"] is None else f"n{e['N']}"
                wanted.append(("pool_study", e["part"], arm, e["model"], k_pool))
        entries = []
        for study, part, arm, base, k in wanted:
            m = self.models[base]
            problem = None
            if m["source"] != "train":
                problem = (f"config error: {study}: model {base!r} is imported (source {m['source']}); replicates "
                           f"are training runs with other seeds, so tables.{part}.{arm} must be a trained model")
            seed = self.train_settings(base)["seed"] if m["source"] == "train" else None
            for r in range(k):
                name = self.replicate_name(base, r)
                t = None
                if r and not problem:
                    t = copy.deepcopy({**m.get("train", {}), "seed": seed + r})
                    if name in self.models and self.models[name] is not m:
                        given = self.models[name]
                        same = (given["source"] == "train" and given["cond"] == m["cond"]
                                and given["aot"] == m["aot"]
                                and self.train_settings(name) == {**self.train_settings(base), "seed": seed + r})
                        if not same:
                            _fail(f"models: {name!r} is the name of replicate {r} of {base!r}, but its settings "
                                  f"differ from {base!r}'s with seed {seed + r}; rename it")
                entries.append({"study": study, "part": part, "arm": arm, "base": base, "replicate": r,
                                "model": name, "new": bool(r) and not problem and name not in self.models, "train": t,
                                "problem": problem})
        self._check_paired_seeds(entries)
        return entries

    def _check_paired_seeds(self, entries: list[dict]) -> None:
        """A warning when the two arms of a significance part do not share their seed (then replicate
        r is no longer one seed for both: the differences are unpaired in their training noise)."""
        for part in self.config["significance"]["parts"]:
            bases = {e["arm"]: e["base"] for e in entries if e["study"] == "significance" and e["part"] == part}
            seeds = {self.train_settings(b)["seed"] for b in bases.values() if self.models[b]["source"] == "train"}
            if len(seeds) > 1:
                self.warnings.append(
                    f"config warning: significance: the {part} models {' and '.join(bases.values())} have different "
                    "training seeds, so their replicates are not paired by seed (docs/significance.md)")

    def replicates(self, study: str, part: str, arm: str) -> list[str]:
        """The model names of one arm's replicates, in replicate order."""
        return [e["model"] for e in self.replicate_entries
                if e["study"] == study and e["part"] == part and e["arm"] == arm]

    def replicate_problems(self, study: str) -> list[str]:
        return list(dict.fromkeys(e["problem"] for e in self.replicate_entries
                                  if e["study"] == study and e["problem"]))


# Options of `aot train` that the train rule sets from the job itself, besides the training settings
# (whose keys are option names too): extra_args may not give them again.
RULE_TRAIN_OPTIONS = ("outdir", "data", "model_name", "cond", "aot", "device", "slurm_margin", "bf16", "tf32",
                      "channels_last", "compile")
# The characters an argument of extra_args may hold: those that need no quoting in a shell
# (shlex.quote leaves them alone), so that the words the shell sees are the arguments checked here.
_SAFE_ARGUMENT = re.compile(r"[\w@%+=:,./-]+", re.ASCII)


def extra_train_args(value: Any, where: str = "training.extra_args", set_by_config: set | None = None) -> list[str]:
    """`extra_args` (a string of shell words separated by spaces, or a list of arguments) as a list
    of arguments of `python -m aot train`, validated against that command's own parser: known
    options with valid values, none that the config or the train rule already sets (`set_by_config`:
    the settings' keys; RULE_TRAIN_OPTIONS), each argument made of characters that need no shell
    quoting (letters, digits, and @%+=:,./-_), no line break, so that the job's command line runs
    exactly these arguments and nothing else, quoted (shlex.join) or pasted as they are."""
    import shlex

    if value is None or value == "":
        return []
    if isinstance(value, str):
        if re.search(r"[^\S ]", value):  # a line break would end the command in the job's shell
            _fail(f"{where}: {value!r} holds a line break or tab; separate arguments with spaces")
        try:
            args = shlex.split(value)
        except ValueError as exc:
            _fail(f"{where}: {value!r} is not a list of arguments ({exc})")
    elif isinstance(value, list) and all(isinstance(a, str) for a in value):
        args = list(value)
    else:
        _fail(f"{where}: {value!r} is neither a string of arguments nor a list of them")
    for arg in args:
        if not _SAFE_ARGUMENT.fullmatch(arg):
            _fail(f"{where}: the argument {arg!r} holds a character other than letters, digits and @%+=:,./-_ "
                  "(extra_args are options of `python -m aot train`, never shell code)")
        if arg == "-h" or (len(arg) > 2 and "--help".startswith(arg.split("=")[0])):
            _fail(f"{where}: {arg} is not an option a training job can take")
    base = ["train", "--outdir", "OUTDIR", "--data", "DATA"]
    parser = _train_parser()
    from ..errors import UserError

    try:
        given = vars(parser.parse_args(base + args))
    except (UserError, SystemExit) as exc:
        _fail(f"{where}: {' '.join(args)!r} is not a valid list of options of `python -m aot train` ({exc})")
    plain = vars(parser.parse_args(base))
    changed = sorted(k for k, v in given.items() if k not in plain or plain[k] != v)
    taken = [k for k in changed if k in RULE_TRAIN_OPTIONS or k in (set_by_config or ())]
    if taken:
        options = ", ".join("--" + k.replace("_", "-") for k in taken)
        _fail(f"{where}: {options} is set by the config or the train rule already; set it there, not in extra_args")
    return args


def _train_parser():
    """A parser of `python -m aot train ...` alone (aot.cli.train), whose errors are UserErrors."""
    from ..cli.options import ArgParser
    from ..cli.train import add_parser

    parser = ArgParser(prog="python -m aot", add_help=False)
    add_parser(parser.add_subparsers(dest="command", required=True, parser_class=ArgParser))
    return parser


def load_run_settings(config: dict, workflow_dir: str | Path, validate: bool = True) -> RunSettings:
    """RunSettings of a config given to the workflow (`workflow_dir`: the repository, where
    workflow/schemas/config.schema.yaml and config/config.yaml are)."""
    root = Path(workflow_dir)
    return RunSettings.load(config, schema=root / "workflow" / "schemas" / "config.schema.yaml",
                            paper=root / "config" / "config.yaml", validate=validate)


def config_value(config: dict, path: str) -> Any:
    """config['a']['b'] for 'a.b' (a helper for messages and tests)."""
    node = config
    for key in path.split("."):
        node = node[key]
    return node
