"""Lookups answered from a page of a directory read just before: a name walk at one round trip a page.

A tool that ``stat``s a directory's files one after the other (``ls`` of
names it already knows, ``rsync``, a backup) costs the mount one lookup each,
and on Redis each lookup is a round trip. When lookups in a directory come in
name order, the mount reads the next page of the directory (its records,
verified as any) and answers the following lookups from it: a window of
names ``first..last`` known to be exactly what the page held.

A window is only as good as the moment it was read. It is dropped:

- on every change this mount makes (:meth:`Listings.drop`, around every
  request that may change metadata, :mod:`fusefs.operations`);
- on every change notice, this mount's own included, and on a resync
  (:mod:`fusefs.invalidation`);
- and never used while notices cannot be trusted (a writer that sends none
  is about): then every lookup asks the store.

A page whose read overlapped any of those (the epoch moved meanwhile) is not
kept. Bounded: :data:`MAX_WINDOWS` directories, one window of :data:`PAGE_NAMES` names each.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from core.nodes import Node

MAX_WINDOWS = 8  # directories with a window at a time (least recently used goes): ~1,000 records at most
PAGE_NAMES = 128  # names one read ahead covers


@dataclass(slots=True)
class Window:
    parent: Node
    first: str  # every name in first..last (inclusive) is in ``nodes``, or is not an entry
    last: str
    ended: bool  # no name after ``last``
    nodes: dict[str, Node]

    def covers(self, name: str) -> bool:
        return self.first <= name and (name <= self.last or self.ended)


class Listings:
    """The windows of the directories being walked, and where each walk has got to."""

    def __init__(self, max_windows: int = MAX_WINDOWS) -> None:
        self.epoch = 0  # moved by every change anyone made, as far as this mount knows
        self.max_windows = max_windows
        self._windows: OrderedDict[int, Window] = OrderedDict()
        self._walks: OrderedDict[int, str] = OrderedDict()  # parent ino -> the name last looked up there
        self.hits = self.reads = 0

    def drop(self) -> None:
        """Something changed (or may have): no window read before now may answer, and a walk
        starts afresh (lookups between changes, as a create's, are no walk worth a page)."""
        self.epoch += 1
        self._windows.clear()
        self._walks.clear()

    def find(self, parent_ino: int, name: str) -> Window | None:
        """The window that knows whether ``name`` is in ``parent_ino``, if one does."""
        window = self._windows.get(parent_ino)
        if window is None or not window.covers(name):
            return None
        self._windows.move_to_end(parent_ino)
        self.hits += 1
        return window

    def walking(self, parent_ino: int, name: str) -> bool:
        """Whether a lookup of ``name`` (an entry) that missed carries on a walk in name order (worth a page)."""
        previous = self._walks.get(parent_ino)
        self._walks[parent_ino] = name
        self._walks.move_to_end(parent_ino)
        if len(self._walks) > self.max_windows:
            self._walks.popitem(last=False)
        return previous is not None and previous < name

    def keep(self, epoch: int, parent: Node, first: str, node: Node | None, page: list[Node], last: str | None,
             more: bool) -> None:
        """A page read since ``epoch``: ``first``'s entry (``node``), then the names after it up to ``last``."""
        if epoch != self.epoch:
            return  # a change crossed the read: what it says may be older than what the kernel knows
        nodes = {n.name: n for n in page}
        if node is not None:
            nodes[first] = node
        self.reads += 1
        self._windows[parent.ino] = Window(parent, first, last if last is not None and last > first else first,
                                           not more, nodes)
        self._windows.move_to_end(parent.ino)
        if len(self._windows) > self.max_windows:
            self._windows.popitem(last=False)
