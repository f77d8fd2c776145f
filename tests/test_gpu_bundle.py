"""benchmarks/gpu_bundle.sh: the bundle for a lent GPU machine with no network installs offline and runs.

One bundle is built from tiny fake IDX files (the build needs the package registries, as CI has);
everything after that runs with no index and every proxy pointed at a closed loopback port, under
a bare venv's interpreter that has no omegaconf and no pip, as the GPU image has no omegaconf.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from conftest import REPO, require
from mnist_files import IDX_FILENAMES, TRAIN_IMAGES, write_fake_mnist

pytestmark = pytest.mark.slow

BUILD = REPO / "benchmarks" / "gpu_bundle.sh"
# Anything that tried the network would fail at once, on this machine's loopback.
CLOSED = "http://127.0.0.1:9"
OFFLINE = {"http_proxy": CLOSED, "https_proxy": CLOSED, "HTTP_PROXY": CLOSED, "HTTPS_PROXY": CLOSED, "no_proxy": ""}
TARGETS = [f"cp3{minor}-cp3{minor}-manylinux2014_{arch}" for minor in (11, 12, 13) for arch in ("x86_64", "aarch64")]


def build_env(**extra: str) -> dict[str, str]:
    """The environment minus the bundle's own settings, so CI's MNIST_DDP_DATA cannot leak in."""
    env = {k: v for k, v in os.environ.items() if k not in ("MNIST_DDP_DATA", "MNIST_DDP_BUNDLE_ANY_DATA", "PYTHON")}
    return {**env, "PYTHON": sys.executable, **extra}


def run(cmd: list[str], cwd: Path, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, cwd=cwd, env={**build_env(), **OFFLINE, **env}, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fake-mnist")
    write_fake_mnist(folder, n_train=8, n_test=4)
    return folder


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, fake_data) -> tuple[Path, str]:
    """A bundle built from the fake files with the explicit any-data flag; its path and build output."""
    out = tmp_path_factory.mktemp("built") / "gpu_bundle"
    r = subprocess.run(
        ["bash", str(BUILD), "--data", str(fake_data), str(out)],
        cwd=REPO,
        env=build_env(MNIST_DDP_BUNDLE_ANY_DATA="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if r.returncode and "are the package registries reachable?" in r.stderr:
        require(r.stderr.strip(), "the offline GPU bundle test")
    assert r.returncode == 0, r.stdout + r.stderr
    return out, r.stdout


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> str:
    """A fresh venv's interpreter with no pip and nothing installed: no omegaconf, no PyYAML, no torch."""
    folder = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=60)
    python = str(folder / "bin" / "python")
    for module in ("omegaconf", "yaml", "pip"):
        assert subprocess.run([python, "-c", f"import {module}"], capture_output=True).returncode == 1, module
    return python


def copy_bundle(bundle: Path, dest: Path) -> Path:
    """The bundle as built, without what an earlier run.sh added (site/, repo/)."""
    shutil.copytree(bundle, dest, ignore=shutil.ignore_patterns("site", "site.log", "repo"))
    return dest


def test_real_data_check_refuses_a_wrong_file(fake_data, tmp_path):
    """Without the flag, fake files are refused by the real MNIST md5s, in one line naming the file."""
    r = subprocess.run(
        ["bash", str(BUILD), "--data", str(fake_data), str(tmp_path / "out")],
        cwd=REPO,
        env=build_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1, r.stderr
    assert str(fake_data / TRAIN_IMAGES) in r.stderr
    assert "is not real MNIST's 6bbc9ace898e44ae57da46a324031adb" in r.stderr
    assert "MNIST_DDP_BUNDLE_ANY_DATA=1" in r.stderr
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no staging folder left behind


def test_bundle_holds_everything_and_md5sums_verify(bundle, fake_data):
    out, stdout = bundle
    assert "NOT checked against real MNIST's md5s" in stdout  # the flag is never silent
    listed = {line.split("  ", 1)[1] for line in (out / "MD5SUMS").read_text().splitlines()}
    assert {"run.sh", "repo.tar.gz", *(f"mnist/{name}.gz" for name in IDX_FILENAMES)} <= listed
    wheels = sorted(p.name for p in (out / "wheels").iterdir())
    # Pinned to the release the tests ran with, not pyproject.toml's range.
    tested = importlib.metadata.version("omegaconf")
    assert f"omegaconf-{tested}-py3-none-any.whl" in wheels and f"'omegaconf=={tested}' resolves offline" in stdout
    assert sum(w.startswith("omegaconf-") for w in wheels) == 1, wheels
    # The last lines say what to do with it: it is git-ignored, so it must travel with the checkout.
    assert "is git-ignored, so a copy of what git tracks leaves it behind" in stdout
    assert "run.sh --quick" in stdout.splitlines()[-2] and "gpu_check.log" in stdout.splitlines()[-2]
    for target in TARGETS:
        assert any(w.lower().startswith("pyyaml-") and target in w for w in wheels), (target, wheels)
    assert not any(w.startswith("wandb") for w in wheels)  # tracking imports it lazily; the device run disables it
    assert {f"wheels/{w}" for w in wheels} <= listed
    for name in IDX_FILENAMES:
        assert gzip.decompress((out / "mnist" / f"{name}.gz").read_bytes()) == (fake_data / name).read_bytes()
    with tarfile.open(out / "repo.tar.gz") as tar:
        names = set(tar.getnames())
    assert {
        "benchmarks/gpu_check.sh",
        "benchmarks/gpu_bundle.sh",
        "mnist_ddp/config/__main__.py",
        "configs/smoke.yaml",
    } <= names
    assert not any(n.startswith((".venv/", "gpu_bundle/", ".git/")) for n in names)
    r = subprocess.run(["md5sum", "-c", "--quiet", "MD5SUMS"], cwd=out, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_damaged_bundle_is_refused_before_anything_runs(bundle, bare_python, tmp_path):
    copy = copy_bundle(bundle[0], tmp_path / "gpu_bundle")
    damaged = next((copy / "wheels").glob("omegaconf-*.whl"))
    with damaged.open("ab") as f:
        f.write(b"\0")
    r = subprocess.run(["md5sum", "-c", "--quiet", "MD5SUMS"], cwd=copy, capture_output=True, text=True)
    assert r.returncode != 0
    assert f"wheels/{damaged.name}: FAILED" in r.stdout
    r = run(["bash", str(copy / "run.sh"), "--install-only"], cwd=tmp_path, PYTHON=bare_python)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1, r.stderr
    assert f"{damaged} does not match MD5SUMS" in r.stderr
    assert not (copy / "site").exists()


@pytest.mark.parametrize("installer", ["pip", "no pip"])
def test_installs_offline_and_a_fresh_interpreter_runs_the_config(bundle, bare_python, installer):
    """run.sh installs wheels/ with no index (with pip --target, or by unzipping where the image has
    no pip), and the bare interpreter, given only PYTHONPATH=site:repo, prints the config as YAML."""
    out = bundle[0]
    python = sys.executable if installer == "pip" else bare_python
    # The bundle sits outside any checkout here, so run.sh extracts repo.tar.gz.
    r = run(["bash", str(out / "run.sh"), "--install-only", "--quick"], cwd=out.parent, PYTHON=python)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "bundle: md5 ok" in r.stdout
    assert ("pip, no index" if installer == "pip" else "unzipped, no pip") in r.stdout
    assert f"into {out / 'site'}" in r.stdout
    assert f"imported from {out / 'site' / 'omegaconf'}" in r.stdout
    assert f"extracted repo.tar.gz into {out / 'repo'}" in r.stdout
    assert "not running bash benchmarks/gpu_check.sh --quick" in r.stdout
    # `python -m mnist_ddp.config` needs torch (mnist_ddp/__init__.py refuses -m without it), so
    # the bare interpreter calls its main() the way -m would.
    code = "import sys; from mnist_ddp.config.__main__ import main; sys.exit(main(sys.argv[1:]))"
    r = run(
        [bare_python, "-c", code, "--config", "configs/smoke.yaml", "train.epochs=3"],
        cwd=out / "repo",
        PYTHONPATH=f"{out / 'site'}:{out / 'repo'}",
        MNIST_DDP_DATA=str(out / "mnist"),
    )
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load(r.stdout)
    assert cfg["data"]["dataset"] == "digits"
    assert cfg["train"]["epochs"] == 3
    assert cfg["data"]["root"] == str(out / "mnist")


def test_inside_a_checkout_it_runs_gpu_check_with_the_bundle(bundle, bare_python, tmp_path):
    """In a checkout (as the device tool copies the working tree), run.sh uses it and execs
    benchmarks/gpu_check.sh with the arguments and environment; here a stub stands in for it."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    with tarfile.open(bundle[0] / "repo.tar.gz") as tar:
        tar.extractall(checkout, filter="data")
    stub = checkout / "benchmarks" / "gpu_check.sh"
    stub.write_text(
        'echo "args: $*"; echo "data: $MNIST_DDP_DATA"; echo "wandb: $WANDB_MODE"; echo "path: $PYTHONPATH"\n'
        '"$PYTHON" -c "import omegaconf, yaml, mnist_ddp.config; print(\'imports ok\')"\n'
    )
    copy = copy_bundle(bundle[0], checkout / "gpu_bundle")
    r = run(["bash", "gpu_bundle/run.sh", "--quick", "train.epochs=1"], cwd=checkout, PYTHON=bare_python)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"using the checkout at {checkout}" in r.stdout
    assert not (copy / "repo").exists()
    assert "args: --quick train.epochs=1" in r.stdout
    assert f"data: {copy / 'mnist'}" in r.stdout
    assert "wandb: disabled" in r.stdout
    assert f"path: {copy / 'site'}:{checkout}" in r.stdout
    assert "imports ok" in r.stdout
    log = (copy / "gpu_check.log").read_text()  # the terminal's lines, kept in the bundle as well
    assert "args: --quick train.epochs=1" in log and "imports ok" in log and "md5 ok" in log
