"""A file's content: its blobs, its versions, and reads that check what they return.

The one door to the blob store. A new version is written under a fresh key
first, one conditional metadata commit makes it visible, and only then does
the blob it superseded go; a blob whose commit fails goes instead, so nothing
half done is ever visible or left behind. Whole reads are checked against the
size and SHA-256 the record names.

No blob is deleted here at once (issue #16). A blob that stops being named
is queued in the metadata store's deletion queue for ``Limits.blob_grace``
seconds, so a reader that opened it, or a host that has not yet seen the
new version, still reads it whole; :meth:`Content.collect_garbage` deletes
it when due, and only if no record names it then. Before any upload begins
its key (and the blob it means to supersede) is queued too, as an intent
due ``Limits.upload_intent_ttl`` later, which the commit turns into the
usual grace: a writer that dies between upload and commit leaves a queued
key, never an unnamed blob nobody knows of.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Callable, Collection
from pathlib import Path
from typing import Any

import anyio

from core.backends.blobs.base import BlobReader, BlobWriter, FileUpload, NativePresign
from core.backends.meta.base import Deferred, Settle
from core.errors import (
    ArtifactCorruptedError,
    ArtifactNotFoundError,
    ArtifactTooLargeError,
    InvalidArgumentError,
    ProviderError,
    StaleRecordError,
)
from core.infra import metrics
from core.nodes import Node
from core.tree.base import EMPTY_SHA256, MAX_COMMIT_RACES, NS, Change, TreeBase, adopt, refuse_frozen
from core.tree.blockmap import sidecar_base, sidecar_key
from core.tree.grid import parse_grid_key

_GC_BATCH = 500  # queued keys gc looks at per round trip
_MAP_READ = 1 << 20


class Content(TreeBase):
    """Blobs and versions of file nodes."""

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
        await self.intend_blob(node, key)
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
        await self.intend_blob(node, key)
        await self.blobs.put(key, data, durable=durable)
        return key, len(data), hashlib.sha256(data).hexdigest()

    async def put_spool(self, node: Node, path: Path, size: int, sha256: str, *, durable: bool = True) -> str | None:
        """Publish a finished local spool file as the next blob of ``node``."""
        assert node.artifact is not None
        if size == 0:
            path.unlink(missing_ok=True)
            return None
        key = self.blob_key_for(node, node.artifact.version + 1)
        await self.intend_blob(node, key)
        await self.blobs.put_file(key, path, durable=durable)
        return key

    async def sync_blobs(self) -> None:
        """Make every blob published with ``durable=False`` durable, and every metadata commit so far
        (the mount's fsync and periodic sync: a record is durable only once its commit is synced)."""
        await self.blobs.sync()
        await self.meta.sync()

    async def sync_meta(self) -> None:
        """Make every metadata commit so far durable: what ``store()`` has written when it returns."""
        await self.meta.sync()

    def set_content(self, node: Node, key: str | None, size: int, sha256: str) -> Node:
        """Point ``node`` at a new version (in memory; :meth:`commit` stores it)."""
        assert node.artifact is not None
        if size > self.limits.max_artifact_bytes:
            raise ArtifactTooLargeError(f"artifact exceeds the size limit of {self.limits.max_artifact_bytes} bytes")
        now = self.now()
        node.artifact.blob_key, node.artifact.sha256 = key, sha256
        node.artifact.blob_of, node.artifact.charged = None, True  # its own blob now, which it alone holds
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
        refuse_frozen(node)
        # Commits of one file in this process take turns, so they never meet in the store; writers in
        # other processes meet in its conditional commit (meta.commit), and the later one goes again.
        lock = self._commit_locks.get(node.ino)
        if lock is None:  # fast_acquire: an uncontended commit goes in without a trip through the scheduler
            lock = self._commit_locks[node.ino] = anyio.Lock(fast_acquire=True)
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
        queued = {old_blob}  # intend_blob queued the blob the caller read
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
            fresh.blob_of, fresh.charged = art.blob_of, art.charged  # whose blob it is, and who pays for it
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
            for _ in range(MAX_COMMIT_RACES):
                await self._intend_superseding(superseded, queued)
                settle = self._settlement(art.blob_key, superseded - {art.blob_key})
                current = await self.meta.commit(attempt, base_version=base, settle=settle)
                if current is None:
                    break
                base = rebase(current)
            else:
                raise ProviderError(f"{node.name!r}: other versions kept coming, {MAX_COMMIT_RACES} times")
        except ArtifactNotFoundError:
            self._intents.pop(art.blob_key or "", None)
            if art.blob_key in superseded:  # a retry met this blob stored (a reply lost): it was named once
                await self.discard_blob(art.blob_key)
            else:
                await self.drop_unnamed_blob(art.blob_key)
            raise ArtifactNotFoundError(f"{node.name!r} was removed while being written") from None
        except StaleRecordError:
            self._intents.pop(art.blob_key or "", None)
            if art.blob_key not in superseded:
                await self.drop_unnamed_blob(art.blob_key)
            raise
        except BaseException:
            # Perhaps stored after all (a reply lost on its way back): gc decides, from the records.
            self._intents.pop(art.blob_key or "", None)
            if art.blob_key not in superseded:
                await self.discard_blob(art.blob_key)
            raise
        self._intents.pop(art.blob_key or "", None)  # met, in the commit's own step
        metrics.stored(node.size, new=False)
        adopt(node, attempt)
        return node

    async def discard_blob(self, key: str | None) -> None:
        """Queue a blob no record names any more (superseded, removed, or never published) for gc.

        It is deleted once the grace period is over and no record names it
        then: a reader holding it finishes, and a commit that was answered
        with an error but went through (a lost reply) loses nothing.
        """
        if key is not None:
            self._intents.pop(key, None)
            await self.meta.defer_delete([key], self.grace_deadline())

    async def settle_blobs(self, stored: str | None, gone: Collection[str | None]) -> None:
        """After a change that stored a record naming ``stored`` and stopped naming ``gone``: one call.

        The intent of ``stored`` is met (unless another writer has queued
        the key since: then it stays queued); the blobs of ``gone`` wait out
        the grace period.
        """
        settle = self._settlement(stored, gone)
        self._intents.pop(stored or "", None)
        if settle is not None:
            await self.meta.defer_delete(settle.keys, settle.not_before_ns, forget=settle.forget)

    def _settlement(self, stored: str | None, gone: Collection[str | None]) -> Settle | None:
        """The queue changes of :meth:`settle_blobs`, for a commit to make in its own step (None: none)."""
        due = self._intents.get(stored) if stored is not None else None
        met = [Deferred(stored, due)] if stored is not None and due is not None else []
        superseded = {key for key in gone if key is not None and key != stored}
        return Settle(superseded, self.grace_deadline(), met) if superseded or met else None

    async def queue_orphans(
        self, *, dry_run: bool = False, progress: Callable[[int, int | None], None] | None = None
    ) -> int:
        """Queue for gc every blob that no record names and no queue entry holds; returns how many.

        None should exist (every blob is queued before its upload, and before
        it stops being named), but a store written before that rule, or a
        backend edited by hand, may have some. They are queued, not deleted:
        gc deletes them after the grace period if still unnamed then, so a
        blob that a racing writer is about to name loses nothing. Parts of
        open presigned uploads (``/up-`` keys) are the upload registry's.
        A block map (``<key>.blocks``) lives and goes with its blob: it is an
        orphan only once its blob is neither named nor queued.
        """
        queued = set(await self.meta.pending_deletions())
        found: list[str] = []
        listed = 0
        async for key in self.blobs.keys():
            listed += 1
            if progress is not None:
                progress(listed, None)
            if key in queued:
                continue
            base = sidecar_base(key)
            if base is not None:
                if base not in queued and not await self.blob_is_named(base):
                    found.append(key)
            elif "/up-" not in key and not await self.blob_is_named(key):
                found.append(key)
        if found and not dry_run:
            await self.meta.queue_if_absent(found, self.grace_deadline())
        return len(found)

    async def due_blobs(self) -> int:
        """How many queued blobs :meth:`collect_garbage` would delete now (a dry run)."""
        due = await self.meta.due_deletions(self.now(), 1_000_000)
        return sum([not await self.blob_is_named(key) for key, _ in due])

    async def collect_garbage(self, now_ns: int | None = None) -> int:
        """Delete the queued blobs that are due and that no record names; returns the blobs deleted.

        A key found still named (an intent whose commit came, a blob a
        commit meant to supersede but did not) only leaves the queue. A
        blob's block map goes with it where maps are made at all. A store
        that signs its own URLs (S3) never makes one, and each delete there
        is a request: a stray map there is left to the orphan sweep.
        """
        now = self.now() if now_ns is None else now_ns
        deleted = 0
        seen: set[Deferred] = set()
        while True:
            due = [entry for entry in await self.meta.due_deletions(now, _GC_BATCH) if entry not in seen]
            if not due:
                return deleted
            for key, _ in due:
                holders = await self.holders(key)
                if holders:
                    # A holder gone may have carried the blob's charge; a change that raced
                    # the new one is the next gc's to settle, so the key stays queued for it.
                    if not await self._charge_once(holders):
                        await self.meta.defer_delete([key], now + 1)
                    continue
                await self.blobs.delete(key)
                if self.native_presign is None and sidecar_base(key) is None:
                    await self.blobs.delete(sidecar_key(key))
                deleted += 1
            await self.meta.forget_deletions(due)
            seen.update(due)  # re-queued for the same time meanwhile: next gc's, not an endless loop

    async def blob_is_named(self, key: str) -> bool:
        """Whether a signed record names ``key`` (see :meth:`holders`)."""
        return bool(await self.holders(key))

    async def holders(self, key: str) -> list[Node]:
        """The files whose signed records name blob ``key``, found through the artifact id in the key.

        A version's blob is ``<grid key>.v<n>-<token>`` (an id may hold dots,
        so each cut at a dot is tried: one look-up for the usual id); an
        upload's part is ``<grid key>/up-...``. A key outside the grid is
        named by no record. Besides the artifact the key is of, checkpoints'
        copies and what was restored from them may hold it (their
        ``blob_of``: issue #10).
        """
        try:
            place = parse_grid_key(key)
        except InvalidArgumentError:
            return []
        stem = place.artifact_id or ""
        ids = [stem] if place.subpath else [stem[:i] for i, ch in enumerate(stem) if ch == "."]
        found: list[Node] = []
        for artifact_id in ids:
            node = await self.meta.find_artifact(artifact_id)
            if node is not None and node.artifact is not None and node.artifact.blob_key == key:
                found.append(node)
            # An upload's part may be a record's blob too (adopted at publish), and so shared.
            found += [n for n in await self.meta.sharers(artifact_id) if n.artifact and n.artifact.blob_key == key]
            if found:
                return found
        return found

    async def _charge_once(self, holders: list[Node]) -> bool:
        """Leave exactly one holder of a shared blob charged for it (quotas count a blob once).

        The one with the lowest inode number, unless one is charged already:
        every gc picks the same, so two at once cannot charge two holders.
        Each change is conditional on the record read; False when one lost
        its race (the caller keeps the key queued for the next gc).
        """
        charged = [h for h in holders if h.artifact is not None and h.artifact.charged]
        if len(charged) == 1:
            return True
        keeper = min(charged or holders, key=lambda h: h.ino)
        settled = True
        for holder in holders:
            want = holder.ino == keeper.ino
            if holder.artifact is None or holder.artifact.charged == want:
                continue
            changed = holder.model_copy(deep=True)
            changed.artifact.charged = want  # type: ignore[union-attr]
            try:
                await self.meta.update(changed)
            except (StaleRecordError, ArtifactNotFoundError):
                settled = False
        return settled

    async def hold_while_copied(self, keys: Collection[str]) -> None:
        """Keep ``keys`` from gc while records that will name them are being written (a checkpoint's
        copies, a restore's): queued for the upload-intent time, which the last copy comes well
        before, so a blob its source record gave up meanwhile is still there for the copy. Each
        key then leaves the queue at that time, when gc finds it named."""
        if keys:
            await self.meta.defer_delete(sorted(set(keys)), self.now() + self.limits.upload_intent_ttl * NS)

    async def drop_unnamed_blob(self, key: str | None) -> None:
        """Delete at once a blob no record ever named, so no reader can hold it.

        A commit the store refused: no grace period protects anybody. A
        queued intent stays; gc finds the key named by nobody and forgets it.
        """
        if key is not None:
            self._intents.pop(key, None)
            await self.blobs.delete(key)

    async def drop_part_blob(self, key: str | None) -> None:
        """Delete at once an upload part's blob that left its upload (superseded, aborted, expired).

        No reader can hold a part, so no grace period applies, unless a
        completion whose reply was lost made it a record's blob: then the
        record owns it and it stays.
        """
        if key is not None and not await self.blob_is_named(key):
            await self.drop_unnamed_blob(key)

    def grace_deadline(self) -> int:
        """When a blob that stops being named now may be deleted."""
        return self.now() + self.limits.blob_grace * 1_000_000_000

    async def intend_blob(self, node: Node, key: str) -> None:
        """Record, before its bytes go out, that ``key`` is being uploaded as ``node``'s next version.

        The blob it means to supersede is queued with it: if the writer dies
        after its commit but before it queues that blob, gc still finds it.
        Both are due only after ``upload_intent_ttl``; the commit moves them
        on (the new key forgotten, the old one to the grace period), and gc
        drops a key it finds still named.
        """
        assert node.artifact is not None
        keys = [key] if node.artifact.blob_key is None else [key, node.artifact.blob_key]
        due = self.now() + self.limits.upload_intent_ttl * 1_000_000_000
        await self.meta.defer_delete(keys, due)
        self._intents[key] = due

    async def _intend_superseding(self, superseded: set[str | None], queued: set[str | None]) -> None:
        """Before a commit retried on another writer's version: queue that version's blob as an intent too."""
        fresh = {key for key in superseded - queued if key is not None}
        if fresh:
            await self.meta.defer_delete(fresh, self.now() + self.limits.upload_intent_ttl * 1_000_000_000)
            queued |= fresh

    async def blob_writer(self, key: str) -> BlobWriter:
        """A writer for a new blob under ``key`` (an upload's part): nothing names it until a commit does."""
        return await self.blobs.writer(key)

    async def blob_reader(self, key: str, size: int | None = None) -> BlobReader:
        """Raw ranged reads of one blob; whoever reads it whole checks it (see :meth:`read_chunks`)."""
        return await self.blobs.reader(key, size=size)

    async def read_block_map(self, blob_key: str, limit: int) -> bytes | None:
        """The stored block map of ``blob_key`` (:mod:`core.tree.blockmap`), None when there is none.

        At most ``limit + 1`` bytes are read: a map longer than a good one
        is refused by its reader anyway, and a huge one must not fill memory.
        """
        try:
            reader = await self.blobs.reader(sidecar_key(blob_key))
        except ArtifactNotFoundError:
            return None
        try:
            data = bytearray()
            while len(data) <= limit:
                chunk = await reader.read(len(data), min(_MAP_READ, limit + 1 - len(data)))
                if not chunk:
                    break
                data += chunk
            return bytes(data)
        except ArtifactNotFoundError:
            return None
        finally:
            with anyio.CancelScope(shield=True):
                await reader.close()

    async def write_block_map(self, blob_key: str, data: bytes) -> None:
        """Store a block map beside its blob: one atomic put, so a reader sees all of it or the one before."""
        await self.blobs.put(sidecar_key(blob_key), data)

    def file_upload(self, node: Node) -> FileUpload | None:
        """A part-by-part upload of ``node``'s next version, if the backend takes one (S3 multipart)."""
        assert node.artifact is not None
        return self.blobs.file_upload(self.blob_key_for(node, node.artifact.version + 1))

    @property
    def native_presign(self) -> NativePresign | None:
        """The blob store's own URL signing, when its endpoint honours signed URLs (S3)."""
        return self.blobs if isinstance(self.blobs, NativePresign) else None

    def blob_key_for(self, node: Node, version: int) -> str:
        # "<grid key>.v<n>-<token>", a sibling of other artifacts' blobs, not "<grid key>/v<n>-...":
        # the filesystem backend then needs no new directory per artifact, and concurrent
        # stores of a scope share one directory fsync (measured: 2x the stores/s).
        return f"{self.grid_key(node)}.v{version}-{secrets.token_hex(4)}"
