"""A namespace seen as a file system, with the method names callers of chuk-virtual-fs use.

Every call reads the store as it is (no state but the namespace id), so two
processes, or a process and a mount, working in one workspace see each
other's changes at once. Paths are absolute within the workspace
(``/src/main.py``); a blob namespace is a one-file tree whose file is
``/_data``, as the reference's is.

Outcomes follow chuk-virtual-fs where it answers with a value: a missing
file reads as None, ``mkdir`` of an existing path and ``rm`` of a missing
one answer False. Anything else that cannot be done (a bad path, no access,
a quota) raises the store's own precise error rather than a bare False.
"""

from __future__ import annotations

import fnmatch
from collections.abc import AsyncIterator
from typing import Any, Protocol

from pydantic import BaseModel, Field

from core.api.access import Principal, check_write
from core.api.base import iso_z
from core.errors import AlreadyExistsError, ArtifactNotFoundError, DirectoryNotEmptyError, InvalidArgumentError, shown
from core.models import ArtifactMetadata, NamespaceType, StreamUploadRequest
from core.nodes import Node, Space
from core.tree import grid
from core.tree.namespace import Namespace

BLOB_DATA = "_data"  # a blob namespace's one file, as the reference names it
_READ_CHUNK = 1 << 20


class VfsNodeInfo(BaseModel):
    """What ``get_node_info`` tells of a path (the fields of chuk-virtual-fs's that apply here)."""

    name: str
    is_dir: bool
    parent_path: str
    size: int = 0
    mime_type: str | None = None
    sha256: str | None = None
    created_at: str | None = None
    modified_at: str | None = None
    custom_meta: dict[str, Any] = Field(default_factory=dict)


def _bytes(content: Any, what: str) -> bytes:
    if isinstance(content, str):
        return content.encode("utf-8")
    if isinstance(content, (bytes, bytearray, memoryview)):
        return bytes(content)
    raise InvalidArgumentError(f"{what} takes str or bytes, got {shown(content)}")


def path_parts(path: Any) -> list[str]:
    """The names of ``path`` (``/src/a.txt``) below a namespace's directory; ``/`` is none."""
    if not isinstance(path, str):
        raise InvalidArgumentError(f"path must be a string, got {shown(path)}")
    stripped = path.strip("/")
    return grid.split_filename(stripped) if stripped else []


class _Store(Protocol):
    """What the view needs of the store that hands it out (:class:`core.api.namespaces.NamespaceApi`)."""

    ns: Namespace
    admin: bool

    async def namespace_node(self, namespace_id: str, path: str | None = None) -> tuple[Node, Node | None]: ...

    async def write_namespace(self, namespace_id: str, data: bytes, path: str | None = None,
                              mime: str | None = None) -> None: ...

    async def owner_args(self, space: Space) -> dict[str, Any]: ...

    async def retrieve(self, artifact_id: str, *, session_id: str | None = None, user_id: str | None = None) -> bytes: ...

    async def update_metadata(self, artifact_id: str, **fields: Any) -> ArtifactMetadata: ...

    async def stream_upload(self, request: StreamUploadRequest) -> str: ...


class NamespaceVfs:
    """One namespace's files: :meth:`NamespaceApi.get_namespace_vfs` hands these out."""

    def __init__(self, store: _Store, namespace_id: str) -> None:
        self.store = store
        self.namespace_id = namespace_id

    # -- finding things

    async def _lookup(self, path: Any) -> tuple[Node, Node | None]:
        """The namespace's node, and the node at ``path`` (the workspace itself for ``/``), or None.

        A blob's tree is ``/`` and ``/_data``, both its file: nothing else is there.
        """
        parts = path_parts(path)
        namespace, node = await self.store.namespace_node(self.namespace_id, "/".join(parts) or "/")
        if namespace.namespace is not None and namespace.namespace.type is NamespaceType.BLOB:
            return namespace, namespace if parts in ([], [BLOB_DATA]) else None
        return namespace, node

    async def _at(self, path: Any) -> Node | None:
        return (await self._lookup(path))[1]

    async def _writable(self, path: Any) -> tuple[Node, Node | None]:
        namespace, node = await self._lookup(path)
        assert namespace.space is not None and namespace.namespace is not None
        check_write(Principal(trusted=True, admin=self.store.admin), namespace.space, f"namespace {self.namespace_id}")
        if namespace.namespace.type is NamespaceType.BLOB and path_parts(path) not in ([], [BLOB_DATA]):
            raise InvalidArgumentError(f"a blob namespace holds only /{BLOB_DATA}")
        return namespace, node

    async def _directory(self, path: Any, *, make: bool) -> Node:
        """The workspace directory at ``path``, made (with its parents) if ``make``."""
        namespace, node = await self._writable(path)
        if node is None and make:
            return await self.store.ns.mkdirs(namespace, path_parts(path))
        if node is None or not node.is_dir:
            raise ArtifactNotFoundError(f"{path!r} is not a directory of namespace {self.namespace_id}")
        return node

    # -- writing

    async def write_file(self, path: str, content: str | bytes, **metadata: Any) -> bool:
        await self._writable(path)
        await self.store.write_namespace(self.namespace_id, _bytes(content, "write_file"), self._target(path),
                                         mime=metadata.get("mime_type"))
        return True

    def _target(self, path: str) -> str | None:
        return None if path_parts(path) == [BLOB_DATA] else path

    async def write_binary(self, path: str, content: bytes, **metadata: Any) -> bool:
        if not isinstance(content, (bytes, bytearray, memoryview)):
            raise InvalidArgumentError(f"write_binary takes bytes, got {shown(content)}")
        return await self.write_file(path, bytes(content), **metadata)

    async def write_text(self, path: str, content: str, encoding: str = "utf-8", **metadata: Any) -> bool:
        if not isinstance(content, str):
            raise TypeError("write_text requires str, not bytes. Use write_binary for bytes.")
        return await self.write_file(path, content.encode(encoding), **metadata)

    async def touch(self, path: str, **metadata: Any) -> bool:
        """An empty file if nothing is there; a file's times moved to now; False on a directory."""
        _, node = await self._writable(path)
        if node is None:
            return await self.write_file(path, b"", **metadata)
        if node.is_dir:
            return False
        now = self.store.ns.now()

        def times(node: Node) -> None:
            node.mtime_ns = node.atime_ns = now

        await self.store.ns.update_node(node, times)
        return True

    async def stream_write(self, path: str, stream: Any, chunk_size: int = 8192, **metadata: Any) -> bool:
        """Bytes from an async iterable into the file at ``path``, in bounded memory."""
        namespace, _ = await self._writable(path)
        assert namespace.space is not None
        parts = path_parts(path)
        if not parts or parts == [BLOB_DATA]:
            raise InvalidArgumentError("stream_write takes a file path of a workspace")
        space = namespace.space
        await self.store.stream_upload(StreamUploadRequest(
            data_stream=stream, filename="/".join(["namespaces", namespace.name, *parts]),
            mime=metadata.get("mime_type") or "application/octet-stream",
            progress_callback=metadata.get("progress_callback"), **await self.store.owner_args(space),
        ))
        return True

    # -- reading

    async def read_file(self, path: str, as_text: bool = False) -> bytes | str | None:
        content = await self.read_binary(path)
        return content.decode("utf-8") if as_text and content is not None else content

    async def read_binary(self, path: str) -> bytes | None:
        node = await self._at(path)
        if node is None or not node.is_file or node.artifact is None:
            return None
        try:
            return await self.store.retrieve(node.artifact.artifact_id)
        except ArtifactNotFoundError:
            return None  # removed meanwhile

    async def read_text(self, path: str, encoding: str = "utf-8", errors: str = "strict") -> str | None:
        content = await self.read_binary(path)
        return None if content is None else content.decode(encoding, errors=errors)

    async def stream_read(self, path: str, chunk_size: int = 8192) -> AsyncIterator[bytes]:
        """The file's bytes a chunk at a time, checked against its SHA-256 at the end."""
        node = await self._at(path)
        if node is None or not node.is_file:
            raise ArtifactNotFoundError(f"{path!r} is not a file of namespace {self.namespace_id}")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or not 0 < chunk_size <= 16 << 20:
            raise InvalidArgumentError(f"chunk_size must be 1 to {16 << 20} bytes, got {shown(chunk_size)}")
        async for chunk in self.store.ns.read_chunks(node, chunk_size, verify=True):
            yield chunk

    # -- the tree

    async def exists(self, path: str) -> bool:
        return await self._at(path) is not None

    async def is_file(self, path: str) -> bool:
        node = await self._at(path)
        return node is not None and node.is_file

    async def is_dir(self, path: str) -> bool:
        node = await self._at(path)
        return node is not None and node.is_dir

    async def ls(self, path: str | None = None) -> list[str]:
        namespace, node = await self._lookup(path or "/")
        if node is None:
            return []
        if namespace.namespace is not None and namespace.namespace.type is NamespaceType.BLOB:
            return [BLOB_DATA] if path_parts(path or "/") == [] else []
        if not node.is_dir:
            return [node.name]
        ns = self.store.ns
        return sorted(child.name for child in await ns.list(node) if ns.visible(child))

    async def mkdir(self, path: str, **metadata: Any) -> bool:
        """A directory, with its parents; False if something is there already."""
        _, node = await self._writable(path)
        if node is not None or not path_parts(path):
            return False
        try:
            await self._directory(path, make=True)
        except AlreadyExistsError:
            return False
        return True

    async def rmdir(self, path: str) -> bool:
        """Remove an empty directory; False if there is none, or it holds something."""
        _, node = await self._writable(path)
        if node is None or not node.is_dir or not path_parts(path):
            return False
        try:
            await self.store.ns.rmdir(node)
        except (DirectoryNotEmptyError, ArtifactNotFoundError):
            return False
        return True

    async def rm(self, path: str) -> bool:
        """Remove a file or an empty directory; False if nothing is there."""
        _, node = await self._writable(path)
        if node is None or not path_parts(path):
            return False
        if node.is_dir:
            return await self.rmdir(path)
        if path_parts(path) == [BLOB_DATA]:
            raise InvalidArgumentError("a blob namespace's data goes with destroy_namespace()")
        try:
            await self.store.ns.unlink(node, every_name=True)
        except ArtifactNotFoundError:
            return False
        return True

    async def cp(self, source: str, destination: str) -> bool:
        """Copy a file, or a directory with everything below it."""
        node = await self._at(source)
        if node is None:
            return False
        if node.is_dir and path_parts(destination)[: len(path_parts(source))] == path_parts(source):
            raise InvalidArgumentError(f"cannot copy {source!r} into itself ({destination!r})")
        if node.is_file:
            await self.write_file(destination, await self.read_binary(source) or b"")
            return True
        await self.mkdir(destination)
        for name in await self.ls(source):
            await self.cp(f"{source.rstrip('/')}/{name}", f"{destination.rstrip('/')}/{name}")
        return True

    async def mv(self, source: str, destination: str) -> bool:
        """Move a file or directory within the workspace (a rename: no byte moves)."""
        _, node = await self._writable(source)
        if node is None or not path_parts(source):
            return False
        parts = path_parts(destination)
        if not parts:
            raise InvalidArgumentError("cannot move onto the workspace itself")
        parent = await self._directory("/".join(parts[:-1]) or "/", make=True)
        await self.store.ns.rename(node, parent, parts[-1])
        return True

    async def find(self, pattern: str = "*", path: str = "/", recursive: bool = True) -> list[str]:
        """Files below ``path`` whose names match ``pattern`` (a glob), as absolute paths."""
        _, node = await self._lookup(path)
        if node is None or not node.is_dir:
            return []
        base = "/" + "/".join(path_parts(path))
        ns = self.store.ns
        if recursive:
            found = await ns.files_below(node)
        else:
            found = [(child.name, child) for child in await ns.list(node) if ns.visible(child) and child.is_file]
        return sorted(f"{base.rstrip('/')}/{name}" for name, _ in found
                      if fnmatch.fnmatch(name.rpartition("/")[2], pattern))

    # -- metadata

    async def get_node_info(self, path: str) -> VfsNodeInfo | None:
        node = await self._at(path)
        if node is None:
            return None
        parts = path_parts(path)
        art = node.artifact
        return VfsNodeInfo(
            name=parts[-1] if parts else "", is_dir=node.is_dir, parent_path="/" + "/".join(parts[:-1]),
            size=node.size, mime_type=art.mime if art else None, sha256=art.sha256 if art else None,
            created_at=iso_z(node.crtime_ns), modified_at=iso_z(node.mtime_ns), custom_meta=art.meta if art else {},
        )

    async def get_metadata(self, path: str) -> dict[str, Any]:
        """A file's custom metadata (the artifact's ``meta``); a directory has none."""
        node = await self._at(path)
        return dict(node.artifact.meta) if node is not None and node.artifact is not None else {}

    async def set_metadata(self, path: str, metadata: dict[str, Any]) -> bool:
        """Merge ``metadata`` into a file's custom metadata; False for a directory or nothing."""
        _, node = await self._writable(path)
        if node is None or node.artifact is None:
            return False
        await self.store.update_metadata(node.artifact.artifact_id, meta=metadata, merge=True)
        return True

    async def get_storage_stats(self) -> dict[str, Any]:
        namespace, node = await self._lookup("/")
        assert node is not None and namespace.namespace is not None
        ns = self.store.ns
        if node.is_file:
            files, dirs = [node], 0
        else:
            below = await ns.meta.subtree(node.ino)
            files = [n for n in below if n.is_file and ns.visible(n)]
            dirs = sum(1 for n in below if n.is_dir and ns.visible(n))
        return {
            "namespace_id": self.namespace_id, "provider": namespace.namespace.provider_type,
            "total_files": len(files), "total_directories": dirs, "total_size_bytes": sum(n.size for n in files),
        }

