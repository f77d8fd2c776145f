"""The GPU check scripts, as far as a CPU can run them: the preflight's refusal, the kill/resume
check's mid-epoch resume, gpu.sh's per-row limit and its targets table, and their imports."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys

import torch
from conftest import REPO

BENCHMARKS = REPO / "benchmarks"
WEIGHTS = 198_922  # smoke.yaml's model on digits' 64 pixels


def gpu_check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", BENCHMARKS / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_preflight_refuses_a_cpu_only_torch_in_one_line_before_any_check():
    r = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_check.py"), "--quick"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        f"gpu_check: error: torch {__import__('torch').__version__} (a CPU-only build) sees no GPU;"
        " run this on the GPU machine, with its torch"
    ]
    assert r.stdout.startswith("python 3.") and "PASS" not in r.stdout and "FAIL" not in r.stdout


def test_the_kill_and_resume_check_resumes_mid_epoch_to_the_same_weights(tmp_path):
    # Check 3's own arguments and kill step, on the CPU (graphs off): where it resumes, and that
    # its comparison finds the weights equal.
    gpu_check = gpu_check_module()
    args = [*gpu_check.RESUMABLE, "train.device=cpu"]
    env = {**os.environ, "WANDB_MODE": "disabled"}

    def train(run: str, **extra: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "mnist_ddp.train", *args, f"run.dir={tmp_path / run}", "log.plots=false"]
        return subprocess.run(cmd, cwd=REPO, env={**env, **extra}, capture_output=True, text=True, timeout=180)

    assert train("ref").returncode == 0
    assert train("kill", MNIST_DDP_TEST_FAULT=f"kill:0:{gpu_check.KILL_STEP}").returncode == -9
    resumed = train("kill")
    assert resumed.returncode == 0, resumed.stderr
    where = re.search(r"resuming from .*: epoch (\d+), step (\d+) \(global step (\d+)\)", resumed.stdout)
    assert where is not None, resumed.stdout
    epoch, step, global_step = map(int, where.groups())
    assert 0 < step < 23 and global_step == (epoch - 1) * 23 + step < gpu_check.KILL_STEP  # mid-epoch
    assert gpu_check.weights_differ(tmp_path / "ref", tmp_path / "kill") == (
        False,
        f"0 of {WEIGHTS} weights differ, the largest by 0",
    )
    # And the comparison sees one weight moved, by how much.
    saved = torch.load(tmp_path / "ref" / "model.pt", weights_only=True)
    saved["state_dict"]["layers.0.weight"][3, 5] += 0.25
    (tmp_path / "moved").mkdir()
    torch.save(saved, tmp_path / "moved" / "model.pt")
    assert gpu_check.weights_differ(tmp_path / "ref", tmp_path / "moved") == (
        True,
        f"1 of {WEIGHTS} weights differ, the largest by 0.25",
    )


def test_a_row_past_its_limit_is_cut_off_and_the_targets_table_still_prints():
    # gpu.sh rehearsed on the CPU, the targets' rows only, on digits; the first-98% row is
    # slowed by a test fault past its limit.
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "DEVICE": "cpu",
        "TARGETS_ONLY": "1",
        "ROW_SECONDS": "4",
        "MNIST_DDP_TEST_SLOW_ROW": "default-to-98=step:0:2:60",
    }
    extra = ["data.dataset=digits", "data.split=standard", "train.epochs=1"]
    r = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu.sh"), *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stderr == ""  # not even bash's "Killed" line for the row it cut off
    lines = r.stdout.splitlines()
    assert "default-to-98 CUT OFF after 4 s (its limit; ROW_SECONDS or BLOG_SECONDS raise it)" in lines
    assert any(line.startswith("default-graphs ") and "samples/s" in line for line in lines)
    table = lines[lines.index(next(line for line in lines if line.startswith("target "))) + 1 :]
    assert len(table) == 3 and table[0].startswith("seed.yaml, 1000 epochs") and re.search(r"\d+\.\d s, \d", table[0])
    assert re.search(r"default, graphs: samples/s\s+[\d,]+\s+>= 2,000,000\s+NO$", table[1])
    assert re.search(r"default: first 98.0%, from start\s+cut off after 4 s\s+< 5 s\s+NO$", table[2])


def test_every_mnist_ddp_name_the_benchmark_scripts_import_exists():
    # They run where no test does (a GPU); a name moved in the package must not break them there.
    pattern = re.compile(r"^\s*from (mnist_ddp[\w.]*) import ([\w, ]+)", re.MULTILINE)
    found = 0
    for script in sorted(BENCHMARKS.iterdir()):
        for module, names in pattern.findall(script.read_text()):
            imported = importlib.import_module(module)
            for name in (n.strip() for n in names.split(",")):
                found += 1
                assert hasattr(imported, name) or importlib.util.find_spec(f"{module}.{name}"), (
                    script.name,
                    module,
                    name,
                )
    assert found >= 15
