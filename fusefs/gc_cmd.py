"""``artifactfs gc [--data-dir D] [--dry-run]``: reclaim what nothing needs any more (issue #11).

The store's part is :meth:`core.api.maintenance.MaintenanceApi.gc`; this
command adds the data dir's own: the spool a mount that died left behind,
taken only while no mount holds the data dir (its lock is held meanwhile,
so none starts). Safe from cron on every host of a shared store at once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.errors import ArtifactStoreError
from core.models import GcReport, Usage
from fusefs.datadir import SPOOL_DIR, DataDirLock, MountError
from fusefs.progress import Progress
from fusefs.store_cmd import on_store, size_text


def spool_leftovers(data_dir: Path, *, dry_run: bool) -> Usage | None:
    """The files a dead mount staged in ``data_dir``, removed unless ``dry_run``; None while a mount runs."""
    spool = data_dir / SPOOL_DIR
    if not spool.is_dir():
        return Usage()
    lock = DataDirLock(data_dir)
    try:
        lock.acquire(Path("(artifactfs gc)"))
    except MountError:
        return None  # a live mount owns its spool
    try:
        found = Usage()
        for path in sorted(spool.rglob("*"), reverse=True):  # files before the directories holding them
            if path.is_file() or path.is_symlink():
                found.add(1, path.lstat().st_size)
                if not dry_run:
                    path.unlink(missing_ok=True)
            elif not dry_run:
                path.rmdir()
        return found
    finally:
        lock.release()


def describe(report: GcReport, spool: Usage | None) -> list[str]:
    """One line per kind: what was (or, dry, would be) reclaimed."""
    verb = "would reclaim" if report.dry_run else "reclaimed"
    lines = [
        f"expired artifacts: {report.expired.files} ({size_text(report.expired.bytes)})",
        f"blobs past their grace period: {report.blobs}",
        f"orphan blobs (queued; they go after the grace period): {report.orphans}",
        f"expired uploads: {report.uploads}",
        "spool of a dead mount: skipped, a mount is running" if spool is None
        else f"spool of a dead mount: {spool.files} files ({size_text(spool.bytes)})",
    ]
    return [f"artifactfs gc {verb}:", *(f"  {line}" for line in lines)]


def run(args: argparse.Namespace) -> int:
    """Run with already-parsed arguments (the ``artifactfs`` CLI's subcommand)."""
    try:
        with Progress("gc: blobs listed") as bar:
            settings, report = on_store(args.data_dir, lambda store: store.gc(dry_run=args.dry_run, progress=bar))
        spool = spool_leftovers(Path(settings.fs_root), dry_run=args.dry_run)
    except (ArtifactStoreError, OSError) as exc:
        print(f"artifactfs gc: {exc}", file=sys.stderr)
        return 1
    print("\n".join(describe(report, spool)))
    return 0
