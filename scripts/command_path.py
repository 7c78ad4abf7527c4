"""Follow `stems.separate` from the OSC wire to its engine and back, and count the files it crosses.

A real daemon runs in a subprocess (`flowstate up` on free ports, a tiny HTDemucs saved in
demucs's format); this script sends it `/flow/stems/separate <file>` over OSC UDP and waits for
`/flow/event/job/done`. Inside the daemon a profiler (sys.setprofile on every thread, nothing in
the daemon's code) records the call stack, the project's own frames only, from the event loop's
callback or the worker thread's start, at each step:

    request  the request's check            wire -> transport -> dispatch -> command -> capability
    submit   the job queued                 ... -> command -> job queue
    reply    the job id going back          ... -> transport
    engine   the engine separating          job worker -> capability -> engine
    done     job.done published             job worker -> ... -> event hub
    sent     job.done leaving on OSC        event hub -> transport

The files on those stacks are the files the command crosses from the wire to the engine (request,
submit, engine) and back (reply, done, sent); helpers it calls and that return (the OSC parser,
argument binding, bridge/paths.py's checks) are not hops. A file that appears on one stack twice,
with another between (A -> B -> A), is a call back into a caller.

    python scripts/command_path.py [--max-files 8] [--json]

Exit status 1 when the way from the wire to the engine crosses more than --max-files files or has
an A -> B -> A call.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bridge.testing import DaemonProcess, tiny_htdemucs_repo  # noqa: E402 (the project, from the checkout)
from bridge.transports.osc import build_message  # noqa: E402
from bridge.transports.osc_wire import Limits, Message, parse_packet  # noqa: E402

STEPS = ("request", "submit", "reply", "engine", "done", "sent")
TO_ENGINE = ("request", "submit", "engine")  # from the wire to the engine; the others are the way back

# Runs as the daemon's entry (`python -c ...`): the profiler, then `flowstate up`. Each step's
# stack goes to the trace file as one JSON line when it happens (the daemon may end with os._exit).
_ENTRY = r'''
import json, sys, threading
from pathlib import Path
ROOT, OUT = Path(sys.argv[1]), open(sys.argv[2], "a", buffering=1)
del sys.argv[1:3]
sys.path.insert(0, str(ROOT))
import bridge.events, bridge.jobs, bridge.separate, bridge.transports.osc as osc, engines.separation.files as files
STEPS = {
    bridge.separate.check_request.__code__: ("request", None),
    bridge.jobs.JobRunner.submit.__code__: ("submit", None),
    osc.reply_packet.__code__: ("reply", lambda f: f.f_locals["reply"].name == "stems.separate"),
    files.FileSeparator.process.__code__: ("engine", None),
    bridge.events.EventHub.publish.__code__: ("done", lambda f: f.f_locals["name"] == "job.done"),
    osc.UdpOrigin.send_event.__code__: ("sent", lambda f: f.f_locals["event"].name == "job.done"),
}
seen = set()
def project_stack(frame):
    stack = []
    # Up to the event loop (asyncio runs the transport's callbacks) or the worker thread's start.
    while frame is not None and "asyncio" not in Path(frame.f_code.co_filename).parts:
        path = Path(frame.f_code.co_filename)
        if path.is_relative_to(ROOT / "bridge") or path.is_relative_to(ROOT / "engines"):
            stack.append((str(path.relative_to(ROOT)), frame.f_code.co_qualname))
        frame = frame.f_back
    return stack[::-1]
def profile(frame, event, arg):
    if event != "call" or frame.f_code not in STEPS:
        return
    step, wanted = STEPS[frame.f_code]
    if step in seen or (wanted is not None and not wanted(frame)):
        return
    seen.add(step)
    OUT.write(json.dumps({"step": step, "stack": project_stack(frame)}) + "\n")
threading.setprofile(profile)
sys.setprofile(profile)
from bridge.cli import main
sys.exit(main())
'''


def trace(workdir: Path, timeout_seconds: float = 300.0) -> dict[str, list[tuple[str, str]]]:
    """Run the daemon, separate one file over OSC, and return each step's stack."""
    repo = tiny_htdemucs_repo(workdir / "models", depth=2)
    out = workdir / "trace.jsonl"
    (workdir / "daemon").mkdir()
    daemon = DaemonProcess(
        overrides={"models": {"demucs_repo": str(repo)},
                   "separate": {"model": "tiny", "engine_device": "cpu", "threads": 1}},
        workdir=workdir / "daemon", entry=["-c", _ENTRY, str(ROOT), str(out)],
    )
    source = daemon.workdir / "files" / "beat.wav"
    t = np.arange(44100) / 44100
    soundfile.write(str(source), np.stack([np.sin(2 * np.pi * 220 * t)] * 2, axis=1).astype(np.float32), 44100)
    daemon.start(timeout_seconds=120.0)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(timeout_seconds)
            sock.sendto(build_message("/flow/stems/separate", [str(source)]), daemon.osc_udp)
            deadline = time.monotonic() + timeout_seconds
            while time.monotonic() < deadline:
                message = parse_packet(sock.recv(65536), Limits(16, 4))
                if isinstance(message, Message) and message.address in ("/flow/event/job/done", "/flow/error",
                                                                          "/flow/event/job/failed"):
                    if message.address != "/flow/event/job/done":
                        raise SystemExit(f"stems.separate failed: {message.args}")
                    break
    finally:
        daemon.stop()
    steps: dict[str, list[tuple[str, str]]] = {}
    for line in out.read_text().splitlines():
        record = json.loads(line)
        steps[record["step"]] = [(file, function) for file, function in record["stack"]]
    missing = [step for step in STEPS if step not in steps]
    if missing:
        raise SystemExit(f"no stack recorded for {missing}; the daemon's log:\n{daemon.log()}")
    return steps


def files_of(stack: list[tuple[str, str]]) -> list[str]:
    """The files along a stack, consecutive frames of one file as one hop."""
    hops: list[str] = []
    for file, _ in stack:
        if not hops or hops[-1] != file:
            hops.append(file)
    return hops


def callbacks(hops: list[str]) -> list[str]:
    """Each A -> B -> A on one stack: a file entered again after it called another."""
    return [" -> ".join(hops[hops.index(file):index + 1])
            for index, file in enumerate(hops) if hops.index(file) < index]


def report(steps: dict[str, list[tuple[str, str]]]) -> dict[str, Any]:
    paths = {step: files_of(steps[step]) for step in STEPS}
    to_engine = list(dict.fromkeys(file for step in TO_ENGINE for file in paths[step]))
    round_trip = list(dict.fromkeys(file for step in STEPS for file in paths[step]))
    return {"paths": paths, "files_to_engine": to_engine, "files_round_trip": round_trip,
            "callbacks_to_engine": [c for step in TO_ENGINE for c in callbacks(paths[step])],
            "callbacks_back": [c for step in STEPS if step not in TO_ENGINE for c in callbacks(paths[step])]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-files", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="flowstate-path-") as scratch:
        result = report(trace(Path(scratch)))
    if options.json:
        print(json.dumps(result, indent=2))
    else:
        for step, hops in result["paths"].items():
            print(f"{step:<8} {' -> '.join(hops)}")
        print(f"wire to engine: {len(result['files_to_engine'])} files ({', '.join(result['files_to_engine'])}); "
              "A -> B -> A calls: " + ("; ".join(result["callbacks_to_engine"]) or "none"))
        print(f"and back: {len(result['files_round_trip'])} files in all; A -> B -> A calls: "
              + ("; ".join(result["callbacks_back"]) or "none"))
    return 1 if len(result["files_to_engine"]) > options.max_files or result["callbacks_to_engine"] else 0


if __name__ == "__main__":
    sys.exit(main())
