"""The service objects behind one server app, made on first use over `app.state.home`.

Route modules of the emulator and the run browser reach the same TrainingService and
Registry through here, so neither package imports the other.
"""
from __future__ import annotations

import threading
from typing import Any

from pipeline.local.home import registry_dir
from pipeline.local.registry import Registry
from pipeline.local.training import TrainingService

_lock = threading.Lock()


def training_service(app: Any) -> TrainingService:
    """The app's TrainingService, created on first use and closed at shutdown."""
    with _lock:
        service = getattr(app.state, "training", None)
        if service is None:
            service = app.state.training = TrainingService(app.state.home)
            app.router.on_shutdown.append(service.close)
    return service


def registry(app: Any) -> Registry:
    """The app's model registry over its home folder."""
    with _lock:
        found = getattr(app.state, "registry", None)
        if found is None:
            found = app.state.registry = Registry(registry_dir(app.state.home))
    return found
