"""``artifactfs checkpoint {create,list,restore,delete} WORKSPACE [NAME]`` (issue #10).

Works through the mount, as a shell user could by hand: a checkpoint is made
with ``mkdir WORKSPACE/.checkpoints/NAME`` and removed with ``rmdir``, the
list is that directory, and a restore is ``setfattr -n user.artifact.restore
-v NAME WORKSPACE``. So it needs nothing but the mounted path, and the
mount's own checks (who may write the workspace) decide.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from core.tree.checkpoints import HOLDER
from fusefs.operations import RESTORE_XATTR


def run(args: argparse.Namespace) -> int:
    """Run with already-parsed arguments (the ``artifactfs`` CLI's subcommand); exit 0, or 1 with one line."""
    workspace: Path = args.workspace
    holder = workspace / HOLDER
    name = args.name
    try:
        if args.action == "create":
            name = name or time.strftime("cp-%Y%m%d-%H%M%S")
            os.mkdir(holder / name)
            print(name)
        elif args.action == "list":
            found = sorted(os.scandir(holder), key=lambda entry: (entry.stat().st_mtime_ns, entry.name))
            for entry in found:
                print(entry.name)
        elif name is None:
            print(f"artifactfs checkpoint {args.action}: which checkpoint? (NAME)", file=sys.stderr)
            return 1
        elif args.action == "restore":
            os.setxattr(workspace, RESTORE_XATTR, name.encode())
        else:
            os.rmdir(holder / name)
    except OSError as exc:
        what = f"{args.action} {name}" if name else args.action
        print(f"artifactfs checkpoint {what}: {exc.strerror} ({workspace})", file=sys.stderr)
        return 1
    return 0
