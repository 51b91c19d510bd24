"""The compiled Argo Workflow, read as data: templates, parameters, workflow-level settings.

Only what KFP v1's compiler emits is supported; `Workflow.load` checks the whole workflow
(`support.check_supported`) and refuses anything else with a one-line error before a step
runs, rather than run it differently from Argo.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.local.argo import WorkflowError
from pipeline.local.package import PackageError, load_package
from pipeline.local.support import check_supported

# libyaml's loader when present: the pure-Python one takes ~0.3 s on a compiled package.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

__all__ = ["Workflow", "WorkflowError"]


@dataclass(frozen=True)
class Workflow:
    """A compiled pipeline package."""

    name: str
    entrypoint: str
    templates: dict[str, dict[str, Any]]
    parameters: dict[str, str | None]  # name -> default (None: required)
    source: dict[str, Any]

    @classmethod
    def load(cls, path: str | Path) -> Workflow:
        """Read a package written by `dsl-compile` (.yaml, .zip or .tar.gz); refuse what
        cannot run here."""
        try:
            document = yaml.load(load_package(path), Loader=_SAFE_LOADER)
        except PackageError as error:
            raise WorkflowError(str(error)) from None
        except yaml.YAMLError as error:
            raise WorkflowError(f"{path}: not YAML ({error}); recompile it") from None
        if not isinstance(document, dict) or document.get("kind") != "Workflow":
            raise WorkflowError(f"{path}: not an Argo Workflow; compile it with `make compile`")
        check_supported(document)
        spec = document["spec"]
        parameters = {item["name"]: item.get("value") for item in
                      spec.get("arguments", {}).get("parameters", [])}
        return cls(
            name=document["metadata"].get("generateName", "pipeline-").rstrip("-"),
            entrypoint=spec["entrypoint"],
            templates={template["name"]: template for template in spec["templates"]},
            parameters=parameters,
            source=document,
        )

    @property
    def spec(self) -> dict[str, Any]:
        return self.source["spec"]

    @property
    def on_exit(self) -> str | None:
        """The exit handler's template (`dsl.ExitHandler`), run after the entrypoint."""
        return self.spec.get("onExit")

    @property
    def parallelism(self) -> int:
        """At most this many pods at once across the workflow (0: no limit)."""
        return int(self.spec.get("parallelism") or 0)

    @property
    def deadline_s(self) -> float | None:
        """The workflow's activeDeadlineSeconds (`pipeline_conf.set_timeout`), if any."""
        value = self.spec.get("activeDeadlineSeconds")
        return float(value) if value else None

    def resolve_parameters(self, overrides: Mapping[str, str]) -> dict[str, str]:
        """Defaults overlaid with the user's values; unknown or missing names are errors."""
        unknown = sorted(set(overrides) - set(self.parameters))
        if unknown:
            raise WorkflowError(f"unknown pipeline parameter {unknown[0]!r}; "
                                f"known: {', '.join(self.parameters) or 'none'}")
        values = {name: overrides.get(name, default) for name, default in self.parameters.items()}
        missing = [name for name, value in values.items() if value is None]
        if missing:
            raise WorkflowError(f"pipeline parameter {missing[0]!r} has no default; "
                                f"pass it with --param {missing[0]}=VALUE")
        return {name: str(value) for name, value in values.items()}

    def dag_tasks(self, template_name: str) -> list[dict[str, Any]]:
        """The tasks of a DAG template."""
        return self.templates[template_name]["dag"]["tasks"]

    def is_dag(self, template_name: str) -> bool:
        return "dag" in self.templates[template_name]
