"""What this CPU has units for: the flags that decide each member's precision under
--model-config-name=cpu_fast (export/runtimes.py writes the configs at Triton's start).

bf16 only pays where the CPU computes bfloat16 itself (AVX-512 BF16 or AMX): elsewhere
OpenVINO's bf16 hint runs at fp32 speed. int8 pays where VNNI does the int8 dot products.
The flags are read from /proc/cpuinfo, or from TRITON_CPU_FLAGS where it is set (a
space-separated list standing for them, "" for none): tests cover every branch on any
machine with it, and an operator can force a choice.

Standard library only, like local_triton.
"""

import os
from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
FLAGS_ENV = "TRITON_CPU_FLAGS"
# The table of model_repository/cpu_fast.toml each kind of CPU reads, and the flags that
# make a CPU that kind (Linux's names, as /proc/cpuinfo lists them).
BF16_UNITS = "bf16_units"
VNNI_UNITS = "vnni_units"
NO_UNITS = "none"
UNIT_FLAGS = {
    BF16_UNITS: ("avx512_bf16", "amx_bf16"),
    VNNI_UNITS: ("avx512_vnni", "avx_vnni"),
}


@dataclass(frozen=True)
class CpuUnits:
    """The kind of CPU (BF16_UNITS, VNNI_UNITS or NO_UNITS) and the flags that made it so."""

    kind: str
    flags: tuple[str, ...]

    def describe(self) -> str:
        """Why: "avx512_bf16, amx_bf16 present", "no BF16 or VNNI units"."""
        if self.kind == NO_UNITS:
            return "no BF16 or VNNI units"
        present = f"{', '.join(self.flags)} present"
        return present if self.kind == BF16_UNITS else f"{present}, no BF16 units"


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The CPU's feature flags: TRITON_CPU_FLAGS where set, else the first `flags` line of
    /proc/cpuinfo (none where there is no such file or line: not Linux on x86)."""
    forced = os.environ.get(FLAGS_ENV)
    if forced is not None:
        return frozenset(forced.split())
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return frozenset()
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def cpu_units(flags: frozenset[str]) -> CpuUnits:
    """BF16 units first (a CPU with them has VNNI too, and bf16 was measured faster there),
    then VNNI, else none."""
    for kind in (BF16_UNITS, VNNI_UNITS):
        present = tuple(f for f in UNIT_FLAGS[kind] if f in flags)
        if present:
            return CpuUnits(kind, present)
    return CpuUnits(NO_UNITS, ())
