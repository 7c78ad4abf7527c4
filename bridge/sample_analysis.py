"""What the sample index learns from a file without a model: descriptors, words, tags and the listing.

`analyse_file` reads a file's header and first `ANALYSIS_SECONDS` with soundfile and turns them into a
`Record`: duration, channels, sample rate, a tempo stated in the name, the words of the file and
folder names, audio descriptors (peak and RMS level, spectral centroid and flatness, attack, one-shot
or loop, percussive or sustained) and the line of text the sentence-embeddings model reads.
`list_audio` walks a folder inside `paths.roots`. Nothing here touches the database or a model.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bridge.paths import PathPolicy

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = frozenset({".wav", ".wave", ".aif", ".aiff", ".aifc", ".flac", ".ogg", ".oga", ".opus", ".mp3"})
ANALYSIS_VERSION = 1  # bump when the descriptors change: rows written by an older one are analysed again
ANALYSIS_SECONDS = 30.0  # descriptors look at the first 30 s; a long file costs no more than that
# A file modified this recently may still be being written: a bounce exported into a watched folder
# gets its WAV header's sizes last, in place, which changes neither its size nor, within one tick of
# the file system's clock (2 s on FAT32, 1 s on HFS+, a few ms on ext4), its modification time. Such
# a file is read now and its row marked (`UNSETTLED`) so the next pass reads it once more.
SETTLE_SECONDS = 3.0
UNSETTLED = 0  # the analysis version of a row read while its file may still have been written
SILENCE_DB = -120.0

CheckCancelled = Callable[[], None]


# -- descriptors -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Descriptors:
    """What a sample sounds like, in numbers and in the words the embedding text uses."""

    peak_db: float
    rms_db: float
    centroid_hz: float | None  # None for silence
    flatness: float | None  # 0 = a pure tone, 1 = white noise
    attack_ms: float | None  # from audible to within 3 dB of the loudest moment
    tail_db: float | None  # the level of the last tenth against the loudest moment
    percussive: bool
    kind: str  # "one-shot" or "loop"

    @property
    def words(self) -> list[str]:
        """Plain words for the embedding text: kind, envelope, brightness, register, texture."""
        if self.centroid_hz is None:
            return [self.kind, "silent"]
        words = [self.kind, "percussive" if self.percussive else "sustained"]
        if self.centroid_hz < 500:
            words.append("dark")
        elif self.centroid_hz < 1500:
            words.append("warm")
        elif self.centroid_hz > 4000:
            words.append("bright")
        if self.centroid_hz < 250:
            words.append("low")
        if self.flatness is not None and self.flatness > 0.3:
            words.append("noisy")
        elif self.flatness is not None and self.flatness < 0.02:
            words.append("tonal")
        return words

    def to_dict(self) -> dict[str, Any]:
        return {
            "peak_db": self.peak_db, "rms_db": self.rms_db, "centroid_hz": self.centroid_hz,
            "flatness": self.flatness, "attack_ms": self.attack_ms, "tail_db": self.tail_db,
            "percussive": self.percussive, "kind": self.kind, "words": self.words,
        }


def _db(value: float) -> float:
    return round(max(SILENCE_DB, 20.0 * math.log10(value)) if value > 0 else SILENCE_DB, 2)


def describe_audio(audio: np.ndarray, sample_rate: int, duration_seconds: float) -> Descriptors:
    """Descriptors of `(frames, channels)` float32 audio (the first `ANALYSIS_SECONDS` of a file).

    `duration_seconds` is the whole file's, which decides one-shot against loop together with
    whether the sound is still going at the end.
    """
    mono = audio.mean(axis=1, dtype=np.float32) if audio.ndim == 2 else np.asarray(audio, np.float32)
    peak = float(np.max(np.abs(mono))) if mono.size else 0.0
    if peak <= 10 ** (SILENCE_DB / 20):
        return Descriptors(SILENCE_DB, SILENCE_DB, None, None, None, None, False, "one-shot")
    rms = float(np.sqrt(np.mean(np.square(mono, dtype=np.float64))))
    env_db, hop_seconds = _envelope_db(mono, sample_rate)
    loudest = float(env_db.max())
    start = int(np.argmax(env_db > loudest - 40.0))
    peak_frame = int(np.argmax(env_db >= loudest - 3.0))
    attack_ms = (peak_frame - start) * hop_seconds * 1000.0
    after = peak_frame + max(1, round(0.3 / hop_seconds))  # 300 ms after the loudest moment, or the end
    decay_db = loudest - float(env_db[min(after, env_db.size - 1)])
    tail = env_db[-max(1, env_db.size // 10):]
    tail_db = float(tail.mean()) - loudest
    percussive = attack_ms <= 30.0 and decay_db >= 10.0
    kind = "loop" if duration_seconds >= 2.0 and tail_db > -24.0 else "one-shot"
    centroid, flatness = _spectrum(mono, sample_rate)
    return Descriptors(
        peak_db=_db(peak), rms_db=_db(rms), centroid_hz=round(centroid, 1), flatness=round(flatness, 4),
        attack_ms=round(attack_ms, 1), tail_db=round(tail_db, 2), percussive=percussive, kind=kind,
    )


def _envelope_db(mono: np.ndarray, sample_rate: int) -> tuple[np.ndarray, float]:
    """RMS level in dB per 10 ms frame, and the frame length in seconds."""
    hop = max(1, round(0.01 * sample_rate))
    frames = -(-mono.size // hop)
    padded = np.zeros(frames * hop, np.float32)
    padded[: mono.size] = mono
    power = np.mean(np.square(padded.reshape(frames, hop)), axis=1)
    return 10.0 * np.log10(power + 1e-12), hop / sample_rate


def _spectrum(mono: np.ndarray, sample_rate: int, size: int = 2048, max_frames: int = 256) -> tuple[float, float]:
    """(spectral centroid in Hz, spectral flatness) of the power spectrum summed over frames.

    Summing the power of every frame weights loud frames more, which is what a listener hears.
    At most `max_frames` frames, spread over the audio, keep a long file cheap.
    """
    frames = max(1, -(-mono.size // size))
    padded = np.zeros(frames * size, np.float32)
    padded[: mono.size] = mono
    blocks = padded.reshape(frames, size)
    if frames > max_frames:
        blocks = blocks[np.linspace(0, frames - 1, max_frames).astype(int)]
    power = np.square(np.abs(np.fft.rfft(blocks * np.hanning(size).astype(np.float32), axis=1))).sum(axis=0)
    power = power.astype(np.float64) + 1e-20
    freqs = np.fft.rfftfreq(size, 1.0 / sample_rate)
    centroid = float((freqs * power).sum() / power.sum())
    flatness = float(np.exp(np.mean(np.log(power))) / np.mean(power))
    return centroid, flatness


# -- names, tags and the embedding text -----------------------------------------------------------------

_WORD = re.compile(r"[^\W_]+")
_CASE = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Za-z])(?=\d)|(?<=\d)(?=[A-Za-z])")
_BPM = re.compile(r"(?<![\d.])(\d{2,3}(?:\.\d+)?)\s*[-_ ]?bpm|bpm\s*[-_ ]?(\d{2,3}(?:\.\d+)?)(?![\d.])", re.IGNORECASE)
_STOPWORDS = frozenset({"a", "an", "and", "the", "of", "in", "by", "for", "with", "to", "my", "bpm"} |
                       {suffix.lstrip(".") for suffix in AUDIO_SUFFIXES})


def words_of(text: str) -> list[str]:
    """`HiHat_Closed-02 (808).wav` -> hi, hat, closed, 808: lower-case words, numbering dropped."""
    words: list[str] = []
    for token in _WORD.findall(text):
        for part in _CASE.split(token):
            word = part.lower()
            if word.isdigit() and (len(word) <= 2 or word.startswith("0")):
                continue  # take numbers (01, 2) say nothing; 808, 909, 120 do
            if word and word not in _STOPWORDS:
                words.append(word)
    return words


def bpm_of(name: str) -> float | None:
    """The tempo a file name states (`Loop 120bpm`, `bpm_90`), if it is a plausible one."""
    match = _BPM.search(name)
    if match is None:
        return None
    value = float(match.group(1) or match.group(2))
    return value if 40.0 <= value <= 300.0 else None


def tags_of(path: Path, root: Path) -> list[str]:
    """Words of the file name, then of its folders below `root`, each once."""
    tags: list[str] = []
    relative_folders = path.parent.relative_to(root).parts if path.parent != root else ()
    for word in words_of(path.stem) + [w for part in relative_folders for w in words_of(part)]:
        if word not in tags:
            tags.append(word)
    return tags


def embedding_text(path: Path, root: Path, descriptors: Descriptors, bpm: float | None) -> str:
    """`kick 808 punchy. drums kicks. one-shot percussive dark low tonal`: what the model reads."""
    name = " ".join(words_of(path.stem)) or path.stem
    relative_folders = path.parent.relative_to(root).parts if path.parent != root else ()
    folders = " ".join(w for part in relative_folders for w in words_of(part))
    words = " ".join(descriptors.words + ([f"{bpm:g} bpm"] if bpm else []))
    return ". ".join(part for part in (name, folders, words) if part)


# -- files -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileState:
    """A file as listed: where it is and what its size and modification time say about it."""

    path: str  # as listed (a str: a Path per file costs more than the rest of a rescan)
    size: int
    mtime_ns: int


@dataclass
class Record:
    """One analysed file, ready to be written (an `error` means skipped)."""

    file: FileState
    root: Path
    error: str | None = None
    duration_seconds: float | None = None
    channels: int | None = None
    sample_rate: int | None = None
    frames: int | None = None
    format: str | None = None
    bpm: float | None = None
    tags: list[str] = field(default_factory=list)
    descriptors: Descriptors | None = None
    text: str | None = None
    # The sound models' share (bridge/sound_index.py): the first seconds as mono, kept only for the
    # batch being indexed, and what the models made of them.
    clip: np.ndarray | None = None
    sound_tags: list[dict[str, Any]] | None = None
    audio_vector: np.ndarray | None = None
    # Modified within SETTLE_SECONDS of the listing: the row is written as UNSETTLED, read again next pass.
    settling: bool = False


def settling(file: FileState, listed_ns: int, settle_seconds: float = SETTLE_SECONDS) -> bool:
    """Whether `file` was modified within `settle_seconds` of `listed_ns` (time.time_ns() when its
    folder was listed), so it may still be being written. A time further ahead (a share whose clock
    runs fast, a bogus date from an archive) counts as settled: it would be read on every pass."""
    window = int(settle_seconds * 1e9)
    return listed_ns - window < file.mtime_ns < listed_ns + window


def analyse_file(file: FileState, root: Path, clip_seconds: float = 0.0) -> Record:
    """Read a file's header and first `ANALYSIS_SECONDS`; a file that cannot be read gets an error.

    `clip_seconds` > 0 keeps that much of the start as mono in `record.clip`, for the sound models:
    the file is read once.
    """
    import soundfile

    path = Path(file.path)
    record = Record(file, root, tags=tags_of(path, root), bpm=bpm_of(path.stem))
    try:
        info = soundfile.info(file.path)
        if info.frames <= 0 or info.samplerate <= 0:
            record.error = "holds no audio (0 frames)"
            return record
        wanted = min(info.frames, int(ANALYSIS_SECONDS * info.samplerate))
        audio, sample_rate = soundfile.read(file.path, frames=wanted, dtype="float32", always_2d=True)
    except (soundfile.SoundFileError, RuntimeError, OSError, ValueError, EOFError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        record.error = f"cannot be read: {type(err).__name__}: {first_line}"[:300]
        return record
    if audio.shape[0] == 0:
        record.error = "holds no audio (no frames could be decoded)"
        return record
    record.duration_seconds = round(info.frames / info.samplerate, 4)
    record.channels, record.sample_rate, record.frames = int(info.channels), int(sample_rate), int(info.frames)
    record.format = str(info.format)
    record.descriptors = describe_audio(audio, sample_rate, record.duration_seconds)
    record.text = embedding_text(path, root, record.descriptors, record.bpm)
    if clip_seconds > 0:
        record.clip = np.ascontiguousarray(audio[: max(1, int(clip_seconds * sample_rate))].mean(axis=1))
    return record


def list_audio(folder: Path, paths: PathPolicy, check_cancelled: CheckCancelled) -> list[FileState]:
    """Every audio file under `folder` (hidden names skipped), following links that stay inside the roots."""
    found: list[FileState] = []
    seen = {os.path.realpath(folder)}
    stack = [folder]
    visited = 0
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except OSError as err:
            log.warning("samples: cannot list %s: %s", current, err)
            continue
        for entry in entries:
            visited += 1
            if visited % 256 == 0:
                check_cancelled()
            if entry.name.startswith("."):
                continue  # hidden files, and atomic_write's partial files
            try:
                is_dir = entry.is_dir()
                is_link = entry.is_symlink()
                # A link, and every folder, by where it really is (a Windows junction, mklink /J, is a
                # folder to DirEntry, not a link, in Python 3.11; realpath follows it): one that leads
                # outside paths.roots is not followed.
                real = os.path.realpath(entry.path) if is_link or is_dir else ""
                if real and not paths.holds(Path(real)):
                    continue
                if is_dir:
                    if real not in seen:  # a link up the tree would loop forever
                        seen.add(real)
                        stack.append(Path(entry.path))
                elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in AUDIO_SUFFIXES:
                    stat = entry.stat()
                    found.append(FileState(entry.path, stat.st_size, stat.st_mtime_ns))
            except OSError as err:
                log.warning("samples: cannot stat %s: %s", entry.path, err)
    found.sort(key=lambda f: f.path)
    return found
