"""Ping round-trip latency of the daemon's transports, each against a bare baseline server.

For OSC over UDP, OSC over TCP (OSC 1.1, SLIP framing) and ZeroMQ, this sends `ping` one
request at a time from blocking sockets and times each round trip with `time.perf_counter_ns`,
against a real daemon (`python -m bridge up`, via `bridge.testing.DaemonProcess`) and against the
least a Python server must do to answer the same request, in alternating blocks:

* OSC UDP: python-osc's `BlockingOSCUDPServer` with a `Dispatcher` handler for `/flow/ping`;
* OSC TCP: python-osc's `ThreadingOSCTCPServer` in OSC 1.1 (SLIP) mode, same handler;
* ZeroMQ:  a pyzmq REP socket that JSON-decodes the request and JSON-encodes the reply.

Why the comparison is fair: each baseline runs in its own Python process, like the daemon, so
both pay the same cross-process hop and scheduler wake-ups. Each one parses the request and
builds a reply of the same shape with the same libraries the daemon uses (python-osc, json,
pyzmq), and the client is byte-for-byte the same code with prebuilt request packets. What the
ratio daemon/baseline shows is therefore the daemon's own cost: asyncio, the command registry,
argument validation, the Reply objects and the transport glue.

Targets (from the issue): daemon/baseline <= 1.5 at p50 and p99, and daemon p99 <= 2 ms.

    .venv/bin/python bench/transport.py [--count N]

The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import zmq
from pythonosc import slip
from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_server import BlockingOSCUDPServer
from pythonosc.osc_tcp_server import MODE_1_1, ThreadingOSCTCPServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `bridge` when run as a script

from bridge.testing import DaemonProcess

HOST = "127.0.0.1"
PING_ADDRESS = "/flow/ping"
REPLY_ADDRESS = "/flow/reply/ping"
BASELINE_VERSION = "0"
TIMEOUT_SECONDS = 5.0
WARMUP = 200
ROUNDS = 10  # blocks per server, interleaved
TARGET_RATIO = 1.5
TARGET_P99_US = 2000.0

OSC_PING = OscMessageBuilder(address=PING_ADDRESS).build().dgram
SLIP_PING = slip.encode(OSC_PING)
ZMQ_PING = json.dumps({"id": 1, "cmd": "ping", "args": {}}).encode()

Ping = Callable[[], bytes]  # one round trip; returns the raw reply


# -- baseline servers (each runs in a subprocess: `transport.py --serve KIND`) ----------------------


def osc_reply() -> bytes:
    builder = OscMessageBuilder(address=REPLY_ADDRESS)
    builder.add_arg("pong")
    builder.add_arg(BASELINE_VERSION)
    return builder.build().dgram


def serve_osc_udp() -> None:
    dispatcher = Dispatcher()
    server = BlockingOSCUDPServer((HOST, 0), dispatcher)

    def on_ping(client_address: tuple[str, int], address: str, *args: Any) -> None:
        server.socket.sendto(osc_reply(), client_address)

    dispatcher.map(PING_ADDRESS, on_ping, needs_reply_address=True)
    announce(server.server_address[1])
    server.serve_forever()


def serve_osc_tcp() -> None:
    # python-osc's TCP handlers send back what a handler returns, SLIP-framed in mode 1.1.
    dispatcher = Dispatcher()
    dispatcher.map(PING_ADDRESS, lambda address, *args: (REPLY_ADDRESS, "pong", BASELINE_VERSION))
    server = ThreadingOSCTCPServer((HOST, 0), dispatcher, mode=MODE_1_1)
    announce(server.server_address[1])
    server.serve_forever()


def serve_zmq() -> None:
    sock = zmq.Context.instance().socket(zmq.REP)
    port = sock.bind_to_random_port(f"tcp://{HOST}")
    announce(port)
    while True:
        request = json.loads(sock.recv())
        reply = {"id": request.get("id"), "ok": True, "result": {"reply": "pong", "version": BASELINE_VERSION}}
        sock.send(json.dumps(reply, separators=(",", ":")).encode())


SERVERS: dict[str, Callable[[], None]] = {"osc_udp": serve_osc_udp, "osc_tcp": serve_osc_tcp, "zmq": serve_zmq}


def announce(port: int) -> None:
    print(port, flush=True)


@contextmanager
def baseline(kind: str) -> Iterator[int]:
    """Start the bare server for `kind` in a subprocess; yield its port once it is bound."""
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"{kind} baseline exited with {process.wait()}")
        yield int(line)
    finally:
        process.kill()
        process.wait()


# -- clients: identical code for daemon and baseline ------------------------------------------------


def osc_udp_client(stack: ExitStack, address: tuple[str, int]) -> Ping:
    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    sock.settimeout(TIMEOUT_SECONDS)
    sock.connect(address)

    def ping() -> bytes:
        sock.send(OSC_PING)
        return sock.recv(65536)

    return ping


def osc_tcp_client(stack: ExitStack, address: tuple[str, int]) -> Ping:
    sock = stack.enter_context(socket.create_connection(address, timeout=TIMEOUT_SECONDS))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def ping() -> bytes:
        sock.sendall(SLIP_PING)
        frame = sock.recv(65536)
        while len(frame) < 2 or not frame.endswith(slip.END):  # a frame is END ... END
            more = sock.recv(65536)
            if not more:
                raise ConnectionError("server closed the connection")
            frame += more
        return slip.decode(frame)

    return ping


def zmq_client(stack: ExitStack, endpoint: str) -> Ping:
    context = zmq.Context.instance()
    sock = context.socket(zmq.REQ)
    stack.callback(sock.close, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(TIMEOUT_SECONDS * 1000))
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)

    def ping() -> bytes:
        sock.send(ZMQ_PING)
        return sock.recv()

    return ping


# -- measuring --------------------------------------------------------------------------------------


def measure(ping: Ping, count: int) -> list[int]:
    """Round-trip times in ns of `count` pings."""
    samples = []
    clock = time.perf_counter_ns
    for _ in range(count):
        start = clock()
        ping()
        samples.append(clock() - start)
    return samples


def warm_up(ping: Ping) -> None:
    """A few hundred untimed pings (caches, allocators, TCP windows), checking the reply."""
    for _ in range(WARMUP):
        reply = ping()
    if b"pong" not in reply:
        raise RuntimeError(f"unexpected reply to ping: {reply!r}")


def compare(daemon: Ping, bare: Ping, count: int) -> tuple[list[int], list[int]]:
    """Alternate blocks of daemon and baseline pings, so drift on a shared machine hits both alike."""
    warm_up(daemon)
    warm_up(bare)
    daemon_samples: list[int] = []
    bare_samples: list[int] = []
    for block in range(ROUNDS):
        size = count // ROUNDS + (block < count % ROUNDS)
        daemon_samples += measure(daemon, size)
        bare_samples += measure(bare, size)
    return daemon_samples, bare_samples


def percentile_us(samples: list[int], fraction: float) -> float:
    """Nearest-rank percentile, in microseconds."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)] / 1000


def summarize(daemon: list[int], bare: list[int]) -> dict[str, float]:
    figures = {
        "daemon_p50_us": percentile_us(daemon, 0.50),
        "daemon_p99_us": percentile_us(daemon, 0.99),
        "baseline_p50_us": percentile_us(bare, 0.50),
        "baseline_p99_us": percentile_us(bare, 0.99),
    }
    figures["ratio_p50"] = figures["daemon_p50_us"] / figures["baseline_p50_us"]
    figures["ratio_p99"] = figures["daemon_p99_us"] / figures["baseline_p99_us"]
    return {key: round(value, 2) for key, value in figures.items()}


def report(kind: str, f: dict[str, float]) -> str:
    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    ratio_ok = f["ratio_p50"] <= TARGET_RATIO and f["ratio_p99"] <= TARGET_RATIO
    p99_ok = f["daemon_p99_us"] <= TARGET_P99_US
    return (
        f"{kind:8} daemon p50 {f['daemon_p50_us']:8.1f} us  p99 {f['daemon_p99_us']:8.1f} us | "
        f"baseline p50 {f['baseline_p50_us']:8.1f} us  p99 {f['baseline_p99_us']:8.1f} us | "
        f"ratio p50 {f['ratio_p50']:.2f}  p99 {f['ratio_p99']:.2f} | "
        f"ratio <= {TARGET_RATIO}: {verdict(ratio_ok)}; daemon p99 <= 2 ms: {verdict(p99_ok)}"
    )


def run(count: int) -> dict[str, Any]:
    results: dict[str, Any] = {"bench": "transport", "count": count}
    with DaemonProcess(overrides={"daemon": {"log_level": "WARNING"}}) as daemon:
        targets: dict[str, tuple[Callable[[ExitStack, Any], Ping], Any, Callable[[int], Any]]] = {
            "osc_udp": (osc_udp_client, daemon.osc_udp, lambda port: (HOST, port)),
            "osc_tcp": (osc_tcp_client, daemon.osc_tcp, lambda port: (HOST, port)),
            "zmq": (zmq_client, daemon.zmq_requests, lambda port: f"tcp://{HOST}:{port}"),
        }
        for kind, (client, daemon_address, baseline_address) in targets.items():
            with ExitStack() as stack:
                port = stack.enter_context(baseline(kind))
                daemon_samples, bare_samples = compare(
                    client(stack, daemon_address), client(stack, baseline_address(port)), count
                )
            results[kind] = summarize(daemon_samples, bare_samples)
            print(report(kind, results[kind]), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="timed round trips per transport and server")
    parser.add_argument("--serve", choices=sorted(SERVERS), help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.serve:
        SERVERS[options.serve]()
        return
    print(json.dumps(run(options.count)))


if __name__ == "__main__":
    main()
