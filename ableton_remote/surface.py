"""The Flowstate control surface: what Live calls, and what it does with the daemon.

Live calls `update_display` about every 100 ms on its main thread; that is this script's only
clock (it is the same timer `_Framework`'s `schedule_message` counts in). Each tick drains the
sockets, handles replies and events, and sends what changed since the last tick. No threads, no
blocking calls, and no exception ever reaches Live: every entry point logs to Live's Log.txt and
says what went wrong in the status bar.

MIDI on the input port chosen for "Flowstate" in Live's settings, on MIDI_CHANNEL (channel 16 by
default, which drum pads and keyboards do not send on, so the script takes no pad from a track):
note NOTE_SEPARATE separates the selected clip, NOTE_STREAM_START / NOTE_STREAM_STOP start and
stop live stems, NOTE_GENERATE generates a loop (GENERATE_PRESET, GENERATE_BARS bars at Live's
tempo), and the CCs in GAIN_CCS set a stem's gain (0..127 -> GAIN_MIN_DB..GAIN_MAX_DB).

Generated loops land in the set: every `generate` job that finishes while the script runs (its
own, a MIDI note's on the daemon's port, another client's) becomes a new audio track named after
the loop, in the selected scene in Session view or at the next bar line in the Arrangement.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
import traceback
from typing import Any, Callable, TypeVar

import Live  # Live's own module: present only inside Live (tests inject a simulation)

from .base import LiveSurface, __version__
from .link import UNAVAILABLE, DaemonLink
from .osc import OscArg
from .placement import (
    LIVE_WITH_AUDIO_CLIP_IMPORT,
    ClipTarget,
    MissingApi,
    PlacementError,
    loop_target,
    missing_api,
    missing_loop_api,
    place_loop,
    place_stems,
    selected_clip,
    stems_folder,
)

# -- settings: change these here, then restart Live ------------------------------------------------

DAEMON_HOST = "127.0.0.1"  # where `flowstate up` listens (osc.host in its config.yaml)
DAEMON_PORT = 9010  # osc.udp_port
LISTEN_HOST = "127.0.0.1"  # where this script receives events; the daemon must be able to reach it

# 0 = MIDI channel 1 ... 15 = channel 16. Channel 16 by default: pads and keyboards send on channel 1
# (a drum rack's kick is note 36 there), and a forwarded note no longer reaches the track.
MIDI_CHANNEL = 15
NOTE_SEPARATE = 36  # C1 in Live's note names: separate the selected clip into stem tracks
NOTE_STREAM_START = 37  # C#1: start live stems
NOTE_STREAM_STOP = 38  # D1: stop live stems
NOTE_GENERATE = 39  # D#1: generate a loop (below) at Live's tempo; it lands like any generated loop
GENERATE_PRESET = "keys"  # a name from the daemon's generate.presets (config.yaml)
GENERATE_BARS = 4.0  # the loop's length in bars of Live's time signature
# Put every loop a `generate` job makes (this script's, a MIDI note's, another client's) into the
# set: a new audio track in the selected scene (Session view) or at the next bar (Arrangement).
# False: nothing is placed; the status bar says where this script's own loops were written.
PLACE_GENERATED_LOOPS = True
GAIN_CCS = {20: "drums", 21: "bass", 22: "other", 23: "vocals"}  # CC number -> stem
GAIN_MIN_DB = -60.0  # CC value 0
GAIN_MAX_DB = 6.0  # CC value 127

REQUEST_TIMEOUT_SECONDS = 5.0
# The first start loads the model (seconds; minutes while its weights download): waited for while
# the daemon answers pings (a gone daemon is said after REQUEST_TIMEOUT_SECONDS), up to this long.
STREAM_START_PATIENCE_SECONDS = 900.0
# A stop answers within seconds: PortAudio gets 5 s to let go of the device, the model's last window
# as long to end.
STREAM_STOP_PATIENCE_SECONDS = 30.0
RECONNECT_SECONDS = 5.0  # while the daemon is away, try to register again this often
# The daemon drops a listener not registered again within daemon.listener_ttl_seconds (300 s by
# default): register again well within that.
REFRESH_REGISTER_SECONDS = 60.0

PREFIX = "Flowstate: "
GENERATE_KIND = "generate"  # the "kind" of a generate job's result
MAX_REMEMBERED_JOBS = 256  # loops already placed, by job id (each job.done may arrive twice)
SONG_PROPERTIES = ("tempo", "signature_numerator", "signature_denominator", "is_playing")

# `typing.Callable`, not `collections.abc.Callable`: the bound is evaluated at import, and Live 11
# and 12.0 run Python 3.7, where subscripting the latter raises TypeError.
Method = TypeVar("Method", bound=Callable[..., Any])


def cc_to_gain_db(value: int) -> float:
    """A CC value 0..127 as a gain, linear in dB from GAIN_MIN_DB to GAIN_MAX_DB."""
    value = min(max(int(value), 0), 127)
    return round(GAIN_MIN_DB + (GAIN_MAX_DB - GAIN_MIN_DB) * value / 127.0, 2)


def _guarded(method: Method) -> Method:
    """Entry points from Live: an exception is logged and shown, never raised into Live."""

    @functools.wraps(method)
    def guarded(self: FlowstateSurface, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception as err:  # noqa: BLE001 - the boundary with Live: report, keep Live running
            self._log(f"internal error in {method.__name__}:\n{traceback.format_exc()}")
            self._show(f"internal error in {method.__name__}: {err} (details in Live's Log.txt)")
            return None

    return guarded  # type: ignore[return-value]


def _application() -> Any:
    """Live's Application: `Live.Application.get_application()`, as every Remote Script gets it
    (Live's `c_instance` has no `application()`; `_Framework`'s ControlSurface wraps this call)."""
    return Live.Application.get_application()


def live_version() -> str:
    """The running Live's version, e.g. "12.1.5"."""
    app = _application()
    return f"{app.get_major_version()}.{app.get_minor_version()}.{app.get_bugfix_version()}"


# (Live class, method) that placing stems and loops needs; Live 11.3.25 and 12.0.5 added both.
PLACEMENT_CALLS = (("Track", "create_audio_clip"), ("ClipSlot", "create_audio_clip"))


def missing_live_calls() -> list[str]:
    """The calls in PLACEMENT_CALLS this Live lacks, as "Track.create_audio_clip"."""
    missing = []
    for module_name, method in PLACEMENT_CALLS:
        cls = getattr(getattr(Live, module_name, None), module_name, None)  # e.g. Live.Track.Track
        if cls is None or not hasattr(cls, method):
            missing.append(f"{module_name}.{method}")
    return missing


def _number(value: OscArg, digits: int = 0) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "?"


def _track_delay(round_trip: OscArg, frames: OscArg, sample_rate: OscArg) -> str:
    """What to type into the Track Delay of the track playing the stems, or nothing when unknown."""
    if not isinstance(round_trip, (int, float)):
        return ""
    text = f"; Track Delay of the track playing the stems: -{_number(round_trip, 1)} ms"
    if isinstance(frames, int) and isinstance(sample_rate, int):
        text += f" (-{frames} samples at {sample_rate} Hz)"
    return text


class FlowstateSurface(LiveSurface):
    """The object `create_instance` gives Live: Live calls its methods, the user presses MIDI."""

    def __init__(self, c_instance: Any) -> None:
        self._c = c_instance
        self._link = DaemonLink(DAEMON_HOST, DAEMON_PORT, LISTEN_HOST, on_event=self._on_event, log=self._log)
        self._jobs: dict[str, ClipTarget] = {}  # our separation jobs, by job id
        self._generating: dict[str, str] = {}  # our generate jobs, by job id: what was asked for
        self._landed: dict[str, None] = {}  # generate jobs already handled, oldest first
        self._percent: dict[str, int] = {}  # the progress last shown, by job id
        self._on_song_change = self._song_changed  # one callable, so Live can match it on removal
        self._song_listened: list[str] = []
        self._daw_dirty = True  # tempo / signature / transport to send on the next tick
        self._gains: dict[str, float] = {}  # the latest CC gain per stem, sent on the next tick
        self._registered = False
        self._register_in_flight = False
        self._next_register = 0.0
        self._told_offline = False
        self._version_checked = False
        self._connect()

    # -- Live's interface ------------------------------------------------------------------------

    @_guarded
    def _connect(self) -> None:
        try:
            self._link.open()
        except OSError as err:
            self._show(f"cannot open a UDP socket to {self._link.where}: {err}")
            return
        song = self._c.song()
        for name in SONG_PROPERTIES:
            getattr(song, f"add_{name}_listener")(self._on_song_change)
            self._song_listened.append(name)
        self._announce()
        self._register()

    def _announce(self) -> None:
        """Say which script runs where, and what this Live cannot do, once at load."""
        folder = os.path.dirname(os.path.abspath(__file__))
        python = "{}.{}.{}".format(*sys.version_info[:3])
        self._log(
            f"Flowstate {__version__} loaded from {folder} in Live {live_version()} (Python {python}); "
            f"talking to the daemon at {self._link.where}, events on port {self._link.event_port}; "
            f"controls on MIDI channel {MIDI_CHANNEL + 1}"
        )
        missing = missing_live_calls()
        if missing:
            self._show(
                f"script {__version__} loaded, but Live {live_version()} has no {' or '.join(missing)}: "
                f"stems and loops are written to disk, not placed ({LIVE_WITH_AUDIO_CLIP_IMPORT} have them)"
            )
        else:
            channel = MIDI_CHANNEL + 1
            self._show(f"script {__version__} loaded; daemon at {self._link.where}; controls on MIDI channel {channel}")

    @_guarded
    def disconnect(self) -> None:
        """Live unloads the script: remove every listener, unregister, close the sockets."""
        song = self._c.song()
        for name in self._song_listened:
            if getattr(song, f"{name}_has_listener")(self._on_song_change):
                getattr(song, f"remove_{name}_listener")(self._on_song_change)
        self._song_listened.clear()
        port = self._link.event_port
        if port is not None:  # even with a register in flight: the daemon handles both in order
            self._link.request("unregister", [port], _ignore_reply, _ignore_error, REQUEST_TIMEOUT_SECONDS)
        self._link.close()
        self._jobs.clear()
        self._generating.clear()
        self._landed.clear()
        self._percent.clear()
        self._registered = False

    @_guarded
    def update_display(self) -> None:
        """Live's timer (about every 100 ms): handle what arrived, send what changed."""
        if not self._link.is_open:
            return
        self._link.poll()
        now = time.monotonic()
        if not self._register_in_flight and now >= self._next_register:
            self._register()  # while offline: reconnect; while registered: keep the listener alive
        if self._registered and self._daw_dirty:
            self._send_daw_state()
        while self._gains:
            stem, gain_db = self._gains.popitem()
            self.set_stem_gain(stem, gain_db)

    @_guarded
    def refresh_state(self) -> None:
        self._daw_dirty = True

    @_guarded
    def build_midi_map(self, midi_map_handle: Any) -> None:
        """Ask Live to forward our notes and CCs to `receive_midi` instead of the tracks."""
        script = self._c.handle()
        for note in (NOTE_SEPARATE, NOTE_STREAM_START, NOTE_STREAM_STOP, NOTE_GENERATE):
            Live.MidiMap.forward_midi_note(script, midi_map_handle, MIDI_CHANNEL, note)
        for cc in GAIN_CCS:
            Live.MidiMap.forward_midi_cc(script, midi_map_handle, MIDI_CHANNEL, cc)

    @_guarded
    def receive_midi(self, midi_bytes: tuple[int, ...]) -> None:
        if len(midi_bytes) != 3 or (midi_bytes[0] & 0x0F) != MIDI_CHANNEL:
            return
        kind, number, value = midi_bytes[0] & 0xF0, midi_bytes[1], midi_bytes[2]
        if kind == 0x90 and value > 0:  # note on (velocity 0 is a note off)
            action = {
                NOTE_SEPARATE: self.separate_selected_clip,
                NOTE_STREAM_START: self.start_stream,
                NOTE_STREAM_STOP: self.stop_stream,
                NOTE_GENERATE: self.generate_loop,
            }.get(number)
            if action is not None:
                action()
        elif kind == 0xB0 and number in GAIN_CCS:
            self._gains[GAIN_CCS[number]] = cc_to_gain_db(value)  # a moving fader: latest value wins

    # -- actions (MIDI, or another script) -------------------------------------------------------

    @_guarded
    def separate_selected_clip(self) -> None:
        """Send the selected audio clip's file to `stems.separate`; stems come back as tracks."""
        try:
            target = selected_clip(self._c.song(), _application())
        except PlacementError as err:
            self._show(str(err))
            return
        self._show(f"separating '{target.clip_name}'...")
        self._link.request(
            "stems.separate",
            [target.file_path],
            lambda args: self._separation_queued(target, args),
            lambda code, message: self._show(f"cannot separate '{target.clip_name}': {code}: {message}"),
            REQUEST_TIMEOUT_SECONDS,
        )

    @_guarded
    def generate_loop(self, preset: str | None = None, bars: float | None = None, prompt: str = "") -> None:
        """Send `generate` (a preset and/or a prompt, bars at Live's tempo); the loop lands when done.

        Defaults: GENERATE_PRESET and GENERATE_BARS. The daemon counts the bars at the tempo and
        time signature this script reports, so changes not yet sent go first.
        """
        preset = GENERATE_PRESET if preset is None else preset
        bars = GENERATE_BARS if bars is None else bars
        label = prompt or preset
        if self._registered and self._daw_dirty:
            self._send_daw_state()
        self._show(f"generating '{label}', {bars:g} bar{'' if bars == 1 else 's'} at Live's tempo...")
        self._link.request(
            "generate",
            [prompt, preset, float(bars)],  # positional, in the registry's order: prompt, preset, bars
            lambda args: self._generation_queued(label, args),
            lambda code, message: self._show(f"cannot generate '{label}': {code}: {message}"),
            REQUEST_TIMEOUT_SECONDS,
        )

    @_guarded
    def start_stream(self) -> None:
        self._show("starting live stems (the first start loads the model)...")
        self._link.request("stream.start", [], lambda args: self._stream_started(args, tiered=True),
                           self._stream_error("did not start"),
                           REQUEST_TIMEOUT_SECONDS, patience_seconds=STREAM_START_PATIENCE_SECONDS)

    @_guarded
    def stop_stream(self) -> None:
        self._link.request(
            "stream.stop", [], lambda args: self._stream_stopped(args, cancelled_at=2),
            self._stream_error("did not stop"), REQUEST_TIMEOUT_SECONDS, patience_seconds=STREAM_STOP_PATIENCE_SECONDS,
        )

    def _stream_stopped(self, args: tuple[OscArg, ...], lost_at: int = 1, cancelled_at: int | None = None) -> None:
        """The reply (running, audio_lost, cancelled) or the stream.stopped event (late_hops, xruns,
        audio_lost): at `lost_at`, nil or "" (nothing was left open), or why no stream can open until
        the daemon restarts; at `cancelled_at`, nil or the start the stop cancelled (an older
        daemon sends none)."""
        lost = args[lost_at] if len(args) > lost_at else None
        cancelled = args[cancelled_at] if cancelled_at is not None and len(args) > cancelled_at else None
        text = f"live stems start cancelled: {cancelled!s}" if cancelled else "live stems stopped"
        self._show(f"{text}, but {lost!s}" if lost else text)

    @_guarded
    def set_stem_gain(self, stem: str, gain_db: float) -> None:
        self._link.request(
            "stream.set",
            [stem, float(gain_db)],
            lambda args: self._show(f"{args[0]!s} {_number(args[1], 1)} dB"),
            self._stream_error(f"{stem} gain not set"),
            REQUEST_TIMEOUT_SECONDS,
        )

    # -- the daemon's answers --------------------------------------------------------------------

    def _register(self) -> None:
        port = self._link.event_port
        if port is None:
            return
        self._register_in_flight = True
        self._next_register = time.monotonic() + RECONNECT_SECONDS
        self._link.request("register", [port], self._registered_ok, self._register_failed, REQUEST_TIMEOUT_SECONDS)

    def _registered_ok(self, args: tuple[OscArg, ...]) -> None:
        self._register_in_flight = False
        if not self._registered:
            self._daw_dirty = True  # a daemon that was away knows nothing of the set yet
        self._registered = True
        self._next_register = time.monotonic() + REFRESH_REGISTER_SECONDS
        if self._told_offline:
            self._told_offline = False
            self._show(f"connected to the daemon at {self._link.where}")
        if not self._version_checked:
            self._version_checked = True
            self._check_version(args[4] if len(args) > 4 else None)

    def _check_version(self, daemon_version: OscArg) -> None:
        """The handshake: the daemon's version (in the register reply) against this script's.

        `install-ableton` copies the script once; upgrading flowstate leaves the old copy in Live's
        User Library until it is run again. Either side may be the stale one: the message names both.
        """
        if daemon_version == __version__:
            self._log(f"the daemon at {self._link.where} is Flowstate {daemon_version}, as this script")
            return
        folder = os.path.dirname(os.path.abspath(__file__))
        daemon = "too old to say its version" if daemon_version is None else f"Flowstate {daemon_version!s}"
        text = (
            f"the script in {folder} is Flowstate {__version__}, the daemon at {self._link.where} is {daemon}: "
            "run `flowstate install-ableton` with the daemon's flowstate, then restart Live"
        )
        self._log(text)
        self._show(text)

    def _register_failed(self, code: str, message: str) -> None:
        self._register_in_flight = False
        self._registered = False
        if code == UNAVAILABLE:
            self._offline(message)
        else:
            self._show(f"cannot register for events: {code}: {message}")

    def _offline(self, message: str) -> None:
        """Say once that the daemon is away; it is retried quietly until it is back."""
        self._registered = False
        if not self._told_offline:
            self._told_offline = True
            self._show(message)

    def _send_daw_state(self) -> None:
        song = self._c.song()
        state = [float(song.tempo), int(song.signature_numerator), int(song.signature_denominator),
                 bool(song.is_playing)]
        self._daw_dirty = False
        self._link.request("daw.set", state, _ignore_reply, self._daw_set_failed, REQUEST_TIMEOUT_SECONDS)

    def _daw_set_failed(self, code: str, message: str) -> None:
        if code == UNAVAILABLE:
            self._offline(message)  # sent again once the daemon is back (see _registered_ok)
        else:
            self._log(f"daw.set: {code}: {message}")
            self._show(f"tempo/transport not sent: {code}: {message}")

    def _song_changed(self) -> None:
        # Live calls listeners in the middle of its own changes: only note it, send on the tick.
        self._daw_dirty = True

    def _separation_queued(self, target: ClipTarget, args: tuple[OscArg, ...]) -> None:
        job_id = str(args[0]) if args else ""
        self._jobs[job_id] = target
        self._show(f"separating '{target.clip_name}': queued")

    def _generation_queued(self, label: str, args: tuple[OscArg, ...]) -> None:
        job_id = str(args[0]) if args else ""
        if job_id in self._landed:
            return  # already done and placed: its job.done beat the reply
        self._generating[job_id] = label
        self._show(f"generating '{label}': queued")

    def _stream_started(self, args: tuple[OscArg, ...], tiered: bool = False) -> None:
        """The stream runs: show the exact round trip to type into Live's Track Delay.

        A Remote Script cannot set it: Live's object model has no track delay (the Track class of
        Live 11 and 12 lists none; the set file's TrackDelay is not exposed).
        """
        round_trip, latency, _, frames, sample_rate = (list(args) + [None] * 5)[:5]
        # Then the reply has the tier, and both the device, its channels and the output device; an
        # older daemon sends fewer (none of them, or no output device).
        device, inputs, outputs, output_device = (list(args[6 if tiered else 5:]) + [None] * 4)[:4]
        where = ""
        if device is not None and output_device not in (None, device):
            where = f" (in {inputs!s} on {device!s}, out {outputs!s} on {output_device!s})"
        elif device is not None:
            where = f" on {device!s} (in {inputs!s}, out {outputs!s})"
        text = f"live stems running{where}: latency {_number(latency)} ms, round trip {_number(round_trip, 1)} ms"
        self._show(text + _track_delay(round_trip, frames, sample_rate))

    def _stream_latency(self, args: tuple[OscArg, ...]) -> None:
        """The stream's compute budget grew while running: the Track Delay to type in changed."""
        round_trip, latency, frames, sample_rate = (list(args) + [None] * 4)[:4]
        text = f"live stems latency grew to {_number(latency)} ms, round trip {_number(round_trip, 1)} ms"
        self._show(text + _track_delay(round_trip, frames, sample_rate))

    def _stream_error(self, what: str) -> Callable[[str, str], None]:
        return lambda code, message: self._show(f"live stems {what}: {code}: {message}")

    def _on_event(self, name: str, args: tuple[OscArg, ...]) -> None:
        """An event from the daemon (ours, or any, since the event socket is registered)."""
        if name.startswith("job."):
            self._on_job_event(name, args)
        elif name == "stream.started":
            self._stream_started(args)
        elif name == "stream.latency":
            self._stream_latency(args)
        elif name == "stream.stopped":  # late_hops, xruns, audio_lost
            self._stream_stopped(args, lost_at=2)
        elif name == "stream.cancelled":  # start: a stop (from any client) cancelled a start under way
            self._stream_stopped(args[:1], cancelled_at=0)
        elif name == "stream.stalled":  # seconds, device
            device = args[1] if len(args) > 1 else "the audio device"
            self._show(f"live stems: {device!s} delivers no audio (unplugged? asleep?); they go on when it is back")
        elif name == "stream.resumed":
            self._show("live stems: the audio device delivers again")
        elif name == "stream.no_signal":  # seconds, device, inputs
            seconds, device, inputs = (list(args) + [None, "the audio device", "?"])[:3]
            self._show(
                f"live stems: no signal yet on {device!s} input {inputs!s} (all 0s for {_number(seconds)} s): route "
                "your audio there; on a Mac, allow the daemon's app to use the Microphone (System Settings > "
                "Privacy & Security)"
            )
        elif name == "stream.signal":
            inputs = args[2] if len(args) > 2 else "?"
            self._show(f"live stems: a signal on input {inputs!s}")
        elif name == "daemon.stopping":
            self._registered = False
            self._next_register = time.monotonic() + RECONNECT_SECONDS
            self._told_offline = True
            reason = args[0] if args else "shutdown"
            self._show(f"the daemon is stopping ({reason!s}); Flowstate reconnects when it is back (`flowstate up`)")

    def _on_job_event(self, name: str, args: tuple[OscArg, ...]) -> None:
        job_id = str(args[0]) if args else ""
        if job_id in self._jobs:
            self._on_separation_event(name, job_id, args)
        elif name == "job.done":
            self._on_job_done(job_id, args[1] if len(args) > 1 else "")
        elif job_id in self._generating:
            self._on_generation_event(name, job_id, args)
        # else: someone else's job, or one of ours already finished (events come twice)

    def _on_separation_event(self, name: str, job_id: str, args: tuple[OscArg, ...]) -> None:
        target = self._jobs[job_id]
        if name == "job.progress":
            fraction = args[1] if len(args) > 1 and isinstance(args[1], (int, float)) else 0.0
            percent = round(fraction * 100)
            if self._percent.get(job_id) != percent:  # each event arrives on both sockets
                self._percent[job_id] = percent
                self._show(f"separating '{target.clip_name}': {percent}%")
            return
        del self._jobs[job_id]
        self._percent.pop(job_id, None)
        if name == "job.done":
            self._place(target, args[1] if len(args) > 1 else "")
        elif name == "job.failed":
            code, message = (list(args[1:]) + ["", ""])[:2]
            self._show(f"separating '{target.clip_name}' failed: {code!s}: {message!s}")
        else:
            self._show(f"separating '{target.clip_name}' was canceled")

    def _on_generation_event(self, name: str, job_id: str, args: tuple[OscArg, ...]) -> None:
        """Progress and failures of this script's own generate jobs (job.done: `_on_job_done`)."""
        label = self._generating[job_id]
        if name == "job.progress":
            fraction = args[1] if len(args) > 1 and isinstance(args[1], (int, float)) else 0.0
            percent = round(fraction * 100)
            if self._percent.get(job_id) != percent:
                self._percent[job_id] = percent
                self._show(f"generating '{label}': {percent}%")
            return
        del self._generating[job_id]
        self._percent.pop(job_id, None)
        if name == "job.failed":
            code, message = (list(args[1:]) + ["", ""])[:2]
            self._show(f"generating '{label}' failed: {code!s}: {message!s}")
        elif name == "job.canceled":
            self._show(f"generating '{label}' was canceled")

    def _on_job_done(self, job_id: str, result_text: OscArg) -> None:
        """Any finished job that is not our separation: a generated loop (anyone's) lands, once."""
        try:
            result = json.loads(str(result_text))
        except json.JSONDecodeError:
            return
        if not isinstance(result, dict) or result.get("kind") != GENERATE_KIND or job_id in self._landed:
            return
        self._landed[job_id] = None
        while len(self._landed) > MAX_REMEMBERED_JOBS:
            del self._landed[next(iter(self._landed))]
        ours = self._generating.pop(job_id, None) is not None
        self._percent.pop(job_id, None)
        path, track_name = str(result.get("path") or ""), str(result.get("track_name") or "")
        track_name = track_name or os.path.splitext(os.path.basename(path))[0] or "Generated"
        if not path:
            self._show(f"generated '{track_name}' finished without a file: {str(result_text)[:200]}")
        elif PLACE_GENERATED_LOOPS:
            self._land_loop(track_name, path, result.get("tempo"))
        elif ours:
            self._show(f"generated '{track_name}': {path}")

    def _land_loop(self, track_name: str, path: str, tempo: object) -> None:
        """A new audio track with the loop, where the user is looking now."""
        song = self._c.song()
        try:  # the job is already marked as landed (its job.done comes twice): every failure names the file
            target = loop_target(song, _application())
            missing = missing_loop_api(song, target)
            if missing is not None:
                raise MissingApi(missing)
            place_loop(song, target, track_name, path)
        except MissingApi as err:
            self._show(
                f"generated '{track_name}' is at {path}, but this Live has no {err.call} "
                f"({LIVE_WITH_AUDIO_CLIP_IMPORT} have it): drag it in from the browser"
            )
            return
        except Exception as err:  # noqa: BLE001 - Live refused the clip (its message says why); the file is kept
            self._log(f"generated '{track_name}' not placed: {traceback.format_exc()}")
            self._show(f"generated '{track_name}' not placed: {type(err).__name__}: {err} (the file: {path})")
            return
        note = ""
        if isinstance(tempo, (int, float)) and abs(float(tempo) - float(song.tempo)) > 0.005:
            note = f"; made at {float(tempo):g} BPM, the set is at {float(song.tempo):g} BPM"
        self._show(f"added '{track_name}' ({target.where}){note}")

    def _place(self, target: ClipTarget, result_text: OscArg) -> None:
        """Stems are on disk: one new track per stem, where the clip was."""
        try:
            result = json.loads(str(result_text))
        except json.JSONDecodeError:
            result = None
        paths = result.get("paths") if isinstance(result, dict) else None
        if not isinstance(paths, dict) or not paths:
            self._show(f"separating '{target.clip_name}' finished without stem files: {str(result_text)[:200]}")
            return
        song = self._c.song()
        missing = missing_api(song, target)
        if missing is not None:
            self._show(
                f"stems of '{target.clip_name}' are in {stems_folder(paths)}, but this Live has no {missing} "
                f"({LIVE_WITH_AUDIO_CLIP_IMPORT} have it): drag them in from the browser"
            )
            return
        report = place_stems(song, target, {str(stem): str(path) for stem, path in paths.items()})
        for stem, why in report.failed:
            self._log(f"stem {stem} of '{target.clip_name}' not placed: {why}")
        if report.failed:
            stem, why = report.failed[0]
            self._show(
                f"added {len(report.created)} of {len(paths)} stems of '{target.clip_name}'; "
                f"{stem}: {why} (files in {stems_folder(paths)})"
            )
        elif report.unaligned:
            for stem, why in report.unaligned:
                self._log(f"stem {stem} of '{target.clip_name}': Live refused the clip's {why}")
            stem, why = report.unaligned[0]
            self._show(
                f"added {', '.join(report.created)} for '{target.clip_name}' ({target.where}), but Live refused "
                f"the clip's {why} on {stem}: set it on the stems by hand to keep them in step"
            )
        else:
            self._show(f"added {', '.join(report.created)} for '{target.clip_name}' ({target.where})")

    # -- Live's status bar and log ---------------------------------------------------------------

    def _show(self, text: str) -> None:
        self._c.show_message(PREFIX + text)

    def _log(self, text: str) -> None:
        self._c.log_message(PREFIX + text)


def _ignore_reply(args: tuple[OscArg, ...]) -> None:
    """For requests whose reply needs no action (the state was sent; errors still count)."""


def _ignore_error(code: str, message: str) -> None:
    """For the unregister sent while Live unloads the script: nobody is left to tell."""
