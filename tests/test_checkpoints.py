"""aot.checkpoints: our network files, and safe import of NVlabs/edm snapshot pickles."""

from __future__ import annotations

import builtins
import io
import os
import pickle
import sys
import types
import zipfile

import pytest
import torch

from aot import checkpoints
from aot.checkpoints import (
    UnsafeCheckpointError,
    load_any_network,
    load_edm_pickle,
    load_network,
    save_edm_pickle,
    save_network,
    scan_pickle_globals,
)
from aot.cli import main as aot_main
from aot.errors import UserError
from aot.networks import EDMPrecond, VEPrecond, VPPrecond

SMALL = dict(img_resolution=8, img_channels=3, model_channels=8, channel_mult=[1, 2], num_blocks=1,
             attn_resolutions=[8], model_type="SongUNet")
NCSN = dict(embedding_type="fourier", encoder_type="residual", decoder_type="standard", channel_mult_noise=2,
            resample_filter=[1, 3, 3, 1])


def _net(cls=EDMPrecond, seed=0, **kw):
    torch.manual_seed(seed)
    net = cls(**{**SMALL, **kw})
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return net.eval()


def _inputs(label_dim=4):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 8, 8, generator=g)
    sigma = torch.tensor([0.2, 9.0])
    labels = torch.eye(label_dim)[:2] if label_dim else None
    aug = torch.randn(2, 9, generator=g) * 0.3
    return x, sigma, labels, aug


# ------------------------------------------------------------------------------------------------
# A snapshot pickle in EDM's layout, written here independently of aot.checkpoints: every module is
# a `torch_utils.persistence._reconstruct_persistent_obj(meta)` record holding the class name, the
# module's __dict__ (parameters, buffers, submodules, _init_args/_init_kwargs) and a source string.


def _edm_layout_pickle(obj, monkeypatch, module_src="raise SystemExit('embedded source must not run')\n"):
    fake_pkg = types.ModuleType("torch_utils")
    fake = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # only referenced by name in the pickle
        raise AssertionError("not to be called")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    fake._reconstruct_persistent_obj = _reconstruct_persistent_obj
    fake_pkg.persistence = fake
    monkeypatch.setitem(sys.modules, "torch_utils", fake_pkg)
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", fake)

    class EdmPickler(pickle.Pickler):
        def reducer_override(self, o):
            if isinstance(o, torch.nn.Module) and type(o).__module__ == "aot.networks":
                state = dict(o.__dict__)
                state["_init_args"] = ()
                state["_init_kwargs"] = dict(getattr(o, "init_kwargs", {}))
                meta = dict(type="class", version=6, module_src=module_src, class_name=type(o).__name__, state=state)
                return _reconstruct_persistent_obj, (meta,)
            return NotImplemented

    buf = io.BytesIO()
    EdmPickler(buf, protocol=4).dump(obj)
    return buf.getvalue()


class _LossRecord:
    """Stands in for EDM's EDMLoss when writing the test snapshot."""

    def __init__(self):
        self.P_mean, self.P_std, self.sigma_data = -1.2, 1.2, 0.5


@pytest.mark.parametrize("cls,kw", [(EDMPrecond, dict(label_dim=4, augment_dim=9)),
                                    (VPPrecond, dict(augment_dim=9, **NCSN)),
                                    (VEPrecond, dict(label_dim=4, **NCSN))])
def test_edm_layout_pickle_loads_and_matches(tmp_path, monkeypatch, cls, kw):
    net = _net(cls, **kw)
    snapshot = dict(ema=net, augment_pipe={"p": 0.12}, dataset_kwargs=dict(path="cifar10-32x32.zip", use_labels=True))
    data = _edm_layout_pickle(snapshot, monkeypatch)
    path = tmp_path / "network-snapshot-000100.pkl"
    path.write_bytes(data)
    globals_used = set(scan_pickle_globals(data))
    assert ("torch_utils.persistence", "_reconstruct_persistent_obj") in globals_used
    assert ("torch.nn.modules.container", "ModuleDict") in globals_used

    loaded = load_edm_pickle(path)
    ema = loaded["ema"]
    assert type(ema) is cls and not ema.training
    assert ema.init_kwargs == net.init_kwargs
    assert loaded["dataset_kwargs"] == snapshot["dataset_kwargs"]
    assert loaded["augment_pipe"] == {"p": 0.12}
    for a, b in zip(ema.state_dict().values(), net.state_dict().values()):
        assert torch.equal(a, b)
    x, sigma, labels, aug = _inputs(net.label_dim)
    with torch.no_grad():
        assert torch.equal(ema(x, sigma, labels, augment_labels=aug if net.model.map_augment is not None else None),
                           net(x, sigma, labels, augment_labels=aug if net.model.map_augment is not None else None))
    # sigma range as EDM reports it.
    if cls is VPPrecond:
        assert (ema.sigma_min, ema.sigma_max) == (float(ema.sigma(1e-5)), float(ema.sigma(1)))
        assert ema.sigma_min == pytest.approx(0.0009765625) and ema.sigma_max == pytest.approx(152.16698, rel=1e-6)
    elif cls is VEPrecond:
        assert (ema.sigma_min, ema.sigma_max) == (0.02, 100)
    else:
        assert (ema.sigma_min, ema.sigma_max) == (0, float("inf"))

    net2, meta = load_any_network(path)
    assert type(net2) is cls and meta["source"] == f"edm-pickle:{path}" and meta["aot"] is False
    assert meta["cond"] == (net.label_dim > 0) and meta["kimg"] is None


def test_other_snapshot_values_become_plain_records(tmp_path, monkeypatch):
    """Persistent non-network objects (EDM's loss_fn) come back as {"class_name", "init_kwargs", "state"}."""

    class EDMLoss(torch.nn.Module):
        pass

    EDMLoss.__module__ = "aot.networks"  # written as a persistent record by the test pickler
    loss = EDMLoss()
    loss.init_kwargs = {"P_mean": -1.2}
    loss.P_mean = -1.2
    data = _edm_layout_pickle(dict(ema=_net(), loss_fn=loss), monkeypatch)
    path = tmp_path / "s.pkl"
    path.write_bytes(data)
    out = load_edm_pickle(path)
    assert out["loss_fn"]["class_name"] == "EDMLoss"
    assert out["loss_fn"]["init_kwargs"] == {"P_mean": -1.2}
    assert out["loss_fn"]["state"]["P_mean"] == -1.2


def test_embedded_source_is_never_run(tmp_path, monkeypatch):
    marker = tmp_path / "ran.txt"
    src = f"open({str(marker)!r}, 'w').write('x')\n"
    path = tmp_path / "s.pkl"
    path.write_bytes(_edm_layout_pickle(dict(ema=_net()), monkeypatch, module_src=src))
    monkeypatch.delitem(sys.modules, "torch_utils")
    monkeypatch.delitem(sys.modules, "torch_utils.persistence")
    load_edm_pickle(path)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------
# Refusals.


class _System:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _Eval:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return (builtins.eval, (self.code,))


@pytest.mark.parametrize("protocol", [0, 2, 4])
@pytest.mark.parametrize("kind", ["system", "eval"])
def test_malicious_pickle_refused_without_effect(tmp_path, monkeypatch, protocol, kind):
    marker = tmp_path / "pwned"
    if kind == "system":
        evil, name = _System(f"touch {marker}"), rf"{os.system.__module__}\.system"
    else:  # protocols < 3 spell the module the Python 2 way
        evil, name = _Eval(f"open({str(marker)!r}, 'w').write('x')"), r"(builtins|__builtin__)\.eval"
    # The harmful object comes after a valid network record: nothing may run before the refusal.
    if protocol == 4:
        data = _edm_layout_pickle({"ema": _net(), "x": evil}, monkeypatch)
    else:
        data = pickle.dumps({"dataset_kwargs": {"a": 1}, "ema": evil}, protocol=protocol)
    path = tmp_path / "evil.pkl"
    path.write_bytes(data)
    with pytest.raises(UnsafeCheckpointError, match=name):
        load_edm_pickle(path)
    with pytest.raises(UnsafeCheckpointError, match=name):
        load_any_network(path)
    assert not marker.exists()
    assert issubclass(UnsafeCheckpointError, UserError)


def test_unlisted_torch_global_refused(tmp_path):
    path = tmp_path / "m.pkl"
    path.write_bytes(pickle.dumps({"ema": torch.nn.Linear(2, 2)}, protocol=4))
    with pytest.raises(UnsafeCheckpointError, match=r"torch\.nn\.modules\.linear\.Linear"):
        load_edm_pickle(path)


def test_truncated_and_foreign_files(tmp_path, monkeypatch):
    data = _edm_layout_pickle(dict(ema=_net()), monkeypatch)
    for cut in (len(data) // 2, len(data) - 1, 3):
        p = tmp_path / f"cut{cut}.pkl"
        p.write_bytes(data[:cut])
        with pytest.raises(UserError, match="truncated or not a pickle") as err:
            load_edm_pickle(p)
        assert not isinstance(err.value, UnsafeCheckpointError)
    text = tmp_path / "notes.pkl"
    text.write_text("hello, this is not a pickle\n")
    with pytest.raises(UserError, match="not a pickle"):
        load_edm_pickle(text)
    with pytest.raises(UserError, match="not a pickle"):
        load_any_network(text)
    other = tmp_path / "notes.txt"
    other.write_text("plain text")
    with pytest.raises(UserError, match="neither an aot network file nor an EDM pickle"):
        load_any_network(other)
    with pytest.raises(UserError, match="does not exist"):
        load_edm_pickle(tmp_path / "missing.pkl")
    ours = tmp_path / "net.pt"
    save_network(ours, _net(), model="m")
    with pytest.raises(UserError, match="zip checkpoint"):
        load_edm_pickle(ours)
    listing = tmp_path / "list.pkl"
    listing.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(UserError, match="not a snapshot dict"):
        load_edm_pickle(listing)


def test_non_finite_weights_refused(tmp_path, monkeypatch):
    net = _net()
    with torch.no_grad():
        net.model.map_layer0.weight[0, 0] = float("nan")
    p = tmp_path / "nan.pkl"
    p.write_bytes(_edm_layout_pickle(dict(ema=net), monkeypatch))
    with pytest.raises(UserError, match="non-finite values in model.map_layer0.weight"):
        load_edm_pickle(p)
    ours = tmp_path / "nan.pt"
    save_network(ours, net, model="m")
    with pytest.raises(UserError, match="non-finite"):
        load_network(ours)


def test_wrong_architecture_in_record_refused(tmp_path, monkeypatch):
    net = _net()
    net.init_kwargs = dict(net.init_kwargs, model_channels=16)  # record no longer matches the tensors
    p = tmp_path / "bad.pkl"
    p.write_bytes(_edm_layout_pickle(dict(ema=net), monkeypatch))
    with pytest.raises(UserError, match="do not match"):
        load_edm_pickle(p)


# ------------------------------------------------------------------------------------------------
# Our own format and conversions.


def test_save_load_round_trip(tmp_path):
    net = _net(VPPrecond, label_dim=4, augment_dim=9)
    path = tmp_path / "net.pt"
    save_network(path, net, model="aot-cond", aot=True, cond=True, kimg=12.5, source="trained")
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "aot-network/1" and raw["class_name"] == "VPPrecond"
    loaded, meta = load_network(path)
    assert meta["model"] == "aot-cond" and meta["aot"] is True and meta["kimg"] == 12.5
    assert not any(p.requires_grad for p in loaded.parameters())
    x, sigma, labels, aug = _inputs()
    with torch.no_grad():
        assert torch.equal(loaded(x, sigma, labels, augment_labels=aug), net(x, sigma, labels, augment_labels=aug))
    assert loaded.sigma_min == net.sigma_min and loaded.sigma_max == net.sigma_max
    assert load_any_network(path)[1]["model"] == "aot-cond"
    bad = tmp_path / "cut.pt"
    bad.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(UserError):
        load_network(bad)


def test_export_to_edm_layout_and_back(tmp_path):
    net = _net(VEPrecond, label_dim=4, **NCSN)
    path = tmp_path / "export.pkl"
    save_edm_pickle(path, net, dataset_kwargs={"path": "d.zip"})
    assert not zipfile.is_zipfile(path)
    names = {m for m, _ in scan_pickle_globals(path.read_bytes())}
    assert "torch_utils.persistence" in names and not any(n.startswith("aot") for n in names)
    back = load_edm_pickle(path)
    assert back["dataset_kwargs"] == {"path": "d.zip"}
    ours = tmp_path / "net.pt"
    save_network(ours, net, model="ve")
    aot_main(["checkpoints", "export-edm", str(ours), str(tmp_path / "cli.pkl")])
    assert torch.equal(load_edm_pickle(tmp_path / "cli.pkl")["ema"].model.map_layer0.weight,
                       net.model.map_layer0.weight)
    x, sigma, labels, _ = _inputs()
    with torch.no_grad():
        assert torch.equal(back["ema"](x, sigma, labels), net(x, sigma, labels))


def test_cli_import_edm_local_path(tmp_path, monkeypatch, capsys):
    net = _net(EDMPrecond, label_dim=4)
    src = tmp_path / "edm-cifar10-32x32-cond-vp.pkl"
    src.write_bytes(_edm_layout_pickle(dict(ema=net), monkeypatch))
    digest = checkpoints.sha256_file(src)
    out = tmp_path / "models" / "edm-cond" / "network-final.pt"
    aot_main(["checkpoints", "import-edm", str(src), str(out), "--sha256", digest, "--model-name", "edm-cond"])
    loaded, meta = load_network(out)
    assert meta["model"] == "edm-cond" and meta["aot"] is False and meta["cond"] is True
    assert meta["source"] == f"edm-pickle:{src}" and meta["kimg"] is None and meta["sha256"] == digest
    x, sigma, labels, _ = _inputs()
    with torch.no_grad():
        assert torch.equal(loaded(x, sigma, labels), net(x, sigma, labels))

    # Wrong checksum, malformed checksum, missing file, offline URL: exit 2, no output file.
    for args, msg in [(["--sha256", "0" * 64], "checksum mismatch"), (["--sha256", "xyz"], "64 hexadecimal"),
                      ([], None)]:
        bad_out = tmp_path / "bad.pt"
        source = str(src) if msg else str(tmp_path / "missing.pkl")
        with pytest.raises(SystemExit) as exc:
            aot_main(["checkpoints", "import-edm", source, str(bad_out), *args])
        assert exc.value.code == 2 and not bad_out.exists()
        err = capsys.readouterr().err
        assert err.startswith("error: ") and (msg or "does not exist") in err
    with pytest.raises(UserError, match="cannot download"):
        checkpoints.import_edm("http://127.0.0.1:9/edm.pkl", tmp_path / "never.pt")
    assert not (tmp_path / "never.pt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".import-edm")]


def test_equal_networks_give_byte_equal_files(tmp_path):
    """torch names the folder inside its zip after the file it writes; written through a file object
    the name is fixed, so two saves of one network (each via its own random temporary name) give the
    same bytes, in any folder and under any name."""
    from aot.checkpoints import save_network
    from aot.networks import EDMPrecond

    torch.manual_seed(0)
    net = EDMPrecond(img_resolution=8, img_channels=1, model_type="SongUNet", model_channels=16,
                     channel_mult=[1, 2], num_blocks=1, attn_resolutions=[])
    save_network(tmp_path / "a" / "network-final.pt", net, model="x")
    save_network(tmp_path / "b" / "other-name.pt", net, model="x")
    a, b = (tmp_path / "a" / "network-final.pt").read_bytes(), (tmp_path / "b" / "other-name.pt").read_bytes()
    assert a == b
    assert not any(".tmp" in n for n in zipfile.ZipFile(tmp_path / "a" / "network-final.pt").namelist())
