"""`covertype run --local`: load the data, compile, run the package with the local stand-ins."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
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
from pipeline.local.records import RUN_ID, RunRecord, RunStore, new_run_id
from pipeline.local.runner import LOCAL_MODULES, LineCallback, LocalRunner, StepCallback
from pipeline.local.services import training_engine
from pipeline.local.storage import (
    configure_storage_emulator,
    ensure_local_bucket,
    resolve_in_storage,
)
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
              images: Mapping[str, str] | None = None) -> RunRecord:
    """Run the pipeline end to end on this machine; returns the finished run record.

    Bad parameters, a bad package or an unusable source table fail before anything is
    written. `run_id` names the run (the local KFP API passes its run's id); default: new.
    `images` maps training images to local programs (`--image`, see program_for_image).
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
                    images)


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
                 use_cache: bool = True, images: Mapping[str, str] | None = None) -> RunRecord:
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
                    images)


def _execute(workflow: Workflow, record: RunRecord, store: RunStore, home: Path,
             use_cache: bool, on_step: StepCallback | None, on_line: LineCallback | None,
             on_start: Callable[[RunRecord], None] | None,
             images: Mapping[str, str] | None) -> RunRecord:
    """Run the record's steps; SIGINT/SIGTERM stop it as Interrupted (RunInterrupted)."""
    if on_start:
        on_start(record)
    # The step cache keys a step by this checkout's code; programs mapped with --image lie
    # outside it, so a run that maps images reuses nothing.
    cache = StepCache(cache_dir(home)) if use_cache and not images else None
    processes = RunProcesses()
    with processes.stop_on_signals(), EmulatorServer(home, images=images) as emulator:
        engine = training_engine(emulator.app)
        processes.on_stop(engine.close)  # its trials and trainer zygote end with the run
        if _runs_gcp_components(workflow):
            # Preload the trainer (pandas, scikit-learn) while the first steps run.
            threading.Thread(target=engine.zygote, daemon=True).start()
            threading.Thread(target=_preload_deploy_libraries, daemon=True).start()
        return LocalRunner(workflow, record, store, emulator.url, on_step, on_line,
                           cache, processes).run()


def _runs_gcp_components(workflow: Workflow) -> bool:
    """Whether a step runs the GCP components' launcher (training and deploy jobs)."""
    return any(module in template["container"].get("command", [])
               + template["container"].get("args", [])
               for template in workflow.templates.values() if "container" in template
               for module in LOCAL_MODULES)


def _preload_deploy_libraries() -> None:
    """Import what the deploy step's registry check needs (it runs in this process) early."""
    import onnxruntime  # noqa: F401
    import skl2onnx  # noqa: F401
    import sklearn.pipeline  # noqa: F401
