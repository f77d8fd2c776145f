"""A profile on request: nothing when off; a window of steps into a trace with the named ranges."""

from __future__ import annotations

import json

import torch

from mnist_ddp.config.schema import ProfileConfig
from mnist_ddp.observe.profiling import start_profiler


def test_off_means_no_profiler_at_all(tmp_path):
    assert start_profiler(ProfileConfig(steps=0), tmp_path, 0, torch.device("cpu")) is None
    assert start_profiler(ProfileConfig(steps=3), None, 0, torch.device("cpu")) is None  # nowhere to write


def test_a_window_of_steps_becomes_one_trace_with_the_ranges_and_a_table(tmp_path):
    profiler = start_profiler(ProfileConfig(steps=2, skip_steps=1, top=5), tmp_path, 3, torch.device("cpu"))
    x = torch.randn(64, 64)
    for _ in range(5):
        with torch.profiler.record_function("mnist_ddp/step"):
            x = (x @ x).tanh()
        profiler.step()
    table = profiler.stop()
    trace = json.loads((tmp_path / "profile" / "rank3.pt.trace.json").read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert "mnist_ddp/step" in names and "aten::mm" in names
    assert sum(e.get("name") == "mnist_ddp/step" for e in trace["traceEvents"]) == 2  # the window, not every step
    assert "aten::mm" in table and len([line for line in table.splitlines() if line.startswith("aten::")]) <= 5
    assert [p.name for p in (tmp_path / "profile").iterdir()] == ["rank3.pt.trace.json"]  # no temp file left
