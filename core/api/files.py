"""Artifacts as files: reading, storing, changing, copying, moving and deleting them."""

from __future__ import annotations

import codecs
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any, NamedTuple

import anyio

from core.api import rules
from core.api.access import check_batch_user, check_read, check_write
from core.api.base import StoreBase
from core.api.described import handed_out
from core.api.rules import DEFAULT, TTLArg
from core.errors import (
    AccessDeniedError,
    AlreadyExistsError,
    ArtifactNotFoundError,
    ArtifactStoreError,
    ArtifactTooLargeError,
    InvalidArgumentError,
    shown,
)
from core.models import (
    ArtifactMetadata,
    Scope,
    StreamDownloadRequest,
    StreamUploadRequest,
)
from core.nodes import Node, NodeKind, NodeRole, Space, new_node
from core.tree import grid
from core.tree.base import expiry_ns
from core.tree.namespace import NS

_BATCH_CONCURRENCY = 16
_READ_CHUNK = 1 << 20


class FilesApi(StoreBase):
    """Artifacts one at a time (and in batches): read, store, change, copy, move, delete."""

    # -- reading

    async def metadata(self, artifact_id: str, *, session_id: str | None = None, user_id: str | None = None) -> ArtifactMetadata:
        ns = await self._ready()
        token = ns.meta.read_token()  # taken before the reads: a change during them makes the answer stale
        kept = token is not None and isinstance(artifact_id, str)  # anything else: _node's refusal
        hit = self._answers.get(artifact_id, token) if kept else None
        if hit is not None and not hit.node.expired(ns.now()):
            assert hit.node.space is not None
            check_read(self._principal(session_id, user_id), hit.node.space, f"artifact {artifact_id}")
            return handed_out(hit.answer)
        node = await self._node(artifact_id, session_id, user_id)
        answer = await self._describe(node)
        if kept:
            self._answers.put(artifact_id, token, node, answer)
        return handed_out(answer)

    async def exists(self, artifact_id: str, *, session_id: str | None = None, user_id: str | None = None) -> bool:
        try:
            await self._node(artifact_id, session_id, user_id)
        except ArtifactNotFoundError:
            return False
        return True

    async def retrieve(self, artifact_id: str, *, session_id: str | None = None, user_id: str | None = None) -> bytes:
        node = await self._node(artifact_id, session_id, user_id)
        # One chunk of the whole size, verified: returned as read, not copied into a buffer and out again
        # (two copies of the whole artifact, measured at a third of stream_download's speed at 256 MiB).
        chunks = [chunk async for chunk in self.ns.read_chunks(node, max(node.size, 1), verify=True)]
        return bytes(chunks[0]) if len(chunks) == 1 else b"".join(chunks)

    async def read_file(
        self, artifact_id: str, *, as_text: bool = False, encoding: str = "utf-8",
        session_id: str | None = None, user_id: str | None = None,
    ) -> bytes | str:
        data = await self.retrieve(artifact_id, session_id=session_id, user_id=user_id)
        if not as_text:
            return data
        try:
            return data.decode(_codec(encoding))
        except UnicodeDecodeError as exc:
            raise InvalidArgumentError(f"artifact {artifact_id} is not valid {encoding} text: {exc}") from None

    async def stream_download(self, request: StreamDownloadRequest) -> AsyncIterator[bytes]:
        node = await self._node(request.artifact_id, request.session_id, request.user_id)
        sent = 0
        async for chunk in self.ns.read_chunks(node, request.chunk_size, verify=request.verify):
            sent += len(chunk)
            yield chunk
            if request.progress_callback is not None:
                request.progress_callback(sent, node.size)

    # -- storing

    async def _prepare(
        self, *, filename: str | None, mime: Any, summary: Any, meta: Any, session_id: str | None,
        user_id: str | None, scope: Scope | str, ttl: TTLArg,
    ) -> Node:
        """A new, not yet stored file node, with every argument checked first."""
        ns = await self._ready()
        scope = rules.scope(scope)
        ttl = self._ttl(ttl, scope)
        meta = rules.meta(meta, self.ns.limits)
        parts = grid.split_filename(filename) if filename is not None else None
        mime = rules.mime(mime, filename)
        summary = rules.summary(summary)
        space = await self._writable_space(scope, session_id, user_id, "store")
        artifact_id = await ns.new_artifact_id(space)
        parts = parts or [artifact_id]
        node = await ns.file_node(_unplaced(space), parts[-1], ttl=ttl, artifact_id=artifact_id, mime=mime,
                                  summary=summary, meta=meta)
        return _Draft(node, parts[:-1])

    async def _occupant(self, space: Space, dirs: list[str], name: str) -> Node | None:
        """The file a new one at ``dirs/name`` would replace, if there is one (expired or not).

        The whole path is one read, whatever its depth (issue #9). Only the
        scope root and the directories must be visible, as a lookup of each
        in turn would have found them.
        """
        ns = self.ns
        path = await ns.walk(space, [*dirs, name])
        if not path or not ns.visible(path[0]):
            if path:  # an expired scope: scope_root() purges it, as it does whenever it meets one
                try:
                    await ns.scope_root(space, create=False)
                except ArtifactNotFoundError:
                    pass
            return None
        if len(path) < len(dirs) + 2 or not all(ns.visible(d) for d in path[1:-1]):
            return None
        old = path[-1]
        return old if old.is_file else None

    async def _insert(self, draft: _Draft, key: str | None, size: int, sha256: str) -> str:
        """Put a drafted file into the tree, pointing at its stored blob.

        Room is checked before the session or any directory is made, so a
        refusal leaves nothing behind; on any failure the blob goes too.
        """
        ns, node = self.ns, draft.node
        assert node.space is not None
        try:
            ns.created_at_publish(ns.set_content(node, key, size, sha256))
            if ns.has_quota(node.space.scope):  # without one, what it replaces does not matter here
                replaced = await self._occupant(node.space, draft.dirs, node.name)
                await ns.ensure_room(node.space, size - (replaced.size if replaced else 0), 0 if replaced else 1)
            root, parent = await ns.place(node.space, draft.dirs)
            node.parent = parent.ino
            node = await ns.insert_file(node, replace=True, root=root)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await ns.discard_blob(key)
            raise
        await ns.sync_meta()  # durable when store() returns: the record too, not only the blob
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
        data = rules.data(data)
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
            content = _encoded(content, encoding)
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
                raise ArtifactTooLargeError(f"content_length {shown(request.content_length)} exceeds the limit of {limit} bytes")
        draft = await self._prepare(filename=request.filename, mime=request.mime, summary=request.summary,
                                    meta=request.meta, session_id=request.session_id, user_id=request.user_id,
                                    scope=request.scope, ttl=request.ttl)
        total = request.content_length
        callback = request.progress_callback
        progress = (lambda sent: callback(sent, total)) if callback else None
        key, size, sha256 = await self.ns.write_blob(draft.node, _aiter(request.data_stream), progress=progress)
        if total is not None and size != total:
            await self.ns.discard_blob(key)
            raise InvalidArgumentError(f"the stream carried {size} bytes, content_length said {total}")
        return await self._insert(draft, key, size, sha256)

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
            rules.data(item["data"])
            rules.meta(item.get("meta"), self.ns.limits)
            rules.mime(item.get("mime"), item.get("filename"))
            if item.get("filename") is not None:
                grid.split_filename(item["filename"])
            check_batch_user(user_id, item.get("user_id"), i)
        if not items:
            return []
        scope = rules.scope(scope)
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
                key, size, sha256 = await self.ns.put_blob(drafts[i].node, rules.data(item["data"]))
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
            if not self.ns.has_quota(space.scope):
                continue  # no room to check there (ensure_room would not look): save the read
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
            data = rules.data(data)
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
        if data is not None:
            await self.ns.sync_meta()  # a new version is durable on return, as a store is
        return True

    def _apply_fields(self, node: Node, *, summary: Any, mime: Any, meta: Any, merge: bool) -> None:
        art = node.artifact
        assert art is not None
        if summary is not None:
            art.summary = rules.summary(summary)
        if mime is not None:
            art.mime = rules.mime(mime, None)
        if meta is not None:
            meta = rules.meta(meta, self.ns.limits)
            art.meta = rules.meta({**art.meta, **meta}, self.ns.limits) if merge else meta

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
        node.expires_at_ns = expiry_ns(self.ns.now(), ttl)

    async def extend_ttl(
        self, artifact_id: str, additional_seconds: int, *, session_id: str | None = None, user_id: str | None = None
    ) -> ArtifactMetadata:
        rules.ttl_seconds(additional_seconds, self.ns.limits, "additional_seconds")
        node = await self._node(artifact_id, session_id, user_id, write=True)
        assert node.artifact is not None and node.space is not None
        if node.expires_at_ns is not None:
            self._extended(node.expires_at_ns, additional_seconds * NS)  # refused before anything is written

            def extend(node: Node) -> None:
                if node.expires_at_ns is not None and node.artifact is not None:
                    node.expires_at_ns = self._extended(node.expires_at_ns, additional_seconds * NS)
                    node.artifact.ttl = (node.artifact.ttl or 0) + additional_seconds

            await self.ns.update_node(node, extend)  # which moves the session out first
        return await self._describe(node)

    async def _rename(self, node: Node, filename: str) -> None:
        parts = grid.split_filename(filename)
        assert node.space is not None
        _, parent = await self.ns.place(node.space, parts[:-1])
        fresh = await self.ns.get(node.ino)
        await self.ns.rename(fresh, parent, parts[-1], replace=True)

    async def delete(self, artifact_id: str, *, session_id: str | None = None, user_id: str | None = None) -> bool:
        try:
            node = await self._node(artifact_id, session_id, user_id, write=True)
        except ArtifactNotFoundError:
            return False
        try:
            await self.ns.unlink(node, every_name=True)  # an artifact with hard links goes with all its names
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
        meta = rules.meta({**art.meta, **rules.meta(new_meta, self.ns.limits)}, self.ns.limits)
        parts = grid.split_filename(filename)
        copy = await self.ns.file_node(
            _unplaced(space), parts[-1], ttl=art.ttl, mime=art.mime,
            summary=art.summary if summary is None else rules.summary(summary), meta=meta,
        )
        copy.mode = node.mode
        key, size, sha256 = await self.ns.write_blob(copy, self.ns.read_chunks(node, _READ_CHUNK, verify=True))
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


async def _aiter(stream: AsyncIterable[bytes] | Iterable[bytes]) -> AsyncIterator[bytes]:
    if hasattr(stream, "__aiter__"):
        async for chunk in stream:  # type: ignore[union-attr]
            yield chunk
    elif hasattr(stream, "__iter__") and not isinstance(stream, (bytes, bytearray, str)):
        for chunk in stream:  # type: ignore[union-attr]
            yield chunk
    else:
        raise InvalidArgumentError("data_stream must be an (async) iterable of bytes")


def _codec(encoding: Any) -> str:
    """A text encoding Python knows; a bad name (not a string, with NUL, unknown) is the caller's error."""
    try:
        name = codecs.lookup(encoding).name
        "".encode(name)  # rot13, base64: codecs, but not between text and bytes
    except (LookupError, TypeError, ValueError):
        raise InvalidArgumentError(f"unknown text encoding {shown(encoding)}") from None
    return name


def _encoded(text: str, encoding: Any) -> bytes:
    try:
        return text.encode(_codec(encoding))
    except UnicodeEncodeError as exc:  # a character the encoding has not, or a lone surrogate
        raise InvalidArgumentError(f"the content cannot be written as {encoding}: {exc.reason} at {exc.start}") from None


def _first_error(exc: BaseException) -> BaseException:
    """The first real error inside an exception group from a task group."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
