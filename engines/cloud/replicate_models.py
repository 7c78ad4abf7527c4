"""What each model Flowstate runs on Replicate takes and gives: the models a tier runs by default,
the job options that pass through to each, the `input` built from a job (checked before anything goes
out) and the files and data read back from its `output`. The schemas, with where they were read:
docs/cloud-models.md. The prediction protocol is `replicate_client.py`; the tier, `replicate.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bridge.errors import BadRequest, Unavailable
from engines.cloud.base import AUDIOGEN, CHATTERBOX, RIFFUSION, TierJob
from engines.cloud.http import safe_name, write_output
from engines.stable_audio import STABLE_AUDIO_OPEN

REPLICATE_TASKS = ("stems", "generate", "transcribe")
# More generate models: jobs that ask for one (params.model_family) run it.
STABLE_AUDIO = "stable_audio"
# Models whose key is not a task: the key -> the task it serves. AudioGen and Riffusion are generate
# models, Chatterbox is this tier's only tts model, RVC its only voice model.
RVC = "rvc"
MODEL_TASKS: dict[str, str] = {
    **{task: task for task in REPLICATE_TASKS},
    STABLE_AUDIO: "generate", AUDIOGEN: "generate", RIFFUSION: "generate", CHATTERBOX: "tts", RVC: "voice",
}
MODEL_KEYS = tuple(MODEL_TASKS)

# Model refs: "owner/name" runs an official model through its model-scoped endpoint;
# "owner/name:<64-hex>" or "<64-hex>" pins a version; "owner/name:latest" (our own spelling)
# resolves the model's latest version once per tier and pins it for the tier's lifetime.
DEFAULT_MODELS: dict[str, str] = {
    # ⚠ A community model: it needs a version. The reference shows cjwbw/demucs at 25a17310…, cut
    # short, so we resolve the latest; pin the full id in config for a schema that cannot move.
    # (The strategy document says "cjwbw/htdemucs"; the reference documents cjwbw/demucs.)
    "stems": "cjwbw/demucs:latest",
    # Official (the model-scoped endpoint answers for it; it is the strategy document's choice).
    "generate": "meta/musicgen",
    # ⚠ The reference shows version c7a9a6d5… (cut short) and does not say whether it is official.
    "transcribe": "openai/whisper:latest",
    # Stable Audio Open 1.0 itself (the weights generate runs locally), a community model: pinned to
    # the version whose API page docs/cloud-models.md records. Stability's official
    # stability-ai/stable-audio-2.5 is another, closed model with another schema.
    STABLE_AUDIO: "stackadoc/stable-audio-open-1.0:49b1d4f06f69989dd2c8252d455d2deebaa3c3e3e894694b8aed301c69e75913",
    # The models below are community models pinned to the versions whose schemas docs/cloud-models.md
    # records: AudioGen medium (sound effects), Riffusion v1, Chatterbox (English), RVC v2 (AICoverGen).
    AUDIOGEN: "sepal/audiogen:154b3e5141493cb1b8cec976d9aa90f2b691137e39ad906d2421b74c2a8c52b8",
    RIFFUSION: "riffusion/riffusion:8cf61ea6c56afd61d8f5b9ffd14d7c216c0a93844ce2d82ac1c9ecc9c7f24e05",
    CHATTERBOX: "resemble-ai/chatterbox:1b8422bc49635c20d0a84e387ed20879c0dd09254ecdb4e75dc4bec10ff94e97",
    RVC: "zsxkib/realistic-voice-cloning:0a9c7c558af4c0f20667c1bd1260ce32a2879944a0b9e44e1398660c077b1550",
}

# Documented inputs (reference, "Model slugs"). Options in job.params under these names pass
# through; everything else in job.params is ours and is mapped or ignored, so the same job can
# run locally or here.
DEMUCS_MODELS = ("htdemucs", "htdemucs_ft", "htdemucs_6s", "hdemucs_mmi", "mdx", "mdx_q", "mdx_extra", "mdx_extra_q")
DEMUCS_STEMS = ("vocals", "bass", "drums", "guitar", "piano", "other")  # htdemucs_6s
DEMUCS_4_STEMS = ("vocals", "bass", "drums", "other")  # every other model
DEMUCS_OPTIONS = ("shifts", "overlap", "clip_mode", "float32")
MUSICGEN_OPTIONS = (
    "model_version", "continuation", "continuation_start", "continuation_end", "multi_band_diffusion",
    "normalization_strategy", "top_k", "top_p", "temperature", "classifier_free_guidance", "seed",
)
MUSICGEN_MAX_SECONDS = 30
# stackadoc/stable-audio-open-1.0: seconds_total is an integer, at most 47; our names map to its own.
STABLE_AUDIO_MAX_SECONDS = 47
STABLE_AUDIO_OPTIONS = {"steps": "steps", "guidance_scale": "cfg_scale", "negative_prompt": "negative_prompt",
                        "seed": "seed"}
WHISPER_OPTIONS = ("model", "translate", "temperature", "initial_prompt", "condition_on_previous_text")
# sepal/audiogen: duration is a number of seconds in 1..10; classifier_free_guidance an integer.
AUDIOGEN_MIN_SECONDS, AUDIOGEN_MAX_SECONDS = 1, 10
AUDIOGEN_OPTIONS = {"top_k": "top_k", "temperature": "temperature"}
# riffusion/riffusion makes one spectrogram image: 512 columns, about 5.1 s of audio. A job asks for at
# most RIFFUSION_SECONDS (the job trims the clip to its exact length; nothing is looped).
RIFFUSION_SECONDS = 5.0
RIFFUSION_OPTIONS = {"steps": "num_inference_steps", "prompt_b": "prompt_b", "alpha": "alpha",
                     "denoising": "denoising", "seed_image": "seed_image_id"}
# resemble-ai/chatterbox: exaggeration 0.25..2, cfg_weight 0.2..1, temperature 0.05..5, seed (0: random).
CHATTERBOX_OPTIONS = ("exaggeration", "cfg_weight", "temperature", "seed")
# zsxkib/realistic-voice-cloning: the voices it ships (rvc_model's enum); CUSTOM with a download URL
# runs any RVC v2 voice (a .zip holding the .pth and .index).
RVC_VOICES = ("Squidward", "MrKrabs", "Plankton", "Drake", "Vader", "Trump", "Biden", "Obama", "Guitar", "Voilin")
RVC_CUSTOM = "CUSTOM"
RVC_MAX_SEMITONES = 24
DEFAULT_GENERATE_SECONDS = 8  # MusicGen's documented default duration

# -- inputs per model ---------------------------------------------------------------------------


def _options(params: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {key: params[key] for key in names if params.get(key) is not None}


def _require_audio(audio: str | None, task: str, tier: str) -> str:
    if audio is None:
        raise BadRequest(f"{tier}: {task} needs an input audio file; input_path is None")
    return audio


def demucs_input(job: TierJob, audio: str | None, tier: str) -> dict[str, Any]:
    """cjwbw/demucs: audio, model_name, stem ("none" or one stem to isolate), output_format, ..."""
    params = job.params
    model = params.get("model") or "htdemucs"
    if model not in DEMUCS_MODELS:
        raise BadRequest(f"{tier}: params.model is {model!r}; expected one of {', '.join(DEMUCS_MODELS)}")
    makes = DEMUCS_STEMS if model == "htdemucs_6s" else DEMUCS_4_STEMS
    two_stems = params.get("two_stems") or "none"
    if two_stems != "none" and two_stems not in makes:
        raise BadRequest(f"{tier}: params.two_stems is {two_stems!r}; {model} makes {', '.join(makes)}")
    unknown = [stem for stem in params.get("stems") or [] if stem not in makes]
    if unknown:
        raise BadRequest(f"{tier}: params.stems {unknown} are not stems of {model} ({', '.join(makes)})")
    return {
        "audio": _require_audio(audio, "stems", tier),
        "model_name": model,
        "stem": two_stems,
        "output_format": "wav",  # lossless, and every tier's outputs must be readable by soundfile
        **_options(params, DEMUCS_OPTIONS),
    }


def musicgen_input(job: TierJob, audio: str | None, tier: str) -> dict[str, Any]:
    """meta/musicgen: prompt, duration (s, at most 30), model_version, seed, ...; input_audio
    (a melody to follow, or the audio to continue) when the job has an input file."""
    params = job.params
    prompt = params.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRequest(f"{tier}: generate needs params.prompt, a non-empty string; got {prompt!r}")
    duration = params.get("duration_seconds", DEFAULT_GENERATE_SECONDS)
    number = isinstance(duration, (int, float)) and not isinstance(duration, bool)
    if not number or not 1 <= duration <= MUSICGEN_MAX_SECONDS:
        raise BadRequest(f"{tier}: params.duration_seconds is {duration!r}; expected 1..{MUSICGEN_MAX_SECONDS} "
                         "(MusicGen's limit)")
    built: dict[str, Any] = {"prompt": prompt, "duration": math.ceil(duration), "output_format": "wav"}
    built.update(_options(params, MUSICGEN_OPTIONS))
    if audio is not None:
        built["input_audio"] = audio
    return built


def stable_audio_input(job: TierJob, audio: str | None, tier: str) -> dict[str, Any]:
    """stackadoc/stable-audio-open-1.0: prompt, seconds_total (integer, at most 47), steps,
    cfg_scale, negative_prompt, seed; it takes no audio."""
    params = job.params
    prompt = _prompt(job, tier, "Stable Audio Open", audio)
    duration = _duration(job, tier, STABLE_AUDIO_MAX_SECONDS, "Stable Audio Open's limit")
    built: dict[str, Any] = {"prompt": prompt, "seconds_total": math.ceil(duration)}
    for ours, theirs in STABLE_AUDIO_OPTIONS.items():
        if params.get(ours) not in (None, ""):
            built[theirs] = params[ours]
    return built


def audiogen_input(job: TierJob, audio: str | None, tier: str) -> dict[str, Any]:
    """sepal/audiogen: prompt, duration (number, 1..10 s), top_k, top_p, temperature,
    classifier_free_guidance (integer), output_format; it takes no audio."""
    prompt = _prompt(job, tier, "AudioGen", audio)
    duration = _duration(job, tier, AUDIOGEN_MAX_SECONDS, "AudioGen's limit")
    # Shorter than its minimum: it makes 1 s and the job trims to the length asked.
    built: dict[str, Any] = {"prompt": prompt, "duration": max(AUDIOGEN_MIN_SECONDS, duration), "output_format": "wav"}
    built.update({theirs: job.params[ours] for ours, theirs in AUDIOGEN_OPTIONS.items()
                  if job.params.get(ours) is not None})
    if job.params.get("guidance_scale") is not None:
        built["classifier_free_guidance"] = max(1, round(float(job.params["guidance_scale"])))
    return built


def riffusion_input(job: TierJob, audio: str | None, tier: str) -> dict[str, Any]:
    """riffusion/riffusion: prompt_a, prompt_b, alpha, denoising, num_inference_steps, seed_image_id.
    It has no length: one clip of about 5 s, so a job may ask for at most RIFFUSION_SECONDS."""
    prompt = _prompt(job, tier, "Riffusion", audio)
    _duration(job, tier, RIFFUSION_SECONDS, "Riffusion makes one clip of about 5 s; it cannot be longer")
    built: dict[str, Any] = {"prompt_a": prompt}
    built.update({theirs: job.params[ours] for ours, theirs in RIFFUSION_OPTIONS.items()
                  if job.params.get(ours) not in (None, "")})
    return built


def chatterbox_input(job: TierJob, audio: str | None, tier: str) -> dict[str, Any]:
    """resemble-ai/chatterbox: prompt (the text), audio_prompt (a voice clip to speak like),
    exaggeration, cfg_weight, temperature, seed."""
    text = job.params.get("text")
    if not isinstance(text, str) or not text.strip():
        raise BadRequest(f"{tier}: tts needs params.text, a non-empty string; got {text!r}")
    built: dict[str, Any] = {"prompt": text, **_options(job.params, CHATTERBOX_OPTIONS)}
    if audio is not None:
        built["audio_prompt"] = audio
    return built


def rvc_input(job: TierJob, audio: str | None, tier: str) -> dict[str, Any]:
    """zsxkib/realistic-voice-cloning: song_input (the vocal), rvc_model (a shipped voice, or CUSTOM with
    custom_rvc_model_download_url), pitch_change_all (semitones), output_format; its reverb is turned off
    (the DAW owns the effects: a dry converted vocal comes back)."""
    voice = job.params.get("voice")
    if isinstance(voice, str) and voice.startswith("https://"):
        chosen = {"rvc_model": RVC_CUSTOM, "custom_rvc_model_download_url": voice}
    elif voice in RVC_VOICES:
        chosen = {"rvc_model": voice}
    else:
        raise BadRequest(f"{tier}: params.voice is {voice!r}; expected an https URL of an RVC v2 voice model "
                         f"(.zip) or one of the model's voices: {', '.join(RVC_VOICES)}")
    pitch = job.params.get("pitch", 0)
    if isinstance(pitch, bool) or not isinstance(pitch, (int, float)) or abs(pitch) > RVC_MAX_SEMITONES:
        raise BadRequest(f"{tier}: params.pitch is {pitch!r}; expected semitones in "
                         f"-{RVC_MAX_SEMITONES}..{RVC_MAX_SEMITONES}")
    return {"song_input": _require_audio(audio, "voice", tier), **chosen, "pitch_change": "no-change",
            "pitch_change_all": pitch, "output_format": "wav", "reverb_wetness": 0.0, "reverb_dryness": 1.0}


def _prompt(job: TierJob, tier: str, model: str, audio: str | None) -> str:
    prompt = job.params.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRequest(f"{tier}: generate needs params.prompt, a non-empty string; got {prompt!r}")
    if audio is not None:
        raise BadRequest(f"{tier}: {model} takes no input audio (a melody needs MusicGen)")
    return prompt


def _duration(job: TierJob, tier: str, limit: float, why: str) -> float:
    duration = job.params.get("duration_seconds", DEFAULT_GENERATE_SECONDS)
    number = isinstance(duration, (int, float)) and not isinstance(duration, bool)
    if not number or not 0 < duration <= limit:
        raise BadRequest(f"{tier}: params.duration_seconds is {duration!r}; expected (0, {limit:g}] ({why})")
    return float(duration)


# generate's model_family -> the key of the model that runs it (anything else: MusicGen).
GENERATE_FAMILIES = {STABLE_AUDIO_OPEN: STABLE_AUDIO, AUDIOGEN: AUDIOGEN, RIFFUSION: RIFFUSION}


def key_for(task: str, model: str) -> str:
    """The models key that runs a `task` job asking for `model` (what its params.model_family says)."""
    if task == "generate":
        return GENERATE_FAMILIES.get(model, "generate")
    return {"tts": CHATTERBOX, "voice": RVC}.get(task, task)


def model_key(job: TierJob) -> str:
    """Which configured model runs `job`: a generate job's model_family picks among generate models."""
    return key_for(job.task, str(job.params.get("model_family") or ""))


def whisper_input(job: TierJob, audio: str | None, tier: str) -> dict[str, Any]:
    """openai/whisper: audio, language ("auto" or a code), transcription ("plain text"), ..."""
    params = job.params
    language = params.get("language") or "auto"
    if not isinstance(language, str):
        raise BadRequest(f"{tier}: params.language is {language!r}; expected 'auto' or a language code")
    return {
        "audio": _require_audio(audio, "transcribe", tier),
        "language": language,
        "transcription": "plain text",  # segments carry the timings
        **_options(params, WHISPER_OPTIONS),
    }


# Each builder takes the job, the audio input's URI (None without an input file) and the tier's
# name for messages, and returns the model's `input`.
INPUT_BUILDERS: dict[str, Callable[[TierJob, str | None, str], dict[str, Any]]] = {
    "stems": demucs_input,
    "generate": musicgen_input,
    STABLE_AUDIO: stable_audio_input,
    AUDIOGEN: audiogen_input,
    RIFFUSION: riffusion_input,
    "transcribe": whisper_input,
    CHATTERBOX: chatterbox_input,
    RVC: rvc_input,
}



# -- outputs per model --------------------------------------------------------------------------

# A reader gets the job, the prediction's `output`, `fetch(uri, stem)` (downloads one output URI into
# the job's folder as stem.<ext> and returns its path) and `bad(what)` (the error of a malformed
# output), and returns the job's output files and data.
Fetch = Callable[[Any, str], Path]
Bad = Callable[[str], Unavailable]
Outputs = tuple[dict[str, Path], dict[str, Any]]


def demucs_output(job: TierJob, output: Any, fetch: Fetch, bad: Bad) -> Outputs:
    """cjwbw/demucs: an object of stem -> URI; the stems the job asked for (all, when it named none)."""
    if not isinstance(output, dict):
        raise bad(f"Demucs output is {type(output).__name__}, expected an object of stem -> URI")
    wanted = set(job.params.get("stems") or []) or None
    outputs: dict[str, Path] = {}
    for stem, uri in output.items():
        # Stems the model does not make (guitar, piano for 4-stem models) come back null.
        if uri is None or (wanted is not None and stem not in wanted):
            continue
        outputs[stem] = fetch(uri, safe_name(stem, "stem"))
    missing = sorted((wanted or set()) - set(outputs))
    if missing:
        raise bad(f"Demucs returned no {missing}")
    if not outputs:
        raise bad("Demucs returned no stems")
    return outputs, {}


def one_audio(output: Any, fetch: Fetch, bad: Bad, model: str) -> Outputs:
    """An output schema of one URI string (an audio file) as {"audio": path}; anything else is malformed."""
    if not isinstance(output, str):
        raise bad(f"{model} output is {type(output).__name__}, expected a URI")
    return {"audio": fetch(output, "output")}, {}


def musicgen_output(job: TierJob, output: Any, fetch: Fetch, bad: Bad) -> Outputs:
    if isinstance(output, list) and len(output) == 1:
        output = output[0]  # some versions answer a one-item list
    return one_audio(output, fetch, bad, "MusicGen")


def riffusion_output(job: TierJob, output: Any, fetch: Fetch, bad: Bad) -> Outputs:
    # Its predictor's Output: {"audio": <wav>, "spectrogram": <jpg>}; only the audio is wanted.
    if not isinstance(output, dict) or not isinstance(output.get("audio"), str):
        raise bad(f"Riffusion output must be an object with an audio URI; got {type(output).__name__}")
    return one_audio(output["audio"], fetch, bad, "Riffusion")


def whisper_output(job: TierJob, output: Any, fetch: Fetch, bad: Bad) -> Outputs:
    """openai/whisper: the transcription (written to transcript.txt) and its timed segments."""
    if not isinstance(output, dict) or not isinstance(output.get("transcription"), str):
        raise bad("Whisper output must be an object with a transcription string")
    segments = output.get("segments") or []
    if not isinstance(segments, list):
        raise bad("Whisper segments must be a list")
    data = {
        "text": output["transcription"],
        "segments": [
            {"start": s.get("start"), "end": s.get("end"), "text": str(s.get("text", "")).strip()}
            for s in segments if isinstance(s, dict)
        ],
        "language": output.get("detected_language"),
        "translation": output.get("translation"),
    }
    text = output["transcription"]
    path = write_output(Path(job.work_dir) / "transcript.txt", text.encode("utf-8"))
    return {"transcript": path}, data


def _one_audio_reader(model: str) -> Callable[[TierJob, Any, Fetch, Bad], Outputs]:
    """The reader of a model whose documented output is one URI string (an audio file)."""

    def read(job: TierJob, output: Any, fetch: Fetch, bad: Bad) -> Outputs:
        return one_audio(output, fetch, bad, model)

    return read


OUTPUT_READERS: dict[str, Callable[[TierJob, Any, Fetch, Bad], Outputs]] = {
    "stems": demucs_output,
    "generate": musicgen_output,
    STABLE_AUDIO: _one_audio_reader("Stable Audio"),
    AUDIOGEN: _one_audio_reader("AudioGen"),
    RIFFUSION: riffusion_output,
    "transcribe": whisper_output,
    CHATTERBOX: _one_audio_reader("Chatterbox"),
    RVC: _one_audio_reader("RVC"),
}
