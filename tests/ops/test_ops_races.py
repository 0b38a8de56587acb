"""Another host's step in the middle of one of the mount's requests (issue #16, the torture
test's ``rename-vs-replace``, ``unlink-vs-replace`` and ``truncate-vs-commit``), without a kernel.

Host A is the mount's handlers (:mod:`opskit`); host B is a second
:class:`Namespace` on the same SQLite file or Redis keys, as another mount or
a library process would be. ``hold`` runs B's whole step just before one of
A's metadata (or blob) calls, after A has read what it decides on: the
interleaving is forced, never left to timing.

What must hold: unlink(2) and rename(2) act on whatever the name designates
when they run, so a name another host replaced meanwhile (it existed at
every instant) is never ENOENT; and truncate(2) by path cuts the content as
it is when it runs, so it never publishes a cut of an older version over a
version another host completed meanwhile.
"""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from types import SimpleNamespace

import pyfuse3
import pytest
from opskit import ROOT, Hosts, two_hosts
from storekit import commit_bytes, hold

from core.nodes import Node
from core.tree.namespace import Namespace

V1 = bytes(range(256)) * 4  # 1024 bytes
V2 = b"the version another host committed meanwhile\n" * 50  # 2300 bytes
CUT = 300


@pytest.fixture(params=["sqlite", "redis"])
async def hosts(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Hosts]:
    url = request.getfixturevalue("redis_server").url if request.param == "redis" else None
    async with two_hosts(tmp_path, url) as made:
        yield made


async def content(ns: Namespace, node: Node) -> bytes:
    key = node.artifact.blob_key  # type: ignore[union-attr]
    return b"" if key is None else ns.blobs._blobs[key]  # type: ignore[attr-defined]


async def home_of(h: Hosts) -> tuple[int, Node]:
    """The mount's users/root directory (made if missing): its FUSE inode, and B's node of it."""
    ino = await h.a.directory("users/root")
    return ino, await h.b.get(ino)


async def errno_of(call: Awaitable[object]) -> int:
    with pytest.raises(pyfuse3.FUSEError) as failed:
        await call
    return failed.value.errno


async def blobs_named(h: Hosts, *nodes: Node) -> bool:
    """The blob store holds the blobs of ``nodes`` and nothing else once gc has run past every
    grace period (issue #16): nothing leaked."""
    await h.b.collect_garbage(now_ns=2**62)
    return set(h.blobs._blobs) == {n.artifact.blob_key for n in nodes if n.artifact is not None} - {None}


# -- B replaces the name A is about to unlink or rename


async def b_stores_over(h: Hosts, home: Node, name: str, data: bytes) -> Node:
    """What the library's store() to a filename does: a new file put over the name in one step."""
    node = await h.b.insert_file(await h.b.file_node(home, name, ttl=None), replace=True, parent=home)
    return await commit_bytes(h.b, node.ino, data)


async def b_renames_onto(h: Hosts, home: Node, name: str, data: bytes) -> Node:
    """What a mount does to save over a name (editors, rsync): a fresh file renamed onto it."""
    spare = await h.b.insert_file(await h.b.file_node(home, "spare", ttl=None), replace=False, parent=home)
    spare = await commit_bytes(h.b, spare.ino, data)
    await h.b.rename(spare, home, name)
    return spare


REPLACES = {"store-over": b_stores_over, "rename-onto": b_renames_onto}


@pytest.mark.parametrize("replace", REPLACES)
async def test_an_unlink_of_a_name_another_host_replaced_removes_what_it_names(hosts: Hosts, replace: str) -> None:
    """A looks f up for unlink; B puts a new file at f; A's remove finds its node gone from f.
    f existed at every instant: the unlink removes B's file. Was ENOENT."""
    h = hosts
    home_ino, home = await home_of(h)
    await h.a.write_file("users/root/f", V1)
    theirs: list[Node] = []

    async def b_replaces() -> None:
        theirs.append(await REPLACES[replace](h, home, "f", V2))

    hold(h.a.ops.ns.meta, "remove", b_replaces)
    await h.a.ops.unlink(home_ino, b"f", ROOT)  # type: ignore[arg-type]
    assert theirs and await h.b.find(home, "f") is None
    assert await errno_of(h.a.lookup("users/root/f")) == errno.ENOENT
    assert await blobs_named(h)  # B's version went with its file, and A's v1 with the file B replaced


@pytest.mark.parametrize("replace", REPLACES)
async def test_a_rename_of_a_name_another_host_replaced_moves_what_it_names(hosts: Hosts, replace: str) -> None:
    """A looks f up for rename(f, g); B puts a new file at f; A's rename finds its node gone
    from f. f existed at every instant: g is B's file now. Was ENOENT."""
    h = hosts
    home_ino, home = await home_of(h)
    await h.a.write_file("users/root/f", V1)
    theirs: list[Node] = []

    async def b_replaces() -> None:
        theirs.append(await REPLACES[replace](h, home, "f", V2))

    hold(h.a.ops.ns.meta, "rename", b_replaces)
    await h.a.ops.rename(home_ino, b"f", home_ino, b"g", 0, ROOT)  # type: ignore[arg-type]
    moved = await h.b.child(home, "g")
    assert moved.ino == theirs[0].ino and await content(h.b, moved) == V2
    assert await h.b.find(home, "f") is None
    assert await blobs_named(h, moved)


async def test_an_unlink_of_a_name_a_directory_took_over_is_eisdir(hosts: Hosts) -> None:
    """B removes f and makes a directory f before A's remove: unlink(2) of a directory is EISDIR."""
    h = hosts
    home_ino, home = await home_of(h)
    await h.a.write_file("users/root/f", V1)

    async def b_makes_a_directory() -> None:
        await h.b.unlink(await h.b.child(home, "f"))
        await h.b.mkdir(home, "f")

    hold(h.a.ops.ns.meta, "remove", b_makes_a_directory)
    assert await errno_of(h.a.ops.unlink(home_ino, b"f", ROOT)) == errno.EISDIR  # type: ignore[arg-type]
    assert (await h.b.child(home, "f")).is_dir


async def test_a_name_another_host_removed_or_moved_is_still_enoent(hosts: Hosts) -> None:
    """Looking again finds the name gone: ENOENT, and nothing else is touched."""
    h = hosts
    home_ino, home = await home_of(h)
    await h.a.write_file("users/root/f", V1)
    steps: list[str] = []

    async def b_moves() -> None:
        await h.b.rename(await h.b.child(home, "f"), home, "h")
        steps.append("moved")

    async def b_removes() -> None:
        await h.b.unlink(await h.b.child(home, "h"))
        steps.append("removed")

    hold(h.a.ops.ns.meta, "remove", b_moves)
    assert await errno_of(h.a.ops.unlink(home_ino, b"f", ROOT)) == errno.ENOENT  # type: ignore[arg-type]
    assert [n.name for n in await h.b.list(home)] == ["h"]
    hold(h.a.ops.ns.meta, "rename", b_removes)
    assert await errno_of(h.a.ops.rename(home_ino, b"h", home_ino, b"g", 0, ROOT)) == errno.ENOENT  # type: ignore[arg-type]
    assert steps == ["moved", "removed"] and await h.b.list(home) == [] and await blobs_named(h)


async def test_a_failed_unlink_leaves_no_copy_to_publish_over_a_newer_version(hosts: Hosts) -> None:
    """A has f open (read-only) and unlinks it; B renamed f to h first, so the unlink is ENOENT.
    The bytes A held for its descriptor (it meant to remove f) must not be published at its close:
    that copy of v1 would undo the version B writes to h meanwhile."""
    h = hosts
    home_ino, home = await home_of(h)
    await h.a.write_file("users/root/f", V1)
    fh = await h.a.open("users/root/f")

    async def b_moves() -> None:
        await h.b.rename(await h.b.child(home, "f"), home, "h")

    hold(h.a.ops.ns.meta, "remove", b_moves)
    assert await errno_of(h.a.ops.unlink(home_ino, b"f", ROOT)) == errno.ENOENT  # type: ignore[arg-type]
    newer = await commit_bytes(h.b, (await h.b.child(home, "h")).ino, V2)
    await h.a.ops.release(fh)
    stored = await h.b.child(home, "h")
    assert stored.artifact.version == newer.artifact.version and await content(h.b, stored) == V2  # type: ignore[union-attr]
    assert await blobs_named(h, stored)


async def test_an_unlink_of_a_file_open_here_whose_version_another_host_replaced(hosts: Hosts) -> None:
    """A has f open at v1; B commits v2 (dropping v1's blob); A unlinks f. f exists: the unlink
    removes it (was ENOENT: copying v1's bytes for A's descriptor found them gone)."""
    h = hosts
    home_ino, home = await home_of(h)
    await h.a.write_file("users/root/f", V1)
    fh = await h.a.open("users/root/f")
    await commit_bytes(h.b, (await h.b.child(home, "f")).ino, V2)
    await h.a.ops.unlink(home_ino, b"f", ROOT)  # type: ignore[arg-type]
    assert await h.b.find(home, "f") is None and await blobs_named(h)
    await h.a.ops.release(fh)
    assert await blobs_named(h)


# -- B commits a version while A truncates f by path


async def test_a_truncate_by_path_cuts_the_version_committed_meanwhile(hosts: Hosts) -> None:
    """A reads f (v1) and cuts it for truncate(f, 300); B commits v2 before A's commit. f must be
    v2's first 300 bytes (was v1's: the last-writer-wins rebase published them over v2)."""
    h = hosts
    _, home = await home_of(h)
    await h.a.write_file("users/root/f", V1)

    async def b_commits() -> None:
        await commit_bytes(h.b, (await h.b.child(home, "f")).ino, V2)

    hold(h.a.ops.ns.meta, "commit", b_commits)
    await h.a.truncate("users/root/f", CUT)
    stored = await h.b.child(home, "f")
    assert await content(h.b, stored) == V2[:CUT]
    assert stored.size == CUT and (await h.a.lookup("users/root/f")).st_size == CUT
    assert await blobs_named(h, stored)  # the cut of v1 that lost went, and v2's blob with its version


async def test_a_truncate_by_path_whose_version_went_before_it_read_it(hosts: Hosts) -> None:
    """B commits v2 (dropping v1's blob) after A read f's record but before A reads v1's bytes.
    The truncate cuts v2 (was ENOENT: v1's blob was gone)."""
    h = hosts
    _, home = await home_of(h)
    await h.a.write_file("users/root/f", V1)

    async def b_commits() -> None:
        await commit_bytes(h.b, (await h.b.child(home, "f")).ino, V2)

    hold(h.blobs, "reader", b_commits)
    await h.a.truncate("users/root/f", CUT)
    stored = await h.b.child(home, "f")
    assert await content(h.b, stored) == V2[:CUT] and await blobs_named(h, stored)


async def test_a_truncate_by_path_to_the_size_it_read_still_cuts_the_newer_version(hosts: Hosts) -> None:
    """truncate(f, len(v1)) only touches f as A read it; B commits a longer v2 before that touch
    is stored. f must be v2 cut to len(v1) (was v2 whole, its mtime moved)."""
    h = hosts
    _, home = await home_of(h)
    await h.a.write_file("users/root/f", V1)

    async def b_commits() -> None:
        await commit_bytes(h.b, (await h.b.child(home, "f")).ino, V2)

    hold(h.a.ops.ns.meta, "update", b_commits)
    await h.a.truncate("users/root/f", len(V1))
    stored = await h.b.child(home, "f")
    assert await content(h.b, stored) == V2[: len(V1)] and await blobs_named(h, stored)


async def test_a_truncate_by_path_keeps_a_chmod_and_rename_made_meanwhile(hosts: Hosts) -> None:
    """Attributes changed meanwhile are no conflict: the cut is still of the version stored, and
    the mode and name B set survive it."""
    h = hosts
    _, home = await home_of(h)
    ino = await h.a.write_file("users/root/f", V1)

    async def b_chmods_and_renames() -> None:
        node = await h.b.child(home, "f")
        await h.b.update_node(node, lambda n: setattr(n, "mode", 0o600))
        await h.b.rename(node, home, "g")

    hold(h.a.ops.ns.meta, "commit", b_chmods_and_renames)
    await h.a.truncate("users/root/f", CUT)
    stored = await h.b.get(ino)
    assert (stored.name, stored.mode, stored.artifact.version) == ("g", 0o600, 2)  # type: ignore[union-attr]
    assert await content(h.b, stored) == V1[:CUT] and await blobs_named(h, stored)


async def test_ftruncate_and_close_keep_the_last_close_wins_rule(hosts: Hosts) -> None:
    """Through a descriptor, a truncate is a write like any other: published at close, and the
    last close wins over a version another host committed meanwhile (README: as over NFS).
    This pins the documented rule that the path truncate's fix leaves as it is."""
    h = hosts
    _, home = await home_of(h)
    await h.a.write_file("users/root/f", V1)
    fh = await h.a.open("users/root/f", os.O_WRONLY)
    attr = pyfuse3.EntryAttributes()
    attr.st_size = CUT
    fields = SimpleNamespace(update_size=True, update_mode=False, update_uid=False, update_gid=False,
                             update_atime=False, update_mtime=False)
    await h.a.ops.setattr((await h.a.lookup("users/root/f")).st_ino, attr, fields, fh, ROOT)  # type: ignore[arg-type]
    await commit_bytes(h.b, (await h.b.child(home, "f")).ino, V2)
    await h.a.ops.flush(fh)
    await h.a.ops.release(fh)
    stored = await h.b.child(home, "f")
    assert await content(h.b, stored) == V1[:CUT] and await blobs_named(h, stored)
