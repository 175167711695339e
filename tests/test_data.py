"""EDM-format datasets: CIFAR-10 and digits preparation, loading, checksums and bad archives."""

import hashlib
import http.server
import io
import json
import pickle
import tarfile
import threading
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from aot import data
from aot.cli import main as aot_main
from aot.data import ImageFolderDataset, load_all
from aot.errors import UserError

PER_BATCH = 3


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _cifar_pickle(arr, labels, name, bytes_keys=False):
    d = {"batch_label": f"training batch {name}", "labels": [int(x) for x in labels], "data": arr,
         "filenames": [f"img_{i}.png" for i in range(len(labels))]}
    if bytes_keys:
        d = {k.encode(): v for k, v in d.items()}
    raw = pickle.dumps(d, protocol=2)
    # the official files were pickled with numpy.core.*; numpy 2 writes numpy._core.*
    return raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def make_cifar_tarball(path, seed=0, skip=(), extra=None, per_batch=PER_BATCH):
    """A tiny tarball with the structure of cifar-10-python.tar.gz; returns (images NHWC, labels)."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    with tarfile.open(path, "w:gz") as tar:
        def add(name, payload):
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))

        for b in range(1, 6):
            arr = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
            lab = rng.integers(0, 10, per_batch)
            if b == 1:
                lab[0] = 9
            if f"data_batch_{b}" not in skip:
                add(f"data_batch_{b}", _cifar_pickle(arr, lab, b, bytes_keys=(b == 2)))
            images.append(arr.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(lab)
        add("test_batch", _cifar_pickle(rng.integers(0, 256, (2, 3072), dtype=np.uint8), [1, 2], "test"))
        add("batches.meta", pickle.dumps({"label_names": ["airplane"] * 10, "num_cases_per_batch": per_batch,
                                          "num_vis": 3072}, protocol=2))
        for name, payload in (extra or {}).items():
            add(name, payload)
    return np.concatenate(images), np.concatenate(labels)


@pytest.fixture
def tarball(tmp_path):
    path = tmp_path / "tiny-cifar.tar.gz"
    images, labels = make_cifar_tarball(path)
    return path, images, labels


def _md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def _run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        aot_main(["data", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# -- CIFAR-10 -----------------------------------------------------------------------------------


def test_cifar_roundtrip_zip(tmp_path, tarball, capsys):
    path, images, labels = tarball
    dest = tmp_path / "out" / "cifar.zip"
    aot_main(["data", "cifar10", "--source", str(path), "--md5", _md5(path), "--dest", str(dest)])
    assert "wrote 15 images" in capsys.readouterr().out
    with zipfile.ZipFile(dest) as z:
        names = z.namelist()
        assert names[:2] == ["00000/img00000000.png", "00000/img00000001.png"] and names[-1] == "dataset.json"
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_STORED}
        meta = json.loads(z.read("dataset.json"))
        assert meta == {"labels": [[f"00000/img{i:08d}.png", int(lab)] for i, lab in enumerate(labels)]}
        assert z.read("dataset.json").startswith(b'{"labels": [["00000/img00000000.png", ')
    ds = ImageFolderDataset(dest)
    assert (len(ds), ds.resolution, ds.num_channels, ds.label_dim, ds.has_labels) == (15, 32, 3, 10, True)
    assert ds.name == "cifar" and ds.has_onehot_labels
    imgs, labs = load_all(ds)
    np.testing.assert_array_equal(imgs, images.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(labs, labels)
    img, onehot = ds[4]
    assert img.dtype == np.uint8 and img.shape == (3, 32, 32) and onehot.dtype == np.float32
    np.testing.assert_array_equal(onehot, np.eye(10, dtype=np.float32)[labels[4]])
    assert not list(dest.parent.glob(".*"))  # no temporary files left


def test_cifar_folder_and_zip_load_equal(tmp_path, tarball):
    path, images, labels = tarball
    data.prepare_cifar10(str(path), tmp_path / "c.zip")
    data.prepare_cifar10(str(path), tmp_path / "cdir")
    assert (tmp_path / "cdir" / "00000" / "img00000014.png").is_file()
    assert (tmp_path / "cdir" / "dataset.json").is_file()
    dz, dd = ImageFolderDataset(tmp_path / "c.zip"), ImageFolderDataset(tmp_path / "cdir")
    a, b = load_all(dz), load_all(dd)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    for i in (0, 7, 14):
        np.testing.assert_array_equal(dz[i][0], dd[i][0])
        np.testing.assert_array_equal(dz[i][1], dd[i][1])
    assert dz.name == "c" and dd.name == "cdir"


def test_cifar_checksum_mismatch(tmp_path, tarball, capsys):
    path, _, _ = tarball
    dest = tmp_path / "c.zip"
    msg = _run_cli(["cifar10", "--source", str(path), "--md5", "0" * 32, "--dest", str(dest)], capsys)
    assert "wrong md5 checksum" in msg and str(path) in msg
    msg = _run_cli(["cifar10", "--source", str(path), "--sha256", "ab" * 32, "--dest", str(dest)], capsys)
    assert "wrong sha256 checksum" in msg
    assert list(tmp_path.iterdir()) == [path]


def test_official_name_checked_against_official_md5(tmp_path, capsys):
    path = tmp_path / "cifar-10-python.tar.gz"
    make_cifar_tarball(path)
    msg = _run_cli(["cifar10", "--source", str(path), "--dest", str(tmp_path / "c.zip")], capsys)
    assert data.CIFAR10_MD5 in msg
    aot_main(["data", "cifar10", "--source", str(path), "--md5", _md5(path), "--dest", str(tmp_path / "c.zip")])


@pytest.mark.parametrize("keep", [4000, 300, 10])
def test_cifar_truncated(tmp_path, tarball, capsys, keep):
    path, _, _ = tarball
    bad = tmp_path / "trunc.tar.gz"
    bad.write_bytes(path.read_bytes()[:keep])
    msg = _run_cli(["cifar10", "--source", str(bad), "--dest", str(tmp_path / "c.zip")], capsys)
    assert "truncated or corrupt" in msg and "trunc.tar.gz" in msg
    assert not (tmp_path / "c.zip").exists()


def test_cifar_missing_batch_and_unsafe_pickle(tmp_path, capsys):
    bad = tmp_path / "nob5.tar.gz"
    make_cifar_tarball(bad, skip=("data_batch_5",))
    msg = _run_cli(["cifar10", "--source", str(bad), "--dest", str(tmp_path / "c.zip")], capsys)
    assert "no member cifar-10-batches-py/data_batch_5" in msg

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("echo pwned",))

    evil = tmp_path / "evil.tar.gz"
    make_cifar_tarball(evil, skip=("data_batch_3",),
                       extra={"data_batch_3": pickle.dumps({"data": Evil(), "labels": []}, protocol=2)})
    msg = _run_cli(["cifar10", "--source", str(evil), "--dest", str(tmp_path / "c.zip")], capsys)
    assert "refusing to load" in msg and "system" in msg
    assert not (tmp_path / "c.zip").exists()
    msg = _run_cli(["cifar10", "--source", str(tmp_path / "nope.tar.gz"), "--dest", str(tmp_path / "c.zip")], capsys)
    assert "does not exist" in msg


def test_cifar_download_with_checksum(tmp_path, tarball):
    path, images, _ = tarball
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(path.parent)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{path.name}"
        out = tmp_path / "dl"
        out.mkdir()
        kept = out / "cifar-10-python.tar.gz"
        n = data.prepare_cifar10(url, out / "c.zip", md5=_md5(path), download_to=kept)
        assert n == 15 and kept.read_bytes() == path.read_bytes()
        np.testing.assert_array_equal(load_all(ImageFolderDataset(out / "c.zip"))[0], images.transpose(0, 3, 1, 2))
        with pytest.raises(UserError, match="wrong md5"):  # default: the official checksum
            data.prepare_cifar10(url, out / "d.zip")
        with pytest.raises(UserError, match="cannot download"):
            data.prepare_cifar10(url + ".missing", out / "d.zip")
        assert sorted(p.name for p in out.iterdir()) == ["c.zip", "cifar-10-python.tar.gz"]
    finally:
        server.shutdown()


# -- digits -------------------------------------------------------------------------------------


@pytest.mark.parametrize("res", [8, 16])
def test_digits(tmp_path, res):
    from sklearn.datasets import load_digits

    dest = tmp_path / f"digits{res}.zip"
    aot_main(["data", "digits", "--resolution", str(res), "--dest", str(dest)])
    ds = ImageFolderDataset(dest)
    assert (len(ds), ds.resolution, ds.num_channels, ds.label_dim) == (1797, res, 1, 10)
    imgs, labels = load_all(ds)
    ref = load_digits()
    np.testing.assert_array_equal(labels, ref.target)
    assert sorted(set(labels.tolist())) == list(range(10))
    assert imgs.shape == (1797, 1, res, res) and imgs.max() == 255 and imgs.min() == 0
    if res == 8:
        np.testing.assert_array_equal(imgs[:, 0], np.rint(ref.images * 255 / 16).astype(np.uint8))
    else:  # a resize of the 8x8 image: its 2x2 block means stay close
        small = imgs[:, 0].reshape(-1, 8, 2, 8, 2).mean(axis=(2, 4))
        assert np.abs(small - ref.images * 255 / 16).mean() < 20


def test_digits_bad_resolution(tmp_path, capsys):
    msg = _run_cli(["digits", "--resolution", "12", "--dest", str(tmp_path / "d.zip")], capsys)
    assert "power of two" in msg
    msg = _run_cli(["digits", "--resolution", "-8", "--dest", str(tmp_path / "d.zip")], capsys)
    assert "--resolution" in msg
    assert list(tmp_path.iterdir()) == []


# -- loading: EDM behaviour and errors ----------------------------------------------------------


def _png(arr):
    buf = io.BytesIO()
    PIL.Image.fromarray(arr).save(buf, format="png")
    return buf.getvalue()


def _write_zip(path, files):
    with zipfile.ZipFile(path, "w") as z:
        for name, payload in files.items():
            z.writestr(name, payload)


def test_max_size_and_xflip(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
    data.write_dataset(tmp_path / "d.zip", images, list(range(10)))
    ds = ImageFolderDataset(tmp_path / "d.zip", xflip=True)
    assert len(ds) == 20
    np.testing.assert_array_equal(ds[13][0], images[3].transpose(2, 0, 1)[:, :, ::-1])
    imgs, labels = load_all(ds)
    np.testing.assert_array_equal(imgs[10:], imgs[:10, :, :, ::-1])
    np.testing.assert_array_equal(labels, list(range(10)) * 2)
    sub = ImageFolderDataset(tmp_path / "d.zip", max_size=4, random_seed=3)
    idx = np.arange(10)
    np.random.RandomState(3).shuffle(idx)
    expected = np.sort(idx[:4])
    np.testing.assert_array_equal(load_all(sub)[1], expected)
    nolab = ImageFolderDataset(tmp_path / "d.zip", use_labels=False)
    assert not nolab.has_labels and nolab[0][1].shape == (0,) and load_all(nolab)[1] is None


def test_grayscale_folder_without_labels(tmp_path):
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    a = np.arange(16, dtype=np.uint8).reshape(4, 4)
    (tmp_path / "imgs" / "sub" / "b.png").write_bytes(_png(a))
    (tmp_path / "imgs" / "a.png").write_bytes(_png(255 - a))
    ds = ImageFolderDataset(tmp_path / "imgs")
    assert (len(ds), ds.num_channels, ds.resolution, ds.has_labels) == (2, 1, 4, False)
    np.testing.assert_array_equal(ds[0][0][0], 255 - a)  # sorted names: a.png, sub/b.png
    with pytest.raises(UserError, match="no dataset.json, but labels are required"):
        ImageFolderDataset(tmp_path / "imgs", require_labels=True)
    (tmp_path / "imgs" / "dataset.json").write_text('{"labels": null}')
    with pytest.raises(UserError, match="holds no labels"):
        ImageFolderDataset(tmp_path / "imgs", require_labels=True)


@pytest.mark.parametrize("case,message", [
    ("mixed_res", "mixes image shapes: 00000/img00000001.png is 3x8x8"),
    ("mixed_channels", "mixes image shapes: 00000/img00000001.png is 1x4x4"),
    ("non_square", "is not square (8x4)"),
    ("missing_label", "has no label for 00000/img00000001.png"),
    ("bad_json", "dataset.json is malformed"),
    ("corrupt_png", "cannot be"),
    ("no_images", "contains no image files"),
])
def test_bad_datasets(tmp_path, case, message):
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    files = {"00000/img00000000.png": _png(rgb), "00000/img00000001.png": _png(rgb),
             "dataset.json": json.dumps({"labels": [["00000/img00000000.png", 0], ["00000/img00000001.png", 1]]})}
    if case == "mixed_res":
        files["00000/img00000001.png"] = _png(np.zeros((8, 8, 3), dtype=np.uint8))
    elif case == "mixed_channels":
        files["00000/img00000001.png"] = _png(np.zeros((4, 4), dtype=np.uint8))
    elif case == "non_square":
        files["00000/img00000000.png"] = _png(np.zeros((4, 8, 3), dtype=np.uint8))
    elif case == "missing_label":
        files["dataset.json"] = json.dumps({"labels": [["00000/img00000000.png", 0]]})
    elif case == "bad_json":
        files["dataset.json"] = "{not json"
    elif case == "corrupt_png":
        files["00000/img00000001.png"] = _png(rgb)[:20]
    elif case == "no_images":
        files = {"dataset.json": "{}"}
    _write_zip(tmp_path / "bad.zip", files)
    with pytest.raises(UserError) as exc:
        ImageFolderDataset(tmp_path / "bad.zip")
    assert message in str(exc.value) and "bad.zip" in str(exc.value)


def test_missing_truncated_and_foreign_archives(tmp_path, capsys):
    with pytest.raises(UserError, match="does not exist"):
        ImageFolderDataset(tmp_path / "nothing.zip")
    data.write_dataset(tmp_path / "ok.zip", np.zeros((3, 4, 4, 3), dtype=np.uint8), [0, 1, 2])
    raw = (tmp_path / "ok.zip").read_bytes()
    (tmp_path / "trunc.zip").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        ImageFolderDataset(tmp_path / "trunc.zip")
    (tmp_path / "x.tar").write_bytes(b"abc")
    with pytest.raises(UserError, match="neither a folder nor a .zip"):
        ImageFolderDataset(tmp_path / "x.tar")
    msg = _run_cli(["info", str(tmp_path / "trunc.zip")], capsys)
    assert "trunc.zip" in msg


def test_write_dataset_rejects_mixed_shapes_atomically(tmp_path):
    imgs = [np.zeros((4, 4, 3), np.uint8), np.zeros((8, 8, 3), np.uint8)]
    with pytest.raises(UserError, match="mixed resolutions or channels"):
        data.write_dataset(tmp_path / "m.zip", imgs, [0, 1])
    with pytest.raises(UserError, match="must be square"):
        data.write_dataset(tmp_path / "m.zip", [np.zeros((4, 8, 3), np.uint8)])
    with pytest.raises(UserError, match="mixed resolutions or channels"):
        data.write_dataset(tmp_path / "mdir", imgs)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        data.write_dataset(tmp_path / "full", imgs[:1])


def test_info_cli(tmp_path, capsys):
    data.write_dataset(tmp_path / "d.zip", np.zeros((5, 4, 4), dtype=np.uint8), [0, 2, 2, 1, 0])
    capsys.readouterr()
    aot_main(["data", "info", str(tmp_path / "d.zip")])
    info = json.loads(capsys.readouterr().out)
    assert info["resolution"] == 4 and info["channels"] == 1 and info["count"] == 5
    assert info["labels"] is True and info["label_dim"] == 3 and info["class_counts"] == [2, 1, 2]


def test_download_command_and_checksum_words(tmp_path, tarball, capsys):
    path, _, _ = tarball
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(path.parent)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{path.name}"
        dest = tmp_path / "dl" / "cifar-10-python.tar.gz"
        aot_main(["data", "download", "--url", url, "--md5", _md5(path), "--dest", str(dest)])
        assert dest.read_bytes() == path.read_bytes()
        msg = _run_cli(["download", "--url", url, "--md5", "f" * 32, "--dest", str(tmp_path / "dl2" / "x.tgz")], capsys)
        assert "wrong md5 checksum" in msg and url in msg
        assert not (tmp_path / "dl2").exists() or list((tmp_path / "dl2").iterdir()) == []
        msg = _run_cli(["download", "--url", url, "--md5", "xyz", "--dest", str(tmp_path / "y.tgz")], capsys)
        assert "not a 32-digit hexadecimal checksum" in msg
    finally:
        server.shutdown()
    # an empty --md5 (as a workflow passes an unset value) means "not given": the official one applies
    msg = _run_cli(["cifar10", "--source", str(dest), "--md5", "", "--dest", str(tmp_path / "c.zip")], capsys)
    assert data.CIFAR10_MD5 in msg
    aot_main(["data", "cifar10", "--source", str(dest), "--md5", "none", "--dest", str(tmp_path / "c.zip")])
    assert len(ImageFolderDataset(tmp_path / "c.zip")) == 15


# -- aot.files.download: atomic, retried, checked -------------------------------------------------


class FlakyHandler(http.server.BaseHTTPRequestHandler):
    """Serves `payload` at /file; the first `failures` requests get `fault` instead."""

    payload = b""
    failures = 0
    fault = "500"
    requests: list[str] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        cls = type(self)
        cls.requests.append(self.path)
        if self.path != "/file":
            self.send_error(404)
            return
        if len(cls.requests) <= cls.failures:
            if cls.fault == "500":
                self.send_error(500)
                return
            # "drop": promise the whole body, send half of it and close the connection
            self.send_response(200)
            self.send_header("Content-Length", str(len(cls.payload)))
            self.end_headers()
            self.wfile.write(cls.payload[: len(cls.payload) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(cls.payload)))
        self.end_headers()
        self.wfile.write(cls.payload)


@pytest.fixture
def flaky_server():
    handler = type("Handler", (FlakyHandler,), {"payload": np.random.default_rng(0).bytes(50_000), "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize("fault", ["500", "drop"])
def test_download_retries_after_a_failed_attempt(tmp_path, flaky_server, fault):
    from aot.files import download

    handler, base = flaky_server
    handler.failures, handler.fault = 1, fault
    digest = hashlib.sha256(handler.payload).hexdigest()
    dest = tmp_path / "dl" / "file.bin"
    assert download(f"{base}/file", dest, sha256=digest, md5=hashlib.md5(handler.payload).hexdigest()) == digest
    assert dest.read_bytes() == handler.payload and handler.requests == ["/file", "/file"]
    assert [p.name for p in dest.parent.iterdir()] == ["file.bin"]  # no temporary file left


def test_download_gives_up_and_does_not_retry_what_cannot_change(tmp_path, flaky_server):
    from aot.files import download

    handler, base = flaky_server
    handler.failures = 10
    with pytest.raises(UserError, match=r"cannot download .* \(3 attempts\): HTTP 500"):
        download(f"{base}/file", tmp_path / "a.bin", retries=2)
    assert len(handler.requests) == 3
    handler.requests.clear()
    with pytest.raises(UserError, match="HTTP 404"):  # not found: final at once
        download(f"{base}/missing", tmp_path / "b.bin")
    assert handler.requests == ["/missing"] and list(tmp_path.iterdir()) == []


def test_download_wrong_checksum_leaves_nothing(tmp_path, flaky_server):
    from aot.files import download

    handler, base = flaky_server
    got = hashlib.sha256(handler.payload).hexdigest()
    dest = tmp_path / "file.bin"
    with pytest.raises(UserError) as exc:
        download(f"{base}/file", dest, sha256="ab" * 32)
    msg = str(exc.value)
    assert str(dest) in msg and f"{base}/file" in msg and got in msg and "ab" * 32 in msg and "\n" not in msg
    assert handler.requests == ["/file"]  # a mismatch is not retried
    assert list(tmp_path.iterdir()) == []
    dest.write_bytes(b"older file")  # a failed download leaves an existing file as it was
    with pytest.raises(UserError, match="wrong md5 checksum"):
        download(f"{base}/file", dest, md5="0" * 32)
    assert dest.read_bytes() == b"older file" and list(tmp_path.iterdir()) == [dest]
    with pytest.raises(UserError, match="not a 64-digit hexadecimal checksum"):
        download(f"{base}/file", dest, sha256="xyz")
