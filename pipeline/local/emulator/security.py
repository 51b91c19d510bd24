"""The one security layer of the local server: who may call it, and what a request may carry.

`covertype serve` and the runner's emulator run on the user's laptop, next to a browser that
visits any web page. `Guard` wraps the whole server (the `:predict` shortcut included), so every
route, present or added later, gets these rules without doing anything. In order:

1. **Host** is one of the server's own names: 127.0.0.1, localhost or [::1] with its port, the
   address it is bound to, or an `--allow-host` entry. A DNS-rebinding page reaches 127.0.0.1
   under its own name, and the browser sends that name as Host, so it is refused here.
2. **Token**: with a token configured (`--token` or `COVERTYPE_TOKEN`, required off loopback),
   every route but `/healthz` needs `Authorization: Bearer <token>` (compared in constant time).
3. **Origin**: a mutating request (any method but GET, HEAD, OPTIONS) whose `Origin` is not the
   server's own is refused. Browsers send `Origin` on every cross-origin POST, form posts and
   `fetch(..., {mode: "no-cors"})` included, and PUT, PATCH and DELETE always need a preflight.
4. **Content-Type**: a mutating request with a body must say `application/json`, the one type
   (besides multipart on the routes in ROUTE_RULES that speak it) a client of these APIs sends.
   A browser can send a body cross-site without a CORS preflight only as text/plain, a form
   (urlencoded or multipart) or with no type at all; JSON needs a preflight, which this server
   never grants (it sends no Access-Control-* header). A body-less request may omit the type
   (Google's client sends none on DELETE or a POST without a body); it still passes 1-3.
5. **Size**: a body over its route's limit (ROUTE_RULES) gets 413 before it is read: at once
   from `Content-Length` (the HTTP parser never delivers more than it says), or as soon as a
   streamed (chunked) body, which the layer reads first, passes the limit. At most `limit`
   bytes are held; what the client still sends is discarded by uvicorn.

Refusals are one-line JSON errors in the shape of the API at that path (`error_body`), never a
5xx, and carry `X-Refused-By: covertype-security` so a client or test can tell them apart.
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pipeline.local.emulator.asgi import ASGIApp, Message, Receive, Scope, Send

TOKEN_ENV = "COVERTYPE_TOKEN"
MIN_TOKEN_LENGTH = 16
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
OPEN_PATHS = frozenset({"/healthz"})  # answered without a token (liveness probes)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
JSON = ("application/json",)
MULTIPART = ("multipart/form-data",)
ANY_TYPE = ()  # a route whose bodies may have any Content-Type
REFUSED_BY = (b"x-refused-by", b"covertype-security")
DRAIN_BYTES = 16 << 20  # of a refused body, read and dropped so the client gets the answer
_HOST_NAME = re.compile(r"[a-z0-9.-]+|\[[0-9a-f:.]+\]")
_TOKEN_HINT = ("e.g. from python3 -c 'import secrets; print(secrets.token_urlsafe())'")


@dataclass(frozen=True)
class RouteRule:
    """What the routes under `path` accept as a request body."""

    path: re.Pattern[str]
    content_types: tuple[str, ...]
    limit: int  # bytes
    source: str  # where the limit comes from, said in the 413


# AI Platform's :predict error is {"error": "<message>"}; every other Google API answers
# {"error": {"code", "message", "status"}}, which Google's clients parse (google-api-core
# fails with AttributeError on a plain string there).
ML_PREDICT_PATH = re.compile(r"/v1/projects/[^/]+/models/[^/]+?(?:/versions/[^/]+)?:predict")
GOOGLE_API_PATH = re.compile(r"/(?:v1|bigquery|storage|upload|discovery)/")

VERTEX_PREDICT_LIMIT = "Vertex AI online prediction's payload limit"

# The first rule whose path matches applies; the last matches every path.
ROUTE_RULES = (
    RouteRule(ML_PREDICT_PATH, JSON, 1_572_864, "AI Platform Prediction's payload limit"),
    RouteRule(re.compile(r"/v1/projects/[^/]+/locations/[^/]+/endpoints/[^/]+"
                         r":(?:predict|rawPredict)"), JSON, 1_572_864, VERTEX_PREDICT_LIMIT),
    # KFP's pipeline upload protocol is multipart (kfp-server-api, `kfp pipeline upload`);
    # 32 MiB is the KFP API server's largest pipeline file.
    RouteRule(re.compile(r"/apis/v1beta1/pipelines/upload(?:_version)?"), MULTIPART, 32 << 20,
              "KFP's pipeline file limit"),
    # Google's media upload protocol (google-cloud-bigquery load jobs, google-cloud-storage):
    # multipart/related or a resumable session (JSON, then the bytes); no browser sends either
    # type without a preflight.
    # A resumable upload's chunks carry the object's own media type (any). Their URL is the
    # session's secret, handed out only for a JSON request (which needs a preflight).
    RouteRule(re.compile(r"/upload/storage/v1/resumable/[A-Za-z0-9_-]{20,64}"), ANY_TYPE,
              100 << 20, "this server's media upload limit"),
    RouteRule(re.compile(r"/upload/.*"), ("multipart/related", *JSON, "application/octet-stream"),
              100 << 20, "this server's media upload limit"),
    RouteRule(re.compile(r"/.*"), JSON, 10 << 20,
              "this server's API request limit, BigQuery's 10 MB"),
)
# Content-Type values that are exactly a media type, as most clients send them: their media
# type without parsing
_PLAIN_MEDIA = {media.encode(): media for rule in ROUTE_RULES for media in rule.content_types}
_STATUS_NAMES = {401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 413: "INVALID_ARGUMENT",
                 415: "INVALID_ARGUMENT"}


@dataclass(frozen=True)
class AccessPolicy:
    """Who the server answers: its bind address, extra Host names, and an optional token."""

    bind_host: str = "127.0.0.1"
    allow_hosts: tuple[str, ...] = ()
    token: str = ""

    @classmethod
    def for_server(cls, bind_host: str, allow_hosts: tuple[str, ...] | list[str] = (),
                   token: str | None = None) -> AccessPolicy:
        """Validate a server's flags: refuse bad `--allow-host` entries, a short token, and a
        non-loopback `--host` without a token (one line each, naming the fix).

        Raises:
            ValueError: the server must not start with these settings.
        """
        for entry in allow_hosts:
            _check_allow_host(entry)
        token = token or ""
        if token and (len(token) < MIN_TOKEN_LENGTH or not token.isprintable() or " " in token):
            raise ValueError(f"the token must be at least {MIN_TOKEN_LENGTH} printable characters "
                             f"without spaces; make one, {_TOKEN_HINT}")
        if not is_loopback(bind_host) and not token:
            raise ValueError(f"--host {bind_host} accepts connections from other machines, so "
                             f"the server needs a token: pass --token or set {TOKEN_ENV} "
                             f"({_TOKEN_HINT}), or serve on 127.0.0.1")
        return cls(bind_host, tuple(entry.lower() for entry in allow_hosts), token)

    def exposure_warning(self) -> str | None:
        """The start-up warning for a server reachable from other machines, else None."""
        if is_loopback(self.bind_host):
            return None
        return (f"--host {self.bind_host} accepts connections from other machines: every route "
                "but /healthz needs the bearer token, and traffic is plain HTTP; prefer an SSH "
                "tunnel to 127.0.0.1")


def is_loopback(host: str) -> bool:
    """Whether `host` (a bind address) is reachable only from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_allow_host(entry: str) -> None:
    name, port = _split_host(entry.lower())
    if not name or port == -1 or not _HOST_NAME.fullmatch(name):
        raise ValueError(f"--allow-host {entry!r} is not a host name: give a name or address, "
                         "optionally with :port, like myhost.lan or 192.168.1.5:8080")


def _split_host(value: str) -> tuple[str, int | None]:
    """(name, port) of `name[:port]` or `[v6 address][:port]`; port is None when absent and -1
    when malformed (a bad port, or an IPv6 address without brackets)."""
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return value, -1
        name, rest = value[:end + 1], value[end + 1:]
    elif value.count(":") > 1:
        return value, -1
    else:
        name, colon, port = value.partition(":")
        rest = colon + port
    if not rest:
        return name, None
    port = rest[1:]
    if not rest.startswith(":") or not port.isdigit() or not 0 < int(port) < 65536:
        return name, -1
    return name, int(port)


class ClientGone(Exception):
    """The client disconnected before its body was read: there is no one to answer."""


class Refusal(Exception):
    """A request this layer answers itself: status, one-line message, extra headers."""

    def __init__(self, status: int, message: str, headers: tuple = ()) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers


class Guard:
    """ASGI middleware applying the rules of this module to every request."""

    def __init__(self, app: ASGIApp, policy: AccessPolicy | None = None) -> None:
        self.app = app
        self.policy = policy or AccessPolicy()
        self._token = self.policy.token.encode()
        self._hosts: dict[int | None, frozenset[str]] = {}
        self._rules: dict[str, RouteRule] = {}  # by path: a regex scan costs ~1 us a request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            # No route speaks WebSocket, which browsers open cross-site without any CORS check:
            # refused (before accept, the server answers the handshake with HTTP 403).
            await send({"type": "websocket.close", "code": 1008})
            return
        headers = _headers(scope)
        try:
            self._check_caller(scope, headers)
            rule = self._rule(scope["path"])
            body = await read_limited(receive, rule) if must_read(scope, headers, rule) else None
        except Refusal as refusal:
            await _refuse(send, scope["path"], refusal, receive)
            return
        except ClientGone:
            return
        if body is None:
            await self.app(scope, receive, send)
        else:
            await self.app(scope, _replay(body, receive), send)

    # the caller: Host, token, Origin ---------------------------------------------------------

    def _check_caller(self, scope: Scope, headers: dict[bytes, bytes]) -> None:
        host = headers.get(b"host", b"").decode("latin-1").lower()
        port = (scope.get("server") or (None, None))[1]
        allowed = self._allowed_hosts(port)
        if host not in allowed and not (port == 80 and f"{host}:80" in allowed):
            own = f"127.0.0.1:{port}" if port else "127.0.0.1"
            name = _split_host(host)[0]
            if not _HOST_NAME.fullmatch(name):
                name = "NAME"
            raise Refusal(403, f"Host {_shown(host) if host else '(none)'} is not one of this "
                               f"server's names; call it as http://{own}/ or start it with "
                               f"--allow-host {name}")
        if self._token and scope["path"] not in OPEN_PATHS:
            scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
            challenge = ((b"www-authenticate", b'Bearer realm="covertype"'),)
            if scheme.lower() != b"bearer" or not given.strip():
                raise Refusal(401, "this server needs a token: send Authorization: Bearer "
                                   f"<token>, the --token or {TOKEN_ENV} it was started with",
                              challenge)
            if not hmac.compare_digest(given.strip(), self._token):
                raise Refusal(401, "the bearer token is wrong; send the --token or "
                                   f"{TOKEN_ENV} the server was started with", challenge)
        origin = headers.get(b"origin")
        if origin is not None and scope["method"] not in SAFE_METHODS:
            text = origin.decode("latin-1")
            if _origin_host(text) not in allowed:
                raise Refusal(403, f"cross-site request refused: Origin {_shown(text)} is not "
                                   f"this server's own (http://{host}); call the API from a "
                                   "client such as curl or Google's library, not from a web page")

    def _allowed_hosts(self, port: int | None) -> frozenset[str]:
        """Every `name:port` a Host header may hold for a server listening on `port`."""
        found = self._hosts.get(port)
        if found is None:
            names = list(LOOPBACK_NAMES)
            bind = self.policy.bind_host.lower()
            if bind not in ("0.0.0.0", "::", "[::]", ""):
                names.append(f"[{bind}]" if ":" in bind and not bind.startswith("[") else bind)
            exact = set()
            for entry in self.policy.allow_hosts:
                name, entry_port = _split_host(entry)
                if entry_port is None:
                    names.append(name)
                else:
                    exact.add(f"{name}:{entry_port}")
            suffix = f":{port}" if port else ""
            found = self._hosts[port] = frozenset({name + suffix for name in names} | exact)
        return found

    # the body: Content-Type and size ---------------------------------------------------------

    def _rule(self, path: str) -> RouteRule:
        """The first of ROUTE_RULES whose path matches (the last matches every path)."""
        found = self._rules.get(path)
        if found is None:
            if len(self._rules) >= 4096:
                self._rules.clear()
            found = self._rules[path] = next(
                rule for rule in ROUTE_RULES if rule.path.fullmatch(path))
        return found


async def check_body(scope: Scope, headers: dict[bytes, bytes], receive: Receive,
                     rule: RouteRule) -> bytes | None:
    """A streamed body, read here up to `rule.limit` bytes; None when the app may read the
    body itself: there is none, or its Content-Length is within the limit."""
    return await read_limited(receive, rule) if must_read(scope, headers, rule) else None


def must_read(scope: Scope, headers: dict[bytes, bytes], rule: RouteRule) -> bool:
    """Check the body's Content-Type and declared Content-Length against `rule`; True when the
    body is streamed (chunked, or of no numeric length) and must be read here to bound it."""
    length = headers.get(b"content-length")
    chunked = b"transfer-encoding" in headers
    has_body = chunked or (length is not None and length.strip() not in (b"", b"0"))
    content_type = headers.get(b"content-type")
    if scope["method"] not in SAFE_METHODS and (has_body or content_type is not None):
        media = _PLAIN_MEDIA.get(content_type) or (
            (content_type or b"").split(b";", 1)[0].strip().lower().decode("latin-1"))
        if rule.content_types and media not in rule.content_types:
            wanted = " or ".join(rule.content_types)
            raise Refusal(415, f"Content-Type {_shown(media) if media else '(none)'} is not "
                               f"accepted by {scope['method']} {scope['path']}; send the body "
                               f"as {wanted} with Content-Type: {rule.content_types[0]}")
    if not has_body:
        return False
    if not chunked and length is not None and length.isdigit():
        if int(length) > rule.limit:
            raise _too_large(rule)
        return False  # the HTTP parser delivers exactly Content-Length bytes, no more
    return True


async def read_limited(receive: Receive, rule: RouteRule) -> bytes:
    """The whole streamed body, refused as soon as it passes `rule.limit` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > rule.limit:
            raise _too_large(rule)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _too_large(rule: RouteRule) -> Refusal:
    return Refusal(413, f"Request payload size exceeds the limit: {rule.limit} bytes "
                        f"({rule.source}); send a smaller request")


class BodyLimit:
    """ASGI middleware applying only the body rules (Content-Type and size) of one RouteRule.

    For the Vertex AI serving container, whose callers come through Vertex's own front end
    (any Host), not from a browser on the same machine.
    """

    def __init__(self, app: ASGIApp, rule: RouteRule) -> None:
        self.app = app
        self.rule = rule

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            body = await check_body(scope, _headers(scope), receive, self.rule)
        except Refusal as refusal:
            await _refuse(send, None, refusal, receive)  # the container's own error shape
            return
        except ClientGone:
            return
        await self.app(scope, receive if body is None else _replay(body, receive), send)


def _headers(scope: Scope) -> dict[bytes, bytes]:
    """The request headers by lower-case name (the last of repeated ones, but Host: the first)."""
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name == b"host" and name in found:
            found[b"host"] = b"(repeated)"  # two Host headers: refuse, never pick one
            continue
        found[name] = value
    return found


def _origin_host(origin: str) -> str:
    """`name:port` of an Origin value (its scheme's default port if none), or '' if malformed."""
    try:
        parts = urlsplit(origin.lower())
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return ""
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        return ""
    name = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{name}:{port}"


def _shown(value: str) -> str:
    """A header value safe and short enough for a one-line message."""
    text = "".join(char if char.isprintable() else "?" for char in value)
    return repr(text[:100] + ("..." if len(text) > 100 else ""))


def error_body(path: str, status: int, message: str) -> bytes:
    """A refusal in the error shape of the API at `path`."""
    if GOOGLE_API_PATH.match(path) and not ML_PREDICT_PATH.fullmatch(path):
        error: Any = {"code": status, "message": message,
                      "status": _STATUS_NAMES.get(status, "INVALID_ARGUMENT")}
    else:
        error = message
    return json.dumps({"error": error}, separators=(",", ":")).encode()


async def _refuse(send: Send, path: str | None, refusal: Refusal, receive: Receive) -> None:
    """Answer the refusal at once, then read and drop (never keep) up to DRAIN_BYTES of a body
    still on its way before ending the response: a client that waits for the answer gets it
    from the headers alone, and one that sends its whole body first, as most do, reads the
    answer instead of a reset connection; past DRAIN_BYTES the connection is cut. `path`
    picks the error shape (`error_body`); None: the plain `{"error": "<message>"}`."""
    body = (error_body(path, refusal.status, str(refusal)) if path is not None
            else json.dumps({"error": str(refusal)}, separators=(",", ":")).encode())
    await send({"type": "http.response.start", "status": refusal.status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"x-content-type-options", b"nosniff"), REFUSED_BY, *refusal.headers]})
    await send({"type": "http.response.body", "body": body, "more_body": refusal.status == 413})
    if refusal.status != 413:
        return
    drained = 0
    while drained <= DRAIN_BYTES:
        message = await receive()
        if message["type"] != "http.request":
            return
        drained += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    await send({"type": "http.response.body", "body": b""})


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body already read, then waits as the server would."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
