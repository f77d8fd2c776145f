"""train.bf16=auto: bf16 where the hardware multiplies it natively, fp32 elsewhere."""

from __future__ import annotations

import pytest
import torch

from mnist_ddp.model import precision
from mnist_ddp.model.precision import choose_bf16, cpu_flags, native_bf16

CPU = torch.device("cpu")
EPYC_AVX512 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
EPYC_AVX2 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"
SAPPHIRE_RAPIDS = "flags\t\t: avx2 avx512f amx_tile amx_bf16 amx_int8\n"


def cpuinfo(tmp_path, text: str):
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return path


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    assert {"avx2", "avx512_bf16"} <= cpu_flags(cpuinfo(tmp_path, EPYC_AVX512))
    assert cpu_flags(tmp_path / "missing") == set()  # not Linux: no flags, so fp32


@pytest.mark.parametrize(
    "text, chosen, reason",
    [
        (EPYC_AVX512, True, "train.bf16=auto: avx512_bf16"),
        (SAPPHIRE_RAPIDS, True, "train.bf16=auto: amx_bf16"),
        (EPYC_AVX2, False, "train.bf16=auto: no amx_bf16/avx512_bf16"),
    ],
)
def test_auto_picks_bf16_only_where_the_cpu_has_it_natively(tmp_path, text, chosen, reason):
    assert choose_bf16("auto", CPU, cpuinfo(tmp_path, text)) == (chosen, reason)


def test_true_and_false_are_kept_whatever_the_hardware(tmp_path):
    assert choose_bf16("true", CPU, cpuinfo(tmp_path, EPYC_AVX2)) == (True, "train.bf16=true")
    assert choose_bf16("false", CPU, cpuinfo(tmp_path, EPYC_AVX512)) == (False, "train.bf16=false")


@pytest.mark.parametrize("capability, chosen", [((8, 0), True), ((9, 0), True), ((7, 5), False)])
def test_auto_on_a_gpu_follows_its_compute_capability(monkeypatch, capability, chosen):
    monkeypatch.setattr(precision.torch.cuda, "get_device_capability", lambda device: capability)
    cuda = torch.device("cuda", 0)
    assert (native_bf16(cuda) is not None) == chosen
    assert choose_bf16("auto", cuda)[0] == chosen


def test_tf32_is_set_on_cuda_either_way_and_named_on_a_cpu(monkeypatch):
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        assert precision.allow_tf32(True, torch.device("cuda")) == "; fp32 matmuls in TF32 (train.tf32=true)"
        assert torch.backends.cuda.matmul.allow_tf32 is True
        assert precision.allow_tf32(False, torch.device("cuda")) == ""
        assert torch.backends.cuda.matmul.allow_tf32 is False
        assert precision.allow_tf32(True, torch.device("cpu")) == "; train.tf32 has no effect on a CPU"
        assert torch.backends.cuda.matmul.allow_tf32 is False  # a CPU run leaves it alone
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.parametrize("switch, expected", [(True, True), (False, False)])
def test_auto_on_a_bf16_gpu_follows_the_one_measured_switch(monkeypatch, switch, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(precision, "AUTO_BF16_ON_CUDA", switch)
    bf16, why = precision.choose_bf16("auto", torch.device("cuda"))
    assert bf16 is expected and "compute capability 9.0" in why
    assert precision.choose_bf16("true", torch.device("cuda"))[0] is True
