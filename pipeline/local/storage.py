"""GCS in local mode: `gcs_root` is a folder, or gs:// through fsspec/gcsfs; and the one check
that a location a request names lies in the project's own storage.

With `STORAGE_EMULATOR_HOST` set (e.g. gcp-storage-emulator), gcsfs talks to the emulator;
its gRPC bucket-type probe does not work there (it stalls or warns), so it is turned off.
"""
from __future__ import annotations

import os
from pathlib import Path

from pipeline.local.errors import InvalidArgument
from pipeline.local.home import storage_root

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
GRPC_PROBE_ENV = "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"


def configure_storage_emulator() -> None:
    """Make gcsfs usable against a storage emulator for this process and its children."""
    if os.environ.get(EMULATOR_ENV):
        os.environ.setdefault(GRPC_PROBE_ENV, "false")


def resolve_in_storage(uri: str, what: str, root: Path | None = None) -> str:
    """Where `uri` really is, provided that is inside the project's own storage.

    The one check behind every location a request names (a version's `deploymentUri`, a
    training job's `jobDir`, a run's `gcs_root`): a local path must lie, after `..` and every
    symlink are resolved (os.path.realpath), inside the local storage root. A gs:// URI is the
    configured storage emulator's (`STORAGE_EMULATOR_HOST`, whose buckets are the project's
    storage) or, with none configured, the local storage itself: gs://BUCKET/PATH is
    `<root>/BUCKET/PATH`, as the local GCS JSON API serves it to a step, and is checked like
    a local path. Anything else is refused before anything is read, written or created.

    Args:
        uri: an absolute local path or a gs:// URI.
        what: how the message names the value, e.g. "version v1: deploymentUri".
        root: the local storage root (default: `storage_root()` of the local home).

    Returns:
        The real local path (symlinks and `..` resolved), or the emulator's gs:// URI as given.

    Raises:
        InvalidArgument: one line naming the allowed root.
    """
    root = Path(root) if root is not None else storage_root()
    emulator = os.environ.get(EMULATOR_ENV, "")
    allowed = f"a folder under {root} (the local storage root) or " + (
        f"a gs:// URI of the storage emulator at {emulator}" if emulator
        else "gs://BUCKET/FOLDER (its folder BUCKET)")
    if not isinstance(uri, str) or not uri or "\0" in uri:
        raise InvalidArgument(f"{what} {uri!r} is not a location; use {allowed}")
    if uri.startswith("gs://"):
        bucket, _, path = uri[len("gs://"):].partition("/")
        if not bucket or {".", ".."} & set(path.split("/")):
            raise InvalidArgument(f"{what} {uri} is not a plain gs://bucket/folder URI (no "
                                  "'.' or '..' segments); use gs://BUCKET/FOLDER")
        if emulator:
            return uri
        uri = local_gcs_path(uri, root)
    if "://" in uri or not os.path.isabs(uri):
        kind = "a URL" if "://" in uri else "relative"
        raise InvalidArgument(f"{what} {uri!r} is {kind}; use {allowed}")
    real = os.path.realpath(uri)
    if not resolves_inside(real, root):
        resolved = "" if real == os.path.normpath(uri) else f" (it resolves to {real})"
        raise InvalidArgument(f"{what} {uri} is outside the project's storage{resolved}; "
                              f"use {allowed}")
    return real


def resolves_inside(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> bool:
    """Whether `path`, after `..` and every symlink, lies in `root` (itself resolved too): THE
    check that a file is in the project's own storage or home."""
    real_root = os.path.realpath(root)
    return os.path.commonpath([os.path.realpath(path), real_root]) == real_root


def local_gcs_path(uri: str, root: Path | None = None) -> str:
    """Where a gs:// URI's object lives when no storage emulator is configured: gs://BUCKET/PATH
    is `<root>/BUCKET/PATH`, as the local GCS JSON API serves it to a step. Any other value,
    or any URI while an emulator is configured, is returned as given."""
    if not uri.startswith("gs://") or os.environ.get(EMULATOR_ENV):
        return uri
    return str((Path(root) if root is not None else storage_root()) / uri[len("gs://"):])


def ensure_local_bucket(uri: str, root: Path) -> None:
    """Create the local bucket a run's gs:// `gcs_root` names, as the lab's setup creates its
    bucket (`gsutil mb`) before a run; a no-op for local paths and a configured emulator.

    Raises:
        InvalidArgument: not a valid bucket name.
    """
    if not uri.startswith("gs://") or os.environ.get(EMULATOR_ENV):
        return
    from pipeline.local.gcs_store import check_bucket_name

    bucket = check_bucket_name(uri[len("gs://"):].partition("/")[0])
    if not (root / bucket).is_dir():
        (root / bucket).mkdir(parents=True)
        print(f"created the local bucket gs://{bucket} ({root / bucket})", flush=True)
