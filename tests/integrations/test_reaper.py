"""The Flowstate ReaScripts, their real code, in a simulated REAPER against a real daemon.

The scripts are installed as a user would (into `<resource path>/Scripts/Flowstate`), run the way
REAPER runs them (`reaper_python` importable, no `__file__`, deferred code pumped once per UI
cycle) and talk OSC over UDP to a real `flowstate up` that separates with a tiny HTDemucs.
"""

from __future__ import annotations

import ast
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import soundfile

from bridge.client import Client
from bridge.testing import DaemonProcess, free_port, passthrough_htdemucs_repo
from integrations.reaper.install import ACTIONS, install
from tests.bridge.test_slow_replies import _starting, loading_daemon
from tests.bridge.test_stream import _stream_daemon
from tests.conftest import FrozenDevice, JackServer
from tests.integrations.conftest import STEMS, write_song
from tests.integrations.reaper_sim import SCRIPT_MODULES, Reaper, scripts_running_in

SEPARATE = "Flowstate - separate selected item into stems.py"
SEND_TEMPO = "Flowstate - send tempo and time signature.py"
START_STREAM = "Flowstate - start live stems.py"
STOP_STREAM = "Flowstate - stop live stems.py"
SET_ADDRESS = "Flowstate - set daemon address.py"


def install_scripts(resource_path: Path) -> Path:
    """Install the scripts as `flowstate install-reaper` does: REAPER's resource path, Scripts/Flowstate."""
    resource_path.mkdir(parents=True)  # REAPER makes it on its first start
    return install(resource_path).folder


@pytest.fixture
def reaper(tmp_path: Path, stems_daemon: DaemonProcess) -> Iterator[Reaper]:
    """A fresh simulated REAPER whose Flowstate scripts talk to the test daemon."""
    resource_path = tmp_path / "REAPER"
    scripts = install_scripts(resource_path)
    sim = Reaper(resource_path)
    sim.ext_state[("Flowstate", "daemon_address")] = "127.0.0.1:%d" % stems_daemon.osc_udp[1]
    sim.scripts = scripts  # type: ignore[attr-defined]
    with scripts_running_in(sim):
        yield sim


def run(sim: Reaper, script: str, timeout_seconds: float = 120.0) -> None:
    sim.run_script(sim.scripts / script)  # type: ignore[attr-defined]
    sim.run_until_done(timeout_seconds)


def files_root(daemon: DaemonProcess) -> Path:
    return daemon.workdir / "files"


def assert_left_reaper_clean(sim: Reaper) -> None:
    """Every undo block closed, UI refresh re-enabled, no code left queued."""
    assert sim.undo_depth == 0
    assert sim.ui_refresh_prevented == 0
    assert not sim.running
    assert sim.null_pointer_calls == []  # REAPER would have passed NULL: a script bug


def final_state(daemon: DaemonProcess, job_id: str, timeout_seconds: float = 60.0) -> str:
    """The state a job ends in, asked over ZeroMQ until it is done, failed or canceled."""
    deadline = time.monotonic() + timeout_seconds
    with Client(daemon.zmq_requests, timeout_seconds=10) as client:
        while True:
            state = client.call("job.status", {"id": job_id})["state"]
            if state in ("done", "failed", "canceled") or time.monotonic() > deadline:
                return state
            time.sleep(0.1)


def only_message_box(sim: Reaper) -> str:
    assert len(sim.message_boxes) == 1, sim.message_boxes
    text, title, _ = sim.message_boxes[0]
    assert title == "Flowstate"
    return text


# -- separate the selected item ----------------------------------------------------------------------


# None: the simulation's own InsertMedia result; 0: a result that would have read as failure.
@pytest.mark.parametrize("insert_media_result", [None, 0])
def test_separate_puts_each_stem_on_a_new_track_lined_up_with_the_item(
    reaper: Reaper, stems_daemon: DaemonProcess, insert_media_result: int | None
) -> None:
    reaper.insert_media_result = insert_media_result  # undocumented: the scripts look at the items
    # A folder each: a second separation of one file goes to `Lead Take (2)`, beside the first's stems.
    song = write_song(files_root(stems_daemon) / "reaper" / f"insert {insert_media_result}" / "Lead Take.wav", 3.0)
    mix = reaper.add_track("Mix")
    below = reaper.add_track("Keys")
    # A trimmed item: it plays 1.5 s of the file from 0.5 s in, placed at 12.25 s.
    reaper.add_item(mix, str(song), position=12.25, length=1.5, start_offset=0.5)
    reaper.cursor = 3.0

    run(reaper, SEPARATE)

    assert reaper.message_boxes == []
    assert [track.name for track in reaper.tracks] == ["Mix", *STEMS, "Keys"]
    assert below.items == []
    for track in reaper.tracks[1:5]:
        assert len(track.items) == 1
        item = track.items[0]
        take = item.take
        assert take is not None
        stem_file = Path(take.source.filename)
        assert stem_file.name == f"{track.name}.wav"
        assert stem_file.parent == song.parent / "stems" / "Lead Take"
        assert soundfile.info(str(stem_file)).frames == soundfile.info(str(song)).frames
        assert (item.position, item.length) == (12.25, 1.5)
        assert (take.start_offset, take.playrate) == (0.5, 1.0)
    assert reaper.cursor == 3.0  # the edit cursor is back where the user left it
    assert reaper.undo_points == ["Flowstate: stems of Lead Take.wav"]
    console = reaper.console_text()
    assert "Lead Take.wav: 0 %" in console and "Lead Take.wav: 100 %" in console
    assert "4 stems of Lead Take.wav are on new tracks at 12.250 s: drums, bass, other, vocals" in console
    assert_left_reaper_clean(reaper)


def test_an_item_playing_a_section_of_its_file_gets_stems_of_that_section(
    reaper: Reaper, stems_daemon: DaemonProcess
) -> None:
    """Item properties > Section: the take plays 1.5 s of the file from 1 s in, through a SECTION
    source without a file name of its own; the stems come from the file and play the same stretch."""
    song = write_song(files_root(stems_daemon) / "reaper" / "section" / "Verse.wav", 3.0)
    mix = reaper.add_track("Mix")
    reaper.add_item(mix, str(song), position=4.0, length=1.0, start_offset=0.25, section=(1.0, 1.5, False))
    run(reaper, SEPARATE)
    assert reaper.message_boxes == []
    assert [track.name for track in reaper.tracks] == ["Mix", *STEMS]
    for track in reaper.tracks[1:]:
        [item] = track.items
        assert item.take is not None and Path(item.take.source.filename).parent == song.parent / "stems" / "Verse"
        assert (item.position, item.length) == (4.0, 1.0)
        assert item.take.start_offset == pytest.approx(1.25)  # the section's 1 s + the take's own 0.25 s
    assert_left_reaper_clean(reaper)


@pytest.mark.parametrize(("source_loops", "new_items_loop"), [(True, False), (False, True)])
def test_the_stems_loop_as_the_source_item_does_whatever_the_default_for_new_items(
    reaper: Reaper, stems_daemon: DaemonProcess, source_loops: bool, new_items_loop: bool
) -> None:
    """A two-second drum loop stretched over eight seconds (Loop source on) repeats its file: its
    stems must repeat with it. An item left longer than its file with Loop source off plays
    silence after the file: its stems too. Neither may follow the user's default for new items."""
    loop = write_song(files_root(stems_daemon) / "reaper" / "loop" / f"Beat {source_loops}.wav", 2.0)
    reaper.loop_new_items = new_items_loop
    reaper.add_item(reaper.add_track("Drums"), str(loop), position=0.0, length=8.0, loop_source=source_loops)
    run(reaper, SEPARATE)
    assert reaper.message_boxes == []
    assert [track.name for track in reaper.tracks] == ["Drums", *STEMS]
    for track in reaper.tracks[1:]:
        [item] = track.items
        assert (item.length, item.loop_source) == (8.0, float(source_loops))
    assert_left_reaper_clean(reaper)


@pytest.mark.parametrize(("start_offset", "position", "length", "file_offset"), [
    (0.25, 2.0, 0.75, 1.25),  # from 0.25 s into the section to its end
    (-0.5, 2.25, 0.5, 1.0),  # at rate 2: 0.25 s of the item before the section, which lasts 0.5 s
])
def test_an_item_playing_beyond_its_section_without_looping_gets_stems_of_the_section_alone(
    reaper: Reaper, stems_daemon: DaemonProcess, start_offset: float, position: float, length: float,
    file_offset: float,
) -> None:
    """Beyond its section (Loop source off) the item plays silence, where the stems of the file would
    play the file before or after the section: they start and end where the section does."""
    song = write_song(files_root(stems_daemon) / "reaper" / f"section {start_offset}" / "Break.wav", 3.0)
    reaper.add_item(reaper.add_track("Mix"), str(song), position=2.0, length=4.0, start_offset=start_offset,
                    playrate=1.0 if start_offset > 0 else 2.0, section=(1.0, 1.0, False), loop_source=False)
    run(reaper, SEPARATE)
    assert reaper.message_boxes == []
    assert [track.name for track in reaper.tracks] == ["Mix", *STEMS]
    for track in reaper.tracks[1:]:
        [item] = track.items
        assert item.take is not None and item.take.start_offset == pytest.approx(file_offset)
        assert (item.position, item.length, item.loop_source) == (pytest.approx(position), pytest.approx(length), 0.0)
    assert_left_reaper_clean(reaper)


@pytest.mark.parametrize(("section", "start_offset", "loop", "words"), [
    ((0.0, 4.0, True), 0.0, True, ("plays its file reversed", "Glue")),  # the stems would play forward
    ((1.0, 1.0, False), 0.0, True, ("loops a section of its file", "Glue")),  # they would loop the whole file
    ((1.0, 1.0, False), 1.5, False, ("plays none of the section",)),  # silence: nothing to separate
])
def test_an_item_whose_stems_could_not_play_as_it_does_is_refused_saying_why(
    reaper: Reaper, section: tuple[float, float, bool], start_offset: float, loop: bool, words: tuple[str, ...]
) -> None:
    mix = reaper.add_track("Mix")
    reaper.add_item(mix, "/music/Vocal.wav", position=0.0, length=4.0, section=section, start_offset=start_offset,
                    loop_source=loop)
    run(reaper, SEPARATE)
    message = only_message_box(reaper)
    assert all(word in message for word in words), message
    assert [track.name for track in reaper.tracks] == ["Mix"]
    assert_left_reaper_clean(reaper)


def test_nothing_selected_says_so_and_sends_nothing(reaper: Reaper) -> None:
    reaper.add_item(reaper.add_track("Mix"), "/nowhere.wav", 0.0, 1.0, selected=False)
    run(reaper, SEPARATE)
    assert "Select a media item first" in only_message_box(reaper)
    assert [track.name for track in reaper.tracks] == ["Mix"]
    assert_left_reaper_clean(reaper)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("empty", "The selected item is empty (it has no take)"),
        ("midi", "The selected item is MIDI"),
        ("no file", "The selected item's take has no audio file behind it"),
    ],
)
def test_an_item_without_an_audio_file_is_refused_clearly(reaper: Reaper, kind: str, expected: str) -> None:
    track = reaper.add_track("Mix")
    reaper.add_item(track, "", 1.0, 2.0, empty=kind == "empty", midi=kind == "midi")
    run(reaper, SEPARATE)
    assert expected in only_message_box(reaper)
    assert len(reaper.tracks) == 1
    assert_left_reaper_clean(reaper)


def test_a_file_the_daemon_refuses_shows_its_error(reaper: Reaper, tmp_path: Path) -> None:
    outside = write_song(tmp_path / "elsewhere" / "song.wav", 0.5)  # not under paths.roots
    reaper.add_item(reaper.add_track("Mix"), str(outside), 0.0, 0.5)
    run(reaper, SEPARATE)
    text = only_message_box(reaper)
    assert text.startswith("The daemon refused /flow/stems/separate: ")
    assert str(outside) in text and "(forbidden)" in text
    assert len(reaper.tracks) == 1
    assert_left_reaper_clean(reaper)


def test_no_daemon_listening_is_reported_at_once(reaper: Reaper, tmp_path: Path) -> None:
    port = free_port(socket.SOCK_DGRAM)  # nothing listens here
    reaper.ext_state[("Flowstate", "daemon_address")] = f"127.0.0.1:{port}"
    reaper.add_item(reaper.add_track("Mix"), str(write_song(tmp_path / "a.wav", 0.5)), 0.0, 0.5)
    run(reaper, SEPARATE)
    text = only_message_box(reaper)
    # The OS reports the closed port: no waiting for the reply timeout ("did not answer ... in time").
    assert text.startswith(f"No Flowstate daemon answers at 127.0.0.1:{port}")
    assert "flowstate up" in text
    assert_left_reaper_clean(reaper)


def test_a_daemon_that_never_answers_times_out(
    reaper: Reaper, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, so no "port closed" either
    silent.bind(("127.0.0.1", 0))
    try:
        reaper.ext_state[("Flowstate", "daemon_address")] = "127.0.0.1:%d" % silent.getsockname()[1]
        reaper.add_item(reaper.add_track("Mix"), str(write_song(tmp_path / "a.wav", 0.5)), 0.0, 0.5)
        sys.path.insert(0, str(reaper.scripts))  # type: ignore[attr-defined]
        import flowstate_reaper

        monkeypatch.setattr(flowstate_reaper, "REPLY_TIMEOUT_SECONDS", 0.3)
        run(reaper, SEPARATE, timeout_seconds=10.0)
        packet, _ = silent.recvfrom(65535)
    finally:
        silent.close()
    assert packet.startswith(b"/flow/stems/separate\x00")  # it did ask
    text = only_message_box(reaper)
    assert "did not answer /flow/stems/separate in time" in text
    assert_left_reaper_clean(reaper)


def test_a_failed_job_is_reported_and_nothing_is_inserted(reaper: Reaper, tiny_repo: Path) -> None:
    # A daemon whose configured model is not in its model folder: the job fails when it loads.
    broken = DaemonProcess(
        overrides={"models": {"demucs_repo": str(tiny_repo)},
                   "separate": {"model": "no_such_model", "engine_device": "cpu", "threads": 1}}
    ).start()
    try:
        reaper.ext_state[("Flowstate", "daemon_address")] = "127.0.0.1:%d" % broken.osc_udp[1]
        song = write_song(broken.workdir / "files" / "song.wav", 0.5)
        reaper.add_item(reaper.add_track("Mix"), str(song), 0.0, 0.5)
        run(reaper, SEPARATE)
    finally:
        assert broken.stop() == 0, broken.log()
    text = only_message_box(reaper)
    assert text.startswith("Separating song.wav failed: ")
    assert "no_such_model" in text
    assert len(reaper.tracks) == 1 and reaper.undo_points == []
    assert_left_reaper_clean(reaper)


def test_stopping_the_script_cancels_the_job(reaper: Reaper, stems_daemon: DaemonProcess) -> None:
    song = write_song(files_root(stems_daemon) / "long" / "set.wav", 120.0)
    reaper.add_item(reaper.add_track("Mix"), str(song), 0.0, 120.0)
    namespace = reaper.run_script(reaper.scripts / SEPARATE)  # type: ignore[attr-defined]
    task = namespace["flowstate_separate_task"]
    while task.job_id is None:  # until the daemon has accepted the job
        reaper.pump()
        assert reaper.running, reaper.console_text()
        time.sleep(0.01)
    reaper.terminate()  # the user stops the script from REAPER
    assert final_state(stems_daemon, task.job_id) == "canceled"
    assert f"asked the daemon to cancel job {task.job_id}" in reaper.console_text()
    assert len(reaper.tracks) == 1


def test_a_daemon_that_dies_mid_job_is_noticed(
    reaper: Reaper, tiny_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Job events travel over UDP; after a silence the script asks job.status, which is also how
    # it finds out that the daemon is gone (here: killed, so it sends nothing ever again).
    doomed = DaemonProcess(
        overrides={"models": {"demucs_repo": str(tiny_repo)},
                   "separate": {"model": "tiny", "engine_device": "cpu", "threads": 1}}
    ).start()
    try:
        reaper.ext_state[("Flowstate", "daemon_address")] = "127.0.0.1:%d" % doomed.osc_udp[1]
        song = write_song(doomed.workdir / "files" / "long.wav", 120.0)
        reaper.add_item(reaper.add_track("Mix"), str(song), 0.0, 120.0)
        sys.path.insert(0, str(reaper.scripts))  # type: ignore[attr-defined]
        import flowstate_reaper

        monkeypatch.setattr(flowstate_reaper, "CHECK_JOB_AFTER_SECONDS", 0.2)
        namespace = reaper.run_script(reaper.scripts / SEPARATE)  # type: ignore[attr-defined]
        task = namespace["flowstate_separate_task"]
        while task.job_id is None:
            reaper.pump()
            assert reaper.running, reaper.console_text()
            time.sleep(0.01)
    finally:
        doomed.stop(signal.SIGKILL)
    reaper.run_until_done(30.0)
    text = only_message_box(reaper)
    assert text.startswith("No Flowstate daemon answers at 127.0.0.1:%d" % doomed.osc_udp[1]), text
    assert len(reaper.tracks) == 1 and reaper.undo_points == []
    assert_left_reaper_clean(reaper)


# -- tempo, live stems, address ---------------------------------------------------------------------


def test_send_tempo_reports_the_time_signature_at_the_cursor(reaper: Reaper, stems_daemon: DaemonProcess) -> None:
    from tests.integrations.reaper_sim import TempoMarker

    reaper.tempo_markers = [TempoMarker(0.0, 120.0, 4, 4), TempoMarker(30.0, 97.5, 7, 8)]
    reaper.cursor = 31.0
    run(reaper, SEND_TEMPO)
    assert reaper.message_boxes == []
    assert "the daemon now has 97.5 BPM, 7/8, transport stopped" in reaper.console_text()
    with Client(stems_daemon.zmq_requests, timeout_seconds=10) as client:
        state = client.call("daw.status")
    assert (state["tempo"], state["tempo_source"]) == (97.5, "daw")
    assert (state["numerator"], state["denominator"], state["playing"]) == (7, 8, False)


def test_start_and_stop_live_stems_with_no_track_selected_reports_the_exact_round_trip(
    reaper: Reaper, stems_daemon: DaemonProcess
) -> None:
    reaper.add_track("Mix")
    run(reaper, START_STREAM)
    assert reaper.message_boxes == []
    with Client(stems_daemon.zmq_requests, timeout_seconds=30) as client:
        status = client.call("stream.status")
        assert status["running"] is True
        run(reaper, STOP_STREAM)
        assert client.call("stream.status")["running"] is False
    frames, rate = status["round_trip_frames"], status["sample_rate"]
    console = reaper.console_text()
    assert (f"live stems running (drums, bass, other, vocals). On {status['device']}, in 1-2, out 1-2. "
            f"Round trip {frames} frames at {rate} Hz "
            f"({1000 * frames / rate:.3f} ms): select the tracks that record the stems") in console
    assert (reaper.tracks[0].play_offset_flag, reaper.tracks[0].play_offset) == (0, 0.0)
    assert reaper.undo_points == [] and reaper.proj_ext_state == {}
    assert "live stems are stopped\n" in console
    assert reaper.message_boxes == []
    assert_left_reaper_clean(reaper)


def test_live_stems_offset_the_selected_tracks_by_the_round_trip_and_stop_puts_it_back(
    reaper: Reaper, stems_daemon: DaemonProcess, tmp_path: Path
) -> None:
    mix = reaper.add_track("Mix")
    drums = reaper.add_track("Drums stem")
    vocals = reaper.add_track("Vocals stem")
    drums.selected = vocals.selected = True
    drums.play_offset_flag, drums.play_offset = 2, 64.0  # the user's own offset: 64 samples
    before = reaper.add_item(drums, str(tmp_path / "old.wav"), 1.0, 2.0, selected=False)

    run(reaper, START_STREAM)

    assert reaper.message_boxes == []
    with Client(stems_daemon.zmq_requests, timeout_seconds=30) as client:
        status = client.call("stream.status")
    seconds = status["round_trip_frames"] / status["sample_rate"]
    for track in (drums, vocals):  # in seconds, not bypassed: exactly the round trip, earlier
        assert (track.play_offset_flag, track.play_offset) == (0, -seconds)
    assert (mix.play_offset_flag, mix.play_offset) == (0, 0.0)
    assert (f"media playback offset -{1000 * seconds:.3f} ms on Drums stem, Vocals stem, so what they "
            "record plays in time") in reaper.console_text()

    # REAPER records the stems: they land late by the round trip, one right at the project start.
    late = reaper.add_item(drums, str(tmp_path / "take1.wav"), 4.0 + seconds, 3.0, selected=False)
    at_start = reaper.add_item(vocals, str(tmp_path / "take2.wav"), seconds / 2, 3.0, selected=False)

    run(reaper, STOP_STREAM)

    assert reaper.message_boxes == []
    with Client(stems_daemon.zmq_requests, timeout_seconds=30) as client:
        assert client.call("stream.status")["running"] is False
    assert (drums.play_offset_flag, drums.play_offset) == (2, 64.0)
    assert (vocals.play_offset_flag, vocals.play_offset) == (0, 0.0)
    # What was recorded through the stream now sits in time without the offset.
    assert (before.position, before.length) == (1.0, 2.0)
    assert late.position == pytest.approx(4.0, abs=1e-12) and late.length == 3.0
    assert at_start.position == 0.0  # its first half round trip is trimmed, the rest in time
    assert at_start.length == pytest.approx(3.0 - seconds / 2, abs=1e-12)
    assert at_start.take is not None and at_start.take.start_offset == pytest.approx(seconds / 2, abs=1e-12)
    assert reaper.undo_points == ["Flowstate: compensate the live stems' round trip",
                                  "Flowstate: live stems stopped, track offsets restored"]
    assert reaper.proj_ext_state == {}
    assert ("live stems are stopped; media playback offset restored on Drums stem, Vocals stem (2 items "
            "recorded meanwhile moved earlier") in reaper.console_text()
    assert_left_reaper_clean(reaper)


def test_set_daemon_address_saves_it_and_checks_a_daemon_answers(reaper: Reaper, stems_daemon: DaemonProcess) -> None:
    reaper.ext_state.clear()
    address = "127.0.0.1:%d" % stems_daemon.osc_udp[1]
    reaper.user_answers = [(True, address)]
    run(reaper, SET_ADDRESS)
    assert reaper.prompts[0][2] == "127.0.0.1:9010"  # the default is offered first
    assert reaper.ext_state[("Flowstate", "daemon_address")] == address
    assert ("Flowstate", "daemon_address") in reaper.persisted
    assert f"answers at {address}" in reaper.console_text()
    assert reaper.message_boxes == []


def test_set_daemon_address_refuses_a_bad_one_and_keeps_the_old(reaper: Reaper) -> None:
    before = dict(reaper.ext_state)
    reaper.user_answers = [(True, "localhost")]
    run(reaper, SET_ADDRESS)
    assert "daemon address 'localhost': expected host:port" in only_message_box(reaper)
    assert reaper.ext_state == before
    reaper.message_boxes.clear()
    reaper.user_answers = [(False, "")]  # Cancel
    run(reaper, SET_ADDRESS)
    assert reaper.message_boxes == [] and reaper.ext_state == before


# -- what REAPER's Python can run -------------------------------------------------------------------


@pytest.mark.parametrize("script", sorted([a.file_name for a in ACTIONS] + [f"{name}.py" for name in SCRIPT_MODULES]))
def test_scripts_are_ascii_and_import_only_the_standard_library(script: str, tmp_path: Path) -> None:
    source = (install_scripts(tmp_path / "REAPER") / script).read_bytes()
    assert source.isascii(), "REAPER does not read every script as UTF-8"
    tree = ast.parse(source)
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    ours = {"reaper_python", *SCRIPT_MODULES}
    assert imported - ours <= set(sys.stdlib_module_names), imported - ours - set(sys.stdlib_module_names)


@contextmanager
def reaper_loading(jack_server: JackServer,
                   tmp_path: Path) -> Iterator[tuple[Reaper, DaemonProcess, Callable[[], None]]]:
    """A REAPER with the scripts installed, running them, on a daemon whose model's load is held
    (its yaml is a named pipe, tests/bridge/test_slow_replies.py) until `release()`."""
    passthrough = passthrough_htdemucs_repo(tmp_path / "passthrough", threads=1)
    with loading_daemon(jack_server, passthrough, tmp_path) as (daemon, release):
        sim = Reaper(tmp_path / "REAPER")
        sim.ext_state[("Flowstate", "daemon_address")] = "127.0.0.1:%d" % daemon.osc_udp[1]
        install_scripts(tmp_path / "REAPER")
        with scripts_running_in(sim):
            yield sim, daemon, release
        assert daemon.stop() == 0, daemon.log()


@pytest.mark.timeout(300)
def test_start_live_stems_waits_for_a_model_that_loads_for_longer_than_the_timeout(
    jack_server: JackServer, tmp_path: Path
) -> None:
    # The model's load is held (its yaml is a named pipe, tests/bridge/test_slow_replies.py): the
    # action waits past its 5 s timeout while the daemon answers its pings, then reports the stream.
    with reaper_loading(jack_server, tmp_path) as (sim, _, release):
        sys.path.insert(0, str(sim.resource_path / "Scripts" / "Flowstate"))
        import flowstate_reaper

        task = sim.run_script(sim.resource_path / "Scripts" / "Flowstate" / START_STREAM)[
            "flowstate_stream_start_task"]
        past = flowstate_reaper.REPLY_TIMEOUT_SECONDS / flowstate_reaper.PROBE_SECONDS + 2
        deadline = time.monotonic() + 60
        while task.probes_answered < past and time.monotonic() < deadline:
            sim.pump()
            time.sleep(0.01)
        assert task.probes_answered >= past and sim.running and sim.message_boxes == [], sim.console_text()
        release()
        sim.run_until_done(120)
    assert sim.message_boxes == [], sim.message_boxes
    assert "live stems running (drums, bass, other, vocals)" in sim.console_text()


def _start_and_stop_live_stems(daemon: DaemonProcess, tmp_path: Path) -> str:
    """Run 'start live stems' then 'stop live stems' in a fresh REAPER on `daemon`: its console."""
    sim = Reaper(tmp_path / "REAPER")
    sim.ext_state[("Flowstate", "daemon_address")] = "127.0.0.1:%d" % daemon.osc_udp[1]
    sim.scripts = install_scripts(tmp_path / "REAPER")  # type: ignore[attr-defined]
    with scripts_running_in(sim):
        run(sim, START_STREAM)
        run(sim, STOP_STREAM)
    assert sim.message_boxes == [], sim.message_boxes
    return sim.console_text()


@pytest.mark.timeout(300)
def test_start_live_stems_names_both_devices_when_the_stems_play_on_another(
    jack_server: JackServer, tiny_repo: Path, tmp_path: Path, one_way_devices: dict[str, str]
) -> None:
    # One virtual cable in, another out (tests/bridge/test_stream_devices.py): the console says
    # which channels of which device the send goes to and the stems come back from.
    daemon = _stream_daemon(jack_server, tiny_repo, tmp_path, extra_env=one_way_devices, model="tiny",
                            device="fs_record", output_device="fs_play", first_output=3)
    try:
        console = _start_and_stop_live_stems(daemon, tmp_path)
        said = "live stems running (drums, bass, other, vocals). In 1-2 on fs_record, out 3-4 on fs_play. Round trip "
        assert said in console, console
    finally:
        assert daemon.stop() == 0, daemon.log()


@pytest.mark.timeout(300)
def test_stop_live_stems_says_when_the_audio_device_was_left_open(
    tiny_repo: Path, tmp_path: Path, frozen_device: FrozenDevice
) -> None:
    # A driver that does not let go of the device (tests/bridge/test_stream_stall.py): the stop
    # answers after 5 s, past the 5 s the action waits for other replies, and says what to do.
    daemon = _stream_daemon("flowstate-none", tiny_repo, tmp_path, extra_env=frozen_device.env, model="tiny",
                            device="fs_stuck", output_device="fs_nowhere")
    try:
        console = _start_and_stop_live_stems(daemon, tmp_path)
        said = ("live stems are stopped, but PortAudio did not stop the stream on fs_stuck in, fs_nowhere out "
                "within 5 s (its driver stopped answering), and it is left open: restart the daemon (flowstate up) "
                "to stream again")
        assert said in console, console
    finally:
        frozen_device.begin()
        assert daemon.stop() == 0, daemon.log()


@pytest.mark.timeout(300)
def test_stop_live_stems_cancels_a_start_still_loading_its_model(jack_server: JackServer, tmp_path: Path) -> None:
    # 'stop live stems' while 'start live stems' waits on the model's load (held, as above): the stop
    # answers at once saying what it cancelled, and the start reports it started nothing.
    with reaper_loading(jack_server, tmp_path) as (sim, daemon, release):
        track = sim.add_track("Drums stem")
        track.selected = True
        scripts = sim.resource_path / "Scripts" / "Flowstate"
        sim.run_script(scripts / START_STREAM)
        with Client(daemon.zmq_requests, timeout_seconds=10) as client:
            _starting(client, "loading passthrough", sim.pump)
        sim.run_script(scripts / STOP_STREAM)
        deadline = time.monotonic() + 60
        while "live stems start cancelled" not in sim.console_text() and time.monotonic() < deadline:
            sim.pump()
            time.sleep(0.01)
        release()
        sim.run_until_done(120)
    console = sim.console_text()
    assert "live stems start cancelled: passthrough on the default audio device (loading passthrough, " \
        in console, console
    assert "stream.start: cancelled by stream.stop while loading passthrough" in console + str(
        sim.message_boxes), (console, sim.message_boxes)
    assert "live stems running" not in console, console
    assert (track.play_offset_flag, track.play_offset) == (0, 0.0)  # nothing to compensate
