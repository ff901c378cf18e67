"""What a benchmark figure's last digits depend on besides the code: the CPU kind and the library builds.

Figures from one machine kind do not carry to another: the same commit trains to other parameter
hashes on an Intel Xeon with AVX-512 than on an AMD EPYC, and the `torch.mm` rate that
``bench/train_step.py`` divides by differs 2.5x between them (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import platform
from importlib.metadata import version
from pathlib import Path


def _cpuinfo(key: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    return None


def cpu_name() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def vector_extensions() -> str:
    """The wide-vector instruction sets the CPU reports that float kernels choose between."""
    flags = set((_cpuinfo("flags") or "").split())
    found = [name for name, flag in (("AVX2", "avx2"), ("AVX-512", "avx512f"), ("AVX-512 BF16", "avx512_bf16"),
                                     ("AMX", "amx_tile")) if flag in flags]
    return ", ".join(found) if found else "no AVX2/AVX-512 reported"


def machine() -> str:
    """CPU kind and the torch and transformers builds (the layer cache is encoded with the latter)."""
    return f"{cpu_name()}, torch {version('torch')}, transformers {version('transformers')}"
