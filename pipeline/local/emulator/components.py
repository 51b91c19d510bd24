"""The repository's 0.2.5 GCP component specs, served where kfp's ComponentStore looks for them.

`GET /components/gcp/{bigquery/query,ml_engine/train,ml_engine/deploy}/component.yaml` is the
layout of kubeflow/pipelines 0.2.5 `components/gcp/`, so a DSL that loads those components by
URL (`ComponentStore(url_search_prefixes=[COMPONENT_URL_SEARCH_PREFIX])`,
`load_component_from_url`) compiles offline with
`COMPONENT_URL_SEARCH_PREFIX=http://127.0.0.1:8080/components/gcp/`. The specs are the files in
pipeline/components/, read on every request; nothing else is served from there.
"""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse, Response

from pipeline.settings import COMPONENTS_DIR

router = APIRouter(include_in_schema=False)
PREFIX = "/components/gcp/"
SPECS = ("bigquery/query", "ml_engine/train", "ml_engine/deploy")
SPEC_FILE = "component.yaml"


@router.get(PREFIX + "{name:path}/" + SPEC_FILE)
def component_spec(name: str) -> Response:
    """One spec as YAML text, or 404 naming the specs this server publishes."""
    if name not in SPECS:
        return PlainTextResponse(
            f"no component gcp/{name}; this server publishes {', '.join(SPECS)} "
            f"under {PREFIX}\n", status_code=404)
    text = (COMPONENTS_DIR / name / SPEC_FILE).read_text()
    return PlainTextResponse(text, media_type="application/x-yaml; charset=utf-8")
