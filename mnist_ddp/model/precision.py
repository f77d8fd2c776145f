"""Which precision a rank trains in: ``train.bf16`` = auto | true | false.

bf16 autocast pays only where the hardware multiplies bf16 natively: GPUs of compute capability
8.0 and later, and CPUs with AVX512-BF16 or AMX. On an AVX2-only CPU bf16 matmuls run ~30x
slower than fp32; on an AVX512-BF16 EPYC ~3x faster (the default config trained at 73,000
samples/s in bf16 against 47,800 in fp32). ``auto`` asks the hardware once at start; ``true``
and ``false`` fix the choice, for runs that must reproduce bit for bit on other machines.
"""

from __future__ import annotations

from pathlib import Path

import torch

# Whether train.bf16=auto picks bf16 on a GPU that multiplies it natively (capability >= 8.0).
# Not measured yet: no GPU has run this job. benchmarks/gpu.sh's rows default-graphs (bf16),
# default-fp32-graphs and default-tf32-graphs decide it: False if fp32 or TF32 is faster for
# this small model (bf16 adds a cast per weight and gradient to every step).
AUTO_BF16_ON_CUDA = True
# CPU feature flags (Linux /proc/cpuinfo) under which oneDNN runs bf16 matmuls natively.
NATIVE_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str]:
    """The CPU's feature flags; empty where the file is missing or unreadable (not Linux)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.partition(":")[2].split())
    return set()


def native_bf16(device: torch.device, cpuinfo: Path = CPUINFO) -> str | None:
    """What makes bf16 native on ``device`` (a CPU flag or the GPU's compute capability), or None."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"compute capability {major}.{minor}" if major >= 8 else None
    flags = cpu_flags(cpuinfo)
    return next((flag for flag in NATIVE_BF16_CPU_FLAGS if flag in flags), None)


def choose_bf16(setting: str, device: torch.device, cpuinfo: Path = CPUINFO) -> tuple[bool, str]:
    """Whether to train in bf16 autocast, and why, in words for the run's first line and summary."""
    if setting != "auto":
        return setting == "true", f"train.bf16={setting}"
    reason = native_bf16(device, cpuinfo)
    if reason is not None and device.type == "cuda" and not AUTO_BF16_ON_CUDA:
        return False, f"train.bf16=auto: fp32 on CUDA, measured faster for this model ({reason})"
    if reason is not None:
        return True, f"train.bf16=auto: {reason}"
    native = "compute capability 8.0" if device.type == "cuda" else "/".join(NATIVE_BF16_CPU_FLAGS)
    return False, f"train.bf16=auto: no {native}"


def allow_tf32(enabled: bool, device: torch.device) -> str:
    """Let CUDA's fp32 matmuls use TF32 (train.tf32=true) or not; what that means here, in words
    for the run's first line ('' when off)."""
    if device.type != "cuda":
        return "; train.tf32 has no effect on a CPU" if enabled else ""
    torch.backends.cuda.matmul.allow_tf32 = enabled  # process-wide: set either way
    return "; fp32 matmuls in TF32 (train.tf32=true)" if enabled else ""
