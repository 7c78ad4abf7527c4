"""Flowstate Bridge's MIDI Remote Script for Ableton Live 12.

`flowstate install-ableton` copies this folder to `<User Library>/Remote Scripts/Flowstate`; Live
then lists "Flowstate" as a Control Surface (Settings → Link, Tempo & MIDI) and, once it is
picked, calls `create_instance`. It runs in Live's embedded Python 3.11 with the standard library
and Live's `Live` module only. The settings you may want to change (the daemon's address, the MIDI
notes and CCs) are the constants at the top of `surface.py`.
"""

from __future__ import annotations

from typing import Any


def create_instance(c_instance: Any) -> Any:
    """Live's entry point: the control surface object for this script instance."""
    # Imported here, not at the top: `surface` imports Live's `Live` module, which exists only
    # inside Live, while the package (and its OSC codec) must stay importable anywhere.
    from .surface import FlowstateSurface

    return FlowstateSurface(c_instance)
