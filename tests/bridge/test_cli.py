"""The `flowstate` command line against a real daemon: send, status, commands, doctor."""

from __future__ import annotations

import json
import os
import plistlib
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bridge import __version__
from bridge.doctor import audio_backend_check, midi_backend_check
from bridge.testing import DaemonProcess


def flowstate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_")}
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args], capture_output=True, text=True, timeout=60,
        env={**clean, **(env or {})}
    )


@pytest.mark.skipif(not hasattr(signal, "SIGPIPE"), reason="no SIGPIPE (Windows)")
@pytest.mark.parametrize("blocked", [False, True], ids=["shell", "started-with-SIGPIPE-blocked"])
def test_a_reader_that_stops_early_ends_the_listing_quietly(tmp_path: Path, blocked: bool) -> None:
    # `flowstate commands --json | head` printed a BrokenPipeError traceback. Here the pipe's reading
    # end is closed before the command writes, as head's is once it has its lines. A parent may pass
    # SIGPIPE on blocked (libjack blocks it in the thread that opens a client: this suite's own
    # process, after a test that opened JACK MIDI ports).
    reading, writing = os.pipe()
    os.close(reading)

    def block() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGPIPE})

    try:
        done = subprocess.run([sys.executable, "-m", "bridge", "commands", "--json"], stdout=writing,
                              stderr=subprocess.PIPE, text=True, timeout=60, cwd=tmp_path,
                              preexec_fn=block if blocked else None)
    finally:
        os.close(writing)
    assert done.stderr == "" and done.returncode == -signal.SIGPIPE, (done.returncode, done.stderr)


def test_output_the_console_code_page_cannot_hold_is_escaped_not_a_crash(tmp_path: Path) -> None:
    # Windows writes a piped stdout in the ANSI code page (cp1252, strict), as PYTHONIOENCODING does
    # here: the install's "Settings → Link" ended in a UnicodeEncodeError, exit 1, after the copy.
    dest = tmp_path / "Remote Scripts"
    done = flowstate("install-ableton", "--dest", str(dest), env={"PYTHONIOENCODING": "cp1252"})
    assert done.returncode == 0, done.stderr
    assert "Settings \\u2192 Link, Tempo & MIDI" in done.stdout
    assert (dest / "Flowstate" / "__init__.py").is_file()


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


def test_send_fills_positional_words_around_named_ones_and_refuses_what_does_not_fit(daemon: DaemonProcess) -> None:
    from bridge.cli import parse_send_args
    from bridge.errors import BadRequest

    # A positional word after `path=` is the next argument (the model), not the path again.
    assert parse_send_args("stems.separate", ["path=/x/song.wav", "htdemucs", "two_stems=vocals"]) == {
        "path": "/x/song.wav", "model": "htdemucs", "two_stems": "vocals"}
    assert parse_send_args("stems.separate", ["model=htdemucs", "/x/song.wav"]) == {
        "model": "htdemucs", "path": "/x/song.wav"}
    with pytest.raises(BadRequest, match="argument 'path' is given twice"):
        parse_send_args("stems.separate", ["/x/a.wav", "path=/x/b.wav"])
    config = str(daemon.config_path)
    extra = flowstate("send", "ping", "x", "--config", config)
    assert extra.returncode == 1 and "bad_request: ping: too many arguments; usage: ping" in extra.stderr, extra.stderr
    for timeout in ("-1", "0", "0.0004", "nan", "inf", "soon"):
        refused = flowstate("send", "ping", "--timeout", timeout, "--config", config)
        assert refused.returncode == 2 and "--timeout" in refused.stderr and "Traceback" not in refused.stderr, (
            timeout, refused.stderr)


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
        # An empty torch.hub cache, whatever this machine has downloaded.
        env={"REPLICATE_API_TOKEN": "r8_very_secret_value", "HF_TOKEN": "hf_also_secret",
             "TORCH_HOME": str(tmp_path / "torch")},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for area in ("python", "torch", "openvino", "portaudio", "jack", "midi", "weights", "openunmix", "cloud tokens",
                 "ports"):
        assert f" {area} " in out, f"doctor does not report {area}:\n{out}"
    # No Open-Unmix weights on disk here (and no download from doctor): it says where to put them.
    assert "model 'openunmix:umxl': no Open-Unmix weights found" in out and "models.openunmix_dir" in out
    assert "replicate_token, huggingface_token" in out.split("not set")[0]
    assert "r8_very_secret_value" not in out + done.stderr
    assert "hf_also_secret" not in out + done.stderr


# -- install-service: the login item of each OS, written into a temporary home ----------------------

def home_env(home: Path) -> dict[str, str]:
    """A user whose every folder is under `home`, on whichever OS `--platform` names."""
    return {"HOME": str(home), "USERPROFILE": str(home), "APPDATA": str(home / "AppData" / "Roaming"),
            "LOCALAPPDATA": str(home / "AppData" / "Local"), "XDG_CONFIG_HOME": "", "XDG_DATA_HOME": "",
            "XDG_STATE_HOME": ""}


def test_install_service_writes_a_systemd_user_unit_that_runs_this_python(tmp_path: Path) -> None:
    home = tmp_path / "home"
    process = DaemonProcess(workdir=tmp_path)  # only for its config file
    done = flowstate("install-service", "--platform", "linux", "--config", str(process.config_path), env=home_env(home))
    assert done.returncode == 0, done.stderr
    unit = home / ".config" / "systemd" / "user" / "flowstate.service"
    assert f"Wrote {unit}" in done.stdout
    assert "systemctl --user enable --now flowstate.service" in done.stdout
    text = unit.read_text()
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    # The very command the test daemons run: this Python, the installed package, this config.
    words = shlex.split(exec_start.removeprefix("ExecStart="))
    assert words == [sys.executable, "-m", "bridge", "up", "--config", str(process.config_path)]
    assert "WantedBy=default.target" in text and "Restart=on-failure" in text
    if shutil.which("systemd-analyze"):
        verified = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
        assert verified.returncode == 0, verified.stderr
        assert "Unknown" not in verified.stderr and "ignoring" not in verified.stderr, verified.stderr

    again = flowstate("install-service", "--platform", "linux", env=home_env(home))
    assert again.returncode == 0 and f"Replaced {unit}" in again.stdout
    assert "--config" not in unit.read_text()  # without --config: the user's config folder at start
    removed = flowstate("install-service", "--platform", "linux", "--uninstall", env=home_env(home))
    assert removed.returncode == 0 and not unit.exists()
    assert "systemctl --user disable --now flowstate.service" in removed.stdout


def install_service_with_config(tmp_path: Path, platform: str, folder: str) -> tuple[Path, Path, str]:
    """`flowstate install-service --platform P --config <folder>/config.yaml` for a user in tmp_path/home."""
    home = tmp_path / "home"
    config = tmp_path / folder / "config.yaml"
    config.parent.mkdir()
    config.write_text("osc:\n  udp_port: 9110\n")
    done = flowstate("install-service", "--platform", platform, "--config", str(config), env=home_env(home))
    assert done.returncode == 0, done.stderr
    return home, config, done.stdout


def test_install_service_writes_a_launchd_agent_for_macos(tmp_path: Path) -> None:
    home, config, stdout = install_service_with_config(tmp_path, "darwin", "my settings")
    plist = home / "Library" / "LaunchAgents" / "org.flowstate.bridge.plist"
    agent = plistlib.loads(plist.read_bytes())
    assert agent["Label"] == "org.flowstate.bridge"
    assert agent["ProgramArguments"] == [sys.executable, "-m", "bridge", "up", "--config", str(config)]
    assert agent["RunAtLoad"] is True and agent["KeepAlive"] == {"SuccessfulExit": False}
    assert agent["ProcessType"] == "Interactive"
    log = home / "Library" / "Logs" / "Flowstate" / "daemon.log"
    assert agent["StandardErrorPath"] == agent["StandardOutPath"] == str(log)
    assert log.parent.is_dir()  # launchd does not create it, and would not start the agent
    assert f'launchctl bootstrap gui/$(id -u) "{plist}"' in stdout


def test_install_service_puts_a_script_in_the_windows_startup_folder(tmp_path: Path) -> None:
    home, config, _ = install_service_with_config(tmp_path, "win32", "100% Søren's")
    script = home / "AppData" / "Roaming" / "Microsoft" / "Windows" / "Start Menu" / "Programs" / "Startup" / \
        "Flowstate Bridge.cmd"
    raw = script.read_bytes()
    assert raw.count(b"\r\n") == raw.count(b"\n")  # cmd.exe's line endings
    lines = raw.decode("utf-8").splitlines()
    # cmd reads a batch file in the console's OEM code page until told otherwise, and "ø" in UTF-8
    # would read as two other letters there: the folder would not be found.
    assert lines[:2] == ["@echo off", "chcp 65001 >nul"]
    assert all(line.isascii() for line in lines[:2])
    start = next(line for line in lines if line.startswith("start "))
    # A minimised window, this Python, the config (cmd would expand a lone %), output to the log.
    assert start.startswith('start "Flowstate Bridge" /min cmd /c "')
    assert f"{sys.executable} -m bridge up --config " in start
    assert f'"{str(config).replace("%", "%%")}"' in start
    log = str(home / "AppData" / "Local" / "Flowstate" / "logs").replace("/", "\\")
    assert f">> {log}\\daemon.log 2>&1" in start
    assert any(line.startswith("if not exist") and log in line for line in lines)


def _cmd_reads(line: str, batch: bool = True) -> list[str]:
    """The commands cmd.exe runs for one line, as its parser reads a line (a batch file's phases 1
    and 2 in dbenham's account of cmd.exe's parser, StackOverflow question 4094699): `%%` is `%` in a
    batch file; then in one pass each `"` turns quoting on or off, and out of quotes `^` escapes the
    next character (and goes), and an `&` or `|` ends the command (`>&` is a redirection's handle)."""
    if batch:
        line = line.replace("%%", "%")
    commands, current, quoted, i = [], "", False, 0
    while i < len(line):
        char = line[i]
        if char == '"':
            quoted = not quoted
        elif not quoted and char == "^":
            i += 1
            char = line[i]
        elif not quoted and char in "&|" and not current.endswith(">"):
            commands.append(current)
            current, i = "", i + (2 if line[i + 1:i + 2] == char else 1)
            continue
        current += char
        i += 1
    return [*commands, current]


def _words(command: str) -> list[str]:
    """A command's words, split at spaces out of quotes, the quotes gone."""
    words, current, quoted = [], "", False
    for char in command.strip():
        if char == '"':
            quoted = not quoted
        elif char == " " and not quoted:
            words, current = [*words, current] if current else words, ""
            continue
        else:
            current += char
    return [*words, current] if current else words


@pytest.mark.parametrize("folder", ["R&B (Mix) ^1 100%", "Drum & Bass"])
def test_the_windows_login_script_runs_the_daemon_from_a_folder_named_with_cmd_s_special_characters(
    tmp_path: Path, folder: str
) -> None:
    # Windows lets a user or a folder be named `R&B`. The login script ran `start ... cmd /c "..."`, in
    # which the quoted config path is out of quotes to cmd: the command ended at the `&`.
    home, config, _ = install_service_with_config(tmp_path, "win32", folder)
    script = home / "AppData" / "Roaming" / "Microsoft" / "Windows" / "Start Menu" / "Programs" / "Startup" / \
        "Flowstate Bridge.cmd"
    start = next(line for line in script.read_text("utf-8").splitlines() if line.startswith("start "))
    [run] = _cmd_reads(start)  # one command: start
    head, inner = run.split(" cmd /c ", 1)
    assert head == 'start "Flowstate Bridge" /min'
    assert inner[0] == inner[-1] == '"'  # cmd /c takes off the first and the last quote
    [command] = _cmd_reads(inner[1:-1], batch=False)
    log = str(home / "AppData" / "Local" / "Flowstate" / "logs").replace("/", "\\") + "\\daemon.log"
    assert _words(command) == [sys.executable, "-m", "bridge", "up", "--config", str(config), ">>", log, "2>&1"]


def test_install_service_refuses_a_config_the_daemon_could_not_start_with(tmp_path: Path) -> None:
    home = tmp_path / "home"
    config = tmp_path / "config.yaml"
    config.write_text("osc:\n  udp_port: 70000\n")
    done = flowstate("install-service", "--platform", "linux", "--config", str(config), env=home_env(home))
    assert done.returncode == 2
    assert "osc.udp_port = 70000" in done.stderr
    missing = flowstate("install-service", "--platform", "linux", "--config", str(tmp_path / "absent.yaml"),
                        env=home_env(home))
    assert missing.returncode == 2 and "absent.yaml does not exist" in missing.stderr
    assert not (home / ".config").exists()  # nothing written


# -- doctor: each OS's audio and MIDI back-ends ----------------------------------------------------

# PortAudio's host API names as each OS's sounddevice build lists them.
MAC_AUDIO = ["Core Audio"]
WINDOWS_AUDIO = ["MME", "Windows DirectSound", "Windows WASAPI", "Windows WDM-KS"]


@pytest.mark.parametrize(
    ("platform", "host_apis", "state", "words"),
    [
        ("darwin", MAC_AUDIO, "ok", ["Core Audio"]),
        ("darwin", [], "fail", ["no Core Audio", "reinstall sounddevice"]),
        ("win32", WINDOWS_AUDIO, "ok", ["WASAPI", "no ASIO", "SD_ENABLE_ASIO=1"]),
        ("win32", ["ASIO", *WINDOWS_AUDIO], "ok", ["WASAPI; ASIO"]),
        ("win32", ["MME"], "warn", ["neither WASAPI nor ASIO", "reinstall sounddevice"]),
        ("linux", ["ALSA", "OSS", "JACK Audio Connection Kit"], "ok", ["JACK"]),
        ("linux", ["ALSA", "OSS"], "warn", ["no JACK", "start a JACK server"]),
        ("linux", ["OSS"], "fail", ["neither JACK nor ALSA", "apt-get install"]),
    ],
)
def test_doctor_names_the_audio_backend_of_each_os_and_what_to_do_without_it(
    platform: str, host_apis: list[str], state: str, words: list[str]
) -> None:
    check = audio_backend_check(platform, host_apis)
    assert check.state == state, check.detail
    for word in words:
        assert word in check.detail, check.detail


@pytest.mark.parametrize(
    ("platform", "apis", "sequencer", "state", "words"),
    [
        ("darwin", ["CoreMidi"], True, "ok", ["CoreMIDI"]),
        ("win32", ["Windows MultiMedia"], True, "ok", ["WinMM", "loopMIDI", "midi.inputs"]),
        ("win32", [], True, "fail", ["no Windows MultiMedia", "reinstall"]),
        ("linux", ["ALSA", "Jack"], True, "ok", ["ALSA and Jack"]),
        ("linux", ["ALSA", "Jack"], False, "warn", ["modprobe snd-seq", "midi.api: jack"]),
    ],
)
def test_doctor_names_the_midi_backend_of_each_os_and_what_to_do_without_it(
    platform: str, apis: list[str], sequencer: bool, state: str, words: list[str]
) -> None:
    check = midi_backend_check(platform, apis, alsa_sequencer=sequencer)
    assert check.state == state, check.detail
    for word in words:
        assert word in check.detail, check.detail


def test_doctor_reports_this_machines_audio_and_midi_backends(tmp_path: Path) -> None:
    done = flowstate("doctor", "--config", str(DaemonProcess(workdir=tmp_path).config_path))
    lines = {line.split()[1]: line for line in done.stdout.splitlines() if len(line.split()) > 2}
    assert "audio" in lines and "backend" in lines["audio"], done.stdout
    expected = {"darwin": "Core Audio", "win32": "WASAPI"}.get(sys.platform, "ALSA")
    assert expected in lines["audio"] + lines["midi"], done.stdout
