"""AudioGen, Riffusion, Chatterbox and RVC on ReplicateTier, over real HTTP against the fake Replicate
API: each model's documented input (docs/cloud-models.md), its output read back, a cold start waited
out, a failed run and a malformed output answered `unavailable`, bad input refused before any request."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from bridge.errors import BadRequest, Unavailable
from engines.cloud.base import TierJob
from engines.cloud.replicate import ReplicateTier
from engines.cloud.replicate_models import DEFAULT_MODELS, RIFFUSION_SECONDS, RVC_VOICES
from tests.engines.cloud.test_replicate import Calls, only_prediction, write_wav

VERSIONS = {key: ref.partition(":")[2] for key, ref in DEFAULT_MODELS.items()}
VOICE_URL = "https://voices.example.net/models/alto-v2.zip"


def model_job(tmp_path: Path, key: str, *, audio: Path | None = None, **params: Any) -> TierJob:
    """A job for the model `key` with its usual params, `params` on top."""
    work_dir = tmp_path / "work"
    work_dir.mkdir(parents=True, exist_ok=True)
    base: dict[str, Any] = {
        "audiogen": {"prompt": "door slam in a hallway", "duration_seconds": 2.5, "model_family": "audiogen"},
        "riffusion": {"prompt": "jazzy rhodes", "duration_seconds": 4.0, "model_family": "riffusion"},
        "chatterbox": {"text": "Drop the beat right here.", "model_family": "chatterbox"},
        "rvc": {"voice": VOICE_URL, "pitch": 0},
    }[key]
    task = {"audiogen": "generate", "riffusion": "generate", "chatterbox": "tts", "rvc": "voice"}[key]
    if key == "rvc" and audio is None:
        audio = write_wav(tmp_path / "vocal.wav", seconds=1.0, sample_rate=22050, channels=1)
    return TierJob(task=task, params={**base, **params}, work_dir=work_dir, input_path=audio, audio_seconds=1.0)


def run(tier: ReplicateTier, job: TierJob) -> Any:
    return tier.run(job, lambda fraction: None, lambda: None)


KEYS = ("audiogen", "riffusion", "chatterbox", "rvc")


@pytest.mark.parametrize("key", KEYS)
def test_each_model_runs_its_pinned_version_and_hands_back_one_audio_file(fake, make_tier, tmp_path, key):
    result = run(make_tier(), model_job(tmp_path, key))
    create = fake.seen("create")[0]
    assert create.path == "/v1/predictions" and create.body["version"] == VERSIONS[key]
    assert result.details["version"] == VERSIONS[key]
    assert list(result.outputs) == ["audio"]
    info = soundfile.info(str(result.outputs["audio"]))
    assert info.frames > 0


def test_audiogen_gets_its_documented_inputs(fake, make_tier, tmp_path):
    result = run(make_tier(), model_job(tmp_path, "audiogen", top_k=200, temperature=0.9, guidance_scale=3.4,
                                        seed=7, steps=30))
    sent = fake.seen("create")[0].body["input"]
    # Its own names; the guidance an integer as the schema says; no seed or steps (it has neither).
    assert sent == {"prompt": "door slam in a hallway", "duration": 2.5, "output_format": "wav", "top_k": 200,
                    "temperature": 0.9, "classifier_free_guidance": 3}
    audio, rate = soundfile.read(str(result.outputs["audio"]))
    assert rate == 16000 and len(audio) == int(2.5 * 16000)


def test_audiogen_makes_its_one_second_minimum_for_shorter_requests(fake, make_tier, tmp_path):
    run(make_tier(), model_job(tmp_path, "audiogen", duration_seconds=0.4))
    assert fake.seen("create")[0].body["input"]["duration"] == 1


def test_riffusion_takes_the_audio_of_its_audio_and_spectrogram_object(fake, make_tier, tmp_path):
    result = run(make_tier(), model_job(tmp_path, "riffusion", steps=25, prompt_b="lofi", alpha=0.3))
    assert fake.seen("create")[0].body["input"] == {"prompt_a": "jazzy rhodes", "num_inference_steps": 25,
                                                    "prompt_b": "lofi", "alpha": 0.3}
    info = soundfile.info(str(result.outputs["audio"]))
    assert (info.samplerate, info.channels) == (44100, 2)
    # Only the audio was downloaded, never the spectrogram image.
    assert [r.path.rsplit("/", 1)[-1] for r in fake.seen("delivery")] == ["gen_sound.wav"]


def test_chatterbox_uploads_the_voice_prompt_past_the_inline_limit(fake, make_tier, tmp_path):
    clip = write_wav(tmp_path / "my voice.wav", seconds=2.0, sample_rate=16000, channels=1)
    tier = make_tier(inline_limit_bytes=1024)
    result = run(tier, model_job(tmp_path, "chatterbox", audio=clip, exaggeration=0.8, cfg_weight=0.3))
    sent = fake.seen("create")[0].body["input"]
    assert sent["prompt"] == "Drop the beat right here." and (sent["exaggeration"], sent["cfg_weight"]) == (0.8, 0.3)
    assert sent["audio_prompt"].startswith(f"{fake.base_url}/v1/files/")
    assert result.details["input_sent_as"] == "upload" and len(fake.seen("upload")) == 1
    assert soundfile.info(str(result.outputs["audio"])).samplerate == 24000


def test_chatterbox_without_a_voice_prompt_sends_none(fake, make_tier, tmp_path):
    run(make_tier(), model_job(tmp_path, "chatterbox"))
    assert "audio_prompt" not in fake.seen("create")[0].body["input"] and fake.seen("upload") == []


@pytest.mark.parametrize(("voice", "expected"), [
    (VOICE_URL, {"rvc_model": "CUSTOM", "custom_rvc_model_download_url": VOICE_URL}),
    ("Obama", {"rvc_model": "Obama"}),
])
def test_rvc_sends_a_dry_wav_conversion_of_the_vocal(fake, make_tier, tmp_path, voice, expected):
    result = run(make_tier(), model_job(tmp_path, "rvc", voice=voice, pitch=-3))
    sent = fake.seen("create")[0].body["input"]
    assert sent["song_input"].startswith("data:audio/")
    assert {k: sent[k] for k in expected} == expected
    assert (sent["pitch_change"], sent["pitch_change_all"], sent["output_format"]) == ("no-change", -3, "wav")
    assert (sent["reverb_wetness"], sent["reverb_dryness"]) == (0.0, 1.0)
    audio, rate = soundfile.read(str(result.outputs["audio"]))
    assert rate == 44100 and len(audio) == 44100  # the 1 s vocal, converted


@pytest.mark.parametrize("key", KEYS)
def test_each_model_waits_through_a_cold_start(fake, make_tier, tmp_path, key):
    fake.reset(start_seconds=120)  # the model boots for two minutes of the fake's clock
    booted: list[float] = []

    def boot() -> bool:
        if fake.predictions and fake.status_of(only_prediction(fake)) == "starting":
            booted.append(30.0)
            fake.advance(30)
        return False

    calls = Calls(cancel_when=boot)
    result = make_tier(wait_seconds=0).run(model_job(tmp_path, key), calls.progress, calls.check_cancelled)
    assert fake.status_of(only_prediction(fake)) == "succeeded" and sum(booted) >= 120
    assert result.outputs["audio"].is_file()
    assert calls.fractions == sorted(calls.fractions) and calls.fractions[-1] == 1.0


@pytest.mark.parametrize("key", KEYS)
def test_a_failed_prediction_is_unavailable_with_its_error(fake, make_tier, tmp_path, key):
    fake.reset(fail_with="CUDA out of memory")
    with pytest.raises(Unavailable, match="CUDA out of memory"):
        run(make_tier(), model_job(tmp_path, key))


@pytest.mark.parametrize(("key", "shape"), [("audiogen", "AudioGen output is dict"),
                                            ("riffusion", "Riffusion output must be an object"),
                                            ("chatterbox", "Chatterbox output is dict"),
                                            ("rvc", "RVC output is dict")])
def test_a_malformed_output_is_unavailable(fake, make_tier, tmp_path, key, shape):
    fake.reset(malformed_output=True)
    with pytest.raises(Unavailable, match=shape):
        run(make_tier(), model_job(tmp_path, key))


@pytest.mark.parametrize(("key", "params", "match"), [
    ("audiogen", {"duration_seconds": 10.5}, r"\(0, 10\] \(AudioGen's limit\)"),
    ("riffusion", {"duration_seconds": RIFFUSION_SECONDS + 0.5}, "Riffusion makes one clip of about 5 s"),
    ("audiogen", {"prompt": " "}, "params.prompt"),
    ("chatterbox", {"text": ""}, "params.text"),
    ("rvc", {"voice": "Freddie"}, "params.voice is 'Freddie'"),
    ("rvc", {"voice": "http://voices.example.net/alto.zip"}, "https URL"),
    ("rvc", {"pitch": 30}, "params.pitch is 30"),
])
def test_bad_input_is_refused_before_any_request(fake, make_tier, tmp_path, key, params, match):
    with pytest.raises(BadRequest, match=match):
        run(make_tier(), model_job(tmp_path, key, **params))
    assert fake.requests == []


def test_generate_models_take_no_melody(fake, make_tier, tmp_path):
    clip = write_wav(tmp_path / "melody.wav")
    with pytest.raises(BadRequest, match="AudioGen takes no input audio"):
        run(make_tier(), model_job(tmp_path, "audiogen", audio=clip))
    assert fake.requests == []


def test_each_model_is_offered_only_where_it_is_configured(fake, make_tier):
    default = make_tier()
    for task, model in (("generate", "audiogen"), ("generate", "riffusion"), ("tts", "chatterbox"),
                        ("voice", VOICE_URL), ("voice", "Obama")):
        assert default.offers_model(task, model), (task, model)
    assert not default.offers_model("tts", "en_US-lessac-medium")  # Chatterbox is its only voice
    assert default.model_for("generate", "audiogen") == DEFAULT_MODELS["audiogen"]
    assert default.model_for("tts", "chatterbox") == DEFAULT_MODELS["chatterbox"]
    assert default.model_for("voice", "Obama") == "Obama"  # the voice is what the result names
    older = make_tier(models={"stems": "cjwbw/demucs:latest", "generate": "meta/musicgen"})
    assert older.tasks == {"stems", "generate"}
    assert not older.offers_model("generate", "audiogen") and not older.offers_model("generate", "riffusion")
    assert not older.offers_model("tts", "chatterbox") and not older.supports("voice")
    assert older.offers_model("generate", "facebook/musicgen-small")


def test_rvc_knows_the_models_shipped_voices():
    assert "Obama" in RVC_VOICES and "CUSTOM" not in RVC_VOICES


def test_a_converted_vocal_keeps_its_length_at_any_pitch(fake, make_tier, tmp_path):
    result = run(make_tier(), model_job(tmp_path, "rvc", pitch=12))
    audio, rate = soundfile.read(str(result.outputs["audio"]))
    assert len(audio) == rate and np.abs(audio).max() > 0
