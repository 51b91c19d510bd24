"""Action `deploy_model`: upload the model, get or create its endpoint, switch the traffic.

1. Upload a Model: `artifactUri` is the final training's model folder, the container is this
   project's serving image (`covertype serve` under Vertex AI's custom-container contract,
   routes PREDICT_ROUTE and HEALTH_ROUTE on SERVING_PORT).
2. Get the endpoint whose display name is `model_id`, or create it.
3. Deploy the Model with 100% of the traffic, its DeployedModel named `version_id` (the
   version label). If the endpoint already serves a deployed model with that name, the step
   refuses unless `replace_existing_version` is True, before anything changes (the meaning
   the flag has for AI Platform versions).
4. Only once the new deployment serves (the deploy operation is done and it holds 100% of the
   traffic), undeploy the models it replaced: every other deployed model on the endpoint, which
   now gets no traffic but would still cost its nodes. Their Models stay in the registry.

Retries: the uploaded Model carries the step's labels, so a retried step finds it, and an
endpoint already serving it is not deployed to again.
"""
from __future__ import annotations

from typing import Any

from pipeline import schema
from pipeline.errors import one_line
from pipeline.vertex import inputs, jobs
from pipeline.vertex.client import VertexClient, VertexError

# The outputs naming what serves; the local run summary reads them by these names too.
ENDPOINT_OUTPUT, DEPLOYED_MODEL_OUTPUT = "endpoint_name", "deployed_model_id"
OUTPUTS = ("model_name", ENDPOINT_OUTPUT, DEPLOYED_MODEL_OUTPUT)
PREDICT_ROUTE, HEALTH_ROUTE, SERVING_PORT = "/predict", "/health", 8080
NEW_DEPLOYMENT = "0"  # trafficSplit key of the model being deployed (DeployModelRequest)


def deploy_model(model_uri: str, project_id: str, region: str, model_id: str, version_id: str,
                 serving_image_uri: str, replace_existing_version: str = "False",
                 machine_type: str = "n1-standard-2", min_replica_count: str = "1",
                 max_replica_count: str = "1", wait_interval: str = "30",
                 wait_timeout: str = "7200") -> dict[str, str]:
    """Deploy the model folder `model_uri` to the endpoint named `model_id` as `version_id`.

    Returns:
        {'model_name', 'endpoint_name', 'deployed_model_id'} of the serving deployment.

    Raises:
        ValueError: a bad input, a folder without a model, or a version that exists and may not
            be replaced; raised before anything changes.
        VertexError: a call or an operation failed, or the wait expired.
    """
    uri = inputs.folder_uri("model_uri", model_uri)
    project = inputs.resource_id("project_id", project_id, "my-project")
    location = inputs.resource_id("region", region, "us-central1")
    name = inputs.required("model_id", model_id, "covertype_classifier")
    version = inputs.required("version_id", version_id, "v01")
    replace = inputs.boolean("replace_existing_version", replace_existing_version)
    minimum = inputs.integer("min_replica_count", min_replica_count, 1, 1000)
    maximum = inputs.integer("max_replica_count", max_replica_count, minimum, 1000)
    resources = dedicated_resources(inputs.machine_type("machine_type", machine_type),
                                    minimum, maximum)
    image = inputs.required("serving_image_uri", serving_image_uri,
                            "gcr.io/my-project/serving_image:latest")
    waiting = jobs.Waiting.start(inputs.integer("wait_interval", wait_interval, 0, 3600),
                                 inputs.integer("wait_timeout", wait_timeout, 1, 86400))
    identity = jobs.StepIdentity.from_env()
    check_model_folder(uri)

    client = VertexClient(project, location)
    endpoint = find_endpoint(client, name)
    model = own_model(client, identity)
    existing = [deployed for deployed in (endpoint or {}).get("deployedModels", [])
                if deployed.get("displayName") == version]
    foreign = [deployed for deployed in existing if not model or not _same_model(deployed, model)]
    if foreign and not replace:
        raise ValueError(f"endpoint {endpoint['name']} ({name}) already serves version {version} "
                         f"(deployed model {foreign[0].get('id')}); set "
                         "replace_existing_version=True to replace it or pick a new version_id")
    if model is None:
        response = jobs.wait_for_operation(
            client, client.upload_model(upload_request(identity, name, version, uri, image)),
            f"uploading {uri}", waiting)
        model = _answered(response, "model", "the upload")
        print(f"uploaded {uri} as {model}")
    if endpoint is None:
        endpoint = jobs.wait_for_operation(
            client, client.create_endpoint({"displayName": name}),
            f"creating endpoint {name}", waiting)
        _answered(endpoint, "name", "the endpoint creation")
        print(f"created endpoint {endpoint['name']} ({name})")
    deployed_id = _deploy(client, endpoint, model, version, resources, waiting)
    _retire_others(client, endpoint["name"], deployed_id, waiting)
    return {"model_name": model, ENDPOINT_OUTPUT: endpoint["name"],
            DEPLOYED_MODEL_OUTPUT: deployed_id}


def upload_request(identity: jobs.StepIdentity, model_id: str, version_id: str, model_uri: str,
                   image_uri: str) -> dict[str, Any]:
    """The UploadModelRequest: the model folder served by the project's serving image."""
    return {"model": {
        "displayName": model_id,
        "description": f"{model_id} {version_id}",
        "artifactUri": model_uri,
        "labels": identity.labels,
        "containerSpec": {"imageUri": image_uri, "predictRoute": PREDICT_ROUTE,
                          "healthRoute": HEALTH_ROUTE,
                          "ports": [{"containerPort": SERVING_PORT}]},
    }}


def dedicated_resources(machine_type: str, minimum: int, maximum: int) -> dict[str, Any]:
    return {"machineSpec": {"machineType": machine_type}, "minReplicaCount": minimum,
            "maxReplicaCount": maximum}


def deploy_request(model: str, version_id: str, resources: dict[str, Any]) -> dict[str, Any]:
    """The DeployModelRequest: the new deployment named after the version, all the traffic."""
    return {"deployedModel": {"model": model, "displayName": version_id,
                              "dedicatedResources": resources},
            "trafficSplit": {NEW_DEPLOYMENT: 100}}


def check_model_folder(uri: str) -> None:
    """Refuse a folder without exactly one model.pkl or model.joblib, before any change."""
    import fsspec

    try:
        fs, folder = fsspec.core.url_to_fs(uri)
        names = {path.rstrip("/").rsplit("/", 1)[-1] for path in fs.ls(folder, detail=False)}
    except (OSError, ValueError, ImportError) as error:
        raise ValueError(f"cannot list model_uri {uri} ({one_line(error)}); pass the final "
                         "training step's model_dir output") from None
    found = [name for name in schema.MODEL_ARTIFACT_NAMES if name in names]
    if len(found) != 1:
        raise ValueError(f"model_uri {uri} holds {' and '.join(found) or 'no model.pkl'}; it must "
                         "hold exactly one of " + " or ".join(schema.MODEL_ARTIFACT_NAMES))


def find_endpoint(client: VertexClient, display_name: str) -> dict | None:
    """The endpoint named `display_name`; more than one is an error (no guessing)."""
    found = [item for item in client.list_endpoints()
             if item.get("displayName") == display_name]
    if len(found) > 1:
        raise ValueError(f"{len(found)} endpoints are named {display_name} "
                         f"({', '.join(item['name'] for item in found)}); delete the extra ones "
                         "or pick another model_id")
    return found[0] if found else None


def own_model(client: VertexClient, identity: jobs.StepIdentity) -> str | None:
    """The Model an earlier attempt of this step uploaded, if any (newest first)."""
    models = client.list_models(identity.list_filter)
    if not models:
        return None
    model = max(models, key=lambda item: item.get("createTime", ""))
    print(f"found {model['name']} uploaded by an earlier attempt of this step")
    return model["name"]


def _answered(response: dict, field: str, what: str) -> str:
    """A field the operation's response must carry; its absence is a one-line error."""
    value = response.get(field)
    if not isinstance(value, str) or not value:
        raise VertexError(f"{what} finished without a {field} in its response; check the "
                          "operation in the console and re-run the step")
    return value


def _same_model(deployed: dict, model: str) -> bool:
    return deployed.get("model", "").split("@", 1)[0] == model


def _deploy(client: VertexClient, endpoint: dict, model: str, version_id: str,
            resources: dict[str, Any], waiting: jobs.Waiting) -> str:
    """Deploy `model` with all the traffic (unless already deployed); its DeployedModel id."""
    earlier = [item for item in endpoint.get("deployedModels", []) if _same_model(item, model)]
    if earlier:
        deployed_id = earlier[0]["id"]
        print(f"{model} already serves on {endpoint['name']} as {deployed_id}")
    else:
        response = jobs.wait_for_operation(
            client, client.deploy_model(endpoint["name"],
                                        deploy_request(model, version_id, resources)),
            f"deploying {model} to {endpoint['name']}", waiting)
        deployed_id = _answered(response.get("deployedModel") or {}, "id", "the deployment")
        print(f"deployed {model} to {endpoint['name']} as {deployed_id} ({version_id})")
    return deployed_id


def _retire_others(client: VertexClient, endpoint_name: str, deployed_id: str,
                   waiting: jobs.Waiting) -> None:
    """Undeploy every other deployed model, once the new one holds all the traffic."""
    endpoint = client.get_endpoint(endpoint_name)
    share = int((endpoint.get("trafficSplit") or {}).get(deployed_id, 0))
    if share != 100:
        raise VertexError(f"deployed model {deployed_id} on {endpoint_name} gets {share}% of the "
                          "traffic, not 100%; nothing was undeployed: check the endpoint's "
                          "traffic split and re-run the step")
    for item in endpoint.get("deployedModels", []):
        if item.get("id") != deployed_id:
            jobs.wait_for_operation(
                client, client.undeploy_model(endpoint_name, {"deployedModelId": item["id"]}),
                f"undeploying {item['id']} ({item.get('displayName')}) from {endpoint_name}",
                waiting)
            print(f"undeployed {item['id']} ({item.get('displayName')}): replaced by "
                  f"{deployed_id}")
