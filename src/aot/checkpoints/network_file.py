"""Our network file: a `torch.save` dict that `torch.load(..., weights_only=True)` reads without running
any pickled code; the network is rebuilt from its class name and constructor arguments. Also the
checks for `.pt` files we did not necessarily write (ours, DG's classifier and discriminators), and
`build_with_weights`, which every loader (this one, EDM pickles, DG's networks) rebuilds with."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from .. import pickles
from ..errors import UserError
from ..files import save_torch_atomic
from ..pickles import brief, byte_limit, describe_failure, one_line

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
    save_torch_atomic(payload, path)


def read_network_file(path: str | os.PathLike) -> dict:
    """Read and validate one of our network files; every failure is a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"network checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise UserError(f"network checkpoint {path} is not a torch checkpoint (truncated or another format)")
    payload = load_torch_file(path, "network checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != NETWORK_FORMAT:
        raise UserError(f"network checkpoint {path} is not an aot network file (format {NETWORK_FORMAT!r} expected)")
    what = f"network checkpoint {path}"
    checked_dict(payload, what, ("class_name", "init_kwargs", "state_dict"))
    if type(payload["class_name"]) is not str:
        raise UserError(f"{what}: class_name is a {type(payload['class_name']).__name__}, not a name")
    checked_kwargs(payload["init_kwargs"], f"{what}: init_kwargs")
    checked_state_dict(payload["state_dict"], what)
    if payload.get("meta") is not None:
        checked_dict(payload["meta"], f"{what}: meta")
    return payload


def load_network(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the network stored by `save_network`; returns (net in eval mode, meta)."""
    payload = read_network_file(path)
    net = build_with_weights(payload["class_name"], payload["init_kwargs"], payload["state_dict"],
                             f"network checkpoint {path}")
    meta = dict(payload.get("meta") or {})
    meta.setdefault("class_name", payload["class_name"])
    meta.setdefault("init_kwargs", payload["init_kwargs"])
    return net.eval().requires_grad_(False).to(device), meta


# ------------------------------------------------------------------------------------------------
# Checks for `.pt` files we did not necessarily write (ours, DG's classifier and discriminators).


def load_torch_file(path: str | os.PathLike, what: str, max_bytes: int | None = None) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU; a missing, damaged or oversized file is a
    one-line UserError naming `what` and the path. A zip archive may not unpack to more than
    `max_bytes` (default 4 GiB or $AOT_MAX_TENSOR_BYTES)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    limit = byte_limit(max_bytes)
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                total = sum(info.file_size for info in archive.infolist())
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise UserError(f"{what} {path} cannot be read (truncated or not a torch file): "
                            f"{describe_failure(exc)}") from None
        if total > limit:
            raise UserError(f"{what} {path} unpacks to {total} bytes, more than the limit of {limit} "
                            f"(max_bytes, or ${pickles.MAX_BYTES_ENV})")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged archives
        raise UserError(f"{what} {path} cannot be read (truncated or not a torch file): "
                        f"{describe_failure(exc)}") from None
    check_tensor_bytes(obj, f"{what} {path}", limit)
    return obj


def check_tensor_bytes(obj: Any, what: str, limit: int) -> None:
    """The tensors in `obj` (as torch.load returns them: views of the file's storages, nothing
    allocated yet) counted at their own shapes, after views and broadcasting (a zero stride shows
    one stored value as many), within `limit` bytes; else a UserError before anything touches them."""
    total, todo, seen = 0, [obj], set()
    while todo:
        item = todo.pop()
        if isinstance(item, torch.Tensor):
            total += item.numel() * item.element_size()
            if total > limit:
                raise UserError(f"{what}: its tensors hold more than {limit} bytes at their shapes (a view may "
                                f"repeat stored values; raise max_bytes or ${pickles.MAX_BYTES_ENV} if the file "
                                "is trusted and this large)")
        elif isinstance(item, (dict, list, tuple, set)) and id(item) not in seen:
            seen.add(id(item))
            todo.extend(item.values() if isinstance(item, dict) else item)


def checked_dict(obj: Any, what: str, keys: tuple[str, ...] = ()) -> dict:
    """`obj` if it is a dict holding every one of `keys`; else a one-line UserError."""
    if not isinstance(obj, dict):
        raise UserError(f"{what} holds a {type(obj).__name__} where a dict was expected")
    missing = [repr(k) for k in keys if k not in obj]
    if missing:
        raise UserError(f"{what} has no {', '.join(missing)} entry")
    return obj


def checked_kwargs(obj: Any, what: str) -> dict:
    """Constructor arguments: a dict with names for keys."""
    checked_dict(obj, what)
    bad = [k for k in obj if not isinstance(k, str)]
    if bad:
        raise UserError(f"{what} has a key {brief(bad[0])} that is not a name")
    return obj


def checked_state_dict(obj: Any, what: str) -> dict[str, torch.Tensor]:
    """A state dict: names to tensors, the floating-point ones finite."""
    if not isinstance(obj, dict):
        raise UserError(f"{what}: the state dict is a {type(obj).__name__}, not a dict of tensors")
    for key, value in obj.items():
        if not isinstance(key, str):
            raise UserError(f"{what}: the state dict has a key {brief(key)} that is not a name")
        if not isinstance(value, torch.Tensor):
            raise UserError(one_line(f"{what}: {key} in the state dict is not a tensor ({type(value).__name__})"))
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise UserError(one_line(f"{what} has non-finite values in {key}"))
    return obj


def build_with_weights(class_name: str, init_kwargs: dict, tensors: dict, what: str,
                       classes: dict | None = None, build: Any = None) -> torch.nn.Module:
    """`aot.networks.build_network(class_name, init_kwargs)` loaded with `tensors` (checked tensors);
    `build(init_kwargs)` builds it instead when given (another family of networks, e.g. DG's).

    The network is first built on the meta device (no memory) and its state dict compared with the
    file's tensors, so constructor arguments that do not fit the weights (or ask for a huge network)
    are refused before anything is allocated. `classes` (module path -> class name) must agree too.
    """
    if build is None:
        from ..networks import build_network

        build = lambda kwargs: build_network(class_name, kwargs)  # noqa: E731
    try:
        with torch.device("meta"):
            skeleton = build(init_kwargs)
    except Exception as exc:  # any constructor failure: wrong names, types or values
        raise UserError(f"{what}: cannot rebuild {class_name} from its constructor arguments: "
                        f"{describe_failure(exc)}") from None
    expected = skeleton.state_dict()
    problems = [f"missing {k}" for k in expected if k not in tensors]
    problems += [f"unexpected {k}" for k in tensors if k not in expected]
    problems += [f"{k} is {list(tensors[k].shape)} in the file, {list(v.shape)} here"
                 for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise UserError(one_line(f"{what}: weights do not match {class_name}({brief(init_kwargs)}): "
                                 f"{'; '.join(problems[:3])}{more}"))
    for name, module in skeleton.named_modules():
        stored = (classes or {}).get(name)
        if stored is not None and stored != type(module).__name__:
            raise UserError(one_line(f"{what}: module {name or '<root>'} is a {stored} in the file but a "
                                     f"{type(module).__name__} here"))
    try:
        net = build(init_kwargs)
        net.load_state_dict(tensors, strict=True)
    except Exception as exc:
        raise UserError(f"{what}: weights do not match {class_name}({brief(init_kwargs)}): "
                        f"{describe_failure(exc)}") from None
    return net


def is_network_file(path: str | os.PathLike) -> bool:
    """True for our zip-based network files, False for anything else (e.g. an EDM pickle)."""
    return zipfile.is_zipfile(path)
