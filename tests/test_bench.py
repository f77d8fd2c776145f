"""The benchmark command: real runs (digits, so no MNIST needed) measured into a table and JSON."""

from __future__ import annotations

import json

from conftest import run_in_process, run_module

from mnist_ddp import bench


def test_parameter_count_and_flops_match_the_model():
    from mnist_ddp.model import MLP, parameter_count

    assert bench.PARAMETERS == parameter_count(MLP(784, bench.WIDTHS[1:-1], 0.5)) == 383_242
    assert bench.FLOPS_PER_SAMPLE == 6 * 383_242


def test_matmul_gflops_is_a_plausible_positive_rate():
    rate = bench.matmul_gflops("float32", 64, 3)
    assert 0.1 < rate < 100_000


def test_quick_benchmark_prints_a_table_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = run_module(
        "mnist_ddp.bench", "--quick", f"--out={out}", "data.dataset=digits", "train.batch_size=64", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    names = [r["name"] for r in report["rows"]]
    assert names == ["seed-loop (blog)", "mnist_ddp default", "ddp 2x1 plain"]
    for name in names:
        assert name in result.stdout
    limit = report["limit"]
    assert limit["fp32_1x"] > 0 and limit["fp32_2x1"] > 0 and limit["bf16_1x"] > 0
    for row in report["rows"]:
        assert row["samples_per_second"] > 0
        assert row["fraction_of_limit"] > 0  # (8x8 digits need fewer FLOPs than the MNIST model it assumes)
        assert len(row["peak_rss_mb"]) == row["ranks"] and all(m > 50 for m in row["peak_rss_mb"])
    default, ddp = report["rows"][1], report["rows"][2]
    assert default["final_accuracy"] > 0.8 and ddp["final_accuracy"] > 0.8
    assert ddp["vs_one_process"] == ddp["samples_per_second"] / default["samples_per_second"]
    assert default["times_floor"] == default["seconds_per_epoch"] / (
        bench.EPOCH_IMAGES / (limit["fp32_1x"] * 1e9 / bench.FLOPS_PER_SAMPLE)
    )


def test_a_bad_override_is_a_one_line_error_before_any_measuring(tmp_path):
    out = tmp_path / "b.json"
    result = run_in_process("mnist_ddp.bench", "--quick", f"--out={out}", "train.batch_size=0", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == "error: config key 'train.batch_size' is 0; it must be at least 1\n"
    assert not out.exists() and result.stdout == ""


def test_every_row_is_a_valid_config_and_the_diagnostics_line_reads_the_ab_job():
    from mnist_ddp.config import load_config

    for _, overrides in bench.DDP_ROWS:
        load_config(None, overrides)
    off = load_config(None, bench.NO_DIAGNOSTICS)
    assert off.dist.liveness_seconds == 0 and off.log.rank_times is False
    ab = {"off_ms_per_step": 12.0, "on_ms_per_step": 12.12, "on_over_off_samples": 12.0 / 12.12, "blocks": 24}
    assert bench.diagnostics_cost(ab) == (
        "diagnostics (liveness watchdog, gradient-wait timing, phase marks), A/B in one 2-rank job, medians of 24"
        f" alternating blocks of {bench.AB_STEPS} steps: 12.12 ms/step on, 12.00 off: 0.990 of samples/s"
    )
    assert bench.diagnostics_cost({}) == ""  # --quick runs no A/B
