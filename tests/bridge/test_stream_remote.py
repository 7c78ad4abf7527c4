"""Live stems from the self-hosted tier: a real `flowstate serve` on loopback runs the windows of a
real daemon's stream on JACK's dummy server (`stream.tier: selfhosted`), over its `/v1/stream`
WebSocket. The latency is verified by the impulse method of tests/bridge/test_stream.py."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from websockets.sync.client import connect

from bridge.client import Client, RemoteError
from bridge.config import RouterConfig, StreamConfig
from bridge.errors import Unavailable
from bridge.job_store import JobStore
from bridge.ledger import Ledger
from bridge.router import Router
from bridge.stream import budget_frames_for
from bridge.stream_manager import StreamManager
from bridge.testing import DaemonProcess, passthrough_htdemucs_repo
from engines.cloud.selfhosted_stream import RemoteStreamingSeparator, stream_url
from engines.separation.streaming import StreamingSeparator
from tests.bridge.test_server import TOKEN, ServerProcess
from tests.bridge.test_stream import SAMPLE_RATE, Rig, _best_lag, _noise, _tail_after
from tests.conftest import Events, JackServer

# The hop is set, not left to the load-time ladder: a restarted server must take the same one (the
# stream reconnects only to the latency it reported).
# A fixed budget: the round trip these tests measure is the one the stream started with (growth
# while running is tests/bridge/test_stream.py's).
# A rate of its own: tests that build engines without a device cannot take the device's (auto).
STREAM = {"model": "passthrough", "engine_device": "cpu", "threads": 1, "hop_seconds": 0.5, "budget_grow": False,
          "sample_rate": 48000}
HELLO = {"version": 1, "model": "passthrough", "sample_rate": SAMPLE_RATE, "channels": 2}


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Stems that add up to the input: the known signal comes out of the mix.
    return passthrough_htdemucs_repo(tmp_path_factory.mktemp("models"), threads=1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_repo: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("server"), tiny_repo,
                            settings={"stream": STREAM, "server": {"tasks": ["stems"]}}).start()
    try:
        yield process
    finally:
        assert process.stop() == 0, process.log()


@pytest.fixture(scope="module")
def live(jack_server: JackServer, tiny_repo: Path, server: ServerProcess) -> Iterator[DaemonProcess]:
    process = DaemonProcess(
        overrides={"models": {"demucs_repo": str(tiny_repo)}, "stream": {**STREAM, "block_size": 256},
                   "cloud": {"selfhosted_url": server.url}},
        env={**jack_server.env, "FLOWSTATE_SERVER_TOKEN": TOKEN},
    ).start()
    try:
        yield process
    finally:
        assert process.stop() == 0, process.log()


def test_a_stream_on_the_server_arrives_with_the_reported_latency_round_trip_included(
        live: DaemonProcess, jack_server: JackServer, server: ServerProcess) -> None:
    with Client(live.zmq_requests, timeout_seconds=120) as client:
        status = client.call("stream.start", {"tier": "selfhosted"})
        rig = Rig(jack_server, _noise(3.0))
        recorded = rig.record(tail_seconds=_tail_after(status))
        final = client.call("stream.status")
        client.call("stream.stop")
    assert status["tier"] == "selfhosted" and status["tier_reason"] == "stream.tier is selfhosted"
    assert status["link"]["url"] == stream_url(server.url) and status["link"]["connected"] is True
    assert status["stems"] == ["drums", "bass", "other", "vocals"]
    # The budget is made from the waits for a window's output timed over the network at connect:
    # the round trip is inside the latency the DAW is told to compensate.
    p99_ms = status["compute_ms_p99_at_load"]
    assert status["budget_frames"] == budget_frames_for(p99_ms, status["budget_margin"], SAMPLE_RATE, 256)
    assert status["latency_frames"] == status["engine_latency_frames"] + status["budget_frames"]
    latency = status["round_trip_frames"]
    lag, corr = _best_lag(recorded[0], rig.signal[0], max_lag=latency + 8192)
    assert lag == latency, f"measured {lag} frames, reported {latency} (corr {corr:.3f})"
    assert corr > 0.8, (corr, final)
    assert final["hops"] > 0 and final["link_losses"] == 0, final  # windows came back from the server


def test_the_stems_from_the_server_are_the_local_engines_exactly(server: ServerProcess, tiny_repo: Path) -> None:
    remote = RemoteStreamingSeparator(server.url, TOKEN, {"model": "passthrough", "sample_rate": SAMPLE_RATE,
                                                          "channels": 2})
    try:
        remote.load()
        remote.reset()
        signal_in = _noise(2.0, seed=5)
        outputs, start = [], 0
        while start < signal_in.shape[1]:  # as a live stream feeds it: up to the frame that waits
            n = min(256, remote.input_frames_to_window())
            outputs.append(remote.process(signal_in[:, start:start + n]))
            start += n
    finally:
        remote.close()
    local = StreamingSeparator("passthrough", repo=tiny_repo, device="cpu", sample_rate=SAMPLE_RATE, channels=2,
                               hop_seconds=remote.hop_seconds, threads=1)
    assert local.latency_frames == remote.latency_frames
    np.testing.assert_allclose(np.concatenate(outputs, axis=2), local.process(signal_in), atol=1e-5)


@pytest.mark.parametrize("token", [None, "not-the-token"])
def test_a_stream_without_the_token_is_refused(server: ServerProcess, token: str | None) -> None:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    with pytest.raises(Exception) as refused:
        connect(stream_url(server.url), additional_headers=headers, proxy=None, open_timeout=10)
    response = refused.value.response  # type: ignore[attr-defined]
    assert response.status_code == 401
    assert json.loads(response.body)["error"]["code"] == "forbidden"
    # The daemon's client says so in words.
    with pytest.raises(Unavailable) as caught:
        RemoteStreamingSeparator(server.url, token or "x", {"model": "passthrough", "sample_rate": SAMPLE_RATE,
                                                            "channels": 2}).load()
    assert "refused with HTTP 401" in caught.value.message and "token" in caught.value.message


def test_malformed_frames_get_errors_naming_them_and_the_server_serves_on(server: ServerProcess) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with connect(stream_url(server.url), additional_headers=auth, proxy=None, open_timeout=10, max_size=None) as ws:
        ws.send(json.dumps(HELLO))
        welcome = json.loads(ws.recv(timeout=120))
        assert welcome["stems"] == ["drums", "bass", "other", "vocals"] and welcome["latency_frames"] > 0
        ws.send(json.dumps({"seq": 0, "channels": 2, "sample_rate": SAMPLE_RATE}))
        ws.send("not samples")
        assert "binary" in json.loads(ws.recv(timeout=30))["error"]["message"]
        ws.send(json.dumps({"seq": 0, "channels": 3, "sample_rate": SAMPLE_RATE}))
        ws.send(b"\0" * 24)
        error = json.loads(ws.recv(timeout=30))
        assert error["seq"] == 0 and "'channels' expected 1 or 2, got 3" in error["error"]["message"]
        ws.send(json.dumps({"seq": 7, "channels": 2, "sample_rate": SAMPLE_RATE}))
        ws.send(b"\0" * 8)
        assert "expected seq 0" in json.loads(ws.recv(timeout=30))["error"]["message"]
        # The same connection goes on once it starts properly.
        ws.send(json.dumps({"seq": 0, "channels": 2, "sample_rate": SAMPLE_RATE}))
        ws.send(np.zeros((2, 256), "<f4").tobytes())
        reply = json.loads(ws.recv(timeout=30))
        assert reply["seq"] == 0 and reply["frames"] >= 256 and len(ws.recv(timeout=30)) == 4 * 4 * 2 * reply["frames"]
    # A first message that is not a stream's settings: an error frame, then a close naming it.
    with connect(stream_url(server.url), additional_headers=auth, proxy=None, open_timeout=10, max_size=None) as ws:
        ws.send(json.dumps({**HELLO, "version": 99}))
        assert "version 99 is not served" in json.loads(ws.recv(timeout=30))["error"]["message"]
    # Another client is served meanwhile, and after.
    remote = RemoteStreamingSeparator(server.url, TOKEN, {"model": "passthrough", "sample_rate": SAMPLE_RATE,
                                                          "channels": 2})
    try:
        remote.load()
        assert remote.process(np.zeros((2, 64), np.float32)).shape == (4, 2, 64)
    finally:
        remote.close()


def test_tier_auto_runs_on_the_server_only_when_the_local_load_is_over_its_limit(live: DaemonProcess) -> None:
    with Client(live.zmq_requests, timeout_seconds=120) as client:
        over = client.call("stream.start", {"tier": "auto", "overrides": {"max_local_load": 0.001}})
        client.call("stream.stop")
        within = client.call("stream.start", {"tier": "auto", "overrides": {"max_local_load": 100.0}})
        client.call("stream.stop")
        with pytest.raises(RemoteError) as wrong:
            client.call("stream.start", {"tier": "gpu"})
    assert over["tier"] == "selfhosted" and "is over stream.max_local_load 0.001" in over["tier_reason"]
    assert within["tier"] == "local" and "is within stream.max_local_load 100" in within["tier_reason"]
    assert wrong.value.code == "bad_request" and "tier" in wrong.value.message and "selfhosted" in wrong.value.message


def test_tier_auto_counts_the_compute_the_last_run_of_the_setting_measured(
        server: ServerProcess, tiny_repo: Path, tmp_path: Path) -> None:
    # The tiny model's windows timed at load are quick (load ~0.01 at its 0.5 s hop), so auto runs
    # here. A run that measured them slow (a busy machine: stream.stop keeps its live p99 in the job
    # database) sends the next auto start, in a restarted daemon too, to the server, saying why.
    settings = StreamConfig(**STREAM, tier="auto", max_local_load=0.5)

    def daemon_streams(store: JobStore) -> StreamManager:
        """What a daemon on this job database wires up: its stream manager, ledger and router."""
        manager = StreamManager(StreamConfig(**STREAM), tiny_repo, selfhosted=(server.url, TOKEN))
        manager.ledger = Ledger(store.database)
        manager.route = Router(RouterConfig(), {"selfhosted"}, manager.ledger, "cpu").stream_tier
        return manager

    store, restarted_store = JobStore(tmp_path / "jobs.db"), JobStore(tmp_path / "jobs.db")
    manager, restarted = daemon_streams(store), daemon_streams(restarted_store)
    remote = None
    try:
        local, reason = manager.engine_on_tier(settings)
        assert isinstance(local, StreamingSeparator), reason
        assert "(p99 compute / hop, timed at load) is within stream.max_local_load 0.5" in reason
        manager.keep_compute(manager.timing_key(settings, local), 400.0, 234)  # what stop keeps of a slow run
        remote, reason = restarted.engine_on_tier(settings)
        assert isinstance(remote, RemoteStreamingSeparator), reason
        load = 400.0 / (1000.0 * local.hop_seconds)  # 0.78 at the 0.51 s hop (whole 1024-sample blocks)
        assert reason == (f"local load {load:.2f} (p99 compute / hop, of the last run's 234 hops) is over "
                          "stream.max_local_load 0.5: the self-hosted tier")
    finally:
        if remote is not None:
            remote.close()
        manager.close()
        restarted.close()
        store.close()
        restarted_store.close()


def test_selfhosted_without_a_configured_server_names_the_config_key(tiny_repo: Path) -> None:
    manager = StreamManager(StreamConfig(**STREAM), tiny_repo)
    with pytest.raises(Unavailable) as caught:
        manager.start({"tier": "selfhosted"})
    assert "cloud.selfhosted_url" in caught.value.message


def test_a_server_killed_mid_stream_leaves_the_dry_signal_an_event_and_a_reconnect(
        live: DaemonProcess, jack_server: JackServer, server: ServerProcess) -> None:
    events = Events(live.zmq_events, b"stream.")
    noise = (0.3 * np.random.default_rng(7).standard_normal((2, 5 * SAMPLE_RATE))).astype(np.float32)
    rig = Rig(jack_server, noise)
    killed = threading.Event()

    def kill_when_playing() -> None:  # a second into the signal, the server dies without a goodbye
        while rig.position < SAMPLE_RATE and not killed.is_set():
            time.sleep(0.01)
        server.stop(signal.SIGKILL)
        killed.set()

    with Client(live.zmq_requests, timeout_seconds=120) as client:
        status = client.call("stream.start", {"tier": "selfhosted"})
        killer = threading.Thread(target=kill_when_playing)
        killer.start()
        try:
            recorded = rig.record(tail_seconds=1.0)
        finally:
            killed.set()
            killer.join()
        error = events.wait_for("stream.error", 30)
        lost = client.call("stream.status")
        server.start()  # the same port: the stream connects again by itself
        events.wait_for("stream.reconnected", 60)
        back = client.call("stream.status")
        stopped = client.call("stream.stop")
    events.close()
    assert error["tier"] == "selfhosted" and error["code"] == "unavailable"
    assert lost["running"] is True and lost["link_losses"] >= 1 and lost["link_error"], lost
    assert back["link_error"] is None and back["link"]["reconnects"] >= 1, back
    assert stopped["running"] is False
    # After the kill the output is the dry input at the same latency: it never drops out.
    latency = status["round_trip_frames"]
    after = recorded[0, latency + 2 * SAMPLE_RATE: latency + noise.shape[1] - 1024]
    blocks = after[: after.shape[0] // 256 * 256].reshape(-1, 256)
    assert blocks.shape[0] > 10 and np.sqrt((blocks**2).mean(axis=1)).min() > 0.1, "the output fell silent"
    lag, corr = _best_lag(recorded[0, 2 * SAMPLE_RATE:], noise[0, 2 * SAMPLE_RATE: 3 * SAMPLE_RATE],
                          max_lag=latency + 2048)
    assert lag == latency and corr > 0.99, (lag, latency, corr)
