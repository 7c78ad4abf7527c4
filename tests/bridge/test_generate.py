"""`generate` end to end: a real daemon runs a tiny MusicGen (saved with save_pretrained, loaded
through the real path) and writes WAVs a DAW can drop on a track; the same job routed to the
protocol-faithful Replicate fake; and `check_request`'s arithmetic and refusals on their own.
"""

from __future__ import annotations

import json
import math
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mido
import numpy as np
import pytest
import soundfile
import yaml

from bridge.client import Client, RemoteError
from bridge.config import Config
from bridge.daw import DawState
from bridge.errors import BadRequest, Forbidden
from bridge.generate import check_request
from bridge.paths import PathPolicy
from bridge.testing import SLOW_SECONDS, DaemonProcess, build_tiny_musicgen
from engines.generation import integrated_loudness
from tests.conftest import JackServer, OscUdp
from tests.engines.cloud.fake_replicate import FakeReplicate, running_fake

OFFLINE = {"HF_HUB_OFFLINE": "1"}  # no hub here: a hub name fails at once instead of retrying
TOKEN = "r8_generate_test_token_0123456789"
ROOT = Path(__file__).resolve().parents[2]


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


Events = list[tuple[str, dict[str, Any]]]


def run(daemon: DaemonProcess, args: dict[str, Any], on_event: Any = None) -> tuple[dict[str, Any], Events]:
    events: Events = []

    def seen(name: str, data: dict[str, Any]) -> None:
        events.append((name, data))
        if on_event is not None:
            on_event(client, name, data)

    with Client(daemon.zmq_requests, timeout_seconds=30) as client:
        reply = client.call("generate", args)
        final = client.wait_jobs([reply["id"]], seen, 120)
    return final[reply["id"]], events


def read(path: str) -> tuple[np.ndarray, soundfile._SoundFileInfo]:
    data, _ = soundfile.read(path, dtype="float32", always_2d=True)
    return data.T, soundfile.info(path)


# -- through the daemon ---------------------------------------------------------------------------


def test_bars_follow_the_tempo_and_time_signature_the_daw_reported(daemon: DaemonProcess) -> None:
    with Client(daemon.zmq_requests) as client:
        client.call("daw.set", {"tempo": 150.0, "numerator": 3, "denominator": 4})
    try:
        outcome, events = run(daemon, {"prompt": "dusty lofi drums", "bars": 2, "seed": 7})
    finally:
        with Client(daemon.zmq_requests) as client:
            client.call("daw.set", {"numerator": 4, "denominator": 4})
    assert outcome["event"] == "job.done", outcome
    result = outcome["result"]
    # 2 bars of 3/4 at 150 BPM: 6 beats of 0.4 s = 2.4 s = 115200 frames at 48 kHz, exactly.
    assert (result["tempo"], result["tempo_source"], result["numerator"], result["denominator"]) == (150.0, "daw", 3, 4)
    assert (result["bars"], result["seconds"], result["frames"], result["sample_rate"]) == (2.0, 2.4, 115200, 48000)
    audio, info = read(result["path"])
    assert (info.samplerate, info.frames, info.channels, info.subtype) == (48000, 115200, 1, "PCM_24")
    assert Path(result["path"]).parent == daemon.workdir / "files" / "Flowstate" / "Generated"
    assert result["track_name"] == "Dusty lofi drums (2 bars, 150 BPM)"
    assert (result["seed"], result["tier"], result["device"]) == (7, "local", "cpu")
    # Loudness-normalised to -14 LUFS, or as close as the -1 dBFS peak ceiling allows; faded ends.
    loudness = integrated_loudness(audio, 48000)
    assert loudness == pytest.approx(result["loudness_lufs"], abs=0.05) and loudness <= -14.0 + 0.05
    assert 20 * math.log10(np.abs(audio).max()) <= -1.0 + 0.01
    assert audio[0, 0] == 0.0 and audio[0, -1] == 0.0
    fractions = [data["fraction"] for name, data in events if name == "job.progress"]
    stages = {data.get("stage") for name, data in events if name == "job.progress"}
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    # Progress is throttled (intermediate stages may be merged); the last report always goes out.
    assert "written" in stages  # (progress while generating: see the cancel test)


def test_the_same_seed_and_prompt_make_the_same_file_and_a_tempo_in_the_request_wins(daemon: DaemonProcess) -> None:
    common = {"prompt": "warm keys", "bars": 1, "tempo": 240.0}
    first, _ = run(daemon, {**common, "seed": 11, "name": "take one"})
    second, _ = run(daemon, {**common, "seed": 11, "name": "take two"})
    other, _ = run(daemon, {**common, "seed": 12, "name": "take three"})
    results = [first["result"], second["result"], other["result"]]
    assert len({r["path"] for r in results}) == 3
    for result in results:
        assert (result["tempo"], result["tempo_source"], result["frames"]) == (240.0, "request", 48000)
    assert Path(results[0]["path"]).name == "take-one_240bpm_1bars_s11.wav"
    a, b, c = (read(r["path"])[0] for r in results)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_cancel_stops_generation_and_leaves_no_file(daemon: DaemonProcess) -> None:
    cancelled: list[str] = []

    def cancel_once_generating(client: Client, name: str, data: dict[str, Any]) -> None:
        if name == "job.progress" and data.get("stage") == "generating" and data["fraction"] > 0.06 and not cancelled:
            cancelled.append(data["id"])
            client.call("job.cancel", {"id": data["id"]})

    outcome, events = run(daemon, {"prompt": "endless ambient pad", "seconds": 28.0, "seed": 3}, cancel_once_generating)
    assert cancelled and outcome["event"] == "job.canceled", outcome
    with Client(daemon.zmq_requests) as client:
        status = client.call("job.status", {"id": cancelled[0]})
    assert status["state"] == "canceled"
    assert max(data["fraction"] for name, data in events if name == "job.progress") < 0.9  # stopped while generating
    target = Path(status["args"]["path"])
    assert not target.exists()
    assert not list(target.parent.glob(f".{target.stem}*")) if target.parent.exists() else True


def test_a_preset_over_osc_gives_its_bars_at_the_daws_tempo(daemon: DaemonProcess) -> None:
    client = OscUdp(daemon.osc_udp)
    try:
        reply = client.request("/flow/generate", "", "keys")
        assert reply.address == "/flow/reply/generate", reply.params
        job_id = reply.params[0]
        while True:
            message = client.receive(timeout=60)
            if message.address in ("/flow/event/job/done", "/flow/event/job/failed") and message.params[0] == job_id:
                break
    finally:
        client.close()
    assert message.address == "/flow/event/job/done", message.params
    result = json.loads(message.params[1])
    bar_seconds = result["numerator"] * 4 / result["denominator"] * 60 / result["tempo"]
    assert result["bars"] == 4.0 and result["frames"] == round(4 * bar_seconds * 48000)
    assert result["prompt"] == "lofi electric piano chords, warm, dusty, mellow"
    assert result["track_name"].startswith("Keys (4 bars")
    assert soundfile.info(result["path"]).frames == result["frames"]


def test_paths_outside_the_roots_are_forbidden_at_once(daemon: DaemonProcess) -> None:
    with Client(daemon.zmq_requests) as client:
        with pytest.raises(RemoteError) as caught:
            client.call("generate", {"prompt": "x", "out_dir": "/etc/flowstate"})
        assert caught.value.code == "forbidden" and "out_dir '/etc/flowstate'" in caught.value.message
        with pytest.raises(RemoteError) as caught:
            client.call("generate", {"prompt": "x", "melody_path": "/etc/hostname"})
        assert caught.value.code == "forbidden" and "melody_path" in caught.value.message
        # A model folder outside the model folders and roots: refused without saying whether it exists.
        for model in ("/etc", "/no/such/musicgen", "~/../../tmp"):
            with pytest.raises(RemoteError) as caught:
                client.call("generate", {"prompt": "x", "model": model})
            assert caught.value.code == "forbidden", caught.value.message
            assert f"model {model!r} is a path outside the model folders" in caught.value.message
        assert client.call("ping")["reply"] == "pong"


def test_a_melody_for_a_model_without_melody_conditioning_is_refused_at_once(daemon: DaemonProcess) -> None:
    clip = daemon.workdir / "files" / "hum.wav"
    soundfile.write(str(clip), 0.3 * np.sin(np.linspace(0, 880 * np.pi, 16000)), 16000)
    with Client(daemon.zmq_requests) as client:
        with pytest.raises(RemoteError) as caught:
            client.call("generate", {"prompt": "x", "melody_path": str(clip)})
    assert caught.value.code == "bad_request"
    assert "melody_path needs a melody model" in caught.value.message and "'musicgen'" in caught.value.message


def test_a_model_that_cannot_be_found_fails_the_job_naming_what_was_tried(daemon: DaemonProcess) -> None:
    outcome, _ = run(daemon, {"prompt": "x", "seconds": 1.0, "model": "facebook/musicgen-small"})
    # With no cloud tier configured local was the only tier: its own error, code and all.
    assert outcome["event"] == "job.failed" and outcome["code"] == "not_found", outcome
    assert "hub name 'facebook/musicgen-small'" in outcome["message"]
    assert "weight package: none ships MusicGen" in outcome["message"]


# -- a MIDI note over real JACK MIDI ------------------------------------------------------------------


def _wait(what: str, check: Callable[[], Any], process: DaemonProcess, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s\n{process.log()[-3000:]}")
        time.sleep(0.05)


def test_the_shipped_midi_mapping_generates_four_bars_at_the_daws_tempo(
    tiny: Path, jack_server: JackServer, tmp_path: Path
) -> None:
    mappings = yaml.safe_load((ROOT / "config.yaml").read_text())["midi"]["mappings"]
    mapping = next(m for m in mappings if m["command"] == "generate")
    assert mapping["args"]["bars"] == 4
    overrides = {
        "generate": {"model": str(tiny), "engine_device": "cpu"},
        "midi": {"api": "jack", "mappings": mappings},
    }
    with pytest.MonkeyPatch.context() as env:
        for name, value in jack_server.env.items():  # rtmidi finds the JACK server through these
            env.setenv(name, value)
        backend = mido.Backend("mido.backends.rtmidi/UNIX_JACK", load=True)
        process = DaemonProcess(overrides=overrides, workdir=tmp_path, env={**jack_server.env, **OFFLINE}).start()
        out = None
        try:
            with Client(process.zmq_requests, timeout_seconds=10) as client:
                def opened() -> bool:
                    return not str(client.call("midi.status")["reason"]).startswith("opening")

                _wait("MIDI open", opened, process, SLOW_SECONDS)
                assert client.call("midi.status")["available"], process.log()
                client.call("daw.set", {"tempo": 100.0})
                out = backend.open_output("Flowstate:Flowstate")
                out.send(mido.Message("note_on", channel=5, note=mapping["note"], velocity=100))

                def finished() -> dict[str, Any] | None:
                    jobs = [j for j in client.call("job.list")["jobs"] if j["kind"] == "generate"]
                    return jobs[0] if jobs and jobs[0]["state"] in ("done", "failed", "canceled") else None

                job = _wait("the generate job", finished, process, 120)
        finally:
            if out is not None:
                out.close()
            assert process.stop() == 0, process.log()
    assert job["state"] == "done", job
    result = job["result"]
    # 4 bars of 4/4 at 100 BPM: 16 beats of 0.6 s = 9.6 s = 460800 frames at 48 kHz.
    assert (result["bars"], result["tempo"], result["tempo_source"]) == (4.0, 100.0, "daw")
    info = soundfile.info(result["path"])
    assert (info.samplerate, info.frames) == (48000, 460800) == (result["sample_rate"], result["frames"])
    assert result["track_name"] == "Keys (4 bars, 100 BPM)"


# -- the cloud tier ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def replicate() -> Iterator[tuple[str, FakeReplicate]]:
    with running_fake(token=TOKEN) as running:
        yield running


def test_a_deadline_the_cpu_cannot_meet_runs_on_replicates_musicgen(
    tiny: Path, replicate: tuple[str, FakeReplicate], tmp_path: Path
) -> None:
    base_url, fake = replicate
    overrides = {
        "generate": {"model": str(tiny), "engine_device": "cpu"},
        "cloud": {"replicate_url": base_url},
        # This machine claims 100 s per second of audio: no deadline can be met locally.
        "router": {"local_seconds_per_audio_second": {"cpu": 100.0}},
    }
    env = {**OFFLINE, "REPLICATE_API_TOKEN": TOKEN}
    process = DaemonProcess(overrides=overrides, workdir=tmp_path, env=env).start()
    try:
        prompt = "bright synth arpeggio"
        outcome, _ = run(process, {"prompt": prompt, "bars": 2, "tempo": 120.0, "seed": 5, "deadline_seconds": 60})
    finally:
        assert process.stop() == 0, process.log()
    assert outcome["event"] == "job.done", outcome
    result = outcome["result"]
    assert result["tier"] == "replicate" and result["cost_usd"] > 0
    created = fake.seen("create")[-1]
    assert created.path == "/v1/models/meta/musicgen/predictions"
    sent = {k: created.body["input"][k] for k in ("prompt", "duration", "seed")}
    assert sent == {"prompt": prompt, "duration": 4, "seed": 5}
    # Replicate's 32 kHz answer lands like a local one: 48 kHz, exactly 2 bars, its pitch intact.
    audio, info = read(result["path"])
    assert (info.samplerate, info.frames) == (48000, 192000)
    spectrum = np.abs(np.fft.rfft(audio[0, 4800:-4800]))
    peak = np.fft.rfftfreq(audio.shape[1] - 9600, 1 / 48000)[spectrum.argmax()]
    assert peak == pytest.approx(220.0 + zlib.crc32(prompt.encode()) % 440, abs=1.0)


# -- check_request on its own ------------------------------------------------------------------------


def _config(tmp_path: Path, **generate: Any) -> Config:
    return Config.model_validate({"paths": {"roots": [str(tmp_path)]}, "generate": generate})


def test_without_a_reported_tempo_bars_use_the_default_tempo(tmp_path: Path) -> None:
    config = _config(tmp_path)
    args = check_request({"prompt": "x", "bars": 8}, PathPolicy([tmp_path]), config, DawState(default_tempo=96.0))
    assert (args["tempo"], args["tempo_source"], args["seconds"], args["frames"]) == (96.0, "default", 20.0, 960000)
    daw = DawState()
    daw.set_tempo(100.0, "midi_clock")
    args = check_request({"prompt": "x", "bars": 2, "sample_rate": 44100}, PathPolicy([tmp_path]), config, daw)
    assert (args["tempo_source"], args["seconds"], args["frames"]) == ("midi_clock", 4.8, 211680)


def test_request_options_override_the_preset_and_a_seed_is_always_recorded(tmp_path: Path) -> None:
    config = _config(tmp_path, presets={"hats": {"prompt": "crisp hats", "bars": 2.0, "seed": 9}})
    paths, daw = PathPolicy([tmp_path]), DawState()
    args = check_request({"preset": "hats"}, paths, config, daw)
    assert (args["prompt"], args["bars"], args["seed"], args["preset"]) == ("crisp hats", 2.0, 9, "hats")
    args = check_request({"preset": "hats", "seconds": 3.0, "seed": 1}, paths, config, daw)
    assert (args["bars"], args["seconds"], args["seed"]) == (None, 3.0, 1)
    assert isinstance(check_request({"prompt": "x"}, paths, config, daw)["seed"], int)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ({"prompt": ""}, ["argument 'prompt'", "bass, drums, keys, pad"]),
        ({"preset": "nope"}, ["argument 'preset'", "'nope'", "bass, drums, keys, pad"]),
        ({"prompt": "x", "bars": 2, "seconds": 3}, ["bars or seconds, not both"]),
        ({"prompt": "x", "bars": 32, "tempo": 60.0}, ["bars 32 at 60 BPM in 4/4 last 128.00 s", "at most 7.5 bars"]),
        ({"prompt": "x", "seconds": 45.0}, ["argument 'seconds'", "(0, 30]", "45.0"]),
    ],
)
def test_bad_requests_name_the_argument_value_and_expectation(
    tmp_path: Path, args: dict[str, Any], words: list[str]
) -> None:
    with pytest.raises(BadRequest) as caught:
        check_request(args, PathPolicy([tmp_path]), _config(tmp_path), DawState())
    for word in words:
        assert word in caught.value.message


def test_a_configured_out_dir_outside_the_roots_is_forbidden(tmp_path: Path) -> None:
    config = _config(tmp_path / "music", out_dir=str(tmp_path / "elsewhere"))
    with pytest.raises(Forbidden, match="out_dir"):
        check_request({"prompt": "x"}, PathPolicy([tmp_path / "music"]), config, DawState())


def test_doctor_says_where_musicgen_would_load_from(tiny: Path, tmp_path: Path) -> None:
    from bridge.doctor import run_checks

    def row(**generate: Any) -> Any:
        return next(c for c in run_checks(_config(tmp_path, **generate), "test") if c.name == "musicgen")

    found = row(model=str(tiny))
    assert found.state == "ok" and f"configured folder {tiny} (musicgen)" in found.detail
    missing = row(model="flowstate-test/no-such-musicgen", local_dir=str(tmp_path / "offline"))
    assert missing.state == "warn"
    assert "hub name flowstate-test/no-such-musicgen" in missing.detail and "generate.local_dir" in missing.detail


# -- containment: the output folder swapped for a link after the check (issue 11, finding 3) ----------


def test_an_output_folder_swapped_for_a_link_before_the_write_is_never_written_through(
    tiny: Path, tmp_path: Path
) -> None:
    from bridge.generate import GenerateJob
    from tests.bridge.test_paths import HookedRun, once, swap_for_link

    root, outside = tmp_path / "Music", tmp_path / "elsewhere"
    (root / "Loops").mkdir(parents=True)
    outside.mkdir()
    config = _config(root, model=str(tiny), engine_device="cpu")
    paths = PathPolicy.from_config(config)
    args = check_request({"prompt": "dusty drums", "seconds": 1.0, "seed": 1, "out_dir": str(root / "Loops")},
                         paths, config, DawState())
    # Checked when the job started; then, while it generates, the folder becomes a link elsewhere.
    hook = once(lambda event, data: data.get("stage") == "finishing",
                lambda runner, job_id: swap_for_link(root / "Loops", outside))
    event, data = HookedRun(tmp_path, "generate", GenerateJob(config, paths), hook).run(args)
    assert (event, data.get("code")) == ("job.failed", "forbidden"), data
    assert str(root / "Loops") in data["message"]
    assert list(outside.iterdir()) == []
