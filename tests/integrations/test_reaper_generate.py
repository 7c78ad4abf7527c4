"""The "generate a loop at the edit cursor" ReaScript, its real code, in a simulated REAPER against a
real daemon running a tiny MusicGen (saved with save_pretrained, loaded the real way).

The action tells the daemon REAPER's tempo and time signature at the edit cursor, generates, and
inserts the WAV on a new track named after the loop, at the cursor, exactly the bars' length.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import soundfile

from bridge.client import Client
from bridge.testing import DaemonProcess, build_tiny_musicgen
from tests.integrations.reaper_sim import Reaper, TempoMarker, scripts_running_in
from tests.integrations.test_reaper import assert_left_reaper_clean, install_scripts, only_message_box

GENERATE = "Flowstate - generate a loop at the edit cursor.py"
OFFLINE = {"HF_HUB_OFFLINE": "1"}  # no hub here: a hub name fails at once instead of retrying


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_musicgen(tmp_path_factory.mktemp("musicgen") / "tiny")


@pytest.fixture(scope="module")
def daemon(tiny: Path) -> Iterator[DaemonProcess]:
    process = DaemonProcess(overrides={"generate": {"model": str(tiny), "engine_device": "cpu"}}, env=OFFLINE).start()
    try:
        yield process
    finally:
        assert process.stop() == 0, process.log()


@pytest.fixture
def reaper(tmp_path: Path, daemon: DaemonProcess) -> Iterator[Reaper]:
    """A fresh simulated REAPER whose Flowstate scripts talk to the generating daemon."""
    sim = Reaper(tmp_path / "REAPER")
    sim.scripts = install_scripts(sim.resource_path)  # type: ignore[attr-defined]
    sim.ext_state[("Flowstate", "daemon_address")] = "127.0.0.1:%d" % daemon.osc_udp[1]
    with scripts_running_in(sim):
        yield sim


def run(sim: Reaper, answer: str | None, timeout_seconds: float = 120.0) -> dict[str, Any]:
    """Run the action; the user types `answer` (preset, prompt, bars on separate lines) or cancels."""
    sim.user_answers = [(True, answer) if answer is not None else (False, "")]
    namespace = sim.run_script(sim.scripts / GENERATE)  # type: ignore[attr-defined]
    sim.run_until_done(timeout_seconds)
    return namespace


def daw_status(daemon: DaemonProcess) -> dict[str, Any]:
    with Client(daemon.zmq_requests, timeout_seconds=10) as client:
        return client.call("daw.status")


# -- the loop lands ---------------------------------------------------------------------------------


def test_the_loop_goes_on_a_new_track_at_the_edit_cursor_at_reapers_tempo(reaper: Reaper,
                                                                          daemon: DaemonProcess) -> None:
    reaper.tempo_markers = [TempoMarker(0.0, 120.0, 4, 4), TempoMarker(10.0, 150.0, 3, 4)]
    drums = reaper.add_track("Drums")
    reaper.add_track("Bass")
    drums.selected = True
    reaper.cursor = 12.5  # after the change to 150 BPM in 3/4

    namespace = run(reaper, "\nwarm rhodes chords\n2")

    assert reaper.message_boxes == []
    name = "Warm rhodes chords (2 bars, 150 BPM)"
    assert [track.name for track in reaper.tracks] == ["Drums", name, "Bass"]
    [item] = reaper.tracks[1].items
    take = item.take
    assert take is not None
    # 2 bars of 3/4 at 150 BPM: 6 beats of 0.4 s, exactly 2.4 s.
    assert (item.position, item.length) == (12.5, 2.4)
    result = namespace["flowstate_generate_task"].result
    assert take.source.filename == result["path"]
    assert soundfile.info(result["path"]).frames == 115200
    assert reaper.cursor == 12.5  # back where the user left it
    assert reaper.undo_points == [f"Flowstate: generated {name}"]
    state = daw_status(daemon)
    assert (state["tempo"], state["numerator"], state["denominator"]) == (150.0, 3, 4)
    console = reaper.console_text()
    assert "generating warm rhodes chords: 2 bars at 150 BPM in 3/4, for 12.500 s ..." in console
    assert "generating warm rhodes chords: 100 %" in console
    assert f"{name} is on a new track at 12.500 s (2.400 s long): {result['path']}" in console
    assert_left_reaper_clean(reaper)


def test_a_preset_with_no_track_selected_goes_last_and_the_answers_are_offered_next_time(
    reaper: Reaper, daemon: DaemonProcess
) -> None:
    reaper.tempo_markers = [TempoMarker(0.0, 240.0, 4, 4)]
    reaper.add_track("Vox")
    reaper.cursor = 3.0

    run(reaper, "keys\n\n1")

    assert reaper.message_boxes == []
    assert [track.name for track in reaper.tracks] == ["Vox", "Keys (1 bars, 240 BPM)"]
    [item] = reaper.tracks[1].items
    assert (item.position, item.length) == (3.0, 1.0)
    assert reaper.prompts[0][2] == "keys\n\n4"  # the first time: the defaults
    run(reaper, None)  # asked again, the user cancels: nothing happens
    assert reaper.prompts[1][2] == "keys\n\n1"
    assert len(reaper.tracks) == 2 and reaper.message_boxes == []
    assert_left_reaper_clean(reaper)


# -- what goes wrong is said --------------------------------------------------------------------------


def test_a_request_the_daemon_refuses_shows_its_error(reaper: Reaper) -> None:
    reaper.add_track("Mix")
    run(reaper, "strings\n\n4")
    text = only_message_box(reaper)
    assert text.startswith("The daemon refused /flow/generate: generate: argument 'preset' expected one of "
                           "generate.presets (bass, drums, keys, pad), got 'strings'"), text
    assert text.endswith("(bad_request)")
    assert [track.name for track in reaper.tracks] == ["Mix"] and reaper.undo_points == []
    assert_left_reaper_clean(reaper)


def test_bars_that_are_not_a_number_are_refused_before_asking_the_daemon(reaper: Reaper) -> None:
    run(reaper, "keys\n\nfour")
    assert only_message_box(reaper) == "Bars 'four': expected a number of bars greater than 0, e.g. 4"
    assert reaper.tracks == [] and ("Flowstate", "generate_bars") not in reaper.ext_state
    assert_left_reaper_clean(reaper)


def test_a_failed_job_is_reported_and_nothing_is_inserted(reaper: Reaper, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-musicgen"
    broken = DaemonProcess(overrides={"generate": {"model": str(missing), "engine_device": "cpu"}}, env=OFFLINE).start()
    try:
        reaper.ext_state[("Flowstate", "daemon_address")] = "127.0.0.1:%d" % broken.osc_udp[1]
        reaper.add_track("Mix")
        run(reaper, "drums\n\n1")
    finally:
        assert broken.stop() == 0, broken.log()
    text = only_message_box(reaper)
    assert text.startswith("Generating drums failed: "), text
    assert str(missing) in text
    assert [track.name for track in reaper.tracks] == ["Mix"] and reaper.undo_points == []
    assert_left_reaper_clean(reaper)


def test_stopping_the_script_cancels_the_generation(reaper: Reaper, daemon: DaemonProcess) -> None:
    reaper.tempo_markers = [TempoMarker(0.0, 40.0, 4, 4)]  # 5 bars at 40 BPM: 30 s to generate
    reaper.user_answers = [(True, "pad\n\n5")]
    namespace = reaper.run_script(reaper.scripts / GENERATE)  # type: ignore[attr-defined]
    task = namespace["flowstate_generate_task"]
    while task.job_id is None:  # until the daemon has accepted the job
        reaper.pump()
        assert reaper.running, reaper.console_text()
        time.sleep(0.01)
    reaper.terminate()  # the user stops the script from REAPER
    deadline = time.monotonic() + 60
    with Client(daemon.zmq_requests, timeout_seconds=10) as client:
        while (state := client.call("job.status", {"id": task.job_id})["state"]) not in ("canceled", "done", "failed"):
            assert time.monotonic() < deadline, state
            time.sleep(0.1)
    assert state == "canceled"
    assert f"asked the daemon to cancel job {task.job_id}" in reaper.console_text()
    assert reaper.tracks == []


# InsertMedia's int result is undocumented in REAPER's API: whatever it returns, only the item
# that lands on the new track counts (None: the simulation's own 1 when imported, else 0).
INSERT_MEDIA_RESULTS = [None, 0, 1, -1]


def insert_loop_file(sim: Reaper, path: Path, insert_media_result: int | None) -> str:
    """The generate action's insert step alone, into a project with one track, "Mix"."""
    sys.path.insert(0, str(sim.scripts))  # type: ignore[attr-defined]
    import flowstate_reaper

    sim.insert_media_result = insert_media_result
    sim.add_track("Mix")
    return flowstate_reaper.insert_loop(str(path), "Loop", 2.0)


@pytest.mark.parametrize("insert_media_result", INSERT_MEDIA_RESULTS)
def test_a_loop_that_lands_is_kept_whatever_insertmedia_returns(
    reaper: Reaper, tmp_path: Path, insert_media_result: int | None
) -> None:
    loop = tmp_path / "loop.wav"
    soundfile.write(str(loop), [[0.0, 0.0]] * 4800, 48000)
    assert insert_loop_file(reaper, loop, insert_media_result) == ""
    assert [track.name for track in reaper.tracks] == ["Mix", "Loop"]
    [item] = reaper.tracks[1].items
    assert (item.position, item.length) == (2.0, 0.1)
    assert item.take is not None and item.take.source.filename == str(loop)
    assert reaper.undo_points == ["Flowstate: generated Loop"]
    assert_left_reaper_clean(reaper)


@pytest.mark.parametrize("insert_media_result", INSERT_MEDIA_RESULTS)
def test_a_file_reaper_cannot_import_leaves_no_empty_track(
    reaper: Reaper, tmp_path: Path, insert_media_result: int | None
) -> None:
    not_audio = tmp_path / "loop.wav"
    not_audio.write_text("not a WAV")
    assert insert_loop_file(reaper, not_audio, insert_media_result) == f"REAPER could not import {not_audio}"
    assert [track.name for track in reaper.tracks] == ["Mix"]
    assert reaper.cursor == 0.0
    assert_left_reaper_clean(reaper)
