"""Multipart uploads (POST /train, POST /briefs/speech): text fields kept in memory, the one file (a video, a
recording) streamed to a hashed temp file.

streaming-form-data parses the body; this module adds what it leaves to its caller: the limits
(file bytes, number and size of text fields, the bytes around the file), one temp file that is
hashed as it is written and removed on any error, and the checks that every part had a name and
that the body really ended with its closing boundary. A large file never sits in memory, and its
size limit is enforced as it arrives. `form_document` turns the text fields into brief fields.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from email.errors import MessageError
from pathlib import Path
from typing import IO, Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from streaming_form_data import ParseFailedException, StreamingFormDataParser
from streaming_form_data.parser import parse_content_boundary
from streaming_form_data.targets import BaseTarget

from triggers.api.bodies import declared_length, too_large
from triggers.api.errors import HttpError

UPLOAD_FIELD = "video"                    # the multipart file field of POST /train (the default)
MAX_FORM_FIELDS = 64
MAX_FORM_FIELD_BYTES = 64 * 1024
FORM_OVERHEAD_BYTES = 1024 * 1024         # headers and text fields around the file in a multipart body
FEED_BYTES = 64 * 1024                    # the parser gets the body in pieces at least this large (see _Framer)

# What the parser raises on a malformed body: its own error, undecodable part headers (UnicodeDecodeError
# is a ValueError) and the email package's header parsing.
_PARSE_ERRORS = (ParseFailedException, ValueError, LookupError, MessageError)


def _invalid(message: str) -> HttpError:
    return HttpError(400, "invalid_multipart", message)


@dataclass
class UploadedForm:
    """A multipart body: its text fields, and its one file streamed to a temp file (hashed on the way)."""

    fields: dict[str, str] = field(default_factory=dict)
    file_path: Path | None = None
    filename: str | None = None
    content_type: str | None = None
    size: int = 0
    sha256: str | None = None

    def cleanup(self) -> None:
        if self.file_path is not None:
            self.file_path.unlink(missing_ok=True)


class _Parts(BaseTarget):
    """The one target every part goes to, whatever its name.

    streaming-form-data routes parts to targets registered by name, but the upload forms take any
    brief field; so this target is registered for every name, and learns each part's name
    from the parser's `matches` hook, which it calls just before the part starts. The parser
    calls `on_start`/`on_data_received`/`on_finish` synchronously from inside `data_received`.
    """

    def __init__(self, form: UploadedForm, *, max_file_bytes: int, file_field: str) -> None:
        super().__init__()
        self.form = form
        self.max_file_bytes = max_file_bytes
        self.file_field = file_field
        self.started = 0
        self.finished = 0
        self.quiet_bytes = 0                  # fed to the parser since it last called this target
        self._digest = hashlib.sha256()
        self._handle: IO[bytes] | None = None
        self._name = ""
        self._is_file = False
        self._text = bytearray()

    def matches(self, _registered: str, name: str) -> bool:
        self._name = name
        return True

    def on_start(self) -> None:
        self.started += 1
        self.quiet_bytes = 0
        self._text = bytearray()
        self._is_file = self.multipart_filename is not None
        if not self._is_file:
            if len(self.form.fields) >= MAX_FORM_FIELDS:
                raise _invalid(f"more than {MAX_FORM_FIELDS} form fields")
            return
        if self._name != self.file_field:
            raise _invalid(f"the file goes in the {self.file_field!r} field, not {self._name!r}")
        if self.form.file_path is not None:
            raise _invalid(f"send one {self.file_field} file per request")
        self.form.filename = self.multipart_filename
        fd, path = tempfile.mkstemp(prefix="videostudio-upload-", suffix=".part")
        self.form.file_path = Path(path)
        self._handle = os.fdopen(fd, "wb")

    def set_multipart_content_type(self, content_type: str) -> None:
        # Called from inside the parser's header scan, which must not raise: only note it.
        super().set_multipart_content_type(content_type)
        if self._is_file:
            self.form.content_type = content_type or None

    def on_data_received(self, chunk: bytes) -> None:
        self.quiet_bytes = 0
        if self._is_file:
            self.form.size += len(chunk)
            if self.form.size > self.max_file_bytes:
                raise HttpError(413, "payload_too_large",
                                f"the {self.file_field} is over the upload limit of {self.max_file_bytes} bytes")
            self._digest.update(chunk)
            assert self._handle is not None
            self._handle.write(chunk)
        else:
            self._text += chunk
            if len(self._text) > MAX_FORM_FIELD_BYTES:
                raise HttpError(413, "payload_too_large", f"form field {self._name!r} is over {MAX_FORM_FIELD_BYTES} bytes")

    def on_finish(self) -> None:
        # The parser also finishes the open part when it meets an error: the form is dropped then anyway.
        self.finished += 1
        self.quiet_bytes = 0
        if self._is_file:
            self.close()
        else:
            self.form.fields[self._name] = self._text.decode("utf-8", "replace")

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def sha256(self) -> str:
        return self._digest.hexdigest()


class _Framer:
    """Watches the body's boundaries as it streams, and decides what the parser is handed when.

    streaming-form-data (2.1) says neither whether the closing boundary came nor that it skipped a
    part without a name, so this counts the boundaries for `_FormStream` to check against the parts
    the parser started. It also steers clear of two bugs of that parser: bytes after the closing
    boundary in the same piece end up in the last part (which then never finishes), and a piece
    shorter than a boundary at the start of a part's body can fail with an internal error. So the
    body is cut right after its closing boundary (what follows is the epilogue, ignored by
    definition), and handed over in pieces of at least `FEED_BYTES` (and fewer thread hops).
    """

    def __init__(self, boundary: bytes) -> None:
        self._mark = b"\r\n--" + boundary
        self._tail = b"\r\n"                  # the first boundary has no CRLF before it
        self._pending = bytearray()
        self.boundaries = 0                   # boundaries that start a part
        self.closed = False                   # the closing boundary came

    def frame(self, chunk: bytes) -> bytes | None:
        """The next piece for the parser, or None while it gathers one."""
        if self.closed:
            return None
        data = self._tail + chunk
        searched = 0                          # every boundary before this is counted
        keep = len(data) - len(self._mark) + 1  # a boundary may be starting in the last bytes
        while (at := data.find(self._mark, searched)) != -1:
            end = at + len(self._mark)
            if len(data) < end + 2:           # too soon to tell a part's boundary from the closing one
                keep = at
                break
            searched = end
            after = data[end:end + 2]
            if after == b"--":
                self.closed = True
                chunk = chunk[:end + 2 - len(self._tail)]
                break
            if after == b"\r\n":               # anything else after it is part of a part's body
                self.boundaries += 1
        self._tail = data[max(searched, keep, 0):]
        self._pending += chunk
        if self.closed or len(self._pending) >= FEED_BYTES:
            return self.rest()
        return None

    def rest(self) -> bytes:
        piece = bytes(self._pending)
        self._pending.clear()
        return piece


class _FormStream:
    """One multipart body on its way in: the framer, the parser and the target, and the checks between them."""

    def __init__(self, content_type: str, *, max_file_bytes: int, file_field: str) -> None:
        try:
            boundary = parse_content_boundary({"Content-Type": content_type})
        except ParseFailedException:
            raise _invalid("multipart/form-data without a boundary") from None
        self.form = UploadedForm()
        self._framer = _Framer(boundary)
        self._parts = _Parts(self.form, max_file_bytes=max_file_bytes, file_field=file_field)
        self._parser = StreamingFormDataParser({"Content-Type": content_type})
        self._parser.register(file_field, self._parts, self._parts.matches)

    def frame(self, chunk: bytes) -> bytes | None:
        return self._framer.frame(chunk)

    def feed(self, piece: bytes) -> None:
        self._parts.quiet_bytes += len(piece)
        try:
            self._parser.data_received(piece)
        except HttpError:
            raise
        except _PARSE_ERRORS as exc:
            raise _invalid(f"malformed multipart body: {exc}") from None
        if self._parts.quiet_bytes > FORM_OVERHEAD_BYTES:
            # The parser holds a header line whole until its CRLF: never let one grow without bound.
            raise HttpError(413, "payload_too_large", f"more than {FORM_OVERHEAD_BYTES} bytes of part headers")
        self._check_parts(self._framer.boundaries - 1)

    def finish(self) -> UploadedForm:
        if not self._framer.closed:
            raise _invalid("the multipart body ended before its closing boundary")
        self._check_parts(self._framer.boundaries)
        if self._parts.finished < self._parts.started:
            raise _invalid("the multipart body ended inside a part")
        self._parts.close()
        if self.form.file_path is not None:
            self.form.sha256 = self._parts.sha256()
        return self.form

    def abort(self) -> None:
        self._parts.close()
        self.form.cleanup()

    def _check_parts(self, expected: int) -> None:
        """Every part the boundaries opened (all but the last, until the body ends) has been started by the parser."""
        if self._parts.started < expected:
            raise _invalid("every part needs `Content-Disposition: form-data; name=...`")


async def read_multipart(request: Request, *, max_file_bytes: int, file_field: str = UPLOAD_FIELD) -> UploadedForm:
    """The body's text fields, and its one file (sent in the `file_field` part) in a temp file."""
    stream = _FormStream(request.headers.get("content-type", ""), max_file_bytes=max_file_bytes,
                         file_field=file_field)
    limit = max_file_bytes + FORM_OVERHEAD_BYTES
    declared = declared_length(request)
    if declared is not None and declared > limit:
        raise HttpError(413, "payload_too_large",
                        f"the {file_field} is over the upload limit of {max_file_bytes} bytes")
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise too_large(limit)
            piece = stream.frame(chunk)
            if piece:
                await run_in_threadpool(stream.feed, piece)  # file writes happen off the event loop
        return await run_in_threadpool(stream.finish)
    except ClientDisconnect:
        stream.abort()
        raise HttpError(400, "client_disconnected", "the client went away during the upload") from None
    except BaseException:
        stream.abort()
        raise


def form_document(form: UploadedForm, *, keep_empty: tuple[str, ...] = ("avatar",)) -> dict[str, Any]:
    """Text fields become brief fields; `webhook` is JSON, and a dotted name sets a nested option
    (`wav2lip.width` → `wav2lip: {width: …}`). An empty field is left out (an HTML form sends every input),
    except those in `keep_empty`, which the brief then refuses by name."""
    document: dict[str, Any] = {}
    for name, value in form.fields.items():
        if name == "webhook":
            try:
                document[name] = json.loads(value)
            except json.JSONDecodeError as exc:
                raise HttpError(422, "invalid_json", f"webhook: not valid JSON: {exc.msg}") from None
        elif value != "" or name in keep_empty:
            *parents, leaf = name.split(".")
            target = document
            for parent in parents:
                target = target.setdefault(parent, {})
                if not isinstance(target, dict):
                    raise HttpError(422, "invalid_multipart", f"form field {name!r}: {parent!r} is not a group of options")
            target[leaf] = value
    return document
