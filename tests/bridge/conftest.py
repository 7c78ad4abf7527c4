"""Fixtures the daemon's live-stream tests share."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.testing import passthrough_htdemucs_repo


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny HTDemucs whose stems add up to its input, so a known signal can be found at the
    outputs; one thread, so it loads and runs in seconds even on busy cores."""
    return passthrough_htdemucs_repo(tmp_path_factory.mktemp("models"), threads=1)
