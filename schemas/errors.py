"""The error shape shared by briefs, stages and manifests."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ErrorInfo(BaseModel):
    """A stable, machine-readable error: `code` is snake_case and never renamed."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    message: str
    retryable: bool = False


class VideostudioError(Exception):
    """An error with a stable code. Stages raise it for anything a user can fix."""

    def __init__(self, code: str, message: str, *, retryable: bool = False,
                 details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        # Field errors ({loc, msg, type}) of an invalid brief: the API returns them so forms can mark each field.
        self.details = details

    def info(self) -> ErrorInfo:
        return ErrorInfo(code=self.code, message=self.message, retryable=self.retryable)
