"""`flowstate doctor`: what works on this machine, in words a newcomer can act on.

Every check is independent and catches only the failures it can explain; none prints a secret.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge import __version__
from bridge.config import Config, StreamConfig
from bridge.errors import NotFound, Unavailable
from bridge.stream import (
    PortAudioHung,
    audio_host_lost,
    channel_span,
    import_sounddevice,
    loopback_feedback,
    missing_channels,
    rate_mismatch,
    sounddevice_in_time,
    stream_devices,
)
from engines import audio_tags, clap, embeddings, generation, openunmix, spleeter, stable_audio
from engines.inference import import_openvino
from engines.speech import VoiceLibrary
from engines.transcription import offline_source

OK, WARN, FAIL = "ok", "warn", "fail"
APT_HINT = (
    "sudo apt-get install -y --no-install-recommends jackd2 libportaudio2"
)
REINSTALL_HINT = {
    "darwin": "run scripts/install.sh again",
    "win32": "run scripts\\install.ps1 again",
    "linux": "run scripts/install.sh again (or `make run`)",
}

# PortAudio's host API names on each OS, lowest latency first, and rtmidi's API display names.
AUDIO_BACKENDS: dict[str, tuple[str, ...]] = {
    "darwin": ("Core Audio",),
    "win32": ("ASIO", "Windows WASAPI", "Windows WDM-KS", "Windows DirectSound", "MME"),
    "linux": ("JACK Audio Connection Kit", "ALSA"),
}
MIDI_BACKENDS: dict[str, tuple[str, ...]] = {
    "darwin": ("CoreMidi",),
    "win32": ("Windows MultiMedia",),
    "linux": ("ALSA", "Jack"),
}


@dataclass(frozen=True)
class Check:
    name: str
    state: str
    detail: str


def run_checks(config: Config, config_source: str) -> list[Check]:
    checks: list[Callable[[], Iterator[Check]]] = [
        lambda: _python(config_source),
        _torch,
        _openvino,
        _portaudio,
        lambda: _stream_device(config),
        _jack,
        _midi,
        lambda: _weights(config),
        lambda: _spleeter(config),
        lambda: _openunmix(config),
        lambda: _embeddings(config),
        lambda: _audio_tags(config),
        lambda: _clap(config),
        lambda: _nli(config),
        lambda: _generation(config),
        lambda: _stable_audio(config),
        lambda: _speech(config),
        lambda: _tokens(config),
        lambda: _ports(config),
    ]
    return [check for make in checks for check in make()]


def _python(config_source: str) -> Iterator[Check]:
    version = platform.python_version()
    state = OK if sys.version_info >= (3, 11) else FAIL
    yield Check("python", state, f"{version} ({sys.executable}); flowstate {__version__}")
    yield Check("config", OK, config_source)


def _torch() -> Iterator[Check]:
    try:
        import torch
    except ImportError as err:
        yield Check("torch", FAIL, f"not importable ({err}); {REINSTALL_HINT[os_name()]}")
        return
    devices = []
    if torch.cuda.is_available():
        devices.append(f"CUDA {torch.version.cuda}: {torch.cuda.get_device_name(0)}")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        # engines.base.conv_size_limit: MPS's convolutions before macOS 15.1.
        devices.append("MPS" if mps.is_macos_or_newer(15, 1) else
                       "MPS (before macOS 15.1: HTDemucs runs segments of at most 5.9 s there, live windows too)")
    if devices:
        yield Check("torch", OK, f"{torch.__version__}; " + ", ".join(devices))
    else:
        yield Check(
            "torch",
            OK,
            f"{torch.__version__}; CPU only ({torch.get_num_threads()} threads), no CUDA or MPS: "
            "live stems use CPU window sizes",
        )


def _openvino() -> Iterator[Check]:
    try:
        openvino = import_openvino()
    except ImportError as err:
        yield Check("openvino", WARN, f"not importable ({err}): live stems on a CPU run in torch, about half as "
                    "fast (a longer hop, more latency); it is one of the daemon's dependencies: run the install "
                    "script again")
        return
    version = str(openvino.__version__).split("-")[0]  # 2026.4.1-22982-<commit>-releases/...
    yield Check("openvino", OK, f"{version}: runs live stems' windows on a CPU where it measures faster "
                "(stream.backend auto)")


def os_name(platform: str = sys.platform) -> str:
    """darwin, win32 or linux (every other Unix is treated as Linux)."""
    return platform if platform in ("darwin", "win32") else "linux"


def audio_backend_check(platform: str, host_apis: list[str]) -> Check:
    """Which of the OS's audio back-ends PortAudio offers, and what to do about a missing one."""
    system = os_name(platform)
    have = [api for api in AUDIO_BACKENDS[system] if api in host_apis]
    listed = ", ".join(host_apis) or "none"
    if system == "darwin":
        if have:
            return Check("audio backend", OK, f"Core Audio (host APIs: {listed})")
        return Check("audio backend", FAIL, f"PortAudio has no Core Audio (host APIs: {listed}): reinstall "
                     "sounddevice (`pip install --force-reinstall sounddevice`), whose macOS wheel bundles PortAudio")
    if system == "win32":
        if "Windows WASAPI" not in have and "ASIO" not in have:
            return Check("audio backend", WARN, f"neither WASAPI nor ASIO (host APIs: {listed}): MME adds 50-100 ms; "
                         "reinstall sounddevice, whose Windows wheel bundles PortAudio with both")
        asio = "ASIO" if "ASIO" in have else (
            "no ASIO: for your interface's ASIO driver, set SD_ENABLE_ASIO=1 before `flowstate up` "
            "(sounddevice then loads the ASIO build of PortAudio its wheel ships)")
        return Check("audio backend", OK, f"WASAPI; {asio} (host APIs: {listed}; stream.device picks one by name)")
    if "JACK Audio Connection Kit" in have:
        return Check("audio backend", OK, f"JACK (host APIs: {listed})")
    if "ALSA" in have:
        return Check("audio backend", WARN, f"ALSA, no JACK (host APIs: {listed}): start a JACK server (or "
                     "PipeWire with its JACK layer) before the daemon for routing to your DAW; ALSA opens a "
                     "sound card directly")
    return Check("audio backend", FAIL, f"neither JACK nor ALSA (host APIs: {listed}): {APT_HINT}")


def midi_backend_check(platform: str, apis: list[str], alsa_sequencer: bool = True) -> Check:
    """Which of the OS's MIDI back-ends python-rtmidi was built with, and what to do about a missing one."""
    system = os_name(platform)
    have = [api for api in MIDI_BACKENDS[system] if api in apis]
    listed = ", ".join(apis) or "none"
    if not have:
        return Check("midi", FAIL, f"python-rtmidi has no {' or '.join(MIDI_BACKENDS[system])} (APIs: {listed}): "
                     "reinstall it (`pip install --force-reinstall python-rtmidi`)")
    if system == "darwin":
        return Check("midi", OK, f"CoreMIDI; the virtual input port appears in Live's MIDI settings (APIs: {listed})")
    if system == "win32":
        return Check("midi", OK, f"Windows MultiMedia (WinMM); it has no virtual ports: create one with loopMIDI "
                     f"and name it in midi.inputs (APIs: {listed})")
    if "ALSA" in have and not alsa_sequencer:
        return Check("midi", WARN, f"ALSA sequencer missing (no /dev/snd/seq: `sudo modprobe snd-seq`); JACK MIDI "
                     f"works with a JACK server running (midi.api: jack) (APIs: {listed})")
    return Check("midi", OK, f"{' and '.join(have)} (APIs: {listed})")


def _portaudio() -> Iterator[Check]:
    try:
        sounddevice = sounddevice_in_time()
    except OSError as err:
        hint = APT_HINT if os_name() == "linux" else "reinstall sounddevice (its wheel bundles PortAudio)"
        yield Check("portaudio", FAIL, f"library not found ({err}); {hint}")
        return
    except PortAudioHung as err:
        yield Check("portaudio", FAIL, err.message)
        return
    apis = sounddevice.query_hostapis()
    devices = sounddevice.query_devices()
    names = ", ".join(f"{api['name']} ({len(api['devices'])} devices)" for api in apis) or "none"
    state = OK if len(devices) else WARN
    start = "start JACK or plug in an interface" if os_name() == "linux" else "plug in an interface"
    hint = "" if len(devices) else f"; no audio devices: {start}"
    yield Check("portaudio", state, f"{sounddevice.get_portaudio_version()[1]}; host APIs: {names}{hint}")
    yield audio_backend_check(sys.platform, [api["name"] for api in apis])


def _stream_device(config: Config) -> Iterator[Check]:
    settings = config.stream
    if audio_host_lost() is not None:
        return  # PortAudio is still starting (the portaudio row says): importing sounddevice would wait on it
    try:
        sounddevice = import_sounddevice()
    except OSError:
        return  # the portaudio row says
    if not len(sounddevice.query_devices()):
        yield Check("stream device", WARN, "no audio device for live stems (the portaudio row says how to get one)")
        return
    try:
        heard, played = stream_devices(settings.devices)
    except Unavailable as err:
        yield Check("stream device", WARN, str(err))
        return
    yield stream_device_check(settings, heard, played)


def stream_device_check(settings: StreamConfig, heard: Mapping[str, Any], played: Mapping[str, Any]) -> Check:
    """The live stream's devices (`heard` and `played`: PortAudio's input and output device for
    stream.device and stream.output_device) against the channels the stream would read and write:
    the inputs and the mix's outputs (or the first stem's; the stems' outputs depend on the model);
    two devices against each other's rate."""
    for kind, info, first in (("input", heard, settings.first_input), ("output", played, settings.first_output)):
        problem = missing_channels(info, kind, first, settings.channels)
        if problem is not None:
            return Check("stream device", WARN, problem)
    feedback = loopback_feedback(str(heard["name"]), str(played["name"]), settings.first_input, settings.channels,
                                 settings.first_output, settings.channels)
    if feedback is not None:
        return Check("stream device", WARN, feedback)
    mismatch = rate_mismatch(heard, played)
    if mismatch is not None:
        return Check("stream device", WARN, mismatch)
    names = heard["name"] if heard["name"] == played["name"] else f"{heard['name']} in, {played['name']} out"
    writes = f"outputs {channel_span(settings.first_output, settings.channels)}"
    if settings.routing != "mix":
        writes = f"from output {settings.first_output} on ({settings.routing}: {settings.channels} per stem)"
    reads = f"inputs {channel_span(settings.first_input, settings.channels)}"
    return Check("stream device", OK, f"{names} ({heard['max_input_channels']} in, {played['max_output_channels']} "
                                      f"out): live stems read {reads} and write {writes}")


def _jack() -> Iterator[Check]:
    jack_lsp = shutil.which("jack_lsp")
    if jack_lsp is None:
        if os_name() == "linux":
            yield Check("jack", WARN, f"JACK tools not installed (tests need them): {APT_HINT}")
        else:
            yield Check("jack", OK, "not installed; not needed here (Core Audio, WASAPI or ASIO are used)")
        return
    env = {**os.environ, "JACK_NO_START_SERVER": "1"}
    try:
        done = subprocess.run([jack_lsp], capture_output=True, text=True, timeout=5, env=env, check=False)
    except subprocess.TimeoutExpired:
        yield Check("jack", WARN, "jack_lsp did not answer within 5 s")
        return
    if done.returncode == 0:
        ports = [line for line in done.stdout.splitlines() if line.strip()]
        yield Check("jack", OK, f"server running, {len(ports)} ports")
    else:
        yield Check("jack", WARN,
                    "installed, no server running (start one: jackd --no-realtime -d dummy -r 48000 -p 256)")


def _midi() -> Iterator[Check]:
    try:
        import rtmidi
    except ImportError as err:
        yield Check("midi", FAIL, f"python-rtmidi not importable: {err}")
        return
    apis = [rtmidi.get_api_display_name(api) for api in rtmidi.get_compiled_api()]
    yield midi_backend_check(sys.platform, apis, alsa_sequencer=Path("/dev/snd/seq").exists())


def _weights(config: Config) -> Iterator[Check]:
    """Where the HTDemucs models of `stream.model` and `separate.model` would load from, on disk only
    (`htdemucs_files_on_disk`: the local repo, else the hub's cache and demucs's legacy download)."""
    from engines.separation.models import htdemucs_files_on_disk

    repo = config.models.demucs_repo
    users: dict[str, list[str]] = {}  # each model once, with the settings that name it
    for key, name in (("stream.model", config.stream.model), ("separate.model", config.separate.model)):
        users.setdefault(name, []).append(key)
    for name, keys in users.items():
        if spleeter.is_spleeter(name) or openunmix.is_openunmix(name):
            continue  # their own rows below
        used = " and ".join(keys)
        try:
            found, places = htdemucs_files_on_disk(name, repo)
        except ImportError as err:  # demucs or huggingface_hub missing: the torch row says more
            yield Check("weights", FAIL, f"{name} ({used}): cannot look for it: {err}")
            continue
        if found:
            yield Check("weights", OK, f"{name} ({used}): " + ", ".join(str(path) for path in found))
        elif repo is not None:
            yield Check("weights", WARN, f"{name} ({used}): not in models.demucs_repo {repo} (wants {name}.yaml "
                        "and its <sig>.th checkpoints, demucs's local repo format); live stems and stem jobs "
                        "with it fail until they are there")
        else:
            yield Check("weights", WARN, f"{name} ({used}): not on this machine (looked in "
                        f"{' and '.join(places)}); `flowstate download` fetches it now (else the first live "
                        "stream or stem job with it does, when online), or set models.demucs_repo")


def _spleeter(config: Config) -> Iterator[Check]:
    """Where `spleeter:2stems` would load its weights from, checked on disk only."""
    for name in spleeter.MODELS:
        try:
            found = spleeter.find_checkpoints(name, config.models.spleeter_dir)
        except NotFound as err:
            yield Check("spleeter", WARN, err.message)
        else:
            yield Check("spleeter", OK, f"{name}: " + ", ".join(f"{stem} {path}" for stem, path in found.items()))


def _openunmix(config: Config) -> Iterator[Check]:
    """Where `openunmix:umxl` / `openunmix:umxhq` would load their weights from, on disk only (no
    download): a model with none is a warning, as its first job would try to download it."""
    for name in openunmix.MODELS:
        try:
            found = openunmix.find_weights(name, config.models.openunmix_dir, download=False)
        except NotFound as err:
            yield Check("openunmix", WARN, f"{err.message} (the first {name} job downloads it when online)")
        else:
            yield Check("openunmix", OK, f"{name}: " + ", ".join(f"{stem} {path}" for stem, path in found.items()))


def _embeddings(config: Config) -> Iterator[Check]:
    """Where `classify` and sample search would load their model from, checked on disk only."""
    settings = config.samples
    found = embeddings.available_source(settings.model, settings.model_dir)
    if found is not None:
        source, where = found
        yield Check("embeddings", OK, f"{settings.model}: from {source} {where}")
        return
    candidates = embeddings.candidate_sources(settings.model, settings.model_dir)
    tried = "; ".join(f"{source} {where}" for source, where in candidates)
    yield Check("embeddings", WARN, f"{settings.model} not found on this machine (looked at: {tried}); classify and "
                "samples.search download it on first use when online, else set samples.model_dir")


def _hub_model(name: str, key: str, model: str, use: str) -> tuple[str, str] | Check:
    """(where, model type) when a transformers model (`key`) is a folder or in the hub cache, checked on
    disk only (nothing is loaded); else the warning row `name` to show, saying who downloads it (`use`)."""
    found = audio_tags.available_source(model)
    if found is None:
        return Check(name, WARN, f"{model} not found on this machine (neither a folder nor in the hub cache); "
                     f"{use} downloads it on first use when online, else set {key} to a folder")
    return found


def _audio_tags(config: Config) -> Iterator[Check]:
    """Where `classify.audio` would load its AST from, checked on disk only (nothing is loaded)."""
    yield _checkpoint("classify.audio", "classify.audio_model", config.classify.audio_model, "classify.audio",
                      audio_tags.MODEL_TYPE, "AST")


def _clap(config: Config) -> Iterator[Check]:
    """Where sample search by sound would load its CLAP model from (when samples.clap is on), on disk only."""
    settings = config.samples
    if not settings.clap:
        yield Check("samples clap", OK, "off (samples.clap: false): samples.search matches words and descriptors")
        return
    yield _checkpoint("samples clap", "samples.clap_model", settings.clap_model, "samples.index", clap.MODEL_TYPE,
                      "CLAP", f" (weight {settings.clap_weight:g})")


def _checkpoint(name: str, key: str, model: str, use: str, model_type: str, family: str, note: str = "") -> Check:
    """A transformers checkpoint found on disk (a folder or the hub cache) and of the type `key` expects."""
    found = _hub_model(name, key, model, use)
    if isinstance(found, Check):
        return found
    where, found_type = found
    if found_type == model_type:
        return Check(name, OK, f"{model}: {where}{note}")
    article = "an" if model_type[:1] in "aeiou" else "a"
    return Check(name, FAIL, f"{model}: {where} holds a {found_type} model; {key} expects {article} {model_type} "
                 f"({family}) checkpoint")


def _nli(config: Config) -> Iterator[Check]:
    """Where `classify method=nli` would load its NLI model from, checked on disk only (nothing is loaded).
    A missing model warns only when NLI is classify's default method; otherwise only a request that
    names method=nli uses it, so the row says so and stays ok."""
    model = config.classify.nli_model.strip()
    found = _hub_model("classify nli", "classify.nli_model", model, "classify method=nli")
    if isinstance(found, Check) and config.classify.method != "nli":
        yield Check(found.name, OK, f"not used by default (classify.method is {config.classify.method}): "
                    f"{found.detail}")
        return
    if isinstance(found, Check):
        yield found
        return
    where, model_type = found
    yield Check("classify nli", OK, f"{model}: {where} ({model_type}; default method {config.classify.method})")


def _generation(config: Config) -> Iterator[Check]:
    """Where `generate` would load MusicGen from, checked on disk only (nothing is loaded)."""
    settings = config.generate
    if stable_audio.is_stable_audio(settings.model):  # the "stable audio open" row says where that comes from
        yield Check("musicgen", OK, f"not used: generate.model is {settings.model} (a request may still name one)")
        return
    found = generation.available_source(settings.model, settings.local_dir)
    if found is not None:
        kind, where, model_type = found
        state = OK if model_type in generation.MODEL_TYPES else FAIL
        hint = "" if state == OK else f"; expected a MusicGen checkpoint ({', '.join(generation.MODEL_TYPES)})"
        yield Check("musicgen", state, f"{settings.model}: {kind} {where} ({model_type}){hint}")
        return
    tried = "; ".join(f"{kind} {where}" for kind, where in generation.model_sources(settings.model, settings.local_dir))
    yield Check("musicgen", WARN, f"{settings.model} not found on this machine (looked at: {tried}; no pip package "
                "ships MusicGen); generate downloads it on first use when online, else set generate.local_dir "
                "to a folder saved with save_pretrained")


def _stable_audio(config: Config) -> Iterator[Check]:
    """Where `generate model=stable-audio-open` would load from, on disk only; missing weights warn
    only when generate.model is Stable Audio Open (otherwise it is an option, not a need)."""
    source = config.generate.stable_audio_model
    where = stable_audio.available_source(source)
    if where is not None:
        yield Check("stable audio open", OK, f"{source}: {where} (up to {stable_audio.max_seconds(where):.1f} s)")
        return
    state = WARN if stable_audio.is_stable_audio(config.generate.model) else OK
    yield Check("stable audio open", state, f"{source} not on this machine (optional: generate "
                "model=stable-audio-open); accept its licence on the hub and run once online, or set "
                "generate.stable_audio_model to a folder saved with save_pretrained")


def _speech(config: Config) -> Iterator[Check]:
    """Where `transcribe` and `tts` would load Whisper and the Piper voice from, on disk only."""
    whisper = config.transcribe
    where, checked = offline_source(whisper.model, whisper.local_dir, whisper.package_fallback)
    if where is not None and not checked:
        yield Check("whisper", OK, f"{whisper.model}: {where}")
    elif where is not None:  # a fallback: smaller, English-only, or not the model asked for
        yield Check("whisper", WARN, f"{whisper.model} not on this machine ({'; '.join(checked)}); offline, "
                    f"transcribe uses {where}; online, the first transcription downloads {whisper.model}")
    else:
        yield Check("whisper", WARN, f"{whisper.model} not found on this machine ({'; '.join(checked)}); a hub "
                    "name downloads on first use when online; else set transcribe.model or transcribe.local_dir "
                    "to a folder holding a CTranslate2 Whisper")
    tts = config.tts
    library = VoiceLibrary(tts.voices_dir, download=tts.download, package_fallback=tts.package_fallback)
    voice, checked = library.find_offline(tts.voice)
    if voice is not None and not checked:
        yield Check("piper voice", OK, f"{tts.voice}: {voice.description} ({voice.model.name})")
    elif voice is not None:
        later = "online, the first tts downloads it" if tts.download else "tts.download is false"
        yield Check("piper voice", WARN, f"{tts.voice} not on this machine ({'; '.join(checked)}); {later}; "
                    f"until then tts speaks with {voice.description} ({voice.model.name})")
    else:
        later = "tts downloads it on first use when online" if tts.download else "tts.download is false"
        yield Check("piper voice", WARN, f"{tts.voice} not found on this machine ({'; '.join(checked)}); {later}, "
                    f"else put it in {tts.voices_dir}")


def _tokens(config: Config) -> Iterator[Check]:
    status = config.token_status()
    set_names = [name for name, present in status.items() if present]
    unset = [name for name, present in status.items() if not present]
    detail = f"set: {', '.join(set_names) or 'none'}; not set: {', '.join(unset) or 'none'} (values never shown)"
    yield Check("cloud tokens", OK, detail)


def _ports(config: Config) -> Iterator[Check]:
    wanted = [
        ("osc.udp_port", config.osc.host, config.osc.udp_port, socket.SOCK_DGRAM),
        ("osc.tcp_port", config.osc.host, config.osc.tcp_port, socket.SOCK_STREAM),
        ("zmq.request_port", config.zmq.host, config.zmq.request_port, socket.SOCK_STREAM),
        ("zmq.event_port", config.zmq.host, config.zmq.event_port, socket.SOCK_STREAM),
        ("zmq.audio_port", config.zmq.host, config.zmq.audio_port, socket.SOCK_STREAM),
    ]
    busy = []
    for key, host, port, kind in wanted:
        if port == 0:
            continue
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                busy.append(f"{key}={port}")
    if busy:
        yield Check("ports", WARN, f"in use: {', '.join(busy)} (a running daemon? `flowstate status` tells)")
    else:
        yield Check("ports", OK, "free: " + ", ".join(f"{k}={p}" for k, _, p, _ in wanted))


def render(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    return "\n".join(f"  {c.state:<5} {c.name:<{width}}  {c.detail}" for c in checks)
