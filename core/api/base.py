"""What every part of the API stands on: the store's backends, its lifecycle, who is calling, and where.

:class:`StoreBase` holds the :class:`~core.tree.namespace.Namespace` and
answers the questions every call asks first: is the store open, who is the
caller, which artifact or space is meant and may the caller touch it. The
public methods live in one mixin per concern (:mod:`core.api.files`,
:mod:`core.api.listing`, :mod:`core.api.sessions`, :mod:`core.api.presign`,
:mod:`core.api.status`), joined in :class:`core.api.store.ArtifactStore`.
"""

from __future__ import annotations

import re
import secrets
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Self

import anyio

from core.api import rules
from core.api.access import Principal, check_read, check_session_join, check_write
from core.api.described import DescribedCache
from core.api.rules import DEFAULT, TTLArg
from core.backends.blobs.base import BlobStore
from core.backends.meta.base import MetaStore
from core.config import build_backends, build_transfers, checked
from core.errors import (
    ArtifactExpiredError,
    ArtifactNotFoundError,
    InvalidArgumentError,
    StoreClosedError,
)
from core.infra.clock import Clock, SystemClock
from core.models import (
    ArtifactMetadata,
    Scope,
)
from core.nodes import Node, Space
from core.settings import Limits, Settings
from core.transfers.engine import Transfers
from core.tree import grid
from core.tree.namespace import NS, Namespace


def as_datetime(ns: int | None) -> datetime | None:
    return None if ns is None else datetime.fromtimestamp(ns / NS, tz=timezone.utc)


def iso_z(ns: int | None) -> str | None:
    """A time as the reference's namespace API writes it: ISO 8601 in UTC, ending in ``Z``."""
    when = as_datetime(ns)
    return None if when is None else when.isoformat().replace("+00:00", "Z")


class StoreBase:
    """The state and the checks every API call shares."""

    def __init__(
        self,
        storage_provider: str | None = None,
        session_provider: str | None = None,
        bucket: str | None = None,
        sandbox_id: str | None = None,
        fs_root: str | Path | None = None,
        *,
        settings: Settings | None = None,
        blob_store: BlobStore | None = None,
        meta_store: MetaStore | None = None,
        clock: Clock | None = None,
        limits: Limits | None = None,
        admin: bool = False,
        **unused: Any,
    ) -> None:
        # The environment is read here, through Settings.from_env, when no settings are given.
        self.settings = checked(settings or Settings.from_env(
            storage_provider=storage_provider, session_provider=session_provider,
            bucket=bucket, sandbox_id=sandbox_id, fs_root=fs_root,
        ))
        if limits is not None:
            self.settings = self.settings.model_copy(update={"limits": limits})
        self.sandbox_id = grid.validate_id(self.settings.sandbox_id, "sandbox id")
        if blob_store is None or meta_store is None:
            built_blobs, built_meta = build_backends(self.settings)
            blob_store, meta_store = blob_store or built_blobs, meta_store or built_meta
        self.ns = Namespace(meta_store, blob_store, clock or SystemClock(), self.settings.limits)
        self.admin = admin
        self._state: Literal["new", "open", "closed"] = "new"
        self._opening: anyio.Lock | None = None
        self._answers = DescribedCache()  # metadata() answers, while the store is unchanged

    async def __aenter__(self) -> Self:
        await self._ready()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _ready(self) -> Namespace:
        if self._state == "open":
            return self.ns
        if self._state == "closed":
            raise StoreClosedError("this ArtifactStore is closed")
        if self._opening is None:
            self._opening = anyio.Lock()
        async with self._opening:
            if self._state == "new":
                await self.ns.open()
                await self.ns.sandbox(self.sandbox_id)
                self._state = "open"
        if self._state != "open":
            raise StoreClosedError("this ArtifactStore is closed")
        return self.ns

    async def close(self) -> None:
        if self._state == "open":
            await self.ns.close()
        self._state = "closed"

    def _principal(self, session_id: str | None, user_id: str | None) -> Principal:
        if session_id is not None:
            grid.validate_id(session_id, "session id")
        if user_id is not None:
            grid.validate_id(user_id, "user id")
        trusted = session_id is None and user_id is None
        return Principal(session_id=session_id, user_id=user_id, admin=self.admin, trusted=trusted)

    def _ttl(self, ttl: TTLArg, scope: Scope) -> int | None:
        if ttl == DEFAULT:
            return self.ns.default_ttl(scope)
        if ttl is None:
            return None
        return rules.ttl_seconds(ttl, self.ns.limits)

    def _extended(self, expires_at_ns: int, more_ns: int) -> int:
        """An expiry pushed ``more_ns`` later, if the life left then is within ``max_ttl``."""
        limit = self.ns.limits.max_ttl
        if expires_at_ns + more_ns - self.ns.now() > limit * NS:
            raise InvalidArgumentError(f"that would leave more than the maximum lifetime of {limit} seconds")
        return expires_at_ns + more_ns

    async def _node(self, artifact_id: str, session_id: str | None, user_id: str | None, *, write: bool = False) -> Node:
        ns = await self._ready()
        who = self._principal(session_id, user_id)
        try:
            node = await ns.artifact_node(artifact_id)
        except ArtifactNotFoundError as exc:
            # On S3 an upload that publishes itself is published when it is first asked for.
            if isinstance(exc, ArtifactExpiredError) or not await self.transfers.settle(artifact_id):
                raise
            node = await ns.artifact_node(artifact_id)
        assert node.space is not None
        (check_write if write else check_read)(who, node.space, f"artifact {artifact_id}")
        return node

    async def _describe(self, node: Node) -> ArtifactMetadata:
        return self._described(node, await self.ns.filename_of(node))

    def _described(self, node: Node, filename: str) -> ArtifactMetadata:
        """What the API tells of file ``node``, whose path below its scope root is ``filename``.

        The path is the caller's to find: a listing or a search finds the
        paths of all its results in one read (:meth:`Namespace.filenames`).
        """
        art, space = node.artifact, node.space
        assert art is not None and space is not None
        return ArtifactMetadata(
            artifact_id=art.artifact_id, sandbox_id=space.sandbox_id, session_id=space.session_id,
            user_id=space.user_id, scope=space.scope, key=self.ns.grid_key(node),
            filename=filename, mime=art.mime, summary=art.summary, meta=art.meta,
            bytes=node.size, sha256=art.sha256, version=art.version, stored_at=as_datetime(node.crtime_ns),
            updated_at=as_datetime(node.ctime_ns), ttl=art.ttl, expires_at=as_datetime(node.expires_at_ns),
        )

    async def _writable_space(self, scope: Scope, session_id: str | None, user_id: str | None, what: str) -> Space:
        """The space a new artifact (or upload) of ``scope`` lands in, once the caller may write there."""
        who = self._principal(session_id, user_id)
        if scope is Scope.SESSION:
            space, root = await self._session_space(session_id, user_id)
            who = who.model_copy(update={"session_id": space.session_id, "trusted": who.trusted or session_id is None})
            if root is not None:
                check_session_join(who, root, what)
                return space
        elif scope is Scope.USER:
            if user_id is None:
                raise InvalidArgumentError("scope='user' needs a user_id")
            space = Space(sandbox_id=self.sandbox_id, scope=Scope.USER, user_id=user_id)
        else:
            space = Space(sandbox_id=self.sandbox_id, scope=Scope.SANDBOX)
        check_write(who, space, what)
        return space

    async def _session_space(self, session_id: str | None, user_id: str | None) -> tuple[Space, Node | None]:
        """The space of an existing session (and its root), or of a new one (and None).

        Nothing is created here: a new session comes into being with its first
        artifact (:meth:`_insert`), so a refused store leaves no empty session.
        """
        ns = await self._ready()
        if session_id is None:
            session_id = self._new_session_id(user_id)
        grid.validate_id(session_id, "session id")
        root = await ns.session_root(self.sandbox_id, session_id)
        if root is None or root.expired(ns.now()):  # an expired one is replaced when the artifact goes in
            return Space(sandbox_id=self.sandbox_id, scope=Scope.SESSION, session_id=session_id, user_id=user_id), None
        assert root.space is not None
        return root.space, root

    @staticmethod
    def _new_session_id(user_id: str | None) -> str:
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", user_id)[:60] if user_id else "anon"
        return f"sess-{stem}-{int(time.time())}-{secrets.token_hex(4)}"

    @property
    def transfers(self) -> Transfers:
        """This store's signed URLs and open uploads; the presign service serves from it."""
        if "_transfers" not in self.__dict__:
            self.__dict__["_transfers"] = build_transfers(self.ns, self.settings)
        return self.__dict__["_transfers"]
