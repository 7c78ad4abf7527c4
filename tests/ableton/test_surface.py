"""The Remote Script's real code in a simulated Live, talking to a real daemon over loopback.

Time is driven the way Live drives it: `update_display()` is called in a loop (Live: every
~100 ms). Separation runs for real on a tiny HTDemucs saved in demucs's format.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

import bridge
from ableton_remote import surface as surface_module
from ableton_remote.surface import cc_to_gain_db
from bridge.client import Client
from bridge.testing import DaemonProcess, tiny_htdemucs_repo
from tests.ableton.conftest import LoadedScript
from tests.ableton.live_sim import LiveSet, MidiMapHandle, WarpMarker, suggest_map_mode
from tests.ableton.py37 import run_old_live

STEMS = ["drums", "bass", "other", "vocals"]
Load = Callable[[LiveSet, int], LoadedScript]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    repo = tiny_htdemucs_repo(tmp_path_factory.mktemp("models"), depth=3)
    process = DaemonProcess(overrides={
        "models": {"demucs_repo": str(repo)},
        "separate": {"model": "tiny", "engine_device": "cpu", "threads": 1},
        "stream": {"model": "tiny", "engine_device": "cpu", "threads": 1},
    }).start()
    try:
        yield process
    finally:
        assert process.stop() == 0, process.log()


def port(daemon: DaemonProcess) -> int:
    return daemon.osc_udp[1]


def call(daemon: DaemonProcess, command: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    with Client(daemon.zmq_requests, timeout_seconds=10) as client:
        return client.call(command, args or {})


def write_audio(path: Path, seconds: float = 2.0, sample_rate: int = 44100) -> Path:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * np.random.default_rng(0).standard_normal(t.shape[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), np.stack([tone, tone * 0.8], axis=1).astype(np.float32), sample_rate)
    return path


def listeners(daemon: DaemonProcess) -> set[str]:
    return set(call(daemon, "status")["listeners"])


# -- separate the selected clip ------------------------------------------------------------------


def test_an_arrangement_clip_becomes_one_track_per_stem_at_its_start(daemon: DaemonProcess, load_script: Load) -> None:
    source = write_audio(daemon.workdir / "files" / "arr" / "Break Loop.wav")
    live = LiveSet()
    drums = live.add_audio_track("Drums")
    live.add_audio_track("Keys")
    live.select_arrangement_clip(drums.add_arrangement_clip(str(source), start_time=16.0))
    script = load_script(live, port(daemon))

    script.surface.receive_midi((0x9F, surface_module.NOTE_SEPARATE, 100))  # the pad on channel 16, as Live forwards it
    script.tick_until(lambda: script.shown("added "), "stem tracks added")

    song = live.song
    assert [track.name for track in song.tracks] == ["Drums", *STEMS, "Keys"]
    for track in song.tracks[1:5]:
        [clip] = track.arrangement_clips
        assert clip.start_time == 16.0
        assert Path(clip.file_path) == source.parent / "stems" / "Break Loop" / f"{track.name}.wav"
        assert soundfile.info(clip.file_path).frames == soundfile.info(str(source)).frames
        assert not any(slot.has_clip for slot in track.clip_slots)
    assert script.shown("separating 'Break Loop': queued")
    assert script.shown("separating 'Break Loop': 100%")
    assert script.messages[-1] == "Flowstate: added drums, bass, other, vocals for 'Break Loop' (Arrangement, beat 16)"


def test_a_session_clip_gets_its_stems_in_the_same_scene(daemon: DaemonProcess, load_script: Load) -> None:
    source = write_audio(daemon.workdir / "files" / "session" / "vox.wav")
    live = LiveSet(num_scenes=4)
    live.add_audio_track("Bass")
    vox = live.add_audio_track("Vox")
    vox.add_session_clip(2, str(source))
    live.select_session_slot(vox.clip_slots[2])
    script = load_script(live, port(daemon))

    script.surface.separate_selected_clip()
    script.tick_until(lambda: script.shown("added "), "stem tracks added")

    assert [track.name for track in live.song.tracks] == ["Bass", "Vox", *STEMS]
    for track in live.song.tracks[2:]:
        assert [slot.has_clip for slot in track.clip_slots] == [False, False, True, False]
        clip = track.clip_slots[2].clip
        assert Path(clip.file_path) == source.parent / "stems" / "vox" / f"{track.name}.wav"
        assert Path(clip.file_path).is_file()
        assert track.arrangement_clips == []
    assert script.messages[-1].endswith("for 'vox' (Session, scene 3)")


def clip_timing(clip: Any) -> tuple[Any, ...]:
    return (clip.warping, clip.warp_mode, clip.warp_markers, clip.looping, clip.loop_start, clip.loop_end,
            clip.start_marker, clip.end_marker)


@pytest.mark.parametrize("warped", [True, False], ids=["warped", "unwarped"])
def test_stem_clips_keep_the_source_clips_warping_and_markers(
    daemon: DaemonProcess, load_script: Load, warped: bool
) -> None:
    source = write_audio(daemon.workdir / "files" / f"timing-{warped}" / "Groove.wav")
    live = LiveSet()
    clip = live.add_audio_track("Groove").add_arrangement_clip(str(source), start_time=32.0)
    if warped:  # the user pushed the file's 0.5 s point to beat 1.5, in Complex mode, and looped a part
        clip.warp_mode = 4
        clip.add_warp_marker(WarpMarker(1.5, 0.5))
        clip.looping = True
        clip.loop_start, clip.loop_end = 0.5, 3.0
        clip.start_marker = 0.5
    else:  # the user turned warping off and trimmed the clip to 0.25-1.75 s of the file
        clip.warping = False
        clip.start_marker, clip.end_marker = 0.25, 1.75
        clip.loop_start, clip.loop_end = 0.25, 1.75
    live.select_arrangement_clip(clip)
    script = load_script(live, port(daemon))

    script.surface.separate_selected_clip()
    script.tick_until(lambda: script.shown("added "), "stem tracks added")

    assert script.messages[-1] == "Flowstate: added drums, bass, other, vocals for 'Groove' (Arrangement, beat 32)"
    for track in live.song.tracks[1:]:
        [stem] = track.arrangement_clips
        assert stem.start_time == 32.0
        assert clip_timing(stem) == clip_timing(clip), track.name


# -- Live 11.3.25+ and 12.0.x: Python 3.7 -------------------------------------------------------------


def stems_of(tracks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {track["name"]: track for track in tracks if track["name"] in STEMS}


@pytest.mark.parametrize(("version", "view"), [("11.3.25", "arrangement"), ("12.0.5", "session")])
def test_in_live_11_and_12_0_the_pad_separates_the_clip_into_stem_tracks(
    daemon: DaemonProcess, version: str, view: str
) -> None:
    source = write_audio(daemon.workdir / "files" / f"py37-{version}" / "Riff.wav")
    clip = {"view": view, "file": str(source), "start": 8.0, "scene": 1}
    result = run_old_live(version, port(daemon), tracks=["Guitar", "Keys"], clip=clip,
                          press=surface_module.NOTE_SEPARATE, until=["added ", "failed", "cannot", "internal error"])

    where = "Arrangement, beat 8" if view == "arrangement" else "Session, scene 2"
    assert result["messages"][-1] == f"Flowstate: added drums, bass, other, vocals for 'Riff' ({where})"
    assert [track["name"] for track in result["tracks"]] == ["Guitar", *STEMS, "Keys"]
    folder = source.parent / "stems" / "Riff"
    for stem, track in stems_of(result["tracks"]).items():
        if view == "arrangement":
            assert track["arrangement"] == [[str(folder / f"{stem}.wav"), 8.0]]
        else:
            assert track["slots"] == [None, str(folder / f"{stem}.wav"), None, None]
    assert not any("internal error" in m for m in result["messages"]), result["log"]


@pytest.mark.parametrize(("version", "view", "missing"), [("11.3.24", "arrangement", "Track.create_audio_clip"),
                                                          ("12.0.4", "session", "ClipSlot.create_audio_clip")])
def test_a_live_without_audio_clip_import_says_so_and_where_the_stems_are(
    daemon: DaemonProcess, version: str, view: str, missing: str
) -> None:
    source = write_audio(daemon.workdir / "files" / f"old-{version}" / "take.wav")
    clip = {"view": view, "file": str(source), "start": 4.0, "scene": 0}
    result = run_old_live(version, port(daemon), tracks=["Guitar"], clip=clip, press=surface_module.NOTE_SEPARATE,
                          until=["this Live has no", "failed", "cannot"])

    folder = source.parent / "stems" / "take"
    assert result["messages"][-1] == (
        f"Flowstate: stems of 'take' are in {folder}, but this Live has no {missing} "
        "(Live 11.3.25+ and 12.0.5+ have it): drag them in from the browser"
    )
    assert sorted(path.stem for path in folder.iterdir()) == sorted(STEMS)
    assert [t["name"] for t in result["tracks"]] == ["Guitar"]  # no empty tracks left behind


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("missing", "not_found: stems.separate: path '{path}': no such file"),
        ("outside", "forbidden: stems.separate"),
    ],
)
def test_a_file_the_daemon_cannot_use_shows_its_error(
    daemon: DaemonProcess, load_script: Load, tmp_path: Path, where: str, expected: str
) -> None:
    if where == "missing":
        path = daemon.workdir / "files" / "gone" / "deleted.wav"
    else:
        path = write_audio(tmp_path / "Desktop" / "deleted.wav")  # exists, but outside paths.roots
    live = LiveSet()
    track = live.add_audio_track("Audio")
    live.select_arrangement_clip(track.add_arrangement_clip(str(path), start_time=0.0))
    script = load_script(live, port(daemon))

    script.surface.separate_selected_clip()
    script.tick_until(lambda: script.shown("cannot separate"), "the daemon's error shown")

    assert script.messages[-1].startswith("Flowstate: cannot separate 'deleted': " + expected.format(path=path))
    assert len(live.song.tracks) == 1


@pytest.mark.parametrize(("selection", "message"), [
    ("nothing", "select an audio clip first: click it in the Arrangement, or highlight its slot in Session view"),
    ("midi", "'Chords' is a MIDI clip; select an audio clip to separate"),
])
def test_without_an_audio_clip_selected_it_says_what_to_select(
    daemon: DaemonProcess, load_script: Load, selection: str, message: str
) -> None:
    live = LiveSet()
    track = live.add_audio_track("Keys", audio=False)
    if selection == "midi":
        live.select_arrangement_clip(track.add_arrangement_clip("", start_time=0.0, name="Chords", audio=False))
    script = load_script(live, port(daemon))
    script.surface.receive_midi((0x9F, surface_module.NOTE_SEPARATE, 64))
    assert script.messages[-1] == "Flowstate: " + message


def test_a_live_error_inside_the_script_is_shown_and_logged_never_raised(daemon: DaemonProcess,
                                                                         load_script: Load) -> None:
    class DeletedClip:
        """What Live hands back for a clip deleted behind the script's back."""

        name = "ghost"

        @property
        def is_audio_clip(self) -> bool:
            raise RuntimeError("Clip was deleted")

    live = LiveSet()
    live.song.view.detail_clip = DeletedClip()
    script = load_script(live, port(daemon))
    script.surface.separate_selected_clip()  # must not raise into Live
    assert script.messages[-1] == (
        "Flowstate: internal error in separate_selected_clip: Clip was deleted (details in Live's Log.txt)"
    )
    assert "Traceback" in live.c_instance.log[-1] and "RuntimeError: Clip was deleted" in live.c_instance.log[-1]
    live.c_instance.messages.clear()  # seen; the script goes on working
    live.song.tempo = 101.0
    script.tick_until(lambda: call(daemon, "daw.status")["tempo"] == 101.0, "tempo after the error")


# -- announcement and version handshake ----------------------------------------------------------


def test_the_script_announces_itself_and_names_a_stale_copy(
    daemon: DaemonProcess, load_script: Load, monkeypatch: pytest.MonkeyPatch
) -> None:
    where = f"127.0.0.1:{port(daemon)}"
    folder = Path(surface_module.__file__).resolve().parent
    live = LiveSet()
    script = load_script(live, port(daemon))
    assert script.messages == [(f"Flowstate: script {bridge.__version__} loaded; daemon at {where}; "
                                "controls on MIDI channel 16")]
    assert live.c_instance.log[0].startswith(f"Flowstate: Flowstate {bridge.__version__} loaded from {folder} "
                                             f"in Live 12.1.5 (Python {sys.version_info[0]}.{sys.version_info[1]}.")
    script.tick_until(lambda: any(" is Flowstate " in line for line in live.c_instance.log), "the handshake")
    assert f"Flowstate: the daemon at {where} is Flowstate {bridge.__version__}, as this script" in live.c_instance.log
    assert len(script.messages) == 1  # the same version: nothing more to say

    monkeypatch.setattr(surface_module, "__version__", "0.0.9")  # a copy installed by an older flowstate
    stale = load_script(LiveSet(), port(daemon))
    stale.tick_until(lambda: stale.shown("install-ableton"), "the stale copy named")
    assert stale.messages[-1] == (
        f"Flowstate: the script in {folder} is Flowstate 0.0.9, the daemon at {where} is Flowstate "
        f"{bridge.__version__}: run `flowstate install-ableton` with the daemon's flowstate, then restart Live"
    )


# -- the set's musical state ---------------------------------------------------------------------


def test_tempo_signature_and_transport_changes_reach_the_daemon(daemon: DaemonProcess, load_script: Load) -> None:
    live = LiveSet()
    live.song.tempo = 97.0
    script = load_script(live, port(daemon))
    script.tick_until(lambda: call(daemon, "daw.status")["tempo"] == 97.0, "the tempo at load")

    live.song.tempo = 132.5
    live.song.signature_numerator = 7
    live.song.signature_denominator = 8
    live.song.start_playing()

    def daw() -> dict[str, Any]:
        status = call(daemon, "daw.status")
        return {key: status[key] for key in ("tempo", "tempo_source", "numerator", "denominator", "playing")}

    expected = {"tempo": 132.5, "tempo_source": "daw", "numerator": 7, "denominator": 8, "playing": True}
    script.tick_until(lambda: daw() == expected, "tempo, 7/8 and playing")
    live.song.stop_playing()
    script.tick_until(lambda: daw()["playing"] is False, "transport stopped")


# -- live stems from MIDI controls ---------------------------------------------------------------


def test_midi_map_forwards_the_documented_notes_and_ccs(daemon: DaemonProcess, load_script: Load) -> None:
    live = LiveSet()
    script = load_script(live, port(daemon))
    handle = MidiMapHandle()
    script.surface.build_midi_map(handle)
    me = live.c_instance.handle()
    channel = surface_module.MIDI_CHANNEL
    assert channel == 15  # MIDI channel 16: a drum pad's kick (channel 1, note 36) still plays its track
    assert handle.notes == [(me, channel, note) for note in (36, 37, 38, 39)]
    assert handle.ccs == [(me, channel, cc) for cc in (20, 21, 22, 23)]
    shown = list(script.messages)
    script.surface.receive_midi((0x90, 36, 100))  # a kick on channel 1: the drum track's, not ours
    script.surface.receive_midi((0xB0, 20, 0))
    script.tick(3)
    assert script.messages == shown
    assert (cc_to_gain_db(0), cc_to_gain_db(127)) == (-60.0, 6.0)
    assert cc_to_gain_db(64) == pytest.approx(-60.0 + 66.0 * 64 / 127, abs=0.01)


def test_midi_map_mode_gets_an_answer_for_a_cc_of_the_surfaces_input(daemon: DaemonProcess, load_script: Load) -> None:
    """A producer maps a knob of the controller that is Flowstate's input to a Live parameter:
    Live asks the script how to map it, and the script leaves the choice to Live."""
    live = LiveSet()
    script = load_script(live, port(daemon))
    channel = surface_module.MIDI_CHANNEL
    assert suggest_map_mode(script.surface, 20, channel) == -1  # one of the stream's CCs
    assert suggest_map_mode(script.surface, 74, 0) == -1  # any other knob
    script.assert_no_internal_error()


def test_stream_controls_send_their_commands_and_show_the_daemons_answers(
    daemon: DaemonProcess, load_script: Load
) -> None:
    live = LiveSet()
    script = load_script(live, port(daemon))

    script.surface.receive_midi((0x9F, surface_module.NOTE_STREAM_START, 127))
    assert script.messages[-1] == "Flowstate: starting live stems (the first start loads the model)..."
    # No sound card here: the daemon finds no audio device to stream on, and says so.
    script.tick_until(lambda: script.shown("live stems did not start"), "stream.start answered", timeout=120)
    assert script.messages[-1].startswith("Flowstate: live stems did not start: unavailable: ")
    assert "audio device" in script.messages[-1]

    script.surface.receive_midi((0xBF, 23, 127))  # the vocals fader on channel 16, all the way up
    script.surface.receive_midi((0xB0, 23, 0))  # channel 1: a controller's own knob, not ours
    script.tick_until(lambda: script.shown("gain not set"), "stream.set answered")
    assert script.messages[-1] == (
        "Flowstate: live stems vocals gain not set: unavailable: stream.set: no stream is running; "
        "stream.start one first"
    )

    script.surface.receive_midi((0x9F, surface_module.NOTE_STREAM_STOP, 90))
    script.tick_until(lambda: script.messages[-1] == "Flowstate: live stems stopped", "stream.stop answered")


# -- connection, events, unloading ---------------------------------------------------------------


def test_no_daemon_is_shown_then_it_reconnects_and_follows_the_daemon_stopping(
    tmp_path: Path, load_script: Load, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(surface_module, "RECONNECT_SECONDS", 0.2)
    later = DaemonProcess(workdir=tmp_path)  # configured, not started: nothing listens on its port
    source = write_audio(later.workdir / "files" / "a.wav")
    live = LiveSet()
    track = live.add_audio_track("Audio")
    live.select_arrangement_clip(track.add_arrangement_clip(str(source), start_time=0.0))
    live.song.tempo = 88.0
    script = load_script(live, later.osc_udp[1])

    where = f"127.0.0.1:{later.osc_udp[1]}"
    script.tick_until(lambda: script.shown(f"no daemon at {where}"), "no daemon reported")
    assert script.messages[-1] == f"Flowstate: no daemon at {where}: start it with `flowstate up`"
    script.surface.separate_selected_clip()
    script.tick_until(lambda: script.shown("cannot separate"), "separate refused")
    assert script.messages[-1] == (f"Flowstate: cannot separate 'a': unavailable: no daemon at {where}: "
                                   "start it with `flowstate up`")

    with later:
        script.tick_until(lambda: script.shown(f"connected to the daemon at {where}"), "reconnected")
        script.tick_until(lambda: call(later, "daw.status")["tempo"] == 88.0, "the set's tempo after reconnecting")
        later.stop()
        script.tick_until(lambda: script.shown("the daemon is stopping (shutdown)"), "daemon.stopping event shown")


def test_disconnect_removes_listeners_unregisters_and_closes_its_sockets(daemon: DaemonProcess,
                                                                         load_script: Load) -> None:
    before = listeners(daemon)
    live = LiveSet()
    script = load_script(live, port(daemon))
    script.tick_until(lambda: len(listeners(daemon) - before) == 1, "the event socket registered")
    [ours] = listeners(daemon) - before
    event_port = int(ours.rsplit(":", 1)[1])
    song = live.song
    names = ("tempo", "signature_numerator", "signature_denominator", "is_playing")
    assert [song.listener_count(name) for name in names] == [1, 1, 1, 1]

    script.surface.disconnect()

    assert [song.listener_count(name) for name in names] == [0, 0, 0, 0]
    # The unregister went out over UDP just before the socket closed; the daemon may still be on it.
    attempts = 0
    while ours in listeners(daemon) and attempts < 200:
        attempts += 1
    assert ours not in listeners(daemon), "the script did not unregister its event port"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", event_port))  # free again: the script closed its socket
    song.tempo = 150.0  # no listener left to fire; Live keeps calling the timer until unload
    script.tick(3)
    script.assert_no_internal_error()
