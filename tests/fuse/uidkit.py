"""Running commands as other, unprivileged uids against a shared mount (``-o allow_other``).

``setpriv`` switches uid and gid without passwd entries. The mount lives in
a world-traversable directory so those uids can reach it at all.
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mounting import Mount, start_mount
from worlds import EMBEDDED, StoreWorld

ALICE, BOB, ADMIN, STRANGER = 5101, 5102, 5103, 5104  # STRANGER is in no map

# Runs a list of [operation, path, argument] as the calling uid and prints each outcome as
# ["ok", value] or ["error", "ERRNO"]. It is plain os calls, for the system Python.
PROBE = r"""
import errno, json, os, sys

def run(op, path, arg):
    if op == "read":
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    if op == "write":
        with open(path, "w") as f:
            f.write(arg)
        return None
    if op == "append":
        with open(path, "a") as f:
            f.write(arg)
        return None
    if op == "list":
        return sorted(os.listdir(path))
    if op == "stat":
        return os.stat(path).st_size
    if op == "mkdir":
        return os.mkdir(path)
    if op == "rmdir":
        return os.rmdir(path)
    if op == "unlink":
        return os.unlink(path)
    if op == "rename":
        return os.rename(path, arg)
    if op == "symlink":
        return os.symlink(arg, path)
    if op == "chmod":
        return os.chmod(path, int(arg, 8))
    if op == "chown":
        return os.chown(path, int(arg), -1)
    if op == "truncate":
        return os.truncate(path, int(arg))
    if op == "utime":
        return os.utime(path, (1, 1))
    if op == "getxattr":
        return os.getxattr(path, arg).decode()
    if op == "setxattr":
        name, _, value = arg.partition("=")
        return os.setxattr(path, name, value.encode())
    raise SystemExit("unknown op " + op)

results = []
for op, path, arg in json.loads(sys.argv[1]):
    try:
        results.append(["ok", run(op, path, arg)])
    except OSError as exc:
        results.append(["error", errno.errorcode.get(exc.errno, str(exc.errno))])
print(json.dumps(results))
"""


def as_uid(uid: int, *command: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *command],
        capture_output=True, text=True, cwd=cwd, check=False,
    )


def probe(uid: int, *ops: tuple[str, Path] | tuple[str, Path, str]) -> list[tuple[str, object]]:
    batch = [[op[0], str(op[1]), op[2] if len(op) > 2 else ""] for op in ops]
    done = as_uid(uid, "/usr/bin/python3", "-c", PROBE, json.dumps(batch))
    assert done.returncode == 0, done.stderr
    return [tuple(result) for result in json.loads(done.stdout)]


def denied(code: int = errno.EACCES) -> tuple[str, str]:
    return ("error", errno.errorcode[code])


OK = ("ok", None)


@contextmanager
def shared_mount(data_dir: Path, world: StoreWorld = EMBEDDED) -> Iterator[Mount]:
    """A mount with allow_other and a uid map, in a directory every uid can traverse."""
    public = Path(tempfile.mkdtemp(prefix="artifactfs-uids-", dir="/tmp"))
    public.chmod(0o755)
    mount = start_mount(
        public / "mnt", data_dir,
        args=["-o", "allow_other", "--map-user", f"alice={ALICE}", "--map-user", f"bob={BOB}",
              "--admin-uid", str(ADMIN)],
        world=world,
    )
    try:
        yield mount
    finally:
        try:
            mount.stop()
        finally:
            shutil.rmtree(public, ignore_errors=True)
