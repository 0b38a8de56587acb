"""Parts of a large file go to S3 while it is still being written (fusefs/writebehind.py).

Through a real mount on Redis + moto: while the writer still holds the file
open, the bucket already has a multipart upload with parts of it; close
publishes exactly the bytes the file holds then, whatever happened to parts
that went out early (overwritten, cut off by a truncate, the file removed).
Parts are 16 MiB (S3BlobStore.file_part_size), so the files here are a few
parts long.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from mounting import Mount, start_mount
from servers import BUCKET, MotoServer, RedisServer, wait_until
from worlds import StoreWorld, WorldKind

from core.errors import ProviderError
from fusefs.spool import FileSpool
from fusefs.writebehind import WriteBehind

MiB = 1 << 20
PART = 16 * MiB


@pytest.fixture
def s3_mount(tmp_path: Path, redis_server: RedisServer, moto_server: MotoServer) -> Iterator[tuple[Mount, StoreWorld]]:
    world = StoreWorld(WorldKind.REDIS_S3, redis=redis_server, moto=moto_server)
    mount = start_mount(tmp_path / "mnt", tmp_path / "mnt-data", world=world)
    try:
        yield mount, world
    finally:
        try:
            mount.stop()
        finally:
            world.cleanup()


def uploads(moto: MotoServer) -> list[dict]:
    return moto.client().list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])


def parts_out(moto: MotoServer) -> int:
    """Parts sent so far in the one multipart upload under way."""
    s3 = moto.client()
    return sum(len(s3.list_parts(Bucket=BUCKET, Key=u["Key"], UploadId=u["UploadId"]).get("Parts", []))
               for u in uploads(moto))


def object_etag(moto: MotoServer, world: StoreWorld, mount: Mount, name: str) -> str:
    """The ETag of the S3 object behind users/alice/<name> ("...-N" for N parts)."""
    s3 = moto.client()
    objects = [o for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
               for o in page.get("Contents", [])]
    size = (mount / "users" / "alice" / name).stat().st_size
    found = [o["ETag"] for o in objects if o["Size"] == size]
    assert len(found) == 1, f"{len(found)} objects of {size} bytes"
    return found[0]


def write_parts(fd: int, data: bytes) -> None:
    view = memoryview(data)
    for start in range(0, len(data), MiB):
        os.write(fd, view[start : start + MiB])


def test_whole_parts_go_out_before_close(s3_mount: tuple[Mount, StoreWorld], moto_server: MotoServer) -> None:
    mount, world = s3_mount
    path = mount.user_dir("alice") / "big.bin"
    data = os.urandom(2 * PART + 3 * MiB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_parts(fd, data)
        wait_until(lambda: parts_out(moto_server) >= 2, 20, "the two whole parts to be in S3 before close")
    finally:
        os.close(fd)
    assert uploads(moto_server) == []  # joined at close
    assert path.read_bytes() == data
    assert object_etag(moto_server, world, mount, "big.bin").endswith('-3"')


def test_a_part_written_into_after_it_went_out_goes_again(s3_mount: tuple[Mount, StoreWorld],
                                                           moto_server: MotoServer) -> None:
    mount, _ = s3_mount
    path = mount.user_dir("alice") / "patched.bin"
    data = bytearray(os.urandom(2 * PART + MiB))
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_parts(fd, bytes(data))
        wait_until(lambda: parts_out(moto_server) >= 2, 20, "the whole parts to be in S3")
        patch = os.urandom(300_000)
        os.pwrite(fd, patch, PART - 1000)  # across the end of part 0 into part 1
        data[PART - 1000 : PART - 1000 + len(patch)] = patch
        os.pwrite(fd, b"tail", len(data))  # and one more append
        data += b"tail"
    finally:
        os.close(fd)
    assert path.read_bytes() == bytes(data)


@pytest.mark.parametrize("cut", [PART + 5 * MiB, 3 * MiB])
def test_a_truncate_below_parts_that_went_out(s3_mount: tuple[Mount, StoreWorld], moto_server: MotoServer,
                                              cut: int) -> None:
    mount, _ = s3_mount
    path = mount.user_dir("alice") / f"cut-{cut}.bin"
    data = os.urandom(3 * PART)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_parts(fd, data)
        wait_until(lambda: parts_out(moto_server) >= 3, 20, "the whole parts to be in S3")
        os.ftruncate(fd, cut)
        os.pwrite(fd, b"after the cut", cut)
    finally:
        os.close(fd)
    assert path.read_bytes() == data[:cut] + b"after the cut"
    assert uploads(moto_server) == []


def test_a_file_removed_while_its_parts_go_out_leaves_no_upload(s3_mount: tuple[Mount, StoreWorld],
                                                                 moto_server: MotoServer) -> None:
    mount, _ = s3_mount
    path = mount.user_dir("alice") / "gone.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_parts(fd, os.urandom(2 * PART))
        wait_until(lambda: parts_out(moto_server) >= 1, 20, "a part to be in S3")
        path.unlink()
    finally:
        os.close(fd)
    wait_until(lambda: uploads(moto_server) == [], 20, "the upload of the removed file to be aborted")


def test_a_small_file_is_one_plain_put(s3_mount: tuple[Mount, StoreWorld], moto_server: MotoServer) -> None:
    """Below one part nothing goes out early, and close sends one PutObject, not a multipart upload."""
    mount, world = s3_mount
    path = mount.user_dir("alice") / "small.bin"
    data = os.urandom(5 * MiB)
    path.write_bytes(data)
    assert path.read_bytes() == data
    assert "-" not in object_etag(moto_server, world, mount, "small.bin")


# -- the spool's side on its own (a blob store that fails on cue)


class FailingUpload:
    """A FileUpload whose parts are taken and whose join fails, as when a part changed on its way out."""

    key, part_size, max_parts = "early-key", PART, 10_000

    def __init__(self) -> None:
        self.sent: list[int] = []
        self.aborted = False

    async def send(self, index: int, path: str, length: int) -> None:
        self.sent.append(index)

    async def complete(self, count: int, size: int) -> None:
        raise ProviderError("XAmzContentSHA256Mismatch")

    async def abort(self) -> None:
        self.aborted = True


async def test_a_failed_join_sends_the_file_whole(tmp_path: Path) -> None:
    """Close must not fail because the early parts did: the whole file goes by the usual path."""
    published: list[tuple[Path, int]] = []
    intended: list[str] = []

    class Namespace:
        async def intend_blob(self, node: object, key: str) -> None:  # the parts' key, recorded for gc
            intended.append(key)

        async def put_spool(self, node: object, path: Path, size: int, sha256: str, *, durable: bool) -> str:
            published.append((path, size))
            return "whole-key"

    upload = FailingUpload()
    spool = FileSpool.create(tmp_path)
    spool.behind = WriteBehind(upload, str(spool.path))
    async with trio.open_nursery() as nursery:
        spool.write(0, os.urandom(PART + MiB))
        spool.keep_up(nursery.start_soon)
        await spool.behind.settle()
        assert upload.sent == [0]
        key, size, _ = await spool.publish(Namespace(), object(), durable=False)  # type: ignore[arg-type]
    assert (key, size) == ("whole-key", PART + MiB) and published == [(spool.path, PART + MiB)]
    assert upload.aborted
    await spool.discard()
