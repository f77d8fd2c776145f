"""Run folders: one someone else could have prepared is refused in one line, before anything is
written, and no output is ever written through a link."""

from __future__ import annotations

import os

import pytest
from conftest import CONFIGS, run_in_process

from mnist_ddp.base.errors import EXIT_INPUT, InputError
from mnist_ddp.state.rundir import check_run_dir_is_yours

SMOKE = ["--config", str(CONFIGS / "smoke.yaml"), "train.epochs=1", "log.plots=false"]


def test_a_run_dir_with_a_planted_link_is_refused_and_nothing_is_written_through_it(tmp_path):
    run_dir, victim = tmp_path / "run", tmp_path / "elsewhere" / "victim.txt"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").symlink_to(victim)  # dangling: training would create and fill the target
    result = run_in_process("mnist_ddp.train", *SMOKE, f"run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == EXIT_INPUT
    assert result.stderr == (
        f"error: run.dir={run_dir}: {run_dir / 'metrics.jsonl'} is a link (to {victim}); outputs are never written"
        " through a link: remove it, or choose another run.dir\n"
    )
    assert not victim.parent.exists() and sorted(p.name for p in run_dir.iterdir()) == ["metrics.jsonl"]


@pytest.mark.parametrize("planted", ["plots", "checkpoints/step_0000040.pt", "checkpoints/latest"])
def test_every_output_and_snapshot_link_is_refused(tmp_path, planted):
    path = tmp_path / "run" / planted
    path.parent.mkdir(parents=True)
    path.symlink_to(tmp_path)
    with pytest.raises(InputError, match=f"{path} is a link .*outputs are never written through a link"):
        check_run_dir_is_yours(tmp_path / "run")


def test_a_run_dir_others_can_write_into_or_swap_is_refused(tmp_path):
    run_dir = tmp_path / "shared" / "run"
    run_dir.mkdir(parents=True)
    check_run_dir_is_yours(run_dir)  # mode 755 under 700: fine
    run_dir.chmod(0o777)
    with pytest.raises(InputError, match=r"everyone can write into it \(mode 777\).*chmod o-w"):
        check_run_dir_is_yours(run_dir)
    run_dir.chmod(0o755)
    (tmp_path / "shared").chmod(0o777)  # others could rename run/ away and put their own in its place
    with pytest.raises(InputError, match=r"everyone can write into .*shared \(mode 777, no sticky bit\)"):
        check_run_dir_is_yours(run_dir)
    (tmp_path / "shared").chmod(0o1777)  # as /tmp: the sticky bit keeps others from replacing it
    check_run_dir_is_yours(run_dir)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a folder to another user")
def test_a_run_dir_of_another_user_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    os.chown(run_dir, 65534, 65534)
    result = run_in_process("mnist_ddp.train", *SMOKE, f"run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == EXIT_INPUT
    assert result.stderr.startswith(f"error: run.dir={run_dir} belongs to ")
    assert result.stderr.endswith(
        ", not to you: its snapshots and links could be planted; choose a run.dir of your own\n"
    )
