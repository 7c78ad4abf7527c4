"""What every Flowstate control surface shares: the script's version, its message prefix, the
surface Live talks to (doing nothing until a subclass overrides it) and the one shown when the
script cannot load.

Apart from the package's `__init__`, which holds Live's entry point and imports `surface` only
inside it, so the surface (which imports these) and the entry point never import each other.
"""

from __future__ import annotations

import sys
from typing import Any

# The script's version: the daemon's version it was installed from (a test keeps the two equal).
# The daemon sends its own in the `register` reply, so a stale installed copy is detected.
__version__ = "0.1.0"

PREFIX = "Flowstate: "


class LiveSurface:
    """What Live calls on a control surface object, doing nothing: surfaces override what they use."""

    def disconnect(self) -> None:
        """Live unloads the script."""

    def update_display(self) -> None:
        """Live's timer, about every 100 ms."""

    def refresh_state(self) -> None:
        """Live asks for the state to be sent again."""

    def build_midi_map(self, midi_map_handle: Any) -> None:
        """Nothing forwarded: notes and CCs keep playing the tracks."""

    def receive_midi(self, midi_bytes: Any) -> None:
        """MIDI that `build_midi_map` forwarded."""

    def connect_script_instances(self, instances: Any) -> None:
        """Live introduces the other control surfaces; Flowstate works alone."""

    def suggest_input_port(self) -> str:
        return ""

    def suggest_output_port(self) -> str:
        return ""

    def can_lock_to_devices(self) -> bool:
        return False

    def suggest_map_mode(self, cc_no: int, channel: int) -> int:
        """MIDI Map mode asks how to map a CC of this surface's input: -1, no suggestion (what
        Ableton's _Framework ControlSurface answers for a CC it has no control for; every script
        Live ships defines this, the hand-written Tranzport too)."""
        return -1


class FailedSurface(LiveSurface):
    """What Live gets when the script cannot load: it says so, and does nothing else."""

    def __init__(self, c_instance: Any, details: str) -> None:
        self._c = c_instance
        last = details.strip().splitlines()[-1] if details.strip() else "unknown error"
        python = "{}.{}.{}".format(*sys.version_info[:3])
        self._message = (
            f"{PREFIX}could not load ({last}; Live's Python {python}, Flowstate {__version__}): "
            "reinstall with `flowstate install-ableton` and restart Live; details in Live's Log.txt"
        )
        self._shown = False
        c_instance.log_message(f"{PREFIX}could not load (Flowstate {__version__}, Python {python}):\n{details}")
        self._show()

    def _show(self) -> None:
        self._c.show_message(self._message)

    def update_display(self) -> None:
        # Live may not draw a message shown while it is still starting: show it once more on the
        # first timer tick, when the window is up.
        if not self._shown:
            self._shown = True
            self._show()
