"""Checkpoints: our network files, and safe import of official EDM snapshot pickles.

Our network file is a `torch.save` dict that `torch.load(..., weights_only=True)` reads without
running any pickled code: the network is rebuilt from its class name and constructor arguments.

NVlabs/edm snapshots (`network-snapshot-*.pkl`, the published `edm-cifar10-32x32-*.pkl`) are pickles
of `dict(ema=..., loss_fn=..., augment_pipe=..., dataset_kwargs=...)` whose objects carry the Python
source of their module, normally executed by `pickle.load`. `load_edm_pickle` never does that: the
file's opcodes are checked against a short allow-list of globals before unpickling starts, the
allowed ones are mapped to inert stand-ins, and the network is rebuilt from its recorded class name,
constructor arguments and tensors with `aot.networks`.

Command line:
    python -m aot.checkpoints import-edm URL_OR_PATH OUT.pt [--sha256 HEX] [--model-name NAME]
    python -m aot.checkpoints export-edm NETWORK.pt OUT.pkl
    python -m aot.checkpoints info PATH
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import json
import os
import pickle
import pickletools
import re
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cli.options import cli_main
from .errors import UserError
from .files import atomic_path
from .runtime import Progress

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


# ------------------------------------------------------------------------------------------------
# Safe reading of NVlabs/edm snapshot pickles.


class UnsafeCheckpointError(UserError):
    """The pickle refers to a global outside the allow-list; nothing from it was executed."""


class PersistentRecord:
    """Stand-in for an object saved by EDM's `torch_utils.persistence` (its source is never run)."""

    def __init__(self, meta: dict):
        self.type = meta.get("type")
        self.version = meta.get("version")
        self.class_name = meta.get("class_name")
        self.module_src_chars = len(meta.get("module_src") or "")
        state = meta.get("state")
        self.state = dict(state) if isinstance(state, dict) else {}

    @property
    def init_args(self) -> tuple:
        return tuple(self.state.get("_init_args") or ())

    @property
    def init_kwargs(self) -> dict:
        return dict(self.state.get("_init_kwargs") or {})

    def __repr__(self) -> str:
        return f"PersistentRecord({self.class_name!r})"


class ContainerRecord:
    """Stand-in for a torch container module (ModuleDict, ModuleList, Sequential) in a snapshot."""

    class_name = "Module"
    state: Any = None  # set by __setstate__ (unpickling creates the object without __init__)

    def __init__(self, *args: Any) -> None:
        self.state = {}

    def __setstate__(self, state: Any) -> None:
        self.state = dict(state) if isinstance(state, dict) else {}

    def __repr__(self) -> str:
        return f"ContainerRecord({self.class_name!r})"


def _container(name: str) -> type:
    return type(name + "Record", (ContainerRecord,), {"class_name": name})


class _EasyDict(dict):
    """Inert replacement for `dnnlib.util.EasyDict` (a dict with attribute access)."""

    def __setstate__(self, state: Any) -> None:  # EasyDict pickles as a plain dict subclass
        if isinstance(state, dict):
            self.update(state)


def _storage_from_bytes(data: bytes):
    """`torch.storage._load_from_bytes`: a legacy torch.save of one storage, read weights-only."""
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafeCheckpointError("storage record does not hold bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            storage = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise UnsafeCheckpointError(f"embedded tensor storage refused by torch's weights-only loader: "
                                        f"{str(exc).splitlines()[0]}") from None
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise UnsafeCheckpointError(f"embedded tensor storage holds {type(storage).__name__}, not a storage")
    return storage


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise UnsafeCheckpointError(f"tensor record refers to {type(storage).__name__}, not a storage")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dtype = storage.dtype if isinstance(storage, torch.storage.TypedStorage) else torch.uint8
        tensor = torch.empty([0], dtype=dtype)
        tensor.set_(storage if isinstance(storage, torch.UntypedStorage) else storage._untyped_storage,
                    int(storage_offset), tuple(int(n) for n in size), tuple(int(n) for n in stride))
    return tensor


def _rebuild_tensor_v1(storage, storage_offset, size, stride):
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if not isinstance(data, torch.Tensor):
        raise UnsafeCheckpointError("parameter record does not hold a tensor")
    return data


def _numpy_reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise UnsafeCheckpointError("numpy array record of a subclass")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype):
        raise UnsafeCheckpointError("numpy scalar record without a dtype")
    if dtype.hasobject:
        return data
    return np.frombuffer(bytes(data), dtype=dtype, count=1)[0]


def _set(items=()):
    return set(items)


def _frozenset(items=()):
    return frozenset(items)


_TORCH_DTYPES = {name for name in dir(torch) if isinstance(getattr(torch, name, None), torch.dtype)}

_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): PersistentRecord,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor_v1,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): _set,
    ("builtins", "frozenset"): _frozenset,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("torch.nn.modules.container", "ModuleDict"): _container("ModuleDict"),
    ("torch.nn.modules.container", "ModuleList"): _container("ModuleList"),
    ("torch.nn.modules.container", "Sequential"): _container("Sequential"),
}
_ALLOWED.update({("torch", name): getattr(torch, name) for name in _TORCH_DTYPES})

_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}
_MEMO_OPS = {"MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "FRAME"}
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}
_UNKNOWN = object()


def _allowed_global(module: str, name: str):
    target = _ALLOWED.get((module, name))
    if target is None:
        raise UnsafeCheckpointError(f"refusing to load: the pickle refers to the global {module}.{name}, "
                                    f"which is not on the allow-list (nothing from the file was run)")
    return target


def scan_pickle_globals(data: bytes, what: str = "pickle") -> list[tuple[str, str]]:
    """Every global a pickle refers to, read from its opcodes without executing anything.

    Raises UnsafeCheckpointError for a global outside the allow-list (or one whose name cannot be
    determined statically) and UserError for data that is not a complete pickle.
    """
    found: list[tuple[str, str]] = []
    memo: dict[int, Any] = {}
    last = [_UNKNOWN, _UNKNOWN]  # values pushed by the two most recent stack operations
    try:
        for op, arg, _pos in pickletools.genops(data):
            name = op.name
            if name in _MEMO_OPS:
                if name == "MEMOIZE":
                    memo[len(memo)] = last[-1]
                elif name != "FRAME":
                    memo[arg] = last[-1]
                continue
            if name in _STRING_OPS:
                value = arg
            elif name in _GET_OPS:
                value = memo.get(arg, _UNKNOWN)
            else:
                value = _UNKNOWN
            if name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                found.append((module, attr))
                _allowed_global(module, attr)
            elif name == "STACK_GLOBAL":
                module, attr = last
                if not (isinstance(module, str) and isinstance(attr, str)):
                    raise UnsafeCheckpointError("refusing to load: the pickle builds a global name at run time")
                found.append((module, attr))
                _allowed_global(module, attr)
            elif name in ("PERSID", "BINPERSID"):
                raise UnsafeCheckpointError("refusing to load: the pickle uses persistent ids")
            elif name in ("EXT1", "EXT2", "EXT4"):
                raise UnsafeCheckpointError("refusing to load: the pickle uses the copyreg extension registry")
            last = [last[-1], value]
    except UnsafeCheckpointError:
        raise
    except Exception as exc:  # pickletools raises ValueError for unknown opcodes and truncated data
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{what} is truncated or not a pickle ({detail})") from None
    return found


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # second line of defence after the opcode scan
        return _allowed_global(module, name)

    def persistent_load(self, pid):
        raise UnsafeCheckpointError("refusing to load: the pickle uses persistent ids")


def read_edm_pickle_raw(path: str | os.PathLike) -> Any:
    """Unpickle an EDM snapshot into inert records (PersistentRecord, ContainerRecord, tensors)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"EDM pickle {path} does not exist")
    data = path.read_bytes()
    if zipfile.is_zipfile(io.BytesIO(data)):
        raise UserError(f"{path} is a torch zip checkpoint, not an EDM pickle (load it with load_network)")
    if not data:
        raise UserError(f"EDM pickle {path} is empty")
    scan_pickle_globals(data, what=f"EDM pickle {path}")
    try:
        return _RestrictedUnpickler(io.BytesIO(data)).load()
    except UserError:
        raise
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"EDM pickle {path} cannot be read: {detail}") from None


def _plain(obj: Any) -> Any:
    """Records to plain dicts, numpy scalars to Python numbers; tensors stay tensors."""
    if isinstance(obj, PersistentRecord):
        state = {k: _plain(v) for k, v in obj.state.items() if k not in ("_init_args", "_init_kwargs")}
        return {"class_name": obj.class_name, "init_args": _plain(list(obj.init_args)),
                "init_kwargs": _plain(obj.init_kwargs), "state": state}
    if isinstance(obj, ContainerRecord):
        return {"class_name": obj.class_name, "state": {k: _plain(v) for k, v in (obj.state or {}).items()}}
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj) if not isinstance(obj, torch.Size) else obj
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _module_tensors(record: Any, prefix: str, tensors: dict, classes: dict) -> None:
    """Walk a module record tree and collect its state_dict entries and per-path class names."""
    if not isinstance(record, (PersistentRecord, ContainerRecord)):
        raise UserError(f"module {prefix.rstrip('.') or '<root>'} is stored as {type(record).__name__}, "
                        f"not as a module record")
    classes[prefix.rstrip(".")] = record.class_name
    state = record.state or {}
    skip = set(state.get("_non_persistent_buffers_set") or ())
    for key, value in (state.get("_parameters") or {}).items():
        if value is not None:
            tensors[prefix + key] = value
    for key, value in (state.get("_buffers") or {}).items():
        if value is not None and key not in skip:
            tensors[prefix + key] = value
    for key, child in (state.get("_modules") or {}).items():
        if child is not None:
            _module_tensors(child, f"{prefix}{key}.", tensors, classes)


def edm_record_to_network(record: Any, what: str = "ema") -> torch.nn.Module:
    """Build an `aot.networks` preconditioner from an EDM persistent-object record."""
    from .networks import PRECONDITIONERS, build_network, plain_value

    if not isinstance(record, PersistentRecord) or record.type != "class":
        raise UserError(f"{what} is not a persistent network record")
    if record.class_name not in PRECONDITIONERS:
        raise UserError(f"{what} is an EDM {record.class_name}; supported: {', '.join(sorted(PRECONDITIONERS))}")
    if record.init_args:
        raise UserError(f"{what} was constructed with positional arguments, which EDM networks never use")
    try:
        init_kwargs = plain_value(_plain(record.init_kwargs))
        net = build_network(record.class_name, init_kwargs)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{what}: cannot rebuild {record.class_name} from its constructor arguments: {exc}") from None
    tensors: dict = {}
    classes: dict = {}
    _module_tensors(record, "", tensors, classes)
    for path, module in net.named_modules():
        stored = classes.get(path)
        if stored is not None and stored != type(module).__name__:
            raise UserError(f"{what}: module {path or '<root>'} is a {stored} in the file but a "
                            f"{type(module).__name__} here")
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise UserError(f"{what}: {key} is not a tensor")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise UserError(f"{what} has non-finite values in {key}")
    try:
        net.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise UserError(f"{what}: weights do not match {record.class_name}({init_kwargs}): "
                        f"{' '.join(line.strip() for line in first[:3])}") from None
    return net.eval().requires_grad_(False)


def load_edm_pickle(path: str | os.PathLike) -> dict:
    """Read an NVlabs/edm snapshot pickle without running any of its code.

    Returns the snapshot's dict with `ema` rebuilt as an `aot.networks` module (eval mode, no
    gradients) and every other value (loss_fn, augment_pipe, dataset_kwargs, ...) as plain
    dicts: persistent objects become {"class_name", "init_args", "init_kwargs", "state"}.
    """
    raw = read_edm_pickle_raw(path)
    if not isinstance(raw, dict):
        raise UserError(f"EDM pickle {path} holds a {type(raw).__name__}, not a snapshot dict")
    if "ema" not in raw:
        raise UserError(f"EDM pickle {path} has no 'ema' network (keys: {', '.join(map(str, raw))})")
    out = {}
    for key, value in raw.items():
        out[key] = edm_record_to_network(value, what=f"{path}: ema") if key == "ema" else _plain(value)
    return out


def edm_network_meta(net: torch.nn.Module, source: str, model: str | None = None, **extra: Any) -> dict:
    """The checkpoint meta of an imported EDM network (see SPEC: network checkpoint meta)."""
    return {"model": model, "aot": False, "cond": bool(getattr(net, "label_dim", 0)), "kimg": None,
            "source": f"edm-pickle:{source}", **extra}


def convert_edm_pickle(path: str | os.PathLike, out: str | os.PathLike, model: str | None = None,
                       source: str | None = None, **extra: Any) -> dict:
    """EDM snapshot pickle -> our network file; returns the meta written."""
    net = load_edm_pickle(path)["ema"]
    meta = edm_network_meta(net, source or str(path), model or Path(path).stem, **extra)
    save_network(out, net, **meta)
    return meta


def is_network_file(path: str | os.PathLike) -> bool:
    """True for our zip-based network files, False for anything else (e.g. an EDM pickle)."""
    return zipfile.is_zipfile(path)


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
# Export in EDM's snapshot layout.

_EDM_PERSISTENCE_VERSION = 6


class _EdmLayoutPickler(pickle._Pickler):
    """Writes `aot.networks` modules as EDM persistent-object records (protocol 4).

    The embedded module source is `aot/networks.py` itself, which depends only on torch and numpy,
    so NVlabs/edm's own `pickle.load` (generate.py, fid.py) can rebuild the networks from the file.
    """

    def __init__(self, file, module_src: str):
        super().__init__(file, protocol=4)
        self.module_src = module_src

    def reducer_override(self, obj):
        if isinstance(obj, torch.nn.Module) and type(obj).__module__ == "aot.networks":
            state = dict(obj.__dict__)
            state["_init_args"] = ()
            state["_init_kwargs"] = dict(getattr(obj, "init_kwargs", {}) or {})
            meta = dict(type="class", version=_EDM_PERSISTENCE_VERSION, module_src=self.module_src,
                        class_name=type(obj).__name__, state=state)
            return (_RECONSTRUCT_MARKER, (meta,))
        return NotImplemented

    def save(self, obj, save_persistent_id=True):
        if obj is _RECONSTRUCT_MARKER:
            super().save("torch_utils.persistence")
            super().save("_reconstruct_persistent_obj")
            self.write(pickle.STACK_GLOBAL)
            return
        super().save(obj, save_persistent_id)


def _RECONSTRUCT_MARKER(meta):  # pragma: no cover - only its identity is used, when pickling
    raise RuntimeError("placeholder")


def save_edm_pickle(path: str | os.PathLike, net: torch.nn.Module, **extra: Any) -> None:
    """Write `net` as an NVlabs/edm snapshot pickle `dict(ema=net, **extra)` (atomically).

    The result loads with `load_edm_pickle` and with EDM's own tools (which run the embedded source
    of `aot/networks.py`, as they do for every EDM pickle).
    """
    import inspect

    from . import networks

    module_src = inspect.getsource(networks)
    net = net.to("cpu").eval().requires_grad_(False)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            _EdmLayoutPickler(f, module_src).dump(dict(ema=net, **extra))


# ------------------------------------------------------------------------------------------------
# Download and command line.

_SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: str | os.PathLike, sha256: str | None = None, timeout: float = 60.0) -> str:
    """Stream `url` to `dest` (atomically) with progress lines; verify the SHA-256; return it."""
    import requests

    dest = Path(dest)
    h = hashlib.sha256()
    try:
        with requests.get(url, stream=True, timeout=timeout) as response:
            if response.status_code != 200:
                raise UserError(f"cannot download {url}: HTTP {response.status_code}")
            total = int(response.headers.get("content-length") or 0)
            progress = Progress(f"download {Path(url).name}", max(total >> 20, 1), unit="MiB", interval=5.0,
                                stream=sys.stderr)
            done = 0
            with atomic_path(dest) as tmp:
                with open(tmp, "wb") as f:
                    for block in response.iter_content(chunk_size=1 << 20):
                        f.write(block)
                        h.update(block)
                        done += len(block)
                        if total:
                            progress.update(min(done >> 20, max(total >> 20, 1)))
                if total and done != total:
                    raise UserError(f"download of {url} stopped after {done} of {total} bytes")
                digest = h.hexdigest()
                if sha256 and digest.lower() != sha256.lower():
                    raise UserError(f"checksum mismatch for {url}: expected sha256 {sha256.lower()}, got {digest}")
    except requests.exceptions.ConnectionError as exc:
        raise UserError(f"cannot download {url}: no connection (offline, or host unreachable): "
                        f"{type(exc).__name__}") from None
    except requests.exceptions.Timeout:
        raise UserError(f"cannot download {url}: timed out after {timeout:g} s") from None
    except requests.exceptions.RequestException as exc:
        raise UserError(f"cannot download {url}: {exc}") from None
    return digest


def import_edm(source: str, out: str | os.PathLike, sha256: str | None = None, model_name: str | None = None) -> dict:
    """Fetch (URL) or read (path) an EDM snapshot pickle, verify it and write our network file."""
    if sha256 is not None and not _SHA256_RE.match(sha256):
        raise UserError(f"--sha256 must be 64 hexadecimal digits, got {sha256!r}")
    out = Path(out)
    is_url = re.match(r"^(https?|ftp)://", source) is not None
    name = model_name or Path(source.rstrip("/").split("?")[0]).stem
    with tempfile.TemporaryDirectory(prefix=".import-edm.", dir=out.parent if out.parent.is_dir() else None) as tmp:
        if is_url:
            local = Path(tmp) / "snapshot.pkl"
            digest = download(source, local, sha256)
        else:
            local = Path(source)
            if not local.is_file():
                raise UserError(f"EDM pickle {local} does not exist")
            digest = sha256_file(local)
            if sha256 and digest.lower() != sha256.lower():
                raise UserError(f"checksum mismatch for {local}: expected sha256 {sha256.lower()}, got {digest}")
        net = load_edm_pickle(local)["ema"]
        meta = edm_network_meta(net, source, name, sha256=digest)
        save_network(out, net, **meta)
    return meta


def _info(path: str) -> dict:
    net, meta = load_any_network(path)
    n_params = sum(p.numel() for p in net.parameters())
    return {"path": str(path), "class_name": type(net).__name__, "parameters": n_params,
            "sigma_min": float(net.sigma_min), "sigma_max": float(net.sigma_max),
            "img_resolution": net.img_resolution, "img_channels": net.img_channels, "label_dim": net.label_dim,
            "meta": {k: v for k, v in meta.items() if k != "init_kwargs"}, "init_kwargs": net.init_kwargs}


@cli_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m aot.checkpoints", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("import-edm", help="convert an NVlabs/edm snapshot pickle (URL or path) to our network file")
    p.add_argument("source", metavar="URL_OR_PATH")
    p.add_argument("out", metavar="OUT.pt")
    p.add_argument("--sha256", default=None, help="expected SHA-256 of the pickle")
    p.add_argument("--model-name", default=None, help="model name recorded in the meta (default: file stem)")
    p = sub.add_parser("export-edm", help="write our network file as an NVlabs/edm snapshot pickle")
    p.add_argument("network", metavar="NETWORK.pt")
    p.add_argument("out", metavar="OUT.pkl")
    p = sub.add_parser("info", help="print a network file's or EDM pickle's class, size and meta as JSON")
    p.add_argument("path")
    args = parser.parse_args(argv)
    if args.command == "import-edm":
        meta = import_edm(args.source, args.out, args.sha256, args.model_name)
        print(json.dumps({"out": str(args.out), **meta}))
    elif args.command == "export-edm":
        net, meta = load_network(args.network)
        save_edm_pickle(args.out, net)
        print(json.dumps({"out": str(args.out), "class_name": type(net).__name__, "model": meta.get("model")}))
    else:
        print(json.dumps(_info(args.path), indent=2, default=str))


if __name__ == "__main__":
    main()
