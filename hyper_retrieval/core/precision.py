"""Where bfloat16 pays: which number format a device computes fastest in.

bfloat16 halves memory traffic everywhere, but it only computes faster where the matrix units take it natively: CUDA
GPUs of compute capability 8 and up, CPUs with AMX tiles (Intel Sapphire Rapids and later), and AMD CPUs with
AVX512-BF16 (measured on Zen 4). On an Intel CPU AVX512-BF16 alone is not enough: its dot-product instruction issues on
one port where float32 FMAs issue on two, so a bfloat16 matmul does the same work per cycle plus the conversions.
Measured on 2 cores (bench/train.py, bench/train_run.py, bench/eval.py; docs/RESULTS.md): on a Xeon with AVX512-BF16
and no AMX, MiniLM training steps 0.74x and corpus encoding 0.73-0.97x the speed of float32; on an AMD EPYC (Zen 4),
training 1.69x (train.py's step 1.58x) and encoding 1.74x.
"""

from __future__ import annotations

from pathlib import Path

import torch


def _cpuinfo_field(name: str, cpuinfo: Path) -> str:
    """The first ``name : value`` line's value in /proc/cpuinfo (empty where there is none, or no file)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return ""


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags as the kernel reports them (empty where there is no /proc/cpuinfo)."""
    return set(_cpuinfo_field("flags", cpuinfo).split())


def cpu_vendor(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's vendor_id ("GenuineIntel", "AuthenticAMD"; empty where there is no /proc/cpuinfo)."""
    return _cpuinfo_field("vendor_id", cpuinfo)


def fast_bf16(device: torch.device | str, flags: set[str] | None = None, vendor: str = "") -> bool:
    """True when bfloat16 matmuls run faster than float32 ones on ``device``: a CUDA GPU that supports bf16; a CPU
    whose flags include amx_bf16 and whose kernel lets this process use the AMX tiles; an AMD CPU with avx512_bf16.
    ``flags`` and ``vendor``: a CPU's, for tests (default: this machine's /proc/cpuinfo)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False
    if flags is None:
        flags, vendor = cpu_flags(), cpu_vendor()
        tiles_usable = getattr(torch.cpu, "_is_amx_tile_supported", None)  # asks the kernel for the AMX state too
        if tiles_usable is not None and not tiles_usable():
            flags = flags - {"amx_bf16"}
    return "amx_bf16" in flags or ("avx512_bf16" in flags and vendor == "AuthenticAMD")


def resolve_mixed_precision(setting: str | None, device: torch.device | str, flags: set[str] | None = None,
                            vendor: str = "") -> str | None:
    """``optim.mixed_precision`` made concrete: "auto" is "bf16" where :func:`fast_bf16`, else "no"; any other
    value (None: the launcher's choice) is returned as it is."""
    if setting != "auto":
        return setting
    return "bf16" if fast_bf16(device, flags, vendor) else "no"


def resolve_dtype(setting: str, device: torch.device | str) -> str:
    """``--dtype`` made concrete: "auto" is "bfloat16" where :func:`fast_bf16`, else "float32"."""
    if setting != "auto":
        return setting
    return "bfloat16" if fast_bf16(device) else "float32"
