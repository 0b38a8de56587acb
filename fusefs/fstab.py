"""``mount.fuse.artifactfs``: what mount(8) runs for an ``/etc/fstab`` line of type ``fuse.artifactfs``.

    /var/lib/artifactfs  /mnt/artifacts  fuse.artifactfs  sandbox=app,allow_other,_netdev  0  0

mount(8) calls ``mount.fuse.artifactfs SOURCE MOUNTPOINT -o OPTIONS``; the
source is the data dir. The options are artifactfs's own (``sandbox=S``,
``serve``, ``serve=H:P``, ``metrics=H:P``, ``admin_uid=U``,
``map_user=NAME=UID``, ``cache_timeout=S``, ``request_timeout=S``), the
FUSE option ``allow_other``, and the generic ones mount(8) and systemd use
for themselves (``defaults``, ``noauto``, ``_netdev``, ``x-systemd.*``...),
which are dropped. Anything else is refused in one line, before mounting.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from fusefs import cli

_FLAGS = {"allow_other": ["-o", "allow_other"], "serve": ["--serve"]}
_VALUED = {
    "sandbox": "--sandbox", "serve": "--serve", "metrics": "--metrics", "admin_uid": "--admin-uid",
    "map_user": "--map-user", "cache_timeout": "--cache-timeout", "request_timeout": "--request-timeout",
}
# What mount(8), systemd and the kernel's generic flags mean for themselves: not artifactfs's business.
# An artifactfs mount is always nosuid and nodev, whatever the line says.
_GENERIC = frozenset({
    "defaults", "rw", "auto", "noauto", "user", "users", "nouser", "owner", "group", "nofail", "_netdev",
    "suid", "nosuid", "dev", "nodev", "exec", "noexec", "atime", "noatime", "relatime", "strictatime",
    "diratime", "nodiratime", "lazytime", "nolazytime", "async", "sync",
})


class FstabError(ValueError):
    """An fstab line artifactfs cannot honour: said in one line."""


def mount_arguments(argv: Sequence[str]) -> list[str]:
    """``artifactfs`` arguments for mount(8)'s ``SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS] [-t TYPE]``."""
    positional: list[str] = []
    options: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg in ("-o", "-t"):
            value = next(args, None)
            if value is None:
                raise FstabError(f"{arg} needs a value")
            if arg == "-o":
                options += [o for o in value.split(",") if o]
        elif arg.startswith("-"):
            continue  # -s (sloppy), -f (fake), -n (no mtab), -v (verbose): nothing of ours
        else:
            positional.append(arg)
    if len(positional) != 2:
        raise FstabError(f"expected SOURCE (the data dir) and MOUNTPOINT, got {positional!r}")
    data_dir, mountpoint = positional
    translated = ["mount", mountpoint, "--data-dir", data_dir]
    for option in options:
        key, sep, value = option.partition("=")
        if option in _GENERIC or key.startswith(("x-", "comment")):
            continue
        if not sep and key in _FLAGS:
            translated += _FLAGS[key]
        elif sep and key in _VALUED:
            translated += [_VALUED[key], value]
        else:
            raise FstabError(f"unsupported option {option!r} (artifactfs takes: allow_other, {', '.join(_VALUED)})")
    return translated


def main() -> None:
    try:
        arguments = mount_arguments(sys.argv[1:])
    except FstabError as exc:
        print(f"mount.fuse.artifactfs: {exc}", file=sys.stderr)
        sys.exit(1)
    sys.exit(cli.run(arguments))


if __name__ == "__main__":
    main()
