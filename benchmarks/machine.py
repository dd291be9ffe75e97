"""Describe the machine a benchmark ran on (nproc, CPU model and generation, RAM)."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

# The vector extensions that decide CPU training speed here: the same "AMD EPYC" model name
# has come with AVX512-BF16 on one day's machine and AVX2 only on another, and epochs ran
# ~2.5x slower on the latter.
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")


def parse_cpuinfo(text: str) -> dict[str, object]:
    """Model name, family/model numbers and the SIMD flags of the first CPU in /proc/cpuinfo."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor's block is enough
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    return {
        "cpu": fields.get("model name", "unknown"),
        "cpu_family_model": f"{fields.get('cpu family', '?')}/{fields.get('model', '?')}",
        "cpu_simd": [f for f in SIMD_FLAGS if f in flags],
    }


def machine_info() -> dict[str, object]:
    cpu: dict[str, object] = {"cpu": "unknown"}
    with contextlib.suppress(OSError):
        cpu = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    mem_gib = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
                break
    return {"nproc": os.cpu_count(), **cpu, "ram_gib": mem_gib, "python": platform.python_version()}
