"""Bytes in and out through presigned URLs: the mechanics under the presign API.

:class:`Transfers` signs URLs, keeps open uploads (:mod:`core.backends.uploads.base`),
takes in the bytes a PUT carries, publishes finished uploads as artifacts and
hands the HTTP service what it needs to answer a GET. It knows nothing of
who is asking: access rules are checked by the API (:mod:`core.api.presign`)
when a URL is issued, and a URL then grants exactly what it was signed for.

It stands on a :class:`~core.tree.namespace.Namespace` alone, so the mount can
build one for its own tree (:func:`core.config.build_transfers`) to
answer ``getfattr -n user.artifact.presign`` and to run the service in its
own process (``artifactfs mount --serve``).

On a backend that signs its own URLs (S3, a
:class:`~core.transfers.urls.NativePresign`) every URL is the backend's and the
bytes never pass through here: :mod:`core.transfers.native` does that half,
behind the same methods, records and errors.

Publishing follows the namespace's rule: bytes first, under a fresh key, then
one metadata commit makes them visible. A one-part upload is published by
adopting the part's blob (no copy); several parts are streamed into a new
blob, each part checked against its SHA-256 on the way.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from contextlib import aclosing
from typing import Any

import anyio
import anyio.to_thread
from anyio.streams.memory import MemoryObjectSendStream
from pydantic import BaseModel

from core.backends.uploads.base import (
    PartRecord,
    Publish,
    UploadKind,
    UploadRecord,
    UploadRegistry,
    UploadState,
    choose_parts,
    newest_parts,
)
from core.errors import (
    ArtifactCorruptedError,
    ArtifactNotFoundError,
    ArtifactStoreError,
    ArtifactTooLargeError,
    InvalidArgumentError,
    UploadConflictError,
    UploadNotFoundError,
)
from core.infra.signing import RecordSigner
from core.nodes import Node, Space
from core.settings import PresignSettings
from core.transfers.native import NativeUploads
from core.transfers.urls import MAX_PARTS, Target, TargetKind, UrlSigner, check_expires, derive_key
from core.tree import grid
from core.tree.blockmap import BlockMaps
from core.tree.namespace import NS, Namespace

log = logging.getLogger("artifactfs.transfers")

CHUNK = 1 << 20
JOIN_CHUNK = 4 << 20
MAX_PART_BYTES = 5 << 30  # as on S3
STALE_COMPLETION_S = 3600  # a completion older than this died with its process
LEFTOVER_AGE_S = 3600
DEFAULT_URL_SECONDS = 3600  # presign_medium, and the mount's user.artifact.presign


class Download(BaseModel):
    """One artifact version, as the service streams it."""

    artifact_id: str
    blob_key: str | None
    size: int
    sha256: str
    mime: str
    name: str
    mtime_ns: int

    @property
    def etag(self) -> str:
        return f'"{self.sha256}"'

    async def pump(
        self, ns: Namespace, maps: BlockMaps, start: int, end: int, out: MemoryObjectSendStream[bytes]
    ) -> None:
        """Send bytes ``[start, end)`` into ``out``, checked: the whole file against its SHA-256, a range
        block by block against the blob's block map (:mod:`core.tree.blockmap`).

        A client of a corrupted artifact never receives a complete body: the
        whole file's check comes before its last chunk is handed over, and a
        range's blocks are each checked before any of their bytes.
        """
        async with out:
            if self.blob_key is None or end <= start:
                self._check(hashlib.sha256() if (start, end) == (0, self.size) else None)
            elif (start, end) == (0, self.size):
                await self._pump_whole(ns, out)
            else:
                ranged = maps.read_range(self.artifact_id, self.blob_key, self.size, self.sha256, start, end)
                async with aclosing(ranged) as chunks:
                    async for chunk in chunks:
                        await out.send(chunk)

    async def _pump_whole(self, ns: Namespace, out: MemoryObjectSendStream[bytes]) -> None:
        """The whole blob, hashed on the way (no map needed).

        Reading and hashing run in worker threads while the caller sends the
        previous chunk, so the digest costs little wall time.
        """
        assert self.blob_key is not None
        digest = hashlib.sha256()
        reader = await ns.blob_reader(self.blob_key)
        try:
            offset = 0
            while offset < self.size:
                chunk = await reader.read(offset, min(CHUNK, self.size - offset))
                if not chunk:
                    raise ArtifactCorruptedError(f"artifact {self.artifact_id} is shorter than recorded")
                offset += len(chunk)
                await anyio.to_thread.run_sync(digest.update, chunk)
                if offset >= self.size:
                    self._check(digest)
                await out.send(chunk)
        finally:
            with anyio.CancelScope(shield=True):
                await reader.close()

    def _check(self, digest: Any) -> None:
        if digest is not None and digest.hexdigest() != self.sha256:
            raise ArtifactCorruptedError(f"artifact {self.artifact_id} fails its SHA-256 check")


def _sole(group: BaseExceptionGroup) -> BaseException:
    """The error a task group failed with, unwrapped when it is the only one."""
    while isinstance(group, BaseExceptionGroup) and len(group.exceptions) == 1:
        group = group.exceptions[0]
    return group


class Transfers:
    def __init__(self, ns: Namespace, settings: PresignSettings, signing_key: bytes, registry: UploadRegistry) -> None:
        self.ns, self.settings, self.registry = ns, settings, registry
        self.signer = UrlSigner(signing_key, settings.url)
        self.block_maps = BlockMaps(ns, RecordSigner(derive_key(signing_key, "block-map/v1")))
        # The backend's own URLs when it has them (S3); the service's otherwise.
        backend = ns.native_presign
        self.native = NativeUploads(ns, backend, registry, settings, self._file_node) if backend is not None else None

    @property
    def min_part_bytes(self) -> int:
        """The smallest part but the last a multipart upload accepts."""
        return self.native.min_part_bytes if self.native is not None else self.settings.min_part_bytes

    @property
    def base_url(self) -> str:
        return self.signer.base_url

    @base_url.setter
    def base_url(self, url: str) -> None:
        """Where clients reach the service; set by the runner once it has bound its port."""
        self.signer.base_url = url.rstrip("/")

    def _url_expiry(self, expires: int) -> int:
        return self.ns.now() // NS + check_expires(expires)

    # -- downloads

    async def url_for(self, node: Node) -> str:
        """``user.artifact.presign`` in the mount (``fusefs.xattrs.Presigner``): a GET URL for the default hour."""
        if node.artifact is None:
            raise InvalidArgumentError(f"{node.name!r} is not a file")
        return await self.node_url(node, DEFAULT_URL_SECONDS)

    async def download_url(self, artifact_id: str, expires: int) -> str:
        """A GET URL for an artifact; whoever calls this has checked access already."""
        if self.native is not None:
            return await self.node_url(await self.ns.artifact_node(artifact_id), expires)
        return self.signer.sign(Target(kind=TargetKind.OBJECT, ident=artifact_id), self._url_expiry(expires))

    async def node_url(self, node: Node, expires: int) -> str:
        """A GET URL for a file node already looked up (and access-checked) by the caller."""
        assert node.artifact is not None
        if self.native is not None:
            return await self.native.download_url(node, check_expires(expires))
        return self.signer.sign(Target(kind=TargetKind.OBJECT, ident=node.artifact.artifact_id), self._url_expiry(expires))

    async def download(self, artifact_id: str) -> Download:
        node = await self.ns.artifact_node(artifact_id)
        art = node.artifact
        assert art is not None
        return Download(
            artifact_id=artifact_id, blob_key=art.blob_key, size=node.size, sha256=art.sha256, mime=art.mime,
            name=node.name, mtime_ns=node.mtime_ns,
        )

    # -- opening uploads

    async def open_upload(
        self, *, kind: UploadKind, space: Space, filename: str | None, mime: str, summary: str, meta: dict[str, Any],
        ttl: int | None, max_bytes: int | None = None, publish_on_upload: bool = False, url_expires_at: int | None = None,
    ) -> UploadRecord:
        now = self.ns.now()
        if kind is UploadKind.SINGLE:
            assert url_expires_at is not None
            expires_at_ns = url_expires_at * NS + self.settings.register_grace * NS
        else:
            expires_at_ns = now + self.settings.multipart_window * NS
        artifact_id = await self.ns.new_artifact_id(space)
        # A single upload is addressed by its artifact id, as register_uploaded_artifact is.
        upload_id = artifact_id if kind is UploadKind.SINGLE else secrets.token_hex(16)
        prefix = grid.grid_key(space.sandbox_id, space.scope, space.owner, artifact_id)
        record = UploadRecord(
            upload_id=upload_id, kind=kind, artifact_id=artifact_id, space=space, filename=filename, mime=mime,
            summary=summary, meta=meta, ttl=ttl, publish_on_upload=publish_on_upload, max_bytes=max_bytes,
            blob_prefix=f"{prefix}/up-{upload_id}", created_at_ns=now, expires_at_ns=expires_at_ns,
            state_since_ns=now,
        )
        if self.native is not None:
            return await self.native.start(record)
        await self.registry.create(record)
        return record

    async def upload_url(self, record: UploadRecord, url_expires_at: int) -> str:
        """The PUT URL of a single upload (on S3: part 1 of its upload, the one part it has)."""
        if self.native is not None:
            return await self.native.part_url(record, 1, url_expires_at - self.ns.now() // NS)
        return self.signer.sign(Target(kind=TargetKind.UPLOAD, ident=record.upload_id), url_expires_at,
                                max_bytes=record.max_bytes)

    async def open_record(self, upload_id: str, kind: UploadKind) -> UploadRecord:
        """An upload that still accepts bytes."""
        grid.validate_id(upload_id, "upload id")
        record = await self.registry.get(upload_id)
        if record is None or record.kind is not kind:
            raise UploadNotFoundError(f"upload {upload_id} does not exist")
        if record.expires_at_ns <= self.ns.now():
            raise UploadNotFoundError(f"upload {upload_id} has expired")
        if record.state is not UploadState.OPEN:
            raise UploadConflictError(f"upload {upload_id} is being completed")
        return record

    async def part_url(self, upload_id: str, part_number: int, expires: int) -> str:
        if isinstance(part_number, bool) or not isinstance(part_number, int) or not 1 <= part_number <= MAX_PARTS:
            raise InvalidArgumentError(f"part_number must be 1 to {MAX_PARTS}, got {part_number!r:.40}")
        record = await self.open_record(upload_id, UploadKind.MULTIPART)
        if self.native is not None:
            return await self.native.part_url(record, part_number, check_expires(expires))
        target = Target(kind=TargetKind.PART, ident=record.upload_id, part_number=part_number)
        return self.signer.sign(target, self._url_expiry(expires), max_bytes=record.max_bytes)

    # -- receiving bytes (the service's PUT)

    async def receive(
        self, target: Target, body: AsyncIterable[bytes], *, content_length: int | None, url_max_bytes: int | None
    ) -> PartRecord:
        """Store the body of a PUT as a part of its upload; a single upload may publish at once."""
        kind = UploadKind.SINGLE if target.kind is TargetKind.UPLOAD else UploadKind.MULTIPART
        record = await self.open_record(target.ident, kind)
        if record.native_id is not None:  # its bytes go to the backend's own URLs, never through here
            raise UploadNotFoundError(f"upload {record.upload_id} takes its bytes at the backend's URLs")
        limits = [self.ns.limits.max_artifact_bytes, url_max_bytes, record.max_bytes]
        if kind is UploadKind.MULTIPART:
            limits.append(MAX_PART_BYTES)
        limit = min(n for n in limits if n is not None)
        if content_length is not None and content_length > limit:
            raise ArtifactTooLargeError(f"{content_length} bytes is more than the {limit} this upload accepts")
        number = target.part_number or 1
        staged = await self._staged_bytes(record, number)
        if content_length is not None:
            await self.ns.ensure_room(record.space, staged + content_length, 0)  # refused before a byte is stored
        token = secrets.token_hex(6)
        key = f"{record.blob_prefix}-{number:05d}-{token}"
        size, sha256 = await self._store_stream(key, body, limit)
        try:
            if content_length is not None and size != content_length:
                raise InvalidArgumentError(f"the body carried {size} bytes, Content-Length said {content_length}")
            # Staged bytes answer to the space's quota as the published ones will:
            # bytes that could never be registered are not kept at all.
            await self.ns.ensure_room(record.space, staged + size, 0)
        except BaseException:
            await self._delete(key if size else None)
            raise
        part = PartRecord(part_number=number, blob_key=key if size else None, size=size, sha256=sha256,
                          stored_at_ns=self.ns.now(), token=token)
        try:
            added = await self.registry.add_part(record.upload_id, part)
        except BaseException:
            await self._delete(part.blob_key)
            raise
        if not added:
            await self._delete(part.blob_key)
            raise UploadNotFoundError(f"upload {record.upload_id} was finished or aborted meanwhile")
        await self._drop_superseded(record.upload_id, part)
        if record.publish_on_upload:
            await self.complete(record.upload_id, None, Publish())
        return part

    async def _staged_bytes(self, record: UploadRecord, number: int) -> int:
        """Bytes other open uploads of this space (and this upload's other parts) keep staged.

        They count against the space's quota, so a space cannot park more
        unregistered bytes than it could publish. Only read when a quota
        applies: it visits every open upload.
        """
        if not self.ns.has_quota(record.space.scope):
            return 0
        total = 0
        for upload_id in await self.registry.ids():
            try:
                other = record if upload_id == record.upload_id else await self.registry.get(upload_id)
                if other is None or other.space != record.space or other.native_id is not None:
                    continue
                parts = newest_parts(await self.registry.parts(upload_id))
            except ArtifactCorruptedError:
                continue  # gc's to discard
            total += sum(p.size for n, p in parts.items() if upload_id != record.upload_id or n != number)
        return total

    async def _drop_superseded(self, upload_id: str, mine: PartRecord) -> None:
        """Free the bytes of earlier PUTs of the same part: only the newest can ever be published.

        A completion takes the newest part of each number, and an upload in
        completion takes no parts, so an older part's blob is never read again.
        """
        parts = await self.registry.parts(upload_id)
        newer = max((p.seq for p in parts if p.token == mine.token), default=None)
        if newer is None:
            return
        for part in parts:
            if part.part_number == mine.part_number and part.seq < newer and part.blob_key is not None:
                try:
                    with anyio.CancelScope(shield=True):
                        await self.ns.drop_part_blob(part.blob_key)
                except ArtifactStoreError:
                    pass  # gone already (a concurrent PUT freed it), or left for the blob sweep

    async def _store_stream(self, key: str, body: AsyncIterable[bytes], limit: int) -> tuple[int, str]:
        """Write a request body to a new blob; returns (size, sha256).

        The body arrives in small pieces; they are gathered into 1 MiB
        buffers that a second task hashes (in a worker thread) and writes
        while the next buffer fills. At most two buffers wait: memory stays
        bounded whatever the size.
        """
        digest = hashlib.sha256()
        size = 0
        writer = await self.ns.blob_writer(key)
        to_disk, from_net = anyio.create_memory_object_stream[bytearray](1)

        async def drain() -> None:
            async with from_net:
                async for buf in from_net:
                    await anyio.to_thread.run_sync(digest.update, buf)
                    await writer.write(bytes(buf))

        try:
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(drain)
                    async with to_disk:
                        buf = bytearray()
                        async for chunk in body:
                            size += len(chunk)
                            if size > limit:
                                raise ArtifactTooLargeError(f"the body is more than the {limit} bytes this upload accepts")
                            buf += chunk
                            if len(buf) >= CHUNK:
                                await to_disk.send(buf)
                                buf = bytearray()
                        if buf:
                            await to_disk.send(buf)
            except BaseExceptionGroup as group:
                raise _sole(group) from None
            if size:
                await writer.commit()
            else:
                await writer.abort()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await writer.abort()
            raise
        return size, digest.hexdigest()

    async def _delete(self, key: str | None) -> None:
        if key is not None:
            with anyio.CancelScope(shield=True):
                await self.ns.discard_blob(key)

    # -- publishing

    async def complete(self, upload_id: str, listed: Sequence[tuple[int, str]] | None, fields: Publish) -> str:
        """Publish an upload as its artifact; returns the artifact id.

        ``listed`` is the multipart client's (part number, ETag) list; None
        publishes a single upload's newest PUT. Any refusal leaves the upload
        open and nothing published.
        """
        grid.validate_id(upload_id, "upload id")
        record, parts = await self.registry.begin_complete(upload_id, self.ns.now())
        if record.native_id is not None:
            if self.native is None:
                await self.registry.reopen(upload_id, self.ns.now())
                raise UploadNotFoundError(f"upload {upload_id} was made on a backend this store does not use")
            return await self.native.complete(record, listed, fields)
        composed: str | None = None
        try:
            if record.expires_at_ns <= self.ns.now():
                raise UploadNotFoundError(f"upload {upload_id} has expired")
            chosen = self._choose(record, parts, listed)
            node = await self._file_node(record, fields)
            if len(chosen) == 1:
                key, size, sha256 = chosen[0].blob_key, chosen[0].size, chosen[0].sha256
            else:
                composed = self.ns.blob_key_for(node, node.artifact.version + 1)  # type: ignore[union-attr]
                await self.ns.intend_blob(node, composed)  # gc reclaims it if this process dies before the insert
                key, size, sha256 = await self._compose(composed, chosen)
            self.ns.set_content(node, key, size, sha256)
            await self.ns.insert_file(node, replace=True)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._delete(composed)
                await self.registry.reopen(upload_id, self.ns.now())
            raise
        with anyio.CancelScope(shield=True):
            removed = await self.registry.remove(upload_id, only_open=False)
            if removed is not None:
                await self._drop_parts(removed[1], keep=key)
        return record.artifact_id

    def _choose(self, record: UploadRecord, parts: list[PartRecord], listed: Sequence[tuple[int, str]] | None) -> list[PartRecord]:
        chosen = choose_parts(record, newest_parts(parts), listed, self.settings.min_part_bytes)
        total = sum(p.size for p in chosen)
        if total > self.ns.limits.max_artifact_bytes:
            raise ArtifactTooLargeError(f"the parts add up to {total} bytes, the limit is {self.ns.limits.max_artifact_bytes}")
        return chosen

    async def _compose(self, key: str, parts: list[PartRecord]) -> tuple[str | None, int, str]:
        """Join the parts into a new blob at ``key``; returns (key, size, sha256).

        A reader task streams the parts, checking each against its own
        SHA-256, while this task hashes the whole and writes it: the two
        digests run in worker threads side by side.
        """
        digest = hashlib.sha256()
        size = 0
        writer = await self.ns.blob_writer(key)
        chunks_in, chunks_out = anyio.create_memory_object_stream[bytes](2)
        try:
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._read_parts, parts, chunks_in)
                    async with chunks_out:
                        async for chunk in chunks_out:
                            await anyio.to_thread.run_sync(digest.update, chunk)
                            await writer.write(chunk)
                            size += len(chunk)
            except BaseExceptionGroup as group:
                raise _sole(group) from None
            if not size:
                await writer.abort()
                return None, 0, digest.hexdigest()
            await writer.commit()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await writer.abort()
            raise
        return key, size, digest.hexdigest()

    async def _read_parts(self, parts: list[PartRecord], out: MemoryObjectSendStream[bytes]) -> None:
        """The parts one after the other into ``out``, each checked against its SHA-256."""
        async with out:
            for part in parts:
                if part.blob_key is None:
                    continue
                digest = hashlib.sha256()
                reader = await self.ns.blob_reader(part.blob_key)
                try:
                    offset = 0
                    while offset < part.size:
                        chunk = await reader.read(offset, min(JOIN_CHUNK, part.size - offset))
                        if not chunk:
                            break
                        offset += len(chunk)
                        await anyio.to_thread.run_sync(digest.update, chunk)
                        await out.send(chunk)
                finally:
                    with anyio.CancelScope(shield=True):
                        await reader.close()
                if offset != part.size or digest.hexdigest() != part.sha256:
                    raise ArtifactCorruptedError(f"staged part {part.part_number} no longer matches its SHA-256")

    async def _file_node(self, record: UploadRecord, fields: Publish) -> Node:
        filename = fields.filename if fields.filename is not None else record.filename
        names = grid.split_filename(filename) if filename is not None else [record.artifact_id]
        _, parent = await self.ns.place(record.space, names[:-1])
        return await self.ns.file_node(
            parent, names[-1], ttl=fields.ttl if fields.ttl_given else record.ttl, artifact_id=record.artifact_id,
            mime=fields.mime or record.mime, summary=record.summary if fields.summary is None else fields.summary,
            meta=record.meta if fields.meta is None else fields.meta,
        )

    async def _drop_parts(self, parts: list[PartRecord], keep: str | None) -> None:
        """Free the parts of a removed upload at once: waiting out the grace period would let a
        client park unbounded bytes, and only a published part can have readers."""
        for part in parts:
            if part.blob_key is not None and part.blob_key != keep:
                try:
                    await self.ns.drop_part_blob(part.blob_key)
                except ArtifactStoreError:
                    pass  # left for the blob sweep; the upload itself is gone

    # -- ending uploads

    async def abort(self, upload_id: str) -> bool:
        """Forget an open upload and its bytes; False when there was none."""
        grid.validate_id(upload_id, "upload id")
        removed = await self.registry.remove(upload_id, only_open=True)
        if removed is None:
            return False
        await self._drop(*removed, keep=None)
        return True

    async def _drop(self, record: UploadRecord, parts: list[PartRecord], keep: str | None) -> None:
        """The bytes of a removed upload: its native upload, or its staged parts."""
        if record.native_id is not None and self.native is not None:
            await self.native.drop(record)
        else:
            await self._drop_parts(parts, keep=keep)

    async def settle(self, artifact_id: str) -> bool:
        """Publish a presign_upload_and_register upload whose bytes S3 has; False when there is none to publish.

        The service publishes such an upload when its PUT ends; S3 tells
        nobody, so the store publishes it when the artifact is first asked
        for (and ``gc`` publishes those nobody asked for).
        """
        if self.native is None:
            return False
        record = await self.registry.get(artifact_id)
        if record is None or not record.publish_on_upload or record.state is not UploadState.OPEN:
            return False
        try:
            await self.complete(record.upload_id, None, Publish())
        except (ArtifactNotFoundError, UploadConflictError):  # no bytes yet, or another caller is publishing it
            return False
        return True

    async def _records(self) -> AsyncIterator[tuple[str, UploadRecord | None]]:
        """Every upload's record, None for one that cannot be read (corrupted): gc's walk."""
        for upload_id in await self.registry.ids():
            try:
                yield upload_id, await self.registry.get(upload_id)
            except ArtifactCorruptedError:
                yield upload_id, None

    @staticmethod
    def _due(record: UploadRecord, now: int) -> bool:
        """Whether gc removes ``record``: past its window, and not being completed right now."""
        completing = record.state is UploadState.COMPLETING and now - record.state_since_ns < STALE_COMPLETION_S * NS
        return record.expires_at_ns <= now and not completing

    async def expired_uploads(self) -> int:
        """How many uploads :meth:`collect_expired` would remove now (a dry run)."""
        now = self.ns.now()
        return sum([record is None or self._due(record, now) async for _, record in self._records()])

    async def collect_expired(self) -> int:
        """Remove uploads past their window with their bytes; returns how many."""
        now = self.ns.now()
        collected = 0
        async for upload_id, record in self._records():
            if record is None:
                await self.registry.discard(upload_id)
                continue
            if record.expires_at_ns > now:
                if record.native_id is not None and record.publish_on_upload:
                    await self._settle_quietly(record.upload_id)
                continue
            if not self._due(record, now):
                continue
            removed = await self.registry.remove(upload_id, only_open=False)
            if removed is None:
                continue
            await self._drop(*removed, keep=await self._published_blob(record.artifact_id))
            collected += 1
        await self.registry.sweep(time.time() - LEFTOVER_AGE_S)
        if self.native is not None:
            await self.native.abort_leftovers(await self._live_native_ids())
        return collected

    async def _settle_quietly(self, upload_id: str) -> None:
        """gc's settle: an upload that cannot be published (too large, over quota) waits for its expiry."""
        try:
            await self.settle(upload_id)
        except ArtifactStoreError as exc:
            log.info("upload %s is not published: %s", upload_id, exc)

    async def _live_native_ids(self) -> set[str]:
        """The backend upload ids open records still own: gc must not abort those, however old."""
        live = set()
        for upload_id in await self.registry.ids():
            try:
                record = await self.registry.get(upload_id)
            except ArtifactCorruptedError:
                continue
            if record is not None and record.native_id is not None:
                live.add(record.native_id)
        return live

    async def _published_blob(self, artifact_id: str) -> str | None:
        """The blob a published artifact stands on, so a completion cut short by a crash loses nothing."""
        node = await self.ns.find_artifact(artifact_id)
        return None if node is None or node.artifact is None else node.artifact.blob_key
