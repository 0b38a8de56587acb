"""Directories known not to be entries, so a filename needs no read of them.

A file's filename is the names of the entries above it, up to its scope
root; most files sit right in one, and reading that root's record to learn
it is not an entry was a third of ``metadata()`` (a primary-key read, an
HMAC check and a pydantic parse). A node's role is set when it is made and
never changes, and inode numbers are never reused, so once a directory was
seen not to be an entry that stays true for as long as the number means
anything; a directory removed since reads as "not known", which makes the
same filename (the path ends there either way).
"""

from __future__ import annotations

from collections.abc import Iterable

from core.nodes import Node, NodeRole

MAX_KNOWN = 100_000  # inode numbers kept; forgotten wholesale past this (a few MiB at most)


class NonEntries:
    """A bounded set of inode numbers whose nodes are not entries (scope roots, the fixed tree)."""

    def __init__(self, limit: int = MAX_KNOWN) -> None:
        self._inos: set[int] = set()
        self._limit = limit

    def __contains__(self, ino: int) -> bool:
        return ino in self._inos

    def learn(self, nodes: Iterable[Node]) -> None:
        """Remember the non-entries among ``nodes`` (records just read and verified)."""
        for node in nodes:
            if node.role is not NodeRole.ENTRY and node.ino not in self._inos:
                if len(self._inos) >= self._limit:
                    self._inos.clear()
                self._inos.add(node.ino)
