"""Index answers held against the signed records they point at (issue #16).

A backend finds records through indexes it keeps beside them: SQLite's
derived columns (``parent``, ``name``, ``artifact_id``, ``expires_at``...),
Redis's entry hashes, id map, expiry zset and search sets. Only the record is
signed, so whoever can write the database can point an index anywhere: make
a persistent file look expired, or answer another inode for a name or an id.
Each answer is therefore kept only if the record itself says what the index
said; a mismatch is logged and dropped, never acted on.

Also here: :class:`RevisionWatermark`, which refuses a record older than one
this process already read (a signed record written back: a rollback).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Collection, Iterable, Sequence

from core.errors import ArtifactCorruptedError
from core.models import Scope
from core.nodes import Node

log = logging.getLogger(__name__)


def _dropped(node: Node, index: str) -> None:
    log.warning("metadata index %s answers inode %d, whose signed record disagrees: ignored", index, node.ino)


def is_entry(node: Node | None, parent: int, name: str) -> Node | None:
    """``node``, seen through that name, if its record says it is entry ``name`` of ``parent``."""
    if node is None:
        return None
    if not node.has_name(parent, name):
        _dropped(node, f"entry {parent}/{name!r}")
        return None
    return node.seen_as(parent, name)


def of_parent(entries: Iterable[tuple[str, Node]], parent: int) -> list[Node]:
    """The (name, node) entries of directory ``parent`` whose records say so, each seen through its name."""
    kept = []
    for name, node in entries:
        if node.has_name(parent, name):
            kept.append(node.seen_as(parent, name))
        else:
            _dropped(node, f"children of {parent}")
    return kept


def has_artifact(node: Node | None, artifact_id: str) -> Node | None:
    """``node`` if its record holds artifact ``artifact_id``."""
    if node is None:
        return None
    if node.artifact is None or node.artifact.artifact_id != artifact_id:
        _dropped(node, f"artifact id {artifact_id!r}")
        return None
    return node


def is_expired(nodes: Iterable[Node], now_ns: int) -> list[Node]:
    """The nodes whose records say they expired by ``now_ns``: cleanup deletes nothing else."""
    kept = []
    for node in nodes:
        if node.expired(now_ns):
            kept.append(node)
        else:
            _dropped(node, "expiry")
    return kept


def in_space(
    nodes: Iterable[Node], sandbox_id: str, scope: Scope | None, session_id: str | None, user_id: str | None
) -> list[Node]:
    """The artifacts whose records say they lie in the space a search asked for."""
    kept = []
    for node in nodes:
        space = node.space
        if (
            node.artifact is not None
            and space is not None
            and space.sandbox_id == sandbox_id
            and (scope is None or space.scope is scope)
            and (session_id is None or space.session_id == session_id)
            and (user_id is None or space.user_id == user_id)
        ):
            kept.append(node)
        else:
            _dropped(node, f"search of {sandbox_id}")
    return kept


def sharing(nodes: Iterable[Node], artifact_id: str) -> list[Node]:
    """The files whose records say they hold a blob of artifact ``artifact_id`` (not their own)."""
    kept = []
    for node in nodes:
        if node.artifact is not None and node.artifact.blob_of == artifact_id:
            kept.append(node)
        else:
            _dropped(node, f"sharers of {artifact_id}")
    return kept


def along(nodes: Iterable[Node], parent: int, names: Sequence[str]) -> list[Node]:
    """The prefix of a path walk whose records chain: each the entry ``names[i]`` of the one before."""
    kept: list[Node] = []
    for node, name in zip(nodes, names):
        at = kept[-1].ino if kept else parent
        if not node.has_name(at, name):
            _dropped(node, f"path below {parent}")
            break
        kept.append(node.seen_as(at, name))
    return kept


def below(nodes: Iterable[Node], root: int) -> list[Node]:
    """The nodes whose records' parents lead up to ``root`` through nodes of the answer."""
    by_ino = {node.ino: node for node in nodes}
    inside: dict[int, bool] = {root: True}

    def reaches(ino: int) -> bool:
        chain = []
        while ino not in inside:
            node = by_ino.get(ino)
            if node is None or ino in chain:
                inside[ino] = False
                break
            chain.append(ino)
            ino = node.parent
        verdict = inside[ino]
        for seen in chain:
            inside[seen] = verdict
        return verdict

    kept = []
    for node in by_ino.values():
        if reaches(node.ino):
            kept.append(node)
        else:
            _dropped(node, f"subtree of {root}")
    return kept


def up_from(nodes: Iterable[Node], inos: Collection[int]) -> dict[int, Node]:
    """The nodes of a lineage answer that the records' parents reach from ``inos``."""
    by_ino = {node.ino: node for node in nodes}
    kept: dict[int, Node] = {}
    for ino in inos:
        while ino in by_ino and ino not in kept:
            node = kept[ino] = by_ino[ino]
            ino = node.parent
    for node in by_ino.values():
        if node.ino not in kept:
            _dropped(node, "lineage")
    return kept


class RevisionWatermark:
    """The highest revision this process has read of each record, for the most recent ``size`` records.

    A record never goes back to a lower revision in the store's own hands
    (every write stores ``rev + 1``; inode numbers are never reused), so a
    lower one is an old signed record written back (a rollback): refused as
    corrupted. Bounded, so a record not read for a while is checked no more;
    and per process, so a rollback before this process read the record is
    not seen (SECURITY.md).
    """

    def __init__(self, size: int = 65536) -> None:
        self._size = size
        self._seen: OrderedDict[int, int] = OrderedDict()

    def check(self, node: Node) -> Node:
        seen = self._seen.get(node.ino)
        if seen is not None and node.rev < seen:
            log.error("inode %d read at revision %d after revision %d: rolled back", node.ino, node.rev, seen)
            raise ArtifactCorruptedError(
                f"the metadata record of inode {node.ino} is older than one already read (revision {node.rev} < {seen})"
            )
        # pop and set rather than move_to_end: the store may be read from two threads (its loop, the bridge's)
        self._seen.pop(node.ino, None)
        self._seen[node.ino] = node.rev if seen is None else max(seen, node.rev)
        while len(self._seen) > self._size:
            try:
                self._seen.popitem(last=False)
            except KeyError:
                break
        return node
