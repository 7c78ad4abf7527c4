"""Flowstate Bridge's MIDI Remote Script for Ableton Live 11.3.25+ and 12.

`flowstate install-ableton` copies this folder to `<User Library>/Remote Scripts/Flowstate`; Live
then lists "Flowstate" as a Control Surface (Settings → Link, Tempo & MIDI) and, once it is
picked, calls `create_instance`. It runs in Live's embedded Python (3.7.3 in Live 11 and 12.0,
3.11.6 from Live 12.1) with the standard library and Live's `Live` module only, so every module
here must import and run on Python 3.7: no subscripted builtins or `collections.abc` generics
outside annotations (those are strings here, thanks to `from __future__ import annotations`). The
settings you may want to change (the daemon's address, the MIDI channel, notes and CCs) are the
constants at the top of `surface.py`.
"""

from __future__ import annotations

import sys
import traceback
from typing import Any

# The script's version: the daemon's version it was installed from (a test keeps the two equal).
# The daemon sends its own in the `register` reply, so a stale installed copy is detected.
__version__ = "0.1.0"

PREFIX = "Flowstate: "


def create_instance(c_instance: Any) -> Any:
    """Live's entry point: the control surface object for this script instance.

    A failure to load (a module this Live's Python cannot import, a missing Live API) is shown in
    the status bar and written to Live's Log.txt; Live then gets an inert surface instead of an
    exception, which it would only write to Log.txt, leaving the user with nothing.
    """
    try:
        # Imported here, not at the top: `surface` imports Live's `Live` module, which exists only
        # inside Live, while the package (and its OSC codec) must stay importable anywhere.
        from .surface import FlowstateSurface

        return FlowstateSurface(c_instance)
    except Exception:  # noqa: BLE001 - the boundary with Live: report, never raise into it
        return FailedSurface(c_instance, traceback.format_exc())


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
