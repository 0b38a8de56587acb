"""Records as a Redis store keeps them: deflated against what records share.

A signed record's JSON was two thirds of an inode's memory (issue #17): its
keys are the same in every record, and its parent, name, artifact id, MIME
type and blob key are kept beside it anyway, for the scripts. So a record is
stored deflated (raw DEFLATE, a 2 KiB window) against a preset dictionary of
the text records share, followed by those fields of its own inode
(``CONTEXT_SLOTS``) and its number (its *context*). A small file's record
goes from ~560 to ~145 bytes; reading it back costs ~3 µs. The bytes signed
and verified are the JSON itself, so packing changes nothing a signature
covers, and a damaged packing, or one read against other fields, reads as a
damaged record.

The dictionary is part of the layout (``LAYOUT``): records packed against
one cannot be read against another, so it never changes within a layout.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

# Text that records share, the most common last (nearer matches cost fewer bits). Never edit it
# without a new LAYOUT.
_SHARED = b"".join((
    b'"xattrs":{"user.',
    b'"links":[{"parent":',
    b'"session_meta":{"made_by_uid":',
    b'"role":"root"',
    b'"role":"sandbox"',
    b'"role":"sessions"',
    b'"role":"users"',
    b'"role":"checkpoints"',
    b'"role":"frozen"',
    b'"kind":"symlink","role":"entry"',
    b'"target":"',
    b'"rev":',
    b'"uid":',
    b'"gid":',
    b'"version":',
    b'"ttl":',
    b'"summary":"',
    b'"charged":false',
    b'"blob_of":"',
    b'"application/octet-stream"',
    b'"application/json"',
    b'"text/plain"',
    b'"kind":"dir","role":"scope_root","space":{"sandbox_id":"',
    b'"scope":"shared"},"mode":493,',
    b'"scope":"session","session_id":"',
    b'"expires_at_ns":17',
    b'"kind":"dir","role":"entry","space":{"sandbox_id":"',
    b'"},"mode":493,"atime_ns":17',
    b'{"ino":',
    b',"parent":',
    b',"name":"',
    b'","kind":"file","role":"entry","space":{"sandbox_id":"',
    b'","scope":"user","user_id":"',
    b'"},"mode":420,"size":',
    b',"atime_ns":17',
    b',"mtime_ns":17',
    b',"ctime_ns":17',
    b',"crtime_ns":17',
    b',"artifact":{"artifact_id":"',
    b'","mime":"',
    b'","meta":{"',
    b'","sha256":"',
    b'","blob_key":"grid/',
    b'/users/',
    b'/sessions/',
    b'"}}',
))
_WINDOW_BITS = -11  # raw DEFLATE (no header or checksum: the signature checks the text), 2 KiB window
_MEMORY_LEVEL = 4  # a smaller match table: 9 µs a record instead of 50, and the same size
_LEVEL = 6
# Records longer than this (large user metadata) are kept in stored blocks: deflating 13 MiB costs
# ~370 ms on the event loop, storing it ~20 ms, and such records are too rare to matter for memory.
_DEFLATED_UP_TO = 64 * 1024
# The fields a record is packed against, after the shared text: its own inode's, kept beside it in the
# inode's string, so repeating them costs the record almost nothing. The record begins with its ino,
# parent and name, so the context ends with them, spelled as the record does.
CONTEXT_SLOTS = ("mi", "a", "bk", "p", "n")

Fields = Mapping[str, bytes | None]


def context(ino: int, fields: Fields) -> bytes:
    """The dictionary the record of inode ``ino`` of these ``fields`` is packed against."""
    mime, artifact_id, blob_key, parent, name = (fields.get(slot) or b"" for slot in CONTEXT_SLOTS)
    return b"".join((_SHARED, mime, b'"', artifact_id, blob_key, b'{"ino":%d,"parent":' % ino, parent,
                     b',"name":"', name))


def packed(record: bytes, ino: int, fields: Fields) -> bytes:
    """A record's JSON as the store keeps it in inode ``ino`` of these ``fields``."""
    level = _LEVEL if len(record) <= _DEFLATED_UP_TO else 0
    deflate = zlib.compressobj(level, zlib.DEFLATED, _WINDOW_BITS, _MEMORY_LEVEL, zlib.Z_DEFAULT_STRATEGY,
                               context(ino, fields))
    return deflate.compress(record) + deflate.flush()


def unpacked(stored: bytes, ino: int, fields: Fields) -> bytes:
    """A stored record's JSON; ValueError if the packing is damaged (or against other fields).

    A record is deflated only up to ``_DEFLATED_UP_TO``, and kept in stored blocks past it, so none
    inflates past the larger of that and its own stored length: a forged packing that would (a
    few KiB inflating to megabytes) is refused before it takes that memory and time.
    """
    inflate = zlib.decompressobj(_WINDOW_BITS, context(ino, fields))
    try:
        record = inflate.decompress(stored, max(_DEFLATED_UP_TO, len(stored)))
    except zlib.error as error:
        raise ValueError(f"a packed record does not inflate: {error}") from None
    if not inflate.eof or inflate.unconsumed_tail or inflate.unused_data:
        raise ValueError("a packed record is cut short, too long, or has bytes after its end")
    return record
