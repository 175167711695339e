"""Inert unpickling: reading pickles we did not write (EDM snapshot pickles, CIFAR-10 batches)
without running anything from them and without changing the running process.

Python's pickle format is a small program: it names globals, calls them and sets object state.
`InertUnpickler` runs that program on Python's own pickle machine with every dangerous step
replaced:

- a global is looked up in the caller's allow-list and becomes the stand-in listed there;
- only allow-listed callables are called (REDUCE, NEWOBJ, INST, OBJ);
- BUILD (`__setstate__`) is accepted only on records this reader made itself (`InertRecord`) and
  on arrays made by numpy's `_reconstruct`, so nothing in a file can change a class, a function or
  any other object of the process (a function's `__defaults__`, a class attribute, ...);
- numpy dtypes, scalars and arrays are rebuilt from checked plain data: numeric kinds only (bool,
  integers, floats, complex), no fields, no sub-arrays, no objects, exact byte sizes, and numpy's
  own flags;
- the container opcodes act only on plain lists, dicts and sets;
- the result must be a tree (no cycles, at most `MAX_DEPTH` levels, at most `MAX_VALUES` values with
  shared ones counted wherever they appear) of plain data, records and the caller's leaf types;
- the bytes of arrays (and of the caller's tensors) count against a limit, `max_bytes` (default
  4 GiB, or $AOT_MAX_TENSOR_BYTES).

Every refusal is a `PickleRefused`, a UserError: one line, exit 2 on the command line.
"""

from __future__ import annotations

import io
import math
import pickle
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from .errors import UserError
from .limits import TENSOR_BYTES

MAX_DEPTH = 100
MAX_VALUES = 10_000_000
DEFAULT_MAX_BYTES = TENSOR_BYTES.default
MAX_BYTES_ENV = TENSOR_BYTES.env
NUMERIC_KINDS = "biufc"  # bool, signed and unsigned integers, floats, complex

_PLAIN_LEAVES = (type(None), bool, int, float, complex, str, bytes)
_DICTS = (dict, OrderedDict)


class PickleRefused(UserError):
    """The pickle holds something that cannot be built inertly; nothing from it was run."""


def refuse(message: str) -> PickleRefused:
    return PickleRefused(f"refusing to load: {message}")


def byte_limit(max_bytes: int | None = None) -> int:
    """`max_bytes`, else $AOT_MAX_TENSOR_BYTES, else 4 GiB (aot.limits.TENSOR_BYTES)."""
    return TENSOR_BYTES.value(max_bytes)


class ByteBudget:
    """Bytes of arrays and tensors built from one file, per kind, against one limit."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used: dict[str, int] = {}

    def take(self, nbytes: int, kind: str) -> None:
        total = self.used.get(kind, 0) + nbytes
        if total > self.limit:
            raise refuse(f"its {kind} exceed {self.limit} bytes (raise max_bytes or ${MAX_BYTES_ENV} "
                         f"if the file is trusted and this large)")
        self.used[kind] = total


def is_int(x: Any) -> bool:
    return type(x) is int


def check_shape(shape: Any, what: str) -> tuple[int, ...]:
    """A tuple of non-negative Python ints (array shapes, tensor sizes and strides)."""
    if type(shape) not in (tuple, list) or len(shape) > 64 or not all(is_int(n) and n >= 0 for n in shape):
        raise refuse(f"{what} {shape!r} is not a tuple of non-negative integers")
    return tuple(shape)


def latin1_bytes(data: Any, what: str) -> bytes:
    """Raw data as pickled: bytes, or a Python 2 str read with encoding='latin1'."""
    if type(data) is bytes:
        return data
    if type(data) is str:
        try:
            return data.encode("latin1")
        except UnicodeEncodeError:
            raise refuse(f"{what} is text, not raw bytes") from None
    raise refuse(f"{what} is a {type(data).__name__}, not raw bytes")


# ------------------------------------------------------------------------------------------------
# Records: the stand-ins a file's objects become.


class InertRecord:
    """Base of the stand-ins built by this reader; BUILD on one calls `build(state)`."""

    built = False

    def children(self) -> Iterable[Any]:
        """The values this record holds (walked by `check_tree`)."""
        return ()

    def build(self, state: Any) -> None:
        raise refuse(f"the pickle sets the state of a {type(self).__name__}, which takes none")


_DTYPE_SPEC = re.compile(r"[biufc][0-9]{1,2}")


def numeric_dtype(spec: Any, byteorder: str = "=") -> np.dtype:
    """The numpy dtype `spec` ('f8', 'u1', 'b1', ...) if it is a plain numeric one."""
    if type(spec) is bytes:
        spec = spec.decode("latin1")
    if type(spec) is not str or not _DTYPE_SPEC.fullmatch(spec):
        raise refuse(f"numpy dtype {spec!r} is not a plain numeric type (bool, integer, float, complex)")
    try:
        dt = np.dtype(spec)
    except TypeError:
        raise refuse(f"numpy dtype {spec!r} is not a plain numeric type (bool, integer, float, complex)") from None
    if dt.kind not in NUMERIC_KINDS or dt.hasobject or dt.fields is not None or dt.subdtype is not None:
        raise refuse(f"numpy dtype {spec!r} is not a plain numeric type (bool, integer, float, complex)")
    return dt.newbyteorder(byteorder) if byteorder in "<>" else dt


class DtypeRecord(InertRecord):
    """`numpy.dtype(spec, align, copy)` plus its BUILD state, kept as plain data.

    numpy pickles a dtype as that call followed by the state (3, byteorder, None, None, None, -1,
    -1, 0); only the byte order is taken from it, everything else must have exactly these values
    (no sub-array, no fields, no flags).
    """

    def __init__(self, spec: Any, align: Any = False, copy: Any = True):
        numeric_dtype(spec)
        if type(align) not in (bool, int) or align:
            raise refuse("an aligned numpy dtype (numeric types have no alignment to ask for)")
        self.spec = spec.decode("latin1") if type(spec) is bytes else spec
        self.byteorder = "="

    def build(self, state: Any) -> None:
        ok = (not self.built and type(state) is tuple and len(state) in (8, 9) and is_int(state[0])
              and state[0] in (3, 4) and type(state[1]) is str and state[1] in ("<", ">", "|", "=")
              and all(x is None for x in state[2:5]) and all(is_int(x) for x in state[5:8])
              and state[5:8] == (-1, -1, 0) and (len(state) == 8 or state[8] is None))
        if not ok:
            raise refuse(f"numpy dtype {self.spec!r} comes with a state other than a byte order "
                         f"(fields, sub-arrays or flags)")
        self.byteorder = state[1]
        self.built = True

    @property
    def dtype(self) -> np.dtype:
        return numeric_dtype(self.spec, self.byteorder)


def _dtype_of(obj: Any, what: str) -> np.dtype:
    if not isinstance(obj, DtypeRecord):
        raise refuse(f"{what} has a {type(obj).__name__} for its dtype")
    return obj.dtype


def _check_bools(raw: bytes, dt: np.dtype) -> None:
    if dt.kind == "b" and raw and np.frombuffer(raw, dtype=np.uint8).max() > 1:
        raise refuse("a numpy bool holds a byte other than 0 or 1")


def numpy_scalar(dtype: Any, data: Any = None) -> np.generic:
    """`numpy.core.multiarray.scalar(dtype, data)` for numeric dtypes."""
    dt = _dtype_of(dtype, "a numpy scalar")
    raw = latin1_bytes(data, "a numpy scalar's data")
    if len(raw) != dt.itemsize:
        raise refuse(f"a numpy {dt} scalar holds {len(raw)} bytes, not {dt.itemsize}")
    _check_bools(raw, dt)
    return np.frombuffer(raw, dtype=dt, count=1)[0]


class NdarrayClass:
    """Stand-in for the class `numpy.ndarray`: an argument of `_reconstruct`, never called."""

    def __repr__(self) -> str:
        return "numpy.ndarray"


NDARRAY = NdarrayClass()


class Hook:
    """An allow-list entry called with the reader (for its byte budget or its pending arrays)."""

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn

    def __repr__(self) -> str:
        return f"Hook({self.fn.__name__})"


def _reconstruct(reader: InertUnpickler, subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
    """`numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')`: an empty array awaiting BUILD."""
    if (subtype is not NDARRAY or type(shape) not in (tuple, list) or len(shape) != 1 or not is_int(shape[0])
            or shape[0] != 0 or type(typecode) not in (bytes, str) or typecode not in (b"b", "b")):
        raise refuse("numpy array record other than _reconstruct(numpy.ndarray, (0,), b'b')")
    arr = np.empty((0,), dtype=np.uint8)
    reader.pending_arrays[id(arr)] = arr
    return arr


def _build_array(reader: InertUnpickler, arr: np.ndarray, state: Any) -> None:
    """An array's BUILD state (1, shape, dtype, fortran_order, data), checked, then numpy's own."""
    if type(state) is not tuple or len(state) != 5:
        raise refuse("numpy array state is not (version, shape, dtype, fortran_order, data)")
    version, shape, dtype, fortran, data = state
    if not is_int(version) or version != 1 or type(fortran) not in (bool, int) or fortran not in (0, 1):
        raise refuse("numpy array state is not (1, shape, dtype, fortran_order, data)")
    shape = check_shape(shape, "numpy array shape")
    dt = _dtype_of(dtype, "a numpy array")
    raw = latin1_bytes(data, "a numpy array's data")
    nbytes = math.prod(shape) * dt.itemsize
    if len(raw) != nbytes:
        raise refuse(f"a numpy {dt} array of shape {list(shape)} holds {len(raw)} bytes, not {nbytes}")
    _check_bools(raw, dt)
    reader.budget.take(nbytes, "array bytes")
    arr.__setstate__((1, shape, dt, bool(fortran), raw))
    del reader.pending_arrays[id(arr)]


def codecs_encode(obj: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    """`_codecs.encode(text, 'latin1')`: how protocols 0-2 spell bytes."""
    if type(obj) is not str or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise refuse("_codecs.encode other than text to latin1 bytes")
    return obj.encode("latin1")


NUMPY_SCALAR = {("numpy", "dtype"): DtypeRecord, ("numpy.core.multiarray", "scalar"): numpy_scalar,
                ("numpy._core.multiarray", "scalar"): numpy_scalar}
NUMPY_ARRAY = {("numpy", "ndarray"): NDARRAY, ("numpy.core.multiarray", "_reconstruct"): Hook(_reconstruct),
               ("numpy._core.multiarray", "_reconstruct"): Hook(_reconstruct)}


# ------------------------------------------------------------------------------------------------
# The reader.

_D = pickle._Unpickler.dispatch  # type: ignore[attr-defined]


def _op(name: str) -> int:
    return getattr(pickle, name)[0]


class InertUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """Python's pickle machine with every step that could run code or change state replaced.

    allowed: (module, name) -> stand-in (a callable, a `Hook`, or a marker such as `NDARRAY`).
    new_types: record classes the pickle may create with NEWOBJ (then fill with BUILD).
    leaf_types: further types accepted in the result (e.g. torch.Tensor).
    """

    dispatch = dict(_D)

    def __init__(self, file: io.BufferedIOBase, allowed: Mapping[tuple[str, str], Any], *,
                 new_types: Iterable[type] = (), leaf_types: tuple[type, ...] = (),
                 budget: ByteBudget | None = None, encoding: str = "ASCII",
                 persistent_load: Callable[[Any], Any] | None = None):
        super().__init__(file, encoding=encoding)
        self.allowed = dict(allowed)
        self.callables = {id(v): v for v in self.allowed.values() if isinstance(v, Hook) or callable(v)}
        self.new_types = tuple(new_types)
        self.leaf_types = leaf_types
        self.budget = budget or ByteBudget(byte_limit())
        self.pending_arrays: dict[int, np.ndarray] = {}
        self._persistent_load = persistent_load

    # globals and calls
    def find_class(self, module: str, name: str) -> Any:
        target = self.allowed.get((module, name))
        if target is None:
            raise UnsafeGlobal(f"refusing to load: the pickle refers to the global {module}.{name}, "
                               f"which is not on the allow-list (nothing from the file was run)")
        return target

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent_load is None:
            raise refuse("the pickle uses persistent ids")
        return self._persistent_load(pid)

    def call(self, func: Any, args: Any) -> Any:
        if type(args) is not tuple:
            raise refuse(f"the pickle calls {func!r} with a {type(args).__name__} for its arguments")
        if self.callables.get(id(func)) is not func:
            raise refuse(f"the pickle calls a {type(func).__name__}, which is not on the allow-list")
        if isinstance(func, Hook):
            return func.fn(self, *args)
        return func(*args)

    def load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self.call(self.stack[-1], args)

    def _instantiate(self, klass: Any, args: list) -> None:  # INST, OBJ
        self.append(self.call(klass, tuple(args)))

    def _new(self, cls: Any, args: Any, kwargs: Any = None) -> Any:
        if not any(cls is t for t in self.new_types) or args != () or kwargs not in (None, {}):
            raise refuse(f"the pickle creates a {getattr(cls, '__name__', type(cls).__name__)} "
                         f"without calling it, which only module records may be")
        return cls.__new__(cls)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, kwargs))

    # state
    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if type(inst) is np.ndarray and self.pending_arrays.get(id(inst)) is inst:
            _build_array(self, inst, state)
        elif isinstance(inst, InertRecord) and not isinstance(inst, type):
            inst.build(state)
        else:
            name = getattr(inst, "__qualname__", None) or type(inst).__name__
            raise refuse(f"the pickle sets the state of {name}, which is not a record made by this reader "
                         f"(it would change the running program)")

    # containers: plain ones only
    def _target(self, types: tuple[type, ...], op: str) -> Any:
        target = self.stack[-1]
        if type(target) not in types:
            raise refuse(f"the pickle applies {op} to a {type(target).__name__}")
        return target

    def load_append(self) -> None:
        value = self.stack.pop()
        self._target((list,), "APPEND").append(value)

    def load_appends(self) -> None:
        items = self.pop_mark()
        self._target((list,), "APPENDS").extend(items)

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._target(_DICTS, "SETITEM")[key] = value

    def load_setitems(self) -> None:
        items = self.pop_mark()
        target = self._target(_DICTS, "SETITEMS")
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def load_additems(self) -> None:
        items = self.pop_mark()
        self._target((set,), "ADDITEMS").update(items)

    def _refuse_op(self) -> None:
        raise refuse("the pickle uses the extension registry or out-of-band buffers")

    dispatch[_op("REDUCE")] = load_reduce
    dispatch[_op("NEWOBJ")] = load_newobj
    dispatch[_op("NEWOBJ_EX")] = load_newobj_ex
    dispatch[_op("BUILD")] = load_build
    dispatch[_op("APPEND")] = load_append
    dispatch[_op("APPENDS")] = load_appends
    dispatch[_op("SETITEM")] = load_setitem
    dispatch[_op("SETITEMS")] = load_setitems
    dispatch[_op("ADDITEMS")] = load_additems
    for _name in ("EXT1", "EXT2", "EXT4", "NEXT_BUFFER", "READONLY_BUFFER", "BYTEARRAY8"):
        dispatch[_op(_name)] = _refuse_op
    del _name

    def load_tree(self) -> Any:
        """Unpickle one object and check that it is a tree of plain data (see `check_tree`)."""
        obj = self.load()
        if self.pending_arrays:
            raise refuse("a numpy array without its data")
        check_tree(obj, self.leaf_types)
        return obj


class UnsafeGlobal(PickleRefused):
    """The pickle refers to a global outside the allow-list; nothing from it was run."""


def check_tree(obj: Any, leaf_types: tuple[type, ...] = (), max_depth: int = MAX_DEPTH,
               max_values: int = MAX_VALUES) -> None:
    """Refuse cycles, nesting deeper than `max_depth`, more than `max_values` values once shared ones
    are counted at every place they appear (what a walk over the result visits), and anything but
    plain data, numeric numpy values, `InertRecord`s and `leaf_types`. Linear in the pickle's size."""
    walked: dict[int, tuple[int, int]] = {}  # id -> (height, values below and including it)
    on_path: set[int] = set()
    todo: list[tuple[Any, int, list | None]] = [(obj, 0, None)]
    while todo:
        item, depth, leaving = todo.pop()
        if leaving is not None:
            below = [walked.get(id(child), (0, 1)) for child in leaving]
            height, size = 1 + max((h for h, _ in below), default=0), 1 + sum(n for _, n in below)
            if size > max_values:
                raise refuse(f"the pickle's shared values expand to more than {max_values} values")
            on_path.discard(id(item))
            walked[id(item)] = (height, size)
            continue
        kind = type(item)
        if kind in _PLAIN_LEAVES or (leaf_types and isinstance(item, leaf_types)):
            continue
        if isinstance(item, (np.generic, np.ndarray)) and kind.__module__ == "numpy":
            if item.dtype.kind not in NUMERIC_KINDS or item.dtype.fields is not None:
                raise refuse(f"a numpy value of dtype {item.dtype}")
            continue
        key = id(item)
        if key in on_path:
            raise refuse("the pickle holds a cycle (a container that contains itself)")
        if depth + walked.get(key, (0, 0))[0] > max_depth or depth >= max_depth:
            raise refuse(f"the pickle nests containers more than {max_depth} levels deep")
        if key in walked:
            continue
        if kind in _DICTS:
            children = [*item.keys(), *item.values()]
        elif kind in (list, tuple, set, frozenset):
            children = list(item)
        elif isinstance(item, InertRecord) and not isinstance(item, type):
            children = list(item.children())
        else:
            name = getattr(item, "__qualname__", None) or f"{kind.__module__}.{kind.__qualname__}"
            raise refuse(f"the pickle holds {name}, which is not plain data")
        on_path.add(key)
        todo.append((item, depth, children))
        todo.extend((child, depth + 1, None) for child in children)


def one_line(text: str) -> str:
    """`text` with line breaks and other unprintable characters escaped (file-chosen names
    appear in error messages, which must stay one line)."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def brief(obj: Any, limit: int = 300) -> str:
    """A short one-line repr of a value read from a file (huge integers and long texts included)."""
    try:
        text = repr(obj)
    except Exception:  # e.g. an integer with more digits than Python converts
        return f"<{type(obj).__name__}>"
    text = one_line(text)
    return text if len(text) <= limit else text[:limit] + "..."


def describe_failure(exc: BaseException) -> str:
    """First line of an exception raised while reading, for a one-line error."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    try:
        text = str(exc).strip()
    except Exception:
        text = ""
    return one_line(text.splitlines()[0]) if text else type(exc).__name__
