"""Block maps: a SHA-256 per MiB of a blob, so a ranged read is checked without reading the whole file.

An artifact's SHA-256 covers the whole file: a client asking for bytes
``[start, end)`` could not be told whether they are the stored bytes short of
reading everything. A block map holds the digest of each 1 MiB block of one
blob (the last block shorter); a range is then checked block by block, and a
damaged block is refused before any of its bytes go out.

The map is kept beside its blob, as the blob ``<blob key>.blocks`` (a blob
key never ends so: it ends in a hex token). Blob keys are never reused (each
version gets a fresh one), so a map made for a key stays true for ever. The
map is only a cache of what the signed record already vouches for: it is
built from the blob the first time a range is asked for, and written only
once the whole blob has matched the record's size and SHA-256. It carries an
HMAC over the blob key, that size and SHA-256, and every digest, so whoever
can write the blob store (and so could damage a blob) cannot write a map that
passes for the damaged bytes: a map that fails its HMAC, or names another
key, size or SHA-256, is rebuilt, and the rebuild finds the damage.

Where the backend signs its own URLs (S3) a download never passes through
the store, and no map is ever made; ranges there are S3's business.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Protocol

import anyio
import anyio.to_thread

from core.backends.blobs.base import BlobReader
from core.errors import ArtifactCorruptedError, ArtifactStoreError
from core.infra.signing import RecordSigner

log = logging.getLogger("artifactfs.blockmap")

BLOCK = 1 << 20
SUFFIX = ".blocks"
DIGEST = 32
_SIG = 64  # RecordSigner's hex HMAC-SHA256
_MAGIC = b"artifactfs block map 1\n"


def sidecar_key(blob_key: str) -> str:
    return blob_key + SUFFIX


def sidecar_base(key: str) -> str | None:
    """The blob a map belongs to, None when ``key`` is not a map's."""
    return key[: -len(SUFFIX)] if key.endswith(SUFFIX) else None


def blocks_of(size: int) -> int:
    return -(-size // BLOCK)


def _prefix(blob_key: str, size: int, sha256: str) -> bytes:
    """What a map says it is about; compared whole, so nothing read from the store is ever parsed."""
    fields = {"block": BLOCK, "key": blob_key, "sha256": sha256, "size": size}
    return _MAGIC + json.dumps(fields, sort_keys=True, separators=(",", ":")).encode() + b"\n"


@dataclass(frozen=True)
class BlockMap:
    """The digests of one blob's blocks, trusted: made here, or read back with a good HMAC."""

    blob_key: str
    size: int
    sha256: str
    digests: bytes  # DIGEST bytes per block, in order

    def digest(self, index: int) -> bytes:
        return self.digests[index * DIGEST : (index + 1) * DIGEST]

    def encode(self, signer: RecordSigner) -> bytes:
        signed = _prefix(self.blob_key, self.size, self.sha256) + self.digests
        return signed + signer.sign(signed).encode("ascii")

    @classmethod
    def decode(cls, data: bytes, signer: RecordSigner, blob_key: str, size: int, sha256: str) -> BlockMap | None:
        """The map ``data`` holds, if it is one this store signed for exactly this blob; else None."""
        prefix = _prefix(blob_key, size, sha256)
        count = blocks_of(size)
        if len(data) != len(prefix) + count * DIGEST + _SIG or not data.startswith(prefix):
            return None
        signed, sig = data[:-_SIG], data[-_SIG:]
        try:
            if not signer.verify(signed, sig.decode("ascii")):
                return None
        except UnicodeDecodeError:
            return None
        return cls(blob_key=blob_key, size=size, sha256=sha256, digests=signed[len(prefix) :])

    @staticmethod
    def max_bytes(blob_key: str, size: int, sha256: str) -> int:
        """The length of a good map of this blob: reading a stored one stops past it."""
        return len(_prefix(blob_key, size, sha256)) + blocks_of(size) * DIGEST + _SIG


def _hash_block(block: bytes, whole: hashlib._Hash) -> bytes:
    whole.update(block)
    return hashlib.sha256(block).digest()


def _block_digest(block: bytes) -> bytes:
    return hashlib.sha256(block).digest()


class _Blobs(Protocol):
    """What block maps need of :class:`~core.tree.content.Content` (the one door to blobs)."""

    async def blob_reader(self, key: str, size: int | None = None) -> BlobReader: ...

    async def read_block_map(self, blob_key: str, limit: int) -> bytes | None: ...

    async def write_block_map(self, blob_key: str, data: bytes) -> None: ...


class BlockMaps:
    """Block maps of one store's blobs, and the ranged reads they check.

    One per :class:`~core.transfers.engine.Transfers`. ``signer`` holds a key
    of its own, derived from the store's signing key, so a map can never pass
    for a metadata record or a URL, nor they for a map.
    """

    def __init__(self, content: _Blobs, signer: RecordSigner) -> None:
        self.content, self.signer = content, signer
        # Requests of one blob in this process take turns to build its map: a client that opens
        # several ranges at once (a download accelerator) costs one whole read, not one each.
        self._building: dict[str, anyio.Lock] = {}

    async def get(self, label: str, blob_key: str, size: int, sha256: str) -> BlockMap:
        """The trusted map of a blob the record describes, built (one whole read) when missing.

        Raises ArtifactCorruptedError when the blob does not match the record,
        as a whole download would.
        """
        found = await self._stored(blob_key, size, sha256)
        if found is not None:
            return found
        lock = self._building.setdefault(blob_key, anyio.Lock())
        try:
            async with lock:
                found = await self._stored(blob_key, size, sha256)  # another request built it meanwhile
                if found is None:
                    found = await self._build(label, blob_key, size, sha256)
                    await self._keep(blob_key, found)
                return found
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._building.pop(blob_key, None)

    async def _keep(self, blob_key: str, found: BlockMap) -> None:
        """Store a map just made; one that cannot be stored (a full disk) still serves this request."""
        try:
            await self.content.write_block_map(blob_key, found.encode(self.signer))
        except ArtifactStoreError as exc:
            log.warning("block map of %s not kept: %s", blob_key, exc)

    async def _stored(self, blob_key: str, size: int, sha256: str) -> BlockMap | None:
        data = await self.content.read_block_map(blob_key, BlockMap.max_bytes(blob_key, size, sha256))
        return None if data is None else BlockMap.decode(data, self.signer, blob_key, size, sha256)

    async def _build(self, label: str, blob_key: str, size: int, sha256: str) -> BlockMap:
        """Read the blob once, block by block: each block's digest, and the whole file's."""
        whole = hashlib.sha256()
        digests = bytearray()
        async with aclosing(self._blocks(label, blob_key, size, 0, blocks_of(size), whole_blob=True)) as blocks:
            async for _, block in blocks:
                digests += await anyio.to_thread.run_sync(_hash_block, block, whole)
        if whole.hexdigest() != sha256:
            raise ArtifactCorruptedError(f"artifact {label} fails its SHA-256 check")
        return BlockMap(blob_key=blob_key, size=size, sha256=sha256, digests=bytes(digests))

    async def read_range(self, label: str, blob_key: str, size: int, sha256: str, start: int, end: int
                         ) -> AsyncIterator[bytes]:
        """Bytes ``[start, end)`` of the blob, each block they touch checked before any of it is yielded.

        Whole blocks are read (the first and last ones past the range too):
        a digest covers its block only. One block is held at a time.
        """
        if end <= start:
            return
        checked = await self.get(label, blob_key, size, sha256)
        async with aclosing(self._blocks(label, blob_key, size, start // BLOCK, (end - 1) // BLOCK + 1)) as blocks:
            async for offset, block in blocks:
                if await anyio.to_thread.run_sync(_block_digest, block) != checked.digest(offset // BLOCK):
                    raise ArtifactCorruptedError(f"artifact {label}: block {offset // BLOCK} fails its SHA-256 check")
                yield block[max(start - offset, 0) : min(end - offset, len(block))]

    async def _blocks(self, label: str, blob_key: str, size: int, first: int, stop: int, *, whole_blob: bool = False
                      ) -> AsyncIterator[tuple[int, bytes]]:
        """Blocks ``first`` to ``stop - 1`` with their offsets, each whole; a blob cut short is damage,
        and so, when ``whole_blob`` is read, is one with bytes past the recorded size."""
        reader = await self.content.blob_reader(blob_key, size=size)
        try:
            for index in range(first, stop):
                offset = index * BLOCK
                want = min(BLOCK, size - offset)
                block = await reader.read(offset, want)
                while len(block) < want:
                    more = await reader.read(offset + len(block), want - len(block))
                    if not more:
                        raise ArtifactCorruptedError(f"artifact {label} is shorter than recorded")
                    block += more
                if whole_blob and index == stop - 1 and await reader.read(size, 1):
                    raise ArtifactCorruptedError(f"artifact {label} is stored with a different size")
                yield offset, block
        finally:
            with anyio.CancelScope(shield=True):
                await reader.close()
