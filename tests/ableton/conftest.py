"""Load the Remote Script's real code against the simulated Live (see live_sim.py)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.ableton.live_sim import LiveSet, live_module

# Live's `Live` module exists only inside Live, and `ableton_remote.surface` imports it at the top
# (as Remote Scripts do). The test modules import the script, so the simulation must be in place
# before collection: here, when pytest loads this conftest.
sys.modules.setdefault("Live", live_module())


class LoadedScript:
    """A Live set with Flowstate picked as a Control Surface; `tick` is Live's ~100 ms timer."""

    def __init__(self, live: LiveSet, surface: Any) -> None:
        self.live = live
        self.surface = surface

    @property
    def messages(self) -> list[str]:
        """Everything the script put in Live's status bar, oldest first."""
        return self.live.c_instance.messages

    def tick(self, times: int = 1) -> None:
        for _ in range(times):
            self.surface.update_display()

    def tick_until(self, done: Callable[[], Any], what: str, timeout: float = 60.0) -> None:
        """Call the timer as Live does until `done()` holds; fail naming `what` after `timeout`."""
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: not within {timeout} s; status bar: {self.messages[-5:]}; "
                            f"log: {self.live.c_instance.log[-5:]}")
            self.surface.update_display()
            time.sleep(0.01)
        self.assert_no_internal_error()

    def shown(self, text: str) -> bool:
        return any(text in message for message in self.messages)

    def assert_no_internal_error(self) -> None:
        crashes = [m for m in self.messages if "internal error" in m]
        assert not crashes, f"the script hit a bug: {crashes}\n" + "\n".join(self.live.c_instance.log)


@pytest.fixture
def load_script(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[LiveSet, int], LoadedScript]]:
    """`load_script(live, port)`: Live calls the package's `create_instance`, pointed at `port`."""
    import ableton_remote
    from ableton_remote import surface as surface_module

    loaded: list[LoadedScript] = []

    def load(live: LiveSet, port: int) -> LoadedScript:
        monkeypatch.setattr(surface_module, "DAEMON_PORT", port)
        script = LoadedScript(live, ableton_remote.create_instance(live.c_instance))
        loaded.append(script)
        return script

    yield load
    for script in loaded:
        script.surface.disconnect()  # as Live does when the set closes; disconnecting twice is harmless
        script.assert_no_internal_error()
