"""Containment with real files and real symbolic links: names every OS accepts, folders reached from
a root without following links, writes and deletes through checked folder handles, and models read
only inside the model folders (bridge/files.py, bridge/paths.py, JobContext.remove_outputs).

Each write helper runs in both modes: with folder handles (`dir_fd`, POSIX) and with the checked
paths Windows falls back to, so the fallback is tested on every platform.
"""

from __future__ import annotations

import os
import sys
import threading
import unicodedata
from pathlib import Path
from typing import Any

import pytest

from bridge import files
from bridge.errors import BadRequest, Forbidden, NotFound
from bridge.fileio import atomic_write
from bridge.files import DIR_FD_SUPPORTED, check_name, open_folder, too_long
from bridge.job_store import JobStore
from bridge.jobs import JobContext
from bridge.paths import PathPolicy, looks_like_path
from bridge.separate import track_name
from tests.conftest import spelled_as_macos_does

MODES = [
    pytest.param(True, id="dir_fd", marks=pytest.mark.skipif(not DIR_FD_SUPPORTED, reason="no dir_fd here")),
    pytest.param(False, id="checked-paths"),
]
PRECIOUS = b"the user's own file, outside the allowed folders"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "Music").mkdir()
    return tmp_path / "Music"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder outside the root holding files a link could lead a write or a delete to."""
    folder = tmp_path / "outside"
    folder.mkdir()
    for name in ("drums.wav", "bass.wav", "line.wav"):
        (folder / name).write_bytes(PRECIOUS)
    return folder


def untouched(outside: Path) -> bool:
    return sorted(p.name for p in outside.iterdir()) == ["bass.wav", "drums.wav", "line.wav"] and all(
        p.read_bytes() == PRECIOUS for p in outside.iterdir()
    )


# -- files that are not there -----------------------------------------------------------------------


def test_a_file_the_system_will_not_let_the_daemon_see_is_forbidden_naming_it(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # macOS answers "Operation not permitted" for a file in Documents to an app not allowed there (a
    # daemon started at login); this machine (root) is refused nothing, so stat stands in for that.
    song = root / "song.wav"
    song.write_bytes(b"RIFF")
    real_stat = os.stat

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if Path(path) == song:
            raise PermissionError(1, "Operation not permitted", str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    with pytest.raises(Forbidden) as caught:
        PathPolicy([root]).input_file(str(song), "path", "stems.separate")
    assert caught.value.message.startswith(
        f"stems.separate: the system did not let the daemon use {song} (Operation not permitted)")


# -- one folder, several spellings (macOS) ------------------------------------------------------------

SESSIONS = unicodedata.normalize("NFC", "Émilie Sessions")  # as typed into config.yaml


@pytest.fixture
def mac_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[Path]]:
    """A root named with an accent, and two more spellings macOS opens it by: another case, and NFD."""
    root = tmp_path / SESSIONS
    root.mkdir()
    (root / "song.wav").write_bytes(b"RIFF")
    return root, spelled_as_macos_does(monkeypatch, root, "émilie sessions", unicodedata.normalize("NFD", SESSIONS))


def test_on_macos_a_root_spelled_in_another_case_or_in_nfd_is_the_same_folder(
        mac_root: tuple[Path, list[Path]]) -> None:
    # Finder and Live hand over names as the volume stores them (every name in NFD on an HFS+ drive),
    # and a path typed in a terminal may differ in case: macOS opens the same folder. The daemon
    # refused them as outside the allowed folders.
    root, spellings = mac_root
    paths = PathPolicy([root])
    for spelled in spellings:
        song = paths.input_file(str(spelled / "song.wav"), "path", "stems.separate")
        assert song.read_bytes() == b"RIFF"
        out = paths.output_dir(str(spelled / "stems"), "out_dir", "stems.separate")
        assert out == root / "stems"  # below the root as configured, opened through it
        with paths.open_dir(spelled / "stems", "out_dir", "stems.separate") as folder:
            folder.write_atomic(f"{spelled.name}.txt", lambda file: file.write(b"stems"))
        assert paths.model_ref(str(spelled / "my-model"), "model", "generate", configured="small",
                               is_path=looks_like_path).endswith("my-model")
    assert sorted(p.name for p in (root / "stems").iterdir()) == sorted(f"{s.name}.txt" for s in spellings)


def test_on_a_volume_that_tells_case_apart_a_folder_spelled_like_a_root_is_another(
        tmp_path: Path, root: Path) -> None:
    other = tmp_path / "MUSIC"  # beside the root Music: on this volume another folder
    other.mkdir()
    (other / "song.wav").write_bytes(PRECIOUS)
    paths = PathPolicy([root])
    with pytest.raises(Forbidden, match="outside the allowed folders"):
        paths.input_file(str(other / "song.wav"), "path", "stems.separate")
    with pytest.raises(Forbidden, match="outside the allowed folders"):
        paths.output_dir(str(other / "stems"), "out_dir", "stems.separate")
    assert not paths.holds(other)


def test_a_missing_file_by_a_relative_path_says_where_it_was_looked_for(root: Path, tmp_path: Path) -> None:
    # `flowstate send stems.separate Music/song.wav` from the home folder: the daemon looked in
    # <first root>/Music/song.wav and said only "no such file".
    second = tmp_path / "Desktop"
    second.mkdir()
    (second / "song.wav").write_bytes(b"RIFF")
    policy = PathPolicy([root, second])
    with pytest.raises(NotFound) as relative:
        policy.input_file("Music/song.wav", "path", "stems.separate")
    assert relative.value.message == (
        f"stems.separate: path 'Music/song.wav': no such file ({Path(os.path.realpath(root)) / 'Music' / 'song.wav'}: "
        "a relative path is "
        f"taken inside {root}, the first of paths.roots; give the whole path)")
    with pytest.raises(NotFound) as absolute:  # the whole path says where itself
        policy.input_file(str(root / "song.wav"), "path", "stems.separate")
    assert absolute.value.message == f"stems.separate: path '{root / 'song.wav'}': no such file"
    assert policy.input_file(str(second / "song.wav"), "path", "stems.separate") == second / "song.wav"


# -- names ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [
    "..\\x", "CON", "con", "nul.wav", "aux", "com1.txt", "LPT9", "CON .txt", "conout$", "COM\u00b9",
    "x.", "take ", "a:b", "what?", "star*", "pipe|", 'quote"', "<tag>", "tab\there",
])
def test_names_windows_refuses_are_refused_on_every_os(root: Path, name: str) -> None:
    paths = PathPolicy([root])
    with pytest.raises(BadRequest) as caught:
        paths.output_dir(str(root / "exports" / name), "out_dir", "stems.separate")
    assert "out_dir" in caught.value.message and repr(name) in caught.value.message
    with pytest.raises(BadRequest):  # relative, as a request may give it
        paths.output_dir(f"exports/{name}/stems", "out_dir", "stems.separate")
    assert not (root / "exports").exists()


@pytest.mark.parametrize("name", ["Lead Vocal (take 3)", "con-artist.wav", "console", "COM10", "nul_", "über.wav",
                                  ".hidden", "a.b.c"])
def test_ordinary_names_pass(root: Path, name: str) -> None:
    assert PathPolicy([root]).output_dir(str(root / name), "out_dir", "tts") == root / name
    assert check_name(name, "tts") == name


def test_a_name_too_long_for_the_file_system_is_a_bad_request_naming_the_limit(root: Path) -> None:
    paths = PathPolicy([root])
    with pytest.raises(BadRequest) as caught:
        paths.output_dir(str(root / ("x" * 300)), "out_dir", "stems.separate")
    assert "300 bytes" in caught.value.message and "255 bytes" in caught.value.message
    assert "paths.max_name_bytes" in caught.value.message
    with pytest.raises(BadRequest) as caught:
        paths.input_file(str(root / "/".join(["deep"] * 400) / "song.wav"), "path", "stems.separate")
    assert "paths.max_path_chars" in caught.value.message and "1024" in caught.value.message


@pytest.mark.parametrize(("stem", "expected"), [
    ("CON", "CON_"), ("nul", "nul_"), ("aux.mix", "aux_.mix"), ("a:b?.", "a_b_"), ("  ..  ", "track"),
    ("Lead Vocal (take 3)", "Lead Vocal _take 3_"),
    ("E\u0301te\u0301 chanson", "\u00c9t\u00e9 chanson"),  # decomposed, as Finder and Live hand names over
    ("Caf\u00e9", "Caf\u00e9"),
])
def test_generated_track_folder_names_are_valid_on_every_os(stem: str, expected: str) -> None:
    assert track_name(Path(f"/music/{stem}.wav")) == expected
    assert check_name(expected, "track") == expected


def test_a_long_track_name_is_cut_to_fit() -> None:
    name = track_name(Path("/music/" + "ü" * 200 + ".wav"))
    assert len(name.encode("utf-8")) <= 255 and check_name(name, "track") == name


# -- links below a root -----------------------------------------------------------------------------


@pytest.mark.parametrize("dir_fd", MODES)
def test_a_linked_folder_below_a_root_is_refused_naming_the_link_and_the_root(
    root: Path, outside: Path, dir_fd: bool
) -> None:
    (root / "stems").mkdir()
    (root / "stems" / "song").symlink_to(outside, target_is_directory=True)
    with pytest.raises(Forbidden) as caught:
        open_folder(root, ("stems", "song"), "stems.separate", create=True, dir_fd=dir_fd)
    assert str(root / "stems" / "song") in caught.value.message and f"allowed folder {root}" in caught.value.message
    with pytest.raises(Forbidden):  # the early check of a request says the same
        PathPolicy([root]).output_dir(str(root / "stems" / "song"), "out_dir", "stems.separate")
    assert untouched(outside)


@pytest.mark.parametrize("dir_fd", MODES)
def test_missing_folders_are_made_and_reported(root: Path, dir_fd: bool) -> None:
    made: list[Path] = []
    with open_folder(root, ("a", "b"), "tts", create=True, on_create=made.append, dir_fd=dir_fd) as folder:
        assert folder.write_atomic("x.txt", lambda file: file.write(b"hello")) == root / "a" / "b" / "x.txt"
        assert folder.names() == ["x.txt"]  # no partial file left behind
    assert made == [root / "a", root / "a" / "b"]
    assert (root / "a" / "b" / "x.txt").read_bytes() == b"hello"


@pytest.mark.skipif(not DIR_FD_SUPPORTED, reason="folder handles need dir_fd")
def test_a_folder_swapped_for_a_link_after_it_was_opened_is_never_written_through(root: Path, outside: Path) -> None:
    with open_folder(root, ("Speech",), "tts", create=True) as folder:
        # Between the check (opening the folder) and the write: the folder moves away, a link takes its place.
        (root / "Speech").rename(root / "Speech.moved")
        (root / "Speech").symlink_to(outside, target_is_directory=True)
        folder.write_atomic("line.wav", lambda file: file.write(b"speech"))
    assert untouched(outside)
    assert (root / "Speech.moved" / "line.wav").read_bytes() == b"speech"  # where the handle was


def test_without_folder_handles_a_swap_before_the_write_is_refused(root: Path, outside: Path) -> None:
    with open_folder(root, ("Speech",), "tts", create=True, dir_fd=False) as folder:
        (root / "Speech").rename(root / "Speech.moved")
        (root / "Speech").symlink_to(outside, target_is_directory=True)
        with pytest.raises(Forbidden) as caught:
            folder.write_atomic("line.wav", lambda file: file.write(b"speech"))
    assert str(root / "Speech") in caught.value.message
    assert untouched(outside) and os.listdir(root / "Speech.moved") == []


@pytest.mark.parametrize("dir_fd", MODES)
def test_a_link_where_the_file_goes_is_refused_not_replaced(root: Path, outside: Path, dir_fd: bool) -> None:
    (root / "line.wav").symlink_to(outside / "line.wav")
    with open_folder(root, (), "tts", dir_fd=dir_fd) as folder, pytest.raises(Forbidden) as caught:
        folder.write_atomic("line.wav", lambda file: file.write(b"speech"))
    assert str(root / "line.wav") in caught.value.message
    assert untouched(outside) and (root / "line.wav").is_symlink()
    assert sorted(os.listdir(root)) == ["line.wav"]


@pytest.mark.parametrize("dir_fd", MODES)
def test_a_failed_write_leaves_no_partial_file(root: Path, dir_fd: bool) -> None:
    def fail(file: Any) -> None:
        file.write(b"half")
        raise RuntimeError("the encoder broke")

    with open_folder(root, (), "tts", dir_fd=dir_fd) as folder, pytest.raises(RuntimeError):
        folder.write_atomic("line.wav", fail)
    assert os.listdir(root) == []


# Windows will not replace a file another program has open (Live playing the stem a separation wrote
# last time): MoveFileEx fails with a sharing violation (winerror 32), which Python raises as
# PermissionError (CPython's os.replace; Microsoft's MoveFileExW documentation). That cannot happen on
# the file systems here, so os.replace stands in: it refuses, as Windows does, while the file is "open".
def refuse_while_open(monkeypatch: pytest.MonkeyPatch, held: Path, times: int | None = None) -> list[int]:
    """os.replace refuses to replace `held` (every time, or the first `times` times); returns the tries."""
    real = os.replace
    tries: list[int] = []

    def replace(src: Any, dst: Any, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None) -> None:
        if Path(dst).name == held.name:
            tries.append(1)
            if times is None or len(tries) <= times:
                raise PermissionError(13, "The process cannot access the file because it is being used by "
                                          "another process", str(dst), 32)
        real(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    monkeypatch.setattr(os, "replace", replace)
    return tries


@pytest.mark.parametrize("dir_fd", MODES)
def test_a_file_another_program_keeps_open_is_left_as_it_was_and_named(
        root: Path, dir_fd: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    (root / "vocals.wav").write_bytes(b"last time's stem, playing in Live")
    refuse_while_open(monkeypatch, root / "vocals.wav")
    with open_folder(root, (), "stems.separate", dir_fd=dir_fd) as folder, pytest.raises(BadRequest) as caught:
        folder.write_atomic("vocals.wav", lambda file: file.write(b"a new stem"))
    assert f"stems.separate: cannot replace {root / 'vocals.wav'}" in caught.value.message
    assert "another program has it open" in caught.value.message and "out_dir" in caught.value.message
    assert (root / "vocals.wav").read_bytes() == b"last time's stem, playing in Live"
    assert os.listdir(root) == ["vocals.wav"]  # no partial file left


@pytest.mark.parametrize("dir_fd", MODES)
def test_a_file_open_for_a_moment_is_replaced_once_it_is_let_go(
        root: Path, dir_fd: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # A virus scanner reading the file: it lets go within moments.
    (root / "vocals.wav").write_bytes(b"old")
    tries = refuse_while_open(monkeypatch, root / "vocals.wav", times=2)
    with open_folder(root, (), "stems.separate", dir_fd=dir_fd) as folder:
        folder.write_atomic("vocals.wav", lambda file: file.write(b"new"))
    assert (root / "vocals.wav").read_bytes() == b"new" and len(tries) == 3
    assert os.listdir(root) == ["vocals.wav"]


def test_an_engine_s_atomic_write_is_as_patient(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (root / "model.onnx").write_bytes(b"old")
    refuse_while_open(monkeypatch, root / "model.onnx")
    with pytest.raises(BadRequest, match="another program has it open"):
        atomic_write(root / "model.onnx", lambda tmp: tmp.write_bytes(b"new"))
    assert (root / "model.onnx").read_bytes() == b"old" and os.listdir(root) == ["model.onnx"]


# Windows without long paths enabled answers a path of 260 characters or more as not found
# (ERROR_PATH_NOT_FOUND) or invalid (Python's documentation, "Removing the MAX_PATH limitation").
def test_windows_max_path_refusals_read_as_too_long_only_where_long_paths_are_off() -> None:
    deep = "C:\\Users\\me\\Music\\" + "Vendor - Pack Vol 3\\" * 12 + "Kick.wav"
    assert len(deep) >= 260
    not_found = FileNotFoundError(2, "The system cannot find the path specified", deep)
    assert too_long(not_found, "win32", long_paths=False)
    assert not too_long(not_found, "win32", long_paths=True)  # then it is not there
    assert not too_long(not_found, "darwin", long_paths=False)
    assert not too_long(FileNotFoundError(2, "The system cannot find the path specified", "C:\\x.wav"), "win32",
                        long_paths=False)
    assert too_long(OSError(22, "The filename, directory name, or volume label syntax is incorrect", deep), "win32",
                    long_paths=False)


def test_a_missing_file_past_max_path_on_windows_says_long_paths_are_off(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deep = root.joinpath(*["Vendor - Pack Vol 3"] * 12, "Kick.wav")
    policy = PathPolicy([root])
    with pytest.raises(NotFound) as elsewhere:
        policy.input_file(str(deep), "path", "stems.separate")
    assert "long paths" not in elsewhere.value.message
    monkeypatch.setattr(files, "LONG_PATHS", False)
    monkeypatch.setattr(sys, "platform", "win32")
    with pytest.raises(NotFound) as caught:
        policy.input_file(str(deep), "path", "stems.separate")
    monkeypatch.undo()
    assert "no such file" in caught.value.message and f"{len(str(deep))} characters" in caught.value.message
    assert "long paths are enabled" in caught.value.message and "LongPathsEnabled" in caught.value.message


# -- a job's cleanup --------------------------------------------------------------------------------


def _context(tmp_path: Path) -> tuple[JobContext, JobStore]:
    store = JobStore(tmp_path / "jobs.sqlite3")
    store.submit("stems.separate", {})
    job = store.claim_next()
    assert job is not None
    return JobContext(job, store, lambda *args, **kwargs: None), store


def test_a_failed_jobs_cleanup_never_deletes_through_a_link(tmp_path: Path, root: Path, outside: Path) -> None:
    ctx, store = _context(tmp_path)
    paths = PathPolicy([root])
    with paths.open_dir(root / "stems" / "song", "out_dir", "stems.separate", register=ctx.register_output) as folder:
        for name in ("drums.wav", "bass.wav"):
            ctx.register_output(folder.path / name, folder.anchor)
            folder.write_atomic(name, lambda file: file.write(b"stem"))
    # Before the cleanup: the track folder becomes a link to a folder holding files of the same names.
    (root / "stems" / "song").rename(tmp_path / "moved")
    (root / "stems" / "song").symlink_to(outside, target_is_directory=True)
    ctx.remove_outputs()
    store.close()
    assert untouched(outside)
    assert (root / "stems" / "song").is_symlink()  # left alone, and logged


def test_a_failed_jobs_cleanup_removes_its_files_and_the_folders_it_made(tmp_path: Path, root: Path) -> None:
    ctx, store = _context(tmp_path)
    (root / "stems").mkdir()
    (root / "stems" / "keep.txt").write_text("the user's")
    with PathPolicy([root]).open_dir(root / "stems" / "song", "out_dir", "x", register=ctx.register_output) as folder:
        ctx.register_output(folder.path / "drums.wav", folder.anchor)
        folder.write_atomic("drums.wav", lambda file: file.write(b"stem"))
    ctx.remove_outputs()
    store.close()
    assert sorted(os.listdir(root / "stems")) == ["keep.txt"]


# -- models and voices named by path ----------------------------------------------------------------


def test_a_model_path_outside_the_model_folders_is_forbidden_without_saying_whether_it_exists(
    tmp_path: Path, root: Path, outside: Path
) -> None:
    models = tmp_path / "models"
    (models / "whisper").mkdir(parents=True)
    paths = PathPolicy([root], model_dirs=[models])
    messages = []
    for raw in (str(outside), str(tmp_path / "no-such-folder"), str(root / ".." / "outside"), "~/../../etc"):
        with pytest.raises(Forbidden) as caught:
            paths.model_ref(raw, "model", "transcribe", configured="small", is_path=looks_like_path)
        messages.append(caught.value.message.replace(repr(raw), "<raw>"))
    assert len(set(messages)) == 1, messages
    assert "no such" not in messages[0] and str(outside) not in messages[0]
    assert "models.dirs" in messages[0]


def test_model_names_and_paths_inside_the_model_folders_pass(tmp_path: Path, root: Path) -> None:
    models = tmp_path / "models"
    (models / "whisper").mkdir(parents=True)
    paths = PathPolicy([root], model_dirs=[models])

    def ref(raw: str) -> str:
        return paths.model_ref(raw, "model", "generate", configured="/configured/by/the/user", is_path=looks_like_path)

    for name in ("small", "large-v3", "facebook/musicgen-small", "htdemucs"):
        assert ref(name) == name
    assert ref(str(models / "whisper")) == str(models / "whisper")
    assert ref(str(root / "my-model")) == str(root / "my-model")  # inside a root: the engine says if it is there
    assert ref("/configured/by/the/user") == "/configured/by/the/user"  # the config's own value


# -- running a real job handler with a hook on its events (used by the handlers' own test files) ------


class HookedRun:
    """A real JobStore and JobRunner running one handler; `hook(event, data, runner, job_id)` sees every
    event as it is published (progress unthrottled), so a test can act at a precise point of a job:
    swap a folder for a link between the check and the write, cancel after the first stem."""

    def __init__(self, tmp_path: Path, kind: str, handler: Any, hook: Any) -> None:
        from bridge.jobs import JobRunner

        self.store = JobStore(tmp_path / "hooked-jobs.sqlite3")
        self.done = threading.Event()
        self.final: tuple[str, dict[str, Any]] | None = None
        self.job_id = ""
        self.hook = hook
        self.runner = JobRunner(self.store, {kind: handler}, 1, self._publish, progress_interval_seconds=0.0)
        self.kind = kind

    def _publish(self, event: str, job_id: str, origin: Any, /, **data: Any) -> None:
        self.hook(event, data, self.runner, job_id)
        if event in ("job.done", "job.failed", "job.canceled"):
            self.final = (event, data)
            self.done.set()

    def run(self, args: dict[str, Any], timeout: float = 120.0) -> tuple[str, dict[str, Any]]:
        self.runner.start()
        try:
            self.job_id = self.runner.submit(self.kind, args)[0].id
            assert self.done.wait(timeout), f"the {self.kind} job did not finish within {timeout} s"
        finally:
            self.runner.stop(30.0, cancel_running=True)
            self.store.close()
        assert self.final is not None
        return self.final


def once(condition: Any, action: Any) -> Any:
    """A hook that runs `action(runner, job_id)` the first time `condition(event, data)` holds."""
    fired: list[bool] = []

    def hook(event: str, data: dict[str, Any], runner: Any, job_id: str) -> None:
        if not fired and condition(event, data):
            fired.append(True)
            action(runner, job_id)

    return hook


def swap_for_link(folder: Path, target: Path) -> None:
    """What a planted link does: the folder moves away (inside the root) and a link takes its place."""
    folder.rename(folder.with_name(folder.name + ".moved"))
    folder.symlink_to(target, target_is_directory=True)
