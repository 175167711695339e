"""Safe reading of NVlabs/edm snapshot pickles, and writing networks in their layout.

NVlabs/edm snapshots (`network-snapshot-*.pkl`, the published `edm-cifar10-32x32-*.pkl`) are pickles
of `dict(ema=..., loss_fn=..., augment_pipe=..., dataset_kwargs=...)` whose objects carry the Python
source of their module, normally executed by `pickle.load`. `load_edm_pickle` never does that: the
file's opcodes are checked against a short allow-list of globals before unpickling starts, then
`aot.pickles.InertUnpickler` maps the allowed ones to inert stand-ins (nothing runs, nothing in the
process changes, tensors must fit their storages), and the network is rebuilt from its recorded
class name, constructor arguments and tensors with `aot.networks`.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import pickletools
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import pickles
from ..errors import UserError
from ..files import atomic_path
from ..pickles import InertRecord, InertUnpickler, byte_limit, describe_failure, is_int, one_line, refuse
from .network_file import build_with_weights

# Published networks by file name: (what, where to get it). EDM's README links its CIFAR-10 pickles
# (direct URLs); the EDM-AOT authors' README links theirs (EDM-format pickles) on Google Drive, which
# has no stable direct URL: those are downloaded by hand and placed by path under these names.
EDM_PRETRAINED = "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained"
PUBLISHED_NETWORKS = {
    **{f"edm-cifar10-32x32-{c}-{v}.pkl": (f"EDM's {c} {v.upper()} CIFAR-10 network",
                                          f"{EDM_PRETRAINED}/edm-cifar10-32x32-{c}-{v}.pkl")
       for c in ("uncond", "cond") for v in ("vp", "ve")},
    "edm-aot-cifar10-32x32-uncond.pkl": (
        "the EDM-AOT authors' unconditional CIFAR-10 network (README of github.com/large-scale-kim/EDM-AOT)",
        "https://drive.google.com/file/d/1y-79-IKw15BaCHJRznC8fUKQ9lQR2I_M/view"),
    "edm-aot-cifar10-32x32-cond.pkl": (
        "the EDM-AOT authors' class-conditional CIFAR-10 network (README of github.com/large-scale-kim/EDM-AOT)",
        "https://drive.google.com/file/d/1KOSnBal7Mf1wVLwOiKgOachxcwfsDmum/view"),
}


def missing_pickle_message(path: str | os.PathLike) -> str:
    """One line for an EDM pickle that is not where a config places it: where to get the file."""
    path = Path(path)
    known = PUBLISHED_NETWORKS.get(path.name)
    if known is None:
        return f"EDM pickle {path} does not exist (place the file there, or give its URL)"
    what, where = known
    return f"EDM pickle {path} does not exist: download {what} from {where} and place it at {path}"


# ------------------------------------------------------------------------------------------------
# Safe reading of NVlabs/edm snapshot pickles: aot.pickles.InertUnpickler with EDM's allow-list.


class UnsafeCheckpointError(pickles.UnsafeGlobal):
    """The pickle refers to a global outside the allow-list; nothing from it was executed."""


def _named_dict(obj: Any, what: str) -> dict:
    if type(obj) not in (dict, collections.OrderedDict) or not all(type(k) is str for k in obj):
        raise UserError(f"{what} is a {type(obj).__name__}, not a dict with names for keys")
    return obj


class PersistentRecord(InertRecord):
    """Stand-in for an object saved by EDM's `torch_utils.persistence` (its source is never run):
    `_reconstruct_persistent_obj(meta)` with meta = dict(type, version, module_src, class_name, state)."""

    def __init__(self, meta: Any):
        meta = _named_dict(meta, "a persistent object's record")
        self.type = meta.get("type")
        self.version = meta.get("version")
        self.class_name = meta.get("class_name")
        if type(self.class_name) is not str:
            raise UserError(f"a persistent object's record has a {type(self.class_name).__name__} for its class name")
        src = meta.get("module_src")
        self.module_src_chars = len(src) if type(src) is str else 0
        self.state = dict(_named_dict(meta.get("state"), f"the state of persistent object {self.class_name}"))

    def children(self) -> tuple:
        return (self.state,)

    @property
    def init_args(self) -> tuple:
        args = self.state.get("_init_args")
        if args is not None and type(args) not in (tuple, list):
            raise UserError(f"_init_args of {self.class_name} is a {type(args).__name__}, not a tuple")
        return tuple(args or ())

    @property
    def init_kwargs(self) -> dict:
        kwargs = self.state.get("_init_kwargs")
        return {} if kwargs is None else dict(_named_dict(kwargs, f"_init_kwargs of {self.class_name}"))

    def __repr__(self) -> str:
        return f"PersistentRecord({self.class_name!r})"


class ContainerRecord(InertRecord):
    """Stand-in for torch's ModuleDict in a snapshot (created empty, then given its `__dict__`)."""

    class_name = "ModuleDict"
    state: Any = None

    def build(self, state: Any) -> None:
        if self.built:
            raise refuse(f"the pickle sets the state of a {self.class_name} twice")
        self.state = dict(_named_dict(state, f"the state of a {self.class_name}"))
        self.built = True

    def children(self) -> tuple:
        return () if self.state is None else (self.state,)

    def __repr__(self) -> str:
        return f"ContainerRecord({self.class_name!r})"


class StorageRecord(InertRecord):
    """A tensor storage, as a flat tensor (read by `_storage_from_bytes`)."""

    def __init__(self, flat: torch.Tensor):
        self.flat = flat


_STORAGE_TYPES = {("torch", f"{name}Storage"): dtype for name, dtype in {  # in embedded storage records
    "Float": torch.float32, "Double": torch.float64, "Half": torch.float16, "BFloat16": torch.bfloat16,
    "Long": torch.int64, "Int": torch.int32, "Short": torch.int16, "Char": torch.int8, "Byte": torch.uint8,
    "Bool": torch.bool}.items()}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


def _storage_id(pid: Any) -> tuple:
    ok = (type(pid) is tuple and len(pid) == 6 and pid[0] == "storage" and isinstance(pid[1], torch.dtype)
          and type(pid[2]) is str and type(pid[3]) is str and is_int(pid[4]) and pid[4] >= 0 and pid[5] is None)
    if not ok:
        raise refuse("an embedded tensor storage has an unexpected record")
    return pid


def _storage_from_bytes(reader: InertUnpickler, data: Any) -> StorageRecord:
    """`torch.storage._load_from_bytes(data)`: torch's legacy format for one storage, parsed here.

    Three header pickles (magic number, protocol, byte order), the storage's persistent id (type, key,
    location, element count), the key list, then the element count again and the raw little-endian
    bytes, whose length must match the declared count exactly before anything is allocated.
    """
    if type(data) is not bytes:
        raise refuse("an embedded tensor storage does not hold bytes")
    f = io.BytesIO(data)
    magic = InertUnpickler(f, {}).load_tree()
    protocol = InertUnpickler(f, {}).load_tree()
    sys_info = InertUnpickler(f, {}).load_tree()
    if not (is_int(magic) and magic == _LEGACY_MAGIC and is_int(protocol) and protocol == _LEGACY_PROTOCOL):
        raise refuse("an embedded tensor storage is not in torch's legacy storage format")
    if type(sys_info) is not dict or sys_info.get("little_endian") is not True:
        raise refuse("an embedded tensor storage is not little-endian")
    ids: list[tuple] = []
    key = InertUnpickler(f, _STORAGE_TYPES, persistent_load=lambda pid: ids.append(_storage_id(pid)) or pid[2]).load()
    keys = InertUnpickler(f, {}).load_tree()
    if len(ids) != 1 or type(key) is not str or key != ids[0][2] or type(keys) is not list or keys != [key]:
        raise refuse("an embedded tensor storage holds something other than one storage")
    dtype, numel = ids[0][1], ids[0][4]
    rest = f.read()
    nbytes = numel * dtype.itemsize
    if len(rest) < 8 or int.from_bytes(rest[:8], "little", signed=True) != numel or len(rest) - 8 != nbytes:
        raise refuse(f"an embedded tensor storage declares {numel} elements ({nbytes} bytes) but holds "
                     f"{max(len(rest) - 8, 0)} bytes")
    if dtype == torch.bool and nbytes and max(rest[8:]) > 1:
        raise refuse("an embedded bool storage holds a byte other than 0 or 1")
    reader.budget.take(nbytes, "tensor storages")
    flat = torch.frombuffer(bytearray(rest[8:]), dtype=dtype) if numel else torch.empty(0, dtype=dtype)
    return StorageRecord(flat)


def _empty(x: Any) -> bool:
    return x is None or (type(x) in (dict, collections.OrderedDict) and not x)


def _rebuild_tensor(reader: InertUnpickler, storage: Any, storage_offset: Any, size: Any, stride: Any,
                    requires_grad: Any = False, backward_hooks: Any = None, metadata: Any = None) -> torch.Tensor:
    """`torch._utils._rebuild_tensor_v2`: a view of a storage, which must lie inside the storage."""
    if not isinstance(storage, StorageRecord):
        raise refuse(f"a tensor record refers to a {type(storage).__name__}, not a storage")
    size, stride = pickles.check_shape(size, "tensor size"), pickles.check_shape(stride, "tensor stride")
    if len(size) != len(stride) or not is_int(storage_offset) or storage_offset < 0:
        raise refuse(f"a tensor record with size {list(size)}, stride {list(stride)} and offset {storage_offset!r}")
    if type(requires_grad) is not bool or not _empty(backward_hooks) or not _empty(metadata):
        raise refuse("a tensor record with hooks or metadata")
    numel = math.prod(size)
    end = storage_offset + (1 + sum((n - 1) * s for n, s in zip(size, stride)) if numel else 0)
    available = storage.flat.numel()
    if end > available:
        raise refuse(f"a tensor view of size {list(size)} (stride {list(stride)}, offset {storage_offset}) "
                     f"reaches element {end} of a storage of {available}")
    reader.budget.take(numel * storage.flat.element_size(), "tensors")
    return storage.flat.as_strided(size, stride, storage_offset)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None,
                       state: Any = None) -> torch.Tensor:
    """`torch._utils._rebuild_parameter[_with_state]`: the parameter's tensor (no hooks, no attributes)."""
    plain_state = _empty(state) or (type(state) is tuple and len(state) == 2 and all(_empty(s) for s in state))
    if (not isinstance(data, torch.Tensor) or type(requires_grad) is not bool or not _empty(backward_hooks)
            or not plain_state):
        raise refuse("a parameter record other than a tensor without hooks or attributes")
    return data


# The globals NVlabs/edm's snapshot pickles (VP, VE and EDM; DDPM++, NCSN++ and ADM) refer to.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): PersistentRecord,
    ("torch._utils", "_rebuild_tensor_v2"): pickles.Hook(_rebuild_tensor),
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): pickles.Hook(_storage_from_bytes),
    ("torch.nn.modules.container", "ModuleDict"): ContainerRecord,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **pickles.NUMPY_SCALAR,  # EDM's UNet blocks keep skip_scale=np.sqrt(0.5), a numpy float64
}

_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}
_MEMO_OPS = {"MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "FRAME"}
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}
_UNKNOWN = object()


def _allowed_global(module: str, name: str):
    target = _ALLOWED.get((module, name))
    if target is None:
        raise UnsafeCheckpointError(one_line(f"refusing to load: the pickle refers to the global {module}.{name}, "
                                             f"which is not on the allow-list (nothing from the file was run)"))
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


def read_edm_pickle_raw(path: str | os.PathLike, max_bytes: int | None = None) -> Any:
    """Unpickle an EDM snapshot into inert records (PersistentRecord, ContainerRecord, tensors).

    `max_bytes` caps the bytes of its tensors (default 4 GiB, or $AOT_MAX_TENSOR_BYTES)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"EDM pickle {path} does not exist")
    data = path.read_bytes()
    if zipfile.is_zipfile(io.BytesIO(data)):
        raise UserError(f"{path} is a torch zip checkpoint, not an EDM pickle (load it with load_network)")
    if not data:
        raise UserError(f"EDM pickle {path} is empty")
    scan_pickle_globals(data, what=f"EDM pickle {path}")
    reader = InertUnpickler(io.BytesIO(data), _ALLOWED, new_types=(ContainerRecord,), leaf_types=(torch.Tensor,),
                            budget=pickles.ByteBudget(byte_limit(max_bytes)))
    try:
        return reader.load_tree()
    except UserError as exc:
        raise type(exc)(one_line(f"EDM pickle {path}: {exc}")) from None
    except Exception as exc:  # anything else the file's structure provokes
        raise UserError(f"EDM pickle {path} cannot be read: {describe_failure(exc)}") from None


def _plain(obj: Any, memo: dict | None = None) -> Any:
    """Records to plain dicts, numpy scalars to Python numbers; tensors stay tensors. The input is a
    checked tree; values it shares stay shared (memo), so this is linear in its size."""
    memo = {} if memo is None else memo
    if id(obj) in memo:
        return memo[id(obj)][1]
    if isinstance(obj, PersistentRecord):
        state = {k: _plain(v, memo) for k, v in obj.state.items() if k not in ("_init_args", "_init_kwargs")}
        out: Any = {"class_name": obj.class_name, "init_args": _plain(list(obj.init_args), memo),
                    "init_kwargs": _plain(obj.init_kwargs, memo), "state": state}
    elif isinstance(obj, ContainerRecord):
        out = {"class_name": obj.class_name, "state": {k: _plain(v, memo) for k, v in (obj.state or {}).items()}}
    elif isinstance(obj, dict):
        out = {k: _plain(v, memo) for k, v in obj.items()}
    elif isinstance(obj, (list, tuple)):
        out = type(obj)(_plain(v, memo) for v in obj)
    elif isinstance(obj, np.generic):
        out = obj.item()
    elif isinstance(obj, pickles.DtypeRecord):
        out = str(obj.dtype)
    else:
        out = obj
    memo[id(obj)] = (obj, out)  # keeps obj alive, so its id stays its own
    return out


def _module_tensors(record: Any, prefix: str, tensors: dict, classes: dict, seen: set) -> None:
    """Walk a module record tree and collect its state_dict entries and per-path class names."""
    where = prefix.rstrip(".") or "<root>"
    if not isinstance(record, (PersistentRecord, ContainerRecord)):
        raise UserError(f"module {where} is stored as {type(record).__name__}, not as a module record")
    if id(record) in seen:
        raise UserError(f"module {where} appears more than once in the network")
    seen.add(id(record))
    classes[prefix.rstrip(".")] = record.class_name
    state = record.state or {}
    fields = {}
    for field in ("_parameters", "_buffers", "_modules"):
        value = state.get(field)
        fields[field] = {} if value is None else _named_dict(value, f"{field} of module {where}")
    skip = state.get("_non_persistent_buffers_set")
    skip = () if skip is None else skip
    if type(skip) not in (set, frozenset, list, tuple):
        raise UserError(f"_non_persistent_buffers_set of module {where} is a {type(skip).__name__}")
    for key, value in fields["_parameters"].items():
        if value is not None:
            tensors[prefix + key] = value
    for key, value in fields["_buffers"].items():
        if value is not None and key not in skip:
            tensors[prefix + key] = value
    for key, child in fields["_modules"].items():
        if child is not None:
            _module_tensors(child, f"{prefix}{key}.", tensors, classes, seen)


def edm_record_to_network(record: Any, what: str = "ema") -> torch.nn.Module:
    """Build an `aot.networks` preconditioner from an EDM persistent-object record."""
    from ..networks import PRECONDITIONERS, plain_value

    if not isinstance(record, PersistentRecord) or type(record.type) is not str or record.type != "class":
        raise UserError(f"{what} is not a persistent network record")
    if record.class_name not in PRECONDITIONERS:
        raise UserError(f"{what} is an EDM {record.class_name}; supported: {', '.join(sorted(PRECONDITIONERS))}")
    if record.init_args:
        raise UserError(f"{what} was constructed with positional arguments, which EDM networks never use")
    try:
        init_kwargs = plain_value(_plain(record.init_kwargs))
    except (TypeError, ValueError) as exc:
        raise UserError(f"{what}: cannot rebuild {record.class_name} from its constructor arguments: {exc}") from None
    tensors: dict = {}
    classes: dict = {}
    _module_tensors(record, "", tensors, classes, set())
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise UserError(f"{what}: {key} is a {type(value).__name__}, not a tensor")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise UserError(f"{what} has non-finite values in {key}")
    net = build_with_weights(record.class_name, init_kwargs, tensors, what, classes)
    return net.eval().requires_grad_(False)


def load_edm_pickle(path: str | os.PathLike, max_bytes: int | None = None) -> dict:
    """Read an NVlabs/edm snapshot pickle without running any of its code.

    Returns the snapshot's dict with `ema` rebuilt as an `aot.networks` module (eval mode, no
    gradients) and every other value (loss_fn, augment_pipe, dataset_kwargs, ...) as plain
    dicts: persistent objects become {"class_name", "init_args", "init_kwargs", "state"}.
    `max_bytes` caps the bytes of its tensors (default 4 GiB, or $AOT_MAX_TENSOR_BYTES).
    """
    raw = read_edm_pickle_raw(path, max_bytes)
    if not isinstance(raw, dict):
        raise UserError(f"EDM pickle {path} holds a {type(raw).__name__}, not a snapshot dict")
    if "ema" not in raw:
        keys = ", ".join(one_line(k) if type(k) is str else type(k).__name__ for k in raw)
        raise UserError(f"EDM pickle {path} has no 'ema' network (keys: {keys})")
    out = {}
    try:
        for key, value in raw.items():
            out[key] = edm_record_to_network(value, what=f"{path}: ema") if key == "ema" else _plain(value)
    except UserError as exc:
        message = str(exc) if str(path) in str(exc) else f"EDM pickle {path}: {exc}"
        raise type(exc)(one_line(message)) from None
    return out


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

    from .. import networks

    module_src = inspect.getsource(networks)
    net = net.to("cpu").eval().requires_grad_(False)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            _EdmLayoutPickler(f, module_src).dump(dict(ema=net, **extra))
