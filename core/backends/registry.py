"""Backends by name: the table the composition root (:mod:`core.config`) builds stores from.

A backend is a module with a class that implements one protocol
(:mod:`core.backends.blobs.base`, :mod:`core.backends.meta.base`,
:mod:`core.backends.uploads.base`) and a factory that builds it from
:class:`~core.settings.Settings`. Registering it is one :meth:`Registry.add`
line below; nothing else in the code names it, so a PostgreSQL metadata store
or a GCS blob store is one new module and one line here (``docs/BACKENDS.md``).

Factories are named as ``"module:function"`` and imported only when their
backend is chosen: the S3 and Redis client libraries are optional extras and
cost memory and start-up time, so a store on the embedded backends never
loads them. A backend defined outside this package registers its factory
object itself (``BLOB_STORES.add(BlobBackend("gcs", make_gcs))``) before a
store is built.

What the composition root must know about a backend beyond its factory is a
trait of its registration (below), never a test of its class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import import_module
from typing import Any, Generic, TypeVar

from core.backends.blobs.base import BlobStore
from core.backends.meta.base import MetaStore
from core.backends.meta.changes import ChangeFeed
from core.backends.uploads.base import UploadRegistry
from core.errors import UnknownProviderError
from core.infra.signing import RecordSigner
from core.settings import Settings

BlobFactory = Callable[[Settings], BlobStore]
MetaFactory = Callable[[Settings, RecordSigner], MetaStore]
UploadFactory = Callable[[Settings, MetaStore, RecordSigner], UploadRegistry]
ChangeFeedFactory = Callable[[MetaStore], ChangeFeed]

F = TypeVar("F")
T = TypeVar("T")


def _load(target: str | T) -> T:
    """A factory given as ``"module:function"``, imported now; one given as an object, as is."""
    if not isinstance(target, str):
        return target
    module, _, name = target.partition(":")
    loaded: T = getattr(import_module(module), name)
    return loaded


@dataclass(frozen=True)
class Backend(Generic[F]):
    """One registered implementation of a protocol."""

    name: str  # the canonical provider name, as settings and stats show it
    factory: str | F  # "module:function", imported when this backend is first built
    aliases: tuple[str, ...] = ()  # other accepted names (the reference's vfs-* ones)

    def load(self) -> F:
        return _load(self.factory)


@dataclass(frozen=True)
class BlobBackend(Backend[BlobFactory]):
    # Its bytes live in this process only: open uploads may then live there too (nothing outlives it).
    in_memory: bool = False
    uses_data_dir: bool = False  # keeps files under Settings.fs_root


@dataclass(frozen=True)
class MetaBackend(Backend[MetaFactory]):
    uses_data_dir: bool = False  # keeps files under Settings.fs_root (the signing key is kept there too)
    # Shared by processes on several hosts: records must be signed with a configured key, the same on every
    # host (a key made up per data dir would make every other host's records look forged).
    shared: bool = False
    # The upload registry kept beside this store's records, so every host sharing it sees every open
    # upload; None: the data dir's (or memory's), chosen by core.config.
    uploads: str | None = None
    # "module:function" making the feed of changes other processes commit (for a mount's kernel caches);
    # None: nobody changes this store behind the back of the process that has it open.
    changes: str | ChangeFeedFactory | None = None

    def change_feed(self, meta: MetaStore) -> ChangeFeed | None:
        return None if self.changes is None else _load(self.changes)(meta)


@dataclass(frozen=True)
class UploadBackend(Backend[UploadFactory]):
    pass


B = TypeVar("B", bound=Backend[Any])


class Registry(Generic[B]):
    """The backends of one protocol, by name and alias."""

    def __init__(self, kind: str, variable: str) -> None:
        self.kind = kind  # what a backend of this registry is, for messages ("blob store")
        self.variable = variable  # the setting that names one, as a user writes it ("ARTIFACT_PROVIDER")
        self._backends: dict[str, B] = {}
        self._names: dict[str, str] = {}  # name or alias -> canonical name

    def add(self, backend: B) -> B:
        """Register ``backend``; a name or alias already taken is a programming error."""
        for name in (backend.name, *backend.aliases):
            taken = self._names.get(name)
            if taken is not None:
                raise ValueError(f"{self.kind} name {name!r} is taken by {taken!r}")
        self._backends[backend.name] = backend
        for name in (backend.name, *backend.aliases):
            self._names[name] = backend.name
        return backend

    def remove(self, name: str) -> None:
        """Forget backend ``name`` and its aliases (a plugin unloading; a test's own backend)."""
        backend = self._backends.pop(name)
        for alias in (backend.name, *backend.aliases):
            del self._names[alias]

    def get(self, name: str) -> B:
        """The backend ``name`` (or an alias of it) names; else one line saying what is accepted."""
        canonical = self._names.get(name.strip().lower())
        if canonical is None:
            aliases = sorted(set(self._names) - set(self._backends))
            also = f" (or an alias: {', '.join(aliases)})" if aliases else ""
            raise UnknownProviderError(
                f"{self.variable}={name!r} names no {self.kind}; use one of {', '.join(sorted(self._backends))}{also}"
            )
        return self._backends[canonical]

    def __iter__(self) -> Iterator[B]:
        return iter(self._backends.values())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.strip().lower() in self._names


BLOB_STORES: Registry[BlobBackend] = Registry("blob store", "ARTIFACT_PROVIDER")
META_STORES: Registry[MetaBackend] = Registry("metadata store", "SESSION_PROVIDER")
UPLOAD_REGISTRIES: Registry[UploadBackend] = Registry("upload registry", "MetaBackend.uploads")

# -- the backends this package ships

BLOB_STORES.add(BlobBackend("memory", "core.backends.blobs.memory:from_settings", ("vfs-memory",), in_memory=True))
BLOB_STORES.add(BlobBackend(  # vfs-sqlite: the reference's "all in the data dir" (Settings makes it sqlite metadata too)
    "filesystem", "core.backends.blobs.filesystem:from_settings", ("fs", "vfs-filesystem", "vfs-sqlite"),
    uses_data_dir=True,
))
BLOB_STORES.add(BlobBackend("s3", "core.backends.blobs.s3.store:from_settings", ("vfs-s3", "ibm_cos")))

META_STORES.add(MetaBackend("memory", "core.backends.meta.sqlite:in_memory"))
META_STORES.add(MetaBackend("sqlite", "core.backends.meta.sqlite:from_settings", ("vfs-sqlite",), uses_data_dir=True))
META_STORES.add(MetaBackend(
    "redis", "core.backends.meta.redis.store:from_settings", shared=True, uploads="redis",
    changes="core.backends.meta.redis.events:follow",
))

UPLOAD_REGISTRIES.add(UploadBackend("memory", "core.backends.uploads.memory:from_settings"))
UPLOAD_REGISTRIES.add(UploadBackend("filesystem", "core.backends.uploads.filesystem:from_settings"))
UPLOAD_REGISTRIES.add(UploadBackend("redis", "core.backends.uploads.redis:from_settings"))
