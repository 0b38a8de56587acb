"""What the kernel was told it may cache for long, so that all of it can be taken back.

On a store that announces its changes (Redis), the change feed tells a mount
which names and inodes another host changed, and the mount drops exactly
those from the kernel's caches (:mod:`fusefs.invalidation`). The kernel can
then keep entries and attributes for minutes instead of a second, which is
what makes a repeated ``stat`` or ``ls -l`` free. But a notice may be lost (a
reconnect: the feed reports a RESYNC), and FUSE has no "forget everything"
call: the mount must name each entry and inode it wants dropped. So every
reply that lets the kernel cache something for long is recorded here, and a
resync takes the whole record back.

Bounded: at most ``limit`` names are held. Past that, or while notices
cannot be trusted (a writer that announces nothing is about), replies get
the short timeout and nothing is recorded: a short-lived cache needs no
taking back.

The kernel's ``forget`` of an inode drops its record, so a long-running
mount does not fill up with inodes the kernel let go. But a FORGET may take
back only part of what the kernel holds: it counts the replies that told it
of an inode (lookup, create, mkdir, mknod, symlink, link, each readdirplus
entry but ``.`` and ``..``), and sends FORGET(ino, n) for n of them it could
not use (a reply to a request it had given up on, a readdirplus entry it
could not link) while it may still hold the inode through others. So the mount counts those replies too
(:meth:`Handed.looked_up`) and drops a record only when the count is back
at zero; counting a reply the kernel then dropped unseen errs on keeping.
Counts are kept for at most ``4 * limit`` inodes: beyond, an inode is not
counted, and its record is dropped at its first FORGET, as if it had one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextvars import ContextVar

from core.nodes import Node

# When (time.monotonic) the FUSE request being answered in this context began: whatever it read of
# the store, it read after then (fusefs.errnos sets it; fusefs.invalidation compares it with when
# the notices of a shard began to be followed).
REQUEST_STARTED: ContextVar[float | None] = ContextVar("artifactfs_request_started", default=None)

HANDED_LIMIT = 32_768  # inodes recorded at most (some 200 bytes each: ~6 MiB)


class Handed:
    """The inodes (and the entries leading to them) replied with the long cache time."""

    def __init__(self, root_ino: int, long_seconds: float, short_seconds: float, limit: int = HANDED_LIMIT) -> None:
        self.root_ino = root_ino  # the mount's root: it has no entry of ours to take back
        self.long_seconds = long_seconds
        self.short_seconds = short_seconds
        self.limit = limit
        self.trusted = True  # False while a writer that sends no notices is about: short times for all
        # Whether the notices that would drop what a reply about a node lets the kernel keep are followed
        # (its shard's and its entry's: fusefs.invalidation); None: all are.
        self.followed: Callable[[Node], bool] | None = None
        self._held: dict[int, tuple[int, str]] = {}  # ino -> the entry (parent ino, name) last handed for it
        self._extra: dict[int, set[tuple[int, str]]] = {}  # ino -> its further names (hard links, rare)
        self._extras = 0  # names in _extra
        # ino -> the kernel's lookup count of it, as our replies made it (not the record: a resync
        # takes the record back, but the kernel keeps its inodes and their counts)
        self._lookups: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._held) + self._extras

    def hand(self, node: Node) -> float:
        """The cache time for a reply about ``node``; recorded if it is the long one."""
        if not self.trusted or (self.followed is not None and not self.followed(node)):
            return self.short_seconds
        ino = node.ino
        entry = (node.parent, node.name)
        held = self._held.get(ino)
        if held is None:
            if len(self) >= self.limit:
                return self.short_seconds
            self._held[ino] = entry
        elif held != entry and ino != self.root_ino:
            names = self._extra.get(ino)
            if names is None or entry not in names:
                if len(self) >= self.limit:
                    return self.short_seconds
                self._extra.setdefault(ino, set()).add(entry)
                self._extras += 1
        return self.long_seconds

    def looked_up(self, ino: int) -> None:
        """A reply added one to the kernel's lookup count of ``ino`` (see the module's docstring)."""
        count = self._lookups.get(ino)
        if count is not None:
            self._lookups[ino] = count + 1
        elif len(self._lookups) < 4 * self.limit:
            self._lookups[ino] = 1

    def forget(self, ino: int, nlookup: int) -> None:
        """The kernel let go of ``nlookup`` of its lookups of ``ino``; at none left, of the inode
        (and so of every entry leading to it)."""
        left = self._lookups.pop(ino, 0) - nlookup
        if left > 0:
            self._lookups[ino] = left
            return
        self._held.pop(ino, None)
        self._extras -= len(self._extra.pop(ino, ()))

    def inodes_and_parents(self) -> set[int]:
        """Every inode recorded and every directory whose entry of one is recorded: what notices
        must still reach the mount about (through their shards: fusefs.invalidation)."""
        found = set(self._held)
        found.update(parent for parent, _ in self._held.values())
        for names in self._extra.values():
            found.update(parent for parent, _ in names)
        return found

    def take_all(self) -> tuple[list[tuple[int, bytes]], list[int]]:
        """Everything recorded, as (entries, inodes) to invalidate; the record starts empty again."""
        held, extra = self._held, self._extra
        self._held, self._extra, self._extras = {}, {}, 0
        entries = [(parent, name.encode()) for parent, name in self._entries(held, extra)]
        return entries, list(held)

    def _entries(
        self, held: dict[int, tuple[int, str]], extra: dict[int, set[tuple[int, str]]]
    ) -> Iterator[tuple[int, str]]:
        for ino, entry in held.items():
            if ino != self.root_ino:
                yield entry
        for names in extra.values():
            yield from names
