"""Where the daemon keeps OpenVINO's conversions of its stream models (engines/inference.py).

The folder comes from config.yaml only (by default beside the job database), never from a
`stream.start` override: a request may not choose where the daemon writes. Real engines on a small
model; no audio device needed.
"""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from bridge.config import load_config
from bridge.errors import Forbidden
from bridge.stream_manager import StreamManager
from bridge.testing import tiny_htdemucs_repo


@pytest.mark.timeout(900)  # one conversion: up to a minute on a busy 2-core machine
def test_a_stream_on_openvino_keeps_its_conversion_beside_the_job_database(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import engines.inference

    monkeypatch.setattr(engines.inference, "_RECENT", collections.OrderedDict())  # as in a new daemon
    config_file = tmp_path / "config.yaml"
    config_file.write_text(f"jobs:\n  database: {tmp_path / 'state' / 'jobs.sqlite3'}\n")
    config = load_config(config_file, env={})
    assert config.stream.openvino_cache_dir == tmp_path / "state" / "openvino"
    repo = tiny_htdemucs_repo(tmp_path / "repo", depth=3)
    manager = StreamManager(config.stream, repo)
    settings = manager.settings_with({"model": "tiny", "engine_device": "cpu", "backend": "openvino",
                                      "sample_rate": 48000, "context_seconds": 0.1, "hop_seconds": 0.1,
                                      "lookahead_seconds": 0.1})
    engine = manager.new_engine(settings)
    try:
        assert engine.stats()["backend"] == "openvino"
    finally:
        engine.close()
    kept = list((tmp_path / "state" / "openvino").iterdir())
    assert len(kept) == 1 and (kept[0] / "network.xml").is_file() and (kept[0] / "network.bin").is_file()


@pytest.mark.parametrize("key", ["openvino_cache_dir", "openvino_cache_mb"])
def test_where_conversions_are_kept_is_not_an_override(tmp_path: Path, key: str) -> None:
    (tmp_path / "config.yaml").write_text("{}\n")
    manager = StreamManager(load_config(tmp_path / "config.yaml", env={}).stream, None)
    with pytest.raises(Forbidden, match=f"stream.{key}"):
        manager.settings_with({key: str(tmp_path) if key.endswith("dir") else 1})


def test_a_size_of_0_keeps_no_conversions(tmp_path: Path) -> None:
    config_file = tmp_path / "config.yaml"
    config_file.write_text("stream:\n  openvino_cache_mb: 0\n")
    assert StreamManager(load_config(config_file, env={}).stream, None).conversion_cache() is None
