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

Bounded: at most ``limit`` inodes are held. Past that, or while notices
cannot be trusted (a writer that announces nothing is about), replies get
the short timeout and nothing is recorded: a short-lived cache needs no
taking back. The kernel's ``forget`` of an inode drops its record, so a
long-running mount does not fill up with inodes the kernel let go.
"""

from __future__ import annotations

from collections.abc import Iterator

from core.nodes import Node

HANDED_LIMIT = 32_768  # inodes recorded at most (some 200 bytes each: ~6 MiB)


class Handed:
    """The inodes (and the entries leading to them) replied with the long cache time."""

    def __init__(self, root_ino: int, long_seconds: float, short_seconds: float, limit: int = HANDED_LIMIT) -> None:
        self.root_ino = root_ino  # the mount's root: it has no entry of ours to take back
        self.long_seconds = long_seconds
        self.short_seconds = short_seconds
        self.limit = limit
        self.trusted = True  # False while a writer that sends no notices is about: short times for all
        self._held: dict[int, tuple[int, str]] = {}  # ino -> the entry (parent ino, name) last handed for it
        self._extra: dict[tuple[int, str], int] = {}  # further names of hard-linked inodes (rare)

    def __len__(self) -> int:
        return len(self._held) + len(self._extra)

    def hand(self, node: Node) -> float:
        """The cache time for a reply about ``node``; recorded if it is the long one."""
        if not self.trusted:
            return self.short_seconds
        ino = node.ino
        entry = (node.parent, node.name)
        held = self._held.get(ino)
        if held is None:
            if len(self._held) + len(self._extra) >= self.limit:
                return self.short_seconds
            self._held[ino] = entry
        elif held != entry and ino != self.root_ino:
            if entry not in self._extra and len(self._held) + len(self._extra) >= self.limit:
                return self.short_seconds
            self._extra[entry] = ino
        return self.long_seconds

    def forget(self, ino: int) -> None:
        """The kernel dropped ``ino`` (and so every entry leading to it)."""
        self._held.pop(ino, None)

    def take_all(self) -> tuple[list[tuple[int, bytes]], list[int]]:
        """Everything recorded, as (entries, inodes) to invalidate; the record starts empty again."""
        held, extra = self._held, self._extra
        self._held, self._extra = {}, {}
        entries = [(parent, name.encode()) for parent, name in self._entries(held, extra)]
        return entries, list(held)

    def _entries(self, held: dict[int, tuple[int, str]], extra: dict[tuple[int, str], int]) -> Iterator[tuple[int, str]]:
        for ino, entry in held.items():
            if ino != self.root_ino:
                yield entry
        yield from extra
