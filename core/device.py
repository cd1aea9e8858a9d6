"""Which torch device a stage runs on, and how the manifest names it: the one device helper.

torch is imported lazily so that core/ stays importable where torch is not installed (the API,
the intake functions).
"""

from __future__ import annotations

from schemas.errors import VideostudioError

DEVICE_SETTINGS = ("auto", "cpu", "cuda")


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pick_device(setting: str = "auto") -> str:
    """`auto` → cuda where a GPU is visible, else cpu; `cuda` without a GPU is a clear error."""
    if setting == "auto":
        return "cuda" if _cuda_available() else "cpu"
    if setting == "cuda" and not _cuda_available():
        raise VideostudioError("device_unavailable", "VIDEOSTUDIO_DEVICE=cuda but no CUDA device is visible")
    return setting


def device_name() -> str:
    """What the manifest's `cost.device` records: the GPU's name, or `cpu`."""
    if not _cuda_available():
        return "cpu"
    import torch

    return torch.cuda.get_device_name(0)


def usable_cuda_bytes() -> int:
    """Free GPU memory plus what this process's allocator already holds (a cached pipeline it can drop)."""
    import torch

    free, _total = torch.cuda.mem_get_info()
    return free + torch.cuda.memory_reserved()
