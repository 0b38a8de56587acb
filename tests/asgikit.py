"""Calling the presign service's ASGI application directly, without a server in front.

hypercorn (h11) refuses some malformed requests before the application sees
them; calling the application itself shows what it does with whatever
reaches it, whichever server runs it.
"""

from __future__ import annotations

from typing import Any

import anyio

from core.transfers.service import PresignService


class Answer:
    """What the application sent: the status, the headers and the body bytes."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""


async def call(
    app: PresignService, method: str, path: str, query: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None, body: bytes = b"",
) -> Answer:
    """One request; the client stays until the response ends, then goes away."""
    answer = Answer()
    done = anyio.Event()
    sent_body = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer.status = message["status"]
            answer.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            answer.body += message.get("body", b"")
            if not message.get("more_body", False):
                done.set()

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode("utf-8", "surrogatepass"), "query_string": query, "root_path": "",
        "headers": headers or [], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8470),
    }
    await app(scope, receive, send)
    done.set()
    return answer
