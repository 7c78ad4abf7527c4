"""Open-Unmix through the real loading path, on a tiny random model saved in the release format.

No hub at test time: the weights come from `models.openunmix_dir` as `bridge.testing.
tiny_openunmix_dir` lays them out (the released `<target>-<hash>.pth` state dicts and the `.json`
configs open-unmix's training writes beside them).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bridge.errors import BadRequest, NotFound, Unavailable
from bridge.testing import tiny_openunmix_dir
from engines.openunmix import STEMS, find_weights, load_openunmix, release_urls
from engines.separation.files import FileSeparator
from engines.separation.models import load_model
from engines.separation.streaming import StreamingSeparator

RATE = 44100
NAME = "openunmix:umxl"


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_openunmix_dir(tmp_path_factory.mktemp("openunmix"))


@pytest.fixture
def hub_dir(tmp_path: Path) -> Iterator[Path]:
    """torch.hub's folder moved to an empty one, so no cached release is found (and none written)."""
    import torch

    before = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        yield tmp_path / "hub"
    finally:
        torch.hub.set_dir(before)


def music(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    left = 0.2 * np.sin(2 * np.pi * 110 * t) + 0.1 * np.sin(2 * np.pi * 880 * t) + 0.05 * rng.standard_normal(t.size)
    return np.stack([left, 0.9 * left]).astype(np.float32)


def test_the_release_layout_loads_into_four_stems_that_add_up_to_the_mix(weights: Path) -> None:
    import torch

    bag = load_model(NAME, openunmix_dir=weights)
    assert bag.sources == list(STEMS) == ["vocals", "drums", "bass", "other"]
    assert bag.samplerate == RATE and bag.audio_channels == 2
    mix = music(1.0)
    with torch.inference_mode():
        stems = bag.models[0](torch.from_numpy(mix)[None])[0].numpy()
    assert stems.shape == (4, 2, RATE)
    # Each target hears something different, and the ratio masks sum to one.
    energies = [float(np.mean(s**2)) for s in stems]
    assert min(energies) > 0 and len({round(e, 12) for e in energies}) == 4
    np.testing.assert_allclose(stems.sum(axis=0), mix, atol=1e-4)


def test_a_file_separates_through_apply_model(weights: Path) -> None:
    engine = FileSeparator(NAME, openunmix_dir=weights, device="cpu", threads=1)
    try:
        mix = music(2.5)
        fractions: list[float] = []
        out = engine.process(mix, fractions.append)
        assert engine.stems == STEMS and engine.sample_rate == RATE
    finally:
        engine.close()
    assert out.shape == (4, 2, mix.shape[1]) and out.dtype == np.float32
    np.testing.assert_allclose(out.sum(axis=0), mix, atol=1e-3)
    assert fractions and fractions == sorted(fractions)


def test_a_split_file_whose_last_piece_is_a_few_samples_long_separates(weights: Path) -> None:
    # 1.5 s in 0.5 s segments overlapped by a quarter: pieces start every 16537 samples, the last
    # at 66148 of 66150, two samples long (shorter than the STFT's reflect padding).
    engine = FileSeparator(NAME, openunmix_dir=weights, device="cpu", threads=1, segment_seconds=0.5)
    try:
        mix = music(1.5)
        out = engine.process(mix, lambda fraction: None)
    finally:
        engine.close()
    assert out.shape == (4, 2, mix.shape[1])
    np.testing.assert_allclose(out.sum(axis=0), mix, atol=1e-3)


def test_missing_weights_name_every_place_tried(tmp_path: Path, hub_dir: Path) -> None:
    partial = tmp_path / "umx"
    (partial / "umxl").mkdir(parents=True)
    (partial / "umxl" / "vocals-bccbd9aa.pth").write_bytes(b"")
    with pytest.raises(NotFound) as caught:
        find_weights(NAME, partial, download=False)
    message = caught.value.message
    assert "'openunmix:umxl'" in message and str(partial / "umxl") in message
    folder_part = next(part for part in message.split("; ") if "models.openunmix_dir" in part)
    assert "no drums.pth" in folder_part and "vocals" not in folder_part  # vocals-<hash>.pth is found
    if release_urls("umxl") is None:  # `make setup` installs the package; without it, that is said
        assert "the openunmix package: not installed" in message
    else:  # the release's own file names, looked for in torch.hub's cache
        assert str(hub_dir / "checkpoints") in message and "vocals-bccbd9aa.pth" in message
    assert "models.openunmix_dir" in message and "pip install --no-deps openunmix" in message
    with pytest.raises(NotFound) as caught:
        find_weights("openunmix:umxhq", tmp_path / "nowhere", download=False)
    assert "no folder umxhq/" in caught.value.message


def test_unreadable_weights_are_unavailable_naming_the_file(tmp_path: Path, weights: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(weights, broken)
    [drums] = (broken / "umxl").glob("drums-*.pth")
    drums.write_bytes(b"not a state dict")
    with pytest.raises(Unavailable) as caught:
        load_openunmix(NAME, broken, download=False)
    assert str(drums) in caught.value.message


@pytest.mark.parametrize("name", ["openunmix", "openunmix:umx", "openunmix:umxse"])
def test_an_unknown_variant_is_refused_naming_the_choices(name: str, weights: Path) -> None:
    with pytest.raises(BadRequest) as caught:
        load_model(name, openunmix_dir=weights)
    assert repr(name) in caught.value.message and "openunmix:umxl, openunmix:umxhq" in caught.value.message


def test_open_unmix_is_not_a_stream_model() -> None:
    with pytest.raises(BadRequest) as caught:
        StreamingSeparator(NAME, device="cpu")
    assert caught.value.message.startswith("model: 'openunmix:umxl' separates files only")
