"""``artifactfs status [MOUNTPOINT | --data-dir D]``: the store, and the mount on it if one runs (issue #11).

Read only, and never through the mount: the store part opens the backends
the data dir's settings name (what is stored, per sandbox and scope, and
the uploads still open), the mount part reads what the mount process leaves
in its data dir (its lock names its pid and mountpoint; its spool holds the
files open for writing; its log, the errors).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from pathlib import Path

from core import ArtifactStore
from core.config import backends_of
from core.errors import ArtifactStoreError
from core.models import Usage
from core.settings import Settings
from fusefs.datadir import LOG_FILE, SPOOL_DIR, DataDirLock, mounted_data_dir
from fusefs.store_cmd import on_store, size_text

LAST_ERRORS = 5  # log lines shown


async def _read(store: ArtifactStore) -> tuple[dict[str, Usage], int]:
    return await store.ns.meta.usages(), len(await store.transfers.registry.ids())


def _store_lines(settings: Settings, usages: dict[str, Usage], uploads: int) -> list[str]:
    blobs, meta = backends_of(settings)
    lines = [f"store: blobs on {blobs.name}, metadata on {meta.name}"]
    by_sandbox: dict[str, dict[str, Usage]] = defaultdict(lambda: defaultdict(Usage))
    for key, usage in usages.items():
        sandbox, _, rest = key.partition("/")
        scope = rest.partition("/")[0]
        by_sandbox[sandbox][scope].add(usage.files, usage.bytes)
    for sandbox, scopes in sorted(by_sandbox.items()):
        parts = [f"{scope} {u.files} artifacts ({size_text(u.bytes)})" for scope, u in sorted(scopes.items())]
        lines.append(f"  sandbox {sandbox}: " + ", ".join(parts))
    if not by_sandbox:
        lines.append("  no artifacts")
    lines.append(f"  open uploads: {uploads}")
    return lines


def mount_lines(data_dir: Path) -> list[str]:
    """What the mount process on ``data_dir`` shows of itself, or that none runs."""
    held = DataDirLock.holder(data_dir)
    if held is None:
        return [f"mount: none on {data_dir}"]
    pid, mountpoint = held
    spool = Usage()
    for path in (data_dir / SPOOL_DIR).rglob("*"):
        if path.is_file():
            spool.add(1, path.stat().st_size)
    lines = [
        f"mount: pid {pid} at {mountpoint or '?'}, up {_uptime(pid)}",
        f"  files open for writing: {spool.files} (spool {size_text(spool.bytes)})",
    ]
    errors = _last_errors(data_dir / LOG_FILE)
    lines.append("  last errors: none" if not errors else "  last errors:")
    lines += [f"    {line}" for line in errors]
    return lines


def _uptime(pid: int) -> str:
    """How long process ``pid`` has run, from /proc (its start in clock ticks after boot)."""
    try:
        started = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])
        since_boot = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return "?"
    seconds = int(since_boot - started / os.sysconf("SC_CLK_TCK"))
    hours, rest = divmod(max(seconds, 0), 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _last_errors(log: Path) -> list[str]:
    """The last few ERROR lines of the mount's log (its tail only: the log may be large)."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - (256 << 10)))
            tail = f.read().decode(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    return [line for line in tail if " ERROR " in line][-LAST_ERRORS:]


def run(args: argparse.Namespace) -> int:
    """Run with already-parsed arguments (the ``artifactfs`` CLI's subcommand)."""
    data_dir = args.data_dir
    if args.mountpoint is not None:
        data_dir = mounted_data_dir(args.mountpoint)
        if data_dir is None:
            print(f"artifactfs status: {args.mountpoint} is not an artifactfs mount", file=sys.stderr)
            return 1
    try:
        settings, (usages, uploads) = on_store(data_dir, _read)
    except (ArtifactStoreError, OSError) as exc:
        print(f"artifactfs status: {exc}", file=sys.stderr)
        return 1
    print("\n".join([*_store_lines(settings, usages, uploads), *mount_lines(Path(settings.fs_root))]))
    return 0
