"""`classify.audio` against a real daemon, over ZeroMQ and OSC, with a tiny random AST in the real format.

The model is built with `save_pretrained` into a folder named by `classify.audio_model`, and the daemon
loads it the way it loads the AudioSet checkpoint. Its scores mean nothing; the reply's shape, the
path checks (forbidden, not_found, bad_request) and the argument bounds are what a client relies on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from bridge.client import Client, RemoteError
from bridge.config import Config
from bridge.doctor import run_checks
from bridge.errors import Forbidden
from bridge.licences import check_job
from bridge.testing import SLOW_SECONDS, TINY_AST_LABELS, DaemonProcess, build_tiny_ast
from tests.conftest import OscUdp

TIMEOUT = SLOW_SECONDS  # the first call loads torch, transformers and the model


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    model = build_tiny_ast(tmp_path_factory.mktemp("ast") / "tiny-ast")
    process = DaemonProcess(
        overrides={"classify": {"audio_model": str(model), "audio_device": "cpu", "audio_seconds": 2.0}},
        env={"HF_HUB_OFFLINE": "1"},
    ).start()
    try:
        yield process
    finally:
        assert process.stop() == 0, process.log()


def clip(daemon: DaemonProcess, name: str, seconds: float = 3.0, rate: int = 44100) -> Path:
    """A stereo clip of two tones inside the daemon's root."""
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.3 * np.sin(2 * np.pi * 110 * t) + 0.2 * np.sin(2 * np.pi * 880 * t)
    path = daemon.workdir / "files" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), np.stack([mono, 0.5 * mono], axis=1).astype(np.float32), rate)
    return path


def test_a_clip_gets_its_top_labels_over_zmq(daemon: DaemonProcess) -> None:
    path = clip(daemon, "Loops/bass and drums.wav")
    with Client(daemon.zmq_requests, timeout_seconds=TIMEOUT) as c:
        result = c.call("classify.audio", {"path": str(path)})
        assert len(result["labels"]) == 5 and set(result["labels"]) <= set(TINY_AST_LABELS)
        assert result["scores"] == sorted(result["scores"], reverse=True)
        assert result["label"] == result["labels"][0] and result["score"] == result["scores"][0]
        # Only classify.audio_seconds of the 3 s clip are heard, and the reply says so.
        assert (result["seconds"], result["duration_seconds"]) == (2.0, 3.0)
        # The model and its licence, as a job's result has them (a folder of our own: not in the catalogue).
        assert result["licence"]["id"] == "unknown" and result["model"].endswith("tiny-ast")
        # A path relative to the first root, and a smaller top.
        two = c.call("classify.audio", {"path": "Loops/bass and drums.wav", "top": 2})
        assert two["labels"] == result["labels"][:2]
        assert len(c.call("classify.audio", {"path": str(path), "top": 50})["labels"]) == len(TINY_AST_LABELS)


def test_bad_paths_and_arguments_get_the_right_codes(daemon: DaemonProcess, tmp_path: Path) -> None:
    outside = tmp_path / "outside.wav"
    soundfile.write(str(outside), np.zeros(1600, np.float32), 16000)
    text = daemon.workdir / "files" / "notes.wav"
    text.write_text("not audio")
    path = clip(daemon, "ok.wav", seconds=0.5)
    cases = [
        ({"path": str(outside)}, "forbidden", "outside the allowed folders"),
        ({"path": "../outside.wav"}, "forbidden", "outside the allowed folders"),
        ({"path": "missing.wav"}, "not_found", "no such file"),
        ({"path": str(text)}, "bad_request", "not an audio file libsndfile can read"),
        ({"path": str(daemon.workdir / "files")}, "bad_request", "is not a file"),
        ({"path": ""}, "bad_request", "argument 'path'"),
        ({"path": str(path), "top": 0}, "bad_request", "argument 'top' expected int in [1, 50]"),
        ({"path": str(path), "top": 51}, "bad_request", "argument 'top' expected int in [1, 50]"),
        ({}, "bad_request", "path"),
    ]
    with Client(daemon.zmq_requests, timeout_seconds=TIMEOUT) as c:
        for args, code, words in cases:
            with pytest.raises(RemoteError) as caught:
                c.call("classify.audio", args)
            assert caught.value.code == code and words in caught.value.message, (args, caught.value.message)
        assert c.call("ping")["reply"] == "pong"


def test_over_osc_the_reply_carries_label_score_and_the_lists_as_json(daemon: DaemonProcess) -> None:
    path = clip(daemon, "Vocals/take.wav", seconds=1.0, rate=48000)
    osc = OscUdp(daemon.osc_udp)
    try:
        osc.send("/flow/classify/audio", str(path), 3)
        reply = osc.receive(TIMEOUT)
        osc.send("/flow/classify/audio", "missing.wav")
        error = osc.receive(TIMEOUT)
    finally:
        osc.close()
    assert reply.address == "/flow/reply/classify/audio"
    label, score, labels, scores = reply.params
    assert label in TINY_AST_LABELS and 0.0 < score < 1.0
    assert json.loads(labels)[0] == label and len(json.loads(labels)) == 3
    assert json.loads(scores) == sorted(json.loads(scores), reverse=True)
    assert error.address == "/flow/error" and error.params[:2] == ["/flow/classify/audio", "not_found"]


def test_doctor_says_where_the_audio_model_would_load_from(tmp_path: Path) -> None:
    model = build_tiny_ast(tmp_path / "tiny-ast")

    def row(audio_model: str) -> Any:
        config = Config().model_copy(update={"classify": Config().classify.model_copy(
            update={"audio_model": audio_model})})
        return next(check for check in run_checks(config, "test") if check.name == "classify.audio")

    found = row(str(model))
    assert found.state == "ok" and f"folder {model}" in found.detail
    missing = row("flowstate-test/no-such-ast")
    assert missing.state == "warn" and "flowstate-test/no-such-ast not found" in missing.detail
    other = tmp_path / "not-an-ast"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    wrong = row(str(other))
    assert wrong.state == "fail" and "holds a bert model" in wrong.detail


def test_a_commercial_project_applies_its_licence_policy_to_the_audio_model() -> None:
    def config(model: str, unknown: str) -> Config:
        base = Config()
        return base.model_copy(update={
            "classify": base.classify.model_copy(update={"audio_model": model}),
            "project": base.project.model_copy(update={"commercial": True, "unknown_licences": unknown}),
        })

    check_job("classify.audio", {}, config("MIT/ast-finetuned-audioset-10-10-0.4593", "refuse"))  # BSD-3-Clause
    check_job("classify.audio", {}, config("/models/my-ast", "allow"))
    with pytest.raises(Forbidden) as caught:
        check_job("classify.audio", {}, config("/models/my-ast", "refuse"))
    assert "/models/my-ast" in caught.value.message and "project.unknown_licences" in caught.value.message
