"""Flowstate - start live stems (a REAPER action).

Starts the daemon's live stem stream (stream.start) on the audio device and model set in its
config.yaml. Select the tracks that record the stems first: their media playback offset becomes
minus the stream's exact round trip, so what they record plays in time. With no track selected,
the console shows the figure to type in.

Needs `flowstate up` running, and flowstate_reaper.py and flowstate_osc.py next to this file.
"""

import os
import sys

from reaper_python import *


def _flowstate_folder():
    """The folder of this script and its helpers (REAPER does not define __file__ for ReaScripts)."""
    try:
        return os.path.dirname(os.path.abspath(__file__))
    except NameError:
        pass
    try:
        script = RPR_get_action_context()[1]  # newer REAPERs: (is_new_value, filename, ...)
    except (NameError, TypeError, IndexError):
        script = ""
    if isinstance(script, str) and script.endswith(".py"):
        return os.path.dirname(script)
    return os.path.join(RPR_GetResourcePath(), "Scripts", "Flowstate")


FLOWSTATE_FOLDER = _flowstate_folder()
if FLOWSTATE_FOLDER not in sys.path:
    sys.path.insert(0, FLOWSTATE_FOLDER)
try:
    import flowstate_reaper
except ImportError as err:
    flowstate_reaper = None
    RPR_ShowMessageBox(
        "Cannot load the Flowstate helpers (%s). Keep flowstate_reaper.py and flowstate_osc.py "
        "next to this script, in %s." % (err, FLOWSTATE_FOLDER), "Flowstate", 0)

if flowstate_reaper is not None:
    flowstate_stream_start_task = flowstate_reaper.StartStream()

    def flowstate_stream_start_step():
        if flowstate_stream_start_task.step():
            RPR_defer("flowstate_stream_start_step()")

    RPR_atexit("flowstate_stream_start_task.close()")
    if flowstate_stream_start_task.start():
        RPR_defer("flowstate_stream_start_step()")
