"""The composition root: every store's backends are built here, from one :class:`~core.settings.Settings`.

The library (:class:`core.api.base.StoreBase`), the mount (:mod:`fusefs.mount`)
and the presign service (:mod:`fusefs.serve_cmd`) all call these functions
with settings from :meth:`Settings.from_env` (or given in code), so the three
faces of one configuration always open the same store.

Backends are chosen by name from :mod:`core.backends.registry`; what must be
known of a backend to wire it (does it keep files in the data dir, is it
shared by several hosts, where do its open uploads live, does it announce
changes) is a trait of its registration. This module names no backend.
"""

from __future__ import annotations

from pathlib import Path

from core.backends.blobs.base import BlobStore
from core.backends.meta.base import MetaStore
from core.backends.meta.changes import ChangeFeed
from core.backends.registry import BLOB_STORES, META_STORES, UPLOAD_REGISTRIES, BlobBackend, MetaBackend
from core.backends.uploads.base import UploadRegistry
from core.errors import ConfigurationError
from core.infra.signing import RecordSigner, load_signing_key
from core.settings import Settings
from core.transfers.engine import Transfers
from core.transfers.urls import derive_key
from core.tree.namespace import Namespace

__all__ = [
    "Settings", "backends_of", "build_backends", "build_change_feed", "build_transfers", "build_upload_registry",
    "checked", "data_dir", "signing_key",
]


def backends_of(settings: Settings) -> tuple[BlobBackend, MetaBackend]:
    """The registered blob and metadata backends ``settings`` names (UnknownProviderError: one line)."""
    return BLOB_STORES.get(settings.storage_provider), META_STORES.get(settings.session_provider)


def checked(settings: Settings) -> Settings:
    """``settings`` with its provider names checked and made canonical (``vfs-memory`` -> ``memory``)."""
    blobs, meta = backends_of(settings)
    if (blobs.name, meta.name) == (settings.storage_provider, settings.session_provider):
        return settings
    return settings.model_copy(update={"storage_provider": blobs.name, "session_provider": meta.name})


def data_dir(settings: Settings) -> Path | None:
    """Where the chosen backends keep their files, if any of them does."""
    blobs, meta = backends_of(settings)
    return settings.fs_root if blobs.uses_data_dir or meta.uses_data_dir else None


def signing_key(settings: Settings) -> bytes:
    """The one HMAC key of a deployment: metadata records and presigned URLs both use it."""
    if settings.signing_key is not None:
        return settings.signing_key.get_secret_value().encode()
    _, meta = backends_of(settings)
    if meta.shared:
        # A key made up per host would make every other host's records look forged.
        raise ConfigurationError(f"SESSION_PROVIDER={meta.name} needs ARTIFACT_SIGNING_KEY, the same on every host")
    return load_signing_key(data_dir(settings))


def build_backends(settings: Settings) -> tuple[BlobStore, MetaStore]:
    """The blob and metadata stores that ``settings`` names (not opened yet)."""
    blobs, meta = backends_of(settings)
    signer = RecordSigner(signing_key(settings))
    return blobs.load()(settings), meta.load()(settings, signer)


def build_upload_registry(settings: Settings, meta: MetaStore, signer: RecordSigner) -> UploadRegistry:
    """Where open presigned uploads are kept: beside the metadata, seen by every process that shares it.

    A metadata backend that names its own registry keeps them there (Redis:
    every host on one Redis and one bucket can complete or abort any of
    them); otherwise a data dir keeps them as files, and a store whose bytes
    live in memory keeps them in memory too.
    """
    blob_backend, meta_backend = backends_of(settings)
    if meta_backend.uploads is not None:
        name = meta_backend.uploads
    elif data_dir(settings) is not None and not blob_backend.in_memory:
        name = "filesystem"
    else:
        name = "memory"
    return UPLOAD_REGISTRIES.get(name).load()(settings, meta, signer)


def build_change_feed(settings: Settings, meta: MetaStore) -> ChangeFeed | None:
    """The change notices of ``meta``, if other processes may change it behind this one's back.

    Only a store shared by processes that cannot see each other (other
    hosts) announces its changes; the embedded stores are one data dir, and
    their other faces live with the time-bounded caches the mount keeps anyway.
    """
    _, meta_backend = backends_of(settings)
    return meta_backend.change_feed(meta)


def build_transfers(ns: Namespace, settings: Settings, key: bytes | None = None) -> Transfers:
    """Presigned URLs and uploads for a store built from ``settings``; uploads are kept beside its metadata."""
    # The key metadata records are signed with: every process on this store agrees on it.
    key = key if key is not None else signing_key(settings)
    registry = build_upload_registry(settings, ns.meta, RecordSigner(derive_key(key, "upload-record/v1")))
    return Transfers(ns, settings.presign, key, registry)
