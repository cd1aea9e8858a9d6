"""The avatar backends a train brief's `backend:` and a deployed avatar's manifest name.

Adding a backend: write its module (an `AvatarBackend` subclass, see base.py) and add one
`register(...)` line below.
"""

from __future__ import annotations

from functions.backends.base import AvatarBackend, DatasetPolicy, TrainedAvatar
from functions.backends.infinitetalk import InfiniteTalkBackend
from functions.backends.mochi_lora import MochiLoraBackend
from functions.backends.wav2lip import Wav2LipBackend
from schemas.errors import VideostudioError

BACKENDS: dict[str, AvatarBackend] = {}


def register(backend: AvatarBackend) -> AvatarBackend:
    """Make `backend` available under its name (a later registration of the same name replaces it)."""
    BACKENDS[backend.name] = backend
    return backend


def unregister(name: str) -> None:
    BACKENDS.pop(name, None)


def get_backend(name: str) -> AvatarBackend:
    try:
        return BACKENDS[name]
    except KeyError:
        known = ", ".join(sorted(BACKENDS))
        raise VideostudioError("unknown_backend", f"unknown avatar backend {name!r}; known backends: {known}") from None


register(MochiLoraBackend())
register(Wav2LipBackend())
register(InfiniteTalkBackend())

__all__ = ["AvatarBackend", "BACKENDS", "DatasetPolicy", "TrainedAvatar", "get_backend", "register", "unregister"]
