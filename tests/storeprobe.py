"""Looking under an ArtifactStore: raw node and blob counts, and ways to damage them.

Tests use these to check what the API cannot show: that a refused call left
no node or blob behind, that cleanup really removed bytes from the backend,
and that damage done outside the store is caught. Each helper knows the
concrete embedded backends; a new backend adds its branch here.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import boto3
import redis
from botocore.config import Config

from core import ArtifactStore, shards
from core.backends.blobs.filesystem import FilesystemBlobStore
from core.backends.blobs.memory import MemoryBlobStore
from core.backends.blobs.s3.store import S3BlobStore
from core.backends.meta.redis import packing
from core.backends.meta.redis.store import RedisMetaStore, ino_of_key, inode_fields, inode_string, sealed, unsealed
from core.backends.meta.sqlite import SQLiteMetaStore
from core.nodes import ROOT_INO, Node


async def all_nodes(store: ArtifactStore) -> list[Node]:
    """Every node of the tree, expired ones included, found by walking it from the root."""
    meta = store.ns.meta
    root = await meta.get(ROOT_INO)
    assert root is not None
    found, stack = [root], [root]
    while stack:
        for child in await meta.children(stack.pop().ino):
            found.append(child)
            if child.is_dir:
                stack.append(child)
    return found


async def node_count(store: ArtifactStore) -> int:
    return len(await all_nodes(store))


async def blob_keys(store: ArtifactStore, *, settled: bool = True) -> set[str]:
    """Blob keys as the backend itself holds them (not as the metadata believes).

    ``settled``: once gc has run as if every grace period and upload intent
    were over (issue #16), so a superseded or removed blob shows as gone,
    and a blob still there is a leak or a live version.
    """
    if settled:
        await store.ns.collect_garbage(now_ns=2**62)
    blobs = store.ns.blobs
    if isinstance(blobs, FilesystemBlobStore):
        return {str(p.relative_to(blobs.blob_dir)) for p in blobs.blob_dir.rglob("*") if p.is_file()}
    if isinstance(blobs, MemoryBlobStore):
        return set(blobs._blobs)
    return {key async for key in blobs.keys()}


def staging_files(store: ArtifactStore) -> list[Path]:
    """Half-written blobs left in the filesystem backend's staging area."""
    blobs = store.ns.blobs
    if isinstance(blobs, FilesystemBlobStore):
        return sorted(blobs.staging_dir.glob("*"))
    return []


async def footprint(store: ArtifactStore) -> tuple[int, frozenset[str], tuple[Path, ...]]:
    """What a refused operation must leave exactly as it found it."""
    return await node_count(store), frozenset(await blob_keys(store)), tuple(staging_files(store))


async def blob_key_of(store: ArtifactStore, artifact_id: str) -> str:
    node = await store.ns.meta.find_artifact(artifact_id)
    assert node is not None and node.artifact is not None and node.artifact.blob_key is not None
    return node.artifact.blob_key


def flip_blob_byte(store: ArtifactStore, key: str, offset: int = 0) -> None:
    """Damage a stored blob in place, as a failing disk or an operator would."""
    blobs = store.ns.blobs
    if isinstance(blobs, MemoryBlobStore):
        blobs.corrupt(key, offset)
        return
    if isinstance(blobs, FilesystemBlobStore):
        path = blobs.blob_dir / key
        with open(path, "r+b") as f:
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ 0xFF]))
        return
    if isinstance(blobs, S3BlobStore):
        rewrite_blob(store, key, lambda data: data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1 :])
        return
    raise NotImplementedError(f"no way to damage blobs of {type(blobs).__name__} yet")


def _s3(blobs: S3BlobStore):
    return boto3.client("s3", endpoint_url=blobs.endpoint_url, region_name=blobs.region,
                        config=Config(s3={"addressing_style": "path"}))


def rewrite_blob(store: ArtifactStore, key: str, change: Callable[[bytes], bytes]) -> None:
    """Replace a stored blob's bytes with ``change(bytes)`` behind the store's back."""
    blobs = store.ns.blobs
    if isinstance(blobs, MemoryBlobStore):
        blobs._blobs[key] = change(blobs._blobs[key])
    elif isinstance(blobs, FilesystemBlobStore):
        path = blobs.blob_dir / key
        path.write_bytes(change(path.read_bytes()))
    elif isinstance(blobs, S3BlobStore):
        s3 = _s3(blobs)
        data = s3.get_object(Bucket=blobs.bucket, Key=blobs.object_key(key))["Body"].read()
        s3.put_object(Bucket=blobs.bucket, Key=blobs.object_key(key), Body=change(data))
    else:
        raise NotImplementedError(f"no way to rewrite blobs of {type(blobs).__name__} yet")


def remove_blob(store: ArtifactStore, key: str) -> None:
    """Lose a stored blob behind the store's back."""
    blobs = store.ns.blobs
    if isinstance(blobs, MemoryBlobStore):
        del blobs._blobs[key]
    elif isinstance(blobs, FilesystemBlobStore):
        (blobs.blob_dir / key).unlink()
    elif isinstance(blobs, S3BlobStore):
        _s3(blobs).delete_object(Bucket=blobs.bucket, Key=blobs.object_key(key))
    else:
        raise NotImplementedError(f"no way to remove blobs of {type(blobs).__name__} yet")


def _sqlite_path(store: ArtifactStore) -> str:
    meta = store.ns.meta
    assert isinstance(meta, SQLiteMetaStore)
    return meta._path


def redis_inode(client: redis.Redis, key: str | bytes) -> dict[str, bytes]:
    """The fields of a Redis store's inode string, by name ({} if there is none), its record (``rec``)
    unsealed: the signed JSON, its signature in ``sig`` (hex)."""
    fields = inode_fields(client.get(key), ino_of_key(key))  # type: ignore[arg-type]
    if fields.get("rec"):
        sig, packed = unsealed(fields["rec"])
        fields["sig"], fields["rec"] = sig.encode(), packing.unpacked(packed, ino_of_key(key), fields)
    return fields


def rewrite_redis_inode(client: redis.Redis, key: str, **changes: bytes | str | int) -> None:
    """Fields of a Redis store's inode changed behind the store's back (as whoever can write the server);
    its record (``rec``, the JSON) packed and sealed again as the store does, with its signature (``sig``)."""
    fields = redis_inode(client, key)
    assert fields, f"no inode at {key}"
    fields.update({name: value if isinstance(value, bytes) else str(value).encode() for name, value in changes.items()})
    if fields.get("rec"):
        fields["rec"] = sealed(fields.pop("sig").decode(), packing.packed(fields["rec"], ino_of_key(key), fields))
    client.set(key, inode_string(fields, ino_of_key(key)))


def edit_record(store: ArtifactStore, ino: int, old: bytes, new: bytes) -> None:
    """Rewrite part of a node's signed record behind the store's back (signature untouched)."""
    meta = store.ns.meta
    if isinstance(meta, RedisMetaStore):
        with redis.Redis.from_url(meta.url) as client:
            record = redis_inode(client, meta.key("i", ino)).get("rec")
            assert record is not None and old in record, f"{old!r} not in the record of inode {ino}"
            rewrite_redis_inode(client, meta.key("i", ino), rec=record.replace(old, new, 1))
        return
    if not isinstance(meta, SQLiteMetaStore):
        raise NotImplementedError(f"no way to edit records of {type(meta).__name__} yet")
    path = _sqlite_path(store)
    if path == ":memory:":
        db = meta.db  # an in-memory database is reachable only through the store's own connection
        close = False
    else:
        db = sqlite3.connect(path, isolation_level=None)
        close = True
    try:
        (record,) = db.execute("SELECT record FROM node WHERE ino=?", (ino,)).fetchone()
        record = bytes(record)
        assert old in record, f"{old!r} not in the record of inode {ino}"
        db.execute("UPDATE node SET record=? WHERE ino=?", (record.replace(old, new, 1), ino))
    finally:
        if close:
            db.close()


def set_columns(store: ArtifactStore, ino: int, **columns: object) -> None:
    """Set derived (unsigned) columns of a node's SQLite row behind the store's back; the record stays."""
    meta = store.ns.meta
    assert isinstance(meta, SQLiteMetaStore)
    path = _sqlite_path(store)
    db = meta.db if path == ":memory:" else sqlite3.connect(path, isolation_level=None)
    try:
        sets = ", ".join(f"{name}=?" for name in columns)
        db.execute(f"UPDATE node SET {sets} WHERE ino=?", (*columns.values(), ino))
    finally:
        if db is not meta.db:
            db.close()


def redis_client(store: ArtifactStore) -> tuple[redis.Redis, RedisMetaStore]:
    """A plain client on a Redis-backed store's server, to edit its indexes behind its back."""
    meta = store.ns.meta
    assert isinstance(meta, RedisMetaStore)
    return redis.Redis.from_url(meta.url), meta


# A Redis store's directory entries are members of the directory's name order, ``<name>\0<child>`` (the
# child's number in the shard, or its whole ino in another): these edit them behind the store's back.


def _entry_bucket(client: redis.Redis, meta: RedisMetaStore, directory: int, name: bytes) -> bytes:
    """The key of the bucket of ``directory``'s name order that holds (or would hold) ``name``."""
    high = name + b"\0\xff"
    head = (client.zrevrangebylex(meta.key("o", directory), b"[" + high, b"-", start=0, num=1) or [b""])[0]
    return meta.key("ob", directory).encode() + b"\n" + head


def _entry_member(client: redis.Redis, meta: RedisMetaStore, directory: int, name: bytes) -> bytes | None:
    bucket = _entry_bucket(client, meta, directory, name)
    found = client.zrangebylex(bucket, b"[" + name + b"\0", b"[" + name + b"\0\xff", start=0, num=1)
    return found[0] if found else None


def redis_entry(client: redis.Redis, meta: RedisMetaStore, directory: int, name: str) -> int | None:
    """The child ino that ``name`` names in ``directory``, as the store keeps it; None if none."""
    member = _entry_member(client, meta, directory, name.encode())
    if member is None:
        return None
    child = int(member.partition(b"\0")[2])
    return shards.ino(shards.of_ino(directory), child) if child < 1 << shards.INO_BITS else child


def set_redis_entry(client: redis.Redis, meta: RedisMetaStore, directory: int, name: str, ino: int) -> None:
    """Make ``name`` in ``directory`` name ``ino`` (a forged entry: no record says so)."""
    drop_redis_entry(client, meta, directory, name)
    child = shards.number(ino) if shards.of_ino(ino) == shards.of_ino(directory) else ino
    member = name.encode() + b"\0" + b"%d" % child
    client.zadd(_entry_bucket(client, meta, directory, name.encode()), {member: 0})


def drop_redis_entry(client: redis.Redis, meta: RedisMetaStore, directory: int, name: str) -> bool:
    """Take ``name`` out of ``directory`` (its record left as it is); whether it was there."""
    member = _entry_member(client, meta, directory, name.encode())
    return member is not None and client.zrem(_entry_bucket(client, meta, directory, name.encode()), member) == 1
