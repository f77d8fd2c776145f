"""model.pt: weights plus config, readable with torch.load(weights_only=True)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch

from mnist_ddp.base.errors import InputError
from mnist_ddp.config.loading import load_config, to_dict
from mnist_ddp.model.mlp import MLP
from mnist_ddp.state import checkpoint, rng, weights
from mnist_ddp.state.weights import save_model


def test_model_file_loads_weights_only_and_restores_the_model(tmp_path):
    torch.manual_seed(0)
    cfg = load_config(overrides=["model.hidden=[32,16]"])
    model = MLP(784, [32, 16], 0.5)
    save_model(tmp_path / "model.pt", model, to_dict(cfg), in_features=784)
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert saved["in_features"] == 784 and saved["config"]["model"]["hidden"] == [32, 16]
    restored = MLP(saved["in_features"], saved["config"]["model"]["hidden"], 0.5)
    restored.load_state_dict(saved["state_dict"])
    x = torch.randn(4, 784)
    model.eval(), restored.eval()
    assert torch.equal(model(x), restored(x))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def snapshot_state(step: int, hidden=(8,)) -> checkpoint.Snapshot:
    cfg = load_config(overrides=[f"model.hidden=[{','.join(map(str, hidden))}]"])
    return checkpoint.Snapshot(
        progress=checkpoint.Progress(global_step=step),
        model=MLP(16, list(hidden), 0.0).state_dict(),
        optimizer={},
        schedule=None,
        rng=[rng.device_rng_state(torch.device("cpu"))],
        host_rng=rng.host_rng_state(),
        config=to_dict(cfg),
        in_features=16,
        wandb_run_id=None,
        path=Path("s.pt"),
    )


def test_snapshots_keep_the_newest_point_latest_at_the_last_and_leave_no_temp_file(tmp_path):
    folder = checkpoint.snapshot_dir(tmp_path)
    folder.mkdir()
    (folder / ".step_0000005.pt.x1y2.tmp").write_bytes(b"half a snapshot")  # a write cut short
    for step in (10, 20, 30, 40):
        checkpoint.save_snapshot(tmp_path, snapshot_state(step), keep=2)
    assert sorted(p.name for p in folder.iterdir()) == ["latest", "step_0000030.pt", "step_0000040.pt"]
    assert (folder / "latest").read_text().strip() == "step_0000040.pt"
    assert torch.load(folder / "step_0000040.pt", weights_only=True)["global_step"] == 40


def test_auto_resume_skips_a_corrupt_newest_snapshot(tmp_path):
    for step in (10, 20):
        checkpoint.save_snapshot(tmp_path, snapshot_state(step), keep=5)
    newest = checkpoint.snapshot_dir(tmp_path) / "step_0000020.pt"
    newest.write_bytes(newest.read_bytes()[:500])
    logged = []
    found = checkpoint.find_snapshot("auto", tmp_path, log=logged.append)
    path, state = found.path, found.to_file()
    assert path.name == "step_0000010.pt" and state["global_step"] == 10
    assert len(logged) == 1 and "step_0000020.pt: unreadable, truncated or corrupt" in logged[0]


def test_auto_resume_with_no_readable_snapshot_is_an_error(tmp_path):
    assert checkpoint.find_snapshot("auto", tmp_path) is None
    checkpoint.save_snapshot(tmp_path, snapshot_state(10), keep=5)
    only = checkpoint.snapshot_dir(tmp_path) / "step_0000010.pt"
    only.write_bytes(b"garbage")
    with pytest.raises(InputError, match=r"no readable snapshot in .*; resume=none starts over"):
        checkpoint.find_snapshot("auto", tmp_path, log=lambda _: None)
    assert checkpoint.find_snapshot("none", tmp_path) is None
    with pytest.raises(InputError, match=r"resume=.*nope\.pt: no such file"):
        checkpoint.find_snapshot(str(tmp_path / "nope.pt"), tmp_path)


class Payload:
    """Anything that needs unpickling code."""


def test_a_snapshot_holding_a_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "extra": Payload()}, path)
    with pytest.raises(InputError, match="refused, it is not a weights-only checkpoint"):
        checkpoint.read_snapshot(path)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(InputError, match="not an mnist_ddp snapshot"):
        checkpoint.read_snapshot(other)


def test_a_snapshot_of_another_model_is_refused(tmp_path):
    state = snapshot_state(10, hidden=(8,))
    this_run = to_dict(load_config(overrides=["model.hidden=[16,8]"]))
    with pytest.raises(InputError) as err:
        checkpoint.check_compatible(state, this_run, 16)
    assert "was saved with model.hidden=[8], this run has model.hidden=[16, 8]" in str(err.value)
    with pytest.raises(InputError, match="a model of 16 inputs, this data has 64"):
        checkpoint.check_compatible(state, state.config, 64)


def changed(value):
    """Another value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, list):
        return [*value, value[0] if value else "x"]
    return f"{value}-other"


def snapshot_of(config: dict, data: dict | None = None) -> checkpoint.Snapshot:
    return checkpoint.Snapshot(checkpoint.Progress(), {}, {}, None, [], {}, config, 784, None, data, Path("s.pt"))


def test_every_setting_outside_the_safe_list_must_match_on_resume():
    base = to_dict(load_config(None, []))
    saved = snapshot_of(base)
    for key in checkpoint.flat_config(base):
        section, _, name = key.rpartition(".")
        edited = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
        target = edited[section] if section else edited
        target[name] = changed(target[name])
        safe = key in checkpoint.SAFE_ON_RESUME or key.startswith(checkpoint.SAFE_SECTIONS)
        if safe:
            checkpoint.check_compatible(saved, edited, 784)
        else:
            with pytest.raises(InputError, match=f"was saved with {key}=.*; set {key}="):
                checkpoint.check_compatible(saved, edited, 784)
    # A key an older snapshot's config does not have yet is not compared.
    older = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    del older["train"]["augment_shift"]
    checkpoint.check_compatible(snapshot_of(older), base, 784)


def test_a_snapshot_refuses_other_data_and_says_which_array():
    base = to_dict(load_config(None, []))
    fingerprint = {"data (train images)": "60000x784 sha256:aa", "data (train labels)": "60000 sha256:bb"}
    saved = snapshot_of(base, fingerprint)
    checkpoint.check_compatible(saved, base, 784, dict(fingerprint))
    checkpoint.check_compatible(snapshot_of(base), base, 784, fingerprint)  # an older snapshot recorded none
    with pytest.raises(InputError, match=r"trained on other data: its data \(train labels\) was 60000 sha256:bb"):
        checkpoint.check_compatible(saved, base, 784, {**fingerprint, "data (train labels)": "60000 sha256:cc"})


def test_the_docs_list_exactly_the_settings_a_resume_may_change():
    readme = (Path(__file__).resolve().parent.parent / "docs" / "fault-tolerance.md").read_text()
    paragraph = readme.split("Only these\nmay change on resume:")[1].split("A snapshot also records")[0]
    listed = {part.split("`")[0] for part in paragraph.split("`")[1::2]}
    assert listed == {*checkpoint.SAFE_ON_RESUME, *(f"{s}*" for s in checkpoint.SAFE_SECTIONS)}


def test_an_archive_that_unpacks_to_more_than_its_size_is_refused_before_loading(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"state_dict": {"w": torch.zeros(1 << 20)}, "config": {}, "in_features": 64}, plain)
    assert weights.read_weights(plain).in_features == 64  # torch.save's own archive: stored, not compressed
    bomb = tmp_path / "bomb.pt"  # the same archive, deflated: 4 MB of zeros in a few KB
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            dst.writestr(item.filename, src.read(item.filename))
    assert bomb.stat().st_size < 100_000
    with pytest.raises(InputError, match=r"refused, it would unpack to 4 MB from a 0\.0 MB file \(\d+ compressed"):
        weights.read_weights(bomb)


def test_a_config_that_describes_another_model_than_the_weights_is_refused_before_building_it():
    saved = MLP(64, [32], 0.5).state_dict()
    # 30000 x 30000 would be 3.6 GB of weights: checked on the meta device, nothing allocated.
    with pytest.raises(InputError, match=r"do not fit .*layers.0.weight is 32x64 in the checkpoint, 30000x64 in the"):
        weights.check_weights_fit(lambda: MLP(64, [30000, 30000], 0.5), saved, "checkpoint=x")
    weights.check_weights_fit(lambda: MLP(64, [32], 0.5), saved, "checkpoint=x")


def test_a_snapshot_of_an_earlier_version_resumes_by_following_the_advice():
    # Earlier versions saved train.bf16 as a YAML boolean; following the line's advice must resume.
    old = snapshot_state(10)
    old.config = {"train": {"bf16": False}}
    with pytest.raises(
        InputError, match=r"saved with train.bf16=false, this run has train.bf16=auto; set train.bf16=false"
    ):
        checkpoint.check_compatible(old, {"train": {"bf16": "auto"}}, old.in_features)
    checkpoint.check_compatible(old, {"train": {"bf16": "false"}}, old.in_features)
