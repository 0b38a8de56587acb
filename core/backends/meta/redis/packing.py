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

Two parts of a file's record deflate poorly, so the packing helps them: its
SHA-256 is taken out of the text and kept raw before it (32 bytes instead of
~50 deflated from hex), and its stored_at, which its ``=`` index line already
spells, is in the context in decimal, as its crtime and atime are written.

The dictionary is part of the layout (``LAYOUT``): records packed against
one cannot be read against another, so it never changes within a layout.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping

from core.backends.meta.redis.stamps import time_of

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

# A packing starts with one of these: the text alone, or a SHA-256 taken out of it, raw, then the text.
PLAIN, HASHED = b"\0", b"\1"
_DIGEST_BYTES = 32
# The first ``"sha256":"`` of a record opens the artifact's hash, unless user metadata before it has one
# (then that one is kept raw: it comes back to the same place all the same).
_SHA_KEY = b'"sha256":"'
_HEX_DIGEST = re.compile(rb"[0-9a-f]{64}(?=\")")

Fields = Mapping[str, bytes | None]


def _stored_at(fields: Fields) -> bytes:
    """The stored_at of a file's ``=`` index line in decimal ('' for none or a damaged one)."""
    last = (fields.get("ix") or b"").rpartition(b"\n")[2]
    try:
        return b"%d" % time_of(last[1:]) if last[:1] == b"=" else b""
    except ValueError:
        return b""


def context(ino: int, fields: Fields) -> bytes:
    """The dictionary the record of inode ``ino`` of these ``fields`` is packed against."""
    mime, artifact_id, blob_key, parent, name = (fields.get(slot) or b"" for slot in CONTEXT_SLOTS)
    return b"".join((_SHARED, mime, b'"', artifact_id, blob_key, _stored_at(fields), b'{"ino":%d,"parent":' % ino,
                     parent, b',"name":"', name))


def packed(record: bytes, ino: int, fields: Fields) -> bytes:
    """A record's JSON as the store keeps it in inode ``ino`` of these ``fields``."""
    head, digest = PLAIN, b""
    at = record.find(_SHA_KEY) + len(_SHA_KEY)
    if at >= len(_SHA_KEY) and _HEX_DIGEST.match(record, at):
        head, digest = HASHED, bytes.fromhex(record[at : at + 64].decode())
        record = record[:at] + record[at + 64 :]
    level = _LEVEL if len(record) <= _DEFLATED_UP_TO else 0
    deflate = zlib.compressobj(level, zlib.DEFLATED, _WINDOW_BITS, _MEMORY_LEVEL, zlib.Z_DEFAULT_STRATEGY,
                               context(ino, fields))
    return head + digest + deflate.compress(record) + deflate.flush()


def unpacked(stored: bytes, ino: int, fields: Fields) -> bytes:
    """A stored record's JSON; ValueError if the packing is damaged (or against other fields).

    A record is deflated only up to ``_DEFLATED_UP_TO``, and kept in stored blocks past it, so none
    inflates past the larger of that and its own stored length: a forged packing that would (a
    few KiB inflating to megabytes) is refused before it takes that memory and time.
    """
    head, body = stored[:1], stored[1:]
    digest = b""
    if head == HASHED:
        digest, body = body[:_DIGEST_BYTES], body[_DIGEST_BYTES:]
    elif head != PLAIN:
        raise ValueError("a packed record starts with neither of its marks")
    inflate = zlib.decompressobj(_WINDOW_BITS, context(ino, fields))
    try:
        record = inflate.decompress(body, max(_DEFLATED_UP_TO, len(body)))
    except zlib.error as error:
        raise ValueError(f"a packed record does not inflate: {error}") from None
    if not inflate.eof or inflate.unconsumed_tail or inflate.unused_data:
        raise ValueError("a packed record is cut short, too long, or has bytes after its end")
    if head == HASHED:
        at = record.find(_SHA_KEY) + len(_SHA_KEY)
        if len(digest) != _DIGEST_BYTES or at < len(_SHA_KEY):
            raise ValueError("a packed record's SHA-256 has no place in it")
        record = record[:at] + digest.hex().encode() + record[at:]
    return record
