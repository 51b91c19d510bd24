"""`make setup`'s script refuses what it cannot do in one line, before creating anything."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SETUP = Path(__file__).resolve().parents[1] / ".ci" / "setup"


@pytest.mark.parametrize("python, installer, message", [
    ("python3.11", "conda", "setup: error: INSTALLER=conda is not uv or pip; run make setup (uv) "
                            "or make setup INSTALLER=pip"),
    ("no-such-python3.11", "uv", "setup: error: no-such-python3.11 not found; install Python "
                                 "3.11 or run make setup PYTHON=/path/to/python3.11"),
])
def test_setup_refuses_in_one_line_and_creates_nothing(tmp_path: Path, python: str,
                                                       installer: str, message: str) -> None:
    venv = tmp_path / "venv"
    result = subprocess.run([str(SETUP), python, str(venv), installer], capture_output=True,
                            text=True, cwd=SETUP.parents[1])
    assert result.returncode == 2
    assert result.stderr.strip() == message
    assert not venv.exists()
