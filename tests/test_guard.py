"""The guard: stop requests and the non-finite check, as every rank sees them."""

from __future__ import annotations

import os
import signal
import stat

import pytest
import torch

from mnist_ddp.model.mlp import MLP
from mnist_ddp.training import guard


@pytest.fixture(autouse=True)
def clean_stop_flag():
    guard.stop_signal = None
    yield
    guard.stop_signal = None


def test_record_keeps_the_first_non_finite_step():
    recorder = guard.StopGuard(MLP(8, [4], 0.0), torch.device("cpu"))
    recorder.start_at(3)
    for loss in (0.5, -1e30, float("nan"), float("inf"), float("-inf"), 0.25):
        recorder.record(torch.tensor(loss))
    assert recorder.first_bad.item() == 5 and recorder.step.item() == 9
    healthy = guard.StopGuard(MLP(8, [4], 0.0), torch.device("cpu"))
    healthy.record(torch.tensor(3.0e38))
    assert healthy.first_bad.item() == guard.NO_BAD_STEP


def test_agree_on_a_healthy_model_says_go_on():
    model = MLP(8, [4], 0.0)
    decision = guard.agree(torch.tensor(guard.NO_BAD_STEP), model, step=10)
    assert decision == guard.Decision(stop=False, first_bad_step=None, step=10)


def test_a_timed_snapshot_is_due_when_any_rank_says_so():
    model, first_bad = MLP(8, [4], 0.0), torch.tensor(guard.NO_BAD_STEP)
    assert guard.finish_check(guard.start_check(first_bad, model, 30, snapshot_due=True)).snapshot_due
    assert not guard.finish_check(guard.start_check(first_bad, model, 30)).snapshot_due
    recorder = guard.StopGuard(model, torch.device("cpu"))
    assert recorder.lagged(10, snapshot_due=True) == guard.Decision(False, None)  # nothing in flight yet
    decision = recorder.lagged(20)  # the check started at step 10 arrives one check later
    assert decision.snapshot_due and decision.step == 10
    assert not recorder.lagged(30).snapshot_due


def test_agree_reports_the_bad_step_and_nan_weights():
    model = MLP(8, [4], 0.0)
    assert guard.agree(torch.tensor(3), model, step=10).first_bad_step == 3
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("inf")
    assert guard.agree(torch.tensor(guard.NO_BAD_STEP), model, step=10).first_bad_step == 10


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_a_real_signal_becomes_a_stop_request(sig):
    previous = {s: signal.getsignal(s) for s in guard.PREEMPTION_SIGNALS}
    try:
        guard.install_signal_handlers()
        os.kill(os.getpid(), sig)
        assert guard.stop_signal == sig
        assert guard.agree(torch.tensor(guard.NO_BAD_STEP), MLP(8, [4], 0.0), step=1).stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def test_requeue_runs_scontrol_with_the_job_id(tmp_path, monkeypatch, capsys):
    log = tmp_path / "calls"
    fake = tmp_path / "scontrol"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    guard.requeue_if_slurm(enabled=True)
    assert log.read_text() == "requeue 4242\n"
    guard.requeue_if_slurm(enabled=False)
    monkeypatch.delenv("SLURM_JOB_ID")
    guard.requeue_if_slurm(enabled=True)
    assert log.read_text() == "requeue 4242\n"  # neither call ran scontrol again
    assert "requeued SLURM job 4242" in capsys.readouterr().out
