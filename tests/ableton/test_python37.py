"""The script loads in every Live it claims: Python 3.7 (Live 11.3.25+, 12.0.5+) as well as 3.11.

The Python 3.7 checks run a real 3.7 interpreter (see py37.py); the separation and generated-loop
scenarios in old Lives run in test_surface.py and test_generate_landing.py, beside their daemons.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

import ableton_remote
import bridge
from tests.ableton import live_sim
from tests.ableton.py37 import run37

LOAD_EVERY_MODULE = r"""
import importlib, json, pkgutil, sys
from tests.ableton import live_sim
sys.modules["Live"] = live_sim.live_module()
import ableton_remote
modules = [info.name for info in pkgutil.iter_modules(ableton_remote.__path__)]
for name in modules:
    importlib.import_module("ableton_remote." + name)
shown = {}
for version in sys.argv[1:]:
    live = live_sim.LiveSet(version)
    surface = ableton_remote.create_instance(live.c_instance)
    surface.disconnect()
    shown[version] = {"surface": type(surface).__name__, "messages": live.c_instance.messages[:1]}  # at load
print(json.dumps({"python": list(sys.version_info[:2]), "modules": modules, "shown": shown}))
"""


def test_every_module_of_the_script_imports_and_loads_under_python_37() -> None:
    done = run37("-c", LOAD_EVERY_MODULE, "11.3.25", "12.0.5", "11.3.24")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["python"] == [3, 7]
    folder = Path(ableton_remote.__file__).parent
    expected = sorted(path.stem for path in folder.glob("*.py") if path.stem != "__init__")
    assert sorted(result["modules"]) == expected
    for version in ("11.3.25", "12.0.5"):
        assert result["shown"][version] == {
            "surface": "FlowstateSurface",
            "messages": [(f"Flowstate: script {ableton_remote.__version__} loaded; daemon at 127.0.0.1:9010; "
                          "controls on MIDI channel 16")],
        }
    # A Live before 11.3.25 runs the script and says, at once, what it cannot do there.
    assert result["shown"]["11.3.24"]["messages"] == [(
        f"Flowstate: script {ableton_remote.__version__} loaded, but Live 11.3.24 has no Track.create_audio_clip "
        "or ClipSlot.create_audio_clip: stems and loops are written to disk, not placed "
        "(Live 11.3.25+ and 12.0.5+ have them)"
    )]


def test_a_script_that_cannot_load_says_so_in_the_status_bar_and_log_txt(tmp_path: Path) -> None:
    # The failure the issue found: a generic evaluated at import, which Python 3.7 refuses.
    package = tmp_path / "ableton_remote"
    shutil.copytree(Path(ableton_remote.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    link = package / "link.py"
    link.write_text(link.read_text().replace("OnReply = Callable[[Tuple[", "OnReply = Callable[[tuple["))
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); from tests.ableton import live_sim;"
        "sys.modules['Live'] = live_sim.live_module(); import ableton_remote;"
        "live = live_sim.LiveSet('11.3.25'); surface = ableton_remote.create_instance(live.c_instance);"
        "surface.update_display(); surface.build_midi_map(None); surface.disconnect();"
        "print(json.dumps({'messages': live.c_instance.messages, 'log': live.c_instance.log,"
        " 'from': ableton_remote.__file__}))"
    )
    done = run37("-c", code, str(tmp_path))
    assert done.returncode == 0, done.stderr  # Live gets a surface, not an exception
    result = json.loads(done.stdout)
    assert result["from"].startswith(str(tmp_path))
    message = "Flowstate: could not load (TypeError: 'type' object is not subscriptable; Live's Python 3.7."
    assert [m[: len(message)] for m in result["messages"]] == [message, message]  # at load, and once Live draws
    assert result["messages"][0].endswith(
        f"Flowstate {ableton_remote.__version__}): reinstall with `flowstate install-ableton` and restart Live; "
        "details in Live's Log.txt"
    )
    [log] = result["log"]
    assert log.startswith(f"Flowstate: could not load (Flowstate {ableton_remote.__version__}, Python 3.7.")
    assert "Traceback" in log and "link.py" in log and "TypeError: 'type' object is not subscriptable" in log


def test_the_script_is_the_daemons_version() -> None:
    # The handshake compares them: a release that bumps one and not the other would call itself stale.
    assert ableton_remote.__version__ == bridge.__version__


# -- the simulation refuses what Live refuses ------------------------------------------------------


def test_live_has_no_c_instance_application_only_get_application() -> None:
    live = live_sim.LiveSet()
    assert not hasattr(live.c_instance, "application")
    assert sys.modules["Live"].Application.get_application() is live.application  # conftest installs Live
    assert (live.application.get_major_version(), live.application.get_minor_version(),
            live.application.get_bugfix_version()) == (12, 1, 5)


@pytest.mark.parametrize("version", ["11.3.25", "12.0.5"])
def test_an_old_live_runs_only_under_its_own_python(version: str) -> None:
    with pytest.raises(RuntimeError, match=rf"Live {version} embeds Python 3\.7; this is Python 3\.11"):
        live_sim.LiveSet(version)


@pytest.mark.parametrize(("version", "has_calls"), [
    ("11.3.24", False), ("11.3.25", True), ("12.0.4", False), ("12.0.5", True), ("12.1.0", True),
])
def test_audio_clip_import_exists_from_11_3_25_and_12_0_5(version: str, has_calls: bool) -> None:
    assert live_sim.has_audio_clip_import(live_sim.parse_version(version)) is has_calls
