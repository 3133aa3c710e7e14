"""Which CPU a benchmark ran on: machines of one kind differ (Intel with AVX-512 on some, AMD on
others), and the speed of a kernel against oneDNN or onnxruntime differs with them, so every
timing row says where it was measured."""

from __future__ import annotations

import platform
from pathlib import Path

# Rows measured before the JSON named the CPU: they all ran on this machine's AMD CPU.
EARLIER = "AMD EPYC (Zen 5)"


def cpu() -> str:
    """The CPU's model name as Linux reports it (a virtual machine may give a generic one), with
    the widest vector extension the kernels use."""
    info = Path("/proc/cpuinfo")
    text = info.read_text() if info.is_file() else ""
    names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None
    name = names[0] if names else platform.processor() or platform.machine()
    return f"{name}, {isa}" if isa else name
