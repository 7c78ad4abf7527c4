"""A live stream that records from one device and plays on another (`stream.output_device`).

On Windows the DAW's audio reaches another app through a one-way virtual cable: VB-CABLE's
"CABLE Input" is a device that only plays, its "CABLE Output" one that only records, and the stems
come back on a second cable (VB-CABLE A+B's "CABLE-A Input"). WASAPI, MME and DirectSound list
every capture and every render endpoint as a device of its own, so a stream there has two devices.

Here two such devices are real ALSA devices on the test's JACK server, made with ALSA's own JACK
PCM plugin (libasound2-plugins, whose module `make test-plugins` unpacks into .cache/alsa-lib/):
`fs_record` only records (2 channels), `fs_play` only plays (4 channels). PortAudio opens them
through its ALSA host API as two devices, each with its own buffers, as it opens two WASAPI
endpoints; both run on the JACK server's clock, as two virtual cables run on one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bridge.client import Client, RemoteError
from bridge.config import StreamConfig
from bridge.doctor import stream_device_check
from bridge.stream import loopback_feedback
from bridge.testing import DaemonProcess
from tests.bridge.test_cli import flowstate
from tests.bridge.test_stream import (
    Rig,
    _assert_lags_follow_the_reported_round_trips,
    _noise,
    _stream_daemon,
    _tail_after,
)
from tests.conftest import ALSA_JACK_PORTS, JackServer


def test_a_stream_records_from_one_device_and_plays_on_another(
    jack_server: JackServer, tiny_repo: Path, tmp_path: Path, one_way_devices: dict[str, str]
) -> None:
    daemon = _stream_daemon(jack_server, tiny_repo, tmp_path, extra_env=one_way_devices,
                            device="fs_record", output_device="fs_play", first_output=3)
    try:
        with Client(daemon.zmq_requests, timeout_seconds=60) as client:
            status = client.call("stream.start")
            assert (status["device"], status["output_device"]) == ("fs_record", "fs_play"), status
            assert (status["inputs"], status["outputs"]) == ("1-2", "3-4"), status
            signal = _noise(3.0, seed=3)
            rig = Rig(jack_server, signal, outputs=4, ports=ALSA_JACK_PORTS)
            recorded = rig.record(tail_seconds=_tail_after(status))
            final = client.call("stream.status")
            client.call("stream.stop")
    finally:
        assert daemon.stop() == 0, daemon.log()
    # What fs_record hears comes out of fs_play's outputs 3-4, the reported round trip late plus
    # what the two devices' own buffers hold (which PortAudio reports as their latency, and the
    # stream as device_latency_ms) ... second by second: on a busy machine a device's buffer can
    # run dry for a period, which moves what follows later by that much (within those buffers).
    device_frames = round(status["device_latency_ms"] * status["sample_rate"] / 1000)
    for channel in (0, 1):
        _assert_lags_follow_the_reported_round_trips(recorded[2 + channel], signal[channel], status, final,
                                                     slack_frames=device_frames)
    # ... and its outputs 1-2 stay silent.
    assert not recorded[:2].any(), np.abs(recorded[:2]).max()
    assert "stream started on fs_record in, fs_play out" in daemon.log()


def test_a_device_that_only_records_is_refused_naming_the_output_device_setting(
    jack_server: JackServer, tiny_repo: Path, tmp_path: Path, one_way_devices: dict[str, str]
) -> None:
    daemon = _stream_daemon(jack_server, tiny_repo, tmp_path, extra_env=one_way_devices, device="fs_record")
    try:
        with Client(daemon.zmq_requests, timeout_seconds=60) as client:
            with pytest.raises(RemoteError) as refused:
                client.call("stream.start")
            assert refused.value.code == "unavailable"
            assert "(fs_record only records): set stream.output_device to the device the stems should play on" \
                in refused.value.message, refused.value.message
            # At a rate given in config, the device is first opened after the model's load: the same word.
            with pytest.raises(RemoteError) as refused_later:
                client.call("stream.start", {"overrides": {"sample_rate": 48000}})
            assert refused_later.value.message == refused.value.message, refused_later.value.message
            # Named per start, the output device makes the same daemon's stream run.
            status = client.call("stream.start", {"overrides": {"output_device": "fs_play"}})
            assert status["running"] and status["output_device"] == "fs_play", status
            client.call("stream.stop")
    finally:
        assert daemon.stop() == 0, daemon.log()


def test_doctor_names_both_devices_and_says_when_the_output_device_is_missing(
    jack_server: JackServer, tmp_path: Path, one_way_devices: dict[str, str]
) -> None:
    env = {**jack_server.env, **one_way_devices}
    for name, stream, expect in (
        ("one", {"device": "fs_record"}, ["warn", "fs_record only records"]),
        ("two", {"device": "fs_record", "output_device": "fs_play", "first_output": 3},
         ["ok", "fs_record in, fs_play out (2 in, 4 out): live stems read inputs 1-2 and write outputs 3-4"]),
    ):
        (tmp_path / name).mkdir()
        config = DaemonProcess(workdir=tmp_path / name, overrides={"stream": stream}).config_path
        done = flowstate("doctor", "--config", str(config), env=env)
        (row,) = [line for line in done.stdout.splitlines() if " stream device " in line]
        assert row.split()[0] == expect[0] and expect[1] in row, row


def test_devices_says_which_only_record_or_play_and_how_to_name_one_on_a_host_api(
    jack_server: JackServer, tmp_path: Path, one_way_devices: dict[str, str]
) -> None:
    env = {**jack_server.env, **one_way_devices}
    listed = flowstate("devices", env=env).stdout
    rows = {line.split()[1]: line for line in listed.splitlines() if line[:3].strip().isdigit()}
    assert rows["fs_record"].endswith("in  2  out  0  48000 Hz  records only"), listed
    assert rows["fs_play"].endswith("in  0  out  4  48000 Hz  plays only"), listed
    assert rows["system"].endswith("48000 Hz"), listed  # JACK's PortAudio device does both
    # The name to give, with its host API, as printed: a stream takes it.
    assert '"fs_record, ALSA"' in listed, listed
    config = DaemonProcess(workdir=tmp_path, overrides={"stream": {
        "device": "fs_record, ALSA", "output_device": "fs_play, ALSA", "first_output": 3}}).config_path
    done = flowstate("doctor", "--config", str(config), env=env)
    (row,) = [line for line in done.stdout.splitlines() if " stream device " in line]
    assert row.split()[0] == "ok" and "fs_record in, fs_play out (2 in, 4 out)" in row, row


# As Windows lists VB-CABLE's two ends (WASAPI's names; MME cuts them at 31 characters) and VB-CABLE A+B's.
CABLE_RECORDS, CABLE_PLAYS = "CABLE Output (VB-Audio Virtual Cable)", "CABLE Input (VB-Audio Virtual Cable)"
CABLE_A_PLAYS = "CABLE-A Input (VB-Audio Cable A)"


@pytest.mark.parametrize(
    ("heard", "played", "first_output", "words"),
    [
        (CABLE_RECORDS, CABLE_PLAYS, 1, ["CABLE Input (VB-Audio Virtual Cable) plays into CABLE Output",
                                         "Set stream.output_device to another cable's playing end (VB-CABLE A+B"]),
        (CABLE_RECORDS[:31], CABLE_PLAYS[:31], 2, ["the two ends of one virtual cable", "outputs 2-3"]),
        (CABLE_RECORDS, CABLE_PLAYS, 3, None),  # apart: the cable's inputs 1-2 do not hear outputs 3-4
        (CABLE_RECORDS, CABLE_A_PLAYS, 1, None),  # another cable: nothing comes back
    ],
)
def test_the_two_ends_of_one_virtual_cable_are_said_to_feed_the_stems_back(
    heard: str, played: str, first_output: int, words: list[str] | None
) -> None:
    said = loopback_feedback(heard, played, 1, 2, first_output, 2)
    if words is None:
        assert said is None, said
    else:
        assert said is not None
        for word in words:
            assert word in said, said


def test_doctor_warns_when_the_two_devices_run_at_different_rates() -> None:
    recording = {"name": CABLE_RECORDS, "max_input_channels": 2, "max_output_channels": 0,
                 "default_samplerate": 48000.0}
    playing = {"name": CABLE_A_PLAYS, "max_input_channels": 0, "max_output_channels": 2,
               "default_samplerate": 44100.0}
    check = stream_device_check(StreamConfig(output_device=CABLE_A_PLAYS), recording, playing)
    assert check.state == "warn" and "runs at 48000 Hz and CABLE-A Input (VB-Audio Cable A) at 44100 Hz" \
        in check.detail, check.detail
    check = stream_device_check(StreamConfig(output_device=CABLE_A_PLAYS), recording, {**playing,
                                                                                       "default_samplerate": 48000.0})
    assert check.state == "ok" and f"{CABLE_RECORDS} in, {CABLE_A_PLAYS} out" in check.detail, check.detail
