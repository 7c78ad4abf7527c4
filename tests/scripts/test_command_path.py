"""`stems.separate` from the OSC wire to its engine crosses at most 8 production files, with no
call back into a caller (A -> B -> A): scripts/command_path.py traces a real daemon separating a
file and reads the stacks (see its docstring for what counts as a hop)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from command_path import report, trace  # noqa: E402 (found through the sys.path line above)


def test_stems_separate_from_the_wire_to_the_engine_and_back(tmp_path: Path) -> None:
    result = report(trace(tmp_path))
    assert len(result["files_to_engine"]) <= 8, result
    assert result["callbacks_to_engine"] == [], result
    paths = result["paths"]
    assert paths["request"][0] == "bridge/transports/osc.py" and paths["request"][-1] == "bridge/separate.py"
    assert paths["engine"] == ["bridge/jobs.py", "bridge/separate.py", "engines/separation/files.py"]
    assert paths["sent"][-1] == "bridge/transports/osc.py"
