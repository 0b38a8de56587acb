"""The presign part of the public API: arguments and access rules, then :class:`Transfers`.

Access is decided here, once, when a URL is issued: ``presign`` needs read
access to the artifact, an upload needs write access to the scope it will
land in. The URL that comes out grants one method on one target until it
expires, and nothing else; the HTTP service never consults sessions.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from core.api import rules
from core.api.access import check_write
from core.api.base import StoreBase
from core.api.rules import DEFAULT, TTLArg
from core.backends.uploads.base import Publish, UploadKind, UploadRecord
from core.errors import InvalidArgumentError, UploadNotFoundError, shown
from core.models import MultipartUploadCompleteRequest, MultipartUploadInitRequest, Scope
from core.transfers.engine import Transfers
from core.transfers.urls import MAX_PARTS, check_expires
from core.tree import grid
from core.tree.namespace import NS


class PresignApi(StoreBase):
    """Presigned download and upload URLs, and multipart uploads."""

    # -- downloads

    async def presign(self, artifact_id: str, expires: int = 3600, *, session_id: str | None = None,
                      user_id: str | None = None) -> str:
        """A URL that downloads the artifact (GET, Range, HEAD) until ``expires`` seconds from now."""
        check_expires(expires)
        node = await self._node(artifact_id, session_id, user_id)  # read access, or AccessDeniedError
        return await (await self._ready_transfers()).node_url(node, expires)

    async def presign_short(self, artifact_id: str, *, session_id: str | None = None, user_id: str | None = None) -> str:
        return await self.presign(artifact_id, 15 * 60, session_id=session_id, user_id=user_id)

    async def presign_medium(self, artifact_id: str, *, session_id: str | None = None, user_id: str | None = None) -> str:
        return await self.presign(artifact_id, 3600, session_id=session_id, user_id=user_id)

    async def presign_long(self, artifact_id: str, *, session_id: str | None = None, user_id: str | None = None) -> str:
        return await self.presign(artifact_id, 24 * 3600, session_id=session_id, user_id=user_id)

    # -- single uploads

    async def presign_upload(
        self, session_id: str | None = None, filename: str | None = None, mime_type: str | None = None,
        expires: int = 3600, *, user_id: str | None = None, scope: Scope | str = Scope.SESSION, ttl: TTLArg = DEFAULT,
        max_bytes: int | None = None,
    ) -> tuple[str, str]:
        """A PUT URL for new bytes; returns (url, artifact_id). The artifact appears on register_uploaded_artifact."""
        return await self._single_upload(
            session_id=session_id, user_id=user_id, filename=filename, mime=mime_type, expires=expires, scope=scope,
            ttl=ttl, max_bytes=max_bytes, summary="", meta=None, publish_on_upload=False,
        )

    async def presign_upload_and_register(
        self, mime: str | None = None, summary: str = "", filename: str | None = None, session_id: str | None = None,
        meta: dict[str, Any] | None = None, expires: int = 3600, *, user_id: str | None = None,
        scope: Scope | str = Scope.SESSION, ttl: TTLArg = DEFAULT, max_bytes: int | None = None,
    ) -> tuple[str, str]:
        """A PUT URL whose upload publishes the artifact by itself; returns (url, artifact_id)."""
        return await self._single_upload(
            session_id=session_id, user_id=user_id, filename=filename, mime=mime, expires=expires, scope=scope,
            ttl=ttl, max_bytes=max_bytes, summary=summary, meta=meta, publish_on_upload=True,
        )

    async def register_uploaded_artifact(
        self, artifact_id: str, *, mime: str | None = None, summary: str | None = None, filename: str | None = None,
        meta: dict[str, Any] | None = None, ttl: TTLArg = DEFAULT, session_id: str | None = None,
        user_id: str | None = None,
    ) -> bool:
        """Publish what was PUT to a presign_upload URL; fields left None keep the upload's."""
        if filename is not None:
            grid.split_filename(filename)
        fields = Publish(
            mime=None if mime is None else rules.mime(mime, filename),
            summary=None if summary is None else rules.summary(summary),
            filename=filename, meta=None if meta is None else rules.meta(meta, self.ns.limits),
        )
        record = await self._upload_record(artifact_id, UploadKind.SINGLE, session_id, user_id)
        if ttl != DEFAULT:
            fields.ttl, fields.ttl_given = self._ttl(ttl, record.space.scope), True
        await (await self._ready_transfers()).complete(record.upload_id, None, fields)
        return True

    # -- multipart uploads

    async def initiate_multipart_upload(self, request: MultipartUploadInitRequest | dict[str, Any]) -> dict[str, Any]:
        """Open a multipart upload; returns {"upload_id", "artifact_id", "key", ...}."""
        request = rules.model(MultipartUploadInitRequest, request)
        f = self._upload_fields(filename=request.filename, mime=request.mime_type, summary=request.summary,
                                meta=request.meta, scope=request.scope, ttl=request.ttl, max_bytes=request.max_bytes)
        transfers = await self._ready_transfers()
        space = await self._writable_space(f["scope"], request.session_id, request.user_id, "upload")
        record = await transfers.open_upload(
            kind=UploadKind.MULTIPART, space=space, filename=f["filename"], mime=f["mime"], summary=f["summary"],
            meta=f["meta"], ttl=f["ttl"], max_bytes=f["max_bytes"],
        )
        return {
            "upload_id": record.upload_id,
            "artifact_id": record.artifact_id,
            "key": grid.grid_key(space.sandbox_id, space.scope, space.owner, record.artifact_id),
            "scope": space.scope.value,
            "session_id": space.session_id,
            "user_id": space.user_id,
            "filename": record.filename,
            "expires_at": datetime.fromtimestamp(record.expires_at_ns / NS, tz=UTC).isoformat(),
            "min_part_bytes": transfers.min_part_bytes,
            "max_parts": MAX_PARTS,
        }

    async def get_part_upload_url(self, upload_id: str, part_number: int, expires: int = 3600) -> str:
        """A PUT URL for one part; its response carries the ETag to list on completion."""
        check_expires(expires)
        return await (await self._ready_transfers()).part_url(upload_id, part_number, expires)

    async def complete_multipart_upload(self, request: MultipartUploadCompleteRequest | dict[str, Any]) -> str:
        """Publish the listed parts, in order, as the artifact; returns its id."""
        request = rules.model(MultipartUploadCompleteRequest, request)
        fields = Publish(
            summary=None if request.summary is None else rules.summary(request.summary),
            meta=None if request.meta is None else rules.meta(request.meta, self.ns.limits),
        )
        record = await self._upload_record(request.upload_id, UploadKind.MULTIPART, request.session_id, request.user_id)
        listed = [(part.PartNumber, part.ETag) for part in request.parts]
        return await (await self._ready_transfers()).complete(record.upload_id, listed, fields)

    async def abort_multipart_upload(self, upload_id: str, *, session_id: str | None = None,
                                     user_id: str | None = None) -> bool:
        """Drop an open multipart upload and its parts; False when there was none."""
        try:
            record = await self._upload_record(upload_id, UploadKind.MULTIPART, session_id, user_id)
        except UploadNotFoundError:
            return False
        return await (await self._ready_transfers()).abort(record.upload_id)

    # -- shared by the above

    async def _ready_transfers(self) -> Transfers:
        await self._ready()
        return self.transfers

    def _upload_fields(
        self, *, filename: str | None, mime: str | None, summary: Any, meta: Any, scope: Scope | str, ttl: TTLArg,
        max_bytes: Any,
    ) -> dict[str, Any]:
        """Every argument checked before anything is created, so a refusal leaves no trace."""
        if filename is not None:
            grid.split_filename(filename)
        if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0):
            raise InvalidArgumentError(f"max_bytes must be a positive whole number, got {shown(max_bytes)}")
        if max_bytes is not None:  # no URL allows more than the store would take anyway (and it stays printable)
            max_bytes = min(max_bytes, self.ns.limits.max_artifact_bytes)
        scope = rules.scope(scope)
        return {
            "filename": filename, "mime": rules.mime(mime, filename), "summary": rules.summary(summary),
            "meta": rules.meta(meta, self.ns.limits), "scope": scope, "ttl": self._ttl(ttl, scope), "max_bytes": max_bytes,
        }

    async def _single_upload(
        self, *, session_id: str | None, user_id: str | None, filename: str | None, mime: str | None, expires: int,
        scope: Scope | str, ttl: TTLArg, max_bytes: int | None, summary: str, meta: dict[str, Any] | None,
        publish_on_upload: bool,
    ) -> tuple[str, str]:
        check_expires(expires)
        f = self._upload_fields(filename=filename, mime=mime, summary=summary, meta=meta, scope=scope, ttl=ttl,
                                max_bytes=max_bytes)
        transfers = await self._ready_transfers()
        space = await self._writable_space(f["scope"], session_id, user_id, "upload")
        url_expires_at = transfers.ns.now() // NS + expires
        record = await transfers.open_upload(
            kind=UploadKind.SINGLE, space=space, filename=f["filename"], mime=f["mime"], summary=f["summary"],
            meta=f["meta"], ttl=f["ttl"], max_bytes=f["max_bytes"], publish_on_upload=publish_on_upload,
            url_expires_at=url_expires_at,
        )
        return await transfers.upload_url(record, url_expires_at), record.artifact_id

    async def _upload_record(
        self, upload_id: str, kind: UploadKind, session_id: str | None, user_id: str | None
    ) -> UploadRecord:
        transfers = await self._ready_transfers()
        grid.validate_id(upload_id, "upload id")
        record = await transfers.registry.get(upload_id)
        if record is None or record.kind is not kind:
            what = "presigned upload for artifact" if kind is UploadKind.SINGLE else "multipart upload"
            raise UploadNotFoundError(f"no open {what} {upload_id}")
        if session_id is not None or user_id is not None:
            check_write(self._principal(session_id, user_id), record.space, f"upload {upload_id}")
        return record
