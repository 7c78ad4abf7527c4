"""THE command registry: every command the daemon understands, declared once.

Each declaration names the command, its typed arguments (defaults, ranges, help) and its handler.
OSC addresses (`/flow/<name with slashes>`), ZeroMQ `cmd` names, MIDI mapping targets, the CLI
(`flowstate send`, `flowstate commands`) and the README's protocol table are derived from here.
Adding a command is one edit: a decorated handler below; a command that runs as a background job is
one `job_command(...)` declaration (its check and its job handler), which gives the submit path and
the job kind's handler (`job_handlers`) as well.

Handlers receive a `CallContext` and the validated arguments as keywords and return a dict (the
result). Slow work does not belong in a handler: it goes to a job or a worker thread.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from inspect import iscoroutinefunction
from typing import TYPE_CHECKING, Any

from bridge import __version__
from bridge.ask import Interpreter, Vocabulary
from bridge.config import Config
from bridge.engine_job import JobDeps
from bridge.errors import BadRequest, BridgeError, UnknownCommand
from bridge.generate import CLOUD_FAMILIES as GENERATE_CLOUD_FAMILIES
from bridge.generate import TASK as GENERATE_TASK
from bridge.generate import GenerateJob
from bridge.generate import check_request as check_generate
from bridge.jobs import JobHandler
from bridge.licences import check_job, describe
from bridge.paths import PathPolicy
from bridge.protocol import (
    Arg,
    CallContext,
    CommandSpec,
    EventSpec,
    Handler,
    Request,
    Result,
    path_to_name,
    quote_name,
)
from bridge.router import Router, cloud_only
from bridge.samples import IndexJob, SampleLibrary
from bridge.samples import check_request as check_samples_index
from bridge.separate import SeparateJob
from bridge.separate import check_request as check_separate
from bridge.speech import CHATTERBOX, SpeechJob
from bridge.speech import check_request as check_tts
from bridge.transcribe import TranscribeJob
from bridge.transcribe import check_request as check_transcribe
from bridge.voice import TASK as VOICE_TASK
from bridge.voice import VoiceJob
from bridge.voice import check_request as check_voice
from engines.cloud.base import Tier

if TYPE_CHECKING:
    from bridge.services import Services

COMMANDS: dict[str, CommandSpec] = {}


def command(
    name: str, *args: Arg, help: str, returns: tuple[str, ...] = (), examples: tuple[str, ...] = (),
    read_only: bool = False,
) -> Callable[[Handler], Handler]:
    """Declare a command: `@command("ping", help=..., returns=("reply", "version"))`.

    `examples`: a few ways a producer might say it ("mute the vocals"), which `ask` matches sentences with.
    `read_only`: a query, which changes nothing in the daemon or on disk.
    """

    def register(handler: Handler) -> Handler:
        if name in COMMANDS:
            raise ValueError(f"command {name!r} declared twice")
        COMMANDS[name] = CommandSpec(
            name=name,
            help=help,
            handler=handler,
            args=args,
            returns=returns,
            is_async=iscoroutinefunction(handler),
            examples=examples,
            read_only=read_only,
        )
        return handler

    return register


def lookup(name: str) -> CommandSpec:
    """The spec for a command name, or UnknownCommand naming the closest matches."""
    spec = COMMANDS.get(name)
    if spec is None:
        import difflib

        # A client's name is quoted only in part: a 1 MB name must not come back or be logged whole.
        close = difflib.get_close_matches(name, list(COMMANDS), n=3) if len(name) <= 64 else []
        hint = f"; did you mean {', '.join(close)}?" if close else "; `commands` lists them"
        raise UnknownCommand(f"unknown command {quote_name(name)}{hint}")
    return spec


def lookup_address(address: str) -> CommandSpec:
    """The spec for an OSC address such as `/flow/stems/separate`."""
    if not address.startswith("/flow/") or len(address) <= len("/flow/"):
        raise UnknownCommand(f"unknown OSC address {quote_name(address)}: commands live under /flow/")
    try:
        return lookup(path_to_name(address[len("/flow/") :]))
    except UnknownCommand as err:
        raise UnknownCommand(f"unknown OSC address {quote_name(address)}: {err.message}") from None


def iter_commands() -> Iterator[CommandSpec]:
    return iter(sorted(COMMANDS.values(), key=lambda spec: spec.name))


# -- events --------------------------------------------------------------------------------------

EVENTS: dict[str, EventSpec] = {
    spec.name: spec
    for spec in (
        EventSpec("job.progress", ("id", "fraction"), "A job advanced; fraction in [0, 1]."),
        EventSpec("job.done", ("id", "result"), "A job finished; result is a JSON object."),
        EventSpec("job.failed", ("id", "code", "message"), "A job failed with a Protocol v1 code."),
        EventSpec("job.canceled", ("id",), "A job was canceled; the outputs it had written were removed."),
        EventSpec("daemon.stopping", ("reason",), "The daemon is shutting down; reconnect when it is back."),
        EventSpec(
            "stream.started",
            ("round_trip_ms", "latency_ms", "stems", "round_trip_frames", "sample_rate", "device", "inputs", "outputs",
             "output_device"),
            "A live stream started; type round_trip_ms (round_trip_frames at sample_rate) into your DAW's "
            "delay compensation. It reads the device's inputs (e.g. \"1-2\") and writes its outputs (\"3-4\") "
            "on output_device (the same device unless stream.output_device names another).",
        ),
        EventSpec(
            "stream.latency",
            ("round_trip_ms", "latency_ms", "round_trip_frames", "sample_rate", "budget_ms", "reason"),
            "The live stream's compute budget grew (stream.budget_grow) or its hop climbed (stream.hop_climb) while "
            "running: from now on its output is "
            "round_trip_ms late; update your DAW's delay compensation.",
        ),
        EventSpec("stream.stopped", ("late_hops", "xruns", "audio_lost"),
                  "The live stream stopped. `audio_lost`: empty, or why no stream can open until the daemon "
                  "restarts (PortAudio did not let go of the device)."),
        EventSpec("stream.cancelled", ("start",),
                  "stream.stop cancelled a stream.start still under way (`start`: its model, devices and phase, "
                  "e.g. \"htdemucs on the default audio device (loading htdemucs, 40 s so far)\"): no stream "
                  "starts from it, and that start's own reply is the error saying so."),
        EventSpec("stream.stalled", ("seconds", "device"),
                  "The audio device has delivered nothing for `seconds` (unplugged, the computer asleep, taken by "
                  "another app), or nothing at all in the `seconds` since the stream started: the stream runs on, "
                  "silent, until it delivers (stream.resumed) or stream.stop."),
        EventSpec("stream.resumed", ("seconds", "device"), "The stalled audio device delivers again, after `seconds`."),
        EventSpec("stream.no_signal", ("seconds", "device", "inputs"),
                  "Every sample on the stream's inputs (e.g. \"1-2\") has been exactly 0 since it started, for "
                  "`seconds`: nothing is routed there yet, or (macOS) the daemon may not use the microphone, "
                  "which makes every input silent. Once per stream; stream.signal when a signal comes."),
        EventSpec("stream.signal", ("seconds", "device", "inputs"),
                  "A signal on the inputs that stream.no_signal said were silent, after `seconds` of silence."),
        EventSpec("stream.error", ("tier", "code", "message"),
                  "The live stream lost its tier (the self-hosted server's connection): it plays the dry input at "
                  "the same latency and connects again every stream.reconnect_seconds until stream.stop."),
        EventSpec("stream.reconnected", ("tier",), "The live stream's tier is back: wet again after its latency."),
    )
}


# -- core commands -------------------------------------------------------------------------------


@command(
    "ping",
    examples=("is the bridge alive", "are you listening", "hello, anyone home?", "check the connection"),
    read_only=True,
    help="Check the daemon is alive; replies pong and the version.", returns=("reply", "version"),
)
def ping(ctx: CallContext) -> Result:
    return {"reply": "pong", "version": __version__}


@command(
    "status",
    examples=("what is flowstate up to", "show the daemon status and uptime", "which ports is it listening on",
              "what is running right now"),
    read_only=True,
    help="What the daemon is doing: version, endpoints, listeners, uptime; the live stems (running, or starting, "
         "with the round trip and model) and how many jobs are in each state.",
)
def status(ctx: CallContext) -> Result:
    runtime = ctx.services.runtime
    streams = ctx.services.streams
    stream = streams.stream
    live: dict[str, Any] = {"running": False}
    if stream is not None and stream.running:
        live = {"running": True, "model": stream.settings.model, "round_trip_ms": stream.round_trip_ms}
    if (starting := streams.starting()) is not None:
        live["starting"] = starting
    return {
        "version": __version__,
        "pid": os.getpid(),
        "uptime_seconds": round(time.monotonic() - runtime.started_at, 3),
        "endpoints": runtime.endpoints(),
        "listeners": [f"{host}:{port}" for host, port in ctx.services.hub.listeners()],
        "in_flight": runtime.in_flight(),
        "commands": len(COMMANDS),
        "stream": live,
        "jobs": _job_counts(ctx),
    }


def _job_counts(ctx: CallContext) -> dict[str, int] | None:
    """How many jobs are in each state; None before the job store opens (or after it closed)."""
    store = ctx.services.job_store
    return None if store is None or store.closed else store.counts()


@command(
    "register",
    Arg("port", int, "UDP port on the sender's host that should receive events.", min=1, max=65535),
    help="Add (sender's host, port) as a listener: it gets every event and copies of its host's replies. "
    "Register again within ttl_seconds (daemon.listener_ttl_seconds) to keep it; only the registering "
    "socket or the listener itself may unregister it.",
    returns=("host", "port", "listeners", "ttl_seconds", "version"),
)
def register(ctx: CallContext, port: int) -> Result:
    host = _listener_host(ctx)
    hub = ctx.services.hub
    owner, owner_text = _owner(ctx)
    added = hub.register(host, port, owner, owner_text)
    # The daemon's version: a client installed from another release (Live's Remote Script) says so.
    return {"host": host, "port": port, "added": added, "listeners": len(hub.listeners()),
            "ttl_seconds": hub.ttl_seconds, "version": __version__}


@command(
    "unregister",
    Arg("port", int, "A port given to `register` earlier from this socket.", min=1, max=65535),
    help="Remove (sender's host, port) from the listeners; only the socket that registered it (or the "
    "listener itself) may: others get forbidden.",
    returns=("host", "port", "listeners"),
)
def unregister(ctx: CallContext, port: int) -> Result:
    host = _listener_host(ctx)
    owner, _ = _owner(ctx)
    removed = ctx.services.hub.unregister(host, port, owner)
    return {"host": host, "port": port, "removed": removed, "listeners": len(ctx.services.hub.listeners())}


def _listener_host(ctx: CallContext) -> str:
    if not ctx.origin.host:
        raise BadRequest(f"register: the {ctx.origin.transport} transport did not report the sender's host")
    return ctx.origin.host


def _owner(ctx: CallContext) -> tuple[tuple[Any, ...], str]:
    """The registering socket: transport, host and source port (a ZeroMQ client: its identity).

    Every local process shares 127.0.0.1, so the host alone would let any of them remove
    another's listener.
    """
    origin = ctx.origin
    port = getattr(origin, "port", None)
    if isinstance(port, int):
        return (origin.transport, origin.host, port), f"{origin.transport} {origin.host}:{port}"
    return (origin.transport, *origin.key), f"{origin.transport} client on {origin.host}"


@command(
    "commands",
    Arg("name", str, "Only this command (empty: all of them).", default=""),
    examples=("what can I ask you to do", "list every command", "help"),
    read_only=True,
    help="The command vocabulary: names, OSC addresses, typed arguments and help.",
)
def commands(ctx: CallContext, name: str) -> Result:
    specs = [lookup(name)] if name else list(iter_commands())
    return {
        "commands": [spec.describe() for spec in specs],
        "events": [
            {"name": e.name, "osc": e.osc_address, "fields": list(e.fields), "help": e.help}
            for e in EVENTS.values()
        ],
    }


# -- live stems ------------------------------------------------------------------------------------


@command(
    "stream.start",
    Arg("device", str, "Audio device name (or part of it) or index; empty: stream.device from config.", default=""),
    Arg("model", str, "HTDemucs model or bag (htdemucs, htdemucs_6s) or spleeter:2stems; empty: stream.model.",
        default=""),
    Arg("overrides", dict, "Other stream.* settings for this run, e.g. {\"hop_seconds\": 0.5}.", default=None),
    Arg("tier", str, "Where the windows run: local, selfhosted (your flowstate serve at cloud.selfhosted_url) or "
        "auto (selfhosted when the local load is over stream.max_local_load); empty: stream.tier.", default="",
        choices=("", "local", "selfhosted", "auto")),
    examples=("start live stem separation", "split the input into stems in real time",
        "turn on live stems with htdemucs", "start the stream with another model"),
    help="Start live stems on an audio device; replies once running, with the latency to compensate.",
    returns=("round_trip_ms", "latency_ms", "stems", "round_trip_frames", "sample_rate", "tier", "device", "inputs",
             "outputs", "output_device"),
)
async def stream_start(ctx: CallContext, device: str, model: str, overrides: dict | None, tier: str) -> Result:
    settings = dict(overrides or {})
    if tier:
        settings["tier"] = tier
    if device:
        # An index is a few digits; a longer run of digits is a name (int() refuses over 4300 digits).
        settings["device"] = int(device) if device.isdigit() and len(device) <= 9 else device
    if model:
        settings["model"] = model
    # Loading a model and opening a device take seconds: off the event loop.
    status = await asyncio.to_thread(ctx.services.streams.start, settings)
    ctx.services.hub.publish(
        "stream.started", round_trip_ms=status["round_trip_ms"], latency_ms=status["latency_ms"], stems=status["stems"],
        round_trip_frames=status["round_trip_frames"], sample_rate=status["sample_rate"], device=status["device"],
        inputs=status["inputs"], outputs=status["outputs"], output_device=status["output_device"],
    )
    return status


@command(
    "stream.stop",
    examples=("stop the live stream", "turn off live stems", "end real-time separation"),
    help="Stop the live stream (the model stays loaded for a quick restart), or cancel a stream.start still "
         "loading its model or opening the device. `audio_lost`: null, or why no stream can open until the daemon "
         "restarts (PortAudio did not let go of the device). `cancelled`: null, or the start it cancelled.",
    returns=("running", "audio_lost", "cancelled"),
)
async def stream_stop(ctx: CallContext) -> Result:
    status = await asyncio.to_thread(ctx.services.streams.stop)
    if "late_hops" in status:
        # "" rather than null: the Max device routes this event, and OSC's nil type tag is one that
        # OSC readers often do not take (Pd's oscparse: pure-data/pure-data#2409).
        ctx.services.hub.publish("stream.stopped", late_hops=status["late_hops"], xruns=status["xruns"],
                                 audio_lost=status["audio_lost"] or "")
    elif status.get("cancelled"):
        # Said to every listener at once: the start's own reply comes only once its load ends.
        ctx.services.hub.publish("stream.cancelled", start=status["cancelled"])
    return status


@command(
    "stream.status",
    examples=("what is the live latency", "is the stream keeping up", "how is live separation doing",
        "are the live stems keeping up"),
    read_only=True,
    help="Latency (ms and frames), compute per hop, load, late hops, xruns, device, model, stems, routing; "
         "`starting`: a start under way (model, devices, phase, seconds so far).",
)
def stream_status(ctx: CallContext) -> Result:
    streams = ctx.services.streams
    stream = streams.stream
    status: dict[str, Any] = {"running": False} if stream is None else stream.status()
    if (starting := streams.starting()) is not None:
        status["starting"] = starting
    # Every stream's windows that went through a shared forward: the device stream's and the audio socket's.
    return {**status, "batchers": ctx.services.streams.batchers.describe()}


@command(
    "stream.set",
    Arg("stem", str, "Stem name, e.g. vocals."),
    Arg("gain_db", float, "Gain in dB; omit or null to keep.", default=None, min=-120.0, max=24.0),
    Arg("mute", bool, "Mute (1) or unmute (0); omit or null to keep.", default=None),
    examples=("mute the drums stem", "unmute the bass", "turn the vocals down 3 dB", "boost the drums by 2 db",
        "bring back the guitar"),
    help="Set a stem's gain and/or mute while the stream runs.",
    returns=("stem", "gain_db", "mute"),
)
def stream_set(ctx: CallContext, stem: str, gain_db: float | None, mute: bool | None) -> Result:
    return ctx.services.streams.running_stream("stream.set").set_stem(stem, gain_db, mute)


@command(
    "fx.set",
    Arg("chain", str, "master, or a stem name."),
    Arg("effect", str, "The effect's name in the chain."),
    Arg("parameter", str, "Parameter name, e.g. room_size or a VST3 parameter."),
    Arg("value", object, "New value; ranges are checked."),
    examples=("set the reverb room size to 0.8 on the vocals", "change the delay mix on the master",
        "turn up the compressor threshold"),
    help="Change an effect parameter while the stream runs (applied at the next block).",
)
def fx_set(ctx: CallContext, chain: str, effect: str, parameter: str, value: object) -> Result:
    stream = ctx.services.streams.running_stream("fx.set")
    return stream.effects.chain(chain).set_parameter(effect, parameter, value)


@command(
    "fx.list",
    examples=("what effects are running", "show the effect chains and their parameters",
        "list the plugins on each stem"),
    read_only=True,
    help="The running stream's effect chains with their parameters, values and ranges.",
)
def fx_list(ctx: CallContext) -> Result:
    return {"chains": ctx.services.streams.running_stream("fx.list").effects.describe()}


# -- the DAW's musical state -----------------------------------------------------------------------


@command(
    "daw.set",
    Arg("tempo", float, "Tempo in BPM; omit or null to keep.", default=None, min=20.0, max=999.0),
    Arg("numerator", int, "Time signature numerator; omit or null to keep.", default=None, min=1, max=99),
    Arg("denominator", int, "Time signature denominator; omit or null to keep.", default=None, min=1, max=64),
    Arg("playing", bool, "Transport running (1) or stopped (0); omit or null to keep.", default=None),
    examples=("set the tempo to 100 bpm", "the song is now in 3/4", "change the bpm to 174",
        "our project tempo is 85", "switch the time signature to 5/4"),
    help="Report the DAW's tempo, time signature and transport (the Live and REAPER scripts send this).",
    returns=("tempo", "numerator", "denominator", "playing"),
)
def daw_set(
    ctx: CallContext, tempo: float | None, numerator: int | None, denominator: int | None, playing: bool | None
) -> Result:
    if denominator is not None and denominator & (denominator - 1):
        raise BadRequest(f"daw.set: denominator {denominator} is not a power of two (1, 2, 4, 8, 16, 32, 64)")
    ctx.services.daw.update(tempo, numerator, denominator, playing)
    return ctx.services.daw.snapshot()


@command(
    "daw.status",
    examples=("what bpm is the song", "what tempo will jobs use", "which time signature are we in",
        "is the transport playing", "what tempo is it at"),
    read_only=True,
    help="The tempo jobs will use (and whether it came from the DAW, MIDI clock or the default), "
    "time signature, transport.",
    returns=("tempo", "tempo_source", "numerator", "denominator", "playing"),
)
def daw_status(ctx: CallContext) -> Result:
    return ctx.services.daw.snapshot()


# -- MIDI ------------------------------------------------------------------------------------------


@command(
    "midi.status",
    examples=("is my midi controller connected", "is midi input working", "show midi mappings and triggers",
        "did the midi notes arrive"),
    read_only=True,
    help="MIDI in: open or not (and why), API, ports, missing inputs, mappings, counts of triggers "
    "(dispatched, debounced, coalesced, errors), the last error, the MIDI clock's tempo.",
)
def midi_status(ctx: CallContext) -> Result:
    return ctx.services.midi.status()


@command(
    "midi.ports",
    examples=("list midi input ports", "which midi devices are there", "what midi controllers do you see"),
    read_only=True,
    help="The MIDI input ports the API sees: names (or parts of them) to put in midi.inputs.",
)
async def midi_ports(ctx: CallContext) -> Result:
    # Listing ports opens a client of the MIDI API: off the event loop.
    api, names = await asyncio.to_thread(ctx.services.midi.input_names)
    return {"api": api, "ports": names}


# -- file jobs -------------------------------------------------------------------------------------

JOB_ID = Arg("id", str, "A job id, as returned by the command that started the job.")
REQUEST_ID = Arg("request_id", str, "Your id for this request: sending it again returns the same job.", default="")
# Every job that a cloud tier can run takes these; the router reads them (bridge/router.py).
DEADLINE_ARGS = (
    Arg("deadline_seconds", float, "Wanted within this many seconds (the router may pick a faster tier); "
        "omit: a background job.", default=None, min=1.0, max=86400.0),
    Arg("deadline_class", str, "realtime (as soon as possible: the fastest tier), interactive (a deadline) "
        "or background; empty: from deadline_seconds.", default="",
        choices=("", "realtime", "interactive", "background")),
)


@command(
    "job.status", JOB_ID,
    examples=("what is the progress of job 0123456789ab", "is job 0123456789ab done yet", "status of that job"),
    read_only=True,
    help="One job: state, progress, result or error, timestamps.",
)
def job_status(ctx: CallContext, id: str) -> Result:
    return ctx.services.job_runner().store.get(id).to_dict()


@command(
    "job.list",
    Arg("state", str, "Only jobs in this state (queued, running, done, failed, canceled); empty: all.", default=""),
    Arg("limit", int, "At most this many, newest first.", default=100, min=1, max=1000),
    examples=("show all jobs", "list the finished jobs", "which jobs are queued", "what jobs have failed"),
    read_only=True,
    help="Jobs, newest first.",
)
def job_list(ctx: CallContext, state: str, limit: int) -> Result:
    jobs = ctx.services.job_runner().store.list(state or None, limit)
    return {"jobs": [job.to_dict() for job in jobs]}


@command(
    "job.cancel", JOB_ID,
    examples=("cancel job 0123456789ab", "abort that job", "stop job 0123456789ab"),
    help="Cancel a job: a queued one at once, a running one when its step in hand is done (a segment of the file: "
    "seconds on a CPU); its partial outputs are removed.",
    returns=("id", "state"),
)
def job_cancel(ctx: CallContext, id: str) -> Result:
    return ctx.services.job_runner().cancel(id).to_dict()


# A job command, declared once with `job_command`: its arguments, how a request is checked (into the
# job's args, defaults filled in), how its handler is built, and, for a model no local engine runs,
# (task, model, what, models key) naming the cloud tiers it needs. The registry entry, the submit
# path, the job-kind -> handler table (`job_handlers`), the CLI (`flowstate send`, `commands`), MCP
# tools, `ask` and the README's protocol table all come from this one declaration.
Check = Callable[[dict[str, Any], "Services"], dict[str, Any]]
BuildHandler = Callable[[JobDeps], JobHandler | None]
CloudOnly = Callable[[dict[str, Any]], tuple[str, str, str, str] | None]


@dataclass(frozen=True)
class JobCommand:
    """A declared job command (`job_command`); its name is also the job's kind."""

    name: str
    check: Check
    job: BuildHandler  # None from it: not on this composition root (samples.index without a library)
    cloud: CloudOnly | None = None
    task: str = ""  # what the tiers call it (router.order.<task>, the self-hosted server's tasks); "": none

    def submit(self, ctx: CallContext, request_id: str = "", **request: object) -> Result:
        """The command's handler: check the request, then queue the job; a commercial project's
        licence policy is checked first (forbidden); a cloud-only model with no configured tier
        that offers it is unavailable, naming what to configure."""
        job_args = self.check(dict(request), ctx.services)
        check_job(self.name, job_args, ctx.services.config)
        cloud = None if self.cloud is None else self.cloud(job_args)
        if cloud is not None:
            task, model, what, key = cloud
            cloud_only(ctx.services.router, task, model, f"{self.name}: {what}", key)
        job, created = ctx.services.job_runner().submit(self.name, job_args, request_id or None, origin=ctx.origin)
        return {"id": job.id, "state": job.state, "created": created}


JOBS: dict[str, JobCommand] = {}


def job_command(
    name: str, *args: Arg, help: str, check: Check, job: BuildHandler, cloud: CloudOnly | None = None,
    task: str = "", examples: tuple[str, ...] = (),
) -> JobCommand:
    """Declare a command that runs as a background job (see `JobCommand`); it replies at once with
    the job id and state. Declare `REQUEST_ID` among `args` (and `DEADLINE_ARGS` when a tier may run it)."""
    declared = JobCommand(name, check, job, cloud, task)
    command(name, *args, help=help, returns=("id", "state"), examples=examples)(declared.submit)
    JOBS[name] = declared
    return declared


def job_handlers(
    config: Config, paths: PathPolicy, router: Router | None = None, tiers: dict[str, Tier] | None = None,
    samples: SampleLibrary | None = None,
) -> dict[str, JobHandler]:
    """Every job kind's handler, built from its declaration; handlers keep their engines warm across
    jobs. `router`/`tiers` None: always local; `samples` None: no samples.index jobs."""
    deps = JobDeps(config, paths, router, tiers or {}, samples)
    for declared in JOBS.values():
        handler = declared.job(deps)
        if handler is not None:
            deps.handlers[declared.name] = handler
    return deps.handlers


job_command(
    "stems.separate",
    Arg("path", str, "The audio file (WAV, FLAC, AIFF, OGG, MP3 …) inside paths.roots."),
    Arg("model", str, "HTDemucs model or bag, spleeter:2stems (local only), or openunmix:umxl / openunmix:umxhq; "
        "empty: separate.model.", default=""),
    Arg("stems", list, "Only these stems, e.g. vocals,drums; empty: all.", default=None),
    Arg("format", str, "Output format; empty: separate.format.", default="", choices=("", "wav", "flac")),
    Arg("out_dir", str, "Output folder inside paths.roots; empty: a stems folder next to the file.", default=""),
    Arg("two_stems", str, "Write this stem and its complement (e.g. vocals + no_vocals); empty: off.", default=""),
    Arg("encoding", str, "Sample encoding; empty: separate.encoding.", default="",
        choices=("", "pcm16", "pcm24", "float")),
    Arg("shifts", int, "Random shifts averaged (quality vs time); omit: separate.shifts.", default=None, min=0, max=10),
    REQUEST_ID,
    *DEADLINE_ARGS,
    examples=("separate this track into stems", "split beat.wav into drums, bass and vocals",
        "extract the vocal from song.flac", "isolate the guitar in take.wav", "remove the vocals from the mix"),
    help="Separate a file into stems as a background job; replies at once with the job id.",
    check=lambda args, services: check_separate(args, services.paths, services.config),
    job=SeparateJob.build,
    task="stems",
)


# -- classification and sample search --------------------------------------------------------------


@command(
    "classify",
    Arg("text", str, "A description, e.g. 'punchy kick drum with 808 sub bass'."),
    Arg("labels", list, "The labels to rank, e.g. drums,bass,vocals (at most 100); omit: samples.labels.",
        default=None),
    Arg("method", str, "embeddings (cosine similarity of sentence embeddings, fast) or nli (zero-shot with an NLI "
        "model, slower, better for arbitrary labels); empty: classify.method.", default="",
        choices=("", "embeddings", "nli")),
    Arg("hypothesis", str, "method=nli: the sentence each label is read in, {} where the label goes, e.g. "
        "'This sound is {}.'; empty: classify.nli_hypothesis.", default=""),
    examples=("classify 'warm analog pad'", "which category fits this description",
        "is 'sub drop' drums, bass or effects", "label this sound description"),
    read_only=True,
    help="Rank labels for a description by meaning, best first: sentence embeddings (cosine scores) or "
    "zero-shot NLI (entailment probabilities that sum to 1).",
    returns=("label", "score", "labels", "scores"),
)
async def classify(ctx: CallContext, text: str, labels: list[str] | None, method: str, hypothesis: str) -> Result:
    library = ctx.services.sample_library()
    chosen = list(ctx.services.config.samples.labels) if labels is None else labels
    # The first call loads the model (seconds); every call runs it: off the event loop.
    return await asyncio.to_thread(library.classify, text, chosen, method or None, hypothesis or None)


@command(
    "classify.audio",
    Arg("path", str, "The clip (WAV, FLAC, AIFF, OGG, MP3 …) inside paths.roots."),
    Arg("top", int, "How many labels, best first.", default=5, min=1, max=50),
    examples=("what does clip.wav sound like", "tag this sample by its sound", "which instruments are in take.wav",
        "listen to loop.wav and name it"),
    read_only=True,
    help="Tag a clip by how it sounds (an Audio Spectrogram Transformer over AudioSet's labels: Drum, "
    "Bass guitar, Singing …): the top labels with scores (independent probabilities), best first, and the "
    "model's licence. Only the first classify.audio_seconds are heard.",
    returns=("label", "score", "labels", "scores"),
)
async def classify_audio(ctx: CallContext, path: str, top: int) -> Result:
    services = ctx.services
    check_job("classify.audio", {}, services.config)  # a commercial project's licence policy, as for jobs

    def tag() -> Result:
        checked, _ = services.paths.audio_file(path, "path", "classify.audio")
        result: Result = services.audio_tagger().tag(checked, top)
        return {**result, **describe("tag", services.config.classify.audio_model)}

    # Checking the file reads it; the first call loads the model (seconds); every call runs it: off the loop.
    return await asyncio.to_thread(tag)


job_command(
    "samples.index",
    Arg("folder", str, "A sample folder inside paths.roots; every audio file below it is indexed."),
    Arg("watch", bool, "Keep it fresh: rescan every samples.watch_interval_seconds; omit: samples.watch.",
        default=None),
    REQUEST_ID,
    examples=("index the samples in ~/Music/Samples", "add my sample folder to the library",
        "scan the drum kits folder and keep watching it", "rescan my sample library"),
    help="Index a sample library (names, tags, duration, audio descriptors, embeddings) as a background job; "
    "only new and changed files are read, deleted ones are dropped. Replies at once with the job id.",
    check=lambda args, services: check_samples_index(args, services.sample_library()),
    job=lambda deps: None if deps.samples is None else IndexJob(deps.samples),
)


@command(
    "samples.search",
    Arg("query", str, "A description, e.g. 'punchy kick' or 'dark evolving pad loop'."),
    Arg("k", int, "How many matches.", default=10, min=1, max=50),
    Arg("tag", str, "Only files carrying this tag: a sound tag (samples.audio_tags: drum, bass guitar ...) or a "
        "word of the name or folders; empty: all.", default=""),
    examples=("find a punchy 808 kick", "search for dark evolving pads", "look for a crisp snare sample",
        "give me 5 vocal chops", "I need a warm bass one-shot"),
    read_only=True,
    help="The indexed samples that best match a description, best first: path, name, score, duration, "
    "tags, sound tags and audio descriptors; with samples.clap, by how they sound as well as by their words.",
)
async def samples_search(ctx: CallContext, query: str, k: int, tag: str) -> Result:
    return await asyncio.to_thread(ctx.services.sample_library().search, query, k, tag)


@command(
    "samples.status",
    examples=("how big is my sample library", "which sample folders are watched",
        "which files were skipped when indexing", "how many files are in the index"),
    read_only=True,
    help="The sample index: files searchable and skipped (with why), folders and whether they are watched, "
    "the model and where it was loaded from, classify's default method and NLI model.",
)
async def samples_status(ctx: CallContext) -> Result:
    return await asyncio.to_thread(ctx.services.sample_library().status)


# -- generation ------------------------------------------------------------------------------------


job_command(
    "generate",
    Arg("prompt", str, "What to make, e.g. 'lofi drums, dusty'; empty: the preset's prompt.", default=""),
    Arg("preset", str, "A name from generate.presets (prompt, bars, ...); empty: none.", default=""),
    Arg("bars", float, "Length in bars at the tempo; omit: the preset's, else generate.default_bars.",
        default=None, min=0.25, max=64.0),
    Arg("seconds", float, "Length in seconds, instead of bars.", default=None, min=0.1, max=300.0),
    Arg("tempo", float, "BPM; omit: the DAW's last reported tempo or MIDI clock, else daw.default_tempo.",
        default=None, min=20.0, max=999.0),
    Arg("seed", int, "The same seed and prompt make the same audio; omit: a random seed (the result says it).",
        default=None, min=0, max=2**31 - 1),
    Arg("melody_path", str, "A clip whose melody to follow (melody models only), inside paths.roots.", default=""),
    Arg("model", str, "A MusicGen hub name or folder, or stable-audio-open (sound effects and loops up to 47 s; "
        "generate.stable_audio_model) or a Stable Audio Open folder, or audiogen (sound effects up to 10 s) or "
        "riffusion (one clip up to 5 s), both on Replicate only; empty: generate.model.", default=""),
    Arg("out_dir", str, "Output folder inside paths.roots; empty: generate.out_dir.", default=""),
    Arg("name", str, "A name for the file and the track; empty: from the preset or the prompt.", default=""),
    Arg("sample_rate", int, "Output sample rate; omit: generate.sample_rate.", default=None, min=8000, max=192000),
    Arg("guidance_scale", float, "Classifier-free guidance (above 1: closer to the prompt); omit: the model's.",
        default=None, min=0.0, max=20.0),
    Arg("temperature", float, "Sampling temperature; omit: the model's.", default=None, min=0.01, max=5.0),
    Arg("top_k", int, "Sample among the k likeliest tokens; omit: the model's.", default=None, min=1, max=2048),
    Arg("steps", int, "Stable Audio Open: denoising steps; omit: generate.stable_audio_steps.", default=None,
        min=1, max=1000),
    Arg("negative_prompt", str, "Stable Audio Open: what to steer away from, e.g. 'low quality'.", default=""),
    REQUEST_ID,
    *DEADLINE_ARGS,
    examples=("generate four bars of lofi drums", "make a chill house loop at 124 bpm",
        "create 8 bars of a deep bassline", "give me a 20 second cinematic riser", "compose an ambient piano loop",
        "make a 30 second drone", "generate the drums preset"),
    help="Generate a loop with MusicGen, Stable Audio Open, AudioGen or Riffusion at the DAW's tempo "
    "as a background job; "
    "replies at once with the job id. "
    "The result names the WAV, its length in bars and seconds, the tempo and where it came from.",
    check=lambda args, services: check_generate(args, services.paths, services.config, services.daw),
    job=GenerateJob.build,
    task=GENERATE_TASK,
    cloud=lambda job: (GENERATE_TASK, job["model"], f"model {job['model']}", job["model"])
    if job["family"] in GENERATE_CLOUD_FAMILIES else None,
)


# -- transcription and speech ----------------------------------------------------------------------


job_command(
    "transcribe",
    Arg("path", str, "The audio file (WAV, FLAC, AIFF, OGG, MP3 …) inside paths.roots."),
    Arg("language", str, "A Whisper language code (en, de, fr …); empty: transcribe.language, else detect.",
        default=""),
    Arg("model", str, "A Whisper size, hub repo id or folder; empty: transcribe.model.", default=""),
    Arg("stem", str, "Transcribe this stem instead of the mix (vocals: lyrics); the file is separated first "
        "with separate.model. Empty: the file as it is.", default=""),
    Arg("formats", list, "Subtitle files to write: srt, vtt; omit: transcribe.formats; empty list: none.",
        default=None),
    Arg("out_dir", str, "Folder for the subtitle files inside paths.roots; empty: next to the file.", default=""),
    REQUEST_ID,
    *DEADLINE_ARGS,
    examples=("transcribe the speech in talk.wav", "get the lyrics of track.mp3",
        "write subtitles for interview.flac", "what words are said in clip.wav"),
    help="Transcribe speech or lyrics with Whisper as a background job; replies at once with the job id. "
    "The result has the text, timed segments, the language and the SRT/VTT paths.",
    check=lambda args, services: check_transcribe(args, services.paths, services.config),
    job=TranscribeJob.build,
    task="transcribe",
)


job_command(
    "tts",
    Arg("text", str, "What to say (at most 10,000 characters)."),
    Arg("voice", str, "A Piper voice name or a path to a .onnx voice, or chatterbox (expressive, on Replicate only); "
        "empty: tts.voice.", default=""),
    Arg("speed", float, "Speaking speed (1: the voice's own).", default=None, min=0.25, max=4.0),
    Arg("sample_rate", int, "Output sample rate; omit: tts.sample_rate.", default=None, min=8000, max=192000),
    Arg("out_dir", str, "Output folder inside paths.roots; empty: tts.out_dir.", default=""),
    Arg("name", str, "The WAV's file name; empty: from the first words of the text.", default=""),
    REQUEST_ID,
    *DEADLINE_ARGS,
    Arg("voice_prompt", str, "voice=chatterbox: a clip (inside paths.roots) whose voice to speak like; empty: "
        "Chatterbox's own voice.", default=""),
    Arg("exaggeration", float, "voice=chatterbox: expressiveness (0.5 neutral); omit: the model's.", default=None,
        min=0.25, max=2.0),
    Arg("cfg_weight", float, "voice=chatterbox: guidance, which also sets the pace (lower: slower); omit: the "
        "model's.", default=None, min=0.2, max=1.0),
    examples=("say 'welcome to the show'", "speak the line 'drop in three'", "read this text aloud",
        "turn this sentence into speech"),
    help="Speak a line with a Piper voice (or Chatterbox on Replicate) into a WAV at the project's rate, as a "
    "background job; replies at once with the job id. The result names the WAV, its length and sample rate.",
    check=lambda args, services: check_tts(args, services.paths, services.config),
    job=SpeechJob.build,
    task="tts",
    cloud=lambda job: ("tts", CHATTERBOX, "voice chatterbox", CHATTERBOX) if job["voice"] == CHATTERBOX else None,
)


# -- voice conversion ------------------------------------------------------------------------------


job_command(
    "voice.convert",
    Arg("path", str, "The vocal clip (WAV, FLAC, AIFF, OGG, MP3 …) inside paths.roots."),
    Arg("voice", str, "The target voice: an https URL of an RVC v2 voice model (.zip with its .pth and .index), "
        "or the name of a voice the Replicate model ships (e.g. Obama)."),
    Arg("pitch", float, "Transpose the converted vocal by this many semitones (12: an octave up).", default=0.0,
        min=-24.0, max=24.0),
    Arg("out_dir", str, "Output folder inside paths.roots; empty: next to the clip.", default=""),
    REQUEST_ID,
    *DEADLINE_ARGS,
    examples=("make vox.wav sound like Obama", "convert my vocal take.wav to another voice",
        "change the singer's voice in lead.wav to drake", "turn the vocal into a different voice an octave down"),
    help="Convert a vocal clip to another voice (RVC, on Replicate only) as a background job; replies at once "
    "with the job id. The result names the WAV (<clip> - <voice>.wav), the voice and its licence.",
    check=lambda args, services: check_voice(args, services.paths, services.config),
    job=VoiceJob.build,
    task=VOICE_TASK,
    cloud=lambda job: (VOICE_TASK, job["voice"], "RVC voice conversion", "rvc"),
)


# -- words ---------------------------------------------------------------------------------------------


@command(
    "ask",
    Arg("text", str, "A sentence, e.g. 'mute the vocals' or 'four bars of dusty lofi drums at 90' (at most 500 "
        "characters)."),
    Arg("run", bool, "Run the command when sure (1); 0: only say what was understood.", default=False),
    help="Map a sentence to a command with its arguments, using the sentence-embeddings model (samples.model) over "
    "the registry's help and examples. Replies with the command line understood, a score and the runner-up; runs it "
    "(the same call as over the wire, same errors and job replies) only with run=1 and when sure, else says what it "
    "needs.",
    returns=("line", "command", "sure", "ran", "needs", "result"),
)
async def ask(ctx: CallContext, text: str, run: bool) -> Result:
    services = ctx.services
    vocabulary = Vocabulary(presets=tuple(services.config.generate.presets))
    interpreter = Interpreter(iter_commands(), services.sample_library().embedder, vocabulary)
    # The first call loads the model (seconds); every call encodes the sentence: off the event loop.
    understood = await asyncio.to_thread(interpreter.understand, text)
    reply: Result = {**understood.to_dict(), "ran": False, "result": None}
    if not run or not understood.sure:
        return reply
    try:
        result = await services.runtime.call(Request(understood.command, understood.args, ctx.origin))
    except BridgeError as err:
        raise type(err)(f"ask ran `{understood.line}`: {err.message}") from err
    return {**reply, "ran": True, "result": result}
