"""Typed config: the shipped config.yaml, environment overrides and clear start-up errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bridge.config import (
    Config,
    ConfigError,
    default_config_path,
    default_roots,
    load_config,
    platform_folders,
    user_data_dir,
)

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
        ("", {"FLOWSTATE_SEPARATE_MODEL": "spleeter"},
         ["separate.model = 'spleeter'", "expected one of spleeter:2stems"]),
        ("separate:\n  model: openunmix:umx\n", {}, ["separate.model = 'openunmix:umx'",
                                                      "openunmix:umxl, openunmix:umxhq"]),
        ("stream:\n  model: openunmix:umxl\n", {}, ["stream.model = 'openunmix:umxl'", "separates files only"]),
        # classify's NLI keys live under classify (classify.method, classify.nli_model, classify.nli_hypothesis)
        ("samples:\n  nli_model: facebook/bart-large-mnli\n", {}, ["samples.nli_model: unknown key"]),
        ("classify:\n  method: bayes\n", {}, ["classify.method = 'bayes'", "embeddings"]),
        ("", {"FLOWSTATE_CLASSIFY_NLI_HYPOTHESIS": "no placeholder"}, ["classify.nli_hypothesis = 'no placeholder'"]),
    ],
)
def test_bad_config_names_key_value_and_expectation(tmp_path: Path, text: str, env: dict[str, str],
                                                    words: list[str]) -> None:
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


def test_open_unmix_and_its_weights_folder_are_accepted_for_files(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("separate:\n  model: openunmix:umxhq\nmodels:\n  openunmix_dir: ~/open-unmix\n")
    config = load_config(path, env={})
    assert config.separate.model == "openunmix:umxhq"
    assert config.models.openunmix_dir == Path("~/open-unmix").expanduser().absolute()


# -- per-OS folders ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("platform", "env", "expected"),
    [
        ("darwin", {"HOME": "/Users/ada"}, {
            "config_dir": "/Users/ada/Library/Application Support/Flowstate",
            "data_dir": "/Users/ada/Library/Application Support/Flowstate",
            "log_dir": "/Users/ada/Library/Logs/Flowstate",
            "autostart_dir": "/Users/ada/Library/LaunchAgents"}),
        ("win32", {"USERPROFILE": "/c/Users/ada", "APPDATA": "/c/Users/ada/AppData/Roaming",
                   "LOCALAPPDATA": "/c/Users/ada/AppData/Local"}, {
            "config_dir": "/c/Users/ada/AppData/Roaming/Flowstate",
            "data_dir": "/c/Users/ada/AppData/Local/Flowstate",
            "log_dir": "/c/Users/ada/AppData/Local/Flowstate/logs",
            "autostart_dir": "/c/Users/ada/AppData/Roaming/Microsoft/Windows/Start Menu/Programs/Startup"}),
        ("win32", {"USERPROFILE": "/c/Users/ada"}, {  # no APPDATA / LOCALAPPDATA: the usual places
            "config_dir": "/c/Users/ada/AppData/Roaming/Flowstate",
            "data_dir": "/c/Users/ada/AppData/Local/Flowstate"}),
        ("linux", {"HOME": "/home/ada"}, {
            "config_dir": "/home/ada/.config/flowstate",
            "data_dir": "/home/ada/.local/share/flowstate",
            "log_dir": "/home/ada/.local/state/flowstate",
            "autostart_dir": "/home/ada/.config/systemd/user"}),
        ("linux", {"HOME": "/home/ada", "XDG_CONFIG_HOME": "/xdg/config", "XDG_DATA_HOME": "/xdg/data"}, {
            "config_dir": "/xdg/config/flowstate",
            "data_dir": "/xdg/data/flowstate",
            "autostart_dir": "/xdg/config/systemd/user"}),
    ],
)
def test_each_os_keeps_settings_data_and_logs_in_its_own_folders(
    platform: str, env: dict[str, str], expected: dict[str, str]
) -> None:
    folders = platform_folders(env, platform)
    for name, path in expected.items():
        assert getattr(folders, name) == Path(path), name
    assert user_data_dir(env, platform) == folders.data_dir


@pytest.mark.parametrize("platform", ["darwin", "win32"])
def test_default_roots_on_macos_and_windows_are_the_home_folders_user_folders(platform: str) -> None:
    env = {"HOME": "/Users/ada", "USERPROFILE": "/Users/ada"}
    assert default_roots(env, platform) == [Path("/Users/ada") / name for name in
                                            ("Music", "Documents", "Desktop", "Downloads")]


def test_unset_roots_are_the_users_folders_as_xdg_user_dirs_names_them(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".config").mkdir(parents=True)
    # A German desktop: Musik and Dokumente; the desktop folder turned off (set to $HOME itself).
    (home / ".config" / "user-dirs.dirs").write_text(
        '# written by xdg-user-dirs-update\nXDG_MUSIC_DIR="$HOME/Musik"\nXDG_DOCUMENTS_DIR="$HOME/Dokumente"\n'
        'XDG_DESKTOP_DIR="$HOME/"\nXDG_DOWNLOAD_DIR="/data/ada/Downloads"\n'
    )
    env = {"HOME": str(home)}
    expected = [home / "Musik", home / "Dokumente", Path("/data/ada/Downloads")]
    assert default_roots(env, "linux") == expected
    if sys.platform.startswith("linux"):
        empty = tmp_path / "empty.yaml"
        empty.write_text("")
        assert load_config(empty, env=env).paths.roots == expected
        # The shipped config.yaml says `roots: null`: the same folders.
        assert load_config(ROOT / "config.yaml", env=env).paths.roots == expected


def test_without_user_dirs_linux_roots_keep_their_english_names(tmp_path: Path) -> None:
    assert default_roots({"HOME": str(tmp_path)}, "linux") == [tmp_path / name for name in
                                                               ("Music", "Documents", "Desktop", "Downloads")]


def test_roots_given_in_the_config_replace_the_defaults_even_when_empty(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("paths:\n  roots: []\n")
    assert load_config(path, env={"HOME": str(tmp_path)}).paths.roots == []
    path.write_text(f"paths:\n  roots: [{tmp_path / 'Projects'}]\n")
    assert load_config(path, env={"HOME": str(tmp_path)}).paths.roots == [tmp_path / "Projects"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the Linux config folder")
def test_config_yaml_in_the_users_config_folder_is_found_from_any_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./config.yaml here (a login service starts in / or ~)
    folder = tmp_path / "xdg" / "flowstate"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("osc:\n  udp_port: 9123\n")
    env = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    assert default_config_path(env) == folder / "config.yaml"
    assert load_config(None, env=env).osc.udp_port == 9123
