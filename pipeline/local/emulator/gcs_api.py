"""Cloud Storage JSON API subset over the local storage root (`pipeline/local/gcs_store.py`).

What google-cloud-storage and gcsfs call, shaped like the real API: buckets list, insert, get,
delete; objects list (prefix, delimiter, paging, offsets), get (metadata, or the bytes with
`alt=media` or the `/download/` path, Range honoured), delete, copyTo and rewriteTo; uploads
`uploadType=media`, `multipart` and `resumable` (chunks by PUT or POST with Content-Range to
the session URL the start returns, `/upload/storage/v1/resumable/<id>`).
Routing is a table of regexes over the raw path, where an object name's `/` is `%2F`; a
route that is not in it answers 501. Errors are the API's `{"error": {..., "errors":
[{"reason"}]}}`, made at the app's edge from `ServiceError`.
"""
from __future__ import annotations

import json
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from pipeline.atomic import write_atomic
from pipeline.local.emulator.bodies import json_object
from pipeline.local.errors import InvalidArgument, NotFound, Unimplemented
from pipeline.local.gcs_store import FolderStorage, Preconditions
from pipeline.local.home import storage_root

router = APIRouter()
Handler = Callable[..., Awaitable[Response]]
_CONTENT_RANGE = re.compile(r"bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)")
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{20,64}")


def storage(request: Request) -> FolderStorage:
    """The app's storage over `<home>/gcs`, metadata and upload sessions beside it."""
    home = Path(request.app.state.home)
    return FolderStorage(storage_root(home), home / "gcs-metadata", home / "gcs-uploads",
                         str(request.base_url))


# Buckets ----------------------------------------------------------------------------------
async def list_buckets(request: Request, store: FolderStorage) -> Response:
    return JSONResponse(await run_in_threadpool(store.list_buckets))


async def insert_bucket(request: Request, store: FolderStorage) -> Response:
    body = await json_object(request)
    return JSONResponse(await run_in_threadpool(store.create_bucket, str(body.get("name", ""))))


async def get_bucket(request: Request, store: FolderStorage, bucket: str) -> Response:
    return JSONResponse(await run_in_threadpool(store.get_bucket, bucket))


async def delete_bucket(request: Request, store: FolderStorage, bucket: str) -> Response:
    await run_in_threadpool(store.delete_bucket, bucket)
    return Response(status_code=204)


# Objects ----------------------------------------------------------------------------------
async def list_objects(request: Request, store: FolderStorage, bucket: str) -> Response:
    query = request.query_params
    size = query.get("maxResults", "1000")
    if not size.isdigit() or int(size) < 1:
        raise InvalidArgument(f"Invalid maxResults {size!r}: use a whole number >= 1",
                              reason="invalid")
    if query.get("matchGlob"):
        raise InvalidArgument("matchGlob is not supported by local storage; list with a prefix",
                              reason="invalid")
    page = await run_in_threadpool(
        store.list_objects, bucket, query.get("prefix", ""), query.get("delimiter", ""),
        query.get("pageToken", ""), min(int(size), 1000), query.get("startOffset", ""),
        query.get("endOffset", ""), query.get("includeTrailingDelimiter") == "true")
    return JSONResponse(page)


async def get_object(request: Request, store: FolderStorage, bucket: str,
                     object: str) -> Response:  # noqa: A002 (the API's name)
    resource = await run_in_threadpool(store.get_object, bucket, object,
                                       request.query_params.get("generation"))
    Preconditions.from_query(request.query_params).check(resource["generation"])
    if request.query_params.get("alt", "json") != "media":
        return JSONResponse(resource)
    return _media(store, resource)


async def download_object(request: Request, store: FolderStorage, bucket: str,
                          object: str) -> Response:  # noqa: A002
    resource = await run_in_threadpool(store.get_object, bucket, object,
                                       request.query_params.get("generation"))
    Preconditions.from_query(request.query_params).check(resource["generation"])
    return _media(store, resource)


def _media(store: FolderStorage, resource: Mapping[str, Any]) -> Response:
    """The object's bytes (a Range request gets 206), with the headers GCS sends."""
    headers = {"X-Goog-Generation": resource["generation"], "X-Goog-Metageneration": "1",
               "X-Goog-Hash": f"crc32c={resource['crc32c']},md5={resource['md5Hash']}",
               "X-Goog-Stored-Content-Length": resource["size"],
               "X-Goog-Stored-Content-Encoding": resource.get("contentEncoding", "identity"),
               "X-Goog-Storage-Class": "STANDARD"}
    path = store.object_path(resource["bucket"], resource["name"])
    return FileResponse(path, media_type=resource["contentType"], headers=headers)


async def delete_object(request: Request, store: FolderStorage, bucket: str,
                        object: str) -> Response:  # noqa: A002
    await run_in_threadpool(store.delete_object, bucket, object,
                            Preconditions.from_query(request.query_params))
    return Response(status_code=204)


async def copy_object(request: Request, store: FolderStorage, bucket: str, object: str,  # noqa: A002
                      verb: str, destination_bucket: str, destination_object: str) -> Response:
    query = request.query_params
    if query.get("destinationKmsKeyName") or query.get("destinationPredefinedAcl"):
        raise InvalidArgument("KMS keys and ACLs are not supported by local storage",
                              reason="invalid")
    resource = await run_in_threadpool(
        store.copy_object, bucket, object, destination_bucket, destination_object,
        await json_object(request), Preconditions.from_query(query),
        query.get("sourceGeneration"))
    if verb == "copyTo":
        return JSONResponse(resource)
    return JSONResponse({"kind": "storage#rewriteResponse",
                         "totalBytesRewritten": resource["size"], "objectSize": resource["size"],
                         "done": True, "resource": resource})


# Uploads ----------------------------------------------------------------------------------
async def upload(request: Request, store: FolderStorage, bucket: str) -> Response:
    """objects.insert by media or multipart, or the start of a resumable session."""
    query = request.query_params
    kind = query.get("uploadType", "")
    preconditions = Preconditions.from_query(query)
    if kind == "media":
        resource = {"name": query.get("name", ""),
                    "contentType": request.headers.get("content-type") or None}
        data = await request.body()
    elif kind == "multipart":
        resource, data = _multipart(request.headers.get("content-type", ""),
                                    await request.body())
    elif kind == "resumable":
        return await _start_session(request, store, bucket, preconditions)
    else:
        raise InvalidArgument(f"uploadType {kind!r} is not supported; use media, multipart or "
                              "resumable", reason="invalid")
    name = str(resource.pop("name", "") or query.get("name", ""))
    resource.pop("bucket", None)
    resource = {key: value for key, value in resource.items() if value is not None}
    return JSONResponse(await run_in_threadpool(store.write_bytes, bucket, name, data,
                                                resource, preconditions))


def _multipart(content_type: str, body: bytes) -> tuple[dict[str, Any], bytes]:
    """The JSON metadata and the media of a multipart/related upload body."""
    boundary = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.startswith("multipart/related") or not boundary:
        raise InvalidArgument("a multipart upload needs Content-Type multipart/related with a "
                              "boundary", reason="invalid")
    delimiter = b"--" + boundary.group(1).encode()
    parts = body.split(delimiter)
    if len(parts) < 4 or not parts[3].startswith(b"--"):
        raise InvalidArgument("a multipart upload body must hold exactly two parts: the JSON "
                              "metadata, then the media", reason="invalid")
    (_, metadata), (media_type, media) = (_part(part) for part in parts[1:3])
    try:
        resource = json.loads(metadata or b"{}")
    except ValueError:
        raise InvalidArgument("the metadata part of the multipart upload is not JSON",
                              reason="parseError") from None
    if not isinstance(resource, dict):
        raise InvalidArgument("the metadata part must be a JSON object", reason="invalid")
    if media_type and not resource.get("contentType"):
        resource["contentType"] = media_type  # the API takes it from the media part
    return resource, media


def _part(part: bytes) -> tuple[str, bytes]:
    """A MIME part's Content-Type and content: after its headers, without the line break
    before the next delimiter (CRLF as RFC 2046 says, or LF as gcsfs writes)."""
    for separator, newline in ((b"\r\n\r\n", b"\r\n"), (b"\n\n", b"\n")):
        head, found, content = part.partition(separator)
        if found and b"\n\n" not in head and b"\r\n\r\n" not in head:
            media_type = ""
            for line in head.decode("latin-1").splitlines():
                key, _, value = line.partition(":")
                if key.strip().lower() == "content-type":
                    media_type = value.strip()
            return media_type, content[:-len(newline)] if content.endswith(newline) else content
    raise InvalidArgument("a part of the multipart upload has no headers", reason="invalid")


async def _start_session(request: Request, store: FolderStorage, bucket: str,
                         preconditions: Preconditions) -> Response:
    resource = await json_object(request)
    name = str(resource.pop("name", "") or request.query_params.get("name", ""))
    resource.pop("bucket", None)
    if request.headers.get("x-upload-content-type") and not resource.get("contentType"):
        resource["contentType"] = request.headers["x-upload-content-type"]
    store.object_path(bucket, name)  # refuse a bad bucket or name now, not after the bytes
    session = secrets.token_urlsafe(24)
    record = {"bucket": bucket, "name": name, "resource": resource,
              "preconditions": preconditions.__dict__}
    await run_in_threadpool(write_atomic, _session_path(store, session, ".json"),
                            json.dumps(record))
    # The session URL is opaque to clients; its own path lets the security layer accept the
    # chunks' media types there only (emulator/security.py).
    location = f"{str(request.base_url).rstrip('/')}/upload/storage/v1/resumable/{session}"
    return Response(status_code=200, headers={"Location": location})


async def resumable_chunk(request: Request, store: FolderStorage, session: str) -> Response:
    """Append a chunk; 308 with the received Range until the last byte, then the object."""
    record_path = _session_path(store, session, ".json")
    data_path = _session_path(store, session, ".data")
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        raise NotFound(f"No such upload session: {session}", reason="notFound") from None
    bucket = record["bucket"]
    if request.method == "DELETE":
        record_path.unlink(missing_ok=True)
        data_path.unlink(missing_ok=True)
        return Response(status_code=499)
    received = data_path.stat().st_size if data_path.exists() else 0
    body = await request.body()
    header = request.headers.get("content-range", f"bytes 0-{len(body) - 1}/{len(body)}"
                                 if body else "bytes */0")
    match = _CONTENT_RANGE.fullmatch(header.strip())
    if not match:
        raise InvalidArgument(f"Invalid Content-Range {header!r}", reason="invalid")
    first, last, total = match.groups()
    if first is not None:
        first, last = int(first), int(last)
        if last - first + 1 != len(body) or first > received:
            raise InvalidArgument(f"Content-Range {header!r} does not match the {len(body)} "
                                  f"bytes sent after the {received} received", reason="invalid")
        await run_in_threadpool(_append, data_path, body[received - first:])
        received = max(received, last + 1)
    if total == "*" or int(total) != received:
        if total != "*" and int(total) < received:
            raise InvalidArgument(f"the upload declares {total} bytes but {received} arrived",
                                  reason="invalid")
        headers = {"Range": f"bytes=0-{received - 1}"} if received else {}
        return Response(status_code=308, headers=headers)
    data_path.touch()
    resource = await run_in_threadpool(
        store.write_file, bucket, record["name"], data_path, record["resource"],
        Preconditions(**record["preconditions"]))
    record_path.unlink(missing_ok=True)
    return JSONResponse(resource)


def _session_path(store: FolderStorage, session: str, suffix: str) -> Path:
    if not _SESSION_ID.fullmatch(session):
        raise NotFound(f"No such upload session: {session}", reason="notFound")
    return store.staging / "sessions" / (session + suffix)


def _append(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as stream:
        stream.write(data)



# Route table ------------------------------------------------------------------------------
_SEGMENT = r"[^/]+"
ROUTES: list[tuple[re.Pattern[str], dict[str, Handler]]] = [
    (re.compile(rf"/storage/v1/b/(?P<bucket>{_SEGMENT})/o/(?P<object>{_SEGMENT})/"
                rf"(?P<verb>copyTo|rewriteTo)/b/(?P<destination_bucket>{_SEGMENT})/o/"
                rf"(?P<destination_object>{_SEGMENT})"), {"POST": copy_object}),
    (re.compile(rf"/storage/v1/b/(?P<bucket>{_SEGMENT})/o/(?P<object>{_SEGMENT})"),
     {"GET": get_object, "DELETE": delete_object}),
    (re.compile(rf"/storage/v1/b/(?P<bucket>{_SEGMENT})/o"), {"GET": list_objects}),
    (re.compile(rf"/storage/v1/b/(?P<bucket>{_SEGMENT})"),
     {"GET": get_bucket, "DELETE": delete_bucket}),
    (re.compile(r"/storage/v1/b"), {"GET": list_buckets, "POST": insert_bucket}),
    (re.compile(rf"/upload/storage/v1/b/(?P<bucket>{_SEGMENT})/o"), {"POST": upload}),
    (re.compile(r"/upload/storage/v1/resumable/(?P<session>[^/]+)"),
     {"PUT": resumable_chunk, "POST": resumable_chunk, "DELETE": resumable_chunk}),
    (re.compile(rf"/download/storage/v1/b/(?P<bucket>{_SEGMENT})/o/(?P<object>{_SEGMENT})"),
     {"GET": download_object}),
]


@router.api_route("/storage/v1/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                  include_in_schema=False)
@router.api_route("/upload/storage/v1/{rest:path}", methods=["POST", "PUT", "DELETE"],
                  include_in_schema=False)
@router.api_route("/download/storage/v1/{rest:path}", methods=["GET"], include_in_schema=False)
async def dispatch(request: Request, rest: str) -> Response:
    """Route by the raw path, so an object name's %2F stays inside its segment."""
    path = request.scope.get("raw_path", request.url.path.encode()).decode("latin-1")
    path = path.partition("?")[0]
    for pattern, methods in ROUTES:
        match = pattern.fullmatch(path)
        if match:
            handler = methods.get(request.method)
            if handler is None:
                raise Unimplemented(
                    f"{request.method} {path} is not in the local Cloud Storage subset",
                    reason="notImplemented")
            groups = {key: unquote(value) for key, value in match.groupdict().items()}
            return await handler(request, storage(request), **groups)
    raise Unimplemented(f"{request.method} {path} is not in the local Cloud Storage "
                                  "subset", reason="notImplemented")
