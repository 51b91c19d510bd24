"""The service objects behind one server app, made on first use over `app.state.home`.

Route modules of the emulator and the run browser reach the same training core, API surfaces
and registries through here, so neither package imports the other. One training core runs the
jobs of both surfaces (ml v1 and aiplatform v1); one registry holds the models of both.
"""
from __future__ import annotations

import threading
from typing import Any

from pipeline.local.home import registry_dir
from pipeline.local.registry import Registry
from pipeline.local.training import TrainingService
from pipeline.local.training_core import TrainingEngine
from pipeline.local.vertex_endpoints import VertexEndpoints
from pipeline.local.vertex_registry import VertexRegistry
from pipeline.local.vertex_training import VertexTraining

_lock = threading.RLock()


def training_engine(app: Any) -> TrainingEngine:
    """The app's training core, created on first use and closed at shutdown; its processes
    fork from `app.state.warm_executor` when the app has one (a local run's)."""
    with _lock:
        engine = getattr(app.state, "training_engine", None)
        if engine is None:
            engine = app.state.training_engine = TrainingEngine(
                app.state.home, server_url=getattr(app.state, "url", None),
                executor=getattr(app.state, "warm_executor", None),
                images=getattr(app.state, "images", None))
            app.router.on_shutdown.append(engine.close)
    return engine


def training_service(app: Any) -> TrainingService:
    """The ml v1 projects.jobs surface over the app's training core."""
    with _lock:
        service = getattr(app.state, "training", None)
        if service is None:
            service = app.state.training = TrainingService(training_engine(app))
    return service


def vertex_training(app: Any) -> VertexTraining:
    """The aiplatform v1 customJobs/hyperparameterTuningJobs surface over the same core."""
    with _lock:
        service = getattr(app.state, "vertex_training", None)
        if service is None:
            service = app.state.vertex_training = VertexTraining(training_engine(app))
    return service


def registry(app: Any) -> Registry:
    """The app's model registry over its home folder (ml v1 models and versions)."""
    with _lock:
        found = getattr(app.state, "registry", None)
        if found is None:
            found = app.state.registry = Registry(registry_dir(app.state.home))
    return found


def vertex_registry(app: Any) -> VertexRegistry:
    """The aiplatform v1 models, endpoints and operations over the same registry."""
    with _lock:
        found = getattr(app.state, "vertex_registry", None)
        if found is None:
            found = app.state.vertex_registry = VertexRegistry(registry(app))
    return found


def vertex_endpoints(app: Any) -> VertexEndpoints:
    """The aiplatform v1 endpoints over the app's Vertex AI models."""
    with _lock:
        found = getattr(app.state, "vertex_endpoints", None)
        if found is None:
            found = app.state.vertex_endpoints = VertexEndpoints(vertex_registry(app))
    return found
