"""The training entry point: its pieces, and the real command end to end."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import CONFIGS, run_in_process, run_module

from mnist_ddp.config.schema import DataConfig
from mnist_ddp.data.splits import load_splits
from mnist_ddp.model.evaluation import evaluate
from mnist_ddp.model.mlp import MLP
from mnist_ddp.model.precision import native_bf16

OUTPUTS = ["checkpoints", "config.yaml", "metrics.jsonl", "model.pt", "plots", "summary.json"]
SUMMARY_KEYS = {
    "test_accuracy",
    "best_test_accuracy",
    "test_examples",
    "per_class_accuracy",
    "epochs",
    "world_size",
    "samples_per_second",
    "wall_seconds",
}
METRIC_KEYS = {"epoch", "train_loss", "test_loss", "test_accuracy", "samples_per_second", "elapsed_seconds"}


def read_run(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return records, json.loads((run_dir / "summary.json").read_text())


def test_smoke_run_learns_digits_and_writes_every_output(tmp_path):
    run_dir = tmp_path / "run"
    result = run_in_process(
        "mnist_ddp.train", "--config", str(CONFIGS / "smoke.yaml"), f"run.dir={run_dir}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == OUTPUTS
    records, summary = read_run(run_dir)
    assert [r["epoch"] for r in records] == list(range(1, 16))
    assert all(r.keys() >= METRIC_KEYS for r in records)
    assert summary.keys() >= SUMMARY_KEYS
    assert summary["test_examples"] == 360 and summary["world_size"] == 1 and summary["epochs"] == 15
    assert summary["test_accuracy"] >= 0.90
    assert len(summary["per_class_accuracy"]) == 10
    assert records[-1]["elapsed_seconds"] <= summary["wall_seconds"]
    # One printed line per epoch.
    assert sum(line.startswith("epoch ") for line in result.stdout.splitlines()) == 15

    # The saved weights reproduce the reported accuracy exactly.
    saved = torch.load(run_dir / "model.pt", weights_only=True)
    model = MLP(saved["in_features"], saved["config"]["model"]["hidden"], saved["config"]["model"]["dropout"])
    model.load_state_dict(saved["state_dict"])
    data = load_splits(DataConfig(dataset="digits"), seed=0)
    counts = evaluate(model, data.test_images, data.test_labels, 1000)
    assert counts.accuracy == summary["test_accuracy"]
    # The resolved config is written and loads back as the same run.
    assert "dataset: digits" in (run_dir / "config.yaml").read_text()


def test_same_seed_same_run(tmp_path):
    args = ["--config", str(CONFIGS / "smoke.yaml"), "train.epochs=2"]
    a = run_in_process("mnist_ddp.train", *args, f"run.dir={tmp_path / 'a'}", cwd=tmp_path)
    b = run_in_process("mnist_ddp.train", *args, f"run.dir={tmp_path / 'b'}", cwd=tmp_path)
    c = run_in_process("mnist_ddp.train", *args, "seed=1", f"run.dir={tmp_path / 'c'}", cwd=tmp_path)
    assert a.returncode == b.returncode == c.returncode == 0
    loss = [[r["train_loss"] for r in read_run(tmp_path / d)[0]] for d in "abc"]
    assert loss[0] == loss[1] != loss[2]


def test_the_default_run_dir_follows_the_settings_so_the_same_command_resumes(tmp_path):
    args = ["--config", str(CONFIGS / "smoke.yaml"), "train.epochs=1"]
    first = run_in_process("mnist_ddp.train", *args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("digits-") and (run_dir / "summary.json").is_file()
    again = run_in_process("mnist_ddp.train", *args, "log.progress=false", cwd=tmp_path)  # a setting safe to change
    assert f"resuming from {run_dir.relative_to(tmp_path)}/checkpoints/step_0000023.pt" in again.stdout
    other = run_in_process("mnist_ddp.train", *args, "seed=1", cwd=tmp_path)  # another run: another folder
    assert other.returncode == 0 and len(list((tmp_path / "runs").iterdir())) == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["train.batchsize=5"], "error: unknown config key 'train.batchsize' (command line); did you mean"),
        (["train.batch_size=0"], "error: config key 'train.batch_size' is 0; it must be at least 1"),
        (["train.cuda_graphs=true", "train.device=cpu"], "error: train.cuda_graphs=true needs one CUDA rank"),
        (["train.accumulate_steps=513"], "error: train.accumulate_steps=513 is more than the 512 images some of"),
        (["--config", "missing.yaml"], "error: config file missing.yaml does not exist"),
        (["data.download=false"], "error: MNIST files missing from"),
        (["data.format=mat"], "mnist-original.mat does not exist"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    empty = tmp_path / "no-data"
    empty.mkdir()
    run_dir = tmp_path / "run"
    result = run_in_process("mnist_ddp.train", *args, f"data.root={empty}", f"run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not run_dir.exists() and list(empty.iterdir()) == []


def test_corrupt_data_file_is_named(tmp_path):
    from mnist_files import write_fake_mnist

    write_fake_mnist(tmp_path / "mnist", n_train=20, n_test=10)
    labels = tmp_path / "mnist" / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-3])
    result = run_module("mnist_ddp.train", f"data.root={tmp_path / 'mnist'}", f"run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {labels}: header says") and "Traceback" not in result.stderr
    assert not (tmp_path / "r").exists()


def test_default_config_on_real_mnist_beats_97_5(tmp_path, real_mnist):
    run_dir = tmp_path / "run"
    result = run_in_process("mnist_ddp.train", f"data.root={real_mnist}", f"run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records, summary = read_run(run_dir)
    assert summary["test_examples"] == 10_000
    assert summary["test_accuracy"] >= 0.975
    assert all(r["test_accuracy"] <= 1 for r in records)
    # train.bf16=auto (the default): bf16 where this CPU multiplies it natively, said in the summary and first line.
    native = native_bf16(torch.device("cpu"))
    assert summary["precision"] == ("bf16 autocast" if native else "fp32")
    assert summary["precision_chosen_by"] == (
        f"train.bf16=auto: {native}" if native else "train.bf16=auto: no amx_bf16/avx512_bf16"
    )
    assert f"{summary['precision']} ({summary['precision_chosen_by']})" in result.stdout.splitlines()[0]


def test_seed_config_runs_on_the_blog_split(tmp_path, real_mnist):
    run_dir = tmp_path / "run"
    result = run_in_process(
        "mnist_ddp.train",
        "--config",
        str(CONFIGS / "seed.yaml"),
        "train.epochs=3",
        "train.eval_every_epochs=1",  # seed.yaml evaluates every 10 epochs
        f"data.root={real_mnist}",
        f"run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    records, summary = read_run(run_dir)
    assert summary["test_examples"] == 500 and len(records) == 3
    # Plain SGD at lr 0.01 through five ReLU layers starts slowly (~76% after 3 epochs) but learns.
    assert records[0]["train_loss"] > records[1]["train_loss"] > records[2]["train_loss"]
    assert summary["test_accuracy"] > 0.5


def test_evaluation_and_snapshots_every_n_epochs_and_always_the_last(tmp_path):
    run_dir = tmp_path / "run"
    args = ["train.epochs=5", "train.eval_every_epochs=2", "checkpoint.every_epochs=2", "checkpoint.every_steps=0"]
    result = run_in_process(
        "mnist_ddp.train",
        "--config",
        str(CONFIGS / "smoke.yaml"),
        *args,
        "checkpoint.keep=10",
        f"run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    records, summary = read_run(run_dir)
    assert [r["epoch"] for r in records] == [2, 4, 5]
    # The summary counts all five epochs trained, not the three recorded.
    assert summary["epochs"] == 5 and summary["train_seconds"] > sum(r["train_seconds"] for r in records)
    assert summary["samples_per_second"] * summary["train_seconds"] == pytest.approx(5 * 1437)
    assert [line.split()[1] for line in result.stdout.splitlines() if line.startswith("epoch ")] == [
        "2/5",
        "4/5",
        "5/5",
    ]
    snapshots = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*.pt"))
    assert snapshots == ["step_0000046.pt", "step_0000092.pt", "step_0000115.pt"]  # 23 steps an epoch


def test_a_resumed_run_rewrites_the_records_it_did_not_keep_then_appends(tmp_path):
    run_dir = tmp_path / "run"
    args = ["--config", str(CONFIGS / "smoke.yaml"), "train.epochs=3", "checkpoint.keep=10", f"run.dir={run_dir}"]
    assert run_in_process("mnist_ddp.train", *args, cwd=tmp_path).returncode == 0
    # As if the job had died after epoch 3's line and before its snapshot: resume from epoch 2's.
    (run_dir / "checkpoints" / "step_0000069.pt").unlink()
    (run_dir / "checkpoints" / "latest").unlink()
    first = (run_dir / "metrics.jsonl").read_text().splitlines()
    result = run_in_process("mnist_ddp.train", *args, cwd=tmp_path)
    assert result.returncode == 0 and "global step 46" in result.stdout
    again = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in again] == [1, 2, 3]
    assert again[:2] == first[:2]


def test_a_cpu_snapshot_resumes_exactly_under_another_device_setting(tmp_path):
    # train.device=cpu, then auto (the CPU here): the device type matches, so the streams continue.
    args = ["--config", str(CONFIGS / "smoke.yaml"), "train.epochs=3", "checkpoint.keep=10"]
    env = {"MNIST_DDP_TEST_PRINT_HASH": "1"}
    first = run_in_process("mnist_ddp.train", *args, "train.device=cpu", "run.dir=a", cwd=tmp_path, env=env)
    snapshot = tmp_path / "a" / "checkpoints" / "step_0000046.pt"
    second = run_in_process(
        "mnist_ddp.train", *args, "train.device=auto", f"resume={snapshot}", "run.dir=b", cwd=tmp_path, env=env
    )
    assert first.returncode == second.returncode == 0, second.stderr
    assert "resuming from" in second.stdout and "warning" not in second.stdout

    def digest(out: str) -> str:
        return next(line for line in out.splitlines() if line.startswith("parameter_hash")).split()[-1]

    assert digest(second.stdout) == digest(first.stdout)


def test_timed_snapshots_come_at_the_next_agreement_after_every_seconds(tmp_path):
    # The step snapshots off: each time checkpoint.every_seconds have passed, the next agreement (every
    # 10 steps) says so on every rank and the one after writes the snapshot: steps 20 and 40, then the end.
    run_dir = tmp_path / "run"
    timed = ["checkpoint.every_steps=0", "checkpoint.every_epochs=0", "checkpoint.every_seconds=0.001"]
    args = ["--config", str(CONFIGS / "smoke.yaml"), "train.epochs=2", "log.plots=false", *timed]
    result = run_in_process("mnist_ddp.train", *args, f"run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    snapshots = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*.pt"))
    assert snapshots == ["step_0000020.pt", "step_0000040.pt", "step_0000046.pt"]
