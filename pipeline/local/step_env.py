"""What a local pipeline step sees: the one place that builds a step's environment.

A step's own program runs as a local process. So that the Google clients and tools it uses
reach the local stand-ins with no credentials and no network, its environment gets:

- the emulator switches: `AI_PLATFORM_EMULATOR_HOST` and `VERTEX_AI_EMULATOR_HOST` (this
  package's clients), `BIGQUERY_EMULATOR_HOST` (google-cloud-bigquery's endpoint switch) and
  `STORAGE_EMULATOR_HOST` (google-cloud-storage, gcsfs): the run's local server, except a
  storage emulator the user configured, which is passed through unchanged;
- `PYTHONPATH` led by `step_site/`, whose `sitecustomize` points `discovery.build` and
  `google.auth.default` at the stand-ins (`pipeline.local.step_clients`);
- `PATH` led by `step_bin/` (the `gsutil` and `gcloud storage` stand-ins), then this venv;
- `GOOGLE_CLOUD_PROJECT`: the run's `project_id` parameter, else `local`.

Nothing here touches `os.environ`: only the step's process (and its children) see it.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from pipeline.local.home import LOCAL_PROJECT_ID
from pipeline.local.storage import EMULATOR_ENV as STORAGE_EMULATOR_ENV
from pipeline.local.storage import GRPC_PROBE_ENV
from pipeline.ml_client import EMULATOR_HOST_ENV, VERTEX_EMULATOR_HOST_ENV

SITE_DIR = Path(__file__).resolve().parent / "step_site"
BIN_DIR = Path(__file__).resolve().parent / "step_bin"
BIGQUERY_EMULATOR_ENV = "BIGQUERY_EMULATOR_HOST"
PROJECT_ENV = "GOOGLE_CLOUD_PROJECT"


def step_environment(base: Mapping[str, str], emulator_url: str,
                     parameters: Mapping[str, str]) -> dict[str, str]:
    """The environment of one local step.

    Args:
        base: the runner's environment with the step's own variables applied.
        emulator_url: the run's local server, e.g. http://127.0.0.1:PORT.
        parameters: the run's pipeline parameters (for `project_id`).

    Returns:
        A new mapping; `base` is not changed.
    """
    env = dict(base)
    env.update({
        EMULATOR_HOST_ENV: emulator_url,
        VERTEX_EMULATOR_HOST_ENV: emulator_url,
        BIGQUERY_EMULATOR_ENV: emulator_url,
        STORAGE_EMULATOR_ENV: base.get(STORAGE_EMULATOR_ENV) or emulator_url,
        PROJECT_ENV: parameters.get("project_id") or LOCAL_PROJECT_ID,
        "PYTHONPATH": _prepend(str(SITE_DIR), base.get("PYTHONPATH", "")),
        "PATH": _prepend(f"{BIN_DIR}{os.pathsep}{os.path.dirname(sys.executable)}",
                         base.get("PATH", "")),
    })
    env.setdefault(GRPC_PROBE_ENV, "false")
    return env


def _prepend(first: str, rest: str) -> str:
    return first + os.pathsep + rest if rest else first
