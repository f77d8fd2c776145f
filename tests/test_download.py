"""mnist_ddp.download against a local HTTP server: md5 checks, mirror fallback, timeouts, no debris."""

from __future__ import annotations

import gzip
import hashlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from mnist_files import IDX_FILENAMES, IMAGES_MAGIC, LABELS_MAGIC, fake_images, idx_bytes

from mnist_ddp.base.errors import InputError
from mnist_ddp.config.schema import DataConfig
from mnist_ddp.data import download, readers
from mnist_ddp.data import splits as data_splits

GZ_NAMES = [name + ".gz" for name in IDX_FILENAMES]
TIMEOUT = 2.0  # per request; generous for a local server, short enough to notice a hang


@dataclass
class Server:
    """A local mirror host. ``GET /<mirror>/<file>`` serves ``files[(mirror, file)]``, else 404.

    The mirror ``slow`` answers nothing until the test ends. Every request path is logged in ``requests``.
    """

    url: str
    files: dict[tuple[str, str], bytes] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def mirror(self, name: str, slash: bool = True) -> str:
        return f"{self.url}/{name}" + ("/" if slash else "")


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """Talk to 127.0.0.1 directly even where the environment sets a proxy."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")


@pytest.fixture
def server() -> Iterator[Server]:
    """A ThreadingHTTPServer on 127.0.0.1 (free port) in a daemon thread, shut down after the test."""
    release = threading.Event()
    state = Server(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            mirror, _, name = self.path.strip("/").partition("/")
            if mirror == "slow":
                release.wait(30)
                return
            body = state.files.get((mirror, name))
            if body is None:
                self.send_error(404, "Not Found")
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # keep test output clean
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@dataclass
class Fake:
    """Fake MNIST as the mirrors would serve it: arrays, their .gz bytes and those bytes' md5s."""

    arrays: dict[str, np.ndarray]
    gz: dict[str, bytes]  # by file name, e.g. "train-images-idx3-ubyte.gz"
    md5: dict[str, str]  # by IDX_NAMES key, like download.GZ_MD5


@pytest.fixture
def fake(monkeypatch) -> Fake:
    """Small gzipped IDX files, with download.GZ_MD5 patched to their md5s."""
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": fake_images(12, rng),
        "train_labels": rng.integers(0, 10, 12, dtype=np.uint8),
        "test_images": fake_images(5, rng, start=12),
        "test_labels": rng.integers(0, 10, 5, dtype=np.uint8),
    }
    gz, md5 = {}, {}
    for key, array in arrays.items():
        magic = IMAGES_MAGIC if key.endswith("images") else LABELS_MAGIC
        body = gzip.compress(idx_bytes(array, magic), mtime=0)
        gz[download.IDX_NAMES[key] + ".gz"] = body
        md5[key] = hashlib.md5(body).hexdigest()
    monkeypatch.setattr(download, "GZ_MD5", md5)
    return Fake(arrays, gz, md5)


def serve(server: Server, mirror: str, files: dict[str, bytes]) -> str:
    """Put ``files`` (name -> bytes) on ``mirror``; returns the mirror's base URL."""
    for name, body in files.items():
        server.files[(mirror, name)] = body
    return server.mirror(mirror)


def corrupted(files: dict[str, bytes]) -> dict[str, bytes]:
    """The same files with one byte flipped: same size, wrong md5."""
    return {name: body[:-1] + bytes([body[-1] ^ 0xFF]) for name, body in files.items()}


def config(root: Path, mirrors: list[str], timeout: float = TIMEOUT, **kwargs) -> DataConfig:
    return DataConfig(root=str(root), mirrors=mirrors, download=True, download_timeout_seconds=timeout, **kwargs)


def assert_loaded(splits: data_splits.Splits, fake: Fake) -> None:
    np.testing.assert_array_equal(splits.train_images.numpy(), fake.arrays["train_images"].reshape(12, 784))
    np.testing.assert_array_equal(splits.train_labels.numpy(), fake.arrays["train_labels"])
    np.testing.assert_array_equal(splits.test_images.numpy(), fake.arrays["test_images"].reshape(5, 784))
    np.testing.assert_array_equal(splits.test_labels.numpy(), fake.arrays["test_labels"])


def test_download_good_files(server, fake, tmp_path, capsys):
    root = tmp_path / "data"  # does not exist yet
    good = serve(server, "good", fake.gz)
    splits = data_splits.load_splits(config(root, [good]), seed=0)
    assert_loaded(splits, fake)
    assert sorted(p.name for p in root.iterdir()) == sorted(GZ_NAMES)  # no temp files left
    for name in GZ_NAMES:
        assert (root / name).read_bytes() == fake.gz[name]
    assert sorted(server.requests) == sorted(f"/good/{name}" for name in GZ_NAMES)
    assert f"downloaded {good}{GZ_NAMES[0]} -> {root / GZ_NAMES[0]}" in capsys.readouterr().out
    # A second load finds the files and downloads nothing.
    server.requests.clear()
    assert_loaded(data_splits.load_splits(config(root, [good]), seed=0), fake)
    assert server.requests == []


def test_mirror_without_trailing_slash(server, fake, tmp_path):
    serve(server, "good", fake.gz)
    assert_loaded(data_splits.load_splits(config(tmp_path, [server.mirror("good", slash=False)]), seed=0), fake)
    assert sorted(server.requests) == sorted(f"/good/{name}" for name in GZ_NAMES)


def test_only_missing_files_are_downloaded(server, fake, tmp_path):
    for name in GZ_NAMES[:2]:  # the train files are already there
        (tmp_path / name).write_bytes(fake.gz[name])
    good = serve(server, "good", fake.gz)
    assert_loaded(data_splits.load_splits(config(tmp_path, [good]), seed=0), fake)
    assert sorted(server.requests) == sorted(f"/good/{name}" for name in GZ_NAMES[2:])


def test_bad_md5_then_good_mirror(server, fake, tmp_path):
    bad = serve(server, "bad", corrupted(fake.gz))
    good = serve(server, "good", fake.gz)
    assert_loaded(data_splits.load_splits(config(tmp_path, [bad, good]), seed=0), fake)
    # Each file was tried on the bad mirror first, then fetched from the good one.
    expected = [f"/{m}/{name}" for name in GZ_NAMES for m in ("bad", "good")]
    assert server.requests == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(GZ_NAMES)
    for name in GZ_NAMES:
        assert (tmp_path / name).read_bytes() == fake.gz[name]


def test_bad_md5_everywhere(server, fake, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    bad1 = serve(server, "bad1", corrupted(fake.gz))
    bad2 = serve(server, "bad2", corrupted(fake.gz))
    with pytest.raises(InputError) as info:
        data_splits.load_splits(config(root, [bad1, bad2]), seed=0)
    message = str(info.value)
    assert f"could not download {GZ_NAMES[0]}" in message
    assert f"{bad1}{GZ_NAMES[0]}: md5 " in message and f"{bad2}{GZ_NAMES[0]}: md5 " in message
    assert f"!= {fake.md5['train_images']}" in message
    assert f"missing from {root}: {', '.join(IDX_FILENAMES)};" in message
    assert list(root.iterdir()) == []  # not even a temp file


def test_404_moves_to_next_mirror(server, fake, tmp_path):
    empty = server.mirror("empty")
    good = serve(server, "good", fake.gz)
    assert_loaded(data_splits.load_splits(config(tmp_path, [empty, good]), seed=0), fake)
    assert server.requests[:2] == [f"/empty/{GZ_NAMES[0]}", f"/good/{GZ_NAMES[0]}"]


def test_404_everywhere(server, fake, tmp_path):
    empty = server.mirror("empty")
    with pytest.raises(InputError) as info:
        data_splits.load_splits(config(tmp_path, [empty]), seed=0)
    message = str(info.value)
    # The failure names the URL and the HTTP status.
    assert f"{empty}{GZ_NAMES[0]}: HTTP Error 404: Not Found" in message
    assert list(tmp_path.iterdir()) == []


def test_partial_failure_lists_only_what_is_still_missing(server, fake, tmp_path):
    partial = serve(server, "partial", {GZ_NAMES[0]: fake.gz[GZ_NAMES[0]]})
    with pytest.raises(InputError) as info:
        data_splits.load_splits(config(tmp_path, [partial]), seed=0)
    message = str(info.value)
    assert f"could not download {GZ_NAMES[1]}" in message
    assert f"missing from {tmp_path}: {', '.join(IDX_FILENAMES[1:])};" in message
    # The file that did arrive stays, complete, for the next attempt.
    assert [p.name for p in tmp_path.iterdir()] == [GZ_NAMES[0]]
    assert (tmp_path / GZ_NAMES[0]).read_bytes() == fake.gz[GZ_NAMES[0]]


def test_timeout(server, fake, tmp_path):
    slow = server.mirror("slow")
    start = time.monotonic()
    with pytest.raises(InputError) as info:
        data_splits.load_splits(config(tmp_path / "data", [slow], timeout=0.5), seed=0)
    elapsed = time.monotonic() - start
    assert 0.4 < elapsed < 5, elapsed
    assert f"{slow}{GZ_NAMES[0]}: timed out" in str(info.value)
    assert not (tmp_path / "data").exists()


def test_unreachable_mirror_creates_nothing(fake, tmp_path):
    root = tmp_path / "data"
    closed = "http://127.0.0.1:1/"
    start = time.monotonic()
    with pytest.raises(InputError) as info:
        data_splits.load_splits(config(root, [closed]), seed=0)
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert f"could not download {GZ_NAMES[0]} ({closed}{GZ_NAMES[0]}: " in message
    assert f"missing from {root}: {', '.join(IDX_FILENAMES)};" in message
    assert not root.exists()


def test_no_mirrors(fake, tmp_path):
    with pytest.raises(InputError, match=r"data\.mirrors is empty"):
        data_splits.load_splits(config(tmp_path / "data", []), seed=0)
    assert not (tmp_path / "data").exists()


def test_download_mnist_directly(server, fake, tmp_path):
    """The function itself, with an explicit subset of keys."""
    good = serve(server, "good", fake.gz)
    download.download_mnist(tmp_path, [good], TIMEOUT, ["test_labels"])
    assert [p.name for p in tmp_path.iterdir()] == [GZ_NAMES[3]]
    np.testing.assert_array_equal(readers.read_labels(tmp_path / GZ_NAMES[3]), fake.arrays["test_labels"])
