"""Listing, search and stores cost round trips per page, not per result, counted at the redis-server.

Each count is what the server saw of one library call (``MONITOR``, through
:class:`roundtrips.RoundTrips`): every command of this store's key prefix
between two markers, a script counting once (its calls inside are not round
trips) and a pipeline once per command it carries. Nothing is timed, so a
slow machine cannot fail these tests: it only makes them slower.

What the bounds say (issue #9):

- ``search()`` and ``list_files()``/``list_by_session()``/
  ``get_directory_contents()`` answering 1,000 artifacts take at most 3
  round trips: the records come in one script, and the filenames from the
  records' directories, read in one more (a search) or with the listing
  itself (a session's files are one walk of its tree). A search wider than
  a session reads the store's registry of shards first and runs its script
  in each scope's shard (issue #17): one pipeline, one command per shard.
- ``store(filename)`` does not read a file's directories one by one: a
  store 8 directories deep costs what a store at the session's root does.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from roundtrips import RoundTrips, Seen
from servers import RedisServer

from core import ArtifactStore
from core.backends.blobs.memory import MemoryBlobStore
from core.backends.meta.redis.store import RedisMetaStore
from core.infra.signing import RecordSigner

SIGNER = RecordSigner(b"listing-round-trips-key-0123456789")
FILES = 1000
DIRS = 10  # the session's files lie in this many directories (a few at its root)
SESSION, USER = "s-listing", "u-listing"
BOUND = 3  # round trips of a listing or a search of FILES artifacts, at most


class Counted:
    """A store on Redis (blobs in memory) whose every call is counted at the server."""

    def __init__(self, store: ArtifactStore, trips: RoundTrips) -> None:
        self.store, self._trips = store, trips

    async def count(self, call: Callable[[], Awaitable[Any]]) -> tuple[list[Seen], Any]:
        return await self._trips.during_async(call)


@pytest.fixture
async def counted(redis_server: RedisServer) -> AsyncIterator[Counted]:
    prefix = f"lrt-{uuid.uuid4().hex[:12]}"
    meta = RedisMetaStore(redis_server.url, SIGNER, prefix=prefix, notify=True)
    trips = RoundTrips(redis_server, prefix)
    try:
        async with ArtifactStore(storage_provider="memory", session_provider="memory", sandbox_id="box",
                                 meta_store=meta, blob_store=MemoryBlobStore()) as store:
            yield Counted(store, trips)
    finally:
        trips.close()
        with redis_server.client() as client:
            for key in client.scan_iter(f"{prefix}:*", count=1000):
                client.delete(key)


def report(what: str, seen: list[Seen]) -> str:
    kinds: dict[str, int] = {}
    for command in seen:
        words = command.split()
        kind = words[4] if words[0] == "EVALSHA" and len(words) > 4 else words[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    return f"{what}: {len(seen)} round trips ({kinds})"


async def test_listing_and_search_of_a_thousand_artifacts_take_at_most_three_round_trips(counted: Counted) -> None:
    store = counted.store
    items = [
        {"data": b"%d" % i, "filename": f"d{i % DIRS}/f{i:04d}.txt" if i % DIRS else f"f{i:04d}.txt",
         "meta": {"n": i}}
        for i in range(FILES)
    ]
    for at in range(0, FILES, 100):
        await store.store_batch(items[at : at + 100], SESSION, user_id=USER)
    calls: dict[str, Callable[[], Awaitable[list[Any]]]] = {
        "search by session": lambda: store.search(session_id=SESSION),
        "search by user": lambda: store.search(user_id=USER),
        "search of the sandbox": lambda: store.search(),
        "list_files": lambda: store.list_files(SESSION),
        "list_files with a prefix": lambda: store.list_files(SESSION, prefix="d"),
        "list_by_session": lambda: store.list_by_session(SESSION),
        "get_directory_contents": lambda: store.get_directory_contents(SESSION, "d3"),
    }
    counts, answers = {}, {}
    for what, call in calls.items():
        seen, answers[what] = await counted.count(call)
        counts[what] = (len(seen), report(what, seen))
    print("\n" + "\n".join(line for _, line in counts.values()))
    # A search wider than a session reads the registry of shards, then one script per scope's shard
    # (one pipeline: one round trip, though the server sees each command), then the filenames.
    scopes = len(await store.ns.meta._shards()) - 1  # type: ignore[attr-defined]
    wide = {"search by user", "search of the sandbox"}
    assert all(n <= (2 + scopes if what in wide else BOUND) for what, (n, _) in counts.items()), [
        line for _, line in counts.values()
    ]
    assert len(answers["search by session"]) == len(answers["list_files"]) == FILES
    assert len(answers["get_directory_contents"]) == FILES // DIRS
    names = sorted(m.filename for m in answers["search by user"])
    assert names == sorted(m.filename for m in answers["list_by_session"])
    assert "d3/f0013.txt" in names and "f0010.txt" in names


async def test_a_store_eight_directories_deep_costs_what_one_at_the_root_does(counted: Counted) -> None:
    store = counted.store
    deep = "/".join(f"level{i}" for i in range(1, 8))
    await store.store(b"first", filename="first.txt", session_id=SESSION)  # the session, made
    await store.store(b"first", filename=f"{deep}/first.txt", session_id=SESSION)  # its directories, made
    counts: dict[int, list[int]] = {1: [], 8: []}
    for run in range(3):
        for depth, filename in ((1, f"at-root-{run}.txt"), (8, f"{deep}/deep-{run}.txt")):
            seen, artifact_id = await counted.count(
                lambda filename=filename: store.store(secrets.token_bytes(16), filename=filename, session_id=SESSION)
            )
            counts[depth].append(len(seen))
            assert (await store.metadata(artifact_id)).filename == filename
    print(f"\nstore(filename) round trips at depth 1: {counts[1]}, at depth 8: {counts[8]}")
    assert counts[1] == counts[8], counts
