"""A page of the files below a directory, in filename order, that costs what the page holds.

The whole walk (``MetaStore.subtree``) reads every record below a session
to answer ten of them (issue #12: ``limit=10`` among 100k took 8.8 s). This
walk reads each directory a page at a time in name order
(``MetaStore.children_page``, an index range) and stops once it has enough,
so a page of N files reads about N records plus the directories on the way.

Filename order is the order of the paths as strings, which is not quite the
order of a depth-first walk by name: a directory ``a`` sorts as ``a/``, after
``a.txt`` and ``a-1`` ('.' and '-' sort before '/'). So each directory's
entries go through a small heap keyed by that sort key, and an entry leaves
it only once no unread name can sort before it (the names already read reach
past its key); a directory waits at most until a name past ``<name>/`` is read.

The position to continue from is the last path answered (the cursor), not
anything stored: the walk goes back down that path, and in each directory
on it reads the names after the path's component, plus the few names that
are a prefix of it cut before a character below '/' (looked up one by one),
which are the only smaller names whose key can sort after it.
"""

from __future__ import annotations

import heapq
from typing import NamedTuple

from core.backends.meta.base import MetaStore
from core.nodes import Node, NodeRole
from core.tree.grid import MAX_NAME_BYTES

_FIRST_READ = 16  # entries read first from a directory, at least; each further read doubles
_MAX_READ = 1000  # entries read at once from a directory, at most (one Redis script's inline page)


class Bound(NamedTuple):
    """Answer only paths after ``path`` (or equal to it, with ``inclusive``): a whole path, below the walk's root."""

    path: str
    inclusive: bool


class FilesPage(NamedTuple):
    """Files (path below the walked directory, node) in path order; ``complete``: nothing after them."""

    files: list[tuple[str, Node]]
    complete: bool


class _Walk:
    """One page's walk: the files found so far and when to stop."""

    def __init__(self, meta: MetaStore, now_ns: int, prefix: str, limit: int) -> None:
        self.meta, self.now_ns, self.prefix, self.limit = meta, now_ns, prefix, limit
        self.found: list[tuple[str, Node]] = []
        self.stopped = False  # the page is full, or the walk went past the prefix

    def past_prefix(self, path: str) -> bool:
        """Whether ``path`` (a file's, or a directory's with its '/') and all after it miss the prefix."""
        return path > self.prefix and not path.startswith(self.prefix) and not self.prefix.startswith(path)

    def shown(self, node: Node) -> bool:
        # As Namespace.files_below: an expired entry hides itself (and a directory what is below it),
        # and a workspace's checkpoints are found through it, not as entries.
        return not node.expired(self.now_ns) and node.role is NodeRole.ENTRY and (node.is_dir or node.is_file)

    async def directory(self, ino: int, at: str, bound: Bound | None) -> None:
        """Walk directory ``ino`` (whose paths start with ``at``), answering only what is after ``bound``."""
        queue: list[tuple[str, int, Node]] = []  # (sort key, ino, node): the ino breaks ties of a forged store
        after: str | None = None
        if bound is not None:
            head, deeper, _ = bound.path[len(at):].partition("/")  # the bound starts with ``at``
            # Below ``head``: the names between ``head`` and ``head/`` (``head.txt``) sort before the bound.
            after = head + deeper
            for name in _prefix_names(head):
                node = await self.meta.lookup(ino, name)
                if node is not None and self.shown(node):
                    heapq.heappush(queue, (_key(node), node.ino, node))
        read, more = max(_FIRST_READ, self.limit + 1), True
        while not self.stopped:
            if more:
                page = await self.meta.children_page(ino, after, min(read, _MAX_READ))
                read *= 2
                more = page.more and page.last is not None
                after = page.last if page.last is not None else after
                for node in page.nodes:
                    if self.shown(node):
                        heapq.heappush(queue, (_key(node), node.ino, node))
            # An entry is safe to answer once every unread name sorts after its key.
            while queue and not self.stopped and (not more or after is None or queue[0][0] <= after):
                key, _, node = heapq.heappop(queue)
                await self.entry(node, at, key, bound)
            if not more and not queue:
                return

    async def entry(self, node: Node, at: str, key: str, bound: Bound | None) -> None:
        path = at + key
        if self.past_prefix(path):
            self.stopped = True
            return
        if node.is_file:
            if bound is None or path > bound.path or (bound.inclusive and path == bound.path):
                if path.startswith(self.prefix):
                    self.found.append((path, node))
                    self.stopped = len(self.found) >= self.limit
            return
        if bound is None or path > bound.path:
            await self.directory(node.ino, path, None)
        elif bound.path.startswith(path):
            await self.directory(node.ino, path, bound if bound.path != path else None)
        # else: the whole directory sorts before the bound


def _key(node: Node) -> str:
    """Where an entry's paths sort among its siblings': a directory's are all ``<name>/...``."""
    return f"{node.name}/" if node.is_dir else node.name


def _prefix_names(head: str) -> list[str]:
    """The names at or before ``head`` whose key may sort after a path starting with ``head``.

    ``head`` itself, and each prefix of it cut before a character that sorts
    below '/' (``a`` of ``a.txt``: a directory ``a`` sorts as ``a/``, after
    it); every other smaller name sorts before ``head`` as a key too.

    Each is a lookup, so only names that could exist are made: none longer
    than :data:`MAX_NAME_BYTES` (a name has at least a byte per character).
    The callers refuse a longer ``head`` (a prefix's, a cursor's); this keeps
    a page's lookups bounded whatever reaches here.
    """
    cuts = [head[:cut] for cut in range(1, min(len(head), MAX_NAME_BYTES + 1)) if head[cut] < "/"]
    return [name for name in (*cuts, head) if len(name.encode("utf-8", "surrogatepass")) <= MAX_NAME_BYTES]


async def files_page(
    meta: MetaStore, root: Node, *, now_ns: int, after: Bound | None, prefix: str, limit: int
) -> FilesPage:
    """Up to ``limit`` visible files below ``root`` whose paths start with ``prefix`` and sort after
    ``after``, in path order (strings by code point: UTF-8 byte order)."""
    if limit <= 0:
        return FilesPage([], False)
    if prefix and (after is None or after.path < prefix):
        after = Bound(prefix, True)  # start where the prefix does, not at the first file
    walk = _Walk(meta, now_ns, prefix, limit)
    await walk.directory(root.ino, "", after)
    return FilesPage(walk.found, len(walk.found) < limit)
