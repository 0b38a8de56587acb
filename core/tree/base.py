"""What every part of the tree stands on: its backends, its clock, and the rules for re-reading a record.

The :class:`~core.tree.namespace.Namespace` is one object made of parts, one
module each (the tree itself, content, quotas); they share this state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import anyio

from core.backends.blobs.base import BlobStore
from core.backends.meta.base import MetaStore
from core.infra.clock import Clock
from core.errors import FrozenError
from core.nodes import Node, NodeRole
from core.settings import Limits

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
NS = 1_000_000_000

MAX_COMMIT_RACES = 100  # commits of one file that each find another version came first
MAX_RACES = 100  # conditional writes of one record that each find it changed meanwhile


def expiry_ns(start_ns: int, ttl: int | None) -> int | None:
    """When what is given ``ttl`` seconds at ``start_ns`` expires; None for no TTL (it never does)."""
    return None if ttl is None else start_ns + ttl * NS


Change = Callable[[Node], object]  # applies one change to a node record, as read or as re-read


def refuse_frozen(node: Node) -> None:
    """A checkpoint and what is in it never change (issue #10): EROFS in the mount."""
    if node.role is NodeRole.FROZEN:
        raise FrozenError(f"{node.name!r} is in a checkpoint: read-only")


def adopt(node: Node, stored: Node) -> None:
    """Make the caller's ``node`` object the record as stored (callers keep using their object)."""
    if stored is not node:
        for field in Node.model_fields:
            setattr(node, field, getattr(stored, field))


class TreeBase:
    """The backends and the clock, and nothing else: each part of the tree adds its methods."""

    def __init__(self, meta: MetaStore, blobs: BlobStore, clock: Clock, limits: Limits) -> None:
        self.meta, self.blobs, self.clock, self.limits = meta, blobs, clock, limits
        self._commit_locks: dict[int, anyio.Lock] = {}
        self._intents: dict[str, int] = {}  # blob key -> the time its upload intent was queued for (issue #16)

    def now(self) -> int:
        return self.clock.now_ns()
