"""The metadata model: a tree of nodes, as JuiceFS keeps one in Redis.

Every directory, file, symlink and special file (FIFO, device, socket) is a
:class:`Node`; a file node carries the artifact fields, a special file only
its type and device number (no bytes, so never an artifact). A node records
its parent and its name there, so an artifact's filename is derived by
walking up to its scope root and a rename of a directory is one record
change, whatever lies below it.

A non-directory may have more names (hard links, issue #13): ``links`` holds
them, in the signed record like the first, so every name an index answers is
checked against the record. The first name (``parent``/``name``) is the
*primary* one: the library's filename. A node read through a name (a lookup,
a listing) is a *view*: the same record with that name first and the others
in ``links``. A view has the same names and revision as the record, so
writing one back changes nothing but which name is primary; name ops (unlink,
rename) act on the name a view was reached by.
"""

from __future__ import annotations

import stat
from enum import Enum
from typing import Any

from pydantic import BaseModel, Field

from core.models import NamespaceType, Scope

ROOT_INO = 1
# The session_meta key of a session a checked uid made through the mount (``mkdir sessions/<id>``): that uid.
# Signed with the record, so a session's origin cannot be forged (core.api.access.check_session_join).
MADE_BY_UID = "made_by_uid"


def _omitted(default: Any = None, *, default_factory: Any = None) -> Any:
    """A record field left out of the record while it holds its default, and read back as it.

    Records are most of a Redis store's memory (issue #17). Fields SQLite reads from a record's
    text (role, crtime_ns, mime: ``json_extract``) are never declared so.
    """
    if default_factory is not None:
        return Field(default_factory=default_factory, exclude_if=lambda value: value == default_factory())
    return Field(default, exclude_if=lambda value: value is None if default is None else value == default)


class NodeKind(str, Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    FIFO = "fifo"
    CHAR_DEVICE = "chardev"
    BLOCK_DEVICE = "blockdev"
    SOCKET = "socket"


# The file type bits of st_mode for each kind; the special ones are what mknod(2) may make.
TYPE_BITS: dict[NodeKind, int] = {
    NodeKind.FILE: stat.S_IFREG, NodeKind.DIR: stat.S_IFDIR, NodeKind.SYMLINK: stat.S_IFLNK,
    NodeKind.FIFO: stat.S_IFIFO, NodeKind.CHAR_DEVICE: stat.S_IFCHR, NodeKind.BLOCK_DEVICE: stat.S_IFBLK,
    NodeKind.SOCKET: stat.S_IFSOCK,
}
SPECIAL_KINDS: dict[int, NodeKind] = {
    bits: kind for kind, bits in TYPE_BITS.items()
    if kind in (NodeKind.FIFO, NodeKind.CHAR_DEVICE, NodeKind.BLOCK_DEVICE, NodeKind.SOCKET)
}


class NodeRole(str, Enum):
    """What a node is for in the fixed upper part of the tree (DESIGN §2)."""

    ROOT = "root"  # the mount's root: one directory per sandbox
    SANDBOX = "sandbox"  # <sandbox>/: sessions/, users/, shared/
    SESSIONS = "sessions"  # <sandbox>/sessions/: one directory per session
    USERS = "users"  # <sandbox>/users/: one directory per user
    SCOPE_ROOT = "scope_root"  # a session's, a user's, or the shared directory
    ENTRY = "entry"  # anything an artifact user created below a scope root
    CHECKPOINTS = "checkpoints"  # namespaces/.checkpoints/, and in it one directory per workspace
    FROZEN = "frozen"  # a checkpoint and everything in it: read-only


# Path segment under grid/{sandbox}/ for each scope kind.
SESSIONS_DIR = "sessions"
USERS_DIR = "users"
SHARED_DIR = "shared"


def scope_prefix(sandbox_id: str, scope: Scope, owner: str | None) -> str:
    """``grid/{sandbox}/sessions/{id}`` and its siblings."""
    if scope is Scope.SESSION:
        return f"grid/{sandbox_id}/{SESSIONS_DIR}/{owner}"
    if scope is Scope.USER:
        return f"grid/{sandbox_id}/{USERS_DIR}/{owner}"
    return f"grid/{sandbox_id}/{SHARED_DIR}"


def grid_key(sandbox_id: str, scope: Scope, owner: str | None, artifact_id: str) -> str:
    return f"{scope_prefix(sandbox_id, scope, owner)}/{artifact_id}"


class Space(BaseModel):
    """The scope a node belongs to: whose it is, and whose quota it uses."""

    sandbox_id: str
    scope: Scope
    session_id: str | None = _omitted()
    user_id: str | None = _omitted()

    @property
    def owner(self) -> str | None:
        return self.session_id if self.scope is Scope.SESSION else self.user_id if self.scope is Scope.USER else None

    @property
    def usage_key(self) -> str:
        """The account a node's bytes and count are charged to."""
        return f"{self.sandbox_id}/{self.scope.value}/{self.owner or ''}"


DEFAULT_MIME = "application/octet-stream"  # what a file written through the mount is


class Artifact(BaseModel):
    """The artifact half of a file node."""

    artifact_id: str
    mime: str = DEFAULT_MIME
    summary: str = _omitted("")
    meta: dict[str, Any] = _omitted(default_factory=dict)
    sha256: str
    version: int = _omitted(1)
    blob_key: str | None = _omitted()  # None while the file is empty
    ttl: int | None = _omitted()
    # Checkpoints (issue #10) share blobs: a copy names the blob of another artifact (``blob_of``, the
    # id in the blob's key) and is charged for it only when no other holder is (``charged``); both
    # are absent from the records of every other file.
    blob_of: str | None = Field(default=None, exclude_if=lambda value: value is None)
    charged: bool = Field(default=True, exclude_if=lambda value: value)


class CheckpointRecord(BaseModel):
    """What a checkpoint's directory says of it (issue #10), signed with it."""

    checkpoint_id: str
    name: str | None = None
    description: str = ""
    files: int = 0
    bytes: int = 0


class NamespaceRecord(BaseModel):
    """What makes a node a namespace (issue #10): a workspace directory or a blob file.

    In the node's signed record, so a namespace is found, listed and
    checked like any other node, by every process and mount at once.
    """

    namespace_id: str
    type: NamespaceType
    name: str | None = None
    provider_type: str
    session_id: str  # the session it was created in (the reference names one for every namespace)
    ttl_seconds: int = 0
    metadata: dict[str, Any] = Field(default_factory=dict)


MAX_LINKS = 1000  # names one inode may have (EMLINK beyond): each one makes its record longer


class Link(BaseModel):
    """A further name of a node: ``name`` in directory ``parent``."""

    parent: int
    name: str


class Node(BaseModel):
    ino: int = 0
    # The record's revision: every write of a record is conditional on the revision its writer read
    # and stores the next one, so no change is ever written over one it did not see (issue #16).
    rev: int = _omitted(0)
    parent: int
    name: str
    kind: NodeKind
    role: NodeRole = NodeRole.ENTRY
    space: Space | None = _omitted()  # set on scope roots and everything below them
    mode: int
    uid: int = _omitted(0)
    gid: int = _omitted(0)
    size: int = _omitted(0)
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    crtime_ns: int
    expires_at_ns: int | None = _omitted()
    target: str | None = _omitted()  # symlinks
    rdev: int = _omitted(0)  # character and block devices: the device number
    # Directories: how many entries are directories (st_nlink is 2 + this). Kept by the backend
    # beside the record, moved by the scripts that add or remove a name, never in the record itself.
    subdirs: int = Field(default=0, exclude=True)
    xattrs: dict[str, str] = _omitted(default_factory=dict)  # user.* names -> hex bytes
    links: list[Link] = _omitted(default_factory=list)  # hard links: names beyond the primary one
    artifact: Artifact | None = _omitted()  # files
    session_meta: dict[str, Any] | None = _omitted()  # session scope roots
    # Namespaces (issue #10); absent from every other record, so they carry no byte of it.
    namespace: NamespaceRecord | None = Field(default=None, exclude_if=lambda value: value is None)
    checkpoint: CheckpointRecord | None = Field(default=None, exclude_if=lambda value: value is None)

    @property
    def is_dir(self) -> bool:
        return self.kind is NodeKind.DIR

    @property
    def is_file(self) -> bool:
        return self.kind is NodeKind.FILE

    @property
    def names(self) -> list[tuple[int, str]]:
        """Every (parent, name) the node is entered under, primary first."""
        return [(self.parent, self.name), *((link.parent, link.name) for link in self.links)]

    @property
    def nlink(self) -> int:
        """st_nlink: a directory's 2 + subdirectories, else its names."""
        return 2 + self.subdirs if self.is_dir else 1 + len(self.links)

    @property
    def last_name(self) -> bool:
        """Whether taking away the name this view was reached by takes the inode with it."""
        return not self.links

    def has_name(self, parent: int, name: str) -> bool:
        return (self.parent, self.name) == (parent, name) or any(
            (link.parent, link.name) == (parent, name) for link in self.links
        )

    def has_other_name(self, parent: int, name: str) -> bool:
        """Whether ``parent``/``name`` is one of this node's names besides the one it was reached by."""
        return (parent, name) != (self.parent, self.name) and self.has_name(parent, name)

    def seen_as(self, parent: int, name: str) -> Node:
        """The view of this node reached through its name ``parent``/``name`` (one of its names)."""
        if (self.parent, self.name) == (parent, name):
            return self
        return self.with_names([(parent, name), *(n for n in self.names if n != (parent, name))])

    def with_names(self, names: list[tuple[int, str]]) -> Node:
        """A copy entered under ``names`` (the first primary); ``subdirs`` kept, as it is not in the record."""
        (parent, name), rest = names[0], names[1:]
        links = [Link(parent=p, name=n) for p, n in rest]
        return self.model_copy(update={"parent": parent, "name": name, "links": links})

    def without_name(self) -> Node:
        """The record once the name this view was reached by is gone (it must have another)."""
        return self.with_names(self.names[1:])

    def expired(self, now_ns: int) -> bool:
        return self.expires_at_ns is not None and self.expires_at_ns <= now_ns

    @property
    def st_mode(self) -> int:
        return TYPE_BITS[self.kind] | (self.mode & 0o7777)


def account_of(node: Node) -> str | None:
    """The usage account ``node`` is charged to, if any: a file's space's, unless the blob it
    shares with others is charged to another of its holders (checkpoints: issue #10)."""
    if not node.is_file or node.space is None or (node.artifact is not None and not node.artifact.charged):
        return None
    return node.space.usage_key


def new_node(
    *,
    parent: int,
    name: str,
    kind: NodeKind,
    mode: int,
    now_ns: int,
    role: NodeRole = NodeRole.ENTRY,
    space: Space | None = None,
    uid: int = 0,
    gid: int = 0,
) -> Node:
    return Node(
        parent=parent,
        name=name,
        kind=kind,
        role=role,
        space=space,
        mode=mode,
        uid=uid,
        gid=gid,
        atime_ns=now_ns,
        mtime_ns=now_ns,
        ctime_ns=now_ns,
        crtime_ns=now_ns,
    )
