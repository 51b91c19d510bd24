"""Local stand-in for `python -u -m kfp_component.launcher` of the ml-pipeline-gcp image.

Takes the same command line the GCP component specs give the cloud launcher:
`--ui_metadata_path P kfp_component.google.<service> <action> --input value ...`, parses each
value as the cloud launcher's fire does, runs the local action of the same name, and writes
the outputs to the files the spec's `fileOutputs` name, below `$COVERTYPE_STEP_ROOT` (the
local runner's stand-in for the container's `/`).
"""
from __future__ import annotations

import importlib
import json
import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from pipeline.atomic import write_atomic
from pipeline.launcher_values import launcher_value
from pipeline.settings import COMPONENTS_DIR

STEP_ROOT_ENV = "COVERTYPE_STEP_ROOT"


class LaunchError(ValueError):
    """The command line does not match a known component."""


@lru_cache(maxsize=1)
def _file_outputs() -> dict[tuple[str, str], dict[str, str]]:
    """(launcher module, action) -> fileOutputs, read from the component specs we keep."""
    table = {}
    for spec_path in COMPONENTS_DIR.glob("*/*/component.yaml"):
        container = yaml.safe_load(spec_path.read_text())["implementation"]["container"]
        if "fileOutputs" not in container:  # not a 0.2.5 GCP spec (the Vertex AI ones)
            continue
        module, action = (arg for arg in container["args"] if isinstance(arg, str)
                          and not arg.startswith("--"))
        table[(module, action)] = container["fileOutputs"]
    return table


def parse_command_line(argv: list[str]) -> tuple[str, str, str, dict[str, str]]:
    """Split the launcher's argv into (ui metadata path, module, action, inputs)."""
    if len(argv) < 4 or argv[0] != "--ui_metadata_path":
        raise LaunchError("expected: --ui_metadata_path PATH <module> <action> --input value ...")
    ui_metadata_path, module, action, rest = argv[1], argv[2], argv[3], argv[4:]
    if (module, action) not in _file_outputs():
        raise LaunchError(f"no local executor for {module} {action}; "
                          f"known: {sorted(' '.join(key) for key in _file_outputs())}")
    if len(rest) % 2 or any(not flag.startswith("--") for flag in rest[::2]):
        raise LaunchError(f"inputs must come as --name value pairs, got {rest}")
    return ui_metadata_path, module, action, {flag[2:]: value for flag, value in
                                              zip(rest[::2], rest[1::2], strict=True)}


def parse_inputs(inputs: dict[str, str]) -> dict[str, Any]:
    """Each input as the real launcher hands it to the action: parsed by fire
    (pipeline.launcher_values), so `True`, `None`, numbers, dicts and lists arrive as such."""
    return {name: launcher_value(value) for name, value in inputs.items()}


def launch(argv: list[str]) -> dict[str, str]:
    """Run one component action and write its outputs; return them."""
    ui_metadata_path, module, action, inputs = parse_command_line(argv)
    executor = importlib.import_module(f"pipeline.local.actions.{action}")
    outputs = getattr(executor, action)(**parse_inputs(inputs))
    root = Path(os.environ.get(STEP_ROOT_ENV, "/"))
    for name, path in _file_outputs()[(module, action)].items():
        write_atomic(root / path.lstrip("/"), str(outputs[name]))
    rows = "".join(f"| {name} | {outputs[name]} |\n" for name in _file_outputs()[(module, action)])
    source = f"# {module} {action}\n| output | value |\n|---|---|\n{rows}"
    metadata = {"outputs": [{"type": "markdown", "storage": "inline", "source": source}]}
    write_atomic(Path(ui_metadata_path), json.dumps(metadata))
    return outputs


def main() -> int:
    """Console entry: one-line errors for bad input, tracebacks only for real crashes."""
    from googleapiclient.errors import HttpError

    from pipeline.local.errors import ServiceError
    from pipeline.schema import SchemaError

    try:
        launch(sys.argv[1:])
    except (ValueError, RuntimeError, SchemaError, ServiceError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except HttpError as error:
        print(f"error: {error.resp.status} {error._get_reason()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
