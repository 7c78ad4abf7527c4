"""`flowstate mcp`: the command registry as Model Context Protocol tools, over stdio or streamable HTTP.

One tool per registry command, like every other wire: the tool's name is the command's name (the MCP
tool-name rules allow letters, digits, `_`, `-` and `.`), its description the command's help, its
input schema generated from the command's `Arg`s (types, ranges, choices, defaults, help). A call goes
to the running daemon over ZeroMQ, exactly as `flowstate send` does (same endpoint, from the same
config): this process never starts a daemon of its own. A daemon's error reply becomes a tool result
with `isError` naming its code and message; no daemon becomes one saying to start it with
`flowstate up`. A job command follows its job's events and reports them as MCP progress
notifications until the job ends, unless the call says `wait: false`.

Annotations are hints for the host: read-only queries, destructive commands (stop, cancel, overwrite
a file of the same name), and `openWorldHint` plus a sentence in the description for the commands a
paid cloud tier may run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError

from bridge import __version__
from bridge.client import ANSWER_SECONDS, AsyncClient, request_endpoint
from bridge.commands import DEADLINE_ARGS, REQUEST_ID, iter_commands, lookup
from bridge.config import Config
from bridge.errors import BridgeError, UnknownCommand
from bridge.protocol import Arg, CommandSpec

log = logging.getLogger(__name__)

# What the host reads before the tools: how to use them together.
INSTRUCTIONS = (
    "Flowstate Bridge runs AI audio engines beside a DAW (live stems, file jobs: stem separation, "
    "generation, transcription, speech; sample search). Every tool is one daemon command; `commands` "
    "describes them all. Job tools follow the job and report progress until it ends (pass wait=false to "
    "get the job id at once, then use job.status). Paths must lie inside the daemon's paths.roots."
)

# Queries (`read_only=True` where the command is declared) change nothing in the daemon or on disk.
# Changes that undo nothing: a setting set again to the same value, an index refreshed, a listener added.
ADDITIVE = frozenset({"register", "stream.start", "stream.set", "fx.set", "daw.set", "samples.index"})
# Calling again with the same arguments changes nothing more.
IDEMPOTENT = frozenset({
    "register", "unregister", "stream.set", "fx.set", "daw.set", "stream.stop", "job.cancel", "samples.index",
})
# Every other command is destructive (the MCP default): stream.stop and job.cancel stop work (a canceled
# job's partial outputs are removed), unregister drops a listener, and the file jobs replace an earlier
# file of the same name.

CLOUD_NOTE = (
    " May run on a paid cloud tier (your self-hosted server, Replicate, Hugging Face, Workers AI) when its "
    "token is configured: the router picks by deadline, speed and cost within router.monthly_budget_usd "
    "(the job's result names the tier and its cost)."
)
# Commands whose text embeddings may run on Workers AI (samples.tier; bridge/embed_tier.py): no deadline
# arguments, yet a paid cloud tier.
EMBEDDINGS_ON_CLOUD = frozenset({"classify", "samples.search"})
EMBEDDINGS_NOTE = (
    " Its text embeddings may run on Workers AI (paid per token, within router.monthly_budget_usd) as "
    "samples.tier says; the reply names the tier and its cost."
)

WAIT = Arg(
    "wait", bool,
    "Follow the job, reporting its progress, and return its result (false: return the job id at once; "
    "job.status follows it).",
    default=True,
)

# An Arg's bounds by their JSON Schema names.
_SCHEMA_KEYS = {"min": "minimum", "max": "maximum", "choices": "enum"}

_JSON_TYPES: dict[type, Any] = {
    int: "integer",
    float: "number",
    str: "string",
    bool: "boolean",
    dict: "object",
    list: "array",
    object: ["number", "boolean", "string"],
}


def starts_job(spec: CommandSpec) -> bool:
    """A job command replies at once with a job id; it is the one that takes a request id."""
    return any(arg is REQUEST_ID for arg in spec.args)


def may_use_cloud(spec: CommandSpec) -> bool:
    """The router may send it to a cloud tier: it takes the deadline arguments the router reads, or its
    embeddings may run on Workers AI."""
    return all(arg in spec.args for arg in DEADLINE_ARGS) or spec.name in EMBEDDINGS_ON_CLOUD


def cloud_note(spec: CommandSpec) -> str:
    """What its description says about paid cloud tiers, if anything."""
    if spec.name in EMBEDDINGS_ON_CLOUD:
        return EMBEDDINGS_NOTE
    return CLOUD_NOTE if may_use_cloud(spec) else ""


def arg_schema(arg: Arg) -> dict[str, Any]:
    """The JSON Schema of one argument: type, range, choices, default and help."""
    kind = _JSON_TYPES[arg.type]
    schema: dict[str, Any] = {"type": kind, "description": arg.help}
    if arg.type is list:
        schema["items"] = {"type": "string"}
    schema.update({_SCHEMA_KEYS[name]: value for name, value in arg.limits().items()})
    if not arg.required:
        if arg.default is None:
            # JSON null means "use the default" on every wire.
            schema["type"] = [*(kind if isinstance(kind, list) else [kind]), "null"]
        schema["default"] = arg.default
    return schema


def input_schema(spec: CommandSpec) -> dict[str, Any]:
    """The tool's input schema, generated from the command's arguments (plus `wait` for a job)."""
    args = list(spec.args)
    if starts_job(spec):
        if any(arg.name == WAIT.name for arg in args):
            raise ValueError(f"{spec.name}: an argument named {WAIT.name!r} would hide the MCP tool's own")
        args.append(WAIT)
    return {
        "type": "object",
        "properties": {arg.name: arg_schema(arg) for arg in args},
        "required": [arg.name for arg in args if arg.required],
        "additionalProperties": False,
    }


def tool_annotations(spec: CommandSpec) -> types.ToolAnnotations:
    read_only = spec.read_only
    return types.ToolAnnotations(
        title=spec.name,
        read_only_hint=read_only,
        destructive_hint=None if read_only else spec.name not in ADDITIVE,
        idempotent_hint=True if read_only else spec.name in IDEMPOTENT,
        open_world_hint=may_use_cloud(spec),
    )


JOB_NOTE = (
    " As an MCP tool it follows the job, reporting progress, and returns the job's result (wait=false: the "
    "job id at once)."
)


def tool(spec: CommandSpec) -> types.Tool:
    description = spec.help + (JOB_NOTE if starts_job(spec) else "") + cloud_note(spec)
    return types.Tool(
        name=spec.name, description=description, input_schema=input_schema(spec), annotations=tool_annotations(spec)
    )


def tools(specs: Iterable[CommandSpec] | None = None) -> list[types.Tool]:
    """Every registry command as a tool, in the registry's order."""
    return [tool(spec) for spec in (iter_commands() if specs is None else specs)]


def _result(value: Any, *, is_error: bool = False) -> types.CallToolResult:
    text = json.dumps(value, indent=2, default=str)
    return types.CallToolResult(
        content=[types.TextContent(text=text)], structured_content=value, is_error=is_error
    )


def _error(code: str, message: str, **extra: Any) -> types.CallToolResult:
    """An error the model can read and act on: `code: message` as text, the fields as structure."""
    result = _result({"error": {"code": code, "message": message}, **extra}, is_error=True)
    result.content = [types.TextContent(text=f"{code}: {message}")]
    return result


class Tools:
    """The tool calls of one `flowstate mcp` process: each one a request to the running daemon."""

    def __init__(self, config: Config) -> None:
        self.endpoint = request_endpoint(config)
        self.call_timeout_seconds = config.mcp.call_timeout_seconds
        self.job_idle_timeout_seconds = config.mcp.job_idle_timeout_seconds
        self._tools = tools()

    async def list_tools(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=self._tools)

    async def call_tool(self, ctx: ServerRequestContext[Any],
                        params: types.CallToolRequestParams) -> types.CallToolResult:
        try:
            spec = lookup(params.name)
        except UnknownCommand as err:
            # The MCP spec answers an unknown tool with a protocol error, not a tool result.
            raise MCPError(code=types.INVALID_PARAMS, message=err.message) from None
        try:
            args = dict(params.arguments or {})
            wait = starts_job(spec) and WAIT.coerce(args.pop(WAIT.name, None), spec.name)
            # A fresh socket per call: the events of its jobs come back on it and nowhere else.
            async with AsyncClient(self.endpoint, ANSWER_SECONDS) as client:
                # No daemon is said in seconds; a busy one (stream.start loading a model) is waited for.
                reply = await client.call(spec.name, args, patience_seconds=self.call_timeout_seconds)
                if not wait:
                    return _result(reply)
                return await self._follow(ctx, client, spec, reply)
        except BridgeError as err:  # the daemon's error reply, a bad `wait`, no daemon (unavailable)
            return _error(err.code, err.message)

    async def _follow(
        self, ctx: ServerRequestContext[Any], client: AsyncClient, spec: CommandSpec, reply: dict[str, Any]
    ) -> types.CallToolResult:
        job_id = reply["id"]
        if not reply.get("created", True):
            # The job of an earlier request with this request_id: its events go to that requester.
            job = await client.call("job.status", {"id": job_id})
            if job["state"] in ("done", "failed", "canceled"):
                return _ended(spec, job_id, job["state"], job.get("result"), job.get("error") or {})
            return _result({**job,
                            "note": "started by an earlier request with this request_id; follow it with job.status"})
        reported = -1.0

        async def on_event(name: str, data: dict[str, Any]) -> None:
            nonlocal reported
            fraction = data.get("fraction")
            # MCP progress must increase with every notification; a job repeats a fraction when it has
            # other news (its route, a stage), so only a higher fraction is reported.
            if name != "job.progress" or not isinstance(fraction, (int, float)) or fraction <= reported:
                return
            reported = float(fraction)
            stage = f": {data['stage']}" if isinstance(data.get("stage"), str) else ""
            # A no-op unless the host asked for progress (a progress token in the request).
            await ctx.session.report_progress(reported, 1.0, f"{spec.name} {job_id}{stage}")

        final = (await client.wait_jobs([job_id], on_event, self.job_idle_timeout_seconds))[job_id]
        state = final["event"].removeprefix("job.")
        return _ended(spec, job_id, state, final.get("result"), final)


def _ended(spec: CommandSpec, job_id: str, state: str, result: Any, error: dict[str, Any]) -> types.CallToolResult:
    """A finished job as a tool result: done, or an error naming the failure's code (or canceled)."""
    if state == "done":
        return _result({"id": job_id, "state": state, "result": result})
    if state == "failed":
        return _error(str(error.get("code", "internal")), str(error.get("message", "")), id=job_id, state=state)
    return _error("canceled", f"{spec.name}: job {job_id} was canceled", id=job_id, state=state)


def build_server(config: Config) -> Server[Any]:
    """The MCP server: tools/list and tools/call, derived from the registry."""
    handlers = Tools(config)
    return Server(
        "flowstate",
        version=__version__,
        title="Flowstate Bridge",
        instructions=INSTRUCTIONS,
        on_list_tools=handlers.list_tools,
        on_call_tool=handlers.call_tool,
    )


async def serve_stdio(config: Config) -> None:
    """Serve one host over this process's stdin and stdout (what Claude Desktop launches)."""
    from mcp.server.stdio import stdio_server

    server = build_server(config)
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def serve_http(config: Config, host: str, port: int) -> None:
    """Serve streamable HTTP at http://<host>:<port>/mcp until interrupted (loopback by default)."""
    import uvicorn

    server = build_server(config)
    app = server.streamable_http_app(host=host)
    log.info("MCP over streamable HTTP at http://%s:%d/mcp (daemon at %s)", host, port, request_endpoint(config))
    # uvicorn's own choice on Windows is the proactor loop, which the daemon's ZeroMQ client cannot
    # use (it watches sockets with add_reader): bridge.transports.zmq.new_event_loop, a selector loop.
    uvicorn.run(app, host=host, port=port, log_level=config.daemon.log_level.lower(), lifespan="on",
                loop="bridge.transports.zmq:new_event_loop")

