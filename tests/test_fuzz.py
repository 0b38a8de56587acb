"""Arbitrary arguments to the public API and arbitrary requests to the presign service (issue #16).

Every public call on any argument either works or raises an
``ArtifactStoreError`` subclass (never RecursionError, OverflowError,
UnicodeError, a bare ValueError or TypeError), and leaves a store that
everyone can still search and clean up. Every request the presign
service's handler can receive gets an answer below 500.

Each example runs on fresh in-memory backends in its own trio run. The
example counts are small on purpose (this runs with the suite, on a loaded
two-core machine; about 5 s for both here); for a longer hunt, raise
``FUZZ_EXAMPLES`` and turn ``derandomize`` off locally.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import trio
from asgikit import call
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from core import (
    ArtifactStore,
    ArtifactStoreError,
    StreamDownloadRequest,
    StreamUploadRequest,
)
from core.infra.clock import ManualClock
from core.transfers.service import PresignService

FUZZ_EXAMPLES = 200
FUZZ = settings(
    # derandomize: the same examples on every run, so a failure is never a matter of luck
    max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


NASTY_CHARS = st.sampled_from(["\0", "\r", "\n", "\x1b", "\x7f", "\ud800", "\udfff", "/", ".", "é", "\u0661", "\u00b2"])
TEXT = st.text(alphabet=st.one_of(st.characters(), NASTY_CHARS), max_size=40)


class Huge(int):
    """An int past Python's 4,300-digit text limit that Hypothesis can still print in a report.

    Only ``repr`` differs; ``str``, ``format`` and ``json.dumps`` raise as they
    do for any such int, which is what the code under test must survive.
    """

    __str__ = int.__repr__

    def __repr__(self) -> str:
        return f"Huge({'-' if self < 0 else ''}10**{len(int.__repr__(abs(self) // 10**4000)) + 3999})"


HUGE = st.sampled_from([Huge(10**5000), Huge(-(10**5000)), 2**63, 2**64, 10**20, -1, 0, 1])
NUMBER = st.one_of(st.integers(), HUGE, st.floats(allow_nan=True, allow_infinity=True))
JSON_LEAF = st.one_of(st.none(), st.booleans(), NUMBER, TEXT)
JSON = st.recursive(
    JSON_LEAF, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)),
    max_leaves=8,
)
DEEP = st.integers(min_value=1, max_value=1200).map(nested)
META = st.one_of(st.none(), st.dictionaries(TEXT, JSON, max_size=4), DEEP, st.builds(lambda d: {"k": d}, DEEP), JSON)
WILD = st.one_of(st.none(), st.booleans(), NUMBER, TEXT, st.binary(max_size=32), JSON, DEEP, st.just(object()))


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` three times in four: a call only reaches its later checks if its earlier arguments pass."""
    return st.sampled_from((good, good, good, bad)).flatmap(lambda chosen: chosen)  # shrinks towards good


GOOD_META = st.one_of(st.none(), st.dictionaries(TEXT, JSON, max_size=4))
GOOD_TEXT = st.text(max_size=20)
MIME = st.one_of(st.none(), st.sampled_from(["text/plain", "application/json; charset=utf-8"]),
                 st.builds(lambda t: f"text/plain;{t}", TEXT), WILD)
NAME = st.one_of(st.none(), st.sampled_from(["a.txt", "d/e/f.bin", "a.txt/"]), TEXT, WILD)
TTL = st.one_of(st.just("default"), st.none(), st.integers(min_value=-5, max_value=10**10), HUGE, WILD)
GOOD_TTL = st.one_of(st.just("default"), st.none(), st.integers(1, 10**6))
GOOD_NAME = st.one_of(st.none(), st.sampled_from(["a.txt", "d/e/f.bin", "docs/seed.txt"]))
GOOD_MIME = st.one_of(st.none(), st.just("text/plain"))
# Each argument: a good value mostly, or anything.
A_META, A_TTL, A_NAME, A_MIME = mostly(GOOD_META, META), mostly(GOOD_TTL, TTL), mostly(GOOD_NAME, NAME), mostly(GOOD_MIME, MIME)
A_TEXT = mostly(GOOD_TEXT, st.one_of(TEXT, WILD))


class Seeded:
    """A fresh store with one session and one artifact in it, ids the fuzzer may pick."""

    def __init__(self, store: ArtifactStore, session: str, artifact: str) -> None:
        self.store, self.session, self.artifact = store, session, artifact

    def pick(self, draw: Callable[[Any], Any], kind: str) -> Any:
        """A real id most of the time, so calls get past the lookup to the argument rules."""
        real = {"session": self.session, "artifact": self.artifact, "user": "alice"}[kind]
        return draw(mostly(st.just(real) if kind == "artifact" else st.one_of(st.just(real), st.none()), WILD))


async def _run(body: Callable[[Seeded], Awaitable[None]]) -> None:
    async with ArtifactStore(storage_provider="memory", session_provider="memory", clock=ManualClock()) as store:
        session = await store.create_session(user_id="alice")
        artifact = await store.store(b"seed bytes", filename="docs/seed.txt", session_id=session, user_id="alice",
                                     meta={"v": 1}, ttl=3600)
        await body(Seeded(store, session, artifact))


def _api_calls(s: Seeded, draw: Callable[[Any], Any]) -> dict[str, Callable[[], Awaitable[Any]]]:
    """Each public call with arguments drawn only when the call is chosen."""
    st_ = s.store
    a = lambda: s.pick(draw, "artifact")  # noqa: E731
    sess = lambda: s.pick(draw, "session")  # noqa: E731
    user = lambda: s.pick(draw, "user")  # noqa: E731

    async def stream_down() -> None:
        request = StreamDownloadRequest(artifact_id=a(), session_id=sess(), chunk_size=draw(st.integers(1, 64)))
        async for _ in st_.stream_download(request):
            pass

    async def stream_up() -> None:
        # Built here: a request model that refuses a field raises InvalidArgumentError itself.
        request = StreamUploadRequest(
            data_stream=iter([draw(st.binary(max_size=16))]), mime=draw(st.one_of(st.just("text/plain"), MIME)),
            filename=draw(A_NAME), meta=draw(A_META), session_id=sess(), ttl=draw(A_TTL),
            content_length=draw(st.one_of(st.none(), NUMBER)))
        await st_.stream_upload(request)

    return {
        "store": lambda: st_.store(draw(mostly(st.binary(max_size=64), WILD)), mime=draw(A_MIME), summary=draw(
            st.one_of(TEXT, WILD)), filename=draw(A_NAME), meta=draw(A_META), session_id=sess(), user_id=user(),
            scope=draw(mostly(st.sampled_from(["session", "user", "sandbox"]), WILD)), ttl=draw(A_TTL)),
        "write_file": lambda: st_.write_file(draw(st.one_of(TEXT, st.binary(max_size=16))), filename=draw(A_NAME),
                                             encoding=draw(st.sampled_from(["utf-8", "ascii", "latin-1"])),
                                             session_id=sess(), meta=draw(A_META), ttl=draw(A_TTL)),
        "store_batch": lambda: st_.store_batch(draw(st.one_of(
            st.lists(st.fixed_dictionaries({"data": st.binary(max_size=8)}, optional={
                "meta": A_META, "mime": A_MIME, "filename": A_NAME, "ttl": A_TTL, "summary": A_TEXT, "scope": WILD}), max_size=3),
            WILD)), session_id=sess(), ttl=draw(A_TTL)),
        "stream_upload": stream_up,
        "update_file": lambda: st_.update_file(a(), data=draw(st.one_of(st.none(), st.binary(max_size=16), WILD)),
                                               meta=draw(A_META), filename=draw(A_NAME), summary=draw(A_TEXT),
                                               mime=draw(A_MIME), session_id=sess()),
        "update_metadata": lambda: st_.update_metadata(a(), summary=draw(st.one_of(st.none(), A_TEXT)),
                                                       meta=draw(A_META), merge=draw(st.booleans()), mime=draw(A_MIME),
                                                       filename=draw(A_NAME), ttl=draw(A_TTL), session_id=sess()),
        "extend_ttl": lambda: st_.extend_ttl(a(), draw(st.one_of(NUMBER, WILD)), session_id=sess()),
        "metadata": lambda: st_.metadata(a(), session_id=sess(), user_id=user()),
        "retrieve": lambda: st_.retrieve(a(), session_id=sess()),
        "read_file": lambda: st_.read_file(a(), as_text=True, encoding=draw(st.one_of(TEXT, st.just("utf-8"))),
                                           session_id=sess()),
        "stream_download": stream_down,
        "copy_file": lambda: st_.copy_file(a(), new_filename=draw(A_NAME), target_session_id=sess(),
                                           new_meta=draw(A_META), summary=draw(st.one_of(st.none(), A_TEXT)),
                                           session_id=sess()),
        "move_file": lambda: st_.move_file(a(), new_filename=draw(A_NAME), new_session_id=sess(), new_meta=draw(A_META),
                                           session_id=sess()),
        "delete": lambda: st_.delete(a(), session_id=sess()),
        "list_files": lambda: st_.list_files(sess(), prefix=draw(st.one_of(TEXT, st.just(""))),
                                             limit=draw(st.one_of(st.none(), NUMBER, WILD))),
        "get_directory_contents": lambda: st_.get_directory_contents(sess(), draw(st.one_of(TEXT, st.just("docs"))),
                                                                     limit=draw(st.one_of(st.none(), NUMBER))),
        "search": lambda: st_.search(user_id=user(), scope=draw(st.one_of(st.none(), WILD)),
                                     mime_prefix=draw(st.one_of(st.none(), TEXT)), meta_filter=draw(A_META),
                                     session_id=sess(), limit=draw(st.one_of(st.none(), NUMBER, WILD))),
        "create_session": lambda: st_.create_session(user_id=user(), ttl_hours=draw(st.one_of(st.none(), NUMBER, WILD)),
                                                     custom_metadata=draw(A_META)),
        "extend_session_ttl": lambda: st_.extend_session_ttl(sess(), draw(st.one_of(NUMBER, WILD))),
        "presign": lambda: st_.presign(a(), draw(st.one_of(NUMBER, WILD)), session_id=sess()),
        "presign_upload": lambda: st_.presign_upload(sess(), draw(A_NAME), draw(A_MIME), draw(st.one_of(NUMBER, WILD)),
                                                     ttl=draw(A_TTL), max_bytes=draw(st.one_of(st.none(), NUMBER, WILD))),
        "presign_upload_and_register": lambda: st_.presign_upload_and_register(
            draw(A_MIME), draw(A_TEXT), draw(A_NAME), sess(), draw(A_META), draw(st.one_of(NUMBER, WILD)),
            ttl=draw(A_TTL)),
        "register_uploaded_artifact": lambda: st_.register_uploaded_artifact(
            draw(A_TEXT), mime=draw(A_MIME), meta=draw(A_META), ttl=draw(A_TTL)),
        "initiate_multipart_upload": lambda: st_.initiate_multipart_upload(draw(st.one_of(
            st.fixed_dictionaries({"filename": A_NAME}, optional={
                "mime_type": A_MIME, "meta": A_META, "ttl": A_TTL, "max_bytes": NUMBER, "session_id": WILD, "scope": WILD}),
            WILD))),
        "complete_multipart_upload": lambda: st_.complete_multipart_upload(draw(st.one_of(
            st.fixed_dictionaries({"upload_id": TEXT, "parts": st.lists(st.fixed_dictionaries(
                {"PartNumber": NUMBER, "ETag": TEXT}), max_size=2)}, optional={"meta": A_META}), WILD))),
        "get_part_upload_url": lambda: st_.get_part_upload_url(draw(TEXT), draw(NUMBER), draw(st.one_of(NUMBER, WILD))),
        "abort_multipart_upload": lambda: st_.abort_multipart_upload(draw(A_TEXT)),
    }


@FUZZ
@given(data=st.data())
def test_public_calls_work_or_raise_a_store_error(data: st.DataObject) -> None:
    async def body(s: Seeded) -> None:
        calls = _api_calls(s, data.draw)
        name = data.draw(st.sampled_from(sorted(calls)), label="call")
        try:
            await calls[name]()
        except ArtifactStoreError:
            pass
        # Whatever happened, the store still lists and cleans up for everyone (finding 1 of issue #16).
        await s.store.search()
        await s.store.list_by_session(s.session)
        await s.store.cleanup_expired_sessions()

    trio.run(_run, body)


RANGE_NUMBER = st.one_of(st.just(""), st.integers(0, 20_000).map(str), st.sampled_from(["9" * 5000, "0" * 4400 + "7"]))
RANGE_VALUES = mostly(st.builds(lambda a, b: f"bytes={a}-{b}".encode(), RANGE_NUMBER, RANGE_NUMBER), st.one_of(
    st.builds(lambda t: f"bytes={t}".encode("utf-8", "surrogatepass"), TEXT),
    st.sampled_from([b"bytes=0-1,5-6", b"items=0-1", b"bytes=--1", b"bytes=\xb2-", b"bytes=-0", b"bytes=" + b"0" * 6000]),
))
LENGTH_VALUES = st.one_of(st.integers(0, 100).map(lambda n: str(n).encode()), st.binary(max_size=8),
                         st.sampled_from([b"1" * 5000, b"\xb2", b"-1", b"", b" 3 ", b"99999999999999999999999"]))
ANY_VALUE = st.binary(max_size=40)
HEADERS = st.fixed_dictionaries({}, optional={
    b"range": RANGE_VALUES, b"content-length": LENGTH_VALUES, b"if-range": ANY_VALUE,
    b"if-none-match": st.one_of(ANY_VALUE, st.just(b'"etag", W/"x", *')), b"content-type": ANY_VALUE,
    b"transfer-encoding": ANY_VALUE, b"x-anything": ANY_VALUE,
}).map(lambda headers: list(headers.items()))


SPOILERS = st.one_of(
    st.tuples(st.just("path"), st.one_of(st.just("/x"), st.builds(lambda t: "/v1/objects/" + t, TEXT), TEXT)),
    st.tuples(st.just("query"), st.one_of(st.binary(max_size=60), TEXT, st.sampled_from(["9" * 5000, "-", "1e9"]))),
    st.tuples(st.just("method"), st.one_of(st.sampled_from(["POST", "PUT", "GET", "get"]), TEXT)),
)

@FUZZ
@given(get=mostly(st.just(True), st.just(False)), head=st.booleans(), spoil=st.one_of(st.none(), st.none(), SPOILERS),
       headers=HEADERS, body=st.binary(max_size=64))
@example(get=True, head=False, spoil=None, headers=[(b"range", b"bytes=" + b"9" * 5000 + b"-")], body=b"")
@example(get=True, head=False, spoil=None, headers=[(b"range", b"bytes=0-" + b"0" * 4400 + b"7")], body=b"")
@example(get=False, head=False, spoil=None, headers=[(b"content-length", b"\xb2")], body=b"x")
@example(get=False, head=False, spoil=None, headers=[(b"content-length", b"1" * 5000)], body=b"x")
def test_the_presign_service_never_answers_5xx(
    get: bool, head: bool, spoil: tuple[str, Any] | None, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    """The URL as signed, or with one part spoilt, and any headers: the answer is never a 5xx.

    The examples are the requests that answered 500 before issue #16.
    """
    async def run(s: Seeded) -> None:
        if get:
            url = await s.store.presign(s.artifact, 600)
        else:
            url, _ = await s.store.presign_upload(filename="up.bin", expires=600, user_id="alice", scope="user")
        base = urlsplit(url)
        method = ("HEAD" if head else "GET") if get else "PUT"
        path, query = base.path, base.query.encode()
        if spoil is not None:
            part, value = spoil
            if part == "path":
                path = base.path + value if value == "/x" else value
            elif part == "query":
                query = value if isinstance(value, bytes) else base.query.replace(
                    "exp=", f"exp={value}").encode("utf-8", "surrogatepass")
            else:
                method = value
        answer = await call(PresignService(s.store.transfers), method, path, query, headers, body)
        assert answer.status is not None and answer.status < 500, (answer.status, answer.body)

    trio.run(_run, run)
