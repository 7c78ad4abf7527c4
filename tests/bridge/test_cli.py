"""The `flowstate` command line against a real daemon: send, status, commands, doctor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bridge import __version__
from bridge.testing import DaemonProcess


def flowstate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_")}
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args], capture_output=True, text=True, timeout=60, env={**clean, **(env or {})}
    )


def test_send_ping_prints_the_result(daemon: DaemonProcess) -> None:
    done = flowstate("send", "ping", "--config", str(daemon.config_path))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"reply": "pong", "version": __version__}


def test_send_takes_positional_and_named_arguments(daemon: DaemonProcess) -> None:
    config = str(daemon.config_path)
    first = flowstate("send", "register", "45001", "--config", config)
    second = flowstate("send", "register", "port=45002", "--config", config)
    assert json.loads(first.stdout)["port"] == 45001
    assert json.loads(second.stdout)["port"] == 45002
    status = json.loads(flowstate("status", "--config", config).stdout)
    assert {"127.0.0.1:45001", "127.0.0.1:45002"} <= set(status["listeners"])
    # Each `flowstate send` is a new client: a listener belongs to the socket that registered it,
    # so another process (this CLI again, any local program) may not take it away; it expires.
    for port in ("45001", "45002"):
        refused = flowstate("send", "unregister", port, "--config", config)
        assert refused.returncode == 1 and "forbidden" in refused.stderr, refused.stderr
    status = json.loads(flowstate("status", "--config", config).stdout)
    assert {"127.0.0.1:45001", "127.0.0.1:45002"} <= set(status["listeners"])


def test_send_reports_bad_arguments_and_unknown_commands(daemon: DaemonProcess) -> None:
    config = str(daemon.config_path)
    bad = flowstate("send", "register", "abc", "--config", config)
    assert bad.returncode == 1
    assert "bad_request: register: argument 'port' expected int in [1, 65535], got 'abc'" in bad.stderr
    unknown = flowstate("send", "stats", "--config", config)
    assert unknown.returncode == 1
    assert "unknown_command" in unknown.stderr and "status" in unknown.stderr


def test_status_without_a_daemon_says_how_to_start_one(tmp_path: Path) -> None:
    process = DaemonProcess(workdir=tmp_path)  # configured, never started: nothing listens
    done = flowstate("status", "--config", str(process.config_path), "--timeout", "0.5")
    assert done.returncode == 1
    assert "no daemon answered" in done.stderr and "make run" in done.stderr


def test_commands_lists_the_registry() -> None:
    done = flowstate("commands", "--json")
    names = {spec["name"]: spec for spec in json.loads(done.stdout)}
    assert {"ping", "status", "register", "unregister", "commands"} <= set(names)
    assert names["register"]["osc"] == "/flow/register"
    plain = flowstate("commands").stdout
    assert "register <port:int>" in plain


def test_doctor_reports_each_area_and_never_a_token_value(tmp_path: Path) -> None:
    process = DaemonProcess(workdir=tmp_path)
    done = flowstate(
        "doctor", "--config", str(process.config_path),
        env={"REPLICATE_API_TOKEN": "r8_very_secret_value", "HF_TOKEN": "hf_also_secret"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for area in ("python", "torch", "portaudio", "jack", "midi", "weights", "cloud tokens", "ports"):
        assert f" {area} " in out, f"doctor does not report {area}:\n{out}"
    assert "replicate_token, huggingface_token" in out.split("not set")[0]
    assert "r8_very_secret_value" not in out + done.stderr
    assert "hf_also_secret" not in out + done.stderr
