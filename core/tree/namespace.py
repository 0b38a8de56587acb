"""The tree of artifacts: every change to nodes and blobs goes through here.

Both faces of the store stand on this layer: :class:`core.api.store.ArtifactStore`
(artifact ids, the reference API) and the mount (inodes). It keeps the layout
of DESIGN §2, hides expired nodes, enforces size limits and quotas, and
keeps blobs and metadata in step: a blob is written under a fresh key first,
the metadata commit makes it visible, and only then is the old blob removed.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import anyio

from core.backends.blobs.base import BlobReader, BlobStore, BlobWriter, FileUpload, NativePresign
from core.backends.meta.base import Cover, MetaStore
from core.errors import (
    AlreadyExistsError,
    ArtifactCorruptedError,
    ArtifactExpiredError,
    ArtifactNotFoundError,
    ArtifactTooLargeError,
    CrossScopeError,
    DirectoryNotEmptyError,
    InvalidArgumentError,
    IsADirectoryError_,
    NotADirectoryError_,
    ProviderError,
    QuotaExceededError,
    ReadOnlyError,
    StaleRecordError,
)
from core.infra.clock import Clock
from core.models import Scope, Usage
from core.nodes import ROOT_INO, Artifact, Node, NodeKind, NodeRole, Space, new_node
from core.settings import Limits
from core.tree import grid

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
NS = 1_000_000_000
_MAX_COMMIT_RACES = 100  # commits of one file that each find another version came first
_MAX_RACES = 100  # conditional writes of one record that each find it changed meanwhile

Change = Callable[[Node], object]  # applies one change to a node record, as read or as re-read


def _adopt(node: Node, stored: Node) -> None:
    """Make the caller's ``node`` object the record as stored (callers keep using their object)."""
    if stored is not node:
        for field in Node.model_fields:
            setattr(node, field, getattr(stored, field))


def _filename(node: Node, known: Mapping[int, Node]) -> str:
    """``node``'s path below its scope root, from the records of its directories (``known``).

    The names of the entries above it, up to the first directory that is
    not an entry (the scope root); a directory missing from ``known`` (gone)
    ends the path there. Bounded by the records known, so even a cycle
    (which no rename makes) cannot hold it.
    """
    parts = [node.name]
    parent = known.get(node.parent)
    while parent is not None and parent.role is NodeRole.ENTRY and len(parts) <= len(known):
        parts.append(parent.name)
        parent = known.get(parent.parent)
    return "/".join(reversed(parts))


class _FixedInos(NamedTuple):
    """Inode numbers of one sandbox's fixed directories."""

    box: int
    sessions: int
    users: int
    shared: int


class Namespace:
    def __init__(self, meta: MetaStore, blobs: BlobStore, clock: Clock, limits: Limits) -> None:
        self.meta, self.blobs, self.clock, self.limits = meta, blobs, clock, limits
        self._commit_locks: dict[int, anyio.Lock] = {}
        self._fixed_inos: dict[str, _FixedInos] = {}

    def now(self) -> int:
        return self.clock.now_ns()

    # -- the backends behind this door: nothing else calls them

    async def open(self) -> None:
        await self.blobs.open()
        await self.meta.open()

    async def close(self) -> None:
        await self.meta.close()
        await self.blobs.close()

    async def check_blobs(self) -> None:
        """Raise the backend's error if the blob store does not answer."""
        await self.blobs.check()

    async def check_meta(self) -> None:
        """Raise the backend's error if the metadata store does not answer."""
        await self.meta.get(ROOT_INO)

    async def totals(self) -> Usage:
        return await self.meta.totals()

    # -- reading the tree

    def visible(self, node: Node | None) -> bool:
        return node is not None and not node.expired(self.now())

    async def get(self, ino: int) -> Node:
        node = await self.meta.get(ino)
        if not self.visible(node):
            raise ArtifactNotFoundError(f"inode {ino} does not exist")
        return node  # type: ignore[return-value]

    async def find(self, parent: Node, name: str) -> Node | None:
        node = await self.meta.lookup(parent.ino, name)
        return node if self.visible(node) else None

    async def child(self, parent: Node, name: str) -> Node:
        node = await self.find(parent, name)
        if node is None:
            raise ArtifactNotFoundError(f"{name!r} not found")
        return node

    async def entry(self, parent_ino: int, name: str) -> tuple[Node, Node | None]:
        """Directory ``parent_ino`` and its entry ``name`` (None if there is none), read together.

        One read where :meth:`get` then :meth:`find` would be two: a path
        walk's every step needs both the directory and the entry.
        """
        parent, node = await self.meta.entry(parent_ino, name)
        if not self.visible(parent):
            raise ArtifactNotFoundError(f"inode {parent_ino} does not exist")
        return parent, node if self.visible(node) else None  # type: ignore[return-value]

    async def list(self, parent: Node) -> list[Node]:
        now = self.now()
        return [n for n in await self.meta.children(parent.ino) if not n.expired(now)]

    async def lookup(self, parent_ino: int, name: str) -> Node | None:
        """The entry ``name`` of ``parent_ino`` as stored, expired or not: what a new entry there replaces."""
        return await self.meta.lookup(parent_ino, name)

    async def find_artifact(self, artifact_id: str) -> Node | None:
        """The record of ``artifact_id`` as stored, expired or not."""
        return await self.meta.find_artifact(artifact_id)

    async def search(
        self, sandbox_id: str, *, scope: Scope | None, session_id: str | None, user_id: str | None
    ) -> list[Node]:
        """File nodes of a sandbox matching the given space fields, expired or not (indexed)."""
        return await self.meta.search(sandbox_id, scope=scope, session_id=session_id, user_id=user_id)

    async def artifact_node(self, artifact_id: str) -> Node:
        grid.validate_id(artifact_id, "artifact id")
        node = await self.meta.find_artifact(artifact_id)
        if node is None:
            raise ArtifactNotFoundError(f"artifact {artifact_id} not found")
        if node.expired(self.now()):
            raise ArtifactExpiredError(f"artifact {artifact_id} has expired")
        return node

    async def filename_of(self, node: Node) -> str:
        """``node``'s path below its scope root (its artifact's filename), read in one round trip."""
        return (await self.filenames([node]))[0]

    async def filenames(self, nodes: Sequence[Node]) -> list[str]:
        """The paths of ``nodes`` below their scope roots, from one read of all their directories.

        Paths are never stored: they are made from the directories' records
        as they are now, so a directory renamed a moment ago shows its new
        name in every path below it. The records come in one read for all
        the nodes (issue #9: a search of 20 files once made 81 round trips).
        """
        known = await self.meta.lineage({node.parent for node in nodes}) if nodes else {}
        return [_filename(node, known) for node in nodes]

    async def files_below(self, root: Node) -> list[tuple[str, Node]]:
        """Every visible file below directory ``root``, with its path from ``root``, from one walk.

        What walking the tree with :meth:`list` a directory at a time finds
        (an expired node is left out, and an expired directory hides what
        is below it), without a round trip per directory: the backend walks
        the subtree (:meth:`MetaStore.subtree`), and the paths are made here
        from the records it answered.
        """
        now = self.now()
        children: dict[int, list[Node]] = {}
        for node in await self.meta.subtree(root.ino):
            children.setdefault(node.parent, []).append(node)
        found: list[tuple[str, Node]] = []
        walked = {root.ino}
        pending = [(root.ino, "")]
        while pending:
            ino, prefix = pending.pop()
            for child in children.get(ino, ()):
                if child.expired(now):
                    continue
                if child.is_dir and child.ino not in walked:
                    walked.add(child.ino)
                    pending.append((child.ino, f"{prefix}{child.name}/"))
                elif child.is_file:
                    found.append((prefix + child.name, child))
        return found

    # -- the fixed upper tree

    async def _fixed_dir(self, parent: Node, name: str, role: NodeRole, space: Space | None = None) -> Node:
        node = await self.meta.lookup(parent.ino, name)
        if node is not None and not node.expired(self.now()):
            return node
        fresh = new_node(parent=parent.ino, name=name, kind=NodeKind.DIR, mode=0o755, now_ns=self.now(), role=role, space=space)
        try:
            node, _ = await self.meta.insert(fresh)
        except AlreadyExistsError:
            node = await self.meta.lookup(parent.ino, name)  # a racing creator won
            if node is None:
                raise
        return node

    async def _fixed(self, sandbox_id: str) -> _FixedInos:
        """The inode numbers of a sandbox's fixed directories, made if missing.

        Nothing removes, renames or expires these directories (rmdir, rename
        and expiry refuse them), so their numbers are cached: a store then
        finds its scope in one metadata read instead of four.
        """
        fixed = self._fixed_inos.get(sandbox_id)
        if fixed is not None:
            return fixed
        grid.validate_id(sandbox_id, "sandbox id")
        root = await self.meta.get(ROOT_INO)
        assert root is not None
        box = await self._fixed_dir(root, sandbox_id, NodeRole.SANDBOX)
        sessions = await self._fixed_dir(box, grid.SESSIONS_DIR, NodeRole.SESSIONS)
        users = await self._fixed_dir(box, grid.USERS_DIR, NodeRole.USERS)
        shared = await self._fixed_dir(box, grid.SHARED_DIR, NodeRole.SCOPE_ROOT,
                                       Space(sandbox_id=sandbox_id, scope=Scope.SANDBOX))
        fixed = self._fixed_inos[sandbox_id] = _FixedInos(box.ino, sessions.ino, users.ino, shared.ino)
        return fixed

    async def sandbox(self, sandbox_id: str) -> Node:
        box = await self.meta.get((await self._fixed(sandbox_id)).box)
        assert box is not None
        return box

    async def scope_root(self, space: Space, *, create: bool = True, uid: int = 0, gid: int = 0) -> Node:
        """The directory of a session, a user, or the shared scope."""
        fixed = await self._fixed(space.sandbox_id)
        if space.scope is Scope.SANDBOX:
            return await self.get(fixed.shared)
        holder_ino = fixed.sessions if space.scope is Scope.SESSION else fixed.users
        name = space.session_id if space.scope is Scope.SESSION else space.user_id
        assert name is not None
        existing = await self.meta.lookup(holder_ino, name)
        if existing is not None and existing.expired(self.now()):
            await self.purge(existing)
            existing = None
        if existing is not None or not create:
            if existing is None:
                raise ArtifactNotFoundError(f"{space.scope.value} {name} does not exist")
            return existing
        node = new_node(
            parent=holder_ino, name=name, kind=NodeKind.DIR, mode=0o755, now_ns=self.now(),
            role=NodeRole.SCOPE_ROOT, space=space, uid=uid, gid=gid,
        )
        if space.scope is Scope.SESSION:
            node.expires_at_ns = self.now() + self.limits.session_ttl * NS
            node.session_meta = {"user_id": space.user_id, "custom_metadata": {}}
        try:
            node, _ = await self.meta.insert(node)
        except AlreadyExistsError:
            node = await self.meta.lookup(holder_ino, name)  # type: ignore[assignment]
            if node is None:
                raise
        return node

    async def walk(self, space: Space, names: Sequence[str]) -> list[Node]:
        """The scope root of ``space``, then the nodes along the path ``names`` below it, in one read.

        As stored: the list ends at the first name that is missing (an empty
        list: no scope root), and expired nodes are in it; whether they count
        is the caller's rule. A store at depth d reads its directories with
        this, not one lookup each (issue #9).
        """
        fixed = await self._fixed(space.sandbox_id)
        if space.scope is Scope.SANDBOX:
            holder, name = fixed.box, grid.SHARED_DIR
        else:
            holder = fixed.sessions if space.scope is Scope.SESSION else fixed.users
            name = space.session_id if space.scope is Scope.SESSION else space.user_id  # type: ignore[assignment]
        assert name is not None
        return await self.meta.resolve(holder, [name, *names])

    async def place(self, space: Space, dirs: Sequence[str]) -> tuple[Node, Node]:
        """The scope root of ``space`` and the directory ``dirs`` below it, each made if missing.

        ``mkdir -p`` from the scope root, with :meth:`scope_root`'s rules (a
        missing or expired scope is made anew); when the directories exist,
        the whole path costs one read, whatever its depth.
        """
        path = await self.walk(space, dirs)
        if path and self.visible(path[0]):
            return path[0], await self.mkdirs(path[0], list(dirs), known=path[1:])
        root = await self.scope_root(space)
        return root, await self.mkdirs(root, list(dirs))

    async def session_root(self, sandbox_id: str, session_id: str) -> Node | None:
        return await self.meta.lookup((await self._fixed(sandbox_id)).sessions, session_id)

    async def cover_session(self, space: Space, expires_at_ns: int | None) -> None:
        """Keep a session alive at least as long as the artifacts in it."""
        root = await self._session_cover(space)

        def cover(root: Node) -> None:
            if root.expires_at_ns is not None and (expires_at_ns is None or expires_at_ns > root.expires_at_ns):
                root.expires_at_ns = expires_at_ns

        if root is not None and (expires_at_ns is None or expires_at_ns > root.expires_at_ns):  # type: ignore[operator]
            await self.update_node(root, cover, ctime=False)

    async def _session_cover(
        self, space: Space, parent: Node | None = None, root: Node | None = None
    ) -> Node | None:
        """The root of ``space`` if it is a session's, which expires: what an artifact in it must not outlive.

        ``parent``, the directory a new node goes into as the caller read it, or ``root``, the
        scope root as the caller read it, saves reading the root again (the insert checks the
        root's expiry as it is then).
        """
        if space.scope is not Scope.SESSION:
            return None
        if root is not None and root.role is NodeRole.SCOPE_ROOT and root.space == space:
            pass
        elif parent is not None and parent.role is NodeRole.SCOPE_ROOT and parent.space == space:
            root = parent
        else:
            root = await self.scope_root(space)
        return root if root.expires_at_ns is not None else None

    async def _insert(self, node: Node, *, replace: bool = False, cover: Node | None = None) -> tuple[Node, Node | None]:
        """``meta.insert`` with the parent's new times and, if ``cover`` (a session root) expires
        before the node, that root's later expiry, in one transaction."""
        covering = None if cover is None else Cover(cover)
        try:
            return await self.meta.insert(node, replace=replace, touch_ns=self.now(), cover=covering)
        except AlreadyExistsError:
            if not await self._clear_expired(node.parent, node.name):
                raise
            return await self.meta.insert(node, replace=replace, touch_ns=self.now(), cover=covering)

    # -- expired entries in the way

    async def _clear_expired(self, parent_ino: int, name: str) -> bool:
        """Collect the entry ``name`` of ``parent_ino`` if it has expired; whether it is gone now.

        Expired entries are invisible but stay stored until collected; one that holds a
        name someone is making again is collected then, so it is gone for every operation.
        """
        old = await self.meta.lookup(parent_ino, name)
        if old is not None and old.expired(self.now()):
            await self.purge(old)
            return await self.meta.lookup(parent_ino, name) is None
        return False

    async def _clear_expired_children(self, directory: Node) -> bool:
        """Collect the entries of ``directory`` if every one has expired; whether any were."""
        children = await self.meta.children(directory.ino)
        now = self.now()
        if not children or not all(child.expired(now) for child in children):
            return False
        for child in children:
            await self.purge(child)
        return True

    # -- creating entries

    def entry_space(self, parent: Node, name: str) -> Space:
        """The space a new entry under ``parent`` belongs to, or why none may be made."""
        grid.validate_name(name)
        if parent.kind is not NodeKind.DIR:
            raise NotADirectoryError_(f"{parent.name!r} is not a directory")
        if parent.role not in (NodeRole.SCOPE_ROOT, NodeRole.ENTRY) or parent.space is None:
            raise ReadOnlyError(f"nothing but scope directories can be made in {parent.name or '/'!r}")
        return parent.space

    async def mkdir(
        self, parent: Node, name: str, mode: int = 0o755, uid: int = 0, gid: int = 0, *, session_user: str | None = None
    ) -> Node:
        """A directory; in ``sessions/`` a new session (of ``session_user``), in ``users/`` a user space."""
        if parent.role in (NodeRole.SESSIONS, NodeRole.USERS, NodeRole.ROOT):
            return await self._mkdir_fixed(parent, name, uid, gid, session_user)
        space = self.entry_space(parent, name)
        node = new_node(parent=parent.ino, name=name, kind=NodeKind.DIR, mode=mode & 0o7777, now_ns=self.now(),
                        space=space, uid=uid, gid=gid)
        node, _ = await self._insert(node)
        return node

    async def _mkdir_fixed(self, parent: Node, name: str, uid: int, gid: int, session_user: str | None) -> Node:
        if await self.find(parent, name) is not None:
            raise AlreadyExistsError(f"{name!r} exists")
        if parent.role is NodeRole.ROOT:
            return await self.sandbox(name)
        box = await self.get(parent.parent)
        kind = grid.validate_id(name, "session id" if parent.role is NodeRole.SESSIONS else "user id")
        if parent.role is NodeRole.SESSIONS:
            space = Space(sandbox_id=box.name, scope=Scope.SESSION, session_id=kind, user_id=session_user)
        else:
            space = Space(sandbox_id=box.name, scope=Scope.USER, user_id=kind)
        return await self.scope_root(space, uid=uid, gid=gid)

    async def mkdirs(
        self, root: Node, parts: list[str], uid: int = 0, gid: int = 0, *, known: Sequence[Node] | None = None
    ) -> Node:
        """``mkdir -p`` below a scope root; returns the last directory.

        ``known`` is what :meth:`walk` just read along ``parts`` (a part past
        its end was missing then): the directories in it are not read again.
        """
        node = root
        for at, part in enumerate(parts):
            if known is None:
                found = await self.find(node, part)
            else:
                found = known[at] if at < len(known) and self.visible(known[at]) else None
            if found is None:
                try:
                    found = await self.mkdir(node, part, 0o755, uid, gid)
                except AlreadyExistsError:
                    found = await self.find(node, part)  # made meanwhile by another writer
                    if found is None:
                        raise
            if not found.is_dir:
                raise NotADirectoryError_(f"{part!r} is a file, not a directory")
            node = found
        return node

    def default_ttl(self, scope: Scope) -> int | None:
        return self.limits.default_ttl if scope is Scope.SESSION else None

    def new_artifact_id(self) -> str:
        return secrets.token_hex(16)

    def grid_key(self, node: Node) -> str:
        assert node.space is not None and node.artifact is not None
        return grid.grid_key(node.space.sandbox_id, node.space.scope, node.space.owner, node.artifact.artifact_id)

    def blob_key_for(self, node: Node, version: int) -> str:
        # "<grid key>.v<n>-<token>", a sibling of other artifacts' blobs, not "<grid key>/v<n>-...":
        # the filesystem backend then needs no new directory per artifact, and concurrent
        # stores of a scope share one directory fsync (measured: 2x the stores/s).
        return f"{self.grid_key(node)}.v{version}-{secrets.token_hex(4)}"

    def file_node(
        self, parent: Node, name: str, *, mode: int = 0o644, uid: int = 0, gid: int = 0, ttl: int | None,
        artifact_id: str | None = None, mime: str = "application/octet-stream", summary: str = "",
        meta: dict[str, Any] | None = None,
    ) -> Node:
        """An empty file node, not yet stored."""
        space = self.entry_space(parent, name)
        node = new_node(parent=parent.ino, name=name, kind=NodeKind.FILE, mode=mode & 0o7777, now_ns=self.now(),
                        space=space, uid=uid, gid=gid)
        node.artifact = Artifact(
            artifact_id=artifact_id or self.new_artifact_id(), mime=mime, summary=summary,
            meta=meta or {}, sha256=EMPTY_SHA256, version=0, ttl=ttl,
        )
        node.expires_at_ns = None if ttl is None else self.now() + ttl * NS
        return node

    async def insert_file(
        self, node: Node, *, replace: bool, parent: Node | None = None, root: Node | None = None
    ) -> Node:
        """Store a file node (empty, or with a blob already written for it); ``parent`` is its
        directory and ``root`` its scope root, if the caller has just read them."""
        assert node.space is not None
        if self.has_quota(node.space.scope):
            old = await self.meta.lookup(node.parent, node.name) if replace else None
            replaced = old if old is not None and old.is_file else None  # a replaced file gives its room back
            await self.ensure_room(node.space, node.size - (replaced.size if replaced else 0), 0 if replaced else 1)
        cover = await self._session_cover(node.space, parent, root)
        node, old = await self._insert(node, replace=replace, cover=cover)
        if old is not None:
            await self.drop_blob(old)
        return node

    async def symlink(self, parent: Node, name: str, target: str, uid: int = 0, gid: int = 0) -> Node:
        space = self.entry_space(parent, name)
        if not target or "\0" in target or len(target.encode("utf-8", "surrogateescape")) > grid.MAX_PATH_BYTES:
            raise InvalidArgumentError("bad symlink target")
        node = new_node(parent=parent.ino, name=name, kind=NodeKind.SYMLINK, mode=0o777, now_ns=self.now(),
                        space=space, uid=uid, gid=gid)
        node.target = target
        node.size = len(target.encode("utf-8", "surrogateescape"))
        node, _ = await self._insert(node)
        return node

    # -- blobs of a file

    async def write_blob(
        self, node: Node, chunks: AsyncIterable[bytes], *, progress: Callable[[int], Any] | None = None
    ) -> tuple[str | None, int, str]:
        """Stream ``chunks`` into a new blob for ``node``; returns (key, size, sha256).

        The size limit is enforced while bytes arrive, so an oversized stream
        is cut off and discarded, never stored.
        """
        assert node.artifact is not None
        digest = hashlib.sha256()
        size = 0
        key = self.blob_key_for(node, node.artifact.version + 1)
        writer = await self.blobs.writer(key)
        try:
            async for chunk in chunks:
                if not isinstance(chunk, (bytes, bytearray, memoryview)):
                    raise InvalidArgumentError(f"stream yielded {type(chunk).__name__}, not bytes")
                if not chunk:
                    continue
                size += len(chunk)
                if size > self.limits.max_artifact_bytes:
                    raise ArtifactTooLargeError(
                        f"artifact exceeds the size limit of {self.limits.max_artifact_bytes} bytes"
                    )
                digest.update(chunk)
                await writer.write(bytes(chunk))
                if progress is not None:
                    progress(size)
            if size == 0:
                await writer.abort()
                return None, 0, EMPTY_SHA256
            await writer.commit()
        except BaseException:
            await writer.abort()
            raise
        return key, size, digest.hexdigest()

    async def read_chunks(self, node: Node, chunk_size: int, verify: bool) -> AsyncIterator[bytes]:
        """The bytes of ``node``'s current version, checked against its size and SHA-256 at the end.

        The library's one verified read: a blob replaced meanwhile (a newer
        version committed) is followed to the version that replaced it; a
        blob gone under a record that still names it is damage.
        """
        art = node.artifact
        assert art is not None
        if art.blob_key is None:
            if verify and art.sha256 != hashlib.sha256(b"").hexdigest():
                raise ArtifactCorruptedError(f"artifact {art.artifact_id} has lost its bytes")
            return
        digest = hashlib.sha256()
        try:
            # Given the size, a remote store makes no request before the first read: a missing blob shows there.
            reader = await self.blobs.reader(art.blob_key, size=node.size)
            try:
                chunk = await reader.read(0, min(chunk_size, node.size))
            except BaseException:
                await reader.close()
                raise
        except ArtifactNotFoundError:
            # Gone under a live record is damage, unless an update or delete just raced this read.
            fresh = await self.meta.get(node.ino)
            if fresh is None or fresh.artifact is None or fresh.artifact.artifact_id != art.artifact_id:
                raise ArtifactNotFoundError(f"artifact {art.artifact_id} was deleted") from None
            if fresh.artifact.blob_key == art.blob_key:
                raise ArtifactCorruptedError(f"artifact {art.artifact_id} has lost its bytes") from None
            async for chunk in self.read_chunks(fresh, chunk_size, verify):
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

    async def put_blob(self, node: Node, data: bytes, *, durable: bool = True) -> tuple[str | None, int, str]:
        """The one-shot form of :meth:`write_blob` for bytes already in memory.

        ``durable=False`` is the mount's close(): published atomically, made
        durable by the next :meth:`sync_blobs` (fsync, or the mount's timer).
        """
        assert node.artifact is not None
        if len(data) > self.limits.max_artifact_bytes:
            raise ArtifactTooLargeError(f"artifact exceeds the size limit of {self.limits.max_artifact_bytes} bytes")
        if not data:
            return None, 0, EMPTY_SHA256
        key = self.blob_key_for(node, node.artifact.version + 1)
        await self.blobs.put(key, data, durable=durable)
        return key, len(data), hashlib.sha256(data).hexdigest()

    async def put_spool(self, node: Node, path: Path, size: int, sha256: str, *, durable: bool = True) -> str | None:
        """Publish a finished local spool file as the next blob of ``node``."""
        assert node.artifact is not None
        if size == 0:
            path.unlink(missing_ok=True)
            return None
        key = self.blob_key_for(node, node.artifact.version + 1)
        await self.blobs.put_file(key, path, durable=durable)
        return key

    async def sync_blobs(self) -> None:
        """Make every blob published with ``durable=False`` durable."""
        await self.blobs.sync()

    def set_content(self, node: Node, key: str | None, size: int, sha256: str) -> Node:
        """Point ``node`` at a new version (in memory; :meth:`commit` stores it)."""
        assert node.artifact is not None
        if size > self.limits.max_artifact_bytes:
            raise ArtifactTooLargeError(f"artifact exceeds the size limit of {self.limits.max_artifact_bytes} bytes")
        now = self.now()
        node.artifact.blob_key, node.artifact.sha256 = key, sha256
        node.artifact.version += 1
        node.size = size
        node.mtime_ns = node.ctime_ns = now
        return node

    async def commit(
        self, node: Node, *, old_blob: str | None, change: Change | None = None, from_version: int | None = None
    ) -> Node:
        """Store a changed file node; on success the superseded blob goes.

        If the record changed since ``node`` was read (a rename, a chmod, a
        version from another host), the new content (and ``change``, the
        caller's other changes, if any) is applied to the record as it is
        then, never ``node``'s stale name or attributes. On return ``node``
        is the record as stored. If the commit fails, the new blob is
        deleted instead, so nothing half done stays visible or leaks.

        ``from_version``: the new content was made from that version's bytes
        (a truncate cuts the version it read), so it may replace that version
        only. If another version is stored (committed meanwhile by another
        host), nothing is stored, the new blob goes, and
        :class:`StaleRecordError` says so: the caller makes its content again
        of the version stored now. Publishing it over that version instead,
        as the last-commit-wins rebase would, undoes the other host's write
        (issue #16). A rename or chmod meanwhile is no conflict: the content
        it was made from is still the file's.
        """
        assert node.space is not None and node.artifact is not None
        # Commits of one file in this process take turns, so they never meet in the store; writers in
        # other processes meet in its conditional commit (meta.commit), and the later one goes again.
        lock = self._commit_locks.setdefault(node.ino, anyio.Lock())
        try:
            async with lock:
                return await self._commit(node, old_blob, change, from_version)
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._commit_locks.pop(node.ino, None)

    async def _commit(
        self, node: Node, old_blob: str | None, change: Change | None, from_version: int | None
    ) -> Node:
        """One conditional write when the record did not change meanwhile (the usual case).

        If another writer committed since this version began, the last commit
        wins: its version number must still go up past the one it replaces,
        and the blob that one published is superseded too. Unless the content
        was made from ``from_version``: then another version means a conflict.
        """
        assert node.space is not None and node.artifact is not None
        art = node.artifact
        base = art.version - 1  # set_content moved the version one past the one it began from
        superseded = {old_blob}
        attempt = node

        def refuse(current: Node | None, version: int) -> StaleRecordError:
            return StaleRecordError(
                f"{node.name!r}: made from version {from_version}, but version {version} is stored", current
            )

        def rebase(current: Node) -> int:
            """Next try: this content (and ``change``) on ``current``, the record as stored now."""
            nonlocal attempt
            assert current.artifact is not None
            if from_version is not None and current.artifact.version != from_version:
                raise refuse(current, current.artifact.version)
            superseded.add(current.artifact.blob_key)
            art.version = max(art.version, current.artifact.version + 1)
            attempt = current.model_copy(deep=True)
            if change is not None:
                change(attempt)
            fresh = attempt.artifact
            assert fresh is not None
            fresh.blob_key, fresh.sha256, fresh.version = art.blob_key, art.sha256, art.version
            attempt.size, attempt.mtime_ns, attempt.ctime_ns = node.size, node.mtime_ns, node.ctime_ns
            return current.artifact.version

        try:
            if from_version is not None and base != from_version:  # node was read after another version came
                raise refuse(None, base)
            if self.has_quota(node.space.scope):  # the room it takes is measured against what it replaces
                current = await self.meta.get(node.ino)
                if current is None:
                    raise ArtifactNotFoundError(f"inode {node.ino} was removed")
                base = rebase(current)
                await self.ensure_room(node.space, node.size - current.size, 0)
            for _ in range(_MAX_COMMIT_RACES):
                current = await self.meta.commit(attempt, base_version=base)
                if current is None:
                    break
                base = rebase(current)
            else:
                raise ProviderError(f"{node.name!r}: other versions kept coming, {_MAX_COMMIT_RACES} times")
        except ArtifactNotFoundError:
            await self.discard_blob(art.blob_key)
            raise ArtifactNotFoundError(f"{node.name!r} was removed while being written") from None
        except BaseException:
            if art.blob_key not in superseded:
                await self.discard_blob(art.blob_key)
            raise
        for key in superseded - {art.blob_key, None}:
            await self.discard_blob(key)
        _adopt(node, attempt)
        return node

    async def update_node(self, node: Node, change: Change, *, ctime: bool = True) -> Node:
        """Apply ``change`` (mode, times, metadata fields) to ``node`` and store it; returns ``node``.

        The write is conditional on the record ``node`` was read as: if it
        changed meanwhile (a new version, a rename, another attribute), the
        change is applied again to the record as it is then, never written
        over it. An entry whose expiry the change moves out first moves its
        session out (an artifact never outlives its session). ``ctime``: the
        change sets the node's ctime.
        """
        for _ in range(_MAX_RACES):
            expires = node.expires_at_ns
            change(node)
            if ctime:
                node.ctime_ns = self.now()
            if node.expires_at_ns != expires and node.role is NodeRole.ENTRY and node.space is not None:
                await self.cover_session(node.space, node.expires_at_ns)
            try:
                await self.meta.update(node)
                return node
            except StaleRecordError as exc:
                current = exc.current if isinstance(exc.current, Node) else await self.meta.get(node.ino)
                if current is None:
                    raise ArtifactNotFoundError(f"{node.name!r} was removed") from None
                _adopt(node, current)
        raise ProviderError(f"{node.name!r}: the record kept changing, {_MAX_RACES} times")

    async def drop_blob(self, node: Node) -> None:
        if node.artifact is not None:
            await self.discard_blob(node.artifact.blob_key)

    async def discard_blob(self, key: str | None) -> None:
        """Delete a blob no record names any more (superseded, removed, or never published)."""
        if key is not None:
            await self.blobs.delete(key)

    async def blob_writer(self, key: str) -> BlobWriter:
        """A writer for a new blob under ``key`` (an upload's part): nothing names it until a commit does."""
        return await self.blobs.writer(key)

    async def blob_reader(self, key: str, size: int | None = None) -> BlobReader:
        """Raw ranged reads of one blob; whoever reads it whole checks it (see :meth:`read_chunks`)."""
        return await self.blobs.reader(key, size=size)

    def file_upload(self, node: Node) -> FileUpload | None:
        """A part-by-part upload of ``node``'s next version, if the backend takes one (S3 multipart)."""
        assert node.artifact is not None
        return self.blobs.file_upload(self.blob_key_for(node, node.artifact.version + 1))

    @property
    def native_presign(self) -> NativePresign | None:
        """The blob store's own URL signing, when its endpoint honours signed URLs (S3)."""
        return self.blobs if isinstance(self.blobs, NativePresign) else None

    # -- quotas

    async def _usage(self, space: Space):
        return await self.meta.usage(space.usage_key)

    async def ensure_room(self, space: Space, add_bytes: int, add_files: int) -> None:
        """Raise QuotaExceededError unless ``space`` can take this much more.

        Expired artifacts are charged until collected; when they stand in the
        way they are collected first, so an invisible file never holds a quota.
        """
        if not self.has_quota(space.scope):
            return  # nothing to check: save the usage read (two per store)
        try:
            self.check_quota(space, await self._usage(space), add_bytes, add_files)
        except QuotaExceededError:
            if not await self.collect_expired():
                raise
            self.check_quota(space, await self._usage(space), add_bytes, add_files)

    def has_quota(self, scope: Scope) -> bool:
        """Whether a quota applies to ``scope``: if not, no write needs to read what it replaces."""
        limits = self.limits
        if scope is Scope.SESSION:
            return limits.session_quota_bytes is not None or limits.session_quota_files is not None
        if scope is Scope.USER:
            return limits.user_quota_bytes is not None or limits.user_quota_files is not None
        return False

    def check_quota(self, space: Space, usage, add_bytes: int, add_files: int) -> None:
        if space.scope is Scope.SESSION:
            max_bytes, max_files, who = self.limits.session_quota_bytes, self.limits.session_quota_files, "session"
        elif space.scope is Scope.USER:
            max_bytes, max_files, who = self.limits.user_quota_bytes, self.limits.user_quota_files, "user"
        else:
            return
        if max_bytes is not None and add_bytes > 0 and usage.bytes + add_bytes > max_bytes:
            raise QuotaExceededError(f"{who} {space.owner} would use {usage.bytes + add_bytes} of {max_bytes} bytes")
        if max_files is not None and add_files > 0 and usage.files + add_files > max_files:
            raise QuotaExceededError(f"{who} {space.owner} would hold {usage.files + add_files} of {max_files} files")

    async def headroom(self, space: Space) -> tuple[Usage, int | None, int | None]:
        """What ``space`` uses, and the bytes and files its quota still allows (None: no quota)."""
        usage = await self._usage(space)
        if space.scope is Scope.SESSION:
            max_bytes, max_files = self.limits.session_quota_bytes, self.limits.session_quota_files
        elif space.scope is Scope.USER:
            max_bytes, max_files = self.limits.user_quota_bytes, self.limits.user_quota_files
        else:
            return usage, None, None
        return (
            usage,
            None if max_bytes is None else max(0, max_bytes - usage.bytes),
            None if max_files is None else max(0, max_files - usage.files),
        )

    # -- removing and moving

    async def unlink(self, node: Node) -> None:
        if node.is_dir:
            raise IsADirectoryError_(f"{node.name!r} is a directory")
        if node.role is not NodeRole.ENTRY:
            raise ReadOnlyError(f"{node.name!r} cannot be removed")
        removed = await self.meta.remove(node, touch_ns=self.now())
        if removed is None:
            raise ArtifactNotFoundError(f"{node.name!r} was removed or moved meanwhile")
        await self.drop_blob(removed)  # the version removed, which may be newer than the one read

    async def rmdir(self, node: Node) -> None:
        if not node.is_dir:
            raise NotADirectoryError_(f"{node.name!r} is not a directory")
        if node.role not in (NodeRole.ENTRY, NodeRole.SCOPE_ROOT) or (
            node.space is not None and node.space.scope is Scope.SANDBOX and node.role is NodeRole.SCOPE_ROOT
        ):
            raise ReadOnlyError(f"{node.name!r} cannot be removed")
        try:
            removed = await self.meta.remove(node, touch_ns=self.now())
        except DirectoryNotEmptyError:
            if not await self._clear_expired_children(node):
                raise
            removed = await self.meta.remove(node, touch_ns=self.now())
        if removed is None:
            raise ArtifactNotFoundError(f"{node.name!r} was removed or moved meanwhile")

    async def rename(
        self, node: Node, new_parent: Node, new_name: str, *, replace: bool = True,
        replacing: Callable[[Node], Awaitable[object]] | None = None,
    ) -> Node | None:
        """Move ``node``; returns the node it replaced, if any.

        ``replacing`` is called with that node after the move and before its
        blob goes: an open descriptor of it may still copy its bytes.
        """
        if node.role is not NodeRole.ENTRY:
            raise ReadOnlyError(f"{node.name!r} cannot be renamed")
        space = self.entry_space(new_parent, new_name)
        if node.space is None or space.usage_key != node.space.usage_key:
            raise CrossScopeError("rename across scopes")
        if node.is_dir and new_parent.ino != node.parent:  # within its own directory it cannot go below itself
            await self._refuse_own_subtree(node, new_parent)
        now = self.now()
        moved = node.model_copy(update={"ctime_ns": now})
        cleared = False
        for _ in range(_MAX_RACES):
            try:
                replaced = await self.meta.rename(moved, new_parent.ino, new_name, replace=replace, touch_ns=now)
                break
            except (AlreadyExistsError, DirectoryNotEmptyError) as exc:
                # The target may be an expired entry, or a directory of nothing but expired entries.
                if cleared or not await self._clear_expired_target(new_parent, new_name, exc):
                    raise
                cleared = True
            except StaleRecordError as exc:
                # Changed since read: move it as it is now (a new version, a chmod must survive),
                # unless it left the name the caller gave; then that name is gone, as POSIX says.
                current = exc.current if isinstance(exc.current, Node) else await self.meta.get(node.ino)
                if current is None or (current.parent, current.name) != (node.parent, node.name):
                    raise ArtifactNotFoundError(f"{node.name!r} was moved or removed meanwhile") from None
                moved = current.model_copy(update={"ctime_ns": now})
        else:
            raise ProviderError(f"{node.name!r}: the record kept changing, {_MAX_RACES} times")
        _adopt(node, moved)
        if replaced is not None:
            try:
                if replacing is not None:
                    await replacing(replaced)
            finally:
                await self.drop_blob(replaced)
        return replaced

    async def _clear_expired_target(self, parent: Node, name: str, refusal: Exception) -> bool:
        if isinstance(refusal, AlreadyExistsError):
            return await self._clear_expired(parent.ino, name)
        target = await self.meta.lookup(parent.ino, name)
        return target is not None and await self._clear_expired_children(target)

    async def exchange(self, a: Node, b: Node) -> None:
        if a.role is not NodeRole.ENTRY or b.role is not NodeRole.ENTRY:
            raise ReadOnlyError("only entries below a scope can be exchanged")
        if a.space is None or b.space is None or a.space.usage_key != b.space.usage_key:
            raise CrossScopeError("exchange across scopes")
        if a.is_dir:
            await self._refuse_own_subtree(a, await self.get(b.parent))
        if b.is_dir:
            await self._refuse_own_subtree(b, await self.get(a.parent))
        for _ in range(_MAX_RACES):
            try:
                # both directories change, as a rename changes its two
                await self.meta.exchange(a, b, touch_ns=self.now())
                return
            except StaleRecordError:
                # Exchange them as they are now, if each is still the entry the caller named.
                for node in (a, b):
                    current = await self.meta.get(node.ino)
                    if current is None or (current.parent, current.name) != (node.parent, node.name):
                        raise ArtifactNotFoundError(f"{node.name!r} was moved or removed meanwhile") from None
                    _adopt(node, current)
        raise ProviderError(f"exchange of {a.name!r}: the records kept changing, {_MAX_RACES} times")

    async def _refuse_own_subtree(self, node: Node, new_parent: Node) -> None:
        cursor: Node | None = new_parent
        while cursor is not None and cursor.role is NodeRole.ENTRY:
            if cursor.ino == node.ino:
                raise InvalidArgumentError("cannot move a directory into itself")
            cursor = await self.meta.get(cursor.parent)

    async def purge(self, node: Node) -> int:
        """Remove a whole subtree with its blobs; returns the files removed."""
        removed = 0
        if node.is_dir:
            for child in await self.meta.children(node.ino):
                removed += await self.purge(child)
        gone = await self.meta.remove(node)
        if gone is not None and gone.is_file:  # None: moved or removed meanwhile, not ours to purge
            await self.drop_blob(gone)
            removed += 1
        return removed

    # -- expiry

    async def collect_expired(self) -> int:
        """Delete expired artifacts, sessions and their blobs; returns artifacts removed."""
        removed = 0
        while True:
            batch = await self.meta.expired(self.now())
            if not batch:
                return removed
            for node in batch:
                if await self.meta.get(node.ino) is not None:
                    removed += await self.purge(node)

