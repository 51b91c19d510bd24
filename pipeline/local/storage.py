"""GCS in local mode: `gcs_root` is a folder, or gs:// through fsspec/gcsfs.

With `STORAGE_EMULATOR_HOST` set (e.g. gcp-storage-emulator), gcsfs talks to the emulator;
its gRPC bucket-type probe does not work there (it stalls or warns), so it is turned off.
"""
from __future__ import annotations

import os

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
GRPC_PROBE_ENV = "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"


def configure_storage_emulator() -> None:
    """Make gcsfs usable against a storage emulator for this process and its children."""
    if os.environ.get(EMULATOR_ENV):
        os.environ.setdefault(GRPC_PROBE_ENV, "false")
