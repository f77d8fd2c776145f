"""The benchmark command: real runs (digits, so no MNIST needed) measured into a table and JSON."""

from __future__ import annotations

import json

import pytest
from conftest import run_in_process, run_module

from mnist_ddp.bench import limit as bench_limit
from mnist_ddp.bench import rows as bench_rows
from mnist_ddp.bench import workers as bench_workers


def test_parameter_count_and_flops_match_the_model():
    from mnist_ddp.model.mlp import MLP, parameter_count

    assert bench_limit.PARAMETERS == parameter_count(MLP(784, bench_limit.WIDTHS[1:-1], 0.5)) == 383_242
    assert bench_limit.FLOPS_PER_SAMPLE == 6 * 383_242


def test_matmul_gflops_is_a_plausible_positive_rate():
    readied = []
    rate = bench_limit.matmul_gflops("float32", 64, 0.01, ready=lambda: readied.append(1))
    assert 0.1 < rate < 100_000
    assert readied == [1]  # the barrier, once, between the warm-up and the timing


def test_the_limit_workers_time_each_precision_together():
    # 2 single-thread processes at once (the 2x1 configurations, which --quick leaves out).
    results = bench_limit.run_limit_workers(1, bench_limit.RANKS, seconds=0.01)
    assert len(results) == bench_limit.RANKS
    for r in results:
        assert r["threads"] == 1 and r["fp32"] > 0 and r["bf16"] > 0


def made_up_rows(limit_gflops: float, fractions: list[float]) -> list[dict]:
    """The quick benchmark's rows at the given fractions of a limit."""
    rate = limit_gflops * 1e9 / bench_limit.FLOPS_PER_SAMPLE
    names = [("seed-loop (blog)", 1), ("mnist_ddp default", 1), ("ddp 2x1 plain", 2)]
    return [
        {
            "name": name,
            "ranks": ranks,
            "samples_per_second": f * rate,
            "seconds_per_epoch": bench_limit.EPOCH_IMAGES / (f * rate),
            "peak_rss_mb": [400.0] * ranks,
        }
        for (name, ranks), f in zip(names, fractions, strict=True)
    ]


def test_the_limit_is_the_fastest_configuration_and_every_row_is_a_fraction_of_it():
    # The CPU: 1 process of 2 threads 94.7 GFLOP/s, 2 single-thread processes 183; with
    # AVX512-BF16, bf16 faster still. The default row used to read 136% of the 1-process fp32 figure.
    limit = {"fp32_1x": 94.7, "bf16_1x": 290.0, "threads_1x": 2, "peak_rss_mb": 300.0, "quick": False}
    limit |= {"fp32_2x1": 183.0, "bf16_2x1": 302.0}
    rows = made_up_rows(302.0, [0.5, 1.0, 0.75])
    bench_rows.annotate(rows, limit)
    assert (limit["fastest"], limit["gflops"]) == ("bf16_2x1", 302.0)
    seed, default, ddp = rows
    assert default["fraction_of_limit"] <= 1 and default["fraction_of_limit"] == pytest.approx(1.0)
    assert default["times_floor"] == pytest.approx(1.0)
    assert seed["fraction_of_limit"] == pytest.approx(0.5) and "times_floor" not in seed
    assert ddp["fraction_of_limit"] == pytest.approx(0.75)  # against the same limit as 1 process
    assert ddp["vs_one_process"] == pytest.approx(0.75)
    table = bench_rows.format_table(rows, limit)
    assert table.splitlines()[0] == (
        "machine limit 302.0 GFLOP/s (bf16 2x1), the fastest of fp32 1x 94.7, fp32 2x1 183.0, bf16 1x 290.0,"
        " bf16 2x1 302.0 GFLOP/s: matmuls at the model's shapes (batch 512); 1x: 1 process, torch's default"
        " 2 threads; 2x1: 2 single-thread processes at once. 2.30 MFLOP per sample (6 x 383,242 parameters)."
    )
    assert table.splitlines()[1] == "" and "above the machine limit" not in table
    assert "mnist_ddp default" in table.splitlines()[4] and "100%" in table.splitlines()[4]

    # Where bf16 is slow (AVX2 only), the fastest fp32 configuration is the limit.
    avx2 = {"fp32_1x": 94.7, "fp32_2x1": 183.0, "bf16_1x": 3.1, "bf16_2x1": 4.4}
    bench_rows.annotate(made_up_rows(94.7 * 1.36, [0.5, 1.0, 0.75]), avx2)
    assert (avx2["fastest"], avx2["gflops"]) == ("fp32_2x1", 183.0)


def test_a_row_above_the_limit_is_named_under_the_table():
    limit = {"fp32_1x": 94.7, "bf16_1x": 3.1, "peak_rss_mb": 300.0, "quick": False}
    rows = made_up_rows(94.7, [0.5, 1.36, 1.05])  # the default over the limit, DDP within noise of it
    bench_rows.annotate(rows, limit)
    last = bench_rows.format_table(rows, limit).splitlines()[-1]
    assert last == (
        "above the machine limit by more than 10%: mnist_ddp default (136%). The limit was mismeasured, or the"
        " overrides make a smaller model than the 2.30 MFLOP per sample assumed: this run's 'of limit' and"
        " 'x floor' are not fractions of what the machine can do."
    )
    assert rows[1]["times_floor"] == pytest.approx(1 / 1.36)
    limit["quick"] = True
    table = bench_rows.format_table(rows, limit)
    assert table.splitlines()[0].startswith(
        "machine limit 94.7 GFLOP/s (fp32 1x), the fastest of fp32 1x 94.7, bf16 1x 3.1 GFLOP/s (--quick: the"
        " 1-process configurations only): matmuls at the model's shapes (batch 512); 1x: 1 process, torch's"
        " default threads. 2.30 MFLOP per sample"
    )
    assert "The limit was mismeasured (--quick measured the 1-process configurations only), or" in table


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
    assert limit["fp32_1x"] > 0 and limit["bf16_1x"] > 0 and limit["threads_1x"] >= 1 and limit["quick"] is True
    assert "fp32_2x1" not in limit and "bf16_2x1" not in limit  # --quick: the 1-process configurations only
    assert limit["gflops"] == limit[limit["fastest"]] == max(limit["fp32_1x"], limit["bf16_1x"])
    first = result.stdout.splitlines()[0]
    assert first.startswith(f"machine limit {limit['gflops']:.1f} GFLOP/s ({limit['fastest'].replace('_', ' ')}),")
    assert "(--quick: the 1-process configurations only)" in first
    over = any(r["fraction_of_limit"] > 1 + bench_limit.LIMIT_TOLERANCE for r in report["rows"])
    assert ("above the machine limit by more than 10%" in result.stdout) == over
    for row in report["rows"]:
        assert row["samples_per_second"] > 0
        assert row["fraction_of_limit"] > 0  # (8x8 digits need fewer FLOPs than the MNIST model it assumes)
        assert len(row["peak_rss_mb"]) == row["ranks"] and all(m > 50 for m in row["peak_rss_mb"])
    masks = report["masks_ab"]  # keyed dropout masks against drawn ones, A/B in one process
    assert masks["blocks"] == bench_workers.MASK_BLOCKS_QUICK and masks["keyed_ms_per_step"] > 0
    ratio = masks["generator_ms_per_step"] / masks["keyed_ms_per_step"]
    assert masks["keyed_over_generator_samples"] == pytest.approx(ratio)
    assert "dropout masks keyed to the samples against drawn from the generator" in result.stdout
    default, ddp = report["rows"][1], report["rows"][2]
    assert default["final_accuracy"] > 0.8 and ddp["final_accuracy"] > 0.8
    assert ddp["vs_one_process"] == ddp["samples_per_second"] / default["samples_per_second"]
    assert default["times_floor"] == default["seconds_per_epoch"] / (
        bench_limit.EPOCH_IMAGES / (limit["gflops"] * 1e9 / bench_limit.FLOPS_PER_SAMPLE)
    )


def test_a_bad_override_is_a_one_line_error_before_any_measuring(tmp_path):
    out = tmp_path / "b.json"
    result = run_in_process("mnist_ddp.bench", "--quick", f"--out={out}", "train.batch_size=0", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == "error: config key 'train.batch_size' is 0; it must be at least 1\n"
    assert not out.exists() and result.stdout == ""


def test_every_row_is_a_valid_config_and_the_diagnostics_line_reads_the_ab_job():
    from mnist_ddp.config.loading import load_config

    for _, overrides in bench_rows.DDP_ROWS:
        load_config(None, overrides)
    off = load_config(None, bench_rows.NO_DIAGNOSTICS)
    assert off.dist.liveness_seconds == 0 and off.log.rank_times is False
    ab = {"off_ms_per_step": 12.0, "on_ms_per_step": 12.12, "on_over_off_samples": 12.0 / 12.12, "blocks": 24}
    assert bench_workers.diagnostics_cost(ab) == (
        "diagnostics (liveness watchdog, gradient-wait timing, phase marks), A/B in one 2-rank job, medians of 24"
        f" alternating blocks of {bench_workers.AB_STEPS} steps: 12.12 ms/step on, 12.00 off: 0.990 of samples/s"
    )
    assert bench_workers.diagnostics_cost({}) == ""  # --quick runs no A/B
