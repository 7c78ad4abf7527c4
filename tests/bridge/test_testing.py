"""The suite's own guard: processes a test run leaves running are found, named and stopped."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from bridge.testing import (
    RUN_MARKER_VARIABLE,
    DaemonProcess,
    bare_forward_ms,
    busy_processes,
    default_argument_htdemucs,
    describe_htdemucs,
    parameter_count,
    processes_started_by,
    released_htdemucs,
    stop_processes,
)

REPO = Path(__file__).resolve().parents[2]
SLEEPER = "import time; time.sleep(600)"  # stopped by the test long before that
# The sleeper says it is up once it runs: until then the kernel may show it half-way through exec,
# with no command line or environment to read yet (a loaded machine once listed it as "(python) D").
UP_THEN_SLEEP = f"print('up', flush=True); {SLEEPER}"


def _pids(marker: str | None = None) -> set[int]:
    found = processes_started_by(os.getpid(), marker)
    assert found is not None, "this platform cannot list processes"
    return {process.pid for process in found}


def test_a_child_is_found_with_its_command_and_stopped() -> None:
    with subprocess.Popen([sys.executable, "-c", UP_THEN_SLEEP], stdout=subprocess.PIPE) as child:
        try:
            assert child.stdout is not None and child.stdout.readline() == b"up\n"
            found = {process.pid: process for process in processes_started_by(os.getpid()) or []}
            assert child.pid in found and SLEEPER in found[child.pid].command
            stop_processes([child.pid])
            assert child.pid not in _pids()
            assert child.poll() is not None  # reaped, not left a zombie
        finally:
            if child.poll() is None:
                child.kill()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="orphans are found by their mark on Linux only")
def test_an_orphaned_grandchild_is_found_by_the_runs_mark() -> None:
    """A daemon whose parent died is no longer below the runner, but it inherited the mark."""
    marker = uuid.uuid4().hex
    spawner = ("import subprocess, sys; "
               f"p = subprocess.Popen([sys.executable, '-c', {UP_THEN_SLEEP!r}], stdout=subprocess.PIPE, "
               "stderr=subprocess.DEVNULL); p.stdout.readline(); print(p.pid, flush=True)")
    # The orphan's output is a pipe to the spawner, not to run()'s capture: run() returns when the spawner ends.
    done = subprocess.run([sys.executable, "-c", spawner], capture_output=True, text=True, timeout=30,
                          env={**os.environ, RUN_MARKER_VARIABLE: marker})
    orphan = int(done.stdout)
    try:
        assert orphan not in _pids(), "an orphan is not below the runner any more"
        assert orphan in _pids(marker)
    finally:
        stop_processes([orphan])
    assert orphan not in _pids(marker)


def test_a_run_that_leaves_a_process_running_fails_naming_it(tmp_path: Path) -> None:
    """The fixture in tests/conftest.py, in a pytest run of its own over a test that leaks a process."""
    (tmp_path / "conftest.py").write_text(
        "from tests.conftest import no_process_left_running, note_processes_left_by_module  # noqa: F401\n"
    )
    (tmp_path / "test_leak.py").write_text(textwrap.dedent(f"""
        import subprocess, sys

        def test_forgets_its_daemon():
            daemon = subprocess.Popen([sys.executable, "-c", {UP_THEN_SLEEP!r}], stdout=subprocess.PIPE)
            daemon.stdout.readline()  # running, its command line there to read

        def test_after_it():
            pass
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "2 passed, 1 error" in out, out
    assert "1 process(es) started by the tests were still running at the end of the run (now stopped)" in out
    assert "left over after test_leak.py" in out and SLEEPER in out
    leaked = [process for process in processes_started_by(os.getpid()) or [] if SLEEPER in process.command]
    assert leaked == [], "the fixture did not stop what it reported"


def test_a_clean_run_passes(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(
        "from tests.conftest import no_process_left_running, note_processes_left_by_module  # noqa: F401\n"
    )
    (tmp_path / "test_clean.py").write_text(textwrap.dedent(f"""
        import subprocess, sys

        def test_stops_what_it_starts():
            process = subprocess.Popen([sys.executable, "-c", {SLEEPER!r}])
            process.terminate()
            process.wait()
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_benches_busy_processes_spin_while_asked_and_none_is_left_after() -> None:
    with busy_processes(2) as children:
        pids = {child.pid for child in children}
        assert len(pids) == 2 and pids <= _pids()  # running, this process's children
        assert all("while True: pass" in process.command for process in processes_started_by(os.getpid()) or []
                   if process.pid in pids)
    assert all(child.returncode is not None for child in children)  # killed and reaped
    assert not pids & _pids()


def test_with_a_started_daemon_stops_that_very_daemon() -> None:
    """`with DaemonProcess(...).start():` (tests/bridge/test_transcribe.py) once started a second
    daemon on entering, whose ping the first one answered; the block then stopped the second and
    left the first running after the suite."""
    process = DaemonProcess()
    started = process.start()
    assert process.process is not None
    first = process.process.pid
    try:
        with started:
            assert process.process.pid == first, "entering the block started another daemon"
        assert first not in _pids(), "the daemon start() started is still running after the block"
    finally:
        stop_processes([first])
        process.stop()


def test_starting_a_running_daemon_again_is_refused() -> None:
    with DaemonProcess() as process:
        with pytest.raises(RuntimeError, match="already running"):
            process.start()


def test_the_benches_build_the_released_htdemucs_architecture() -> None:
    """The published htdemucs checkpoints' shape (about 84 MB in half precision), labelled as such."""
    released = released_htdemucs()
    assert round(parameter_count(released) / 1e6, 2) == 41.98
    assert describe_htdemucs(released).startswith("released htdemucs architecture")
    lighter = default_argument_htdemucs()
    assert round(parameter_count(lighter) / 1e6, 1) == 26.9
    assert "default-argument" in describe_htdemucs(lighter)


def test_bare_forward_times_each_model_and_leaves_it_as_it_was() -> None:
    import torch
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(0)
    models = [HTDemucs(sources=["drums", "bass"], channels=8, depth=2, t_layers=1, bottom_channels=0, segment=4).eval()
              for _ in range(2)]
    times = bare_forward_ms(*models, window_seconds=0.1, count=2, warmup=1)
    assert len(times) == 2 and all(t > 0 for t in times)
    assert all(model.use_train_segment for model in models)  # restored after running as the engine runs it
    with pytest.raises(ValueError, match="count"):
        bare_forward_ms(models[0], count=0)
