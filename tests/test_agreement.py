"""Ranks that prove they agree: the items compared, the one line naming a difference, and
hand-launched ranks that differ in a setting or in their data files, refused before training."""

from __future__ import annotations

import socket

import torch
from conftest import CONFIGS, run_ranks
from mnist_files import write_fake_mnist

from mnist_ddp.config.loading import load_config
from mnist_ddp.data.splits import Splits
from mnist_ddp.parallel import agreement


def test_a_difference_names_each_value_with_its_ranks_and_hosts():
    values = ["0.003", "0.003", "0.3", "0.003", "0.3"]
    hosts = ["node1", "node1", "node2", "node2", "node3"]
    assert agreement.describe_disagreement("train.lr", values, hosts) == (
        "train.lr: 0.003 on ranks 0-1, 3 (node1, node2), 0.3 on ranks 2, 4 (node2, node3)"
    )
    assert agreement.describe_disagreement("seed", ["1", "2"], ["a", "b"]) == "seed: 1 on rank 0 (a), 2 on rank 1 (b)"


def test_the_first_differing_item_in_the_first_ranks_order():
    same = {"seed": "0", "train.lr": "0.1"}
    assert agreement.first_disagreement([same, dict(same)]) is None
    assert agreement.first_disagreement([same, {"seed": "0", "train.lr": "0.2"}]) == "train.lr"
    assert agreement.first_disagreement([same, {"seed": "0"}]) == "train.lr"  # missing on a rank


def test_job_items_hold_what_changes_the_computation_and_not_what_may_differ_per_node():
    a = agreement.job_items(load_config(None, ["data.root=/a", "train.threads=2", "run.dir=x", "wandb.name=n"]))
    b = agreement.job_items(load_config(None, ["data.root=/b", "train.threads=4", "run.dir=y", "wandb.name=m"]))
    assert a == b
    assert a["train.lr"] == "0.006" and a["model.hidden"] == "[256, 256, 256, 128, 128]"
    assert a["torch"] == torch.__version__ and a["code"].startswith("mnist_ddp 0.1.0 (sources ")
    assert agreement.job_items(load_config(None, ["train.epochs=3"]))["train.epochs"] == "3" != a["train.epochs"]


def test_the_data_fingerprint_follows_content_and_order():
    images, labels = torch.arange(12, dtype=torch.uint8).view(3, 4), torch.tensor([0, 1, 2])
    base = Splits(images, labels, images, labels, "x").fingerprint()
    assert base == Splits(images.clone(), labels.clone(), images, labels, "y").fingerprint()
    assert base["data (train images)"].startswith("3x4 sha256:")
    swapped = Splits(images[[1, 0, 2]], labels, images, labels, "x").fingerprint()
    assert swapped["data (train images)"] != base["data (train images)"]
    assert swapped["data (test images)"] == base["data (test images)"]


def test_one_process_has_nothing_to_compare():
    assert agreement.check_ranks_agree({"train.lr": "0.1"}) == [socket.gethostname()]


SMOKE = ["--config", str(CONFIGS / "smoke.yaml")]


def refused(results, item: str) -> str:
    """Both ranks exit 2; rank 0 prints the one line (for the job, as every rank-0 line is prefixed),
    which names ``item``; rank 1 prints nothing."""
    assert [r.returncode for r in results] == [2, 2], results[0].stderr[-2000:] + results[1].stderr[-2000:]
    (line,) = results[0].stderr.splitlines()
    assert line.startswith(f"error: [rank 0] ranks disagree on {item}: "), line
    assert results[1].stderr == "" and "epoch" not in results[0].stdout
    return line


def test_hand_launched_ranks_with_different_settings_are_refused_before_anything_is_written(tmp_path):
    results = run_ranks([[*SMOKE, "train.lr=0.003", "run.dir=run"], [*SMOKE, "train.lr=0.3", "run.dir=run"]], tmp_path)
    host = socket.gethostname()
    assert refused(results, "train.lr") == (
        f"error: [rank 0] ranks disagree on train.lr: 0.003 on rank 0 ({host}), 0.3 on rank 1 ({host});"
        " start every node with the same settings (command line and --config file)"
    )
    assert list(tmp_path.iterdir()) == []


def test_hand_launched_ranks_with_different_data_files_are_refused_before_training(tmp_path):
    write_fake_mnist(tmp_path / "a", n_train=200, n_test=40, seed=1)
    write_fake_mnist(tmp_path / "b", n_train=200, n_test=40, seed=2)  # the same sizes, other digits
    common = ["train.batch_size=20", "train.epochs=1", "data.download=false", "run.dir=run"]
    results = run_ranks([[f"data.root={tmp_path / 'a'}", *common], [f"data.root={tmp_path / 'b'}", *common]], tmp_path)
    line = refused(results, "data (train images)")
    assert line.count("200x784 sha256:") == 2 and "on rank 0" in line and "on rank 1" in line
    assert line.endswith(
        "give every node the same data files (each rank's data.root: copy them, or point at a shared folder)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no run folder
