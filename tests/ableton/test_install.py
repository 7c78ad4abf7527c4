"""`flowstate install-ableton`: the Remote Script lands where Live looks for it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import ableton_remote
from bridge.cli import main

SOURCE = Path(ableton_remote.__file__).parent
SCRIPT_FILES = sorted(path.name for path in SOURCE.glob("*.py"))


def flowstate(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_")}
    return subprocess.run([sys.executable, "-m", "bridge", *args], capture_output=True, text=True, timeout=60,
                          env={**env, "HOME": str(home)})


def installed_files(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def test_dest_gets_a_flowstate_folder_with_the_script_and_no_bytecode(tmp_path: Path) -> None:
    (SOURCE / "__pycache__").mkdir(exist_ok=True)  # what importing the package leaves behind
    (SOURCE / "__pycache__" / "stale.cpython-311.pyc").write_bytes(b"not for Live")
    try:
        done = flowstate("install-ableton", "--dest", str(tmp_path / "Remote Scripts"), home=tmp_path)
    finally:
        (SOURCE / "__pycache__" / "stale.cpython-311.pyc").unlink()
    assert done.returncode == 0, done.stderr
    target = tmp_path / "Remote Scripts" / "Flowstate"
    assert installed_files(target) == SCRIPT_FILES
    for name in SCRIPT_FILES:
        assert (target / name).read_bytes() == (SOURCE / name).read_bytes()
    assert f"Installed the Flowstate Remote Script in {target}" in done.stdout
    assert "Link, Tempo & MIDI" in done.stdout and '"Flowstate" as a Control Surface' in done.stdout


def test_an_older_copy_is_replaced_not_merged(tmp_path: Path) -> None:
    target = tmp_path / "Remote Scripts" / "Flowstate"
    target.mkdir(parents=True)
    (target / "surface.py").write_text("# version 0.0.1\n")
    (target / "removed_module.py").write_text("# gone in this version\n")
    done = flowstate("install-ableton", "--dest", str(tmp_path / "Remote Scripts"), home=tmp_path)
    assert done.returncode == 0, done.stderr
    assert installed_files(target) == SCRIPT_FILES
    assert (target / "surface.py").read_bytes() == (SOURCE / "surface.py").read_bytes()
    assert "Replaced the older Flowstate Remote Script" in done.stdout


@pytest.mark.parametrize(
    ("platform", "library"),
    [("darwin", "Music/Ableton/User Library"), ("win32", "Documents/Ableton/User Library")],
)
def test_without_dest_it_installs_into_the_user_library_under_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], platform: str, library: str
) -> None:
    (tmp_path / library).mkdir(parents=True)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(sys, "platform", platform)
    assert main(["install-ableton"]) == 0
    target = tmp_path / library / "Remote Scripts" / "Flowstate"
    assert installed_files(target) == SCRIPT_FILES
    assert str(target) in capsys.readouterr().out


def test_without_a_user_library_it_says_to_use_dest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(sys, "platform", "darwin")
    assert main(["install-ableton"]) == 1
    error = capsys.readouterr().err
    assert f"no Live User Library at {tmp_path}/Music/Ableton/User Library" in error and "--dest" in error
    assert not (tmp_path / "Music").exists()


@pytest.mark.skipif(sys.platform in ("darwin", "win32"), reason="Live's own platforms have a default folder")
def test_elsewhere_dest_is_required(tmp_path: Path) -> None:
    done = flowstate("install-ableton", home=tmp_path)
    assert done.returncode == 2
    assert f"Live has no default folder on {sys.platform}" in done.stderr and "--dest DIR" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_dest_that_is_a_file_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    blocker = tmp_path / "Remote Scripts"
    blocker.write_text("a file, not a folder")
    done = flowstate("install-ableton", "--dest", str(blocker), home=tmp_path)
    assert done.returncode == 1
    assert f"cannot install into {blocker / 'Flowstate'}" in done.stderr
    assert "Traceback" not in done.stderr


def library_cfg(folder: Path, project_path: Path, name: str = "User Library") -> None:
    """A Live `Library.cfg` as Live 11 and 12 write it when the User Library is moved in Settings →
    Library (the layout public Live tools read: `<ProjectPath Value="/Users/me/Music/Ableton" />`
    beside `<ProjectName Value="User Library" />`; attribute values XML-escaped)."""
    from xml.sax.saxutils import quoteattr

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Library.cfg").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<Ableton MajorVersion="5" MinorVersion="12.0_12049" SchemaChangeCount="1" Creator="Ableton Live 12.1.5">\n'
        "\t<ContentLibrary>\n\t\t<UserLibrary>\n\t\t\t<LibraryProject Id=\"0\">\n\t\t\t\t<ProjectLocation />\n"
        f"\t\t\t\t<ProjectName Value={quoteattr(name)} />\n"
        f"\t\t\t\t<ProjectPath Value={quoteattr(str(project_path))} />\n"
        "\t\t\t</LibraryProject>\n\t\t</UserLibrary>\n"
        '\t\t<PreferredFactoryPacksInstallationPath Value="" />\n\t</ContentLibrary>\n</Ableton>\n',
        encoding="utf-8",
    )


@pytest.mark.parametrize("platform", ["darwin", "win32"])
def test_a_user_library_moved_in_lives_settings_is_found_in_the_newest_lives_library_cfg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], platform: str
) -> None:
    # Live keeps one preferences folder per version; 11.3.13 is newer than 9.7.7 (not as strings).
    appdata = tmp_path / "AppData" / "Roaming"

    def preferences(version: str) -> Path:
        if platform == "darwin":
            return tmp_path / "Library" / "Preferences" / "Ableton" / f"Live {version}"
        return appdata / "Ableton" / f"Live {version}" / "Preferences"

    moved = tmp_path / "Big Drive" / "Music & Samples \"live\""
    (moved / "User Library").mkdir(parents=True)
    library_cfg(preferences("11.3.13"), moved)
    library_cfg(preferences("9.7.7"), tmp_path / "Old Drive")
    (tmp_path / "Music" / "Ableton" / "User Library").mkdir(parents=True)  # the default, not used
    (tmp_path / "Documents" / "Ableton" / "User Library").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("APPDATA", str(appdata))
    monkeypatch.setattr(sys, "platform", platform)
    assert main(["install-ableton"]) == 0
    target = moved / "User Library" / "Remote Scripts" / "Flowstate"
    assert installed_files(target) == SCRIPT_FILES
    out = capsys.readouterr().out
    assert f"in {target} (your User Library, as Live 11.3.13's settings give it" in out
    assert not (tmp_path / "Music" / "Ableton" / "User Library" / "Remote Scripts").exists()
    assert not (tmp_path / "Documents" / "Ableton" / "User Library" / "Remote Scripts").exists()


def test_a_library_cfg_that_names_a_missing_folder_says_which_settings_named_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # An unplugged sample drive: nothing is written to the default library in its place.
    settings = tmp_path / "Library" / "Preferences" / "Ableton" / "Live 12.1.5"
    library_cfg(settings, tmp_path / "Volumes" / "Samples")
    (tmp_path / "Music" / "Ableton" / "User Library").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(sys, "platform", "darwin")
    assert main(["install-ableton"]) == 1
    error = capsys.readouterr().err
    assert (f"no Live User Library at {tmp_path}/Volumes/Samples/User Library (as Live 12.1.5's settings give it "
            f"({settings / 'Library.cfg'}))") in error and "--dest" in error
    assert not (tmp_path / "Music" / "Ableton" / "User Library" / "Remote Scripts").exists()


def test_an_unreadable_library_cfg_leaves_lives_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = tmp_path / "Library" / "Preferences" / "Ableton" / "Live 12.1.5"
    settings.mkdir(parents=True)
    (settings / "Library.cfg").write_bytes(b"<Ableton><ContentLibrary><UserLib")  # cut short
    (tmp_path / "Music" / "Ableton" / "User Library").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(sys, "platform", "darwin")
    assert main(["install-ableton"]) == 0
    target = tmp_path / "Music" / "Ableton" / "User Library" / "Remote Scripts" / "Flowstate"
    assert installed_files(target) == SCRIPT_FILES
    assert "(your User Library, Live's default)" in capsys.readouterr().out
