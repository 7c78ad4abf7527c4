"""Real processes for the tests and benchmarks: a daemon on free loopback ports, a PostgreSQL
server, and the processes a test run leaves behind."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from bridge.client import Client, RemoteError
from bridge.errors import Unavailable

# How long a test waits for what a fresh process does first: start Python, import torch (and
# transformers), load a model, open JACK. Seconds when the machine is quiet, minutes on two shared,
# busy cores; a wait only ends this late when the awaited thing never comes.
SLOW_SECONDS = 240.0

T = TypeVar("T")


def start_on_free_ports(start: Callable[[], T], log: Callable[[], str], repick: Callable[[], None],
                        attempts: int) -> T:
    """`start()`, and again after `repick()` while it fails (RuntimeError) with a `log()` that says a
    port is already in use, up to `attempts` times in all. A port `free_port` picked can be taken
    by another process before the child binds it (a clean-clone CI run lost a whole test module
    to that once)."""
    for attempt in range(1, attempts + 1):
        logged = len(log())
        try:
            return start()
        except RuntimeError:
            if attempt == attempts or "already in use" not in log()[logged:]:
                raise
        repick()
    raise AssertionError("unreachable")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port the kernel just handed out for both TCP and UDP, so either protocol can bind it."""
    while True:
        with socket.socket(socket.AF_INET, kind) as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            other = socket.SOCK_DGRAM if kind == socket.SOCK_STREAM else socket.SOCK_STREAM
            with socket.socket(socket.AF_INET, other) as second:
                try:
                    second.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port


class DaemonProcess:
    """`flowstate up` in a subprocess with its own config on free ports.

    `overrides` is merged into the generated config (e.g. {"daemon": {"log_level": "DEBUG"}}).
    `entry` replaces `-m bridge` on the Python command line (e.g. `-c <code>` that calls
    `bridge.cli.main()`); `up --config <path>` follows it either way.
    """

    def __init__(self, overrides: dict[str, Any] | None = None, workdir: Path | None = None,
                 env: dict[str, str] | None = None, entry: list[str] | None = None) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="flowstate-"))
        self.config: dict[str, Any] = {
            "osc": {"host": "127.0.0.1", "udp_port": free_port(socket.SOCK_DGRAM), "tcp_port": free_port()},
            "zmq": {
                "host": "127.0.0.1",
                "request_port": free_port(),
                "event_port": free_port(),
                "audio_port": free_port(),
            },
            "daemon": {"log_level": "INFO"},
            # Never the user's real data folder or music library.
            "jobs": {"database": str(self.workdir / "jobs.sqlite3")},
            "paths": {"roots": [str(self.workdir / "files")]},
        }
        # The ports picked here, not set by `overrides`: picked again when one was taken meanwhile.
        self._picked = {(section, key): socket.SOCK_DGRAM if key == "udp_port" else socket.SOCK_STREAM
                        for section in ("osc", "zmq") for key in self.config[section] if key.endswith("_port")
                        and key not in (overrides or {}).get(section, {})}
        for section, values in (overrides or {}).items():
            self.config.setdefault(section, {}).update(values)
        (self.workdir / "files").mkdir(exist_ok=True)
        self.config_path = self.workdir / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.log_path = self.workdir / "daemon.log"
        self.env = env
        self.entry = entry or ["-m", "bridge"]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def osc_udp(self) -> tuple[str, int]:
        return ("127.0.0.1", self.config["osc"]["udp_port"])

    @property
    def osc_tcp(self) -> tuple[str, int]:
        return ("127.0.0.1", self.config["osc"]["tcp_port"])

    @property
    def zmq_requests(self) -> str:
        return f"tcp://127.0.0.1:{self.config['zmq']['request_port']}"

    @property
    def zmq_audio(self) -> str:
        return f"tcp://127.0.0.1:{self.config['zmq']['audio_port']}"

    @property
    def zmq_events(self) -> str:
        return f"tcp://127.0.0.1:{self.config['zmq']['event_port']}"

    def start(self, timeout_seconds: float = 60.0, attempts: int = 3) -> DaemonProcess:
        """Start the daemon and wait until it answers a ping; RuntimeError if it is running already
        (a second `flowstate up` on the same ports would fail, and the first would never be stopped).
        The timeout is generous: a first start imports torch, which takes tens of seconds on a
        loaded two-core machine; a daemon that answers sooner returns sooner.

        A daemon that exits saying a port it was given by `free_port` is in use starts again on
        newly picked ports, up to `attempts` times in all (`start_on_free_ports`)."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"the daemon in {self.workdir} is already running (pid {self.process.pid})")

        def repick() -> None:
            for (section, key), kind in self._picked.items():
                self.config[section][key] = free_port(kind)
            self.config_path.write_text(yaml.safe_dump(self.config))

        return start_on_free_ports(lambda: self._start_once(timeout_seconds), self.log, repick,
                                   attempts if self._picked else 1)

    def _start_once(self, timeout_seconds: float) -> DaemonProcess:
        before = len(self.log())  # a restarted daemon appends to the log of the last one
        env = {**os.environ, **(self.env or {})}
        env = {k: v for k, v in env.items() if not k.startswith("FLOWSTATE_") or k in (self.env or {})}
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, *self.entry, "up", "--config", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir,
        )
        log.close()
        deadline = time.monotonic() + timeout_seconds
        with Client(self.zmq_requests, timeout_seconds=0.2) as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"daemon exited with {self.process.returncode}:\n{self.log()}")
                try:
                    client.call("ping")
                    return self._started(before, deadline)
                except (Unavailable, RemoteError) as error:
                    # A daemon that bound its request port and then failed to start (a port in use)
                    # answers "shutting down" on its way out: wait for it to exit, as for no answer.
                    if isinstance(error, RemoteError) and error.code != "unavailable":
                        raise
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(f"daemon did not answer within {timeout_seconds} s:\n{self.log()}") from None

    def _started(self, before: int, deadline: float) -> DaemonProcess:
        """The daemon, once its log (past `before`) says every port is bound: it serves each socket as
        soon as it is bound, so a ping can be answered while a later port is still to fail ("already
        in use"), and the daemon exits; RuntimeError then, as for a daemon that never answered."""
        if self.config.get("daemon", {}).get("log_level", "INFO") not in ("DEBUG", "INFO"):
            return self  # the line is not logged at that level
        try:
            self.wait_for_log("listening:", timeout_seconds=max(0.1, deadline - time.monotonic()), since=before)
        except RuntimeError:
            self.stop()
            raise
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, *texts: str, timeout_seconds: float = 20.0, since: int = 0) -> str:
        """The log once it contains every one of `texts` (past its first `since` characters: what an
        earlier run in the same folder wrote); RuntimeError naming the missing ones (and showing the
        log) after `timeout_seconds` or when the daemon has exited without writing them.

        The daemon answers a ping before every line is in its log file (handlers and the OS write
        in their own time), so a test about log lines waits for them instead of reading at once.
        """
        deadline = time.monotonic() + timeout_seconds
        while True:
            log = self.log()
            missing = [text for text in texts if text not in log[since:]]
            if not missing:
                return log
            exited = self.process is not None and self.process.poll() is not None
            if exited or time.monotonic() > deadline:
                why = "the daemon exited" if exited else f"not within {timeout_seconds} s"
                raise RuntimeError(f"the daemon log lacks {missing} ({why}):\n{log}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout_seconds: float = 10.0) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout_seconds)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> DaemonProcess:
        """Start the daemon, unless it is running already: `with DaemonProcess(...).start():` then
        stops the very process it started."""
        return self if self.running else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- a real PostgreSQL server -------------------------------------------------------------------

POSTGRES_BIN_DIRS = ("/usr/lib/postgresql",)  # Debian's versioned folders (postgresql-NN/bin)


@contextmanager
def busy_processes(count: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """`count` Python processes that each spin on a core (at nice 0) while the block runs: a machine
    busy with other applications, for the benchmarks. Each is spinning when the block starts (it
    says so first: a process just started is still loading Python). Killed and reaped on the way out."""
    spin = [sys.executable, "-c", "print('spinning', flush=True)\nwhile True: pass"]
    children: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(count):
            children.append(subprocess.Popen(spin, stdout=subprocess.PIPE))
        for child in children:
            assert child.stdout is not None
            if child.stdout.readline() != b"spinning\n":
                raise RuntimeError(f"a busy process ended as it started (exit code {child.wait()})")
        yield children
    finally:
        for child in children:
            child.kill()
            child.wait()
            if child.stdout is not None:
                child.stdout.close()


def postgres_bin_dir() -> Path | None:
    """The folder holding initdb and pg_ctl: on the PATH, else Debian's newest version; None if absent."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent  # Debian links them from /usr/local/bin
    versions = sorted((d for root in POSTGRES_BIN_DIRS for d in Path(root).glob("*/bin") if (d / "initdb").exists()),
                      key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0)
    return versions[-1] if versions else None


class PostgresServer:
    """A throwaway PostgreSQL server on a free loopback port, for tests that need a real one.

    Its data folder is a fresh temporary one; the superuser `flowstate` logs in with `password`
    over TCP (scram-sha-256), so a test sees the password path work. PostgreSQL refuses to run as
    root: as root, initdb and the server run as the unprivileged `postgres` user (runuser), and the
    folder is given to it. `stop()` shuts the server down (fast mode) and removes the folder.
    """

    USER = "flowstate"

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = free_port()
        self.password = f"pw-{os.urandom(9).hex()}"
        self.folder = Path(tempfile.mkdtemp(prefix="flowstate-pg-"))  # /tmp: the postgres user can reach it
        self.data = self.folder / "data"
        self._as: list[str] = []
        self._started = False

    def start(self) -> PostgresServer:
        pwfile = self.folder / "pw"
        pwfile.write_text(self.password)
        if os.geteuid() == 0:
            import pwd

            account = pwd.getpwnam("postgres")
            for path in (self.folder, pwfile):
                os.chown(path, account.pw_uid, account.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-U", self.USER, "--auth-local=trust",
                  "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "--no-sync", "-E", "UTF8")
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} -c fsync=off "
                   "-c full_page_writes=off -c shared_buffers=16MB -c max_connections=40")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "server.log"), "-o", options, "-w",
                  "-t", "60", "start")
        self._started = True
        return self

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([*self._as, str(self.bin_dir / tool), *args], check=False, capture_output=True,
                              text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr or done.stdout}\n{self.log()}")

    def log(self) -> str:
        path = self.folder / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def dsn(self, database: str = "postgres") -> str:
        """A DSN without the password (it travels apart: `password`)."""
        return f"postgresql://{self.USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new, empty database; its DSN (without the password)."""
        import psycopg

        with psycopg.connect(self.dsn(), password=self.password, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def stop(self) -> None:
        """Shut the server down (fast: open connections are cut) and remove its folder."""
        try:
            if self._started:
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
                self._started = False
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)



# -- processes a test run leaves behind ---------------------------------------------------------

# Set (to a fresh id) in the test runner's environment, so that every process it starts inherits it:
# a daemon whose parent was killed is re-parented away from the runner, but still carries the mark.
RUN_MARKER_VARIABLE = "PYTEST_FLOWSTATE_RUN"


@dataclass(frozen=True)
class RunningProcess:
    """A live process found by `processes_started_by`."""

    pid: int
    parent_pid: int
    command: str


def processes_started_by(root_pid: int, marker: str | None = None) -> list[RunningProcess] | None:
    """Every live process below `root_pid` (children, their children, ...), plus, on Linux, every
    live process whose environment carries `RUN_MARKER_VARIABLE=marker` (started below the root,
    then orphaned when its parent died). Zombies (exited, not yet reaped) are not running.

    None where this platform cannot list processes without extra packages (Windows): the caller
    says that it did not check. Linux reads /proc; other POSIX systems (macOS) ask `ps`.
    """
    if sys.platform.startswith("linux"):
        table = _proc_table(marker)
    elif os.name == "posix":
        table = _ps_table()
    else:
        return None
    children: dict[int, list[int]] = {}
    for process, _ in table.values():
        children.setdefault(process.parent_pid, []).append(process.pid)
    found: set[int] = {pid for pid, (_, marked) in table.items() if marked}
    stack = [root_pid, *found]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    found.discard(root_pid)
    return [table[pid][0] for pid in sorted(found)]


def _proc_table(marker: str | None) -> dict[int, tuple[RunningProcess, bool]]:
    wanted = f"{RUN_MARKER_VARIABLE}={marker}".encode() if marker else None
    table: dict[int, tuple[RunningProcess, bool]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_bytes()
            command = Path(entry.path, "cmdline").read_bytes()
            marked = False
            if wanted is not None:
                try:
                    marked = wanted in Path(entry.path, "environ").read_bytes().split(b"\0")
                except PermissionError:  # another user's process: not one this run started
                    marked = False
        except (FileNotFoundError, ProcessLookupError):  # it exited while the table was read
            continue
        # "pid (name) state ppid ...": the name may hold spaces and parentheses, so split after the last ")".
        fields = stat[stat.rindex(b")") + 2:].split()
        if fields[0] in (b"Z", b"X"):
            continue
        text = command.replace(b"\0", b" ").strip().decode(errors="replace")
        name = stat.split(b" ", 1)[1].decode(errors="replace")  # a kernel thread has no command line
        process = RunningProcess(int(entry.name), int(fields[1]), text or name)
        table[process.pid] = (process, marked)
    return table


def _ps_table() -> dict[int, tuple[RunningProcess, bool]]:
    listing = subprocess.Popen(["ps", "-A", "-o", "pid=", "-o", "ppid=", "-o", "stat=", "-o", "command="],
                               stdout=subprocess.PIPE, text=True)
    out, _ = listing.communicate(timeout=30)
    table: dict[int, tuple[RunningProcess, bool]] = {}
    for line in out.splitlines():
        fields = line.split(None, 3)
        if len(fields) < 3 or int(fields[0]) == listing.pid or fields[2].startswith("Z"):
            continue
        process = RunningProcess(int(fields[0]), int(fields[1]), fields[3] if len(fields) > 3 else "?")
        table[process.pid] = (process, False)
    return table


def stop_processes(pids: list[int], timeout_seconds: float = 5.0) -> None:
    """SIGTERM each process, then SIGKILL whichever is still there after `timeout_seconds`; reaps
    the ones that are this process's own children, so none is left a zombie (POSIX only)."""
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_seconds
    while True:
        alive = [pid for pid in pids if _alive(pid)]
        if not alive:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for pid in alive:
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_seconds
    while any(_alive(pid) for pid in alive) and time.monotonic() < deadline:
        time.sleep(0.05)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:  # gone already: nothing to stop
        return


def _alive(pid: int) -> bool:
    """Whether `pid` still runs: reaped here if it is our child, else asked with signal 0."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child (or its Popen reaped it): the system knows
        done = 0
    if done == pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    if sys.platform.startswith("linux"):
        try:
            state = Path(f"/proc/{pid}/stat").read_bytes()
        except FileNotFoundError:
            return False
        return state[state.rindex(b")") + 2:][:1] not in (b"Z", b"X")  # a zombie has stopped running
    return True


