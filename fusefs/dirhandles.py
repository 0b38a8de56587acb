"""An open directory: a listing read from the store a page at a time.

A handle once held its directory's whole listing from ``opendir`` to
``releasedir`` (issue #16: 102 MiB at 20,000 entries, and the mount frozen
for the 775 ms it took to decode them). Now it holds one page of
``page_size`` entries: the page the reader is in.

Offsets. The kernel resumes a listing at the offset of the last entry it
used, so each entry's offset is its position in the listing (``.`` is 1,
``..`` 2, the first name 3, ...), and the page held remembers the name its
first entry follows. Resuming inside the held page, or at its end, goes on
by *name*: the next page is the entries whose names sort after the last one
read. So an entry present throughout the listing comes exactly once, and
one made or removed meanwhile may or may not (readdir(3)'s guarantee).
An offset outside the held page (a ``seekdir`` far back) is found again by
counting entries from the start, which is exact for a directory that did
not change meanwhile.
"""

from __future__ import annotations

import trio

from core.nodes import Node
from core.tree.namespace import Namespace

# Entries one open directory reads and holds at a time: a few kernel buffers' worth, and a few
# milliseconds of decoding on the loop per page.
PAGE_SIZE = 256


class OpenDirectory:
    __slots__ = ("_base", "_last", "_more", "_page", "node", "page_size")

    def __init__(self, node: Node, page_size: int = PAGE_SIZE) -> None:
        self.node = node
        self.page_size = page_size
        self._page: list[Node] | None = None  # the page held; None: none read yet
        self._base = 2  # offset of the entry just before the page's first (``..`` for the first page)
        self._last: str | None = None  # the last name the page covered, visible or not
        self._more = False  # whether names follow the page

    @property
    def held(self) -> int:
        """How many records this handle holds now (what a listing costs in memory)."""
        return len(self._page) if self._page is not None else 0

    async def entries_from(self, ns: Namespace, offset: int) -> list[tuple[Node, int]]:
        """The names to answer a request resuming at ``offset`` (2 or more), with each one's offset.

        All from one page: every read from the store happens before the first reply, so a request
        called off by the watchdog has replied nothing (its answer is EIO, whole). An empty answer
        is the listing's end.
        """
        if offset == 2 or self._page is None or offset < self._base:
            await self._read(ns, None, 2)
        while True:
            assert self._page is not None
            end = self._base + len(self._page)
            if offset < end:
                first = offset - self._base
                return [(node, self._base + i + 1) for i, node in enumerate(self._page[first:], start=first)]
            if not self._more:
                return []
            await trio.lowlevel.checkpoint()  # a seek far ahead reads page after page: let others in between
            await self._read(ns, self._last, end)

    async def _read(self, ns: Namespace, after: str | None, base: int) -> None:
        page = await ns.list_page(self.node, after, self.page_size)
        self._page, self._base, self._last, self._more = page.nodes, base, page.last, page.more
