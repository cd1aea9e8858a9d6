"""An S3-compatible bucket (AWS S3, Cloudflare R2, MinIO, Ceph RGW) as the storage backend.

`s3://bucket/prefix` keeps every object under `prefix/`; callers only ever see keys relative to it.

How the storage interface maps onto S3:
- `put_bytes(if_none_match=True)`: `PutObject` with `If-None-Match: *`, the create-if-absent lock;
  `412 PreconditionFailed` and `409 ConditionalRequestConflict` (a concurrent conditional write on
  AWS) both mean "lost": `PreconditionFailed`.
- `put_bytes(if_match=etag)`: `PutObject` with `If-Match`, compare-and-swap for manifests. AWS and
  MinIO accept the ETag quoted (as S3 returns it); Ceph RGW 16 only matches it unquoted. The backend
  sends the quoted form, and if a 412 comes back while the object still has exactly that ETag, it
  learns that this server wants the other form and retries once (a genuine conflict changes the ETag).
  `If-Match` on a missing key (`404 NoSuchKey`) is a lost CAS too.
- ETags are stored without their quotes. S3 ETags are content digests (MD5 for single-part uploads),
  so writing identical bytes keeps the ETag: compare-and-swap is by value, which is what the manifest
  store needs.
- `put_file`/`download`: boto3's managed transfer, multipart above `multipart_threshold`.
- `url()`: an expiring presigned GET (SigV4 allows at most 7 days). `public_endpoint_url` signs for the
  address users reach when it differs from the one workers use (a self-hosted server behind a proxy).
- `content_hash()`: the sha256 of the bytes, which (with the bucket and key) is a job's identity. An
  ETag can't stand in for it: a multipart ETag (`<md5 of part md5s>-<parts>`) depends on the part size,
  so the same bytes uploaded by two tools get two ETags. Objects written through this backend carry
  their sha256 in `x-amz-meta-sha256`, so hashing them costs one HEAD; anything else is streamed once
  and remembered per (key, ETag) for the life of the process.

Endpoint: `endpoint_url`, else `VIDEOSTUDIO_S3_ENDPOINT`, else the standard `AWS_ENDPOINT_URL_S3` /
`AWS_ENDPOINT_URL`, else AWS itself. With an endpoint, path-style addressing is the default
(`http://host/bucket/key`), which every S3-compatible server understands. Credentials come from
boto3's usual chain (environment, shared config, instance roles) and are never logged or stored.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from core.settings import MAX_URL_EXPIRES_S
from core.storage.base import (
    HASH_CHUNK,
    ObjectInfo,
    ObjectNotFound,
    PreconditionFailed,
    Storage,
    StorageError,
    validate_key,
)

log = logging.getLogger("videostudio.storage.s3")

SCHEME = "s3://"
MIB = 1024 * 1024
DEFAULT_MULTIPART_THRESHOLD = 64 * MIB
DEFAULT_MULTIPART_CHUNKSIZE = 16 * MIB
DEFAULT_MAX_CONCURRENCY = 8
SHA256_METADATA = "sha256"  # x-amz-meta-sha256: the object's sha256, written by this backend
ENDPOINT_ENV_VARS = ("VIDEOSTUDIO_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
ADDRESSING_STYLES = ("auto", "path", "virtual")

PRECONDITION_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "412"})
MISSING_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-_]{1,254}$")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` → ("bucket", "some/prefix/"); the prefix is "" or ends with "/"."""
    if not uri.startswith(SCHEME):
        raise StorageError("invalid_bucket_uri", f"not an s3:// URI: {uri!r}")
    bucket, _, prefix = uri[len(SCHEME):].partition("/")
    if not _BUCKET.match(bucket):
        raise StorageError("invalid_bucket_uri", f"invalid S3 bucket name in {uri!r}")
    prefix = prefix.strip("/")
    if prefix:
        validate_key(prefix)
        prefix += "/"
    return bucket, prefix


def endpoint_from_env(environ: dict[str, str] | None = None) -> str | None:
    environ = os.environ if environ is None else environ
    for name in ENDPOINT_ENV_VARS:
        if environ.get(name):
            return environ[name]
    return None


@dataclass(frozen=True, kw_only=True)
class S3Config:
    """How to reach the server; every field has a default that suits AWS."""

    endpoint_url: str | None = None           # None: VIDEOSTUDIO_S3_ENDPOINT / AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL / AWS
    region: str | None = None                 # None: boto3's (AWS_REGION, AWS_DEFAULT_REGION, config), else us-east-1
    addressing_style: str = "auto"            # auto: path-style when an endpoint is set, else boto3's choice
    public_endpoint_url: str | None = None    # sign presigned URLs for this address instead
    multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD
    multipart_chunksize: int = DEFAULT_MULTIPART_CHUNKSIZE
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY

    def resolved_endpoint(self) -> str | None:
        return self.endpoint_url or endpoint_from_env()


def _unquote_etag(etag: str | None) -> str:
    return (etag or "").strip().strip('"')


def _error_code(exc: Exception) -> tuple[str, int | None]:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code, status


class S3Storage(Storage):
    """A bucket (and optional prefix) on an S3-compatible server."""

    #: `url()` gives links other machines can open (presigned), so webhooks may carry them.
    shareable_urls = True

    def __init__(self, uri: str, *, config: S3Config | None = None, client: Any = None) -> None:
        self.uri = uri
        self.bucket, self.prefix = parse_s3_uri(uri)
        self.name = self.bucket
        self.config = config or S3Config()
        self.endpoint_url = self.config.resolved_endpoint()
        self._client = client or self._make_client(self.endpoint_url)
        self._presign_client = (self._make_client(self.config.public_endpoint_url)
                                if self.config.public_endpoint_url else self._client)
        self._hashes: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        self._if_match_quoted = True      # AWS's documented form; flipped once if the server wants the other
        self._if_match_learned = False

    # -- set-up ----------------------------------------------------------------------------------
    def _make_client(self, endpoint_url: str | None) -> Any:
        import boto3
        from botocore.config import Config

        style = self.config.addressing_style
        if style not in ADDRESSING_STYLES:
            raise StorageError("invalid_setting", f"S3 addressing style must be one of {ADDRESSING_STYLES}, not {style!r}")
        if style == "auto" and endpoint_url:
            style = "path"  # S3-compatible servers rarely have per-bucket DNS names
        # A session of its own: credentials are resolved now (environment, shared config, instance role),
        # not from a default session cached earlier in the process.
        session = boto3.session.Session()
        region = self.config.region or session.region_name or "us-east-1"
        config = Config(
            s3={"addressing_style": style},
            signature_version="s3v4",
            retries={"mode": "standard", "max_attempts": 5},
            # Checksums only where the API requires them: several S3-compatible servers reject the
            # streaming trailer checksums newer botocore sends by default.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            max_pool_connections=max(10, self.config.max_concurrency * 2),
        )
        return session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)

    @property
    def client(self) -> Any:
        return self._client

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(multipart_threshold=self.config.multipart_threshold,
                              multipart_chunksize=self.config.multipart_chunksize,
                              max_concurrency=self.config.max_concurrency, use_threads=True)

    def _full(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def _relative(self, full_key: str) -> str:
        return full_key[len(self.prefix):]

    def relative_key(self, bucket: str, full_key: str) -> str | None:
        """The storage key for an object named in an event, or None if it is not in this bucket and prefix."""
        if bucket != self.bucket or not full_key.startswith(self.prefix):
            return None
        return self._relative(full_key)

    @staticmethod
    def _wrap(exc: Exception, key: str, action: str) -> StorageError:
        """A server or transport error as a StorageError; 5xx, throttling and no answer are retryable."""
        code, status = _error_code(exc)
        detail = (code or type(exc).__name__) + (f" (HTTP {status})" if status else "")
        retryable = status is None or status >= 500 or status in (408, 429)
        return StorageError("storage_unavailable" if retryable else "storage_error",
                            f"S3 {action} {key!r} failed: {detail}", retryable=retryable)

    def _info(self, key: str, etag: str | None, size: int, modified: datetime | None) -> ObjectInfo:
        return ObjectInfo(key=key, size=int(size), etag=_unquote_etag(etag),
                          modified=modified or datetime.now(timezone.utc))

    # -- reads -----------------------------------------------------------------------------------
    def get_bytes(self, key: str) -> bytes:
        data, _ = self.get_bytes_with_info(key)
        return data

    def get_bytes_with_info(self, key: str) -> tuple[bytes, ObjectInfo]:
        """The bytes and the ETag they had, from one GET (no window for a writer in between)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._full(key))
            body = response["Body"]
            try:
                data = body.read()
            finally:
                body.close()
        except ClientError as exc:
            if _error_code(exc)[0] in MISSING_CODES:
                raise ObjectNotFound(key) from None
            raise self._wrap(exc, key, "GET") from None
        except BotoCoreError as exc:
            raise self._wrap(exc, key, "GET") from None
        return data, self._info(key, response.get("ETag"), len(data), response.get("LastModified"))

    def _head(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self._client.head_object(Bucket=self.bucket, Key=self._full(key))
        except ClientError as exc:
            if _error_code(exc)[0] in MISSING_CODES or _error_code(exc)[1] == 404:
                return None
            raise self._wrap(exc, key, "HEAD") from None
        except BotoCoreError as exc:
            raise self._wrap(exc, key, "HEAD") from None

    def stat(self, key: str) -> ObjectInfo | None:
        head = self._head(key)
        if head is None:
            return None
        return self._info(key, head.get("ETag"), head.get("ContentLength", 0), head.get("LastModified"))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        from botocore.exceptions import BotoCoreError, ClientError

        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for item in page.get("Contents", []):
                    key = self._relative(item["Key"])
                    try:
                        validate_key(key)
                    except StorageError:
                        continue  # folder markers ("a/"), hidden names: never objects of ours
                    yield self._info(key, item.get("ETag"), item.get("Size", 0), item.get("LastModified"))
        except (ClientError, BotoCoreError) as exc:
            raise self._wrap(exc, prefix or "/", "LIST") from None

    def download(self, key: str, path: Path) -> Path:
        from botocore.exceptions import BotoCoreError, ClientError

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._client.download_file(self.bucket, self._full(key), str(path), Config=self._transfer_config())
        except ClientError as exc:
            if _error_code(exc)[0] in MISSING_CODES or _error_code(exc)[1] == 404:
                raise ObjectNotFound(key) from None
            raise self._wrap(exc, key, "download of") from None
        except BotoCoreError as exc:
            raise self._wrap(exc, key, "download of") from None
        return path

    def content_hash(self, key: str) -> str:
        head = self._head(key)
        if head is None:
            raise ObjectNotFound(key)
        recorded = (head.get("Metadata") or {}).get(SHA256_METADATA, "").lower()
        if _HEX64.match(recorded):
            return recorded
        etag = _unquote_etag(head.get("ETag"))
        with self._lock:
            cached = self._hashes.get((key, etag))
        if cached:
            return cached
        digest, read_etag = self._stream_hash(key)
        with self._lock:
            self._hashes[(key, read_etag)] = digest
        return digest

    def _stream_hash(self, key: str) -> tuple[str, str]:
        from botocore.exceptions import BotoCoreError, ClientError

        digest = hashlib.sha256()
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._full(key))
            body = response["Body"]
            try:
                for chunk in body.iter_chunks(HASH_CHUNK):
                    digest.update(chunk)
            finally:
                body.close()
        except ClientError as exc:
            if _error_code(exc)[0] in MISSING_CODES:
                raise ObjectNotFound(key) from None
            raise self._wrap(exc, key, "GET") from None
        except BotoCoreError as exc:
            raise self._wrap(exc, key, "GET") from None
        return digest.hexdigest(), _unquote_etag(response.get("ETag"))

    # -- writes ----------------------------------------------------------------------------------
    def put_bytes(self, key, data, *, if_none_match=False, if_match=None, content_type=None) -> ObjectInfo:
        data = bytes(data)
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self._full(key), "Body": data,
                                  "Metadata": {SHA256_METADATA: hashlib.sha256(data).hexdigest()}}
        if content_type:
            params["ContentType"] = content_type
        if if_none_match:
            params["IfNoneMatch"] = "*"
        if if_match is not None:
            return self._put_if_match(key, params, _unquote_etag(if_match), len(data))
        response = self._put(key, params, conditional=if_none_match)
        return self._info(key, response.get("ETag"), len(data), None)

    def _put_if_match(self, key: str, params: dict[str, Any], etag: str, size: int) -> ObjectInfo:
        quoted = self._if_match_quoted
        try:
            response = self._put(key, {**params, "IfMatch": f'"{etag}"' if quoted else etag}, conditional=True)
        except PreconditionFailed:
            if self._if_match_learned:
                raise
            current = self.stat(key)
            if current is None or current.etag != etag:
                raise  # a real conflict: somebody else wrote (or deleted) it
            # The object still has this ETag, so the server did not recognise our form of it.
            response = self._put(key, {**params, "IfMatch": etag if quoted else f'"{etag}"'}, conditional=True)
            with self._lock:
                self._if_match_quoted = not quoted
                self._if_match_learned = True
            log.info("S3 server at %s matches If-Match %s ETags", self.endpoint_url or "AWS",
                     "unquoted" if quoted else "quoted")
        else:
            self._if_match_learned = True
        return self._info(key, response.get("ETag"), size, None)

    def _put(self, key: str, params: dict[str, Any], *, conditional: bool) -> dict[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self._client.put_object(**params)
        except ClientError as exc:
            code, status = _error_code(exc)
            if conditional and (code in PRECONDITION_CODES or status in (409, 412)):
                raise PreconditionFailed(key) from None
            if "IfMatch" in params and (code in MISSING_CODES or status == 404):
                raise PreconditionFailed(key) from None  # CAS on an object that is gone
            raise self._wrap(exc, key, "PUT") from None
        except BotoCoreError as exc:
            raise self._wrap(exc, key, "PUT") from None

    def put_file(self, key: str, path: Path, *, content_type: str | None = None) -> ObjectInfo:
        from botocore.exceptions import BotoCoreError, ClientError

        path = Path(path)
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(HASH_CHUNK):
                digest.update(chunk)
        extra: dict[str, Any] = {"Metadata": {SHA256_METADATA: digest.hexdigest()}}
        if content_type:
            extra["ContentType"] = content_type
        try:
            self._client.upload_file(str(path), self.bucket, self._full(key), ExtraArgs=extra,
                                     Config=self._transfer_config())
        except (ClientError, BotoCoreError) as exc:
            raise self._wrap(exc, key, "upload to") from None
        except Exception as exc:  # boto3's S3UploadFailedError wraps the ClientError
            raise self._wrap(exc, key, "upload to") from None
        info = self.stat(key)
        if info is None:
            raise StorageError("storage_unavailable", f"S3 upload to {key!r} finished but the object is not there",
                               retryable=True)
        return info

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._full(key))
        except (ClientError, BotoCoreError) as exc:
            raise self._wrap(exc, key, "DELETE") from None

    def url(self, key: str, *, expires_s: int = 3600) -> str:
        expires = max(1, min(int(expires_s), MAX_URL_EXPIRES_S))
        return self._presign_client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._full(key)}, ExpiresIn=expires)

    def __repr__(self) -> str:
        return f"S3Storage({self.uri!r}, endpoint={self.endpoint_url or 'aws'})"

