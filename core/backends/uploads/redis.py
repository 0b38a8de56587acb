"""Open presigned uploads in Redis, beside the metadata they will be published into.

Why here and not in the bucket: several hosts (mounts, API servers) share one
Redis and one bucket, and any of them may be asked to hand out a part URL,
complete, abort or collect an upload another one opened. Every change an
upload goes through (open -> completing -> gone, or back to open; a part
recorded only while open) must be one atomic step across those hosts. Redis
gives that in one round trip with a small Lua script; S3 could only offer it
through conditional writes that S3-compatible stores do not all implement,
and each record read would be an object GET on the path of every part URL.
The records are few and small, and they live exactly as long as the upload.

Keys, in the upper tree's shard of the metadata store (``P`` is its base,
:meth:`~core.backends.meta.redis.store.RedisMetaStore.base`: one hash slot on
Redis Cluster, and a store's uploads never meet another store's):

=================  =====  =====================================================
``P:up:<id>``      hash   ``rec`` (signed JSON :class:`UploadRecord`), ``sig``,
                          ``st`` (open / completing) and ``since`` (ns)
``P:up:<id>:p``    list   the stored parts, oldest first: ``<sig> <JSON>``
``P:ups``          zset   upload id by expires_at (ns): what ``gc`` walks
=================  =====  =====================================================

The state lives beside the signed record, not inside it: Lua cannot sign,
and the state is a lock, not a fact anything is trusted on. A part's place in
its list is its ``seq``, so the newest PUT of a part number is known without
trusting clocks (on S3 the parts themselves live in S3 and the list stays
empty).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from core import shards
from core.backends.meta.base import MetaStore
from core.backends.meta.redis.store import RedisMetaStore
from core.backends.uploads.base import PartRecord, UploadRecord, UploadState
from core.errors import ArtifactCorruptedError, ConfigurationError, UploadConflictError, UploadNotFoundError
from core.infra.signing import RecordSigner
from core.settings import Settings

_SCRIPT = r"""
local P, op, id = KEYS[1], ARGV[1], ARGV[2]
local rk, pk, index = P .. ':up:' .. id, P .. ':up:' .. id .. ':p', P .. ':ups'
local st = redis.call('HGET', rk, 'st')
if op == 'create' then
  if st then return {'exists'} end
  redis.call('HSET', rk, 'rec', ARGV[3], 'sig', ARGV[4], 'st', 'open', 'since', ARGV[5])
  redis.call('ZADD', index, ARGV[6], id)
  return {'ok'}
end
if not st then
  if op == 'discard' then redis.call('DEL', pk); redis.call('ZREM', index, id) end
  return {'missing'}
end
if op == 'add' then
  if st ~= 'open' then return {'busy'} end
  redis.call('RPUSH', pk, ARGV[3])
  return {'ok'}
elseif op == 'begin' then
  if st ~= 'open' then return {'busy'} end
  redis.call('HSET', rk, 'st', 'completing', 'since', ARGV[3])
elseif op == 'parts' then
  -- read only: the record and its parts, below
elseif op == 'reopen' then
  redis.call('HSET', rk, 'st', 'open', 'since', ARGV[3])
  return {'ok'}
elseif op == 'remove' then
  if ARGV[3] == '1' and st ~= 'open' then return {'busy'} end
elseif op == 'discard' then
  redis.call('DEL', rk, pk)
  redis.call('ZREM', index, id)
  return {'ok'}
else
  return redis.error_reply('unknown op ' .. op)
end
local rec = redis.call('HMGET', rk, 'rec', 'sig', 'st', 'since')
local parts = redis.call('LRANGE', pk, 0, -1)
if op == 'remove' then
  redis.call('DEL', rk, pk)
  redis.call('ZREM', index, id)
end
return {'ok', rec[1], rec[2], rec[3], rec[4], parts}
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisUploadRegistry:
    """An :class:`~core.backends.uploads.base.UploadRegistry` on the store's Redis (its pool, retries and bridge)."""

    def __init__(self, meta: RedisMetaStore, signer: RecordSigner) -> None:
        self._meta, self._signer = meta, signer

    async def _run(self, op: str, upload_id: str, *args: object) -> list:
        argv = [op, upload_id, *args]
        keys = [self._meta.base(shards.UPPER)]
        # Redis sends EVALSHA and falls back to loading the script: one round trip once it is cached.
        return await self._meta._call(
            f"upload {op}", lambda client, _: client.register_script(_SCRIPT)(keys=keys, args=argv, client=client)
        )

    # -- records

    def _seal(self, model: BaseModel) -> tuple[bytes, str]:
        body = model.model_dump_json().encode()
        return body, self._signer.sign(body)

    def _record(self, upload_id: str, rec: bytes, sig: bytes, state: bytes, since: bytes) -> UploadRecord:
        try:
            if not self._signer.verify(rec, _text(sig)):
                raise ArtifactCorruptedError(f"upload {upload_id} fails its signature")
            record = UploadRecord.model_validate_json(rec)
            if record.upload_id != upload_id:
                raise ArtifactCorruptedError(f"upload {upload_id} holds the record of {record.upload_id}")
            record.state, record.state_since_ns = UploadState(_text(state)), int(since)
        except (ValueError, ValidationError) as exc:
            raise ArtifactCorruptedError(f"upload {upload_id} is not a valid record: {exc}") from None
        return record

    def _parts(self, upload_id: str, entries: list[bytes]) -> list[PartRecord]:
        parts = []
        for seq, entry in enumerate(entries, start=1):
            sig, _, body = entry.partition(b" ")
            if not self._signer.verify(body, _text(sig)):
                raise ArtifactCorruptedError(f"a part record of upload {upload_id} fails its signature")
            try:
                part = PartRecord.model_validate_json(body)
            except ValidationError as exc:
                raise ArtifactCorruptedError(f"a part record of upload {upload_id} is not valid: {exc}") from None
            part.seq = seq
            parts.append(part)
        return parts

    def _whole(self, upload_id: str, reply: list) -> tuple[UploadRecord, list[PartRecord]]:
        _, rec, sig, state, since, entries = reply
        return self._record(upload_id, rec, sig, state, since), self._parts(upload_id, entries)

    # -- the protocol

    async def create(self, record: UploadRecord) -> None:
        body, sig = self._seal(record)
        reply = await self._run("create", record.upload_id, body, sig, record.state_since_ns, record.expires_at_ns)
        if reply[0] != b"ok":
            raise UploadConflictError(f"upload {record.upload_id} exists already")

    async def get(self, upload_id: str) -> UploadRecord | None:
        key = self._meta.key("up", upload_id, shard=shards.UPPER)
        rec, sig, state, since = await self._meta._call(
            "upload get", lambda client, _: client.hmget(key, "rec", "sig", "st", "since")
        )
        if rec is None and state is None:
            return None
        if rec is None or sig is None or state is None or since is None:
            raise ArtifactCorruptedError(f"upload {upload_id} is half a record")
        return self._record(upload_id, rec, sig, state, since)

    async def add_part(self, upload_id: str, part: PartRecord) -> bool:
        body, sig = self._seal(part.model_copy(update={"seq": 0}))
        reply = await self._run("add", upload_id, sig.encode() + b" " + body)
        return reply[0] == b"ok"

    async def parts(self, upload_id: str) -> list[PartRecord]:
        reply = await self._run("parts", upload_id)
        return [] if reply[0] != b"ok" else self._whole(upload_id, reply)[1]

    async def begin_complete(self, upload_id: str, now_ns: int) -> tuple[UploadRecord, list[PartRecord]]:
        reply = await self._run("begin", upload_id, now_ns)
        if reply[0] == b"missing":
            raise UploadNotFoundError(f"upload {upload_id} does not exist")
        if reply[0] == b"busy":
            raise UploadConflictError(f"upload {upload_id} is being completed")
        return self._whole(upload_id, reply)

    async def reopen(self, upload_id: str, now_ns: int) -> None:
        await self._run("reopen", upload_id, now_ns)

    async def remove(self, upload_id: str, *, only_open: bool) -> tuple[UploadRecord, list[PartRecord]] | None:
        reply = await self._run("remove", upload_id, "1" if only_open else "0")
        if reply[0] == b"missing":
            return None
        if reply[0] == b"busy":
            raise UploadConflictError(f"upload {upload_id} is being completed")
        return self._whole(upload_id, reply)

    async def discard(self, upload_id: str) -> None:
        await self._run("discard", upload_id)

    async def ids(self) -> list[str]:
        index = self._meta.key("ups", shard=shards.UPPER)
        return [_text(i) for i in await self._meta._call("upload ids", lambda client, _: client.zrange(index, 0, -1))]

    async def sweep(self, made_before: float) -> None:
        """Nothing to do: every change is one atomic script, so no half-made upload exists."""


def from_settings(settings: Settings, meta: MetaStore, signer: RecordSigner) -> RedisUploadRegistry:
    """Uploads beside the records of the Redis store ``meta``: every host on that Redis sees them all."""
    if not isinstance(meta, RedisMetaStore):
        raise ConfigurationError(f"Redis upload records need a Redis metadata store, not {type(meta).__name__}")
    return RedisUploadRegistry(meta, signer)
