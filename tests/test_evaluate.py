"""python -m mnist_ddp.evaluate: the saved model scores what training reported, on any world size."""

from __future__ import annotations

import json

import pytest
from conftest import CONFIGS, run_in_process, run_module

from mnist_ddp.base.errors import InputError
from mnist_ddp.state.weights import read_weights


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    result = run_in_process(
        "mnist_ddp.train",
        "--config",
        str(CONFIGS / "smoke.yaml"),
        "train.epochs=4",
        f"run.dir={root / 'run'}",
        cwd=root,
    )
    assert result.returncode == 0, result.stderr
    return root / "run"


def test_evaluate_reproduces_the_summary(trained, tmp_path):
    result = run_in_process("mnist_ddp.evaluate", f"checkpoint={trained / 'model.pt'}", f"out={tmp_path}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((trained / "summary.json").read_text())
    evaluation = json.loads((tmp_path / "evaluation.json").read_text())
    assert evaluation["test_examples"] == summary["test_examples"] == 360
    assert evaluation["test_accuracy"] == summary["test_accuracy"]
    assert evaluation["per_class_accuracy"] == summary["per_class_accuracy"]
    assert f"{evaluation['correct']}/360 correct" in result.stdout
    assert "true\\pred" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "confusion_matrix.png",
        "evaluation.json",
        "test_predictions.png",
    ]


def test_evaluate_under_torchrun_counts_the_same(trained, tmp_path):
    out = tmp_path / "out"
    cmd = ["torch.distributed.run", "--standalone", "--nproc_per_node=3", "-m", "mnist_ddp.evaluate"]
    result = run_module(*cmd, f"checkpoint={trained / 'model.pt'}", f"out={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    evaluation = json.loads((out / "evaluation.json").read_text())
    summary = json.loads((trained / "summary.json").read_text())
    assert evaluation["world_size"] == 3 and evaluation["test_examples"] == 360
    assert evaluation["test_accuracy"] == summary["test_accuracy"]


def test_evaluate_bad_checkpoints(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_weights(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="not a weights-only torch file"):
        read_weights(junk)
    result = run_in_process("mnist_ddp.evaluate", f"checkpoint={junk}", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith(f"error: checkpoint={junk}: not a weights-only")
    result = run_in_process("mnist_ddp.evaluate", "data.root=/x", cwd=tmp_path)
    assert (
        result.returncode == 2
        and result.stderr == "error: checkpoint=PATH is required (a run's model.pt or a snapshot)\n"
    )


def test_evaluate_without_out_leaves_the_training_runs_figures_alone(trained, tmp_path):
    before = {p.name: p.read_bytes() for p in (trained / "plots").iterdir()}
    result = run_in_process("mnist_ddp.evaluate", f"checkpoint={trained / 'model.pt'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (trained / "evaluation" / "evaluation.json").is_file()
    assert {p.name: p.read_bytes() for p in (trained / "plots").iterdir()} == before
