"""The Max for Live device: its patcher, the `.amxd` built from it, and the device at work.

Max cannot run here, so the patcher runs on `max_sim` (Max's objects as Cycling '74's reference
describes them, with real UDP sockets on loopback): loadbang, the metro's ticks, files dropped on
live.drop, the buttons and dials, a Set saved and opened again, and two devices in one Set. What
the device sends must be registry commands whose arguments bind, and against a real daemon (with
a real live stream on JACK's dummy backend) it must show what the user expects: progress, results,
errors, and the daemon again after it was started late or restarted.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import soundfile
from pythonosc.osc_message_builder import OscMessageBuilder

from bridge.client import Client
from bridge.commands import EVENTS, lookup_address
from bridge.config import Config
from bridge.protocol import ERROR_ADDRESS
from bridge.stream import SILENT_INPUT_SECONDS
from bridge.testing import SLOW_SECONDS, DaemonProcess, passthrough_htdemucs_repo
from tests.bridge.test_slow_replies import _starting, loading_daemon
from tests.conftest import JackServer
from tests.integrations.conftest import STEMS, write_song
from tests.integrations.max_sim import LiveControl, MaxDevice, Metro, UdpReceive, pump

MAX_FOLDER = Path(__file__).resolve().parents[2] / "integrations" / "max"
PATCH = MAX_FOLDER / "flowstate.maxpat"
AMXD = MAX_FOLDER / "Flowstate.amxd"
SAMPLE_PATH = "/Users/me/Music/Flowstate/loop.wav"  # what live.drop + conformpath would give
NO_STREAM = "stream.set: no stream is running; stream.start one first"
REGISTER_REPLY = "/flow/reply/register"


def build_amxd_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_amxd", MAX_FOLDER / "build_amxd.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_amxd"] = module
    spec.loader.exec_module(module)
    return module


def load_patch() -> dict[str, Any]:
    return json.loads(PATCH.read_text())["patcher"]


@pytest.fixture
def sink() -> Iterator[tuple[str, int]]:
    """A bound UDP socket nobody reads: where udpsend sends when no daemon is needed (never the
    machine's real port 9010, where a user's daemon may listen)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()
    sock.close()


def dials(device: MaxDevice) -> list[LiveControl]:
    return [box for box in device.of_kind(LiveControl) if box.spec["maxclass"] == "live.dial"]


def session(device: MaxDevice, song: str) -> None:
    """A user's session: drop a file, Start stems, every dial to both ends, Stop stems."""
    device.drop(song)
    device.press("Start stems")
    for dial in dials(device):
        values = dial.spec["saved_attribute_attributes"]["valueof"]
        for end in ("parameter_mmin", "parameter_mmax"):
            device.turn(dial.id, float(values[end]))
    device.press("Stop stems")


def registered(device: MaxDevice) -> bool:
    """The device heard the daemon's answer to registering the port it listens on."""
    return any(m.address == REGISTER_REPLY and m.params[1] == device.listen_port for m in device.received)


def replies(device: MaxDevice, address: str) -> list[list[Any]]:
    return [m.params for m in device.received if m.address == address]


def listening(device: MaxDevice) -> int:
    """The port the device listens on, once it has one: a drawn port that another socket on this
    machine holds cannot be bound, and the device draws again on its next tick (2 s in Live)."""
    for _ in range(20):
        if device.listen_port is not None:
            return device.listen_port
        device.tick()
    raise AssertionError("no port could be bound in 20 draws")


def metro(device: MaxDevice) -> Metro:
    (box,) = device.of_kind(Metro)
    return box


# -- the patcher as a file ---------------------------------------------------------------------------


def test_the_patcher_is_valid_and_every_cord_joins_existing_outlets_and_inlets() -> None:
    patcher = load_patch()
    assert patcher["fileversion"] == 1 and patcher["classnamespace"] == "box"
    ids = [entry["box"]["id"] for entry in patcher["boxes"]]
    assert len(ids) == len(set(ids)), "box ids must be unique"
    boxes = {entry["box"]["id"]: entry["box"] for entry in patcher["boxes"]}
    for box in boxes.values():
        assert {"maxclass", "numinlets", "numoutlets", "patching_rect"} <= set(box), box
        assert len(box.get("outlettype", [])) == box["numoutlets"], box
        if box.get("presentation"):
            assert len(box["presentation_rect"]) == 4, box
    for line in patcher["lines"]:
        (source, outlet), (destination, inlet) = line["patchline"]["source"], line["patchline"]["destination"]
        assert source in boxes and destination in boxes, (source, destination)
        assert 0 <= outlet < boxes[source]["numoutlets"], (source, outlet)
        assert 0 <= inlet < boxes[destination]["numinlets"], (destination, inlet)
    # Every parameter the device exposes to Live has a unique name (Live refuses duplicates).
    names = [box["varname"] for box in boxes.values() if box.get("parameter_enable")]
    assert len(names) == len(set(names))
    # Audio passes through: plugin~'s two channels go to plugout~'s.
    plugin = next(i for i, b in boxes.items() if b.get("text") == "plugin~")
    plugout = next(i for i, b in boxes.items() if b.get("text") == "plugout~")
    cords = {(tuple(line["patchline"]["source"]), tuple(line["patchline"]["destination"])) for line in patcher["lines"]}
    assert {((plugin, 0), (plugout, 0)), ((plugin, 1), (plugout, 1))} <= cords


def test_the_committed_amxd_is_the_patcher_built_by_the_script_and_reads_back_to_it() -> None:
    build_amxd = build_amxd_module()
    source = PATCH.read_bytes().decode("utf-8")
    assert AMXD.read_bytes() == build_amxd.build(source), "Flowstate.amxd is stale: run integrations/max/build_amxd.py"
    assert build_amxd.main(["--check"]) == 0
    # The layout Ableton's maxdevtools reader walks: ampf (device type), meta, ptch (JSON + NUL).
    chunks = build_amxd.chunks(AMXD.read_bytes())
    assert [tag for tag, _ in chunks] == ["ampf", "meta", "ptch"]
    assert chunks[0][1] == b"aaaa" and chunks[2][1].endswith(b"\0")
    device_type, document = build_amxd.read_patcher(AMXD.read_bytes())
    assert device_type == "audio_effect"
    assert document == json.loads(source)
    # What Live would refuse, the reader refuses too.
    with pytest.raises(ValueError, match=r"cut short|declares"):
        build_amxd.read_patcher(AMXD.read_bytes()[:-10])
    with pytest.raises(ValueError, match="frozen"):
        build_amxd.read_patcher(b"ampf\x04\0\0\0aaaa" + b"ptch\x08\0\0\0mx@c\0\0\0\x10")
    with pytest.raises(ValueError, match="device_type"):
        build_amxd.build(source, "video_effect")


def test_every_message_is_a_registry_command_whose_arguments_bind(sink: tuple[str, int]) -> None:
    device = MaxDevice(load_patch(), udpsend_target=sink).load()
    session(device, SAMPLE_PATH)
    device.close()
    assert {address for address, _ in device.sent} == {
        "/flow/register", "/flow/unregister", "/flow/stems/separate",
        "/flow/stream/start", "/flow/stream/stop", "/flow/stream/set",
    }
    for address, args in device.sent:
        spec = lookup_address(address)
        bound = spec.bind(list(args))  # raises BadRequest naming what does not fit
        if spec.name == "stream.set":
            assert bound["stem"] in STEMS and isinstance(bound["gain_db"], float)
        if spec.name == "stems.separate":
            assert bound["path"] == SAMPLE_PATH
    gains = {args[0] for address, args in device.sent if address == "/flow/stream/set"}
    assert sorted(gains) == sorted(STEMS)


def test_it_registers_the_port_it_listens_on_and_unregisters_it_when_removed(sink: tuple[str, int]) -> None:
    texts = [entry["box"].get("text", "") for entry in load_patch()["boxes"]]
    defaults = Config().osc
    assert f"udpsend {defaults.host} {defaults.udp_port}" in texts
    device = MaxDevice(load_patch(), udpsend_target=sink).load()
    port = listening(device)
    assert 49152 <= port <= 65535
    device.close()
    assert device.sent[-2:] == [("/flow/register", (port,)), ("/flow/unregister", (port,))]


def test_a_compressed_file_is_sent_as_the_original_path_not_a_decoded_copy(sink: tuple[str, int]) -> None:
    """decodemode 1 would hand over Live's temporary decoded copy, outside the daemon's roots."""
    device = MaxDevice(load_patch(), udpsend_target=sink).load()
    device.drop("/Users/me/Music/Flowstate/loop.flac")
    device.close()
    assert ("/flow/stems/separate", ("/Users/me/Music/Flowstate/loop.flac",)) in device.sent


def test_opening_a_saved_set_separates_nothing(sink: tuple[str, int]) -> None:
    first = MaxDevice(load_patch(), udpsend_target=sink).load()
    session(first, SAMPLE_PATH)
    saved = first.saved_parameters()
    first.close()
    assert saved, "the dials' values are saved with the Set"
    reopened = MaxDevice(load_patch(), udpsend_target=sink).load(restored=saved)
    reopened.close()
    assert [a for a, _ in reopened.sent if a == "/flow/stems/separate"] == []


def test_once_answered_it_keeps_its_port_even_when_the_reply_grows_fields(sink: tuple[str, int]) -> None:
    """The register reply is `host port listeners ttl_seconds`; Protocol v1 may append fields."""
    device = MaxDevice(load_patch(), udpsend_target=sink, seed=1).load()
    try:
        drawn = [device.sent[-1][1][0]]
        device.tick()
        drawn.append(device.sent[-1][1][0])
        assert drawn[0] != drawn[1], "unanswered, it draws a new port on every tick"
        port = listening(device)
        reply = OscMessageBuilder(REGISTER_REPLY)
        for value in ("127.0.0.1", port, 1, 30.0, "a field added later"):
            reply.add_arg(value)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as daemon_side:
            daemon_side.sendto(reply.build().dgram, ("127.0.0.1", port))
        device.pump(lambda: registered(device))
        assert metro(device).interval_ms <= 30.0 * 1000 / 3
        device.tick()
        device.tick()
        assert device.listen_port == port
        assert device.sent[-2:] == [("/flow/register", (port,)), ("/flow/register", (port,))]
    finally:
        device.close()


def test_incoming_events_and_errors_are_routed_to_displays() -> None:
    patcher = load_patch()
    boxes = {entry["box"]["id"]: entry["box"] for entry in patcher["boxes"]}
    route = next(box for box in boxes.values() if box.get("text", "").startswith("route "))
    routed = route["text"].split()[1:]
    known = {event.osc_address for event in EVENTS.values()} | {ERROR_ADDRESS, REGISTER_REPLY}
    assert set(routed) <= known, set(routed) - known
    assert {"/flow/event/job/progress", "/flow/event/job/done", "/flow/event/job/failed", ERROR_ADDRESS,
            "/flow/event/daemon/stopping", REGISTER_REPLY} <= set(routed)
    # What a producer needs to hear about a stream that goes quiet, or never had a signal.
    assert {"/flow/event/stream/stalled", "/flow/event/stream/resumed", "/flow/event/stream/no_signal",
            "/flow/event/stream/signal"} <= set(routed)


# -- the device at work against real daemons ------------------------------------------------------


@pytest.fixture
def late_daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    """A daemon on free ports that the test starts (and restarts) itself."""
    process = DaemonProcess(workdir=tmp_path)
    yield process
    assert process.stop() == 0, process.log()


def test_the_device_finds_a_daemon_started_after_it_and_again_after_a_restart(late_daemon: DaemonProcess) -> None:
    device = MaxDevice(load_patch(), udpsend_target=late_daemon.osc_udp).load()  # Live first
    try:
        listening(device)
        assert {address for address, _ in device.sent} == {"/flow/register"}  # into the void
        waiting_ms = metro(device).interval_ms
        late_daemon.start()
        device.tick()
        device.pump(lambda: registered(device))
        ttl_seconds = Config().daemon.listener_ttl_seconds
        assert metro(device).interval_ms <= ttl_seconds * 1000 / 3, "it must renew well before it expires"

        dial = dials(device)[0]
        device.turn(dial.id, -6.0)
        device.pump(lambda: device.status.startswith("error /flow/stream/set"))
        assert device.status == f"error /flow/stream/set unavailable {NO_STREAM}"

        late_daemon.stop()
        device.pump(lambda: device.status == "daemon stopping shutdown")
        assert metro(device).interval_ms == waiting_ms, "once the daemon says it stops, it asks every few seconds"
        late_daemon.start()
        replies = sum(1 for m in device.received if m.address == REGISTER_REPLY)
        device.tick()
        device.pump(lambda: sum(1 for m in device.received if m.address == REGISTER_REPLY) > replies)
        device.turn(dial.id, 3.0)
        device.pump(lambda: device.status.startswith("error /flow/stream/set"))
        assert device.status == f"error /flow/stream/set unavailable {NO_STREAM}"
    finally:
        device.close()


def test_two_devices_in_one_set_each_hear_the_daemon_on_their_own_port(late_daemon: DaemonProcess) -> None:
    """Two devices loaded in the same instant draw the same first port (Max's random seeds from the
    clock); the second cannot listen there, so it draws again on the next tick."""
    late_daemon.start()
    first = MaxDevice(load_patch(), udpsend_target=late_daemon.osc_udp, seed=7).load()
    second = MaxDevice(load_patch(), udpsend_target=late_daemon.osc_udp, seed=7).load()
    try:
        listening(first)
        (receive,) = second.of_kind(UdpReceive)
        assert receive.errors, "same instant, same port: the second device cannot listen there"
        pump([first], lambda: registered(first))
        listening(second)
        pump([second], lambda: registered(second))
        assert first.listen_port != second.listen_port

        second.turn(dials(second)[0].id, 0.0)
        pump([first, second], lambda: all(d.status.startswith("error /flow/stream/set") for d in (first, second)))
    finally:
        second.close()
        first.close()


def test_the_devices_session_works_against_a_real_daemon(stems_daemon: DaemonProcess) -> None:
    device = MaxDevice(load_patch(), udpsend_target=stems_daemon.osc_udp).load()
    try:
        listening(device)
        device.pump(lambda: registered(device))
        files = stems_daemon.workdir / "files" / "max"
        song = write_song(files / "loop.wav", 1.0)
        # As a user does it: the dials once the status line shows the stream running.
        device.drop(str(song))
        device.press("Start stems")  # the daemon's first stream: torch and the model load first
        device.pump(lambda: bool(replies(device, "/flow/event/stream/started")), SLOW_SECONDS)
        for dial in dials(device):
            values = dial.spec["saved_attribute_attributes"]["valueof"]
            for end in ("parameter_mmin", "parameter_mmax"):
                device.turn(dial.id, float(values[end]))
        device.pump(lambda: len(replies(device, "/flow/reply/stream/set")) == 2 * len(STEMS))
        device.press("Stop stems")
        device.pump(lambda: bool(replies(device, "/flow/event/stream/stopped")))
        assert [m.params for m in device.received if m.address == ERROR_ADDRESS] == []
        gains = {(g[0], g[1]) for g in replies(device, "/flow/reply/stream/set")}
        assert gains >= {("drums", -70.0), ("vocals", 12.0)}
        job_id = next(m.params[0] for m in device.received if m.address == "/flow/reply/stems/separate")
        device.pump(lambda: any(m.address == "/flow/event/job/done" and m.params[0] == job_id for m in device.received))
        done = next(m for m in device.received if m.address == "/flow/event/job/done" and m.params[0] == job_id)
        assert sorted(json.loads(done.params[1])["paths"]) == sorted(STEMS)

        # A compressed file, as dropped from Live's browser: separated from where it lies.
        data, sample_rate = soundfile.read(str(song), dtype="float32")
        flac = files / "browser loop.flac"
        soundfile.write(str(flac), data, sample_rate)
        device.drop(str(flac))
        device.pump(lambda: any(m.address == "/flow/event/job/done" and m.params[0] != job_id for m in device.received))
        assert [m.params for m in device.received if m.address == ERROR_ADDRESS] == []
        assert device.status.startswith("done ") and device.progress == 100.0
    finally:
        device.close()


def status_box_while_streaming(daemon: DaemonProcess, starts_with: str,
                               overrides: dict[str, Any] | None = None) -> tuple[MaxDevice, str, dict[str, Any]]:
    """Another client starts a stream (with `overrides`); once the device's status box starts with
    `starts_with`: the device (closed since), what its box showed, and stream.status then."""
    device = MaxDevice(load_patch(), udpsend_target=daemon.osc_udp).load()
    try:
        listening(device)
        device.pump(lambda: registered(device))
        with Client(daemon.zmq_requests, timeout_seconds=120) as client:
            client.call("stream.start", {"overrides": overrides or {}})
            try:
                device.pump(lambda: device.status.startswith(starts_with))
                return device, device.status, client.call("stream.status")
            finally:
                client.call("stream.stop")
    finally:
        device.close()


def test_a_round_trip_that_grows_while_running_reaches_the_status_box(stems_daemon: DaemonProcess) -> None:
    # Another client starts the stream with one block of budget and growth on: the first window is
    # late, the budget grows, and the device's status box gives the new round trip to compensate.
    device, shown, grown = status_box_while_streaming(stems_daemon, "latency ", {"budget_ms": 1.0, "budget_grow": True})
    announced = replies(device, "/flow/event/stream/latency")
    changes = sorted(grown["budget_changes"] + grown["hop_changes"], key=lambda c: c["seconds"])  # in order
    round_trips = [c["latency_frames"] + grown["block_size"] for c in changes]
    assert [params[2] for params in announced] == round_trips[:len(announced)]
    # ms as OSC carries them (32-bit floats), then the frames: one of the round trips announced.
    assert shown.split()[1:4] in [[str(params[0]), str(params[1]), str(params[2])] for params in announced], shown


def test_a_stream_that_hears_only_silence_says_so_in_the_status_box(stems_daemon: DaemonProcess) -> None:
    # The dummy JACK server's inputs are exact 0s, what a Mac gives a daemon without the Microphone
    # permission: after SILENT_INPUT_SECONDS the status box names the device and its silent inputs.
    device, shown, status = status_box_while_streaming(stems_daemon, "no signal ")
    (params,) = replies(device, "/flow/event/stream/no_signal")
    assert params[1:] == [status["device"], "1-2"] and params[0] >= SILENT_INPUT_SECONDS, params
    assert shown == f"no signal {params[0]} {status['device']} 1-2", shown


@pytest.mark.timeout(300)
def test_stop_stems_during_a_long_first_load_says_the_start_was_cancelled(jack_server: JackServer,
                                                                          tmp_path: Path) -> None:
    # The first Start stems loads the model (minutes while it downloads). Stop stems then cancels
    # it at once, but the device showed nothing until the load ended and the start's error came.
    passthrough = passthrough_htdemucs_repo(tmp_path / "passthrough", threads=1)
    with loading_daemon(jack_server, passthrough, tmp_path) as (daemon, release):
        device = MaxDevice(load_patch(), udpsend_target=daemon.osc_udp).load()
        try:
            listening(device)
            device.pump(lambda: registered(device))
            device.press("Start stems")
            # Said at once: the daemon's reply comes once the model has loaded (minutes while it downloads).
            assert device.status == "starting live stems (the first start loads the model)", device.status
            with Client(daemon.zmq_requests, timeout_seconds=10) as client:
                _starting(client, "loading passthrough")
            device.press("Stop stems")
            device.pump(lambda: device.status.startswith("start cancelled "))
            assert device.status.startswith(
                "start cancelled passthrough on the default audio device (loading passthrough, "), device.status
            assert replies(device, ERROR_ADDRESS) == []  # the load is still held: the start has not answered
            release()
            device.pump(lambda: bool(replies(device, ERROR_ADDRESS)), timeout_seconds=120)
            ((address, code, message),) = replies(device, ERROR_ADDRESS)
            assert (address, code) == ("/flow/stream/start", "unavailable"), message
            assert message.startswith("stream.start: cancelled by stream.stop while loading passthrough"), message
            assert replies(device, "/flow/event/stream/started") == []
        finally:
            device.close()
        assert daemon.stop() == 0, daemon.log()
