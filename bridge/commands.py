"""THE command registry: every command the daemon understands, declared once.

Each declaration names the command, its typed arguments (defaults, ranges, help) and its handler.
OSC addresses (`/flow/<name with slashes>`), ZeroMQ `cmd` names, MIDI mapping targets, the CLI
(`flowstate send`, `flowstate commands`) and the README's protocol table are derived from here.
Adding a command is one edit: a decorated handler below.

Handlers receive a `CallContext` and the validated arguments as keywords and return a dict (the
result). Slow work does not belong in a handler: it goes to a job or a worker thread.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from inspect import iscoroutinefunction

from bridge import __version__
from bridge.errors import BadRequest, UnknownCommand
from bridge.protocol import Arg, CallContext, CommandSpec, EventSpec, Handler, Result, path_to_name

COMMANDS: dict[str, CommandSpec] = {}


def command(
    name: str, *args: Arg, help: str, returns: tuple[str, ...] = ()
) -> Callable[[Handler], Handler]:
    """Declare a command: `@command("ping", help=..., returns=("reply", "version"))`."""

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
        )
        return handler

    return register


def lookup(name: str) -> CommandSpec:
    """The spec for a command name, or UnknownCommand naming the closest matches."""
    spec = COMMANDS.get(name)
    if spec is None:
        import difflib

        close = difflib.get_close_matches(name, list(COMMANDS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `commands` lists them"
        raise UnknownCommand(f"unknown command {name!r}{hint}")
    return spec


def lookup_address(address: str) -> CommandSpec:
    """The spec for an OSC address such as `/flow/stems/separate`."""
    if not address.startswith("/flow/") or len(address) <= len("/flow/"):
        raise UnknownCommand(f"unknown OSC address {address!r}: commands live under /flow/")
    try:
        return lookup(path_to_name(address[len("/flow/") :]))
    except UnknownCommand as err:
        raise UnknownCommand(f"unknown OSC address {address!r}: {err.message}") from None


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
            "stream.started", ("round_trip_ms", "latency_ms", "stems"),
            "A live stream started; type round_trip_ms into your DAW's delay compensation.",
        ),
        EventSpec("stream.stopped", ("late_hops", "xruns"), "The live stream stopped."),
    )
}


# -- core commands -------------------------------------------------------------------------------


@command("ping", help="Check the daemon is alive; replies pong and the version.", returns=("reply", "version"))
def ping(ctx: CallContext) -> Result:
    return {"reply": "pong", "version": __version__}


@command("status", help="What the daemon is doing: version, endpoints, listeners, uptime.")
def status(ctx: CallContext) -> Result:
    daemon = ctx.daemon
    return {
        "version": __version__,
        "pid": os.getpid(),
        "uptime_seconds": round(time.monotonic() - daemon.started_at, 3),
        "endpoints": daemon.endpoints(),
        "listeners": [f"{host}:{port}" for host, port in daemon.hub.listeners()],
        "in_flight": daemon.in_flight(),
        "commands": len(COMMANDS),
    }


@command(
    "register",
    Arg("port", int, "UDP port on the sender's host that should receive events.", min=1, max=65535),
    help="Add (sender's host, port) as a listener: it gets every event and copies of its host's replies.",
    returns=("host", "port", "listeners"),
)
def register(ctx: CallContext, port: int) -> Result:
    host = _listener_host(ctx)
    added = ctx.daemon.hub.register(host, port)
    return {"host": host, "port": port, "added": added, "listeners": len(ctx.daemon.hub.listeners())}


@command(
    "unregister",
    Arg("port", int, "A port given to `register` earlier from this host.", min=1, max=65535),
    help="Remove (sender's host, port) from the listeners.",
    returns=("host", "port", "listeners"),
)
def unregister(ctx: CallContext, port: int) -> Result:
    host = _listener_host(ctx)
    removed = ctx.daemon.hub.unregister(host, port)
    return {"host": host, "port": port, "removed": removed, "listeners": len(ctx.daemon.hub.listeners())}


def _listener_host(ctx: CallContext) -> str:
    if not ctx.origin.host:
        raise BadRequest(f"register: the {ctx.origin.transport} transport did not report the sender's host")
    return ctx.origin.host


@command(
    "commands",
    Arg("name", str, "Only this command (empty: all of them).", default=""),
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
    Arg("model", str, "HTDemucs model or bag, e.g. htdemucs, htdemucs_6s; empty: stream.model.", default=""),
    Arg("overrides", dict, "Other stream.* settings for this run, e.g. {\"hop_seconds\": 0.5}.", default=None),
    help="Start live stems on an audio device; replies once running, with the latency to compensate.",
    returns=("round_trip_ms", "latency_ms", "stems"),
)
async def stream_start(ctx: CallContext, device: str, model: str, overrides: dict | None) -> Result:
    settings = dict(overrides or {})
    if device:
        settings["device"] = int(device) if device.isdigit() else device
    if model:
        settings["model"] = model
    # Loading a model and opening a device take seconds: off the event loop.
    status = await asyncio.to_thread(ctx.daemon.streams.start, settings)
    ctx.daemon.hub.publish(
        "stream.started", round_trip_ms=status["round_trip_ms"], latency_ms=status["latency_ms"], stems=status["stems"]
    )
    return status


@command("stream.stop", help="Stop the live stream (the model stays loaded for a quick restart).", returns=("running",))
async def stream_stop(ctx: CallContext) -> Result:
    status = await asyncio.to_thread(ctx.daemon.streams.stop)
    if "late_hops" in status:
        ctx.daemon.hub.publish("stream.stopped", late_hops=status["late_hops"], xruns=status["xruns"])
    return status


@command(
    "stream.status",
    help="Latency (ms and frames), compute per hop, load, late hops, xruns, device, model, stems, routing.",
)
def stream_status(ctx: CallContext) -> Result:
    stream = ctx.daemon.streams.stream
    if stream is None:
        return {"running": False}
    return stream.status()


@command(
    "stream.set",
    Arg("stem", str, "Stem name, e.g. vocals."),
    Arg("gain_db", float, "Gain in dB; omit or null to keep.", default=None, min=-120.0, max=24.0),
    Arg("mute", bool, "Mute (1) or unmute (0); omit or null to keep.", default=None),
    help="Set a stem's gain and/or mute while the stream runs.",
    returns=("stem", "gain_db", "mute"),
)
def stream_set(ctx: CallContext, stem: str, gain_db: float | None, mute: bool | None) -> Result:
    return ctx.daemon.streams.running_stream("stream.set").set_stem(stem, gain_db, mute)


@command(
    "fx.set",
    Arg("chain", str, "master, or a stem name."),
    Arg("effect", str, "The effect's name in the chain."),
    Arg("parameter", str, "Parameter name, e.g. room_size or a VST3 parameter."),
    Arg("value", object, "New value; ranges are checked."),
    help="Change an effect parameter while the stream runs (applied at the next block).",
)
def fx_set(ctx: CallContext, chain: str, effect: str, parameter: str, value: object) -> Result:
    stream = ctx.daemon.streams.running_stream("fx.set")
    return stream.effects.chain(chain).set_parameter(effect, parameter, value)


@command("fx.list", help="The running stream's effect chains with their parameters, values and ranges.")
def fx_list(ctx: CallContext) -> Result:
    return {"chains": ctx.daemon.streams.running_stream("fx.list").effects.describe()}


# -- the DAW's musical state -----------------------------------------------------------------------


@command(
    "daw.set",
    Arg("tempo", float, "Tempo in BPM; omit or null to keep.", default=None, min=20.0, max=999.0),
    Arg("numerator", int, "Time signature numerator; omit or null to keep.", default=None, min=1, max=99),
    Arg("denominator", int, "Time signature denominator; omit or null to keep.", default=None, min=1, max=64),
    Arg("playing", bool, "Transport running (1) or stopped (0); omit or null to keep.", default=None),
    help="Report the DAW's tempo, time signature and transport (the Live and REAPER scripts send this).",
    returns=("tempo", "numerator", "denominator", "playing"),
)
def daw_set(
    ctx: CallContext, tempo: float | None, numerator: int | None, denominator: int | None, playing: bool | None
) -> Result:
    if denominator is not None and denominator & (denominator - 1):
        raise BadRequest(f"daw.set: denominator {denominator} is not a power of two (1, 2, 4, 8, 16, 32, 64)")
    ctx.daemon.daw.update(tempo, numerator, denominator, playing)
    return ctx.daemon.daw.snapshot()


@command(
    "daw.status",
    help="The tempo jobs will use (and whether it came from the DAW, MIDI clock or the default), "
    "time signature, transport.",
    returns=("tempo", "tempo_source", "numerator", "denominator", "playing"),
)
def daw_status(ctx: CallContext) -> Result:
    return ctx.daemon.daw.snapshot()


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


@command("job.status", JOB_ID, help="One job: state, progress, result or error, timestamps.")
def job_status(ctx: CallContext, id: str) -> Result:
    return ctx.daemon.job_runner().store.get(id).to_dict()


@command(
    "job.list",
    Arg("state", str, "Only jobs in this state (queued, running, done, failed, canceled); empty: all.", default=""),
    Arg("limit", int, "At most this many, newest first.", default=100, min=1, max=1000),
    help="Jobs, newest first.",
)
def job_list(ctx: CallContext, state: str, limit: int) -> Result:
    jobs = ctx.daemon.job_runner().store.list(state or None, limit)
    return {"jobs": [job.to_dict() for job in jobs]}


@command(
    "job.cancel", JOB_ID,
    help="Cancel a job: a queued one at once, a running one within a second; its partial outputs are removed.",
    returns=("id", "state"),
)
def job_cancel(ctx: CallContext, id: str) -> Result:
    return ctx.daemon.job_runner().cancel(id).to_dict()


@command(
    "stems.separate",
    Arg("path", str, "The audio file (WAV, FLAC, AIFF, OGG, MP3 …) inside paths.roots."),
    Arg("model", str, "HTDemucs model or bag; empty: separate.model.", default=""),
    Arg("stems", list, "Only these stems, e.g. vocals,drums; empty: all.", default=None),
    Arg("format", str, "Output format; empty: separate.format.", default="", choices=("", "wav", "flac")),
    Arg("out_dir", str, "Output folder inside paths.roots; empty: a stems folder next to the file.", default=""),
    Arg("two_stems", str, "Write this stem and its complement (e.g. vocals + no_vocals); empty: off.", default=""),
    Arg("encoding", str, "Sample encoding; empty: separate.encoding.", default="",
        choices=("", "pcm16", "pcm24", "float")),
    Arg("shifts", int, "Random shifts averaged (quality vs time); omit: separate.shifts.", default=None, min=0, max=10),
    REQUEST_ID,
    *DEADLINE_ARGS,
    help="Separate a file into stems as a background job; replies at once with the job id.",
    returns=("id", "state"),
)
def stems_separate(ctx: CallContext, request_id: str, **args: object) -> Result:
    from bridge.separate import KIND, check_request

    daemon = ctx.daemon
    job_args = check_request(args, daemon.paths, daemon.config)
    job, created = daemon.job_runner().submit(KIND, job_args, request_id or None, origin=ctx.origin)
    return {"id": job.id, "state": job.state, "created": created}
