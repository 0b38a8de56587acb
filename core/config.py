"""Choosing backends: the one place that reads the environment and builds them.

Names follow the reference API (``ARTIFACT_PROVIDER``, ``ARTIFACT_FS_ROOT``,
``SESSION_PROVIDER`` ...). ``vfs-`` prefixed provider names are accepted as
aliases so configurations written for the reference run unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator

from core.backends.blobs.base import BlobStore
from core.backends.meta.base import MetaStore
from core.backends.meta.changes import ChangeFeed
from core.backends.uploads.base import UploadRegistry
from core.backends.uploads.filesystem import DirUploadRegistry
from core.backends.uploads.memory import MemoryUploadRegistry
from core.errors import InvalidArgumentError
from core.infra.signing import RecordSigner, load_signing_key
from core.models import MetadataProvider, StorageProvider
from core.transfers.engine import Transfers
from core.transfers.urls import PresignSettings, derive_key
from core.tree.namespace import Limits, Namespace

_STORAGE_ALIASES = {
    "memory": StorageProvider.MEMORY, "vfs-memory": StorageProvider.MEMORY,
    "filesystem": StorageProvider.FILESYSTEM, "vfs-filesystem": StorageProvider.FILESYSTEM,
    "fs": StorageProvider.FILESYSTEM, "s3": StorageProvider.S3, "vfs-s3": StorageProvider.S3,
    "ibm_cos": StorageProvider.S3,
}
_META_ALIASES = {
    "memory": MetadataProvider.MEMORY, "sqlite": MetadataProvider.SQLITE,
    "vfs-sqlite": MetadataProvider.SQLITE, "redis": MetadataProvider.REDIS,
}


class Settings(BaseModel):
    """Everything that selects and tunes the backends."""

    storage_provider: StorageProvider = StorageProvider.MEMORY
    session_provider: MetadataProvider = MetadataProvider.MEMORY
    sandbox_id: str = "default"
    fs_root: Path = Path("./artifacts")
    sqlite_path: Path | None = None  # default: <fs_root>/meta.sqlite3
    bucket: str = "artifacts"
    redis_url: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_sse_algorithm: str | None = None
    s3_sse_kms_key_id: str | None = None
    s3_prefix: str = ""  # key prefix inside the bucket, so several stores can share one
    # Seconds to connect, and to wait for the next bytes of a reply; each attempt (of a few) waits this long.
    s3_connect_timeout: float = Field(default=5.0, gt=0)
    s3_read_timeout: float = Field(default=60.0, gt=0)
    redis_prefix: str = "artifactfs"  # key prefix in Redis; give it a {hash tag} on Redis Cluster
    redis_notify: bool = True  # announce every change on <prefix>:events (mounts follow them); see README
    signing_key: SecretStr | None = None  # every host on one Redis must share it
    limits: Limits = Field(default_factory=Limits)
    presign: PresignSettings = Field(default_factory=PresignSettings)

    @field_validator("storage_provider", mode="before")
    @classmethod
    def _storage(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return _STORAGE_ALIASES[value.strip().lower()]
            except KeyError:
                raise ValueError(f"unknown storage provider {value!r}; one of {sorted(_STORAGE_ALIASES)}") from None
        return value

    @field_validator("session_provider", mode="before")
    @classmethod
    def _meta(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return _META_ALIASES[value.strip().lower()]
            except KeyError:
                raise ValueError(f"unknown session provider {value!r}; one of {sorted(_META_ALIASES)}") from None
        return value

    @property
    def data_dir(self) -> Path | None:
        """Where the embedded backends keep their files, if any of them does."""
        if self.storage_provider is StorageProvider.FILESYSTEM or self.session_provider is MetadataProvider.SQLITE:
            return self.fs_root
        return None

    @classmethod
    def from_env(cls, **overrides: object) -> "Settings":
        env = os.environ
        values: dict[str, object] = {}
        provider = env.get("ARTIFACT_PROVIDER")
        if provider:
            if provider.strip().lower() == "vfs-sqlite":  # the reference's "everything in SQLite"
                values["storage_provider"] = "filesystem"
                values["session_provider"] = "sqlite"
            else:
                values["storage_provider"] = provider
        for name, key in (
            ("SESSION_PROVIDER", "session_provider"), ("ARTIFACT_SANDBOX_ID", "sandbox_id"),
            ("ARTIFACT_FS_ROOT", "fs_root"), ("ARTIFACT_SQLITE_PATH", "sqlite_path"),
            ("ARTIFACT_BUCKET", "bucket"), ("SESSION_REDIS_URL", "redis_url"),
            ("S3_ENDPOINT_URL", "s3_endpoint_url"), ("AWS_REGION", "s3_region"),
            ("S3_SSE_ALGORITHM", "s3_sse_algorithm"), ("S3_SSE_KMS_KEY_ID", "s3_sse_kms_key_id"),
            ("ARTIFACT_S3_PREFIX", "s3_prefix"), ("ARTIFACT_REDIS_PREFIX", "redis_prefix"),
            ("ARTIFACT_SIGNING_KEY", "signing_key"), ("ARTIFACT_REDIS_NOTIFY", "redis_notify"),
            ("S3_CONNECT_TIMEOUT", "s3_connect_timeout"), ("S3_READ_TIMEOUT", "s3_read_timeout"),
        ):
            if env.get(name):
                values[key] = env[name]
        values["presign"] = PresignSettings.from_env()
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise InvalidArgumentError(f"invalid configuration: {exc}") from exc


def signing_key(settings: Settings) -> bytes:
    """The one HMAC key of a deployment: metadata records and presigned URLs both use it."""
    if settings.signing_key is not None:
        return settings.signing_key.get_secret_value().encode()
    if settings.session_provider is MetadataProvider.REDIS:
        # A key made up per host would make every other host's records look forged.
        raise InvalidArgumentError("SESSION_PROVIDER=redis needs ARTIFACT_SIGNING_KEY, the same on every host")
    return load_signing_key(settings.data_dir)


def build_upload_registry(settings: Settings, meta: MetaStore, signer: RecordSigner) -> UploadRegistry:
    """Where open presigned uploads are kept: beside the metadata, seen by every process that shares it.

    Redis metadata keeps them in Redis (:mod:`core.backends.uploads.redis`), so
    every host on one Redis and one bucket can complete or abort any of them;
    a data dir keeps them as files there; memory stores keep them in memory.
    """
    if settings.session_provider is MetadataProvider.REDIS:
        from core.backends.meta.redis.store import RedisMetaStore
        from core.backends.uploads.redis import RedisUploadRegistry

        if isinstance(meta, RedisMetaStore):
            return RedisUploadRegistry(meta, signer)
    if settings.data_dir is not None and settings.storage_provider is not StorageProvider.MEMORY:
        return DirUploadRegistry(settings.data_dir / "uploads", signer)
    return MemoryUploadRegistry()


def build_backends(settings: Settings) -> tuple[BlobStore, MetaStore]:
    """The blob and metadata stores that ``settings`` names."""
    signer = RecordSigner(signing_key(settings))
    blobs: BlobStore
    if settings.storage_provider is StorageProvider.FILESYSTEM:
        from core.backends.blobs.filesystem import FilesystemBlobStore

        blobs = FilesystemBlobStore(settings.fs_root)
    elif settings.storage_provider is StorageProvider.MEMORY:
        from core.backends.blobs.memory import MemoryBlobStore

        blobs = MemoryBlobStore()
    elif settings.storage_provider is StorageProvider.S3:
        from core.backends.blobs.s3.store import S3BlobStore

        blobs = S3BlobStore(
            settings.bucket, prefix=settings.s3_prefix, endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region, sse_algorithm=settings.s3_sse_algorithm,
            sse_kms_key_id=settings.s3_sse_kms_key_id, connect_timeout=settings.s3_connect_timeout,
            read_timeout=settings.s3_read_timeout,
        )
    else:
        raise InvalidArgumentError(f"storage provider {settings.storage_provider.value} is not available yet")
    meta: MetaStore
    if settings.session_provider is MetadataProvider.SQLITE:
        from core.backends.meta.sqlite import SQLiteMetaStore

        meta = SQLiteMetaStore(settings.sqlite_path or settings.fs_root / "meta.sqlite3", signer)
    elif settings.session_provider is MetadataProvider.MEMORY:
        from core.backends.meta.sqlite import SQLiteMetaStore

        meta = SQLiteMetaStore(":memory:", signer)
    elif settings.session_provider is MetadataProvider.REDIS:
        from core.backends.meta.redis.store import RedisMetaStore

        if not settings.redis_url:
            raise InvalidArgumentError("SESSION_PROVIDER=redis needs SESSION_REDIS_URL")
        meta = RedisMetaStore(settings.redis_url, signer, prefix=settings.redis_prefix, notify=settings.redis_notify)
    else:
        raise InvalidArgumentError(f"session provider {settings.session_provider.value} is not available yet")
    return blobs, meta


def build_change_feed(meta: MetaStore) -> ChangeFeed | None:
    """The change notices of ``meta``, if other processes may change it behind this one's back.

    Only a Redis store is shared by processes that cannot see each other
    (other hosts); the embedded stores are one data dir, and their other
    faces live with the time-bounded caches the mount keeps anyway.
    """
    from core.backends.meta.redis.store import RedisMetaStore

    if isinstance(meta, RedisMetaStore):
        from core.backends.meta.redis.events import RedisChangeFeed

        return RedisChangeFeed(meta)
    return None


def build_transfers(ns: Namespace, settings: Settings, signing_key_: bytes | None = None) -> Transfers:
    """Presigned URLs and uploads for a store built from ``settings``; uploads are kept beside its metadata."""
    # The key metadata records are signed with: every process on this store agrees on it.
    key = signing_key_ if signing_key_ is not None else signing_key(settings)
    registry = build_upload_registry(settings, ns.meta, RecordSigner(derive_key(key, "upload-record/v1")))
    return Transfers(ns, settings.presign, key, registry)
