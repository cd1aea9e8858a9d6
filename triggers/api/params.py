"""Ids and names that come in paths and queries: checked to be one safe path segment, or sanitised into one;
and the names uploads get in the bucket."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, Path as PathParam, Query

from schemas.api import PATH_ID_PATTERN
from triggers.api.errors import HttpError, short

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm")  # what the prepare stage accepts
AUDIO_SUFFIXES = (".wav", ".mp3", ".m4a", ".ogg", ".flac")  # recordings a talking brief's `audio:` names
BRIEF_SUFFIXES = (".yaml", ".yml", ".json")
UPLOADS_PREFIX = "uploads/"

PATH_ID = re.compile(PATH_ID_PATTERN)
UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


def check_id(value: str, what: str) -> str:
    """Ids and names in paths are one safe path segment: no `/`, no `..`, no hidden names."""
    if not PATH_ID.fullmatch(value):
        raise HttpError(400, f"invalid_{what}_id", f"invalid {what} id {short(value)}: "
                        f"use letters, digits, '_', '.', '-' (starting with a letter or digit, at most 128)")
    return value


def _job_id_path(job_id: Annotated[str, PathParam(description="A job id, e.g. `sunrise-0123456789abcdef`.")]) -> str:
    return check_id(job_id, "job")


def _avatar_id_path(avatar_id: Annotated[str, PathParam(description="A deployed avatar id.")]) -> str:
    return check_id(avatar_id, "avatar")


JobId = Annotated[str, Depends(_job_id_path)]
AvatarId = Annotated[str, Depends(_avatar_id_path)]
NameQuery = Annotated[str | None, Query(max_length=200, description=(
    "File name for the brief in inbox/ (sanitised; an extension is dropped). "
    "Posting the same bytes under the same name again returns the existing job."))]


def sanitise_name(name: str) -> str:
    stem = name.strip().replace("\\", "/").rsplit("/", 1)[-1]
    lower = stem.lower()
    for suffix in BRIEF_SUFFIXES + VIDEO_SUFFIXES:
        if lower.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    stem = UNSAFE_NAME_CHARS.sub("-", stem).strip("._-")[:128]
    if not stem or not PATH_ID.fullmatch(stem):
        raise HttpError(400, "invalid_name", f"name {short(name)} has no usable characters")
    if stem.lower().endswith(".batch"):  # `<stem>.batch.yaml` in inbox/ is read as a batch, not as one brief
        raise HttpError(400, "invalid_name", f"name {short(name)} ends in .batch: post batches to POST /batches")
    return stem


def upload_filename(raw: str | None, suffixes: tuple[str, ...], *, kind: str) -> str:
    """An uploaded file's name, made one safe segment; refused (415 `unsupported_<kind>`) unless it ends in one of
    `suffixes`."""
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    stem, dot, suffix = name.rpartition(".")
    if not dot or f".{suffix.lower()}" not in suffixes:
        raise HttpError(415, f"unsupported_{kind}", f"upload a {'/'.join(suffixes)} {kind} file, got {short(name)}")
    stem = UNSAFE_NAME_CHARS.sub("-", stem).strip("._-")[:100] or kind
    return f"{stem}.{suffix.lower()}"


def speech_upload_key(avatar: str, filename: str, sha256: str) -> str:
    """Where a recording for `avatar` is kept: named by its content too, so a new take under an old name never
    collides with the old one, and the same take uploaded again is the same object."""
    stem, _, suffix = filename.rpartition(".")
    return f"{UPLOADS_PREFIX}{avatar}/speech/{stem}-{sha256[:12]}.{suffix}"
