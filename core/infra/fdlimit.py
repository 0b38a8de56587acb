"""The process's file-descriptor budget: raised once, and shared out so one part cannot take it all."""

from __future__ import annotations

import resource


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; returns the soft limit now in force.

    The soft default (often 1,024) is a compatibility value for select();
    nothing here uses select, and a mount that also serves needs room for
    its users' files beside the service's sockets.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def connection_cap(wanted: int, soft_fd_limit: int) -> int:
    """At most ``wanted`` connections, and never more than a quarter of the descriptors."""
    return max(1, min(wanted, soft_fd_limit // 4))
