"""Strict checkpoint loading's one error: which keys were missing, unexpected or of another shape, a few of each
named, as `avatar_weights_incompatible` (wav2lip's and InfiniteTalk's loaders)."""

from __future__ import annotations

from collections.abc import Sequence

from schemas.errors import VideostudioError

MAX_NAMED = 4  # keys named per kind in a message; the rest are counted


def named(items: Sequence[str], limit: int = MAX_NAMED) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def raise_if_incompatible(what: str, *, missing: Sequence[str], unexpected: Sequence[str], wrong: Sequence[str],
                          subject: str = "the checkpoint does", limit: int = MAX_NAMED) -> None:
    """Raise avatar_weights_incompatible naming the problems, if there are any."""
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {named(missing, limit)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {named(unexpected, limit)}")
    if wrong:
        problems.append(f"{len(wrong)} with another shape: {named(wrong, limit)}")
    if problems:
        raise VideostudioError("avatar_weights_incompatible", f"{subject} not fit the {what}: " + "; ".join(problems))
