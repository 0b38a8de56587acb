"""Presigned URLs and uploads on a backend that signs its own URLs (S3): the native half of Transfers.

The client talks to S3 directly; this side only signs, keeps the upload
record (:mod:`core.backends.uploads.base`, in Redis on a shared store) and publishes.

- A download URL is S3's GET of the artifact's current blob, answering with
  the artifact's MIME type and name, and never outliving the artifact's TTL.
  Like every S3 URL it names a blob version: once the artifact is updated or
  deleted the old blob goes and the URL answers 404.
- Every upload is an S3 multipart upload straight to the blob key the
  artifact will be published under (``<grid key>.v1-<token>``, as the
  namespace names a first version), so publishing copies nothing. A
  presign_upload URL is the UploadPart URL of part 1; its upload dies when it
  is completed or aborted, and with it every URL that could write the key.
- Publishing asks S3 for the parts, checks the client's list against them
  (a missing part or a wrong ETag is an :class:`InvalidPartError` naming the
  part, sizes against the limits and the quota) before S3 joins anything;
  then S3 joins them, the object is read back once for its SHA-256 (bounded
  memory), and one metadata commit makes it the artifact. A refusal leaves
  the upload open and nothing published.
- If publishing fails after S3 has joined the parts, the joined object stays
  under its key and the upload is reopened: the next completion finds the
  S3 upload gone and that object there, and publishes it.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta

import anyio

from core.backends.blobs.base import NativePart, NativePresign
from core.backends.uploads.base import Publish, UploadKind, UploadRecord, UploadRegistry, choose_parts, normalise_etag
from core.errors import (
    ArtifactStoreError,
    ArtifactTooLargeError,
    InvalidPartError,
    UploadNotFoundError,
)
from core.nodes import Node
from core.settings import PresignSettings
from core.tree import grid
from core.tree.namespace import EMPTY_SHA256, NS, Namespace

STALE_UPLOAD_AGE = timedelta(days=1)  # an S3 upload no record knows, older than this, is a crash's leftover


def multipart_etag(etags: Sequence[str]) -> str | None:
    """The ETag S3 gives an object joined from parts with these ETags, when they are MD5s.

    (The MD5 of the parts' binary MD5s, then ``-<count>``; parts encrypted
    with KMS or a customer key have other ETags, and then None.)
    """
    md5s = [normalise_etag(e) for e in etags]
    if not md5s or any(len(m) != 32 or any(c not in "0123456789abcdef" for c in m) for m in md5s):
        return None
    digest = hashlib.md5(b"".join(bytes.fromhex(m) for m in md5s), usedforsecurity=False)
    return f"{digest.hexdigest()}-{len(md5s)}"


class NativeUploads:
    """Signs S3's URLs, starts and finishes its multipart uploads, publishes them as artifacts."""

    def __init__(
        self, ns: Namespace, backend: NativePresign, registry: UploadRegistry, settings: PresignSettings,
        file_node: Callable[[UploadRecord, Publish], Awaitable[Node]],
    ) -> None:
        self.ns, self.backend, self.registry, self.settings = ns, backend, registry, settings
        self._file_node = file_node  # where the record says the artifact goes (Transfers makes the node)
        self.stale_upload_age = STALE_UPLOAD_AGE

    @property
    def min_part_bytes(self) -> int:
        return max(self.settings.min_part_bytes, self.backend.min_part_bytes)

    # -- URLs

    async def download_url(self, node: Node, expires: int) -> str:
        art = node.artifact
        assert art is not None
        if node.expires_at_ns is not None:  # S3 cannot revoke a URL: it ends when the artifact does
            expires = max(1, min(expires, (node.expires_at_ns - self.ns.now()) // NS))
        return await self.backend.presign_get(art.blob_key, expires, mime=art.mime, filename=node.name)

    async def start(self, record: UploadRecord) -> UploadRecord:
        """Start the S3 upload of a new record, then keep the record; neither is left without the other."""
        space = record.space
        key = f"{grid.grid_key(space.sandbox_id, space.scope, space.owner, record.artifact_id)}.v1-{secrets.token_hex(4)}"
        record.native_key = key
        record.native_id = await self.backend.create_multipart(key, mime=record.mime)
        try:
            await self.registry.create(record)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.backend.abort_multipart(key, record.native_id)
            raise
        return record

    async def part_url(self, record: UploadRecord, part_number: int, expires: int) -> str:
        assert record.native_key is not None and record.native_id is not None
        return await self.backend.presign_part(record.native_key, record.native_id, part_number, expires)

    # -- publishing

    async def complete(self, record: UploadRecord, listed: Sequence[tuple[int, str]] | None, fields: Publish) -> str:
        """Publish an upload already moved to COMPLETING; any refusal reopens it."""
        key, native_id = record.native_key, record.native_id
        assert key is not None and native_id is not None
        try:
            if record.expires_at_ns <= self.ns.now():
                raise UploadNotFoundError(f"upload {record.upload_id} has expired")
            parts = await self.backend.list_parts(key, native_id)
            if parts is None:
                await self._joined_before(record, listed)
                node = await self._file_node(record, fields)
            else:
                chosen = self._choose(record, parts, listed)
                node = await self._file_node(record, fields)
                await self._check_room(node, sum(p.size for p in chosen))
                await self.backend.complete_multipart(key, native_id, [(p.part_number, p.etag) for p in chosen])
            obj = await self.backend.digest(key)
            self.ns.set_content(node, key if obj.size else None, obj.size, obj.sha256 or EMPTY_SHA256)
            await self.ns.insert_file(node, replace=True)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.registry.reopen(record.upload_id, self.ns.now())
            raise
        with anyio.CancelScope(shield=True):
            await self.registry.remove(record.upload_id, only_open=False)
            if obj.size == 0:
                await self.ns.discard_blob(key)  # an empty artifact has no blob
        return record.artifact_id

    def _choose(self, record: UploadRecord, parts: list[NativePart], listed: Sequence[tuple[int, str]] | None) -> list[NativePart]:
        """The parts to join, after every check S3 would make, with errors that name the part."""
        chosen = choose_parts(record, {p.part_number: p for p in parts}, listed, self.min_part_bytes)
        total = sum(p.size for p in chosen)
        for limit, what in ((self.ns.limits.max_artifact_bytes, "the size limit"), (record.max_bytes, "this upload's limit")):
            if limit is not None and total > limit:
                raise ArtifactTooLargeError(f"the upload is {total} bytes, {what} is {limit}")
        return chosen

    async def _check_room(self, node: Node, size: int) -> None:
        """The quota check the commit will make, made before S3 joins anything."""
        assert node.space is not None
        old = await self.ns.lookup(node.parent, node.name)
        replaced = old if old is not None and old.is_file else None
        await self.ns.ensure_room(node.space, size - (replaced.size if replaced else 0), 0 if replaced else 1)

    async def _joined_before(self, record: UploadRecord, listed: Sequence[tuple[int, str]] | None) -> None:
        """Check the object an earlier completion had S3 join (its publishing then failed) is these parts."""
        assert record.native_key is not None
        obj = await self.backend.stat(record.native_key)
        if obj is None:
            raise UploadNotFoundError(f"upload {record.upload_id} is gone from the backend (aborted or expired there)")
        if record.kind is UploadKind.MULTIPART:
            if not listed:
                raise InvalidPartError("a multipart upload is completed with the list of its parts")
            expected = multipart_etag([etag for _, etag in listed])
            if expected is not None and normalise_etag(obj.etag) != expected:
                raise InvalidPartError("the upload was already joined from other parts than these")

    # -- pending publish-on-upload, ending uploads

    async def drop(self, record: UploadRecord) -> None:
        """Abort a removed upload's S3 upload and delete what it wrote, unless that was published."""
        assert record.native_key is not None and record.native_id is not None
        await self.backend.abort_multipart(record.native_key, record.native_id)
        published = await self.ns.find_artifact(record.artifact_id)
        if published is None or published.artifact is None or published.artifact.blob_key != record.native_key:
            try:
                await self.ns.discard_blob(record.native_key)
            except ArtifactStoreError:
                pass  # gone already, or left for a later gc

    async def abort_leftovers(self, live: set[str]) -> int:
        """Abort S3 uploads no open record knows (a crashed writer's), once they are old."""
        return await self.backend.abort_incomplete(self.stale_upload_age, spare=live)
