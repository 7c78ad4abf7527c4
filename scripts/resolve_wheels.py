"""Resolve the project's dependencies for another OS, as binary wheels only, installing nothing.

    python scripts/resolve_wheels.py macos-arm64 [--report FILE] [--requirement REQ ...]

Runs pip's own resolver (`pip install --dry-run --only-binary=:all: --platform TAG --python-version
3.11 --target <scratch>`) against the package index of this machine's pip settings, with the
dependency set of pyproject.toml (or the given requirements). Prints one JSON line: the platform,
the packages and versions chosen, whole wheels pip had to download (with PEP 658 metadata on the
index it fetches only each wheel's METADATA), and pip's exit status and last error lines.

Why a wrapper and not plain pip: `--platform` only changes which wheel tags pip accepts; environment
markers (`platform_system == "Linux"` in torch's CUDA dependencies, `sys_platform == "win32"` ...)
are still evaluated for the machine pip runs on. Here they are evaluated for the target platform.
Needs a pip with `--dry-run --report` (22.2+); the test extra asks for a recent one.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON_VERSION = "3.11"

# Marker values of a CPython 3.11 on each target (what `packaging.markers.default_environment()`
# returns there), and the wheel tag pip is told to accept. torch 2.13's macOS wheels are tagged
# macosx_14_0_arm64: macOS 14 (Sonoma) is the oldest macOS it installs on.
_COMMON = {
    "implementation_name": "cpython",
    "implementation_version": "3.11.9",
    "platform_python_implementation": "CPython",
    "python_version": PYTHON_VERSION,
    "python_full_version": "3.11.9",
    "platform_version": "",
}
PLATFORMS: dict[str, dict[str, Any]] = {
    "macos-arm64": {"tag": "macosx_14_0_arm64", "markers": {
        **_COMMON, "os_name": "posix", "sys_platform": "darwin", "platform_system": "Darwin",
        "platform_machine": "arm64", "platform_release": "23.0.0"}},
    "macos-x86_64": {"tag": "macosx_14_0_x86_64", "markers": {
        **_COMMON, "os_name": "posix", "sys_platform": "darwin", "platform_system": "Darwin",
        "platform_machine": "x86_64", "platform_release": "23.0.0"}},
    "windows-x64": {"tag": "win_amd64", "markers": {
        **_COMMON, "os_name": "nt", "sys_platform": "win32", "platform_system": "Windows",
        "platform_machine": "AMD64", "platform_release": "10"}},
    "linux-x86_64": {"tag": "manylinux_2_28_x86_64", "markers": {
        **_COMMON, "os_name": "posix", "sys_platform": "linux", "platform_system": "Linux",
        "platform_machine": "x86_64", "platform_release": "6.1.0"}},
}

# pip's line for a whole file fetched from an index (a .metadata file is PEP 658's, not a wheel).
_DOWNLOADING = re.compile(r"^\s*Downloading (\S+?)(?<!\.metadata) \(([^)]*)\)")


def project_dependencies(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """The `[project] dependencies` of pyproject.toml, as written there."""
    with pyproject.open("rb") as file:
        return list(tomllib.load(file)["project"]["dependencies"])


def _run_pip(markers: dict[str, str], args: list[str]) -> int:
    """In this process: pip's CLI with its marker environment replaced by the target's."""
    from pip._internal.cli.main import main as pip_main
    from pip._vendor.packaging import markers as pip_markers

    pip_markers.default_environment = lambda: dict(markers)  # type: ignore[assignment]
    return pip_main(args)


def resolve(platform: str, requirements: list[str], report: Path) -> dict[str, Any]:
    """Resolve `requirements` for `platform` in a child process; the summary `main` prints."""
    if platform not in PLATFORMS:
        raise ValueError(f"platform {platform!r}: expected one of {', '.join(PLATFORMS)}")
    target = PLATFORMS[platform]
    with tempfile.TemporaryDirectory(prefix="flowstate-wheels-") as scratch:
        pip_args = [
            # fast-deps: an index whose pages carry no PEP 658 metadata (no `core-metadata` key)
            # would make pip download every wheel whole (torch: over 100 MB) just to read its
            # METADATA; with it pip reads that file out of the remote zip with HTTP range requests.
            "install", "--use-feature=fast-deps", "--dry-run", "--ignore-installed", "--only-binary=:all:",
            "--no-input",
            "--platform", target["tag"], "--python-version", PYTHON_VERSION, "--implementation", "cp",
            "--target", str(Path(scratch) / "target"), "--report", str(report), "--progress-bar", "off",
            *requirements,
        ]
        code = (
            "import json, sys; sys.path.insert(0, sys.argv[1]); import resolve_wheels as r; "
            "sys.exit(r._run_pip(json.loads(sys.argv[2]), sys.argv[3:]))"
        )
        done = subprocess.run(
            [sys.executable, "-c", code, str(Path(__file__).resolve().parent), json.dumps(target["markers"]),
             *pip_args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False,
        )
    output = done.stdout
    chosen: dict[str, str] = {}
    if done.returncode == 0 and report.is_file():
        for item in json.loads(report.read_text(encoding="utf-8"))["install"]:
            chosen[item["metadata"]["name"].lower()] = item["metadata"]["version"]
    downloads = [f"{m.group(1)} ({m.group(2)})" for line in output.splitlines() if (m := _DOWNLOADING.match(line))]
    # pip's explanation: from its first ERROR line on, without the advice that follows "To fix".
    lines = output.splitlines()
    first = next((i for i, line in enumerate(lines) if line.startswith("ERROR")), len(lines))
    errors = [line.strip() for line in lines[first:] if line.strip() and not line.startswith("WARNING")]
    errors = [line for line in errors if line[:2] not in ("1.", "2.") and not line.startswith("To fix")]
    return {
        "platform": platform, "tag": target["tag"], "python": PYTHON_VERSION, "ok": done.returncode == 0,
        "pip_exit": done.returncode, "packages": chosen, "whole_downloads": downloads, "errors": errors[:10],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("platform", choices=sorted(PLATFORMS))
    parser.add_argument("--report", type=Path, help="keep pip's JSON report here")
    parser.add_argument("--requirement", action="append", default=[], metavar="REQ",
                        help="resolve these instead of pyproject.toml's dependencies (repeatable)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="flowstate-report-") as scratch:
        report = args.report or Path(scratch) / "report.json"
        summary = resolve(args.platform, args.requirement or project_dependencies(), report)
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
