"""Config loading: files, overrides, strictness and --help."""

from __future__ import annotations

import sys

import pytest
from conftest import CONFIGS, run_module
from omegaconf import OmegaConf

from mnist_ddp.base.errors import InputError
from mnist_ddp.config.checks import check_text, check_world_size
from mnist_ddp.config.loading import key_reference, load_config, parse_args, to_dict
from mnist_ddp.config.schema import Config, TrainConfig, all_keys


def test_default_yaml_is_the_dataclass_defaults():
    # --help prints the dataclass defaults, so they must match the file used without --config.
    from_file = to_dict(load_config(CONFIGS / "default.yaml"))
    from_code = to_dict(Config())
    from_code["data"]["root"] = from_file["data"]["root"]  # filled in from $MNIST_DDP_DATA or ./data
    assert from_file == from_code


def test_every_config_file_loads():
    seed = load_config(CONFIGS / "seed.yaml")
    assert (seed.train.batch_size, seed.train.lr, seed.train.optimizer, seed.train.epochs) == (100, 0.01, "sgd", 1000)
    assert (seed.data.split, seed.data.seed_train_size, seed.data.seed_test_size) == ("seed", 50000, 500)
    assert seed.train.momentum == 0.0 and seed.train.schedule == "none"
    smoke = load_config(CONFIGS / "smoke.yaml")
    assert smoke.data.dataset == "digits"


def test_overrides_beat_the_file_and_are_typed():
    cfg = load_config(CONFIGS / "seed.yaml", ["train.epochs=5", "model.hidden=[64,32]", "train.bf16=true"])
    assert cfg.train.epochs == 5 and cfg.model.hidden == [64, 32] and cfg.train.bf16 == "true"
    assert cfg.train.batch_size == 100


def test_data_root_comes_from_env_then_default(monkeypatch):
    monkeypatch.setenv("MNIST_DDP_DATA", "/somewhere/mnist")
    assert load_config().data.root == "/somewhere/mnist"
    assert load_config(overrides=["data.root=/explicit"]).data.root == "/explicit"
    monkeypatch.delenv("MNIST_DDP_DATA")
    assert load_config().data.root == "data"


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epoch=3", "unknown config key 'train.epoch' (command line); did you mean 'train.epochs'?"),
        ("trian.lr=0.1", "did you mean 'train.lr'?"),
        ("train=3", "config key 'train' (command line) is a section"),
        ("train.epochs=abc", "config key 'train.epochs' (command line): 'abc' is not a valid int"),
        ("train.bf16=maybe", "config key 'train.bf16' is 'maybe'; choose one of: auto, true, false"),
        ("model.hidden=[a]", "config key 'model.hidden' (command line): ['a'] is not a valid list"),
        ("train.batch_size=0", "config key 'train.batch_size' is 0; it must be at least 1"),
        ("train.accumulate_steps=0", "config key 'train.accumulate_steps' is 0; it must be at least 1"),
        ("train.beta2=1", "config key 'train.beta2' is 1.0; it must be in [0, 1)"),
        ("train.label_smoothing=-0.1", "config key 'train.label_smoothing' is -0.1; it must be in [0, 1)"),
        ("train.augment_shift=-1", "config key 'train.augment_shift' is -1; it must be at least 0"),
        ("dist.comm_hook=zip", "config key 'dist.comm_hook' is 'zip'; choose one of: none, bf16, fp16, powersgd"),
        ("dist.bucket_cap_mb=0", "config key 'dist.bucket_cap_mb' is 0.0; it must be greater than 0"),
        ("train.lr=0", "config key 'train.lr' is 0.0; it must be greater than 0"),
        ("train.lr=-1e-3", "config key 'train.lr' is -0.001; it must be greater than 0"),
        ("model.dropout=1", "config key 'model.dropout' is 1.0; it must be in [0, 0.99999]"),
        ("model.dropout=-0.1", "it must be in [0, 0.99999]"),
        ("model.dropout=0.9999999", "config key 'model.dropout' is 0.9999999; it must be in [0, 0.99999]"),
        (
            "model.hidden=[65536,65536,65536]",
            "config key 'model.hidden' is [65536, 65536, 65536]: 8,642,166,794 parameters need about 129 GiB for"
            " weights, gradients and optimizer state, more than this machine's ",
        ),
        ("train.epochs=0", "config key 'train.epochs' is 0; it must be at least 1"),
        ("model.hidden=[]", "config key 'model.hidden' is []; it must be a non-empty list"),
        ("model.hidden=[64,0]", "widths of at least 1"),
        ("train.optimizer=adam", "config key 'train.optimizer' is 'adam'; choose one of: sgd, adamw"),
        ("data.split=random", "choose one of: standard, seed"),
        ("train.nesterov=true", "config key 'train.nesterov' is True; it must be false unless train.momentum > 0"),
        ("epochs", "expected a key=value override, got 'epochs'"),
    ],
)
def test_bad_overrides_are_one_line_errors(override, message):
    with pytest.raises(InputError) as err:
        load_config(overrides=[override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_config_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(InputError, match="is not valid YAML"):
        load_config(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("train:\n  batchsize: 64\n")
    with pytest.raises(InputError, match=r"unknown config key 'train.batchsize' \(.*typo.yaml\); did you mean"):
        load_config(typo)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(InputError, match="must hold a mapping"):
        load_config(scalar)


def test_every_key_has_a_doc():
    assert all(text for _, text in all_keys().values())


def test_help_lists_every_key_with_its_default(tmp_path):
    result = run_module("mnist_ddp.train", "--help", cwd=tmp_path)
    assert result.returncode == 0
    for key in all_keys():
        line = next((ln for ln in result.stdout.splitlines() if ln.strip().startswith(key + " ")), None)
        assert line is not None, key
        assert "[default:" in line
    assert "train.batch_size" in result.stdout and "[default: 512]" in result.stdout


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = load_config(overrides=["train.epochs=3", "data.root=/x"])
    path = tmp_path / "config.yaml"
    path.write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    again = load_config(path)
    assert to_dict(again) == to_dict(cfg)


def test_overrides_may_come_before_and_after_the_config_file():
    # The launch scripts put run.dir=... first and pass the user's --config FILE after it.
    cfg = parse_args(["run.dir=/r", "--config", str(CONFIGS / "seed.yaml"), "train.epochs=3"], prog="t")
    assert (cfg.run.dir, cfg.train.epochs, cfg.train.batch_size) == ("/r", 3, 100)


def test_the_world_size_is_checked_before_any_rank_starts():
    # Any world size up to the batch trains the same run, dividing it or not.
    for world_size in (1, 2, 3, 5, 7, 12, 512):
        check_world_size(TrainConfig(batch_size=512), world_size)
    with pytest.raises(InputError) as refused:
        check_world_size(TrainConfig(batch_size=512), 513)
    assert str(refused.value) == (
        "train.batch_size=512 is smaller than the 513 ranks: each rank needs at least one image a step;"
        " use train.batch_size=513 or more, or at most 512 ranks"
    )
    # Micro-batches may be unequal, but none of a full step may be empty: 100 over 3 ranks is 33 or 34.
    check_world_size(TrainConfig(batch_size=100, accumulate_steps=33), 3)
    with pytest.raises(InputError, match=r"^train\.accumulate_steps=34 is more than the 33 images some of the 3 ranks"):
        check_world_size(TrainConfig(batch_size=100, accumulate_steps=34), 3)
    with pytest.raises(InputError, match=r"train\.cuda_graphs=true needs one CUDA rank \(here: 2 ranks\)"):
        check_world_size(TrainConfig(cuda_graphs=True), 2)


def test_text_settings_take_the_text_after_the_equals_sign_as_it_is():
    cfg = load_config(
        None, ["run.dir=runs/exp #1", "data.root=0755", "wandb.name=1e3", "wandb.group=true", "resume=none"]
    )
    assert (cfg.run.dir, cfg.data.root, cfg.wandb.name, cfg.wandb.group) == ("runs/exp #1", "0755", "1e3", "true")
    # Other keys are still read as YAML: numbers, booleans and lists.
    cfg = load_config(None, ["train.epochs=3", "log.plots=false", "model.hidden=[8,4]", "wandb.tags=[a,b]"])
    assert (cfg.train.epochs, cfg.log.plots, cfg.model.hidden, cfg.wandb.tags) == (3, False, [8, 4], ["a", "b"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("run.dir=" + "x" * 300, "config key 'run.dir': the name xxxx"),
        ("resume=runs/" + "y" * 256 + "/step_0000001.pt", "config key 'resume': the name yyyy"),
        ("run.dir=runs/caf\udce9", "config key 'run.dir' is 'runs/caf\\xe9', which is not UTF-8 text"),
        ("wandb.name=\udcff", "config key 'wandb.name' is '\\xff', which is not UTF-8 text"),
    ],
)
def test_names_the_file_system_or_a_file_cannot_take_are_refused_up_front(override, message):
    with pytest.raises(InputError) as err:
        load_config(None, [override])
    assert str(err.value).startswith(message)


def test_bf16_takes_auto_true_false_and_yaml_booleans(tmp_path):
    assert load_config().train.bf16 == "auto"
    assert load_config(CONFIGS / "seed.yaml").train.bf16 == "false"  # YAML's false, from the file
    assert load_config(overrides=["train.bf16=False"]).train.bf16 == "false"
    assert load_config(base={"train": {"bf16": True}}).train.bf16 == "true"  # a config saved before 'auto'


def test_a_utf8_name_under_a_locale_that_cannot_encode_it_says_so(monkeypatch):
    # Under LANG=C without Python's UTF-8 mode, the shell's UTF-8 bytes of "rün" arrive as surrogates.
    monkeypatch.setattr(sys, "getfilesystemencoding", lambda: "ascii")
    with pytest.raises(InputError, match=r"is 'rün', which this process's locale \(ascii\) cannot encode; run with"):
        check_text("run.dir", "r\udcc3\udcbcn")
    with pytest.raises(InputError, match=r"is 'caf\\xe9', which is not UTF-8 text"):  # Latin-1 bytes: not UTF-8
        check_text("run.dir", "caf\udce9")


def test_the_key_reference_in_the_docs_is_the_generated_one():
    doc = (CONFIGS.parent / "docs" / "configuration.md").read_text()
    table = doc.split("<!-- keys: begin -->\n")[1].split("<!-- keys: end -->")[0]
    assert table == key_reference()
    assert all(f"| `{key}` |" in table for key in all_keys())
