"""The warm executor: a step forked from a preloaded zygote is the process its command starts.

Every check runs the same command both ways, through the runner's own `RunProcesses.start`:
cold (a new process, as before) and warm (forked by `WarmExecutor`), and compares what the
program saw and did: output, exit status, environment, folder, argv, process group.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.local.processes import RunInterrupted, RunProcesses
from pipeline.local.runner import _kill_tree, _local_command
from pipeline.local.warm import COLD_ENV, ForkedProcess, WarmExecutor, interpreter_config
from pipeline.local.warm_programs import (
    KFP_PROGRAM_LAUNCHER,
    library_set,
    program_imports,
    recognise,
)
from pipeline.local.workflow import Workflow
from pipeline.trainer import TRAIN_PY

VENV_BIN = os.path.dirname(sys.executable)
REPORT = """\
import json, os, sys
print(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ),
                  "executable": sys.executable, "orig_argv": sys.orig_argv[3:],
                  "own_group": os.getpgrp() != int(os.environ["RUNNER_GROUP"]),
                  "group_of": "self" if os.getpgrp() == os.getpid() else "parent"
                              if os.getpgrp() == os.getppid() else "other",
                  "name": __name__,
                  "path0": sys.path[0] == os.path.dirname(os.path.realpath(sys.argv[0]))}))
"""


def kfp_command(program: str, *args: str) -> list[str]:
    """A lightweight component's command, as kfp 1.8 compiles it."""
    return ["sh", "-ec", KFP_PROGRAM_LAUNCHER, program, *args]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A step's environment: this venv first on PATH, unbuffered, a variable of its own."""
    return {**{key: value for key, value in os.environ.items() if key != COLD_ENV},
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONUNBUFFERED": "1",
            "STEP_VARIABLE": "step value", "TMPDIR": str(tmp_path),
            "RUNNER_GROUP": str(os.getpgrp())}


@pytest.fixture(scope="module")
def executor():
    with WarmExecutor(enabled=True) as warm:
        yield warm


def run(command: list[str], env: dict[str, str], cwd: Path, executor: WarmExecutor | None,
        ) -> tuple[str, int, object]:
    """Output, exit status and the process of `command`, started as the runner starts a step."""
    processes = RunProcesses(executor)
    process = processes.start(command, cwd, env)
    try:
        output = process.stdout.read()
        process.stdout.close()
        return output, process.wait(timeout=120), process
    finally:
        processes.release(process)


def both(command: list[str], env: dict[str, str], cwd: Path, executor: WarmExecutor):
    cold = run(command, env, cwd, None)
    warm = run(command, env, cwd, executor)
    assert not isinstance(cold[2], ForkedProcess)
    assert isinstance(warm[2], ForkedProcess), "the command was not forked"
    return cold, warm


def test_a_kfp_program_sees_what_it_sees_cold(executor, env, tmp_path):
    folder = tmp_path / "work"
    folder.mkdir()
    cold, warm = both(kfp_command(REPORT, "--number", "1"), env, folder, executor)

    seen_cold, seen_warm = json.loads(cold[0]), json.loads(warm[0])
    assert (cold[1], warm[1]) == (0, 0)
    assert seen_warm == seen_cold
    assert seen_warm["env"] == {**env, "PWD": str(folder)}  # sh sets PWD
    assert seen_warm["cwd"] == str(folder)
    assert seen_warm["argv"] == ["--number", "1"] and seen_warm["name"] == "__main__"
    assert seen_warm["executable"] == os.path.join(VENV_BIN, "python3")
    assert seen_warm["own_group"] and seen_warm["path0"]
    assert warm[2].zygote == "python"
    # kfp's wrapper leaves the program in a mktemp file of $TMPDIR; so does the warm path.
    programs = sorted(path.read_text() for path in tmp_path.glob("tmp.*"))
    assert programs == [REPORT, REPORT]


def test_a_module_sees_what_it_sees_cold(executor, env, tmp_path):
    module = tmp_path / "lib" / "reporting.py"
    module.parent.mkdir()
    module.write_text(REPORT)
    env = {**env, "PYTHONPATH": str(module.parent)}
    command = _local_command(["python", "-u", "-m", "reporting", "a", "b"])

    cold, warm = both(command, env, tmp_path, executor)

    assert (cold[1], warm[1]) == (0, 0)
    seen_cold, seen_warm = json.loads(cold[0]), json.loads(warm[0])
    seen_cold.pop("path0"), seen_warm.pop("path0")
    assert seen_warm == seen_cold and seen_warm["argv"] == ["a", "b"]


@pytest.mark.parametrize(("program", "status"), [
    ("print('done')\n", 0),
    ("raise SystemExit(3)\n", 3),
    ("import sys\nsys.exit('bad input: no rows')\n", 1),
    ("def f():\n    raise ValueError('boom')\n\nf()\n", 1),
    ("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n", 128 + signal.SIGTERM),
    ("raise KeyboardInterrupt\n", 128 + signal.SIGINT),
    ("def broken(:\n", 1),
])
def test_exit_status_and_output_are_the_cold_ones(executor, env, tmp_path, program, status):
    cold, warm = both(kfp_command(program), env, tmp_path, executor)

    assert cold[1] == warm[1] == status
    # Tracebacks start where a cold interpreter's start; only the temporary file's name differs.
    assert re.sub(r"tmp\.\w{10}", "tmp.X", warm[0]) == re.sub(r"tmp\.\w{10}", "tmp.X", cold[0])


def test_a_module_killed_by_a_signal_reads_as_a_signal(executor, env, tmp_path):
    module = tmp_path / "lib" / "suicide.py"
    module.parent.mkdir()
    module.write_text("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n")
    env = {**env, "PYTHONPATH": str(module.parent)}

    cold, warm = both(_local_command(["python", "-u", "-m", "suicide"]), env, tmp_path, executor)

    assert cold[1] == warm[1] == -signal.SIGTERM


def test_stdout_and_stderr_share_one_pipe_in_order(executor, env, tmp_path):
    program = ("import sys\nprint('out 1')\nprint('err 1', file=sys.stderr)\n"
               "sys.stdout.write('out 2\\n')\nsys.stderr.write('err 2\\n')\n"
               "import os\nos.write(1, b'raw\\n')\n")

    cold, warm = both(kfp_command(program), env, tmp_path, executor)

    assert warm[0] == cold[0] == "out 1\nerr 1\nout 2\nerr 2\nraw\n"


def test_exit_waits_for_threads_runs_atexit_and_flushes(executor, env, tmp_path):
    program = ("import atexit, threading, time\n"
               "atexit.register(lambda: print('atexit ran'))\n"
               "def late():\n    time.sleep(0.2)\n    print('thread done')\n"
               "threading.Thread(target=late).start()\n"
               "import sys\nsys.stdout.write('no newline')\n")

    cold, warm = both(kfp_command(program), env, tmp_path, executor)

    assert warm[0] == cold[0] == "no newlinethread done\natexit ran\n"


def test_forked_children_draw_their_own_random_numbers(executor, env, tmp_path):
    program = "import random, numpy\nprint(random.random(), numpy.random.random())\n"

    outputs = {run(kfp_command(program), env, tmp_path, executor)[0] for _ in range(3)}

    assert len(outputs) == 3


def test_the_hash_seed_of_the_command_is_honoured(executor, env, tmp_path):
    env = {**env, "PYTHONHASHSEED": "123"}

    cold, warm = both(kfp_command("print(hash('covertype'))\n"), env, tmp_path, executor)

    assert warm[0] == cold[0]


@pytest.mark.parametrize("warm", [False, True])
def test_a_step_killed_at_its_timeout_takes_what_it_started(executor, env, tmp_path, warm):
    """The runner's timeout kill (`_kill_tree`) ends the step and what it started."""
    pid_file = tmp_path / "grandchild.pid"
    program = ("import subprocess, sys, time\n"
               "child = subprocess.Popen(['sleep', '300'])\n"
               f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
               "print('started', flush=True)\ntime.sleep(300)\n")
    processes = RunProcesses(executor if warm else None)
    process = processes.start(kfp_command(program), tmp_path, env)
    assert isinstance(process, ForkedProcess) == warm
    assert process.stdout.readline() == "started\n"

    _kill_tree(process.pid)

    assert process.wait(timeout=30) == -signal.SIGKILL
    assert process.stdout.read() == ""
    process.stdout.close()
    processes.release(process)
    assert _gone(int(pid_file.read_text()))


def test_ctrl_c_stops_forked_steps_like_cold_ones(executor, env, tmp_path):
    """The runner's stop (Ctrl-C) sends each step's group SIGTERM, and no new step starts."""
    program = "import time\nprint('waiting', flush=True)\ntime.sleep(300)\n"
    processes = RunProcesses(executor)
    warm = processes.start(kfp_command(program), tmp_path, env)
    cold = RunProcesses(None)
    plain = cold.start(kfp_command(program), tmp_path, env)
    for process in (warm, plain):
        assert process.stdout.readline() == "waiting\n"

    processes.stop(signal.SIGINT)
    cold.stop(signal.SIGINT)

    assert warm.wait(timeout=30) == plain.wait(timeout=30) == -signal.SIGTERM
    with pytest.raises(RunInterrupted):
        processes.start(kfp_command(program), tmp_path, env)
    for owner, process in ((processes, warm), (cold, plain)):
        process.stdout.close()
        owner.release(process)


def test_a_step_dies_with_its_zygote(env, tmp_path):
    """As a cold step's shell dies with the runner (PR_SET_PDEATHSIG), a forked one dies with
    its zygote; its python, like a cold one, is left to the step's group."""
    with WarmExecutor(enabled=True) as executor:
        processes = RunProcesses(executor)
        process = processes.start(kfp_command("import time\nprint('up', flush=True)\n"
                                              "time.sleep(300)\n"), tmp_path, env)
        assert process.stdout.readline() == "up\n"
        (zygote,) = executor._zygotes

        zygote._process.kill()  # the zygote, as a crash or kill -9 ends it

        assert process.wait(timeout=30) == -signal.SIGKILL
        assert _gone(process.pid)
        os.killpg(process.pid, signal.SIGKILL)
        process.stdout.close()
        processes.release(process)
        # A dead zygote is not started again: later steps start cold.
        later = processes.start(kfp_command("print('cold')\n"), tmp_path, env)
        assert not isinstance(later, ForkedProcess) and later.stdout.read() == "cold\n"
        later.wait()
        later.stdout.close()
        processes.release(later)


def test_closing_the_executor_ends_its_zygotes_and_their_children(env, tmp_path):
    executor = WarmExecutor(enabled=True)
    processes = RunProcesses(executor)
    process = processes.start(kfp_command("import time\nprint('up', flush=True)\n"
                                          "time.sleep(300)\n"), tmp_path, env)
    assert process.stdout.readline() == "up\n"
    (zygote,) = executor._zygotes

    executor.close()

    assert process.wait(timeout=30) == -signal.SIGKILL
    assert zygote._process.poll() is not None
    os.killpg(process.pid, signal.SIGKILL)
    process.stdout.close()
    processes.release(process)


def test_a_sitecustomize_in_front_of_the_path_runs_in_the_child(executor, env, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import os\nos.environ['CUSTOMIZED'] = 'yes'\n")
    env = {**env, "PYTHONPATH": str(site)}
    program = "import os\nprint(os.environ.get('CUSTOMIZED'))\n"

    cold, warm = both(kfp_command(program), env, tmp_path, executor)

    assert warm[0] == cold[0] == "yes\n"


def test_a_sitecustomize_hooking_a_preloaded_module_starts_the_step_cold(executor, env,
                                                                       tmp_path):
    """A hook that changes `json` on import cannot reach the zygote's `json`: the child
    replaces itself with the command (same pid), which imports json after the hook."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import importlib.machinery, sys\n"
        "class Hook:\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name != 'json':\n            return None\n"
        "        spec = importlib.machinery.PathFinder.find_spec(name, path)\n"
        "        loader = spec.loader\n"
        "        class Patching(type(loader)):\n"
        "            def exec_module(self, module):\n"
        "                super().exec_module(module)\n"
        "                module.PATCHED = True\n"
        "        spec.loader = Patching(loader.name, loader.path)\n"
        "        return spec\n"
        "sys.meta_path.insert(0, Hook())\n")
    env = {**env, "PYTHONPATH": str(site)}
    program = ("import json, os\n"
               "print(getattr(json, 'PATCHED', False), os.environ['STEP_VARIABLE'])\n")

    cold, warm = both(kfp_command(program), env, tmp_path, executor)

    assert warm[0] == cold[0] == "True step value\n"


def test_a_path_folder_shadowing_a_preloaded_module_starts_the_step_cold(executor, env,
                                                                        tmp_path):
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "json.py").write_text("dumps = lambda value: 'shadowed'\n")
    env = {**env, "PYTHONPATH": str(shadow)}

    output, status, process = run(kfp_command("import json\nprint(json.dumps(1))\n"), env,
                                  tmp_path, executor)

    assert (output, status) == ("shadowed\n", 0)
    assert not isinstance(process, ForkedProcess)


@pytest.mark.parametrize("command", [
    ["sh", "-c", "echo hello"],
    ["python3", "-c", "print('hello')"],
    ["sh", "-ec", KFP_PROGRAM_LAUNCHER.replace("python3", "python2"), "print('hello')"],
    ["/usr/bin/env", "python3", "-u", "x.py"],
])
def test_other_commands_start_as_new_processes(executor, env, command):
    assert recognise(command, env) is None


def test_python_of_another_venv_is_not_forked(env, tmp_path):
    other = tmp_path / "bin"
    other.mkdir()
    (other / "python3").symlink_to(os.path.realpath(sys.executable))
    env = {**env, "PATH": f"{other}{os.pathsep}{env['PATH']}"}

    assert recognise(kfp_command("print(1)\n"), env) is None


def test_the_cold_switch(env, tmp_path, monkeypatch):
    monkeypatch.setenv(COLD_ENV, "1")
    with WarmExecutor() as executor:
        output, status, process = run(kfp_command("print('cold')\n"), env, tmp_path, executor)
        assert (output, status) == ("cold\n", 0)
        assert not isinstance(process, ForkedProcess) and not executor._zygotes


def test_a_zygote_serves_one_interpreter_configuration(env):
    base = interpreter_config(env)

    assert interpreter_config({**env, "PYTHONHASHSEED": "1"}) != base
    assert interpreter_config({**env, "PYTHONUNBUFFERED": "1", "OTHER": "x"}) == base


def test_library_sets_follow_what_programs_import(compiled_package):
    templates = Workflow.load(compiled_package).templates
    sources = {name: templates[name]["container"]["command"][3]
               for name in ("retrieve-best-run", "evaluate-model")}
    launcher = ["--ui_metadata_path", "/tmp/ui"]

    def source(text: str):
        return recognise(kfp_command(text), {"PATH": VENV_BIN})

    def module(name: str, *args: str):
        return recognise([sys.executable, "-u", "-m", name, *args], {})

    assert library_set(source("print(1)\n")) == "python"
    assert library_set(source(sources["evaluate-model"])) == "sklearn"
    assert library_set(source(sources["retrieve-best-run"])) == "google"
    assert library_set(module("pipeline.local.launcher", *launcher,
                              "kfp_component.google.bigquery", "query")) == "bigquery"
    for action in ("train", "deploy"):
        assert library_set(module("pipeline.local.launcher", *launcher,
                                  "kfp_component.google.ml_engine", action)) == "google"
    assert library_set(module("pipeline.vertex.launcher", *launcher, "custom_job")) == "google"
    trainer = recognise([sys.executable, "-u", str(TRAIN_PY)], {})
    assert library_set(trainer) == "sklearn"
    assert {"pandas", "sklearn.pipeline", "fire"} <= program_imports(trainer)


def _gone(pid: int, seconds: float = 30.0) -> bool:
    """Whether `pid` has exited (zombies count as gone) within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def test_unbuffered_progress_reaches_the_runner_while_the_step_runs(executor, env, tmp_path):
    program = "import time\nprint('first', flush=False)\ntime.sleep(300)\n"
    processes = RunProcesses(executor)
    process = processes.start(kfp_command(program), tmp_path, env)
    try:
        assert process.stdout.readline() == "first\n"  # -u: nothing waits in a buffer
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        process.stdout.close()
        processes.release(process)


def test_a_trial_writes_its_log_in_its_own_session(executor, env, tmp_path):
    log = tmp_path / "trial.log"
    script = tmp_path / "trial.py"
    script.write_text("import os\n"
                      "print(os.getsid(0) == os.getpid(), os.getpgrp() == os.getpid())\n")
    warm = executor.prepare([sys.executable, "-u", str(script)], env)
    with open(log, "wb") as stream:
        process = warm.start(tmp_path, session=True, output=stream.fileno())

    assert process.wait(timeout=60) == 0
    assert log.read_text() == "True True\n"
    assert subprocess.run([sys.executable, "-u", str(script)], capture_output=True, text=True,
                          start_new_session=True).stdout == "True True\n"
