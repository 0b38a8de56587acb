"""Bounded input (issue #16): what a caller gives is bounded before it is stored, and what was stored
before the bounds existed never breaks anyone else's listing."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from core import ArtifactStore, ArtifactTooLargeError, InvalidArgumentError, Limits, StreamUploadRequest
from core.infra.clock import ManualClock
from core.nodes import Node

YEAR = 365 * 24 * 3600


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


async def test_a_record_stored_deep_before_the_limit_reads_back_and_breaks_no_listing(
    store: ArtifactStore, clock: ManualClock
) -> None:
    """Before meta had a depth limit, meta 199-255 levels deep was written but could not be read back:
    the artifact, and every search, listing, cleanup and delete that met its record, failed."""
    session = await store.create_session(user_id="bob")
    fine = await store.store(b"fine", session_id=session, filename="d/fine.txt")
    deep_id = await store.store(b"deep", session_id=session, filename="d/deep.txt", ttl=60)
    other = await store.store(b"other", user_id="carol", scope="user")
    deep = nested(230)

    def as_before(node: Node) -> None:  # what store() wrote then: the rules are bypassed here on purpose
        assert node.artifact is not None
        node.artifact.meta = deep

    await store.ns.update_node(await store.ns.artifact_node(deep_id), as_before)

    assert (await store.metadata(deep_id)).meta == deep
    assert {m.artifact_id for m in await store.search()} == {fine, deep_id, other}
    assert [m.filename for m in await store.list_by_session(session)] == ["d/deep.txt", "d/fine.txt"]
    clock.advance(120)
    assert await store.cleanup_expired_sessions() == 1  # the deep one had expired
    assert {m.artifact_id for m in await store.search()} == {fine, other}
    assert await store.delete_session(session) == 1


async def test_extend_ttl_cannot_stack_lifetimes_past_the_maximum(store: ArtifactStore) -> None:
    file_id = await store.store(b"x", user_id="u", scope="user", ttl=YEAR)
    await store.extend_ttl(file_id, 98 * YEAR, user_id="u")  # 99 years left: allowed
    before = await store.metadata(file_id)
    with pytest.raises(InvalidArgumentError):
        await store.extend_ttl(file_id, 2 * YEAR, user_id="u")  # 101 years left
    assert await store.metadata(file_id) == before
    session = await store.create_session(ttl_hours=99 * YEAR / 3600)
    expires = (await store.get_session_info(session)).expires_at
    with pytest.raises(InvalidArgumentError):
        await store.extend_session_ttl(session, additional_hours=2 * YEAR / 3600)
    assert (await store.get_session_info(session)).expires_at == expires


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
@pytest.mark.parametrize("limits", [Limits(max_meta_depth=3, max_meta_bytes=100, max_ttl=3600)])
async def test_the_bounds_are_the_stores_limits(store: ArtifactStore) -> None:
    await store.store(b"x", meta={"a": {"b": 1}}, ttl=3600, user_id="u", scope="user")
    for call in (
        lambda: store.store(b"x", meta={"a": {"b": {"c": {}}}}, user_id="u", scope="user"),
        lambda: store.store(b"x", meta={"a": "x" * 100}, user_id="u", scope="user"),
        lambda: store.store(b"x", ttl=3601, user_id="u", scope="user"),
        lambda: store.create_session(ttl_hours=1.01),
        lambda: store.search(meta_filter={"a": {"b": [{}]}}),
    ):
        with pytest.raises(InvalidArgumentError):
            await call()


def test_limits_refuse_defaults_past_their_own_maximum() -> None:
    with pytest.raises(ValidationError):
        Limits(max_ttl=600)  # the 900 s defaults would exceed it
    with pytest.raises(ValidationError):
        Limits(max_meta_depth=1000)  # past what a record can hold and be read back
    Limits(max_ttl=600, default_ttl=600, session_ttl=300)


async def test_a_content_length_past_the_digit_limit_is_too_large(store: ArtifactStore) -> None:
    """Its error message printed the number, which raised ValueError (found by tests/test_fuzz.py)."""
    with pytest.raises(ArtifactTooLargeError):
        await store.stream_upload(StreamUploadRequest(data_stream=iter([b"x"]), content_length=10**5000, user_id="u"))
