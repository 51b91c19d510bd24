"""`python -u -m pipeline.vertex.launcher`: the entrypoint of the Vertex AI component specs.

Command line (pipeline/components/vertex/*/component.yaml):
`--ui_metadata_path PATH <action> --<input> VALUE ... --<output>_path PATH ...`.
The action's function signature is the interface, as with kfp_component.launcher: every
`--<input>` is one of its parameters (passed as the text KFP gives), every output in the action
module's OUTPUTS needs a `--<output>_path`, where its value is written (atomically) when the
action succeeds, with a markdown table of the outputs as the KFP UI metadata.
"""
from __future__ import annotations

import importlib
import inspect
import json
import sys
from types import ModuleType

from pipeline.atomic import write_atomic
from pipeline.errors import one_line

ACTIONS = {"hyperparameter_tuning_job": "pipeline.vertex.tune",
           "custom_job": "pipeline.vertex.train",
           "deploy_model": "pipeline.vertex.deploy"}
USAGE = ("usage: python -m pipeline.vertex.launcher --ui_metadata_path PATH ACTION "
         "--input VALUE ... --OUTPUT_path PATH ...")


class LaunchError(ValueError):
    """The command line does not match an action's interface."""


def parse_command_line(argv: list[str]) -> tuple[str, ModuleType, dict[str, str],
                                                  dict[str, str]]:
    """Split argv into (ui metadata path, action module, inputs, output paths)."""
    if len(argv) < 3 or argv[0] != "--ui_metadata_path":
        raise LaunchError(USAGE)
    ui_metadata_path, action, rest = argv[1], argv[2], argv[3:]
    if action not in ACTIONS:
        raise LaunchError(f"unknown action {action!r}; use one of {', '.join(ACTIONS)}")
    if len(rest) % 2 or any(not flag.startswith("--") for flag in rest[::2]):
        raise LaunchError(f"inputs must come as --name value pairs; {USAGE}")
    module = importlib.import_module(ACTIONS[action])
    parameters = inspect.signature(getattr(module, action)).parameters
    outputs = {f"{name}_path": name for name in module.OUTPUTS}
    given: dict[str, str] = {}
    output_paths: dict[str, str] = {}
    for flag, value in zip(rest[::2], rest[1::2], strict=True):
        name = flag[2:]
        if name in given or outputs.get(name) in output_paths:
            raise LaunchError(f"--{name} is given twice")
        if name in outputs:
            output_paths[outputs[name]] = value
        elif name in parameters:
            given[name] = value
        else:
            raise LaunchError(f"{action} has no input --{name}; inputs: "
                              f"{', '.join(parameters)}; outputs: {', '.join(outputs)}")
    missing = [name for name, parameter in parameters.items()
               if parameter.default is inspect.Parameter.empty and name not in given]
    missing += [f"{name}_path" for name in module.OUTPUTS if name not in output_paths]
    if missing:
        raise LaunchError(f"{action} needs --{missing[0]}")
    return ui_metadata_path, module, given, output_paths


def launch(argv: list[str]) -> dict[str, str]:
    """Run one action and write its outputs; return them."""
    ui_metadata_path, module, given, output_paths = parse_command_line(argv)
    action = argv[2]
    outputs = getattr(module, action)(**given)
    for name, path in output_paths.items():
        write_atomic(path, str(outputs[name]))
    rows = "".join(f"| {name} | {outputs[name]} |\n" for name in module.OUTPUTS)
    source = f"# Vertex AI {action}\n| output | value |\n|---|---|\n{rows}"
    write_atomic(ui_metadata_path, json.dumps(
        {"outputs": [{"type": "markdown", "storage": "inline", "source": source}]}))
    return outputs


def main(argv: list[str] | None = None) -> int:
    """Console entry: one-line errors (exit 1) for bad input and failed jobs."""
    from pipeline.vertex.client import VertexError

    try:
        outputs = launch(sys.argv[1:] if argv is None else argv)
    except (ValueError, VertexError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 1
    print(json.dumps(outputs, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
