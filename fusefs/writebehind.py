"""Parts of a file being written sent to the blob store before it is closed (S3).

``dd`` or ``cp`` of a large file through the mount writes into a local spool,
and close() publishes it. On S3, sending it all at close meant the writer
waited for the whole upload after its last write; here every whole part the
sequential writer has left behind goes out while it writes on, so close
waits for the last part and the join. The bytes are still published only
at close, as one new version, and only with the SHA-256 of what the spool
holds then: a part counts as sent only while nothing was written into it
since it started out. A write into a part that went (or is going) out, or a
truncate below it, takes it off the list, and close sends it again (the last
copy of a part number wins in S3).

Anything that goes wrong here (a failed part, a file outgrowing the part
count) gives up the early parts: close then sends the whole file as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

from core.backends.blobs.base import FileUpload

log = logging.getLogger("artifactfs.mount")


class WriteBehind:
    def __init__(self, upload: FileUpload, path: str) -> None:
        self.upload, self.path = upload, path
        self.part = upload.part_size
        self.sent: set[int] = set()  # parts out (or going out) and not written into since
        self._below = 0  # every part below this one is in ``sent``: where the search for the next starts
        self.failed = False
        self._pump: trio.Event | None = None  # set when the running sender stops

    def touched(self, start: int, end: int) -> None:
        """Bytes ``[start, end)`` were written: the parts they fall in must go again."""
        if self.sent and end > start:
            first = start // self.part
            self.sent.difference_update(range(first, (end - 1) // self.part + 1))
            self._below = min(self._below, first)

    def shrunk(self, size: int) -> None:
        """The file was cut to ``size``: a part reaching past it is not the part it was."""
        self.sent = {index for index in self.sent if (index + 1) * self.part <= size}
        self._below = min(self._below, size // self.part)

    def keep_up(self, written: Callable[[], int | None], spawn: Callable[..., Any]) -> None:
        """Start sending the whole parts the writer left behind, unless a sender runs.

        ``written()`` is the file's size while it is written sequentially, else None.
        """
        size = written()
        if self._pump is None and not self.failed and size is not None and self._next(size) is not None:
            self._pump = trio.Event()
            spawn(self._send_behind, written)

    def _next(self, size: int) -> int | None:
        """The first whole part below ``size`` not out yet (asked at every write: it starts where it left off)."""
        while self._below in self.sent:
            self._below += 1
        return self._below if self._below < size // self.part else None

    async def _send_behind(self, written: Callable[[], int | None]) -> None:
        assert self._pump is not None
        try:
            # Only behind a sequential writer: parts of a file written all over would go out again and again.
            while (size := written()) is not None and (index := self._next(size)) is not None:
                if index >= self.upload.max_parts:
                    raise OverflowError(f"more than {self.upload.max_parts} parts")
                self.sent.add(index)  # before a byte is read: a write from now on takes it off again
                await self.upload.send(index, self.path, self.part)
        except Exception as exc:  # noqa: BLE001 - close sends the whole file instead
            log.info("sending %s ahead of close stopped (%s); close sends it whole", self.path, exc)
            self.failed = True
        finally:
            self._pump.set()
            self._pump = None

    async def settle(self) -> None:
        """Wait until no sender runs (the writer has stopped: close or fsync)."""
        while self._pump is not None:
            await self._pump.wait()

    def usable(self, size: int) -> bool:
        """Whether close should finish this upload for a ``size``-byte file; else it sends the file whole
        (a file that never filled a part is one plain PUT)."""
        return bool(self.sent) and not self.failed and 0 < size and -(-size // self.part) <= self.upload.max_parts

    async def finish(self, size: int) -> None:
        """Send what is missing of a ``size``-byte file and join the parts; on failure nothing is left."""
        await self.settle()
        count = -(-size // self.part)
        try:
            for index in range(count):
                if index not in self.sent:
                    self.sent.add(index)
                    await self.upload.send(index, self.path, min(self.part, size - index * self.part))
            await self.upload.complete(count, size)
        except BaseException:
            await self.abort()
            raise

    async def abort(self) -> None:
        await self.settle()
        self.failed = True
        await self.upload.abort()
