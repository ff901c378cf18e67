"""bench/machine.py: what a benchmark names as the machine its figures come from."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import machine  # noqa: E402


def test_vector_extensions_name_what_the_cpu_reports(monkeypatch):
    flags = {"flags": "fpu sse2 avx2 fma avx512f avx512bw avx512_bf16"}
    monkeypatch.setattr(machine, "_cpuinfo", flags.get)
    assert machine.vector_extensions() == "AVX2, AVX-512, AVX-512 BF16"
    monkeypatch.setattr(machine, "_cpuinfo", {"flags": "fpu sse2 avx2 fma"}.get)
    assert machine.vector_extensions() == "AVX2"
    monkeypatch.setattr(machine, "_cpuinfo", {}.get)  # no /proc/cpuinfo
    assert machine.vector_extensions() == "no AVX2/AVX-512 reported"
    assert machine.cpu_name()  # falls back to what platform knows


def test_machine_names_the_cpu_and_both_library_builds():
    from importlib.metadata import version

    text = machine.machine()
    assert text.startswith(machine.cpu_name()) and f"torch {version('torch')}" in text
    assert f"transformers {version('transformers')}" in text
