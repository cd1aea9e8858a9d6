"""Object storage behind one interface: a local folder (the embedded default) or S3."""

from core.storage.base import ObjectInfo, PreconditionFailed, Storage, StorageError, validate_key
from core.storage.local import LocalStorage


def open_storage(uri: str) -> Storage:
    """`s3://bucket/prefix` selects S3 (not yet available); anything else is a local folder."""
    if uri.startswith("s3://"):
        raise StorageError("s3_backend_unavailable", "this build has no S3 storage backend; use a local folder")
    return LocalStorage(uri)


__all__ = ["LocalStorage", "ObjectInfo", "PreconditionFailed", "Storage", "StorageError", "open_storage", "validate_key"]
