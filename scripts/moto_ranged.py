"""moto's S3 server for benchmarks: real S3's answer to ``versionId=null``, and optionally cheap ranged GETs.

Stock moto answers ``GET`` with a ``Range`` header by reading the whole
object out of its buffer and slicing the range off (DESIGN §9): a 1 MiB
range of a 256 MiB object costs a 256 MiB copy, so an S3 read benchmark on
stock moto measures that copy. While the file named by ``$MOTO_RANGED_FLAG``
exists, this launcher serves a ranged GET by reading only the range.
The switch is a file, so one server (and the objects it holds in memory) is
measured both ways in one run.

Always: a HEAD with ``versionId=null`` on an unversioned bucket is
answered as real S3 answers it (the object; "null" is the version id of
every object there). Stock moto answers 400, and rclone, which HEADs what it
uploaded with the version id moto handed back, fails every upload.

Usage, like ``moto_server``: ``python scripts/moto_ranged.py -H 127.0.0.1 -p PORT``.
Only for benchmarks; the tests run stock moto.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

from moto.s3.models import FakeKey
from moto.s3.responses import S3Response

FLAG_ENV = "MOTO_RANGED_FLAG"

_serving_range = threading.local()  # set while one ranged GET is being answered on this thread
_stock_value = FakeKey.value  # the property: whole-object read


class _RangeSource:
    """Stands in for the object's bytes inside moto's range handling: ``len`` and one slice."""

    def __init__(self, key: FakeKey) -> None:
        self.key = key

    def __len__(self) -> int:
        return self.key.size

    def __bool__(self) -> bool:
        return self.key.size > 0

    def __getitem__(self, span: slice) -> bytes:
        start, stop, _ = span.indices(self.key.size)
        with self.key.lock:
            self.key._value_buffer.seek(start)
            return self.key._value_buffer.read(max(0, stop - start))

    def whole(self) -> bytes:
        return self[0 : self.key.size]


def _value(self: FakeKey) -> Any:
    if getattr(_serving_range, "on", False):
        return _RangeSource(self)
    return _stock_value.fget(self)  # type: ignore[union-attr]


_stock_key_response = S3Response.key_response


def _key_response(self: S3Response, request: Any, full_url: str, headers: Any) -> Any:
    flag = os.environ.get(FLAG_ENV)
    ranged = request.method == "GET" and request.headers.get("range") and flag and os.path.exists(flag)
    if not ranged:
        return _stock_key_response(self, request, full_url, headers)
    _serving_range.on = True
    try:
        status, response_headers, body = _stock_key_response(self, request, full_url, headers)
    finally:
        _serving_range.on = False
    if isinstance(body, _RangeSource):  # moto fell back to a whole answer (multi-range, bad header)
        body = body.whole()
    return status, response_headers, body


_stock_head_object = S3Response.head_object


def _head_object(self: S3Response, bucket_name: str, query: dict[str, Any], key_name: str, headers: Any) -> Any:
    if query.get("versionId") == ["null"] and not self.backend.get_bucket(bucket_name).is_versioned:
        query = {name: value for name, value in query.items() if name != "versionId"}
    return _stock_head_object(self, bucket_name, query, key_name, headers)


def main() -> None:
    S3Response.head_object = _head_object  # type: ignore[method-assign]
    FakeKey.value = property(_value, _stock_value.fset)  # type: ignore[method-assign, assignment]
    S3Response.key_response = _key_response  # type: ignore[method-assign]
    from moto.server import main as serve

    serve(sys.argv[1:])


if __name__ == "__main__":
    main()
