"""Checks of a run's pipeline parameters, before anything runs or is written.

The local runner calls `validate` before its first step; `make run` calls it (through
`python -m pipeline.parameters`) before submitting to a cluster. Each problem is one line
naming the parameter and the fix. Identifiers are checked here, so no quote, semicolon, `..`
or slash ever reaches SQL or a path.
"""
from __future__ import annotations

import re
import sys
from collections.abc import Mapping

from pipeline import schema
from pipeline.hypertune import HypertuneSpecError, parse_spec
from pipeline.launcher_values import launcher_dict, launcher_value
from pipeline.settings import SettingsError, platform
from pipeline.vertex.study import tuning_job_fields

LOCAL_PROJECT_ID = "local"  # the project of local runs, accepted besides GCP's project ids
_GCP_PROJECT_ID = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]")
_BQ_NAME = re.compile(r"[A-Za-z0-9_]{1,1024}")
_BQ_PROJECT = re.compile(r"[a-z][a-z0-9-]{0,61}[a-z0-9]|[a-z]")
_ML_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,127}")
_LOCATION = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,62}")
# Parameters a 0.2.5 GCP component gets as one whole flag value, which its launcher parses with
# fire: `None`, `True` or `123` would reach it as no value, a boolean or a number, not as text.
_TEXT_FLAGS = ("project_id", "dataset_id", "model_id", "version_id", "region", "dataset_location")
_EXAMPLE = '{"hyperparameters": {"goal": "MAXIMIZE", "params": [...]}}'


class ParameterError(ValueError):
    """A pipeline parameter value the pipeline cannot run with."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ParameterError(message)


def _kind(value: object) -> str:
    if value is None:
        return "None (no value)"
    if isinstance(value, bool):
        return f"the boolean {value}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    return f"a {type(value).__name__}"


def validate_source_table(value: str) -> None:
    """`[project.]dataset.table` with BigQuery's naming rules."""
    parts = value.split(".")
    _require(len(parts) in (2, 3) and all(_BQ_NAME.fullmatch(part) for part in parts[-2:])
             and (len(parts) == 2 or _BQ_PROJECT.fullmatch(parts[0])),
             f"source_table_name {value!r} is not [project.]dataset.table; use letters, digits "
             "and underscores, e.g. covertype_dataset.covertype")


def validate(params: Mapping[str, str], platform: str = "caip") -> None:
    """Raise ParameterError for the first parameter value that cannot work on `platform`
    (caip or vertex: on Vertex AI the tuning settings must also translate to a study)."""
    if "project_id" in params:
        project = params["project_id"]
        _require(project == LOCAL_PROJECT_ID or bool(_GCP_PROJECT_ID.fullmatch(project)),
                 f"project_id {project!r} is not a GCP project id; use 6-30 lowercase letters, "
                 f"digits or hyphens, starting with a letter and not ending with a hyphen "
                 f"(or {LOCAL_PROJECT_ID} for a local run)")
    if "source_table_name" in params:
        validate_source_table(params["source_table_name"])
    for name in _TEXT_FLAGS:
        if name in params and not isinstance(parsed := launcher_value(params[name]), str):
            raise ParameterError(f"{name} {params[name]!r} would reach the components as "
                                 f"{_kind(parsed)}, not as text (the 0.2.5 launcher reads its "
                                 "flags as Python literals); pick another name")
    if "dataset_id" in params:
        _require(bool(_BQ_NAME.fullmatch(params["dataset_id"])),
                 f"dataset_id {params['dataset_id']!r} is not a BigQuery dataset id; use 1-1024 "
                 "letters, digits or underscores")
    for name in ("model_id", "version_id"):
        if name in params:
            _require(bool(_ML_NAME.fullmatch(params[name])),
                     f"{name} {params[name]!r} is not an AI Platform name; start with a letter, "
                     "then up to 127 letters, digits or underscores")
    for name in ("region", "dataset_location"):
        if name in params:
            _require(bool(_LOCATION.fullmatch(params[name])),
                     f"{name} {params[name]!r} is not a location; use e.g. us-central1 or US")
    if "evaluation_metric_name" in params:
        metric = params["evaluation_metric_name"]
        _require(metric in schema.METRIC_NAMES,
                 f"evaluation_metric_name {metric!r} is unknown; use one of "
                 f"{', '.join(schema.METRIC_NAMES)}")
    if "evaluation_metric_threshold" in params:
        text = params["evaluation_metric_threshold"]
        try:
            threshold = float(text)
        except ValueError:
            threshold = float("nan")
        _require(0.0 <= threshold <= 1.0,
                 f"evaluation_metric_threshold {text!r} is not a number in [0, 1]; the metrics "
                 "are fractions, e.g. 0.69")
    if "replace_existing_version" in params:
        value = params["replace_existing_version"]
        _require(isinstance(launcher_value(value), bool),
                 f"replace_existing_version {value!r} is not a boolean; use True or False (the "
                 "0.2.5 launcher keeps any other text as text, which its deploy step reads as "
                 "true)")
    if "gcs_root" in params:
        root = params["gcs_root"]
        _require(bool(root) and ".." not in root.split("/") and not root.endswith("/")
                 and not any(char in root for char in "'\"; \n"),
                 f"gcs_root {root!r} is not a folder URI; use gs://bucket/folder or an absolute "
                 "local path, without '..', quotes or a trailing slash")
        _require(root.startswith(("gs://", "/")),
                 f"gcs_root {root!r} must start with gs:// or / (an absolute local path)")
    if "hypertune_settings" in params:
        validate_hypertune_settings(params["hypertune_settings"], platform)


def validate_hypertune_settings(text: str, platform: str = "caip") -> None:
    """The AI Platform TrainingInput of the tuning step, read as the 0.2.5 launcher reads it
    (JSON or a Python literal, pipeline.launcher_values) and checked as the service checks it;
    for Vertex AI also translated (pipeline.vertex.study), so a setting it has no place for
    fails here, before the run."""
    try:
        settings = launcher_dict(text, "hypertune_settings", _EXAMPLE)
    except ValueError as error:
        raise ParameterError(str(error)) from None
    _require(isinstance(settings.get("hyperparameters"), dict),
             'hypertune_settings must be an object with a "hyperparameters" object '
             "(AI Platform TrainingInput)")
    try:
        parse_spec(settings["hyperparameters"])
        if platform == "vertex":
            tuning_job_fields(settings)
    except HypertuneSpecError as error:
        message = str(error)
        raise ParameterError(message if message.startswith("hypertune_settings")
                             else f"hypertune_settings: {message}") from None


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.parameters NAME=VALUE ...`: check values before `kfp run submit`,
    for the PLATFORM in the environment."""
    args = sys.argv[1:] if argv is None else argv
    try:
        target = platform()  # PLATFORM, as `make run PLATFORM=...` exports it
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        params = {}
        for pair in args:
            name, sep, value = pair.partition("=")
            _require(bool(sep), f"{pair!r} is not NAME=VALUE")
            params[name] = value
        validate(params, target)
    except ParameterError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
