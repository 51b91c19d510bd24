"""The local model registry: on disk, over real HTTP with the Google client, and deploy."""
from __future__ import annotations

import json
import pickle
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import joblib
import pandas as pd
import pytest
from googleapiclient.errors import HttpError
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from pipeline.local.actions.deploy import deploy
from pipeline.local.emulator.server import EmulatorServer
from pipeline.local.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ServiceError,
)
from pipeline.local.home import registry_dir, storage_root
from pipeline.local.launcher import parse_inputs
from pipeline.local.registry import Registry
from pipeline.ml_client import EMULATOR_HOST_ENV, ml_service
from pipeline.schema import (
    CATEGORICAL_COLUMNS,
    FEATURE_COLUMNS,
    LABEL_COLUMN,
    NUMERIC_COLUMNS,
    validate_frame,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "covertype.csv.gz"
BAD_NAMES = ["a'b", 'a"b', "a;b", "..", "a/../b", "a/b", "../etc", "1a", "", "a" * 129, "v1\n",
             "a b", "a-b", "a:b"]


# fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    """2,000 validated rows of the bundled Covertype data."""
    frame = pd.read_csv(DATA, nrows=2000, dtype={name: str for name in CATEGORICAL_COLUMNS})
    return validate_frame(frame, str(DATA))


def _fit(rows: pd.DataFrame, alpha: float) -> Pipeline:
    """The lab's classifier: scaled numbers and one-hot categories into a logistic SGD."""
    preprocess = ColumnTransformer([
        ("numeric", StandardScaler(), list(NUMERIC_COLUMNS)),
        ("categorical", OneHotEncoder(handle_unknown="ignore"), list(CATEGORICAL_COLUMNS)),
    ])
    model = Pipeline([("preprocess", preprocess),
                      ("classify", SGDClassifier(loss="log_loss", alpha=alpha, tol=1e-3,
                                                 max_iter=200, random_state=0))])
    return model.fit(rows[list(FEATURE_COLUMNS)], rows[LABEL_COLUMN])


@pytest.fixture(scope="module")
def artifact_files(rows: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory
                   ) -> dict[str, dict[str, bytes]]:
    """Model folders' contents: two real fitted pipelines (model.pkl, one also as
    model.joblib), and broken ones."""
    good, other = _fit(rows, 1e-4), _fit(rows, 1e-3)
    joblib_file = tmp_path_factory.mktemp("joblib") / "model.joblib"
    joblib.dump(other, joblib_file)
    return {
        "good": {"model.pkl": pickle.dumps(good)},
        "other": {"model.pkl": pickle.dumps(other)},
        "corrupt": {"model.pkl": b"this is not a pickle"},
        "truncated": {"model.pkl": pickle.dumps(good)[:500]},
        "no_predict": {"model.pkl": pickle.dumps({"weights": [1, 2]})},
        "empty": {},
        "tensorflow": {"saved_model.pb": b"\x08\x01"},
        "both": {"model.pkl": pickle.dumps(good), "model.joblib": b"x"},
        "joblib": {"model.joblib": joblib_file.read_bytes()},
    }


@pytest.fixture
def artifacts(artifact_files: dict, home: Path) -> dict[str, Path]:
    """The model folders, in the test home's storage (the registry deploys only from it)."""
    root = storage_root(home) / "artifacts"
    folders = {}
    for name, content in artifact_files.items():
        folders[name] = root / name
        folders[name].mkdir(parents=True)
        for file_name, data in content.items():
            (folders[name] / file_name).write_bytes(data)
    return folders


@pytest.fixture
def registry(home: Path) -> Registry:
    return Registry(registry_dir(home))


@pytest.fixture
def emulator(home: Path, monkeypatch: pytest.MonkeyPatch) -> EmulatorServer:
    """The ml v1 emulator on 127.0.0.1 over the test's home, and the client pointed at it."""
    with EmulatorServer(home=home) as server:
        monkeypatch.setenv(EMULATOR_HOST_ENV, server.url)
        yield server


def _tree(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


def _bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.iterdir()}


# the registry on disk ------------------------------------------------------------------------

def test_models_create_get_list_delete_on_disk(registry: Registry) -> None:
    created = registry.create_model({"name": "covertype", "description": "forest cover"})
    assert created["name"] == "projects/local/models/covertype"
    assert created["regions"] == ["us-central1"] and "defaultVersion" not in created
    on_disk = json.loads((registry.root / "covertype" / "model.json").read_text())
    assert on_disk["description"] == "forest cover" and on_disk["etag"] == created["etag"]
    assert (registry.root / "covertype" / "versions").is_dir()
    assert registry.get_model("covertype", project="my-project")["name"] == (
        "projects/my-project/models/covertype")
    assert [model["name"] for model in registry.list_models()] == [created["name"]]
    with pytest.raises(AlreadyExists, match="covertype already exists"):
        registry.create_model({"name": "covertype"})
    with pytest.raises(NotFound, match="model other not found"):
        registry.get_model("other")
    assert registry.delete_model("covertype")["name"] == created["name"]
    assert registry.list_models() == [] and not (registry.root / "covertype").exists()


def test_versions_default_resolve_and_stamp(registry: Registry, artifacts: dict) -> None:
    registry.create_model({"name": "m"})
    stamps = [registry.stamp("m")]
    first = registry.create_version("m", {"name": "v1", "deploymentUri": str(artifacts["good"]),
                                          "runtimeVersion": "1.15", "pythonVersion": "3.7"})
    stamps.append(registry.stamp("m"))
    assert first["isDefault"] is True and first["state"] == "READY"
    assert first["name"] == "projects/local/models/m/versions/v1"
    assert first["framework"] == "SCIKIT_LEARN" and first["runtimeVersion"] == "1.15"
    folder = registry.root / "m" / "versions" / "v1"
    # the artifact, its record, and the ONNX fast path made and verified at deploy time
    assert sorted(path.name for path in folder.iterdir()) == [
        "fastpath.json", "model.onnx", "model.pkl", "version.json"]
    assert json.loads((folder / "fastpath.json").read_text())["path"] == "onnx"
    assert _bytes(folder)["model.pkl"] == (artifacts["good"] / "model.pkl").read_bytes()
    assert "isDefault" not in json.loads((folder / "version.json").read_text())
    second = registry.create_version("m", {"name": "v2",
                                           "deploymentUri": str(artifacts["joblib"])})
    stamps.append(registry.stamp("m"))
    assert "isDefault" not in second
    assert registry.get_model("m")["defaultVersion"]["name"].endswith("/v1")

    record, path = registry.resolve("m")
    assert record["name"].endswith("/v1") and path == folder / "model.pkl"
    assert registry.resolve("m", "v2")[1].name == "model.joblib"
    registry.set_default("m", "v2")
    stamps.append(registry.stamp("m"))
    assert registry.resolve("m")[0]["name"].endswith("/v2")
    assert [version.get("isDefault", False) for version in registry.list_versions("m")] == [
        False, True]
    assert len(set(stamps)) == len(stamps) and registry.stamp("absent") is None


def test_delete_rules_follow_the_cloud(registry: Registry, artifacts: dict) -> None:
    registry.create_model({"name": "m"})
    for version in ("v1", "v2"):
        registry.create_version("m", {"name": version, "deploymentUri": str(artifacts["good"])})
    with pytest.raises(FailedPrecondition, match="v1 is the default of model m"):
        registry.delete_version("m", "v1")
    with pytest.raises(FailedPrecondition, match=r"still has versions \(v1, v2\)"):
        registry.delete_model("m")
    registry.delete_version("m", "v2")
    registry.delete_version("m", "v1")  # the default, now the last one
    assert "defaultVersion" not in registry.get_model("m")
    with pytest.raises(FailedPrecondition, match="no default version"):
        registry.resolve("m")
    with pytest.raises(NotFound):
        registry.get_version("m", "v1")
    registry.delete_model("m")
    assert _tree(registry.root) == [".lock"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_names_refused_before_touching_disk(registry: Registry, artifacts: dict,
                                                    name: str) -> None:
    registry.create_model({"name": "m"})
    before = _tree(registry.root)
    good = str(artifacts["good"])
    calls = [lambda: registry.create_model({"name": name}),
             lambda: registry.create_version("m", {"name": name, "deploymentUri": good}),
             lambda: registry.create_version(name, {"name": "v1", "deploymentUri": good}),
             lambda: registry.get_model(name), lambda: registry.delete_model(name),
             lambda: registry.get_version("m", name), lambda: registry.set_default("m", name),
             lambda: registry.delete_version("m", name), lambda: registry.resolve(name),
             lambda: registry.stamp(name)]
    for call in calls:
        with pytest.raises(InvalidArgument, match="name .* is invalid") as error:
            call()
        assert "\n" not in str(error.value)
    assert _tree(registry.root) == before


@pytest.mark.parametrize(("folder", "message"), [
    ("corrupt", "does not load"), ("truncated", "does not load"),
    ("no_predict", "holds a dict, which has no predict"), ("empty", "holds no model.pkl"),
    ("tensorflow", "TensorFlow models are not served locally"), ("both", "keep only one"),
    ("missing", "is not a folder"), ("good/model.pkl", "is not a folder"),
])
def test_bad_artifacts_leave_nothing(registry: Registry, artifacts: dict, folder: str,
                                     message: str) -> None:
    registry.create_model({"name": "m"})
    before, stamp = _tree(registry.root), registry.stamp("m")
    uri = artifacts["good"].parent / folder
    with pytest.raises(FailedPrecondition, match=message) as error:
        registry.create_version("m", {"name": "v1", "deploymentUri": str(uri)})
    assert "\n" not in str(error.value)
    assert _tree(registry.root) == before and registry.stamp("m") == stamp


@pytest.mark.parametrize(("body", "message"), [
    ({"name": "v1", "deploymentUri": "relative/folder"}, "is relative"),
    ({"name": "v1"}, "deploymentUri is required"),
    ({"name": "v1", "deploymentUri": "/x"}, "is outside the project's storage"),
    ({"name": "v1", "deploymentUri": "{storage}/x", "framework": "TENSORFLOW"},
     "is not served locally"),
    ({"name": "v1", "deploymentUri": "{storage}/x", "predictionClass": "a.B"},
     "custom prediction code"),
    ({"name": "v1", "deploymentUri": "{storage}/x", "deploymentUrl": "/x"}, "unknown field"),
])
def test_bad_version_bodies(registry: Registry, home: Path, body: dict, message: str) -> None:
    registry.create_model({"name": "m"})
    if "deploymentUri" in body:
        body = {**body, "deploymentUri": body["deploymentUri"].format(storage=storage_root(home))}
    with pytest.raises(InvalidArgument, match=message):
        registry.create_version("m", body)
    assert registry.list_versions("m") == []


def test_interrupted_work_is_invisible(registry: Registry, artifacts: dict) -> None:
    """What a kill -9 leaves behind (staging folders, temp files) is never listed."""
    registry.create_model({"name": "m"})
    staging = registry.root / "m" / ".staging-dead"
    staging.mkdir()
    (staging / "model.pkl").write_bytes((artifacts["good"] / "model.pkl").read_bytes())
    (staging / "version.json").write_text("{}")
    (registry.root / ".new-dead").mkdir()
    (registry.root / "m" / ".model.json.dead.tmp").write_text("{")
    assert registry.list_versions("m") == []
    assert [model["name"] for model in registry.list_models()] == ["projects/local/models/m"]


def test_concurrent_creates_keep_one_default(registry: Registry, artifacts: dict) -> None:
    registry.create_model({"name": "m"})
    names = [f"v{index}" for index in range(6)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda name: registry.create_version(
            "m", {"name": name, "deploymentUri": str(artifacts["good"])}), names))
    versions = registry.list_versions("m")
    assert [version["name"].rsplit("/", 1)[1] for version in versions] == names
    assert sum(bool(version.get("isDefault")) for version in versions) == 1


# the ml v1 REST routes, with the real Google client ------------------------------------------

def test_http_models_and_versions(emulator: EmulatorServer, artifacts: dict) -> None:
    models = ml_service().projects().models()
    assert models.list(parent="projects/test-project").execute() == {}
    model = models.create(parent="projects/test-project",
                          body={"name": "m", "labels": {"team": "forest"}}).execute()
    assert model["name"] == "projects/test-project/models/m" and model["labels"]["team"] == "forest"
    assert models.get(name="projects/test-project/models/m").execute()["name"] == model["name"]

    operation = models.versions().create(
        parent="projects/test-project/models/m",
        body={"name": "v1", "deploymentUri": str(artifacts["good"]),
              "runtimeVersion": "1.15"}).execute()
    assert operation["done"] is True and operation["name"].startswith(
        "projects/test-project/operations/create_m_v1")
    assert operation["metadata"]["operationType"] == "CREATE_VERSION"
    assert operation["response"]["name"] == "projects/test-project/models/m/versions/v1"
    assert operation["response"]["isDefault"] is True
    models.versions().create(parent="projects/test-project/models/m",
                             body={"name": "v2", "deploymentUri": str(artifacts["other"])}
                             ).execute()
    listed = models.versions().list(parent="projects/test-project/models/m").execute()
    assert [version["name"][-2:] for version in listed["versions"]] == ["v1", "v2"]
    assert "nextPageToken" not in listed
    page = models.versions().list(parent="projects/test-project/models/m", pageSize=1).execute()
    following = models.versions().list_next(
        models.versions().list(parent="projects/test-project/models/m", pageSize=1), page
    ).execute()
    assert [page["versions"][0]["name"][-2:], following["versions"][0]["name"][-2:]] == ["v1", "v2"]
    assert models.get(name="projects/test-project/models/m").execute()["defaultVersion"][
        "name"].endswith("/v1")
    assert models.list(parent="projects/test-project").execute()["models"][0]["name"] == (
        model["name"])

    with pytest.raises(HttpError) as error:
        models.versions().delete(name="projects/test-project/models/m/versions/v1").execute()
    assert error.value.resp.status == 400 and "FAILED_PRECONDITION" in error.value.content.decode()
    default = models.versions().setDefault(
        name="projects/test-project/models/m/versions/v2", body={}).execute()
    assert default["isDefault"] is True and default["name"].endswith("/v2")
    deleted = models.versions().delete(name="projects/test-project/models/m/versions/v1").execute()
    assert deleted["done"] is True and deleted["metadata"]["operationType"] == "DELETE_VERSION"
    models.versions().delete(name="projects/test-project/models/m/versions/v2").execute()
    assert models.delete(name="projects/test-project/models/m").execute()["done"] is True
    with pytest.raises(HttpError) as error:
        models.get(name="projects/test-project/models/m").execute()
    assert error.value.resp.status == 404


def test_http_set_default_route_does_not_swallow_get(emulator: EmulatorServer,
                                                     artifacts: dict) -> None:
    versions = ml_service().projects().models().versions()
    ml_service().projects().models().create(parent="projects/p", body={"name": "m"}).execute()
    for name in ("v1", "v2"):
        versions.create(parent="projects/p/models/m",
                        body={"name": name, "deploymentUri": str(artifacts["good"])}).execute()
    got = versions.get(name="projects/p/models/m/versions/v2").execute()
    assert got["name"] == "projects/p/models/m/versions/v2" and "isDefault" not in got
    base = f"{emulator.url}/v1/projects/p/models/m/versions"
    assert httpx.post(f"{base}/v2:setDefault", json={}).json()["isDefault"] is True
    wrong = httpx.get(f"{base}/v2:setDefault")
    assert wrong.status_code == 400 and wrong.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert httpx.get(f"{base}/v2").json()["isDefault"] is True
    assert httpx.post(f"{base}/v1:setDefault").json()["name"].endswith("/v1")  # no body


def test_http_errors_change_nothing(emulator: EmulatorServer, artifacts: dict,
                                    home: Path) -> None:
    models = ml_service().projects().models()
    root = registry_dir(home)

    def status(request: object) -> tuple[int, str]:
        with pytest.raises(HttpError) as error:
            request.execute()
        body = json.loads(error.value.content)["error"]
        assert "\n" not in body["message"]
        return error.value.resp.status, body["status"]

    for name in BAD_NAMES[:8]:
        assert status(models.create(parent="projects/p", body={"name": name})) == (
            400, "INVALID_ARGUMENT")
    assert not root.exists() or [p for p in root.iterdir() if p.name != ".lock"] == []
    models.create(parent="projects/p", body={"name": "m"}).execute()
    before = _tree(root)
    for name in BAD_NAMES[:8]:
        body = {"name": name, "deploymentUri": str(artifacts["good"])}
        assert status(models.versions().create(parent="projects/p/models/m", body=body)) == (
            400, "INVALID_ARGUMENT")
    for folder in ("corrupt", "empty", "tensorflow"):
        body = {"name": "v1", "deploymentUri": str(artifacts[folder])}
        assert status(models.versions().create(parent="projects/p/models/m", body=body)) == (
            400, "FAILED_PRECONDITION")
    assert status(models.get(name="projects/p/models/a;b")) == (400, "INVALID_ARGUMENT")
    assert status(models.get(name="projects/p/models/absent")) == (404, "NOT_FOUND")
    assert status(models.create(parent="projects/p", body={"name": "m"})) == (
        409, "ALREADY_EXISTS")
    assert status(models.create(parent="projects/p", body={"name": "n", "nmae": "x"})) == (
        400, "INVALID_ARGUMENT")
    assert status(models.list(parent="projects/p", pageToken="bogus!")) == (
        400, "INVALID_ARGUMENT")
    assert _tree(root) == before


# the deploy action ---------------------------------------------------------------------------

def _deploy(folder: Path, version_id: str = "v01", **inputs: str) -> dict[str, str]:
    """The deploy action called the way the launcher calls it: every input the text of its
    flag, parsed as the 0.2.5 launcher's fire parses it."""
    return deploy(**parse_inputs({
        "model_uri": str(folder), "project_id": "test-project", "model_id": "covertype_classifier",
        "version_id": version_id, "runtime_version": "1.15", "python_version": "3.7", **inputs}))


def test_deploy_end_to_end(emulator: EmulatorServer, artifacts: dict, registry: Registry,
                           rows: pd.DataFrame) -> None:
    outputs = _deploy(artifacts["good"], replace_existing_version="True")
    assert outputs == {"model_uri": str(artifacts["good"]),
                       "model_name": "projects/test-project/models/covertype_classifier",
                       "version_name": "projects/test-project/models/covertype_classifier/"
                                       "versions/v01"}
    record, artifact = registry.resolve("covertype_classifier")
    assert record["isDefault"] and record["runtimeVersion"] == "1.15"
    assert record["pythonVersion"] == "3.7" and record["framework"] == "SCIKIT_LEARN"
    served = pickle.loads(artifact.read_bytes())
    original = pickle.loads((artifacts["good"] / "model.pkl").read_bytes())
    sample = rows[list(FEATURE_COLUMNS)].head(200)
    assert (served.predict(sample) == original.predict(sample)).all()


@pytest.mark.parametrize("flag", ["False", "Fasle"])
def test_deploy_without_replace_refuses_and_keeps_the_version(
        emulator: EmulatorServer, artifacts: dict, registry: Registry, flag: str) -> None:
    _deploy(artifacts["good"])
    folder = registry.root / "covertype_classifier" / "versions" / "v01"
    before = _bytes(folder)
    with pytest.raises(ValueError, match=r"version .*/versions/v01 already exists; set "
                                         r"replace_existing_version=True .* new version_id"):
        _deploy(artifacts["other"], replace_existing_version=flag)
    assert _bytes(folder) == before
    _deploy(artifacts["good"], replace_existing_version=flag)  # a retry of the same step
    assert _bytes(folder) == before


def test_deploy_replace_keeps_the_model_served(emulator: EmulatorServer, artifacts: dict,
                                               registry: Registry) -> None:
    _deploy(artifacts["good"])
    failures, done = [], threading.Event()

    def predict_path_watcher() -> None:
        while not done.is_set():
            try:
                registry.resolve("covertype_classifier")
            except ServiceError as error:
                failures.append(error)

    watcher = threading.Thread(target=predict_path_watcher)
    watcher.start()
    try:
        _deploy(artifacts["other"], replace_existing_version="True")
    finally:
        done.set()
        watcher.join()
    assert failures == []
    record, artifact = registry.resolve("covertype_classifier")
    assert record["name"].endswith("/v01") and record["deploymentUri"] == str(artifacts["other"])
    assert artifact.read_bytes() == (artifacts["other"] / "model.pkl").read_bytes()
    assert [v["name"][-3:] for v in registry.list_versions("covertype_classifier")] == ["v01"]

    _deploy(artifacts["good"], version_id="v02")  # another version; v01 stays the default
    _deploy(artifacts["good"], replace_existing_version="True")
    assert registry.resolve("covertype_classifier")[0]["name"].endswith("/v01")
    assert [v["name"][-3:] for v in registry.list_versions("covertype_classifier")] == [
        "v01", "v02"]


def test_deploy_set_default_and_stable_default_ids(emulator: EmulatorServer, artifacts: dict,
                                                   registry: Registry,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _deploy(artifacts["good"])
    _deploy(artifacts["other"], version_id="v02", set_default="True")
    assert registry.resolve("covertype_classifier")[0]["name"].endswith("/v02")

    named = deploy(model_uri=str(artifacts["good"]), project_id="test-project",
                   model_id="covertype-classifier", version='{"name": "v.03"}')
    assert named["version_name"] == ("projects/test-project/models/covertype_classifier/"
                                      "versions/v_03")  # upstream normalize_name

    monkeypatch.setenv("KFP_POD_NAME", "run-1-deploy-model")
    first = deploy(model_uri=str(artifacts["good"]), project_id="test-project")
    again = deploy(model_uri=str(artifacts["good"]), project_id="test-project")  # a retry
    assert first == again
    assert first["version_name"].startswith(first["model_name"] + "/versions/ver_")
    assert first["model_name"].startswith("projects/test-project/models/model_")


@pytest.mark.parametrize(("folder", "inputs", "message"), [
    ("empty", {}, "holds no model.pkl or model.joblib"),
    ("tensorflow", {}, "holds no model.pkl or model.joblib"),
    ("missing", {}, "cannot be listed"),
    ("good/model.pkl", {}, "is not a folder"),
    ("good", {"replace_existing_version": "yes"}, "is not a boolean"),
    # fire keeps 'false' as text, which the 0.2.5 deploy would read as true
    ("good", {"replace_existing_version": "false"}, "is not a boolean"),
    ("good", {"set_default": "1"}, "is not a boolean"),
    ("good", {"model": "[1]"}, r"model is list \[1\], not an object"),
    ("good", {"version": "{nope"}, "version is neither JSON nor a Python literal"),
    ("good", {"model_id": "123"}, "model_id is a number once the launcher has parsed it"),
    ("good", {"wait_interval": "soon"}, "is not a whole number >= 1"),
])
def test_deploy_refuses_bad_inputs_before_any_change(emulator: EmulatorServer, artifacts: dict,
                                                     registry: Registry, folder: str,
                                                     inputs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        _deploy(artifacts["good"].parent / folder, **inputs)
    assert "\n" not in str(error.value)
    assert registry.list_models() == []


def test_deploy_of_a_corrupt_artifact_leaves_no_model(emulator: EmulatorServer, artifacts: dict,
                                                      registry: Registry) -> None:
    with pytest.raises(HttpError) as error:
        _deploy(artifacts["corrupt"])
    assert error.value.resp.status == 400 and "does not load" in error.value._get_reason()
    assert registry.list_models() == []
    assert [path.name for path in registry.root.iterdir()] == [".lock"]
