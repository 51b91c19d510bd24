"""What the `covertype` command loads: `--help` nothing heavy, and a local run of a pipeline
without GCP components neither the emulator, the trainer, the warehouse nor the data libraries.

Timings belong to `make bench` (the `chain` row); these tests check what is imported, which
does not depend on how busy the machine is.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = {"numpy", "pandas", "sklearn", "duckdb", "sqlglot", "pyarrow", "fastapi", "uvicorn",
         "starlette", "optuna", "onnxruntime", "skl2onnx", "googleapiclient", "fsspec", "kfp"}


def loaded_by(code: str, env: dict[str, str] | None = None) -> tuple[set[str], str]:
    """Top-level packages a fresh interpreter holds after `code`, and its stdout before."""
    script = (f"import json, sys\n{code}\n"
              "print(json.dumps(sorted({name.partition('.')[0] for name in sys.modules})))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=REPO, env={**os.environ, **(env or {})}, timeout=300)
    assert result.returncode == 0, result.stderr
    *printed, modules = result.stdout.splitlines()
    return set(json.loads(modules)), "\n".join(printed)


def test_help_loads_no_library_of_the_local_mode():
    loaded, printed = loaded_by("from pipeline.cli import main\n"
                                "try:\n    main(['--help'])\nexcept SystemExit:\n    pass")

    assert "usage: covertype" in printed
    assert loaded & HEAVY == set()
    assert "rich" not in loaded


@pytest.fixture(scope="module")
def chain_package(tmp_path_factory) -> Path:
    """bench/chain_kfp1.py (ten lightweight steps, standard library only), compiled."""
    output = tmp_path_factory.mktemp("chain") / "chain.yaml"
    result = subprocess.run([str(Path(sys.executable).with_name("dsl-compile")), "--py",
                             str(REPO / "bench" / "chain_kfp1.py"), "--output", str(output)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return output


def test_a_run_without_gcp_components_loads_neither_emulator_nor_data(chain_package,
                                                                      tmp_path):
    code = ("from pathlib import Path\n"
            "from pipeline.local.run_local import run_local\n"
            f"record = run_local(Path({str(chain_package)!r}), {{}}, 1000)\n"
            "print(record.status, sorted({s.process for s in record.steps.values()}))")

    loaded, printed = loaded_by(code, {"COVERTYPE_HOME": str(tmp_path / "home")})

    assert printed == "Succeeded ['forked:python']"
    assert loaded & HEAVY == set()
    assert not (tmp_path / "home" / "warehouse.duckdb").exists()
