"""Fixtures for the DAW integrations: a real daemon with a tiny HTDemucs, on JACK's dummy backend.

One daemon serves both file jobs (`stems.separate`) and the live stream (`stream.start` opens a
real PortAudio stream on the dummy JACK server), so the REAPER scripts and the Max device are
exercised against the same real parts a user's machine runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile

from bridge.testing import DaemonProcess, tiny_htdemucs_repo
from tests.conftest import JackServer

STEMS = ["drums", "bass", "other", "vocals"]


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_htdemucs_repo(tmp_path_factory.mktemp("models"), depth=3)


@pytest.fixture(scope="module")
def stems_daemon(jack_server: JackServer, tiny_repo: Path) -> Iterator[DaemonProcess]:
    """`flowstate up` with the tiny model for files and for the live stream, on JACK."""
    engine = {"model": "tiny", "engine_device": "cpu", "threads": 1}
    process = DaemonProcess(
        overrides={
            "models": {"demucs_repo": str(tiny_repo)},
            "separate": engine,
            # A fixed budget: these tests read the round trip once, as REAPER's scripts do.
            "stream": {**engine, "block_size": 256, "budget_grow": False},
        },
        env=jack_server.env,
    ).start()
    try:
        yield process
    finally:
        assert process.stop() == 0, process.log()


def write_song(path: Path, seconds: float, sample_rate: int = 44100) -> Path:
    """A short stereo WAV (a tone plus noise) where the daemon may read it."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    mono = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.shape[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), np.stack([mono, 0.8 * mono], axis=1).astype(np.float32), sample_rate)
    return path
