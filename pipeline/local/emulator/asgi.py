"""Plain ASGI requests and answers, for the `:predict` hot path.

A Starlette Request and Response cost more per request than an ONNX prediction of one
instance, so the predict handlers read the body and answer with the ASGI messages themselves.
The answers are byte for byte what Starlette's `Response` and `JSONResponse` send: the same
bodies, and the same headers in the same order.
"""
from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_CONTENT_TYPE = (b"content-type", b"application/json")
# json.dumps(..., separators=(",", ":")), without building an encoder per call
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode
# what Starlette's JSONResponse renders
_ENCODE_AS_STARLETTE = json.JSONEncoder(ensure_ascii=False, allow_nan=False,
                                        separators=(",", ":")).encode


def encode_json(content: Any) -> bytes:
    """`json.dumps(content, separators=(",", ":"))`, UTF-8 encoded."""
    return _ENCODE(content).encode()


def error_json(content: Any) -> bytes:
    """The body of Starlette's `JSONResponse(content)`."""
    return _ENCODE_AS_STARLETTE(content).encode()


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body (the security layer has bounded its size); None when the client
    disconnected first."""
    message = await receive()
    if message["type"] != "http.request":
        return None
    body = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    chunks = [body]
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def send_json(send: Send, status: int, body: bytes,
                    headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    """Answer with a JSON body: `headers`, then content-length and content-type, as Starlette's
    Response orders them."""
    await send({"type": "http.response.start", "status": status, "headers": [
        *headers, (b"content-length", str(len(body)).encode()), JSON_CONTENT_TYPE]})
    await send({"type": "http.response.body", "body": body})


def as_asgi(handler: Callable[..., Awaitable[None]], *args: Any) -> ASGIApp:
    """An ASGI app answering with `handler(*args, receive, send)`: what a FastAPI route returns
    to answer with the very code of the `:predict` shortcut."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await handler(*args, receive, send)

    return app
