"""The build contexts `make images` sends to Cloud Build, staged in one place.

`python -m pipeline.images stage IMAGE FOLDER` copies what the image's Dockerfile COPYs:
- base_image: the cloud-path package (`pipeline/` without `local/` and `cli/`), which the
  lightweight components and the Vertex AI launcher (`python -u -m pipeline.vertex.launcher`)
  import; the local stand-ins never enter it.
- trainer_image: train.py and the four standard-library modules it imports.
- serving_image: the whole package, the bundled data (the fast path's verification rows) and
  the repository's requirements.txt (the project's own pins: no extra scikit-learn pin); its
  entrypoint is `covertype serve`, run as a Vertex AI custom container.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from pipeline.errors import one_line

REPO = Path(__file__).resolve().parents[1]
IMAGES = ("base_image", "trainer_image", "serving_image")
_NEVER = ("__pycache__", "*.pyc")
_NOT_CLOUD = ("local", "cli")  # pipeline/ subpackages that stay out of the base image


def stage(image: str, folder: Path) -> list[str]:
    """Copy the build context of `image` into the empty or new `folder`; the relative paths.

    Raises:
        ValueError: unknown image, or `folder` is not empty.
    """
    if image not in IMAGES:
        raise ValueError(f"unknown image {image!r}; use one of {', '.join(IMAGES)}")
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        raise ValueError(f"{folder} is not empty; stage into a new folder")
    source = REPO / image
    _copy(source / "Dockerfile", folder / "Dockerfile")
    package, target = REPO / "pipeline", folder / "pipeline"
    if image == "trainer_image":
        _copy(source / "requirements.txt", folder / "requirements.txt")
        _copy(source / "train.py", folder / "train.py")
        for name in ("__init__.py", "schema.py", "atomic.py", "errors.py"):
            _copy(package / name, target / name)
    elif image == "base_image":
        _copy(source / "requirements.txt", folder / "requirements.txt")
        shutil.copytree(package, target, ignore=_ignore_local)
    else:
        for name in ("requirements.txt", "setup.py"):
            _copy(REPO / name, folder / name)
        shutil.copytree(package, target, ignore=shutil.ignore_patterns(*_NEVER))
        _copy(REPO / "data" / "covertype.csv.gz", folder / "data" / "covertype.csv.gz")
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target)


def _ignore_local(directory: str, names: list[str]) -> set[str]:
    ignored = set(shutil.ignore_patterns(*_NEVER)(directory, names))
    if Path(directory).resolve() == (REPO / "pipeline").resolve():
        ignored.update(name for name in names if name in _NOT_CLOUD)
    return ignored


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.images stage IMAGE FOLDER` (one-line errors, exit 2)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or args[0] != "stage":
        print("usage: python -m pipeline.images stage IMAGE FOLDER", file=sys.stderr)
        return 2
    try:
        stage(args[1], Path(args[2]))
    except (ValueError, OSError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
