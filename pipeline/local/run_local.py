"""`covertype run --local`: load the data, compile, run the package with the local stand-ins."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from pipeline.atomic import write_atomic
from pipeline.local import data, records
from pipeline.local.cache import StepCache, changed_files
from pipeline.local.emulator.server import EmulatorServer
from pipeline.local.errors import InvalidArgument
from pipeline.local.home import LOCAL_PROJECT_ID, cache_dir, local_home, storage_root
from pipeline.local.owner import current_owner
from pipeline.local.package import load_package
from pipeline.local.processes import RunProcesses
from pipeline.local.records import RUN_ID, RunRecord, RunStore, StepRecord, new_run_id
from pipeline.local.runner import LineCallback, LocalRunner, StepCallback
from pipeline.local.storage import (
    configure_storage_emulator,
    ensure_local_bucket,
    resolve_in_storage,
)
from pipeline.local.warm import WarmExecutor
from pipeline.local.warm_programs import DEPLOY_ACTIONS, TRAINING_ACTIONS, launcher_action
from pipeline.local.workflow import Workflow
from pipeline.parameters import validate as validate_parameters
from pipeline.settings import Settings
from pipeline.vertex import launcher as vertex_launcher

DSL_FILE = Path(__file__).resolve().parents[1] / "covertype_training_pipeline.py"
PACKAGE_FILE = "pipeline.yaml"  # the package a run executed, kept in its folder


def compile_package(output: Path, environ: Mapping[str, str] | None = None) -> Path:
    """Compile the DSL with `dsl-compile`, exactly as `make compile` does."""
    env = dict(os.environ if environ is None else environ)
    Settings.from_env(env)  # one-line error for a bad variable, before kfp prints a traceback
    output.parent.mkdir(parents=True, exist_ok=True)
    dsl_compile = shutil.which("dsl-compile", path=os.path.dirname(sys.executable)) or "dsl-compile"
    result = subprocess.run([dsl_compile, "--py", str(DSL_FILE), "--output", str(output)],
                            env=env, capture_output=True, text=True)
    if result.returncode:
        lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
        raise RuntimeError(f"dsl-compile failed: {lines[-1]}")
    return output


def default_parameters(home: Path, workflow: Workflow) -> dict[str, str]:
    """Local values for this project's parameters that have no default in the DSL, for a
    pipeline that declares them."""
    local = {"project_id": LOCAL_PROJECT_ID, "gcs_root": str(storage_root(home) / "staging")}
    return {name: value for name, value in local.items() if name in workflow.parameters}


def package_platform(workflow: Workflow) -> str:
    """The platform a package was compiled for: `vertex` when a step runs the Vertex AI
    components' launcher, else `caip` (PLATFORM of pipeline/settings.py)."""
    for template in workflow.templates.values():
        if vertex_launcher.__name__ in template.get("container", {}).get("command", []):
            return "vertex"
    return "caip"


def run_parameters(workflow: Workflow, overrides: Mapping[str, str],
                   home: Path) -> dict[str, str]:
    """The run's parameter values (local defaults, then the user's), checked before any step
    for the package's platform (on Vertex AI the tuning settings must translate)."""
    parameters = workflow.resolve_parameters({**default_parameters(home, workflow), **overrides})
    validate_parameters(parameters, package_platform(workflow))
    if "gcs_root" in parameters:
        _check_gcs_root(parameters["gcs_root"], home)
    return parameters


def run_local(package: Path | None, overrides: Mapping[str, str], rows: int,
              on_step: StepCallback | None = None, on_line: LineCallback | None = None,
              on_start: Callable[[RunRecord], None] | None = None,
              use_cache: bool = True, run_id: str | None = None,
              images: Mapping[str, str] | None = None,
              warm: bool | None = None) -> RunRecord:
    """Run the pipeline end to end on this machine; returns the finished run record.

    Bad parameters, a bad package or an unusable source table fail before anything is
    written. `run_id` names the run (the local KFP API passes its run's id); default: new.
    `images` maps training images to local programs (`--image`, see program_for_image).
    `warm=False` starts every step and trial as a new interpreter (default: forked from
    preloaded ones, unless COVERTYPE_COLD=1; see pipeline/local/warm.py).
    """
    configure_storage_emulator()
    home = local_home()
    store = RunStore()
    run_id = run_id or new_run_id()
    if not RUN_ID.fullmatch(run_id) or store.folder(run_id).exists():
        raise ValueError(f"--run-id {run_id!r} is taken or not a run id; use 1-128 letters, "
                         "digits, '.', '_' or '-' not used by another run")
    with tempfile.TemporaryDirectory() as staging:
        compiled = package or compile_package(Path(staging) / "pipeline.yaml")
        workflow = Workflow.load(compiled)
        parameters = run_parameters(workflow, overrides, home)
        if "source_table_name" in parameters:  # a pipeline that reads the source table
            if parameters["source_table_name"] == data.SOURCE_TABLE:
                data.ensure_source_table(rows)
            data.check_source_table(parameters["source_table_name"])
        if "gcs_root" in parameters:
            ensure_local_bucket(parameters["gcs_root"], storage_root(home))
        folder = store.folder(run_id)
        folder.mkdir(parents=True)
        write_atomic(folder / PACKAGE_FILE, load_package(compiled))  # YAML, whatever the format
    record = RunRecord(run_id=run_id, pipeline=workflow.name, package=str(package or ""),
                       parameters=parameters)
    return _execute(workflow, record, store, home, use_cache, on_step, on_line, on_start,
                    images, warm)


def _check_gcs_root(gcs_root: str, home: Path) -> None:
    """Refuse, before anything is written, a gcs_root the local services would refuse later:
    the training jobs' jobDir and the deployed model must lie in the project's storage."""
    try:
        resolve_in_storage(gcs_root, "gcs_root", storage_root(home))
    except InvalidArgument as error:
        raise ValueError(str(error)) from None


def resume_local(run_id: str, on_step: StepCallback | None = None,
                 on_line: LineCallback | None = None,
                 on_start: Callable[[RunRecord], None] | None = None,
                 use_cache: bool = True, images: Mapping[str, str] | None = None,
                 warm: bool | None = None) -> RunRecord:
    """Continue a failed or interrupted run from its last finished steps."""
    configure_storage_emulator()
    home = local_home()
    store = RunStore()
    record = store.load(run_id)
    if record.status == records.SUCCEEDED:
        raise ValueError(f"run {run_id} already succeeded; start a new run instead")
    if record.status == records.RUNNING:
        raise ValueError(f"run {run_id} is still running (pid {record.owner.get('pid')}); "
                         "wait for it or stop it first")
    workflow = Workflow.load(store.folder(run_id) / PACKAGE_FILE)
    for step in record.steps.values():
        if step.status == records.SUCCEEDED:
            changed = changed_files(step.files)
            if changed:
                raise ValueError(f"cannot resume run {run_id}: {changed[0]}, an output of its "
                                 f"step {step.name}, has changed since (another run wrote it); "
                                 "start a new run")
            step.reused = "resume"
        else:
            step.status, step.message, step.outputs, step.artifacts, step.files = (
                records.PENDING, "", {}, {}, {})
            step.start, step.end, step.duration_s = "", "", None
    record.status, record.message, record.end, record.duration_s = records.RUNNING, "", "", None
    record.owner = current_owner()
    record.resumes += 1
    return _execute(workflow, record, store, home, use_cache, on_step, on_line, on_start,
                    images, warm)


def _execute(workflow: Workflow, record: RunRecord, store: RunStore, home: Path,
             use_cache: bool, on_step: StepCallback | None, on_line: LineCallback | None,
             on_start: Callable[[RunRecord], None] | None,
             images: Mapping[str, str] | None, warm: bool | None) -> RunRecord:
    """Run the record's steps; SIGINT/SIGTERM stop it as Interrupted (RunInterrupted).

    The emulator is built only when a step needs it (in the background once the first step
    runs, when a step runs a GCP or Vertex AI launcher: their calls need it); the zygotes the
    steps and trials need start in the order the run reaches them, while the first steps run.
    """
    if on_start:
        on_start(record)
    # The step cache keys a step by this checkout's code; programs mapped with --image lie
    # outside it, so a run that maps images reuses nothing.
    cache = StepCache(cache_dir(home)) if use_cache and not images else None
    first_step = threading.Event()

    def step_changed(step: StepRecord) -> None:
        first_step.set()
        if on_step:
            on_step(step)

    with WarmExecutor(enabled=warm) as executor:
        processes = RunProcesses(executor)
        with processes.stop_on_signals(), EmulatorServer(
                home, lazy=True, state={"warm_executor": executor},
                images=images) as emulator:
            processes.on_stop(lambda: _stop_training(emulator))
            runner = LocalRunner(workflow, record, store, emulator.url, step_changed, on_line,
                                 cache, processes)
            actions = {action for command, _ in runner.warm_programs()
                       if (action := launcher_action(command))}
            run_over = threading.Event()
            if actions:
                threading.Thread(target=_prepare, daemon=True, name="prepare",
                                 args=(first_step, run_over, emulator, home, actions)).start()
            executor.prestart(_prestart_order(runner, trainer=not images))
            try:
                return runner.run()
            finally:
                run_over.set()
                first_step.set()


def _prepare(first_step: threading.Event, run_over: threading.Event, emulator: EmulatorServer,
             home: Path, actions: set[tuple[str, str]]) -> None:
    """Once the first step runs (not to slow the run's start), build the emulator app its
    launchers will call, then what a deploy step needs: one after the other, in one thread."""
    first_step.wait()
    if run_over.is_set():
        return
    emulator.serve_soon()
    emulator.app  # noqa: B018 - built here, or waited for while the server thread builds it
    if actions & DEPLOY_ACTIONS:
        _prepare_deploy(home)


def _stop_training(emulator: EmulatorServer) -> None:
    """End the training service's jobs (and their trials) when the run stops."""
    app = emulator.app_if_built
    engine = getattr(app.state, "training_engine", None) if app is not None else None
    if engine is not None:
        engine.close()


def _prestart_order(runner: LocalRunner, trainer: bool,
                    ) -> Iterator[tuple[list[str], dict[str, str]]]:
    """The steps' programs in the order the run reaches them, the trainer's (unless `--image`
    maps other programs) right after the first step that starts a training job (read in the
    executor's prestart thread). Trials see the server as steps do
    (TrainingEngine.process_environment): the steps' environment."""
    for command, env in runner.warm_programs():
        yield command, env
        if trainer and launcher_action(command) in TRAINING_ACTIONS:
            from pipeline.local.training_run import TRAINER_PROGRAM  # pandas, optuna: if used

            trainer = False
            yield list(TRAINER_PROGRAM), env


def _prepare_deploy(home: Path) -> None:
    """What the deploy step's fast-path check (it runs in this process, in the registry)
    needs, made while the steps before it run: its libraries and the verification rows."""
    import onnxruntime  # noqa: F401
    import skl2onnx  # noqa: F401
    import sklearn.pipeline  # noqa: F401

    from pipeline.local.prediction import verification_rows

    verification_rows(cache_dir(home))
