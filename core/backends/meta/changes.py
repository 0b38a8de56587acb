"""Change notices: how one process learns that another changed the tree.

A metadata store shared by several processes (Redis, one server for many
hosts) announces every committed change. Whoever keeps copies of the tree
(a mount's kernel caches) follows the announcements and drops what they
name. Notices are hints, never the truth: one may be lost (a reconnect), so
followers must also bound how long they trust a copy on their own.

A :class:`Change` names what moved in the two shapes a cache holds:
directory *entries* (a parent inode and a name, whose mapping to a child
changed or went) and *inodes* (whose record, content or existence changed).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from enum import Enum
from typing import Protocol


class ChangeOp(str, Enum):
    INSERT = "insert"
    UPDATE = "update"
    RENAME = "rename"
    EXCHANGE = "exchange"
    REMOVE = "remove"
    RESYNC = "resync"  # not a change: notices may have been lost (the feed reconnected); trust no copy
    OTHER = "other"  # an op this version does not know: its entries and inodes still count


# A frozen dataclass, not a pydantic model: a busy store announces thousands of these a second.
@dataclass(frozen=True, slots=True)
class Change:
    op: ChangeOp
    entries: tuple[tuple[int, bytes], ...] = ()  # (parent ino, raw name)
    inodes: tuple[int, ...] = ()
    origin: str = ""  # the store instance that made it; "" when it did not say
    seq: int = 0  # its number among its channel's notices (a feed that skips one lost it); 0: none


RESYNC = Change(ChangeOp.RESYNC)

# The origin stamped on changes made in this context, when not the store's own (see replying).
_REPLYING: ContextVar[str | None] = ContextVar("artifactfs_replying_origin", default=None)


@contextmanager
def replying(origin: str) -> Iterator[None]:
    """Stamp the changes made in this context (and tasks started from it) with ``origin``.

    A mount skips the notices of its own changes because the kernel learnt of
    them in the reply that made them. That holds only for changes made by FUSE
    requests: the same process also changes the store where no reply tells the
    kernel anything (``--serve``'s presigned uploads, the expiry sweep). So the
    mount runs its FUSE requests under ``replying(token)`` and skips only notices
    stamped ``token``; everything else it writes carries the store's own origin
    and is followed like another host's change.
    """
    token = _REPLYING.set(origin)
    try:
        yield
    finally:
        _REPLYING.reset(token)


def stamp(default: str) -> str:
    """The origin to write into a notice made here: the replying one if set, else ``default``."""
    return _REPLYING.get() or default


class ChangeFeed(Protocol):
    """The changes announced on one store, as they come.

    Used from one event loop (the one that opened it). ``next_batch`` waits for
    at least one change and never fails for a lost connection: it reconnects,
    with backoff, for as long as it is awaited, and reports the gap as
    :data:`RESYNC`.
    """

    origin: str  # what this process's own store writes into its notices

    async def open(self) -> None:
        """Subscribe; changes committed after this returns are delivered."""

    async def next_batch(self) -> list[Change]:
        """The next changes, in the order they were committed (at least one)."""

    async def unannounced(self) -> int:
        """A count that moves with every change made on the store without a notice; 0 when there
        was none lately. While it is not 0, notices alone do not tell a follower everything."""

    async def watch(self, shards: set[int]) -> None:
        """Follow the notices of these shards too (:mod:`core.shards`): a follower asks for those
        it holds copies of, so it never reads the notices of the rest of the store."""

    async def unwatch(self, shards: set[int]) -> None:
        """Stop following these shards (never the upper tree's): the follower holds no copy of theirs."""

    def following(self, shard: int) -> float | None:
        """Since when (``time.monotonic``) the notices of ``shard`` are followed; None: not (yet)."""

    async def close(self) -> None: ...
