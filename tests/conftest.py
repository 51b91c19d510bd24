"""Shared fixtures: an isolated local home, the bundled data, the compiled package."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
BUNDLED_CSV = REPO / "data" / "covertype.csv.gz"
DSL_FILE = REPO / "pipeline" / "covertype_training_pipeline.py"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh COVERTYPE_HOME so no test touches the real local home."""
    folder = tmp_path / "home"
    monkeypatch.setenv("COVERTYPE_HOME", str(folder))
    return folder


def compile_dsl(output: Path, **env: str) -> subprocess.CompletedProcess:
    """Run `dsl-compile` on the DSL as `make compile` does, with extra environment."""
    import os

    environ = {key: value for key, value in os.environ.items()
               if key not in ("BASE_IMAGE", "TRAINER_IMAGE", "PROJECT_ID", "USE_KFP_SA",
                              "COMPONENT_URL_SEARCH_PREFIX", "RUNTIME_VERSION", "PYTHON_VERSION",
                              "PLATFORM", "SERVING_IMAGE")}
    environ.update(env)
    dsl_compile = Path(sys.executable).with_name("dsl-compile")
    return subprocess.run([str(dsl_compile), "--py", str(DSL_FILE), "--output", str(output)],
                          env=environ, capture_output=True, text=True)


@pytest.fixture(scope="session")
def compiled_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pipeline compiled once per session with local image names."""
    output = tmp_path_factory.mktemp("package") / "covertype_training_pipeline.yaml"
    result = compile_dsl(output)
    assert result.returncode == 0, result.stderr
    return output


@pytest.fixture(scope="session")
def compiled_vertex_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pipeline compiled once per session for PLATFORM=vertex, with local image names."""
    output = tmp_path_factory.mktemp("vertex") / "covertype_training_pipeline.yaml"
    result = compile_dsl(output, PLATFORM="vertex")
    assert result.returncode == 0, result.stderr
    return output


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """2,000 training and 500 validation rows of the bundled Covertype CSV (a training job's
    datasets in the training tests)."""
    folder = tmp_path_factory.mktemp("data")
    rows = pd.read_csv(BUNDLED_CSV, nrows=2500)
    train_csv, validation_csv = folder / "train.csv", folder / "validation.csv"
    rows.iloc[:2000].to_csv(train_csv, index=False)
    rows.iloc[2000:].to_csv(validation_csv, index=False)
    return str(train_csv), str(validation_csv)
