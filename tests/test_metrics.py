"""Metrics: the process clock and the summary's arithmetic."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from mnist_ddp.model.evaluation import EvalCounts
from mnist_ddp.observe import metrics


def test_process_start_is_before_import_and_recent():
    assert metrics.PROCESS_START <= metrics.IMPORT_TIME + 0.05
    assert time.time() - metrics.PROCESS_START < 24 * 3600


def test_elapsed_counts_from_process_start_not_import():
    # A child that sleeps before importing must report at least that sleep as elapsed.
    code = "import time; time.sleep(0.6); from mnist_ddp.observe import metrics; print(metrics.seconds_since_start())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert 0.6 <= float(out) < 30


def record(epoch, acc, seconds, elapsed):
    return {
        "epoch": epoch,
        "train_loss": 0.1,
        "test_loss": 0.1,
        "test_accuracy": acc,
        "samples_per_second": 1000 / seconds,
        "train_seconds": seconds,
        "elapsed_seconds": elapsed,
    }


def test_summary_numbers():
    records = [record(1, 0.97, 1.0, 3.0), record(2, 0.981, 1.0, 4.0), record(3, 0.979, 2.0, 6.0)]
    confusion = [[98 if t == p else 0 for p in range(10)] for t in range(10)]
    for t in range(10):
        confusion[t][(t + 1) % 10] = 2
    confusion[9][9], confusion[9][0] = 97, 3  # 979 of 1000 right
    final = EvalCounts(50.0, confusion)
    # Five epochs trained, three of them recorded (train.eval_every_epochs): the totals count all five.
    trained = {"epochs": 5, "seconds": 6.5, "images": 5000}
    summary = metrics.build_summary(records, final, world_size=1, trained=trained)
    assert summary["test_accuracy"] == 0.979 and summary["best_test_accuracy"] == 0.981 and summary["best_epoch"] == 2
    assert summary["test_examples"] == 1000 and summary["epochs"] == 5
    assert summary["train_seconds"] == 6.5 and summary["samples_per_second"] == pytest.approx(5000 / 6.5)
    assert summary["seconds_to_accuracy"] == {"0.974": 4.0, "0.980": 4.0}
    assert summary["per_class_accuracy"] == [0.98] * 9 + [0.97]


def test_epoch_line_has_every_field():
    line = metrics.format_epoch_line({**record(3, 0.9812, 0.5, 7.25), "test_loss": 0.0654}, epochs=10)
    assert line == ("epoch  3/10  train_loss 0.1000  test_loss 0.0654  test_acc 98.12%  samples/s 2,000  elapsed 7.2s")


def test_appending_records_gives_the_file_a_rewrite_gives(tmp_path):
    records = [record(1, 0.9, 1.0, 2.0), record(2, 0.95, 1.0, 3.0), record(3, 0.97, 1.0, 4.0)]
    metrics.write_metrics(tmp_path, records)
    rewritten = (tmp_path / "metrics.jsonl").read_text()
    (tmp_path / "metrics.jsonl").unlink()
    metrics.write_metrics(tmp_path, [])  # a fresh run: no file until its first record
    assert not (tmp_path / "metrics.jsonl").exists()
    metrics.write_metrics(tmp_path, records[:1])  # a resumed run: its snapshot's records
    for r in records[1:]:
        metrics.append_metrics(tmp_path, r)
    assert (tmp_path / "metrics.jsonl").read_text() == rewritten
