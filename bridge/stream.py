"""The realtime path: a sounddevice duplex stream, ring buffers, a worker thread, output routing.

    device in ──callback──▶ input ring ──worker: engine.process, effects, gains──▶ output ring
    device out ◀─callback── output ring (wet), or the delayed dry input when the worker is late

The callback only copies between PortAudio's buffers and preallocated rings: it never allocates
audio memory, never calls the model, and takes no lock the worker holds (the one `Event.set` it
does takes a lock that is only ever held for a moment). The worker writes input frames `[a, b)`'s
output at frames `[a + budget, b + budget)`: `budget` is the time the worker has to compute.
When it is late anyway, the callback plays the dry input delayed by the same latency, with short
crossfades in and out, and the hop is counted.

The compute budget. A window can run once its lookahead's last frame is in, and that frame
arrives with a whole callback block; the frame's own output may come from that window (the
engine's latency is the least that holds every output frame by the time its input frame is in),
and it is due `budget` frames later, in the callback whose block holds it. Counting from the end
of the block that brought it, the worker has `budget` frames of time only when `budget` is whole
blocks (a frame at the start of a block waits out the rest of the block first). So the budget is
the most whole blocks that keep the round trip within hop + lookahead + margin x p99 compute + one
block (the bound issue 12 states), and never fewer than cover the p99 itself:

    budget = max(ceil(p99 / block), floor((margin x p99 + lead) / block)) x block
                                                                 (margin: stream.budget_margin, 1.3)

with the p99 of the warm windows the engine timed at load, or of the last run's hops on the same
setting when that is higher (`budget_source` says which; the StreamManager keeps each setting's
last figure in the job database, so a restarted daemon starts from it too). Where the block's lead
(below) is a whole block less one frame, that is the margin rounded up to whole blocks, the
rounding paid out of the block; where it is 0 (through a resampler), the margin rounded down: the
rounding is paid out of the margin, so a window has at least margin x p99 less one block of time
(1.21 x a 120 ms p99 in 512-frame blocks at 48 kHz). A p99 under block / (margin - 1) (36 ms there)
can take the p99's own whole blocks, over the bound by less than a block: a budget under the
compute itself would make every such window late.

The block's lead. Where every window's last frame sits at the same place in its block, the frames
before it in that block came in with it, and their time is not the window's to spend: every output
frame goes `lead` frames earlier in the ring (`block_lead_frames` in `stream.status`), and each window
still has its `budget` frames of time. The engine says where its windows end
(`StreamingSeparator.block_lead_frames`): a device at the model's rate (44.1 kHz) has them on the
model's 1024-frame grid, so the lead is 511 frames of a 512-frame block, and the round trip is
hop + lookahead + budget: the budget's rounding up to whole blocks is paid out of the one block the
duplex callback costs. Through a resampler (a 48 kHz device) windows end at every place of a block
and the lead is 0 (the budget is then rounded down, above). A budget of one block takes none: the
frames before a window's last one in its block would be due in the callback that brings them.
Frames that arrive while a window computes queue in the input ring and cost next to nothing once
it is done; the frames *before* the one that completes a window are fed to the engine on their own
first, so their output (already computed) never waits on the model.

While a stream runs the budget can only grow (`stream.budget_grow`, on by default). After each
window the worker checks two things: did this window's output land after the callback needed it
(it was late), or has the live p99 of the hops outgrown the budget, i.e. would it take more
whole blocks by the rule above (after MIN_LIVE_HOPS hops)? (A window with more than
budget x (1 - 1/margin) to spare skips the check: its compute was within the budget's share, so
neither can have become true. A window that came
out late only because it waited for the window before it, still computing when its last frame came
in, grows nothing: that window was the late one, and grew the budget or climbed the hop; growing
for the wait would add the backlog of a slow stretch to the latency for good. The wait does count
toward a climb: a stream that stays behind needs a longer hop.) Either way the
budget becomes the margin times what the window needed (the
larger of the live p99 and the late window's own time), in whole blocks as above, at most the margin
times one hop (a window that needs more than a hop cannot keep real time at any budget). A late
window's own time is more than the budget, so its whole blocks are at least one block more; and no
more than that cover needs: a minimum step (1.1 x the budget, until
2026-12-04) saved a growth now and then but left the round trip a block or more over the margin's
bound for the rest of the run. The worker
keeps writing input frame i's output at ring frame i + the budget the stream started with; the
callback reads `shift` frames behind that, and a growth of d frames moves its read point d
frames back in one splice: the last d frames play again, joined to what came before by a FADE_MS
crossfade, once, and every later frame is exactly d later. The latency the stream reports grows
by d, the `stream.latency` event carries the new round trip to the DAW scripts, and
`budget_changes` in `stream.status` lists each growth. With `budget_grow: false` the budget is
fixed for the stream's life; then `budget_warning` in `stream.status` (and the log) says when the
live p99 needs more whole blocks than it has. Either way the next `stream.start` of the same setting takes
its budget from the last run's hops when that is higher.

A budget cannot help a window that needs more than its hop: then (`stream.hop_climb`, with the hop
left to the engine) the stream climbs to a longer hop of the engine's ladder while running
(`_climb_hop`). The engine goes on from the same history and inserts silence where its latency
grew; the worker drops that silence (writing every later frame that much earlier in the ring, so
the ring stays one continuous signal) and the callback reads that much further back in the same
kind of splice as a growth's. So `latency_frames` is the engine's latency at the start, the start's
budget and the callback's shift; the engine's growth (`_engine_extra`) moves from the budget's
share to the engine's, and `budget_frames` stays the time the worker has.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from bridge.config import StreamConfig
from bridge.errors import BadRequest, Unavailable
from bridge.ledger import KeptCompute
from engines.cloud.selfhosted_stream import RemoteStreamingSeparator
from engines.effects import EffectChain
from engines.ringbuffer import FrameRing
from engines.separation.streaming import HOP_LADDER, StreamingSeparator

# What a live stream runs: this machine's separator, or one on the self-hosted tier (the same calls).
StreamEngine = StreamingSeparator | RemoteStreamingSeparator

log = logging.getLogger(__name__)
T = TypeVar("T")

LOCAL = "local"
FADE_MS = 5.0
# While a stream runs, a thread waiting for the GIL asks its holder to let go after this long
# (Python's default is 5 ms, about a whole 256-frame block at 48 kHz): the audio callback needs the
# GIL for a few microseconds per block, and the worker holds it between torch ops for much longer.
GIL_SWITCH_SECONDS = 0.0005
# The budget from the last run's hops is used only when there were at least this many.
MIN_LIVE_HOPS = 8
# A climb to a longer hop while running looks at the median compute of the recent windows: at
# least this many, and at least this many seconds of them (Spleeter's 0.14 s hops climbed for good
# on the spike of a busy process starting, 0.6 s long, when 4 windows were enough).
CLIMB_WINDOWS = 4
CLIMB_SECONDS = 2.0
# The device has stalled when no input block has come for this long once one had: unplugged, the
# computer asleep, another app holding it exclusively, or the audio server stopped.
STALL_SECONDS = 1.0
# ... or when none has come this long after PortAudio started the stream: it opened the device, and
# the device never began (its clock source gone, held by another app, asleep). Longer than a stall:
# a device may take a moment to begin (a Bluetooth headset switching profiles takes a second or two).
FIRST_INPUT_SECONDS = 3.0
# Every input sample exactly 0 since the stream started, for this long, is worth a word: nothing is
# routed to the stream's inputs yet, or, on macOS, the process may not use the microphone, which
# Core Audio answers with exact silence on every input, a loopback device's (BlackHole) too. An
# input with nothing plugged in hums or hisses; a DAW that has not started playing sends exact 0s.
SILENT_INPUT_SECONDS = 5.0
# Virtual devices on which what an app plays on output k comes back in on input k, by the names
# they show in `flowstate devices` (BlackHole, Soundflower, Rogue Amoeba's Loopback, VB-Audio's
# VoiceMeeter): a stream whose outputs overlap its inputs there feeds its stems back into itself.
LOOPBACK_NAMES = ("blackhole", "soundflower", "loopback", "voicemeeter", "vb-audio")
JACK_HOST_API = "JACK Audio Connection Kit"  # PortAudio's name for it
# Windows host APIs whose default rate PortAudio guesses (pa_win_wmme.c tries 44100 Hz first, then
# 48000 ...; pa_win_ds.c likewise) instead of reading the device's: both convert other rates.
GUESSED_RATE_HOST_APIS = ("MME", "Windows DirectSound")


def import_sounddevice() -> Any:
    """Import sounddevice (which initialises PortAudio) without letting libjack launch a server.

    PortAudio's JACK host API would otherwise start a `jackd` of its own when none is running.
    """
    import os

    os.environ.setdefault("JACK_NO_START_SERVER", "1")
    import sounddevice

    return sounddevice


@contextlib.contextmanager
def current_audio_devices() -> Iterator[Any]:
    """sounddevice, with PortAudio started afresh: it reads the devices, and the rate each runs at,
    once, when it starts, so without this an interface plugged in, or a rate the DAW set, since the
    daemon started would not count. sounddevice's own `_terminate` and `_initialize`, as its author
    gives them for this (python-sounddevice issue #125). Only while no stream of this process is
    open: PortAudio's end closes them (the StreamManager runs one at a time).

    Not once PortAudio has joined a JACK server (Linux): PortAudio 19.6's JACK host API ends the
    whole process on an assert when that server has gone since (its `jack_client_close` fails), and a
    JACK server's rate and ports stay what they were while it runs. A PortAudio this started leaves a
    JACK server it joined again on the way out: its JACK host API is an active JACK client from its
    start, streams or none, and left there through the model's load, which takes every core, it
    misses JACK's cycles (jackd's log: "client PortAudio late", about 50 in a first start's load on
    the dummy server without realtime), and the whole graph with it. That server is there (PortAudio
    has just joined it), so leaving is safe; the stream starts PortAudio again to open the device.
    Unavailable (saying why) once a stream was left open (`audio_host_lost`)."""
    lost = audio_host_lost()
    if lost is not None:
        raise Unavailable(lost)
    first = "sounddevice" not in sys.modules
    sounddevice = import_sounddevice()  # the first import starts PortAudio
    kept = not first and sounddevice._initialized and _joined_jack(sounddevice)
    if not first and not kept:
        if sounddevice._initialized:
            sounddevice._terminate()
        _start_portaudio(sounddevice)
    try:
        yield sounddevice
    finally:
        if not kept and _joined_jack(sounddevice):
            sounddevice._terminate()


# What PortAudio is still doing that this process gave up waiting for, each with why: streams whose
# JACK server went away under them (PortAudio's JACK host API can neither stop nor close such a
# stream: Pa_StopStream waits for a process callback that never comes, and Pa_CloseStream and
# Pa_Terminate after it likewise), streams PortAudio did not stop within STOP_SECONDS (a driver that
# stopped answering; Pure Data's PortAudio hung the same way on a Mac whose interface was unplugged,
# pure-data/pure-data#470), and starts or opens that did not return within OPEN_SECONDS (a JACK
# server that stopped answering: Pa_Initialize and Pa_OpenStream wait on it without a timeout).
# While one is left, this process cannot open audio again, and PortAudio's end at exit would wait
# on it too.
_ABANDONED: list[tuple[object, str]] = []
_ABANDON_LOCK = threading.Lock()
JACK_GONE = ("the JACK server this daemon's audio ran on has gone, and PortAudio cannot leave it: restart the "
             "daemon (flowstate up) once JACK runs again")
# How long stopping and closing a stream may take before it is left open. PortAudio's stop plays out
# what the device still holds (its latency, well under a second) and returns.
STOP_SECONDS = 5.0
# How long PortAudio may take to start (it lists every device of every host API, and opens each ASIO
# driver to do so: seconds on a Windows machine with several) or to open and start a stream.
OPEN_SECONDS = 20.0


class PortAudioHung(Unavailable):
    """PortAudio did not return within its time; what it is doing is left to it (`_in_time`)."""


def audio_host_lost() -> str | None:
    """Why this process cannot open audio again (`_ABANDONED`), or None."""
    with _ABANDON_LOCK:
        return _ABANDONED[0][1] if _ABANDONED else None


def _abandon(what: object, why: str) -> None:
    """Leave `what` (a stream, or a call still running) to PortAudio, the lock held: PortAudio's end
    at exit (sounddevice's exit handler) would wait on it for ever, so it goes too. From
    sys.modules: a first `import sounddevice` that waits in Pa_Initialize holds the import's lock."""
    _ABANDONED.append((what, why))
    sounddevice = sys.modules.get("sounddevice")
    if sounddevice is not None and hasattr(sounddevice, "_exit_handler"):
        atexit.unregister(sounddevice._exit_handler)
    log.warning("stream: %s", why)


def _taken_back(what: object) -> bool:
    """`what` is no longer left to PortAudio (the lock held); whether it was. Once nothing is left,
    PortAudio's end at exit is safe again."""
    left = [entry for entry in _ABANDONED if entry[0] is what]
    for entry in left:
        _ABANDONED.remove(entry)
    sounddevice = sys.modules.get("sounddevice")  # absent if its first import failed
    if left and not _ABANDONED and sounddevice is not None:
        atexit.register(sounddevice._exit_handler)
    return bool(left)


def _in_time(call: Callable[[], T], seconds: float, why: str, late: str,
             after_all: Callable[[T], None] | None = None) -> T:
    """`call` (into PortAudio) on a thread of its own, waiting `seconds` for it. One that takes
    longer is left running there (`_abandon`, with `why`: this process opens no audio meanwhile),
    and PortAudioHung(why) raised, so the request that made it answers and the daemon can exit. If
    it returns after all, `after_all` gets what it returned (a stream nobody waits for now, to
    close), and audio can open again: the log says `late` "after all"."""
    token = object()
    done = threading.Event()
    outcome: list[tuple[Any, BaseException | None]] = []

    def run() -> None:
        try:
            outcome.append((call(), None))
        except BaseException as err:  # noqa: BLE001 (raised by the caller, or logged when it gave up)
            outcome.append((None, err))
        with _ABANDON_LOCK:
            done.set()
            given_up = any(entry[0] is token for entry in _ABANDONED)
        if not given_up:
            return
        result, error = outcome[0]
        if error is None and after_all is not None:
            try:
                after_all(result)
            except Exception as err:  # noqa: BLE001 (nobody waits for it now: logged)
                error = err
        with _ABANDON_LOCK:
            _taken_back(token)
            lost = bool(_ABANDONED)
        log.warning("stream: %s after all%s: %s", late, f" ({error})" if error is not None else "",
                    "something else PortAudio holds still keeps audio from opening" if lost
                    else "audio can open again")

    threading.Thread(target=run, name="portaudio-call", daemon=True).start()
    done.wait(seconds)
    with _ABANDON_LOCK:
        if not done.is_set():
            _abandon(token, why)
            raise PortAudioHung(why)
    result, error = outcome[0]
    if error is not None:
        raise error
    return result


def _close_in_time(stream: Any, devices: str) -> None:
    """Stop and close PortAudio's `stream`, waiting STOP_SECONDS (`_in_time`): a stop that takes
    longer leaves the stream open, so stream.stop answers and the daemon can exit. If PortAudio
    gets there after all, the stream is closed and audio can open again."""

    def stop_and_close() -> None:
        stream.stop()
        stream.close()

    with contextlib.suppress(PortAudioHung):
        _in_time(stop_and_close, STOP_SECONDS,
                 f"PortAudio did not stop the stream on {devices} within {STOP_SECONDS:.0f} s (its driver stopped "
                 "answering), and it is left open: restart the daemon (flowstate up) to stream again",
                 f"PortAudio stopped the stream on {devices}")


def in_time_to_open(call: Callable[[], T], devices: str | None = None,
                    after_all: Callable[[T], None] | None = None) -> T:
    """`call`, which opens a stream on `devices` ("audio device 'X'", `describe_devices`), or with
    None starts PortAudio (which lists every device), waiting OPEN_SECONDS (`_in_time`);
    PortAudioHung says what it did not do and what to do."""
    action, done = ("list the audio devices", "listed the audio devices") if devices is None else \
        (f"open {devices}", f"opened {devices}")
    return _in_time(call, OPEN_SECONDS,
                    f"PortAudio did not {action} within {OPEN_SECONDS:.0f} s: an audio driver (on Linux, the JACK "
                    "server) stopped answering. Audio opens again if it answers after all; else restart the daemon "
                    "(flowstate up), and the audio server or interface first if it hangs too",
                    f"PortAudio {done}", after_all)


def sounddevice_in_time() -> Any:
    """`import_sounddevice`, whose first import starts PortAudio, waiting OPEN_SECONDS for it
    (`in_time_to_open`): for a command that lists devices in a process of its own (doctor, devices),
    which printed nothing, ever, when a driver or JACK server had stopped answering."""
    return in_time_to_open(import_sounddevice)


def _joined_jack(sounddevice: Any) -> bool:
    return any(api["name"] == JACK_HOST_API for api in sounddevice.query_hostapis())


def _start_portaudio(sounddevice: Any) -> None:
    try:
        sounddevice._initialize()
    except sounddevice.PortAudioError as err:
        raise Unavailable(f"cannot start PortAudio to read the audio devices: {err}") from None


# A stream's (input, output) devices as sounddevice takes them (`StreamConfig.devices`): each a
# name, part of one, index, or None for the system's default.
Devices = tuple[str | int | None, str | int | None]


def describe_devices(devices: Devices) -> str:
    """"audio device 'X'", "audio devices 'X' in and 'Y' out", "the default audio device": the devices
    as the producer named them (None: the system's default), for an error."""
    heard, played = ("the default" if device is None else repr(device) for device in devices)
    if heard != played:
        return f"audio devices {heard} in and {played} out"
    return "the default audio device" if devices[0] is None else f"audio device {heard}"


def stream_devices(devices: Devices) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """PortAudio's input and output device for `devices`, or Unavailable naming the setting to
    change: a device that only records (one end of a one-way virtual cable) has no output, and
    takes stream.output_device for the stems."""
    sounddevice = import_sounddevice()
    found = []
    for kind, device in zip(("input", "output"), devices, strict=True):
        try:
            found.append(sounddevice.query_devices(device, kind=kind))
        except (sounddevice.PortAudioError, ValueError) as err:
            if not len(sounddevice.query_devices()):
                raise Unavailable("PortAudio finds no audio device: plug in an interface (on Linux, start JACK), "
                                  "then stream.start again") from None
            hint = ""
            if kind == "output" and devices[0] == devices[1] and found:
                hint = (f" ({found[0]['name']} only records): set stream.output_device to the device the stems "
                        "should play on")
            setting = "stream.output_device" if kind == "output" and devices[0] != devices[1] else "stream.device"
            raise Unavailable(f"cannot open audio device {device!r} for {kind} ({setting}): {err}{hint}. "
                              "`flowstate devices` lists devices") from None
    return found[0], found[1]


def device_rate(devices: Devices) -> tuple[int, str]:
    """The rate the stream's devices (`StreamConfig.devices`) run at, as PortAudio read it
    (`current_audio_devices`), and why: its input's rate (Core Audio: the device's nominal rate;
    WASAPI: its shared mix format; JACK: the server's). At another rate the host converts, with a
    delay the reported latency cannot see (Core Audio, MME, DirectSound), or refuses (JACK, WASAPI
    in shared mode)."""
    sounddevice = import_sounddevice()
    heard, played = stream_devices(devices)
    rate = round(float(heard["default_samplerate"]))
    why = f"the device's own rate ({heard['name']}; stream.sample_rate auto)"
    api = str(sounddevice.query_hostapis(heard["hostapi"])["name"])
    if api in GUESSED_RATE_HOST_APIS:
        why = (f"{api} says {rate} Hz for {heard['name']} (stream.sample_rate auto), a guess that may not be the "
               "device's own rate: name its WASAPI or ASIO device in stream.device")
        log.warning("stream: %s", why)
    mismatch = rate_mismatch(heard, played)
    if mismatch is not None:
        why = f"{heard['name']}'s rate (stream.sample_rate auto); {mismatch}"
        log.warning("stream: %s; the stream runs at %d Hz", mismatch, rate)
    return rate, why


def rate_mismatch(heard: Mapping[str, Any], played: Mapping[str, Any]) -> str | None:
    """What to do when the output device (PortAudio's `played`) runs at another rate than the input
    device (`heard`), whose rate the stream takes; None when they agree."""
    rate, out_rate = round(float(heard["default_samplerate"])), round(float(played["default_samplerate"]))
    if rate == out_rate:
        return None
    return (f"{heard['name']} runs at {rate} Hz and {played['name']} at {out_rate} Hz: set {played['name']} to "
            f"{rate} Hz in the system's sound settings, or the host converts with a delay the round trip does not "
            "count")


def device_refused(devices: Devices, channels: str, tried: int, err: Exception,
                   rate: int | None = None) -> Unavailable:
    """The error for devices that would not open with `channels` ("inputs 1-2 / outputs 1-8") at `tried` Hz,
    naming the `rate` they run at (read here when not given) when that is another; or `stream_devices`'s,
    naming the setting to change, where one is missing (a device that only records, with no
    stream.output_device)."""
    if rate is None:
        try:
            rate, _ = device_rate(devices)
        except Unavailable as missing:  # stream_devices': the setting to change
            return missing
    hint = "" if rate == tried else f"; the device runs at {rate} Hz (stream.sample_rate auto follows it)"
    return Unavailable(f"cannot open {describe_devices(devices)} with {channels} at {tried} Hz: "
                       f"{err}{hint}. `flowstate devices` lists devices")


def channel_span(first: int, count: int) -> str:
    """Device channels `first` .. `first + count - 1` as a DAW names them: "3", "3-4"."""
    return str(first) if count == 1 else f"{first}-{first + count - 1}"


def missing_channels(info: Mapping[str, Any], kind: str, first: int, count: int) -> str | None:
    """What is wrong when the device `info` (PortAudio's) lacks the `count` channels of `kind`
    ("input" or "output") from `first` on that the stream uses, or None."""
    has = int(info[f"max_{kind}_channels"])
    if first - 1 + count <= has:
        return None
    setting = f"stream.first_{kind}"
    return (f"{info['name']} has {has} {kind} channel{'' if has == 1 else 's'}; the stream "
            f"{'reads' if kind == 'input' else 'writes'} {kind}s {channel_span(first, count)} ({setting} {first}, "
            f"{count} channel{'' if count == 1 else 's'}): set {setting} to a channel it has, or pick another device "
            "(`flowstate devices` lists each with its channels)")


def check_device_channels(devices: Devices, first_input: int, inputs: int, first_output: int, outputs: int) -> None:
    """Raise Unavailable now, naming what the device has, when the input device lacks the channels
    the stream reads (`inputs` from `first_input` on) or the output device those it writes
    (`outputs` from `first_output` on): PortAudio would refuse the open with "Invalid number of
    channels". Nothing to check where PortAudio finds no such device: the open says."""
    sounddevice = import_sounddevice()
    for kind, device, first, count in (("input", devices[0], first_input, inputs),
                                       ("output", devices[1], first_output, outputs)):
        try:
            info = sounddevice.query_devices(device, kind=kind)
        except (sounddevice.PortAudioError, ValueError):
            return
        problem = missing_channels(info, kind, first, count)
        if problem is not None:
            raise Unavailable(f"stream.start: {problem}")


def _cable(name: str) -> str:
    """A virtual cable's name without its end: VB-Audio names the end an app plays into "CABLE
    Input (VB-Audio Virtual Cable)" and the end another records from "CABLE Output (...)"."""
    words = [word for word in name.lower().split() if word not in ("input", "output")]
    return " ".join(words)


def one_cable(input_name: str, output_name: str) -> bool:
    """Whether the output device plays into the input device: one device, or the two ends of one
    virtual cable (MME cuts names at 31 characters, so one may be the other's beginning)."""
    if input_name == output_name:
        return True
    heard, played = _cable(input_name), _cable(output_name)
    return min(len(heard), len(played)) >= 8 and (heard.startswith(played) or played.startswith(heard))


def loopback_feedback(input_name: str, output_name: str, first_input: int, inputs: int, first_output: int,
                      outputs: int) -> str | None:
    """Why the stream would feed itself, or None: on a loopback device (LOOPBACK_NAMES) what goes
    out on output k comes back in on input k, and so on a one-way virtual cable from the end the
    stream plays into to the end it records: outputs that overlap the inputs bring the stems back in."""
    if not any(word in input_name.lower() for word in LOOPBACK_NAMES) or not one_cable(input_name, output_name):
        return None
    last_input, last_output = first_input + inputs - 1, first_output + outputs - 1
    if last_input < first_output or last_output < first_input:
        return None
    reads = (f"the stream reads inputs {channel_span(first_input, inputs)} and writes outputs "
             f"{channel_span(first_output, outputs)}: its stems would come back into its input. Set ")
    if input_name == output_name:
        return (f"{input_name} looks like a loopback device (what goes out on its output k comes back in on input "
                f"k), and {reads}stream.first_output to {last_input + 1} or past it, and take the stems from there "
                "in your DAW")
    return (f"{output_name} plays into {input_name} (the two ends of one virtual cable), and {reads}"
            "stream.output_device to another cable's playing end (VB-CABLE A+B: CABLE-A Input) and record that "
            f"cable's other end in your DAW, or stream.first_output to {last_input + 1} or past it")


def check_device_rate(devices: Devices, first_input: int, channels: int, first_output: int, outputs: int,
                      rate: int) -> None:
    """Raise `device_refused`'s error now if the devices will not take `rate` (an explicit
    stream.sample_rate other than the device's own), so a stream.start does not load a model for a
    rate the device then refuses. JACK refuses any rate but its server's, and WASAPI in shared mode
    any but its mix format (PortAudio's IsFormatSupported says so, as the open would); Core Audio
    converts, and takes it. Nothing to check where PortAudio finds no such device: the open says."""
    sounddevice = import_sounddevice()
    try:
        own, _ = device_rate(devices)
    except Unavailable:
        return
    if own == rate:
        return
    spans = f"inputs {channel_span(first_input, channels)}"
    try:
        sounddevice.check_input_settings(device=devices[0], channels=first_input - 1 + channels, dtype="float32",
                                         samplerate=rate)
        if devices[1] != devices[0]:
            spans = f"outputs {channel_span(first_output, outputs)}"
            sounddevice.check_output_settings(device=devices[1], channels=first_output - 1 + outputs,
                                              dtype="float32", samplerate=rate)
    except (sounddevice.PortAudioError, ValueError) as err:
        raise device_refused(devices, spans, rate, err, rate=own) from None


def release_audio_host() -> None:
    """Run sounddevice's exit handler now where this process loaded it: stop any stream still open
    and terminate PortAudio. For a process about to end with `os._exit` (`bridge.daemon.exit_now`),
    which skips exit handlers: on JACK, PortAudio's host API is a JACK client (`PortAudio`) for as
    long as PortAudio is initialised, and left open at exit it stayed in the server's graph, whose
    shutdown then waited 5 s on it (a server killed meanwhile keeps its entry in JACK's registry).
    Not after a stream was left open (`audio_host_lost`).
    """
    sounddevice = sys.modules.get("sounddevice")
    if sounddevice is None or audio_host_lost() is not None:  # PortAudio's end would wait for ever on that stream
        return
    try:
        sounddevice._exit_handler()
    except Exception as err:  # noqa: BLE001 (on the way out: say so, and exit all the same)
        log.warning("closing the audio host at exit failed: %s", err)


def lower_thread_priority(steps: int) -> int | None:
    """Make the calling thread `steps` nicer than it is; return its nice value now, or None where
    nothing changed (`steps` 0, or an OS without a per-thread nice).

    Linux only: there a nice value belongs to each thread, and the OpenMP threads torch starts for
    a thread that runs the model are created by it and inherit it. So the stream's worker and its
    torch threads yield a core to the audio threads (PortAudio's callback, JACK's, the daemon's
    MIDI port) whenever both want one, which is what keeps callbacks on time when the model's
    threads take every core. On macOS `setpriority` would renice the whole process, audio included,
    and Windows has no such call: both keep the worker as it is.
    """
    if steps <= 0 or not sys.platform.startswith("linux"):
        return None
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + steps))
        return os.getpriority(os.PRIO_PROCESS, tid)
    except OSError as err:  # a sandbox that forbids it: the stream runs, the worker at its old priority
        log.warning("stream: cannot lower the worker thread's priority: %s", err)
        return None


def db_to_gain(gain_db: float) -> float:
    return 0.0 if gain_db <= -120.0 else float(10.0 ** (gain_db / 20.0))


@dataclass
class StemControl:
    gain_db: float = 0.0
    mute: bool = False

    @property
    def gain(self) -> float:
        return 0.0 if self.mute else db_to_gain(self.gain_db)


def starting_p99(at_load_ms: float, last_run: KeptCompute | None) -> tuple[float, KeptCompute | None]:
    """The compute p99 a stream of a setting starts from: the p99 timed at load, or the last run's
    (kept by the StreamManager) when that is higher; the last run comes back when it is the one."""
    if last_run is not None and last_run.p99_ms > at_load_ms:
        return last_run.p99_ms, last_run
    return at_load_ms, None


def budget_frames_for(compute_ms: float, margin: float, sample_rate: int, block_size: int, lead: int = 0) -> int:
    """The most whole callback blocks whose time, less the block's `lead`, stays within `margin` x
    `compute_ms`, so the round trip keeps within hop + lookahead + margin x compute + one block; never
    fewer than cover `compute_ms` itself, and at least one (see the module docstring)."""
    frames = compute_ms * sample_rate / 1000.0
    within = math.floor((margin * frames + lead) / block_size + 1e-9)  # a product that lands on a block is in
    return max(1, math.ceil(frames / block_size), within) * block_size


@dataclass
class Counters:
    late_hops: int = 0
    dry_blocks: int = 0
    xruns: int = 0
    xruns_startup: int = 0  # before the first output of the model is due (device and graph start-up)
    input_overflows: int = 0
    output_underflows: int = 0
    callbacks: int = 0
    resyncs: int = 0
    link_losses: int = 0  # a remote tier's connection lost (bridge/stream.py LiveStream._reconnect)


@dataclass
class Layout:
    """Where each output channel comes from: the mix, or one stem's channel."""

    stems: tuple[str, ...]
    channels: int  # engine channels (= input channels)
    routing: str
    mix_channels: list[int] = field(default_factory=list)
    stem_channels: dict[str, list[int]] = field(default_factory=dict)
    first_output: int = 1  # the device channel the first output goes to (stream.first_output)

    @property
    def num_outputs(self) -> int:
        return len(self.mix_channels) + sum(len(c) for c in self.stem_channels.values())

    @classmethod
    def build(cls, stems: tuple[str, ...], channels: int, routing: str, first_output: int = 1) -> Layout:
        layout = cls(stems=stems, channels=channels, routing=routing, first_output=first_output)
        next_channel = 0
        if routing in ("mix", "both"):
            layout.mix_channels = list(range(channels))
            next_channel = channels
        if routing in ("stems", "both"):
            for stem in stems:
                layout.stem_channels[stem] = list(range(next_channel, next_channel + channels))
                next_channel += channels
        return layout

    def describe(self) -> dict[str, list[int]]:
        """Each output's device channels, numbered from 1 as the DAW numbers them."""
        first = self.first_output
        out = {"mix": [c + first for c in self.mix_channels]} if self.mix_channels else {}
        out.update({stem: [c + first for c in chans] for stem, chans in self.stem_channels.items()})
        return out


class LiveStream:
    """One running live-stems stream: device, engine, effects, routing and counters."""

    def __init__(self, settings: StreamConfig, engine: StreamEngine, effects: EffectRack,
                 on_event: Callable[..., None] | None = None,
                 last_run: KeptCompute | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.effects = effects
        self._on_event = on_event
        self.sample_rate = int(engine.sample_rate)  # the rate the engine resamples from: the device's
        self.block_size = settings.block_size
        channels = settings.channels
        self.layout = Layout.build(tuple(engine.stems), channels, settings.routing, settings.first_output)
        # The device channels before the stream's own: opened too (PortAudio opens channels from
        # the first), not read, and written silent.
        self._in_skip = settings.first_input - 1
        self._out_skip = settings.first_output - 1
        self.controls = {stem: StemControl() for stem in engine.stems}
        for stem, gain_db in settings.gains_db.items():
            self.controls[stem].gain_db = gain_db
        for stem in settings.muted:
            self.controls[stem].mute = True

        hop = int(engine.hop_frames)
        timing = engine.load_timing()
        at_load = float(timing["compute_ms_p99_at_load"])
        self.budget_margin = float(settings.budget_margin)
        self.last_run = last_run  # the compute this setting's last stream measured, kept by the StreamManager
        # The frames of its block before the one that completes any window (see the docstring): every
        # output frame goes this much earlier. Only with a budget of two blocks or more: with one,
        # the frames before a window's in its block would be due in the callback that brings them.
        lead = engine.block_lead_frames(self.block_size)
        if settings.budget_ms is not None:
            budget_ms, margin = float(settings.budget_ms), 1.0
            self.budget_source = (f"set in config: {settings.budget_ms:g} ms, rounded up to whole "
                                  f"{self.block_size}-frame blocks")
        else:
            p99_ms, from_run = starting_p99(at_load, last_run)
            budget_ms, margin = p99_ms, self.budget_margin
            if from_run is None:
                measured = f"p99 {at_load:.1f} ms of {timing['load_timing_windows']} windows timed at load"
            else:
                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(from_run.updated_at))
                measured = f"p99 {p99_ms:.1f} ms of the last run's {from_run.hops} hops (stopped {when})"
            self.budget_source = (f"{self.budget_margin:g} x {measured}, in whole {self.block_size}-frame "
                                  f"blocks")
        start_budget = budget_frames_for(budget_ms, margin, self.sample_rate, self.block_size, lead)
        if start_budget < 2 * self.block_size:
            lead = 0
            start_budget = budget_frames_for(budget_ms, margin, self.sample_rate, self.block_size)
        self._lead = lead
        self._engine_latency = int(engine.latency_frames)  # at the start: a longer hop adds _engine_extra
        # The worker writes input frame i's output at ring frame i + _write_offset (the budget the
        # stream started with) - _lead - _dropped; the callback reads `_shift` frames behind that
        # (see the docstring).
        self._write_offset = start_budget
        # A longer hop while running (_climb_hop): the frames the engine's latency grew by, the
        # silence it inserted for them that the worker has dropped so far, and the input frames
        # [_drop_from, _drop_to) whose engine output is that silence, still to drop.
        self._engine_extra = 0
        self._dropped = 0
        self._drop_from = self._drop_to = 0
        # A climb starts from the growth check (a budget that may grow): both must be on.
        self.hop_climb = bool(settings.hop_climb and settings.budget_grow and getattr(engine, "hop_may_change", False))
        self.hop_changes: list[dict[str, Any]] = []
        self._shift = 0  # callback-owned: the read point in effect
        self._pending_shift = 0  # worker-owned: the read point the callback moves to at its next block
        hop_ms = 1000.0 * hop / self.sample_rate
        self.max_budget_frames = max(start_budget, self._budget_for(hop_ms))
        self.budget_changes: list[dict[str, Any]] = []
        self._budget_capped = False
        self.max_chunk = hop
        max_block = max(self.block_size, 8192)
        # Room for the longest latency the stream may reach: a climb up the whole hop ladder adds
        # about the hops' difference to the engine's latency and lets the budget grow with the hop.
        longest_hop = max(hop, round(HOP_LADDER[-1] * self.sample_rate)) if self.hop_climb else hop
        most_latency = self._engine_latency + 2 * (longest_hop - hop) + max(
            self.max_budget_frames, self._budget_for(1000.0 * longest_hop / self.sample_rate))
        capacity = 1 << math.ceil(math.log2(most_latency + 4 * (hop + max_block)))
        n_out = self.layout.num_outputs
        self._in = FrameRing(channels, capacity)
        self._out = FrameRing(n_out, capacity)
        self._out.written = start_budget - self._lead  # frames before input 0's output are silence, ready to play
        # Worker scratch.
        self._chunk_in = np.zeros((channels, self.max_chunk), dtype=np.float32)
        self._chunk_out = np.zeros((n_out, self.max_chunk), dtype=np.float32)
        self._mix = np.zeros((channels, self.max_chunk), dtype=np.float32)
        self._scaled = np.zeros((channels, self.max_chunk), dtype=np.float32)
        # Callback scratch and the crossfade ramps.
        self._fade = max(1, int(self.sample_rate * FADE_MS / 1000))
        self._ramp_up = np.linspace(0.0, 1.0, self._fade, dtype=np.float32)[:, None]
        self._ramp_down = np.ascontiguousarray(self._ramp_up[::-1])
        self._dry = np.zeros((max_block, channels), dtype=np.float32)
        self._wet_tail = np.zeros((self._fade, n_out), dtype=np.float32)
        self._fade_tmp = np.zeros((self._fade, n_out), dtype=np.float32)
        # A crossfade shorter than FADE_MS (a block shorter than it, or less wet left than it)
        # still goes all the way, on ramps computed into these: (k + 0.5) / n up, the rest down.
        self._ramp_index = (np.arange(self._fade, dtype=np.float32) + 0.5)[:, None]
        self._short_up = np.zeros((self._fade, 1), dtype=np.float32)
        self._short_down = np.zeros((self._fade, 1), dtype=np.float32)
        self._dry_map = [o % channels for o in range(n_out)]

        self.counters = Counters()
        self._played = 0  # frames handed to the device so far (callback-owned)
        self._processed = 0  # input frames the worker has consumed (worker-owned)
        self._was_wet = True
        # Ring frames before this are an engine's fill after a restart mid-stream (a resync, a
        # reconnect): the silence it puts out for its latency before its first output. The callback
        # plays the dry input there, as for a late hop, and crossfades to the wet after it.
        self._wet_from = -(1 << 62)  # none yet
        self._last_late_hop = -1
        self._late_hop_frames = hop  # what one late hop spans: the hop in use (a climb lengthens it)
        self._freed_at = 0  # input frames in when the worker finished its last window
        self._min_slack_frames: int | None = None  # least lead a window's output had on the callback
        self._budget_warned = False
        self._switch_interval = sys.getswitchinterval()
        self._wake = threading.Event()
        self._stopping = threading.Event()  # set by stop(): ends a wait between reconnects
        self.tier = str(getattr(engine, "tier", "local"))
        self.tier_reason = "stream.tier is local"
        self.sample_rate_choice = "stream.sample_rate"  # or the device's own rate (StreamManager.start)
        self.link_error: str | None = None
        self._running = False
        self._worker: threading.Thread | None = None
        self._stream: Any = None
        self.device_name = ""  # PortAudio's name of the device the stream reads
        self.output_device_name = ""  # ... and of the one it writes (stream.output_device): often the same
        self.host_api = ""  # PortAudio's name of their host API (JACK_HOST_API, Core Audio, Windows WASAPI ...)
        self.device_latency_seconds = 0.0
        self.started_at = 0.0
        # The engine's count of windows run (`hops_run`) before this stream (a warm engine's earlier
        # streams, the windows timed at load): `hops` in the status counts from there (the engine's
        # own `hops`, behind its compute statistics, starts again at a resync, a reconnect or a climb).
        self._hops_run_before = int(engine.stats().get("hops_run", 0))
        self.worker_error: str | None = None
        self.stalls = 0  # times the device stopped delivering audio (STALL_SECONDS)
        self._stalled_since: float | None = None  # monotonic time of the last input before the stall
        self._input_seen = (0, 0.0)  # the input's frame count, and when the worker saw it change
        self.input_signal = False  # a sample that is not 0 has come in since the start
        self._silent_frames = 0  # input frames read before that, all exactly 0
        self._silence_told = False
        self.inputs = channel_span(settings.first_input, channels)  # "1-2", as the DAW names them
        self.routing_warning: str | None = None  # outputs that come back in (loopback_feedback)
        self.worker_nice: int | None = None  # set by the worker (lower_thread_priority)

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        sounddevice = import_sounddevice()
        if not sounddevice._initialized:  # it left JACK for the model's load (current_audio_devices)
            in_time_to_open(lambda: _start_portaudio(sounddevice))
        check_device_channels(self.settings.devices, self.settings.first_input, self.settings.channels,
                              self.settings.first_output, self.layout.num_outputs)
        self.engine.reset()
        self.effects.reset()
        # The model and everything else loaded so far lives as long as the stream: out of the
        # collector's sight, a collection the worker's allocations trigger (with the GIL held)
        # scans only what is new, not the tens of thousands of objects torch and demucs hold.
        gc.collect()
        gc.freeze()
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(GIL_SWITCH_SECONDS)
        self._running = True
        self._worker = threading.Thread(target=self._work, name="stream-worker", daemon=True)
        self._worker.start()
        devices = self.settings.devices
        named = describe_devices(devices)

        def open_and_start() -> Any:
            stream = sounddevice.Stream(
                samplerate=self.sample_rate,
                blocksize=self.block_size,
                device=devices,
                channels=(self._in_skip + self.settings.channels, self._out_skip + self.layout.num_outputs),
                dtype="float32",
                callback=self._callback,
                latency="low",
            )
            try:
                stream.start()
            except BaseException:
                with contextlib.suppress(sounddevice.PortAudioError):
                    stream.close()
                raise
            return stream

        try:
            # A stream PortAudio opens after this gave up on it is stopped and closed as it comes.
            self._stream = in_time_to_open(open_and_start, named, lambda late: _close_in_time(late, named))
        except (sounddevice.PortAudioError, ValueError, PortAudioHung) as err:
            self._running = False
            self._wake.set()
            self._worker.join(timeout=2)
            self._restore_interpreter()
            if isinstance(err, PortAudioHung):
                raise
            spans = (f"inputs {channel_span(self.settings.first_input, self.settings.channels)} / outputs "
                     f"{channel_span(self.settings.first_output, self.layout.num_outputs)}")
            raise device_refused(devices, spans, self.sample_rate, err) from None
        heard = sounddevice.query_devices(self._stream.device[0])
        self.device_name = str(heard["name"])
        self.host_api = str(sounddevice.query_hostapis(heard["hostapi"])["name"])
        self.output_device_name = str(sounddevice.query_devices(self._stream.device[1])["name"])
        self.routing_warning = loopback_feedback(
            self.device_name, self.output_device_name,
            self.settings.first_input, self.settings.channels, self.settings.first_output, self.layout.num_outputs)
        if self.routing_warning is not None:
            log.warning("stream: %s", self.routing_warning)
        latency = self._stream.latency
        self.device_latency_seconds = float(latency[0] + latency[1])
        self.started_at = time.monotonic()
        log.info(
            "stream started on %s: %d stems, latency %.1f ms (+ device %.1f ms); compute budget %.1f ms: %s",
            self.devices_text, len(self.layout.stems), self.latency_ms, self.device_latency_seconds * 1000,
            self.budget_ms, self.budget_source,
        )

    def stop(self) -> None:
        jack_gone = self.jack_gone
        self._running = False
        self._stopping.set()
        self._wake.set()
        if jack_gone:
            # Its JACK server has gone: PortAudio would wait for ever to stop or close it.
            with _ABANDON_LOCK:
                _abandon(self._stream, JACK_GONE)
            self._stream = None
        if self._stream is not None:
            stream, self._stream = self._stream, None
            _close_in_time(stream, self.devices_text)
        if self._worker is not None:
            self._worker.join(timeout=5)
            self._worker = None
        self._restore_interpreter()
        log.info("stream stopped: %s", self.counters)

    def _restore_interpreter(self) -> None:
        sys.setswitchinterval(self._switch_interval)
        gc.unfreeze()

    @property
    def running(self) -> bool:
        return self._running

    @property
    def host_ended(self) -> bool:
        """Whether the audio host ended the running stream without being asked (PortAudio says it is
        no longer active): on JACK, the server has gone."""
        return self._running and self._stream is not None and not self._stream.active

    @property
    def jack_gone(self) -> bool:
        """Whether the host that ended the stream is JACK: its server has gone, and PortAudio can
        neither stop nor close the stream (`stop` leaves it open)."""
        return self.host_ended and self.host_api == JACK_HOST_API

    @property
    def devices_text(self) -> str:
        """The device, or "X in, Y out" when the stream plays on another device than it reads."""
        if self.output_device_name in ("", self.device_name):
            return self.device_name
        return f"{self.device_name} in, {self.output_device_name} out"

    @property
    def budget_frames(self) -> int:
        """The compute budget now: the start's plus every growth since (in effect from the next block)."""
        return self._write_offset + self._pending_shift - self._engine_extra

    @property
    def latency_frames(self) -> int:
        """The engine's latency (with a longer hop's growth) plus the budget, less the block's lead:
        where the callback reads."""
        return self._engine_latency + self._write_offset + self._pending_shift - self._lead

    @property
    def latency_ms(self) -> float:
        return 1000.0 * self.latency_frames / self.sample_rate

    @property
    def budget_ms(self) -> float:
        return 1000.0 * self.budget_frames / self.sample_rate

    @property
    def round_trip_ms(self) -> float:
        """A duplex callback writes block k's output as block k's input arrives: one block more."""
        return round(1000.0 * (self.latency_frames + self.block_size) / self.sample_rate, 3)

    # -- the realtime callback ---------------------------------------------------------------------

    def _callback(self, indata: np.ndarray, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        counters = self.counters
        counters.callbacks += 1
        if status:
            counters.xruns += 1
            if self._played < self.latency_frames:
                counters.xruns_startup += 1
            if status.input_overflow:
                counters.input_overflows += 1
            if status.output_underflow:
                counters.output_underflows += 1
        if self._in_skip:
            indata = indata[:, self._in_skip:]
        if self._out_skip:
            outdata[:, : self._out_skip] = 0.0
            outdata = outdata[:, self._out_skip:]
        self._in.write_interleaved(indata)
        self._wake.set()
        played = self._played
        start = played - self._shift  # the ring frame this block plays
        fade = min(self._fade, frames)
        tail = self._wet_tail[:fade]
        pending = self._pending_shift
        splice = pending != self._shift
        if splice:
            # The budget grew: read `pending - shift` frames further back from here on. What the
            # old read point would have played next (the wet output, or the dry input at the old
            # latency when the wet is not there) fades out under what the new one plays.
            if self._was_wet and start >= self._wet_from and self._out.written - start >= fade:
                self._out.read_interleaved_at(start, tail)
            else:
                self._write_dry(tail, played)
            self._shift = pending
            start = played - pending
        available = self._out.written - start if start >= self._wet_from else 0
        if available >= frames:
            self._out.read_interleaved_at(start, outdata)
            if not splice and not self._was_wet:
                self._write_dry(tail, played)  # back from the dry input: fade it out
            if splice or not self._was_wet:
                self._fade_in(outdata, fade)
            self._was_wet = True
        else:
            counters.dry_blocks += 1
            hop_index = start // self._late_hop_frames  # a hop is late once, however many blocks it spans
            if hop_index != self._last_late_hop:
                self._last_late_hop = hop_index
                counters.late_hops += 1
            self._write_dry(outdata, played)
            if splice:
                self._fade_in(outdata, fade)
            elif self._was_wet:
                # Crossfade from the wet to the dry input. With less wet there than a fade (the
                # worker's output ran out mid-way), the crossfade is as long as the wet there is:
                # both signals go all the way, never a cut. With none, the dry comes in from silence.
                some = max(0, min(available, fade))
                if some:
                    self._out.read_interleaved_at(start, tail[:some])
                else:
                    tail.fill(0.0)
                self._fade_in(outdata, some or fade)
            self._was_wet = False
        self._played = played + frames

    def _write_dry(self, outdata: np.ndarray, played: int) -> None:
        """The input as it was the stream's latency before output frame `played`, on every output channel."""
        dry = self._dry[: outdata.shape[0]]
        latency = self._engine_latency + self._write_offset + self._shift - self._lead  # the read point in effect
        self._in.read_interleaved_at(played - latency, dry)
        for out_channel, in_channel in enumerate(self._dry_map):
            outdata[:, out_channel] = dry[:, in_channel]

    def _fade_in(self, outdata: np.ndarray, fade: int) -> None:
        """Crossfade the first `fade` frames of `outdata` in over `_wet_tail`'s, which fade out:
        all the way over those frames, however few (a 128-frame block at 48 kHz is shorter than
        FADE_MS; cut there, the ramps would leave half of each signal to jump at the block's end)."""
        if fade == self._fade:
            up, down = self._ramp_up, self._ramp_down
        else:
            up, down = self._short_up[:fade], self._short_down[:fade]
            np.divide(self._ramp_index[:fade], fade, out=up)
            np.subtract(1.0, up, out=down)
        tmp = self._fade_tmp[:fade]
        np.multiply(outdata[:fade], up, out=tmp)
        np.multiply(self._wet_tail[:fade], down, out=outdata[:fade])
        outdata[:fade] += tmp

    # -- the worker ----------------------------------------------------------------------------------

    def _work(self) -> None:
        try:
            # Before the first window: the torch threads this thread starts inherit it.
            self.worker_nice = lower_thread_priority(self.settings.worker_nice)
            self._work_loop()
        except Exception as err:  # the stream keeps playing dry; status says why
            log.exception("stream worker failed")
            self.worker_error = f"{type(err).__name__}: {err}"

    def _work_loop(self) -> None:
        capacity = self._in.capacity
        while self._running:
            available = self._in.written - self._processed
            if available <= 0:
                self._wake.wait(0.1)
                self._wake.clear()
                self._check_flow()
                continue
            if self._stalled_since is not None:
                self._check_flow()
            if available > capacity // 2:
                # Hopelessly behind: the input we have not read is about to be overwritten.
                # Jump to the present and restart the engine's history; the callback plays dry.
                self.counters.resyncs += 1
                # From a block's start, so the restarted engine's windows end where they did in
                # their blocks (block_lead_frames).
                behind = self._in.written - self.max_chunk
                self._processed = behind - behind % self.block_size
                self._freed_at = 0  # no window waits behind one from before the jump
                if self._drop_to:
                    self._passed_the_silence()  # the reset engine starts at its new latency: nothing to drop
                try:
                    self.engine.reset()
                    self._skip_fill()
                except Unavailable as err:
                    self._reconnect(err)
                self.effects.reset()
                continue
            n = min(available, self.max_chunk)
            until = self.engine.input_frames_to_window()
            if 1 < until <= n:
                n = until - 1  # these go out now; the next chunk starts with the frame that runs the model
            block_in = self._chunk_in[:, :n]
            self._in.read_at(self._processed, block_in)
            if not self.input_signal:
                self._listen(block_in)
            try:
                stems = self.engine.process(block_in)
            except Unavailable as err:  # a remote tier's connection: dry until it is back
                self._reconnect(err)
                continue
            start_out = self._write(stems, n)
            if until <= n:
                # How long this window waited for the one before it: its last frame (the first of
                # the chunk) was in while that one still computed, beyond the rest of its block.
                waited = max(0, self._freed_at - self._processed - self.block_size)
                self._freed_at = self._in.written
            self._processed += n
            if until <= n and start_out is not None:  # a window ran: how far ahead of the callback did its output land?
                # The lead over the read point the callback plays from (a growth moves it at the next block).
                # Counted from where the output would go without the block's lead: the lead is the
                # frames that came in with the window's last one, not time to spare.
                slack = start_out + self._lead - (self._played - self._pending_shift)
                if self._min_slack_frames is None or slack < self._min_slack_frames:
                    self._min_slack_frames = slack
                # A window whose compute (or the p99's) times the margin is past the budget used
                # more than budget / margin of it, so its slack is under budget x (1 - 1 / margin):
                # only such windows read the engine's statistics, not every hop.
                if self.settings.budget_grow and slack < self.budget_frames * (1.0 - 1.0 / self.budget_margin):
                    self._grow_budget(slack, waited)

    def _check_flow(self) -> None:
        """Say once when the device stops delivering audio for STALL_SECONDS (the callbacks stop:
        PortAudio reports no error for a device that is gone or asleep), or has delivered none
        FIRST_INPUT_SECONDS after the stream started, and again when it delivers."""
        written, now = self._in.written, time.monotonic()
        seen, seen_at = self._input_seen
        if written != seen:
            self._input_seen = (written, now)
            if self._stalled_since is not None:
                seconds = round(now - self._stalled_since, 1)
                self._stalled_since = None
                log.warning("stream: %s delivers audio again after %.1f s without", self.devices_text, seconds)
                self._publish("stream.resumed", seconds=seconds, device=self.devices_text)
        elif self._stalled_since is None:
            # Before the first block, the time since PortAudio started the stream (0.0: not yet).
            began = seen > 0
            since = seen_at if began else self.started_at
            if not since or now - since < (STALL_SECONDS if began else FIRST_INPUT_SECONDS):
                return
            self._stalled_since = since
            self.stalls += 1
            if self.jack_gone:
                log.warning("stream: %s has delivered no audio for %.1f s, and PortAudio ended the stream: %s; "
                            "stream.stop it", self.devices_text, now - since, JACK_GONE)
            elif began:
                log.warning("stream: %s has delivered no audio for %.1f s (unplugged, the computer asleep, or "
                            "taken by another app?): nothing plays until it is back, or stream.stop",
                            self.devices_text, now - since)
            else:
                log.warning("stream: %s has delivered no audio since the stream started %.1f s ago: PortAudio "
                            "opened it, but it has not begun (taken by another app, asleep, or an aggregate "
                            "device whose clock source is gone?): nothing plays until it does, or stream.stop",
                            self.devices_text, now - since)
            self._publish("stream.stalled", seconds=round(now - since, 1), device=self.devices_text)

    @property
    def no_signal_seconds(self) -> float:
        """How long the inputs have been all 0s since the start; 0 once a signal has come."""
        return 0.0 if self.input_signal else round(self._silent_frames / self.sample_rate, 1)

    def _listen(self, block: np.ndarray) -> None:
        """Until the first sample that is not 0: say once when the input has been digital silence
        for SILENT_INPUT_SECONDS since the start, and say when the signal comes after that."""
        if block.any():
            seconds = self.no_signal_seconds
            # Before the event: a client that asks stream.status on hearing it sees the signal.
            self.input_signal = True
            if self._silence_told:
                log.info("stream: a signal on %s input %s after %.1f s of silence", self.device_name, self.inputs,
                         seconds)
                self._publish("stream.signal", seconds=seconds, device=self.device_name, inputs=self.inputs)
            return
        self._silent_frames += block.shape[1]
        if not self._silence_told and self._silent_frames >= SILENT_INPUT_SECONDS * self.sample_rate:
            self._silence_told = True
            seconds = self.no_signal_seconds
            log.warning("stream: no signal on %s input %s: every sample has been exactly 0 for %.1f s since the "
                        "start. Route your DAW's audio there (stream.first_input picks the inputs); on macOS an app "
                        "that may not use the microphone gets exact silence from every input, a loopback device's "
                        "too: allow the app that started the daemon (Terminal) in System Settings > Privacy & "
                        "Security > Microphone", self.device_name, self.inputs, seconds)
            self._publish("stream.no_signal", seconds=seconds, device=self.device_name, inputs=self.inputs)

    def _write(self, stems: np.ndarray, n: int) -> int | None:
        """Route the engine's output for the next `n` input frames into the output ring, less the
        silence a longer hop inserted (`_climb_hop`); the ring frame of the first frame written."""
        first = self._processed
        parts = [(first, first + n)]
        if self._drop_to > first:  # the frames before the silence at the offset so far, those after at the new
            parts = [(a, b) for a, b in ((first, min(first + n, self._drop_from)),
                                         (max(first, self._drop_to), first + n)) if b > a]
        start_out = None
        for a, b in parts:
            if self._drop_to and a >= self._drop_to:
                self._passed_the_silence()
            chunk = stems if b - a == n else np.ascontiguousarray(stems[:, :, a - first:b - first])
            block_out = self._chunk_out[:, :b - a]
            self._route(chunk, block_out, b - a)
            at = a + self._ring_offset
            self._out.write_at(at, block_out)
            self._out.written = at + b - a
            start_out = at if start_out is None else start_out
        if self._drop_to and first + n >= self._drop_to:
            self._passed_the_silence()
        return start_out

    @property
    def _ring_offset(self) -> int:
        """Input frame i's output goes to ring frame i + this."""
        return self._write_offset - self._lead - self._dropped

    def _passed_the_silence(self) -> None:
        self._dropped += self._drop_to - self._drop_from
        self._drop_from = self._drop_to = 0

    def _budget_for(self, compute_ms: float) -> int:
        """The budget covering `compute_ms` with the stream's margin and lead (`budget_frames_for`)."""
        return budget_frames_for(compute_ms, self.budget_margin, self.sample_rate, self.block_size, self._lead)

    def _grow_budget(self, slack: int, waited: int = 0) -> None:
        """After a window: grow the budget when this window came out late (`slack` < 0) by more
        than it `waited` for the window before it, or the live p99 needs more whole blocks; climb
        the hop when what it needed, the wait included, is past the most a budget may be (see the
        module docstring)."""
        budget = self.budget_frames
        stats = self.engine.stats()
        p99_ms, hops = float(stats.get("compute_ms_p99") or 0.0), int(stats.get("hops", 0))
        own_slack = slack + waited  # the slack it would have had, started as its last frame came in
        needed_ms: float | None
        if own_slack < 0:
            needed_ms = max(p99_ms, 1000.0 * (budget - own_slack) / self.sample_rate)
            reason = f"{self._late(slack, waited)}: {self.budget_margin:g} x {needed_ms:.1f} ms"
        elif hops >= MIN_LIVE_HOPS and self._budget_for(p99_ms) > budget:
            needed_ms = p99_ms
            reason = f"{self.budget_margin:g} x p99 {p99_ms:.1f} ms of the last {hops} hops"
        elif slack < 0:
            needed_ms = None  # late only for the wait: no growth, but a stream that stays behind climbs
            reason = self._late(slack, waited)
        else:
            return
        # What keeping up needs, a queue behind slow windows included. Past the most a budget may be
        # (the margin times one hop), a longer hop may be due; `_climb_hop` asks the windows' median.
        behind_ms = 1000.0 * (budget - slack) / self.sample_rate if slack < 0 else 0.0
        if self._budget_for(max(needed_ms or 0.0, behind_ms)) > self.max_budget_frames and self._climb_hop(reason):
            return
        if needed_ms is None:
            return
        wanted = self._budget_for(needed_ms)
        grown = min(wanted, self.max_budget_frames)
        if grown <= budget:
            if not self._budget_capped:
                self._budget_capped = True
                log.warning("stream: the compute budget would need %.1f ms (%s) but stays at its most, %.1f ms "
                            "(%g x one hop): this setting cannot keep real time here; expect late hops",
                            1000.0 * wanted / self.sample_rate, reason, self.budget_ms, self.budget_margin)
            return
        before_ms = self.budget_ms
        self._pending_shift = grown - self._write_offset + self._engine_extra  # budget_frames = grown
        change = {"seconds": round(time.monotonic() - self.started_at, 3) if self.started_at else 0.0,
                  "from_ms": round(before_ms, 3), "to_ms": round(self.budget_ms, 3),
                  "latency_frames": self.latency_frames, "needed_ms": round(needed_ms, 3), "reason": reason,
                  "late_hops": self.counters.late_hops}  # so far: those after the last growth are the rest
        self.budget_changes.append(change)
        self._announce_latency(f"compute budget {before_ms:.1f} -> {self.budget_ms:.1f} ms", reason)

    def _late(self, slack: int, waited: int) -> str:
        """What a late window's growth or climb says of it."""
        behind = f" (after waiting {1000.0 * waited / self.sample_rate:.1f} ms behind the one before)" if waited else ""
        return f"a window's output came {-1000.0 * slack / self.sample_rate:.1f} ms late{behind}"

    def _announce_latency(self, change: str, reason: str) -> None:
        """Log a change of the latency and tell every listener the new round trip (stream.latency)."""
        log.warning("stream: %s (%s); latency now %.1f ms: the DAW's delay compensation should follow "
                    "(stream.latency event)", change, reason, self.latency_ms)
        self._publish("stream.latency", round_trip_ms=self.round_trip_ms, latency_ms=round(self.latency_ms, 3),
                      round_trip_frames=self.latency_frames + self.block_size, sample_rate=self.sample_rate,
                      budget_ms=round(self.budget_ms, 3), reason=reason)

    def _climb_hop(self, why: str) -> bool:
        """The machine got slower than the hop the engine took at load: a window needs more than a
        hop (`why`), which no budget covers, and the median of the last CLIMB_WINDOWS windows (and
        CLIMB_SECONDS of them) is over the engine's load limit (stream.auto_hop_load). Then, where
        the hop was left to the engine
        (stream.hop_climb), go on with the first longer hop of the ladder that keeps the limit at
        that compute (`StreamingSeparator.change_hop`: the same history, the windows joined by the
        usual crossfade; on OpenVINO, once a build for the longer window is ready, `prepare_hop`)
        and a budget for its longer window, in one splice like a growth's: the
        engine's output is late by the frames its latency grew by, so the worker drops the silence
        the engine inserted for them and the callback reads that much further back. Returns
        whether it climbed."""
        engine = self.engine
        if not self.hop_climb or self._drop_to or not isinstance(engine, StreamingSeparator) \
                or not engine.can_change_hop:
            return False
        hop_ms, limit = 1000.0 * engine.hop_seconds, engine.auto_hop_load
        count = max(CLIMB_WINDOWS, math.ceil(1000.0 * CLIMB_SECONDS / hop_ms))
        recent = engine.recent_compute_ms(count)
        median = float(np.median(recent)) if len(recent) >= count else 0.0
        if median <= limit * hop_ms:
            return False
        # What a window costs now: the median (the last window alone overshot: on a 2-core machine
        # slowed by a busy process, a 1.9 s window against a 1.1 s median took the hop from 1 s
        # to 4 s where 3 s kept the limit). A median that still lags the slowdown climbs short,
        # and the next late windows climb again.
        rung = engine.longer_hop(median, HOP_LADDER[-1])
        if rung is None:
            return False
        ready = engine.prepare_hop(rung)
        if ready is None:
            return False  # OpenVINO builds for the longer window first; the hop stays until it is ready
        rung = ready
        budget, old_window = self.budget_frames, engine.window_seconds
        reason = (f"the last {count} windows took {median:.1f} ms (median), over {limit:g} x the "
                  f"{hop_ms:.0f} ms hop, and {why}")
        ahead, inserted = engine.change_hop(rung, reason)
        self._late_hop_frames = int(engine.hop_frames)
        self._drop_from = self._processed + ahead
        self._drop_to = self._drop_from + inserted
        self._engine_extra += inserted
        # A budget for the longer window: the slowest recent window's compute, scaled by window length.
        estimate_ms = max(recent) * engine.window_seconds / old_window
        self.max_budget_frames = max(self.max_budget_frames,
                                     self._budget_for(1000.0 * engine.hop_frames / self.sample_rate))
        grown = min(max(budget, self._budget_for(estimate_ms)), self.max_budget_frames)
        self._budget_capped = False
        self._pending_shift = grown - self._write_offset + self._engine_extra
        new_hop_ms = 1000.0 * engine.hop_seconds
        covered_ms = self.budget_ms / self.budget_margin
        covers_estimate = grown > budget and grown == self._budget_for(estimate_ms)  # not capped
        self.hop_changes.append({
            "seconds": round(time.monotonic() - self.started_at, 3) if self.started_at else 0.0,
            "from_ms": round(hop_ms, 3), "to_ms": round(new_hop_ms, 3), "latency_frames": self.latency_frames,
            # What the budget covers: the estimate it grew for (less where the hop's limit capped it),
            # or, kept as it was, what it covered already.
            "budget_ms": round(self.budget_ms, 3), "needed_ms": round(
                estimate_ms if covers_estimate else covered_ms, 3), "reason": reason,
            "late_hops": self.counters.late_hops})
        self._announce_latency(f"hop {hop_ms:.0f} -> {new_hop_ms:.0f} ms while running, compute budget "
                               f"{1000.0 * budget / self.sample_rate:.1f} -> {self.budget_ms:.1f} ms",
                               f"hop {hop_ms:.0f} -> {new_hop_ms:.0f} ms: {reason}")
        return True

    def _reconnect(self, err: Unavailable) -> None:
        """The engine's tier cannot be reached (a remote engine lost its connection). The worker
        writes nothing, so the callback plays the dry input at the same latency; every
        `stream.reconnect_seconds` it tries `engine.reset()` (which connects again), and once that
        works the stream goes on from the present: the input that came meanwhile is skipped, and
        the wet signal returns after the engine's latency, crossfaded from the dry."""
        self.link_error = err.message
        self.counters.link_losses += 1
        log.warning("stream: %s; playing the dry input until it is back", err.message)
        self._publish("stream.error", tier=self.tier, code=err.code, message=err.message)
        while self._running:
            self._stopping.wait(self.settings.reconnect_seconds)
            if not self._running:
                return
            try:
                self.engine.reset()
            except Unavailable as again:
                self.link_error = again.message
                continue
            # Output for input frame i lands at i + budget: from here that is no earlier than what
            # the callback plays next, so nothing stale in the output ring is ever played.
            self._processed = max(self._processed, self._in.written - self.budget_frames)
            self._skip_fill()
            self.effects.reset()
            self.link_error = None
            log.info("stream: %s is back; wet from the next hop", self.tier)
            self._publish("stream.reconnected", tier=self.tier)
            return

    def _skip_fill(self) -> None:
        """After `engine.reset()` mid-stream: its first `latency_frames` of output are silence (its
        FIFO primed, no history), not stems; the callback plays the dry input over them."""
        self._wet_from = self._processed + self._ring_offset + int(self.engine.latency_frames)

    def _publish(self, event: str, **data: Any) -> None:
        if self._on_event is not None:
            self._on_event(event, **data)

    def _route(self, stems: np.ndarray, out: np.ndarray, n: int) -> None:
        layout = self.layout
        mix = self._mix[:, :n]
        mix.fill(0.0)
        for index, stem in enumerate(layout.stems):
            audio = self.effects.process_stem(stem, stems[index])
            gain = self.controls[stem].gain
            if stem in layout.stem_channels:
                chans = layout.stem_channels[stem]
                np.multiply(audio, gain, out=out[chans[0] : chans[-1] + 1])
            if gain:
                np.multiply(audio, gain, out=self._scaled[:, :n])
                mix += self._scaled[:, :n]
        if layout.mix_channels:
            mix = self.effects.process_master(mix)
            out[layout.mix_channels[0] : layout.mix_channels[-1] + 1] = mix

    # -- control -------------------------------------------------------------------------------------

    def set_stem(self, stem: str, gain_db: float | None, mute: bool | None) -> dict[str, Any]:
        control = self.controls.get(stem)
        if control is None:
            raise BadRequest(f"stream.set: argument 'stem' expected one of {', '.join(self.controls)}, got {stem!r}")
        if gain_db is not None:
            control.gain_db = gain_db
        if mute is not None:
            control.mute = mute
        return {"stem": stem, "gain_db": control.gain_db, "mute": control.mute}

    def budget_warning(self, live_p99_ms: float, hops: int) -> str | None:
        """Why hops may be late, or None while the budget covers them (or grows to: budget_grow)."""
        needed = self._budget_for(live_p99_ms)
        if hops < MIN_LIVE_HOPS or needed <= self.budget_frames:
            return None
        measured = (f"the compute p99 of this run's hops, {live_p99_ms:.1f} ms, with the margin "
                    f"{self.budget_margin:g} needs {1000.0 * needed / self.sample_rate:.1f} ms, more than the "
                    f"compute budget of {self.budget_ms:.1f} ms; hops may be late")
        if not self.settings.budget_grow:
            warning = (f"{measured}. stream.stop and stream.start take a budget from this run (the latency grows), "
                       "or set stream.budget_grow to grow it while running")
        elif self._budget_capped:
            warning = (f"{measured}, and the budget is at its most ({self.budget_margin:g} x one hop): this "
                       "setting cannot keep real time here (a longer hop, Spleeter, or a faster device)")
        else:
            return None  # the worker grows the budget after the next window
        if not self._budget_warned:
            self._budget_warned = True
            log.warning("stream: %s", warning)
        return warning

    def status(self) -> dict[str, Any]:
        stats = self.engine.stats()
        slack = self._min_slack_frames
        return {
            "running": self._running,
            "device": self.device_name,
            "output_device": self.output_device_name,
            "model": self.settings.model,
            "stems": list(self.layout.stems),
            "sample_rate": self.sample_rate,
            "sample_rate_choice": self.sample_rate_choice,
            "block_size": self.block_size,
            "latency_frames": self.latency_frames,
            "latency_ms": round(self.latency_ms, 3),
            # A duplex callback writes block k's output as block k's input arrives: one block more.
            "round_trip_frames": self.latency_frames + self.block_size,
            "round_trip_ms": self.round_trip_ms,
            "device_latency_ms": round(self.device_latency_seconds * 1000, 3),
            "total_latency_ms": round(self.latency_ms + self.device_latency_seconds * 1000, 3),
            "engine_latency_frames": int(self.engine.latency_frames),
            "block_lead_frames": self._lead,
            "resampler_delay_frames": stats.get("resampler_delay_frames"),
            "hop_frames": int(self.engine.hop_frames),
            "window_seconds": round(float(self.engine.window_seconds), 4),
            "context_seconds": round(float(self.engine.context_seconds), 4),
            "hop_seconds": round(float(self.engine.hop_seconds), 4),
            "hop_choice": stats.get("hop_choice"),
            # False: even the hop ladder's longest hop measured over stream.auto_hop_load at load.
            "real_time_at_load": stats.get("real_time_at_load"),
            "backend": stats.get("backend"),
            "backend_choice": stats.get("backend_choice"),
            "lookahead_seconds": round(float(self.engine.lookahead_seconds), 4),
            "compute_ms_p50": stats.get("compute_ms_p50"),
            "compute_ms_p99": stats.get("compute_ms_p99"),
            "compute_ms_p99_at_load": stats.get("compute_ms_p99_at_load"),
            "compute_ms_p99_last_run": self.last_run.p99_ms if self.last_run is not None else None,
            "budget_frames": self.budget_frames,
            "budget_ms": round(self.budget_ms, 3),
            "budget_margin": self.budget_margin,
            "budget_source": self.budget_source,
            "budget_grow": self.settings.budget_grow,
            "budget_changes": list(self.budget_changes),
            "hop_climb": self.hop_climb,
            "hop_changes": list(self.hop_changes),
            "worker_nice": self.worker_nice,
            "budget_warning": self.budget_warning(float(stats.get("compute_ms_p99") or 0.0), int(stats.get("hops", 0))),
            "slack_ms_min": None if slack is None else round(1000.0 * slack / self.sample_rate, 3),
            "load": stats.get("load_p50"),
            "load_p99": stats.get("load_p99"),
            "hops": int(stats.get("hops_run", stats.get("hops", 0))) - self._hops_run_before,
            "compute_hops": stats.get("hops", 0),
            "batching": stats.get("batching", False),
            "batch_sizes": stats.get("batch_sizes", {}),
            "batch_size_mean": stats.get("batch_size_mean"),
            "forward_ms_p50": stats.get("forward_ms_p50"),
            "late_hops": self.counters.late_hops,
            "dry_blocks": self.counters.dry_blocks,
            "xruns": self.counters.xruns,
            "xruns_startup": self.counters.xruns_startup,
            "resyncs": self.counters.resyncs,
            "input_channels": [self.settings.first_input + c for c in range(self.settings.channels)],
            # The same as a DAW names them: "1-2" in, "3-4" (or "3-10", the stems) out.
            "inputs": self.inputs,
            "outputs": channel_span(self.settings.first_output, self.layout.num_outputs),
            # False until a sample that is not 0 comes in; how long the input was all 0s until then.
            "input_signal": self.input_signal,
            "no_signal_seconds": self.no_signal_seconds,
            "routing": self.layout.describe(),
            "routing_warning": self.routing_warning,
            "controls": {stem: {"gain_db": c.gain_db, "mute": c.mute} for stem, c in self.controls.items()},
            "worker_error": self.worker_error,
            "stalled_seconds": 0.0 if self._stalled_since is None else round(time.monotonic() - self._stalled_since, 1),
            "stalls": self.stalls,
            "host_ended": self.host_ended,
            "audio_lost": audio_host_lost(),
            # Where the windows run (stream.tier) and why; a remote tier's connection and its losses.
            "tier": self.tier,
            "tier_reason": self.tier_reason,
            "link": stats.get("link"),
            "link_error": self.link_error,
            "link_losses": self.counters.link_losses,
            "seconds": round(time.monotonic() - self.started_at, 3) if self.started_at else 0.0,
        }


class EffectRack:
    """The master chain and one chain per stem, built from `stream.effects` in config."""

    def __init__(self, master: EffectChain, stems: dict[str, EffectChain]) -> None:
        self.master = master
        self.stems = stems

    @classmethod
    def build(cls, spec: dict[str, Any], stem_names: tuple[str, ...], sample_rate: int, channels: int) -> EffectRack:
        unknown = sorted(set(spec.get("stems", {})) - set(stem_names))
        if unknown:
            raise BadRequest(
                f"stream.effects.stems: unknown stem(s) {unknown}; this model has {', '.join(stem_names)}"
            )
        master = EffectChain.from_spec(spec.get("master", []), sample_rate, num_channels=channels)
        stems = {
            name: EffectChain.from_spec(chain, sample_rate, num_channels=channels)
            for name, chain in spec.get("stems", {}).items()
        }
        return cls(master, stems)

    def chain(self, name: str) -> EffectChain:
        if name == "master":
            return self.master
        if name in self.stems:
            return self.stems[name]
        choices = ", ".join(["master", *self.stems])
        raise BadRequest(f"fx.set: argument 'chain' expected one of {choices}, got {name!r}")

    def process_stem(self, stem: str, audio: np.ndarray) -> np.ndarray:
        chain = self.stems.get(stem)
        return audio if chain is None else chain.process(audio)

    def process_master(self, audio: np.ndarray) -> np.ndarray:
        return self.master.process(audio)

    def reset(self) -> None:
        for chain in (self.master, *self.stems.values()):
            chain.reset()

    def describe(self) -> dict[str, Any]:
        return {"master": self.master.describe(), **{name: c.describe() for name, c in self.stems.items()}}
