"""Loaded at every Python start inside a local pipeline step (its folder leads PYTHONPATH).

It only installs an import hook, so a step that never imports a Google client pays next to
nothing. When `google.auth`, `googleapiclient.discovery` or `google.cloud.bigquery` is first
imported, the hook lets it load as usual, then calls `pipeline.local.step_clients.patch`,
which points it at the local stand-ins. Then it runs the `sitecustomize` this one shadows,
if there is one, as Python would have.
"""
import importlib.machinery
import importlib.util
import os
import sys

_PATCHED_MODULES = frozenset({"google.auth", "googleapiclient.discovery", "google.cloud.bigquery"})


class _PatchingLoader:
    """Runs the real loader, then patches the module it made."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        from pipeline.local.step_clients import patch

        patch(module)

    def __getattr__(self, name):  # get_resource_reader, is_package, ... of the real loader
        return getattr(self._loader, name)


class _PatchAfterImport:
    """Finds the patched modules through the other finders and wraps their loaders."""

    def find_spec(self, name, path, target=None):
        if name not in _PATCHED_MODULES:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _PatchingLoader(spec.loader)
                return spec
        return None


def _run_shadowed_sitecustomize():
    """Execute the next `sitecustomize` on sys.path, which this module hides."""
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


sys.meta_path.insert(0, _PatchAfterImport())
_run_shadowed_sitecustomize()
