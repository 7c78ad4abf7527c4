"""Typed config: the shipped config.yaml, environment overrides and clear start-up errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bridge.config import Config, ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_config_yaml_states_every_default(tmp_path: Path) -> None:
    data = yaml.safe_load((ROOT / "config.yaml").read_text())
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(ROOT / "config.yaml", env={}) == load_config(empty, env={})
    # Every key of the model appears in the file, so the file documents all of them.
    for section, model in Config.model_fields.items():
        assert section in data, f"config.yaml lacks section {section}"
        assert set(data[section]) == set(model.annotation.model_fields), section


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("osc:\n  udp_port: 9100\n")
    config = load_config(path, env={"FLOWSTATE_OSC_UDP_PORT": "9200", "FLOWSTATE_DAEMON_LOG_LEVEL": "DEBUG"})
    assert config.osc.udp_port == 9200
    assert config.daemon.log_level == "DEBUG"
    assert config.osc.tcp_port == 9011


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("zmq:\n  request_port: 6000\n")
    assert load_config(None, env={"FLOWSTATE_CONFIG": str(path)}).zmq.request_port == 6000


def test_provider_tokens_come_from_their_usual_variables_and_stay_secret() -> None:
    config = load_config(None, env={"REPLICATE_API_TOKEN": "r8_secret", "FLOWSTATE_SERVER_TOKEN": "s3cret"})
    assert config.cloud.replicate_token is not None
    assert config.cloud.replicate_token.get_secret_value() == "r8_secret"
    assert config.token_status()["replicate_token"] is True
    assert config.token_status()["huggingface_token"] is False
    assert "r8_secret" not in repr(config) and "s3cret" not in str(config)


@pytest.mark.parametrize(
    ("text", "env", "words"),
    [
        ("osc:\n  udp_prot: 9010\n", {}, ["osc.udp_prot: unknown key", "udp_port"]),
        ("nonsense: 1\n", {}, ["nonsense: unknown key", "osc, zmq"]),
        ("osc:\n  udp_port: 70000\n", {}, ["osc.udp_port = 70000", "less than or equal to 65535"]),
        ("osc:\n  udp_port: many\n", {}, ["osc.udp_port = 'many'", "valid integer"]),
        ("osc:\n  host: somewhere\n", {}, ["osc.host = 'somewhere'", "IP address"]),
        ("daemon:\n  log_level: LOUD\n", {}, ["daemon.log_level = 'LOUD'", "DEBUG"]),
        ("", {"FLOWSTATE_ZMQ_EVENT_PORT": "-1"}, ["zmq.event_port = '-1' (from FLOWSTATE_ZMQ_EVENT_PORT)"]),
        ("", {"FLOWSTATE_OSC_NOPE": "1"}, ["FLOWSTATE_OSC_NOPE does not name a config key"]),
        ("cloud:\n  replicate_token: [1]\n", {}, ["cloud.replicate_token = <hidden>"]),
        ("- a list\n", {}, ["expected a mapping"]),
        ("osc: [\n", {}, ["not valid YAML"]),
        ("stream:\n  model: spleeter:4stems\n", {}, ["stream.model = 'spleeter:4stems'", "spleeter:2stems"]),
        ("", {"FLOWSTATE_SEPARATE_MODEL": "spleeter"}, ["separate.model = 'spleeter'", "expected one of spleeter:2stems"]),
    ],
)
def test_bad_config_names_key_value_and_expectation(tmp_path: Path, text: str, env: dict[str, str], words: list[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env=env)
    for word in words:
        assert word in str(caught.value)


def test_bad_config_stops_up_with_exit_code_2(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("osc:\n  udp_port: 70000\n")
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "up", "--config", str(path)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert "osc.udp_port = 70000" in done.stderr
    assert "Traceback" not in done.stderr


def test_missing_config_file_is_exit_code_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "up", "--config", str(tmp_path / "absent.yaml")],
        capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 2
    assert "absent.yaml does not exist" in done.stderr


def test_paths_are_made_absolute_and_the_job_database_defaults_to_the_data_folder(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("paths:\n  roots: [~/Music]\n")
    config = load_config(path, env={"XDG_DATA_HOME": str(tmp_path / "data")})
    assert config.paths.roots == [Path.home() / "Music"]
    if sys.platform.startswith("linux"):
        assert config.jobs.database == tmp_path / "data" / "flowstate" / "jobs.sqlite3"


def test_spleeter_and_its_weights_folder_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("stream:\n  model: spleeter:2stems\nseparate:\n  model: spleeter:2stems\n"
                    "models:\n  spleeter_dir: ~/spleeter\n")
    config = load_config(path, env={})
    assert config.stream.model == config.separate.model == "spleeter:2stems"
    assert config.models.spleeter_dir == Path("~/spleeter").expanduser().absolute()
