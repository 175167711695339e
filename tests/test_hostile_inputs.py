"""Hostile inputs, second ring: datasets, sample sets, FID statistics, results, declared sizes,
training states and `extra_args` that lie (docs/limits.md states the limits they meet).

Each crafted input is written here, small, next to honest inputs made once for the module, and read
through the real command (`python -m aot ...`) in a process of its own under an address-space
limit (RLIMIT_AS), so that a file that declares a huge size is refused before anything is
allocated, not by running out of memory. Each must end with exit code 2 and exactly one line
`error: ...` on stderr naming the file and what is wrong: no traceback, no signal (returncode >= 0),
no output left, no input changed, nothing written to its temporary folder ($TMPDIR: nothing is
extracted) and nothing outside its folder touched (a link's target stays as it was). The honest
twins pass the same commands under the same limit.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import resource
import stat
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import warm

ROOT = Path(__file__).resolve().parents[1]
N = 16  # images of the honest dataset (3x8x8, 4 classes)
CLASSES = 4


def _vm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 4 << 30


# Address space a command may map: torch, numpy, scipy and aot take about 4 GiB of it, so this
# leaves about 2 GiB to work in, far below what any of the crafted files asks for.
AS_LIMIT = max(6 << 30, _vm_bytes() + (5 << 29))
TRAIN = ["--arch", "ddpmpp", "--cbase", "8", "--cres", "1,2", "--num-blocks", "1", "--attn", "", "--batch", "16",
         "--batch-gpu", "16", "--pool-size", "16", "--lr", "2e-3", "--lr-rampup", "0", "--ema", "0.0005",
         "--dropout", "0", "--augment", "0", "--tick", "0.016", "--dump", "1", "--snap", "1000", "--device", "cpu",
         "--threads", "1", "--seed", "0"]


# ------------------------------------------------------------------------------------------------
# Running a command in a folder of its own, and what it must leave behind


def _env(folder: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AOT_MAX_")}
    return {**env, "OMP_NUM_THREADS": "1", "TMPDIR": str(folder / ".tmp")}


def _run(folder: Path, args: list[str], timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    """`python -m aot ARGS` in `folder` (its own $TMPDIR), under AS_LIMIT: (result, seconds)."""
    (folder / ".tmp").mkdir(exist_ok=True)
    t0 = time.monotonic()
    res = warm.run([sys.executable, "-m", "aot", *args], capture_output=True, text=True, timeout=timeout,
                   cwd=folder, env=_env(folder), rlimits={resource.RLIMIT_AS: (AS_LIMIT, AS_LIMIT)})
    return res, time.monotonic() - t0


def _snapshot(folder: Path) -> dict:
    """Every entry under `folder` (links, FIFOs and devices not followed or read): what it is and holds."""
    out = {}
    for root, dirs, files in os.walk(folder):
        if Path(root) == folder and ".tmp" in dirs:
            dirs.remove(".tmp")  # $TMPDIR: checked on its own
            out[".tmp"] = ("dir",)
            _tmp_entries(folder / ".tmp", out)
        for name in dirs + files:
            p = Path(root) / name
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[str(p.relative_to(folder))] = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                out[str(p.relative_to(folder))] = ("file", hashlib.sha256(p.read_bytes()).hexdigest(), st.st_mtime_ns)
            else:
                out[str(p.relative_to(folder))] = (stat.S_IFMT(st.st_mode),)
    return out


def _tmp_entries(tmp: Path, out: dict) -> None:
    for p in sorted(tmp.rglob("*")):
        out[f".tmp/{p.relative_to(tmp)}"] = (stat.S_IFDIR,) if p.is_dir() and not p.is_symlink() else ("entry",)


def _one_error_line(res: subprocess.CompletedProcess, *fragments: str) -> str:
    lines = res.stderr.strip().splitlines()
    assert res.returncode >= 0, f"killed by signal {-res.returncode}\n{res.stderr[-3000:]}"
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert res.returncode == 2, f"returncode {res.returncode}\n{res.stderr[-3000:]}"
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _refused(folder: Path, args: list[str], *fragments: str, outside: Path | None = None,
             seconds: float = 60) -> str:
    """Run `args` in `folder` and check the refusal: one line holding `fragments`, nothing written
    in `folder` (its inputs unchanged, no output, no file in $TMPDIR), `outside` untouched, and
    refused within `seconds` (nothing hangs on a FIFO or works through a declared size)."""
    (folder / ".tmp").mkdir(exist_ok=True)
    before, far = _snapshot(folder), _snapshot(outside) if outside else None
    res, took = _run(folder, args)
    line = _one_error_line(res, *fragments)
    after = _snapshot(folder)
    temporary = [k for k, v in after.items() if k.startswith(".tmp/") and v[0] != stat.S_IFDIR]
    assert not temporary, f"files written to $TMPDIR: {temporary}"  # (torch may make its empty cache folder)
    assert {k: v for k, v in after.items() if not k.startswith(".tmp/")} == before, \
        "the command left or changed a file in its folder"
    if outside is not None:
        assert _snapshot(outside) == far, "a file outside the command's folder changed"
    assert took < seconds, took
    return line


def _case_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "case"
    folder.mkdir()
    return folder


# ------------------------------------------------------------------------------------------------
# Honest inputs (made once for the module)


def _images(n: int = N, res: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, res, res, 3), dtype=np.uint8)


def _png(width: int, height: int, pixels: bytes = b"") -> bytes:
    """A PNG (8-bit RGB) whose header declares width x height; its data holds `pixels` only."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(pixels)) + chunk(b"IEND", b"")


def _honest_png(seed: int = 0) -> bytes:
    import PIL.Image

    buf = io.BytesIO()
    PIL.Image.fromarray(_images(1, seed=seed)[0]).save(buf, format="png")
    return buf.getvalue()


@pytest.fixture(scope="module")
def honest(tmp_path_factory) -> dict:
    """A dataset (zip and folder), a network, a feature network, reference statistics, a sample set,
    FID results and a training state (of `aot train` itself): each the honest twin of crafted files."""
    from aot import fid, metrics
    from aot.checkpoints import save_network
    from aot.data import write_dataset
    from aot.networks import EDMPrecond
    from aot.samples import write_sample_set

    root = tmp_path_factory.mktemp("honest-inputs")
    images = _images()
    labels = np.arange(N) % CLASSES
    write_dataset(root / "data.zip", iter(images), labels, total=N)
    write_dataset(root / "folder", iter(images), labels, total=N)
    torch.manual_seed(0)
    net = EDMPrecond(img_resolution=8, img_channels=3, label_dim=0, model_type="SongUNet", model_channels=16,
                     channel_mult=[1], num_blocks=1, attn_resolutions=[], dropout=0.0)
    save_network(root / "net.pt", net, model="toy", aot=False, cond=False, kimg=0.0, source="trained")
    featnet, info = metrics.train_feature_net(images.transpose(0, 3, 1, 2), labels, epochs=1, width=8,
                                              feature_dim=8)
    metrics.save_feature_net(root / "featnet.pt", featnet, **info)
    fid.reference(out=root / "ref.npz", data=root / "data.zip", features=str(root / "featnet.pt"), device="cpu")
    meta = {"model": {"name": "toy"}, "sampler": {"key": "heun-n2"}, "seeds": [0, N - 1], "fingerprint": "f" * 64}
    write_sample_set(root / "samples.npz", _images(seed=1), np.full(N, -1), np.arange(N), meta)
    for rep in range(2):
        (root / f"fid{rep}.json").write_text(json.dumps({"kind": "fid", "fid": 10.0 + rep, "repeat": rep,
                                                         "model": {"name": "toy"}, "sampler": {"key": "heun-n2"},
                                                         "feature_network": {"name": "offline-classifier"}}))
    res, _ = _run(root, ["train", "--outdir", str(root / "run"), "--data", str(root / "data.zip"),
                         "--duration", "0.000016", *TRAIN])
    assert res.returncode == 0, res.stderr[-3000:]
    return {"root": root, "state": root / "run" / "training-state.pt"}


def _inputs(honest: dict, *names: str) -> list[str]:
    return [str(honest["root"] / n) for n in names]


# ------------------------------------------------------------------------------------------------
# 1. The dataset reader: links, FIFOs, bombs, huge images, encryption, compression, JSON, labels


def _zip(path: Path, members: dict, symlinks: dict | None = None, compress: int = zipfile.ZIP_STORED) -> None:
    """A dataset zip: `members` name -> bytes, `symlinks` name -> target (symbolic-link members)."""
    with zipfile.ZipFile(path, "w", compress) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3  # unix: external_attr holds the file type
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)


def _patch_member(path: Path, name: str, flags: int = 0, method: int | None = None) -> None:
    """Set general-purpose `flags` bits and the compression `method` of member `name`, in its local
    header and its central-directory entry (what another zip tool would have written)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    central = data.index(b"PK\x01\x02")  # the first central-directory entry, then the one named `name`
    while True:
        n = struct.unpack_from("<H", data, central + 28)[0]
        if data[central + 46:central + 46 + n] == name.encode():
            break
        central = data.index(b"PK\x01\x02", central + 4)
    for header, flag_at in ((info.header_offset, 6), (central, 8)):
        struct.pack_into("<H", data, header + flag_at, struct.unpack_from("<H", data, header + flag_at)[0] | flags)
        if method is not None:
            struct.pack_into("<H", data, header + flag_at + 2, method)
    path.write_bytes(bytes(data))


def _dataset_members(n: int = 4, labels: object = "auto") -> dict:
    members = {f"00000/img{i:08d}.png": _honest_png(i) for i in range(n)}
    if labels == "auto":
        labels = [[name, i % 2] for i, name in enumerate(members)]
    if labels is not None:
        members["dataset.json"] = json.dumps({"labels": labels}).encode()
    return members


def _deflated_zeros(path: Path, name: str, nbytes: int) -> None:
    """A zip with one deflated member of `nbytes` zero bytes (a few hundred kB on disk)."""
    chunk = bytes(1 << 20)
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open(zipfile.ZipInfo(name), "w") as f:
            for _ in range(nbytes // len(chunk)):
                f.write(chunk)


IMG1 = "00000/img00000001.png"


def _crafted_dataset(case: str, folder: Path, outside: Path) -> tuple[Path, tuple[str, ...]]:
    """(dataset path, fragments its refusal names) of a crafted dataset."""
    path = folder / "data.zip"
    members = _dataset_members()
    if case == "folder-image-links-to-dev-zero":
        path = folder / "data"
        path.mkdir()
        for name, data in members.items():
            (path / name).parent.mkdir(exist_ok=True)
            if name != IMG1:
                (path / name).write_bytes(data)
        os.symlink("/dev/zero", path / IMG1)
        return path, (IMG1, "is a symbolic link")
    if case == "folder-image-links-outside":
        path = folder / "data"
        path.mkdir()
        for name, data in members.items():
            (path / name).parent.mkdir(exist_ok=True)
            (path / name).write_bytes(data)
        (path / IMG1).unlink()
        os.symlink(outside / "real.png", path / IMG1)
        return path, (IMG1, "is a symbolic link")
    if case == "folder-image-is-a-fifo":
        path = folder / "data"
        path.mkdir()
        for name, data in members.items():
            (path / name).parent.mkdir(exist_ok=True)
            if name != IMG1:
                (path / name).write_bytes(data)
        os.mkfifo(path / IMG1)
        return path, (IMG1, "not a regular file")
    if case == "zip-member-is-a-symlink":
        del members[IMG1]
        _zip(path, members, symlinks={IMG1: "/dev/zero"})
        return path, (IMG1, "is a symbolic link")
    if case == "zip-member-unpacks-to-300-MiB":
        del members[IMG1]
        _zip(path, members)
        _deflated_zeros(path, IMG1, 300 << 20)
        return path, (IMG1, "unpacks to 314572800 bytes", "AOT_MAX_MEMBER_BYTES")
    if case == "png-declares-100000x100000":
        members[IMG1] = _png(100_000, 100_000, bytes(300))
        _zip(path, members)
        return path, (IMG1, "100000x100000", "AOT_MAX_IMAGE_PIXELS")
    if case == "first-png-declares-100000x100000":  # the first image is decoded, not only its header read
        members["00000/img00000000.png"] = _png(100_000, 100_000, bytes(300))
        _zip(path, members)
        return path, ("img00000000.png", "AOT_MAX_IMAGE_PIXELS")
    if case == "zip-member-encrypted":
        _zip(path, members)
        _patch_member(path, IMG1, flags=0x1)
        return path, (IMG1, "is encrypted")
    if case == "zip-member-unknown-compression":
        _zip(path, members)
        _patch_member(path, IMG1, method=93)  # Zstandard: not in this reader
        return path, (IMG1, "compressed with method 93, which is not supported")
    if case == "dataset-json-nested-100000-deep":
        members["dataset.json"] = ('{"labels": ' + "[" * 100_000 + "]" * 100_000 + "}").encode()
        _zip(path, members)
        return path, ("dataset.json", "more than 100 levels deep")
    if case == "label-a-31-digit-integer":
        labels = [[name, 10 ** 30 if name == IMG1 else 0] for name in members if name.endswith(".png")]
        members["dataset.json"] = json.dumps({"labels": labels}).encode()
        _zip(path, members)
        return path, ("dataset.json", IMG1, "outside the class range 0..9999", "AOT_MAX_CLASSES")
    if case == "label-a-billion-classes":
        labels = [[name, 10 ** 9 if name == IMG1 else 0] for name in members if name.endswith(".png")]
        members["dataset.json"] = json.dumps({"labels": labels}).encode()
        _zip(path, members)
        return path, ("dataset.json", IMG1, "1000000000, outside the class range")
    raise KeyError(case)


DATASET_CASES = ["dataset-json-nested-100000-deep", "first-png-declares-100000x100000",
                 "folder-image-is-a-fifo", "folder-image-links-outside", "folder-image-links-to-dev-zero",
                 "label-a-31-digit-integer", "label-a-billion-classes", "png-declares-100000x100000",
                 "zip-member-encrypted", "zip-member-is-a-symlink", "zip-member-unknown-compression",
                 "zip-member-unpacks-to-300-MiB"]


@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder beside the command's, holding a file that crafted links point to."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "real.png").write_bytes(_honest_png(7))
    return folder


@pytest.mark.parametrize("case", DATASET_CASES)
def test_hostile_dataset(tmp_path, outside, record_fault, case):
    folder = _case_folder(tmp_path)
    path, fragments = _crafted_dataset(case, folder, outside)
    line = _refused(folder, ["data", "check", str(path)], str(path), *fragments, outside=outside)
    record_fault("hostile file", f"dataset: {case}", line)


# The same reader behind every command that reads a dataset; `labels` cases need class labels.
READERS = {
    "data info": lambda d, o, h: ["data", "info", d],
    "data import": lambda d, o, h: ["data", "import", "--source", d, "--dest", f"{o}/d.zip", "--copy"],
    "train --cond": lambda d, o, h: ["train", "--outdir", f"{o}/run", "--data", d, "--cond", "--duration", "0.000016",
                                     *TRAIN],
    "dg train --cond": lambda d, o, h: ["dg", "train", "--data", d, "--samples", *_inputs(h, "samples.npz"),
                                        "--out", f"{o}/dg", "--cond", "--epochs", "1", "--device", "cpu"],
    "fid train-features": lambda d, o, h: ["fid", "train-features", "--data", d, "--out", f"{o}/f.pt", "--epochs", "1"],
    "fid reference": lambda d, o, h: ["fid", "reference", "--data", d, "--features", *_inputs(h, "featnet.pt"),
                                      "--out", f"{o}/ref.npz"],
}


@pytest.mark.parametrize("case", ["label-a-billion-classes", "zip-member-is-a-symlink"])
@pytest.mark.parametrize("command", sorted(READERS))
def test_every_command_reads_datasets_through_the_checks(tmp_path, outside, honest, record_fault, command, case):
    folder = _case_folder(tmp_path)
    path, fragments = _crafted_dataset(case, folder, outside)
    line = _refused(folder, READERS[command](str(path), str(folder / "out"), honest), *fragments)
    record_fault("hostile file", f"dataset ({command}): {case}", line)


# ------------------------------------------------------------------------------------------------
# 2. Sample sets: metadata and declared array sizes (`fid measure`)


def _npz(path: Path, arrays: dict, raw: dict | None = None) -> None:
    """An npz of `arrays`, plus `raw` members (name -> bytes of a crafted .npy)."""
    with zipfile.ZipFile(path, "w") as zf:
        for key, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arr), allow_pickle=False)
            zf.writestr(f"{key}.npy", buf.getvalue())
        for key, data in (raw or {}).items():
            zf.writestr(f"{key}.npy", data)


def _npy_header(shape: tuple, descr: str = "|u1") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _sample_case(case: str, honest: dict) -> tuple[dict, dict, tuple[str, ...]]:
    with np.load(honest["root"] / "samples.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    if case == "meta-nested-100000-deep":
        return {**arrays, "meta": np.array('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")}, {}, (
            "'meta'", "more than 100 levels deep")
    if case == "meta-a-json-list":
        return {**arrays, "meta": np.array("[1, 2, 3]")}, {}, ("'meta' is a JSON list, not an object",)
    if case == "meta-holds-nan":
        return {**arrays, "meta": np.array('{"time_s": NaN}')}, {}, ("'meta'", "NaN is not a number JSON allows")
    if case == "images-declare-3-TB":
        rest = {k: v for k, v in arrays.items() if k != "images"}
        return rest, {"images": _npy_header((10 ** 6, 1024, 1024, 3)) + bytes(1000)}, (
            "'images'", "3145728000000 bytes", "AOT_MAX_ARRAY_BYTES")
    if case == "labels-one-too-many":
        return {**arrays, "labels": np.full(N + 1, -1)}, {}, ("'labels' must be one integer per image",)
    raise KeyError(case)


SAMPLE_CASES = ["images-declare-3-TB", "labels-one-too-many", "meta-a-json-list", "meta-holds-nan",
                "meta-nested-100000-deep"]


@pytest.mark.parametrize("case", SAMPLE_CASES)
def test_hostile_sample_set(tmp_path, honest, record_fault, case):
    folder = _case_folder(tmp_path)
    arrays, raw, fragments = _sample_case(case, honest)
    src = folder / f"{case}.npz"
    _npz(src, arrays, raw)
    line = _refused(folder, ["fid", "measure", "--samples", str(src), "--ref", *_inputs(honest, "ref.npz"),
                             "--out", str(folder / "out" / "x.json")], str(src), *fragments)
    record_fault("hostile file", f"sample set: {case}", line)


# ------------------------------------------------------------------------------------------------
# 3. FID reference statistics (`fid measure --ref`)


def _reference_case(case: str, honest: dict) -> tuple[dict, tuple[str, ...]]:
    with np.load(honest["root"] / "ref.npz", allow_pickle=False) as z:
        ref = {k: z[k] for k in z.files}
    d = ref["mu"].shape[0]
    cases = {
        "sigma-not-positive-semi-definite": ({"sigma": -np.eye(d)}, "'sigma' is not positive semi-definite"),
        "sigma-not-symmetric": ({"sigma": np.triu(np.ones((d, d)))}, "'sigma' is not symmetric"),
        "sigma-wrong-shape": ({"sigma": np.eye(d)[:, :-1]}, f"'sigma' is [{d}, {d - 1}], not [{d}, {d}]"),
        "mu-holds-nan": ({"mu": np.full(d, np.nan)}, "'mu' holds NaN values"),
        "mu-a-text": ({"mu": np.array("0.5")}, "'mu' is <U3 [], not a float array [D]"),
        "channels-a-text": ({"channels": np.array("three")}, "'channels' is <U5 [], not a whole number"),
        "resolution-a-float": ({"resolution": np.array(8.5)}, "'resolution' is float64 [], not a whole number"),
    }
    change, fragment = cases[case]
    return {**ref, **change}, (fragment,)


REFERENCE_CASES = ["channels-a-text", "mu-a-text", "mu-holds-nan", "resolution-a-float",
                   "sigma-not-positive-semi-definite", "sigma-not-symmetric", "sigma-wrong-shape"]


@pytest.mark.parametrize("case", REFERENCE_CASES)
def test_hostile_reference_statistics(tmp_path, honest, record_fault, case):
    folder = _case_folder(tmp_path)
    arrays, fragments = _reference_case(case, honest)
    src = folder / f"{case}.npz"
    _npz(src, arrays)
    line = _refused(folder, ["fid", "measure", "--samples", *_inputs(honest, "samples.npz"), "--ref", str(src),
                             "--out", str(folder / "out" / "x.json")], f"reference statistics {src}", *fragments)
    record_fault("hostile file", f"FID reference statistics: {case}", line)


# ------------------------------------------------------------------------------------------------
# 4. Result files behind `fid aggregate` and the report


RESULT_CASES = {
    "nested-100000-deep": ('{"kind": "fid", "fid": ' + "[" * 100_000 + "]" * 100_000 + "}",
                           "more than 100 levels deep"),
    "fid-is-nan": ('{"kind": "fid", "fid": NaN, "model": {"name": "toy"}}', "NaN is not a number JSON allows"),
    "fid-overflows-to-infinity": ('{"kind": "fid", "fid": 1e999, "model": {"name": "toy"}}',
                                  "'fid' is 'inf', not a finite number"),
    "model-a-string": ('{"kind": "fid", "fid": 3.0, "model": "toy"}', "'model' is a JSON str, not an object"),
}
REPORT_CASES = ["fid-is-nan", "nested-100000-deep"]


@pytest.mark.parametrize("case", sorted(RESULT_CASES))
def test_hostile_result_aggregated(tmp_path, honest, record_fault, case):
    folder = _case_folder(tmp_path)
    text, fragment = RESULT_CASES[case]
    src = folder / f"{case}.json"
    src.write_text(text)
    line = _refused(folder, ["fid", "aggregate", *_inputs(honest, "fid0.json"), str(src), "--out",
                             str(folder / "out" / "agg.json")], str(src), fragment)
    record_fault("hostile file", f"FID result (fid aggregate): {case}", line)


@pytest.mark.parametrize("case", REPORT_CASES)
def test_hostile_result_in_the_report(tmp_path, record_fault, case):
    folder = _case_folder(tmp_path)
    text, fragment = RESULT_CASES[case]
    src = folder / f"{case}.json"
    src.write_text(text)
    line = _refused(folder, ["report", "table", "--table", "1", "--out-prefix", str(folder / "out" / "t1"),
                             str(src)], str(src), fragment)
    record_fault("hostile file", f"FID result (report table): {case}", line)


# ------------------------------------------------------------------------------------------------
# 5. Declared sizes: a tensor view whose zero strides repeat a few stored bytes 10^14 times


HUGE_VIEW = (10 ** 7, 10 ** 7)


def _huge_view() -> torch.Tensor:
    return torch.zeros(1).expand(*HUGE_VIEW)  # stride (0, 0): one stored float, 10^14 elements


def _view_case(command: str, honest: dict, folder: Path) -> list[str]:
    src = folder / "crafted.pt"
    root = honest["root"]
    if command == "generate":
        payload = torch.load(root / "net.pt", weights_only=True)
        first = next(iter(payload["state_dict"]))
        payload["state_dict"][first] = _huge_view()
        torch.save(payload, src)
        return ["generate", "--network", str(src), "--seeds", "0-1", "--steps", "2", "--batch", "2", "--device",
                "cpu", "--out", str(folder / "out" / "g.npz")]
    if command == "dg import":
        torch.save({"input_blocks.0.0.weight": _huge_view()}, src)  # DG's layout: a bare state dict
        return ["dg", "import", str(src), "--out", str(folder / "out" / "d.pt")]
    if command == "fid measure --features":
        payload = torch.load(root / "featnet.pt", weights_only=True)
        first = next(iter(payload["state_dict"]))
        payload["state_dict"][first] = _huge_view()
        torch.save(payload, src)
        return ["fid", "measure", "--samples", *_inputs(honest, "samples.npz"), "--ref", *_inputs(honest, "ref.npz"),
                "--features", str(src), "--out", str(folder / "out" / "x.json")]
    raise KeyError(command)


@pytest.mark.parametrize("command", ["dg import", "fid measure --features", "generate"])
def test_tensor_view_larger_than_its_file(tmp_path, honest, record_fault, command):
    folder = _case_folder(tmp_path)
    args = _view_case(command, honest, folder)
    assert (folder / "crafted.pt").stat().st_size < 1 << 20
    line = _refused(folder, args, str(folder / "crafted.pt"), "tensors hold more than 4294967296 bytes",
                    "AOT_MAX_TENSOR_BYTES", seconds=20)
    record_fault("hostile file", f"zero-stride tensor view of 10^14 elements ({command})", line)


# ------------------------------------------------------------------------------------------------
# 6. Training states: counters and the pool's containers (`train --resume require`)


def _state_case(case: str, honest: dict) -> tuple[dict, str]:
    st = torch.load(honest["state"], weights_only=True)
    rank = st["ranks"][0]
    cases = {
        "cur-nimg-infinite": ({**st, "cur_nimg": float("inf")}, "cur_nimg is inf, not a whole number"),
        "cur-tick-31-digits": ({**st, "cur_tick": 10 ** 30}, "cur_tick is 1000000000000000000000000000000, outside"),
        "pool-state-a-list": ({**st, "ranks": [{**rank, "pool": [1, 2]}]},
                              "ranks[0].pool holds a list where a dict was expected"),
        "pool-index-a-float": ({**st, "ranks": [{**rank, "pool": {**rank["pool"], "pool_index": 1.5}}]},
                               "ranks[0].pool.pool_index is 1.5, not a whole number"),
        "optimizer-state-a-list": ({**st, "optimizer": {**st["optimizer"], "state": [1]}},
                                   "optimizer state holds a list where a dict was expected"),
        "rng-state-a-text": ({**st, "ranks": [{**rank, "rng": {"torch_cpu": "seed"}}]},
                             "ranks[0].rng.torch_cpu is not a random generator's state"),
    }
    return cases[case]


STATE_CASES = ["cur-nimg-infinite", "cur-tick-31-digits", "optimizer-state-a-list", "pool-index-a-float",
               "pool-state-a-list", "rng-state-a-text"]


def _resume_args(honest: dict, out: Path) -> list[str]:
    return ["train", "--outdir", str(out), "--data", *_inputs(honest, "data.zip"), "--duration", "0.000032",
            "--resume", "require", *TRAIN]


@pytest.mark.parametrize("case", STATE_CASES)
def test_hostile_training_state(tmp_path, honest, record_fault, case):
    folder = _case_folder(tmp_path)
    payload, fragment = _state_case(case, honest)
    out = folder / "run"
    out.mkdir()
    torch.save(payload, out / "training-state.pt")
    line = _refused(folder, _resume_args(honest, out), str(out / "training-state.pt"), fragment)
    record_fault("hostile file", f"training state: {case}", line)


# ------------------------------------------------------------------------------------------------
# 7. training.extra_args: options of `aot train`, never shell code


def test_extra_args_shell_code_is_refused_at_config_time(tmp_path, record_fault):
    """A config whose extra_args would run a command in the train job's shell stops the workflow before
    any job, with one config error, and the command never runs."""
    import yaml

    cfg = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    cfg["training"]["extra_args"] = f"--P-mean -1.1; touch {tmp_path / 'PWNED'}"
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(cfg))
    res = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--snakefile", str(ROOT / "Snakefile"),
                          "--directory", str(tmp_path), "--configfile", str(config)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    out = res.stdout + res.stderr
    lines = [line for line in out.splitlines() if line.startswith("config error: ")]
    assert res.returncode != 0 and len(lines) == 1, out[-3000:]
    assert "training.extra_args: the argument '-1.1;' holds a character other than" in lines[0], lines[0]
    assert "Traceback" not in out and not (tmp_path / "PWNED").exists()
    record_fault("bad input", "config: extra_args with shell code", f"Snakemake stops before any job: `{lines[0]}`")


EXTRA_ARGS = {
    "command substitution": ("--seed $(id)", "holds a character other than"),
    "backticks": ("--P-mean `id`", "holds a character other than"),
    "line break": ("--solver lapjv\nreboot", "holds a line break or tab"),
    "unbalanced quote": ("--P-mean '-1.1", "is not a list of arguments (No closing quotation)"),
    "unknown option": ("--bogus 1", "unrecognized arguments: --bogus 1"),
    "bad value": ("--P-mean high", "--P-mean must be a number, got 'high'"),
    "option the config sets": ("--lr 1", "--lr is set by the config or the train rule already"),
    "option the rule sets (abbreviated)": ("--outd /elsewhere", "--outdir is set by the config or the train rule"),
    "help": ("--help", "--help is not an option a training job can take"),
}


@pytest.mark.parametrize("case", sorted(EXTRA_ARGS))
def test_extra_args_are_checked_against_the_train_parser(case):
    import copy

    import yaml

    from aot.settings import ConfigError, RunSettings

    value, fragment = EXTRA_ARGS[case]
    cfg = copy.deepcopy(yaml.safe_load((ROOT / "config" / "demo.yaml").read_text()))
    cfg["training"]["extra_args"] = value
    with pytest.raises(ConfigError) as err:
        RunSettings.load(cfg, schema=ROOT / "workflow" / "schemas" / "config.schema.yaml",
                         paper=ROOT / "config" / "config.yaml")
    assert str(err.value).startswith("config error: training.extra_args: ") and fragment in str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_extra_args_honest_twin_is_a_list_of_arguments():
    import yaml

    from aot.settings import RunSettings

    cfg = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    cfg["training"]["extra_args"] = "--P-mean -1.1 --P-std=1.3 --deterministic"
    run = RunSettings.load(cfg, schema=ROOT / "workflow" / "schemas" / "config.schema.yaml",
                           paper=ROOT / "config" / "config.yaml")
    for model in run.trained:
        assert run.train_extra_args(model) == ["--P-mean", "-1.1", "--P-std=1.3", "--deterministic"]


# ------------------------------------------------------------------------------------------------
# The honest twins, through the same commands under the same limit


def test_the_memory_limit_is_in_force(tmp_path):
    """Under AS_LIMIT a command that allocates what a crafted file declares fails (and would fail the
    tests above): the refusals are made before allocating, not by a machine with memory to spare."""
    res = warm.run([sys.executable, "-c", f"import numpy; numpy.ones({AS_LIMIT}, numpy.uint8)"], capture_output=True,
                   text=True, timeout=60, cwd=tmp_path, env=_env(tmp_path),
                   rlimits={resource.RLIMIT_AS: (AS_LIMIT, AS_LIMIT)})
    assert res.returncode != 0 and "MemoryError" in res.stderr, res.stderr[-2000:]


def _honest_args(case: str, honest: dict, folder: Path) -> list[str]:
    root = honest["root"]
    out = folder / "out"
    return {
        "data check (zip)": ["data", "check", str(root / "data.zip"), "--labels", "--classes", str(CLASSES)],
        "data check (folder)": ["data", "check", str(root / "folder"), "--labels", "--classes", str(CLASSES)],
        "fid measure": ["fid", "measure", "--samples", str(root / "samples.npz"), "--ref", str(root / "ref.npz"),
                        "--out", str(out / "x.json")],
        "fid aggregate": ["fid", "aggregate", str(root / "fid0.json"), str(root / "fid1.json"), "--out",
                          str(out / "agg.json")],
        "generate": ["generate", "--network", str(root / "net.pt"), "--seeds", "0-1", "--steps", "2", "--batch", "2",
                     "--device", "cpu", "--out", str(out / "g.npz")],
    }[case]


@pytest.mark.parametrize("case", ["data check (folder)", "data check (zip)", "fid aggregate", "fid measure",
                                  "generate"])
def test_honest_twin_passes(tmp_path, honest, case):
    folder = _case_folder(tmp_path)
    res, _ = _run(folder, _honest_args(case, honest, folder))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    if case == "fid measure":
        assert np.isfinite(json.loads((folder / "out" / "x.json").read_text())["fid"])


def test_honest_training_state_resumes(tmp_path, honest):
    import shutil

    folder = _case_folder(tmp_path)
    out = folder / "run"
    out.mkdir()
    shutil.copy(honest["state"], out / "training-state.pt")
    res, _ = _run(folder, _resume_args(honest, out))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Resuming from" in res.stdout and (out / "network-final.pt").is_file()
