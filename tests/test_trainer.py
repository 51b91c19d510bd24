"""Tests of trainer_image/train.py (run as AI Platform runs it) and the image requirements."""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pipeline import schema
from pipeline.trainer import TRAIN_PY, load_trainer

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "covertype.csv.gz"
TRAIN_ROWS, VALIDATION_ROWS = 3000, 1000
SHARED_LIBRARIES = ("scikit-learn", "pandas", "numpy", "gcsfs", "fsspec")

trainer = load_trainer()

@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> dict[str, Path]:
    """3,000 training and 1,000 validation rows of the real data, as split CSVs."""
    folder = tmp_path_factory.mktemp("sample")
    rows = pd.read_csv(DATA, nrows=TRAIN_ROWS + VALIDATION_ROWS)
    paths = {"train": folder / "train.csv", "validation": folder / "validation.csv"}
    rows.iloc[:TRAIN_ROWS].to_csv(paths["train"], index=False)
    rows.iloc[TRAIN_ROWS:].to_csv(paths["validation"], index=False)
    return paths

@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    """Environment of a trial: its own home and hypertune metric file under tmp_path."""
    return {
        **os.environ,
        "COVERTYPE_HOME": str(tmp_path / "home"),
        "CLOUD_ML_HP_METRIC_FILE": str(tmp_path / "hypertune" / "output.metrics"),
    }

def run_trainer(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-u", str(TRAIN_PY), *map(str, args)],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=120,
    )

def test_hptune_reports_the_validation_accuracy(sample, env, tmp_path):
    job_dir = tmp_path / "job"
    result = run_trainer(
        ["--training_dataset_path", sample["train"], "--validation_dataset_path",
         sample["validation"], "--hptune", "True", "--job-dir", job_dir,
         "--alpha=0.0003", "--max_iter=500"],
        env, tmp_path,
    )
    assert result.returncode == 0, result.stderr

    lines = Path(env["CLOUD_ML_HP_METRIC_FILE"]).read_text().splitlines()
    metric = json.loads(lines[-1])
    reported = float(metric["accuracy"])
    train = schema.read_dataset(str(sample["train"]))
    validation = schema.read_dataset(str(sample["validation"]))
    model = trainer.build_model(0.0003, 500)
    model.fit(trainer.model_input(train), train[schema.LABEL_COLUMN])
    expected = model.score(trainer.model_input(validation), validation[schema.LABEL_COLUMN])
    assert 0.3 < reported < 1
    assert reported == pytest.approx(expected, abs=1e-12)
    assert metric["global_step"] == str(model.named_steps["classifier"].n_iter_)
    assert f"accuracy={expected:.6f}" in result.stdout
    assert not job_dir.exists()  # a trial saves no model

def test_final_fit_saves_a_loadable_model(sample, env, tmp_path):
    job_dir = tmp_path / "nested" / "job"
    result = run_trainer(
        ["--job-dir", job_dir, "--training_dataset_path", sample["train"],
         "--validation_dataset_path", sample["validation"], "--hptune", "false",
         "--alpha=0.0001", "--max_iter=1000"],
        env, tmp_path,
    )
    assert result.returncode == 0, result.stderr

    assert sorted(path.name for path in job_dir.iterdir()) == ["model.pkl"]  # no temp file left
    model = pickle.loads((job_dir / "model.pkl").read_bytes())
    # The final fit saw training + validation: its scaler and encoder learned from both files,
    # read here with pandas alone.
    train, validation = pd.read_csv(sample["train"]), pd.read_csv(sample["validation"])
    both = pd.concat([train, validation])
    preprocessor = model.named_steps["preprocessor"]
    scaler = preprocessor.named_transformers_["num"]
    numeric = list(schema.NUMERIC_COLUMNS)
    assert scaler.n_samples_seen_ == len(both) == TRAIN_ROWS + VALIDATION_ROWS
    assert scaler.mean_ == pytest.approx(both[numeric].mean().to_numpy(), rel=1e-12)
    assert scaler.mean_ != pytest.approx(train[numeric].mean().to_numpy(), rel=1e-6)
    encoder = preprocessor.named_transformers_["cat"]
    for column, categories in zip(schema.CATEGORICAL_COLUMNS, encoder.categories_, strict=True):
        assert list(categories) == sorted(both[column].astype(str).unique())
    assert list(model.classes_) == sorted(both[schema.LABEL_COLUMN].unique())
    assert set(model.predict(trainer.model_input(validation))) <= set(schema.CLASSES)
    assert not Path(env["CLOUD_ML_HP_METRIC_FILE"]).exists()

def test_on_vertex_the_final_fit_saves_the_model_in_aip_model_dir(sample, env, tmp_path):
    """Vertex AI passes no --job-dir; it sets AIP_MODEL_DIR (ending in /model/)."""
    model_dir = tmp_path / "base" / "model"
    env["AIP_MODEL_DIR"] = f"{model_dir}/"
    result = run_trainer(
        ["--training_dataset_path", sample["train"], "--validation_dataset_path",
         sample["validation"], "--hptune", "False", "--alpha=0.0002", "--max_iter=600"],
        env, tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in model_dir.iterdir()) == ["model.pkl"]
    model = pickle.loads((model_dir / "model.pkl").read_bytes())
    assert model.named_steps["classifier"].get_params()["alpha"] == 0.0002
    assert f"saved {model_dir}/model.pkl alpha=0.0002 max_iter=600" in result.stdout

def test_aip_model_dir_wins_over_job_dir(sample, env, tmp_path):
    env["AIP_MODEL_DIR"] = str(tmp_path / "aip")
    result = run_trainer(
        ["--job-dir", tmp_path / "job", "--training_dataset_path", sample["train"],
         "--validation_dataset_path", sample["validation"], "--hptune", "False"],
        env, tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "aip" / "model.pkl").is_file() and not (tmp_path / "job").exists()

def test_a_vertex_trial_needs_no_model_folder(sample, env, tmp_path):
    env.pop("AIP_MODEL_DIR", None)
    result = run_trainer(
        ["--training_dataset_path", sample["train"], "--validation_dataset_path",
         sample["validation"], "--hptune", "True", "--alpha=0.0003", "--max_iter=500.0"],
        env, tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert Path(env["CLOUD_ML_HP_METRIC_FILE"]).is_file()

def test_a_final_fit_without_a_model_folder_is_refused(sample, env, tmp_path):
    env.pop("AIP_MODEL_DIR", None)
    result = run_trainer(
        ["--training_dataset_path", sample["train"], "--validation_dataset_path",
         sample["validation"], "--hptune", "False"],
        env, tmp_path,
    )
    assert result.returncode == 1
    assert result.stderr == ("train.py: error: no folder for the model: pass --job-dir or set "
                             "AIP_MODEL_DIR\n")

def _drop_soil_type(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=["Soil_Type"])

def _bad_elevation(frame: pd.DataFrame) -> pd.DataFrame:
    frame["Elevation"] = frame["Elevation"].astype(object)
    frame.loc[4, "Elevation"] = "high"
    return frame

def _label_seven(frame: pd.DataFrame) -> pd.DataFrame:
    frame.loc[1, schema.LABEL_COLUMN] = 7
    return frame

@pytest.mark.parametrize(
    ("edit", "flags", "message"),
    [
        (_drop_soil_type, [], "column 'Soil_Type' is missing"),
        (_bad_elevation, [], "row 5 column 'Elevation' has 'high'"),
        (_label_seven, [], "row 2 has Cover_Type=7"),
        ("ragged", [], "not a well-formed CSV"),
        ("missing", [], "no such file"),
        (None, ["--alpha=0"], "--alpha=0 must be a finite number > 0"),
        (None, ["--alpha=-0.001"], "--alpha=-0.001 must be a finite number > 0"),
        (None, ["--alpha=abc"], "--alpha='abc' is not a number"),
        (None, ["--max_iter=0"], "--max_iter=0 must be >= 1"),
        (None, ["--max_iter=2.5"], "--max_iter=2.5 is not a whole number"),
        (None, ["--hptune", "maybe"], "--hptune='maybe' is not a boolean"),
    ],
    ids=["missing-column", "bad-value", "bad-label", "ragged", "missing-file", "alpha-zero",
         "alpha-negative", "alpha-text", "max-iter-zero", "max-iter-fraction", "bad-hptune"],
)
def test_bad_input_fails_in_one_line_and_writes_nothing(sample, env, tmp_path, edit, flags,
                                                        message):
    validation = tmp_path / "validation.csv"
    if edit == "ragged":
        text = sample["validation"].read_text().splitlines()
        text[3] += ",42"
        validation.write_text("\n".join(text) + "\n")
    elif edit == "missing":
        validation = tmp_path / "no-such.csv"
    elif edit is not None:
        edit(pd.read_csv(sample["validation"])).to_csv(validation, index=False)
    else:
        shutil.copy(sample["validation"], validation)
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    result = run_trainer(
        ["--job-dir", job_dir, "--training_dataset_path", sample["train"],
         "--validation_dataset_path", validation, *flags],
        env, tmp_path,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("train.py: error: ")
    assert message in lines[0]
    if edit is not None:
        assert str(validation) in lines[0]  # names the file
    assert list(job_dir.iterdir()) == []
    assert not Path(env["CLOUD_ML_HP_METRIC_FILE"]).exists()

@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), ("True", True), ("true", True), ("YES", True), ("1", True), (1, True),
     (False, False), ("False", False), ("no", False), ("0", False), (0, False), ("f", False)],
)
def test_hptune_accepts_the_usual_bool_spellings(value, expected):
    assert trainer.parse_bool("hptune", value) is expected

@pytest.mark.parametrize("value", ["maybe", 2, "", None])
def test_hptune_rejects_other_values(value):
    with pytest.raises(ValueError, match="is not a boolean; pass True or False"):
        trainer.parse_bool("hptune", value)

def test_staged_image_layout_starts_without_heavy_imports(tmp_path, env):
    """The image's WORKDIR (train.py + pipeline/{__init__,schema}.py) is enough to start."""
    app = tmp_path / "app"
    (app / "pipeline").mkdir(parents=True)
    shutil.copy(TRAIN_PY, app / "train.py")
    for name in ("__init__.py", "schema.py"):
        shutil.copy(REPO / "pipeline" / name, app / "pipeline" / name)
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-u", "train.py", "--help"],
        capture_output=True, text=True, env=env, cwd=app, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "--max_iter" in result.stdout + result.stderr
    imported = set(re.findall(r"\|\s+(\S+)$", result.stderr, re.MULTILINE))
    assert "pipeline.schema" in imported
    assert not imported & {"pandas", "sklearn", "fsspec", "numpy"}

@pytest.fixture
def gcs_bucket(env, monkeypatch):
    """A bucket on an in-process gcp-storage-emulator; yields (bucket, gcsfs filesystem)."""
    from gcp_storage_emulator.server import create_server
    from gcsfs.core import GCSFileSystem

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket="covertype-test")
    server.start()
    # The emulator speaks no gRPC: keep gcsfs off its bucket-layout lookup.
    env["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    env["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", env["STORAGE_EMULATOR_HOST"])
    try:
        yield "covertype-test", GCSFileSystem(token="anon", skip_instance_cache=True)
    finally:
        server.stop()

def test_gs_paths_read_and_write_through_fsspec(sample, env, tmp_path, gcs_bucket):
    bucket, fs = gcs_bucket
    fs.put(str(sample["train"]), f"{bucket}/datasets/training/data.csv")
    fs.put(str(sample["validation"]), f"{bucket}/datasets/validation/data.csv")
    result = run_trainer(
        ["--job-dir", f"gs://{bucket}/jobdir/1",
         "--training_dataset_path", f"gs://{bucket}/datasets/training/data.csv",
         "--validation_dataset_path", f"gs://{bucket}/datasets/validation/data.csv",
         "--hptune", "False"],
        env, tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert f"saved gs://{bucket}/jobdir/1/model.pkl" in result.stdout
    model = pickle.loads(fs.cat(f"{bucket}/jobdir/1/model.pkl"))
    assert list(model.classes_) == list(schema.CLASSES)

def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            name, separator, version = line.partition("==")
            assert separator, f"{path}: {line!r} is not pinned with =="
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins

def test_image_requirements_pin_the_same_shared_versions():
    trainer_pins = _pins(REPO / "trainer_image" / "requirements.txt")
    base_pins = _pins(REPO / "base_image" / "requirements.txt")
    repo_pins = _pins(REPO / "requirements.txt")
    for name in SHARED_LIBRARIES:
        assert trainer_pins[name] == base_pins[name], name
    for name in trainer_pins.keys() & base_pins.keys():
        assert trainer_pins[name] == base_pins[name], name
    for pins in (trainer_pins, base_pins):
        for name in pins.keys() & repo_pins.keys():
            assert pins[name] == repo_pins[name], name
