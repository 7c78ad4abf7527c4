"""Where a pretrained HTDemucs loads from on this machine, and `flowstate doctor` saying so.

demucs 4.1's `get_model("htdemucs")` tries the hub first (`adefossez/HTDemucs`: `htdemucs.yaml` and
one `<sig>.safetensors` a model, in huggingface_hub's cache) and then its legacy download
(`<sig>-<checksum>.th` in torch.hub's checkpoints folder). Each place is built here in its real
format from a tiny model and loaded by demucs itself, offline, in a subprocess whose caches are
temporary folders (`HF_HUB_CACHE`, `TORCH_HOME`; `HF_HUB_OFFLINE=1`, as on a machine without
internet): what `htdemucs_files_on_disk` finds is what loads.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from bridge.testing import DaemonProcess, hub_stand_in, parameter_count, save_demucs_hub_cache, tiny_htdemucs_repo
from engines.separation.models import load_model

ROOT = Path(__file__).resolve().parents[2]
# The signature demucs's own `remote/htdemucs.yaml` names for `htdemucs` (its legacy download).
LEGACY_SIG = "955717e8"

PROBE = """
import json, sys
from pathlib import Path
from bridge.testing import parameter_count
from engines.separation.models import htdemucs_files_on_disk, load_model
repo = Path(sys.argv[2]) if len(sys.argv) > 2 else None
found, places = htdemucs_files_on_disk(sys.argv[1], repo)
loaded = None
if found:
    bag = load_model(sys.argv[1], repo)
    loaded = [parameter_count(model) for model in bag.models]
print(json.dumps({"found": [str(p) for p in found], "places": places, "loaded": loaded}))
"""


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_htdemucs_repo(tmp_path_factory.mktemp("repo"), name="htdemucs")


def _offline_env(home: Path, hub: str | None = None) -> dict[str, str]:
    """Caches in `home`; the hub offline, or at `hub` (a URL) when given."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_CACHE": str(home / "hub"), "HF_HUB_OFFLINE": "1",
           "TORCH_HOME": str(home / "torch")}
    if hub is not None:
        del env["HF_HUB_OFFLINE"]
        env.pop("TRANSFORMERS_OFFLINE", None)  # huggingface_hub reads it as HF_HUB_OFFLINE too
        env["HF_ENDPOINT"] = hub
    return env


def _probe(home: Path, name: str, repo: Path | None = None, hub: str | None = None) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", PROBE, name, *([str(repo)] if repo else [])],
                          capture_output=True, text=True, timeout=300, env=_offline_env(home, hub))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def _tiny_parameters(tiny_repo: Path) -> int:
    """The tiny model's parameters, loaded from its own local repo."""
    return parameter_count(load_model("htdemucs", tiny_repo).models[0])


def test_a_pretrained_name_is_found_where_demucs_loads_it_offline(tiny_repo: Path, tmp_path: Path) -> None:
    nothing = _probe(tmp_path, "htdemucs")
    assert nothing["found"] == [] and nothing["loaded"] is None
    legacy = tmp_path / "torch" / "hub" / "checkpoints"
    assert nothing["places"] == ["the hub's cache (adefossez/HTDemucs)", str(legacy)]

    # demucs's legacy download: the checkpoint under the name its files.txt gives it.
    legacy.mkdir(parents=True)
    shutil.copy(next(tiny_repo.glob("*.th")), legacy / f"{LEGACY_SIG}-8726e21a.th")
    from_legacy = _probe(tmp_path, "htdemucs")
    assert from_legacy["found"] == [str(legacy / f"{LEGACY_SIG}-8726e21a.th")]
    assert from_legacy["loaded"] == [_tiny_parameters(tiny_repo)]

    # Loaded from there without asking the hub (here a loopback server that hangs up on every
    # connection): offline, the hub's client retried a name that does not resolve for 23 s before
    # demucs fell back to this file.
    with socket.create_server(("127.0.0.1", 0)) as hub:
        asked: list[bool] = []

        def hang_up() -> None:
            while True:
                try:
                    connection, _ = hub.accept()
                except OSError:  # closed: the test is over
                    return
                asked.append(True)
                connection.close()

        threading.Thread(target=hang_up, daemon=True).start()
        without_hub = _probe(tmp_path, "htdemucs", hub=f"http://127.0.0.1:{hub.getsockname()[1]}")
    assert without_hub["loaded"] == [_tiny_parameters(tiny_repo)] and not asked

    # The hub's cache, which demucs tries first.
    written = save_demucs_hub_cache(tiny_repo, "htdemucs", tmp_path / "hub")
    from_hub = _probe(tmp_path, "htdemucs")
    assert from_hub["found"] == [str(path) for path in written]
    assert [Path(path).suffix for path in from_hub["found"]] == [".yaml", ".safetensors"]
    assert from_hub["loaded"] == [_tiny_parameters(tiny_repo)]

    # A bag with one model missing is not there: htdemucs_ft's four from the legacy download.
    assert _probe(tmp_path, "htdemucs_ft")["found"] == []


def test_a_local_repo_is_the_only_place_looked_in(tiny_repo: Path, tmp_path: Path) -> None:
    save_demucs_hub_cache(tiny_repo, "htdemucs", tmp_path / "hub")  # present, yet not used with a repo
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo, repo)
    found = _probe(tmp_path, "htdemucs", repo)
    assert found["found"][0] == str(repo / "htdemucs.yaml") and len(found["found"]) == 2
    assert found["places"] == [str(repo)] and found["loaded"] == [_tiny_parameters(tiny_repo)]
    (repo / "htdemucs.yaml").write_text("models: [")  # a bag file that cannot be read: nothing loads
    assert _probe(tmp_path, "htdemucs", repo) == {"found": [], "places": [str(repo)], "loaded": None}
    (repo / "htdemucs.yaml").write_text((tiny_repo / "htdemucs.yaml").read_text())
    next(repo.glob("*.th")).unlink()
    assert _probe(tmp_path, "htdemucs", repo) == {"found": [], "places": [str(repo)], "loaded": None}


def _weights_rows(tmp_path: Path, **models: Any) -> list[str]:
    workdir = tmp_path / "daemon"
    workdir.mkdir(exist_ok=True)
    process = DaemonProcess(overrides={"models": models} if models else None, workdir=workdir)
    done = subprocess.run([sys.executable, "-m", "bridge", "doctor", "--config", str(process.config_path)],
                          capture_output=True, text=True, timeout=300, env=_offline_env(tmp_path))
    return [line.strip() for line in done.stdout.splitlines() if line.split()[1:2] == ["weights"]]


def test_doctor_says_whether_live_stems_and_stem_jobs_load_offline(tiny_repo: Path, tmp_path: Path) -> None:
    [missing] = _weights_rows(tmp_path)
    assert missing.startswith("warn") and "htdemucs (stream.model and separate.model): not on this machine" in missing
    assert "adefossez/HTDemucs" in missing and str(tmp_path / "torch" / "hub" / "checkpoints") in missing
    # Where demucs 4.1 puts a download when online: the hub's cache (before, the row looked only
    # in torch.hub's folder and warned forever after the first download).
    written = save_demucs_hub_cache(tiny_repo, "htdemucs", tmp_path / "hub")
    [there] = _weights_rows(tmp_path)
    assert there.startswith("ok") and all(str(path) in there for path in written), there
    [in_repo] = _weights_rows(tmp_path, demucs_repo=str(tmp_path / "empty"))
    assert in_repo.startswith("warn") and "not in models.demucs_repo" in in_repo, in_repo


def test_flowstate_download_fetches_the_models_so_that_they_load_offline(tiny_repo: Path, tmp_path: Path) -> None:
    served = save_demucs_hub_cache(tiny_repo, "htdemucs", tmp_path / "published")
    home = tmp_path / "home"
    (home / "daemon").mkdir(parents=True)
    config = DaemonProcess(workdir=home / "daemon").config_path  # stream.model and separate.model: htdemucs
    published = {f"/adefossez/HTDemucs/resolve/main/{path.name}": path.read_bytes() for path in served}
    with hub_stand_in(published) as hub:
        done = subprocess.run([sys.executable, "-m", "bridge", "download", "--config", str(config)],
                              capture_output=True, text=True, timeout=300, env=_offline_env(home, hub=hub.url))
    assert done.returncode == 0, done.stdout + done.stderr
    # Each file once (a HEAD for its commit and ETag, a GET for its bytes): htdemucs is named by
    # both settings and fetched once.
    asked = sorted((verb, path) for verb, path, _ in hub.asked)
    assert asked == sorted((verb, path) for path in published for verb in ("GET", "HEAD")), hub.asked
    cached = home / "hub" / "models--adefossez--HTDemucs" / "snapshots" / ("0" * 40)
    (line,) = done.stdout.splitlines()
    assert line.startswith("htdemucs: ready in ") and line.endswith(
        "loads without a network from " + ", ".join(str(cached / path.name) for path in served)), line
    # Now the machine has it: doctor says so, offline, and it loads offline.
    [row] = _weights_rows(home)
    assert row.startswith("ok") and str(cached / "htdemucs.yaml") in row, row
    assert _probe(home, "htdemucs")["loaded"] == [_tiny_parameters(tiny_repo)]


def test_flowstate_download_without_a_network_names_every_place_and_fails(tmp_path: Path) -> None:
    (tmp_path / "daemon").mkdir()
    config = DaemonProcess(workdir=tmp_path / "daemon").config_path
    done = subprocess.run([sys.executable, "-m", "bridge", "download", "--config", str(config), "htdemucs_6s"],
                          capture_output=True, text=True, timeout=300, env=_offline_env(tmp_path))
    assert done.returncode == 1 and "ready" not in done.stdout, done.stdout
    assert "flowstate: htdemucs_6s: model 'htdemucs_6s': tried the pretrained name" in done.stderr, done.stderr
    assert "adefossez/HTDemucs-6s" in done.stderr and str(tmp_path / "torch" / "hub" / "checkpoints") in done.stderr
    assert "`flowstate download htdemucs_6s`" in done.stderr, done.stderr


def test_a_download_with_the_hub_unreachable_logs_each_retry_once(tmp_path: Path) -> None:
    # huggingface_hub gives its loggers a handler of its own and lets them reach the root's too: each
    # of its five retries came out twice, once without time or level.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        hub = "http://127.0.0.1:%d" % closed.getsockname()[1]  # nothing listens there once closed
    (tmp_path / "daemon").mkdir()
    config = DaemonProcess(workdir=tmp_path / "daemon").config_path
    done = subprocess.run([sys.executable, "-m", "bridge", "download", "--config", str(config), "htdemucs"],
                          capture_output=True, text=True, timeout=300, env=_offline_env(tmp_path, hub=hub))
    assert done.returncode == 1, done.stdout + done.stderr
    retries = [line for line in done.stderr.splitlines() if "Retrying in 1s [Retry 1/5]" in line]
    assert len(retries) == 1 and " WARNING huggingface_hub." in retries[0], done.stderr
