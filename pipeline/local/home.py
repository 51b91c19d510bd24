"""The local home folder: warehouse, storage, training jobs, model registry and run records.

Default `<checkout>/.covertype`; `COVERTYPE_HOME` overrides it.
"""
from __future__ import annotations

import os
from pathlib import Path

from pipeline.parameters import LOCAL_PROJECT_ID  # noqa: F401 - the local runs' project

HOME_ENV = "COVERTYPE_HOME"


def local_home() -> Path:
    """The local home folder, created on first use."""
    home = Path(os.environ.get(HOME_ENV) or Path(__file__).resolve().parents[2] / ".covertype")
    home.mkdir(parents=True, exist_ok=True)
    return home


def warehouse_path(home: Path | None = None) -> Path:
    """The DuckDB file standing in for BigQuery."""
    return (home or local_home()) / "warehouse.duckdb"


def storage_root(home: Path | None = None) -> Path:
    """The folder standing in for GCS when `gcs_root` is a local path."""
    return (home or local_home()) / "gcs"


def jobs_dir(home: Path | None = None) -> Path:
    """Records of the local training core's jobs (ml v1 and Vertex AI), one folder per job."""
    return (home or local_home()) / "jobs"


def registry_dir(home: Path | None = None) -> Path:
    """The local model registry (ml v1 models and versions, Vertex AI models and endpoints)."""
    return (home or local_home()) / "registry"


def runs_dir(home: Path | None = None) -> Path:
    """Run records, one folder per pipeline run."""
    return (home or local_home()) / "runs"


def cache_dir(home: Path | None = None) -> Path:
    """The local runner's step cache."""
    return (home or local_home()) / "cache"
