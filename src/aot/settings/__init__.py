"""One place that decides every setting of a run: loading and layering configs, the schema, every
check across keys (one function per rule of the paper, `rules`) and every derived value (`run`).
The workflow builds its `RunSettings` once at the top of common.smk; the command line and the
library call the same rule functions."""

from .rules import (
    BatchError,
    PoolSizeError,
    check_global_batch,
    check_heun_nfe,
    check_pool_batch,
    gpu_counts_for,
)
from .schema import ConfigError, check_schema, layer_partial, load_yaml, set_defaults

__all__ = ["BatchError", "ConfigError", "PoolSizeError", "RunSettings", "check_global_batch", "check_heun_nfe",
           "check_pool_batch", "check_schema", "gpu_counts_for", "layer_partial", "load_run_settings", "load_yaml",
           "set_defaults"]


def __getattr__(name):
    # RunSettings pulls in the dataset module (class-pool warnings); the rules stay light for the library
    if name in ("RunSettings", "load_run_settings"):
        from . import run

        return getattr(run, name)
    raise AttributeError(name)
