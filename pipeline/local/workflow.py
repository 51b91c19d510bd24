"""The compiled Argo Workflow, read as data: templates, DAG tasks, parameters, placeholders.

Only what KFP v1's compiler emits is supported; anything else is refused with a clear error
rather than run differently from Argo.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.local.package import PackageError, load_package

# Argo substitutes these prefixes; any other `{{...}}` text (e.g. inside Python code) is left as is.
_PLACEHOLDER = re.compile(r"\{\{\s*((?:inputs|tasks|workflow|pod)\.[^{}\s]+)\s*\}\}")
# libyaml's loader when present: the pure-Python one takes ~0.3 s on a compiled package.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_CONDITION = re.compile(r"^\s*(.+?)\s*(==|!=|>=|<=|>|<)\s*(.+?)\s*$")


class WorkflowError(ValueError):
    """The package is not a workflow this runner can execute faithfully."""


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
        """Read a package written by `dsl-compile` (.yaml, .zip or .tar.gz)."""
        try:
            document = yaml.load(load_package(path), Loader=_SAFE_LOADER)
        except PackageError as error:
            raise WorkflowError(str(error)) from None
        except yaml.YAMLError as error:
            raise WorkflowError(f"{path}: not YAML ({error}); recompile it") from None
        if not isinstance(document, dict) or document.get("kind") != "Workflow":
            raise WorkflowError(f"{path}: not an Argo Workflow; compile it with `make compile`")
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

    def resolve_parameters(self, overrides: Mapping[str, str]) -> dict[str, str]:
        """Defaults overlaid with the user's values; unknown or missing names are errors."""
        unknown = sorted(set(overrides) - set(self.parameters))
        if unknown:
            raise WorkflowError(f"unknown pipeline parameter {unknown[0]!r}; "
                                f"known: {', '.join(self.parameters)}")
        values = {name: overrides.get(name, default) for name, default in self.parameters.items()}
        missing = [name for name, value in values.items() if value is None]
        if missing:
            raise WorkflowError(f"pipeline parameter {missing[0]!r} has no default; "
                                f"pass it with --param {missing[0]}=VALUE")
        return {name: str(value) for name, value in values.items()}

    def dag_tasks(self, template_name: str) -> list[dict[str, Any]]:
        template = self.templates[template_name]
        if "dag" not in template:
            raise WorkflowError(f"template {template_name!r} is not a DAG; only KFP v1 DAGs run")
        return template["dag"]["tasks"]

    def walk_tasks(self, template_name: str | None = None, parent: str = ""):
        """Yield (task, parent DAG task name) for every task in dependency order.

        A sub-DAG's tasks follow their parent task.
        """
        for task in _topological(self.dag_tasks(template_name or self.entrypoint)):
            yield task, parent
            if "dag" in self.templates[task["template"]]:
                yield from self.walk_tasks(task["template"], task["name"])


def _topological(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tasks ordered so each follows its dependencies (ties keep the compiled order)."""
    ordered: list[dict[str, Any]] = []
    placed: set[str] = set()
    remaining = list(tasks)
    while remaining:
        ready = [task for task in remaining
                 if all(dep in placed for dep in task.get("dependencies", []))]
        if not ready:
            raise WorkflowError(f"dependency cycle among {[task['name'] for task in remaining]}")
        ordered.extend(ready)
        placed.update(task["name"] for task in ready)
        remaining = [task for task in remaining if task["name"] not in placed]
    return ordered


def substitute(text: str, scope: Mapping[str, str]) -> str:
    """Replace Argo placeholders from `scope`; an unknown one is an error, as in Argo."""

    def replace(match: re.Match) -> str:
        key = match.group(1)
        if key not in scope:
            raise WorkflowError(f"cannot resolve {{{{{key}}}}}")
        return scope[key]

    return _PLACEHOLDER.sub(replace, text)


def evaluate_condition(expression: str) -> bool:
    """Evaluate a resolved `when` (e.g. `0.71 > 0.69`): numbers compare as numbers."""
    match = _CONDITION.match(expression)
    if not match:
        raise WorkflowError(f"unsupported when expression {expression!r}")
    left, operator, right = (part.strip().strip("'\"") for part in match.groups())
    try:
        left_value, right_value = float(left), float(right)
    except ValueError:
        left_value, right_value = left, right
    return {
        "==": left_value == right_value, "!=": left_value != right_value,
        ">": left_value > right_value, "<": left_value < right_value,
        ">=": left_value >= right_value, "<=": left_value <= right_value,
    }[operator]
