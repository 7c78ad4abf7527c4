"""Flowstate - set daemon address (a REAPER action).

Asks for the daemon's OSC UDP address (host:port, default 127.0.0.1:9010), keeps it in REAPER's
extended state for every Flowstate action, and checks that a daemon answers there.

Needs flowstate_reaper.py and flowstate_osc.py next to this file.
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
    flowstate_address_task = flowstate_reaper.SetDaemonAddress()

    def flowstate_address_step():
        if flowstate_address_task.step():
            RPR_defer("flowstate_address_step()")

    RPR_atexit("flowstate_address_task.close()")
    if flowstate_address_task.start():
        RPR_defer("flowstate_address_step()")
