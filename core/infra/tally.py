"""How many metadata round trips one piece of work made, wherever down the layers it made them.

A FUSE request or an API call becomes calls through the namespace to the
metadata store, and on a remote store (Redis) each is a round trip: the
figure that bounds how many requests a second a mount answers (issue #9).
Work that wants its figure opens a :func:`tally`; every round trip the
store makes while it is open, in this task or any it awaits, counts there
(:func:`current` is what the store looks up, one context lookup per call).

The mount's ``--debug`` log gives each request's figure. That is how a
slow request is told apart from a chatty one, and how
``tests/fuse/test_fuse_round_trips.py`` counts an operation's own requests
apart from those the kernel sends again when it has dropped a cached entry.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar


class Tally:
    """The round trips counted so far, shared by every task that inherited it (a mutable cell)."""

    __slots__ = ("records", "round_trips")

    def __init__(self) -> None:
        self.round_trips = 0
        # Records verified and parsed (``decode_record``): what a listing page costs in the
        # process, so a test can show a page of 10 decodes ~10 records whatever the store holds.
        self.records = 0


_OPEN: ContextVar[Tally | None] = ContextVar("artifactfs_tally", default=None)


def current() -> Tally | None:
    """The tally open in the calling context, if any: where a store counts its round trips."""
    return _OPEN.get()


@contextmanager
def tally() -> Iterator[Tally]:
    """Count the round trips made inside the ``with`` block (nested tallies count apart)."""
    counted = Tally()
    token = _OPEN.set(counted)
    try:
        yield counted
    finally:
        _OPEN.reset(token)
