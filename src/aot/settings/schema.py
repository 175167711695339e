"""Loading, layering and validating a run's configuration against its JSON schema
(workflow/schemas/config.schema.yaml, the one place defaults live)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from ..errors import UserError


class ConfigError(UserError):
    """A configuration that cannot run: one or more lines, each `config error: <key>: <problem>`."""

    def __init__(self, *lines: str) -> None:
        self.lines = [line if line.startswith("config error: ") else f"config error: {line}" for line in lines]
        super().__init__("\n".join(self.lines))


def load_yaml(path: str | Path) -> Any:
    import yaml

    with open(path) as fh:
        return yaml.safe_load(fh)


def merge(base: dict, update: dict) -> dict:
    """`update` merged into `base` in place, key by key: mappings merge, lists and values replace
    (as Snakemake's update_config)."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


# the keys a site file (config/site.yaml) may set: the cluster, not the experiment
SITE_FILE_KEYS = ("site", "resources", "walltime")


def read_site_file(path: str | Path | None) -> dict | None:
    """The site file's settings (None when there is none): a mapping of SITE_FILE_KEYS only."""
    if path is None or not Path(path).is_file():
        return None
    doc = load_yaml(path)
    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a site file is a mapping of {', '.join(SITE_FILE_KEYS)}")
    other = sorted(set(doc) - set(SITE_FILE_KEYS))
    if other:
        raise ConfigError(f"{path}: {', '.join(other)}: a site file sets only {', '.join(SITE_FILE_KEYS)} "
                          "(the experiment belongs in the run's config)")
    return doc


def layer_partial(config: dict, schema: dict, paper: str | Path, site: dict | None = None) -> list[str]:
    """A config that lacks some of the schema's required top-level keys is a partial (site) file:
    it is merged, in place, onto the paper's config (`paper`, config/config.yaml); a complete config
    stands alone. A site file's settings (`site`, read_site_file) come between: the config given on
    the command line wins over them. Returns the top-level keys the given config set when it was
    layered onto the paper's (else [])."""
    partial = any(key not in config for key in schema["required"])
    if not partial and not site:
        return []
    layered = load_yaml(paper) if partial else {}
    if site:
        merge(layered, site)
    given = sorted(config)
    merge(layered, dict(config))
    config.clear()
    config.update(layered)
    return given if partial else []


def key_path(path) -> str:
    """['models', 0, 'name'] -> 'models[0].name'."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def schema_problems(error):
    """(key path, problem) pairs of one jsonschema error, naming the key itself where it can."""
    where = list(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = error.schema.get("properties", {})
        for key in error.instance:
            if key not in known:
                allowed = ", ".join(known) or "none"
                yield key_path(where + [key]), f"unknown key (known here: {allowed})"
        return
    if error.validator == "required" and isinstance(error.instance, dict):
        for key in error.validator_value:
            if key not in error.instance:
                yield key_path(where + [key]), "missing (required)"
        return
    yield key_path(where) or "(top level)", error.message


def check_schema(config: dict, schema: dict) -> None:
    """Every schema violation as one line, `config error: <key.path>: <problem>`, all at once."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    lines = sorted({f"config error: {where}: {problem}"
                    for error in validator.iter_errors(config)
                    for where, problem in schema_problems(error)})
    if lines:
        raise ConfigError(*lines)


def set_defaults(config: dict, schema: dict) -> None:
    """Fill in the schema's defaults (jsonschema's recipe, as in snakemake.utils.validate): a missing
    key with a default gets a copy of it, nested too."""
    import jsonschema

    draft = jsonschema.Draft202012Validator

    def properties(validator, props, instance, subschema):
        if isinstance(instance, dict):
            for key, sub in props.items():
                if "default" in sub:
                    instance.setdefault(key, copy.deepcopy(sub["default"]))
        yield from draft.VALIDATORS["properties"](validator, props, instance, subschema)

    filler = jsonschema.validators.extend(draft, {"properties": properties})
    for _ in filler(schema).iter_errors(config):
        pass
