"""Compile-time settings of the DSL, read once from the lab's environment variables.

| variable | default |
|---|---|
| BASE_IMAGE | gcr.io/$PROJECT_ID/base_image:latest, or covertype/base_image:local (local only) |
| TRAINER_IMAGE | gcr.io/$PROJECT_ID/trainer_image:latest, or covertype/trainer_image:local |
| SERVING_IMAGE | gcr.io/$PROJECT_ID/serving_image:latest, or covertype/serving_image:local |
| PLATFORM | caip (AI Platform components, the lab's form) or vertex (Vertex AI components) |
| RUNTIME_VERSION | 2.11 (the last AI Platform Prediction runtime with scikit-learn) |
| PYTHON_VERSION | 3.7 (the Python of runtime 2.11) |
| COMPONENT_URL_SEARCH_PREFIX | empty: component specs come from pipeline/components only |
| USE_KFP_SA | False; True adds use_gcp_secret('user-gcp-sa') to every step |
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

COMPONENTS_DIR = Path(__file__).resolve().parent / "components"

# Image names of a package compiled with neither the image variables nor PROJECT_ID: the local
# runner never pulls images, and `make upload` refuses a package that names them.
LOCAL_IMAGE_PREFIX = "covertype/"
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no", "")
PLATFORMS = ("caip", "vertex")
_URL_PREFIX = re.compile(r"^(https?|file)://[^\s]+/$")
_VERSION = re.compile(r"^\d+\.\d+$")


class SettingsError(ValueError):
    """An environment variable is missing or malformed."""


@dataclass(frozen=True)
class Settings:
    """What the DSL needs from the environment, validated."""

    base_image: str
    trainer_image: str
    runtime_version: str
    python_version: str
    component_url_search_prefix: str
    use_kfp_sa: bool
    platform: str = "caip"
    serving_image: str = f"{LOCAL_IMAGE_PREFIX}serving_image:local"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate the settings; raise SettingsError naming the variable and the fix."""
        env = os.environ if environ is None else environ
        project = env.get("PROJECT_ID", "").strip()
        return cls(
            base_image=_image(env, "BASE_IMAGE", project, "base_image"),
            trainer_image=_image(env, "TRAINER_IMAGE", project, "trainer_image"),
            runtime_version=_version(env, "RUNTIME_VERSION", "2.11"),
            python_version=_version(env, "PYTHON_VERSION", "3.7"),
            component_url_search_prefix=_url_prefix(env),
            use_kfp_sa=_flag(env, "USE_KFP_SA"),
            platform=platform(env),
            serving_image=_image(env, "SERVING_IMAGE", project, "serving_image"),
        )


def platform(environ: Mapping[str, str] | None = None) -> str:
    """`PLATFORM`: caip (default) or vertex; raise SettingsError naming the fix otherwise."""
    env = os.environ if environ is None else environ
    value = env.get("PLATFORM", "").strip() or PLATFORMS[0]
    if value not in PLATFORMS:
        raise SettingsError(f"PLATFORM={env['PLATFORM']!r} is not a platform; set it to caip "
                            "(AI Platform, the lab's form) or vertex (Vertex AI)")
    return value


def _image(env: Mapping[str, str], name: str, project: str, image: str) -> str:
    value = env.get(name, "").strip()
    if value:
        if any(char.isspace() for char in value) or value.startswith("-"):
            raise SettingsError(f"{name}={value!r} is not an image URI; set it like "
                                f"gcr.io/<project>/{image}:latest")
        return value
    if project:
        return f"gcr.io/{project}/{image}:latest"
    return f"{LOCAL_IMAGE_PREFIX}{image}:local"


def _version(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip() or default
    if not _VERSION.match(value):
        raise SettingsError(f"{name}={value!r} is not a MAJOR.MINOR version; set it like {default}")
    return value


def _url_prefix(env: Mapping[str, str]) -> str:
    value = env.get("COMPONENT_URL_SEARCH_PREFIX", "").strip()
    if value and not _URL_PREFIX.match(value):
        raise SettingsError(
            f"COMPONENT_URL_SEARCH_PREFIX={value!r} is not a URL prefix ending in '/'; set it like "
            "https://raw.githubusercontent.com/kubeflow/pipelines/0.2.5/components/gcp/ or unset it"
        )
    return value


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(f"{name}={env[name]!r} is not a boolean; set it to True or False")


def main() -> int:
    """`python -m pipeline.settings`: check the environment before `dsl-compile` (one line)."""
    import sys

    try:
        Settings.from_env()
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
