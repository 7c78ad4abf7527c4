"""Start the daemon at login: the file each OS reads for that, written by `flowstate install-service`.

macOS: a launchd agent (~/Library/LaunchAgents/org.flowstate.bridge.plist). Linux: a systemd user
unit (~/.config/systemd/user/flowstate.service). Windows: a script in the Startup folder, which
Explorer runs at every login (no administrator rights, no Task Scheduler entry to clean up).
Each runs `<this Python> -m bridge up`, so the daemon is the one installed with this Python.
"""

from __future__ import annotations

import plistlib
import re
from dataclasses import dataclass
from pathlib import Path

from bridge.config import PlatformFolders

LAUNCHD_LABEL = "org.flowstate.bridge"
SYSTEMD_UNIT = "flowstate.service"
STARTUP_SCRIPT = "Flowstate Bridge.cmd"
PLATFORMS = ("darwin", "linux", "win32")


@dataclass(frozen=True)
class ServiceFile:
    """One file to write, and what to run (or do) to start and to stop the daemon without logging out."""

    path: Path
    content: str
    start_now: str
    stop_now: str
    log: str  # where its output goes
    make_dirs: tuple[Path, ...] = ()  # folders that must exist before it runs (launchd creates no folders)


def _arguments(python: str, config: Path | None) -> list[str]:
    return [python, "-m", "bridge", "up", *(["--config", str(config)] if config is not None else [])]


def service_file(folders: PlatformFolders, python: str, config: Path | None) -> ServiceFile:
    """The login item of `folders.platform` that runs `python -m bridge up [--config CONFIG]`."""
    arguments = _arguments(python, config)
    if folders.platform == "darwin":
        return _launchd(folders, arguments)
    if folders.platform == "win32":
        return _startup_script(folders, arguments)
    return _systemd(folders, arguments)


def _launchd(folders: PlatformFolders, arguments: list[str]) -> ServiceFile:
    path = folders.autostart_dir / f"{LAUNCHD_LABEL}.plist"
    log = folders.log_dir / "daemon.log"
    agent = {
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": arguments,
        "RunAtLoad": True,
        # Started again after a crash, not after a clean stop (launchctl bootout, flowstate exit 0).
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": 10,
        # Audio work: without this macOS may throttle a background agent (App Nap, timer coalescing).
        "ProcessType": "Interactive",
        "WorkingDirectory": str(folders.home),
        "StandardOutPath": str(log),
        "StandardErrorPath": str(log),
    }
    content = plistlib.dumps(agent, sort_keys=False).decode("utf-8")
    return ServiceFile(path, content, start_now=f'launchctl bootstrap gui/$(id -u) "{path}"',
                       stop_now=f'launchctl bootout gui/$(id -u) "{path}"', log=str(log), make_dirs=(log.parent,))


# Words that need no quotes in an ExecStart line or a .cmd file.
_PLAIN = re.compile(r"[A-Za-z0-9_.,:/\\+-]+")


def _systemd_quote(word: str) -> str:
    """One ExecStart word: systemd's specifier character % doubled; quoted when it has to be."""
    word = word.replace("%", "%%")
    if _PLAIN.fullmatch(word) and "\\" not in word:  # a backslash is an escape to systemd
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _systemd(folders: PlatformFolders, arguments: list[str]) -> ServiceFile:
    path = folders.autostart_dir / SYSTEMD_UNIT
    content = "\n".join([
        "# Written by `flowstate install-service`: the Flowstate Bridge daemon, started at login.",
        "[Unit]",
        "Description=Flowstate Bridge (AI audio engines beside your DAW)",
        "After=sound.target",
        "",
        "[Service]",
        "Type=exec",
        "ExecStart=" + " ".join(_systemd_quote(word) for word in arguments),
        "WorkingDirectory=%h",
        # SIGTERM is a graceful stop; the daemon needs at most 5 s for it.
        "TimeoutStopSec=15",
        "Restart=on-failure",
        "RestartSec=5",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ])
    return ServiceFile(path, content,
                       start_now=f"systemctl --user daemon-reload && systemctl --user enable --now {SYSTEMD_UNIT}",
                       stop_now=f"systemctl --user disable --now {SYSTEMD_UNIT}",
                       log=f"journalctl --user -u {SYSTEMD_UNIT}")


def _cmd_quote(word: str) -> str:
    """A word for a .cmd file: `%` doubled (cmd expands %NAME% even inside quotes); quoted when it has to be."""
    word = word.replace("%", "%%")
    return word if _PLAIN.fullmatch(word) else '"' + word + '"'


def _caret_unquoted(line: str) -> str:
    """A batch file's line with `^` before each of cmd's special characters where cmd reads it out of
    quotes. cmd reads a line in one pass, each `"` turning quoting on or off: in `cmd /c "a "b c" d"`
    the quoted words of the inner command are out of quotes to it, so `&` in a folder name
    (`C:\\Users\\R&B\\...`) would end the command there; escaped, `^` is gone when the inner cmd reads
    the word, in its own quotes."""
    out, quoted = [], False
    for char in line:
        if char == '"':
            quoted = not quoted
        elif not quoted and char in "&|<>^()":
            out.append("^")
        out.append(char)
    return "".join(out)


def _startup_script(folders: PlatformFolders, arguments: list[str]) -> ServiceFile:
    path = folders.autostart_dir / STARTUP_SCRIPT
    log = str(folders.log_dir).replace("/", "\\") + "\\daemon.log"
    log_dir = str(folders.log_dir).replace("/", "\\")
    command = " ".join(_cmd_quote(word) for word in arguments)
    lines = [
        "@echo off",
        # cmd reads a batch file in the console's OEM code page (437, 850 ...), line by line: from here
        # on it reads this file's UTF-8, so a path under C:\Users\Søren or José is the folder it names.
        "chcp 65001 >nul",
        "rem Written by `flowstate install-service`: starts the Flowstate Bridge daemon when you log in.",
        "rem It runs in a minimised window named Flowstate Bridge: close that window to stop it.",
        _caret_unquoted(f"rem Its log: {log}. Delete this file, or run `flowstate install-service --uninstall`, "
                        "to stop starting it."),
        _caret_unquoted(f"if not exist {_cmd_quote(log_dir)} mkdir {_cmd_quote(log_dir)}"),
        # cmd /c strips the outer pair of quotes, leaving the quoted command and the redirection.
        _caret_unquoted(f'start "Flowstate Bridge" /min cmd /c "{command} >> {_cmd_quote(log)} 2>&1"'),
        "",
    ]
    return ServiceFile(path, "\r\n".join(lines), start_now=f'start "" "{path}"  (or log out and in)',
                       stop_now='close the "Flowstate Bridge" window (Ctrl-C in it)', log=log)
