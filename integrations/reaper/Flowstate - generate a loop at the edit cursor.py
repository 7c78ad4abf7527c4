"""Flowstate - generate a loop at the edit cursor (a REAPER action).

Asks for a preset (from the daemon's generate.presets), a prompt and a length in bars; tells the
Flowstate daemon the project's tempo and time signature at the edit cursor (daw.set), sends
`generate` over OSC, shows the job's progress in the ReaScript console, and puts the loop on a new
track named after it (below the selected track, else last) at the edit cursor: one undo point.
REAPER stays responsive while the daemon works; stopping the script cancels the job.

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
    flowstate_generate_task = flowstate_reaper.GenerateLoop()

    def flowstate_generate_step():
        if flowstate_generate_task.step():
            RPR_defer("flowstate_generate_step()")

    RPR_atexit("flowstate_generate_task.close()")
    if flowstate_generate_task.start():
        RPR_defer("flowstate_generate_step()")
