"""Object storage behind one interface: a local folder (the embedded default) or S3."""

from core.storage.base import ObjectInfo, PreconditionFailed, Storage, StorageError, validate_key
from core.storage.local import LocalStorage
from core.settings import Settings


def is_s3_uri(uri: str) -> bool:
    return uri.startswith("s3://")


def open_storage(uri: str, *, settings: Settings | None = None) -> Storage:
    """`s3://bucket/prefix` selects an S3-compatible bucket; anything else is a local folder.

    S3 connection settings (endpoint, region, addressing, multipart sizes) come from `settings`,
    or from the `VIDEOSTUDIO_*` environment when none are given.
    """
    if is_s3_uri(uri):
        from core.storage.s3 import S3Storage

        return S3Storage(uri, config=s3_config(settings or Settings()))
    return LocalStorage(uri)


def s3_config(settings: Settings):
    from core.storage.s3 import MIB, S3Config

    return S3Config(endpoint_url=settings.s3_endpoint, region=settings.s3_region,
                    addressing_style=settings.s3_addressing_style, public_endpoint_url=settings.s3_public_endpoint,
                    multipart_threshold=settings.s3_multipart_threshold_mb * MIB,
                    multipart_chunksize=settings.s3_multipart_chunk_mb * MIB)


__all__ = ["LocalStorage", "ObjectInfo", "PreconditionFailed", "Storage", "StorageError", "is_s3_uri", "open_storage",
           "validate_key"]
