"""Pipeline packages as `dsl-compile` writes them and the KFP API server accepts them.

One reader for `covertype run --local --package` and the local KFP API's uploads: a YAML file
(by its name, `.yaml` or `.yml`), or a zip or gzipped tar archive (by its content) holding the
workflow YAML, with the KFP v1 server's rules: in a zip, `pipeline.yaml`, else the first file;
in a tarball, the first entry; either must be a YAML file. Sizes are bounded, so an archive
cannot expand without limit.
"""
from __future__ import annotations

import gzip
import io
import tarfile
import zipfile
import zlib
from pathlib import Path

from pipeline.errors import one_line

MAX_PACKAGE_BYTES = 32 * 1024 * 1024  # the KFP API server's upload limit, also for the YAML
PIPELINE_YAML = "pipeline.yaml"
_ZIP_MAGIC = b"PK\x03\x04"
_GZIP_MAGIC = b"\x1f\x8b"
_FORMATS = "a .yaml file, or a .zip or .tar.gz holding pipeline.yaml, as dsl-compile writes them"


class PackageError(ValueError):
    """A file that is not a pipeline package; the message names the file and the fix."""


def load_package(path: str | Path) -> str:
    """The workflow YAML text of the package file at `path`."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise PackageError(f"{path}: no such pipeline package; run `make compile`") from None
    if size > MAX_PACKAGE_BYTES:
        raise PackageError(f"{path}: {size} bytes is more than a package may hold "
                           f"({MAX_PACKAGE_BYTES}); is it a pipeline package?")
    return read_package(path.name, path.read_bytes(), label=str(path))


def read_package(name: str, data: bytes, label: str | None = None) -> str:
    """The workflow YAML text of a package named `name` (a file name) with content `data`.

    Raises:
        PackageError: not YAML by name, not a zip or tar.gz by content, an archive without
            its YAML, or more than MAX_PACKAGE_BYTES.
    """
    label = label or name
    if len(data) > MAX_PACKAGE_BYTES:
        raise PackageError(f"{label}: more than {MAX_PACKAGE_BYTES} bytes; is it a pipeline "
                           "package?")
    if _is_yaml_name(name):
        content = data
    elif data.startswith(_ZIP_MAGIC):
        content = _from_zip(data, label)
    elif data.startswith(_GZIP_MAGIC):
        content = _from_tarball(data, label)
    else:
        raise PackageError(f"{label}: not a pipeline package; expected {_FORMATS}")
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as error:
        raise PackageError(f"{label}: the workflow YAML is not UTF-8 text ({one_line(error)}); "
                           f"expected {_FORMATS}") from None


def _is_yaml_name(name: str) -> bool:
    return name.lower().endswith((".yaml", ".yml"))


def _from_zip(data: bytes, label: str) -> bytes:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = [item for item in archive.infolist() if not item.is_dir()]
            if not members:
                raise PackageError(f"{label}: the zip archive is empty; expected {_FORMATS}")
            chosen = next((item for item in members if item.filename == PIPELINE_YAML),
                          members[0])
            if not _is_yaml_name(chosen.filename):
                raise PackageError(f"{label}: the zip archive holds no {PIPELINE_YAML} "
                                   f"(first file: {chosen.filename}); expected {_FORMATS}")
            if chosen.file_size > MAX_PACKAGE_BYTES:
                raise PackageError(f"{label}: {chosen.filename} expands to more than "
                                   f"{MAX_PACKAGE_BYTES} bytes")
            with archive.open(chosen) as stream:
                return _read_bounded(stream, label)
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as error:
        raise PackageError(f"{label}: not a readable zip archive ({one_line(error)}); "
                           f"expected {_FORMATS}") from None


def _from_tarball(data: bytes, label: str) -> bytes:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            first = archive.next()
            if first is None:
                raise PackageError(f"{label}: the tar.gz archive is empty; expected {_FORMATS}")
            if not first.isfile() or not _is_yaml_name(first.name):
                raise PackageError(f"{label}: the tar.gz archive does not start with a YAML "
                                   f"file (first entry: {first.name}); expected {_FORMATS}")
            stream = archive.extractfile(first)
            assert stream is not None  # a regular file
            return _read_bounded(stream, label)
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, OSError, zlib.error) as error:
        raise PackageError(f"{label}: not a readable tar.gz archive ({one_line(error)}); "
                           f"expected {_FORMATS}") from None


def _read_bounded(stream: io.BufferedIOBase, label: str) -> bytes:
    content = stream.read(MAX_PACKAGE_BYTES + 1)
    if len(content) > MAX_PACKAGE_BYTES:
        raise PackageError(f"{label}: the archived YAML expands to more than "
                           f"{MAX_PACKAGE_BYTES} bytes")
    return content

