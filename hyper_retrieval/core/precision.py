"""Where bfloat16 pays: which number format a device computes fastest in.

bfloat16 halves memory traffic everywhere, but it only computes faster where the matrix units take it natively: CUDA
GPUs of compute capability 8 and up, and CPUs with AMX tiles (Intel Sapphire Rapids and later). AVX512-BF16 alone is
not enough: its dot-product instruction issues on one port where float32 FMAs issue on two, so a bfloat16 matmul does
the same work per cycle plus the conversions. Measured on a 2-core Xeon with AVX512-BF16 and no AMX
(bench/train.py, docs/RESULTS.md): MiniLM training steps 0.7x and corpus encoding 0.7x the speed of float32.
"""

from __future__ import annotations

from pathlib import Path

import torch


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags as the kernel reports them (empty where there is no /proc/cpuinfo)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def fast_bf16(device: torch.device | str, flags: set[str] | None = None) -> bool:
    """True when bfloat16 matmuls run faster than float32 ones on ``device``: a CUDA GPU that supports bf16, or a
    CPU whose flags include amx_bf16 and whose kernel lets this process use the AMX tiles (``flags``: the CPU's, for
    tests; default /proc/cpuinfo)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False
    if flags is not None:
        return "amx_bf16" in flags
    tiles_usable = getattr(torch.cpu, "_is_amx_tile_supported", None)  # asks the kernel for the AMX state too
    return "amx_bf16" in cpu_flags() and (tiles_usable is None or bool(tiles_usable()))


def resolve_mixed_precision(setting: str | None, device: torch.device | str, flags: set[str] | None = None
                            ) -> str | None:
    """``optim.mixed_precision`` made concrete: "auto" is "bf16" where :func:`fast_bf16`, else "no"; any other
    value (None: the launcher's choice) is returned as it is."""
    if setting != "auto":
        return setting
    return "bf16" if fast_bf16(device, flags) else "no"


def resolve_dtype(setting: str, device: torch.device | str) -> str:
    """``--dtype`` made concrete: "auto" is "bfloat16" where :func:`fast_bf16`, else "float32"."""
    if setting != "auto":
        return setting
    return "bfloat16" if fast_bf16(device) else "float32"
