"""Listing a directory a page at a time (issue #16): what a listing guarantees while the directory
changes, and what an open directory holds, counted in records, whatever the directory's size."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
from opskit import ROOT, SIGNER, ctx, kernel
from storekit import minted_id

from core.backends.meta.base import ChildrenPage
from core.backends.meta.sqlite import SQLiteMetaStore
from core.nodes import Artifact, Node, NodeKind, new_node
from core.tree.base import EMPTY_SHA256


class CountingMeta:
    """A real store that counts the records each listing read answers (and refuses whole listings)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.pages: list[int] = []  # records answered, per page read

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def children(self, parent: int) -> list[Node]:
        raise AssertionError("a listing read the whole directory at once")

    async def children_page(self, parent: int, after: str | None, limit: int) -> ChildrenPage:
        page = await self._inner.children_page(parent, after, limit)
        self.pages.append(len(page.nodes))
        return page


async def fill(meta: Any, parent: Node, count: int) -> list[str]:
    """``count`` empty files in ``parent``, straight into the store (the mount would take minutes).

    On SQLite the inserts share one transaction (each still the store's own insert): 100,000
    commits of their own took most of a minute of CPU, and the test is about reading them.
    """
    names = [f"f{i:06d}" for i in range(count)]
    store = getattr(meta, "_inner", meta)
    shared = isinstance(store, SQLiteMetaStore)
    if shared:
        store.db.execute("BEGIN IMMEDIATE")
        store._tx = lambda: contextlib.nullcontext(store.db)  # type: ignore[method-assign]
    try:
        for name in names:
            node = new_node(parent=parent.ino, name=name, kind=NodeKind.FILE, mode=0o644, now_ns=1, space=parent.space)
            node.artifact = Artifact(artifact_id=minted_id(parent.space), sha256=EMPTY_SHA256, blob_key=f"none-{name}")
            await meta.insert(node)
    finally:
        if shared:
            del store._tx
            store.db.execute("COMMIT")
    return names


async def test_an_open_directory_holds_one_page_of_a_100000_entry_directory(tmp_path: Path) -> None:
    """Before: the first readdir read all 100,000 records and the handle held them until releasedir."""
    meta = CountingMeta(SQLiteMetaStore(tmp_path / "meta.sqlite3", SIGNER))
    async with kernel(tmp_path, meta=meta) as k:  # type: ignore[arg-type]
        await k.mkdir("users/alice")
        await k.mkdir("users/alice/big")
        big = await k.ns.get(await k.ino("users/alice/big"))
        names = await fill(meta, big, 100_000)
        fh = await k.ops.opendir(big.ino, ctx(ROOT))
        directory = k.ops._dirs[fh]
        listed: list[bytes] = []
        offset, most_held = 0, 0
        while batch := await k.readdir(fh, offset, room=200):
            listed += [name for name, _, _ in batch]
            offset = batch[-1][2]
            most_held = max(most_held, directory.held)
        await k.ops.releasedir(fh)
    assert listed == [b".", b".."] + [name.encode() for name in names]
    assert most_held <= k.ops.readdir_page
    assert max(meta.pages) <= k.ops.readdir_page
    assert sum(meta.pages) <= 100_000 + len(meta.pages)  # each record read about once, not once per request


@pytest.mark.semantics("S-readdir-offsets")
async def test_a_listing_returns_each_entry_present_throughout_exactly_once(tmp_path: Path) -> None:
    """Entries made and removed between the requests of one listing, ahead of it and behind it."""
    async with kernel(tmp_path) as k:
        k.ops.readdir_page = 5
        stable = [f"s{i:03d}" for i in range(60)]
        for name in stable:
            await k.write_file(f"users/alice/{name}", b"")
        fh = await k.ops.opendir(await k.ino("users/alice"), ctx(ROOT))
        listed: list[str] = []
        offset, turn, made = 0, 0, []
        while batch := await k.readdir(fh, offset, room=3):
            listed += [name.decode() for name, _, _ in batch]
            offset = batch[-1][2]
            turn += 1
            for name in (f"s{turn % 60:03d}x", f"s{(turn * 7) % 60:03d}y"):  # around the cursor and far from it
                await k.write_file(f"users/alice/{name}", b"")
                made.append(name)
            if len(made) > 4:
                await k.unlink(f"users/alice/{made.pop(0)}")
        await k.ops.releasedir(fh)
    assert listed[:2] == [".", ".."]
    names = listed[2:]
    assert len(names) == len(set(names))  # nothing twice
    assert set(stable) <= set(names)  # nothing present throughout left out
