"""The UploadRegistry contract (core/backends/uploads/base.py), run on every implementation.

A new registry proves itself by adding one line to ``UPLOAD_REGISTRIES``: an
id and a function that makes a registry on a fresh namespace (it may ask
pytest for fixtures, such as the Redis server, and register what to close).
Each test is one promise of the protocol: records round trip, part records
are write-once and come back in the order they were recorded, and every
state change (a part only while open; completing once; back to open;
removing) is one atomic call, so callers racing for it find exactly one
winner and the others get the typed errors.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path

import anyio
import pytest
from servers import RedisServer

from core.backends.meta.redis.store import RedisMetaStore
from core.backends.uploads.base import (
    PartRecord,
    UploadKind,
    UploadRecord,
    UploadRegistry,
    UploadState,
    newest_parts,
)
from core.backends.uploads.filesystem import DirUploadRegistry
from core.backends.uploads.memory import MemoryUploadRegistry
from core.errors import UploadConflictError, UploadNotFoundError
from core.infra.signing import RecordSigner
from core.models import Scope
from core.nodes import Space

SIGNER = RecordSigner(b"upload-contract-key-0123456789ab")
ALICE = Space(sandbox_id="box", scope=Scope.USER, user_id="alice")

# A registry on a fresh namespace; what it needs opened goes on the stack, closed after the test.
MakeRegistry = Callable[[pytest.FixtureRequest, Path, AsyncExitStack], Awaitable[UploadRegistry]]


async def memory(request: pytest.FixtureRequest, root: Path, stack: AsyncExitStack) -> UploadRegistry:
    return MemoryUploadRegistry()


async def filesystem(request: pytest.FixtureRequest, root: Path, stack: AsyncExitStack) -> UploadRegistry:
    return DirUploadRegistry(root / "uploads", SIGNER)


async def redis(request: pytest.FixtureRequest, root: Path, stack: AsyncExitStack, cluster: bool = False) -> UploadRegistry:
    from core.backends.uploads.redis import RedisUploadRegistry

    server = request.getfixturevalue("redis_cluster" if cluster else "redis_server")
    meta = RedisMetaStore(server.url, SIGNER, prefix=f"uc-{uuid.uuid4().hex[:12]}", cluster=cluster)
    await meta.open()
    stack.push_async_callback(meta.close)
    return RedisUploadRegistry(meta, SIGNER)


# Every implementation, one line each.
UPLOAD_REGISTRIES = [
    pytest.param(memory, id="memory"),
    pytest.param(filesystem, id="filesystem"),
    pytest.param(redis, id="redis"),
    pytest.param(partial(redis, cluster=True), id="redis-cluster"),
]


@pytest.fixture(params=UPLOAD_REGISTRIES)
async def registry(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[UploadRegistry]:
    make: MakeRegistry = request.param
    async with AsyncExitStack() as stack:
        yield await make(request, tmp_path, stack)


def a_record(kind: UploadKind = UploadKind.MULTIPART, **fields: object) -> UploadRecord:
    upload_id = uuid.uuid4().hex
    values: dict[str, object] = {
        "upload_id": upload_id, "kind": kind, "artifact_id": f"art-{upload_id[:8]}", "space": ALICE,
        "filename": "docs/report.pdf", "mime": "application/pdf", "summary": "q4", "meta": {"quarter": 4},
        "ttl": 3600, "max_bytes": 1 << 30, "blob_prefix": f"grid/box/uploads/{upload_id}",
        "created_at_ns": 1_000, "expires_at_ns": 10**18, "state_since_ns": 1_000, **fields,
    }
    return UploadRecord.model_validate(values)


def a_part(number: int, size: int = 5, *, blob_key: str | None = "blob") -> PartRecord:
    return PartRecord(part_number=number, blob_key=f"{blob_key}-{number}" if blob_key else None, size=size,
                      sha256=f"{number:064x}", stored_at_ns=2_000 + number)


def same_part(got: PartRecord, sent: PartRecord) -> bool:
    """The part as recorded: every field the caller gave (``seq`` is the registry's)."""
    return got.model_dump(exclude={"seq"}) == sent.model_dump(exclude={"seq"})


# -- records round trip


async def test_a_created_upload_reads_back(registry: UploadRegistry) -> None:
    record = a_record(native_id="native-1", native_key="grid/box/users/alice/a.v1", publish_on_upload=True)
    await registry.create(record)
    assert await registry.get(record.upload_id) == record
    assert record.upload_id in await registry.ids()


async def test_an_unknown_upload_is_none_or_not_found(registry: UploadRegistry) -> None:
    assert await registry.get("no-such-upload") is None
    assert await registry.add_part("no-such-upload", a_part(1)) is False
    with pytest.raises(UploadNotFoundError):
        await registry.begin_complete("no-such-upload", 5)
    assert await registry.remove("no-such-upload", only_open=True) is None
    await registry.reopen("no-such-upload", 5)  # nothing to reopen: no error
    await registry.discard("no-such-upload")
    assert await registry.ids() == []


# -- parts


async def test_parts_are_write_once_and_come_back_in_the_order_recorded(registry: UploadRegistry) -> None:
    record = a_record()
    await registry.create(record)
    sent = [a_part(2), a_part(1), a_part(2, size=7), a_part(3, blob_key=None, size=0)]
    for part in sent:
        assert await registry.add_part(record.upload_id, part) is True
    got_record, parts = await registry.begin_complete(record.upload_id, 5)
    assert got_record.upload_id == record.upload_id
    assert len(parts) == len(sent)
    ordered = sorted(parts, key=lambda p: p.seq)
    assert [p.seq for p in ordered] == sorted({p.seq for p in parts})  # distinct, increasing
    assert all(same_part(got, want) for got, want in zip(ordered, sent, strict=True))
    newest = newest_parts(parts)  # a part uploaded again is a new record: completion takes the last one
    assert {n: p.size for n, p in newest.items()} == {1: 5, 2: 7, 3: 0}


async def test_parts_are_read_without_changing_the_upload(registry: UploadRegistry) -> None:
    """What the service reads to free a replaced part's bytes and to count staged bytes."""
    record = a_record()
    await registry.create(record)
    assert await registry.parts(record.upload_id) == []
    sent = [a_part(1), a_part(1, size=9)]
    for part in sent:
        await registry.add_part(record.upload_id, part)
    parts = sorted(await registry.parts(record.upload_id), key=lambda p: p.seq)
    assert all(same_part(got, want) for got, want in zip(parts, sent, strict=True))
    assert parts[0].seq < parts[1].seq
    assert await registry.add_part(record.upload_id, a_part(2)) is True  # still open
    assert await registry.parts("no-such-upload") == []


async def test_concurrent_parts_are_each_recorded_once(registry: UploadRegistry) -> None:
    record = a_record()
    await registry.create(record)
    async with anyio.create_task_group() as tg:
        for number in range(1, 21):
            tg.start_soon(registry.add_part, record.upload_id, a_part(number))
    _, parts = await registry.begin_complete(record.upload_id, 5)
    assert sorted(p.part_number for p in parts) == list(range(1, 21))
    assert len({p.seq for p in parts}) == 20


# -- state changes are atomic


async def test_completing_is_one_callers_at_a_time(registry: UploadRegistry) -> None:
    record = a_record()
    await registry.create(record)
    await registry.add_part(record.upload_id, a_part(1))
    completing, parts = await registry.begin_complete(record.upload_id, 7_000)
    assert completing.state is UploadState.COMPLETING and completing.state_since_ns == 7_000 and len(parts) == 1
    stored = await registry.get(record.upload_id)
    assert stored is not None and stored.state is UploadState.COMPLETING and stored.state_since_ns == 7_000
    with pytest.raises(UploadConflictError):
        await registry.begin_complete(record.upload_id, 7_001)
    assert await registry.add_part(record.upload_id, a_part(2)) is False  # no part lands while completing
    with pytest.raises(UploadConflictError):
        await registry.remove(record.upload_id, only_open=True)  # an abort waits for the completion's outcome
    await registry.reopen(record.upload_id, 8_000)  # the completion failed: open again
    stored = await registry.get(record.upload_id)
    assert stored is not None and stored.state is UploadState.OPEN and stored.state_since_ns == 8_000
    assert await registry.add_part(record.upload_id, a_part(2)) is True
    _, parts = await registry.begin_complete(record.upload_id, 9_000)
    assert sorted(p.part_number for p in parts) == [1, 2]


async def test_racing_completions_have_one_winner(registry: UploadRegistry) -> None:
    record = a_record()
    await registry.create(record)
    won: list[int] = []
    refused: list[int] = []

    async def complete(caller: int) -> None:
        try:
            await registry.begin_complete(record.upload_id, caller)
        except UploadConflictError:
            refused.append(caller)
        else:
            won.append(caller)

    async with anyio.create_task_group() as tg:
        for caller in range(8):
            tg.start_soon(complete, caller)
    assert len(won) == 1 and len(refused) == 7
    stored = await registry.get(record.upload_id)
    assert stored is not None and stored.state_since_ns == won[0]


async def test_remove_returns_what_the_upload_held(registry: UploadRegistry) -> None:
    record = a_record(kind=UploadKind.SINGLE)
    await registry.create(record)
    part = a_part(1, size=11)
    await registry.add_part(record.upload_id, part)
    removed = await registry.remove(record.upload_id, only_open=True)
    assert removed is not None
    got, parts = removed
    assert got == record and len(parts) == 1 and same_part(parts[0], part)  # its blobs can be deleted now
    assert await registry.get(record.upload_id) is None and record.upload_id not in await registry.ids()
    assert await registry.add_part(record.upload_id, a_part(2)) is False  # gone: no part lands
    assert await registry.remove(record.upload_id, only_open=False) is None


async def test_a_completed_upload_is_removed_by_its_completer(registry: UploadRegistry) -> None:
    record = a_record()
    await registry.create(record)
    await registry.begin_complete(record.upload_id, 5)
    removed = await registry.remove(record.upload_id, only_open=False)  # published: forget it
    assert removed is not None and removed[0].state is UploadState.COMPLETING
    assert await registry.get(record.upload_id) is None


async def test_discard_drops_an_upload(registry: UploadRegistry) -> None:
    kept, dropped = a_record(), a_record()
    await registry.create(kept)
    await registry.create(dropped)
    await registry.add_part(dropped.upload_id, a_part(1))
    await registry.discard(dropped.upload_id)
    await registry.discard(dropped.upload_id)  # again: fine
    assert await registry.get(dropped.upload_id) is None
    assert await registry.ids() == [kept.upload_id]


async def test_a_sweep_leaves_live_uploads_alone(registry: UploadRegistry) -> None:
    record = a_record()
    await registry.create(record)
    await registry.add_part(record.upload_id, a_part(1))
    await registry.sweep(made_before=10.0**12)  # everything counts as old: only half-made leftovers may go
    assert await registry.get(record.upload_id) == record
    _, parts = await registry.begin_complete(record.upload_id, 5)
    assert len(parts) == 1
