"""Local storage seen as Cloud Storage: bucket = first-level folder of the storage root,
object = file below it (`gs://b/a/x.csv` is `<home>/gcs/b/a/x.csv`).

The domain layer of the GCS JSON API subset (`emulator/gcs_api.py`): it returns the API's
resources (storage#bucket, storage#object, ...) and raises `ServiceError`s with the API's
reasons. What a folder cannot hold is refused, never approximated: object names that are not
a path (`a//b`, `../x`, a trailing `/`), an object where a folder is (or the reverse), a path
that leaves the root through a symlink. Writes go to a temporary file that is renamed into
place, so readers never see half an object. An object's content type, custom metadata and
checksums are kept beside the root (`<home>/gcs-metadata/`), valid while the file's size and
mtime are the ones they were recorded for; a file written by other means is
application/octet-stream with freshly computed checksums.
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import google_crc32c

from pipeline.atomic import write_atomic
from pipeline.local.errors import Conflict, InvalidArgument, NotFound, PreconditionFailed
from pipeline.local.storage import resolves_inside

_BUCKET = re.compile(r"[a-z0-9][a-z0-9_.-]{1,61}[a-z0-9]")
_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp|\.bq-export-.*\.csv")  # write_atomic, bq export
# Object resource fields an upload or copy may set (others are refused).
WRITABLE = ("contentType", "metadata", "cacheControl", "contentDisposition", "contentEncoding",
            "contentLanguage")
_CHECKED = ("crc32c", "md5Hash")  # sent by clients to be verified
_PAGE_SIZE = 1000


@dataclass(frozen=True)
class Preconditions:
    """ifGenerationMatch & co. of a request (None: not given); metageneration is always 1."""

    if_generation_match: str | None = None
    if_generation_not_match: str | None = None
    if_metageneration_match: str | None = None
    if_metageneration_not_match: str | None = None

    @classmethod
    def from_query(cls, query: Mapping[str, str], prefix: str = "if") -> Preconditions:
        names = ("GenerationMatch", "GenerationNotMatch", "MetagenerationMatch",
                 "MetagenerationNotMatch")
        values = [query.get(prefix + name) for name in names]
        for name, value in zip(names, values, strict=True):
            if value is not None and not value.isdigit():
                raise InvalidArgument(f"{prefix}{name}={value!r} is not a generation number",
                                      reason="invalid")
        return cls(*values)

    def check(self, generation: str | None) -> None:
        """Raise PreconditionFailed unless the object (generation None: absent) satisfies them."""
        current = generation or "0"
        failed = ((self.if_generation_match is not None and self.if_generation_match != current)
                  or (self.if_generation_not_match is not None
                      and self.if_generation_not_match == current))
        if generation is not None:
            failed = failed or self.if_metageneration_match not in (None, "1") or (
                self.if_metageneration_not_match == "1")
        elif self.if_metageneration_match is not None or (
                self.if_metageneration_not_match is not None):
            raise NotFound("No such object", reason="notFound")
        if failed:
            raise PreconditionFailed("At least one of the pre-conditions you specified did not "
                                     "hold.", reason="conditionNotMet")


def check_bucket_name(bucket: str) -> str:
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise InvalidArgument(f"Invalid bucket name: {bucket!r}; use 3-63 lowercase letters, "
                              "digits, '-', '_' or '.', starting and ending with a letter or "
                              "digit", reason="invalid")
    return bucket


def check_object_name(name: str) -> str:
    """Refuse names Cloud Storage refuses and names a folder cannot hold, in one line each."""
    if not name or len(name.encode()) > 1024 or any(c in name for c in "\r\n\0"):
        raise InvalidArgument(f"Invalid object name {name!r}: use 1-1024 bytes of UTF-8 with no "
                              "carriage return, line feed or NUL", reason="invalid")
    parts = name.split("/")
    if name.endswith("/"):
        raise InvalidArgument(f"object name {name!r} ends in '/': folder placeholder objects "
                              "have no file in local storage; write objects below it instead",
                              reason="invalid")
    if any(part in ("", ".", "..") for part in parts):
        raise InvalidArgument(f"object name {name!r} has an empty, '.' or '..' segment, which "
                              "local storage cannot hold as a file path; rename it",
                              reason="invalid")
    return name


class FolderStorage:
    """Buckets and objects over `root`, metadata under `metadata_root`, sessions under `staging`;
    resources link to `base_url` (the server's, as the API's links are absolute)."""

    def __init__(self, root: Path, metadata_root: Path, staging: Path,
                 base_url: str = "") -> None:
        self.base_url = base_url.rstrip("/")
        self.root = root
        self.metadata_root = metadata_root
        self.staging = staging

    # Buckets ------------------------------------------------------------------------------
    def list_buckets(self) -> dict[str, Any]:
        names = sorted(entry.name for entry in self._entries(self.root)
                       if entry.is_dir(follow_symlinks=False) and _BUCKET.fullmatch(entry.name))
        return {"kind": "storage#buckets", "items": [self.get_bucket(name) for name in names]}

    def get_bucket(self, bucket: str) -> dict[str, Any]:
        folder = self._bucket_folder(bucket)
        created = _rfc3339(folder.stat().st_mtime_ns)
        return {"kind": "storage#bucket", "id": bucket, "name": bucket,
                "selfLink": f"{self.base_url}/storage/v1/b/{bucket}", "projectNumber": "0",
                "metageneration": "1", "location": "US", "locationType": "multi-region",
                "storageClass": "STANDARD", "timeCreated": created, "updated": created,
                "etag": "CAE="}

    def create_bucket(self, bucket: str) -> dict[str, Any]:
        folder = self.root / check_bucket_name(bucket)
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            folder.mkdir()
        except FileExistsError:
            raise Conflict("Your previous request to create the named bucket succeeded and you "
                           "already own it.", reason="conflict") from None
        return self.get_bucket(bucket)

    def delete_bucket(self, bucket: str) -> None:
        folder = self._bucket_folder(bucket)
        if next(self._names(bucket, ""), None) is not None:
            raise Conflict(f"The bucket you tried to delete is not empty: {bucket}",
                           reason="conflict")
        shutil.rmtree(folder)
        shutil.rmtree(self.metadata_root / bucket, ignore_errors=True)

    # Objects ------------------------------------------------------------------------------
    def list_objects(self, bucket: str, prefix: str = "", delimiter: str = "",
                     page_token: str = "", max_results: int = _PAGE_SIZE,
                     start_offset: str = "", end_offset: str = "",
                     include_trailing_delimiter: bool = False) -> dict[str, Any]:
        """objects.list in name order: `items` and `prefixes`, paged like the API."""
        self._bucket_folder(bucket)
        after = _decode_token(page_token)
        items: list[dict[str, Any]] = []
        prefixes: list[str] = []
        for name in sorted(self._names(bucket, prefix)):
            if name <= after or name < start_offset or (end_offset and name >= end_offset):
                continue
            cut = name.find(delimiter, len(prefix)) if delimiter else -1
            if cut >= 0:
                common = name[:cut + len(delimiter)]
                if prefixes and prefixes[-1] == common:
                    continue
                if len(items) + len(prefixes) == max_results:
                    return _page(items, prefixes, after)
                prefixes.append(common)
                after = common + "\U0010ffff"  # past every name under this prefix
                if include_trailing_delimiter and name == common:
                    items.append(self.get_object(bucket, name))
                continue
            if len(items) + len(prefixes) == max_results:
                return _page(items, prefixes, after)
            items.append(self.get_object(bucket, name))
            after = name
        return _page(items, prefixes, "")

    def get_object(self, bucket: str, name: str, generation: str | None = None) -> dict[str, Any]:
        """The storage#object resource; NotFound for an absent object or other generation."""
        path = self.object_path(bucket, name)
        try:
            stat = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise _no_such_object(bucket, name) from None
        if not path.is_file() or (generation and generation != str(stat.st_mtime_ns)):
            raise _no_such_object(bucket, name)
        stored = self._metadata(bucket, name, path, stat)
        generation = str(stat.st_mtime_ns)
        resource = {
            "kind": "storage#object", "id": f"{bucket}/{name}/{generation}",
            "selfLink": f"{self.base_url}/storage/v1/b/{bucket}/o/{_quote(name)}",
            "mediaLink": f"{self.base_url}/download/storage/v1/b/{bucket}/o/{_quote(name)}"
                         f"?generation={generation}&alt=media",
            "name": name, "bucket": bucket, "generation": generation, "metageneration": "1",
            "contentType": "application/octet-stream", "storageClass": "STANDARD",
            "size": str(stat.st_size), "timeCreated": _rfc3339(stat.st_mtime_ns),
            "updated": _rfc3339(stat.st_mtime_ns),
            "timeStorageClassUpdated": _rfc3339(stat.st_mtime_ns),
            "etag": base64.b64encode(generation.encode()).decode(),
        }
        resource.update(stored)
        return resource

    def object_path(self, bucket: str, name: str) -> Path:
        """The file of an object, refused if the name or a symlink would leave the root."""
        folder = self._bucket_folder(bucket)
        path = folder / check_object_name(name)
        if not resolves_inside(path, self.root):
            raise InvalidArgument(f"object {bucket}/{name} is a symlink out of local storage; "
                                  "only files inside it are served", reason="forbidden")
        return path

    def delete_object(self, bucket: str, name: str, preconditions: Preconditions) -> None:
        path = self.object_path(bucket, name)
        preconditions.check(self.get_object(bucket, name)["generation"])
        path.unlink()
        (self._metadata_path(bucket, name)).unlink(missing_ok=True)
        _prune_empty_folders(path.parent, self.root / bucket)

    def write_bytes(self, bucket: str, name: str, data: bytes, resource: Mapping[str, Any],
                    preconditions: Preconditions) -> dict[str, Any]:
        """Store a whole object from memory (media and multipart uploads), atomically."""
        with self.staged_file() as staged:
            staged.write_bytes(data)
            return self.write_file(bucket, name, staged, resource, preconditions)

    def write_file(self, bucket: str, name: str, source: Path, resource: Mapping[str, Any],
                   preconditions: Preconditions) -> dict[str, Any]:
        """Store a whole object from a staged file, which is moved (renamed) into place."""
        path, fields = self._prepare_write(bucket, name, resource, preconditions)
        _verify_checksums(resource, _checksums_of_file(source), bucket, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        if preconditions.if_generation_match == "0":  # create only: link fails if it exists
            try:
                os.link(source, path)
            except FileExistsError:
                preconditions.check(self.get_object(bucket, name)["generation"])
            source.unlink()
        else:
            os.replace(source, path)
        return self._finish_write(bucket, name, path, fields)

    def copy_object(self, source_bucket: str, source_name: str, bucket: str, name: str,
                    overrides: Mapping[str, Any], preconditions: Preconditions,
                    source_generation: str | None = None) -> dict[str, Any]:
        """objects.copy/rewrite: the source's content and metadata, `overrides` applied."""
        source = self.get_object(source_bucket, source_name, source_generation)
        resource = {key: source[key] for key in WRITABLE if key in source}
        resource.update({key: value for key, value in overrides.items() if key in WRITABLE})
        with self.staged_file() as staged:
            shutil.copyfile(self.object_path(source_bucket, source_name), staged)
            return self.write_file(bucket, name, staged, {**overrides, **resource},
                                   preconditions)

    @contextlib.contextmanager
    def staged_file(self) -> Iterator[Path]:
        """A temporary file in the staging folder (same file system as the root), removed after."""
        self.staging.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.staging, prefix="object-")
        os.close(handle)
        try:
            yield Path(temporary)
        finally:
            Path(temporary).unlink(missing_ok=True)

    # Internals ----------------------------------------------------------------------------
    def _bucket_folder(self, bucket: str) -> Path:
        folder = self.root / check_bucket_name(bucket)
        if folder.is_symlink() or not folder.is_dir():
            raise NotFound(f"The specified bucket does not exist: {bucket}", reason="notFound")
        return folder

    def _prepare_write(self, bucket: str, name: str, resource: Mapping[str, Any],
                       preconditions: Preconditions) -> tuple[Path, dict[str, Any]]:
        unknown = sorted(set(resource) - set(WRITABLE) - set(_CHECKED) - {"name", "bucket"})
        if unknown:
            raise InvalidArgument(f"object fields {', '.join(unknown)} are not supported by "
                                  f"local storage; it keeps {', '.join(WRITABLE)}",
                                  reason="invalid")
        metadata = resource.get("metadata") or {}
        if not isinstance(metadata, dict) or not all(
                isinstance(value, str) for value in metadata.values()):
            raise InvalidArgument("metadata must map names to strings", reason="invalid")
        path = self.object_path(bucket, name)
        try:
            generation = str(path.stat().st_mtime_ns) if path.is_file() else None
        except NotADirectoryError:
            generation = None
        preconditions.check(generation)
        if path.is_dir():
            raise Conflict(f"cannot write object {bucket}/{name}: objects exist below "
                           f"{name}/ and local storage cannot hold both", reason="conflict")
        for parent in path.relative_to(self.root / bucket).parents:
            if parent != Path(".") and (self.root / bucket / parent).is_file():
                raise Conflict(f"cannot write object {bucket}/{name}: {bucket}/{parent} is an "
                               "object and local storage cannot hold both", reason="conflict")
        fields = {key: resource[key] for key in WRITABLE if resource.get(key)}
        return path, fields

    def _finish_write(self, bucket: str, name: str, path: Path,
                      fields: dict[str, Any]) -> dict[str, Any]:
        stat = path.stat()
        record = {"stamp": [stat.st_size, stat.st_mtime_ns], "fields": fields,
                  "checksums": _checksums_of_file(path)}
        write_atomic(self._metadata_path(bucket, name), json.dumps(record))
        return self.get_object(bucket, name)

    def _metadata_path(self, bucket: str, name: str) -> Path:
        return self.metadata_root / bucket / (name + ".json")

    def _metadata(self, bucket: str, name: str, path: Path, stat: os.stat_result) -> dict:
        """Stored fields and checksums, recomputed when the file changed behind our back."""
        stamp = [stat.st_size, stat.st_mtime_ns]
        record_path = self._metadata_path(bucket, name)
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError):
            record = {}
        if record.get("stamp") != stamp:
            record = {"stamp": stamp, "fields": {}, "checksums": _checksums_of_file(path)}
            with contextlib.suppress(OSError):
                write_atomic(record_path, json.dumps(record))
        return {**record["fields"], **record["checksums"]}

    def _names(self, bucket: str, prefix: str) -> Iterator[str]:
        """Object names under `prefix` (unordered), walking only the folders that can match."""
        folder = self.root / bucket
        start = prefix.rpartition("/")[0]
        base = folder / start if start else folder
        if start and (any(part in ("", ".", "..") for part in start.split("/"))
                      or base.is_symlink() or not base.is_dir()):
            return
        for current, folders, files in os.walk(base):
            relative = os.path.relpath(current, folder)
            above = "" if relative == "." else relative + "/"
            folders[:] = [name for name in folders if (above + name + "/").startswith(prefix)
                          or prefix.startswith(above + name + "/")]
            for file in files:
                name = above + file
                path = os.path.join(current, file)
                if (name.startswith(prefix) and not _TEMPORARY.fullmatch(file)
                        and (not os.path.islink(path) or resolves_inside(path, self.root))):
                    yield name

    @staticmethod
    def _entries(folder: Path) -> list[os.DirEntry]:
        try:
            with os.scandir(folder) as entries:
                return list(entries)
        except FileNotFoundError:
            return []


def _page(items: list, prefixes: list, last: str) -> dict[str, Any]:
    page: dict[str, Any] = {"kind": "storage#objects"}
    if items:
        page["items"] = items
    if prefixes:
        page["prefixes"] = prefixes
    if last:
        page["nextPageToken"] = base64.urlsafe_b64encode(last.encode()).decode()
    return page


def _decode_token(token: str) -> str:
    if not token:
        return ""
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument(f"Invalid pageToken {token!r}; pass the nextPageToken of the "
                              "previous page", reason="invalid") from None


def _no_such_object(bucket: str, name: str) -> NotFound:
    return NotFound(f"No such object: {bucket}/{name}", reason="notFound")


def _prune_empty_folders(folder: Path, bucket_folder: Path) -> None:
    """Remove folders emptied by a delete, as objects below a prefix vanish on GCS."""
    while folder != bucket_folder and bucket_folder in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def _checksums_of_file(path: Path) -> dict[str, str]:
    md5, crc = hashlib.md5(), google_crc32c.Checksum()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            md5.update(block)
            crc.update(block)
    return {"md5Hash": base64.b64encode(md5.digest()).decode(),
            "crc32c": base64.b64encode(crc.digest()).decode()}


def _verify_checksums(resource: Mapping[str, Any], actual: dict[str, str], bucket: str,
                      name: str) -> None:
    for key in _CHECKED:
        if resource.get(key) and resource[key] != actual[key]:
            raise InvalidArgument(f"Provided {key} \"{resource[key]}\" doesn't match calculated "
                                  f"{key} \"{actual[key]}\" for {bucket}/{name}",
                                  reason="invalid")


def _quote(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")


def _rfc3339(nanoseconds: int) -> str:
    moment = datetime.fromtimestamp(nanoseconds / 1e9, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
