"""The Python 3.7 check: Live 11.x and 12.0.x run Remote Scripts in Python 3.7.3.

`vermin --target=3.7` reads syntax and misses generics evaluated at run time (`tuple[int]` in a
module-level alias raises TypeError only when 3.7 runs it), so the script is imported and run by a
real Python 3.7: `python37()` finds one on PATH or under `pyenv root`, and `OldLive` runs
`old_live.py` there against a daemon on loopback.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
NO_PYTHON_37 = (
    "no Python 3.7 interpreter (the Python of Live 11 and 12.0): none under `pyenv root`/versions/3.7.* "
    "and no working python3.7 on PATH; install one (`pyenv install 3.7`) to check the script in those Lives"
)


@functools.lru_cache(maxsize=1)
def python37() -> str | None:
    """A Python 3.7 interpreter: the newest 3.7.x under `pyenv root`, else a `python3.7` on PATH that
    runs (a pyenv shim on PATH answers "command not found" when 3.7 is not the selected version)."""
    root = os.environ.get("PYENV_ROOT") or ""
    if not root and shutil.which("pyenv"):
        done = subprocess.run(["pyenv", "root"], capture_output=True, text=True, timeout=30)
        root = done.stdout.strip() if done.returncode == 0 else ""
    root = root or os.path.expanduser("~/.pyenv")
    candidates = sorted(glob.glob(os.path.join(root, "versions", "3.7.*", "bin", "python3.7")))
    on_path = shutil.which("python3.7")
    for candidate in [*reversed(candidates), *([on_path] if on_path else [])]:
        probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 7))"],
                               capture_output=True, text=True, timeout=30)
        if probe.returncode == 0 and probe.stdout.strip() == "True":
            return candidate
    return None


def require_python37() -> str:
    path = python37()
    if path is None:
        pytest.skip(NO_PYTHON_37)
    return path


def run37(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`python3.7 <args>` in the repository, with only the repository on its path (no venv)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no 3.7 bytecode beside the sources install-ableton copies
    return subprocess.run([require_python37(), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=env)


class OldLive:
    """`old_live.py` under Python 3.7: a simulated Live of `version` running the real script.

    `start()` returns once the script has registered with the daemon (its handshake); then the
    test may act (start a job elsewhere); `result()` waits for what the script showed.
    """

    def __init__(self, version: str, port: int, **request: Any) -> None:
        self.request = {"version": version, "port": port, "timeout": 120, **request}
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> OldLive:
        env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "VIRTUAL_ENV"))}
        env["PYTHONPATH"] = str(REPO)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        self._process = subprocess.Popen(
            [require_python37(), "-m", "tests.ableton.old_live", json.dumps(self.request)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env,
        )
        first = self._process.stdout.readline().strip() if self._process.stdout else ""
        if first != "ready":
            out, err = self._process.communicate(timeout=self.request["timeout"])
            pytest.fail(f"the script under Python 3.7 did not register ({first!r}):\n{out}\n{err}")
        return self

    def result(self) -> dict[str, Any]:
        assert self._process is not None, "start() first"
        try:
            out, err = self._process.communicate(timeout=self.request["timeout"] + 30)
        finally:
            self.close()
        assert self._process.returncode == 0, err
        result = json.loads(out.strip().splitlines()[-1])
        assert result["python"][:2] == [3, 7]
        return result

    def close(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=30)

    def __enter__(self) -> OldLive:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_old_live(version: str, port: int, **request: Any) -> dict[str, Any]:
    """Start an old Live, let the script act (`press`), and return what it showed."""
    with OldLive(version, port, **request) as live:
        return live.result()
