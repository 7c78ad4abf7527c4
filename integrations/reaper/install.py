"""`flowstate install-reaper`: the Flowstate actions, rendered from one template, into REAPER.

Each action is one row of `ACTIONS` (its title, the `flowstate_reaper` task it runs, what it does);
`TEMPLATE` turns a row into the ReaScript REAPER loads. `install` writes the actions, the shared
module and the OSC codec into `<resource path>/Scripts/Flowstate` and touches nothing else there.
REAPER keeps its action list itself (reaper-kb.ini), so the user loads the scripts once, by hand;
re-installing rewrites the same file names, which keeps the actions they loaded working.
"""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from string import Template

SCRIPTS_FOLDER = ("Scripts", "Flowstate")  # under REAPER's resource path
SHARED_MODULE = "flowstate_reaper.py"
CODEC_MODULE = "flowstate_osc.py"  # ableton_remote/osc.py, the one codec of the DAW-side scripts
HOW_TO_LOAD = "Actions > Show action list > New action > Load ReaScript..."


@dataclass(frozen=True)
class Action:
    """One REAPER action: its file `Flowstate - <title>.py` runs `flowstate_reaper.<task>`."""

    title: str  # users' action lists reference the file name: never rename one
    task: str  # the flowstate_reaper.Task subclass it runs
    slug: str  # names the script's globals (flowstate_<slug>_task / _step), unique per action
    summary: str  # the docstring's body, wrapped at 100 columns
    needs_daemon: bool = True

    @property
    def file_name(self) -> str:
        return f"Flowstate - {self.title}.py"


ACTIONS: tuple[Action, ...] = (
    Action(
        "separate selected item into stems", "SeparateSelectedItem", "separate",
        "Sends the selected media item's audio file to the Flowstate daemon (stems.separate over OSC),\n"
        "shows the job's progress in the ReaScript console, and puts each stem on a new track named after\n"
        "it, just below the item's track, at the item's position and with its trim: one undo point.\n"
        "REAPER stays responsive while the daemon works; stopping the script cancels the job.",
    ),
    Action(
        "generate a loop at the edit cursor", "GenerateLoop", "generate",
        "Asks for a preset (from the daemon's generate.presets), a prompt and a length in bars; tells the\n"
        "Flowstate daemon the project's tempo and time signature at the edit cursor (daw.set), sends\n"
        "`generate` over OSC, shows the job's progress in the ReaScript console, and puts the loop on a new\n"
        "track named after it (below the selected track, else last) at the edit cursor: one undo point.\n"
        "REAPER stays responsive while the daemon works; stopping the script cancels the job.",
    ),
    Action(
        "send tempo and time signature", "SendTempo", "tempo",
        "Tells the Flowstate daemon the project's tempo, the time signature at the play (or edit) cursor,\n"
        "and whether the transport is playing (daw.set), so jobs that work in bars use REAPER's tempo.",
    ),
    Action(
        "start live stems", "StartStream", "stream_start",
        "Starts the daemon's live stem stream (stream.start) on the audio device and model set in its\n"
        "config.yaml. Select the tracks that record the stems first: their media playback offset becomes\n"
        "minus the stream's exact round trip, so what they record plays in time. With no track selected,\n"
        "the console shows the figure to type in.",
    ),
    Action(
        "stop live stems", "StopStream", "stream_stop",
        "Stops the daemon's live stem stream (stream.stop); the model stays loaded for a quick restart.\n"
        "The tracks \"start live stems\" offset get their own media playback offset back, and what they\n"
        "recorded meanwhile is moved earlier by the round trip, so it stays in time.",
    ),
    Action(
        "set daemon address", "SetDaemonAddress", "address",
        "Asks for the daemon's OSC UDP address (host:port, default 127.0.0.1:9010), keeps it in REAPER's\n"
        "extended state for every Flowstate action, and checks that a daemon answers there.",
        needs_daemon=False,
    ),
)

# What every action is: find its folder, import the shared module, run one task from REAPER's
# defer loop. REAPER evaluates RPR_defer/RPR_atexit code in the script's own globals, hence the
# per-action global names.
TEMPLATE = Template('''\
"""Flowstate - $title (a REAPER action).

$summary

Needs ${needs}flowstate_reaper.py and flowstate_osc.py next to this file.
Written by `flowstate install-reaper`; a new install replaces it.
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
    flowstate_${slug}_task = flowstate_reaper.${task}()

    def flowstate_${slug}_step():
        if flowstate_${slug}_task.step():
            RPR_defer("flowstate_${slug}_step()")

    RPR_atexit("flowstate_${slug}_task.close()")
    if flowstate_${slug}_task.start():
        RPR_defer("flowstate_${slug}_step()")
''')


class InstallError(Exception):
    """The scripts cannot be installed there; the message says where and why."""


@dataclass(frozen=True)
class Installed:
    """What `install` did: the folder, and each file it owns there with "new", "updated" or "unchanged"."""

    folder: Path
    files: tuple[tuple[str, str], ...]


def render(action: Action) -> str:
    """The ReaScript of one action (ASCII: REAPER does not read every script as UTF-8)."""
    text = TEMPLATE.substitute(
        title=action.title, summary=action.summary, task=action.task, slug=action.slug,
        needs="`flowstate up` running, and " if action.needs_daemon else "",
    )
    if not text.isascii():
        raise ValueError(f"action {action.title!r}: the rendered script is not ASCII")
    return text


def default_resource_dir(platform: str, env: Mapping[str, str]) -> Path:
    """REAPER's resource path for a standard (not portable) install on `platform`.

    macOS ~/Library/Application Support/REAPER, Windows %APPDATA%\\REAPER, Linux ~/.config/REAPER,
    as listed by https://radugin.com/posts/2025-06-28/alternative-reaper-config-dir-for-test-automation
    (macOS), https://www.github.com/koulaxizis/reaper (Windows: AppData/Roaming/REAPER, Linux:
    ~/.config/REAPER) and reaper-mcp's REAPER_RESOURCE_PATH default (all three). REAPER shows the one
    it uses under Options > Show REAPER resource path (a portable install keeps it beside reaper.exe).
    """
    if platform == "win32":
        home = Path(env.get("USERPROFILE") or Path.home())
        return Path(env.get("APPDATA") or home / "AppData" / "Roaming") / "REAPER"
    home = Path(env.get("HOME") or Path.home())
    if platform == "darwin":
        return home / "Library" / "Application Support" / "REAPER"
    return home / ".config" / "REAPER"


def payload() -> dict[str, bytes]:
    """Every file install-reaper writes, by name: the six actions, the shared module, the codec."""
    files = {action.file_name: render(action).encode("ascii") for action in ACTIONS}
    files[SHARED_MODULE] = importlib.resources.files(__package__).joinpath(SHARED_MODULE).read_bytes()
    files[CODEC_MODULE] = importlib.resources.files("ableton_remote").joinpath("osc.py").read_bytes()
    return files


def install(resource_dir: Path) -> Installed:
    """Write the Flowstate scripts into `<resource_dir>/Scripts/Flowstate`; other files stay as they are.

    `resource_dir` must exist (REAPER makes it on its first start): a typo should not grow a tree
    REAPER never reads. Files that already hold these bytes are not rewritten.
    """
    if not resource_dir.is_dir():
        what = "is not a folder" if resource_dir.exists() else "does not exist"
        raise InstallError(
            f"REAPER's resource folder {resource_dir} {what}. Start REAPER once, or give the folder REAPER shows "
            "under Options > Show REAPER resource path with --reaper-resource-dir DIR"
        )
    folder = resource_dir.joinpath(*SCRIPTS_FOLDER)
    done: list[tuple[str, str]] = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in payload().items():
            target = folder / name
            before = target.read_bytes() if target.is_file() else None
            if before == data:
                done.append((name, "unchanged"))
                continue
            partial = folder / f".{name}.partial"
            try:
                partial.write_bytes(data)
                os.replace(partial, target)  # REAPER never reads half a script
            finally:
                partial.unlink(missing_ok=True)
            done.append((name, "new" if before is None else "updated"))
    except OSError as err:
        raise InstallError(f"cannot install into {folder}: {err.strerror or err}") from err
    return Installed(folder, tuple(done))
