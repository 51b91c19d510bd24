"""The HTTP floor: a bare ASGI app on uvicorn answering every request with `{"predictions":[1]}`.

No routing, no validation, no JSON parsing, no model: it reads the request body (as any server
must) and sends a constant. Nothing that serves predictions over HTTP with uvicorn on this
machine can be faster, so `covertype serve`'s share of its requests/s is the distance to the
limit. Run with the same uvicorn settings as `covertype serve` (pipeline/cli/serve.py: one
worker, no access log, log level warning, httptools; the event loop uvicorn picks):
`python bench/floor_app.py PORT`.
"""
import sys

import uvicorn

BODY = b'{"predictions":[1]}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope, receive, send):
    """Read the whole request, answer the constant; lifespan events are acknowledged."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), workers=1, access_log=False,
                log_level="warning", http="httptools")
