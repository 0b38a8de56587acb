"""``ArtifactStore``: the public async API, with the reference API's names.

Policy lives here (who may do what, sessions, TTL defaults, argument checks);
tree and blob mechanics live in :mod:`core.namespace`. Works when awaited
from trio and from asyncio: everything below uses anyio, never one loop's API.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import re
import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, NamedTuple

import anyio

from . import grid
from .access import Principal, check_read, check_write
from .blobs.base import BlobStore
from .clock import Clock, SystemClock
from .config import Settings, build_backends
from .errors import (
    AccessDeniedError,
    AlreadyExistsError,
    ArtifactCorruptedError,
    ArtifactExpiredError,
    ArtifactNotFoundError,
    ArtifactStoreError,
    ArtifactTooLargeError,
    InvalidArgumentError,
    SessionError,
    StoreClosedError,
)
from .meta.base import MetaStore
from .models import ArtifactMetadata, GridKey, Scope, SessionInfo, StreamDownloadRequest, StreamUploadRequest
from .models import MultipartUploadCompleteRequest, MultipartUploadInitRequest
from .namespace import NS, Limits, Namespace
from .nodes import Node, NodeKind, NodeRole, Space, new_node
from .presign_api import PresignApi
from .transfers import Transfers

DEFAULT: Literal["default"] = "default"
TTLArg = int | None | Literal["default"]

MAX_META_BYTES = 64 * 1024
MAX_SUMMARY_CHARS = 4096
_MIME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}(;.{0,200})?")
_BATCH_CONCURRENCY = 16
_READ_CHUNK = 1 << 20


def _dt(ns: int | None) -> datetime | None:
    return None if ns is None else datetime.fromtimestamp(ns / NS, tz=timezone.utc)


class ArtifactStore:
    """An artifact store over one blob backend and one metadata backend.

    With no arguments it keeps everything in memory (the reference's zero
    configuration). ``admin=True`` grants the capability to write the shared
    (sandbox) scope.
    """

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
        self.settings = settings or Settings.from_env(
            storage_provider=storage_provider, session_provider=session_provider,
            bucket=bucket, sandbox_id=sandbox_id, fs_root=fs_root,
        )
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

    # -- lifecycle

    async def __aenter__(self) -> "ArtifactStore":
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
                await self.ns.blobs.open()
                await self.ns.meta.open()
                await self.ns.sandbox(self.sandbox_id)
                self._state = "open"
        if self._state != "open":
            raise StoreClosedError("this ArtifactStore is closed")
        return self.ns

    async def close(self) -> None:
        if self._state == "open":
            await self.ns.meta.close()
            await self.ns.blobs.close()
        self._state = "closed"

    # -- argument checks

    def _principal(self, session_id: str | None, user_id: str | None) -> Principal:
        if session_id is not None:
            grid.validate_id(session_id, "session id")
        if user_id is not None:
            grid.validate_id(user_id, "user id")
        trusted = session_id is None and user_id is None
        return Principal(session_id=session_id, user_id=user_id, admin=self.admin, trusted=trusted)

    @staticmethod
    def _scope(scope: Scope | str) -> Scope:
        try:
            return Scope(scope)
        except ValueError:
            raise InvalidArgumentError(f"unknown scope {scope!r}; one of {[s.value for s in Scope]}") from None

    def _ttl(self, ttl: TTLArg, scope: Scope) -> int | None:
        if ttl == DEFAULT:
            return self.ns.default_ttl(scope)
        if ttl is None:
            return None
        if isinstance(ttl, bool) or not isinstance(ttl, int):
            raise InvalidArgumentError(f"ttl must be a whole number of seconds or None, got {ttl!r:.40}")
        if ttl <= 0:
            raise InvalidArgumentError(f"ttl must be positive, got {ttl}")
        return ttl

    @staticmethod
    def _meta(meta: Any) -> dict[str, Any]:
        if meta is None:
            return {}
        if not isinstance(meta, dict):
            raise InvalidArgumentError(f"meta must be a dict, got {type(meta).__name__}")
        try:
            encoded = json.dumps(meta, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"meta is not JSON-serialisable: {exc}") from None
        if len(encoded) > MAX_META_BYTES:
            raise InvalidArgumentError(f"meta is {len(encoded)} bytes as JSON, the limit is {MAX_META_BYTES}")
        return json.loads(encoded)

    @staticmethod
    def _mime(mime: Any, filename: str | None) -> str:
        if mime is None:
            guessed = mimetypes.guess_type(filename if isinstance(filename, str) else "")[0]
            return guessed or "application/octet-stream"
        if not isinstance(mime, str) or not _MIME_RE.fullmatch(mime):
            raise InvalidArgumentError(f"mime {mime!r:.60} is not a MIME type like 'text/plain'")
        return mime

    @staticmethod
    def _summary(summary: Any) -> str:
        if summary is None:
            return ""
        if not isinstance(summary, str) or len(summary) > MAX_SUMMARY_CHARS or "\0" in summary:
            raise InvalidArgumentError(f"summary must be text of at most {MAX_SUMMARY_CHARS} characters")
        return summary

    @staticmethod
    def _bytes(data: Any) -> bytes:
        if isinstance(data, (bytes, bytearray, memoryview)):
            return bytes(data)
        raise InvalidArgumentError(f"data must be bytes, got {type(data).__name__}")

    # -- sessions

    async def create_session(
        self, user_id: str | None = None, ttl_hours: float | None = None, custom_metadata: dict[str, Any] | None = None
    ) -> str:
        ns = await self._ready()
        if user_id is not None:
            grid.validate_id(user_id, "user id")
        custom_metadata = self._meta(custom_metadata)
        lifetime = self._hours(ttl_hours) if ttl_hours is not None else None
        session_id = self._new_session_id(user_id)
        root = await ns.scope_root(Space(sandbox_id=self.sandbox_id, scope=Scope.SESSION, session_id=session_id, user_id=user_id))

        def describe(root: Node) -> None:
            root.session_meta = {"user_id": user_id, "custom_metadata": custom_metadata}
            if lifetime is not None:
                root.expires_at_ns = ns.now() + lifetime

        await ns.update_node(root, describe, ctime=False)
        return session_id

    @staticmethod
    def _new_session_id(user_id: str | None) -> str:
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", user_id)[:60] if user_id else "anon"
        return f"sess-{stem}-{int(time.time())}-{secrets.token_hex(4)}"

    @staticmethod
    def _hours(hours: Any) -> int:
        if isinstance(hours, bool) or not isinstance(hours, (int, float)) or hours <= 0:
            raise InvalidArgumentError(f"hours must be a positive number, got {hours!r:.40}")
        return int(hours * 3600 * NS)

    async def _session_space(self, session_id: str | None, user_id: str | None) -> Space:
        """The space of an existing session, or of a new one, checked against ``user_id``.

        Nothing is created here: a new session comes into being with its first
        artifact (:meth:`_insert`), so a refused store leaves no empty session.
        """
        ns = await self._ready()
        if session_id is None:
            session_id = self._new_session_id(user_id)
        grid.validate_id(session_id, "session id")
        root = await ns.session_root(self.sandbox_id, session_id)
        if root is None or root.expired(ns.now()):  # an expired one is replaced when the artifact goes in
            return Space(sandbox_id=self.sandbox_id, scope=Scope.SESSION, session_id=session_id, user_id=user_id)
        assert root.space is not None
        owner = root.space.user_id
        if user_id is not None and owner is not None and owner != user_id:
            raise AccessDeniedError(f"session {session_id} belongs to another user")
        return root.space

    async def _live_session(self, session_id: str) -> Node:
        ns = await self._ready()
        grid.validate_id(session_id, "session id")
        root = await ns.session_root(self.sandbox_id, session_id)
        if root is None:
            raise SessionError(f"session {session_id} does not exist")
        if root.expired(ns.now()):
            raise SessionError(f"session {session_id} has expired")
        return root

    async def get_session_info(self, session_id: str) -> SessionInfo:
        root = await self._live_session(session_id)
        info = root.session_meta or {}
        assert root.space is not None
        return SessionInfo(
            session_id=session_id, sandbox_id=self.sandbox_id, user_id=root.space.user_id,
            created_at=_dt(root.crtime_ns), expires_at=_dt(root.expires_at_ns),
            custom_metadata=info.get("custom_metadata") or {},
        )

    async def extend_session_ttl(self, session_id: str, additional_hours: float = 1) -> bool:
        root = await self._live_session(session_id)
        if root.expires_at_ns is not None:
            more = self._hours(additional_hours)

            def extend(root: Node) -> None:
                if root.expires_at_ns is not None:
                    root.expires_at_ns += more

            await self.ns.update_node(root, extend, ctime=False)
        return True

    async def delete_session(self, session_id: str) -> int:
        """Remove a session and everything in it; returns the artifacts removed."""
        root = await self._live_session(session_id)
        return await self.ns.purge(root)

    async def cleanup_expired_sessions(self) -> int:
        """Delete expired artifacts and sessions with their blobs; returns artifacts removed."""
        ns = await self._ready()
        removed = await ns.collect_expired()
        await self.transfers.collect_expired()  # uploads never registered or completed
        return removed

    # -- reading

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
        art, space = node.artifact, node.space
        assert art is not None and space is not None
        return ArtifactMetadata(
            artifact_id=art.artifact_id, sandbox_id=space.sandbox_id, session_id=space.session_id,
            user_id=space.user_id, scope=space.scope, key=self.ns.grid_key(node),
            filename=await self.ns.filename_of(node), mime=art.mime, summary=art.summary, meta=art.meta,
            bytes=node.size, sha256=art.sha256, version=art.version, stored_at=_dt(node.crtime_ns),
            updated_at=_dt(node.ctime_ns), ttl=art.ttl, expires_at=_dt(node.expires_at_ns),
        )

    async def metadata(self, artifact_id: str, *, session_id: str | None = None, user_id: str | None = None) -> ArtifactMetadata:
        return await self._describe(await self._node(artifact_id, session_id, user_id))

    async def exists(self, artifact_id: str, *, session_id: str | None = None, user_id: str | None = None) -> bool:
        try:
            await self._node(artifact_id, session_id, user_id)
        except ArtifactNotFoundError:
            return False
        return True

    async def _chunks(self, node: Node, chunk_size: int, verify: bool) -> AsyncIterator[bytes]:
        """The bytes of ``node``'s current version, checked against its SHA-256 at the end."""
        art = node.artifact
        assert art is not None
        if art.blob_key is None:
            if verify and art.sha256 != hashlib.sha256(b"").hexdigest():
                raise ArtifactCorruptedError(f"artifact {art.artifact_id} has lost its bytes")
            return
        digest = hashlib.sha256()
        try:
            # Given the size, a remote store makes no request before the first read: a missing blob shows there.
            reader = await self.ns.blobs.reader(art.blob_key, size=node.size)
            try:
                chunk = await reader.read(0, min(chunk_size, node.size))
            except BaseException:
                await reader.close()
                raise
        except ArtifactNotFoundError:
            # Gone under a live record is damage, unless an update or delete just raced this read.
            fresh = await self.ns.meta.get(node.ino)
            if fresh is None or fresh.artifact is None or fresh.artifact.artifact_id != art.artifact_id:
                raise ArtifactNotFoundError(f"artifact {art.artifact_id} was deleted") from None
            if fresh.artifact.blob_key == art.blob_key:
                raise ArtifactCorruptedError(f"artifact {art.artifact_id} has lost its bytes") from None
            async for chunk in self._chunks(fresh, chunk_size, verify):
                yield chunk
            return
        try:
            offset = 0
            while chunk:
                offset += len(chunk)
                if verify:
                    digest.update(chunk)
                yield chunk
                if offset >= node.size:
                    break
                chunk = await reader.read(offset, min(chunk_size, node.size - offset))
            tail = await reader.read(node.size, 1)
        finally:
            await reader.close()
        if offset != node.size or tail:
            raise ArtifactCorruptedError(f"artifact {art.artifact_id} is stored with a different size")
        if verify and digest.hexdigest() != art.sha256:
            raise ArtifactCorruptedError(f"artifact {art.artifact_id} fails its SHA-256 check")

    async def retrieve(self, artifact_id: str, *, session_id: str | None = None, user_id: str | None = None) -> bytes:
        node = await self._node(artifact_id, session_id, user_id)
        out = bytearray()
        async for chunk in self._chunks(node, max(node.size, 1), verify=True):
            out += chunk
        return bytes(out)

    async def read_file(
        self, artifact_id: str, *, as_text: bool = False, encoding: str = "utf-8",
        session_id: str | None = None, user_id: str | None = None,
    ) -> bytes | str:
        data = await self.retrieve(artifact_id, session_id=session_id, user_id=user_id)
        if not as_text:
            return data
        try:
            return data.decode(encoding)
        except LookupError:
            raise InvalidArgumentError(f"unknown text encoding {encoding!r:.40}") from None
        except UnicodeDecodeError as exc:
            raise InvalidArgumentError(f"artifact {artifact_id} is not valid {encoding} text: {exc}") from None

    # -- storing

    async def _writable_space(self, scope: Scope, session_id: str | None, user_id: str | None, what: str) -> Space:
        """The space a new artifact (or upload) of ``scope`` lands in, once the caller may write there."""
        who = self._principal(session_id, user_id)
        if scope is Scope.SESSION:
            space = await self._session_space(session_id, user_id)
            who = who.model_copy(update={"session_id": space.session_id, "trusted": who.trusted or session_id is None})
        elif scope is Scope.USER:
            if user_id is None:
                raise InvalidArgumentError("scope='user' needs a user_id")
            space = Space(sandbox_id=self.sandbox_id, scope=Scope.USER, user_id=user_id)
        else:
            space = Space(sandbox_id=self.sandbox_id, scope=Scope.SANDBOX)
        check_write(who, space, what)
        return space

    async def _prepare(
        self, *, filename: str | None, mime: Any, summary: Any, meta: Any, session_id: str | None,
        user_id: str | None, scope: Scope | str, ttl: TTLArg,
    ) -> Node:
        """A new, not yet stored file node, with every argument checked first."""
        ns = await self._ready()
        scope = self._scope(scope)
        ttl = self._ttl(ttl, scope)
        meta = self._meta(meta)
        parts = grid.split_filename(filename) if filename is not None else None
        mime = self._mime(mime, filename)
        summary = self._summary(summary)
        space = await self._writable_space(scope, session_id, user_id, "store")
        artifact_id = ns.new_artifact_id()
        parts = parts or [artifact_id]
        node = ns.file_node(_unplaced(space), parts[-1], ttl=ttl, artifact_id=artifact_id, mime=mime, summary=summary,
                            meta=meta)
        return _Draft(node, parts[:-1])

    async def _occupant(self, space: Space, dirs: list[str], name: str) -> Node | None:
        """The file a new one at ``dirs/name`` would replace, if there is one (expired or not)."""
        ns = self.ns
        try:
            cursor = await ns.scope_root(space, create=False)
            for part in dirs:
                cursor = await ns.child(cursor, part)
        except ArtifactNotFoundError:
            return None
        old = await ns.meta.lookup(cursor.ino, name)
        return old if old is not None and old.is_file else None

    async def _insert(self, draft: _Draft, key: str | None, size: int, sha256: str) -> str:
        """Put a drafted file into the tree, pointing at its stored blob.

        Room is checked before the session or any directory is made, so a
        refusal leaves nothing behind; on any failure the blob goes too.
        """
        ns, node = self.ns, draft.node
        assert node.space is not None
        try:
            ns.set_content(node, key, size, sha256)
            replaced = await self._occupant(node.space, draft.dirs, node.name)
            await ns.ensure_room(node.space, size - (replaced.size if replaced else 0), 0 if replaced else 1)
            parent = await ns.mkdirs(await ns.scope_root(node.space), draft.dirs)
            node.parent = parent.ino
            node = await ns.insert_file(node, replace=True)
        except BaseException:
            with anyio.CancelScope(shield=True):
                if key is not None:
                    await ns.blobs.delete(key)
            raise
        assert node.artifact is not None
        return node.artifact.artifact_id

    async def store(
        self, data: bytes, *, mime: str | None = None, summary: str = "", filename: str | None = None,
        meta: dict[str, Any] | None = None, session_id: str | None = None, user_id: str | None = None,
        scope: Scope | str = Scope.SESSION, ttl: TTLArg = DEFAULT,
    ) -> str:
        """Store ``data``; returns the new artifact id.

        A ``filename`` that already names a file in that scope replaces it,
        as copying over a file would.
        """
        data = self._bytes(data)
        draft = await self._prepare(filename=filename, mime=mime, summary=summary, meta=meta, session_id=session_id,
                                    user_id=user_id, scope=scope, ttl=ttl)
        key, size, sha256 = await self.ns.put_blob(draft.node, data)
        return await self._insert(draft, key, size, sha256)

    async def write_file(
        self, content: str | bytes, *, filename: str, mime: str = "text/plain", summary: str = "",
        session_id: str | None = None, user_id: str | None = None, meta: dict[str, Any] | None = None,
        encoding: str = "utf-8", scope: Scope | str = Scope.SESSION, ttl: TTLArg = DEFAULT,
        overwrite_artifact_id: str | None = None,
    ) -> str:
        if isinstance(content, str):
            content = content.encode(encoding)
        if overwrite_artifact_id is not None:
            await self.update_file(overwrite_artifact_id, data=content, mime=mime, summary=summary or None,
                                   meta=meta, session_id=session_id, user_id=user_id)
            return overwrite_artifact_id
        return await self.store(content, mime=mime, summary=summary, filename=filename, meta=meta,
                                session_id=session_id, user_id=user_id, scope=scope, ttl=ttl)

    async def stream_upload(self, request: StreamUploadRequest) -> str:
        limit = self.ns.limits.max_artifact_bytes
        if request.content_length is not None:
            if request.content_length < 0:
                raise InvalidArgumentError("content_length must not be negative")
            if request.content_length > limit:
                raise ArtifactTooLargeError(f"content_length {request.content_length} exceeds the limit of {limit} bytes")
        draft = await self._prepare(filename=request.filename, mime=request.mime, summary=request.summary,
                                    meta=request.meta, session_id=request.session_id, user_id=request.user_id,
                                    scope=request.scope, ttl=request.ttl)
        total = request.content_length
        callback = request.progress_callback
        progress = (lambda sent: callback(sent, total)) if callback else None
        key, size, sha256 = await self.ns.write_blob(draft.node, _aiter(request.data_stream), progress=progress)
        if total is not None and size != total:
            if key is not None:
                await self.ns.blobs.delete(key)
            raise InvalidArgumentError(f"the stream carried {size} bytes, content_length said {total}")
        return await self._insert(draft, key, size, sha256)

    async def stream_download(self, request: StreamDownloadRequest) -> AsyncIterator[bytes]:
        node = await self._node(request.artifact_id, request.session_id, request.user_id)
        sent = 0
        async for chunk in self._chunks(node, request.chunk_size, verify=request.verify):
            sent += len(chunk)
            yield chunk
            if request.progress_callback is not None:
                request.progress_callback(sent, node.size)

    async def store_batch(
        self, items: list[dict[str, Any]], session_id: str | None = None, ttl: TTLArg = DEFAULT,
        *, user_id: str | None = None, scope: Scope | str = Scope.SESSION,
    ) -> list[str]:
        """Store several artifacts, all or none: on any failure the ones stored are removed."""
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise InvalidArgumentError("store_batch takes a list of dicts")
        allowed = {"data", "mime", "summary", "filename", "meta", "ttl", "scope", "user_id"}
        for i, item in enumerate(items):
            unknown = set(item) - allowed
            if unknown or "data" not in item:
                raise InvalidArgumentError(f"batch item {i}: needs 'data'; unknown keys {sorted(unknown)}")
            self._bytes(item["data"])
            self._meta(item.get("meta"))
            self._mime(item.get("mime"), item.get("filename"))
            if item.get("filename") is not None:
                grid.split_filename(item["filename"])
        if not items:
            return []
        scope = self._scope(scope)
        if scope is Scope.SESSION and session_id is None:
            session_id = self._new_session_id(user_id)  # made with the first artifact, like any new session
        drafts = [
            await self._prepare(
                filename=item.get("filename"), mime=item.get("mime"), summary=item.get("summary", ""),
                meta=item.get("meta"), session_id=session_id, user_id=item.get("user_id", user_id),
                scope=item.get("scope", scope), ttl=item.get("ttl", ttl),
            )
            for item in items
        ]
        await self._ensure_batch_room(drafts, [len(item["data"]) for item in items])
        ids: list[str | None] = [None] * len(items)
        limiter = anyio.Semaphore(_BATCH_CONCURRENCY)

        async def one(i: int, item: dict[str, Any]) -> None:
            async with limiter:
                key, size, sha256 = await self.ns.put_blob(drafts[i].node, self._bytes(item["data"]))
                ids[i] = await self._insert(drafts[i], key, size, sha256)

        try:
            async with anyio.create_task_group() as tg:
                for i, item in enumerate(items):
                    tg.start_soon(one, i, item)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                for artifact_id in ids:
                    if artifact_id is not None:
                        try:
                            await self.ns.purge(await self.ns.artifact_node(artifact_id))
                        except ArtifactStoreError:
                            pass
            raise _first_error(exc) from None
        return [i for i in ids if i is not None]

    async def _ensure_batch_room(self, drafts: list[_Draft], sizes: list[int]) -> None:
        """Refuse a batch that cannot fit whole, before any of it is written."""
        limit = self.ns.limits.max_artifact_bytes
        need: dict[str, tuple[Space, int, int]] = {}
        for draft, size in zip(drafts, sizes):
            if size > limit:
                raise ArtifactTooLargeError(f"a batch item of {size} bytes exceeds the size limit of {limit} bytes")
            space = draft.node.space
            assert space is not None
            old = await self._occupant(space, draft.dirs, draft.node.name)
            _, add_bytes, add_files = need.get(space.usage_key, (space, 0, 0))
            need[space.usage_key] = (space, add_bytes + size - (old.size if old else 0), add_files + (0 if old else 1))
        for space, add_bytes, add_files in need.values():
            await self.ns.ensure_room(space, add_bytes, add_files)

    # -- changing

    async def update_file(
        self, artifact_id: str, *, data: bytes | None = None, meta: dict[str, Any] | None = None,
        filename: str | None = None, summary: str | None = None, mime: str | None = None,
        session_id: str | None = None, user_id: str | None = None,
    ) -> bool:
        """Write a new version and/or change metadata; ``meta`` is merged into the old."""
        node = await self._node(artifact_id, session_id, user_id, write=True)
        if data is not None:
            data = self._bytes(data)
        if filename is not None:
            grid.split_filename(filename)  # a bad new name must refuse the whole update, not half of it
        def fields(node: Node) -> None:
            self._apply_fields(node, summary=summary, mime=mime, meta=meta, merge=True)

        if data is not None:
            fields(node)  # a bad field refuses the update before any byte is written
            old_blob = node.artifact.blob_key  # type: ignore[union-attr]
            key, size, sha256 = await self.ns.put_blob(node, data)
            self.ns.set_content(node, key, size, sha256)
            await self.ns.commit(node, old_blob=old_blob, change=fields)
        else:
            await self.ns.update_node(node, fields)
        if filename is not None:
            await self._rename(node, filename)
        return True

    def _apply_fields(self, node: Node, *, summary: Any, mime: Any, meta: Any, merge: bool) -> None:
        art = node.artifact
        assert art is not None
        if summary is not None:
            art.summary = self._summary(summary)
        if mime is not None:
            art.mime = self._mime(mime, None)
        if meta is not None:
            meta = self._meta(meta)
            art.meta = self._meta({**art.meta, **meta}) if merge else meta

    async def update_metadata(
        self, artifact_id: str, *, summary: str | None = None, meta: dict[str, Any] | None = None,
        merge: bool = True, mime: str | None = None, filename: str | None = None, ttl: TTLArg = DEFAULT,
        session_id: str | None = None, user_id: str | None = None, **unused: Any,
    ) -> ArtifactMetadata:
        node = await self._node(artifact_id, session_id, user_id, write=True)
        if filename is not None:
            grid.split_filename(filename)
        new_ttl = self._ttl(ttl, node.space.scope) if ttl != DEFAULT else None  # type: ignore[union-attr]

        def change(node: Node) -> None:
            self._apply_fields(node, summary=summary, mime=mime, meta=meta, merge=merge)
            if ttl != DEFAULT:
                self._set_ttl(node, new_ttl)

        await self.ns.update_node(node, change)  # which moves the session out first if the ttl does
        if filename is not None:
            await self._rename(node, filename)
        return await self._describe(await self.ns.artifact_node(artifact_id))

    def _set_ttl(self, node: Node, ttl: int | None) -> None:
        assert node.artifact is not None
        node.artifact.ttl = ttl
        node.expires_at_ns = None if ttl is None else self.ns.now() + ttl * NS

    async def extend_ttl(
        self, artifact_id: str, additional_seconds: int, *, session_id: str | None = None, user_id: str | None = None
    ) -> ArtifactMetadata:
        if isinstance(additional_seconds, bool) or not isinstance(additional_seconds, int) or additional_seconds <= 0:
            raise InvalidArgumentError(f"additional_seconds must be a positive whole number, got {additional_seconds!r:.40}")
        node = await self._node(artifact_id, session_id, user_id, write=True)
        assert node.artifact is not None and node.space is not None
        if node.expires_at_ns is not None:

            def extend(node: Node) -> None:
                if node.expires_at_ns is not None and node.artifact is not None:
                    node.expires_at_ns += additional_seconds * NS
                    node.artifact.ttl = (node.artifact.ttl or 0) + additional_seconds

            await self.ns.update_node(node, extend)  # which moves the session out first
        return await self._describe(node)

    async def _rename(self, node: Node, filename: str) -> None:
        parts = grid.split_filename(filename)
        assert node.space is not None
        root = await self.ns.scope_root(node.space)
        parent = await self.ns.mkdirs(root, parts[:-1])
        fresh = await self.ns.get(node.ino)
        await self.ns.rename(fresh, parent, parts[-1], replace=True)

    async def delete(self, artifact_id: str, *, session_id: str | None = None, user_id: str | None = None) -> bool:
        try:
            node = await self._node(artifact_id, session_id, user_id, write=True)
        except ArtifactNotFoundError:
            return False
        try:
            await self.ns.unlink(node)
        except ArtifactNotFoundError:
            return False  # removed (or moved) by another writer meanwhile
        return True

    def _same_session(self, node: Node, target_session_id: str | None, verb: str) -> None:
        assert node.space is not None
        if target_session_id is not None:
            grid.validate_id(target_session_id, "session id")
        if target_session_id is not None and target_session_id != node.space.session_id:
            raise AccessDeniedError(f"{verb} across sessions is not allowed")

    async def copy_file(
        self, artifact_id: str, *, new_filename: str | None = None, target_session_id: str | None = None,
        new_meta: dict[str, Any] | None = None, summary: str | None = None,
        session_id: str | None = None, user_id: str | None = None,
    ) -> str:
        """Copy within the same session or user space; returns the new id."""
        node = await self._node(artifact_id, session_id, user_id)
        self._same_session(node, target_session_id, "copy")
        art, space = node.artifact, node.space
        assert art is not None and space is not None
        who = self._principal(session_id, user_id)
        check_write(who, space, f"copy of {artifact_id}")
        filename = new_filename if new_filename is not None else await self._copy_name(node)
        meta = self._meta({**art.meta, **self._meta(new_meta)})
        parts = grid.split_filename(filename)
        copy = self.ns.file_node(
            _unplaced(space), parts[-1], ttl=art.ttl, mime=art.mime,
            summary=art.summary if summary is None else self._summary(summary), meta=meta,
        )
        copy.mode = node.mode
        key, size, sha256 = await self.ns.write_blob(copy, self._chunks(node, _READ_CHUNK, verify=True))
        return await self._insert(_Draft(copy, parts[:-1]), key, size, sha256)

    async def _copy_name(self, node: Node) -> str:
        name = await self.ns.filename_of(node)
        stem, dot, ext = name.rpartition(".")
        if not stem or "/" in ext:
            stem, dot, ext = name, "", ""
        parent = await self.ns.get(node.parent)
        for n in range(1, 10_000):
            candidate = f"{stem}_copy{n if n > 1 else ''}{dot}{ext}"
            if await self.ns.find(parent, candidate.rpartition("/")[2]) is None:
                return candidate
        raise AlreadyExistsError("no free name for the copy")

    async def move_file(
        self, artifact_id: str, *, new_filename: str | None = None, new_session_id: str | None = None,
        new_meta: dict[str, Any] | None = None, session_id: str | None = None, user_id: str | None = None,
    ) -> ArtifactMetadata:
        node = await self._node(artifact_id, session_id, user_id, write=True)
        self._same_session(node, new_session_id, "move")
        if new_filename is not None:
            grid.split_filename(new_filename)
        if new_meta is not None:
            await self.ns.update_node(
                node, lambda node: self._apply_fields(node, summary=None, mime=None, meta=new_meta, merge=True)
            )
        if new_filename is not None:
            await self._rename(node, new_filename)
        return await self._describe(await self.ns.artifact_node(artifact_id))

    # -- listing and searching

    async def _walk(self, root: Node) -> list[Node]:
        files: list[Node] = []
        stack = [root]
        while stack:
            for child in await self.ns.list(stack.pop()):
                if child.is_dir:
                    stack.append(child)
                elif child.is_file:
                    files.append(child)
        return files

    async def _session_files(self, session_id: str) -> list[ArtifactMetadata]:
        ns = await self._ready()
        grid.validate_id(session_id, "session id")
        root = await ns.session_root(self.sandbox_id, session_id)
        if not ns.visible(root):
            return []
        found = [await self._describe(n) for n in await self._walk(root)]  # type: ignore[arg-type]
        return sorted(found, key=lambda m: m.filename)

    async def list_by_session(self, session_id: str, limit: int | None = None) -> list[ArtifactMetadata]:
        return _limit(await self._session_files(session_id), limit)

    async def list_files(self, session_id: str, prefix: str = "", limit: int | None = None) -> list[ArtifactMetadata]:
        return _limit([m for m in await self._session_files(session_id) if m.filename.startswith(prefix)], limit)

    async def get_directory_contents(
        self, session_id: str, directory_prefix: str = "", limit: int | None = None
    ) -> list[ArtifactMetadata]:
        """The files directly inside one directory of a session (not below it)."""
        prefix = directory_prefix.rstrip("/")
        prefix = f"{prefix}/" if prefix else ""
        found = [
            m for m in await self._session_files(session_id)
            if m.filename.startswith(prefix) and "/" not in m.filename[len(prefix):]
        ]
        return _limit(found, limit)

    async def search(
        self, *, user_id: str | None = None, scope: Scope | str | None = None, mime_prefix: str | None = None,
        meta_filter: dict[str, Any] | None = None, session_id: str | None = None, limit: int | None = None,
    ) -> list[ArtifactMetadata]:
        ns = await self._ready()
        scope = self._scope(scope) if scope is not None else None
        if user_id is not None:
            grid.validate_id(user_id, "user id")
        if session_id is not None:
            grid.validate_id(session_id, "session id")
        meta_filter = self._meta(meta_filter)
        now = ns.now()
        nodes = await ns.meta.search(self.sandbox_id, scope=scope, session_id=session_id, user_id=user_id)
        found = []
        for node in nodes:
            art = node.artifact
            if node.expired(now) or art is None:
                continue
            if mime_prefix and not art.mime.startswith(mime_prefix):
                continue
            if any(art.meta.get(k, _MISSING) != v for k, v in meta_filter.items()):
                continue
            found.append(await self._describe(node))
        found.sort(key=lambda m: (m.stored_at, m.artifact_id))
        return _limit(found, limit)

    # -- the grid and the store itself

    def parse_grid_key(self, key: str) -> GridKey:
        return grid.parse_grid_key(key)

    def get_canonical_prefix(self, session_id: str) -> str:
        return grid.scope_prefix(self.sandbox_id, Scope.SESSION, grid.validate_id(session_id, "session id")) + "/"

    def generate_artifact_key(self, session_id: str, artifact_id: str) -> str:
        return grid.grid_key(self.sandbox_id, Scope.SESSION, grid.validate_id(session_id, "session id"),
                             grid.validate_id(artifact_id, "artifact id"))

    async def get_sandbox_info(self) -> dict[str, Any]:
        await self._ready()
        return {
            "sandbox_id": self.sandbox_id,
            "grid_prefix_pattern": f"grid/{self.sandbox_id}/",
            "session_prefix_pattern": f"grid/{self.sandbox_id}/sessions/{{session_id}}/",
            "user_prefix_pattern": f"grid/{self.sandbox_id}/users/{{user_id}}/",
            "shared_prefix": f"grid/{self.sandbox_id}/shared/",
            "storage_provider": self.settings.storage_provider.value,
            "session_provider": self.settings.session_provider.value,
        }

    async def get_stats(self) -> dict[str, Any]:
        ns = await self._ready()
        totals = await ns.meta.totals()
        return {
            "storage_provider": self.settings.storage_provider.value,
            "session_provider": self.settings.session_provider.value,
            "bucket": self.settings.bucket,
            "sandbox_id": self.sandbox_id,
            "artifacts": totals.files,
            "bytes": totals.bytes,
            "session_manager": {"default_session_ttl": ns.limits.session_ttl, "default_ttl": ns.limits.default_ttl},
            "limits": ns.limits.model_dump(),
        }

    async def validate_configuration(self) -> dict[str, Any]:
        """Probe both backends; never raises for a backend fault, reports it."""
        result: dict[str, Any] = {}
        try:
            ns = await self._ready()
        except StoreClosedError:
            raise
        except ArtifactStoreError as exc:
            error = {"status": "error", "message": str(exc)}
            return {"storage": error, "session": error, "session_manager": error}
        try:
            await ns.blobs.check()
            result["storage"] = {"status": "ok", "provider": self.settings.storage_provider.value}
        except ArtifactStoreError as exc:
            result["storage"] = {"status": "error", "provider": self.settings.storage_provider.value, "message": str(exc)}
        try:
            await ns.meta.get(1)
            result["session"] = {"status": "ok", "provider": self.settings.session_provider.value}
        except ArtifactStoreError as exc:
            result["session"] = {"status": "error", "provider": self.settings.session_provider.value, "message": str(exc)}
        result["session_manager"] = {"status": result["session"]["status"], "sandbox_id": self.sandbox_id}
        return result

    # -- presigned URLs and uploads: rules in core/presign_api.py, mechanics in core/transfers.py

    @property
    def transfers(self) -> Transfers:
        """This store's signed URLs and open uploads; the presign service serves from it."""
        if "_transfers" not in self.__dict__:
            self.__dict__["_transfers"] = Transfers.for_settings(self.ns, self.settings)
        return self.__dict__["_transfers"]

    @property
    def _presign(self) -> PresignApi:
        return PresignApi(self)

    async def presign(self, artifact_id: str, expires: int = 3600, *, session_id: str | None = None,
                      user_id: str | None = None) -> str:
        """A URL that downloads the artifact (GET, Range, HEAD) until ``expires`` seconds from now."""
        return await self._presign.presign(artifact_id, expires, session_id, user_id)

    async def presign_short(self, artifact_id: str, *, session_id: str | None = None, user_id: str | None = None) -> str:
        return await self.presign(artifact_id, 15 * 60, session_id=session_id, user_id=user_id)

    async def presign_medium(self, artifact_id: str, *, session_id: str | None = None, user_id: str | None = None) -> str:
        return await self.presign(artifact_id, 3600, session_id=session_id, user_id=user_id)

    async def presign_long(self, artifact_id: str, *, session_id: str | None = None, user_id: str | None = None) -> str:
        return await self.presign(artifact_id, 24 * 3600, session_id=session_id, user_id=user_id)

    async def presign_upload(
        self, session_id: str | None = None, filename: str | None = None, mime_type: str | None = None,
        expires: int = 3600, *, user_id: str | None = None, scope: Scope | str = Scope.SESSION, ttl: TTLArg = DEFAULT,
        max_bytes: int | None = None,
    ) -> tuple[str, str]:
        """A PUT URL for new bytes; returns (url, artifact_id). The artifact appears on register_uploaded_artifact."""
        return await self._presign.presign_upload(
            session_id=session_id, user_id=user_id, filename=filename, mime=mime_type, expires=expires, scope=scope,
            ttl=ttl, max_bytes=max_bytes, summary="", meta=None, publish_on_upload=False,
        )

    async def register_uploaded_artifact(
        self, artifact_id: str, *, mime: str | None = None, summary: str | None = None, filename: str | None = None,
        meta: dict[str, Any] | None = None, ttl: TTLArg = DEFAULT, session_id: str | None = None,
        user_id: str | None = None,
    ) -> bool:
        """Publish what was PUT to a presign_upload URL; fields left None keep the upload's."""
        return await self._presign.register(
            artifact_id, mime=mime, summary=summary, filename=filename, meta=meta, ttl=ttl, ttl_given=ttl != DEFAULT,
            session_id=session_id, user_id=user_id,
        )

    async def presign_upload_and_register(
        self, mime: str | None = None, summary: str = "", filename: str | None = None, session_id: str | None = None,
        meta: dict[str, Any] | None = None, expires: int = 3600, *, user_id: str | None = None,
        scope: Scope | str = Scope.SESSION, ttl: TTLArg = DEFAULT, max_bytes: int | None = None,
    ) -> tuple[str, str]:
        """A PUT URL whose upload publishes the artifact by itself; returns (url, artifact_id)."""
        return await self._presign.presign_upload(
            session_id=session_id, user_id=user_id, filename=filename, mime=mime, expires=expires, scope=scope,
            ttl=ttl, max_bytes=max_bytes, summary=summary, meta=meta, publish_on_upload=True,
        )

    async def initiate_multipart_upload(self, request: MultipartUploadInitRequest) -> dict[str, Any]:
        """Open a multipart upload; returns {"upload_id", "artifact_id", "key", ...}."""
        return await self._presign.initiate_multipart(request)

    async def get_part_upload_url(self, upload_id: str, part_number: int, expires: int = 3600) -> str:
        """A PUT URL for one part; its response carries the ETag to list on completion."""
        return await self._presign.part_url(upload_id, part_number, expires)

    async def complete_multipart_upload(self, request: MultipartUploadCompleteRequest) -> str:
        """Publish the listed parts, in order, as the artifact; returns its id."""
        return await self._presign.complete_multipart(request)

    async def abort_multipart_upload(self, upload_id: str, *, session_id: str | None = None,
                                     user_id: str | None = None) -> bool:
        """Drop an open multipart upload and its parts; False when there was none."""
        return await self._presign.abort_multipart(upload_id, session_id, user_id)


_MISSING = object()


class _Draft(NamedTuple):
    """A new file, checked and named but not yet in the tree.

    Its session, directories and entry are made only once its bytes are
    stored, so a refused or failed store leaves no trace.
    """

    node: Node
    dirs: list[str]


def _unplaced(space: Space) -> Node:
    """Stands in for the directory of a drafted file until :meth:`ArtifactStore._insert` makes the real one."""
    return new_node(parent=0, name="", kind=NodeKind.DIR, mode=0o755, now_ns=0, role=NodeRole.SCOPE_ROOT, space=space)


def _limit(items: list[ArtifactMetadata], limit: int | None) -> list[ArtifactMetadata]:
    if limit is None:
        return items
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise InvalidArgumentError(f"limit must be a non-negative whole number, got {limit!r:.40}")
    return items[:limit]


async def _aiter(stream: AsyncIterable[bytes] | Iterable[bytes]) -> AsyncIterator[bytes]:
    if hasattr(stream, "__aiter__"):
        async for chunk in stream:  # type: ignore[union-attr]
            yield chunk
    elif hasattr(stream, "__iter__") and not isinstance(stream, (bytes, bytearray, str)):
        for chunk in stream:  # type: ignore[union-attr]
            yield chunk
    else:
        raise InvalidArgumentError("data_stream must be an (async) iterable of bytes")


def _first_error(exc: BaseException) -> BaseException:
    """The first real error inside an exception group from a task group."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
