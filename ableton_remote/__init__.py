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

import traceback
from typing import Any

from .base import FailedSurface, __version__

__all__ = ["__version__", "create_instance"]


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
