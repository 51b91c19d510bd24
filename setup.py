"""Installable Covertype KFP v1 pipeline package (Python 3.11)."""
from pathlib import Path

from setuptools import find_packages, setup

requirements = [
    line.strip()
    for line in Path(__file__).with_name("requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith(("#", "-"))
]

setup(
    name="covertype-pipeline",
    version="0.1.0",
    description="KFP v1 train/tune/evaluate/gated-deploy pipeline for the Covertype classifier, "
    "with an embedded local mode",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["pipeline", "pipeline.*"]),
    package_data={"pipeline": ["components/**/component.yaml", "discovery/*.json", "discovery/*.md",
                               "local/browser/templates/*", "local/browser/static/*"]},
    install_requires=requirements,
    entry_points={"console_scripts": ["covertype=pipeline.cli:entry",
                                      # `argo watch` of local runs, for `kfp run submit -w`
                                      "argo=pipeline.local.argo_watch:main"]},
)
