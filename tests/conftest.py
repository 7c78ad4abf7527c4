"""Fixtures that start the real daemon on free loopback ports and talk to it over real sockets."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from pythonosc.osc_message import OscMessage
from pythonosc.tcp_client import SimpleTCPClient
from pythonosc.udp_client import SimpleUDPClient
from zmq.utils.monitor import recv_monitor_message

from bridge.testing import (
    RUN_MARKER_VARIABLE,
    DaemonProcess,
    passthrough_htdemucs_repo,
    processes_started_by,
    stop_processes,
)

# No model hub at test time: weights come from packages and tiny models built in the tests.
# Daemons the tests start inherit this, so a hub name fails at once instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# How long a test waits for a reply it must get: a daemon answers in milliseconds, but on two busy
# cores a worker thread importing torch in the same process can hold it up for seconds.
REPLY_TIMEOUT = 30.0


# -- nothing left running ------------------------------------------------------------------------

# pid -> the test module after which the process was first found still running.
_LEFT_AFTER: dict[int, str] = {}


@pytest.fixture(scope="session", autouse=True)
def no_process_left_running() -> Iterator[str | None]:
    """Fail the run when a process a test started (a daemon, a server, jackd, any child or
    grandchild of this pytest, or an orphan that inherited this run's mark) is still running at
    the end, naming each one and the module it was left over from; then stop them all, so a
    failed run leaves nothing behind either. Yields this run's mark (None: not checked here)."""
    marker = uuid.uuid4().hex
    os.environ[RUN_MARKER_VARIABLE] = marker  # inherited by every process started from now on
    if processes_started_by(os.getpid(), marker) is None:
        warnings.warn("leftover processes are not checked on this platform (no /proc and no ps)", stacklevel=1)
        yield None
        return
    yield marker
    left = processes_started_by(os.getpid(), marker) or []
    if not left:
        return
    stop_processes([process.pid for process in left])
    lines = "\n".join(f"  pid {p.pid} (parent {p.parent_pid}), left over after "
                      f"{_LEFT_AFTER.get(p.pid, 'the last module')}: {p.command[:300]}" for p in left)
    pytest.fail(f"{len(left)} process(es) started by the tests were still running at the end of the run "
                f"(now stopped):\n{lines}", pytrace=False)


@pytest.fixture(scope="module", autouse=True)
def note_processes_left_by_module(request: pytest.FixtureRequest,
                                  no_process_left_running: str | None) -> Iterator[None]:
    """After each module (its fixtures stopped), note the processes still running, so that the
    session's check can say which module left each one behind."""
    yield
    if no_process_left_running is None:
        return
    for process in processes_started_by(os.getpid(), no_process_left_running) or []:
        _LEFT_AFTER.setdefault(process.pid, request.node.nodeid)


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    """One daemon per test module (a subprocess running `flowstate up`)."""
    process = DaemonProcess().start()
    try:
        yield process
    finally:
        code = process.stop()
        assert code == 0, f"daemon exited with {code}:\n{process.log()}"


class OscUdp:
    """A python-osc UDP client that can also read the daemon's answers."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.client = SimpleUDPClient(*address)
        self.client._sock.bind(("127.0.0.1", 0))

    @property
    def port(self) -> int:
        return self.client._sock.getsockname()[1]

    def send(self, address: str, *args: Any) -> None:
        self.client.send_message(address, list(args))

    def send_raw(self, packet: bytes) -> None:
        self.client._sock.sendto(packet, (self.client._address, self.client._port))

    def receive(self, timeout: float = REPLY_TIMEOUT) -> OscMessage:
        data = self.client.receive(timeout)
        assert data, "no OSC reply within the timeout"
        return OscMessage(data)

    def request(self, address: str, *args: Any) -> OscMessage:
        self.send(address, *args)
        return self.receive()

    def close(self) -> None:
        self.client.close()


class OscTcp:
    """python-osc's TCP client in OSC 1.1 (SLIP) mode, with buffered replies."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.client = SimpleTCPClient(*address, mode="1.1")
        self._pending: list[OscMessage] = []

    def send(self, address: str, *args: Any) -> None:
        self.client.send_message(address, list(args))

    def send_raw(self, data: bytes) -> None:
        self.client.socket.sendall(data)

    def receive(self, timeout: float = REPLY_TIMEOUT) -> OscMessage:
        if not self._pending:
            self._pending = [OscMessage(raw) for raw in self.client.receive(timeout) if raw]
        assert self._pending, "no OSC TCP reply within the timeout"
        return self._pending.pop(0)

    def request(self, address: str, *args: Any) -> OscMessage:
        self.send(address, *args)
        return self.receive()

    def close(self) -> None:
        self.client.close()


@pytest.fixture
def osc_udp(daemon: DaemonProcess) -> Iterator[OscUdp]:
    client = OscUdp(daemon.osc_udp)
    yield client
    client.close()


@pytest.fixture
def osc_tcp(daemon: DaemonProcess) -> Iterator[OscTcp]:
    client = OscTcp(daemon.osc_tcp)
    yield client
    client.close()


def zmq_request(sock: zmq.Socket, message: Any, raw: bytes | None = None) -> dict[str, Any]:
    """Send one request (JSON-encoded unless raw bytes are given) and return the decoded reply."""
    sock.send(raw if raw is not None else json.dumps(message).encode())
    assert sock.poll(int(REPLY_TIMEOUT * 1000)), "no ZeroMQ reply within the timeout"
    return json.loads(sock.recv())


@pytest.fixture
def zmq_context() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def req(daemon: DaemonProcess, zmq_context: zmq.Context) -> zmq.Socket:
    sock = zmq_context.socket(zmq.REQ)
    sock.connect(daemon.zmq_requests)
    return sock


@pytest.fixture
def dealer(daemon: DaemonProcess, zmq_context: zmq.Context) -> zmq.Socket:
    sock = zmq_context.socket(zmq.DEALER)
    sock.connect(daemon.zmq_requests)
    return sock


def jack_env(name: str) -> dict[str, str]:
    """What a process needs in its environment to join the JACK server `name`, never starting one."""
    return {"JACK_NO_START_SERVER": "1", "JACK_DEFAULT_SERVER": name}


class JackServer:
    """A JACK server on the dummy backend: real-time paced callbacks, no sound card."""

    def __init__(self, name: str, process: subprocess.Popen[bytes], sample_rate: int, period: int) -> None:
        self.name = name
        self.process = process
        self.sample_rate = sample_rate
        self.period = period
        self.env = jack_env(name)

    def client(self, name: str) -> Any:
        import jack

        return jack.Client(name, servername=self.name, no_start_server=True)


def clear_stale_jack_registry(jackd_log: str) -> bool:
    """After jackd refused with "Too many servers already active" while no jackd runs on this machine:
    JACK's shared-memory registry (8 servers) is full of servers that did not exit cleanly (a test run
    killed half-way, Ctrl-C included), whose entries only a server of the same name takes back. With no
    jackd left, everything JACK keeps in /dev/shm is theirs: removed, and True (start again)."""
    if "Too many servers already active" not in jackd_log:
        return False
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == "jackd":
                return False  # a server runs (another user's, another run's): its registry is left alone
        except OSError:
            continue  # that process has just ended
    for left in Path("/dev/shm").glob("jack*"):
        with contextlib.suppress(OSError):  # another user's: the second start says so
            left.unlink()
    return True


@contextlib.contextmanager
def running_jack(name: str, log: Path, rate: int = 48000) -> Iterator[JackServer]:
    """`jackd -d dummy` named `name` at `rate` (48 kHz), 256-frame periods, 2 capture and 10 playback ports,
    its output in `log`; stopped on the way out.

    `--sync`: the server waits for every client each cycle. On a shared CPU a slow client then
    delays the cycle instead of being skipped, which would shift one client's frame count
    against another's and make frame-exact measurements lie.
    """
    import shutil

    if shutil.which("jackd") is None:
        pytest.fail("jackd is not installed: `make test` installs jackd2 (or run scripts/system-deps.sh as root)")
    env = {**os.environ, **jack_env(name)}

    def start() -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            return subprocess.Popen(
                ["jackd", "-n", name, "--no-realtime", "--sync", "-d", "dummy", "-r", str(rate), "-p", "256",
                 "-C", "2", "-P", "10"],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )

    def wait_ready(process: subprocess.Popen[bytes]) -> subprocess.CompletedProcess[str]:
        # Up to a minute while jackd runs (a busy machine starts it slowly); a jackd that refused has exited.
        for _ in range(6):
            ready = subprocess.run(["jack_wait", "-w", "-t", "10"], env=env, capture_output=True, text=True,
                                   timeout=60)
            if ready.returncode == 0 or process.poll() is not None:
                break
        return ready

    process = start()
    try:
        ready = wait_ready(process)
        if ready.returncode != 0:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)  # a jackd that refused ends by itself
            if process.poll() is not None and clear_stale_jack_registry(log.read_text()):
                process = start()
                ready = wait_ready(process)
        if ready.returncode != 0:
            pytest.fail(f"JACK did not start: {ready.stdout}{ready.stderr}\n{log.read_text()}")
        yield JackServer(name, process, rate, 256)
    finally:
        # Whatever happened (jack_wait missing or failing, a test error), jackd stops. A server
        # whose graph still holds a client of a process that has ended takes 5 s to deactivate it
        # and 1 s to close it (measured: 7.5 s for one stream's two ALSA clients); killed, it
        # leaves its shared memory in /dev/shm.
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        # A client still in the graph when its server went away cannot unlink its semaphore (the
        # stream of test_stream_stall.py's JACK server that goes away): two files per run, for good.
        for left in Path("/dev/shm").glob(f"jack_sem.*_{name}_*"):
            left.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def jack_server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[JackServer]:
    """A JACK server for the module (`running_jack`), at the module's `JACK_RATE` (48 kHz if it has none).

    One name per test process: a jackd that does not exit cleanly (killed, or stopped mid-start)
    leaves its entry in JACK's shared-memory registry, which holds 8 servers and reclaims a dead
    one's entry only for a server of the same name. With a new name per module, 8 such exits
    (over several runs on one machine) made every later jackd fail "Too many servers already
    active"; with this name the next module's server takes the entry back.
    """
    rate = getattr(request.module, "JACK_RATE", 48000)
    with running_jack(f"flowstate-test-{os.getpid()}", tmp_path_factory.mktemp("jack") / "jackd.log", rate) as server:
        yield server


JACK_PCM_MODULE = Path(__file__).resolve().parents[1] / ".cache" / "alsa-lib" / "libasound_module_pcm_jack.so"
ALSA_CONFIG = Path("/usr/share/alsa/alsa.conf")  # libasound's own configuration, read first
# The ALSA JACK plugin names its clients "<program>.C.<pid>.<n>" (capture) and ".P." (playback),
# with ports in_000 ... and out_000 ... (alsa-plugins, jack/pcm_jack.c).
ALSA_JACK_PORTS = (r"[^:]*\.C\.[0-9]+\.[0-9]+:in_.*", r"[^:]*\.P\.[0-9]+\.[0-9]+:out_.*")


def alsa_jack_devices(folder: Path, extra: str = "") -> dict[str, str]:
    """The environment in which ALSA (and so PortAudio) has `fs_record` (2 channels), a device
    that only records, and `fs_play` (4), one that only plays, on the JACK server, and the devices
    `extra` defines (ALSA configuration) on top of them."""
    if not JACK_PCM_MODULE.is_file():
        pytest.fail(f"ALSA's JACK PCM plugin is missing ({JACK_PCM_MODULE}); "
                    "run `bash scripts/fetch-test-plugins.sh` (make test does this first)")
    if not ALSA_CONFIG.is_file():
        pytest.fail(f"libasound's configuration is not at {ALSA_CONFIG}: is libasound2 installed?")
    config = folder / "flowstate-test.conf"
    config.write_text(
        # alsa-lib loads a PCM type's module from `lib` when given (pcm_type.<name>), not from its
        # plugin folder: nothing is installed on the machine.
        f'pcm_type.jack {{\n    lib "{JACK_PCM_MODULE}"\n}}\n'
        "pcm.fs_record {\n    type jack\n    capture_ports { 0 system:capture_1 1 system:capture_2 }\n}\n"
        "pcm.fs_play {\n    type jack\n"
        "    playback_ports { 0 system:playback_1 1 system:playback_2 2 system:playback_3 3 system:playback_4 }\n}\n"
        + extra
    )
    return {"ALSA_CONFIG_PATH": f"{ALSA_CONFIG}:{config}"}


@pytest.fixture(scope="module")
def one_way_devices(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two one-way devices on the JACK server, as Windows lists a virtual cable's ends
    (`tests/bridge/test_stream_devices.py`): `fs_record` and `fs_play` (alsa_jack_devices)."""
    return alsa_jack_devices(tmp_path_factory.mktemp("alsa"))


class FrozenDevice:
    """`fs_frozen`: ALSA's `file` PCM plugin over `fs_record` (alsa_jack_devices), which replaces
    what fs_record records with what it reads from a FIFO (its `infile`). While the FIFO has a
    writer that writes nothing, that read waits, and PortAudio's ALSA thread with it: PortAudio
    opens and starts the device, and it never delivers a block. When the last writer closes, the
    read ends (end of file), the plugin passes fs_record's audio on, and the device begins.
    `fs_stuck` is the same over `fs_nowhere`, ALSA's `null` device (no JACK: it plays into
    nothing, and once the FIFO ends, records silence as fast as it is read)."""

    def __init__(self, folder: Path) -> None:
        self.fifo = folder / "never"
        os.mkfifo(self.fifo)
        # Opened before PortAudio is (which opens every ALSA device to list it, and an open of a
        # FIFO for reading waits for a writer); read-write, so this open does not wait for a reader.
        self._writer: int | None = None
        self.freeze()
        self.env = alsa_jack_devices(folder, "pcm.fs_nowhere {\n    type null\n}\n" + "".join(
            f"pcm.{name} {{\n    type file\n    slave.pcm {slave}\n    file /dev/null\n"
            f'    infile "{self.fifo}"\n    format raw\n}}\n'
            for name, slave in (("fs_frozen", "fs_record"), ("fs_stuck", "fs_nowhere"))))

    def begin(self) -> None:
        if self._writer is not None:
            os.close(self._writer)
            self._writer = None

    def freeze(self) -> None:
        """A writer again: a stream that opens the device from now on waits as the first did."""
        if self._writer is None:
            self._writer = os.open(self.fifo, os.O_RDWR)


@pytest.fixture
def frozen_device(tmp_path: Path) -> Iterator[FrozenDevice]:
    device = FrozenDevice(tmp_path)
    try:
        yield device
    finally:
        device.begin()


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny HTDemucs whose stems add up to its input, so a known signal can be found at the
    outputs of a live stream; one thread, so it loads and runs in seconds even on busy cores.
    (Modules that need another tiny model define their own `tiny_repo`.)"""
    return passthrough_htdemucs_repo(tmp_path_factory.mktemp("models"), threads=1)


def subscribed(context: zmq.Context[Any], endpoint: str, prefix: bytes,
               timeout_seconds: float = 30.0) -> zmq.Socket[Any]:
    """A SUB socket on the daemon's events of topic `prefix`, once it has joined: a SUB socket only
    receives what is published after its connection's handshake, and on a busy machine that can
    take longer than any sleep a test would pick. (Its subscription goes out right after it.)"""
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, prefix)
    monitor = sub.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    try:
        sub.connect(endpoint)
        assert monitor.poll(int(timeout_seconds * 1000)), f"no connection to {endpoint} within {timeout_seconds} s"
        recv_monitor_message(monitor)
    finally:
        sub.disable_monitor()
        monitor.close(linger=0)
    return sub


class Events:
    """The daemon's ZeroMQ PUB events of one topic prefix, gathered on a thread."""

    def __init__(self, endpoint: str, prefix: bytes) -> None:
        self._context = zmq.Context()
        self._sub = subscribed(self._context, endpoint, prefix)
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def wait_for(self, name: str, timeout_seconds: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if self._sub.poll(100):
                topic, body = self._sub.recv_multipart()
                self.seen.append((topic.decode(), json.loads(body)["data"]))
            for topic, data in self.seen:
                if topic == name:
                    return data
        raise AssertionError(f"no {name} event within {timeout_seconds} s; seen {self.seen}")

    def close(self) -> None:
        self._context.destroy(linger=0)


def spelled_as_macos_does(monkeypatch: pytest.MonkeyPatch, folder: Path, *spellings: str) -> list[Path]:
    """`folder` also under each of `spellings` (other names beside it), as on a macOS volume that
    ignores case and Unicode normalization (APFS and HFS+ as Macs format them): each spelling opens
    the same folder, and `os.path.realpath` keeps the spelling it is given (CPython's posixpath
    follows links only, and a spelling is no link there). Linux has no such volume without mounting
    one, so here each spelling is a link that realpath is made not to follow. The paths of the spellings."""
    real_realpath = os.path.realpath
    real_folder = real_realpath(folder)
    aliases = [folder.parent / spelling for spelling in spellings]
    for alias in aliases:
        alias.symlink_to(folder, target_is_directory=True)

    def realpath(path: Any, *, strict: bool = False) -> str:
        text = os.path.abspath(os.fspath(path))
        for alias in aliases:
            prefix = str(alias)
            if text == prefix or text.startswith(prefix + os.sep):
                resolved = real_realpath(real_folder + text[len(prefix):], strict=strict)
                if resolved == real_folder or resolved.startswith(real_folder + os.sep):
                    return os.path.join(real_realpath(alias.parent), alias.name) + resolved[len(real_folder):]
                return resolved  # a link below it led elsewhere: followed, as macOS does
        return real_realpath(path, strict=strict)

    monkeypatch.setattr(os.path, "realpath", realpath)
    return aliases
