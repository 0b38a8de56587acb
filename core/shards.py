"""Where a node's metadata lives: its scope's shard (issue #17).

A scope (one session, one user, or a sandbox's shared area) never shares
an operation with another: renames and hard links stop at its edge
(EXDEV), quotas are per scope, a directory tree lies inside one. So a
store may keep each scope's keys together (one Redis Cluster hash slot),
and an operation on a scope touches that one place.

A scope's shard is a hash of its usage key, so any process finds it with no
lookup; shard :data:`UPPER` holds the fixed upper tree (the root, the
sandboxes, their ``sessions/`` and ``users/``). A shard number travels in
what names a node:

* an inode number is ``shard << INO_BITS | n``, ``n`` counted per shard, so
  a read by inode goes straight to its shard (below 2**52: exact even in a
  double, which is how Redis' Lua sees a number);
* an artifact id is 32 hex digits whose first three are its scope's shard,
  so ``retrieve(artifact_id)`` finds its shard from the id alone; the
  sharded store also puts its inode's number in the next ten
  (:func:`artifact_id_of`), so it needs no map from ids to inodes;
* a blob key is ``<grid key>...`` and names its scope, hence its shard.

Every backend gets ids of this form; only the sharded one reads them.
"""

from __future__ import annotations

import re
import secrets
import zlib

from core.nodes import Space

SHARDS = 4096  # shard numbers 0..4095: three hex digits of an artifact id
INO_BITS = 40  # inode numbers per shard: 2**40
UPPER = 0
_ARTIFACT_ID = re.compile(r"[0-9a-f]{32}")


def of_usage_key(usage_key: str) -> int:
    """The shard of the scope whose usage key this is (never :data:`UPPER`)."""
    return 1 + zlib.crc32(usage_key.encode("utf-8", "surrogateescape")) % (SHARDS - 1)


def of_space(space: Space) -> int:
    return of_usage_key(space.usage_key)


def of_ino(ino: int) -> int:
    return ino >> INO_BITS


def ino(shard: int, number: int) -> int:
    """The inode number ``number`` of ``shard``."""
    return shard << INO_BITS | number


def number(ino: int) -> int:
    """Inode ``ino``'s number within its shard (``n``)."""
    return ino & ((1 << INO_BITS) - 1)


def of_artifact(artifact_id: str) -> int | None:
    """The shard an artifact id names, or None for an id no store made (so none holds it)."""
    if not isinstance(artifact_id, str) or not _ARTIFACT_ID.fullmatch(artifact_id):
        return None
    return int(artifact_id[:3], 16)


def new_artifact_id(space: Space | None) -> str:
    """A fresh artifact id of ``space`` (None: the upper tree): 116 random bits after its shard."""
    return f"{UPPER if space is None else of_space(space):03x}{secrets.token_hex(15)[:29]}"


_NUMBER_DIGITS = INO_BITS // 4
ID_TAIL = 32 - 3 - _NUMBER_DIGITS  # the random digits of an :func:`artifact_id_of` id, after its inode's


def artifact_id_head(ino: int) -> str:
    """What every :func:`artifact_id_of` id for inode ``ino`` starts with: its shard, its number there."""
    return f"{of_ino(ino):03x}{number(ino):0{_NUMBER_DIGITS}x}"


def artifact_id_of(ino: int) -> str:
    """A fresh artifact id for the file of inode ``ino``: its shard, its number there, 76 random bits."""
    return artifact_id_head(ino) + secrets.token_hex(10)[:ID_TAIL]


def ino_of_artifact(artifact_id: str) -> int | None:
    """The inode an :func:`artifact_id_of` id names, or None for an id that is not one."""
    shard = of_artifact(artifact_id)
    return None if shard is None else ino(shard, int(artifact_id[3 : 3 + _NUMBER_DIGITS], 16))


_BLOB_OF = re.compile(r"/([0-9a-f]{32})(?=[./]|$)")


def of_blob_key(key: str) -> int | None:
    """The shard of the artifact a blob key names (its grid key's last artifact id), if it names one."""
    found = _BLOB_OF.findall(key)
    return of_artifact(found[-1]) if found else None
