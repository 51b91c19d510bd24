"""Side virtualenvs for the baselines whose pins cannot live beside the project's (bench/.venv-*).

MLflow, MLServer and KFP v2 each get their own venv, made on first use with uv (the project
venv's, see `make setup`) or pip when uv is missing, and remade when their pins change. The
pins are written to `.installed` inside the venv; nothing of it touches the project's venv.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench import REPO

BENCH = REPO / "bench"
SHARED_PINS = ("scikit-learn", "pandas", "numpy")  # a pickled model needs the same versions


def project_pins(names: tuple[str, ...] = SHARED_PINS) -> list[str]:
    """The project's `name==version` lines of requirements.txt for `names`."""
    lines = (REPO / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.split("==")[0].strip() in names]


def ensure_venv(name: str, pins: list[str], progress=None) -> Path:
    """bench/.venv-<name> holding exactly `pins` (and what they need); its folder.

    Raises:
        RuntimeError: the install failed (its last lines in the message).
    """
    venv = BENCH / f".venv-{name}"
    marker = venv / ".installed"
    wanted = "\n".join(sorted(pins)) + "\n"
    if marker.exists() and marker.read_text() == wanted and (venv / "bin" / "python").exists():
        return venv
    say = progress or (lambda message: print(message, file=sys.stderr, flush=True))
    shutil.rmtree(venv, ignore_errors=True)  # pins changed, or an interrupted earlier attempt
    start = time.perf_counter()
    uv = _uv()
    say(f"creating {venv.relative_to(REPO)} with {'uv' if uv else 'pip'}: {' '.join(pins)}")
    if uv:
        commands = [[*uv, "venv", "--quiet", "--python", sys.executable, str(venv)],
                    [*uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"),
                     *pins]]
    else:
        commands = [[sys.executable, "-m", "venv", str(venv)],
                    [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                     "--disable-pip-version-check", *pins]]
    for command in commands:
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode:
            tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-4:])
            raise RuntimeError(f"installing {' '.join(pins)} into {venv.name} failed: {tail}")
    marker.write_text(wanted)
    say(f"{venv.relative_to(REPO)} ready in {time.perf_counter() - start:.0f} s")
    return venv


def _uv() -> list[str] | None:
    """`python -m uv` of the project venv, when installed."""
    probe = subprocess.run([sys.executable, "-m", "uv", "--version"], capture_output=True)
    return [sys.executable, "-m", "uv"] if probe.returncode == 0 else None
