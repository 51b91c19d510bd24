"""The cloud path never imports the local stand-ins, and the images carry what they run.

`make images` stages each build context with `python -m pipeline.images stage`; Docker is not
available here, so these tests check the staged contexts against their Dockerfiles and run the
base image's programs from its staged context, where `pipeline.local` does not exist.
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from pipeline import images

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "pipeline"
# The cloud path: pipeline/*.py and every subpackage but the local mode and its CLI.
CLOUD_FILES = sorted(path for path in PACKAGE.rglob("*.py")
                     if path.relative_to(PACKAGE).parts[0] not in ("local", "cli"))
CLOUD_MODULES = ["pipeline.vertex.launcher", "pipeline.vertex.tune", "pipeline.vertex.train",
                 "pipeline.vertex.deploy", "pipeline.best_run", "pipeline.ml_client",
                 "pipeline.discovery", "pipeline.parameters", "pipeline.images"]


def imported_names(path: Path) -> set[str]:
    """Every module an import statement of `path` names, lazy ones inside functions included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_cloud_path_never_imports_the_local_mode():
    assert PACKAGE / "vertex" / "launcher.py" in CLOUD_FILES
    offenders = {str(path.relative_to(REPO)): sorted(
        name for name in imported_names(path)
        if name == "pipeline.local" or name.startswith("pipeline.local."))
        for path in CLOUD_FILES}
    assert {path: names for path, names in offenders.items() if names} == {}


def test_the_import_check_sees_lazy_imports(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from pipeline.local.home import local_home\n")
    assert "pipeline.local.home" in imported_names(sample)


def dockerfile_copies(dockerfile: Path) -> list[str]:
    """The source paths of every COPY instruction."""
    sources = []
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY "):
            sources += line.split()[1:-1]
    return sources


@pytest.mark.parametrize("image", images.IMAGES)
def test_every_copy_of_the_dockerfile_finds_its_source_in_the_staged_context(image, tmp_path):
    staged = images.stage(image, tmp_path / image)

    for source in dockerfile_copies(tmp_path / image / "Dockerfile"):
        found = tmp_path / image / source
        assert found.exists(), f"{image}: COPY {source} is not in the staged context"
    tops = {path.split("/")[0] for path in staged}
    copied = {source.rstrip("/").split("/")[0] for source in
              dockerfile_copies(tmp_path / image / "Dockerfile")}
    assert tops - copied == {"Dockerfile"}, "staged but never copied"
    assert not any("__pycache__" in path or path.endswith(".pyc") for path in staged)


def test_the_base_context_holds_the_cloud_path_and_not_the_local_mode(tmp_path):
    staged = set(images.stage("base_image", tmp_path / "base"))

    for needed in ("pipeline/vertex/launcher.py", "pipeline/vertex/deploy.py",
                   "pipeline/best_run.py", "pipeline/ml_client.py",
                   "pipeline/discovery/aiplatform.v1.json", "pipeline/discovery/ml.v1.json",
                   "pipeline/schema.py", "pipeline/atomic.py", "pipeline/errors.py"):
        assert needed in staged, needed
    assert not [path for path in staged if path.startswith(("pipeline/local/", "pipeline/cli/"))]


def test_the_trainer_and_serving_contexts(tmp_path):
    trainer = images.stage("trainer_image", tmp_path / "trainer")
    serving = set(images.stage("serving_image", tmp_path / "serving"))

    assert trainer == ["Dockerfile", "pipeline/__init__.py", "pipeline/atomic.py",
                       "pipeline/errors.py", "pipeline/schema.py", "requirements.txt", "train.py"]
    for needed in ("pipeline/cli/serve_vertex.py", "pipeline/local/prediction.py",
                   "data/covertype.csv.gz", "setup.py", "requirements.txt"):
        assert needed in serving, needed
    # The project's own pins, so the served model loads with the scikit-learn it was trained
    # with, and no extra pin of a prebuilt serving image.
    assert (tmp_path / "serving" / "requirements.txt").read_text() == (
        REPO / "requirements.txt").read_text()
    assert 'ENTRYPOINT ["covertype", "serve"]' in (tmp_path / "serving" / "Dockerfile").read_text()


def test_staging_refuses_unknown_images_and_used_folders(tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("x")
    unknown = subprocess.run([sys.executable, "-m", "pipeline.images", "stage", "gpu_image",
                              str(tmp_path / "new")], capture_output=True, text=True)
    used = subprocess.run([sys.executable, "-m", "pipeline.images", "stage", "base_image",
                           str(tmp_path / "used")], capture_output=True, text=True)

    assert (unknown.returncode, unknown.stderr) == (2, "error: unknown image 'gpu_image'; use "
                                                       "one of base_image, trainer_image, "
                                                       "serving_image\n")
    assert used.returncode == 2 and "is not empty; stage into a new folder" in used.stderr
    assert not (tmp_path / "new").exists() and os.listdir(tmp_path / "used") == ["x"]


@pytest.fixture(scope="module")
def base_context(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("base") / "app"
    images.stage("base_image", folder)
    return folder


def in_base_image(context: Path, *args: str) -> subprocess.CompletedProcess:
    """Run Python as the base image does: WORKDIR and PYTHONPATH /app (the staged context).

    `-S` with site-packages on PYTHONPATH keeps the venv's editable install of this repository
    (a .pth import hook) out, so only the staged files are importable as `pipeline`.
    """
    site_packages = sysconfig.get_paths()["purelib"]
    env = {**os.environ, "PYTHONPATH": f"{context}{os.pathsep}{site_packages}"}
    return subprocess.run([sys.executable, "-S", *args], cwd=context, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_base_image_imports_the_cloud_path_without_the_local_mode(base_context):
    script = ("import sys, importlib, pipeline\n"
              f"assert pipeline.__file__.startswith({str(base_context)!r}), pipeline.__file__\n"
              f"for name in {CLOUD_MODULES!r}: importlib.import_module(name)\n"
              "print(sorted(m for m in sys.modules if m.startswith('pipeline.local')))\n"
              "try:\n    import pipeline.local\nexcept ModuleNotFoundError:\n"
              "    print('no local mode')\n")
    result = in_base_image(base_context, "-c", script)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[]", "no local mode"]


def test_the_vertex_launcher_runs_in_the_base_image(base_context):
    result = in_base_image(base_context, "-u", "-m", "pipeline.vertex.launcher",
                           "--ui_metadata_path", "/tmp/ui", "custom_job", "--region", "x")

    assert result.returncode == 1
    assert re.fullmatch(r"error: custom_job needs --project_id\n", result.stderr)
