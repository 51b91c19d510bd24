"""`covertype run --local` and `covertype runs list|show`.

Text from users, records and logs is escaped (`rich.markup.escape`) wherever rich would read
it as markup.
"""
from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import one_line
from pipeline.local.data import LAB_ROWS

# The commands import what they use when they run: `covertype --help` loads none of it.
if TYPE_CHECKING:
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    from pipeline.local.processes import RunInterrupted
    from pipeline.local.records import RunRecord, StepRecord

OUTPUT_WIDTH = 80  # longer output values are shortened in the summary
STATUS_STYLE = {"Succeeded": "green", "Failed": "red", "Running": "yellow", "Skipped": "dim",
                "Omitted": "dim", "Pending": "dim", "Interrupted": "red"}  # records' statuses


def register(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser("run", help="run the pipeline (locally with --local)")
    run.add_argument("--local", action="store_true", required=True,
                     help="run on this machine with the local stand-ins (required; for a "
                          "cluster use `make upload` and `make run`)")
    run.add_argument("--package", help="compiled pipeline YAML (default: compile the DSL now)")
    run.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                     help="pipeline parameter, same names as `kfp run submit`; repeatable")
    run.add_argument("--rows", default=str(LAB_ROWS),
                     help=f"bundled rows to load as the source table (default {LAB_ROWS}; 'all')")
    run.add_argument("--no-cache", action="store_true",
                     help="recompute every step instead of reusing cached outputs")
    run.add_argument("--cold", action="store_true",
                     help="start every step and trial as a new Python process instead of "
                          "forking it from a preloaded one (also: COVERTYPE_COLD=1)")
    run.add_argument("--resume", metavar="RUN_ID",
                     help="continue a failed or interrupted run from its last finished steps")
    run.add_argument("--run-id", help="id of the new run (default: a new one); the local KFP "
                                      "API passes its run's id")
    run.add_argument("--image", action="append", default=[], metavar="NAME=PROGRAM.py",
                     help="run training jobs of image NAME (with or without its tag) as this "
                          "Python program; images named .../trainer_image run the local trainer "
                          "without it; repeatable")
    run.set_defaults(func=_run)
    runs = subparsers.add_parser("runs", help="list or show local runs")
    runs_commands = runs.add_subparsers(dest="runs_command", required=True)
    runs_commands.add_parser("list", help="all runs, newest first").set_defaults(func=_list)
    show = runs_commands.add_parser("show", help="one run in detail")
    show.add_argument("run_id")
    show.set_defaults(func=_show)


def make_console() -> Console:
    """A console that does not cut lines when the output is a file or a pipe (and does not
    turn `:a:` in a loop step's name into an emoji)."""
    from rich.console import Console

    console = Console(highlight=False, emoji=False)
    return console if console.is_terminal else Console(highlight=False, emoji=False, width=200)


def parse_params(pairs: list[str]) -> dict[str, str]:
    """`NAME=VALUE` strings to a dict; a malformed one is a one-line error."""
    params = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--param {pair!r} is not NAME=VALUE; e.g. --param version_id=v02")
        params[name.strip()] = value
    return params


def parse_images(pairs: list[str]) -> dict[str, str]:
    """`--image NAME=path/to/program.py` values to {image: absolute program path}."""
    images = {}
    for pair in pairs:
        name, sep, program = pair.partition("=")
        path = Path(program).expanduser()
        if not sep or not name.strip() or any(char.isspace() for char in name.strip()):
            raise ValueError(f"--image {pair!r} is not NAME=path/to/program.py; e.g. --image "
                             "gcr.io/my-project/my_trainer=trainer/task.py")
        if path.suffix != ".py" or not path.is_file():
            raise ValueError(f"--image {pair!r}: {program!r} is not a Python program file; "
                             "give the path of the .py file the image runs")
        images[name.strip()] = str(path.resolve())
    return images


class Progress:
    """Live step table on a terminal; one plain line per event elsewhere (CI, pipes)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.record: RunRecord | None = None
        self.last_line: dict[str, str] = {}
        self.live: Live | None = None
        self._lock = threading.Lock()

    def start(self, record: RunRecord) -> None:
        from rich.live import Live
        from rich.markup import escape

        self.record = record
        self.console.print(f"Run [bold]{escape(record.run_id)}[/] started")
        if self.console.is_terminal:
            self.live = Live(self._table(), console=self.console, refresh_per_second=4,
                             get_renderable=self._table)
            self.live.start()

    def step(self, step: StepRecord) -> None:
        from rich.markup import escape

        from pipeline.local import records

        if not self.live and step.status != records.PENDING:
            duration = f" in {step.duration_s:.1f} s" if step.duration_s is not None else ""
            with self._lock:
                self.console.print(f"  {escape(step.name)}: {step.status}{duration}")

    def line(self, step: StepRecord, line: str) -> None:
        self.last_line[step.name] = line
        if not self.live and line.lstrip().lower().startswith("trial"):
            with self._lock:
                self.console.print(f"    {step.name}: {line.strip()}", markup=False,
                                   soft_wrap=True)

    def stop(self) -> None:
        if self.live:
            self.live.stop()

    def _table(self) -> Table:
        from rich.table import Table
        from rich.text import Text

        from pipeline.local import records
        from pipeline.local.summary import steps_in_order

        table = Table(box=None, show_header=False)
        for step in (steps_in_order(self.record) if self.record else []):
            detail = self.last_line.get(step.name, "") if step.status == records.RUNNING else ""
            duration = f"{step.duration_s:.1f} s" if step.duration_s is not None else ""
            table.add_row(Text(step.name), f"[{STATUS_STYLE[step.status]}]{step.status}[/]",
                          duration, Text(detail[-70:]))
        return table


def _run(args: argparse.Namespace) -> int:
    from pipeline.local import records
    from pipeline.local.data import parse_rows
    from pipeline.local.processes import RunInterrupted, signals_raise
    from pipeline.local.run_local import resume_local, run_local

    console = make_console()
    params = parse_params(args.param)
    images = parse_images(args.image)
    rows = parse_rows(args.rows)
    if args.resume and (params or args.package or args.run_id):
        raise ValueError("--resume continues a run with its own package and parameters; "
                         "drop --param/--package/--run-id")
    progress = Progress(console)
    callbacks = {"on_step": progress.step, "on_line": progress.line, "on_start": progress.start,
                 "use_cache": not args.no_cache, "images": images,
                 "warm": False if args.cold else None}
    with signals_raise():
        try:
            try:
                if args.resume:
                    record = resume_local(args.resume, **callbacks)
                else:
                    record = run_local(Path(args.package) if args.package else None, params,
                                       rows, run_id=args.run_id, **callbacks)
            finally:
                progress.stop()
        except RunInterrupted as stop:
            return _report_interrupted(console, stop)
        print_summary(console, record)
    return 0 if record.status == records.SUCCEEDED else 1


def _report_interrupted(console: Console, stop: RunInterrupted) -> int:
    """The summary of an interrupted run, ending with how to continue it; 128 + signal."""
    from pipeline.local.records import resume_command

    if stop.record is None:
        print(f"covertype: {stop} before the run started; nothing to resume", file=sys.stderr)
    else:
        print_summary(console, stop.record)
        text = str(stop)
        console.print(f"{text[0].upper()}{text[1:]}. Continue with: "
                      f"{resume_command(stop.record.run_id)}", markup=False)
    return stop.exit_code


def print_summary(console: Console, record: RunRecord) -> None:
    """The end-of-run summary: steps, their outputs, and for this project's pipeline the best
    trial, the gate and the deployment; where things are."""
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    from pipeline.local.home import local_home
    from pipeline.local.records import RunStore
    from pipeline.local.summary import RunSummary, steps_in_order
    from pipeline.local.tuning_jobs import tuning_job  # the training core: only when shown

    store = RunStore()
    style = STATUS_STYLE.get(record.status, "")
    took = f" in {record.duration_s:.1f} s" if record.duration_s is not None else ""
    console.print(f"\nRun [bold]{escape(record.run_id)}[/]: [{style}]{escape(record.status)}[/]"
                  f"{took}")
    if record.message:
        console.print(f"  {record.message}", markup=False)
    table = Table("step", "status", "duration", "note", box=None)
    for step in steps_in_order(record):
        duration = f"{step.duration_s:.1f} s" if step.duration_s is not None else ""
        note = step.message or (f"reused ({step.reused})" if step.reused else "")
        table.add_row(Text(step.name), f"[{STATUS_STYLE.get(step.status, '')}]{step.status}[/]",
                      duration, Text(note[:90]))
    console.print(table)
    summary = RunSummary.of(record, tuning_job(record, local_home())[0])
    if summary.outputs:
        outputs = Table("step", "output", "value", box=None, title="Outputs", title_justify="left")
        for step, values in summary.outputs.items():
            for name, value in values.items():
                outputs.add_row(Text(step), Text(name), Text(_shorten(value)))
        console.print(outputs)
    if summary.best_trial:
        trial = ", ".join(f"{name}={value}" for name, value in summary.best_trial.items())
        console.print(f"Best trial: {trial}", markup=False)
    if summary.metric_value is not None:
        verdict = ("" if summary.threshold is None else
                   f" vs threshold {summary.threshold} -> "
                   + ("passed" if summary.metric_value > summary.threshold else "did not pass"))
        console.print(f"Evaluation: {summary.metric_name} {summary.metric_value:.4f}{verdict}",
                      markup=False)
    if summary.deployed_version:
        console.print(f"Deployed: [bold]{escape(summary.deployed_version)}[/]")
        console.print("Serve it with `covertype serve` (make serve): POST /v1/"
                      f"{summary.deployed_version.rsplit('/versions/', 1)[0]}:predict; "
                      "runs at http://127.0.0.1:8080/", markup=False)
    elif summary.deployed_endpoint:  # Vertex AI: an endpoint and its deployed model
        console.print(f"Deployed: endpoint {summary.deployed_endpoint}, deployed model "
                      f"{summary.deployed_model_id}", markup=False)
        console.print("Serve it with `covertype serve` (make serve): POST /v1/"
                      f"{summary.deployed_endpoint}:predict; runs at http://127.0.0.1:8080/",
                      markup=False)
    elif summary.has_deploy:
        console.print(f"Not deployed: {summary.not_deployed_reason}", markup=False)
    console.print(f"Run folder: {store.folder(record.run_id)}", markup=False)


def _shorten(value: str) -> str:
    """One line of at most OUTPUT_WIDTH characters."""
    text = one_line(value)
    return text if len(text) <= OUTPUT_WIDTH else text[:OUTPUT_WIDTH - 1] + "\u2026"


def _list(args: argparse.Namespace) -> int:
    from rich.table import Table
    from rich.text import Text

    from pipeline.local.records import RunStore
    from pipeline.local.summary import RunSummary

    console = make_console()
    table = Table("run id", "status", "start", "duration", "metric", "deployed", box=None)
    for record in RunStore().list():
        summary = RunSummary.of(record)
        metric = (f"{summary.metric_name} {summary.metric_value:.4f}"
                  if summary.metric_value is not None else "")
        duration = f"{record.duration_s:.1f} s" if record.duration_s is not None else ""
        deployed = (summary.deployed_version or "no") if summary.has_deploy else ""
        if summary.deployed_endpoint:  # Vertex AI: REGION/endpoints/E and its deployed model
            deployed = (f"{summary.deployed_endpoint.rpartition('/locations/')[2]} "
                        f"{summary.deployed_model_id}")
        table.add_row(record.run_id, record.status, record.start, duration, metric,
                      Text(deployed.replace("projects/local/models/", "")
                           .replace("/versions/", " ")))
    console.print(table)
    return 0


def _show(args: argparse.Namespace) -> int:
    from pipeline.local.records import RunStore

    console = make_console()
    record = RunStore().load(args.run_id)
    console.print("Parameters:")
    for name, value in record.parameters.items():
        console.print(f"  {name} = {value}", markup=False)
    print_summary(console, record)
    folder = RunStore().folder(record.run_id)
    for step in record.steps.values():
        if step.log:
            console.print(f"  log {step.name}: {folder / step.log}", markup=False)
    return 0

