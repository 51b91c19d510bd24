"""The run browser over real HTTP: runs list, run pages, logs, JSON, 404s, and a real browser.

Run folders are written with the real RunStore; the tuning job records have the layout that
local homes written before the two-API training core hold (read through its upgrade, so this
also checks that older homes still show their jobs); the confusion matrix is computed by
sklearn on generated labels. A Vertex AI run: tests/test_vertex_browser.py.
"""
from __future__ import annotations

import json
import re
import struct
import subprocess
import zlib
from dataclasses import asdict
from pathlib import Path

import httpx
import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

from pipeline.local import records
from pipeline.local.browser import graph, trials
from pipeline.local.browser.evaluation import HEAT_BOUNDS
from pipeline.local.emulator.server import EmulatorServer
from pipeline.local.home import jobs_dir, runs_dir
from pipeline.local.records import RunRecord, RunStore, StepRecord
from pipeline.schema import CLASS_NAMES

CHROMIUM = Path("/usr/bin/chromium")
# The compiled pipeline's tasks: (name, dependencies, parent sub-DAG).
TOPOLOGY = [
    ("create-splits-dataset", [], ""),
    ("create-training-split", ["create-splits-dataset"], ""),
    ("create-validation-split", ["create-splits-dataset"], ""),
    ("create-testing-split", ["create-splits-dataset"], ""),
    ("tune-hyperparameters", ["create-training-split", "create-validation-split"], ""),
    ("retrieve-best-run", ["tune-hyperparameters"], ""),
    ("train-final-model",
     ["create-training-split", "create-validation-split", "retrieve-best-run"], ""),
    ("evaluate-model", ["create-testing-split", "train-final-model"], ""),
    ("condition-1", ["evaluate-model", "train-final-model"], ""),
    ("deploy-model", [], "condition-1"),
]
# What the DAG engine records of each step: the component it runs and its role (roles.py).
COMPONENTS = {"create-splits-dataset": ("gcp/bigquery/query", "query"),
              "create-training-split": ("gcp/bigquery/query", "query"),
              "create-validation-split": ("gcp/bigquery/query", "query"),
              "create-testing-split": ("gcp/bigquery/query", "query"),
              "tune-hyperparameters": ("gcp/ml_engine/train", "tuning"),
              "train-final-model": ("gcp/ml_engine/train", "training"),
              "evaluate-model": ("", "evaluation"),
              "deploy-model": ("gcp/ml_engine/deploy", "deploy")}
SUCCEEDED_ID, FAILED_ID, SKIPPED_ID, RUNNING_ID, BARE_ID, CORRUPT_ID = (
    "20261126-070000-aaaaaa", "20261126-080000-bbbbbb", "20261126-090000-cccccc",
    "20261126-100000-dddddd", "20261125-000000-eeeeee", "20261125-000000-ffffff")
VERSION = "projects/local/models/covertype_classifier/versions/v01"
SCRIPT = "<script>alert('x')</script>"
OBJECTIVES = {"1": 0.7012, "2": 0.7134, "3": 0.6921, "4": 0.7088, "5": 0.7050}  # 6 fails
PARAMETERS = {"project_id": "local", "gcs_root": "/tmp/gcs", "evaluation_metric_name": "accuracy",
              "evaluation_metric_threshold": "0.69", "model_id": "covertype_classifier",
              "version_id": "v01",
              "hypertune_settings": '{"hyperparameters": {"goal": "MAXIMIZE"}}'}


def _matrix() -> np.ndarray:
    """A realistic 7-class confusion matrix: most predictions right, some confusions."""
    rng = np.random.default_rng(7)
    truth = rng.choice(7, size=700, p=[0.3, 0.35, 0.08, 0.05, 0.07, 0.07, 0.08])
    noise = rng.integers(0, 7, size=truth.size)
    predicted = np.where(rng.random(truth.size) < 0.86, truth, noise)
    return confusion_matrix(truth, predicted, labels=list(range(7)))


MATRIX = _matrix()


def _step_status(statuses: dict[str, str], default: str) -> dict[str, StepRecord]:
    steps = {}
    for index, (name, deps, parent) in enumerate(TOPOLOGY):
        status = statuses.get(name, default)
        ran = status in (records.SUCCEEDED, records.FAILED, records.RUNNING)
        steps[name] = StepRecord(
            name=name, template=name, status=status, dependencies=deps, parent=parent,
            start=f"2026-11-26T07:00:{index:02d}.000Z" if ran else "",
            end=f"2026-11-26T07:01:{index:02d}.000Z" if ran and status != records.RUNNING else "",
            duration_s=60.0 + index if ran and status != records.RUNNING else None,
            attempts=1 if ran else 0)
        steps[name].component, steps[name].role = COMPONENTS.get(name, ("", ""))
    return steps


def _artifact(store: RunStore, record: RunRecord, step: str, name: str, text: str) -> None:
    """Write an output file where the runner keeps it and record it as the step's artifact."""
    path = store.folder(record.run_id) / "steps" / step / "root" / "tmp" / "outputs" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    record.steps[step].artifacts[name] = str(path)


def _logs(store: RunStore, record: RunRecord) -> None:
    for step in record.steps.values():
        if step.status in (records.SUCCEEDED, records.FAILED) and step.name != "condition-1":
            step.log = f"steps/{step.name}/log.txt"
            path = store.folder(record.run_id) / step.log
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"log of {step.name}\n{SCRIPT}\n")


def _evaluation(store: RunStore, record: RunRecord, value: float) -> None:
    step = record.steps["evaluate-model"]
    step.outputs["evaluate-model-metric_value"] = str(value)
    _artifact(store, record, "evaluate-model", "evaluate-model-metric_name", "accuracy")
    metrics = [{"name": "accuracy", "numberValue": value, "format": "RAW"},
               {"name": "f1", "numberValue": 0.52, "format": "RAW"}]
    _artifact(store, record, "evaluate-model", "mlpipeline-metrics",
              json.dumps({"metrics": metrics}))
    source = "".join(f"{CLASS_NAMES[t]},{CLASS_NAMES[p]},{MATRIX[t][p]}\n"
                     for t in range(7) for p in range(7))
    outputs = [{"type": "confusion_matrix", "format": "csv", "storage": "inline",
                "schema": [{"name": "target", "type": "CATEGORY"},
                           {"name": "predicted", "type": "CATEGORY"},
                           {"name": "count", "type": "NUMBER"}],
                "labels": list(CLASS_NAMES), "source": source},
               {"type": "table", "format": "csv", "storage": "inline",
                "header": ["metric", "value"], "source": f"accuracy,{value}\n"}]
    _artifact(store, record, "evaluate-model", "mlpipeline-ui-metadata",
              json.dumps({"outputs": outputs}))


def _job(home: Path, job_id: str, run_id: str, state: str = "SUCCEEDED",
         last: str = "FAILED") -> None:
    """A tuning job as the local training service stores it; trial 6 ends (or is) `last`."""
    job_trials = []
    for trial_id in ("1", "2", "3", "4", "5", "6"):
        trial = {"trialId": trial_id, "state": "SUCCEEDED" if trial_id in OBJECTIVES else last,
                 "hyperparameters": {"alpha": f"0.000{trial_id}12345678", "max_iter": "500"},
                 "startTime": "2026-11-26T07:02:00.000000Z",
                 "endTime": f"2026-11-26T07:02:{10 + int(trial_id):02d}.500000Z"}
        if trial_id in OBJECTIVES:
            trial["finalMetric"] = {"trainingStep": "0", "objectiveValue": OBJECTIVES[trial_id]}
        job_trials.append(trial)
    job = {"jobId": job_id, "state": state, "createTime": "2026-11-26T07:01:59Z",
           "trainingInput": {"masterConfig": {"imageUri": "covertype/trainer_image:latest"},
                             "jobDir": f"/tmp/gcs/jobdir/hypertune/{run_id}",
                             "hyperparameters": {"goal": "MAXIMIZE", "maxTrials": 6,
                                                 "hyperparameterMetricTag": "accuracy"}},
           "trainingOutput": {"trials": job_trials, "completedTrialCount": "5",
                              "isHyperparameterTuningJob": True,
                              "hyperparameterMetricTag": "accuracy"}}
    folder = jobs_dir(home) / job_id
    folder.mkdir(parents=True)
    (folder / "job.json").write_text(json.dumps(
        {"project": "local", "owner": {"pid": 1, "startTicks": None}, "job": job,
         "trialDetails": {}}))


def _write_runs(home: Path) -> None:
    store = RunStore(runs_dir(home))
    ok = RunRecord(SUCCEEDED_ID, "covertype-classifier-training", "p.yaml", dict(PARAMETERS),
                   status=records.SUCCEEDED, start="2026-11-26T07:00:00.000Z",
                   end="2026-11-26T07:12:05.000Z", duration_s=725.0,
                   steps=_step_status({}, records.SUCCEEDED))
    ok.steps["tune-hyperparameters"].outputs["tune-hyperparameters-job_id"] = "tune_ok"
    ok.steps["retrieve-best-run"].outputs.update(
        {"retrieve-best-run-alpha": "0.0002123", "retrieve-best-run-max_iter": "500"})
    _artifact(store, ok, "retrieve-best-run", "retrieve-best-run-metric_value", "0.7134")
    _evaluation(store, ok, 0.7134)
    _artifact(store, ok, "deploy-model", "deploy-model-version_name", VERSION)
    _logs(store, ok)
    store.save(ok)
    _job(home, "tune_ok", SUCCEEDED_ID)

    failed = RunRecord(FAILED_ID, "covertype-classifier-training", "p.yaml", dict(PARAMETERS),
                       status=records.FAILED, start="2026-11-26T08:00:00.000Z",
                       duration_s=95.5, message=f"step tune-hyperparameters failed: {SCRIPT}",
                       steps=_step_status({"create-splits-dataset": records.SUCCEEDED,
                                           "create-training-split": records.SUCCEEDED,
                                           "create-validation-split": records.SUCCEEDED,
                                           "create-testing-split": records.SUCCEEDED,
                                           "tune-hyperparameters": records.FAILED},
                                          records.OMITTED))
    failed.steps["tune-hyperparameters"].message = f"trainer crashed: {SCRIPT}"
    _logs(store, failed)
    store.save(failed)

    skipped = RunRecord(SKIPPED_ID, "covertype-classifier-training", "p.yaml", dict(PARAMETERS),
                        status=records.SUCCEEDED, start="2026-11-26T09:00:00.000Z",
                        duration_s=4000.0,
                        steps=_step_status({"condition-1": records.SKIPPED,
                                            "deploy-model": records.SKIPPED},
                                           records.SUCCEEDED))
    skipped.steps["condition-1"].message = "when '0.65 > 0.69' is false"
    skipped.steps["tune-hyperparameters"].outputs["tune-hyperparameters-job_id"] = "tune_gone"
    _evaluation(store, skipped, 0.65)
    store.save(skipped)

    running = RunRecord(RUNNING_ID, "covertype-classifier-training", "p.yaml", dict(PARAMETERS),
                        start="2026-11-26T10:00:00.000Z",
                        steps=_step_status({"create-splits-dataset": records.SUCCEEDED,
                                            "create-training-split": records.SUCCEEDED,
                                            "create-validation-split": records.SUCCEEDED,
                                            "create-testing-split": records.RUNNING,
                                            "tune-hyperparameters": records.RUNNING},
                                           records.PENDING))
    store.save(running)
    _job(home, "tune_live", RUNNING_ID, state="RUNNING", last="RUNNING")
    # failed before any step ran, no parameters at all; and a run.json cut short
    store.save(RunRecord(BARE_ID, "p", "p.yaml", {}, status=records.FAILED, message="no package"))
    (store.folder(CORRUPT_ID)).mkdir()
    (store.folder(CORRUPT_ID) / records.RUN_FILE).write_text('{"run_id": "20261125')


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("browser") / "home"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COVERTYPE_HOME", str(home))
        _write_runs(home)
        with EmulatorServer(home=home) as running:
            yield running


def _get(server: EmulatorServer, path: str) -> httpx.Response:
    return httpx.get(server.url + path, timeout=10)


def _nodes(html: str) -> dict[str, str]:
    return dict(re.findall(r'<g id="node-([^"]+)" class="node status-(\w+)[^"]*"', html))


def test_runs_list_newest_first_with_status_metric_and_deployment(server):
    response = _get(server, "/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    ids = re.findall(r'<tr id="run-([^"]+)">', html)
    assert ids == [RUNNING_ID, SKIPPED_ID, FAILED_ID, SUCCEEDED_ID, BARE_ID]  # not CORRUPT
    rows = dict(zip(ids, html.split('<tr id="run-')[1:], strict=True))
    assert 'status-succeeded">Succeeded' in rows[SUCCEEDED_ID]
    assert "accuracy 0.7134" in rows[SUCCEEDED_ID]
    assert VERSION in rows[SUCCEEDED_ID] and "12 min 05 s" in rows[SUCCEEDED_ID]
    assert 'status-failed">Failed' in rows[FAILED_ID]
    assert "metric 0.6500 is not above the threshold 0.69" in rows[SKIPPED_ID]
    assert "1 h 06 min" in rows[SKIPPED_ID]
    assert 'status-running">Running' in rows[RUNNING_ID]
    assert f'href="/runs/{SUCCEEDED_ID}"' in html
    assert '<meta http-equiv="refresh" content="2">' in html  # one run is still running
    assert "<script>" not in html


def test_runs_list_empty_state_says_how_to_start(tmp_path, monkeypatch):
    monkeypatch.setenv("COVERTYPE_HOME", str(tmp_path))
    with EmulatorServer(home=tmp_path) as empty:
        html = _get(empty, "/").text
    assert "No runs yet" in html and "make run-local" in html


def test_succeeded_run_page_shows_graph_trials_evaluation_and_deployment(server):
    response = _get(server, f"/runs/{SUCCEEDED_ID}")
    assert response.status_code == 200
    html = response.text
    assert _nodes(html) == {name: "succeeded" for name, _, _ in TOPOLOGY}
    assert 'id="frame-condition-1"' in html
    assert 'data-from="condition-1" data-to="deploy-model"' in html
    assert "12 min 05 s" in html and "refresh" not in html
    # trials: one row each, by id; the best (trial 2) highlighted in table and chart
    assert re.findall(r'<tr id="trial-(\d+)"', html) == ["1", "2", "3", "4", "5", "6"]
    assert '<tr id="trial-2" class="best">' in html
    assert 'id="bar-2" x=' in html and 'class="bar best" id="bar-2"' in html
    assert f'fill="{trials.BEST_BAR}"' in html and html.count(f'fill="{trials.OTHER_BAR}"') == 4
    assert "goal <b>MAXIMIZE</b> accuracy (higher is better)" in html
    assert "best trial 2: <b>0.7134</b>" in html and "0.000212346" in html
    row6 = html.split('<tr id="trial-6"')[1].split("</tr>")[0]
    assert "FAILED" in row6 and "16 s" in row6
    # evaluation against threshold, the KFP metrics, the confusion matrix
    assert re.search(r'id="metric-vs-threshold">accuracy <b>0.7134</b> &gt; threshold 0.69 '
                     r'<span class="badge passed" id="verdict">passed', html)
    assert '<tr id="metric-accuracy" class="best"><td>accuracy</td><td class="num">0.7134' in html
    for target in range(7):
        total = MATRIX[target].sum()
        assert f"<th>{target} {CLASS_NAMES[target]}</th>" in html
        for guess in range(7):
            count = MATRIX[target][guess]
            share = count / total
            level = 0 if count == 0 else 1 + sum(share > bound for bound in HEAT_BOUNDS)
            assert re.search(rf'<td id="cm-{target}-{guess}" class="heat-{level}" [^>]*>'
                             rf"{count}</td>", html), (target, guess)
    assert 'class="heat-6"' in html
    # deployment (read from the deploy step's version_name artifact) and parameters
    assert f'id="deployed-version"><code>{VERSION}</code>' in html
    assert "<th>evaluation_metric_threshold</th><td><code>0.69</code>" in html
    assert f'href="/runs/{SUCCEEDED_ID}/steps/evaluate-model/log">log</a>' in html


def test_failed_run_page_escapes_messages_and_handles_missing_pieces(server):
    response = _get(server, f"/runs/{FAILED_ID}")
    assert response.status_code == 200
    html = response.text
    nodes = _nodes(html)
    assert nodes["tune-hyperparameters"] == "failed"
    assert nodes["create-testing-split"] == "succeeded"
    assert nodes["evaluate-model"] == nodes["deploy-model"] == "omitted"
    assert "<script>" not in html
    assert "trainer crashed: &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert 'id="no-trials">No tuning job recorded (tune-hyperparameters: Failed).' in html
    assert 'id="not-evaluated">Not evaluated: the run failed before evaluation' in html
    assert 'id="confusion-matrix"' not in html and 'id="trial-chart"' not in html


def test_skipped_deploy_run_page_says_why_not_deployed(server):
    html = _get(server, f"/runs/{SKIPPED_ID}").text
    nodes = _nodes(html)
    assert nodes["condition-1"] == nodes["deploy-model"] == "skipped"
    assert nodes["evaluate-model"] == "succeeded"
    assert "0.6500</b> \u2264 threshold 0.69" in html and ">not passed</span>" in html
    assert ('id="not-deployed-reason">metric 0.6500 is not above the threshold 0.69' in html)
    assert "when &#x27;0.65 &gt; 0.69&#x27; is false" in html
    assert "Tuning job tune_gone: job tune_gone not found" in html


def test_bare_and_unreadable_records(server):
    response = _get(server, f"/runs/{BARE_ID}")
    assert response.status_code == 200
    html = response.text
    assert "No steps recorded." in html and "No parameters recorded." in html
    assert "This run has no tuning step." in html
    assert "Not evaluated: the run failed before evaluation: no package" in html
    corrupt = _get(server, f"/runs/{CORRUPT_ID}")
    assert corrupt.status_code == 500 and "is not a readable run record" in corrupt.text
    assert _get(server, f"/runs/{CORRUPT_ID}.json").status_code == 500


def test_running_run_page_refreshes_itself(server):
    html = _get(server, f"/runs/{RUNNING_ID}").text
    assert '<meta http-equiv="refresh" content="2">' in html
    nodes = _nodes(html)
    assert nodes["tune-hyperparameters"] == "running" and nodes["deploy-model"] == "pending"
    assert "Not yet" in html and 'id="not-evaluated">Not evaluated yet.' in html
    # the step has no job_id output yet: its job is found by the run's job_dir
    assert "Job <code>tune_live</code> RUNNING" in html
    assert re.findall(r'<tr id="trial-(\d+)"', html) == ["1", "2", "3", "4", "5", "6"]
    assert "\u00d7 running" in html  # trial 6 has no metric yet


def test_step_logs_json_record_and_not_found(server):
    log = _get(server, f"/runs/{FAILED_ID}/steps/tune-hyperparameters/log")
    assert log.status_code == 200 and log.text == f"log of tune-hyperparameters\n{SCRIPT}\n"
    assert log.headers["content-type"] == "text/plain; charset=utf-8"
    assert log.headers["x-content-type-options"] == "nosniff"
    for path in (f"/runs/{FAILED_ID}/steps/no-such-step/log",
                 f"/runs/{FAILED_ID}/steps/evaluate-model/log",  # omitted: never ran
                 f"/runs/{SUCCEEDED_ID}/steps/condition-1/log",  # a sub-DAG has no log
                 "/runs/nope/steps/evaluate-model/log"):
        assert _get(server, path).status_code == 404, path
    record = _get(server, f"/runs/{SUCCEEDED_ID}.json")
    assert record.status_code == 200
    stored = RunStore(runs_dir(server.app.state.home)).load(SUCCEEDED_ID)
    assert record.json() == json.loads(json.dumps(asdict(stored)))
    missing = _get(server, "/runs/20990101-000000-ffffff.json")
    assert missing.status_code == 404 and "no run" in missing.json()["error"]["message"]
    page = _get(server, "/runs/20990101-000000-ffffff")
    assert page.status_code == 404 and "Run not found" in page.text
    assert _get(server, "/runs/%2E%2E").status_code == 404  # no way out of the runs folder
    assert _get(server, f"/runs/{FAILED_ID}/steps/%2E%2E/log").status_code == 404
    assert _get(server, "/runs/%3Cscript%3E").status_code == 404
    assert "<script>" not in _get(server, "/runs/%3Cscript%3E").text


def test_graph_rows_follow_longest_paths_and_nest_the_condition():
    steps = _step_status({}, records.SUCCEEDED)
    assert graph.rows(steps) == {
        "create-splits-dataset": 0, "create-training-split": 1, "create-validation-split": 1,
        "create-testing-split": 1, "tune-hyperparameters": 2, "retrieve-best-run": 3,
        "train-final-model": 4, "evaluate-model": 5, "condition-1": 6, "deploy-model": 7}
    plan = graph.layout(steps)
    left, top, width, height = plan.frames["condition-1"]
    for name in ("condition-1", "deploy-model"):
        x, y = plan.nodes[name]
        assert left < x - graph.NODE_W / 2 and x + graph.NODE_W / 2 < left + width
        assert top < y and y + graph.NODE_H < top + height
    # no two nodes of a row overlap
    for name, (x, y) in plan.nodes.items():
        for other, (x2, y2) in plan.nodes.items():
            assert name == other or y != y2 or abs(x - x2) >= graph.NODE_W


# A real browser -------------------------------------------------------------------------
def _png_pixels(path: Path) -> np.ndarray:
    """Decode an 8-bit RGB/RGBA PNG (no Pillow here): chunks, zlib, then undo the filters.

    Filters are undone along anti-diagonals, so each numpy step handles every pixel whose
    left, upper and upper-left neighbours are already known.
    """
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, compressed = 8, []
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        body = data[position + 8:position + 8 + length]
        position += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            compressed.append(body)
    assert depth == 8 and colour in (2, 6) and interlace == 0
    channels = 3 if colour == 2 else 4
    raw = np.frombuffer(zlib.decompress(b"".join(compressed)), np.uint8)
    raw = raw.reshape(height, width * channels + 1)
    kinds, lines = raw[:, 0], raw[:, 1:].reshape(height, width, channels).astype(np.int32)
    out = np.zeros((height + 1, width + 1, channels), np.int32)  # zero row and column
    for diagonal in range(width + height - 1):
        ys = np.arange(max(0, diagonal - width + 1), min(height - 1, diagonal) + 1)
        xs = diagonal - ys
        left, up, corner = out[ys + 1, xs], out[ys, xs + 1], out[ys, xs]
        guess = left + up - corner
        pa, pb, pc = abs(guess - left), abs(guess - up), abs(guess - corner)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, corner))
        kind = kinds[ys][:, None]
        predicted = np.select([kind == 1, kind == 2, kind == 3, kind == 4],
                              [left, up, (left + up) // 2, paeth], 0)
        out[ys + 1, xs + 1] = (lines[ys, xs] + predicted) & 255
    return out[1:, 1:, :3].astype(np.uint8)


def _count(pixels: np.ndarray, colour: str) -> int:
    rgb = [int(colour[i:i + 2], 16) for i in (1, 3, 5)]
    return int(np.all(pixels == rgb, axis=2).sum())


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at "
                    "/usr/bin/chromium (apt-get install -y chromium)")
@pytest.mark.parametrize("run_id", [SUCCEEDED_ID, FAILED_ID])
def test_run_page_renders_in_headless_chromium(server, tmp_path, run_id):
    screenshot = tmp_path / "run.png"
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={screenshot}",
               "--window-size=1280,2400", f"{server.url}/runs/{run_id}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and screenshot.is_file(), result.stderr[-2000:]
    pixels = _png_pixels(screenshot)
    assert pixels.shape == (2400, 1280, 3)
    green, red = graph.STATUS_COLOURS[records.SUCCEEDED][0], graph.STATUS_COLOURS[records.FAILED][0]
    grey = graph.STATUS_COLOURS[records.OMITTED][0]
    node = 2000  # a node's fill is ~4,800 pixels at the page's scale; a legend swatch ~90
    if run_id == SUCCEEDED_ID:
        assert _count(pixels, green) > 8 * node
        assert _count(pixels, red) < node // 4 and _count(pixels, grey) < node // 4
        assert _count(pixels, trials.BEST_BAR) > 1500  # the best trial's bar
        assert _count(pixels, trials.OTHER_BAR) > 4 * 400
        assert _count(pixels, "#54278f") > 4 * 800  # heat-6 cells on the diagonal
        assert _count(pixels, "#efedf5") > 800  # heat-1 cells (rare confusions)
    else:
        assert _count(pixels, red) > node and _count(pixels, grey) > 4 * node
        assert _count(pixels, green) > 4 * node
        assert _count(pixels, trials.BEST_BAR) == 0 and _count(pixels, "#54278f") < node // 4
