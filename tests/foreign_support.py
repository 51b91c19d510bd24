"""Helpers of the foreign-pipeline tests: `dsl-compile` of a DSL that loads its components by
URL (from `covertype serve`, tests/serve_process.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
FOREIGN = Path(__file__).parent / "foreign"
# What a compile of this project's DSL reads from the environment; a foreign DSL gets its own.
_COMPILE_ENV = ("BASE_IMAGE", "TRAINER_IMAGE", "PROJECT_ID", "USE_KFP_SA", "PLATFORM",
                "COMPONENT_URL_SEARCH_PREFIX", "RUNTIME_VERSION", "PYTHON_VERSION",
                "SERVING_IMAGE")


def dsl_compile(dsl: Path, output: Path, **env: str) -> subprocess.CompletedProcess:
    """`dsl-compile --py DSL --output OUTPUT` with the given compile-time environment only."""
    environ = {key: value for key, value in os.environ.items() if key not in _COMPILE_ENV}
    return subprocess.run([str(BIN / "dsl-compile"), "--py", str(dsl), "--output", str(output)],
                          env={**environ, **env}, capture_output=True, text=True, timeout=300)
