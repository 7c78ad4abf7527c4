"""Flowstate's REAPER actions: what `flowstate install-reaper` writes into REAPER's Scripts/Flowstate.

`install.py` declares the actions and renders each from one template; `flowstate_reaper.py` is the
module they share (it runs inside REAPER, beside the OSC codec kept in `ableton_remote/osc.py`).
"""
