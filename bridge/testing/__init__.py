"""Test support shipped with the package (the tests and the benchmarks use it): real processes,
models built in their real formats, spoken signals. One module per idea; everything is importable
from `bridge.testing`."""

from __future__ import annotations

from bridge.testing.hf_models import (  # noqa: F401 (re-exported)
    TINY_AST_LABELS,
    TINY_WORDS,
    build_released_clap,
    build_tiny_ast,
    build_tiny_clap,
    build_tiny_musicgen,
    build_tiny_nli,
    build_tiny_sentence_bert,
    build_tiny_stable_audio,
    random_musicgen,
    save_random_musicgen,
)
from bridge.testing.hub import HubStandIn, hub_stand_in, save_hub_cache  # noqa: F401 (re-exported)
from bridge.testing.processes import (  # noqa: F401 (re-exported)
    POSTGRES_BIN_DIRS,
    RUN_MARKER_VARIABLE,
    SLOW_SECONDS,
    DaemonProcess,
    PostgresServer,
    RunningProcess,
    busy_processes,
    free_port,
    postgres_bin_dir,
    processes_started_by,
    start_on_free_ports,
    stop_processes,
)
from bridge.testing.separation_models import (  # noqa: F401 (re-exported)
    REFERENCE_WINDOW_SECONDS,
    RELEASED_HTDEMUCS_KWARGS,
    bare_forward_ms,
    default_argument_htdemucs,
    describe_htdemucs,
    device_label,
    parameter_count,
    passthrough_htdemucs_repo,
    released_htdemucs,
    released_htdemucs_repo,
    save_demucs_hub_cache,
    save_demucs_repo,
    tiny_htdemucs_repo,
    tiny_openunmix_dir,
)
from bridge.testing.speech import (  # noqa: F401 (re-exported)
    espeak_speech,
    piper_speech,
)
