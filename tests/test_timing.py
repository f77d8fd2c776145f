"""Where each rank's time goes: the straggler rule, and the clock's accounting of a step loop."""

from __future__ import annotations

import time

import pytest
import torch

from mnist_ddp.observe import timing


def test_the_slow_rank_is_the_one_that_computes_longest_not_the_one_that_waits_longest():
    # Rank 1 computes 1.9 s; rank 0 computes 1.0 s and waits 0.9 s for it: the same step time.
    assert timing.find_straggler([1.0, 1.9], 1.5) == (1, pytest.approx(1.9))
    assert timing.find_straggler([1.0, 1.05, 0.98, 2.4], 1.5) == (3, pytest.approx(2.4 / 1.0))


@pytest.mark.parametrize(
    "compute, factor",
    [
        ([1.0, 1.3], 1.5),  # under the factor
        ([0.02, 0.05], 1.5),  # a large factor of a few milliseconds: noise, not a straggler
        ([1.0, 3.0], 0),  # off
        ([5.0], 1.5),  # one rank has nobody to be slower than
    ],
)
def test_no_straggler(compute, factor):
    assert timing.find_straggler(compute, factor) is None


def test_the_straggler_record_and_line_name_rank_and_host():
    times = {"compute": [1.0, 1.9], "gradient_wait": [0.9, 0.0]}
    record = timing.straggler_record(times, ["node1", "node2"], 1.5)
    assert record == {"rank": 1, "host": "node2", "factor": 1.9}
    assert (
        timing.straggler_text(record) == "straggler: rank 1 (node2) computes 1.9x slower than the other ranks' median"
    )
    assert timing.rank_seconds([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])["evaluation"] == [4, 9]


def test_the_clock_splits_a_step_loop_into_compute_wait_and_inner_phases():
    clock = timing.RankClock(torch.device("cpu"), enabled=True)
    weight = torch.zeros(3, requires_grad=True)
    (weight * 2).sum().backward()  # autograd's first call sets up its engine (milliseconds)
    clock.watch_gradients([weight])
    clock.loop_started()
    time.sleep(0.05)  # compute
    (weight * 2).sum().backward()  # the hook: the last gradient is in
    time.sleep(0.03)  # waiting for the others' gradients (DDP's all-reduce, inside backward)
    clock.gradients_reduced()  # backward returned
    with clock.phase("snapshot", 1, 10):
        time.sleep(0.02)
    with clock.aside():  # e.g. the profiler writing its trace: neither compute nor a phase
        time.sleep(0.04)
    clock.loop_ended()
    with clock.phase("evaluation", 1, 10):
        time.sleep(0.01)
    compute, wait, agreement, evaluation, snapshot = clock.take()
    assert compute == pytest.approx(0.05, abs=0.015) and wait == pytest.approx(0.03, abs=0.01)
    assert snapshot == pytest.approx(0.02, abs=0.01) and evaluation == pytest.approx(0.01, abs=0.01)
    assert agreement == 0
    assert clock.take() == [0.0] * 5  # counting starts anew


def test_a_disabled_clock_counts_nothing():
    clock = timing.RankClock(torch.device("cpu"), enabled=False)
    clock.loop_started()
    with clock.phase("agreement", 1, 1):
        time.sleep(0.01)
    clock.loop_ended()
    assert clock.take() == [0.0] * 5


def epoch(straggler: dict | None) -> dict:
    return {"rank_seconds": {"compute": [1.0, 1.0]}, "straggler": straggler}


def test_the_runs_straggler_is_the_rank_named_in_most_epochs_not_one_pause():
    slow = {"rank": 1, "host": "node2", "factor": 2.06}
    # One epoch with a 7 s pause on rank 1, eleven without: the run has no straggler.
    assert timing.run_straggler([epoch(slow)] + [epoch(None)] * 11, 2) is None
    # Rank 1 slow in most epochs: named, with the median of its factors.
    records = [epoch({**slow, "factor": f}) for f in (1.6, 1.8, 3.0)] + [epoch(None)]
    assert timing.run_straggler(records, 2) == {"rank": 1, "host": "node2", "factor": 1.8}
    # Epochs measured at another world size (before a resume) do not count.
    assert timing.run_straggler([epoch(slow), {"rank_seconds": {"compute": [1.0]}, "straggler": None}], 2) == slow


def test_the_epoch_clock_waits_for_a_gpu_and_not_for_a_cpu(monkeypatch):
    waited: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(device))
    before = time.perf_counter()
    assert before <= timing.device_clock(torch.device("cpu")) and waited == []
    assert timing.device_clock(torch.device("cuda", 1)) >= before and waited == [torch.device("cuda", 1)]
