"""Live stems over the network: what `/v1/stream` adds to a stream's latency, against a running server.

    FLOWSTATE_SERVER_TOKEN=... .venv/bin/python bench/stream_remote.py http://gpu-box:8080 [model] [hop_seconds]

Prints (1) the round trip of a 256-frame block whose output the server already has (no window
runs: the network, the framing and the server's event loop), p50/p90/p99 over 400 blocks, and
(2) what the daemon's budget is made from: the waits for a window's output timed at connect
(network + the window's compute on the server), next to the server's own compute p99 at load.
The difference of (2) is the network's share of the compute budget; (1) is its floor.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

import numpy as np
from websockets.sync.client import connect

from engines.cloud.selfhosted_stream import RemoteStreamingSeparator, stream_url

BLOCK = 256
SAMPLE_RATE = 48000


def main() -> None:
    url = sys.argv[1]
    model = sys.argv[2] if len(sys.argv) > 2 else "htdemucs"
    hop = float(sys.argv[3]) if len(sys.argv) > 3 else None
    token = os.environ["FLOWSTATE_SERVER_TOKEN"]
    settings = {"model": model, "sample_rate": SAMPLE_RATE, "channels": 2,
                **({"hop_seconds": hop} if hop is not None else {})}
    with connect(stream_url(url), additional_headers={"Authorization": f"Bearer {token}"}, proxy=None,
                 compression=None, max_size=None) as ws:
        ws.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ws.send(json.dumps({"version": 1, **settings}))
        json.loads(ws.recv())
        times, windows = [], 0
        block = np.zeros((2, BLOCK), "<f4").tobytes()
        for seq in range(400):
            started = time.perf_counter()
            ws.send(json.dumps({"seq": seq, "channels": 2, "sample_rate": SAMPLE_RATE}))
            ws.send(block)
            reply = json.loads(ws.recv())
            ws.recv()
            if seq and reply["frames"] > 0:  # this block ran a window: its compute is in the time
                windows += 1
                continue
            times.append(1000.0 * (time.perf_counter() - started))
    p50, p90, p99 = np.percentile(times, [50, 90, 99])
    print(f"block round trip, no window: p50 {p50:.2f} ms, p90 {p90:.2f} ms, p99 {p99:.2f} ms "
          f"({len(times)} blocks; {windows} that ran a window left out)")
    remote = RemoteStreamingSeparator(url, token, settings)
    try:
        remote.load()
        timing, link = remote.load_timing(), remote.stats()["link"]
    finally:
        remote.close()
    print(f"window wait at connect (network + compute): p50 {timing['compute_ms_p50_at_load']:.1f} ms, "
          f"p99 {timing['compute_ms_p99_at_load']:.1f} ms over {timing['load_timing_windows']} windows; "
          f"the server's own compute p99 at load {link['server_compute_ms_p99_at_load']:.1f} ms")


if __name__ == "__main__":
    main()
