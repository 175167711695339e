"""Checkpoints: our network files (`network_file`), and safe import of official EDM snapshot pickles
(`edm_pickle`).

Our network file is a `torch.save` dict that `torch.load(..., weights_only=True)` reads without
running any pickled code: the network is rebuilt from its class name and constructor arguments.

NVlabs/edm snapshots (`network-snapshot-*.pkl`, the published `edm-cifar10-32x32-*.pkl`) are pickles
of `dict(ema=..., loss_fn=..., augment_pipe=..., dataset_kwargs=...)` whose objects carry the Python
source of their module, normally executed by `pickle.load`. `load_edm_pickle` never does that: the
file's opcodes are checked against a short allow-list of globals before unpickling starts, then
`aot.pickles.InertUnpickler` maps the allowed ones to inert stand-ins (nothing runs, nothing in the
process changes, tensors must fit their storages), and the network is rebuilt from its recorded
class name, constructor arguments and tensors with `aot.networks`. `.pt` files (ours, DG's) are read
with `torch.load(weights_only=True)` and checked (`load_torch_file`, `checked_state_dict`).

Command line (aot.cli.checkpoints):
    python -m aot checkpoints import-edm URL_OR_PATH OUT.pt [--sha256 HEX] [--model-name NAME]
    python -m aot checkpoints export-edm NETWORK.pt OUT.pkl
    python -m aot checkpoints info PATH
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..files import download, sha256_file
from .edm_pickle import (
    EDM_PRETRAINED,
    PUBLISHED_NETWORKS,
    ContainerRecord,
    PersistentRecord,
    UnsafeCheckpointError,
    edm_record_to_network,
    load_edm_pickle,
    missing_pickle_message,
    read_edm_pickle_raw,
    save_edm_pickle,
    scan_pickle_globals,
)
from .network_file import (
    NETWORK_FORMAT,
    build_with_weights,
    checked_dict,
    checked_kwargs,
    checked_state_dict,
    is_network_file,
    load_network,
    load_torch_file,
    network_record,
    read_network_file,
    save_network,
)

__all__ = [
    "EDM_PRETRAINED", "NETWORK_FORMAT", "PUBLISHED_NETWORKS", "ContainerRecord", "PersistentRecord",
    "UnsafeCheckpointError", "build_with_weights", "checked_dict", "checked_kwargs", "checked_state_dict",
    "edm_network_meta", "edm_record_to_network", "export_edm", "import_edm", "is_network_file", "load_any_network",
    "load_edm_pickle", "load_network", "load_torch_file", "missing_pickle_message", "network_info", "network_record",
    "read_edm_pickle_raw", "read_network_file", "save_edm_pickle", "save_network", "scan_pickle_globals",
]


def edm_network_meta(net: torch.nn.Module, source: str, model: str | None = None, **extra: Any) -> dict:
    """The checkpoint meta of an imported EDM network (see SPEC: network checkpoint meta)."""
    return {"model": model, "aot": False, "cond": bool(getattr(net, "label_dim", 0)), "kimg": None,
            "source": f"edm-pickle:{source}", **extra}


def load_any_network(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Load our network file (.pt) or an EDM snapshot pickle (.pkl), never running code from it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"network checkpoint {path} does not exist")
    if is_network_file(path):
        return load_network(path, device)
    with path.open("rb") as f:
        head = f.read(1)
    if head != b"\x80" and path.suffix != ".pkl":
        raise UserError(f"network checkpoint {path} is neither an aot network file nor an EDM pickle")
    net = load_edm_pickle(path)["ema"]
    meta = edm_network_meta(net, str(path), path.stem)
    meta.update(format="edm-pickle", class_name=type(net).__name__, init_kwargs=net.init_kwargs)
    return net.to(device), meta


# ------------------------------------------------------------------------------------------------
# Import and export (`python -m aot checkpoints ...`).


def import_edm(source: str, out: str | os.PathLike, sha256: str | None = None, model_name: str | None = None,
               aot: bool = False) -> dict:
    """Fetch (URL) or read (path) an EDM snapshot pickle, verify it and write our network file.

    A URL is downloaded next to `out` (never to a shared temporary folder) and removed afterwards;
    with `sha256` the pickle must have that SHA-256 before anything in it is read. Returns the meta
    written, which records the pickle's SHA-256.
    """
    if sha256 is not None:
        if not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
            raise UserError(f"--sha256 must be 64 hexadecimal digits, got {sha256!r}")
        sha256 = sha256.lower()
    out = Path(out)
    is_url = re.match(r"^(https?|ftp)://", source) is not None
    name = model_name or Path(source.rstrip("/").split("?")[0]).stem
    if is_url:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".import-edm.", dir=out.parent) as tmp:
            local = Path(tmp) / "snapshot.pkl"
            digest = download(source, local, sha256=sha256)
            return _convert(local, out, source, name, digest, aot)
    local = Path(source)
    if not local.is_file():
        raise UserError(missing_pickle_message(local))
    digest = sha256_file(local)
    if sha256 and digest != sha256:
        raise UserError(f"checksum mismatch for {local}: expected sha256 {sha256}, got {digest}")
    return _convert(local, out, source, name, digest, aot)


def _convert(local: Path, out: Path, source: str, name: str, digest: str, aot: bool = False) -> dict:
    net = load_edm_pickle(local)["ema"]
    meta = edm_network_meta(net, source, name, sha256=digest, aot=bool(aot))
    save_network(out, net, **meta)
    return meta


def export_edm(network: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Our network file -> NVlabs/edm snapshot pickle; returns what was written."""
    net, meta = load_network(network)
    save_edm_pickle(out, net)
    return {"out": str(out), "class_name": type(net).__name__, "model": meta.get("model")}


def network_info(path: str | os.PathLike) -> dict:
    """Class, size, sampler range, image shape and meta of a network file or EDM pickle."""
    net, meta = load_any_network(path)
    n_params = sum(p.numel() for p in net.parameters())
    return {"path": str(path), "class_name": type(net).__name__, "parameters": n_params,
            "sigma_min": float(net.sigma_min), "sigma_max": float(net.sigma_max),
            "img_resolution": net.img_resolution, "img_channels": net.img_channels, "label_dim": net.label_dim,
            "meta": {k: v for k, v in meta.items() if k != "init_kwargs"}, "init_kwargs": net.init_kwargs}
