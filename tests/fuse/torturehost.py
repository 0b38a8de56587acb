"""One host of the multi-host torture test, as a process of its own.

A host acts on the store the way a real one would: a *mount host* makes
file system calls in a directory of a mount (``users/alice``), a *library
host* calls an :class:`core.ArtifactStore` built from the environment alone
(``ArtifactStore()``, as an application does) on user ``alice``'s files. The
test drives each host through its stdin and stdout, one JSON line per
command and one per answer, so a host's step can be started, left hanging
(its metadata call held by the host's Redis proxy) and finished while
another host works. A host never decides anything: it does what it is
told and answers what happened, as ``ok`` with a value, or an errno.

Run as ``python torturehost.py mount DIR`` or ``python torturehost.py
library``; the test side is :class:`HostProcess`.
"""

from __future__ import annotations

import base64
import ctypes
import errno
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

USER = "alice"  # whose user space every host works in


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


class Failed(Exception):
    """A command failed with ``errno`` (what a program would see)."""

    def __init__(self, code: int, error: str) -> None:
        super().__init__(error)
        self.errno, self.error = code, error


# -- a mount host: file system calls, relative to its directory


def _read_to_end(fd: int, offset: int) -> bytes:
    out = bytearray()
    while True:
        chunk = os.pread(fd, 1 << 20, offset + len(out))
        if not chunk:
            return bytes(out)
        out += chunk


def _write(name: str, data: str) -> None:
    """What ``cat > name`` does: create or truncate, write, close (close publishes)."""
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(_unb64(data))
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _read(name: str) -> str:
    fd = os.open(name, os.O_RDONLY)
    try:
        return _b64(_read_to_end(fd, 0))
    finally:
        os.close(fd)


def _stat(name: str) -> dict[str, int]:
    st = os.lstat(name)
    return {"ino": st.st_ino, "size": st.st_size, "mode": st.st_mode & 0o7777}


def _exchange(src: str, dst: str) -> None:
    """``renameat2(src, dst, RENAME_EXCHANGE)``: both names swap files in one step."""
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, rename_exchange = -100, 2
    if libc.renameat2(at_fdcwd, src.encode(), at_fdcwd, dst.encode(), rename_exchange) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), src)


MOUNT_OPS: dict[str, Callable[..., Any]] = {
    "write": _write,
    "read": _read,
    "rename": lambda src, dst: os.rename(src, dst),
    "exchange": _exchange,
    "truncate": lambda name, size: os.truncate(name, size),
    "unlink": lambda name: os.unlink(name),
    "chmod": lambda name, mode: os.chmod(name, mode),
    "setxattr": lambda name, key, value: os.setxattr(name, key, value.encode()),
    "getxattr": lambda name, key: os.getxattr(name, key).decode(),
    "stat": _stat,
    "listdir": lambda: sorted(os.listdir(".")),
    "open": lambda name: os.open(name, os.O_RDONLY),
    "pread": lambda fd, offset, size: _b64(os.pread(fd, size, offset)),
    "read_rest": lambda fd, offset: _b64(_read_to_end(fd, offset)),
    "close": lambda fd: os.close(fd),
}


def serve_mount(directory: str) -> None:
    os.chdir(directory)

    def run(op: str, args: dict[str, Any]) -> Any:
        try:
            return MOUNT_OPS[op](**args)
        except OSError as exc:
            raise Failed(exc.errno or errno.EIO, f"{type(exc).__name__}: {exc}") from None

    _serve(run)


# -- a library host: ArtifactStore calls on alice's user-scope artifacts, found by filename


class LibraryHost:
    def __init__(self, store: Any) -> None:
        self.store = store

    async def _listing(self) -> list[Any]:
        return await self.store.search(user_id=USER, scope="user")

    async def _id(self, name: str) -> str:
        for meta in await self._listing():
            if meta.filename == name:
                return meta.artifact_id
        raise Failed(errno.ENOENT, f"no artifact named {name!r}")

    async def store_file(self, name: str, data: str) -> str:
        """A new artifact at ``name`` (replacing any there, as ``store()`` does)."""
        return await self.store.store(_unb64(data), filename=name, user_id=USER, scope="user", mime="text/plain")

    async def update_file(self, name: str, data: str) -> None:
        """A new version of the artifact at ``name``."""
        await self.store.update_file(await self._id(name), data=_unb64(data), user_id=USER)

    async def update_metadata(self, name: str, summary: str) -> None:
        await self.store.update_metadata(await self._id(name), summary=summary, user_id=USER)

    async def delete(self, name: str) -> None:
        if not await self.store.delete(await self._id(name), user_id=USER):
            raise Failed(errno.ENOENT, f"delete of {name!r}: not found")

    async def move(self, name: str, new_name: str) -> None:
        await self.store.move_file(await self._id(name), new_filename=new_name, user_id=USER)

    async def read(self, name: str) -> str:
        return _b64(await self.store.retrieve(await self._id(name), user_id=USER))

    async def listing(self) -> list[dict[str, Any]]:
        return [
            {"name": m.filename, "artifact_id": m.artifact_id, "version": m.version, "size": m.bytes,
             "summary": m.summary}
            for m in await self._listing()
        ]

    async def gc(self) -> int:
        """gc as it runs once every grace period and upload intent is over (issue #16)."""
        return await self.store.ns.collect_garbage(now_ns=2**62)

    async def tree(self) -> list[dict[str, Any]]:
        """The records of alice's directory as stored (an observer's view: inodes, modes, blob keys)."""
        from core.errors import ArtifactNotFoundError
        from core.models import Scope
        from core.nodes import Space

        ns = self.store.ns
        try:
            home = await ns.scope_root(Space(sandbox_id=self.store.sandbox_id, scope=Scope.USER, user_id=USER),
                                       create=False)
        except ArtifactNotFoundError:
            return []
        return [
            {"name": n.name, "ino": n.ino, "size": n.size, "mode": n.mode,
             "artifact_id": n.artifact.artifact_id if n.artifact else None,
             "version": n.artifact.version if n.artifact else None,
             "blob_key": n.artifact.blob_key if n.artifact else None,
             "summary": n.artifact.summary if n.artifact else None}
            for n in await ns.list(home)
        ]


def serve_library() -> None:
    import asyncio

    from core import ArtifactStore
    from core.errors import ArtifactStoreError
    from fusefs.errnos import errno_of

    async def main() -> None:
        async with ArtifactStore() as store:
            await store.search(user_id=USER, scope="user")  # connected before the first command
            host = LibraryHost(store)
            loop = asyncio.get_running_loop()
            ops = {
                "store": host.store_file, "update_file": host.update_file, "update_metadata": host.update_metadata,
                "delete": host.delete, "move": host.move, "read": host.read, "listing": host.listing,
                "tree": host.tree, "gc": host.gc,
            }
            _answer({"ready": True})
            while True:
                line = await loop.run_in_executor(None, sys.stdin.readline)
                if not line:
                    return
                request = json.loads(line)
                try:
                    value = await ops[request["op"]](**request["args"])
                except Failed as exc:
                    _answer({"ok": False, "errno": exc.errno, "error": exc.error})
                except ArtifactStoreError as exc:
                    _answer({"ok": False, "errno": errno_of(exc), "error": f"{type(exc).__name__}: {exc}"})
                except Exception as exc:  # noqa: BLE001 (answered, never fatal: the test counts it)
                    _answer({"ok": False, "errno": errno.EIO, "error": f"unexpected {type(exc).__name__}: {exc}"})
                else:
                    _answer({"ok": True, "value": value})

    asyncio.run(main())


# -- the command loop


def _answer(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _serve(run: Callable[[str, dict[str, Any]], Any]) -> None:
    _answer({"ready": True})
    for line in sys.stdin:
        request = json.loads(line)
        try:
            value = run(request["op"], request["args"])
        except Failed as exc:
            _answer({"ok": False, "errno": exc.errno, "error": exc.error})
        else:
            _answer({"ok": True, "value": value})


# -- the test's side


@dataclass(frozen=True)
class Outcome:
    """What one command of a host came to."""

    ok: bool
    value: Any = None
    errno: int | None = None
    error: str = ""

    @property
    def label(self) -> str:
        return "ok" if self.ok else errno.errorcode.get(self.errno or 0, str(self.errno))


class HostStuck(AssertionError):
    """A host did not answer within its bound: something hangs (never a figure, always a failure)."""


class HostProcess:
    """A host process and the one command it may have in flight."""

    def __init__(self, name: str, kind: str, argv: list[str], env: dict[str, str], log: Path, bound: float) -> None:
        self.name, self.kind, self.bound, self.log = name, kind, bound, log
        with open(log, "wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                env=env, text=True, bufsize=1, cwd=Path(__file__).resolve().parents[2],
            )
        self._answers: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()  # one command at a time
        threading.Thread(target=self._pump, name=f"host-{name}", daemon=True).start()
        ready = self._next(f"host {name} to start")
        if not ready.get("ready"):
            raise AssertionError(f"host {name} did not start: {ready}")

    def __repr__(self) -> str:
        return f"host {self.name} ({self.kind})"

    @property
    def is_mount(self) -> bool:
        return self.kind == "mount"

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._answers.put(line)
        self._answers.put(None)

    def _next(self, what: str) -> dict[str, Any]:
        try:
            line = self._answers.get(timeout=self.bound)
        except queue.Empty:
            raise HostStuck(f"no answer within {self.bound:.0f} s waiting for {what}") from None
        if line is None:
            raise AssertionError(f"host {self.name} exited while {what}:\n{self.log.read_text(errors='replace')[-3000:]}")
        return json.loads(line)

    def call(self, op: str, **args: Any) -> Outcome:
        with self._lock:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"op": op, "args": args}) + "\n")
            self.proc.stdin.flush()
            answer = self._next(f"{op}{args!r:.120} on host {self.name}")
        if answer["ok"]:
            return Outcome(True, answer.get("value"))
        return Outcome(False, errno=answer["errno"], error=answer["error"])

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=30)


if __name__ == "__main__":
    # The tree this file is in, not whatever installed copy of the project: a host runs the code under test.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    if sys.argv[1] == "mount":
        serve_mount(sys.argv[2])
    else:
        serve_library()
