"""The trainer image's program (`trainer_image/train.py`), found and imported in one place.

The trainer is a script in its own image context, not part of this package; local training,
the benchmarks and the tests reach it through here.
"""
from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

TRAIN_PY = Path(__file__).resolve().parents[1] / "trainer_image" / "train.py"


@functools.cache
def load_trainer() -> ModuleType:
    """Import train.py by path (writing no __pycache__ into the image's build context)."""
    spec = importlib.util.spec_from_file_location("covertype_trainer", TRAIN_PY)
    module = importlib.util.module_from_spec(spec)
    dont_write, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = dont_write
    return module
