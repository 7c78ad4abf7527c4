"""`flowstate install-reaper`: the actions, rendered from one template, land where REAPER reads them."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import ableton_remote
from bridge.cli import main
from bridge.testing import free_port
from integrations.reaper.install import ACTIONS, HOW_TO_LOAD, Action
from tests.ableton.py37 import run37
from tests.ableton.test_install import flowstate  # `python -m bridge ...` for a user whose home is tmp_path
from tests.integrations.reaper_sim import Reaper, scripts_running_in

# The file names users' action lists reference: an install must keep writing exactly these.
ACTION_FILES = [
    "Flowstate - separate selected item into stems.py",
    "Flowstate - generate a loop at the edit cursor.py",
    "Flowstate - send tempo and time signature.py",
    "Flowstate - start live stems.py",
    "Flowstate - stop live stems.py",
    "Flowstate - set daemon address.py",
]
MODULES = ["flowstate_reaper.py", "flowstate_osc.py"]
CODEC = Path(ableton_remote.__file__).parent / "osc.py"


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `folder`: its bytes and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


def test_it_writes_the_six_actions_the_shared_module_and_the_one_codec(tmp_path: Path) -> None:
    resource = tmp_path / "REAPER"
    resource.mkdir()
    done = flowstate("install-reaper", "--reaper-resource-dir", str(resource), home=tmp_path)
    assert done.returncode == 0, done.stderr
    folder = resource / "Scripts" / "Flowstate"
    assert sorted(p.name for p in folder.iterdir()) == sorted(ACTION_FILES + MODULES)
    assert [action.file_name for action in ACTIONS] == ACTION_FILES
    assert (folder / "flowstate_osc.py").read_bytes() == CODEC.read_bytes()
    for name in ACTION_FILES + MODULES:
        assert (folder / name).read_bytes().isascii(), name
        assert f"  {name} (new)" in done.stdout
    assert f"Installed the Flowstate REAPER actions in {folder}:" in done.stdout
    assert HOW_TO_LOAD in done.stdout and "Enable Python" in done.stdout


def test_install_ableton_still_copies_the_same_codec(tmp_path: Path) -> None:
    done = flowstate("install-ableton", "--dest", str(tmp_path / "Remote Scripts"), home=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "Remote Scripts" / "Flowstate" / "osc.py").read_bytes() == CODEC.read_bytes()


def test_installing_again_changes_nothing_and_leaves_the_users_files_alone(tmp_path: Path) -> None:
    resource = tmp_path / "REAPER"
    folder = resource / "Scripts" / "Flowstate"
    folder.mkdir(parents=True)
    (folder / "My own script.py").write_text("# mine\n")
    (folder / "notes").mkdir()
    (folder / "notes" / "todo.txt").write_text("keep me\n")
    stale = folder / ACTION_FILES[0]
    stale.write_text("# an older Flowstate's copy\n")  # what a manual install of an older version left
    assert main(["install-reaper", "--reaper-resource-dir", str(resource)]) == 0
    first = snapshot(folder)
    assert first["My own script.py"][0] == b"# mine\n" and first["notes/todo.txt"][0] == b"keep me\n"
    assert b"an older Flowstate" not in first[ACTION_FILES[0]][0]
    done = flowstate("install-reaper", "--reaper-resource-dir", str(resource), home=tmp_path)
    assert done.returncode == 0, done.stderr
    assert snapshot(folder) == first  # same bytes, not even rewritten
    for name in ACTION_FILES + MODULES:
        assert f"  {name} (unchanged)" in done.stdout


def test_an_older_install_is_updated_file_by_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    resource = tmp_path / "REAPER"
    resource.mkdir()
    assert main(["install-reaper", "--reaper-resource-dir", str(resource)]) == 0
    (resource / "Scripts" / "Flowstate" / "flowstate_reaper.py").write_text("# older\n")
    capsys.readouterr()
    assert main(["install-reaper", "--reaper-resource-dir", str(resource)]) == 0
    out = capsys.readouterr().out
    assert "  flowstate_reaper.py (updated)" in out and f"  {ACTION_FILES[0]} (unchanged)" in out


@pytest.mark.parametrize(
    ("platform", "env_name", "resource"),
    [
        ("linux", "HOME", ".config/REAPER"),
        ("darwin", "HOME", "Library/Application Support/REAPER"),
        ("win32", "APPDATA", "REAPER"),
    ],
)
def test_without_the_option_it_uses_the_resource_path_of_each_os(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    platform: str, env_name: str, resource: str,
) -> None:
    monkeypatch.setenv(env_name, str(tmp_path))
    monkeypatch.setattr(sys, "platform", platform)
    (tmp_path / resource).mkdir(parents=True)
    assert main(["install-reaper"]) == 0
    folder = tmp_path / resource / "Scripts" / "Flowstate"
    assert sorted(p.name for p in folder.iterdir()) == sorted(ACTION_FILES + MODULES)
    assert str(folder) in capsys.readouterr().out


def test_without_a_reaper_resource_folder_it_says_what_to_do_and_writes_nothing(tmp_path: Path) -> None:
    done = flowstate("install-reaper", "--reaper-resource-dir", str(tmp_path / "REAPER"), home=tmp_path)
    assert done.returncode == 1
    assert f"REAPER's resource folder {tmp_path / 'REAPER'} does not exist" in done.stderr
    assert "Options > Show REAPER resource path" in done.stderr and "--reaper-resource-dir" in done.stderr
    assert "Traceback" not in done.stderr and list(tmp_path.iterdir()) == []


@pytest.mark.skipif(sys.platform in ("darwin", "win32"), reason="the default folder of Linux")
def test_without_the_option_a_missing_default_folder_is_named(tmp_path: Path) -> None:
    done = flowstate("install-reaper", home=tmp_path)
    assert done.returncode == 1
    assert f"REAPER's resource folder {tmp_path / '.config' / 'REAPER'} does not exist" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_resource_folder_that_is_a_file_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    blocker = tmp_path / "REAPER"
    blocker.write_text("a file, not a folder")
    done = flowstate("install-reaper", "--reaper-resource-dir", str(blocker), home=tmp_path)
    assert done.returncode == 1
    assert f"REAPER's resource folder {blocker} is not a folder" in done.stderr and "Traceback" not in done.stderr


def test_a_folder_it_cannot_write_into_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    resource = tmp_path / "REAPER"
    resource.mkdir()
    (resource / "Scripts").write_text("a file where REAPER's Scripts folder belongs")
    done = flowstate("install-reaper", "--reaper-resource-dir", str(resource), home=tmp_path)
    assert done.returncode == 1
    assert f"cannot install into {resource / 'Scripts' / 'Flowstate'}:" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture
def installed_reaper(tmp_path: Path) -> Iterator[Reaper]:
    """A simulated REAPER whose Scripts/Flowstate was filled by `flowstate install-reaper`."""
    resource = tmp_path / "REAPER"
    resource.mkdir()
    assert main(["install-reaper", "--reaper-resource-dir", str(resource)]) == 0
    sim = Reaper(resource)
    # No daemon here: a closed port, so every action fails fast and says so.
    sim.ext_state[("Flowstate", "daemon_address")] = f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
    with scripts_running_in(sim):
        yield sim


@pytest.mark.parametrize("action", ACTIONS, ids=[action.slug for action in ACTIONS])
def test_each_installed_action_loads_its_helpers_and_runs_its_task(installed_reaper: Reaper, action: Action) -> None:
    sim = installed_reaper
    sim.user_answers = [(False, "")]  # an action that asks something is cancelled
    namespace = sim.run_script(sim.resource_path / "Scripts" / "Flowstate" / action.file_name)
    sim.run_until_done(30.0)
    helpers = namespace["flowstate_reaper"]
    assert helpers is not None, sim.message_boxes
    assert Path(helpers.__file__).parent == sim.resource_path / "Scripts" / "Flowstate"
    task = namespace[f"flowstate_{action.slug}_task"]
    assert type(task) is getattr(helpers, action.task)
    assert task.finished and not sim.running
    assert all("Cannot load the Flowstate helpers" not in text for text, _, _ in sim.message_boxes)


IMPORT_UNDER_37 = r"""
import sys, types
sys.path.insert(0, sys.argv[1])
sys.modules["reaper_python"] = types.ModuleType("reaper_python")  # only called into, never at import
import flowstate_osc, flowstate_reaper
[message] = flowstate_osc.decode_packet(flowstate_osc.encode_message("/flow/ping", ["a", 1, 2.5, True, None, b"x"]))
print(sys.version_info[:2] == (3, 7), message.address, list(message.args), flowstate_reaper.OscUdpClient.__name__)
"""


def test_the_installed_modules_import_and_run_on_python_37(tmp_path: Path) -> None:
    """REAPER runs ReaScripts in the Python the user gives it: 3.7 and later, as the README says."""
    resource = tmp_path / "REAPER"
    resource.mkdir()
    assert main(["install-reaper", "--reaper-resource-dir", str(resource)]) == 0
    done = run37("-c", IMPORT_UNDER_37, str(resource / "Scripts" / "Flowstate"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "True /flow/ping ['a', 1, 2.5, True, None, b'x'] OscUdpClient"
