"""The GPUs the planner knows: memory as the driver reports it, compute capability for fp8 support."""

from __future__ import annotations

from dataclasses import dataclass

from functions.quantization.layers import FP8_DYNAMIC_MIN_CAPABILITY
from schemas.errors import VideostudioError

GiB = 1024**3
MiB = 1024**2


@dataclass(frozen=True)
class GpuSpec:
    name: str
    memory_bytes: int
    capability: tuple[int, int] | None = None  # None: unknown (a bare size)

    @property
    def gib(self) -> float:
        return self.memory_bytes / GiB


# Total memory as the driver reports it (nvidia-smi, MiB); compute capability for fp8 support.
KNOWN_GPUS: dict[str, GpuSpec] = {
    "L4": GpuSpec("L4", 23034 * MiB, (8, 9)),
    "A10G": GpuSpec("A10G", 23028 * MiB, (8, 6)),
    "A100-40GB": GpuSpec("A100-40GB", 40960 * MiB, (8, 0)),
    "A100-80GB": GpuSpec("A100-80GB", 81920 * MiB, (8, 0)),
    "H100": GpuSpec("H100", 81559 * MiB, (9, 0)),
    "H200": GpuSpec("H200", 143771 * MiB, (9, 0)),
}
_ALIASES = {"A100": "A100-40GB", "A100-40G": "A100-40GB", "A100-80G": "A100-80GB", "H100-80GB": "H100",
            "H200-141GB": "H200"}


def parse_gpu(text: str) -> GpuSpec:
    """A known GPU name (L4, A10G, A100-40GB, A100-80GB, H100, H200) or a size in GiB ("24", "24GiB")."""
    key = text.strip().upper().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key in KNOWN_GPUS:
        return KNOWN_GPUS[key]
    number = key.removesuffix("GIB").removesuffix("GB").removesuffix("G").strip()
    try:
        gib = float(number)
    except ValueError:
        raise VideostudioError("unknown_gpu", f"unknown GPU {text!r}; use one of {', '.join(KNOWN_GPUS)} "
                               "or a size in GiB such as 24") from None
    if not 0 < gib <= 4096:
        raise VideostudioError("unknown_gpu", f"GPU size {gib} GiB is out of range")
    return GpuSpec(f"{gib:g} GiB", int(gib * GiB), None)


def method_note(method: str, gpu: GpuSpec | None) -> str | None:
    """Why a method cannot run on this GPU (None when it can)."""
    if method == "fp8-dynamic":
        if gpu is None or gpu.capability is None:
            return "needs compute capability ≥ 8.9 (unknown for a bare size)"
        if gpu.capability < FP8_DYNAMIC_MIN_CAPABILITY:
            return f"needs compute capability ≥ 8.9 ({gpu.name} has {gpu.capability[0]}.{gpu.capability[1]})"
    return None
