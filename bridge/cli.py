"""The `flowstate` command line: up, send, commands, status, doctor.

Exit codes: 0 success; 1 an error reply, no daemon, or a start-up failure (port in use);
2 invalid configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bridge import __version__
from bridge.commands import iter_commands, lookup
from bridge.config import Config, ConfigError, default_config_path, load_config
from bridge.errors import BridgeError, StartupError

log = logging.getLogger("flowstate")


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
    send.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the reply")

    cmds = sub.add_parser("commands", parents=[common], help="list the command vocabulary")
    fmt = cmds.add_mutually_exclusive_group()
    fmt.add_argument("--markdown", action="store_true", help="the README's protocol tables")
    fmt.add_argument("--json", action="store_true", help="machine-readable")

    status = sub.add_parser("status", parents=[common], help="ask the running daemon what it is doing")
    status.add_argument("--timeout", type=float, default=2.0)

    sub.add_parser("doctor", parents=[common], help="check this machine: Python, torch, audio, MIDI, ports")
    sub.add_parser("devices", parents=[common], help="list audio devices (for stream.device)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.action == "commands":
        return _commands(args)
    try:
        config = load_config(args.config)
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
    raise AssertionError(f"unhandled action {args.action}")  # argparse restricts the choices


def _setup_logging(config: Config) -> None:
    logging.basicConfig(
        level=config.daemon.log_level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _up(config: Config) -> int:
    from bridge.daemon import serve

    try:
        asyncio.run(serve(config))
    except StartupError as err:
        log.error("%s", err)
        return err.exit_code
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
            named[name] = by_name[name].coerce_text(value, cmd)
            continue
        if position >= len(spec.args):
            raise BridgeError(f"{cmd}: too many arguments; usage: {spec.signature()}")
        arg = spec.args[position]
        named[arg.name] = arg.coerce_text(word, cmd)
        position += 1
    return named


def _send(config: Config, cmd: str, words: Sequence[str], timeout: float) -> int:
    from bridge.client import Client, request_endpoint

    try:
        named = parse_send_args(cmd, words)
        with Client(request_endpoint(config), timeout) as client:
            result = client.call(cmd, named)
    except BridgeError as err:
        print(f"flowstate: {err.code}: {err.message}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


def _commands(args: argparse.Namespace) -> int:
    if args.markdown:
        from bridge.docs import markdown_tables

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
    from bridge.doctor import FAIL, render, run_checks

    source = path or default_config_path()
    checks = run_checks(config, str(source) if source else "built-in defaults (no config.yaml found)")
    print(render(checks))
    return 1 if any(c.state == FAIL for c in checks) else 0


def _devices() -> int:
    from bridge.stream import import_sounddevice

    try:
        sounddevice = import_sounddevice()
    except OSError as err:
        print(f"flowstate: PortAudio is not installed ({err}); `make run` installs libportaudio2", file=sys.stderr)
        return 1
    apis = sounddevice.query_hostapis()
    devices = sounddevice.query_devices()
    if not len(devices):
        print("no audio devices (on Linux, start JACK or plug in an interface)")
        return 1
    for index, device in enumerate(devices):
        api = apis[device["hostapi"]]["name"]
        print(
            f"{index:>3}  {device['name']:<40} {api:<28} in {device['max_input_channels']:>2}  "
            f"out {device['max_output_channels']:>2}  {device['default_samplerate']:.0f} Hz"
        )
    return 0
