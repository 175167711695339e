"""Hostile files: crafted EDM snapshot pickles, `.pt` network files and CIFAR-10 tarballs.

Each crafted file is small, written here, and read in a fresh process through the command line
(`python -m aot checkpoints import-edm|export-edm`, `python -m aot data cifar10`). Each must end with
exit code 2 and exactly one line `error: ...` on stderr, and leave no output behind; a crash (a
signal, returncode < 0) fails the test. The EDM pickles are read by `aot.cli.main` inside a probe
process that then loads an honest snapshot: it must come back unchanged, and no allow-listed class
or function may have been altered (BUILD on a class or on a function's `__defaults__`).

The pickles are assembled opcode by opcode (`_asm`), so the files say exactly what an attacker's
would, whatever this machine's pickler would write.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import pickletools
import subprocess
import sys
import tarfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import warm
from test_checkpoints import NCSN, SMALL, _net  # the small networks of the checkpoint tests

from aot import checkpoints
from aot.checkpoints import edm_pickle, load_edm_pickle, read_edm_pickle_raw, save_edm_pickle, save_network
from aot.errors import UserError
from aot.networks import EDMPrecond, VEPrecond, VPPrecond

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


# ------------------------------------------------------------------------------------------------
# A small pickle assembler: nested Python values to opcodes, with calls, globals and BUILD spelled out.


class G:
    """The global `module.name` (GLOBAL opcode)."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name


class Call:
    """func(*args) (REDUCE)."""

    def __init__(self, func, *args):
        self.func, self.args = func, args


class Build:
    """obj, then BUILD with state (what `__setstate__` receives)."""

    def __init__(self, obj, state):
        self.obj, self.state = obj, state


class Raw:
    def __init__(self, data: bytes):
        self.data = data


def _asm(obj) -> bytes:
    if isinstance(obj, G):
        return b"c" + f"{obj.module}\n{obj.name}\n".encode()
    if isinstance(obj, Call):
        return _asm(obj.func) + _asm(tuple(obj.args)) + b"R"
    if isinstance(obj, Build):
        return _asm(obj.obj) + _asm(obj.state) + b"b"
    if isinstance(obj, Raw):
        return obj.data
    if isinstance(obj, dict):
        return b"}" + (b"(" + b"".join(_asm(k) + _asm(v) for k, v in obj.items()) + b"u" if obj else b"")
    if isinstance(obj, list):
        return b"]" + (b"(" + b"".join(_asm(v) for v in obj) + b"e" if obj else b"")
    if isinstance(obj, tuple):
        return b"(" + b"".join(_asm(v) for v in obj) + b"t"
    return pickletools.optimize(pickle.dumps(obj, protocol=3))[2:-1]  # str, bytes, numbers, None


def crafted(obj) -> bytes:
    return b"\x80\x03" + _asm(obj) + b"."


def dtype_(spec: str, state=(3, "<", None, None, None, -1, -1, 0)):
    return Build(Call(G("numpy", "dtype"), spec, False, True), state)


def legacy_storage(values: bytes, declared: int, kind: str = "FloatStorage", stored: int | None = None) -> bytes:
    """What `torch.storage._load_from_bytes` receives: torch's legacy format for one storage."""
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    head = b"".join(pickle.dumps(x, protocol=2) for x in (LEGACY_MAGIC, 1001, sys_info))
    main = b"\x80\x02" + _asm(("storage", G("torch", kind), "0", "cpu", declared, None)) + b"Q."
    count = declared if stored is None else stored
    return head + main + pickle.dumps(["0"], protocol=2) + count.to_bytes(8, "little", signed=True) + values


def tensor_(values: bytes, size, stride, offset=0, declared=None):
    storage = Call(G("torch.storage", "_load_from_bytes"),
                   legacy_storage(values, len(values) // 4 if declared is None else declared))
    return Call(G("torch._utils", "_rebuild_tensor_v2"), storage, offset, tuple(size), tuple(stride), False,
                Call(G("collections", "OrderedDict")))


def persistent_(meta):
    return Call(G("torch_utils.persistence", "_reconstruct_persistent_obj"), meta)


FOUR = np.arange(4, dtype=np.float32).tobytes()
DEEP = 100_000
OBJECT_BUFFER = b"\x41" * 8  # a forged object pointer
SMALL_KWARGS = dict(SMALL, label_dim=0)


def _record(class_name: str, state: dict):
    return persistent_({"type": "class", "version": 6, "module_src": "", "class_name": class_name, "state": state})


# Payloads stored as the snapshot's `augment_pipe`, ahead of `ema` (the old reader converted it
# first): name -> (payload, a fragment the one-line error must hold).
PAYLOADS = {
    "ndarray-object-dtype": (_record("AugmentPipe", {"_init_args": Call(G("numpy", "ndarray"), (1,), "O",
                                                                         OBJECT_BUFFER)}), "numpy.ndarray"),
    "reconstruct-object-dtype": (
        _record("AugmentPipe", {"_init_args": Build(Call(G("numpy.core.multiarray", "_reconstruct"),
                                                         G("numpy", "ndarray"), (0,), b"b"),
                                                    (1, (1,), dtype_("O8"), False, OBJECT_BUFFER))}),
        "_reconstruct"),
    "void-dtype-forged-flags-scalar": (
        {"p": Call(G("numpy.core.multiarray", "scalar"),
                   dtype_("V8", (3, "|", None, ("f0",), {"f0": (dtype_("O8"), 0)}, 8, 1, 0)), OBJECT_BUFFER)},
        "'V8' is not a plain numeric type"),
    "float-dtype-forged-state-scalar": (
        {"p": Call(G("numpy._core.multiarray", "scalar"),
                   dtype_("f8", (3, "|", None, ("f0",), {"f0": (dtype_("f8"), 0)}, 8, 1, 63)), OBJECT_BUFFER)},
        "state other than a byte order"),
    "build-on-persistent-record-class": (
        Build(G("torch_utils.persistence", "_reconstruct_persistent_obj"),
              (None, {"init_kwargs": {"model_channels": 4096}})), "sets the state of PersistentRecord"),
    "build-on-function-defaults": (
        Build(G("torch._utils", "_rebuild_parameter"), (None, {"__defaults__": (True, None, None)})),
        "sets the state of _rebuild_parameter"),
    "build-on-ordered-dict-class": (Build(G("collections", "OrderedDict"), (None, {"fromkeys": None})),
                                    "sets the state of OrderedDict"),
    "tensor-huge-view-of-small-storage": (tensor_(FOUR, (1 << 31, 1 << 31), (0, 0)), "tensors exceed"),
    "cyclic-list": (Raw(b"]q\xc8h\xc8a"), "cycle"),
    "deep-nesting": (Raw(b"]" * DEEP + b"a" * (DEEP - 1)), "levels deep"),
    "shared-values-bomb": (Raw(b"]q\x000" + b"".join(b"(h%ch%clq%c0" % (i, i, i + 1) for i in range(40)) + b"h("),
                           "expand to more than"),  # L[i+1] = [L[i], L[i]]: 2**40 values when walked
    "record-state-not-a-dict": (_record("AugmentPipe", [1, 2]), "state of persistent object AugmentPipe is a list"),
    "record-not-a-dict": (persistent_([("class_name", "AugmentPipe")]), "persistent object's record is a list"),
    "newobj-persistent-record": (Raw(_asm(G("torch_utils.persistence", "_reconstruct_persistent_obj")) + _asm(())
                                     + b"\x81"), "without calling it"),
    "setitem-on-tensor": (Raw(_asm(tensor_(FOUR, (4,), (1,))) + _asm("k") + _asm(1) + b"s"), "SETITEM"),
}
# Networks whose records are damaged where the old reader walked them without checking.
NETWORKS = {
    "modules-not-a-dict": ({"_init_kwargs": SMALL_KWARGS, "_modules": [1, 2]}, "_modules of module <root> is a list"),
    "init-kwargs-not-a-dict": ({"_init_kwargs": [1, 2]}, "_init_kwargs of EDMPrecond is a list"),
    "parameters-not-a-dict": ({"_init_kwargs": SMALL_KWARGS, "_parameters": 3}, "_parameters of module <root> is a"),
}


def _edm_case_bytes(case: str) -> tuple[bytes, str]:
    if case in PAYLOADS:
        payload, fragment = PAYLOADS[case]
        return crafted({"augment_pipe": payload, "ema": None}), fragment
    state, fragment = NETWORKS[case]
    return crafted({"ema": _record("EDMPrecond", state)}), fragment


# ------------------------------------------------------------------------------------------------
# Running files through the command line in a fresh process.

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import hashlib, json, sys
from aot import checkpoints, pickles
from aot.checkpoints import edm_pickle, network_file
from aot.cli import main

def fingerprint():
    targets = [*edm_pickle._ALLOWED.values(), *vars(pickles).values(), *vars(checkpoints).values(),
               *vars(edm_pickle).values(), *vars(network_file).values()]
    out = []
    for t in targets:
        t = getattr(t, "fn", t)
        if isinstance(t, type):
            out.append(sorted((k, id(v)) for k, v in vars(t).items()))
        elif callable(t):
            out.append((repr(getattr(t, "__defaults__", None)), repr(getattr(t, "__kwdefaults__", None)),
                        sorted(getattr(t, "__dict__", {}))))
    return out

before = fingerprint()
code = 0
try:
    main(json.loads(sys.argv[1]))
except SystemExit as exc:
    code = exc.code
unchanged = fingerprint() == before
honest = sys.argv[2]
record = checkpoints.read_edm_pickle_raw(honest)["ema"]
ema = checkpoints.load_edm_pickle(honest)["ema"]
digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in ema.state_dict().values())).hexdigest()
print(json.dumps({"unchanged": unchanged, "record_init_kwargs": record.init_kwargs, "init_kwargs": ema.init_kwargs,
                  "digest": digest}))
sys.exit(code)
"""


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "AOT_MAX_TENSOR_BYTES"}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def _run(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    """A fresh interpreter (warm.run: forked from one that has imported torch) runs `python ARGS`."""
    return warm.run([sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=ROOT,
                    env=env or _env())


def _one_line_refusal(res: subprocess.CompletedProcess, fragment: str) -> str:
    """Exit 2 (a signal such as SIGSEGV gives a negative code) and exactly one `error:` line."""
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, f"returncode {res.returncode}\n{res.stderr[-3000:]}"
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-3000:]
    assert fragment in lines[0], lines[0]
    return lines[0]


def _weights_digest(net: torch.nn.Module) -> str:
    return hashlib.sha256(b"".join(v.numpy().tobytes() for v in net.state_dict().values())).hexdigest()


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    """An honest snapshot in EDM's layout (our exporter), and what loading it must give."""
    net = _net(label_dim=4)
    path = tmp_path_factory.mktemp("honest") / "edm-honest.pkl"
    save_edm_pickle(path, net, dataset_kwargs={"path": "cifar10-32x32.zip"})
    return path, json.loads(json.dumps(net.init_kwargs)), _weights_digest(net)


def _probe_refusal(tmp_path: Path, honest, src: Path) -> tuple[subprocess.CompletedProcess, dict]:
    """Import `src` in a probe process, then load the honest snapshot there: (result, what it saw)."""
    out = tmp_path / "out" / "network.pt"
    honest_path, init_kwargs, digest = honest
    res = _run(["-c", PROBE, json.dumps(["checkpoints", "import-edm", str(src), str(out)]), str(honest_path)])
    assert not out.exists() and not (tmp_path / "out").exists()
    assert res.stdout.strip(), res.stderr[-3000:]
    after = json.loads(res.stdout.strip().splitlines()[-1])
    assert after["unchanged"], "an allow-listed class or function was changed"
    assert after["record_init_kwargs"] == init_kwargs and after["init_kwargs"] == init_kwargs
    assert after["digest"] == digest
    return res, after


@pytest.mark.parametrize("case", sorted(PAYLOADS) + sorted(NETWORKS))
def test_hostile_edm_pickle(tmp_path, honest, record_fault, case):
    data, fragment = _edm_case_bytes(case)
    src = tmp_path / f"{case}.pkl"
    src.write_bytes(data)
    res, _ = _probe_refusal(tmp_path, honest, src)
    line = _one_line_refusal(res, fragment)
    record_fault("hostile file", f"EDM pickle: {case} ({len(data)} bytes)", line)


class _Reduce:
    """Pickles as func(*args) with real (importable) functions."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _snapshot_with_view(net: torch.nn.Module, name: str, storage: bytes, offset: int = 0) -> bytes:
    """An honest snapshot of `net` (EDM's layout) in which parameter `name` is a view of `storage`."""
    target = dict(net.named_parameters())[name]
    view = _Reduce(torch._utils._rebuild_tensor_v2, _Reduce(torch.storage._load_from_bytes, storage), offset,
                   tuple(target.shape), tuple(target.stride()), False, OrderedDict())

    class Pickler(edm_pickle._EdmLayoutPickler):
        def reducer_override(self, obj):
            if obj is target:
                return torch._utils._rebuild_parameter, (view, False, OrderedDict())
            return super().reducer_override(obj)

    buf = io.BytesIO()
    Pickler(buf, "").dump({"ema": net})
    return buf.getvalue()


VIEWED = "model.map_layer0.weight"


def _view_cases(net: torch.nn.Module) -> dict:
    values = dict(net.named_parameters())[VIEWED].detach().numpy().tobytes()
    n = len(values) // 4
    return {"tensor-view-beyond-storage": (legacy_storage(FOUR, 4), 0, "of a storage of 4"),
            "tensor-offset-beyond-storage": (legacy_storage(values, n), 1,
                                             f"reaches element {n + 1} of a storage of {n}"),
            "storage-huge-declared-size": (legacy_storage(values, 1 << 40), 0, "declares 1099511627776 elements")}


@pytest.mark.parametrize("case", ["storage-huge-declared-size", "tensor-offset-beyond-storage",
                                  "tensor-view-beyond-storage"])
def test_hostile_tensor_in_network(tmp_path, honest, record_fault, case):
    net = _net(label_dim=0)
    storage, offset, fragment = _view_cases(net)[case]
    src = tmp_path / f"{case}.pkl"
    src.write_bytes(_snapshot_with_view(net, VIEWED, storage, offset))
    res, _ = _probe_refusal(tmp_path, honest, src)
    line = _one_line_refusal(res, fragment)
    record_fault("hostile file", f"EDM pickle: {case} ({src.stat().st_size} bytes)", line)


def test_crafted_honest_twins_load(tmp_path):
    """The assembler's tensors and numpy values are what torch and numpy write: the honest twins of
    the crafted files load, so the refusals above are for the reasons they name."""
    obj = {"t": tensor_(FOUR, (2, 2), (2, 1)), "v": tensor_(FOUR, (2,), (2,), offset=1),
           "s": Call(G("numpy.core.multiarray", "scalar"), dtype_("f8"), np.float64(0.5).tobytes()),
           "o": Call(G("collections", "OrderedDict"), [("a", 1)])}
    path = tmp_path / "twins.pkl"
    path.write_bytes(crafted(obj))
    raw = read_edm_pickle_raw(path)
    assert torch.equal(raw["t"], torch.arange(4.0).reshape(2, 2)) and torch.equal(raw["v"], torch.tensor([1.0, 3.0]))
    assert raw["s"] == 0.5 and raw["s"].dtype == np.float64 and raw["o"] == OrderedDict(a=1)
    net = _net(label_dim=0)
    values = dict(net.named_parameters())[VIEWED].detach().numpy().tobytes()
    path.write_bytes(_snapshot_with_view(net, VIEWED, legacy_storage(values, len(values) // 4)))
    assert _weights_digest(load_edm_pickle(path)["ema"]) == _weights_digest(net)


def test_tensor_byte_limit_is_configurable(tmp_path, honest, record_fault):
    honest_path, _, _ = honest
    out = tmp_path / "network.pt"
    args = ["-m", "aot", "checkpoints", "import-edm", str(honest_path), str(out)]
    line = _one_line_refusal(_run(args, _env(AOT_MAX_TENSOR_BYTES="4096")), "exceed 4096 bytes")
    assert not out.exists()
    with pytest.raises(UserError, match="exceed 4096 bytes"):
        load_edm_pickle(honest_path, max_bytes=4096)
    assert load_edm_pickle(honest_path, max_bytes=1 << 30)["ema"] is not None
    record_fault("hostile file", "honest EDM pickle over AOT_MAX_TENSOR_BYTES=4096", line)


# ------------------------------------------------------------------------------------------------
# `.pt` network files (read with torch's weights-only loader, then checked).


def _pt_cases() -> dict:
    net = _net(label_dim=0)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    base = {"format": checkpoints.NETWORK_FORMAT, "class_name": "EDMPrecond", "init_kwargs": net.init_kwargs,
            "meta": {}}
    first = next(iter(state))
    return {
        "no-state-dict": (base, "has no 'state_dict' entry"),
        "non-tensor-in-state-dict": ({**base, "state_dict": {**state, first: 3}}, f"{first} in the state dict is not"),
        "state-dict-a-list": ({**base, "state_dict": [1, 2]}, "the state dict is a list"),
        "init-kwargs-a-list": ({**base, "init_kwargs": [1], "state_dict": state}, "init_kwargs holds a list"),
        "huge-network-asked": ({**base, "init_kwargs": {**net.init_kwargs, "model_channels": 1 << 20},
                                "state_dict": state}, "weights do not match"),
    }


@pytest.mark.parametrize("case", sorted(_pt_cases()))
def test_hostile_network_file(tmp_path, record_fault, case):
    payload, fragment = _pt_cases()[case]
    src = tmp_path / f"{case}.pt"
    torch.save(payload, src)
    out = tmp_path / "out.pkl"
    line = _one_line_refusal(_run(["-m", "aot", "checkpoints", "export-edm", str(src), str(out)]), fragment)
    assert not out.exists()
    record_fault("hostile file", f"network file: {case}", line)


# ------------------------------------------------------------------------------------------------
# CIFAR-10 tarballs (a local file with another name than the official one: no checksum applies).

U8_3 = dtype_("u1", (3, "|", None, None, None, -1, -1, 0))


def _array(shape, dtype, data: bytes):
    return Build(Call(G("numpy.core.multiarray", "_reconstruct"), G("numpy", "ndarray"), (0,), b"b"),
                 (1, tuple(shape), dtype, False, data))


IMAGES = _array((3, 3072), U8_3, bytes(3 * 3072))
OBJECT_DTYPE = dtype_("O8", (3, "|", None, None, None, -1, -1, 63))
VOID_WITH_OBJECT = dtype_("V8", (3, "|", None, ("f0",), {"f0": (dtype_("O8"), 0)}, 8, 1, 0))
CIFAR_CASES = {
    "labels-object-array": ({"data": IMAGES, "labels": _array((3,), OBJECT_DTYPE, OBJECT_BUFFER * 3)},
                            "'O8' is not a plain numeric type"),
    "labels-ndarray-call": ({"data": IMAGES, "labels": Call(G("numpy", "ndarray"), (3,), "O", OBJECT_BUFFER * 3)},
                            "calls a NdarrayClass"),
    "labels-void-scalar": ({"data": IMAGES, "labels": [Call(G("numpy.core.multiarray", "scalar"), VOID_WITH_OBJECT,
                                                            OBJECT_BUFFER)] * 3},
                           "'V8' is not a plain numeric type"),
    "labels-huge-integers": ({"data": IMAGES, "labels": [10 ** 30, -1, 3]}, "labels outside 0..9"),
    "labels-wrong-count": ({"data": IMAGES, "labels": [1, 2]}, "3 images but 2 labels"),
    "labels-not-integers": ({"data": IMAGES, "labels": ["a", "b", "c"]}, "labels are not a list of integers"),
    "data-float64": ({"data": _array((3, 3072), dtype_("f8"), bytes(8 * 3 * 3072)), "labels": [1, 2, 3]},
                     "holds data float64 [3, 3072]"),
    "data-short-buffer": ({"data": _array((3, 3072), U8_3, bytes(100)), "labels": [1, 2, 3]}, "holds 100 bytes"),
    "cyclic-batch": (Raw(b"}q\xc8X\x04\x00\x00\x00datah\xc8s"), "cycle"),
    "build-on-dtype-class": ({"data": Build(G("numpy", "dtype"), (None, {"hasobject": True})), "labels": []},
                             "sets the state of"),
}


def _tarball(path: Path, batch1: bytes | None, symlink: bool = False) -> None:
    honest = pickle.dumps({"data": np.zeros((3, 3072), np.uint8), "labels": [1, 2, 3]}, protocol=2)
    with tarfile.open(path, "w:gz") as tar:
        for b in range(1, 6):
            info = tarfile.TarInfo(f"cifar-10-batches-py/data_batch_{b}")
            payload = batch1 if b == 1 and batch1 is not None else honest
            if b == 1 and symlink:
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
                continue
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def _cifar_refused(tmp_path: Path, src: Path, fragment: str) -> str:
    dest = tmp_path / "out" / "cifar.zip"
    before = sorted(p.name for p in tmp_path.iterdir())
    line = _one_line_refusal(_run(["-m", "aot", "data", "cifar10", "--source", str(src), "--dest", str(dest)]),
                             fragment)
    assert not dest.exists() and sorted(p.name for p in tmp_path.iterdir() if p.name != "out") == before
    assert not (dest.parent.exists() and any(dest.parent.iterdir()))
    return line


@pytest.mark.parametrize("case", sorted(CIFAR_CASES))
def test_hostile_cifar_batch(tmp_path, record_fault, case):
    obj, fragment = CIFAR_CASES[case]
    src = tmp_path / f"{case}.tar.gz"
    _tarball(src, b"\x80\x02" + _asm(obj) + b".")
    line = _cifar_refused(tmp_path, src, fragment)
    record_fault("hostile file", f"CIFAR-10 tarball: {case}", line)


def test_cifar_symlink_member(tmp_path, record_fault):
    src = tmp_path / "symlink.tar.gz"
    _tarball(src, None, symlink=True)
    line = _cifar_refused(tmp_path, src, "data_batch_1 is a symbolic link, not a file")
    record_fault("hostile file", "CIFAR-10 tarball: symbolic link member", line)


def test_cifar_honest_twin_prepares(tmp_path):
    """The crafted batches' honest twin (same assembler, numpy written the Python 2 way) is accepted."""
    src = tmp_path / "twin.tar.gz"
    _tarball(src, b"\x80\x02" + _asm({"data": IMAGES, "labels": [1, 2, 3], "batch_label": "training batch 1 of 5"})
             + b".")
    res = _run(["-m", "aot", "data", "cifar10", "--source", str(src), "--dest", str(tmp_path / "c.zip")])
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "c.zip").is_file()


# ------------------------------------------------------------------------------------------------
# Published layouts still load (VP/VE/EDM, DDPM++/NCSN++/ADM, unconditional and conditional).


def _without_frames(data: bytes) -> bytes:
    """The same protocol-4 pickle without FRAME opcodes (frames are optional), so that strings in it
    can be respelled."""
    cuts = [pos for op, _arg, pos in pickletools.genops(data) if op.name == "FRAME"]
    out, last = [], 0
    for pos in cuts:
        out.append(data[last:pos])
        last = pos + 9
    out.append(data[last:])
    return b"".join(out)


@pytest.mark.parametrize("cls,kw", [(VPPrecond, dict(label_dim=0, augment_dim=9, **NCSN)),
                                    (VEPrecond, dict(label_dim=4, **NCSN)),
                                    (EDMPrecond, dict(label_dim=0)),
                                    (EDMPrecond, dict(label_dim=4, augment_dim=9)),
                                    (EDMPrecond, dict(label_dim=0, model_type="DhariwalUNet")),
                                    (EDMPrecond, dict(label_dim=10, model_type="DhariwalUNet"))])
def test_published_layouts_still_load(tmp_path, monkeypatch, cls, kw):
    from test_checkpoints import _edm_layout_pickle

    net = _net(cls, **kw)
    for module in net.modules():  # EDM's UNet blocks keep skip_scale=np.sqrt(0.5), a numpy float64
        if hasattr(module, "skip_scale"):
            module.skip_scale = np.sqrt(np.float64(0.5))
    data = _edm_layout_pickle(dict(ema=net, augment_pipe={"p": np.float64(0.12)},
                                   dataset_kwargs=dict(path="cifar10-32x32.zip", use_labels=net.label_dim > 0)),
                              monkeypatch)
    # numpy 1.x (which wrote the published files) spells numpy._core as numpy.core
    data = _without_frames(data).replace(b"\x8c\x16numpy._core.multiarray", b"\x8c\x15numpy.core.multiarray")
    assert b"numpy.core.multiarray" in data or not any(hasattr(m, "skip_scale") for m in net.modules())
    path = tmp_path / "snapshot.pkl"
    path.write_bytes(data)
    allowed = set(edm_pickle._ALLOWED)
    assert set(checkpoints.scan_pickle_globals(data)) <= allowed
    loaded = load_edm_pickle(path)
    assert type(loaded["ema"]) is cls and loaded["ema"].init_kwargs == net.init_kwargs
    assert _weights_digest(loaded["ema"]) == _weights_digest(net)
    assert loaded["augment_pipe"] == {"p": 0.12} and type(loaded["augment_pipe"]["p"]) is float


def test_published_layout_through_the_command_line(tmp_path, monkeypatch):
    from test_checkpoints import _edm_layout_pickle

    net = _net(VPPrecond, label_dim=4, **NCSN)
    src = tmp_path / "edm-cifar10-32x32-cond-vp.pkl"
    src.write_bytes(_edm_layout_pickle(dict(ema=net), monkeypatch))
    out = tmp_path / "network.pt"
    res = _run(["-m", "aot", "checkpoints", "import-edm", str(src), str(out)])
    assert res.returncode == 0, res.stderr[-3000:]
    loaded, meta = checkpoints.load_network(out)
    assert _weights_digest(loaded) == _weights_digest(net) and meta["sha256"] == checkpoints.sha256_file(src)


def test_network_file_round_trip_still_loads(tmp_path):
    net = _net(label_dim=4)
    path = tmp_path / "net.pt"
    save_network(path, net, model="m")
    loaded, _ = checkpoints.load_network(path)
    assert _weights_digest(loaded) == _weights_digest(net)
