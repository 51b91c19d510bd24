"""Pipeline packages as .yaml, .zip and .tar.gz, read by one function for runs and uploads."""
from __future__ import annotations

import io
import tarfile
import zipfile

import kfp
import pytest
from kfp_local import sleepy_pipeline

from pipeline.local import package
from pipeline.local.package import PackageError, load_package, read_package
from pipeline.local.workflow import Workflow, WorkflowError


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """The same pipeline written by kfp's compiler in each of its formats."""
    folder = tmp_path_factory.mktemp("packages")
    paths = {}
    for suffix in ("yaml", "zip", "tar.gz", "tgz"):
        paths[suffix] = folder / f"sleepy.{suffix}"
        kfp.compiler.Compiler().compile(sleepy_pipeline, str(paths[suffix]))
    return paths


def test_every_format_kfp_writes_reads_as_the_same_workflow(compiled):
    def timeless(workflow: Workflow) -> dict:
        annotations = workflow.source["metadata"]["annotations"]
        annotations.pop("pipelines.kubeflow.org/pipeline_compilation_time")
        return workflow.source

    expected = timeless(Workflow.load(compiled["yaml"]))
    for suffix in ("zip", "tar.gz", "tgz"):
        assert load_package(compiled[suffix]).startswith("apiVersion: argoproj.io/v1alpha1")
        workflow = Workflow.load(compiled[suffix])  # what `covertype run --local --package` reads
        assert workflow.parameters == {"project_id": None, "gcs_root": None, "seconds": "1"}
        assert timeless(workflow) == expected


def test_a_zip_takes_pipeline_yaml_else_its_first_file():
    def zipped(*members: tuple[str, str]) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for name, content in members:
                archive.writestr(name, content)
        return buffer.getvalue()

    assert read_package("p.zip", zipped(("a.yaml", "a"), ("pipeline.yaml", "p"))) == "p"
    assert read_package("p.zip", zipped(("only.yml", "o"), ("notes.txt", "n"))) == "o"
    with pytest.raises(PackageError, match="holds no pipeline.yaml .first file: notes.txt"):
        read_package("p.zip", zipped(("notes.txt", "n"), ("other.yaml", "o")))
    with pytest.raises(PackageError, match="p.zip: not a pipeline package"):
        read_package("p.zip", zipped())  # an empty zip has no local file header to detect


def test_a_tarball_must_start_with_its_yaml():
    def tarred(name: str, content: bytes) -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
        return buffer.getvalue()

    assert read_package("x.tar.gz", tarred("pipeline.yaml", b"kind: Workflow")) == (
        "kind: Workflow")
    with pytest.raises(PackageError, match=r"does not start with a YAML file .first entry: "
                                           r"README"):
        read_package("x.tar.gz", tarred("README", b"hi"))


@pytest.mark.parametrize(("name", "data", "message"), [
    ("p.json", b"{}", "not a pipeline package; expected a .yaml file, or a .zip or .tar.gz"),
    ("p.zip", b"PK\x03\x04broken", "not a readable zip archive"),
    ("p.tar.gz", b"\x1f\x8bbroken", "not a readable tar.gz archive"),
    ("p.yaml", b"\xff\xfe", "the workflow YAML is not UTF-8 text"),
])
def test_what_is_not_a_package_is_refused_in_one_line(name, data, message):
    with pytest.raises(PackageError, match=message) as refused:
        read_package(name, data)
    assert "\n" not in str(refused.value) and str(refused.value).startswith(f"{name}: ")


def test_sizes_are_bounded(monkeypatch, tmp_path):
    monkeypatch.setattr(package, "MAX_PACKAGE_BYTES", 400)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("pipeline.yaml", "a" * 100_000)  # compresses below the limit
    assert len(buffer.getvalue()) < 400
    with pytest.raises(PackageError, match="expands to more than 400 bytes"):
        read_package("bomb.zip", buffer.getvalue())
    big = tmp_path / "big.yaml"
    big.write_text("a" * 401)
    with pytest.raises(PackageError, match="401 bytes is more than a package may hold"):
        load_package(big)
    with pytest.raises(WorkflowError, match="no such pipeline package"):
        Workflow.load(tmp_path / "missing.zip")
