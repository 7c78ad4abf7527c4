"""Live stems at the models' own rate, 44.1 kHz, on a real audio server (JACK's dummy backend at
44.1 kHz): no resamplers, and every window ends on the models' 1024-frame grid, so at the end of a
device block. The stream then places its output the block's lead earlier (bridge/stream.py), and the
round trip is hop + lookahead + budget. The latency is found by the impulse method of
tests/bridge/test_stream.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.testing import passthrough_htdemucs_repo
from tests.bridge.test_stream import _best_lag, _play_noise_through, _stream_daemon
from tests.conftest import JackServer

JACK_RATE = 44100  # tests/conftest.py's jack_server runs at this


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return passthrough_htdemucs_repo(tmp_path_factory.mktemp("models"), threads=1)


def test_at_the_models_rate_the_signal_comes_out_hop_lookahead_and_budget_late(
    jack_server: JackServer, tiny_repo: Path
) -> None:
    # A budget set in config (40 ms: 7 whole 256-frame blocks), so the lead does not hang on how
    # fast this machine runs the model (a budget of one block takes none).
    daemon = _stream_daemon(jack_server, tiny_repo, sample_rate=JACK_RATE, budget_ms=40.0)
    try:
        status, rig, recorded, final = _play_noise_through(daemon, jack_server)
    finally:
        assert daemon.stop() == 0, daemon.log()
    block = status["block_size"]
    assert status["sample_rate"] == JACK_RATE and status["resampler_delay_frames"] == 0
    assert status["block_lead_frames"] == block - 1
    assert status["budget_frames"] == 7 * block
    hop = status["hop_frames"]
    lookahead = round(status["lookahead_seconds"] * JACK_RATE / 1024) * 1024
    # The bound (hop + lookahead + 1.3 x p99 + one block) with the budget in place of
    # 1.3 x p99, which it rounds up by less than a block: met with nothing over.
    assert status["round_trip_frames"] == hop + lookahead + status["budget_frames"]
    lag, corr = _best_lag(recorded[0], rig.signal[0], max_lag=status["round_trip_frames"] + 8192)
    assert lag == status["round_trip_frames"], (lag, corr, status["round_trip_frames"])
    assert corr > 0.8, (corr, final)
    assert final["hops"] > 0
