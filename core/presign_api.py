"""The presign half of the public API: arguments and access rules, then :class:`Transfers`.

Access is decided here, once, when a URL is issued: ``presign`` needs read
access to the artifact, an upload needs write access to the scope it will
land in. The URL that comes out grants one method on one target until it
expires, and nothing else; the HTTP service never consults sessions.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from . import grid
from .access import check_write
from .errors import InvalidArgumentError, UploadNotFoundError
from .models import MultipartUploadCompleteRequest, MultipartUploadInitRequest, Scope
from .namespace import NS
from .nodes import Space
from .presign import MAX_PARTS, check_expires
from .transfers import Publish, Transfers
from .uploads import UploadKind, UploadRecord

if TYPE_CHECKING:
    from .store import ArtifactStore, TTLArg

M = TypeVar("M", bound=BaseModel)


def _validated(model: type[M], value: Any) -> M:
    """A request model from a model or a dict; a bad field is an InvalidArgumentError."""
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise InvalidArgumentError(f"invalid {model.__name__}: {exc}") from None


class PresignApi:
    """What :class:`~core.store.ArtifactStore`'s presign methods do."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store

    async def _transfers(self) -> Transfers:
        await self.store._ready()
        return self.store.transfers

    # -- downloads

    async def presign(self, artifact_id: str, expires: int, session_id: str | None, user_id: str | None) -> str:
        check_expires(expires)
        node = await self.store._node(artifact_id, session_id, user_id)  # read access, or AccessDeniedError
        return await (await self._transfers()).node_url(node, expires)

    # -- uploads

    async def _space(self, scope: Scope, session_id: str | None, user_id: str | None) -> Space:
        """The space an upload will land in, once the caller may write there."""
        return await self.store._writable_space(scope, session_id, user_id, "upload")

    def _fields(
        self, *, filename: str | None, mime: str | None, summary: Any, meta: Any, scope: Scope | str, ttl: TTLArg,
        max_bytes: Any,
    ) -> dict[str, Any]:
        """Every argument checked before anything is created, so a refusal leaves no trace."""
        store = self.store
        if filename is not None:
            grid.split_filename(filename)
        if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0):
            raise InvalidArgumentError(f"max_bytes must be a positive whole number, got {max_bytes!r:.40}")
        scope = store._scope(scope)
        return {
            "filename": filename, "mime": store._mime(mime, filename), "summary": store._summary(summary),
            "meta": store._meta(meta), "scope": scope, "ttl": store._ttl(ttl, scope), "max_bytes": max_bytes,
        }

    async def presign_upload(
        self, *, session_id: str | None, user_id: str | None, filename: str | None, mime: str | None, expires: int,
        scope: Scope | str, ttl: TTLArg, max_bytes: int | None, summary: str, meta: dict[str, Any] | None,
        publish_on_upload: bool,
    ) -> tuple[str, str]:
        check_expires(expires)
        f = self._fields(filename=filename, mime=mime, summary=summary, meta=meta, scope=scope, ttl=ttl,
                         max_bytes=max_bytes)
        transfers = await self._transfers()
        space = await self._space(f["scope"], session_id, user_id)
        url_expires_at = transfers.ns.now() // NS + expires
        record = await transfers.open_upload(
            kind=UploadKind.SINGLE, space=space, filename=f["filename"], mime=f["mime"], summary=f["summary"],
            meta=f["meta"], ttl=f["ttl"], max_bytes=f["max_bytes"], publish_on_upload=publish_on_upload,
            url_expires_at=url_expires_at,
        )
        return await transfers.upload_url(record, url_expires_at), record.artifact_id

    async def _record(self, upload_id: str, kind: UploadKind, session_id: str | None, user_id: str | None) -> UploadRecord:
        transfers = await self._transfers()
        grid.validate_id(upload_id, "upload id")
        record = await transfers.registry.get(upload_id)
        if record is None or record.kind is not kind:
            what = "presigned upload for artifact" if kind is UploadKind.SINGLE else "multipart upload"
            raise UploadNotFoundError(f"no open {what} {upload_id}")
        if session_id is not None or user_id is not None:
            check_write(self.store._principal(session_id, user_id), record.space, f"upload {upload_id}")
        return record

    async def register(
        self, artifact_id: str, *, mime: str | None, summary: str | None, filename: str | None,
        meta: dict[str, Any] | None, ttl: TTLArg, ttl_given: bool, session_id: str | None, user_id: str | None,
    ) -> bool:
        store = self.store
        if filename is not None:
            grid.split_filename(filename)
        fields = Publish(
            mime=None if mime is None else store._mime(mime, filename),
            summary=None if summary is None else store._summary(summary),
            filename=filename, meta=None if meta is None else store._meta(meta),
        )
        record = await self._record(artifact_id, UploadKind.SINGLE, session_id, user_id)
        if ttl_given:
            fields.ttl, fields.ttl_given = store._ttl(ttl, record.space.scope), True
        await (await self._transfers()).complete(record.upload_id, None, fields)
        return True

    # -- multipart

    async def initiate_multipart(self, request: MultipartUploadInitRequest | dict[str, Any]) -> dict[str, Any]:
        request = _validated(MultipartUploadInitRequest, request)
        f = self._fields(filename=request.filename, mime=request.mime_type, summary=request.summary,
                         meta=request.meta, scope=request.scope, ttl=request.ttl, max_bytes=request.max_bytes)
        transfers = await self._transfers()
        space = await self._space(f["scope"], request.session_id, request.user_id)
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

    async def part_url(self, upload_id: str, part_number: int, expires: int) -> str:
        check_expires(expires)
        return await (await self._transfers()).part_url(upload_id, part_number, expires)

    async def complete_multipart(self, request: MultipartUploadCompleteRequest | dict[str, Any]) -> str:
        request = _validated(MultipartUploadCompleteRequest, request)
        store = self.store
        fields = Publish(
            summary=None if request.summary is None else store._summary(request.summary),
            meta=None if request.meta is None else store._meta(request.meta),
        )
        record = await self._record(request.upload_id, UploadKind.MULTIPART, request.session_id, request.user_id)
        listed = [(part.PartNumber, part.ETag) for part in request.parts]
        return await (await self._transfers()).complete(record.upload_id, listed, fields)

    async def abort_multipart(self, upload_id: str, session_id: str | None, user_id: str | None) -> bool:
        try:
            record = await self._record(upload_id, UploadKind.MULTIPART, session_id, user_id)
        except UploadNotFoundError:
            return False
        return await (await self._transfers()).abort(record.upload_id)
