"""The service objects behind one server app, made on first use over `app.state.home`.

Route modules of the emulator and the run browser reach the same training core, API surfaces
and registries through here, so neither package imports the other. One training core runs the
jobs of both surfaces (ml v1 and aiplatform v1); one registry holds the models of both.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from pipeline.local.home import registry_dir
from pipeline.local.registry import Registry
from pipeline.local.training import TrainingService
from pipeline.local.training_core import TrainingEngine
from pipeline.local.vertex_endpoints import VertexEndpoints
from pipeline.local.vertex_registry import VertexRegistry
from pipeline.local.vertex_training import VertexTraining

_lock = threading.RLock()  # re-entrant: a service is made over the ones it needs
_Service = TypeVar("_Service")


def _made_once(app: Any, name: str, make: Callable[[], _Service]) -> _Service:
    """`app.state.<name>`, made by `make` on first use."""
    with _lock:
        found = getattr(app.state, name, None)
        if found is None:
            found = make()
            setattr(app.state, name, found)
    return found


def training_engine(app: Any) -> TrainingEngine:
    """The app's training core, created on first use and closed at shutdown; its processes
    fork from `app.state.warm_executor` when the app has one (a local run's)."""
    def make() -> TrainingEngine:
        engine = TrainingEngine(app.state.home, server_url=getattr(app.state, "url", None),
                                executor=getattr(app.state, "warm_executor", None),
                                images=getattr(app.state, "images", None))
        app.router.on_shutdown.append(engine.close)
        return engine

    return _made_once(app, "training_engine", make)


def training_service(app: Any) -> TrainingService:
    """The ml v1 projects.jobs surface over the app's training core."""
    return _made_once(app, "training", lambda: TrainingService(training_engine(app)))


def vertex_training(app: Any) -> VertexTraining:
    """The aiplatform v1 customJobs/hyperparameterTuningJobs surface over the same core."""
    return _made_once(app, "vertex_training", lambda: VertexTraining(training_engine(app)))


def registry(app: Any) -> Registry:
    """The app's model registry over its home folder (ml v1 models and versions)."""
    return _made_once(app, "registry", lambda: Registry(registry_dir(app.state.home)))


def vertex_registry(app: Any) -> VertexRegistry:
    """The aiplatform v1 models, endpoints and operations over the same registry."""
    return _made_once(app, "vertex_registry", lambda: VertexRegistry(registry(app)))


def vertex_endpoints(app: Any) -> VertexEndpoints:
    """The aiplatform v1 endpoints over the app's Vertex AI models."""
    return _made_once(app, "vertex_endpoints", lambda: VertexEndpoints(vertex_registry(app)))
