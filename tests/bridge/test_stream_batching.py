"""The daemon's side of batching (bridge/stream.py): which engines share a window batcher, and when.

The device stream's engine and the audio socket's sessions come from one `StreamManager`; with
`stream.batch_streams` on they join the same batcher whatever their device rate and channels (the
model sees the same window either way). Real engines on a small model; no audio device needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bridge.config import StreamConfig
from bridge.errors import Forbidden
from bridge.stream_manager import MAX_AUDIO_SESSIONS, AudioSessions, StreamManager
from bridge.testing import tiny_htdemucs_repo

SHORT = {"context_seconds": 0.1, "hop_seconds": 0.1, "lookahead_seconds": 0.1}


def test_the_device_stream_and_the_audio_sessions_share_one_batcher(tmp_path: Path) -> None:
    repo = tiny_htdemucs_repo(tmp_path / "repo", depth=3)
    base = StreamConfig(model="tiny", engine_device="cpu", threads=1, batch_streams="on", sample_rate=48000, **SHORT)
    manager = StreamManager(base, repo)
    sessions = AudioSessions(manager)
    try:
        assert sessions.concurrent and manager.batchers.max_streams == MAX_AUDIO_SESSIONS + 1
        device_engine = manager.engine_for(manager.settings_with({}))
        sessions.process(b"client", 0, 44100, np.zeros((1, 256), np.float32))  # another rate, mono
        batcher = device_engine._batcher
        assert batcher is not None and batcher.members == 2
        stats = sessions.stats(b"client")
        assert stats is not None and stats["batching"] and stats["batch_members"] == 2
        assert [b["members"] for b in manager.batchers.describe()] == [2]
    finally:
        sessions.close()
        manager.close()
    assert batcher.members == 0  # every engine left as it closed


@pytest.mark.parametrize(("value", "expected"), [("auto", False), ("on", True), ("off", False)])
def test_batching_is_on_for_cuda_only_unless_forced(value: str, expected: bool) -> None:
    manager = StreamManager(StreamConfig(engine_device="cpu", batch_streams=value), None)
    assert manager.batching_for(manager.base) is expected
    assert AudioSessions(manager).concurrent is expected


def test_auto_follows_the_device_the_engine_gets_and_an_absent_gpu_is_not_an_error_here() -> None:
    import torch

    manager = StreamManager(StreamConfig(engine_device="cuda", batch_streams="auto"), None)
    assert manager.batching_for(manager.base) is torch.cuda.is_available()  # the engine's load names a missing GPU


def test_the_gather_period_is_shared_so_not_an_override() -> None:
    manager = StreamManager(StreamConfig(), None)
    with pytest.raises(Forbidden, match="batch_gather_ms"):
        manager.settings_with({"batch_gather_ms": 50.0})
    assert manager.settings_with({"batch_streams": "off"}).batch_streams == "off"


def test_a_client_restarting_at_another_rate_closes_its_old_engine(tmp_path: Path) -> None:
    repo = tiny_htdemucs_repo(tmp_path / "repo", depth=3)
    manager = StreamManager(StreamConfig(model="tiny", engine_device="cpu", threads=1, batch_streams="on", **SHORT),
                            repo)
    sessions = AudioSessions(manager)
    try:
        sessions.process(b"client", 0, 48000, np.zeros((2, 256), np.float32))
        first = sessions._sessions[b"client"].engine
        sessions.process(b"client", 0, 44100, np.zeros((1, 256), np.float32))
        assert not first.loaded and sessions._sessions[b"client"].engine is not first
        assert [b["members"] for b in manager.batchers.describe()] == [1]  # the old engine left the batcher
    finally:
        sessions.close()
        manager.close()
