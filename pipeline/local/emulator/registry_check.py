"""The registry check: what in a registry folder (edited by hand, or half written) keeps a model
or version from being served, and how each servable version is served.

`GET /v1/projects/local/registry:check` reports it, and a `:predict` that fails says the
problem behind it (`explain`) instead of a bare not-found.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from pipeline.local.home import LOCAL_PROJECT_ID
from pipeline.local.prediction import read_verdict
from pipeline.local.registry import ARTIFACT_NAMES, NAME_PATTERN


def check_registry(root: Path, only: str | None = None) -> tuple[list[dict], list[dict]]:
    """(problems, versions): each problem names an entry and its fix; each version says how it
    is served, from its stored fast path verdict. `only` limits the check to one model."""
    problems: list[dict] = []
    versions: list[dict] = []

    def problem(name: str, message: str) -> None:
        problems.append({"name": name, "problem": message})

    entries = [root / only] if only else sorted(root.iterdir())
    for folder in entries:
        if folder.name.startswith(".") or not folder.exists():
            continue
        if not NAME_PATTERN.fullmatch(folder.name) or not folder.is_dir():
            problem(str(folder), "not a model folder (a letter, then letters, digits or "
                                 "underscores); remove it from the registry")
            continue
        name = f"projects/{LOCAL_PROJECT_ID}/models/{folder.name}"
        version_names = sorted(p.name for p in (folder / "versions").glob("*")
                               if not p.name.startswith("."))
        good = [v for v in version_names if _check_version(folder / "versions" / v,
                                                           f"{name}/versions/{v}", problem)]
        try:
            record = json.loads((folder / "model.json").read_text())
            default = (record.get("defaultVersion") or {}).get("name", "").rsplit("/", 1)[-1]
        except (OSError, ValueError, AttributeError) as error:
            problem(name, f"model.json is missing or not a JSON object ({type(error).__name__}); "
                          "restore it or delete the model folder")
            continue
        if default and default not in good:
            problem(name, f"the default version {default} is missing or broken; call setDefault "
                          "on a servable version")
        elif not default and good:
            problem(name, "no default version; call setDefault on one of its versions")
        for version in good:
            verdict = read_verdict(folder / "versions" / version) or {}
            versions.append({"name": f"{name}/versions/{version}", "isDefault": version == default,
                             "predictionPath": verdict.get("path", "not loaded yet"),
                             "detail": verdict.get("reason", "")})
    return problems, versions


def _check_version(folder: Path, name: str, problem: Callable[[str, str], None]) -> bool:
    """Report what keeps one version folder from being served; True when it is servable."""
    if not NAME_PATTERN.fullmatch(folder.name) or not folder.is_dir():
        problem(str(folder), "not a version folder; remove it from the registry")
        return False
    try:
        if not isinstance(json.loads((folder / "version.json").read_text()), dict):
            raise ValueError("not an object")
    except (OSError, ValueError) as error:
        problem(name, f"version.json is missing or not a JSON object ({type(error).__name__}); "
                      "delete the version folder and deploy it again")
        return False
    artifacts = [artifact for artifact in ARTIFACT_NAMES if (folder / artifact).is_file()]
    if len(artifacts) != 1:
        problem(name, f"holds {len(artifacts)} of {' / '.join(ARTIFACT_NAMES)}; expected one: "
                      "delete the version and deploy it again")
        return False
    return True


def explain(root: Path, model: str, version: str | None) -> str | None:
    """The registry problem that stops `model` (its default, or `version`) from being served."""
    if not NAME_PATTERN.fullmatch(model) or not (root / model).is_dir():
        return None
    problems, _ = check_registry(root, only=model)
    name = f"projects/{LOCAL_PROJECT_ID}/models/{model}"
    wanted = f"{name}/versions/{version or _default_of(root / model)}"
    for item in problems:  # the version's own problem first
        if item["name"] == wanted:
            return f"{item['name']} cannot be served: {item['problem']}"
    for item in problems:
        if item["name"] == name and (version is None or item["problem"].startswith("model.json")):
            return f"{item['name']} cannot be served: {item['problem']}"
    return None


def _default_of(folder: Path) -> str:
    try:
        record = json.loads((folder / "model.json").read_text())
        return record["defaultVersion"]["name"].rsplit("/", 1)[-1]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return ""
