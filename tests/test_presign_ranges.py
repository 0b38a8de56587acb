"""Ranged downloads through presigned URLs are checked, block by block (issue #16).

A range is checked against the blob's block map (``core/tree/blockmap.py``):
made from the blob the first time a range is asked for, once the whole blob
has matched the record's SHA-256, and signed so that whoever can write the
blob store cannot forge one. Damage is done behind the store's back, as a
failing disk would; reads are counted at the blob store, never timed.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import pytest
import trio
from storeprobe import blob_key_of, flip_blob_byte

from core import ArtifactStore, Scope, StoreFullError
from core.infra.clock import ManualClock
from core.infra.signing import RecordSigner
from core.transfers import service as presign_service
from core.tree.blockmap import BLOCK, BlockMap, sidecar_key

MiB = 1 << 20
assert BLOCK == MiB  # the ranges below are chosen around 1 MiB blocks


@pytest.fixture(params=["memory", "fs-sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    """The backends whose downloads pass through the service; S3 answers its own URLs (and ranges)."""
    return request.param


@pytest.fixture
async def http(store: ArtifactStore, nursery: trio.Nursery) -> AsyncIterator[httpx.AsyncClient]:
    await nursery.start(presign_service.serve, store.transfers, "127.0.0.1", 0)
    async with httpx.AsyncClient(trust_env=False, timeout=60) as client:
        yield client


async def fetch(http: httpx.AsyncClient, url: str, header: str) -> tuple[int | None, bytes]:
    """(status, the body bytes received); status None when the body was cut off before its end."""
    got = bytearray()
    try:
        async with http.stream("GET", url, headers={"Range": header}) as response:
            async for chunk in response.aiter_raw():
                got += chunk
    except httpx.RemoteProtocolError:
        return None, bytes(got)
    return response.status_code, bytes(got)


def assert_refused(result: tuple[int | None, bytes], data: bytes, start: int, damaged_block: int) -> None:
    """Cut off (or a 5xx before any byte), having sent at most clean bytes before the damaged block."""
    status, got = result
    assert status is None or status >= 500, status
    if status is None:
        assert len(got) <= max(damaged_block * BLOCK - start, 0)
        assert got == data[start : start + len(got)]


async def stored_keys(store: ArtifactStore) -> set[str]:
    return {key async for key in store.ns.blobs.keys()}  # noqa: SIM118 (an async listing, not a dict)


class CountedReads:
    """Bytes read from each blob key through the blob store (the door every read passes)."""

    def __init__(self, store: ArtifactStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bytes: Counter[str] = Counter()
        blobs = store.ns.blobs
        opened = blobs.reader

        async def reader(key: str, size: int | None = None):
            inner = await opened(key, size=size)
            counts = self.bytes

            class Counting:
                async def read(self, offset: int, length: int, *, ahead: bool = False) -> bytes:
                    data = await inner.read(offset, length, ahead=ahead)
                    counts[key] += len(data)
                    return data

                async def close(self) -> None:
                    await inner.close()

            return Counting()

        monkeypatch.setattr(blobs, "reader", reader)


@pytest.mark.semantics("S-presign-range-verified")
async def test_ranges_return_exact_bytes_across_blocks(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    data = os.urandom(3 * MiB + 12345)
    size = len(data)
    artifact_id = await store.store(data, filename="r.bin")
    key = await blob_key_of(store, artifact_id)
    url = await store.presign(artifact_id)
    whole = await http.get(url)
    assert (whole.status_code, whole.content) == (200, data)
    from_start = await http.get(url, headers={"Range": "bytes=0-"})  # every byte: the whole file's check
    assert (from_start.status_code, from_start.content) == (206, data)
    assert sidecar_key(key) not in await stored_keys(store)  # no map is needed for the whole file

    for header, (start, end) in {
        "bytes=0-0": (0, 1), f"bytes={MiB - 1}-{MiB - 1}": (MiB - 1, MiB), f"bytes={MiB}-{MiB}": (MiB, MiB + 1),
        f"bytes={size - 1}-{size - 1}": (size - 1, size), f"bytes={MiB - 1}-{MiB}": (MiB - 1, MiB + 1),
        f"bytes={MiB}-{2 * MiB - 1}": (MiB, 2 * MiB), f"bytes=10-{3 * MiB + 5}": (10, 3 * MiB + 6),
        f"bytes={3 * MiB}-": (3 * MiB, size), f"bytes={3 * MiB + 100}-{size + 50}": (3 * MiB + 100, size),
        "bytes=-1": (size - 1, size), "bytes=-12345": (3 * MiB, size), f"bytes=-{MiB + 7}": (size - MiB - 7, size),
        f"bytes=1-{size - 1}": (1, size), f"bytes=0-{size - 2}": (0, size - 1),
    }.items():
        part = await http.get(url, headers={"Range": header})
        assert (part.status_code, part.headers["content-range"]) == (206, f"bytes {start}-{end - 1}/{size}"), header
        assert part.content == data[start:end], header
    assert sidecar_key(key) in await stored_keys(store)


@pytest.mark.semantics("S-presign-range-verified")
async def test_a_range_over_a_block_damaged_after_its_map_was_made_is_cut_off(
    store: ArtifactStore, http: httpx.AsyncClient
) -> None:
    data = os.urandom(5 * MiB + 999)
    artifact_id = await store.store(data, filename="d.bin")
    key = await blob_key_of(store, artifact_id)
    url = await store.presign(artifact_id)
    first = await http.get(url, headers={"Range": "bytes=0-99"})  # makes the map from sound bytes
    assert (first.status_code, first.content) == (206, data[:100])

    flip_blob_byte(store, key, 3 * MiB + 4242)  # in block 3
    for start, end in ((3 * MiB + 4242, 3 * MiB + 4242), (3 * MiB, 3 * MiB + 10), (3 * MiB + 5000, 4 * MiB + 5),
                       (2 * MiB + 17, 3 * MiB + 1), (0, 5 * MiB)):
        assert_refused(await fetch(http, url, f"bytes={start}-{end}"), data, start, damaged_block=3)
    for start, end in ((0, 99), (MiB - 3, 3 * MiB - 1), (4 * MiB, len(data) - 1)):  # blocks 0-2 and 4-5 are sound
        status, got = await fetch(http, url, f"bytes={start}-{end}")
        assert (status, got) == (206, data[start : end + 1])
    with pytest.raises(httpx.RemoteProtocolError):
        await http.get(url)  # the whole download still fails its SHA-256 too


@pytest.mark.semantics("S-presign-range-verified")
async def test_the_first_range_of_a_damaged_blob_fails_and_makes_no_map(
    store: ArtifactStore, http: httpx.AsyncClient
) -> None:
    data = os.urandom(3 * MiB)
    artifact_id = await store.store(data, filename="e.bin")
    key = await blob_key_of(store, artifact_id)
    flip_blob_byte(store, key, 2 * MiB + 1)
    url = await store.presign(artifact_id)
    for header in ("bytes=0-9", f"bytes={2 * MiB}-{2 * MiB + 9}", "bytes=-5"):
        # The map is made from the whole blob, which fails the record's SHA-256: no byte is vouched for.
        status, got = await fetch(http, url, header)
        assert status is None or status >= 500, header
        assert status is not None or got == b"", header
    assert sidecar_key(key) not in await stored_keys(store)


@pytest.mark.semantics("S-presign-range-verified")
async def test_a_forged_block_map_is_rebuilt_and_the_damage_found(store: ArtifactStore, http: httpx.AsyncClient) -> None:
    data = os.urandom(3 * MiB + 5)
    artifact_id = await store.store(data, filename="f.bin")
    key = await blob_key_of(store, artifact_id)
    url = await store.presign(artifact_id)
    assert (await http.get(url, headers={"Range": "bytes=0-0"})).status_code == 206
    genuine = await store.ns.read_block_map(key, 1 << 20)
    assert genuine is not None
    other_content = os.urandom(3 * MiB + 5)
    other_id = await store.store(other_content, filename="g.bin")
    other_key = await blob_key_of(store, other_id)
    assert (await http.get(await store.presign(other_id), headers={"Range": "bytes=0-0"})).status_code == 206
    other_map = await store.ns.read_block_map(other_key, 1 << 20)
    assert other_map is not None

    flip_blob_byte(store, key, MiB + 77)  # block 1
    damaged = bytearray(data)
    damaged[MiB + 77] ^= 0xFF
    digests = b"".join(hashlib.sha256(bytes(damaged[i : i + BLOCK])).digest() for i in range(0, len(data), BLOCK))
    record_sha = hashlib.sha256(data).hexdigest()
    lying = BlockMap(blob_key=key, size=len(data), sha256=record_sha, digests=digests)
    forgeries = {
        "the damage's digests, signed with another key": lying.encode(RecordSigner(b"k" * 32)),
        "the damage's digests under the genuine map's signature": genuine[:-64 - len(digests)] + digests + genuine[-64:],
        "another blob's genuine map": other_map,
        "the genuine map, one digest byte changed": genuine[:-65] + bytes([genuine[-65] ^ 1]) + genuine[-64:],
    }
    for what, forged in forgeries.items():
        await store.ns.blobs.put(sidecar_key(key), forged)
        assert_refused(await fetch(http, url, f"bytes={MiB}-{MiB + 99}"), data, MiB, damaged_block=1)
        # Refused, rebuilt from the blob, which fails the record's SHA-256: even a sound block is not served.
        status, _ = await fetch(http, url, "bytes=0-9")
        assert status is None or status >= 500, what
    assert (await http.get(await store.presign(other_id), headers={"Range": "bytes=5-9"})).content == other_content[5:10]


@pytest.mark.semantics("S-presign-range-verified")
async def test_a_range_reads_the_blob_whole_once_then_only_its_blocks(
    store: ArtifactStore, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(8 * MiB + 5)
    artifact_id = await store.store(data, filename="big.bin")
    key = await blob_key_of(store, artifact_id)
    url = await store.presign(artifact_id)
    reads = CountedReads(store, monkeypatch)

    ranges = [(3 * MiB + 10, 3 * MiB + 20), (5 * MiB - 1, 5 * MiB), (0, 0), (8 * MiB, 8 * MiB + 4)]
    results: dict[int, bytes] = {}

    async def get(n: int, start: int, end: int) -> None:
        response = await http.get(url, headers={"Range": f"bytes={start}-{end}"})
        assert response.status_code == 206
        results[n] = response.content

    async with trio.open_nursery() as nursery:  # several at once, as a download accelerator asks: one map made
        for n, (start, end) in enumerate(ranges):
            nursery.start_soon(get, n, start, end)
    assert results == {n: data[start : end + 1] for n, (start, end) in enumerate(ranges)}
    # One whole read to make the map, then each range's blocks: 3; 4 and 5; 0; 8 (the last, 5 bytes).
    assert reads.bytes[key] == len(data) + 4 * MiB + 5

    reads.bytes.clear()
    again = await http.get(url, headers={"Range": f"bytes={6 * MiB + 3}-{6 * MiB + 3}"})
    assert again.content == data[6 * MiB + 3 : 6 * MiB + 4]
    assert reads.bytes[key] == MiB  # the map is kept: one block, never the whole blob again
    assert 0 < reads.bytes[sidecar_key(key)] < 1024  # 32 bytes a block, a header and a signature


@pytest.mark.semantics("S-presign-range-verified")
async def test_a_map_that_cannot_be_kept_still_serves_its_range(
    store: ArtifactStore, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(2 * MiB + 3)
    artifact_id = await store.store(data, filename="full.bin")
    key = await blob_key_of(store, artifact_id)

    async def disk_full(blob_key: str, map_bytes: bytes) -> None:
        raise StoreFullError("no space left on device")

    monkeypatch.setattr(store.ns, "write_block_map", disk_full)
    url = await store.presign(artifact_id)
    for _ in range(2):  # made, checked and used each time, never kept
        part = await http.get(url, headers={"Range": f"bytes={MiB}-{MiB + 9}"})
        assert (part.status_code, part.content) == (206, data[MiB : MiB + 10])
    assert sidecar_key(key) not in await stored_keys(store)


@pytest.mark.semantics("S-presign-range-verified", "S-gc")
async def test_gc_takes_a_block_map_with_its_blob_and_orphan_maps_alone(
    store: ArtifactStore, http: httpx.AsyncClient, clock: ManualClock
) -> None:
    ns = store.ns
    live = await store.store(os.urandom(MiB + 1), filename="live", user_id="alice", scope=Scope.USER)
    gone = await store.store(os.urandom(MiB + 2), filename="gone", user_id="alice", scope=Scope.USER)
    for artifact_id in (live, gone):
        assert (await http.get(await store.presign(artifact_id, user_id="alice"), headers={"Range": "bytes=1-2"})
                ).status_code == 206
    live_key, gone_key = await blob_key_of(store, live), await blob_key_of(store, gone)
    orphan = sidecar_key(f"grid/{store.sandbox_id}/users/alice/{'0' * 32}.v1-0badc0de")  # its blob long gone
    await ns.blobs.put(orphan, b"a map of nothing")
    assert {sidecar_key(live_key), sidecar_key(gone_key), orphan} <= await stored_keys(store)
    assert (await store.fsck()).problems == []  # maps are no damage and no files

    assert (await store.gc(dry_run=True)).orphans == 1  # the orphan map; the maps of live blobs are theirs
    assert (await store.gc()).orphans == 1
    await store.delete(gone, user_id="alice")
    await store.gc()
    assert {gone_key, sidecar_key(gone_key)} <= await stored_keys(store)  # within the grace period
    clock.advance(ns.limits.blob_grace + 1)
    report = await store.gc()
    assert report.orphans == 0
    left = await stored_keys(store)
    assert left == {live_key, sidecar_key(live_key)}
    assert (await store.fsck()).problems == []
    assert (await http.get(await store.presign(live, user_id="alice"), headers={"Range": "bytes=1-2"})).status_code == 206
