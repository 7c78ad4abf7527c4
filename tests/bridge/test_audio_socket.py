"""The ZeroMQ audio socket against a real daemon: every malformed or oversized request is answered.

A client sends a JSON header and a float32 payload over a real DEALER socket; whatever the header
holds (a sample rate the streaming resampler cannot hold, deep nesting, a 5000-digit integer, sizes
past the configured bounds), the reply is one `bad_request` error frame that names the problem, and
the daemon goes on answering `ping` and processing well-formed blocks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from bridge.client import Client
from bridge.testing import DaemonProcess, tiny_htdemucs_repo

HEADER_BYTES = 8192  # zmq.audio_max_header_bytes for this daemon: room for deep JSON and big integers
BLOCK_FRAMES = 4096  # zmq.audio_max_block_frames for this daemon


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    repo = tiny_htdemucs_repo(tmp_path_factory.mktemp("models"))
    process = DaemonProcess(overrides={
        "models": {"demucs_repo": str(repo)},
        "stream": {"model": "tiny", "engine_device": "cpu", "threads": 1, "hop_seconds": 0.25},
        "zmq": {"audio_max_header_bytes": HEADER_BYTES, "audio_max_block_frames": BLOCK_FRAMES},
    }).start(timeout_seconds=60)  # a loaded machine can take longer than the default 20 s
    try:
        yield process
    finally:
        assert process.stop() == 0, process.log()


@pytest.fixture
def audio(daemon: DaemonProcess) -> Iterator[zmq.Socket]:
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(daemon.zmq_audio)
    try:
        yield sock
    finally:
        context.destroy(linger=0)


def exchange(sock: zmq.Socket, *frames: bytes) -> list[bytes]:
    sock.send_multipart(list(frames))
    assert sock.poll(60000), "no reply from the audio socket"
    return sock.recv_multipart()


def error_of(reply: list[bytes]) -> dict[str, Any]:
    assert len(reply) == 1, f"expected one error frame, got {len(reply)} frames"
    return json.loads(reply[0])["error"]


def header(**fields: Any) -> bytes:
    return json.dumps({"seq": 0, "channels": 2, "sample_rate": 48000, **fields}).encode()


SILENCE = np.zeros((2, 256), np.float32).tobytes()


def assert_still_serving(daemon: DaemonProcess, sock: zmq.Socket) -> None:
    """The daemon answers ping on the request socket and separates a well-formed block."""
    with Client(daemon.zmq_requests, timeout_seconds=30) as client:
        assert client.call("ping")["reply"] == "pong"
    reply = exchange(sock, header(), SILENCE)
    info = json.loads(reply[0])
    assert "error" not in info, info
    assert info["seq"] == 0 and info["stems"] == ["drums", "bass", "other", "vocals"]
    assert len(reply[1]) == 4 * 2 * 256 * 4


def test_a_rate_coprime_with_the_model_rate_is_refused_naming_it(daemon: DaemonProcess, audio: zmq.Socket) -> None:
    # 44101 Hz would have made the streaming resampler a 44100 x 44135 matrix (14.5 GiB).
    error = error_of(exchange(audio, header(sample_rate=44101), SILENCE))
    assert error["code"] == "bad_request"
    assert "44101" in error["message"] and "48000" in error["message"]
    assert "stream.max_ratio_terms" in error["message"]
    assert_still_serving(daemon, audio)
    assert "44101" in daemon.log()


DEEP = ("[" * 4000 + "]" * 4000).encode()


@pytest.mark.parametrize(
    ("frames", "expected"),
    [
        pytest.param([b'{"seq": ' + DEEP + b', "channels": 2, "sample_rate": 48000}', SILENCE], "nested too deeply",
                     id="deep-json"),
        pytest.param([b'{"seq": ' + b"9" * 5000 + b', "channels": 2, "sample_rate": 48000}', SILENCE],
                     "number is too large", id="5000-digit-int"),
        pytest.param([header(seq=2**64), SILENCE], "header 'seq'", id="seq-past-int64"),
        pytest.param([header(seq="x" * 3000), SILENCE], "3002 characters", id="seq-long-string"),
        pytest.param([header(channels=2.0), SILENCE], "header 'channels'", id="float-channels"),
        pytest.param([header(sample_rate=10**6), SILENCE], "[8000, 192000]", id="rate-too-high"),
        pytest.param([b" " * (HEADER_BYTES + 1), SILENCE], "zmq.audio_max_header_bytes", id="header-too-big"),
        pytest.param([header(), np.zeros((2, BLOCK_FRAMES + 1), np.float32).tobytes()],
                     "zmq.audio_max_block_frames", id="block-too-long"),
    ],
)
def test_malformed_and_oversized_requests_get_bad_request(
    daemon: DaemonProcess, audio: zmq.Socket, frames: list[bytes], expected: str
) -> None:
    error = error_of(exchange(audio, *frames))
    assert error["code"] == "bad_request", error
    assert expected in error["message"]
    assert len(error["message"]) < 1000  # a long value is cut short, not echoed
    assert_still_serving(daemon, audio)


@pytest.mark.timeout(300)
def test_spleeter_on_the_audio_socket_matches_the_engine_in_process() -> None:
    """stream.model spleeter:2stems: each block's vocals and accompaniment, as the engine gives them."""
    from engines.separation.streaming import StreamingSeparator

    settings = {"model": "spleeter:2stems", "engine_device": "cpu", "threads": 1, "hop_seconds": 0.25}
    signal = (0.3 * np.random.default_rng(4).standard_normal((2, 48000))).astype(np.float32)
    streamed = []
    with DaemonProcess(overrides={"stream": settings}).start(timeout_seconds=60) as process:
        context = zmq.Context()
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(process.zmq_audio)
        try:
            for seq, start in enumerate(range(0, signal.shape[1], BLOCK_FRAMES)):
                block = np.ascontiguousarray(signal[:, start:start + BLOCK_FRAMES])
                reply = exchange(sock, header(seq=seq), block.tobytes())
                info = json.loads(reply[0])
                assert info["stems"] == ["vocals", "accompaniment"], info
                streamed.append(np.frombuffer(reply[1], dtype="<f4").reshape(2, 2, block.shape[1]))
        finally:
            context.destroy(linger=0)
    engine = StreamingSeparator("spleeter:2stems", device="cpu", sample_rate=48000, hop_seconds=0.25)
    engine.load()
    try:
        np.testing.assert_allclose(np.concatenate(streamed, axis=2), engine.process(signal), atol=1e-4)
    finally:
        engine.close()


@pytest.mark.timeout(300)
def test_two_clients_batched_get_what_the_engine_gives_each_alone(tmp_path: Path) -> None:
    """stream.batch_streams on (forced, on a CPU): two clients streaming at once share forwards, and
    each gets the stems the in-process engine gives its audio alone (max abs difference <= 1e-5)."""
    import threading

    from engines.separation.streaming import StreamingSeparator

    repo = tiny_htdemucs_repo(tmp_path / "models", depth=3)
    setting = {"context_seconds": 0.1, "hop_seconds": 0.25, "lookahead_seconds": 0.1}
    signals = [(0.1 * np.random.default_rng(seed).standard_normal((2, 96000))).astype(np.float32) for seed in (5, 6)]
    first = 2048  # seq 0 opens each client's session before either streams, so that both stream together
    streamed: list[list[np.ndarray]] = [[], []]
    errors: list[BaseException] = []
    overrides = {"models": {"demucs_repo": str(repo)},
                 "stream": {"model": "tiny", "engine_device": "cpu", "threads": 1, **setting,
                            "batch_streams": "on", "batch_gather_ms": 100.0}}
    with DaemonProcess(overrides=overrides).start(timeout_seconds=60) as process:
        context = zmq.Context()
        socks = []
        try:
            for index in range(2):
                sock = context.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(process.zmq_audio)
                socks.append(sock)
                reply = exchange(sock, header(seq=0), np.ascontiguousarray(signals[index][:, :first]).tobytes())
                assert "error" not in json.loads(reply[0]), reply[0]
                streamed[index].append(np.frombuffer(reply[1], dtype="<f4").reshape(4, 2, first))

            def client(index: int) -> None:
                try:
                    signal = signals[index]
                    for seq, start in enumerate(range(first, signal.shape[1], BLOCK_FRAMES), start=1):
                        block = np.ascontiguousarray(signal[:, start:start + BLOCK_FRAMES])
                        reply = exchange(socks[index], header(seq=seq), block.tobytes())
                        assert "error" not in json.loads(reply[0]), reply[0]
                        streamed[index].append(np.frombuffer(reply[1], dtype="<f4").reshape(4, 2, block.shape[1]))
                except BaseException as err:  # noqa: BLE001 - reported in the test's thread
                    errors.append(err)

            threads = [threading.Thread(target=client, args=(i,), name=f"client-{i}") for i in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=240)
            assert not any(t.is_alive() for t in threads), "a client got no reply"
            if errors:
                raise errors[0]
            with Client(process.zmq_requests, timeout_seconds=30) as requests:
                batchers = requests.call("stream.status")["batchers"]
        finally:
            context.destroy(linger=0)
        assert process.stop() == 0, process.log()  # the socket's worker threads end with the daemon
    assert len(batchers) == 1 and batchers[0]["members"] == 2, batchers  # both clients, one batcher
    assert any(size >= 2 for size in map(int, batchers[0]["sizes"])), batchers  # hops went through together
    engine = StreamingSeparator("tiny", repo=repo, device="cpu", sample_rate=48000, threads=1, **setting)
    engine.load()
    try:
        for index, signal in enumerate(signals):
            engine.reset()
            alone = engine.process(signal)
            got = np.concatenate(streamed[index], axis=2)
            assert got.shape == alone.shape
            assert float(np.abs(got - alone).max()) <= 1e-5
    finally:
        engine.close()
