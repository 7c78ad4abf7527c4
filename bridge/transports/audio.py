"""The ZeroMQ audio socket: float32 blocks in, stems out, for DAW-side code that cannot open a device.

The frames are the project's one audio framing (engines/audio_frames.py), one ZeroMQ frame each:

Request (two frames):  {"seq": n, "channels": c, "sample_rate": sr}   +  float32 (c, frames), planar
Reply   (two frames):  {"seq": n, "frames": f, "channels": c, "stems": [...], "latency_frames": L,
                        "sample_rate": sr}                             +  float32 (stems, c, frames)
Error   (one frame):   {"seq": n, "error": {"code": ..., "message": ...}}

Each client (ROUTER identity) gets its own streaming state; `seq` 0 starts (or restarts) it and
each later block must carry the next number, so a lost or reordered block is an error, not a glitch.
The socket lives on its own thread: model work never runs on the daemon's event loop. When the
sessions batch (`sessions.concurrent`: `stream.batch_streams`), each client's blocks are answered on
one of `max_sessions` worker threads, so that several clients' windows can go through one forward
(engines/batching.py); a client stays on one worker while it has a block in flight, so its blocks
are answered in order. Otherwise the socket thread answers every block itself, one at a time (on a
CPU, two clients' forwards at once would only fight over the cores).

Everything a request controls is bounded before any work: the header's size
(`zmq.audio_max_header_bytes`, which also bounds its JSON nesting and the digits of its numbers),
`seq` (0 .. 2**63 - 1), `channels` (1 or 2), `sample_rate` (8000 .. 192000 Hz and a ratio to the
model's 44.1 kHz the streaming resampler can hold: `stream.max_ratio_terms`), the frames of one
block (`zmq.audio_max_block_frames`) and the whole message (`max_message_bytes`; a single frame
larger than that is dropped by libzmq with the connection, before it is buffered). Anything else
malformed is answered with a `bad_request` error frame naming the problem; `internal` is only for
bugs.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

import zmq

from bridge.errors import BridgeError, Internal
from engines.audio_frames import FrameLimits, RequestError, error_frame, parse_request, reply_frames

log = logging.getLogger(__name__)

POLL_MS = 100


class AudioServer:
    """A ROUTER socket on its own thread; `sessions` does the audio work (bridge.stream)."""

    def __init__(self, host: str, port: int, max_message_bytes: int, sessions: Any, *,
                 max_header_bytes: int = 1024, max_block_frames: int = 65536) -> None:
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self.max_header_bytes = max_header_bytes
        self.max_block_frames = max_block_frames
        self.limits = FrameLimits(max_message_bytes, max_header_bytes, max_block_frames,
                                  message_key="16 x zmq.max_message_bytes", header_key="zmq.audio_max_header_bytes",
                                  block_key="zmq.audio_max_block_frames")
        self.sessions = sessions
        self._context = zmq.Context()
        self._socket: zmq.Socket | None = None
        self._thread: threading.Thread | None = None
        self._running = False
        # Concurrent answers (decided at the first block: asking the sessions imports torch, which
        # the daemon's start does not wait for): worker threads, their queues, the replies they push.
        self._concurrent: bool | None = None
        self._workers: list[threading.Thread] = []
        self._queues: list[queue.SimpleQueue[tuple[bytes, list[bytes]] | None]] = []
        self._replies: zmq.Socket | None = None
        self._replies_endpoint = f"inproc://audio-replies-{id(self)}"
        self._assigned: dict[bytes, int] = {}  # client -> worker, while it has blocks in flight
        self._in_flight: dict[bytes, int] = {}
        self._worker_load: list[int] = []

    def bind(self) -> int:
        sock = self._context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        # libzmq refuses (and disconnects) a frame over this before buffering it: the only bound
        # on what one peer can make the daemon hold before the checks below can answer.
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
        try:
            if self.port == 0:
                self.port = sock.bind_to_random_port(f"tcp://{self.host}")
            else:
                sock.bind(f"tcp://{self.host}:{self.port}")
        except zmq.ZMQError:
            sock.close()
            raise
        self._socket = sock
        self._running = True
        self._thread = threading.Thread(target=self._serve, name="zmq-audio", daemon=True)
        self._thread.start()
        return self.port

    def _start_workers(self, count: int) -> None:
        replies = self._context.socket(zmq.PULL)
        replies.setsockopt(zmq.LINGER, 0)
        replies.bind(self._replies_endpoint)  # before any worker connects to it
        self._replies = replies
        self._worker_load = [0] * count
        for index in range(count):
            jobs: queue.SimpleQueue[tuple[bytes, list[bytes]] | None] = queue.SimpleQueue()
            self._queues.append(jobs)
            worker = threading.Thread(target=self._work, args=(jobs,), name=f"zmq-audio-{index}", daemon=True)
            self._workers.append(worker)
            worker.start()

    def endpoint(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    def close(self) -> None:
        self._running = False
        if self._thread is not None:
            self._thread.join(timeout=5)
        # The workers finish the block in hand (its reply goes to the still-open reply socket, unread).
        for jobs in self._queues:
            jobs.put(None)
        for worker in self._workers:
            worker.join(timeout=30)
        if self._replies is not None:
            self._replies.close(linger=0)
        self.sessions.close()
        self._context.term()

    def _serve(self) -> None:
        sock = self._socket
        if sock is None:
            raise RuntimeError("AudioServer._serve runs only after bind()")
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        try:
            while self._running:
                ready = dict(poller.poll(POLL_MS))
                if self._replies is not None and self._replies in ready:
                    self._send_replies(sock, self._replies)
                if sock in ready:
                    frames = sock.recv_multipart()
                    identity, body = frames[0], frames[1:]
                    if self._concurrent is None:
                        self._concurrent = bool(getattr(self.sessions, "concurrent", False))
                        if self._concurrent:
                            self._start_workers(int(getattr(self.sessions, "max_sessions", 4)))
                            poller.register(self._replies, zmq.POLLIN)
                    if self._replies is None:
                        sock.send_multipart([identity, *self._answer(identity, body)])
                    else:
                        self._dispatch(identity, body)
        finally:
            sock.close(linger=0)

    def _dispatch(self, identity: bytes, body: list[bytes]) -> None:
        """Queue a block for the worker its client is on, or the least busy one (socket thread only)."""
        index = self._assigned.get(identity)
        if index is None:
            index = min(range(len(self._worker_load)), key=self._worker_load.__getitem__)
            self._assigned[identity] = index
        self._in_flight[identity] = self._in_flight.get(identity, 0) + 1
        self._worker_load[index] += 1
        self._queues[index].put((identity, body))

    def _send_replies(self, sock: zmq.Socket, replies: zmq.Socket) -> None:
        """Forward every reply the workers have pushed (socket thread only: a zmq socket has one owner)."""
        while True:
            try:
                frames = replies.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            identity = frames[0]
            self._worker_load[self._assigned[identity]] -= 1
            self._in_flight[identity] -= 1
            if not self._in_flight[identity]:  # nothing in flight: it may go to any worker next
                del self._in_flight[identity], self._assigned[identity]
            sock.send_multipart(frames)

    def _work(self, jobs: queue.SimpleQueue[tuple[bytes, list[bytes]] | None]) -> None:
        push = self._context.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.connect(self._replies_endpoint)
        try:
            while (job := jobs.get()) is not None:
                identity, body = job
                push.send_multipart([identity, *self._answer(identity, body)])
        finally:
            push.close(linger=0)

    def _answer(self, identity: bytes, body: list[bytes]) -> list[bytes]:
        seq: int | None = None
        try:
            seq, header, block = parse_request(body, self.limits)
            stems, info = self.sessions.process(identity, seq, header["sample_rate"], block)
            return list(reply_frames(seq, stems, info))
        except BridgeError as err:
            log.warning("audio socket: %s: %s", err.code, err.message[:500])
            return [error_frame(err.seq if isinstance(err, RequestError) else seq, err)]
        except Exception as err:
            log.exception("audio socket: processing failed")
            message = f"audio processing failed inside the daemon ({type(err).__name__}: {err})"
            return [error_frame(seq, Internal(message))]
