"""The ``artifactfs`` command line: parsing only; :mod:`fusefs.mount` does the work.

    artifactfs mount MOUNTPOINT [--sandbox S] [--data-dir D] [--foreground] [-o allow_other]
                                [--map-user NAME=UID ...] [--admin-uid UID ...] [--serve [HOST:PORT]]
                                [--request-timeout SECONDS] [--cache-timeout SECONDS] [--metrics HOST:PORT]
    artifactfs umount [--force] MOUNTPOINT
    artifactfs serve [--data-dir D] [--host H] [--port N] [--public-url URL] [--metrics HOST:PORT]   (fusefs.serve_cmd)
    artifactfs gc [--data-dir D] [--dry-run]   (fusefs.gc_cmd)
    artifactfs status [MOUNTPOINT | --data-dir D]   (fusefs.status_cmd)
    artifactfs fsck [--data-dir D] [--verify-data] [--repair]   (fusefs.fsck_cmd)
    artifactfs checkpoint {create,list,restore,delete} WORKSPACE [NAME]   (fusefs.checkpoint_cmd)

The environment is read once per command, by :meth:`core.settings.Settings.from_env`;
:func:`run` takes the store's clock as a parameter, so a caller (a test) can
run the very same command at another time.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fusefs.defaults import COMMAND_DEFAULTS, DATA_DIR_HELP, MAX_CACHE_TIMEOUT, MAX_REQUEST_TIMEOUT, REQUEST_TIMEOUT

if TYPE_CHECKING:  # the store is imported by the commands that use it: `umount` starts in milliseconds
    from core.infra.clock import Clock
    from core.settings import Settings
    from fusefs.options import MountOptions

SUPPORTED_FUSE_OPTIONS = ("allow_other",)


def _user_uid(text: str) -> tuple[str, int]:
    name, sep, uid = text.partition("=")
    if not sep or not name or not uid.isdigit():
        raise argparse.ArgumentTypeError(f"expected NAME=UID, got {text!r}")
    return name, int(uid)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= MAX_REQUEST_TIMEOUT:
        raise argparse.ArgumentTypeError(f"expected seconds between 0 and {MAX_REQUEST_TIMEOUT:.0f}, got {text!r}")
    return value


def _cache_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_CACHE_TIMEOUT:
        raise argparse.ArgumentTypeError(f"expected seconds between 0 and {MAX_CACHE_TIMEOUT:.0f}, got {text!r}")
    return value


def _uid(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a numeric uid, got {text!r}")
    return int(text)


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, default=None, help=f"the store's data dir (default: {DATA_DIR_HELP})")
    p.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1, or $ARTIFACT_SERVE_HOST)")
    p.add_argument("--port", type=int, default=None, help="port (default 8470, or $ARTIFACT_SERVE_PORT; 0 picks one)")
    p.add_argument("--public-url", default=None,
                   help="the URL clients use to reach this service, when not http://HOST:PORT (a proxy in front)")
    _metrics_argument(p)


def _address(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return text


def _metrics_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics", type=_address, default=None, metavar="HOST:PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics and a health probe at /healthz")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="artifactfs", description="Mount an artifact store as a filesystem.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    mount = commands.add_parser("mount", help="mount the store at MOUNTPOINT")
    mount.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT")
    mount.add_argument("--sandbox", metavar="S", help="show only sandbox S, at the mount's root")
    mount.add_argument(
        "--data-dir", type=Path, metavar="D",
        help=f"where blobs and metadata live (default: {DATA_DIR_HELP})",
    )
    mount.add_argument("--foreground", "-f", action="store_true", help="stay in the foreground until unmounted")
    mount.add_argument(
        "-o", dest="fuse_options", action="append", default=[], metavar="OPT[,OPT]",
        help=f"FUSE mount options; supported: {', '.join(SUPPORTED_FUSE_OPTIONS)}",
    )
    mount.add_argument(
        "--map-user", dest="map_user", action="append", default=[], type=_user_uid, metavar="NAME=UID",
        help="with allow_other: uid UID is user NAME and reaches users/NAME",
    )
    mount.add_argument(
        "--admin-uid", dest="admin_uids", action="append", default=[], type=_uid, metavar="UID",
        help="with allow_other: UID may write shared/ and reach every scope (root always may)",
    )
    mount.add_argument(
        "--serve", nargs="?", const="", default=None, metavar="HOST:PORT",
        help="also serve presigned URLs (user.artifact.presign) from the mount process "
             "(default address 127.0.0.1:8470, or $ARTIFACT_SERVE_HOST/$ARTIFACT_SERVE_PORT)",
    )
    mount.add_argument(
        "--request-timeout", type=_seconds, default=REQUEST_TIMEOUT, metavar="SECONDS",
        help=f"answer EIO to a request whose handler has not finished after SECONDS (default {REQUEST_TIMEOUT:.0f}; "
             "a close gets one more second per MiB it still has to send)",
    )
    mount.add_argument(
        "--cache-timeout", type=_cache_seconds, default=None, metavar="SECONDS",
        help="how long the kernel may answer lookups and stats from its caches, like other FUSE filesystems' "
             "entry/attr timeouts (default 5, or 600 on Redis, where change notices drop them); 0 caches nothing",
    )
    _metrics_argument(mount)
    mount.add_argument("--debug", action="store_true",
                       help="verbose logging to the mount's log file: every request, with its metadata round trips")

    gc = commands.add_parser(
        "gc", help="reclaim expired artifacts, blobs past their grace period, expired uploads and a dead mount's spool",
    )
    gc.add_argument("--data-dir", type=Path, default=None, help=f"the store's data dir (default: {DATA_DIR_HELP})")
    gc.add_argument("--dry-run", action="store_true", help="count what would be reclaimed; change nothing")

    fsck = commands.add_parser("fsck", help="check records, blobs and counters; change nothing unless --repair "
                                             "(exit 0 clean, 1 problems found, 2 could not run)")
    fsck.add_argument("--data-dir", type=Path, default=None, help=f"the store's data dir (default: {DATA_DIR_HELP})")
    fsck.add_argument("--verify-data", action="store_true", help="also read every file and check its SHA-256")
    fsck.add_argument("--repair", action="store_true",
                      help="fix what is safe: counters, and orphans moved to lost+found of their scope")

    status = commands.add_parser("status", help="what the store holds, and the mount on it if one runs")
    status.add_argument("mountpoint", type=Path, nargs="?", default=None, metavar="MOUNTPOINT",
                        help="a mounted store (default: the data dir's)")
    status.add_argument("--data-dir", type=Path, default=None, help=f"the store's data dir (default: {DATA_DIR_HELP})")

    checkpoint = commands.add_parser("checkpoint", help="make, list, restore or delete a workspace's checkpoints "
                                                        "(through the mount)")
    checkpoint.add_argument("action", choices=["create", "list", "restore", "delete"])
    checkpoint.add_argument("workspace", type=Path, metavar="WORKSPACE", help="a workspace's directory in the mount")
    checkpoint.add_argument("name", nargs="?", default=None, metavar="NAME",
                            help="the checkpoint (create: default cp-<date>-<time>)")

    umount = commands.add_parser("umount", help="unmount MOUNTPOINT and wait for its process to finish")
    umount.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT")
    umount.add_argument(
        "--force", action="store_true",
        help="even while busy: detach, and stop the mount process (unpublished writes are discarded; "
             "processes still using the mount get ENOTCONN)",
    )


    serve = commands.add_parser("serve", help="serve the presigned URLs of a data dir over HTTP")
    _serve_arguments(serve)
    return parser


def mount_options(args: argparse.Namespace, parser: argparse.ArgumentParser, settings: Settings) -> MountOptions:
    """The mount ``args`` ask for; ``settings`` (from the environment) give the default data dir."""
    from pydantic import ValidationError

    from core.errors import InvalidArgumentError
    from fusefs.options import MountOptions, default_data_dir

    fuse = [opt.strip() for group in args.fuse_options for opt in group.split(",") if opt.strip()]
    unknown = sorted(set(fuse) - set(SUPPORTED_FUSE_OPTIONS))
    if unknown:
        parser.error(f"unsupported mount option(s) {', '.join(unknown)}; supported: {', '.join(SUPPORTED_FUSE_OPTIONS)}")
    users: dict[str, int] = {}
    for name, uid in args.map_user:
        if users.get(name, uid) != uid:
            parser.error(f"user {name} is mapped to two uids")
        users[name] = uid
    values: dict[str, object] = {
        "mountpoint": args.mountpoint, "sandbox": args.sandbox, "foreground": args.foreground,
        "allow_other": "allow_other" in fuse, "user_uids": users, "admin_uids": frozenset(args.admin_uids),
        "debug": args.debug, "serve": args.serve, "metrics": args.metrics, "request_timeout": args.request_timeout,
        "cache_timeout": args.cache_timeout, "data_dir": args.data_dir or default_data_dir(settings),
    }
    try:
        return MountOptions.model_validate(values)
    except (ValidationError, InvalidArgumentError) as exc:
        parser.error(str(exc))
        raise  # parser.error exits


# What the commands need beyond the library: `pip install artifactfs` alone is the library.
_EXTRA_MODULES = frozenset({"pyfuse3", "trio", "hypercorn"})


def run(argv: Sequence[str] | None = None, *, clock: Clock | None = None) -> int:
    """Run one ``artifactfs`` command; returns its exit status. ``clock``: the mount's (default: the system's)."""
    parser = build_parser()
    args = parser.parse_args(argv)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if args.command == "umount":
        from fusefs.umount_cmd import umount

        return umount(args.mountpoint, say=say, force=args.force)
    try:  # imported here: `artifactfs --help` stays fast, and works without the extras
        if args.command == "serve":
            from fusefs.serve_cmd import run as serve

            return serve(args)
        if args.command == "gc":
            from fusefs.gc_cmd import run as gc

            return gc(args)
        if args.command == "status":
            from fusefs.status_cmd import run as status

            return status(args)
        if args.command == "fsck":
            from fusefs.fsck_cmd import run as fsck

            return fsck(args)
        if args.command == "checkpoint":
            from fusefs.checkpoint_cmd import run as checkpoint

            return checkpoint(args)
        from core.errors import InvalidArgumentError
        from core.settings import Settings
        from fusefs import mount as lifecycle
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in _EXTRA_MODULES:
            raise
        extra = "serve" if args.command == "serve" else "fuse"
        say(f"artifactfs {args.command}: needs {exc.name}, which the library alone does not install; "
            f"pip install 'artifactfs[{extra}]' (the fuse extra builds against libfuse3-dev)")
        return 1
    try:
        settings = Settings.from_env(defaults=COMMAND_DEFAULTS)
    except InvalidArgumentError as exc:
        say(f"artifactfs: {exc}")
        return 1
    return lifecycle.mount(mount_options(args, parser, settings), settings, say=say, clock=clock)


def main() -> None:
    sys.exit(run())
