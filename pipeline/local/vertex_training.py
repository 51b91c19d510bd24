"""Local Vertex AI training: the aiplatform v1 customJobs and hyperparameterTuningJobs surface.

create/get/list/cancel over the same API-neutral `TrainingEngine` (training_core.py) as the
ml v1 jobs: this module validates a CustomJob or HyperparameterTuningJob, describes it as a
`JobTask` and renders the resource from the engine's record. What Vertex AI documents and is
reproduced here:

- one worker pool with one replica runs `workerPoolSpecs[0].containerSpec` (its image's
  program, `program_for_image`: an image with no local program is refused; `args`, `env`);
  distributed pools, accelerators, python packages and other
  unsupported fields are refused with a one-line INVALID_ARGUMENT;
- `baseOutputDirectory.outputUriPrefix` gives the container AIP_MODEL_DIR,
  AIP_CHECKPOINT_DIR and AIP_TENSORBOARD_LOG_DIR: `<prefix>/model/` ... for a custom job,
  `<prefix>/<trialId>/model/` ... per tuning trial;
- a trial gets its parameters as `--<parameterId>=<value>` flags and CLOUD_ML_TRIAL_ID, and
  reports its metric with cloudml-hypertune; a trial that fails or reports no metric ends
  INFEASIBLE with its reason, and the job goes on until maxFailedTrialCount trials failed
  (0: until every trial failed);
- the studySpec (one metric, double/integer/discrete/categorical parameters, scale types,
  algorithm) is checked by the one HyperparameterSpec definition (`pipeline.hypertune`) and
  searched by the same tuner as ml v1 jobs. Early-stopping specs are accepted and ignored, as
  ml v1's enableTrialEarlyStopping is: local trials always run to the end.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from pipeline.hypertune import HypertuneSpecError, TuningSpec, parse_spec
from pipeline.local.errors import AlreadyExists, InvalidArgument, NotFound
from pipeline.local.training_core import TrainingEngine, check_output_dir
from pipeline.local.training_run import JobTask
from pipeline.local.tuning import check_trial_limits
from pipeline.local.vertex_common import (
    API,
    check_display_name,
    check_id,
    check_labels,
    check_parent,
    list_query,
    matches,
    new_id,
    page,
    parse,
    refuse_fields,
)

CUSTOM, TUNING = "customJobs", "hyperparameterTuningJobs"
_SCHEMA = {CUSTOM: "CustomJob", TUNING: "HyperparameterTuningJob"}
_WHERE = {CUSTOM: "customJob", TUNING: "hyperparameterTuningJob"}
JOB_STATES = {"QUEUED": "JOB_STATE_QUEUED", "PREPARING": "JOB_STATE_PENDING",
              "RUNNING": "JOB_STATE_RUNNING", "SUCCEEDED": "JOB_STATE_SUCCEEDED",
              "FAILED": "JOB_STATE_FAILED", "CANCELLING": "JOB_STATE_CANCELLING",
              "CANCELLED": "JOB_STATE_CANCELLED"}
TRIAL_STATES = {"RUNNING": "ACTIVE", "SUCCEEDED": "SUCCEEDED", "FAILED": "INFEASIBLE",
                "CANCELLED": "INFEASIBLE"}
REPLICA = "workerpool0-0"
_JOB_SPEC_UNSUPPORTED = ("scheduling", "network", "reservedIpRanges", "tensorboard",
                         "enableWebAccess", "enableDashboardAccess", "experiment",
                         "experimentRun", "models", "persistentResourceId",
                         "protectedArtifactLocationId", "pscInterfaceConfig")
_STUDY_UNSUPPORTED = ("convexAutomatedStoppingSpec", "studyStoppingConfig")
# How the HyperparameterSpec checks' messages name Vertex AI's fields (longest first).
_JOB = "hyperparameterTuningJob."
_VERTEX_TERMS = (("trainingInput.hyperparameters.maxParallelTrials", _JOB + "parallelTrialCount"),
                 ("trainingInput.hyperparameters.maxFailedTrials", _JOB + "maxFailedTrialCount"),
                 ("trainingInput.hyperparameters.maxTrials", _JOB + "maxTrialCount"),
                 ("trainingInput.hyperparameters.algorithm", _JOB + "studySpec.algorithm"),
                 ("trainingInput.hyperparameters.goal", _JOB + "studySpec.metrics[0].goal"),
                 ("trainingInput.hyperparameters.params", _JOB + "studySpec.parameters"),
                 ("trainingInput.hyperparameters", _JOB + "studySpec"),
                 ("maxParallelTrials", "parallelTrialCount"), ("maxTrials", "maxTrialCount"),
                 ("parameterName", "parameterId"), ("discreteValues", "discreteValueSpec.values"),
                 ("categoricalValues", "categoricalValueSpec.values"))


class VertexTraining:
    """customJobs and hyperparameterTuningJobs create/get/list/cancel on the training core.

    Args:
        engine: the training core, shared with the ml v1 surface.
    """

    def __init__(self, engine: TrainingEngine) -> None:
        self.engine = engine

    def create(self, kind: str, project: str, location: str, body: Any) -> dict:
        """Validate a job, record it JOB_STATE_QUEUED and start it; returns the job.

        Raises:
            InvalidArgument: a job that cannot be run as asked (nothing is written).
        """
        check_parent(project, location)
        request, task = (_custom_job if kind == CUSTOM else _tuning_job)(body, self.engine.storage)
        identity = {"api": API, "kind": kind, "project": project, "location": location}
        for _ in range(5):
            try:
                return render(self.engine.submit(new_id(), identity, request, task))
            except AlreadyExists:  # an id drawn twice: draw again
                continue
        raise AlreadyExists("could not draw a free job id; try again")

    def get(self, kind: str, project: str, location: str, job_id: str) -> dict:
        """The job, with its state, error and (tuning) trials."""
        return render(self._record(kind, project, location, job_id))

    def list(self, kind: str, project: str, location: str, query: Any) -> dict:
        """The location's jobs of `kind`, newest first, filtered and paged."""
        parent = check_parent(project, location)
        terms, size, token = list_query(query, ("display_name", "state"))
        jobs = sorted((render(record) for record in self.engine.records()
                       if record.get("api") == API and record["kind"] == kind
                       and f"projects/{record['project']}/locations/{record['location']}"
                       == parent), key=lambda job: job["createTime"], reverse=True)
        return page([job for job in jobs if matches(job, terms)], kind, size, token)

    def cancel(self, kind: str, project: str, location: str, job_id: str) -> dict:
        """Ask the job to stop; it turns JOB_STATE_CANCELLING, then JOB_STATE_CANCELLED.

        Raises:
            FailedPrecondition: the job has already ended.
        """
        self._record(kind, project, location, job_id)
        self.engine.cancel(job_id, f"cancelled by a {kind}.cancel request")
        return {}

    def _record(self, kind: str, project: str, location: str, job_id: str) -> dict:
        name = f"{check_parent(project, location)}/{kind}/{job_id}"
        missing = NotFound(f"{name} not found; list the jobs with {kind}.list")
        try:
            record = self.engine.record(check_id(job_id, name))
        except NotFound:
            raise missing from None
        if (record.get("api"), record["kind"], record["project"], record["location"]) != (
                API, kind, project, location):
            raise missing
        return record


def render(record: dict) -> dict:
    """The CustomJob or HyperparameterTuningJob of an engine record."""
    kind = record["kind"]
    job = {"name": f"projects/{record['project']}/locations/{record['location']}/{kind}/"
                   f"{record['id']}",
           **record["request"], "state": JOB_STATES[record["state"]],
           "createTime": record["createTime"], "updateTime": record["updateTime"]}
    job.update({key: record[key] for key in ("startTime", "endTime") if key in record})
    if "error" in record:
        job["error"] = record["error"]
    if kind == TUNING and record["trials"]:
        metric = record["request"]["studySpec"]["metrics"][0]["metricId"]
        job["trials"] = [_trial(trial, metric, record["trialDetails"])
                         for trial in sorted(record["trials"], key=lambda t: int(t["id"]))]
    return job


def _trial(trial: dict, metric_id: str, details: dict) -> dict:
    """A Vertex AI Trial of an engine trial."""
    rendered = {"id": trial["id"], "state": TRIAL_STATES[trial["state"]],
                "parameters": [{"parameterId": name, "value": value}
                               for name, value in trial["values"].items()],
                **{key: trial[key] for key in ("startTime", "endTime") if key in trial}}
    if "metric" in trial:
        rendered["finalMeasurement"] = {"stepCount": str(trial["metric"]["step"]), "metrics": [
            {"metricId": metric_id, "value": trial["metric"]["value"]}]}
    if rendered["state"] == "INFEASIBLE":
        reason = details.get(trial["id"], {}).get("error", "")
        rendered["infeasibleReason"] = reason or trial["state"].lower()
    return rendered


def _custom_job(body: Any, storage: Path) -> tuple[dict, JobTask]:
    where = _WHERE[CUSTOM]
    request = _job_fields(parse(_SCHEMA[CUSTOM], body, where), where)
    if not isinstance(request.get("jobSpec"), dict):
        raise InvalidArgument(f"{where}.jobSpec is required; give it one worker pool")
    image, args, env, prefix = _job_spec(request["jobSpec"], f"{where}.jobSpec", storage)
    if prefix:
        env = {**env, **_output_env(prefix)}
    return request, JobTask(image=image, args=args, env=env, output_dir=prefix, replica=REPLICA)


def _tuning_job(body: Any, storage: Path) -> tuple[dict, JobTask]:
    where = _WHERE[TUNING]
    request = _job_fields(parse(_SCHEMA[TUNING], body, where), where)
    for name in ("studySpec", "trialJobSpec"):
        if not isinstance(request.get(name), dict):
            raise InvalidArgument(f"{where}.{name} is required")
    spec = tuning_spec(request)
    image, args, env, prefix = _job_spec(request["trialJobSpec"], f"{where}.trialJobSpec",
                                         storage)
    # The seed leaves out names, labels and the output folder, which carry run ids: a resumed
    # run proposes the same trials as the run it continues.
    seed = {key: value for key, value in request.items()
            if key not in ("displayName", "labels", "trialJobSpec")}
    seed["trialJobSpec"] = {key: value for key, value in request["trialJobSpec"].items()
                            if key != "baseOutputDirectory"}
    task = JobTask(image=image, args=args, env=env, output_dir=prefix, tuning=spec,
                   seed_key=json.dumps(seed, sort_keys=True), replica=REPLICA,
                   trial_env=functools.partial(_trial_env, prefix) if prefix else None,
                   max_failed_name="maxFailedTrialCount")
    return request, task


def _job_fields(request: dict, where: str) -> dict:
    check_display_name(request.get("displayName"), f"{where}.displayName")
    check_labels(request.get("labels", {}), f"{where}.labels")
    refuse_fields(request, ("encryptionSpec",), where, "no customer-managed keys locally")
    return request


def _job_spec(spec: dict, where: str,
              storage: Path) -> tuple[str, tuple[str, ...], dict[str, str], str]:
    """(image, args, env, output prefix) of a CustomJobSpec that one local process can run."""
    refuse_fields(spec, _JOB_SPEC_UNSUPPORTED, where, "a local job runs one process as is")
    pools = spec.get("workerPoolSpecs") or []
    if not pools:
        raise InvalidArgument(f"{where}.workerPoolSpecs is required; give one worker pool "
                              "with a containerSpec and replicaCount 1")
    for index, extra in enumerate(pools[1:], start=1):
        if extra:
            raise InvalidArgument(f"{where}.workerPoolSpecs[{index}] is set: distributed "
                                  "training (several worker pools) cannot run locally; use one "
                                  "worker pool")
    pool, at = pools[0], f"{where}.workerPoolSpecs[0]"
    refuse_fields(pool, ("pythonPackageSpec",), at, "use a containerSpec with the image")
    refuse_fields(pool, ("nfsMounts", "lustreMounts"), at, "no network file systems locally")
    if pool.get("replicaCount") != "1":
        raise InvalidArgument(f"{at}.replicaCount is {pool.get('replicaCount')!r}; the first "
                              "worker pool runs exactly one replica: set it to 1")
    machine = pool.get("machineSpec") or {}
    if not machine.get("machineType"):
        raise InvalidArgument(f"{at}.machineSpec.machineType is required; set e.g. "
                              "n1-standard-4")
    refuse_fields(machine, ("acceleratorCount", "acceleratorType", "tpuTopology",
                            "gpuPartitionSize", "reservationAffinity"),
                  f"{at}.machineSpec", "no accelerators locally")
    container = pool.get("containerSpec") or {}
    if not container.get("imageUri"):
        raise InvalidArgument(f"{at}.containerSpec.imageUri is required; set it to the "
                              "trainer image")
    refuse_fields(container, ("command",), f"{at}.containerSpec",
                  "the image's own entrypoint runs; pass arguments in args")
    env = {}
    for index, variable in enumerate(container.get("env", [])):
        name = variable.get("name", "")
        if not name.isidentifier():
            raise InvalidArgument(f"{at}.containerSpec.env[{index}].name {name!r} is not an "
                                  "environment variable name")
        env[name] = variable.get("value", "")
    output = (spec.get("baseOutputDirectory") or {}).get("outputUriPrefix", "")
    prefix = check_output_dir(output, f"{where}.baseOutputDirectory.outputUriPrefix", storage)
    return container["imageUri"], tuple(container.get("args", [])), env, prefix.rstrip("/")


def _output_env(folder: str) -> dict[str, str]:
    """The AIP_* folders of a job (or trial) whose output goes under `folder`."""
    return {"AIP_MODEL_DIR": f"{folder}/model/", "AIP_CHECKPOINT_DIR": f"{folder}/checkpoints/",
            "AIP_TENSORBOARD_LOG_DIR": f"{folder}/logs/"}


def _trial_env(prefix: str, trial_id: str) -> dict[str, str]:
    return _output_env(f"{prefix}/{trial_id}")


def tuning_spec(request: dict) -> TuningSpec:
    """The tuning search of a HyperparameterTuningJob, checked like an ml v1 spec.

    Raises:
        InvalidArgument: naming the Vertex AI field and the fix.
    """
    study, where = request["studySpec"], "hyperparameterTuningJob.studySpec"
    refuse_fields(study, _STUDY_UNSUPPORTED, where, "local studies run every trial")
    metrics = study.get("metrics") or []
    if len(metrics) != 1:
        raise InvalidArgument(f"{where}.metrics has {len(metrics)} metrics; give exactly one "
                              "{metricId, goal} (multi-objective studies are not supported)")
    refuse_fields(metrics[0], ("safetyConfig",), f"{where}.metrics[0]", "one objective only")
    if not metrics[0].get("metricId"):
        raise InvalidArgument(f"{where}.metrics[0].metricId is required; name the metric the "
                              "trainer reports with cloudml-hypertune")
    if study.get("measurementSelectionType", "LAST_MEASUREMENT") not in (
            "LAST_MEASUREMENT", "MEASUREMENT_SELECTION_TYPE_UNSPECIFIED"):
        raise InvalidArgument(f"{where}.measurementSelectionType BEST_MEASUREMENT is not "
                              "supported locally; a trial's last reported value is its result")
    for field in ("maxTrialCount", "parallelTrialCount"):
        if field not in request:
            raise InvalidArgument(f"hyperparameterTuningJob.{field} is required; set a whole "
                                  "number >= 1")
    spec = {"goal": metrics[0].get("goal"), "hyperparameterMetricTag": metrics[0]["metricId"],
            "algorithm": study.get("algorithm"), "maxTrials": request["maxTrialCount"],
            "maxParallelTrials": request["parallelTrialCount"],
            "maxFailedTrials": request.get("maxFailedTrialCount", 0),
            "params": [_parameter(index, raw, where)
                       for index, raw in enumerate(study.get("parameters") or [])]}
    try:
        parsed = parse_spec(spec)
    except HypertuneSpecError as error:
        message = str(error)
        for ml_term, vertex_term in _VERTEX_TERMS:
            message = message.replace(ml_term, vertex_term)
        raise InvalidArgument(message) from None
    check_trial_limits(parsed, "hyperparameterTuningJob", ("maxTrialCount", "parallelTrialCount"))
    return parsed


def _parameter(index: int, raw: dict, where: str) -> dict:
    """An ml v1 ParameterSpec of a StudySpec ParameterSpec."""
    at = f"{where}.parameters[{index}]"
    refuse_fields(raw, ("conditionalParameterSpecs",), at, "no conditional parameters")
    kinds = [name for name in ("doubleValueSpec", "integerValueSpec", "discreteValueSpec",
                               "categoricalValueSpec") if name in raw]
    if len(kinds) != 1:
        raise InvalidArgument(f"{at} needs exactly one of doubleValueSpec, integerValueSpec, "
                              "discreteValueSpec or categoricalValueSpec")
    values = raw[kinds[0]]
    param: dict[str, Any] = {"parameterName": raw.get("parameterId")}
    if raw.get("scaleType") not in (None, "SCALE_TYPE_UNSPECIFIED"):
        param["scaleType"] = raw["scaleType"]
    if kinds[0] == "doubleValueSpec":
        param.update(type="DOUBLE", minValue=values.get("minValue"),
                     maxValue=values.get("maxValue"))
    elif kinds[0] == "integerValueSpec":
        param.update(type="INTEGER", minValue=_integer(values.get("minValue")),
                     maxValue=_integer(values.get("maxValue")))
    elif kinds[0] == "discreteValueSpec":
        param.update(type="DISCRETE", discreteValues=values.get("values"))
    else:
        param.update(type="CATEGORICAL", categoricalValues=values.get("values"))
    return param


def _integer(value: str | None) -> int | None:
    return None if value is None else int(value)
