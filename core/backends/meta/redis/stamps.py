"""A stored_at as the Redis store spells it: 11 bytes whose byte order is the time's.

The spelling is 64 bits in base 64 over an alphabet sorted in byte order, 9
bytes less than decimal in every inode's ``=`` index line and every member of
a search order (issue #17), and a sorted set's byte order stays time order.
"""

from __future__ import annotations

import base64

_ORDER_ALPHABET = b"-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_TO_ORDER = bytes.maketrans(_BASE64_ALPHABET, _ORDER_ALPHABET)
_FROM_ORDER = bytes.maketrans(_ORDER_ALPHABET, _BASE64_ALPHABET)
WIDTH = 11


def order_time(ns: int) -> str:
    """A stored_at (ns) spelled at fixed width, so that byte order is time order."""
    ns = min(max(ns, 0), (1 << 64) - 1)  # clocks give neither end
    return base64.b64encode(ns.to_bytes(8, "big"))[:WIDTH].translate(_TO_ORDER).decode()


def time_of(spelled: bytes) -> int:
    """The stored_at (ns) an ``order_time`` spelling stands for; ValueError if it is none."""
    if len(spelled) != WIDTH or spelled.strip(_ORDER_ALPHABET):
        raise ValueError(f"not a stored_at spelling: {spelled!r:.40}")
    return int.from_bytes(base64.b64decode(spelled.translate(_FROM_ORDER) + b"="), "big")
