"""Which commands the warm executor runs, and the library set (preloaded zygote) of each.

A command runs warm only when it is a Python program this interpreter would run, in one of the
forms local steps and trials have:

- kfp 1.8's lightweight component wrapper, exactly: `sh -ec '<KFP_PROGRAM_LAUNCHER>' <program
  text> <args>` (the text written to a `mktemp` file, run by `python3 -u`);
- `python -u -m <module> <args>` (the GCP and Vertex AI component launchers);
- `python -u <script.py> <args>` (the trainer).

`python`/`python3` must resolve (through the command's PATH) to this venv's interpreter.
Anything else returns None and starts as a new process, as before.

The library set of a program is the one that preloads the most of what it imports: its own
import statements (function bodies included), followed through this package's modules, and the
component action a launcher imports by name.
"""
from __future__ import annotations

import ast
import os
import re
import shutil
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the `pipeline` package
# kfp 1.8's `_python_op.py` and `_component_builder.py` write this wrapper, byte for byte.
KFP_PROGRAM_LAUNCHER = ('program_path=$(mktemp)\nprintf "%s" "$0" > "$program_path"\n'
                        'python3 -u "$program_path" "$@"\n')
# Name -> modules its zygote imports before forking. The first set that preloads most of a
# program's imports serves it; "python" serves programs that import none of them.
LIBRARY_SETS: dict[str, tuple[str, ...]] = {
    "python": ("argparse", "json"),
    "google": ("googleapiclient.discovery", "googleapiclient.errors", "googleapiclient.http",
               "google.auth", "google_auth_httplib2", "httplib2", "yaml", "pipeline.ml_client",
               "pipeline.best_run", "pipeline.local.launcher", "pipeline.local.actions.train",
               "pipeline.local.actions.deploy", "pipeline.vertex.launcher",
               "pipeline.vertex.tune", "pipeline.vertex.train", "pipeline.vertex.deploy"),
    "bigquery": ("duckdb", "sqlglot", "pyarrow", "farmhash", "yaml", "googleapiclient.errors",
                 "pipeline.local.launcher", "pipeline.local.actions.query"),
    # The trainer (trainer_image/train.py) and the evaluation component: nothing of Google's
    # clients, so a step whose sitecustomize hooks them can still fork from it.
    "sklearn": ("pandas", "numpy", "scipy.sparse", "sklearn.compose", "sklearn.linear_model",
                "sklearn.metrics", "sklearn.pipeline", "sklearn.preprocessing", "fsspec",
                "fsspec.implementations.local", "fire", "hypertune", "pickle",
                "pipeline.schema", "pipeline.atomic"),
}
# Launchers that import their action's module by name: module -> argv index of the action.
_LAUNCHERS = {"pipeline.local.launcher": 3, "pipeline.vertex.launcher": 2}
# (launcher, action) of the component steps that start training jobs, or deploy a model.
TRAINING_ACTIONS = {("pipeline.local.launcher", "train"),
                    ("pipeline.vertex.launcher", "custom_job"),
                    ("pipeline.vertex.launcher", "hyperparameter_tuning_job")}
DEPLOY_ACTIONS = {("pipeline.local.launcher", "deploy"),
                  ("pipeline.vertex.launcher", "deploy_model")}


@dataclass(frozen=True)
class Program:
    """A Python program a command runs.

    Attributes:
        kind: "script" (a file), "module" (`-m`) or "source" (kfp's program text, run by its
            `sh -ec` wrapper).
        target: the file, the module name or the program text.
        argv: the arguments after it.
        executable: the interpreter's path, as `sys.executable` would read in the process.
        invoked_as: how the interpreter was called, as `sys.orig_argv` begins.
    """

    kind: str
    target: str
    argv: tuple[str, ...]
    executable: str
    invoked_as: tuple[str, ...]


def recognise(command: list[str], env: dict[str, str]) -> Program | None:
    """The Python program `command` runs in `env`, or None for any other command."""
    if len(command) >= 4 and command[:3] == ["sh", "-ec", KFP_PROGRAM_LAUNCHER]:
        executable = _this_interpreter("python3", env)
        if not executable:
            return None
        return Program("source", command[3], tuple(command[4:]), executable, ("python3", "-u"))
    if len(command) < 3 or command[1] != "-u":
        return None
    executable = _this_interpreter(command[0], env)
    if not executable:
        return None
    if command[2] == "-m" and len(command) >= 4 and _module_name(command[3]):
        return Program("module", command[3], tuple(command[4:]), executable,
                       (command[0], "-u"))
    if command[2].endswith(".py"):
        return Program("script", command[2], tuple(command[3:]), executable, (command[0], "-u"))
    return None


def library_set(program: Program) -> str:
    """The library set whose zygote serves `program`."""
    imported = program_imports(program)
    scores = {name: sum(1 for module in imported if _preloads(modules, module))
              for name, modules in LIBRARY_SETS.items()}
    best = max(scores.values())
    return next(name for name, score in scores.items() if score == best) if best else "python"


def program_imports(program: Program) -> set[str]:
    """The modules a program imports: its own statements, then this package's modules they
    import (transitively), without the standard library."""
    if program.kind == "source":
        names = set(_imports_of_text(program.target, "<program>"))
    elif program.kind == "script":
        names = set(_imports_of_file(str(Path(program.target).resolve())))
    else:
        names = {program.target} | _dynamic_action(program)
    seen: set[str] = set()
    pending = list(names)
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        for path in _package_files(name):
            pending += _imports_of_file(str(path))
    return {name for name in seen if name.partition(".")[0] not in sys.stdlib_module_names}


def launcher_action(command: list[str]) -> tuple[str, str] | None:
    """(launcher module, action) of a step that runs a component launcher
    (`python -u -m pipeline.local.launcher ... <action>`), else None."""
    if len(command) < 4 or command[1:3] != ["-u", "-m"] or command[3] not in _LAUNCHERS:
        return None
    index = 4 + _LAUNCHERS[command[3]]
    return (command[3], command[index]) if len(command) > index else None


def _dynamic_action(program: Program) -> set[str]:
    """The action module a launcher will import, named by its arguments."""
    index = _LAUNCHERS.get(program.target)
    if index is None or len(program.argv) <= index:
        return set()
    action = program.argv[index]
    if program.target == "pipeline.vertex.launcher":
        from pipeline.vertex.launcher import ACTIONS

        return {ACTIONS[action]} if action in ACTIONS else set()
    return {f"pipeline.local.actions.{action}"} if _module_name(action) else set()


def _preloads(modules: tuple[str, ...], name: str) -> bool:
    """Whether a set's preloads cover module `name`: the same third-party distribution, or
    exactly this package's module."""
    if name.startswith("pipeline."):
        return name in modules
    root = name.partition(".")[0]
    return any(module.partition(".")[0] == root for module in modules)


def _package_files(name: str) -> list[Path]:
    """This package's source files that importing `name` runs (its packages' __init__ too)."""
    parts = name.split(".")
    if parts[0] != "pipeline":
        return []
    files, folder = [], PACKAGE_DIR.parent
    for depth, part in enumerate(parts):
        folder = folder / part
        if (folder / "__init__.py").is_file():
            files.append(folder / "__init__.py")
        elif depth == len(parts) - 1 and folder.with_suffix(".py").is_file():
            files.append(folder.with_suffix(".py"))
        else:
            break
    return files


@lru_cache(maxsize=512)
def _imports_of_file(path: str) -> frozenset[str]:
    try:
        return _imports_of_text(Path(path).read_text(), path)
    except (OSError, UnicodeDecodeError):
        return frozenset()


@lru_cache(maxsize=256)
def _imports_of_text(text: str, filename: str) -> frozenset[str]:
    """Every module an import statement names, anywhere in the source (absolute imports)."""
    try:
        tree = ast.parse(text, filename)
    except (SyntaxError, ValueError):
        return frozenset()
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return frozenset(names)


def _module_name(text: str) -> bool:
    return re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", text) is not None


def _this_interpreter(name: str, env: dict[str, str]) -> str:
    """The path `name` runs in `env` when it is this venv's interpreter, else ""."""
    path = name if os.sep in name else shutil.which(name, path=env.get("PATH", ""))
    if not path:
        return ""
    path = os.path.abspath(path)
    same_venv = os.path.dirname(path) == os.path.dirname(os.path.abspath(sys.executable))
    return path if same_venv and os.path.realpath(path) == os.path.realpath(sys.executable) else ""
