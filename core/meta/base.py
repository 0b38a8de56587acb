"""The metadata protocol every backend (memory, SQLite, Redis) implements.

Each method that changes more than one record is one transaction in the
backend. Usage (bytes and file count per user or session) is kept by the
backend in the same transaction as the change that alters it, so quotas
never drift from what is stored.
"""

from __future__ import annotations

from typing import Protocol

from pydantic import ValidationError

from ..errors import ArtifactCorruptedError
from ..models import Scope, Usage
from ..nodes import Node
from ..signing import RecordSigner


def decode_record(signer: RecordSigner, ino: int, record: bytes | None, sig: str | None) -> Node:
    """A stored node record, trusted only once its signature and inode number check out.

    Every backend loads records through here, so a record edited outside
    the store reads as corrupted the same way everywhere (DESIGN §6).
    """
    if record is None or sig is None or not signer.verify(record, sig):
        raise ArtifactCorruptedError(f"the metadata record of inode {ino} fails its signature")
    try:
        node = Node.model_validate_json(record)
    except ValidationError as exc:
        raise ArtifactCorruptedError(f"the metadata record of inode {ino} is unreadable") from exc
    if node.ino != ino:
        raise ArtifactCorruptedError(f"the metadata record of inode {ino} names inode {node.ino}")
    return node


class MetaStore(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def get(self, ino: int) -> Node | None: ...

    async def lookup(self, parent: int, name: str) -> Node | None: ...

    async def children(self, parent: int) -> list[Node]: ...

    async def find_artifact(self, artifact_id: str) -> Node | None: ...

    async def search(
        self, sandbox_id: str, *, scope: Scope | None, session_id: str | None, user_id: str | None
    ) -> list[Node]:
        """File nodes of a sandbox matching the given space fields (indexed)."""
        ...

    async def insert(self, node: Node, *, replace: bool = False) -> tuple[Node, Node | None]:
        """Add ``node`` under ``node.parent``; returns it with its new ino.

        With ``replace`` an existing non-directory entry of that name is
        removed in the same transaction and returned; otherwise an existing
        name raises :class:`AlreadyExistsError`.
        """
        ...

    async def update(self, node: Node) -> None:
        """Rewrite an existing node (attributes, a committed version)."""
        ...

    async def rename(self, node: Node, new_parent: int, new_name: str, *, replace: bool) -> Node | None:
        """Move ``node``; returns the node it replaced, if any.

        Replacing a directory needs it empty (DirectoryNotEmptyError), and a
        file cannot replace a directory or the reverse.
        """
        ...

    async def exchange(self, a: Node, b: Node) -> None:
        """Swap two entries atomically (RENAME_EXCHANGE)."""
        ...

    async def remove(self, node: Node) -> None:
        """Unlink ``node``; a directory must be empty."""
        ...

    async def expired(self, now_ns: int, limit: int = 1000) -> list[Node]: ...

    async def usage(self, usage_key: str) -> Usage: ...

    async def totals(self) -> Usage: ...
