"""Generated loops land in Live: the Remote Script's real code in a simulated Live, with a real
daemon on loopback running a tiny MusicGen (saved with save_pretrained, loaded the real way).

A `generate` job from any client (ZeroMQ here, as the daemon's MIDI mapping would start it) or
from the script's own note becomes one new audio track named after the loop: in the selected
scene in Session view, at the next bar line in the Arrangement. The last test goes the whole way:
a note over real JACK MIDI (the shipped mapping) to a track in Live at the set's tempo.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import soundfile

from ableton_remote import surface as surface_module
from ableton_remote.placement import LoopTarget, next_bar, place_loop
from bridge.client import Client
from bridge.testing import DaemonProcess, build_tiny_musicgen
from tests.ableton.conftest import LoadedScript
from tests.ableton.live_sim import LiveSet
from tests.ableton.py37 import OldLive

Load = Callable[[LiveSet, int], LoadedScript]
OFFLINE = {"HF_HUB_OFFLINE": "1"}  # no hub here: a hub name fails at once instead of retrying


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    tiny = build_tiny_musicgen(tmp_path_factory.mktemp("musicgen") / "tiny")
    process = DaemonProcess(overrides={"generate": {"model": str(tiny), "engine_device": "cpu"}}, env=OFFLINE).start()
    try:
        yield process
    finally:
        assert process.stop() == 0, process.log()


def call(daemon: DaemonProcess, command: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    with Client(daemon.zmq_requests, timeout_seconds=10) as client:
        return client.call(command, args or {})


def generate_elsewhere(daemon: DaemonProcess, args: dict[str, Any]) -> dict[str, Any]:
    """A generate job started by another client (ZeroMQ, as a MIDI mapping would), to its end."""
    with Client(daemon.zmq_requests, timeout_seconds=30) as client:
        job = client.call("generate", args)
        final = client.wait_jobs([job["id"]], lambda name, data: None, 120)[job["id"]]
    assert final["event"] == "job.done", final
    return final["result"]


def load_in_step(live: LiveSet, daemon: DaemonProcess, load_script: Load) -> LoadedScript:
    """Load the script and wait until the daemon has the set's tempo and time signature."""
    script = load_script(live, daemon.osc_udp[1])
    song = live.song
    want = (song.tempo, song.signature_numerator, song.signature_denominator)
    script.tick_until(lambda: tuple(call(daemon, "daw.status")[k] for k in ("tempo", "numerator", "denominator"))
                      == want, "the set's tempo and time signature at the daemon")
    return script


def settle(script: LoadedScript, daemon: DaemonProcess, job_id: str | None = None) -> None:
    """Handle every packet the daemon sent for the job (both copies of each event), then a few ticks."""
    if job_id is not None:
        script.tick_until(lambda: call(daemon, "job.status", {"id": job_id})["state"] == "done", "the job done")
    script.tick(5)
    script.assert_no_internal_error()


# -- a loop from another client -------------------------------------------------------------------


def test_a_loop_generated_elsewhere_lands_at_the_next_bar_of_the_arrangement(
    daemon: DaemonProcess, load_script: Load
) -> None:
    live = LiveSet()
    drums = live.add_audio_track("Drums")
    live.add_audio_track("Keys")
    live.song.tempo = 180.0
    live.song.signature_numerator = 3  # a bar of 3/4 is 3 beats: the playhead at beat 4 -> bar 3, beat 6
    live.song.view.selected_track = drums
    live.show_arrangement(song_time=4.0)
    script = load_in_step(live, daemon, load_script)

    result = generate_elsewhere(daemon, {"prompt": "dusty drums", "bars": 2, "seed": 3})
    script.tick_until(lambda: script.shown("added "), "the loop placed")
    settle(script, daemon)

    name = "Dusty drums (2 bars, 180 BPM)"  # 2 bars of 3/4 at 180 BPM: 2 s
    assert result["track_name"] == name
    assert [track.name for track in live.song.tracks] == ["Drums", name, "Keys"]
    [clip] = live.song.tracks[1].arrangement_clips
    assert (clip.start_time, clip.file_path) == (6.0, result["path"])
    assert soundfile.info(clip.file_path).frames == 2 * 48000 == result["frames"]
    assert not any(slot.has_clip for slot in live.song.tracks[1].clip_slots)
    assert script.messages[-1] == f"Flowstate: added '{name}' (Arrangement, bar 3)"


def test_a_loop_generated_elsewhere_lands_in_the_selected_scene_of_session_view(
    daemon: DaemonProcess, load_script: Load
) -> None:
    live = LiveSet(num_scenes=4)
    live.add_audio_track("Bass")
    live.song.tempo = 240.0
    live.select_scene(2)
    live.song.view.selected_track = None  # e.g. the master track is selected: the loop goes last
    script = load_in_step(live, daemon, load_script)

    result = generate_elsewhere(daemon, {"prompt": "warm pad", "bars": 1, "tempo": 200.0})
    script.tick_until(lambda: script.shown("added "), "the loop placed")
    settle(script, daemon)

    name = "Warm pad (1 bars, 200 BPM)"
    assert [track.name for track in live.song.tracks] == ["Bass", name]
    track = live.song.tracks[1]
    assert [slot.has_clip for slot in track.clip_slots] == [False, False, True, False]
    assert track.clip_slots[2].clip.file_path == result["path"]
    assert track.arrangement_clips == []
    # The request named its own tempo, unlike the set's: the user is told (Live will warp it).
    assert script.messages[-1] == (
        f"Flowstate: added '{name}' (Session, scene 3); made at 200 BPM, the set is at 240 BPM"
    )


@pytest.mark.parametrize(("version", "view", "missing"), [("11.3.24", "arrangement", "Track.create_audio_clip"),
                                                          ("12.0.4", "session", "ClipSlot.create_audio_clip")])
def test_a_live_without_audio_clip_import_says_where_the_loop_is(
    daemon: DaemonProcess, version: str, view: str, missing: str
) -> None:
    # Live 11 and 12.0 run Python 3.7: the script runs there, in a simulated Live of that version.
    with OldLive(version, daemon.osc_udp[1], tracks=["Guitar"], view=view, until=["generated '"]) \
            as live:
        result = generate_elsewhere(daemon, {"prompt": "bright arp", "bars": 1, "tempo": 240.0})
        shown = live.result()

    assert shown["messages"][-1] == (
        f"Flowstate: generated 'Bright arp (1 bars, 240 BPM)' is at {result['path']}, but this Live has no "
        f"{missing} (Live 11.3.25+ and 12.0.5+ have it): drag it in from the browser"
    )
    assert Path(result["path"]).is_file()
    assert [track["name"] for track in shown["tracks"]] == ["Guitar"]  # no empty track left behind


# -- the script's own note ------------------------------------------------------------------------


def test_the_generate_note_makes_a_loop_at_lives_tempo_and_it_lands_once(
    daemon: DaemonProcess, load_script: Load, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(surface_module, "GENERATE_BARS", 1.0)
    live = LiveSet()
    live.song.tempo = 200.0
    live.add_audio_track("Drums")
    live.show_arrangement(song_time=0.0)
    script = load_in_step(live, daemon, load_script)
    jobs_before = {job["id"] for job in call(daemon, "job.list")["jobs"]}

    script.surface.receive_midi((0x9F, surface_module.NOTE_GENERATE, 100))  # the pad on channel 16, as Live forwards it
    assert script.messages[-1] == "Flowstate: generating 'keys', 1 bar at Live's tempo..."
    script.tick_until(lambda: script.shown("added "), "the loop placed")
    [job] = [job for job in call(daemon, "job.list")["jobs"] if job["id"] not in jobs_before]
    settle(script, daemon, job["id"])  # its events came on both sockets: all handled by now

    name = "Keys (1 bars, 200 BPM)"
    assert [track.name for track in live.song.tracks] == ["Drums", name]
    [clip] = live.song.tracks[1].arrangement_clips
    assert clip.start_time == 0.0
    assert soundfile.info(clip.file_path).frames == round(4 * 60 / 200 * 48000)  # one bar of 4/4 at 200 BPM
    assert script.shown("generating 'keys': queued") and script.shown("generating 'keys': 100%")
    assert [m for m in script.messages if "added" in m] == [f"Flowstate: added '{name}' (Arrangement, bar 1)"]


def test_a_request_the_daemon_refuses_is_shown(daemon: DaemonProcess, load_script: Load) -> None:
    live = LiveSet()
    script = load_script(live, daemon.osc_udp[1])
    script.surface.generate_loop(preset="strings")
    script.tick_until(lambda: script.shown("cannot generate"), "the daemon's answer")
    assert script.messages[-1].startswith(
        "Flowstate: cannot generate 'strings': bad_request: generate: argument 'preset' expected one of "
        "generate.presets (bass, drums, keys, pad), got 'strings'"
    )
    assert live.song.tracks == ()


def test_with_placing_off_nothing_lands_and_its_own_loop_is_named(
    daemon: DaemonProcess, load_script: Load, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(surface_module, "PLACE_GENERATED_LOOPS", False)
    live = LiveSet()
    live.song.tempo = 240.0
    script = load_in_step(live, daemon, load_script)

    script.surface.generate_loop(preset="drums", bars=1)
    script.tick_until(lambda: script.shown("generated "), "the loop reported")
    elsewhere = generate_elsewhere(daemon, {"prompt": "noise", "bars": 1})
    settle(script, daemon)

    [said] = [m for m in script.messages if "generated " in m]
    assert said.startswith("Flowstate: generated 'Drums (1 bars, 240 BPM)': ")
    assert Path(said.split("': ", 1)[1]).is_file()
    assert elsewhere["path"] not in "".join(script.messages)  # another client's loop: not ours to report
    assert live.song.tracks == ()


# -- the placement on its own ---------------------------------------------------------------------


@pytest.mark.parametrize(("song_time", "signature", "expected"), [
    (0.0, (4, 4), (0.0, 1)),
    (8.0, (4, 4), (8.0, 3)),  # on a bar line: that bar
    (8.0 - 1e-9, (4, 4), (8.0, 3)),  # a float a hair before it: the same
    (8.01, (4, 4), (12.0, 4)),
    (4.0, (3, 4), (6.0, 3)),
    (0.1, (7, 8), (3.5, 2)),
    (3.0, (6, 8), (3.0, 2)),
])
def test_next_bar_counts_beats_of_the_time_signature(
    song_time: float, signature: tuple[int, int], expected: tuple[float, int]
) -> None:
    assert next_bar(song_time, *signature) == expected


def test_a_clip_live_refuses_leaves_no_empty_track(tmp_path: Path) -> None:
    live = LiveSet()
    live.add_audio_track("Drums")
    not_audio = tmp_path / "loop.wav"
    not_audio.write_text("not a WAV")
    with pytest.raises(RuntimeError, match="Failed to load audio file"):
        place_loop(live.song, LoopTarget(in_arrangement=True, position=4.0), "Loop", str(not_audio))
    assert [track.name for track in live.song.tracks] == ["Drums"]


# -- the whole way: a pad over real JACK MIDI -> the daemon -> a new track in Live ----------------


def test_a_midi_note_generates_a_loop_at_the_sets_tempo_that_lands_in_live(
    tmp_path: Path, jack_server: Any, load_script: Load
) -> None:
    """The shipped mapping (config.yaml: a note -> `generate` preset keys, 4 bars): the set's
    tempo reaches the daemon through the script's listeners, the note arrives over JACK MIDI, and
    the finished loop lands as a track at the next bar, exactly 4 bars long at that tempo."""
    import mido
    import yaml

    mappings = yaml.safe_load((Path(__file__).resolve().parents[2] / "config.yaml").read_text())["midi"]["mappings"]
    mapping = next(m for m in mappings if m["command"] == "generate")
    tiny = build_tiny_musicgen(tmp_path / "musicgen")
    overrides = {"generate": {"model": str(tiny), "engine_device": "cpu"},
                 "midi": {"api": "jack", "mappings": mappings}}
    with pytest.MonkeyPatch.context() as env:
        for name, value in jack_server.env.items():  # rtmidi finds the JACK server through these
            env.setenv(name, value)
        backend = mido.Backend("mido.backends.rtmidi/UNIX_JACK", load=True)
        process = DaemonProcess(overrides=overrides, workdir=tmp_path, env={**jack_server.env, **OFFLINE})
        process.start()
        pad = None
        try:
            live = LiveSet()
            live.add_audio_track("Drums")
            live.song.tempo = 96.0
            live.show_arrangement(song_time=5.0)  # mid-bar 2 of 4/4: the loop goes to bar 3, beat 8
            script = load_in_step(live, process, load_script)
            script.tick_until(lambda: call(process, "midi.status")["available"], "the daemon's MIDI port")
            pad = backend.open_output("Flowstate:Flowstate")
            channel = (mapping.get("channel") or 1) - 1
            pad.send(mido.Message("note_on", channel=channel, note=mapping["note"], velocity=100))
            script.tick_until(lambda: script.shown("added "), "the loop placed", timeout=120)
            settle(script, process)
            jobs = [j for j in call(process, "job.list")["jobs"] if j["kind"] == "generate"]
        finally:
            if pad is not None:
                pad.close()
            assert process.stop() == 0, process.log()

    [job] = jobs  # one note, one job, one track
    tracks = [track.name for track in live.song.tracks]
    assert len(tracks) == 2 and tracks[0] == "Drums", tracks
    name = tracks[1]
    assert name.endswith("(4 bars, 96 BPM)"), name
    [clip] = live.song.tracks[1].arrangement_clips
    assert clip.start_time == 8.0
    # 4 bars of 4/4 at 96 BPM: 16 beats of 0.625 s = 10 s = 480000 frames at 48 kHz.
    assert soundfile.info(clip.file_path).frames == 480000
    assert (job["result"]["tempo"], job["result"]["tempo_source"]) == (96.0, "daw")
    assert clip.file_path == job["result"]["path"]
