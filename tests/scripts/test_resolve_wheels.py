"""The dependency set resolves to binary wheels on the OSes Live runs on, against the package index.

Nothing is installed and no wheel is downloaded whole: pip's resolver runs with `--dry-run` for the
target's wheel tags and environment markers (scripts/resolve_wheels.py), reading each wheel's
METADATA out of the remote file. Needs the package index this machine's pip settings name; run
`pytest -m "not index"` to leave these out offline.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pip
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from resolve_wheels import project_dependencies  # noqa: E402 (found through the sys.path line above)

# The oldest pip whose `--dry-run --report` reads wheels lazily instead of downloading them (25.1
# still downloaded each whole after resolving); the test extra asks for it.
MIN_PIP = Version("25.3")


PLATFORMS = ("macos-arm64", "windows-x64")


@pytest.mark.index
@pytest.mark.timeout(600)
def test_every_dependency_installs_from_binary_wheels_on_macos_arm64_and_windows_x64(tmp_path: Path) -> None:
    if Version(pip.__version__) < MIN_PIP:
        pytest.fail(f"pip {pip.__version__} downloads every wheel whole in a dry run; `make test` installs "
                    f"pip>={MIN_PIP} through the test extra (or: python -m pip install 'pip>={MIN_PIP}')")
    # Both at once: each waits on the network (HTTP range requests), hardly on the CPU.
    runs = {
        platform: subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "resolve_wheels.py"), platform,
             "--report", str(tmp_path / f"{platform}.json")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for platform in PLATFORMS
    }
    outputs = {}
    try:
        for platform, run in runs.items():
            outputs[platform] = run.communicate(timeout=590)
    finally:
        for run in runs.values():
            if run.poll() is None:
                run.kill()
                run.wait()
    for platform, (stdout, stderr) in outputs.items():
        assert stdout.strip(), f"{platform}: {stderr}"
        check_resolution(platform, json.loads(stdout.strip().splitlines()[-1]), tmp_path / f"{platform}.json")


def check_resolution(platform: str, summary: dict[str, Any], report: Path) -> None:
    assert summary["ok"], f"{platform}:\n" + "\n".join(summary["errors"])
    chosen = summary["packages"]
    versions = {canonicalize_name(key): value for key, value in chosen.items()}
    for requirement in (Requirement(text) for text in project_dependencies()):
        name = canonicalize_name(requirement.name)
        assert name in versions, f"{platform}: {requirement} is not in the resolution"
        assert requirement.specifier.contains(versions[name], prereleases=True), (platform, requirement, versions[name])
    assert versions["torch"] == "2.13.0"
    # No CUDA libraries on either: the markers were evaluated for the target, not for this Linux box.
    assert not [name for name in versions if name.startswith(("nvidia-", "cuda-"))], (platform, sorted(versions))
    # Only metadata was read: no wheel came down whole (torch's alone is over 100 MB).
    assert summary["whole_downloads"] == [], (platform, summary["whole_downloads"])
    # pip's own report says the same: every item is a wheel built for the target.
    items = json.loads(report.read_text())["install"]
    assert all(item["download_info"]["url"].endswith(".whl") for item in items), platform
