"""The streaming engine's inference backend (engines/inference.py): eager torch or OpenVINO on CPU.

OpenVINO runs the network between HTDemucs's STFT and its inverse; what a user hears must be the
same as with torch (within 1e-4), and where OpenVINO cannot run, `auto` runs torch and says why.
No timing assertions: whether `auto` takes OpenVINO depends on the machine's speed.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bridge.errors import BadRequest, Unavailable
from bridge.testing import tiny_htdemucs_repo
from engines.inference import BACKENDS, htdemucs_core, import_openvino, split_forward
from engines.separation.streaming import StreamingSeparator

# A short window (0.1 + 0.1 + 0.1 s): conversion and streaming stay cheap on a shared 2-core CPU.
ROOT = Path(__file__).resolve().parents[2]
SETTING = {"context_seconds": 0.1, "hop_seconds": 0.1, "lookahead_seconds": 0.1}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_htdemucs_repo(tmp_path_factory.mktemp("demucs") / "repo", depth=3)


@pytest.fixture(autouse=True)
def no_conversions_from_other_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts as a new process would: no conversion kept in memory (engines/inference.py)."""
    import engines.inference

    monkeypatch.setattr(engines.inference, "_RECENT", collections.OrderedDict())


@contextlib.contextmanager
def engine(repo: Path, backend: str | None = None, **setting: Any) -> Iterator[StreamingSeparator]:
    kwargs = {} if backend is None else {"backend": backend}
    separator = StreamingSeparator("tiny", repo=repo, device="cpu", **kwargs, **{**SETTING, **setting})
    try:
        yield separator
    finally:
        separator.close()


def noise(frames: int, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal((2, frames))).astype(np.float32)


def stream(separator: StreamingSeparator, audio: np.ndarray, block: int = 512) -> np.ndarray:
    return np.concatenate([separator.process(audio[:, i:i + block]) for i in range(0, audio.shape[1], block)], axis=-1)


@pytest.mark.parametrize("kwargs", [
    {"channels": 8, "depth": 2, "t_layers": 1, "bottom_channels": 0},  # tiny_htdemucs_repo's
    {"channels": 8, "depth": 3, "t_layers": 1, "bottom_channels": 16, "dconv_mode": 3},  # the released layout, small
], ids=["no-bottom-channels", "bottom-channels"])
def test_the_network_between_stft_and_istft_gives_the_models_output(kwargs: dict) -> None:
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(0)
    model = HTDemucs(sources=["drums", "bass", "other", "vocals"], samplerate=44100, segment=4, **kwargs).eval()
    model.use_train_segment = False
    window = torch.randn(1, 2, 12 * 1024, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = model(window)
        actual = split_forward(model, window, htdemucs_core(model))
    assert actual.shape == expected.shape
    assert float((actual - expected).abs().max()) <= 1e-4


@pytest.mark.timeout(900)  # converting takes up to a minute on a busy 2-core machine
def test_openvino_streams_the_same_stems_as_torch(repo: Path) -> None:
    audio = noise(48000)
    with engine(repo, "torch") as eager:
        expected = stream(eager, audio)
        assert eager.stats()["backend"] == "torch"
    with engine(repo, "openvino") as compiled:
        actual = stream(compiled, audio)
        stats = compiled.stats()
    assert stats["backend"] == "openvino", stats["backend_choice"]
    assert "matches torch within 0.0001" in stats["backend_choice"]
    assert actual.shape == expected.shape
    assert np.abs(expected).max() > 1e-3  # stems with something in them
    assert float(np.abs(actual - expected).max()) <= 1e-4


@pytest.mark.timeout(900)
def test_the_hop_ladder_times_the_openvino_build_of_each_window_it_tries(repo: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # The ladder takes the least hop whose window keeps real time *as it will run*: on OpenVINO
    # (a window 1.55-1.71x faster than torch here) that is a shorter hop than torch's timings
    # would take. A load limit no window meets sends it from the first rung to the last. One
    # conversion (the slow part) serves both rungs' builds.
    openvino = import_openvino()

    import engines.inference
    from engines.separation.streaming import HOP_LADDER

    converted: list[int] = []
    conversions: list[object] = []
    build, convert = engines.inference.OpenVinoModel.__init__, openvino.convert_model

    def spy(self: Any, model: Any, window: Any, threads: int, cache: Any = None) -> None:
        converted.append(int(window.shape[-1]))
        build(self, model, window, threads, cache)

    def spy_convert(*args: Any, **kwargs: Any) -> Any:
        conversions.append(args[0])
        return convert(*args, **kwargs)

    monkeypatch.setattr(engines.inference.OpenVinoModel, "__init__", spy)
    monkeypatch.setattr(openvino, "convert_model", spy_convert)
    with engine(repo, "openvino", hop_seconds=None, auto_hop_load=1e-6) as laddered, \
            engine(repo, "torch", hop_seconds=HOP_LADDER[-1]) as fixed:
        audio = noise(6 * 48000)
        actual, expected = stream(laddered, audio), stream(fixed, audio)
        stats = laddered.stats()
        first = round(0.1 * 44100 / 1024) * 1024 * 2 + round(0.25 * 44100 / 1024) * 1024
        assert converted == [first, round(laddered.window_seconds * 44100)]  # the first rung's, then the last's
        assert len(conversions) == 1
    assert stats["backend"] == "openvino" and stats["real_time_at_load"] is False, stats["hop_choice"]
    assert laddered.hop_seconds == pytest.approx(fixed.hop_seconds)
    assert np.abs(expected).max() > 1e-3
    assert float(np.abs(actual - expected).max()) <= 1e-4


@pytest.mark.timeout(900)
def test_a_stream_on_openvino_that_climbs_to_another_window_builds_for_it_and_goes_on_on_openvino(
        repo: Path) -> None:
    # When the machine slows while streaming, the hop climbs (bridge/stream.py); an HTDemucs
    # window then has another length, which the OpenVINO build (compiled for one) cannot run: the
    # stream goes on in eager torch, from the same history, while OpenVINO builds for the new
    # window in the background, then on that build; all of it as a torch stream that climbed.
    from tests.engines.test_separation import without_the_inserted_silence

    audio, more = noise(4 * 48000, seed=8), noise(2 * 48000, seed=9)
    with engine(repo, "openvino", hop_seconds=None, auto_hop_load=1e9) as compiled, \
            engine(repo, "torch", hop_seconds=None, auto_hop_load=1e9) as eager:
        assert compiled.stats()["backend"] == "openvino" and compiled.hop_may_change
        actual, start, _, inserted = without_the_inserted_silence(compiled, audio, 50000, 0.5, 1000)
        expected, eager_start, _, eager_inserted = without_the_inserted_silence(eager, audio, 50000, 0.5, 1000)
        # Torch runs the new windows until the build is ready; a quick build is taken while the rest streams.
        assert re.match(r"(torch since|openvino again [0-9.]+ s after) the hop climbed to 511 ms while running",
                        compiled.stats()["backend_choice"]), compiled.stats()["backend_choice"]
        deadline = time.monotonic() + 600
        while compiled._built is None and compiled.backend == "torch":  # the build, in the background
            assert time.monotonic() < deadline, "OpenVINO never built for the new window"
            time.sleep(0.05)
        actual_more, expected_more = stream(compiled, more), stream(eager, more)
        stats = compiled.stats()
    assert (start, inserted) == (eager_start, eager_inserted) and compiled.hop_seconds == pytest.approx(0.5, abs=0.02)
    assert stats["backend"] == "openvino", stats["backend_choice"]
    assert re.match(r"openvino again [0-9.]+ s after the hop climbed to 511 ms while running \(built for the new "
                    r"window; torch ran the windows meanwhile\)", stats["backend_choice"]), stats["backend_choice"]
    assert np.abs(expected).max() > 1e-3 and np.abs(expected_more).max() > 1e-3
    assert float(np.abs(actual - expected).max()) <= 1e-4
    assert float(np.abs(actual_more - expected_more).max()) <= 1e-4


@pytest.mark.timeout(900)
def test_a_climb_prepared_ahead_runs_on_openvino_from_its_first_window(repo: Path) -> None:
    # What bridge/stream.py does when the machine slows: `prepare_hop` builds OpenVINO for the
    # longer hop's window in the background while the stream goes on at its hop; the climb waits
    # for it, then the new windows run on the build at once (no torch in between).
    from tests.engines.test_separation import without_the_inserted_silence

    audio = noise(4 * 48000, seed=8)
    with engine(repo, "openvino", hop_seconds=None, auto_hop_load=1e9) as compiled, \
            engine(repo, "torch", hop_seconds=None, auto_hop_load=1e9) as eager:
        assert compiled.prepare_hop(0.5) is None  # building
        deadline = time.monotonic() + 600
        while (ready := compiled.prepare_hop(0.75)) is None:  # a longer hop wanted meanwhile
            assert time.monotonic() < deadline, "OpenVINO never built for the longer window"
            time.sleep(0.05)
        assert ready == 0.5  # the build ready: a step up now, rather than another build's wait
        assert eager.prepare_hop(0.5) == 0.5  # torch runs any window
        actual, start, _, inserted = without_the_inserted_silence(compiled, audio, 50000, 0.5, 1000)
        expected, eager_start, _, eager_inserted = without_the_inserted_silence(eager, audio, 50000, 0.5, 1000)
        stats = compiled.stats()
    assert (start, inserted) == (eager_start, eager_inserted)
    assert stats["backend"] == "openvino", stats["backend_choice"]
    assert re.match(r"openvino, built for the 511 ms hop's window in [0-9.]+ s before the hop climbed to it",
                    stats["backend_choice"])
    assert np.abs(expected).max() > 1e-3
    assert float(np.abs(actual - expected).max()) <= 1e-4


@pytest.mark.timeout(900)
def test_a_second_start_reads_the_kept_conversion_and_converts_nothing(
        repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    openvino = import_openvino()

    import engines.inference
    from engines.inference import ConversionCache

    cache = ConversionCache(tmp_path / "openvino")
    audio = noise(48000, seed=3)
    convert = openvino.convert_model
    with engine(repo, "openvino", conversion_cache=cache) as first:
        expected = stream(first, audio)
    kept = list(cache.folder.iterdir())
    assert [entry.name.startswith(".") for entry in kept] == [False]  # one entry, no partial one

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(openvino, "convert_model", refuse)
    engines.inference._RECENT.clear()  # as in a new process
    with engine(repo, "openvino", conversion_cache=cache) as second:  # the model loads afresh
        actual = stream(second, audio)
        assert second.stats()["backend"] == "openvino"
    assert float(np.abs(actual - expected).max()) <= 1e-4

    # A damaged entry is converted again, and replaced.
    (kept[0] / "network.bin").write_bytes(b"not a network")
    monkeypatch.setattr(openvino, "convert_model", convert)  # converting allowed again
    engines.inference._RECENT.clear()
    with engine(repo, "openvino", conversion_cache=cache) as third:
        assert float(np.abs(stream(third, audio) - expected).max()) <= 1e-4
    assert (kept[0] / "network.bin").stat().st_size > 100


@pytest.mark.timeout(900)
def test_the_kept_conversions_stay_within_their_size_the_least_recently_used_going(tmp_path: Path) -> None:
    from engines.inference import ConversionCache


    repos = [tiny_htdemucs_repo(tmp_path / f"repo{seed}", seed=seed, depth=3) for seed in (1, 2)]
    folder = tmp_path / "openvino"
    with engine(repos[0], "openvino", conversion_cache=ConversionCache(folder)) as separator:
        separator.load()
    first = next(folder.iterdir())
    size_mb = sum(f.stat().st_size for f in first.iterdir()) / 1e6
    with engine(repos[1], "openvino", conversion_cache=ConversionCache(folder, max_mb=1.5 * size_mb)) as separator:
        separator.load()
    kept = list(folder.iterdir())
    assert len(kept) == 1 and kept[0] != first  # the newer one


def test_a_kept_conversion_in_use_stays_whole_when_the_cache_is_pruned(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Windows will not delete a file OpenVINO has mapped (its weights, network.bin, while the model is
    # loaded): os.unlink stands in for that refusal. The entry must stay whole, not lose network.xml.
    from engines.inference import ConversionCache, _prune

    folder = tmp_path / "openvino"
    for age, name in enumerate(("in-use", "old", "new")):
        entry = folder / name
        entry.mkdir(parents=True)
        (entry / "network.xml").write_bytes(b"x" * 1000)
        (entry / "network.bin").write_bytes(b"w" * 1_000_000)
        os.utime(entry, (1_000_000 + age, 1_000_000 + age))
    real_unlink = os.unlink

    def unlink(path: Any, *, dir_fd: int | None = None) -> None:
        where = Path(os.readlink(f"/proc/self/fd/{dir_fd}")) / path if dir_fd is not None else Path(path)
        if where == folder / "in-use" / "network.bin":
            raise PermissionError(13, "The process cannot access the file because it is being used by another "
                                      "process", str(path), 32)
        real_unlink(path, dir_fd=dir_fd)

    monkeypatch.setattr(os, "unlink", unlink)
    _prune(ConversionCache(folder, max_mb=2.1), keep=folder / "new")
    assert sorted(entry.name for entry in folder.iterdir()) == ["in-use", "new"]
    assert sorted(f.name for f in (folder / "in-use").iterdir()) == ["network.bin", "network.xml"]


def test_auto_without_openvino_runs_torch_and_says_why(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    with engine(repo, "auto") as separator:
        out = stream(separator, noise(9600))
        stats = separator.stats()
    assert stats["backend"] == "torch"
    assert "openvino is not installed" in stats["backend_choice"]
    assert "scripts/install.sh" in stats["backend_choice"]  # what puts it back
    assert out.shape == (4, 2, 9600)


def test_openvino_asked_for_but_missing_refuses_to_load_and_says_why(repo: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(Unavailable, match=r"openvino is not installed.*set stream.backend to auto or torch"):
        with engine(repo, "openvino") as separator:
            separator.load()


def test_auto_runs_torch_when_conversion_fails(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    openvino = import_openvino()

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("op aten::stft is not supported")

    monkeypatch.setattr(openvino, "convert_model", refuse)
    with engine(repo, "auto") as separator:
        out = stream(separator, noise(9600))
        stats = separator.stats()
    assert stats["backend"] == "torch"
    assert "could not convert the model: RuntimeError: op aten::stft is not supported" in stats["backend_choice"]
    assert out.shape == (4, 2, 9600)


@pytest.mark.timeout(900)
def test_auto_runs_torch_when_openvino_does_not_match(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import engines.inference

    monkeypatch.setattr(engines.inference, "MATCH_TOLERANCE", -1.0)  # no difference, not even 0, is within it
    with engine(repo, "auto") as separator:
        stats = separator.stats()
    assert stats["backend"] == "torch"
    assert "OpenVINO's output differs from torch's by" in stats["backend_choice"]


def test_a_stream_that_batches_with_others_runs_torch_and_says_why(repo: Path) -> None:
    from engines.batching import WindowBatchers

    separator = StreamingSeparator("tiny", repo=repo, device="cpu", backend="auto",
                                   batching=WindowBatchers(gather_seconds=0.0, max_streams=2), **SETTING)
    try:
        out = stream(separator, noise(9600))
        stats = separator.stats()
    finally:
        separator.close()
    assert stats["backend"] == "torch"
    assert "batches its windows" in stats["backend_choice"]
    assert out.shape == (4, 2, 9600)


def test_auto_is_htdemucss_default_and_says_what_it_measured(repo: Path) -> None:
    with engine(repo) as separator:
        stats = separator.stats()
    assert stats["backend"] in ("torch", "openvino")  # whichever measured faster on this machine, at load
    assert re.fullmatch(r"auto \(the default for tiny\): a window took \d+ ms with OpenVINO, \d+ ms with torch "
                        r"\(x[0-9.]+\)(; OpenVINO is taken at x0.95 or less)?", stats["backend_choice"])
    assert stats["backend_choice"].endswith("or less") == (stats["backend"] == "torch")


@pytest.mark.parametrize("bad", ["tensorrt", "OpenVINO", "", 1])
def test_a_bad_backend_name_is_a_bad_request_naming_the_value_and_the_choices(bad: object) -> None:
    with pytest.raises(BadRequest) as caught:
        StreamingSeparator("tiny", device="cpu", backend=bad)  # type: ignore[arg-type]
    assert repr(bad) in str(caught.value)
    assert all(name in str(caught.value) for name in BACKENDS)


# What a daemon's first `import openvino` leaves behind, in a fresh user's home: which telemetry
# module OpenVINO's converter took, whether it would send, and the files it wrote.
_OPENVINO_IN_A_DAEMON = """
import json, pathlib, sys
from engines.inference import import_openvino
ov = import_openvino()
from openvino.tools.ovc import telemetry_utils
telemetry = telemetry_utils.tm
home = pathlib.Path(sys.argv[1])
print(json.dumps({"module": telemetry.__name__, "consent": bool(getattr(telemetry.Telemetry(), "consent", False)),
                  "written": sorted(str(p.relative_to(home)) for p in home.rglob("*")), "version": ov.__version__}))
"""


def test_the_daemon_sends_no_openvino_usage_telemetry(tmp_path: Path) -> None:
    # OpenVINO's converter, which `import openvino` imports, starts openvino_telemetry so that it
    # sends usage events (to Google Analytics) unless the user opted out with OpenVINO's own
    # script: on a fresh home it wrote a client id under ~/intel and sent an event at every import.
    # Through the daemon's import_openvino it takes the converter's stub: nothing written, nothing sent.
    import json
    import os
    import subprocess

    home = tmp_path / "home"
    home.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("CI", "TF_BUILD", "JENKINS_URL")}
    env.update(HOME=str(home), USERPROFILE=str(home), LOCALAPPDATA=str(home), PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", _OPENVINO_IN_A_DAEMON, str(home)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["module"] == "openvino.tools.ovc.telemetry_stub", seen
    assert seen["consent"] is False and seen["written"] == [], seen
