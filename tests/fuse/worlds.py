"""The two worlds a mount runs in: the embedded default and Redis + S3.

A :class:`StoreWorld` says where a mount's store lives and how to reach it
from outside the mount: the environment the ``artifactfs mount`` process gets
(exactly what a user would export), and the library face of the same store.

The store's identity follows the data dir, as in the embedded world: mounts
of one data dir share a store, mounts of two data dirs do not, so a test
means the same thing in both worlds. On Redis + S3 the data dir becomes a key
prefix in Redis and in the bucket (:func:`servers.store_prefix`). Many mounts
on one store (several data dirs, one Redis and one bucket) come from
:meth:`StoreWorld.shared`. What a test leaves in Redis and moto is deleted at
its end, so the session's servers do not grow with the suite.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from enum import Enum
from pathlib import Path

import redis
from redis_cluster import RedisCluster
from servers import AWS_ENV, BUCKET, SIGNING_KEY, MotoServer, RedisServer, redis_s3_settings, store_prefix

from core import ArtifactStore


class WorldKind(str, Enum):
    EMBEDDED = "embedded"  # filesystem blobs + SQLite in the data dir
    REDIS_S3 = "redis-s3"  # a real redis-server and moto over HTTP
    REDIS_CLUSTER_S3 = "redis-cluster-s3"  # a Redis Cluster of three masters, and moto (issue #17)


# What a mount process must not inherit from the test runner's own environment.
_STORE_ENV = ("ARTIFACT_PROVIDER", "SESSION_PROVIDER", "SESSION_REDIS_URL", "S3_ENDPOINT_URL", "ARTIFACT_BUCKET",
              "ARTIFACT_REDIS_PREFIX", "ARTIFACT_S3_PREFIX", "ARTIFACT_REDIS_CLUSTER")


class StoreWorld:
    def __init__(
        self, kind: WorldKind, *, redis: RedisServer | RedisCluster | None = None, moto: MotoServer | None = None,
        store_root: Path | None = None, redis_url: str | None = None, _used: set[str] | None = None,
    ) -> None:
        if kind is not WorldKind.EMBEDDED and (redis is None or moto is None):
            raise ValueError(f"the {kind.value} world needs a redis server (or cluster) and a moto server")
        self.kind, self.redis, self.moto = kind, redis, moto
        self.store_root = store_root  # every data dir maps to this one store (many mounts, one store)
        self.redis_url = redis_url or (redis.url if redis is not None else None)  # how its processes reach Redis
        self._used = _used if _used is not None else set()  # prefixes to clean up, shared with copies

    def __repr__(self) -> str:
        return f"StoreWorld({self.kind.value})"

    @property
    def embedded(self) -> bool:
        return self.kind is WorldKind.EMBEDDED

    @property
    def cluster(self) -> bool:
        return self.kind is WorldKind.REDIS_CLUSTER_S3

    def shared(self, root: Path) -> StoreWorld:
        """The same world, where every data dir is one store named by ``root``."""
        if self.embedded:
            raise ValueError("embedded stores live in their data dir: they cannot be shared by two")
        return StoreWorld(self.kind, redis=self.redis, moto=self.moto, store_root=root, _used=self._used)

    def via_redis(self, url: str) -> StoreWorld:
        """The same world and store, whose processes reach Redis at ``url`` (a proxy in front of it)."""
        if self.embedded:
            raise ValueError("the embedded world has no Redis")
        return StoreWorld(self.kind, redis=self.redis, moto=self.moto, store_root=self.store_root, redis_url=url,
                          _used=self._used)

    def prefix(self, data_dir: Path) -> str:
        prefix = store_prefix(self.store_root or data_dir)
        self._used.add(prefix)
        return prefix

    # -- the mount process

    def mount_env(self, data_dir: Path, base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str] | None:
        """The environment of an ``artifactfs mount`` of ``data_dir`` in this world (None: inherit)."""
        if self.embedded and base is None and not extra:
            return None
        env = {k: v for k, v in (os.environ if base is None else base).items() if k not in _STORE_ENV}
        if not self.embedded:
            assert self.redis is not None and self.moto is not None
            prefix = self.prefix(data_dir)
            env.update(AWS_ENV)
            env.update({
                "SESSION_PROVIDER": "redis", "SESSION_REDIS_URL": self.redis_url,
                "ARTIFACT_PROVIDER": "s3", "ARTIFACT_BUCKET": BUCKET, "S3_ENDPOINT_URL": self.moto.endpoint,
                "S3_SSE_ALGORITHM": "AES256", "ARTIFACT_REDIS_PREFIX": prefix, "ARTIFACT_S3_PREFIX": prefix + "/",
                "ARTIFACT_SIGNING_KEY": os.environ.get("ARTIFACT_SIGNING_KEY") or SIGNING_KEY,
                "ARTIFACT_REDIS_CLUSTER": "1" if self.cluster else "0",
            })
        env.update(extra)
        return env

    # -- the library face

    def store(self, data_dir: Path, sandbox: str, **kwargs) -> ArtifactStore:
        """The library face of the store a mount of ``data_dir`` serves."""
        if self.embedded:
            return ArtifactStore(
                storage_provider="filesystem", session_provider="sqlite", fs_root=data_dir, sandbox_id=sandbox, **kwargs
            )
        assert self.redis is not None and self.moto is not None
        root = self.store_root or data_dir
        self.prefix(root)
        settings = redis_s3_settings(
            root, redis_url=self.redis_url, s3_endpoint_url=self.moto.endpoint, sandbox_id=sandbox,
            redis_cluster=self.cluster,
        )
        return ArtifactStore(settings=settings, **kwargs)

    # -- damage and cleanup

    def damage_blob(self, store: ArtifactStore, blob_key: str, offset: int) -> None:
        """Flip one byte of a blob behind the store's back."""
        if self.embedded:
            path = store.ns.blobs.path_of(blob_key)  # type: ignore[attr-defined]
            with open(path, "r+b") as raw:
                raw.seek(offset)
                byte = raw.read(1)
                raw.seek(offset)
                raw.write(bytes([byte[0] ^ 0xFF]))
            return
        assert self.moto is not None
        key = store.ns.blobs.object_key(blob_key)  # type: ignore[attr-defined]
        s3 = self.moto.client()
        data = bytearray(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        data[offset] ^= 0xFF
        s3.put_object(Bucket=BUCKET, Key=key, Body=bytes(data), ServerSideEncryption="AES256")

    def cleanup(self) -> None:
        """Delete every key and object the stores of this test left behind."""
        if self.embedded or not self._used:
            return
        assert self.redis is not None and self.moto is not None
        prefixes, self._used = sorted(self._used), set()
        if self.cluster:  # keys of many slots: one DEL each, in a pipeline per node
            with redis.RedisCluster.from_url(self.redis.url) as client:
                for prefix in prefixes:
                    with client.pipeline() as pipe:
                        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
                            pipe.delete(key)
                        pipe.execute()
        else:
            with self.redis.client() as client:
                for prefix in prefixes:
                    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
                    for start in range(0, len(keys), 1000):
                        client.delete(*keys[start : start + 1000])
        s3 = self.moto.client()
        for prefix in prefixes:
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
                objects = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if objects:
                    s3.delete_objects(Bucket=BUCKET, Delete={"Objects": objects})
            uploads = s3.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix + "/").get("Uploads", [])
            for upload in uploads:
                s3.abort_multipart_upload(Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"])


EMBEDDED = StoreWorld(WorldKind.EMBEDDED)
