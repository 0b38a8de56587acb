"""``artifactfs fsck [--data-dir D] [--verify-data] [--repair]``: check the store (issue #11).

One line per problem (where, what, the detail, and with ``--repair`` what
was done about it), then a summary line. Exit status 0 when clean, 1 when
problems were found (repaired or not: a second run says whether any are
left), 2 when the check could not run (a backend unreachable, bad settings).
"""

from __future__ import annotations

import argparse
import sys

from core.errors import ArtifactStoreError
from fusefs.progress import Progress
from fusefs.store_cmd import on_store


def run(args: argparse.Namespace) -> int:
    """Run with already-parsed arguments (the ``artifactfs`` CLI's subcommand)."""
    try:
        with Progress("fsck") as bar:
            _, report = on_store(args.data_dir, lambda store: store.fsck(
                verify_data=args.verify_data, repair=args.repair, progress=bar,
            ))
    except (ArtifactStoreError, OSError) as exc:
        print(f"artifactfs fsck: could not run: {exc}", file=sys.stderr)
        return 2
    for problem in report.problems:
        done = f" [{'repaired' if problem.repaired else 'not repaired'}: {problem.repair}]" if problem.repair else ""
        print(f"{problem.where}: {problem.kind.value}: {problem.detail}{done}")
    verified = f", {report.verified} verified" if args.verify_data else ""
    found = f"{len(report.problems)} problem(s)" if report.problems else "clean"
    if args.repair and report.problems:
        found += f", {report.repaired} repaired"
    print(f"artifactfs fsck: {report.nodes} nodes, {report.files} files{verified}: {found}")
    return 1 if report.problems else 0
