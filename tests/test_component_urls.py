"""`covertype serve` publishes the repo's 0.2.5 GCP component specs in the 0.2.5 layout, so a
DSL that loads components by URL compiles offline with
COMPONENT_URL_SEARCH_PREFIX=http://127.0.0.1:PORT/components/gcp/."""
from __future__ import annotations

import textwrap

import httpx
import pytest
import yaml
from foreign_support import FOREIGN, dsl_compile
from kfp.components import ComponentStore, load_component_from_url
from serve_process import covertype_serve

from pipeline.settings import COMPONENTS_DIR

SPECS = ("bigquery/query", "ml_engine/train", "ml_engine/deploy")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with covertype_serve(tmp_path_factory.mktemp("serve") / "home") as served:
        yield served.url


@pytest.mark.parametrize("name", SPECS)
def test_each_spec_is_the_repos_file(served, name):
    response = httpx.get(f"{served}/components/gcp/{name}/component.yaml")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-yaml")
    assert response.content == (COMPONENTS_DIR / name / "component.yaml").read_bytes()


def test_kfp_loads_them_by_url(served):
    store = ComponentStore(local_search_paths=[], url_search_prefixes=[
        f"{served}/components/gcp/"])
    for name in SPECS:
        spec = store.load_component(name).component_spec
        local = yaml.safe_load((COMPONENTS_DIR / name / "component.yaml").read_text())
        assert spec.name == local["name"]
        assert [item.name for item in spec.inputs] == [item["name"] for item in local["inputs"]]
    deploy = load_component_from_url(f"{served}/components/gcp/ml_engine/deploy/component.yaml")
    assert deploy.component_spec.implementation.container.command == [
        "python", "-u", "-m", "kfp_component.launcher"]


@pytest.mark.parametrize(("path", "status", "text"), [
    ("/components/gcp/ml_engine/batch_predict/component.yaml", 404,
     "no component gcp/ml_engine/batch_predict; this server publishes bigquery/query, "
     "ml_engine/train, ml_engine/deploy under /components/gcp/\n"),
    ("/components/gcp/vertex/custom_job/component.yaml", 404, None),  # not a 0.2.5 spec
    ("/components/gcp/../../settings.py/component.yaml", 404, None),
    ("/components/gcp/bigquery/query/README.md", 404, None),
])
def test_nothing_else_is_served(served, path, status, text):
    response = httpx.get(served + path)
    assert response.status_code == status
    if text:
        assert response.text == text


def test_a_foreign_host_is_refused(served):
    response = httpx.get(f"{served}/components/gcp/bigquery/query/component.yaml",
                         headers={"Host": "attacker.example"})
    assert response.status_code == 403 and response.headers["X-Refused-By"] == (
        "covertype-security")


def test_dsl_loading_components_by_url_compiles_offline(served, tmp_path):
    dsl = tmp_path / "by_url.py"
    dsl.write_text(textwrap.dedent('''
        import os
        import kfp
        from kfp.components import ComponentStore, load_component_from_url

        PREFIX = os.environ["COMPONENT_URL_SEARCH_PREFIX"]
        query_op = ComponentStore(url_search_prefixes=[PREFIX]).load_component("bigquery/query")
        deploy_op = load_component_from_url(PREFIX + "ml_engine/deploy/component.yaml")

        @kfp.dsl.pipeline(name="by url")
        def by_url(project_id, model_uri):
            query_op(query="SELECT 1", project_id=project_id)
            deploy_op(model_uri=model_uri, project_id=project_id)
    '''))
    output = tmp_path / "by_url.yaml"
    result = dsl_compile(dsl, output, COMPONENT_URL_SEARCH_PREFIX=f"{served}/components/gcp/")
    assert result.returncode == 0, result.stderr
    templates = {template["name"]: template for template in
                 yaml.safe_load(output.read_text())["spec"]["templates"]}
    assert templates["bigquery-query"]["container"]["args"][2:4] == [
        "kfp_component.google.bigquery", "query"]
    deploy = next(t for name, t in templates.items() if name.startswith("deploying"))
    assert deploy["container"]["args"][2:4] == ["kfp_component.google.ml_engine", "deploy"]


def test_the_lab_style_pipeline_compiles_by_url(served, tmp_path):
    output = tmp_path / "lab.yaml"
    result = dsl_compile(FOREIGN / "lab" / "covertype_training_pipeline.py", output,
                         COMPONENT_URL_SEARCH_PREFIX=f"{served}/components/gcp/",
                         BASE_IMAGE="gcr.io/my-project/base_image:latest",
                         TRAINER_IMAGE="gcr.io/my-project/trainer_image:latest",
                         RUNTIME_VERSION="2.11", PYTHON_VERSION="3.7")
    assert result.returncode == 0, result.stderr
    names = {template["name"] for template in
             yaml.safe_load(output.read_text())["spec"]["templates"]}
    assert {"bigquery-query", "bigquery-query-2", "bigquery-query-3", "best-trial-of",
            "score-model"} <= names
