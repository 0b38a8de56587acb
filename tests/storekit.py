"""Building a store on each backend the suites run on.

Kept out of conftest.py so test modules can import it by a name that is
unique in the tree (tests/fuse has a conftest of its own).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
from servers import redis_s3_settings

from core import ArtifactStore, Limits, shards
from core.backends.meta.base import MetaStore
from core.errors import AlreadyExistsError
from core.infra.clock import ManualClock
from core.nodes import Node, Space
from core.tree.namespace import Namespace

BACKENDS = ["memory", "fs-sqlite", "redis-s3"]


# Numbers no store's own counter reaches in a test: ids made here name inodes no store hands out.
_TEST_NUMBERS = itertools.count(1 << 39)


def minted_id(space: Space | None) -> str:
    """An artifact id as a store's ``new_artifact_id`` makes one, for nodes a test builds by hand and
    inserts straight into a metadata store: it names a fresh inode of the space's shard."""
    shard = shards.UPPER if space is None else shards.of_space(space)
    return shards.artifact_id_of(shards.ino(shard, next(_TEST_NUMBERS)))


def make_store(backend: str, root: Path, clock: ManualClock, limits: Limits, **kw) -> ArtifactStore:
    """A store on ``backend`` rooted at ``root`` (its data dir, or its key prefixes on redis-s3)."""
    if backend == "memory":
        return ArtifactStore(storage_provider="memory", session_provider="memory", clock=clock, limits=limits, **kw)
    if backend == "fs-sqlite":
        return ArtifactStore(
            storage_provider="filesystem", session_provider="sqlite", fs_root=root, clock=clock, limits=limits, **kw
        )
    if backend == "redis-s3":  # the session's redis-server and moto, with key prefixes of this root's own
        return ArtifactStore(settings=redis_s3_settings(root), clock=clock, limits=limits, **kw)
    raise ValueError(backend)


async def commit_bytes(ns: Namespace, ino: int, data: bytes) -> Node:
    """What the mount does at close: the file's fresh node, a new blob, one commit."""
    node = await ns.get(ino)
    old_blob = node.artifact.blob_key  # type: ignore[union-attr]
    key, size, sha256 = await ns.put_blob(node, data)
    ns.set_content(node, key, size, sha256)
    return await ns.commit(node, old_blob=old_blob)


def hold(target: Any, method: str, step: Callable[[], Awaitable[object]]) -> None:
    """Run ``step`` (the other host's change) once, just before ``target.<method>`` runs.

    How the race tests force an interleaving instead of hoping for it: the
    other host's step lands between this host's read and its write.
    """
    original = getattr(target, method)

    async def held(*args: Any, **kwargs: Any) -> Any:
        setattr(target, method, original)
        await step()
        return await original(*args, **kwargs)

    setattr(target, method, held)


async def racing_inserts(stores: Sequence[MetaStore], node: Callable[[], Node], times: int) -> Counter[str]:
    """``times`` inserts of one name at once, spread over ``stores`` (hosts): how many 'won', how many
    'lost' (refused as taken)."""
    outcomes: Counter[str] = Counter()

    async def create(store: MetaStore) -> None:
        try:
            await store.insert(node())
            outcomes["won"] += 1
        except AlreadyExistsError:
            outcomes["lost"] += 1

    async with anyio.create_task_group() as group:
        for i in range(times):
            group.start_soon(create, stores[i % len(stores)])
    return outcomes
